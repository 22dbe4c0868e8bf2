/* model_moec.h - a moec_model stored in, and run from, a .moec container
 * (formats/container.h, docs/format.md).
 *
 * Tensors keep their HF names (the slot table of model.c). F32/F16/BF16
 * tensors are stored raw and mmap'd back as views; group-wise quantized
 * tensors (dtype MOEC_DT_QUANT, moec_tensor.q -> quant/qformat.h) are stored
 * as codes/scales/zeros sections and come back as MOEC_DT_QUANT views (raw
 * sections point into the mapping; zstd-compressed ones are decoded once at
 * open into buffers the model owns). The container embeds config.json (HF,
 * expert counts as stored), tokenizer.json and an optional JSON report.
 */
#ifndef MOEC_MODEL_MODEL_MOEC_H
#define MOEC_MODEL_MODEL_MOEC_H

#include <stdbool.h>

#include "model/model.h"

typedef struct moec_moec_save_opts {
    int zstd_level;          /* default 3 */
    bool compress;           /* zstd sections where it saves >= 5% (default true) */
    const char *report_json; /* stored as blob "report.json" when not NULL */
} moec_moec_save_opts;

#define MOEC_MOEC_SAVE_OPTS_DEFAULT {3, true, NULL}

/* Writes m (any mix of compute and quantized tensors) atomically to path. */
moec_status moec_model_save_moec(const moec_model *m, const char *path, const moec_moec_save_opts *o,
                                 moec_err *err);

/* Opens a .moec file with full verification (checksums of every tensor).
 * moec_model_open calls this for regular files. */
moec_status moec_model_open_moec(moec_model **out, const char *path, moec_err *err);

#endif
