/* exec.c - forward pass: embeddings -> layers (attention, MoE) -> logits.
 * Reads like the math; kernels are in ops.c and matmul.c. */
#include "exec/exec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/threadpool.h"
#include "exec/matmul.h"
#include "exec/ops.h"
#include "core/qformat.h"

#include <cblas.h>

struct moec_exec {
    const moec_model *m;
    moec_pool *pool;
    int n_threads;
    int max_ctx;
    int pos;
    bool layer_cache;     /* moec_exec_opts.layer_cache: the KV cache holds one layer */
    int qdim, kvdim;      /* H*hd, KV*hd */
    int ffn_max;          /* widest FFN intermediate among experts, shared, dense */

    float *kcache;        /* [L][max_ctx][kvdim] */
    float *vcache;        /* [L][max_ctx][kvdim] */
    float *rope;          /* [max_ctx][hd]: cos[hd/2] then sin[hd/2] per position */

    /* activations for a batch of up to cap tokens */
    int cap;
    float *x;             /* [cap][d] residual stream */
    float *xn;            /* [cap][d] normed input of the current block */
    float *q;             /* [cap][qdim] */
    float *k, *v;         /* [cap][kvdim] */
    float *att;           /* [cap][qdim] attention output before o_proj */
    float *logits_e;      /* [cap][E] router logits */
    float *probs;         /* [cap][E] */
    int32_t *sel;         /* [cap][top_k] */
    float *gates;         /* [cap][top_k] */
    float *routed;        /* [cap][d] Σ gate·y */
    int32_t *tok;         /* [cap*top_k] token of each expert row */
    float *row_gate;      /* [cap*top_k] gate of each expert row */
    int *offsets;         /* [E_max+1] */
    float *gx;            /* [cap*top_k][d] gathered expert inputs */
    float *h1, *h3;       /* [cap*top_k][ffn_max] */
    float *ye;            /* [cap*top_k][d] expert outputs */
    float *sgate;         /* [cap] shared-expert gate logits */
    float **scores;       /* per thread: [cap][max_ctx] attention scores */
    float *hidden_last;   /* [d] */
    int act_bits;         /* moec_exec_opts.act_bits */
    float *aq;            /* act_bits: [max(cap, cap*top_k)][max(d, qdim, ffn_max)] quantized linear inputs */

    moec_moe_hook hook;
    void *hook_ctx;
    moec_attn_hook attn_hook;
    void *attn_hook_ctx;
    bool profiling;
    uint64_t prof[MOEC_OP_COUNT];
};

static const char *const op_names[MOEC_OP_COUNT] = {
    "embed", "norm", "qkv", "attention", "o_proj", "router", "experts", "shared", "lm_head"};

const char *moec_op_name(moec_op op) { return (unsigned)op < MOEC_OP_COUNT ? op_names[op] : "?"; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Profiling costs two clock reads per op, only when enabled. */
static inline uint64_t prof_start(const moec_exec *ex) { return ex->profiling ? now_ns() : 0; }
static inline void prof_stop(moec_exec *ex, moec_op op, uint64_t t0)
{
    if (ex->profiling)
        ex->prof[op] += now_ns() - t0;
}

static int max_experts(const moec_config *c)
{
    int e = 0;
    for (int l = 0; l < c->n_layers; l++)
        e = c->layer_experts[l] > e ? c->layer_experts[l] : e;
    return e;
}

static void free_batch(moec_exec *ex)
{
    free(ex->x), free(ex->xn), free(ex->q), free(ex->k), free(ex->v), free(ex->att);
    free(ex->logits_e), free(ex->probs), free(ex->sel), free(ex->gates), free(ex->routed);
    free(ex->tok), free(ex->row_gate), free(ex->gx), free(ex->h1), free(ex->h3), free(ex->ye);
    free(ex->sgate), free(ex->aq);
    ex->aq = NULL;
    if (ex->scores)
        for (int t = 0; t < ex->n_threads; t++)
            free(ex->scores[t]);
    free(ex->scores);
    ex->scores = NULL;
    ex->cap = 0;
}

/* Grows the batch buffers to hold n tokens. */
static moec_status reserve_batch(moec_exec *ex, int n, moec_err *err)
{
    if (n <= ex->cap)
        return MOEC_OK;
    free_batch(ex);
    const moec_config *c = &ex->m->cfg;
    const size_t d = (size_t)c->hidden_size, E = (size_t)(max_experts(c) ? max_experts(c) : 1);
    const size_t k = (size_t)c->top_k, rows = (size_t)n * k, cap = (size_t)n;
    bool ok = (ex->x = malloc(cap * d * 4)) && (ex->xn = malloc(cap * d * 4)) &&
              (ex->q = malloc(cap * (size_t)ex->qdim * 4)) && (ex->k = malloc(cap * (size_t)ex->kvdim * 4)) &&
              (ex->v = malloc(cap * (size_t)ex->kvdim * 4)) && (ex->att = malloc(cap * (size_t)ex->qdim * 4)) &&
              (ex->logits_e = malloc(cap * E * 4)) && (ex->probs = malloc(cap * E * 4)) &&
              (ex->sel = malloc(cap * k * 4)) && (ex->gates = malloc(cap * k * 4)) &&
              (ex->routed = malloc(cap * d * 4)) && (ex->tok = malloc(rows * 4)) &&
              (ex->row_gate = malloc(rows * 4)) && (ex->gx = malloc((rows > cap ? rows : cap) * d * 4)) &&
              (ex->h1 = malloc((rows > cap ? rows : cap) * (size_t)ex->ffn_max * 4)) &&
              (ex->h3 = malloc((rows > cap ? rows : cap) * (size_t)ex->ffn_max * 4)) &&
              (ex->ye = malloc((rows > cap ? rows : cap) * d * 4)) && (ex->sgate = malloc(cap * 4)) &&
              (ex->scores = calloc((size_t)ex->n_threads, sizeof(float *)));
    for (int t = 0; ok && t < ex->n_threads; t++)
        ok = (ex->scores[t] = malloc(cap * (size_t)ex->max_ctx * 4)) != NULL;
    if (ok && ex->act_bits) {
        size_t w = d > (size_t)ex->qdim ? d : (size_t)ex->qdim;
        w = w > (size_t)ex->ffn_max ? w : (size_t)ex->ffn_max;
        ok = (ex->aq = malloc((rows > cap ? rows : cap) * w * 4)) != NULL;
    }
    if (!ok) {
        free_batch(ex);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for a batch of %d tokens", n);
    }
    ex->cap = n;
    return MOEC_OK;
}

/* cos/sin of pos·θ^(-2i/hd), computed in float32 as transformers does so that
 * logits match its forward pass closely at long positions too. */
static void fill_rope(float *rope, int max_ctx, int hd, float theta)
{
    const int h = hd / 2;
    for (int i = 0; i < h; i++) {
        float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
        for (int p = 0; p < max_ctx; p++) {
            float a = (float)p * inv;
            rope[(size_t)p * hd + i] = (float)cos((double)a);
            rope[(size_t)p * hd + h + i] = (float)sin((double)a);
        }
    }
}

moec_status moec_exec_new(moec_exec **out, const moec_model *m, const moec_exec_opts *opts, moec_err *err)
{
    *out = NULL;
    const moec_config *c = &m->cfg;
    moec_exec_opts o = opts ? *opts : (moec_exec_opts)MOEC_EXEC_OPTS_DEFAULT;
    if (o.threads < 1)
        o.threads = 1;
    if (o.max_ctx <= 0)
        o.max_ctx = c->max_positions < 2048 ? c->max_positions : 2048;
    if (o.max_ctx > c->max_positions)
        return moec_err_set(err, MOEC_ERR_ARG, "context %d exceeds the model's max_position_embeddings %d",
                            o.max_ctx, c->max_positions);
    if (o.act_bits != 0 && (o.act_bits < 2 || o.act_bits > 16))
        return moec_err_set(err, MOEC_ERR_ARG, "activation bits %d: expected 0 (off) or 2..16", o.act_bits);
    moec_exec *ex = calloc(1, sizeof *ex);
    if (!ex)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    ex->m = m;
    ex->n_threads = o.threads;
    ex->max_ctx = o.max_ctx;
    ex->act_bits = o.act_bits;
    ex->qdim = c->n_heads * c->head_dim;
    ex->kvdim = c->n_kv_heads * c->head_dim;
    ex->ffn_max = c->expert_ffn;
    if (c->shared_ffn > ex->ffn_max)
        ex->ffn_max = c->shared_ffn;
    if (c->dense_ffn > ex->ffn_max)
        ex->ffn_max = c->dense_ffn;
    ex->layer_cache = o.layer_cache;
    size_t kv = (size_t)(o.layer_cache ? 1 : c->n_layers) * (size_t)o.max_ctx * (size_t)ex->kvdim;
    ex->kcache = malloc(kv * sizeof(float));
    ex->vcache = malloc(kv * sizeof(float));
    ex->rope = malloc((size_t)o.max_ctx * (size_t)c->head_dim * sizeof(float));
    ex->hidden_last = malloc((size_t)c->hidden_size * sizeof(float));
    ex->pool = moec_pool_new(o.threads);
    if (!ex->kcache || !ex->vcache || !ex->rope || !ex->hidden_last || !ex->pool) {
        moec_exec_free(ex);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for a %d-token KV cache", o.max_ctx);
    }
    fill_rope(ex->rope, o.max_ctx, c->head_dim, c->rope_theta);
    *out = ex;
    return MOEC_OK;
}

void moec_exec_free(moec_exec *ex)
{
    if (!ex)
        return;
    free_batch(ex);
    free(ex->kcache);
    free(ex->vcache);
    free(ex->rope);
    free(ex->hidden_last);
    free(ex->offsets);
    if (ex->pool)
        moec_pool_free(ex->pool);
    free(ex);
}

void moec_exec_reset(moec_exec *ex) { ex->pos = 0; }

void moec_exec_truncate(moec_exec *ex, int pos)
{
    if (pos >= 0 && pos < ex->pos)
        ex->pos = pos;
}
int moec_exec_pos(const moec_exec *ex) { return ex->pos; }
int moec_exec_max_ctx(const moec_exec *ex) { return ex->max_ctx; }
int moec_exec_vocab(const moec_exec *ex) { return ex->m->cfg.vocab_size; }
const moec_model *moec_exec_model(const moec_exec *ex) { return ex->m; }

void moec_exec_set_moe_hook(moec_exec *ex, moec_moe_hook fn, void *ctx)
{
    ex->hook = fn;
    ex->hook_ctx = ctx;
}

void moec_exec_set_attn_hook(moec_exec *ex, moec_attn_hook fn, void *ctx)
{
    ex->attn_hook = fn;
    ex->attn_hook_ctx = ctx;
}

void moec_exec_profile_enable(moec_exec *ex, bool on) { ex->profiling = on; }

void moec_exec_profile(const moec_exec *ex, uint64_t ns[MOEC_OP_COUNT])
{
    memcpy(ns, ex->prof, sizeof ex->prof);
}

/* ---- activation fake quantization (moec_exec_opts.act_bits, EAQuant W4A4) ----
 * Returns x itself when off, else ex->aq holding x[rows][cols] quantized per
 * row (token) to act_bits bits, symmetric, scale from the row's max |x|, and
 * dequantized again: the linear layer then computes with exactly the values
 * an integer kernel would see. */
static const float *act_quant(moec_exec *ex, const float *x, int rows, int cols)
{
    if (!ex->act_bits)
        return x;
    const float qmax = (float)((1 << (ex->act_bits - 1)) - 1);
    for (int i = 0; i < rows; i++) {
        const float *r = x + (size_t)i * cols;
        float *o = ex->aq + (size_t)i * cols;
        float amax = 0.0f;
        for (int c = 0; c < cols; c++)
            amax = fmaxf(amax, fabsf(r[c]));
        const float scale = amax / qmax;
        for (int c = 0; c < cols; c++) {
            float q = scale > 0.0f ? rintf(r[c] / scale) : 0.0f;
            o[c] = fminf(fmaxf(q, -qmax), qmax) * scale;
        }
    }
    return ex->aq;
}

/* ---- attention ---- */

typedef struct {
    moec_exec *ex;
    int layer, n, p0;
} attn_job;

/* One head: scores = q·kᵀ/√hd over the cached positions (causal), softmax, · v. */
static void attend_head(moec_exec *ex, int layer, int h, int n, int p0, float *scores)
{
    const moec_config *c = &ex->m->cfg;
    const int hd = c->head_dim, group = c->n_heads / c->n_kv_heads, kvh = h / group;
    const size_t slot = ex->layer_cache ? 0 : (size_t)layer;
    const float *K = ex->kcache + (slot * ex->max_ctx) * ex->kvdim + (size_t)kvh * hd;
    const float *V = ex->vcache + (slot * ex->max_ctx) * ex->kvdim + (size_t)kvh * hd;
    const float *Q = ex->q + (size_t)h * hd;
    float *O = ex->att + (size_t)h * hd;
    const float scale = 1.0f / sqrtf((float)hd);

    if (n >= 8) {
        /* batch: S = Q Kᵀ and O = P V as matrix products over blocks of
         * queries, each block only against the keys it can see (causal), so
         * the masked upper triangle is mostly never computed */
        enum { QB = 64 };
        for (int i0 = 0; i0 < n; i0 += QB) {
            const int b = n - i0 < QB ? n - i0 : QB;
            const int keys = p0 + i0 + b;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, keys, hd, scale, Q + (size_t)i0 * ex->qdim,
                        ex->qdim, K, ex->kvdim, 0.0f, scores, keys);
            for (int i = 0; i < b; i++) {
                float *s = scores + (size_t)i * keys;
                int len = p0 + i0 + i + 1;
                moec_softmax(s, len);
                memset(s + len, 0, (size_t)(keys - len) * sizeof(float));
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, hd, keys, 1.0f, scores, keys, V, ex->kvdim,
                        0.0f, O + (size_t)i0 * ex->qdim, ex->qdim);
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        const float *q = Q + (size_t)i * ex->qdim;
        int len = p0 + i + 1;
        for (int j = 0; j < len; j++)
            scores[j] = moec_dot(q, K + (size_t)j * ex->kvdim, hd) * scale;
        moec_softmax(scores, len);
        float *o = O + (size_t)i * ex->qdim;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int j = 0; j < len; j++)
            moec_axpy(o, V + (size_t)j * ex->kvdim, scores[j], hd);
    }
}

static void attn_worker(void *vjob, int t, int nt)
{
    attn_job *job = vjob;
    for (int h = t; h < job->ex->m->cfg.n_heads; h += nt)
        attend_head(job->ex, job->layer, h, job->n, job->p0, job->ex->scores[t]);
}

static void attention_block(moec_exec *ex, int l, int n)
{
    const moec_config *c = &ex->m->cfg;
    const moec_layer *L = &ex->m->layers[l];
    const int d = c->hidden_size, hd = c->head_dim, p0 = ex->pos;
    uint64_t t0;
    {
        t0 = prof_start(ex);
        moec_rmsnorm_rows(ex->xn, ex->x, &L->attn_norm, n, d, c->rms_eps);
        prof_stop(ex, MOEC_OP_NORM, t0);
    }
    t0 = prof_start(ex);
    const float *xq = act_quant(ex, ex->xn, n, d);
    moec_matmul(ex->pool, ex->q, xq, n, &L->wq, false);
    moec_matmul(ex->pool, ex->k, xq, n, &L->wk, false);
    moec_matmul(ex->pool, ex->v, xq, n, &L->wv, false);
    if (c->qkv_bias) {
        moec_add_bias_rows(ex->q, &L->bq, n, ex->qdim);
        moec_add_bias_rows(ex->k, &L->bk, n, ex->kvdim);
        moec_add_bias_rows(ex->v, &L->bv, n, ex->kvdim);
    }
    if (c->qk_norm == MOEC_QK_NORM_HEAD) {
        moec_rmsnorm_rows(ex->q, ex->q, &L->q_norm, n * c->n_heads, hd, c->rms_eps);
        moec_rmsnorm_rows(ex->k, ex->k, &L->k_norm, n * c->n_kv_heads, hd, c->rms_eps);
    } else if (c->qk_norm == MOEC_QK_NORM_FULL) {
        moec_rmsnorm_rows(ex->q, ex->q, &L->q_norm, n, ex->qdim, c->rms_eps);
        moec_rmsnorm_rows(ex->k, ex->k, &L->k_norm, n, ex->kvdim, c->rms_eps);
    }
    for (int i = 0; i < n; i++) {
        const float *cs = ex->rope + (size_t)(p0 + i) * hd;
        for (int h = 0; h < c->n_heads; h++)
            moec_rope_head(ex->q + (size_t)i * ex->qdim + (size_t)h * hd, cs, hd);
        for (int h = 0; h < c->n_kv_heads; h++)
            moec_rope_head(ex->k + (size_t)i * ex->kvdim + (size_t)h * hd, cs, hd);
    }
    size_t off = ((size_t)(ex->layer_cache ? 0 : l) * ex->max_ctx + (size_t)p0) * ex->kvdim;
    memcpy(ex->kcache + off, ex->k, (size_t)n * ex->kvdim * sizeof(float));
    memcpy(ex->vcache + off, ex->v, (size_t)n * ex->kvdim * sizeof(float));
    prof_stop(ex, MOEC_OP_QKV, t0);
    {
        t0 = prof_start(ex);
        attn_job job = {ex, l, n, p0};
        moec_pool_run(ex->pool, attn_worker, &job);
        prof_stop(ex, MOEC_OP_ATTN, t0);
    }
    if (ex->attn_hook) {
        moec_attn_view v = {l, n, d, ex->qdim, ex->xn, ex->att};
        ex->attn_hook(ex->attn_hook_ctx, &v);
    }
    t0 = prof_start(ex);
    moec_matmul(ex->pool, ex->x, act_quant(ex, ex->att, n, ex->qdim), n, &L->wo, true); /* residual add */
    prof_stop(ex, MOEC_OP_OPROJ, t0);
}

/* ---- feed-forward ---- */

/* out[rows][d] (+)= w2 · (silu(w1 · X) ⊙ (w3 · X)) */
static void ffn_apply(moec_exec *ex, const moec_ffn *f, const float *X, int rows, float *out, bool accumulate)
{
    const int64_t ff = moec_tensor_rows(&f->w1);
    X = act_quant(ex, X, rows, (int)moec_tensor_cols(&f->w1));
    moec_matmul(ex->pool, ex->h1, X, rows, &f->w1, false);
    moec_matmul(ex->pool, ex->h3, X, rows, &f->w3, false);
    moec_silu_mul(ex->h1, ex->h3, (int64_t)rows * ff);
    moec_matmul(ex->pool, out, act_quant(ex, ex->h1, rows, (int)ff), rows, &f->w2, accumulate);
}

/* Router: softmax over all experts, top-k by probability, optional renormalisation. */
static void route(moec_exec *ex, const moec_layer *L, int n)
{
    const moec_config *c = &ex->m->cfg;
    const int E = L->n_experts, k = c->top_k;
    moec_matmul(ex->pool, ex->logits_e, ex->xn, n, &L->router, false);
    for (int i = 0; i < n; i++) {
        float *p = ex->probs + (size_t)i * E;
        memcpy(p, ex->logits_e + (size_t)i * E, (size_t)E * sizeof(float));
        moec_softmax(p, E);
        int32_t *s = ex->sel + (size_t)i * k;
        float *g = ex->gates + (size_t)i * k;
        float sum = 0.0f;
        for (int j = 0; j < k; j++) { /* selection by repeated max: k is small; ties -> lower index */
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int q = 0; q < j; q++)
                    taken |= s[q] == e;
                if (!taken && (best < 0 || p[e] > p[best]))
                    best = e;
            }
            s[j] = best;
            g[j] = p[best];
            sum += p[best];
        }
        if (c->norm_topk)
            for (int j = 0; j < k; j++)
                g[j] /= sum;
    }
}

static moec_status moe_block(moec_exec *ex, int l, int n, moec_err *err)
{
    const moec_config *c = &ex->m->cfg;
    const moec_layer *L = &ex->m->layers[l];
    const int d = c->hidden_size, E = L->n_experts, k = c->top_k;
    uint64_t t0;
    {
        t0 = prof_start(ex);
        moec_rmsnorm_rows(ex->xn, ex->x, &L->ffn_norm, n, d, c->rms_eps);
        prof_stop(ex, MOEC_OP_NORM, t0);
    }
    if (E == 0) {
        t0 = prof_start(ex);
        ffn_apply(ex, &L->dense, ex->xn, n, ex->x, true);
        prof_stop(ex, MOEC_OP_EXPERTS, t0);
        return MOEC_OK;
    }
    {
        t0 = prof_start(ex);
        route(ex, L, n);
        prof_stop(ex, MOEC_OP_ROUTER, t0);
    }
    t0 = prof_start(ex);
    /* group the n*k (token, expert) pairs by expert */
    int *off = realloc(ex->offsets, (size_t)(E + 1) * sizeof(int));
    if (!off)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    ex->offsets = off;
    memset(off, 0, (size_t)(E + 1) * sizeof(int));
    for (int i = 0; i < n * k; i++)
        off[ex->sel[i] + 1]++;
    for (int e = 0; e < E; e++)
        off[e + 1] += off[e];
    int fill[1024];
    int *cursor = E <= 1024 ? fill : malloc((size_t)E * sizeof(int));
    if (!cursor)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    memcpy(cursor, off, (size_t)E * sizeof(int));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            int e = ex->sel[i * k + j], r = cursor[e]++;
            ex->tok[r] = i;
            ex->row_gate[r] = ex->gates[i * k + j];
            memcpy(ex->gx + (size_t)r * d, ex->xn + (size_t)i * d, (size_t)d * sizeof(float));
        }
    if (cursor != fill)
        free(cursor);
    for (int e = 0; e < E; e++) {
        int rows = off[e + 1] - off[e];
        if (rows > 0)
            ffn_apply(ex, &L->experts[e], ex->gx + (size_t)off[e] * d, rows, ex->ye + (size_t)off[e] * d, false);
    }
    memset(ex->routed, 0, (size_t)n * d * sizeof(float));
    for (int r = 0; r < n * k; r++)
        moec_axpy(ex->routed + (size_t)ex->tok[r] * d, ex->ye + (size_t)r * d, ex->row_gate[r], d);
    prof_stop(ex, MOEC_OP_EXPERTS, t0);

    if (ex->hook) {
        moec_moe_view v = {l, n, d, E, k, ex->x, ex->xn, ex->logits_e, ex->probs, ex->sel, ex->gates,
                           off, ex->tok, ex->ye, ex->routed};
        ex->hook(ex->hook_ctx, &v);
    }
    moec_axpy(ex->x, ex->routed, 1.0f, (int64_t)n * d);

    if (c->shared_ffn > 0) {
        t0 = prof_start(ex);
        /* the shared expert reads the same normed input; its output is added, gated */
        ffn_apply(ex, &L->shared, ex->xn, n, ex->ye, false);
        if (c->shared_gate) {
            moec_matmul(ex->pool, ex->sgate, ex->xn, n, &L->shared_gate, false);
            for (int i = 0; i < n; i++) {
                float g = 1.0f / (1.0f + expf(-ex->sgate[i]));
                moec_axpy(ex->x + (size_t)i * d, ex->ye + (size_t)i * d, g, d);
            }
        } else {
            moec_axpy(ex->x, ex->ye, 1.0f, (int64_t)n * d);
        }
        prof_stop(ex, MOEC_OP_SHARED, t0);
    }
    return MOEC_OK;
}

/* ---- whole model ---- */

/* x[n][d] = the embedding rows of tokens (checked by the caller). */
static void embed_rows(moec_exec *ex, const int32_t *tokens, int n, float *x)
{
    const moec_model *m = ex->m;
    const int d = m->cfg.hidden_size;
    const uint64_t t0 = prof_start(ex);
    const size_t row_bytes = (size_t)d * moec_dtype_size(m->embed.dtype);
    for (int i = 0; i < n; i++) {
        if (m->embed.dtype == MOEC_DT_QUANT) /* quantized embedding: dequantize the token's row */
            moec_qformat_dequant_row(m->embed.q, tokens[i], x + (size_t)i * d);
        else
            moec_to_f32(x + (size_t)i * d, (const char *)m->embed.data + (size_t)tokens[i] * row_bytes,
                        m->embed.dtype, (size_t)d);
    }
    prof_stop(ex, MOEC_OP_EMBED, t0);
}

/* logits of the n rows of ex->x: all of them, or only the last; p0 is the
 * position of the first row (for the error message). */
static moec_status head_rows(moec_exec *ex, int n, int p0, float *logits, bool all_logits, moec_err *err)
{
    const moec_model *m = ex->m;
    const moec_config *c = &m->cfg;
    const int d = c->hidden_size;
    const uint64_t t0 = prof_start(ex);
    if (all_logits) {
        moec_rmsnorm_rows(ex->xn, ex->x, &m->final_norm, n, d, c->rms_eps);
        moec_matmul(ex->pool, logits, ex->xn, n, &m->lm_head, false);
    } else {
        moec_rmsnorm(ex->hidden_last, ex->x + (size_t)(n - 1) * d, &m->final_norm, d, c->rms_eps);
        moec_matmul(ex->pool, logits, ex->hidden_last, 1, &m->lm_head, false);
    }
    prof_stop(ex, MOEC_OP_HEAD, t0);
    size_t cnt = (size_t)(all_logits ? n : 1) * (size_t)c->vocab_size;
    for (size_t i = 0; i < cnt; i++)
        if (!isfinite(logits[i]))
            return moec_err_set(err, MOEC_ERR_NUMERIC, "non-finite logit at position %d (weights with NaN/Inf?)",
                                p0 + (int)(i / (size_t)c->vocab_size));
    return MOEC_OK;
}

static moec_status forward_chunk(moec_exec *ex, const int32_t *tokens, int n, float *logits, bool all_logits,
                                 moec_err *err)
{
    const moec_config *c = &ex->m->cfg;
    moec_status st = reserve_batch(ex, n, err);
    if (st)
        return st;
    embed_rows(ex, tokens, n, ex->x);
    for (int l = 0; l < c->n_layers; l++) {
        attention_block(ex, l, n);
        if ((st = moe_block(ex, l, n, err)))
            return st;
    }
    ex->pos += n;
    if (!logits)
        return MOEC_OK;
    return head_rows(ex, n, ex->pos - n, logits, all_logits, err);
}

static moec_status check_tokens(const moec_exec *ex, const int32_t *tokens, int n, moec_err *err)
{
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= ex->m->cfg.vocab_size)
            return moec_err_set(err, MOEC_ERR_ARG, "token id %d is outside the vocabulary [0, %d)", tokens[i],
                                ex->m->cfg.vocab_size);
    return MOEC_OK;
}

moec_status moec_exec_forward(moec_exec *ex, const int32_t *tokens, int n, float *logits, bool all_logits,
                              moec_err *err)
{
    const moec_config *c = &ex->m->cfg;
    if (ex->layer_cache)
        return moec_err_set(err, MOEC_ERR_ARG, "forward: this executor caches one layer (layer-at-a-time use only)");
    if (n <= 0)
        return moec_err_set(err, MOEC_ERR_ARG, "forward: no tokens");
    if (n > ex->max_ctx - ex->pos)
        return moec_err_set(err, MOEC_ERR_ARG, "forward: %d tokens at position %d exceed the context of %d", n,
                            ex->pos, ex->max_ctx);
    moec_status st = check_tokens(ex, tokens, n, err);
    if (st)
        return st;
    for (int i0 = 0; i0 < n; i0 += MOEC_EXEC_CHUNK) {
        int m = n - i0 < MOEC_EXEC_CHUNK ? n - i0 : MOEC_EXEC_CHUNK;
        bool last = i0 + m == n;
        float *out = NULL;
        if (logits && all_logits)
            out = logits + (size_t)i0 * c->vocab_size;
        else if (logits && last)
            out = logits;
        if ((st = forward_chunk(ex, tokens + i0, m, out, all_logits, err)))
            return st;
    }
    return MOEC_OK;
}

/* ---- one layer at a time (lib/pipeline) ---- */

moec_status moec_exec_embed(moec_exec *ex, const int32_t *tokens, int n, float *x, moec_err *err)
{
    if (n <= 0)
        return moec_err_set(err, MOEC_ERR_ARG, "embed: no tokens");
    moec_status st = check_tokens(ex, tokens, n, err);
    if (st)
        return st;
    embed_rows(ex, tokens, n, x);
    return MOEC_OK;
}

moec_status moec_exec_layer(moec_exec *ex, int layer, int pos, float *x, int n, moec_err *err)
{
    const moec_config *c = &ex->m->cfg;
    const size_t d = (size_t)c->hidden_size;
    if (layer < 0 || layer >= c->n_layers || n <= 0 || pos < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "layer %d: %d tokens at position %d", layer, n, pos);
    if (n > ex->max_ctx - pos)
        return moec_err_set(err, MOEC_ERR_ARG, "layer %d: %d tokens at position %d exceed the context of %d", layer,
                            n, pos, ex->max_ctx);
    for (int i0 = 0; i0 < n; i0 += MOEC_EXEC_CHUNK) {
        const int m = n - i0 < MOEC_EXEC_CHUNK ? n - i0 : MOEC_EXEC_CHUNK;
        moec_status st = reserve_batch(ex, m, err);
        if (st)
            return st;
        memcpy(ex->x, x + (size_t)i0 * d, (size_t)m * d * sizeof(float));
        ex->pos = pos + i0;
        attention_block(ex, layer, m);
        if ((st = moe_block(ex, layer, m, err)))
            return st;
        memcpy(x + (size_t)i0 * d, ex->x, (size_t)m * d * sizeof(float));
    }
    ex->pos = pos + n;
    return MOEC_OK;
}

moec_status moec_exec_head(moec_exec *ex, const float *x, int n, float *logits, moec_err *err)
{
    const moec_config *c = &ex->m->cfg;
    const size_t d = (size_t)c->hidden_size;
    if (n <= 0)
        return moec_err_set(err, MOEC_ERR_ARG, "head: no tokens");
    for (int i0 = 0; i0 < n; i0 += MOEC_EXEC_CHUNK) {
        const int m = n - i0 < MOEC_EXEC_CHUNK ? n - i0 : MOEC_EXEC_CHUNK;
        moec_status st = reserve_batch(ex, m, err);
        if (st)
            return st;
        memcpy(ex->x, x + (size_t)i0 * d, (size_t)m * d * sizeof(float));
        if ((st = head_rows(ex, m, i0, logits + (size_t)i0 * c->vocab_size, true, err)))
            return st;
    }
    return MOEC_OK;
}
