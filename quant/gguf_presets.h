/* gguf_presets.h - which llama.cpp block type each tensor gets: a plan
 * moec-quant follows (--grid T, --preset NAME), so that its output can be
 * written as a stock GGUF with no re-quantization.
 *
 * Presets mirror llama-quantize's per-tensor choices (llama-quant.cpp,
 * llama_tensor_get_type) for these MoE architectures, so a moec file has
 * the same tensor types, size and llama.cpp speed as llama-quantize's:
 *
 *             default  attn_v                       attn_k  attn_output  ffn_down                   output
 *   Q4_K_M    Q4_K     Q6_K if more_bits(l)         Q4_K    Q4_K         Q6_K if more_bits(l)       Q6_K
 *   Q3_K_M    Q3_K     Q5_K for l < 2, else Q4_K    Q3_K    Q4_K         Q5_K if l < L/16, else Q4_K Q6_K
 *   Q2_K      Q2_K     Q4_K if heads/kv >= 4, Q3_K  Q2_K    Q3_K         Q3_K                       Q6_K
 *   Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: the type everywhere, output Q6_K (Q8_0 keeps Q8_0)
 *   with 8 experts (Mixtral's shape): attn_v and attn_k Q8_0, attn_output Q5_K
 *   (the k-quant presets).
 * more_bits(l) = l < L/8 || l >= 7L/8 || (l - L/8) % 3 == 2 (L layers). The
 * token embedding takes the default type (Q6_K like the output when tied);
 * attn_q, ffn_gate and ffn_up (routed, shared and dense alike) the default;
 * ffn_down's rule holds for the shared expert and dense layers too. A type
 * whose block does not divide a tensor's rows falls back as llama-quantize
 * does: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0 (output:
 * Q8_0), then F16 (the tensor is then left in full precision). Norms,
 * routers and the shared-expert gate are never quantized.
 *
 * MC-MoE's per-expert widths have no place in such a file: llama.cpp keeps
 * a layer's routed experts in one 3-D tensor of one type. A plan gives
 * types per tensor (per layer and projection), which llama.cpp allows.
 */
#ifndef MOEC_QUANT_GGUF_PRESETS_H
#define MOEC_QUANT_GGUF_PRESETS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/ggml_blocks.h"
#include "model/config.h"

/* The per-layer tensors a plan covers. Dense (non-MoE) layers use
 * GATE/UP/DOWN for their MLP. */
typedef enum moec_gslot {
    MOEC_GS_Q = 0,
    MOEC_GS_K,
    MOEC_GS_V,
    MOEC_GS_O,
    MOEC_GS_GATE,
    MOEC_GS_UP,
    MOEC_GS_DOWN,
    MOEC_GS_SH_GATE,
    MOEC_GS_SH_UP,
    MOEC_GS_SH_DOWN,
    MOEC_GS_COUNT
} moec_gslot;

/* Block type per tensor; MOEC_GB_NONE keeps the tensor in full precision
 * (or, for experts without a plan entry, moec's group-wise format). */
typedef struct moec_gplan {
    char name[16];                                /* the preset, or "grid" */
    moec_gblock embed, head;
    uint8_t layer[MOEC_MAX_LAYERS][MOEC_GS_COUNT]; /* moec_gblock */
} moec_gplan;

static inline moec_gblock moec_gplan_type(const moec_gplan *p, int layer, moec_gslot s)
{
    return p ? (moec_gblock)p->layer[layer][s] : MOEC_GB_NONE;
}

/* True for the names moec_gplan_preset knows (Q4_K_M, Q3_K_M, Q2_K, Q8_0,
 * Q4_0, Q4_1, Q5_0, Q5_1; any case); other --preset names belong to moec's
 * own recipes. */
bool moec_gplan_is_preset(const char *name);

/* Fills *p with the preset's types for a model of config c. Errors:
 * MOEC_ERR_ARG for an unknown name. */
moec_status moec_gplan_preset(moec_gplan *p, const moec_config *c, const char *name, moec_err *err);

/* A uniform plan (--grid): routed experts, the shared expert and dense MLPs
 * in `ffn`, attention in `attn`, embeddings and head in `embed`/`head` (each
 * may be MOEC_GB_NONE), with the same fallback for rows a type's block does
 * not divide. */
void moec_gplan_uniform(moec_gplan *p, const moec_config *c, moec_gblock ffn, moec_gblock attn, moec_gblock embed,
                        moec_gblock head);

/* Whether the plan quantizes any attention matrix / the embeddings or head. */
bool moec_gplan_has_attn(const moec_gplan *p, const moec_config *c);

#endif
