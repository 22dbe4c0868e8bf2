#include "exec/qgemv.h"

#include <stdlib.h>

moec_status moec_qgemm_check(const moec_qformat *f, const float *x, int64_t ldx, int64_t n,
                             const float *y, int64_t ldy, int64_t r0, int64_t r1,
                             const char *kernel, moec_err *err)
{
    if (!f || (n > 0 && (!x || !y)))
        return moec_err_set(err, MOEC_ERR_ARG, "qgemm (%s): missing format, input or output",
                            kernel);
    if (n < 0 || r0 < 0 || r1 < r0 || r1 > f->rows || (n > 0 && (ldy < r1 || ldx < f->cols)))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "qgemm (%s): n %lld, rows [%lld, %lld) of %lld, ldy %lld, ldx %lld",
                            kernel, (long long)n, (long long)r0, (long long)r1,
                            (long long)f->rows, (long long)ldy, (long long)ldx);
    return MOEC_OK;
}

/* Eight independent partial sums keep the adds pipelined and let the
 * compiler vectorise without reassociating anything itself. */
static float dot(const float *a, const float *b, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += a[i + k] * b[i + k];
    for (; i < n; i++)
        acc[i & 7] += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

moec_status moec_qgemm_portable_ex(const moec_qformat *f, const float *x, int64_t ldx,
                                   int64_t n, float *y, int64_t ldy, int64_t r0, int64_t r1,
                                   bool accumulate, moec_err *err)
{
    moec_status st = moec_qgemm_check(f, x, ldx, n, y, ldy, r0, r1, "portable", err);
    if (st != MOEC_OK || n == 0 || r0 == r1)
        return st;
    const int64_t cols = f->cols;
    float *w = malloc((size_t)cols * sizeof *w);
    if (!w)
        return moec_err_set(err, MOEC_ERR_NOMEM, "qgemm: out of memory for a %lld-column row",
                            (long long)cols);
    for (int64_t r = r0; r < r1; r++) {
        moec_qformat_dequant_row(f, r, w);
        for (int64_t t = 0; t < n; t++) {
            float *o = &y[(size_t)t * (size_t)ldy + (size_t)r];
            const float d = dot(w, x + (size_t)t * (size_t)ldx, cols);
            *o = accumulate ? *o + d : d;
        }
    }
    free(w);
    return MOEC_OK;
}

moec_status moec_qgemm_portable(const moec_qformat *f, const float *x, int64_t n,
                                float *y, int64_t ldy, int64_t r0, int64_t r1,
                                moec_err *err)
{
    return moec_qgemm_portable_ex(f, x, f ? f->cols : 0, n, y, ldy, r0, r1, false, err);
}

moec_status moec_qgemm_avx512(const moec_qformat *f, const float *x, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1,
                              moec_err *err)
{
    return moec_qgemm_avx512_ex(f, x, f ? f->cols : 0, n, y, ldy, r0, r1, false, err);
}

moec_status moec_qgemm_ex(const moec_qformat *f, const float *x, int64_t ldx, int64_t n,
                          float *y, int64_t ldy, int64_t r0, int64_t r1, bool accumulate,
                          moec_err *err)
{
    if (f && !f->gblock && moec_qgemm_kernel(f)[0] == 'a') /* llama.cpp blocks: portable (dequant_row) */
        return moec_qgemm_avx512_ex(f, x, ldx, n, y, ldy, r0, r1, accumulate, err);
    return moec_qgemm_portable_ex(f, x, ldx, n, y, ldy, r0, r1, accumulate, err);
}

moec_status moec_qgemm(const moec_qformat *f, const float *x, int64_t n, float *y,
                       int64_t ldy, int64_t r0, int64_t r1, moec_err *err)
{
    return moec_qgemm_ex(f, x, f ? f->cols : 0, n, y, ldy, r0, r1, false, err);
}
