/* recipe.c - moec_quant_model: the order in which a model is quantized
 * (recipe.h), the per-layer bookkeeping and the report. The passes live in
 * quant_hessians.c, MC-MoE's loss table in quant_mcmoe.c, EAQuant's parts in
 * eaquant.c, the final comparison in quant_verify.c. */
#include "quant/recipe.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/fsutil.h"
#include "model/check.h"
#include "model/model_moec.h"
#include "quant/gguf_presets.h"
#include "quant/gptq.h"
#include "quant/kquant_grid.h"
#include "quant/quant_internal.h"
#include "quant/rtn.h"

#define MAX_TEXT_BYTES ((size_t)1 << 31)
#define CLIP_GRID_SEARCH 20

/* EAQuant α grid of the alignment search ("no smoothing" is tried too). */
static const float align_alphas[] = {0.1f, 0.3f, 0.5f, 0.7f, 0.9f};

typedef struct recipe_run {
    const moec_model *src;
    moec_model *work, *out;
    const moec_quant_recipe *r;
    qr_windows w;
    bool have_windows;
    const moec_stats *stats;
    moec_pool *pool;
    moec_quant_report *rep;
    float **smooth;       /* [n_layers] factors or NULL */
    int cap_notes;
    moec_quant_progress progress;
    void *pctx;
} recipe_run;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void note(recipe_run *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(recipe_run *R, const char *fmt, ...)
{
    moec_quant_report *rep = R->rep;
    if (rep->n_notes == R->cap_notes) {
        int cap = R->cap_notes ? 2 * R->cap_notes : 8;
        char **nn = realloc(rep->notes, (size_t)cap * sizeof *nn);
        if (!nn)
            return; /* a note lost to memory pressure is not worth failing the run */
        rep->notes = nn;
        R->cap_notes = cap;
    }
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *s = malloc(strlen(buf) + 1);
    if (s) {
        strcpy(s, buf);
        rep->notes[rep->n_notes++] = s;
    }
}

static void progress(recipe_run *R, const char *stage, int layer)
{
    if (R->progress)
        R->progress(R->pctx, stage, layer, R->src->cfg.n_layers);
}

/* ---- options ---- */

static bool bits_ok(int b) { return b >= MOEC_QBITS_MIN && b <= MOEC_QBITS_MAX; }

moec_status moec_quant_recipe_check(const moec_quant_recipe *r, bool cal_has_windows, moec_err *err)
{
    if (!r)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: no recipe");
    if (r->method != MOEC_QMETHOD_RTN && r->method != MOEC_QMETHOD_GPTQ)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: unknown method %d", (int)r->method);
    if (!bits_ok(r->bits))
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: --bits %d (expected 1..8)", r->bits);
    if (r->attn_bits && !bits_ok(r->attn_bits))
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: attention bits %d (expected 1..8)", r->attn_bits);
    if (r->embed_bits && !bits_ok(r->embed_bits))
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: --embed-bits %d (expected 1..8)", r->embed_bits);
    if (r->group < 0 || r->embed_group < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: negative group size");
    if (r->clip_grid < 0 || r->percdamp <= 0 || !isfinite(r->percdamp) || r->gptq_min_tokens < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: clip grid %d, damping %g, GPTQ minimum %d tokens",
                            r->clip_grid, r->percdamp, r->gptq_min_tokens);
    if (r->act_bits != 0 && (r->act_bits < 2 || r->act_bits > 16))
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: --act-bits %d (expected 0 or 2..16)", r->act_bits);
    if (r->threads < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: %d threads", r->threads);
    if (r->avg_bits != 0) {
        if (r->n_choices < 1 || r->n_choices > MOEC_QUANT_MAX_CHOICES)
            return moec_err_set(err, MOEC_ERR_ARG, "quantize: %d bit choices (expected 1..%d)", r->n_choices,
                                MOEC_QUANT_MAX_CHOICES);
        for (int k = 0; k < r->n_choices; k++)
            if (!bits_ok(r->choices[k]) || (k > 0 && r->choices[k] <= r->choices[k - 1]))
                return moec_err_set(err, MOEC_ERR_ARG,
                                    "quantize: --bit-choices must be strictly increasing widths in 1..8 (found %d)",
                                    r->choices[k]);
        if (!(r->avg_bits >= r->choices[0] - 1e-9 && r->avg_bits <= r->choices[r->n_choices - 1] + 1e-9))
            return moec_err_set(err, MOEC_ERR_ARG, "quantize: --avg-bits %g outside the choices [%d, %d]", r->avg_bits,
                                r->choices[0], r->choices[r->n_choices - 1]);
        if (r->alloc != MOEC_QALLOC_UNIFORM && r->alloc != MOEC_QALLOC_MCMOE)
            return moec_err_set(err, MOEC_ERR_ARG, "quantize: unknown allocation %d", (int)r->alloc);
    }
    if (r->gplan && r->avg_bits != 0)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "quantize: per-expert widths (--avg-bits) cannot be held in llama.cpp types, which keep "
                            "a layer's experts in one tensor of one type; use --grid/--preset without them");
    if (!cal_has_windows && r->method == MOEC_QMETHOD_GPTQ)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: GPTQ needs calibration text (Hessians of layer inputs)");
    if (!cal_has_windows && (r->smooth || r->align))
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: EAQuant smoothing needs calibration text");
    if (r->align && !r->smooth)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: router alignment chooses the smoothing: enable smoothing");
    if (r->balance_min < 0 || r->align_sample < 1 || !(r->align_lambda >= 0) ||
        !(r->smooth_alpha >= 0.0f && r->smooth_alpha <= 1.0f) || r->verify_tokens < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: balance M %d, sample %d, lambda %g, alpha %g, verify %lld",
                            r->balance_min, r->align_sample, r->align_lambda, (double)r->smooth_alpha,
                            (long long)r->verify_tokens);
    return MOEC_OK;
}

/* ---- calibration windows from text ---- */

moec_status moec_quant_windows_from_text(const moec_tokenizer *tok, const char *const *files, int n_files,
                                         int ctx, int64_t max_tokens, int32_t **ids_out, int **len_out,
                                         int *n_out, moec_err *err)
{
    *ids_out = NULL;
    *len_out = NULL;
    *n_out = 0;
    if (n_files < 1 || ctx < 1 || max_tokens < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "calibration windows: %d files, window %d", n_files, ctx);
    int32_t **fids = calloc((size_t)n_files, sizeof *fids);
    size_t *fn = calloc((size_t)n_files, sizeof *fn), *nwin = calloc((size_t)n_files, sizeof *nwin);
    size_t *nfull = calloc((size_t)n_files, sizeof *nfull);
    int32_t *ids = NULL;
    int *len = NULL;
    moec_status st = MOEC_OK;
    if (!fids || !fn || !nwin || !nfull) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t total_win = 0, total_tok = 0, rounds = 0;
    const size_t C = (size_t)ctx;
    for (int f = 0; f < n_files && !st; f++) {
        char *buf;
        size_t blen;
        if ((st = moec_read_file(files[f], MAX_TEXT_BYTES, &buf, &blen, err)))
            break;
        st = moec_tokenizer_encode(tok, buf, blen, &fids[f], &fn[f], err);
        free(buf);
        if (st) {
            moec_err_prefix(err, "%s", files[f]);
            break;
        }
        const size_t quota = max_tokens > 0 ? (size_t)(max_tokens / n_files) : fn[f];
        nfull[f] = fn[f] / C;
        if (quota >= fn[f] || nfull[f] == 0) {
            nwin[f] = (fn[f] + C - 1) / C; /* all of it, the tail window shorter */
            nfull[f] = 0;
        } else {
            nwin[f] = (quota + C - 1) / C;
            if (nwin[f] > nfull[f])
                nwin[f] = nfull[f];
        }
        total_win += nwin[f];
        rounds = nwin[f] > rounds ? nwin[f] : rounds;
    }
    if (st)
        goto done;
    if (total_win == 0) {
        st = moec_err_set(err, MOEC_ERR_ARG, "calibration windows: the text files hold no tokens");
        goto done;
    }
    ids = malloc(total_win * C * sizeof *ids);
    len = malloc(total_win * sizeof *len);
    if (!ids || !len) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for %zu calibration windows", total_win);
        goto done;
    }
    int n = 0;
    for (size_t r = 0; r < rounds; r++)
        for (int f = 0; f < n_files; f++) {
            if (r >= nwin[f])
                continue;
            /* spread: window r of nwin starts at full window r·nfull/nwin */
            size_t start = nfull[f] ? (size_t)((unsigned long long)r * nfull[f] / nwin[f]) * C : r * C;
            size_t l = fn[f] - start < C ? fn[f] - start : C;
            memcpy(ids + total_tok, fids[f] + start, l * sizeof *ids);
            len[n++] = (int)l;
            total_tok += l;
        }
    *ids_out = ids;
    *len_out = len;
    *n_out = n;
    ids = NULL;
    len = NULL;
done:
    if (fids)
        for (int f = 0; f < n_files; f++)
            free(fids[f]);
    free(fids), free(fn), free(nwin), free(nfull), free(ids), free(len);
    return st;
}

/* ---- report ---- */

void moec_quant_report_free(moec_quant_report *rep)
{
    if (!rep)
        return;
    for (int l = 0; rep->layers && l < rep->n_layers; l++) {
        moec_quant_layer_report *L = &rep->layers[l];
        free(L->bits), free(L->tokens), free(L->extra), free(L->near_miss), free(L->rtn_fallback), free(L->eps);
    }
    free(rep->layers);
    for (int i = 0; i < rep->n_notes; i++)
        free(rep->notes[i]);
    free(rep->notes);
    memset(rep, 0, sizeof *rep);
}

static moec_status report_init(moec_quant_report *rep, const moec_model *m, const moec_quant_recipe *r,
                               moec_err *err)
{
    memset(rep, 0, sizeof *rep);
    rep->n_layers = m->cfg.n_layers;
    rep->layers = calloc((size_t)rep->n_layers, sizeof *rep->layers);
    if (!rep->layers)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    rep->verify_kld = rep->verify_top1 = NAN;
    const int nc = r->avg_bits > 0 && r->alloc == MOEC_QALLOC_MCMOE ? r->n_choices : 0;
    for (int l = 0; l < rep->n_layers; l++) {
        moec_quant_layer_report *L = &rep->layers[l];
        const int E = m->layers[l].n_experts;
        L->n_experts = E;
        L->smooth_alpha = -1;
        L->block_err = L->router_agree = NAN;
        for (int i = 0; i < 2; i++)
            L->align_err[i] = L->align_kl[i] = L->align_agree[i] = NAN;
        if (E == 0)
            continue;
        L->bits = calloc((size_t)E, sizeof *L->bits);
        L->tokens = calloc((size_t)E, sizeof *L->tokens);
        L->extra = calloc((size_t)E, sizeof *L->extra);
        L->near_miss = calloc((size_t)E, sizeof *L->near_miss);
        L->rtn_fallback = calloc((size_t)E, sizeof *L->rtn_fallback);
        if (nc)
            L->eps = calloc((size_t)E * nc, sizeof *L->eps);
        if (!L->bits || !L->tokens || !L->extra || !L->near_miss || !L->rtn_fallback || (nc && !L->eps))
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    return MOEC_OK;
}

static cJSON *num_array_d(const double *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, isfinite(v[i]) ? cJSON_CreateNumber(v[i]) : cJSON_CreateNull());
    return a;
}

static void add_num(cJSON *o, const char *k, double v)
{
    if (isfinite(v))
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

cJSON *moec_quant_report_json(const moec_quant_report *rep, const moec_quant_recipe *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON *rc = cJSON_AddObjectToObject(o, "recipe");
    cJSON_AddStringToObject(rc, "method", r->method == MOEC_QMETHOD_GPTQ ? "gptq" : "rtn");
    if (r->gplan)
        cJSON_AddStringToObject(rc, "llama_cpp_types", r->gplan->name);
    cJSON_AddNumberToObject(rc, "bits", r->bits);
    cJSON_AddNumberToObject(rc, "group", r->group);
    cJSON_AddBoolToObject(rc, "symmetric", r->symmetric);
    cJSON_AddNumberToObject(rc, "clip_grid", r->clip_grid);
    if (r->method == MOEC_QMETHOD_GPTQ) {
        cJSON_AddBoolToObject(rc, "act_order", r->act_order);
        cJSON_AddNumberToObject(rc, "percdamp", r->percdamp);
        cJSON_AddNumberToObject(rc, "gptq_min_tokens", r->gptq_min_tokens);
    }
    cJSON_AddBoolToObject(rc, "attn", r->attn);
    if (r->attn)
        cJSON_AddNumberToObject(rc, "attn_bits", r->attn_bits ? r->attn_bits : r->bits);
    cJSON_AddNumberToObject(rc, "embed_bits", r->embed_bits);
    if (r->embed_bits)
        cJSON_AddNumberToObject(rc, "embed_group", r->embed_group);
    if (r->avg_bits > 0) {
        cJSON_AddNumberToObject(rc, "avg_bits", r->avg_bits);
        cJSON_AddStringToObject(rc, "alloc", r->alloc == MOEC_QALLOC_MCMOE ? "mcmoe" : "uniform");
        cJSON *ch = cJSON_AddArrayToObject(rc, "bit_choices");
        for (int k = 0; k < r->n_choices; k++)
            cJSON_AddItemToArray(ch, cJSON_CreateNumber(r->choices[k]));
        if (r->alloc == MOEC_QALLOC_MCMOE) {
            cJSON_AddStringToObject(rc, "mc_objective", r->mc.objective == MOEC_MC_PAPER ? "paper" : "output");
            if (r->mc.objective == MOEC_MC_PAPER) {
                cJSON_AddNumberToObject(rc, "mc_alpha", r->mc.alpha);
                cJSON_AddNumberToObject(rc, "mc_beta", r->mc.beta);
            }
            cJSON_AddBoolToObject(rc, "mc_diversity", r->mc.diversity);
        }
    }
    cJSON_AddBoolToObject(rc, "smooth", r->smooth);
    cJSON_AddBoolToObject(rc, "align", r->align);
    cJSON_AddBoolToObject(rc, "balance", r->balance);
    if (r->balance && r->method == MOEC_QMETHOD_GPTQ)
        cJSON_AddNumberToObject(rc, "balance_min", rep->balance_min);
    if (r->align)
        cJSON_AddNumberToObject(rc, "align_lambda", r->align_lambda);
    cJSON_AddNumberToObject(o, "act_bits", r->act_bits);

    cJSON *ls = cJSON_AddArrayToObject(o, "layers");
    for (int l = 0; l < rep->n_layers; l++) {
        const moec_quant_layer_report *L = &rep->layers[l];
        cJSON *lo = cJSON_CreateObject();
        cJSON_AddItemToArray(ls, lo);
        cJSON_AddNumberToObject(lo, "layer", l);
        if (L->n_experts == 0) {
            cJSON_AddStringToObject(lo, "kind", "dense");
            continue;
        }
        cJSON *b = cJSON_AddArrayToObject(lo, "expert_bits");
        cJSON *t = cJSON_AddArrayToObject(lo, "tokens");
        cJSON *x = cJSON_AddArrayToObject(lo, "balance_tokens");
        cJSON *nmj = cJSON_AddArrayToObject(lo, "near_miss_tokens");
        cJSON *fb = cJSON_AddArrayToObject(lo, "rtn_fallback");
        for (int e = 0; e < L->n_experts; e++) {
            cJSON_AddItemToArray(b, cJSON_CreateNumber(L->bits[e]));
            cJSON_AddItemToArray(t, cJSON_CreateNumber((double)L->tokens[e]));
            cJSON_AddItemToArray(x, cJSON_CreateNumber((double)L->extra[e]));
            cJSON_AddItemToArray(nmj, cJSON_CreateNumber((double)L->near_miss[e]));
            if (L->rtn_fallback[e])
                cJSON_AddItemToArray(fb, cJSON_CreateNumber(e));
        }
        if (L->eps) {
            cJSON *ea = cJSON_AddArrayToObject(lo, "eps");
            for (int e = 0; e < L->n_experts; e++)
                cJSON_AddItemToArray(ea, num_array_d(L->eps + (size_t)e * r->n_choices, r->n_choices));
        }
        if (L->smooth_alpha >= 0)
            cJSON_AddNumberToObject(lo, "smooth_alpha", L->smooth_alpha);
        else
            cJSON_AddNullToObject(lo, "smooth_alpha");
        cJSON_AddBoolToObject(lo, "clip", L->clip);
        if (isfinite(L->align_err[0])) {
            cJSON *al = cJSON_AddObjectToObject(lo, "align");
            cJSON_AddItemToObject(al, "block_err", num_array_d(L->align_err, 2));
            cJSON_AddItemToObject(al, "router_kl", num_array_d(L->align_kl, 2));
            cJSON_AddItemToObject(al, "router_topk_agree", num_array_d(L->align_agree, 2));
        }
        add_num(lo, "block_err", L->block_err);
        add_num(lo, "router_topk_agree", L->router_agree);
        cJSON_AddNumberToObject(lo, "gptq_retries", L->gptq_retries);
    }
    add_num(o, "avg_expert_bits", rep->avg_expert_bits);
    cJSON_AddNumberToObject(o, "quant_params", (double)rep->quant_params);
    cJSON_AddNumberToObject(o, "quant_bytes", (double)rep->quant_bytes);
    add_num(o, "bpw_quantized", rep->quant_bpw);
    add_num(o, "code_bits_quantized", rep->quant_code_bits);
    cJSON_AddNumberToObject(o, "params", (double)rep->model_params);
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)rep->model_bytes);
    add_num(o, "bpw_tensors", rep->model_params ? 8.0 * (double)rep->model_bytes / (double)rep->model_params : NAN);
    cJSON_AddNumberToObject(o, "calib_tokens", (double)rep->calib_tokens);
    cJSON_AddNumberToObject(o, "passes", rep->passes);
    cJSON_AddNumberToObject(o, "rtn_fallbacks", rep->rtn_fallbacks);
    cJSON *v = cJSON_AddObjectToObject(o, "verify");
    cJSON_AddNumberToObject(v, "tokens", (double)rep->verify_tokens);
    add_num(v, "kld", rep->verify_kld);
    add_num(v, "top1", rep->verify_top1);
    cJSON_AddNumberToObject(o, "seconds", rep->seconds);
    cJSON *nt = cJSON_AddArrayToObject(o, "notes");
    for (int i = 0; i < rep->n_notes; i++)
        cJSON_AddItemToArray(nt, cJSON_CreateString(rep->notes[i]));
    return o;
}

/* ---- tensors ---- */

/* A float copy of a 2-D compute tensor (malloc'd). */
static moec_status to_float(const moec_tensor *t, const char *what, float **out, moec_err *err)
{
    *out = NULL;
    if (!moec_tensor_present(t) || t->ndim != 2 || !moec_dtype_is_compute(t->dtype) || t->q)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: %s is %s; expected a full-precision matrix", what,
                            moec_tensor_present(t) && t->dtype == MOEC_DT_QUANT ? "already quantized"
                                                                               : "missing or not a matrix");
    const size_t n = (size_t)moec_tensor_numel(t);
    float *f = malloc(n * sizeof *f);
    if (!f)
        return moec_err_set(err, MOEC_ERR_NOMEM, "quantize: out of memory for %s", what);
    moec_to_f32(f, t->data, t->dtype, n);
    *out = f;
    return MOEC_OK;
}

/* Stores q as the output's tensor *ot and makes the working model's *wt a
 * view of it: the passes that follow run the packed groups through the
 * executor's quantized kernels, so no quantized weight is held twice or
 * widened to float. Any float copy *wt held before (EAQuant's smoothed
 * w1/w3) stays in the working model's arena until it closes. */
static moec_status install(recipe_run *R, moec_tensor *wt, moec_tensor *ot, const moec_qformat *q,
                           const char *name, moec_err *err)
{
    moec_status st = moec_model_set_quant(R->out, ot, q, name, err);
    if (!st)
        *wt = *ot;
    return st;
}

/* One matrix to quantize: RTN, or GPTQ with a prepared inverse Hessian. */
typedef struct mjob {
    const float *W;
    int64_t rows, cols;
    int bits;
    int clip_grid;
    int group;
    const moec_gptq_hinv *hinv;
    moec_gblock gtype; /* llama.cpp block type from the recipe's plan, or none (group-wise) */
    char name[96];
    moec_qmatrix q;
    moec_status st;
    moec_err err;
} mjob;

typedef struct mjobs {
    const moec_quant_recipe *r;
    mjob *j;
} mjobs;

static void mjob_task(void *vc, int i, int t)
{
    (void)t;
    mjobs *J = vc;
    mjob *j = &J->j[i];
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = j->bits;
    o.q.group = j->group;
    o.q.symmetric = J->r->symmetric;
    o.q.clip_grid = j->clip_grid;
    o.percdamp = J->r->percdamp;
    o.act_order = J->r->act_order;
    if (j->gtype) {
        j->st = moec_gptq_quantize_blocks(j->W, j->rows, j->cols, j->hinv, j->gtype, &o, j->name, &j->q, NULL, &j->err);
        return;
    }
    j->st = j->hinv ? moec_gptq_quantize_with(j->W, j->rows, j->cols, j->hinv, &o, j->name, &j->q, NULL, &j->err)
                    : moec_rtn_quantize(j->W, j->rows, j->cols, &o.q, j->name, &j->q, &j->err);
}

static moec_status run_mjobs(recipe_run *R, mjob *j, int n, moec_err *err)
{
    mjobs J = {R->r, j};
    qr_parallel_for(R->pool, n, mjob_task, &J);
    for (int i = 0; i < n; i++)
        if (j[i].st) {
            *err = j[i].err;
            return j[i].st;
        }
    return MOEC_OK;
}

static void mjobs_free(mjob *j, int n)
{
    for (int i = 0; j && i < n; i++)
        moec_qmatrix_free(&j[i].q);
    free(j);
}

static mjob mjob_make(const float *W, int64_t rows, int64_t cols, int bits, int group, int clip_grid,
                      const moec_gptq_hinv *hinv, const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static mjob mjob_make(const float *W, int64_t rows, int64_t cols, int bits, int group, int clip_grid,
                      const moec_gptq_hinv *hinv, const char *fmt, ...)
{
    mjob j = {.W = W, .rows = rows, .cols = cols, .bits = bits, .group = group, .clip_grid = clip_grid,
              .hinv = hinv};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j.name, sizeof j.name, fmt, ap);
    va_end(ap);
    return j;
}

/* The plan's block type for a layer's tensor (none without a plan). */
static moec_gblock gtype_of(const recipe_run *R, int layer, moec_gslot slot)
{
    return moec_gplan_type(R->r->gplan, layer, slot);
}

/* One inverse-Hessian factor to build. */
typedef struct hjob {
    const double *H;
    int64_t cols, n;
    moec_gptq_hinv *hinv;
    moec_gptq_report rep;
    moec_status st;
    moec_err err;
    char name[96];
} hjob;

typedef struct hjobs {
    const moec_quant_recipe *r;
    hjob *j;
} hjobs;

static void hjob_task(void *vc, int i, int t)
{
    (void)t;
    hjobs *J = vc;
    hjob *j = &J->j[i];
    if (!j->H)
        return;
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.percdamp = J->r->percdamp;
    o.act_order = J->r->act_order;
    j->st = moec_gptq_hinv_new(j->H, j->cols, j->n, &o, j->name, &j->hinv, &j->rep, &j->err);
}

/* Builds the factors of every job with H set; a job whose factorisation
 * fails keeps hinv NULL (RTN) and gets a note. Returns damping retries. */
static int run_hjobs(recipe_run *R, hjob *j, int n)
{
    hjobs J = {R->r, j};
    qr_parallel_for(R->pool, n, hjob_task, &J);
    int retries = 0;
    for (int i = 0; i < n; i++) {
        if (j[i].st) {
            note(R, "%s: GPTQ impossible (%s); quantized by RTN", j[i].name, j[i].err.msg);
            j[i].hinv = NULL;
        } else if (j[i].H) {
            retries += j[i].rep.retries;
        }
    }
    return retries;
}

static void hjobs_free(hjob *j, int n)
{
    for (int i = 0; j && i < n; i++)
        moec_gptq_hinv_free(j[i].hinv);
    free(j);
}

/* H[i][j] /= s_i s_j on the upper triangle: the Hessian of inputs x/s. */
static void scale_hessian(double *H, int64_t d, const float *s)
{
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i; j < d; j++)
            H[(size_t)i * d + j] /= (double)s[i] * s[j];
}

/* ---- embeddings, attention, dense layers ---- */

/* With a plan, GPTQ and calibration windows, an untied head is quantized
 * last by GPTQ on the final hidden states (quant_head.c), not by RTN. */
static bool head_by_gptq(const recipe_run *R)
{
    const moec_config *c = &R->src->cfg;
    return R->r->gplan && R->r->gplan->head && R->r->method == MOEC_QMETHOD_GPTQ && R->have_windows &&
           !c->tie_embeddings && moec_config_layer_is_moe(c, c->n_layers - 1);
}

/* lm_head by GPTQ on its plan type, from the head's input Hessian over the
 * calibration windows run through the fully quantized working model. */
static moec_status quant_head(recipe_run *R, moec_err *err)
{
    const int64_t V = R->src->cfg.vocab_size, d = R->src->cfg.hidden_size;
    float *Wf = NULL;
    double *H = calloc((size_t)(d * d), sizeof *H);
    hjob hj = {0};
    mjob mj = {0};
    moec_status st = H ? to_float(&R->src->lm_head, "lm_head", &Wf, err)
                       : moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the head Hessian");
    if (st)
        goto done;
    progress(R, "head pass", -1);
    if ((st = qr_collect_head(&R->w, R->work, H, &hj.n, err)))
        goto done;
    R->rep->passes++;
    hj.H = H;
    hj.cols = d;
    snprintf(hj.name, sizeof hj.name, "lm_head");
    run_hjobs(R, &hj, 1);
    mj = mjob_make(Wf, V, d, R->r->bits, R->r->group, 0, hj.hinv, "lm_head");
    mj.gtype = R->r->gplan->head;
    if (!(st = run_mjobs(R, &mj, 1, err)))
        st = install(R, &R->work->lm_head, &R->out->lm_head, &mj.q.f, mj.name, err);
done:
    moec_qmatrix_free(&mj.q);
    moec_gptq_hinv_free(hj.hinv);
    free(Wf);
    free(H);
    return st;
}

static moec_status quant_embeddings(recipe_run *R, moec_err *err)
{
    const moec_model *src = R->src;
    const int64_t V = src->cfg.vocab_size, d = src->cfg.hidden_size;
    const bool tied = src->cfg.tie_embeddings;
    mjob j[2];
    int n = 0;
    float *E = NULL, *H = NULL;
    /* with a plan, either may stay in full precision (type none) */
    const moec_gplan *P = R->r->gplan;
    const bool do_e = !P || P->embed, do_h = !tied && (!P || P->head) && !head_by_gptq(R);
    moec_status st = do_e ? to_float(&src->embed, "embed_tokens", &E, err) : MOEC_OK;
    if (!st && do_e) {
        j[n] = mjob_make(E, V, d, R->r->embed_bits, R->r->embed_group, R->r->clip_grid, NULL, "model.embed_tokens");
        j[n++].gtype = P ? P->embed : MOEC_GB_NONE;
    }
    if (!st && do_h && (st = to_float(&src->lm_head, "lm_head", &H, err)) == MOEC_OK) {
        j[n] = mjob_make(H, V, d, R->r->embed_bits, R->r->embed_group, R->r->clip_grid, NULL, "lm_head");
        j[n++].gtype = P ? P->head : MOEC_GB_NONE;
    }
    if (!st)
        st = run_mjobs(R, j, n, err);
    if (!st && do_e)
        st = install(R, &R->work->embed, &R->out->embed, &j[0].q.f, j[0].name, err);
    if (!st && tied) {
        R->work->lm_head = R->work->embed;
        R->out->lm_head = R->out->embed;
    } else if (!st && do_h) {
        st = install(R, &R->work->lm_head, &R->out->lm_head, &j[n - 1].q.f, j[n - 1].name, err);
    }
    for (int i = 0; i < n; i++)
        moec_qmatrix_free(&j[i].q);
    free(E), free(H);
    return st;
}

static moec_status quant_attention(recipe_run *R, int l, moec_err *err)
{
    const moec_layer *S = &R->src->layers[l];
    moec_layer *W = &R->work->layers[l], *O = &R->out->layers[l];
    const moec_quant_recipe *r = R->r;
    const int64_t d = R->src->cfg.hidden_size, qdim = (int64_t)R->src->cfg.n_heads * R->src->cfg.head_dim;
    const int bits = r->attn_bits ? r->attn_bits : r->bits;
    const moec_tensor *st_src[4] = {&S->wq, &S->wk, &S->wv, &S->wo};
    moec_tensor *st_w[4] = {&W->wq, &W->wk, &W->wv, &W->wo}, *st_o[4] = {&O->wq, &O->wk, &O->wv, &O->wo};
    static const char *const names[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    float *F[4] = {0};
    double *Hx = NULL, *Ha = NULL;
    hjob *hj = NULL;
    mjob mj[4];
    int nm = 0;
    moec_status st = MOEC_OK;
    char what[64];
    for (int i = 0; i < 4 && !st; i++) {
        snprintf(what, sizeof what, "layer %d %s", l, names[i]);
        st = to_float(st_src[i], what, &F[i], err);
    }
    if (st)
        goto done;
    if (r->method == MOEC_QMETHOD_GPTQ) {
        Hx = calloc((size_t)(d * d), sizeof *Hx);
        Ha = calloc((size_t)(qdim * qdim), sizeof *Ha);
        hj = calloc(2, sizeof *hj);
        if (!Hx || !Ha || !hj) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for attention Hessians");
            goto done;
        }
        int64_t n = 0;
        progress(R, "attention pass", l);
        if ((st = qr_collect_attn(&R->w, R->work, R->pool, l, Hx, Ha, &n, err)))
            goto done;
        R->rep->passes++;
        hj[0] = (hjob){.H = Hx, .cols = d, .n = n};
        hj[1] = (hjob){.H = Ha, .cols = qdim, .n = n};
        snprintf(hj[0].name, sizeof hj[0].name, "layer %d q/k/v", l);
        snprintf(hj[1].name, sizeof hj[1].name, "layer %d o_proj", l);
        R->rep->layers[l].gptq_retries += run_hjobs(R, hj, 2);
    }
    for (int i = 0; i < 4; i++) {
        mj[nm] = mjob_make(F[i], moec_tensor_rows(st_src[i]), moec_tensor_cols(st_src[i]), bits, r->group,
                           r->clip_grid, hj ? hj[i < 3 ? 0 : 1].hinv : NULL, "model.layers.%d.self_attn.%s", l,
                           names[i]);
        mj[nm++].gtype = gtype_of(R, l, (moec_gslot)(MOEC_GS_Q + i));
    }
    /* a plan may keep some of them in full precision: those are not quantized */
    for (int i = 0; i < nm; i++)
        if (r->gplan && !mj[i].gtype) {
            mj[i] = mj[--nm];
            i--;
        }
    if ((st = run_mjobs(R, mj, nm, err)))
        goto done;
    for (int i = 0; i < nm && !st; i++) {
        int k = 0;
        while (k < 3 && strcmp(strrchr(mj[i].name, '.') + 1, names[k]) != 0)
            k++;
        st = install(R, st_w[k], st_o[k], &mj[i].q.f, mj[i].name, err);
    }
done:
    for (int i = 0; i < nm; i++)
        moec_qmatrix_free(&mj[i].q);
    hjobs_free(hj, hj ? 2 : 0);
    for (int i = 0; i < 4; i++)
        free(F[i]);
    free(Hx), free(Ha);
    return st;
}

static moec_status quant_dense(recipe_run *R, int l, moec_err *err)
{
    const moec_ffn *S = &R->src->layers[l].dense;
    moec_ffn *W = &R->work->layers[l].dense, *O = &R->out->layers[l].dense;
    const moec_tensor *s3[3] = {&S->w1, &S->w3, &S->w2};
    moec_tensor *w3[3] = {&W->w1, &W->w3, &W->w2}, *o3[3] = {&O->w1, &O->w3, &O->w2};
    static const char *const names[3] = {"gate_proj", "up_proj", "down_proj"};
    float *F[3] = {0};
    mjob mj[3];
    int nm = 0;
    moec_status st = MOEC_OK;
    char what[64];
    for (int i = 0; i < 3 && !st; i++) {
        snprintf(what, sizeof what, "layer %d dense %s", l, names[i]);
        if ((st = to_float(s3[i], what, &F[i], err)) == MOEC_OK) {
            mj[nm] = mjob_make(F[i], moec_tensor_rows(s3[i]), moec_tensor_cols(s3[i]), R->r->bits, R->r->group,
                               R->r->clip_grid, NULL, "model.layers.%d.mlp.%s", l, names[i]);
            mj[nm++].gtype = gtype_of(R, l, i == 0 ? MOEC_GS_GATE : i == 1 ? MOEC_GS_UP : MOEC_GS_DOWN);
        }
    }
    if (!st)
        st = run_mjobs(R, mj, nm, err);
    for (int i = 0; i < 3 && !st; i++)
        st = install(R, w3[i], o3[i], &mj[i].q.f, mj[i].name, err);
    for (int i = 0; i < nm; i++)
        moec_qmatrix_free(&mj[i].q);
    for (int i = 0; i < 3; i++)
        free(F[i]);
    if (!st && R->r->method == MOEC_QMETHOD_GPTQ)
        note(R, "layer %d: dense MLP quantized by RTN (no calibration hook on dense blocks)", l);
    return st;
}

/* ---- one MoE layer ---- */

typedef struct moe_layer {
    int l, E, d, k, nb;      /* nb candidate widths */
    int64_t f, fs;
    int widths[MOEC_QUANT_MAX_CHOICES];
    float **w1, **w3, **w2;  /* [E] float weights (w1/w3 smoothed once smoothing is applied) */
    float *sh1, *sh3, *sh2;  /* shared expert */
    double **H1, **H2;       /* [E] */
    double *Hs1, *Hs2;
    int64_t *n_h;
    int64_t *routed;
    double *gate_sum;
    moec_eaq_balance *bal;
    float *absmax;
    qr_moe_collect c;
    float *s;                /* smoothing factors, NULL = none */
    int clip_w13;            /* clip grid of w1/w3 */
    hjob *h1j;               /* [E + 1]: experts, then the shared expert */
    qr_cand *cand;           /* [E][nb] */
    int *bits;               /* [E] */
} moe_layer;

static void moe_layer_free(moe_layer *M)
{
    for (int e = 0; e < M->E; e++) {
        if (M->w1)
            free(M->w1[e]);
        if (M->w3)
            free(M->w3[e]);
        if (M->w2)
            free(M->w2[e]);
        if (M->H1)
            free(M->H1[e]);
        if (M->H2)
            free(M->H2[e]);
        for (int b = 0; M->cand && b < M->nb; b++)
            for (int i = 0; i < 3; i++)
                moec_qmatrix_free(&M->cand[(size_t)e * M->nb + b].w[i]);
    }
    free(M->w1), free(M->w3), free(M->w2), free(M->H1), free(M->H2);
    free(M->sh1), free(M->sh3), free(M->sh2), free(M->Hs1), free(M->Hs2);
    free(M->n_h), free(M->routed), free(M->gate_sum), free(M->absmax);
    free(M->c.sx), free(M->c.sprobs), free(M->c.ssel), free(M->c.sgates), free(M->c.sshared);
    moec_eaq_balance_free(M->bal);
    hjobs_free(M->h1j, M->E + 1);
    free(M->cand);
    free(M->bits);
}

static double *zeros_d(int64_t n) { return calloc((size_t)n, sizeof(double)); }

/* The first pass of the layer and what it feeds: Hessians of w1/w3 (and,
 * for MC-MoE's candidates, of w2 from full-precision intermediates), the
 * routing counts, the balance, EAQuant's maxima and sample. */
static moec_status moe_first_pass(recipe_run *R, moe_layer *M, bool want_h2fp, moec_err *err)
{
    const moec_quant_recipe *r = R->r;
    const bool gptq = r->method == MOEC_QMETHOD_GPTQ;
    const int E = M->E, d = M->d;
    qr_moe_collect *c = &M->c;
    memset(c, 0, sizeof *c);
    c->layer = M->l;
    c->E = E;
    c->d = d;
    c->k = M->k;
    c->f = M->f;
    c->fs = M->fs;
    c->act_bits = r->act_bits;
    c->pool = R->pool;
    c->routed = M->routed;
    c->gate_sum = M->gate_sum;
    if (gptq) {
        c->H1 = M->H1;
        c->n_h = M->n_h;
        for (int e = 0; e < E; e++)
            if (!(M->H1[e] = zeros_d((int64_t)d * d)))
                return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for expert Hessians");
        if (want_h2fp) {
            c->H2 = M->H2;
            for (int e = 0; e < E; e++)
                if (!(M->H2[e] = zeros_d(M->f * M->f)))
                    return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for expert Hessians");
        }
        if (M->fs > 0) {
            if (!(M->Hs1 = zeros_d((int64_t)d * d)))
                return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for shared-expert Hessians");
            c->Hs1 = M->Hs1;
        }
        if (r->balance) {
            const int Mmin = r->balance_min ? r->balance_min : d;
            R->rep->balance_min = Mmin;
            moec_status st = moec_eaq_balance_new(&M->bal, E, d, Mmin, err);
            if (st)
                return st;
            c->bal = M->bal;
        }
    }
    if (r->smooth) {
        if (!(M->absmax = calloc((size_t)d, sizeof *M->absmax)))
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        c->absmax = M->absmax;
        if (r->align) {
            c->cap = r->align_sample;
            c->stride = R->w.tokens / c->cap > 1 ? R->w.tokens / c->cap : 1;
            c->sx = malloc((size_t)c->cap * d * sizeof *c->sx);
            c->sprobs = malloc((size_t)c->cap * E * sizeof *c->sprobs);
            c->ssel = malloc((size_t)c->cap * M->k * sizeof *c->ssel);
            c->sgates = malloc((size_t)c->cap * M->k * sizeof *c->sgates);
            c->sshared = malloc((size_t)c->cap * sizeof *c->sshared);
            if (!c->sx || !c->sprobs || !c->ssel || !c->sgates || !c->sshared)
                return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the token sample");
        }
    }
    progress(R, "expert pass", M->l);
    moec_status st = qr_collect_moe(&R->w, R->work, c, err);
    if (st)
        return st;
    R->rep->passes++;
    moec_quant_layer_report *LR = &R->rep->layers[M->l];
    for (int e = 0; e < E; e++) {
        LR->tokens[e] = M->routed[e];
        if (M->bal)
            LR->near_miss[e] = moec_eaq_balance_near_miss(M->bal, e);
    }
    if (M->bal && (st = qr_moe_add_extras(c, M->bal, NULL, LR->extra, err)))
        return st;
    return MOEC_OK;
}

/* EAQuant smoothing of the layer: factors by the alignment search or by a
 * fixed α, folded into the working model (and the output's norm, router and
 * gate), the w1/w3 float copies and the w1/w3 Hessians. */
static moec_status moe_smooth(recipe_run *R, moe_layer *M, moec_err *err)
{
    const moec_quant_recipe *r = R->r;
    const int E = M->E, d = M->d, l = M->l;
    moec_quant_layer_report *LR = &R->rep->layers[l];
    moec_status st = MOEC_OK;
    if (!(M->s = malloc((size_t)d * sizeof *M->s)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if (r->align) {
        const qr_moe_collect *c = &M->c;
        const int nf = E + (M->fs > 0 ? 1 : 0), k = M->k, n = c->n_sample;
        moec_eaq_ffn *ff = calloc((size_t)nf, sizeof *ff);
        int32_t *tok = malloc((size_t)(n * k + n + 1) * sizeof *tok);
        float *wt = malloc((size_t)(n * k + n + 1) * sizeof *wt);
        float *router = NULL;
        if (!ff || !tok || !wt) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the alignment search");
            goto search_done;
        }
        char what[64];
        snprintf(what, sizeof what, "layer %d router", l);
        if ((st = to_float(&R->src->layers[l].router, what, &router, err)))
            goto search_done;
        /* sample rows grouped by block: routed experts by selection, then the shared expert on every token */
        int used = 0;
        for (int e = 0; e < E; e++) {
            ff[e] = (moec_eaq_ffn){.w1 = M->w1[e], .w3 = M->w3[e], .w2 = M->w2[e], .f = M->f,
                                   .H = M->H1 ? M->H1[e] : NULL, .n_h = M->n_h ? M->n_h[e] : 0,
                                   .bits = M->widths[M->nb > 1 ? M->nb / 2 : 0], .row_tok = tok + used,
                                   .row_w = wt + used};
            for (int t = 0; t < n; t++)
                for (int j = 0; j < k; j++)
                    if (c->ssel[(size_t)t * k + j] == e) {
                        tok[used] = t;
                        wt[used++] = c->sgates[(size_t)t * k + j];
                        ff[e].n_rows++;
                    }
        }
        if (M->fs > 0) {
            ff[E] = (moec_eaq_ffn){.w1 = M->sh1, .w3 = M->sh3, .w2 = M->sh2, .f = M->fs, .H = M->Hs1,
                                   .n_h = M->c.n_s, .bits = r->bits, .n_rows = n, .row_tok = tok + used,
                                   .row_w = wt + used};
            for (int t = 0; t < n; t++) {
                tok[used] = t;
                wt[used++] = c->sshared[t];
            }
        }
        /* the search's width: the recipe's, or (mixed precision) the smallest choice >= the average */
        int sb = r->bits;
        if (r->avg_bits > 0)
            for (int q = r->n_choices - 1; q >= 0; q--)
                if (r->choices[q] >= r->avg_bits - 1e-9)
                    sb = r->choices[q];
        for (int e = 0; e < E; e++)
            ff[e].bits = sb;
        moec_eaq_search p = {.d = d, .n_experts = E, .top_k = k, .n_ffn = nf, .ffn = ff, .router = router,
                             .n_tok = n, .x = c->sx, .probs = c->sprobs, .x_absmax = M->absmax,
                             .gptq_min_tokens = r->gptq_min_tokens, .act_bits = r->act_bits,
                             .lambda = r->align_lambda, .n_alpha = (int)(sizeof align_alphas / sizeof *align_alphas),
                             .alphas = align_alphas, .try_clip = r->clip_grid == 0};
        p.gptq = MOEC_GPTQ_OPTS_DEFAULT;
        p.gptq.q.group = r->group;
        p.gptq.q.symmetric = r->symmetric;
        p.gptq.percdamp = r->percdamp;
        p.gptq.act_order = r->act_order;
        if (r->method != MOEC_QMETHOD_GPTQ)
            for (int i = 0; i < nf; i++)
                ff[i].H = NULL;
        moec_eaq_choice ch = {.alpha = -1.0f};
        progress(R, "alignment search", l);
        if ((st = moec_eaq_search_run(&p, R->pool, M->s, &ch, err))) {
            moec_err_prefix(err, "layer %d", l);
            goto search_done;
        }
        LR->smooth_alpha = ch.alpha;
        LR->clip = ch.clip || r->clip_grid > 0;
        M->clip_w13 = ch.clip ? CLIP_GRID_SEARCH : r->clip_grid;
        for (int i = 0; i < 2; i++) {
            LR->align_err[i] = ch.err[i];
            LR->align_kl[i] = ch.kl[i];
            LR->align_agree[i] = ch.agree[i];
        }
    search_done:
        free(ff), free(tok), free(wt), free(router);
        if (st)
            return st;
        if (ch.alpha < 0) {
            free(M->s);
            M->s = NULL;
            return MOEC_OK;
        }
    } else {
        if ((st = moec_eaq_smooth_vector(R->work, l, M->absmax, r->smooth_alpha, M->s, err)))
            return st;
        LR->smooth_alpha = r->smooth_alpha;
    }
    R->smooth[l] = M->s;
    if ((st = moec_eaq_smooth_apply(R->work, l, M->s, err)))
        return st;
    /* the output keeps the smoothed norm, router and gate as F32 copies of the working model's */
    moec_layer *WL = &R->work->layers[l], *OL = &R->out->layers[l];
    const moec_tensor *from[3] = {&WL->ffn_norm, &WL->router, &WL->shared_gate};
    moec_tensor *to[3] = {&OL->ffn_norm, &OL->router, &OL->shared_gate};
    for (int i = 0; i < 3; i++) {
        if (!moec_tensor_present(from[i]))
            continue;
        moec_tensor nt;
        if ((st = moec_model_new_tensor(R->out, &nt, MOEC_DT_F32, from[i]->ndim == 1 ? from[i]->shape[0]
                                                                               : from[i]->shape[0],
                                        from[i]->ndim == 1 ? 0 : from[i]->shape[1], err)))
            return st;
        memcpy((void *)nt.data, from[i]->data, nt.nbytes);
        *to[i] = nt;
    }
    for (int e = 0; e < E; e++) {
        for (int64_t q = 0; q < M->f * d; q++) {
            M->w1[e][q] *= M->s[q % d];
            M->w3[e][q] *= M->s[q % d];
        }
        if (M->H1 && M->H1[e])
            scale_hessian(M->H1[e], d, M->s);
    }
    if (M->fs > 0) {
        for (int64_t q = 0; q < M->fs * d; q++) {
            M->sh1[q] *= M->s[q % d];
            M->sh3[q] *= M->s[q % d];
        }
        if (M->Hs1)
            scale_hessian(M->Hs1, d, M->s);
    }
    return MOEC_OK;
}

/* GPTQ factors of the w1/w3 Hessians (experts, then the shared expert);
 * experts with too few rows get none (RTN, reported). */
static moec_status moe_w13_factors(recipe_run *R, moe_layer *M, moec_err *err)
{
    const int E = M->E;
    moec_quant_layer_report *LR = &R->rep->layers[M->l];
    if (!(M->h1j = calloc((size_t)E + 1, sizeof *M->h1j)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if (R->r->method != MOEC_QMETHOD_GPTQ)
        return MOEC_OK;
    for (int e = 0; e < E; e++) {
        hjob *j = &M->h1j[e];
        snprintf(j->name, sizeof j->name, "layer %d expert %d w1/w3", M->l, e);
        if (M->n_h[e] < R->r->gptq_min_tokens) {
            LR->rtn_fallback[e] = true;
            note(R, "layer %d expert %d: %lld calibration rows (%lld routed + %lld balance) < %d: RTN instead of GPTQ",
                 M->l, e, (long long)M->n_h[e], (long long)LR->tokens[e], (long long)LR->extra[e],
                 R->r->gptq_min_tokens);
            continue;
        }
        *j = (hjob){.H = M->H1[e], .cols = M->d, .n = M->n_h[e]};
        snprintf(j->name, sizeof j->name, "layer %d expert %d w1/w3", M->l, e);
    }
    if (M->fs > 0 && M->c.n_s >= R->r->gptq_min_tokens) {
        M->h1j[E] = (hjob){.H = M->Hs1, .cols = M->d, .n = M->c.n_s};
        snprintf(M->h1j[E].name, sizeof M->h1j[E].name, "layer %d shared expert w1/w3", M->l);
    }
    LR->gptq_retries += run_hjobs(R, M->h1j, E + 1);
    for (int e = 0; e < E; e++)
        if (M->h1j[e].H && !M->h1j[e].hinv)
            LR->rtn_fallback[e] = true;
    return MOEC_OK;
}

static int width_index(const moe_layer *M, int b)
{
    for (int i = 0; i < M->nb; i++)
        if (M->widths[i] == b)
            return i;
    return -1;
}

/* w1/w3 of every expert at every candidate width (and, for MC-MoE, w2 from
 * the full-precision intermediate's Hessian). */
static moec_status moe_candidates(recipe_run *R, moe_layer *M, bool with_w2, moec_err *err)
{
    const int E = M->E, nb = M->nb;
    const int64_t d = M->d, f = M->f;
    const moec_quant_recipe *r = R->r;
    hjob *h2 = NULL;
    mjob *mj = NULL;
    int nm = 0;
    moec_status st = MOEC_OK;
    if (!(M->cand = calloc((size_t)E * nb, sizeof *M->cand)) ||
        !(mj = calloc((size_t)E * nb * 3, sizeof *mj))) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (with_w2 && r->method == MOEC_QMETHOD_GPTQ) {
        if (!(h2 = calloc((size_t)E, sizeof *h2))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int e = 0; e < E; e++)
            if (!R->rep->layers[M->l].rtn_fallback[e]) {
                h2[e] = (hjob){.H = M->H2[e], .cols = f, .n = M->n_h[e]};
                snprintf(h2[e].name, sizeof h2[e].name, "layer %d expert %d w2 (candidates)", M->l, e);
            }
        run_hjobs(R, h2, E);
    }
    for (int e = 0; e < E; e++)
        for (int b = 0; b < nb; b++) {
            const int bits = M->widths[b];
            const moec_gptq_hinv *h = M->h1j[e].hinv;
            mj[nm] = mjob_make(M->w1[e], f, d, bits, r->group, M->clip_w13, h, "layer %d expert %d w1 %d-bit", M->l,
                               e, bits);
            mj[nm++].gtype = gtype_of(R, M->l, MOEC_GS_GATE);
            mj[nm] = mjob_make(M->w3[e], f, d, bits, r->group, M->clip_w13, h, "layer %d expert %d w3 %d-bit", M->l,
                               e, bits);
            mj[nm++].gtype = gtype_of(R, M->l, MOEC_GS_UP);
            if (with_w2)
                mj[nm++] = mjob_make(M->w2[e], d, f, bits, r->group, r->clip_grid, h2 ? h2[e].hinv : NULL,
                                     "layer %d expert %d w2 %d-bit", M->l, e, bits);
        }
    if ((st = run_mjobs(R, mj, nm, err)))
        goto done;
    nm = 0;
    for (int e = 0; e < E; e++)
        for (int b = 0; b < nb; b++) {
            qr_cand *c = &M->cand[(size_t)e * nb + b];
            for (int i = 0; i < (with_w2 ? 3 : 2); i++) { /* ownership moves to the candidate */
                c->w[i] = mj[nm].q;
                memset(&mj[nm].q, 0, sizeof mj[nm].q);
                nm++;
            }
            c->have_w2 = with_w2;
        }
done:
    mjobs_free(mj, nm);
    hjobs_free(h2, h2 ? E : 0);
    return st;
}

/* Relative weight error of a candidate, the ε fallback without windows. */
static double weight_error(const float *W, const moec_qformat *q)
{
    float *row = malloc((size_t)q->cols * sizeof *row);
    if (!row)
        return NAN;
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < q->rows; r++) {
        moec_qformat_dequant_row(q, r, row);
        for (int64_t c = 0; c < q->cols; c++) {
            const double w = W[(size_t)r * q->cols + c], dl = w - row[c];
            num += dl * dl;
            den += w * w;
        }
    }
    free(row);
    return den > 0 ? num / den : num;
}

/* MC-MoE: the loss table and the program. */
static moec_status moe_mcmoe(recipe_run *R, moe_layer *M, moec_err *err)
{
    const int E = M->E, nb = M->nb;
    moec_quant_layer_report *LR = &R->rep->layers[M->l];
    double *eps = LR->eps;
    const double *count, *gsum = M->gate_sum;
    double *cnt = NULL;
    moec_status st;
    if (R->have_windows) {
        progress(R, "expert loss pass", M->l);
        if ((st = qr_measure_eps(&R->w, R->work, R->pool, M->l, M->cand, nb, eps, err)))
            return st;
        R->rep->passes++;
        if (!(cnt = malloc((size_t)E * sizeof *cnt)))
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        for (int e = 0; e < E; e++)
            cnt[e] = (double)M->routed[e];
        count = cnt;
    } else {
        for (int e = 0; e < E; e++)
            for (int b = 0; b < nb; b++) {
                const qr_cand *c = &M->cand[(size_t)e * nb + b];
                eps[(size_t)e * nb + b] = weight_error(M->w1[e], &c->w[0].f) + weight_error(M->w3[e], &c->w[1].f) +
                                          weight_error(M->w2[e], &c->w[2].f);
            }
        const moec_layer_stats *ls = &R->stats->layers[M->l];
        count = ls->count;
        gsum = ls->gate_sum;
    }
    st = moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &R->r->mc, E, count, gsum, eps, R->have_windows, M->widths, nb,
                               R->r->avg_bits, M->bits, err);
    free(cnt);
    if (st)
        return moec_err_prefix(err, "layer %d", M->l);
    return MOEC_OK;
}

/* Shared expert: w1/w3 at the recipe's width with their factor, then (after
 * the w2 pass) w2. */
static moec_status moe_layer_run(recipe_run *R, int l, moec_err *err)
{
    const moec_quant_recipe *r = R->r;
    const moec_layer *SL = &R->src->layers[l];
    moec_layer *WL = &R->work->layers[l], *OL = &R->out->layers[l];
    moec_quant_layer_report *LR = &R->rep->layers[l];
    const bool gptq = r->method == MOEC_QMETHOD_GPTQ, mixed = r->avg_bits > 0,
               mcmoe = mixed && r->alloc == MOEC_QALLOC_MCMOE;
    moe_layer M = {.l = l, .E = SL->n_experts, .d = R->src->cfg.hidden_size, .k = R->src->cfg.top_k,
                   .f = R->src->cfg.expert_ffn, .fs = R->src->cfg.shared_ffn, .clip_w13 = r->clip_grid};
    const int E = M.E, d = M.d;
    const int64_t f = M.f, fs = M.fs;
    moec_status st = MOEC_OK;
    mjob *mj = NULL;
    hjob *h2j = NULL;
    int nm = 0;
    char what[80];
    M.w1 = calloc((size_t)E, sizeof *M.w1);
    M.w3 = calloc((size_t)E, sizeof *M.w3);
    M.w2 = calloc((size_t)E, sizeof *M.w2);
    M.H1 = calloc((size_t)E, sizeof *M.H1);
    M.H2 = calloc((size_t)E, sizeof *M.H2);
    M.n_h = calloc((size_t)E, sizeof *M.n_h);
    M.routed = calloc((size_t)E, sizeof *M.routed);
    M.gate_sum = calloc((size_t)E, sizeof *M.gate_sum);
    M.bits = calloc((size_t)E, sizeof *M.bits);
    if (!M.w1 || !M.w3 || !M.w2 || !M.H1 || !M.H2 || !M.n_h || !M.routed || !M.gate_sum || !M.bits) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int e = 0; e < E && !st; e++) {
        snprintf(what, sizeof what, "layer %d expert %d w1", l, e);
        if (!(st = to_float(&SL->experts[e].w1, what, &M.w1[e], err))) {
            snprintf(what, sizeof what, "layer %d expert %d w3", l, e);
            if (!(st = to_float(&SL->experts[e].w3, what, &M.w3[e], err))) {
                snprintf(what, sizeof what, "layer %d expert %d w2", l, e);
                st = to_float(&SL->experts[e].w2, what, &M.w2[e], err);
            }
        }
    }
    if (!st && fs > 0) {
        snprintf(what, sizeof what, "layer %d shared expert", l);
        if (!(st = to_float(&SL->shared.w1, what, &M.sh1, err)) && !(st = to_float(&SL->shared.w3, what, &M.sh3, err)))
            st = to_float(&SL->shared.w2, what, &M.sh2, err);
    }
    if (st)
        goto done;

    /* candidate widths */
    if (!mixed) {
        M.nb = 1;
        M.widths[0] = r->bits;
        for (int e = 0; e < E; e++)
            M.bits[e] = r->bits;
    } else if (!mcmoe) {
        if ((st = moec_quant_alloc_bits(MOEC_QALLOC_UNIFORM, NULL, E, NULL, NULL, NULL, false, r->choices,
                                        r->n_choices, r->avg_bits, M.bits, err)))
            goto done;
        for (int e = 0; e < E; e++)
            if (width_index(&M, M.bits[e]) < 0)
                M.widths[M.nb++] = M.bits[e];
        for (int i = 1; i < M.nb; i++) /* ascending, for the report and the search width */
            for (int j = i; j > 0 && M.widths[j] < M.widths[j - 1]; j--) {
                int t = M.widths[j];
                M.widths[j] = M.widths[j - 1];
                M.widths[j - 1] = t;
            }
    } else {
        M.nb = r->n_choices;
        memcpy(M.widths, r->choices, (size_t)M.nb * sizeof *M.widths);
    }

    if (R->have_windows && (gptq || r->smooth || mcmoe)) {
        if ((st = moe_first_pass(R, &M, mcmoe && gptq, err)))
            goto done;
    } else if (!R->have_windows && R->stats) {
        for (int e = 0; e < E; e++)
            LR->tokens[e] = (int64_t)R->stats->layers[l].count[e];
    }
    if (r->smooth && (st = moe_smooth(R, &M, err)))
        goto done;
    if ((st = moe_w13_factors(R, &M, err)))
        goto done;
    progress(R, "quantizing experts", l);
    if ((st = moe_candidates(R, &M, mcmoe, err)))
        goto done;
    if (mcmoe && (st = moe_mcmoe(R, &M, err)))
        goto done;
    for (int e = 0; e < E; e++)
        LR->bits[e] = M.bits[e];

    /* chosen w1/w3 into the working model and the output */
    for (int e = 0; e < E && !st; e++) {
        const qr_cand *c = &M.cand[(size_t)e * M.nb + width_index(&M, M.bits[e])];
        char name[128];
        snprintf(name, sizeof name, "layer %d expert %d w1", l, e);
        if (!(st = install(R, &WL->experts[e].w1, &OL->experts[e].w1, &c->w[0].f, name, err))) {
            snprintf(name, sizeof name, "layer %d expert %d w3", l, e);
            st = install(R, &WL->experts[e].w3, &OL->experts[e].w3, &c->w[1].f, name, err);
        }
    }
    if (!st && fs > 0) {
        mjob sj[2] = {mjob_make(M.sh1, fs, d, r->bits, r->group, M.clip_w13, M.h1j[E].hinv,
                                "layer %d shared expert w1", l),
                      mjob_make(M.sh3, fs, d, r->bits, r->group, M.clip_w13, M.h1j[E].hinv,
                                "layer %d shared expert w3", l)};
        sj[0].gtype = gtype_of(R, l, MOEC_GS_SH_GATE);
        sj[1].gtype = gtype_of(R, l, MOEC_GS_SH_UP);
        if (!(st = run_mjobs(R, sj, 2, err)) &&
            !(st = install(R, &WL->shared.w1, &OL->shared.w1, &sj[0].q.f, sj[0].name, err)))
            st = install(R, &WL->shared.w3, &OL->shared.w3, &sj[1].q.f, sj[1].name, err);
        moec_qmatrix_free(&sj[0].q);
        moec_qmatrix_free(&sj[1].q);
    }
    if (st)
        goto done;

    /* w2: GPTQ from intermediates through the quantized w1/w3 (one more pass), else RTN */
    if (gptq) {
        qr_moe_collect *c = &M.c;
        c->H1 = NULL;
        c->Hs1 = NULL;
        c->H2 = M.H2;
        c->bal = NULL;
        c->absmax = NULL;
        c->routed = NULL;
        c->gate_sum = NULL;
        c->n_h = M.n_h;
        memset(M.n_h, 0, (size_t)E * sizeof *M.n_h);
        c->n_s = 0;
        c->cap = 0;
        for (int e = 0; e < E; e++) {
            free(M.H2[e]);
            if (!(M.H2[e] = zeros_d(f * f))) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for expert Hessians");
                goto done;
            }
        }
        if (fs > 0) {
            if (!(M.Hs2 = zeros_d(fs * fs))) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for shared-expert Hessians");
                goto done;
            }
            c->Hs2 = M.Hs2;
        }
        free(c->sx), free(c->sprobs), free(c->ssel), free(c->sgates), free(c->sshared);
        c->sx = c->sprobs = c->sgates = c->sshared = NULL;
        c->ssel = NULL;
        progress(R, "w2 pass", l);
        st = qr_collect_moe(&R->w, R->work, c, err);
        if (st)
            goto done;
        R->rep->passes++;
        if (M.bal && (st = qr_moe_add_extras(c, M.bal, M.s, NULL, err)))
            goto done;
        if (!(h2j = calloc((size_t)E + 1, sizeof *h2j))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int e = 0; e < E; e++)
            if (!LR->rtn_fallback[e]) {
                h2j[e] = (hjob){.H = M.H2[e], .cols = f, .n = M.n_h[e]};
                snprintf(h2j[e].name, sizeof h2j[e].name, "layer %d expert %d w2", l, e);
            }
        if (fs > 0 && c->n_s >= r->gptq_min_tokens) {
            h2j[E] = (hjob){.H = M.Hs2, .cols = fs, .n = c->n_s};
            snprintf(h2j[E].name, sizeof h2j[E].name, "layer %d shared expert w2", l);
        }
        LR->gptq_retries += run_hjobs(R, h2j, E + 1);
    }
    if (!(mj = calloc((size_t)E + 1, sizeof *mj))) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int e = 0; e < E; e++) {
        qr_cand *c = &M.cand[(size_t)e * M.nb + width_index(&M, M.bits[e])];
        if (!gptq && c->have_w2) { /* RTN's w2 candidate is already the answer */
            mj[nm] = mjob_make(M.w2[e], d, f, M.bits[e], r->group, r->clip_grid, NULL, "layer %d expert %d w2", l, e);
            mj[nm].q = c->w[2];
            memset(&c->w[2], 0, sizeof c->w[2]);
            c->have_w2 = false;
            mj[nm++].st = MOEC_OK;
            continue;
        }
        mj[nm] = mjob_make(M.w2[e], d, f, M.bits[e], r->group, r->clip_grid, h2j ? h2j[e].hinv : NULL,
                           "layer %d expert %d w2", l, e);
        mj[nm++].gtype = gtype_of(R, l, MOEC_GS_DOWN);
    }
    if (fs > 0) {
        mj[nm] = mjob_make(M.sh2, d, fs, r->bits, r->group, r->clip_grid, h2j ? h2j[E].hinv : NULL,
                           "layer %d shared expert w2", l);
        mj[nm++].gtype = gtype_of(R, l, MOEC_GS_SH_DOWN);
    }
    {
        /* only the jobs that still have to run go to the pool */
        mjob *todo = calloc((size_t)nm, sizeof *todo);
        int *idx = calloc((size_t)nm, sizeof *idx);
        int nt = 0;
        if (!todo || !idx) {
            free(todo), free(idx);
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < nm; i++)
            if (!mj[i].q.codes) {
                idx[nt] = i;
                todo[nt++] = mj[i];
            }
        st = run_mjobs(R, todo, nt, err);
        for (int i = 0; i < nt; i++)
            mj[idx[i]].q = todo[i].q;
        free(todo), free(idx);
        if (st)
            goto done;
    }
    for (int e = 0; e < E && !st; e++)
        st = install(R, &WL->experts[e].w2, &OL->experts[e].w2, &mj[e].q.f, mj[e].name, err);
    if (!st && fs > 0)
        st = install(R, &WL->shared.w2, &OL->shared.w2, &mj[E].q.f, mj[E].name, err);
    for (int e = 0; e < E; e++)
        if (LR->rtn_fallback[e])
            R->rep->rtn_fallbacks++;
done:
    mjobs_free(mj, nm);
    hjobs_free(h2j, h2j ? E + 1 : 0);
    if (M.s && R->smooth[l] != M.s)
        free(M.s);
    moe_layer_free(&M);
    return st;
}

/* ---- totals ---- */

typedef struct totals {
    int64_t qparams, params;
    uint64_t qbytes, bytes;
    double code_bits;
} totals;

static moec_status count_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    totals *t = ctx;
    if (!moec_tensor_present(s->t))
        return MOEC_OK;
    const int64_t n = moec_tensor_numel(s->t);
    t->params += n;
    if (s->t->dtype == MOEC_DT_QUANT && s->t->q) {
        const moec_qformat *q = s->t->q;
        const uint64_t b = q->codes_bytes + q->scales_bytes + q->zeros_bytes;
        t->qparams += n;
        t->qbytes += b;
        t->bytes += b;
        t->code_bits += (double)q->bits * (double)n;
    } else {
        t->bytes += s->t->nbytes;
    }
    return MOEC_OK;
}

static void fill_totals(recipe_run *R)
{
    moec_quant_report *rep = R->rep;
    totals t = {0};
    moec_model_for_each_slot(R->out, count_slot, &t, NULL);
    rep->quant_params = t.qparams;
    rep->quant_bytes = t.qbytes;
    rep->quant_bpw = t.qparams ? 8.0 * (double)t.qbytes / (double)t.qparams : NAN;
    rep->quant_code_bits = t.qparams ? t.code_bits / (double)t.qparams : NAN;
    rep->model_params = t.params;
    rep->model_bytes = t.bytes;
    double sum = 0.0;
    int64_t n = 0;
    for (int l = 0; l < rep->n_layers; l++)
        for (int e = 0; e < rep->layers[l].n_experts; e++) {
            sum += rep->layers[l].bits[e];
            n++;
        }
    rep->avg_expert_bits = n ? sum / (double)n : NAN;
}

/* ---- entry point ---- */

static moec_status setup_windows(recipe_run *R, const moec_quant_calib *cal, moec_err *err)
{
    qr_windows *w = &R->w;
    memset(w, 0, sizeof *w);
    w->threads = R->r->threads;
    w->act_bits = R->r->act_bits;
    if (!cal || !cal->ids || cal->n_windows <= 0)
        return MOEC_OK;
    if (!cal->window_len)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: calibration windows without lengths");
    w->start = malloc((size_t)cal->n_windows * sizeof *w->start);
    if (!w->start)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    size_t off = 0;
    for (int i = 0; i < cal->n_windows; i++) {
        const int n = cal->window_len[i];
        if (n < 1 || n > R->src->cfg.max_positions)
            return moec_err_set(err, MOEC_ERR_ARG, "quantize: calibration window %d has %d tokens (1..%d allowed)", i,
                                n, R->src->cfg.max_positions);
        w->start[i] = off;
        off += (size_t)n;
        if (n > w->max_len)
            w->max_len = n;
    }
    for (size_t q = 0; q < off; q++)
        if (cal->ids[q] < 0 || cal->ids[q] >= R->src->cfg.vocab_size)
            return moec_err_set(err, MOEC_ERR_ARG, "quantize: calibration token %d outside the vocabulary of %d",
                                cal->ids[q], R->src->cfg.vocab_size);
    w->ids = cal->ids;
    w->len = cal->window_len;
    w->n = cal->n_windows;
    w->tokens = (int64_t)off;
    R->have_windows = true;
    return MOEC_OK;
}

moec_status moec_quant_model(const moec_model *src, const moec_quant_calib *cal, const moec_quant_recipe *r,
                             moec_model **out, moec_quant_report *rep, moec_quant_progress progress_fn,
                             void *progress_ctx, moec_err *err)
{
    *out = NULL;
    memset(rep, 0, sizeof *rep);
    const double t0 = now_s();
    const bool windows = cal && cal->ids && cal->n_windows > 0;
    moec_status st = moec_quant_recipe_check(r, windows, err);
    if (st)
        return st;
    const bool mcmoe = r->avg_bits > 0 && r->alloc == MOEC_QALLOC_MCMOE;
    if (mcmoe && !windows) {
        if (!cal || !cal->stats)
            return moec_err_set(err, MOEC_ERR_ARG, "quantize: MC-MoE allocation needs calibration text or statistics");
        if ((st = moec_stats_check(cal->stats, src, err)))
            return st;
    }
    /* a plan must give every routed, shared and dense FFN matrix a type: the
     * recipe has no way to leave them in full precision */
    for (int l = 0; r->gplan && l < src->cfg.n_layers; l++)
        for (int sl = MOEC_GS_GATE; sl <= MOEC_GS_SH_DOWN; sl++)
            if (!moec_gplan_type(r->gplan, l, (moec_gslot)sl) && (sl <= MOEC_GS_DOWN || src->cfg.shared_ffn > 0))
                return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                    "quantize: layer %d: no llama.cpp block type fits the %s%s rows (their length "
                                    "is not a multiple of 32; llama-quantize would keep them F16)",
                                    l, sl >= MOEC_GS_SH_GATE ? "shared expert's " : "",
                                    sl % 3 == MOEC_GS_GATE % 3 ? "gate_proj" : sl % 3 == MOEC_GS_UP % 3 ? "up_proj"
                                                                                                       : "down_proj");
    recipe_run R = {.src = src, .r = r, .rep = rep, .progress = progress_fn, .pctx = progress_ctx,
                    .stats = cal ? cal->stats : NULL};
    if ((st = report_init(rep, src, r, err)))
        goto done;
    if ((st = setup_windows(&R, cal, err)))
        goto done;
    rep->calib_tokens = R.w.tokens;
    R.smooth = calloc((size_t)src->cfg.n_layers, sizeof *R.smooth);
    R.pool = moec_pool_new(r->threads);
    if (!R.smooth || !R.pool) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = moec_model_derive(&R.work, src, err)) || (st = moec_model_derive(&R.out, src, err)))
        goto done;
    /* NaN/Inf weights fail here naming the tensor, layer by layer below */
    if ((st = moec_model_check_finite_layer(src, -1, err)))
        goto done;
    if (r->gplan ? r->gplan->embed || r->gplan->head : r->embed_bits) {
        progress(&R, "embeddings", -1);
        if ((st = quant_embeddings(&R, err)))
            goto done;
    }
    for (int l = 0; l < src->cfg.n_layers && !st; l++) {
        if ((st = moec_model_check_finite_layer(src, l, err)))
            break;
        if (r->attn && (st = quant_attention(&R, l, err)))
            break;
        st = src->layers[l].n_experts ? moe_layer_run(&R, l, err) : quant_dense(&R, l, err);
    }
    if (!st && head_by_gptq(&R))
        st = quant_head(&R, err);
    if (st)
        goto done;
    if (R.have_windows && r->verify_tokens > 0) {
        progress(&R, "verify", -1);
        if ((st = qr_verify(&R.w, src, R.work, R.smooth, r->verify_tokens, rep, err)))
            goto done;
        rep->passes++;
    }
    fill_totals(&R);
    rep->seconds = now_s() - t0;
done:
    if (R.smooth)
        for (int l = 0; l < src->cfg.n_layers; l++)
            free(R.smooth[l]);
    free(R.smooth);
    free(R.w.start);
    moec_pool_free(R.pool);
    moec_model_close(R.work);
    if (st) {
        moec_model_close(R.out);
        moec_quant_report_free(rep);
        return st;
    }
    *out = R.out;
    return MOEC_OK;
}
