/* merge_quant.h - quantizing a merged model's routed experts, factors
 * included, so that merging and quantization combine in one .moec file.
 *
 * A factored expert weight (model.h) is two ordinary matrices, u [rows][r]
 * and v [r][cols]; each is quantized group-wise by RTN (quant/rtn.h) like
 * any dense expert weight, and the executor runs the two quantized products
 * (exec/lowrank.h). moec-quant's recipes (GPTQ, MC-MoE) treat w1/w3/w2 as
 * dense matrices with their own Hessians and do not take factored models;
 * this is the round-to-nearest path for them.
 */
#ifndef MOEC_MERGE_MERGE_QUANT_H
#define MOEC_MERGE_MERGE_QUANT_H

#include "core/error.h"
#include "model/model.h"
#include "quant/rtn.h"

typedef struct moec_merge_quant_report {
    int64_t tensors;   /* tensors quantized */
    int64_t params;    /* their parameters */
    uint64_t bytes;    /* their codes + scales + zeros */
} moec_merge_quant_report;

/* Replaces every routed expert weight of m (dense tensors and the factors
 * of factored ones; F32, F16 or BF16) by an RTN group-wise quantized tensor
 * owned by m. Router, attention, norms and embeddings are left as they are.
 * rep may be NULL. Errors: the options' (moec_quant_opts_check), RTN's
 * (non-finite weights), MOEC_ERR_UNSUPPORTED (an expert weight already
 * quantized), MOEC_ERR_NOMEM. */
/* The same for the routed experts of layer l only, adding to rep (a
 * layer-streaming merge quantizes each layer before it is written). */
moec_status moec_merge_quantize_layer(moec_model *m, int l, const moec_quant_opts *q, moec_merge_quant_report *rep,
                                      moec_err *err);

moec_status moec_merge_quantize_experts(moec_model *m, const moec_quant_opts *q, moec_merge_quant_report *rep,
                                        moec_err *err);

#endif
