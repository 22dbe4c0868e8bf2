/* quant_mcmoe.c - MC-MoE's pre-loading mixed precision (Huang et al., ICLR
 * 2025, arXiv 2410.06270) inside the recipe: the measured loss table ε and
 * the per-layer width choice.
 *
 * ε[e][b] = Σ_t g_te² ‖y_e(x_t) − ŷ_e,b(x_t)‖² over the tokens t routed to
 * e, with g_te the gate that weights e's output in token t: the squared
 * change of the MoE block's output when only expert e is quantized at b
 * bits (w1, w3 and w2 together, by the recipe's method; the router reads the
 * block input, so it is unchanged). y_e is the working model's
 * full-precision expert on the same (and equally act-quantized) inputs.
 * MC-MoE's reference code measures the same block output change, as a norm,
 * with RTN at group 128.
 *
 * Two objectives for the same GLPK program (recipe.h, moec_mc_objective):
 *  - OUTPUT (default): minimise Σ_e ε[e][b_e], the layer's squared output
 *    error with cross terms between experts neglected. Frequency and routing
 *    weight already weigh each expert through the sum over its routed tokens
 *    and g², so no further importance factor is applied.
 *  - PAPER: the reference's significance φ_e^α·w_e^β (α = 1, β = 1.5,
 *    φ = routed-token share, w = routing-probability share) times ‖·‖ =
 *    sqrt(ε)^α. Multiplying a loss that already sums over routed tokens by
 *    the share counts frequency twice over and pushes rare experts to the
 *    narrowest width: measured on mixtral-tiny it loses to the importance-
 *    blind split (docs/results/quantization.md).
 * Without calibration windows (moec-calib statistics only) ε is the
 * relative weight error, which knows nothing of routing, so both objectives
 * weigh it by the statistics' shares: φ·w for OUTPUT, φ^α·w^β for PAPER.
 */
#include "quant/quant_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exec/ops.h"
#include "quant/bit_alloc.h"
#include "exec/qgemv.h"

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
    double *g2 = malloc((size_t)rows * sizeof *g2);
    moec_status st = MOEC_OK;
    moec_err err;
    if (!X || !Y || !h1 || !h3 || !g2) {
        st = moec_err_set(&err, MOEC_ERR_NOMEM, "expert loss: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
        const int32_t t = v->tok[v->offsets[e] + r];
        memcpy(X + r * d, v->x + (size_t)t * d, (size_t)d * sizeof *X);
        g2[r] = 0.0;
        for (int j = 0; j < v->top_k; j++)
            if (v->sel[(size_t)t * v->top_k + j] == e)
                g2[r] = (double)v->gates[(size_t)t * v->top_k + j] * v->gates[(size_t)t * v->top_k + j];
    }
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
        const float *yref = v->y + (size_t)v->offsets[e] * d;
        double acc = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            double row = 0.0;
            for (int64_t i = 0; i < d; i++) {
                const double dl = (double)Y[r * d + i] - yref[r * d + i];
                row += dl * dl;
            }
            acc += g2[r] * row;
        }
        c->eps[(size_t)e * c->n_b + b] += acc;
    }
done:
    if (st && !c->st[slot]) {
        c->st[slot] = st;
        c->err[slot] = err;
    }
    free(X), free(Y), free(h1), free(h3), free(g2);
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
    moec_status st = qr_run_pass(w, layer, eps_hook, NULL, c, &c->hs, err);
    free(c);
    if (st)
        return moec_err_prefix(err, "layer %d expert loss pass", layer);
    return MOEC_OK;
}

moec_status moec_quant_alloc_bits(moec_qalloc alloc, const moec_mc_params *mc, int E, const double *count,
                                  const double *gate_sum, const double *eps, bool eps_measured, const int *choices,
                                  int n_choices, double avg_bits, int *out_bits, moec_err *err)
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
    if (!mc || !count || !gate_sum || !eps)
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: MC-MoE needs its parameters, counts, gate sums "
                            "and losses");
    if (mc->objective != MOEC_MC_OUTPUT && mc->objective != MOEC_MC_PAPER)
        return moec_err_set(err, MOEC_ERR_ARG, "bit allocation: unknown MC-MoE objective %d", (int)mc->objective);
    const size_t n = (size_t)E * (size_t)n_choices;
    double *ones = malloc((size_t)E * sizeof *ones), *loss = malloc(n * sizeof *loss);
    if (!ones || !loss) {
        free(ones), free(loss);
        return moec_err_set(err, MOEC_ERR_NOMEM, "bit allocation: out of memory");
    }
    for (int e = 0; e < E; e++)
        ones[e] = 1.0;
    moec_bitalloc_problem p = MOEC_BITALLOC_PROBLEM_DEFAULT;
    p.n_experts = E;
    p.n_bits = n_choices;
    p.bits = choices;
    p.loss = loss;
    p.avg_bits = avg_bits;
    p.diversity = mc->diversity;
    if (mc->objective == MOEC_MC_PAPER) {
        /* ε enters as the norm of the output change, as the reference's */
        for (size_t i = 0; i < n; i++)
            loss[i] = eps_measured ? sqrt(eps[i]) : eps[i];
        p.freq = count;
        p.weight = gate_sum;
        p.alpha = mc->alpha;
        p.beta = mc->beta;
    } else {
        memcpy(loss, eps, n * sizeof *loss);
        p.freq = eps_measured ? ones : count;
        p.weight = eps_measured ? ones : gate_sum;
        p.alpha = 1.0;
        p.beta = eps_measured ? 0.0 : 1.0;
    }
    moec_bitalloc_result res = {0};
    moec_status st = moec_bitalloc_solve(&p, &res, err);
    free(ones), free(loss);
    if (st)
        return st;
    memcpy(out_bits, res.bits, (size_t)E * sizeof *out_bits);
    moec_bitalloc_result_free(&res);
    return MOEC_OK;
}
