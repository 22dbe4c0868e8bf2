/* ggml_carry.c - group-wise rows as llama.cpp blocks, codes unchanged
 * (ggml_carry.h says which formats and what rounds). */
#include "core/ggml_carry.h"

#include <math.h>

#include "core/dtype.h"

moec_gblock moec_qformat_carry_type(const moec_qformat *f)
{
    if (!f || f->gblock != MOEC_GB_NONE || f->group != 32 || f->cols % 32)
        return MOEC_GB_NONE;
    if (f->symmetric)
        return f->bits == 8 ? MOEC_GB_Q8_0 : f->bits == 4 ? MOEC_GB_Q4_0 : f->bits == 5 ? MOEC_GB_Q5_0 : MOEC_GB_NONE;
    return f->bits == 4 ? MOEC_GB_Q4_1 : f->bits == 5 ? MOEC_GB_Q5_1 : MOEC_GB_NONE;
}

void moec_qformat_carry_row(const moec_qformat *f, int64_t r, moec_gblock t, void *dst, moec_carry_stats *stats)
{
    const moec_gblock_traits *tr = moec_gblock_info(t);
    const int64_t ng = f->cols / 32;
    const size_t stride = moec_qformat_packed_bytes(f->cols, f->bits);
    const uint8_t *row = f->codes + (size_t)r * stride;
    uint8_t q[32], z[1];
    uint8_t *out = dst;
    for (int64_t g = 0; g < ng; g++, out += tr->bytes) {
        moec_gblock_params p = {0};
        p.d = f->scales[r * ng + g];
        moec_qunpack(q, row, g * 32, 32, f->bits);
        if (tr->has_min) {
            moec_qformat_zeros(f, r, g, 1, z);
            const float s = moec_f16_to_f32(p.d), sz = s * (float)z[0]; /* exact: 11 x 5 significant bits */
            p.m = moec_f32_to_f16(-sz);
            const float back = moec_f16_to_f32(p.m);
            if (stats && back != -sz) {
                stats->rounded++;
                const double e = s != 0.0f ? fabs((double)back + (double)sz) / fabs((double)s) : 0.0;
                if (e > stats->max_err)
                    stats->max_err = e;
            }
        }
        moec_gblock_pack(t, &p, q, out);
    }
    if (stats)
        stats->groups += ng;
}
