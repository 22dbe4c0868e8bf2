/* fuzz_config.c - libFuzzer target for config.json -> model description.
 *
 * Parses arbitrary text as a Hugging Face config.json (moec_config_parse_hf)
 * and, for every config accepted: counts its parameters, builds the empty
 * model it describes and walks its tensor slots (the table every reader
 * binds tensors through), as moec_model_open does once the file's tensor
 * count allows; then writes the config back (moec_config_to_hf_json, as
 * every compressed output does) and reads that again, which must give the
 * same description: a config moec writes must read back as it was.
 * Seeds in tests/fuzz/corpus/config. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "model/config.h"
#include "model/model.h"

/* Largest model the target builds; a real file with more tensors would be
 * larger than any fuzz input (moec_config_check_tensor_count guards the
 * readers the same way). */
#define MAX_SLOTS 2000

static moec_status count_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    if (!s->name[0] || s->shape[0] < 0 || s->shape[1] < 0)
        abort();
    (*(int64_t *)ctx)++;
    return MOEC_OK;
}

/* Aborts, naming the fields, when two descriptions differ. */
static void same_description(const moec_config *a, const moec_config *b)
{
    int differ = 0;
#define SAME(f)                                                                                 \
    if (a->f != b->f) {                                                                         \
        fprintf(stderr, "config written back reads differently: %s %g -> %g\n", #f, (double)a->f, \
                (double)b->f);                                                                  \
        differ = 1;                                                                             \
    }
    SAME(arch) SAME(vocab_size) SAME(hidden_size) SAME(n_layers) SAME(n_heads) SAME(n_kv_heads)
    SAME(head_dim) SAME(max_positions) SAME(rms_eps) SAME(rope_theta) SAME(dense_ffn) SAME(expert_ffn)
    SAME(shared_ffn) SAME(shared_gate) SAME(top_k) SAME(norm_topk) SAME(qkv_bias) SAME(qk_norm)
    SAME(tie_embeddings) SAME(bos_token_id) SAME(eos_token_id)
#undef SAME
    for (int l = 0; l < MOEC_MAX_LAYERS; l++)
        if (a->layer_experts[l] != b->layer_experts[l]) {
            fprintf(stderr, "config written back reads differently: layer %d experts %d -> %d\n", l,
                    a->layer_experts[l], b->layer_experts[l]);
            differ = 1;
        }
    if (differ)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    moec_config cfg;
    moec_err err;
    if (moec_config_parse_hf(&cfg, text, &err) != MOEC_OK) {
        free(text);
        return 0;
    }
    fuzz_sink ^= (uint8_t)moec_config_params_total(&cfg) ^ (uint8_t)moec_config_params_active(&cfg);
    fuzz_sink ^= (uint8_t)moec_config_uniform(&cfg);
    int64_t need = moec_config_tensor_count(&cfg);
    if (need <= MAX_SLOTS) {
        moec_model *m;
        if (moec_model_new_empty(&m, &cfg, &err) == MOEC_OK) {
            int64_t n = 0;
            moec_model_for_each_slot(m, count_slot, &n, &err);
            if (n != need) {
                fprintf(stderr, "slot table has %lld tensors, the count says %lld\n", (long long)n,
                        (long long)need);
                abort();
            }
            moec_model_close(m);
        }
    }
    char *json;
    if (moec_config_to_hf_json(&cfg, text, &json, &err) == MOEC_OK) {
        moec_config again;
        if (moec_config_parse_hf(&again, json, &err) != MOEC_OK) {
            fprintf(stderr, "config written back does not read: %s\n", err.msg);
            abort();
        }
        same_description(&cfg, &again);
        free(json);
    }
    free(text);
    return 0;
}
