/* matmul_driver.h - the part of the direct matmul kernels that does not
 * depend on the vector ISA: cutting the product into K blocks, row chunks
 * and x-row groups, and picking the tile shapes, then the per-dtype entry
 * points. Included once by each matmul_<isa>.c after it has defined:
 *
 *   MM_TARGET           the target attribute for the ISA
 *   MM_TILE_NX(dt)      x rows per tile for weights of dtype dt
 *   MM_NX_LIST(X)       X(nx) for every x-row count above 1 that a tile
 *                       may have (one x row is the default case)
 *   MM_TILE_ROWS(NX)    W rows per tile with NX x rows
 *   MM_TAIL_ROWS        a shorter tile height for the rows left after the
 *                       full tiles, before single rows (1: none)
 *   tile(dt, R, NX, y, ldy, x, ldx, w, wstride, K, acc)
 *                       the micro-kernel: y[i·ldy + r] (+)= x[i] · w[r]
 *   widen_store(dt, dst, src, k)            dst[0..MM_LANES) = src[k..] as float32
 *   widen_store_part(dt, dst, src, k, n)    the same for the last n < MM_LANES
 *   MM_LANES            floats per vector
 *   MM_GEMV1(dt, y, x, w, rows, K, acc)   (optional) the kernel for n = 1
 *
 * Everything down to tile is always inlined into one function per dtype,
 * so dt, R and NX are constants inside tile and its loops unroll fully;
 * the generated code is the same as with a copy of this driver per ISA.
 */
#ifndef MOEC_EXEC_MATMUL_DRIVER_H
#define MOEC_EXEC_MATMUL_DRIVER_H

#define MM_INL static inline __attribute__((always_inline)) MM_TARGET

/* Rows of W kept hot in L1 while all x blocks pass over them. */
#define ROW_CHUNK 16
#define K_BLOCK 512

/* All rows of a ROW_CHUNK (or the tail) against NX x rows. */
MM_INL void rows_nx(int dt, int NX, float *y, int64_t ldy, const float *x, int64_t ldx,
                    const char *w, int64_t wstride, int64_t rows, int64_t K, bool acc)
{
    const int R = MM_TILE_ROWS(NX);
    int64_t r = 0;
    for (; r + R <= rows; r += R)
        tile(dt, R, NX, y + r, ldy, x, ldx, w + r * wstride, wstride, K, acc);
    if (MM_TAIL_ROWS > 1)
        for (; r + MM_TAIL_ROWS <= rows; r += MM_TAIL_ROWS)
            tile(dt, MM_TAIL_ROWS, NX, y + r, ldy, x, ldx, w + r * wstride, wstride, K, acc);
    for (; r < rows; r++)
        tile(dt, 1, NX, y + r, ldy, x, ldx, w + r * wstride, wstride, K, acc);
}

/* rows_nx with the run-time width nx turned into a constant per case (nx
 * stays 64-bit so that the compiler still sees nx <= MM_TILE_NX(dt) and
 * drops the wider cases). */
MM_INL void rows_any_nx(int dt, int64_t nx, float *y, int64_t ldy, const float *x, int64_t ldx,
                        const char *w, int64_t wstride, int64_t rows, int64_t K, bool acc)
{
#define MM_NX_CASE(NX)                                                                             \
    case NX:                                                                                       \
        rows_nx(dt, NX, y, ldy, x, ldx, w, wstride, rows, K, acc);                                 \
        return;
    switch (nx) {
        MM_NX_LIST(MM_NX_CASE)
    default:
        rows_nx(dt, 1, y, ldy, x, ldx, w, wstride, rows, K, acc);
        return;
    }
#undef MM_NX_CASE
}

MM_INL void direct_dt(int dt, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                      const char *w, int64_t rows, int64_t K, bool acc)
{
#ifdef MM_GEMV1
    /* one x row (decode): the ISA's streaming matrix-vector kernel */
    if (n == 1) {
        MM_GEMV1(dt, y, x, w, rows, K, acc);
        return;
    }
#endif
    const int64_t es = dt == MOEC_DT_F32 ? 4 : 2, wstride = K * es;
    const int max_nx = MM_TILE_NX(dt);
    /* When W rows are reused by several x blocks, long rows are cut into K
     * blocks so that a ROW_CHUNK of W and a block of x rows stay in L1 while
     * they are reused; later blocks add to y. */
    const int64_t kc = n > max_nx && K > 2 * K_BLOCK ? K_BLOCK : K;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t kn = K - k0 < kc ? K - k0 : kc;
        const bool a = acc || k0 > 0;
        for (int64_t r = 0; r < rows; r += ROW_CHUNK) {
            int64_t nr = rows - r < ROW_CHUNK ? rows - r : ROW_CHUNK;
            const char *wr = w + r * wstride + k0 * es;
            const float *xk = x + k0;
            float *yr = y + r;
            for (int64_t i = 0; i < n; i += max_nx)
                rows_any_nx(dt, n - i < max_nx ? n - i : max_nx, yr + i * ldy, ldy,
                            xk + i * ldx, ldx, wr, wstride, nr, kn, a);
        }
    }
}

/* One out-of-line function per dtype, each with its own inlined tiles. */
MM_TARGET static void direct_f32(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                                 const char *w, int64_t rows, int64_t K, bool acc)
{
    direct_dt(MOEC_DT_F32, y, ldy, x, ldx, n, w, rows, K, acc);
}

MM_TARGET static void direct_f16(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                                 const char *w, int64_t rows, int64_t K, bool acc)
{
    direct_dt(MOEC_DT_F16, y, ldy, x, ldx, n, w, rows, K, acc);
}

MM_TARGET static void direct_bf16(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                                  const char *w, int64_t rows, int64_t K, bool acc)
{
    direct_dt(MOEC_DT_BF16, y, ldy, x, ldx, n, w, rows, K, acc);
}

MM_TARGET static void direct(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                             const void *w, int dt, int64_t rows, int64_t K, bool acc)
{
    switch (dt) {
    case MOEC_DT_F32:
        direct_f32(y, ldy, x, ldx, n, w, rows, K, acc);
        break;
    case MOEC_DT_F16:
        direct_f16(y, ldy, x, ldx, n, w, rows, K, acc);
        break;
    case MOEC_DT_BF16:
        direct_bf16(y, ldy, x, ldx, n, w, rows, K, acc);
        break;
    default:
        break;
    }
}

/* Whole vectors of src from 0 on; returns where they stop. */
MM_INL int64_t to_f32_dt(int dt, float *dst, const void *src, int64_t count)
{
    int64_t i = 0;
    for (; i + MM_LANES <= count; i += MM_LANES)
        widen_store(dt, dst + i, src, i);
    return i;
}

MM_TARGET static void to_f32(float *dst, const void *src, int dt, int64_t count)
{
    int64_t i = dt == MOEC_DT_BF16  ? to_f32_dt(MOEC_DT_BF16, dst, src, count)
                : dt == MOEC_DT_F16 ? to_f32_dt(MOEC_DT_F16, dst, src, count)
                                    : to_f32_dt(MOEC_DT_F32, dst, src, count);
    if (i < count)
        widen_store_part(dt, dst + i, src, i, (int)(count - i));
}

#endif
