/* subspace.h - Sub-MoE subspace merging of one expert group, one weight kind.
 *
 * Sub-MoE (Li et al., arXiv 2506.23266), steps 2-4 of methods.md:
 *  - Experts union decomposition: the m members of a group are concatenated
 *    so that they share one factor, and one SVD is taken:
 *      [W_1 | W_2 | ... | W_m] = U S [V_1^T | V_2^T | ... | V_m^T]
 *    ([rows][m*cols]; U is shared, V_e is expert e's block of V).
 *  - Truncation to rank r, given directly or as the smallest r whose energy
 *    sum_{i<r} s_i^2 / sum_i s_i^2 reaches a fraction.
 *  - Frequency-based V merging: V_G = sum_e w_e V_e, w normalised in the group.
 *  - Reconstruction: W_G = U_r S_r V_G^T, [rows][cols].
 *
 * Which side is shared, per kind (HF layout, weights are [out][in]):
 *   MOEC_SHARE_LEFT concatenates columns, [rows][m*cols], so U spans the
 *   output (row) space. Use it for all three kinds, as the paper shares U:
 *   W1 gate [f][d] and W3 up [f][d] share a basis of the f-dim intermediate
 *   space; W2 down [d][f] is concatenated along f, [d][m*f], so U spans the
 *   d-dim hidden output space every member writes into. (A public shared-U
 *   experiment from the authors' group, github.com/Chooovy/MoE_Merge,
 *   concatenates w1, w2 and w3 alike along the input axis, which is this.)
 *   MOEC_SHARE_RIGHT stacks rows instead, [m*rows][cols] =
 *   [U_1; ...; U_m] S V^T, shares the input basis V and merges U_G = sum w_e U_e;
 *   it is there for experiments, not for the paper's method.
 *
 * How it is computed, and what it means. Since U^T [W_1 | ... | W_m] = S V^T,
 * block by block S_r V_e^T = U_r^T W_e, so
 *     W_G = U_r U_r^T (sum_e w_e W_e),
 * the frequency-weighted average projected onto the group's top-r shared
 * output subspace (RIGHT: W_avg V_r V_r^T). This file forms S_r V_e^T as
 * U_r^T W_e rather than reading V from the SVD, which is the same number up to
 * rounding and lets the SVD discard V (jobz = 'O' overwrites it onto its
 * input), halving the largest allocation. A consequence worth knowing: at
 * full rank U_r U_r^T fixes every member's columns, so W_G equals the
 * frequency-weighted average exactly; Sub-MoE differs from `average` only
 * through the truncation. For that reason the default options leave the
 * truncation unset and the call fails until rank or energy is chosen.
 *
 * Numerics: the SVD is LAPACK gesdd on a copy of the concatenation (float
 * sgesdd by default, double dgesdd on request), workspace from a size query.
 * Row-major data is handed to LAPACK as its column-major transpose, so
 * nothing is transposed or copied twice. Member errors
 * ||W_e - U_r S_r V_e^T||_F / ||W_e||_F are formed from explicit residuals,
 * summed in double.
 *
 * Peak memory, float, LEFT (RIGHT: swap rows and cols in the SVD terms):
 *   A      4 * rows * m*cols       concatenation, overwritten by the SVD
 *   Q      4 * mn^2                U (or V^T) block, mn = min(rows, m*cols)
 *   work   4 * lwork               gesdd workspace, about 4-5 mn^2
 *   iwork  32 * mn
 * then, after A or Q and the workspace are freed: the kept basis, C (4*r*cols
 * per product), one residual (4*rows*cols) and the outputs. Double doubles
 * the SVD terms. moec_subspace_peak_bytes() gives the number for a shape
 * from the same workspace query. Queried with Debian's OpenBLAS LAPACK
 * (float, LEFT), Mixtral-8x7B W1/W3 [14336][4096]: 1.88 / 4.81 / 6.34 GiB for
 * m = 2 / 4 / 8 (concatenation 0.44 / 0.88 / 1.75 GiB); W2 [4096][14336]:
 * 0.81 / 1.25 / 2.13 GiB. OLMoE and Qwen3-30B-A3B experts stay under 0.2 GiB.
 * Time is the real limit: one W2 pair of Mixtral-8x7B took about 95 s on a
 * shared 2-core machine, so a whole Mixtral merge is hours of SVD there.
 *
 * LAPACK uses 32-bit indices here: a concatenation over 2^31 - 1 elements is
 * refused with MOEC_ERR_UNSUPPORTED rather than overflowing inside LAPACK.
 */
#ifndef MOEC_MERGE_SUBSPACE_H
#define MOEC_MERGE_SUBSPACE_H

#include <stddef.h>

#include "core/error.h"
#include "core/tensor.h"

typedef enum moec_share_side {
    MOEC_SHARE_LEFT = 0, /* [W_1 | ... | W_m]: shared U over the rows (paper, every kind) */
    MOEC_SHARE_RIGHT     /* [W_1; ...; W_m]: shared V over the columns */
} moec_share_side;

typedef enum moec_svd_precision {
    MOEC_SVD_FLOAT = 0, /* sgesdd */
    MOEC_SVD_DOUBLE     /* dgesdd on a double copy: twice the SVD memory */
} moec_svd_precision;

typedef struct moec_subspace_opts {
    moec_share_side share;        /* default MOEC_SHARE_LEFT */
    int rank;                     /* > 0: keep min(rank, mn) */
    double energy;                /* used when rank == 0: fraction in (0, 1] */
    moec_svd_precision precision; /* default MOEC_SVD_FLOAT */
    /* Sub-MoE† (the paper's Eqs. 10-12), LEFT only: per member e a matrix
     * S_e [cols][cols] (row-major; a Cholesky factor of the member's input
     * Gram matrix, S_e S_eᵀ = Σ x xᵀ over its calibration tokens), or NULL.
     * The SVD is then taken of [W_1 S_1 | ... | W_m S_m], so the kept basis
     * U_r (and the energy that picks r) is the one that matters for the
     * inputs each member actually sees; the merge maps back ("de-whitens")
     * by projecting the unwhitened weighted average, W_G = U_r U_rᵀ Σ w_e W_e,
     * which is U_r S_r Σ w_e V_e'ᵀ S_e⁻¹ exactly. */
    const float *const *whiten;
} moec_subspace_opts;

/* Truncation deliberately unset: the caller must choose rank or energy. */
#define MOEC_SUBSPACE_OPTS_DEFAULT {MOEC_SHARE_LEFT, 0, 0.0, MOEC_SVD_FLOAT, NULL}

/* The merged matrix as a product a * b, for intra-expert compression.
 * LEFT:  a = U_r [rows][rank],          b = S_r V_G^T [rank][cols].
 * RIGHT: a = U_G S_r [rows][rank],      b = V_r^T [rank][cols].
 * Both arrays are malloc'd by moec_subspace_merge; free with
 * moec_subspace_factors_free. Storing them beats the dense matrix when
 * rank * (rows + cols) < rows * cols. */
typedef struct moec_subspace_factors {
    float *a;
    float *b;
    int rows, rank, cols;
} moec_subspace_factors;

void moec_subspace_factors_free(moec_subspace_factors *f);

typedef struct moec_subspace_report {
    int rank;              /* r kept */
    int max_rank;          /* mn, the SVD's number of singular values */
    double energy;         /* sum_{i<r} s_i^2 / sum_i s_i^2 (1 for a zero group) */
    double sigma_first;    /* s_1 */
    double sigma_last;     /* s_r, the smallest kept */
    size_t a_rows, a_cols; /* factor sizes: rows x r */
    size_t b_rows, b_cols; /*               r x cols */
    size_t peak_bytes;     /* most bytes this call held allocated at once */
    double *member_rel_err; /* [m], caller-owned; NULL skips the residuals */
} moec_subspace_report;

/* Merges m members into out[rows][cols].
 *
 * members[m]: 2-D F32 views of equal shape [rows][cols] (not owned, not
 * modified). weights[m]: routing frequencies of the members (normalised
 * inside; NULL means uniform). opts: NULL means the default, which fails
 * until rank or energy is set. out: caller's rows*cols floats, not aliasing
 * any member; may be NULL when factors is given. factors: optional, filled as described above.
 * rep: optional; set rep->member_rel_err to an m-array to get the
 * per-member relative reconstruction errors.
 *
 * Errors: MOEC_ERR_ARG (no members, bad weights, truncation unset or out of
 * range), MOEC_ERR_SHAPE (a member not 2-D, or not the shape of member 0, or
 * with fewer bytes than its shape needs), MOEC_ERR_UNSUPPORTED (a member not
 * F32; a concatenation beyond LAPACK's 32-bit indices), MOEC_ERR_NUMERIC
 * (NaN/Inf in a member, naming it and the element; gesdd info != 0, naming
 * the routine and info), MOEC_ERR_NOMEM (with the bytes asked for). */
moec_status moec_subspace_merge(const moec_tensor *members, int m, const float *weights,
                                const moec_subspace_opts *opts, float *out,
                                moec_subspace_factors *factors, moec_subspace_report *rep,
                                moec_err *err);

/* Bytes moec_subspace_merge would hold at its SVD peak for m members of
 * [rows][cols] (concatenation + singular-vector block + queried workspace),
 * without allocating them. Errors as for the merge's size checks. */
moec_status moec_subspace_peak_bytes(int m, int rows, int cols, moec_share_side share,
                                     moec_svd_precision precision, size_t *bytes,
                                     moec_err *err);

#endif
