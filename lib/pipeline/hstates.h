/* hstates.h - calibration hidden states kept between layers.
 *
 * Compressing layer by layer needs, at layer L, the inputs the already
 * compressed layers 0..L-1 produce for the calibration windows. Rather than
 * running every window through the model from the start for each layer,
 * the residual stream of every window at the current layer boundary is
 * kept (tokens x hidden floats) and pushed through one layer at a time, as
 * GPTQ's reference does. The executor's layer-at-a-time calls
 * (exec/exec.h) do the arithmetic of a whole forward pass, so a pass at
 * layer L sees bit for bit what a forward pass of the model as it stands
 * would show its hooks there.
 */
#ifndef MOEC_PIPELINE_HSTATES_H
#define MOEC_PIPELINE_HSTATES_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "exec/exec.h"

typedef struct moec_hstates {
    int d;                  /* hidden size */
    int n_windows;
    const int32_t *ids;     /* every window's tokens back to back (not owned) */
    const int *len;         /* [n_windows] (not owned) */
    int64_t *start;         /* [n_windows] offset of each window in ids and h */
    int max_len;            /* longest window */
    int64_t tokens;         /* Σ len */
    int layer;              /* the layer the states enter next (0 after embedding) */
    float *h;               /* [tokens][d] residual stream at that boundary */
    float *scratch;         /* [max_len][d] a window's copy for runs that do not commit */
} moec_hstates;

/* Called before each window of a run; a non-OK status stops the run with
 * it (how a hook's recorded error is reported). */
typedef moec_status (*moec_hstates_window_fn)(void *ctx, int window, moec_err *err);

/* States for n_windows windows of len[i] tokens taken from ids in order
 * (the arrays must outlive the states), d wide; h is allocated, not yet
 * filled. Free with moec_hstates_free. */
moec_status moec_hstates_new(moec_hstates **out, const int32_t *ids, const int *len, int n_windows, int d,
                             moec_err *err);
void moec_hstates_free(moec_hstates *s);

/* h = the embedding rows of every window through ex's model; layer = 0. */
moec_status moec_hstates_embed(moec_hstates *s, moec_exec *ex, moec_err *err);

/* Runs every window (from an empty cache) through `layer` of ex's model,
 * which must be s->layer; the hooks set on ex see it. commit replaces h by
 * the layer's output and moves s->layer on; otherwise h is unchanged (a
 * measuring pass). on_window (may be NULL) runs before each window. ex
 * needs a context of at least max_len tokens. */
moec_status moec_hstates_run(moec_hstates *s, moec_exec *ex, int layer, bool commit, moec_hstates_window_fn on_window,
                             void *ctx, moec_err *err);

/* The logits of every position of window i (final norm and lm_head of ex's
 * model over its states) into logits [len[i]][vocab]. */
moec_status moec_hstates_logits(moec_hstates *s, moec_exec *ex, int window, float *logits, moec_err *err);

#endif
