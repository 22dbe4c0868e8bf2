/* merge_layer.c - merging one MoE layer (contract in merge_layer.h).
 *
 * Matrices of merged groups are folded in parallel, one job per (group,
 * weight kind), each on its own members; everything that reads the
 * calibration inputs (routing, whitening Grams, fits, the measurement)
 * runs on the caller with the pool inside the matrix products. Results do
 * not depend on the thread count beyond float summation order. */
#include "merge/merge_layer.h"

#include "merge/layer_calib.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "exec/lowrank.h"
#include "exec/matmul.h"
#include "exec/ops.h"
#include "merge/acts.h"
#include "merge/average.h"
#include "merge/fit.h"


static const moec_tensor *kind_of(const moec_ffn *f, int kind)
{
    return kind == MOEC_MERGE_W1 ? &f->w1 : kind == MOEC_MERGE_W3 ? &f->w3 : &f->w2;
}

static moec_tensor *kind_mut(moec_ffn *f, int kind)
{
    return kind == MOEC_MERGE_W1 ? &f->w1 : kind == MOEC_MERGE_W3 ? &f->w3 : &f->w2;
}

static moec_factored *factored_mut(moec_ffn *f, int kind)
{
    return kind == MOEC_MERGE_W1 ? &f->w1f : kind == MOEC_MERGE_W3 ? &f->w3f : &f->w2f;
}

void moec_merge_layer_report_free(moec_merge_layer *L)
{
    for (int g = 0; g < L->n_after && L->groups; g++) {
        moec_merge_group *G = &L->groups[g];
        for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
            free(G->kind[k].recon_err);
            free(G->kind[k].merged_err);
        }
        free(G->members);
        free(G->weights);
    }
    free(L->groups);
    free(L->assign);
    memset(L, 0, sizeof *L);
}

/* ---- folding one matrix of one group (parallel jobs) ---- */

typedef struct job {
    int layer;
    const moec_ffn *experts;
    moec_merge_group *group;
    int kind;
    const float *const *whiten; /* [m] or NULL */
    bool want_factors;
    float *res;                 /* [rows][cols] merged matrix */
    moec_subspace_factors fac;  /* filled when want_factors */
    moec_status st;
    moec_err err;
} job;

static double rel_dist(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = (double)a[i] - b[i];
        num += x * x;
        den += (double)b[i] * b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static moec_status fold(job *j, const moec_merge_opts *o)
{
    moec_merge_group *G = j->group;
    moec_merge_kind *K = &G->kind[j->kind];
    const int m = G->n_members;
    const size_t n = (size_t)K->rows * K->cols;
    float *buf = malloc((size_t)m * n * sizeof *buf);
    moec_tensor *views = calloc((size_t)m, sizeof *views);
    const float **ptrs = malloc((size_t)m * sizeof *ptrs);
    float *w = malloc((size_t)m * sizeof *w);
    moec_err *err = &j->err;
    moec_status st = MOEC_OK;
    j->res = malloc(n * sizeof *j->res);
    if (!buf || !j->res || !views || !ptrs || !w) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for %d members of [%d][%d]", m, K->rows, K->cols);
        goto done;
    }
    for (int i = 0; i < m; i++) {
        const moec_tensor *t = kind_of(&j->experts[G->members[i]], j->kind);
        float *x = buf + (size_t)i * n;
        moec_to_f32(x, t->data, t->dtype, n);
        for (size_t p = 0; p < n; p++)
            if (!isfinite(x[p])) {
                st = moec_err_set(err, MOEC_ERR_NUMERIC, "expert %d has a non-finite value at [%zu][%zu]",
                                  G->members[i], p / (size_t)K->cols, p % (size_t)K->cols);
                goto done;
            }
        views[i] = (moec_tensor){.dtype = MOEC_DT_F32, .ndim = 2, .shape = {K->rows, K->cols}, .data = x,
                                 .nbytes = n * sizeof(float)};
        ptrs[i] = x;
        w[i] = (float)G->weights[i];
    }
    if (o->method == MOEC_MERGE_SUBMOE) {
        moec_subspace_opts so = MOEC_SUBSPACE_OPTS_DEFAULT;
        so.rank = o->rank;
        so.energy = o->energy;
        so.precision = o->precision;
        so.whiten = j->whiten;
        moec_subspace_report sr = {0};
        sr.member_rel_err = K->recon_err;
        st = moec_subspace_merge(views, m, w, &so, j->res, j->want_factors ? &j->fac : NULL, &sr, err);
        if (st != MOEC_OK)
            goto done;
        K->rank = sr.rank;
        K->max_rank = sr.max_rank;
        K->energy = sr.energy;
        K->factored_params = (int64_t)sr.rank * (K->rows + K->cols);
    } else {
        st = moec_average_weighted(ptrs, m, n, w, j->res, err);
        if (st != MOEC_OK)
            goto done;
    }
    for (int i = 0; i < m; i++)
        K->merged_err[i] = rel_dist(j->res, ptrs[i], n);
done:
    free(buf);
    free(views);
    free(ptrs);
    free(w);
    if (st != MOEC_OK) {
        char names[256];
        moec_ml_members_str(G, names, sizeof names);
        moec_err_prefix(err, "merge: layer %d, experts %s, %s", j->layer, names, moec_merge_kind_name(j->kind));
    }
    return st;
}

typedef struct run_ctx {
    job *jobs;
    int n;
    const moec_merge_opts *o;
    atomic_int next;
    int done;
    pthread_mutex_t mu;
} run_ctx;

static void run_jobs(void *ctx, int thread, int n_threads)
{
    (void)thread;
    (void)n_threads;
    run_ctx *c = ctx;
    for (;;) {
        int i = atomic_fetch_add(&c->next, 1);
        if (i >= c->n)
            break;
        c->jobs[i].st = fold(&c->jobs[i], c->o);
        pthread_mutex_lock(&c->mu);
        c->done++;
        if (c->o->progress)
            c->o->progress(c->o->progress_ctx, c->done, c->n);
        pthread_mutex_unlock(&c->mu);
    }
}

/* Runs every job (on the pool when there is one); the first failure in job
 * order is reported, so the message does not depend on timing. */
static moec_status fold_all(moec_pool *pool, job *jobs, int n_jobs, const moec_merge_opts *o, moec_err *err)
{
    if (n_jobs == 0)
        return MOEC_OK;
    run_ctx rc = {.jobs = jobs, .n = n_jobs, .o = o};
    atomic_init(&rc.next, 0);
    pthread_mutex_init(&rc.mu, NULL);
    moec_pool_run(pool, run_jobs, &rc);
    pthread_mutex_destroy(&rc.mu);
    for (int i = 0; i < n_jobs; i++)
        if (jobs[i].st != MOEC_OK) {
            if (err)
                *err = jobs[i].err;
            return jobs[i].st;
        }
    return MOEC_OK;
}

/* ---- installing results into the new model ---- */

static moec_status install_dense(moec_model *dst, moec_tensor *slot, moec_dtype dtype, const float *w, int rows,
                                 int cols, moec_err *err)
{
    moec_status st = moec_model_new_tensor(dst, slot, dtype, rows, cols, err);
    if (st == MOEC_OK)
        moec_from_f32((void *)slot->data, w, dtype, (size_t)rows * cols);
    return st;
}

/* A merged matrix: as its factors u [rows][r], v [r][cols] when that is
 * smaller and asked for, else dense. */
static moec_status install(moec_model *dst, moec_ffn *E, int kind, moec_dtype dtype, const float *dense,
                           const moec_subspace_factors *fac, moec_merge_kind *K, moec_err *err)
{
    moec_tensor *slot = kind_mut(E, kind);
    moec_factored *fw = factored_mut(E, kind);
    memset(slot, 0, sizeof *slot);
    memset(fw, 0, sizeof *fw);
    K->factored = fac && fac->a && (int64_t)fac->rank * (fac->rows + fac->cols) < (int64_t)fac->rows * fac->cols;
    if (!K->factored)
        return install_dense(dst, slot, dtype, dense, K->rows, K->cols, err);
    moec_status st = install_dense(dst, &fw->u, dtype, fac->a, fac->rows, fac->rank, err);
    if (st == MOEC_OK)
        st = install_dense(dst, &fw->v, dtype, fac->b, fac->rank, fac->cols, err);
    return st;
}

/* ---- router ---- */

static moec_status router_rows(moec_pool *pool, const moec_merge_layer_in *in, const moec_merge_opts *o,
                               moec_merge_layer *R, moec_tensor *dst, moec_err *err)
{
    const moec_tensor *r = &in->src->router;
    const int d = in->d, E = (int)r->shape[0], N = R->n_after;
    const size_t row_bytes = (size_t)d * moec_dtype_size(r->dtype);
    const unsigned char *src = r->data;
    unsigned char *out = (unsigned char *)dst->data;
    float *all = malloc((size_t)E * d * sizeof *all), *rows = malloc((size_t)N * d * sizeof *rows);
    float *w = malloc((size_t)E * sizeof *w);
    const float **ptrs = malloc((size_t)E * sizeof *ptrs);
    moec_status st = MOEC_OK;
    if (!all || !rows || !w || !ptrs) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for the router of layer %d", in->layer);
        goto done;
    }
    moec_to_f32(all, r->data, r->dtype, (size_t)E * d);
    for (int g = 0; g < N && !st; g++) {
        const moec_merge_group *G = &R->groups[g];
        if (G->n_members == 1 || o->router == MOEC_MERGE_ROUTER_DOMINANT) {
            memcpy(rows + (size_t)g * d, all + (size_t)G->members[moec_ml_dominant(G)] * d, (size_t)d * sizeof(float));
            continue;
        }
        for (int i = 0; i < G->n_members; i++) {
            ptrs[i] = all + (size_t)G->members[i] * d;
            w[i] = (float)G->weights[i];
        }
        st = moec_average_weighted(ptrs, G->n_members, (size_t)d, w, rows + (size_t)g * d, err);
        if (st != MOEC_OK) {
            char names[256];
            moec_ml_members_str(G, names, sizeof names);
            moec_err_prefix(err, "merge: layer %d router rows of experts %s", in->layer, names);
        }
    }
    if (!st && o->router == MOEC_MERGE_ROUTER_FIT)
        st = moec_ml_fit_router(pool, in, R, o->ridge, rows, err);
    /* groups of one keep their row byte for byte */
    for (int g = 0; g < N && !st; g++) {
        const moec_merge_group *G = &R->groups[g];
        if (G->n_members == 1)
            memcpy(out + (size_t)g * row_bytes, src + (size_t)G->members[0] * row_bytes, row_bytes);
        else
            moec_from_f32(out + (size_t)g * row_bytes, rows + (size_t)g * d, r->dtype, (size_t)d);
    }
done:
    free(all), free(rows), free(w), free(ptrs);
    return st;
}

/* ---- the layer ---- */

static moec_status init_groups(const moec_merge_layer_in *in, const moec_merge_opts *o, moec_merge_layer *R,
                               moec_err *err)
{
    const int E = in->src->n_experts, N = in->n_after;
    R->layer = in->layer;
    R->n_before = E;
    R->n_after = N;
    R->out_err = NAN;
    R->top1_agree = NAN;
    R->assign = malloc((size_t)E * sizeof *R->assign);
    R->groups = calloc((size_t)N, sizeof *R->groups);
    if (!R->assign || !R->groups)
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for the groups of layer %d", in->layer);
    memcpy(R->assign, in->assign, (size_t)E * sizeof *R->assign);
    for (int e = 0; e < E; e++) {
        if (in->assign[e] < 0 || in->assign[e] >= N)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: layer %d expert %d assigned to group %d of %d", in->layer,
                                e, in->assign[e], N);
        R->groups[in->assign[e]].n_members++;
    }
    for (int g = 0; g < N; g++) {
        moec_merge_group *G = &R->groups[g];
        if (G->n_members == 0)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: layer %d group %d is empty", in->layer, g);
        G->members = malloc((size_t)G->n_members * sizeof *G->members);
        G->weights = malloc((size_t)G->n_members * sizeof *G->weights);
        if (!G->members || !G->weights)
            return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for the groups of layer %d", in->layer);
        G->n_members = 0;
    }
    for (int e = 0; e < E; e++) {
        moec_merge_group *G = &R->groups[in->assign[e]];
        G->members[G->n_members++] = e;
    }
    float raw[1024];
    for (int g = 0; g < N; g++) {
        moec_merge_group *G = &R->groups[g];
        double sum = 0.0;
        float *w = G->n_members <= 1024 ? raw : malloc((size_t)G->n_members * sizeof *w);
        if (!w)
            return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
        for (int i = 0; i < G->n_members; i++) {
            w[i] = (float)in->weight[G->members[i]];
            sum += w[i];
        }
        G->uniform_weights = !(sum > 0.0);
        moec_status st = moec_merge_weights_normalise(G->uniform_weights ? NULL : w, G->n_members, G->weights, err);
        if (w != raw)
            free(w);
        if (st != MOEC_OK)
            return moec_err_prefix(err, "merge: layer %d, merge weights", in->layer);
        for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
            moec_merge_kind *K = &G->kind[k];
            const moec_tensor *t = kind_of(&in->src->experts[G->members[0]], k);
            K->rows = (int)t->shape[0];
            K->cols = (int)t->shape[1];
            K->factored_params = (int64_t)K->rows * K->cols;
            if (G->n_members == 1)
                continue;
            K->merged_err = calloc((size_t)G->n_members, sizeof *K->merged_err);
            if (o->method == MOEC_MERGE_SUBMOE)
                K->recon_err = calloc((size_t)G->n_members, sizeof *K->recon_err);
            if (!K->merged_err || (o->method == MOEC_MERGE_SUBMOE && !K->recon_err))
                return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for the report of layer %d",
                                    in->layer);
        }
    }
    return MOEC_OK;
}

static bool needs_x(const moec_merge_opts *o)
{
    return o->whiten || o->fit_down || o->router == MOEC_MERGE_ROUTER_FIT || o->features == MOEC_MERGE_FEAT_NEURONS;
}

/* w2 of a factored fit: u = U_r (the fold's basis), v = U_rᵀ W. */
static moec_status project_factors(const moec_subspace_factors *fac, const float *W, moec_subspace_factors *out,
                                   moec_err *err)
{
    *out = (moec_subspace_factors){.a = fac->a, .rows = fac->rows, .rank = fac->rank, .cols = fac->cols};
    out->b = malloc((size_t)fac->rank * fac->cols * sizeof *out->b);
    if (!out->b)
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for a rank-%d factor", fac->rank);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, fac->rank, fac->cols, fac->rows, 1.0f, fac->a, fac->rank, W,
                fac->cols, 0.0f, out->b, fac->cols);
    return MOEC_OK;
}

moec_status moec_merge_layer_run(moec_model *dst, const moec_merge_layer_in *in, const moec_merge_opts *o,
                                 moec_pool *pool, moec_merge_layer *R, moec_err *err)
{
    memset(R, 0, sizeof *R);
    const moec_layer *SL = in->src;
    const int E = SL->n_experts, N = in->n_after, d = in->d, f = in->f, l = in->layer;
    const bool have_x = in->x && in->n_tokens > 0;
    if (!have_x && needs_x(o))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge: layer %d: activation-aware truncation, fitted router or w2 and neuron "
                            "selection need calibration text",
                            l);
    if (in->top_k_after < 1 || in->top_k_after > N || in->top_k_after > in->top_k)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: layer %d: %d experts per token after merging to %d", l,
                            in->top_k_after, N);
    moec_status st = init_groups(in, o, R, err);
    if (st)
        return st;

    const bool fold_method = o->features == MOEC_MERGE_FEAT_METHOD;
    const bool whiten = o->whiten && o->method == MOEC_MERGE_SUBMOE && fold_method;
    const bool want_factors = o->factored && o->method == MOEC_MERGE_SUBMOE && fold_method;
    moec_ml_routing r0 = {0}, r1 = {0};
    moec_ml_scratch s = {0};
    float **S1 = NULL, **S2 = NULL; /* [E] whitening matrices of merged members */
    job *jobs = NULL;
    int n_jobs = 0;
    float *buf1 = NULL, *buf3 = NULL, *buf2 = NULL, *fit = NULL, *y0 = NULL, *y1 = NULL;
    moec_subspace_factors pf = {0};
    moec_tensor router;
    int *job_of = NULL;    /* (g, kind) -> job index + 1 */
    float **nw2 = NULL;    /* FEAT_NEURONS: [N] w2 columns of the chosen neurons */

    if (have_x) {
        if ((st = moec_ml_routing_build(&r0, pool, &SL->router, in->x, in->n_tokens, in->top_k, in->norm_topk, err)) ||
            (st = moec_ml_scratch_init(&s, d, f, err)))
            goto done;
    }
    if (whiten) {
        S1 = calloc((size_t)E, sizeof *S1);
        S2 = calloc((size_t)E, sizeof *S2);
        if (!S1 || !S2) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
            goto done;
        }
        for (int e = 0; e < E && !st; e++) {
            if (R->groups[in->assign[e]].n_members < 2)
                continue;
            S1[e] = malloc((size_t)d * d * sizeof **S1);
            S2[e] = malloc((size_t)f * f * sizeof **S2);
            st = S1[e] && S2[e] ? moec_ml_whiten_expert(pool, in, &r0, e, &s, S1[e], S2[e], err)
                                : moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for whitening matrices");
        }
        if (st)
            goto done;
    }

    /* fold jobs: every kind of every merged group when the method folds them */
    jobs = calloc((size_t)N * MOEC_MERGE_KINDS + 1, sizeof *jobs);
    if (!jobs) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for merge jobs");
        goto done;
    }
    job_of = calloc((size_t)N * MOEC_MERGE_KINDS + 1, sizeof *job_of);
    nw2 = calloc((size_t)N, sizeof *nw2);
    if (!job_of || !nw2) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for merge jobs");
        goto done;
    }
    for (int g = 0; g < N && fold_method && !st; g++) {
        moec_merge_group *G = &R->groups[g];
        if (G->n_members < 2)
            continue;
        for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
            job *j = &jobs[n_jobs];
            *j = (job){.layer = l, .experts = SL->experts, .group = G, .kind = k, .want_factors = want_factors};
            if (whiten) {
                float **wp = malloc((size_t)G->n_members * sizeof *wp);
                if (!wp) {
                    st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
                    break;
                }
                for (int i = 0; i < G->n_members; i++)
                    wp[i] = k == MOEC_MERGE_W2 ? S2[G->members[i]] : S1[G->members[i]];
                j->whiten = (const float *const *)wp;
            }
            job_of[g * MOEC_MERGE_KINDS + k] = ++n_jobs;
        }
    }
    if (!st)
        st = fold_all(pool, jobs, n_jobs, o, err);
    if (st)
        goto done;

    /* the new layer: router slot, N experts starting as the first member's views */
    if ((st = moec_model_new_tensor(dst, &router, SL->router.dtype, N, d, err)) ||
        (st = moec_model_resize_experts(dst, l, N, err)))
        goto done;
    moec_layer *DL = &dst->layers[l];
    for (int g = 0; g < N; g++)
        DL->experts[g] = SL->experts[R->groups[g].members[0]];
    buf1 = malloc((size_t)f * d * sizeof *buf1);
    buf3 = malloc((size_t)f * d * sizeof *buf3);
    buf2 = malloc((size_t)d * f * sizeof *buf2);
    fit = malloc((size_t)d * f * sizeof *fit);
    if (!buf1 || !buf3 || !buf2 || !fit) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
        goto done;
    }

    /* w1/w3 of merged groups */
    for (int g = 0; g < N && !st; g++) {
        moec_merge_group *G = &R->groups[g];
        if (G->n_members < 2)
            continue;
        moec_ffn *DE = &DL->experts[g];
        const moec_ffn *dom = &SL->experts[G->members[moec_ml_dominant(G)]];
        for (int k = 0; k < 2 && !st; k++) {
            const int kind = k ? MOEC_MERGE_W3 : MOEC_MERGE_W1;
            moec_merge_kind *K = &G->kind[kind];
            if (fold_method) {
                job *j = &jobs[job_of[g * MOEC_MERGE_KINDS + kind] - 1];
                st = install(dst, DE, kind, kind_of(dom, kind)->dtype, j->res, want_factors ? &j->fac : NULL, K, err);
            } else if (o->features == MOEC_MERGE_FEAT_DOMINANT) {
                *kind_mut(DE, kind) = *kind_of(dom, kind);
            }
        }
        if (!st && o->features == MOEC_MERGE_FEAT_NEURONS) {
            if (!(nw2[g] = malloc((size_t)d * f * sizeof **nw2))) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
                break;
            }
            st = moec_ml_pick_neurons(pool, in, &r0, G, &s, buf1, buf3, nw2[g], err);
            if (!st)
                st = install(dst, DE, MOEC_MERGE_W1, dom->w1.dtype, buf1, NULL, &G->kind[MOEC_MERGE_W1], err);
            if (!st)
                st = install(dst, DE, MOEC_MERGE_W3, dom->w3.dtype, buf3, NULL, &G->kind[MOEC_MERGE_W3], err);
        }
    }

    /* router */
    if (!st)
        st = router_rows(pool, in, o, R, &router, err);
    if (!st)
        DL->router = router;

    /* w2: the folded (or dominant, or chosen neurons') matrix, fitted when asked;
     * fit_all refits experts left alone only in a layer where a group merged,
     * so that N == E leaves the layer as it was */
    bool any_merged = false;
    for (int g = 0; g < N; g++)
        any_merged |= R->groups[g].n_members > 1;
    const bool refit_alone = o->fit_all && any_merged;
    if (!st && o->fit_down)
        st = moec_ml_routing_build(&r1, pool, &DL->router, in->x, in->n_tokens, in->top_k_after, in->norm_topk, err);
    for (int g = 0; g < N && !st; g++) {
        moec_merge_group *G = &R->groups[g];
        moec_merge_kind *K = &G->kind[MOEC_MERGE_W2];
        moec_ffn *DE = &DL->experts[g];
        const moec_ffn *dom = &SL->experts[G->members[moec_ml_dominant(G)]];
        const bool merged = G->n_members > 1;
        if (!merged && !refit_alone)
            continue;
        const job *j = merged && fold_method ? &jobs[job_of[g * MOEC_MERGE_KINDS + MOEC_MERGE_W2] - 1] : NULL;
        const float *prior = j ? j->res : nw2[g] ? nw2[g] : buf2;
        if (!j && (!merged || o->features == MOEC_MERGE_FEAT_DOMINANT))
            moec_to_f32(buf2, dom->w2.data, dom->w2.dtype, (size_t)d * f);
        if (!o->fit_down) {
            if (o->features == MOEC_MERGE_FEAT_DOMINANT)
                DE->w2 = dom->w2;
            else
                st = install(dst, DE, MOEC_MERGE_W2, dom->w2.dtype, prior, j && want_factors ? &j->fac : NULL, K, err);
            continue;
        }
        st = moec_ml_fit_down(pool, in, o, &r0, &r1, g, G, DE, &s, prior, fit, &K->fit_tokens, err);
        if (st)
            break;
        K->fitted = true;
        if (j && want_factors && j->fac.a) {
            st = project_factors(&j->fac, fit, &pf, err);
            if (!st)
                st = install(dst, DE, MOEC_MERGE_W2, dom->w2.dtype, fit, &pf, K, err);
            free(pf.b);
            pf = (moec_subspace_factors){0};
        } else {
            st = install(dst, DE, MOEC_MERGE_W2, dom->w2.dtype, fit, NULL, K, err);
        }
        if (!st && merged)
            for (int i = 0; i < G->n_members; i++) {
                const moec_tensor *t = &SL->experts[G->members[i]].w2;
                moec_to_f32(buf2, t->data, t->dtype, (size_t)d * f);
                K->merged_err[i] = rel_dist(fit, buf2, (size_t)d * f);
            }
    }

    /* how far the stored layer is from the original on the calibration inputs */
    if (!st && have_x) {
        if (!r1.sel)
            st = moec_ml_routing_build(&r1, pool, &DL->router, in->x, in->n_tokens, in->top_k_after, in->norm_topk,
                                       err);
        y0 = malloc((size_t)MOEC_ML_CHUNK * d * sizeof *y0);
        y1 = malloc((size_t)MOEC_ML_CHUNK * d * sizeof *y1);
        if (!st && (!y0 || !y1))
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
        if (!st)
            moec_ml_measure(pool, in, DL, &r0, &r1, &s, y0, y1, R);
    }

done:
    for (int i = 0; i < n_jobs; i++) {
        free(jobs[i].res);
        free((void *)jobs[i].whiten);
        moec_subspace_factors_free(&jobs[i].fac);
    }
    free(jobs);
    free(job_of);
    for (int g = 0; nw2 && g < N; g++)
        free(nw2[g]);
    free(nw2);
    if (S1)
        for (int e = 0; e < E; e++)
            free(S1[e]);
    if (S2)
        for (int e = 0; e < E; e++)
            free(S2[e]);
    free(S1), free(S2);
    free(buf1), free(buf3), free(buf2), free(fit), free(y0), free(y1);
    moec_ml_routing_free(&r0);
    moec_ml_routing_free(&r1);
    moec_ml_scratch_free(&s);
    return st;
}
