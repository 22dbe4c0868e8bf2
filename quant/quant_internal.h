/* quant_internal.h - what recipe.c, quant_hessians.c, quant_mcmoe.c and
 * quant_verify.c share: the calibration windows, the pass runner and the
 * per-layer collections. Not a public header. */
#ifndef MOEC_QUANT_QUANT_INTERNAL_H
#define MOEC_QUANT_QUANT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "exec/exec.h"
#include "model/model.h"
#include "pipeline/pipeline.h"
#include "core/ggml_blocks.h"
#include "quant/eaquant.h"
#include "quant/gguf_presets.h"
#include "core/qformat.h"
#include "quant/gptq.h"
#include "quant/recipe.h"

typedef struct qr_verify qr_verify;

/* The calibration windows and how every pass runs them. */
typedef struct qr_windows {
    const int32_t *ids;
    const int *len;     /* [n] */
    size_t *start;      /* [n] offset of each window in ids */
    int n;
    int max_len;
    int64_t tokens;     /* Σ len */
    int threads;        /* executor threads */
    int act_bits;       /* executor activation quantization of the working model */
    moec_pipeline *p;   /* the pipeline the passes run on (its states are the working model's) */
} qr_windows;

/* A hook cannot return an error: it records the first one here. */
typedef struct qr_hook_status {
    moec_status st;
    moec_err err;
} qr_hook_status;

/* Runs the windows through layer `layer` of the working model (from the
 * pipeline's states, which stay as they are) with the given hooks (either
 * may be NULL). Fails with the executor's error or the hook's recorded
 * one. */
moec_status qr_run_pass(const qr_windows *w, int layer, moec_moe_hook mh, moec_attn_hook ah, void *hctx,
                        qr_hook_status *hs, moec_err *err);

/* ---- quant_hessians.c ---- */

/* Attention pass of layer `layer`: Hx += Σ xxᵀ of the q/k/v input [d][d],
 * Ha += Σ aaᵀ of the o_proj input [qdim][qdim] (upper triangles, zeroed by
 * the caller), *n = tokens. */
moec_status qr_collect_attn(const qr_windows *w, const moec_model *work, moec_pool *pool, int layer, double *Hx,
                            double *Ha, int64_t *n, moec_err *err);

/* What one MoE-layer pass collects (fields left NULL are not collected). */
typedef struct qr_moe_collect {
    int layer, E, d, k;
    int64_t f, fs;            /* expert and shared-expert intermediate sizes */
    int act_bits;             /* applied to x before w1/w3 when computing intermediates */
    /* Hessians; rows = routed tokens of each expert (+ balance rows, added by qr_moe_add_extras) */
    double **H1;              /* [E] -> [d][d] */
    double **H2;              /* [E] -> [f][f]: u = silu(w1 x) ⊙ (w3 x) with the working model's current w1/w3 */
    int64_t *n_h;             /* [E] rows in H1/H2 */
    double *Hs1, *Hs2;        /* shared expert: [d][d], [fs][fs] over all tokens */
    int64_t n_s;
    /* routing of the pass */
    int64_t *routed;          /* [E] */
    double *gate_sum;         /* [E] */
    moec_eaq_balance *bal;    /* fed in the pass when not NULL */
    float *absmax;            /* [d] max |x_j| over all tokens */
    /* token sample for EAQuant's search: every stride-th token, up to cap */
    int cap, n_sample;
    int64_t stride, seen;
    float *sx;                /* [cap][d] */
    float *sprobs;            /* [cap][E] */
    int32_t *ssel;            /* [cap][k] */
    float *sgates;            /* [cap][k] */
    float *sshared;           /* [cap] weight of the shared expert's output (sigmoid gate or 1) */
    /* internal */
    const moec_model *work;
    moec_pool *pool;
    qr_hook_status hs;
} qr_moe_collect;

/* One pass of layer c->layer through the working model filling c. */
moec_status qr_collect_moe(const qr_windows *w, const moec_model *work, qr_moe_collect *c, moec_err *err);

/* Adds the balance rows of bal (unsmoothed inputs, divided by s when s is
 * not NULL) to H1 and H2 (intermediates through the working model's current
 * w1/w3 of the layer) of each expert; extra[e] (may be NULL) receives the
 * count. */
moec_status qr_moe_add_extras(qr_moe_collect *c, moec_eaq_balance *bal, const float *s, int64_t *extra,
                              moec_err *err);

/* H2 += Σ uuᵀ over the rows of X [rows][d], u = silu(w1 x̂) ⊙ (w3 x̂) with
 * F's w1/w3 and x̂ = X quantized per token to act_bits (0: as is); X is
 * overwritten (activation quantization in place). */
moec_status qr_add_intermediate(double *H2, const moec_ffn *F, float *X, int64_t rows, int64_t d, int act_bits,
                                moec_err *err);

/* Runs fn(ctx, i, thread) for i in [0, n) spread over the pool's workers
 * (i = thread, thread + workers, ...). */
void qr_parallel_for(moec_pool *pool, int n, void (*fn)(void *ctx, int i, int thread), void *ctx);

/* ---- quant_mcmoe.c ---- */

/* Candidate quantizations of one routed expert at each width of a list. */
typedef struct qr_cand {
    moec_qmatrix w[3];        /* w1, w3, w2 */
    bool have_w2;
} qr_cand;

/* ε[e][b] += Σ over e's routed tokens of ‖y_e − ŷ_e,b‖² with y_e the
 * working model's output of the layer (still full precision, smoothed)
 * and ŷ_e,b the candidate's, act-quantized inputs as the executor; one pass. */
moec_status qr_measure_eps(const qr_windows *w, const moec_model *work, moec_pool *pool, int layer,
                           const qr_cand *cand /* [E][n_b] */, int n_b, double *eps /* [E][n_b] */,
                           moec_err *err);

/* ---- quant_verify.c ---- */

/* Compares the working model with the original on the first windows up
 * to max_tokens tokens (the one that reaches it included): mean
 * KL(original ‖ work), top-1 agreement, and per MoE layer the routing
 * top-k agreement and the routed block's relative output error given the
 * working model's inputs (the original experts evaluated on the same
 * inputs, unsmoothed with the layer's factors when not NULL). Runs with
 * the pipeline: qr_verify_new at the start (the original model's states of
 * those windows), qr_verify_layer once a layer is quantized (it moves the
 * pipeline's states through the layer itself and fills the layer's
 * block_err / router_agree), qr_verify_finish at the end (the verify
 * fields of rep). */
moec_status qr_verify_new(qr_verify **out, const qr_windows *w, const moec_model *src, int64_t max_tokens,
                          moec_err *err);
moec_status qr_verify_layer(qr_verify *v, moec_pipeline *p, int layer, const float *s, moec_quant_report *rep,
                            moec_err *err);
moec_status qr_verify_finish(qr_verify *v, moec_pipeline *p, moec_quant_report *rep, moec_err *err);
void qr_verify_free(qr_verify *v);


/* ---- the recipe's shared state and helpers (recipe.c, quant_jobs.c,
 * quant_layers.c, quant_moe.c, recipe_report.c) ---- */

/* MoE layers' per-group clipping search grid when EAQuant's search picks clipping. */
#define QR_CLIP_GRID_SEARCH 20

/* Sizes of what the output holds, counted part by part as parts are done
 * (a streamed output keeps none of them). */
typedef struct qr_totals {
    int64_t qparams, params;
    uint64_t qbytes, bytes;
    double code_bits;
} qr_totals;

typedef struct qr_recipe_run {
    const moec_model *src;
    moec_model *work, *out;
    const moec_quant_recipe *r;
    qr_windows w;
    bool have_windows;
    const moec_stats *stats;
    moec_pool *pool;
    moec_quant_report *rep;
    float **smooth;       /* [n_layers] factors or NULL */
    int cap_notes;
    moec_quant_progress progress;
    void *pctx;
    qr_totals tot;
    qr_verify *verify;    /* NULL unless verifying */
    size_t work_mark;     /* the working model's arena at the start of the current layer */
    bool streaming;       /* parts leave memory when done: source pages are released as they are read */
} qr_recipe_run;


double qr_now(void);
/* Appends a note (one line) to the report; a note lost to memory pressure is dropped. */
void qr_note(qr_recipe_run *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qr_progress(qr_recipe_run *R, const char *stage, int layer);

/* A float copy of a 2-D compute tensor (malloc'd). */
moec_status qr_to_float(const moec_tensor *t, const char *what, float **out, moec_err *err);
/* Stores q as the output's tensor *ot and makes the working model's *wt a view of it. */
moec_status qr_install(qr_recipe_run *R, moec_tensor *wt, moec_tensor *ot, const moec_qformat *q, const char *name,
                       moec_err *err);

/* One matrix to quantize: RTN, or GPTQ with a prepared inverse Hessian. */
typedef struct qr_mjob {
    const float *W;
    int64_t rows, cols;
    int bits;
    int clip_grid;
    int group;
    const moec_gptq_hinv *hinv;
    moec_gblock gtype; /* llama.cpp block type from the recipe's plan, or none (group-wise) */
    char name[96];
    moec_qmatrix q;
    moec_status st;
    moec_err err;
} qr_mjob;

/* Runs the jobs over the pool; the first failure (in job order) is returned. */
moec_status qr_run_mjobs(qr_recipe_run *R, qr_mjob *j, int n, moec_err *err);
void qr_mjobs_free(qr_mjob *j, int n);
qr_mjob qr_mjob_make(const float *W, int64_t rows, int64_t cols, int bits, int group, int clip_grid,
                     const moec_gptq_hinv *hinv, const char *fmt, ...) __attribute__((format(printf, 8, 9)));

/* One inverse-Hessian factor to build. */
typedef struct qr_hjob {
    const double *H;
    int64_t cols, n;
    moec_gptq_hinv *hinv;
    moec_gptq_report rep;
    moec_status st;
    moec_err err;
    char name[96];
} qr_hjob;

/* Builds the factors of every job with H set; a job whose factorisation
 * fails keeps hinv NULL (RTN) and gets a note. Returns damping retries. */
int qr_run_hjobs(qr_recipe_run *R, qr_hjob *j, int n);
void qr_hjobs_free(qr_hjob *j, int n);

/* The plan's block type for a layer's tensor (none without a plan). */
static inline moec_gblock qr_gtype(const qr_recipe_run *R, int layer, moec_gslot slot)
{
    return moec_gplan_type(R->r->gplan, layer, slot);
}

/* quant_head.c: H += Σ hhᵀ [d][d] (upper triangle, zeroed by the caller) of
 * the output head's input h = final_norm(last hidden state) over the
 * windows, from the pipeline's states after every layer of the working
 * (quantized) model; *n = tokens. */
moec_status qr_collect_head(qr_recipe_run *R, double *H, int64_t *n, moec_err *err);

/* quant_layers.c: embeddings and head, attention, dense MLP layers */
moec_status qr_quant_embed(qr_recipe_run *R, moec_err *err);
moec_status qr_quant_head(qr_recipe_run *R, moec_err *err);
moec_status qr_quant_attention(qr_recipe_run *R, int l, moec_err *err);
moec_status qr_quant_dense(qr_recipe_run *R, int l, moec_err *err);
/* quant_moe.c: one MoE layer */
moec_status qr_moe_layer_run(qr_recipe_run *R, int l, moec_err *err);
/* quant_experts.c: an MoE layer one expert at a time, for RTN and GPTQ
 * without EAQuant smoothing or MC-MoE (qr_moe_layer_run calls it). */
moec_status qr_moe_experts_run(qr_recipe_run *R, int l, moec_err *err);
/* recipe_report.c */
moec_status qr_report_init(moec_quant_report *rep, const moec_model *m, const moec_quant_recipe *r, moec_err *err);
/* Adds a part of the output (model.h's parts) to R->tot; the report's
 * totals come from R->tot. */
void qr_count_part(qr_recipe_run *R, int part);
void qr_fill_totals(qr_recipe_run *R);

#endif
