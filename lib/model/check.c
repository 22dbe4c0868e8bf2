/* check.c - NaN/Inf weights and tokenizer/embedding agreement. */
#include "model/check.h"

#include <stdint.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/qformat.h"
#include "tokenizer/tokenizer.h"

/* Index of the first element whose exponent bits are all ones (NaN or
 * Inf), or n. Integer tests: no float traps, no conversions. */
static size_t first_nonfinite(const void *data, moec_dtype dt, size_t n, int *is_nan)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        if (dt == MOEC_DT_F32) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            if ((u & 0x7f800000u) == 0x7f800000u) {
                *is_nan = (u & 0x007fffffu) != 0;
                return i;
            }
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            const uint16_t exp = dt == MOEC_DT_BF16 ? 0x7f80u : 0x7c00u;
            if ((h & exp) == exp) {
                *is_nan = (h & (uint16_t)~(exp | 0x8000u)) != 0;
                return i;
            }
        }
    }
    return n;
}

moec_status moec_tensor_check_finite(const moec_tensor *t, const char *name, moec_err *err)
{
    if (!moec_tensor_present(t))
        return MOEC_OK;
    const void *data = t->data;
    moec_dtype dt = t->dtype;
    size_t n;
    int64_t cols = moec_tensor_cols(t);
    const char *what = "";
    if (dt == MOEC_DT_QUANT && t->q) {
        data = t->q->scales;
        dt = MOEC_DT_F16;
        n = t->q->scales_bytes / 2;
        cols = (t->q->cols + t->q->group - 1) / t->q->group; /* groups per row */
        what = " scale of group";
    } else if (dt == MOEC_DT_F32 || dt == MOEC_DT_F16 || dt == MOEC_DT_BF16) {
        n = (size_t)moec_tensor_numel(t);
    } else {
        return MOEC_OK;
    }
    if (!data || n == 0)
        return MOEC_OK;
    int is_nan = 0;
    size_t i = first_nonfinite(data, dt, n, &is_nan);
    if (i == n)
        return MOEC_OK;
    if (t->ndim >= 2 || t->dtype == MOEC_DT_QUANT)
        return moec_err_set(err, MOEC_ERR_NUMERIC, "tensor %s: %s%s at [%lld, %lld]", name,
                            is_nan ? "NaN" : "Inf", what, (long long)(i / (size_t)cols),
                            (long long)(i % (size_t)cols));
    return moec_err_set(err, MOEC_ERR_NUMERIC, "tensor %s: %s at [%zu]", name, is_nan ? "NaN" : "Inf", i);
}

typedef struct {
    int layer; /* -2: all */
} finite_ctx;

static moec_status check_slot(void *vctx, const moec_slot *s, moec_err *err)
{
    const finite_ctx *ctx = vctx;
    if (ctx->layer != -2 && s->layer != ctx->layer)
        return MOEC_OK;
    return moec_tensor_check_finite(s->t, s->name, err);
}

static moec_status check_layers(const moec_model *m, int layer, moec_err *err)
{
    finite_ctx ctx = {layer};
    moec_status st = moec_model_for_each_slot((moec_model *)m, check_slot, &ctx, err);
    if (st && m->source)
        moec_err_prefix(err, "%s", m->source);
    return st;
}

moec_status moec_model_check_finite_layer(const moec_model *m, int layer, moec_err *err)
{
    return check_layers(m, layer < -1 ? -1 : layer, err);
}

moec_status moec_model_check_finite(const moec_model *m, moec_err *err)
{
    return check_layers(m, -2, err);
}

moec_status moec_model_check_tokenizer(const moec_model *m, const moec_tokenizer *tok, moec_err *err)
{
    int tv = moec_tokenizer_vocab_size(tok);
    if (tv > m->cfg.vocab_size)
        return moec_err_set(err, MOEC_ERR_SHAPE,
                            "%s: the tokenizer has %d token ids but the embedding only %d rows (vocab_size); "
                            "tokenizer and weights do not belong together",
                            m->source ? m->source : "model", tv, m->cfg.vocab_size);
    return MOEC_OK;
}

moec_status moec_model_tokenizer(const moec_model *m, moec_tokenizer **out, moec_err *err)
{
    *out = NULL;
    const char *src = m->source ? m->source : "model";
    if (!m->tokenizer_json)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: no tokenizer.json", src);
    moec_tokenizer *tok;
    moec_status st = moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, err);
    if (st) {
        moec_err_prefix(err, "%s", src);
        return st;
    }
    if ((st = moec_model_check_tokenizer(m, tok, err))) {
        moec_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return MOEC_OK;
}

moec_status moec_model_check_output(const moec_model *m, const char *out, moec_err *err)
{
    for (const moec_model *p = m; p; p = p->parent) {
        if (!p->source)
            continue;
        moec_status st = moec_check_output_not_input(out, p->source, err);
        /* a source that is gone cannot be damaged */
        if (st && st != MOEC_ERR_IO)
            return st;
    }
    return MOEC_OK;
}
