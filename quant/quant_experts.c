/* quant_experts.c - an MoE layer quantized one expert at a time: the
 * recipe's RTN and GPTQ without EAQuant smoothing or MC-MoE, whose steps
 * need every expert of the layer at once (quant_moe.c).
 *
 * One pass of the calibration windows through the layer records what its
 * MoE block reads: the block input x of every token and, per executor
 * chunk, the grouping of (token, expert) rows the executor made, with the
 * routing counts and EAQuant's calibration balance. Then every worker of
 * the pool takes one expert at a time (the shared expert is one more job):
 *   H1 = Σ xxᵀ over the expert's rows, chunk by chunk in the pass's order,
 *        then its balance rows; factor; w1 and w3 (GPTQ, or RTN when the
 *        rows are too few or the factor fails);
 *   H2 = Σ uuᵀ of the intermediates u = silu(Ŵ1 x̂) ⊙ (Ŵ3 x̂) through the
 *        w1/w3 just quantized, from the same recorded rows and balance
 *        rows; factor; w2.
 * The whole-layer path computes the same sums from the same rows in the
 * same order (its w2 pass reads the same x: nothing before the MoE block
 * changes between its passes), so the results are bit for bit the same,
 * with one pass fewer; what is held is one expert's floats and Hessians
 * per worker instead of the whole layer's (E·d² + E·f² doubles: 4.3 GB on
 * Qwen3-30B-A3B, 13 GB of W2 Hessians on Mixtral-8x7B). The factor is
 * built in the Hessian's own memory (moec_gptq_hinv_from), so a worker's
 * peak is one f² double matrix: 1.6 GB for Mixtral's 14336-wide W2.
 * A streamed run releases each expert's source pages once it is done.
 * Notes come out in the whole-layer path's order. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/kquant_grid.h"
#include "quant/quant_internal.h"
#include "quant/rtn.h"

/* What the capture pass records of the layer's MoE block, per executor
 * chunk: its rows of x and the executor's grouping of (token, expert) rows. */
typedef struct xchunk {
    int64_t x0;      /* first row of the chunk in X */
    int n;           /* tokens */
    int *offsets;    /* [E+1] */
    int32_t *tok;    /* [n*k] token (in the chunk) of each row, grouped by expert */
} xchunk;

typedef struct capture {
    int layer, E, d, k;
    float *X;                  /* [rows][d] block inputs of every token, chunk after chunk */
    int64_t rows, cap_rows;
    xchunk *ch;
    int n_ch, cap_ch;
    int64_t *routed;           /* [E] */
    moec_eaq_balance *bal;     /* NULL: no balance */
    qr_hook_status hs;
} capture;

static void capture_free(capture *c)
{
    for (int i = 0; i < c->n_ch; i++)
        free(c->ch[i].offsets), free(c->ch[i].tok);
    free(c->ch);
    free(c->X);
    free(c->routed);
    moec_eaq_balance_free(c->bal);
}

static void capture_hook(void *vc, const moec_moe_view *v)
{
    capture *c = vc;
    if (v->layer != c->layer || c->hs.st)
        return;
    if (v->n_experts != c->E || v->d != c->d || v->top_k != c->k) {
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_INTERNAL, "MoE pass: layer %d has %d experts, width %d, top-%d",
                                v->layer, v->n_experts, v->d, v->top_k);
        return;
    }
    const int E = c->E, k = c->k;
    for (int i = 0; i < v->n * k; i++)
        c->routed[v->sel[i]]++;
    if (c->bal && !moec_eaq_balance_add(c->bal, v->n, k, v->x, v->probs, v->sel)) {
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "calibration balance: out of memory");
        return;
    }
    if (c->rows + v->n > c->cap_rows) {
        int64_t cap = c->cap_rows ? 2 * c->cap_rows : 4096;
        while (cap < c->rows + v->n)
            cap *= 2;
        float *X = realloc(c->X, (size_t)cap * (size_t)c->d * sizeof *X);
        if (!X) {
            c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "MoE pass: out of memory for %lld input rows",
                                    (long long)cap);
            return;
        }
        c->X = X;
        c->cap_rows = cap;
    }
    if (c->n_ch == c->cap_ch) {
        int cap = c->cap_ch ? 2 * c->cap_ch : 64;
        xchunk *ch = realloc(c->ch, (size_t)cap * sizeof *ch);
        if (!ch) {
            c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "MoE pass: out of memory");
            return;
        }
        c->ch = ch;
        c->cap_ch = cap;
    }
    xchunk *x = &c->ch[c->n_ch];
    x->x0 = c->rows;
    x->n = v->n;
    x->offsets = malloc((size_t)(E + 1) * sizeof *x->offsets);
    x->tok = malloc((size_t)v->n * k * sizeof *x->tok);
    if (!x->offsets || !x->tok) {
        free(x->offsets), free(x->tok);
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "MoE pass: out of memory");
        return;
    }
    memcpy(x->offsets, v->offsets, (size_t)(E + 1) * sizeof *x->offsets);
    memcpy(x->tok, v->tok, (size_t)v->n * k * sizeof *x->tok);
    memcpy(c->X + (size_t)c->rows * c->d, v->x, (size_t)v->n * c->d * sizeof *c->X);
    c->rows += v->n;
    c->n_ch++;
}

/* One expert's outcome, reported after all of them in the order of the
 * whole-layer path. */
typedef struct xjob {
    bool few;                  /* too few rows for GPTQ: RTN */
    int64_t n1;                /* H1 rows (routed + balance) */
    int64_t extra;             /* balance rows */
    bool f13_failed, f2_failed;
    char f13_note[700], f2_note[700]; /* "NAME: GPTQ impossible (why); quantized by RTN" (qr_note keeps 399 characters) */
    int retries;
    moec_status st;
    moec_err err;
} xjob;

typedef struct xrun {
    qr_recipe_run *R;
    const capture *c;
    int l, E, d;
    int64_t f, fs;
    const int *bits;           /* [E] */
    bool gptq;
    xjob *j;                   /* [E + 1] */
    pthread_mutex_t lock;      /* installing into the output */
} xrun;

/* The rows of job e (an expert, or e == E the shared expert: every token)
 * in chunk ch, gathered into X. */
static int64_t gather(const xrun *x, int e, const xchunk *ch, float *X)
{
    const capture *c = x->c;
    const size_t d = (size_t)x->d;
    const float *base = c->X + (size_t)ch->x0 * d;
    if (e == x->E) {
        memcpy(X, base, (size_t)ch->n * d * sizeof *X);
        return ch->n;
    }
    const int64_t rows = ch->offsets[e + 1] - ch->offsets[e];
    for (int64_t r = 0; r < rows; r++)
        memcpy(X + (size_t)r * d, base + (size_t)ch->tok[ch->offsets[e] + r] * d, d * sizeof *X);
    return rows;
}

/* Largest row count of job e over the chunks (its gather buffer). */
static int64_t max_rows(const xrun *x, int e, int64_t extra)
{
    int64_t m = extra;
    for (int i = 0; i < x->c->n_ch; i++) {
        const xchunk *ch = &x->c->ch[i];
        const int64_t r = e == x->E ? ch->n : ch->offsets[e + 1] - ch->offsets[e];
        m = r > m ? r : m;
    }
    return m;
}

static moec_gptq_opts gptq_opts(const moec_quant_recipe *r, int bits, int clip)
{
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = bits;
    o.q.group = r->group;
    o.q.symmetric = r->symmetric;
    o.q.clip_grid = clip;
    o.percdamp = r->percdamp;
    o.act_order = r->act_order;
    return o;
}

/* GPTQ with a factor, else RTN; on the plan's llama.cpp grid when gtype is set */
static moec_status quantize(const float *W, int64_t rows, int64_t cols, const moec_gptq_hinv *h, moec_gptq_opts o,
                            moec_gblock gtype, const char *name, moec_qmatrix *q, moec_err *err)
{
    if (gtype)
        return moec_gptq_quantize_blocks(W, rows, cols, h, gtype, &o, name, q, NULL, err);
    return h ? moec_gptq_quantize_with(W, rows, cols, h, &o, name, q, NULL, err)
             : moec_rtn_quantize(W, rows, cols, &o.q, name, q, err);
}

static moec_status install(xrun *x, moec_tensor *wt, moec_tensor *ot, moec_qmatrix *q, const char *name,
                           moec_err *err)
{
    pthread_mutex_lock(&x->lock);
    moec_status st = qr_install(x->R, wt, ot, &q->f, name, err);
    pthread_mutex_unlock(&x->lock);
    moec_qmatrix_free(q);
    return st;
}

/* A Hessian from the recorded rows of job e (+ the balance rows), either of
 * the block inputs (H1, F NULL) or of the intermediates through F's w1/w3. */
static moec_status hessian(const xrun *x, int e, const moec_ffn *F, int64_t cols, const float *extra_rows,
                           int64_t n_extra, double **out, int64_t *n_out, moec_err *err)
{
    const int64_t d = x->d;
    const int64_t mr = max_rows(x, e, n_extra);
    double *H = calloc((size_t)(cols * cols), sizeof *H);
    float *X = malloc((size_t)((mr > 0 ? mr : 1) * d) * sizeof *X);
    moec_status st = MOEC_OK;
    int64_t n = 0;
    if (!H || !X) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for a %lld x %lld Hessian", (long long)cols,
                          (long long)cols);
        goto done;
    }
    for (int i = 0; i < x->c->n_ch && !st; i++) {
        const int64_t rows = gather(x, e, &x->c->ch[i], X);
        if (rows == 0)
            continue;
        st = F ? qr_add_intermediate(H, F, X, rows, d, x->R->r->act_bits, err)
               : moec_hessian_accumulate(H, X, rows, d, err);
        n += rows;
    }
    if (!st && n_extra > 0) {
        memcpy(X, extra_rows, (size_t)(n_extra * d) * sizeof *X);
        st = F ? qr_add_intermediate(H, F, X, n_extra, d, x->R->r->act_bits, err)
               : moec_hessian_accumulate(H, X, n_extra, d, err);
        n += n_extra;
    }
done:
    free(X);
    if (st) {
        free(H);
        return st;
    }
    *out = H;
    *n_out = n;
    return MOEC_OK;
}

/* A factor in H's memory, or NULL with the failure kept for the notes. */
static moec_gptq_hinv *factor(double *H, int64_t cols, int64_t n, const moec_quant_recipe *r, const char *name,
                              bool *failed, char note[700], int *retries)
{
    moec_gptq_opts o = gptq_opts(r, r->bits, 0);
    moec_gptq_hinv *h = NULL;
    moec_gptq_report rep;
    moec_err e;
    if (moec_gptq_hinv_from(H, cols, n, &o, name, &h, &rep, &e)) {
        *failed = true;
        snprintf(note, 700, "%s: GPTQ impossible (%s); quantized by RTN", name, e.msg);
        return NULL;
    }
    *retries += rep.retries;
    return h;
}

static moec_status expert_job(xrun *x, int e, moec_err *err)
{
    qr_recipe_run *R = x->R;
    const moec_quant_recipe *r = R->r;
    const bool shared = e == x->E;
    const int l = x->l;
    const moec_ffn *S = shared ? &R->src->layers[l].shared : &R->src->layers[l].experts[e];
    moec_ffn *W = shared ? &R->work->layers[l].shared : &R->work->layers[l].experts[e];
    moec_ffn *O = shared ? &R->out->layers[l].shared : &R->out->layers[l].experts[e];
    const int64_t d = x->d, f = shared ? x->fs : x->f;
    const int bits = shared ? r->bits : x->bits[e];
    xjob *J = &x->j[e];
    char n13[96], n1[96], n3[96], n2[96];
    if (shared) {
        snprintf(n13, sizeof n13, "layer %d shared expert w1/w3", l);
        snprintf(n1, sizeof n1, "layer %d shared expert w1", l);
        snprintf(n3, sizeof n3, "layer %d shared expert w3", l);
        snprintf(n2, sizeof n2, "layer %d shared expert w2", l);
    } else {
        snprintf(n13, sizeof n13, "layer %d expert %d w1/w3", l, e);
        snprintf(n1, sizeof n1, "layer %d expert %d w1", l, e);
        snprintf(n3, sizeof n3, "layer %d expert %d w3", l, e);
        snprintf(n2, sizeof n2, "layer %d expert %d w2", l, e);
    }
    float *w = NULL;
    double *H = NULL;
    moec_gptq_hinv *h = NULL;
    moec_qmatrix q1 = {0}, q3 = {0}, q2 = {0};
    moec_status st = MOEC_OK;
    const float *extra_rows = NULL;
    int64_t n_extra = 0;
    if (!shared && x->c && x->c->bal)
        n_extra = J->extra = moec_eaq_balance_extra(x->c->bal, e, &extra_rows);

    /* w1 and w3 */
    if (x->gptq) {
        if ((st = hessian(x, e, NULL, d, extra_rows, n_extra, &H, &J->n1, err)))
            goto done;
        if (J->n1 < r->gptq_min_tokens) {
            J->few = !shared;
            free(H);
        } else {
            h = factor(H, d, J->n1, r, n13, &J->f13_failed, J->f13_note, &J->retries);
        }
        H = NULL;
    }
    const moec_gptq_opts o13 = gptq_opts(r, bits, r->clip_grid);
    if ((st = qr_to_float(&S->w1, n1, &w, err)) || (st = quantize(w, f, d, h, o13, qr_gtype(R, l, shared ? MOEC_GS_SH_GATE : MOEC_GS_GATE), n1, &q1, err)))
        goto done;
    free(w);
    w = NULL;
    if ((st = qr_to_float(&S->w3, n3, &w, err)) || (st = quantize(w, f, d, h, o13, qr_gtype(R, l, shared ? MOEC_GS_SH_UP : MOEC_GS_UP), n3, &q3, err)))
        goto done;
    free(w);
    w = NULL;
    moec_gptq_hinv_free(h);
    h = NULL;

    /* w2 from the intermediates through the quantized w1/w3 */
    if (x->gptq && !J->few && !(J->f13_failed && !shared) && (!shared || J->n1 >= r->gptq_min_tokens)) {
        moec_ffn Q = {.w1 = moec_qformat_tensor(&q1.f), .w3 = moec_qformat_tensor(&q3.f)};
        int64_t n2r = 0;
        if ((st = hessian(x, e, &Q, f, extra_rows, n_extra, &H, &n2r, err)))
            goto done;
        if (n2r >= r->gptq_min_tokens || !shared)
            h = factor(H, f, n2r, r, n2, &J->f2_failed, J->f2_note, &J->retries);
        else
            free(H);
        H = NULL;
    }
    if ((st = install(x, &W->w1, &O->w1, &q1, n1, err)) || (st = install(x, &W->w3, &O->w3, &q3, n3, err)))
        goto done;
    const moec_gptq_opts o2 = gptq_opts(r, bits, r->clip_grid);
    if ((st = qr_to_float(&S->w2, n2, &w, err)) || (st = quantize(w, d, f, h, o2, qr_gtype(R, l, shared ? MOEC_GS_SH_DOWN : MOEC_GS_DOWN), n2, &q2, err)) ||
        (st = install(x, &W->w2, &O->w2, &q2, n2, err)))
        goto done;
    if (R->streaming) { /* this expert's source pages are done with */
        moec_model_release_tensor(R->src, &S->w1);
        moec_model_release_tensor(R->src, &S->w3);
        moec_model_release_tensor(R->src, &S->w2);
    }
done:
    free(w);
    free(H);
    moec_gptq_hinv_free(h);
    moec_qmatrix_free(&q1), moec_qmatrix_free(&q3), moec_qmatrix_free(&q2);
    return st;
}

static void expert_task(void *vx, int e, int t)
{
    (void)t;
    xrun *x = vx;
    xjob *J = &x->j[e];
    J->st = expert_job(x, e, &J->err);
}

moec_status qr_moe_experts_run(qr_recipe_run *R, int l, moec_err *err)
{
    const moec_quant_recipe *r = R->r;
    const moec_layer *SL = &R->src->layers[l];
    moec_quant_layer_report *LR = &R->rep->layers[l];
    const bool gptq = r->method == MOEC_QMETHOD_GPTQ;
    const int E = SL->n_experts, d = R->src->cfg.hidden_size, k = R->src->cfg.top_k;
    const int64_t f = R->src->cfg.expert_ffn, fs = R->src->cfg.shared_ffn;
    capture c = {.layer = l, .E = E, .d = d, .k = k};
    int *bits = calloc((size_t)E, sizeof *bits);
    xjob *jobs = calloc((size_t)E + 1, sizeof *jobs);
    xrun x = {.R = R, .l = l, .E = E, .d = d, .f = f, .fs = fs, .bits = bits, .gptq = gptq, .j = jobs};
    moec_status st = MOEC_OK;
    if (!bits || !jobs) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (r->avg_bits > 0) {
        if ((st = moec_quant_alloc_bits(MOEC_QALLOC_UNIFORM, NULL, E, NULL, NULL, NULL, false, r->choices, r->n_choices,
                                        r->avg_bits, bits, err)))
            goto done;
    } else {
        for (int e = 0; e < E; e++)
            bits[e] = r->bits;
    }
    if (R->have_windows && gptq) {
        if (!(c.routed = calloc((size_t)E, sizeof *c.routed))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        if (r->balance) {
            const int Mmin = r->balance_min ? r->balance_min : d;
            R->rep->balance_min = Mmin;
            if ((st = moec_eaq_balance_new(&c.bal, E, d, Mmin, err)))
                goto done;
        }
        qr_progress(R, "expert pass", l);
        if ((st = qr_run_pass(&R->w, l, capture_hook, NULL, &c, &c.hs, err))) {
            moec_err_prefix(err, "layer %d expert pass", l);
            goto done;
        }
        R->rep->passes++;
        for (int e = 0; e < E; e++) {
            LR->tokens[e] = c.routed[e];
            if (c.bal)
                LR->near_miss[e] = moec_eaq_balance_near_miss(c.bal, e);
        }
        x.c = &c;
    } else if (!R->have_windows && R->stats) {
        for (int e = 0; e < E; e++)
            LR->tokens[e] = (int64_t)R->stats->layers[l].count[e];
    }
    for (int e = 0; e < E; e++)
        LR->bits[e] = bits[e];
    /* the balance sorts an expert's rows on first use: that happens in its own job */
    pthread_mutex_init(&x.lock, NULL);
    qr_progress(R, "quantizing experts", l);
    qr_parallel_for(R->pool, E + (fs > 0 ? 1 : 0), expert_task, &x);
    pthread_mutex_destroy(&x.lock);
    for (int e = 0; e <= E && !st; e++)
        if (jobs[e].st) {
            *err = jobs[e].err;
            st = jobs[e].st;
        }
    if (st)
        goto done;
    /* the whole-layer path's notes, in its order */
    for (int e = 0; e < E; e++) {
        LR->extra[e] = jobs[e].extra;
        if (jobs[e].few)
            qr_note(R, "layer %d expert %d: %lld calibration rows (%lld routed + %lld balance) < %d: RTN instead of GPTQ",
                    l, e, (long long)jobs[e].n1, (long long)LR->tokens[e], (long long)LR->extra[e], r->gptq_min_tokens);
    }
    for (int e = 0; e <= E; e++)
        if (jobs[e].f13_failed)
            qr_note(R, "%s", jobs[e].f13_note);
    for (int e = 0; e <= E; e++)
        if (jobs[e].f2_failed)
            qr_note(R, "%s", jobs[e].f2_note);
    for (int e = 0; e <= E; e++)
        LR->gptq_retries += jobs[e].retries;
    for (int e = 0; e < E; e++) {
        LR->rtn_fallback[e] = jobs[e].few || jobs[e].f13_failed;
        if (LR->rtn_fallback[e])
            R->rep->rtn_fallbacks++;
    }
done:
    capture_free(&c);
    free(bits);
    free(jobs);
    return st;
}
