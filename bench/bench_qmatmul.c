/* bench_qmatmul.c - speed of moec_matmul_quant (group-wise k-bit weights,
 * straight from the packed groups) against moec_matmul on BF16 weights.
 *
 *   bench-qmatmul [--group G] [--symmetric] [--quick] [--shape RxC]...
 *                 [--bits 8,4,3,2] [--n 1,2,4,8,16,64,512] [--threads 1|2]
 *
 * Prints a table "shape bits n threads | BF16 µs | quant µs (path chosen;
 * one token at 4 or 8 bits: int8 activations, qgemv_vnni.c) | qgemm µs
 * (float activations) | tiles+sgemm µs", by default for W = 512x256 (w1/w3), 256x512
 * (w2), 4096x256 (lm_head) of mixtral-tiny and 4096x14336 (Mixtral-8x7B's
 * w1/w3, memory-bound; n <= 16 only), 8/4/3/2 bits (asymmetric unless
 * --symmetric, group 64 unless --group) and 1 and 2 threads (--threads:
 * one of them). The same matrix is
 * used again and again (the small ones sit in L2/L3). Each figure is the
 * best of several batches of many calls. The last two columns force one
 * path for every n, which is how DIRECT_MAX_N_LUT and DIRECT_MAX_N_CVT in
 * matmul_quant.c were chosen.
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
#include "core/qformat.h"
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
    fputs("usage: bench-qmatmul [--group G] [--symmetric] [--quick] [--shape RxC]... [--bits B,B..]\n"
          "                     [--n N,N..] [--threads 1|2]\n",
          stderr);
    exit(2);
}

/* Comma-separated positive integers into v (at most cap); returns the count. */
static size_t parse_list(const char *s, int64_t *v, size_t cap)
{
    size_t k = 0;
    while (*s && k < cap) {
        char *e;
        long long x = strtoll(s, &e, 10);
        if (e == s || x < 1)
            usage_exit();
        v[k++] = x;
        s = *e == ',' ? e + 1 : e;
        if (*e && *e != ',')
            usage_exit();
    }
    return k;
}

int main(int argc, char **argv)
{
    int group = 64;
    bool symmetric = false;
    /* default: the mixtral-tiny shapes and Mixtral-8x7B's expert w1/w3 */
    int64_t shapes[8][2] = {{512, 256}, {256, 512}, {4096, 256}, {4096, 14336}};
    size_t nshapes = 4, user_shapes = 0;
    int64_t bits[8] = {8, 4, 3, 2};
    size_t nbits = 4;
    int64_t ns[16] = {1, 2, 4, 8, 16, 64, 512};
    size_t nns = 7;
    int thr_mask = 3; /* bit t: run with t+1 threads */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--group") == 0 && i + 1 < argc)
            group = atoi(argv[++i]);
        else if (strcmp(argv[i], "--symmetric") == 0)
            symmetric = true;
        else if (strcmp(argv[i], "--quick") == 0)
            budget = 0.01;
        else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc && user_shapes < 8) {
            long long r, c;
            if (sscanf(argv[++i], "%lldx%lld", &r, &c) != 2 || r < 1 || c < 1)
                usage_exit();
            shapes[user_shapes][0] = r;
            shapes[user_shapes][1] = c;
            nshapes = ++user_shapes;
        } else if (strcmp(argv[i], "--bits") == 0 && i + 1 < argc)
            nbits = parse_list(argv[++i], bits, 8);
        else if (strcmp(argv[i], "--n") == 0 && i + 1 < argc)
            nns = parse_list(argv[++i], ns, 16);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            thr_mask = atoi(argv[++i]) == 1 ? 1 : atoi(argv[i]) == 2 ? 2 : 3; /* else both */
        else
            usage_exit();
    }
    if (group < 1 || nbits == 0 || nns == 0)
        usage_exit();
    for (size_t bi = 0; bi < nbits; bi++)
        if (bits[bi] > 8)
            usage_exit();
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("# bench-qmatmul: group %d, %s; matmul kernel %s; OPENBLAS_CORETYPE %s\n", group,
           symmetric ? "symmetric" : "asymmetric", moec_matmul_kernel_name(), ct ? ct : "unset");
    printf("# shapes over 16M weights run n <= 16 only; 'tiles' is the dequantize + F32 path\n");
    printf("%-11s %4s %4s %3s | %9s | %9s %-6s | %9s | %9s\n", "shape", "bits", "n", "thr", "BF16 us",
           "quant us", "path", "qgemm f32", "tiles us");
    moec_pool *pools[2] = {moec_pool_new(1), moec_pool_new(2)};
    if (!pools[0] || !pools[1]) {
        fprintf(stderr, "bench-qmatmul: cannot start threads\n");
        return 1;
    }
    int64_t max_n = 1;
    for (size_t ni = 0; ni < nns; ni++)
        max_n = ns[ni] > max_n ? ns[ni] : max_n;
    for (size_t si = 0; si < nshapes; si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1];
        const bool big = rows * cols > (16 << 20);
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
        for (size_t bi = 0; bi < nbits; bi++) {
            moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
            o.bits = (int)bits[bi];
            o.group = group;
            o.symmetric = symmetric;
            moec_qmatrix qm;
            moec_err err = {0};
            if (moec_rtn_quantize(W, rows, cols, &o, "bench", &qm, &err)) {
                fprintf(stderr, "bench-qmatmul: %s\n", err.msg);
                return 1;
            }
            moec_tensor Tq = moec_qformat_tensor(&qm.f);
            for (size_t ni = 0; ni < nns; ni++) {
                if (big && ns[ni] > 16)
                    continue;
                for (int t = 0; t < 2; t++) {
                    if (!(thr_mask & (1 << t)))
                        continue;
                    call cb = {pools[t], y, x, ns[ni], &Tb}, cq = {pools[t], y, x, ns[ni], &Tq};
                    double us_b = time_us(run_bf16, &cb);
                    moec_matmul_quant_force_path(0);
                    double us_q = time_us(run_quant, &cq);
                    moec_matmul_quant_force_path(1);
                    moec_matmul_quant_int8_activations(false);
                    double us_d = time_us(run_quant, &cq);
                    moec_matmul_quant_int8_activations(true);
                    moec_matmul_quant_force_path(2);
                    double us_t = time_us(run_quant, &cq);
                    moec_matmul_quant_force_path(0);
                    const bool direct = ns[ni] <= moec_matmul_quant_direct_max_n(&Tq);
                    char shape[32];
                    snprintf(shape, sizeof shape, "%lldx%lld", (long long)rows, (long long)cols);
                    printf("%-11s %4d %4lld %3d | %9.2f | %9.2f %-6s | %9.2f | %9.2f\n", shape, (int)bits[bi],
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
