/* cluster.c - expert-output similarities and two-layer joint clustering
 * (cluster.h). */
#include "merge/cluster.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/acts.h"

enum { SIM_CHUNK = 256 };

moec_status moec_merge_similarity(moec_pool *pool, const moec_layer *const *layers, const float *const *x,
                                  int n_layers, int64_t n_tokens, int d, float *gram, moec_err *err)
{
    int n = 0, fmax = 0;
    for (int i = 0; i < n_layers; i++) {
        n += layers[i]->n_experts;
        for (int e = 0; e < layers[i]->n_experts; e++) {
            int f = (int)moec_ffn_inner(&layers[i]->experts[e]);
            fmax = f > fmax ? f : fmax;
        }
    }
    if (n < 1 || n_tokens < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: similarity of %d experts on %lld tokens", n,
                            (long long)n_tokens);
    const size_t C = SIM_CHUNK;
    float *U = malloc((size_t)n * C * d * sizeof *U); /* [n][C][d] unit outputs */
    float *h = malloc(C * fmax * sizeof *h), *h3 = malloc(C * fmax * sizeof *h3), *t = malloc(C * fmax * sizeof *t);
    double *G = calloc((size_t)n * n, sizeof *G);
    float *Gc = malloc((size_t)n * n * sizeof *Gc);
    if (!U || !h || !h3 || !t || !G || !Gc) {
        free(U), free(h), free(h3), free(t), free(G), free(Gc);
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for expert-output similarities");
    }
    for (int64_t t0 = 0; t0 < n_tokens; t0 += (int64_t)C) {
        const int64_t c = n_tokens - t0 < (int64_t)C ? n_tokens - t0 : (int64_t)C;
        int row = 0;
        for (int i = 0; i < n_layers; i++)
            for (int e = 0; e < layers[i]->n_experts; e++, row++) {
                float *Y = U + (size_t)row * C * d;
                moec_merge_expert_forward(pool, &layers[i]->experts[e], x[i] + (size_t)t0 * d, c, Y, h, h3, t);
                for (int64_t q = 0; q < c; q++) {
                    float *y = Y + (size_t)q * d;
                    double s = 0.0;
                    for (int j = 0; j < d; j++)
                        s += (double)y[j] * y[j];
                    const float inv = s > 0.0 ? (float)(1.0 / sqrt(s)) : 0.0f;
                    for (int j = 0; j < d; j++)
                        y[j] *= inv;
                }
                if (c < (int64_t)C)
                    memset(Y + (size_t)c * d, 0, (C - (size_t)c) * d * sizeof(float));
            }
        /* Σ_t <u_i(t), u_j(t)>: one product of the stacked rows */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, n, (int)(C * d), 1.0f, U, (int)(C * d), 0.0f, Gc, n);
        for (int i = 0; i < n; i++)
            for (int j = i; j < n; j++)
                G[(size_t)i * n + j] += Gc[(size_t)i * n + j];
    }
    for (int i = 0; i < n; i++)
        for (int j = i; j < n; j++) {
            const float v = (float)(G[(size_t)i * n + j] / (double)n_tokens);
            gram[(size_t)i * n + j] = gram[(size_t)j * n + i] = v;
        }
    for (int i = 0; i < n; i++)
        gram[(size_t)i * n + i] = 1.0f; /* by definition, as moec-calib's out_cos */
    free(U), free(h), free(h3), free(t), free(G), free(Gc);
    return MOEC_OK;
}

/* Groups of each layer from a joint assignment: cluster c becomes group
 * number (first appearance) in every layer it has members in. */
static void split_layers(const int *assign, int E0, int E1, int K, int *a0, int *a1, int *n0, int *n1, int *map)
{
    int *layer_assign[2] = {a0, a1}, *counts[2] = {n0, n1};
    const int base[2] = {0, E0}, size[2] = {E0, E1};
    for (int L = 0; L < 2; L++) {
        for (int c = 0; c < K; c++)
            map[c] = -1;
        int next = 0;
        for (int e = 0; e < size[L]; e++) {
            int c = assign[base[L] + e];
            if (map[c] < 0)
                map[c] = next++;
            layer_assign[L][e] = map[c];
        }
        *counts[L] = next;
    }
}

/* Within-group spread in kernel space of layer L's groups. */
static double group_spread(const double *K, int n, const int *idx, int m)
{
    double s = 0.0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++)
            s += K[(size_t)idx[i] * n + idx[j]];
    double tr = 0.0;
    for (int i = 0; i < m; i++)
        tr += K[(size_t)idx[i] * n + idx[i]];
    return tr - s / m;
}

/* Splits one group off in layer L (experts base..base+E-1 of the joint
 * matrix): among groups of two or more, the one whose split lowers the
 * spread most loses its member farthest from the group mean, which
 * becomes a new group. Returns the spread decrease (-1 when no group can
 * be split). With apply == 0 only the decrease is computed. */
static double split_one(const double *K, int n, int base, int E, int *a, int *groups, int apply)
{
    int *idx = malloc((size_t)E * sizeof *idx);
    if (!idx)
        return -1.0;
    double best_gain = -1.0;
    int best_g = -1, best_e = -1;
    for (int g = 0; g < *groups; g++) {
        int m = 0;
        for (int e = 0; e < E; e++)
            if (a[e] == g)
                idx[m++] = base + e;
        if (m < 2)
            continue;
        const double before = group_spread(K, n, idx, m);
        /* the farthest member from the group mean */
        double far = -1.0;
        int fe = -1;
        for (int i = 0; i < m; i++) {
            double s = 0.0, t = 0.0;
            for (int j = 0; j < m; j++)
                s += K[(size_t)idx[i] * n + idx[j]];
            for (int j = 0; j < m; j++)
                for (int q = 0; q < m; q++)
                    t += K[(size_t)idx[j] * n + idx[q]];
            const double dist = K[(size_t)idx[i] * n + idx[i]] - 2.0 * s / m + t / ((double)m * m);
            if (dist > far) {
                far = dist;
                fe = i;
            }
        }
        int swap = idx[fe];
        idx[fe] = idx[m - 1];
        idx[m - 1] = swap;
        const double after = group_spread(K, n, idx, m - 1);
        if (before - after > best_gain) {
            best_gain = before - after;
            best_g = g;
            best_e = swap - base;
        }
    }
    free(idx);
    if (apply && best_g >= 0)
        a[best_e] = (*groups)++;
    return best_g >= 0 ? best_gain : -1.0;
}

/* Renumbers a layer's groups by first appearance. */
static void renumber(int *a, int E, int groups)
{
    int *map = malloc((size_t)groups * sizeof *map);
    if (!map)
        return;
    for (int g = 0; g < groups; g++)
        map[g] = -1;
    int next = 0;
    for (int e = 0; e < E; e++) {
        if (map[a[e]] < 0)
            map[a[e]] = next++;
        a[e] = map[a[e]];
    }
    free(map);
}

moec_status moec_merge_cluster_joint(const float *gram, int E0, int E1, const float *freq, int target,
                                     const moec_kmeans_opts *opts, int *assign0, int *assign1, int *n0, int *n1,
                                     moec_kmeans_info *info, moec_err *err)
{
    const int n = E0 + E1;
    if (E0 < 1 || E1 < 1 || target < 2 || target > n)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: joint clustering of %d + %d experts into %d groups", E0, E1,
                            target);
    int *assign = malloc((size_t)n * sizeof *assign), *sizes = malloc((size_t)n * sizeof *sizes);
    int *best = malloc((size_t)n * sizeof *best), *map = malloc((size_t)n * sizeof *map);
    double *K = malloc((size_t)n * n * sizeof *K);
    moec_status st = MOEC_OK;
    if (!assign || !sizes || !best || !map || !K) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for joint clustering");
        goto done;
    }
    for (int i = 0; i < n * n; i++)
        K[i] = gram[i];
    int best_K = -1, g0 = 0, g1 = 0;
    moec_kmeans_info kept = {0};
    /* the largest K whose per-layer group counts fit the target */
    for (int k = target; k >= 1 && best_K < 0; k--) {
        moec_kmeans_info ki;
        if ((st = moec_kmeans_gram(gram, n, k, freq, opts, assign, sizes, &ki, err)))
            goto done;
        split_layers(assign, E0, E1, k, assign0, assign1, &g0, &g1, map);
        if (g0 + g1 <= target) {
            best_K = k;
            kept = ki;
        }
    }
    /* meet the target exactly by splitting groups */
    while (g0 + g1 < target) {
        const double gain0 = g0 < E0 ? split_one(K, n, 0, E0, assign0, &g0, 0) : -1.0;
        const double gain1 = g1 < E1 ? split_one(K, n, E0, E1, assign1, &g1, 0) : -1.0;
        if (gain0 < 0.0 && gain1 < 0.0)
            break;
        if (gain0 >= gain1)
            split_one(K, n, 0, E0, assign0, &g0, 1);
        else
            split_one(K, n, E0, E1, assign1, &g1, 1);
    }
    renumber(assign0, E0, g0);
    renumber(assign1, E1, g1);
    *n0 = g0;
    *n1 = g1;
    if (info)
        *info = kept;
done:
    free(assign), free(sizes), free(best), free(map), free(K);
    return st;
}
