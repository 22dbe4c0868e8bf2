/* lowrank.h - products with a weight that may be stored factored.
 *
 * A routed expert's weight is either one dense [rows][cols] tensor or two
 * factors u [rows][rank] · v [rank][cols] (model.h, moec_factored). The
 * factored product runs as two ordinary products, t = x · vᵀ then
 * y = t · uᵀ, so it costs rank · (rows + cols) multiply-adds per token
 * instead of rows · cols and never rebuilds the dense matrix. Each factor
 * can be any dtype moec_matmul runs, group-wise quantized included.
 */
#ifndef MOEC_EXEC_LOWRANK_H
#define MOEC_EXEC_LOWRANK_H

#include <stdbool.h>
#include <stdint.h>

#include "core/threadpool.h"
#include "model/model.h"

/* y[n][rows] (+)= x[n][cols] · Wᵀ, with W = *dense, or u · v when fw is
 * present. t is scratch of n · rank floats for the factored case (unused,
 * may be NULL, for a dense weight). accumulate as moec_matmul. */
void moec_weight_matmul(moec_pool *pool, float *y, const float *x, int64_t n, const moec_tensor *dense,
                        const moec_factored *fw, float *t, bool accumulate);

/* Largest rank among the factored expert weights of m (0 when none): the
 * scratch moec_weight_matmul needs is n times this. */
int64_t moec_model_max_rank(const moec_model *m);

#endif
