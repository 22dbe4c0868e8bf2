/* pipeline.c - the layer-streaming driver (pipeline.h). */
#include "pipeline/pipeline.h"

#include <stdlib.h>
#include <string.h>

struct moec_pipeline {
    const moec_model *src;
    moec_model *out;
    const moec_model *run;
    const moec_pipeline_opts *o;
    moec_exec *ex;          /* over run, one-layer cache; NULL without windows */
    moec_hstates *states;
};

moec_hstates *moec_pipeline_states(moec_pipeline *p) { return p->states; }

bool moec_pipeline_streaming(const moec_pipeline *p) { return p->o->sink != NULL; }

static moec_status run_layer(moec_pipeline *p, int layer, bool commit, moec_moe_hook mh, moec_attn_hook ah, void *hctx,
                             moec_hstates_window_fn on_window, moec_err *err)
{
    if (!p->states)
        return moec_err_set(err, MOEC_ERR_ARG, "pipeline: a pass needs calibration windows");
    moec_exec_set_moe_hook(p->ex, mh, hctx);
    moec_exec_set_attn_hook(p->ex, ah, hctx);
    moec_status st = moec_hstates_run(p->states, p->ex, layer, commit, on_window, hctx, err);
    moec_exec_set_moe_hook(p->ex, NULL, NULL);
    moec_exec_set_attn_hook(p->ex, NULL, NULL);
    return st;
}

moec_status moec_pipeline_pass(moec_pipeline *p, int layer, moec_moe_hook mh, moec_attn_hook ah, void *hctx,
                               moec_hstates_window_fn on_window, moec_err *err)
{
    return run_layer(p, layer, false, mh, ah, hctx, on_window, err);
}

moec_status moec_pipeline_advance(moec_pipeline *p, int layer, moec_moe_hook mh, moec_attn_hook ah, void *hctx,
                                  moec_hstates_window_fn on_window, moec_err *err)
{
    if (p->states && p->states->layer != layer)
        return moec_err_set(err, MOEC_ERR_INTERNAL, "pipeline: layer %d advanced twice or out of order", layer);
    return run_layer(p, layer, true, mh, ah, hctx, on_window, err);
}

moec_status moec_pipeline_logits(moec_pipeline *p, int window, float *logits, moec_err *err)
{
    if (!p->states)
        return moec_err_set(err, MOEC_ERR_ARG, "pipeline: logits need calibration windows");
    if (p->states->layer != p->run->cfg.n_layers)
        return moec_err_set(err, MOEC_ERR_INTERNAL, "pipeline: logits asked at layer %d", p->states->layer);
    return moec_hstates_logits(p->states, p->ex, window, logits, err);
}

static moec_status setup_windows(moec_pipeline *p, moec_err *err)
{
    const moec_pipeline_opts *o = p->o;
    if (!o->ids || o->n_windows <= 0)
        return MOEC_OK;
    if (!o->window_len)
        return moec_err_set(err, MOEC_ERR_ARG, "pipeline: calibration windows without lengths");
    moec_status st = moec_hstates_new(&p->states, o->ids, o->window_len, o->n_windows, p->run->cfg.hidden_size, err);
    if (st)
        return st;
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.threads = o->threads > 0 ? o->threads : 1;
    eo.max_ctx = p->states->max_len;
    eo.act_bits = o->act_bits;
    eo.layer_cache = true;
    return moec_exec_new(&p->ex, p->run, &eo, err);
}

/* A finished part leaves: to the sink, then (streaming) out of memory. */
static moec_status part_done(moec_pipeline *p, int part, size_t mark, bool keep, moec_err *err)
{
    const moec_pipeline_opts *o = p->o;
    moec_status st;
    if (p->out && o->sink && (st = moec_model_sink_put(o->sink, p->out, part, err)))
        return st;
    if (o->release_source)
        moec_model_release_part(p->src, part);
    if (p->out && o->sink && !keep) {
        moec_model_clear_part(p->out, part);
        moec_model_arena_release(p->out, mark);
    }
    if (o->progress) {
        /* parts in walk order: the embedding, the layers, the head */
        const int n_parts = p->src->cfg.n_layers + 2;
        const int done = part == MOEC_PART_EMBED ? 1 : part == MOEC_PART_HEAD ? n_parts : part + 2;
        o->progress(o->progress_ctx, o->progress_stage ? o->progress_stage : "writing", done, n_parts);
    }
    return MOEC_OK;
}

moec_status moec_pipeline_run(const moec_model *src, moec_model *out, const moec_pipeline_opts *o,
                              const moec_pipeline_ops *ops, void *ctx, moec_err *err)
{
    moec_pipeline p = {.src = src, .out = out, .run = o->run ? o->run : out, .o = o};
    if (!p.run)
        return moec_err_set(err, MOEC_ERR_ARG, "pipeline: no model to run the windows through");
    if (out && (out->cfg.n_layers != src->cfg.n_layers || p.run->cfg.n_layers != src->cfg.n_layers))
        return moec_err_set(err, MOEC_ERR_ARG, "pipeline: models of different depths");
    moec_status st = setup_windows(&p, err);
    size_t mark = out ? moec_model_arena_mark(out) : 0;
    if (!st && ops->begin)
        st = ops->begin(ctx, &p, err);
    if (!st && p.states)
        st = moec_hstates_embed(p.states, p.ex, err);
    /* a tied head is the embedding: it stays until the end */
    if (!st)
        st = part_done(&p, MOEC_PART_EMBED, mark, src->cfg.tie_embeddings, err);
    for (int l = 0; l < src->cfg.n_layers && !st; l++) {
        mark = out ? moec_model_arena_mark(out) : 0;
        if (ops->layer && (st = ops->layer(ctx, &p, l, err)))
            break;
        if (p.states && p.states->layer == l && (st = moec_pipeline_advance(&p, l, NULL, NULL, NULL, NULL, err)))
            break;
        st = part_done(&p, l, mark, false, err);
    }
    mark = out ? moec_model_arena_mark(out) : 0;
    if (!st && ops->end)
        st = ops->end(ctx, &p, err);
    if (!st)
        st = part_done(&p, MOEC_PART_HEAD, mark, true, err);
    moec_exec_free(p.ex);
    moec_hstates_free(p.states);
    return st;
}
