/* fit.h - least squares for fitting a merged expert to what its group
 * computed (merge.h, "fit").
 *
 * Every fit here is a ridge regression of targets on features, pulled
 * towards a prior instead of towards zero:
 *     W = argmin  Σ_t ‖W z_t − y_t‖² + λ ‖W − P‖²
 *       = (Σ y zᵀ + λ P) (Σ z zᵀ + λ I)⁻¹,       λ = ridge · tr(Σ z zᵀ) / p,
 * with z_t ∈ R^p, y_t ∈ R^q. The prior P is what merging gave without the
 * fit (the merged down projection, the averaged router row, or an
 * untouched expert's own weight), so a direction the calibration tokens
 * never excite keeps its merged value and a fit on few tokens cannot drift
 * far. Sums are accumulated in double from float rows; the system is
 * solved by Cholesky (LAPACKE dposv).
 */
#ifndef MOEC_MERGE_FIT_H
#define MOEC_MERGE_FIT_H

#include <stdint.h>

#include "core/error.h"

/* The normal equations of one fit: A = Σ z zᵀ [p][p] (upper triangle kept),
 * B = Σ y zᵀ [q][p], both double. */
typedef struct moec_lsq {
    int p, q;
    double *A;
    double *B;
    double rows; /* Σ of the row weights added */
} moec_lsq;

moec_status moec_lsq_init(moec_lsq *s, int p, int q, moec_err *err);
void moec_lsq_free(moec_lsq *s);

/* Adds n rows: features z[n][p] and targets y[n][q] (row-major floats),
 * each row scaled by w[i] when w is not NULL (features and targets alike,
 * so the row's squared error is weighted by w²). scratch: at least
 * n·(p + q) doubles. */
void moec_lsq_add(moec_lsq *s, const float *z, const float *y, const float *w, int64_t n, double *scratch);

/* Solves W [q][p] (floats) with the ridge and prior above. prior may be NULL
 * (zero prior). A and B are consumed (overwritten). An empty or all-zero
 * system leaves W = prior. Errors: MOEC_ERR_ARG (ridge <= 0 with a singular
 * system is reported as MOEC_ERR_NUMERIC), MOEC_ERR_NOMEM. */
moec_status moec_lsq_solve(moec_lsq *s, double ridge, const float *prior, float *W, moec_err *err);

#endif
