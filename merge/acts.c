/* acts.c - calibration activations, routing and expert outputs of one MoE
 * layer, for merging (acts.h). */
#include "merge/acts.h"

#include <stdlib.h>
#include <string.h>

#include "exec/exec.h"
#include "exec/lowrank.h"
#include "exec/matmul.h"
#include "exec/ops.h"

typedef struct capture {
    const int *layers;
    int n_layers;
    float **x;
    int64_t at;  /* tokens stored so far (same for every layer: each sees the whole window) */
    int d;
} capture;

static void hook(void *vctx, const moec_moe_view *v)
{
    capture *c = vctx;
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i] == v->layer)
            memcpy(c->x[i] + (size_t)c->at * c->d, v->x, (size_t)v->n * c->d * sizeof(float));
}

moec_status moec_merge_capture(const moec_model *m, const moec_merge_windows *w, const int *layers, int n_layers,
                               int threads, float **x, int64_t *n_tokens, moec_err *err)
{
    const moec_config *c = &m->cfg;
    if (!w || !w->ids || !w->window_len || w->n_windows < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "merge: no calibration windows");
    int64_t total = 0;
    int max_len = 0;
    for (int i = 0; i < w->n_windows; i++) {
        if (w->window_len[i] < 1 || w->window_len[i] > c->max_positions)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: calibration window %d has %d tokens (1..%d)", i,
                                w->window_len[i], c->max_positions);
        total += w->window_len[i];
        max_len = w->window_len[i] > max_len ? w->window_len[i] : max_len;
    }
    for (int i = 0; i < n_layers; i++) {
        x[i] = NULL;
        if (layers[i] < 0 || layers[i] >= c->n_layers || m->layers[layers[i]].n_experts == 0)
            return moec_err_set(err, MOEC_ERR_ARG, "merge: layer %d is not a MoE layer", layers[i]);
    }
    moec_status st = MOEC_OK;
    for (int i = 0; i < n_layers && !st; i++)
        if (!(x[i] = malloc((size_t)total * (size_t)c->hidden_size * sizeof(float))))
            st = moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory for %lld calibration activations of layer %d",
                              (long long)total, layers[i]);
    moec_exec *ex = NULL;
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.threads = threads;
    eo.max_ctx = max_len;
    if (!st)
        st = moec_exec_new(&ex, m, &eo, err);
    if (!st) {
        capture cap = {layers, n_layers, x, 0, c->hidden_size};
        moec_exec_set_moe_hook(ex, hook, &cap);
        const int32_t *ids = w->ids;
        for (int i = 0; i < w->n_windows && !st; i++) {
            moec_exec_reset(ex);
            st = moec_exec_forward(ex, ids, w->window_len[i], NULL, false, err);
            ids += w->window_len[i];
            cap.at += w->window_len[i];
        }
    }
    moec_exec_free(ex);
    if (st) {
        for (int i = 0; i < n_layers; i++) {
            free(x[i]);
            x[i] = NULL;
        }
        return st;
    }
    *n_tokens = total;
    return MOEC_OK;
}

moec_status moec_merge_route(moec_pool *pool, const moec_tensor *router, const float *x, int64_t n, int k,
                             bool norm_topk, float *logits, float *probs, int32_t *sel, float *gates, moec_err *err)
{
    const int E = (int)router->shape[0];
    float *p = probs ? NULL : malloc((size_t)E * sizeof *p);
    if (!probs && !p)
        return moec_err_set(err, MOEC_ERR_NOMEM, "merge: out of memory routing %lld tokens", (long long)n);
    moec_matmul(pool, logits, x, n, router, false);
    for (int64_t i = 0; i < n; i++) {
        float *pi = probs ? probs + (size_t)i * E : p;
        memcpy(pi, logits + (size_t)i * E, (size_t)E * sizeof(float));
        moec_softmax(pi, E);
        int32_t *s = sel + (size_t)i * k;
        float *g = gates + (size_t)i * k, sum = 0.0f;
        for (int j = 0; j < k; j++) { /* repeated max, ties to the lower index (as the executor) */
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int q = 0; q < j; q++)
                    taken |= s[q] == e;
                if (!taken && (best < 0 || pi[e] > pi[best]))
                    best = e;
            }
            s[j] = best;
            g[j] = pi[best];
            sum += pi[best];
        }
        if (norm_topk)
            for (int j = 0; j < k; j++)
                g[j] /= sum;
    }
    free(p);
    return MOEC_OK;
}

void moec_merge_expert_forward(moec_pool *pool, const moec_ffn *e, const float *x, int64_t n, float *y, float *h,
                               float *h3, float *t)
{
    if (n <= 0)
        return;
    moec_weight_matmul(pool, h, x, n, &e->w1, &e->w1f, t, false);
    moec_weight_matmul(pool, h3, x, n, &e->w3, &e->w3f, t, false);
    moec_silu_mul(h, h3, n * moec_ffn_inner(e));
    moec_weight_matmul(pool, y, h, n, &e->w2, &e->w2f, t, false);
}
