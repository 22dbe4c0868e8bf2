#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/safetensors.h"

static const char *join(const char *dir, const char *name)
{
    static char ring[8][4096];
    static int next;
    char *p = ring[next++ % 8];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static moec_tensor view(moec_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    moec_tensor t = {.dtype = dt, .ndim = ndim, .data = data};
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = shape[i];
        n *= (size_t)shape[i];
    }
    t.nbytes = n * moec_dtype_size(dt);
    return t;
}

static void assert_same_tensor(const moec_tensor *a, const moec_tensor *b)
{
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->ndim, b->ndim);
    for (int i = 0; i < a->ndim; i++)
        assert_int_equal(a->shape[i], b->shape[i]);
    assert_int_equal(a->nbytes, b->nbytes);
    if (a->nbytes)
        assert_memory_equal(a->data, b->data, a->nbytes);
}

/* Writes a raw safetensors file: length field, header text, data_len bytes
 * of a counting pattern. hlen_override != 0 replaces the length field. */
static void make_raw(const char *path, const char *header, size_t data_len, uint64_t hlen_override)
{
    size_t h = strlen(header);
    size_t total = 8 + h + data_len;
    uint8_t *buf = malloc(total);
    assert_non_null(buf);
    uint64_t len = hlen_override ? hlen_override : h;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + h + i] = (uint8_t)i;
    tu_write_file(path, buf, total);
    free(buf);
}

/* Opens path expecting failure with code; the message must mention each of
 * the given fragments (NULL-terminated). */
static void expect_fail(const char *path, moec_status code, const char *frag1, const char *frag2)
{
    moec_safetensors *st = (moec_safetensors *)1;
    moec_err err = {0};
    moec_status s = moec_st_open(&st, path, &err);
    if (s != code || (frag1 && !strstr(err.msg, frag1)) || (frag2 && !strstr(err.msg, frag2)))
        fail_msg("opening %s: expected %s mentioning '%s' '%s', got %s: %s", path,
                 moec_status_name(code), frag1 ? frag1 : "", frag2 ? frag2 : "",
                 moec_status_name(s), err.msg);
    assert_null(st);
    assert_null(strchr(err.msg, '\n'));
}

static void expect_header_fail(const char *header, size_t data_len, moec_status code,
                               const char *frag1, const char *frag2)
{
    const char *path = join(tu_tmpdir(), "bad.safetensors");
    make_raw(path, header, data_len, 0);
    expect_fail(path, code, frag1, frag2);
}

/* ---- round trips -------------------------------------------------------- */

static float f32v[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.5f, 1e30f};
static uint16_t f16v[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
static uint16_t bf16v[15] = {0x3f80, 0x4000, 0xbf80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static int64_t i64v[2] = {INT64_MIN, 123456789012345};
static float scalar = 42.0f;

static void add_sample(moec_st_writer *w)
{
    moec_err err;
    moec_tensor t;
    t = view(MOEC_DT_F32, 2, (int64_t[]){2, 3}, f32v);
    assert_int_equal(moec_st_writer_add(w, "w.f32", &t, &err), MOEC_OK);
    t = view(MOEC_DT_F16, 1, (int64_t[]){4}, f16v);
    assert_int_equal(moec_st_writer_add(w, "a.f16", &t, &err), MOEC_OK);
    t = view(MOEC_DT_BF16, 2, (int64_t[]){3, 5}, bf16v);
    assert_int_equal(moec_st_writer_add(w, "m.bf16", &t, &err), MOEC_OK);
    t = view(MOEC_DT_I64, 1, (int64_t[]){2}, i64v);
    assert_int_equal(moec_st_writer_add(w, "z.i64", &t, &err), MOEC_OK);
    t = view(MOEC_DT_F32, 0, NULL, &scalar);
    assert_int_equal(moec_st_writer_add(w, "s.scalar", &t, &err), MOEC_OK);
    t = view(MOEC_DT_F32, 2, (int64_t[]){0, 4}, NULL);
    assert_int_equal(moec_st_writer_add(w, "e.empty", &t, &err), MOEC_OK);
}

static void test_roundtrip(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    moec_err err;
    moec_st_writer *w = moec_st_writer_new();
    assert_non_null(w);
    add_sample(w);
    assert_int_equal(moec_st_writer_set_metadata(w, "producer", "moec \"test\"\n", &err),
                     MOEC_OK);
    assert_int_equal(moec_st_writer_write(w, dir, 0, &err), MOEC_OK);
    assert_true(exists(join(dir, "model.safetensors")));
    assert_int_equal(tu_count_dir_entries(dir), 1);

    moec_safetensors *st = NULL;
    assert_int_equal(moec_st_open(&st, dir, &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 6);
    const char *sorted[] = {"a.f16", "e.empty", "m.bf16", "s.scalar", "w.f32", "z.i64"};
    for (size_t i = 0; i < 6; i++)
        assert_string_equal(moec_st_name(st, i), sorted[i]);

    moec_tensor ref;
    ref = view(MOEC_DT_F32, 2, (int64_t[]){2, 3}, f32v);
    assert_same_tensor(moec_st_find(st, "w.f32"), &ref);
    ref = view(MOEC_DT_F16, 1, (int64_t[]){4}, f16v);
    assert_same_tensor(moec_st_find(st, "a.f16"), &ref);
    ref = view(MOEC_DT_BF16, 2, (int64_t[]){3, 5}, bf16v);
    assert_same_tensor(moec_st_find(st, "m.bf16"), &ref);
    ref = view(MOEC_DT_I64, 1, (int64_t[]){2}, i64v);
    assert_same_tensor(moec_st_find(st, "z.i64"), &ref);

    const moec_tensor *s = moec_st_find(st, "s.scalar");
    assert_non_null(s);
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->nbytes, 4);
    float sv;
    memcpy(&sv, s->data, 4);
    assert_true(sv == 42.0f);

    const moec_tensor *e = moec_st_find(st, "e.empty");
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 0);
    assert_int_equal(e->shape[1], 4);
    assert_int_equal(e->nbytes, 0);

    assert_null(moec_st_find(st, "nope"));
    assert_int_equal(moec_st_index(st, "m.bf16"), 2);
    assert_string_equal(moec_st_metadata(st, "format"), "pt");
    assert_string_equal(moec_st_metadata(st, "producer"), "moec \"test\"\n");
    assert_null(moec_st_metadata(st, "absent"));

    /* Gap-free (the reference reader insists) with every tensor aligned to
     * its element size; the mapping is page aligned, so pointer alignment is
     * file offset alignment. */
    struct stat sb;
    assert_int_equal(stat(join(dir, "model.safetensors"), &sb), 0);
    assert_int_equal(moec_st_file_bytes(st), (uint64_t)sb.st_size);
    uint64_t data_bytes = 0;
    uintptr_t lowest = UINTPTR_MAX;
    for (size_t i = 0; i < moec_st_count(st); i++) {
        const moec_tensor *t = moec_st_tensor(st, i);
        data_bytes += t->nbytes;
        assert_int_equal((uintptr_t)t->data % moec_dtype_size(t->dtype), 0);
        if (t->nbytes && (uintptr_t)t->data < lowest)
            lowest = (uintptr_t)t->data;
    }
    assert_int_equal(lowest % 64, 0);
    size_t size;
    char *raw = tu_read_file(join(dir, "model.safetensors"), &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | (uint8_t)raw[i];
    assert_int_equal((8 + hlen) % 64, 0);
    assert_int_equal(8 + hlen + data_bytes, size);
    free(raw);
    moec_st_close(st);

    /* A second write over the same directory replaces the file atomically. */
    assert_int_equal(moec_st_writer_write(w, dir, 0, &err), MOEC_OK);
    assert_int_equal(tu_count_dir_entries(dir), 1);
    moec_st_writer_free(w);
}

static void test_all_dtypes_typed(void **state)
{
    (void)state;
    static const char *names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
                                  "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2"};
    char header[4096];
    size_t len = (size_t)snprintf(header, sizeof header, "{");
    uint64_t off = 0;
    for (size_t i = 0; i < 15; i++) {
        int dt = moec_dtype_from_name(names[i]);
        assert_true(dt >= 0);
        uint64_t nb = 3 * moec_dtype_size((moec_dtype)dt);
        len += (size_t)snprintf(header + len, sizeof header - len,
                                "%s\"t%02zu\":{\"dtype\":\"%s\",\"shape\":[3],"
                                "\"data_offsets\":[%llu,%llu]}",
                                i ? "," : "", i, names[i], (unsigned long long)off,
                                (unsigned long long)(off + nb));
        off += nb;
    }
    snprintf(header + len, sizeof header - len, "}");
    const char *path = join(tu_tmpdir(), "dtypes.safetensors");
    make_raw(path, header, off, 0);
    moec_safetensors *st;
    moec_err err;
    assert_int_equal(moec_st_open(&st, path, &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 15);
    for (size_t i = 0; i < 15; i++) {
        const moec_tensor *t = moec_st_tensor(st, i);
        assert_int_equal(t->dtype, moec_dtype_from_name(names[i]));
        assert_int_equal(t->nbytes, 3 * moec_dtype_size(t->dtype));
    }
    assert_null(moec_st_metadata(st, "format"));
    moec_st_close(st);
}

static void test_sharded_roundtrip(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    moec_err err;
    static float data[6][250];
    char names[6][32];
    moec_st_writer *w = moec_st_writer_new();
    assert_non_null(w);
    for (int k = 0; k < 6; k++) {
        for (int i = 0; i < 250; i++)
            data[k][i] = (float)(k * 1000 + i);
        snprintf(names[k], sizeof names[k], "layer.%d.weight", 5 - k);
        moec_tensor t = view(MOEC_DT_F32, 2, (int64_t[]){10, 25}, data[k]);
        assert_int_equal(moec_st_writer_add(w, names[k], &t, &err), MOEC_OK);
    }
    /* A stale single-file checkpoint must not shadow the sharded result. */
    assert_int_equal(moec_st_writer_write(w, dir, 0, &err), MOEC_OK);
    assert_true(exists(join(dir, "model.safetensors")));

    assert_int_equal(moec_st_writer_write(w, dir, 2500, &err), MOEC_OK);
    assert_false(exists(join(dir, "model.safetensors")));
    const char *shards[] = {"model-00001-of-00003.safetensors",
                            "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors"};
    uint64_t sum = 0;
    for (int i = 0; i < 3; i++) {
        struct stat sb;
        assert_int_equal(stat(join(dir, shards[i]), &sb), 0);
        sum += (uint64_t)sb.st_size;
    }
    assert_int_equal(tu_count_dir_entries(dir), 4);

    char *text = tu_read_file(join(dir, "model.safetensors.index.json"), NULL);
    cJSON *idx = cJSON_Parse(text);
    assert_non_null(idx);
    const cJSON *total =
        cJSON_GetObjectItem(cJSON_GetObjectItem(idx, "metadata"), "total_size");
    assert_true(cJSON_IsNumber(total));
    assert_true(total->valuedouble == 6000.0);
    const cJSON *map = cJSON_GetObjectItem(idx, "weight_map");
    assert_int_equal(cJSON_GetArraySize(map), 6);
    /* name order: layer.0 and layer.1 in shard 1, ... */
    assert_string_equal(cJSON_GetObjectItem(map, "layer.0.weight")->valuestring, shards[0]);
    assert_string_equal(cJSON_GetObjectItem(map, "layer.3.weight")->valuestring, shards[1]);
    assert_string_equal(cJSON_GetObjectItem(map, "layer.5.weight")->valuestring, shards[2]);
    cJSON_Delete(idx);
    free(text);

    for (int via = 0; via < 2; via++) {
        moec_safetensors *st;
        const char *path = via ? join(dir, "model.safetensors.index.json") : dir;
        assert_int_equal(moec_st_open(&st, path, &err), MOEC_OK);
        assert_int_equal(moec_st_count(st), 6);
        for (int k = 0; k < 6; k++) {
            moec_tensor ref = view(MOEC_DT_F32, 2, (int64_t[]){10, 25}, data[k]);
            const moec_tensor *t = moec_st_find(st, names[k]);
            assert_non_null(t);
            assert_same_tensor(t, &ref);
            assert_int_equal((uintptr_t)t->data % 4, 0);
        }
        assert_string_equal(moec_st_metadata(st, "format"), "pt");
        assert_int_equal(moec_st_file_bytes(st), sum);
        moec_st_close(st);
    }

    /* Going back to one file removes the now stale index. */
    assert_int_equal(moec_st_writer_write(w, dir, 1 << 20, &err), MOEC_OK);
    assert_false(exists(join(dir, "model.safetensors.index.json")));
    assert_true(exists(join(dir, "model.safetensors")));
    moec_st_writer_free(w);
}

/* ---- the real checkpoint ------------------------------------------------ */

static void test_mixtral_tiny(void **state)
{
    (void)state;
    moec_safetensors *st;
    moec_err err;
    const char *dir = tu_src("models/mixtral-tiny");
    assert_int_equal(moec_st_open(&st, dir, &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 127);
    const moec_tensor *emb = moec_st_find(st, "model.embed_tokens.weight");
    assert_non_null(emb);
    assert_int_equal(emb->dtype, MOEC_DT_BF16);
    assert_int_equal(emb->ndim, 2);
    assert_int_equal(emb->shape[0], 4096);
    assert_int_equal(emb->shape[1], 256);
    assert_int_equal(emb->nbytes, 4096 * 256 * 2);
    const moec_tensor *gate = moec_st_find(st, "model.layers.0.block_sparse_moe.gate.weight");
    assert_non_null(gate);
    assert_int_equal(gate->shape[0], 8);
    const moec_tensor *norm = moec_st_find(st, "model.norm.weight");
    uint16_t h[2];
    memcpy(h, norm->data, sizeof h);
    assert_true(moec_bf16_to_f32(h[0]) == 1.453125f);
    assert_true(moec_bf16_to_f32(h[1]) == 1.421875f);
    assert_string_equal(moec_st_name(st, 0), "lm_head.weight");
    assert_string_equal(moec_st_metadata(st, "format"), "pt");
    assert_int_equal(moec_st_file_bytes(st), 30969264);

    /* Re-shard the whole model and read it back bit for bit. */
    const char *out = tu_tmpdir();
    moec_st_writer *w = moec_st_writer_new();
    for (size_t i = 0; i < moec_st_count(st); i++)
        assert_int_equal(moec_st_writer_add(w, moec_st_name(st, i), moec_st_tensor(st, i), &err),
                         MOEC_OK);
    assert_int_equal(moec_st_writer_write(w, out, 8u << 20, &err), MOEC_OK);
    moec_st_writer_free(w);
    moec_safetensors *back;
    assert_int_equal(moec_st_open(&back, out, &err), MOEC_OK);
    assert_int_equal(moec_st_count(back), moec_st_count(st));
    for (size_t i = 0; i < moec_st_count(st); i++) {
        assert_string_equal(moec_st_name(back, i), moec_st_name(st, i));
        const moec_tensor *t = moec_st_tensor(back, i);
        assert_same_tensor(t, moec_st_tensor(st, i));
        if (t->nbytes % 64 == 0)
            assert_int_equal((uintptr_t)t->data % 64, 0);
    }
    assert_true(exists(join(out, "model-00004-of-00004.safetensors")));
    moec_st_close(back);
    moec_st_close(st);
}

/* ---- corrupt single files ----------------------------------------------- */

static void test_truncated_every_length(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    moec_err err;
    moec_st_writer *w = moec_st_writer_new();
    add_sample(w);
    assert_int_equal(moec_st_writer_write(w, dir, 0, &err), MOEC_OK);
    moec_st_writer_free(w);
    size_t size;
    char *full = tu_read_file(join(dir, "model.safetensors"), &size);
    const char *cut = join(dir, "cut.safetensors");
    for (size_t n = 0; n < size; n++) {
        tu_write_file(cut, full, n);
        moec_safetensors *st = NULL;
        moec_err e = {0};
        moec_status s = moec_st_open(&st, cut, &e);
        if (s != MOEC_ERR_FORMAT || !strstr(e.msg, "cut.safetensors"))
            fail_msg("cut at %zu of %zu: %s: %s", n, size, moec_status_name(s), e.msg);
        assert_null(st);
    }
    /* The memory entry point agrees on every cut, without any file. */
    for (size_t n = 0; n < size; n++) {
        char *copy = malloc(n ? n : 1);
        memcpy(copy, full, n);
        moec_safetensors *st = NULL;
        assert_int_equal(moec_st_open_memory(&st, copy, n, "mem", &err), MOEC_ERR_FORMAT);
        free(copy);
    }
    moec_safetensors *st;
    assert_int_equal(moec_st_open_memory(&st, full, size, "mem", &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 6);
    moec_st_close(st);
    free(full);
    expect_header_fail("", 0, MOEC_ERR_FORMAT, "not valid JSON", NULL);
}

static void test_short_and_absurd_lengths(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    const char *p = join(dir, "x.safetensors");
    tu_write_file(p, "abc", 3);
    expect_fail(p, MOEC_ERR_FORMAT, "x.safetensors", "too short");
    make_raw(p, "{}", 0, 1000);
    expect_fail(p, MOEC_ERR_FORMAT, "header length 1000", "larger than the file");
    make_raw(p, "{}", 0, (uint64_t)1 << 40);
    expect_fail(p, MOEC_ERR_FORMAT, "absurd", NULL);
    make_raw(p, "{}", 0, UINT64_MAX);
    expect_fail(p, MOEC_ERR_FORMAT, "absurd", NULL);
    expect_fail(join(dir, "missing.safetensors"), MOEC_ERR_IO, "missing.safetensors", NULL);
    expect_fail(dir, MOEC_ERR_IO, "no model.safetensors", NULL);
}

static void test_bad_headers(void **state)
{
    (void)state;
    expect_header_fail("{\"a\":{\"dtype\":\"F32\",", 0, MOEC_ERR_FORMAT, "not valid JSON", NULL);
    expect_header_fail("[1,2]", 0, MOEC_ERR_FORMAT, "must be a JSON object", NULL);
    expect_header_fail("{} x", 0, MOEC_ERR_FORMAT, "stray bytes", NULL);
    expect_header_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}\xff",
                       4, MOEC_ERR_FORMAT, "UTF-8", NULL);
    expect_header_fail("{\"a\":[1]}", 0, MOEC_ERR_FORMAT, "'a'", "expected an object");
    expect_header_fail("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, MOEC_ERR_FORMAT,
                       "'a'", "dtype");
    expect_header_fail("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                       MOEC_ERR_FORMAT, "'a'", "dtype");
    expect_header_fail("{\"w\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                       MOEC_ERR_FORMAT, "'w'", "unknown dtype 'F31'");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":\"abc\",\"data_offsets\":[0,4]}}", 4,
                       MOEC_ERR_FORMAT, "'w'", "shape");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                       MOEC_ERR_FORMAT, "'w'", "shape[0] = -1 is not a non-negative integer");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                       MOEC_ERR_FORMAT, "'w'", "shape[0]");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}",
                       4, MOEC_ERR_UNSUPPORTED, "'w'", "5 dimensions");
    expect_header_fail("{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],"
                       "\"data_offsets\":[0,4]}}",
                       4, MOEC_ERR_FORMAT, "'w'", "overflows");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                       MOEC_ERR_FORMAT, "'w'", "data_offsets");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
                       MOEC_ERR_FORMAT, "'w'", "begin after end");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                       MOEC_ERR_FORMAT, "'w'", "out of range");
    expect_header_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                       MOEC_ERR_FORMAT, "'w'", "size mismatch");
    expect_header_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                       12, MOEC_ERR_FORMAT, "'a'", "overlap");
    expect_header_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                       8, MOEC_ERR_FORMAT, "duplicate tensor name 'a'", NULL);
    expect_header_fail("{\"__metadata__\":{\"format\":1}}", 0, MOEC_ERR_FORMAT, "__metadata__",
                       "'format'");
    expect_header_fail("{\"__metadata__\":[]}", 0, MOEC_ERR_FORMAT, "__metadata__", NULL);
    /* Names with control characters stay on one line in the message. */
    expect_header_fail("{\"x\\ny\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                       MOEC_ERR_FORMAT, "'x?y'", "size mismatch");
}

static void test_lenient_layouts(void **state)
{
    (void)state;
    /* Gaps, trailing bytes, unknown fields, empty tensors sharing an offset
     * and an empty header are all legal. */
    const char *path = join(tu_tmpdir(), "ok.safetensors");
    make_raw(path,
             "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8],\"x\":1},"
             "\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[6,6]},"
             "\"c\":{\"dtype\":\"U8\",\"shape\":[1,0],\"data_offsets\":[7,7]}}   ",
             10, 0);
    moec_safetensors *st;
    moec_err err;
    assert_int_equal(moec_st_open(&st, path, &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 3);
    assert_int_equal(((const uint8_t *)moec_st_find(st, "b")->data)[0], 6);
    moec_st_close(st);
    make_raw(path, "{}", 0, 0);
    assert_int_equal(moec_st_open(&st, path, &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 0);
    moec_st_close(st);
}

/* ---- corrupt indexes ---------------------------------------------------- */

/* dir with shard A (tensors a, b) and shard B (tensor c) and the given
 * index text. */
static const char *sharded_dir(const char *index)
{
    const char *dir = tu_tmpdir();
    make_raw(join(dir, "A.safetensors"),
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             8, 0);
    make_raw(join(dir, "B.safetensors"),
             "{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0);
    tu_write_file(join(dir, "model.safetensors.index.json"), index, strlen(index));
    return dir;
}

static void test_bad_indexes(void **state)
{
    (void)state;
    moec_safetensors *st;
    moec_err err;
    const char *dir = sharded_dir("{\"metadata\":{\"total_size\":12},\"weight_map\":"
                                  "{\"a\":\"A.safetensors\",\"b\":\"A.safetensors\","
                                  "\"c\":\"B.safetensors\"}}");
    assert_int_equal(moec_st_open(&st, dir, &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 3);
    assert_non_null(moec_st_find(st, "c"));
    moec_st_close(st);

    expect_fail(sharded_dir("{\"weight_map\":{\"a\":\"A.safetensors\",\"b\":\"A.safetensors\","
                            "\"a\":\"A.safetensors\",\"c\":\"B.safetensors\"}}"),
                MOEC_ERR_FORMAT, "duplicate tensor name 'a'", "weight_map");
    expect_fail(sharded_dir("{\"weight_map\":{\"a\":\"../A.safetensors\"}}"), MOEC_ERR_FORMAT,
                "'../A.safetensors'", "'..'");
    expect_fail(sharded_dir("{\"weight_map\":{\"a\":\"/etc/passwd\"}}"), MOEC_ERR_FORMAT,
                "'/etc/passwd'", "plain file name");
    expect_fail(sharded_dir("{\"weight_map\":{\"a\":\"A.safetensors\",\"b\":\"A.safetensors\","
                            "\"c\":\"B.safetensors\",\"d\":\"B.safetensors\"}}"),
                MOEC_ERR_FORMAT, "'d'", "does not contain");
    expect_fail(sharded_dir("{\"weight_map\":{\"a\":\"A.safetensors\",\"b\":\"B.safetensors\","
                            "\"c\":\"B.safetensors\"}}"),
                MOEC_ERR_FORMAT, "'b'", "weight_map names B.safetensors");
    expect_fail(sharded_dir("{\"weight_map\":{\"a\":\"A.safetensors\",\"c\":\"B.safetensors\"}}"),
                MOEC_ERR_FORMAT, "'b'", "not listed");
    expect_fail(sharded_dir("{\"weight_map\":{\"a\":\"A.safetensors\",\"b\":\"A.safetensors\","
                            "\"c\":\"C.safetensors\"}}"),
                MOEC_ERR_IO, "C.safetensors", NULL);
    expect_fail(sharded_dir("{\"weight_map\":[]}"), MOEC_ERR_FORMAT, "weight_map", NULL);
    expect_fail(sharded_dir("{\"weight_map\":{}}"), MOEC_ERR_FORMAT, "empty", NULL);
    expect_fail(sharded_dir("{\"weight_map\":"), MOEC_ERR_FORMAT, "index.json", "JSON");

    /* The same tensor in two shards. */
    dir = sharded_dir("{\"weight_map\":{\"a\":\"A.safetensors\",\"b\":\"A.safetensors\","
                      "\"c\":\"B.safetensors\"}}");
    make_raw(join(dir, "B.safetensors"),
             "{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             8, 0);
    expect_fail(dir, MOEC_ERR_FORMAT, "duplicate tensor name 'a'", "B.safetensors");
}

/* ---- writer errors ------------------------------------------------------ */

static void test_writer_rejects(void **state)
{
    (void)state;
    moec_err err;
    moec_st_writer *w = moec_st_writer_new();
    float x[4] = {0};
    moec_tensor t = view(MOEC_DT_F32, 1, (int64_t[]){4}, x);
    assert_int_equal(moec_st_writer_add(w, "x", &t, &err), MOEC_OK);
    assert_int_equal(moec_st_writer_add(w, "x", &t, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "duplicate tensor name 'x'"));
    assert_int_equal(moec_st_writer_add(w, "__metadata__", &t, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_st_writer_add(w, "", &t, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_st_writer_add(w, "bad\xff", &t, &err), MOEC_ERR_ARG);
    moec_tensor q = t;
    q.dtype = MOEC_DT_QUANT;
    assert_int_equal(moec_st_writer_add(w, "q", &q, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "'q'"));
    moec_tensor m = t;
    m.nbytes = 12;
    assert_int_equal(moec_st_writer_add(w, "m", &m, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "'m'"));
    moec_tensor neg = t;
    neg.shape[0] = -4;
    assert_int_equal(moec_st_writer_add(w, "n", &neg, &err), MOEC_ERR_ARG);
    moec_tensor absent = {.dtype = MOEC_DT_F32};
    assert_int_equal(moec_st_writer_add(w, "absent", &absent, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_st_writer_set_metadata(w, "k", "\xc3", &err), MOEC_ERR_ARG);

    /* Many names exercise the hash table's growth; lookups stay exact. */
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "t.%d", i);
        assert_int_equal(moec_st_writer_add(w, name, &t, &err), MOEC_OK);
    }
    assert_int_equal(moec_st_writer_add(w, "t.999", &t, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_st_writer_add(w, "t.0", &t, &err), MOEC_ERR_ARG);
    moec_st_writer_free(w);
}

static void test_failed_write_leaves_nothing(void **state)
{
    (void)state;
    moec_err err;
    moec_st_writer *w = moec_st_writer_new();
    static float data[6][250];
    for (int k = 0; k < 6; k++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", k);
        moec_tensor t = view(MOEC_DT_F32, 1, (int64_t[]){250}, data[k]);
        assert_int_equal(moec_st_writer_add(w, name, &t, &err), MOEC_OK);
    }

    const char *base = tu_tmpdir();
    const char *missing = join(base, "does-not-exist");
    assert_int_equal(moec_st_writer_write(w, missing, 0, &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "does-not-exist"));
    assert_false(exists(missing));
    assert_int_equal(tu_count_dir_entries(base), 0);

    /* The second shard cannot be renamed into place (a directory holds its
     * name): the first, already renamed, and all temporaries must go. */
    const char *dir = tu_tmpdir();
    assert_int_equal(mkdir(join(dir, "model-00002-of-00003.safetensors"), 0755), 0);
    assert_int_equal(moec_st_writer_write(w, dir, 2000, &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "model-00002-of-00003.safetensors"));
    assert_int_equal(tu_count_dir_entries(dir), 1);
    assert_false(exists(join(dir, "model-00001-of-00003.safetensors")));

    /* A directory we may not write to (meaningless for root, who may). */
    if (geteuid() != 0) {
        const char *ro = tu_tmpdir();
        assert_int_equal(chmod(ro, 0555), 0);
        assert_int_equal(moec_st_writer_write(w, ro, 0, &err), MOEC_ERR_IO);
        assert_int_equal(tu_count_dir_entries(ro), 0);
        chmod(ro, 0755);
    }
    moec_st_writer_free(w);
}

/* A shard image in memory: length field, header, data bytes. */
static uint8_t *image(const char *header, size_t data_len, size_t *size)
{
    size_t h = strlen(header);
    *size = 8 + h + data_len;
    uint8_t *b = calloc(1, *size);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    return b;
}

/* The index checks on images in memory (the fuzzer's entry point) agree
 * with the files': same validation, a missing shard is a missing file. */
static void test_index_in_memory(void **state)
{
    (void)state;
    size_t na, nb;
    uint8_t *a = image("{\"w1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &na);
    uint8_t *b = image("{\"w2\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, &nb);
    moec_st_image img[2] = {{"a.safetensors", a, na}, {"b.safetensors", b, nb}};
    const char *ok = "{\"weight_map\": {\"w1\": \"a.safetensors\", \"w2\": \"b.safetensors\"}}";
    moec_safetensors *st;
    moec_err err = {0};
    assert_int_equal(moec_st_open_index_memory(&st, ok, strlen(ok), "mem", img, 2, &err), MOEC_OK);
    assert_int_equal(moec_st_count(st), 2);
    assert_non_null(moec_st_find(st, "w2"));
    moec_st_close(st);
    const char *missing = "{\"weight_map\": {\"w1\": \"a.safetensors\", \"w2\": \"c.safetensors\"}}";
    assert_int_equal(moec_st_open_index_memory(&st, missing, strlen(missing), "mem", img, 2, &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "mem/c.safetensors"));
    assert_null(st);
    const char *wrong = "{\"weight_map\": {\"w1\": \"b.safetensors\", \"w2\": \"b.safetensors\"}}";
    assert_int_equal(moec_st_open_index_memory(&st, wrong, strlen(wrong), "mem", img, 2, &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "weight_map lists tensor 'w1'"));
    const char *escape = "{\"weight_map\": {\"w1\": \"../a.safetensors\"}}";
    assert_int_equal(moec_st_open_index_memory(&st, escape, strlen(escape), "mem", img, 2, &err), MOEC_ERR_FORMAT);
    assert_int_equal(moec_st_open_index_memory(&st, ok, strlen(ok) - 1, "mem", img, 2, &err), MOEC_ERR_FORMAT);
    free(a);
    free(b);
}

/* Streamed in reverse order, tensors announced without data: the same
 * bytes as moec_st_writer_write; an unfinished or incomplete stream leaves
 * nothing behind. */
static void test_streamed_write(void **state)
{
    (void)state;
    moec_err err;
    static float data[6][250];
    char names[6][32];
    moec_st_writer *ref = moec_st_writer_new(), *w = moec_st_writer_new();
    for (int k = 0; k < 6; k++) {
        for (int i = 0; i < 250; i++)
            data[k][i] = (float)(k * 1000 + i);
        snprintf(names[k], sizeof names[k], "layer.%d.weight", k);
        moec_tensor t = view(MOEC_DT_F32, 2, (int64_t[]){10, 25}, data[k]);
        assert_int_equal(moec_st_writer_add(ref, names[k], &t, &err), MOEC_OK);
        t.data = NULL;
        assert_int_equal(moec_st_writer_add(w, names[k], &t, &err), MOEC_OK);
    }
    const char *a = tu_tmpdir(), *b = tu_tmpdir();
    assert_int_equal(moec_st_writer_write(ref, a, 2500, &err), MOEC_OK);
    /* without data, the one-shot write refuses */
    assert_int_equal(moec_st_writer_write(w, b, 2500, &err), MOEC_ERR_ARG);
    assert_int_equal(tu_count_dir_entries(b), 0);
    assert_int_equal(moec_st_writer_begin(w, b, 2500, &err), MOEC_OK);
    moec_tensor t = view(MOEC_DT_F32, 2, (int64_t[]){10, 25}, data[5]);
    moec_tensor wrong = view(MOEC_DT_F32, 2, (int64_t[]){25, 10}, data[5]);
    assert_int_equal(moec_st_writer_put(w, names[5], &wrong, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_st_writer_put(w, "no.such", &t, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_st_writer_add(w, "late", &t, &err), MOEC_ERR_ARG);
    for (int k = 5; k >= 0; k--) {
        t.data = data[k];
        assert_int_equal(moec_st_writer_put(w, names[k], &t, &err), MOEC_OK);
    }
    assert_int_equal(moec_st_writer_put(w, names[0], &t, &err), MOEC_ERR_ARG); /* twice */
    assert_int_equal(moec_st_writer_finish(w, &err), MOEC_OK);
    const char *files[] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json"};
    for (int i = 0; i < 4; i++) {
        size_t na, nb;
        char *x = tu_read_file(join(a, files[i]), &na), *y = tu_read_file(join(b, files[i]), &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(x, y, na);
        free(x), free(y);
    }
    assert_int_equal(tu_count_dir_entries(b), 4);

    /* a stream missing a tensor fails at finish; freeing one mid-way removes its files */
    const char *c = tu_tmpdir(), *d = tu_tmpdir();
    assert_int_equal(moec_st_writer_begin(w, c, 0, &err), MOEC_OK);
    assert_int_equal(moec_st_writer_put(w, names[2], &t, &err), MOEC_OK);
    assert_int_equal(moec_st_writer_finish(w, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "never written"));
    assert_int_equal(tu_count_dir_entries(c), 0);
    assert_int_equal(moec_st_writer_begin(w, d, 0, &err), MOEC_OK);
    assert_int_equal(tu_count_dir_entries(d), 1);
    moec_st_writer_free(w);
    assert_int_equal(tu_count_dir_entries(d), 0);
    moec_st_writer_free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_all_dtypes_typed),
        cmocka_unit_test(test_sharded_roundtrip),
        cmocka_unit_test(test_mixtral_tiny),
        cmocka_unit_test(test_truncated_every_length),
        cmocka_unit_test(test_short_and_absurd_lengths),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_lenient_layouts),
        cmocka_unit_test(test_bad_indexes),
        cmocka_unit_test(test_writer_rejects),
        cmocka_unit_test(test_failed_write_leaves_nothing),
        cmocka_unit_test(test_index_in_memory),
        cmocka_unit_test(test_streamed_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
