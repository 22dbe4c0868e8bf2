/* bench_gptq.c - where GPTQ's time goes at real expert shapes, and how fast
 * its weight updates run against a plain sgemm.
 *
 *   bench-gptq [--shape RxC]... [--n N] [--bits B] [--group G] [--mixtral]
 *
 * For each weight shape rows x cols (default Qwen3-30B-A3B's expert w1/w3
 * 768x2048 and w2 2048x768, and Mixtral-8x7B's w1/w3 14336x4096; --mixtral
 * adds its w2, 4096x14336, whose 14336² Hessian takes 1.6 GB and minutes):
 * random weights and N calibration rows (default 2·cols) of random inputs,
 * then, on one thread (OpenBLAS too, as in the recipe's workers):
 *   Hessian   moec_hessian_accumulate, n·cols² flops (dsyrk, double);
 *   factor    moec_gptq_hinv_from, 4/3·cols³ flops (dpotrf, dpotri, dpotrf);
 *   quantize  moec_gptq_quantize_with at B bits (default 4) in groups of G
 *             (default 64); its column updates are
 *             2·rows·Σ_blocks((cols − i2)·128 + 128·127/2) flops, most of
 *             them in one sgemm per block of 128 columns;
 *   sgemm     cblas_sgemm of the first block's update shape, M = rows,
 *             N = cols − 128, K = 128, as the reference rate.
 * Each figure is one run (the shapes are large); "updates / sgemm" is the
 * share of sgemm's rate that the whole quantization reaches on its updates.
 * OpenBLAS variables in the environment change its kernels; run with
 * OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for comparable figures.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant/gptq.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 - 0.5);
}

static void die(const char *what)
{
    fprintf(stderr, "bench-gptq: %s\n", what);
    exit(1);
}

static void bench(int64_t rows, int64_t cols, int64_t n, int bits, int group)
{
    moec_err err = {0};
    float *W = malloc((size_t)(rows * cols) * sizeof *W), *X = malloc((size_t)(n * cols) * sizeof *X);
    double *H = calloc((size_t)(cols * cols), sizeof *H);
    if (!W || !X || !H)
        die("out of memory");
    for (int64_t i = 0; i < rows * cols; i++)
        W[i] = frand();
    for (int64_t i = 0; i < n * cols; i++)
        X[i] = frand();

    double t0 = now_s();
    if (moec_hessian_accumulate(H, X, n, cols, &err))
        die(err.msg);
    const double t_h = now_s() - t0;
    free(X);

    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = bits;
    o.q.group = group;
    moec_gptq_hinv *h;
    t0 = now_s();
    if (moec_gptq_hinv_from(H, cols, n, &o, "w", &h, NULL, &err))
        die(err.msg);
    const double t_f = now_s() - t0;

    moec_qmatrix q;
    t0 = now_s();
    if (moec_gptq_quantize_with(W, rows, cols, h, &o, "w", &q, NULL, &err))
        die(err.msg);
    const double t_q = now_s() - t0;
    moec_qmatrix_free(&q);
    moec_gptq_hinv_free(h);

    const int64_t bs = o.blocksize;
    double f_upd = 0.0;
    for (int64_t i1 = 0; i1 < cols; i1 += bs) {
        const int64_t i2 = i1 + bs < cols ? i1 + bs : cols, b = i2 - i1;
        f_upd += 2.0 * (double)rows * ((double)(cols - i2) * (double)b + (double)b * (double)(b - 1) / 2.0);
    }

    /* the reference: one block's lazy update as a plain sgemm */
    const int64_t K = bs < cols ? bs : cols, N = cols - K > 0 ? cols - K : cols;
    float *A = malloc((size_t)(rows * K) * sizeof *A), *B = malloc((size_t)(K * N) * sizeof *B);
    float *C = malloc((size_t)(rows * N) * sizeof *C);
    if (!A || !B || !C)
        die("out of memory");
    for (int64_t i = 0; i < rows * K; i++)
        A[i] = frand();
    for (int64_t i = 0; i < K * N; i++)
        B[i] = frand();
    memset(C, 0, (size_t)(rows * N) * sizeof *C);
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)N, (int)K, -1.0f, A, (int)K, B, (int)N,
                    1.0f, C, (int)N);
        const double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    const double g_sgemm = 2.0 * (double)rows * (double)N * (double)K / best / 1e9;
    free(A), free(B), free(C);

    const double g_h = (double)n * (double)cols * (double)cols / t_h / 1e9;
    const double g_f = 4.0 / 3.0 * (double)cols * (double)cols * (double)cols / t_f / 1e9;
    const double g_q = f_upd / t_q / 1e9;
    printf("%6lldx%-6lld %6lld | %8.2f %7.1f | %8.2f %7.1f | %8.2f %7.1f | %7.1f | %5.2f\n", (long long)rows,
           (long long)cols, (long long)n, t_h, g_h, t_f, g_f, t_q, g_q, g_sgemm, g_q / g_sgemm);
    fflush(stdout);
    free(W);
}

int main(int argc, char **argv)
{
    int64_t shapes[16][2];
    int ns = 0, bits = 4, group = 64;
    int64_t n = 0;
    bool mixtral = false;
    for (int i = 1; i < argc; i++) {
        long long r, c;
        if (!strcmp(argv[i], "--shape") && i + 1 < argc && ns < 16 && sscanf(argv[i + 1], "%lldx%lld", &r, &c) == 2 &&
            r > 0 && c > 0) {
            shapes[ns][0] = r;
            shapes[ns++][1] = c;
            i++;
        } else if (!strcmp(argv[i], "--n") && i + 1 < argc) {
            n = atoll(argv[++i]);
        } else if (!strcmp(argv[i], "--bits") && i + 1 < argc) {
            bits = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--group") && i + 1 < argc) {
            group = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--mixtral")) {
            mixtral = true;
        } else {
            fprintf(stderr, "usage: bench-gptq [--shape RxC]... [--n N] [--bits B] [--group G] [--mixtral]\n");
            return 2;
        }
    }
    if (ns == 0) {
        const int64_t def[4][2] = {{768, 2048}, {2048, 768}, {14336, 4096}, {4096, 14336}};
        for (int i = 0; i < (mixtral ? 4 : 3); i++) {
            shapes[ns][0] = def[i][0];
            shapes[ns++][1] = def[i][1];
        }
    }
    openblas_set_num_threads(1);
    printf("# bench-gptq: one thread, %d-bit groups of %d; OPENBLAS_CORETYPE %s\n", bits, group,
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
    printf("%-13s %6s | %8s %7s | %8s %7s | %8s %7s | %7s | %5s\n", "shape", "n", "H s", "GF/s", "factor s", "GF/s",
           "quant s", "upd GF/s", "sgemm", "ratio");
    for (int i = 0; i < ns; i++)
        bench(shapes[i][0], shapes[i][1], n > 0 ? n : 2 * shapes[i][1], bits, group);
    return 0;
}
