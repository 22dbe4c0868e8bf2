/* prune_common.c - what every expert-pruning method shares: turning keep /
 * ratio / allocation into counts, ranking experts by a score, building the
 * derived model from a keep set, and the report. */
#include "prune/prune.h"

#include "pipeline/pipeline.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double moec_prune_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void moec_prune_note(moec_prune_report *rep, const char *fmt, ...)
{
    if (rep->n_notes >= MOEC_PRUNE_MAX_NOTES)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->notes[rep->n_notes++], MOEC_PRUNE_NOTE_MAX, fmt, ap);
    va_end(ap);
}

void moec_prune_row_f32(const moec_tensor *t, int64_t r, float *dst)
{
    size_t cols = (size_t)moec_tensor_cols(t);
    const char *p = (const char *)t->data + (size_t)r * cols * moec_dtype_size(t->dtype);
    moec_to_f32(dst, p, t->dtype, cols);
}

moec_status moec_prune_tensor_from_f32(moec_model *m, moec_tensor *dst, const moec_tensor *src, const float *vals,
                                       moec_err *err)
{
    int64_t rows = src->shape[0], cols = src->ndim >= 2 ? src->shape[1] : 0;
    moec_tensor t;
    moec_status st = moec_model_new_tensor(m, &t, src->dtype, rows, cols, err);
    if (st)
        return st;
    moec_from_f32((void *)t.data, vals, t.dtype, (size_t)moec_tensor_numel(&t));
    *dst = t;
    return MOEC_OK;
}

bool **moec_prune_mask_new(const moec_model *m)
{
    bool **mask = calloc((size_t)m->cfg.n_layers, sizeof *mask);
    if (!mask)
        return NULL;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        mask[l] = calloc((size_t)(m->layers[l].n_experts > 0 ? m->layers[l].n_experts : 1), sizeof **mask);
        if (!mask[l]) {
            moec_prune_mask_free(mask, l);
            return NULL;
        }
    }
    return mask;
}

void moec_prune_mask_free(bool **mask, int n_layers)
{
    if (!mask)
        return;
    for (int l = 0; l < n_layers; l++)
        free(mask[l]);
    free(mask);
}

void moec_prune_begin(moec_prune_report *rep, const char *method, const char *score_name,
                      const moec_prune_opts *opts, moec_prune_opts *o)
{
    static const moec_prune_opts defaults = MOEC_PRUNE_OPTS_DEFAULT;
    *o = opts ? *opts : defaults;
    memset(rep, 0, sizeof *rep);
    rep->method = method;
    rep->score_name = score_name;
    rep->alloc = o->alloc;
}

moec_status moec_prune_check_stats(const moec_model *m, const moec_stats *s, moec_err *err)
{
    if (!s || !s->layers)
        return moec_err_set(err, MOEC_ERR_ARG, "prune: no calibration statistics");
    moec_status st = moec_stats_check(s, m, err);
    if (st)
        return st;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const moec_layer_stats *ls = &s->layers[l];
        if (ls->n_experts > 0 && (!ls->count || !ls->gate_sum || !ls->co_count || !ls->easyep_sum))
            return moec_err_set(err, MOEC_ERR_ARG, "prune: statistics of layer %d lack routing sums", l);
    }
    return MOEC_OK;
}

static int moe_layers(const moec_model *m)
{
    int n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        n += m->layers[l].n_experts > 0;
    return n;
}

moec_status moec_prune_budget(const moec_model *m, const moec_prune_opts *o, int *n_keep, int *total, moec_err *err)
{
    const moec_config *c = &m->cfg;
    int n_moe = moe_layers(m), sum_e = 0;
    if (n_moe == 0)
        return moec_err_set(err, MOEC_ERR_ARG, "prune: the model has no MoE layer");
    if (o->keep < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "prune: keep %d is negative", o->keep);
    if (o->keep > 0 && o->ratio != 0.0)
        return moec_err_set(err, MOEC_ERR_ARG, "prune: give keep or ratio, not both");
    if (o->keep == 0 && !(o->ratio > 0.0 && o->ratio < 1.0))
        return moec_err_set(err, MOEC_ERR_ARG, "prune: ratio %g must be in (0, 1) (the fraction of experts removed)",
                            o->ratio);
    if (o->alloc != MOEC_PRUNE_UNIFORM && o->alloc != MOEC_PRUNE_GLOBAL)
        return moec_err_set(err, MOEC_ERR_ARG, "prune: unknown allocation %d", (int)o->alloc);
    for (int l = 0; l < c->n_layers; l++)
        sum_e += m->layers[l].n_experts;

    if (o->alloc == MOEC_PRUNE_UNIFORM) {
        int t = 0;
        for (int l = 0; l < c->n_layers; l++) {
            int e = m->layers[l].n_experts;
            n_keep[l] = 0;
            if (e == 0)
                continue;
            int k = o->keep > 0 ? o->keep : e - (int)lround(o->ratio * e);
            if (o->keep > e)
                return moec_err_set(err, MOEC_ERR_ARG, "prune: keep %d exceeds the %d experts of layer %d", o->keep,
                                    e, l);
            if (k < 1)
                return moec_err_set(err, MOEC_ERR_ARG, "prune: ratio %g removes every expert of layer %d", o->ratio,
                                    l);
            n_keep[l] = k;
            t += k;
        }
        *total = t;
        return MOEC_OK;
    }

    int floors = 0;
    for (int l = 0; l < c->n_layers; l++) {
        int e = m->layers[l].n_experts;
        n_keep[l] = e == 0 ? 0 : (c->top_k < e ? c->top_k : e);
        floors += n_keep[l];
    }
    long budget = o->keep > 0 ? (long)o->keep * n_moe : sum_e - lround(o->ratio * sum_e);
    if (budget > sum_e)
        return moec_err_set(err, MOEC_ERR_ARG, "prune: global budget %ld exceeds the %d experts of the model", budget,
                            sum_e);
    if (budget < floors)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "prune: global budget %ld is below %d, top_k (%d) experts in each of the %d MoE layers",
                            budget, floors, c->top_k, n_moe);
    *total = (int)budget;
    return MOEC_OK;
}

/* Sorts expert indices by primary desc, secondary desc, index asc. */
static void rank_experts(const double *primary, const double *secondary, int n, int *order)
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    /* insertion sort: n is an expert count, and a stable, total order matters more than speed */
    for (int i = 1; i < n; i++) {
        int v = order[i], j = i - 1;
        while (j >= 0) {
            int u = order[j];
            double dp = primary[v] - primary[u];
            double ds = secondary ? secondary[v] - secondary[u] : 0.0;
            bool before = dp > 0 || (dp == 0 && ds > 0) || (dp == 0 && ds == 0 && v < u);
            if (!before)
                break;
            order[j + 1] = u;
            j--;
        }
        order[j + 1] = v;
    }
}

moec_status moec_prune_select(const moec_model *m, const moec_prune_opts *o, const double *const *primary,
                              const double *const *secondary, bool **keep_mask, moec_err *err)
{
    const int L = m->cfg.n_layers;
    int *n_keep = calloc((size_t)L, sizeof *n_keep);
    int *order = NULL;
    moec_status st = MOEC_OK;
    int total = 0, max_e = 0;
    if (!n_keep)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    st = moec_prune_budget(m, o, n_keep, &total, err);
    if (st)
        goto done;
    for (int l = 0; l < L; l++)
        max_e = m->layers[l].n_experts > max_e ? m->layers[l].n_experts : max_e;
    order = malloc((size_t)max_e * sizeof *order);
    if (!order) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int l = 0; l < L; l++) {
        int e = m->layers[l].n_experts;
        if (e == 0)
            continue;
        for (int i = 0; i < e; i++)
            if (!isfinite(primary[l][i]) || (secondary && !isfinite(secondary[l][i]))) {
                st = moec_err_set(err, MOEC_ERR_NUMERIC, "prune: score of expert %d in layer %d is not finite", i,
                                  l);
                goto done;
            }
        rank_experts(primary[l], secondary ? secondary[l] : NULL, e, order);
        memset(keep_mask[l], 0, (size_t)e * sizeof **keep_mask);
        for (int i = 0; i < n_keep[l]; i++)
            keep_mask[l][order[i]] = true;
        total -= n_keep[l];
    }
    /* global: hand the rest of the budget to the largest in-layer shares */
    while (o->alloc == MOEC_PRUNE_GLOBAL && total > 0) {
        int bl = -1, be = -1;
        double bshare = -INFINITY, bsec = -INFINITY;
        for (int l = 0; l < L; l++) {
            int e = m->layers[l].n_experts;
            double sum = 0;
            for (int i = 0; i < e; i++)
                sum += primary[l][i];
            for (int i = 0; i < e; i++) {
                if (keep_mask[l][i])
                    continue;
                double share = sum > 0 ? primary[l][i] / sum : 1.0 / e;
                double sec = secondary ? secondary[l][i] : 0.0;
                if (share > bshare || (share == bshare && sec > bsec)) {
                    bshare = share;
                    bsec = sec;
                    bl = l;
                    be = i;
                }
            }
        }
        if (bl < 0)
            break;
        keep_mask[bl][be] = true;
        total--;
    }
done:
    free(order);
    free(n_keep);
    return st;
}

moec_status moec_prune_apply(const moec_model *src, bool *const *keep_mask, moec_model **out, moec_prune_report *rep,
                             moec_err *err)
{
    const int L = src->cfg.n_layers;
    moec_model *m = NULL;
    moec_status st = moec_model_derive(&m, src, err);
    if (st)
        return st;
    rep->n_layers = L;
    rep->layers = calloc((size_t)L, sizeof *rep->layers);
    if (!rep->layers) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    rep->top_k_before = src->cfg.top_k;
    rep->params_before = moec_model_params(src);
    rep->bytes_before = moec_model_bytes(src);

    int min_kept = 0, max_kept = 0;
    for (int l = 0; l < L; l++) {
        const moec_layer *S = &src->layers[l];
        moec_prune_layer *R = &rep->layers[l];
        const int E = S->n_experts;
        if (E == 0)
            continue;
        if (S->router.dtype == MOEC_DT_QUANT || !moec_dtype_is_compute(S->router.dtype)) {
            st = moec_err_set(err, MOEC_ERR_UNSUPPORTED, "prune: router of layer %d is stored as %s", l,
                              moec_dtype_name(S->router.dtype));
            goto fail;
        }
        int n = 0;
        for (int e = 0; e < E; e++)
            n += keep_mask[l][e];
        if (n < 1) {
            st = moec_err_set(err, MOEC_ERR_INTERNAL, "prune: layer %d would keep no expert", l);
            goto fail;
        }
        R->n_before = E;
        R->n_after = n;
        R->kept = malloc((size_t)n * sizeof *R->kept);
        R->group = malloc((size_t)E * sizeof *R->group);
        R->score = calloc((size_t)E, sizeof *R->score);
        if (!R->kept || !R->group || !R->score) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto fail;
        }
        st = moec_model_resize_experts(m, l, n, err);
        if (st)
            goto fail;
        moec_tensor router;
        st = moec_model_new_tensor(m, &router, S->router.dtype, n, S->router.shape[1], err);
        if (st)
            goto fail;
        size_t row = (size_t)S->router.shape[1] * moec_dtype_size(S->router.dtype);
        int i = 0;
        for (int e = 0; e < E; e++) {
            R->group[e] = -1;
            if (!keep_mask[l][e])
                continue;
            R->group[e] = i;
            R->kept[i] = e;
            m->layers[l].experts[i] = S->experts[e];
            memcpy((char *)router.data + (size_t)i * row, (const char *)S->router.data + (size_t)e * row, row);
            i++;
        }
        m->layers[l].router = router;
        min_kept = min_kept == 0 || n < min_kept ? n : min_kept;
        max_kept = n > max_kept ? n : max_kept;
    }
    m->cfg.n_experts = max_kept;
    if (min_kept > 0 && m->cfg.top_k > min_kept) {
        moec_prune_note(rep,
                        "num_experts_per_tok lowered from %d to %d: a layer keeps only %d experts, so every token "
                        "now uses %d experts per layer",
                        m->cfg.top_k, min_kept, min_kept, min_kept);
        m->cfg.top_k = min_kept;
    }
    rep->top_k_after = m->cfg.top_k;
    *out = m;
    return MOEC_OK;
fail:
    moec_model_close(m);
    return st;
}

void moec_prune_measure(moec_prune_report *rep, const moec_model *out)
{
    rep->params_after = moec_model_params(out);
    rep->bytes_after = moec_model_bytes(out);
    rep->non_uniform = !moec_config_uniform(&out->cfg);
}

moec_status moec_prune_build(const moec_model *src, moec_model *m, const moec_prune_opts *o, const int32_t *ids,
                             const int *window_len, int n_windows, const moec_pipeline_ops *ops, void *ctx,
                             moec_err *err)
{
    moec_model_sink *sink = NULL;
    moec_status st = MOEC_OK;
    if (o->out_dir &&
        (st = moec_model_sink_hf_new(&sink, m, o->out_dir, o->shard_bytes, o->overwrite, MOEC_DT_QUANT, err)))
        return st;
    const moec_pipeline_ops none = {0};
    moec_pipeline_opts po = {.ids = ids, .window_len = window_len, .n_windows = ids ? n_windows : 0,
                             .threads = o->threads > 0 ? o->threads : 1, .run = m, .sink = sink,
                             .release_source = sink != NULL};
    st = moec_pipeline_run(src, m, &po, ops ? ops : &none, ctx, err);
    if (!st && sink)
        st = moec_model_sink_finish(sink, m, NULL, err);
    moec_model_sink_free(sink);
    return st;
}

void moec_prune_finish(moec_prune_report *rep, double t0)
{
    if (rep->non_uniform)
        moec_prune_note(rep, "layers keep different numbers of experts: config.json lists them in "
                             "\"moec_layer_experts\", which moec reads; transformers, llama.cpp and other HF "
                             "tools will not load this checkpoint");
    rep->seconds = moec_prune_now() - t0;
}

void moec_prune_report_free(moec_prune_report *rep)
{
    if (!rep)
        return;
    if (rep->layers)
        for (int l = 0; l < rep->n_layers; l++) {
            free(rep->layers[l].kept);
            free(rep->layers[l].group);
            free(rep->layers[l].score);
            free(rep->layers[l].segments);
        }
    free(rep->layers);
    memset(rep, 0, sizeof *rep);
}

static cJSON *int_array(const int *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

cJSON *moec_prune_report_json(const moec_prune_report *rep)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "method", rep->method ? rep->method : "?");
    cJSON_AddStringToObject(o, "allocation", rep->alloc == MOEC_PRUNE_GLOBAL ? "global" : "uniform");
    cJSON_AddBoolToObject(o, "non_uniform", rep->non_uniform);
    if (rep->score_name)
        cJSON_AddStringToObject(o, "score", rep->score_name);
    cJSON *layers = cJSON_AddArrayToObject(o, "layers");
    for (int l = 0; layers && l < rep->n_layers; l++) {
        const moec_prune_layer *R = &rep->layers[l];
        if (R->n_before == 0)
            continue;
        cJSON *lo = cJSON_CreateObject();
        if (!lo)
            break;
        cJSON_AddNumberToObject(lo, "layer", l);
        cJSON_AddNumberToObject(lo, "experts_before", R->n_before);
        cJSON_AddNumberToObject(lo, "experts_after", R->n_after);
        cJSON_AddItemToObject(lo, "kept", int_array(R->kept, R->n_after));
        cJSON_AddItemToObject(lo, "group", int_array(R->group, R->n_before));
        cJSON *sc = cJSON_AddArrayToObject(lo, "score");
        for (int e = 0; sc && e < R->n_before; e++)
            cJSON_AddItemToArray(sc, cJSON_CreateNumber(R->score[e]));
        if (R->segments)
            cJSON_AddItemToObject(lo, "segments_merged", int_array(R->segments, R->n_after));
        cJSON_AddItemToArray(layers, lo);
    }
    cJSON_AddNumberToObject(o, "top_k_before", rep->top_k_before);
    cJSON_AddNumberToObject(o, "top_k_after", rep->top_k_after);
    cJSON_AddNumberToObject(o, "params_before", (double)rep->params_before);
    cJSON_AddNumberToObject(o, "params_after", (double)rep->params_after);
    cJSON_AddNumberToObject(o, "bytes_before", (double)rep->bytes_before);
    cJSON_AddNumberToObject(o, "bytes_after", (double)rep->bytes_after);
    cJSON_AddNumberToObject(o, "seconds", rep->seconds);
    if (rep->method && !strcmp(rep->method, "stun")) {
        cJSON *s = cJSON_AddObjectToObject(o, "stun");
        if (s) {
            cJSON_AddNumberToObject(s, "mix", rep->stun_mix);
            cJSON_AddNumberToObject(s, "tau", rep->stun_tau);
            cJSON_AddNumberToObject(s, "sparsity_requested", rep->sparsity_requested);
            cJSON_AddNumberToObject(s, "sparsity_achieved", rep->sparsity_achieved);
            cJSON_AddNumberToObject(s, "wanda_weights", (double)rep->wanda_weights);
            cJSON_AddNumberToObject(s, "wanda_zeros", (double)rep->wanda_zeros);
            cJSON_AddNumberToObject(s, "wanda_skipped_experts", rep->wanda_skipped);
        }
    }
    if (rep->method && !strcmp(rep->method, "dern")) {
        cJSON *s = cJSON_AddObjectToObject(o, "dern");
        if (s) {
            cJSON_AddNumberToObject(s, "alpha", rep->dern_alpha);
            cJSON_AddNumberToObject(s, "segments", (double)rep->segments);
            cJSON_AddNumberToObject(s, "assigned", (double)rep->segments_assigned);
            cJSON_AddNumberToObject(s, "discarded", (double)rep->segments_discarded);
            cJSON_AddNumberToObject(s, "best_cosine_mean",
                                    rep->segments ? rep->dern_sim_sum / (double)rep->segments : 0.0);
            cJSON_AddNumberToObject(s, "best_cosine_max", rep->dern_sim_max);
        }
    }
    if (rep->method && !strcmp(rep->method, "easyep"))
        cJSON_AddNumberToObject(o, "domains", rep->domains);
    cJSON *notes = cJSON_AddArrayToObject(o, "notes");
    for (int i = 0; notes && i < rep->n_notes; i++)
        cJSON_AddItemToArray(notes, cJSON_CreateString(rep->notes[i]));
    return o;
}
