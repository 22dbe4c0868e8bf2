#include "core/qformat.h"

#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

/* Unpack/dequantize in pieces of this many codes so the scratch fits on the stack. */
#define CHUNK 256

static size_t mul_or_zero(size_t a, size_t b)
{
    return (b != 0 && a > SIZE_MAX / b) ? 0 : a * b;
}

moec_status moec_qformat_sizes(int64_t rows, int64_t cols, int bits, int group,
                               bool symmetric, size_t *codes_bytes,
                               size_t *scales_bytes, size_t *zeros_bytes,
                               moec_err *err)
{
    if (bits < MOEC_QBITS_MIN || bits > MOEC_QBITS_MAX)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "quantization bits %d outside %d..%d", bits,
                            MOEC_QBITS_MIN, MOEC_QBITS_MAX);
    if (group < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "quantization group size %d < 1",
                            group);
    /* cols*bits must not overflow int64 in the packing arithmetic. */
    if (rows < 1 || cols < 1 || cols > (INT64_C(1) << 56) || rows > (INT64_C(1) << 56))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "quantized matrix shape [%lld][%lld] out of range",
                            (long long)rows, (long long)cols);
    int64_t ngroups = (cols + group - 1) / group;
    size_t cb = mul_or_zero((size_t)rows, moec_qformat_packed_bytes(cols, bits));
    size_t sb = mul_or_zero(mul_or_zero((size_t)rows, (size_t)ngroups), 2);
    size_t zb = symmetric ? 0
                          : mul_or_zero((size_t)rows,
                                        moec_qformat_packed_bytes(ngroups, bits));
    if (cb == 0 || sb == 0 || (!symmetric && zb == 0))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "quantized matrix [%lld][%lld] too large to address",
                            (long long)rows, (long long)cols);
    if (codes_bytes)
        *codes_bytes = cb;
    if (scales_bytes)
        *scales_bytes = sb;
    if (zeros_bytes)
        *zeros_bytes = zb;
    return MOEC_OK;
}

moec_status moec_qformat_block_bytes(int64_t rows, int64_t cols, moec_gblock t, size_t *codes_bytes,
                                     moec_err *err)
{
    const moec_gblock_traits *tr = moec_gblock_info(t);
    if (!tr)
        return moec_err_set(err, MOEC_ERR_ARG, "unknown llama.cpp block type %d", (int)t);
    if (rows < 1 || cols < 1 || cols > (INT64_C(1) << 56) || rows > (INT64_C(1) << 56))
        return moec_err_set(err, MOEC_ERR_ARG, "quantized matrix shape [%lld][%lld] out of range", (long long)rows,
                            (long long)cols);
    if (cols % tr->block)
        return moec_err_set(err, MOEC_ERR_ARG, "%s needs rows of a multiple of %d weights, found %lld", tr->name,
                            tr->block, (long long)cols);
    size_t b = mul_or_zero((size_t)rows, moec_gblock_row_bytes(t, cols));
    if (b == 0)
        return moec_err_set(err, MOEC_ERR_ARG, "quantized matrix [%lld][%lld] too large to address",
                            (long long)rows, (long long)cols);
    *codes_bytes = b;
    return MOEC_OK;
}

static moec_status validate_blocks(const moec_qformat *f, const char *name, moec_err *err)
{
    size_t cb = 0;
    moec_status st = moec_qformat_block_bytes(f->rows, f->cols, f->gblock, &cb, err);
    if (st != MOEC_OK)
        return moec_err_prefix(err, "%s", name);
    const moec_gblock_traits *tr = moec_gblock_info(f->gblock);
    if (f->codes_bytes != cb || f->scales_bytes || f->zeros_bytes || f->scales || f->zeros)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: %s blocks of [%lld][%lld] need %zu bytes and no scales or zeros, found "
                            "%zu/%zu/%zu",
                            name, tr->name, (long long)f->rows, (long long)f->cols, cb, f->codes_bytes,
                            f->scales_bytes, f->zeros_bytes);
    if (f->bits != tr->bits || f->group != tr->block || f->symmetric != !tr->has_min)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: %s blocks described as %d-bit groups of %d", name,
                            tr->name, f->bits, f->group);
    if (!f->codes)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: missing block buffer", name);
    int64_t bad = 0;
    if (!moec_gblock_finite(f->gblock, f->codes, (int64_t)(cb / (size_t)tr->bytes), &bad))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: %s block %lld (row %lld) has a scale that is not finite",
                            name, tr->name, (long long)bad, (long long)(bad / (f->cols / tr->block)));
    return MOEC_OK;
}

moec_status moec_qformat_validate(const moec_qformat *f, const char *name,
                                  moec_err *err)
{
    if (!name)
        name = "quantized tensor";
    if (!f)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: no format", name);
    if (f->gblock != MOEC_GB_NONE)
        return validate_blocks(f, name, err);
    size_t cb = 0, sb = 0, zb = 0;
    moec_status st = moec_qformat_sizes(f->rows, f->cols, f->bits, f->group,
                                        f->symmetric, &cb, &sb, &zb, err);
    if (st != MOEC_OK)
        return moec_err_prefix(err, "%s", name);
    if (f->codes_bytes != cb || f->scales_bytes != sb || f->zeros_bytes != zb)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: buffer sizes codes/scales/zeros %zu/%zu/%zu, "
                            "expected %zu/%zu/%zu for [%lld][%lld] %d-bit group %d %s",
                            name, f->codes_bytes, f->scales_bytes, f->zeros_bytes,
                            cb, sb, zb, (long long)f->rows, (long long)f->cols,
                            f->bits, f->group, f->symmetric ? "symmetric" : "asymmetric");
    if (!f->codes || !f->scales || (!f->symmetric && !f->zeros))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: missing %s buffer", name,
                            !f->codes ? "codes" : !f->scales ? "scales" : "zeros");
    if (f->symmetric && f->zeros)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: symmetric format carries a zeros buffer", name);
    size_t nscales = sb / 2;
    for (size_t i = 0; i < nscales; i++)
        if ((f->scales[i] & 0x7c00u) == 0x7c00u)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: scale %zu (row %lld, group %lld) is not finite",
                                name, i, (long long)(i / (size_t)moec_qformat_ngroups(f)),
                                (long long)(i % (size_t)moec_qformat_ngroups(f)));
    return MOEC_OK;
}

void moec_qpack(uint8_t *dst, const uint8_t *codes, int64_t n, int bits)
{
    const uint32_t mask = (1u << bits) - 1u;
    uint32_t acc = 0;
    int nb = 0;
    size_t o = 0;
    for (int64_t i = 0; i < n; i++) {
        acc |= (uint32_t)(codes[i] & mask) << nb;
        nb += bits;
        while (nb >= 8) {
            dst[o++] = (uint8_t)acc;
            acc >>= 8;
            nb -= 8;
        }
    }
    if (nb > 0)
        dst[o] = (uint8_t)acc;
}

void moec_qunpack(uint8_t *codes, const uint8_t *src, int64_t first, int64_t n,
                  int bits)
{
    if (n <= 0)
        return;
    if (bits == 8) {
        memcpy(codes, src + first, (size_t)n);
        return;
    }
    const uint32_t mask = (1u << bits) - 1u;
    int64_t bit = first * bits;
    const uint8_t *p = src + (bit >> 3);
    int skip = (int)(bit & 7);
    uint32_t acc = (uint32_t)(*p++) >> skip;
    int nb = 8 - skip;
    for (int64_t i = 0; i < n; i++) {
        if (nb < bits) {
            acc |= (uint32_t)(*p++) << nb;
            nb += 8;
        }
        codes[i] = (uint8_t)(acc & mask);
        acc >>= bits;
        nb -= bits;
    }
}

float moec_qformat_scale(const moec_qformat *f, int64_t r, int64_t g)
{
    return moec_f16_to_f32(f->scales[r * moec_qformat_ngroups(f) + g]);
}

void moec_qformat_zeros(const moec_qformat *f, int64_t r, int64_t g0, int64_t n, uint8_t *out)
{
    if (f->symmetric) {
        memset(out, 1 << (f->bits - 1), (size_t)n);
        return;
    }
    const size_t stride = moec_qformat_packed_bytes(moec_qformat_ngroups(f), f->bits);
    moec_qunpack(out, f->zeros + (size_t)r * stride, g0, n, f->bits);
}

int moec_qformat_zero(const moec_qformat *f, int64_t r, int64_t g)
{
    uint8_t z;
    moec_qformat_zeros(f, r, g, 1, &z);
    return z;
}

void moec_qformat_dequant_row(const moec_qformat *f, int64_t r, float *out)
{
    if (f->gblock != MOEC_GB_NONE) {
        const size_t rb = moec_gblock_row_bytes(f->gblock, f->cols);
        moec_gblock_dequant(f->gblock, f->codes + (size_t)r * rb, out, f->cols);
        return;
    }
    const int64_t ng = moec_qformat_ngroups(f);
    const size_t stride = moec_qformat_packed_bytes(f->cols, f->bits);
    const uint8_t *row = f->codes + (size_t)r * stride;
    uint8_t zs[CHUNK];
    uint8_t q[CHUNK];
    for (int64_t g0 = 0; g0 < ng; g0 += CHUNK) {
        int64_t gn = ng - g0 < CHUNK ? ng - g0 : CHUNK;
        moec_qformat_zeros(f, r, g0, gn, zs);
        for (int64_t gi = 0; gi < gn; gi++) {
            int64_t g = g0 + gi;
            float s = moec_f16_to_f32(f->scales[r * ng + g]);
            int z = zs[gi];
            int64_t c0 = g * f->group;
            int64_t c1 = c0 + f->group < f->cols ? c0 + f->group : f->cols;
            for (int64_t c = c0; c < c1; c += CHUNK) {
                int64_t n = c1 - c < CHUNK ? c1 - c : CHUNK;
                moec_qunpack(q, row, c, n, f->bits);
                for (int64_t i = 0; i < n; i++)
                    out[c + i] = s * (float)((int)q[i] - z);
            }
        }
    }
}

void moec_qformat_dequant_rows(const moec_qformat *f, int64_t r0, int64_t r1,
                               float *out)
{
    for (int64_t r = r0; r < r1; r++)
        moec_qformat_dequant_row(f, r, out + (size_t)(r - r0) * (size_t)f->cols);
}

double moec_qformat_bpw(const moec_qformat *f)
{
    double bytes = (double)f->codes_bytes + (double)f->scales_bytes + (double)f->zeros_bytes;
    return 8.0 * bytes / ((double)f->rows * (double)f->cols);
}

moec_tensor moec_qformat_tensor(const moec_qformat *f)
{
    moec_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = MOEC_DT_QUANT;
    t.ndim = 2;
    t.shape[0] = f->rows;
    t.shape[1] = f->cols;
    t.data = f->codes;
    t.nbytes = f->codes_bytes;
    t.q = f;
    return t;
}

moec_status moec_qmatrix_alloc(moec_qmatrix *m, int64_t rows, int64_t cols,
                               int bits, int group, bool symmetric,
                               moec_err *err)
{
    memset(m, 0, sizeof *m);
    size_t cb = 0, sb = 0, zb = 0;
    moec_status st = moec_qformat_sizes(rows, cols, bits, group, symmetric, &cb,
                                        &sb, &zb, err);
    if (st != MOEC_OK)
        return st;
    m->codes = calloc(cb, 1);
    m->scales = calloc(sb / 2, 2);
    m->zeros = symmetric ? NULL : calloc(zb, 1);
    if (!m->codes || !m->scales || (!symmetric && !m->zeros)) {
        moec_qmatrix_free(m);
        return moec_err_set(err, MOEC_ERR_NOMEM,
                            "out of memory for a [%lld][%lld] %d-bit quantized matrix",
                            (long long)rows, (long long)cols, bits);
    }
    m->f.bits = bits;
    m->f.group = group;
    m->f.symmetric = symmetric;
    m->f.rows = rows;
    m->f.cols = cols;
    m->f.codes = m->codes;
    m->f.scales = m->scales;
    m->f.zeros = m->zeros;
    m->f.codes_bytes = cb;
    m->f.scales_bytes = sb;
    m->f.zeros_bytes = zb;
    return MOEC_OK;
}

moec_status moec_qmatrix_alloc_blocks(moec_qmatrix *m, int64_t rows, int64_t cols, moec_gblock t,
                                      moec_err *err)
{
    memset(m, 0, sizeof *m);
    size_t cb = 0;
    moec_status st = moec_qformat_block_bytes(rows, cols, t, &cb, err);
    if (st != MOEC_OK)
        return st;
    if (!(m->codes = calloc(cb, 1)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for a [%lld][%lld] %s matrix", (long long)rows,
                            (long long)cols, moec_gblock_info(t)->name);
    const moec_gblock_traits *tr = moec_gblock_info(t);
    m->f.gblock = t;
    m->f.bits = tr->bits;
    m->f.group = tr->block;
    m->f.symmetric = !tr->has_min;
    m->f.rows = rows;
    m->f.cols = cols;
    m->f.codes = m->codes;
    m->f.codes_bytes = cb;
    return MOEC_OK;
}

void moec_qmatrix_free(moec_qmatrix *m)
{
    if (!m)
        return;
    free(m->codes);
    free(m->scales);
    free(m->zeros);
    memset(m, 0, sizeof *m);
}

void moec_qmatrix_set_row(moec_qmatrix *m, int64_t r, const uint8_t *codes,
                          const uint16_t *scales, const uint8_t *zeros)
{
    const moec_qformat *f = &m->f;
    const int64_t ng = moec_qformat_ngroups(f);
    moec_qpack(m->codes + (size_t)r * moec_qformat_packed_bytes(f->cols, f->bits),
               codes, f->cols, f->bits);
    memcpy(m->scales + (size_t)r * (size_t)ng, scales, (size_t)ng * sizeof *scales);
    if (!f->symmetric)
        moec_qpack(m->zeros + (size_t)r * moec_qformat_packed_bytes(ng, f->bits),
                   zeros, ng, f->bits);
}
