/* qgemv_avx512.c - the AVX-512 kernel of qgemv.h, compiled for AVX-512
 * F/BW/VL/VBMI via function attributes so the rest of the library keeps the
 * baseline ISA; moec_qgemm picks it at run time.
 *
 * Work unit (block): R weight rows (8 for one token, else 4; 1 for the last
 * rows % 4) against NT <= 4 tokens, R·NT accumulators, one pass over the
 * columns, group by group, in steps of 16 columns. The x vectors of a step
 * are loaded once and reused by the R rows, the rows by the NT tokens.
 *
 * b <= 4: per (row, group) a table T[e] = s·((e mod 2^b) - z), e < 16, in a
 * register; vpermps reads only the low 4 bits of each index, so a dword
 * whose low b bits are a code q (whatever stream bits follow) maps to
 * s·(q - z) exactly. The 16 codes of a step (2b bytes) are broadcast and
 * shifted into dwords: b = 2 by 2L in lane L; b = 4 by 4j in lanes 2j,
 * 2j + 1 of the broadcast qword (lane 2j + 1 then holds code 8 + j, and
 * the step's x vector is permuted to match); b = 1, 3 with vpmultishiftqb.
 * For b = 4 the shift (+ the x permutation, shared by the rows) measured
 * faster than vpmultishiftqb on the Zen 5 class dev machine (512x256, one
 * token: 3.2 against 3.5 µs). Per step and row: a broadcast load, two
 * instructions, one FMA per token.
 *
 * b > 4: codes become floats (vpmovzxbd for 8 bits, shuffle + shift + mask
 * otherwise) and are FMA'd against x into per-group sums; at the group's
 * end acc += s·(Σ q·x - z·Σ x), Σ x shared by the block's rows.
 *
 * Scales and zeros are converted to float ahead of use (prep_whole for rows
 * of at most GCHUNK groups, else per block and chunk). Decode reads each
 * code once, from L3 or memory, so blocks prefetch the codes (and scales and
 * zeros) they will read next, as matmul_avx512.c does for BF16.
 */
#include "exec/qgemv.h"

#include <string.h>

#include "core/dtype.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>
#include <stdatomic.h>

#define ISA "avx512f,avx512bw,avx512vl,avx512vbmi,fma,f16c"
#define AVX512 __attribute__((target(ISA)))
#define INLINE_AVX512 __attribute__((target(ISA), always_inline)) static inline

/* Rows per block at most and tokens per pass: at most 16 accumulators + 4 x
 * vectors + 8 tables fit the 32 zmm registers (see rows_range). */
#define ROWS 8
#define MAX_NT 4
/* Groups whose scales and zeros are converted to float at once (stack). */
#define GCHUNK 64
/* See block(): blocks of up to this many code bytes prefetch the next
 * block; longer ones PREFETCH bytes ahead in each row. */
#define PREFETCH_NEXT_BLOCK 8192
#define PREFETCH 2048

static bool format_ok(const moec_qformat *f)
{
    return f->group % 8 == 0 || moec_qformat_ngroups(f) == 1;
}

/* Asked on every product (decode: ~50 small ones per token), so kept. */
static bool cpu_ok(void)
{
    static _Atomic int known; /* 0: not asked yet, 1: yes, 2: no */
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (!v) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
                    __builtin_cpu_supports("fma")
                ? 1
                : 2;
        atomic_store_explicit(&known, v, memory_order_relaxed);
    }
    return v == 1;
}

const char *moec_qgemm_kernel(const moec_qformat *f)
{
    return f && format_ok(f) && cpu_ok() ? "avx512" : "portable";
}

typedef struct {
    const moec_qformat *f;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
    bool acc;
    int64_t cols, ng, G;
    size_t stride, zstride; /* code bytes per row, zero bytes per row */
} kargs;

/* vpmultishiftqb control for b <= 4: dword i of the result has code i in
 * its low bits. ctl byte 4i (within each qword: bytes 0 and 4) = bit offset
 * of code i in the 64-bit word; the instruction rotates, so b = 4's last
 * code needs no special case. */
INLINE_AVX512 __m512i multishift_ctl(const int B)
{
    uint8_t c[64] = {0};
    for (int i = 0; i < 16; i++)
        c[4 * i] = (uint8_t)(B * i);
    return _mm512_loadu_si512((const void *)c);
}

/* 16 codes of b <= 4 bits from p, nb bytes valid (the rest read as zero),
 * as vpermps indices. */
INLINE_AVX512 __m512i idx_part(const uint8_t *p, int nb, __m512i ctl)
{
    const __m128i v = _mm_maskz_loadu_epi8((__mmask16)((1u << nb) - 1u), p);
    return _mm512_multishift_epi64_epi8(ctl, _mm512_broadcastq_epi64(v));
}

/* The shuffle that puts the two bytes holding code i in dword i, the
 * per-lane shift and the mask. */
typedef struct {
    __m512i ctl, shift, mask;
} unpacker;

INLINE_AVX512 unpacker unpacker_for(const int B)
{
    uint8_t ctl[64];
    uint32_t sh[16];
    for (int i = 0; i < 16; i++) {
        const int bit = B * i;
        ctl[4 * i + 0] = (uint8_t)(bit >> 3);
        ctl[4 * i + 1] = (uint8_t)((bit >> 3) + 1 < 2 * B ? (bit >> 3) + 1 : 0x80);
        ctl[4 * i + 2] = 0x80;
        ctl[4 * i + 3] = 0x80;
        sh[i] = (uint32_t)(bit & 7);
    }
    unpacker u;
    u.ctl = _mm512_loadu_si512((const void *)ctl);
    u.shift = _mm512_loadu_si512((const void *)sh);
    u.mask = _mm512_set1_epi32((1 << B) - 1);
    return u;
}

/* 16 codes (any b) from p as floats; nb bytes valid (2b for a full step),
 * the rest read as zero. */
INLINE_AVX512 __m512 codes_f(const uint8_t *p, int nb, const unpacker *u, const int B)
{
    const __m128i v = _mm_maskz_loadu_epi8((__mmask16)((1u << nb) - 1u), p);
    if (B == 8)
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
    __m512i q = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(v), u->ctl);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(q, u->shift), u->mask));
}

/* Per-call constants of one code width. */
typedef struct {
    __m512i ctl;    /* vpmultishiftqb control, b <= 4 */
    __m512i vshift; /* per-lane shifts of the b = 2 and b = 4 paths */
    __m512i xperm;  /* x permutation of the b = 4 path */
    __m512 iota;    /* e mod 2^b, e < 16 */
    unpacker u;
} kconst;

INLINE_AVX512 void kconst_init(kconst *c, const int B)
{
    c->ctl = multishift_ctl(B < 4 ? B : 4);
    c->u = unpacker_for(B);
    /* b = 2: dword L of the broadcast 32-bit word >> 2L has code L in its
     * low bits. b = 4: the 64-bit word is broadcast, dwords alternate
     * between its low and high half, >> 4j gives code j in lane 2j and code
     * 8 + j in lane 2j + 1; x gets the same permutation. */
    c->vshift = B == 2 ? _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
                       : _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    c->xperm = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    float iv[16];
    for (int e = 0; e < 16; e++)
        iv[e] = (float)(e & ((1 << B) - 1));
    c->iota = _mm512_loadu_ps(iv);
}

/* Sums of a[0..3] (all lanes each) as 4 floats. */
INLINE_AVX512 __m128 reduce4(const __m512 a0, const __m512 a1, const __m512 a2, const __m512 a3)
{
    const __m512 s0 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44),
                                    _mm512_shuffle_f32x4(a0, a1, 0xEE));
    const __m512 s1 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44),
                                    _mm512_shuffle_f32x4(a2, a3, 0xEE));
    /* 128-bit lane j: 4 partial sums of a_j */
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, 0x88), _mm512_shuffle_f32x4(s0, s1, 0xDD));
    t = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, 0x4E));
    t = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, 0xB1));
    return _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), t));
}

/* Whether rows [0, r_end) can be read 8 bytes past their end. */
static inline bool f_end_ok(const kargs *k, int64_t r_end)
{
    return (size_t)r_end * k->stride + 8 <= (size_t)k->f->rows * k->stride;
}

/* Prefetches the cache lines of bytes [a, a + n), four per iteration (the
 * loop costs about as much as the prefetches; up to 3 lines past the range
 * are asked for too); a is an integer since the range may lie past the
 * buffer (prefetches never fault). */
#define PREFETCH_RANGE(a, n, hint)                                               \
    do {                                                                         \
        const uintptr_t a_ = (a), e_ = a_ + (n);                                 \
        for (uintptr_t l_ = a_ & ~(uintptr_t)63; l_ < e_; l_ += 256) {           \
            _mm_prefetch((const char *)l_, hint);                                \
            _mm_prefetch((const char *)(l_ + 64), hint);                         \
            _mm_prefetch((const char *)(l_ + 128), hint);                        \
            _mm_prefetch((const char *)(l_ + 192), hint);                        \
        }                                                                        \
    } while (0)

/* Rows per prep_whole call (a multiple of 8). */
#define SUPER 32

/* Scales and zeros of rows [r, r + nr) (nr <= SUPER) of a matrix with at
 * most GCHUNK groups per row, as floats: row i's group g at [i·ng + g];
 * for b > 4 also their products s·z.
 * Done for SUPER rows ahead of their blocks, not per block: a group's
 * scalar broadcast loads would otherwise wait on the vector stores just
 * issued (no store-to-load forwarding for those). The scales of consecutive
 * rows are one contiguous run, and so are the zeros when their rows carry
 * no padding bits: converted 16 at a time across rows. (+16: the last
 * conversion of a row may store up to 15 entries past it, overwritten by
 * the next row or unused.) */
INLINE_AVX512 void prep_whole(const kargs *k, const kconst *kc, int64_t r, int64_t nr, float *sb,
                              float *zb, float *szb, const int B)
{
    const moec_qformat *f = k->f;
    const int64_t ng = k->ng, total = nr * ng;
    const uint16_t *sc = f->scales + (size_t)r * (size_t)ng;
    /* the next SUPER rows' scales and zeros */
    PREFETCH_RANGE((uintptr_t)sc + (size_t)total * sizeof(uint16_t), (size_t)total * sizeof(uint16_t),
                   _MM_HINT_T0);
    if (!f->symmetric)
        PREFETCH_RANGE((uintptr_t)f->zeros + (size_t)(r + nr) * k->zstride, (size_t)nr * k->zstride,
                       _MM_HINT_T0);
    for (int64_t j = 0; j < total; j += 16) {
        const int64_t m = total - j < 16 ? total - j : 16;
        const __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << m) - 1u), sc + j);
        _mm512_storeu_ps(sb + j, _mm512_cvtph_ps(h));
    }
    if (f->symmetric) {
        for (int64_t j = 0; j < total; j++)
            zb[j] = (float)(1 << (B - 1));
    } else if (k->zstride * 8 == (size_t)(ng * B)) {
        /* one bit stream; every 16 zeros start at a byte boundary */
        const uint8_t *zp = f->zeros + (size_t)r * k->zstride;
        for (int64_t j = 0; j < total; j += 16) {
            const int64_t m = total - j < 16 ? total - j : 16;
            _mm512_storeu_ps(zb + j, codes_f(zp + (((size_t)j * (size_t)B) >> 3),
                                             (int)((m * B + 7) / 8), &kc->u, B));
        }
    } else {
        for (int64_t i = 0; i < nr; i++)
            for (int64_t j = 0; j < ng; j += 16) {
                const int64_t m = ng - j < 16 ? ng - j : 16;
                const uint8_t *zp = f->zeros + (size_t)(r + i) * k->zstride + (((size_t)j * (size_t)B) >> 3);
                _mm512_storeu_ps(zb + i * ng + j, codes_f(zp, (int)((m * B + 7) / 8), &kc->u, B));
            }
    }
    if (B > 4)
        for (int64_t j = 0; j < total; j += 16)
            _mm512_storeu_ps(szb + j, _mm512_mul_ps(_mm512_loadu_ps(sb + j), _mm512_loadu_ps(zb + j)));
}

/* xs[t·ng + g] = Σ x over group g of token t < n (b > 4, one token pass). */
INLINE_AVX512 void group_sums(const kargs *k, int64_t n, float *xs)
{
    const int64_t cols = k->cols, ng = k->ng, G = k->G;
    for (int64_t t = 0; t < n; t++)
        for (int64_t g = 0; g < ng; g++) {
            const float *xp = k->x + (size_t)t * (size_t)k->ldx;
            const int64_t c1 = (g + 1) * G < cols ? (g + 1) * G : cols;
            __m512 a = _mm512_setzero_ps();
            int64_t c = g * G;
            for (; c + 16 <= c1; c += 16)
                a = _mm512_add_ps(a, _mm512_loadu_ps(xp + c));
            if (c < c1)
                a = _mm512_add_ps(a, _mm512_maskz_loadu_ps((__mmask16)((1u << (c1 - c)) - 1u), xp + c));
            xs[t * ng + g] = _mm512_reduce_add_ps(a);
        }
}

/* y rows [r, r + R) for tokens [t0, t0 + NT). sbw, zbw, szw: prep_whole's
 * output for these rows, or NULL (chunk by chunk here). PRE (b > 4, with
 * sbw): xsw holds group_sums of these tokens; a group adds s·Σ q·x only, the
 * block subtracts Σ_g s·z·Σ x at its end, 16 groups per FMA. SAFE (matters
 * for b = 1, 3 only): every full step may read 8 bytes from its first code
 * byte without passing the end of the codes buffer (false only for the last
 * rows). */
INLINE_AVX512 void block(const kargs *k, const kconst *kc, const float *sbw, const float *zbw,
                         const float *szw, const float *xsw, int64_t r, int64_t t0, const int R,
                         const int NT, const int B, const bool SAFE, const bool PRE)
{
    const moec_qformat *f = k->f;
    const int64_t cols = k->cols, ng = k->ng, G = k->G;
    const int64_t ldx = k->ldx;
    const size_t stride = k->stride;
    const float *x = k->x + (size_t)t0 * (size_t)ldx;
    /* Prefetch distance: a block of short rows asks for the next block's
     * codes (the same chunk R rows on, what the next block reads first); a
     * block of long rows, for its own rows PREFETCH bytes on (the next
     * block would be evicted from L1 before its turn). */
    const size_t pf = (size_t)R * k->stride <= PREFETCH_NEXT_BLOCK ? (size_t)R * k->stride : PREFETCH;
    const uint8_t *rowp[ROWS];
    for (int i = 0; i < R; i++)
        rowp[i] = f->codes + (size_t)(r + i) * k->stride;
    const __m512i ctl = kc->ctl, vshift = kc->vshift, xperm = kc->xperm;
    const __m512 iota = kc->iota;
    const unpacker u = kc->u;
    const __mmask16 step_bytes = (__mmask16)((1u << (2 * B)) - 1u);

    __m512 acc[ROWS][MAX_NT];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            acc[i][t] = _mm512_setzero_ps();
    /* Scales and zeros as floats, row i's group g at [i·ss + g - g0]: for
     * rows of at most GCHUNK groups prepared by prep_whole (sbw, zbw, ss =
     * ng), else here one chunk of GCHUNK groups at a time. */
    float sbuf[ROWS * GCHUNK], zbuf[ROWS * GCHUNK];
    const bool whole = sbw != NULL, pre = B > 4 && PRE;
    const int64_t ss = whole ? ng : GCHUNK;
    const float *sb = whole ? sbw : sbuf, *zb = whole ? zbw : zbuf;
    for (int64_t g0 = 0; g0 < ng; g0 += GCHUNK) {
        const int64_t gn = ng - g0 < GCHUNK ? ng - g0 : GCHUNK;
        if (whole) {
            /* the next block's codes (integers: they may lie past the
             * buffer) */
            const uintptr_t a = (uintptr_t)rowp[0] + pf;
            PREFETCH_RANGE(a, (size_t)R * k->stride, _MM_HINT_T0);
        } else {
            /* the next block's scales and zeros, into L2: their rows are
             * read a whole block of codes later */
            if (g0 == 0) {
                const size_t sbytes = (size_t)ng * sizeof(uint16_t);
                PREFETCH_RANGE((uintptr_t)f->scales + (size_t)(r + R) * sbytes, (size_t)R * sbytes,
                               _MM_HINT_T1);
                if (!f->symmetric)
                    PREFETCH_RANGE((uintptr_t)f->zeros + (size_t)(r + R) * k->zstride,
                                   (size_t)R * k->zstride, _MM_HINT_T1);
            }
            for (int i = 0; i < R; i++) {
                const uint16_t *sc = f->scales + (size_t)(r + i) * (size_t)ng + g0;
                for (int64_t j = 0; j < gn; j += 16) {
                    const int64_t m = gn - j < 16 ? gn - j : 16;
                    const __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << m) - 1u), sc + j);
                    _mm512_storeu_ps(sbuf + i * GCHUNK + j, _mm512_cvtph_ps(h));
                }
                /* this chunk's code bytes, pf further on */
                const uintptr_t a = (uintptr_t)rowp[i] + pf;
                const size_t p0 = ((size_t)(g0 * G) * (size_t)B) >> 3;
                const size_t p1 = g0 + gn < ng ? ((size_t)((g0 + gn) * G) * (size_t)B) >> 3 : k->stride;
                PREFETCH_RANGE(a + p0, p1 - p0, _MM_HINT_T0);
                if (f->symmetric)
                    for (int64_t j = 0; j < gn; j++)
                        zbuf[i * GCHUNK + j] = (float)(1 << (B - 1));
                else
                    /* zeros are packed like codes; g0 + j is a multiple of
                     * 16, so 16 zeros start at a byte boundary */
                    for (int64_t j = 0; j < gn; j += 16) {
                        const int64_t m = gn - j < 16 ? gn - j : 16;
                        const uint8_t *zp = f->zeros + (size_t)(r + i) * k->zstride +
                                            (((size_t)(g0 + j) * (size_t)B) >> 3);
                        _mm512_storeu_ps(zbuf + i * GCHUNK + j, codes_f(zp, (int)((m * B + 7) / 8), &u, B));
                    }
            }
        }
        for (int64_t g = g0; g < g0 + gn; g++) {
            const int64_t c0 = g * G, c1 = c0 + G < cols ? c0 + G : cols;
            /* code bytes [o0, o1) of each row */
            const size_t o0 = ((size_t)c0 * (size_t)B) >> 3;
            __m512 lut[ROWS];
            /* row i's code bytes at q[i / 4] + (i % 4)·stride: two moving
             * pointers and three offsets instead of eight pointers keep
             * the step loop in general-purpose registers */
            const uint8_t *qp[2] = {rowp[0] + o0, R > 4 ? rowp[4] + o0 : rowp[0] + o0};
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                if (B <= 4)
                    lut[i] = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(zb[i * ss + (g - g0)])),
                                           _mm512_set1_ps(sb[i * ss + (g - g0)]));
            }
            /* b > 4: gacc = Σ q·x and (unless pre) xs = Σ x over the group,
             * folded into acc as s·(gacc - z·xs) at its end */
            __m512 gacc[ROWS][MAX_NT], xs[MAX_NT];
            if (B > 4) {
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    xs[t] = _mm512_setzero_ps();
#pragma GCC unroll 8
                    for (int i = 0; i < R; i++)
                        gacc[i][t] = _mm512_setzero_ps();
                }
            }
            const float *xp = x + c0;
#define PP(i) (qp[(i) / 4] + (size_t)((i) % 4) * stride)
            for (int64_t c = c0 + 16; c <= c1; c += 16, xp += 16, qp[0] += 2 * B, qp[1] += 2 * B) {
                __m512 xv[MAX_NT];
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    xv[t] = _mm512_loadu_ps(xp + (size_t)t * (size_t)ldx);
                    if (B == 4)
                        xv[t] = _mm512_permutexvar_ps(xperm, xv[t]);
                    if (B > 4 && !pre)
                        xs[t] = _mm512_add_ps(xs[t], xv[t]);
                }
#pragma GCC unroll 8
                for (int i = 0; i < R; i++) {
                    __m512 w;
                    if (B == 2 || B == 4) {
                        __m512i q;
                        if (B == 2) {
                            uint32_t v;
                            memcpy(&v, PP(i), 4);
                            q = _mm512_set1_epi32((int)v);
                        } else {
                            uint64_t v;
                            memcpy(&v, PP(i), 8);
                            q = _mm512_set1_epi64((long long)v);
                        }
                        w = _mm512_permutexvar_ps(_mm512_srlv_epi32(q, vshift), lut[i]);
                    } else if (B <= 4) {
                        __m512i q;
                        if (SAFE) {
                            uint64_t v;
                            memcpy(&v, PP(i), 8);
                            q = _mm512_set1_epi64((long long)v);
                        } else {
                            q = _mm512_broadcastq_epi64(_mm_maskz_loadu_epi8(step_bytes, PP(i)));
                        }
                        w = _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(ctl, q), lut[i]);
                    } else {
                        w = B == 8 ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                         _mm_loadu_si128((const __m128i *)PP(i))))
                                   : codes_f(PP(i), 2 * B, &u, B);
                    }
#pragma GCC unroll 8
                    for (int t = 0; t < NT; t++) {
                        if (B > 4)
                            gacc[i][t] = _mm512_fmadd_ps(w, xv[t], gacc[i][t]);
                        else
                            acc[i][t] = _mm512_fmadd_ps(w, xv[t], acc[i][t]);
                    }
                }
            }
            const int m = (int)((c1 - c0) & 15);
            if (m) {
                /* the group's last m < 16 columns: x lanes past them are
                 * zero, so whatever the table gives there adds nothing */
                const int nb = (m * B + 7) / 8;
                const __mmask16 lanes = (__mmask16)((1u << m) - 1u);
                __m512 xv[MAX_NT];
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    xv[t] = _mm512_maskz_loadu_ps(lanes, xp + (size_t)t * (size_t)ldx);
                    if (B > 4 && !pre)
                        xs[t] = _mm512_add_ps(xs[t], xv[t]);
                }
#pragma GCC unroll 8
                for (int i = 0; i < R; i++) {
#pragma GCC unroll 8
                    for (int t = 0; t < NT; t++) {
                        if (B > 4)
                            gacc[i][t] = _mm512_fmadd_ps(codes_f(PP(i), nb, &u, B), xv[t], gacc[i][t]);
                        else
                            acc[i][t] = _mm512_fmadd_ps(
                                _mm512_permutexvar_ps(idx_part(PP(i), nb, ctl), lut[i]), xv[t], acc[i][t]);
                    }
                }
            }
#undef PP
            if (B > 4 && pre) {
#pragma GCC unroll 8
                for (int i = 0; i < R; i++)
#pragma GCC unroll 8
                    for (int t = 0; t < NT; t++)
                        acc[i][t] = _mm512_fmadd_ps(gacc[i][t], _mm512_set1_ps(sb[i * ss + (g - g0)]),
                                                    acc[i][t]);
            } else if (B > 4) {
#pragma GCC unroll 8
                for (int i = 0; i < R; i++)
#pragma GCC unroll 8
                    for (int t = 0; t < NT; t++)
                        acc[i][t] = _mm512_fmadd_ps(
                            _mm512_fnmadd_ps(_mm512_set1_ps(zb[i * ss + (g - g0)]), xs[t], gacc[i][t]),
                            _mm512_set1_ps(sb[i * ss + (g - g0)]), acc[i][t]);
            }
        }
    }
    if (B > 4 && pre)
        for (int64_t j = 0; j < ng; j += 16) {
            const __mmask16 m = (__mmask16)(ng - j < 16 ? (1u << (ng - j)) - 1u : 0xffffu);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                const __m512 xsv = _mm512_maskz_loadu_ps(m, xsw + t * ng + j);
#pragma GCC unroll 8
                for (int i = 0; i < R; i++)
                    acc[i][t] = _mm512_fnmadd_ps(_mm512_maskz_loadu_ps(m, szw + i * ng + j), xsv,
                                                 acc[i][t]);
            }
        }
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
        float *yt = k->y + (size_t)(t0 + t) * (size_t)k->ldy + r;
        int i = 0;
        for (; i + 4 <= R; i += 4) {
            __m128 v = reduce4(acc[i][t], acc[i + 1][t], acc[i + 2][t], acc[i + 3][t]);
            if (k->acc)
                v = _mm_add_ps(v, _mm_loadu_ps(yt + i));
            _mm_storeu_ps(yt + i, v);
        }
        for (; i < R; i++) {
            const float v = _mm512_reduce_add_ps(acc[i][t]);
            yt[i] = k->acc ? yt[i] + v : v;
        }
    }
}

INLINE_AVX512 void rows_nt(const kargs *k, const kconst *kc, const float *sbw, const float *zbw,
                           const float *szw, const float *xsw, int64_t r, int64_t t0, const int R,
                           const int nt, const int B)
{
    /* b = 1, 3 read 8 bytes per step, up to 8 - 2b past the last row of the
     * block; the matrix's last rows load only their own bytes. R·nt <= 16
     * accumulators always, and b > 4 takes 8 rows for one token only
     * (rows_range): only those blocks are built. */
    const bool safe = !((B == 1 || B == 3) && !f_end_ok(k, r + R)), pre = B > 4 && xsw;
#define BLOCK(NT, S, P) block(k, kc, sbw, zbw, szw, xsw, r, t0, R, NT, B, S, P)
#define BLOCKS(S, P)                                                        \
    switch (nt) {                                                           \
    case 4: if (R * 4 <= 16) BLOCK(4, S, P); break;                         \
    case 3: if (R * 3 <= 16) BLOCK(3, S, P); break;                         \
    case 2: if (B <= 4 || R <= 4) BLOCK(2, S, P); break;                    \
    default: BLOCK(1, S, P); break;                                         \
    }
    if (B == 1 || B == 3) {
        if (safe) {
            BLOCKS(true, false)
        } else {
            BLOCKS(false, false)
        }
    } else if (B > 4 && pre) {
        BLOCKS(true, true)
    } else {
        BLOCKS(true, false)
    }
#undef BLOCKS
#undef BLOCK
}

/* Rows [r0, r1) (at most SUPER), sw/zw/szw their prep_whole output or NULL,
 * xs the tokens' group sums or NULL: blocks of 8 rows where their
 * accumulators fit (n = 1, or n = 2 when b <= 4: b > 4 keeps a second set
 * per group), else 4; tokens in passes of up to 4 over each block, which
 * stays in L1. */
INLINE_AVX512 void rows_range(const kargs *k, const kconst *kc, const float *sw, const float *zw,
                              const float *szw, const float *xs, int64_t n, int64_t r0, int64_t r1,
                              const int B)
{
    const int64_t ng = k->ng;
    int64_t r = r0;
#define PREP(p) ((p) ? (p) + (r - r0) * ng : NULL)
    if (n == 1 || (n == 2 && B <= 4))
        for (; r + 8 <= r1; r += 8)
            rows_nt(k, kc, PREP(sw), PREP(zw), PREP(szw), xs, r, 0, 8, (int)n, B);
    for (; r + 4 <= r1; r += 4)
        for (int64_t t = 0; t < n; t += MAX_NT)
            rows_nt(k, kc, PREP(sw), PREP(zw), PREP(szw), xs ? xs + t * ng : NULL, r, t, 4,
                    (int)(n - t < MAX_NT ? n - t : MAX_NT), B);
    for (; r < r1; r++)
        for (int64_t t = 0; t < n; t += MAX_NT)
            rows_nt(k, kc, PREP(sw), PREP(zw), PREP(szw), xs ? xs + t * ng : NULL, r, t, 1,
                    (int)(n - t < MAX_NT ? n - t : MAX_NT), B);
#undef PREP
}

/* b > 4 with at most GCHUNK groups and at most MAX_NT tokens (decode) takes
 * the tokens' group sums once per call. */
#define BITS_CASE(B)                                                                        \
    static AVX512 void run_##B(const kargs *k, int64_t n, int64_t r0, int64_t r1)           \
    {                                                                                       \
        kconst kc;                                                                          \
        kconst_init(&kc, B);                                                                \
        float sw[SUPER * GCHUNK + 16], zw[SUPER * GCHUNK + 16];                             \
        float szw[B > 4 ? SUPER * GCHUNK + 16 : 1], xs[B > 4 ? MAX_NT * GCHUNK : 1];        \
        const bool whole = k->ng <= GCHUNK, pre = B > 4 && whole && n <= MAX_NT;            \
        if (pre)                                                                            \
            group_sums(k, n, xs);                                                           \
        for (int64_t rs = r0; rs < r1; rs += SUPER) {                                       \
            const int64_t re = r1 - rs < SUPER ? r1 : rs + SUPER;                           \
            if (whole)                                                                      \
                prep_whole(k, &kc, rs, re - rs, sw, zw, szw, B);                            \
            rows_range(k, &kc, whole ? sw : NULL, zw, szw, pre ? xs : NULL, n, rs, re, B);  \
        }                                                                                   \
    }

BITS_CASE(1)
BITS_CASE(2)
BITS_CASE(3)
BITS_CASE(4)
BITS_CASE(5)
BITS_CASE(6)
BITS_CASE(7)
BITS_CASE(8)

moec_status moec_qgemm_avx512_ex(const moec_qformat *f, const float *x, int64_t ldx, int64_t n,
                                 float *y, int64_t ldy, int64_t r0, int64_t r1, bool accumulate,
                                 moec_err *err)
{
    moec_status st = moec_qgemm_check(f, x, ldx, n, y, ldy, r0, r1, "avx512", err);
    if (st != MOEC_OK)
        return st;
    if (!cpu_ok())
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "qgemm: this CPU lacks AVX-512 F/BW/VL/VBMI");
    if (!format_ok(f))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "qgemm (avx512): group size %d is not a multiple of 8", f->group);
    if (f->bits < MOEC_QBITS_MIN || f->bits > MOEC_QBITS_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "qgemm: %d-bit codes", f->bits);
    if (n == 0 || r0 == r1)
        return MOEC_OK;
    kargs k = {.f = f, .x = x, .ldx = ldx, .y = y, .ldy = ldy, .acc = accumulate,
               .cols = f->cols, .ng = moec_qformat_ngroups(f)};
    k.G = f->group < f->cols ? f->group : f->cols;
    k.stride = moec_qformat_packed_bytes(f->cols, f->bits);
    k.zstride = moec_qformat_packed_bytes(k.ng, f->bits);
    switch (f->bits) {
    case 1: run_1(&k, n, r0, r1); break;
    case 2: run_2(&k, n, r0, r1); break;
    case 3: run_3(&k, n, r0, r1); break;
    case 4: run_4(&k, n, r0, r1); break;
    case 5: run_5(&k, n, r0, r1); break;
    case 6: run_6(&k, n, r0, r1); break;
    case 7: run_7(&k, n, r0, r1); break;
    default: run_8(&k, n, r0, r1); break;
    }
    return MOEC_OK;
}

#else /* not x86-64 with GNU C: only the portable kernel exists */

const char *moec_qgemm_kernel(const moec_qformat *f)
{
    (void)f;
    return "portable";
}

moec_status moec_qgemm_avx512_ex(const moec_qformat *f, const float *x, int64_t ldx, int64_t n,
                                 float *y, int64_t ldy, int64_t r0, int64_t r1, bool accumulate,
                                 moec_err *err)
{
    (void)accumulate;
    moec_status st = moec_qgemm_check(f, x, ldx, n, y, ldy, r0, r1, "avx512", err);
    if (st != MOEC_OK)
        return st;
    return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "qgemm: this build has no AVX-512 kernel");
}

#endif
