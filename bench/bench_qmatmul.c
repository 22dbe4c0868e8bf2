/* bench_qmatmul.c - speed of moec_matmul_quant (group-wise k-bit weights,
 * straight from the packed groups) against moec_matmul on BF16 weights, on
 * the mixtral-tiny shapes.
 *
 *   bench-qmatmul [--group G] [--symmetric] [--quick]
 *
 * Prints a table "shape bits n threads | BF16 µs | quant µs (path chosen) |
 * qgemm µs | tiles+sgemm µs" for W = 512x256 (w1/w3), 256x512 (w2) and
 * 4096x256 (lm_head), 4/3/2 bits (asymmetric unless --symmetric, group 64
 * unless --group), n = 1, 8, 64, 512 and 1-2 threads. The same matrix is
 * used again and again (it sits in L2/L3). Each figure is the best of
 * several batches of many calls. The last two columns force one path for
 * every n, which is how DIRECT_MAX_N in matmul_quant.c was chosen.
 * OPENBLAS_CORETYPE in the environment changes OpenBLAS's sgemm kernel; the
 * header line says whether it is set.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/threadpool.h"
#include "exec/matmul.h"
#include "exec/matmul_quant.h"
#include "quant/qformat.h"
#include "quant/rtn.h"

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

typedef struct {
    moec_pool *pool;
    float *y;
    const float *x;
    int64_t n;
    const moec_tensor *W;
} call;

static void run_bf16(const call *c)
{
    moec_matmul(c->pool, c->y, c->x, c->n, c->W, false);
}

static void run_quant(const call *c)
{
    const int64_t rows = moec_tensor_rows(c->W), cols = moec_tensor_cols(c->W);
    moec_matmul_quant(c->pool, c->y, rows, c->x, cols, c->n, c->W, 0, rows, false);
}

static double budget = 0.05; /* seconds per batch */

/* µs per call: reps doubled until a batch takes budget/10, then best of 5. */
static double time_us(void (*fn)(const call *), const call *c)
{
    int reps = 1;
    for (;;) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            fn(c);
        double dt = now_s() - t0;
        if (dt > budget / 10 || reps > (1 << 22))
            break;
        reps *= 2;
    }
    double best = 1e30;
    for (int b = 0; b < 5; b++) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            fn(c);
        double dt = (now_s() - t0) / reps;
        best = dt < best ? dt : best;
    }
    return best * 1e6;
}

static void usage_exit(void)
{
    fputs("usage: bench-qmatmul [--group G] [--symmetric] [--quick]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    int group = 64;
    bool symmetric = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--group") == 0 && i + 1 < argc)
            group = atoi(argv[++i]);
        else if (strcmp(argv[i], "--symmetric") == 0)
            symmetric = true;
        else if (strcmp(argv[i], "--quick") == 0)
            budget = 0.01;
        else
            usage_exit();
    }
    if (group < 1)
        usage_exit();
    const int64_t shapes[][2] = {{512, 256}, {256, 512}, {4096, 256}};
    const int bits[] = {4, 3, 2};
    const int64_t ns[] = {1, 8, 64, 512};
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("# bench-qmatmul: group %d, %s; matmul kernel %s; OPENBLAS_CORETYPE %s\n", group,
           symmetric ? "symmetric" : "asymmetric", moec_matmul_kernel_name(), ct ? ct : "unset");
    printf("%-9s %4s %4s %3s | %9s | %9s %-6s | %9s | %9s\n", "shape", "bits", "n", "thr", "BF16 us", "quant us",
           "path", "qgemm us", "tiles us");
    moec_pool *pools[2] = {moec_pool_new(1), moec_pool_new(2)};
    if (!pools[0] || !pools[1]) {
        fprintf(stderr, "bench-qmatmul: cannot start threads\n");
        return 1;
    }
    const int64_t max_n = ns[sizeof ns / sizeof *ns - 1];
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1];
        float *W = malloc((size_t)(rows * cols) * sizeof *W);
        uint16_t *Wb = malloc((size_t)(rows * cols) * sizeof *Wb);
        float *x = malloc((size_t)(max_n * cols) * sizeof *x);
        float *y = malloc((size_t)(max_n * rows) * sizeof *y);
        if (!W || !Wb || !x || !y) {
            fprintf(stderr, "bench-qmatmul: out of memory\n");
            return 1;
        }
        for (int64_t i = 0; i < rows * cols; i++)
            W[i] = frand();
        for (int64_t i = 0; i < max_n * cols; i++)
            x[i] = frand();
        moec_from_f32(Wb, W, MOEC_DT_BF16, (size_t)(rows * cols));
        moec_tensor Tb = {.dtype = MOEC_DT_BF16, .ndim = 2, .shape = {rows, cols}, .data = Wb,
                          .nbytes = (size_t)(rows * cols) * 2};
        for (size_t bi = 0; bi < sizeof bits / sizeof *bits; bi++) {
            moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
            o.bits = bits[bi];
            o.group = group;
            o.symmetric = symmetric;
            moec_qmatrix qm;
            moec_err err = {0};
            if (moec_rtn_quantize(W, rows, cols, &o, "bench", &qm, &err)) {
                fprintf(stderr, "bench-qmatmul: %s\n", err.msg);
                return 1;
            }
            moec_tensor Tq = moec_qformat_tensor(&qm.f);
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                for (int t = 0; t < 2; t++) {
                    call cb = {pools[t], y, x, ns[ni], &Tb}, cq = {pools[t], y, x, ns[ni], &Tq};
                    double us_b = time_us(run_bf16, &cb);
                    moec_matmul_quant_force_path(0);
                    double us_q = time_us(run_quant, &cq);
                    moec_matmul_quant_force_path(1);
                    double us_d = time_us(run_quant, &cq);
                    moec_matmul_quant_force_path(2);
                    double us_t = time_us(run_quant, &cq);
                    moec_matmul_quant_force_path(0);
                    const bool direct = ns[ni] <= moec_matmul_quant_direct_max_n(&Tq);
                    char shape[32];
                    snprintf(shape, sizeof shape, "%lldx%lld", (long long)rows, (long long)cols);
                    printf("%-9s %4d %4lld %3d | %9.2f | %9.2f %-6s | %9.2f | %9.2f\n", shape, bits[bi],
                           (long long)ns[ni], t + 1, us_b, us_q, direct ? "qgemm" : "tiles", us_d, us_t);
                    fflush(stdout);
                }
            }
            moec_qmatrix_free(&qm);
        }
        free(W);
        free(Wb);
        free(x);
        free(y);
    }
    moec_pool_free(pools[0]);
    moec_pool_free(pools[1]);
    return 0;
}
