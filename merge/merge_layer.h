/* merge_layer.h - merging the experts of one MoE layer: the unit a
 * layer-streaming pipeline calls, with the layer's weights and its
 * calibration inputs in and the merged layer out. merge_model.c drives it
 * over a whole model (clustering, calibration passes, the report); merge.h
 * describes the methods and options.
 *
 * Steps, for the groups the caller's clustering gave:
 *  1. w1/w3 of each merged group (opts.features): folded by the method
 *     (Sub-MoE's shared-basis SVD, whitened by each member's calibration
 *     inputs for Sub-MoE†; or the weighted average), the dominant member's,
 *     or the group's most important neurons.
 *  2. The router rows: averaged, the dominant member's, or fitted so that
 *     a group's logit is log Σ_{e∈G} exp(logit_e), which makes its softmax
 *     probability the sum of its members' (fit.h, over all tokens).
 *  3. w2 of each merged group: folded like w1/w3, or (opts.fit_down) solved
 *     by least squares so that the merged expert, with the gate the new
 *     router gives it, reproduces Σ_{e∈G selected} g_e y_e, the group's
 *     share of the original layer output, on every calibration token the
 *     new router sends to it; the folded w2 is the ridge's prior.
 *  4. Measured on the calibration inputs with the weights as stored: the
 *     layer's relative output error and top-1 agreement (the report).
 */
#ifndef MOEC_MERGE_MERGE_LAYER_H
#define MOEC_MERGE_MERGE_LAYER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "merge/merge.h"
#include "model/model.h"

typedef struct moec_merge_layer_in {
    int layer;              /* index in the model (messages, report) */
    const moec_layer *src;  /* router [E][d] and E dense experts (F32, F16 or BF16) */
    int d, f;               /* hidden size, expert intermediate size */
    int top_k;              /* experts per token before merging */
    int top_k_after;        /* groups per token after merging, 1..min(top_k, n_after) */
    bool norm_topk;         /* gates renormalised over the top-k */
    int n_after;            /* N */
    const int *assign;      /* [E] group of each expert in 0..N-1, every group non-empty, numbered by
                               first appearance */
    const double *weight;   /* [E] routing counts or gate sums (>= 0): the merge weights */
    const float *x;         /* [n_tokens][d] calibration inputs of the block (after its norm), or NULL */
    int64_t n_tokens;
} moec_merge_layer_in;

/* Writes the merged layer into dst->layers[in->layer] (dst a model derived
 * from the source, moec_model_derive): the router [N][d] in the source
 * router's dtype and N experts in group order. A group of one keeps its
 * expert's views (unless fit_all refits its w2); merged matrices are
 * buffers owned by dst in the member's dtype, dense or factored. rep is
 * filled (layer, groups, kinds, errors); free it with the whole report.
 * pool may be NULL. Options needing calibration inputs fail with
 * MOEC_ERR_ARG when in->x is NULL. Errors as moec_merge_model. */
moec_status moec_merge_layer_run(moec_model *dst, const moec_merge_layer_in *in, const moec_merge_opts *o,
                                 moec_pool *pool, moec_merge_layer *rep, moec_err *err);

/* Frees what one layer's report points to and zeroes it. */
void moec_merge_layer_report_free(moec_merge_layer *L);

#endif
