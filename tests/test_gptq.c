/* Tests for quant/gptq.c: Hessian accumulation, GPTQ against RTN, the loss
 * estimate, lazy-batch equivalence, dead columns, damping retries, errors. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quant/gptq.h"
#include "core/qformat.h"
#include "quant/rtn.h"

static uint64_t rng = 0x13198a2e03707344ull;

static double urand01(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}

static float gauss(void)
{
    return (float)(sqrt(-2.0 * log(urand01())) * cos(6.283185307179586 * urand01()));
}

/* n inputs of dimension cols driven by k latent factors plus a little noise:
 * strongly correlated channels, the case GPTQ's error feedback exploits. */
static float *correlated_inputs(int64_t n, int64_t cols, int k, float noise)
{
    float *M = malloc(sizeof(float) * (size_t)(k * cols));
    float *X = malloc(sizeof(float) * (size_t)(n * cols));
    for (int64_t i = 0; i < k * cols; i++)
        M[i] = gauss();
    for (int64_t t = 0; t < n; t++) {
        float z[16];
        for (int j = 0; j < k; j++)
            z[j] = gauss();
        for (int64_t c = 0; c < cols; c++) {
            float v = noise * gauss();
            for (int j = 0; j < k; j++)
                v += z[j] * M[j * cols + c];
            X[t * cols + c] = v;
        }
    }
    free(M);
    return X;
}

static float *random_weights(int64_t rows, int64_t cols)
{
    float *W = malloc(sizeof(float) * (size_t)(rows * cols));
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = 0.1f * gauss();
    return W;
}

static double *hessian(const float *X, int64_t n, int64_t cols)
{
    double *H = calloc((size_t)(cols * cols), sizeof *H);
    moec_err err;
    assert_int_equal(moec_hessian_accumulate(H, X, n, cols, &err), MOEC_OK);
    return H;
}

static double out_err(const float *X, int64_t n, const float *W, const moec_qmatrix *m)
{
    double e;
    moec_err err;
    assert_int_equal(moec_quant_output_error(X, n, W, &m->f, &e, &err), MOEC_OK);
    return e;
}

static void test_hessian_accumulate(void **state)
{
    (void)state;
    const int64_t n = 300, cols = 9; /* two dsyrk chunks */
    float *X = correlated_inputs(n, cols, 3, 0.5f);
    double *H = malloc(sizeof(double) * cols * cols);
    for (int64_t i = 0; i < cols * cols; i++)
        H[i] = 7.0;
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = i; j < cols; j++)
            H[i * cols + j] = 0.0;
    moec_err err;
    assert_int_equal(moec_hessian_accumulate(H, X, 100, cols, &err), MOEC_OK);
    assert_int_equal(moec_hessian_accumulate(H, X + 100 * cols, n - 100, cols, &err), MOEC_OK);
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j < cols; j++) {
            if (j < i) {
                assert_true(H[i * cols + j] == 7.0);
                continue;
            }
            double ref = 0;
            for (int64_t t = 0; t < n; t++)
                ref += (double)X[t * cols + i] * X[t * cols + j];
            assert_true(fabs(H[i * cols + j] - ref) <= 1e-9 * (fabs(ref) + 1));
        }
    assert_int_equal(moec_hessian_accumulate(H, X, -1, cols, &err), MOEC_ERR_ARG);
    free(X);
    free(H);
}

/* The headline property: at 3 bits on correlated inputs GPTQ's output error
 * is well below RTN's, in every group mode. */
static void test_gptq_beats_rtn(void **state)
{
    (void)state;
    const int64_t n = 1024, rows = 24, cols = 176; /* 2 blocks, ragged last group */
    float *X = correlated_inputs(n, cols, 8, 0.05f);
    float *W = random_weights(rows, cols);
    double *H = hessian(X, n, cols);
    moec_err err;
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = 3;
    o.q.group = 32;
    moec_qmatrix rtn;
    assert_int_equal(moec_rtn_quantize(W, rows, cols, &o.q, "w", &rtn, &err), MOEC_OK);
    double e_rtn = out_err(X, n, W, &rtn);
    for (int act = 0; act <= 1; act++)
        for (int stat = 0; stat <= 1; stat++) {
            o.act_order = act;
            o.static_groups = stat;
            moec_qmatrix q;
            moec_gptq_report rep;
            assert_int_equal(moec_gptq_quantize(W, rows, cols, H, n, &o, "w", &q, &rep, &err),
                             MOEC_OK);
            double e = out_err(X, n, W, &q);
            print_message("act_order %d static %d: GPTQ %.4g RTN %.4g (ratio %.3f)\n", act,
                          stat, e, e_rtn, e / e_rtn);
            assert_true(e < 0.5 * e_rtn);
            assert_int_equal(rep.retries, 0);
            assert_true(rep.percdamp_used == 0.01);
            assert_int_equal(q.f.bits, 3);
            assert_int_equal(q.f.group, 32);
            moec_qmatrix_free(&q);
        }
    moec_qmatrix_free(&rtn);
    free(X);
    free(W);
    free(H);
}

/* With almost no damping the reported loss is the output error per sample. */
static void test_gptq_loss_estimate(void **state)
{
    (void)state;
    const int64_t n = 600, rows = 10, cols = 140;
    float *X = correlated_inputs(n, cols, 6, 0.2f);
    float *W = random_weights(rows, cols);
    double *H = hessian(X, n, cols);
    moec_err err;
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = 3;
    o.q.group = 64;
    o.percdamp = 1e-6;
    for (int act = 0; act <= 1; act++) {
        o.act_order = act;
        moec_qmatrix q;
        moec_gptq_report rep;
        assert_int_equal(moec_gptq_quantize(W, rows, cols, H, n, &o, "w", &q, &rep, &err), MOEC_OK);
        double e = out_err(X, n, W, &q);
        assert_true(fabs(rep.loss * (double)n - e) <= 0.02 * e);
        double eh;
        assert_int_equal(moec_quant_output_error_h(H, W, &q.f, &eh, &err), MOEC_OK);
        assert_true(fabs(eh - e) <= 1e-4 * e);
        moec_qmatrix_free(&q);
    }
    free(X);
    free(W);
    free(H);
}

/* An exactly diagonal Hessian leaves nothing to compensate: GPTQ must give
 * RTN's bytes, act-order or not. */
static void test_gptq_identity_is_rtn(void **state)
{
    (void)state;
    const int64_t rows = 12, cols = 150;
    float *W = random_weights(rows, cols);
    double *H = calloc((size_t)(cols * cols), sizeof *H);
    for (int64_t i = 0; i < cols; i++)
        H[i * cols + i] = 500.0;
    moec_err err;
    for (int b = 2; b <= 4; b++)
        for (int act = 0; act <= 1; act++) {
            moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
            o.q.bits = b;
            o.q.group = 32;
            o.q.symmetric = b == 4;
            o.act_order = act;
            moec_qmatrix g, r;
            assert_int_equal(moec_gptq_quantize(W, rows, cols, H, 500, &o, "w", &g, NULL, &err),
                             MOEC_OK);
            assert_int_equal(moec_rtn_quantize(W, rows, cols, &o.q, "w", &r, &err), MOEC_OK);
            assert_memory_equal(g.codes, r.codes, g.f.codes_bytes);
            assert_memory_equal(g.scales, r.scales, g.f.scales_bytes);
            if (!o.q.symmetric)
                assert_memory_equal(g.zeros, r.zeros, g.f.zeros_bytes);
            moec_qmatrix_free(&g);
            moec_qmatrix_free(&r);
        }
    free(W);
    free(H);

    /* Independent inputs: little to gain, and GPTQ is no worse than RTN. */
    const int64_t n = 3000, c2 = 64;
    float *X = malloc(sizeof(float) * n * c2);
    for (int64_t i = 0; i < n * c2; i++)
        X[i] = gauss();
    W = random_weights(rows, c2);
    H = hessian(X, n, c2);
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = 3;
    o.q.group = 32;
    moec_qmatrix g, r;
    assert_int_equal(moec_gptq_quantize(W, rows, c2, H, n, &o, "w", &g, NULL, &err), MOEC_OK);
    assert_int_equal(moec_rtn_quantize(W, rows, c2, &o.q, "w", &r, &err), MOEC_OK);
    double eg = out_err(X, n, W, &g), er = out_err(X, n, W, &r);
    print_message("iid inputs: GPTQ %.4g RTN %.4g\n", eg, er);
    assert_true(eg <= er * 1.02);
    assert_true(eg >= er * 0.7);
    moec_qmatrix_free(&g);
    moec_qmatrix_free(&r);
    free(X);
    free(W);
    free(H);
}

/* Lazy batch updates (and, with act-order, the pending-update correction at
 * group entry) are exact rewrites: the block size must not change the result
 * beyond float rounding. */
static void test_gptq_blocksize_invariance(void **state)
{
    (void)state;
    const int64_t n = 500, rows = 16, cols = 200;
    float *X = correlated_inputs(n, cols, 8, 0.1f);
    float *W = random_weights(rows, cols);
    double *H = hessian(X, n, cols);
    moec_err err;
    const int blocks[] = {7, 16, 128, 200};
    for (int act = 0; act <= 1; act++) {
        moec_qmatrix q[4];
        for (int i = 0; i < 4; i++) {
            moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
            o.q.bits = 4;
            o.q.group = 32;
            o.act_order = act;
            o.blocksize = blocks[i];
            assert_int_equal(moec_gptq_quantize(W, rows, cols, H, n, &o, "w", &q[i], NULL, &err),
                             MOEC_OK);
        }
        double e0 = out_err(X, n, W, &q[0]);
        for (int i = 1; i < 4; i++) {
            double e = out_err(X, n, W, &q[i]);
            assert_true(fabs(e - e0) <= 0.01 * e0);
            int64_t same = 0, total = rows * cols;
            uint8_t a[200], b[200];
            for (int64_t r = 0; r < rows; r++) {
                size_t stride = moec_qformat_packed_bytes(cols, 4);
                moec_qunpack(a, q[0].codes + r * stride, 0, cols, 4);
                moec_qunpack(b, q[i].codes + r * stride, 0, cols, 4);
                for (int64_t c = 0; c < cols; c++)
                    same += a[c] == b[c];
            }
            assert_true((double)same >= 0.99 * (double)total);
        }
        for (int i = 0; i < 4; i++)
            moec_qmatrix_free(&q[i]);
    }
    free(X);
    free(W);
    free(H);
}

/* One factor serves several bit widths; more bits, less error. */
static void test_gptq_hinv_reuse(void **state)
{
    (void)state;
    const int64_t n = 400, rows = 8, cols = 96;
    float *X = correlated_inputs(n, cols, 6, 0.1f);
    float *W = random_weights(rows, cols);
    double *H = hessian(X, n, cols);
    double *Hcopy = malloc(sizeof(double) * cols * cols);
    memcpy(Hcopy, H, sizeof(double) * cols * cols);
    moec_err err;
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.group = 32;
    o.act_order = true;
    moec_gptq_hinv *h;
    moec_gptq_report rep;
    assert_int_equal(moec_gptq_hinv_new(H, cols, n, &o, "w", &h, &rep, &err), MOEC_OK);
    assert_memory_equal(H, Hcopy, sizeof(double) * cols * cols);
    double prev = INFINITY;
    for (int b = 1; b <= 5; b++) {
        o.q.bits = b;
        moec_qmatrix q;
        assert_int_equal(moec_gptq_quantize_with(W, rows, cols, h, &o, "w", &q, &rep, &err),
                         MOEC_OK);
        double e = out_err(X, n, W, &q);
        assert_true(e < prev);
        prev = e;
        moec_qmatrix_free(&q);
    }
    moec_qmatrix q;
    assert_int_equal(moec_gptq_quantize_with(W, rows, cols + 1, h, &o, "blk.0.w3", &q, NULL, &err),
                     MOEC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "blk.0.w3"));
    moec_gptq_hinv_free(h);
    free(X);
    free(W);
    free(H);
    free(Hcopy);
}

/* A channel that is always zero: reported, and its weights become exact 0. */
static void test_gptq_dead_columns(void **state)
{
    (void)state;
    const int64_t n = 300, rows = 6, cols = 40;
    float *X = correlated_inputs(n, cols, 5, 0.3f);
    for (int64_t t = 0; t < n; t++)
        X[t * cols + 13] = X[t * cols + 27] = 0.0f;
    float *W = random_weights(rows, cols);
    double *H = hessian(X, n, cols);
    moec_err err;
    for (int act = 0; act <= 1; act++) {
        moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
        o.q.bits = 3;
        o.q.group = 16;
        o.act_order = act;
        moec_qmatrix q;
        moec_gptq_report rep;
        assert_int_equal(moec_gptq_quantize(W, rows, cols, H, n, &o, "w", &q, &rep, &err), MOEC_OK);
        assert_int_equal(rep.dead_cols, 2);
        float row[40];
        for (int64_t r = 0; r < rows; r++) {
            moec_qformat_dequant_row(&q.f, r, row);
            assert_true(row[13] == 0.0f && row[27] == 0.0f);
        }
        moec_qmatrix_free(&q);
    }
    free(X);
    free(W);
    free(H);
}

/* An indefinite Hessian: damping retries rescue it; with no retries the
 * failure names the matrix. */
static void test_gptq_damping_retry(void **state)
{
    (void)state;
    const double H[4] = {1.0, 10.0, 0.0 /* lower: ignored */, 1.0};
    const float W[4] = {0.5f, -0.25f, 0.125f, 1.0f};
    moec_err err;
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = 4;
    moec_qmatrix q;
    moec_gptq_report rep;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 2, &o, "layers.1.experts.3.w2", &q, &rep, &err),
                     MOEC_OK);
    assert_true(rep.retries >= 1 && rep.retries <= 3);
    assert_true(rep.percdamp_used > 0.01);
    moec_qmatrix_free(&q);
    o.damp_retries = 0;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 2, &o, "layers.1.experts.3.w2", &q, &rep, &err),
                     MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "layers.1.experts.3.w2"));
    assert_non_null(strstr(err.msg, "positive definite"));
    assert_null(q.codes);
}

/* The factor built in the Hessian's own memory quantizes bit for bit as the
 * copying one: plain, with act-order (a copy after all), after damping
 * retries (H restored from its mirror), and with a dead column. */
static bool same_q(const moec_qmatrix *a, const moec_qmatrix *b)
{
    return a->f.codes_bytes == b->f.codes_bytes && !memcmp(a->f.codes, b->f.codes, a->f.codes_bytes) &&
           !memcmp(a->f.scales, b->f.scales, a->f.scales_bytes) &&
           (a->f.symmetric || !memcmp(a->f.zeros, b->f.zeros, a->f.zeros_bytes));
}

static void check_from(const double *H, int64_t n, const float *W, int64_t rows, int64_t cols,
                       moec_gptq_opts o, int want_retries)
{
    moec_err err;
    moec_gptq_hinv *a, *b;
    moec_gptq_report ra, rb;
    assert_int_equal(moec_gptq_hinv_new(H, cols, n, &o, "w", &a, &ra, &err), MOEC_OK);
    double *Hc = malloc(sizeof(double) * cols * cols);
    memcpy(Hc, H, sizeof(double) * cols * cols);
    assert_int_equal(moec_gptq_hinv_from(Hc, cols, n, &o, "w", &b, &rb, &err), MOEC_OK); /* takes Hc */
    assert_int_equal(ra.retries, rb.retries);
    assert_true(ra.retries >= want_retries);
    assert_true(ra.damp == rb.damp);
    moec_qmatrix qa, qb;
    assert_int_equal(moec_gptq_quantize_with(W, rows, cols, a, &o, "w", &qa, NULL, &err), MOEC_OK);
    assert_int_equal(moec_gptq_quantize_with(W, rows, cols, b, &o, "w", &qb, NULL, &err), MOEC_OK);
    assert_true(same_q(&qa, &qb));
    moec_qmatrix_free(&qa), moec_qmatrix_free(&qb);
    moec_gptq_hinv_free(a), moec_gptq_hinv_free(b);
}

static void test_gptq_hinv_in_place(void **state)
{
    (void)state;
    const int64_t n = 300, rows = 7, cols = 72;
    float *X = correlated_inputs(n, cols, 6, 0.1f);
    for (int64_t t = 0; t < n; t++)
        X[t * cols + 5] = 0.0f;
    float *W = random_weights(rows, cols);
    double *H = hessian(X, n, cols);
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = 3;
    o.q.group = 32;
    check_from(H, n, W, rows, cols, o, 0);
    o.act_order = true;
    check_from(H, n, W, rows, cols, o, 0);
    /* indefinite: needs damping retries */
    const double Hi[4] = {1.0, 10.0, 0.0, 1.0};
    const float Wi[4] = {0.5f, -0.25f, 0.125f, 1.0f};
    o = MOEC_GPTQ_OPTS_DEFAULT;
    check_from(Hi, 2, Wi, 2, 2, o, 1);
    /* a failure frees H and says why */
    moec_err err;
    moec_gptq_hinv *h;
    double *Hf = malloc(sizeof Hi);
    memcpy(Hf, Hi, sizeof Hi);
    o.damp_retries = 0;
    assert_int_equal(moec_gptq_hinv_from(Hf, 2, 2, &o, "x.w2", &h, NULL, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "x.w2"));
    free(X), free(W), free(H);
}

static void test_gptq_bad_input(void **state)
{
    (void)state;
    double H[4] = {2.0, 0.5, 0.0, 3.0};
    const float W[4] = {0.5f, -0.25f, 0.125f, 1.0f};
    moec_err err;
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    moec_qmatrix q;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 0, &o, "e7", &q, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "RTN"));
    H[1] = NAN;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 4, &o, "e7", &q, NULL, &err), MOEC_ERR_NUMERIC);
    H[1] = 0.5;
    H[3] = -1.0;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 4, &o, "e7", &q, NULL, &err), MOEC_ERR_NUMERIC);
    H[3] = 0.0;
    H[0] = 0.0;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 4, &o, "e7", &q, NULL, &err), MOEC_ERR_NUMERIC);
    H[0] = 2.0;
    H[3] = 3.0;
    o.q.bits = 0;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 4, &o, "e7", &q, NULL, &err), MOEC_ERR_ARG);
    o = MOEC_GPTQ_OPTS_DEFAULT;
    o.blocksize = 0;
    assert_int_equal(moec_gptq_quantize(W, 2, 2, H, 4, &o, "e7", &q, NULL, &err), MOEC_ERR_ARG);
    o = MOEC_GPTQ_OPTS_DEFAULT;
    float Wn[4] = {0.5f, INFINITY, 0.0f, 1.0f};
    assert_int_equal(moec_gptq_quantize(Wn, 2, 2, H, 4, &o, "e7", &q, NULL, &err), MOEC_ERR_NUMERIC);
    assert_null(q.codes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hessian_accumulate),
        cmocka_unit_test(test_gptq_beats_rtn),
        cmocka_unit_test(test_gptq_loss_estimate),
        cmocka_unit_test(test_gptq_identity_is_rtn),
        cmocka_unit_test(test_gptq_blocksize_invariance),
        cmocka_unit_test(test_gptq_hinv_reuse),
        cmocka_unit_test(test_gptq_dead_columns),
        cmocka_unit_test(test_gptq_damping_retry),
        cmocka_unit_test(test_gptq_bad_input),
        cmocka_unit_test(test_gptq_hinv_in_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
