/* eval.c - perplexity, KL divergence, top-1 agreement, multiple choice. */
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double log_sum_exp(const float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += exp((double)x[i] - mx);
    return mx + log(s);
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

double moec_logprob(const float *logits, int vocab, int target)
{
    return (double)logits[target] - log_sum_exp(logits, vocab);
}

double moec_kl_logits(const float *base_logits, const float *model_logits, int vocab)
{
    const double lb = log_sum_exp(base_logits, vocab), lm = log_sum_exp(model_logits, vocab);
    double kl = 0.0;
    for (int i = 0; i < vocab; i++) {
        double lpb = (double)base_logits[i] - lb, lpm = (double)model_logits[i] - lm;
        kl += exp(lpb) * (lpb - lpm);
    }
    return kl > 0.0 ? kl : 0.0; /* rounding can leave -1e-17 for equal inputs */
}

void moec_ppl_finish(moec_ppl_result *r)
{
    if (r->tokens <= 0)
        return;
    const double t = (double)r->tokens;
    r->perplexity = exp(r->nll_sum / t);
    if (r->base_nll_sum > 0.0) {
        r->base_perplexity = exp(r->base_nll_sum / t);
        r->kld_mean = r->kld_sum / t;
        r->top1_agreement = (double)r->top1_same / t;
        r->ppl_ratio = r->perplexity / r->base_perplexity;
    }
}

void moec_ppl_add(moec_ppl_result *a, const moec_ppl_result *b)
{
    a->windows += b->windows;
    a->tokens += b->tokens;
    a->nll_sum += b->nll_sum;
    a->base_nll_sum += b->base_nll_sum;
    a->kld_sum += b->kld_sum;
    a->top1_same += b->top1_same;
}

moec_status moec_eval_ppl(moec_exec *model, moec_exec *base, const int32_t *ids, size_t n, int ctx, int score_from,
                          moec_ppl_result *res, moec_eval_progress progress, void *progress_ctx, moec_err *err)
{
    if (ctx < 2)
        return moec_err_set(err, MOEC_ERR_ARG, "context %d is too short to score (at least 2)", ctx);
    if (score_from < 0 || score_from > ctx - 2)
        return moec_err_set(err, MOEC_ERR_ARG, "scoring from position %d: outside 0..%d for a context of %d",
                            score_from, ctx - 2, ctx);
    if (ctx > moec_exec_max_ctx(model) || (base && ctx > moec_exec_max_ctx(base)))
        return moec_err_set(err, MOEC_ERR_ARG, "context %d exceeds the executor's %d", ctx, moec_exec_max_ctx(model));
    if (n < (size_t)ctx)
        return moec_err_set(err, MOEC_ERR_ARG, "only %zu tokens: fewer than one window of %d", n, ctx);
    const int64_t windows = (int64_t)(n / (size_t)ctx);
    const int V = moec_exec_vocab(model);
    if (base && moec_exec_vocab(base) != V)
        return moec_err_set(err, MOEC_ERR_MISMATCH, "model and base have different vocabularies (%d vs %d)", V,
                            moec_exec_vocab(base));
    float *lm = malloc((size_t)ctx * V * sizeof(float));
    float *lb = base ? malloc((size_t)ctx * V * sizeof(float)) : NULL;
    if (!lm || (base && !lb)) {
        free(lm);
        free(lb);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for %d x %d logits", ctx, V);
    }
    moec_status st = MOEC_OK;
    for (int64_t w = 0; w < windows && st == MOEC_OK; w++) {
        const int32_t *win = ids + w * ctx;
        moec_exec_reset(model);
        /* logits only where scored: positions score_from.. (row 0 of lm) */
        if ((st = moec_exec_forward_from(model, win, ctx, lm, score_from, err)))
            break;
        if (base) {
            moec_exec_reset(base);
            if ((st = moec_exec_forward_from(base, win, ctx, lb, score_from, err)))
                break;
        }
        for (int i = score_from; i + 1 < ctx; i++) {
            const float *rm = lm + (size_t)(i - score_from) * V;
            res->nll_sum -= moec_logprob(rm, V, win[i + 1]);
            if (base) {
                const float *rb = lb + (size_t)(i - score_from) * V;
                res->base_nll_sum -= moec_logprob(rb, V, win[i + 1]);
                res->kld_sum += moec_kl_logits(rb, rm, V);
                res->top1_same += argmax(rb, V) == argmax(rm, V);
            }
        }
        res->tokens += ctx - 1 - score_from;
        res->windows++;
        if (progress)
            progress(progress_ctx, w + 1, windows);
    }
    free(lm);
    free(lb);
    return st;
}

moec_status moec_eval_mc(moec_exec *model, const moec_mc_item *items, size_t n_items, moec_mc_result *res,
                         moec_eval_progress progress, void *progress_ctx, moec_err *err)
{
    const int V = moec_exec_vocab(model), max_ctx = moec_exec_max_ctx(model);
    size_t longest = 1;
    for (size_t it = 0; it < n_items; it++)
        for (int c = 0; c < items[it].n_choices; c++)
            longest = items[it].n_choice[c] > longest ? items[it].n_choice[c] : longest;
    float *logits = malloc(longest * (size_t)V * sizeof(float));
    float *last_ctx = malloc((size_t)V * sizeof(float));
    if (!logits || !last_ctx) {
        free(logits);
        free(last_ctx);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    moec_status st = MOEC_OK;
    for (size_t it = 0; it < n_items && st == MOEC_OK; it++) {
        const moec_mc_item *item = &items[it];
        if (item->n_choices < 1 || item->label < 0 || item->label >= item->n_choices) {
            st = moec_err_set(err, MOEC_ERR_ARG, "item %zu: label %d is not one of its %d choices", it, item->label,
                              item->n_choices);
            break;
        }
        size_t need = 0;
        for (int c = 0; c < item->n_choices; c++) {
            if (item->n_choice[c] == 0) {
                st = moec_err_set(err, MOEC_ERR_ARG, "item %zu: choice %d is empty", it, c);
                break;
            }
            need = item->n_choice[c] > need ? item->n_choice[c] : need;
        }
        if (st)
            break;
        if (need >= (size_t)max_ctx) {
            st = moec_err_set(err, MOEC_ERR_ARG, "item %zu: a choice of %zu tokens does not fit the context of %d", it,
                              need, max_ctx);
            break;
        }
        /* keep the end of the context so that context + longest choice fits */
        size_t keep = item->n_ctx;
        if (keep + need > (size_t)max_ctx)
            keep = (size_t)max_ctx - need;
        if (keep == 0) {
            st = moec_err_set(err, MOEC_ERR_ARG, "item %zu: empty context", it);
            break;
        }
        moec_exec_reset(model);
        if ((st = moec_exec_forward(model, item->ctx + (item->n_ctx - keep), (int)keep, last_ctx, false, err)))
            break;
        double best = -INFINITY, best_norm = -INFINITY;
        int pick = 0, pick_norm = 0;
        for (int c = 0; c < item->n_choices && st == MOEC_OK; c++) {
            const int32_t *ch = item->choice[c];
            const int nc = (int)item->n_choice[c];
            moec_exec_truncate(model, (int)keep);
            if ((st = moec_exec_forward(model, ch, nc, logits, true, err)))
                break;
            double ll = moec_logprob(last_ctx, V, ch[0]);
            for (int j = 1; j < nc; j++)
                ll += moec_logprob(logits + (size_t)(j - 1) * V, V, ch[j]);
            double norm = ll / (double)(item->choice_bytes[c] ? item->choice_bytes[c] : 1);
            if (ll > best) {
                best = ll;
                pick = c;
            }
            if (norm > best_norm) {
                best_norm = norm;
                pick_norm = c;
            }
        }
        if (st)
            break;
        res->items++;
        res->correct += pick == item->label;
        res->correct_norm += pick_norm == item->label;
        if (progress)
            progress(progress_ctx, (int64_t)it + 1, (int64_t)n_items);
    }
    if (res->items) {
        res->acc = (double)res->correct / (double)res->items;
        res->acc_norm = (double)res->correct_norm / (double)res->items;
    }
    free(logits);
    free(last_ctx);
    return st;
}
