/* check.h - checks of values inside well-formed files: weights that are NaN
 * or infinite, and a tokenizer that can produce ids the embedding lacks.
 * Readers validate structure; these validate what the structure holds, so
 * that a damaged or hostile checkpoint fails with the tensor's name instead
 * of turning into NaN logits or an out-of-range row far downstream. */
#ifndef MOEC_MODEL_CHECK_H
#define MOEC_MODEL_CHECK_H

#include "core/error.h"
#include "core/tensor.h"
#include "model/model.h"

struct moec_tokenizer;

/* MOEC_ERR_NUMERIC "tensor NAME: NaN at [row, col]" (or Inf) for the first
 * non-finite element of t (F32, F16, BF16; for a group-wise quantized
 * tensor its scales). Other dtypes pass. name labels the message. */
moec_status moec_tensor_check_finite(const moec_tensor *t, const char *name, moec_err *err);

/* moec_tensor_check_finite over the tensors of one layer (layer >= 0) or
 * over the model-level ones (layer == -1: embeddings, final norm, head), so
 * a pass that streams layer by layer checks each layer as it reaches it. */
moec_status moec_model_check_finite_layer(const moec_model *m, int layer, moec_err *err);

/* The same over every tensor of the model. Reads every weight once. */
moec_status moec_model_check_finite(const moec_model *m, moec_err *err);

/* MOEC_ERR_SHAPE when the tokenizer knows ids the model's embedding has no
 * row for (tokenizer vocabulary larger than cfg.vocab_size); a smaller
 * tokenizer vocabulary is normal (embeddings are often padded). */
moec_status moec_model_check_tokenizer(const moec_model *m, const struct moec_tokenizer *tok, moec_err *err);

/* Loads the tokenizer m carries (m->tokenizer_json) and checks it against
 * the model as moec_model_check_tokenizer does. MOEC_ERR_FORMAT when m has
 * none. Free *out with moec_tokenizer_free. */
moec_status moec_model_tokenizer(const moec_model *m, struct moec_tokenizer **out, moec_err *err);

/* Refuses an output path that would replace or damage a file the model was
 * read from (its source, or its parent's for a derived model), as
 * moec_check_output_not_input does. The writers (moec_model_save_hf,
 * moec_model_save_moec) call it; tools call it before long work too. */
moec_status moec_model_check_output(const moec_model *m, const char *out, moec_err *err);

#endif
