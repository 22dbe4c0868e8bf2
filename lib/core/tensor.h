/* tensor.h - a typed view of a block of weights.
 *
 * A moec_tensor never owns its data: it points into an mmap'd file or into a
 * buffer owned by someone else (a model's arena, a container reader). Matrices
 * follow the Hugging Face layout: a linear layer's weight is [out][in],
 * row-major, so shape[0] = out features and shape[1] = in features.
 */
#ifndef MOEC_CORE_TENSOR_H
#define MOEC_CORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

#define MOEC_MAX_DIMS 4

struct moec_qformat; /* group-wise quantization layout, core/qformat.h */

typedef struct moec_tensor {
    moec_dtype dtype;
    int ndim;                        /* 0 means "absent" */
    int64_t shape[MOEC_MAX_DIMS];    /* row-major, shape[0] outermost */
    const void *data;                /* not owned */
    size_t nbytes;                   /* bytes at data */
    const struct moec_qformat *q;    /* set iff dtype == MOEC_DT_QUANT */
} moec_tensor;

static inline int moec_tensor_present(const moec_tensor *t) { return t->ndim > 0; }

static inline int64_t moec_tensor_numel(const moec_tensor *t)
{
    int64_t n = t->ndim > 0 ? 1 : 0;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* For a 2-D weight: rows (out features) and columns (in features). */
static inline int64_t moec_tensor_rows(const moec_tensor *t) { return t->shape[0]; }
static inline int64_t moec_tensor_cols(const moec_tensor *t)
{
    return t->ndim >= 2 ? t->shape[1] : t->shape[0];
}

#endif
