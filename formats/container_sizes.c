/* container_sizes.c - what each tensor type requires of its sections. */
#include "formats/container.h"

#include <inttypes.h>

#include "core/ggml_blocks.h"

#define SIZE_LIMIT ((uint64_t)INT64_MAX)

/* a * b, failing past 2^63 so sums of a few sizes still fit in 64 bits */
static int mul_ok(uint64_t a, uint64_t b, uint64_t *r)
{
    return !__builtin_mul_overflow(a, b, r) && *r <= SIZE_LIMIT;
}

static uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

moec_status moec_groupwise_section_bytes(int64_t rows, int64_t cols, int bits, int group,
                                         int symmetric, uint64_t *codes, uint64_t *scales,
                                         uint64_t *zeros, moec_err *err)
{
    if (bits < 1 || bits > 8)
        return moec_err_set(err, MOEC_ERR_ARG, "group-wise bits must be 1..8, found %d", bits);
    if (group < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "group size must be >= 1, found %d", group);
    if (rows < 1 || cols < 1)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "group-wise matrix must be at least 1x1, found %" PRId64 "x%" PRId64,
                            rows, cols);
    uint64_t ngroups = ceil_div((uint64_t)cols, (uint64_t)group);
    uint64_t row_bits, scale_bytes, c, s, z = 0;
    if (!mul_ok((uint64_t)cols, (uint64_t)bits, &row_bits) ||
        !mul_ok((uint64_t)rows, ceil_div(row_bits, 8), &c) ||
        !mul_ok(ngroups, 2, &scale_bytes) || !mul_ok((uint64_t)rows, scale_bytes, &s) ||
        (!symmetric && !mul_ok((uint64_t)rows, ceil_div(ngroups * (uint64_t)bits, 8), &z)))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "group-wise sections of %" PRId64 "x%" PRId64 " overflow", rows, cols);
    if (codes)
        *codes = c;
    if (scales)
        *scales = s;
    if (zeros)
        *zeros = z;
    return MOEC_OK;
}

moec_status moec_ctensor_section_bytes(const moec_ctensor_type *t,
                                       uint64_t bytes[MOEC_SECTION_KIND_COUNT], moec_err *err)
{
    for (int k = 0; k < MOEC_SECTION_KIND_COUNT; k++)
        bytes[k] = 0;
    if (t->ndim < 1 || t->ndim > MOEC_MAX_DIMS)
        return moec_err_set(err, MOEC_ERR_ARG, "ndim must be 1..%d, found %d", MOEC_MAX_DIMS,
                            t->ndim);
    uint64_t numel = 1;
    for (int d = 0; d < MOEC_MAX_DIMS; d++) {
        if (d >= t->ndim) {
            if (t->shape[d] != 0)
                return moec_err_set(err, MOEC_ERR_ARG,
                                    "shape[%d] past ndim %d must be 0, found %" PRId64, d,
                                    t->ndim, t->shape[d]);
            continue;
        }
        if (t->shape[d] < 1)
            return moec_err_set(err, MOEC_ERR_ARG, "shape[%d] must be >= 1, found %" PRId64, d,
                                t->shape[d]);
        if (!mul_ok(numel, (uint64_t)t->shape[d], &numel))
            return moec_err_set(err, MOEC_ERR_ARG, "element count overflows");
    }
    uint64_t elem;
    switch (t->storage) {
    case MOEC_STORAGE_F32: elem = 4; break;
    case MOEC_STORAGE_F16:
    case MOEC_STORAGE_BF16: elem = 2; break;
    case MOEC_STORAGE_GROUPWISE: {
        if (t->symmetric != 0 && t->symmetric != 1)
            return moec_err_set(err, MOEC_ERR_ARG, "symmetric flag must be 0 or 1, found %d",
                                t->symmetric);
        int64_t cols = t->shape[t->ndim - 1];
        int64_t rows = (int64_t)(numel / (uint64_t)cols);
        return moec_groupwise_section_bytes(rows, cols, t->bits, t->group, t->symmetric,
                                            &bytes[MOEC_SECTION_CODES],
                                            &bytes[MOEC_SECTION_SCALES],
                                            &bytes[MOEC_SECTION_ZEROS], err);
    }
    case MOEC_STORAGE_GGML: {
        const moec_gblock gb = moec_gblock_from_ggml(t->bits);
        if (gb == MOEC_GB_NONE)
            return moec_err_set(err, MOEC_ERR_ARG, "GGML storage: %d is not a supported ggml block type",
                                t->bits);
        if (t->group != 0 || t->symmetric != 0)
            return moec_err_set(err, MOEC_ERR_ARG, "GGML storage takes group/symmetric 0, found %d/%d",
                                t->group, t->symmetric);
        const moec_gblock_traits *tr = moec_gblock_info(gb);
        const uint64_t cols = (uint64_t)t->shape[t->ndim - 1];
        if (cols % (uint64_t)tr->block)
            return moec_err_set(err, MOEC_ERR_ARG, "GGML %s storage: last dimension %" PRIu64
                                " is not a multiple of %d", tr->name, cols, tr->block);
        if (!mul_ok(numel / (uint64_t)tr->block, (uint64_t)tr->bytes, &bytes[MOEC_SECTION_DATA]))
            return moec_err_set(err, MOEC_ERR_ARG, "byte size overflows");
        return MOEC_OK;
    }
    default:
        return moec_err_set(err, MOEC_ERR_ARG, "unknown storage type %d", (int)t->storage);
    }
    if (t->bits != 0 || t->group != 0 || t->symmetric != 0)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s storage takes bits/group/symmetric 0, found %d/%d/%d",
                            moec_storage_name(t->storage), t->bits, t->group, t->symmetric);
    if (!mul_ok(numel, elem, &bytes[MOEC_SECTION_DATA]))
        return moec_err_set(err, MOEC_ERR_ARG, "byte size overflows");
    return MOEC_OK;
}

const char *moec_storage_name(moec_storage s)
{
    switch (s) {
    case MOEC_STORAGE_F32: return "F32";
    case MOEC_STORAGE_F16: return "F16";
    case MOEC_STORAGE_BF16: return "BF16";
    case MOEC_STORAGE_GROUPWISE: return "GROUPWISE";
    case MOEC_STORAGE_GGML: return "GGML";
    default: return "?";
    }
}

const char *moec_section_kind_name(moec_section_kind k)
{
    switch (k) {
    case MOEC_SECTION_DATA: return "DATA";
    case MOEC_SECTION_CODES: return "CODES";
    case MOEC_SECTION_SCALES: return "SCALES";
    case MOEC_SECTION_ZEROS: return "ZEROS";
    default: return "?";
    }
}
