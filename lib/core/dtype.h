/* dtype.h - element storage types and scalar conversions.
 *
 * Only F32, F16 and BF16 are computed with; the other safetensors dtypes are
 * named so that readers can refuse them clearly. MOEC_DT_QUANT marks a
 * group-wise quantized tensor whose layout lives in quant/ (moec_tensor.q).
 */
#ifndef MOEC_CORE_DTYPE_H
#define MOEC_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum moec_dtype {
    MOEC_DT_F32 = 0,
    MOEC_DT_F16,
    MOEC_DT_BF16,
    /* recognised in files, not computed with */
    MOEC_DT_F64,
    MOEC_DT_I8,
    MOEC_DT_U8,
    MOEC_DT_I16,
    MOEC_DT_U16,
    MOEC_DT_I32,
    MOEC_DT_U32,
    MOEC_DT_I64,
    MOEC_DT_U64,
    MOEC_DT_BOOL,
    MOEC_DT_F8_E4M3,
    MOEC_DT_F8_E5M2,
    /* group-wise packed integers; see core/qformat.h */
    MOEC_DT_QUANT,
    MOEC_DT_COUNT
} moec_dtype;

/* Bytes per element (0 for MOEC_DT_QUANT, whose size depends on its format). */
size_t moec_dtype_size(moec_dtype t);
/* safetensors spelling: "F32", "BF16", ... */
const char *moec_dtype_name(moec_dtype t);
/* Parses a safetensors dtype name; returns -1 when unknown. */
int moec_dtype_from_name(const char *name);
/* True for the dtypes the executor computes with directly (F32, F16, BF16). */
int moec_dtype_is_compute(moec_dtype t);

static inline float moec_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline uint16_t moec_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float moec_f16_to_f32(uint16_t h);
uint16_t moec_f32_to_f16(float f);

/* dst[i] = (float)src[i] for n elements of a compute dtype. */
void moec_to_f32(float *dst, const void *src, moec_dtype t, size_t n);
/* Stores n floats as dtype t (F32, F16 or BF16), rounding to nearest even. */
void moec_from_f32(void *dst, const float *src, moec_dtype t, size_t n);

#endif
