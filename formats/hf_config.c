/* hf_config.c - Hugging Face config.json <-> moec_config.
 *
 * Each supported architecture is a row of flags here; everything the
 * executor needs to know about an architecture is decided in this file.
 */
#include "model/config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/fsutil.h"

static const struct {
    const char *hf_name;
    const char *model_type;
} arch_names[MOEC_ARCH_COUNT] = {
    [MOEC_ARCH_MIXTRAL] = {"MixtralForCausalLM", "mixtral"},
    [MOEC_ARCH_QWEN2_MOE] = {"Qwen2MoeForCausalLM", "qwen2_moe"},
    [MOEC_ARCH_QWEN3_MOE] = {"Qwen3MoeForCausalLM", "qwen3_moe"},
    [MOEC_ARCH_OLMOE] = {"OlmoeForCausalLM", "olmoe"},
};

const char *moec_arch_name(moec_arch a)
{
    return (unsigned)a < MOEC_ARCH_COUNT ? arch_names[a].hf_name : "?";
}

const char *moec_arch_model_type(moec_arch a)
{
    return (unsigned)a < MOEC_ARCH_COUNT ? arch_names[a].model_type : "?";
}

bool moec_config_uniform(const moec_config *c)
{
    int first = -1;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->layer_experts[l] == 0)
            continue;
        if (first < 0)
            first = c->layer_experts[l];
        else if (c->layer_experts[l] != first)
            return false;
    }
    return true;
}

/* ---- typed field readers: each names the key on error ---- */

typedef struct {
    const cJSON *root;
    moec_err *err;
    moec_status st;
} reader;

static const cJSON *field(reader *r, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static int get_int(reader *r, const char *key, int dflt, bool required, int lo, int hi)
{
    const cJSON *v = field(r, key);
    if (!v) {
        if (required && r->st == MOEC_OK)
            r->st = moec_err_set(r->err, MOEC_ERR_FORMAT, "config.json: missing required key \"%s\"", key);
        return dflt;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        if (r->st == MOEC_OK)
            r->st = moec_err_set(r->err, MOEC_ERR_FORMAT,
                                 "config.json: \"%s\" must be an integer in [%d, %d]", key, lo, hi);
        return dflt;
    }
    return (int)v->valuedouble;
}

static double get_num(reader *r, const char *key, double dflt, double lo, double hi)
{
    const cJSON *v = field(r, key);
    if (!v)
        return dflt;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        if (r->st == MOEC_OK)
            r->st = moec_err_set(r->err, MOEC_ERR_FORMAT, "config.json: \"%s\" must be a number in [%g, %g]",
                                 key, lo, hi);
        return dflt;
    }
    return v->valuedouble;
}

static bool get_bool(reader *r, const char *key, bool dflt)
{
    const cJSON *v = field(r, key);
    if (!v)
        return dflt;
    if (!cJSON_IsBool(v)) {
        if (r->st == MOEC_OK)
            r->st = moec_err_set(r->err, MOEC_ERR_FORMAT, "config.json: \"%s\" must be true or false", key);
        return dflt;
    }
    return cJSON_IsTrue(v);
}

static int get_token_id(reader *r, const char *key)
{
    const cJSON *v = field(r, key);
    if (v && cJSON_IsArray(v)) /* some configs list several eos ids: keep the first */
        v = cJSON_GetArrayItem(v, 0);
    /* ids are informational here: anything but an int-sized non-negative
     * integer counts as none (and is never cast out of range) */
    if (!v || !cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 2147483647.0) ||
        v->valuedouble != floor(v->valuedouble))
        return -1;
    return (int)v->valuedouble;
}

static moec_status refuse_if_set(reader *r, const char *key, const char *why)
{
    const cJSON *v = field(r, key);
    if (!v || (cJSON_IsBool(v) && !cJSON_IsTrue(v)))
        return MOEC_OK;
    return moec_err_set(r->err, MOEC_ERR_UNSUPPORTED, "config.json: \"%s\" is set; %s", key, why);
}

static moec_status parse_arch(reader *r, moec_config *cfg)
{
    const cJSON *archs = field(r, "architectures");
    const char *name = NULL;
    if (cJSON_IsArray(archs) && cJSON_GetArraySize(archs) > 0 &&
        cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        name = cJSON_GetArrayItem(archs, 0)->valuestring;
    const cJSON *mt = field(r, "model_type");
    for (int a = 0; a < MOEC_ARCH_COUNT; a++) {
        if ((name && strcmp(name, arch_names[a].hf_name) == 0) ||
            (!name && cJSON_IsString(mt) && strcmp(mt->valuestring, arch_names[a].model_type) == 0)) {
            cfg->arch = (moec_arch)a;
            return MOEC_OK;
        }
    }
    if (name)
        return moec_err_set(r->err, MOEC_ERR_UNSUPPORTED,
                            "config.json: architecture %s is not supported (supported: MixtralForCausalLM, "
                            "Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM)",
                            name);
    return moec_err_set(r->err, MOEC_ERR_FORMAT,
                        "config.json: no \"architectures\" entry and no known \"model_type\"");
}

/* Is layer l an MoE layer under Qwen's decoder_sparse_step / mlp_only_layers rule? */
static bool qwen_layer_is_moe(const cJSON *mlp_only, int step, int n_experts, int l)
{
    if (cJSON_IsArray(mlp_only)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, mlp_only) if (cJSON_IsNumber(it) && it->valuedouble == (double)l) return false;
    }
    return n_experts > 0 && step > 0 && (l + 1) % step == 0;
}

moec_status moec_config_parse_hf(moec_config *cfg, const char *json_text, moec_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_Parse(json_text);
    if (!root)
        return moec_err_set(err, MOEC_ERR_FORMAT, "config.json: not valid JSON (near \"%.20s\")",
                            cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moec_err_set(err, MOEC_ERR_FORMAT, "config.json: top level is not a JSON object");
    }
    reader r = {root, err, MOEC_OK};
    moec_status st = parse_arch(&r, cfg);
    if (st != MOEC_OK)
        goto done;

    cfg->vocab_size = get_int(&r, "vocab_size", 0, true, 1, 1 << 24);
    cfg->hidden_size = get_int(&r, "hidden_size", 0, true, 1, 1 << 20);
    cfg->n_layers = get_int(&r, "num_hidden_layers", 0, true, 1, MOEC_MAX_LAYERS);
    cfg->n_heads = get_int(&r, "num_attention_heads", 0, true, 1, 1 << 12);
    cfg->n_kv_heads = get_int(&r, "num_key_value_heads", cfg->n_heads, false, 1, 1 << 12);
    cfg->max_positions = get_int(&r, "max_position_embeddings", 4096, false, 1, 1 << 24);
    cfg->rms_eps = (float)get_num(&r, "rms_norm_eps", 1e-6, 0, 1);
    cfg->rope_theta = (float)get_num(&r, "rope_theta", 10000.0, 1e-3, 1e12);
    cfg->tie_embeddings = get_bool(&r, "tie_word_embeddings", false);
    cfg->bos_token_id = get_token_id(&r, "bos_token_id");
    cfg->eos_token_id = get_token_id(&r, "eos_token_id");
    if (r.st != MOEC_OK) {
        st = r.st;
        goto done;
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0) {
        st = moec_err_set(err, MOEC_ERR_FORMAT,
                          "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                          cfg->n_heads, cfg->n_kv_heads);
        goto done;
    }
    int default_hd = cfg->hidden_size / cfg->n_heads;
    cfg->head_dim = get_int(&r, "head_dim", default_hd, false, 2, 1 << 12);
    if (cfg->head_dim % 2) {
        st = moec_err_set(err, MOEC_ERR_FORMAT, "config.json: head_dim %d is odd; RoPE needs pairs",
                          cfg->head_dim);
        goto done;
    }

    /* options moec does not implement: refuse by name rather than compute wrongly */
    if ((st = refuse_if_set(&r, "rope_scaling", "RoPE scaling is not supported by moec")) ||
        (st = refuse_if_set(&r, "clip_qkv", "q/k/v clipping is not supported by moec")) ||
        (st = refuse_if_set(&r, "use_sliding_window", "sliding-window attention is not supported by moec")))
        goto done;
    const cJSON *act = field(&r, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0)) {
        st = moec_err_set(err, MOEC_ERR_UNSUPPORTED, "config.json: hidden_act \"%s\" is not supported (only silu)",
                          cJSON_IsString(act) ? act->valuestring : "?");
        goto done;
    }

    int n_experts = 0, sparse_step = 1;
    const cJSON *mlp_only = NULL;
    switch (cfg->arch) {
    case MOEC_ARCH_MIXTRAL: {
        n_experts = get_int(&r, "num_local_experts", 8, false, 1, 1 << 16);
        cfg->expert_ffn = get_int(&r, "intermediate_size", 0, true, 1, 1 << 20);
        cfg->norm_topk = true;
        /* Mixtral applies a sliding window only when one is configured shorter than the context */
        int sw = get_int(&r, "sliding_window", 0, false, 0, 1 << 30);
        if (sw > 0 && sw < cfg->max_positions) {
            st = moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                              "config.json: \"sliding_window\" %d < max_position_embeddings; "
                              "sliding-window attention is not supported by moec",
                              sw);
            goto done;
        }
        break;
    }
    case MOEC_ARCH_QWEN2_MOE:
    case MOEC_ARCH_QWEN3_MOE:
        n_experts = get_int(&r, "num_experts", 0, true, 0, 1 << 16);
        cfg->expert_ffn = get_int(&r, "moe_intermediate_size", 0, true, 1, 1 << 20);
        cfg->dense_ffn = get_int(&r, "intermediate_size", 0, false, 0, 1 << 20);
        cfg->norm_topk = get_bool(&r, "norm_topk_prob", false);
        sparse_step = get_int(&r, "decoder_sparse_step", 1, false, 1, 1 << 16);
        mlp_only = field(&r, "mlp_only_layers");
        if (cfg->arch == MOEC_ARCH_QWEN2_MOE) {
            cfg->qkv_bias = true;
            cfg->shared_ffn = get_int(&r, "shared_expert_intermediate_size", 0, false, 0, 1 << 20);
            cfg->shared_gate = cfg->shared_ffn > 0;
        } else {
            cfg->qk_norm = MOEC_QK_NORM_HEAD;
            if ((st = refuse_if_set(&r, "attention_bias", "attention biases in Qwen3-MoE are not supported")))
                goto done;
        }
        break;
    case MOEC_ARCH_OLMOE:
        n_experts = get_int(&r, "num_experts", 0, true, 1, 1 << 16);
        cfg->expert_ffn = get_int(&r, "intermediate_size", 0, true, 1, 1 << 20);
        cfg->norm_topk = get_bool(&r, "norm_topk_prob", false);
        cfg->qk_norm = MOEC_QK_NORM_FULL;
        if ((st = refuse_if_set(&r, "attention_bias", "attention biases in OLMoE are not supported")))
            goto done;
        break;
    case MOEC_ARCH_COUNT:
        break;
    }
    cfg->n_experts = n_experts;
    cfg->top_k = get_int(&r, "num_experts_per_tok", 2, false, 1, 1 << 16);
    if (r.st != MOEC_OK) {
        st = r.st;
        goto done;
    }

    for (int l = 0; l < cfg->n_layers; l++)
        cfg->layer_experts[l] = (cfg->arch == MOEC_ARCH_QWEN2_MOE || cfg->arch == MOEC_ARCH_QWEN3_MOE)
                                    ? (qwen_layer_is_moe(mlp_only, sparse_step, n_experts, l) ? n_experts : 0)
                                    : n_experts;

    /* moec extension: per-layer expert counts after non-uniform pruning */
    const cJSON *per_layer = field(&r, "moec_layer_experts");
    if (per_layer) {
        if (!cJSON_IsArray(per_layer) || cJSON_GetArraySize(per_layer) != cfg->n_layers) {
            st = moec_err_set(err, MOEC_ERR_FORMAT,
                              "config.json: \"moec_layer_experts\" must be a list of %d integers", cfg->n_layers);
            goto done;
        }
        for (int l = 0; l < cfg->n_layers; l++) {
            const cJSON *v = cJSON_GetArrayItem(per_layer, l);
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > n_experts ||
                v->valuedouble != floor(v->valuedouble) ||
                (v->valuedouble == 0) != (cfg->layer_experts[l] == 0)) {
                st = moec_err_set(err, MOEC_ERR_FORMAT,
                                  "config.json: \"moec_layer_experts\"[%d] must be in [1, %d] for an MoE layer "
                                  "and 0 for a dense one",
                                  l, n_experts);
                goto done;
            }
            cfg->layer_experts[l] = (int)v->valuedouble;
        }
    }

    bool any_dense = false;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (cfg->layer_experts[l] == 0)
            any_dense = true;
        else if (cfg->top_k > cfg->layer_experts[l]) {
            st = moec_err_set(err, MOEC_ERR_FORMAT,
                              "config.json: num_experts_per_tok %d exceeds the %d experts of layer %d", cfg->top_k,
                              cfg->layer_experts[l], l);
            goto done;
        }
    }
    if (any_dense && cfg->dense_ffn <= 0) {
        st = moec_err_set(err, MOEC_ERR_FORMAT, "config.json: dense layers need \"intermediate_size\"");
        goto done;
    }
    st = MOEC_OK;
done:
    cJSON_Delete(root);
    return st;
}

moec_status moec_config_load_hf(moec_config *cfg, const char *path, moec_err *err)
{
    char *buf;
    size_t len;
    moec_status st = moec_read_file(path, (size_t)64 << 20, &buf, &len, err);
    if (st)
        return st;
    st = moec_config_parse_hf(cfg, buf, err);
    free(buf);
    if (st != MOEC_OK)
        moec_err_prefix(err, "%s", path);
    return st;
}

/* Sets key to v, replacing the value under exactly this key. (cJSON's
 * HasObjectItem ignores case: with "Num_experts" in the original, replacing
 * "num_experts" would fail, leak the number and leave the key unwritten.) */
static cJSON *set_number(cJSON *root, const char *key, double v)
{
    cJSON *n = cJSON_CreateNumber(v);
    if (!n)
        return NULL;
    bool ok = cJSON_GetObjectItemCaseSensitive(root, key) ? cJSON_ReplaceItemInObjectCaseSensitive(root, key, n)
                                                         : cJSON_AddItemToObject(root, key, n);
    if (!ok) {
        cJSON_Delete(n);
        return NULL;
    }
    return n;
}

/* Sets key to a boolean, replacing the first value under exactly this key
 * (the one readers take when a file repeats a key). */
static cJSON *set_bool(cJSON *root, const char *key, bool v)
{
    cJSON *n = cJSON_CreateBool(v);
    if (!n)
        return NULL;
    bool ok = cJSON_GetObjectItemCaseSensitive(root, key) ? cJSON_ReplaceItemInObjectCaseSensitive(root, key, n)
                                                         : cJSON_AddItemToObject(root, key, n);
    if (!ok) {
        cJSON_Delete(n);
        return NULL;
    }
    return n;
}

/* Removes every value under key: deleting only the first would let a
 * repeated key's second value become the one readers see. */
static void delete_all(cJSON *root, const char *key)
{
    while (cJSON_GetObjectItemCaseSensitive(root, key))
        cJSON_DeleteItemFromObjectCaseSensitive(root, key);
}

moec_status moec_config_to_hf_json(const moec_config *cfg, const char *original, char **out_json, moec_err *err)
{
    *out_json = NULL;
    cJSON *root = original ? cJSON_Parse(original) : cJSON_CreateObject();
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moec_err_set(err, MOEC_ERR_FORMAT, "config.json: original text is not a JSON object");
    }
    if (!original) {
        cJSON *archs = cJSON_AddArrayToObject(root, "architectures");
        cJSON_AddItemToArray(archs, cJSON_CreateString(moec_arch_name(cfg->arch)));
        cJSON_AddStringToObject(root, "model_type", moec_arch_model_type(cfg->arch));
        set_number(root, "vocab_size", cfg->vocab_size);
        set_number(root, "hidden_size", cfg->hidden_size);
        set_number(root, "num_attention_heads", cfg->n_heads);
        set_number(root, "num_key_value_heads", cfg->n_kv_heads);
        set_number(root, "head_dim", cfg->head_dim);
        set_number(root, "max_position_embeddings", cfg->max_positions);
        set_number(root, "rms_norm_eps", cfg->rms_eps);
        set_number(root, "rope_theta", cfg->rope_theta);
        cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg->tie_embeddings);
        cJSON_AddStringToObject(root, "hidden_act", "silu");
    }
    set_number(root, "num_hidden_layers", cfg->n_layers); /* a slice of a model has fewer */
    int max_e = 0;
    for (int l = 0; l < cfg->n_layers; l++)
        if (cfg->layer_experts[l] > max_e)
            max_e = cfg->layer_experts[l];
    set_number(root, cfg->arch == MOEC_ARCH_MIXTRAL ? "num_local_experts" : "num_experts", max_e);
    set_number(root, "num_experts_per_tok", cfg->top_k);
    if (cfg->arch == MOEC_ARCH_MIXTRAL) {
        set_number(root, "intermediate_size", cfg->expert_ffn);
    } else if (cfg->arch == MOEC_ARCH_OLMOE) {
        set_number(root, "intermediate_size", cfg->expert_ffn);
        set_bool(root, "norm_topk_prob", cfg->norm_topk);
    } else {
        set_number(root, "moe_intermediate_size", cfg->expert_ffn);
        set_bool(root, "norm_topk_prob", cfg->norm_topk);
        if (cfg->arch == MOEC_ARCH_QWEN2_MOE)
            set_number(root, "shared_expert_intermediate_size", cfg->shared_ffn);
    }
    delete_all(root, "moec_layer_experts");
    if (!moec_config_uniform(cfg)) {
        cJSON *arr = cJSON_AddArrayToObject(root, "moec_layer_experts");
        for (int l = 0; l < cfg->n_layers; l++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(cfg->layer_experts[l]));
    }
    *out_json = cJSON_Print(root);
    cJSON_Delete(root);
    if (!*out_json)
        return moec_err_set(err, MOEC_ERR_NOMEM, "config.json: out of memory");
    return MOEC_OK;
}

/* Counted in double: a config's sizes are bounded one by one, but their
 * product (2^20 hidden x 2^20 FFN x 2^16 experts x 256 layers) would
 * overflow int64; real models stay far below 2^53, where doubles are exact. */
static double ffn_params(double d, double f) { return 3 * d * f; }

static double layer_params(const moec_config *c, int l, bool active)
{
    double d = c->hidden_size, hd = c->head_dim;
    double q = (double)c->n_heads * hd, kv = (double)c->n_kv_heads * hd;
    double n = 2 * d;                   /* two RMSNorms */
    n += d * q + 2 * d * kv + q * d;    /* q, k, v, o */
    if (c->qkv_bias)
        n += q + 2 * kv;
    if (c->qk_norm == MOEC_QK_NORM_HEAD)
        n += 2 * hd;
    else if (c->qk_norm == MOEC_QK_NORM_FULL)
        n += q + kv;
    int e = c->layer_experts[l];
    if (e == 0)
        return n + ffn_params(d, c->dense_ffn);
    n += (double)e * d; /* router */
    n += (active ? (e < c->top_k ? e : c->top_k) : e) * ffn_params(d, c->expert_ffn);
    if (c->shared_ffn > 0)
        n += ffn_params(d, c->shared_ffn) + (c->shared_gate ? d : 0);
    return n;
}

static int64_t params(const moec_config *c, bool active)
{
    double n = (double)c->vocab_size * c->hidden_size * (c->tie_embeddings ? 1 : 2) + c->hidden_size;
    for (int l = 0; l < c->n_layers && l < MOEC_MAX_LAYERS; l++)
        n += layer_params(c, l, active);
    return n < 9.2e18 ? (int64_t)n : INT64_MAX;
}

int64_t moec_config_params_total(const moec_config *c) { return params(c, false); }
int64_t moec_config_params_active(const moec_config *c) { return params(c, true); }
