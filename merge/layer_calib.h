/* layer_calib.h - internal to merge/: the calibration-driven pieces of
 * one layer's merge (merge_layer.c drives them): how the original router
 * routes the calibration tokens, chunked scratch for expert products,
 * Sub-MoE† whitening matrices (layer_calib.c), and the fits to the group's
 * output with the measurement of the merged layer (layer_fit.c). Every
 * buffer is bounded by MOEC_ML_CHUNK rows of calibration tokens.
 */
#ifndef MOEC_MERGE_LAYER_CALIB_H
#define MOEC_MERGE_LAYER_CALIB_H

#include <stdint.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "merge/merge_layer.h"

/* calibration rows processed at a time: bounds every scratch buffer */
enum { MOEC_ML_CHUNK = 2048 };
/* the report's output error is measured on the first tokens only (the windows
 * come round-robin over the calibration files, so these cover them all) */
enum { MOEC_ML_MEASURE_TOKENS = 8192 };

/* How a router routes n tokens, and the rows of each expert. */
typedef struct moec_ml_routing {
    int64_t n;
    int k, E;
    int32_t *sel;  /* [n][k] */
    float *gates;  /* [n][k] */
    int64_t *off;  /* [E+1]: rows of expert e are off[e]..off[e+1]-1 */
    int64_t *tok;  /* [n*k] token of each row */
    float *gate;   /* [n*k] gate of each row */
} moec_ml_routing;

moec_status moec_ml_routing_build(moec_ml_routing *r, moec_pool *pool, const moec_tensor *router, const float *x,
                                  int64_t n, int k, bool norm, moec_err *err);
void moec_ml_routing_free(moec_ml_routing *r);
/* Gate of expert e for token t, 0 when not selected. */
float moec_ml_gate_of(const moec_ml_routing *r, int64_t t, int e);
/* dst[i] = x[rows[i]] for n rows of d floats. */
void moec_ml_gather(float *dst, const float *x, const int64_t *rows, int64_t n, int d);

/* Scratch for expert products on a chunk of rows. */
typedef struct moec_ml_scratch {
    float *xg;     /* [CHUNK][d] gathered inputs */
    float *h, *h3; /* [CHUNK][max(f, d)] */
    float *t;      /* [CHUNK][max(f, d)] inner product of factored weights */
    float *y;      /* [CHUNK][d] one expert's output */
    float *tgt;    /* [CHUNK][d] targets */
    float *w;      /* [CHUNK] row weights */
    double *dbl;   /* [CHUNK][f + d + max(f, d)] lsq scratch */
} moec_ml_scratch;

moec_status moec_ml_scratch_init(moec_ml_scratch *s, int d, int f, moec_err *err);
void moec_ml_scratch_free(moec_ml_scratch *s);
/* silu(w1 x) ⊙ (w3 x) of an expert (dense or factored) on n rows, into s->h. */
void moec_ml_intermediate(moec_pool *pool, const moec_ffn *e, const float *x, int64_t n, moec_ml_scratch *s);

/* Sub-MoE† whitening of expert e: S1 [d][d] from its routed inputs (w1 and
 * w3 read x), S2 [f][f] from its intermediates (w2 reads them), each a
 * Cholesky factor S with S Sᵀ = Σ x xᵀ (+ a small ridge). */
moec_status moec_ml_whiten_expert(moec_pool *pool, const moec_merge_layer_in *in, const moec_ml_routing *r0, int e,
                                  moec_ml_scratch *s, float *S1, float *S2, moec_err *err);

/* The group's f most important neurons: w1, w3 [f][d] rows and w2 [d][f]
 * columns (merge.h MOEC_MERGE_FEAT_NEURONS). */
moec_status moec_ml_pick_neurons(moec_pool *pool, const moec_merge_layer_in *in, const moec_ml_routing *r0,
                                 const moec_merge_group *G, moec_ml_scratch *s, float *w1, float *w3, float *w2,
                                 moec_err *err);

/* w2 of group g by least squares (merge.h step 5): E holds the merged
 * w1/w3 as stored, r1 the new routing; prior and fit are [d][f]. */
moec_status moec_ml_fit_down(moec_pool *pool, const moec_merge_layer_in *in, const moec_merge_opts *o,
                             const moec_ml_routing *r0, const moec_ml_routing *r1, int g, const moec_merge_group *G,
                             const moec_ffn *E, moec_ml_scratch *s, const float *prior, float *fit, int64_t *tokens,
                             moec_err *err);

/* Router rows of the merged groups by least squares on log Σ exp of their
 * members' logits over all tokens; rows [N][d] holds the priors (the
 * averaged rows) and receives the fit (groups of one untouched). */
moec_status moec_ml_fit_router(moec_pool *pool, const moec_merge_layer_in *in, const moec_merge_layer *R,
                               double ridge, float *rows, moec_err *err);

/* Fills R->tokens, out_err and top1_agree: the merged layer M (routing r1)
 * against the original (r0) on the first MOEC_ML_MEASURE_TOKENS inputs.
 * y0, y1: [CHUNK][d] scratch. */
void moec_ml_measure(moec_pool *pool, const moec_merge_layer_in *in, const moec_layer *M,
                     const moec_ml_routing *r0, const moec_ml_routing *r1, moec_ml_scratch *s, float *y0, float *y1,
                     moec_merge_layer *R);

/* "1+4+6": a group named by its original experts, for messages. */
void moec_ml_members_str(const moec_merge_group *g, char *buf, size_t n);
/* Index (in the group) of the member with the largest merge weight. */
int moec_ml_dominant(const moec_merge_group *G);

#endif
