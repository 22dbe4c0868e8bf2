/* recipe_report.c - the quantization report: per-layer records, totals and
 * the JSON written into the container. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant_internal.h"


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

moec_status qr_report_init(moec_quant_report *rep, const moec_model *m, const moec_quant_recipe *r,
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

/* ---- totals ---- */

static moec_status count_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    qr_totals *t = ctx;
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

void qr_count_part(qr_recipe_run *R, int part)
{
    moec_model_for_each_slot_in(R->out, part, count_slot, &R->tot, NULL);
}

void qr_fill_totals(qr_recipe_run *R)
{
    moec_quant_report *rep = R->rep;
    const qr_totals t = R->tot;
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
