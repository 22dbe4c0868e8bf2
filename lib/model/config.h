/* config.h - one architecture-neutral description of an MoE transformer.
 *
 * Architecture differences are data here (flags and sizes), not branches
 * scattered through kernels. Filled from a Hugging Face config.json by
 * formats/hf_config.c, or from the config embedded in a .moec container.
 */
#ifndef MOEC_MODEL_CONFIG_H
#define MOEC_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef enum moec_arch {
    MOEC_ARCH_MIXTRAL = 0, /* MixtralForCausalLM */
    MOEC_ARCH_QWEN2_MOE,   /* Qwen2MoeForCausalLM */
    MOEC_ARCH_QWEN3_MOE,   /* Qwen3MoeForCausalLM */
    MOEC_ARCH_OLMOE,       /* OlmoeForCausalLM */
    MOEC_ARCH_COUNT
} moec_arch;

typedef enum moec_qk_norm {
    MOEC_QK_NORM_NONE = 0,
    MOEC_QK_NORM_HEAD, /* RMSNorm over each head's head_dim (Qwen3-MoE), before RoPE */
    MOEC_QK_NORM_FULL  /* RMSNorm over the whole q / k projection (OLMoE), before RoPE */
} moec_qk_norm;

#define MOEC_MAX_LAYERS 256

typedef struct moec_config {
    moec_arch arch;
    int vocab_size;
    int hidden_size;      /* d */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_positions;
    float rms_eps;
    float rope_theta;

    int dense_ffn;        /* intermediate size of dense (non-MoE) layers */
    int expert_ffn;       /* f: intermediate size of one routed expert */
    int shared_ffn;       /* intermediate size of the shared expert, 0 if none */
    bool shared_gate;     /* shared expert output scaled by sigmoid(gate · x) */

    int n_experts;        /* experts per MoE layer in the original model */
    int top_k;            /* experts selected per token */
    bool norm_topk;       /* renormalise the selected probabilities to sum 1 */

    bool qkv_bias;        /* q/k/v projections carry a bias (Qwen2-MoE) */
    moec_qk_norm qk_norm;
    bool tie_embeddings;  /* lm_head shares the embedding matrix */

    int bos_token_id;     /* -1 if none */
    int eos_token_id;     /* -1 if none */

    /* Per layer: number of routed experts, 0 for a dense layer.
     * Non-uniform counts come from moec's extension key
     * "moec_layer_experts" (other HF tools cannot load such checkpoints). */
    int layer_experts[MOEC_MAX_LAYERS];
} moec_config;

static inline bool moec_config_layer_is_moe(const moec_config *c, int l)
{
    return c->layer_experts[l] > 0;
}

/* True when every MoE layer has the same number of experts. */
bool moec_config_uniform(const moec_config *c);

const char *moec_arch_name(moec_arch a);       /* "MixtralForCausalLM", ... */
const char *moec_arch_model_type(moec_arch a); /* "mixtral", ... */

/* Parses a Hugging Face config.json text. Unknown architectures and options
 * moec does not implement (e.g. rope_scaling, sliding windows in use) are
 * refused with a message that names them. */
moec_status moec_config_parse_hf(moec_config *cfg, const char *json_text, moec_err *err);
moec_status moec_config_load_hf(moec_config *cfg, const char *path, moec_err *err);

/* Writes cfg into an HF config.json (a new JSON text, caller frees with free()).
 * `original`, if not NULL, is the source config.json text: its unknown keys are
 * kept and the expert counts updated, so the result stays loadable by HF. */
moec_status moec_config_to_hf_json(const moec_config *cfg, const char *original,
                                   char **out_json, moec_err *err);

/* Parameter counts: total, and active per token (top_k experts + shared). */
int64_t moec_config_params_total(const moec_config *c);
int64_t moec_config_params_active(const moec_config *c);

#endif
