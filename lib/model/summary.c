#include "model/summary.h"

#include <stdio.h>
#include <string.h>

#include "formats/container.h"
#include "core/qformat.h"

typedef struct {
    int64_t params[MOEC_DT_COUNT];
    int64_t bytes;           /* all tensors, quantized ones with codes + scales + zeros */
    int64_t q_tensors, q_params, q_bytes;
} dtype_tally;

static moec_status tally_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    dtype_tally *t = ctx;
    if (!moec_tensor_present(s->t))
        return MOEC_OK;
    const int64_t n = moec_tensor_numel(s->t);
    t->params[s->t->dtype] += n;
    if (s->t->dtype == MOEC_DT_QUANT && s->t->q) {
        const moec_qformat *f = s->t->q;
        const int64_t b = (int64_t)(f->codes_bytes + f->scales_bytes + f->zeros_bytes);
        t->q_tensors++;
        t->q_params += n;
        t->q_bytes += b;
        t->bytes += b;
    } else {
        t->bytes += (int64_t)s->t->nbytes;
    }
    return MOEC_OK;
}

/* ---- what a .moec file stores, per storage type ---- */

typedef struct {
    const moec_container *ct;
    cJSON *storage; /* label -> {tensors, params, stored_bytes, bits_per_weight} */
    int64_t params, stored;
} storage_tally;

/* "BF16", "F32", ...; group-wise as "q4_g32" (asymmetric) or "q3_g16_sym". */
static void storage_label(const moec_ctensor_type *t, char *buf, size_t cap)
{
    if (t->storage == MOEC_STORAGE_GROUPWISE)
        snprintf(buf, cap, "q%d_g%d%s", t->bits, t->group, t->symmetric ? "_sym" : "");
    else if (t->storage == MOEC_STORAGE_GGML && moec_gblock_from_ggml(t->bits))
        snprintf(buf, cap, "%s", moec_gblock_info(moec_gblock_from_ggml(t->bits))->name);
    else
        snprintf(buf, cap, "%s", moec_storage_name(t->storage));
}

static void add_number(cJSON *o, const char *key, double v)
{
    cJSON *e = cJSON_GetObjectItemCaseSensitive(o, key);
    if (e)
        cJSON_SetNumberValue(e, e->valuedouble + v);
    else
        cJSON_AddNumberToObject(o, key, v);
}

static moec_status storage_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    storage_tally *t = ctx;
    int64_t i = moec_container_find(t->ct, s->name);
    if (i < 0 || !moec_tensor_present(s->t))
        return MOEC_OK;
    const moec_ctensor_info *info = moec_container_tensor(t->ct, (size_t)i);
    uint64_t stored = 0;
    for (int k = 0; k < info->n_sections; k++)
        stored += info->sections[k].stored_size;
    const int64_t n = moec_tensor_numel(s->t);
    char label[64];
    storage_label(&info->type, label, sizeof label);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(t->storage, label);
    if (!e)
        e = cJSON_AddObjectToObject(t->storage, label);
    if (!e)
        return MOEC_ERR_NOMEM;
    add_number(e, "tensors", 1);
    add_number(e, "params", (double)n);
    add_number(e, "stored_bytes", (double)stored);
    t->params += n;
    t->stored += (int64_t)stored;
    return MOEC_OK;
}

/* Bits per weight over a .moec file, two ways (the comparison with
 * llama.cpp): over what each storage type stores (compressed sections at
 * their size in the file) and over the whole file (file bytes x 8 /
 * parameters, as llama.cpp counts: headers, blobs and padding included). */
static void add_container(cJSON *o, const moec_model *m)
{
    storage_tally t = {m->ct, cJSON_CreateObject(), 0, 0};
    if (!t.storage)
        return;
    moec_model_for_each_slot((moec_model *)m, storage_slot, &t, NULL);
    cJSON *e;
    cJSON_ArrayForEach(e, t.storage)
    {
        double p = cJSON_GetObjectItem(e, "params")->valuedouble;
        double b = cJSON_GetObjectItem(e, "stored_bytes")->valuedouble;
        cJSON_AddNumberToObject(e, "bits_per_weight", p > 0 ? 8.0 * b / p : 0.0);
    }
    cJSON *c = cJSON_AddObjectToObject(o, "container");
    if (!c) {
        cJSON_Delete(t.storage);
        return;
    }
    cJSON_AddNumberToObject(c, "file_bytes", (double)m->file_bytes);
    cJSON_AddNumberToObject(c, "params", (double)t.params);
    cJSON_AddNumberToObject(c, "stored_tensor_bytes", (double)t.stored);
    cJSON_AddNumberToObject(c, "file_bits_per_weight", t.params ? 8.0 * (double)m->file_bytes / (double)t.params : 0.0);
    cJSON_AddItemToObject(c, "storage", t.storage);
}

/* Expert weights stored factored (merged experts, model.h): how many, the
 * parameters their factors hold, and what they would hold dense. */
static void add_factored(cJSON *o, const moec_model *m)
{
    int64_t n = 0, params = 0, dense = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int e = 0; e < m->layers[l].n_experts; e++) {
            const moec_ffn *f = &m->layers[l].experts[e];
            const moec_factored *fw[3] = {&f->w1f, &f->w3f, &f->w2f};
            for (int k = 0; k < 3; k++)
                if (moec_factored_present(fw[k])) {
                    n++;
                    params += moec_tensor_numel(&fw[k]->u) + moec_tensor_numel(&fw[k]->v);
                    dense += fw[k]->u.shape[0] * fw[k]->v.shape[1];
                }
        }
    if (!n)
        return;
    cJSON *q = cJSON_AddObjectToObject(o, "factored");
    cJSON_AddNumberToObject(q, "weights", (double)n);
    cJSON_AddNumberToObject(q, "params", (double)params);
    cJSON_AddNumberToObject(q, "dense_params", (double)dense);
}

/* Active parameters per token from the stored tensors: everything but the
 * routed experts, plus top_k experts' worth in each MoE layer. */
static int64_t active_params(const moec_model *m)
{
    const moec_config *c = &m->cfg;
    int64_t total = moec_model_params(m);
    for (int l = 0; l < c->n_layers; l++) {
        const moec_layer *L = &m->layers[l];
        if (L->n_experts == 0)
            continue;
        int64_t per = 0;
        for (int e = 0; e < L->n_experts; e++)
            per += moec_ffn_params(&L->experts[e]);
        int k = c->top_k < L->n_experts ? c->top_k : L->n_experts;
        total -= per - per / L->n_experts * k;
    }
    return total;
}

cJSON *moec_model_summary(const moec_model *m)
{
    const moec_config *c = &m->cfg;
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "architecture", moec_arch_name(c->arch));
    cJSON_AddStringToObject(o, "model_type", moec_arch_model_type(c->arch));
    cJSON_AddNumberToObject(o, "layers", c->n_layers);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "heads", c->n_heads);
    cJSON_AddNumberToObject(o, "kv_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON *epl = cJSON_AddArrayToObject(o, "experts_per_layer");
    for (int l = 0; l < c->n_layers; l++)
        cJSON_AddItemToArray(epl, cJSON_CreateNumber(c->layer_experts[l]));
    cJSON_AddNumberToObject(o, "top_k", c->top_k);
    cJSON_AddBoolToObject(o, "norm_topk", c->norm_topk);
    cJSON_AddNumberToObject(o, "expert_ffn", c->expert_ffn);
    cJSON_AddNumberToObject(o, "shared_expert_ffn", c->shared_ffn);
    cJSON_AddNumberToObject(o, "dense_ffn", c->dense_ffn);
    int64_t total = moec_model_params(m);
    cJSON_AddNumberToObject(o, "params_total", (double)total);
    cJSON_AddNumberToObject(o, "params_active_per_token", (double)active_params(m));
    dtype_tally t;
    memset(&t, 0, sizeof t);
    moec_model_for_each_slot((moec_model *)m, tally_slot, &t, NULL);
    cJSON *dt = cJSON_AddObjectToObject(o, "dtypes");
    for (int i = 0; i < MOEC_DT_COUNT; i++)
        if (t.params[i])
            cJSON_AddNumberToObject(dt, moec_dtype_name((moec_dtype)i), (double)t.params[i]);
    const double bytes = (double)t.bytes;
    cJSON_AddNumberToObject(o, "weight_bytes", bytes);
    cJSON_AddNumberToObject(o, "file_bytes", (double)m->file_bytes);
    cJSON_AddNumberToObject(o, "bits_per_weight", total ? 8.0 * bytes / (double)total : 0.0);
    if (t.q_tensors) {
        cJSON *q = cJSON_AddObjectToObject(o, "quantized");
        cJSON_AddNumberToObject(q, "tensors", (double)t.q_tensors);
        cJSON_AddNumberToObject(q, "params", (double)t.q_params);
        cJSON_AddNumberToObject(q, "bytes", (double)t.q_bytes);
        cJSON_AddNumberToObject(q, "bits_per_weight", 8.0 * (double)t.q_bytes / (double)t.q_params);
    }
    add_factored(o, m);
    if (m->ct)
        add_container(o, m);
    return o;
}
