/* qgemv.h - products with a group-wise quantized matrix, straight from the
 * packed codes.
 *
 *   y[t][r] = Σ_c x[t][c] · Ŵ[r][c]      t < n, r0 <= r < r1
 *
 * x [n][cols] row-major (row stride cols), y [n][ldy] row-major with
 * ldy >= r1; only the entries r0 <= r < r1 of each y row are written
 * (overwritten, not accumulated). Ŵ[r][c] = s·(q - z) exactly as
 * moec_qformat_dequant_row computes it; only the order of the float
 * additions differs from a dequantize-then-dot.
 *
 * Threads are the caller's: split [0, rows) into row ranges and call once per
 * range; calls on disjoint ranges never touch the same memory. Each call
 * allocates at most one row of floats (the portable kernel) and nothing on
 * the AVX-512 path.
 *
 * Kernels: "portable" (any format) dequantizes one row at a time and takes
 * float dot products. "avx512" (x86-64 CPUs with AVX-512 F, BW and VL,
 * chosen at run time) turns 16 codes at a time into floats in registers (a
 * byte shuffle and per-lane shifts for any width, a nibble split for 4 bits,
 * a widening load for 8) and FMAs them against up to 4 tokens at once; it
 * needs the group size to be a multiple of 8 (so every group starts at a
 * byte boundary) or one group per row; the last <16 columns of a group go
 * through scalar code.
 */
#ifndef MOEC_QUANT_QGEMV_H
#define MOEC_QUANT_QGEMV_H

#include <stdint.h>

#include "core/error.h"
#include "quant/qformat.h"

/* Dispatching entry point: the fastest kernel that supports f on this CPU.
 * Fails with MOEC_ERR_ARG on null pointers, n < 0 or a bad row range / ldy;
 * the format itself is trusted (run moec_qformat_validate on untrusted
 * input once, when loading). */
moec_status moec_qgemm(const moec_qformat *f, const float *x, int64_t n, float *y,
                       int64_t ldy, int64_t r0, int64_t r1, moec_err *err);

/* The portable kernel, for any format and CPU (same contract). */
moec_status moec_qgemm_portable(const moec_qformat *f, const float *x, int64_t n,
                                float *y, int64_t ldy, int64_t r0, int64_t r1,
                                moec_err *err);

/* The AVX-512 kernel (same contract); MOEC_ERR_UNSUPPORTED when the CPU or
 * the build lacks AVX-512 F/BW/VL or the group size is not a multiple of 8. */
moec_status moec_qgemm_avx512(const moec_qformat *f, const float *x, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1,
                              moec_err *err);

/* Name of the kernel moec_qgemm would use for f: "avx512" or "portable". */
const char *moec_qgemm_kernel(const moec_qformat *f);

/* Argument checks shared by the kernels; `kernel` names the caller. */
moec_status moec_qgemm_check(const moec_qformat *f, const float *x, int64_t n,
                             const float *y, int64_t ldy, int64_t r0, int64_t r1,
                             const char *kernel, moec_err *err);

#endif
