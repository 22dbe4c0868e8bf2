/* quant_verify.c - the recipe's last pass: how far the quantized working
 * model is from the original on calibration windows.
 *
 * It runs layer by layer with the rest of the recipe: the first windows (up
 * to max_tokens) are also kept as hidden states of the original model
 * (no activation quantization), pushed through each original layer once
 * the layer is quantized, its routing choices recorded; then the same
 * windows of the quantized working model (the pipeline's states, with the
 * recipe's activation quantization) move through the finished layer and
 * are compared. At the end both heads give the logits. Each layer sees
 * what a whole forward pass of the final models would show it, so the
 * figures are those of two full runs. Measured:
 *  - mean KL(original ‖ quantized) of the next-token distributions and
 *    top-1 agreement, over every position;
 *  - per MoE layer, the fraction of tokens whose top-k expert set equals
 *    the original model's at that layer (the quantized model's inputs
 *    differ, so this is the end-to-end routing drift);
 *  - per MoE layer, Σ_t ‖moe_q(x_t) − moe(x_t)‖² / Σ_t ‖moe(x_t)‖², the
 *    routed experts' output with quantized weights (as the working model
 *    computes it) against the original experts on the same input x_t and
 *    the same routing: the layer's own quantization error.
 * These are calibration-set figures for the report, not an evaluation. */
#include "quant/quant_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exec/matmul.h"
#include "exec/ops.h"
#include "pipeline/pipeline.h"

struct qr_verify {
    const moec_model *src;
    int k, d, max_len;
    int nv;                /* windows compared */
    int64_t positions;     /* their tokens */
    moec_hstates *orig;    /* the original model's states of those windows */
    moec_exec *ex;         /* over src, one-layer cache */
    const float *s;        /* the current layer's smoothing factors, or NULL */
    int window, pos;       /* window of the current run and tokens of it seen (chunks) */
    bool active, original_run;
    int32_t *fp_sel;       /* [nv][max_len][k] original routing at the current layer */
    double agree;          /* current layer: tokens with the same top-k set */
    double err_num, err_den;
    float *acc;            /* [threads][max_len][d] */
    moec_pool *pool;
    const moec_moe_view *v;
    int nt;
    qr_hook_status hs;
    moec_status st[64];
    moec_err err[64];
};
typedef struct qr_verify verify_ctx;

/* Original expert e on the rows the working model routed to it, gated, into
 * the share's accumulator. */
static void verify_task(void *vc, int e, int t)
{
    verify_ctx *c = vc;
    const moec_moe_view *v = c->v;
    const int d = c->d, k = c->k;
    const int64_t rows = v->offsets[e + 1] - v->offsets[e];
    if (rows == 0)
        return;
    const moec_ffn *F = &c->src->layers[v->layer].experts[e];
    const int64_t f = moec_tensor_rows(&F->w1);
    const float *s = c->s;
    float *X = calloc((size_t)(rows * d), sizeof *X), *Y = malloc((size_t)(rows * d) * sizeof *Y);
    float *h1 = malloc((size_t)(rows * f) * sizeof *h1), *h3 = malloc((size_t)(rows * f) * sizeof *h3);
    if (!X || !Y || !h1 || !h3) {
        if (!c->st[t % 64]) {
            c->st[t % 64] = moec_err_set(&c->err[t % 64], MOEC_ERR_NOMEM, "verify: out of memory");
        }
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *x = v->x + (size_t)v->tok[v->offsets[e] + r] * d;
        for (int j = 0; j < d; j++)
            X[r * d + j] = s ? x[j] * s[j] : x[j];
    }
    moec_matmul(NULL, h1, X, rows, &F->w1, false);
    moec_matmul(NULL, h3, X, rows, &F->w3, false);
    moec_silu_mul(h1, h3, rows * f);
    moec_matmul(NULL, Y, h1, rows, &F->w2, false);
    float *acc = c->acc + (size_t)(t % c->nt) * c->max_len * d;
    for (int64_t r = 0; r < rows; r++) {
        const int i = v->tok[v->offsets[e] + r];
        float g = 0.0f;
        for (int j = 0; j < k; j++)
            if (v->sel[(size_t)i * k + j] == e)
                g = v->gates[(size_t)i * k + j];
        moec_axpy(acc + (size_t)i * d, Y + r * d, g, d);
    }
done:
    free(X), free(Y), free(h1), free(h3);
}

static void verify_hook(void *vc, const moec_moe_view *v)
{
    verify_ctx *c = vc;
    if (c->hs.st || !c->active)
        return;
    const int k = c->k, d = c->d;
    /* the executor may split a window into chunks: v covers tokens [p0, p0 + v->n) of it */
    const int p0 = c->pos;
    c->pos += v->n;
    int32_t *fs = c->fp_sel + ((size_t)c->window * c->max_len + (size_t)p0) * k;
    if (c->original_run) {
        memcpy(fs, v->sel, (size_t)v->n * k * sizeof *fs);
        return;
    }
    for (int i = 0; i < v->n; i++) {
        int match = 0;
        for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++)
                match += v->sel[(size_t)i * k + a] == fs[(size_t)i * k + b];
        c->agree += match == k;
    }
    c->v = v;
    memset(c->acc, 0, (size_t)c->nt * c->max_len * d * sizeof *c->acc);
    memset(c->st, 0, sizeof c->st);
    qr_parallel_for(c->pool, v->n_experts, verify_task, c);
    for (int t = 0; t < 64 && !c->hs.st; t++)
        if (c->st[t]) {
            c->hs.st = c->st[t];
            c->hs.err = c->err[t];
        }
    double num = 0.0, den = 0.0;
    for (size_t q = 0; q < (size_t)v->n * d; q++) {
        float ref = 0.0f;
        for (int t = 0; t < c->nt; t++)
            ref += c->acc[(size_t)t * c->max_len * d + q];
        const double dl = (double)v->routed_out[q] - ref;
        num += dl * dl;
        den += (double)ref * ref;
    }
    c->err_num += num;
    c->err_den += den;
}

/* Before each window of a run: the hook's error so far; which window. */
static moec_status verify_window(void *vc, int window, moec_err *err)
{
    verify_ctx *c = vc;
    if (c->hs.st) {
        *err = c->hs.err;
        return c->hs.st;
    }
    c->window = window;
    c->pos = 0;
    c->active = window < c->nv;
    return MOEC_OK;
}

/* KL(p ‖ q) and whether the argmaxes agree, for two logit rows of length V. */
static double kl_row(const float *zp, const float *zq, int V, bool *same_top)
{
    double mp = -INFINITY, mq = -INFINITY;
    int ap = 0, aq = 0;
    for (int i = 0; i < V; i++) {
        if (zp[i] > mp) {
            mp = zp[i];
            ap = i;
        }
        if (zq[i] > mq) {
            mq = zq[i];
            aq = i;
        }
    }
    double sp = 0.0, sq = 0.0;
    for (int i = 0; i < V; i++) {
        sp += exp(zp[i] - mp);
        sq += exp(zq[i] - mq);
    }
    const double lp = mp + log(sp), lq = mq + log(sq);
    double kl = 0.0;
    for (int i = 0; i < V; i++) {
        const double a = zp[i] - lp, b = zq[i] - lq;
        kl += exp(a) * (a - b);
    }
    *same_top = ap == aq;
    return kl > 0.0 ? kl : 0.0;
}

void qr_verify_free(qr_verify *c)
{
    if (!c)
        return;
    moec_exec_free(c->ex);
    moec_hstates_free(c->orig);
    moec_pool_free(c->pool);
    free(c->fp_sel), free(c->acc);
    free(c);
}

moec_status qr_verify_new(qr_verify **out, const qr_windows *w, const moec_model *src, int64_t max_tokens,
                          moec_err *err)
{
    *out = NULL;
    verify_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return moec_err_set(err, MOEC_ERR_NOMEM, "verify: out of memory");
    c->src = src;
    c->k = src->cfg.top_k;
    c->d = src->cfg.hidden_size;
    /* the first windows up to max_tokens, the one that reaches it included */
    int nv = 0, max_len = 0;
    for (int64_t done = 0; nv < w->n && !(max_tokens > 0 && done >= max_tokens); nv++) {
        done += w->len[nv];
        max_len = w->len[nv] > max_len ? w->len[nv] : max_len;
    }
    c->nv = nv;
    c->max_len = max_len;
    for (int i = 0; i < nv; i++)
        c->positions += w->len[i];
    c->pool = moec_pool_new(w->threads);
    c->nt = c->pool ? moec_pool_size(c->pool) : 1;
    c->fp_sel = malloc((size_t)(nv > 0 ? nv : 1) * max_len * c->k * sizeof *c->fp_sel);
    c->acc = malloc((size_t)c->nt * max_len * c->d * sizeof *c->acc);
    moec_status st = MOEC_OK;
    if (!c->pool || !c->fp_sel || !c->acc)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "verify: out of memory");
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.threads = w->threads;
    eo.max_ctx = max_len;
    eo.layer_cache = true;
    if (!st && nv > 0 && !(st = moec_hstates_new(&c->orig, w->ids, w->len, nv, c->d, err)) &&
        !(st = moec_exec_new(&c->ex, src, &eo, err)))
        st = moec_hstates_embed(c->orig, c->ex, err);
    if (st) {
        qr_verify_free(c);
        return st;
    }
    *out = c;
    return MOEC_OK;
}

moec_status qr_verify_layer(qr_verify *c, moec_pipeline *p, int layer, const float *s, moec_quant_report *rep,
                            moec_err *err)
{
    c->s = s;
    c->agree = c->err_num = c->err_den = 0.0;
    memset(&c->hs, 0, sizeof c->hs);
    moec_status st = MOEC_OK;
    if (c->nv > 0) {
        c->original_run = true;
        moec_exec_set_moe_hook(c->ex, verify_hook, c);
        st = moec_hstates_run(c->orig, c->ex, layer, true, verify_window, c, err);
        moec_exec_set_moe_hook(c->ex, NULL, NULL);
        c->original_run = false;
    }
    /* the quantized side is the pipeline's own move through the finished layer */
    if (!st)
        st = moec_pipeline_advance(p, layer, verify_hook, NULL, c, verify_window, err);
    if (!st && c->hs.st) {
        *err = c->hs.err;
        st = c->hs.st;
    }
    if (st)
        return moec_err_prefix(err, "layer %d verify", layer);
    if (c->src->cfg.layer_experts[layer] > 0 && layer < rep->n_layers) {
        rep->layers[layer].router_agree = c->positions ? c->agree / (double)c->positions : NAN;
        rep->layers[layer].block_err = c->err_den > 0 ? c->err_num / c->err_den : NAN;
    }
    return MOEC_OK;
}

moec_status qr_verify_finish(qr_verify *c, moec_pipeline *p, moec_quant_report *rep, moec_err *err)
{
    const int V = c->src->cfg.vocab_size;
    float *lp = malloc((size_t)c->max_len * V * sizeof *lp), *lq = malloc((size_t)c->max_len * V * sizeof *lq);
    moec_status st = MOEC_OK;
    if (!lp || !lq)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "verify: out of memory for the logits");
    int64_t same = 0;
    double kl_sum = 0.0;
    for (int i = 0; i < c->nv && !st; i++) {
        if ((st = moec_hstates_logits(c->orig, c->ex, i, lp, err)) || (st = moec_pipeline_logits(p, i, lq, err)))
            break;
        for (int q = 0; q < c->orig->len[i]; q++) {
            bool top;
            kl_sum += kl_row(lp + (size_t)q * V, lq + (size_t)q * V, V, &top);
            same += top;
        }
    }
    free(lp), free(lq);
    if (st)
        return moec_err_prefix(err, "verify");
    rep->verify_tokens = c->positions;
    rep->verify_kld = c->positions ? kl_sum / (double)c->positions : NAN;
    rep->verify_top1 = c->positions ? (double)same / (double)c->positions : NAN;
    return MOEC_OK;
}
