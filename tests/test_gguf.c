/* test_gguf.c - GGUF export (formats/gguf_export.c, gguf_vocab.c) read back
 * by moec's own reader (formats/gguf_read.c): metadata, tensor layouts
 * (experts stacked, Mixtral's q/k rows permuted for llama.cpp's RoPE),
 * llama.cpp blocks copied byte for byte, group-wise codes carried bit for
 * bit; unsupported models and damaged files fail with one clear error and
 * leave no file. Models are built in memory with random weights. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/dtype.h"
#include "core/ggml_blocks.h"
#include "core/qformat.h"
#include "formats/gguf.h"
#include "formats/gguf_export.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "quant/kquant_grid.h"
#include "quant/rtn.h"

#define TOKENIZER "tests/fixtures/qwen3moe-random/tokenizer.json"

#define MIXTRAL_CFG(vocab, bos, eos) \
    "{\"architectures\": [\"MixtralForCausalLM\"], \"model_type\": \"mixtral\", \"vocab_size\": " #vocab ","     \
    " \"hidden_size\": 64, \"intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"          \
    " \"num_key_value_heads\": 2, \"head_dim\": 16, \"hidden_act\": \"silu\", \"max_position_embeddings\": 128,"   \
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"num_local_experts\": 4, \"num_experts_per_tok\": 2," \
    " \"tie_word_embeddings\": false, \"bos_token_id\": " #bos ", \"eos_token_id\": " #eos "}"
static const char mixtral_cfg[] = MIXTRAL_CFG(4096, 4095, 4095);

/* hidden 256 and expert FFN 256 so that every matrix holds whole 256-blocks */
static const char qwen3_cfg[] =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", \"vocab_size\": 4096,"
    " \"hidden_size\": 256, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
    " \"head_dim\": 64, \"intermediate_size\": 768, \"moe_intermediate_size\": 256, \"num_experts\": 4,"
    " \"num_experts_per_tok\": 2, \"norm_topk_prob\": true, \"hidden_act\": \"silu\","
    " \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0,"
    " \"tie_word_embeddings\": false, \"bos_token_id\": 4095, \"eos_token_id\": 4095}";

static moec_status fill_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    moec_model *m = ctx;
    if (s->optional)
        return MOEC_OK;
    moec_status st = moec_model_new_tensor(m, s->t, MOEC_DT_F32, s->shape[0], s->ndim == 2 ? s->shape[1] : 0, err);
    if (st)
        return st;
    float *p = (float *)s->t->data;
    for (int64_t i = 0; i < moec_tensor_numel(s->t); i++)
        p[i] = tu_frand() * 0.1f;
    return MOEC_OK;
}

/* A random F32 model of the config, with the fixtures' tokenizer. */
static moec_model *make_model(const char *config, const char *tokenizer)
{
    moec_config cfg;
    moec_model *m;
    moec_err err = {0};
    if (moec_config_parse_hf(&cfg, config, &err) || moec_model_new_empty(&m, &cfg, &err))
        fail_msg("%s", err.msg);
    m->config_json = strdup(config);
    m->tokenizer_json = tu_read_file(tu_src(tokenizer), &m->tokenizer_json_len);
    if (moec_model_for_each_slot(m, fill_slot, m, &err))
        fail_msg("%s", err.msg);
    if (m->cfg.tie_embeddings)
        m->lm_head = m->embed;
    return m;
}

static void save(const moec_model *m, const char *path, int type, moec_gguf_export_report *rep)
{
    moec_gguf_export_opts o = MOEC_GGUF_EXPORT_OPTS_DEFAULT;
    o.type = type;
    moec_err err = {0};
    if (moec_model_save_gguf(m, path, &o, rep, &err))
        fail_msg("%s", err.msg);
}

static moec_gguf *reopen(const char *path)
{
    moec_gguf *g;
    moec_err err = {0};
    if (moec_gguf_open(path, &g, &err))
        fail_msg("%s", err.msg);
    return g;
}

static uint32_t u32(const moec_gguf *g, const char *key)
{
    uint32_t v = 0;
    assert_true(moec_gguf_get_u32(g, key, &v));
    return v;
}

static int32_t arr_i32(const moec_gguf *g, const char *key, uint64_t i)
{
    int32_t v = -1;
    assert_true(moec_gguf_arr_get(g, key, i, &v));
    return v;
}

static void expect_str(const moec_gguf *g, const char *key, const char *want)
{
    const char *s;
    size_t n;
    assert_true(moec_gguf_get_str(g, key, &s, &n));
    assert_int_equal(n, strlen(want));
    assert_memory_equal(s, want, n);
}

/* Mixtral as llama.cpp's "llama": keys, tokenizer, tensor list, q/k rows
 * permuted, experts stacked [E][out][in] (ne = {in, out, E}). */
static void test_mixtral_layout(void **state)
{
    (void)state;
    moec_model *m = make_model(mixtral_cfg, TOKENIZER);
    char path[4200];
    snprintf(path, sizeof path, "%s/m.gguf", tu_tmpdir());
    moec_gguf_export_report rep;
    save(m, path, MOEC_GGML_F32, &rep);
    assert_string_equal(rep.arch, "llama");
    assert_string_equal(rep.tokenizer, "gpt2/qwen2");
    moec_gguf *g = reopen(path);
    assert_int_equal(moec_gguf_version(g), 3);
    expect_str(g, "general.architecture", "llama");
    assert_int_equal(u32(g, "llama.block_count"), 2);
    assert_int_equal(u32(g, "llama.embedding_length"), 64);
    assert_int_equal(u32(g, "llama.feed_forward_length"), 32);
    assert_int_equal(u32(g, "llama.attention.head_count"), 4);
    assert_int_equal(u32(g, "llama.attention.head_count_kv"), 2);
    assert_int_equal(u32(g, "llama.rope.dimension_count"), 16);
    assert_int_equal(u32(g, "llama.expert_count"), 4);
    assert_int_equal(u32(g, "llama.expert_used_count"), 2);
    assert_int_equal(u32(g, "general.file_type"), 0);
    float f;
    assert_true(moec_gguf_get_f32(g, "llama.rope.freq_base", &f) && f == 10000.0f);
    assert_true(moec_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) && f == 1e-5f);
    expect_str(g, "tokenizer.ggml.model", "gpt2");
    expect_str(g, "tokenizer.ggml.pre", "qwen2");
    moec_gguf_type et;
    uint64_t n;
    assert_true(moec_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n) && et == MOEC_GGUF_STRING && n == 4096);
    assert_true(moec_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n) && et == MOEC_GGUF_STRING && n == 3839);
    assert_true(moec_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n) && et == MOEC_GGUF_I32 && n == 4096);
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 4095), 3); /* <|endoftext|>: special = control */
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 100), 1);
    const char *s;
    size_t len;
    assert_true(moec_gguf_arr_str(g, "tokenizer.ggml.tokens", 4095, &s, &len));
    assert_int_equal(len, 13);
    assert_memory_equal(s, "<|endoftext|>", 13);
    assert_int_equal(u32(g, "tokenizer.ggml.eos_token_id"), 4095);
    bool b;
    assert_true(moec_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) && !b);
    /* token_embd, 2 x (attn_norm, q, k, v, o, ffn_norm, gate_inp, 3 x exps), output_norm, output */
    assert_int_equal(moec_gguf_tensor_count(g), 23);

    const moec_gguf_tensor *t = moec_gguf_find_tensor(g, "blk.1.attn_q.weight");
    assert_non_null(t);
    assert_int_equal(t->type, MOEC_GGML_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 64);
    /* head h, pair i, member j of llama's row h·16 + 2i + j is HF's row h·16 + 8j + i */
    const float *q = t->data, *src = m->layers[1].wq.data;
    for (int h = 0; h < 4; h++)
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 2; j++)
                assert_memory_equal(q + (h * 16 + 2 * i + j) * 64, src + (h * 16 + 8 * j + i) * 64, 64 * sizeof *q);
    t = moec_gguf_find_tensor(g, "blk.0.attn_k.weight");
    assert_int_equal(t->ne[1], 32);
    const float *k = t->data, *ksrc = m->layers[0].wk.data;
    assert_memory_equal(k + 1 * 64, ksrc + 8 * 64, 64 * sizeof *k); /* head 0, i 0, j 1 */
    assert_memory_equal(k + 19 * 64, ksrc + (16 + 8 + 1) * 64, 64 * sizeof *k); /* head 1, i 1, j 1 */
    t = moec_gguf_find_tensor(g, "blk.0.attn_v.weight"); /* v is not permuted */
    assert_memory_equal(t->data, m->layers[0].wv.data, 32 * 64 * sizeof(float));

    t = moec_gguf_find_tensor(g, "blk.1.ffn_down_exps.weight");
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->ne[0], 32);
    assert_int_equal(t->ne[1], 64);
    assert_int_equal(t->ne[2], 4);
    for (int e = 0; e < 4; e++)
        assert_memory_equal((const float *)t->data + e * 64 * 32, m->layers[1].experts[e].w2.data,
                            64 * 32 * sizeof(float));
    t = moec_gguf_find_tensor(g, "blk.0.ffn_gate_inp.weight");
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 4);
    assert_memory_equal(t->data, m->layers[0].router.data, 4 * 64 * sizeof(float));
    t = moec_gguf_find_tensor(g, "output.weight");
    assert_memory_equal(t->data, m->lm_head.data, 4096 * 64 * sizeof(float));
    moec_gguf_close(g);

    /* F16 halves the matrices; norms and routers stay F32 */
    save(m, path, MOEC_GGML_F16, &rep);
    g = reopen(path);
    assert_int_equal(moec_gguf_find_tensor(g, "blk.0.attn_v.weight")->type, MOEC_GGML_F16);
    assert_int_equal(moec_gguf_find_tensor(g, "blk.0.ffn_gate_inp.weight")->type, MOEC_GGML_F32);
    assert_int_equal(moec_gguf_find_tensor(g, "blk.0.attn_norm.weight")->type, MOEC_GGML_F32);
    const uint16_t *h16 = moec_gguf_find_tensor(g, "blk.0.attn_v.weight")->data;
    assert_int_equal(h16[5], moec_f32_to_f16(((const float *)m->layers[0].wv.data)[5]));
    assert_int_equal(u32(g, "general.file_type"), 1);
    moec_gguf_close(g);
    moec_model_close(m);
}

static void quant_rtn(moec_model *m, moec_tensor *t, int bits, bool sym)
{
    moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
    o.bits = bits;
    o.group = 32;
    o.symmetric = sym;
    moec_qmatrix q;
    moec_err err = {0};
    if (moec_rtn_quantize(t->data, t->shape[0], t->shape[1], &o, "t", &q, &err) ||
        moec_model_set_quant(m, t, &q.f, "t", &err))
        fail_msg("%s", err.msg);
    moec_qmatrix_free(&q);
}

static void quant_blocks(moec_model *m, moec_tensor *t, moec_gblock type)
{
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    moec_qmatrix q;
    moec_err err = {0};
    if (moec_gptq_quantize_blocks(t->data, t->shape[0], t->shape[1], NULL, type, &o, "t", &q, NULL, &err) ||
        moec_model_set_quant(m, t, &q.f, "t", &err))
        fail_msg("%s", err.msg);
    moec_qmatrix_free(&q);
}

/* Qwen3-MoE with quantized tensors: llama.cpp blocks copied byte for byte,
 * group-wise codes carried bit for bit (Q4_1 from 4-bit with zeros, Q8_0 from
 * 8-bit symmetric, Q5_0 from 5-bit symmetric), the rest as stored. */
static void test_qwen3_quantized(void **state)
{
    (void)state;
    moec_model *m = make_model(qwen3_cfg, TOKENIZER);
    moec_layer *L = &m->layers[0];
    for (int e = 0; e < 4; e++) {
        quant_blocks(m, &L->experts[e].w1, MOEC_GB_Q4_K);
        quant_rtn(m, &L->experts[e].w3, 4, false);
        quant_rtn(m, &L->experts[e].w2, 8, true);
    }
    quant_blocks(m, &L->wq, MOEC_GB_Q6_K);
    quant_rtn(m, &L->wo, 5, true);
    char path[4200];
    snprintf(path, sizeof path, "%s/q.gguf", tu_tmpdir());
    moec_gguf_export_report rep;
    save(m, path, MOEC_GGUF_AUTO, &rep);
    assert_int_equal(rep.verbatim, 5);
    assert_int_equal(rep.carried, 9);
    assert_int_equal(rep.carried_groups, 4 * 256 * 8 * 2 + 256 * 8);
    assert_int_equal(rep.dequantized + rep.encoded, 0);
    assert_int_equal(rep.file_type, 15); /* named by the experts' Q4_K, as llama.cpp's Q4_K_M */
    moec_gguf *g = reopen(path);
    expect_str(g, "general.architecture", "qwen3moe");
    assert_int_equal(u32(g, "qwen3moe.expert_feed_forward_length"), 256);
    assert_int_equal(u32(g, "qwen3moe.feed_forward_length"), 768);
    assert_int_equal(u32(g, "qwen3moe.attention.key_length"), 64);
    assert_int_equal(u32(g, "general.quantization_version"), 2);
    assert_non_null(moec_gguf_find_tensor(g, "blk.0.attn_q_norm.weight"));
    assert_int_equal(moec_gguf_find_tensor(g, "blk.0.attn_q_norm.weight")->ne[0], 64);

    const moec_gguf_tensor *t = moec_gguf_find_tensor(g, "blk.0.ffn_gate_exps.weight");
    assert_int_equal(t->type, 12);
    for (int e = 0; e < 4; e++) /* verbatim */
        assert_memory_equal((const uint8_t *)t->data + (size_t)e * L->experts[e].w1.q->codes_bytes,
                            L->experts[e].w1.q->codes, L->experts[e].w1.q->codes_bytes);
    t = moec_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_int_equal(t->type, 14);
    assert_memory_equal(t->data, L->wq.q->codes, L->wq.q->codes_bytes);

    /* carried: the same codes in every block; values bit for bit where the
     * min is exact (always for the symmetric types) */
    struct {
        const char *name;
        int type;
        moec_gblock gb;
    } carried[] = {{"blk.0.ffn_up_exps.weight", 3, MOEC_GB_Q4_1}, {"blk.0.ffn_down_exps.weight", 8, MOEC_GB_Q8_0}};
    uint8_t qm[32], qg[32];
    float a[256], b[256];
    for (int c = 0; c < 2; c++) {
        t = moec_gguf_find_tensor(g, carried[c].name);
        assert_int_equal(t->type, carried[c].type);
        const moec_gblock_traits *tr = moec_gblock_info(carried[c].gb);
        const uint8_t *blk = t->data;
        int64_t exact_groups = 0, groups = 0;
        for (int e = 0; e < 4; e++) {
            const moec_qformat *f = c == 0 ? L->experts[e].w3.q : L->experts[e].w2.q;
            const size_t stride = moec_qformat_packed_bytes(f->cols, f->bits);
            for (int64_t r = 0; r < f->rows; r++) {
                moec_qformat_dequant_row(f, r, a);
                for (int64_t gi = 0; gi < f->cols / 32; gi++, blk += tr->bytes, groups++) {
                    moec_gblock_params p;
                    moec_gblock_unpack(carried[c].gb, blk, &p, qg);
                    moec_qunpack(qm, f->codes + (size_t)r * stride, gi * 32, 32, f->bits);
                    assert_memory_equal(qm, qg, 32);
                    assert_int_equal(p.d, f->scales[r * (f->cols / 32) + gi]);
                    moec_gblock_dequant(carried[c].gb, blk, b, 32);
                    const float s = moec_f16_to_f32(p.d);
                    if (memcmp(a + gi * 32, b, sizeof(float) * 32) == 0)
                        exact_groups++;
                    else
                        for (int i = 0; i < 32; i++) /* only the min's F16 rounding */
                            assert_true(fabsf(a[gi * 32 + i] - b[i]) <= fabsf(s) * (float)rep.max_min_error * 1.001f);
                }
            }
        }
        if (c == 1)
            assert_int_equal(exact_groups, groups);
        else
            assert_int_equal(exact_groups, groups - rep.rounded_mins);
    }
    t = moec_gguf_find_tensor(g, "blk.0.attn_output.weight");
    assert_int_equal(t->type, 6); /* Q5_0 */
    moec_gguf_close(g);
    moec_model_close(m);
}

static void expect_fail(const moec_model *m, int type, moec_status code, const char *needle)
{
    const char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/x.gguf", dir);
    moec_gguf_export_opts o = MOEC_GGUF_EXPORT_OPTS_DEFAULT;
    o.type = type;
    moec_err err = {0};
    assert_int_equal(moec_model_save_gguf(m, path, &o, NULL, &err), code);
    if (!strstr(err.msg, needle))
        fail_msg("'%s' lacks '%s'", err.msg, needle);
    assert_null(strchr(err.msg, '\n'));
    assert_int_equal(tu_count_dir_entries(dir), 0); /* no file, no temporary left */
}

/* What llama.cpp cannot run is refused before anything is written. */
static void test_refused(void **state)
{
    (void)state;
    char cfg[2048];
    snprintf(cfg, sizeof cfg, "%s", qwen3_cfg);
    char *p = strstr(cfg, "\"norm_topk_prob\": true");
    memcpy(p, "\"norm_topk_prob\":false", 22);
    moec_model *m = make_model(cfg, TOKENIZER);
    expect_fail(m, MOEC_GGUF_AUTO, MOEC_ERR_UNSUPPORTED, "norm_topk_prob");
    moec_model_close(m);

    m = make_model(qwen3_cfg, TOKENIZER);
    quant_blocks(m, &m->layers[0].experts[0].w1, MOEC_GB_Q4_K);
    quant_blocks(m, &m->layers[0].experts[1].w1, MOEC_GB_Q2_K);
    expect_fail(m, MOEC_GGUF_AUTO, MOEC_ERR_UNSUPPORTED, "one tensor of one type");
    moec_model_close(m);

    m = make_model(qwen3_cfg, TOKENIZER);
    moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT; /* 4-bit groups of 128: no llama.cpp type */
    moec_qmatrix q;
    assert_int_equal(moec_rtn_quantize(m->layers[0].wv.data, 128, 256, &o, "v", &q, NULL), MOEC_OK);
    assert_int_equal(moec_model_set_quant(m, &m->layers[0].wv, &q.f, "v", NULL), MOEC_OK);
    moec_qmatrix_free(&q);
    expect_fail(m, moec_gblock_info(MOEC_GB_Q4_K)->ggml_type, MOEC_ERR_UNSUPPORTED, "no llama.cpp type holds");
    char path[4200];
    snprintf(path, sizeof path, "%s/v.gguf", tu_tmpdir());
    moec_gguf_export_report rep;
    save(m, path, MOEC_GGML_F32, &rep); /* dequantized instead */
    assert_int_equal(rep.dequantized, 1);
    moec_gguf *g = reopen(path);
    float row[256];
    moec_qformat_dequant_row(m->layers[0].wv.q, 3, row);
    assert_memory_equal((const float *)moec_gguf_find_tensor(g, "blk.0.attn_v.weight")->data + 3 * 256, row,
                        sizeof row);
    moec_gguf_close(g);
    free(m->tokenizer_json);
    m->tokenizer_json = NULL;
    expect_fail(m, MOEC_GGUF_AUTO, MOEC_ERR_UNSUPPORTED, "tokenizer");
    moec_model_close(m);

    m = make_model(mixtral_cfg, "tests/data/tokenizer_sp.json"); /* 283 tokens fit in 4096 */
    moec_err err = {0};
    assert_int_equal(moec_model_save_gguf(m, "/nonexistent-dir/x.gguf", NULL, NULL, &err), MOEC_ERR_IO);
    moec_model_close(m);
}

/* A SentencePiece-style vocabulary: model "llama", scores -rank of the merge
 * that makes each token, byte tokens BYTE, the unknown token UNKNOWN,
 * padding rows UNUSED, a prefix space. */
static void test_sentencepiece(void **state)
{
    (void)state;
    /* vocab_size 300: the fixture's 283 tokens and padding */
    moec_model *m = make_model(MIXTRAL_CFG(300, 1, 2), "tests/data/tokenizer_sp.json");
    char path[4200];
    snprintf(path, sizeof path, "%s/sp.gguf", tu_tmpdir());
    moec_gguf_export_report rep;
    save(m, path, MOEC_GGML_F16, &rep);
    assert_string_equal(rep.tokenizer, "llama");
    moec_gguf *g = reopen(path);
    expect_str(g, "tokenizer.ggml.model", "llama");
    assert_int_equal(moec_gguf_find_kv(g, "tokenizer.ggml.pre"), -1);
    assert_int_equal(moec_gguf_find_kv(g, "tokenizer.ggml.merges"), -1);
    moec_gguf_type et;
    uint64_t n;
    assert_true(moec_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n) && et == MOEC_GGUF_F32 && n == 300);
    /* the fixture's merges start "▁ h", "l l", "h e", "▁h e", "ll o" */
    int found = 0;
    for (uint64_t id = 0; id < n; id++) {
        const char *s;
        size_t len;
        assert_true(moec_gguf_arr_str(g, "tokenizer.ggml.tokens", id, &s, &len));
        float want = NAN;
        if (len == 4 && !memcmp(s, "\xe2\x96\x81h", 4))
            want = 0.0f;
        else if (len == 2 && !memcmp(s, "ll", 2))
            want = -1.0f;
        else if (len == 2 && !memcmp(s, "he", 2))
            want = -2.0f;
        else if (len == 5 && !memcmp(s, "\xe2\x96\x81he", 5))
            want = -3.0f;
        if (!isnan(want)) {
            float sc;
            assert_true(moec_gguf_arr_get(g, "tokenizer.ggml.scores", id, &sc));
            assert_true(sc == want);
            assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", id), 1);
            found++;
        }
        if (len == 6 && !memcmp(s, "<0x0A>", 6))
            assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", id), 6);
    }
    assert_int_equal(found, 4);
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 0), 2);   /* <unk> */
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 1), 3);   /* <s> */
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 290), 5); /* padding */
    assert_false(moec_gguf_arr_get(g, "tokenizer.ggml.token_type", 300, &(int32_t){0}));
    assert_int_equal(u32(g, "tokenizer.ggml.unknown_token_id"), 0);
    assert_int_equal(u32(g, "tokenizer.ggml.bos_token_id"), 1);
    bool b;
    assert_true(moec_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b) && b);
    assert_true(moec_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) && b);
    moec_gguf_close(g);
    moec_model_close(m);
}

/* The reader on damaged files: one error, never a crash. */
static void test_reader_damage(void **state)
{
    (void)state;
    moec_model *m = make_model(mixtral_cfg, TOKENIZER);
    const char *dir = tu_tmpdir();
    char path[4200], bad[4200];
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    snprintf(bad, sizeof bad, "%s/bad.gguf", dir);
    save(m, path, MOEC_GGML_F16, NULL);
    moec_model_close(m);
    size_t size;
    unsigned char *bytes = (unsigned char *)tu_read_file(path, &size);
    moec_gguf *g;
    moec_err err;
    /* truncated anywhere in the header (metadata, tensor list) and in the data */
    const size_t cuts[] = {0, 3, 4, 10, 23, 24, 100, 1000, 50000, 200000, 400000, size / 2, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        tu_write_file(bad, bytes, cuts[i]);
        assert_int_not_equal(moec_gguf_open(bad, &g, &err), MOEC_OK);
        assert_non_null(strstr(err.msg, bad));
    }
    unsigned char *copy = malloc(size);
    memcpy(copy, bytes, size);
    copy[0] = 'X';
    tu_write_file(bad, copy, size);
    assert_int_equal(moec_gguf_open(bad, &g, &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "magic"));
    memcpy(copy, bytes, size);
    copy[4] = 1; /* version 1 */
    tu_write_file(bad, copy, size);
    assert_int_equal(moec_gguf_open(bad, &g, &err), MOEC_ERR_UNSUPPORTED);
    memcpy(copy, bytes, size);
    copy[24 + 8 + 20] = 77; /* the value type of the first key, "general.architecture" (20 bytes) */
    tu_write_file(bad, copy, size);
    assert_int_equal(moec_gguf_open(bad, &g, &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "unknown value type"));
    memcpy(copy, bytes, size);
    for (int b = 0; b < 8; b++)
        copy[16 + b] = 0xff; /* absurd metadata count */
    tu_write_file(bad, copy, size);
    assert_int_equal(moec_gguf_open(bad, &g, &err), MOEC_ERR_FORMAT);
    tu_write_file(bad, bytes, size);
    assert_int_equal(moec_gguf_open(bad, &g, &err), MOEC_OK);
    moec_gguf_close(g);
    free(copy);
    free(bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixtral_layout), cmocka_unit_test(test_qwen3_quantized),
        cmocka_unit_test(test_refused),        cmocka_unit_test(test_sentencepiece),
        cmocka_unit_test(test_reader_damage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
