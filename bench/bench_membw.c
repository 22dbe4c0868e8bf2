/* bench_membw.c - this machine's memory bandwidth, the limit of a decode step.
 *
 *   bench-membw [--mib N] [--reps R] [--threads-max T] [--json]
 *
 * Decoding a large model reads every active weight once per token from
 * DRAM, so its speed is bounded by read bandwidth; moec-bench reports the
 * bytes a decode step moves and the GB/s it reached, and this tool gives the
 * ceiling to hold them against. For 1..T threads (default 2) it measures on
 * a buffer of N MiB per thread (default 1024, far beyond any cache):
 *   read   sum of every float (AVX-512 loads, 4 accumulators; the way a
 *          GEMV reads its weights), bytes = buffer size
 *   copy   memcpy of half the buffer into the other half, bytes = read +
 *          written
 *   write  memset, bytes = buffer size
 * Each thread works on its own buffer, first touched by itself; all start
 * together (a barrier) and the time is the slowest thread's. Reported: the
 * median and best of R passes (default 7) in GB/s (10^9 bytes/s).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum { OP_READ, OP_COPY, OP_WRITE, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"read", "copy", "write"};

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) static float read_avx512(const float *p, size_t n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++)
        s += p[i];
    return s;
}
#endif

static float read_plain(const float *p, size_t n)
{
    float s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += p[i + j];
    for (; i < n; i++)
        s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

static float read_sum(const float *p, size_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return read_avx512(p, n);
#endif
    return read_plain(p, n);
}

typedef struct {
    size_t bytes;
    int op;
    pthread_barrier_t *start;
    float *buf;
    double seconds;
    volatile float sink;
} worker;

static void *run(void *arg)
{
    worker *w = arg;
    if (!w->buf) {
        w->buf = aligned_alloc(2u << 20, w->bytes);
        if (w->buf && getenv("HUGE"))
            madvise(w->buf, w->bytes, MADV_HUGEPAGE);
        if (w->buf)
            memset(w->buf, 1, w->bytes); /* first touch on this thread */
    }
    pthread_barrier_wait(w->start);
    if (!w->buf)
        return NULL;
    double t0 = now_s();
    if (w->op == OP_READ)
        w->sink = read_sum(w->buf, w->bytes / sizeof(float));
    else if (w->op == OP_COPY)
        memcpy(w->buf, (char *)w->buf + w->bytes / 2, w->bytes / 2);
    else
        memset(w->buf, (int)(w->bytes & 0x7f), w->bytes);
    w->seconds = now_s() - t0;
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    size_t mib = 1024;
    int reps = 7, tmax = 2;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc)
            mib = (size_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads-max") == 0 && i + 1 < argc)
            tmax = atoi(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0)
            json = true;
        else {
            fprintf(stderr, "usage: bench-membw [--mib N] [--reps R] [--threads-max T] [--json]\n");
            return 2;
        }
    }
    if (mib < 1 || reps < 1 || tmax < 1 || tmax > 64) {
        fprintf(stderr, "bench-membw: --mib, --reps and --threads-max must be positive (threads <= 64)\n");
        return 2;
    }
    const size_t bytes = mib << 20;
    worker w[64];
    memset(w, 0, sizeof w);
    double *gbs = malloc((size_t)reps * sizeof *gbs);
    if (!gbs)
        return 1;
    if (json)
        printf("{\"buffer_mib_per_thread\": %zu, \"reps\": %d, \"results\": [", mib, reps);
    else
        printf("memory bandwidth, %zu MiB per thread, %d passes (GB/s = 1e9 bytes/s)\n"
               "  %-6s %7s %10s %10s\n",
               mib, reps, "test", "threads", "median", "best");
    bool first = true;
    for (int nt = 1; nt <= tmax; nt++) {
        for (int op = 0; op < OP_COUNT; op++) {
            for (int r = 0; r < reps; r++) {
                pthread_barrier_t start;
                pthread_barrier_init(&start, NULL, (unsigned)nt);
                pthread_t th[64];
                for (int t = 0; t < nt; t++) {
                    w[t].bytes = bytes;
                    w[t].op = op;
                    w[t].start = &start;
                    if (t > 0 && pthread_create(&th[t], NULL, run, &w[t]) != 0) {
                        fprintf(stderr, "bench-membw: cannot start a thread\n");
                        return 1;
                    }
                }
                run(&w[0]);
                for (int t = 1; t < nt; t++)
                    pthread_join(th[t], NULL);
                pthread_barrier_destroy(&start);
                double slowest = 0;
                for (int t = 0; t < nt; t++) {
                    if (!w[t].buf) {
                        fprintf(stderr, "bench-membw: out of memory for %zu MiB\n", mib);
                        return 1;
                    }
                    slowest = w[t].seconds > slowest ? w[t].seconds : slowest;
                }
                double moved = (double)bytes * nt; /* copy: half read + half written */
                gbs[r] = moved / slowest / 1e9;
            }
            qsort(gbs, (size_t)reps, sizeof *gbs, cmp_double);
            if (json)
                printf("%s{\"test\": \"%s\", \"threads\": %d, \"median_gbs\": %.2f, \"best_gbs\": %.2f}",
                       first ? "" : ", ", op_names[op], nt, gbs[reps / 2], gbs[reps - 1]);
            else
                printf("  %-6s %7d %10.2f %10.2f\n", op_names[op], nt, gbs[reps / 2], gbs[reps - 1]);
            first = false;
        }
    }
    if (json)
        printf("]}\n");
    for (int t = 0; t < 64; t++)
        free(w[t].buf);
    free(gbs);
    return 0;
}
