/* ggml_blocks.c - llama.cpp's block types: traits, packing, decoding and a
 * round-to-nearest parameter choice. Layouts written from ggml's block
 * structs (ggml-common.h) and dequantize_row_* (ggml-quants.c); see the
 * header for the decoding formula every type shares. */
#include "core/ggml_blocks.h"

#include <math.h>
#include <string.h>
#include <strings.h>

#include "core/dtype.h"

static const moec_gblock_traits traits[MOEC_GB_COUNT] = {
    [MOEC_GB_Q4_0] = {"Q4_0", 2, 32, 32, 4, 18, 8, false},
    [MOEC_GB_Q4_1] = {"Q4_1", 3, 32, 32, 4, 20, 0, true},
    [MOEC_GB_Q5_0] = {"Q5_0", 6, 32, 32, 5, 22, 16, false},
    [MOEC_GB_Q5_1] = {"Q5_1", 7, 32, 32, 5, 24, 0, true},
    [MOEC_GB_Q8_0] = {"Q8_0", 8, 32, 32, 8, 34, 128, false},
    [MOEC_GB_Q2_K] = {"Q2_K", 10, 256, 16, 2, 84, 0, true},
    [MOEC_GB_Q3_K] = {"Q3_K", 11, 256, 16, 3, 110, 4, false},
    [MOEC_GB_Q4_K] = {"Q4_K", 12, 256, 32, 4, 144, 0, true},
    [MOEC_GB_Q5_K] = {"Q5_K", 13, 256, 32, 5, 176, 0, true},
    [MOEC_GB_Q6_K] = {"Q6_K", 14, 256, 16, 6, 210, 32, false},
};

const moec_gblock_traits *moec_gblock_info(moec_gblock t)
{
    return t > MOEC_GB_NONE && t < MOEC_GB_COUNT ? &traits[t] : NULL;
}

moec_gblock moec_gblock_from_name(const char *name)
{
    for (int t = 1; name && t < MOEC_GB_COUNT; t++)
        if (strcasecmp(name, traits[t].name) == 0)
            return (moec_gblock)t;
    return MOEC_GB_NONE;
}

moec_gblock moec_gblock_from_ggml(int ggml_type)
{
    for (int t = 1; t < MOEC_GB_COUNT; t++)
        if (traits[t].ggml_type == ggml_type)
            return (moec_gblock)t;
    return MOEC_GB_NONE;
}

size_t moec_gblock_row_bytes(moec_gblock t, int64_t n)
{
    const moec_gblock_traits *tr = moec_gblock_info(t);
    if (!tr || n <= 0 || n % tr->block)
        return 0;
    return (size_t)(n / tr->block) * (size_t)tr->bytes;
}

/* ---- grid ---------------------------------------------------------------- */

void moec_gblock_grid_of(moec_gblock t, const moec_gblock_params *p, moec_gblock_grid *g)
{
    const moec_gblock_traits *tr = &traits[t];
    const int ns = tr->block / tr->sub;
    const float d = moec_f16_to_f32(p->d), m = moec_f16_to_f32(p->m);
    g->z = tr->zero;
    g->maxq = (1 << tr->bits) - 1;
    for (int s = 0; s < ns; s++) {
        switch (t) {
        case MOEC_GB_Q4_1:
        case MOEC_GB_Q5_1:
            g->a[s] = d;
            g->b[s] = -m;
            break;
        case MOEC_GB_Q2_K:
        case MOEC_GB_Q4_K:
        case MOEC_GB_Q5_K:
            g->a[s] = d * (float)p->sc[s];
            g->b[s] = m * (float)p->mn[s];
            break;
        case MOEC_GB_Q3_K:
            g->a[s] = d * (float)((int)p->sc[s] - 32);
            g->b[s] = 0.0f;
            break;
        case MOEC_GB_Q6_K:
            g->a[s] = d * (float)(int8_t)p->sc[s];
            g->b[s] = 0.0f;
            break;
        default: /* Q4_0, Q5_0, Q8_0 */
            g->a[s] = d;
            g->b[s] = 0.0f;
            break;
        }
    }
}

int moec_gblock_code(const moec_gblock_grid *g, int s, float w)
{
    const float a = g->a[s];
    if (a == 0.0f)
        return g->z;
    const float t = rintf((w + g->b[s]) / a) + (float)g->z;
    return !(t >= 0.0f) ? 0 : t > (float)g->maxq ? g->maxq : (int)t; /* NaN -> 0 */
}

/* ---- packing -------------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Q4_0/Q4_1/Q5_0/Q5_1 nibbles: byte j holds element j (low) and j + 16
 * (high). Q5: bit i of the little-endian u32 qh is bit 4 of element i. */
static void pack_nibbles32(uint8_t *qs, const uint8_t *q)
{
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
}

static void unpack_nibbles32(const uint8_t *qs, uint8_t *q)
{
    for (int j = 0; j < 16; j++) {
        q[j] = qs[j] & 15;
        q[j + 16] = qs[j] >> 4;
    }
}

static void pack_qh32(uint8_t *qh, const uint8_t *q)
{
    uint32_t h = 0;
    for (int i = 0; i < 32; i++)
        h |= (uint32_t)((q[i] >> 4) & 1) << i;
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
}

static void unpack_qh32(const uint8_t *qh, uint8_t *q)
{
    uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int i = 0; i < 32; i++)
        q[i] |= (uint8_t)(((h >> i) & 1) << 4);
}

/* Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins in 12 bytes. For j < 4:
 * byte j = sc[j] | (sc[j+4] >> 4) << 6, byte j+4 = mn[j] | (mn[j+4] >> 4) << 6,
 * byte j+8 = (sc[j+4] & 15) | (mn[j+4] & 15) << 4 (ggml's get_scale_min_k4). */
static void pack_scales_k4(uint8_t *s, const uint8_t *sc, const uint8_t *mn)
{
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)((mn[j] & 63) | (mn[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
}

static void unpack_scales_k4(const uint8_t *s, uint8_t *sc, uint8_t *mn)
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 15) | (s[j] >> 6) << 4);
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | (s[j + 4] >> 6) << 4);
    }
}

/* Q3_K: 16 six-bit scales in 12 bytes: the low nibble of scale j in byte
 * j % 8 (low nibble for j < 8, high for j >= 8), its top two bits in byte
 * 8 + j % 4 at bit 2·(j / 4). */
static void pack_scales_q3(uint8_t *s, const uint8_t *sc)
{
    memset(s, 0, 12);
    for (int j = 0; j < 16; j++) {
        s[j % 8] |= (uint8_t)((sc[j] & 15) << (j < 8 ? 0 : 4));
        s[8 + j % 4] |= (uint8_t)(((sc[j] >> 4) & 3) << (2 * (j / 4)));
    }
}

static void unpack_scales_q3(const uint8_t *s, uint8_t *sc)
{
    for (int j = 0; j < 16; j++)
        sc[j] = (uint8_t)(((s[j % 8] >> (j < 8 ? 0 : 4)) & 15) | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
}

/* k-quant code positions within a block of 256, element e:
 *  Q2_K/Q3_K: low two bits in qs[32·(e/128) + e%32] at bit 2·((e%128)/32);
 *             Q3_K's third bit in hmask[e%32] at bit (e/32).
 *  Q4_K/Q5_K: low nibble of qs[32·(e/64) + e%32], high nibble when e%64 >= 32;
 *             Q5_K's fifth bit in qh[e%32] at bit (e/32).
 *  Q6_K:      low nibble in ql[64·(e/128) + e%32 + 32·(k&1)] with k = (e%128)/32,
 *             the high nibble when k >= 2; bits 4-5 in qh[32·(e/128) + e%32] at
 *             bit 2k. */
void moec_gblock_pack(moec_gblock t, const moec_gblock_params *p, const uint8_t *q, void *dst)
{
    uint8_t *b = dst;
    switch (t) {
    case MOEC_GB_Q4_0:
        put16(b, p->d);
        pack_nibbles32(b + 2, q);
        break;
    case MOEC_GB_Q4_1:
        put16(b, p->d);
        put16(b + 2, p->m);
        pack_nibbles32(b + 4, q);
        break;
    case MOEC_GB_Q5_0:
        put16(b, p->d);
        pack_qh32(b + 2, q);
        pack_nibbles32(b + 6, q);
        break;
    case MOEC_GB_Q5_1:
        put16(b, p->d);
        put16(b + 2, p->m);
        pack_qh32(b + 4, q);
        pack_nibbles32(b + 8, q);
        break;
    case MOEC_GB_Q8_0:
        put16(b, p->d);
        for (int i = 0; i < 32; i++)
            b[2 + i] = (uint8_t)(q[i] - 128); /* int8 two's complement of q - 128 */
        break;
    case MOEC_GB_Q2_K: {
        uint8_t *qs = b + 16;
        for (int j = 0; j < 16; j++)
            b[j] = (uint8_t)((p->sc[j] & 15) | (p->mn[j] & 15) << 4);
        memset(qs, 0, 64);
        for (int e = 0; e < 256; e++)
            qs[32 * (e / 128) + e % 32] |= (uint8_t)((q[e] & 3) << (2 * ((e % 128) / 32)));
        put16(b + 80, p->d);
        put16(b + 82, p->m);
        break;
    }
    case MOEC_GB_Q3_K: {
        uint8_t *hm = b, *qs = b + 32;
        memset(b, 0, 96);
        for (int e = 0; e < 256; e++) {
            qs[32 * (e / 128) + e % 32] |= (uint8_t)((q[e] & 3) << (2 * ((e % 128) / 32)));
            hm[e % 32] |= (uint8_t)(((q[e] >> 2) & 1) << (e / 32));
        }
        pack_scales_q3(b + 96, p->sc);
        put16(b + 108, p->d);
        break;
    }
    case MOEC_GB_Q4_K:
    case MOEC_GB_Q5_K: {
        const bool five = t == MOEC_GB_Q5_K;
        uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
        put16(b, p->d);
        put16(b + 2, p->m);
        pack_scales_k4(b + 4, p->sc, p->mn);
        memset(qs, 0, 128);
        if (five)
            memset(qh, 0, 32);
        for (int e = 0; e < 256; e++) {
            qs[32 * (e / 64) + e % 32] |= (uint8_t)((q[e] & 15) << (e % 64 >= 32 ? 4 : 0));
            if (five)
                qh[e % 32] |= (uint8_t)(((q[e] >> 4) & 1) << (e / 32));
        }
        break;
    }
    case MOEC_GB_Q6_K: {
        uint8_t *ql = b, *qh = b + 128;
        memset(b, 0, 192);
        for (int e = 0; e < 256; e++) {
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            ql[64 * h + l + 32 * (k & 1)] |= (uint8_t)((q[e] & 15) << (k >= 2 ? 4 : 0));
            qh[32 * h + l] |= (uint8_t)(((q[e] >> 4) & 3) << (2 * k));
        }
        memcpy(b + 192, p->sc, 16);
        put16(b + 208, p->d);
        break;
    }
    default:
        break;
    }
}

void moec_gblock_unpack(moec_gblock t, const void *src, moec_gblock_params *p, uint8_t *q)
{
    const uint8_t *b = src;
    memset(p, 0, sizeof *p);
    switch (t) {
    case MOEC_GB_Q4_0:
        p->d = get16(b);
        unpack_nibbles32(b + 2, q);
        break;
    case MOEC_GB_Q4_1:
        p->d = get16(b);
        p->m = get16(b + 2);
        unpack_nibbles32(b + 4, q);
        break;
    case MOEC_GB_Q5_0:
        p->d = get16(b);
        unpack_nibbles32(b + 6, q);
        unpack_qh32(b + 2, q);
        break;
    case MOEC_GB_Q5_1:
        p->d = get16(b);
        p->m = get16(b + 2);
        unpack_nibbles32(b + 8, q);
        unpack_qh32(b + 4, q);
        break;
    case MOEC_GB_Q8_0:
        p->d = get16(b);
        for (int i = 0; i < 32; i++)
            q[i] = (uint8_t)(b[2 + i] + 128);
        break;
    case MOEC_GB_Q2_K:
        for (int j = 0; j < 16; j++) {
            p->sc[j] = b[j] & 15;
            p->mn[j] = b[j] >> 4;
        }
        for (int e = 0; e < 256; e++)
            q[e] = (b[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        p->d = get16(b + 80);
        p->m = get16(b + 82);
        break;
    case MOEC_GB_Q3_K:
        for (int e = 0; e < 256; e++)
            q[e] = (uint8_t)(((b[32 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) |
                             ((b[e % 32] >> (e / 32)) & 1) << 2);
        unpack_scales_q3(b + 96, p->sc);
        p->d = get16(b + 108);
        break;
    case MOEC_GB_Q4_K:
    case MOEC_GB_Q5_K: {
        const bool five = t == MOEC_GB_Q5_K;
        const uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
        p->d = get16(b);
        p->m = get16(b + 2);
        unpack_scales_k4(b + 4, p->sc, p->mn);
        for (int e = 0; e < 256; e++) {
            q[e] = (qs[32 * (e / 64) + e % 32] >> (e % 64 >= 32 ? 4 : 0)) & 15;
            if (five)
                q[e] |= (uint8_t)(((qh[e % 32] >> (e / 32)) & 1) << 4);
        }
        break;
    }
    case MOEC_GB_Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        for (int e = 0; e < 256; e++) {
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            q[e] = (uint8_t)(((ql[64 * h + l + 32 * (k & 1)] >> (k >= 2 ? 4 : 0)) & 15) |
                             ((qh[32 * h + l] >> (2 * k)) & 3) << 4);
        }
        memcpy(p->sc, b + 192, 16);
        p->d = get16(b + 208);
        break;
    }
    default:
        break;
    }
}

bool moec_gblock_finite(moec_gblock t, const void *src, int64_t nblocks, int64_t *bad)
{
    const moec_gblock_traits *tr = moec_gblock_info(t);
    if (!tr)
        return false;
    /* offsets of the F16 fields in a block: d, then m where present */
    int od = 0, om = -1;
    switch (t) {
    case MOEC_GB_Q4_1:
    case MOEC_GB_Q5_1:
    case MOEC_GB_Q4_K:
    case MOEC_GB_Q5_K: om = 2; break;
    case MOEC_GB_Q2_K: od = 80, om = 82; break;
    case MOEC_GB_Q3_K: od = 108; break;
    case MOEC_GB_Q6_K: od = 208; break;
    default: break;
    }
    const uint8_t *b = src;
    for (int64_t i = 0; i < nblocks; i++, b += tr->bytes)
        if ((get16(b + od) & 0x7c00u) == 0x7c00u || (om >= 0 && (get16(b + om) & 0x7c00u) == 0x7c00u)) {
            if (bad)
                *bad = i;
            return false;
        }
    return true;
}

void moec_gblock_dequant(moec_gblock t, const void *src, float *dst, int64_t n)
{
    const moec_gblock_traits *tr = moec_gblock_info(t);
    if (!tr)
        return;
    const uint8_t *b = src;
    moec_gblock_params p;
    moec_gblock_grid g;
    uint8_t q[MOEC_GB_MAX_BLOCK];
    for (int64_t i = 0; i + tr->block <= n; i += tr->block, b += tr->bytes) {
        moec_gblock_unpack(t, b, &p, q);
        moec_gblock_grid_of(t, &p, &g);
        for (int e = 0; e < tr->block; e++)
            dst[i + e] = moec_gblock_value(&g, e / tr->sub, q[e]);
    }
}

/* ---- choosing parameters ------------------------------------------------- */

/* Candidates per side of a scale search: inverse scales (L + 0.1·k) / |x|max
 * for k = -NSTEP..NSTEP, each followed by a least-squares refit. */
#define NSTEP 7

static float imp_at(const float *imp, int i) { return imp ? imp[i] : 1.0f; }

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Symmetric fit: the s minimising Σ w·(x - s·l)², l = clamp(round(x/s), lo,
 * hi) over integer levels [lo, hi] (lo <= 0 < hi). The candidates map the
 * largest-magnitude x to lo or to hi with a little slack either way. s may be
 * negative (then the extreme x maps to the other end). */
static float fit_sym(const float *x, const float *w, int n, int lo, int hi, float *err_out)
{
    float xm = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(xm))
            xm = x[i];
    if (xm == 0.0f) {
        if (err_out)
            *err_out = 0.0f;
        return 0.0f;
    }
    float best_s = xm / (float)hi, best_e = INFINITY;
    const int ends[2] = {lo, hi};
    for (int side = 0; side < 2; side++) {
        const int L = ends[side];
        if (L == 0)
            continue;
        for (int k = -NSTEP; k <= NSTEP; k++) {
            const float inv = ((float)L + (L < 0 ? -0.1f : 0.1f) * (float)k) / xm;
            double swlx = 0.0, swll = 0.0;
            for (int i = 0; i < n; i++) {
                const int l = clampi((int)rintf(x[i] * inv), lo, hi);
                const double wi = imp_at(w, i);
                swlx += wi * l * x[i];
                swll += wi * l * l;
            }
            if (swll <= 0.0)
                continue;
            const float s = (float)(swlx / swll);
            if (!(s != 0.0f) || !isfinite(s))
                continue;
            double e = 0.0;
            for (int i = 0; i < n; i++) {
                const int l = clampi((int)rintf(x[i] / s), lo, hi);
                const double dl = x[i] - s * (float)l;
                e += imp_at(w, i) * dl * dl;
            }
            if (e < best_e) {
                best_e = (float)e;
                best_s = s;
            }
        }
    }
    if (err_out)
        *err_out = best_e;
    return best_s;
}

/* Affine fit: s >= 0 and o minimising Σ w·(x - (s·l + o))², l in [0, maxq]
 * the rounding of (x - o)/s. nonpos: o is held <= 0 (the k-quants store a
 * nonnegative min that is subtracted). */
static void fit_affine(const float *x, const float *w, int n, int maxq, bool nonpos, float *s_out, float *o_out)
{
    float mn = x[0], mx = x[0];
    for (int i = 1; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    if (nonpos && mn > 0.0f)
        mn = 0.0f;
    if (!(mx > mn)) {
        *s_out = 0.0f;
        *o_out = mn;
        return;
    }
    float best_s = (mx - mn) / (float)maxq, best_o = mn;
    double best_e = INFINITY;
    for (int k = -2 * NSTEP; k <= 2 * NSTEP; k++) {
        const float inv = ((float)maxq + 0.05f * (float)k) / (mx - mn);
        double sw = 0, swl = 0, swll = 0, swx = 0, swlx = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi((int)rintf((x[i] - mn) * inv), 0, maxq);
            const double wi = imp_at(w, i);
            sw += wi;
            swl += wi * l;
            swll += wi * l * l;
            swx += wi * x[i];
            swlx += wi * l * x[i];
        }
        const double D = sw * swll - swl * swl;
        if (!(D > 0.0))
            continue;
        double s = (sw * swlx - swx * swl) / D, o = (swll * swx - swl * swlx) / D;
        if (nonpos && o > 0.0) {
            o = 0.0;
            s = swlx / swll;
        }
        if (!(s > 0.0) || !isfinite(s) || !isfinite(o))
            continue;
        double e = 0.0;
        for (int i = 0; i < n; i++) {
            const int l = clampi((int)rint((x[i] - o) / s), 0, maxq);
            const double dl = x[i] - (s * l + o);
            e += imp_at(w, i) * dl * dl;
        }
        if (e < best_e) {
            best_e = e;
            best_s = (float)s;
            best_o = (float)o;
        }
    }
    *s_out = best_s;
    *o_out = best_o;
}

static uint16_t f16_finite(float v)
{
    if (!(fabsf(v) <= 65504.0f))
        v = isnan(v) ? 0.0f : copysignf(65504.0f, v);
    return moec_f32_to_f16(v);
}

/* Quantizes nonnegative sub-block values v[n] to integers in [0, Q] under
 * one F16 scale (weights W per value): the scale from the same symmetric
 * search, the integers by rounding against the F16-rounded scale. */
static uint16_t quant_scales_pos(const float *v, const float *W, int n, int Q, uint8_t *out)
{
    const float s = fit_sym(v, W, n, 0, Q, NULL);
    uint16_t d = f16_finite(fabsf(s));
    const float df = moec_f16_to_f32(d);
    for (int j = 0; j < n; j++)
        out[j] = (uint8_t)(df > 0.0f ? clampi((int)rintf(v[j] / df), 0, Q) : 0);
    return d;
}

/* Signed sub-block scales v[n] to integers in [lo, hi]. */
static uint16_t quant_scales_signed(const float *v, const float *W, int n, int lo, int hi, int *out)
{
    const float s = fit_sym(v, W, n, lo, hi, NULL);
    uint16_t d = f16_finite(s);
    const float df = moec_f16_to_f32(d);
    for (int j = 0; j < n; j++)
        out[j] = df != 0.0f ? clampi((int)rintf(v[j] / df), lo, hi) : 0;
    return d;
}

/* Σ imp·l² of a sub-block on scale s with levels [lo, hi]: the weight of
 * the scale's own quantization error. */
static float level_weight(const float *x, const float *imp, int n, float s, int lo, int hi)
{
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        const int l = s != 0.0f ? clampi((int)rintf(x[i] / s), lo, hi) : 0;
        acc += (double)imp_at(imp, i) * l * l;
    }
    return (float)acc;
}

void moec_gblock_choose(moec_gblock t, const float *x, const float *imp, moec_gblock_params *p)
{
    const moec_gblock_traits *tr = &traits[t];
    memset(p, 0, sizeof *p);
    const int ns = tr->block / tr->sub, S = tr->sub, maxq = (1 << tr->bits) - 1;
    switch (t) {
    case MOEC_GB_Q4_0:
    case MOEC_GB_Q5_0:
    case MOEC_GB_Q8_0:
        p->d = f16_finite(fit_sym(x, imp, 32, -tr->zero, maxq - tr->zero, NULL));
        break;
    case MOEC_GB_Q4_1:
    case MOEC_GB_Q5_1: {
        float s, o;
        fit_affine(x, imp, 32, maxq, false, &s, &o);
        p->d = f16_finite(s);
        p->m = f16_finite(o);
        break;
    }
    case MOEC_GB_Q2_K:
    case MOEC_GB_Q4_K:
    case MOEC_GB_Q5_K: {
        const int Q = t == MOEC_GB_Q2_K ? 15 : 63;
        float sv[MOEC_GB_MAX_SUBS] = {0}, mv[MOEC_GB_MAX_SUBS] = {0}, Ws[MOEC_GB_MAX_SUBS] = {0},
              Wm[MOEC_GB_MAX_SUBS] = {0};
        for (int j = 0; j < ns; j++) {
            float s, o;
            fit_affine(x + j * S, imp ? imp + j * S : NULL, S, maxq, true, &s, &o);
            sv[j] = s;
            mv[j] = -o;
            double ws = 0.0, wm = 0.0;
            for (int i = 0; i < S; i++) {
                const float l = s > 0.0f ? (float)clampi((int)rintf((x[j * S + i] - o) / s), 0, maxq) : 0.0f;
                ws += (double)imp_at(imp ? imp + j * S : NULL, i) * l * l;
                wm += imp_at(imp ? imp + j * S : NULL, i);
            }
            Ws[j] = (float)ws + 1e-30f;
            Wm[j] = (float)wm + 1e-30f;
        }
        p->d = quant_scales_pos(sv, Ws, ns, Q, p->sc);
        p->m = quant_scales_pos(mv, Wm, ns, Q, p->mn);
        break;
    }
    case MOEC_GB_Q3_K:
    case MOEC_GB_Q6_K: {
        const int lo = -tr->zero, hi = maxq - tr->zero;
        const int Slo = t == MOEC_GB_Q3_K ? -32 : -128, Shi = t == MOEC_GB_Q3_K ? 31 : 127;
        float sv[MOEC_GB_MAX_SUBS] = {0}, Ws[MOEC_GB_MAX_SUBS] = {0};
        int iv[MOEC_GB_MAX_SUBS] = {0};
        for (int j = 0; j < ns; j++) {
            const float *xs = x + j * S, *is = imp ? imp + j * S : NULL;
            sv[j] = fit_sym(xs, is, S, lo, hi, NULL);
            Ws[j] = level_weight(xs, is, S, sv[j], lo, hi) + 1e-30f;
        }
        p->d = quant_scales_signed(sv, Ws, ns, Slo, Shi, iv);
        for (int j = 0; j < ns; j++)
            p->sc[j] = (uint8_t)(t == MOEC_GB_Q3_K ? iv[j] + 32 : (int8_t)iv[j]);
        break;
    }
    default:
        break;
    }
}

void moec_gblock_quantize(moec_gblock t, const float *x, const float *imp, void *dst, int64_t n)
{
    const moec_gblock_traits *tr = moec_gblock_info(t);
    if (!tr)
        return;
    uint8_t *b = dst;
    moec_gblock_params p;
    moec_gblock_grid g;
    uint8_t q[MOEC_GB_MAX_BLOCK];
    for (int64_t i = 0; i + tr->block <= n; i += tr->block, b += tr->bytes) {
        moec_gblock_choose(t, x + i, imp ? imp + i : NULL, &p);
        moec_gblock_grid_of(t, &p, &g);
        for (int e = 0; e < tr->block; e++)
            q[e] = (uint8_t)moec_gblock_code(&g, e / tr->sub, x[i + e]);
        moec_gblock_pack(t, &p, q, b);
    }
}
