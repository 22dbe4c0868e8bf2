/* gguf_export.h - a moec_model as a GGUF file llama.cpp loads and runs.
 *
 * Architectures (llama.cpp's names): Mixtral -> "llama" with expert tensors
 * (q and k rows permuted for its interleaved RoPE), Qwen2-MoE -> "qwen2moe",
 * Qwen3-MoE -> "qwen3moe", OLMoE -> "olmoe"; every hyper-parameter key those
 * loaders read, and the tokenizer (formats/gguf_vocab.h). A layer's routed
 * experts become one 3-D tensor per projection (ffn_gate_exps, ffn_up_exps,
 * ffn_down_exps: [E][out][in], ne = {in, out, E}).
 *
 * What each tensor is written as:
 *  - norms, biases, routers and the shared-expert gate: F32 (as llama.cpp
 *    keeps them);
 *  - a quantized tensor already in a llama.cpp block type (moec-quant --grid
 *    / --preset): its blocks, byte for byte;
 *  - a group-wise quantized tensor whose format IS a llama.cpp type (groups of
 *    32 along rows of a multiple of 32: 8-bit symmetric = Q8_0, 4/5-bit
 *    symmetric = Q4_0/Q5_0, 4/5-bit with zero points = Q4_1/Q5_1): its codes
 *    carried over unchanged, the F16 scale as d and, for Q4_1/Q5_1, the min
 *    m = -s·z rounded to F16 (exact when -s·z is an F16 value; the report
 *    counts the groups where it is not);
 *  - any other group-wise tensor: dequantized to the float `type` (F32 is
 *    exactly what moec computes); with a block `type` it is refused, since
 *    re-quantizing would lose what the quantizer found;
 *  - a float weight matrix: `type` (F32/F16/BF16 converted, or a block type
 *    encoded by moec's round-to-nearest, moec_gblock_quantize); MOEC_GGUF_AUTO
 *    keeps its own float dtype. Block types need rows of a multiple of their
 *    block size; a row that is not falls back as llama-quantize does (Q2_K,
 *    Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, 32-blocks -> F16).
 * A layer's experts must come out in one type: MC-MoE's per-expert widths
 * cannot (llama.cpp stores the layer's experts in one tensor of one type).
 *
 * Refused with one clear error (MOEC_ERR_UNSUPPORTED) before anything is
 * written: dense (non-MoE) layers or per-layer expert counts (these llama.cpp
 * architectures have neither), routing llama.cpp hard-codes differently
 * (Qwen3-MoE and Mixtral renormalise the top-k, Qwen2-MoE and OLMoE do not),
 * OLMoE with grouped-query attention (its q/k norms span the hidden size),
 * a missing or unsupported tokenizer.
 */
#ifndef MOEC_FORMATS_GGUF_EXPORT_H
#define MOEC_FORMATS_GGUF_EXPORT_H

#include <stdint.h>

#include "core/error.h"
#include "model/model.h"

/* Keep float tensors in their own dtype. */
#define MOEC_GGUF_AUTO (-1)

typedef struct moec_gguf_export_opts {
    int type;         /* ggml type id for float weight matrices (MOEC_GGML_F32/F16/BF16 or a block type),
                         or MOEC_GGUF_AUTO (default) */
    const char *name; /* general.name; NULL = the source's base name */
} moec_gguf_export_opts;

#define MOEC_GGUF_EXPORT_OPTS_DEFAULT ((moec_gguf_export_opts){.type = MOEC_GGUF_AUTO, .name = NULL})

typedef struct moec_gguf_export_report {
    const char *arch;         /* llama.cpp architecture name */
    const char *tokenizer;    /* "gpt2/qwen2", "llama", ... */
    int n_tensors;            /* GGUF tensors written */
    int64_t verbatim;         /* moec tensors copied as llama.cpp blocks */
    int64_t carried;          /* group-wise tensors whose codes were carried into a llama.cpp type */
    int64_t carried_groups;   /* groups carried */
    int64_t rounded_mins;     /* carried Q4_1/Q5_1 groups whose min -s·z is not an F16 value */
    double max_min_error;     /* largest |F16(-s·z) - (-s·z)| / s over them */
    int64_t dequantized;      /* group-wise tensors written as floats */
    int64_t encoded;          /* float tensors encoded to a block type by moec's RTN */
    uint64_t file_bytes;
    int file_type;            /* general.file_type written (llama_ftype) */
} moec_gguf_export_report;

/* Writes m to path (temporary file beside it, renamed when complete; on
 * failure no file is left). rep may be NULL. o may be NULL for defaults. */
moec_status moec_model_save_gguf(const moec_model *m, const char *path, const moec_gguf_export_opts *o,
                                 moec_gguf_export_report *rep, moec_err *err);

#endif
