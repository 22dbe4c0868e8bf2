/* summary.h - what moec-inspect reports about a model, as JSON. */
#ifndef MOEC_MODEL_SUMMARY_H
#define MOEC_MODEL_SUMMARY_H

#include <cjson/cJSON.h>

#include "model/model.h"

/* A new cJSON object (caller frees with cJSON_Delete), NULL when out of memory:
 *   architecture, model_type, layers, hidden_size, heads, kv_heads, head_dim,
 *   vocab_size, experts_per_layer [..], top_k, norm_topk, expert_ffn,
 *   shared_expert_ffn, dense_ffn, params_total, params_active_per_token,
 *   dtypes {name: params}, weight_bytes, file_bytes, bits_per_weight. */
cJSON *moec_model_summary(const moec_model *m);

#endif
