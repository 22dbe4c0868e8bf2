/* eaquant.c - EAQuant's smoothing aggregation, alignment grid search and
 * calibration balance (see eaquant.h for the method and moec's choices). */
#include "quant/eaquant.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "exec/ops.h"
#include "core/qformat.h"
#include "quant/rtn.h"

#define S_MIN 1e-4f
#define S_MAX 1e4f

/* ---- smoothing ---- */

static bool is_float_tensor(const moec_tensor *t)
{
    return moec_tensor_present(t) && moec_dtype_is_compute(t->dtype) && t->q == NULL;
}

/* wmax[j] = max(wmax[j], max_r |W[r][j]|) for a 2-D compute tensor. */
static moec_status col_absmax(const moec_tensor *W, float *wmax, int64_t d, float *row, const char *what,
                              moec_err *err)
{
    if (!is_float_tensor(W) || W->ndim != 2 || moec_tensor_cols(W) != d)
        return moec_err_set(err, MOEC_ERR_ARG, "smoothing: %s is not a float [*][%lld] matrix", what,
                            (long long)d);
    const size_t esz = moec_dtype_size(W->dtype);
    for (int64_t r = 0; r < moec_tensor_rows(W); r++) {
        moec_to_f32(row, (const char *)W->data + (size_t)r * (size_t)d * esz, W->dtype, (size_t)d);
        for (int64_t j = 0; j < d; j++)
            wmax[j] = fmaxf(wmax[j], fabsf(row[j]));
    }
    return MOEC_OK;
}

static float smooth_value(float xmax, float wmax, float alpha)
{
    if (!(xmax > 0.0f) || !(wmax > 0.0f) || !isfinite(xmax) || !isfinite(wmax))
        return 1.0f;
    double s = pow((double)xmax, (double)alpha) / pow((double)wmax, 1.0 - (double)alpha);
    if (!(s > S_MIN))
        return S_MIN;
    return s > S_MAX ? S_MAX : (float)s;
}

moec_status moec_eaq_smooth_vector(const moec_model *m, int layer, const float *x_absmax, float alpha, float *s,
                                   moec_err *err)
{
    if (layer < 0 || layer >= m->cfg.n_layers || m->layers[layer].n_experts == 0)
        return moec_err_set(err, MOEC_ERR_ARG, "smoothing: layer %d is not an MoE layer", layer);
    if (!(alpha >= 0.0f && alpha <= 1.0f))
        return moec_err_set(err, MOEC_ERR_ARG, "smoothing: alpha %g is outside [0, 1]", (double)alpha);
    const moec_layer *L = &m->layers[layer];
    const int64_t d = m->cfg.hidden_size;
    float *wmax = calloc((size_t)d, sizeof *wmax), *row = malloc((size_t)d * sizeof *row);
    moec_status st = MOEC_OK;
    if (!wmax || !row)
        st = moec_err_set(err, MOEC_ERR_NOMEM, "smoothing: out of memory");
    char what[64];
    for (int e = 0; !st && e < L->n_experts; e++) {
        snprintf(what, sizeof what, "layer %d expert %d w1", layer, e);
        st = col_absmax(&L->experts[e].w1, wmax, d, row, what, err);
        what[strlen(what) - 1] = '3';
        if (!st)
            st = col_absmax(&L->experts[e].w3, wmax, d, row, what, err);
    }
    if (!st && m->cfg.shared_ffn > 0) {
        snprintf(what, sizeof what, "layer %d shared expert w1", layer);
        st = col_absmax(&L->shared.w1, wmax, d, row, what, err);
        what[strlen(what) - 1] = '3';
        if (!st)
            st = col_absmax(&L->shared.w3, wmax, d, row, what, err);
    }
    for (int64_t j = 0; !st && j < d; j++)
        s[j] = smooth_value(x_absmax[j], wmax[j], alpha);
    free(wmax);
    free(row);
    return st;
}

/* Replaces *t by an owned F32 copy with each column j (or element j of a
 * vector) multiplied by s[j], or divided when `divide`. */
static moec_status scaled_copy(moec_model *m, moec_tensor *t, const float *s, int64_t d, bool divide,
                               const char *what, moec_err *err)
{
    if (!is_float_tensor(t) || moec_tensor_cols(t) != d)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "smoothing: %s must be a full-precision tensor with %lld columns (quantize after smoothing)",
                            what, (long long)d);
    const int64_t rows = t->ndim == 1 ? 1 : moec_tensor_rows(t);
    moec_tensor nt;
    moec_status st = moec_model_new_tensor(m, &nt, MOEC_DT_F32, t->ndim == 1 ? d : rows, t->ndim == 1 ? 0 : d, err);
    if (st)
        return moec_err_prefix(err, "smoothing %s", what);
    float *dst = (float *)nt.data;
    moec_to_f32(dst, t->data, t->dtype, (size_t)(rows * d));
    for (int64_t r = 0; r < rows; r++) {
        float *row = dst + (size_t)r * (size_t)d;
        for (int64_t j = 0; j < d; j++)
            row[j] = divide ? row[j] / s[j] : row[j] * s[j];
    }
    *t = nt;
    return MOEC_OK;
}

moec_status moec_eaq_smooth_apply(moec_model *m, int layer, const float *s, moec_err *err)
{
    if (layer < 0 || layer >= m->cfg.n_layers || m->layers[layer].n_experts == 0)
        return moec_err_set(err, MOEC_ERR_ARG, "smoothing: layer %d is not an MoE layer", layer);
    const int64_t d = m->cfg.hidden_size;
    for (int64_t j = 0; j < d; j++)
        if (!(s[j] > 0.0f) || !isfinite(s[j]))
            return moec_err_set(err, MOEC_ERR_ARG, "smoothing: layer %d factor %lld is %g (must be positive)",
                                layer, (long long)j, (double)s[j]);
    moec_layer *L = &m->layers[layer];
    char what[80];
    moec_status st;
    snprintf(what, sizeof what, "layer %d ffn_norm", layer);
    if ((st = scaled_copy(m, &L->ffn_norm, s, d, true, what, err)))
        return st;
    snprintf(what, sizeof what, "layer %d router", layer);
    if ((st = scaled_copy(m, &L->router, s, d, false, what, err)))
        return st;
    for (int e = 0; e < L->n_experts; e++) {
        snprintf(what, sizeof what, "layer %d expert %d w1", layer, e);
        if ((st = scaled_copy(m, &L->experts[e].w1, s, d, false, what, err)))
            return st;
        snprintf(what, sizeof what, "layer %d expert %d w3", layer, e);
        if ((st = scaled_copy(m, &L->experts[e].w3, s, d, false, what, err)))
            return st;
    }
    if (m->cfg.shared_ffn > 0) {
        snprintf(what, sizeof what, "layer %d shared expert w1", layer);
        if ((st = scaled_copy(m, &L->shared.w1, s, d, false, what, err)))
            return st;
        snprintf(what, sizeof what, "layer %d shared expert w3", layer);
        if ((st = scaled_copy(m, &L->shared.w3, s, d, false, what, err)))
            return st;
        if (m->cfg.shared_gate) {
            snprintf(what, sizeof what, "layer %d shared expert gate", layer);
            if ((st = scaled_copy(m, &L->shared_gate, s, d, false, what, err)))
                return st;
        }
    }
    return MOEC_OK;
}

/* ---- calibration balance ---- */

typedef struct balance_expert {
    int64_t routed, near_miss;
    int size;        /* kept near-miss rows */
    bool sorted;     /* prob[] sorted descending (after an extra() call), not a heap */
    float *prob;     /* [M] min-heap on probability */
    float *rows;     /* [M][d] */
} balance_expert;

struct moec_eaq_balance {
    int E, d, M;
    balance_expert *ex;
};

moec_status moec_eaq_balance_new(moec_eaq_balance **out, int n_experts, int d, int M, moec_err *err)
{
    *out = NULL;
    if (n_experts < 1 || d < 1 || M < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "balance: %d experts, width %d, M %d", n_experts, d, M);
    moec_eaq_balance *b = calloc(1, sizeof *b);
    if (b)
        b->ex = calloc((size_t)n_experts, sizeof *b->ex);
    if (!b || !b->ex) {
        free(b);
        return moec_err_set(err, MOEC_ERR_NOMEM, "balance: out of memory");
    }
    b->E = n_experts;
    b->d = d;
    b->M = M;
    *out = b;
    return MOEC_OK;
}

static void expert_drop_rows(balance_expert *x)
{
    free(x->prob);
    free(x->rows);
    x->prob = x->rows = NULL;
    x->size = 0;
}

void moec_eaq_balance_free(moec_eaq_balance *b)
{
    if (!b)
        return;
    for (int e = 0; e < b->E; e++)
        expert_drop_rows(&b->ex[e]);
    free(b->ex);
    free(b);
}

static void swap_entries(balance_expert *x, int d, int i, int j, float *tmp)
{
    float p = x->prob[i];
    x->prob[i] = x->prob[j];
    x->prob[j] = p;
    memcpy(tmp, x->rows + (size_t)i * d, (size_t)d * sizeof *tmp);
    memcpy(x->rows + (size_t)i * d, x->rows + (size_t)j * d, (size_t)d * sizeof *tmp);
    memcpy(x->rows + (size_t)j * d, tmp, (size_t)d * sizeof *tmp);
}

static void sift_down(balance_expert *x, int d, int i, float *tmp)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < x->size && x->prob[l] < x->prob[m])
            m = l;
        if (r < x->size && x->prob[r] < x->prob[m])
            m = r;
        if (m == i)
            return;
        swap_entries(x, d, i, m, tmp);
        i = m;
    }
}

static void sift_up(balance_expert *x, int d, int i, float *tmp)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (x->prob[p] <= x->prob[i])
            return;
        swap_entries(x, d, i, p, tmp);
        i = p;
    }
}

/* Offers one near-miss token (probability p, row xr) to expert x's heap. */
static bool offer(balance_expert *x, int d, int M, float p, const float *xr, float *tmp)
{
    if (!x->prob) {
        x->prob = malloc((size_t)M * sizeof *x->prob);
        x->rows = malloc((size_t)M * (size_t)d * sizeof *x->rows);
        if (!x->prob || !x->rows) {
            expert_drop_rows(x);
            return false;
        }
    }
    if (x->sorted) { /* a descending array is turned back into a min-heap */
        for (int i = x->size / 2 - 1; i >= 0; i--)
            sift_down(x, d, i, tmp);
        x->sorted = false;
    }
    if (x->size < M) {
        x->prob[x->size] = p;
        memcpy(x->rows + (size_t)x->size * d, xr, (size_t)d * sizeof *xr);
        x->size++;
        sift_up(x, d, x->size - 1, tmp);
    } else if (p > x->prob[0]) {
        x->prob[0] = p;
        memcpy(x->rows, xr, (size_t)d * sizeof *xr);
        sift_down(x, d, 0, tmp);
    }
    return true;
}

bool moec_eaq_balance_add(moec_eaq_balance *b, int n, int k, const float *x, const float *probs, const int32_t *sel)
{
    const int E = b->E, d = b->d;
    float *tmp = malloc((size_t)d * sizeof *tmp);
    if (!tmp)
        return false;
    bool ok = true;
    for (int i = 0; i < n; i++) {
        const int32_t *s = sel + (size_t)i * k;
        const float *p = probs + (size_t)i * E;
        int miss = -1;
        for (int e = 0; e < E; e++) {
            bool chosen = false;
            for (int j = 0; j < k; j++)
                chosen |= s[j] == e;
            if (!chosen && (miss < 0 || p[e] > p[miss]))
                miss = e;
        }
        for (int j = 0; j < k; j++)
            if (s[j] >= 0 && s[j] < E)
                b->ex[s[j]].routed++;
        if (miss < 0)
            continue;
        balance_expert *m = &b->ex[miss];
        m->near_miss++;
        if (m->routed < b->M)
            ok &= offer(m, d, b->M, p[miss], x + (size_t)i * d, tmp);
    }
    for (int e = 0; e < E; e++)
        if (b->ex[e].routed >= b->M && b->ex[e].prob)
            expert_drop_rows(&b->ex[e]);
    free(tmp);
    return ok;
}

int64_t moec_eaq_balance_routed(const moec_eaq_balance *b, int e) { return b->ex[e].routed; }
int64_t moec_eaq_balance_near_miss(const moec_eaq_balance *b, int e) { return b->ex[e].near_miss; }

int64_t moec_eaq_balance_extra(moec_eaq_balance *b, int e, const float **rows)
{
    balance_expert *x = &b->ex[e];
    *rows = NULL;
    int64_t need = (int64_t)b->M - x->routed;
    if (need <= 0 || x->size == 0)
        return 0;
    if (!x->sorted) { /* selection sort by decreasing probability: M is small */
        float *tmp = malloc((size_t)b->d * sizeof *tmp);
        if (!tmp)
            return 0;
        for (int i = 0; i < x->size; i++) {
            int best = i;
            for (int j = i + 1; j < x->size; j++)
                if (x->prob[j] > x->prob[best])
                    best = j;
            if (best != i)
                swap_entries(x, b->d, i, best, tmp);
        }
        free(tmp);
        x->sorted = true;
    }
    *rows = x->rows;
    return need < x->size ? need : x->size;
}

/* ---- activation quantization ---- */

void moec_eaq_act_quant(float *x, int64_t rows, int64_t cols, int bits)
{
    if (bits <= 0)
        return;
    const float qmax = (float)((1 << (bits - 1)) - 1);
    for (int64_t i = 0; i < rows; i++) {
        float *r = x + (size_t)i * (size_t)cols;
        float amax = 0.0f;
        for (int64_t c = 0; c < cols; c++)
            amax = fmaxf(amax, fabsf(r[c]));
        const float scale = amax / qmax;
        for (int64_t c = 0; c < cols; c++) {
            float q = scale > 0.0f ? rintf(r[c] / scale) : 0.0f;
            r[c] = fminf(fmaxf(q, -qmax), qmax) * scale;
        }
    }
}

/* ---- alignment grid search ---- */

/* Output of one feed-forward block on its sample rows, accumulated with the
 * rows' weights into Y [n_tok][d]:
 *   X̃ = act(x[tok] / s); y = W2 · act(silu(A1 X̃) ⊙ (A3 X̃))
 * A1/A3 are the given (smoothed, possibly quantized) float matrices. */
static void ffn_output(const moec_eaq_search *p, const moec_eaq_ffn *F, const float *A1, const float *A3,
                       const float *s, int act_bits, float *X, float *h1, float *h3, float *y, float *Y)
{
    const int d = p->d;
    const int n = F->n_rows;
    if (n == 0)
        return;
    const int f = (int)F->f;
    for (int r = 0; r < n; r++) {
        const float *xr = p->x + (size_t)F->row_tok[r] * d;
        float *dst = X + (size_t)r * d;
        for (int j = 0; j < d; j++)
            dst[j] = s ? xr[j] / s[j] : xr[j];
    }
    moec_eaq_act_quant(X, n, d, act_bits);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, f, d, 1.0f, X, d, A1, d, 0.0f, h1, f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, f, d, 1.0f, X, d, A3, d, 0.0f, h3, f);
    moec_silu_mul(h1, h3, (int64_t)n * f);
    moec_eaq_act_quant(h1, n, f, act_bits);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, f, 1.0f, h1, f, F->w2, f, 0.0f, y, d);
    for (int r = 0; r < n; r++)
        moec_axpy(Y + (size_t)F->row_tok[r] * d, y + (size_t)r * d, F->row_w[r], d);
}

typedef struct search_job {
    const moec_eaq_search *p;
    const float *s;          /* NULL = no smoothing */
    int n_clip;              /* 1 or 2 clipping variants */
    float **Y;               /* [n_clip * n_threads] accumulators [n_tok][d] */
    moec_status *st;         /* [n_threads] first failure of each share */
    moec_err *err;           /* [n_threads] */
} search_job;

static moec_status quantize_dequant(const moec_eaq_search *p, const moec_eaq_ffn *F, const float *W,
                                    const moec_gptq_hinv *hinv, bool clip, float *out, moec_err *err)
{
    moec_gptq_opts o = p->gptq;
    o.q.bits = F->bits;
    o.q.clip_grid = clip ? 20 : 0;
    o.q.clip_min_ratio = 0.5f;
    moec_qmatrix qm = {0};
    moec_status st = hinv ? moec_gptq_quantize_with(W, F->f, p->d, hinv, &o, "alignment search", &qm, NULL, err)
                          : moec_rtn_quantize(W, F->f, p->d, &o.q, "alignment search", &qm, err);
    if (st)
        return st;
    moec_qformat_dequant_rows(&qm.f, 0, F->f, out);
    moec_qmatrix_free(&qm);
    return MOEC_OK;
}

static moec_status search_ffn(search_job *J, int fi, int t, int nt, moec_err *err)
{
    const moec_eaq_search *p = J->p;
    const moec_eaq_ffn *F = &p->ffn[fi];
    const int64_t d = p->d, f = F->f, n = F->n_rows;
    const size_t fd = (size_t)f * (size_t)d;
    moec_status st = MOEC_OK;
    float *W1s = malloc(fd * sizeof(float)), *W3s = malloc(fd * sizeof(float));
    float *A1 = malloc(fd * sizeof(float)), *A3 = malloc(fd * sizeof(float));
    size_t nr = (size_t)(n > 0 ? n : 1);
    float *X = malloc(nr * (size_t)d * sizeof(float)), *y = malloc(nr * (size_t)d * sizeof(float));
    float *h1 = malloc(nr * (size_t)f * sizeof(float)), *h3 = malloc(nr * (size_t)f * sizeof(float));
    double *Hs = NULL;
    moec_gptq_hinv *hinv = NULL;
    if (!W1s || !W3s || !A1 || !A3 || !X || !y || !h1 || !h3) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "alignment search: out of memory");
        goto done;
    }
    for (size_t i = 0; i < fd; i++) {
        float sc = J->s ? J->s[i % (size_t)d] : 1.0f;
        W1s[i] = F->w1[i] * sc;
        W3s[i] = F->w3[i] * sc;
    }
    if (F->H && F->n_h >= p->gptq_min_tokens) {
        Hs = malloc((size_t)d * (size_t)d * sizeof *Hs);
        if (!Hs) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "alignment search: out of memory");
            goto done;
        }
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = i; j < d; j++) {
                double sij = J->s ? (double)J->s[i] * J->s[j] : 1.0;
                Hs[(size_t)i * d + j] = F->H[(size_t)i * d + j] / sij;
            }
        moec_gptq_opts o = p->gptq;
        o.q.bits = F->bits;
        moec_err e2;
        if (moec_gptq_hinv_new(Hs, d, F->n_h, &o, "alignment search", &hinv, NULL, &e2))
            hinv = NULL; /* not positive definite even damped: the search judges this block by RTN */
    }
    for (int c = 0; c < J->n_clip && !st; c++) {
        if ((st = quantize_dequant(p, F, W1s, hinv, c == 1, A1, err)) ||
            (st = quantize_dequant(p, F, W3s, hinv, c == 1, A3, err)))
            break;
        ffn_output(p, F, A1, A3, J->s, p->act_bits, X, h1, h3, y, J->Y[c * nt + t]);
    }
done:
    moec_gptq_hinv_free(hinv);
    free(Hs);
    free(W1s), free(W3s), free(A1), free(A3), free(X), free(y), free(h1), free(h3);
    return st;
}

static void search_worker(void *ctx, int t, int nt)
{
    search_job *J = ctx;
    for (int fi = t; fi < J->p->n_ffn && !J->st[t]; fi += nt)
        J->st[t] = search_ffn(J, fi, t, nt, &J->err[t]);
}

/* KL(p ‖ p_q) and top-k agreement of the router reading act(x/s) with
 * columns scaled by s, averaged over the sample. */
static void router_drift(const moec_eaq_search *p, const float *s, double *kl, double *agree)
{
    const int E = p->n_experts, d = p->d, k = p->top_k;
    if (p->act_bits <= 0) {
        *kl = 0.0;
        *agree = 1.0;
        return;
    }
    float *xr = malloc((size_t)d * sizeof *xr), *z = malloc((size_t)E * sizeof *z);
    int *a = malloc((size_t)k * sizeof *a), *b = malloc((size_t)k * sizeof *b);
    double kl_sum = 0.0, same = 0.0;
    if (!xr || !z || !a || !b) {
        *kl = NAN;
        *agree = NAN;
        goto done;
    }
    for (int t = 0; t < p->n_tok; t++) {
        const float *x = p->x + (size_t)t * d;
        for (int j = 0; j < d; j++)
            xr[j] = s ? x[j] / s[j] : x[j];
        moec_eaq_act_quant(xr, 1, d, p->act_bits);
        if (s)
            for (int j = 0; j < d; j++)
                xr[j] *= s[j];
        for (int e = 0; e < E; e++)
            z[e] = moec_dot(p->router + (size_t)e * d, xr, d);
        moec_softmax(z, E);
        const float *pp = p->probs + (size_t)t * E;
        double acc = 0.0;
        for (int e = 0; e < E; e++)
            if (pp[e] > 0.0f)
                acc += (double)pp[e] * (log((double)pp[e]) - log(fmax((double)z[e], 1e-30)));
        kl_sum += acc;
        /* top-k sets by repeated max, lower index first on ties, as the executor */
        for (int j = 0; j < k; j++) {
            int ba = -1, bb = -1;
            for (int e = 0; e < E; e++) {
                bool ta = false, tb = false;
                for (int q = 0; q < j; q++) {
                    ta |= a[q] == e;
                    tb |= b[q] == e;
                }
                if (!ta && (ba < 0 || pp[e] > pp[ba]))
                    ba = e;
                if (!tb && (bb < 0 || z[e] > z[bb]))
                    bb = e;
            }
            a[j] = ba;
            b[j] = bb;
        }
        int match = 0;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                match += a[i] == b[j];
        same += match == k;
    }
    *kl = p->n_tok ? kl_sum / p->n_tok : 0.0;
    *agree = p->n_tok ? same / p->n_tok : 1.0;
done:
    free(xr), free(z), free(a), free(b);
}

/* Relative error of the accumulated outputs against the reference. */
static double rel_error(float *const *Y, int n_acc, const float *ref, size_t count, double ref_sq)
{
    double e = 0.0;
    for (size_t i = 0; i < count; i++) {
        float v = 0.0f;
        for (int a = 0; a < n_acc; a++)
            v += Y[a][i];
        double dlt = (double)v - ref[i];
        e += dlt * dlt;
    }
    return ref_sq > 0 ? e / ref_sq : e;
}

moec_status moec_eaq_search_run(const moec_eaq_search *p, moec_pool *pool, float *s, moec_eaq_choice *out,
                                moec_err *err)
{
    const int d = p->d;
    if (d < 1 || p->n_ffn < 1 || p->n_tok < 0 || p->n_alpha < 0 || (p->n_alpha > 0 && !p->alphas))
        return moec_err_set(err, MOEC_ERR_ARG, "alignment search: bad problem (width %d, %d blocks)", d, p->n_ffn);
    for (int a = 0; a < p->n_alpha; a++)
        if (!(p->alphas[a] >= 0.0f && p->alphas[a] <= 1.0f))
            return moec_err_set(err, MOEC_ERR_ARG, "alignment search: alpha %g outside [0, 1]", (double)p->alphas[a]);
    const int nt = moec_pool_size(pool), n_clip = p->try_clip ? 2 : 1;
    const size_t count = (size_t)p->n_tok * (size_t)d;
    const size_t cnt = count ? count : 1;
    moec_status st = MOEC_OK;
    float *ref = calloc(cnt, sizeof *ref), *wmax = calloc((size_t)d, sizeof *wmax);
    float *cand = malloc((size_t)d * sizeof *cand);
    float **Y = calloc((size_t)(n_clip * nt), sizeof *Y);
    moec_status *sts = calloc((size_t)nt, sizeof *sts);
    moec_err *errs = calloc((size_t)nt, sizeof *errs);
    bool ok = ref && wmax && cand && Y && sts && errs;
    for (int i = 0; ok && i < n_clip * nt; i++)
        ok = (Y[i] = malloc(cnt * sizeof(float))) != NULL;
    if (!ok) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "alignment search: out of memory");
        goto done;
    }
    /* reference: original weights and inputs, no activation quantization */
    {
        size_t maxn = 1;
        int64_t maxf = 1;
        for (int fi = 0; fi < p->n_ffn; fi++) {
            if ((size_t)p->ffn[fi].n_rows > maxn)
                maxn = (size_t)p->ffn[fi].n_rows;
            if (p->ffn[fi].f > maxf)
                maxf = p->ffn[fi].f;
        }
        float *X = malloc(maxn * (size_t)d * sizeof(float)), *y = malloc(maxn * (size_t)d * sizeof(float));
        float *h1 = malloc(maxn * (size_t)maxf * sizeof(float)), *h3 = malloc(maxn * (size_t)maxf * sizeof(float));
        if (X && y && h1 && h3)
            for (int fi = 0; fi < p->n_ffn; fi++)
                ffn_output(p, &p->ffn[fi], p->ffn[fi].w1, p->ffn[fi].w3, NULL, 0, X, h1, h3, y, ref);
        else
            st = moec_err_set(err, MOEC_ERR_NOMEM, "alignment search: out of memory");
        free(X), free(y), free(h1), free(h3);
        if (st)
            goto done;
        for (int fi = 0; fi < p->n_ffn; fi++) {
            const size_t fd = (size_t)p->ffn[fi].f * (size_t)d;
            for (size_t i = 0; i < fd; i++) {
                wmax[i % (size_t)d] = fmaxf(wmax[i % (size_t)d], fabsf(p->ffn[fi].w1[i]));
                wmax[i % (size_t)d] = fmaxf(wmax[i % (size_t)d], fabsf(p->ffn[fi].w3[i]));
            }
        }
    }
    double ref_sq = 0.0;
    for (size_t i = 0; i < count; i++)
        ref_sq += (double)ref[i] * ref[i];

    double best_j = INFINITY;
    out->alpha = -1.0f;
    out->clip = false;
    for (int j = 0; j < d; j++)
        s[j] = 1.0f;
    /* candidate -1 is "no smoothing"; then the α grid */
    for (int a = -1; a < p->n_alpha; a++) {
        if (a >= 0)
            for (int j = 0; j < d; j++)
                cand[j] = smooth_value(p->x_absmax[j], wmax[j], p->alphas[a]);
        for (int i = 0; i < n_clip * nt; i++)
            memset(Y[i], 0, cnt * sizeof(float));
        memset(sts, 0, (size_t)nt * sizeof *sts);
        search_job J = {.p = p, .s = a >= 0 ? cand : NULL, .n_clip = n_clip, .Y = Y, .st = sts, .err = errs};
        moec_pool_run(pool, search_worker, &J);
        for (int t = 0; t < nt; t++)
            if (sts[t]) {
                *err = errs[t];
                st = sts[t];
                goto done;
            }
        double kl, agree;
        router_drift(p, a >= 0 ? cand : NULL, &kl, &agree);
        for (int c = 0; c < n_clip; c++) {
            double e = rel_error(Y + c * nt, nt, ref, count, ref_sq);
            double jv = e + p->lambda * kl;
            if (a < 0 && c == 0) {
                out->err[0] = e;
                out->kl[0] = kl;
                out->agree[0] = agree;
            }
            if (jv < best_j) {
                best_j = jv;
                out->alpha = a >= 0 ? p->alphas[a] : -1.0f;
                out->clip = c == 1;
                out->err[1] = e;
                out->kl[1] = kl;
                out->agree[1] = agree;
                for (int j = 0; j < d; j++)
                    s[j] = a >= 0 ? cand[j] : 1.0f;
            }
        }
    }
done:
    if (Y)
        for (int i = 0; i < n_clip * nt; i++)
            free(Y[i]);
    free(Y);
    free(sts), free(errs);
    free(ref), free(wmax), free(cand);
    return st;
}
