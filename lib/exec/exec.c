/* exec.c - forward pass: embeddings -> layers (attention, MoE) -> logits.
 * Reads like the math; kernels are in ops.c and matmul.c. */
#include "exec/exec.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/threadpool.h"
#include "exec/lowrank.h"
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
    struct ffn_group *groups; /* [E_max] the selected experts of a layer */
    float *gx;            /* [cap*top_k][d] gathered expert inputs */
    float *h1, *h3;       /* [cap*top_k][ffn_max] */
    float *ye;            /* [cap*top_k][d] expert outputs */
    float *sgate;         /* [cap] shared-expert gate logits */
    float **scores;       /* per thread: [cap][max_ctx] attention scores */
    int act_bits;         /* moec_exec_opts.act_bits */
    int64_t max_rank;     /* largest rank of a factored expert weight (lowrank.h), 0 if none */
    float *lr;            /* max_rank: [max(cap, cap*top_k)][max_rank] inner product of a factored weight */
    float *aq;            /* act_bits: [max(cap, cap*top_k)][max(d, qdim, ffn_max)] quantized linear inputs */

    moec_moe_hook hook;
    void *hook_ctx;
    moec_attn_hook attn_hook;
    void *attn_hook_ctx;
    bool profiling;
    uint64_t prof[MOEC_OP_COUNT];
    uint64_t prof_bytes[MOEC_OP_COUNT]; /* weight bytes read, per op */
    uint64_t wbytes;      /* weight bytes read since the current op's prof_start */
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

/* Profiling costs two clock reads per op, only when enabled. Weight bytes
 * read are counted by the products (linear(), the FFN job) between a
 * prof_start and its prof_stop, always. */
static inline uint64_t prof_start(moec_exec *ex)
{
    ex->wbytes = 0;
    return ex->profiling ? now_ns() : 0;
}
static inline void prof_stop(moec_exec *ex, moec_op op, uint64_t t0)
{
    if (ex->profiling)
        ex->prof[op] += now_ns() - t0;
    ex->prof_bytes[op] += ex->wbytes; /* always: an add per op */
    ex->wbytes = 0;
}

/* Bytes a product reads of W's rows [r0, r1): codes, scales and zeros of a
 * quantized tensor, the stored elements otherwise. */
static uint64_t weight_bytes(const moec_tensor *W, int64_t r0, int64_t r1)
{
    const int64_t rows = moec_tensor_rows(W);
    if (rows <= 0 || r1 <= r0)
        return 0;
    uint64_t all = W->dtype == MOEC_DT_QUANT && W->q
                       ? (uint64_t)(W->q->codes_bytes + W->q->scales_bytes + W->q->zeros_bytes)
                       : (uint64_t)W->nbytes;
    return all / (uint64_t)rows * (uint64_t)(r1 - r0);
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
    free(ex->sgate), free(ex->aq), free(ex->lr);
    ex->aq = NULL;
    ex->lr = NULL;
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
    /* a model built while it runs (a layer-streaming merge) may gain
     * factored weights after the executor was made: their rank sizes lr */
    const int64_t rank = moec_model_max_rank(ex->m);
    if (n <= ex->cap && rank <= ex->max_rank)
        return MOEC_OK;
    if (rank > ex->max_rank)
        ex->max_rank = rank;
    if (n < ex->cap)
        n = ex->cap;
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
    if (ok && ex->max_rank)
        ok = (ex->lr = malloc((rows > cap ? rows : cap) * (size_t)ex->max_rank * 4)) != NULL;
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
    ex->max_rank = moec_model_max_rank(m);
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
    ex->pool = moec_pool_new(o.threads);
    if (!ex->kcache || !ex->vcache || !ex->rope || !ex->pool) {
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
    free(ex->offsets);
    free(ex->groups);
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

void moec_exec_profile_bytes(const moec_exec *ex, uint64_t bytes[MOEC_OP_COUNT])
{
    memcpy(bytes, ex->prof_bytes, sizeof ex->prof_bytes);
}

/* ---- activation fake quantization (moec_exec_opts.act_bits, EAQuant W4A4) ----
 * Writes to out x[rows][cols] (rows ld floats apart, in x and in out)
 * quantized per row (token) to act_bits bits, symmetric, scale from the
 * row's max |x|, and dequantized again: the linear layer then computes with
 * exactly the values an integer kernel would see. */
static void act_quant_ld(moec_exec *ex, const float *x, int rows, int cols, int ld, float *out)
{
    const float qmax = (float)((1 << (ex->act_bits - 1)) - 1);
    for (int i = 0; i < rows; i++) {
        const float *r = x + (size_t)i * ld;
        float *o = out + (size_t)i * ld;
        float amax = 0.0f;
        for (int c = 0; c < cols; c++)
            amax = fmaxf(amax, fabsf(r[c]));
        const float scale = amax / qmax;
        for (int c = 0; c < cols; c++) {
            float q = scale > 0.0f ? rintf(r[c] / scale) : 0.0f;
            o[c] = fminf(fmaxf(q, -qmax), qmax) * scale;
        }
    }
}

/* x itself when act_bits is off, else its quantized copy in ex->aq. */
static const float *act_quant(moec_exec *ex, const float *x, int rows, int cols)
{
    if (!ex->act_bits)
        return x;
    act_quant_ld(ex, x, rows, cols, cols, ex->aq);
    return ex->aq;
}

/* ---- linear layers ----
 * A product is split over the pool's workers by output rows. Several
 * products can share one pool run (q, k and v of a token; every selected
 * expert of a layer): a decode step then pays a handful of dispatches per
 * layer instead of one per matrix. */

/* Below this many flops a job runs on the caller alone (as matmul.c's
 * products do): waking the workers would cost more than it saves. */
#define PAR_MIN_FLOPS 49152

/* Work is handed out in chunks of output rows claimed from a shared
 * counter (as matmul.c does): a worker the OS preempts on a busy machine
 * holds up one chunk, not half the job. Chunks are multiples of 16 rows (no
 * two workers write one 64-byte line of y), about CLAIMS_PER_WORKER per
 * worker. */
#define CLAIMS_PER_WORKER 8

static int64_t chunk_rows(int64_t rows, int nt)
{
    int64_t per = (rows + (int64_t)nt * CLAIMS_PER_WORKER - 1) / ((int64_t)nt * CLAIMS_PER_WORKER);
    return (per + 15) / 16 * 16;
}

/* Claims the next chunk of [0, rows) in chunks of ch: false when none is left. */
static bool claim_rows(_Atomic int64_t *next, int64_t rows, int64_t ch, int64_t *a, int64_t *b)
{
    const int64_t c = atomic_fetch_add_explicit(next, 1, memory_order_relaxed);
    if (c * ch >= rows)
        return false;
    *a = c * ch;
    *b = *a + ch < rows ? *a + ch : rows;
    return true;
}

/* y[n][out] (+)= x[n][in] · Wᵀ. */
static void linear(moec_exec *ex, float *y, const float *x, int n, const moec_tensor *W, bool acc)
{
    moec_matmul(ex->pool, y, x, n, W, acc);
    ex->wbytes += weight_bytes(W, 0, moec_tensor_rows(W));
}

/* Runs fn on the pool; a job too small to be worth waking the workers
 * runs on the caller alone, outside any run, so with no pool (and no pool
 * scratch) in *job_pool. */
static void run_job(moec_exec *ex, moec_pool_fn fn, void *job, moec_pool **job_pool, double flops)
{
    if (flops < PAR_MIN_FLOPS && moec_pool_size(ex->pool) > 1) {
        *job_pool = NULL;
        fn(job, 0, 1);
        return;
    }
    *job_pool = ex->pool;
    moec_pool_run(ex->pool, fn, job);
}

/* Up to three products of the same input in one run: y_i[n][rows_i] = x ·
 * W_iᵀ, the rows of all three claimed as one sequence of chunks. */
typedef struct {
    moec_pool *pool;
    const float *x;
    int n, count;
    const moec_tensor *W[3];
    float *y[3];
    int64_t ch;               /* rows per chunk */
    int64_t total;            /* chunks of W[0], W[1], W[2] back to back, in rows of ch */
    int64_t first[4];         /* first chunk of each W */
    _Atomic int64_t next;
} multi_job;

static void multi_worker(void *vjob, int t, int nt)
{
    (void)nt;
    multi_job *j = vjob;
    for (;;) {
        const int64_t c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->total)
            return;
        int i = 0;
        while (c >= j->first[i + 1])
            i++;
        const int64_t rows = moec_tensor_rows(j->W[i]), K = moec_tensor_cols(j->W[i]);
        const int64_t a = (c - j->first[i]) * j->ch, b = a + j->ch < rows ? a + j->ch : rows;
        moec_matmul_share(j->pool, t, j->y[i] + a, rows, j->x, K, j->n, j->W[i], a, b, false);
    }
}

static void linear_multi(moec_exec *ex, const float *x, int n, int count, const moec_tensor *const *W, float *const *y)
{
    multi_job j = {.x = x, .n = n, .count = count};
    double flops = 0;
    int64_t most = 0;
    for (int i = 0; i < count; i++) {
        const int64_t rows = moec_tensor_rows(W[i]);
        most = rows > most ? rows : most;
        flops += 2.0 * n * (double)rows * (double)moec_tensor_cols(W[i]);
        ex->wbytes += weight_bytes(W[i], 0, rows);
    }
    j.ch = chunk_rows(most, moec_pool_size(ex->pool));
    for (int i = 0; i < count; i++) {
        j.W[i] = W[i];
        j.y[i] = y[i];
        j.first[i + 1] = j.first[i] + (moec_tensor_rows(W[i]) + j.ch - 1) / j.ch;
    }
    j.total = j.first[count];
    atomic_init(&j.next, 0);
    run_job(ex, multi_worker, &j, &j.pool, flops);
}

/* ---- attention ---- */

typedef struct {
    moec_exec *ex;
    int layer, n, p0;
    _Atomic int next;     /* the next head to claim */
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

/* Heads are claimed one at a time (a preempted worker holds up one head). */
static void attn_worker(void *vjob, int t, int nt)
{
    (void)nt;
    attn_job *job = vjob;
    for (int h; (h = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed)) < job->ex->m->cfg.n_heads;)
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
    const moec_tensor *const qkv[3] = {&L->wq, &L->wk, &L->wv};
    float *const out[3] = {ex->q, ex->k, ex->v};
    linear_multi(ex, xq, n, 3, qkv, out);
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
        attn_job job = {ex, l, n, p0, 0};
        moec_pool_run(ex->pool, attn_worker, &job);
        prof_stop(ex, MOEC_OP_ATTN, t0);
    }
    if (ex->attn_hook) {
        moec_attn_view v = {l, n, d, ex->qdim, ex->xn, ex->att};
        ex->attn_hook(ex->attn_hook_ctx, &v);
    }
    t0 = prof_start(ex);
    linear(ex, ex->x, act_quant(ex, ex->att, n, ex->qdim), n, &L->wo, true); /* residual add */
    prof_stop(ex, MOEC_OP_OPROJ, t0);
}

/* ---- feed-forward ----
 * SwiGLU blocks y = w2 · (silu(w1 · x) ⊙ (w3 · x)) of one or many FFNs
 * (the selected experts of a layer, each over its own rows of gathered
 * inputs) in two pool runs: gate and up products with the SiLU product,
 * then the down products (and, for routed experts, the gate-weighted sum
 * per token). Each worker takes the same slice of rows of every matrix. */

/* Whether an FFN has a weight stored factored (merged experts, model.h). */
static bool ffn_factored(const moec_ffn *f)
{
    return moec_factored_present(&f->w1f) || moec_factored_present(&f->w3f) || moec_factored_present(&f->w2f);
}

/* out[rows][d] (+)= w2 · (silu(w1 · X) ⊙ (w3 · X)) for an FFN with factored
 * weights: each product runs whole as its two factors (lowrank.h) on the
 * executor's pool, the inner product not activation-quantized. */
static void ffn_apply_factored(moec_exec *ex, const moec_ffn *f, const float *X, int rows, float *out, bool accumulate)
{
    const int64_t ff = moec_ffn_inner(f);
    X = act_quant(ex, X, rows, (int)moec_ffn_in(f));
    moec_weight_matmul(ex->pool, ex->h1, X, rows, &f->w1, &f->w1f, ex->lr, false);
    moec_weight_matmul(ex->pool, ex->h3, X, rows, &f->w3, &f->w3f, ex->lr, false);
    moec_silu_mul(ex->h1, ex->h3, (int64_t)rows * ff);
    moec_weight_matmul(ex->pool, out, act_quant(ex, ex->h1, rows, (int)ff), rows, &f->w2, &f->w2f, ex->lr,
                       accumulate);
}

typedef struct ffn_group {
    const moec_ffn *f;
    int r0, rows;         /* its rows of X, H and Y */
} ffn_group;

typedef struct {
    moec_exec *ex;
    moec_pool *pool;      /* the run's pool; NULL on the caller alone */
    const ffn_group *g;
    int ng;
    int d, ldh;           /* hidden size; row stride of h1/h3 (ffn_max) */
    const float *X;       /* [rows][d] inputs */
    const float *H;       /* [rows][ldh] down products' input (h1, or its act-quantized copy) */
    float *Y;             /* [rows][d] outputs */
    bool acc;             /* Y += instead of = */
    int combine_n;        /* > 0: routed[combine_n][d] = Σ row_gate·Y over tok (experts) */
    int64_t ff;           /* the widest group's w1/w3 rows */
    int64_t ch_up, ch_down; /* rows per chunk: of the w1/w3 rows (ff of them), of the w2 rows (d) */
    _Atomic int64_t next_up, next_down;
} ffn_job;

/* A chunk: the same rows [a, b) of every group's w1 and w3, then the SiLU product there. */
static void ffn_up_worker(void *vjob, int t, int nt)
{
    (void)nt;
    ffn_job *j = vjob;
    moec_exec *ex = j->ex;
    int64_t a0, b0;
    while (claim_rows(&j->next_up, j->ff, j->ch_up, &a0, &b0))
        for (int gi = 0; gi < j->ng; gi++) {
            const ffn_group *g = &j->g[gi];
            if (ffn_factored(g->f)) /* done before the runs */
                continue;
            const int64_t ff = moec_tensor_rows(&g->f->w1), a = a0, b = b0 < ff ? b0 : ff;
            if (a >= b)
                continue;
            const float *x = j->X + (size_t)g->r0 * j->d;
            float *h1 = ex->h1 + (size_t)g->r0 * j->ldh, *h3 = ex->h3 + (size_t)g->r0 * j->ldh;
            moec_matmul_share(j->pool, t, h1 + a, j->ldh, x, j->d, g->rows, &g->f->w1, a, b, false);
            moec_matmul_share(j->pool, t, h3 + a, j->ldh, x, j->d, g->rows, &g->f->w3, a, b, false);
            for (int r = 0; r < g->rows; r++)
                moec_silu_mul(h1 + (size_t)r * j->ldh + a, h3 + (size_t)r * j->ldh + a, b - a);
        }
}

static void ffn_down_rows(ffn_job *j, int t, int64_t a, int64_t b);

/* A chunk: the same rows [a, b) of every group's w2 (columns of Y), then
 * those columns of the gate-weighted sum. */
static void ffn_down_worker(void *vjob, int t, int nt)
{
    (void)nt;
    ffn_job *j = vjob;
    int64_t a, b;
    while (claim_rows(&j->next_down, j->d, j->ch_down, &a, &b))
        ffn_down_rows(j, t, a, b);
}

static void ffn_down_rows(ffn_job *j, int t, int64_t a, int64_t b)
{
    moec_exec *ex = j->ex;
    for (int gi = 0; gi < j->ng; gi++) {
        const ffn_group *g = &j->g[gi];
        if (ffn_factored(g->f))
            continue;
        moec_matmul_share(j->pool, t, j->Y + (size_t)g->r0 * j->d + a, j->d, j->H + (size_t)g->r0 * j->ldh, j->ldh,
                          g->rows, &g->f->w2, a, b, j->acc);
    }
    if (j->combine_n > 0) {
        /* this chunk's columns of the gate-weighted sum over each token's experts */
        for (int i = 0; i < j->combine_n; i++)
            memset(ex->routed + (size_t)i * j->d + a, 0, (size_t)(b - a) * sizeof(float));
        const int rows = j->combine_n * ex->m->cfg.top_k;
        for (int r = 0; r < rows; r++)
            moec_axpy(ex->routed + (size_t)ex->tok[r] * j->d + a, j->Y + (size_t)r * j->d + a, ex->row_gate[r], b - a);
    }
}

/* Y[rows][d] (+)= the groups' FFNs of X (rows of group g at g.r0..); with
 * combine_n > 0 also routed = Σ row_gate·Y per token (Y is ex->ye then). */
static void ffn_run(moec_exec *ex, const ffn_group *g, int ng, const float *X, float *Y, bool acc, int combine_n)
{
    const int d = ex->m->cfg.hidden_size;
    int rows = 0;
    int64_t ffw = 0;
    double flops = 0;
    /* factored FFNs (merged experts) first, each whole, before the runs
     * reuse h1/h3 and the gate-weighted sum reads their rows of Y */
    for (int i = 0; i < ng; i++)
        if (ffn_factored(g[i].f))
            ffn_apply_factored(ex, g[i].f, X + (size_t)g[i].r0 * d, g[i].rows, Y + (size_t)g[i].r0 * d, acc);
    for (int i = 0; i < ng; i++) {
        rows = g[i].r0 + g[i].rows > rows ? g[i].r0 + g[i].rows : rows;
        if (ffn_factored(g[i].f))
            continue;
        const int64_t ff = moec_tensor_rows(&g[i].f->w1);
        ffw = ff > ffw ? ff : ffw;
        flops += 6.0 * g[i].rows * (double)ff * d;
        ex->wbytes += weight_bytes(&g[i].f->w1, 0, ff) + weight_bytes(&g[i].f->w3, 0, ff) +
                      weight_bytes(&g[i].f->w2, 0, d);
    }
    ffn_job j = {.ex = ex, .g = g, .ng = ng, .d = d, .ldh = ex->ffn_max, .Y = Y, .acc = acc, .combine_n = combine_n};
    const int nt = moec_pool_size(ex->pool);
    j.ff = ffw;
    j.ch_up = chunk_rows(ffw, nt);
    j.ch_down = chunk_rows(d, nt);
    atomic_init(&j.next_up, 0);
    atomic_init(&j.next_down, 0);
    j.X = act_quant(ex, X, rows, d);
    run_job(ex, ffn_up_worker, &j, &j.pool, flops * 2.0 / 3.0);
    /* activation quantization needs whole rows of h1: between the runs */
    j.H = ex->h1;
    for (int i = 0; i < ng && ex->act_bits; i++)
        if (!ffn_factored(g[i].f))
            act_quant_ld(ex, ex->h1 + (size_t)g[i].r0 * ex->ffn_max, g[i].rows, (int)moec_tensor_rows(&g[i].f->w1),
                     ex->ffn_max, ex->aq + (size_t)g[i].r0 * ex->ffn_max);
    if (ex->act_bits)
        j.H = ex->aq;
    run_job(ex, ffn_down_worker, &j, &j.pool, flops / 3.0);
}

/* out[rows][d] (+)= w2 · (silu(w1 · X) ⊙ (w3 · X)) for one FFN. */
static void ffn_apply(moec_exec *ex, const moec_ffn *f, const float *X, int rows, float *out, bool accumulate)
{
    const ffn_group g = {f, 0, rows};
    ffn_run(ex, &g, 1, X, out, accumulate, 0);
}

/* Router: softmax over all experts, top-k by probability, optional renormalisation. */
static void route(moec_exec *ex, const moec_layer *L, int n)
{
    const moec_config *c = &ex->m->cfg;
    const int E = L->n_experts, k = c->top_k;
    linear(ex, ex->logits_e, ex->xn, n, &L->router, false);
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
    /* E >= 0 spelled out: the compiler then sees the sizes below are not negative */
    const int d = c->hidden_size, E = L->n_experts > 0 ? L->n_experts : 0, k = c->top_k;
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
    ffn_group *groups = realloc(ex->groups, (size_t)E * sizeof *groups);
    if (!groups)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    ex->groups = groups;
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
    int ng = 0;
    for (int e = 0; e < E; e++)
        if (off[e + 1] > off[e])
            groups[ng++] = (ffn_group){&L->experts[e], off[e], off[e + 1] - off[e]};
    /* every selected expert in one pass, the gated sum into ex->routed */
    ffn_run(ex, groups, ng, ex->gx, ex->ye, false, n);
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
            linear(ex, ex->sgate, ex->xn, n, &L->shared_gate, false);
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

/* logits[n][V] of the hidden states h[n][d] (final norm, lm_head); p0 is
 * the position of the first row (for the error message). */
static moec_status head_rows(moec_exec *ex, const float *h, int n, int p0, float *logits, moec_err *err)
{
    const moec_model *m = ex->m;
    const moec_config *c = &m->cfg;
    const uint64_t t0 = prof_start(ex);
    moec_rmsnorm_rows(ex->xn, h, &m->final_norm, n, c->hidden_size, c->rms_eps);
    linear(ex, logits, ex->xn, n, &m->lm_head, false);
    prof_stop(ex, MOEC_OP_HEAD, t0);
    size_t cnt = (size_t)n * (size_t)c->vocab_size;
    for (size_t i = 0; i < cnt; i++)
        if (!isfinite(logits[i]))
            return moec_err_set(err, MOEC_ERR_NUMERIC, "non-finite logit at position %d (weights with NaN/Inf?)",
                                p0 + (int)(i / (size_t)c->vocab_size));
    return MOEC_OK;
}

/* Runs n tokens and writes the logits of tokens first..n-1 ([n - first][V];
 * first == n or logits NULL: none). Only those tokens' hidden states are
 * needed after the last layer's attention (which still sees every token,
 * for the cache), so unless a MoE hook wants to see them all, the others
 * skip the last layer's feed-forward block, as llama.cpp does. */
static moec_status forward_chunk(moec_exec *ex, const int32_t *tokens, int n, float *logits, int first,
                                 moec_err *err)
{
    const moec_config *c = &ex->m->cfg;
    const int d = c->hidden_size;
    if (!logits)
        first = n;
    moec_status st = reserve_batch(ex, n, err);
    if (st)
        return st;
    embed_rows(ex, tokens, n, ex->x);
    for (int l = 0; l < c->n_layers; l++) {
        attention_block(ex, l, n);
        int rows = n;
        if (l == c->n_layers - 1 && !ex->hook && first > 0) {
            /* keep the rows whose logits are wanted, at the front */
            rows = n - first;
            if (rows > 0)
                memmove(ex->x, ex->x + (size_t)first * d, (size_t)rows * d * sizeof(float));
        }
        if (rows > 0 && (st = moe_block(ex, l, rows, err)))
            return st;
    }
    ex->pos += n;
    const int nout = n - first;
    if (nout <= 0)
        return MOEC_OK;
    /* hidden states of the wanted tokens: rows 0.. after the skip, else first.. */
    const float *h = ex->x + (ex->hook ? (size_t)first * d : 0);
    return head_rows(ex, h, nout, ex->pos - nout, logits, err);
}

static moec_status check_tokens(const moec_exec *ex, const int32_t *tokens, int n, moec_err *err)
{
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= ex->m->cfg.vocab_size)
            return moec_err_set(err, MOEC_ERR_ARG, "token id %d is outside the vocabulary [0, %d)", tokens[i],
                                ex->m->cfg.vocab_size);
    return MOEC_OK;
}

moec_status moec_exec_forward_from(moec_exec *ex, const int32_t *tokens, int n, float *logits, int logits_from,
                                   moec_err *err)
{
    const moec_config *c = &ex->m->cfg;
    if (ex->layer_cache)
        return moec_err_set(err, MOEC_ERR_ARG, "forward: this executor caches one layer (layer-at-a-time use only)");
    if (n <= 0)
        return moec_err_set(err, MOEC_ERR_ARG, "forward: no tokens");
    if (logits_from < 0 || logits_from > n)
        return moec_err_set(err, MOEC_ERR_ARG, "forward: logits from token %d of %d", logits_from, n);
    if (n > ex->max_ctx - ex->pos)
        return moec_err_set(err, MOEC_ERR_ARG, "forward: %d tokens at position %d exceed the context of %d", n,
                            ex->pos, ex->max_ctx);
    moec_status st = check_tokens(ex, tokens, n, err);
    if (st)
        return st;
    for (int i0 = 0; i0 < n; i0 += MOEC_EXEC_CHUNK) {
        const int m = n - i0 < MOEC_EXEC_CHUNK ? n - i0 : MOEC_EXEC_CHUNK;
        /* this chunk's first wanted token, relative to the chunk */
        int first = logits_from - i0;
        first = first < 0 ? 0 : first > m ? m : first;
        float *out = logits && first < m ? logits + (size_t)(i0 + first - logits_from) * c->vocab_size : NULL;
        if ((st = forward_chunk(ex, tokens + i0, m, out, out ? first : m, err)))
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
        if ((st = head_rows(ex, x + (size_t)i0 * d, m, i0, logits + (size_t)i0 * c->vocab_size, err)))
            return st;
    }
    return MOEC_OK;
}

moec_status moec_exec_forward(moec_exec *ex, const int32_t *tokens, int n, float *logits, bool all_logits,
                              moec_err *err)
{
    return moec_exec_forward_from(ex, tokens, n, logits, all_logits ? 0 : n > 0 ? n - 1 : 0, err);
}
