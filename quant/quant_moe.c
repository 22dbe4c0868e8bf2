/* quant_moe.c - one MoE layer of the recipe (recipe.h): the calibration
 * passes, EAQuant's smoothing and alignment search, the GPTQ factors, the
 * candidate widths and MC-MoE's choice, w1/w3 then w2. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant_internal.h"
#include "core/dtype.h"
#include "quant/eaquant.h"
#include "quant/rtn.h"

/* EAQuant α grid of the alignment search ("no smoothing" is tried too). */
static const float align_alphas[] = {0.1f, 0.3f, 0.5f, 0.7f, 0.9f};

/* H[i][j] /= s_i s_j on the upper triangle: the Hessian of inputs x/s. */
static void scale_hessian(double *H, int64_t d, const float *s)
{
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i; j < d; j++)
            H[(size_t)i * d + j] /= (double)s[i] * s[j];
}


typedef struct moe_layer {
    int l, E, d, k, nb;      /* nb candidate widths */
    int64_t f, fs;
    int widths[MOEC_QUANT_MAX_CHOICES];
    float **w1, **w3, **w2;  /* [E] float weights (w1/w3 smoothed once smoothing is applied) */
    float *sh1, *sh3, *sh2;  /* shared expert */
    double **H1, **H2;       /* [E] */
    double *Hs1, *Hs2;
    int64_t *n_h;
    int64_t *routed;
    double *gate_sum;
    moec_eaq_balance *bal;
    float *absmax;
    qr_moe_collect c;
    float *s;                /* smoothing factors, NULL = none */
    int clip_w13;            /* clip grid of w1/w3 */
    qr_hjob *h1j;               /* [E + 1]: experts, then the shared expert */
    qr_cand *cand;           /* [E][nb] */
    int *bits;               /* [E] */
} moe_layer;

static void moe_layer_free(moe_layer *M)
{
    for (int e = 0; e < M->E; e++) {
        if (M->w1)
            free(M->w1[e]);
        if (M->w3)
            free(M->w3[e]);
        if (M->w2)
            free(M->w2[e]);
        if (M->H1)
            free(M->H1[e]);
        if (M->H2)
            free(M->H2[e]);
        for (int b = 0; M->cand && b < M->nb; b++)
            for (int i = 0; i < 3; i++)
                moec_qmatrix_free(&M->cand[(size_t)e * M->nb + b].w[i]);
    }
    free(M->w1), free(M->w3), free(M->w2), free(M->H1), free(M->H2);
    free(M->sh1), free(M->sh3), free(M->sh2), free(M->Hs1), free(M->Hs2);
    free(M->n_h), free(M->routed), free(M->gate_sum), free(M->absmax);
    free(M->c.sx), free(M->c.sprobs), free(M->c.ssel), free(M->c.sgates), free(M->c.sshared);
    moec_eaq_balance_free(M->bal);
    qr_hjobs_free(M->h1j, M->E + 1);
    free(M->cand);
    free(M->bits);
}

static double *zeros_d(int64_t n) { return calloc((size_t)n, sizeof(double)); }

/* The first pass of the layer and what it feeds: Hessians of w1/w3 (and,
 * for MC-MoE's candidates, of w2 from full-precision intermediates), the
 * routing counts, the balance, EAQuant's maxima and sample. */
static moec_status moe_first_pass(qr_recipe_run *R, moe_layer *M, bool want_h2fp, moec_err *err)
{
    const moec_quant_recipe *r = R->r;
    const bool gptq = r->method == MOEC_QMETHOD_GPTQ;
    const int E = M->E, d = M->d;
    qr_moe_collect *c = &M->c;
    memset(c, 0, sizeof *c);
    c->layer = M->l;
    c->E = E;
    c->d = d;
    c->k = M->k;
    c->f = M->f;
    c->fs = M->fs;
    c->act_bits = r->act_bits;
    c->pool = R->pool;
    c->routed = M->routed;
    c->gate_sum = M->gate_sum;
    if (gptq) {
        c->H1 = M->H1;
        c->n_h = M->n_h;
        for (int e = 0; e < E; e++)
            if (!(M->H1[e] = zeros_d((int64_t)d * d)))
                return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for expert Hessians");
        if (want_h2fp) {
            c->H2 = M->H2;
            for (int e = 0; e < E; e++)
                if (!(M->H2[e] = zeros_d(M->f * M->f)))
                    return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for expert Hessians");
        }
        if (M->fs > 0) {
            if (!(M->Hs1 = zeros_d((int64_t)d * d)))
                return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for shared-expert Hessians");
            c->Hs1 = M->Hs1;
        }
        if (r->balance) {
            const int Mmin = r->balance_min ? r->balance_min : d;
            R->rep->balance_min = Mmin;
            moec_status st = moec_eaq_balance_new(&M->bal, E, d, Mmin, err);
            if (st)
                return st;
            c->bal = M->bal;
        }
    }
    if (r->smooth) {
        if (!(M->absmax = calloc((size_t)d, sizeof *M->absmax)))
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        c->absmax = M->absmax;
        if (r->align) {
            c->cap = r->align_sample;
            c->stride = R->w.tokens / c->cap > 1 ? R->w.tokens / c->cap : 1;
            c->sx = malloc((size_t)c->cap * d * sizeof *c->sx);
            c->sprobs = malloc((size_t)c->cap * E * sizeof *c->sprobs);
            c->ssel = malloc((size_t)c->cap * M->k * sizeof *c->ssel);
            c->sgates = malloc((size_t)c->cap * M->k * sizeof *c->sgates);
            c->sshared = malloc((size_t)c->cap * sizeof *c->sshared);
            if (!c->sx || !c->sprobs || !c->ssel || !c->sgates || !c->sshared)
                return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the token sample");
        }
    }
    qr_progress(R, "expert pass", M->l);
    moec_status st = qr_collect_moe(&R->w, R->work, c, err);
    if (st)
        return st;
    R->rep->passes++;
    moec_quant_layer_report *LR = &R->rep->layers[M->l];
    for (int e = 0; e < E; e++) {
        LR->tokens[e] = M->routed[e];
        if (M->bal)
            LR->near_miss[e] = moec_eaq_balance_near_miss(M->bal, e);
    }
    if (M->bal && (st = qr_moe_add_extras(c, M->bal, NULL, LR->extra, err)))
        return st;
    return MOEC_OK;
}

/* EAQuant smoothing of the layer: factors by the alignment search or by a
 * fixed α, folded into the working model (and the output's norm, router and
 * gate), the w1/w3 float copies and the w1/w3 Hessians. */
static moec_status moe_smooth(qr_recipe_run *R, moe_layer *M, moec_err *err)
{
    const moec_quant_recipe *r = R->r;
    const int E = M->E, d = M->d, l = M->l;
    moec_quant_layer_report *LR = &R->rep->layers[l];
    moec_status st = MOEC_OK;
    if (!(M->s = malloc((size_t)d * sizeof *M->s)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if (r->align) {
        const qr_moe_collect *c = &M->c;
        const int nf = E + (M->fs > 0 ? 1 : 0), k = M->k, n = c->n_sample;
        moec_eaq_ffn *ff = calloc((size_t)nf, sizeof *ff);
        int32_t *tok = malloc((size_t)(n * k + n + 1) * sizeof *tok);
        float *wt = malloc((size_t)(n * k + n + 1) * sizeof *wt);
        float *router = NULL;
        if (!ff || !tok || !wt) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the alignment search");
            goto search_done;
        }
        char what[64];
        snprintf(what, sizeof what, "layer %d router", l);
        if ((st = qr_to_float(&R->src->layers[l].router, what, &router, err)))
            goto search_done;
        /* sample rows grouped by block: routed experts by selection, then the shared expert on every token */
        int used = 0;
        for (int e = 0; e < E; e++) {
            ff[e] = (moec_eaq_ffn){.w1 = M->w1[e], .w3 = M->w3[e], .w2 = M->w2[e], .f = M->f,
                                   .H = M->H1 ? M->H1[e] : NULL, .n_h = M->n_h ? M->n_h[e] : 0,
                                   .bits = M->widths[M->nb > 1 ? M->nb / 2 : 0], .row_tok = tok + used,
                                   .row_w = wt + used};
            for (int t = 0; t < n; t++)
                for (int j = 0; j < k; j++)
                    if (c->ssel[(size_t)t * k + j] == e) {
                        tok[used] = t;
                        wt[used++] = c->sgates[(size_t)t * k + j];
                        ff[e].n_rows++;
                    }
        }
        if (M->fs > 0) {
            ff[E] = (moec_eaq_ffn){.w1 = M->sh1, .w3 = M->sh3, .w2 = M->sh2, .f = M->fs, .H = M->Hs1,
                                   .n_h = M->c.n_s, .bits = r->bits, .n_rows = n, .row_tok = tok + used,
                                   .row_w = wt + used};
            for (int t = 0; t < n; t++) {
                tok[used] = t;
                wt[used++] = c->sshared[t];
            }
        }
        /* the search's width: the recipe's, or (mixed precision) the smallest choice >= the average */
        int sb = r->bits;
        if (r->avg_bits > 0)
            for (int q = r->n_choices - 1; q >= 0; q--)
                if (r->choices[q] >= r->avg_bits - 1e-9)
                    sb = r->choices[q];
        for (int e = 0; e < E; e++)
            ff[e].bits = sb;
        moec_eaq_search p = {.d = d, .n_experts = E, .top_k = k, .n_ffn = nf, .ffn = ff, .router = router,
                             .n_tok = n, .x = c->sx, .probs = c->sprobs, .x_absmax = M->absmax,
                             .gptq_min_tokens = r->gptq_min_tokens, .act_bits = r->act_bits,
                             .lambda = r->align_lambda, .n_alpha = (int)(sizeof align_alphas / sizeof *align_alphas),
                             .alphas = align_alphas, .try_clip = r->clip_grid == 0};
        p.gptq = MOEC_GPTQ_OPTS_DEFAULT;
        p.gptq.q.group = r->group;
        p.gptq.q.symmetric = r->symmetric;
        p.gptq.percdamp = r->percdamp;
        p.gptq.act_order = r->act_order;
        if (r->method != MOEC_QMETHOD_GPTQ)
            for (int i = 0; i < nf; i++)
                ff[i].H = NULL;
        moec_eaq_choice ch = {.alpha = -1.0f};
        qr_progress(R, "alignment search", l);
        if ((st = moec_eaq_search_run(&p, R->pool, M->s, &ch, err))) {
            moec_err_prefix(err, "layer %d", l);
            goto search_done;
        }
        LR->smooth_alpha = ch.alpha;
        LR->clip = ch.clip || r->clip_grid > 0;
        M->clip_w13 = ch.clip ? QR_CLIP_GRID_SEARCH : r->clip_grid;
        for (int i = 0; i < 2; i++) {
            LR->align_err[i] = ch.err[i];
            LR->align_kl[i] = ch.kl[i];
            LR->align_agree[i] = ch.agree[i];
        }
    search_done:
        free(ff), free(tok), free(wt), free(router);
        if (st)
            return st;
        if (ch.alpha < 0) {
            free(M->s);
            M->s = NULL;
            return MOEC_OK;
        }
    } else {
        if ((st = moec_eaq_smooth_vector(R->work, l, M->absmax, r->smooth_alpha, M->s, err)))
            return st;
        LR->smooth_alpha = r->smooth_alpha;
    }
    R->smooth[l] = M->s;
    if ((st = moec_eaq_smooth_apply(R->work, l, M->s, err)))
        return st;
    /* the output keeps the smoothed norm, router and gate as F32 copies of the working model's */
    moec_layer *WL = &R->work->layers[l], *OL = &R->out->layers[l];
    const moec_tensor *from[3] = {&WL->ffn_norm, &WL->router, &WL->shared_gate};
    moec_tensor *to[3] = {&OL->ffn_norm, &OL->router, &OL->shared_gate};
    for (int i = 0; i < 3; i++) {
        if (!moec_tensor_present(from[i]))
            continue;
        moec_tensor nt;
        if ((st = moec_model_new_tensor(R->out, &nt, MOEC_DT_F32, from[i]->ndim == 1 ? from[i]->shape[0]
                                                                               : from[i]->shape[0],
                                        from[i]->ndim == 1 ? 0 : from[i]->shape[1], err)))
            return st;
        memcpy((void *)nt.data, from[i]->data, nt.nbytes);
        *to[i] = nt;
    }
    for (int e = 0; e < E; e++) {
        for (int64_t q = 0; q < M->f * d; q++) {
            M->w1[e][q] *= M->s[q % d];
            M->w3[e][q] *= M->s[q % d];
        }
        if (M->H1 && M->H1[e])
            scale_hessian(M->H1[e], d, M->s);
    }
    if (M->fs > 0) {
        for (int64_t q = 0; q < M->fs * d; q++) {
            M->sh1[q] *= M->s[q % d];
            M->sh3[q] *= M->s[q % d];
        }
        if (M->Hs1)
            scale_hessian(M->Hs1, d, M->s);
    }
    return MOEC_OK;
}

/* GPTQ factors of the w1/w3 Hessians (experts, then the shared expert);
 * experts with too few rows get none (RTN, reported). */
static moec_status moe_w13_factors(qr_recipe_run *R, moe_layer *M, moec_err *err)
{
    const int E = M->E;
    moec_quant_layer_report *LR = &R->rep->layers[M->l];
    if (!(M->h1j = calloc((size_t)E + 1, sizeof *M->h1j)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if (R->r->method != MOEC_QMETHOD_GPTQ)
        return MOEC_OK;
    for (int e = 0; e < E; e++) {
        qr_hjob *j = &M->h1j[e];
        snprintf(j->name, sizeof j->name, "layer %d expert %d w1/w3", M->l, e);
        if (M->n_h[e] < R->r->gptq_min_tokens) {
            LR->rtn_fallback[e] = true;
            qr_note(R, "layer %d expert %d: %lld calibration rows (%lld routed + %lld balance) < %d: RTN instead of GPTQ",
                 M->l, e, (long long)M->n_h[e], (long long)LR->tokens[e], (long long)LR->extra[e],
                 R->r->gptq_min_tokens);
            continue;
        }
        *j = (qr_hjob){.H = M->H1[e], .cols = M->d, .n = M->n_h[e]};
        snprintf(j->name, sizeof j->name, "layer %d expert %d w1/w3", M->l, e);
    }
    if (M->fs > 0 && M->c.n_s >= R->r->gptq_min_tokens) {
        M->h1j[E] = (qr_hjob){.H = M->Hs1, .cols = M->d, .n = M->c.n_s};
        snprintf(M->h1j[E].name, sizeof M->h1j[E].name, "layer %d shared expert w1/w3", M->l);
    }
    LR->gptq_retries += qr_run_hjobs(R, M->h1j, E + 1);
    for (int e = 0; e < E; e++)
        if (M->h1j[e].H && !M->h1j[e].hinv)
            LR->rtn_fallback[e] = true;
    return MOEC_OK;
}

static int width_index(const moe_layer *M, int b)
{
    for (int i = 0; i < M->nb; i++)
        if (M->widths[i] == b)
            return i;
    return -1;
}

/* w1/w3 of every expert at every candidate width (and, for MC-MoE, w2 from
 * the full-precision intermediate's Hessian). */
static moec_status moe_candidates(qr_recipe_run *R, moe_layer *M, bool with_w2, moec_err *err)
{
    const int E = M->E, nb = M->nb;
    const int64_t d = M->d, f = M->f;
    const moec_quant_recipe *r = R->r;
    qr_hjob *h2 = NULL;
    qr_mjob *mj = NULL;
    int nm = 0;
    moec_status st = MOEC_OK;
    if (!(M->cand = calloc((size_t)E * nb, sizeof *M->cand)) ||
        !(mj = calloc((size_t)E * nb * 3, sizeof *mj))) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (with_w2 && r->method == MOEC_QMETHOD_GPTQ) {
        if (!(h2 = calloc((size_t)E, sizeof *h2))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int e = 0; e < E; e++)
            if (!R->rep->layers[M->l].rtn_fallback[e]) {
                h2[e] = (qr_hjob){.H = M->H2[e], .cols = f, .n = M->n_h[e]};
                snprintf(h2[e].name, sizeof h2[e].name, "layer %d expert %d w2 (candidates)", M->l, e);
            }
        qr_run_hjobs(R, h2, E);
    }
    for (int e = 0; e < E; e++)
        for (int b = 0; b < nb; b++) {
            const int bits = M->widths[b];
            const moec_gptq_hinv *h = M->h1j[e].hinv;
            mj[nm] = qr_mjob_make(M->w1[e], f, d, bits, r->group, M->clip_w13, h, "layer %d expert %d w1 %d-bit",
                                  M->l, e, bits);
            mj[nm++].gtype = qr_gtype(R, M->l, MOEC_GS_GATE);
            mj[nm] = qr_mjob_make(M->w3[e], f, d, bits, r->group, M->clip_w13, h, "layer %d expert %d w3 %d-bit",
                                  M->l, e, bits);
            mj[nm++].gtype = qr_gtype(R, M->l, MOEC_GS_UP);
            if (with_w2) {
                mj[nm] = qr_mjob_make(M->w2[e], d, f, bits, r->group, r->clip_grid, h2 ? h2[e].hinv : NULL,
                                      "layer %d expert %d w2 %d-bit", M->l, e, bits);
                mj[nm++].gtype = qr_gtype(R, M->l, MOEC_GS_DOWN);
            }
        }
    if ((st = qr_run_mjobs(R, mj, nm, err)))
        goto done;
    nm = 0;
    for (int e = 0; e < E; e++)
        for (int b = 0; b < nb; b++) {
            qr_cand *c = &M->cand[(size_t)e * nb + b];
            for (int i = 0; i < (with_w2 ? 3 : 2); i++) { /* ownership moves to the candidate */
                c->w[i] = mj[nm].q;
                memset(&mj[nm].q, 0, sizeof mj[nm].q);
                nm++;
            }
            c->have_w2 = with_w2;
        }
done:
    qr_mjobs_free(mj, nm);
    qr_hjobs_free(h2, h2 ? E : 0);
    return st;
}

/* Relative weight error of a candidate, the ε fallback without windows. */
static double weight_error(const float *W, const moec_qformat *q)
{
    float *row = malloc((size_t)q->cols * sizeof *row);
    if (!row)
        return NAN;
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < q->rows; r++) {
        moec_qformat_dequant_row(q, r, row);
        for (int64_t c = 0; c < q->cols; c++) {
            const double w = W[(size_t)r * q->cols + c], dl = w - row[c];
            num += dl * dl;
            den += w * w;
        }
    }
    free(row);
    return den > 0 ? num / den : num;
}

/* MC-MoE: the loss table and the program. */
static moec_status moe_mcmoe(qr_recipe_run *R, moe_layer *M, moec_err *err)
{
    const int E = M->E, nb = M->nb;
    moec_quant_layer_report *LR = &R->rep->layers[M->l];
    double *eps = LR->eps;
    const double *count, *gsum = M->gate_sum;
    double *cnt = NULL;
    moec_status st;
    if (R->have_windows) {
        qr_progress(R, "expert loss pass", M->l);
        if ((st = qr_measure_eps(&R->w, R->work, R->pool, M->l, M->cand, nb, eps, err)))
            return st;
        R->rep->passes++;
        if (!(cnt = malloc((size_t)E * sizeof *cnt)))
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        for (int e = 0; e < E; e++)
            cnt[e] = (double)M->routed[e];
        count = cnt;
    } else {
        for (int e = 0; e < E; e++)
            for (int b = 0; b < nb; b++) {
                const qr_cand *c = &M->cand[(size_t)e * nb + b];
                eps[(size_t)e * nb + b] = weight_error(M->w1[e], &c->w[0].f) + weight_error(M->w3[e], &c->w[1].f) +
                                          weight_error(M->w2[e], &c->w[2].f);
            }
        const moec_layer_stats *ls = &R->stats->layers[M->l];
        count = ls->count;
        gsum = ls->gate_sum;
    }
    st = moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &R->r->mc, E, count, gsum, eps, R->have_windows, M->widths, nb,
                               R->r->avg_bits, M->bits, err);
    free(cnt);
    if (st)
        return moec_err_prefix(err, "layer %d", M->l);
    return MOEC_OK;
}

/* Shared expert: w1/w3 at the recipe's width with their factor, then (after
 * the w2 pass) w2. */
moec_status qr_moe_layer_run(qr_recipe_run *R, int l, moec_err *err)
{
    /* without smoothing or MC-MoE no step needs the layer's experts together */
    if (!R->r->smooth && !(R->r->avg_bits > 0 && R->r->alloc == MOEC_QALLOC_MCMOE))
        return qr_moe_experts_run(R, l, err);
    const moec_quant_recipe *r = R->r;
    const moec_layer *SL = &R->src->layers[l];
    moec_layer *WL = &R->work->layers[l], *OL = &R->out->layers[l];
    moec_quant_layer_report *LR = &R->rep->layers[l];
    const bool gptq = r->method == MOEC_QMETHOD_GPTQ, mixed = r->avg_bits > 0,
               mcmoe = mixed && r->alloc == MOEC_QALLOC_MCMOE;
    moe_layer M = {.l = l, .E = SL->n_experts, .d = R->src->cfg.hidden_size, .k = R->src->cfg.top_k,
                   .f = R->src->cfg.expert_ffn, .fs = R->src->cfg.shared_ffn, .clip_w13 = r->clip_grid};
    const int E = M.E, d = M.d;
    const int64_t f = M.f, fs = M.fs;
    moec_status st = MOEC_OK;
    qr_mjob *mj = NULL;
    qr_hjob *h2j = NULL;
    int nm = 0;
    char what[80];
    M.w1 = calloc((size_t)E, sizeof *M.w1);
    M.w3 = calloc((size_t)E, sizeof *M.w3);
    M.w2 = calloc((size_t)E, sizeof *M.w2);
    M.H1 = calloc((size_t)E, sizeof *M.H1);
    M.H2 = calloc((size_t)E, sizeof *M.H2);
    M.n_h = calloc((size_t)E, sizeof *M.n_h);
    M.routed = calloc((size_t)E, sizeof *M.routed);
    M.gate_sum = calloc((size_t)E, sizeof *M.gate_sum);
    M.bits = calloc((size_t)E, sizeof *M.bits);
    if (!M.w1 || !M.w3 || !M.w2 || !M.H1 || !M.H2 || !M.n_h || !M.routed || !M.gate_sum || !M.bits) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int e = 0; e < E && !st; e++) {
        snprintf(what, sizeof what, "layer %d expert %d w1", l, e);
        if (!(st = qr_to_float(&SL->experts[e].w1, what, &M.w1[e], err))) {
            snprintf(what, sizeof what, "layer %d expert %d w3", l, e);
            if (!(st = qr_to_float(&SL->experts[e].w3, what, &M.w3[e], err))) {
                snprintf(what, sizeof what, "layer %d expert %d w2", l, e);
                st = qr_to_float(&SL->experts[e].w2, what, &M.w2[e], err);
            }
        }
    }
    if (!st && fs > 0) {
        snprintf(what, sizeof what, "layer %d shared expert", l);
        if (!(st = qr_to_float(&SL->shared.w1, what, &M.sh1, err)) && !(st = qr_to_float(&SL->shared.w3, what, &M.sh3, err)))
            st = qr_to_float(&SL->shared.w2, what, &M.sh2, err);
    }
    if (st)
        goto done;

    /* candidate widths */
    if (!mixed) {
        M.nb = 1;
        M.widths[0] = r->bits;
        for (int e = 0; e < E; e++)
            M.bits[e] = r->bits;
    } else if (!mcmoe) {
        if ((st = moec_quant_alloc_bits(MOEC_QALLOC_UNIFORM, NULL, E, NULL, NULL, NULL, false, r->choices,
                                        r->n_choices, r->avg_bits, M.bits, err)))
            goto done;
        for (int e = 0; e < E; e++)
            if (width_index(&M, M.bits[e]) < 0)
                M.widths[M.nb++] = M.bits[e];
        for (int i = 1; i < M.nb; i++) /* ascending, for the report and the search width */
            for (int j = i; j > 0 && M.widths[j] < M.widths[j - 1]; j--) {
                int t = M.widths[j];
                M.widths[j] = M.widths[j - 1];
                M.widths[j - 1] = t;
            }
    } else {
        M.nb = r->n_choices;
        memcpy(M.widths, r->choices, (size_t)M.nb * sizeof *M.widths);
    }

    if (R->have_windows && (gptq || r->smooth || mcmoe)) {
        if ((st = moe_first_pass(R, &M, mcmoe && gptq, err)))
            goto done;
    } else if (!R->have_windows && R->stats) {
        for (int e = 0; e < E; e++)
            LR->tokens[e] = (int64_t)R->stats->layers[l].count[e];
    }
    if (r->smooth && (st = moe_smooth(R, &M, err)))
        goto done;
    if ((st = moe_w13_factors(R, &M, err)))
        goto done;
    qr_progress(R, "quantizing experts", l);
    if ((st = moe_candidates(R, &M, mcmoe, err)))
        goto done;
    if (mcmoe && (st = moe_mcmoe(R, &M, err)))
        goto done;
    for (int e = 0; e < E; e++)
        LR->bits[e] = M.bits[e];

    /* chosen w1/w3 into the working model and the output */
    for (int e = 0; e < E && !st; e++) {
        const qr_cand *c = &M.cand[(size_t)e * M.nb + width_index(&M, M.bits[e])];
        char name[128];
        snprintf(name, sizeof name, "layer %d expert %d w1", l, e);
        if (!(st = qr_install(R, &WL->experts[e].w1, &OL->experts[e].w1, &c->w[0].f, name, err))) {
            snprintf(name, sizeof name, "layer %d expert %d w3", l, e);
            st = qr_install(R, &WL->experts[e].w3, &OL->experts[e].w3, &c->w[1].f, name, err);
        }
    }
    if (!st && fs > 0) {
        qr_mjob sj[2] = {qr_mjob_make(M.sh1, fs, d, r->bits, r->group, M.clip_w13, M.h1j[E].hinv,
                                "layer %d shared expert w1", l),
                      qr_mjob_make(M.sh3, fs, d, r->bits, r->group, M.clip_w13, M.h1j[E].hinv,
                                "layer %d shared expert w3", l)};
        sj[0].gtype = qr_gtype(R, l, MOEC_GS_SH_GATE);
        sj[1].gtype = qr_gtype(R, l, MOEC_GS_SH_UP);
        if (!(st = qr_run_mjobs(R, sj, 2, err)) &&
            !(st = qr_install(R, &WL->shared.w1, &OL->shared.w1, &sj[0].q.f, sj[0].name, err)))
            st = qr_install(R, &WL->shared.w3, &OL->shared.w3, &sj[1].q.f, sj[1].name, err);
        moec_qmatrix_free(&sj[0].q);
        moec_qmatrix_free(&sj[1].q);
    }
    if (st)
        goto done;

    /* w2: GPTQ from intermediates through the quantized w1/w3 (one more pass), else RTN */
    if (gptq) {
        qr_moe_collect *c = &M.c;
        c->H1 = NULL;
        c->Hs1 = NULL;
        c->H2 = M.H2;
        c->bal = NULL;
        c->absmax = NULL;
        c->routed = NULL;
        c->gate_sum = NULL;
        c->n_h = M.n_h;
        memset(M.n_h, 0, (size_t)E * sizeof *M.n_h);
        c->n_s = 0;
        c->cap = 0;
        for (int e = 0; e < E; e++) {
            free(M.H2[e]);
            if (!(M.H2[e] = zeros_d(f * f))) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for expert Hessians");
                goto done;
            }
        }
        if (fs > 0) {
            if (!(M.Hs2 = zeros_d(fs * fs))) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for shared-expert Hessians");
                goto done;
            }
            c->Hs2 = M.Hs2;
        }
        free(c->sx), free(c->sprobs), free(c->ssel), free(c->sgates), free(c->sshared);
        c->sx = c->sprobs = c->sgates = c->sshared = NULL;
        c->ssel = NULL;
        qr_progress(R, "w2 pass", l);
        st = qr_collect_moe(&R->w, R->work, c, err);
        if (st)
            goto done;
        R->rep->passes++;
        if (M.bal && (st = qr_moe_add_extras(c, M.bal, M.s, NULL, err)))
            goto done;
        if (!(h2j = calloc((size_t)E + 1, sizeof *h2j))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int e = 0; e < E; e++)
            if (!LR->rtn_fallback[e]) {
                h2j[e] = (qr_hjob){.H = M.H2[e], .cols = f, .n = M.n_h[e]};
                snprintf(h2j[e].name, sizeof h2j[e].name, "layer %d expert %d w2", l, e);
            }
        if (fs > 0 && c->n_s >= r->gptq_min_tokens) {
            h2j[E] = (qr_hjob){.H = M.Hs2, .cols = fs, .n = c->n_s};
            snprintf(h2j[E].name, sizeof h2j[E].name, "layer %d shared expert w2", l);
        }
        LR->gptq_retries += qr_run_hjobs(R, h2j, E + 1);
    }
    if (!(mj = calloc((size_t)E + 1, sizeof *mj))) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int e = 0; e < E; e++) {
        qr_cand *c = &M.cand[(size_t)e * M.nb + width_index(&M, M.bits[e])];
        if (!gptq && c->have_w2) { /* RTN's w2 candidate is already the answer */
            mj[nm] = qr_mjob_make(M.w2[e], d, f, M.bits[e], r->group, r->clip_grid, NULL, "layer %d expert %d w2", l, e);
            mj[nm].q = c->w[2];
            memset(&c->w[2], 0, sizeof c->w[2]);
            c->have_w2 = false;
            mj[nm++].st = MOEC_OK;
            continue;
        }
        mj[nm] = qr_mjob_make(M.w2[e], d, f, M.bits[e], r->group, r->clip_grid, h2j ? h2j[e].hinv : NULL,
                              "layer %d expert %d w2", l, e);
        mj[nm++].gtype = qr_gtype(R, l, MOEC_GS_DOWN);
    }
    if (fs > 0) {
        mj[nm] = qr_mjob_make(M.sh2, d, fs, r->bits, r->group, r->clip_grid, h2j ? h2j[E].hinv : NULL,
                              "layer %d shared expert w2", l);
        mj[nm++].gtype = qr_gtype(R, l, MOEC_GS_SH_DOWN);
    }
    {
        /* only the jobs that still have to run go to the pool */
        qr_mjob *todo = calloc((size_t)nm, sizeof *todo);
        int *idx = calloc((size_t)nm, sizeof *idx);
        int nt = 0;
        if (!todo || !idx) {
            free(todo), free(idx);
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < nm; i++)
            if (!mj[i].q.codes) {
                idx[nt] = i;
                todo[nt++] = mj[i];
            }
        st = qr_run_mjobs(R, todo, nt, err);
        for (int i = 0; i < nt; i++)
            mj[idx[i]].q = todo[i].q;
        free(todo), free(idx);
        if (st)
            goto done;
    }
    for (int e = 0; e < E && !st; e++)
        st = qr_install(R, &WL->experts[e].w2, &OL->experts[e].w2, &mj[e].q.f, mj[e].name, err);
    if (!st && fs > 0)
        st = qr_install(R, &WL->shared.w2, &OL->shared.w2, &mj[E].q.f, mj[E].name, err);
    for (int e = 0; e < E; e++)
        if (LR->rtn_fallback[e])
            R->rep->rtn_fallbacks++;
done:
    qr_mjobs_free(mj, nm);
    qr_hjobs_free(h2j, h2j ? E + 1 : 0);
    if (M.s && R->smooth[l] != M.s)
        free(M.s);
    moe_layer_free(&M);
    return st;
}

