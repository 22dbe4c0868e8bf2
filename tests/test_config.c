/* HF config.json -> moec_config for each architecture, and the refusals. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "model/config.h"

static moec_config parse_ok(const char *json)
{
    moec_config c;
    moec_err err = {0};
    moec_status st = moec_config_parse_hf(&c, json, &err);
    if (st)
        fail_msg("%s", err.msg);
    return c;
}

static moec_status parse_err(const char *json, const char *needle)
{
    moec_config c;
    moec_err err = {0};
    moec_status st = moec_config_parse_hf(&c, json, &err);
    assert_int_not_equal(st, MOEC_OK);
    if (needle && !strstr(err.msg, needle))
        fail_msg("message '%s' does not mention '%s'", err.msg, needle);
    return st;
}

static void test_mixtral(void **state)
{
    (void)state;
    moec_config c;
    moec_err err = {0};
    assert_int_equal(moec_config_load_hf(&c, tu_src("models/mixtral-tiny/config.json"), &err), MOEC_OK);
    assert_int_equal(c.arch, MOEC_ARCH_MIXTRAL);
    assert_int_equal(c.n_layers, 4);
    assert_int_equal(c.hidden_size, 256);
    assert_int_equal(c.n_heads, 8);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.expert_ffn, 512);
    assert_int_equal(c.top_k, 2);
    assert_true(c.norm_topk);
    assert_int_equal(c.shared_ffn, 0);
    assert_int_equal(c.qk_norm, MOEC_QK_NORM_NONE);
    for (int l = 0; l < 4; l++)
        assert_int_equal(c.layer_experts[l], 8);
    assert_int_equal(moec_config_params_total(&c), 15476992); /* baselines.md */
}

static void test_qwen2moe(void **state)
{
    (void)state;
    moec_config c;
    moec_err err = {0};
    assert_int_equal(moec_config_load_hf(&c, tu_src("tests/fixtures/qwen2moe-random/config.json"), &err), MOEC_OK);
    assert_int_equal(c.arch, MOEC_ARCH_QWEN2_MOE);
    assert_true(c.qkv_bias);
    assert_int_equal(c.shared_ffn, 128);
    assert_true(c.shared_gate);
    assert_false(c.norm_topk);
    assert_int_equal(c.top_k, 4);
    assert_int_equal(c.expert_ffn, 32);
    assert_int_equal(c.head_dim, 16);
}

static void test_qwen3moe(void **state)
{
    (void)state;
    moec_config c;
    moec_err err = {0};
    assert_int_equal(moec_config_load_hf(&c, tu_src("tests/fixtures/qwen3moe-random/config.json"), &err), MOEC_OK);
    assert_int_equal(c.arch, MOEC_ARCH_QWEN3_MOE);
    assert_int_equal(c.head_dim, 32); /* explicit, != hidden / heads */
    assert_int_equal(c.qk_norm, MOEC_QK_NORM_HEAD);
    assert_true(c.norm_topk);
    assert_false(c.qkv_bias);
}

static void test_qwen_dense_layers(void **state)
{
    (void)state;
    moec_config c = parse_ok("{\"architectures\":[\"Qwen2MoeForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
                             "\"num_hidden_layers\":6,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
                             "\"intermediate_size\":16,\"moe_intermediate_size\":4,\"num_experts\":4,"
                             "\"num_experts_per_tok\":2,\"decoder_sparse_step\":2,\"mlp_only_layers\":[3]}");
    int want[6] = {0, 4, 0, 0, 0, 4}; /* (l+1) % 2 == 0 and l not in [3] */
    for (int l = 0; l < 6; l++)
        assert_int_equal(c.layer_experts[l], want[l]);
    assert_int_equal(c.dense_ffn, 16);
}

static void test_olmoe(void **state)
{
    (void)state;
    moec_config c = parse_ok("{\"architectures\":[\"OlmoeForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
                             "\"num_hidden_layers\":2,\"num_attention_heads\":2,\"intermediate_size\":4,"
                             "\"num_experts\":8,\"num_experts_per_tok\":2,\"clip_qkv\":null}");
    assert_int_equal(c.arch, MOEC_ARCH_OLMOE);
    assert_int_equal(c.qk_norm, MOEC_QK_NORM_FULL);
    assert_false(c.norm_topk);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.layer_experts[1], 8);
}

static void test_refusals(void **state)
{
    (void)state;
    assert_int_equal(parse_err("{\"architectures\":[\"GrokForCausalLM\"]}", "GrokForCausalLM"), MOEC_ERR_UNSUPPORTED);
    assert_int_equal(parse_err("{\"architectures\":[\"MixtralForCausalLM\"], \"hidden", "JSON"), MOEC_ERR_FORMAT);
    assert_int_equal(parse_err("[1,2]", "object"), MOEC_ERR_FORMAT);
    /* a valid Mixtral config with one key replaced or added */
    const char *base = "{\"architectures\":[\"MixtralForCausalLM\"],\"vocab_size\":10,\"num_hidden_layers\":2,"
                       "\"intermediate_size\":4,\"num_local_experts\":4";
    char buf[2048];
#define WITH(extra) (snprintf(buf, sizeof buf, "%s,%s}", base, extra), buf)
    const char *ok = ",\"hidden_size\":8,\"num_attention_heads\":2,\"num_experts_per_tok\":2";
    char okbuf[512];
    snprintf(okbuf, sizeof okbuf, "%s", ok + 1);
    parse_ok(WITH(okbuf));
    char extra[1024];
    snprintf(extra, sizeof extra, "%s,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}", okbuf);
    assert_int_equal(parse_err(WITH(extra), "rope_scaling"), MOEC_ERR_UNSUPPORTED);
    snprintf(extra, sizeof extra, "%s,\"hidden_act\":\"gelu\"", okbuf);
    assert_int_equal(parse_err(WITH(extra), "gelu"), MOEC_ERR_UNSUPPORTED);
    snprintf(extra, sizeof extra, "%s,\"sliding_window\":16", okbuf);
    assert_int_equal(parse_err(WITH(extra), "sliding_window"), MOEC_ERR_UNSUPPORTED);
    parse_err(WITH("\"hidden_size\":8,\"num_attention_heads\":3,\"num_key_value_heads\":2,\"num_experts_per_tok\":2"),
              "num_attention_heads");
    assert_int_equal(parse_err(WITH("\"hidden_size\":-8,\"num_attention_heads\":2,\"num_experts_per_tok\":2"),
                               "hidden_size"),
                     MOEC_ERR_FORMAT);
    parse_err(WITH("\"hidden_size\":8,\"num_attention_heads\":2,\"num_experts_per_tok\":5"), "num_experts_per_tok");
    snprintf(extra, sizeof extra, "%s,\"moec_layer_experts\":[4]", okbuf);
    parse_err(WITH(extra), "moec_layer_experts");
#undef WITH
    parse_err("{\"architectures\":[\"MixtralForCausalLM\"]}", "vocab_size");
}

static void test_nonuniform_round_trip(void **state)
{
    (void)state;
    char *orig = tu_read_file(tu_src("models/mixtral-tiny/config.json"), NULL);
    moec_config c = parse_ok(orig);
    c.layer_experts[0] = 6;
    c.layer_experts[2] = 5;
    assert_false(moec_config_uniform(&c));
    char *out;
    moec_err err = {0};
    assert_int_equal(moec_config_to_hf_json(&c, orig, &out, &err), MOEC_OK);
    moec_config back = parse_ok(out);
    assert_int_equal(back.layer_experts[0], 6);
    assert_int_equal(back.layer_experts[1], 8);
    assert_int_equal(back.layer_experts[2], 5);
    assert_non_null(strstr(out, "\"initializer_range\"")); /* unknown keys kept */
    free(out);
    /* uniform: no extension key, plain num_local_experts */
    c = parse_ok(orig);
    for (int l = 0; l < 4; l++)
        c.layer_experts[l] = 6;
    assert_int_equal(moec_config_to_hf_json(&c, orig, &out, &err), MOEC_OK);
    assert_null(strstr(out, "moec_layer_experts"));
    back = parse_ok(out);
    assert_int_equal(back.n_experts, 6);
    free(out);
    free(orig);
}

/* Found by fuzzing (tests/fuzz/regress/config): keys written back must read
 * back as written, whatever the original's spelling and repetitions. */
static void test_writer_with_odd_originals(void **state)
{
    (void)state;
    moec_err err = {0};
    char *out;
    /* a key differing only in case: cJSON's case-blind lookup once made the
     * update fail (leaking the value and leaving the real key stale) */
    const char *odd = "{\"architectures\":[\"OlmoeForCausalLM\"],\"vocab_size\":50,\"hidden_size\":16,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"intermediate_size\":8,"
                      "\"num_experts\":4,\"Num_experts_per_tok\":3,\"num_experts_per_tok\":2}";
    moec_config c = parse_ok(odd);
    assert_int_equal(c.top_k, 2);
    c.top_k = 3;
    assert_int_equal(moec_config_to_hf_json(&c, odd, &out, &err), MOEC_OK);
    assert_int_equal(parse_ok(out).top_k, 3);
    free(out);
    /* a repeated key: readers take the first; the writer must update that one
     * and not expose the second */
    const char *rep = "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":50,\"hidden_size\":16,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"moe_intermediate_size\":8,"
                      "\"num_experts\":4,\"norm_topk_prob\":false,\"norm_topk_prob\":true,"
                      "\"moec_layer_experts\":[4,4],\"moec_layer_experts\":[2,3]}";
    c = parse_ok(rep);
    assert_false(c.norm_topk);
    assert_int_equal(moec_config_to_hf_json(&c, rep, &out, &err), MOEC_OK);
    moec_config back = parse_ok(out);
    assert_false(back.norm_topk);
    assert_int_equal(back.layer_experts[0], 4);
    assert_int_equal(back.layer_experts[1], 4);
    free(out);
}

/* Values whose conversion to int was undefined, and sizes whose product
 * overflowed int64. */
static void test_hostile_numbers(void **state)
{
    (void)state;
    const char *base = "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":50,\"hidden_size\":16,"
                       "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"moe_intermediate_size\":8,"
                       "\"num_experts\":4,";
    char buf[1024];
    snprintf(buf, sizeof buf, "%s\"bos_token_id\":2.7e81,\"eos_token_id\":[1e300],\"mlp_only_layers\":[1e300,-1e300]}",
             base);
    moec_config c = parse_ok(buf);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
    assert_int_equal(c.layer_experts[0], 4);
    snprintf(buf, sizeof buf, "%s\"moec_layer_experts\":[2.5,4]}", base);
    parse_err(buf, "moec_layer_experts");
    /* 10^9 experts */
    parse_err("{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":50,\"hidden_size\":16,"
              "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"moe_intermediate_size\":8,"
              "\"num_experts\":1000000000}",
              "num_experts");
    /* the largest sizes each key allows: the parameter count saturates */
    const char *big = "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":16777216,"
                      "\"hidden_size\":1048576,\"num_hidden_layers\":256,\"num_attention_heads\":4096,"
                      "\"head_dim\":4096,\"moe_intermediate_size\":1048576,\"num_experts\":65536}";
    c = parse_ok(big);
    assert_true(moec_config_params_total(&c) == INT64_MAX);
    assert_true(moec_config_params_active(&c) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixtral),       cmocka_unit_test(test_qwen2moe),
        cmocka_unit_test(test_qwen3moe),      cmocka_unit_test(test_qwen_dense_layers),
        cmocka_unit_test(test_olmoe),         cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_nonuniform_round_trip),
        cmocka_unit_test(test_writer_with_odd_originals),
        cmocka_unit_test(test_hostile_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
