/* qgemv_vnni.c - one token against 4- or 8-bit group-wise weights with
 * integer dot products (AVX512-VNNI vpdpbusd), the activations quantized to
 * int8: see moec_qgemv_q8 in qgemv.h for the contract and the numerics.
 *
 * Work unit: a block of 64 code bytes of a row (128 weights at 4 bits, 64
 * at 8), one row at a time (see row()). Per block: one load of the codes (4 bits: two
 * nibble masks and a shift give the even and the odd codes), one (8 bits)
 * or two (4 bits) vpdpbusd of the unsigned codes against the signed int8
 * activations into 16 int32 lanes, each lane the sum of 4 products, then
 * one conversion and one FMA that scale the lanes by s_w·s_x of their
 * 64-column chunk (lanes 0-7 and 8-15 are different chunks at 4 bits) into
 * a float32 accumulator. About 9 instructions per 128 weights at 4 bits,
 * where the float kernel (qgemv_avx512.c) needs about 32; a decode step
 * then runs at the speed memory delivers the codes.
 *
 * Zero points do not enter the integer products: s_w·(q - z)·x summed over
 * a chunk is s_w·s_x·(Σ q·x_i) - s_w·z·(s_x·Σ x_i), and the second terms of
 * a row are summed apart, 16 groups per vector.
 *
 * The activations are laid out per block as the codes are: for 4 bits 64
 * bytes of the even-indexed and 64 of the odd-indexed columns of the block
 * (a vpermb per 64 columns); a row's tail is masked, the activations zero
 * padded, so any column count works.
 */
#include "exec/qgemv.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#define ISA "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,fma,f16c"
#define VNNI __attribute__((target(ISA)))
#define INLINE_VNNI __attribute__((target(ISA), always_inline)) static inline

/* Columns per activation scale (and the smallest group the kernel takes). */
#define CHUNK 64
/* Activations of up to this many columns are prepared on the stack. */
#define STACK_COLS 16384
/* Prefetch distance for the codes, in bytes ahead of the current block of
 * the same row: decode streams every code once, from memory. */
#define PREFETCH 2048

static bool cpu_ok(void)
{
    static _Atomic int known; /* 0: not asked yet, 1: yes, 2: no */
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (!v) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
                    __builtin_cpu_supports("fma")
                ? 1
                : 2;
        atomic_store_explicit(&known, v, memory_order_relaxed);
    }
    return v == 1;
}

bool moec_qgemv_q8_supported(const moec_qformat *f)
{
    return f && (f->bits == 4 || f->bits == 8) && f->group % CHUNK == 0 && f->cols > 0 && cpu_ok();
}

/* The token's activations: int8 codes in block layout, per chunk the scale
 * s_x and s_x·Σ x_i. */
typedef struct {
    int8_t *xi;       /* [nblocks][128] (4 bits: even then odd columns) or [nblocks][64] */
    float *sx;        /* [nchunks] */
    float *xs;        /* [nchunks] s_x · Σ x_i of the chunk */
} q8act;

/* Quantizes x[cols] per 64 columns: s = max|x|/127, x_i = rint(x·127/max|x|)
 * (0 for an all-zero chunk), into the layout of a bits-bit block. */
INLINE_VNNI void quantize_x(const float *x, int64_t cols, int bits, q8act *a)
{
    const int64_t nch = (cols + CHUNK - 1) / CHUNK;
    /* vpermb order that splits 64 bytes into even and odd positions */
    uint8_t deint[64];
    for (int k = 0; k < 32; k++)
        deint[k] = (uint8_t)(2 * k), deint[32 + k] = (uint8_t)(2 * k + 1);
    const __m512i perm = _mm512_loadu_si512((const void *)deint);
    for (int64_t j = 0; j < nch; j++) {
        const int64_t c0 = j * CHUNK, nc = cols - c0 < CHUNK ? cols - c0 : CHUNK;
        __m512 v[4];
        __m512 amax = _mm512_setzero_ps();
        for (int q = 0; q < 4; q++) {
            int64_t left = nc - 16 * q;
            __mmask16 m = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
            v[q] = _mm512_maskz_loadu_ps(m, x + c0 + 16 * q);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v[q]));
        }
        const float mx = _mm512_reduce_max_ps(amax);
        const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
        a->sx[j] = mx / 127.0f;
        const __m512 vinv = _mm512_set1_ps(inv);
        __m512i sum = _mm512_setzero_si512();
        __m128i b[4];
        for (int q = 0; q < 4; q++) {
            __m512i i32 = _mm512_cvtps_epi32(_mm512_mul_ps(v[q], vinv)); /* round to nearest even */
            sum = _mm512_add_epi32(sum, i32);
            b[q] = _mm512_cvtsepi32_epi8(i32);
        }
        a->xs[j] = a->sx[j] * (float)_mm512_reduce_add_epi32(sum);
        __m512i bytes = _mm512_inserti64x2(
            _mm512_inserti64x2(_mm512_inserti64x2(_mm512_castsi128_si512(b[0]), b[1], 1), b[2], 2), b[3], 3);
        if (bits == 8) {
            _mm512_storeu_si512((void *)(a->xi + j * 64), bytes);
        } else {
            /* chunk j is half (j & 1) of block j/2: its even columns go to
             * bytes 32·half.. of the block's first 64, the odd to the second */
            __m512i d = _mm512_permutexvar_epi8(perm, bytes);
            int8_t *blk = a->xi + (j / 2) * 128 + (j & 1) * 32;
            _mm256_storeu_si256((__m256i *)blk, _mm512_castsi512_si256(d));
            _mm256_storeu_si256((__m256i *)(blk + 64), _mm512_extracti64x4_epi64(d, 1));
        }
    }
    if (bits == 4 && (nch & 1)) {
        /* the last block's missing half */
        int8_t *blk = a->xi + (nch / 2) * 128 + 32;
        memset(blk, 0, 32);
        memset(blk + 64, 0, 32);
    }
}

/* Zero points of groups g0..g0+15 of a row (b = 4 or 8, packed as codes) as floats. */
INLINE_VNNI __m512 zeros16(const moec_qformat *f, const uint8_t *zrow, int64_t g0, int64_t ng)
{
    if (f->symmetric)
        return _mm512_set1_ps((float)(1 << (f->bits - 1)));
    const int64_t n = ng - g0 < 16 ? ng - g0 : 16;
    if (f->bits == 8) {
        __m128i z = _mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1u), zrow + g0);
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z));
    }
    /* 4 bits, g0 even: bytes g0/2.., low nibble first */
    const int64_t nb = (n + 1) / 2;
    __m128i p = _mm_maskz_loadu_epi8((__mmask16)((1u << nb) - 1u), zrow + g0 / 2);
    const __m128i m = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(p, m), hi = _mm_and_si128(_mm_srli_epi16(p, 4), m);
    __m128i z = _mm_unpacklo_epi8(lo, hi);
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z));
}

/* Per-chunk factors s_w·s_x of one row (fac[nch], zero padded to an even
 * count) and its zero-point term Σ s_w·z·(s_x·Σ x_i), as a vector whose
 * lanes sum to it (so that the row needs one horizontal sum in the end). */
INLINE_VNNI __m512 row_factors(const moec_qformat *f, int64_t r, const q8act *a, int64_t nch, float *fac)
{
    const int64_t ng = moec_qformat_ngroups(f);
    const uint16_t *s = f->scales + r * ng;
    const uint8_t *zrow =
        f->symmetric ? NULL : f->zeros + (size_t)r * moec_qformat_packed_bytes(ng, f->bits);
    fac[nch] = 0.0f;
    if (f->group == CHUNK) {
        /* one chunk per group: 16 at a time */
        __m512 corr = _mm512_setzero_ps();
        for (int64_t g = 0; g < ng; g += 16) {
            const int64_t n = ng - g < 16 ? ng - g : 16;
            const __mmask16 m = (__mmask16)((1u << n) - 1u);
            __m512 sw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + g));
            _mm512_mask_storeu_ps(fac + g, m, _mm512_mul_ps(sw, _mm512_maskz_loadu_ps(m, a->sx + g)));
            __m512 t = _mm512_mul_ps(sw, zeros16(f, zrow, g, ng));
            corr = _mm512_fmadd_ps(t, _mm512_maskz_loadu_ps(m, a->xs + g), corr);
        }
        return corr;
    }
    float corr = 0.0f;
    const int64_t per = f->group / CHUNK;
    for (int64_t j = 0; j < nch; j++) {
        const int64_t g = j / per;
        const float sw = moec_f16_to_f32(s[g]);
        const float z = f->symmetric ? (float)(1 << (f->bits - 1)) : (float)moec_qformat_zero(f, r, g);
        fac[j] = sw * a->sx[j];
        corr += sw * z * a->xs[j];
    }
    return _mm512_zextps128_ps512(_mm_set_ss(corr)); /* upper lanes zero */
}

/* The integer products of one 64-byte block of codes with the block's
 * activations, scaled by the block's chunk factors, added to acc. */
INLINE_VNNI __m512 block(int B4, __m512i v, const int8_t *xb, const float *fr, int64_t b, __m512 acc)
{
    __m512i d;
    __m512 fv;
    if (B4) {
        const __m512i m0f = _mm512_set1_epi8(0x0F);
        const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        const __m512i lo = _mm512_and_si512(v, m0f);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
        d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512((const void *)xb));
        d = _mm512_dpbusd_epi32(d, hi, _mm512_loadu_si512((const void *)(xb + 64)));
        /* lanes 0-7: chunk 2b, 8-15: chunk 2b+1 */
        fv = _mm512_permutexvar_ps(
            pair, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(fr + 2 * b)))));
    } else {
        d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, _mm512_loadu_si512((const void *)xb));
        fv = _mm512_set1_ps(fr[b]);
    }
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), fv, acc);
}

/* y[r] for one row. Rows are done one at a time, so that a decode step
 * reads the codes as one sequential stream (measured on the dev machine,
 * one thread from memory: ~22 GB/s against ~16 with four rows side by
 * side sharing the activation loads), with two accumulators over
 * alternate blocks to halve the FMA dependency chain. */
INLINE_VNNI void row(const moec_qformat *f, int64_t r, const q8act *a, int64_t nch, int64_t nblk, float *fac,
                     float *y, bool acc)
{
    const int B4 = f->bits == 4, xstep = B4 ? 128 : 64;
    const size_t stride = moec_qformat_packed_bytes(f->cols, f->bits);
    const int64_t last = (int64_t)stride - (nblk - 1) * 64; /* code bytes of the last block */
    /* the zero-point terms, subtracted in the end */
    __m512 acc0 = _mm512_sub_ps(_mm512_setzero_ps(), row_factors(f, r, a, nch, fac));
    __m512 acc1 = _mm512_setzero_ps();
    const uint8_t *cp = f->codes + (size_t)r * stride;
    const int64_t full = last >= 64 ? nblk : nblk - 1;
    int64_t b = 0;
    for (; b + 2 <= full; b += 2) {
        _mm_prefetch((const char *)cp + b * 64 + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)cp + b * 64 + 64 + PREFETCH, _MM_HINT_T0);
        acc0 = block(B4, _mm512_loadu_si512((const void *)(cp + b * 64)), a->xi + b * xstep, fac, b, acc0);
        acc1 = block(B4, _mm512_loadu_si512((const void *)(cp + b * 64 + 64)), a->xi + (b + 1) * xstep, fac,
                     b + 1, acc1);
    }
    for (; b < nblk; b++) {
        const __mmask64 m = b < full ? ~(__mmask64)0 : (((__mmask64)1 << last) - 1);
        acc0 = block(B4, _mm512_maskz_loadu_epi8(m, cp + b * 64), a->xi + b * xstep, fac, b, acc0);
    }
    const float v = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    y[r] = acc ? y[r] + v : v;
}

VNNI static void run(const moec_qformat *f, const float *x, float *y, int64_t r0, int64_t r1, bool acc,
                     int8_t *xi, float *sx, float *xs, float *fac)
{
    q8act a = {xi, sx, xs};
    const int64_t nch = (f->cols + CHUNK - 1) / CHUNK;
    const int64_t nblk = f->bits == 4 ? (nch + 1) / 2 : nch;
    quantize_x(x, f->cols, f->bits, &a);
    for (int64_t r = r0; r < r1; r++)
        row(f, r, &a, nch, nblk, fac, y, acc);
}

moec_status moec_qgemv_q8(const moec_qformat *f, const float *x, float *y, int64_t r0, int64_t r1,
                          bool accumulate, moec_err *err)
{
    moec_status st = moec_qgemm_check(f, x, f ? f->cols : 0, 1, y, r1, r0, r1, "vnni", err);
    if (st != MOEC_OK)
        return st;
    if (!moec_qgemv_q8_supported(f))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "qgemv (vnni): needs 4 or 8 bits, groups of a multiple of 64 and AVX512-VNNI/VBMI");
    if (r0 == r1)
        return MOEC_OK;
    const int64_t nch = (f->cols + CHUNK - 1) / CHUNK;
    const size_t xbytes = (size_t)(nch + 1) * 64 + 128, fbytes = (size_t)(nch + 2) * sizeof(float);
    /* activations, per-chunk scales and sums, a row's factors */
    const size_t need = xbytes + 3 * fbytes;
    _Alignas(64) char stack[STACK_COLS + 3 * (STACK_COLS / CHUNK + 2) * 4 + 256];
    char *buf = need <= sizeof stack ? stack : malloc(need);
    if (!buf)
        return moec_err_set(err, MOEC_ERR_NOMEM, "qgemv (vnni): out of memory for %lld columns",
                            (long long)f->cols);
    int8_t *xi = (int8_t *)buf;
    float *sx = (float *)(buf + xbytes), *xs = sx + (nch + 2), *fac = xs + (nch + 2);
    run(f, x, y, r0, r1, accumulate, xi, sx, xs, fac);
    if (buf != stack)
        free(buf);
    return MOEC_OK;
}

#else /* not x86-64 with GNU C */

bool moec_qgemv_q8_supported(const moec_qformat *f)
{
    (void)f;
    return false;
}

moec_status moec_qgemv_q8(const moec_qformat *f, const float *x, float *y, int64_t r0, int64_t r1,
                          bool accumulate, moec_err *err)
{
    (void)f, (void)x, (void)y, (void)r0, (void)r1, (void)accumulate;
    return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "qgemv (vnni): this build has no AVX512-VNNI kernel");
}

#endif
