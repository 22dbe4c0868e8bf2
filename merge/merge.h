/* merge.h - merging a model's routed experts: E experts per MoE layer -> N.
 *
 * One entry point, moec_merge_model(), for two methods that share every step
 * but the one that folds a group of experts into one:
 *
 *  1. Clustering (Sub-MoE "adaptive expert clustering", merge/kmeans.h):
 *     kernel K-means on the layer's E x E mean output-cosine matrix out_cos
 *     from calibration, N groups. Default seeding: the N most frequently
 *     routed experts (count) are the initial centres, then Lloyd iterations;
 *     k-means++ with restarts is an option (opts.kmeans).
 *  2. Merge weights: each member's routing frequency, count[e] (the paper's
 *     f(V_i), the share of tokens whose top-k holds e) or, as an option, its
 *     gate mass gate_sum[e]; normalised within the group. A group whose
 *     members were never routed gets uniform weights (reported).
 *  3. Folding each group's W1 (gate), W3 (up) and W2 (down):
 *     - MOEC_MERGE_SUBMOE (merge/subspace.h): the members are concatenated
 *       along their input axis, [W_a | W_b | ...], one SVD gives a basis U
 *       shared by the whole group, rank r is kept (opts.rank, or the smallest
 *       r reaching opts.energy), the members' V blocks are averaged with the
 *       merge weights and W_G = U_r S_r V_G^T. W_G equals U_r U_r^T of the
 *       weighted average, so at full rank Sub-MoE is `average` exactly and
 *       the truncation is what makes it differ (see subspace.h).
 *       Against the paper: its basic merge (a third-party summary of the
 *       full text was all we could read) reconstructs with the full U S,
 *       i.e. energy 1 here; truncation appears with its "intra-expert
 *       compression" variant, which also rescales each member by an
 *       activation-aware matrix S_i before the SVD (SVD-LLM style). That
 *       rescaling is not implemented. Default energy 0.99: the closest
 *       truncation to the average that still truncates, and the best of
 *       those measured in docs/results/merging.md.
 *     - MOEC_MERGE_AVERAGE (merge/average.h): W_G = sum_e w_e W_e.
 *     Arithmetic is float32 (sums in double); the result is stored in the
 *     dtype the member's tensor had (BF16 stays BF16), rounded to nearest.
 *     A group of one expert is not touched: its views are kept as they are.
 *  4. Router: one row per group, [N][d], in the router's dtype:
 *     MOEC_MERGE_ROUTER_AVERAGE (default) the members' rows averaged with the
 *     same merge weights as the experts; MOEC_MERGE_ROUTER_DOMINANT the row
 *     of the member with the largest merge weight (M-SMoE's "dominant
 *     expert"). The Sub-MoE paper's full text could not be consulted for
 *     its router rule (methods.md leaves it a choice); averaging the rows is
 *     the linear counterpart of averaging the experts. A singleton group
 *     keeps its row byte for byte.
 *  Groups become the new experts in order of first appearance (the group of
 *  expert 0 first), so N == E leaves every layer exactly as it was.
 *
 * When N falls below top_k (num_experts_per_tok), top_k is lowered to the
 * smallest N of any MoE layer and the report says so (top_k_after).
 *
 * Memory: merged experts are buffers owned by the new model (singletons
 * stay views into the source), so the new model holds N_merged * 3 expert
 * matrices until it is saved; the SVDs add subspace.h's per-group peak per
 * worker thread. With opts.out_dir the layers are folded on the
 * layer-streaming pipeline and written as they are done, so only one
 * layer's merged matrices (and the source layer's pages) are held.
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
    MOEC_MERGE_ROUTER_AVERAGE = 0, /* merge-weighted average of the members' rows (default) */
    MOEC_MERGE_ROUTER_DOMINANT     /* the row of the member with the largest weight */
} moec_merge_router;

typedef void (*moec_merge_progress)(void *ctx, int done, int total);

typedef struct moec_merge_opts {
    moec_merge_method method;        /* default MOEC_MERGE_SUBMOE */
    int keep;                        /* experts per MoE layer after merging, 1..E; 0: use ratio */
    double ratio;                    /* when keep == 0: fraction of experts removed, 0 < ratio < 1,
                                        N = E - round(ratio * E) (as moec-prune; 0.25 keeps 6 of 8) */
    int rank;                        /* submoe: rank kept per group and weight kind, > 0; 0: use energy */
    double energy;                   /* submoe, when rank == 0: retained energy in (0, 1]; default 0.99 */
    moec_svd_precision precision;    /* submoe: sgesdd (default) or dgesdd */
    moec_merge_weighting weighting;  /* default MOEC_MERGE_WEIGHT_COUNT */
    moec_merge_router router;        /* default MOEC_MERGE_ROUTER_AVERAGE */
    moec_kmeans_opts kmeans;         /* default MOEC_KMEANS_OPTS_DEFAULT (frequency seeding) */
    int threads;                     /* matrices folded in parallel, >= 1; default 1. Above 1 a
                                        moec_pool is used, which sets OpenBLAS to one thread for
                                        the process (core/threadpool.h) */
    moec_merge_progress progress;    /* may be NULL; called after each folded matrix, */
    void *progress_ctx;              /* from one thread at a time */
    const char *out_dir;             /* NULL: the result stays in memory (default); else the HF directory
                                        written layer by layer as it is built (lib/pipeline): each layer is
                                        folded, written and released before the next, and *out keeps no
                                        layer tensors */
    size_t shard_bytes;              /* with out_dir: shards above this size, 0 = one file */
    bool overwrite;                  /* with out_dir: replace an existing model directory */
} moec_merge_opts;

/* keep and ratio are unset: the caller must choose how many experts remain.
 * Truncation default (submoe): energy 0.99, see docs/results/merging.md. */
#define MOEC_MERGE_OPTS_DEFAULT                                                                            \
    {MOEC_MERGE_SUBMOE, 0, 0.0, 0, 0.99, MOEC_SVD_FLOAT, MOEC_MERGE_WEIGHT_COUNT, MOEC_MERGE_ROUTER_AVERAGE, \
     MOEC_KMEANS_OPTS_DEFAULT, 1, NULL, NULL, NULL, 0, false}

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
