/* report.h - a whole evaluation (text files and a multiple-choice set, with
 * or without a base model) as one JSON report: what moec-eval prints and
 * the results scripts read. */
#ifndef MOEC_EVAL_REPORT_H
#define MOEC_EVAL_REPORT_H

#include <cjson/cJSON.h>

#include "eval/eval.h"
#include "tokenizer/tokenizer.h"

typedef struct moec_eval_spec {
    const char *const *texts; /* text files scored for perplexity */
    int n_texts;
    const char *mc_path;      /* lm-eval-style JSONL, or NULL */
    int ctx;                  /* window length */
    int score_from;           /* first scored position of each window (0 = all but the last; see eval.h) */
} moec_eval_spec;

/* Progress callback: (what, done, total), e.g. ("drama.val.txt", 3, 73). */
typedef void (*moec_report_progress)(void *ctx, const char *what, int64_t done, int64_t total);

/* Runs the evaluation. *out gets a new cJSON object (caller frees):
 *   ctx, score_from, perplexity, tokens (pooled over the files), and with a base
 *   base_perplexity, kld_mean, top1_agreement, ppl_ratio; mc_acc, mc_acc_norm,
 *   mc_items with a multiple-choice set; "files": {basename: same keys}.
 * Both executors must share the tokenizer's vocabulary. */
moec_status moec_eval_report(moec_exec *model, moec_exec *base, const moec_tokenizer *tok, const moec_eval_spec *spec,
                             cJSON **out, moec_report_progress progress, void *progress_ctx, moec_err *err);

#endif
