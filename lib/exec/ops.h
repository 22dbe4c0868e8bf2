/* ops.h - the executor's elementwise kernels, each on float32 rows.
 * Matrix products live in matmul.h; these are the cheap steps between them.
 * Built in several ISA versions (target_clones) picked at load time. */
#ifndef MOEC_EXEC_OPS_H
#define MOEC_EXEC_OPS_H

#include <stdint.h>

#include "core/tensor.h"

/* out[i] = x[i] / sqrt(mean(x²) + eps) * w[i] for one row of n; w any compute dtype. */
void moec_rmsnorm(float *out, const float *x, const moec_tensor *w, int n, float eps);
/* Same on `rows` consecutive rows. */
void moec_rmsnorm_rows(float *out, const float *x, const moec_tensor *w, int rows, int n, float eps);

/* Rotates one head of hd values in place, HF rotate-half layout:
 * (x[i], x[i+hd/2]) by angle pos·inv_freq[i]; cs holds cos then sin [2][hd/2]. */
void moec_rope_head(float *x, const float *cs, int hd);

/* In-place softmax over n values (max-subtracted, float32 accumulation). */
void moec_softmax(float *x, int n);

/* a[i] = silu(a[i]) * b[i] */
void moec_silu_mul(float *a, const float *b, int64_t n);

/* y[i] += s * x[i] */
void moec_axpy(float *y, const float *x, float s, int64_t n);

/* Dot product in float32 with several accumulators. */
float moec_dot(const float *a, const float *b, int n);

/* y[i] = y[i] * s + x[i] * t (online-softmax rescaling) */
void moec_scale_add(float *y, float s, const float *x, float t, int n);

/* Adds a 1-D bias tensor of n values to each of `rows` rows of width n. */
void moec_add_bias_rows(float *y, const moec_tensor *b, int rows, int n);

#endif
