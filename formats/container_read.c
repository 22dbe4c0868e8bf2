/* container_read.c - maps a .moec file and validates every byte of it.
 *
 * Every byte of a valid file belongs to exactly one of: the header, the
 * directory (both under one checksum), a blob (its own checksum), a tensor's
 * section (the tensor's checksum) or padding (must be zero). Open checks all
 * four, so any single damaged byte is reported, naming what it belongs to.
 */
#include "formats/container.h"
#include "formats/container_layout.h"

#include "core/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

typedef struct ct_blob {
    const char *name;
    uint64_t offset, size, checksum;
} ct_blob;

typedef struct ct_name {
    const char *name;
    size_t index;
} ct_name;

typedef struct ct_tensor {
    moec_ctensor_info info;
    uint64_t entry_offset, entry_size; /* its directory entry, for the checksum */
} ct_tensor;

struct moec_container {
    const unsigned char *base;
    size_t size;
    int mapped;
    char *label;
    char *names; /* arena holding every blob and tensor name */
    size_t n_blobs, n_tensors;
    ct_blob *blobs;
    ct_tensor *tensors;
    ct_name *by_name;     /* tensors sorted by name */
    atomic_int *verified; /* per tensor: 1 once its checksum and chunks passed */
    uint32_t version;     /* the file's format version */
};

/* A byte range of the data area, with what owns it for messages. */
typedef struct ct_extent {
    uint64_t offset, size;
    size_t owner;  /* blob or tensor index */
    int is_tensor;
    int kind;
} ct_extent;

/* Most bytes one stored zstd byte can decode to. */
#define CT_ZSTD_MAX_RATIO 32768u

static int range_in(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi)
{
    return off >= lo && off <= hi && len <= hi - off;
}

static const char *lbl(const moec_container *c) { return c->label; }

/* Fuzzing builds accept any checksum so that mutated inputs reach the
 * parsing behind it (the usual libFuzzer convention). */
static int sum_ok(uint64_t stored, uint64_t computed)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    (void)stored;
    (void)computed;
    return 1;
#else
    return stored == computed;
#endif
}

/* ---- open ---------------------------------------------------------------- */

static moec_status check_header(moec_container *c, moec_err *err)
{
    const unsigned char *h = c->base;
    size_t n = c->size < CT_MAGIC_LEN ? c->size : CT_MAGIC_LEN;
    if (memcmp(h, CT_MAGIC, n) != 0)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: header: not a .moec container (bad magic)",
                            lbl(c));
    if (c->size < CT_HDR_SIZE)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header: truncated, file is %zu bytes, the header alone needs %u",
                            lbl(c), c->size, CT_HDR_SIZE);
    uint32_t version = (uint32_t)ct_ld(h + CT_HDR_VERSION, 4);
    if (version > MOEC_CONTAINER_VERSION)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s: header: format version %" PRIu32
                            " is newer than this reader's (%u); upgrade moec to read it",
                            lbl(c), version, MOEC_CONTAINER_VERSION);
    if (version == 0)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: header: invalid format version 0", lbl(c));
    c->version = version;
    if (ct_ld(h + CT_HDR_FLAGS, 4) != 0 || ct_ld(h + CT_HDR_RESERVED, 8) != 0)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: header: reserved fields are not zero",
                            lbl(c));
    uint64_t file_size = ct_ld(h + CT_HDR_FILE_SIZE, 8);
    if (file_size != c->size)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header: file is %zu bytes, header says %" PRIu64
                            " (truncated or damaged)",
                            lbl(c), c->size, file_size);
    uint64_t dir_off = ct_ld(h + CT_HDR_DIR_OFFSET, 8), dir_size = ct_ld(h + CT_HDR_DIR_SIZE, 8);
    if (dir_off < CT_HDR_SIZE || dir_off % CT_ALIGN != 0 || dir_off > file_size ||
        dir_size != file_size - dir_off)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header: directory [%" PRIu64 ", +%" PRIu64
                            ") must be 64-aligned and end the %" PRIu64 "-byte file",
                            lbl(c), dir_off, dir_size, file_size);
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", lbl(c));
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, h, CT_HDR_CHECKSUM);
    XXH3_64bits_update(st, h + dir_off, (size_t)dir_size);
    uint64_t got = XXH3_64bits_digest(st), want = ct_ld(h + CT_HDR_CHECKSUM, 8);
    XXH3_freeState(st);
    if (!sum_ok(want, got))
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header/directory: checksum mismatch (stored %016" PRIx64
                            ", computed %016" PRIx64 ")",
                            lbl(c), want, got);
    return MOEC_OK;
}

/* Reads a name of `len` bytes at p, rejecting control characters (they would
 * break one-line messages) and non-zero padding up
 * to the next multiple of 8; copies it into the arena. */
static moec_status take_name(moec_container *c, const unsigned char *p, uint64_t len,
                             char **arena, const char **out, const char *what, moec_err *err)
{
    int ctrl = 0;
    for (uint64_t i = 0; i < len; i++)
        ctrl |= p[i] < 0x20 || p[i] == 0x7f;
    if (len == 0 || ctrl)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: directory: %s name is empty or contains control characters",
                            lbl(c), what);
    for (uint64_t i = len; i < ct_pad8(len); i++)
        if (p[i] != 0)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: %s '%.*s': name padding is not zero", lbl(c),
                                what, (int)len, (const char *)p);
    memcpy(*arena, p, len);
    (*arena)[len] = '\0';
    *out = *arena;
    *arena += len + 1;
    return MOEC_OK;
}

static moec_status parse_blobs(moec_container *c, const unsigned char *d, uint64_t dir_size,
                               uint64_t data_end, uint64_t *pos, char **arena, moec_err *err)
{
    for (size_t i = 0; i < c->n_blobs; i++) {
        const unsigned char *e = d + *pos;
        if (dir_size - *pos < CT_BLOB_FIXED)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: directory: blob entry %zu truncated",
                                lbl(c), i);
        uint64_t name_len = ct_ld(e + CT_BLOB_NAME_LEN, 2);
        if (dir_size - *pos - CT_BLOB_FIXED < ct_pad8(name_len))
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: directory: blob entry %zu truncated",
                                lbl(c), i);
        ct_blob *b = &c->blobs[i];
        moec_status s = take_name(c, e + CT_BLOB_FIXED, name_len, arena, &b->name, "blob", err);
        if (s)
            return s;
        b->checksum = ct_ld(e + CT_BLOB_CHECKSUM, 8);
        b->offset = ct_ld(e + CT_BLOB_OFFSET, 8);
        b->size = ct_ld(e + CT_BLOB_SIZE, 8);
        if (ct_ld(e + CT_BLOB_RESERVED, 2) != 0 || ct_ld(e + CT_BLOB_RESERVED + 2, 4) != 0)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: blob '%s': reserved bytes are not zero", lbl(c),
                                b->name);
        if (b->offset % CT_ALIGN != 0 || !range_in(b->offset, b->size, CT_HDR_SIZE, data_end))
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: blob '%s': range [%" PRIu64 ", +%" PRIu64
                                ") is unaligned or outside the data area [64, %" PRIu64 ")",
                                lbl(c), b->name, b->offset, b->size, data_end);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->blobs[j].name, b->name) == 0)
                return moec_err_set(err, MOEC_ERR_FORMAT,
                                    "%s: directory: blob '%s' appears twice", lbl(c), b->name);
        *pos += CT_BLOB_FIXED + ct_pad8(name_len);
    }
    return MOEC_OK;
}

static moec_status parse_sections(moec_container *c, ct_tensor *t, const unsigned char *rec,
                                  uint64_t data_end, moec_err *err)
{
    moec_ctensor_info *ti = &t->info;
    uint64_t want[MOEC_SECTION_KIND_COUNT];
    if (moec_ctensor_section_bytes(&ti->type, want, err)) {
        /* an invalid type in a file is a format error, not a caller's */
        if (err)
            err->code = MOEC_ERR_FORMAT;
        moec_err_prefix(err, "%s: directory: tensor '%s'", lbl(c), ti->name);
        return MOEC_ERR_FORMAT;
    }
    int n_want = 0;
    for (int k = 0; k < MOEC_SECTION_KIND_COUNT; k++)
        n_want += want[k] != 0;
    if (ti->n_sections != n_want)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: directory: tensor '%s': %s storage needs %d sections, found %d",
                            lbl(c), ti->name, moec_storage_name(ti->type.storage), n_want,
                            ti->n_sections);
    int prev_kind = -1;
    for (int i = 0; i < ti->n_sections; i++, rec += CT_SEC_RECORD) {
        moec_csection_info *si = &ti->sections[i];
        int kind = (int)rec[CT_SEC_KIND];
        if (kind <= prev_kind || kind >= MOEC_SECTION_KIND_COUNT || want[kind] == 0)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s': section %d has kind %d, which is "
                                "unknown, repeated, out of order or not used by %s storage",
                                lbl(c), ti->name, i, kind, moec_storage_name(ti->type.storage));
        prev_kind = kind;
        si->kind = (moec_section_kind)kind;
        si->encoding = (moec_encoding)rec[CT_SEC_ENCODING];
        si->chunk_size = (uint32_t)ct_ld(rec + CT_SEC_CHUNK_SIZE, 4);
        si->offset = ct_ld(rec + CT_SEC_OFFSET, 8);
        si->stored_size = ct_ld(rec + CT_SEC_STORED_SIZE, 8);
        si->size = ct_ld(rec + CT_SEC_SIZE, 8);
        const char *kn = moec_section_kind_name(si->kind);
        if (ct_ld(rec + CT_SEC_RESERVED, 2) != 0)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s' section %s: reserved bytes not zero",
                                lbl(c), ti->name, kn);
        if (si->size != want[kind])
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s' section %s: %" PRIu64
                                " bytes, its type and shape need %" PRIu64,
                                lbl(c), ti->name, kn, si->size, want[kind]);
        if (rec[CT_SEC_ENCODING] == MOEC_ENCODING_RAW) {
            if (si->stored_size != si->size || si->chunk_size != 0)
                return moec_err_set(err, MOEC_ERR_FORMAT,
                                    "%s: directory: tensor '%s' section %s: raw section must "
                                    "store its %" PRIu64 " bytes with chunk size 0",
                                    lbl(c), ti->name, kn, si->size);
        } else if (rec[CT_SEC_ENCODING] == MOEC_ENCODING_ZSTD) {
            if (si->chunk_size < MOEC_CONTAINER_CHUNK_MIN ||
                si->chunk_size > MOEC_CONTAINER_CHUNK_MAX)
                return moec_err_set(err, MOEC_ERR_FORMAT,
                                    "%s: directory: tensor '%s' section %s: chunk size %" PRIu32
                                    " outside [%u, %u]",
                                    lbl(c), ti->name, kn, si->chunk_size,
                                    MOEC_CONTAINER_CHUNK_MIN, MOEC_CONTAINER_CHUNK_MAX);
            /* zstd expands at most CT_ZSTD_MAX_RATIO-fold (an RLE block: 4
             * bytes for 128 KiB), so a size the stored bytes cannot reach is
             * refused before anyone allocates it */
            if (si->size / CT_ZSTD_MAX_RATIO > si->stored_size)
                return moec_err_set(err, MOEC_ERR_FORMAT,
                                    "%s: directory: tensor '%s' section %s: %" PRIu64
                                    " bytes cannot come from %" PRIu64 " stored bytes of zstd",
                                    lbl(c), ti->name, kn, si->size, si->stored_size);
            uint64_t n_chunks = (si->size + si->chunk_size - 1) / si->chunk_size;
            /* offset table plus at least one byte per frame */
            if (si->stored_size < 9 * n_chunks + 8)
                return moec_err_set(err, MOEC_ERR_FORMAT,
                                    "%s: directory: tensor '%s' section %s: %" PRIu64
                                    " stored bytes cannot hold %" PRIu64 " chunks",
                                    lbl(c), ti->name, kn, si->stored_size, n_chunks);
        } else {
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s' section %s: unknown encoding %d",
                                lbl(c), ti->name, kn, rec[CT_SEC_ENCODING]);
        }
        if (si->offset % CT_ALIGN != 0 ||
            !range_in(si->offset, si->stored_size, CT_HDR_SIZE, data_end))
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s' section %s: range [%" PRIu64
                                ", +%" PRIu64 ") is unaligned or outside the data area [64, %" PRIu64
                                ")",
                                lbl(c), ti->name, kn, si->offset, si->stored_size, data_end);
    }
    return MOEC_OK;
}

static moec_status parse_tensors(moec_container *c, const unsigned char *d, uint64_t dir_off,
                                 uint64_t dir_size, uint64_t *pos, char **arena, moec_err *err)
{
    for (size_t i = 0; i < c->n_tensors; i++) {
        const unsigned char *e = d + *pos;
        if (dir_size - *pos < CT_TEN_FIXED)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor entry %zu truncated", lbl(c), i);
        uint64_t name_len = ct_ld(e + CT_TEN_NAME_LEN, 2);
        int n_sec = e[CT_TEN_N_SECTIONS];
        uint64_t entry_size = CT_TEN_FIXED + (uint64_t)n_sec * CT_SEC_RECORD + ct_pad8(name_len);
        if (n_sec < 1 || n_sec > MOEC_SECTION_KIND_COUNT || dir_size - *pos < entry_size)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor entry %zu: bad section count %d or "
                                "truncated",
                                lbl(c), i, n_sec);
        ct_tensor *t = &c->tensors[i];
        moec_ctensor_info *ti = &t->info;
        moec_status s = take_name(c, e + CT_TEN_FIXED + (uint64_t)n_sec * CT_SEC_RECORD, name_len,
                                  arena, &ti->name, "tensor", err);
        if (s)
            return s;
        t->entry_offset = dir_off + *pos;
        t->entry_size = entry_size;
        ti->checksum = ct_ld(e + CT_TEN_CHECKSUM, 8);
        ti->n_sections = n_sec;
        ti->type.storage = (moec_storage)e[CT_TEN_STORAGE];
        if (ti->type.storage == MOEC_STORAGE_GGML && c->version < 2)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s': GGML storage in a version %u file (it needs 2)",
                                lbl(c), ti->name, (unsigned)c->version);
        ti->type.ndim = e[CT_TEN_NDIM];
        ti->type.bits = e[CT_TEN_BITS];
        ti->type.symmetric = e[CT_TEN_SYMMETRIC];
        uint64_t group = ct_ld(e + CT_TEN_GROUP, 4);
        if (e[CT_TEN_RESERVED1] != 0 || ct_ld(e + CT_TEN_RESERVED2, 4) != 0)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s': reserved bytes are not zero", lbl(c),
                                ti->name);
        if (group > INT32_MAX)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: directory: tensor '%s': group %" PRIu64 " too large", lbl(c),
                                ti->name, group);
        ti->type.group = (int)group;
        for (int dd = 0; dd < MOEC_MAX_DIMS; dd++) {
            uint64_t v = ct_ld(e + CT_TEN_SHAPE + 8 * dd, 8);
            if (v > INT64_MAX)
                return moec_err_set(err, MOEC_ERR_FORMAT,
                                    "%s: directory: tensor '%s': shape[%d] too large", lbl(c),
                                    ti->name, dd);
            ti->type.shape[dd] = (int64_t)v;
        }
        s = parse_sections(c, t, e + CT_TEN_FIXED, dir_off, err);
        if (s)
            return s;
        *pos += entry_size;
    }
    return MOEC_OK;
}

static int cmp_extent(const void *a, const void *b)
{
    const ct_extent *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

static void describe_extent(const moec_container *c, const ct_extent *x, char *buf, size_t n)
{
    if (!x)
        snprintf(buf, n, "the header");
    else if (x->is_tensor)
        snprintf(buf, n, "tensor '%s' section %s", c->tensors[x->owner].info.name,
                 moec_section_kind_name((moec_section_kind)x->kind));
    else
        snprintf(buf, n, "blob '%s'", c->blobs[x->owner].name);
}

/* No two stored ranges overlap and every byte between them is zero. */
static moec_status check_layout(moec_container *c, uint64_t data_end, moec_err *err)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_tensors; i++)
        n += (size_t)c->tensors[i].info.n_sections;
    n += c->n_blobs;
    ct_extent *x = malloc((n ? n : 1) * sizeof *x);
    if (!x)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", lbl(c));
    size_t m = 0;
    for (size_t i = 0; i < c->n_blobs; i++)
        if (c->blobs[i].size)
            x[m++] = (ct_extent){c->blobs[i].offset, c->blobs[i].size, i, 0, 0};
    for (size_t i = 0; i < c->n_tensors; i++)
        for (int k = 0; k < c->tensors[i].info.n_sections; k++) {
            const moec_csection_info *si = &c->tensors[i].info.sections[k];
            x[m++] = (ct_extent){si->offset, si->stored_size, i, 1, (int)si->kind};
        }
    qsort(x, m, sizeof *x, cmp_extent);
    moec_status s = MOEC_OK;
    uint64_t pos = CT_HDR_SIZE;
    for (size_t i = 0; i <= m && !s; i++) {
        const ct_extent *prev = i ? &x[i - 1] : NULL;
        uint64_t next = i < m ? x[i].offset : data_end;
        char a[600], b[600];
        if (next < pos) {
            describe_extent(c, prev, a, sizeof a);
            describe_extent(c, &x[i], b, sizeof b);
            s = moec_err_set(err, MOEC_ERR_FORMAT, "%s: directory: %s overlaps %s", lbl(c), b, a);
            break;
        }
        for (uint64_t p = pos; p < next; p++)
            if (c->base[p] != 0) {
                describe_extent(c, prev, a, sizeof a);
                s = moec_err_set(err, MOEC_ERR_FORMAT,
                                 "%s: padding byte at offset %" PRIu64 " (after %s) is not zero",
                                 lbl(c), p, a);
                break;
            }
        if (i < m)
            pos = x[i].offset + x[i].size;
    }
    free(x);
    return s;
}

static moec_status check_blobs(moec_container *c, moec_err *err)
{
    for (size_t i = 0; i < c->n_blobs; i++) {
        const ct_blob *b = &c->blobs[i];
        uint64_t got = XXH3_64bits(c->base + b->offset, (size_t)b->size);
        if (!sum_ok(b->checksum, got))
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: blob '%s': checksum mismatch (stored %016" PRIx64
                                ", computed %016" PRIx64 ")",
                                lbl(c), b->name, b->checksum, got);
    }
    return MOEC_OK;
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const ct_name *)a)->name, ((const ct_name *)b)->name);
}

static moec_status index_names(moec_container *c, moec_err *err)
{
    for (size_t i = 0; i < c->n_tensors; i++)
        c->by_name[i] = (ct_name){c->tensors[i].info.name, i};
    qsort(c->by_name, c->n_tensors, sizeof *c->by_name, cmp_by_name);
    for (size_t i = 1; i < c->n_tensors; i++)
        if (strcmp(c->by_name[i - 1].name, c->by_name[i].name) == 0)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: directory: tensor '%s' appears twice",
                                lbl(c), c->by_name[i].name);
    return MOEC_OK;
}

static moec_status parse(moec_container *c, unsigned flags, moec_err *err)
{
    moec_status s = check_header(c, err);
    if (s)
        return s;
    const unsigned char *h = c->base;
    uint64_t dir_off = ct_ld(h + CT_HDR_DIR_OFFSET, 8), dir_size = ct_ld(h + CT_HDR_DIR_SIZE, 8);
    uint64_t nb = ct_ld(h + CT_HDR_N_BLOBS, 4), nt = ct_ld(h + CT_HDR_N_TENSORS, 4);
    /* bounds the allocations below by the directory's size */
    if (nb * CT_BLOB_FIXED + nt * (CT_TEN_FIXED + CT_SEC_RECORD) > dir_size)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header: %" PRIu64 " blobs and %" PRIu64
                            " tensors cannot fit a %" PRIu64 "-byte directory",
                            lbl(c), nb, nt, dir_size);
    c->n_blobs = (size_t)nb;
    c->n_tensors = (size_t)nt;
    c->names = malloc((size_t)dir_size + 1);
    c->blobs = calloc(nb ? nb : 1, sizeof *c->blobs);
    c->tensors = calloc(nt ? nt : 1, sizeof *c->tensors);
    c->by_name = calloc(nt ? nt : 1, sizeof *c->by_name);
    c->verified = calloc(nt ? nt : 1, sizeof *c->verified);
    if (!c->names || !c->blobs || !c->tensors || !c->by_name || !c->verified)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", lbl(c));
    for (size_t i = 0; i < c->n_tensors; i++)
        atomic_init(&c->verified[i], 0);
    char *arena = c->names;
    uint64_t pos = 0;
    const unsigned char *d = h + dir_off;
    if ((s = parse_blobs(c, d, dir_size, dir_off, &pos, &arena, err)) ||
        (s = parse_tensors(c, d, dir_off, dir_size, &pos, &arena, err)))
        return s;
    if (pos != dir_size)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: directory: %" PRIu64 " bytes after the last entry", lbl(c),
                            dir_size - pos);
    if ((s = index_names(c, err)) || (s = check_layout(c, dir_off, err)) ||
        (s = check_blobs(c, err)))
        return s;
    if (!(flags & MOEC_CONTAINER_LAZY_VERIFY))
        for (size_t i = 0; i < c->n_tensors; i++)
            if ((s = moec_container_verify_tensor(c, i, err)))
                return s;
    return MOEC_OK;
}

static moec_status open_common(moec_container *c, const char *label, unsigned flags,
                               moec_container **out, moec_err *err)
{
    c->label = strdup(label ? label : "<memory>");
    moec_status s = c->label ? parse(c, flags, err)
                             : moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if (s) {
        moec_container_close(c);
        return s;
    }
    *out = c;
    return MOEC_OK;
}

moec_status moec_container_open_mem(const void *data, size_t size, const char *label,
                                    unsigned flags, moec_container **out, moec_err *err)
{
    *out = NULL;
    if (!data && size)
        return moec_err_set(err, MOEC_ERR_ARG, "moec_container_open_mem: NULL data");
    moec_container *c = calloc(1, sizeof *c);
    if (!c)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    c->base = size ? data : (const unsigned char *)"";
    c->size = size;
    return open_common(c, label, flags, out, err);
}

moec_status moec_container_open(const char *path, unsigned flags, moec_container **out,
                                moec_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    if (fd < 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_IO, "%s: not a regular file", path);
    }
    moec_container *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    c->size = (size_t)st.st_size;
    c->base = (const unsigned char *)"";
    if (c->size) {
        void *p = mmap(NULL, c->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(c);
            return moec_err_set(err, MOEC_ERR_IO, "%s: mmap: %s", path, strerror(e));
        }
        /* 2 MiB pages where the page cache can give them: see
         * safetensors_read.c's map_shard. Advice only. */
        (void)madvise(p, c->size, MADV_HUGEPAGE);
        c->base = p;
        c->mapped = 1;
    }
    close(fd);
    return open_common(c, path, flags, out, err);
}

void moec_container_close(moec_container *c)
{
    if (!c)
        return;
    if (c->mapped)
        munmap((void *)c->base, c->size);
    free(c->label);
    free(c->names);
    free(c->blobs);
    free(c->tensors);
    free(c->by_name);
    free(c->verified);
    free(c);
}

/* ---- queries ------------------------------------------------------------- */

const void *moec_container_bytes(const moec_container *c, size_t *size)
{
    if (size)
        *size = c->size;
    return c->base;
}

bool moec_container_release(const moec_container *c, const void *p, size_t n)
{
    const unsigned char *a = p;
    if (!c || !a || a < c->base || n > c->size || (size_t)(a - c->base) > c->size - n)
        return false;
    if (c->mapped)
        moec_release_pages(p, n);
    return true;
}

size_t moec_container_tensor_count(const moec_container *c) { return c->n_tensors; }

const moec_ctensor_info *moec_container_tensor(const moec_container *c, size_t i)
{
    return i < c->n_tensors ? &c->tensors[i].info : NULL;
}

int64_t moec_container_find(const moec_container *c, const char *name)
{
    size_t lo = 0, hi = c->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(c->by_name[mid].name, name);
        if (r == 0)
            return (int64_t)c->by_name[mid].index;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

size_t moec_container_blob_count(const moec_container *c) { return c->n_blobs; }

const char *moec_container_blob_name(const moec_container *c, size_t i)
{
    return i < c->n_blobs ? c->blobs[i].name : NULL;
}

moec_status moec_container_blob(const moec_container *c, const char *name, const void **data,
                                size_t *size, moec_err *err)
{
    for (size_t i = 0; i < c->n_blobs; i++)
        if (strcmp(c->blobs[i].name, name) == 0) {
            *data = c->base + c->blobs[i].offset;
            *size = (size_t)c->blobs[i].size;
            return MOEC_OK;
        }
    return moec_err_set(err, MOEC_ERR_FORMAT, "%s: no blob named '%s'", lbl(c), name);
}

/* ---- tensor verification and section access ------------------------------ */

static moec_status check_chunks(const moec_container *c, const moec_ctensor_info *ti,
                                const moec_csection_info *si, moec_err *err)
{
    const unsigned char *p = c->base + si->offset;
    uint64_t n = (si->size + si->chunk_size - 1) / si->chunk_size;
    const char *kn = moec_section_kind_name(si->kind);
    if (ct_ld(p, 8) != 8 * (n + 1))
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: tensor '%s' section %s: chunk table must start at %" PRIu64,
                            lbl(c), ti->name, kn, 8 * (n + 1));
    for (uint64_t i = 0; i < n; i++) {
        uint64_t a = ct_ld(p + 8 * i, 8), b = ct_ld(p + 8 * (i + 1), 8);
        if (b <= a || b > si->stored_size || (i + 1 == n && b != si->stored_size))
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: tensor '%s' section %s: chunk %" PRIu64
                                " spans [%" PRIu64 ", %" PRIu64 ") of %" PRIu64 " stored bytes",
                                lbl(c), ti->name, kn, i, a, b, si->stored_size);
        uint64_t want = i + 1 < n ? si->chunk_size : si->size - i * si->chunk_size;
        unsigned long long content = ZSTD_getFrameContentSize(p + a, (size_t)(b - a));
        size_t frame = ZSTD_findFrameCompressedSize(p + a, (size_t)(b - a));
        if (content != want || ZSTD_isError(frame) || frame != b - a ||
            want / CT_ZSTD_MAX_RATIO > frame)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: tensor '%s' section %s: chunk %" PRIu64
                                " is not one zstd frame of %" PRIu64 " bytes",
                                lbl(c), ti->name, kn, i, want);
    }
    return MOEC_OK;
}

moec_status moec_container_verify_tensor(const moec_container *c, size_t i, moec_err *err)
{
    if (i >= c->n_tensors)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: tensor index %zu out of range (%zu)",
                            lbl(c), i, c->n_tensors);
    if (atomic_load_explicit(&c->verified[i], memory_order_acquire))
        return MOEC_OK;
    const ct_tensor *t = &c->tensors[i];
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", lbl(c));
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, c->base + t->entry_offset + 8, (size_t)t->entry_size - 8);
    for (int k = 0; k < t->info.n_sections; k++)
        XXH3_64bits_update(st, c->base + t->info.sections[k].offset,
                           (size_t)t->info.sections[k].stored_size);
    uint64_t got = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    if (!sum_ok(t->info.checksum, got))
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: tensor '%s': checksum mismatch (stored %016" PRIx64
                            ", computed %016" PRIx64 ")",
                            lbl(c), t->info.name, t->info.checksum, got);
    for (int k = 0; k < t->info.n_sections; k++)
        if (t->info.sections[k].encoding == MOEC_ENCODING_ZSTD) {
            moec_status s = check_chunks(c, &t->info, &t->info.sections[k], err);
            if (s)
                return s;
        }
    atomic_store_explicit(&c->verified[i], 1, memory_order_release);
    return MOEC_OK;
}

static moec_status find_section(const moec_container *c, size_t tensor, moec_section_kind kind,
                                const moec_csection_info **out, moec_err *err)
{
    moec_status s = moec_container_verify_tensor(c, tensor, err);
    if (s)
        return s;
    const moec_ctensor_info *ti = &c->tensors[tensor].info;
    for (int k = 0; k < ti->n_sections; k++)
        if (ti->sections[k].kind == kind) {
            if (ti->sections[k].size > SIZE_MAX)
                return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                    "%s: tensor '%s': section too large for this machine",
                                    lbl(c), ti->name);
            *out = &ti->sections[k];
            return MOEC_OK;
        }
    return moec_err_set(err, MOEC_ERR_ARG, "%s: tensor '%s' (%s) has no %s section", lbl(c),
                        ti->name, moec_storage_name(ti->type.storage),
                        moec_section_kind_name(kind));
}

moec_status moec_container_section_ptr(const moec_container *c, size_t tensor,
                                       moec_section_kind kind, const void **data, size_t *size,
                                       moec_err *err)
{
    const moec_csection_info *si = NULL;
    moec_status s = find_section(c, tensor, kind, &si, err);
    if (s)
        return s;
    if (si->encoding != MOEC_ENCODING_RAW)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: tensor '%s' section %s is zstd-compressed: read it with "
                            "moec_container_section_read/get",
                            lbl(c), c->tensors[tensor].info.name, moec_section_kind_name(kind));
    *data = c->base + si->offset;
    *size = (size_t)si->size;
    return MOEC_OK;
}

static moec_status read_zstd(const moec_container *c, const char *name,
                             const moec_csection_info *si, uint64_t offset, unsigned char *dst,
                             size_t len, moec_err *err)
{
    const unsigned char *p = c->base + si->offset;
    uint64_t cs = si->chunk_size;
    uint64_t first = offset / cs, last = (offset + len - 1) / cs;
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    unsigned char *tmp = NULL;
    moec_status s = MOEC_OK;
    if (!dctx)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", lbl(c));
    for (uint64_t i = first; i <= last && !s; i++) {
        uint64_t a = ct_ld(p + 8 * i, 8), b = ct_ld(p + 8 * (i + 1), 8);
        uint64_t start = i * cs, n = si->size - start < cs ? si->size - start : cs;
        /* the part [lo, hi) of this chunk that the caller asked for */
        uint64_t lo = offset > start ? offset - start : 0;
        uint64_t hi = offset + len < start + n ? offset + len - start : n;
        unsigned char *out = dst + (start + lo - offset);
        /* whole chunks decode straight into dst; partial ones go through tmp */
        unsigned char *to = out;
        if (lo != 0 || hi != n) {
            if (!tmp && !(tmp = malloc((size_t)cs))) {
                s = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", lbl(c));
                break;
            }
            to = tmp;
        }
        size_t r = ZSTD_decompressDCtx(dctx, to, (size_t)n, p + a, (size_t)(b - a));
        if (ZSTD_isError(r) || r != n)
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: tensor '%s' section %s: chunk %" PRIu64 " does not decode: %s",
                             lbl(c), name, moec_section_kind_name(si->kind), i,
                             ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong size");
        else if (to == tmp)
            memcpy(out, tmp + lo, (size_t)(hi - lo));
    }
    free(tmp);
    ZSTD_freeDCtx(dctx);
    return s;
}

moec_status moec_container_section_read(const moec_container *c, size_t tensor,
                                        moec_section_kind kind, uint64_t offset, void *dst,
                                        size_t len, moec_err *err)
{
    const moec_csection_info *si = NULL;
    moec_status s = find_section(c, tensor, kind, &si, err);
    if (s)
        return s;
    const char *name = c->tensors[tensor].info.name;
    if (offset > si->size || len > si->size - offset)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: tensor '%s' section %s: range [%" PRIu64 ", +%zu) past its %" PRIu64
                            " bytes",
                            lbl(c), name, moec_section_kind_name(kind), offset, len, si->size);
    if (len == 0)
        return MOEC_OK;
    if (si->encoding == MOEC_ENCODING_RAW) {
        memcpy(dst, c->base + si->offset + offset, len);
        return MOEC_OK;
    }
    return read_zstd(c, name, si, offset, dst, len, err);
}

moec_status moec_container_section_get(const moec_container *c, size_t tensor,
                                       moec_section_kind kind, const void **data, size_t *size,
                                       void **owned, moec_err *err)
{
    *owned = NULL;
    const moec_csection_info *si = NULL;
    moec_status s = find_section(c, tensor, kind, &si, err);
    if (s)
        return s;
    if (si->encoding == MOEC_ENCODING_RAW)
        return moec_container_section_ptr(c, tensor, kind, data, size, err);
    void *buf = malloc((size_t)si->size);
    if (!buf)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: tensor '%s': out of memory for %" PRIu64
                            " bytes", lbl(c), c->tensors[tensor].info.name, si->size);
    s = read_zstd(c, c->tensors[tensor].info.name, si, 0, buf, (size_t)si->size, err);
    if (s) {
        free(buf);
        return s;
    }
    *data = *owned = buf;
    *size = (size_t)si->size;
    return MOEC_OK;
}

moec_status moec_container_tensor_view(const moec_container *c, size_t tensor, moec_tensor *out,
                                       moec_err *err)
{
    if (tensor >= c->n_tensors)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: tensor index %zu out of range (%zu)",
                            lbl(c), tensor, c->n_tensors);
    const moec_ctensor_info *ti = &c->tensors[tensor].info;
    static const moec_dtype dtypes[] = {
        [MOEC_STORAGE_F32] = MOEC_DT_F32,
        [MOEC_STORAGE_F16] = MOEC_DT_F16,
        [MOEC_STORAGE_BF16] = MOEC_DT_BF16,
    };
    if (ti->type.storage == MOEC_STORAGE_GROUPWISE || ti->type.storage == MOEC_STORAGE_GGML)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s: tensor '%s' is %s quantized: read its sections", lbl(c),
                            ti->name, ti->type.storage == MOEC_STORAGE_GGML ? "llama.cpp-block" : "group-wise");
    const void *data;
    size_t size;
    moec_status s = moec_container_section_ptr(c, tensor, MOEC_SECTION_DATA, &data, &size, err);
    if (s)
        return s;
    memset(out, 0, sizeof *out);
    out->dtype = dtypes[ti->type.storage];
    out->ndim = ti->type.ndim;
    memcpy(out->shape, ti->type.shape, sizeof out->shape);
    out->data = data;
    out->nbytes = size;
    return MOEC_OK;
}
