/* export.c - a model to an HF checkpoint, part by part (export.h). */
#include "pipeline/export.h"

#include <string.h>

#include "model/model_sink.h"
#include "pipeline/pipeline.h"

typedef struct sizes {
    moec_dtype dtype;
    moec_export_summary *sum;
} sizes;

static moec_status size_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    sizes *z = ctx;
    if (!moec_tensor_present(s->t))
        return MOEC_OK;
    const int64_t n = moec_tensor_numel(s->t);
    z->sum->params += n;
    if (s->t->dtype == MOEC_DT_QUANT) {
        z->sum->quantized_tensors++;
        z->sum->bytes += (uint64_t)n * moec_dtype_size(z->dtype);
    } else {
        z->sum->bytes += s->t->nbytes;
    }
    return MOEC_OK;
}

/* Each part is bound just before it is written (lazily opened models). */
typedef struct export_walk {
    moec_model *m;
    moec_dtype dtype;
} export_walk;

static moec_status load_embed(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p;
    return moec_model_load_part(((export_walk *)ctx)->m, MOEC_PART_EMBED, err);
}

/* A layer's factored experts (merged) are multiplied out once bound. */
static moec_status load_layer(void *ctx, moec_pipeline *p, int layer, moec_err *err)
{
    (void)p;
    export_walk *w = ctx;
    moec_status st = moec_model_load_part(w->m, layer, err);
    return st ? st : moec_model_densify_layer(w->m, layer, w->dtype, err);
}

static moec_status load_head(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p;
    return moec_model_load_part(((export_walk *)ctx)->m, MOEC_PART_HEAD, err);
}

/* HF has no factored form, and its writer declares every tensor before the
 * first is written: a lazily opened model's factored weights are declared
 * as their dense products (bound and multiplied out layer by layer, above);
 * a loaded model's are multiplied out here. */
static moec_status declare_dense(moec_model *m, moec_dtype dtype, moec_err *err)
{
    if (!m->lazy)
        return moec_model_densify(m, dtype, err);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int e = 0; e < m->layers[l].n_experts; e++) {
            moec_ffn *f = &m->layers[l].experts[e];
            moec_tensor *dense[3] = {&f->w1, &f->w3, &f->w2};
            moec_factored *fw[3] = {&f->w1f, &f->w3f, &f->w2f};
            for (int k = 0; k < 3; k++) {
                if (!moec_factored_present(fw[k]))
                    continue;
                const int64_t rows = fw[k]->u.shape[0], cols = fw[k]->v.shape[1];
                *dense[k] = (moec_tensor){.dtype = dtype, .ndim = 2, .shape = {rows, cols},
                                          .nbytes = (size_t)(rows * cols) * moec_dtype_size(dtype)};
                memset(fw[k], 0, sizeof *fw[k]);
            }
        }
    return MOEC_OK;
}

moec_status moec_export_hf(moec_model *m, const char *dir, moec_dtype dtype, size_t shard_bytes, bool overwrite,
                           moec_progress_fn progress, void *progress_ctx, moec_export_summary *sum,
                           moec_err *err)
{
    if (!moec_dtype_is_compute(dtype))
        return moec_err_set(err, MOEC_ERR_ARG, "export: target dtype %s is not F32, F16 or BF16",
                            moec_dtype_name(dtype));
    moec_export_summary local = {0};
    sizes z = {dtype, sum ? sum : &local};
    *z.sum = (moec_export_summary){0};
    moec_status st = declare_dense(m, dtype, err);
    if (!st)
        st = moec_model_for_each_slot(m, size_slot, &z, err);
    moec_model_sink *sink = NULL;
    if (st || (st = moec_model_sink_hf_new(&sink, m, dir, shard_bytes, overwrite, dtype, err)))
        return st;
    moec_pipeline_opts po = {.run = m, .sink = sink, .release_source = true, .progress = progress,
                             .progress_ctx = progress_ctx,
                             .progress_stage = z.sum->quantized_tensors ? "dequantizing" : "writing"};
    const moec_pipeline_ops ops = {.begin = load_embed, .layer = load_layer, .end = load_head};
    export_walk w = {m, dtype};
    if (!(st = moec_pipeline_run(m, m, &po, &ops, &w, err)))
        st = moec_model_sink_finish(sink, m, NULL, err);
    moec_model_sink_free(sink);
    return st;
}
