/* test_kquant_grid.c - GPTQ on llama.cpp grids (quant/kquant_grid.c) and
 * the plans that put whole models on them (quant/gguf_presets.c, the
 * recipe's --grid/--preset path): GPTQ's output error is below
 * round-to-nearest's on the same grid; a preset gives each tensor the type
 * llama-quantize would; a planned model keeps its blocks through the .moec
 * container, the executor and the GGUF export. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "core/ggml_blocks.h"
#include "exec/exec.h"
#include "formats/gguf.h"
#include "formats/gguf_export.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "quant/gguf_presets.h"
#include "quant/gptq.h"
#include "quant/kquant_grid.h"
#include "quant/recipe.h"
#include "tokenizer/tokenizer.h"

/* ‖(W - Ŵ) Xᵀ‖² of a block-typed result. */
static double out_err(const float *W, const moec_qmatrix *q, const float *X, int64_t n, int64_t rows, int64_t cols)
{
    float *row = malloc((size_t)cols * sizeof *row);
    double e = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        moec_qformat_dequant_row(&q->f, r, row);
        for (int64_t t = 0; t < n; t++) {
            double s = 0.0;
            for (int64_t c = 0; c < cols; c++)
                s += ((double)W[r * cols + c] - row[c]) * X[t * cols + c];
            e += s * s;
        }
    }
    free(row);
    return e;
}

/* Correlated inputs (a few strong directions and uneven channel scales):
 * what GPTQ's error feedback exploits, on every grid type. */
static void test_gptq_beats_rtn(void **state)
{
    (void)state;
    enum { ROWS = 16, COLS = 256, N = 600 };
    float *W = malloc(ROWS * COLS * sizeof *W), *X = malloc(N * COLS * sizeof *X);
    double *H = calloc(COLS * COLS, sizeof *H);
    assert_non_null(W && X && H);
    for (int i = 0; i < ROWS * COLS; i++)
        W[i] = tu_frand();
    float basis[4][COLS];
    for (int k = 0; k < 4; k++)
        for (int c = 0; c < COLS; c++)
            basis[k][c] = tu_frand();
    for (int t = 0; t < N; t++)
        for (int c = 0; c < COLS; c++) {
            float v = 0.1f * tu_frand();
            for (int k = 0; k < 4; k++)
                v += basis[k][c] * tu_frand() * (1.0f + (float)(c % 7));
            X[t * COLS + c] = v;
        }
    moec_err err = {0};
    assert_int_equal(moec_hessian_accumulate(H, X, N, COLS, &err), MOEC_OK);
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    moec_gptq_hinv *h;
    assert_int_equal(moec_gptq_hinv_new(H, COLS, N, &o, "t", &h, NULL, &err), MOEC_OK);
    const moec_gblock types[] = {MOEC_GB_Q2_K, MOEC_GB_Q3_K, MOEC_GB_Q4_K, MOEC_GB_Q5_K, MOEC_GB_Q6_K,
                                 MOEC_GB_Q4_0, MOEC_GB_Q4_1, MOEC_GB_Q5_1, MOEC_GB_Q8_0};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        moec_qmatrix g, r;
        moec_gptq_report rep = {0};
        assert_int_equal(moec_gptq_quantize_blocks(W, ROWS, COLS, h, types[i], &o, "t", &g, &rep, &err), MOEC_OK);
        assert_int_equal(moec_gptq_quantize_blocks(W, ROWS, COLS, NULL, types[i], &o, "t", &r, NULL, &err), MOEC_OK);
        assert_int_equal(moec_qformat_validate(&g.f, "t", &err), MOEC_OK);
        assert_int_equal(g.f.gblock, types[i]);
        const double eg = out_err(W, &g, X, N, ROWS, COLS), er = out_err(W, &r, X, N, ROWS, COLS);
        if (!(eg < 0.8 * er))
            fail_msg("%s: GPTQ output error %g not below 0.8 x RTN's %g", moec_gblock_info(types[i])->name, eg, er);
        /* GPTQ's loss estimate: ‖(W - Ŵ)Xᵀ‖² / N, up to the 1% damping */
        if (!(fabs(rep.loss * N - eg) <= 0.1 * eg))
            fail_msg("%s: loss x N %g vs output error %g", moec_gblock_info(types[i])->name, rep.loss * N, eg);
        moec_qmatrix_free(&g);
        moec_qmatrix_free(&r);
    }
    moec_qmatrix g;
    assert_int_equal(moec_gptq_quantize_blocks(W, ROWS, 128, h, MOEC_GB_Q4_0, &o, "t", &g, NULL, &err),
                     MOEC_ERR_SHAPE); /* the factor is for 256 columns */
    assert_int_equal(moec_gptq_quantize_blocks(W, ROWS, COLS, h, MOEC_GB_NONE, &o, "t", &g, NULL, &err), MOEC_ERR_ARG);
    moec_gptq_hinv_free(h);
    free(W), free(X), free(H);
}

static moec_config config_of(const char *json)
{
    moec_config c;
    moec_err err = {0};
    if (moec_config_parse_hf(&c, json, &err))
        fail_msg("%s", err.msg);
    return c;
}

/* The presets against llama-quantize's choices, read off its files (its
 * per-tensor types, listed with moec's GGUF reader) for mixtral-tiny (8
 * experts, 4 layers) and qwen3moe-fine (32 experts, expert FFN 128:
 * ffn_down falls back from 256-blocks). */
static void test_presets(void **state)
{
    (void)state;
    const moec_config mix = config_of(
        "{\"architectures\": [\"MixtralForCausalLM\"], \"vocab_size\": 4096, \"hidden_size\": 256, "
        "\"intermediate_size\": 512, \"num_hidden_layers\": 4, \"num_attention_heads\": 8, \"num_key_value_heads\": 4, "
        "\"head_dim\": 32, \"max_position_embeddings\": 1024, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, "
        "\"num_local_experts\": 8, \"num_experts_per_tok\": 2}");
    const moec_config q3 = config_of(
        "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"vocab_size\": 4096, \"hidden_size\": 256, "
        "\"num_hidden_layers\": 4, \"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"head_dim\": 32, "
        "\"intermediate_size\": 512, \"moe_intermediate_size\": 128, \"num_experts\": 32, \"num_experts_per_tok\": 4, "
        "\"norm_topk_prob\": true, \"max_position_embeddings\": 1024, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1e6}");
    moec_gplan p;
    /* per layer: q, k, v, o, gate, up, down */
#define T(x) MOEC_GB_##x
    static const struct {
        int mixtral;
        const char *preset;
        moec_gblock embed, head;
        moec_gblock l[4][7];
    } want[] = {
        {1, "Q4_K_M", T(Q4_K), T(Q6_K),
         {{T(Q4_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q4_K), T(Q4_K), T(Q4_K)},
          {T(Q4_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q4_K), T(Q4_K), T(Q4_K)},
          {T(Q4_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q4_K), T(Q4_K), T(Q6_K)},
          {T(Q4_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q4_K), T(Q4_K), T(Q6_K)}}},
        {1, "Q3_K_M", T(Q3_K), T(Q6_K),
         {{T(Q3_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q3_K), T(Q3_K), T(Q4_K)},
          {T(Q3_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q3_K), T(Q3_K), T(Q4_K)},
          {T(Q3_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q3_K), T(Q3_K), T(Q4_K)},
          {T(Q3_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q3_K), T(Q3_K), T(Q4_K)}}},
        {1, "Q2_K", T(Q2_K), T(Q6_K),
         {{T(Q2_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q2_K), T(Q2_K), T(Q3_K)},
          {T(Q2_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q2_K), T(Q2_K), T(Q3_K)},
          {T(Q2_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q2_K), T(Q2_K), T(Q3_K)},
          {T(Q2_K), T(Q8_0), T(Q8_0), T(Q5_K), T(Q2_K), T(Q2_K), T(Q3_K)}}},
        {1, "Q4_0", T(Q4_0), T(Q6_K),
         {{T(Q4_0), T(Q8_0), T(Q8_0), T(Q4_0), T(Q4_0), T(Q4_0), T(Q4_0)},
          {T(Q4_0), T(Q8_0), T(Q8_0), T(Q4_0), T(Q4_0), T(Q4_0), T(Q4_0)},
          {T(Q4_0), T(Q8_0), T(Q8_0), T(Q4_0), T(Q4_0), T(Q4_0), T(Q4_0)},
          {T(Q4_0), T(Q8_0), T(Q8_0), T(Q4_0), T(Q4_0), T(Q4_0), T(Q4_0)}}},
        {1, "Q8_0", T(Q8_0), T(Q8_0),
         {{T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0)},
          {T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0)},
          {T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0)},
          {T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0), T(Q8_0)}}},
        {0, "Q4_1", T(Q4_1), T(Q6_K),
         {{T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1)},
          {T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1)},
          {T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1)},
          {T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1), T(Q4_1)}}},
        {0, "Q4_K_M", T(Q4_K), T(Q6_K),
         {{T(Q4_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q5_0)},
          {T(Q4_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q5_0)},
          {T(Q4_K), T(Q4_K), T(Q6_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q8_0)},
          {T(Q4_K), T(Q4_K), T(Q6_K), T(Q4_K), T(Q4_K), T(Q4_K), T(Q8_0)}}},
        {0, "q3_k_m", T(Q3_K), T(Q6_K),
         {{T(Q3_K), T(Q3_K), T(Q5_K), T(Q4_K), T(Q3_K), T(Q3_K), T(Q5_0)},
          {T(Q3_K), T(Q3_K), T(Q5_K), T(Q4_K), T(Q3_K), T(Q3_K), T(Q5_0)},
          {T(Q3_K), T(Q3_K), T(Q4_K), T(Q4_K), T(Q3_K), T(Q3_K), T(Q5_0)},
          {T(Q3_K), T(Q3_K), T(Q4_K), T(Q4_K), T(Q3_K), T(Q3_K), T(Q5_0)}}},
        {0, "Q2_K", T(Q2_K), T(Q6_K),
         {{T(Q2_K), T(Q2_K), T(Q3_K), T(Q3_K), T(Q2_K), T(Q2_K), T(Q4_0)},
          {T(Q2_K), T(Q2_K), T(Q3_K), T(Q3_K), T(Q2_K), T(Q2_K), T(Q4_0)},
          {T(Q2_K), T(Q2_K), T(Q3_K), T(Q3_K), T(Q2_K), T(Q2_K), T(Q4_0)},
          {T(Q2_K), T(Q2_K), T(Q3_K), T(Q3_K), T(Q2_K), T(Q2_K), T(Q4_0)}}},
    };
#undef T
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        assert_true(moec_gplan_is_preset(want[i].preset));
        assert_int_equal(moec_gplan_preset(&p, want[i].mixtral ? &mix : &q3, want[i].preset, NULL), MOEC_OK);
        assert_int_equal(p.embed, want[i].embed);
        assert_int_equal(p.head, want[i].head);
        for (int l = 0; l < 4; l++)
            for (int s = 0; s < 7; s++)
                if (p.layer[l][s] != want[i].l[l][s])
                    fail_msg("%s %s layer %d slot %d: %s, llama-quantize %s", want[i].mixtral ? "mixtral" : "qwen3",
                             want[i].preset, l, s, moec_gblock_info(p.layer[l][s])->name,
                             moec_gblock_info(want[i].l[l][s])->name);
    }
    moec_err err;
    assert_false(moec_gplan_is_preset("gptq4"));
    assert_int_equal(moec_gplan_preset(&p, &mix, "Q5_K_S", &err), MOEC_ERR_ARG);
    moec_gplan_uniform(&p, &q3, MOEC_GB_Q4_K, MOEC_GB_NONE, MOEC_GB_Q8_0, MOEC_GB_Q8_0);
    assert_int_equal(p.layer[0][MOEC_GS_GATE], MOEC_GB_Q4_K);
    assert_int_equal(p.layer[0][MOEC_GS_DOWN], MOEC_GB_Q5_0);
    assert_int_equal(p.layer[0][MOEC_GS_Q], MOEC_GB_NONE);
    assert_false(moec_gplan_has_attn(&p, &q3));
}

/* A preset on the random Qwen2-MoE (shared expert, hidden 64: every type
 * falls back to its 32-block type) by GPTQ: each tensor in the plan's type,
 * the container and the executor keep and run the blocks, the GGUF holds
 * them verbatim, and the logits stay close to the original's. */
static void test_preset_recipe(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src("tests/fixtures/qwen2moe-random"), &err), MOEC_OK);
    moec_tokenizer *tok;
    assert_int_equal(moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, &err), MOEC_OK);
    const char *files[1] = {tu_src("data/corpus/drama.val.txt")};
    int32_t *ids;
    int *len;
    moec_quant_calib cal = {0};
    assert_int_equal(moec_quant_windows_from_text(tok, files, 1, 64, 1024, &ids, &len, &cal.n_windows, &err), MOEC_OK);
    cal.ids = ids;
    cal.window_len = len;
    moec_gplan plan;
    assert_int_equal(moec_gplan_preset(&plan, &m->cfg, "Q4_K_M", &err), MOEC_OK);
    moec_quant_recipe r = MOEC_QUANT_RECIPE_DEFAULT;
    r.method = MOEC_QMETHOD_GPTQ;
    r.attn = true;
    r.gplan = &plan;
    r.verify_tokens = 512;
    moec_quant_report rep;
    moec_model *q;
    if (moec_quant_model(m, &cal, &r, &q, &rep, NULL, NULL, &err))
        fail_msg("%s", err.msg);
    const moec_layer *L = &q->layers[1];
    assert_int_equal(L->wv.q->gblock, MOEC_GB_Q8_0);   /* Q6_K (more bits in the last layer) -> Q8_0 */
    assert_int_equal(L->wq.q->gblock, MOEC_GB_Q5_0);   /* Q4_K -> Q5_0 */
    assert_int_equal(L->experts[3].w2.q->gblock, MOEC_GB_Q8_0);
    assert_int_equal(L->shared.w1.q->gblock, MOEC_GB_Q5_0);
    assert_int_equal(q->embed.q->gblock, MOEC_GB_Q5_0);
    assert_int_equal(q->lm_head.q->gblock, MOEC_GB_Q8_0);
    assert_true(rep.verify_kld >= 0.0 && rep.verify_kld < 0.05);

    char path[4200], gg[4200];
    const char *dir = tu_tmpdir();
    snprintf(path, sizeof path, "%s/p.moec", dir);
    snprintf(gg, sizeof gg, "%s/p.gguf", dir);
    assert_int_equal(moec_model_save_moec(q, path, NULL, &err), MOEC_OK);
    moec_model *back;
    assert_int_equal(moec_model_open(&back, path, &err), MOEC_OK);
    assert_int_equal(back->layers[1].wv.q->gblock, MOEC_GB_Q8_0);
    assert_memory_equal(back->layers[0].experts[2].w3.q->codes, q->layers[0].experts[2].w3.q->codes,
                        q->layers[0].experts[2].w3.q->codes_bytes);
    /* the reopened model computes what the quantized one does */
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.max_ctx = 64;
    moec_exec *e1, *e2;
    const int V = m->cfg.vocab_size;
    float *l1 = malloc((size_t)64 * V * sizeof *l1), *l2 = malloc((size_t)64 * V * sizeof *l2);
    assert_int_equal(moec_exec_new(&e1, q, &eo, &err), MOEC_OK);
    assert_int_equal(moec_exec_new(&e2, back, &eo, &err), MOEC_OK);
    assert_int_equal(moec_exec_forward(e1, ids, 64, l1, true, &err), MOEC_OK);
    assert_int_equal(moec_exec_forward(e2, ids, 64, l2, true, &err), MOEC_OK);
    assert_memory_equal(l1, l2, (size_t)64 * V * sizeof *l1);
    moec_exec_free(e1);
    moec_exec_free(e2);
    free(l1), free(l2);

    moec_gguf_export_report gr;
    assert_int_equal(moec_model_save_gguf(back, gg, NULL, &gr, &err), MOEC_OK);
    /* embed, head, 2 x (4 attention + 3 x 8 experts + 3 shared) */
    assert_int_equal(gr.verbatim, 2 + 2 * (4 + 24 + 3));
    assert_int_equal(gr.carried + gr.dequantized + gr.encoded, 0);
    moec_gguf *g;
    assert_int_equal(moec_gguf_open(gg, &g, &err), MOEC_OK);
    const moec_gguf_tensor *t = moec_gguf_find_tensor(g, "blk.1.ffn_down_exps.weight");
    assert_int_equal(t->type, 8);
    assert_memory_equal((const uint8_t *)t->data + 3 * L->experts[3].w2.q->codes_bytes, L->experts[3].w2.q->codes,
                        L->experts[3].w2.q->codes_bytes);
    assert_int_equal(moec_gguf_find_tensor(g, "blk.0.ffn_gate_inp_shexp.weight")->type, MOEC_GGML_F32);
    moec_gguf_close(g);
    moec_model_close(back);
    moec_quant_report_free(&rep);
    moec_model_close(q);

    /* what a plan cannot do */
    r.avg_bits = 2.5;
    assert_int_equal(moec_quant_model(m, &cal, &r, &q, &rep, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "one tensor of one type"));
    moec_model_close(m);
    assert_int_equal(moec_model_open(&m, tu_src("tests/fixtures/qwen3moe-random"), &err), MOEC_OK);
    assert_int_equal(moec_gplan_preset(&plan, &m->cfg, "Q4_K_M", &err), MOEC_OK); /* expert FFN 48 */
    r.avg_bits = 0;
    assert_int_equal(moec_quant_model(m, &cal, &r, &q, &rep, NULL, NULL, &err), MOEC_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "down_proj rows"));
    moec_model_close(m);
    moec_tokenizer_free(tok);
    free(ids);
    free(len);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gptq_beats_rtn),
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_preset_recipe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
