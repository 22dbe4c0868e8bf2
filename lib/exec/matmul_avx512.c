/* matmul_avx512.c - AVX-512 kernels for matmul.c (see moec_mm_kernels in
 * matmul.h). Compiled without -march: every function carries its target
 * attribute and is only called after matmul.c has checked the CPU.
 *
 * The direct kernel computes an R x NX tile (R weight rows, NX x rows, up
 * to 24 accumulators) in one pass over K: each 16-element step loads NX x
 * vectors, then per weight row loads 16 weights, widens them to float32
 * (BF16: zero-extend and shift left 16; F16: vcvtph2ps) and issues NX FMAs.
 * The accumulators are then summed horizontally 16 at a time (a 4-level
 * shuffle tree, ~3 instructions per output instead of ~8 for one at a time).
 */
#include "exec/matmul.h"

#include <immintrin.h>

#include "core/dtype.h"

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define INL static inline __attribute__((always_inline)) T512

/* x rows per tile: 4 W rows x 6 x rows = 24 accumulators + 6 x vectors +
 * 1 weight vector fill the 32 zmm registers. Fewer x rows take more W rows
 * (16 x 1, 8 x 2, 4 x 3..5). Measured on Zen 5, 6 x rows beat 4 by ~5% for
 * BF16 and lose ~5% for F16 and F32, which therefore stop at 4. */
#define MAX_NX 6
/* Rows of W kept hot in L1 while all x blocks pass over them. */
#define ROW_CHUNK 16
#define K_BLOCK 512
/* The direct kernel serves every n: on a Zen 5 core it runs at 205-235
 * GFLOP/s from n = 4 up, where tile conversion + OpenBLAS sgemm reaches ~125
 * with the Haswell kernels (OPENBLAS_CORETYPE=Haswell) and 170-225 with its
 * AVX-512 ones (n = 64..512), and it needs no conversion buffer. */
#define DIRECT_MAX_N INT64_MAX

INL __m512 widen16(int dt, const void *w, int64_t k)
{
    if (dt == MOEC_DT_F32)
        return _mm512_loadu_ps((const float *)w + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k));
    if (dt == MOEC_DT_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Masked loads never touch the lanes that are off, so the last partial
 * step does not read past the row (or past the mapping). */
INL __m512 widen16_mask(int dt, const void *w, int64_t k, __mmask16 m)
{
    if (dt == MOEC_DT_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)w + k);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + k);
    if (dt == MOEC_DT_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Returns s with s[4j+m] = sum of all lanes of a[j+4m]. */
INL __m512 reduce16(const __m512 a[16])
{
    __m512 b[8], c[4], d[2];
    for (int p = 0; p < 8; p++)
        b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xEE));
    for (int q = 0; q < 4; q++)
        c[q] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * q], b[2 * q + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * q], b[2 * q + 1], 0xDD));
    for (int q = 0; q < 2; q++)
        d[q] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * q], c[2 * q + 1], 0x88),
                             _mm512_shuffle_ps(c[2 * q], c[2 * q + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
}

static inline int lane_of(int s)
{
    return 4 * (s % 4) + s / 4;
}

/* y[i·ldy + r] (+)= x[i] · w[r] for r < R, i < NX; w rows are wstride bytes
 * apart and K long.
 *
 * With one x row the kernel is bound by reading W from L3 (decode reads
 * every weight once per token), and the hardware prefetchers do not ramp up
 * on 16 short row streams; so each row also prefetches, a cache line at a
 * time, the same place in the next tile (R rows on), ~1.4x faster on a
 * decode step. */
INL void tile(int dt, int R, int NX, float *y, int64_t ldy, const float *x, int64_t ldx,
              const char *w, int64_t wstride, int64_t K, bool acc)
{
    const int64_t es = dt == MOEC_DT_F32 ? 4 : 2;
    /* accumulator i·R + r holds x row i against W row r; R divides 16, so
     * each x row's R sums land in one group of 16 for the reduction */
    __m512 a[32];
#pragma GCC unroll 32
    for (int s = 0; s < 32; s++)
        a[s] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv[MAX_NX];
#pragma GCC unroll 6
        for (int i = 0; i < NX; i++)
            xv[i] = _mm512_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            if (NX == 1 && ((k * es) & 63) == 0)
                _mm_prefetch(w + r * wstride + k * es + R * wstride, _MM_HINT_T0);
            __m512 wv = widen16(dt, w + r * wstride, k);
#pragma GCC unroll 6
            for (int i = 0; i < NX; i++)
                a[i * R + r] = _mm512_fmadd_ps(wv, xv[i], a[i * R + r]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        __m512 xv[MAX_NX];
#pragma GCC unroll 6
        for (int i = 0; i < NX; i++)
            xv[i] = _mm512_maskz_loadu_ps(m, x + i * ldx + k);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            __m512 wv = widen16_mask(dt, w + r * wstride, k, m);
#pragma GCC unroll 6
            for (int i = 0; i < NX; i++)
                a[i * R + r] = _mm512_fmadd_ps(wv, xv[i], a[i * R + r]);
        }
    }
    __m512 sums[2];
    sums[0] = reduce16(a);
    if (R * NX > 16)
        sums[1] = reduce16(a + 16);
    __mmask16 out = (__mmask16)((1u << R) - 1);
#pragma GCC unroll 6
    for (int i = 0; i < NX; i++) {
        int idx[16] = {0};
        for (int r = 0; r < R; r++)
            idx[r] = lane_of((i * R + r) % 16);
        __m512i perm = _mm512_setr_epi32(idx[0], idx[1], idx[2], idx[3], idx[4], idx[5], idx[6],
                                         idx[7], idx[8], idx[9], idx[10], idx[11], idx[12],
                                         idx[13], idx[14], idx[15]);
        __m512 v = _mm512_permutexvar_ps(perm, sums[i * R / 16]);
        float *yi = y + i * ldy;
        if (acc)
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(out, yi));
        _mm512_mask_storeu_ps(yi, out, v);
    }
}

/* All rows of a ROW_CHUNK (or the tail) against NX x rows. */
INL void rows_nx(int dt, int NX, float *y, int64_t ldy, const float *x, int64_t ldx,
                 const char *w, int64_t wstride, int64_t rows, int64_t K, bool acc)
{
    const int R = NX == 1 ? 16 : NX == 2 ? 8 : 4;
    int64_t r = 0;
    for (; r + R <= rows; r += R)
        tile(dt, R, NX, y + r, ldy, x, ldx, w + r * wstride, wstride, K, acc);
    for (; r + 4 <= rows; r += 4)
        tile(dt, 4, NX, y + r, ldy, x, ldx, w + r * wstride, wstride, K, acc);
    for (; r < rows; r++)
        tile(dt, 1, NX, y + r, ldy, x, ldx, w + r * wstride, wstride, K, acc);
}

INL void direct_dt(int dt, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                   const char *w, int64_t rows, int64_t K, bool acc)
{
    const int64_t es = dt == MOEC_DT_F32 ? 4 : 2, wstride = K * es;
    /* When W rows are reused by several x blocks, long rows are cut into K
     * blocks so that a ROW_CHUNK of W and a block of x rows stay in L1 while
     * they are reused; later blocks add to y. */
    const int max_nx = dt == MOEC_DT_BF16 ? MAX_NX : 4;
    const int64_t kc = n > max_nx && K > 2 * K_BLOCK ? K_BLOCK : K;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t kn = K - k0 < kc ? K - k0 : kc;
        const bool a = acc || k0 > 0;
        for (int64_t r = 0; r < rows; r += ROW_CHUNK) {
            int64_t nr = rows - r < ROW_CHUNK ? rows - r : ROW_CHUNK;
            const char *wr = w + r * wstride + k0 * es;
            const float *xk = x + k0;
            float *yr = y + r;
            for (int64_t i = 0; i < n; i += max_nx) {
                float *yi = yr + i * ldy;
                const float *xi = xk + i * ldx;
                switch (n - i < max_nx ? n - i : max_nx) {
                case 6:
                    rows_nx(dt, 6, yi, ldy, xi, ldx, wr, wstride, nr, kn, a);
                    break;
                case 5:
                    rows_nx(dt, 5, yi, ldy, xi, ldx, wr, wstride, nr, kn, a);
                    break;
                case 4:
                    rows_nx(dt, 4, yi, ldy, xi, ldx, wr, wstride, nr, kn, a);
                    break;
                case 3:
                    rows_nx(dt, 3, yi, ldy, xi, ldx, wr, wstride, nr, kn, a);
                    break;
                case 2:
                    rows_nx(dt, 2, yi, ldy, xi, ldx, wr, wstride, nr, kn, a);
                    break;
                default:
                    rows_nx(dt, 1, yi, ldy, xi, ldx, wr, wstride, nr, kn, a);
                    break;
                }
            }
        }
    }
}

T512 static void direct_f32(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                            const char *w, int64_t rows, int64_t K, bool acc)
{
    direct_dt(MOEC_DT_F32, y, ldy, x, ldx, n, w, rows, K, acc);
}

T512 static void direct_f16(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                            const char *w, int64_t rows, int64_t K, bool acc)
{
    direct_dt(MOEC_DT_F16, y, ldy, x, ldx, n, w, rows, K, acc);
}

T512 static void direct_bf16(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                             const char *w, int64_t rows, int64_t K, bool acc)
{
    direct_dt(MOEC_DT_BF16, y, ldy, x, ldx, n, w, rows, K, acc);
}

T512 static void direct(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
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

T512 static void to_f32(float *dst, const void *src, int dt, int64_t count)
{
    int64_t i = 0;
    if (dt == MOEC_DT_BF16) {
        for (; i + 16 <= count; i += 16)
            _mm512_storeu_ps(dst + i, widen16(MOEC_DT_BF16, src, i));
    } else if (dt == MOEC_DT_F16) {
        for (; i + 16 <= count; i += 16)
            _mm512_storeu_ps(dst + i, widen16(MOEC_DT_F16, src, i));
    } else {
        for (; i + 16 <= count; i += 16)
            _mm512_storeu_ps(dst + i, widen16(MOEC_DT_F32, src, i));
    }
    if (i < count) {
        __mmask16 m = (__mmask16)((1u << (count - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, widen16_mask(dt, src, i, m));
    }
}

const moec_mm_kernels moec_mm_avx512_kernels = {"avx512", DIRECT_MAX_N, direct, to_f32};
