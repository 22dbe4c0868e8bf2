/* prune_freq.c - the baseline every method must beat (methods.md
 * "Baseline"): keep the experts the router selected most often on the
 * calibration text, count[e], ties broken by the routing weight they
 * received, gate_sum[e], then by the lower index. Uniform: the top N of
 * each layer. Global: each layer keeps its top top_k, the rest of the budget
 * goes to the largest shares count[e] / sum of the layer's counts. */
#include "prune/prune.h"

#include <stdlib.h>

moec_status moec_prune_freq(const moec_model *src, const moec_stats *stats, const moec_prune_opts *opts,
                            moec_model **out, moec_prune_report *rep, moec_err *err)
{
    double t0 = moec_prune_now();
    moec_prune_opts o;
    moec_prune_begin(rep, "freq", "count", opts, &o);
    moec_status st = moec_prune_check_stats(src, stats, err);
    if (st)
        return st;
    const int L = src->cfg.n_layers;
    const size_t nl = L > 0 ? (size_t)L : 1;
    const double **primary = calloc(nl, sizeof *primary);
    const double **secondary = calloc(nl, sizeof *secondary);
    bool **mask = moec_prune_mask_new(src);
    moec_model *m = NULL;
    if (!primary || !secondary || !mask) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int l = 0; l < L; l++) {
        primary[l] = stats->layers[l].count;
        secondary[l] = stats->layers[l].gate_sum;
    }
    st = moec_prune_select(src, &o, primary, secondary, mask, err);
    if (!st)
        st = moec_prune_apply(src, mask, &m, rep, err);
    if (st)
        goto done;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < rep->layers[l].n_before; e++)
            rep->layers[l].score[e] = stats->layers[l].count[e];
    moec_prune_measure(rep, m);
    if ((st = moec_prune_build(src, m, &o, NULL, NULL, 0, NULL, NULL, err))) {
        moec_model_close(m);
        goto done;
    }
    moec_prune_finish(rep, t0);
    *out = m;
done:
    moec_prune_mask_free(mask, L);
    free(primary);
    free(secondary);
    return st;
}
