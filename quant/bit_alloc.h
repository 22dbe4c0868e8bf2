/* bit_alloc.h - MC-MoE pre-loading mixed-precision bit allocation (Huang et
 * al., ICLR 2025, arXiv 2410.06270) as an integer linear program solved
 * exactly with GLPK.
 *
 * Binary x[e][k] = 1 when expert e gets the k-th candidate width bits[k]:
 *
 *   minimise   Σ_e Σ_k x[e][k] · φ_e^α · w_e^β · ε[e][k]^α
 *   subject to Σ_k x[e][k] = 1                          for every expert e
 *              Σ_e Σ_k bits[k] · x[e][k] <= avg_bits · E  (E = all experts)
 *              Σ_{e in layer} x[e][top] >= 1,
 *              Σ_{e in layer} x[e][second] >= 1           (diversity, per layer)
 *
 * as in the reference code (precision_solver.py: significance φ^α·w^β times
 * loss^α, α = 1, β = 1.5 on its command line; budget in total bits of a
 * block with "<="; one expert at least at each of the two highest widths of
 * its (1,2,3) space). Differences, all documented choices:
 *  - φ (activation counts) and w (routing-weight sums; the reference sums
 *    the softmax probabilities of the tokens routed to e, before top-k
 *    renormalisation) are normalised to sum 1 over each layer here, as the
 *    reference does with norm_experts; any non-negative scale may be passed;
 *  - the budget is an average over the experts given (one layer, or all
 *    layers for a global budget: pass layer_of so the diversity rows stay per
 *    layer); because widths are integers the budget row uses
 *    floor(avg_bits·E + 1e-9);
 *  - diversity rows are added for each layer with at least 2 experts when
 *    there are at least 2 candidate widths and they fit the budget (cheapest
 *    assignment with them still within budget); otherwise they are dropped
 *    for that layer and counted in the result, never made infeasible;
 *  - a tiny tie-break (1e-6 of the mean objective coefficient per bit) makes
 *    experts whose choice does not change the objective (φ or w = 0) take
 *    the narrower width instead of an arbitrary one;
 *  - ε is whatever the caller measured. The reference's ε: the L2 norm (not
 *    squared) of the MoE block output change over the calibration batches
 *    when that one expert is RTN-quantized (group 128) at b bits. moec's
 *    recipe (quant_mcmoe.c) measures the same change squared, with the
 *    recipe's method, and by default minimises its sum alone (φ, w = 1,
 *    β = 0), since that change already weighs each expert by its routed
 *    tokens and gates.
 */
#ifndef MOEC_QUANT_BIT_ALLOC_H
#define MOEC_QUANT_BIT_ALLOC_H

#include <stdbool.h>

#include "core/error.h"

typedef struct moec_bitalloc_problem {
    int n_experts;         /* E: experts over all layers given, >= 1 */
    const int *layer_of;   /* [E] layer index of each expert (>= 0), NULL = one layer */
    const double *freq;    /* φ [E]: activation counts or shares, >= 0 */
    const double *weight;  /* w [E]: routing-weight sums or shares, >= 0 */
    int n_bits;            /* |B|, 1..16 */
    const int *bits;       /* B [n_bits]: candidate widths, 1..16, strictly increasing */
    const double *loss;    /* ε [E][n_bits] row-major, >= 0, finite */
    double alpha;          /* 1 */
    double beta;           /* 1.5 */
    double avg_bits;       /* budget: average bits per expert */
    bool diversity;        /* the paper's diversity rows; true */
} moec_bitalloc_problem;

/* α = 1, β = 1.5, diversity on; the caller fills the arrays and budget. */
#define MOEC_BITALLOC_PROBLEM_DEFAULT \
    ((moec_bitalloc_problem){.alpha = 1.0, .beta = 1.5, .diversity = true})

typedef struct moec_bitalloc_result {
    int *bits;              /* [E] chosen width per expert; malloc'd, see _free */
    double avg_bits;        /* achieved average over the E experts */
    double objective;       /* Σ φ^α w^β ε^α of the choice (shares normalised per layer) */
    int n_layers;           /* distinct layers seen */
    int diversity_dropped;  /* layers whose diversity rows were left out */
} moec_bitalloc_result;

/* Solves the program. On success res->bits is allocated (release with
 * moec_bitalloc_result_free). Errors: MOEC_ERR_ARG for bad inputs or a budget
 * below the narrowest width (message names the budget and the minimum),
 * MOEC_ERR_NUMERIC when GLPK fails. GLPK keeps global state (its terminal
 * switch is set off and restored around the solve): call from one thread at
 * a time. */
moec_status moec_bitalloc_solve(const moec_bitalloc_problem *p,
                                moec_bitalloc_result *res, moec_err *err);

void moec_bitalloc_result_free(moec_bitalloc_result *res);

#endif
