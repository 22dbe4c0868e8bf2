/* layer_calib.c - routing of the calibration tokens, chunk scratch and
 * Sub-MoE† whitening for one layer's merge (layer_calib.h). */
#include "merge/layer_calib.h"

#include <cblas.h>
#include <lapacke.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec/lowrank.h"
#include "exec/ops.h"
#include "merge/acts.h"

void moec_ml_members_str(const moec_merge_group *g, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < g->n_members && at + 1 < n; i++) {
        int w = snprintf(buf + at, n - at, "%s%d", i ? "+" : "", g->members[i]);
        if (w < 0)
            break;
        at += (size_t)w;
    }
}

int moec_ml_dominant(const moec_merge_group *G)
{
    int best = 0;
    for (int i = 1; i < G->n_members; i++)
        if (G->weights[i] > G->weights[best])
            best = i;
    return best;
}

/* ---- routing of the calibration tokens ---- */

void moec_ml_routing_free(moec_ml_routing *r)
{
    free(r->sel);
    free(r->gates);
    free(r->off);
    free(r->tok);
    free(r->gate);
    memset(r, 0, sizeof *r);
}

moec_status moec_ml_routing_build(moec_ml_routing *r, moec_pool *pool, const moec_tensor *router, const float *x,
                                  int64_t n, int k, bool norm, moec_err *err)
{
    const int E = (int)router->shape[0];
    memset(r, 0, sizeof *r);
    r->n = n;
    r->k = k;
    r->E = E;
    r->sel = malloc((size_t)n * k * sizeof *r->sel);
    r->gates = malloc((size_t)n * k * sizeof *r->gates);
    r->off = calloc((size_t)E + 1, sizeof *r->off);
    r->tok = malloc((size_t)n * k * sizeof *r->tok);
    r->gate = malloc((size_t)n * k * sizeof *r->gate);
    float *logits = malloc((size_t)MOEC_ML_CHUNK * E * sizeof *logits);
    int64_t *cur = malloc((size_t)E * sizeof *cur);
    moec_status st = MOEC_OK;
    if (!r->sel || !r->gates || !r->off || !r->tok || !r->gate || !logits || !cur)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory routing %lld calibration tokens", (long long)n);
    for (int64_t t0 = 0; t0 < n && !st; t0 += MOEC_ML_CHUNK) {
        const int64_t c = n - t0 < MOEC_ML_CHUNK ? n - t0 : MOEC_ML_CHUNK;
        st = moec_merge_route(pool, router, x + (size_t)t0 * router->shape[1], c, k, norm, logits, NULL,
                              r->sel + (size_t)t0 * k, r->gates + (size_t)t0 * k, err);
    }
    if (!st) {
        for (int64_t i = 0; i < n * k; i++)
            r->off[r->sel[i] + 1]++;
        for (int e = 0; e < E; e++)
            r->off[e + 1] += r->off[e];
        memcpy(cur, r->off, (size_t)E * sizeof *cur);
        for (int64_t t = 0; t < n; t++)
            for (int j = 0; j < k; j++) {
                int64_t row = cur[r->sel[t * k + j]]++;
                r->tok[row] = t;
                r->gate[row] = r->gates[t * k + j];
            }
    }
    free(logits);
    free(cur);
    if (st)
        moec_ml_routing_free(r);
    return st;
}

/* Gate of expert e for token t in the routing, 0 when not selected. */
float moec_ml_gate_of(const moec_ml_routing *r, int64_t t, int e)
{
    for (int j = 0; j < r->k; j++)
        if (r->sel[t * r->k + j] == e)
            return r->gates[t * r->k + j];
    return 0.0f;
}

void moec_ml_gather(float *dst, const float *x, const int64_t *rows, int64_t n, int d)
{
    for (int64_t i = 0; i < n; i++)
        memcpy(dst + (size_t)i * d, x + (size_t)rows[i] * d, (size_t)d * sizeof(float));
}

/* ---- scratch for expert products on a chunk of rows ---- */

void moec_ml_scratch_free(moec_ml_scratch *s)
{
    free(s->xg), free(s->h), free(s->h3), free(s->t), free(s->y), free(s->tgt), free(s->w), free(s->dbl);
    memset(s, 0, sizeof *s);
}

moec_status moec_ml_scratch_init(moec_ml_scratch *s, int d, int f, moec_err *err)
{
    memset(s, 0, sizeof *s);
    const size_t C = MOEC_ML_CHUNK, p = (size_t)(f > d ? f : d);
    s->xg = malloc(C * d * sizeof(float));
    s->h = malloc(C * p * sizeof(float));
    s->h3 = malloc(C * p * sizeof(float));
    s->t = malloc(C * p * sizeof(float));
    s->y = malloc(C * d * sizeof(float));
    s->tgt = malloc(C * d * sizeof(float));
    s->w = malloc(C * sizeof(float));
    s->dbl = malloc(C * (size_t)(f + d + p) * sizeof(double));
    if (!s->xg || !s->h || !s->h3 || !s->t || !s->y || !s->tgt || !s->w || !s->dbl) {
        moec_ml_scratch_free(s);
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for calibration scratch");
    }
    return MOEC_OK;
}

/* silu(w1 x) ⊙ (w3 x) of an expert (dense or factored) on n gathered rows, into s->h. */
void moec_ml_intermediate(moec_pool *pool, const moec_ffn *e, const float *x, int64_t n, moec_ml_scratch *s)
{
    moec_weight_matmul(pool, s->h, x, n, &e->w1, &e->w1f, s->t, false);
    moec_weight_matmul(pool, s->h3, x, n, &e->w3, &e->w3f, s->t, false);
    moec_silu_mul(s->h, s->h3, n * moec_ffn_inner(e));
}

/* ---- Sub-MoE† whitening (the paper's S_i, SVD-LLM's Cholesky form) ---- */

/* G += zᵀz for n rows of p floats (upper triangle, double). */
static void gram_add(double *G, const float *z, int64_t n, int p, double *scratch)
{
    for (size_t i = 0; i < (size_t)n * p; i++)
        scratch[i] = z[i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, p, (int)n, 1.0, scratch, p, 1.0, G, p);
}

/* S (lower, row-major floats) with S Sᵀ = G + δI; δ starts at 1e-6 of the mean
 * diagonal and grows tenfold until the factorisation succeeds. */
static moec_status cholesky_whiten(const double *G, int p, float *S, const char *what, moec_err *err)
{
    double *A = malloc((size_t)p * p * sizeof *A);
    if (!A)
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory whitening %s", what);
    double tr = 0.0;
    for (int i = 0; i < p; i++)
        tr += G[(size_t)i * p + i];
    double delta = (tr > 0.0 ? tr / p : 1.0) * 1e-6;
    for (int attempt = 0; attempt < 12; attempt++, delta *= 10.0) {
        memcpy(A, G, (size_t)p * p * sizeof *A);
        for (int i = 0; i < p; i++)
            A[(size_t)i * p + i] += delta;
        if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', p, A, p) == 0) {
            /* A = UᵀU, U upper: S = Uᵀ */
            for (int i = 0; i < p; i++)
                for (int j = 0; j < p; j++)
                    S[(size_t)i * p + j] = j <= i ? (float)A[(size_t)j * p + i] : 0.0f;
            free(A);
            return MOEC_OK;
        }
    }
    free(A);
    return moec_err_set(err, MOEC_ERR_NUMERIC, "merge: the input Gram matrix of %s is not positive definite", what);
}

/* Whitening matrices of expert e: S1 [d][d] from its routed inputs (w1 and
 * w3 read x), S2 [f][f] from its intermediates (w2 reads them). */
moec_status moec_ml_whiten_expert(moec_pool *pool, const moec_merge_layer_in *in, const moec_ml_routing *r0, int e,
                                  moec_ml_scratch *s, float *S1, float *S2, moec_err *err)
{
    const int d = in->d, f = in->f;
    double *G1 = calloc((size_t)d * d, sizeof *G1), *G2 = calloc((size_t)f * f, sizeof *G2);
    moec_status st = MOEC_OK;
    if (!G1 || !G2)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for input Grams");
    const moec_ffn *E = &in->src->experts[e];
    for (int64_t i0 = r0->off[e]; i0 < r0->off[e + 1] && !st; i0 += MOEC_ML_CHUNK) {
        const int64_t n = r0->off[e + 1] - i0 < MOEC_ML_CHUNK ? r0->off[e + 1] - i0 : MOEC_ML_CHUNK;
        moec_ml_gather(s->xg, in->x, r0->tok + i0, n, d);
        gram_add(G1, s->xg, n, d, s->dbl);
        moec_ml_intermediate(pool, E, s->xg, n, s);
        gram_add(G2, s->h, n, f, s->dbl);
    }
    char what[96];
    snprintf(what, sizeof what, "layer %d expert %d (%lld tokens)", in->layer, e,
             (long long)(r0->off[e + 1] - r0->off[e]));
    if (!st)
        st = cholesky_whiten(G1, d, S1, what, err);
    if (!st)
        st = cholesky_whiten(G2, f, S2, what, err);
    free(G1);
    free(G2);
    return st;
}

