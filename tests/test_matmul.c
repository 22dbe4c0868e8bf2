#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "exec/matmul.h"

#define MAX_THREADS 3

static const char *const kernel_names[] = {"portable", "avx2", "avx512"};
static const moec_dtype dtypes[] = {MOEC_DT_F32, MOEC_DT_F16, MOEC_DT_BF16};

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* A weight matrix stored as dtype at an address that is 2-byte but not
 * 4-byte aligned, in a buffer of exactly the bytes it needs (so that any
 * read past the last row is caught by ASan), plus its float64 values. */
struct wmat {
    unsigned char *block;
    moec_tensor t;
    double *ref; /* [out][in] the stored values */
};

static void wmat_make(struct wmat *m, moec_dtype dt, int64_t out, int64_t in)
{
    size_t es = moec_dtype_size(dt), count = (size_t)(out * in);
    m->block = malloc(count * es + 2);
    assert_non_null(m->block);
    unsigned char *data = m->block + 2;
    float *vals = malloc((count + 1) * sizeof(float));
    m->ref = malloc((count + 1) * sizeof(double));
    assert_non_null(vals);
    assert_non_null(m->ref);
    for (size_t i = 0; i < count; i++)
        vals[i] = frand() * 0.5f;
    if (dt == MOEC_DT_F32) {
        memcpy(data, vals, count * es);
        for (size_t i = 0; i < count; i++)
            m->ref[i] = vals[i];
    } else {
        moec_from_f32(data, vals, dt, count);
        for (size_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, data + 2 * i, 2);
            m->ref[i] = dt == MOEC_DT_F16 ? moec_f16_to_f32(h) : moec_bf16_to_f32(h);
        }
    }
    free(vals);
    m->t = (moec_tensor){.dtype = dt, .ndim = 2, .shape = {out, in}, .data = data,
                         .nbytes = count * es};
}

static void wmat_free(struct wmat *m)
{
    free(m->block);
    free(m->ref);
}

/* x · W[r0:r1]ᵀ in float64, and sum|x||w| for each entry (the scale of the
 * rounding error a float32 sum may make). */
struct ref {
    int64_t n, cols;
    double *sum, *mag;
};

static struct ref ref_make(const float *x, int64_t ldx, int64_t n, const struct wmat *m,
                           int64_t r0, int64_t r1)
{
    int64_t in = m->t.shape[1], cols = r1 - r0;
    struct ref R = {n, cols, malloc((size_t)(n * cols + 1) * sizeof(double)),
                    malloc((size_t)(n * cols + 1) * sizeof(double))};
    assert_non_null(R.sum);
    assert_non_null(R.mag);
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = r0; r < r1; r++) {
            double s = 0, mag = 0;
            for (int64_t k = 0; k < in; k++) {
                double p = (double)x[i * ldx + k] * m->ref[r * in + k];
                s += p;
                mag += fabs(p);
            }
            R.sum[i * cols + (r - r0)] = s;
            R.mag[i * cols + (r - r0)] = mag;
        }
    return R;
}

static void ref_free(struct ref *R)
{
    free(R->sum);
    free(R->mag);
}

/* Checks y (ldy apart) against the reference (+ y0 when accumulating), each
 * entry within 1e-5 of sum|x||w| plus the float rounding of the added y0. */
static void check_ref(const float *y, int64_t ldy, const float *y0, const struct ref *R, bool acc,
                      const char *what)
{
    for (int64_t i = 0; i < R->n; i++)
        for (int64_t c = 0; c < R->cols; c++) {
            double base = acc ? y0[i * ldy + c] : 0.0;
            double want = base + R->sum[i * R->cols + c];
            double got = y[i * ldy + c];
            double tol = 1e-5 * R->mag[i * R->cols + c] + 1e-6 * fabs(base) + 1e-30;
            if (!(fabs(got - want) <= tol)) {
                fail_msg("%s: y[%lld][%lld] = %.9g, want %.9g (tol %.3g)", what, (long long)i, (long long)c,
                         got, want, tol);
            }
        }
}

static void check_result(const float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                         const struct wmat *m, int64_t r0, int64_t r1, const char *what)
{
    struct ref R = ref_make(x, ldx, n, m, r0, r1);
    check_ref(y, ldy, NULL, &R, false, what);
    ref_free(&R);
}

static float *fill(size_t count, float v)
{
    float *p = malloc((count ? count : 1) * sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < count; i++)
        p[i] = isnan(v) ? frand() : v;
    return p;
}

static moec_pool *pools[MAX_THREADS + 1];

static int setup(void **state)
{
    (void)state;
    for (int t = 1; t <= MAX_THREADS; t++) {
        pools[t] = moec_pool_new(t);
        if (!pools[t])
            return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    moec_matmul_set_kernel(NULL);
    for (int t = 1; t <= MAX_THREADS; t++)
        moec_pool_free(pools[t]);
    return 0;
}

/* One shape: every dtype, kernel family the CPU has, pool size, accumulate
 * mode and the given n's, for the full matrix. */
static void run_shape(int64_t out, int64_t in, const int64_t *ns, int n_ns)
{
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
        struct wmat m;
        wmat_make(&m, dtypes[d], out, in);
        for (int ni = 0; ni < n_ns; ni++) {
            int64_t n = ns[ni];
            float *x = fill((size_t)(n * in), NAN);
            float *y0 = fill((size_t)(n * out), NAN);
            float *y = fill((size_t)(n * out), 0);
            struct ref R = ref_make(x, in, n, &m, 0, out);
            for (size_t kn = 0; kn < 3; kn++) {
                if (!moec_matmul_set_kernel(kernel_names[kn]))
                    continue;
                for (int t = 1; t <= MAX_THREADS; t++)
                    for (int acc = 0; acc < 2; acc++) {
                        /* NaN where y is to be overwritten: it must not be read */
                        for (int64_t e = 0; e < n * out; e++)
                            y[e] = acc ? y0[e] : NAN;
                        moec_matmul(pools[t], y, x, n, &m.t, acc);
                        char what[160];
                        snprintf(what, sizeof what, "%s %s W[%lld][%lld] n=%lld threads=%d acc=%d",
                                 kernel_names[kn], moec_dtype_name(dtypes[d]), (long long)out,
                                 (long long)in, (long long)n, t, acc);
                        check_ref(y, out, y0, &R, acc, what);
                    }
            }
            moec_matmul_set_kernel(NULL);
            ref_free(&R);
            free(x);
            free(y0);
            free(y);
        }
        wmat_free(&m);
    }
}

static void test_odd_shapes(void **state)
{
    (void)state;
    static const int64_t ns[] = {1, 2, 3, 4, 5, 7, 8, 9, 17, 130};
    static const int64_t shapes[][2] = {{7, 33}, {1, 1}, {33, 7}, {16, 16}, {21, 47}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        run_shape(shapes[s][0], shapes[s][1], ns, (int)(sizeof ns / sizeof ns[0]));
}

/* Shapes of the mixtral-tiny layers (scaled down in out where the kernel
 * does not care) and enough rows that every worker gets several tiles. */
static void test_model_shapes(void **state)
{
    (void)state;
    static const int64_t ns[] = {1, 2, 4, 5, 17, 64};
    run_shape(128, 256, ns, 6);
    run_shape(100, 512, ns, 6);
    static const int64_t big_ns[] = {1, 3, 130};
    run_shape(300, 520, big_ns, 3);
    /* rows long enough to be cut into K blocks */
    static const int64_t long_ns[] = {1, 5, 9};
    run_shape(20, 1100, long_ns, 3);
}

/* Row ranges and strided x/y: only the asked-for block of y changes. */
static void test_rows_and_strides(void **state)
{
    (void)state;
    const int64_t out = 70, in = 45, ldx = 50, ldy = 40;
    const int64_t ranges[][2] = {{0, 70}, {3, 38}, {16, 48}, {69, 70}, {10, 10}};
    const int64_t ns[] = {1, 3, 6, 20};
    for (size_t d = 0; d < 3; d++) {
        struct wmat m;
        wmat_make(&m, dtypes[d], out, in);
        for (size_t ni = 0; ni < 4; ni++) {
            int64_t n = ns[ni];
            float *x = fill((size_t)(n * ldx), NAN);
            float *y0 = fill((size_t)(n * ldy), NAN);
            float *y = fill((size_t)(n * ldy), 0);
            for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
                int64_t r0 = ranges[ri][0], r1 = ranges[ri][1], w = r1 - r0;
                if (w > ldy)
                    w = ldy, r1 = r0 + ldy;
                struct ref R = ref_make(x, ldx, n, &m, r0, r1);
                for (size_t kn = 0; kn < 3; kn++) {
                    if (!moec_matmul_set_kernel(kernel_names[kn]))
                        continue;
                    for (int t = 1; t <= MAX_THREADS; t += 2)
                        for (int acc = 0; acc < 2; acc++) {
                            memcpy(y, y0, (size_t)(n * ldy) * sizeof(float));
                            moec_matmul_ex(pools[t], y, ldy, x, ldx, n, &m.t, r0, r1, acc);
                            char what[160];
                            snprintf(what, sizeof what, "%s %s rows [%lld,%lld) n=%lld t=%d acc=%d",
                                     kernel_names[kn], moec_dtype_name(dtypes[d]), (long long)r0,
                                     (long long)r1, (long long)n, t, acc);
                            check_ref(y, ldy, y0, &R, acc, what);
                            for (int64_t i = 0; i < n; i++)
                                for (int64_t c = w; c < ldy; c++)
                                    assert_true(y[i * ldy + c] == y0[i * ldy + c]);
                        }
                }
                moec_matmul_set_kernel(NULL);
                ref_free(&R);
            }
            /* the contiguous form of a row range */
            float *yc = fill((size_t)(n * 30), 0);
            float *xc = fill((size_t)(n * in), NAN);
            moec_matmul_rows(pools[2], yc, xc, n, &m.t, 5, 35, false);
            check_result(yc, 30, xc, in, n, &m, 5, 35, "moec_matmul_rows");
            free(yc);
            free(xc);
            free(x);
            free(y0);
            free(y);
        }
        wmat_free(&m);
    }
}

static void test_degenerate(void **state)
{
    (void)state;
    struct wmat m;
    wmat_make(&m, MOEC_DT_BF16, 4, 8);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[4] = {9, 9, 9, 9};
    moec_matmul(pools[2], y, x, 0, &m.t, false);
    for (int i = 0; i < 4; i++)
        assert_true(y[i] == 9.0f);
    /* no input features: an empty sum */
    moec_tensor empty = {.dtype = MOEC_DT_F16, .ndim = 2, .shape = {4, 0}, .data = m.t.data};
    moec_matmul(pools[2], y, x, 1, &empty, true);
    for (int i = 0; i < 4; i++)
        assert_true(y[i] == 9.0f);
    moec_matmul(pools[2], y, x, 1, &empty, false);
    for (int i = 0; i < 4; i++)
        assert_true(y[i] == 0.0f);
    /* out-of-contract ranges and strides leave y alone */
    for (int i = 0; i < 4; i++)
        y[i] = 9.0f;
    moec_matmul_rows(pools[2], y, x, 1, &m.t, 2, 5, false);
    moec_matmul_rows(pools[2], y, x, 1, &m.t, -1, 2, false);
    moec_matmul_ex(pools[2], y, 4, x, 7, 1, &m.t, 0, 4, false);
    moec_matmul_ex(pools[2], y, 3, x, 8, 1, &m.t, 0, 4, false);
    moec_matmul_ex(pools[2], NULL, 4, x, 8, 1, &m.t, 0, 4, false);
    moec_matmul(pools[2], y, x, 1, NULL, false);
    moec_tensor odd = m.t;
    odd.dtype = MOEC_DT_I8;
    moec_matmul(pools[2], y, x, 1, &odd, false);
    odd = m.t;
    odd.data = NULL;
    moec_matmul(pools[2], y, x, 1, &odd, false);
    for (int i = 0; i < 4; i++)
        assert_true(y[i] == 9.0f);
    /* no pool: runs on the caller, sgemm path included */
    float *xb = fill(40 * 8, NAN), *yb = fill(40 * 4, 0);
    moec_matmul(NULL, yb, xb, 40, &m.t, false);
    check_result(yb, 4, xb, 8, 40, &m, 0, 4, "no pool");
    moec_matmul(NULL, yb, xb, 1, &m.t, false);
    check_result(yb, 4, xb, 8, 1, &m, 0, 4, "no pool n=1");
    free(xb);
    free(yb);
    wmat_free(&m);
}

/* Callers sharing one pool from several threads, and a product started
 * from inside a run on the same pool: the pool runs one of them at a time
 * and the others on their own caller, without the pool's scratch (which
 * the sgemm path of the avx2 and portable kernels would otherwise share). */
struct share_arg {
    const struct wmat *m;
    const struct ref *R;
    const float *x;
    float *y;
    int64_t n;
    int reps;
};

static void *share_thread(void *varg)
{
    struct share_arg *a = varg;
    for (int r = 0; r < a->reps; r++) {
        moec_matmul(pools[2], a->y, a->x, a->n, &a->m->t, false);
        check_ref(a->y, a->m->t.shape[0], NULL, a->R, false, "concurrent caller");
    }
    return NULL;
}

static void nested_fn(void *ctx, int thread, int n_threads)
{
    (void)n_threads;
    if (thread == 0)
        share_thread(ctx);
}

static void test_shared_pool(void **state)
{
    (void)state;
    const int64_t out = 96, in = 64, n = 70;
    struct wmat m;
    wmat_make(&m, MOEC_DT_BF16, out, in);
    float *x = fill((size_t)(n * in), NAN);
    struct ref R = ref_make(x, in, n, &m, 0, out);
    float *ys[3];
    for (int i = 0; i < 3; i++)
        ys[i] = fill((size_t)(n * out), 0);
    for (size_t kn = 0; kn < 3; kn++) {
        if (!moec_matmul_set_kernel(kernel_names[kn]))
            continue;
        struct share_arg args[3];
        for (int i = 0; i < 3; i++)
            args[i] = (struct share_arg){&m, &R, x, ys[i], n, 20};
        pthread_t th[2];
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_create(&th[i], NULL, share_thread, &args[i]), 0);
        for (int r = 0; r < 5; r++)
            moec_pool_run(pools[2], nested_fn, &args[2]);
        for (int i = 0; i < 2; i++)
            pthread_join(th[i], NULL);
    }
    moec_matmul_set_kernel(NULL);
    for (int i = 0; i < 3; i++)
        free(ys[i]);
    free(x);
    ref_free(&R);
    wmat_free(&m);
}

static void test_check(void **state)
{
    (void)state;
    uint16_t data[12] = {0};
    moec_err err;
    moec_tensor t = {.dtype = MOEC_DT_BF16, .ndim = 2, .shape = {3, 4}, .data = data,
                     .nbytes = sizeof data};
    assert_int_equal(moec_matmul_check(&t, 4, &err), MOEC_OK);
    assert_int_equal(moec_matmul_check(&t, -1, &err), MOEC_OK);
    assert_int_equal(moec_matmul_check(&t, 5, &err), MOEC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "expected 5"));
    moec_tensor bad = t;
    bad.ndim = 3;
    assert_int_equal(moec_matmul_check(&bad, 4, &err), MOEC_ERR_SHAPE);
    bad = t;
    bad.dtype = MOEC_DT_I8;
    assert_int_equal(moec_matmul_check(&bad, 4, &err), MOEC_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "I8"));
    bad = t;
    bad.nbytes = 23;
    assert_int_equal(moec_matmul_check(&bad, 4, &err), MOEC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "24"));
    bad = t;
    bad.dtype = MOEC_DT_F32;
    assert_int_equal(moec_matmul_check(&bad, 4, &err), MOEC_ERR_SHAPE);
    bad = t;
    bad.data = NULL;
    assert_int_equal(moec_matmul_check(&bad, 4, &err), MOEC_ERR_ARG);
    bad = t;
    bad.shape[0] = INT64_MAX / 2;
    assert_int_equal(moec_matmul_check(&bad, 4, &err), MOEC_ERR_SHAPE);
    assert_int_equal(moec_matmul_check(NULL, 4, &err), MOEC_ERR_ARG);
}

static void test_kernel_switch(void **state)
{
    (void)state;
    moec_matmul_force_portable(true);
    assert_string_equal(moec_matmul_kernel_name(), "portable");
    moec_matmul_force_portable(false);
    assert_false(moec_matmul_set_kernel("sse9"));
    assert_true(moec_matmul_set_kernel("portable"));
    assert_string_equal(moec_matmul_kernel_name(), "portable");
    assert_true(moec_matmul_set_kernel(NULL));
    const char *best = moec_matmul_kernel_name();
    assert_true(strcmp(best, "portable") == 0 || strcmp(best, "avx2") == 0 ||
                strcmp(best, "avx512") == 0);
    /* what the CPU has can be chosen back */
    assert_true(moec_matmul_set_kernel(best));
    char have[64] = "";
    for (size_t kn = 0; kn < 3; kn++)
        if (moec_matmul_set_kernel(kernel_names[kn])) {
            strcat(have, " ");
            strcat(have, kernel_names[kn]);
        }
    print_message("kernel families this CPU runs (all were tested):%s\n", have);
    moec_matmul_set_kernel(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_odd_shapes),
        cmocka_unit_test(test_model_shapes),
        cmocka_unit_test(test_rows_and_strides),
        cmocka_unit_test(test_degenerate),
        cmocka_unit_test(test_shared_pool),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_kernel_switch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
