#include "merge/kmeans.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Working state of one kernel K-means run over K[n][n] (double). Distances
 * to a group mean come from the kernel alone:
 *   d(i, C) = K_ii - (2/|C|) sum_{j in C} K_ij + (1/|C|^2) sum_{j,l in C} K_jl. */
typedef struct km {
    const double *K; /* [n][n] */
    int n, k;
    double tol;      /* "strictly closer" margin, relative to the kernel's scale */
    int *size;       /* [k] */
    double *tsum;    /* [k]   sum_{j,l in C} K_jl */
    double *psum;    /* [n][k] sum_{j in C} K_ij */
    double *dist;    /* [n][k] d(i, C) */
} km;

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) with 53 random bits */
static double uniform01(uint64_t *s) { return (double)(splitmix64(s) >> 11) * 0x1.0p-53; }

static double point_dist(const km *m, int i, int j)
{
    const double *K = m->K;
    double d = K[(size_t)i * m->n + i] + K[(size_t)j * m->n + j] - 2.0 * K[(size_t)i * m->n + j];
    return d > 0.0 ? d : 0.0;
}

static void group_stats(km *m, const int *assign)
{
    int n = m->n, k = m->k;
    memset(m->size, 0, (size_t)k * sizeof *m->size);
    memset(m->tsum, 0, (size_t)k * sizeof *m->tsum);
    memset(m->psum, 0, (size_t)n * k * sizeof *m->psum);
    for (int j = 0; j < n; j++)
        m->size[assign[j]]++;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            m->psum[(size_t)i * k + assign[j]] += m->K[(size_t)i * n + j];
    for (int j = 0; j < n; j++)
        m->tsum[assign[j]] += m->psum[(size_t)j * k + assign[j]];
    for (int i = 0; i < n; i++)
        for (int c = 0; c < k; c++) {
            double *d = &m->dist[(size_t)i * k + c];
            if (m->size[c] == 0) {
                *d = INFINITY;
                continue;
            }
            double s = m->size[c];
            *d = m->K[(size_t)i * n + i] - 2.0 * m->psum[(size_t)i * k + c] / s + m->tsum[c] / (s * s);
            if (*d < 0.0)
                *d = 0.0;
        }
}

/* An empty group takes the point farthest from its own mean, from a group of
 * two or more (one always exists while k <= n). */
static void repair_empty(km *m, int *assign)
{
    for (;;) {
        group_stats(m, assign);
        int empty = -1;
        for (int c = 0; c < m->k && empty < 0; c++)
            if (m->size[c] == 0)
                empty = c;
        if (empty < 0)
            return;
        int far = -1;
        double fd = -1.0;
        for (int i = 0; i < m->n; i++) {
            if (m->size[assign[i]] < 2)
                continue;
            double d = m->dist[(size_t)i * m->k + assign[i]];
            if (d > fd) {
                fd = d;
                far = i;
            }
        }
        assign[far] = empty;
    }
}

/* Lloyd iterations from seed points; leaves assign[] and the inertia. */
static void lloyd(km *m, const int *seeds, int max_iter, int *assign, double *inertia,
                  int *iters, int *converged)
{
    int n = m->n, k = m->k;
    for (int i = 0; i < n; i++) {
        int best = 0;
        double bd = point_dist(m, i, seeds[0]);
        for (int c = 1; c < k; c++) {
            double d = point_dist(m, i, seeds[c]);
            if (d < bd - m->tol) {
                bd = d;
                best = c;
            }
        }
        assign[i] = best;
    }
    repair_empty(m, assign);
    *iters = 1;
    *converged = 0;
    while (*iters < max_iter) {
        int moved = 0;
        for (int i = 0; i < n; i++) {
            const double *d = &m->dist[(size_t)i * k];
            int best = assign[i];
            double bd = d[best];
            /* only a strictly closer group moves a point; among those, the
             * lowest index wins ties */
            for (int c = 0; c < k; c++)
                if (d[c] < bd - m->tol) {
                    bd = d[c];
                    best = c;
                }
            if (best != assign[i]) {
                assign[i] = best;
                moved = 1;
            }
        }
        (*iters)++;
        if (!moved) {
            *converged = 1;
            break;
        }
        repair_empty(m, assign);
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += m->dist[(size_t)i * k + assign[i]];
    *inertia = sum;
}

/* Groups numbered by first appearance, so equal partitions compare equal.
 * sizes[k] serves as the old-to-new label map before it is filled. */
static void canonical_labels(int n, int k, int *assign, int *sizes)
{
    int next = 0;
    for (int c = 0; c < k; c++)
        sizes[c] = -1;
    for (int i = 0; i < n; i++) {
        if (sizes[assign[i]] < 0)
            sizes[assign[i]] = next++;
        assign[i] = sizes[assign[i]];
    }
    memset(sizes, 0, (size_t)k * sizeof *sizes);
    for (int i = 0; i < n; i++)
        sizes[assign[i]]++;
}

/* order[n] is scratch */
static void seeds_by_freq(int n, int k, const float *freq, int *seeds, int *order)
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    /* insertion sort: n is the expert count, and it keeps ties in index order */
    for (int i = 1; i < n; i++) {
        int v = order[i], j = i - 1;
        while (j >= 0 && freq[order[j]] < freq[v]) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
    memcpy(seeds, order, (size_t)k * sizeof *seeds);
}

static void seeds_plusplus(const km *m, uint64_t *rng, int *seeds, double *mind, char *chosen)
{
    int n = m->n;
    memset(chosen, 0, (size_t)n);
    int first = (int)(uniform01(rng) * n);
    if (first >= n)
        first = n - 1;
    seeds[0] = first;
    chosen[first] = 1;
    for (int i = 0; i < n; i++)
        mind[i] = point_dist(m, i, first);
    for (int c = 1; c < m->k; c++) {
        double total = 0.0;
        for (int i = 0; i < n; i++)
            if (!chosen[i])
                total += mind[i];
        /* fallback when every remaining point coincides with a seed: the
         * lowest unchosen index (one exists while c < k <= n) */
        int pick = 0;
        while (pick < n - 1 && chosen[pick])
            pick++;
        if (total > 0.0) {
            double u = uniform01(rng) * total, cum = 0.0;
            for (int i = 0; i < n; i++) {
                if (chosen[i] || mind[i] <= 0.0)
                    continue;
                cum += mind[i];
                pick = i;
                if (cum > u)
                    break;
            }
        }
        seeds[c] = pick;
        chosen[pick] = 1;
        for (int i = 0; i < n; i++) {
            double d = point_dist(m, i, pick);
            if (d < mind[i])
                mind[i] = d;
        }
    }
}

static moec_status check_opts(const moec_kmeans_opts *o, int n, int k, const float *freq,
                              moec_err *err)
{
    if (n < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: need at least one item (got %d)", n);
    if (k < 1 || k > n)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: group count %d out of range; expected 1..%d", k, n);
    if (o->init != MOEC_KMEANS_INIT_FREQ && o->init != MOEC_KMEANS_INIT_PLUSPLUS)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: unknown seeding method %d", (int)o->init);
    if (o->max_iter < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: max_iter %d; expected >= 1", o->max_iter);
    if (o->init == MOEC_KMEANS_INIT_PLUSPLUS && o->restarts < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: restarts %d; expected >= 1", o->restarts);
    if (o->init == MOEC_KMEANS_INIT_FREQ) {
        if (!freq)
            return moec_err_set(err, MOEC_ERR_ARG,
                                "kmeans: frequency seeding needs routing frequencies (freq is NULL)");
        for (int i = 0; i < n; i++)
            if (!isfinite(freq[i]) || freq[i] < 0.0f)
                return moec_err_set(err, MOEC_ERR_ARG,
                                    "kmeans: frequency of item %d is %g; expected finite and >= 0", i,
                                    (double)freq[i]);
    }
    return MOEC_OK;
}

/* Runs the chosen seeding on kernel K (owned by the caller). */
static moec_status kmeans_kernel(const double *K, int n, int k, const float *freq,
                                 const moec_kmeans_opts *o, int *assign, int *sizes,
                                 moec_kmeans_info *info, moec_err *err)
{
    moec_kmeans_info res = {0};
    if (k == n || k == 1) {
        for (int i = 0; i < n; i++)
            assign[i] = k == n ? i : 0;
        if (k == 1) {
            double tot = 0.0, diag = 0.0;
            for (size_t i = 0; i < (size_t)n * n; i++)
                tot += K[i];
            for (int i = 0; i < n; i++)
                diag += K[(size_t)i * n + i];
            res.inertia = fmax(0.0, diag - tot / n);
        }
        res.iterations = 1;
        res.converged = 1;
        canonical_labels(n, k, assign, sizes);
        if (info)
            *info = res;
        return MOEC_OK;
    }

    double scale = 0.0;
    for (int i = 0; i < n; i++)
        scale = fmax(scale, fabs(K[(size_t)i * n + i]));
    km m = {.K = K, .n = n, .k = k, .tol = 1e-12 * (scale > 0.0 ? scale : 1.0)};
    m.size = malloc((size_t)k * sizeof *m.size);
    m.tsum = malloc((size_t)k * sizeof *m.tsum);
    m.psum = malloc((size_t)n * k * sizeof *m.psum);
    m.dist = malloc((size_t)n * k * sizeof *m.dist);
    int *seeds = malloc((size_t)k * sizeof *seeds);
    int *trial = malloc((size_t)n * sizeof *trial);
    double *mind = malloc((size_t)n * sizeof *mind);
    char *chosen = malloc((size_t)n);
    moec_status st = MOEC_OK;
    if (!m.size || !m.tsum || !m.psum || !m.dist || !seeds || !trial || !mind || !chosen) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "kmeans: out of memory for %d items, %d groups", n, k);
        goto done;
    }

    if (o->init == MOEC_KMEANS_INIT_FREQ) {
        seeds_by_freq(n, k, freq, seeds, trial);
        lloyd(&m, seeds, o->max_iter, assign, &res.inertia, &res.iterations, &res.converged);
        res.restart = 0;
    } else {
        int have = 0;
        for (int r = 0; r < o->restarts; r++) {
            uint64_t rng = o->seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(r + 1));
            double inertia;
            int iters, conv;
            seeds_plusplus(&m, &rng, seeds, mind, chosen);
            lloyd(&m, seeds, o->max_iter, trial, &inertia, &iters, &conv);
            if (!have || inertia < res.inertia - m.tol) {
                have = 1;
                memcpy(assign, trial, (size_t)n * sizeof *assign);
                res.inertia = inertia;
                res.iterations = iters;
                res.converged = conv;
                res.restart = r;
            }
        }
    }
    canonical_labels(n, k, assign, sizes);
    if (info)
        *info = res;
done:
    free(m.size);
    free(m.tsum);
    free(m.psum);
    free(m.dist);
    free(seeds);
    free(trial);
    free(mind);
    free(chosen);
    return st;
}

moec_status moec_kmeans_gram(const float *gram, int n, int k, const float *freq,
                             const moec_kmeans_opts *opts, int *assign, int *sizes,
                             moec_kmeans_info *info, moec_err *err)
{
    const moec_kmeans_opts def = MOEC_KMEANS_OPTS_DEFAULT;
    const moec_kmeans_opts *o = opts ? opts : &def;
    if (!gram || !assign || !sizes)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: NULL similarity matrix or output");
    moec_status st = check_opts(o, n, k, freq, err);
    if (st != MOEC_OK)
        return st;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (!isfinite(gram[(size_t)i * n + j]))
                return moec_err_set(err, MOEC_ERR_NUMERIC,
                                    "kmeans: similarity matrix entry [%d][%d] is not finite", i, j);
    double *K = malloc((size_t)n * n * sizeof *K);
    if (!K)
        return moec_err_set(err, MOEC_ERR_NOMEM, "kmeans: out of memory for a %dx%d kernel", n, n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            K[(size_t)i * n + j] = 0.5 * ((double)gram[(size_t)i * n + j] + gram[(size_t)j * n + i]);
    st = kmeans_kernel(K, n, k, freq, o, assign, sizes, info, err);
    free(K);
    return st;
}

moec_status moec_kmeans_features(const float *x, int n, int dim, int k, const float *freq,
                                 const moec_kmeans_opts *opts, int *assign, int *sizes,
                                 moec_kmeans_info *info, moec_err *err)
{
    const moec_kmeans_opts def = MOEC_KMEANS_OPTS_DEFAULT;
    const moec_kmeans_opts *o = opts ? opts : &def;
    if (!x || !assign || !sizes)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: NULL features or output");
    if (dim < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "kmeans: feature dimension %d; expected >= 1", dim);
    moec_status st = check_opts(o, n, k, freq, err);
    if (st != MOEC_OK)
        return st;
    for (int i = 0; i < n; i++)
        for (int d = 0; d < dim; d++)
            if (!isfinite(x[(size_t)i * dim + d]))
                return moec_err_set(err, MOEC_ERR_NUMERIC,
                                    "kmeans: feature %d of item %d is not finite", d, i);
    double *K = malloc((size_t)n * n * sizeof *K);
    if (!K)
        return moec_err_set(err, MOEC_ERR_NOMEM, "kmeans: out of memory for a %dx%d kernel", n, n);
    /* centre the features first: distances are unchanged and the kernel's
     * cancellation error no longer scales with the features' common offset */
    double *mean = calloc((size_t)dim, sizeof *mean);
    if (!mean) {
        free(K);
        return moec_err_set(err, MOEC_ERR_NOMEM, "kmeans: out of memory for %d features", dim);
    }
    for (int i = 0; i < n; i++)
        for (int d = 0; d < dim; d++)
            mean[d] += x[(size_t)i * dim + d];
    for (int d = 0; d < dim; d++)
        mean[d] /= n;
    for (int i = 0; i < n; i++)
        for (int j = i; j < n; j++) {
            double s = 0.0;
            const float *a = x + (size_t)i * dim, *b = x + (size_t)j * dim;
            for (int d = 0; d < dim; d++)
                s += (a[d] - mean[d]) * (b[d] - mean[d]);
            K[(size_t)i * n + j] = K[(size_t)j * n + i] = s;
        }
    free(mean);
    st = kmeans_kernel(K, n, k, freq, o, assign, sizes, info, err);
    free(K);
    return st;
}
