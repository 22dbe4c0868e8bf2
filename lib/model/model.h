/* model.h - an MoE transformer's weights, described independently of the
 * file they came from.
 *
 * Every tensor is a view (lib/core/tensor.h): into the mmap'd safetensors of
 * an HF directory, into a .moec container, or into a buffer the model owns
 * (moec_model_alloc) after a transformation changed it. Shapes follow HF:
 * a linear layer's weight is [out][in].
 *
 * Notation in the shape comments: d = hidden_size, hd = head_dim,
 * H = n_heads, KV = n_kv_heads, f = expert_ffn, E = experts in the layer.
 */
#ifndef MOEC_MODEL_MODEL_H
#define MOEC_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "model/config.h"

/* A weight stored as the product of two factors, W = u · v, instead of one
 * dense matrix: u [rows][rank], v [rank][cols], each in any dtype the
 * executor runs (F32/F16/BF16 or group-wise quantized). Merged experts use
 * it (merge/merge.h: the group's shared basis U_r times the merged expert's
 * coefficients S_r V_Gᵀ), where rank · (rows + cols) < rows · cols makes it
 * smaller than the dense matrix. */
typedef struct moec_factored {
    moec_tensor u; /* [rows][rank] */
    moec_tensor v; /* [rank][cols] */
} moec_factored;

/* A SwiGLU feed-forward block: y = w2 · (silu(w1 · x) ⊙ (w3 · x)). */
typedef struct moec_ffn {
    moec_tensor w1; /* gate [f][d] */
    moec_tensor w3; /* up   [f][d] */
    moec_tensor w2; /* down [d][f] */
    /* Routed experts only: a weight stored factored. When w1f.u is present,
     * w1 is absent and w1 = w1f.u · w1f.v (likewise w3f, w2f); each kind is
     * dense or factored on its own. Slot names: "<w1 name minus .weight>.u.weight"
     * and ".v.weight" (moec_model_for_each_slot). */
    moec_factored w1f, w3f, w2f;
} moec_ffn;

static inline int moec_factored_present(const moec_factored *f) { return f->u.ndim > 0; }

typedef struct moec_layer {
    moec_tensor attn_norm;      /* [d] RMSNorm before attention */
    moec_tensor wq;             /* [H*hd][d] */
    moec_tensor wk;             /* [KV*hd][d] */
    moec_tensor wv;             /* [KV*hd][d] */
    moec_tensor wo;             /* [d][H*hd] */
    moec_tensor bq, bk, bv;     /* [H*hd], [KV*hd], [KV*hd] when cfg.qkv_bias */
    moec_tensor q_norm, k_norm; /* [hd] (per head) or [H*hd] / [KV*hd] (whole), when cfg.qk_norm */
    moec_tensor ffn_norm;       /* [d] RMSNorm before the MoE / MLP block */

    int n_experts;              /* routed experts, 0 in a dense layer */
    moec_tensor router;         /* [E][d] */
    moec_ffn *experts;          /* [E] */
    moec_ffn shared;            /* shared expert, f = cfg.shared_ffn, when cfg.shared_ffn > 0 */
    moec_tensor shared_gate;    /* [1][d] sigmoid gate of the shared expert, when cfg.shared_gate */
    moec_ffn dense;             /* MLP of a dense layer, f = cfg.dense_ffn */
} moec_layer;

struct moec_safetensors;
struct moec_container;

/* Files of an HF checkpoint that travel with the weights unchanged, by
 * their file names: what tokenizers and generation need besides
 * tokenizer.json (tokenizer_config.json, generation_config.json,
 * special_tokens_map.json, tokenizer.model). Read from an HF directory or a
 * .moec container and written to both, so a compressed model keeps them. */
#define MOEC_N_SIDE_FILES 4
extern const char *const moec_side_file_names[MOEC_N_SIDE_FILES];

typedef struct moec_side_file {
    char *data;              /* the file's bytes (NUL-terminated copy), NULL when absent */
    size_t len;
} moec_side_file;

typedef struct moec_model {
    moec_config cfg;
    moec_tensor embed;       /* [V][d] */
    moec_tensor final_norm;  /* [d] */
    moec_tensor lm_head;     /* [V][d]; a copy of the embed view when tied */
    moec_layer *layers;      /* [n_layers] */

    char *source;            /* path it was opened from (HF dir or .moec file) */
    char *config_json;       /* original config.json text, kept to write HF configs back */
    char *tokenizer_json;    /* tokenizer.json text if found, else NULL */
    size_t tokenizer_json_len;
    moec_side_file side[MOEC_N_SIDE_FILES]; /* by moec_side_file_names */
    uint64_t file_bytes;     /* bytes of the weight files it was read from */

    /* storage behind the views */
    struct moec_safetensors *st;
    struct moec_container *ct;
    const struct moec_model *parent; /* a derived model's views may point into its parent */
    void **owned;
    size_t n_owned, cap_owned;
    /* a lazily opened container (moec_model_open_moec_lazy): a part's tensors
     * are bound by moec_model_load_part and dropped by moec_model_release_part */
    bool lazy;
    size_t *part_mark;       /* [n_layers + 2] arena mark when each part was loaded */
} moec_model;

/* Opens an HF checkpoint directory (config.json + safetensors, tokenizer.json
 * optional). Validates every tensor's presence, dtype and shape against the
 * config; unexpected tensors are refused (they mean config and weights
 * disagree). The model holds the mapping; close with moec_model_close. */
moec_status moec_model_open(moec_model **out, const char *path, moec_err *err);
void moec_model_close(moec_model *m);

/* Tensors a checkpoint of config c must hold (the head counted when untied),
 * from the config alone. Readers compare it with what the file holds before
 * they allocate anything the config sizes, so a config claiming 10^9
 * experts is refused rather than allocated for. */
int64_t moec_config_tensor_count(const moec_config *c);
/* MOEC_ERR_FORMAT naming both counts when the config describes far more
 * tensors than n_tensors (more than twice as many, plus 64); a few missing
 * tensors are left to the binding, which names each. */
moec_status moec_config_check_tensor_count(const moec_config *c, size_t n_tensors, moec_err *err);

/* An empty model of the given config: layers and expert arrays allocated,
 * every tensor absent. Builders (containers, tests) fill the views. */
moec_status moec_model_new_empty(moec_model **out, const moec_config *cfg, moec_err *err);

/* A new model whose config and views are copies of src's (views still point
 * into src's storage: src must outlive it). Transformations start from this,
 * change cfg and replace views with buffers from moec_model_alloc. */
moec_status moec_model_derive(moec_model **out, const moec_model *src, moec_err *err);

/* Allocates a buffer owned by the model (freed by moec_model_close), 64-byte aligned, zeroed. */
void *moec_model_alloc(moec_model *m, size_t bytes);

/* Makes t an owned F32 / BF16 / F16 tensor of the given 2-D (or 1-D when cols == 0) shape in m. */
moec_status moec_model_new_tensor(moec_model *m, moec_tensor *t, moec_dtype dtype, int64_t rows, int64_t cols,
                                  moec_err *err);

/* Resizes the per-layer expert arrays after cfg.layer_experts changed (new
 * slots are zeroed). Used by pruning and merging. */
moec_status moec_model_resize_experts(moec_model *m, int layer, int n_experts, moec_err *err);

/* One named tensor slot of the model in its architecture's HF naming. */
typedef struct moec_slot {
    char name[192];
    moec_tensor *t;
    int ndim;
    int64_t shape[2];
    bool optional;   /* may be absent (only lm_head when tied) */
    int layer;       /* -1 for model-level tensors */
    int expert;      /* -1 unless a routed expert's weight */
} moec_slot;

typedef moec_status (*moec_slot_fn)(void *ctx, const moec_slot *slot, moec_err *err);
/* Calls fn for every tensor the config calls for, in a fixed order. */
moec_status moec_model_for_each_slot(moec_model *m, moec_slot_fn fn, void *ctx, moec_err *err);

/* The parts a model is streamed in, in file order: the embedding, then
 * layers 0 .. n_layers-1 (part = the layer index), then the final norm and
 * lm_head (lib/pipeline, model_sink.h). */
enum { MOEC_PART_EMBED = -1, MOEC_PART_HEAD = -2 };

/* moec_model_for_each_slot restricted to one part, in the same order. */
moec_status moec_model_for_each_slot_in(moec_model *m, int part, moec_slot_fn fn, void *ctx, moec_err *err);

/* Binds one part's tensors of a lazily opened model (model_moec.h
 * moec_model_open_moec_lazy): checks their checksums and decodes their
 * compressed sections into buffers the model owns. A no-op for other
 * models, whose tensors are always bound. */
moec_status moec_model_load_part(moec_model *m, int part, moec_err *err);

/* Releases the pages of a part's tensors that are views into a checkpoint
 * file mapped by m or by a model it derives from (moec_model_derive):
 * they leave the process's resident memory and are read again from the
 * file if touched. Owned buffers are not touched. For streaming a
 * checkpoint larger than memory: a layer's source pages go once the layer
 * is done. A lazily opened model also drops the part's views and decoded
 * buffers (moec_model_load_part binds them again). */
void moec_model_release_part(const moec_model *m, int part);
/* The same for one tensor of m (its data, or its codes, scales and zeros). */
void moec_model_release_tensor(const moec_model *m, const moec_tensor *t);

/* Marks every tensor of a part absent (views dropped, nothing freed). */
void moec_model_clear_part(moec_model *m, int part);

/* Buffers allocated by moec_model_alloc since a mark: a layer-streaming
 * pass marks before building a layer and, once the layer is written, frees
 * what it allocated (views into those buffers must be dropped first). */
size_t moec_model_arena_mark(const moec_model *m);
void moec_model_arena_release(moec_model *m, size_t mark);

/* Parameters and bytes actually stored (all tensors, tied head counted once;
 * a factored weight counts its two factors). */
int64_t moec_model_params(const moec_model *m);
uint64_t moec_model_bytes(const moec_model *m);
/* The same for one part (MOEC_PART_EMBED, a layer, MOEC_PART_HEAD), added
 * to *params and *bytes: a streaming pass counts each part before it leaves. */
void moec_model_count_part(const moec_model *m, int part, int64_t *params, uint64_t *bytes);

/* Parameters stored for one FFN block: dense tensors plus factors. */
int64_t moec_ffn_params(const moec_ffn *f);
/* Intermediate width f (rows of w1) and input width d of an FFN, dense or factored. */
int64_t moec_ffn_inner(const moec_ffn *f);
int64_t moec_ffn_in(const moec_ffn *f);

/* True when some routed expert of m has a factored weight. */
bool moec_model_has_factored(const moec_model *m);

/* Replaces every factored expert weight of m by an owned dense tensor of
 * the given compute dtype holding u · v (products in float32, rounded to
 * nearest once). Factors may be F32, F16, BF16 or group-wise quantized
 * (dequantized row by row). Used to export a factored model as HF, which
 * has no factored form. Errors: MOEC_ERR_ARG (dtype), MOEC_ERR_UNSUPPORTED
 * (a factor without data), MOEC_ERR_SHAPE (factors that do not chain),
 * MOEC_ERR_NOMEM. */
moec_status moec_model_densify(moec_model *m, moec_dtype dtype, moec_err *err);
/* The same for the routed experts of layer l (an export streaming layer by layer). */
moec_status moec_model_densify_layer(moec_model *m, int l, moec_dtype dtype, moec_err *err);

/* Writes an HF checkpoint directory: config.json (from the original, with
 * expert counts updated), safetensors (sharded above shard_bytes; 0 = one
 * file), tokenizer.json and the side files the model carries (moec_side_file_names).
 * Written into "<out_dir>.tmp-XXXXXX" and renamed when complete; an existing
 * out_dir is replaced only when overwrite is set.  */
moec_status moec_model_save_hf(const moec_model *m, const char *out_dir, size_t shard_bytes, bool overwrite,
                               moec_err *err);

#endif
