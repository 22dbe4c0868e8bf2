#include "exec/matmul.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "exec/matmul_quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

/* Below this many flops (2·n·rows·K) a product runs on the caller alone:
 * waking the workers and joining them (~1 µs) would cost more than it saves. */
#define PAR_MIN_FLOPS 49152
/* Output rows are handed out in multiples of this, so that no two workers
 * write the same cache line of y (16 floats = 64 bytes). */
#define ROW_ALIGN 16
/* Chunks of W rows per worker in a parallel product: fine enough that a
 * preempted worker delays the product by a fraction of its share, coarse
 * enough that a claim (one atomic add) costs nothing next to it. */
#define CLAIMS_PER_WORKER 8
/* Bytes of float32 weights converted per sgemm call: big enough that sgemm
 * runs near peak, small enough to stay in L2 next to sgemm's own packing. */
#define TILE_BYTES (256 * 1024)

/* ---- portable kernels ------------------------------------------------- */

/* Weights are converted in chunks of this many columns on the stack. */
#define PCHUNK 256
/* x rows sharing one converted weight chunk. */
#define PNX 4
/* Beyond this n, converting a tile once and calling sgemm beats the
 * portable direct loop. */
#define PORTABLE_DIRECT_MAX_N 3

static void portable_to_f32(float *dst, const void *src, int dt, int64_t count)
{
    if (dt == MOEC_DT_F32)
        memcpy(dst, src, (size_t)count * sizeof(float)); /* src may be misaligned */
    else
        moec_to_f32(dst, src, (moec_dtype)dt, (size_t)count);
}

/* Eight partial sums keep the dependency chains short and let the compiler
 * vectorise with whatever baseline SIMD it targets. */
static float dot_f32(const float *a, const float *b, int64_t n)
{
    float s[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++)
            s[j] += a[k + j] * b[k + j];
    for (; k < n; k++)
        s[k & 7] += a[k] * b[k];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static void portable_direct(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                            const void *w, int dt, int64_t rows, int64_t K, bool acc)
{
    const size_t es = moec_dtype_size((moec_dtype)dt);
    float wf[PCHUNK];
    for (int64_t i0 = 0; i0 < n; i0 += PNX) {
        int64_t ni = n - i0 < PNX ? n - i0 : PNX;
        for (int64_t r = 0; r < rows; r++) {
            const char *wr = (const char *)w + (size_t)(r * K) * es;
            float s[PNX] = {0};
            for (int64_t k = 0; k < K; k += PCHUNK) {
                int64_t kn = K - k < PCHUNK ? K - k : PCHUNK;
                portable_to_f32(wf, wr + (size_t)k * es, dt, kn);
                for (int64_t i = 0; i < ni; i++)
                    s[i] += dot_f32(wf, x + (i0 + i) * ldx + k, kn);
            }
            for (int64_t i = 0; i < ni; i++) {
                float *yo = &y[(i0 + i) * ldy + r];
                *yo = acc ? *yo + s[i] : s[i];
            }
        }
    }
}

static const moec_mm_kernels portable_kernels = {"portable", PORTABLE_DIRECT_MAX_N, portable_direct,
                                                  portable_to_f32};

/* ---- kernel selection ------------------------------------------------- */

static const moec_mm_kernels *_Atomic forced;

static bool cpu_has_avx512(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

static bool cpu_has_avx2(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    /* F16C is not a feature name every compiler's builtin knows; AVX2 being
     * usable already implies the OS saves the ymm state it needs. */
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
    return false;
#endif
}

static const moec_mm_kernels *best_kernels(void)
{
    static const moec_mm_kernels *_Atomic best;
    const moec_mm_kernels *k = atomic_load_explicit(&best, memory_order_relaxed);
    if (!k) {
        k = cpu_has_avx512() ? &moec_mm_avx512_kernels
            : cpu_has_avx2() ? &moec_mm_avx2_kernels
                             : &portable_kernels;
        atomic_store_explicit(&best, k, memory_order_relaxed);
    }
    return k;
}

static const moec_mm_kernels *kernels(void)
{
    const moec_mm_kernels *k = atomic_load_explicit(&forced, memory_order_relaxed);
    return k ? k : best_kernels();
}

void moec_matmul_force_portable(bool on)
{
    atomic_store_explicit(&forced, on ? &portable_kernels : NULL, memory_order_relaxed);
}

bool moec_matmul_set_kernel(const char *name)
{
    const moec_mm_kernels *k;
    if (!name)
        k = NULL;
    else if (strcmp(name, "portable") == 0)
        k = &portable_kernels;
    else if (strcmp(name, "avx2") == 0 && cpu_has_avx2())
        k = &moec_mm_avx2_kernels;
    else if (strcmp(name, "avx512") == 0 && cpu_has_avx512())
        k = &moec_mm_avx512_kernels;
    else
        return false;
    atomic_store_explicit(&forced, k, memory_order_relaxed);
    return true;
}

const char *moec_matmul_kernel_name(void)
{
    return kernels()->name;
}

int64_t moec_matmul_direct_max_n(void)
{
    return kernels()->direct_max_n;
}

/* ---- checks ----------------------------------------------------------- */

moec_status moec_matmul_check(const moec_tensor *W, int64_t in_features, moec_err *err)
{
    if (!W)
        return moec_err_set(err, MOEC_ERR_ARG, "matmul: no weight tensor");
    if (W->ndim != 2)
        return moec_err_set(err, MOEC_ERR_SHAPE, "matmul: weight must be 2-D, found %d dims",
                            W->ndim);
    if (W->dtype != MOEC_DT_F32 && W->dtype != MOEC_DT_F16 && W->dtype != MOEC_DT_BF16)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "matmul: weight dtype %s, expected F32, F16 or BF16",
                            moec_dtype_name(W->dtype));
    int64_t rows = W->shape[0], cols = W->shape[1];
    if (rows < 0 || cols < 0 || (cols > 0 && rows > INT64_MAX / cols))
        return moec_err_set(err, MOEC_ERR_SHAPE, "matmul: bad weight shape [%lld][%lld]",
                            (long long)rows, (long long)cols);
    if (in_features >= 0 && cols != in_features)
        return moec_err_set(err, MOEC_ERR_SHAPE,
                            "matmul: weight [%lld][%lld] has %lld input features, expected %lld",
                            (long long)rows, (long long)cols, (long long)cols,
                            (long long)in_features);
    uint64_t need = (uint64_t)rows * (uint64_t)cols * moec_dtype_size(W->dtype);
    if (need / moec_dtype_size(W->dtype) != (uint64_t)rows * (uint64_t)cols ||
        (uint64_t)W->nbytes < need)
        return moec_err_set(err, MOEC_ERR_SHAPE,
                            "matmul: weight [%lld][%lld] %s needs %llu bytes, has %zu",
                            (long long)rows, (long long)cols, moec_dtype_name(W->dtype),
                            (unsigned long long)need, W->nbytes);
    if (need > 0 && !W->data)
        return moec_err_set(err, MOEC_ERR_ARG, "matmul: weight has no data");
    return MOEC_OK;
}

/* ---- the product ------------------------------------------------------ */

struct job {
    const moec_mm_kernels *kern;
    moec_pool *pool;
    float *y;
    int64_t ldy;
    const float *x;
    int64_t ldx;
    int64_t n;
    const char *w; /* row r0 of W */
    int dt;
    size_t es;
    int64_t rows, K;
    bool acc;
    bool direct;
    bool split_n; /* workers take x rows instead of W rows */
    int64_t chunk; /* W rows per claim (x rows per worker with split_n) */
    int64_t nchunks;
    _Atomic int64_t next; /* the next chunk of W rows to claim */
};

/* y[n][rows] for W rows [0, rows) of the job's w, through sgemm. Returns
 * false when no tile buffer could be had (the caller falls back). */
static bool sgemm_part(const struct job *j, int thread, float *y, const float *x, int64_t n,
                       const char *w, int64_t rows)
{
    const float beta = j->acc ? 1.0f : 0.0f;
    const int64_t K = j->K;
    if (j->dt == MOEC_DT_F32 && ((uintptr_t)w & (sizeof(float) - 1)) == 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)rows, (int)K, 1.0f, x,
                    (int)j->ldx, (const float *)w, (int)K, beta, y, (int)j->ldy);
        return true;
    }
    int64_t tile_rows = TILE_BYTES / (K * (int64_t)sizeof(float));
    if (tile_rows < ROW_ALIGN)
        tile_rows = ROW_ALIGN;
    if (tile_rows > rows)
        tile_rows = rows;
    size_t bytes = (size_t)(tile_rows * K) * sizeof(float);
    bool own = !j->pool;
    float *tile = own ? NULL : moec_pool_scratch(j->pool, thread, bytes);
    if (!tile) {
        /* no pool, or a run that found the pool busy */
        tile = malloc(bytes);
        own = true;
    }
    if (!tile)
        return false;
    for (int64_t r = 0; r < rows; r += tile_rows) {
        int64_t tr = rows - r < tile_rows ? rows - r : tile_rows;
        j->kern->to_f32(tile, w + (size_t)(r * K) * j->es, j->dt, tr * K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)tr, (int)K, 1.0f, x,
                    (int)j->ldx, tile, (int)K, beta, y + r, (int)j->ldy);
    }
    if (own)
        free(tile);
    return true;
}

static void part(const struct job *j, int thread, float *y, const float *x, int64_t n,
                 const char *w, int64_t rows)
{
    if (n <= 0 || rows <= 0)
        return;
    if (!j->direct && sgemm_part(j, thread, y, x, n, w, rows))
        return;
    j->kern->direct(y, j->ldy, x, j->ldx, n, w, j->dt, rows, j->K, j->acc);
}

/* W rows are claimed a chunk at a time from a shared counter, so that a
 * worker the OS preempts (a busy machine) holds up at most one chunk: the
 * others take the rest. Which worker computes a row never changes its
 * value. */
static void worker(void *ctx, int thread, int n_threads)
{
    (void)n_threads;
    struct job *j = ctx;
    if (j->split_n) {
        int64_t b = (int64_t)thread * j->chunk;
        if (b >= j->n)
            return;
        int64_t e = b + j->chunk < j->n ? b + j->chunk : j->n;
        part(j, thread, j->y + b * j->ldy, j->x + b * j->ldx, e - b, j->w, j->rows);
        return;
    }
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->nchunks)
            return;
        int64_t b = c * j->chunk, e = b + j->chunk < j->rows ? b + j->chunk : j->rows;
        part(j, thread, j->y + b, j->x, j->n, j->w + (size_t)(b * j->K) * j->es, e - b);
    }
}

void moec_matmul_ex(moec_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                    const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate)
{
    /* group-wise quantized weights have their own kernels (matmul_quant.c) */
    if (W && W->dtype == MOEC_DT_QUANT) {
        moec_matmul_quant(pool, y, ldy, x, ldx, n, W, r0, r1, accumulate);
        return;
    }
    /* Out-of-contract calls touch no memory rather than read or write out
     * of bounds; moec_matmul_check catches bad tensors earlier with a
     * message. */
    if (!W || W->ndim != 2 || !moec_dtype_is_compute(W->dtype) || !x || !y)
        return;
    int64_t rows = r1 - r0, K = moec_tensor_cols(W);
    if (n <= 0 || rows <= 0 || r0 < 0 || r1 > moec_tensor_rows(W) || ldx < K || ldy < rows ||
        (K > 0 && !W->data))
        return;
    const moec_mm_kernels *kern = kernels();
    struct job j = {
        .kern = kern,
        .pool = pool,
        .y = y,
        .ldy = ldy,
        .x = x,
        .ldx = ldx,
        .n = n,
        .dt = (int)W->dtype,
        .es = moec_dtype_size(W->dtype),
        .rows = rows,
        .K = K,
        .acc = accumulate,
        .direct = n <= kern->direct_max_n,
    };
    j.w = (const char *)W->data + (size_t)(r0 * K) * j.es;
    if (K == 0) {
        /* an empty sum: y = 0 (or unchanged) */
        for (int64_t i = 0; i < n && !accumulate; i++)
            memset(y + i * ldy, 0, (size_t)rows * sizeof(float));
        return;
    }
    int nt = moec_pool_size(pool);
    double flops = 2.0 * (double)n * (double)rows * (double)K;
    j.chunk = rows;
    j.nchunks = 1;
    atomic_init(&j.next, 0);
    if (flops < PAR_MIN_FLOPS) {
        /* Outside a run the pool's scratch may belong to someone else's run,
         * so a small product that needs sgemm allocates its (small) tile. */
        j.pool = NULL;
        worker(&j, 0, 1);
        return;
    }
    if (nt == 1) {
        moec_pool_run(pool, worker, &j);
        return;
    }
    if (rows >= (int64_t)ROW_ALIGN * nt || n < nt) {
        /* CLAIMS_PER_WORKER chunks a worker, rounded to whole 64-byte lines of y */
        int64_t per = (rows + (int64_t)nt * CLAIMS_PER_WORKER - 1) / ((int64_t)nt * CLAIMS_PER_WORKER);
        j.chunk = (per + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN;
        j.nchunks = (rows + j.chunk - 1) / j.chunk;
    } else {
        j.split_n = true;
        j.chunk = (n + nt - 1) / nt;
    }
    moec_pool_run(pool, worker, &j);
}

void moec_matmul_share(moec_pool *pool, int thread, float *y, int64_t ldy, const float *x, int64_t ldx,
                       int64_t n, const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate)
{
    if (W && W->dtype == MOEC_DT_QUANT) {
        moec_matmul_quant_share(pool, thread, y, ldy, x, ldx, n, W, r0, r1, accumulate);
        return;
    }
    if (!W || W->ndim != 2 || !moec_dtype_is_compute(W->dtype) || !x || !y)
        return;
    const int64_t rows = r1 - r0, K = moec_tensor_cols(W);
    if (n <= 0 || rows <= 0 || r0 < 0 || r1 > moec_tensor_rows(W) || ldx < K || ldy < rows ||
        (K > 0 && !W->data))
        return;
    const moec_mm_kernels *kern = kernels();
    struct job j = {
        .kern = kern,
        .pool = pool,
        .y = y,
        .ldy = ldy,
        .x = x,
        .ldx = ldx,
        .n = n,
        .dt = (int)W->dtype,
        .es = moec_dtype_size(W->dtype),
        .rows = rows,
        .K = K,
        .acc = accumulate,
        .direct = n <= kern->direct_max_n,
        .chunk = rows,
        .nchunks = 1,
    };
    j.w = (const char *)W->data + (size_t)(r0 * K) * j.es;
    if (K == 0) {
        for (int64_t i = 0; i < n && !accumulate; i++)
            memset(y + i * ldy, 0, (size_t)rows * sizeof(float));
        return;
    }
    part(&j, thread, y, x, n, j.w, rows);
}

void moec_matmul_rows(moec_pool *pool, float *y, const float *x, int64_t n, const moec_tensor *W,
                      int64_t r0, int64_t r1, bool accumulate)
{
    if (W)
        moec_matmul_ex(pool, y, r1 - r0, x, moec_tensor_cols(W), n, W, r0, r1, accumulate);
}

void moec_matmul(moec_pool *pool, float *y, const float *x, int64_t n, const moec_tensor *W,
                 bool accumulate)
{
    if (W)
        moec_matmul_rows(pool, y, x, n, W, 0, moec_tensor_rows(W), accumulate);
}
