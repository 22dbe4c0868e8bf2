/* merge_model.c - expert merging over a whole model (contract in merge.h).
 *
 * Three passes: validate everything (options, statistics, every tensor's
 * shape and dtype) before any work; cluster each layer; then, layer by
 * layer on the layer-streaming pipeline (lib/pipeline), lay out the layer
 * (router, expert slots, owned buffers), single-threaded because the
 * model's allocator is not thread-safe, and fold its matrices, one job per
 * (group, weight kind), in parallel; a streamed layer is written and
 * released before the next. Jobs are independent, so the result
 * does not depend on the thread count or on the order jobs finish in. */
#include "merge/merge.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/threadpool.h"
#include "merge/average.h"
#include "model/model_sink.h"
#include "pipeline/pipeline.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *moec_merge_kind_name(int kind)
{
    static const char *names[MOEC_MERGE_KINDS] = {"w1", "w3", "w2"};
    return kind >= 0 && kind < MOEC_MERGE_KINDS ? names[kind] : "?";
}

const char *moec_merge_method_name(moec_merge_method m)
{
    return m == MOEC_MERGE_SUBMOE ? "submoe" : m == MOEC_MERGE_AVERAGE ? "average" : "?";
}

static const moec_tensor *kind_of(const moec_ffn *f, int kind)
{
    return kind == MOEC_MERGE_W1 ? &f->w1 : kind == MOEC_MERGE_W3 ? &f->w3 : &f->w2;
}

static moec_tensor *kind_of_mut(moec_ffn *f, int kind)
{
    return kind == MOEC_MERGE_W1 ? &f->w1 : kind == MOEC_MERGE_W3 ? &f->w3 : &f->w2;
}

void moec_merge_report_free(moec_merge_report *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_layers && r->layers; i++) {
        moec_merge_layer *L = &r->layers[i];
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
    }
    free(r->layers);
    memset(r, 0, sizeof *r);
}

/* "1+4+6" for messages; a group is named by its original experts. */
static void members_str(const moec_merge_group *g, char *buf, size_t n)
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

/* ---- validation ---- */

static moec_status check_options(const moec_merge_opts *o, moec_err *err)
{
    if (o->method != MOEC_MERGE_SUBMOE && o->method != MOEC_MERGE_AVERAGE)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown method %d", (int)o->method);
    if (o->weighting != MOEC_MERGE_WEIGHT_COUNT && o->weighting != MOEC_MERGE_WEIGHT_GATE)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown weighting %d", (int)o->weighting);
    if (o->router != MOEC_MERGE_ROUTER_AVERAGE && o->router != MOEC_MERGE_ROUTER_DOMINANT)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown router rule %d", (int)o->router);
    if (o->keep < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: keep %d; expected >= 1 experts per layer", o->keep);
    if (o->keep > 0 && o->ratio != 0.0)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: give keep or ratio, not both");
    if (o->keep == 0 && !(o->ratio > 0.0 && o->ratio < 1.0))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge: experts to keep unset: give keep >= 1 or a ratio of experts removed in (0, 1) "
                            "(got %g)",
                            o->ratio);
    if (o->threads < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: threads %d; expected >= 1", o->threads);
    if (o->method == MOEC_MERGE_SUBMOE) {
        if (o->rank < 0)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: rank %d; expected > 0", o->rank);
        if (o->rank == 0 && !(o->energy > 0.0 && o->energy <= 1.0))
            return moec_err_set(err, MOEC_ERR_ARG,
                                "merge: submoe truncation unset: give a rank > 0 or an energy in (0, 1] (got %g)",
                                o->energy);
        if (o->precision != MOEC_SVD_FLOAT && o->precision != MOEC_SVD_DOUBLE)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown SVD precision %d", (int)o->precision);
    }
    return MOEC_OK;
}

static moec_status check_tensor(const moec_tensor *t, int64_t rows, int64_t cols, int layer, int expert,
                                const char *what, moec_err *err)
{
    char name[64];
    if (expert >= 0)
        snprintf(name, sizeof name, "layer %d expert %d %s", layer, expert, what);
    else
        snprintf(name, sizeof name, "layer %d %s", layer, what);
    if (t->ndim == 0 || !t->data)
        return moec_err_set(err, MOEC_ERR_SHAPE, "merge: %s is absent", name);
    if (t->dtype == MOEC_DT_QUANT || !moec_dtype_is_compute(t->dtype))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "merge: %s is %s; merging needs F32, F16 or BF16 weights",
                            name, moec_dtype_name(t->dtype));
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return moec_err_set(err, MOEC_ERR_SHAPE, "merge: %s has shape [%lld][%lld] (%d-D); expected [%lld][%lld]",
                            name, (long long)t->shape[0], t->ndim >= 2 ? (long long)t->shape[1] : 0LL, t->ndim,
                            (long long)rows, (long long)cols);
    size_t need = (size_t)rows * (size_t)cols * moec_dtype_size(t->dtype);
    if (t->nbytes < need)
        return moec_err_set(err, MOEC_ERR_SHAPE, "merge: %s holds %zu bytes; [%lld][%lld] %s needs %zu", name,
                            t->nbytes, (long long)rows, (long long)cols, moec_dtype_name(t->dtype), need);
    return MOEC_OK;
}

static int layer_keep(const moec_merge_opts *o, int E)
{
    return o->keep > 0 ? o->keep : E - (int)lround(o->ratio * E);
}

static moec_status check_layer(const moec_model *src, const moec_stats *stats, const moec_merge_opts *o, int l,
                               moec_err *err)
{
    const moec_layer *L = &src->layers[l];
    const int E = L->n_experts, d = src->cfg.hidden_size, f = src->cfg.expert_ffn;
    moec_status st = check_tensor(&L->router, E, d, l, -1, "router", err);
    for (int e = 0; st == MOEC_OK && e < E; e++) {
        st = check_tensor(&L->experts[e].w1, f, d, l, e, "w1", err);
        if (st == MOEC_OK)
            st = check_tensor(&L->experts[e].w3, f, d, l, e, "w3", err);
        if (st == MOEC_OK)
            st = check_tensor(&L->experts[e].w2, d, f, l, e, "w2", err);
    }
    if (st != MOEC_OK)
        return st;
    if (o->keep > E)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: keep %d exceeds the %d experts of layer %d", o->keep, E, l);
    if (layer_keep(o, E) < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: ratio %g removes every expert of layer %d", o->ratio, l);
    const moec_layer_stats *ls = &stats->layers[l];
    if (layer_keep(o, E) < E && (!ls->out_cos || !(ls->sim_tokens > 0)))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge: statistics have no expert-output similarities for layer %d "
                            "(calibrated with --sim-tokens 0?); clustering needs them",
                            l);
    return MOEC_OK;
}

/* ---- clustering and merge weights ---- */

static moec_status cluster_layer(const moec_model *src, const moec_stats *stats, const moec_merge_opts *o, int l,
                                 moec_merge_layer *R, moec_err *err)
{
    const int E = src->layers[l].n_experts, N = layer_keep(o, E);
    const moec_layer_stats *ls = &stats->layers[l];
    R->layer = l;
    R->n_before = E;
    R->n_after = N;
    R->assign = calloc((size_t)E, sizeof *R->assign);
    R->groups = calloc((size_t)N, sizeof *R->groups);
    int *sizes = calloc((size_t)N, sizeof *sizes);
    float *gram = malloc((size_t)E * E * sizeof *gram);
    float *freq = malloc((size_t)E * sizeof *freq);
    float *raw = malloc((size_t)E * sizeof *raw);
    moec_status st = MOEC_OK;
    if (!R->assign || !R->groups || !sizes || !gram || !freq || !raw) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory clustering layer %d", l);
        goto done;
    }
    for (int e = 0; e < E; e++)
        freq[e] = (float)ls->count[e];
    if (N == E) {
        /* nothing to cluster: every expert is its own group, in order */
        for (int e = 0; e < E; e++) {
            R->assign[e] = e;
            sizes[e] = 1;
        }
        R->converged = 1;
    } else {
        for (size_t i = 0; i < (size_t)E * E; i++)
            gram[i] = (float)ls->out_cos[i];
        moec_kmeans_info info;
        st = moec_kmeans_gram(gram, E, N, freq, &o->kmeans, R->assign, sizes, &info, err);
        if (st != MOEC_OK) {
            moec_err_prefix(err, "merge: clustering layer %d", l);
            goto done;
        }
        R->inertia = info.inertia;
        R->iterations = info.iterations;
        R->converged = info.converged;
    }

    for (int g = 0; g < N; g++) {
        moec_merge_group *G = &R->groups[g];
        G->members = malloc((size_t)sizes[g] * sizeof *G->members);
        G->weights = malloc((size_t)sizes[g] * sizeof *G->weights);
        if (!G->members || !G->weights) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for the groups of layer %d", l);
            goto done;
        }
    }
    for (int e = 0; e < E; e++) {
        moec_merge_group *G = &R->groups[R->assign[e]];
        G->members[G->n_members++] = e;
    }
    for (int g = 0; g < N; g++) {
        moec_merge_group *G = &R->groups[g];
        const double *src_w = o->weighting == MOEC_MERGE_WEIGHT_GATE ? ls->gate_sum : ls->count;
        double sum = 0.0;
        for (int i = 0; i < G->n_members; i++) {
            raw[i] = (float)src_w[G->members[i]];
            sum += raw[i];
        }
        G->uniform_weights = !(sum > 0.0);
        st = moec_merge_weights_normalise(G->uniform_weights ? NULL : raw, G->n_members, G->weights, err);
        if (st != MOEC_OK) {
            moec_err_prefix(err, "merge: layer %d, routing frequencies", l);
            goto done;
        }
    }
done:
    free(sizes);
    free(gram);
    free(freq);
    free(raw);
    return st;
}

/* ---- router ---- */

static moec_status merge_router(const moec_layer *L, const moec_merge_opts *o, const moec_merge_layer *R,
                                moec_tensor *dst, int l, moec_err *err)
{
    const moec_tensor *r = &L->router;
    const size_t d = (size_t)r->shape[1], row_bytes = d * moec_dtype_size(r->dtype);
    const unsigned char *in = r->data;
    unsigned char *outp = (unsigned char *)dst->data;
    const int E = (int)r->shape[0];
    float *rows = malloc((size_t)E * d * sizeof *rows), *acc = malloc(d * sizeof *acc), *w = malloc((size_t)E * sizeof *w);
    const float **ptrs = malloc((size_t)E * sizeof *ptrs);
    moec_status st = MOEC_OK;
    if (!rows || !acc || !w || !ptrs)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for the router of layer %d", l);
    for (int g = 0; g < R->n_after && st == MOEC_OK; g++) {
        const moec_merge_group *G = &R->groups[g];
        if (G->n_members == 1 || o->router == MOEC_MERGE_ROUTER_DOMINANT) {
            int best = 0;
            for (int i = 1; i < G->n_members; i++)
                if (G->weights[i] > G->weights[best])
                    best = i;
            memcpy(outp + (size_t)g * row_bytes, in + (size_t)G->members[best] * row_bytes, row_bytes);
            continue;
        }
        for (int i = 0; i < G->n_members; i++) {
            moec_to_f32(rows + (size_t)i * d, in + (size_t)G->members[i] * row_bytes, r->dtype, d);
            ptrs[i] = rows + (size_t)i * d;
            w[i] = (float)G->weights[i];
        }
        st = moec_average_weighted(ptrs, G->n_members, d, w, acc, err);
        if (st != MOEC_OK) {
            char names[256];
            members_str(G, names, sizeof names);
            moec_err_prefix(err, "merge: layer %d router rows of experts %s", l, names);
            break;
        }
        moec_from_f32(outp + (size_t)g * row_bytes, acc, r->dtype, d);
    }
    free(rows);
    free(acc);
    free(w);
    free(ptrs);
    return st;
}

/* ---- folding one matrix of one group ---- */

typedef struct job {
    int layer;
    const moec_ffn *experts;   /* the source layer's experts */
    moec_merge_group *group;
    int kind;
    moec_tensor *dst;          /* owned buffer in the new model */
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
    float *buf = malloc((size_t)m * n * sizeof *buf), *res = malloc(n * sizeof *res);
    moec_tensor *views = calloc((size_t)m, sizeof *views);
    const float **ptrs = malloc((size_t)m * sizeof *ptrs);
    float *w = malloc((size_t)m * sizeof *w);
    moec_err *err = &j->err;
    moec_status st = MOEC_OK;
    if (!buf || !res || !views || !ptrs || !w) {
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
        views[i].dtype = MOEC_DT_F32;
        views[i].ndim = 2;
        views[i].shape[0] = K->rows;
        views[i].shape[1] = K->cols;
        views[i].data = x;
        views[i].nbytes = n * sizeof(float);
        ptrs[i] = x;
        w[i] = (float)G->weights[i];
    }
    if (o->method == MOEC_MERGE_SUBMOE) {
        moec_subspace_opts so = MOEC_SUBSPACE_OPTS_DEFAULT;
        so.share = MOEC_SHARE_LEFT;
        so.rank = o->rank;
        so.energy = o->energy;
        so.precision = o->precision;
        moec_subspace_report sr = {0};
        sr.member_rel_err = K->recon_err;
        st = moec_subspace_merge(views, m, w, &so, res, NULL, &sr, err);
        if (st != MOEC_OK)
            goto done;
        K->rank = sr.rank;
        K->max_rank = sr.max_rank;
        K->energy = sr.energy;
        K->factored_params = (int64_t)sr.rank * (K->rows + K->cols);
    } else {
        st = moec_average_weighted(ptrs, m, n, w, res, err);
        if (st != MOEC_OK)
            goto done;
    }
    for (int i = 0; i < m; i++)
        K->merged_err[i] = rel_dist(res, ptrs[i], n);
    moec_from_f32((void *)j->dst->data, res, j->dst->dtype, n);
done:
    free(buf);
    free(res);
    free(views);
    free(ptrs);
    free(w);
    if (st != MOEC_OK) {
        char names[256];
        members_str(G, names, sizeof names);
        moec_err_prefix(err, "merge: layer %d, experts %s, %s", j->layer, names, moec_merge_kind_name(j->kind));
    }
    return st;
}

typedef struct run_ctx {
    job *jobs;
    int n;
    const moec_merge_opts *o;
    atomic_int next;
    int done, done0, total; /* progress: matrices folded before this call, and in all */
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
            c->o->progress(c->o->progress_ctx, c->done0 + c->done, c->total);
        pthread_mutex_unlock(&c->mu);
    }
}

/* Runs every job, on a pool when threads > 1; the first failure in job
 * order is reported, so the message does not depend on timing. */
static moec_status fold_all(job *jobs, int n_jobs, int done0, int total, const moec_merge_opts *o, moec_err *err)
{
    run_ctx rc = {.jobs = jobs, .n = n_jobs, .o = o, .done0 = done0, .total = total};
    atomic_init(&rc.next, 0);
    moec_pool *pool = NULL;
    if (o->threads > 1 && n_jobs > 1 && !(pool = moec_pool_new(o->threads < n_jobs ? o->threads : n_jobs)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: cannot start %d threads", o->threads);
    pthread_mutex_init(&rc.mu, NULL);
    moec_pool_run(pool, run_jobs, &rc);
    moec_pool_free(pool);
    pthread_mutex_destroy(&rc.mu);
    for (int i = 0; i < n_jobs; i++)
        if (jobs[i].st != MOEC_OK) {
            if (err)
                *err = jobs[i].err;
            return jobs[i].st;
        }
    return MOEC_OK;
}

/* top_k and parameter counts, once every layer is in place (params_after
 * counted layer by layer as they were laid out). */
static void finish_report(const moec_model *src, moec_model *dst, moec_merge_report *R)
{
    int min_n = src->cfg.top_k;
    for (int i = 0; i < R->n_layers; i++)
        if (R->layers[i].n_after < min_n)
            min_n = R->layers[i].n_after;
    dst->cfg.top_k = min_n;
    R->top_k_after = min_n;
    R->params_before = moec_model_params(src);
    R->params_factored = R->params_after;
    for (int i = 0; i < R->n_layers; i++)
        for (int g = 0; g < R->layers[i].n_after; g++) {
            const moec_merge_group *G = &R->layers[i].groups[g];
            if (G->n_members > 1)
                for (int k = 0; k < MOEC_MERGE_KINDS; k++)
                    R->params_factored += G->kind[k].factored_params - (int64_t)G->kind[k].rows * G->kind[k].cols;
        }
}

/* ---- the new model's layout ---- */

/* The new layer's shape before anything is folded (what a streamed output
 * declares up front): N expert slots viewing each group's first member and
 * a router of N rows without data yet; layout_layer fills them. */
static moec_status shape_layer(const moec_model *src, moec_model *dst, const moec_merge_layer *R, moec_err *err)
{
    const moec_layer *SL = &src->layers[R->layer];
    moec_status st = moec_model_resize_experts(dst, R->layer, R->n_after, err);
    if (st)
        return st;
    moec_layer *DL = &dst->layers[R->layer];
    for (int g = 0; g < R->n_after; g++)
        DL->experts[g] = SL->experts[R->groups[g].members[0]];
    DL->router.shape[0] = R->n_after;
    DL->router.data = NULL;
    DL->router.nbytes = (size_t)R->n_after * (size_t)SL->router.shape[1] * moec_dtype_size(SL->router.dtype);
    return MOEC_OK;
}

/* Router, expert slots and owned buffers of layer R->layer; appends one job
 * per matrix of each merged group. */
static moec_status layout_layer(const moec_model *src, moec_model *dst, const moec_merge_opts *o,
                                moec_merge_layer *R, job *jobs, int *n_jobs, moec_err *err)
{
    const int l = R->layer, N = R->n_after;
    const moec_layer *SL = &src->layers[l];
    moec_tensor router;
    moec_status st = moec_model_new_tensor(dst, &router, SL->router.dtype, N, SL->router.shape[1], err);
    if (st == MOEC_OK)
        st = merge_router(SL, o, R, &router, l, err);
    if (st == MOEC_OK)
        st = moec_model_resize_experts(dst, l, N, err);
    if (st != MOEC_OK)
        return st;
    moec_layer *DL = &dst->layers[l];
    DL->router = router;
    for (int g = 0; g < N; g++) {
        moec_merge_group *G = &R->groups[g];
        const moec_ffn *first = &SL->experts[G->members[0]];
        DL->experts[g] = *first;
        for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
            const moec_tensor *t = kind_of(first, k);
            moec_merge_kind *K = &G->kind[k];
            K->rows = (int)t->shape[0];
            K->cols = (int)t->shape[1];
            K->factored_params = (int64_t)K->rows * K->cols;
            if (G->n_members == 1)
                continue;
            K->merged_err = calloc((size_t)G->n_members, sizeof *K->merged_err);
            if (o->method == MOEC_MERGE_SUBMOE)
                K->recon_err = calloc((size_t)G->n_members, sizeof *K->recon_err);
            if (!K->merged_err || (o->method == MOEC_MERGE_SUBMOE && !K->recon_err))
                return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for the report of layer %d", l);
            moec_tensor *slot = kind_of_mut(&DL->experts[g], k);
            st = moec_model_new_tensor(dst, slot, t->dtype, K->rows, K->cols, err);
            if (st != MOEC_OK)
                return st;
            jobs[*n_jobs] = (job){.layer = l, .experts = SL->experts, .group = G, .kind = k, .dst = slot};
            (*n_jobs)++;
        }
    }
    return MOEC_OK;
}

/* The pipeline's per-layer step: lay out and fold one layer; its
 * parameters are counted before a streamed layer leaves memory. */
typedef struct merge_walk {
    const moec_model *src;
    moec_model *dst;
    const moec_merge_opts *o;
    moec_merge_report *R;
    job *jobs;
    int next_moe, done, total;
} merge_walk;

static moec_status count_params(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    if (moec_tensor_present(s->t))
        *(int64_t *)ctx += moec_tensor_numel(s->t);
    return MOEC_OK;
}

static moec_status merge_layer(void *ctx, moec_pipeline *p, int l, moec_err *err)
{
    (void)p;
    merge_walk *w = ctx;
    moec_status st = MOEC_OK;
    if (w->src->layers[l].n_experts > 0) {
        int n_jobs = 0;
        moec_merge_layer *L = &w->R->layers[w->next_moe++];
        if ((st = layout_layer(w->src, w->dst, w->o, L, w->jobs, &n_jobs, err)) ||
            (st = fold_all(w->jobs, n_jobs, w->done, w->total, w->o, err)))
            return st;
        w->done += n_jobs;
    }
    return moec_model_for_each_slot_in(w->dst, l, count_params, &w->R->params_after, err);
}

/* The embedding is counted before a streamed one leaves, the head after the walk. */
static moec_status merge_begin(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p;
    merge_walk *w = ctx;
    return moec_model_for_each_slot_in(w->dst, MOEC_PART_EMBED, count_params, &w->R->params_after, err);
}

moec_status moec_merge_model(const moec_model *src, const moec_stats *stats, const moec_merge_opts *o,
                             moec_model **out, moec_merge_report *rep, moec_err *err)
{
    const double t0 = now();
    if (out)
        *out = NULL;
    if (!src || !stats || !o || !out)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: model, statistics, options and output are required");
    moec_status st = check_options(o, err);
    if (st != MOEC_OK)
        return st;
    st = moec_stats_check(stats, src, err);
    if (st != MOEC_OK) {
        moec_err_prefix(err, "merge");
        return st;
    }
    const moec_config *c = &src->cfg;
    moec_merge_report R = {0};
    R.method = o->method;
    R.top_k_before = c->top_k;
    for (int l = 0; l < c->n_layers; l++)
        if (src->layers[l].n_experts > 0) {
            st = check_layer(src, stats, o, l, err);
            if (st != MOEC_OK)
                return st;
            R.n_layers++;
        }

    moec_model *dst = NULL;
    moec_model_sink *sink = NULL;
    job *jobs = NULL;
    int n_jobs = 0, max_jobs = 0;
    double t1 = t0;
    R.layers = calloc((size_t)(R.n_layers ? R.n_layers : 1), sizeof *R.layers);
    if (!R.layers) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
        goto fail;
    }
    for (int l = 0, i = 0; l < c->n_layers; l++)
        if (src->layers[l].n_experts > 0) {
            st = cluster_layer(src, stats, o, l, &R.layers[i], err);
            R.layers[i].n_after = R.layers[i].groups ? R.layers[i].n_after : 0;
            if (st != MOEC_OK)
                goto fail;
            max_jobs += MOEC_MERGE_KINDS * R.layers[i].n_after;
            i++;
        }
    t1 = now();
    R.seconds_cluster = t1 - t0;

    st = moec_model_derive(&dst, src, err);
    if (st != MOEC_OK)
        goto fail;
    jobs = calloc((size_t)(max_jobs ? max_jobs : 1), sizeof *jobs);
    if (!jobs) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for %d merge jobs", max_jobs);
        goto fail;
    }
    /* layer by layer on the pipeline: laid out, folded and (with out_dir) written, one at a time */
    for (int i = 0; i < R.n_layers && !st; i++)
        st = shape_layer(src, dst, &R.layers[i], err);
    if (st)
        goto fail;
    if (o->out_dir &&
        (st = moec_model_sink_hf_new(&sink, dst, o->out_dir, o->shard_bytes, o->overwrite, MOEC_DT_QUANT, err)))
        goto fail;
    merge_walk w = {.src = src, .dst = dst, .o = o, .R = &R, .jobs = jobs, .total = max_jobs};
    moec_pipeline_opts po = {.run = dst, .sink = sink, .release_source = sink != NULL};
    const moec_pipeline_ops ops = {.begin = merge_begin, .layer = merge_layer};
    if ((st = moec_pipeline_run(src, dst, &po, &ops, &w, err)) ||
        (st = moec_model_for_each_slot_in(dst, MOEC_PART_HEAD, count_params, &R.params_after, err)))
        goto fail;
    (void)n_jobs;
    R.seconds_merge = now() - t1;
    finish_report(src, dst, &R);
    if (sink && (st = moec_model_sink_finish(sink, dst, NULL, err)))
        goto fail;
    moec_model_sink_free(sink);
    R.seconds = now() - t0;
    free(jobs);
    *out = dst;
    if (rep)
        *rep = R;
    else
        moec_merge_report_free(&R);
    return MOEC_OK;

fail:
    moec_model_sink_free(sink);
    free(jobs);
    moec_model_close(dst);
    moec_merge_report_free(&R);
    return st;
}
