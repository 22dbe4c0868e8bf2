/* test_ggml_blocks.c - llama.cpp block types (lib/core/ggml_blocks.c) and
 * the group-wise carry (lib/core/ggml_carry.c), against bytes and values
 * worked out by hand from ggml's block layouts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "core/dtype.h"
#include "core/ggml_blocks.h"
#include "core/ggml_carry.h"
#include "core/qformat.h"

static const uint16_t ONE = 0x3c00, HALF = 0x3800, QUARTER = 0x3400; /* F16 1.0, 0.5, 0.25 */

static void test_traits(void **state)
{
    (void)state;
    /* ggml's block sizes: 2 + 16, 2·2 + 16, 2 + 4 + 16, 2·2 + 4 + 16, 2 + 32, 16 + 64 + 2·2,
     * 32 + 64 + 12 + 2, 2·2 + 12 + 128, 2·2 + 12 + 32 + 128, 128 + 64 + 16 + 2 */
    static const struct {
        moec_gblock t;
        const char *name;
        int ggml, block, bytes;
    } want[] = {{MOEC_GB_Q4_0, "Q4_0", 2, 32, 18},   {MOEC_GB_Q4_1, "Q4_1", 3, 32, 20},
                {MOEC_GB_Q5_0, "Q5_0", 6, 32, 22},   {MOEC_GB_Q5_1, "Q5_1", 7, 32, 24},
                {MOEC_GB_Q8_0, "Q8_0", 8, 32, 34},   {MOEC_GB_Q2_K, "Q2_K", 10, 256, 84},
                {MOEC_GB_Q3_K, "Q3_K", 11, 256, 110}, {MOEC_GB_Q4_K, "Q4_K", 12, 256, 144},
                {MOEC_GB_Q5_K, "Q5_K", 13, 256, 176}, {MOEC_GB_Q6_K, "Q6_K", 14, 256, 210}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const moec_gblock_traits *tr = moec_gblock_info(want[i].t);
        assert_string_equal(tr->name, want[i].name);
        assert_int_equal(tr->ggml_type, want[i].ggml);
        assert_int_equal(tr->block, want[i].block);
        assert_int_equal(tr->bytes, want[i].bytes);
        assert_int_equal(moec_gblock_from_ggml(want[i].ggml), want[i].t);
        assert_int_equal(moec_gblock_row_bytes(want[i].t, 4096), 4096 / want[i].block * want[i].bytes);
    }
    assert_int_equal(moec_gblock_from_name("q4_k"), MOEC_GB_Q4_K);
    assert_int_equal(moec_gblock_from_name("iq4_xs"), MOEC_GB_NONE);
    assert_int_equal(moec_gblock_from_ggml(0), MOEC_GB_NONE);
    assert_int_equal(moec_gblock_row_bytes(MOEC_GB_Q4_K, 128), 0); /* not a multiple of 256 */
    assert_null(moec_gblock_info(MOEC_GB_NONE));
}

/* Q4_0, d = 1, codes q[i] = i % 16: byte 0-1 = d (00 3c), then qs[j] =
 * q[j] | q[j+16] << 4 = j | j << 4 = 0x00, 0x11, ..., 0xff; element i decodes
 * to (q - 8)·1. */
static void test_q4_0_layout(void **state)
{
    (void)state;
    moec_gblock_params p = {.d = ONE};
    uint8_t q[32], b[18], back[32];
    for (int i = 0; i < 32; i++)
        q[i] = (uint8_t)(i % 16);
    moec_gblock_pack(MOEC_GB_Q4_0, &p, q, b);
    assert_int_equal(b[0], 0x00);
    assert_int_equal(b[1], 0x3c);
    for (int j = 0; j < 16; j++)
        assert_int_equal(b[2 + j], j | j << 4);
    float y[32];
    moec_gblock_dequant(MOEC_GB_Q4_0, b, y, 32);
    for (int i = 0; i < 32; i++)
        assert_true(y[i] == (float)(i % 16 - 8));
    moec_gblock_params p2;
    moec_gblock_unpack(MOEC_GB_Q4_0, b, &p2, back);
    assert_memory_equal(q, back, 32);
    assert_int_equal(p2.d, ONE);
}

/* Q5_1, d = 0.5, m = -1: code i (0..31) at element i. qh (u32 LE) holds bit 4
 * of element i at bit i: elements 16..31 have it, so qh = 0xffff0000 =
 * bytes 00 00 ff ff; qs[j] = (j & 15) | ((j + 16) & 15) << 4 = j | j << 4.
 * Element i decodes to 0.5·i - 1. */
static void test_q5_1_layout(void **state)
{
    (void)state;
    moec_gblock_params p = {.d = HALF, .m = 0xbc00 /* -1.0 */};
    uint8_t q[32], b[24];
    for (int i = 0; i < 32; i++)
        q[i] = (uint8_t)i;
    moec_gblock_pack(MOEC_GB_Q5_1, &p, q, b);
    const uint8_t head[8] = {0x00, 0x38, 0x00, 0xbc, 0x00, 0x00, 0xff, 0xff};
    assert_memory_equal(b, head, 8);
    for (int j = 0; j < 16; j++)
        assert_int_equal(b[8 + j], j | j << 4);
    float y[32];
    moec_gblock_dequant(MOEC_GB_Q5_1, b, y, 32);
    for (int i = 0; i < 32; i++)
        assert_true(y[i] == 0.5f * (float)i - 1.0f);
}

/* Q8_0, d = 0.25: code q stored as the int8 q - 128; codes 0, 128, 255 ->
 * bytes 0x80, 0x00, 0x7f, values -32, 0, 31.75. */
static void test_q8_0_layout(void **state)
{
    (void)state;
    moec_gblock_params p = {.d = QUARTER};
    uint8_t q[32] = {0}, b[34];
    for (int i = 0; i < 32; i++)
        q[i] = 128;
    q[0] = 0, q[31] = 255;
    moec_gblock_pack(MOEC_GB_Q8_0, &p, q, b);
    assert_int_equal(b[0], 0x00);
    assert_int_equal(b[1], 0x34);
    assert_int_equal(b[2], 0x80);
    assert_int_equal(b[3], 0x00);
    assert_int_equal(b[33], 0x7f);
    float y[32];
    moec_gblock_dequant(MOEC_GB_Q8_0, b, y, 32);
    assert_true(y[0] == -32.0f && y[1] == 0.0f && y[31] == 31.75f);
}

/* One code set at a time, where ggml's dequantize_row_* puts it:
 *  Q2_K element 200: 128·1 + 32·2 + 8 -> qs[32 + 8] bits 4-5 (16 + 200 % 32 ... )
 *  Q3_K element 200: low bits in qs[32 + 8] at bit 4, third bit in hmask[8] at bit 6
 *  Q4_K element 100: 64·1 + 36 -> high nibble of qs[32 + 4]
 *  Q5_K element 100: the same nibble, fifth bit in qh[4] at bit 3
 *  Q6_K element 200: h = 1, k = 2, l = 8 -> high nibble of ql[64 + 8], bits 4-5 of qh[32 + 8]
 * (each byte offset counted from the block's start, with the fields' offsets
 * Q2_K qs 16; Q3_K hmask 0, qs 32; Q4_K qs 16; Q5_K qh 16, qs 48; Q6_K ql 0, qh 128). */
static void test_kquant_code_positions(void **state)
{
    (void)state;
    moec_gblock_params p = {0};
    uint8_t q[256], b[210];
    struct {
        moec_gblock t;
        int elem, code;
        int byte;
        uint8_t value;
        int byte2;
        uint8_t value2;
    } cases[] = {
        {MOEC_GB_Q2_K, 200, 3, 16 + 40, 0x30, -1, 0},
        {MOEC_GB_Q3_K, 200, 7, 32 + 40, 0x30, 8, 0x40},
        {MOEC_GB_Q4_K, 100, 15, 16 + 36, 0xf0, -1, 0},
        {MOEC_GB_Q5_K, 100, 31, 48 + 36, 0xf0, 16 + 4, 0x08},
        {MOEC_GB_Q6_K, 200, 63, 64 + 8, 0xf0, 128 + 40, 0x30},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memset(q, 0, sizeof q);
        q[cases[i].elem] = (uint8_t)cases[i].code;
        const moec_gblock_traits *tr = moec_gblock_info(cases[i].t);
        memset(b, 0xaa, sizeof b);
        moec_gblock_pack(cases[i].t, &p, q, b);
        int nonzero = 0;
        for (int k = 0; k < tr->bytes; k++)
            nonzero += b[k] != 0;
        assert_int_equal(b[cases[i].byte], cases[i].value);
        if (cases[i].byte2 >= 0)
            assert_int_equal(b[cases[i].byte2], cases[i].value2);
        assert_int_equal(nonzero, cases[i].byte2 >= 0 ? 2 : 1);
        moec_gblock_params p2;
        uint8_t back[256];
        moec_gblock_unpack(cases[i].t, b, &p2, back);
        assert_memory_equal(q, back, 256);
    }
}

/* Sub-block scales and mins: Q4_K with sc[j] = j + 1, mn[j] = 50 + j (six
 * bits each; j >= 4 split over the high bits of bytes j-4 / j and byte j+4),
 * d = 1, dmin = 0.5, all codes 2: sub-block j (32 weights) decodes to
 * 1·(j+1)·2 - 0.5·(50+j). */
static void test_q4_k_scales(void **state)
{
    (void)state;
    moec_gblock_params p = {.d = ONE, .m = HALF};
    for (int j = 0; j < 8; j++) {
        p.sc[j] = (uint8_t)(j + 1);
        p.mn[j] = (uint8_t)(50 + j);
    }
    uint8_t q[256], b[144];
    memset(q, 2, sizeof q);
    moec_gblock_pack(MOEC_GB_Q4_K, &p, q, b);
    /* byte 4 + 0 = scales[0] = sc0 | (sc4 >> 4) << 6 = 1; byte 4 + 4 = mn0 | (mn4 >> 4) << 6 = 50 | 3 << 6
     * (mn4 = 54 = 0x36); byte 4 + 8 = (sc4 & 15) | (mn4 & 15) << 4 = 5 | 6 << 4 */
    assert_int_equal(b[4], 1);
    assert_int_equal(b[8], 50 | 3 << 6);
    assert_int_equal(b[12], 5 | 6 << 4);
    float y[256];
    moec_gblock_dequant(MOEC_GB_Q4_K, b, y, 256);
    for (int e = 0; e < 256; e++) {
        const int j = e / 32;
        assert_true(y[e] == (float)(j + 1) * 2.0f - 0.5f * (float)(50 + j));
    }
}

/* Q3_K: 16 six-bit scales stored biased by 32, sc[j] = j·4 (0..60), so the
 * applied scales are d·(4j - 32); codes 7 decode to (4j - 32)·(7 - 4). The
 * low nibble of scale 9 (36 = 0x24: nibble 4, top bits 2) sits in the high
 * nibble of byte 96 + 1, its top bits in byte 96 + 8 + 1 at bits 4-5. */
static void test_q3_k_scales(void **state)
{
    (void)state;
    moec_gblock_params p = {.d = ONE};
    for (int j = 0; j < 16; j++)
        p.sc[j] = (uint8_t)(4 * j);
    uint8_t q[256], b[110];
    memset(q, 7, sizeof q);
    moec_gblock_pack(MOEC_GB_Q3_K, &p, q, b);
    assert_int_equal(b[97] >> 4, 4);
    assert_int_equal((b[105] >> 4) & 3, 2);
    float y[256];
    moec_gblock_dequant(MOEC_GB_Q3_K, b, y, 256);
    for (int e = 0; e < 256; e++)
        assert_true(y[e] == (float)(4 * (e / 16) - 32) * 3.0f);
}

/* Weights that lie exactly on a grid the type can store: the encoder must
 * find that grid (zero error) and the stored parameters. Sub-block j of a
 * k-quant gets scale d·sc_j (and min dmin·mn_j) with the largest sc (mn) at
 * the end of the stored range, codes cycling through every level. */
static void exact_grid(moec_gblock t)
{
    const moec_gblock_traits *tr = moec_gblock_info(t);
    const int n = tr->block, S = tr->sub, maxq = (1 << tr->bits) - 1;
    float x[256], y[256];
    moec_gblock_params want = {0};
    const float d = 0.0078125f, dmin = 0.015625f; /* 2^-7, 2^-6: F16 exact */
    want.d = moec_f32_to_f16(d);
    for (int j = 0; j < n / S; j++) {
        int sc, mn = 0;
        switch (t) {
        case MOEC_GB_Q2_K: sc = j == 3 ? 15 : 1 + j % 14, mn = j == 5 ? 15 : j % 15; break;
        case MOEC_GB_Q4_K:
        case MOEC_GB_Q5_K: sc = j == 2 ? 63 : 20 + j, mn = j == 6 ? 63 : 3 * j; break;
        case MOEC_GB_Q3_K: sc = j == 4 ? 0 : 10 + 3 * j; break;      /* stored 0 = scale -32 */
        case MOEC_GB_Q6_K: sc = j == 7 ? 128 : 1 + 9 * j; break;     /* int8 -128 */
        default: sc = 0; break;
        }
        want.sc[j] = (uint8_t)sc;
        want.mn[j] = (uint8_t)mn;
        for (int i = 0; i < S; i++) {
            /* code 0 (the end of the range) in every sub-block, the rest spread */
            const int qv = i == 0 ? 0 : (i * 7 + j) % (maxq + 1);
            float a, b = 0.0f;
            if (t == MOEC_GB_Q3_K)
                a = d * (float)(sc - 32);
            else if (t == MOEC_GB_Q6_K)
                a = d * (float)(int8_t)sc;
            else
                a = d * (float)sc, b = dmin * (float)mn;
            x[j * S + i] = a * (float)(qv - tr->zero) - b;
        }
    }
    if (tr->has_min)
        want.m = moec_f32_to_f16(dmin);
    uint8_t blk[210];
    moec_gblock_quantize(t, x, NULL, blk, n);
    moec_gblock_dequant(t, blk, y, n);
    for (int i = 0; i < n; i++)
        assert_true(y[i] == x[i]);
    moec_gblock_params got;
    uint8_t q[256];
    moec_gblock_unpack(t, blk, &got, q);
    assert_int_equal(got.d, want.d);
    assert_int_equal(got.m, want.m);
    assert_memory_equal(got.sc, want.sc, (size_t)(n / S));
    if (tr->has_min)
        assert_memory_equal(got.mn, want.mn, (size_t)(n / S));
}

static void test_encoders_exact(void **state)
{
    (void)state;
    exact_grid(MOEC_GB_Q2_K);
    exact_grid(MOEC_GB_Q3_K);
    exact_grid(MOEC_GB_Q4_K);
    exact_grid(MOEC_GB_Q5_K);
    exact_grid(MOEC_GB_Q6_K);
    /* 32-blocks: Q4_0 with d = -0.5 (the most negative weight maps to code
     * 15, the largest-magnitude one, +4, to 0: d = 4 / -8) */
    float x[32], y[32];
    for (int i = 0; i < 32; i++)
        x[i] = -0.5f * (float)(i % 16 - 8);
    uint8_t b[34];
    moec_gblock_quantize(MOEC_GB_Q4_0, x, NULL, b, 32);
    moec_gblock_dequant(MOEC_GB_Q4_0, b, y, 32);
    assert_memory_equal(x, y, sizeof x);
    assert_int_equal(b[0] | b[1] << 8, 0xb800); /* F16 -0.5 */
    /* Q8_0 at d = 1/64: x = k/64 for k = -128..127 in steps of 8 */
    for (int i = 0; i < 32; i++)
        x[i] = (float)(8 * i - 128) / 64.0f;
    moec_gblock_quantize(MOEC_GB_Q8_0, x, NULL, b, 32);
    moec_gblock_dequant(MOEC_GB_Q8_0, b, y, 32);
    assert_memory_equal(x, y, sizeof x);
    /* Q4_1: 0.25·q + 3 */
    for (int i = 0; i < 32; i++)
        x[i] = 0.25f * (float)(i % 16) + 3.0f;
    moec_gblock_quantize(MOEC_GB_Q4_1, x, NULL, b, 32);
    moec_gblock_dequant(MOEC_GB_Q4_1, b, y, 32);
    assert_memory_equal(x, y, sizeof x);
    assert_int_equal(b[0] | b[1] << 8, 0x3400); /* d 0.25 */
    assert_int_equal(b[2] | b[3] << 8, 0x4200); /* m 3.0 */
}

/* On uniform random weights each encoder's relative RMS error is about what
 * its bits allow (a uniform grid's step / sqrt(12), plus the scales' own
 * rounding), and importance weights lower the importance-weighted error. */
static void test_encoders_random(void **state)
{
    (void)state;
    static const struct {
        moec_gblock t;
        double max_rel;
    } bound[] = {{MOEC_GB_Q8_0, 0.006}, {MOEC_GB_Q6_K, 0.022},  {MOEC_GB_Q5_K, 0.04}, {MOEC_GB_Q5_1, 0.04},
                 {MOEC_GB_Q5_0, 0.05},  {MOEC_GB_Q4_K, 0.08},  {MOEC_GB_Q4_1, 0.08}, {MOEC_GB_Q4_0, 0.1},
                 {MOEC_GB_Q3_K, 0.16},  {MOEC_GB_Q2_K, 0.36}};
    enum { N = 4096 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *imp = malloc(N * sizeof *imp);
    uint8_t *b = malloc(N * 2);
    assert_non_null(x && y && imp && b);
    for (int i = 0; i < N; i++) {
        x[i] = tu_frand();
        imp[i] = i % 2 ? 1.0f : 0.01f;
    }
    for (size_t k = 0; k < sizeof bound / sizeof *bound; k++) {
        double e = 0, s = 0, obj = 0, obj_imp = 0;
        moec_gblock_quantize(bound[k].t, x, NULL, b, N);
        moec_gblock_dequant(bound[k].t, b, y, N);
        for (int i = 0; i < N; i++) {
            e += (x[i] - y[i]) * (double)(x[i] - y[i]);
            s += x[i] * (double)x[i];
            obj += imp[i] * (x[i] - y[i]) * (double)(x[i] - y[i]);
        }
        assert_true(sqrt(e / s) < bound[k].max_rel);
        moec_gblock_quantize(bound[k].t, x, imp, b, N);
        moec_gblock_dequant(bound[k].t, b, y, N);
        for (int i = 0; i < N; i++)
            obj_imp += imp[i] * (x[i] - y[i]) * (double)(x[i] - y[i]);
        assert_true(obj_imp < obj); /* the weighted error falls when the weights are given */
    }
    free(x), free(y), free(imp), free(b);
}

/* Group-wise codes carried bit for bit. 4-bit symmetric groups of 32 are
 * Q4_0: same codes, d = s. 4-bit with zeros are Q4_1 with m = -s·z: for s = 1
 * and z = 5, m = -5 exactly; for s = 1 + 2^-10 (F16 0x3c01) and z = 3, -s·z =
 * -(3 + 3·2^-10) needs 12 significant bits, so it rounds to -(3 + 2^-9)
 * (nearest even in F16's 2^-9 steps at 3) and the carry reports an error of
 * 2^-10 / (1 + 2^-10) of s. */
static void test_carry(void **state)
{
    (void)state;
    moec_qmatrix m;
    assert_int_equal(moec_qmatrix_alloc(&m, 1, 64, 4, 32, true, NULL), MOEC_OK);
    uint8_t codes[64], zeros[2] = {5, 3};
    uint16_t sc[2] = {ONE, 0x3c01};
    for (int i = 0; i < 64; i++)
        codes[i] = (uint8_t)((i * 5) % 16);
    moec_qmatrix_set_row(&m, 0, codes, sc, NULL);
    assert_int_equal(moec_qformat_carry_type(&m.f), MOEC_GB_Q4_0);
    uint8_t b[48];
    moec_carry_stats cs = {0};
    moec_qformat_carry_row(&m.f, 0, MOEC_GB_Q4_0, b, &cs);
    moec_gblock_params p;
    uint8_t q[32];
    moec_gblock_unpack(MOEC_GB_Q4_0, b + 18, &p, q);
    assert_memory_equal(q, codes + 32, 32);
    assert_int_equal(p.d, 0x3c01);
    float want[64], got[64];
    moec_qformat_dequant_row(&m.f, 0, want);
    moec_gblock_dequant(MOEC_GB_Q4_0, b, got, 64);
    assert_memory_equal(want, got, sizeof want); /* bit for bit */
    assert_int_equal(cs.groups, 2);
    moec_qmatrix_free(&m);

    assert_int_equal(moec_qmatrix_alloc(&m, 1, 64, 4, 32, false, NULL), MOEC_OK);
    moec_qmatrix_set_row(&m, 0, codes, sc, zeros);
    assert_int_equal(moec_qformat_carry_type(&m.f), MOEC_GB_Q4_1);
    memset(&cs, 0, sizeof cs);
    moec_qformat_carry_row(&m.f, 0, MOEC_GB_Q4_1, b, &cs);
    moec_gblock_unpack(MOEC_GB_Q4_1, b, &p, q);
    assert_memory_equal(q, codes, 32);
    assert_int_equal(p.m, 0xc500); /* -5.0 */
    moec_gblock_unpack(MOEC_GB_Q4_1, b + 20, &p, q);
    assert_true(moec_f16_to_f32(p.m) == -(3.0f + 1.0f / 256.0f));
    assert_int_equal(cs.groups, 2);
    assert_int_equal(cs.rounded, 1);
    assert_true(fabs(cs.max_err - (1.0 / 1024.0) / (1.0 + 1.0 / 1024.0)) < 1e-12);
    /* the exact group decodes bit for bit */
    moec_qformat_dequant_row(&m.f, 0, want);
    moec_gblock_dequant(MOEC_GB_Q4_1, b, got, 64);
    assert_memory_equal(want, got, 32 * sizeof *want);
    moec_qmatrix_free(&m);

    /* 3-bit or groups of 64 have no llama.cpp type */
    assert_int_equal(moec_qmatrix_alloc(&m, 1, 64, 4, 64, true, NULL), MOEC_OK);
    assert_int_equal(moec_qformat_carry_type(&m.f), MOEC_GB_NONE);
    moec_qmatrix_free(&m);
    assert_int_equal(moec_qmatrix_alloc(&m, 1, 64, 3, 32, true, NULL), MOEC_OK);
    assert_int_equal(moec_qformat_carry_type(&m.f), MOEC_GB_NONE);
    moec_qmatrix_free(&m);
}

/* A block-typed qformat validates, dequantizes through the rows and refuses
 * a non-finite scale. */
static void test_qformat_blocks(void **state)
{
    (void)state;
    moec_qmatrix m;
    assert_int_equal(moec_qmatrix_alloc_blocks(&m, 3, 512, MOEC_GB_Q6_K, NULL), MOEC_OK);
    assert_int_equal(m.f.codes_bytes, 3 * 2 * 210);
    float x[512], y[512];
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 512; i++)
            x[i] = tu_frand();
        moec_gblock_quantize(MOEC_GB_Q6_K, x, NULL, m.codes + (size_t)r * 420, 512);
    }
    assert_int_equal(moec_qformat_validate(&m.f, "t", NULL), MOEC_OK);
    moec_qformat_dequant_row(&m.f, 2, y);
    moec_gblock_dequant(MOEC_GB_Q6_K, m.codes + 840, x, 512);
    assert_memory_equal(x, y, sizeof x);
    m.codes[420 + 208] = 0x00, m.codes[420 + 209] = 0x7c; /* row 1, block 0: d = +inf */
    moec_err err;
    assert_int_equal(moec_qformat_validate(&m.f, "t", &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "block 2 (row 1)"));
    moec_qmatrix_free(&m);
    assert_int_equal(moec_qmatrix_alloc_blocks(&m, 3, 100, MOEC_GB_Q4_K, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "multiple of 256"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),          cmocka_unit_test(test_q4_0_layout),
        cmocka_unit_test(test_q5_1_layout),     cmocka_unit_test(test_q8_0_layout),
        cmocka_unit_test(test_kquant_code_positions), cmocka_unit_test(test_q4_k_scales),
        cmocka_unit_test(test_q3_k_scales),     cmocka_unit_test(test_encoders_exact),
        cmocka_unit_test(test_encoders_random), cmocka_unit_test(test_carry),
        cmocka_unit_test(test_qformat_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
