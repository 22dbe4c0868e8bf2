/* merge.h - merging a model's routed experts: E experts per MoE layer -> N.
 *
 * One entry point, moec_merge_model(), over per-layer steps (merge_layer.h,
 * the unit a layer-streaming pipeline calls):
 *
 *  1. Clustering (Sub-MoE's "adaptive expert clustering", the paper's
 *     Eqs. 2-3): kernel K-means on the E x E mean output-cosine matrix of a
 *     layer's experts (merge/kmeans.h), N groups; from calibration text the
 *     cosines are computed on a sample of each layer's inputs (cluster.h),
 *     else read from moec-calib statistics. Default seeding: the N most
 *     routed experts; k-means++ with restarts (the paper's) is an option.
 *     MOEC_MERGE_CLUSTER_JOINT2 is the paper's multi-layer adaptive
 *     allocation: two consecutive layers clustered together, each layer's
 *     count adapting while their sum is kept (cluster.h).
 *  2. Merge weights: each member's routing count (the paper's f(V_i)) or
 *     gate mass, normalised within the group (uniform if all are zero).
 *  3. A merged group's w1 (gate) and w3 (up), opts.features:
 *     - MOEC_MERGE_FEAT_METHOD, the method's own fold:
 *       MOEC_MERGE_SUBMOE (subspace.h): the members side by side,
 *       [W_a | W_b | ...], one SVD gives the group's shared basis U, rank r
 *       is kept (opts.rank or opts.energy), the members' V blocks are
 *       averaged with the merge weights: W_G = U_r S_r V_Gᵀ = U_r U_rᵀ Σ w_e W_e
 *       (the paper's Eqs. 5-8). At full rank this is exactly the weighted
 *       average. Sub-MoE† (opts.whiten, Eqs. 10-12) takes the SVD of the
 *       members whitened by their calibration inputs and maps back;
 *       MOEC_MERGE_AVERAGE (average.h): W_G = Σ w_e W_e;
 *     - MOEC_MERGE_FEAT_DOMINANT: the most weighted member's rows;
 *     - MOEC_MERGE_FEAT_NEURONS: the f neurons (a w1 row, the w3 row and the
 *       w2 column of one member) of all members that carry the most of the
 *       group's gated output energy on calibration tokens, Σ_t (g h_j)² ‖w2[:,j]‖².
 *       Experts trained apart share no neuron order, so blending neuron i of
 *       one with neuron i of another (what averaging and Sub-MoE do) mixes
 *       unrelated units; keeping whole neurons does not.
 *  4. Router row of a merged group: members' rows averaged with the merge
 *     weights, the dominant member's row, or (MOEC_MERGE_ROUTER_FIT) least
 *     squares over all calibration tokens on log Σ_{e∈G} exp(logit_e), so
 *     that the group's softmax probability is close to the sum of its
 *     members'. A group of one keeps its row byte for byte.
 *  5. w2 of a merged group: folded like w1/w3, or (opts.fit_down) solved by
 *     ridge least squares (fit.h) so that, with its merged w1/w3 and the
 *     gate the new router gives it, the merged expert reproduces
 *     Σ_{e∈G selected} g_e y_e, the group's share of the original layer
 *     output, on every calibration token routed to it.
 *  Arithmetic is float32 (sums in double); results are stored in the
 *  member's dtype (BF16 stays BF16), rounded to nearest, or as factors
 *  (opts.factored, model.h moec_factored) where the rank saves parameters.
 *  Groups become the new experts in order of first appearance, so N == E
 *  leaves every layer as it was, bit for bit.
 *
 * Defaults (MOEC_MERGE_OPTS_DEFAULT, moec-merge --method submoe with
 * calibration text), the best setting measured in docs/results/merging.md:
 * Sub-MoE's clustering with frequency seeding, neuron features, fitted
 * router rows and fitted w2 with ridge 0.3, layers calibrated in order on
 * the inputs the already merged layers produce. The paper's own merge is
 * features = MOEC_MERGE_FEAT_METHOD with the average router and no fit.
 *
 * When N falls below top_k (num_experts_per_tok), top_k is lowered to the
 * smallest N of any MoE layer and the report says so (top_k_after).
 *
 * Memory: merged experts are buffers owned by the new model (singletons
 * stay views into the source), so the new model holds N_merged * 3 expert
 * matrices until it is saved; one layer's calibration inputs (tokens x d
 * floats) and the similarity sample of every layer; per fit a double
 * f x f Gram matrix (1.6 GB for Mixtral-8x7B's f = 14336); the SVDs add
 * subspace.h's per-group peak per worker thread. Time: one pass of the
 * calibration windows through each layer (lib/pipeline keeps the hidden
 * states between layers). With opts.out_dir or opts.sink the layers are
 * merged on the layer-streaming pipeline and written as they are done, so
 * only one layer's merged matrices (and the source layer's pages) are held.
 */
#ifndef MOEC_MERGE_MERGE_H
#define MOEC_MERGE_MERGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calib/stats.h"
#include "core/error.h"
#include "merge/kmeans.h"
#include "merge/subspace.h"
#include "model/model.h"

typedef enum moec_merge_method {
    MOEC_MERGE_SUBMOE = 0, /* shared-basis joint SVD, truncated (Sub-MoE) */
    MOEC_MERGE_AVERAGE     /* frequency-weighted average (M-SMoE-style baseline) */
} moec_merge_method;

typedef enum moec_merge_weighting {
    MOEC_MERGE_WEIGHT_COUNT = 0, /* tokens routed to the expert (default, the paper's frequency) */
    MOEC_MERGE_WEIGHT_GATE       /* sum of the gates the expert received */
} moec_merge_weighting;

typedef enum moec_merge_router {
    MOEC_MERGE_ROUTER_AVERAGE = 0, /* merge-weighted average of the members' rows */
    MOEC_MERGE_ROUTER_DOMINANT,    /* the row of the member with the largest weight */
    MOEC_MERGE_ROUTER_FIT          /* least squares on log Σ_{e∈G} exp(logit_e) (needs calibration windows) */
} moec_merge_router;

/* Where a merged group's gate and up projections (w1, w3) come from. */
typedef enum moec_merge_features {
    MOEC_MERGE_FEAT_METHOD = 0, /* folded by the method: subspace (submoe) or average */
    MOEC_MERGE_FEAT_DOMINANT,   /* the most weighted member's rows, unchanged */
    MOEC_MERGE_FEAT_NEURONS     /* the f neurons (w1/w3 rows and w2 columns) of all members that carry the
                                   most of the group's gated output on calibration tokens (needs windows) */
} moec_merge_features;

/* How experts are grouped. */
typedef enum moec_merge_clustering {
    MOEC_MERGE_CLUSTER_LAYER = 0, /* kernel K-means on each layer's output cosines, N groups per layer */
    MOEC_MERGE_CLUSTER_JOINT2     /* the paper's multi-layer adaptive allocation: the experts of two
                                     consecutive layers clustered together (cosines across layers on the
                                     same tokens), 2N clusters per pair, so each layer's count adapts
                                     (needs calibration windows; see merge/cluster_joint.h) */
} moec_merge_clustering;

struct moec_merge_windows; /* merge/acts.h */

typedef void (*moec_merge_progress)(void *ctx, int done, int total);

typedef struct moec_merge_opts {
    moec_merge_method method;        /* default MOEC_MERGE_SUBMOE */
    int keep;                        /* experts per MoE layer after merging, 1..E; 0: use ratio */
    double ratio;                    /* when keep == 0: fraction of experts removed, 0 < ratio < 1,
                                        N = E - round(ratio * E) (as moec-prune; 0.25 keeps 6 of 8) */
    int rank;                        /* submoe: rank kept per group and weight kind, > 0; 0: use energy */
    double energy;                   /* submoe, when rank == 0: retained energy in (0, 1] */
    moec_svd_precision precision;    /* submoe: sgesdd (default) or dgesdd */
    moec_merge_weighting weighting;  /* default MOEC_MERGE_WEIGHT_COUNT */
    moec_merge_router router;        /* router row of a merged group */
    moec_kmeans_opts kmeans;         /* default MOEC_KMEANS_OPTS_DEFAULT (frequency seeding) */
    int threads;                     /* matrices folded in parallel, >= 1; default 1. Above 1 a
                                        moec_pool is used, which sets OpenBLAS to one thread for
                                        the process (core/threadpool.h) */
    moec_merge_progress progress;    /* may be NULL; called after each folded matrix, */
    void *progress_ctx;              /* from one thread at a time */

    /* ---- calibration activations (merge/acts.h): what the paper's
     * Sub-MoE† and clustering and the output fits below need ---- */
    const struct moec_merge_windows *windows; /* calibration token windows, or NULL (statistics only) */
    bool whiten;                     /* submoe: Sub-MoE†, activation-aware truncation (subspace.h) */
    bool factored;                   /* submoe: store a merged matrix as its factors U_r and U_rᵀ W_G
                                        (model.h moec_factored) where rank·(rows+cols) < rows·cols */
    moec_merge_features features;    /* w1/w3 of a merged group */
    bool fit_down;                   /* w2 of a merged group by least squares on the group's gate-weighted
                                        output given its merged w1/w3 and new gates (fit.h) */
    bool fit_all;                    /* with fit_down: also refit w2 of experts left alone, whose tokens and
                                        gates the merge changed, in a layer where a group merged (default off:
                                        one more p x p fit per such expert, p the FFN width, for a gain only
                                        on fine-grained experts in docs/results/merging.md) */
    double ridge;                    /* relative ridge of every fit (fit.h); default 0.3 */
    moec_merge_clustering clustering;
    bool sequential;                 /* each layer calibrated on the inputs the already merged layers
                                        before it produce (GPTQ's order); else on the original model's */
    int sim_tokens;                  /* with windows: tokens per layer for the output cosines that
                                        clustering reads (default 4096) */

    /* ---- streaming output (lib/pipeline): each layer written and released
     * as soon as it is merged, so *out keeps no layer tensors ---- */
    const char *out_dir;             /* an HF directory made here (shapes declared up front; not with factored) */
    size_t shard_bytes;              /* with out_dir: shards above this size, 0 = one file */
    bool overwrite;                  /* with out_dir: replace an existing model directory */
    struct moec_model_sink *sink;    /* or the caller's sink (e.g. a .moec file, model_sink.h), which the caller
                                        finishes with the merged model and its report */
    const struct moec_quant_opts *quant; /* RTN of each merged layer's routed experts, factors included, before
                                        it is written (merge_quant.h), or NULL */
    struct moec_merge_quant_report *quant_rep; /* with quant: what was quantized (may be NULL) */
} moec_merge_opts;

/* keep and ratio are unset: the caller must choose how many experts remain.
 * The other fields are moec-merge --method submoe's defaults (the best
 * setting measured in docs/results/merging.md); they need calibration
 * windows: without them, choose features METHOD, router AVERAGE and no fits. */
#define MOEC_MERGE_OPTS_DEFAULT                                                                              \
    ((moec_merge_opts){.method = MOEC_MERGE_SUBMOE, .energy = 1.0, .precision = MOEC_SVD_FLOAT,              \
                       .weighting = MOEC_MERGE_WEIGHT_COUNT, .router = MOEC_MERGE_ROUTER_FIT,                 \
                       .kmeans = MOEC_KMEANS_OPTS_DEFAULT, .threads = 1, .features = MOEC_MERGE_FEAT_NEURONS, \
                       .fit_down = true, .ridge = 0.3, .clustering = MOEC_MERGE_CLUSTER_LAYER,               \
                       .sequential = true, .sim_tokens = 4096})

/* The three expert matrices, in the order reports list them. */
enum { MOEC_MERGE_W1 = 0, MOEC_MERGE_W3, MOEC_MERGE_W2, MOEC_MERGE_KINDS };
const char *moec_merge_kind_name(int kind); /* "w1", "w3", "w2" */
const char *moec_merge_method_name(moec_merge_method m); /* "submoe", "average" */

/* One weight kind of one group. */
typedef struct moec_merge_kind {
    int rows, cols;            /* shape of the matrix */
    int rank;                  /* submoe: singular vectors kept; 0 otherwise */
    int max_rank;              /* submoe: singular values of the concatenation */
    double energy;             /* submoe: fraction of the squared singular values kept */
    int64_t factored_params;   /* submoe merged group: rank * (rows + cols); otherwise rows * cols */
    double *recon_err;         /* [n_members] submoe: ||W_e - U_r S_r V_e^T||_F / ||W_e||_F; else NULL */
    double *merged_err;        /* [n_members] ||W_G - W_e||_F / ||W_e||_F before rounding to the stored
                                  dtype; NULL for a singleton */
    bool factored;             /* stored as two factors (opts.factored) */
    bool fitted;               /* w2 solved by least squares (opts.fit_down) */
    int64_t fit_tokens;        /* fitted: calibration tokens the merged expert was selected for */
} moec_merge_kind;

typedef struct moec_merge_group {
    int n_members;
    int *members;              /* [n_members] original expert indices, ascending */
    double *weights;           /* [n_members] normalised merge weights */
    int uniform_weights;       /* 1 when every member's frequency was zero */
    moec_merge_kind kind[MOEC_MERGE_KINDS];
} moec_merge_group;

typedef struct moec_merge_layer {
    int layer;                 /* index in the model */
    int n_before, n_after;     /* E, N */
    int *assign;               /* [n_before] new expert (group) of each original expert */
    moec_merge_group *groups;  /* [n_after] */
    double inertia;            /* K-means objective of the kept clustering */
    int iterations;
    int converged;
    /* with calibration windows, measured on this layer's calibration inputs
     * (the first 8192 tokens) with the weights as stored (NaN without windows) */
    int64_t tokens;            /* tokens measured */
    double out_err;            /* Σ‖y_merged − y‖² / Σ‖y‖², y the routed experts' gated sum */
    double top1_agree;         /* tokens whose top-1 group holds the original top-1 expert */
} moec_merge_layer;

typedef struct moec_merge_report {
    moec_merge_method method;
    int n_layers;              /* MoE layers, in model order */
    moec_merge_layer *layers;  /* [n_layers] */
    int top_k_before, top_k_after;
    int64_t params_before;     /* whole model, dense */
    int64_t params_after;      /* whole model as written: merged experts dense */
    int64_t params_factored;   /* params_after with every merged submoe matrix stored as U_r and
                                  S_r V_G^T (smaller only where rank * (rows + cols) < rows * cols) */
    uint64_t bytes_after;      /* moec_model_bytes of the result: as stored (factors where factored) */
    int64_t calib_tokens;      /* tokens in the calibration windows (0 without) */
    double seconds_calib;      /* forward passes over the calibration windows */
    double seconds_cluster;    /* clustering and weights */
    double seconds_merge;      /* laying out the new model and folding the matrices */
    double seconds;            /* the whole call */
} moec_merge_report;

/* Frees what a report points to (not the struct) and zeroes it. */
void moec_merge_report_free(moec_merge_report *r);

/* Merges src's routed experts into N per MoE layer, as described above.
 *
 * src: an opened model whose experts are F32, F16 or BF16 (not modified; it
 * must outlive *out, whose unchanged tensors are views into it). stats:
 * calibration statistics of src (moec_stats_check must pass) with the
 * expert-output similarities (moec-calib --sim-tokens > 0) for every layer
 * that loses experts. o: NULL is not accepted, since keep or ratio must be
 * chosen; start from MOEC_MERGE_OPTS_DEFAULT. On success *out is a new
 * model (moec_model_close; save it with moec_model_save_hf, which writes the
 * new expert counts and top_k into config.json) and rep, if not NULL, is
 * filled (moec_merge_report_free).
 *
 * Errors: MOEC_ERR_ARG (options, keep beyond a layer's experts, a ratio
 * that removes every expert of a layer, statistics
 * without similarities), MOEC_ERR_MISMATCH (statistics of another model),
 * MOEC_ERR_UNSUPPORTED (quantized experts), MOEC_ERR_SHAPE (an expert or the
 * router not of the config's shape), MOEC_ERR_NUMERIC (NaN/Inf in a member,
 * an SVD that failed), MOEC_ERR_NOMEM. Messages name the layer, the group's
 * experts and the matrix. */
moec_status moec_merge_model(const moec_model *src, const moec_stats *stats, const moec_merge_opts *o,
                             moec_model **out, moec_merge_report *rep, moec_err *err);

#endif
