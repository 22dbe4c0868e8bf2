/* qformat.h - group-wise quantized matrices: layout, packing, dequantization.
 *
 * A quantized linear weight W [rows][cols] (HF layout [out][in]) is cut, per
 * row, into groups of `group` consecutive input columns: group g of a row
 * covers columns [g*group, min((g+1)*group, cols)), so the last group is
 * shorter when cols is not a multiple of the group size. Each weight is a
 * b-bit unsigned code q (b = 1..8) and each (row, group) pair has an F16
 * scale s and an integer zero point z:
 *
 *     w ≈ s * (q - z)          q in [0, 2^b - 1]
 *
 *   asymmetric: z is stored, b bits, z in [0, 2^b - 1];
 *   symmetric:  z is implicit, z = 2^(b-1), so q - z runs over
 *               [-2^(b-1), 2^(b-1) - 1]; no zeros are stored.
 * (1-bit symmetric is legal but represents only {-s, 0}; use asymmetric.)
 *
 * Storage (three buffers, all little-endian, each row at a byte boundary):
 *   codes   [rows][code_row_bytes], code_row_bytes = ceil(cols*b / 8).
 *           Row r's codes form a bit stream: code c occupies stream bits
 *           [c*b, c*b + b), stream bit k is bit (k % 8) (LSB = bit 0) of byte
 *           k / 8 of the row, and bit i of the code is stream bit c*b + i.
 *           Padding bits at the end of a row are zero.
 *   scales  [rows][ngroups] IEEE binary16 (F16), finite and usually > 0
 *           (a group of zeros may carry any scale).
 *   zeros   asymmetric only: [rows][zero_row_bytes], zero_row_bytes =
 *           ceil(ngroups*b / 8), packed exactly like the codes with the
 *           group index in place of the column. NULL / 0 bytes when symmetric.
 * ngroups = ceil(cols / group). When group*b is a multiple of 8 (any group
 * that is a multiple of 8) every group starts at a byte boundary of its row.
 *
 * Bits per weight (moec_qformat_bpw) count all three buffers, row padding
 * included: 8 * (codes_bytes + scales_bytes + zeros_bytes) / (rows * cols).
 *
 * llama.cpp block types (gblock != MOEC_GB_NONE, core/ggml_blocks.h): the
 * same view then describes rows of ggml blocks kept verbatim, so that
 * whatever holds, stores or runs quantized matrices holds these too.
 *   codes   [rows][moec_gblock_row_bytes(gblock, cols)]: each row's blocks,
 *           exactly as a GGUF file stores them; cols is a multiple of the
 *           type's block size;
 *   scales, zeros  NULL, 0 bytes (the parameters live inside the blocks);
 *   bits    the type's code width, group its block size (32 or 256),
 *           symmetric = the type has no min (informative only).
 * Dequantization is ggml's (moec_gblock_dequant); moec_qformat_scale,
 * moec_qformat_zero(s) and the packed-code kernels do not apply.
 */
#ifndef MOEC_CORE_QFORMAT_H
#define MOEC_CORE_QFORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/ggml_blocks.h"
#include "core/tensor.h"

#define MOEC_QBITS_MIN 1
#define MOEC_QBITS_MAX 8

/* A non-owning view of one quantized matrix. The buffers belong to whoever
 * filled the struct (a moec_qmatrix, a container mapping). */
typedef struct moec_qformat {
    int bits;              /* b, 1..8 */
    int group;             /* columns per group, >= 1 (>= cols: one group per row) */
    bool symmetric;        /* true: z = 2^(b-1) implicit, zeros == NULL */
    int64_t rows, cols;    /* the dequantized matrix is [rows][cols] */
    const uint8_t *codes;  /* [rows][code_row_bytes] packed b-bit codes */
    const uint16_t *scales; /* [rows][ngroups] F16 */
    const uint8_t *zeros;  /* [rows][zero_row_bytes] packed b-bit zeros, asymmetric only */
    size_t codes_bytes, scales_bytes, zeros_bytes;
    moec_gblock gblock;    /* MOEC_GB_NONE: the group-wise layout; else llama.cpp blocks (see above) */
} moec_qformat;

/* An owning quantized matrix: malloc'd buffers plus the view `f` of them.
 * Create with moec_qmatrix_alloc, release with moec_qmatrix_free. */
typedef struct moec_qmatrix {
    moec_qformat f;    /* f.codes/f.scales/f.zeros alias the buffers below */
    uint8_t *codes;
    uint16_t *scales;
    uint8_t *zeros;    /* NULL when symmetric */
} moec_qmatrix;

static inline int64_t moec_qformat_ngroups(const moec_qformat *f)
{
    return (f->cols + f->group - 1) / f->group;
}

/* Bytes of one packed row of n b-bit values: ceil(n*b / 8). */
static inline size_t moec_qformat_packed_bytes(int64_t n, int bits)
{
    return (size_t)((n * bits + 7) / 8);
}

/* Byte sizes of the three buffers for a format. Fails with MOEC_ERR_ARG for
 * bits outside 1..8, group < 1, rows or cols < 1 or a size that overflows. */
moec_status moec_qformat_sizes(int64_t rows, int64_t cols, int bits, int group,
                               bool symmetric, size_t *codes_bytes,
                               size_t *scales_bytes, size_t *zeros_bytes,
                               moec_err *err);

/* Bytes of the block rows of a [rows][cols] matrix in llama.cpp type t.
 * Fails with MOEC_ERR_ARG when t is not a block type, cols is not a
 * multiple of its block size, or the shape is out of range. */
moec_status moec_qformat_block_bytes(int64_t rows, int64_t cols, moec_gblock t, size_t *codes_bytes,
                                     moec_err *err);

/* Checks a view read from untrusted storage before anything dereferences it:
 * parameters in range, buffer sizes equal to moec_qformat_sizes, pointers
 * present (zeros absent iff symmetric) and every scale finite (for block
 * types: the row bytes, and every block's F16 scale and min finite). `name`
 * (may be NULL) names the tensor in the message. */
moec_status moec_qformat_validate(const moec_qformat *f, const char *name,
                                  moec_err *err);

/* Packs n codes (only the low `bits` bits of each are kept) into the bit
 * stream at dst, starting at stream bit 0; writes exactly
 * moec_qformat_packed_bytes(n, bits) bytes, padding bits zero. */
void moec_qpack(uint8_t *dst, const uint8_t *codes, int64_t n, int bits);

/* Unpacks codes [first, first + n) of the bit stream at src into codes[0..n).
 * Reads only bytes that hold those codes. */
void moec_qunpack(uint8_t *codes, const uint8_t *src, int64_t first, int64_t n,
                  int bits);

/* Scale (as float) and zero point of group g of row r. */
float moec_qformat_scale(const moec_qformat *f, int64_t r, int64_t g);
int moec_qformat_zero(const moec_qformat *f, int64_t r, int64_t g);
/* Zero points of groups g0..g0+n-1 of row r into out[n]: unpacked, or the
 * implicit 2^(b-1) when symmetric. */
void moec_qformat_zeros(const moec_qformat *f, int64_t r, int64_t g0, int64_t n, uint8_t *out);

/* out[0..cols) = dequantized row r: out[c] = s * (float)(q - z). */
void moec_qformat_dequant_row(const moec_qformat *f, int64_t r, float *out);

/* Rows [r0, r1) into out [r1 - r0][cols]; the whole matrix with r0 = 0,
 * r1 = rows (out then holds rows * cols floats). */
void moec_qformat_dequant_rows(const moec_qformat *f, int64_t r0, int64_t r1,
                               float *out);

/* Stored bits per weight: all three buffers, row padding included. */
double moec_qformat_bpw(const moec_qformat *f);

/* A moec_tensor of dtype MOEC_DT_QUANT viewing f: shape {rows, cols}, data =
 * codes, nbytes = codes_bytes, q = f. f must outlive the tensor. */
moec_tensor moec_qformat_tensor(const moec_qformat *f);

/* Allocates the buffers of *m for the given format (codes, scales and zeros
 * zero-filled) and sets m->f to view them. On failure *m is left empty
 * (safe to moec_qmatrix_free). */
moec_status moec_qmatrix_alloc(moec_qmatrix *m, int64_t rows, int64_t cols,
                               int bits, int group, bool symmetric,
                               moec_err *err);

/* The same for llama.cpp blocks of type t (zero-filled codes; scales and
 * zeros NULL). */
moec_status moec_qmatrix_alloc_blocks(moec_qmatrix *m, int64_t rows, int64_t cols, moec_gblock t,
                                      moec_err *err);

/* Frees the buffers of m and clears it; m itself is the caller's. */
void moec_qmatrix_free(moec_qmatrix *m);

/* Stores row r from unpacked values: codes[cols], scales[ngroups] (F16) and,
 * when asymmetric, zeros[ngroups] (ignored when symmetric; may be NULL).
 * Group-wise layout only. */
void moec_qmatrix_set_row(moec_qmatrix *m, int64_t r, const uint8_t *codes,
                          const uint16_t *scales, const uint8_t *zeros);

#endif
