/* model.c - model lifetime, owned buffers and the tensor-slot table. */
#include "model/model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/container.h"
#include "formats/safetensors.h"
#include "core/qformat.h"

void *moec_model_alloc(moec_model *m, size_t bytes)
{
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **nb = realloc(m->owned, cap * sizeof *nb);
        if (!nb)
            return NULL;
        m->owned = nb;
        m->cap_owned = cap;
    }
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p)
        return NULL;
    memset(p, 0, rounded ? rounded : 64);
    m->owned[m->n_owned++] = p;
    return p;
}

moec_status moec_model_new_tensor(moec_model *m, moec_tensor *t, moec_dtype dtype, int64_t rows, int64_t cols,
                                  moec_err *err)
{
    if (!moec_dtype_is_compute(dtype) || rows <= 0 || cols < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "new tensor: bad dtype or shape");
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    void *p = moec_model_alloc(m, n * moec_dtype_size(dtype));
    if (!p)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for a %lldx%lld tensor", (long long)rows,
                            (long long)cols);
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->data = p;
    t->nbytes = n * moec_dtype_size(dtype);
    return MOEC_OK;
}

static moec_status alloc_layers(moec_model *m, moec_err *err)
{
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    if (!m->layers)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < m->cfg.n_layers; l++) {
        moec_status st = moec_model_resize_experts(m, l, m->cfg.layer_experts[l], err);
        if (st)
            return st;
    }
    return MOEC_OK;
}

moec_status moec_model_resize_experts(moec_model *m, int layer, int n_experts, moec_err *err)
{
    moec_layer *L = &m->layers[layer];
    moec_ffn *e = NULL;
    if (n_experts > 0) {
        e = realloc(L->experts, (size_t)n_experts * sizeof *e);
        if (!e)
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        if (n_experts > L->n_experts)
            memset(e + L->n_experts, 0, (size_t)(n_experts - L->n_experts) * sizeof *e);
    } else {
        free(L->experts);
    }
    L->experts = e;
    L->n_experts = n_experts;
    m->cfg.layer_experts[layer] = n_experts;
    return MOEC_OK;
}

int64_t moec_config_tensor_count(const moec_config *c)
{
    int64_t n = 2 + (c->tie_embeddings ? 0 : 1); /* embeddings, final norm, head */
    for (int l = 0; l < c->n_layers; l++) {
        n += 6; /* two norms, q, k, v, o */
        n += c->qkv_bias ? 3 : 0;
        n += c->qk_norm != MOEC_QK_NORM_NONE ? 2 : 0;
        if (c->layer_experts[l] == 0) {
            n += 3;
            continue;
        }
        n += 1 + 3 * (int64_t)c->layer_experts[l]; /* router, experts */
        if (c->shared_ffn > 0)
            n += 3 + (c->shared_gate ? 1 : 0);
    }
    return n;
}

moec_status moec_config_check_tensor_count(const moec_config *c, size_t n_tensors, moec_err *err)
{
    /* a few missing tensors are reported one by one, by name, later; only a
     * claim far beyond the file is refused here, before anything is sized
     * by it */
    int64_t need = moec_config_tensor_count(c);
    if ((uint64_t)need <= 2 * (uint64_t)n_tensors + 64)
        return MOEC_OK;
    int max_e = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (c->layer_experts[l] > max_e)
            max_e = c->layer_experts[l];
    return moec_err_set(err, MOEC_ERR_FORMAT,
                        "config.json describes %lld tensors (%d layers, up to %d experts each) but the checkpoint "
                        "holds only %zu",
                        (long long)need, c->n_layers, max_e, n_tensors);
}

moec_status moec_model_new_empty(moec_model **out, const moec_config *cfg, moec_err *err)
{
    moec_model *m = calloc(1, sizeof *m);
    if (!m)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    moec_status st = alloc_layers(m, err);
    if (st) {
        moec_model_close(m);
        return st;
    }
    *out = m;
    return MOEC_OK;
}

const char *const moec_side_file_names[MOEC_N_SIDE_FILES] = {"tokenizer_config.json", "generation_config.json",
                                                              "special_tokens_map.json", "tokenizer.model"};

static char *dup_or_null(const char *s, size_t len)
{
    if (!s)
        return NULL;
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

moec_status moec_model_derive(moec_model **out, const moec_model *src, moec_err *err)
{
    moec_model *m;
    moec_status st = moec_model_new_empty(&m, &src->cfg, err);
    if (st)
        return st;
    m->embed = src->embed;
    m->final_norm = src->final_norm;
    m->lm_head = src->lm_head;
    for (int l = 0; l < src->cfg.n_layers; l++) {
        moec_ffn *experts = m->layers[l].experts;
        m->layers[l] = src->layers[l];
        m->layers[l].experts = experts;
        if (src->layers[l].n_experts)
            memcpy(experts, src->layers[l].experts, (size_t)src->layers[l].n_experts * sizeof *experts);
    }
    m->source = dup_or_null(src->source, src->source ? strlen(src->source) : 0);
    m->config_json = dup_or_null(src->config_json, src->config_json ? strlen(src->config_json) : 0);
    m->tokenizer_json = dup_or_null(src->tokenizer_json, src->tokenizer_json_len);
    m->tokenizer_json_len = src->tokenizer_json_len;
    bool side_ok = true;
    for (int i = 0; i < MOEC_N_SIDE_FILES; i++) {
        m->side[i].data = dup_or_null(src->side[i].data, src->side[i].len);
        m->side[i].len = src->side[i].len;
        side_ok &= !src->side[i].data || m->side[i].data;
    }
    m->parent = src;
    if ((src->source && !m->source) || (src->config_json && !m->config_json) ||
        (src->tokenizer_json && !m->tokenizer_json) || !side_ok) {
        moec_model_close(m);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    *out = m;
    return MOEC_OK;
}

void moec_model_close(moec_model *m)
{
    if (!m)
        return;
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layers; l++)
            free(m->layers[l].experts);
    free(m->layers);
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->part_mark);
    free(m->source);
    free(m->config_json);
    free(m->tokenizer_json);
    for (int i = 0; i < MOEC_N_SIDE_FILES; i++)
        free(m->side[i].data);
    if (m->st)
        moec_st_close(m->st);
    moec_container_close(m->ct);
    free(m);
}

/* ---- slot table: the one place that knows HF tensor names ---- */

typedef struct {
    moec_model *m;
    moec_slot_fn fn;
    void *ctx;
    moec_err *err;
} slot_walk;

static moec_status emit(slot_walk *w, moec_tensor *t, int layer, int expert, bool optional, int64_t rows,
                        int64_t cols, const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static moec_status emit(slot_walk *w, moec_tensor *t, int layer, int expert, bool optional, int64_t rows,
                        int64_t cols, const char *fmt, ...)
{
    moec_slot s = {.t = t, .layer = layer, .expert = expert, .optional = optional};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s.name, sizeof s.name, fmt, ap);
    va_end(ap);
    s.ndim = cols ? 2 : 1;
    s.shape[0] = rows;
    s.shape[1] = cols;
    return w->fn(w->ctx, &s, w->err);
}

/* prefix of a layer's feed-forward tensors: "block_sparse_moe" in Mixtral, "mlp" elsewhere */
static const char *moe_prefix(const moec_config *c)
{
    return c->arch == MOEC_ARCH_MIXTRAL ? "block_sparse_moe" : "mlp";
}

/* One weight of an FFN: the dense slot, or, when the weight is stored
 * factored (model.h), its two factors "<name>.u.weight" [rows][rank] and
 * "<name>.v.weight" [rank][cols], the rank read from u. A model being
 * filled (every tensor absent) sees the dense slot; the .moec reader binds
 * factors in its place (model_moec.c). */
static moec_status emit_weight(slot_walk *w, moec_tensor *dense, moec_factored *fw, int l, int e, int64_t rows,
                               int64_t cols, const char *base, const char *name)
{
    if (!moec_factored_present(fw))
        return emit(w, dense, l, e, false, rows, cols, "%s.%s.weight", base, name);
    const int64_t rank = fw->u.ndim == 2 ? fw->u.shape[1] : 0;
    moec_status st = emit(w, &fw->u, l, e, false, rows, rank, "%s.%s.u.weight", base, name);
    if (st == MOEC_OK)
        st = emit(w, &fw->v, l, e, false, rank, cols, "%s.%s.v.weight", base, name);
    return st;
}

static moec_status emit_ffn(slot_walk *w, moec_ffn *ffn, int l, int e, int64_t d, int64_t f, const char *base)
{
    const bool mixtral_names = w->m->cfg.arch == MOEC_ARCH_MIXTRAL && e >= 0;
    moec_status st;
    if ((st = emit_weight(w, &ffn->w1, &ffn->w1f, l, e, f, d, base, mixtral_names ? "w1" : "gate_proj")) ||
        (st = emit_weight(w, &ffn->w3, &ffn->w3f, l, e, f, d, base, mixtral_names ? "w3" : "up_proj")) ||
        (st = emit_weight(w, &ffn->w2, &ffn->w2f, l, e, d, f, base, mixtral_names ? "w2" : "down_proj")))
        return st;
    return MOEC_OK;
}

moec_status moec_model_for_each_slot(moec_model *m, moec_slot_fn fn, void *ctx, moec_err *err)
{
    slot_walk w = {m, fn, ctx, err};
    const moec_config *c = &m->cfg;
    const int64_t d = c->hidden_size, hd = c->head_dim;
    const int64_t q = (int64_t)c->n_heads * hd, kv = (int64_t)c->n_kv_heads * hd;
    moec_status st;
    if ((st = emit(&w, &m->embed, -1, -1, false, c->vocab_size, d, "model.embed_tokens.weight")))
        return st;
    for (int l = 0; l < c->n_layers; l++) {
        moec_layer *L = &m->layers[l];
        char base[160];
        if ((st = emit(&w, &L->attn_norm, l, -1, false, d, 0, "model.layers.%d.input_layernorm.weight", l)) ||
            (st = emit(&w, &L->wq, l, -1, false, q, d, "model.layers.%d.self_attn.q_proj.weight", l)) ||
            (st = emit(&w, &L->wk, l, -1, false, kv, d, "model.layers.%d.self_attn.k_proj.weight", l)) ||
            (st = emit(&w, &L->wv, l, -1, false, kv, d, "model.layers.%d.self_attn.v_proj.weight", l)) ||
            (st = emit(&w, &L->wo, l, -1, false, d, q, "model.layers.%d.self_attn.o_proj.weight", l)))
            return st;
        if (c->qkv_bias &&
            ((st = emit(&w, &L->bq, l, -1, false, q, 0, "model.layers.%d.self_attn.q_proj.bias", l)) ||
             (st = emit(&w, &L->bk, l, -1, false, kv, 0, "model.layers.%d.self_attn.k_proj.bias", l)) ||
             (st = emit(&w, &L->bv, l, -1, false, kv, 0, "model.layers.%d.self_attn.v_proj.bias", l))))
            return st;
        if (c->qk_norm != MOEC_QK_NORM_NONE) {
            const bool per_head = c->qk_norm == MOEC_QK_NORM_HEAD;
            if ((st = emit(&w, &L->q_norm, l, -1, false, per_head ? hd : q, 0,
                           "model.layers.%d.self_attn.q_norm.weight", l)) ||
                (st = emit(&w, &L->k_norm, l, -1, false, per_head ? hd : kv, 0,
                           "model.layers.%d.self_attn.k_norm.weight", l)))
                return st;
        }
        if ((st = emit(&w, &L->ffn_norm, l, -1, false, d, 0, "model.layers.%d.post_attention_layernorm.weight", l)))
            return st;
        if (L->n_experts == 0) {
            snprintf(base, sizeof base, "model.layers.%d.mlp", l);
            if ((st = emit_ffn(&w, &L->dense, l, -1, d, c->dense_ffn, base)))
                return st;
            continue;
        }
        if ((st = emit(&w, &L->router, l, -1, false, L->n_experts, d, "model.layers.%d.%s.gate.weight", l,
                       moe_prefix(c))))
            return st;
        for (int e = 0; e < L->n_experts; e++) {
            snprintf(base, sizeof base, "model.layers.%d.%s.experts.%d", l, moe_prefix(c), e);
            if ((st = emit_ffn(&w, &L->experts[e], l, e, d, c->expert_ffn, base)))
                return st;
        }
        if (c->shared_ffn > 0) {
            snprintf(base, sizeof base, "model.layers.%d.mlp.shared_expert", l);
            if ((st = emit_ffn(&w, &L->shared, l, -1, d, c->shared_ffn, base)))
                return st;
            if (c->shared_gate &&
                (st = emit(&w, &L->shared_gate, l, -1, false, 1, d, "model.layers.%d.mlp.shared_expert_gate.weight",
                           l)))
                return st;
        }
    }
    if ((st = emit(&w, &m->final_norm, -1, -1, false, d, 0, "model.norm.weight")))
        return st;
    if (!c->tie_embeddings && (st = emit(&w, &m->lm_head, -1, -1, false, c->vocab_size, d, "lm_head.weight")))
        return st;
    return MOEC_OK;
}

typedef struct part_walk {
    int part;
    const moec_model *m;
    moec_slot_fn fn;
    void *ctx;
} part_walk;

static moec_status part_slot(void *vctx, const moec_slot *s, moec_err *err)
{
    part_walk *w = vctx;
    bool in;
    if (w->part >= 0)
        in = s->layer == w->part;
    else if (w->part == MOEC_PART_EMBED)
        in = s->t == &w->m->embed;
    else
        in = s->layer < 0 && s->t != &w->m->embed;
    return in ? w->fn(w->ctx, s, err) : MOEC_OK;
}

moec_status moec_model_for_each_slot_in(moec_model *m, int part, moec_slot_fn fn, void *ctx, moec_err *err)
{
    if (part >= m->cfg.n_layers || part < MOEC_PART_HEAD)
        return moec_err_set(err, MOEC_ERR_ARG, "model part %d of a %d-layer model", part, m->cfg.n_layers);
    part_walk w = {part, m, fn, ctx};
    return moec_model_for_each_slot(m, part_slot, &w, err);
}

static void release_range(const moec_model *m, const void *p, size_t n)
{
    for (; m && p && n; m = m->parent)
        if ((m->st && moec_st_release(m->st, p, n)) || (m->ct && moec_container_release(m->ct, p, n)))
            return;
}

void moec_model_release_tensor(const moec_model *m, const moec_tensor *t)
{
    if (!moec_tensor_present(t))
        return;
    if (t->dtype == MOEC_DT_QUANT && t->q) {
        release_range(m, t->q->codes, t->q->codes_bytes);
        release_range(m, t->q->scales, t->q->scales_bytes);
        release_range(m, t->q->zeros, t->q->zeros_bytes);
    } else {
        release_range(m, t->data, t->nbytes);
    }
}

static moec_status release_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    moec_model_release_tensor(ctx, s->t);
    return MOEC_OK;
}

void moec_model_release_part(const moec_model *m, int part)
{
    moec_model_for_each_slot_in((moec_model *)m, part, release_slot, (void *)m, NULL);
    if (m->lazy && m->part_mark) { /* its bindings are a cache of the file: logically const */
        moec_model *mm = (moec_model *)m;
        moec_model_clear_part(mm, part);
        const int i = part == MOEC_PART_EMBED ? 0 : part == MOEC_PART_HEAD ? m->cfg.n_layers + 1 : part + 1;
        moec_model_arena_release(mm, m->part_mark[i]);
    }
}

static moec_status clear_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)ctx, (void)err;
    memset(s->t, 0, sizeof *s->t);
    return MOEC_OK;
}

void moec_model_clear_part(moec_model *m, int part)
{
    moec_model_for_each_slot_in(m, part, clear_slot, NULL, NULL);
}

size_t moec_model_arena_mark(const moec_model *m) { return m->n_owned; }

void moec_model_arena_release(moec_model *m, size_t mark)
{
    for (size_t i = mark; i < m->n_owned; i++)
        free(m->owned[i]);
    if (mark < m->n_owned)
        m->n_owned = mark;
}

static moec_status count_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    int64_t *acc = ctx;
    if (moec_tensor_present(s->t)) {
        acc[0] += moec_tensor_numel(s->t);
        /* a quantized tensor's view covers its codes; its scales and zeros are stored too */
        acc[1] += (int64_t)(s->t->q ? s->t->q->codes_bytes + s->t->q->scales_bytes + s->t->q->zeros_bytes
                                    : s->t->nbytes);
    }
    return MOEC_OK;
}

static void count(const moec_model *m, int64_t acc[2])
{
    acc[0] = acc[1] = 0;
    moec_model_for_each_slot((moec_model *)m, count_slot, acc, NULL);
}

int64_t moec_model_params(const moec_model *m)
{
    int64_t acc[2];
    count(m, acc);
    return acc[0];
}

uint64_t moec_model_bytes(const moec_model *m)
{
    int64_t acc[2];
    count(m, acc);
    return (uint64_t)acc[1];
}

void moec_model_count_part(const moec_model *m, int part, int64_t *params, uint64_t *bytes)
{
    int64_t acc[2] = {0, 0};
    moec_model_for_each_slot_in((moec_model *)m, part, count_slot, acc, NULL);
    *params += acc[0];
    *bytes += (uint64_t)acc[1];
}

