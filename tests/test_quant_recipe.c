/* Tests for quant/recipe.c and its parts (quant_hessians.c, quant_mcmoe.c,
 * quant_verify.c, eaquant.c) on the random qwen3moe / qwen2moe fixtures
 * with a few hundred calibration tokens: RTN and GPTQ recipes give finite
 * logits (from the model and from its saved container) and GPTQ's error on
 * the calibration tokens is below RTN's at 3 bits; MC-MoE meets its budget
 * exactly and favours the most-routed expert; smoothing leaves the
 * full-precision model's logits unchanged; the calibration balance brings
 * every expert to M rows when near-miss tokens exist. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "exec/exec.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "quant/eaquant.h"
#include "quant/recipe.h"
#include "tokenizer/tokenizer.h"

#define QWEN3 "tests/fixtures/qwen3moe-random"
#define QWEN2 "tests/fixtures/qwen2moe-random"
#define CTX 64

/* Calibration windows: `tokens` tokens of two corpus files' first bytes. */
typedef struct calib_data {
    int32_t *ids;
    int *len;
    moec_quant_calib cal;
} calib_data;

static void calib_load(calib_data *c, const moec_model *m, int64_t tokens)
{
    moec_err err = {0};
    moec_tokenizer *tok;
    assert_int_equal(moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, &err), MOEC_OK);
    const char *dir = tu_tmpdir();
    static const char *const corpus[2] = {"data/corpus/drama.val.txt", "data/corpus/c.val.txt"};
    char paths[2][4096];
    const char *files[2];
    for (int i = 0; i < 2; i++) {
        size_t size;
        char *buf = tu_read_file(tu_src(corpus[i]), &size);
        snprintf(paths[i], sizeof paths[i], "%s/%d.txt", dir, i);
        tu_write_file(paths[i], buf, size < 6000 ? size : 6000);
        free(buf);
        files[i] = paths[i];
    }
    memset(c, 0, sizeof *c);
    int n;
    assert_int_equal(moec_quant_windows_from_text(tok, files, 2, CTX, tokens, &c->ids, &c->len, &n, &err), MOEC_OK);
    c->cal.ids = c->ids;
    c->cal.window_len = c->len;
    c->cal.n_windows = n;
    moec_tokenizer_free(tok);
}

static void calib_free(calib_data *c)
{
    free(c->ids);
    free(c->len);
}

/* Logits of every position of the first window. */
static float *window_logits(const moec_model *m, const calib_data *c)
{
    moec_err err = {0};
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.max_ctx = CTX;
    moec_exec *ex;
    assert_int_equal(moec_exec_new(&ex, m, &eo, &err), MOEC_OK);
    const int n = c->len[0], V = m->cfg.vocab_size;
    float *lg = malloc((size_t)n * V * sizeof *lg);
    assert_non_null(lg);
    if (moec_exec_forward(ex, c->ids, n, lg, true, &err))
        fail_msg("forward of %s: %s", m->source ? m->source : "?", err.msg);
    moec_exec_free(ex);
    return lg;
}

static double mean_block_err(const moec_quant_report *rep)
{
    double s = 0;
    int n = 0;
    for (int l = 0; l < rep->n_layers; l++)
        if (rep->layers[l].n_experts) {
            assert_true(isfinite(rep->layers[l].block_err));
            s += rep->layers[l].block_err;
            n++;
        }
    return s / n;
}

static void quantize(const moec_model *m, const calib_data *c, const moec_quant_recipe *r, moec_model **out,
                     moec_quant_report *rep)
{
    moec_err err = {0};
    moec_status st = moec_quant_model(m, &c->cal, r, out, rep, NULL, NULL, &err);
    if (st)
        fail_msg("quantize: %s", err.msg);
}

/* A fixture model with its calibration windows, and the copy a recipe
 * makes of it (q NULL until then). */
typedef struct qrun {
    moec_model *m, *q;
    calib_data c;
    moec_quant_report rep;
} qrun;

static void qrun_open(qrun *t, const char *fixture, int64_t tokens)
{
    t->m = tu_open_model(fixture);
    calib_load(&t->c, t->m, tokens);
    t->q = NULL;
}

static void qrun_quantize(qrun *t, const moec_quant_recipe *r)
{
    quantize(t->m, &t->c, r, &t->q, &t->rep);
}

static void qrun_close(qrun *t)
{
    if (t->q) {
        moec_quant_report_free(&t->rep);
        moec_model_close(t->q);
    }
    calib_free(&t->c);
    moec_model_close(t->m);
}

/* The default recipe with this method and width, in groups of 32 (the
 * fixtures' rows are short). */
static moec_quant_recipe recipe(moec_qmethod method, int bits)
{
    moec_quant_recipe r = MOEC_QUANT_RECIPE_DEFAULT;
    r.method = method;
    r.bits = bits;
    r.group = 32;
    return r;
}

/* RTN and GPTQ at 3 bits: quantized expert tensors, finite logits from the
 * model and from its container, and GPTQ closer to the original. */
static void test_rtn_vs_gptq(void **state)
{
    moec_err err = {0};
    qrun t;
    qrun_open(&t, *state, 384);
    moec_quant_recipe r = recipe(MOEC_QMETHOD_RTN, 3);
    r.threads = 2;
    moec_model *qr;
    moec_quant_report rr;
    quantize(t.m, &t.c, &r, &qr, &rr);
    r.method = MOEC_QMETHOD_GPTQ;
    qrun_quantize(&t, &r);
    const moec_model *m = t.m, *qg = t.q;
    const moec_quant_report *rg = &t.rep;
    const calib_data *c = &t.c;

    const moec_tensor *w1 = &qg->layers[1].experts[3].w1;
    assert_int_equal(w1->dtype, MOEC_DT_QUANT);
    assert_int_equal(w1->q->bits, 3);
    assert_int_equal(w1->q->group, 32);
    assert_int_not_equal(qg->layers[1].router.dtype, MOEC_DT_QUANT);
    assert_int_not_equal(qg->layers[1].wq.dtype, MOEC_DT_QUANT);
    if (m->cfg.shared_ffn)
        assert_int_equal(qg->layers[0].shared.w2.dtype, MOEC_DT_QUANT);
    assert_int_equal(rg->rtn_fallbacks, 0);
    assert_int_equal(rg->passes, m->cfg.n_layers + 1); /* one per MoE layer (w2 from its recorded inputs), verify */
    assert_true(rg->quant_bpw > 3.0 && rg->quant_bpw < 4.5);
    assert_true(fabs(rg->avg_expert_bits - 3.0) < 1e-12);

    const double er = mean_block_err(&rr), eg = mean_block_err(rg);
    assert_true(eg < er);
    assert_true(rg->verify_kld < rr.verify_kld);
    assert_true(rg->verify_tokens > 0);

    float *lq = window_logits(qg, c);
    const size_t cnt = (size_t)c->len[0] * m->cfg.vocab_size;
    for (size_t i = 0; i < cnt; i++)
        assert_true(isfinite(lq[i]));

    /* the container holds what the recipe made */
    char path[4200];
    snprintf(path, sizeof path, "%s/q.moec", tu_tmpdir());
    moec_moec_save_opts so = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    so.report_json = "{}";
    assert_int_equal(moec_model_save_moec(qg, path, &so, &err), MOEC_OK);
    moec_model *back;
    assert_int_equal(moec_model_open_moec(&back, path, &err), MOEC_OK);
    float *lb = window_logits(back, c);
    for (size_t i = 0; i < cnt; i++)
        assert_true(fabsf(lb[i] - lq[i]) <= 1e-3f * (1.0f + fabsf(lq[i])));
    free(lb);
    free(lq);
    moec_model_close(back);
    moec_quant_report_free(&rr);
    moec_model_close(qr);
    qrun_close(&t);
}

/* MC-MoE's objectives on constructed tables. */
static void test_mcmoe_constructed(void **state)
{
    (void)state;
    moec_err err = {0};
    enum { E = 8, NB = 3 };
    const int choices[NB] = {2, 3, 4};
    moec_mc_params paper = MOEC_MC_PARAMS_DEFAULT, output = MOEC_MC_PARAMS_DEFAULT;
    paper.objective = MOEC_MC_PAPER;
    double count[E], gate[E], eps[E * NB];
    /* PAPER: equal losses, one expert routed far more often gets the most bits */
    for (int e = 0; e < E; e++) {
        count[e] = e == 5 ? 900 : 100;
        gate[e] = 0.5 * count[e];
        for (int b = 0; b < NB; b++)
            eps[e * NB + b] = 10.0 / (1 << (2 * b)); /* the same for every expert, falling with width */
    }
    int bits[E];
    assert_int_equal(moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &paper, E, count, gate, eps, true, choices, NB, 2.5,
                                           bits, &err),
                     MOEC_OK);
    int sum = 0;
    for (int e = 0; e < E; e++) {
        sum += bits[e];
        assert_true(bits[5] >= bits[e]);
    }
    assert_int_equal(sum, 20); /* 2.5 x 8 exactly */
    assert_int_equal(bits[5], 4);

    /* the importance-blind split: floor, then the first experts one width up */
    assert_int_equal(moec_quant_alloc_bits(MOEC_QALLOC_UNIFORM, NULL, E, NULL, NULL, NULL, false, choices, NB, 2.5,
                                           bits, &err),
                     MOEC_OK);
    for (int e = 0; e < E; e++)
        assert_int_equal(bits[e], e < 4 ? 3 : 2);

    /* OUTPUT minimises Σ ε exactly: compare with every assignment of 4 experts to {1,2,3,4} under
     * 10 bits (losses of mixed scale, counts that disagree with them so PAPER would differ) */
    enum { E4 = 4 };
    const int wide[4] = {1, 2, 3, 4};
    const double eps_o[E4 * 4] = {9e5, 4e4, 6e3, 1e3, 2e4, 1e3, 2e2, 40, 5e5, 6e4, 5e3, 9e2, 1e5, 2e4, 3e3, 5e2};
    const double cnt_o[E4] = {10, 400, 50, 300}, gate_o[E4] = {5, 200, 25, 150};
    int b4[E4];
    assert_int_equal(moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &output, E4, cnt_o, gate_o, eps_o, true, wide, 4, 2.5,
                                           b4, &err),
                     MOEC_OK);
    double best = INFINITY, got = 0.0;
    for (int code = 0; code < 256; code++) {
        int bsum = 0;
        double l = 0.0;
        for (int e = 0; e < E4; e++) {
            const int k = (code >> (2 * e)) & 3;
            bsum += wide[k];
            l += eps_o[e * 4 + k];
        }
        if (bsum <= 10 && l < best)
            best = l;
    }
    sum = 0;
    for (int e = 0; e < E4; e++) {
        got += eps_o[e * 4 + b4[e] - 1];
        sum += b4[e];
    }
    assert_true(sum <= 10);
    assert_true(fabs(got - best) <= 1e-9 * best);
    /* PAPER weighs the same table by the shares and picks another, worse by Σ ε */
    assert_int_equal(moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &paper, E4, cnt_o, gate_o, eps_o, true, wide, 4, 2.5,
                                           b4, &err),
                     MOEC_OK);
    double got_paper = 0.0;
    for (int e = 0; e < E4; e++)
        got_paper += eps_o[e * 4 + b4[e] - 1];
    assert_true(got_paper > best * 1.01);

    /* at 2 bits from {1,2,3,4} with losses that fall ~14x per bit below 2 and ~7x above (as measured on
     * mixtral-tiny), the paper's diversity rows force a 4-bit and a 3-bit expert and so 1-bit ones;
     * without them every expert keeps 2 bits */
    double eps4[E * 4];
    for (int e = 0; e < E; e++) {
        eps4[e * 4 + 0] = 1.4e6, eps4[e * 4 + 1] = 1.1e5, eps4[e * 4 + 2] = 1.5e4, eps4[e * 4 + 3] = 3.2e3;
        count[e] = 100 + 10 * e;
        gate[e] = 0.5 * count[e];
    }
    paper.diversity = true;
    assert_int_equal(moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &paper, E, count, gate, eps4, true, wide, 4, 2.0, bits,
                                           &err),
                     MOEC_OK);
    int n4 = 0, n3 = 0, n1 = 0;
    sum = 0;
    for (int e = 0; e < E; e++) {
        n4 += bits[e] == 4, n3 += bits[e] == 3, n1 += bits[e] == 1;
        sum += bits[e];
    }
    assert_true(n4 >= 1 && n3 >= 1 && n1 >= 1 && sum <= 16);
    assert_int_equal(moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &output, E, count, gate, eps4, true, wide, 4, 2.0, bits,
                                           &err),
                     MOEC_OK);
    for (int e = 0; e < E; e++)
        assert_int_equal(bits[e], 2);
    /* a budget below the narrowest width is refused */
    assert_int_equal(moec_quant_alloc_bits(MOEC_QALLOC_MCMOE, &paper, E, count, gate, eps, true, choices, NB, 1.5, bits,
                                           &err),
                     MOEC_ERR_ARG);
}

/* The recipe's MC-MoE: every layer meets 2.5 bits exactly and reports ε. */
static void test_mcmoe_recipe(void **state)
{
    (void)state;
    qrun t;
    qrun_open(&t, QWEN3, 256);
    moec_quant_recipe r = recipe(MOEC_QMETHOD_RTN, 3);
    r.avg_bits = 2.5;
    r.n_choices = 3;
    r.choices[0] = 2, r.choices[1] = 3, r.choices[2] = 4;
    r.verify_tokens = 0;
    qrun_quantize(&t, &r);
    const moec_model *q = t.q;
    const moec_quant_report *rep = &t.rep;
    for (int l = 0; l < rep->n_layers; l++) {
        const moec_quant_layer_report *L = &rep->layers[l];
        int sum = 0;
        for (int e = 0; e < L->n_experts; e++) {
            sum += L->bits[e];
            assert_int_equal(q->layers[l].experts[e].w2.q->bits, L->bits[e]);
            /* ε falls with width for an expert that saw tokens */
            if (L->tokens[e] > 0)
                assert_true(L->eps[e * 3 + 2] < L->eps[e * 3 + 0]);
        }
        assert_int_equal(sum, 20);
        /* the default objective minimises Σ ε: no worse than the importance-blind split, which is
         * feasible (the first four experts at 3 bits, the rest at 2) */
        double chosen = 0.0, blind = 0.0;
        for (int e = 0; e < L->n_experts; e++) {
            chosen += L->eps[e * 3 + (L->bits[e] - 2)];
            blind += L->eps[e * 3 + (e < 4 ? 1 : 0)];
        }
        assert_true(chosen <= blind * (1.0 + 1e-9));
    }
    assert_true(fabs(rep->avg_expert_bits - 2.5) < 1e-12);
    qrun_close(&t);
}

/* Folding s into norm, router, gate and w1/w3 keeps the function (on
 * qwen2moe, the shared expert and its sigmoid gate read the smoothed input
 * too). */
static void test_smoothing_invariance(void **state)
{
    moec_err err = {0};
    qrun t;
    qrun_open(&t, *state, CTX);
    const moec_model *m = t.m;
    const calib_data *c = &t.c;
    moec_model *sm;
    assert_int_equal(moec_model_derive(&sm, m, &err), MOEC_OK);
    const int d = m->cfg.hidden_size;
    float *xmax = malloc((size_t)d * sizeof *xmax), *s = malloc((size_t)d * sizeof *s);
    for (int j = 0; j < d; j++)
        xmax[j] = 0.05f * (float)(1 + (j * 37) % 200); /* a wide range of channel maxima */
    for (int l = 0; l < m->cfg.n_layers; l++) {
        assert_int_equal(moec_eaq_smooth_vector(sm, l, xmax, 0.5f, s, &err), MOEC_OK);
        float lo = INFINITY, hi = 0;
        for (int j = 0; j < d; j++)
            lo = fminf(lo, s[j]), hi = fmaxf(hi, s[j]);
        assert_true(hi / lo > 5.0f); /* not a trivial scaling */
        assert_int_equal(moec_eaq_smooth_apply(sm, l, s, &err), MOEC_OK);
        assert_int_equal(sm->layers[l].ffn_norm.dtype, MOEC_DT_F32);
        assert_int_equal(sm->layers[l].router.dtype, MOEC_DT_F32);
    }
    float *a = window_logits(m, c), *b = window_logits(sm, c);
    const size_t cnt = (size_t)c->len[0] * m->cfg.vocab_size;
    double amax = 0, dmax = 0;
    for (size_t i = 0; i < cnt; i++) {
        amax = fmax(amax, fabs(a[i]));
        dmax = fmax(dmax, fabs((double)a[i] - b[i]));
    }
    assert_true(dmax <= 1e-4 * amax);
    /* alpha outside [0, 1] is refused */
    assert_int_equal(moec_eaq_smooth_vector(sm, 0, xmax, 1.5f, s, &err), MOEC_ERR_ARG);
    free(a), free(b), free(xmax), free(s);
    moec_model_close(sm);
    qrun_close(&t);
}

/* Constructed routing: expert 3 is never selected but is the near miss of
 * every token; its extra rows are the most probable ones, M of them. */
static void test_balance_constructed(void **state)
{
    (void)state;
    moec_err err = {0};
    enum { E = 4, D = 3, K = 1, N = 40, M = 10 };
    moec_eaq_balance *b;
    assert_int_equal(moec_eaq_balance_new(&b, E, D, M, &err), MOEC_OK);
    float x[N * D], p[N * E];
    int32_t sel[N * K];
    for (int i = 0; i < N; i++) {
        const float q = 0.01f * (float)((i * 7) % N); /* near-miss probability, distinct per token */
        sel[i] = i % 3;
        for (int e = 0; e < E; e++)
            p[i * E + e] = e == sel[i] ? 0.6f : e == 3 ? 0.2f + q * 0.1f : 0.1f - q * 0.05f;
        for (int j = 0; j < D; j++)
            x[i * D + j] = (float)i;
    }
    assert_true(moec_eaq_balance_add(b, N / 2, K, x, p, sel));
    assert_true(moec_eaq_balance_add(b, N - N / 2, K, x + (N / 2) * D, p + (N / 2) * E, sel + N / 2));
    assert_int_equal(moec_eaq_balance_routed(b, 3), 0);
    assert_int_equal(moec_eaq_balance_near_miss(b, 3), N);
    const float *rows;
    assert_int_equal(moec_eaq_balance_extra(b, 3, &rows), M);
    for (int r = 0; r < M; r++) {
        const int tok = (int)rows[r * D];
        /* the r-th most probable near miss: q values 0.39, 0.38, ... */
        assert_int_equal((tok * 7) % N, N - 1 - r);
    }
    for (int e = 0; e < 3; e++) /* routed 13 or 14 >= M: no extras */
        assert_int_equal(moec_eaq_balance_extra(b, e, &rows), 0);
    moec_eaq_balance_free(b);
}

/* In the recipe: with M above most experts' routed counts, every expert
 * reaches M rows, or has taken every near-miss token there was. */
static void test_balance_recipe(void **state)
{
    (void)state;
    qrun t;
    qrun_open(&t, QWEN3, 256);
    moec_quant_recipe r = recipe(MOEC_QMETHOD_GPTQ, 4);
    r.balance_min = 72;
    r.verify_tokens = 0;
    qrun_quantize(&t, &r);
    const moec_quant_report *rep = &t.rep;
    int raised = 0;
    for (int l = 0; l < rep->n_layers; l++)
        for (int e = 0; e < rep->layers[l].n_experts; e++) {
            const moec_quant_layer_report *L = &rep->layers[l];
            assert_true(L->tokens[e] + L->extra[e] >= 72 || L->extra[e] == L->near_miss[e]);
            assert_true(L->extra[e] <= L->near_miss[e]);
            if (L->tokens[e] >= 72)
                assert_int_equal(L->extra[e], 0);
            raised += L->extra[e] > 0;
        }
    assert_true(raised > 0);
    assert_int_equal(rep->balance_min, 72);
    qrun_close(&t);
}

/* EAQuant end to end on the shared-expert fixture with activation
 * quantization: smoothed tensors are F32, logits finite, the search never
 * worse than no smoothing on its own objective. */
static void test_eaquant_recipe(void **state)
{
    (void)state;
    qrun t;
    qrun_open(&t, QWEN2, 256);
    moec_quant_recipe r = recipe(MOEC_QMETHOD_GPTQ, 4);
    r.smooth = r.align = true;
    r.act_bits = 6;
    r.align_sample = 128;
    qrun_quantize(&t, &r);
    const moec_model *m = t.m, *q = t.q;
    const moec_quant_report *rep = &t.rep;
    const calib_data *c = &t.c;
    for (int l = 0; l < rep->n_layers; l++) {
        const moec_quant_layer_report *L = &rep->layers[l];
        assert_true(L->align_err[1] + r.align_lambda * L->align_kl[1] <=
                    L->align_err[0] + r.align_lambda * L->align_kl[0] + 1e-12);
        assert_true(L->align_kl[0] > 0); /* activation-quantized router input drifts */
        if (L->smooth_alpha >= 0) {
            assert_int_equal(q->layers[l].ffn_norm.dtype, MOEC_DT_F32);
            assert_int_equal(q->layers[l].router.dtype, MOEC_DT_F32);
            assert_int_equal(q->layers[l].shared_gate.dtype, MOEC_DT_F32);
        }
    }
    assert_true(isfinite(rep->verify_kld));
    float *lg = window_logits(q, c);
    for (size_t i = 0; i < (size_t)c->len[0] * m->cfg.vocab_size; i++)
        assert_true(isfinite(lg[i]));
    free(lg);
    qrun_close(&t);
}

static void test_recipe_errors(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_quant_recipe r = MOEC_QUANT_RECIPE_DEFAULT;
    r.method = MOEC_QMETHOD_GPTQ;
    assert_int_equal(moec_quant_recipe_check(&r, false, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "GPTQ"));
    r = MOEC_QUANT_RECIPE_DEFAULT;
    r.bits = 9;
    assert_int_equal(moec_quant_recipe_check(&r, true, &err), MOEC_ERR_ARG);
    r = MOEC_QUANT_RECIPE_DEFAULT;
    r.avg_bits = 5.0; /* above the default choices 1..4 */
    assert_int_equal(moec_quant_recipe_check(&r, true, &err), MOEC_ERR_ARG);
    r = MOEC_QUANT_RECIPE_DEFAULT;
    r.align = true;
    assert_int_equal(moec_quant_recipe_check(&r, true, &err), MOEC_ERR_ARG);

    /* an out-of-vocabulary calibration token is named, not run */
    moec_model *m = tu_open_model(QWEN3);
    int32_t ids[4] = {1, 2, 99999, 3};
    int len[1] = {4};
    moec_quant_calib cal = {.ids = ids, .window_len = len, .n_windows = 1};
    moec_model *q = NULL;
    moec_quant_report rep;
    r = MOEC_QUANT_RECIPE_DEFAULT;
    assert_int_equal(moec_quant_model(m, &cal, &r, &q, &rep, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "99999"));
    assert_null(q);
    moec_model_close(m);
}

/* The two ways through an MoE layer agree: uniform GPTQ goes expert by
 * expert from one recorded pass (quant_experts.c), MC-MoE with a single
 * width through the whole-layer passes (quant_moe.c); with one width the
 * program has one answer, so every tensor must be the same, bit for bit. */
typedef struct slot_list {
    const moec_tensor *t[4096];
    int n;
} slot_list;

static moec_status list_slot(void *vctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    slot_list *l = vctx;
    assert_true(l->n < 4096);
    l->t[l->n++] = s->t;
    return MOEC_OK;
}

static void test_expert_paths_agree(void **state)
{
    qrun t;
    qrun_open(&t, *state, 1024);
    moec_quant_recipe r = recipe(MOEC_QMETHOD_GPTQ, 3);
    r.threads = 2;
    r.verify_tokens = 0;
    qrun_quantize(&t, &r);
    moec_quant_recipe rm = r;
    rm.avg_bits = 3;
    rm.n_choices = 1;
    rm.choices[0] = 3;
    rm.alloc = MOEC_QALLOC_MCMOE;
    moec_model *qm;
    moec_quant_report repm;
    quantize(t.m, &t.c, &rm, &qm, &repm);
    static slot_list a, b;
    a.n = b.n = 0;
    moec_model_for_each_slot(t.q, list_slot, &a, NULL);
    moec_model_for_each_slot(qm, list_slot, &b, NULL);
    assert_int_equal(a.n, b.n);
    int quantized = 0;
    for (int i = 0; i < a.n; i++) {
        const moec_tensor *x = a.t[i], *y = b.t[i];
        assert_int_equal(x->dtype, y->dtype);
        if (x->dtype != MOEC_DT_QUANT) {
            assert_memory_equal(x->data, y->data, x->nbytes);
            continue;
        }
        quantized++;
        assert_int_equal(x->q->codes_bytes, y->q->codes_bytes);
        assert_memory_equal(x->q->codes, y->q->codes, x->q->codes_bytes);
        assert_memory_equal(x->q->scales, y->q->scales, x->q->scales_bytes);
        if (!x->q->symmetric)
            assert_memory_equal(x->q->zeros, y->q->zeros, x->q->zeros_bytes);
    }
    assert_true(quantized > 0);
    assert_int_equal(t.rep.rtn_fallbacks, repm.rtn_fallbacks);
    moec_quant_report_free(&repm);
    moec_model_close(qm);
    qrun_close(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TU_TEST_ON("test_rtn_gptq_qwen3", test_rtn_vs_gptq, QWEN3),
        TU_TEST_ON("test_rtn_gptq_qwen2", test_rtn_vs_gptq, QWEN2),
        TU_TEST_ON("test_expert_paths_qwen3", test_expert_paths_agree, QWEN3),
        TU_TEST_ON("test_expert_paths_qwen2", test_expert_paths_agree, QWEN2),
        cmocka_unit_test(test_mcmoe_constructed),  cmocka_unit_test(test_mcmoe_recipe),
        TU_TEST_ON("test_smoothing_qwen3", test_smoothing_invariance, QWEN3),
        TU_TEST_ON("test_smoothing_qwen2", test_smoothing_invariance, QWEN2),
        cmocka_unit_test(test_balance_constructed), cmocka_unit_test(test_balance_recipe),
        cmocka_unit_test(test_eaquant_recipe),     cmocka_unit_test(test_recipe_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
