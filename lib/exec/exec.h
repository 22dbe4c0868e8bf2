/* exec.h - the CPU reference executor: a forward pass over a moec_model.
 *
 * Arithmetic is float32 throughout; weights are read in their stored dtype
 * (BF16/F16/F32 views into the checkpoint, widened a tile at a time) and
 * never copied whole. A prompt is processed as one batch: projections are
 * sgemm-sized, tokens are grouped per expert so each expert runs one matrix
 * product over its tokens. Decoding runs one token at a time against the KV
 * cache. Work is spread over a thread pool (--threads).
 *
 * Hooks let calibration see each MoE block: its input, router logits,
 * choices, gates and every selected expert's output.
 */
#ifndef MOEC_EXEC_EXEC_H
#define MOEC_EXEC_EXEC_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "model/model.h"

typedef struct moec_exec moec_exec;

typedef struct moec_exec_opts {
    int threads;   /* worker threads including the caller; default 1 */
    int max_ctx;   /* KV cache length in tokens; default min(cfg.max_positions, 2048) */
    /* Activation quantization (EAQuant's W4A4 / W3A4 settings): 0 = off
     * (default); 2..16 = the input of every linear layer of the attention
     * (q/k/v and o_proj) and of every feed-forward block (routed experts,
     * shared expert, dense MLP: w1/w3 and w2) is quantized per token,
     * dynamically and symmetrically to act_bits bits before the product:
     * s = max|x_row| / (2^(act_bits-1) - 1), x <- s * clamp(round(x / s),
     * -(2^(act_bits-1) - 1), 2^(act_bits-1) - 1). Simulated in float (the
     * product itself stays float32); the router, the shared-expert gate and
     * lm_head read unquantized activations, and hooks see them unquantized. */
    int act_bits;
    /* The KV cache holds one layer instead of all (default false): for
     * layer-at-a-time use (moec_exec_layer, lib/pipeline), where a window
     * runs through one layer before the next layer starts. Such an executor
     * refuses moec_exec_forward. */
    bool layer_cache;
} moec_exec_opts;

#define MOEC_EXEC_OPTS_DEFAULT {1, 0, 0, false}

/* Batches larger than this are run in chunks (activations stay bounded);
 * the layer-at-a-time calls below chunk the same way. */
#define MOEC_EXEC_CHUNK 512

/* What a hook sees of one MoE block for a batch of n tokens. Pointers are
 * valid only during the call. */
typedef struct moec_moe_view {
    int layer;
    int n;                    /* tokens in the batch */
    int d;                    /* hidden size */
    int n_experts;            /* E */
    int top_k;                /* k */
    const float *resid;       /* [n][d] hidden state entering the block (before its norm) */
    const float *x;           /* [n][d] block input after the norm: what router and experts read (h_t) */
    const float *logits;      /* [n][E] router logits */
    const float *probs;       /* [n][E] softmax of the logits */
    const int32_t *sel;       /* [n][k] selected experts, by decreasing probability */
    const float *gates;       /* [n][k] weights applied to the selected experts' outputs */
    const int *offsets;       /* [E+1] rows of expert e in tok/y are offsets[e]..offsets[e+1]-1 */
    const int32_t *tok;       /* [n*k] token index (0..n-1) of each row */
    const float *y;           /* [n*k][d] each selected expert's output, before its gate */
    const float *routed_out;  /* [n][d] Σ gate·y over the selected experts (shared expert excluded) */
} moec_moe_view;

typedef void (*moec_moe_hook)(void *ctx, const moec_moe_view *v);

/* What a hook sees of one attention block: the inputs of its projections
 * (for quantizers that need each linear layer's input statistics). */
typedef struct moec_attn_view {
    int layer;
    int n;                    /* tokens in the batch */
    int d, qdim;              /* hidden size, heads·head_dim */
    const float *x;           /* [n][d] input of q/k/v projections (after the norm) */
    const float *att;         /* [n][qdim] input of o_proj */
} moec_attn_view;

typedef void (*moec_attn_hook)(void *ctx, const moec_attn_view *v);

moec_status moec_exec_new(moec_exec **out, const moec_model *m, const moec_exec_opts *opts, moec_err *err);
void moec_exec_free(moec_exec *ex);

/* Forgets the KV cache: the next forward starts at position 0. */
void moec_exec_reset(moec_exec *ex);
/* Drops cached tokens after the first pos (pos <= moec_exec_pos): lets
 * several continuations share one processed prefix. */
void moec_exec_truncate(moec_exec *ex, int pos);
/* Tokens in the cache (the position of the next token). */
int moec_exec_pos(const moec_exec *ex);
int moec_exec_max_ctx(const moec_exec *ex);
/* Length of a logits row. */
int moec_exec_vocab(const moec_exec *ex);
const moec_model *moec_exec_model(const moec_exec *ex);

/* Runs n tokens at positions pos..pos+n-1 and appends them to the cache.
 * logits (may be NULL): all_logits ? [n][vocab] : [vocab] of the last token.
 * Errors: a token id outside the vocabulary, the cache overflowing, a
 * non-finite logit (MOEC_ERR_NUMERIC). */
moec_status moec_exec_forward(moec_exec *ex, const int32_t *tokens, int n, float *logits, bool all_logits,
                              moec_err *err);

/* The same with logits for the tokens from logits_from on: logits (may be
 * NULL) receives [n - logits_from][vocab], the rows of positions
 * pos+logits_from .. pos+n-1. logits_from = 0 is the all_logits case,
 * n - 1 the last token's, n none. Tokens before logits_from skip the last
 * layer's feed-forward block (unless a MoE hook is set): nothing needs
 * their output, as in llama.cpp, which computes the last layer only for
 * the tokens whose logits are asked for. Errors as moec_exec_forward, and
 * MOEC_ERR_ARG for logits_from outside 0..n. */
moec_status moec_exec_forward_from(moec_exec *ex, const int32_t *tokens, int n, float *logits, int logits_from,
                                   moec_err *err);

/* The forward pass cut at layer boundaries, for running calibration windows
 * one layer at a time (lib/pipeline keeps their hidden states between
 * layers). The arithmetic is moec_exec_forward's: for a window of n tokens,
 * embed, then moec_exec_layer for layers 0, 1, ... on the same rows, then
 * moec_exec_head give bit for bit the residual stream and all-position
 * logits of moec_exec_forward(tokens, n) from an empty cache. Rows are
 * processed in chunks of MOEC_EXEC_CHUNK from the first row, as forward
 * does, so windows must be passed whole. Hooks see each layer as forward
 * shows them.
 *
 * moec_exec_embed: x [n][d] = the embedding rows of the tokens (checked
 * against the vocabulary).
 * moec_exec_layer: x [n][d], the residual stream entering `layer` at
 * positions pos..pos+n-1, is replaced by the stream leaving it; the layer's
 * KV cache entries below pos must come from earlier calls on the same
 * sequence (pos = 0 starts a sequence). Leaves moec_exec_pos at pos + n.
 * moec_exec_head: logits [n][vocab] of the final norm and lm_head over x;
 * MOEC_ERR_NUMERIC for a non-finite logit. */
moec_status moec_exec_embed(moec_exec *ex, const int32_t *tokens, int n, float *x, moec_err *err);
moec_status moec_exec_layer(moec_exec *ex, int layer, int pos, float *x, int n, moec_err *err);
moec_status moec_exec_head(moec_exec *ex, const float *x, int n, float *logits, moec_err *err);

/* Called for every MoE block during forward (NULL to remove). */
void moec_exec_set_moe_hook(moec_exec *ex, moec_moe_hook fn, void *ctx);

/* Called for every attention block after attention, before o_proj is applied. */
void moec_exec_set_attn_hook(moec_exec *ex, moec_attn_hook fn, void *ctx);

/* Per-operation time profile (nanoseconds summed over forwards) for moec-bench --profile. */
typedef enum {
    MOEC_OP_EMBED, MOEC_OP_NORM, MOEC_OP_QKV, MOEC_OP_ATTN, MOEC_OP_OPROJ, MOEC_OP_ROUTER,
    MOEC_OP_EXPERTS, MOEC_OP_SHARED, MOEC_OP_HEAD, MOEC_OP_COUNT
} moec_op;
const char *moec_op_name(moec_op op);
void moec_exec_profile(const moec_exec *ex, uint64_t ns[MOEC_OP_COUNT]);
/* Weight bytes the products of each op have read, summed over all forwards
 * since moec_exec_new (profiling or not): a decode step's bytes per token,
 * to hold against memory bandwidth. */
void moec_exec_profile_bytes(const moec_exec *ex, uint64_t bytes[MOEC_OP_COUNT]);
void moec_exec_profile_enable(moec_exec *ex, bool on);

#endif
