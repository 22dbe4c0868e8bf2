/* Executor against the independent PyTorch references: every position's
 * logits of reference/tokens.txt, max |diff| <= 1e-3 * max |logit|
 * (the tolerance), with 1 and 2 threads, as one batch and as
 * token-by-token decoding through the KV cache. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "exec/exec.h"
#include "model/model.h"

typedef struct {
    int32_t ids[1024];
    int n;
    float *ref; /* [n][V] */
} reference;

static void load_reference(reference *r, const char *dir, int vocab)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/reference/tokens.txt", dir);
    char *text = tu_read_file(path, NULL);
    r->n = 0;
    for (char *p = text, *end; *p; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p)
            break;
        r->ids[r->n++] = (int32_t)v;
    }
    free(text);
    size_t size;
    snprintf(path, sizeof path, "%s/reference/logits.f32", dir);
    r->ref = (float *)tu_read_file(path, &size);
    assert_int_equal(size, (size_t)r->n * vocab * sizeof(float));
}

static void check_model(const char *model_dir, const char *ref_dir)
{
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, model_dir[0] == '/' ? model_dir : tu_src(model_dir), &err), MOEC_OK);
    const int V = m->cfg.vocab_size;
    reference r;
    load_reference(&r, ref_dir[0] == '/' ? ref_dir : tu_src(ref_dir), V);
    float *out = malloc((size_t)r.n * V * sizeof(float));
    for (int threads = 1; threads <= 2; threads++) {
        moec_exec *ex;
        moec_exec_opts o = {.threads = threads, .max_ctx = 256};
        assert_int_equal(moec_exec_new(&ex, m, &o, &err), MOEC_OK);
        /* one batch */
        assert_int_equal(moec_exec_forward(ex, r.ids, r.n, out, true, &err), MOEC_OK);
        double e_batch = tu_max_rel_diff(out, r.ref, (size_t)r.n * V);
        /* prefix batch then one token at a time through the cache */
        moec_exec_reset(ex);
        int split = r.n / 3;
        assert_int_equal(moec_exec_forward(ex, r.ids, split, out, true, &err), MOEC_OK);
        for (int i = split; i < r.n; i++)
            assert_int_equal(moec_exec_forward(ex, r.ids + i, 1, out + (size_t)i * V, false, &err), MOEC_OK);
        double e_decode = tu_max_rel_diff(out, r.ref, (size_t)r.n * V);
        /* logits of the second half only (the tokens before skip the last
         * layer's feed-forward block), and of the last token only */
        const int half = r.n / 2;
        moec_exec_reset(ex);
        assert_int_equal(moec_exec_forward_from(ex, r.ids, r.n, out, half, &err), MOEC_OK);
        double e_from = tu_max_rel_diff(out, r.ref + (size_t)half * V, (size_t)(r.n - half) * V);
        moec_exec_reset(ex);
        assert_int_equal(moec_exec_forward(ex, r.ids, split, out, false, &err), MOEC_OK);
        double e_last = tu_max_rel_diff(out, r.ref + (size_t)(split - 1) * V, (size_t)V);
        printf("# %s threads=%d: batch rel err %.2e, decode %.2e, second half %.2e, last token %.2e\n", model_dir,
               threads, e_batch, e_decode, e_from, e_last);
        assert_true(e_batch <= 1e-3);
        assert_true(e_decode <= 1e-3);
        assert_true(e_from <= 1e-3);
        assert_true(e_last <= 1e-3);
        moec_exec_free(ex);
    }
    free(out);
    free(r.ref);
    moec_model_close(m);
}

static void test_mixtral_tiny(void **state)
{
    (void)state;
    check_model("models/mixtral-tiny", "tests/fixtures/mixtral-tiny");
}

static void test_qwen2moe(void **state)
{
    (void)state;
    check_model("tests/fixtures/qwen2moe-random", "tests/fixtures/qwen2moe-random");
}

static void test_qwen3moe(void **state)
{
    (void)state;
    check_model("tests/fixtures/qwen3moe-random", "tests/fixtures/qwen3moe-random");
}

/* qwen3moe-fine (32 fine-grained experts, trained; 31 MB, too big for
 * tests/fixtures): checked when MOEC_QWEN3MOE_FINE holds the absolute path
 * of its directory (scripts/results-merging.sh sets it), skipped otherwise. */
static void test_qwen3moe_fine(void **state)
{
    (void)state;
    const char *dir = getenv("MOEC_QWEN3MOE_FINE");
    if (!dir || dir[0] != '/')
        skip();
    check_model(dir, dir);
}

static void test_bad_tokens_and_overflow(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src("tests/fixtures/qwen3moe-random"), &err), MOEC_OK);
    moec_exec *ex;
    moec_exec_opts o = {.threads = 1, .max_ctx = 8};
    assert_int_equal(moec_exec_new(&ex, m, &o, &err), MOEC_OK);
    int32_t bad[2] = {1, 99999};
    assert_int_equal(moec_exec_forward(ex, bad, 2, NULL, false, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "99999"));
    int32_t ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_int_equal(moec_exec_forward(ex, ids, 9, NULL, false, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_exec_forward(ex, ids, 8, NULL, false, &err), MOEC_OK);
    assert_int_equal(moec_exec_forward(ex, ids, 1, NULL, false, &err), MOEC_ERR_ARG);
    moec_exec_reset(ex);
    assert_int_equal(moec_exec_forward_from(ex, ids, 2, NULL, 3, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_exec_forward_from(ex, ids, 2, NULL, -1, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_exec_pos(ex), 0);
    moec_exec_free(ex);
    moec_model_close(m);
}

/* Layer at a time (embed, each layer, head) equals the whole forward pass
 * bit for bit, a window longer than MOEC_EXEC_CHUNK included, with a
 * one-layer KV cache; such an executor refuses whole forwards. */
static void check_layerwise(const char *model_dir, int n)
{
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src(model_dir), &err), MOEC_OK);
    const int V = m->cfg.vocab_size, d = m->cfg.hidden_size;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)(tu_urand() % (uint32_t)V);
    float *want = malloc((size_t)n * V * sizeof(float)), *got = malloc((size_t)n * V * sizeof(float));
    float *x = malloc((size_t)n * d * sizeof(float));
    moec_exec *ex, *lx;
    moec_exec_opts o = {.threads = 2, .max_ctx = n};
    assert_int_equal(moec_exec_new(&ex, m, &o, &err), MOEC_OK);
    o.layer_cache = true;
    assert_int_equal(moec_exec_new(&lx, m, &o, &err), MOEC_OK);
    assert_int_equal(moec_exec_forward(ex, ids, n, want, true, &err), MOEC_OK);
    assert_int_equal(moec_exec_forward(lx, ids, n, got, true, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_exec_embed(lx, ids, n, x, &err), MOEC_OK);
    for (int l = 0; l < m->cfg.n_layers; l++)
        assert_int_equal(moec_exec_layer(lx, l, 0, x, n, &err), MOEC_OK);
    assert_int_equal(moec_exec_head(lx, x, n, got, &err), MOEC_OK);
    assert_memory_equal(want, got, (size_t)n * V * sizeof(float));
    assert_int_equal(moec_exec_layer(lx, m->cfg.n_layers, 0, x, n, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_exec_layer(lx, 0, 1, x, n, &err), MOEC_ERR_ARG); /* past the context */
    moec_exec_free(ex);
    moec_exec_free(lx);
    free(ids), free(want), free(got), free(x);
    moec_model_close(m);
}

static void test_layerwise(void **state)
{
    (void)state;
    check_layerwise("models/mixtral-tiny", MOEC_EXEC_CHUNK + 77);
    check_layerwise("tests/fixtures/qwen2moe-random", 100);
    check_layerwise("tests/fixtures/qwen3moe-random", 64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixtral_tiny),
        cmocka_unit_test(test_qwen2moe),
        cmocka_unit_test(test_qwen3moe),
        cmocka_unit_test(test_qwen3moe_fine),
        cmocka_unit_test(test_bad_tokens_and_overflow),
        cmocka_unit_test(test_layerwise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
