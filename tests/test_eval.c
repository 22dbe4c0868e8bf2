/* Evaluation: log-probabilities and KL on cases computed by hand, pooled
 * results, a model against itself, scoring from a position on (against a
 * direct computation), and moec-eval's perplexity convention against the
 * independent PyTorch numbers in val_eval.json (within 0.5%). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include <cjson/cJSON.h>

#include "eval/eval.h"
#include "eval/report.h"
#include "exec/exec.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static void test_logprob_by_hand(void **state)
{
    (void)state;
    /* logits (0, ln 2, ln 3): p = (1/6, 2/6, 3/6) */
    const float l[3] = {0.0f, (float)log(2.0), (float)log(3.0)};
    assert_float_equal(moec_logprob(l, 3, 0), log(1.0 / 6.0), 1e-6);
    assert_float_equal(moec_logprob(l, 3, 2), log(0.5), 1e-6);
    /* KL(p‖q) with q uniform: Σ p log(3p) */
    const float u[3] = {5.0f, 5.0f, 5.0f};
    double want = (1.0 / 6) * log(3.0 / 6) + (2.0 / 6) * log(6.0 / 6) + (3.0 / 6) * log(9.0 / 6);
    assert_float_equal(moec_kl_logits(l, u, 3), want, 1e-6);
    assert_float_equal(moec_kl_logits(u, l, 3), (1.0 / 3) * (log(2.0) + log(1.0) + log(2.0 / 3)), 1e-6);
    assert_float_equal(moec_kl_logits(l, l, 3), 0.0, 1e-12);
    /* large logits stay finite */
    const float big[2] = {1000.0f, 0.0f};
    assert_float_equal(moec_logprob(big, 2, 0), 0.0, 1e-9);
    assert_float_equal(moec_logprob(big, 2, 1), -1000.0, 1e-3);
}

static void test_finish_and_pool(void **state)
{
    (void)state;
    moec_ppl_result a = {.windows = 1, .tokens = 2, .nll_sum = 2.0 * log(4.0)};
    moec_ppl_result b = {.windows = 1, .tokens = 2, .nll_sum = 2.0 * log(16.0)};
    moec_ppl_add(&a, &b);
    moec_ppl_finish(&a);
    assert_int_equal(a.tokens, 4);
    assert_float_equal(a.perplexity, 8.0, 1e-9); /* exp(mean(ln4, ln4, ln16, ln16)) */
}

static void test_model_against_itself(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src("tests/fixtures/qwen2moe-random"), &err), MOEC_OK);
    moec_exec *a, *b;
    moec_exec_opts o = {.threads = 1, .max_ctx = 32};
    assert_int_equal(moec_exec_new(&a, m, &o, &err), MOEC_OK);
    assert_int_equal(moec_exec_new(&b, m, &o, &err), MOEC_OK);
    int32_t ids[100];
    for (int i = 0; i < 100; i++)
        ids[i] = (i * 37 + 11) % 4000;
    moec_ppl_result r = {0};
    assert_int_equal(moec_eval_ppl(a, b, ids, 100, 32, 0, &r, NULL, NULL, &err), MOEC_OK);
    moec_ppl_finish(&r);
    assert_int_equal(r.windows, 3); /* 100 = 3·32 + 4: the tail is dropped */
    assert_int_equal(r.tokens, 3 * 31);
    assert_float_equal(r.kld_mean, 0.0, 1e-12);
    assert_float_equal(r.top1_agreement, 1.0, 0.0);
    assert_float_equal(r.ppl_ratio, 1.0, 1e-12);
    assert_true(r.perplexity > 1.0 && isfinite(r.perplexity));
    /* fewer tokens than a window */
    moec_ppl_result z = {0};
    assert_int_equal(moec_eval_ppl(a, NULL, ids, 20, 32, 0, &z, NULL, NULL, &err), MOEC_ERR_ARG);
    moec_exec_free(a);
    moec_exec_free(b);
    moec_model_close(m);
}

/* Sums over positions [from, to) of each window, computed here from the raw
 * logits of both executors. */
static void direct_sums(moec_exec *model, moec_exec *base, const int32_t *ids, int windows, int ctx, int from, int to,
                        moec_ppl_result *out)
{
    moec_err err = {0};
    const int V = moec_exec_vocab(model);
    float *lm = malloc((size_t)ctx * V * sizeof(float)), *lb = malloc((size_t)ctx * V * sizeof(float));
    assert_non_null(lm);
    assert_non_null(lb);
    memset(out, 0, sizeof *out);
    for (int w = 0; w < windows; w++) {
        const int32_t *win = ids + w * ctx;
        moec_exec_reset(model);
        moec_exec_reset(base);
        assert_int_equal(moec_exec_forward(model, win, ctx, lm, true, &err), MOEC_OK);
        assert_int_equal(moec_exec_forward(base, win, ctx, lb, true, &err), MOEC_OK);
        for (int i = from; i < to; i++) {
            const float *rm = lm + (size_t)i * V, *rb = lb + (size_t)i * V;
            int am = 0, ab = 0;
            for (int v = 1; v < V; v++) {
                am = rm[v] > rm[am] ? v : am;
                ab = rb[v] > rb[ab] ? v : ab;
            }
            out->nll_sum -= moec_logprob(rm, V, win[i + 1]);
            out->base_nll_sum -= moec_logprob(rb, V, win[i + 1]);
            out->kld_sum += moec_kl_logits(rb, rm, V);
            out->top1_same += am == ab;
            out->tokens++;
        }
    }
    free(lm);
    free(lb);
}

/* score_from: a window scores positions score_from..ctx-2 only, so the sums
 * from 0 are those from k plus positions 0..k-1 computed directly, and every
 * mean uses only the scored positions. The model differs from its base
 * (4-bit activations) so that KL and top-1 are not trivially 0 and 1. */
static void test_score_from(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src("tests/fixtures/qwen2moe-random"), &err), MOEC_OK);
    moec_exec *a, *b;
    moec_exec_opts ob = {.threads = 1, .max_ctx = 32}, oa = ob;
    oa.act_bits = 4;
    assert_int_equal(moec_exec_new(&a, m, &oa, &err), MOEC_OK);
    assert_int_equal(moec_exec_new(&b, m, &ob, &err), MOEC_OK);
    enum { N = 100, CTX = 32, K = 16 };
    int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (i * 53 + 7) % 4000;
    moec_ppl_result all = {0}, half = {0}, head, tail;
    assert_int_equal(moec_eval_ppl(a, b, ids, N, CTX, 0, &all, NULL, NULL, &err), MOEC_OK);
    assert_int_equal(moec_eval_ppl(a, b, ids, N, CTX, K, &half, NULL, NULL, &err), MOEC_OK);
    direct_sums(a, b, ids, 3, CTX, 0, K, &head);
    direct_sums(a, b, ids, 3, CTX, K, CTX - 1, &tail);
    assert_int_equal(half.windows, 3);
    assert_int_equal(half.tokens, 3 * (CTX - 1 - K));
    assert_int_equal(half.tokens, tail.tokens);
    assert_int_equal(all.tokens, half.tokens + head.tokens);
    assert_true(head.kld_sum > 0.0 && head.top1_same < head.tokens); /* the two executors do differ */
    assert_float_equal(all.nll_sum, half.nll_sum + head.nll_sum, 1e-9 * all.nll_sum);
    assert_float_equal(all.base_nll_sum, half.base_nll_sum + head.base_nll_sum, 1e-9 * all.base_nll_sum);
    assert_float_equal(all.kld_sum, half.kld_sum + head.kld_sum, 1e-9 * all.kld_sum + 1e-12);
    assert_int_equal(all.top1_same, half.top1_same + head.top1_same);
    /* the scored half alone, against the direct computation */
    assert_float_equal(half.nll_sum, tail.nll_sum, 1e-9 * tail.nll_sum);
    assert_float_equal(half.kld_sum, tail.kld_sum, 1e-9 * tail.kld_sum + 1e-12);
    assert_int_equal(half.top1_same, tail.top1_same);
    moec_ppl_finish(&half);
    const double t = (double)tail.tokens;
    assert_float_equal(half.perplexity, exp(tail.nll_sum / t), 1e-9 * half.perplexity);
    assert_float_equal(half.kld_mean, tail.kld_sum / t, 1e-12 + 1e-9 * half.kld_mean);
    assert_float_equal(half.top1_agreement, (double)tail.top1_same / t, 1e-12);
    assert_float_equal(half.ppl_ratio, exp((tail.nll_sum - tail.base_nll_sum) / t), 1e-9 * half.ppl_ratio);
    /* the last possible start scores one token per window; beyond it, or below 0, is an error */
    moec_ppl_result last = {0}, bad = {0};
    assert_int_equal(moec_eval_ppl(a, NULL, ids, N, CTX, CTX - 2, &last, NULL, NULL, &err), MOEC_OK);
    assert_int_equal(last.tokens, 3);
    assert_int_equal(moec_eval_ppl(a, NULL, ids, N, CTX, CTX - 1, &bad, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_eval_ppl(a, NULL, ids, N, CTX, -1, &bad, NULL, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(bad.tokens, 0);
    moec_exec_free(a);
    moec_exec_free(b);
    moec_model_close(m);
}

/* The independent PyTorch evaluation in val_eval.json, same convention. */
static void test_matches_reference_perplexity(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src("models/mixtral-tiny"), &err), MOEC_OK);
    moec_tokenizer *tok;
    assert_int_equal(moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, &err), MOEC_OK);
    moec_exec *ex;
    moec_exec_opts o = {.threads = 2, .max_ctx = 1024};
    assert_int_equal(moec_exec_new(&ex, m, &o, &err), MOEC_OK);
    char *ref_text = tu_read_file(tu_src("tests/fixtures/mixtral-tiny/reference/val_eval.json"), NULL);
    cJSON *ref = cJSON_Parse(ref_text);
    const char *domains[] = {"drama", "scripture", "python", "c"};
    const char *texts[4];
    char paths[4][256];
    for (int i = 0; i < 4; i++) {
        snprintf(paths[i], sizeof paths[i], "data/corpus/%s.val.txt", domains[i]);
        texts[i] = strdup(tu_src(paths[i]));
    }
    moec_eval_spec spec = {texts, 4, NULL, 256, 0};
    cJSON *rep;
    assert_int_equal(moec_eval_report(ex, NULL, tok, &spec, &rep, NULL, NULL, &err), MOEC_OK);
    assert_int_equal((int)cJSON_GetObjectItem(rep, "score_from")->valuedouble, 0);
    for (int i = 0; i < 4; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s.val.txt", domains[i]);
        const cJSON *want = cJSON_GetObjectItem(ref, key);
        const cJSON *got = cJSON_GetObjectItem(cJSON_GetObjectItem(rep, "files"), key);
        double pw = cJSON_GetObjectItem(want, "perplexity")->valuedouble;
        double pg = cJSON_GetObjectItem(got, "perplexity")->valuedouble;
        printf("# %s: perplexity %.4f, reference %.4f\n", key, pg, pw);
        assert_true(fabs(pg / pw - 1.0) < 0.005);
        assert_int_equal((int)cJSON_GetObjectItem(got, "tokens")->valuedouble,
                         (int)cJSON_GetObjectItem(want, "scored_tokens")->valuedouble);
        free((void *)texts[i]);
    }
    cJSON_Delete(rep);
    cJSON_Delete(ref);
    free(ref_text);
    moec_exec_free(ex);
    moec_tokenizer_free(tok);
    moec_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprob_by_hand),
        cmocka_unit_test(test_finish_and_pool),
        cmocka_unit_test(test_model_against_itself),
        cmocka_unit_test(test_score_from),
        cmocka_unit_test(test_matches_reference_perplexity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
