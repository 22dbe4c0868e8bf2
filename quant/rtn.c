#include "quant/rtn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

moec_status moec_quant_opts_check(const moec_quant_opts *o, const char *what,
                                  moec_err *err)
{
    if (!what)
        what = "quantization";
    if (!o)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: no options", what);
    if (o->bits < MOEC_QBITS_MIN || o->bits > MOEC_QBITS_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: bits %d outside %d..%d", what,
                            o->bits, MOEC_QBITS_MIN, MOEC_QBITS_MAX);
    if (o->group < 0)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: group size %d (expected >= 1, or 0 for whole rows)",
                            what, o->group);
    if (o->clip_grid < 0 ||
        (o->clip_grid > 0 && !(o->clip_min_ratio > 0.0f && o->clip_min_ratio <= 1.0f)))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: clipping grid %d / min ratio %g (expected grid >= 0 "
                            "and ratio in (0, 1])",
                            what, o->clip_grid, (double)o->clip_min_ratio);
    return MOEC_OK;
}

/* Smallest F16 value >= s (s > 0); returns 0x7c00 (inf) when s > 65504. */
static uint16_t f16_round_up(float s)
{
    uint16_t h = moec_f32_to_f16(s);
    if (h >= 0x7c00u)
        return 0x7c00u;
    if (moec_f16_to_f32(h) < s)
        h++;
    return h;
}

/* Scale and zero for the range [lo, hi] (lo <= 0 <= hi) or, symmetric, [-a, a]
 * with a = hi. Returns false on F16 overflow. */
static bool params_for_range(float lo, float hi, int bits, bool symmetric,
                             uint16_t *scale, int *zero)
{
    const int maxq = (1 << bits) - 1;
    float s = symmetric ? 2.0f * hi / (float)maxq : (hi - lo) / (float)maxq;
    if (!(s > 0.0f)) {
        *scale = 0x3c00u; /* 1.0: any scale reproduces an all-zero group */
        *zero = symmetric ? 1 << (bits - 1) : 0;
        return true;
    }
    uint16_t h = f16_round_up(s);
    if (h >= 0x7c00u)
        return false;
    *scale = h;
    if (symmetric) {
        *zero = 1 << (bits - 1);
    } else {
        float z = rintf(-lo / moec_f16_to_f32(h));
        *zero = z < 0.0f ? 0 : z > (float)maxq ? maxq : (int)z;
    }
    return true;
}

static double group_sq_error(const float *w, int64_t n, uint16_t scale, int zero,
                             int maxq)
{
    float s = moec_f16_to_f32(scale);
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float d = w[i] - s * (float)(moec_rtn_code(w[i], s, zero, maxq) - zero);
        e += (double)d * d;
    }
    return e;
}

bool moec_rtn_group_params(const float *w, int64_t n, const moec_quant_opts *o,
                           uint16_t *scale, int *zero)
{
    float lo = 0.0f, hi = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        if (w[i] < lo)
            lo = w[i];
        if (w[i] > hi)
            hi = w[i];
    }
    if (o->symmetric) {
        hi = fmaxf(-lo, hi);
        lo = -hi;
    }
    if (!params_for_range(lo, hi, o->bits, o->symmetric, scale, zero))
        return false;
    if (o->clip_grid <= 0 || hi == lo)
        return true;
    const int maxq = (1 << o->bits) - 1;
    double best = group_sq_error(w, n, *scale, *zero, maxq);
    for (int i = 1;; i++) {
        float p = 1.0f - (float)i / (float)o->clip_grid;
        if (p < o->clip_min_ratio || p <= 0.0f)
            break;
        uint16_t s;
        int z;
        if (!params_for_range(p * lo, p * hi, o->bits, o->symmetric, &s, &z))
            continue;
        double e = group_sq_error(w, n, s, z, maxq);
        if (e < best) {
            best = e;
            *scale = s;
            *zero = z;
        }
    }
    return true;
}

moec_status moec_rtn_quantize(const float *W, int64_t rows, int64_t cols,
                              const moec_quant_opts *o, const char *name,
                              moec_qmatrix *out, moec_err *err)
{
    if (!name)
        name = "matrix";
    if (out)
        memset(out, 0, sizeof *out);
    moec_status st = moec_quant_opts_check(o, name, err);
    if (st != MOEC_OK)
        return st;
    if (!W || !out)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: no weights or output", name);
    const int group = o->group == 0 || o->group > cols ? (int)(cols < INT32_MAX ? cols : INT32_MAX)
                                                       : o->group;
    st = moec_qmatrix_alloc(out, rows, cols, o->bits, group, o->symmetric, err);
    if (st != MOEC_OK)
        return moec_err_prefix(err, "%s", name);
    const int64_t ng = moec_qformat_ngroups(&out->f);
    const int maxq = (1 << o->bits) - 1;
    uint8_t *codes = malloc((size_t)cols);
    uint16_t *scales = malloc((size_t)ng * sizeof *scales);
    uint8_t *zeros = malloc((size_t)ng);
    if (!codes || !scales || !zeros) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for RTN buffers", name);
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + (size_t)r * (size_t)cols;
        for (int64_t c = 0; c < cols; c++)
            if (!isfinite(w[c])) {
                st = moec_err_set(err, MOEC_ERR_NUMERIC,
                                  "%s: weight [%lld][%lld] is not finite", name,
                                  (long long)r, (long long)c);
                goto done;
            }
        for (int64_t g = 0; g < ng; g++) {
            int64_t c0 = g * group, c1 = c0 + group < cols ? c0 + group : cols;
            int z;
            if (!moec_rtn_group_params(w + c0, c1 - c0, o, &scales[g], &z)) {
                st = moec_err_set(err, MOEC_ERR_NUMERIC,
                                  "%s: row %lld group %lld needs a scale beyond F16",
                                  name, (long long)r, (long long)g);
                goto done;
            }
            zeros[g] = (uint8_t)z;
            float s = moec_f16_to_f32(scales[g]);
            for (int64_t c = c0; c < c1; c++)
                codes[c] = (uint8_t)moec_rtn_code(w[c], s, z, maxq);
        }
        moec_qmatrix_set_row(out, r, codes, scales, zeros);
    }
done:
    free(codes);
    free(scales);
    free(zeros);
    if (st != MOEC_OK)
        moec_qmatrix_free(out);
    return st;
}
