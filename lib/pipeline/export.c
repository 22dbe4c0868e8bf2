/* export.c - a model to an HF checkpoint, part by part (export.h). */
#include "pipeline/export.h"

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
static moec_status load_embed(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p;
    return moec_model_load_part(ctx, MOEC_PART_EMBED, err);
}

static moec_status load_layer(void *ctx, moec_pipeline *p, int layer, moec_err *err)
{
    (void)p;
    return moec_model_load_part(ctx, layer, err);
}

static moec_status load_head(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p;
    return moec_model_load_part(ctx, MOEC_PART_HEAD, err);
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
    moec_status st = moec_model_for_each_slot(m, size_slot, &z, err);
    moec_model_sink *sink = NULL;
    if (st || (st = moec_model_sink_hf_new(&sink, m, dir, shard_bytes, overwrite, dtype, err)))
        return st;
    moec_pipeline_opts po = {.run = m, .sink = sink, .release_source = true, .progress = progress,
                             .progress_ctx = progress_ctx,
                             .progress_stage = z.sum->quantized_tensors ? "dequantizing" : "writing"};
    const moec_pipeline_ops ops = {.begin = load_embed, .layer = load_layer, .end = load_head};
    if (!(st = moec_pipeline_run(m, m, &po, &ops, m, err)))
        st = moec_model_sink_finish(sink, m, NULL, err);
    moec_model_sink_free(sink);
    return st;
}
