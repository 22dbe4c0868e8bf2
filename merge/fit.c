/* fit.c - ridge least squares towards a prior (fit.h). */
#include "merge/fit.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

moec_status moec_lsq_init(moec_lsq *s, int p, int q, moec_err *err)
{
    memset(s, 0, sizeof *s);
    if (p < 1 || q < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "fit: %d features, %d targets", p, q);
    s->p = p;
    s->q = q;
    s->A = calloc((size_t)p * p, sizeof *s->A);
    s->B = calloc((size_t)q * p, sizeof *s->B);
    if (!s->A || !s->B) {
        moec_lsq_free(s);
        return moec_err_set(err, MOEC_ERR_NOMEM, "fit: out of memory for a %dx%d system", p, p);
    }
    return MOEC_OK;
}

void moec_lsq_free(moec_lsq *s)
{
    free(s->A);
    free(s->B);
    s->A = s->B = NULL;
}

void moec_lsq_add(moec_lsq *s, const float *z, const float *y, const float *w, int64_t n, double *scratch)
{
    if (n <= 0)
        return;
    const int p = s->p, q = s->q;
    double *Z = scratch, *Y = scratch + (size_t)n * p;
    for (int64_t i = 0; i < n; i++) {
        const double wi = w ? w[i] : 1.0;
        for (int j = 0; j < p; j++)
            Z[(size_t)i * p + j] = wi * z[(size_t)i * p + j];
        for (int j = 0; j < q; j++)
            Y[(size_t)i * q + j] = wi * y[(size_t)i * q + j];
        s->rows += wi * wi;
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, p, (int)n, 1.0, Z, p, 1.0, s->A, p);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, q, p, (int)n, 1.0, Y, q, Z, p, 1.0, s->B, p);
}

moec_status moec_lsq_solve(moec_lsq *s, double ridge, const float *prior, float *W, moec_err *err)
{
    const int p = s->p, q = s->q;
    double tr = 0.0;
    for (int j = 0; j < p; j++)
        tr += s->A[(size_t)j * p + j];
    if (!(tr > 0.0) || !isfinite(tr)) {
        /* no signal: the prior stands */
        for (size_t i = 0; i < (size_t)q * p; i++)
            W[i] = prior ? prior[i] : 0.0f;
        return isfinite(tr) ? MOEC_OK
                            : moec_err_set(err, MOEC_ERR_NUMERIC, "fit: non-finite features (trace %g)", tr);
    }
    const double lambda = ridge * tr / p;
    for (int j = 0; j < p; j++)
        s->A[(size_t)j * p + j] += lambda;
    /* C = (B + λ P)ᵀ [p][q]: A C = Cᵀ-side system, W = Cᵀ */
    double *C = malloc((size_t)p * q * sizeof *C);
    if (!C)
        return moec_err_set(err, MOEC_ERR_NOMEM, "fit: out of memory for %dx%d right-hand sides", p, q);
    for (int i = 0; i < q; i++)
        for (int j = 0; j < p; j++)
            C[(size_t)j * q + i] = s->B[(size_t)i * p + j] + (prior ? lambda * prior[(size_t)i * p + j] : 0.0);
    lapack_int info = LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', p, q, s->A, p, C, q);
    moec_status st = MOEC_OK;
    if (info != 0)
        st = moec_err_set(err, MOEC_ERR_NUMERIC, "fit: dposv failed (info %d) on a %dx%d system with ridge %g",
                          (int)info, p, p, ridge);
    else
        for (int i = 0; i < q; i++)
            for (int j = 0; j < p; j++)
                W[(size_t)i * p + j] = (float)C[(size_t)j * q + i];
    free(C);
    return st;
}
