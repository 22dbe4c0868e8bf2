/* quant_hessians.c - the calibration passes that build GPTQ's Hessians,
 * layer by layer.
 *
 * Every pass runs all calibration windows through one layer of the
 * working model: a model derived from the original in which everything
 * quantized so far is the packed result itself (recipe.c). The pipeline
 * (lib/pipeline) keeps the windows' hidden states at the layer's input,
 * produced by the already quantized layers before it, so the inputs a pass
 * sees at layer L are those of the partially quantized model, as in GPTQ's
 * sequential procedure, without running the layers before L again.
 *
 * Attention pass (qr_collect_attn): H_x = Σ xxᵀ over every token's q/k/v
 * input and H_a = Σ aaᵀ over its o_proj input.
 *
 * MoE pass (qr_collect_moe), expert e, rows = the tokens routed to e:
 *   H1_e = Σ x xᵀ                         (input of w1 and w3)
 *   H2_e = Σ u uᵀ, u = silu(w1 x̂) ⊙ (w3 x̂) (input of w2; x̂ = x quantized
 *          per token when the recipe quantizes activations, as the executor
 *          feeds w1/w3) with the working model's w1/w3 of that moment: full
 *          precision in the first pass of a layer, already quantized in the
 *          pass that prepares w2;
 * the shared expert the same over all tokens. The Hessians are of
 * unquantized inputs (x, u); only the path that produces u sees the
 * activation quantization. EAQuant's balance rows (eaquant.h) are added
 * after the pass by qr_moe_add_extras, with the same formulas. The same
 * pass gathers routing counts, channel maxima and a token sample. */
#include "quant/quant_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "exec/matmul.h"
#include "exec/ops.h"
#include "quant/gptq.h"

/* Before each window: the hook's error so far stops the pass. */
static moec_status pass_window(void *ctx, int window, moec_err *err)
{
    (void)window;
    const qr_hook_status *hs = ctx;
    if (hs && hs->st) {
        *err = hs->err;
        return hs->st;
    }
    return MOEC_OK;
}

typedef struct pass_hooks {
    qr_hook_status *hs;
    moec_moe_hook mh;
    moec_attn_hook ah;
    void *hctx;
} pass_hooks;

static void pass_moe(void *ctx, const moec_moe_view *v)
{
    pass_hooks *h = ctx;
    h->mh(h->hctx, v);
}

static void pass_attn(void *ctx, const moec_attn_view *v)
{
    pass_hooks *h = ctx;
    h->ah(h->hctx, v);
}

static moec_status pass_window_h(void *ctx, int window, moec_err *err)
{
    return pass_window(((pass_hooks *)ctx)->hs, window, err);
}

moec_status qr_run_pass(const qr_windows *w, int layer, moec_moe_hook mh, moec_attn_hook ah, void *hctx,
                        qr_hook_status *hs, moec_err *err)
{
    pass_hooks h = {hs, mh, ah, hctx};
    moec_status st = moec_pipeline_pass(w->p, layer, mh ? pass_moe : NULL, ah ? pass_attn : NULL, &h, pass_window_h,
                                        err);
    if (!st)
        st = pass_window(hs, 0, err);
    return st;
}

typedef struct pfor {
    void (*fn)(void *ctx, int i, int thread);
    void *ctx;
    int n;
} pfor;

static void pfor_worker(void *vp, int t, int nt)
{
    pfor *p = vp;
    for (int i = t; i < p->n; i += nt)
        p->fn(p->ctx, i, t);
}

void qr_parallel_for(moec_pool *pool, int n, void (*fn)(void *ctx, int i, int thread), void *ctx)
{
    pfor p = {fn, ctx, n};
    moec_pool_run(pool, pfor_worker, &p);
}

/* Per-share failure slots: a share records its first error; the hook
 * reports the lowest share's after the parallel step. */
typedef struct share_errs {
    int n;
    moec_status st[64];
    moec_err err[64];
} share_errs;

static void share_errs_reset(share_errs *s, moec_pool *pool)
{
    s->n = moec_pool_size(pool);
    if (s->n > 64)
        s->n = 64;
    memset(s->st, 0, sizeof s->st);
}

static void share_fail(share_errs *s, int t, moec_status st, const moec_err *e)
{
    t %= s->n;
    if (!s->st[t]) {
        s->st[t] = st;
        s->err[t] = *e;
    }
}

static void share_errs_collect(const share_errs *s, qr_hook_status *hs)
{
    for (int t = 0; t < s->n && !hs->st; t++)
        if (s->st[t]) {
            hs->st = s->st[t];
            hs->err = s->err[t];
        }
}

/* ---- attention ---- */

typedef struct attn_ctx {
    int layer;
    int64_t d, qdim;
    double *Hx, *Ha;
    int64_t n;
    const moec_attn_view *v;
    moec_pool *pool;
    share_errs se;
    qr_hook_status hs;
} attn_ctx;

static void attn_task(void *vc, int i, int t)
{
    attn_ctx *c = vc;
    moec_err e;
    moec_status st = i == 0 ? moec_hessian_accumulate(c->Hx, c->v->x, c->v->n, c->d, &e)
                            : moec_hessian_accumulate(c->Ha, c->v->att, c->v->n, c->qdim, &e);
    if (st)
        share_fail(&c->se, t, st, &e);
}

static void attn_hook(void *vc, const moec_attn_view *v)
{
    attn_ctx *c = vc;
    if (v->layer != c->layer || c->hs.st)
        return;
    if (v->d != c->d || v->qdim != c->qdim) {
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_INTERNAL, "attention pass: layer %d has width %d/%d", v->layer,
                                v->d, v->qdim);
        return;
    }
    c->v = v;
    share_errs_reset(&c->se, c->pool);
    qr_parallel_for(c->pool, 2, attn_task, c);
    share_errs_collect(&c->se, &c->hs);
    c->n += v->n;
}

moec_status qr_collect_attn(const qr_windows *w, const moec_model *work, moec_pool *pool, int layer, double *Hx,
                            double *Ha, int64_t *n, moec_err *err)
{
    attn_ctx c = {.layer = layer, .d = work->cfg.hidden_size,
                  .qdim = (int64_t)work->cfg.n_heads * work->cfg.head_dim, .Hx = Hx, .Ha = Ha, .pool = pool};
    moec_status st = qr_run_pass(w, layer, NULL, attn_hook, &c, &c.hs, err);
    *n = c.n;
    if (st)
        return moec_err_prefix(err, "layer %d attention pass", layer);
    return MOEC_OK;
}

/* ---- MoE ---- */

moec_status qr_add_intermediate(double *H2, const moec_ffn *F, float *X, int64_t rows, int64_t d, int act_bits,
                                    moec_err *err)
{
    const int64_t f = moec_tensor_rows(&F->w1);
    float *h1 = malloc((size_t)(rows * f) * sizeof *h1), *h3 = malloc((size_t)(rows * f) * sizeof *h3);
    if (!h1 || !h3) {
        free(h1), free(h3);
        return moec_err_set(err, MOEC_ERR_NOMEM, "hessian: out of memory for %lld intermediate rows",
                            (long long)rows);
    }
    moec_eaq_act_quant(X, rows, d, act_bits);
    moec_matmul(NULL, h1, X, rows, &F->w1, false);
    moec_matmul(NULL, h3, X, rows, &F->w3, false);
    moec_silu_mul(h1, h3, rows * f);
    moec_status st = moec_hessian_accumulate(H2, h1, rows, f, err);
    free(h1), free(h3);
    return st;
}

typedef struct moe_ctx {
    qr_moe_collect *c;
    const moec_moe_view *v;
    share_errs se;
} moe_ctx;

/* Task e < E: routed expert e; task E: the shared expert. */
static void moe_task(void *vm, int e, int t)
{
    moe_ctx *mc = vm;
    qr_moe_collect *c = mc->c;
    const moec_moe_view *v = mc->v;
    const moec_layer *L = &c->work->layers[c->layer];
    const int64_t d = c->d;
    moec_err err;
    moec_status st = MOEC_OK;
    const bool shared = e == c->E;
    const int64_t rows = shared ? v->n : v->offsets[e + 1] - v->offsets[e];
    double *H1 = shared ? c->Hs1 : c->H1 ? c->H1[e] : NULL;
    double *H2 = shared ? c->Hs2 : c->H2 ? c->H2[e] : NULL;
    if (rows == 0 || (!H1 && !H2))
        return;
    float *X = malloc((size_t)(rows * d) * sizeof *X);
    if (!X) {
        moec_err_set(&err, MOEC_ERR_NOMEM, "hessian: out of memory");
        share_fail(&mc->se, t, MOEC_ERR_NOMEM, &err);
        return;
    }
    if (shared)
        memcpy(X, v->x, (size_t)(rows * d) * sizeof *X);
    else
        for (int64_t r = 0; r < rows; r++)
            memcpy(X + r * d, v->x + (size_t)v->tok[v->offsets[e] + r] * d, (size_t)d * sizeof *X);
    if (H1)
        st = moec_hessian_accumulate(H1, X, rows, d, &err);
    if (!st && H2)
        st = qr_add_intermediate(H2, shared ? &L->shared : &L->experts[e], X, rows, d, c->act_bits, &err);
    free(X);
    if (st)
        share_fail(&mc->se, t, st, &err);
}

static float sigmoid_gate(const moec_tensor *g, const float *x, int d, float *row)
{
    moec_to_f32(row, g->data, g->dtype, (size_t)d);
    return 1.0f / (1.0f + expf(-moec_dot(row, x, d)));
}

static void moe_hook(void *vc, const moec_moe_view *v)
{
    qr_moe_collect *c = vc;
    if (v->layer != c->layer || c->hs.st)
        return;
    if (v->n_experts != c->E || v->d != c->d || v->top_k != c->k) {
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_INTERNAL, "MoE pass: layer %d has %d experts, width %d, top-%d",
                                v->layer, v->n_experts, v->d, v->top_k);
        return;
    }
    const int d = c->d, E = c->E, k = c->k;
    for (int i = 0; i < v->n; i++)
        for (int j = 0; j < k; j++) {
            const int e = v->sel[(size_t)i * k + j];
            if (c->routed)
                c->routed[e]++;
            if (c->gate_sum)
                c->gate_sum[e] += v->gates[(size_t)i * k + j];
        }
    if (c->absmax)
        for (size_t q = 0; q < (size_t)v->n * d; q++)
            c->absmax[q % (size_t)d] = fmaxf(c->absmax[q % (size_t)d], fabsf(v->x[q]));
    if (c->bal && !moec_eaq_balance_add(c->bal, v->n, k, v->x, v->probs, v->sel)) {
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "calibration balance: out of memory");
        return;
    }
    if (c->sx) {
        const moec_layer *L = &c->work->layers[c->layer];
        float *row = malloc((size_t)d * sizeof *row);
        if (!row) {
            c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "token sample: out of memory");
            return;
        }
        for (int i = 0; i < v->n && c->n_sample < c->cap; i++) {
            if ((c->seen + i) % c->stride != 0)
                continue;
            const int q = c->n_sample++;
            const float *x = v->x + (size_t)i * d;
            memcpy(c->sx + (size_t)q * d, x, (size_t)d * sizeof *x);
            memcpy(c->sprobs + (size_t)q * E, v->probs + (size_t)i * E, (size_t)E * sizeof(float));
            memcpy(c->ssel + (size_t)q * k, v->sel + (size_t)i * k, (size_t)k * sizeof(int32_t));
            memcpy(c->sgates + (size_t)q * k, v->gates + (size_t)i * k, (size_t)k * sizeof(float));
            c->sshared[q] = c->work->cfg.shared_gate ? sigmoid_gate(&L->shared_gate, x, d, row) : 1.0f;
        }
        free(row);
    }
    c->seen += v->n;
    if (c->H1 || c->H2 || c->Hs1 || c->Hs2) {
        moe_ctx mc = {.c = c, .v = v};
        share_errs_reset(&mc.se, c->pool);
        qr_parallel_for(c->pool, E + (c->Hs1 || c->Hs2 ? 1 : 0), moe_task, &mc);
        share_errs_collect(&mc.se, &c->hs);
        if (c->n_h)
            for (int e = 0; e < E; e++)
                c->n_h[e] += v->offsets[e + 1] - v->offsets[e];
        c->n_s += v->n;
    }
}

moec_status qr_collect_moe(const qr_windows *w, const moec_model *work, qr_moe_collect *c, moec_err *err)
{
    c->work = work;
    memset(&c->hs, 0, sizeof c->hs);
    moec_status st = qr_run_pass(w, c->layer, moe_hook, NULL, c, &c->hs, err);
    if (st)
        return moec_err_prefix(err, "layer %d expert pass", c->layer);
    return MOEC_OK;
}

typedef struct extra_ctx {
    qr_moe_collect *c;
    moec_eaq_balance *bal;
    const float *s;
    int64_t *extra;
    share_errs se;
} extra_ctx;

static void extra_task(void *vx, int e, int t)
{
    extra_ctx *x = vx;
    qr_moe_collect *c = x->c;
    const float *rows;
    const int64_t n = moec_eaq_balance_extra(x->bal, e, &rows), d = c->d;
    if (x->extra)
        x->extra[e] = n;
    if (n == 0)
        return;
    moec_err err;
    moec_status st = MOEC_OK;
    float *X = malloc((size_t)(n * d) * sizeof *X);
    if (!X) {
        moec_err_set(&err, MOEC_ERR_NOMEM, "calibration balance: out of memory");
        share_fail(&x->se, t, MOEC_ERR_NOMEM, &err);
        return;
    }
    for (int64_t q = 0; q < n * d; q++)
        X[q] = x->s ? rows[q] / x->s[q % d] : rows[q];
    if (c->H1)
        st = moec_hessian_accumulate(c->H1[e], X, n, d, &err);
    if (!st && c->H2)
        st = qr_add_intermediate(c->H2[e], &c->work->layers[c->layer].experts[e], X, n, d, c->act_bits, &err);
    free(X);
    if (st)
        share_fail(&x->se, t, st, &err);
    else if (c->n_h)
        c->n_h[e] += n;
}

moec_status qr_moe_add_extras(qr_moe_collect *c, moec_eaq_balance *bal, const float *s, int64_t *extra,
                              moec_err *err)
{
    extra_ctx x = {.c = c, .bal = bal, .s = s, .extra = extra};
    share_errs_reset(&x.se, c->pool);
    /* the balance sorts each expert's rows on first use: one task per expert touches only its own */
    qr_parallel_for(c->pool, c->E, extra_task, &x);
    qr_hook_status hs = {0};
    share_errs_collect(&x.se, &hs);
    if (hs.st) {
        *err = hs.err;
        return moec_err_prefix(err, "layer %d", c->layer);
    }
    return MOEC_OK;
}
