/* kmeans.h - grouping E experts into N clusters (Sub-MoE step 1).
 *
 * Sub-MoE (Li et al., arXiv 2506.23266) "adaptive expert clustering" groups
 * functionally coherent experts by K-means on the cosine similarity of their
 * outputs on calibration tokens, N groups per layer. What the caller passes:
 *
 *  - Preferred: the E x E matrix S of mean output cosine similarities from
 *    moec-calib, S_ij = mean_t cos(y_i(h_t), y_j(h_t)), to moec_kmeans_gram().
 *    S is the Gram matrix of the experts' per-token unit-normalised outputs
 *    stacked over tokens (scaled by 1/sqrt(T)), so kernel K-means on S is
 *    exactly K-means on those outputs: ||u_i - u_j||^2 = 2 - 2 S_ij. This
 *    clusters on output cosine similarity itself, with no T*d feature matrix.
 *  - Alternatively feature vectors [E][dim] to moec_kmeans_features(): the
 *    rows of S (methods.md's choice and what sklearn-on-S reimplementations
 *    do), or flattened outputs.
 *
 * Seeding, default MOEC_KMEANS_INIT_FREQ: the N most frequently routed
 * experts (count[e], largest first, ties to the lower index) are the initial
 * centres; Lloyd iterations then run to convergence. Deterministic, one run.
 * This is how we read the paper's clustering step, which uses activation
 * frequency to pick the cluster centres; only the paper's abstract could be
 * consulted while writing this, so the frequency seeding should be checked
 * against the full text. Setting max_iter = 1 stops after the first
 * assignment: every expert joins the most similar of the N most frequent
 * experts, the M-SMoE "dominant expert" grouping.
 * MOEC_KMEANS_INIT_PLUSPLUS (methods.md's choice) instead seeds with k-means++
 * from an internal PRNG (splitmix64, never rand()) started at opts.seed,
 * repeated opts.restarts times; the run with the lowest inertia is kept
 * (ties: the earlier restart). No BLAS and no threads: the same inputs and
 * seed give the same groups on every run.
 *
 * Where this departs from methods.md (which asks for k-means++ with restarts
 * on the rows of S): the default follows the paper as read above, seeding
 * from routing frequency, and the preferred input is S as a kernel rather
 * than its rows as features. methods.md's variant is one option away:
 * MOEC_KMEANS_INIT_PLUSPLUS with moec_kmeans_features() on the rows of S.
 *
 * Guarantees: every group is non-empty (an emptied group takes the point
 * farthest from its own centre, among groups of two or more; ties to the
 * lower index); N == E gives singletons; N == 1 gives one group. Ties in the
 * assignment step keep the current group, else go to the lower group index.
 * Groups are numbered by first appearance: expert 0 is in group 0, the first
 * expert not in group 0 is in group 1, and so on, so equal partitions always
 * produce equal arrays.
 *
 * The similarity matrix should be positive semi-definite (a mean of Gram
 * matrices is). If it is not, kernel K-means still ends, after max_iter
 * iterations at most, but the objective need not decrease monotonically.
 */
#ifndef MOEC_MERGE_KMEANS_H
#define MOEC_MERGE_KMEANS_H

#include <stdint.h>

#include "core/error.h"

typedef enum moec_kmeans_init {
    MOEC_KMEANS_INIT_FREQ = 0, /* most frequent experts as centres (paper; default) */
    MOEC_KMEANS_INIT_PLUSPLUS  /* k-means++ with restarts (methods.md choice) */
} moec_kmeans_init;

typedef struct moec_kmeans_opts {
    moec_kmeans_init init; /* default MOEC_KMEANS_INIT_FREQ */
    int restarts;          /* k-means++ runs, >= 1; default 8 (ignored by FREQ) */
    int max_iter;          /* assignment steps per run, >= 1; default 100 */
    uint64_t seed;         /* k-means++ PRNG seed; default MOEC_KMEANS_SEED */
} moec_kmeans_opts;

#define MOEC_KMEANS_SEED 0x6d6f6563u /* "moec" */
#define MOEC_KMEANS_OPTS_DEFAULT {MOEC_KMEANS_INIT_FREQ, 8, 100, MOEC_KMEANS_SEED}

typedef struct moec_kmeans_info {
    double inertia; /* sum of squared distances to the group means (kernel space) */
    int iterations; /* assignment steps of the kept run */
    int converged;  /* 1 if the kept run stopped because nothing moved */
    int restart;    /* index of the kept k-means++ run (0 for FREQ) */
} moec_kmeans_info;

/* Kernel K-means on a similarity (Gram) matrix gram[n][n], row-major; it is
 * symmetrised as (S + S^T) / 2 before use.
 *
 * n items into k groups, 1 <= k <= n. freq[n]: routing frequencies (counts or
 * normalised), required for MOEC_KMEANS_INIT_FREQ (finite, >= 0), unused and
 * may be NULL for k-means++. opts NULL means MOEC_KMEANS_OPTS_DEFAULT.
 * Outputs, caller-owned: assign[n] (group of each item, 0..k-1), sizes[k]
 * (members per group, all >= 1), info (may be NULL).
 * Errors: MOEC_ERR_ARG (sizes, k out of range, bad options, missing or bad
 * freq), MOEC_ERR_NUMERIC (NaN/Inf in gram, naming the entry),
 * MOEC_ERR_NOMEM. */
moec_status moec_kmeans_gram(const float *gram, int n, int k, const float *freq,
                             const moec_kmeans_opts *opts, int *assign, int *sizes,
                             moec_kmeans_info *info, moec_err *err);

/* Euclidean K-means on feature vectors x[n][dim], row-major. Same contract as
 * moec_kmeans_gram(); internally it is kernel K-means on x x^T (double),
 * which is the same algorithm. */
moec_status moec_kmeans_features(const float *x, int n, int dim, int k, const float *freq,
                                 const moec_kmeans_opts *opts, int *assign, int *sizes,
                                 moec_kmeans_info *info, moec_err *err);

#endif
