/* stats.c - calibration statistics: allocation, domains, and the model
 * fingerprint that ties a statistics file to the model it was gathered on. */
#include "calib/stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* the streaming state on the stack needs its size */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

int moec_layer_stats_arrays(moec_layer_stats *ls, int n_domains, moec_stats_array out[MOEC_STATS_N_ARRAYS])
{
    if (ls->n_experts <= 0)
        return 0;
    const size_t E = (size_t)ls->n_experts, d = (size_t)ls->d, D = n_domains > 0 ? (size_t)n_domains : 0;
    const moec_stats_array a[MOEC_STATS_N_ARRAYS] = {
        {"count", &ls->count, E},
        {"gate_sum", &ls->gate_sum, E},
        {"prob_sum", &ls->prob_sum, E},
        {"logit_sum", &ls->logit_sum, E},
        {"logit_sq_sum", &ls->logit_sq_sum, E},
        {"near_miss", &ls->near_miss, E},
        {"co_count", &ls->co_count, E * E},
        {"out_norm_sum", &ls->out_norm_sum, E},
        {"easyep_sum", &ls->easyep_sum, E},
        {"in_sq_sum", &ls->in_sq_sum, E * d},
        {"in_absmax", &ls->in_absmax, E * d},
        {"x_sq_sum", &ls->x_sq_sum, d},
        {"x_absmax", &ls->x_absmax, d},
        {"out_cos", &ls->out_cos, E * E},
        {"easyep_domain", &ls->easyep_domain, D * E},
    };
    memcpy(out, a, sizeof a);
    return MOEC_STATS_N_ARRAYS;
}

static void layer_free(moec_layer_stats *ls, int n_domains)
{
    moec_stats_array a[MOEC_STATS_N_ARRAYS];
    int n = moec_layer_stats_arrays(ls, n_domains, a);
    for (int i = 0; i < n; i++) {
        free(*a[i].p);
        *a[i].p = NULL;
    }
}

void moec_stats_free(moec_stats *s)
{
    if (!s)
        return;
    if (s->layers)
        for (int l = 0; l < s->n_layers; l++)
            layer_free(&s->layers[l], s->n_domains);
    free(s->layers);
    if (s->domains)
        for (int i = 0; i < s->n_domains; i++)
            free(s->domains[i]);
    free(s->domains);
    free(s->domain_tokens);
    free(s);
}

/* Zeroed arrays for one MoE layer; an empty array (no domains yet) stays NULL. */
static moec_status layer_alloc(moec_layer_stats *ls, int n_domains, moec_err *err)
{
    moec_stats_array a[MOEC_STATS_N_ARRAYS];
    int n = moec_layer_stats_arrays(ls, n_domains, a);
    for (int i = 0; i < n; i++) {
        if (a[i].len == 0)
            continue;
        *a[i].p = calloc(a[i].len, sizeof(double));
        if (!*a[i].p)
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for statistics (%s, %zu values)", a[i].name,
                                a[i].len);
    }
    return MOEC_OK;
}

moec_status moec_stats_new(moec_stats **out, const moec_model *m, moec_err *err)
{
    const moec_config *c = &m->cfg;
    *out = NULL;
    if (c->n_layers <= 0 || c->n_layers > MOEC_MAX_LAYERS || c->hidden_size <= 0)
        return moec_err_set(err, MOEC_ERR_ARG, "statistics: model has %d layers of width %d", c->n_layers,
                            c->hidden_size);
    moec_stats *s = calloc(1, sizeof *s);
    if (!s)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    s->version = MOEC_STATS_VERSION;
    s->arch = (int)c->arch;
    s->n_layers = c->n_layers;
    s->d = c->hidden_size;
    s->top_k = c->top_k;
    s->expert_ffn = c->expert_ffn;
    s->vocab = c->vocab_size;
    s->router_hash = moec_model_router_hash(m);
    s->layers = calloc((size_t)c->n_layers, sizeof *s->layers);
    if (!s->layers) {
        moec_stats_free(s);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    for (int l = 0; l < c->n_layers; l++) {
        moec_layer_stats *ls = &s->layers[l];
        ls->n_experts = c->layer_experts[l];
        ls->d = c->hidden_size;
        moec_status st = layer_alloc(ls, 0, err);
        if (st) {
            moec_stats_free(s);
            return st;
        }
    }
    *out = s;
    return MOEC_OK;
}

moec_status moec_stats_add_domain(moec_stats *s, const char *name, int *index, moec_err *err)
{
    const int D = s->n_domains;
    char **names = realloc(s->domains, (size_t)(D + 1) * sizeof *names);
    if (!names)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    s->domains = names;
    double *tok = realloc(s->domain_tokens, (size_t)(D + 1) * sizeof *tok);
    if (!tok)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    s->domain_tokens = tok;
    tok[D] = 0.0;
    size_t len = strnlen(name, 255);
    names[D] = malloc(len + 1);
    if (!names[D])
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    memcpy(names[D], name, len);
    names[D][len] = '\0';
    /* Grow every layer before publishing the new count, so that a failure
     * leaves arrays at least as long as n_domains says. */
    for (int l = 0; l < s->n_layers; l++) {
        moec_layer_stats *ls = &s->layers[l];
        if (ls->n_experts <= 0)
            continue;
        const size_t E = (size_t)ls->n_experts;
        double *p = realloc(ls->easyep_domain, (size_t)(D + 1) * E * sizeof *p);
        if (!p) {
            free(names[D]);
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        }
        memset(p + (size_t)D * E, 0, E * sizeof *p);
        ls->easyep_domain = p;
    }
    s->n_domains = D + 1;
    *index = D;
    return MOEC_OK;
}

uint64_t moec_model_router_hash(const moec_model *m)
{
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const moec_layer *L = &m->layers[l];
        if (L->n_experts <= 0 || !moec_tensor_present(&L->router) || !L->router.data)
            continue;
        size_t bytes = (size_t)moec_tensor_numel(&L->router) * moec_dtype_size(L->router.dtype);
        if (bytes == 0 || bytes > L->router.nbytes)
            bytes = L->router.nbytes;
        XXH3_64bits_update(&st, L->router.data, bytes);
    }
    return XXH3_64bits_digest(&st);
}

moec_status moec_stats_check(const moec_stats *s, const moec_model *m, moec_err *err)
{
    const moec_config *c = &m->cfg;
    if (s->arch != (int)c->arch) {
        const char *a = s->arch >= 0 && s->arch < MOEC_ARCH_COUNT ? moec_arch_name((moec_arch)s->arch) : "unknown";
        return moec_err_set(err, MOEC_ERR_MISMATCH,
                            "statistics were gathered on a %s model, this one is %s", a, moec_arch_name(c->arch));
    }
    static const char *what[] = {"layers", "hidden size", "top-k", "expert FFN size", "vocabulary size"};
    const int theirs[] = {s->n_layers, s->d, s->top_k, s->expert_ffn, s->vocab};
    const int ours[] = {c->n_layers, c->hidden_size, c->top_k, c->expert_ffn, c->vocab_size};
    for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++)
        if (theirs[i] != ours[i])
            return moec_err_set(err, MOEC_ERR_MISMATCH,
                                "statistics were gathered on a model with %s %d, this one has %d", what[i], theirs[i],
                                ours[i]);
    for (int l = 0; l < c->n_layers; l++)
        if (s->layers[l].n_experts != c->layer_experts[l])
            return moec_err_set(err, MOEC_ERR_MISMATCH,
                                "statistics were gathered on a model with %d experts in layer %d, this one has %d",
                                s->layers[l].n_experts, l, c->layer_experts[l]);
    if (s->router_hash != moec_model_router_hash(m))
        return moec_err_set(err, MOEC_ERR_MISMATCH, "router weights differ: statistics belong to another model");
    return MOEC_OK;
}
