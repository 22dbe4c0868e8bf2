/* eval.h - how far a model is from the text and from another model.
 *
 * Conventions (shared with the results tables, so numbers compare across
 * tools): a text is tokenized whole with no special tokens added and cut into
 * consecutive complete windows of ctx tokens (a shorter tail is dropped);
 * each window runs from an empty cache; positions score_from..ctx-2 predict
 * the next token, so a window scores ctx-1-score_from tokens. score_from = 0
 * scores every position but the last; llama-perplexity (and the reference
 * baselines) use score_from = ctx/2, so that each scored token sees at least
 * ctx/2 tokens of context. Perplexity is
 * exp(mean negative log-likelihood) over the scored tokens. Against a base
 * model: mean KL(base ‖ model) in nats over the same positions, top-1
 * agreement (same argmax), and the perplexity ratio model/base.
 * Log-probabilities are computed in double from the float32 logits.
 */
#ifndef MOEC_EVAL_EVAL_H
#define MOEC_EVAL_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "exec/exec.h"

typedef struct moec_ppl_result {
    int64_t windows;
    int64_t tokens;          /* scored tokens */
    double nll_sum;          /* Σ -log p(model) over scored tokens */
    double perplexity;
    /* with a base model (otherwise zero) */
    double base_nll_sum;
    double base_perplexity;
    double kld_sum;          /* Σ KL(base ‖ model) */
    double kld_mean;
    int64_t top1_same;
    double top1_agreement;
    double ppl_ratio;
} moec_ppl_result;

/* Called after each window with (windows done, windows total). */
typedef void (*moec_eval_progress)(void *ctx, int64_t done, int64_t total);

/* Scores ids with model (and base, may be NULL) at window length ctx, each
 * window from position score_from on (0 <= score_from <= ctx-2, else
 * MOEC_ERR_ARG). Fewer than ctx tokens: MOEC_ERR_ARG naming the count.
 * Results accumulate into res (zero it first; moec_ppl_finish computes the
 * means), so several files can be pooled. */
moec_status moec_eval_ppl(moec_exec *model, moec_exec *base, const int32_t *ids, size_t n, int ctx, int score_from,
                          moec_ppl_result *res, moec_eval_progress progress, void *progress_ctx, moec_err *err);
void moec_ppl_finish(moec_ppl_result *res);
/* Adds b's sums into a (for totals over files). */
void moec_ppl_add(moec_ppl_result *a, const moec_ppl_result *b);

/* One multiple-choice item, already tokenized (lm-eval's convention: context
 * and each choice tokenized separately, then concatenated). */
typedef struct moec_mc_item {
    int32_t *ctx;
    size_t n_ctx;
    int n_choices;
    int32_t **choice;       /* [n_choices] token ids */
    size_t *n_choice;       /* [n_choices] */
    size_t *choice_bytes;   /* [n_choices] length of the choice text in bytes (acc_norm) */
    int label;
} moec_mc_item;

typedef struct moec_mc_result {
    int64_t items;
    int64_t correct;        /* argmax of Σ log p(choice tokens) */
    int64_t correct_norm;   /* argmax of that sum / choice bytes */
    double acc, acc_norm;
} moec_mc_result;

/* Scores each item: the context runs once, each choice continues from it.
 * When context + choice exceed the executor's context, the context is cut
 * from the left (as lm-eval does). */
moec_status moec_eval_mc(moec_exec *model, const moec_mc_item *items, size_t n_items, moec_mc_result *res,
                         moec_eval_progress progress, void *progress_ctx, moec_err *err);

/* Log-softmax helpers exposed for tests: log p(target) of one logits row, and
 * KL(p‖q) between the distributions of two logits rows, in double. */
double moec_logprob(const float *logits, int vocab, int target);
double moec_kl_logits(const float *base_logits, const float *model_logits, int vocab);

#endif
