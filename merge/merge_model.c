/* merge_model.c - expert merging over a whole model (contract in merge.h).
 *
 * Passes: validate everything (options, statistics, every tensor's shape
 * and dtype) before any work; cluster every layer (from the statistics'
 * output cosines, or from similarities computed on a sample of the
 * calibration inputs, one or two layers at a time); then merge layer by
 * layer with merge_layer.h, each layer calibrated on its inputs: those the
 * already merged layers before it produce (sequential, the default) or the
 * original model's. The layers are walked on the layer-streaming pipeline
 * (lib/pipeline): it keeps the calibration windows' hidden states between
 * layers (one pass of the windows per layer), and with a streamed output
 * writes each merged layer and releases it before the next. Only one
 * layer's calibration inputs are held at a time (plus the similarity
 * sample). */
#include "merge/merge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/threadpool.h"
#include "merge/acts.h"
#include "merge/cluster.h"
#include "merge/merge_layer.h"
#include "merge/merge_quant.h"
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

void moec_merge_report_free(moec_merge_report *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_layers && r->layers; i++)
        moec_merge_layer_report_free(&r->layers[i]);
    free(r->layers);
    memset(r, 0, sizeof *r);
}

/* ---- validation ---- */

static moec_status check_options(const moec_merge_opts *o, moec_err *err)
{
    if (o->method != MOEC_MERGE_SUBMOE && o->method != MOEC_MERGE_AVERAGE)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown method %d", (int)o->method);
    if (o->weighting != MOEC_MERGE_WEIGHT_COUNT && o->weighting != MOEC_MERGE_WEIGHT_GATE)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown weighting %d", (int)o->weighting);
    if (o->router != MOEC_MERGE_ROUTER_AVERAGE && o->router != MOEC_MERGE_ROUTER_DOMINANT &&
        o->router != MOEC_MERGE_ROUTER_FIT)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown router rule %d", (int)o->router);
    if (o->features != MOEC_MERGE_FEAT_METHOD && o->features != MOEC_MERGE_FEAT_DOMINANT &&
        o->features != MOEC_MERGE_FEAT_NEURONS)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown feature rule %d", (int)o->features);
    if (o->clustering != MOEC_MERGE_CLUSTER_LAYER && o->clustering != MOEC_MERGE_CLUSTER_JOINT2)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown clustering %d", (int)o->clustering);
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
    if (!(o->ridge > 0.0) || !isfinite(o->ridge))
        return moec_err_set(err, MOEC_ERR_ARG, "merge: ridge %g; expected > 0", o->ridge);
    if (o->windows && o->sim_tokens < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: %d similarity tokens; expected >= 1", o->sim_tokens);
    if (o->method == MOEC_MERGE_SUBMOE) {
        if (o->rank < 0)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: rank %d; expected > 0", o->rank);
        if (o->rank == 0 && !(o->energy > 0.0 && o->energy <= 1.0))
            return moec_err_set(err, MOEC_ERR_ARG,
                                "merge: submoe truncation unset: give a rank > 0 or an energy in (0, 1] (got %g)",
                                o->energy);
        if (o->precision != MOEC_SVD_FLOAT && o->precision != MOEC_SVD_DOUBLE)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: unknown SVD precision %d", (int)o->precision);
    } else if (o->whiten || o->factored) {
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge: activation-aware truncation and factored storage belong to submoe");
    }
    if (!o->windows && (o->whiten || o->fit_down || o->router == MOEC_MERGE_ROUTER_FIT ||
                        o->features == MOEC_MERGE_FEAT_NEURONS || o->clustering == MOEC_MERGE_CLUSTER_JOINT2))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge: activation-aware truncation, fitted router or w2, neuron selection and "
                            "joint clustering need calibration text");
    if (o->fit_all && !o->fit_down)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: refitting untouched experts needs the w2 fit");
    if (o->out_dir && o->sink)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: give an output directory or a sink, not both");
    if (o->out_dir && o->factored)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge: an HF checkpoint has no factored form; write factored experts to a .moec sink");
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
        return moec_err_set(err, MOEC_ERR_SHAPE, "merge: %s is absent (an expert already merged into factors?)",
                            name);
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
    if (!o->windows) {
        const moec_layer_stats *ls = &stats->layers[l];
        if (layer_keep(o, E) < E && (!ls->out_cos || !(ls->sim_tokens > 0)))
            return moec_err_set(err, MOEC_ERR_ARG,
                                "merge: statistics have no expert-output similarities for layer %d "
                                "(calibrated with --sim-tokens 0?); clustering needs them",
                                l);
    }
    return MOEC_OK;
}

/* ---- clustering ---- */

typedef struct plan {
    int layer;       /* model index */
    int n_after;
    int *assign;     /* [E] */
    double *weight;  /* [E] merge weights */
    double inertia;
    int iterations, converged;
} plan;

/* Per-layer K-means on a similarity matrix. */
static moec_status cluster_one(const float *gram, const float *freq, int E, const moec_merge_opts *o, plan *p,
                               moec_err *err)
{
    if (p->n_after == E) {
        for (int e = 0; e < E; e++)
            p->assign[e] = e;
        p->converged = 1;
        return MOEC_OK;
    }
    int *sizes = malloc((size_t)E * sizeof *sizes);
    if (!sizes)
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
    moec_kmeans_info info;
    moec_status st = moec_kmeans_gram(gram, E, p->n_after, freq, &o->kmeans, p->assign, sizes, &info, err);
    free(sizes);
    if (st)
        return moec_err_prefix(err, "merge: clustering layer %d", p->layer);
    p->inertia = info.inertia;
    p->iterations = info.iterations;
    p->converged = info.converged;
    return MOEC_OK;
}

/* Clustering from the statistics (no calibration windows). */
static moec_status plan_from_stats(const moec_model *src, const moec_stats *stats, const moec_merge_opts *o,
                                   plan *P, int n_moe, moec_err *err)
{
    moec_status st = MOEC_OK;
    for (int i = 0; i < n_moe && !st; i++) {
        const int l = P[i].layer, E = src->layers[l].n_experts;
        const moec_layer_stats *ls = &stats->layers[l];
        float *gram = malloc((size_t)E * E * sizeof *gram), *freq = malloc((size_t)E * sizeof *freq);
        if (!gram || !freq)
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory clustering layer %d", l);
        for (int e = 0; e < E && !st; e++) {
            freq[e] = (float)ls->count[e];
            P[i].weight[e] = o->weighting == MOEC_MERGE_WEIGHT_GATE ? ls->gate_sum[e] : ls->count[e];
        }
        if (!st && P[i].n_after < E)
            for (size_t q = 0; q < (size_t)E * E; q++)
                gram[q] = (float)ls->out_cos[q];
        if (!st)
            st = cluster_one(gram, freq, E, o, &P[i], err);
        free(gram);
        free(freq);
    }
    return st;
}

/* Routing counts of a layer on its calibration inputs (the merge weights
 * and frequency seeding), counts or gate sums per the options. */
static moec_status layer_weights(moec_pool *pool, const moec_model *m, int l, const float *x, int64_t n,
                                 const moec_merge_opts *o, double *weight, float *count, moec_err *err)
{
    const moec_layer *L = &m->layers[l];
    const int E = L->n_experts, k = m->cfg.top_k, C = 2048;
    float *lg = malloc((size_t)C * E * sizeof *lg), *g = malloc((size_t)C * k * sizeof *g);
    int32_t *sel = malloc((size_t)C * k * sizeof *sel);
    moec_status st = MOEC_OK;
    if (!lg || !g || !sel)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
    for (int e = 0; e < E; e++) {
        weight[e] = 0.0;
        if (count)
            count[e] = 0.0f;
    }
    for (int64_t t0 = 0; t0 < n && !st; t0 += C) {
        const int64_t c = n - t0 < C ? n - t0 : C;
        st = moec_merge_route(pool, &L->router, x + (size_t)t0 * m->cfg.hidden_size, c, k, m->cfg.norm_topk, lg,
                              NULL, sel, g, err);
        for (int64_t i = 0; i < c * k && !st; i++) {
            weight[sel[i]] += o->weighting == MOEC_MERGE_WEIGHT_GATE ? g[i] : 1.0;
            if (count)
                count[sel[i]] += 1.0f;
        }
    }
    free(lg), free(g), free(sel);
    return st;
}

/* The first windows holding at least sim_tokens tokens (the windows come
 * round-robin over the calibration files, so a prefix covers them all). */
static moec_merge_windows sample_windows(const moec_merge_windows *w, int sim_tokens)
{
    moec_merge_windows s = *w;
    int64_t tok = 0;
    int i = 0;
    while (i < w->n_windows && tok < sim_tokens)
        tok += w->window_len[i++];
    s.n_windows = i;
    return s;
}

/* Clustering from calibration inputs: the original model's inputs on the
 * similarity sample, every MoE layer at once; per layer or two at a time. */
static moec_status plan_from_windows(moec_pool *pool, const moec_model *src, const moec_merge_opts *o, plan *P,
                                     int n_moe, moec_err *err)
{
    const int d = src->cfg.hidden_size;
    moec_merge_windows sw = sample_windows(o->windows, o->sim_tokens);
    int *layers = malloc((size_t)n_moe * sizeof *layers);
    float **x = calloc((size_t)n_moe, sizeof *x);
    int64_t ns = 0;
    moec_status st = MOEC_OK;
    if (!layers || !x)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
    for (int i = 0; i < n_moe && !st; i++)
        layers[i] = P[i].layer;
    if (!st)
        st = moec_merge_capture(src, &sw, layers, n_moe, moec_pool_size(pool), x, &ns, err);
    if (!st && ns > o->sim_tokens)
        ns = o->sim_tokens;
    for (int i = 0; i < n_moe && !st;) {
        const int l = P[i].layer, E = src->layers[l].n_experts;
        const bool pair = o->clustering == MOEC_MERGE_CLUSTER_JOINT2 && i + 1 < n_moe;
        const int E1 = pair ? src->layers[P[i + 1].layer].n_experts : 0, n = E + E1;
        float *gram = malloc((size_t)n * n * sizeof *gram), *freq = malloc((size_t)n * sizeof *freq);
        double *w1 = malloc((size_t)(E1 ? E1 : 1) * sizeof *w1);
        if (!gram || !freq || !w1) {
            free(gram), free(freq), free(w1);
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory clustering layer %d", l);
            break;
        }
        /* frequency seeding reads the counts on the sample */
        st = layer_weights(pool, src, l, x[i], ns, o, P[i].weight, freq, err);
        if (!st && pair)
            st = layer_weights(pool, src, P[i + 1].layer, x[i + 1], ns, o, w1, freq + E, err);
        const moec_layer *ls[2] = {&src->layers[l], pair ? &src->layers[P[i + 1].layer] : NULL};
        const float *xs[2] = {x[i], pair ? x[i + 1] : NULL};
        const bool need = P[i].n_after < E || (pair && P[i + 1].n_after < E1);
        if (!st && need)
            st = moec_merge_similarity(pool, ls, xs, pair ? 2 : 1, ns, d, gram, err);
        if (!st && pair && need) {
            moec_kmeans_info info;
            st = moec_merge_cluster_joint(gram, E, E1, freq, P[i].n_after + P[i + 1].n_after, &o->kmeans,
                                          P[i].assign, P[i + 1].assign, &P[i].n_after, &P[i + 1].n_after, &info, err);
            if (st)
                moec_err_prefix(err, "merge: clustering layers %d and %d", l, P[i + 1].layer);
            P[i].inertia = P[i + 1].inertia = info.inertia;
            P[i].iterations = P[i + 1].iterations = info.iterations;
            P[i].converged = P[i + 1].converged = info.converged;
        } else if (!st && pair) {
            st = cluster_one(gram, freq, E, o, &P[i], err);
            if (!st)
                st = cluster_one(gram, freq + E, E1, o, &P[i + 1], err);
        } else if (!st) {
            st = cluster_one(gram, freq, E, o, &P[i], err);
        }
        free(gram), free(freq), free(w1);
        i += pair ? 2 : 1;
    }
    for (int i = 0; x && i < n_moe; i++)
        free(x[i]);
    free(x);
    free(layers);
    return st;
}

/* ---- the whole model ---- */

/* What the walk over the layers carries. */
typedef struct merge_walk {
    const moec_model *src;
    moec_model *dst;
    const moec_merge_opts *o;
    moec_merge_report *R;
    plan *P;
    moec_pool *pool;
    int next_moe, top_k;
    int64_t n_tokens;         /* calibration tokens (0 without windows) */
    float *x;                 /* [n_tokens][d]: the current layer's block inputs */
    int64_t x_at;
    int64_t stored, dense_delta, fact_delta; /* parameters, as in finish_counts */
    uint64_t bytes;
} merge_walk;

/* Parameters of a merged layer, counted before a streamed layer leaves:
 * params_after counts merged experts dense, params_factored as factors
 * where the rank saves (whether or not they were stored that way). */
static void count_layer(merge_walk *w, const moec_merge_layer *RL)
{
    const moec_layer *DL = &w->dst->layers[RL->layer];
    for (int g = 0; g < RL->n_after; g++) {
        const moec_merge_group *G = &RL->groups[g];
        const moec_ffn *F = &DL->experts[g];
        const moec_factored *fw[3] = {&F->w1f, &F->w3f, &F->w2f};
        for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
            const moec_merge_kind *K = &G->kind[k];
            const int64_t dense = (int64_t)K->rows * K->cols;
            const int64_t as_stored =
                moec_factored_present(fw[k]) ? moec_tensor_numel(&fw[k]->u) + moec_tensor_numel(&fw[k]->v) : dense;
            w->dense_delta += dense - as_stored;
            const int64_t fact = G->n_members > 1 && K->factored_params < dense ? K->factored_params : dense;
            w->fact_delta += fact - as_stored;
        }
    }
}

/* The MoE hook of a calibration pass: the block inputs, window after window. */
static void keep_inputs(void *ctx, const moec_moe_view *v)
{
    merge_walk *w = ctx;
    const size_t d = (size_t)v->d;
    if (w->x_at + v->n <= w->n_tokens)
        memcpy(w->x + (size_t)w->x_at * d, v->x, (size_t)v->n * d * sizeof *w->x);
    w->x_at += v->n;
}

static moec_status merge_begin(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p, (void)err;
    merge_walk *w = ctx;
    moec_model_count_part(w->dst, MOEC_PART_EMBED, &w->stored, &w->bytes);
    return MOEC_OK;
}

/* Layer l: its block inputs from a pass of the windows (through the
 * merged layers before it when sequential: the pipeline's run model is
 * then dst), its merge weights on them, the merge, the quantization; the
 * driver then advances the windows through the finished layer. */
static moec_status merge_one_layer(void *ctx, moec_pipeline *p, int l, moec_err *err)
{
    merge_walk *w = ctx;
    const moec_config *c = &w->src->cfg;
    const moec_merge_opts *o = w->o;
    moec_status st = MOEC_OK;
    if (w->src->layers[l].n_experts > 0) {
        const int i = w->next_moe++;
        plan *P = &w->P[i];
        const double tc = now();
        if (w->n_tokens > 0) {
            w->x_at = 0;
            st = moec_pipeline_pass(p, l, keep_inputs, NULL, w, NULL, err);
            if (!st && w->x_at != w->n_tokens)
                st = moec_err_set(err, MOEC_ERR_INTERNAL, "merge: layer %d saw %lld calibration tokens of %lld", l,
                                  (long long)w->x_at, (long long)w->n_tokens);
            if (!st)
                st = layer_weights(w->pool, w->src, l, w->x, w->n_tokens, o, P->weight, NULL, err);
            w->R->calib_tokens = w->n_tokens;
        }
        w->R->seconds_calib += now() - tc;
        if (st)
            return st;
        moec_merge_layer_in in = {.layer = l, .src = &w->src->layers[l], .d = c->hidden_size, .f = c->expert_ffn,
                                  .top_k = c->top_k, .top_k_after = w->top_k, .norm_topk = c->norm_topk,
                                  .n_after = P->n_after, .assign = P->assign, .weight = P->weight,
                                  .x = w->n_tokens > 0 ? w->x : NULL, .n_tokens = w->n_tokens};
        moec_merge_layer *RL = &w->R->layers[i];
        if ((st = moec_merge_layer_run(w->dst, &in, o, w->pool, RL, err)))
            return st;
        RL->inertia = P->inertia;
        RL->iterations = P->iterations;
        RL->converged = P->converged;
        count_layer(w, RL);
        if (o->quant && (st = moec_merge_quantize_layer(w->dst, l, o->quant, o->quant_rep, err)))
            return st;
    }
    moec_model_count_part(w->dst, l, &w->stored, &w->bytes);
    return MOEC_OK;
}

/* The shapes of the merged layers, for a sink that declares every tensor
 * before the first is written (HF): a second derived model whose layers
 * have N expert slots viewing each group's first member. */
static moec_status open_hf_sink(const moec_model *src, const moec_merge_opts *o, const plan *P, int n_moe,
                                moec_model_sink **sink, moec_err *err)
{
    moec_model *layout = NULL;
    moec_status st = moec_model_derive(&layout, src, err);
    for (int i = 0; i < n_moe && !st; i++) {
        const int l = P[i].layer, N = P[i].n_after;
        const moec_layer *SL = &src->layers[l];
        int *first = malloc((size_t)N * sizeof *first);
        if (!first) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
            break;
        }
        for (int g = 0; g < N; g++)
            first[g] = -1;
        for (int e = 0; e < SL->n_experts; e++)
            if (first[P[i].assign[e]] < 0)
                first[P[i].assign[e]] = e;
        if (!(st = moec_model_resize_experts(layout, l, N, err))) {
            moec_layer *DL = &layout->layers[l];
            for (int g = 0; g < N; g++)
                DL->experts[g] = SL->experts[first[g] < 0 ? 0 : first[g]];
            DL->router.shape[0] = N;
            DL->router.nbytes = (size_t)N * (size_t)SL->router.shape[1] * moec_dtype_size(SL->router.dtype);
        }
        free(first);
    }
    if (!st)
        st = moec_model_sink_hf_new(sink, layout, o->out_dir, o->shard_bytes, o->overwrite, MOEC_DT_QUANT, err);
    moec_model_close(layout);
    return st;
}

moec_status moec_merge_model(const moec_model *src, const moec_stats *stats, const moec_merge_opts *o,
                             moec_model **out, moec_merge_report *rep, moec_err *err)
{
    const double t0 = now();
    if (out)
        *out = NULL;
    if (!src || !o || !out || (!stats && !o->windows))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge: model, statistics or calibration windows, options and output are required");
    moec_status st = check_options(o, err);
    if (st != MOEC_OK)
        return st;
    if (!o->windows && (st = moec_stats_check(stats, src, err)) != MOEC_OK) {
        moec_err_prefix(err, "merge");
        return st;
    }
    const moec_config *c = &src->cfg;
    moec_merge_report R = {0};
    R.method = o->method;
    R.top_k_before = c->top_k;
    for (int l = 0; l < c->n_layers; l++)
        if (src->layers[l].n_experts > 0) {
            if ((st = check_layer(src, stats, o, l, err)) != MOEC_OK)
                return st;
            R.n_layers++;
        }

    moec_model *dst = NULL;
    moec_model_sink *hf_sink = NULL;
    merge_walk w = {.src = src, .o = o, .R = &R};
    plan *P = calloc((size_t)(R.n_layers ? R.n_layers : 1), sizeof *P);
    R.layers = calloc((size_t)(R.n_layers ? R.n_layers : 1), sizeof *R.layers);
    if (!P || !R.layers) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
        goto fail;
    }
    for (int l = 0, i = 0; l < c->n_layers; l++)
        if (src->layers[l].n_experts > 0) {
            const int E = src->layers[l].n_experts;
            P[i] = (plan){.layer = l, .n_after = layer_keep(o, E)};
            P[i].assign = malloc((size_t)E * sizeof *P[i].assign);
            P[i].weight = malloc((size_t)E * sizeof *P[i].weight);
            if (!P[i].assign || !P[i].weight) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory");
                goto fail;
            }
            i++;
        }
    if (o->threads > 1 && !(w.pool = moec_pool_new(o->threads))) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: cannot start %d threads", o->threads);
        goto fail;
    }
    st = o->windows ? plan_from_windows(w.pool, src, o, P, R.n_layers, err)
                    : plan_from_stats(src, stats, o, P, R.n_layers, err);
    if (st)
        goto fail;
    int top_k = c->top_k;
    for (int i = 0; i < R.n_layers; i++)
        top_k = P[i].n_after < top_k ? P[i].n_after : top_k;
    R.top_k_after = top_k;
    const double t1 = now();
    R.seconds_cluster = t1 - t0;

    if ((st = moec_model_derive(&dst, src, err)))
        goto fail;
    /* every merged layer routes top_k experts; unmerged ones too while the
     * model is being built (the same whenever no layer falls below top_k) */
    dst->cfg.top_k = top_k;
    if (o->out_dir && (st = open_hf_sink(src, o, P, R.n_layers, &hf_sink, err)))
        goto fail;
    if (o->windows) {
        for (int i = 0; i < o->windows->n_windows; i++)
            w.n_tokens += o->windows->window_len[i];
        if (!(w.x = malloc((size_t)w.n_tokens * (size_t)c->hidden_size * sizeof *w.x))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for %lld calibration activations",
                              (long long)w.n_tokens);
            goto fail;
        }
    }
    w.dst = dst;
    w.P = P;
    w.top_k = top_k;
    moec_model_sink *sink = hf_sink ? hf_sink : o->sink;
    moec_pipeline_opts po = {.ids = o->windows ? o->windows->ids : NULL,
                             .window_len = o->windows ? o->windows->window_len : NULL,
                             .n_windows = o->windows ? o->windows->n_windows : 0,
                             .threads = o->threads,
                             .run = o->sequential ? dst : src,
                             .sink = sink,
                             .release_source = sink != NULL};
    const moec_pipeline_ops ops = {.begin = merge_begin, .layer = merge_one_layer};
    if ((st = moec_pipeline_run(src, dst, &po, &ops, &w, err)))
        goto fail;
    moec_model_count_part(dst, MOEC_PART_HEAD, &w.stored, &w.bytes);
    R.seconds_merge = now() - t1 - R.seconds_calib;
    R.params_before = moec_model_params(src);
    R.params_after = w.stored + w.dense_delta;
    R.params_factored = w.stored + w.fact_delta;
    R.bytes_after = w.bytes;
    if (hf_sink && (st = moec_model_sink_finish(hf_sink, dst, NULL, err)))
        goto fail;
    moec_model_sink_free(hf_sink);
    R.seconds = now() - t0;
    free(w.x);
    moec_pool_free(w.pool);
    for (int i = 0; i < R.n_layers; i++)
        free(P[i].assign), free(P[i].weight);
    free(P);
    *out = dst;
    if (rep)
        *rep = R;
    else
        moec_merge_report_free(&R);
    return MOEC_OK;

fail:
    moec_model_sink_free(hf_sink);
    free(w.x);
    moec_pool_free(w.pool);
    for (int i = 0; P && i < R.n_layers; i++)
        free(P[i].assign), free(P[i].weight);
    free(P);
    moec_model_close(dst);
    moec_merge_report_free(&R);
    return st;
}
