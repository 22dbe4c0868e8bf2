#include "core/dtype.h"

#include <math.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[MOEC_DT_COUNT] = {
    [MOEC_DT_F32] = {"F32", 4},     [MOEC_DT_F16] = {"F16", 2},
    [MOEC_DT_BF16] = {"BF16", 2},   [MOEC_DT_F64] = {"F64", 8},
    [MOEC_DT_I8] = {"I8", 1},       [MOEC_DT_U8] = {"U8", 1},
    [MOEC_DT_I16] = {"I16", 2},     [MOEC_DT_U16] = {"U16", 2},
    [MOEC_DT_I32] = {"I32", 4},     [MOEC_DT_U32] = {"U32", 4},
    [MOEC_DT_I64] = {"I64", 8},     [MOEC_DT_U64] = {"U64", 8},
    [MOEC_DT_BOOL] = {"BOOL", 1},   [MOEC_DT_F8_E4M3] = {"F8_E4M3", 1},
    [MOEC_DT_F8_E5M2] = {"F8_E5M2", 1}, [MOEC_DT_QUANT] = {"QUANT", 0},
};

size_t moec_dtype_size(moec_dtype t)
{
    return (unsigned)t < MOEC_DT_COUNT ? dtype_info[t].size : 0;
}

const char *moec_dtype_name(moec_dtype t)
{
    return (unsigned)t < MOEC_DT_COUNT ? dtype_info[t].name : "?";
}

int moec_dtype_from_name(const char *name)
{
    for (int t = 0; t < MOEC_DT_QUANT; t++)
        if (strcmp(dtype_info[t].name, name) == 0)
            return t;
    return -1;
}

int moec_dtype_is_compute(moec_dtype t)
{
    return t == MOEC_DT_F32 || t == MOEC_DT_F16 || t == MOEC_DT_BF16;
}

float moec_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t moec_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (absu >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absu < 0x38800000u) { /* below the smallest normal f16: subnormal or 0 */
        float a;
        memcpy(&a, &absu, sizeof a);
        /* scale so that one f16 subnormal ulp (2^-24) becomes 1, round to even */
        float m = nearbyintf(a * 16777216.0f);
        return (uint16_t)(sign | (uint32_t)m);
    }
    uint32_t e = ((absu >> 23) - 127 + 15);
    uint32_t man = absu & 0x7fffffu;
    uint32_t h = (e << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

void moec_to_f32(float *dst, const void *src, moec_dtype t, size_t n)
{
    switch (t) {
    case MOEC_DT_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case MOEC_DT_BF16: {
        const uint16_t *s = src;
        uint32_t *d = (uint32_t *)dst;
        for (size_t i = 0; i < n; i++)
            d[i] = (uint32_t)s[i] << 16;
        break;
    }
    case MOEC_DT_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = moec_f16_to_f32(s[i]);
        break;
    }
    default:
        for (size_t i = 0; i < n; i++)
            dst[i] = NAN;
        break;
    }
}

void moec_from_f32(void *dst, const float *src, moec_dtype t, size_t n)
{
    switch (t) {
    case MOEC_DT_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case MOEC_DT_BF16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = moec_f32_to_bf16(src[i]);
        break;
    }
    case MOEC_DT_F16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = moec_f32_to_f16(src[i]);
        break;
    }
    default:
        break;
    }
}
