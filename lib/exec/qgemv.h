/* qgemv.h - products with a group-wise quantized matrix, straight from the
 * packed codes.
 *
 *   y[t][r] = Σ_c x[t][c] · Ŵ[r][c]      t < n, r0 <= r < r1
 *
 * x [n][cols] row-major (row stride cols), y [n][ldy] row-major with
 * ldy >= r1; only the entries r0 <= r < r1 of each y row are written
 * (overwritten, not accumulated; moec_qgemm_ex can add). Ŵ[r][c] =
 * s·(q - z) exactly as moec_qformat_dequant_row computes it, accumulated in
 * float32; the result differs from a dequantize-then-dot only in rounding:
 * the order of the additions, and for b > 4 on the AVX-512 kernel the zero
 * point taken out of each group, s·(Σ q·x - z·Σ x).
 *
 * Threads are the caller's: split [0, rows) into row ranges and call once per
 * range; calls on disjoint ranges never touch the same memory. The portable
 * kernel allocates one row of floats per call; the AVX-512 one allocates
 * nothing.
 *
 * Kernels: "portable" (any format) dequantizes one row at a time and takes
 * float dot products. "avx512" (x86-64 CPUs with AVX-512 F, BW, VL and
 * VBMI, chosen at run time; others use the portable one) works on 8 rows at
 * a time for one token (4 rows for more), against up to 4 tokens at once,
 * 16 columns per step, the codes never leaving registers:
 *  - b <= 4: per (row, group) a 16-entry table T[e] = s·((e mod 2^b) - z)
 *    (exactly s·(q - z)) in one register; the 16 codes of a step become
 *    dword indices with one broadcast load and one per-lane shift (b = 2, 4;
 *    for b = 4 the 16 x values of the step are permuted to match) or one
 *    vpmultishiftqb (b = 1, 3), and one vpermps looks up their weights: no
 *    int-to-float conversion, no masking, no per-weight scale or zero.
 *  - b > 4: codes become floats (a widening load for 8 bits, shuffle +
 *    shift + mask otherwise) and are FMA'd straight against x; per group
 *    s·(Σ q·x - z·Σ x) is added, Σ x shared by the rows.
 * It needs the group size to be a multiple of 8 (so every group starts at a
 * byte boundary) or one group per row; a group's last <16 columns go
 * through masked loads.
 */
#ifndef MOEC_EXEC_QGEMV_H
#define MOEC_EXEC_QGEMV_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/qformat.h"

/* Dispatching entry point: the fastest kernel that supports f on this CPU.
 * Fails with MOEC_ERR_ARG on null pointers, n < 0 or a bad row range / ldy;
 * the format itself is trusted (run moec_qformat_validate on untrusted
 * input once, when loading). */
moec_status moec_qgemm(const moec_qformat *f, const float *x, int64_t n, float *y,
                       int64_t ldy, int64_t r0, int64_t r1, moec_err *err);

/* The general form: x rows are ldx >= cols floats apart, and with
 * accumulate the products are added to y instead of overwriting it.
 * moec_qgemm is moec_qgemm_ex(f, x, cols, n, y, ldy, r0, r1, false, err). */
moec_status moec_qgemm_ex(const moec_qformat *f, const float *x, int64_t ldx, int64_t n,
                          float *y, int64_t ldy, int64_t r0, int64_t r1, bool accumulate,
                          moec_err *err);

/* The portable kernel, for any format and CPU (same contract). */
moec_status moec_qgemm_portable(const moec_qformat *f, const float *x, int64_t n,
                                float *y, int64_t ldy, int64_t r0, int64_t r1,
                                moec_err *err);

/* The AVX-512 kernel (same contract); MOEC_ERR_UNSUPPORTED when the CPU or
 * the build lacks AVX-512 F/BW/VL/VBMI or the group size is not a multiple of 8. */
moec_status moec_qgemm_avx512(const moec_qformat *f, const float *x, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1,
                              moec_err *err);

/* Name of the kernel moec_qgemm would use for f: "avx512" or "portable". */
const char *moec_qgemm_kernel(const moec_qformat *f);

/* The two kernels in moec_qgemm_ex's form (same checks and errors). */
moec_status moec_qgemm_portable_ex(const moec_qformat *f, const float *x, int64_t ldx,
                                   int64_t n, float *y, int64_t ldy, int64_t r0, int64_t r1,
                                   bool accumulate, moec_err *err);
moec_status moec_qgemm_avx512_ex(const moec_qformat *f, const float *x, int64_t ldx, int64_t n,
                                 float *y, int64_t ldy, int64_t r0, int64_t r1, bool accumulate,
                                 moec_err *err);

/* One token (n = 1) with integer dot products: y[r] (+)= Σ_c x̂[c]·Ŵ[r][c]
 * for r0 <= r < r1 (y indexed by f's row), where x̂ is x quantized to int8
 * per 64 columns: s = max|x|/127 over the 64, x̂ = s·rint(x/s) (computed as
 * rint(x·(127/max|x|))). The products of codes and int8 activations are
 * exact (int32, vpdpbusd), each 64-column chunk is scaled by s_w·s in
 * float32 and accumulated in float32; zero points are taken out per group
 * as s_w·z·Σx̂. So the result is the float32 product with x̂ in place of x
 * (to rounding), as llama.cpp's k-quant kernels compute with 8-bit
 * activations; moec-bench --act-exact keeps the float path for comparison.
 * Needs moec_qgemv_q8_supported(f): 4 or 8 bits, a group size that is a
 * multiple of 64, and an AVX512-VNNI/VBMI CPU (else MOEC_ERR_UNSUPPORTED).
 * Allocates nothing for rows up to 16,384 columns. */
moec_status moec_qgemv_q8(const moec_qformat *f, const float *x, float *y, int64_t r0, int64_t r1,
                          bool accumulate, moec_err *err);
bool moec_qgemv_q8_supported(const moec_qformat *f);

/* Argument checks shared by the kernels; `kernel` names the caller. */
moec_status moec_qgemm_check(const moec_qformat *f, const float *x, int64_t ldx, int64_t n,
                             const float *y, int64_t ldy, int64_t r0, int64_t r1,
                             const char *kernel, moec_err *err);

#endif
