/* recipe.c - moec_quant_model: the recipe's checks and the order in which a
 * model is quantized (recipe.h). The parts: quant_layers.c (embeddings,
 * attention, dense layers), quant_moe.c (an MoE layer), quant_jobs.c (RTN
 * and GPTQ jobs over the pool), the passes in quant_hessians.c, MC-MoE's
 * loss table in quant_mcmoe.c, EAQuant's parts in eaquant.c, the final
 * comparison in quant_verify.c, the report in recipe_report.c and the
 * calibration windows in quant_windows.c. */
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
#include "quant/quant_internal.h"
#include "quant/rtn.h"

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

/* ---- entry point ---- */

static moec_status setup_windows(qr_recipe_run *R, const moec_quant_calib *cal, moec_err *err)
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

/* ---- the pipeline's steps ---- */

static moec_status recipe_begin(void *ctx, moec_pipeline *p, moec_err *err)
{
    qr_recipe_run *R = ctx;
    R->w.p = p;
    moec_status st;
    /* NaN/Inf weights fail here naming the tensor, layer by layer below */
    if ((st = moec_model_check_finite_layer(R->src, -1, err)))
        return st;
    if (R->r->gplan ? R->r->gplan->embed != MOEC_GB_NONE : R->r->embed_bits != 0) {
        qr_progress(R, "embeddings", -1);
        if ((st = qr_quant_embed(R, err)))
            return st;
    }
    if (R->have_windows && R->r->verify_tokens > 0 &&
        (st = qr_verify_new(&R->verify, &R->w, R->src, R->r->verify_tokens, err)))
        return st;
    qr_count_part(R, MOEC_PART_EMBED);
    return MOEC_OK;
}

static moec_status recipe_layer(void *ctx, moec_pipeline *p, int l, moec_err *err)
{
    qr_recipe_run *R = ctx;
    const moec_quant_recipe *r = R->r;
    R->work_mark = moec_model_arena_mark(R->work);
    moec_status st = moec_model_check_finite_layer(R->src, l, err);
    if (st)
        return st;
    if (r->attn && (st = qr_quant_attention(R, l, err)))
        return st;
    if ((st = R->src->layers[l].n_experts ? qr_moe_layer_run(R, l, err) : qr_quant_dense(R, l, err)))
        return st;
    /* the windows move on through the finished layer, compared with the original on the way */
    if (R->verify) {
        qr_progress(R, "verify", l);
        st = qr_verify_layer(R->verify, p, l, R->smooth[l], R->rep, err);
    } else if (R->have_windows) {
        st = moec_pipeline_advance(p, l, NULL, NULL, NULL, NULL, err);
    }
    if (st)
        return st;
    qr_count_part(R, l);
    /* the layer is done: the working model's views of it (and its float
     * copies) go; the output's go to the sink */
    moec_model_clear_part(R->work, l);
    moec_model_arena_release(R->work, R->work_mark);
    free(R->smooth[l]);
    R->smooth[l] = NULL;
    return MOEC_OK;
}

static moec_status recipe_end(void *ctx, moec_pipeline *p, moec_err *err)
{
    qr_recipe_run *R = ctx;
    moec_status st;
    if (R->r->gplan ? R->r->gplan->head != MOEC_GB_NONE : R->r->embed_bits != 0) {
        qr_progress(R, "head", -1);
        if ((st = qr_quant_head(R, err)))
            return st;
    }
    if (R->verify) {
        qr_progress(R, "verify", -1);
        if ((st = qr_verify_finish(R->verify, p, R->rep, err)))
            return st;
        R->rep->passes++;
    }
    qr_count_part(R, MOEC_PART_HEAD);
    return MOEC_OK;
}

moec_status moec_quant_model_to(const moec_model *src, const moec_quant_calib *cal, const moec_quant_recipe *r,
                                moec_model_sink *sink, moec_model **out, moec_quant_report *rep,
                                moec_quant_progress progress_fn, void *progress_ctx, moec_err *err)
{
    *out = NULL;
    memset(rep, 0, sizeof *rep);
    const double t0 = qr_now();
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
    qr_recipe_run R = {.src = src, .r = r, .rep = rep, .progress = progress_fn, .pctx = progress_ctx,
                       .stats = cal ? cal->stats : NULL, .streaming = sink != NULL};
    if ((st = qr_report_init(rep, src, r, err)))
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
    moec_pipeline_opts po = {.ids = R.have_windows ? R.w.ids : NULL, .window_len = R.w.len, .n_windows = R.w.n,
                             .threads = r->threads, .act_bits = r->act_bits, .run = R.work, .sink = sink,
                             .release_source = sink != NULL};
    const moec_pipeline_ops ops = {.begin = recipe_begin, .layer = recipe_layer, .end = recipe_end};
    if ((st = moec_pipeline_run(src, R.out, &po, &ops, &R, err)))
        goto done;
    qr_fill_totals(&R);
    rep->seconds = qr_now() - t0;
done:
    if (R.smooth)
        for (int l = 0; l < src->cfg.n_layers; l++)
            free(R.smooth[l]);
    free(R.smooth);
    free(R.w.start);
    qr_verify_free(R.verify);
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

moec_status moec_quant_model(const moec_model *src, const moec_quant_calib *cal, const moec_quant_recipe *r,
                             moec_model **out, moec_quant_report *rep, moec_quant_progress progress_fn,
                             void *progress_ctx, moec_err *err)
{
    return moec_quant_model_to(src, cal, r, NULL, out, rep, progress_fn, progress_ctx, err);
}
