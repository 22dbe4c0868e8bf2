/* matmul_gblocks.h - y = x · Ŵᵀ for a weight held as llama.cpp blocks
 * (a MOEC_DT_QUANT tensor whose format has gblock set, core/qformat.h).
 *
 * Correct first, not tuned: output rows are split over the pool's workers
 * (multiples of 16 rows); each worker decodes a tile of its rows to float32
 * with ggml's dequantization (moec_gblock_dequant, the same float
 * operations as llama.cpp's dequantize_row_*) in its pool scratch and
 * multiplies it with moec_matmul_ex's F32 kernels. Without scratch memory
 * it decodes one block at a time on the stack. The result equals
 * "dequantize, then multiply in float32" up to the order of additions.
 */
#ifndef MOEC_EXEC_MATMUL_GBLOCKS_H
#define MOEC_EXEC_MATMUL_GBLOCKS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"
#include "core/threadpool.h"

/* Same contract as moec_matmul_ex (exec/matmul.h) for W with W->q->gblock
 * set and validated (moec_qformat_validate). Never fails. */
void moec_matmul_gblocks(moec_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                         const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate);

/* The same on the calling thread, which runs share `thread` of a run of
 * the caller's own on pool (its scratch may be used; pool NULL: none is),
 * as moec_matmul_quant_share. */
void moec_matmul_gblocks_share(moec_pool *pool, int thread, float *y, int64_t ldy, const float *x, int64_t ldx,
                               int64_t n, const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate);

#endif
