/* model_moec.c - a moec_model <-> a .moec container, and the quantized
 * tensors such a model holds. */
#include "model/model_moec.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/container.h"
#include "model/check.h"
#include "core/qformat.h"

/* ---- quantized tensors owned by a model ---- */

moec_status moec_model_set_quant(moec_model *m, moec_tensor *t, const moec_qformat *f, const char *name,
                                 moec_err *err)
{
    moec_status st = moec_qformat_validate(f, name, err);
    if (st)
        return st;
    moec_qformat *q = moec_model_alloc(m, sizeof *q);
    uint8_t *codes = moec_model_alloc(m, f->codes_bytes);
    uint16_t *scales = f->scales_bytes ? moec_model_alloc(m, f->scales_bytes) : NULL;
    uint8_t *zeros = f->zeros_bytes ? moec_model_alloc(m, f->zeros_bytes) : NULL;
    if (!q || !codes || (f->scales_bytes && !scales) || (f->zeros_bytes && !zeros))
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for a %lldx%lld quantized tensor",
                            name ? name : "tensor", (long long)f->rows, (long long)f->cols);
    *q = *f;
    memcpy(codes, f->codes, f->codes_bytes);
    if (scales)
        memcpy(scales, f->scales, f->scales_bytes);
    if (zeros)
        memcpy(zeros, f->zeros, f->zeros_bytes);
    q->codes = codes;
    q->scales = scales;
    q->zeros = zeros;
    *t = moec_qformat_tensor(q);
    return MOEC_OK;
}

typedef struct {
    moec_model *m;
    moec_dtype dtype;
    moec_progress_fn progress;
    void *progress_ctx;
    int64_t done, total; /* quantized tensors */
} dequant_ctx;

static moec_status count_quant(void *vctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    if (moec_tensor_present(s->t) && s->t->dtype == MOEC_DT_QUANT)
        ((dequant_ctx *)vctx)->total++;
    return MOEC_OK;
}

static moec_status dequant_slot(void *vctx, const moec_slot *s, moec_err *err)
{
    dequant_ctx *ctx = vctx;
    if (!moec_tensor_present(s->t) || s->t->dtype != MOEC_DT_QUANT)
        return MOEC_OK;
    const moec_qformat *f = s->t->q;
    if (!f)
        return moec_err_set(err, MOEC_ERR_INTERNAL, "tensor %s is quantized but has no format", s->name);
    float *row = malloc((size_t)f->cols * sizeof *row);
    if (!row)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", s->name);
    moec_tensor t;
    moec_status st = moec_model_new_tensor(ctx->m, &t, ctx->dtype, f->rows, f->cols, err);
    if (st == MOEC_OK) {
        const size_t es = moec_dtype_size(ctx->dtype);
        for (int64_t r = 0; r < f->rows; r++) {
            moec_qformat_dequant_row(f, r, row);
            moec_from_f32((char *)t.data + (size_t)r * (size_t)f->cols * es, row, ctx->dtype, (size_t)f->cols);
        }
        *s->t = t;
        if (ctx->progress)
            ctx->progress(ctx->progress_ctx, "dequantizing", ++ctx->done, ctx->total);
    }
    free(row);
    return st;
}

moec_status moec_model_dequantize(moec_model *m, moec_dtype dtype, moec_progress_fn progress, void *progress_ctx,
                                  moec_err *err)
{
    if (!moec_dtype_is_compute(dtype))
        return moec_err_set(err, MOEC_ERR_ARG, "dequantize: target dtype %s is not F32, F16 or BF16",
                            moec_dtype_name(dtype));
    dequant_ctx ctx = {m, dtype, progress, progress_ctx, 0, 0};
    if (progress)
        moec_model_for_each_slot(m, count_quant, &ctx, NULL);
    moec_status st = moec_model_for_each_slot(m, dequant_slot, &ctx, err);
    if (st == MOEC_OK && m->cfg.tie_embeddings)
        m->lm_head = m->embed;
    return st;
}

static moec_status shape_matches(const moec_slot *s, const moec_tensor *t, moec_err *err)
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

/* ---- open ---- */

typedef struct {
    moec_model *m;
    const moec_container *ct;
    unsigned char *used; /* per container tensor: consumed by a slot (NULL: not tracked) */
    bool declare;        /* lazy open: check and describe the tensor, read none of its bytes */
} bind_ctx;

static moec_dtype storage_dtype(moec_storage s)
{
    return s == MOEC_STORAGE_F32 ? MOEC_DT_F32 : s == MOEC_STORAGE_F16 ? MOEC_DT_F16 : MOEC_DT_BF16;
}

/* The decoded bytes of a section: in the mapping when RAW, else decoded
 * once into a buffer the model owns. */
static moec_status section_bytes(bind_ctx *ctx, size_t i, moec_section_kind kind, const void **data, size_t *size,
                                 const char *name, moec_err *err)
{
    const moec_ctensor_info *info = moec_container_tensor(ctx->ct, i);
    const moec_csection_info *sec = NULL;
    for (int k = 0; k < info->n_sections; k++)
        if (info->sections[k].kind == kind)
            sec = &info->sections[k];
    if (!sec)
        return moec_err_set(err, MOEC_ERR_FORMAT, "tensor %s has no %s section", name, moec_section_kind_name(kind));
    if (sec->encoding == MOEC_ENCODING_RAW)
        return moec_container_section_ptr(ctx->ct, i, kind, data, size, err);
    if (sec->size > SIZE_MAX)
        return moec_err_set(err, MOEC_ERR_FORMAT, "tensor %s: %s section too large", name,
                            moec_section_kind_name(kind));
    void *buf = moec_model_alloc(ctx->m, (size_t)sec->size);
    if (!buf)
        return moec_err_set(err, MOEC_ERR_NOMEM, "tensor %s: out of memory decoding %llu bytes", name,
                            (unsigned long long)sec->size);
    moec_status st = moec_container_section_read(ctx->ct, i, kind, 0, buf, (size_t)sec->size, err);
    if (st)
        return st;
    *data = buf;
    *size = (size_t)sec->size;
    return MOEC_OK;
}

static moec_status bind_factored(bind_ctx *ctx, const moec_slot *s, bool *found, moec_err *err);

/* Binds container tensor idx to slot s. */
static moec_status bind_index(bind_ctx *ctx, int64_t idx, const moec_slot *s, moec_err *err)
{
    const size_t i = (size_t)idx;
    if (ctx->used)
        ctx->used[i] = 1;
    const moec_ctensor_type *ty = &moec_container_tensor(ctx->ct, i)->type;
    moec_tensor t;
    memset(&t, 0, sizeof t);
    t.ndim = ty->ndim;
    for (int k = 0; k < ty->ndim && k < MOEC_MAX_DIMS; k++)
        t.shape[k] = ty->shape[k];
    moec_status st = shape_matches(s, &t, err);
    if (st)
        return st;
    const void *data;
    size_t size;
    if (ctx->declare) { /* shape and type only; the bytes come with moec_model_load_part */
        const bool quant = ty->storage == MOEC_STORAGE_GROUPWISE || ty->storage == MOEC_STORAGE_GGML;
        if (quant && s->ndim != 2)
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                "tensor %s is stored quantized; moec quantizes only 2-D weights", s->name);
        t.dtype = quant ? MOEC_DT_QUANT : storage_dtype(ty->storage);
        if (t.dtype != MOEC_DT_QUANT)
            t.nbytes = (size_t)moec_tensor_numel(&t) * moec_dtype_size(t.dtype);
        *s->t = t;
        return MOEC_OK;
    }
    if (ty->storage == MOEC_STORAGE_GGML) {
        if (s->ndim != 2)
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                "tensor %s is stored in llama.cpp blocks; moec quantizes only 2-D weights", s->name);
        moec_qformat *f = moec_model_alloc(ctx->m, sizeof *f);
        if (!f)
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        const moec_gblock_traits *tr = moec_gblock_info(moec_gblock_from_ggml(ty->bits));
        f->gblock = moec_gblock_from_ggml(ty->bits);
        f->bits = tr->bits;
        f->group = tr->block;
        f->symmetric = !tr->has_min;
        f->rows = ty->shape[0];
        f->cols = ty->shape[1];
        if ((st = section_bytes(ctx, i, MOEC_SECTION_DATA, &data, &f->codes_bytes, s->name, err)))
            return st;
        f->codes = data;
        if ((st = moec_qformat_validate(f, s->name, err)))
            return st;
        *s->t = moec_qformat_tensor(f);
        return MOEC_OK;
    }
    if (ty->storage != MOEC_STORAGE_GROUPWISE) {
        if ((st = section_bytes(ctx, i, MOEC_SECTION_DATA, &data, &size, s->name, err)))
            return st;
        t.dtype = storage_dtype(ty->storage);
        if (size != (size_t)moec_tensor_numel(&t) * moec_dtype_size(t.dtype))
            return moec_err_set(err, MOEC_ERR_FORMAT, "tensor %s: DATA holds %zu bytes, its shape needs %zu", s->name,
                                size, (size_t)moec_tensor_numel(&t) * moec_dtype_size(t.dtype));
        t.data = data;
        t.nbytes = size;
        *s->t = t;
        return MOEC_OK;
    }
    if (s->ndim != 2)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "tensor %s is stored group-wise quantized; moec quantizes only 2-D weights", s->name);
    moec_qformat *f = moec_model_alloc(ctx->m, sizeof *f);
    if (!f)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    f->bits = ty->bits;
    f->group = ty->group;
    f->symmetric = ty->symmetric != 0;
    f->rows = ty->shape[0];
    f->cols = ty->shape[1];
    if ((st = section_bytes(ctx, i, MOEC_SECTION_CODES, &data, &f->codes_bytes, s->name, err)))
        return st;
    f->codes = data;
    if ((st = section_bytes(ctx, i, MOEC_SECTION_SCALES, &data, &f->scales_bytes, s->name, err)))
        return st;
    f->scales = data;
    if (!f->symmetric) {
        if ((st = section_bytes(ctx, i, MOEC_SECTION_ZEROS, &data, &f->zeros_bytes, s->name, err)))
            return st;
        f->zeros = data;
    }
    if ((st = moec_qformat_validate(f, s->name, err)))
        return st;
    *s->t = moec_qformat_tensor(f);
    return MOEC_OK;
}

static moec_status bind_slot(void *vctx, const moec_slot *s, moec_err *err)
{
    bind_ctx *ctx = vctx;
    int64_t idx = moec_container_find(ctx->ct, s->name);
    if (idx >= 0)
        return bind_index(ctx, idx, s, err);
    bool found = false;
    moec_status st = bind_factored(ctx, s, &found, err);
    if (st || found)
        return st;
    if (s->optional)
        return MOEC_OK;
    return moec_err_set(err, MOEC_ERR_FORMAT, "tensor %s is missing from the container", s->name);
}

/* A routed expert's weight stored factored (model.h): the dense slot
 * "X.weight" is absent and "X.u.weight" [rows][rank], "X.v.weight"
 * [rank][cols] are there instead; both are bound into the expert's
 * moec_factored. *found says whether the factors were there. */
static moec_status bind_factored(bind_ctx *ctx, const moec_slot *s, bool *found, moec_err *err)
{
    *found = false;
    const size_t len = strlen(s->name), suffix = strlen(".weight");
    if (s->expert < 0 || s->layer < 0 || s->ndim != 2 || len <= suffix ||
        strcmp(s->name + len - suffix, ".weight") != 0)
        return MOEC_OK;
    moec_ffn *f = &ctx->m->layers[s->layer].experts[s->expert];
    moec_factored *fw = s->t == &f->w1 ? &f->w1f : s->t == &f->w3 ? &f->w3f : s->t == &f->w2 ? &f->w2f : NULL;
    if (!fw)
        return MOEC_OK;
    moec_slot su = *s, sv = *s;
    snprintf(su.name, sizeof su.name, "%.*s.u.weight", (int)(len - suffix), s->name);
    snprintf(sv.name, sizeof sv.name, "%.*s.v.weight", (int)(len - suffix), s->name);
    const int64_t iu = moec_container_find(ctx->ct, su.name), iv = moec_container_find(ctx->ct, sv.name);
    if (iu < 0 && iv < 0)
        return MOEC_OK;
    *found = true;
    if (iu < 0 || iv < 0)
        return moec_err_set(err, MOEC_ERR_FORMAT, "tensor %s is missing from the container (its other factor is there)",
                            iu < 0 ? su.name : sv.name);
    const moec_ctensor_type *tu = &moec_container_tensor(ctx->ct, (size_t)iu)->type;
    const int64_t rank = tu->ndim == 2 ? (int64_t)tu->shape[1] : 0;
    if (rank < 1 || rank > s->shape[0] || rank > s->shape[1])
        return moec_err_set(err, MOEC_ERR_SHAPE, "tensor %s: rank %lld; a factor of [%lld][%lld] needs 1..%lld", su.name,
                            (long long)rank, (long long)s->shape[0], (long long)s->shape[1],
                            (long long)(s->shape[0] < s->shape[1] ? s->shape[0] : s->shape[1]));
    su.t = &fw->u;
    su.shape[1] = rank;
    sv.t = &fw->v;
    sv.shape[0] = rank;
    moec_status st = bind_index(ctx, iu, &su, err);
    if (st == MOEC_OK)
        st = bind_index(ctx, iv, &sv, err);
    return st;
}

static bool has_blob(const moec_container *ct, const char *name)
{
    for (size_t i = 0; i < moec_container_blob_count(ct); i++)
        if (strcmp(moec_container_blob_name(ct, i), name) == 0)
            return true;
    return false;
}

/* A NUL-terminated copy of a blob's bytes. */
static moec_status blob_bytes(const moec_container *ct, const char *name, char **out, size_t *len, moec_err *err)
{
    const void *data;
    size_t size;
    moec_status st = moec_container_blob(ct, name, &data, &size, err);
    if (st)
        return st;
    char *s = malloc(size + 1);
    if (!s)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for blob %s", name);
    memcpy(s, data, size);
    s[size] = '\0';
    *out = s;
    if (len)
        *len = size;
    return MOEC_OK;
}

/* A blob that must be text (JSON): no NUL byte inside. */
static moec_status blob_text(const moec_container *ct, const char *name, char **out, size_t *len, moec_err *err)
{
    size_t size = 0;
    moec_status st = blob_bytes(ct, name, out, &size, err);
    if (st)
        return st;
    if (memchr(*out, '\0', size)) {
        free(*out);
        *out = NULL;
        return moec_err_set(err, MOEC_ERR_FORMAT, "blob %s contains a NUL byte; expected JSON text", name);
    }
    if (len)
        *len = size;
    return MOEC_OK;
}

/* Whether the file starts with the container magic (docs/format.md: it
 * never changes). Unreadable files count as containers so that the reader
 * reports why. */
static bool looks_like_container(const char *path)
{
    static const unsigned char magic[8] = {'M', 'O', 'E', 'C', '\r', '\n', 0x1a, '\n'};
    unsigned char head[8];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    if (fd < 0)
        return true;
    ssize_t n = read(fd, head, sizeof head);
    close(fd);
    return n == (ssize_t)sizeof head && memcmp(head, magic, sizeof head) == 0;
}

static moec_status model_from_container(moec_model **out, struct moec_container *ct, const char *path, bool lazy,
                                        moec_err *err);

static moec_status open_moec(moec_model **out, const char *path, bool lazy, moec_err *err)
{
    *out = NULL;
    if (!looks_like_container(path))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: not a model (neither a checkpoint directory nor a .moec container)", path);
    moec_container *ct;
    moec_status st = moec_container_open(path, lazy ? MOEC_CONTAINER_LAZY_VERIFY : 0, &ct, err);
    if (st)
        return st;
    return model_from_container(out, ct, path, lazy, err);
}

/* The model of an open container: ct is owned by the model on success
 * and closed on failure; lazy declares the tensors without reading them. */
static moec_status model_from_container(moec_model **out, struct moec_container *ct, const char *path, bool lazy,
                                        moec_err *err)
{
    *out = NULL;
    moec_status st;
    char *config_text = NULL;
    moec_config cfg;
    if (!has_blob(ct, "config.json")) {
        moec_container_close(ct);
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: no config.json blob; not a moec model container", path);
    }
    if ((st = blob_text(ct, "config.json", &config_text, NULL, err)) ||
        (st = moec_config_parse_hf(&cfg, config_text, err))) {
        moec_err_prefix(err, "%s: config.json", path);
        free(config_text);
        moec_container_close(ct);
        return st;
    }
    moec_model *m;
    if ((st = moec_config_check_tensor_count(&cfg, moec_container_tensor_count(ct), err)) ||
        (st = moec_model_new_empty(&m, &cfg, err))) {
        moec_err_prefix(err, "%s", path);
        free(config_text);
        moec_container_close(ct);
        return st;
    }
    m->ct = ct;
    m->config_json = config_text;
    size_t file_size = 0;
    moec_container_bytes(ct, &file_size);
    m->file_bytes = file_size;
    if (!(m->source = strdup(path))) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (has_blob(ct, "tokenizer.json") &&
        (st = blob_text(ct, "tokenizer.json", &m->tokenizer_json, &m->tokenizer_json_len, err))) {
        moec_err_prefix(err, "%s", path);
        goto fail;
    }
    for (int i = 0; i < MOEC_N_SIDE_FILES; i++)
        if (has_blob(ct, moec_side_file_names[i]) &&
            (st = blob_bytes(ct, moec_side_file_names[i], &m->side[i].data, &m->side[i].len, err))) {
            moec_err_prefix(err, "%s", path);
            goto fail;
        }
    size_t n = moec_container_tensor_count(ct);
    bind_ctx ctx = {m, ct, calloc(n ? n : 1, 1), lazy};
    if (lazy && !(m->part_mark = calloc((size_t)m->cfg.n_layers + 2, sizeof *m->part_mark))) {
        free(ctx.used);
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    m->lazy = lazy;
    if (!ctx.used) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    st = moec_model_for_each_slot(m, bind_slot, &ctx, err);
    for (size_t i = 0; st == MOEC_OK && i < n; i++)
        if (!ctx.used[i])
            st = moec_err_set(err, MOEC_ERR_SHAPE,
                              "tensor %s is not part of a %s model as config.json describes it (wrong expert or "
                              "layer count?)",
                              moec_container_tensor(ct, i)->name, moec_arch_name(m->cfg.arch));
    free(ctx.used);
    if (st) {
        moec_err_prefix(err, "%s", path);
        goto fail;
    }
    if (m->cfg.tie_embeddings)
        m->lm_head = m->embed;
    *out = m;
    return MOEC_OK;
fail:
    moec_model_close(m);
    return st;
}

moec_status moec_model_from_container(moec_model **out, struct moec_container *ct, const char *path,
                                      moec_err *err)
{
    return model_from_container(out, ct, path, false, err);
}

moec_status moec_model_open_moec(moec_model **out, const char *path, moec_err *err)
{
    return open_moec(out, path, false, err);
}

moec_status moec_model_open_moec_lazy(moec_model **out, const char *path, moec_err *err)
{
    return open_moec(out, path, true, err);
}

moec_status moec_model_load_part(moec_model *m, int part, moec_err *err)
{
    if (!m->lazy)
        return MOEC_OK;
    const int i = part == MOEC_PART_EMBED ? 0 : part == MOEC_PART_HEAD ? m->cfg.n_layers + 1 : part + 1;
    if (i < 0 || i > m->cfg.n_layers + 1)
        return moec_err_set(err, MOEC_ERR_ARG, "model part %d of a %d-layer model", part, m->cfg.n_layers);
    m->part_mark[i] = moec_model_arena_mark(m);
    bind_ctx ctx = {m, m->ct, NULL, false};
    moec_status st = moec_model_for_each_slot_in(m, part, bind_slot, &ctx, err);
    if (!st && part == MOEC_PART_EMBED && m->cfg.tie_embeddings)
        m->lm_head = m->embed;
    if (st)
        return moec_err_prefix(err, "%s", m->source ? m->source : "model");
    return MOEC_OK;
}
