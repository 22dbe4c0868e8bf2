/* average.h - frequency-weighted averaging of same-shaped matrices.
 *
 * The `average` merge baseline (M-SMoE style, methods.md "Sub-MoE"):
 *   W_G = sum_e w_e W_e,   w_e = weight_e / sum_e weight_e.
 * The same rule gives a merged group's router row (the rows of its members,
 * weighted by routing frequency), so it is written for any flat float array.
 *
 * Weights are routing frequencies or counts: each must be finite and >= 0 and
 * at least one must be > 0. Sums are formed in double and rounded to float
 * once, so the order of members does not change the result.
 */
#ifndef MOEC_MERGE_AVERAGE_H
#define MOEC_MERGE_AVERAGE_H

#include <stddef.h>

#include "core/error.h"

/* Normalises m routing weights into out[m] (sum 1). weights == NULL means
 * uniform. Errors: MOEC_ERR_ARG for m < 1, a NaN/Inf or negative weight
 * (naming its index), or weights that are all zero. */
moec_status moec_merge_weights_normalise(const float *weights, int m, double *out,
                                         moec_err *err);

/* out[i] = sum_e w_e * W[e][i] for i < n, with w normalised as above.
 *
 * W[e] points to member e's n floats (not owned, not modified); out is the
 * caller's buffer of n floats and may not alias any member. A NaN or Inf in a
 * member is refused with MOEC_ERR_NUMERIC naming the member and the element,
 * so a damaged checkpoint never silently poisons the merged expert. */
moec_status moec_average_weighted(const float *const *W, int m, size_t n,
                                  const float *weights, float *out, moec_err *err);

#endif
