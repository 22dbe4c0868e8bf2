/* summary.h - what moec-inspect reports about a model, as JSON. */
#ifndef MOEC_MODEL_SUMMARY_H
#define MOEC_MODEL_SUMMARY_H

#include <cjson/cJSON.h>

#include "model/model.h"

/* A new cJSON object (caller frees with cJSON_Delete), NULL when out of memory:
 *   architecture, model_type, layers, hidden_size, heads, kv_heads, head_dim,
 *   vocab_size, experts_per_layer [..], top_k, norm_topk, expert_ffn,
 *   shared_expert_ffn, dense_ffn, params_total, params_active_per_token,
 *   dtypes {name: params}, weight_bytes (quantized tensors: codes + scales
 *   + zeros), file_bytes, bits_per_weight (weight_bytes x 8 / params_total);
 * when the model has quantized tensors:
 *   quantized {tensors, params, bytes, bits_per_weight} over those alone;
 * when it was opened from a .moec file:
 *   container {file_bytes, params, stored_tensor_bytes, file_bits_per_weight
 *   (file bytes x 8 / params, llama.cpp's count), storage {label: {tensors,
 *   params, stored_bytes, bits_per_weight}}} with labels "BF16", "F32",
 *   "F16", "q4_g32" (group-wise asymmetric), "q3_g16_sym" (symmetric); stored
 *   bytes are the sections' sizes in the file (after zstd where used). */
cJSON *moec_model_summary(const moec_model *m);

#endif
