/* gptq.h - GPTQ (Frantar et al., ICLR 2023, arXiv 2210.17323) into the
 * group-wise format of qformat.h.
 *
 * Objective, per row w of W [rows][cols]: minimise ‖(w - ŵ) Xᵀ‖² over the
 * calibration inputs X [n][cols]. With H = Σ_t x_t x_tᵀ (what
 * moec_hessian_accumulate builds) GPTQ works on H' = (2/n) H + λI,
 * λ = percdamp · mean(diag((2/n) H)), exactly as the reference code.
 *
 * Steps (reference order):
 *  1. dead columns (H_jj == 0: the input channel was always zero) get
 *     H'_jj = 1 and W[:, j] = 0 before damping;
 *  2. act-order (optional): columns are processed by decreasing diag(H),
 *     ties by index;
 *  3. U = upper Cholesky factor of H'^-1 (H'^-1 = UᵀU): dpotrf, dpotri,
 *     dpotrf in double. If LAPACK reports a non-positive-definite matrix,
 *     percdamp is multiplied by 10 and the factorisation retried, at most
 *     damp_retries times (0.01 -> 0.1 -> 1 -> 10 by default); the damping
 *     used is reported. When every try fails: MOEC_ERR_NUMERIC naming the
 *     matrix;
 *  4. columns in processing order, in blocks of `blocksize` (128): a column's
 *     code is RTN with its group's parameters; its error e = (w - ŵ) / U_jj
 *     updates the rest of the block at once and the columns after the block
 *     lazily (one sgemm per block); loss += (w - ŵ)² / U_jj² / 2.
 *
 * Groups always follow the ORIGINAL column order (group g = columns
 * [g*G, (g+1)*G)), so the result is a plain moec_qformat with no column
 * permutation to store. A group's scale and zero are fixed when the first of
 * its columns is quantized:
 *  - by default from the group's weights as updated by the errors of every
 *    column quantized before it (pending lazy updates included). Without
 *    act-order this is the reference's default; with act-order the group is
 *    entered at its highest-ranked column and its other columns are already
 *    error-compensated but still free. (The reference's act-order without
 *    static_groups forms groups in permuted order and needs a stored column
 *    index; that layout is not supported here.)
 *  - static_groups: from the original weights, before any update (the
 *    reference's --static-groups).
 *
 * The loss is the reference's estimate, Σ (w - ŵ)² / U_jj² / 2; without
 * damping it equals ‖(W - Ŵ) Xᵀ‖²_F / n exactly (the sum of the OBS
 * increments), so loss * n estimates moec_quant_output_error.
 *
 * Experts with few routed tokens give a poorly conditioned H; deciding to
 * balance tokens (EAQuant) or fall back to RTN is the caller's business
 * (n_samples is known to it); this module never falls back silently.
 */
#ifndef MOEC_QUANT_GPTQ_H
#define MOEC_QUANT_GPTQ_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/qformat.h"
#include "quant/rtn.h"

typedef struct moec_gptq_opts {
    moec_quant_opts q;  /* format and per-group parameter choice (clipping too) */
    double percdamp;    /* λ as a fraction of the mean Hessian diagonal; 0.01 */
    int blocksize;      /* lazy-update block; 128 */
    bool act_order;     /* process columns by decreasing diag(H); false */
    bool static_groups; /* group parameters from the original weights; false */
    int damp_retries;   /* tries with percdamp x10 after a failed factorisation; 3 */
} moec_gptq_opts;

#define MOEC_GPTQ_OPTS_DEFAULT \
    ((moec_gptq_opts){.q = MOEC_QUANT_OPTS_DEFAULT, .percdamp = 0.01, \
                      .blocksize = 128, .act_order = false, \
                      .static_groups = false, .damp_retries = 3})

typedef struct moec_gptq_report {
    double loss;          /* Σ (w - ŵ)² / U_jj² / 2, ≈ ‖(W - Ŵ)Xᵀ‖² / n */
    double percdamp_used; /* after retries */
    double damp;          /* the absolute λ added to diag((2/n) H) */
    int retries;          /* factorisations that failed before the one used */
    int64_t dead_cols;    /* columns with H_jj == 0 (weights zeroed) */
} moec_gptq_report;

/* H += Xᵀ X for X [n][cols] (n calibration rows of one layer's input).
 * H is [cols][cols] row-major double; only its upper triangle (j >= i) is
 * read and written, the lower triangle is left as it was. Caller zeroes H
 * first and keeps count of n. Uses dsyrk on double copies of X in chunks. */
moec_status moec_hessian_accumulate(double *H, const float *X, int64_t n,
                                    int64_t cols, moec_err *err);

/* The factorised inverse Hessian of one input space: built once, reusable to
 * quantize every matrix that reads the same inputs (W1 and W3 of an expert),
 * at several bit widths (MC-MoE's ε table). Opaque; owns its memory
 * (cols² floats plus O(cols)). Read-only once built, so several threads may
 * run moec_gptq_quantize_with on it at the same time. */
typedef struct moec_gptq_hinv moec_gptq_hinv;

/* Builds the factor from H (upper triangle of Σ x xᵀ, [cols][cols], from n
 * samples; H is not modified). Reads o->percdamp, o->act_order and
 * o->damp_retries; the report's damping fields are filled when rep != NULL.
 * Errors: MOEC_ERR_ARG (n < 1, cols out of range, bad options),
 * MOEC_ERR_NUMERIC (non-finite H, or not positive definite after every
 * damping retry), MOEC_ERR_NOMEM. Free with moec_gptq_hinv_free. */
moec_status moec_gptq_hinv_new(const double *H, int64_t cols, int64_t n_samples,
                               const moec_gptq_opts *o, const char *name,
                               moec_gptq_hinv **out, moec_gptq_report *rep,
                               moec_err *err);
void moec_gptq_hinv_free(moec_gptq_hinv *h);

/* The factor's parts, for quantizers on other grids (kquant_grid.h): U
 * [cols][cols] (upper triangle, processing order), perm [cols] (processing
 * position -> original column), dead [cols] and diag [cols] (H_jj / n, the
 * mean squared input of each original column). Views, owned by h. */
void moec_gptq_hinv_parts(const moec_gptq_hinv *h, int64_t *cols, const float **U, const int64_t **perm,
                          const unsigned char **dead, const float **diag);

/* The same factor built in H's own memory, which it takes over: H (from
 * malloc, cols² doubles) is freed on failure and becomes the factor's
 * storage on success, so building it needs no second cols² buffer (for
 * Mixtral-8x7B's W2, cols = 14336: 1.6 GB instead of 3.3 GB). Results are
 * identical to moec_gptq_hinv_new's. With act-order it falls back to a
 * copy. */
moec_status moec_gptq_hinv_from(double *H, int64_t cols, int64_t n_samples,
                                const moec_gptq_opts *o, const char *name,
                                moec_gptq_hinv **out, moec_gptq_report *rep,
                                moec_err *err);

/* Quantizes W [rows][cols] (float, not modified) with a prepared factor into
 * *out (allocated here; moec_qmatrix_free releases it; left empty on
 * failure). Working memory: a float copy of W plus one byte per weight. Reads o->q, o->blocksize and o->static_groups (act-order and
 * damping were fixed by moec_gptq_hinv_new). rep (may be NULL) gets loss and
 * dead_cols; its damping fields are left as they are. */
moec_status moec_gptq_quantize_with(const float *W, int64_t rows, int64_t cols,
                                    const moec_gptq_hinv *h,
                                    const moec_gptq_opts *o, const char *name,
                                    moec_qmatrix *out, moec_gptq_report *rep,
                                    moec_err *err);

/* moec_gptq_hinv_new + moec_gptq_quantize_with + free, for one matrix. */
moec_status moec_gptq_quantize(const float *W, int64_t rows, int64_t cols,
                               const double *H, int64_t n_samples,
                               const moec_gptq_opts *o, const char *name,
                               moec_qmatrix *out, moec_gptq_report *rep,
                               moec_err *err);

/* ‖X Wᵀ - X Ŵᵀ‖²_F for X [n][cols], W [rows][cols] float and Ŵ = q
 * dequantized (sum over tokens and output rows, in double). Works on blocks
 * of rows, O(block*cols) extra memory. */
moec_status moec_quant_output_error(const float *X, int64_t n, const float *W,
                                    const moec_qformat *q, double *out,
                                    moec_err *err);

/* The same quantity from the Hessian: Σ_r (w_r - ŵ_r) H (w_r - ŵ_r)ᵀ with H
 * the upper triangle of Σ x xᵀ [cols][cols] (as accumulated above). */
moec_status moec_quant_output_error_h(const double *H, const float *W,
                                      const moec_qformat *q, double *out,
                                      moec_err *err);

#endif
