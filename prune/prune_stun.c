/* prune_stun.c - STUN, structured-then-unstructured pruning (Lee et al.,
 * ACL 2025, arXiv 2409.06211; reference code github.com/thnkinbtfly/STUN).
 *
 * Stage 1, expert pruning with O(1) forward passes: experts the router
 * treats alike are redundant, so cluster them and keep one per cluster.
 *  - Behavioural distance, per layer (the reference code's merge_weight.py):
 *        D_ij = ||R_i - R_j||_2 / ||R||_F + lambda * (-C_ij / mean(C)),
 *    R the router rows, C the co-selection counts (tokens that selected both
 *    i and j; diagonal zeroed, mean over all E x E entries as the reference's
 *    assemble step gives it), lambda = --stun-mix. The reference divides the
 *    router distance by ||R||_F only when it uses no co-selection; moec
 *    always does, so one threshold means the same in every layer and lambda
 *    weighs two unit-free terms. lambda = 0 is the router-only variant.
 *    Without co-selections (top-1 routing, or no tokens) the second term is
 *    dropped and the report says so.
 *  - Greedy agglomerative clustering with complete linkage: expert pairs in
 *    increasing distance (ties: lower i, then lower j); the clusters of a
 *    pair merge only if every cross pair is closer than tau, otherwise the
 *    pair is passed over for good (clusters only grow, so it could never
 *    merge later). The reference checks only the cross pairs that involve
 *    the two experts of the pair, against a matrix it edits as it goes; moec
 *    checks all of them, the complete linkage methods.md states (only the
 *    paper's abstract and the reference code could be read while writing
 *    this). The reference's published run (Snowflake Arctic) clusters on the
 *    co-selection term alone; lambda = 1 is moec's choice of default.
 *  - tau: global (the paper's allocation): bisection over the sorted
 *    distances for the smallest tau whose clustering leaves at most the
 *    budget; the clusterings of all layers then run together, pairs of all
 *    layers in one order of increasing distance, and stop at exactly the
 *    budget (the reference searches tau until the total matches and gives up
 *    when it cannot; ties in the distances make an exact match impossible
 *    there, this order never misses it). Each layer keeps at least
 *    min(top_k, E). Uniform (for plain HF configs): the same search per layer
 *    with that layer's count as the target, so complete linkage still shapes
 *    the clusters.
 *  - Representative ("selective reconstruction"): the member whose
 *    flattened weights [W1 | W3 | W2] are closest to the cluster's weight
 *    centroid, found from the members' Gram matrix streamed row by row, so
 *    no expert is ever widened to float whole; its router row is kept as is.
 *    The reference averages the members instead when a layer keeps no more
 *    than --merge_max_clusters clusters; moec always keeps a real expert.
 *
 * Stage 2, unstructured pruning inside the kept experts: Wanda. Each weight
 * scores |W_ij| * ||X_j||_2, X_j the j-th input of that linear layer over the
 * calibration tokens routed to the expert, and the lowest floor(s * cols) of
 * every output row are zeroed (stable order: ties go to the lower column).
 * W1 and W3 read the block input h, W2 reads silu(W1 h) * (W3 h). As in the
 * reference workflow (stage 1 writes a checkpoint, Wanda then runs on it),
 * the norms are gathered by a forward pass of the expert-pruned model
 * (routing has changed, so the kept experts see more tokens than in the
 * original model's statistics), which is why stage 2 needs calibration
 * tokens and does not use the statistics file's in_sq_sum (the original
 * model's, and without the W2 inputs). Wanda's code prunes layer by layer
 * and feeds each pruned layer's outputs to the next; moec gathers every
 * layer's norms in one pass before zeroing anything, so later layers see
 * inputs not yet changed by the zeros of earlier ones. Experts no token reaches stay dense
 * and are counted in the report (the reference skips them the same way).
 * The reference prunes every linear layer of the model with Wanda (attention
 * and router too); moec prunes only the kept experts' three matrices, the
 * part STUN's structured step leaves. The checkpoint stays dense: zeros are
 * stored, so memory shrinks only with a sparse storage format. */
#include "prune/prune.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec/exec.h"
#include "pipeline/pipeline.h"
#include "exec/matmul.h"

typedef struct {
    double d;
    int l, i, j;
} stun_pair;

static int pair_cmp(const void *a, const void *b)
{
    const stun_pair *p = a, *q = b;
    if (p->d != q->d)
        return p->d < q->d ? -1 : 1;
    if (p->l != q->l)
        return p->l - q->l;
    if (p->i != q->i)
        return p->i - q->i;
    return p->j - q->j;
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* D[E][E] for one layer; returns whether the co-selection term was used. */
static moec_status layer_distance(const moec_layer *L, const moec_layer_stats *ls, double mix, double *D,
                                  bool *used_co, moec_err *err)
{
    const int E = L->n_experts;
    const int64_t d = moec_tensor_cols(&L->router);
    *used_co = false;
    float *R = malloc((size_t)E * (size_t)d * sizeof *R);
    if (!R)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    double fro = 0;
    for (int e = 0; e < E; e++) {
        moec_prune_row_f32(&L->router, e, R + (size_t)e * d);
        for (int64_t k = 0; k < d; k++)
            fro += (double)R[(size_t)e * d + k] * R[(size_t)e * d + k];
    }
    fro = sqrt(fro);
    for (int i = 0; i < E; i++)
        for (int j = 0; j < E; j++) {
            double s = 0;
            for (int64_t k = 0; k < d; k++) {
                double t = (double)R[(size_t)i * d + k] - R[(size_t)j * d + k];
                s += t * t;
            }
            D[i * E + j] = fro > 0 ? sqrt(s) / fro : 0.0;
        }
    free(R);
    if (mix != 0.0 && ls->co_count) {
        double mean = 0;
        for (int i = 0; i < E; i++)
            for (int j = 0; j < E; j++)
                mean += i == j ? 0.0 : ls->co_count[i * E + j];
        mean /= (double)E * E;
        if (mean > 0) {
            for (int i = 0; i < E; i++)
                for (int j = 0; j < E; j++)
                    if (i != j)
                        D[i * E + j] += mix * (-ls->co_count[i * E + j] / mean);
            *used_co = true;
        }
    }
    for (int i = 0; i < E; i++)
        for (int j = 0; j < E; j++)
            if (!isfinite(D[i * E + j]))
                return moec_err_set(err, MOEC_ERR_NUMERIC, "stun: distance of experts %d and %d is not finite", i,
                                    j);
    return MOEC_OK;
}

typedef struct {
    int L;
    int base;            /* model layer of index 0 (pairs name model layers) */
    const int *E;        /* [L] experts per layer (0: dense) */
    double **D;          /* [L][E][E] */
    const int *floor;    /* [L] fewest clusters a layer may end with */
    int **label;         /* [L][E] cluster label: smallest member index */
    int *n_clusters;     /* [L] */
} stun_clusters;

/* Runs the greedy complete-linkage clustering over pairs (in the given
 * order) with threshold tau; stops a layer at its floor and everything at
 * target_total clusters (< 0: no global stop). Returns the total. */
static int cluster_run(stun_clusters *c, const stun_pair *pairs, size_t np, double tau, int target_total)
{
    int total = 0;
    for (int l = 0; l < c->L; l++) {
        for (int e = 0; e < c->E[l]; e++)
            c->label[l][e] = e;
        c->n_clusters[l] = c->E[l];
        total += c->E[l];
    }
    for (size_t p = 0; p < np; p++) {
        if (target_total >= 0 && total <= target_total)
            break;
        const stun_pair *q = &pairs[p];
        if (!(q->d < tau))
            break;
        const int l = q->l - c->base, E = c->E[l];
        int *lab = c->label[l];
        int a = lab[q->i], b = lab[q->j];
        if (a == b || c->n_clusters[l] <= c->floor[l])
            continue;
        bool ok = true;
        for (int x = 0; x < E && ok; x++) {
            if (lab[x] != a)
                continue;
            for (int y = 0; y < E; y++)
                if (lab[y] == b && !(c->D[l][x * E + y] < tau)) {
                    ok = false;
                    break;
                }
        }
        if (!ok)
            continue;
        int keep = a < b ? a : b, gone = a < b ? b : a;
        for (int x = 0; x < E; x++)
            if (lab[x] == gone)
                lab[x] = keep;
        c->n_clusters[l]--;
        total--;
    }
    return total;
}

/* Smallest tau (just above one of the sorted distances, or +inf) whose
 * clustering leaves at most target clusters; pairs must be sorted. */
static double find_tau(stun_clusters *c, const stun_pair *pairs, size_t np, int target)
{
    double *cand = malloc((np + 1) * sizeof *cand);
    if (!cand)
        return INFINITY;
    for (size_t p = 0; p < np; p++)
        cand[p] = pairs[p].d;
    qsort(cand, np, sizeof *cand, dbl_cmp);
    size_t nu = 0;
    for (size_t p = 0; p < np; p++)
        if (nu == 0 || cand[p] != cand[nu - 1])
            cand[nu++] = cand[p];
    for (size_t p = 0; p < nu; p++)
        cand[p] = nextafter(cand[p], INFINITY);
    cand[nu] = INFINITY;
    /* invariant: cand[hi] satisfies the target (tau = +inf always does) */
    size_t lo = 0, hi = nu;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cluster_run(c, pairs, np, cand[mid], -1) <= target)
            hi = mid;
        else
            lo = mid + 1;
    }
    double tau = cand[hi];
    free(cand);
    return tau;
}

/* Index (into members) of the member closest to the members' weight
 * centroid: argmin_a G_aa - (2/n) sum_b G_ab, G the Gram matrix of the
 * flattened [W1 | W3 | W2], accumulated one row at a time. */
static moec_status closest_to_centroid(const moec_layer *L, const int *members, int n, int *best, moec_err *err)
{
    const moec_ffn *f0 = &L->experts[members[0]];
    int64_t width = moec_tensor_cols(&f0->w1) > moec_tensor_cols(&f0->w2) ? moec_tensor_cols(&f0->w1)
                                                                        : moec_tensor_cols(&f0->w2);
    double *G = calloc((size_t)n * n, sizeof *G);
    float *rows = malloc((size_t)n * (size_t)width * sizeof *rows);
    if (!G || !rows) {
        free(G);
        free(rows);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    for (int k = 0; k < 3; k++) {
        const moec_tensor *t0 = k == 0 ? &f0->w1 : k == 1 ? &f0->w3 : &f0->w2;
        const int64_t R = moec_tensor_rows(t0), C = moec_tensor_cols(t0);
        for (int64_t r = 0; r < R; r++) {
            for (int a = 0; a < n; a++) {
                const moec_ffn *f = &L->experts[members[a]];
                moec_prune_row_f32(k == 0 ? &f->w1 : k == 1 ? &f->w3 : &f->w2, r, rows + (size_t)a * C);
            }
            for (int a = 0; a < n; a++)
                for (int b = a; b < n; b++) {
                    double s = 0;
                    const float *x = rows + (size_t)a * C, *y = rows + (size_t)b * C;
                    for (int64_t j = 0; j < C; j++)
                        s += (double)x[j] * y[j];
                    G[a * n + b] += s;
                }
        }
    }
    double bestv = INFINITY;
    *best = 0;
    for (int a = 0; a < n; a++) {
        double s = 0;
        for (int b = 0; b < n; b++)
            s += a <= b ? G[a * n + b] : G[b * n + a];
        double v = G[a * n + a] - 2.0 * s / n;
        if (v < bestv) {
            bestv = v;
            *best = a;
        }
    }
    free(G);
    free(rows);
    return MOEC_OK;
}

/* ---- stage 2: Wanda ---- */

typedef struct {
    const moec_model *m;
    double **in_sq;   /* [L] -> [E][d] */
    double **mid_sq;  /* [L] -> [E][f] */
    double **tokens;  /* [L] -> [E] */
    float *x, *h1, *h3;
    size_t cap;       /* rows the buffers hold */
    bool failed;
} wanda_acc;

static void wanda_hook(void *ctx, const moec_moe_view *v)
{
    wanda_acc *a = ctx;
    if (a->failed)
        return;
    const moec_layer *L = &a->m->layers[v->layer];
    const int d = v->d;
    for (int e = 0; e < v->n_experts; e++) {
        const int r0 = v->offsets[e], n = v->offsets[e + 1] - r0;
        if (n == 0)
            continue;
        const moec_ffn *f = &L->experts[e];
        const int64_t ff = moec_tensor_rows(&f->w1);
        size_t need = (size_t)n * (size_t)(ff > d ? ff : d);
        if (need > a->cap) {
            float *x = realloc(a->x, need * sizeof *x), *h1 = NULL, *h3 = NULL;
            if (x)
                a->x = x;
            h1 = x ? realloc(a->h1, need * sizeof *h1) : NULL;
            if (h1)
                a->h1 = h1;
            h3 = h1 ? realloc(a->h3, need * sizeof *h3) : NULL;
            if (!h3) {
                a->failed = true;
                return;
            }
            a->h3 = h3;
            a->cap = need;
        }
        double *in = a->in_sq[v->layer] + (size_t)e * d;
        for (int r = 0; r < n; r++) {
            const float *src = v->x + (size_t)v->tok[r0 + r] * d;
            memcpy(a->x + (size_t)r * d, src, (size_t)d * sizeof(float));
            for (int j = 0; j < d; j++)
                in[j] += (double)src[j] * src[j];
        }
        moec_matmul(NULL, a->h1, a->x, n, &f->w1, false);
        moec_matmul(NULL, a->h3, a->x, n, &f->w3, false);
        double *mid = a->mid_sq[v->layer] + (size_t)e * ff;
        for (size_t k = 0; k < (size_t)n * ff; k++) {
            float g = a->h1[k];
            float h = g / (1.0f + expf(-g)) * a->h3[k];
            mid[k % ff] += (double)h * h;
        }
        a->tokens[v->layer][e] += n;
    }
}

static void wanda_acc_free_layer(wanda_acc *a, int l)
{
    free(a->in_sq[l]);
    free(a->mid_sq[l]);
    free(a->tokens[l]);
    a->in_sq[l] = NULL;
    a->mid_sq[l] = NULL;
    a->tokens[l] = NULL;
}

static void wanda_acc_free(wanda_acc *a, int L)
{
    for (int l = 0; l < L; l++) {
        if (a->in_sq)
            free(a->in_sq[l]);
        if (a->mid_sq)
            free(a->mid_sq[l]);
        if (a->tokens)
            free(a->tokens[l]);
    }
    free(a->in_sq);
    free(a->mid_sq);
    free(a->tokens);
    free(a->x);
    free(a->h1);
    free(a->h3);
}

static moec_status wanda_acc_layer(wanda_acc *a, int l, moec_err *err)
{
    const moec_model *m = a->m;
    const int E = m->layers[l].n_experts, d = m->cfg.hidden_size;
    if (E == 0)
        return MOEC_OK;
    int64_t ff = moec_tensor_rows(&m->layers[l].experts[0].w1);
    a->in_sq[l] = calloc((size_t)E * d, sizeof **a->in_sq);
    a->mid_sq[l] = calloc((size_t)E * (size_t)ff, sizeof **a->mid_sq);
    a->tokens[l] = calloc((size_t)E, sizeof **a->tokens);
    if (!a->in_sq[l] || !a->mid_sq[l] || !a->tokens[l])
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    return MOEC_OK;
}

/* The hook cannot fail: its out-of-memory is reported before the next window. */
static moec_status wanda_window(void *ctx, int window, moec_err *err)
{
    (void)window;
    return ((wanda_acc *)ctx)->failed ? moec_err_set(err, MOEC_ERR_NOMEM, "out of memory") : MOEC_OK;
}

typedef struct {
    float m;
    int j;
} wanda_item;

static int item_cmp(const void *a, const void *b)
{
    const wanda_item *p = a, *q = b;
    if (p->m != q->m)
        return p->m < q->m ? -1 : 1;
    return p->j - q->j;
}

/* Zeroes the lowest floor(s * cols) of |W_rj| * norm[j] in every row of t,
 * writing an owned copy into m; adds to the weight and zero counts. */
static moec_status wanda_matrix(moec_model *m, moec_tensor *t, const double *sq, double s, int64_t *weights,
                                int64_t *zeros, moec_err *err)
{
    const int64_t R = moec_tensor_rows(t), C = moec_tensor_cols(t);
    const size_t es = moec_dtype_size(t->dtype);
    const int64_t k = (int64_t)floor(s * (double)C);
    moec_tensor nt;
    moec_status st = moec_model_new_tensor(m, &nt, t->dtype, R, C, err);
    if (st)
        return st;
    memcpy((void *)nt.data, t->data, (size_t)(R * C) * es);
    float *row = malloc((size_t)C * sizeof *row);
    wanda_item *it = malloc((size_t)C * sizeof *it);
    float *norm = malloc((size_t)C * sizeof *norm);
    if (!row || !it || !norm) {
        free(row);
        free(it);
        free(norm);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    for (int64_t j = 0; j < C; j++)
        norm[j] = (float)sqrt(sq[j]);
    for (int64_t r = 0; r < R; r++) {
        moec_prune_row_f32(t, r, row);
        for (int64_t j = 0; j < C; j++) {
            it[j].m = fabsf(row[j]) * norm[j];
            it[j].j = (int)j;
        }
        qsort(it, (size_t)C, sizeof *it, item_cmp);
        char *dst = (char *)nt.data + (size_t)(r * C) * es;
        for (int64_t q = 0; q < k; q++)
            memset(dst + (size_t)it[q].j * es, 0, es);
        moec_to_f32(row, dst, nt.dtype, (size_t)C);
        for (int64_t j = 0; j < C; j++)
            *zeros += row[j] == 0.0f;
    }
    *weights += R * C;
    free(row);
    free(it);
    free(norm);
    *t = nt;
    return MOEC_OK;
}

/* ---- the method ---- */

typedef struct {
    int L;
    int *E, *floor, *n_clusters, **label;
    double **D;
    stun_pair *pairs;   /* all layers, sorted */
    size_t np;
    stun_pair **lpairs; /* per layer, sorted */
    size_t *lnp;
} stun_state;

static void stun_state_free(stun_state *s)
{
    for (int l = 0; l < s->L; l++) {
        if (s->label)
            free(s->label[l]);
        if (s->D)
            free(s->D[l]);
        if (s->lpairs)
            free(s->lpairs[l]);
    }
    free(s->E);
    free(s->floor);
    free(s->n_clusters);
    free(s->label);
    free(s->D);
    free(s->pairs);
    free(s->lpairs);
    free(s->lnp);
}

/* Distances, pair lists and cluster storage for every MoE layer. */
static moec_status stun_prepare(const moec_model *src, const moec_stats *stats, double mix, stun_state *s,
                                int *layers_without_co, moec_err *err)
{
    const int L = src->cfg.n_layers;
    memset(s, 0, sizeof *s);
    s->L = L;
    s->E = calloc((size_t)L, sizeof *s->E);
    s->floor = calloc((size_t)L, sizeof *s->floor);
    s->n_clusters = calloc((size_t)L, sizeof *s->n_clusters);
    s->label = calloc((size_t)L, sizeof *s->label);
    s->D = calloc((size_t)L, sizeof *s->D);
    s->lpairs = calloc((size_t)L, sizeof *s->lpairs);
    s->lnp = calloc((size_t)L, sizeof *s->lnp);
    if (!s->E || !s->floor || !s->n_clusters || !s->label || !s->D || !s->lpairs || !s->lnp)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    size_t total = 0;
    *layers_without_co = 0;
    for (int l = 0; l < L; l++) {
        const moec_layer *ly = &src->layers[l];
        const int E = ly->n_experts;
        s->E[l] = E;
        if (E == 0)
            continue;
        if (ly->router.dtype == MOEC_DT_QUANT || !moec_dtype_is_compute(ly->router.dtype))
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "stun: router of layer %d is stored as %s", l,
                                moec_dtype_name(ly->router.dtype));
        s->label[l] = malloc((size_t)E * sizeof **s->label);
        s->D[l] = malloc((size_t)E * E * sizeof **s->D);
        size_t np = (size_t)E * (E - 1) / 2;
        s->lpairs[l] = malloc((np ? np : 1) * sizeof **s->lpairs);
        if (!s->label[l] || !s->D[l] || !s->lpairs[l])
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        bool used_co;
        moec_status st = layer_distance(ly, &stats->layers[l], mix, s->D[l], &used_co, err);
        if (st)
            return moec_err_prefix(err, "layer %d", l);
        if (mix != 0.0 && !used_co)
            (*layers_without_co)++;
        size_t k = 0;
        for (int i = 0; i < E; i++)
            for (int j = i + 1; j < E; j++)
                s->lpairs[l][k++] = (stun_pair){s->D[l][i * E + j], l, i, j};
        qsort(s->lpairs[l], np, sizeof **s->lpairs, pair_cmp);
        s->lnp[l] = np;
        total += np;
    }
    s->pairs = malloc((total ? total : 1) * sizeof *s->pairs);
    if (!s->pairs)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < L; l++)
        if (s->lnp[l]) {
            memcpy(s->pairs + s->np, s->lpairs[l], s->lnp[l] * sizeof *s->pairs);
            s->np += s->lnp[l];
        }
    qsort(s->pairs, s->np, sizeof *s->pairs, pair_cmp);
    return MOEC_OK;
}

/* A view of one layer of the state as a one-layer clustering problem. */
static stun_clusters layer_view(stun_state *s, int l)
{
    return (stun_clusters){1, l, &s->E[l], &s->D[l], &s->floor[l], &s->label[l], &s->n_clusters[l]};
}

/* Stage 2 in the pipeline: the calibration windows run through layer l of
 * the expert-pruned model (the kept experts' input norms gathered on the
 * way), then its kept experts are sparsified. */
typedef struct wanda_run {
    wanda_acc acc;
    const moec_prune_opts *o;
    moec_prune_report *rep;
} wanda_run;

static moec_status wanda_layer(void *ctx, moec_pipeline *p, int l, moec_err *err)
{
    wanda_run *w = ctx;
    wanda_acc *acc = &w->acc;
    moec_model *m = (moec_model *)acc->m;
    moec_status st = wanda_acc_layer(acc, l, err);
    if (!st)
        st = moec_pipeline_advance(p, l, wanda_hook, NULL, acc, wanda_window, err);
    if (!st)
        st = wanda_window(acc, 0, err);
    moec_layer *ly = &m->layers[l];
    for (int e = 0; !st && e < ly->n_experts; e++) {
        if (acc->tokens[l][e] == 0) {
            w->rep->wanda_skipped++;
            continue;
        }
        moec_ffn *f = &ly->experts[e];
        const int64_t ff = moec_tensor_rows(&f->w1);
        const double *in = acc->in_sq[l] + (size_t)e * m->cfg.hidden_size;
        st = wanda_matrix(m, &f->w1, in, w->o->sparsity, &w->rep->wanda_weights, &w->rep->wanda_zeros, err);
        if (!st)
            st = wanda_matrix(m, &f->w3, in, w->o->sparsity, &w->rep->wanda_weights, &w->rep->wanda_zeros, err);
        if (!st)
            st = wanda_matrix(m, &f->w2, acc->mid_sq[l] + (size_t)e * ff, w->o->sparsity, &w->rep->wanda_weights,
                              &w->rep->wanda_zeros, err);
    }
    wanda_acc_free_layer(acc, l);
    return st;
}

/* Builds (and writes) the result; with sparsity, stage 2 on the way. */
static moec_status stun_build(const moec_model *src, moec_model *m, const moec_prune_opts *o, moec_prune_report *rep,
                              moec_err *err)
{
    if (!(o->sparsity > 0.0))
        return moec_prune_build(src, m, o, NULL, NULL, 0, NULL, NULL, err);
    const int L = m->cfg.n_layers;
    const int ctx = o->calib_ctx > 0 ? o->calib_ctx : 256;
    const int n_win = (int)((o->n_calib_tokens + (size_t)ctx - 1) / (size_t)ctx);
    wanda_run w = {.o = o, .rep = rep};
    w.acc.m = m;
    w.acc.in_sq = calloc((size_t)L, sizeof *w.acc.in_sq);
    w.acc.mid_sq = calloc((size_t)L, sizeof *w.acc.mid_sq);
    w.acc.tokens = calloc((size_t)L, sizeof *w.acc.tokens);
    int *len = malloc((size_t)n_win * sizeof *len);
    moec_status st = MOEC_OK;
    if (!w.acc.in_sq || !w.acc.mid_sq || !w.acc.tokens || !len)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    for (int i = 0; !st && i < n_win; i++) {
        const size_t at = (size_t)i * (size_t)ctx;
        len[i] = o->n_calib_tokens - at < (size_t)ctx ? (int)(o->n_calib_tokens - at) : ctx;
    }
    const moec_pipeline_ops ops = {.layer = wanda_layer};
    if (!st)
        st = moec_prune_build(src, m, o, o->calib_tokens, len, n_win, &ops, &w, err);
    wanda_acc_free(&w.acc, L);
    free(len);
    if (st)
        return st;
    rep->sparsity_achieved = rep->wanda_weights ? (double)rep->wanda_zeros / (double)rep->wanda_weights : 0.0;
    moec_prune_note(rep,
                    "Wanda zeroed %.1f%% of the kept experts' weights, stored as zeros in a dense checkpoint: file "
                    "and memory size shrink only with a sparse storage format",
                    100.0 * rep->sparsity_achieved);
    if (rep->wanda_skipped)
        moec_prune_note(rep, "%d kept experts received no calibration token and were left dense",
                        rep->wanda_skipped);
    return MOEC_OK;
}

moec_status moec_prune_stun(const moec_model *src, const moec_stats *stats, const moec_prune_opts *opts,
                            moec_model **out, moec_prune_report *rep, moec_err *err)
{
    double t0 = moec_prune_now();
    moec_prune_opts o;
    moec_prune_begin(rep, "stun", "cluster_size", opts, &o);
    rep->stun_mix = o.stun_mix;
    rep->sparsity_requested = o.sparsity;
    if (!isfinite(o.stun_mix))
        return moec_err_set(err, MOEC_ERR_ARG, "stun: mix %g is not finite", o.stun_mix);
    if (!(o.sparsity >= 0.0 && o.sparsity < 1.0))
        return moec_err_set(err, MOEC_ERR_ARG, "stun: sparsity %g must be in [0, 1)", o.sparsity);
    if (o.sparsity > 0.0 && (!o.calib_tokens || o.n_calib_tokens < 2))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "stun: sparsity needs calibration tokens (Wanda reads the kept experts' input norms on "
                            "the expert-pruned model)");
    moec_status st = moec_prune_check_stats(src, stats, err);
    if (st)
        return st;
    const int L = src->cfg.n_layers;
    stun_state s;
    int *members = NULL, total = 0, no_co = 0;
    bool **mask = moec_prune_mask_new(src);
    int **rep_of = calloc((size_t)L, sizeof *rep_of); /* [L][E] representative of each expert's cluster */
    moec_model *m = NULL;
    st = stun_prepare(src, stats, o.stun_mix, &s, &no_co, err);
    if (st)
        goto done;
    if (!mask || !rep_of) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    st = moec_prune_budget(src, &o, s.floor, &total, err);
    if (st)
        goto done;

    if (o.alloc == MOEC_PRUNE_GLOBAL) {
        stun_clusters c = {L, 0, s.E, s.D, s.floor, s.label, s.n_clusters};
        rep->stun_tau = find_tau(&c, s.pairs, s.np, total);
        cluster_run(&c, s.pairs, s.np, rep->stun_tau, total);
    } else {
        char buf[MOEC_PRUNE_NOTE_MAX];
        int pos = snprintf(buf, sizeof buf, "complete-linkage threshold per layer:");
        rep->stun_tau = NAN;
        for (int l = 0; l < L; l++) {
            if (s.E[l] == 0)
                continue;
            stun_clusters c = layer_view(&s, l);
            double tau = find_tau(&c, s.lpairs[l], s.lnp[l], s.floor[l]);
            cluster_run(&c, s.lpairs[l], s.lnp[l], tau, s.floor[l]);
            if (pos < (int)sizeof buf)
                pos += snprintf(buf + pos, sizeof buf - (size_t)pos, " %d: %.4g", l, tau);
        }
        moec_prune_note(rep, "%s", buf);
    }
    if (no_co)
        moec_prune_note(rep, "%d layers had no co-selections (top-1 routing or no tokens): router distance only",
                        no_co);

    int max_e = 0;
    for (int l = 0; l < L; l++)
        max_e = s.E[l] > max_e ? s.E[l] : max_e;
    members = malloc((size_t)(max_e > 0 ? max_e : 1) * sizeof *members);
    if (!members) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int l = 0; l < L; l++) {
        const int E = s.E[l];
        if (E == 0)
            continue;
        rep_of[l] = malloc((size_t)E * sizeof **rep_of);
        if (!rep_of[l]) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int e = 0; e < E; e++) {
            if (s.label[l][e] != e)
                continue; /* e is not the smallest member of its cluster */
            int n = 0;
            for (int x = 0; x < E; x++)
                if (s.label[l][x] == e)
                    members[n++] = x;
            int best = 0;
            if (n > 1 && (st = closest_to_centroid(&src->layers[l], members, n, &best, err)))
                goto done;
            mask[l][members[best]] = true;
            for (int i = 0; i < n; i++)
                rep_of[l][members[i]] = members[best];
        }
        if (o.out_dir) /* streaming: the members' weights were read, the build reads the layer again later */
            moec_model_release_part(src, l);
    }
    st = moec_prune_apply(src, mask, &m, rep, err);
    if (st)
        goto done;
    for (int l = 0; l < L; l++) {
        moec_prune_layer *R = &rep->layers[l];
        for (int e = 0; e < R->n_before; e++) {
            int n = 0;
            for (int x = 0; x < R->n_before; x++)
                n += s.label[l][x] == s.label[l][e];
            R->score[e] = n;
            R->group[e] = R->group[rep_of[l][e]];
        }
    }
    moec_prune_measure(rep, m);
    if ((st = stun_build(src, m, &o, rep, err)))
        goto done;
    moec_prune_finish(rep, t0);
    *out = m;
    m = NULL;
done:
    moec_model_close(m);
    for (int l = 0; l < L && rep_of; l++)
        free(rep_of[l]);
    free(rep_of);
    free(members);
    moec_prune_mask_free(mask, L);
    stun_state_free(&s);
    return st;
}
