/* A quantized model stored in a .moec container and run from it
 * (lib/model/model_moec.c), exported back to HF (tools/moec-export.c), and
 * the executor's activation quantization.
 *
 * The model: tests/fixtures/qwen3moe-random with every expert quantized by
 * RTN (layer 0: 4-bit, group 32, asymmetric; layer 1: 3-bit, group 16,
 * symmetric), layer 0's q_proj at 8 bits with one group per row, the
 * embedding at 4 bits (group 64), and layer 1 expert 0's down_proj all zeros
 * (so its sections compress and the zstd path of the reader is used).
 * Activation quantization is checked on models/mixtral-tiny. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "core/dtype.h"
#include "exec/exec.h"
#include "formats/container.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "model/summary.h"
#include "pipeline/export.h"
#include "core/qformat.h"
#include "quant/rtn.h"

#define FIXTURE "tests/fixtures/qwen3moe-random"
#define N_TOK 24

static moec_model *base, *qm;
static int32_t toks[N_TOK];
static char dir[4096], good[4200];

static void quantize(moec_model *m, moec_tensor *t, int bits, int group, bool sym, bool zero, const char *name)
{
    moec_err err = {0};
    const int64_t rows = t->shape[0], cols = t->shape[1];
    float *w = calloc((size_t)(rows * cols), sizeof *w);
    assert_non_null(w);
    if (!zero)
        moec_to_f32(w, t->data, t->dtype, (size_t)(rows * cols));
    moec_quant_opts o = MOEC_QUANT_OPTS_DEFAULT;
    o.bits = bits;
    o.group = group;
    o.symmetric = sym;
    moec_qmatrix q;
    assert_int_equal(moec_rtn_quantize(w, rows, cols, &o, name, &q, &err), MOEC_OK);
    if (moec_model_set_quant(m, t, &q.f, name, &err))
        fail_msg("%s", err.msg);
    moec_qmatrix_free(&q);
    free(w);
}

static int setup(void **state)
{
    (void)state;
    moec_err err = {0};
    if (moec_model_open(&base, tu_src(FIXTURE), &err) || moec_model_derive(&qm, base, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    for (int l = 0; l < qm->cfg.n_layers; l++) {
        moec_layer *L = &qm->layers[l];
        for (int e = 0; e < L->n_experts; e++) {
            moec_tensor *w[3] = {&L->experts[e].w1, &L->experts[e].w3, &L->experts[e].w2};
            for (int k = 0; k < 3; k++)
                quantize(qm, w[k], l == 0 ? 4 : 3, l == 0 ? 32 : 16, l != 0, l == 1 && e == 0 && k == 2,
                         "expert");
        }
    }
    quantize(qm, &qm->layers[0].wq, 8, 0, true, false, "q_proj");
    quantize(qm, &qm->embed, 4, 64, false, false, "embed");
    for (int i = 0; i < N_TOK; i++)
        toks[i] = (int32_t)((i * 379 + 17) % qm->cfg.vocab_size);
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    snprintf(good, sizeof good, "%s/q.moec", dir);
    moec_moec_save_opts so = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    so.report_json = "{\"method\":\"rtn\"}";
    if (moec_model_save_moec(qm, good, &so, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    moec_model_close(qm);
    moec_model_close(base);
    return 0;
}

/* all positions' logits of toks */
static float *logits(const moec_model *m, int threads, int act_bits)
{
    moec_err err = {0};
    moec_exec *ex;
    moec_exec_opts o = MOEC_EXEC_OPTS_DEFAULT;
    o.threads = threads;
    o.max_ctx = 64;
    o.act_bits = act_bits;
    if (moec_exec_new(&ex, m, &o, &err))
        fail_msg("%s", err.msg);
    float *out = malloc((size_t)N_TOK * m->cfg.vocab_size * sizeof *out);
    assert_non_null(out);
    if (moec_exec_forward(ex, toks, N_TOK, out, true, &err))
        fail_msg("%s", err.msg);
    moec_exec_free(ex);
    return out;
}

/* the slots of a model, in order */
typedef struct {
    moec_tensor *t[512];
    char names[512][192];
    int n;
} slot_list;

typedef struct export_progress {
    int calls;
    int64_t last_done, last_total;
    bool ordered;
    char stage[32];
} export_progress;

static void count_parts(void *ctx, const char *stage, int64_t done, int64_t total)
{
    export_progress *p = ctx;
    p->ordered = (p->calls == 0 || p->ordered) && done == p->last_done + 1;
    p->calls++;
    p->last_done = done;
    p->last_total = total;
    snprintf(p->stage, sizeof p->stage, "%s", stage);
}

static moec_status collect(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    slot_list *l = ctx;
    assert_true(l->n < 512);
    l->t[l->n] = s->t;
    snprintf(l->names[l->n], sizeof l->names[0], "%s", s->name);
    l->n++;
    return MOEC_OK;
}

static bool in_mapping(const moec_model *m, const void *p)
{
    size_t size;
    const char *base_p = moec_container_bytes(m->ct, &size);
    return (const char *)p >= base_p && (const char *)p < base_p + size;
}

static void assert_same_tensors(moec_model *a, moec_model *b)
{
    static slot_list la, lb;
    la.n = lb.n = 0;
    moec_model_for_each_slot(a, collect, &la, NULL);
    moec_model_for_each_slot(b, collect, &lb, NULL);
    assert_int_equal(la.n, lb.n);
    for (int i = 0; i < la.n; i++) {
        const moec_tensor *x = la.t[i], *y = lb.t[i];
        assert_string_equal(la.names[i], lb.names[i]);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->ndim, y->ndim);
        assert_memory_equal(x->shape, y->shape, sizeof x->shape);
        if (x->dtype != MOEC_DT_QUANT) {
            assert_memory_equal(x->data, y->data, (size_t)moec_tensor_numel(x) * moec_dtype_size(x->dtype));
            continue;
        }
        const moec_qformat *f = x->q, *g = y->q;
        assert_int_equal(f->bits, g->bits);
        assert_int_equal(f->group, g->group);
        assert_int_equal(f->symmetric, g->symmetric);
        assert_int_equal(f->codes_bytes, g->codes_bytes);
        assert_int_equal(f->scales_bytes, g->scales_bytes);
        assert_int_equal(f->zeros_bytes, g->zeros_bytes);
        assert_memory_equal(f->codes, g->codes, f->codes_bytes);
        assert_memory_equal(f->scales, g->scales, f->scales_bytes);
        if (f->zeros_bytes)
            assert_memory_equal(f->zeros, g->zeros, f->zeros_bytes);
    }
}

/* The fixture's tokenizer_config.json and generation_config.json travel
 * with the weights (an absent side file stays absent). */
static void assert_same_side_files(const moec_model *a, const moec_model *src)
{
    int present = 0;
    for (int i = 0; i < MOEC_N_SIDE_FILES; i++) {
        assert_int_equal(a->side[i].data != NULL, src->side[i].data != NULL);
        if (!src->side[i].data)
            continue;
        present++;
        assert_int_equal(a->side[i].len, src->side[i].len);
        assert_memory_equal(a->side[i].data, src->side[i].data, src->side[i].len);
    }
    assert_int_equal(present, 2);
}

static void test_roundtrip(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *r;
    if (moec_model_open(&r, good, &err))
        fail_msg("%s", err.msg);
    assert_same_tensors(qm, r);
    struct stat sb;
    assert_int_equal(stat(good, &sb), 0);
    assert_int_equal(r->file_bytes, (uint64_t)sb.st_size);
    assert_int_equal(r->tokenizer_json_len, base->tokenizer_json_len);
    assert_memory_equal(r->tokenizer_json, base->tokenizer_json, base->tokenizer_json_len);
    assert_memory_equal(r->cfg.layer_experts, qm->cfg.layer_experts, sizeof qm->cfg.layer_experts);
    assert_same_side_files(r, base);
    const void *rep;
    size_t rep_len;
    assert_int_equal(moec_container_blob(r->ct, "report.json", &rep, &rep_len, &err), MOEC_OK);
    assert_int_equal(rep_len, strlen("{\"method\":\"rtn\"}"));
    /* float tensors are views into the mapping; so are raw quantized sections */
    assert_true(in_mapping(r, r->layers[0].wk.data));
    assert_true(in_mapping(r, r->layers[0].experts[1].w1.q->codes));
    /* the all-zero expert was compressed and decoded into the model's memory */
    int64_t zi = moec_container_find(r->ct, "model.layers.1.mlp.experts.0.down_proj.weight");
    assert_true(zi >= 0);
    assert_int_equal(moec_container_tensor(r->ct, (size_t)zi)->sections[0].encoding, MOEC_ENCODING_ZSTD);
    assert_false(in_mapping(r, r->layers[1].experts[0].w2.q->codes));

    float *a = logits(qm, 1, 0), *b = logits(r, 1, 0), *c = logits(r, 2, 0);
    const size_t n = (size_t)N_TOK * qm->cfg.vocab_size;
    assert_memory_equal(a, b, n * sizeof *a);
    double e2 = tu_max_rel_diff(c, a, n), eq = 0;
    float *f = logits(base, 1, 0);
    eq = tu_max_rel_diff(a, f, n);
    printf("# reopened == in-memory; 2 threads rel err %.2e; quantized vs BF16 rel err %.3f\n", e2, eq);
    assert_true(e2 <= 1e-5);
    assert_true(eq > 0); /* quantization did change the model */
    free(a), free(b), free(c), free(f);
    moec_model_close(r);
}

static void test_uncompressed(void **state)
{
    (void)state;
    moec_err err = {0};
    char path[4300];
    snprintf(path, sizeof path, "%s/raw.moec", dir);
    moec_moec_save_opts so = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    so.compress = false;
    assert_int_equal(moec_model_save_moec(qm, path, &so, &err), MOEC_OK);
    moec_model *r;
    if (moec_model_open(&r, path, &err))
        fail_msg("%s", err.msg);
    for (size_t i = 0; i < moec_container_tensor_count(r->ct); i++) {
        const moec_ctensor_info *t = moec_container_tensor(r->ct, i);
        for (int k = 0; k < t->n_sections; k++)
            assert_int_equal(t->sections[k].encoding, MOEC_ENCODING_RAW);
    }
    assert_true(in_mapping(r, r->layers[1].experts[0].w2.q->codes));
    assert_same_tensors(qm, r);
    moec_model_close(r);
}

static void test_summary(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *r;
    assert_int_equal(moec_model_open(&r, good, &err), MOEC_OK);
    cJSON *s = moec_model_summary(r);
    assert_non_null(s);
    const cJSON *q = cJSON_GetObjectItem(s, "quantized");
    assert_non_null(q);
    /* 2 layers x 8 experts x 3, q_proj, embedding */
    assert_int_equal((int)cJSON_GetObjectItem(q, "tensors")->valuedouble, 2 * 8 * 3 + 2);
    double qbpw = cJSON_GetObjectItem(q, "bits_per_weight")->valuedouble;
    assert_true(qbpw > 3.0 && qbpw < 6.0);
    const cJSON *c = cJSON_GetObjectItem(s, "container");
    assert_non_null(c);
    assert_int_equal((uint64_t)cJSON_GetObjectItem(c, "file_bytes")->valuedouble, r->file_bytes);
    double fbpw = cJSON_GetObjectItem(c, "file_bits_per_weight")->valuedouble;
    const cJSON *st = cJSON_GetObjectItem(c, "storage");
    const cJSON *q4 = cJSON_GetObjectItem(st, "q4_g32"), *q3 = cJSON_GetObjectItem(st, "q3_g16_sym");
    assert_non_null(q4);
    assert_non_null(q3);
    assert_non_null(cJSON_GetObjectItem(st, "BF16"));
    assert_int_equal((int)cJSON_GetObjectItem(q4, "tensors")->valuedouble, 8 * 3);
    /* per expert: gate/up [48][64] 1536 + 192 + 48 bytes, down [64][48] (a
     * short second group) 1536 + 256 + 64 bytes, for 9216 weights; zstd can
     * only make it smaller */
    double q4bpw = cJSON_GetObjectItem(q4, "bits_per_weight")->valuedouble;
    assert_true(q4bpw <= 8.0 * 5408 / 9216 + 1e-9 && q4bpw > 3.5);
    assert_true(fbpw > qbpw && fbpw < 16.0);
    double total = cJSON_GetObjectItem(s, "params_total")->valuedouble;
    assert_true(fabs(cJSON_GetObjectItem(c, "params")->valuedouble - total) < 0.5);
    cJSON_Delete(s);
    moec_model_close(r);
}

static void test_export(void **state)
{
    (void)state;
    moec_err err = {0};
    char out[4300], cmd[9000];
    snprintf(out, sizeof out, "%s/hf32", dir);
    snprintf(cmd, sizeof cmd, "%s/moec-export %s --hf %s --dtype f32 --quiet", MOEC_BIN_DIR, good, out);
    assert_int_equal(system(cmd), 0);
    moec_model *r, *h;
    assert_int_equal(moec_model_open(&r, good, &err), MOEC_OK);
    if (moec_model_open(&h, out, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(h->embed.dtype, MOEC_DT_F32);
    assert_int_equal(h->layers[0].experts[0].w1.dtype, MOEC_DT_F32);
    assert_int_equal(h->layers[0].wk.dtype, MOEC_DT_BF16); /* not quantized: as stored */
    assert_non_null(h->tokenizer_json);
    assert_same_side_files(h, base);
    assert_non_null(strstr(h->config_json, "\"float32\""));
    const size_t n = (size_t)N_TOK * r->cfg.vocab_size;
    float *a = logits(r, 1, 0), *b = logits(h, 1, 0);
    double e = tu_max_rel_diff(b, a, n);
    printf("# .moec vs exported HF f32: rel err %.2e\n", e);
    assert_true(e <= 1e-5);
    free(b);
    moec_model_close(h);

    /* default bf16: rounds the dequantized weights, close but not exact */
    snprintf(out, sizeof out, "%s/hf16", dir);
    snprintf(cmd, sizeof cmd, "%s/moec-export %s --hf %s --quiet", MOEC_BIN_DIR, good, out);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(moec_model_open(&h, out, &err), MOEC_OK);
    assert_int_equal(h->layers[1].experts[3].w2.dtype, MOEC_DT_BF16);
    b = logits(h, 1, 0);
    e = tu_max_rel_diff(b, a, n);
    printf("# .moec vs exported HF bf16: rel err %.2e\n", e);
    assert_true(e <= 2e-2);
    free(a), free(b);
    moec_model_close(h);
    moec_model_close(r);

    /* usage errors exit 2, failures 1, and never leave OUT_DIR behind */
    snprintf(cmd, sizeof cmd, "%s/moec-export %s 2>/dev/null", MOEC_BIN_DIR, good);
    assert_int_equal(WEXITSTATUS(system(cmd)), 2);
    snprintf(cmd, sizeof cmd, "%s/moec-export %s --hf %s/x --dtype f8 2>/dev/null", MOEC_BIN_DIR, good, dir);
    assert_int_equal(WEXITSTATUS(system(cmd)), 2);
    snprintf(cmd, sizeof cmd, "%s/moec-export %s/none.moec --hf %s/x 2>/dev/null", MOEC_BIN_DIR, dir, dir);
    assert_int_equal(WEXITSTATUS(system(cmd)), 1);
    snprintf(cmd, sizeof cmd, "%s/moec-export %s --hf %s 2>/dev/null", MOEC_BIN_DIR, good, out);
    assert_int_equal(WEXITSTATUS(system(cmd)), 1); /* exists, no --force */
    snprintf(out, sizeof out, "%s/x", dir);
    struct stat sb;
    assert_int_not_equal(stat(out, &sb), 0);
}

static void section_range(const char *path, const char *tensor, moec_section_kind kind, uint64_t *off,
                          uint64_t *size);

/* A lazily opened container exported part by part (compressed sections
 * decoded one part at a time) writes the bytes of the whole-model path;
 * damage in a tensor that open did not read is caught when its part is
 * written, and nothing is left behind. */
static void test_lazy_export(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_container *c;
    assert_int_equal(moec_container_open(good, 0, &c, &err), MOEC_OK);
    int zstd = 0;
    for (size_t i = 0; i < moec_container_tensor_count(c); i++) {
        const moec_ctensor_info *t = moec_container_tensor(c, i);
        for (int k = 0; k < t->n_sections; k++)
            zstd += t->sections[k].encoding == MOEC_ENCODING_ZSTD;
    }
    moec_container_close(c);
    assert_true(zstd > 0);

    moec_model *full, *ref, *lazy;
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s/ref-f32", dir);
    snprintf(b, sizeof b, "%s/lazy-f32", dir);
    assert_int_equal(moec_model_open(&full, good, &err), MOEC_OK);
    assert_int_equal(moec_model_derive(&ref, full, &err), MOEC_OK);
    assert_int_equal(moec_model_dequantize(ref, MOEC_DT_F32, NULL, NULL, &err), MOEC_OK);
    assert_int_equal(moec_model_save_hf(ref, a, 0, false, &err), MOEC_OK);
    assert_int_equal(moec_model_open_moec_lazy(&lazy, good, &err), MOEC_OK);
    assert_null(lazy->layers[1].experts[2].w1.data); /* unbound until its part is loaded */
    assert_int_equal(lazy->layers[1].experts[2].w1.dtype, MOEC_DT_QUANT);
    moec_export_summary sum;
    export_progress pr = {0};
    assert_int_equal(moec_export_hf(lazy, b, MOEC_DT_F32, 0, false, count_parts, &pr, &sum, &err), MOEC_OK);
    /* one report per part (embedding, layers, head), in order, as dequantizing */
    assert_int_equal(pr.calls, ref->cfg.n_layers + 2);
    assert_int_equal(pr.last_done, pr.last_total);
    assert_int_equal(pr.last_total, ref->cfg.n_layers + 2);
    assert_true(pr.ordered);
    assert_string_equal(pr.stage, "dequantizing");
    assert_int_equal(sum.params, moec_model_params(ref));
    assert_int_equal(sum.bytes, moec_model_bytes(ref));
    const char *files[] = {"model.safetensors", "config.json", "tokenizer.json"};
    for (int i = 0; i < 3; i++) {
        char pa[4400], pb[4400];
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        size_t na, nb;
        char *x = tu_read_file(pa, &na), *y = tu_read_file(pb, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(x, y, na);
        free(x), free(y);
    }
    moec_model_close(lazy);
    moec_model_close(ref);
    moec_model_close(full);

    size_t size;
    char *bytes = tu_read_file(good, &size);
    uint64_t off = 0, len = 0;
    section_range(good, "model.layers.1.mlp.experts.5.down_proj.weight", MOEC_SECTION_CODES, &off, &len);
    bytes[off + len / 2] ^= 0x10;
    char bad[4300], out[4300];
    snprintf(bad, sizeof bad, "%s/bad-lazy.moec", dir);
    snprintf(out, sizeof out, "%s/bad-export", dir);
    tu_write_file(bad, bytes, size);
    free(bytes);
    assert_int_equal(moec_model_open_moec_lazy(&lazy, bad, &err), MOEC_OK);
    assert_int_not_equal(moec_export_hf(lazy, out, MOEC_DT_BF16, 0, false, NULL, NULL, NULL, &err), MOEC_OK);
    assert_non_null(strstr(err.msg, "model.layers.1.mlp.experts.5.down_proj.weight"));
    struct stat sb;
    assert_int_not_equal(stat(out, &sb), 0);
    moec_model_close(lazy);
}

/* ---- damaged and inconsistent containers ---- */

static void expect_open_error(const char *path, const char *needle)
{
    moec_err err = {0};
    moec_model *m = NULL;
    assert_int_not_equal(moec_model_open(&m, path, &err), MOEC_OK);
    assert_null(m);
    assert_null(strchr(err.msg, '\n'));
    if (needle && !strstr(err.msg, needle))
        fail_msg("error '%s' does not name '%s'", err.msg, needle);
}

static void section_range(const char *path, const char *tensor, moec_section_kind kind, uint64_t *off,
                          uint64_t *size)
{
    moec_err err = {0};
    moec_container *c;
    assert_int_equal(moec_container_open(path, 0, &c, &err), MOEC_OK);
    int64_t i = moec_container_find(c, tensor);
    assert_true(i >= 0);
    const moec_ctensor_info *t = moec_container_tensor(c, (size_t)i);
    bool found = false;
    for (int k = 0; k < t->n_sections; k++)
        if (t->sections[k].kind == kind) {
            *off = t->sections[k].offset;
            *size = t->sections[k].stored_size;
            found = true;
        }
    assert_true(found);
    moec_container_close(c);
}

static void test_corrupt(void **state)
{
    (void)state;
    size_t size;
    char *bytes = tu_read_file(good, &size);
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/bad.moec", dir);
    const char *victims[] = {"model.layers.1.mlp.experts.5.down_proj.weight", "model.layers.0.mlp.experts.2.up_proj.weight",
                             "model.embed_tokens.weight"};
    const moec_section_kind kinds[] = {MOEC_SECTION_CODES, MOEC_SECTION_SCALES, MOEC_SECTION_ZEROS};
    for (int v = 0; v < 3; v++) {
        uint64_t off = 0, len = 0;
        section_range(good, victims[v], kinds[v], &off, &len);
        bytes[off + len / 2] ^= 0x10;
        tu_write_file(bad, bytes, size);
        bytes[off + len / 2] ^= 0x10;
        expect_open_error(bad, victims[v]);
    }
    /* truncated anywhere: cleanly refused */
    const size_t cuts[] = {0, 10, 64, size / 3, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        tu_write_file(bad, bytes, cuts[i]);
        expect_open_error(bad, bad);
    }
    free(bytes);
    expect_open_error(dir, NULL); /* a directory without config.json */
}

/* Writes a copy of src to dst without tensor `drop` and with `put` added
 * (replacing the tensor of its name if there is one). */
static void rewrite(const char *src, const char *dst, const char *drop, const moec_ctensor_desc *put)
{
    moec_err err = {0};
    moec_container *c;
    moec_container_writer *w;
    assert_int_equal(moec_container_open(src, 0, &c, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_new(NULL, &w, &err), MOEC_OK);
    for (size_t b = 0; b < moec_container_blob_count(c); b++) {
        const void *data;
        size_t len;
        const char *name = moec_container_blob_name(c, b);
        assert_int_equal(moec_container_blob(c, name, &data, &len, &err), MOEC_OK);
        assert_int_equal(moec_container_writer_add_blob(w, name, data, len, &err), MOEC_OK);
    }
    void *owned[2048];
    int n_owned = 0;
    bool put_done = false;
    for (size_t i = 0; i < moec_container_tensor_count(c); i++) {
        const moec_ctensor_info *t = moec_container_tensor(c, i);
        if (drop && strcmp(t->name, drop) == 0)
            continue;
        if (put && strcmp(t->name, put->name) == 0) {
            assert_int_equal(moec_container_writer_add_tensor(w, put, &err), MOEC_OK);
            put_done = true;
            continue;
        }
        moec_ctensor_desc d = {.name = t->name, .type = t->type, .n_sections = t->n_sections,
                               .compress = MOEC_COMPRESS_NONE};
        for (int k = 0; k < t->n_sections; k++) {
            const void *data;
            size_t len;
            void *own;
            assert_int_equal(moec_container_section_get(c, i, t->sections[k].kind, &data, &len, &own, &err), MOEC_OK);
            if (own)
                owned[n_owned++] = own;
            d.sections[k] = (moec_csection){t->sections[k].kind, data, len};
        }
        assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_OK);
    }
    if (put && !put_done)
        assert_int_equal(moec_container_writer_add_tensor(w, put, &err), MOEC_OK);
    if (moec_container_writer_write(w, dst, &err))
        fail_msg("%s", err.msg);
    moec_container_writer_free(w);
    for (int i = 0; i < n_owned; i++)
        free(owned[i]);
    moec_container_close(c);
}

static void test_inconsistent(void **state)
{
    (void)state;
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/inconsistent.moec", dir);
    const char *up = "model.layers.0.mlp.experts.2.up_proj.weight";

    rewrite(good, bad, up, NULL);
    expect_open_error(bad, up);

    /* a tensor the config does not call for */
    static uint16_t norm[64];
    for (int i = 0; i < 64; i++)
        norm[i] = moec_f32_to_bf16(1.0f);
    moec_ctensor_desc extra = {.name = "model.layers.0.mlp.experts.8.up_proj.weight",
                               .type = {.storage = MOEC_STORAGE_BF16, .ndim = 1, .shape = {64}},
                               .n_sections = 1,
                               .sections = {{MOEC_SECTION_DATA, norm, sizeof norm}}};
    rewrite(good, bad, NULL, &extra);
    expect_open_error(bad, extra.name);

    /* wrong shape */
    moec_ctensor_desc half = {.name = "model.norm.weight",
                              .type = {.storage = MOEC_STORAGE_BF16, .ndim = 1, .shape = {32}},
                              .n_sections = 1,
                              .sections = {{MOEC_SECTION_DATA, norm, 64}}};
    rewrite(good, bad, NULL, &half);
    expect_open_error(bad, "model.norm.weight");

    /* group-wise storage for a 1-D tensor */
    static uint8_t codes[64];
    static uint16_t scale[1] = {0x3c00};
    moec_ctensor_desc qnorm = {.name = "model.norm.weight",
                               .type = {.storage = MOEC_STORAGE_GROUPWISE, .bits = 8, .group = 64, .symmetric = 1,
                                        .ndim = 1, .shape = {64}},
                               .n_sections = 2,
                               .sections = {{MOEC_SECTION_CODES, codes, 64}, {MOEC_SECTION_SCALES, scale, 2}}};
    rewrite(good, bad, NULL, &qnorm);
    expect_open_error(bad, "model.norm.weight");

    /* a NaN scale: the container is intact, the quantized tensor is not */
    const moec_qformat *f = qm->layers[0].experts[2].w3.q;
    uint16_t *sc = malloc(f->scales_bytes);
    memcpy(sc, f->scales, f->scales_bytes);
    sc[3] = 0x7e00;
    moec_ctensor_desc nan = {.name = up,
                             .type = {.storage = MOEC_STORAGE_GROUPWISE, .bits = f->bits, .group = f->group,
                                      .symmetric = f->symmetric, .ndim = 2, .shape = {f->rows, f->cols}},
                             .n_sections = 3,
                             .sections = {{MOEC_SECTION_CODES, f->codes, f->codes_bytes},
                                          {MOEC_SECTION_SCALES, sc, f->scales_bytes},
                                          {MOEC_SECTION_ZEROS, f->zeros, f->zeros_bytes}}};
    rewrite(good, bad, NULL, &nan);
    expect_open_error(bad, up);
    free(sc);
}

static void test_bad_calls(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_qformat f = *qm->layers[0].experts[0].w1.q;
    f.bits = 9;
    moec_tensor t;
    assert_int_equal(moec_model_set_quant(qm, &t, &f, "bad", &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "bad"));
    moec_model *r;
    assert_int_equal(moec_model_derive(&r, qm, &err), MOEC_OK);
    assert_int_equal(moec_model_dequantize(r, MOEC_DT_QUANT, NULL, NULL, &err), MOEC_ERR_ARG);
    moec_model_close(r);
    /* save refuses a tensor that does not match its slot */
    assert_int_equal(moec_model_derive(&r, qm, &err), MOEC_OK);
    r->layers[1].wv = r->layers[1].wk;
    r->layers[1].wv.shape[0] = 7;
    char path[4300];
    snprintf(path, sizeof path, "%s/refused.moec", dir);
    assert_int_equal(moec_model_save_moec(r, path, NULL, &err), MOEC_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "model.layers.1.self_attn.v_proj.weight"));
    struct stat sb;
    assert_int_not_equal(stat(path, &sb), 0);
    moec_model_close(r);
}

/* Activation fake quantization on the trained mixtral-tiny (a random
 * model's routing flips on the smallest perturbation): 16 bits is nearly
 * off, 8 bits changes the logits slightly, 4 bits more. */
static double rms_rel(const float *a, const float *b, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(d / r);
}

static void test_act_bits(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *m;
    if (moec_model_open(&m, tu_src("models/mixtral-tiny"), &err))
        fail_msg("%s", err.msg);
    const size_t n = (size_t)N_TOK * m->cfg.vocab_size;
    float *a0 = logits(m, 1, 0), *a16 = logits(m, 1, 16), *a8 = logits(m, 2, 8), *a4 = logits(m, 1, 4);
    double e16 = rms_rel(a16, a0, n), e8 = rms_rel(a8, a0, n), e4 = rms_rel(a4, a0, n);
    printf("# mixtral-tiny act_bits 16 / 8 / 4: rms rel err %.2e / %.2e / %.2e\n", e16, e8, e4);
    assert_true(e16 > 0 && e16 < 1e-3);
    assert_true(e8 > e16 && e8 < 0.05);
    assert_true(e4 > e8 && e4 < 1.0);
    free(a0), free(a16), free(a8), free(a4);
    moec_exec *ex;
    moec_exec_opts o = MOEC_EXEC_OPTS_DEFAULT;
    o.act_bits = 1;
    assert_int_equal(moec_exec_new(&ex, m, &o, &err), MOEC_ERR_ARG);
    o.act_bits = 17;
    assert_int_equal(moec_exec_new(&ex, m, &o, &err), MOEC_ERR_ARG);
    moec_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),    cmocka_unit_test(test_uncompressed), cmocka_unit_test(test_summary),
        cmocka_unit_test(test_export),       cmocka_unit_test(test_corrupt),      cmocka_unit_test(test_inconsistent),
        cmocka_unit_test(test_bad_calls),    cmocka_unit_test(test_act_bits),     cmocka_unit_test(test_lazy_export),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
