/* Model loading against the config (missing, extra, mistyped, misshapen
 * tensors) and the HF writer's round trip. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "formats/safetensors.h"
#include "model/model.h"

#define QWEN3 "tests/fixtures/qwen3moe-random"

/* Copies the qwen3 fixture into dir, with the weights filtered/changed by edit. */
typedef void (*edit_fn)(moec_st_writer *w, const char *name, const moec_tensor *t, void *buf);

static void make_variant(const char *dir, edit_fn edit)
{
    moec_err err = {0};
    moec_safetensors *st;
    assert_int_equal(moec_st_open(&st, tu_src(QWEN3), &err), MOEC_OK);
    moec_st_writer *w = moec_st_writer_new();
    static char scratch[1 << 20];
    for (size_t i = 0; i < moec_st_count(st); i++)
        edit(w, moec_st_name(st, i), moec_st_tensor(st, i), scratch);
    assert_int_equal(moec_st_writer_write(w, dir, 0, &err), MOEC_OK);
    moec_st_writer_free(w);
    moec_st_close(st);
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s/config.json", tu_src(QWEN3));
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    size_t n;
    char *cfg = tu_read_file(src, &n);
    tu_write_file(dst, cfg, n);
    free(cfg);
}

static void drop_expert_tensor(moec_st_writer *w, const char *name, const moec_tensor *t, void *buf)
{
    (void)buf;
    if (strcmp(name, "model.layers.1.mlp.experts.3.up_proj.weight") != 0)
        assert_int_equal(moec_st_writer_add(w, name, t, NULL), MOEC_OK);
}

static void add_extra_expert(moec_st_writer *w, const char *name, const moec_tensor *t, void *buf)
{
    (void)buf;
    assert_int_equal(moec_st_writer_add(w, name, t, NULL), MOEC_OK);
    if (strcmp(name, "model.layers.0.mlp.experts.0.up_proj.weight") == 0)
        assert_int_equal(moec_st_writer_add(w, "model.layers.0.mlp.experts.8.up_proj.weight", t, NULL), MOEC_OK);
}

static void router_as_i16(moec_st_writer *w, const char *name, const moec_tensor *t, void *buf)
{
    (void)buf;
    moec_tensor c = *t;
    if (strcmp(name, "model.layers.0.mlp.gate.weight") == 0)
        c.dtype = MOEC_DT_I16;
    assert_int_equal(moec_st_writer_add(w, name, &c, NULL), MOEC_OK);
}

static void transpose_router(moec_st_writer *w, const char *name, const moec_tensor *t, void *buf)
{
    (void)buf;
    moec_tensor c = *t;
    if (strcmp(name, "model.layers.1.mlp.gate.weight") == 0) {
        c.shape[0] = t->shape[1];
        c.shape[1] = t->shape[0];
    }
    assert_int_equal(moec_st_writer_add(w, name, &c, NULL), MOEC_OK);
}

static void expect_open_error(edit_fn edit, moec_status want, const char *needle)
{
    const char *dir = tu_tmpdir();
    make_variant(dir, edit);
    moec_model *m = NULL;
    moec_err err = {0};
    assert_int_equal(moec_model_open(&m, dir, &err), want);
    assert_null(m);
    if (!strstr(err.msg, needle))
        fail_msg("'%s' does not name '%s'", err.msg, needle);
}

static void test_open_errors(void **state)
{
    (void)state;
    expect_open_error(drop_expert_tensor, MOEC_ERR_FORMAT, "model.layers.1.mlp.experts.3.up_proj.weight");
    expect_open_error(add_extra_expert, MOEC_ERR_SHAPE, "experts.8");
    expect_open_error(router_as_i16, MOEC_ERR_UNSUPPORTED, "I16");
    expect_open_error(transpose_router, MOEC_ERR_SHAPE, "model.layers.1.mlp.gate.weight");
    moec_model *m;
    moec_err err = {0};
    assert_int_equal(moec_model_open(&m, tu_src("tests/no-such-dir"), &err), MOEC_ERR_IO);
    assert_int_equal(moec_model_open(&m, tu_src(QWEN3 "/config.json"), &err), MOEC_ERR_ARG);
}

static void assert_same_weights(const moec_model *a, const moec_model *b)
{
    assert_int_equal(moec_model_params(a), moec_model_params(b));
    assert_memory_equal(a->embed.data, b->embed.data, a->embed.nbytes);
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int e = 0; e < a->layers[l].n_experts; e++) {
            assert_memory_equal(a->layers[l].experts[e].w2.data, b->layers[l].experts[e].w2.data,
                                a->layers[l].experts[e].w2.nbytes);
        }
}

static void test_save_round_trip(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m, *back;
    assert_int_equal(moec_model_open(&m, tu_src(QWEN3), &err), MOEC_OK);
    char out[4096];
    snprintf(out, sizeof out, "%s/copy", tu_tmpdir());
    assert_int_equal(moec_model_save_hf(m, out, 0, false, &err), MOEC_OK);
    assert_int_equal(moec_model_open(&back, out, &err), MOEC_OK);
    assert_same_weights(m, back);
    assert_non_null(back->tokenizer_json);
    moec_model_close(back);
    /* exists: refused without overwrite, replaced with it; sharded this time */
    assert_int_equal(moec_model_save_hf(m, out, 0, false, &err), MOEC_ERR_IO);
    assert_int_equal(moec_model_save_hf(m, out, 200000, true, &err), MOEC_OK);
    char idx[4200];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", out);
    assert_int_equal(access(idx, F_OK), 0);
    assert_int_equal(moec_model_open(&back, out, &err), MOEC_OK);
    assert_same_weights(m, back);
    moec_model_close(back);
    /* a directory that is not a model is never replaced */
    const char *keep = tu_tmpdir();
    char precious[4200];
    snprintf(precious, sizeof precious, "%s/notes.txt", keep);
    tu_write_file(precious, "x", 1);
    assert_int_equal(moec_model_save_hf(m, keep, 0, true, &err), MOEC_ERR_IO);
    assert_int_equal(access(precious, F_OK), 0);
    moec_model_close(m);
}

static void test_derive_fewer_experts(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m, *d, *back;
    assert_int_equal(moec_model_open(&m, tu_src(QWEN3), &err), MOEC_OK);
    assert_int_equal(moec_model_derive(&d, m, &err), MOEC_OK);
    /* keep experts 5, 6 (in that order) of layer 0 and a new router of 2 rows */
    moec_ffn keep[2] = {m->layers[0].experts[5], m->layers[0].experts[6]};
    assert_int_equal(moec_model_resize_experts(d, 0, 2, &err), MOEC_OK);
    d->layers[0].experts[0] = keep[0];
    d->layers[0].experts[1] = keep[1];
    moec_tensor router;
    assert_int_equal(moec_model_new_tensor(d, &router, MOEC_DT_BF16, 2, m->cfg.hidden_size, &err), MOEC_OK);
    size_t row = (size_t)m->cfg.hidden_size * 2;
    memcpy((void *)router.data, (const char *)m->layers[0].router.data + 5 * row, 2 * row);
    d->layers[0].router = router;
    char out[4096];
    snprintf(out, sizeof out, "%s/pruned", tu_tmpdir());
    assert_int_equal(moec_model_save_hf(d, out, 0, false, &err), MOEC_OK);
    assert_int_equal(moec_model_open(&back, out, &err), MOEC_OK);
    assert_int_equal(back->cfg.layer_experts[0], 2);
    assert_int_equal(back->cfg.layer_experts[1], 8);
    assert_memory_equal(back->layers[0].experts[1].w1.data, m->layers[0].experts[6].w1.data,
                        m->layers[0].experts[6].w1.nbytes);
    assert_memory_equal(back->layers[0].router.data, (const char *)m->layers[0].router.data + 5 * row, 2 * row);
    moec_model_close(back);
    moec_model_close(d);
    moec_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_save_round_trip),
        cmocka_unit_test(test_derive_fewer_experts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
