/* model_moec.h - a moec_model stored in, and run from, a .moec container
 * (formats/container.h, docs/format.md).
 *
 * Tensors keep their HF names (the slot table of model.c). F32/F16/BF16
 * tensors are stored raw and mmap'd back as views; group-wise quantized
 * tensors (dtype MOEC_DT_QUANT, moec_tensor.q -> core/qformat.h) are stored
 * as codes/scales/zeros sections and come back as MOEC_DT_QUANT views (raw
 * sections point into the mapping; zstd-compressed ones are decoded once at
 * open into buffers the model owns). The container embeds blobs
 * "config.json" (HF, expert counts as stored; per-tensor bits, group size and
 * symmetry are in the tensor entries, not here), "tokenizer.json" when the
 * model has one and "report.json" when the writer gives one.
 */
#ifndef MOEC_MODEL_MODEL_MOEC_H
#define MOEC_MODEL_MODEL_MOEC_H

#include <stdbool.h>

#include "core/progress.h"
#include "model/model.h"

typedef struct moec_moec_save_opts {
    int zstd_level;          /* default 3 */
    bool compress;           /* zstd sections where it saves >= 5% (default true) */
    const char *report_json; /* stored as blob "report.json" when not NULL */
} moec_moec_save_opts;

#define MOEC_MOEC_SAVE_OPTS_DEFAULT {3, true, NULL}

/* Writes m (any mix of compute and quantized tensors) atomically to path
 * (temporary file beside it, renamed when complete; tensors are encoded and
 * written one at a time). Every slot (moec_model_for_each_slot) must be
 * present and match its shape; a quantized tensor's format must pass
 * moec_qformat_validate. With o->compress, group-wise sections are zstd-
 * compressed where that saves >= 5%; float tensors always stay raw. o may
 * be NULL for the defaults. */
moec_status moec_model_save_moec(const moec_model *m, const char *path, const moec_moec_save_opts *o,
                                 moec_err *err);

/* Opens a .moec file with full verification (checksums of every tensor),
 * then checks every tensor against the embedded config as moec_model_open
 * does for HF directories (presence, shape, storage type, group-wise
 * parameters and scales via moec_qformat_validate); errors name the file and
 * the tensor. Raw sections are used in place (the model keeps the container
 * open in m->ct); zstd sections are decoded into buffers the model owns. A
 * file without the container magic fails with MOEC_ERR_ARG. moec_model_open
 * calls this for regular files. */
moec_status moec_model_open_moec(moec_model **out, const char *path, moec_err *err);

/* The model a container already open holds (the part of
 * moec_model_open_moec after moec_container_open): ct is owned by the model
 * on success and closed on failure. path names it in messages and becomes
 * m->source. The fuzzer's entry point for containers held in memory. */
struct moec_container;
moec_status moec_model_from_container(moec_model **out, struct moec_container *ct, const char *path,
                                      moec_err *err);

/* The same checks of every tensor's presence, shape and type, but without
 * reading any tensor's bytes: the container's checksums are verified per
 * tensor when it is first read, and the tensors stay unbound (dtype and
 * shape set, data NULL) until moec_model_load_part binds a part and
 * moec_model_release_part drops it again (model.h). For streaming a
 * container larger than memory (moec-export); the model must not be run
 * or derived from. */
moec_status moec_model_open_moec_lazy(moec_model **out, const char *path, moec_err *err);

struct moec_qformat;

/* Makes *t (a slot of m, e.g. &m->layers[l].experts[e].w1) a MOEC_DT_QUANT
 * tensor owned by m: f is validated (moec_qformat_validate; `name` labels
 * the message, may be NULL), then the format and its codes/scales/zeros are
 * copied into moec_model_alloc buffers, so f's buffers may be freed right
 * after (e.g. a moec_qmatrix from RTN or GPTQ). */
moec_status moec_model_set_quant(moec_model *m, moec_tensor *t, const struct moec_qformat *f, const char *name,
                                 moec_err *err);

/* Replaces every MOEC_DT_QUANT tensor of m by an owned tensor of the given
 * compute dtype holding its dequantized values (F32 exact; F16/BF16 round
 * them to nearest even). Other tensors are untouched. Used on a derived
 * model (moec_model_derive) to export a quantized model as HF. progress
 * (may be NULL) is called after each tensor: ("dequantizing", done, total
 * quantized tensors). */
moec_status moec_model_dequantize(moec_model *m, moec_dtype dtype, moec_progress_fn progress, void *progress_ctx,
                                  moec_err *err);

#endif
