/* qgemv_avx512.c - the AVX-512 kernel of qgemv.h, compiled for AVX-512
 * F/BW/VL via function attributes so the rest of the library keeps the baseline ISA;
 * moec_qgemm picks it at run time. */
#include "quant/qgemv.h"


#include "core/dtype.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#define ISA "avx512f,avx512bw,avx512vl"
#define AVX512 __attribute__((target(ISA)))
#define INLINE_AVX512 __attribute__((target(ISA), always_inline)) static inline

static bool format_ok(const moec_qformat *f)
{
    return f->group % 8 == 0 || moec_qformat_ngroups(f) == 1;
}

static bool cpu_ok(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

const char *moec_qgemm_kernel(const moec_qformat *f)
{
    return f && format_ok(f) && cpu_ok() ? "avx512" : "portable";
}

/* How 16 codes of B bits (2B bytes, byte aligned) become 16 dword lanes:
 * the 2B bytes are broadcast to all four 128-bit lanes, a byte shuffle puts
 * the two bytes holding code i in the low half of dword i, a per-lane shift
 * and a mask finish. */
typedef struct {
    __mmask16 load; /* the 2B source bytes */
    __m512i ctl;    /* shuffle control: bytes o_i, o_i + 1, zero, zero */
    __m512i shift;  /* (B*i) & 7 */
    __m512i mask;   /* 2^B - 1 */
} unpacker;

INLINE_AVX512 unpacker unpacker_for(const int B)
{
    uint8_t ctl[64];
    uint32_t sh[16];
    for (int i = 0; i < 16; i++) {
        int bit = B * i;
        ctl[4 * i + 0] = (uint8_t)(bit >> 3);
        ctl[4 * i + 1] = (uint8_t)((bit >> 3) + 1 < 2 * B ? (bit >> 3) + 1 : 0x80);
        ctl[4 * i + 2] = 0x80;
        ctl[4 * i + 3] = 0x80;
        sh[i] = (uint32_t)(bit & 7);
    }
    unpacker u;
    u.load = (__mmask16)((1u << (2 * B)) - 1u);
    u.ctl = _mm512_loadu_si512((const void *)ctl);
    u.shift = _mm512_loadu_si512((const void *)sh);
    u.mask = _mm512_set1_epi32((1 << B) - 1);
    return u;
}

/* 16 codes starting at byte p as floats. */
INLINE_AVX512 __m512 codes16(const uint8_t *p, const unpacker *u, const int B)
{
    if (B == 8)
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const void *)p)));
    __m512i v = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(u->load, p));
    v = _mm512_srlv_epi32(_mm512_shuffle_epi8(v, u->ctl), u->shift);
    return _mm512_cvtepi32_ps(_mm512_and_si512(v, u->mask));
}

/* 32 codes of 4 bits from 16 bytes: low nibbles are the even codes. */
INLINE_AVX512 void codes32_b4(const uint8_t *p, __m512 *w0, __m512 *w1)
{
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m128i b = _mm_loadu_si128((const void *)p);
    __m128i lo = _mm_and_si128(b, m4);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    *w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
    *w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)));
}

/* y for rows [r0, r1) and NT tokens starting at x (row stride cols). Two
 * accumulators per token so that a single token is not bound by FMA latency. */
INLINE_AVX512 void rows_kernel(const moec_qformat *f, const float *x, float *y,
                               int64_t ldy, int64_t r0, int64_t r1, const int B,
                               const int NT)
{
    const int64_t cols = f->cols, ng = moec_qformat_ngroups(f);
    const int64_t G = f->group < cols ? f->group : cols;
    const size_t stride = moec_qformat_packed_bytes(cols, B);
    const size_t zstride = moec_qformat_packed_bytes(ng, B);
    const unpacker u = unpacker_for(B);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = f->codes + (size_t)r * stride;
        const uint16_t *sc = f->scales + (size_t)r * (size_t)ng;
        __m512 acc0[4], acc1[4];
        float tail[4];
        for (int t = 0; t < NT; t++) {
            acc0[t] = _mm512_setzero_ps();
            acc1[t] = _mm512_setzero_ps();
            tail[t] = 0.0f;
        }
        for (int64_t g = 0; g < ng; g++) {
            const float s = moec_f16_to_f32(sc[g]);
            int z = 1 << (B - 1);
            if (!f->symmetric) {
                uint8_t zz;
                moec_qunpack(&zz, f->zeros + (size_t)r * zstride, g, 1, B);
                z = zz;
            }
            const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps((float)z);
            const int64_t c0 = g * G, c1 = c0 + G < cols ? c0 + G : cols;
            const uint8_t *p = row + (size_t)(c0 * B / 8);
            int64_t c = c0;
            for (; c + 32 <= c1; c += 32, p += 4 * B) {
                __m512 w0, w1;
                if (B == 4) {
                    codes32_b4(p, &w0, &w1);
                } else {
                    w0 = codes16(p, &u, B);
                    w1 = codes16(p + 2 * B, &u, B);
                }
                w0 = _mm512_mul_ps(_mm512_sub_ps(w0, vz), vs);
                w1 = _mm512_mul_ps(_mm512_sub_ps(w1, vz), vs);
                for (int t = 0; t < NT; t++) {
                    const float *xt = x + (size_t)t * (size_t)cols + c;
                    acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xt), acc0[t]);
                    acc1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xt + 16), acc1[t]);
                }
            }
            for (; c + 16 <= c1; c += 16, p += 2 * B) {
                __m512 w = _mm512_mul_ps(_mm512_sub_ps(codes16(p, &u, B), vz), vs);
                for (int t = 0; t < NT; t++)
                    acc0[t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + (size_t)t * (size_t)cols + c),
                                              acc0[t]);
            }
            if (c < c1) {
                uint8_t q[16];
                const int m = (int)(c1 - c);
                moec_qunpack(q, row, c, m, B);
                for (int i = 0; i < m; i++) {
                    const float w = s * (float)((int)q[i] - z);
                    for (int t = 0; t < NT; t++)
                        tail[t] += w * x[(size_t)t * (size_t)cols + (size_t)(c + i)];
                }
            }
        }
        for (int t = 0; t < NT; t++)
            y[(size_t)t * (size_t)ldy + (size_t)r] =
                _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t])) + tail[t];
    }
}

/* Rows in blocks of ROW_BLOCK so that, with many tokens, a block's codes stay
 * in cache while every token tile passes over them. */
#define ROW_BLOCK 16

#define TILE_CASES(B)                                                          \
    static AVX512 void tiles_##B(const moec_qformat *f, const float *x,        \
                                 int64_t n, float *y, int64_t ldy, int64_t r0, \
                                 int64_t r1)                                   \
    {                                                                          \
        for (int64_t rb = r0; rb < r1; rb += ROW_BLOCK) {                      \
            const int64_t re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;      \
            int64_t t = 0;                                                     \
            for (; t + 4 <= n; t += 4)                                         \
                rows_kernel(f, x + (size_t)t * (size_t)f->cols,                \
                            y + (size_t)t * (size_t)ldy, ldy, rb, re, B, 4);   \
            const float *xt = x + (size_t)t * (size_t)f->cols;                 \
            float *yt = y + (size_t)t * (size_t)ldy;                           \
            switch (n - t) {                                                   \
            case 3: rows_kernel(f, xt, yt, ldy, rb, re, B, 3); break;          \
            case 2: rows_kernel(f, xt, yt, ldy, rb, re, B, 2); break;          \
            case 1: rows_kernel(f, xt, yt, ldy, rb, re, B, 1); break;          \
            default: break;                                                    \
            }                                                                  \
        }                                                                      \
    }

TILE_CASES(1)
TILE_CASES(2)
TILE_CASES(3)
TILE_CASES(4)
TILE_CASES(5)
TILE_CASES(6)
TILE_CASES(7)
TILE_CASES(8)

moec_status moec_qgemm_avx512(const moec_qformat *f, const float *x, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1,
                              moec_err *err)
{
    moec_status st = moec_qgemm_check(f, x, n, y, ldy, r0, r1, "avx512", err);
    if (st != MOEC_OK)
        return st;
    if (!cpu_ok())
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "qgemm: this CPU lacks AVX-512 F/BW/VL");
    if (!format_ok(f))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "qgemm (avx512): group size %d is not a multiple of 8", f->group);
    if (n == 0 || r0 == r1)
        return MOEC_OK;
    switch (f->bits) {
    case 1: tiles_1(f, x, n, y, ldy, r0, r1); break;
    case 2: tiles_2(f, x, n, y, ldy, r0, r1); break;
    case 3: tiles_3(f, x, n, y, ldy, r0, r1); break;
    case 4: tiles_4(f, x, n, y, ldy, r0, r1); break;
    case 5: tiles_5(f, x, n, y, ldy, r0, r1); break;
    case 6: tiles_6(f, x, n, y, ldy, r0, r1); break;
    case 7: tiles_7(f, x, n, y, ldy, r0, r1); break;
    case 8: tiles_8(f, x, n, y, ldy, r0, r1); break;
    default:
        return moec_err_set(err, MOEC_ERR_ARG, "qgemm: %d-bit codes", f->bits);
    }
    return MOEC_OK;
}

#else /* not x86-64 with GNU C: only the portable kernel exists */

const char *moec_qgemm_kernel(const moec_qformat *f)
{
    (void)f;
    return "portable";
}

moec_status moec_qgemm_avx512(const moec_qformat *f, const float *x, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1,
                              moec_err *err)
{
    moec_status st = moec_qgemm_check(f, x, n, y, ldy, r0, r1, "avx512", err);
    if (st != MOEC_OK)
        return st;
    return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                        "qgemm: this build has no AVX-512 kernel");
}

#endif
