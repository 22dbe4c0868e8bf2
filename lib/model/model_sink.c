/* model_sink.c - HF directories and .moec containers written part by part
 * (model_sink.h); moec_model_save_hf and moec_model_save_moec on top. */
#include "model/model_sink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/ggml_blocks.h"
#include "core/qformat.h"
#include "formats/container.h"
#include "formats/safetensors.h"
#include "model/check.h"

enum { SINK_HF, SINK_MOEC };

struct moec_model_sink {
    int kind;
    int n_layers;
    unsigned char *done;       /* [n_layers + 2]: part put (embed, layers, head) */
    bool finished;
    /* HF */
    char tmp[4096];            /* temporary directory, "" when none */
    char *dir;
    bool overwrite;
    moec_dtype quant_as;
    moec_st_writer *st;
    /* .moec */
    moec_container_writer *cw;
    char *path;
    moec_moec_save_opts o;
};

static int part_index(const moec_model_sink *s, int part)
{
    return part == MOEC_PART_EMBED ? 0 : part == MOEC_PART_HEAD ? s->n_layers + 1 : part + 1;
}

static moec_status check_shape(const moec_slot *s, const moec_tensor *t, moec_err *err)
{
    bool ok = t->ndim == s->ndim && t->shape[0] == s->shape[0] && (s->ndim == 1 || t->shape[1] == s->shape[1]);
    if (ok)
        return MOEC_OK;
    if (s->ndim == 1)
        return moec_err_set(err, MOEC_ERR_SHAPE, "tensor %s: %d-D [%lld,...] where the config implies [%lld]", s->name,
                            t->ndim, (long long)t->shape[0], (long long)s->shape[0]);
    return moec_err_set(err, MOEC_ERR_SHAPE, "tensor %s: %d-D [%lld,%lld] where the config implies [%lld,%lld]",
                        s->name, t->ndim, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                        (long long)s->shape[0], (long long)s->shape[1]);
}

/* The tensor a slot is written as in an HF checkpoint: its own view, or for
 * a quantized one the dequantized dtype's shape (data NULL). */
static moec_status hf_type(const moec_model_sink *s, const moec_slot *slot, moec_tensor *out, moec_err *err)
{
    const moec_tensor *t = slot->t;
    moec_status st = check_shape(slot, t, err);
    if (st)
        return st;
    *out = *t;
    if (t->dtype != MOEC_DT_QUANT) {
        if (!moec_dtype_is_compute(t->dtype))
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "tensor %s has dtype %s", slot->name,
                                moec_dtype_name(t->dtype));
        return MOEC_OK;
    }
    if (!moec_dtype_is_compute(s->quant_as))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "tensor %s is quantized; export it with moec-export to write an HF checkpoint", slot->name);
    out->dtype = s->quant_as;
    out->q = NULL;
    out->data = NULL;
    out->nbytes = (size_t)moec_tensor_numel(t) * moec_dtype_size(s->quant_as);
    return MOEC_OK;
}

typedef struct slot_ctx {
    moec_model_sink *s;
} slot_ctx;

static moec_status declare_slot(void *vctx, const moec_slot *slot, moec_err *err)
{
    moec_model_sink *s = ((slot_ctx *)vctx)->s;
    if (!moec_tensor_present(slot->t)) {
        if (slot->optional)
            return MOEC_OK;
        return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s is absent", slot->name);
    }
    moec_tensor t;
    moec_status st = hf_type(s, slot, &t, err);
    if (!st) {
        t.data = NULL;
        st = moec_st_writer_add(s->st, slot->name, &t, err);
    }
    return st;
}

static moec_status hf_put_slot(void *vctx, const moec_slot *slot, moec_err *err)
{
    moec_model_sink *s = ((slot_ctx *)vctx)->s;
    if (!moec_tensor_present(slot->t)) {
        if (slot->optional)
            return MOEC_OK;
        return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s is absent", slot->name);
    }
    moec_tensor t;
    moec_status st = hf_type(s, slot, &t, err);
    if (st)
        return st;
    if (slot->t->dtype != MOEC_DT_QUANT)
        return moec_st_writer_put(s->st, slot->name, &t, err);
    /* dequantized one tensor at a time, rounded to the export dtype */
    const moec_qformat *f = slot->t->q;
    if (!f)
        return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s is quantized but has no format", slot->name);
    const size_t es = moec_dtype_size(s->quant_as);
    char *buf = malloc(t.nbytes ? t.nbytes : 1);
    float *row = malloc((size_t)f->cols * sizeof *row);
    if (!buf || !row) {
        free(buf), free(row);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory dequantizing", slot->name);
    }
    for (int64_t r = 0; r < f->rows; r++) {
        moec_qformat_dequant_row(f, r, row);
        moec_from_f32(buf + (size_t)r * (size_t)f->cols * es, row, s->quant_as, (size_t)f->cols);
    }
    t.data = buf;
    st = moec_st_writer_put(s->st, slot->name, &t, err);
    free(buf), free(row);
    return st;
}

static moec_status moec_put_slot(void *vctx, const moec_slot *slot, moec_err *err)
{
    moec_model_sink *s = ((slot_ctx *)vctx)->s;
    const moec_tensor *t = slot->t;
    if (!moec_tensor_present(t)) {
        if (slot->optional)
            return MOEC_OK;
        return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s is absent", slot->name);
    }
    moec_status st = check_shape(slot, t, err);
    if (st)
        return st;
    moec_ctensor_desc d;
    memset(&d, 0, sizeof d);
    d.name = slot->name;
    d.type.ndim = t->ndim;
    for (int k = 0; k < t->ndim; k++)
        d.type.shape[k] = t->shape[k];
    d.compress = s->o.compress ? MOEC_COMPRESS_AUTO : MOEC_COMPRESS_NONE;
    if (t->dtype == MOEC_DT_QUANT) {
        const moec_qformat *f = t->q;
        if (!f)
            return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s is quantized but has no format", slot->name);
        if ((st = moec_qformat_validate(f, slot->name, err)))
            return st;
        if (f->rows != t->shape[0] || f->cols != t->shape[1])
            return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s: format %lldx%lld, view %lldx%lld", slot->name,
                                (long long)f->rows, (long long)f->cols, (long long)t->shape[0],
                                (long long)t->shape[1]);
        if (f->gblock) { /* llama.cpp blocks, verbatim */
            d.type.storage = MOEC_STORAGE_GGML;
            d.type.bits = moec_gblock_info(f->gblock)->ggml_type;
            d.sections[d.n_sections++] = (moec_csection){MOEC_SECTION_DATA, f->codes, f->codes_bytes};
            return moec_container_writer_add_tensor(s->cw, &d, err);
        }
        d.type.storage = MOEC_STORAGE_GROUPWISE;
        d.type.bits = f->bits;
        d.type.group = f->group;
        d.type.symmetric = f->symmetric;
        d.sections[d.n_sections++] = (moec_csection){MOEC_SECTION_CODES, f->codes, f->codes_bytes};
        d.sections[d.n_sections++] = (moec_csection){MOEC_SECTION_SCALES, f->scales, f->scales_bytes};
        if (!f->symmetric)
            d.sections[d.n_sections++] = (moec_csection){MOEC_SECTION_ZEROS, f->zeros, f->zeros_bytes};
    } else {
        switch (t->dtype) {
        case MOEC_DT_F32: d.type.storage = MOEC_STORAGE_F32; break;
        case MOEC_DT_F16: d.type.storage = MOEC_STORAGE_F16; break;
        case MOEC_DT_BF16: d.type.storage = MOEC_STORAGE_BF16; break;
        default:
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "tensor %s has dtype %s; .moec stores F32, F16, BF16 "
                                "and group-wise quantized tensors", slot->name, moec_dtype_name(t->dtype));
        }
        size_t bytes = (size_t)moec_tensor_numel(t) * moec_dtype_size(t->dtype);
        if (t->nbytes < bytes || !t->data)
            return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s: %zu bytes of data, its shape needs %zu",
                                slot->name, t->nbytes, bytes);
        d.sections[d.n_sections++] = (moec_csection){MOEC_SECTION_DATA, t->data, bytes};
    }
    return moec_container_writer_add_tensor(s->cw, &d, err);
}

static moec_status sink_alloc(moec_model_sink **out, int kind, const moec_model *layout, moec_err *err)
{
    moec_model_sink *s = calloc(1, sizeof *s);
    if (!s)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    s->kind = kind;
    s->n_layers = layout->cfg.n_layers;
    s->done = calloc((size_t)s->n_layers + 2, 1);
    if (!s->done) {
        free(s);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    *out = s;
    return MOEC_OK;
}

moec_status moec_model_sink_hf_new(moec_model_sink **out, const moec_model *layout, const char *dir,
                                   size_t shard_bytes, bool overwrite, moec_dtype quant_as, moec_err *err)
{
    *out = NULL;
    moec_model_sink *s = NULL;
    /* HF has no factored form: refuse before anything is written */
    if (moec_model_has_factored(layout))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "model has factored (merged) experts; write a .moec file or multiply them out "
                            "(moec-export) to write an HF checkpoint");
    moec_status st = moec_model_check_output(layout, dir, err);
    if (st || (st = sink_alloc(&s, SINK_HF, layout, err)))
        return st;
    s->overwrite = overwrite;
    s->quant_as = quant_as;
    if (!(s->dir = strdup(dir)) || !(s->st = moec_st_writer_new())) {
        moec_model_sink_free(s);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    if ((st = moec_tmpdir_beside(dir, s->tmp, sizeof s->tmp, overwrite, err))) {
        s->tmp[0] = '\0';
        moec_model_sink_free(s);
        return st;
    }
    slot_ctx c = {s};
    if ((st = moec_model_for_each_slot((moec_model *)layout, declare_slot, &c, err)) ||
        (st = moec_st_writer_begin(s->st, s->tmp, shard_bytes, err))) {
        moec_model_sink_free(s);
        return st;
    }
    *out = s;
    return MOEC_OK;
}

moec_status moec_model_sink_moec_new(moec_model_sink **out, const moec_model *layout, const char *path,
                                     const moec_moec_save_opts *o, moec_err *err)
{
    *out = NULL;
    const moec_moec_save_opts defaults = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    moec_model_sink *s = NULL;
    moec_status st = moec_model_check_output(layout, path, err);
    if (st || (st = sink_alloc(&s, SINK_MOEC, layout, err)))
        return st;
    s->o = o ? *o : defaults;
    s->o.report_json = NULL;
    moec_container_writer_opts wo;
    moec_container_writer_opts_default(&wo);
    if (s->o.zstd_level)
        wo.zstd_level = s->o.zstd_level;
    if (!(s->path = strdup(path))) {
        moec_model_sink_free(s);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    /* streaming: each tensor is encoded and written as it is put */
    if ((st = moec_container_writer_new(&wo, &s->cw, err)) || (st = moec_container_writer_stream(s->cw, path, err))) {
        moec_model_sink_free(s);
        return st;
    }
    *out = s;
    return MOEC_OK;
}

moec_status moec_model_sink_put(moec_model_sink *s, const moec_model *m, int part, moec_err *err)
{
    if (s->finished || part < MOEC_PART_HEAD || part >= s->n_layers || m->cfg.n_layers != s->n_layers)
        return moec_err_set(err, MOEC_ERR_ARG, "model sink: part %d of a %d-layer model", part, s->n_layers);
    const int i = part_index(s, part);
    if (s->done[i])
        return moec_err_set(err, MOEC_ERR_ARG, "model sink: part %d written twice", part);
    slot_ctx c = {s};
    moec_status st = moec_model_for_each_slot_in((moec_model *)m, part, s->kind == SINK_HF ? hf_put_slot : moec_put_slot,
                                                 &c, err);
    if (!st)
        s->done[i] = 1;
    return st;
}

static moec_status write_text_files(const moec_model *m, const char *dir, moec_err *err)
{
    char *config = NULL, path[4200];
    moec_status st = moec_config_to_hf_json(&m->cfg, m->config_json, &config, err);
    if (st)
        return st;
    snprintf(path, sizeof path, "%s/config.json", dir);
    st = moec_write_file(path, config, strlen(config), err);
    free(config);
    /* the tokenizer and the side files the model carries */
    if (!st && m->tokenizer_json) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        st = moec_write_file(path, m->tokenizer_json, m->tokenizer_json_len, err);
    }
    for (int i = 0; i < MOEC_N_SIDE_FILES && !st; i++) {
        if (!m->side[i].data)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, moec_side_file_names[i]);
        st = moec_write_file(path, m->side[i].data, m->side[i].len, err);
    }
    return st;
}

moec_status moec_model_sink_finish(moec_model_sink *s, const moec_model *m, const char *report_json,
                                   moec_err *err)
{
    if (s->finished)
        return moec_err_set(err, MOEC_ERR_ARG, "model sink: finished twice");
    for (int i = 0; i < s->n_layers + 2; i++)
        if (!s->done[i])
            return moec_err_set(err, MOEC_ERR_ARG, "model sink: %s not written",
                                i == 0 ? "the embedding" : i == s->n_layers + 1 ? "the head" : "a layer");
    moec_status st;
    if (s->kind == SINK_HF) {
        if ((st = write_text_files(m, s->tmp, err)) || (st = moec_st_writer_finish(s->st, err)))
            return st;
        st = moec_commit_dir(s->tmp, s->dir, s->overwrite, err);
        s->tmp[0] = '\0'; /* moec_commit_dir removes it on failure */
        if (!st)
            s->finished = true;
        return st;
    }
    /* per-tensor quantization lives in the tensor entries; the config keeps
     * only what HF knows (expert counts as stored) */
    char *config = NULL;
    if ((st = moec_config_to_hf_json(&m->cfg, m->config_json, &config, err)) ||
        (st = moec_container_writer_add_blob(s->cw, "config.json", config, strlen(config), err)))
        goto done;
    if (m->tokenizer_json &&
        (st = moec_container_writer_add_blob(s->cw, "tokenizer.json", m->tokenizer_json, m->tokenizer_json_len, err)))
        goto done;
    for (int i = 0; i < MOEC_N_SIDE_FILES && !st; i++)
        if (m->side[i].data)
            st = moec_container_writer_add_blob(s->cw, moec_side_file_names[i], m->side[i].data, m->side[i].len, err);
    if (!st && report_json)
        st = moec_container_writer_add_blob(s->cw, "report.json", report_json, strlen(report_json), err);
    if (!st && !(st = moec_container_writer_write(s->cw, s->path, err)))
        s->finished = true;
done:
    free(config);
    return st;
}

void moec_model_sink_free(moec_model_sink *s)
{
    if (!s)
        return;
    moec_st_writer_free(s->st); /* removes unfinished shards */
    if (s->tmp[0])
        moec_remove_tree(s->tmp);
    moec_container_writer_free(s->cw); /* removes an unfinished container */
    free(s->dir);
    free(s->path);
    free(s->done);
    free(s);
}

/* ---- whole models ---- */

static moec_status put_all(moec_model_sink *s, const moec_model *m, moec_err *err)
{
    moec_status st = moec_model_sink_put(s, m, MOEC_PART_EMBED, err);
    for (int l = 0; l < m->cfg.n_layers && !st; l++)
        st = moec_model_sink_put(s, m, l, err);
    if (!st)
        st = moec_model_sink_put(s, m, MOEC_PART_HEAD, err);
    return st;
}

moec_status moec_model_save_hf(const moec_model *m, const char *out_dir, size_t shard_bytes, bool overwrite,
                               moec_err *err)
{
    moec_model_sink *s = NULL;
    moec_status st = moec_model_sink_hf_new(&s, m, out_dir, shard_bytes, overwrite, MOEC_DT_QUANT, err);
    if (st)
        return st;
    if (!(st = put_all(s, m, err)))
        st = moec_model_sink_finish(s, m, NULL, err);
    moec_model_sink_free(s);
    return st;
}

moec_status moec_model_save_moec(const moec_model *m, const char *path, const moec_moec_save_opts *o,
                                 moec_err *err)
{
    moec_model_sink *s = NULL;
    moec_status st = moec_model_sink_moec_new(&s, m, path, o, err);
    if (st)
        return st;
    if (!(st = put_all(s, m, err)))
        st = moec_model_sink_finish(s, m, o ? o->report_json : NULL, err);
    moec_model_sink_free(s);
    return st;
}
