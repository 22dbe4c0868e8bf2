/* Tests for lib/core/qformat.c (layout, packing, dequantization), quant/rtn.c
 * and lib/exec/qgemv*.c (products straight from the packed codes). */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/qformat.h"
#include "exec/qgemv.h"
#include "quant/rtn.h"


static const int group_sizes[] = {16, 32, 64, 128, 256, 0 /* = cols */};

/* The documented bit order, pinned on two hand-computed examples. */
static void test_pack_layout(void **state)
{
    (void)state;
    const uint8_t c3[8] = {1, 2, 3, 4, 5, 6, 7, 0};
    uint8_t out[3];
    moec_qpack(out, c3, 8, 3);
    assert_int_equal(out[0], 0xd1);
    assert_int_equal(out[1], 0x58);
    assert_int_equal(out[2], 0x1f);
    const uint8_t c5[3] = {17, 3, 30};
    uint8_t o5[2];
    moec_qpack(o5, c5, 3, 5);
    assert_int_equal(o5[0], 0x71);
    assert_int_equal(o5[1], 0x78);
    /* Only the low bits of each code are stored. */
    const uint8_t hi[2] = {0xff, 0xf0};
    uint8_t o4;
    moec_qpack(&o4, hi, 2, 4);
    assert_int_equal(o4, 0x0f);
}

static void test_pack_roundtrip(void **state)
{
    (void)state;
    const int64_t lens[] = {1, 7, 8, 33, 100, 257};
    for (int b = 1; b <= 8; b++) {
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            int64_t n = lens[li];
            size_t nb = moec_qformat_packed_bytes(n, b);
            assert_int_equal(nb, (size_t)((n * b + 7) / 8));
            uint8_t *codes = malloc((size_t)n), *back = malloc((size_t)n);
            uint8_t *packed = malloc(nb); /* exact size: ASan catches overruns */
            for (int64_t i = 0; i < n; i++)
                codes[i] = (uint8_t)(tu_urand() & ((1u << b) - 1));
            memset(packed, 0xaa, nb);
            moec_qpack(packed, codes, n, b);
            int pad = (int)(nb * 8 - (size_t)(n * b));
            if (pad > 0)
                assert_int_equal(packed[nb - 1] >> (8 - pad), 0);
            moec_qunpack(back, packed, 0, n, b);
            assert_memory_equal(back, codes, (size_t)n);
            /* Any sub-range, from any start. */
            for (int trial = 0; trial < 20; trial++) {
                int64_t first = (int64_t)(tu_urand() % (uint32_t)n);
                int64_t cnt = 1 + (int64_t)(tu_urand() % (uint32_t)(n - first));
                memset(back, 0xee, (size_t)n);
                moec_qunpack(back, packed, first, cnt, b);
                assert_memory_equal(back, codes + first, (size_t)cnt);
            }
            free(codes);
            free(back);
            free(packed);
        }
    }
}

static void test_sizes_and_bpw(void **state)
{
    (void)state;
    moec_err err;
    size_t cb, sb, zb;
    assert_int_equal(moec_qformat_sizes(3, 300, 3, 64, false, &cb, &sb, &zb, &err), MOEC_OK);
    assert_int_equal(cb, 3 * 113); /* ceil(900 / 8) per row */
    assert_int_equal(sb, 3 * 5 * 2);
    assert_int_equal(zb, 3 * 2); /* 5 zeros of 3 bits = 15 bits -> 2 bytes */
    assert_int_equal(moec_qformat_sizes(3, 300, 3, 64, true, &cb, &sb, &zb, &err), MOEC_OK);
    assert_int_equal(zb, 0);

    moec_qmatrix m;
    assert_int_equal(moec_qmatrix_alloc(&m, 3, 300, 3, 64, false, &err), MOEC_OK);
    assert_int_equal(moec_qformat_ngroups(&m.f), 5);
    assert_true(fabs(moec_qformat_bpw(&m.f) - 8.0 * (339 + 30 + 6) / 900.0) < 1e-12);
    moec_tensor t = moec_qformat_tensor(&m.f);
    assert_int_equal(t.dtype, MOEC_DT_QUANT);
    assert_int_equal(t.shape[0], 3);
    assert_int_equal(t.shape[1], 300);
    assert_ptr_equal(t.q, &m.f);
    assert_int_equal(moec_qformat_validate(&m.f, "w", &err), MOEC_OK);
    moec_qmatrix_free(&m);

    /* 4 bits, group 128, 4096 columns: 4 + 16/128 + 4/128 bits per weight. */
    assert_int_equal(moec_qmatrix_alloc(&m, 8, 4096, 4, 128, false, &err), MOEC_OK);
    assert_true(fabs(moec_qformat_bpw(&m.f) - (4.0 + 20.0 / 128.0)) < 1e-12);
    moec_qmatrix_free(&m);

    assert_int_equal(moec_qformat_sizes(3, 300, 9, 64, false, &cb, &sb, &zb, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "9"));
    assert_int_equal(moec_qformat_sizes(3, 300, 0, 64, false, &cb, &sb, &zb, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qformat_sizes(3, 300, 4, 0, false, &cb, &sb, &zb, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qformat_sizes(0, 300, 4, 32, false, &cb, &sb, &zb, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qmatrix_alloc(&m, 3, -1, 4, 32, false, &err), MOEC_ERR_ARG);
    moec_qmatrix_free(&m); /* an empty matrix frees safely */
}

static void test_validate_rejects(void **state)
{
    (void)state;
    moec_err err;
    moec_qmatrix m;
    assert_int_equal(moec_qmatrix_alloc(&m, 4, 100, 4, 32, false, &err), MOEC_OK);
    moec_qformat f = m.f;
    f.codes_bytes--;
    assert_int_equal(moec_qformat_validate(&f, "layers.0.w1", &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "layers.0.w1"));
    f = m.f;
    f.zeros = NULL;
    assert_int_equal(moec_qformat_validate(&f, "w", &err), MOEC_ERR_FORMAT);
    f = m.f;
    f.bits = 12;
    assert_int_equal(moec_qformat_validate(&f, "w", &err), MOEC_ERR_ARG);
    f = m.f;
    f.symmetric = true; /* sizes now disagree: zeros must be absent */
    assert_int_equal(moec_qformat_validate(&f, "w", &err), MOEC_ERR_FORMAT);
    m.scales[7] = 0x7e00; /* NaN */
    assert_int_equal(moec_qformat_validate(&m.f, "w", &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "row 1"));
    moec_qmatrix_free(&m);
}

/* Every bit width, group size (ragged last group), symmetric and
 * asymmetric: rows stored with set_row dequantize to exactly s*(q - z). */
static void test_matrix_roundtrip(void **state)
{
    (void)state;
    const int64_t rows = 3, cols = 300;
    moec_err err;
    for (int b = 1; b <= 8; b++)
        for (size_t gi = 0; gi < sizeof group_sizes / sizeof group_sizes[0]; gi++)
            for (int sym = 0; sym <= 1; sym++) {
                int group = group_sizes[gi] ? group_sizes[gi] : (int)cols;
                moec_qmatrix m;
                assert_int_equal(moec_qmatrix_alloc(&m, rows, cols, b, group, sym, &err), MOEC_OK);
                int64_t ng = moec_qformat_ngroups(&m.f);
                assert_int_equal(ng, (cols + group - 1) / group);
                uint8_t codes[300], zeros[300];
                uint16_t scales[300];
                float expect[3][300], got[3][300];
                for (int64_t r = 0; r < rows; r++) {
                    for (int64_t g = 0; g < ng; g++) {
                        scales[g] = moec_f32_to_f16(0.01f + (float)(tu_urand() % 1000) / 1000.0f);
                        zeros[g] = (uint8_t)(tu_urand() & ((1u << b) - 1));
                    }
                    for (int64_t c = 0; c < cols; c++) {
                        codes[c] = (uint8_t)(tu_urand() & ((1u << b) - 1));
                        int64_t g = c / group;
                        int z = sym ? 1 << (b - 1) : zeros[g];
                        expect[r][c] = moec_f16_to_f32(scales[g]) * (float)((int)codes[c] - z);
                    }
                    moec_qmatrix_set_row(&m, r, codes, scales, sym ? NULL : zeros);
                    for (int64_t g = 0; g < ng; g++) {
                        assert_int_equal(moec_qformat_zero(&m.f, r, g),
                                         sym ? 1 << (b - 1) : zeros[g]);
                        assert_true(moec_qformat_scale(&m.f, r, g) ==
                                    moec_f16_to_f32(scales[g]));
                    }
                }
                assert_int_equal(moec_qformat_validate(&m.f, "w", &err), MOEC_OK);
                moec_qformat_dequant_rows(&m.f, 0, rows, &got[0][0]);
                assert_memory_equal(got, expect, sizeof got);
                moec_qformat_dequant_row(&m.f, 1, got[0]);
                assert_memory_equal(got[0], expect[1], sizeof got[0]);
                moec_qmatrix_free(&m);
            }
}

/* Without clipping every weight is inside its group's range, so RTN's error
 * is at most half a step. */
static void test_rtn_bound(void **state)
{
    (void)state;
    const int64_t rows = 5, cols = 200;
    float *W = malloc(sizeof(float) * rows * cols), *D = malloc(sizeof(float) * rows * cols);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) /* per-row scales from 1e-3 to 10, some rows one-signed */
            W[r * cols + c] = (r == 3 ? fabsf(tu_frand()) : tu_frand()) * powf(10.0f, (float)r - 3.0f);
    for (int c = 10; c < 50; c++)
        W[2 * cols + c] = 0.0f; /* an all-zero group at G = 16 and G = 32 */
    moec_err err;
    for (int b = 1; b <= 8; b++)
        for (size_t gi = 0; gi < sizeof group_sizes / sizeof group_sizes[0]; gi++)
            for (int sym = 0; sym <= 1; sym++) {
                moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
                o.bits = b;
                o.group = group_sizes[gi];
                o.symmetric = sym;
                moec_qmatrix m;
                assert_int_equal(moec_rtn_quantize(W, rows, cols, &o, "w", &m, &err), MOEC_OK);
                moec_qformat_dequant_rows(&m.f, 0, rows, D);
                int64_t ng = moec_qformat_ngroups(&m.f);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++) {
                        float s = moec_qformat_scale(&m.f, r, c / m.f.group);
                        float e = fabsf(W[r * cols + c] - D[r * cols + c]);
                        assert_true(e <= 0.5f * s * (1.0f + 1e-6f));
                        if (W[r * cols + c] == 0.0f)
                            assert_true(D[r * cols + c] == 0.0f);
                    }
                assert_int_equal(ng, o.group ? (cols + o.group - 1) / o.group : 1);
                moec_qmatrix_free(&m);
            }
    free(W);
    free(D);
}

static double sq_err(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return s;
}

/* Heavy-tailed weights: the clipping search never loses and here wins. */
static void test_rtn_clip_search(void **state)
{
    (void)state;
    const int64_t rows = 16, cols = 256;
    float *W = malloc(sizeof(float) * rows * cols), *D = malloc(sizeof(float) * rows * cols);
    for (int64_t i = 0; i < rows * cols; i++) {
        float u = tu_frand();
        W[i] = u * u * u * 4.0f; /* mass near 0, a few large values */
    }
    moec_err err;
    for (int b = 2; b <= 4; b++) {
        moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
        o.bits = b;
        o.group = 64;
        moec_qmatrix plain, clip;
        assert_int_equal(moec_rtn_quantize(W, rows, cols, &o, "w", &plain, &err), MOEC_OK);
        o.clip_grid = 20;
        assert_int_equal(moec_rtn_quantize(W, rows, cols, &o, "w", &clip, &err), MOEC_OK);
        moec_qformat_dequant_rows(&plain.f, 0, rows, D);
        double e_plain = sq_err(W, D, (size_t)(rows * cols));
        moec_qformat_dequant_rows(&clip.f, 0, rows, D);
        double e_clip = sq_err(W, D, (size_t)(rows * cols));
        assert_true(e_clip < 0.95 * e_plain);
        moec_qmatrix_free(&plain);
        moec_qmatrix_free(&clip);
    }
    free(W);
    free(D);
}

static void test_rtn_errors(void **state)
{
    (void)state;
    float W[2 * 8] = {0};
    moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
    moec_qmatrix m;
    moec_err err;
    W[11] = NAN;
    assert_int_equal(moec_rtn_quantize(W, 2, 8, &o, "blk.3.w2", &m, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "blk.3.w2"));
    assert_null(m.codes);
    W[11] = 1e9f; /* 4-bit range over 15 steps: a scale beyond F16 */
    assert_int_equal(moec_rtn_quantize(W, 2, 8, &o, "w", &m, &err), MOEC_ERR_NUMERIC);
    W[11] = 0.0f;
    o.bits = 9;
    assert_int_equal(moec_rtn_quantize(W, 2, 8, &o, "w", &m, &err), MOEC_ERR_ARG);
    o.bits = 4;
    o.clip_grid = 10;
    o.clip_min_ratio = 0.0f;
    assert_int_equal(moec_rtn_quantize(W, 2, 8, &o, "w", &m, &err), MOEC_ERR_ARG);
}


typedef moec_status (*qgemm_fn)(const moec_qformat *, const float *, int64_t, float *,
                                int64_t, int64_t, int64_t, moec_err *);

/* Checks fn against dequantize + double-precision product, on rows [r0, r1)
 * only: entries outside the range must stay untouched. */
static void check_qgemm(qgemm_fn fn, const moec_qformat *f, int64_t n, int64_t r0, int64_t r1)
{
    const int64_t rows = f->rows, cols = f->cols;
    float *x = malloc(sizeof(float) * (size_t)(n * cols));
    float *y = malloc(sizeof(float) * (size_t)(n * rows));
    float *w = malloc(sizeof(float) * (size_t)(rows * cols));
    for (int64_t i = 0; i < n * cols; i++)
        x[i] = tu_frand();
    for (int64_t i = 0; i < n * rows; i++)
        y[i] = -12345.0f;
    moec_qformat_dequant_rows(f, 0, rows, w);
    moec_err err;
    assert_int_equal(fn(f, x, n, y, rows, r0, r1, &err), MOEC_OK);
    for (int64_t t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) {
            float got = y[t * rows + r];
            if (r < r0 || r >= r1) {
                assert_true(got == -12345.0f);
                continue;
            }
            double ref = 0, mag = 0;
            for (int64_t c = 0; c < cols; c++) {
                ref += (double)x[t * cols + c] * w[r * cols + c];
                mag += fabs((double)x[t * cols + c] * w[r * cols + c]);
            }
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30)) {
                print_error("n %lld t %lld r %lld: got %.9g ref %.9g (|x||w| %.3g) b %d g %d\n",
                            (long long)n, (long long)t, (long long)r, got, ref, mag, f->bits,
                            f->group);
                fail();
            }
        }
    free(x);
    free(y);
    free(w);
}

static void test_qgemm_matches_dequant(void **state)
{
    (void)state;
    const int groups[] = {16, 32, 128, 24, 20, 0};
    const int64_t ns[] = {1, 3, 4, 9};
    const int64_t rows = 7, cols = 200; /* 200 = ragged at 16, 32, 128, 24 */
    bool avx = strcmp(moec_qgemm_kernel(&(moec_qformat){.group = 32, .cols = 64}), "avx512") == 0;
    for (int b = 1; b <= 8; b++)
        for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++)
            for (int sym = 0; sym <= 1; sym++) {
                moec_qmatrix m;
                int group = groups[gi] ? groups[gi] : (int)cols;
                tu_random_qmatrix(&m, rows, cols, b, group, sym);
                for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                    check_qgemm(moec_qgemm_portable, &m.f, ns[ni], 0, rows);
                    check_qgemm(moec_qgemm, &m.f, ns[ni], 0, rows);
                    check_qgemm(moec_qgemm, &m.f, ns[ni], 2, 5);
                    if (avx && group % 8 == 0)
                        check_qgemm(moec_qgemm_avx512, &m.f, ns[ni], 1, rows);
                }
                if (group % 8 != 0)
                    assert_string_equal(moec_qgemm_kernel(&m.f), "portable");
                moec_qmatrix_free(&m);
            }
    /* One group per row with cols not a multiple of 8 still takes the fast path. */
    moec_qmatrix m;
    tu_random_qmatrix(&m, 5, 77, 3, 77, false);
    check_qgemm(moec_qgemm, &m.f, 5, 0, 5);
    if (avx)
        assert_string_equal(moec_qgemm_kernel(&m.f), "avx512");
    moec_qmatrix_free(&m);
}

static void test_qgemm_bad_args(void **state)
{
    (void)state;
    moec_qmatrix m;
    tu_random_qmatrix(&m, 4, 64, 4, 32, false);
    float x[64] = {0}, y[4];
    moec_err err;
    assert_int_equal(moec_qgemm(&m.f, x, 1, y, 4, 0, 5, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qgemm(&m.f, x, 1, y, 4, 3, 2, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qgemm(&m.f, x, 1, y, 3, 0, 4, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qgemm(&m.f, NULL, 1, y, 4, 0, 4, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qgemm(&m.f, x, -1, y, 4, 0, 4, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_qgemm(&m.f, x, 0, y, 4, 0, 4, &err), MOEC_OK);
    moec_qmatrix_free(&m);
    tu_random_qmatrix(&m, 4, 60, 4, 20, false);
    assert_int_equal(moec_qgemm_avx512(&m.f, x, 1, y, 4, 0, 4, &err), MOEC_ERR_UNSUPPORTED);
    moec_qmatrix_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_layout),
        cmocka_unit_test(test_pack_roundtrip),
        cmocka_unit_test(test_sizes_and_bpw),
        cmocka_unit_test(test_validate_rejects),
        cmocka_unit_test(test_matrix_roundtrip),
        cmocka_unit_test(test_rtn_bound),
        cmocka_unit_test(test_rtn_clip_search),
        cmocka_unit_test(test_rtn_errors),
        cmocka_unit_test(test_qgemm_matches_dequant),
        cmocka_unit_test(test_qgemm_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
