/* prune_easyep.c - EASY-EP (Dong et al., arXiv 2504.06792): domain-specific
 * expert pruning from a few demonstrations.
 *
 * The paper scores expert e in a layer by its output-aware importance on each
 * token, c_{e,t} = g_e(t) * ||y_e(t)|| (gate times the norm of the expert's
 * output, zero when e is not selected), weighted by the token's contribution
 * s_t = 1 - cos(r_t, r_t + sum_e g_e y_e) (how much the routed experts change
 * the token's hidden state; the reference code clamps it at 0):
 *     I_e = sum_t c_{e,t} * s_t,
 * and keeps the top N experts of every layer. moec-calib accumulates I_e in
 * the statistics, in total (easyep_sum) and per calibration domain
 * (easyep_domain, one per text file), so this file only ranks (ties: the
 * routing weight gate_sum, then the lower index). Mixed domains follow the
 * reference code (expert_selection_mix_domain.py): each domain's scores are
 * normalised per layer to sum 1 and the normalised scores are averaged, so a
 * domain with more tokens or larger activations does not outweigh the
 * others. A domain whose scores in a layer are all zero adds nothing there.
 * A single domain is ranked on its raw scores.
 *
 * r_t is the residual stream entering the MoE block, as in the authors' code
 * (it compares the hidden state before and after the routed experts);
 * methods.md writes the normed block input h_t there. moec-calib follows the
 * code (calib/calib.h).
 *
 * Differences from the paper: the paper calibrates on a few demonstrations
 * of a task (question and answer); moec scores whatever text was calibrated,
 * every token of every window. Global allocation (not in the paper) ranks the
 * in-layer shares across layers, see prune.h. */
#include "prune/prune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "drama.train.txt" answers to itself and to "drama". */
static bool domain_matches(const char *have, const char *want)
{
    if (!strcmp(have, want))
        return true;
    const char *dot = strchr(have, '.');
    return dot && strlen(want) == (size_t)(dot - have) && !strncmp(have, want, (size_t)(dot - have));
}

typedef struct {
    const moec_stats *s;
    int row; /* easyep_domain row, -1: easyep_sum */
    const char *name;
} easyep_domain;

/* The domains to score on: every domain of every statistics, or the named ones. */
static moec_status pick_domains(const moec_stats *const *stats, int n_stats, const moec_prune_opts *o,
                                easyep_domain **out, int *n_out, moec_err *err)
{
    int cap = 0;
    for (int i = 0; i < n_stats; i++)
        cap += stats[i]->n_domains > 0 ? stats[i]->n_domains : 1;
    easyep_domain *d = calloc((size_t)cap, sizeof *d);
    if (!d)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    int n = 0;
    for (int i = 0; i < n_stats; i++) {
        const moec_stats *s = stats[i];
        bool split = s->n_domains > 0 && s->domains;
        for (int l = 0; split && l < s->n_layers; l++)
            split = s->layers[l].n_experts == 0 || s->layers[l].easyep_domain;
        int rows = split ? s->n_domains : 1;
        for (int r = 0; r < rows; r++) {
            const char *name = split ? s->domains[r] : (s->source[0] ? s->source : "all");
            bool take = o->n_domains == 0;
            for (int k = 0; k < o->n_domains && !take; k++)
                take = domain_matches(name, o->domains[k]);
            if (take)
                d[n++] = (easyep_domain){s, split ? r : -1, name};
        }
    }
    for (int k = 0; k < o->n_domains; k++) {
        bool found = false;
        for (int i = 0; i < n && !found; i++)
            found = domain_matches(d[i].name, o->domains[k]);
        if (!found) {
            free(d);
            return moec_err_set(err, MOEC_ERR_ARG, "easyep: no calibration domain \"%s\" in the statistics",
                                o->domains[k]);
        }
    }
    *out = d;
    *n_out = n;
    return MOEC_OK;
}

moec_status moec_prune_easyep(const moec_model *src, const moec_stats *const *stats, int n_stats,
                              const moec_prune_opts *opts, moec_model **out, moec_prune_report *rep,
                              moec_err *err)
{
    double t0 = moec_prune_now();
    moec_prune_opts o;
    moec_prune_begin(rep, "easyep", "easyep", opts, &o);
    if (!stats || n_stats < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "easyep: no calibration statistics");
    moec_status st;
    for (int i = 0; i < n_stats; i++)
        if ((st = moec_prune_check_stats(src, stats[i], err)))
            return n_stats > 1 ? moec_err_prefix(err, "statistics %d", i + 1) : st;
    easyep_domain *dom = NULL;
    int n_dom = 0;
    if ((st = pick_domains(stats, n_stats, &o, &dom, &n_dom, err)))
        return st;
    rep->domains = n_dom;

    const int L = src->cfg.n_layers;
    const size_t nl = L > 0 ? (size_t)L : 1;
    double **score = calloc(nl, sizeof *score), **tie = calloc(nl, sizeof *tie);
    bool **mask = moec_prune_mask_new(src);
    moec_model *m = NULL;
    if (!score || !tie || !mask) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int l = 0; l < L; l++) {
        const int E = src->layers[l].n_experts;
        score[l] = calloc((size_t)(E > 0 ? E : 1), sizeof **score);
        tie[l] = calloc((size_t)(E > 0 ? E : 1), sizeof **tie);
        if (!score[l] || !tie[l]) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < n_dom && E > 0; i++) {
            const moec_layer_stats *ls = &dom[i].s->layers[l];
            const double *v = dom[i].row < 0 ? ls->easyep_sum : ls->easyep_domain + (size_t)dom[i].row * E;
            double sum = 0, gsum = 0;
            for (int e = 0; e < E; e++) {
                sum += v[e];
                gsum += ls->gate_sum[e];
            }
            for (int e = 0; e < E; e++) {
                score[l][e] += n_dom == 1 ? v[e] : sum > 0 ? v[e] / sum / n_dom : 0.0;
                tie[l][e] += gsum > 0 ? ls->gate_sum[e] / gsum / n_dom : 0.0;
            }
        }
    }
    st = moec_prune_select(src, &o, (const double *const *)score, (const double *const *)tie, mask, err);
    if (!st)
        st = moec_prune_apply(src, mask, &m, rep, err);
    if (st)
        goto done;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < rep->layers[l].n_before; e++)
            rep->layers[l].score[e] = score[l][e];
    {
        char names[MOEC_PRUNE_NOTE_MAX];
        size_t used = 0;
        names[0] = '\0';
        for (int i = 0; i < n_dom && used < sizeof names; i++) {
            int w = snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "", dom[i].name);
            used += w > 0 ? (size_t)w : 0;
        }
        if (n_dom > 1)
            moec_prune_note(rep, "%d domains mixed (scores normalised to sum 1 per layer and domain, then averaged): %s",
                            n_dom, names);
        else
            moec_prune_note(rep, "scored on one domain: %s", names);
    }
    moec_prune_measure(rep, m);
    if ((st = moec_prune_build(src, m, &o, NULL, NULL, 0, NULL, NULL, err))) {
        moec_model_close(m);
        goto done;
    }
    moec_prune_finish(rep, t0);
    *out = m;
done:
    for (int l = 0; l < L && score; l++)
        free(score[l]);
    for (int l = 0; l < L && tie; l++)
        free(tie[l]);
    free(score);
    free(tie);
    free(dom);
    moec_prune_mask_free(mask, L);
    return st;
}
