/* Evaluation: log-probabilities and KL on cases computed by hand, pooled
 * results, a model against itself, and moec-eval's perplexity convention
 * against the independent PyTorch numbers in val_eval.json (within 0.5%). */
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
    assert_int_equal(moec_eval_ppl(a, b, ids, 100, 32, &r, NULL, NULL, &err), MOEC_OK);
    moec_ppl_finish(&r);
    assert_int_equal(r.windows, 3); /* 100 = 3·32 + 4: the tail is dropped */
    assert_int_equal(r.tokens, 3 * 31);
    assert_float_equal(r.kld_mean, 0.0, 1e-12);
    assert_float_equal(r.top1_agreement, 1.0, 0.0);
    assert_float_equal(r.ppl_ratio, 1.0, 1e-12);
    assert_true(r.perplexity > 1.0 && isfinite(r.perplexity));
    /* fewer tokens than a window */
    moec_ppl_result z = {0};
    assert_int_equal(moec_eval_ppl(a, NULL, ids, 20, 32, &z, NULL, NULL, &err), MOEC_ERR_ARG);
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
    moec_eval_spec spec = {texts, 4, NULL, 256};
    cJSON *rep;
    assert_int_equal(moec_eval_report(ex, NULL, tok, &spec, &rep, NULL, NULL, &err), MOEC_OK);
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
        cmocka_unit_test(test_matches_reference_perplexity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
