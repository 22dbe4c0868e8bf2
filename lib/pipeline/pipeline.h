/* pipeline.h - the one layer-streaming driver under every compression pass
 * (moec-calib, moec-prune, moec-merge, moec-quant, moec-export).
 *
 * A model is built, and written, one part at a time (model.h: the
 * embedding, each layer, the head), so a checkpoint larger than memory can
 * be compressed:
 *   begin    the method prepares the output's embedding (ops.begin); the
 *            calibration windows, when there are any, are embedded by the
 *            model they run through (o.run) into hidden states
 *            (hstates.h); the embedding goes to the sink.
 *   layer L  the method builds layer L of `out` (ops.layer), measuring
 *            what it needs with passes of the windows through layer L
 *            (moec_pipeline_pass); the states then move through the
 *            finished layer L of o.run (moec_pipeline_advance, by the
 *            method with its own hooks, or by the driver after ops.layer);
 *            layer L goes to the sink. With a sink, what `out` allocated
 *            while building layer L is freed and its views dropped.
 *   end      the method finishes (ops.end: e.g. the head), which goes to
 *            the sink; the caller then finishes the sink with its report.
 * With o.release_source, the source's pages of each finished part are
 * released (lib/model moec_model_release_part) as the driver moves on.
 * So what is resident at layer L is the source layer being read, the layer
 * being built, the method's working buffers and the hidden states
 * (tokens x hidden floats), not the model.
 *
 * Without a sink, `out` keeps every layer (the in-memory result the
 * library's whole-model calls return); without `out` (calibration), no
 * model is built and nothing is written.
 */
#ifndef MOEC_PIPELINE_PIPELINE_H
#define MOEC_PIPELINE_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/progress.h"
#include "exec/exec.h"
#include "model/model.h"
#include "model/model_sink.h"
#include "pipeline/hstates.h"

typedef struct moec_pipeline moec_pipeline;

/* The method's callbacks; any may be NULL. ctx is the method's. */
typedef struct moec_pipeline_ops {
    moec_status (*begin)(void *ctx, moec_pipeline *p, moec_err *err);
    moec_status (*layer)(void *ctx, moec_pipeline *p, int layer, moec_err *err);
    moec_status (*end)(void *ctx, moec_pipeline *p, moec_err *err);
} moec_pipeline_ops;

typedef struct moec_pipeline_opts {
    const int32_t *ids;       /* calibration windows' tokens back to back; NULL: no windows */
    const int *window_len;    /* [n_windows] */
    int n_windows;
    int threads;              /* executor threads (default 1) */
    int act_bits;             /* executor activation quantization of the runs (exec.h) */
    const moec_model *run;    /* the model the windows run through; NULL: out */
    moec_model_sink *sink;    /* where finished parts go; NULL: they stay in out */
    bool release_source;      /* release src's pages of each finished part */
    moec_progress_fn progress; /* called as each part finishes (parts: embedding, layers, head); may be NULL */
    void *progress_ctx;
    const char *progress_stage; /* the stage name progress reports (default "writing") */
} moec_pipeline_opts;

/* Walks the parts as above. src is the model read (may equal run); out
 * the model built (NULL: nothing built, e.g. calibration). Errors: the
 * callbacks', the executor's, the sink's. */
moec_status moec_pipeline_run(const moec_model *src, moec_model *out, const moec_pipeline_opts *o,
                              const moec_pipeline_ops *ops, void *ctx, moec_err *err);

/* ---- inside the callbacks ---- */

/* The windows' hidden states (NULL without windows): at layer L, before
 * the advance, the input of layer L. */
moec_hstates *moec_pipeline_states(moec_pipeline *p);

/* One run of the windows through layer `layer` of o.run with the given
 * hooks (either may be NULL), states unchanged; on_window as in
 * moec_hstates_run. MOEC_ERR_ARG without windows. */
moec_status moec_pipeline_pass(moec_pipeline *p, int layer, moec_moe_hook mh, moec_attn_hook ah, void *hctx,
                               moec_hstates_window_fn on_window, moec_err *err);

/* The same run committing the outputs: the states move to layer + 1. Once
 * per layer; the driver does it (without hooks) when the method did not. */
moec_status moec_pipeline_advance(moec_pipeline *p, int layer, moec_moe_hook mh, moec_attn_hook ah, void *hctx,
                                  moec_hstates_window_fn on_window, moec_err *err);

/* The logits of window i's positions through o.run's final norm and head,
 * from the states (at the end, after every layer advanced), into logits
 * [len][vocab] (hstates.h moec_hstates_logits). */
moec_status moec_pipeline_logits(moec_pipeline *p, int window, float *logits, moec_err *err);

/* Whether finished layers leave `out` (a sink is set). */
bool moec_pipeline_streaming(const moec_pipeline *p);

#endif
