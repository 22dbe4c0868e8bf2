/* acts.h - what merging needs to know about the tokens a MoE layer sees:
 * the inputs of its MoE blocks on calibration text, how its router routes
 * them, and what its experts compute on them.
 *
 * Merging that fits the merged expert to the group's output (merge.h,
 * merge_layer.h) and Sub-MoE's activation-aware truncation work on the
 * block input h_t (after the block's norm: what router and experts read)
 * of calibration tokens, per layer. moec_merge_capture runs token windows
 * through a model and keeps h_t of the MoE layers asked for; the rest are
 * small helpers over one layer's weights that compute the routing and the
 * experts' outputs on such inputs exactly as the executor does (the same
 * matrix products, softmax over all experts, top-k by repeated max with
 * ties to the lower index, renormalised when the config says so).
 */
#ifndef MOEC_MERGE_ACTS_H
#define MOEC_MERGE_ACTS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "model/model.h"

/* Calibration token windows: each run from an empty cache. */
typedef struct moec_merge_windows {
    const int32_t *ids;     /* every window's tokens back to back */
    const int *window_len;  /* [n_windows] */
    int n_windows;
} moec_merge_windows;

/* Runs every window through m and stores the block input of each MoE layer
 * listed: x[i] becomes a malloc'd [*n_tokens][d] array for layers[i] (the
 * caller frees each), tokens in window order. threads >= 1 (the executor's
 * pool). Errors: the executor's, MOEC_ERR_ARG (no windows, a dense or
 * unknown layer, a window beyond the model's positions), MOEC_ERR_NOMEM. */
moec_status moec_merge_capture(const moec_model *m, const moec_merge_windows *w, const int *layers, int n_layers,
                               int threads, float **x, int64_t *n_tokens, moec_err *err);

/* The routing of n tokens x[n][d] by a router [E][d]: sel[n][k] and
 * gates[n][k] as the executor computes them (top-k of the softmax over E
 * by decreasing probability; gates renormalised to sum 1 when norm_topk),
 * and, when probs is not NULL, the full softmax probs[n][E]. logits is the
 * caller's scratch of n*E floats (left holding the router logits).
 * Errors: MOEC_ERR_NOMEM only. */
moec_status moec_merge_route(moec_pool *pool, const moec_tensor *router, const float *x, int64_t n, int k,
                             bool norm_topk, float *logits, float *probs, int32_t *sel, float *gates, moec_err *err);

/* y[n][d] = w2 · (silu(w1 · x) ⊙ (w3 · x)) for an expert in any form the
 * executor runs (dense or factored, moec_ffn_weight_matmul). h is scratch
 * of n*f floats holding the intermediate silu(w1 x) ⊙ (w3 x) afterwards,
 * h3 (n*f) and t (n*f, used by factored weights only; may be NULL
 * otherwise) scratch. */
void moec_merge_expert_forward(moec_pool *pool, const moec_ffn *e, const float *x, int64_t n, float *y, float *h,
                               float *h3, float *t);

#endif
