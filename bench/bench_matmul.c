/* bench_matmul.c - speed of the thread pool and of moec_matmul on the
 * mixtral-tiny shapes.
 *
 *   bench-matmul [--kernel portable|avx2|avx512] [--dtype BF16|F16|F32] [--quick]
 *                [--decode]   (only the decode simulation)
 *
 * Prints, in order:
 *  1. the cost of a moec_pool_run with 1 us of work per share (dispatch +
 *     join overhead is what exceeds 1 us);
 *  2. a table "shape dtype n threads path µs GFLOP/s" for each weight shape
 *     and n, the same matrix again and again (so it sits in L2);
 *  3. for n >= 16 with F32 weights, the alternative of one multithreaded
 *     OpenBLAS sgemm from the caller, to compare with our pool's split;
 *  4. a decode simulation: the 45 n=1 products of one mixtral-tiny token
 *     (4 layers x q,k,v,o, router, 2 of 8 experts x w1,w3,w2, then lm_head)
 *     over weights laid out like the model (~29 MB, so from L3), experts
 *     changing every token.
 * Timings are the best of several batches of many calls each.
 * OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the environment change OpenBLAS's
 * sgemm kernels; run once as is and once with `env -u OPENBLAS_CORETYPE
 * -u OPENBLAS_L2_SIZE`.
 */
#include <cblas.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/threadpool.h"
#include "exec/matmul.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 - 0.5);
}

static void *weights(moec_dtype dt, size_t count)
{
    float *f = malloc(count * sizeof(float));
    void *w = malloc(count * moec_dtype_size(dt));
    if (!f || !w) {
        fprintf(stderr, "bench-matmul: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < count; i++)
        f[i] = frand() * 0.1f;
    if (dt == MOEC_DT_F32)
        memcpy(w, f, count * sizeof(float));
    else
        moec_from_f32(w, f, dt, count);
    free(f);
    return w;
}

static float *floats(size_t count)
{
    float *p = malloc(count * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench-matmul: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < count; i++)
        p[i] = frand();
    return p;
}

static moec_tensor tensor(moec_dtype dt, void *data, int64_t out, int64_t in)
{
    return (moec_tensor){.dtype = dt, .ndim = 2, .shape = {out, in}, .data = data,
                         .nbytes = (size_t)(out * in) * moec_dtype_size(dt)};
}

/* Seconds per call of fn(arg): best over batches, each batch long enough
 * (~budget/5 s) to average out the clock and the scheduler. */
static double time_calls(void (*fn)(void *), void *arg, double budget)
{
    fn(arg);
    int reps = 1;
    for (;;) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            fn(arg);
        double dt = now_s() - t0;
        if (dt > budget / 10 || reps > (1 << 24))
            break;
        reps *= 2;
    }
    double best = 1e30;
    for (int b = 0; b < 5; b++) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            fn(arg);
        double dt = (now_s() - t0) / reps;
        if (dt < best)
            best = dt;
    }
    return best;
}

/* ---- pool dispatch ---------------------------------------------------- */

/* Each share busy-waits for a fixed time, so that a helper has the chance to
 * pick up its share before the caller would take it over (with no work at
 * all the caller simply runs every share itself). */
struct pool_arg {
    moec_pool *pool;
    double work_s;
    pthread_t caller;
    long helper_shares, shares;
};

static void busy_fn(void *ctx, int thread, int n)
{
    (void)thread;
    (void)n;
    struct pool_arg *a = ctx;
    double end = now_s() + a->work_s;
    while (now_s() < end)
        ;
    if (thread > 0) {
        /* only share i runs this; the counters are summed after the runs */
        a->shares++;
        if (!pthread_equal(pthread_self(), a->caller))
            a->helper_shares++;
    }
}

static void pool_run_once(void *arg)
{
    struct pool_arg *a = arg;
    moec_pool_run(a->pool, busy_fn, a);
}

static void bench_pool(moec_pool *const *pools, double budget)
{
    printf("\npool: one run with 1 us of work per share (the ideal is 1 us)\n");
    for (int t = 1; t <= 2; t++) {
        struct pool_arg a = {pools[t], 1e-6, pthread_self(), 0, 0};
        double sec = time_calls(pool_run_once, &a, budget);
        printf("  %d thread%s %6.3f us per run", t, t > 1 ? "s" : " ", 1e6 * sec);
        if (t > 1)
            printf(", helper ran its own share in %.1f%% of runs",
                   100.0 * (double)a.helper_shares / (double)(a.shares ? a.shares : 1));
        printf("\n");
    }
}

/* ---- one product, hot ------------------------------------------------- */

struct mm_arg {
    moec_pool *pool;
    float *y;
    const float *x;
    int64_t n;
    moec_tensor W;
    float *wf; /* for the multithreaded-sgemm comparison */
};

static void mm_once(void *arg)
{
    struct mm_arg *a = arg;
    moec_matmul(a->pool, a->y, a->x, a->n, &a->W, false);
}

static void sgemm_mt_once(void *arg)
{
    struct mm_arg *a = arg;
    int out = (int)a->W.shape[0], in = (int)a->W.shape[1];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)a->n, out, in, 1.0f, a->x, in,
                a->wf, in, 0.0f, a->y, out);
}

static const char *path_name(int64_t n, moec_dtype dt)
{
    if (n <= moec_matmul_direct_max_n())
        return "direct";
    return dt == MOEC_DT_F32 ? "sgemm" : "tile+sgemm";
}

/* ---- decode simulation ------------------------------------------------ */

#define LAYERS 4
#define EXPERTS 8
#define HID 256
#define FFN 512
#define KV 128
#define VOCAB 4096

struct model {
    moec_tensor q[LAYERS], k[LAYERS], v[LAYERS], o[LAYERS], router[LAYERS];
    moec_tensor w1[LAYERS][EXPERTS], w3[LAYERS][EXPERTS], w2[LAYERS][EXPERTS];
    moec_tensor head;
    void *blocks[4 * LAYERS + LAYERS + 3 * LAYERS * EXPERTS + 1];
    int nblocks;
};

static moec_tensor model_tensor(struct model *m, moec_dtype dt, int64_t out, int64_t in)
{
    void *w = weights(dt, (size_t)(out * in));
    m->blocks[m->nblocks++] = w;
    return tensor(dt, w, out, in);
}

static void model_make(struct model *m, moec_dtype dt)
{
    m->nblocks = 0;
    for (int l = 0; l < LAYERS; l++) {
        m->q[l] = model_tensor(m, dt, HID, HID);
        m->k[l] = model_tensor(m, dt, KV, HID);
        m->v[l] = model_tensor(m, dt, KV, HID);
        m->o[l] = model_tensor(m, dt, HID, HID);
        m->router[l] = model_tensor(m, dt, EXPERTS, HID);
        for (int e = 0; e < EXPERTS; e++) {
            m->w1[l][e] = model_tensor(m, dt, FFN, HID);
            m->w3[l][e] = model_tensor(m, dt, FFN, HID);
            m->w2[l][e] = model_tensor(m, dt, HID, FFN);
        }
    }
    m->head = model_tensor(m, dt, VOCAB, HID);
}

static void model_free(struct model *m)
{
    for (int i = 0; i < m->nblocks; i++)
        free(m->blocks[i]);
}

struct decode_arg {
    moec_pool *pool;
    struct model *m;
    float *x, *q, *k, *v, *h1, *h3, *r, *logits;
    unsigned token;
};

static void decode_once(void *arg)
{
    struct decode_arg *a = arg;
    struct model *m = a->m;
    moec_pool *p = a->pool;
    a->token++;
    for (int l = 0; l < LAYERS; l++) {
        moec_matmul(p, a->q, a->x, 1, &m->q[l], false);
        moec_matmul(p, a->k, a->x, 1, &m->k[l], false);
        moec_matmul(p, a->v, a->x, 1, &m->v[l], false);
        moec_matmul(p, a->x, a->q, 1, &m->o[l], true);
        moec_matmul(p, a->r, a->x, 1, &m->router[l], false);
        unsigned e0 = (a->token * 7 + (unsigned)l * 3) % EXPERTS;
        unsigned e1 = (e0 + 1 + (a->token * 5 + (unsigned)l) % (EXPERTS - 1)) % EXPERTS;
        unsigned ex[2] = {e0, e1};
        for (int s = 0; s < 2; s++) {
            moec_matmul(p, a->h1, a->x, 1, &m->w1[l][ex[s]], false);
            moec_matmul(p, a->h3, a->x, 1, &m->w3[l][ex[s]], false);
            moec_matmul(p, a->x, a->h1, 1, &m->w2[l][ex[s]], true);
        }
        /* keep the activations bounded across tokens */
        for (int i = 0; i < HID; i++)
            a->x[i] = a->x[i] > 1.0f ? 1.0f : a->x[i] < -1.0f ? -1.0f : a->x[i];
    }
    moec_matmul(p, a->logits, a->x, 1, &m->head, false);
}

static double decode_weights(void)
{
    return (double)LAYERS * (2 * HID * HID + 2 * KV * HID + EXPERTS * HID +
                             2 * 3 * (double)FFN * HID) +
           (double)VOCAB * HID;
}

static const int64_t shapes[][2] = {{512, 256}, {256, 512}, {256, 256}, {128, 256}, {4096, 256}};
static const int64_t ns[] = {1, 2, 4, 8, 16, 32, 64, 128, 300, 512};
static const moec_dtype dts[] = {MOEC_DT_BF16, MOEC_DT_F16, MOEC_DT_F32};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])
#define N_NS (sizeof ns / sizeof ns[0])
#define MAX_N 512

static void bench_table(moec_pool *const *pools, int only_dtype, double budget, float *x, float *y)
{
    printf("\n%-11s %-5s %4s %3s %-10s %10s %9s\n", "shape", "dtype", "n", "thr", "path", "us",
           "GFLOP/s");
    for (size_t d = 0; d < 3; d++) {
        if (only_dtype >= 0 && (int)dts[d] != only_dtype)
            continue;
        for (size_t s = 0; s < N_SHAPES; s++) {
            int64_t out = shapes[s][0], in = shapes[s][1];
            void *w = weights(dts[d], (size_t)(out * in));
            for (size_t ni = 0; ni < N_NS; ni++)
                for (int t = 1; t <= 2; t++) {
                    struct mm_arg a = {pools[t], y, x, ns[ni], tensor(dts[d], w, out, in), NULL};
                    double sec = time_calls(mm_once, &a, budget);
                    char shape[32];
                    snprintf(shape, sizeof shape, "%lldx%lld", (long long)out, (long long)in);
                    printf("%-11s %-5s %4lld %3d %-10s %10.2f %9.1f\n", shape,
                           moec_dtype_name(dts[d]), (long long)ns[ni], t,
                           path_name(ns[ni], dts[d]), 1e6 * sec,
                           2.0 * (double)ns[ni] * (double)out * (double)in / sec * 1e-9);
                }
            free(w);
        }
    }
}

/* Our split (each worker one single-threaded sgemm or direct kernel on its
 * rows) against OpenBLAS alone, single- and multithreaded, on F32 weights. */
static void bench_blas(moec_pool *const *pools, double budget, float *x, float *y)
{
    printf("\nF32 weights: moec_matmul on a 2-thread pool vs OpenBLAS sgemm called once "
           "from the caller with 1 and 2 OpenBLAS threads\n");
    printf("%-11s %4s %12s %12s %12s\n", "shape", "n", "moec-2 us", "blas-1 us", "blas-2 us");
    for (size_t s = 0; s < N_SHAPES; s++) {
        int64_t out = shapes[s][0], in = shapes[s][1];
        float *wf = weights(MOEC_DT_F32, (size_t)(out * in));
        for (size_t ni = 4; ni < N_NS; ni++) {
            struct mm_arg a = {pools[2], y, x, ns[ni], tensor(MOEC_DT_F32, wf, out, in), wf};
            double ours = time_calls(mm_once, &a, budget);
            openblas_set_num_threads(1);
            double one = time_calls(sgemm_mt_once, &a, budget);
            openblas_set_num_threads(2);
            double mt = time_calls(sgemm_mt_once, &a, budget);
            openblas_set_num_threads(1);
            char shape[32];
            snprintf(shape, sizeof shape, "%lldx%lld", (long long)out, (long long)in);
            printf("%-11s %4lld %12.2f %12.2f %12.2f\n", shape, (long long)ns[ni], 1e6 * ours,
                   1e6 * one, 1e6 * mt);
        }
        free(wf);
    }
}

static void bench_decode(moec_pool *const *pools, int only_dtype, double budget)
{
    printf("\ndecode simulation (n=1, %.2fM weights per token, 45 products)\n",
           decode_weights() * 1e-6);
    printf("%-5s %3s %12s %9s\n", "dtype", "thr", "us/token", "GFLOP/s");
    float *dx = floats(HID), *dq = floats(HID), *dk = floats(KV), *dv = floats(KV);
    float *h1 = floats(FFN), *h3 = floats(FFN), *r = floats(EXPERTS), *logits = floats(VOCAB);
    for (size_t d = 0; d < 3; d++) {
        if (only_dtype >= 0 && (int)dts[d] != only_dtype)
            continue;
        struct model m;
        model_make(&m, dts[d]);
        for (int t = 1; t <= 2; t++) {
            struct decode_arg a = {pools[t], &m, dx, dq, dk, dv, h1, h3, r, logits, 0};
            double sec = time_calls(decode_once, &a, budget * 4);
            printf("%-5s %3d %12.1f %9.1f\n", moec_dtype_name(dts[d]), t, 1e6 * sec,
                   2.0 * decode_weights() / sec * 1e-9);
        }
        model_free(&m);
    }
    free(dx);
    free(dq);
    free(dk);
    free(dv);
    free(h1);
    free(h3);
    free(r);
    free(logits);
}

int main(int argc, char **argv)
{
    const char *kernel = NULL;
    int only_dtype = -1;
    double budget = 0.05;
    bool decode_only = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--kernel") == 0 && i + 1 < argc) {
            kernel = argv[++i];
        } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            only_dtype = moec_dtype_from_name(argv[++i]);
            if (only_dtype < 0 || !moec_dtype_is_compute((moec_dtype)only_dtype)) {
                fprintf(stderr, "bench-matmul: --dtype takes BF16, F16 or F32\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--quick") == 0) {
            budget = 0.01;
        } else if (strcmp(argv[i], "--decode") == 0) {
            decode_only = true;
        } else {
            fprintf(stderr,
                    "usage: bench-matmul [--kernel portable|avx2|avx512] [--dtype BF16|F16|F32] "
                    "[--quick] [--decode]\n");
            return 2;
        }
    }
    if (kernel && !moec_matmul_set_kernel(kernel)) {
        fprintf(stderr, "bench-matmul: kernel '%s' unknown or not supported by this CPU\n", kernel);
        return 2;
    }
    const char *ct = getenv("OPENBLAS_CORETYPE"), *l2 = getenv("OPENBLAS_L2_SIZE");
    printf("kernels: %s   OpenBLAS core: %s (OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s)\n",
           moec_matmul_kernel_name(), openblas_get_corename(), ct ? ct : "unset",
           l2 ? l2 : "unset");

    moec_pool *pools[3] = {NULL, moec_pool_new(1), moec_pool_new(2)};
    if (!pools[1] || !pools[2]) {
        fprintf(stderr, "bench-matmul: cannot start the thread pool\n");
        return 1;
    }
    bench_pool(pools, budget);
    if (!decode_only) {
        float *x = floats((size_t)MAX_N * 512), *y = floats((size_t)MAX_N * 4096);
        bench_table(pools, only_dtype, budget, x, y);
        if (only_dtype < 0 || only_dtype == MOEC_DT_F32)
            bench_blas(pools, budget, x, y);
        free(x);
        free(y);
    }
    bench_decode(pools, only_dtype, budget);
    moec_pool_free(pools[1]);
    moec_pool_free(pools[2]);
    return 0;
}
