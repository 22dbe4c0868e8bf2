#include "exec/matmul_quant.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "exec/matmul.h"
#include "exec/matmul_gblocks.h"
#include "core/qformat.h"
#include "exec/qgemv.h"

/* Below this many flops (2·n·rows·K) a product runs on the caller alone:
 * waking the workers (~1 µs) would cost more than it saves. */
#define PAR_MIN_FLOPS 49152
/* Workers get multiples of this many output rows (64 bytes of y). */
#define ROW_ALIGN 16
/* Chunks of rows per worker in a parallel product (see matmul.c). */
#define CLAIMS_PER_WORKER 8
/* Float32 bytes of dequantized weights per tile: it stays in L1/L2 between
 * being written and being read (bench-qmatmul: 16 KiB to 256 KiB within
 * noise of each other, 32 KiB marginally best at n = 1). */
#define TILE_BYTES (32 * 1024)
/* n up to this uses the qgemm kernel where its AVX-512 version applies,
 * by code width: bench-qmatmul (AMD EPYC Zen 5 class, mixtral-tiny shapes,
 * group 64, one thread) puts the crossover with tiles + matmul.c's F32
 * kernel between 16 and 32 for b <= 4 (a vpermps table lookup per 16 codes)
 * and between 4 and 8 for b > 4 (codes converted to float). At n = 1 qgemm
 * takes 3.2 µs for 512x256 at 4 bits where tiles take 10.6. */
#define DIRECT_MAX_N_LUT 16
#define DIRECT_MAX_N_CVT 4

static _Atomic int forced_path;
static _Atomic bool int8_acts = true;

void moec_matmul_quant_int8_activations(bool on)
{
    atomic_store_explicit(&int8_acts, on, memory_order_relaxed);
}

bool moec_matmul_quant_int8_activations_on(void)
{
    return atomic_load_explicit(&int8_acts, memory_order_relaxed);
}

void moec_matmul_quant_force_path(int path)
{
    atomic_store_explicit(&forced_path, path, memory_order_relaxed);
}

int64_t moec_matmul_quant_direct_max_n(const moec_tensor *W)
{
    if (!W || !W->q || W->q->gblock || strcmp(moec_qgemm_kernel(W->q), "avx512") != 0)
        return 0;
    return W->q->bits <= 4 ? DIRECT_MAX_N_LUT : DIRECT_MAX_N_CVT;
}

/* Rows [a, b) of f as a format of their own, so that a kernel's row 0 is
 * f's row a (y columns are then relative to a, as moec_matmul_ex's are). */
static moec_qformat sub_rows(const moec_qformat *f, int64_t a, int64_t b)
{
    const int64_t ng = moec_qformat_ngroups(f);
    const size_t cb = moec_qformat_packed_bytes(f->cols, f->bits);
    const size_t zb = moec_qformat_packed_bytes(ng, f->bits);
    moec_qformat s = *f;
    s.rows = b - a;
    s.codes = f->codes + (size_t)a * cb;
    s.codes_bytes = (size_t)(b - a) * cb;
    s.scales = f->scales + (size_t)a * (size_t)ng;
    s.scales_bytes = (size_t)(b - a) * (size_t)ng * sizeof(uint16_t);
    if (!f->symmetric) {
        s.zeros = f->zeros + (size_t)a * zb;
        s.zeros_bytes = (size_t)(b - a) * zb;
    }
    return s;
}

/* The kernel that needs no memory: one group at a time, codes unpacked in
 * small chunks on the stack. y[i·ldy + r] (+)= x_i · Ŵ[r] for r < f->rows. */
static void fallback_rows(const moec_qformat *f, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                          bool acc)
{
    enum { CH = 64 };
    const int64_t ng = moec_qformat_ngroups(f);
    const size_t cb = moec_qformat_packed_bytes(f->cols, f->bits);
    uint8_t q[CH];
    float w[CH];
    for (int64_t r = 0; r < f->rows; r++) {
        const uint8_t *row = f->codes + (size_t)r * cb;
        for (int64_t i = 0; i < n; i++) {
            float sum = 0.0f;
            for (int64_t g = 0; g < ng; g++) {
                const float s = moec_qformat_scale(f, r, g);
                const int z = moec_qformat_zero(f, r, g);
                const int64_t c1 = (g + 1) * f->group < f->cols ? (g + 1) * f->group : f->cols;
                for (int64_t c = g * f->group; c < c1; c += CH) {
                    const int64_t cn = c1 - c < CH ? c1 - c : CH;
                    moec_qunpack(q, row, c, cn, f->bits);
                    for (int64_t k = 0; k < cn; k++)
                        w[k] = s * (float)((int)q[k] - z);
                    for (int64_t k = 0; k < cn; k++)
                        sum += w[k] * x[i * ldx + c + k];
                }
            }
            y[i * ldy + r] = acc ? y[i * ldy + r] + sum : sum;
        }
    }
}

/* ---- tile dequantization ----------------------------------------------
 * Rows [r0, r1) of f into out [r1 - r0][cols] as float32: the values of
 * moec_qformat_dequant_rows, s·(float)(q - z), bit for bit. */
typedef void (*dequant_fn)(const moec_qformat *f, int64_t r0, int64_t r1, float *out);

static void dequant_portable(const moec_qformat *f, int64_t r0, int64_t r1, float *out)
{
    moec_qformat_dequant_rows(f, r0, r1, out);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))
/* How far ahead of the row being converted its successors' codes are
 * prefetched. */
#define PREFETCH_BYTES 1024

/* Two passes per row, both in L1: every 16 codes of a row start on a byte
 * boundary (16·b bits), whatever the group size, so the row's codes become
 * floats 16 at a time (the 2b source bytes broadcast to the four 128-bit
 * lanes, a byte shuffle putting the two bytes that hold code i in dword i, a
 * per-lane shift and a mask); then each group's floats become s·(q - z).
 * (float)(q - z) equals (float)q - (float)z exactly for b <= 8. */
T512 static void dequant_avx512(const moec_qformat *f, int64_t r0, int64_t r1, float *out)
{
    const int B = f->bits;
    const int64_t cols = f->cols, ng = moec_qformat_ngroups(f), G = f->group < cols ? f->group : cols;
    const size_t cb = moec_qformat_packed_bytes(cols, B);
    uint8_t ctl[64];
    uint32_t sh[16];
    for (int i = 0; i < 16; i++) {
        const int bit = B * i, byte = bit >> 3;
        ctl[4 * i] = (uint8_t)byte;
        ctl[4 * i + 1] = byte + 1 < 2 * B ? (uint8_t)(byte + 1) : 0x80;
        ctl[4 * i + 2] = ctl[4 * i + 3] = 0x80;
        sh[i] = (uint32_t)(bit & 7);
    }
    const __m512i vctl = _mm512_loadu_si512(ctl), vsh = _mm512_loadu_si512(sh);
    const __m512i vmask = _mm512_set1_epi32((1 << B) - 1);
    const __mmask16 load = (__mmask16)((1u << (2 * B)) - 1u);
    uint8_t zs[256];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *p = f->codes + (size_t)r * cb;
        float *o = out + (size_t)(r - r0) * (size_t)cols;
        const uint16_t *sc = f->scales + (size_t)r * (size_t)ng;
        /* decode reads each expert's codes once, from L3 or memory: ask for
         * the rows PREFETCH_BYTES ahead, as matmul.c's direct kernels do */
        if (r + 1 < r1)
            for (size_t b = 0; b < cb; b += 64)
                _mm_prefetch((const char *)p + PREFETCH_BYTES + b, _MM_HINT_T0);
        if (G % 16 == 0 && cols % 16 == 0) {
            /* one pass: groups are whole 16-code steps */
            for (int64_t g0 = 0; g0 < ng; g0 += 256) {
                const int64_t gn = ng - g0 < 256 ? ng - g0 : 256;
                moec_qformat_zeros(f, r, g0, gn, zs);
                for (int64_t g = g0; g < g0 + gn; g++) {
                    const __m512 vs = _mm512_set1_ps(_cvtsh_ss(sc[g]));
                    const __m512i vz = _mm512_set1_epi32(zs[g - g0]);
                    const int64_t c1 = (g + 1) * G < cols ? (g + 1) * G : cols;
                    const uint8_t *pk = p + (size_t)(g * G / 16) * (size_t)(2 * B);
                    for (int64_t k = g * G; k < c1; k += 16, pk += 2 * B) {
                        __m512i v;
                        if (B == 8) {
                            v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)pk));
                        } else {
                            v = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(load, pk));
                            v = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(v, vctl), vsh), vmask);
                        }
                        _mm512_storeu_ps(o + k, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, vz)), vs));
                    }
                }
            }
            continue;
        }
        int64_t c = 0;
        for (; c + 16 <= cols; c += 16, p += 2 * B) {
            __m512i v;
            if (B == 8) {
                v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
            } else {
                v = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(load, p));
                v = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(v, vctl), vsh), vmask);
            }
            _mm512_storeu_ps(o + c, _mm512_cvtepi32_ps(v));
        }
        if (c < cols) {
            uint8_t q[16];
            moec_qunpack(q, f->codes + (size_t)r * cb, c, cols - c, B);
            for (int64_t k = c; k < cols; k++)
                o[k] = (float)q[k - c];
        }
        for (int64_t g0 = 0; g0 < ng; g0 += 256) {
            const int64_t gn = ng - g0 < 256 ? ng - g0 : 256;
            moec_qformat_zeros(f, r, g0, gn, zs);
            for (int64_t g = g0; g < g0 + gn; g++) {
                const __m512 vs = _mm512_set1_ps(_cvtsh_ss(sc[g]));
                const __m512 vz = _mm512_set1_ps((float)zs[g - g0]);
                const int64_t c1 = (g + 1) * G < cols ? (g + 1) * G : cols;
                int64_t k = g * G;
                for (; k + 16 <= c1; k += 16)
                    _mm512_storeu_ps(o + k, _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(o + k), vz), vs));
                if (k < c1) {
                    const __mmask16 m = (__mmask16)((1u << (c1 - k)) - 1u);
                    _mm512_mask_storeu_ps(o + k, m,
                                          _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, o + k), vz), vs));
                }
            }
        }
    }
}

#define T512V __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,f16c")))

/* b <= 4 with groups and rows of whole 16-code steps: per group a 16-entry
 * table T[e] = s·((e mod 2^b) - z) (exactly s·(q - z) for q = e mod 2^b)
 * in one register, then per 16 codes one broadcast load, one index
 * instruction (a per-lane shift for b = 2; vpmultishiftqb otherwise, byte
 * 4i of the result the 8 bits from bit b·i on) and one vpermps, which reads
 * only the low 4 bits of each index: 3 instructions and a store per 16
 * weights, where unpack + subtract + convert + scale take 7 (the tile is
 * read again by a kernel doing n FMAs per weight: at prefill's n ≈ 32 the
 * conversion was ~15% of the product). B is a constant per instantiation. */
T512V static inline __attribute__((always_inline)) void lut_rows(const moec_qformat *f, int64_t r0,
                                                                 int64_t r1, float *out, const int B)
{
    const int64_t cols = f->cols, ng = moec_qformat_ngroups(f), G = f->group < cols ? f->group : cols;
    const size_t cb = moec_qformat_packed_bytes(cols, B);
    const uint8_t *codes_end = f->codes + (size_t)f->rows * cb;
    uint8_t ctl[64] = {0};
    float iv[16];
    for (int i = 0; i < 16; i++) {
        ctl[4 * i] = (uint8_t)(B * i);
        iv[i] = (float)(i & ((1 << B) - 1));
    }
    const __m512i vctl = _mm512_loadu_si512(ctl);
    const __m512i vsh2 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512 iota = _mm512_loadu_ps(iv);
    const __mmask16 step_bytes = (__mmask16)((1u << (2 * B)) - 1u);
    uint8_t zs[256];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *pk = f->codes + (size_t)r * cb;
        float *o = out + (size_t)(r - r0) * (size_t)cols;
        const uint16_t *sc = f->scales + (size_t)r * (size_t)ng;
        if (r + 1 < r1)
            for (size_t b = 0; b < cb; b += 64)
                _mm_prefetch((const char *)pk + PREFETCH_BYTES + b, _MM_HINT_T0);
        /* b = 1, 3 read 8 bytes per step: the matrix's last bytes only
         * through a masked load */
        const bool safe = B == 2 || B == 4 || pk + cb + 8 <= codes_end;
        for (int64_t g0 = 0; g0 < ng; g0 += 256) {
            const int64_t gn = ng - g0 < 256 ? ng - g0 : 256;
            moec_qformat_zeros(f, r, g0, gn, zs);
            for (int64_t g = g0; g < g0 + gn; g++) {
                const __m512 tab = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps((float)zs[g - g0])),
                                                 _mm512_set1_ps(_cvtsh_ss(sc[g])));
                /* the last group of a row may be shorter (cols % 16 == 0 still) */
                const int64_t steps = (g + 1) * G <= cols ? G / 16 : (cols - g * G) / 16;
#pragma GCC unroll 4
                for (int64_t j = 0; j < steps; j++) {
                    const uint8_t *p = pk + j * 2 * B;
                    __m512i q;
                    if (B == 2) {
                        uint32_t v;
                        memcpy(&v, p, 4);
                        q = _mm512_srlv_epi32(_mm512_set1_epi32((int)v), vsh2);
                    } else if (B == 4 || safe) {
                        uint64_t v;
                        memcpy(&v, p, 8);
                        q = _mm512_multishift_epi64_epi8(vctl, _mm512_set1_epi64((long long)v));
                    } else {
                        q = _mm512_multishift_epi64_epi8(
                            vctl, _mm512_broadcastq_epi64(_mm_maskz_loadu_epi8(step_bytes, p)));
                    }
                    _mm512_storeu_ps(o + j * 16, _mm512_permutexvar_ps(q, tab));
                }
                pk += steps * 2 * B;
                o += steps * 16;
            }
        }
    }
}

/* Formats lut_rows does not take go to dequant_avx512. */
T512V static void dequant_lut_avx512(const moec_qformat *f, int64_t r0, int64_t r1, float *out)
{
    const int64_t G = f->group < f->cols ? f->group : f->cols;
    if (f->bits > 4 || G % 16 != 0 || f->cols % 16 != 0) {
        dequant_avx512(f, r0, r1, out);
        return;
    }
    switch (f->bits) {
    case 1: lut_rows(f, r0, r1, out, 1); break;
    case 2: lut_rows(f, r0, r1, out, 2); break;
    case 3: lut_rows(f, r0, r1, out, 3); break;
    default: lut_rows(f, r0, r1, out, 4); break;
    }
}

static dequant_fn best_dequant(void)
{
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
    if (avx512 && __builtin_cpu_supports("avx512vbmi"))
        return dequant_lut_avx512;
    return avx512 ? dequant_avx512 : dequant_portable;
}
#else
static dequant_fn best_dequant(void)
{
    return dequant_portable;
}
#endif

static dequant_fn dequant_rows(void)
{
    static dequant_fn _Atomic fn;
    dequant_fn d = atomic_load_explicit(&fn, memory_order_relaxed);
    if (!d) {
        d = best_dequant();
        atomic_store_explicit(&fn, d, memory_order_relaxed);
    }
    return d;
}

struct qjob {
    moec_pool *pool;
    const moec_qformat *f;
    float *y;
    int64_t ldy;
    const float *x;
    int64_t ldx;
    int64_t n;
    int64_t r0, r1; /* rows of f */
    int64_t chunk;  /* rows per claim */
    int64_t nchunks;
    _Atomic int64_t next; /* the next chunk to claim (see matmul.c's worker) */
    bool acc;
    bool direct;
    bool fallback_only;
};

/* A worker's buffer: the pool's scratch for its share during a run, else
 * (no pool, the caller alone outside a run, or a run that found the pool
 * busy) its own allocation; *own says which, for release. */
static void *scratch(const struct qjob *j, int thread, size_t bytes, bool *own)
{
    void *p = j->pool ? moec_pool_scratch(j->pool, thread, bytes) : NULL;
    *own = !p;
    return p ? p : malloc(bytes);
}

static void release(void *p, bool own)
{
    if (own)
        free(p);
}

/* qgemm on f's rows [a, b) into y columns [a - r0, b - r0); one token
 * with integer dot products where the format and CPU allow it. */
static bool direct_part(const struct qjob *j, int64_t a, int64_t b)
{
    const moec_qformat s = sub_rows(j->f, a, b);
    if (j->n == 1 && atomic_load_explicit(&int8_acts, memory_order_relaxed) && moec_qgemv_q8_supported(&s) &&
        moec_qgemv_q8(&s, j->x, j->y + (a - j->r0), 0, b - a, j->acc, NULL) == MOEC_OK)
        return true;
    return moec_qgemm_ex(&s, j->x, j->ldx, j->n, j->y + (a - j->r0), j->ldy, 0, b - a, j->acc,
                         NULL) == MOEC_OK;
}

/* Dequantized float32 tiles of f's rows [a, b), each multiplied by
 * moec_matmul_ex: matmul.c's direct F32 kernel, or sgemm where its kernel
 * family prefers that for this n. */
static bool tile_part(const struct qjob *j, int thread, int64_t a, int64_t b)
{
    const int64_t K = j->f->cols;
    int64_t tile_rows = TILE_BYTES / (K * (int64_t)sizeof(float));
    if (tile_rows < ROW_ALIGN)
        tile_rows = ROW_ALIGN;
    if (tile_rows > b - a)
        tile_rows = b - a;
    bool own;
    float *tile = scratch(j, thread, (size_t)(tile_rows * K) * sizeof(float), &own);
    if (!tile)
        return false;
    const dequant_fn dequant = dequant_rows();
    for (int64_t r = a; r < b; r += tile_rows) {
        const int64_t tr = b - r < tile_rows ? b - r : tile_rows;
        dequant(j->f, r, r + tr, tile);
        const moec_tensor t = {.dtype = MOEC_DT_F32, .ndim = 2, .shape = {tr, K}, .data = tile,
                               .nbytes = (size_t)(tr * K) * sizeof(float)};
        /* on the caller (no pool): this worker is already one of the pool's */
        moec_matmul_ex(NULL, j->y + (r - j->r0), j->ldy, j->x, j->ldx, j->n, &t, 0, tr, j->acc);
    }
    release(tile, own);
    return true;
}

/* Rows [a, b) of the job on share `thread`. */
static void qrows(const struct qjob *j, int thread, int64_t a, int64_t b)
{
    if (!j->fallback_only && (j->direct ? direct_part(j, a, b) : tile_part(j, thread, a, b)))
        return;
    const moec_qformat s = sub_rows(j->f, a, b);
    fallback_rows(&s, j->y + (a - j->r0), j->ldy, j->x, j->ldx, j->n, j->acc);
}

/* Chunks of rows claimed from a shared counter, as matmul.c's worker does. */
static void qworker(void *ctx, int thread, int n_threads)
{
    (void)n_threads;
    struct qjob *j = ctx;
    for (;;) {
        const int64_t c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->nchunks)
            return;
        const int64_t a = j->r0 + c * j->chunk, b = a + j->chunk < j->r1 ? a + j->chunk : j->r1;
        qrows(j, thread, a, b);
    }
}

void moec_matmul_quant(moec_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                       const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate)
{
    const moec_qformat *f = W->q;
    const int64_t rows = r1 - r0, K = f->cols;
    if (n <= 0 || rows <= 0)
        return;
    if (f->gblock) { /* llama.cpp blocks: their own file */
        moec_matmul_gblocks(pool, y, ldy, x, ldx, n, W, r0, r1, accumulate);
        return;
    }
    const int path = atomic_load_explicit(&forced_path, memory_order_relaxed);
    struct qjob j = {
        .pool = pool,
        .f = f,
        .y = y,
        .ldy = ldy,
        .x = x,
        .ldx = ldx,
        .n = n,
        .r0 = r0,
        .r1 = r1,
        .acc = accumulate,
        .direct = path == 1 || (path == 0 && n <= moec_matmul_quant_direct_max_n(W)),
        .fallback_only = path == 3,
    };
    const int nt = moec_pool_size(pool);
    const double flops = 2.0 * (double)n * (double)rows * (double)K;
    if (flops < PAR_MIN_FLOPS) {
        /* on the caller, outside any run: the pool's scratch may be in use
         * by someone else's run, so a tile (if needed) is allocated */
        j.pool = NULL;
        qrows(&j, 0, r0, r1);
        return;
    }
    if (nt == 1) {
        /* a run of one share: scratch 0 is then this run's */
        j.chunk = rows;
    } else {
        const int64_t per = (rows + (int64_t)nt * CLAIMS_PER_WORKER - 1) / ((int64_t)nt * CLAIMS_PER_WORKER);
        j.chunk = (per + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN;
    }
    j.nchunks = (rows + j.chunk - 1) / j.chunk;
    atomic_init(&j.next, 0);
    moec_pool_run(pool, qworker, &j);
}

void moec_matmul_quant_share(moec_pool *pool, int thread, float *y, int64_t ldy, const float *x, int64_t ldx,
                             int64_t n, const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate)
{
    const int64_t rows = r1 - r0;
    if (n <= 0 || rows <= 0)
        return;
    if (W->q->gblock) {
        moec_matmul_gblocks_share(pool, thread, y, ldy, x, ldx, n, W, r0, r1, accumulate);
        return;
    }
    const int path = atomic_load_explicit(&forced_path, memory_order_relaxed);
    struct qjob j = {
        .pool = pool,
        .f = W->q,
        .y = y,
        .ldy = ldy,
        .x = x,
        .ldx = ldx,
        .n = n,
        .r0 = r0,
        .r1 = r1,
        .chunk = rows,
        .acc = accumulate,
        .direct = path == 1 || (path == 0 && n <= moec_matmul_quant_direct_max_n(W)),
        .fallback_only = path == 3,
    };
    qrows(&j, thread, r0, r1);
}

