/* stats.h - calibration statistics: what running real text through a model
 * tells about its experts, gathered once (moec-calib) and reused by every
 * pruning, merging and quantization recipe.
 *
 * All sums are over calibration tokens t; for MoE layer l with E experts:
 * h_t is the block input after its norm (what router and experts read),
 * r_t the residual stream entering the block, S(t) the selected experts,
 * g_e(t) the gate applied to expert e's output, y_e(t) expert e's output.
 * Sums are double so that millions of tokens accumulate without loss.
 */
#ifndef MOEC_CALIB_STATS_H
#define MOEC_CALIB_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "model/model.h"

#define MOEC_STATS_VERSION 1

typedef struct moec_layer_stats {
    int n_experts;          /* E (0 for a dense layer: no statistics) */
    int d;                  /* hidden size */
    double tokens;          /* tokens seen by this layer */
    double *count;          /* [E] tokens routed to e */
    double *gate_sum;       /* [E] Σ_{t: e∈S(t)} g_e(t) */
    double *prob_sum;       /* [E] Σ_t softmax probability of e, selected or not */
    double *logit_sum;      /* [E] Σ_t router logit of e */
    double *logit_sq_sum;   /* [E] Σ_t (router logit of e)² */
    double *near_miss;      /* [E] tokens where e ranked just outside the top-k (EAQuant balance) */
    double *co_count;       /* [E][E] tokens where both i and j are selected (diagonal = count) */
    double *out_norm_sum;   /* [E] Σ_{t: e∈S(t)} g_e(t)·‖y_e(t)‖ (EASY-EP c_{e,t}) */
    double *easyep_sum;     /* [E] Σ_t c_{e,t}·s_t, s_t = 1 − cos(r_t, r_t + Σ_e g_e y_e) */
    double *in_sq_sum;      /* [E][d] Σ_{t: e∈S(t)} h_t[j]² : routed inputs per channel (Wanda) */
    double *in_absmax;      /* [E][d] max_{t: e∈S(t)} |h_t[j]| (smoothing) */
    double *x_sq_sum;       /* [d] Σ_t h_t[j]² over all tokens (router input) */
    double *x_absmax;       /* [d] max_t |h_t[j]| */
    /* expert-output similarity on a fixed sample of tokens, computed for
     * every expert (not only the selected ones) */
    double sim_tokens;      /* tokens in the sample */
    double *out_cos;        /* [E][E] mean over sample tokens of cos(y_i(t), y_j(t)) */
    /* EASY-EP mixes domains by normalising each domain's scores per layer:
     * easyep_sum split by calibration domain (one per text file). */
    double *easyep_domain;  /* [n_domains][E]; rows sum to easyep_sum */
} moec_layer_stats;

/* The per-layer arrays in file order, so that code which treats them alike
 * (file I/O, comparisons, dumps) lists them once. */
#define MOEC_STATS_N_ARRAYS 15
typedef struct moec_stats_array {
    const char *name; /* field name, e.g. "co_count" */
    double **p;       /* the field */
    size_t len;       /* doubles in it */
} moec_stats_array;

typedef struct moec_stats {
    int version;
    /* fingerprint of the model the statistics belong to */
    int arch;
    int n_layers, d, top_k, expert_ffn, vocab;
    uint64_t router_hash;   /* XXH3 of every router's weight bytes, in layer order */
    double tokens;          /* calibration tokens in total */
    char source[256];       /* a note on the calibration text (file names) */
    moec_layer_stats *layers; /* [n_layers] */
    int n_domains;          /* calibration domains (moec-calib: one per text file) */
    char **domains;         /* [n_domains] names, owned */
    double *domain_tokens;  /* [n_domains] tokens from each domain */
} moec_stats;

/* Allocates zeroed statistics shaped for model m (fingerprint filled, no
 * domains). Free with moec_stats_free. */
moec_status moec_stats_new(moec_stats **out, const moec_model *m, moec_err *err);
void moec_stats_free(moec_stats *s);

/* Appends a domain named `name` (copied; at most 255 bytes) with zeroed
 * sums and puts its index in *index. */
moec_status moec_stats_add_domain(moec_stats *s, const char *name, int *index, moec_err *err);

/* Fills out[] with the arrays of layer ls (n_domains of its moec_stats) and
 * returns how many (MOEC_STATS_N_ARRAYS for an MoE layer, 0 for a dense one). */
int moec_layer_stats_arrays(moec_layer_stats *ls, int n_domains, moec_stats_array out[MOEC_STATS_N_ARRAYS]);

/* The fingerprint of m; statistics whose fingerprint differs belong to
 * another model (or to this model before a transformation changed its
 * experts) and are refused by moec_stats_check. */
uint64_t moec_model_router_hash(const moec_model *m);
moec_status moec_stats_check(const moec_stats *s, const moec_model *m, moec_err *err);

/* File format: see docs/stats.md. Written atomically; read with full
 * validation (magic, version, sizes, checksum). */
moec_status moec_stats_save(const moec_stats *s, const char *path, moec_err *err);
moec_status moec_stats_load(moec_stats **out, const char *path, moec_err *err);
/* The same on a file image in memory (size bytes at data, not kept);
 * label names it in messages. */
moec_status moec_stats_load_mem(moec_stats **out, const void *data, size_t size, const char *label,
                                moec_err *err);

#endif
