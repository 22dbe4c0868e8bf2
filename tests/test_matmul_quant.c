/* moec_matmul_quant (exec/matmul_quant.c) against a dequantize-then-multiply
 * reference in double: every path (qgemm, dequantized tiles + sgemm, the
 * memory-free fallback), several n, row ranges, strides, accumulate, 1 and 2
 * threads, formats that take the AVX-512 kernel and ones that do not. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/threadpool.h"
#include "exec/matmul_quant.h"
#include "exec/qgemv.h"
#include "core/qformat.h"
#include "quant/rtn.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}

typedef struct {
    int bits, group;
    bool symmetric;
    int64_t rows, cols;
} fmt_case;

static const fmt_case cases[] = {
    {4, 32, false, 80, 96},   /* AVX-512 kernel; rows not a multiple of 16 */
    {3, 16, true, 256, 128},  /* large enough that n = 1 is split over threads */
    {2, 64, false, 48, 100},  /* last group short */
    {5, 12, false, 40, 60},   /* group not a multiple of 8: portable qgemm */
    {8, 0, true, 33, 72},     /* one group per row */
    {8, 64, false, 72, 128},  /* 8-bit direct path: 8-row blocks, zero point per group */
    {2, 64, true, 40, 256},   /* 2-bit table lookups, symmetric */
    {4, 64, false, 200, 320}, /* int8 activations for one token, split over threads */
};

#define SENTINEL 12345.0f

/* A random matrix of fc's shape quantized by RTN in fc's format into *qm;
 * returns its exact dequantized values Ŵ [rows][cols] (malloc'd). */
static float *quantized_case(const fmt_case *fc, moec_qmatrix *qm)
{
    moec_err err = {0};
    const int64_t rows = fc->rows, K = fc->cols;
    float *W = malloc((size_t)(rows * K) * sizeof *W);
    assert_non_null(W);
    for (int64_t i = 0; i < rows * K; i++)
        W[i] = frand();
    moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
    o.bits = fc->bits;
    o.group = fc->group;
    o.symmetric = fc->symmetric;
    assert_int_equal(moec_rtn_quantize(W, rows, K, &o, "w", qm, &err), MOEC_OK);
    moec_qformat_dequant_rows(&qm->f, 0, rows, W);
    return W;
}

static void check_case(const fmt_case *fc, moec_pool *pool)
{
    const int64_t rows = fc->rows, K = fc->cols;
    moec_qmatrix qm;
    float *W = quantized_case(fc, &qm); /* exactly Ŵ */
    moec_tensor T = moec_qformat_tensor(&qm.f);

    const int64_t ns[] = {1, 3, 8, 17, 40};
    const int64_t ranges[][2] = {{0, rows}, {5, rows - 3}, {rows / 2, rows / 2 + 1}};
    const int64_t ldx = K + 5;
    /* the float paths; int8 activations (one token) are checked below */
    moec_matmul_quant_int8_activations(false);
    for (int path = 0; path <= 3; path++) {
        moec_matmul_quant_force_path(path);
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
            const int64_t n = ns[ni];
            float *x = malloc((size_t)(n * ldx) * sizeof *x);
            for (int64_t i = 0; i < n * ldx; i++)
                x[i] = frand();
            for (size_t ri = 0; ri < sizeof ranges / sizeof *ranges; ri++) {
                const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1], ldy = r1 - r0 + 3;
                for (int acc = 0; acc <= 1; acc++) {
                    float *y = malloc((size_t)(n * ldy) * sizeof *y);
                    for (int64_t i = 0; i < n * ldy; i++)
                        y[i] = (i % ldy) < r1 - r0 ? (acc ? 0.5f : -7.0f) : SENTINEL;
                    moec_matmul_quant(pool, y, ldy, x, ldx, n, &T, r0, r1, acc);
                    for (int64_t i = 0; i < n; i++) {
                        for (int64_t r = r0; r < r1; r++) {
                            double ref = acc ? 0.5 : 0.0, mag = 0.0;
                            for (int64_t c = 0; c < K; c++) {
                                ref += (double)x[i * ldx + c] * W[r * K + c];
                                mag += fabs((double)x[i * ldx + c] * W[r * K + c]);
                            }
                            double got = y[i * ldy + (r - r0)];
                            if (fabs(got - ref) > 1e-5 * mag + 1e-6)
                                fail_msg("bits %d group %d rows %lld: path %d n %lld range [%lld,%lld) acc %d: "
                                         "y[%lld][%lld] = %.7g, reference %.7g",
                                         fc->bits, fc->group, (long long)rows, path, (long long)n, (long long)r0,
                                         (long long)r1, acc, (long long)i, (long long)r, got, ref);
                        }
                        for (int64_t r = r1 - r0; r < ldy; r++)
                            assert_true(y[i * ldy + r] == SENTINEL);
                    }
                    free(y);
                }
            }
            free(x);
        }
    }
    moec_matmul_quant_force_path(0);
    moec_matmul_quant_int8_activations(true);
    /* one token, int8 activations on: where the format allows them, the
     * direct path's rows are exactly moec_qgemv_q8's (however the rows are
     * split over workers); elsewhere the float result as above */
    float *x = malloc((size_t)K * sizeof *x), *yq = malloc((size_t)rows * sizeof *yq);
    for (int64_t c = 0; c < K; c++)
        x[c] = frand();
    for (int path = 0; path <= 1; path++) {
        moec_matmul_quant_force_path(path);
        for (size_t ri = 0; ri < sizeof ranges / sizeof *ranges; ri++) {
            const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1];
            float *y = malloc((size_t)(r1 - r0) * sizeof *y);
            for (int64_t r = 0; r < r1 - r0; r++)
                y[r] = 0.5f;
            moec_matmul_quant(pool, y, r1 - r0, x, K, 1, &T, r0, r1, true);
            const bool q8 =
                moec_qgemv_q8_supported(&qm.f) && (path == 1 || moec_matmul_quant_direct_max_n(&T) >= 1);
            if (q8) {
                moec_err err;
                for (int64_t r = r0; r < r1; r++)
                    yq[r] = 0.5f;
                assert_int_equal(moec_qgemv_q8(&qm.f, x, yq, r0, r1, true, &err), MOEC_OK);
            }
            for (int64_t r = r0; r < r1; r++) {
                double ref = 0.5, mag = 0.0;
                for (int64_t c = 0; c < K; c++) {
                    ref += (double)x[c] * W[r * K + c];
                    mag += fabs((double)x[c] * W[r * K + c]);
                }
                if (q8 ? y[r - r0] != yq[r] : fabs(y[r - r0] - ref) > 1e-5 * mag + 1e-6)
                    fail_msg("int8 on, bits %d group %d: path %d [%lld,%lld) y[%lld] = %.9g, q8 %.9g, float %.9g",
                             fc->bits, fc->group, path, (long long)r0, (long long)r1, (long long)r, y[r - r0],
                             q8 ? yq[r] : 0.0f, ref);
            }
            free(y);
        }
    }
    moec_matmul_quant_force_path(0);
    free(x);
    free(yq);
    moec_qmatrix_free(&qm);
    free(W);
}

static void test_paths_match_reference(void **state)
{
    (void)state;
    moec_pool *pools[] = {NULL, moec_pool_new(1), moec_pool_new(2)};
    assert_non_null(pools[1]);
    assert_non_null(pools[2]);
    for (size_t p = 0; p < 3; p++)
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
            check_case(&cases[c], pools[p]);
    moec_pool_free(pools[1]);
    moec_pool_free(pools[2]);
}

/* Formats without a fast qgemm kernel never take the direct path. */
static void test_direct_max_n(void **state)
{
    (void)state;
    moec_err err = {0};
    float W[16 * 24];
    for (int i = 0; i < 16 * 24; i++)
        W[i] = frand();
    moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
    o.group = 12; /* not a multiple of 8: no AVX-512 kernel */
    moec_qmatrix qm;
    assert_int_equal(moec_rtn_quantize(W, 16, 24, &o, "w", &qm, &err), MOEC_OK);
    moec_tensor T = moec_qformat_tensor(&qm.f);
    assert_int_equal(moec_matmul_quant_direct_max_n(&T), 0);
    moec_qmatrix_free(&qm);
}

/* The tile path multiplies dequantized weights; with one-hot x rows each
 * product is a single weight times 1, so y must equal Ŵ (as
 * moec_qformat_dequant_rows computes it) bit for bit: this pins the AVX-512
 * dequantizers (table lookups for b <= 4, including b = 1 and 3 whose last
 * rows load only their own bytes) to s·(q - z) exactly. */
static void test_tiles_exact(void **state)
{
    (void)state;
    static const fmt_case exact[] = {
        {1, 16, false, 37, 64}, {2, 32, true, 20, 96}, {3, 16, false, 29, 48}, {3, 128, true, 9, 128},
        {4, 128, false, 19, 256}, {4, 16, true, 8, 32}, {8, 64, false, 12, 128}, {2, 64, false, 7, 100},
        /* a shorter last group in every row (columns still whole 16-column steps) */
        {4, 64, false, 11, 80}, {3, 32, true, 5, 48}, {1, 128, false, 6, 144}, {2, 64, true, 9, 208},
    };
    moec_pool *pool = moec_pool_new(2);
    assert_non_null(pool);
    for (size_t ci = 0; ci < sizeof exact / sizeof *exact; ci++) {
        const fmt_case *fc = &exact[ci];
        const int64_t rows = fc->rows, K = fc->cols;
        moec_qmatrix qm;
        float *W = quantized_case(fc, &qm);
        float *x = calloc((size_t)(K * K), sizeof *x);
        float *y = malloc((size_t)(K * rows) * sizeof *y);
        assert_non_null(x);
        assert_non_null(y);
        moec_tensor T = moec_qformat_tensor(&qm.f);
        for (int64_t c = 0; c < K; c++)
            x[c * K + c] = 1.0f;
        for (int p = 0; p < 2; p++) {
            moec_matmul_quant_force_path(p == 0 ? 2 : 0);
            moec_matmul_quant(p == 0 ? pool : NULL, y, rows, x, K, K, &T, 0, rows, false);
            for (int64_t c = 0; c < K; c++)
                for (int64_t r = 0; r < rows; r++)
                    if (memcmp(&y[c * rows + r], &W[r * K + c], sizeof(float)) != 0)
                        fail_msg("bits %d group %d: y[%lld][%lld] = %.9g, Ŵ = %.9g", fc->bits, fc->group,
                                 (long long)c, (long long)r, y[c * rows + r], W[r * K + c]);
        }
        moec_matmul_quant_force_path(0);
        moec_qmatrix_free(&qm);
        free(W);
        free(x);
        free(y);
    }
    moec_pool_free(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths_match_reference),
        cmocka_unit_test(test_tiles_exact),
        cmocka_unit_test(test_direct_max_n),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
