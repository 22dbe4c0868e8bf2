/* moec_qgemm_ex (exec/qgemv.h) against a dequantize-then-multiply reference
 * in double, for every code width, symmetric and asymmetric, on shapes that
 * reach each part of the AVX-512 kernel: 8-, 4- and 1-row blocks, 1 to 4
 * tokens per pass and more, groups shorter than a 16-column step, ragged
 * last groups, one group per row, more than 64 groups per row (scales and
 * zeros converted chunk by chunk), rows with padding bits in their zeros,
 * the matrix's last row (no over-read: the buffers are malloc'd to size,
 * so ASan sees any), strided x, accumulate, and sub-ranges of rows. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/qformat.h"
#include "exec/qgemv.h"



#define SENTINEL -12345.0f

/* One moec_qgemm_ex call against the reference; w is the dequantized
 * matrix. Entries of y outside [r0, r1) must stay untouched. */
static void check_call(const moec_qformat *f, const float *w, int64_t n, int64_t r0, int64_t r1,
                       bool acc)
{
    const int64_t rows = f->rows, cols = f->cols, ldx = cols + 3, ldy = rows + 2;
    float *x = malloc((size_t)(n * ldx) * sizeof *x);
    float *y = malloc((size_t)(n * ldy) * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    for (int64_t i = 0; i < n * ldx; i++)
        x[i] = tu_frand();
    for (int64_t i = 0; i < n * ldy; i++)
        y[i] = acc && i % ldy >= r0 && i % ldy < r1 ? 0.25f : SENTINEL;
    moec_err err;
    assert_int_equal(moec_qgemm_ex(f, x, ldx, n, y, ldy, r0, r1, acc, &err), MOEC_OK);
    for (int64_t t = 0; t < n; t++)
        for (int64_t r = 0; r < ldy; r++) {
            const float got = y[t * ldy + r];
            if (r < r0 || r >= r1) {
                assert_true(got == SENTINEL);
                continue;
            }
            double ref = acc ? 0.25 : 0.0, mag = 0.0;
            for (int64_t c = 0; c < cols; c++) {
                ref += (double)x[t * ldx + c] * w[r * cols + c];
                mag += fabs((double)x[t * ldx + c] * w[r * cols + c]);
            }
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-6))
                fail_msg("b %d group %d %s rows %lld cols %lld: n %lld [%lld, %lld) acc %d: "
                         "y[%lld][%lld] = %.9g, reference %.9g (sum |x w| %.3g)",
                         f->bits, f->group, f->symmetric ? "sym" : "asym", (long long)rows,
                         (long long)cols, (long long)n, (long long)r0, (long long)r1, acc,
                         (long long)t, (long long)r, got, ref, mag);
        }
    free(x);
    free(y);
}

static void test_matches_reference(void **state)
{
    (void)state;
    /* rows, cols, group (0: one group per row) */
    static const int64_t shapes[][3] = {
        {37, 256, 64},  /* 4 x 8-row blocks + 4 + 1, whole groups */
        {21, 200, 24},  /* groups of 16 + 8 columns, ragged last group */
        {13, 136, 8},   /* groups shorter than a step */
        {6, 77, 0},     /* one group of 77 */
        {9, 4160, 64},  /* 65 groups: converted chunk by chunk */
        {5, 1048, 16},  /* 66 groups, the last one short */
    };
    static const int64_t ns[] = {1, 2, 3, 4, 5, 9};
    for (int b = 1; b <= 8; b++)
        for (int sym = 0; sym <= 1; sym++)
            for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
                const int64_t rows = shapes[si][0], cols = shapes[si][1];
                const int group = shapes[si][2] ? (int)shapes[si][2] : (int)cols;
                moec_qmatrix m;
                tu_random_qmatrix(&m, rows, cols, b, group, sym);
                float *w = malloc((size_t)(rows * cols) * sizeof *w);
                assert_non_null(w);
                moec_qformat_dequant_rows(&m.f, 0, rows, w);
                for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
                    for (int acc = 0; acc <= 1; acc++) {
                        check_call(&m.f, w, ns[ni], 0, rows, acc);
                        check_call(&m.f, w, ns[ni], 1, rows - 1 > 1 ? rows - 1 : rows, acc);
                    }
                free(w);
                moec_qmatrix_free(&m);
            }
}

/* The wrappers agree with moec_qgemm_ex, the AVX-512 kernel is picked where
 * the CPU has it, and bad strides are refused. */
static void test_dispatch_and_args(void **state)
{
    (void)state;
    moec_qmatrix m;
    tu_random_qmatrix(&m, 16, 128, 4, 64, false);
    float x[2 * 128], y1[2 * 16], y2[2 * 16];
    for (int i = 0; i < 2 * 128; i++)
        x[i] = tu_frand();
    moec_err err;
    assert_int_equal(moec_qgemm(&m.f, x, 2, y1, 16, 0, 16, &err), MOEC_OK);
    assert_int_equal(moec_qgemm_ex(&m.f, x, 128, 2, y2, 16, 0, 16, false, &err), MOEC_OK);
    assert_memory_equal(y1, y2, sizeof y1);
    assert_int_equal(moec_qgemm_portable_ex(&m.f, x, 128, 2, y2, 16, 0, 16, false, &err), MOEC_OK);
    for (int i = 0; i < 2 * 16; i++)
        assert_true(fabsf(y1[i] - y2[i]) <= 1e-4f * (1.0f + fabsf(y2[i])));
    if (strcmp(moec_qgemm_kernel(&m.f), "avx512") == 0) {
        assert_int_equal(moec_qgemm_avx512_ex(&m.f, x, 128, 2, y2, 16, 0, 16, false, &err), MOEC_OK);
        assert_memory_equal(y1, y2, sizeof y1);
    } else {
        assert_int_equal(moec_qgemm_avx512_ex(&m.f, x, 128, 2, y2, 16, 0, 16, false, &err),
                         MOEC_ERR_UNSUPPORTED);
    }
    assert_int_equal(moec_qgemm_ex(&m.f, x, 127, 1, y1, 16, 0, 16, false, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qgemm_portable_ex(&m.f, x, 127, 1, y1, 16, 0, 16, true, &err),
                     MOEC_ERR_ARG);
    assert_int_equal(moec_qgemm_avx512_ex(&m.f, x, 127, 1, y1, 16, 0, 16, true, &err),
                     MOEC_ERR_ARG);
    moec_qmatrix_free(&m);
}

/* moec_qgemv_q8 against the float product with the activations quantized
 * as its contract says (per 64 columns, s = max|x|/127, rint(x·127/max)),
 * in double: equal to float rounding. Shapes: 4-row tiles and single
 * rows, an odd number of 64-column chunks (half a 4-bit block), a ragged
 * tail, groups of 64 and 128, more than 16 groups, a chunk of zeros. */
static void test_int8_activations(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {
        {9, 2048, 64}, {7, 192, 64}, {5, 200, 64}, {6, 1024, 128}, {3, 320, 128}, {4, 4160, 64},
    };
    for (int b = 4; b <= 8; b += 4)
        for (int sym = 0; sym <= 1; sym++)
            for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
                const int64_t rows = shapes[si][0], cols = shapes[si][1];
                moec_qmatrix m;
                tu_random_qmatrix(&m, rows, cols, b, (int)shapes[si][2], sym);
                if (!moec_qgemv_q8_supported(&m.f)) {
                    moec_qmatrix_free(&m);
                    skip();
                }
                float *w = malloc((size_t)(rows * cols) * sizeof *w);
                float *x = malloc((size_t)cols * sizeof *x), *xq = malloc((size_t)cols * sizeof *xq);
                float *y = malloc((size_t)(rows + 1) * sizeof *y);
                assert_true(w && x && xq && y);
                moec_qformat_dequant_rows(&m.f, 0, rows, w);
                for (int64_t c = 0; c < cols; c++)
                    x[c] = c >= 64 && c < 128 ? 0.0f : tu_frand() * (c % 7 == 0 ? 8.0f : 1.0f);
                for (int64_t c0 = 0; c0 < cols; c0 += 64) {
                    float mx = 0.0f;
                    for (int64_t c = c0; c < c0 + 64 && c < cols; c++)
                        mx = fmaxf(mx, fabsf(x[c]));
                    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f, s = mx / 127.0f;
                    for (int64_t c = c0; c < c0 + 64 && c < cols; c++)
                        xq[c] = s * rintf(x[c] * inv);
                }
                for (int acc = 0; acc <= 1; acc++) {
                    for (int64_t r = 0; r <= rows; r++)
                        y[r] = acc ? 0.5f : SENTINEL;
                    moec_err err;
                    assert_int_equal(moec_qgemv_q8(&m.f, x, y, 1, rows, acc, &err), MOEC_OK);
                    assert_true(y[0] == (acc ? 0.5f : SENTINEL));
                    for (int64_t r = 1; r < rows; r++) {
                        double ref = acc ? 0.5 : 0.0, mag = 0.0;
                        for (int64_t c = 0; c < cols; c++) {
                            ref += (double)xq[c] * w[r * cols + c];
                            mag += fabs((double)xq[c] * w[r * cols + c]);
                        }
                        if (!(fabs(y[r] - ref) <= 1e-5 * mag + 1e-6))
                            fail_msg("q8 b %d %s %lldx%lld g%lld acc %d: y[%lld] = %.9g, reference %.9g", b,
                                     sym ? "sym" : "asym", (long long)rows, (long long)cols,
                                     (long long)shapes[si][2], acc, (long long)r, y[r], ref);
                    }
                }
                free(w), free(x), free(xq), free(y);
                moec_qmatrix_free(&m);
            }
    /* formats it does not take */
    moec_qmatrix m;
    tu_random_qmatrix(&m, 4, 256, 3, 64, false);
    assert_false(moec_qgemv_q8_supported(&m.f));
    float x[256] = {0}, y[4];
    moec_err err;
    assert_int_equal(moec_qgemv_q8(&m.f, x, y, 0, 4, false, &err), MOEC_ERR_UNSUPPORTED);
    moec_qmatrix_free(&m);
    tu_random_qmatrix(&m, 4, 256, 4, 32, false);
    assert_false(moec_qgemv_q8_supported(&m.f));
    moec_qmatrix_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_dispatch_and_args),
        cmocka_unit_test(test_int8_activations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
