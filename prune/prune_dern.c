/* prune_dern.c - DERN, Dropping Experts, Recombining Neurons (Zhou et al.,
 * Findings of EMNLP 2025, arXiv 2509.10377); retraining-free.
 *
 * 1. Drop: experts are ranked by router statistics, the routing weight they
 *    received on the calibration text, gate_sum[e] (router-weighted
 *    frequency; ties: count, then the lower index), and the lowest E - N of
 *    each layer are dropped (global allocation: see prune.h).
 * 2. Decompose: a dropped expert's neuron j is one segment, the triple
 *    (row j of W1, row j of W3, column j of W2), seen as one vector of 3d.
 * 3. Assign: each segment is compared with every neuron of every kept expert
 *    of the layer by cosine similarity of the concatenated triples; the best
 *    match names the receiving expert and its partner neuron (ties: the
 *    kept expert first in output order, then the lower neuron). A segment
 *    whose best similarity is below alpha (--dern-alpha) is discarded: it
 *    fits no kept expert and merging it would only blur a neuron.
 * 4. Recombine: inside each kept expert, every assigned segment is merged
 *    into its partner neuron by an importance-weighted average, the weights
 *    being the gate_sum of the experts the vectors come from:
 *        n_k <- (w_r n_k + sum_s w_src(s) s) / (w_r + sum_s w_src(s)),
 *    so the expert keeps f neurons and the HF shapes stay valid (equal
 *    weights when all are zero). The router rows of dropped experts go.
 *
 * What was read and what was chosen: only the paper's abstract and summaries
 * could be consulted while writing this (three steps: prune by router
 * statistics, decompose into neuron-level segments assigned to the most
 * compatible retained expert, merge segments within each retained expert).
 * The exact similarity (cosine of the concatenated triple) and the merge
 * rule (segments averaged into their partner neuron, which is one assignment
 * step of a clustering of the segments around the kept expert's own neurons)
 * are methods.md's reading and should be checked against the full text.
 *
 * Memory: one kept expert's and one dropped expert's segments as float
 * (2 x f x 3d), the merge sums in double (f x 3d) and a block of
 * similarities at a time; nothing scales with E x f x d. */
#include "prune/prune.h"

#include "pipeline/pipeline.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* seg[f][3d] = [W1 row j | W3 row j | W2 column j] of f as floats. */
static moec_status segments(const moec_ffn *f, float *seg, moec_err *err)
{
    const int64_t ff = moec_tensor_rows(&f->w1), d = moec_tensor_cols(&f->w1);
    float *w2 = malloc((size_t)d * (size_t)ff * sizeof *w2);
    if (!w2)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    for (int64_t j = 0; j < ff; j++) {
        moec_prune_row_f32(&f->w1, j, seg + (size_t)j * 3 * d);
        moec_prune_row_f32(&f->w3, j, seg + (size_t)j * 3 * d + d);
    }
    for (int64_t r = 0; r < d; r++)
        moec_prune_row_f32(&f->w2, r, w2 + (size_t)r * ff);
    for (int64_t j = 0; j < ff; j++)
        for (int64_t r = 0; r < d; r++)
            seg[(size_t)j * 3 * d + 2 * d + r] = w2[(size_t)r * ff + j];
    free(w2);
    return MOEC_OK;
}

static void normalise_rows(float *x, int64_t rows, int64_t cols)
{
    for (int64_t i = 0; i < rows; i++) {
        double s = 0;
        for (int64_t j = 0; j < cols; j++)
            s += (double)x[i * cols + j] * x[i * cols + j];
        float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int64_t j = 0; j < cols; j++)
            x[i * cols + j] *= inv;
    }
}

static moec_status check_expert(const moec_ffn *f, int l, int e, moec_err *err)
{
    const moec_tensor *t[3] = {&f->w1, &f->w3, &f->w2};
    for (int k = 0; k < 3; k++)
        if (t[k]->dtype == MOEC_DT_QUANT || !moec_dtype_is_compute(t[k]->dtype))
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "dern: expert %d of layer %d is stored as %s", e, l,
                                moec_dtype_name(t[k]->dtype));
    return MOEC_OK;
}

/* Where each dropped segment went: kept slot (-1 discarded) and neuron. */
typedef struct {
    int slot, neuron;
    float sim;
} dern_match;

/* Steps 3 and 4 for one layer of the derived model m (kept experts in
 * output order, src the original). */
static moec_status dern_layer(moec_model *m, const moec_model *src, int l, const moec_layer_stats *ls,
                              moec_prune_layer *R, double alpha, moec_prune_report *rep, moec_err *err)
{
    const moec_layer *S = &src->layers[l];
    moec_layer *M = &m->layers[l];
    const int E = S->n_experts, N = R->n_after;
    const int64_t ff = moec_tensor_rows(&S->experts[0].w1), d = moec_tensor_cols(&S->experts[0].w1), w = 3 * d;
    int n_drop = E - N;
    if (n_drop == 0)
        return MOEC_OK;
    const int64_t block = ff < 4096 ? ff : 4096;
    float *a = malloc((size_t)ff * (size_t)w * sizeof *a);    /* a dropped expert's segments */
    float *b = malloc((size_t)ff * (size_t)w * sizeof *b);    /* a kept expert's segments */
    float *sim = malloc((size_t)block * (size_t)ff * sizeof *sim);
    dern_match *match = malloc((size_t)E * (size_t)ff * sizeof *match);
    bool *dropped = calloc((size_t)E, sizeof *dropped), *plain = NULL;
    double *den = NULL, *num = NULL;
    moec_status st = MOEC_OK;
    if (!a || !b || !sim || !match || !dropped) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    R->segments = calloc((size_t)N, sizeof *R->segments);
    if (!R->segments) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }

    for (int e = 0; e < E; e++)
        dropped[e] = R->group[e] < 0;
    /* step 3: best kept neuron for every dropped segment */
    for (int e = 0; e < E; e++) {
        if (!dropped[e])
            continue;
        dern_match *me = match + (size_t)e * ff;
        for (int64_t j = 0; j < ff; j++)
            me[j] = (dern_match){-1, -1, -INFINITY};
        if ((st = segments(&S->experts[e], a, err)))
            goto done;
        normalise_rows(a, ff, w);
        for (int i = 0; i < N; i++) {
            if ((st = segments(&M->experts[i], b, err)))
                goto done;
            normalise_rows(b, ff, w);
            for (int64_t j0 = 0; j0 < ff; j0 += block) {
                int64_t nb = ff - j0 < block ? ff - j0 : block;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)ff, (int)w, 1.0f,
                            a + (size_t)j0 * w, (int)w, b, (int)w, 0.0f, sim, (int)ff);
                for (int64_t j = 0; j < nb; j++)
                    for (int64_t k = 0; k < ff; k++) {
                        float s = sim[(size_t)j * ff + k];
                        if (s > me[j0 + j].sim)
                            me[j0 + j] = (dern_match){i, (int)k, s};
                    }
            }
        }
        for (int64_t j = 0; j < ff; j++) {
            rep->segments++;
            rep->dern_sim_sum += me[j].sim;
            rep->dern_sim_max = rep->segments == 1 || me[j].sim > rep->dern_sim_max ? me[j].sim : rep->dern_sim_max;
            if (me[j].sim >= alpha) {
                rep->segments_assigned++;
                R->segments[me[j].slot]++;
            } else {
                me[j].slot = -1;
                rep->segments_discarded++;
            }
        }
        int best = -1, most = 0;
        for (int i = 0; i < N; i++) {
            int c = 0;
            for (int64_t j = 0; j < ff; j++)
                c += me[j].slot == i;
            if (c > most) {
                most = c;
                best = i;
            }
        }
        R->group[e] = best;
    }

    /* step 4: importance-weighted average of each kept neuron with its segments */
    den = malloc((size_t)ff * sizeof *den);
    num = malloc((size_t)ff * (size_t)w * sizeof *num);
    plain = malloc((size_t)ff * sizeof *plain);
    if (!den || !num || !plain) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < N; i++) {
        if (R->segments[i] == 0)
            continue;
        const int keep = R->kept[i];
        const double wk = ls->gate_sum[keep];
        /* a neuron whose contributors all carry zero weight is averaged plainly */
        for (int64_t k = 0; k < ff; k++)
            den[k] = wk;
        for (int e = 0; e < E; e++)
            for (int64_t j = 0; dropped[e] && j < ff; j++)
                if (match[(size_t)e * ff + j].slot == i)
                    den[match[(size_t)e * ff + j].neuron] += ls->gate_sum[e];
        for (int64_t k = 0; k < ff; k++)
            plain[k] = !(den[k] > 0);
        if ((st = segments(&M->experts[i], b, err)))
            goto done;
        for (int64_t k = 0; k < ff; k++) {
            double wt = plain[k] ? 1.0 : wk;
            den[k] = wt;
            for (int64_t c = 0; c < w; c++)
                num[(size_t)k * w + c] = wt * b[(size_t)k * w + c];
        }
        for (int e = 0; e < E; e++) {
            bool any = false;
            for (int64_t j = 0; dropped[e] && j < ff && !any; j++)
                any = match[(size_t)e * ff + j].slot == i;
            if (!any)
                continue;
            if ((st = segments(&S->experts[e], a, err)))
                goto done;
            for (int64_t j = 0; j < ff; j++) {
                const dern_match *q = match + (size_t)e * ff + j;
                if (q->slot != i)
                    continue;
                double wt = plain[q->neuron] ? 1.0 : ls->gate_sum[e];
                den[q->neuron] += wt;
                for (int64_t c = 0; c < w; c++)
                    num[(size_t)q->neuron * w + c] += wt * a[(size_t)j * w + c];
            }
        }
        for (int64_t k = 0; k < ff; k++)
            for (int64_t c = 0; c < w; c++)
                b[(size_t)k * w + c] = (float)(num[(size_t)k * w + c] / den[k]);
        /* back to the HF layout: W1 and W3 rows, W2 columns */
        float *w1 = malloc((size_t)ff * (size_t)d * sizeof *w1), *w3 = malloc((size_t)ff * (size_t)d * sizeof *w3);
        float *w2 = malloc((size_t)d * (size_t)ff * sizeof *w2);
        if (!w1 || !w3 || !w2) {
            free(w1);
            free(w3);
            free(w2);
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int64_t k = 0; k < ff; k++) {
            memcpy(w1 + (size_t)k * d, b + (size_t)k * w, (size_t)d * sizeof *w1);
            memcpy(w3 + (size_t)k * d, b + (size_t)k * w + d, (size_t)d * sizeof *w3);
            for (int64_t r = 0; r < d; r++)
                w2[(size_t)r * ff + k] = b[(size_t)k * w + 2 * d + r];
        }
        moec_ffn *f = &M->experts[i];
        st = moec_prune_tensor_from_f32(m, &f->w1, &f->w1, w1, err);
        if (!st)
            st = moec_prune_tensor_from_f32(m, &f->w3, &f->w3, w3, err);
        if (!st)
            st = moec_prune_tensor_from_f32(m, &f->w2, &f->w2, w2, err);
        free(w1);
        free(w3);
        free(w2);
        if (st)
            goto done;
    }
done:
    free(a);
    free(b);
    free(sim);
    free(match);
    free(dropped);
    free(plain);
    free(den);
    free(num);
    return st;
}

/* The pipeline's per-layer step: steps 3 and 4 of one layer. */
typedef struct dern_run {
    const moec_model *src;
    moec_model *m;
    const moec_stats *stats;
    moec_prune_report *rep;
    double alpha;
} dern_run;

static moec_status dern_pipeline_layer(void *ctx, moec_pipeline *p, int l, moec_err *err)
{
    (void)p;
    dern_run *d = ctx;
    moec_prune_layer *R = &d->rep->layers[l];
    if (R->n_before == 0)
        return MOEC_OK;
    for (int e = 0; e < R->n_before; e++)
        R->score[e] = d->stats->layers[l].gate_sum[e];
    return dern_layer(d->m, d->src, l, &d->stats->layers[l], R, d->alpha, d->rep, err);
}

moec_status moec_prune_dern(const moec_model *src, const moec_stats *stats, const moec_prune_opts *opts,
                            moec_model **out, moec_prune_report *rep, moec_err *err)
{
    double t0 = moec_prune_now();
    moec_prune_opts o;
    moec_prune_begin(rep, "dern", "gate_sum", opts, &o);
    rep->dern_alpha = o.dern_alpha;
    if (!(o.dern_alpha >= -1.0 && o.dern_alpha <= 1.0))
        return moec_err_set(err, MOEC_ERR_ARG, "dern: alpha %g must be a cosine similarity in [-1, 1]",
                            o.dern_alpha);
    moec_status st = moec_prune_check_stats(src, stats, err);
    if (st)
        return st;
    const int L = src->cfg.n_layers;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < src->layers[l].n_experts; e++)
            if ((st = check_expert(&src->layers[l].experts[e], l, e, err)))
                return st;
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
        primary[l] = stats->layers[l].gate_sum;
        secondary[l] = stats->layers[l].count;
    }
    st = moec_prune_select(src, &o, primary, secondary, mask, err);
    if (!st)
        st = moec_prune_apply(src, mask, &m, rep, err);
    if (st)
        goto done;
    /* recombination changes values only: the sizes are known now */
    moec_prune_measure(rep, m);
    dern_run run = {src, m, stats, rep, o.dern_alpha};
    const moec_pipeline_ops ops = {.layer = dern_pipeline_layer};
    if ((st = moec_prune_build(src, m, &o, NULL, NULL, 0, &ops, &run, err)))
        goto done;
    if (rep->segments)
        moec_prune_note(rep,
                        "%lld of %lld dropped neuron segments merged into kept experts (cosine >= %g), %lld "
                        "discarded; best-match cosine: mean %.3f, max %.3f",
                        (long long)rep->segments_assigned, (long long)rep->segments, o.dern_alpha,
                        (long long)rep->segments_discarded, rep->dern_sim_sum / (double)rep->segments,
                        rep->dern_sim_max);
    moec_prune_finish(rep, t0);
    *out = m;
    m = NULL;
done:
    moec_model_close(m);
    moec_prune_mask_free(mask, L);
    free(primary);
    free(secondary);
    return st;
}
