/* Layer-streaming pipeline (lib/pipeline): hidden states pushed one layer
 * at a time give the whole forward pass's logits bit for bit; every tool
 * path gives the same output streamed (written part by part, parts and
 * source pages released) as built in memory and saved whole; the driver's
 * contract (parts in order, advance once, errors). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "calib/calib.h"
#include "exec/exec.h"
#include "formats/container.h"
#include "merge/acts.h"
#include "merge/merge.h"
#include "model/model.h"
#include "model/model_sink.h"
#include "pipeline/hstates.h"
#include "pipeline/pipeline.h"
#include "prune/prune.h"
#include "quant/recipe.h"
#include "tokenizer/tokenizer.h"

#define QWEN2 "tests/fixtures/qwen2moe-random"
#define QWEN3 "tests/fixtures/qwen3moe-random"

/* Windows of random tokens of the given lengths, back to back. */
static int32_t *random_windows(const moec_model *m, const int *len, int n)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        total += len[i];
    int32_t *ids = malloc((size_t)total * sizeof *ids);
    for (int64_t i = 0; i < total; i++)
        ids[i] = (int32_t)(tu_urand() % (uint32_t)m->cfg.vocab_size);
    return ids;
}

static void test_hstates_match_forward(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m = tu_open_model(QWEN3);
    const int len[3] = {40, 7, 33}, V = m->cfg.vocab_size;
    int32_t *ids = random_windows(m, len, 3);
    moec_exec *ex, *lx;
    moec_exec_opts o = {.threads = 2, .max_ctx = 40};
    assert_int_equal(moec_exec_new(&ex, m, &o, &err), MOEC_OK);
    o.layer_cache = true;
    assert_int_equal(moec_exec_new(&lx, m, &o, &err), MOEC_OK);
    moec_hstates *s;
    assert_int_equal(moec_hstates_new(&s, ids, len, 3, m->cfg.hidden_size, &err), MOEC_OK);
    assert_int_equal(s->tokens, 80);
    assert_int_equal(s->max_len, 40);
    assert_int_equal(moec_hstates_embed(s, lx, &err), MOEC_OK);
    /* out of order: refused */
    assert_int_equal(moec_hstates_run(s, lx, 1, true, NULL, NULL, &err), MOEC_ERR_INTERNAL);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        /* a measuring run leaves the states as they are */
        float *before = malloc((size_t)s->tokens * s->d * sizeof *before);
        memcpy(before, s->h, (size_t)s->tokens * s->d * sizeof *before);
        assert_int_equal(moec_hstates_run(s, lx, l, false, NULL, NULL, &err), MOEC_OK);
        assert_memory_equal(before, s->h, (size_t)s->tokens * s->d * sizeof *before);
        free(before);
        assert_int_equal(moec_hstates_run(s, lx, l, true, NULL, NULL, &err), MOEC_OK);
    }
    float *want = malloc((size_t)40 * V * sizeof *want), *got = malloc((size_t)40 * V * sizeof *got);
    for (int w = 0; w < 3; w++) {
        moec_exec_reset(ex);
        assert_int_equal(moec_exec_forward(ex, ids + s->start[w], len[w], want, true, &err), MOEC_OK);
        assert_int_equal(moec_hstates_logits(s, lx, w, got, &err), MOEC_OK);
        assert_memory_equal(want, got, (size_t)len[w] * V * sizeof *want);
    }
    assert_int_equal(moec_hstates_logits(s, lx, 3, got, &err), MOEC_ERR_ARG);
    free(want), free(got);
    moec_hstates_free(s);
    moec_exec_free(ex), moec_exec_free(lx);
    free(ids);
    moec_model_close(m);
}

/* A driver whose layer step records the order of calls, and may fail. */
typedef struct order {
    int calls[16], n, fail_at;
    bool advance;
} order;

static moec_status ord_begin(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p, (void)err;
    order *o = ctx;
    o->calls[o->n++] = -1;
    return MOEC_OK;
}

static moec_status ord_layer(void *ctx, moec_pipeline *p, int l, moec_err *err)
{
    order *o = ctx;
    o->calls[o->n++] = l;
    if (l == o->fail_at)
        return moec_err_set(err, MOEC_ERR_NUMERIC, "layer %d said no", l);
    if (o->advance) {
        moec_status st = moec_pipeline_advance(p, l, NULL, NULL, NULL, NULL, err);
        if (st)
            return st;
        /* twice is an error */
        assert_int_equal(moec_pipeline_advance(p, l, NULL, NULL, NULL, NULL, err), MOEC_ERR_INTERNAL);
    }
    return MOEC_OK;
}

static moec_status ord_end(void *ctx, moec_pipeline *p, moec_err *err)
{
    (void)p, (void)err;
    order *o = ctx;
    o->calls[o->n++] = -2;
    return MOEC_OK;
}

static void test_driver(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m = tu_open_model(QWEN2);
    const moec_pipeline_ops ops = {ord_begin, ord_layer, ord_end};
    order o = {.fail_at = -5};
    /* no windows: a pass is refused, the walk is in order */
    moec_pipeline_opts po = {.run = m};
    assert_int_equal(moec_pipeline_run(m, NULL, &po, &ops, &o, &err), MOEC_OK);
    assert_int_equal(o.n, m->cfg.n_layers + 2);
    assert_int_equal(o.calls[0], -1);
    for (int l = 0; l < m->cfg.n_layers; l++)
        assert_int_equal(o.calls[l + 1], l);
    assert_int_equal(o.calls[o.n - 1], -2);
    /* windows, the method advancing itself */
    const int len[2] = {20, 12};
    int32_t *ids = random_windows(m, len, 2);
    po = (moec_pipeline_opts){.ids = ids, .window_len = len, .n_windows = 2, .threads = 2, .run = m};
    o = (order){.fail_at = -5, .advance = true};
    assert_int_equal(moec_pipeline_run(m, NULL, &po, &ops, &o, &err), MOEC_OK);
    /* a failing layer stops the walk with its error */
    o = (order){.fail_at = 0};
    assert_int_equal(moec_pipeline_run(m, NULL, &po, &ops, &o, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "said no"));
    assert_int_equal(o.n, 2);
    free(ids);
    moec_model_close(m);
}

/* A container's tensors: every name with its checksum, in directory order. */
static char *container_tensors(const char *path)
{
    moec_err err = {0};
    moec_container *c;
    assert_int_equal(moec_container_open(path, 0, &c, &err), MOEC_OK);
    size_t cap = 1 << 16, len = 0;
    char *s = malloc(cap);
    s[0] = '\0';
    for (size_t i = 0; i < moec_container_tensor_count(c); i++) {
        const moec_ctensor_info *t = moec_container_tensor(c, i);
        if (len + strlen(t->name) + 40 > cap)
            s = realloc(s, cap *= 2);
        len += (size_t)sprintf(s + len, "%s %016llx\n", t->name, (unsigned long long)t->checksum);
    }
    moec_container_close(c);
    return s;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = tu_read_file(a, &na), *y = tu_read_file(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x), free(y);
}

/* Streamed quantization (each layer to the container as it is done, source
 * pages released) writes the tensors of the in-memory model saved whole. */
static void quant_streamed(const char *fixture, moec_qmethod method)
{
    moec_err err = {0};
    moec_model *m = tu_open_model(fixture);
    moec_tokenizer *tok;
    assert_int_equal(moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, &err), MOEC_OK);
    const char *files[1] = {tu_src("data/corpus/drama.val.txt")};
    moec_quant_calib cal = {0};
    int32_t *ids;
    int *wlen;
    assert_int_equal(moec_quant_windows_from_text(tok, files, 1, 64, 768, &ids, &wlen, &cal.n_windows, &err), MOEC_OK);
    cal.ids = ids;
    cal.window_len = wlen;
    moec_quant_recipe r = MOEC_QUANT_RECIPE_DEFAULT;
    r.method = method;
    r.bits = 3;
    r.group = 32;
    r.attn = true;
    r.embed_bits = 6;
    r.threads = 2;
    const char *dir = tu_tmpdir();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/whole.moec", dir);
    snprintf(b, sizeof b, "%s/streamed.moec", dir);
    moec_model *q;
    moec_quant_report rep, rep2;
    assert_int_equal(moec_quant_model(m, &cal, &r, &q, &rep, NULL, NULL, &err), MOEC_OK);
    moec_moec_save_opts so = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    assert_int_equal(moec_model_save_moec(q, a, &so, &err), MOEC_OK);
    moec_model_close(q);
    moec_model_sink *sink;
    assert_int_equal(moec_model_sink_moec_new(&sink, m, b, &so, &err), MOEC_OK);
    assert_int_equal(moec_quant_model_to(m, &cal, &r, sink, &q, &rep2, NULL, NULL, &err), MOEC_OK);
    /* the streamed result keeps no layer */
    assert_false(moec_tensor_present(&q->layers[0].experts[0].w1));
    assert_int_equal(moec_model_sink_finish(sink, q, NULL, &err), MOEC_OK);
    moec_model_sink_free(sink);
    char *x = container_tensors(a), *y = container_tensors(b);
    assert_string_equal(x, y);
    free(x), free(y);
    assert_int_equal(rep.quant_params, rep2.quant_params);
    assert_int_equal(rep.model_bytes, rep2.model_bytes);
    assert_true(rep.verify_kld == rep2.verify_kld);
    moec_quant_report_free(&rep), moec_quant_report_free(&rep2);
    moec_model_close(q);
    free(ids), free(wlen);
    moec_tokenizer_free(tok);
    moec_model_close(m);
}

static void test_quant_streamed(void **state)
{
    (void)state;
    quant_streamed(QWEN2, MOEC_QMETHOD_GPTQ);
    quant_streamed(QWEN3, MOEC_QMETHOD_RTN);
}

/* Pruning (STUN with Wanda: windows through the pruned model) and merging
 * written layer by layer give the bytes of the whole model saved. */
static void test_prune_merge_streamed(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m = tu_open_model(QWEN2);
    moec_tokenizer *tok;
    assert_int_equal(moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, &err), MOEC_OK);
    const char *files[1] = {tu_src("data/corpus/python.val.txt")};
    moec_calib_opts co = MOEC_CALIB_OPTS_DEFAULT;
    co.ctx = 64;
    co.max_tokens = 512;
    co.threads = 2;
    moec_stats *st;
    assert_int_equal(moec_calib_run(m, tok, files, 1, &co, &st, NULL, NULL, &err), MOEC_OK);
    const int len[4] = {64, 64, 64, 50};
    int32_t *ids = random_windows(m, len, 4);
    const char *dir = tu_tmpdir();
    char a[4200], b[4200], pa[4400], pb[4400];
    for (int method = 0; method < 3; method++) {
        snprintf(a, sizeof a, "%s/whole-%d", dir, method);
        snprintf(b, sizeof b, "%s/streamed-%d", dir, method);
        moec_model *x = NULL, *y = NULL;
        if (method < 2) {
            moec_prune_opts po = MOEC_PRUNE_OPTS_DEFAULT;
            po.keep = 5;
            po.threads = 2;
            if (method == 0) {
                po.sparsity = 0.3;
                po.calib_tokens = ids;
                po.n_calib_tokens = 242;
                po.calib_ctx = 64;
            }
            moec_prune_report r1, r2;
            assert_int_equal(method == 0 ? moec_prune_stun(m, st, &po, &x, &r1, &err)
                                         : moec_prune_dern(m, st, &po, &x, &r1, &err),
                             MOEC_OK);
            po.out_dir = b;
            assert_int_equal(method == 0 ? moec_prune_stun(m, st, &po, &y, &r2, &err)
                                         : moec_prune_dern(m, st, &po, &y, &r2, &err),
                             MOEC_OK);
            assert_int_equal(r1.params_after, r2.params_after);
            assert_int_equal(r1.n_notes, r2.n_notes);
            moec_prune_report_free(&r1), moec_prune_report_free(&r2);
        } else {
            /* the default merge: neurons, fitted w2 and router, calibrated on windows */
            const moec_merge_windows mw = {.ids = ids, .window_len = len, .n_windows = 4};
            moec_merge_opts mo = MOEC_MERGE_OPTS_DEFAULT;
            mo.keep = 5;
            mo.threads = 2;
            mo.windows = &mw;
            moec_merge_report r1, r2;
            assert_int_equal(moec_merge_model(m, st, &mo, &x, &r1, &err), MOEC_OK);
            mo.out_dir = b;
            assert_int_equal(moec_merge_model(m, st, &mo, &y, &r2, &err), MOEC_OK);
            assert_int_equal(r1.params_after, r2.params_after);
            assert_int_equal(r1.params_factored, r2.params_factored);
            moec_merge_report_free(&r1), moec_merge_report_free(&r2);
        }
        assert_int_equal(moec_model_save_hf(x, a, 0, false, &err), MOEC_OK);
        const char *names[2] = {"model.safetensors", "config.json"};
        for (int i = 0; i < 2; i++) {
            snprintf(pa, sizeof pa, "%s/%s", a, names[i]);
            snprintf(pb, sizeof pb, "%s/%s", b, names[i]);
            assert_same_file(pa, pb);
        }
        moec_model_close(x), moec_model_close(y);
    }
    /* an existing output is kept unless overwrite */
    moec_prune_opts po = MOEC_PRUNE_OPTS_DEFAULT;
    po.keep = 5;
    po.out_dir = b;
    moec_prune_report r;
    moec_model *x = NULL;
    assert_int_equal(moec_prune_freq(m, st, &po, &x, &r, &err), MOEC_ERR_IO);
    moec_prune_report_free(&r);
    assert_null(x);
    free(ids);
    moec_stats_free(st);
    moec_tokenizer_free(tok);
    moec_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hstates_match_forward),
        cmocka_unit_test(test_driver),
        cmocka_unit_test(test_quant_streamed),
        cmocka_unit_test(test_prune_merge_streamed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
