/* test_container.c - the .moec container: round trips of every storage type,
 * zero-copy alignment, compression choice, and damage detection (every
 * single byte flipped, every truncation, bad magic, future version, failed
 * writes leaving nothing behind). */
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "formats/container.h"

static uint32_t rng_state = 12345;
static uint8_t rnd(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (uint8_t)(rng_state >> 24);
}

static void *random_bytes(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = rnd();
    return p;
}

/* low-entropy bytes, as packed codes of a smooth weight matrix tend to be */
static void *patterned_bytes(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((i / 7) % 3 == 0 ? 0x55 : 0x66);
    return p;
}

static moec_ctensor_type float_type(moec_storage st, int ndim, const int64_t *shape)
{
    moec_ctensor_type t = {.storage = st, .ndim = ndim};
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    return t;
}

static moec_ctensor_type gw_type(int bits, int group, int symmetric, int64_t rows, int64_t cols)
{
    return (moec_ctensor_type){.storage = MOEC_STORAGE_GROUPWISE, .bits = bits, .group = group,
                               .symmetric = symmetric, .ndim = 2, .shape = {rows, cols}};
}

/* ---- a fixed small model ------------------------------------------------ */

#define N_FIX 7

typedef struct fixture {
    moec_ctensor_desc d[N_FIX];
    void *bufs[N_FIX][MOEC_SECTION_KIND_COUNT];
    const char *config, *tokenizer, *report;
} fixture;

/* Fills desc with sections of the required sizes; `patterned` selects
 * compressible content. */
static void fill(moec_ctensor_desc *d, void **bufs, const char *name, moec_ctensor_type t,
                 moec_compress compress, int patterned)
{
    uint64_t want[MOEC_SECTION_KIND_COUNT];
    moec_err err;
    assert_int_equal(moec_ctensor_section_bytes(&t, want, &err), MOEC_OK);
    memset(d, 0, sizeof *d);
    d->name = name;
    d->type = t;
    d->compress = compress;
    /* given in reverse kind order: the writer must sort them */
    for (int k = MOEC_SECTION_KIND_COUNT - 1; k >= 0; k--) {
        bufs[k] = NULL;
        if (!want[k])
            continue;
        bufs[k] = patterned ? patterned_bytes(want[k]) : random_bytes(want[k]);
        d->sections[d->n_sections++] = (moec_csection){(moec_section_kind)k, bufs[k], want[k]};
    }
}

static void fixture_init(fixture *f)
{
    static const int64_t s_f32[] = {4, 8}, s_f16[] = {3, 5}, s_bf16[] = {2, 3, 4}, s_1d[] = {24};
    fill(&f->d[0], f->bufs[0], "model.embed_tokens.weight", float_type(MOEC_STORAGE_F32, 2, s_f32),
         MOEC_COMPRESS_AUTO, 0);
    fill(&f->d[1], f->bufs[1], "model.norm.weight", float_type(MOEC_STORAGE_F16, 2, s_f16),
         MOEC_COMPRESS_AUTO, 1);
    fill(&f->d[2], f->bufs[2], "lm_head.weight", float_type(MOEC_STORAGE_BF16, 3, s_bf16),
         MOEC_COMPRESS_AUTO, 0);
    fill(&f->d[3], f->bufs[3], "layers.0.experts.0.w1", gw_type(4, 16, 0, 4, 40),
         MOEC_COMPRESS_NONE, 1);
    fill(&f->d[4], f->bufs[4], "layers.0.experts.1.w1", gw_type(3, 8, 1, 5, 33),
         MOEC_COMPRESS_AUTO, 0);
    fill(&f->d[5], f->bufs[5], "layers.0.experts.2.w1", gw_type(2, 16, 0, 8, 128),
         MOEC_COMPRESS_ZSTD, 1);
    fill(&f->d[6], f->bufs[6], "layers.0.router.bias", float_type(MOEC_STORAGE_F32, 1, s_1d),
         MOEC_COMPRESS_ZSTD, 1);
    f->config = "{\"model_type\": \"mixtral\", \"hidden_size\": 8}";
    f->tokenizer = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}}}";
    f->report = "";
}

static void fixture_free(fixture *f)
{
    for (int i = 0; i < N_FIX; i++)
        for (int k = 0; k < MOEC_SECTION_KIND_COUNT; k++)
            free(f->bufs[i][k]);
}

static moec_container_writer *fixture_writer(const fixture *f)
{
    moec_container_writer_opts o;
    moec_container_writer_opts_default(&o);
    o.chunk_size = 64; /* several chunks per compressed section */
    moec_container_writer *w;
    moec_err err;
    assert_int_equal(moec_container_writer_new(&o, &w, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_add_blob(w, "config.json", f->config,
                                                    strlen(f->config), &err), MOEC_OK);
    for (int i = 0; i < N_FIX; i++) {
        moec_status s = moec_container_writer_add_tensor(w, &f->d[i], &err);
        if (s)
            fail_msg("%s", err.msg);
        if (i == 2)
            assert_int_equal(moec_container_writer_add_blob(w, "tokenizer.json", f->tokenizer,
                                                            strlen(f->tokenizer), &err),
                             MOEC_OK);
    }
    assert_int_equal(moec_container_writer_add_blob(w, "report.json", f->report, 0, &err),
                     MOEC_OK);
    return w;
}

static char *write_fixture(const fixture *f, const char *dir)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/model.moec", dir);
    moec_container_writer *w = fixture_writer(f);
    moec_err err;
    if (moec_container_writer_write(w, path, &err))
        fail_msg("%s", err.msg);
    moec_container_writer_free(w);
    return path;
}

/* The fixture written as dir/model.moec: returns the file's bytes
 * (malloc'd) and size, and where it is in *path when path is not NULL. */
static unsigned char *fixture_bytes(const char *dir, const char **path, size_t *n)
{
    fixture f;
    fixture_init(&f);
    const char *p = write_fixture(&f, dir);
    fixture_free(&f);
    if (path)
        *path = p;
    return (unsigned char *)tu_read_file(p, n);
}

static const moec_csection *desc_section(const moec_ctensor_desc *d, moec_section_kind k)
{
    for (int i = 0; i < d->n_sections; i++)
        if (d->sections[i].kind == k)
            return &d->sections[i];
    return NULL;
}

/* ---- tests -------------------------------------------------------------- */

static void test_section_sizes(void **state)
{
    (void)state;
    uint64_t c, s, z;
    moec_err err;
    /* 4-bit, 40 columns in groups of 16: 3 groups, 20 code bytes per row */
    assert_int_equal(moec_groupwise_section_bytes(4, 40, 4, 16, 0, &c, &s, &z, &err), MOEC_OK);
    assert_int_equal(c, 4 * 20);
    assert_int_equal(s, 4 * 3 * 2);
    assert_int_equal(z, 4 * 2);
    /* 3-bit, 33 columns: 99 bits -> 13 bytes per row; symmetric has no zeros */
    assert_int_equal(moec_groupwise_section_bytes(5, 33, 3, 8, 1, &c, &s, &z, &err), MOEC_OK);
    assert_int_equal(c, 5 * 13);
    assert_int_equal(s, 5 * 5 * 2);
    assert_int_equal(z, 0);
    /* 1-bit zeros of 9 groups take 2 bytes per row */
    assert_int_equal(moec_groupwise_section_bytes(2, 9, 1, 1, 0, &c, &s, &z, &err), MOEC_OK);
    assert_int_equal(c, 2 * 2);
    assert_int_equal(z, 2 * 2);
    assert_int_equal(moec_groupwise_section_bytes(2, 9, 9, 1, 0, &c, &s, &z, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "bits"));
    assert_int_equal(moec_groupwise_section_bytes(2, 9, 4, 0, 0, &c, &s, &z, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_groupwise_section_bytes(INT64_MAX / 2, INT64_MAX / 2, 8, 1, 0, &c, &s,
                                                  &z, &err),
                     MOEC_ERR_ARG);

    uint64_t b[MOEC_SECTION_KIND_COUNT];
    moec_ctensor_type t = {.storage = MOEC_STORAGE_BF16, .ndim = 3, .shape = {2, 3, 4}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_OK);
    assert_int_equal(b[MOEC_SECTION_DATA], 48);
    assert_int_equal(b[MOEC_SECTION_CODES], 0);
    /* N-d group-wise: rows are all leading dims together */
    t = (moec_ctensor_type){.storage = MOEC_STORAGE_GROUPWISE, .bits = 4, .group = 4,
                            .symmetric = 1, .ndim = 3, .shape = {2, 3, 8}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_OK);
    assert_int_equal(b[MOEC_SECTION_CODES], 6 * 4);
    assert_int_equal(b[MOEC_SECTION_SCALES], 6 * 2 * 2);
    assert_int_equal(b[MOEC_SECTION_ZEROS], 0);
    assert_int_equal(b[MOEC_SECTION_DATA], 0);
    t = (moec_ctensor_type){.storage = MOEC_STORAGE_F32, .bits = 4, .ndim = 1, .shape = {3}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_ERR_ARG);
    t = (moec_ctensor_type){.storage = MOEC_STORAGE_F32, .ndim = 1, .shape = {3, 2}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_ERR_ARG);
    t = (moec_ctensor_type){.storage = MOEC_STORAGE_F32, .ndim = 2, .shape = {3, 0}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_ERR_ARG);
    t = (moec_ctensor_type){.storage = (moec_storage)7, .ndim = 1, .shape = {3}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_ERR_ARG);
    /* llama.cpp blocks: Q4_K (ggml id 12) rows of 512 = 2 blocks of 144 bytes */
    t = (moec_ctensor_type){.storage = MOEC_STORAGE_GGML, .bits = 12, .ndim = 2, .shape = {3, 512}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_OK);
    assert_int_equal(b[MOEC_SECTION_DATA], 3 * 2 * 144);
    assert_int_equal(b[MOEC_SECTION_CODES], 0);
    t.shape[1] = 100; /* not whole blocks */
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "multiple of 256"));
    t = (moec_ctensor_type){.storage = MOEC_STORAGE_GGML, .bits = 9, .ndim = 2, .shape = {3, 512}}; /* Q8_1 */
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_ERR_ARG);
    t = (moec_ctensor_type){.storage = MOEC_STORAGE_GGML, .bits = 8, .group = 32, .ndim = 2, .shape = {3, 64}};
    assert_int_equal(moec_ctensor_section_bytes(&t, b, &err), MOEC_ERR_ARG);
}

/* Recomputes the header+directory checksum of a file in memory. */
static void reseal_header(unsigned char *bytes, size_t n)
{
    uint64_t dir_off = 0;
    for (int b = 7; b >= 0; b--)
        dir_off = dir_off << 8 | bytes[24 + b];
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, bytes, 56);
    XXH3_64bits_update(st, bytes + dir_off, n - dir_off);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    for (int b = 0; b < 8; b++)
        bytes[56 + b] = (unsigned char)(h >> (8 * b));
}

/* A GGML tensor (llama.cpp blocks) round-trips as bytes; a version-1 file
 * may not hold one. */
static void test_ggml_storage(void **state)
{
    (void)state;
    unsigned char blocks[2 * 2 * 34]; /* Q8_0, 2 rows of 64 */
    for (size_t i = 0; i < sizeof blocks; i++)
        blocks[i] = (unsigned char)(i * 7);
    for (int b = 0; b < 4; b++)
        blocks[34 * b] = 0, blocks[34 * b + 1] = 0x3c; /* finite F16 scales */
    moec_ctensor_desc d = {.name = "w", .type = {.storage = MOEC_STORAGE_GGML, .bits = 8, .ndim = 2, .shape = {2, 64}},
                           .n_sections = 1, .compress = MOEC_COMPRESS_AUTO};
    d.sections[0] = (moec_csection){MOEC_SECTION_DATA, blocks, sizeof blocks};
    moec_container_writer *w;
    moec_err err;
    char path[4200];
    snprintf(path, sizeof path, "%s/g.moec", tu_tmpdir());
    assert_int_equal(moec_container_writer_new(NULL, &w, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_write(w, path, &err), MOEC_OK);
    moec_container_writer_free(w);
    moec_container *c;
    assert_int_equal(moec_container_open(path, 0, &c, &err), MOEC_OK);
    const moec_ctensor_info *ti = moec_container_tensor(c, 0);
    assert_int_equal(ti->type.storage, MOEC_STORAGE_GGML);
    assert_int_equal(ti->type.bits, 8);
    const void *data;
    size_t size;
    assert_int_equal(moec_container_section_ptr(c, 0, MOEC_SECTION_DATA, &data, &size, &err), MOEC_OK);
    assert_int_equal(size, sizeof blocks);
    assert_memory_equal(data, blocks, sizeof blocks);
    moec_tensor view;
    assert_int_equal(moec_container_tensor_view(c, 0, &view, &err), MOEC_ERR_UNSUPPORTED);
    moec_container_close(c);
    size_t n;
    unsigned char *bytes = (unsigned char *)tu_read_file(path, &n);
    assert_int_equal(bytes[8], MOEC_CONTAINER_VERSION);
    bytes[8] = 1;
    reseal_header(bytes, n);
    assert_int_equal(moec_container_open_mem(bytes, n, "v1.moec", 0, &c, &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "GGML storage in a version 1 file"));
    free(bytes);
}

static void test_round_trip(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    const char *path = write_fixture(&f, tu_tmpdir());
    moec_container *c;
    moec_err err;
    if (moec_container_open(path, 0, &c, &err))
        fail_msg("%s", err.msg);
    size_t fsize;
    const unsigned char *base = moec_container_bytes(c, &fsize);
    assert_int_equal(moec_container_tensor_count(c), N_FIX);
    for (int i = 0; i < N_FIX; i++) {
        const moec_ctensor_desc *d = &f.d[i];
        int64_t idx = moec_container_find(c, d->name);
        assert_int_equal(idx, i); /* directory keeps insertion order */
        const moec_ctensor_info *ti = moec_container_tensor(c, (size_t)idx);
        assert_string_equal(ti->name, d->name);
        assert_memory_equal(&ti->type, &d->type, sizeof ti->type);
        assert_int_equal(ti->n_sections, d->n_sections);
        for (int k = 0; k < ti->n_sections; k++) {
            const moec_csection_info *si = &ti->sections[k];
            if (k > 0)
                assert_true(si->kind > ti->sections[k - 1].kind);
            const moec_csection *src = desc_section(d, si->kind);
            assert_non_null(src);
            assert_int_equal(si->size, src->size);
            assert_int_equal(si->offset % 64, 0);
            const void *data;
            size_t size;
            void *owned;
            assert_int_equal(moec_container_section_get(c, (size_t)idx, si->kind, &data, &size,
                                                        &owned, &err), MOEC_OK);
            assert_int_equal(size, src->size);
            assert_memory_equal(data, src->data, size);
            if (si->encoding == MOEC_ENCODING_RAW) {
                /* zero copy: a pointer into the mapping, aligned from the file start */
                assert_null(owned);
                assert_ptr_equal(data, base + si->offset);
                assert_int_equal(((const unsigned char *)data - base) % 64, 0);
                const void *p;
                assert_int_equal(moec_container_section_ptr(c, (size_t)idx, si->kind, &p, &size,
                                                            &err), MOEC_OK);
                assert_ptr_equal(p, data);
            } else {
                assert_non_null(owned);
                assert_int_equal(moec_container_section_ptr(c, (size_t)idx, si->kind, &data,
                                                            &size, &err), MOEC_ERR_ARG);
                assert_non_null(strstr(err.msg, "compressed"));
            }
            free(owned);
            /* every sub-range, across chunk boundaries, into caller memory */
            unsigned char buf[512];
            for (size_t off = 0; off < src->size; off += 13)
                for (size_t len = 0; off + len <= src->size && len <= sizeof buf; len += 37) {
                    assert_int_equal(moec_container_section_read(c, (size_t)idx, si->kind, off,
                                                                 buf, len, &err), MOEC_OK);
                    assert_memory_equal(buf, (const unsigned char *)src->data + off, len);
                }
            assert_int_equal(moec_container_section_read(c, (size_t)idx, si->kind, 1, buf,
                                                         src->size, &err), MOEC_ERR_ARG);
        }
    }
    /* the encodings each policy should have chosen */
    const moec_ctensor_info *ti = moec_container_tensor(c, 0);
    assert_int_equal(ti->sections[0].encoding, MOEC_ENCODING_RAW); /* F32, AUTO */
    ti = moec_container_tensor(c, 1);
    assert_int_equal(ti->sections[0].encoding, MOEC_ENCODING_RAW); /* F16 patterned, AUTO */
    ti = moec_container_tensor(c, 3);
    for (int k = 0; k < ti->n_sections; k++) /* NONE */
        assert_int_equal(ti->sections[k].encoding, MOEC_ENCODING_RAW);
    ti = moec_container_tensor(c, 4);
    for (int k = 0; k < ti->n_sections; k++) /* random codes do not compress: AUTO keeps raw */
        assert_int_equal(ti->sections[k].encoding, MOEC_ENCODING_RAW);
    ti = moec_container_tensor(c, 5);
    for (int k = 0; k < ti->n_sections; k++) {
        assert_int_equal(ti->sections[k].encoding, MOEC_ENCODING_ZSTD);
        assert_int_equal(ti->sections[k].chunk_size, 64);
    }
    assert_true(ti->sections[0].stored_size < ti->sections[0].size);
    ti = moec_container_tensor(c, 6);
    assert_int_equal(ti->sections[0].encoding, MOEC_ENCODING_ZSTD); /* forced on F32 */

    /* float tensors as moec_tensor views straight into the mapping */
    moec_tensor view;
    assert_int_equal(moec_container_tensor_view(c, 2, &view, &err), MOEC_OK);
    assert_int_equal(view.dtype, MOEC_DT_BF16);
    assert_int_equal(view.ndim, 3);
    assert_int_equal(view.shape[2], 4);
    assert_int_equal(view.nbytes, 48);
    assert_memory_equal(view.data, f.d[2].sections[0].data, 48);
    assert_null(view.q);
    assert_int_equal(moec_container_tensor_view(c, 0, &view, &err), MOEC_OK);
    assert_int_equal(view.dtype, MOEC_DT_F32);
    assert_int_equal(moec_container_tensor_view(c, 3, &view, &err), MOEC_ERR_UNSUPPORTED);
    assert_int_equal(moec_container_tensor_view(c, 6, &view, &err), MOEC_ERR_ARG);

    assert_int_equal(moec_container_find(c, "no.such.tensor"), -1);
    const void *data;
    size_t size;
    void *owned;
    assert_int_equal(moec_container_section_get(c, 0, MOEC_SECTION_CODES, &data, &size, &owned,
                                                &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "no CODES section"));
    assert_int_equal(moec_container_section_get(c, N_FIX, MOEC_SECTION_DATA, &data, &size,
                                                &owned, &err), MOEC_ERR_ARG);

    assert_int_equal(moec_container_blob_count(c), 3);
    assert_string_equal(moec_container_blob_name(c, 0), "config.json");
    assert_string_equal(moec_container_blob_name(c, 1), "tokenizer.json");
    assert_string_equal(moec_container_blob_name(c, 2), "report.json");
    assert_null(moec_container_blob_name(c, 3));
    assert_int_equal(moec_container_blob(c, "tokenizer.json", &data, &size, &err), MOEC_OK);
    assert_int_equal(size, strlen(f.tokenizer));
    assert_memory_equal(data, f.tokenizer, size);
    assert_int_equal(((const unsigned char *)data - base) % 64, 0);
    assert_int_equal(moec_container_blob(c, "config.json", &data, &size, &err), MOEC_OK);
    assert_memory_equal(data, f.config, size);
    assert_int_equal(moec_container_blob(c, "report.json", &data, &size, &err), MOEC_OK);
    assert_int_equal(size, 0);
    assert_int_equal(moec_container_blob(c, "generation_config.json", &data, &size, &err),
                     MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "no blob named 'generation_config.json'"));
    moec_container_close(c);

    /* an in-memory copy opens the same way */
    size_t n;
    char *bytes = tu_read_file(path, &n);
    assert_int_equal(n, fsize);
    assert_int_equal(moec_container_open_mem(bytes, n, "copy", 0, &c, &err), MOEC_OK);
    assert_int_equal(moec_container_tensor_count(c), N_FIX);
    moec_container_close(c);
    free(bytes);
    fixture_free(&f);
}

/* Tensors added after streaming starts may be freed as soon as add returns. */
static void test_streaming(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    const char *dir = tu_tmpdir();
    char path[4096];
    snprintf(path, sizeof path, "%s/streamed.moec", dir);
    moec_container_writer *w;
    moec_err err;
    assert_int_equal(moec_container_writer_new(NULL, &w, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_add_tensor(w, &f.d[0], &err), MOEC_OK);
    assert_int_equal(moec_container_writer_stream(w, path, &err), MOEC_OK);
    for (int i = 1; i < N_FIX; i++) {
        moec_ctensor_desc d = f.d[i];
        void *copies[MOEC_SECTION_KIND_COUNT];
        for (int k = 0; k < d.n_sections; k++) {
            copies[k] = malloc(d.sections[k].size);
            memcpy(copies[k], d.sections[k].data, d.sections[k].size);
            d.sections[k].data = copies[k];
        }
        assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_OK);
        for (int k = 0; k < d.n_sections; k++) {
            memset(copies[k], 0xEE, d.sections[k].size);
            free(copies[k]);
        }
    }
    assert_false(access(path, F_OK) == 0); /* nothing under the final name yet */
    assert_int_equal(moec_container_writer_write(w, "elsewhere.moec", &err), MOEC_ERR_ARG);
    moec_container_writer_free(w);
    assert_int_equal(tu_count_dir_entries(dir), 0);

    assert_int_equal(moec_container_writer_new(NULL, &w, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_stream(w, path, &err), MOEC_OK);
    for (int i = 0; i < N_FIX; i++)
        assert_int_equal(moec_container_writer_add_tensor(w, &f.d[i], &err), MOEC_OK);
    assert_int_equal(moec_container_writer_write(w, NULL, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_add_tensor(w, &f.d[0], &err), MOEC_ERR_ARG);
    moec_container_writer_free(w);
    assert_int_equal(tu_count_dir_entries(dir), 1);
    moec_container *c;
    assert_int_equal(moec_container_open(path, 0, &c, &err), MOEC_OK);
    for (int i = 0; i < N_FIX; i++) {
        const moec_ctensor_info *ti = moec_container_tensor(c, (size_t)i);
        for (int k = 0; k < ti->n_sections; k++) {
            unsigned char buf[1024];
            assert_int_equal(moec_container_section_read(c, (size_t)i, ti->sections[k].kind, 0,
                                                         buf, ti->sections[k].size, &err),
                             MOEC_OK);
            assert_memory_equal(buf, desc_section(&f.d[i], ti->sections[k].kind)->data,
                                ti->sections[k].size);
        }
    }
    moec_container_close(c);
    fixture_free(&f);
}

/* What a byte of the pristine file belongs to, and what an error about it
 * must mention. */
static const char *expected_mention(const moec_container *c, size_t off, uint64_t dir_off,
                                    char *buf, size_t n)
{
    if (off < 64)
        return "header";
    if (off >= dir_off)
        return "directory";
    for (size_t i = 0; i < moec_container_blob_count(c); i++) {
        const char *name = moec_container_blob_name(c, i);
        const void *data;
        size_t size;
        moec_container_blob(c, name, &data, &size, NULL);
        size_t start = (size_t)((const unsigned char *)data -
                                (const unsigned char *)moec_container_bytes(c, NULL));
        if (off >= start && off < start + size) {
            snprintf(buf, n, "blob '%s'", name);
            return buf;
        }
    }
    for (size_t i = 0; i < moec_container_tensor_count(c); i++) {
        const moec_ctensor_info *ti = moec_container_tensor(c, i);
        for (int k = 0; k < ti->n_sections; k++)
            if (off >= ti->sections[k].offset &&
                off < ti->sections[k].offset + ti->sections[k].stored_size) {
                snprintf(buf, n, "tensor '%s'", ti->name);
                return buf;
            }
    }
    return "padding";
}

static void test_every_byte_flipped(void **state)
{
    (void)state;
    const char *path;
    size_t n;
    unsigned char *good = fixture_bytes(tu_tmpdir(), &path, &n);
    assert_true(n > 1024 && n < 8192);
    moec_container *pristine;
    moec_err err;
    assert_int_equal(moec_container_open_mem(good, n, "pristine", 0, &pristine, &err), MOEC_OK);
    uint64_t dir_off = 0;
    for (int b = 7; b >= 0; b--)
        dir_off = dir_off << 8 | good[24 + b];
    /* one file, changed in place a byte at a time: cheaper than rewriting it */
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char *bad = malloc(n);
    size_t in_tensors = 0, in_padding = 0, in_blobs = 0;
    static const unsigned char masks[] = {0x01, 0x80, 0xff};
    for (size_t m = 0; m < sizeof masks; m++)
        for (size_t i = 0; i < n; i++) {
            unsigned char byte = good[i] ^ masks[m];
            assert_int_equal(pwrite(fd, &byte, 1, (off_t)i), 1);
            moec_container *c = NULL;
            moec_err_clear(&err);
            moec_status s = moec_container_open(path, 0, &c, &err);
            assert_int_equal(pwrite(fd, &good[i], 1, (off_t)i), 1);
            if (s == MOEC_OK)
                fail_msg("byte %zu ^ 0x%02x: open succeeded", i, masks[m]);
            assert_null(c);
            char buf[256];
            const char *want = expected_mention(pristine, i, dir_off, buf, sizeof buf);
            if (!strstr(err.msg, want))
                fail_msg("byte %zu ^ 0x%02x: error '%s' does not mention %s", i, masks[m],
                         err.msg, want);
            in_tensors += strncmp(want, "tensor", 6) == 0;
            in_blobs += strncmp(want, "blob", 4) == 0;
            in_padding += strcmp(want, "padding") == 0;
        }
    close(fd);
    /* the fixture exercises every kind of byte */
    assert_true(in_tensors > 0 && in_blobs > 0 && in_padding > 0);
    moec_container *intact;
    assert_int_equal(moec_container_open(path, 0, &intact, &err), MOEC_OK);
    moec_container_close(intact);

    /* lazily verified, a damaged tensor opens but fails on access, by name */
    const moec_ctensor_info *ti = moec_container_tensor(pristine, 5);
    memcpy(bad, good, n);
    bad[ti->sections[0].offset + 3] ^= 0x10;
    moec_container *c;
    assert_int_equal(moec_container_open_mem(bad, n, "lazy", MOEC_CONTAINER_LAZY_VERIFY, &c, &err),
                     MOEC_OK);
    const void *data;
    size_t size;
    void *owned;
    assert_int_equal(moec_container_section_get(c, 0, MOEC_SECTION_DATA, &data, &size, &owned,
                                                &err), MOEC_OK);
    assert_int_equal(moec_container_section_get(c, 5, MOEC_SECTION_SCALES, &data, &size, &owned,
                                                &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tensor 'layers.0.experts.2.w1'"));
    assert_int_equal(moec_container_verify_tensor(c, 5, &err), MOEC_ERR_FORMAT);
    moec_container_close(c);
    /* but damaged padding is still found at open */
    memcpy(bad, good, n);
    bad[ti->sections[0].offset + ti->sections[0].stored_size] ^= 1;
    assert_int_equal(moec_container_open_mem(bad, n, "lazy", MOEC_CONTAINER_LAZY_VERIFY, &c, &err),
                     MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "padding"));

    moec_container_close(pristine);
    free(bad);
    free(good);
}

static void test_every_truncation(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    size_t n;
    unsigned char *good = fixture_bytes(dir, NULL, &n);
    moec_err err;
    for (size_t len = 0; len < n; len++) {
        /* an exact-size heap copy, so any read past the end trips ASan */
        char *cut = malloc(len ? len : 1);
        memcpy(cut, good, len);
        moec_container *c = NULL;
        moec_status s = moec_container_open_mem(cut, len, "cut", 0, &c, &err);
        if (s == MOEC_OK)
            fail_msg("truncated to %zu of %zu bytes: open succeeded", len, n);
        assert_null(c);
        assert_true(strlen(err.msg) > 0);
        free(cut);
    }
    /* the same through the file path, at a few lengths including 0 */
    char cut_path[4096];
    snprintf(cut_path, sizeof cut_path, "%s/cut.moec", dir);
    size_t lens[] = {0, 7, 63, 64, n / 2, n - 1};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        tu_write_file(cut_path, good, lens[i]);
        moec_container *c = NULL;
        assert_int_not_equal(moec_container_open(cut_path, 0, &c, &err), MOEC_OK);
        assert_non_null(strstr(err.msg, "cut.moec"));
    }
    /* and appended bytes are not ignored */
    char *longer = malloc(n + 1);
    memcpy(longer, good, n);
    longer[n] = 0;
    moec_container *c;
    assert_int_equal(moec_container_open_mem(longer, n + 1, "long", 0, &c, &err), MOEC_ERR_FORMAT);
    free(longer);
    free(good);
}

static void test_magic_and_version(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    size_t n;
    unsigned char *bytes = fixture_bytes(dir, NULL, &n);
    moec_container *c;
    moec_err err;

    char other[4096];
    snprintf(other, sizeof other, "%s/model.safetensors", dir);
    tu_write_file(other, "\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", 15);
    assert_int_equal(moec_container_open(other, 0, &c, &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "not a .moec container"));
    assert_non_null(strstr(err.msg, "model.safetensors"));

    /* a newer version with a valid checksum: refused for its version alone */
    assert_int_equal(bytes[8], MOEC_CONTAINER_VERSION);
    bytes[8] = MOEC_CONTAINER_VERSION + 1;
    reseal_header(bytes, n);
    assert_int_equal(moec_container_open_mem(bytes, n, "v3.moec", 0, &c, &err),
                     MOEC_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "version 3 is newer"));
    bytes[8] = MOEC_CONTAINER_VERSION;
    assert_int_equal(moec_container_open_mem(bytes, n, "v2.moec", 0, &c, &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "checksum mismatch"));
    /* version 1 (no GGML tensor here) still reads */
    bytes[8] = 1;
    reseal_header(bytes, n);
    assert_int_equal(moec_container_open_mem(bytes, n, "v1.moec", 0, &c, &err), MOEC_OK);
    moec_container_close(c);
    bytes[8] = MOEC_CONTAINER_VERSION;
    reseal_header(bytes, n);

    assert_int_equal(moec_container_open("/nonexistent/x.moec", 0, &c, &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/x.moec"));
    assert_int_equal(moec_container_open(dir, 0, &c, &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "not a regular file"));
    free(bytes);
}

static void test_failed_write_leaves_nothing(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    moec_err err;

    /* rename onto a non-empty directory fails after all bytes are written */
    const char *dir = tu_tmpdir();
    char target[4096], inner[4200];
    snprintf(target, sizeof target, "%s/model.moec", dir);
    assert_int_equal(mkdir(target, 0755), 0);
    snprintf(inner, sizeof inner, "%s/keep", target);
    tu_write_file(inner, "x", 1);
    moec_container_writer *w = fixture_writer(&f);
    assert_int_equal(moec_container_writer_write(w, target, &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "model.moec"));
    assert_int_equal(moec_container_writer_write(w, target, &err), MOEC_ERR_ARG);
    moec_container_writer_free(w);
    assert_int_equal(tu_count_dir_entries(dir), 1);

    /* the file size limit cuts a write in the middle */
    dir = tu_tmpdir();
    snprintf(target, sizeof target, "%s/model.moec", dir);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 1000;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    w = fixture_writer(&f);
    moec_status s = moec_container_writer_write(w, target, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(s, MOEC_ERR_IO);
    moec_container_writer_free(w);
    assert_int_equal(tu_count_dir_entries(dir), 0);

    /* no such directory */
    w = fixture_writer(&f);
    assert_int_equal(moec_container_writer_write(w, "/nonexistent/dir/model.moec", &err),
                     MOEC_ERR_IO);
    moec_container_writer_free(w);

    /* an existing file is untouched by a failed replacement */
    dir = tu_tmpdir();
    snprintf(target, sizeof target, "%s/model.moec", dir);
    tu_write_file(target, "old", 3);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    prev = signal(SIGXFSZ, SIG_IGN);
    w = fixture_writer(&f);
    s = moec_container_writer_write(w, target, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(s, MOEC_ERR_IO);
    moec_container_writer_free(w);
    assert_int_equal(tu_count_dir_entries(dir), 1);
    size_t n;
    char *content = tu_read_file(target, &n);
    assert_int_equal(n, 3);
    free(content);
    fixture_free(&f);
}

static void test_writer_rejects_bad_tensors(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    moec_container_writer *w;
    moec_err err;
    assert_int_equal(moec_container_writer_new(NULL, &w, &err), MOEC_OK);
    moec_ctensor_desc d = f.d[3]; /* 4-bit asymmetric: CODES, SCALES, ZEROS */

    d.sections[0].size--;
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "tensor 'layers.0.experts.0.w1'"));
    assert_non_null(strstr(err.msg, "need"));

    d = f.d[3];
    d.type.symmetric = 1; /* then ZEROS is one section too many */
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "needs 2 sections"));

    d = f.d[3];
    d.sections[1].kind = d.sections[0].kind;
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);

    d = f.d[3];
    d.type.bits = 9;
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "bits"));

    d = f.d[0];
    d.sections[0].kind = MOEC_SECTION_CODES;
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);

    d = f.d[0];
    d.zstd_level = 1000;
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);
    d.name = "";
    d.zstd_level = 0;
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);
    d.name = "two\nlines";
    assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_ERR_ARG);

    assert_int_equal(moec_container_writer_add_tensor(w, &f.d[0], &err), MOEC_OK);
    assert_int_equal(moec_container_writer_add_tensor(w, &f.d[0], &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "twice"));
    assert_int_equal(moec_container_writer_add_blob(w, "config.json", "{}", 2, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_add_blob(w, "config.json", "{}", 2, &err),
                     MOEC_ERR_ARG);
    moec_container_writer_free(w);

    moec_container_writer_opts o;
    moec_container_writer_opts_default(&o);
    o.chunk_size = 10;
    assert_int_equal(moec_container_writer_new(&o, &w, &err), MOEC_ERR_ARG);
    moec_container_writer_opts_default(&o);
    o.min_saving = 1.5;
    assert_int_equal(moec_container_writer_new(&o, &w, &err), MOEC_ERR_ARG);
    fixture_free(&f);
}

/* An empty container (no tensors, no blobs) is valid, and min_saving 0
 * keeps zstd whenever it is not larger. */
static void test_empty_and_saving_threshold(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char path[4096];
    snprintf(path, sizeof path, "%s/empty.moec", dir);
    moec_container_writer *w;
    moec_err err;
    assert_int_equal(moec_container_writer_new(NULL, &w, &err), MOEC_OK);
    assert_int_equal(moec_container_writer_write(w, path, &err), MOEC_OK);
    moec_container_writer_free(w);
    moec_container *c;
    assert_int_equal(moec_container_open(path, 0, &c, &err), MOEC_OK);
    assert_int_equal(moec_container_tensor_count(c), 0);
    assert_int_equal(moec_container_blob_count(c), 0);
    size_t n;
    moec_container_bytes(c, &n);
    assert_int_equal(n, 64);
    moec_container_close(c);

    /* codes that compress to ~half: kept compressed at 5%, raw at 60% */
    size_t nb = 4096;
    uint8_t *codes = malloc(nb);
    for (size_t i = 0; i < nb; i++)
        codes[i] = (uint8_t)(rnd() & 0x0f);
    uint64_t want[MOEC_SECTION_KIND_COUNT];
    moec_ctensor_type t = gw_type(4, 128, 1, 8, 1024);
    assert_int_equal(moec_ctensor_section_bytes(&t, want, &err), MOEC_OK);
    assert_int_equal(want[MOEC_SECTION_CODES], nb);
    uint8_t *scales = random_bytes(want[MOEC_SECTION_SCALES]);
    moec_ctensor_desc d = {.name = "w", .type = t, .n_sections = 2,
                           .sections = {{MOEC_SECTION_CODES, codes, nb},
                                        {MOEC_SECTION_SCALES, scales,
                                         want[MOEC_SECTION_SCALES]}}};
    for (int pass = 0; pass < 2; pass++) {
        moec_container_writer_opts o;
        moec_container_writer_opts_default(&o);
        o.min_saving = pass ? 0.6 : 0.05;
        assert_int_equal(moec_container_writer_new(&o, &w, &err), MOEC_OK);
        assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_OK);
        assert_int_equal(moec_container_writer_write(w, path, &err), MOEC_OK);
        moec_container_writer_free(w);
        assert_int_equal(moec_container_open(path, 0, &c, &err), MOEC_OK);
        const moec_ctensor_info *ti = moec_container_tensor(c, 0);
        assert_int_equal(ti->sections[0].encoding,
                         pass ? MOEC_ENCODING_RAW : MOEC_ENCODING_ZSTD);
        assert_int_equal(ti->sections[1].encoding, MOEC_ENCODING_RAW);
        moec_container_close(c);
    }
    free(codes);
    free(scales);
}

/* Enough tensors to grow the writer's name set; lookup by name finds each. */
static void test_many_tensors(void **state)
{
    (void)state;
    enum { N = 300 };
    static float values[N];
    static char names[N][16];
    const char *dir = tu_tmpdir();
    char path[4096];
    snprintf(path, sizeof path, "%s/many.moec", dir);
    moec_container_writer *w;
    moec_err err;
    assert_int_equal(moec_container_writer_new(NULL, &w, &err), MOEC_OK);
    for (int i = 0; i < N; i++) {
        values[i] = (float)i * 0.5f;
        snprintf(names[i], sizeof names[i], "t.%d", (i * 7) % N);
        moec_ctensor_desc d = {.name = names[i],
                               .type = {.storage = MOEC_STORAGE_F32, .ndim = 1, .shape = {1}},
                               .n_sections = 1,
                               .sections = {{MOEC_SECTION_DATA, &values[i], sizeof(float)}}};
        assert_int_equal(moec_container_writer_add_tensor(w, &d, &err), MOEC_OK);
    }
    moec_ctensor_desc dup = {.name = "t.123",
                             .type = {.storage = MOEC_STORAGE_F32, .ndim = 1, .shape = {1}},
                             .n_sections = 1,
                             .sections = {{MOEC_SECTION_DATA, &values[0], sizeof(float)}}};
    assert_int_equal(moec_container_writer_add_tensor(w, &dup, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "'t.123' added twice"));
    assert_int_equal(moec_container_writer_write(w, path, &err), MOEC_OK);
    moec_container_writer_free(w);
    moec_container *c;
    assert_int_equal(moec_container_open(path, 0, &c, &err), MOEC_OK);
    assert_int_equal(moec_container_tensor_count(c), N);
    for (int i = 0; i < N; i++) {
        int64_t idx = moec_container_find(c, names[i]);
        assert_int_equal(idx, i);
        float v;
        assert_int_equal(moec_container_section_read(c, (size_t)idx, MOEC_SECTION_DATA, 0, &v,
                                                     sizeof v, &err), MOEC_OK);
        assert_true(v == values[i]);
    }
    moec_container_close(c);
}

/* ---- an independent reading of docs/format.md ---------------------------- */

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void set_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

/* Offset of tensor entry `t` in the file, walking the directory as the
 * format document describes it. */
static size_t tensor_entry(const unsigned char *f, size_t t)
{
    size_t pos = (size_t)le(f + 24, 8);
    for (uint64_t i = 0; i < le(f + 40, 4); i++)
        pos += 32 + (size_t)pad8(le(f + pos + 8, 2));
    for (size_t i = 0; i < t; i++)
        pos += 56 + 32 * (size_t)f[pos + 14] + (size_t)pad8(le(f + pos + 8, 2));
    return pos;
}

/* Recomputes every checksum from the document's definitions, so that a
 * deliberately inconsistent file reaches the structural checks. */
static void reseal(unsigned char *f, size_t n)
{
    size_t dir = (size_t)le(f + 24, 8), pos = dir;
    for (uint64_t i = 0; i < le(f + 40, 4); i++) {
        set_le(f + pos, XXH3_64bits(f + le(f + pos + 16, 8), (size_t)le(f + pos + 24, 8)), 8);
        pos += 32 + (size_t)pad8(le(f + pos + 8, 2));
    }
    for (uint64_t i = 0; i < le(f + 44, 4) && pos + 56 <= n; i++) {
        int ns = f[pos + 14];
        size_t size = 56 + 32 * (size_t)ns + (size_t)pad8(le(f + pos + 8, 2));
        if (size > n - pos)
            break;
        XXH3_state_t *st = XXH3_createState();
        XXH3_64bits_reset(st);
        XXH3_64bits_update(st, f + pos + 8, size - 8);
        for (int k = 0; k < ns; k++) {
            const unsigned char *r = f + pos + 56 + 32 * k;
            uint64_t off = le(r + 8, 8), stored = le(r + 16, 8);
            if (off <= n && stored <= n - off)
                XXH3_64bits_update(st, f + off, (size_t)stored);
        }
        set_le(f + pos, XXH3_64bits_digest(st), 8);
        XXH3_freeState(st);
        pos += size;
    }
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, f, 56);
    XXH3_64bits_update(st, f + dir, n - dir);
    set_le(f + 56, XXH3_64bits_digest(st), 8);
    XXH3_freeState(st);
}

/* Files whose checksums are all right but whose content breaks a rule. */
static void test_structural_checks(void **state)
{
    (void)state;
    size_t n;
    unsigned char *good = fixture_bytes(tu_tmpdir(), NULL, &n);
    unsigned char *b = malloc(n);
    moec_container *c;
    moec_err err;

    /* resealing an intact file changes nothing: the document's checksum
     * definitions are the implementation's */
    memcpy(b, good, n);
    reseal(b, n);
    assert_memory_equal(b, good, n);

    size_t e3 = tensor_entry(good, 3), e4 = tensor_entry(good, 4), e5 = tensor_entry(good, 5);
    assert_string_equal((const char *)good + e3 + 56 + 3 * 32, "layers.0.experts.0.w1");
    const unsigned char *z = good + e5 + 56; /* tensor 5's CODES record: ZSTD */
    assert_int_equal(z[1], MOEC_ENCODING_ZSTD);
    size_t z_off = (size_t)le(z + 8, 8);
    size_t frame0 = z_off + (size_t)le(good + z_off, 8);

    struct {
        size_t at;      /* byte to change */
        int width;      /* 0: xor 0x01 into one byte; else store `value` */
        uint64_t value;
        const char *want;
    } cases[] = {
        {e3 + 56 + 32 + 24, 8, 25, "need 24"},              /* SCALES size */
        {e3 + 56 + 32 + 16, 8, 25, "raw section must store"}, /* stored != size */
        {e4 + 56 + 8, 8, 64 + 128, "overlaps"},             /* CODES onto tensor 1 */
        {e4 + 56 + 8, 8, 64 + 1, "unaligned"},
        {e4 + 56 + 8, 8, 1ull << 40, "outside the data area"},
        {e3 + 11, 1, 5, "ndim"},
        {e3 + 12, 1, 0, "bits"},
        {e3 + 13, 1, 1, "needs 2 sections"},               /* symmetric, yet 3 sections */
        {e3 + 16, 4, 0, "group"},
        {e3 + 10, 1, 9, "storage"},
        {e3 + 15, 1, 1, "reserved"},
        {e3 + 56 + 1, 1, 2, "unknown encoding"},
        {e3 + 56 + 32, 1, MOEC_SECTION_CODES, "out of order"},
        {e3 + 56 + 4, 4, 64, "raw section must store"},     /* chunk size on RAW */
        {e3 + 56 + 3 * 32 + 17, 1, 'x', "appears twice"}, /* experts.0 -> experts.1 */
        {e3 + 56 + 3 * 32 + 21, 0, 0, "padding is not zero"}, /* name padding */
        {e3 + 56 + 3 * 32 + 6, 1, '\n', "control characters"},
        {e3 + 40, 8, 7, "past ndim"},                       /* shape[2] on a 2-d tensor */
        {e5 + 56 + 4, 4, 32, "chunk size"},
        {z_off, 0, 0, "chunk table"},                       /* table[0] */
        {z_off + 8, 8, 7, "chunk 0 spans"},                 /* table[1] before table[0] */
        {frame0 + 5, 0, 0, "zstd frame"},                   /* frame header's content size */
        {8, 4, 0, "version 0"},
        {44, 4, 6, "bytes after the last entry"},           /* n_tensors */
        {44, 4, 1000, "cannot fit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memcpy(b, good, n);
        if (cases[i].width)
            set_le(b + cases[i].at, cases[i].value, cases[i].width);
        else
            b[cases[i].at] ^= 0x01;
        if (cases[i].at == e3 + 56 + 3 * 32 + 17)
            b[cases[i].at] = '1';
        reseal(b, n);
        moec_status s = moec_container_open_mem(b, n, "sealed", 0, &c, &err);
        if (s == MOEC_OK)
            fail_msg("case %zu: open succeeded", i);
        if (s != MOEC_ERR_FORMAT || !strstr(err.msg, cases[i].want))
            fail_msg("case %zu: got %s '%s', want '%s'", i, moec_status_name(s), err.msg,
                     cases[i].want);
    }

    /* a zstd section claiming more than its stored bytes can decode to
     * (32768x): tensor 6, F32 [24] in ~60 stored bytes, made [4M] with a
     * 16 MiB section in one 1 GiB chunk; refused at open, before anything is
     * sized by it */
    size_t e6 = tensor_entry(good, 6);
    assert_int_equal(good[e6 + 56 + 1], MOEC_ENCODING_ZSTD);
    memcpy(b, good, n);
    set_le(b + e6 + 24, 1u << 22, 8);
    set_le(b + e6 + 56 + 24, 4ull << 22, 8);
    set_le(b + e6 + 56 + 4, 1u << 30, 4); /* one chunk: the chunk-count rule cannot see it */
    reseal(b, n);
    assert_int_equal(moec_container_open_mem(b, n, "sealed", MOEC_CONTAINER_LAZY_VERIFY, &c, &err),
                     MOEC_ERR_FORMAT);
    if (!strstr(err.msg, "cannot come from"))
        fail_msg("%s", err.msg);
    free(b);
    free(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_section_sizes),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_every_byte_flipped),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_magic_and_version),
        cmocka_unit_test(test_ggml_storage),
        cmocka_unit_test(test_failed_write_leaves_nothing),
        cmocka_unit_test(test_writer_rejects_bad_tensors),
        cmocka_unit_test(test_empty_and_saving_threshold),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_structural_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
