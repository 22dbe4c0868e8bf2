#include "model/summary.h"

#include <string.h>

typedef struct {
    int64_t params[MOEC_DT_COUNT];
} dtype_tally;

static moec_status tally_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    dtype_tally *t = ctx;
    if (moec_tensor_present(s->t))
        t->params[s->t->dtype] += moec_tensor_numel(s->t);
    return MOEC_OK;
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
            per += moec_tensor_numel(&L->experts[e].w1) + moec_tensor_numel(&L->experts[e].w3) +
                   moec_tensor_numel(&L->experts[e].w2);
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
    uint64_t bytes = moec_model_bytes(m);
    cJSON_AddNumberToObject(o, "weight_bytes", (double)bytes);
    cJSON_AddNumberToObject(o, "file_bytes", (double)m->file_bytes);
    cJSON_AddNumberToObject(o, "bits_per_weight", total ? 8.0 * (double)bytes / (double)total : 0.0);
    return o;
}
