/* ggml_blocks.h - llama.cpp's (ggml's) quantized block types: their storage
 * layout, decoding, and the pieces an encoder needs.
 *
 * A row of n weights (n a multiple of the type's block size) is stored as
 * n / block consecutive blocks of `bytes` bytes each. Each block holds codes
 * q in [0, 2^bits) and per sub-block parameters; every weight decodes as
 *
 *     ŵ = a·(float)(q - z) - b          (one sub-block's a, b and z)
 *
 * which is exactly ggml's dequantization, operation for operation:
 *
 *   type  block sub bits bytes  a            z    b          stored parameters
 *   Q4_0   32   32   4    18    d            8    0          d (F16)
 *   Q4_1   32   32   4    20    d            0    -m         d, m (F16)
 *   Q5_0   32   32   5    22    d            16   0          d
 *   Q5_1   32   32   5    24    d            0    -m         d, m
 *   Q8_0   32   32   8    34    d            128  0          d (codes stored as int8 q - 128)
 *   Q2_K  256   16   2    84    d·sc         0    dmin·mn    d, dmin (F16); sc, mn 4-bit
 *   Q3_K  256   16   3   110    d·(sc - 32)  4    0          d; sc 6-bit (biased by 32)
 *   Q4_K  256   32   4   144    d·sc         0    dmin·mn    d, dmin; sc, mn 6-bit
 *   Q5_K  256   32   5   176    d·sc         0    dmin·mn    d, dmin; sc, mn 6-bit
 *   Q6_K  256   16   6   210    d·sc         32   0          d; sc int8
 *
 * (a and b are float32 products of the stored values, as ggml computes
 * them). The byte layouts (where each code's bits, the sub-block scales and
 * the F16 values sit) follow ggml's block structs (ggml-common.h: block_q4_0
 * ... block_q6_K) and are described beside each packer in ggml_blocks.c.
 *
 * "Types carry their storage format": one traits table gives each type its
 * ggml id, name, block and sub-block size, code width and bytes per block.
 */
#ifndef MOEC_CORE_GGML_BLOCKS_H
#define MOEC_CORE_GGML_BLOCKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* moec's names for the block types; 0 means "not a ggml block type" (a
 * moec group-wise format). Stored nowhere: files store the ggml id. */
typedef enum moec_gblock {
    MOEC_GB_NONE = 0,
    MOEC_GB_Q4_0,
    MOEC_GB_Q4_1,
    MOEC_GB_Q5_0,
    MOEC_GB_Q5_1,
    MOEC_GB_Q8_0,
    MOEC_GB_Q2_K,
    MOEC_GB_Q3_K,
    MOEC_GB_Q4_K,
    MOEC_GB_Q5_K,
    MOEC_GB_Q6_K,
    MOEC_GB_COUNT
} moec_gblock;

#define MOEC_GB_MAX_BLOCK 256
#define MOEC_GB_MAX_SUBS 16

typedef struct moec_gblock_traits {
    const char *name; /* llama.cpp's spelling: "Q4_K" */
    int ggml_type;    /* ggml_type id in GGUF files (GGML_TYPE_Q4_K = 12) */
    int block;        /* weights per block: 32 or 256 */
    int sub;          /* weights per sub-block sharing a and b */
    int bits;         /* code width: codes in [0, 2^bits) */
    int bytes;        /* bytes per block */
    int zero;         /* z of the table above */
    bool has_min;     /* b can be nonzero (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) */
} moec_gblock_traits;

/* Traits of t; NULL for MOEC_GB_NONE or out of range. */
const moec_gblock_traits *moec_gblock_info(moec_gblock t);
/* "q4_k" or "Q4_K" -> MOEC_GB_Q4_K; MOEC_GB_NONE if unknown. */
moec_gblock moec_gblock_from_name(const char *name);
/* ggml type id -> moec_gblock; MOEC_GB_NONE for ids that are not one of the
 * block types above (F32, F16, IQ types, ...). */
moec_gblock moec_gblock_from_ggml(int ggml_type);

/* Bytes of one row of n weights; 0 when n is not a positive multiple of
 * the block size (or t is not a block type). */
size_t moec_gblock_row_bytes(moec_gblock t, int64_t n);

/* One block's stored parameters, unpacked. d and m are raw F16 bits. */
typedef struct moec_gblock_params {
    uint16_t d;                  /* super-block (or block) scale */
    uint16_t m;                  /* Q4_1/Q5_1: the min m (ŵ = d·q + m); Q2_K/Q4_K/Q5_K: dmin */
    uint8_t sc[MOEC_GB_MAX_SUBS]; /* k-quants: sub-block scales as stored (Q3_K: 0..63 biased by 32;
                                    Q6_K: int8 bits) */
    uint8_t mn[MOEC_GB_MAX_SUBS]; /* Q2_K/Q4_K/Q5_K: sub-block mins */
} moec_gblock_params;

/* The decoding grid of one block: ŵ = a[s]·(float)(q - z) - b[s] for a
 * weight of sub-block s. */
typedef struct moec_gblock_grid {
    float a[MOEC_GB_MAX_SUBS], b[MOEC_GB_MAX_SUBS];
    int z;
    int maxq; /* 2^bits - 1 */
} moec_gblock_grid;

void moec_gblock_grid_of(moec_gblock t, const moec_gblock_params *p, moec_gblock_grid *g);

/* The code of w on sub-block s of grid g: round((w + b)/a) + z, clamped to
 * [0, maxq] (ties to even); z when a is 0. Not necessarily the nearest grid
 * point after clamping, but the one ggml's own rounding would pick. */
int moec_gblock_code(const moec_gblock_grid *g, int s, float w);

static inline float moec_gblock_value(const moec_gblock_grid *g, int s, int q)
{
    return g->a[s] * (float)(q - g->z) - g->b[s];
}

/* Packs one block: parameters p and codes q[block] (each < 2^bits) into
 * dst (traits->bytes bytes, fully written). */
void moec_gblock_pack(moec_gblock t, const moec_gblock_params *p, const uint8_t *q, void *dst);
/* The inverse: p and q[block] from one stored block. */
void moec_gblock_unpack(moec_gblock t, const void *src, moec_gblock_params *p, uint8_t *q);

/* True when every F16 value stored in nblocks consecutive blocks (d, and m
 * where the type has one) is finite; else false with *bad (may be NULL) the
 * index of the first offending block. */
bool moec_gblock_finite(moec_gblock t, const void *src, int64_t nblocks, int64_t *bad);

/* Dequantizes n weights (a multiple of the block size) from src: ggml's
 * dequantize_row_<type>, the same float operations. */
void moec_gblock_dequant(moec_gblock t, const void *src, float *dst, int64_t n);

/* Chooses one block's parameters for weights x[block] under importance
 * imp[block] (NULL = all 1): per sub-block a scale (and min) minimising
 * Σ imp·(x - ŵ)² over a small search with least-squares refits, then the
 * sub-block scales quantized under the F16 super-block scale(s) as the
 * type stores them. Deterministic; x must be finite. */
void moec_gblock_choose(moec_gblock t, const float *x, const float *imp, moec_gblock_params *p);

/* Round-to-nearest encoding of n weights (a multiple of the block size):
 * moec_gblock_choose, then each code by moec_gblock_code, then packed.
 * imp (may be NULL) is per weight, like x. Writes row_bytes(t, n) bytes. */
void moec_gblock_quantize(moec_gblock t, const float *x, const float *imp, void *dst, int64_t n);

#endif
