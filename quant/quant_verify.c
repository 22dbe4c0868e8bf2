/* quant_verify.c - the recipe's last pass: how far the quantized working
 * model is from the original on calibration windows.
 *
 * Per window, the original model runs first (no activation quantization)
 * and its routing choices are kept; then the working model runs (with the
 * recipe's activation quantization). Measured:
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

typedef struct verify_ctx {
    const moec_model *src;
    float *const *s;
    int k, d;
    int *pos;              /* [n_layers] tokens of the current window the layer has seen (chunks) */
    int32_t *fp_sel;       /* [n_layers][max_len][k] original routing of the window */
    int max_len;
    bool original_run;
    double *agree;         /* [n_layers] tokens with the same top-k set */
    double *err_num, *err_den;
    float *acc;            /* [threads][max_len][d] */
    moec_pool *pool;
    const moec_moe_view *v;
    int nt;
    qr_hook_status hs;
    moec_status st[64];
    moec_err err[64];
} verify_ctx;

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
    const float *s = c->s ? c->s[v->layer] : NULL;
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
    if (c->hs.st)
        return;
    const int k = c->k, d = c->d;
    /* the executor may split a window into chunks: v covers tokens [p0, p0 + v->n) of it */
    const int p0 = c->pos[v->layer];
    c->pos[v->layer] += v->n;
    int32_t *fs = c->fp_sel + ((size_t)v->layer * c->max_len + (size_t)p0) * k;
    if (c->original_run) {
        memcpy(fs, v->sel, (size_t)v->n * k * sizeof *fs);
        return;
    }
    for (int i = 0; i < v->n; i++) {
        int match = 0;
        for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++)
                match += v->sel[(size_t)i * k + a] == fs[(size_t)i * k + b];
        c->agree[v->layer] += match == k;
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
    c->err_num[v->layer] += num;
    c->err_den[v->layer] += den;
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

moec_status qr_verify(const qr_windows *w, const moec_model *src, const moec_model *work, float *const *s,
                      int64_t max_tokens, moec_quant_report *rep, moec_err *err)
{
    const moec_config *cfg = &src->cfg;
    const int V = cfg->vocab_size, NL = cfg->n_layers, k = cfg->top_k, d = cfg->hidden_size;
    verify_ctx c = {.src = src, .s = s, .k = k, .d = d, .max_len = w->max_len};
    moec_exec *ex_fp = NULL, *ex_q = NULL;
    float *lp = NULL, *lq = NULL;
    moec_status st = MOEC_OK;
    c.pool = moec_pool_new(w->threads);
    c.nt = moec_pool_size(c.pool);
    c.fp_sel = malloc((size_t)NL * w->max_len * k * sizeof *c.fp_sel);
    c.agree = calloc((size_t)NL, sizeof *c.agree);
    c.pos = calloc((size_t)NL, sizeof *c.pos);
    c.err_num = calloc((size_t)NL, sizeof *c.err_num);
    c.err_den = calloc((size_t)NL, sizeof *c.err_den);
    c.acc = malloc((size_t)c.nt * w->max_len * d * sizeof *c.acc);
    lp = malloc((size_t)w->max_len * V * sizeof *lp);
    lq = malloc((size_t)w->max_len * V * sizeof *lq);
    if (!c.pool || !c.fp_sel || !c.agree || !c.pos || !c.err_num || !c.err_den || !c.acc || !lp || !lq) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "verify: out of memory");
        goto done;
    }
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.threads = w->threads;
    eo.max_ctx = w->max_len;
    if ((st = moec_exec_new(&ex_fp, src, &eo, err)))
        goto done;
    eo.act_bits = w->act_bits;
    if ((st = moec_exec_new(&ex_q, work, &eo, err)))
        goto done;
    moec_exec_set_moe_hook(ex_fp, verify_hook, &c);
    moec_exec_set_moe_hook(ex_q, verify_hook, &c);
    int64_t done_tok = 0, positions = 0, same = 0;
    double kl_sum = 0.0;
    for (int i = 0; i < w->n && !st; i++) {
        if (max_tokens > 0 && done_tok >= max_tokens)
            break;
        const int n = w->len[i];
        const int32_t *ids = w->ids + w->start[i];
        c.original_run = true;
        memset(c.pos, 0, (size_t)NL * sizeof *c.pos);
        moec_exec_reset(ex_fp);
        if ((st = moec_exec_forward(ex_fp, ids, n, lp, true, err)))
            break;
        c.original_run = false;
        memset(c.pos, 0, (size_t)NL * sizeof *c.pos);
        moec_exec_reset(ex_q);
        st = moec_exec_forward(ex_q, ids, n, lq, true, err);
        if (!st && c.hs.st) {
            *err = c.hs.err;
            st = c.hs.st;
        }
        if (st)
            break;
        for (int p = 0; p < n; p++) {
            bool top;
            kl_sum += kl_row(lp + (size_t)p * V, lq + (size_t)p * V, V, &top);
            same += top;
        }
        positions += n;
        done_tok += n;
    }
    if (st)
        goto done;
    rep->verify_tokens = positions;
    rep->verify_kld = positions ? kl_sum / (double)positions : NAN;
    rep->verify_top1 = positions ? (double)same / (double)positions : NAN;
    for (int l = 0; l < NL && l < rep->n_layers; l++) {
        if (cfg->layer_experts[l] == 0)
            continue;
        rep->layers[l].router_agree = positions ? c.agree[l] / (double)positions : NAN;
        rep->layers[l].block_err = c.err_den[l] > 0 ? c.err_num[l] / c.err_den[l] : NAN;
    }
done:
    moec_exec_free(ex_fp);
    moec_exec_free(ex_q);
    moec_pool_free(c.pool);
    free(c.fp_sel), free(c.agree), free(c.pos), free(c.err_num), free(c.err_den), free(c.acc), free(lp), free(lq);
    return st;
}
