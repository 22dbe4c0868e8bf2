/* rtn.h - round-to-nearest group-wise quantization and the per-group
 * parameter choice that GPTQ shares.
 *
 * Parameters of one group w[0..n) at b bits (maxq = 2^b - 1):
 *   asymmetric: the range [lo, hi] = [min(min w, 0), max(max w, 0)] (zero is
 *     kept inside the range so that the integer zero point fits in b bits, as
 *     the GPTQ reference does); s = (hi - lo) / maxq; z = round(-lo / s).
 *   symmetric: a = max |w|; s = 2a / maxq; z = 2^(b-1) (implicit), so the grid
 *     s*(q - z) spans [-a - s/2, a - s/2] (the GPTQ reference convention).
 * s is stored as F16 and is rounded UP to the next F16 value, so the whole
 * range stays representable: every w inside [lo, hi] (or [-a, a]) then
 * quantizes with |w - s(q - z)| <= s/2. A group of zeros gets s = 1, z as
 * above (codes all equal z, dequantizing to exactly 0).
 *   q = clamp(round_half_even(w / s) + z, 0, maxq).
 *
 * Clipping-ratio search (off by default, clip_grid = 0): the range is shrunk
 * by factors p = 1 - i/clip_grid, i = 0, 1, ... while p >= clip_min_ratio
 * (lo, hi scaled by p; a scaled by p when symmetric), and the p whose
 * quantized group has the smallest squared error sum_i (w_i - ŵ_i)^2 is kept
 * (as AWQ's auto-clip and llama.cpp's quantizers do, with plain weight MSE
 * in place of their output/importance-weighted error). Clipping trades
 * larger error on the few outliers for a finer grid on everything else; it
 * never increases the group MSE because p = 1 is always tried.
 */
#ifndef MOEC_QUANT_RTN_H
#define MOEC_QUANT_RTN_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/qformat.h"

typedef struct moec_quant_opts {
    int bits;             /* 1..8 */
    int group;            /* columns per group; 0 = one group per row */
    bool symmetric;
    int clip_grid;        /* shrink step 1/clip_grid; 0 = no clipping search */
    float clip_min_ratio; /* smallest shrink factor tried, in (0, 1] */
} moec_quant_opts;

/* 4 bits, group 128, asymmetric, no clipping search (grid 20 and min ratio
 * 0.5, AWQ's values, apply once clip_grid is set). */
#define MOEC_QUANT_OPTS_DEFAULT \
    ((moec_quant_opts){.bits = 4, .group = 128, .symmetric = false, \
                       .clip_grid = 0, .clip_min_ratio = 0.5f})

/* Checks bits, group (>= 0), clip settings; `what` names the caller in the
 * message (e.g. the tensor). */
moec_status moec_quant_opts_check(const moec_quant_opts *o, const char *what,
                                  moec_err *err);

/* Chooses the F16 scale and zero point of one group w[0..n), n >= 1, all
 * finite (see the header comment). *zero is 2^(b-1) when symmetric. Returns
 * false when the range needs a scale above the F16 maximum (65504). */
bool moec_rtn_group_params(const float *w, int64_t n, const moec_quant_opts *o,
                           uint16_t *scale, int *zero);

/* The code of w for scale s (already F16-rounded) and zero z. */
static inline int moec_rtn_code(float w, float s, int z, int maxq)
{
    float t = rintf(w / s) + (float)z;
    return !(t >= 0.0f) ? 0 : t > (float)maxq ? maxq : (int)t; /* NaN -> 0 */
}

/* Quantizes W [rows][cols] (float, HF layout) by RTN into *out, which this
 * function allocates (moec_qmatrix_free releases it; left empty on failure).
 * `name` labels error messages. Fails with MOEC_ERR_ARG for bad options or
 * shape, MOEC_ERR_NUMERIC for a non-finite weight or a group whose range
 * overflows F16 scales. */
moec_status moec_rtn_quantize(const float *W, int64_t rows, int64_t cols,
                              const moec_quant_opts *o, const char *name,
                              moec_qmatrix *out, moec_err *err);

#endif
