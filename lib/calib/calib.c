/* calib.c - the calibration pass: text into windows, windows through the
 * model one layer at a time (lib/pipeline keeps their hidden states between
 * layers and releases each finished layer's pages), every MoE block's view
 * into moec_stats (see calib.h for what is gathered and why). */
#include "calib/calib.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/threadpool.h"
#include "exec/matmul.h"
#include "exec/ops.h"
#include "pipeline/pipeline.h"

/* Largest text file read whole for tokenization. */
#define MAX_TEXT_BYTES ((size_t)1 << 31)
/* Floats of all-expert outputs held at once in the similarity sample; the
 * sample is processed in blocks of tokens that fit. */
#define SIM_BLOCK_FLOATS ((size_t)4 << 20)

/* State shared by the hook across windows. The hook cannot return an error,
 * so the first failure is kept here and reported after the forward. */
typedef struct collector {
    moec_stats *s;
    const moec_model *m;
    int domain;       /* easyep_domain row, or -1 */
    int sim_cap;      /* per-layer sample size for out_cos */
    moec_pool *pool;  /* for the sample's matrix products; NULL runs them on the caller */
    moec_status st;
    moec_err err;
    double *s_t;      /* [n] EASY-EP token weights of the current batch */
    size_t cap_n;
    float *h1, *h3;   /* [B][f] expert hidden activations */
    size_t cap_h1, cap_h3;
    float *ys;        /* [E][B][d] every expert's output for a block of sample tokens */
    size_t cap_ys;
    float *gram;      /* [E][E] */
    size_t cap_gram;
    double *cos_sum;  /* [E][E] */
    size_t cap_cos;
} collector;

/* A buffer with room for count elements, reallocated when too small (its
 * contents are not needed across calls); NULL when out of memory. */
static void *grow(void *p, size_t *cap, size_t count, size_t size)
{
    if (count == 0)
        count = 1;
    if (count <= *cap)
        return p;
    void *q = realloc(p, count * size);
    if (q)
        *cap = count;
    return q;
}

static void collector_free(collector *c)
{
    moec_pool_free(c->pool);
    free(c->s_t);
    free(c->h1);
    free(c->h3);
    free(c->ys);
    free(c->gram);
    free(c->cos_sum);
}

/* Routing, router-input and EASY-EP token statistics, token by token. */
static void add_tokens(collector *c, moec_layer_stats *ls, const moec_moe_view *v)
{
    const int n = v->n, d = v->d, E = v->n_experts, k = v->top_k;
    for (int i = 0; i < n; i++) {
        const float *z = v->logits + (size_t)i * E, *p = v->probs + (size_t)i * E;
        const int32_t *sel = v->sel + (size_t)i * k;
        const float *g = v->gates + (size_t)i * k;
        for (int e = 0; e < E; e++) {
            ls->prob_sum[e] += p[e];
            ls->logit_sum[e] += z[e];
            ls->logit_sq_sum[e] += (double)z[e] * z[e];
        }
        for (int j = 0; j < k; j++) {
            const int e = sel[j];
            ls->count[e] += 1.0;
            ls->gate_sum[e] += g[j];
            for (int q = 0; q < k; q++)
                ls->co_count[(size_t)e * E + sel[q]] += 1.0;
        }
        int miss = -1;
        for (int e = 0; e < E; e++) {
            bool chosen = false;
            for (int j = 0; j < k; j++)
                chosen |= sel[j] == e;
            if (!chosen && (miss < 0 || p[e] > p[miss]))
                miss = e;
        }
        if (miss >= 0)
            ls->near_miss[miss] += 1.0;

        const float *x = v->x + (size_t)i * d;
        for (int j = 0; j < d; j++) {
            const double xv = x[j];
            ls->x_sq_sum[j] += xv * xv;
            if (fabs(xv) > ls->x_absmax[j])
                ls->x_absmax[j] = fabs(xv);
        }

        const float *r = v->resid + (size_t)i * d, *o = v->routed_out + (size_t)i * d;
        double rr = 0, ra = 0, aa = 0;
        for (int j = 0; j < d; j++) {
            const double a = (double)r[j] + o[j];
            rr += (double)r[j] * r[j];
            ra += (double)r[j] * a;
            aa += a * a;
        }
        double s;
        if (rr > 0 && aa > 0)
            s = 1.0 - ra / sqrt(rr * aa);
        else
            s = rr > 0 || aa > 0 ? 1.0 : 0.0;
        c->s_t[i] = s < 0 ? 0 : s; /* rounding can make 1 − cos slightly negative */
    }
    ls->tokens += n;
}

/* Per-expert statistics over each expert's routed rows (grouped by expert in the view). */
static void add_routed_rows(collector *c, moec_layer_stats *ls, const moec_moe_view *v)
{
    const int d = v->d, E = v->n_experts, k = v->top_k;
    for (int e = 0; e < E; e++) {
        double *sq = ls->in_sq_sum + (size_t)e * d, *mx = ls->in_absmax + (size_t)e * d;
        for (int r = v->offsets[e]; r < v->offsets[e + 1]; r++) {
            const int i = v->tok[r];
            float g = 0.0f;
            for (int j = 0; j < k; j++)
                if (v->sel[(size_t)i * k + j] == e)
                    g = v->gates[(size_t)i * k + j];
            const float *y = v->y + (size_t)r * d;
            double yy = 0;
            for (int j = 0; j < d; j++)
                yy += (double)y[j] * y[j];
            const double cet = g * sqrt(yy);
            ls->out_norm_sum[e] += cet;
            ls->easyep_sum[e] += cet * c->s_t[i];
            if (c->domain >= 0)
                ls->easyep_domain[(size_t)c->domain * E + e] += cet * c->s_t[i];
            const float *x = v->x + (size_t)i * d;
            for (int j = 0; j < d; j++) {
                const double xv = x[j];
                sq[j] += xv * xv;
                if (fabs(xv) > mx[j])
                    mx[j] = fabs(xv);
            }
        }
    }
}

/* out_cos over the first ns tokens of the batch: every expert's output,
 * selected or not, then the cosine of each pair per token. */
static bool add_similarity(collector *c, moec_layer_stats *ls, const moec_moe_view *v, int ns)
{
    const int d = v->d, E = v->n_experts;
    const moec_layer *L = &c->m->layers[v->layer];
    int64_t fmax = 0;
    for (int e = 0; e < E; e++)
        if (moec_tensor_rows(&L->experts[e].w1) > fmax)
            fmax = moec_tensor_rows(&L->experts[e].w1);
    size_t B = SIM_BLOCK_FLOATS / ((size_t)E * d);
    if (B < 1)
        B = 1;
    if (B > (size_t)ns)
        B = (size_t)ns;
    const size_t e2 = (size_t)E * E;
    float *h1 = grow(c->h1, &c->cap_h1, B * (size_t)fmax, sizeof *h1);
    if (h1)
        c->h1 = h1;
    float *h3 = grow(c->h3, &c->cap_h3, B * (size_t)fmax, sizeof *h3);
    if (h3)
        c->h3 = h3;
    float *ys = grow(c->ys, &c->cap_ys, (size_t)E * B * d, sizeof *ys);
    if (ys)
        c->ys = ys;
    float *gram = grow(c->gram, &c->cap_gram, e2, sizeof *gram);
    if (gram)
        c->gram = gram;
    double *cos_sum = grow(c->cos_sum, &c->cap_cos, e2, sizeof *cos_sum);
    if (cos_sum)
        c->cos_sum = cos_sum;
    if (!h1 || !h3 || !ys || !gram || !cos_sum)
        return false;
    memset(c->cos_sum, 0, e2 * sizeof *c->cos_sum);

    for (int b0 = 0; b0 < ns; b0 += (int)B) {
        const int nb = ns - b0 < (int)B ? ns - b0 : (int)B;
        const float *X = v->x + (size_t)b0 * d;
        for (int e = 0; e < E; e++) {
            const moec_ffn *f = &L->experts[e];
            float *Y = c->ys + (size_t)e * B * d;
            moec_matmul(c->pool, c->h1, X, nb, &f->w1, false);
            moec_matmul(c->pool, c->h3, X, nb, &f->w3, false);
            moec_silu_mul(c->h1, c->h3, (int64_t)nb * moec_tensor_rows(&f->w1));
            moec_matmul(c->pool, Y, c->h1, nb, &f->w2, false);
        }
        for (int i = 0; i < nb; i++) {
            /* token i's E outputs are rows B·d apart: one Gram matrix per token */
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, E, d, 1.0f, c->ys + (size_t)i * d, (int)(B * d),
                        0.0f, c->gram, E);
            for (int a = 0; a < E; a++) {
                c->cos_sum[(size_t)a * E + a] += 1.0;
                const double na = c->gram[(size_t)a * E + a];
                for (int b = a + 1; b < E; b++) {
                    const double nb2 = c->gram[(size_t)b * E + b];
                    double cs = 0.0;
                    if (na > 0 && nb2 > 0)
                        cs = c->gram[(size_t)a * E + b] / sqrt(na * nb2);
                    cs = cs > 1.0 ? 1.0 : cs < -1.0 ? -1.0 : cs;
                    c->cos_sum[(size_t)a * E + b] += cs;
                    c->cos_sum[(size_t)b * E + a] += cs;
                }
            }
        }
    }
    /* out_cos stays a mean at every point, so partial runs and later
     * additions need no separate normalisation step */
    const double old = ls->sim_tokens, tot = old + ns;
    for (size_t q = 0; q < e2; q++)
        ls->out_cos[q] = (ls->out_cos[q] * old + c->cos_sum[q]) / tot;
    ls->sim_tokens = tot;
    return true;
}

static void hook(void *ctx, const moec_moe_view *v)
{
    collector *c = ctx;
    if (c->st)
        return;
    moec_stats *s = c->s;
    if (v->layer < 0 || v->layer >= s->n_layers || v->n_experts != s->layers[v->layer].n_experts || v->d != s->d ||
        v->top_k != s->top_k) {
        c->st = moec_err_set(&c->err, MOEC_ERR_MISMATCH,
                             "calibration: layer %d has %d experts (top-%d, width %d), the statistics expect %d",
                             v->layer, v->n_experts, v->top_k, v->d,
                             v->layer >= 0 && v->layer < s->n_layers ? s->layers[v->layer].n_experts : 0);
        return;
    }
    moec_layer_stats *ls = &s->layers[v->layer];
    double *s_t = grow(c->s_t, &c->cap_n, (size_t)v->n, sizeof *s_t);
    if (!s_t) {
        c->st = moec_err_set(&c->err, MOEC_ERR_NOMEM, "calibration: out of memory");
        return;
    }
    c->s_t = s_t;
    add_tokens(c, ls, v);
    add_routed_rows(c, ls, v);
    /* the executor checks only the logits it is asked for, and calibration asks for none */
    double probe = 0;
    for (int e = 0; e < v->n_experts; e++)
        probe += ls->prob_sum[e] + ls->out_norm_sum[e];
    for (int j = 0; j < v->d; j++)
        probe += ls->x_sq_sum[j];
    if (!isfinite(probe)) {
        c->st = moec_err_set(&c->err, MOEC_ERR_NUMERIC,
                             "calibration: non-finite activations in layer %d (weights with NaN/Inf?)", v->layer);
        return;
    }
    if (ls->sim_tokens < c->sim_cap) {
        int ns = c->sim_cap - (int)ls->sim_tokens;
        if (ns > v->n)
            ns = v->n;
        if (!add_similarity(c, ls, v, ns))
            c->st = moec_err_set(&c->err, MOEC_ERR_NOMEM, "calibration: out of memory for the similarity sample");
    }
}

static moec_status collector_init(collector *c, moec_stats *s, const moec_model *m, const moec_calib_opts *o,
                                  moec_err *err)
{
    memset(c, 0, sizeof *c);
    c->s = s;
    c->m = m;
    c->domain = -1;
    c->sim_cap = o->sim_tokens;
    if (o->sim_tokens > 0) {
        /* the sample runs every expert through moec_matmul: its weights must suit it */
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int e = 0; e < m->layers[l].n_experts; e++) {
                const moec_ffn *f = &m->layers[l].experts[e];
                const moec_tensor *w[3] = {&f->w1, &f->w3, &f->w2};
                for (int q = 0; q < 3; q++) {
                    moec_status st = moec_matmul_check(w[q], q < 2 ? m->cfg.hidden_size : moec_tensor_rows(&f->w1),
                                                       err);
                    if (st)
                        return moec_err_prefix(err, "calibration: layer %d expert %d", l, e);
                }
            }
        if (o->threads > 1 && !(c->pool = moec_pool_new(o->threads)))
            return moec_err_set(err, MOEC_ERR_NOMEM, "calibration: cannot start %d threads", o->threads);
    }
    return MOEC_OK;
}

static moec_status check_opts(const moec_calib_opts *o, moec_err *err)
{
    if (o->ctx < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "calibration: window of %d tokens", o->ctx);
    if (o->max_tokens < 0 || o->sim_tokens < 0 || o->threads < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "calibration: negative token budget or no threads");
    return MOEC_OK;
}

/* Windows of a run: their domains (or NULL: -1 each) and the progress
 * report, seen by the per-window callback. */
typedef struct walk {
    collector *c;
    const int *domain;       /* [n_windows] */
    const int *len;
    int n_windows;
    int layer, n_layers;
    int64_t tokens;          /* Σ len */
    int64_t done;            /* tokens of the current layer run so far */
    moec_calib_progress progress;
    void *progress_ctx;
} walk;

/* Before each window: the previous window's hook error, if any, stops the
 * run; the window's domain is set for the hook. */
static moec_status on_window(void *ctx, int window, moec_err *err)
{
    walk *w = ctx;
    collector *c = w->c;
    if (c->st) {
        *err = c->err;
        return c->st;
    }
    if (window > 0 && w->progress) {
        w->done += w->len[window - 1];
        /* layers times tokens, shown as a share of the tokens */
        w->progress(w->progress_ctx,
                    (int64_t)(((double)w->layer * (double)w->tokens + (double)w->done) / w->n_layers), w->tokens);
    }
    c->domain = w->domain ? w->domain[window] : -1;
    return MOEC_OK;
}

/* After every layer ran: the token counts (once per window, not per layer). */
static void count_tokens(walk *w)
{
    collector *c = w->c;
    for (int i = 0; i < w->n_windows; i++) {
        c->s->tokens += w->len[i];
        if (w->domain && w->domain[i] >= 0)
            c->s->domain_tokens[w->domain[i]] += w->len[i];
    }
    if (w->progress)
        w->progress(w->progress_ctx, w->tokens, w->tokens);
}

/* The hook reads the collector; on_window gets the walk. */
static void walk_hook(void *ctx, const moec_moe_view *v) { hook(((walk *)ctx)->c, v); }

/* The error the hook recorded during the last window of a run. */
static moec_status hook_error(const collector *c, moec_err *err)
{
    if (c->st)
        *err = c->err;
    return c->st;
}

static moec_status calib_layer(void *ctx, moec_pipeline *p, int layer, moec_err *err)
{
    walk *w = ctx;
    w->layer = layer;
    w->done = 0;
    moec_status st = moec_pipeline_advance(p, layer, walk_hook, NULL, w, on_window, err);
    if (!st)
        st = hook_error(w->c, err);
    if (st)
        moec_err_prefix(err, "layer %d", layer);
    return st;
}

moec_status moec_calib_tokens(moec_stats *s, moec_exec *ex, const int32_t *ids, size_t n, int domain,
                              const moec_calib_opts *o, moec_err *err)
{
    const moec_calib_opts def = MOEC_CALIB_OPTS_DEFAULT;
    if (!o)
        o = &def;
    moec_status st = check_opts(o, err);
    if (st)
        return st;
    const moec_model *m = moec_exec_model(ex);
    if ((st = moec_stats_check(s, m, err)))
        return st;
    if (domain < -1 || domain >= s->n_domains)
        return moec_err_set(err, MOEC_ERR_ARG, "calibration: domain %d of %d", domain, s->n_domains);
    if (o->ctx > moec_exec_max_ctx(ex))
        return moec_err_set(err, MOEC_ERR_ARG, "calibration: window of %d tokens exceeds the executor's context of %d",
                            o->ctx, moec_exec_max_ctx(ex));
    if (o->max_tokens > 0 && (uint64_t)o->max_tokens < n)
        n = (size_t)o->max_tokens;
    if (n == 0)
        return MOEC_OK;
    const int n_win = (int)((n + (size_t)o->ctx - 1) / (size_t)o->ctx);
    int *len = malloc((size_t)n_win * sizeof *len), *dom = malloc((size_t)n_win * sizeof *dom);
    collector c;
    memset(&c, 0, sizeof c);
    moec_hstates *hs = NULL;
    if (!len || !dom) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_win; i++) {
        const size_t at = (size_t)i * (size_t)o->ctx;
        len[i] = n - at < (size_t)o->ctx ? (int)(n - at) : o->ctx;
        dom[i] = domain;
    }
    if ((st = collector_init(&c, s, m, o, err)) || (st = moec_hstates_new(&hs, ids, len, n_win, m->cfg.hidden_size, err)) ||
        (st = moec_hstates_embed(hs, ex, err)))
        goto done;
    walk w = {.c = &c, .domain = dom, .len = len, .n_windows = n_win, .n_layers = m->cfg.n_layers,
              .tokens = (int64_t)n};
    moec_exec_set_moe_hook(ex, walk_hook, &w);
    for (int l = 0; l < m->cfg.n_layers && !st; l++) {
        w.layer = l;
        w.done = 0;
        if (!(st = moec_hstates_run(hs, ex, l, true, on_window, &w, err)))
            st = hook_error(&c, err);
    }
    moec_exec_set_moe_hook(ex, NULL, NULL);
    if (!st)
        count_tokens(&w);
done:
    moec_hstates_free(hs);
    collector_free(&c);
    free(len), free(dom);
    return st;
}

/* ---- text files: tokens, shares, windows ---- */

typedef struct text {
    const char *path;
    int32_t *ids;
    size_t n;
    size_t quota;     /* tokens taken from this file */
    size_t *start;    /* [n_win] window starts */
    int *len;         /* [n_win] window lengths */
    size_t n_win;
} text;

static moec_status tokenize_file(text *t, const moec_tokenizer *tok, moec_err *err)
{
    char *buf;
    size_t len;
    moec_status st = moec_read_file(t->path, MAX_TEXT_BYTES, &buf, &len, err);
    if (st)
        return st;
    st = moec_tokenizer_encode(tok, buf, len, &t->ids, &t->n, err);
    free(buf);
    if (st)
        return moec_err_prefix(err, "%s", t->path);
    return MOEC_OK;
}

/* Equal shares of the budget; files shorter than their share give the rest
 * to the others (water filling). A file is settled once its quota is all
 * of it. */
static void share_budget(text *t, int n_files, uint64_t budget)
{
    uint64_t total = 0, left = budget;
    int open_files = 0;
    for (int f = 0; f < n_files; f++) {
        t[f].quota = budget == 0 ? t[f].n : 0;
        total += t[f].n;
        open_files += t[f].n > 0;
    }
    if (budget == 0)
        return;
    if (budget >= total) {
        for (int f = 0; f < n_files; f++)
            t[f].quota = t[f].n;
        return;
    }
    for (bool changed = true; changed && open_files > 0;) {
        changed = false;
        const uint64_t share = left / (uint64_t)open_files;
        for (int f = 0; f < n_files; f++)
            if (t[f].quota != t[f].n && t[f].n <= share) {
                t[f].quota = t[f].n;
                left -= t[f].n;
                open_files--;
                changed = true;
            }
    }
    if (open_files == 0)
        return;
    const uint64_t share = left / (uint64_t)open_files;
    uint64_t extra = left - share * (uint64_t)open_files;
    for (int f = 0; f < n_files; f++)
        if (t[f].quota != t[f].n) {
            t[f].quota = share + (extra > 0);
            extra -= extra > 0;
        }
}

/* The windows that take t->quota tokens from the file: all of it, or full
 * windows spread evenly over the file with the last one cut to the quota. */
static moec_status plan_windows(text *t, int ctx, moec_err *err)
{
    const size_t C = (size_t)ctx;
    const size_t w = (t->quota + C - 1) / C, full = t->n / C;
    t->n_win = w;
    if (w == 0)
        return MOEC_OK;
    t->start = malloc(w * sizeof *t->start);
    t->len = malloc(w * sizeof *t->len);
    if (!t->start || !t->len)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    const bool spread = t->quota < t->n && w <= full;
    for (size_t i = 0; i < w; i++) {
        t->start[i] = spread ? (size_t)((unsigned long long)i * full / w) * C : i * C;
        size_t left = t->quota - i * C;
        t->len[i] = (int)(left < C ? left : C);
        if (t->start[i] + (size_t)t->len[i] > t->n)
            t->len[i] = (int)(t->n - t->start[i]);
    }
    return MOEC_OK;
}

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b && b[1] ? b + 1 : path;
}

static void note_source(moec_stats *s, const char *const *files, int n_files)
{
    size_t used = 0, cap = sizeof s->source;
    s->source[0] = '\0';
    for (int f = 0; f < n_files; f++) {
        int w = snprintf(s->source + used, cap - used, "%s%s", f ? ", " : "", base_name(files[f]));
        if (w < 0 || (size_t)w >= cap - used) {
            /* mark the cut so the note is not mistaken for the whole list */
            if (cap > 4)
                memcpy(s->source + cap - 4, "...", 4);
            return;
        }
        used += (size_t)w;
    }
}

moec_status moec_calib_run(const moec_model *m, const moec_tokenizer *tok, const char *const *text_files, int n_files,
                           const moec_calib_opts *o, moec_stats **out, moec_calib_progress progress,
                           void *progress_ctx, moec_err *err)
{
    const moec_calib_opts def = MOEC_CALIB_OPTS_DEFAULT;
    if (!o)
        o = &def;
    *out = NULL;
    moec_status st = check_opts(o, err);
    if (st)
        return st;
    if (n_files <= 0)
        return moec_err_set(err, MOEC_ERR_ARG, "calibration: no text files");
    if (o->ctx > m->cfg.max_positions)
        return moec_err_set(err, MOEC_ERR_ARG, "calibration: window of %d tokens exceeds the model's %d positions",
                            o->ctx, m->cfg.max_positions);

    text *t = calloc((size_t)n_files, sizeof *t);
    moec_stats *s = NULL;
    int32_t *ids = NULL;
    int *wlen = NULL, *wdom = NULL;
    collector c;
    memset(&c, 0, sizeof c);
    if (!t)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    uint64_t total = 0;
    for (int f = 0; f < n_files && !st; f++) {
        t[f].path = text_files[f];
        st = tokenize_file(&t[f], tok, err);
        total += t[f].n;
    }
    if (!st && total == 0)
        st = moec_err_set(err, MOEC_ERR_ARG, "calibration: the text files hold no tokens");
    if (st)
        goto done;
    share_budget(t, n_files, (uint64_t)o->max_tokens);
    int64_t planned = 0;
    size_t rounds = 0;
    for (int f = 0; f < n_files && !st; f++) {
        st = plan_windows(&t[f], o->ctx, err);
        planned += (int64_t)t[f].quota;
        if (t[f].n_win > rounds)
            rounds = t[f].n_win;
    }
    if (st || (st = moec_stats_new(&s, m, err)))
        goto done;
    note_source(s, text_files, n_files);
    for (int f = 0; f < n_files && !st; f++) {
        int idx;
        st = moec_stats_add_domain(s, base_name(text_files[f]), &idx, err);
    }
    /* the windows, round-robin over the files, back to back */
    int n_win = 0;
    for (int f = 0; f < n_files; f++)
        n_win += (int)t[f].n_win;
    ids = malloc((size_t)(planned > 0 ? planned : 1) * sizeof *ids);
    wlen = malloc((size_t)(n_win > 0 ? n_win : 1) * sizeof *wlen);
    wdom = malloc((size_t)(n_win > 0 ? n_win : 1) * sizeof *wdom);
    if (!st && (!ids || !wlen || !wdom))
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if (st || (st = collector_init(&c, s, m, o, err)))
        goto done;
    int k = 0;
    size_t at = 0;
    for (size_t r = 0; r < rounds; r++)
        for (int f = 0; f < n_files; f++) {
            if (r >= t[f].n_win)
                continue;
            memcpy(ids + at, t[f].ids + t[f].start[r], (size_t)t[f].len[r] * sizeof *ids);
            at += (size_t)t[f].len[r];
            wlen[k] = t[f].len[r];
            wdom[k++] = f;
        }
    walk w = {.c = &c, .domain = wdom, .len = wlen, .n_windows = n_win, .n_layers = m->cfg.n_layers,
              .tokens = (int64_t)at, .progress = progress, .progress_ctx = progress_ctx};
    moec_pipeline_opts po = {.ids = ids, .window_len = wlen, .n_windows = n_win, .threads = o->threads,
                             .run = m, .release_source = true};
    moec_pipeline_ops ops = {.layer = calib_layer};
    if (!(st = moec_pipeline_run(m, NULL, &po, &ops, &w, err)))
        count_tokens(&w);
done:
    collector_free(&c);
    free(ids), free(wlen), free(wdom);
    for (int f = 0; f < n_files; f++) {
        free(t[f].ids);
        free(t[f].start);
        free(t[f].len);
    }
    free(t);
    if (st) {
        moec_stats_free(s);
        return st;
    }
    *out = s;
    return MOEC_OK;
}
