/* eaquant.h - EAQuant's MoE-specific post-training quantization parts (Fu
 * et al., arXiv 2506.13329), as moec implements them.
 *
 * 1. Expert-aware smoothing aggregation. SmoothQuant moves activation
 *    outliers into the weights with s_j = max|X_j|^α / max|W_j|^(1−α); all
 *    experts, the shared expert and the router of an MoE layer read the same
 *    normed hidden state, so one vector must serve them all:
 *      max|X_j|  over every calibration token of the layer (the union of
 *                all experts' routed inputs),
 *      max|W_j|  the largest |w| in column j over the w1 and w3 of every
 *                routed expert and of the shared expert.
 *    s is folded in exactly: the ffn_norm weight is divided by s, and the
 *    columns of every w1/w3, of the router and of the shared-expert gate are
 *    multiplied by s, so the full-precision block computes the same function
 *    up to float rounding. The router and the gate stay in high precision,
 *    so routing is unchanged up to rounding. The changed norm, router and
 *    gate are stored as F32 (BF16 would round them and could flip routing
 *    decisions); the w1/w3 are quantized afterwards.
 *
 * 2. Router-logit distribution alignment. The paper adds KL(router_fp ‖
 *    router_q) to a trained calibration objective. moec has no training
 *    step; instead, per layer, a grid search over α (and over per-group
 *    clipping search on/off) minimises
 *        J = Σ_t ‖moe_q(x_t) − moe(x_t)‖² / Σ_t ‖moe(x_t)‖²  +  λ · mean_t KL(p(x_t) ‖ p_q(x_t))
 *    on a sample of calibration tokens, where moe is the layer's routed
 *    (plus shared) expert output with the original weights and inputs and
 *    moe_q the output with smoothed, quantized w1/w3 (w2 left in full
 *    precision: s does not touch it) and, when act_bits > 0, per-token
 *    activation quantization of the expert inputs as the executor does it.
 *    p_q is the router reading the smoothed activation quantized to
 *    act_bits (what a deployment that feeds the router the block's
 *    quantized input computes); moec's own executor gives the router the
 *    unquantized input, so there the term is a guard for such deployments
 *    and it is 0 when act_bits = 0. "No smoothing" is always a candidate,
 *    so the search never does worse than no smoothing on its own objective.
 *
 * 3. Expert-level calibration balance. Experts routed fewer than M
 *    calibration tokens are given extra tokens: those where the expert
 *    ranked just outside the top-k (the most probable non-selected expert),
 *    most probable first, until M are reached or none are left. Extra
 *    tokens feed the expert's Hessians only; importance statistics and
 *    MC-MoE's ε use the routed tokens alone.
 */
#ifndef MOEC_QUANT_EAQUANT_H
#define MOEC_QUANT_EAQUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "model/model.h"
#include "quant/gptq.h"

/* ---- 1. smoothing ---- */

/* s[d] for MoE layer `layer` of m from x_absmax[d] (max |x_j| over the
 * layer's calibration tokens) and the weight maxima described above, with
 * α in [0, 1]. Channels with a zero activation or weight maximum get
 * s_j = 1; s is clamped to [1e-4, 1e4]. Fails for a dense layer, α out of
 * range or weights that are not F32/F16/BF16. */
moec_status moec_eaq_smooth_vector(const moec_model *m, int layer, const float *x_absmax, float alpha, float *s,
                                   moec_err *err);

/* Folds s[d] into layer `layer` of m (which must be able to own buffers: a
 * model from moec_model_derive): ffn_norm, router, shared-expert gate and
 * every routed and shared w1/w3 become owned F32 tensors with the scaling
 * applied. Quantized (MOEC_DT_QUANT) w1/w3 are refused: smooth first. */
moec_status moec_eaq_smooth_apply(moec_model *m, int layer, const float *s, moec_err *err);

/* ---- 3. calibration balance ---- */

/* Accumulates, for one MoE layer, each expert's routed count and its M best
 * near-miss tokens (input rows kept). Rows of an expert are dropped as soon
 * as it has M routed tokens. Memory: at most E·M·d floats. */
typedef struct moec_eaq_balance moec_eaq_balance;

/* M >= 1. Free with moec_eaq_balance_free. */
moec_status moec_eaq_balance_new(moec_eaq_balance **out, int n_experts, int d, int M, moec_err *err);
void moec_eaq_balance_free(moec_eaq_balance *b);

/* One batch: x [n][d] (what the experts read), probs [n][E], sel [n][k]
 * (selected experts). Returns false when out of memory. */
bool moec_eaq_balance_add(moec_eaq_balance *b, int n, int k, const float *x, const float *probs,
                          const int32_t *sel);

/* Routed tokens of expert e so far. */
int64_t moec_eaq_balance_routed(const moec_eaq_balance *b, int e);
/* Near-miss tokens of e seen so far (whether kept or not). */
int64_t moec_eaq_balance_near_miss(const moec_eaq_balance *b, int e);
/* The extra rows for e: max(0, min(M − routed, kept)) rows, most probable
 * first, [count][d] in *rows (valid until the next add or free). */
int64_t moec_eaq_balance_extra(moec_eaq_balance *b, int e, const float **rows);

/* ---- 2. alignment search ---- */

/* One feed-forward block of the layer as the search sees it. */
typedef struct moec_eaq_ffn {
    const float *w1, *w3;   /* [f][d] float, unsmoothed */
    const float *w2;        /* [d][f] float */
    int64_t f;
    const double *H;        /* upper triangle of Σ xxᵀ [d][d] over its calibration rows (unsmoothed x),
                               NULL = RTN */
    int64_t n_h;            /* rows behind H */
    int bits;               /* width in the search */
    /* sample rows that use this block: token index into the sample and output weight */
    int n_rows;
    const int32_t *row_tok;
    const float *row_w;
} moec_eaq_ffn;

typedef struct moec_eaq_search {
    int d, n_experts, top_k;
    int n_ffn;                  /* routed experts, then the shared expert if any */
    const moec_eaq_ffn *ffn;    /* [n_ffn] */
    const float *router;        /* [E][d] float */
    int n_tok;                  /* sample tokens */
    const float *x;             /* [n_tok][d] block input (unsmoothed) */
    const float *probs;         /* [n_tok][E] original router probabilities */
    const float *x_absmax;      /* [d] over all calibration tokens of the layer */
    moec_gptq_opts gptq;        /* q.group, q.symmetric, damping, act-order (q.bits per ffn; clip set by the search) */
    int gptq_min_tokens;
    int act_bits;
    double lambda;
    int n_alpha;                /* grid */
    const float *alphas;
    bool try_clip;              /* also try per-group clipping search (grid 20, ratio >= 0.5) */
} moec_eaq_search;

typedef struct moec_eaq_choice {
    float alpha;         /* chosen α; -1 = no smoothing */
    bool clip;
    double err[2], kl[2], agree[2]; /* [0] no smoothing without clipping, [1] chosen */
} moec_eaq_choice;

/* Runs the grid search; s[d] receives the chosen vector (all 1 for "no
 * smoothing"). pool may be NULL. */
moec_status moec_eaq_search_run(const moec_eaq_search *p, moec_pool *pool, float *s, moec_eaq_choice *out,
                                moec_err *err);

/* Per-token symmetric fake quantization of x [rows][cols] in place, exactly
 * as the executor's act_bits (exec.h); bits 0 = nothing. */
void moec_eaq_act_quant(float *x, int64_t rows, int64_t cols, int bits);

#endif
