/* export.h - a model written out as an HF checkpoint part by part, with
 * its quantized tensors dequantized one at a time (moec-export).
 *
 * The walk is the layer-streaming pipeline's (pipeline.h): each part is
 * bound (a lazily opened container decodes only that part), written to the
 * HF sink (model_sink.h) and released before the next, so a container
 * larger than memory exports in about one layer's dequantized size.
 */
#ifndef MOEC_PIPELINE_EXPORT_H
#define MOEC_PIPELINE_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/progress.h"
#include "model/model.h"

typedef struct moec_export_summary {
    int64_t quantized_tensors; /* tensors written dequantized */
    int64_t params;            /* parameters written (tied head once) */
    uint64_t bytes;            /* bytes of tensor data written */
} moec_export_summary;

/* Writes m as an HF checkpoint directory (config.json from m's config and
 * text, tokenizer and side files, safetensors sharded above shard_bytes, 0
 * = one file; atomic, an existing dir replaced only with overwrite).
 * Quantized tensors are written dequantized to dtype (F32 exact, F16/BF16
 * rounded to nearest even); others as stored. m may be lazily opened
 * (moec_model_open_moec_lazy); its tensors are dropped as they are
 * written, so m holds no tensor afterwards. sum may be NULL. progress
 * (may be NULL) is told of each part written, stage "dequantizing" when m
 * holds quantized tensors, else "writing". */
moec_status moec_export_hf(moec_model *m, const char *dir, moec_dtype dtype, size_t shard_bytes, bool overwrite,
                           moec_progress_fn progress, void *progress_ctx, moec_export_summary *sum,
                           moec_err *err);

#endif
