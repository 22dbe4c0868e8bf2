/* recipe.h - quantizing a whole MoE model: the library entry point behind
 * moec-quant.
 *
 * What is quantized (group-wise, core/qformat.h):
 *  - every routed expert's w1/w3/w2, at `bits`, or at a per-expert width
 *    chosen under an average-bit budget (MC-MoE, or an importance-blind
 *    "uniform" split for comparison);
 *  - the shared expert (Qwen2-MoE) at `bits`; dense MLP layers at `bits`
 *    by RTN (the executor has no hook on dense blocks to calibrate them);
 *  - with `attn`, q/k/v/o projections at attn_bits;
 *  - with embed_bits, the embedding and lm_head by RTN in groups of
 *    embed_group (as the llama.cpp-style baselines do).
 * Norms, routers, the shared-expert gate and biases stay in high precision.
 *
 * Methods. RTN (quant/rtn.h) needs no calibration. GPTQ (quant/gptq.h) is
 * run layer by layer, as the GPTQ reference does: the Hessians of layer L
 * are built from calibration tokens run through the model whose layers
 * before L (and, within layer L, the projections quantized before) are
 * already quantized. The model is walked on the layer-streaming pipeline
 * (lib/pipeline): the calibration windows' hidden states are kept at the
 * current layer's input, so a pass runs that one layer, and after the
 * layer is done they move on through it. The passes use a working model
 * whose quantized weights are views of the output's packed tensors, run
 * by the executor's quantized kernels (quant_hessians.c documents every
 * pass). Per layer:
 *   A  (attn + GPTQ)  Σ xxᵀ of the q/k/v input and Σ aaᵀ of the o_proj input
 *                     (o_proj's from the same pass: q/k/v of that layer are
 *                     still full precision then, as in the textbook GPTQ);
 *   MoE blocks without EAQuant smoothing or MC-MoE (quant_experts.c): one
 *                     pass records the block's inputs and routing, then each
 *                     expert in turn gets Σ xxᵀ over its routed tokens (plus
 *                     EAQuant calibration balance tokens), w1/w3, Σ uuᵀ of
 *                     u = silu(Ŵ1 x) ⊙ (Ŵ3 x) through its quantized W1/W3,
 *                     w2; the shared expert the same over all tokens;
 *   MoE blocks with smoothing or MC-MoE (quant_moe.c), whose choices need
 *                     every expert of the layer at once:
 *   M1 (experts)      per expert Σ xxᵀ over its routed tokens, plus EAQuant
 *                     calibration balance tokens; the shared expert's over
 *                     all tokens; channel maxima and a token sample for
 *                     EAQuant; with MC-MoE the W2 Hessian of the
 *                     full-precision intermediate (for the ε candidates);
 *   M2 (MC-MoE)       ε[e][b] = Σ over e's routed tokens of ‖y_e − ŷ_e,b‖²;
 *   M3 (GPTQ)         per expert Σ uuᵀ of u = silu(Ŵ1 x) ⊙ (Ŵ3 x) computed
 *                     with the already quantized W1/W3, for W2.
 * Both MoE paths give the same tensors where both apply. The "verify"
 * comparison of the quantized working model with the original on
 * calibration windows (KL, top-1, per-layer routing agreement and block
 * output error) runs layer by layer beside them (quant_verify.c).
 *
 * Memory (moec_quant_model_to streaming into a container): the source
 * layer being read (each expert's pages released once it is done), the
 * calibration hidden states (tokens x hidden floats, twice with verify)
 * and one layer's recorded block inputs, the layer's packed output until
 * it is written, and per worker one expert's float weights and Hessians,
 * each factored in its own memory (Mixtral-8x7B's W2: one 14336² double
 * matrix, 1.6 GB, per worker). The smoothing / MC-MoE path holds the
 * layer's Hessians in double (E·(d² + f²): about 13 GB for a Mixtral-8x7B
 * layer) and float copies of its experts.
 *
 * GPTQ: damping 1% of the mean Hessian diagonal (retried x10 on failure,
 * reported), blocks of 128, optional act-order, groups in column order.
 * An expert with fewer than gptq_min_tokens calibration rows (after the
 * balance) is quantized by RTN instead, and the report says so.
 *
 * EAQuant (eaquant.h): smoothing aggregation with the α and clipping
 * chosen per layer by grid search on block output error + λ·router KL;
 * calibration balance. Activation quantization (act_bits) is the
 * executor's (exec.h); the recipe calibrates with it on and records it.
 */
#ifndef MOEC_QUANT_RECIPE_H
#define MOEC_QUANT_RECIPE_H

#include <stdbool.h>
#include <stdint.h>

#include "calib/stats.h"
#include "core/error.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

struct cJSON;
struct moec_gplan; /* quant/gguf_presets.h */

typedef enum moec_qmethod { MOEC_QMETHOD_RTN = 0, MOEC_QMETHOD_GPTQ } moec_qmethod;

/* How routed experts get their widths when avg_bits > 0. */
typedef enum moec_qalloc {
    MOEC_QALLOC_UNIFORM = 0, /* importance-blind: every expert floor(A) bits (largest choice <= A), then
                                experts 0, 1, ... of each layer raised to the next choice while the layer's
                                budget floor(A·E) allows */
    MOEC_QALLOC_MCMOE        /* MC-MoE integer program (bit_alloc.h), budget per layer */
} moec_qalloc;

/* MC-MoE's objective over the measured loss table (quant_mcmoe.c). */
typedef enum moec_mc_objective {
    MOEC_MC_OUTPUT = 0, /* Σ of each expert's squared block output change: the layer's output error */
    MOEC_MC_PAPER       /* the reference code's φ^α·w^β·‖output change‖^α */
} moec_mc_objective;

typedef struct moec_mc_params {
    moec_mc_objective objective; /* default OUTPUT */
    double alpha, beta;          /* PAPER's exponents, default 1 and 1.5 (reference code) */
    bool diversity;              /* the paper's rows: >= 1 expert per layer at each of the two widest
                                    choices; default false (they cost more than they give here) */
} moec_mc_params;

#define MOEC_MC_PARAMS_DEFAULT ((moec_mc_params){.objective = MOEC_MC_OUTPUT, .alpha = 1.0, .beta = 1.5})

#define MOEC_QUANT_MAX_CHOICES 8

typedef struct moec_quant_recipe {
    moec_qmethod method;      /* RTN (default) or GPTQ */
    int bits;                 /* experts (uniform), shared expert, dense MLPs: 1..8; default 4 */
    int group;                /* columns per group; 0 = whole row; default 128 */
    bool symmetric;           /* default false (scale + zero point) */
    int clip_grid;            /* per-group clipping search (rtn.h), 0 = off; default 0 */
    bool act_order;           /* GPTQ act-order; default false */
    double percdamp;          /* GPTQ damping fraction; default 0.01 */
    int gptq_min_tokens;      /* experts with fewer calibration rows fall back to RTN; default 32 */

    bool attn;                /* quantize q/k/v/o; default false */
    int attn_bits;            /* 0 = bits */
    int embed_bits;           /* 0 = keep embeddings and head; else RTN at this width */
    int embed_group;          /* default 64 */

    double avg_bits;          /* 0 = uniform `bits`; else the per-layer average code bits of routed experts */
    int n_choices;            /* candidate widths for avg_bits, strictly increasing */
    int choices[MOEC_QUANT_MAX_CHOICES]; /* default 1,2,3,4 */
    moec_qalloc alloc;        /* default MCMOE */
    moec_mc_params mc;        /* MC-MoE's objective (with alloc = MCMOE) */

    bool smooth;              /* EAQuant smoothing aggregation (needs calibration tokens) */
    bool align;               /* choose α and clipping by block error + λ·KL (needs smooth) */
    bool balance;             /* EAQuant expert-level calibration balance for GPTQ's Hessians; default true */
    int balance_min;          /* M; 0 = the hidden size d (enough tokens for a full-rank d×d Hessian) */
    double align_lambda;      /* λ; default 1 */
    int align_sample;         /* tokens per layer kept for the grid search; default 1024 */
    float smooth_alpha;       /* α when align is off; default 0.5 (SmoothQuant) */

    int act_bits;             /* 0 = off; else the executor's activation quantization during calibration;
                                 recorded in the report for evaluation */
    int64_t verify_tokens;    /* calibration tokens in the final comparison; 0 = skip; default 8192 */
    int threads;              /* default 1 */

    /* llama.cpp block types per tensor (--grid, --preset; quant/gguf_presets.h), or NULL. A tensor
     * the plan gives a type is quantized on that type's grid (quant/kquant_grid.h: GPTQ with the
     * recipe's method and calibration, else round-to-nearest) and stored as its blocks; the plan
     * also decides the embeddings and head (embed_bits is then ignored). Not with avg_bits: a
     * layer's experts share one type in llama.cpp. The plan must outlive the call. */
    const struct moec_gplan *gplan;
} moec_quant_recipe;

#define MOEC_QUANT_RECIPE_DEFAULT \
    ((moec_quant_recipe){.method = MOEC_QMETHOD_RTN, .bits = 4, .group = 128, .percdamp = 0.01, \
                         .gptq_min_tokens = 32, .embed_group = 64, .n_choices = 4, .choices = {1, 2, 3, 4}, \
                         .alloc = MOEC_QALLOC_MCMOE, .mc = MOEC_MC_PARAMS_DEFAULT, .balance = true, \
                         .align_lambda = 1.0, \
                         .align_sample = 1024, .smooth_alpha = 0.5f, .verify_tokens = 8192, .threads = 1})

/* Calibration data: token windows, each run from an empty cache, and/or
 * routing statistics from moec-calib. Windows are needed by GPTQ, EAQuant
 * and MC-MoE's measured ε; with statistics only, MC-MoE uses the relative
 * weight error ‖W − Ŵ‖²/‖W‖² (summed over w1/w3/w2) as ε and the
 * statistics' count / gate_sum as importance. */
typedef struct moec_quant_calib {
    const int32_t *ids;       /* every window's tokens back to back, or NULL */
    const int *window_len;    /* [n_windows] */
    int n_windows;
    const moec_stats *stats;  /* used when ids is NULL; may be NULL */
} moec_quant_calib;

/* Windows of ctx tokens from text files (each tokenized whole, no special
 * tokens): each file contributes max_tokens / n_files tokens (0: all of
 * it) as whole windows spread evenly through the file, and the windows are
 * ordered round-robin over the files so any prefix covers every file.
 * *ids and *window_len are malloc'd (free both). */
moec_status moec_quant_windows_from_text(const moec_tokenizer *tok, const char *const *files, int n_files,
                                         int ctx, int64_t max_tokens, int32_t **ids, int **window_len,
                                         int *n_windows, moec_err *err);

typedef struct moec_quant_layer_report {
    int n_experts;          /* 0 for a dense layer */
    int *bits;              /* [E] code width of each routed expert */
    int64_t *tokens;        /* [E] routed calibration rows (M1 pass; 0 without windows) */
    int64_t *extra;         /* [E] EAQuant balance rows added */
    int64_t *near_miss;     /* [E] tokens where the expert ranked just outside the top-k (balance candidates) */
    bool *rtn_fallback;     /* [E] GPTQ fell back to RTN (too few rows or no positive-definite Hessian) */
    double *eps;            /* [E][n_choices] MC-MoE ε, NULL unless mcmoe */
    double smooth_alpha;    /* α used, -1 = no smoothing in this layer */
    bool clip;              /* per-group clipping search used for the experts */
    double align_err[2];    /* grid search, relative block output error on the sample: [0] no smoothing, [1] chosen */
    double align_kl[2];     /* router KL on the sample (act-quantized router input; 0 when act_bits = 0) */
    double align_agree[2];  /* top-k set agreement of that router with the original */
    double block_err;       /* verify: Σ‖moe_q − moe_fp‖² / Σ‖moe_fp‖² on the quantized model's inputs; NaN = not measured */
    double router_agree;    /* verify: fraction of tokens whose top-k set equals the original model's */
    int gptq_retries;       /* damping retries in this layer */
} moec_quant_layer_report;

typedef struct moec_quant_report {
    int n_layers;
    moec_quant_layer_report *layers; /* [n_layers] */
    double avg_expert_bits;  /* mean code width over routed experts (the MC-MoE budget quantity) */
    int64_t quant_params;    /* weights in quantized tensors */
    uint64_t quant_bytes;    /* their codes + scales + zeros */
    double quant_bpw;        /* 8 · quant_bytes / quant_params */
    double quant_code_bits;  /* parameter-weighted mean code width of the quantized tensors */
    int64_t model_params;    /* all parameters (tied head once) */
    uint64_t model_bytes;    /* bytes of all tensors of the result (before container compression) */
    int64_t calib_tokens;    /* tokens in the calibration windows */
    int passes;              /* forward passes over the calibration windows */
    int rtn_fallbacks;       /* experts quantized by RTN under a GPTQ recipe */
    int balance_min;         /* the balance's M in effect (0: no balance) */
    int64_t verify_tokens;   /* tokens compared in the verify pass (0: not run) */
    double verify_kld;       /* mean KL(original ‖ quantized) over those positions, nats */
    double verify_top1;      /* top-1 agreement */
    double seconds;
    int n_notes;
    char **notes;            /* one line each, e.g. RTN fallbacks, dropped constraints */
} moec_quant_report;

typedef void (*moec_quant_progress)(void *ctx, const char *stage, int layer, int n_layers);

/* Quantizes src by recipe r with calibration cal. On success *out is a new
 * model derived from src (moec_model_derive: its unquantized tensors still
 * view src's storage, so src must outlive it; close it with
 * moec_model_close) whose quantized tensors are MOEC_DT_QUANT owning their
 * buffers, and whose smoothed norms / routers (EAQuant) are owned F32
 * tensors; *rep is filled (moec_quant_report_free). progress may be NULL.
 * Errors: MOEC_ERR_ARG for bad options, a recipe needing calibration
 * windows without them, or src tensors that are already quantized; the
 * executor's and quantizers' errors, prefixed with the layer. */
moec_status moec_quant_model(const moec_model *src, const moec_quant_calib *cal, const moec_quant_recipe *r,
                             moec_model **out, moec_quant_report *rep, moec_quant_progress progress,
                             void *progress_ctx, moec_err *err);

/* The same, streamed: the model is quantized one layer at a time on the
 * layer-streaming pipeline (lib/pipeline), and each finished part goes to
 * sink (model_sink.h, e.g. a .moec container) and leaves memory, with the
 * source's pages of the part, so a checkpoint larger than memory can be
 * quantized. *out then holds the config, tokenizer and side files but no
 * tensors of the layers; finish the sink with it and the report
 * (moec_model_sink_finish). With sink NULL this is moec_quant_model. */
struct moec_model_sink;
moec_status moec_quant_model_to(const moec_model *src, const moec_quant_calib *cal, const moec_quant_recipe *r,
                                struct moec_model_sink *sink, moec_model **out, moec_quant_report *rep,
                                moec_quant_progress progress, void *progress_ctx, moec_err *err);

/* Checks a recipe's ranges and combinations; `cal_has_windows` says whether
 * calibration tokens will be given. */
moec_status moec_quant_recipe_check(const moec_quant_recipe *r, bool cal_has_windows, moec_err *err);

void moec_quant_report_free(moec_quant_report *rep);

/* The report as a JSON object (recipe included) for --json and the
 * container; NULL when out of memory. Free with cJSON_Delete. */
struct cJSON *moec_quant_report_json(const moec_quant_report *rep, const moec_quant_recipe *r);

/* Per-layer width choice for E routed experts under an average of avg_bits
 * code bits (budget floor(avg_bits·E)) from widths choices[n_choices]:
 *  UNIFORM: see moec_qalloc (mc, count, gate_sum and eps unused, may be NULL);
 *  MCMOE:   moec_bitalloc_solve over ε = eps[E][n_choices] as mc->objective
 *           says (quant_mcmoe.c), with φ = count and w = gate_sum (shares
 *           within the layer) where it uses them; eps_measured tells whether
 *           ε is the measured block output change (calibration windows) or
 *           the relative weight error (statistics only).
 * Writes out_bits[E]. Errors: a budget below the narrowest choice, bad
 * arguments, GLPK failure. */
moec_status moec_quant_alloc_bits(moec_qalloc alloc, const moec_mc_params *mc, int E, const double *count,
                                  const double *gate_sum, const double *eps, bool eps_measured, const int *choices,
                                  int n_choices, double avg_bits, int *out_bits, moec_err *err);

#endif
