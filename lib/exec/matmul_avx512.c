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

#define MM_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define INL static inline __attribute__((always_inline)) MM_TARGET

/* x rows per tile: 4 W rows x 6 x rows = 24 accumulators + 6 x vectors +
 * 1 weight vector fill the 32 zmm registers. Fewer x rows take more W rows
 * (16 x 1, 8 x 2, 4 x 3..5). Measured on Zen 5, 6 x rows beat 4 by ~5% for
 * BF16 and lose ~5% for F16 and F32, which therefore stop at 4. */
#define MAX_NX 6
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

/* Bytes ahead of the current position that the one-row kernel prefetches. */
#define GEMV_PREFETCH 4096

/* y[r] (+)= x · w[r] for one x row (decode), one weight row at a time:
 * the matrix is then read as one sequential stream, which the prefetchers
 * (and a software prefetch GEMV_PREFETCH bytes ahead, which runs into the
 * next rows) keep at memory speed, and four accumulators per row hide the
 * FMA latency. Measured on the Zen 5 class dev machine (one thread, CPU
 * time, 151936 x 2048 BF16 from memory): ~34 GB/s, the speed of a plain
 * read, where tiles of 16 rows (16 streams) reached ~20. */
INL void gemv1_dt(int dt, float *y, const float *x, const char *w, int64_t rows, int64_t K, bool acc)
{
    const int64_t es = dt == MOEC_DT_F32 ? 4 : 2;
    for (int64_t r = 0; r < rows; r++) {
        const char *wr = w + r * K * es;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t k = 0;
        for (; k + 64 <= K; k += 64) {
#pragma GCC unroll 4
            for (int l = 0; l < 64 * es / 64; l++)
                _mm_prefetch(wr + k * es + GEMV_PREFETCH + 64 * l, _MM_HINT_T0);
            a0 = _mm512_fmadd_ps(widen16(dt, wr, k), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(widen16(dt, wr, k + 16), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(widen16(dt, wr, k + 32), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(widen16(dt, wr, k + 48), _mm512_loadu_ps(x + k + 48), a3);
        }
        for (; k + 16 <= K; k += 16)
            a0 = _mm512_fmadd_ps(widen16(dt, wr, k), _mm512_loadu_ps(x + k), a0);
        if (k < K) {
            __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
            a1 = _mm512_fmadd_ps(widen16_mask(dt, wr, k, m), _mm512_maskz_loadu_ps(m, x + k), a1);
        }
        const float v = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        y[r] = acc ? y[r] + v : v;
    }
}

INL void widen_store(int dt, float *dst, const void *src, int64_t k)
{
    _mm512_storeu_ps(dst, widen16(dt, src, k));
}

INL void widen_store_part(int dt, float *dst, const void *src, int64_t k, int n)
{
    __mmask16 m = (__mmask16)((1u << n) - 1);
    _mm512_mask_storeu_ps(dst, m, widen16_mask(dt, src, k, m));
}

/* Tile shapes as at MAX_NX; W rows left over go 4 at a time, then singly. */
#define MM_TILE_NX(dt) ((dt) == MOEC_DT_BF16 ? MAX_NX : 4)
#define MM_NX_LIST(X) X(6) X(5) X(4) X(3) X(2)
#define MM_TILE_ROWS(NX) ((NX) == 1 ? 16 : (NX) == 2 ? 8 : 4)
#define MM_TAIL_ROWS 4
#define MM_LANES 16
#define MM_GEMV1(dt, y, x, w, rows, K, acc) gemv1_dt(dt, y, x, w, rows, K, acc)
#include "exec/matmul_driver.h"

const moec_mm_kernels moec_mm_avx512_kernels = {"avx512", DIRECT_MAX_N, direct, to_f32};
