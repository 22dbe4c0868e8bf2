/* quant_mcmoe.c - MC-MoE's pre-loading mixed precision (Huang et al., ICLR
 * 2025, arXiv 2410.06270) inside the recipe: the measured loss table ε and
 * the per-layer width choice.
 *
 * Importance (bit_alloc.h): φ_e = routed-token share, w_e = gate share of
 * the layer, both from the layer's own calibration pass (the routing that
 * the partially quantized model really produces), or from moec-calib
 * statistics when no windows are given.
 *
 * ε[e][b] (the "faithful" choice of docs/methods.md): the squared output
 * error Σ_t ‖y_e(x_t) − ŷ_e,b(x_t)‖² of the whole expert (w1, w3 and w2
 * quantized at b together, by the recipe's method) over the tokens routed to
 * e, with y_e the working model's full-precision expert on the same (and
 * equally act-quantized) inputs: the loss MC-MoE's reference measures per
 * expert, restricted to that expert's own tokens rather than the whole
 * block's output change, and squared as in docs/methods.md (the reference
 * takes the norm). The program is solved exactly by GLPK per layer; the
 * reference's Gurobi LP is the same program.
 */
#include "quant/quant_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exec/ops.h"
#include "quant/bit_alloc.h"
#include "quant/qgemv.h"

typedef struct eps_ctx {
    int layer, E, n_b;
    int64_t d, f;
    int act_bits;
    const qr_cand *cand;
    double *eps;
    const moec_moe_view *v;
    moec_pool *pool;
    qr_hook_status hs;
    moec_status st[64];
    moec_err err[64];
} eps_ctx;

static void eps_task(void *vc, int e, int t)
{
    eps_ctx *c = vc;
    const moec_moe_view *v = c->v;
    const int64_t rows = v->offsets[e + 1] - v->offsets[e], d = c->d, f = c->f;
    if (rows == 0)
        return;
    const int slot = t % 64;
    float *X = malloc((size_t)(rows * d) * sizeof *X), *Y = malloc((size_t)(rows * d) * sizeof *Y);
    float *h1 = malloc((size_t)(rows * f) * sizeof *h1), *h3 = malloc((size_t)(rows * f) * sizeof *h3);
    moec_status st = MOEC_OK;
    moec_err err;
    if (!X || !Y || !h1 || !h3) {
        st = moec_err_set(&err, MOEC_ERR_NOMEM, "expert loss: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        memcpy(X + r * d, v->x + (size_t)v->tok[v->offsets[e] + r] * d, (size_t)d * sizeof *X);
    moec_eaq_act_quant(X, rows, d, c->act_bits);
    for (int b = 0; b < c->n_b && !st; b++) {
        const qr_cand *q = &c->cand[(size_t)e * c->n_b + b];
        if ((st = moec_qgemm(&q->w[0].f, X, rows, h1, f, 0, f, &err)) ||
            (st = moec_qgemm(&q->w[1].f, X, rows, h3, f, 0, f, &err)))
            break;
        moec_silu_mul(h1, h3, rows * f);
        moec_eaq_act_quant(h1, rows, f, c->act_bits);
        if ((st = moec_qgemm(&q->w[2].f, h1, rows, Y, d, 0, d, &err)))
            break;
        double acc = 0.0;
        const float *yref = v->y + (size_t)v->offsets[e] * d;
        for (int64_t i = 0; i < rows * d; i++) {
            double dl = (double)Y[i] - yref[i];
            acc += dl * dl;
        }
        c->eps[(size_t)e * c->n_b + b] += acc;
    }
done:
    if (st && !c->st[slot]) {
        c->st[slot] = st;
        c->err[slot] = err;
    }
    free(X), free(Y), free(h1), free(h3);
}

static void eps_hook(void *vc, const moec_moe_view *v)
{
    eps_ctx *c = vc;
    if (v->layer != c->layer || c->hs.st)
        return;
    if (v->n_experts != c->E || v->d != c->d) {
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_INTERNAL, "expert loss pass: layer %d has %d experts",
                                v->layer, v->n_experts);
        return;
    }
    c->v = v;
    memset(c->st, 0, sizeof c->st);
    qr_parallel_for(c->pool, c->E, eps_task, c);
    for (int t = 0; t < 64 && !c->hs.st; t++)
        if (c->st[t]) {
            c->hs.st = c->st[t];
            c->hs.err = c->err[t];
        }
}

moec_status qr_measure_eps(const qr_windows *w, const moec_model *work, moec_pool *pool, int layer,
                           const qr_cand *cand, int n_b, double *eps, moec_err *err)
{
    const moec_layer *L = &work->layers[layer];
    eps_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    c->layer = layer;
    c->E = L->n_experts;
    c->n_b = n_b;
    c->d = work->cfg.hidden_size;
    c->f = work->cfg.expert_ffn;
    c->act_bits = w->act_bits;
    c->cand = cand;
    c->eps = eps;
    c->pool = pool;
    moec_status st = qr_run_pass(w, work, false, 0, eps_hook, NULL, c, &c->hs, err);
    free(c);
    if (st)
        return moec_err_prefix(err, "layer %d expert loss pass", layer);
    return MOEC_OK;
}

moec_status moec_quant_alloc_bits(moec_qalloc alloc, int E, const double *count, const double *gate_sum,
                                  const double *eps, const int *choices, int n_choices, double avg_bits,
                                  double mc_alpha, double mc_beta, bool diversity, int *out_bits, moec_err *err)
{
    if (E < 1 || n_choices < 1 || n_choices > MOEC_QUANT_MAX_CHOICES || !choices || !out_bits ||
        !isfinite(avg_bits))
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: %d experts, %d widths, average %g", E, n_choices,
                            avg_bits);
    for (int k = 0; k < n_choices; k++)
        if (choices[k] < MOEC_QBITS_MIN || choices[k] > MOEC_QBITS_MAX || (k > 0 && choices[k] <= choices[k - 1]))
            return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: width %d at position %d (expected %d..%d, "
                                "strictly increasing)", choices[k], k, MOEC_QBITS_MIN, MOEC_QBITS_MAX);
    if (avg_bits + 1e-9 < choices[0])
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: average %g bits is below the narrowest width %d",
                            avg_bits, choices[0]);
    if (alloc == MOEC_QALLOC_UNIFORM) {
        int lo = 0;
        while (lo + 1 < n_choices && choices[lo + 1] <= avg_bits + 1e-9)
            lo++;
        int64_t left = (int64_t)floor(avg_bits * E + 1e-9) - (int64_t)choices[lo] * E;
        for (int e = 0; e < E; e++) {
            out_bits[e] = choices[lo];
            if (lo + 1 < n_choices && left >= choices[lo + 1] - choices[lo]) {
                out_bits[e] = choices[lo + 1];
                left -= choices[lo + 1] - choices[lo];
            }
        }
        return MOEC_OK;
    }
    if (alloc != MOEC_QALLOC_MCMOE)
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: unknown allocation %d", (int)alloc);
    if (!count || !gate_sum || !eps)
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: MC-MoE needs counts, gate sums and losses");
    moec_bitalloc_problem p = MOEC_BITALLOC_PROBLEM_DEFAULT;
    p.n_experts = E;
    p.freq = count;
    p.weight = gate_sum;
    p.n_bits = n_choices;
    p.bits = choices;
    p.loss = eps;
    p.alpha = mc_alpha;
    p.beta = mc_beta;
    p.avg_bits = avg_bits;
    p.diversity = diversity;
    moec_bitalloc_result res = {0};
    moec_status st = moec_bitalloc_solve(&p, &res, err);
    if (st)
        return st;
    memcpy(out_bits, res.bits, (size_t)E * sizeof *out_bits);
    moec_bitalloc_result_free(&res);
    return MOEC_OK;
}
