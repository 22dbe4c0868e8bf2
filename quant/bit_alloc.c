#include "quant/bit_alloc.h"

#include <glpk.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXPERTS (1 << 20)
#define MAX_LAYER_ID (1 << 20)
#define MAX_WIDTH 16
/* Tie-break per bit, relative to the mean objective coefficient: large enough
 * to survive GLPK's reduced-cost tolerance (1e-7) after normalisation, small
 * enough not to reorder choices that matter. */
#define TIE_BREAK 1e-6

void moec_bitalloc_result_free(moec_bitalloc_result *res)
{
    if (!res)
        return;
    free(res->bits);
    memset(res, 0, sizeof *res);
}

static bool finite_nonneg(double v)
{
    return isfinite(v) && v >= 0.0;
}

static moec_status check_problem(const moec_bitalloc_problem *p, moec_err *err)
{
    if (!p)
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: no problem given");
    if (p->n_experts < 1 || p->n_experts > MAX_EXPERTS)
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: %d experts (expected 1..%d)",
                            p->n_experts, MAX_EXPERTS);
    if (p->n_bits < 1 || p->n_bits > MAX_WIDTH || !p->bits)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "bit allocation: %d candidate widths (expected 1..%d)", p->n_bits,
                            MAX_WIDTH);
    for (int k = 0; k < p->n_bits; k++)
        if (p->bits[k] < 1 || p->bits[k] > MAX_WIDTH || (k > 0 && p->bits[k] <= p->bits[k - 1]))
            return moec_err_set(err, MOEC_ERR_ARG,
                                "bit allocation: candidate width %d at position %d (expected "
                                "1..%d, strictly increasing)",
                                p->bits[k], k, MAX_WIDTH);
    if (!p->freq || !p->weight || !p->loss)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "bit allocation: missing frequency, weight or loss array");
    if (!isfinite(p->alpha) || !isfinite(p->beta) || !isfinite(p->avg_bits))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "bit allocation: alpha %g, beta %g, budget %g must be finite",
                            p->alpha, p->beta, p->avg_bits);
    for (int e = 0; e < p->n_experts; e++) {
        if (!finite_nonneg(p->freq[e]) || !finite_nonneg(p->weight[e]))
            return moec_err_set(err, MOEC_ERR_ARG,
                                "bit allocation: expert %d frequency %g / routing weight %g "
                                "(expected finite >= 0)",
                                e, p->freq[e], p->weight[e]);
        if (p->layer_of && (p->layer_of[e] < 0 || p->layer_of[e] >= MAX_LAYER_ID))
            return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: expert %d in layer %d",
                                e, p->layer_of[e]);
        for (int k = 0; k < p->n_bits; k++) {
            double l = p->loss[(size_t)e * (size_t)p->n_bits + (size_t)k];
            if (!finite_nonneg(l))
                return moec_err_set(err, MOEC_ERR_ARG,
                                    "bit allocation: loss of expert %d at %d bits is %g "
                                    "(expected finite >= 0)",
                                    e, p->bits[k], l);
        }
    }
    return MOEC_OK;
}

moec_status moec_bitalloc_solve(const moec_bitalloc_problem *p,
                                moec_bitalloc_result *res, moec_err *err)
{
    if (!res)
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: no result");
    memset(res, 0, sizeof *res);
    moec_status st = check_problem(p, err);
    if (st != MOEC_OK)
        return st;

    const int E = p->n_experts, K = p->n_bits;
    const double budget_total = p->avg_bits * (double)E;
    const double cap = floor(budget_total + 1e-9);
    const double min_total = (double)E * (double)p->bits[0];
    if (cap < min_total)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "bit allocation: budget %g average bits (%g in total over %d "
                            "experts) is below the narrowest candidate width %d",
                            p->avg_bits, budget_total, E, p->bits[0]);

    int max_layer = 0;
    for (int e = 0; e < E; e++)
        if (p->layer_of && p->layer_of[e] > max_layer)
            max_layer = p->layer_of[e];
    const int L = max_layer + 1;
    double *fsum = calloc((size_t)L, sizeof *fsum);
    double *wsum = calloc((size_t)L, sizeof *wsum);
    int *lsize = calloc((size_t)L, sizeof *lsize);
    char *diverse = calloc((size_t)L, 1);
    double *coef = malloc((size_t)E * (size_t)K * sizeof *coef);
    int *ia = malloc((size_t)(2 * E * K + 2 * E + 1) * sizeof *ia);
    int *ja = malloc((size_t)(2 * E * K + 2 * E + 1) * sizeof *ja);
    double *ar = malloc((size_t)(2 * E * K + 2 * E + 1) * sizeof *ar);
    res->bits = malloc((size_t)E * sizeof *res->bits);
    glp_prob *lp = NULL;
    if (!fsum || !wsum || !lsize || !diverse || !coef || !ia || !ja || !ar || !res->bits) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "bit allocation: out of memory for %d experts",
                          E);
        goto done;
    }

#define LAYER(e) (p->layer_of ? p->layer_of[e] : 0)
    for (int e = 0; e < E; e++) {
        fsum[LAYER(e)] += p->freq[e];
        wsum[LAYER(e)] += p->weight[e];
        lsize[LAYER(e)]++;
    }
    for (int l = 0; l < L; l++)
        if (lsize[l] > 0)
            res->n_layers++;

    /* Diversity rows per layer, in layer order, while the cheapest assignment
     * satisfying them stays within the budget. */
    double need = min_total;
    for (int l = 0; l < L; l++) {
        if (lsize[l] == 0 || !p->diversity)
            continue;
        double extra = K >= 2 ? (double)(p->bits[K - 1] - p->bits[0]) +
                                    (double)(p->bits[K - 2] - p->bits[0])
                              : 0.0;
        if (K >= 2 && lsize[l] >= 2 && need + extra <= cap) {
            diverse[l] = 1;
            need += extra;
        } else {
            res->diversity_dropped++;
        }
    }

    double cmax = 0.0, csum = 0.0;
    for (int e = 0; e < E; e++) {
        int l = LAYER(e);
        double phi = fsum[l] > 0.0 ? p->freq[e] / fsum[l] : 0.0;
        double w = wsum[l] > 0.0 ? p->weight[e] / wsum[l] : 0.0;
        double sig = pow(phi, p->alpha) * pow(w, p->beta);
        for (int k = 0; k < K; k++) {
            double c = sig * pow(p->loss[(size_t)e * (size_t)K + (size_t)k], p->alpha);
            if (!isfinite(c)) {
                st = moec_err_set(err, MOEC_ERR_ARG,
                                  "bit allocation: objective coefficient of expert %d at %d "
                                  "bits overflows",
                                  e, p->bits[k]);
                goto done;
            }
            coef[(size_t)e * (size_t)K + (size_t)k] = c;
            cmax = c > cmax ? c : cmax;
            csum += c;
        }
    }
    const double norm = cmax > 0.0 ? 1.0 / cmax : 1.0;
    const double mean = csum * norm / ((double)E * (double)K);
    const double tie = TIE_BREAK * (mean > 0.0 ? mean : 1.0);

    lp = glp_create_prob();
    glp_set_obj_dir(lp, GLP_MIN);
    glp_add_cols(lp, E * K);
    for (int e = 0; e < E; e++)
        for (int k = 0; k < K; k++) {
            int j = e * K + k + 1;
            glp_set_col_kind(lp, j, GLP_BV);
            glp_set_obj_coef(lp, j, coef[(size_t)e * (size_t)K + (size_t)k] * norm +
                                        tie * (double)p->bits[k]);
        }
    int nrows = E + 1;
    for (int l = 0; l < L; l++)
        nrows += diverse[l] ? 2 : 0;
    glp_add_rows(lp, nrows);
    int nz = 0;
    for (int e = 0; e < E; e++) {
        glp_set_row_bnds(lp, e + 1, GLP_FX, 1.0, 1.0);
        for (int k = 0; k < K; k++) {
            ++nz;
            ia[nz] = e + 1, ja[nz] = e * K + k + 1, ar[nz] = 1.0;
            ++nz;
            ia[nz] = E + 1, ja[nz] = e * K + k + 1, ar[nz] = (double)p->bits[k];
        }
    }
    glp_set_row_bnds(lp, E + 1, GLP_UP, 0.0, cap);
    int row = E + 1;
    for (int l = 0; l < L; l++) {
        if (!diverse[l])
            continue;
        for (int which = 1; which <= 2; which++) {
            row++;
            glp_set_row_bnds(lp, row, GLP_LO, 1.0, 0.0);
            int k = K - which; /* the highest, then the second-highest width */
            for (int e = 0; e < E; e++)
                if (LAYER(e) == l) {
                    ++nz;
                    ia[nz] = row, ja[nz] = e * K + k + 1, ar[nz] = 1.0;
                }
        }
    }
    glp_load_matrix(lp, nz, ia, ja, ar);

    glp_iocp parm;
    glp_init_iocp(&parm);
    parm.presolve = GLP_ON;
    parm.msg_lev = GLP_MSG_OFF;
    int old_term = glp_term_out(GLP_OFF);
    int ret = glp_intopt(lp, &parm);
    glp_term_out(old_term);
    int status = glp_mip_status(lp);
    if (ret != 0 || status != GLP_OPT) {
        st = moec_err_set(err, MOEC_ERR_NUMERIC,
                          "bit allocation: GLPK found no optimal assignment (glp_intopt %d, "
                          "status %d) for budget %g average bits over %d experts",
                          ret, status, p->avg_bits, E);
        goto done;
    }
    double total = 0.0, obj = 0.0;
    for (int e = 0; e < E; e++) {
        int chosen = -1;
        for (int k = 0; k < K; k++)
            if (glp_mip_col_val(lp, e * K + k + 1) > 0.5)
                chosen = k;
        if (chosen < 0) {
            st = moec_err_set(err, MOEC_ERR_INTERNAL,
                              "bit allocation: GLPK left expert %d without a width", e);
            goto done;
        }
        res->bits[e] = p->bits[chosen];
        total += p->bits[chosen];
        obj += coef[(size_t)e * (size_t)K + (size_t)chosen];
    }
#undef LAYER
    res->avg_bits = total / (double)E;
    res->objective = obj;

done:
    if (lp)
        glp_delete_prob(lp);
    free(fsum);
    free(wsum);
    free(lsize);
    free(diverse);
    free(coef);
    free(ia);
    free(ja);
    free(ar);
    if (st != MOEC_OK)
        moec_bitalloc_result_free(res);
    return st;
}
