/* lib/model/check.c and the readers' guards against hostile values inside
 * well-formed files: NaN/Inf weights named by tensor and position, a
 * tokenizer larger than the embedding, a config claiming far more experts
 * than the checkpoint holds, outputs that would replace the model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "core/dtype.h"
#include "core/qformat.h"
#include "formats/safetensors.h"
#include "model/check.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "tokenizer/tokenizer.h"

#define QWEN3 "tests/fixtures/qwen3moe-random"

static void test_tensor_finite(void **state)
{
    (void)state;
    moec_err err = {0};
    float f[6] = {1, 2, 3, 4, 5, 6};
    moec_tensor t = {.dtype = MOEC_DT_F32, .ndim = 2, .shape = {2, 3}, .data = f, .nbytes = sizeof f};
    assert_int_equal(moec_tensor_check_finite(&t, "w", &err), MOEC_OK);
    f[4] = NAN;
    assert_int_equal(moec_tensor_check_finite(&t, "w", &err), MOEC_ERR_NUMERIC);
    assert_string_equal(err.msg, "tensor w: NaN at [1, 1]");
    f[4] = 1;
    f[2] = -INFINITY;
    assert_int_equal(moec_tensor_check_finite(&t, "w", &err), MOEC_ERR_NUMERIC);
    assert_string_equal(err.msg, "tensor w: Inf at [0, 2]");

    uint16_t h[4];
    float g[4] = {0.5f, -2.0f, 65504.0f, 1e-7f};
    moec_from_f32(h, g, MOEC_DT_BF16, 4);
    moec_tensor b = {.dtype = MOEC_DT_BF16, .ndim = 1, .shape = {4}, .data = h, .nbytes = sizeof h};
    assert_int_equal(moec_tensor_check_finite(&b, "norm", &err), MOEC_OK);
    h[3] = 0x7f80; /* BF16 +Inf */
    assert_int_equal(moec_tensor_check_finite(&b, "norm", &err), MOEC_ERR_NUMERIC);
    assert_string_equal(err.msg, "tensor norm: Inf at [3]");
    moec_from_f32(h, g, MOEC_DT_F16, 4);
    b.dtype = MOEC_DT_F16;
    assert_int_equal(moec_tensor_check_finite(&b, "norm", &err), MOEC_OK);
    h[0] = 0x7e00; /* F16 NaN */
    assert_int_equal(moec_tensor_check_finite(&b, "norm", &err), MOEC_ERR_NUMERIC);
    assert_string_equal(err.msg, "tensor norm: NaN at [0]");

    /* a quantized tensor: its scales */
    moec_qmatrix q;
    tu_random_qmatrix(&q, 3, 10, 4, 4, false);
    moec_tensor qt = moec_qformat_tensor(&q.f);
    assert_int_equal(moec_tensor_check_finite(&qt, "e", &err), MOEC_OK);
    q.scales[1 * 3 + 2] = 0x7c00; /* row 1, group 2 */
    assert_int_equal(moec_tensor_check_finite(&qt, "e", &err), MOEC_ERR_NUMERIC);
    assert_string_equal(err.msg, "tensor e: Inf scale of group at [1, 2]");
    moec_qmatrix_free(&q);
}

static void test_model_finite(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m, *d;
    assert_int_equal(moec_model_open(&m, tu_src(QWEN3), &err), MOEC_OK);
    assert_int_equal(moec_model_check_finite(m, &err), MOEC_OK);
    assert_int_equal(moec_model_derive(&d, m, &err), MOEC_OK);
    moec_tensor *w = &d->layers[1].experts[5].w2;
    const moec_tensor old = *w;
    assert_int_equal(moec_model_new_tensor(d, w, MOEC_DT_F32, old.shape[0], old.shape[1], &err), MOEC_OK);
    moec_to_f32((float *)w->data, old.data, old.dtype, (size_t)moec_tensor_numel(&old));
    ((float *)w->data)[3 * old.shape[1] + 7] = NAN;
    assert_int_equal(moec_model_check_finite(d, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "tensor model.layers.1.mlp.experts.5.down_proj.weight: NaN at [3, 7]"));
    /* layer by layer: the other layer and the model-level tensors pass */
    assert_int_equal(moec_model_check_finite_layer(d, 0, &err), MOEC_OK);
    assert_int_equal(moec_model_check_finite_layer(d, -1, &err), MOEC_OK);
    assert_int_equal(moec_model_check_finite_layer(d, 1, &err), MOEC_ERR_NUMERIC);
    moec_model_close(d);
    moec_model_close(m);
}

/* A copy of the qwen3 fixture whose config.json has `key` set to `value`. */
static const char *variant_config(const char *key, const char *value)
{
    const char *dir = tu_tmpdir();
    char src[4096], dst[4200];
    static const char *files[] = {"model.safetensors", "tokenizer.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/%s", tu_src(QWEN3), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        size_t n;
        char *b = tu_read_file(src, &n);
        tu_write_file(dst, b, n);
        free(b);
    }
    snprintf(src, sizeof src, "%s/config.json", tu_src(QWEN3));
    size_t n;
    char *cfg = tu_read_file(src, &n);
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    char *at = strstr(cfg, pat);
    assert_non_null(at);
    char *end = at + strlen(pat);
    while (*end && *end != ',' && *end != '}')
        end++;
    char *out = malloc(n + 256);
    snprintf(out, n + 256, "%.*s\"%s\": %s%s", (int)(at - cfg), cfg, key, value, end);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    tu_write_file(dst, out, strlen(out));
    free(out);
    free(cfg);
    return dir;
}

static void expect_open(const char *dir, moec_status want, const char *needle)
{
    moec_model *m = NULL;
    moec_err err = {0};
    moec_status st = moec_model_open(&m, dir, &err);
    if (st != want)
        fail_msg("open gave %d (%s), expected %d", st, err.msg, want);
    if (needle && !strstr(err.msg, needle))
        fail_msg("'%s' does not name '%s'", err.msg, needle);
    moec_model_close(m);
}

static void test_hostile_configs(void **state)
{
    (void)state;
    /* 10^9 experts: out of the config's range, nothing allocated */
    expect_open(variant_config("num_experts", "1000000000"), MOEC_ERR_FORMAT, "num_experts");
    /* the most the config allows, against a file of 61 tensors: refused by
     * count before the expert tables are sized by it */
    expect_open(variant_config("num_experts", "65536"), MOEC_ERR_FORMAT, "describes");
    expect_open(variant_config("num_hidden_layers", "256"), MOEC_ERR_FORMAT, "describes");
    /* a vocabulary that disagrees with the embedding's rows */
    expect_open(variant_config("vocab_size", "4097"), MOEC_ERR_SHAPE, "embed_tokens");
    expect_open(variant_config("vocab_size", "16777216"), MOEC_ERR_SHAPE, "embed_tokens");
    /* shapes whose products overflow */
    expect_open(variant_config("hidden_size", "1048576"), MOEC_ERR_SHAPE, NULL);
    expect_open(variant_config("moe_intermediate_size", "1048576"), MOEC_ERR_SHAPE, NULL);
    /* the tokenizer knows ids past a (consistent) smaller embedding */
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src(QWEN3), &err), MOEC_OK);
    m->cfg.vocab_size = 100;
    moec_tokenizer *tok;
    assert_int_equal(moec_model_tokenizer(m, &tok, &err), MOEC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "100 rows"));
    moec_model_close(m);
}

static void test_output_is_input(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m, *d;
    assert_int_equal(moec_model_open(&m, tu_src(QWEN3), &err), MOEC_OK);
    assert_int_equal(moec_model_derive(&d, m, &err), MOEC_OK);
    assert_int_equal(moec_model_save_hf(d, tu_src(QWEN3), 0, true, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "the output is the input"));
    char p[4200];
    snprintf(p, sizeof p, "%s/x.moec", tu_src(QWEN3));
    assert_int_equal(moec_model_save_moec(d, p, NULL, &err), MOEC_ERR_ARG);
    assert_int_equal(access(p, F_OK), -1);
    snprintf(p, sizeof p, "%s/fine.moec", tu_tmpdir());
    assert_int_equal(moec_model_check_output(d, p, &err), MOEC_OK);
    moec_model_close(d);
    moec_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_finite),
        cmocka_unit_test(test_model_finite),
        cmocka_unit_test(test_hostile_configs),
        cmocka_unit_test(test_output_is_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
