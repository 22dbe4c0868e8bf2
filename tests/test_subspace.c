/* Tests for merge/subspace.c (Sub-MoE joint SVD merging) and merge/average.c. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "merge/average.h"
#include "merge/subspace.h"

static uint64_t rng_state;

static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static float *rand_matrix(int rows, int cols, uint64_t seed)
{
    float *w = malloc((size_t)rows * cols * sizeof *w);
    assert_non_null(w);
    rng_state = seed;
    for (int i = 0; i < rows * cols; i++)
        w[i] = frand();
    return w;
}

/* rows x cols of rank t: B [rows][t] * C [t][cols] */
static float *low_rank_matrix(int rows, int cols, int t, uint64_t seed)
{
    float *B = rand_matrix(rows, t, seed), *C = rand_matrix(t, cols, seed + 1);
    float *w = calloc((size_t)rows * cols, sizeof *w);
    assert_non_null(w);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            for (int k = 0; k < t; k++)
                w[i * cols + j] += B[i * t + k] * C[k * cols + j];
    free(B);
    free(C);
    return w;
}

static moec_tensor view(const float *w, int rows, int cols)
{
    moec_tensor t = {0};
    t.dtype = MOEC_DT_F32;
    t.ndim = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.data = w;
    t.nbytes = (size_t)rows * cols * sizeof(float);
    return t;
}

static double rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0.0 ? den : 1.0));
}

static moec_subspace_opts with_rank(moec_share_side side, int rank)
{
    moec_subspace_opts o = MOEC_SUBSPACE_OPTS_DEFAULT;
    o.share = side;
    o.rank = rank;
    return o;
}

/* A group of identical experts merges back to that expert, at full rank and
 * at the expert's true rank, for both shared sides, both precisions, and
 * shapes that put the shared basis in either of gesdd's two output arrays
 * (tall and wide concatenations). */
static void test_identical_members(void **state)
{
    (void)state;
    const int shapes[][2] = {{12, 3}, {4, 9}, {10, 10}, {2, 9}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], cols = shapes[s][1];
        float *full = rand_matrix(rows, cols, 11 + s), *lr = low_rank_matrix(rows, cols, 2, 31 + s);
        float *out = malloc((size_t)rows * cols * sizeof *out);
        for (int variant = 0; variant < 4; variant++) {
            for (int which = 0; which < 2; which++) {
                const float *W = which ? lr : full;
                moec_tensor mem[3] = {view(W, rows, cols), view(W, rows, cols), view(W, rows, cols)};
                float freq[3] = {3, 1, 2};
                double rel[3];
                moec_subspace_report rep = {.member_rel_err = rel};
                moec_subspace_opts o = with_rank((moec_share_side)(variant % 2), which ? 2 : 1000);
                o.precision = variant / 2 ? MOEC_SVD_DOUBLE : MOEC_SVD_FLOAT;
                moec_err err;
                assert_int_equal(moec_subspace_merge(mem, 3, freq, &o, out, NULL, &rep, &err), MOEC_OK);
                assert_true(rel_diff(out, W, (size_t)rows * cols) < 1e-4);
                for (int e = 0; e < 3; e++)
                    assert_true(rel[e] < 1e-4);
                assert_int_equal(rep.rank, which ? 2 : rep.max_rank);
            }
        }
        free(full);
        free(lr);
        free(out);
    }
}

/* One member at full rank comes back unchanged, with ~0 error. */
static void test_single_member_full_rank(void **state)
{
    (void)state;
    int rows = 7, cols = 5;
    float *W = rand_matrix(rows, cols, 5), out[35];
    moec_tensor mem = view(W, rows, cols);
    double rel;
    moec_subspace_report rep = {.member_rel_err = &rel};
    moec_subspace_opts o = MOEC_SUBSPACE_OPTS_DEFAULT;
    o.energy = 1.0;
    moec_err err;
    assert_int_equal(moec_subspace_merge(&mem, 1, NULL, &o, out, NULL, &rep, &err), MOEC_OK);
    assert_int_equal(rep.rank, 5);
    assert_true(rel_diff(out, W, 35) < 1e-5);
    assert_true(rel < 1e-5);
    free(W);
}

/* Member errors never grow with the rank, reach ~0 at full rank, and at full
 * rank the merge equals the frequency-weighted average (the header's
 * identity W_G = U_r U_r^T W_avg). */
static void test_error_monotone_in_rank(void **state)
{
    (void)state;
    enum { M = 3, ROWS = 10, COLS = 6 };
    float *W[M];
    moec_tensor mem[M];
    for (int e = 0; e < M; e++) {
        W[e] = rand_matrix(ROWS, COLS, 100 + e);
        mem[e] = view(W[e], ROWS, COLS);
    }
    float freq[M] = {1, 2, 5}, out[ROWS * COLS], avg[ROWS * COLS];
    double prev[M] = {INFINITY, INFINITY, INFINITY}, rel[M];
    moec_err err;
    int maxr = 0;
    for (int r = 1; r <= ROWS; r++) {
        moec_subspace_report rep = {.member_rel_err = rel};
        moec_subspace_opts o = with_rank(MOEC_SHARE_LEFT, r);
        assert_int_equal(moec_subspace_merge(mem, M, freq, &o, out, NULL, &rep, &err), MOEC_OK);
        assert_int_equal(rep.rank, r);
        maxr = rep.max_rank;
        for (int e = 0; e < M; e++) {
            assert_true(rel[e] <= prev[e] + 1e-6);
            prev[e] = rel[e];
        }
        assert_true(rep.energy > 0.0 && rep.energy <= 1.0 + 1e-12);
    }
    assert_int_equal(maxr, ROWS);
    for (int e = 0; e < M; e++)
        assert_true(prev[e] < 1e-5);
    assert_true(prev[0] < 1e-5);
    const float *ptr[M] = {W[0], W[1], W[2]};
    assert_int_equal(moec_average_weighted(ptr, M, ROWS * COLS, freq, avg, &err), MOEC_OK);
    assert_true(rel_diff(out, avg, ROWS * COLS) < 1e-5);
    /* a truncated merge is not the average */
    moec_subspace_opts o = with_rank(MOEC_SHARE_LEFT, 2);
    assert_int_equal(moec_subspace_merge(mem, M, freq, &o, out, NULL, NULL, &err), MOEC_OK);
    assert_true(rel_diff(out, avg, ROWS * COLS) > 1e-2);
    for (int e = 0; e < M; e++)
        free(W[e]);
}

/* Givens rotation of rows (or columns) i, j of a [rows][cols] matrix */
static void rotate(float *w, int rows, int cols, int by_rows, int i, int j, double th)
{
    double c = cos(th), s = sin(th);
    int n = by_rows ? cols : rows;
    for (int k = 0; k < n; k++) {
        float *a = by_rows ? &w[i * cols + k] : &w[k * cols + i];
        float *b = by_rows ? &w[j * cols + k] : &w[k * cols + j];
        double x = *a, y = *b;
        *a = (float)(c * x - s * y);
        *b = (float)(s * x + c * y);
    }
}

/* Singular values 4, 3, 2, 1 hidden by rotations: energies 16/30, 25/30,
 * 29/30, 1, so the energy rule must pick 1, 2, 3, 4. */
static void test_energy_rank(void **state)
{
    (void)state;
    enum { ROWS = 8, COLS = 6 };
    float W[ROWS * COLS] = {0}, out[ROWS * COLS];
    for (int i = 0; i < 4; i++)
        W[i * COLS + i] = (float)(4 - i);
    for (int k = 0; k < 7; k++) {
        rotate(W, ROWS, COLS, 1, k, (k + 3) % ROWS, 0.3 + 0.2 * k);
        rotate(W, ROWS, COLS, 0, k % COLS, (k + 2) % COLS, 0.7 - 0.1 * k);
    }
    moec_tensor mem = view(W, ROWS, COLS);
    const double energy[] = {0.5, 0.8, 0.9, 0.99, 1.0};
    const int want[] = {1, 2, 3, 4, 4};
    for (int t = 0; t < 5; t++) {
        for (int side = 0; side < 2; side++) {
            moec_subspace_opts o = MOEC_SUBSPACE_OPTS_DEFAULT;
            o.share = (moec_share_side)side;
            o.energy = energy[t];
            o.precision = t % 2 ? MOEC_SVD_DOUBLE : MOEC_SVD_FLOAT;
            moec_subspace_report rep = {0};
            moec_err err;
            assert_int_equal(moec_subspace_merge(&mem, 1, NULL, &o, out, NULL, &rep, &err), MOEC_OK);
            if (t < 4)
                assert_int_equal(rep.rank, want[t]);
            else
                assert_true(rep.rank >= 4);
            assert_true(fabs(rep.sigma_first - 4.0) < 1e-5);
            if (t < 4)
                assert_true(fabs(rep.sigma_last - (4 - want[t] + 1)) < 1e-5);
            double e_want[] = {16.0 / 30, 25.0 / 30, 29.0 / 30, 1.0};
            assert_true(fabs(rep.energy - e_want[want[t] - 1]) < 1e-5);
        }
    }
}

/* RIGHT on W_e is LEFT on W_e^T, transposed; the factors multiply back to
 * the output; the double SVD agrees with the float one. */
static void test_sides_factors_precision(void **state)
{
    (void)state;
    enum { M = 2, ROWS = 5, COLS = 7 };
    float *W[M], *WT[M];
    moec_tensor mem[M], memT[M];
    for (int e = 0; e < M; e++) {
        W[e] = rand_matrix(ROWS, COLS, 200 + e);
        WT[e] = malloc(ROWS * COLS * sizeof(float));
        for (int i = 0; i < ROWS; i++)
            for (int j = 0; j < COLS; j++)
                WT[e][j * ROWS + i] = W[e][i * COLS + j];
        mem[e] = view(W[e], ROWS, COLS);
        memT[e] = view(WT[e], COLS, ROWS);
    }
    float freq[M] = {2, 3};
    float right[ROWS * COLS], leftT[ROWS * COLS], dbl[ROWS * COLS], prod[ROWS * COLS];
    moec_err err;
    moec_subspace_opts o = with_rank(MOEC_SHARE_RIGHT, 3);
    moec_subspace_factors f = {0};
    moec_subspace_report rep = {0};
    assert_int_equal(moec_subspace_merge(mem, M, freq, &o, right, &f, &rep, &err), MOEC_OK);
    o.share = MOEC_SHARE_LEFT;
    assert_int_equal(moec_subspace_merge(memT, M, freq, &o, leftT, NULL, NULL, &err), MOEC_OK);
    float back[ROWS * COLS];
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < COLS; j++)
            back[i * COLS + j] = leftT[j * ROWS + i];
    assert_true(rel_diff(right, back, ROWS * COLS) < 1e-5);

    assert_int_equal(f.rows, ROWS);
    assert_int_equal(f.rank, 3);
    assert_int_equal(f.cols, COLS);
    assert_int_equal(rep.a_rows, ROWS);
    assert_int_equal(rep.a_cols, 3);
    assert_int_equal(rep.b_rows, 3);
    assert_int_equal(rep.b_cols, COLS);
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < COLS; j++) {
            double s = 0.0;
            for (int k = 0; k < 3; k++)
                s += (double)f.a[i * 3 + k] * f.b[k * COLS + j];
            prod[i * COLS + j] = (float)s;
        }
    assert_true(rel_diff(prod, right, ROWS * COLS) < 1e-5);
    moec_subspace_factors_free(&f);
    assert_null(f.a);

    o.share = MOEC_SHARE_RIGHT;
    o.precision = MOEC_SVD_DOUBLE;
    assert_int_equal(moec_subspace_merge(mem, M, freq, &o, dbl, NULL, NULL, &err), MOEC_OK);
    assert_true(rel_diff(dbl, right, ROWS * COLS) < 1e-4);

    /* factors alone, LEFT: a is the orthonormal U_r */
    o = with_rank(MOEC_SHARE_LEFT, 2);
    assert_int_equal(moec_subspace_merge(mem, M, freq, &o, NULL, &f, NULL, &err), MOEC_OK);
    for (int p = 0; p < 2; p++)
        for (int q = 0; q < 2; q++) {
            double s = 0.0;
            for (int i = 0; i < ROWS; i++)
                s += (double)f.a[i * 2 + p] * f.a[i * 2 + q];
            assert_true(fabs(s - (p == q)) < 1e-5);
        }
    moec_subspace_factors_free(&f);

    size_t bytes = 0;
    assert_int_equal(moec_subspace_peak_bytes(M, ROWS, COLS, MOEC_SHARE_LEFT, MOEC_SVD_FLOAT, &bytes, &err), MOEC_OK);
    assert_true(bytes >= (size_t)M * ROWS * COLS * sizeof(float));
    for (int e = 0; e < M; e++) {
        free(W[e]);
        free(WT[e]);
    }
}

static void test_subspace_errors(void **state)
{
    (void)state;
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 0, 0}, out[6];
    moec_tensor mem[2] = {view(a, 2, 3), view(b, 2, 3)};
    moec_subspace_opts o = with_rank(MOEC_SHARE_LEFT, 1);
    moec_err err;

    b[4] = NAN;
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &o, out, NULL, NULL, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "member 1"));
    b[4] = INFINITY;
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &o, out, NULL, NULL, &err), MOEC_ERR_NUMERIC);
    b[4] = 0;

    mem[1] = view(b, 3, 2);
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &o, out, NULL, NULL, &err), MOEC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "member 1"));
    mem[1] = view(b, 2, 3);
    mem[1].nbytes = 8;
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &o, out, NULL, NULL, &err), MOEC_ERR_SHAPE);
    mem[1] = view(b, 2, 3);
    mem[1].ndim = 1;
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &o, out, NULL, NULL, &err), MOEC_ERR_SHAPE);
    mem[1] = view(b, 2, 3);
    mem[1].dtype = MOEC_DT_BF16;
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &o, out, NULL, NULL, &err), MOEC_ERR_UNSUPPORTED);
    mem[1] = view(b, 2, 3);

    moec_subspace_opts unset = MOEC_SUBSPACE_OPTS_DEFAULT;
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &unset, out, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, NULL, out, NULL, NULL, &err), MOEC_ERR_ARG);
    unset.energy = 1.5;
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &unset, out, NULL, NULL, &err), MOEC_ERR_ARG);
    float zero[2] = {0, 0}, neg[2] = {1, -1};
    assert_int_equal(moec_subspace_merge(mem, 2, zero, &o, out, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_subspace_merge(mem, 2, neg, &o, out, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "member 1"));
    assert_int_equal(moec_subspace_merge(mem, 0, NULL, &o, out, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_subspace_merge(mem, 2, NULL, &o, NULL, NULL, NULL, &err), MOEC_ERR_ARG);

    /* an all-zero group is legal and merges to zero */
    float z1[6] = {0}, z2[6] = {0};
    moec_tensor zm[2] = {view(z1, 2, 3), view(z2, 2, 3)};
    moec_subspace_opts e = MOEC_SUBSPACE_OPTS_DEFAULT;
    e.energy = 0.9;
    double rel[2];
    moec_subspace_report rep = {.member_rel_err = rel};
    assert_int_equal(moec_subspace_merge(zm, 2, NULL, &e, out, NULL, &rep, &err), MOEC_OK);
    for (int i = 0; i < 6; i++)
        assert_true(out[i] == 0.0f);
    assert_true(rel[0] == 0.0 && rel[1] == 0.0);
}

static void test_average(void **state)
{
    (void)state;
    float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[4] = {0, 0, 0, 0}, out[4];
    const float *W[3] = {a, b, c};
    float wts[3] = {1, 3, 0};
    moec_err err;
    assert_int_equal(moec_average_weighted(W, 3, 4, wts, out, &err), MOEC_OK);
    for (int i = 0; i < 4; i++)
        assert_true(fabsf(out[i] - (0.25f * a[i] + 0.75f * b[i])) < 1e-6f);
    assert_int_equal(moec_average_weighted(W, 3, 4, NULL, out, &err), MOEC_OK);
    for (int i = 0; i < 4; i++)
        assert_true(fabsf(out[i] - (a[i] + b[i]) / 3.0f) < 1e-6f);

    float zero[3] = {0, 0, 0}, neg[3] = {1, -0.5f, 1}, nan_w[3] = {1, NAN, 1};
    assert_int_equal(moec_average_weighted(W, 3, 4, zero, out, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_average_weighted(W, 3, 4, neg, out, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "member 1"));
    assert_int_equal(moec_average_weighted(W, 3, 4, nan_w, out, &err), MOEC_ERR_ARG);
    c[2] = NAN;
    assert_int_equal(moec_average_weighted(W, 3, 4, wts, out, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "member 2"));

    double nw[2];
    float raw[2] = {2, 6};
    assert_int_equal(moec_merge_weights_normalise(raw, 2, nw, &err), MOEC_OK);
    assert_true(fabs(nw[0] - 0.25) < 1e-12 && fabs(nw[1] - 0.75) < 1e-12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical_members),
        cmocka_unit_test(test_single_member_full_rank),
        cmocka_unit_test(test_error_monotone_in_rank),
        cmocka_unit_test(test_energy_rank),
        cmocka_unit_test(test_sides_factors_precision),
        cmocka_unit_test(test_subspace_errors),
        cmocka_unit_test(test_average),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
