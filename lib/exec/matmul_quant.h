/* matmul_quant.h - y = x · Ŵᵀ for a group-wise quantized linear layer
 * (moec_tensor of dtype MOEC_DT_QUANT, layout in core/qformat.h), straight
 * from the packed groups: the model is never dequantized as a whole.
 *
 * Output rows are split over the pool's workers (multiples of 16 rows, so no
 * two workers write one cache line of y). Per worker:
 *  - direct, for n <= moec_matmul_quant_direct_max_n(W) (decode and short
 *    runs of tokens): moec_qgemm_ex (exec/qgemv.h) on the worker's rows,
 *    converting the packed codes in registers (a table lookup per 16 codes
 *    for b <= 4), x read in place, y written or accumulated in place;
 *  - tiles, for larger n: the worker dequantizes a tile of its W rows
 *    (32 KiB of float32, in its pool scratch during a run, else malloc'd;
 *    AVX-512 unpacking where the CPU has it) and multiplies it with
 *    moec_matmul_ex on the caller, i.e. matmul.c's F32 kernels (direct FMA
 *    kernel, or single-threaded sgemm where that kernel family prefers it).
 *    The packed codes are read once per product; the float tile never
 *    leaves L1/L2;
 *  - a fallback that needs no memory, when no scratch can be had.
 * All compute with Ŵ[r][c] = s·(q - z) as moec_qformat_dequant_row does, in
 * float32; results differ from a float dequantize-then-multiply only in
 * rounding (order of the additions; for b > 4 direct, s·(Σ q·x - z·Σ x)
 * per group, see exec/qgemv.h).
 */
#ifndef MOEC_EXEC_MATMUL_QUANT_H
#define MOEC_EXEC_MATMUL_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"
#include "core/threadpool.h"

/* Same contract as moec_matmul_ex (exec/matmul.h): y[i·ldy + (r - r0)] (+)=
 * Σ_c x[i·ldx + c] · Ŵ[r][c] for i < n, r0 <= r < r1 (ldx >= cols, ldy >=
 * r1 - r0; x and y do not overlap). W is MOEC_DT_QUANT with W->q a format
 * that passed moec_qformat_validate (done when a model is loaded); nothing
 * here re-checks it. pool may be NULL (everything on the caller). Not
 * reentrant on one pool. Never fails: when no scratch memory can be had it
 * falls back to a slower kernel that needs none. */
void moec_matmul_quant(moec_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                       const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate);

/* The same product done entirely on the calling thread, which runs share
 * `thread` of a run of the caller's own on pool (so the pool's scratch of
 * that share may be used; pool NULL: none is). For jobs that split several
 * products over the workers in one run. */
void moec_matmul_quant_share(moec_pool *pool, int thread, float *y, int64_t ldy, const float *x, int64_t ldx,
                             int64_t n, const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate);

/* Largest n served by the direct (qgemm) kernel for W; larger n uses
 * tiles. 0 when W's format has no fast direct kernel on this CPU or tiles
 * are faster for every n. */
int64_t moec_matmul_quant_direct_max_n(const moec_tensor *W);

/* Decode (one token) with 4- or 8-bit weights in groups of a multiple of
 * 64 uses integer dot products with the activations quantized to int8 per
 * 64 columns (moec_qgemv_q8 in qgemv.h) where the CPU has AVX512-VNNI: on
 * by default; false keeps every product in float32 (to measure what the
 * int8 activations cost in KL, or for bit-for-bit comparisons with a
 * batched forward). Process-wide; not meant to be flipped mid-product. */
void moec_matmul_quant_int8_activations(bool on);
bool moec_matmul_quant_int8_activations_on(void);

/* For tests and benchmarks: force the path: 1 = direct for every n,
 * 2 = tiles + sgemm for every n, 3 = the memory-free fallback kernel,
 * 0 = automatic (the default). */
void moec_matmul_quant_force_path(int path);

#endif
