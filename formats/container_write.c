/* container_write.c - writes a .moec file: tensors' sections first (each
 * 64-byte aligned), then blobs, then the directory, then the header at
 * offset 0. The header goes last because it holds the checksum of the
 * directory; placing the directory at the end lets tensors be written as
 * they are produced (see moec_container_writer_stream).
 */
#include "formats/container.h"
#include "formats/container_layout.h"
#include "core/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "core/fsutil.h"

typedef struct cw_blob {
    char *name;
    const void *data;
    size_t size;
} cw_blob;

struct moec_container_writer {
    moec_container_writer_opts opts;
    cw_blob *blobs;
    size_t n_blobs, cap_blobs;
    moec_ctensor_desc *pending; /* added, not yet written; names owned */
    size_t n_pending, cap_pending;
    char **names; /* every tensor name added */
    size_t n_names, cap_names;
    size_t *name_slots; /* open-addressing set over names: index + 1, 0 = empty */
    size_t n_slots;     /* a power of two, at least twice n_names */
    unsigned char *entries; /* serialized tensor entries of written tensors */
    size_t entries_len, entries_cap;
    size_t n_written;
    /* streaming state */
    int fd;
    char *tmp_path, *path;
    uint64_t pos;
    int failed, done;
};

static const unsigned char zeros64[CT_ALIGN];

/* Tensors at least this large are flushed and dropped from the page cache
 * once written. */
#define DROP_MIN ((uint64_t)1 << 20)

static uint64_t align64(uint64_t n) { return (n + CT_ALIGN - 1) & ~(uint64_t)(CT_ALIGN - 1); }

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return 0;
    *p = q;
    *cap = n;
    return 1;
}

void moec_container_writer_opts_default(moec_container_writer_opts *o)
{
    o->zstd_level = 3;
    o->chunk_size = 1u << 20;
    o->min_saving = 0.05;
}

static int level_ok(int level) { return level >= ZSTD_minCLevel() && level <= ZSTD_maxCLevel(); }

moec_status moec_container_writer_new(const moec_container_writer_opts *opts,
                                      moec_container_writer **out, moec_err *err)
{
    *out = NULL;
    moec_container_writer_opts o;
    moec_container_writer_opts_default(&o);
    if (opts)
        o = *opts;
    if (!level_ok(o.zstd_level) || o.zstd_level == 0)
        return moec_err_set(err, MOEC_ERR_ARG, "container writer: zstd level %d outside [%d, %d] "
                            "or 0", o.zstd_level, ZSTD_minCLevel(), ZSTD_maxCLevel());
    if (o.chunk_size < MOEC_CONTAINER_CHUNK_MIN || o.chunk_size > MOEC_CONTAINER_CHUNK_MAX)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "container writer: chunk size %" PRIu32 " outside [%u, %u]",
                            o.chunk_size, MOEC_CONTAINER_CHUNK_MIN, MOEC_CONTAINER_CHUNK_MAX);
    if (!(o.min_saving >= 0.0 && o.min_saving <= 1.0))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "container writer: min_saving %g outside [0, 1]", o.min_saving);
    moec_container_writer *w = calloc(1, sizeof *w);
    if (!w)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    w->opts = o;
    w->fd = -1;
    *out = w;
    return MOEC_OK;
}

static moec_status usable(const moec_container_writer *w, moec_err *err)
{
    if (w->done || w->failed)
        return moec_err_set(err, MOEC_ERR_ARG, "container writer: already %s",
                            w->done ? "written" : "failed");
    return MOEC_OK;
}

/* Names appear in one-line messages, so control characters are refused. */
static moec_status check_name(const char *name, const char *what, moec_err *err)
{
    size_t n = name ? strlen(name) : 0;
    int ctrl = 0;
    for (size_t i = 0; i < n; i++)
        ctrl |= (unsigned char)name[i] < 0x20 || name[i] == 0x7f;
    if (n == 0 || n > CT_NAME_MAX || ctrl)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "container writer: %s name must be 1..%u bytes without control "
                            "characters",
                            what, CT_NAME_MAX);
    return MOEC_OK;
}

moec_status moec_container_writer_add_blob(moec_container_writer *w, const char *name,
                                           const void *data, size_t size, moec_err *err)
{
    moec_status s = usable(w, err);
    if (s || (s = check_name(name, "blob", err)))
        return s;
    if (!data && size)
        return moec_err_set(err, MOEC_ERR_ARG, "container writer: blob '%s': NULL data", name);
    for (size_t i = 0; i < w->n_blobs; i++)
        if (strcmp(w->blobs[i].name, name) == 0)
            return moec_err_set(err, MOEC_ERR_ARG, "container writer: blob '%s' added twice",
                                name);
    if (!grow((void **)&w->blobs, &w->cap_blobs, w->n_blobs + 1, sizeof *w->blobs))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    char *copy = strdup(name);
    if (!copy)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    w->blobs[w->n_blobs++] = (cw_blob){copy, data, size};
    return MOEC_OK;
}

/* ---- file output -------------------------------------------------------- */

/* Leaves nothing behind: the writer is unusable afterwards. Idempotent. */
static void fail(moec_container_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    if (w->tmp_path) {
        unlink(w->tmp_path);
        moec_tmp_untrack(w->tmp_path);
    }
    free(w->tmp_path);
    w->tmp_path = NULL;
    w->failed = 1;
}

static moec_status put(moec_container_writer *w, const void *p, size_t n, moec_err *err)
{
    const unsigned char *b = p;
    while (n) {
        ssize_t r = write(w->fd, b, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            return moec_err_set(err, MOEC_ERR_IO, "%s: write: %s", w->tmp_path,
                                r < 0 ? strerror(errno) : "no progress");
        }
        b += r;
        n -= (size_t)r;
        w->pos += (uint64_t)r;
    }
    return MOEC_OK;
}

static moec_status pad_to(moec_container_writer *w, uint64_t to, moec_err *err)
{
    return put(w, zeros64, (size_t)(to - w->pos), err);
}

/* ---- tensors ------------------------------------------------------------ */

typedef struct cw_encoded {
    moec_section_kind kind;
    moec_encoding encoding;
    const unsigned char *bytes; /* stored bytes: the caller's data or buf */
    uint64_t stored, size, offset;
    uint32_t chunk_size;
    unsigned char *buf;
} cw_encoded;

/* Chunk offset table followed by one zstd frame per chunk. */
static moec_status compress_section(moec_container_writer *w, const char *name,
                                    const moec_csection *sec, int level, cw_encoded *e,
                                    moec_err *err)
{
    size_t cs = w->opts.chunk_size, n = (sec->size + cs - 1) / cs;
    size_t bound = ZSTD_compressBound(cs), cap = 8 * (n + 1) + n * bound;
    unsigned char *buf = malloc(cap);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (!buf || !cctx) {
        free(buf);
        ZSTD_freeCCtx(cctx);
        return moec_err_set(err, MOEC_ERR_NOMEM, "container writer: tensor '%s': out of memory",
                            name);
    }
    size_t at = 8 * (n + 1);
    for (size_t i = 0; i < n; i++) {
        ct_st(buf + 8 * i, at, 8);
        size_t len = sec->size - i * cs < cs ? sec->size - i * cs : cs;
        size_t r = ZSTD_compressCCtx(cctx, buf + at, cap - at,
                                     (const unsigned char *)sec->data + i * cs, len, level);
        if (ZSTD_isError(r)) {
            free(buf);
            ZSTD_freeCCtx(cctx);
            return moec_err_set(err, MOEC_ERR_INTERNAL,
                                "container writer: tensor '%s' section %s: zstd: %s", name,
                                moec_section_kind_name(sec->kind), ZSTD_getErrorName(r));
        }
        at += r;
    }
    ct_st(buf + 8 * n, at, 8);
    ZSTD_freeCCtx(cctx);
    e->encoding = MOEC_ENCODING_ZSTD;
    e->buf = buf;
    e->bytes = buf;
    e->stored = at;
    e->chunk_size = (uint32_t)cs;
    return MOEC_OK;
}

static moec_status encode_section(moec_container_writer *w, const moec_ctensor_desc *t,
                                  const moec_csection *sec, cw_encoded *e, moec_err *err)
{
    *e = (cw_encoded){.kind = sec->kind, .encoding = MOEC_ENCODING_RAW, .bytes = sec->data,
                      .stored = sec->size, .size = sec->size};
    int try_zstd = t->compress == MOEC_COMPRESS_ZSTD ||
                   (t->compress == MOEC_COMPRESS_AUTO &&
                    (t->type.storage == MOEC_STORAGE_GROUPWISE || t->type.storage == MOEC_STORAGE_GGML));
    if (!try_zstd)
        return MOEC_OK;
    cw_encoded z = *e;
    int level = t->zstd_level ? t->zstd_level : w->opts.zstd_level;
    moec_status s = compress_section(w, t->name, sec, level, &z, err);
    if (s)
        return s;
    if (t->compress == MOEC_COMPRESS_AUTO &&
        (double)z.stored > (1.0 - w->opts.min_saving) * (double)sec->size) {
        free(z.buf);
        return MOEC_OK;
    }
    *e = z;
    return MOEC_OK;
}

static int cmp_section(const void *a, const void *b)
{
    return (int)((const moec_csection *)a)->kind - (int)((const moec_csection *)b)->kind;
}

/* Encodes the tensor's sections, writes them at the next aligned offsets and
 * appends its directory entry. */
static moec_status emit_tensor(moec_container_writer *w, const moec_ctensor_desc *t,
                               moec_err *err)
{
    moec_csection secs[MOEC_SECTION_KIND_COUNT];
    int n = t->n_sections;
    memcpy(secs, t->sections, (size_t)n * sizeof *secs);
    qsort(secs, (size_t)n, sizeof *secs, cmp_section);
    cw_encoded enc[MOEC_SECTION_KIND_COUNT] = {0};
    moec_status s = MOEC_OK;
    size_t name_len = strlen(t->name);
    size_t entry_size = CT_TEN_FIXED + (size_t)n * CT_SEC_RECORD + ct_pad8(name_len);
    if (!grow((void **)&w->entries, &w->entries_cap, w->entries_len + entry_size, 1))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    unsigned char *e = w->entries + w->entries_len;
    memset(e, 0, entry_size);
    uint64_t at = w->pos;
    for (int k = 0; k < n && !s; k++) {
        s = encode_section(w, t, &secs[k], &enc[k], err);
        enc[k].offset = at = align64(at);
        at += enc[k].stored;
    }
    if (!s) {
        ct_st(e + CT_TEN_NAME_LEN, name_len, 2);
        e[CT_TEN_STORAGE] = (unsigned char)t->type.storage;
        e[CT_TEN_NDIM] = (unsigned char)t->type.ndim;
        e[CT_TEN_BITS] = (unsigned char)t->type.bits;
        e[CT_TEN_SYMMETRIC] = (unsigned char)t->type.symmetric;
        e[CT_TEN_N_SECTIONS] = (unsigned char)n;
        ct_st(e + CT_TEN_GROUP, (uint64_t)t->type.group, 4);
        for (int d = 0; d < MOEC_MAX_DIMS; d++)
            ct_st(e + CT_TEN_SHAPE + 8 * d, (uint64_t)t->type.shape[d], 8);
        for (int k = 0; k < n; k++) {
            unsigned char *r = e + CT_TEN_FIXED + (size_t)k * CT_SEC_RECORD;
            r[CT_SEC_KIND] = (unsigned char)enc[k].kind;
            r[CT_SEC_ENCODING] = (unsigned char)enc[k].encoding;
            ct_st(r + CT_SEC_CHUNK_SIZE, enc[k].chunk_size, 4);
            ct_st(r + CT_SEC_OFFSET, enc[k].offset, 8);
            ct_st(r + CT_SEC_STORED_SIZE, enc[k].stored, 8);
            ct_st(r + CT_SEC_SIZE, enc[k].size, 8);
        }
        memcpy(e + CT_TEN_FIXED + (size_t)n * CT_SEC_RECORD, t->name, name_len);
        XXH3_state_t *st = XXH3_createState();
        if (!st) {
            s = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        } else {
            XXH3_64bits_reset(st);
            XXH3_64bits_update(st, e + 8, entry_size - 8);
            for (int k = 0; k < n; k++)
                XXH3_64bits_update(st, enc[k].bytes, (size_t)enc[k].stored);
            ct_st(e + CT_TEN_CHECKSUM, XXH3_64bits_digest(st), 8);
            XXH3_freeState(st);
        }
    }
    int wrote = 0;
    const uint64_t start = w->pos;
    for (int k = 0; k < n && !s; k++) {
        wrote = 1;
        if (!(s = pad_to(w, enc[k].offset, err)))
            s = put(w, enc[k].bytes, (size_t)enc[k].stored, err);
    }
    /* a streamed tensor's bytes go to disk now and leave the page cache, so
     * written layers do not stay in memory */
    if (!s && w->pos - start >= DROP_MIN)
        moec_drop_written(w->fd, (long long)start, (long long)(w->pos - start));
    for (int k = 0; k < n; k++)
        free(enc[k].buf);
    if (s && wrote) {
        /* the file now holds part of a tensor: nothing sensible can follow */
        moec_err_prefix(err, "tensor '%s'", t->name);
        fail(w);
    }
    if (s)
        return s;
    w->entries_len += entry_size;
    w->n_written++;
    return MOEC_OK;
}

/* Slot where `name` is or would go; models have tens of thousands of
 * tensors, too many for pairwise comparison. */
static size_t name_slot(const moec_container_writer *w, const char *name)
{
    size_t mask = w->n_slots - 1, i = (size_t)XXH3_64bits(name, strlen(name)) & mask;
    while (w->name_slots[i] && strcmp(w->names[w->name_slots[i] - 1], name) != 0)
        i = (i + 1) & mask;
    return i;
}

static int name_known(const moec_container_writer *w, const char *name)
{
    return w->n_slots && w->name_slots[name_slot(w, name)] != 0;
}

/* Makes room for one more name, keeping the set at most half full. */
static int name_reserve(moec_container_writer *w)
{
    if (2 * (w->n_names + 1) <= w->n_slots)
        return 1;
    size_t n = w->n_slots ? 2 * w->n_slots : 64;
    size_t *slots = calloc(n, sizeof *slots);
    if (!slots)
        return 0;
    free(w->name_slots);
    w->name_slots = slots;
    w->n_slots = n;
    for (size_t i = 0; i < w->n_names; i++)
        w->name_slots[name_slot(w, w->names[i])] = i + 1;
    return 1;
}

static moec_status check_tensor(const moec_container_writer *w, const moec_ctensor_desc *t,
                                moec_err *err)
{
    moec_status s = check_name(t->name, "tensor", err);
    if (s)
        return s;
    if (name_known(w, t->name))
        return moec_err_set(err, MOEC_ERR_ARG, "container writer: tensor '%s' added twice",
                            t->name);
    uint64_t want[MOEC_SECTION_KIND_COUNT];
    if ((s = moec_ctensor_section_bytes(&t->type, want, err))) {
        moec_err_prefix(err, "container writer: tensor '%s'", t->name);
        return s;
    }
    if (t->compress != MOEC_COMPRESS_AUTO && t->compress != MOEC_COMPRESS_NONE &&
        t->compress != MOEC_COMPRESS_ZSTD)
        return moec_err_set(err, MOEC_ERR_ARG, "container writer: tensor '%s': bad compress %d",
                            t->name, (int)t->compress);
    if (t->zstd_level != 0 && !level_ok(t->zstd_level))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "container writer: tensor '%s': zstd level %d outside [%d, %d]",
                            t->name, t->zstd_level, ZSTD_minCLevel(), ZSTD_maxCLevel());
    int n_want = 0, seen[MOEC_SECTION_KIND_COUNT] = {0};
    for (int k = 0; k < MOEC_SECTION_KIND_COUNT; k++)
        n_want += want[k] != 0;
    if (t->n_sections != n_want)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "container writer: tensor '%s': %s storage needs %d sections, "
                            "given %d",
                            t->name, moec_storage_name(t->type.storage), n_want, t->n_sections);
    for (int i = 0; i < t->n_sections; i++) {
        const moec_csection *sec = &t->sections[i];
        int k = (int)sec->kind;
        if (k < 0 || k >= MOEC_SECTION_KIND_COUNT || want[k] == 0 || seen[k]++)
            return moec_err_set(err, MOEC_ERR_ARG,
                                "container writer: tensor '%s': section kind %d is unknown, "
                                "repeated or not used by %s storage",
                                t->name, k, moec_storage_name(t->type.storage));
        if (sec->size != want[k] || !sec->data)
            return moec_err_set(err, MOEC_ERR_ARG,
                                "container writer: tensor '%s' section %s: %zu bytes%s, its "
                                "type and shape need %" PRIu64,
                                t->name, moec_section_kind_name(sec->kind), sec->size,
                                sec->data ? "" : " at NULL", want[k]);
    }
    return MOEC_OK;
}

moec_status moec_container_writer_add_tensor(moec_container_writer *w,
                                             const moec_ctensor_desc *t, moec_err *err)
{
    moec_status s = usable(w, err);
    if (s || (s = check_tensor(w, t, err)))
        return s;
    if (!grow((void **)&w->names, &w->cap_names, w->n_names + 1, sizeof *w->names) ||
        !name_reserve(w))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    char *name = strdup(t->name);
    if (!name)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if (w->fd >= 0) {
        moec_ctensor_desc d = *t;
        d.name = name;
        if ((s = emit_tensor(w, &d, err))) {
            free(name);
            return s;
        }
    } else {
        if (!grow((void **)&w->pending, &w->cap_pending, w->n_pending + 1, sizeof *w->pending)) {
            free(name);
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        }
        w->pending[w->n_pending] = *t;
        w->pending[w->n_pending++].name = name;
    }
    w->name_slots[name_slot(w, name)] = w->n_names + 1;
    w->names[w->n_names++] = name;
    return MOEC_OK;
}

/* ---- start, finish ------------------------------------------------------ */

moec_status moec_container_writer_stream(moec_container_writer *w, const char *path,
                                         moec_err *err)
{
    moec_status s = usable(w, err);
    if (s)
        return s;
    if (w->fd >= 0)
        return moec_err_set(err, MOEC_ERR_ARG, "container writer: already writing to %s",
                            w->path);
    if (!path || !*path)
        return moec_err_set(err, MOEC_ERR_ARG, "container writer: empty output path");
    static atomic_uint counter;
    size_t n = strlen(path) + 64;
    w->path = strdup(path);
    w->tmp_path = malloc(n);
    if (!w->path || !w->tmp_path)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    /* same directory, so the final rename cannot cross file systems */
    for (int tries = 0; tries < 100; tries++) {
        snprintf(w->tmp_path, n, "%s.tmp-%ld-%u", path, (long)getpid(),
                 atomic_fetch_add(&counter, 1));
        w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (w->fd >= 0 || errno != EEXIST)
            break;
    }
    if (w->fd < 0) {
        s = moec_err_set(err, MOEC_ERR_IO, "%s: %s", w->tmp_path, strerror(errno));
        free(w->tmp_path);
        w->tmp_path = NULL;
        fail(w);
        return s;
    }
    moec_tmp_track(w->tmp_path);
    w->pos = 0;
    /* the header is written last, over these zeros */
    s = put(w, zeros64, CT_HDR_SIZE, err);
    for (size_t i = 0; i < w->n_pending && !s; i++)
        s = emit_tensor(w, &w->pending[i], err);
    w->n_pending = 0;
    if (s)
        fail(w);
    return s;
}

/* Directory: blob entries (written here, after the blobs' bytes), then the
 * tensor entries gathered while streaming. */
static moec_status write_blobs_and_directory(moec_container_writer *w, unsigned char **dir_out,
                                             size_t *dir_len_out, moec_err *err)
{
    size_t dir_len = w->entries_len;
    for (size_t i = 0; i < w->n_blobs; i++)
        dir_len += CT_BLOB_FIXED + ct_pad8(strlen(w->blobs[i].name));
    unsigned char *dir = calloc(dir_len ? dir_len : 1, 1);
    if (!dir)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    unsigned char *e = dir;
    for (size_t i = 0; i < w->n_blobs; i++) {
        const cw_blob *b = &w->blobs[i];
        size_t name_len = strlen(b->name);
        moec_status s = pad_to(w, align64(w->pos), err);
        ct_st(e + CT_BLOB_CHECKSUM, XXH3_64bits(b->data, b->size), 8);
        ct_st(e + CT_BLOB_NAME_LEN, name_len, 2);
        ct_st(e + CT_BLOB_OFFSET, w->pos, 8);
        ct_st(e + CT_BLOB_SIZE, b->size, 8);
        memcpy(e + CT_BLOB_FIXED, b->name, name_len);
        e += CT_BLOB_FIXED + ct_pad8(name_len);
        if (s || (s = put(w, b->data, b->size, err))) {
            free(dir);
            moec_err_prefix(err, "blob '%s'", b->name);
            return s;
        }
    }
    if (w->entries_len)
        memcpy(e, w->entries, w->entries_len);
    moec_status s = pad_to(w, align64(w->pos), err);
    if (s) {
        free(dir);
        return s;
    }
    *dir_out = dir;
    *dir_len_out = dir_len;
    return MOEC_OK;
}

static moec_status finish(moec_container_writer *w, moec_err *err)
{
    unsigned char *dir = NULL;
    size_t dir_len = 0;
    moec_status s = write_blobs_and_directory(w, &dir, &dir_len, err);
    if (s)
        return s;
    unsigned char hdr[CT_HDR_SIZE] = {0};
    memcpy(hdr, CT_MAGIC, CT_MAGIC_LEN);
    ct_st(hdr + CT_HDR_VERSION, MOEC_CONTAINER_VERSION, 4);
    ct_st(hdr + CT_HDR_FILE_SIZE, w->pos + dir_len, 8);
    ct_st(hdr + CT_HDR_DIR_OFFSET, w->pos, 8);
    ct_st(hdr + CT_HDR_DIR_SIZE, dir_len, 8);
    ct_st(hdr + CT_HDR_N_BLOBS, w->n_blobs, 4);
    ct_st(hdr + CT_HDR_N_TENSORS, w->n_written, 4);
    XXH3_state_t *st = XXH3_createState();
    if (!st) {
        free(dir);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, hdr, CT_HDR_CHECKSUM);
    XXH3_64bits_update(st, dir, dir_len);
    ct_st(hdr + CT_HDR_CHECKSUM, XXH3_64bits_digest(st), 8);
    XXH3_freeState(st);
    s = put(w, dir, dir_len, err);
    free(dir);
    if (s)
        return s;
    if (pwrite(w->fd, hdr, CT_HDR_SIZE, 0) != (ssize_t)CT_HDR_SIZE || fsync(w->fd) != 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", w->tmp_path, strerror(errno));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0 || moec_tmp_rename(w->tmp_path, w->path) != 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", w->path, strerror(errno));
    free(w->tmp_path);
    w->tmp_path = NULL;
    /* make the rename itself durable; some file systems refuse, harmlessly */
    char *dcopy = strdup(w->path);
    if (dcopy) {
        int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dcopy);
    }
    w->done = 1;
    return MOEC_OK;
}

moec_status moec_container_writer_write(moec_container_writer *w, const char *path,
                                        moec_err *err)
{
    moec_status s = usable(w, err);
    if (s)
        return s;
    if (w->fd < 0)
        s = moec_container_writer_stream(w, path, err);
    else if (path && strcmp(path, w->path) != 0)
        s = moec_err_set(err, MOEC_ERR_ARG,
                         "container writer: streaming to %s, cannot write %s instead", w->path,
                         path);
    if (!s)
        s = finish(w, err);
    if (s)
        fail(w);
    return s;
}

void moec_container_writer_free(moec_container_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        fail(w);
    for (size_t i = 0; i < w->n_blobs; i++)
        free(w->blobs[i].name);
    for (size_t i = 0; i < w->n_names; i++)
        free(w->names[i]);
    free(w->blobs);
    free(w->pending);
    free(w->names);
    free(w->name_slots);
    free(w->entries);
    free(w->tmp_path);
    free(w->path);
    free(w);
}
