/* model_hf.c - Hugging Face checkpoint directories <-> moec_model. */
#include "model/model.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "model/check.h"
#include "model/model_moec.h"

/* ---- open ---- */

typedef struct {
    const moec_safetensors *st;
    unsigned char *used; /* per st index: consumed by a slot */
} bind_ctx;

static moec_status bind_slot(void *vctx, const moec_slot *s, moec_err *err)
{
    bind_ctx *ctx = vctx;
    ptrdiff_t i = moec_st_index(ctx->st, s->name);
    if (i < 0) {
        if (s->optional)
            return MOEC_OK;
        return moec_err_set(err, MOEC_ERR_FORMAT, "tensor %s is missing from the checkpoint", s->name);
    }
    const moec_tensor *t = moec_st_tensor(ctx->st, (size_t)i);
    ctx->used[i] = 1;
    if (!moec_dtype_is_compute(t->dtype))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "tensor %s has dtype %s; moec computes with F32, F16 and BF16",
                            s->name, moec_dtype_name(t->dtype));
    bool ok = t->ndim == s->ndim && t->shape[0] == s->shape[0] && (s->ndim == 1 || t->shape[1] == s->shape[1]);
    if (!ok) {
        char found[96] = "";
        for (int k = 0; k < t->ndim; k++) {
            size_t n = strlen(found);
            snprintf(found + n, sizeof found - n, "%s%lld", k ? "," : "", (long long)t->shape[k]);
        }
        if (s->ndim == 1)
            return moec_err_set(err, MOEC_ERR_SHAPE, "tensor %s has shape [%s]; the config implies [%lld]", s->name,
                                found, (long long)s->shape[0]);
        return moec_err_set(err, MOEC_ERR_SHAPE, "tensor %s has shape [%s]; the config implies [%lld,%lld]",
                            s->name, found, (long long)s->shape[0], (long long)s->shape[1]);
    }
    *s->t = *t;
    return MOEC_OK;
}

/* Tensors HF checkpoints may carry that are recomputed, not learned. */
static bool ignorable_tensor(const char *name)
{
    return strstr(name, "rotary_emb.inv_freq") != NULL;
}

static moec_status load_text_file(const char *dir, const char *name, char **out, size_t *len, bool required,
                                  moec_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    moec_status st = moec_read_file(path, 256u << 20, out, len, err);
    if (st == MOEC_ERR_IO && !required && access(path, F_OK) != 0) {
        *out = NULL;
        *len = 0;
        moec_err_clear(err);
        return MOEC_OK;
    }
    return st;
}

moec_status moec_model_open(moec_model **out, const char *path, moec_err *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISREG(sb.st_mode))
        return moec_model_open_moec(out, path, err);
    if (!S_ISDIR(sb.st_mode))
        return moec_err_set(err, MOEC_ERR_ARG, "%s: not a model directory (expected config.json and *.safetensors)",
                            path);

    char *config_text = NULL;
    size_t config_len = 0;
    moec_status st = load_text_file(path, "config.json", &config_text, &config_len, true, err);
    if (st)
        return st;
    moec_config cfg;
    st = moec_config_parse_hf(&cfg, config_text, err);
    if (st) {
        moec_err_prefix(err, "%s", path); /* the message starts "config.json: " */
        free(config_text);
        return st;
    }
    /* the file's own tensor count bounds what the config may size */
    moec_safetensors *sf;
    if ((st = moec_st_open(&sf, path, err))) {
        free(config_text);
        return st;
    }
    if ((st = moec_config_check_tensor_count(&cfg, moec_st_count(sf), err))) {
        moec_err_prefix(err, "%s", path);
        moec_st_close(sf);
        free(config_text);
        return st;
    }
    moec_model *m;
    if ((st = moec_model_new_empty(&m, &cfg, err))) {
        moec_st_close(sf);
        free(config_text);
        return st;
    }
    m->st = sf;
    m->config_json = config_text;
    m->source = strdup(path);
    if (!m->source) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((st = load_text_file(path, "tokenizer.json", &m->tokenizer_json, &m->tokenizer_json_len, false, err)))
        goto fail;
    for (int i = 0; i < MOEC_N_SIDE_FILES; i++)
        if ((st = load_text_file(path, moec_side_file_names[i], &m->side[i].data, &m->side[i].len, false, err)))
            goto fail;
    m->file_bytes = moec_st_file_bytes(m->st);

    size_t n = moec_st_count(m->st);
    bind_ctx ctx = {m->st, calloc(n ? n : 1, 1)};
    if (!ctx.used) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    st = moec_model_for_each_slot(m, bind_slot, &ctx, err);
    for (size_t i = 0; st == MOEC_OK && i < n; i++)
        if (!ctx.used[i] && !ignorable_tensor(moec_st_name(m->st, i)))
            st = moec_err_set(err, MOEC_ERR_SHAPE,
                              "tensor %s is not part of a %s model as config.json describes it (wrong expert or "
                              "layer count?)",
                              moec_st_name(m->st, i), moec_arch_name(m->cfg.arch));
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
