/* kquant_grid.h - GPTQ on llama.cpp's own grids: the output is a stock
 * llama.cpp block type (core/ggml_blocks.h) holding GPTQ's codes.
 *
 * Each block's parameters are chosen first, as llama.cpp stores them: for
 * the k-quants the F16 super-block scale (and min scale) and the 4/6-bit
 * (Q2_K: 4-bit) sub-block scales and mins; for the 32-blocks (Q8_0, Q4_0,
 * Q4_1, Q5_0, Q5_1) the F16 d (and m). moec_gblock_choose picks them by a
 * search weighted by the importance of each input column: diag(H)/n, the
 * mean squared activation, the quantity llama.cpp's importance matrix holds.
 * Then GPTQ's error feedback quantizes every column on that fixed grid:
 * q = the grid's rounding of the error-updated weight, and its error
 * (w - ŵ)/U_jj is pushed onto the columns not yet quantized, exactly as
 * gptq.h describes for moec's own groups. A block's parameters are chosen
 * when GPTQ reaches the first of its columns (in processing order), from
 * the weights as every earlier column's error left them, i.e. the
 * reference's dynamic groups with a block of 32 or 256 columns.
 *
 * So the file llama.cpp reads has no re-quantization step: the codes are
 * GPTQ's, the parameters the type's. Without a factor (too few calibration
 * tokens, or no calibration) it is round-to-nearest on the same grid
 * (moec_gblock_quantize).
 */
#ifndef MOEC_QUANT_KQUANT_GRID_H
#define MOEC_QUANT_KQUANT_GRID_H

#include <stdint.h>

#include "core/error.h"
#include "core/ggml_blocks.h"
#include "core/qformat.h"
#include "quant/gptq.h"

/* Quantizes W [rows][cols] (float, not modified; cols a multiple of t's
 * block size) into *out (allocated here as llama.cpp blocks,
 * moec_qmatrix_alloc_blocks; left empty on failure). h: a GPTQ factor of
 * the input Hessian (may be NULL: round-to-nearest); o->blocksize is the
 * lazy-update block (o->q is not used). rep (may be NULL) gets the loss. */
moec_status moec_gptq_quantize_blocks(const float *W, int64_t rows, int64_t cols, const moec_gptq_hinv *h,
                                      moec_gblock t, const moec_gptq_opts *o, const char *name, moec_qmatrix *out,
                                      moec_gptq_report *rep, moec_err *err);

#endif
