/* matmul_avx2.c - AVX2/FMA/F16C kernels for matmul.c, for x86-64 CPUs
 * without AVX-512. Same scheme as matmul_avx512.c at half the width: an
 * R x NX tile (8 W rows x 1 x row, or 4 x 2; 8 accumulators of the 16 ymm
 * registers) per pass over K, weights widened to float32 in registers, one
 * horizontal reduction for all 8 accumulators at the end. AVX2 has no
 * 16-bit masked load, so the last partial step goes through a small
 * zero-padded copy.
 *
 * Measured on a Zen 5 core (AVX-512 masked off): ~107 GFLOP/s from n = 2
 * on, against ~105 for tile conversion + OpenBLAS Haswell sgemm at n = 64
 * and ~125 at n >= 128; hence sgemm above DIRECT_MAX_N.
 */
#include "exec/matmul.h"

#include <immintrin.h>
#include <string.h>

#include "core/dtype.h"

#define MM_TARGET __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) MM_TARGET
/* This family's direct kernel beats tile conversion + sgemm up to here. */
#define DIRECT_MAX_N 64

INL __m256 widen8(int dt, const void *w, int64_t k)
{
    if (dt == MOEC_DT_F32)
        return _mm256_loadu_ps((const float *)w + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    if (dt == MOEC_DT_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The first n (< 8) elements from w + k, zeros after them. */
INL __m256 widen8_part(int dt, const void *w, int64_t k, int n)
{
    if (dt == MOEC_DT_F32) {
        float buf[8] = {0};
        memcpy(buf, (const float *)w + k, (size_t)n * sizeof(float));
        return _mm256_loadu_ps(buf);
    }
    uint16_t buf[8] = {0};
    memcpy(buf, (const uint16_t *)w + k, (size_t)n * sizeof(uint16_t));
    return widen8(dt, buf, 0);
}

/* Lane l of the result is the sum of all lanes of a[l]. */
INL __m256 reduce8(const __m256 a[8])
{
    __m256 b0 = _mm256_hadd_ps(a[0], a[1]), b1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 b2 = _mm256_hadd_ps(a[4], a[5]), b3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 c0 = _mm256_hadd_ps(b0, b1), c1 = _mm256_hadd_ps(b2, b3);
    return _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20),
                         _mm256_permute2f128_ps(c0, c1, 0x31));
}

INL void tile(int dt, int R, int NX, float *y, int64_t ldy, const float *x, int64_t ldx,
              const char *w, int64_t wstride, int64_t K, bool acc)
{
    const int64_t es = dt == MOEC_DT_F32 ? 4 : 2;
    __m256 a[8];
#pragma GCC unroll 8
    for (int s = 0; s < 8; s++)
        a[s] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[2];
#pragma GCC unroll 2
        for (int i = 0; i < NX; i++)
            xv[i] = _mm256_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            /* see matmul_avx512.c: decode is bound by reading W */
            if (NX == 1 && ((k * es) & 63) == 0)
                _mm_prefetch(w + r * wstride + k * es + R * wstride, _MM_HINT_T0);
            __m256 wv = widen8(dt, w + r * wstride, k);
#pragma GCC unroll 2
            for (int i = 0; i < NX; i++)
                a[r * NX + i] = _mm256_fmadd_ps(wv, xv[i], a[r * NX + i]);
        }
    }
    if (k < K) {
        int rest = (int)(K - k);
        __m256 xv[2];
#pragma GCC unroll 2
        for (int i = 0; i < NX; i++)
            xv[i] = widen8_part(MOEC_DT_F32, x + i * ldx, k, rest);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 wv = widen8_part(dt, w + r * wstride, k, rest);
#pragma GCC unroll 2
            for (int i = 0; i < NX; i++)
                a[r * NX + i] = _mm256_fmadd_ps(wv, xv[i], a[r * NX + i]);
        }
    }
    /* Through memory rather than vmaskmovps, whose store form is slow on
     * some x86 cores. */
    float sums[8];
    _mm256_storeu_ps(sums, reduce8(a));
#pragma GCC unroll 2
    for (int i = 0; i < NX; i++) {
        float *yi = y + i * ldy;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            yi[r] = acc ? yi[r] + sums[r * NX + i] : sums[r * NX + i];
    }
}

/* Stores the widened vector through widen8(_part), so that the driver's
 * to_f32 needs no vector type. */
INL void widen_store(int dt, float *dst, const void *src, int64_t k)
{
    _mm256_storeu_ps(dst, widen8(dt, src, k));
}

INL void widen_store_part(int dt, float *dst, const void *src, int64_t k, int n)
{
    float buf[8];
    _mm256_storeu_ps(buf, widen8_part(dt, src, k, n));
    memcpy(dst, buf, (size_t)n * sizeof(float));
}

/* Pairs of x rows: with 16 registers, 4 W rows x 2 x rows is the tile that
 * keeps FMAs busy without spilling; one x row takes 8 W rows. */
#define MM_TILE_NX(dt) 2
#define MM_NX_LIST(X) X(2)
#define MM_TILE_ROWS(NX) ((NX) == 1 ? 8 : 4)
#define MM_TAIL_ROWS 1
#define MM_LANES 8
#include "exec/matmul_driver.h"

const moec_mm_kernels moec_mm_avx2_kernels = {"avx2", DIRECT_MAX_N, direct, to_f32};
