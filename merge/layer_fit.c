/* layer_fit.c - fitting a merged expert to what its group computed, and
 * measuring the merged layer (layer_calib.h): neuron choice, w2 and router
 * rows by ridge least squares (fit.h), the layer's output error. */
#include "merge/layer_calib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "exec/matmul.h"
#include "exec/ops.h"
#include "merge/acts.h"
#include "merge/fit.h"

/* ---- router rows by least squares ---- */

moec_status moec_ml_fit_router(moec_pool *pool, const moec_merge_layer_in *in, const moec_merge_layer *R,
                               double ridge, float *rows, moec_err *err)
{
    const moec_tensor *r = &in->src->router;
    const int d = in->d, E = (int)r->shape[0], N = R->n_after;
    moec_status st = MOEC_OK;
    /* every merged group's row at once: features x (all tokens), targets
     * log Σ_{e∈G} exp(logit_e), prior the averaged row */
    int *merged = malloc((size_t)N * sizeof *merged), nm = 0;
    float *lg = malloc((size_t)MOEC_ML_CHUNK * E * sizeof *lg), *tg = malloc((size_t)MOEC_ML_CHUNK * N * sizeof *tg);
    float *prior = malloc((size_t)N * d * sizeof *prior), *fit = malloc((size_t)N * d * sizeof *fit);
    double *dbl = malloc((size_t)MOEC_ML_CHUNK * (d + N) * sizeof *dbl);
    moec_lsq L = {0};
    if (!merged || !lg || !tg || !prior || !fit || !dbl)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory fitting the router of layer %d", in->layer);
    for (int g = 0; g < N && !st; g++)
        if (R->groups[g].n_members > 1) {
            memcpy(prior + (size_t)nm * d, rows + (size_t)g * d, (size_t)d * sizeof(float));
            merged[nm++] = g;
        }
    if (!st && nm > 0)
        st = moec_lsq_init(&L, d, nm, err);
    for (int64_t t0 = 0; t0 < in->n_tokens && !st && nm > 0; t0 += MOEC_ML_CHUNK) {
        const int64_t c = in->n_tokens - t0 < MOEC_ML_CHUNK ? in->n_tokens - t0 : MOEC_ML_CHUNK;
        const float *x = in->x + (size_t)t0 * d;
        moec_matmul(pool, lg, x, c, r, false);
        for (int64_t t = 0; t < c; t++)
            for (int q = 0; q < nm; q++) {
                const moec_merge_group *G = &R->groups[merged[q]];
                double mx = -INFINITY, s = 0.0;
                for (int i = 0; i < G->n_members; i++)
                    mx = fmax(mx, lg[(size_t)t * E + G->members[i]]);
                for (int i = 0; i < G->n_members; i++)
                    s += exp(lg[(size_t)t * E + G->members[i]] - mx);
                tg[(size_t)t * nm + q] = (float)(mx + log(s));
            }
        moec_lsq_add(&L, x, tg, NULL, c, dbl);
    }
    if (!st && nm > 0)
        st = moec_lsq_solve(&L, ridge, prior, fit, err);
    for (int q = 0; q < nm && !st; q++)
        memcpy(rows + (size_t)merged[q] * d, fit + (size_t)q * d, (size_t)d * sizeof(float));
    if (st)
        moec_err_prefix(err, "merge: layer %d router", in->layer);
    moec_lsq_free(&L);
    free(merged), free(lg), free(tg), free(prior), free(fit), free(dbl);
    return st;
}

/* ---- neurons: the f most important of all members (FEAT_NEURONS) ---- */

typedef struct neuron {
    double score;
    int member, index;
} neuron;

static int by_score(const void *a, const void *b)
{
    const neuron *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    if (x->member != y->member)
        return x->member - y->member;
    return x->index - y->index;
}

/* Chooses the group's f neurons by Σ over each member's routed tokens of
 * (g·h_j)² ‖w2[:, j]‖², its share of the gated output energy, and writes
 * their w1/w3 rows into w1[f][d], w3[f][d] and w2 columns into w2[d][f]. */
moec_status moec_ml_pick_neurons(moec_pool *pool, const moec_merge_layer_in *in, const moec_ml_routing *r0,
                                 const moec_merge_group *G, moec_ml_scratch *s, float *w1, float *w3, float *w2,
                                 moec_err *err)
{
    const int d = in->d, f = in->f, m = G->n_members;
    neuron *cand = malloc((size_t)m * f * sizeof *cand);
    float *col = malloc((size_t)d * f * sizeof *col), *row = malloc((size_t)(d > f ? d : f) * sizeof *row);
    moec_status st = MOEC_OK;
    if (!cand || !col || !row) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory choosing neurons");
        goto done;
    }
    for (int i = 0; i < m; i++) {
        const int e = G->members[i];
        const moec_ffn *E = &in->src->experts[e];
        moec_to_f32(col, E->w2.data, E->w2.dtype, (size_t)d * f);
        for (int j = 0; j < f; j++) {
            double c2 = 0.0;
            for (int r = 0; r < d; r++)
                c2 += (double)col[(size_t)r * f + j] * col[(size_t)r * f + j];
            cand[(size_t)i * f + j] = (neuron){0.0, i, j};
            row[j] = (float)c2;
        }
        for (int64_t i0 = r0->off[e]; i0 < r0->off[e + 1]; i0 += MOEC_ML_CHUNK) {
            const int64_t n = r0->off[e + 1] - i0 < MOEC_ML_CHUNK ? r0->off[e + 1] - i0 : MOEC_ML_CHUNK;
            moec_ml_gather(s->xg, in->x, r0->tok + i0, n, d);
            moec_ml_intermediate(pool, E, s->xg, n, s);
            for (int64_t t = 0; t < n; t++) {
                const double g = r0->gate[i0 + t];
                for (int j = 0; j < f; j++) {
                    const double v = g * s->h[(size_t)t * f + j];
                    cand[(size_t)i * f + j].score += v * v * row[j];
                }
            }
        }
    }
    qsort(cand, (size_t)m * f, sizeof *cand, by_score);
    for (int i = 0; i < m; i++) { /* member by member, so each w2 is widened once */
        const moec_ffn *E = &in->src->experts[G->members[i]];
        const size_t es1 = moec_dtype_size(E->w1.dtype), es3 = moec_dtype_size(E->w3.dtype);
        moec_to_f32(col, E->w2.data, E->w2.dtype, (size_t)d * f);
        for (int j = 0; j < f; j++) {
            if (cand[j].member != i)
                continue;
            const int src_j = cand[j].index;
            moec_to_f32(w1 + (size_t)j * d, (const char *)E->w1.data + (size_t)src_j * d * es1, E->w1.dtype,
                        (size_t)d);
            moec_to_f32(w3 + (size_t)j * d, (const char *)E->w3.data + (size_t)src_j * d * es3, E->w3.dtype,
                        (size_t)d);
            for (int r = 0; r < d; r++)
                w2[(size_t)r * f + j] = col[(size_t)r * f + src_j];
        }
    }
done:
    free(cand), free(col), free(row);
    return st;
}

/* ---- w2 by least squares ---- */

/* Fits w2 of group g: the merged expert (w1/w3 as stored in E) with gate
 * g1 from the new routing r1 should give Σ_{e∈G, e∈sel0} g0_e y_e on every
 * token r1 sends to it. prior [d][f] in, fit [d][f] out. */
moec_status moec_ml_fit_down(moec_pool *pool, const moec_merge_layer_in *in, const moec_merge_opts *o,
                             const moec_ml_routing *r0, const moec_ml_routing *r1, int g, const moec_merge_group *G,
                             const moec_ffn *E, moec_ml_scratch *s, const float *prior, float *fit, int64_t *tokens,
                             moec_err *err)
{
    const int d = in->d, f = in->f;
    moec_lsq L;
    moec_status st = moec_lsq_init(&L, f, d, err);
    int64_t *rows = malloc((size_t)MOEC_ML_CHUNK * sizeof *rows), *sub = malloc((size_t)MOEC_ML_CHUNK * sizeof *sub);
    int *pos = malloc((size_t)MOEC_ML_CHUNK * sizeof *pos);
    float *ysub = malloc((size_t)MOEC_ML_CHUNK * d * sizeof *ysub);
    float *xs = malloc((size_t)MOEC_ML_CHUNK * d * sizeof *xs);
    moec_ml_scratch s2 = {0};
    if (!st && (!rows || !sub || !pos || !ysub || !xs))
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory fitting w2");
    if (!st)
        st = moec_ml_scratch_init(&s2, d, f, err);
    *tokens = r1->off[g + 1] - r1->off[g];
    for (int64_t i0 = r1->off[g]; i0 < r1->off[g + 1] && !st; i0 += MOEC_ML_CHUNK) {
        const int64_t n = r1->off[g + 1] - i0 < MOEC_ML_CHUNK ? r1->off[g + 1] - i0 : MOEC_ML_CHUNK;
        for (int64_t i = 0; i < n; i++) {
            rows[i] = r1->tok[i0 + i];
            s->w[i] = r1->gate[i0 + i];
        }
        moec_ml_gather(s->xg, in->x, rows, n, d);
        memset(s->tgt, 0, (size_t)n * d * sizeof(float));
        /* targets: each member on the tokens that originally selected it */
        for (int mi = 0; mi < G->n_members; mi++) {
            const int e = G->members[mi];
            int64_t ns = 0;
            for (int64_t i = 0; i < n; i++) {
                const float ge = moec_ml_gate_of(r0, rows[i], e);
                if (ge != 0.0f) {
                    pos[ns] = (int)i;
                    sub[ns++] = rows[i];
                }
            }
            if (ns == 0)
                continue;
            moec_ml_gather(xs, in->x, sub, ns, d);
            moec_merge_expert_forward(pool, &in->src->experts[e], xs, ns, ysub, s2.h, s2.h3, s2.t);
            for (int64_t q = 0; q < ns; q++)
                moec_axpy(s->tgt + (size_t)pos[q] * d, ysub + (size_t)q * d, moec_ml_gate_of(r0, sub[q], e), d);
        }
        /* features: the merged expert's moec_ml_intermediate; rows weighted by the new gate */
        moec_ml_intermediate(pool, E, s->xg, n, s);
        for (int64_t i = 0; i < n; i++) {
            const float gw = s->w[i];
            for (int j = 0; j < f; j++)
                s->h[(size_t)i * f + j] *= gw;
        }
        moec_lsq_add(&L, s->h, s->tgt, NULL, n, s->dbl);
    }
    if (!st)
        st = moec_lsq_solve(&L, o->ridge, prior, fit, err);
    if (st) {
        char names[256];
        moec_ml_members_str(G, names, sizeof names);
        moec_err_prefix(err, "merge: layer %d, experts %s, w2 fit", in->layer, names);
    }
    moec_lsq_free(&L);
    moec_ml_scratch_free(&s2);
    free(rows), free(sub), free(pos), free(ysub), free(xs);
    return st;
}

/* ---- measuring the merged layer ---- */

/* out[n][d] = the MoE block's routed output (Σ gate · expert) for rows x,
 * with the routing already computed in sel/gates (k per token). */
static void block_output(moec_pool *pool, const moec_layer *L, const float *x, int64_t n, int d, int k,
                         const int32_t *sel, const float *gates, float *out, moec_ml_scratch *s)
{
    memset(out, 0, (size_t)n * d * sizeof(float));
    int64_t *rows = (int64_t *)s->dbl;
    for (int e = 0; e < L->n_experts; e++) {
        int64_t ns = 0;
        for (int64_t t = 0; t < n; t++)
            for (int j = 0; j < k; j++)
                if (sel[t * k + j] == e) {
                    rows[ns] = t;
                    s->w[ns++] = gates[t * k + j];
                }
        if (ns == 0)
            continue;
        moec_ml_gather(s->xg, x, rows, ns, d);
        moec_merge_expert_forward(pool, &L->experts[e], s->xg, ns, s->y, s->h, s->h3, s->t);
        for (int64_t q = 0; q < ns; q++)
            moec_axpy(out + (size_t)rows[q] * d, s->y + (size_t)q * d, s->w[q], d);
    }
}

void moec_ml_measure(moec_pool *pool, const moec_merge_layer_in *in, const moec_layer *M,
                     const moec_ml_routing *r0, const moec_ml_routing *r1, moec_ml_scratch *s, float *y0, float *y1,
                     moec_merge_layer *R)
{
    const int d = in->d;
    double num = 0.0, den = 0.0;
    int64_t agree = 0;
    const int64_t total = in->n_tokens < MOEC_ML_MEASURE_TOKENS ? in->n_tokens : MOEC_ML_MEASURE_TOKENS;
    for (int64_t t0 = 0; t0 < total; t0 += MOEC_ML_CHUNK) {
        const int64_t n = total - t0 < MOEC_ML_CHUNK ? total - t0 : MOEC_ML_CHUNK;
        const float *x = in->x + (size_t)t0 * d;
        block_output(pool, in->src, x, n, d, r0->k, r0->sel + t0 * r0->k, r0->gates + t0 * r0->k, y0, s);
        block_output(pool, M, x, n, d, r1->k, r1->sel + t0 * r1->k, r1->gates + t0 * r1->k, y1, s);
        for (size_t i = 0; i < (size_t)n * d; i++) {
            const double e = (double)y1[i] - y0[i];
            num += e * e;
            den += (double)y0[i] * y0[i];
        }
        for (int64_t t = t0; t < t0 + n; t++)
            agree += R->assign[r0->sel[t * r0->k]] == r1->sel[t * r1->k];
    }
    R->tokens = total;
    R->out_err = den > 0.0 ? num / den : 0.0;
    R->top1_agree = total ? (double)agree / (double)total : 0.0;
}

