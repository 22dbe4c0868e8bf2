/* Tests for merge/kmeans.c: grouping, determinism, edge cases, errors. */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "merge/kmeans.h"

static uint64_t rng_state;

static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

/* n items in `blobs` blobs, item i in blob i % blobs: centre at 10*blob on
 * axis (blob % dim), plus noise of size 0.1. */
static void make_blobs(float *x, int n, int dim, int blobs)
{
    rng_state = 42;
    for (int i = 0; i < n; i++)
        for (int d = 0; d < dim; d++) {
            int b = i % blobs;
            x[i * dim + d] = (float)((d == b % dim ? 10.0 * (b + 1) : 0.0) + 0.1 * (urand() - 0.5));
        }
}

static void assert_partition(const int *assign, const int *sizes, int n, int k)
{
    int count[64] = {0};
    for (int i = 0; i < n; i++) {
        assert_true(assign[i] >= 0 && assign[i] < k);
        count[assign[i]]++;
    }
    for (int c = 0; c < k; c++) {
        assert_true(sizes[c] >= 1);
        assert_int_equal(sizes[c], count[c]);
    }
    assert_int_equal(assign[0], 0);
}

/* items of one blob share a group; items of different blobs do not */
static void assert_blob_groups(const int *assign, int n, int blobs)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            assert_int_equal(assign[i] == assign[j], i % blobs == j % blobs);
}

static void test_separates_blobs(void **state)
{
    (void)state;
    enum { N = 12, DIM = 4, K = 3 };
    float x[N * DIM], freq[N];
    int assign[N], sizes[K];
    make_blobs(x, N, DIM, K);
    for (int i = 0; i < N; i++)
        freq[i] = (float)(N - i);
    moec_err err;
    moec_kmeans_opts o = MOEC_KMEANS_OPTS_DEFAULT;
    for (int init = 0; init < 2; init++) {
        o.init = init ? MOEC_KMEANS_INIT_PLUSPLUS : MOEC_KMEANS_INIT_FREQ;
        moec_kmeans_info info;
        assert_int_equal(moec_kmeans_features(x, N, DIM, K, freq, &o, assign, sizes, &info, &err), MOEC_OK);
        assert_partition(assign, sizes, N, K);
        assert_blob_groups(assign, N, K);
        assert_true(info.converged);
        assert_true(info.inertia < 1.0);
    }
}

/* Kernel K-means on the Gram matrix of unit vectors groups nearly identical
 * outputs, and agrees with Euclidean K-means on the vectors themselves. */
static void test_gram_matches_features(void **state)
{
    (void)state;
    enum { N = 8, DIM = 6, K = 4 };
    float u[N * DIM], S[N * N], freq[N];
    rng_state = 7;
    for (int i = 0; i < N; i++) {
        double nrm = 0.0;
        for (int d = 0; d < DIM; d++) {
            u[i * DIM + d] = (float)((d == i % K ? 1.0 : 0.0) + 0.05 * (urand() - 0.5));
            nrm += (double)u[i * DIM + d] * u[i * DIM + d];
        }
        for (int d = 0; d < DIM; d++)
            u[i * DIM + d] /= (float)sqrt(nrm);
        freq[i] = (float)(1 + (i * 5) % N);
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int d = 0; d < DIM; d++)
                s += (double)u[i * DIM + d] * u[j * DIM + d];
            S[i * N + j] = (float)s;
        }
    moec_err err;
    int a1[N], s1[K], a2[N], s2[K];
    moec_kmeans_info i1, i2;
    assert_int_equal(moec_kmeans_gram(S, N, K, freq, NULL, a1, s1, &i1, &err), MOEC_OK);
    assert_int_equal(moec_kmeans_features(u, N, DIM, K, freq, NULL, a2, s2, &i2, &err), MOEC_OK);
    assert_partition(a1, s1, N, K);
    assert_blob_groups(a1, N, K);
    assert_memory_equal(a1, a2, sizeof a1);
    assert_memory_equal(s1, s2, sizeof s1);
    assert_true(fabs(i1.inertia - i2.inertia) < 1e-5);
}

static void test_deterministic(void **state)
{
    (void)state;
    enum { N = 16, DIM = 3, K = 5 };
    float x[N * DIM];
    rng_state = 99;
    for (int i = 0; i < N * DIM; i++)
        x[i] = (float)urand();
    moec_kmeans_opts o = MOEC_KMEANS_OPTS_DEFAULT;
    o.init = MOEC_KMEANS_INIT_PLUSPLUS;
    moec_err err;
    int a1[N], s1[K], a2[N], s2[K];
    moec_kmeans_info i1, i2;
    assert_int_equal(moec_kmeans_features(x, N, DIM, K, NULL, &o, a1, s1, &i1, &err), MOEC_OK);
    assert_int_equal(moec_kmeans_features(x, N, DIM, K, NULL, &o, a2, s2, &i2, &err), MOEC_OK);
    assert_partition(a1, s1, N, K);
    assert_memory_equal(a1, a2, sizeof a1);
    assert_memory_equal(s1, s2, sizeof s1);
    assert_true(i1.inertia == i2.inertia);
    assert_int_equal(i1.restart, i2.restart);

    /* more restarts never end worse than the first one alone */
    moec_kmeans_opts one = o;
    one.restarts = 1;
    moec_kmeans_info i3;
    assert_int_equal(moec_kmeans_features(x, N, DIM, K, NULL, &one, a2, s2, &i3, &err), MOEC_OK);
    assert_true(i1.inertia <= i3.inertia + 1e-12);
}

static void test_edge_counts(void **state)
{
    (void)state;
    enum { N = 5, DIM = 2 };
    float x[N * DIM] = {0, 0, 0, 0, 1, 1, 5, 5, 5, 6};
    float freq[N] = {1, 2, 3, 4, 5};
    int assign[N], sizes[N];
    moec_err err;
    moec_kmeans_info info;
    assert_int_equal(moec_kmeans_features(x, N, DIM, N, freq, NULL, assign, sizes, &info, &err), MOEC_OK);
    for (int i = 0; i < N; i++) {
        assert_int_equal(assign[i], i);
        assert_int_equal(sizes[i], 1);
    }
    assert_true(info.inertia == 0.0);
    assert_int_equal(moec_kmeans_features(x, N, DIM, 1, freq, NULL, assign, sizes, &info, &err), MOEC_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(assign[i], 0);
    assert_int_equal(sizes[0], N);
    assert_true(info.inertia > 0.0);
}

/* Duplicated points make seeds coincide; every group must still be filled. */
static void test_empty_groups_repaired(void **state)
{
    (void)state;
    enum { N = 6, DIM = 2, K = 4 };
    float x[N * DIM] = {1, 1, 1, 1, 1, 1, 1, 1, 9, 0, 0, 9};
    float freq[N] = {9, 8, 7, 6, 1, 1}; /* the four identical items are the most frequent */
    int assign[N], sizes[K];
    moec_err err;
    moec_kmeans_opts o = MOEC_KMEANS_OPTS_DEFAULT;
    for (int init = 0; init < 2; init++) {
        o.init = init ? MOEC_KMEANS_INIT_PLUSPLUS : MOEC_KMEANS_INIT_FREQ;
        assert_int_equal(moec_kmeans_features(x, N, DIM, K, freq, &o, assign, sizes, NULL, &err), MOEC_OK);
        assert_partition(assign, sizes, N, K);
    }
}

/* max_iter = 1 with frequency seeds is the dominant-expert grouping: each
 * item joins the nearer of the two most frequent items (0 and 3). Full
 * K-means from the same seeds then moves items 2 and 3 as the means shift. */
static void test_frequency_seeds(void **state)
{
    (void)state;
    enum { N = 5, K = 2 };
    float x[N] = {0.0f, 1.0f, 2.0f, 3.0f, 7.5f};
    float freq[N] = {50, 1, 1, 40, 1};
    int assign[N], sizes[K];
    moec_err err;
    moec_kmeans_opts o = MOEC_KMEANS_OPTS_DEFAULT;
    o.max_iter = 1;
    assert_int_equal(moec_kmeans_features(x, N, 1, K, freq, &o, assign, sizes, NULL, &err), MOEC_OK);
    int once[N] = {0, 0, 1, 1, 1};
    assert_memory_equal(assign, once, sizeof once);
    o.max_iter = 100;
    moec_kmeans_info info;
    assert_int_equal(moec_kmeans_features(x, N, 1, K, freq, &o, assign, sizes, &info, &err), MOEC_OK);
    int full[N] = {0, 0, 0, 0, 1};
    assert_memory_equal(assign, full, sizeof full);
    assert_true(info.converged);
    assert_true(fabs(info.inertia - 5.0) < 1e-9); /* (1.5^2 + 0.5^2) * 2 */
}

static void test_errors(void **state)
{
    (void)state;
    float x[6] = {0, 1, 2, 3, 4, 5};
    float freq[3] = {1, 2, 3};
    int assign[3], sizes[3];
    moec_err err;
    assert_int_equal(moec_kmeans_features(x, 3, 2, 4, freq, NULL, assign, sizes, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_kmeans_features(x, 3, 2, 0, freq, NULL, assign, sizes, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_kmeans_features(x, 3, 2, 2, NULL, NULL, assign, sizes, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "freq"));
    float bad_freq[3] = {1, -2, 3};
    assert_int_equal(moec_kmeans_features(x, 3, 2, 2, bad_freq, NULL, assign, sizes, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "item 1"));
    x[3] = NAN;
    assert_int_equal(moec_kmeans_features(x, 3, 2, 2, freq, NULL, assign, sizes, NULL, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "item 1"));
    float S[4] = {1, 0.5f, INFINITY, 1};
    assert_int_equal(moec_kmeans_gram(S, 2, 1, freq, NULL, assign, sizes, NULL, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "[1][0]"));
    moec_kmeans_opts o = MOEC_KMEANS_OPTS_DEFAULT;
    o.init = MOEC_KMEANS_INIT_PLUSPLUS;
    o.restarts = 0;
    x[3] = 3;
    assert_int_equal(moec_kmeans_features(x, 3, 2, 2, freq, &o, assign, sizes, NULL, &err), MOEC_ERR_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_separates_blobs),
        cmocka_unit_test(test_gram_matches_features),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_edge_counts),
        cmocka_unit_test(test_empty_groups_repaired),
        cmocka_unit_test(test_frequency_seeds),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
