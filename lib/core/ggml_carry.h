/* ggml_carry.h - moec group-wise codes carried into llama.cpp block types.
 *
 * Five llama.cpp types are group-wise formats moec also writes: groups of
 * 32 weights, an F16 scale, codes of b bits.
 *   moec 8-bit symmetric  w = s·(q - 128)  ->  Q8_0: d = s, qs = q - 128 (int8)
 *   moec 4-bit symmetric  w = s·(q - 8)    ->  Q4_0: d = s, the same q
 *   moec 5-bit symmetric  w = s·(q - 16)   ->  Q5_0: d = s, the same q
 *   moec 4-bit, zero z    w = s·(q - z)    ->  Q4_1: d = s, m = -s·z, the same q
 *   moec 5-bit, zero z    w = s·(q - z)    ->  Q5_1: d = s, m = -s·z, the same q
 * (moec stores every row's codes and scales; a row must hold whole groups,
 * cols a multiple of 32). The codes always carry bit for bit. The symmetric
 * types decode to exactly moec's values: (q - z)·d is the same float
 * product. Q4_1/Q5_1 store m as F16: s·z is exact in float32 (11 + 5
 * significant bits) but an F16 holds 11, so m rounds unless s's mantissa
 * has enough trailing zeros for that z; where it does not, every weight of
 * the group shifts by the rounding of m (at most half an F16 ulp of s·z),
 * and the carry reports it. moec-quant's llama.cpp grids (--grid q4_1)
 * avoid this by choosing (d, m) as F16 values in the first place.
 */
#ifndef MOEC_CORE_GGML_CARRY_H
#define MOEC_CORE_GGML_CARRY_H

#include <stdint.h>

#include "core/ggml_blocks.h"
#include "core/qformat.h"

/* The llama.cpp type f's codes carry into, or MOEC_GB_NONE. */
moec_gblock moec_qformat_carry_type(const moec_qformat *f);

typedef struct moec_carry_stats {
    int64_t groups;       /* groups carried */
    int64_t rounded;      /* of them, Q4_1/Q5_1 groups whose -s·z is not an F16 value */
    double max_err;       /* largest |F16(-s·z) + s·z| / s among them (0 if none) */
} moec_carry_stats;

/* Writes row r of f as blocks of type t = moec_qformat_carry_type(f) into
 * dst (moec_gblock_row_bytes(t, cols) bytes) and adds to *stats (may be
 * NULL). */
void moec_qformat_carry_row(const moec_qformat *f, int64_t r, moec_gblock t, void *dst, moec_carry_stats *stats);

#endif
