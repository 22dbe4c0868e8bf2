/* model_sink.h - where a model built layer by layer goes: an HF checkpoint
 * directory or a .moec container, written part by part (model.h's
 * MOEC_PART_EMBED, the layers in order, MOEC_PART_HEAD) as each part is
 * finished, so that a layer-streaming pass (lib/pipeline) never holds more
 * than the part it hands over.
 *
 * A sink is created from a layout: a model whose every slot already has its
 * final dtype and shape (the data need not be there yet, or may still be
 * the source's). Each part is then put once, in any order, from a model
 * whose tensors of that part are present and match the layout; finish
 * writes the small files (config.json, tokenizer.json, side files, the
 * report) from the model it is given and makes the output appear
 * atomically. Freeing an unfinished sink removes everything it wrote.
 * moec_model_save_hf and moec_model_save_moec are a sink fed every part of
 * a whole model, so both ways give the same bytes.
 */
#ifndef MOEC_MODEL_MODEL_SINK_H
#define MOEC_MODEL_MODEL_SINK_H

#include <stdbool.h>
#include <stddef.h>

#include "core/dtype.h"
#include "core/error.h"
#include "model/model.h"
#include "model/model_moec.h"

typedef struct moec_model_sink moec_model_sink;

/* An HF checkpoint directory (model_hf.c's layout: config.json with the
 * layout's expert counts, safetensors sharded above shard_bytes, 0 = one
 * file, tokenizer and side files), written into "<dir>.tmp-XXXXXX" and
 * renamed when complete; an existing dir is replaced only with overwrite.
 * Quantized tensors are refused unless quant_as is a compute dtype
 * (MOEC_DT_F32, F16, BF16): they are then written dequantized to it, one
 * tensor at a time (moec-export). Pass MOEC_DT_QUANT for "refuse". */
moec_status moec_model_sink_hf_new(moec_model_sink **out, const moec_model *layout, const char *dir,
                                   size_t shard_bytes, bool overwrite, moec_dtype quant_as, moec_err *err);

/* A .moec container (model_moec.h): tensors encoded and written as they
 * are put, in put order; blobs at finish. o may be NULL (defaults); its
 * report_json is ignored (finish takes the report). */
moec_status moec_model_sink_moec_new(moec_model_sink **out, const moec_model *layout, const char *path,
                                     const moec_moec_save_opts *o, moec_err *err);

/* Writes the tensors of one part of m (every slot of the part present, of
 * the layout's dtype and the config's shape). The data may be freed once
 * this returns. */
moec_status moec_model_sink_put(moec_model_sink *s, const moec_model *m, int part, moec_err *err);

/* Completes the output: every part must have been put. config.json comes
 * from m's config and original text, the tokenizer and side files from m;
 * report_json (may be NULL) is stored as the container blob "report.json"
 * (ignored by the HF sink). */
moec_status moec_model_sink_finish(moec_model_sink *s, const moec_model *m, const char *report_json,
                                   moec_err *err);

/* Frees the sink; an unfinished output is removed. NULL is a no-op. */
void moec_model_sink_free(moec_model_sink *s);

#endif
