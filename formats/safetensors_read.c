/* safetensors_read.c - mmap'd, fully validated safetensors reader.
 *
 * Headers are parsed with cJSON from a NUL-terminated private copy (so no
 * parser can run past the header into tensor data or off the mapping); the
 * tensors themselves are never copied.
 */
#include "formats/safetensors.h"

#include "core/fsutil.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

typedef struct st_shard {
    char *path;          /* as shown in messages */
    const char *file;    /* base name within path, compared with weight_map */
    const uint8_t *base; /* the whole file image */
    size_t size;
    int mapped; /* munmap on close (else borrowed from moec_st_open_memory) */
} st_shard;

typedef struct st_entry {
    char *name;
    moec_tensor t;
    size_t shard;
    uint64_t begin, end; /* within the shard's data section */
} st_entry;

typedef struct st_kv {
    char *key, *value;
} st_kv;

struct moec_safetensors {
    st_shard *shards;
    size_t nshards;
    st_entry *entries; /* sorted by name once open succeeds */
    size_t n, cap;
    st_kv *meta;
    size_t nmeta;
    uint64_t file_bytes;
};

/* JSON numbers are doubles in cJSON; every integer up to 2^53 is exact, and
 * no valid offset or dimension of a real file comes near it. */
#define ST_MAX_INT 9007199254740992.0

/* A name made safe for a one-line message: control bytes replaced, long
 * names cut. */
static const char *shown(const char *s, char buf[96])
{
    size_t i = 0;
    for (; s[i] && i < 80; i++)
        buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (s[i]) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static const char *json_type_name(const cJSON *j)
{
    if (cJSON_IsObject(j))
        return "an object";
    if (cJSON_IsArray(j))
        return "an array";
    if (cJSON_IsString(j))
        return "a string";
    if (cJSON_IsNumber(j))
        return "a number";
    if (cJSON_IsBool(j))
        return "a boolean";
    if (cJSON_IsNull(j))
        return "null";
    return "an invalid value";
}

static int json_uint(const cJSON *j, uint64_t *v)
{
    if (!cJSON_IsNumber(j))
        return 0;
    double d = j->valuedouble;
    if (!(d >= 0.0 && d <= ST_MAX_INT && d == floor(d)))
        return 0;
    *v = (uint64_t)d;
    return 1;
}

static void format_shape(char *buf, size_t cap, const int64_t *shape, int ndim)
{
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%" PRId64, i ? "," : "", shape[i]);
    if (len < cap)
        snprintf(buf + len, cap - len, "]");
}

static moec_status grow_entries(moec_safetensors *st, moec_err *err)
{
    if (st->n < st->cap)
        return MOEC_OK;
    size_t cap = st->cap ? st->cap * 2 : 64;
    st_entry *e = realloc(st->entries, cap * sizeof *e);
    if (!e)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory reading safetensors header");
    st->entries = e;
    st->cap = cap;
    return MOEC_OK;
}

static moec_status parse_metadata(moec_safetensors *st, const char *path, const cJSON *obj,
                                  int keep, moec_err *err)
{
    char nb[96];
    if (!cJSON_IsObject(obj))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: __metadata__ must be an object, found %s",
                            path, json_type_name(obj));
    const cJSON *kv;
    size_t count = 0;
    cJSON_ArrayForEach(kv, obj) {
        if (!cJSON_IsString(kv))
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: __metadata__ value of '%s' must be a string, found %s", path,
                                shown(kv->string, nb), json_type_name(kv));
        count++;
    }
    if (!keep || count == 0)
        return MOEC_OK;
    st->meta = calloc(count, sizeof *st->meta);
    if (!st->meta)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for __metadata__", path);
    cJSON_ArrayForEach(kv, obj) {
        st_kv *m = &st->meta[st->nmeta];
        m->key = strdup(kv->string);
        m->value = strdup(kv->valuestring);
        st->nmeta++;
        if (!m->key || !m->value)
            return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for __metadata__", path);
    }
    return MOEC_OK;
}

static moec_status parse_tensor(moec_safetensors *st, size_t si, const cJSON *item,
                                const uint8_t *data, uint64_t data_size, moec_err *err)
{
    const char *path = st->shards[si].path;
    char nb[96], sb[128];
    const char *name = shown(item->string, nb);
    if (item->string[0] == '\0')
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: a tensor has an empty name", path);
    if (!cJSON_IsObject(item))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s': expected an object, found %s",
                            path, name, json_type_name(item));

    const cJSON *jdt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *jshape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *joff = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(jdt))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s': \"dtype\" %s", path, name,
                            jdt ? "must be a string" : "is missing");
    int dt = moec_dtype_from_name(jdt->valuestring);
    if (dt < 0) {
        char db[96];
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path,
                            name, shown(jdt->valuestring, db));
    }
    if (!cJSON_IsArray(jshape))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s': \"shape\" %s", path, name,
                            jshape ? "must be an array" : "is missing");
    int ndim = cJSON_GetArraySize(jshape);
    if (ndim > MOEC_MAX_DIMS)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s: tensor '%s' has %d dimensions, at most %d are supported", path,
                            name, ndim, MOEC_MAX_DIMS);

    moec_tensor t = {.dtype = (moec_dtype)dt, .ndim = ndim};
    uint64_t numel = 1;
    int d = 0;
    const cJSON *jd;
    cJSON_ArrayForEach(jd, jshape) {
        uint64_t v;
        if (!json_uint(jd, &v)) {
            if (cJSON_IsNumber(jd))
                return moec_err_set(err, MOEC_ERR_FORMAT,
                                    "%s: tensor '%s': shape[%d] = %g is not a non-negative integer",
                                    path, name, d, jd->valuedouble);
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: tensor '%s': shape[%d] must be a non-negative integer, found %s",
                                path, name, d, json_type_name(jd));
        }
        if (v != 0 && numel > UINT64_MAX / v)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: tensor '%s': element count of its shape overflows 64 bits",
                                path, name);
        numel *= v;
        t.shape[d++] = (int64_t)v;
    }
    format_shape(sb, sizeof sb, t.shape, ndim);

    uint64_t off[2];
    if (!cJSON_IsArray(joff) || cJSON_GetArraySize(joff) != 2 ||
        !json_uint(cJSON_GetArrayItem(joff, 0), &off[0]) ||
        !json_uint(cJSON_GetArrayItem(joff, 1), &off[1]))
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: tensor '%s': \"data_offsets\" %s", path, name,
                            joff ? "must be [begin, end] with non-negative integers"
                                 : "is missing");
    if (off[0] > off[1])
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                            "] begin after end", path, name, off[0], off[1]);
    if (off[1] > data_size)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                            "] out of range: the data section has %" PRIu64 " bytes",
                            path, name, off[0], off[1], data_size);
    size_t esize = moec_dtype_size(t.dtype);
    if (numel > UINT64_MAX / esize)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: tensor '%s': byte size of shape %s x %s overflows 64 bits", path,
                            name, sb, jdt->valuestring);
    uint64_t need = numel * esize;
    if (off[1] - off[0] != need)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: tensor '%s': size mismatch: data_offsets span %" PRIu64
                            " bytes but shape %s x %s needs %" PRIu64,
                            path, name, off[1] - off[0], sb, jdt->valuestring, need);

    moec_status s = grow_entries(st, err);
    if (s)
        return s;
    t.data = data + off[0];
    t.nbytes = (size_t)need;
    st_entry *e = &st->entries[st->n];
    e->name = strdup(item->string);
    if (!e->name)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for tensor names", path);
    e->t = t;
    e->shard = si;
    e->begin = off[0];
    e->end = off[1];
    st->n++;
    return MOEC_OK;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* entries[first..n) all come from one shard. */
static moec_status check_overlap(moec_safetensors *st, size_t first, moec_err *err)
{
    size_t m = st->n - first;
    if (m < 2)
        return MOEC_OK;
    st_entry **by = malloc(m * sizeof *by);
    if (!by)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory checking tensor offsets");
    for (size_t i = 0; i < m; i++)
        by[i] = &st->entries[first + i];
    qsort(by, m, sizeof *by, cmp_by_offset);
    const st_entry *prev = NULL;
    moec_status s = MOEC_OK;
    for (size_t i = 0; i < m && !s; i++) {
        const st_entry *e = by[i];
        if (e->begin == e->end)
            continue; /* an empty range overlaps nothing */
        if (prev && e->begin < prev->end) {
            char na[96], nb[96];
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64
                             ", %" PRIu64 ") overlap",
                             st->shards[e->shard].path, shown(prev->name, na), prev->begin,
                             prev->end, shown(e->name, nb), e->begin, e->end);
        }
        if (!prev || e->end > prev->end)
            prev = e;
    }
    free(by);
    return s;
}

static moec_status check_utf8(const char *path, const uint8_t *p, size_t n, moec_err *err)
{
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: header is not valid UTF-8 (at header byte %zu)", path, i);
        i += (size_t)k;
    }
    return MOEC_OK;
}

static int is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static moec_status parse_shard(moec_safetensors *st, size_t si, int keep_meta, moec_err *err)
{
    const st_shard *sh = &st->shards[si];
    const char *path = sh->path;
    if (sh->size < 8)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: file is %zu bytes, too short for the 8-byte header length",
                            path, sh->size);
    uint64_t hlen = load_le64(sh->base);
    if (hlen > MOEC_ST_MAX_HEADER)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header length %" PRIu64
                            " is absurd (limit %u bytes); not a safetensors file?",
                            path, hlen, MOEC_ST_MAX_HEADER);
    if (hlen > sh->size - 8)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header length %" PRIu64 " is larger than the file (%zu bytes "
                            "after the length field); truncated?",
                            path, hlen, sh->size - 8);
    const uint8_t *hdr = sh->base + 8;
    moec_status s = check_utf8(path, hdr, (size_t)hlen, err);
    if (s)
        return s;

    char *buf = malloc((size_t)hlen + 1);
    if (!buf)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for a %" PRIu64
                            "-byte header", path, hlen);
    memcpy(buf, hdr, (size_t)hlen);
    buf[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= buf && end <= buf + hlen ? (size_t)(end - buf) : 0;
        free(buf);
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header is not valid JSON (error near header byte %zu of %" PRIu64
                            ")", path, at, hlen);
    }
    size_t tail = (size_t)(end - buf);
    while (tail < hlen && is_json_space(buf[tail]))
        tail++;
    if (tail < hlen) {
        cJSON_Delete(root);
        free(buf);
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: header has stray bytes after its JSON value (header byte %zu)",
                            path, tail);
    }
    if (!cJSON_IsObject(root)) {
        s = moec_err_set(err, MOEC_ERR_FORMAT, "%s: header must be a JSON object, found %s",
                         path, json_type_name(root));
        goto done;
    }

    const uint8_t *data = hdr + hlen;
    uint64_t data_size = sh->size - 8 - hlen;
    size_t first = st->n;
    int seen_meta = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (seen_meta++) {
                s = moec_err_set(err, MOEC_ERR_FORMAT, "%s: __metadata__ appears twice", path);
                goto done;
            }
            s = parse_metadata(st, path, item, keep_meta, err);
        } else {
            s = parse_tensor(st, si, item, data, data_size, err);
        }
        if (s)
            goto done;
    }
    s = check_overlap(st, first, err);
done:
    cJSON_Delete(root);
    free(buf);
    return s;
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

/* Sorts by name and refuses a name seen twice, within a file or across
 * shards. */
static moec_status finish_entries(moec_safetensors *st, moec_err *err)
{
    if (st->n > 1)
        qsort(st->entries, st->n, sizeof *st->entries, cmp_by_name);
    for (size_t i = 1; i < st->n; i++) {
        const st_entry *a = &st->entries[i - 1], *b = &st->entries[i];
        if (strcmp(a->name, b->name) != 0)
            continue;
        char nb[96];
        if (a->shard == b->shard)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: duplicate tensor name '%s'",
                                st->shards[a->shard].path, shown(a->name, nb));
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "duplicate tensor name '%s': present in both %s and %s",
                            shown(a->name, nb), st->shards[a->shard].path,
                            st->shards[b->shard].path);
    }
    return MOEC_OK;
}

static moec_safetensors *st_alloc(size_t nshards)
{
    moec_safetensors *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->shards = calloc(nshards ? nshards : 1, sizeof *st->shards);
    if (!st->shards) {
        free(st);
        return NULL;
    }
    st->nshards = nshards;
    return st;
}

static moec_status set_shard_path(st_shard *sh, const char *path, moec_err *err)
{
    sh->path = strdup(path);
    if (!sh->path)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    const char *slash = strrchr(sh->path, '/');
    sh->file = slash ? slash + 1 : sh->path;
    return MOEC_OK;
}

static moec_status map_shard(st_shard *sh, const char *path, moec_err *err)
{
    moec_status s = set_shard_path(sh, path, err);
    if (s)
        return s;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    if (fd < 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        s = moec_err_set(err, MOEC_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        s = moec_err_set(err, MOEC_ERR_IO, "%s: not a regular file", path);
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        s = moec_err_set(err, MOEC_ERR_IO, "%s: file too large to map", path);
    } else if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            s = moec_err_set(err, MOEC_ERR_IO, "%s: cannot mmap %lld bytes: %s", path,
                             (long long)sb.st_size, strerror(errno));
        } else {
            /* Weights are streamed from memory every token: ask for 2 MiB
             * pages where the page cache can give them (read from disk as
             * 2 MiB folios), so that a decode step is not slowed by a TLB
             * miss every 4 KiB (and a first touch per 4 KiB page, which
             * costs ~10x the read itself in a VM). Advice only. */
            (void)madvise(p, (size_t)sb.st_size, MADV_HUGEPAGE);
            sh->base = p;
            sh->size = (size_t)sb.st_size;
            sh->mapped = 1;
        }
    }
    close(fd);
    return s;
}

static moec_status open_single(moec_safetensors **out, const char *path, moec_err *err)
{
    moec_safetensors *st = st_alloc(1);
    if (!st)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    moec_status s = map_shard(&st->shards[0], path, err);
    if (!s)
        s = parse_shard(st, 0, 1, err);
    if (!s)
        s = finish_entries(st, err);
    if (s) {
        moec_st_close(st);
        return s;
    }
    st->file_bytes = st->shards[0].size;
    *out = st;
    return MOEC_OK;
}

/* ---- sharded index ------------------------------------------------------ */

typedef struct wm_pair {
    const char *name; /* points into the cJSON tree */
    const char *file;
} wm_pair;

static int cmp_wm(const void *a, const void *b)
{
    return strcmp(((const wm_pair *)a)->name, ((const wm_pair *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static moec_status read_small_file(const char *path, char **out, size_t *len, moec_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    if (fd < 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    moec_status s = MOEC_OK;
    char *buf = NULL;
    if (fstat(fd, &sb) != 0) {
        s = moec_err_set(err, MOEC_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        s = moec_err_set(err, MOEC_ERR_IO, "%s: not a regular file", path);
    } else if ((uint64_t)sb.st_size > MOEC_ST_MAX_HEADER) {
        s = moec_err_set(err, MOEC_ERR_FORMAT, "%s: %lld bytes is absurd for an index (limit %u)",
                         path, (long long)sb.st_size, MOEC_ST_MAX_HEADER);
    } else if (!(buf = malloc((size_t)sb.st_size + 1))) {
        s = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    } else {
        size_t got = 0, want = (size_t)sb.st_size;
        while (got < want) {
            ssize_t r = read(fd, buf + got, want - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                s = moec_err_set(err, MOEC_ERR_IO, "%s: read failed: %s", path,
                                 r < 0 ? strerror(errno) : "file shrank while reading");
                break;
            }
            got += (size_t)r;
        }
        buf[got] = '\0';
        *len = got;
    }
    close(fd);
    if (s)
        free(buf);
    else
        *out = buf;
    return s;
}

static int plain_file_name(const char *f)
{
    return f[0] != '\0' && !strchr(f, '/') && !strchr(f, '\\') && !strstr(f, "..");
}

/* Fills sh for the shard file named `file` (a plain name from the index). */
typedef moec_status (*shard_loader)(void *ctx, st_shard *sh, const char *file, moec_err *err);

static moec_status open_index_text(moec_safetensors **out, const char *text, size_t len,
                                   const char *index_path, shard_loader load, void *load_ctx,
                                   moec_err *err)
{
    size_t nwm = 0, nfiles = 0;
    cJSON *root = NULL;
    wm_pair *wm = NULL;
    const char **files = NULL;
    moec_safetensors *st = NULL;
    char nb[96], fb[96];
    moec_status s = MOEC_OK;

    root = cJSON_ParseWithLength(text, len);
    if (!root) {
        s = moec_err_set(err, MOEC_ERR_FORMAT, "%s: not valid JSON", index_path);
        goto done;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        s = moec_err_set(err, MOEC_ERR_FORMAT, "%s: \"weight_map\" %s", index_path,
                         map ? "must be an object" : "is missing");
        goto done;
    }
    size_t count = (size_t)cJSON_GetArraySize(map);
    if (count == 0) {
        s = moec_err_set(err, MOEC_ERR_FORMAT, "%s: weight_map is empty", index_path);
        goto done;
    }
    wm = calloc(count, sizeof *wm);
    files = calloc(count, sizeof *files);
    if (!wm || !files) {
        s = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, map) {
        if (!cJSON_IsString(it)) {
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: weight_map entry '%s' must be a file name string, found %s",
                             index_path, shown(it->string, nb), json_type_name(it));
            goto done;
        }
        if (!plain_file_name(it->valuestring)) {
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: weight_map entry '%s' names shard '%s', which is not a plain "
                             "file name beside the index (no '/' or '..' allowed)",
                             index_path, shown(it->string, nb), shown(it->valuestring, fb));
            goto done;
        }
        wm[nwm].name = it->string;
        wm[nwm].file = it->valuestring;
        files[nwm] = it->valuestring;
        nwm++;
    }
    qsort(wm, nwm, sizeof *wm, cmp_wm);
    for (size_t i = 1; i < nwm; i++)
        if (strcmp(wm[i - 1].name, wm[i].name) == 0) {
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: duplicate tensor name '%s' in weight_map", index_path,
                             shown(wm[i].name, nb));
            goto done;
        }
    qsort(files, nwm, sizeof *files, cmp_str);
    for (size_t i = 0; i < nwm; i++)
        if (nfiles == 0 || strcmp(files[nfiles - 1], files[i]) != 0)
            files[nfiles++] = files[i];

    st = st_alloc(nfiles);
    if (!st) {
        s = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < nfiles && !s; i++) {
        s = load(load_ctx, &st->shards[i], files[i], err);
        if (!s)
            s = parse_shard(st, i, i == 0, err);
        if (!s)
            st->file_bytes += st->shards[i].size;
    }
    if (!s)
        s = finish_entries(st, err);
    for (size_t i = 0; i < st->n && !s; i++) {
        const st_entry *e = &st->entries[i];
        wm_pair key = {.name = e->name};
        const wm_pair *w = bsearch(&key, wm, nwm, sizeof *wm, cmp_wm);
        const char *in = st->shards[e->shard].file;
        if (!w)
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: tensor '%s' in shard %s is not listed in weight_map", index_path,
                             shown(e->name, nb), in);
        else if (strcmp(w->file, in) != 0)
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: tensor '%s' is in shard %s but weight_map names %s", index_path,
                             shown(e->name, nb), in, shown(w->file, fb));
    }
    for (size_t i = 0; i < nwm && !s; i++)
        if (moec_st_index(st, wm[i].name) < 0)
            s = moec_err_set(err, MOEC_ERR_FORMAT,
                             "%s: weight_map lists tensor '%s' in %s, which does not contain it",
                             index_path, shown(wm[i].name, nb), shown(wm[i].file, fb));
done:
    if (s) {
        moec_st_close(st);
        st = NULL;
    }
    *out = st;
    free(files);
    free(wm);
    cJSON_Delete(root);
    return s;
}

/* Shards as files beside the index. */
static moec_status load_shard_file(void *ctx, st_shard *sh, const char *file, moec_err *err)
{
    const char *dir = ctx;
    size_t cap = strlen(dir) + strlen(file) + 2;
    char *path = malloc(cap);
    if (!path)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s/%s: out of memory", dir, file);
    snprintf(path, cap, "%s/%s", dir, file);
    moec_status s = map_shard(sh, path, err);
    free(path);
    return s;
}

static moec_status open_index(moec_safetensors **out, const char *index_path, moec_err *err)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    moec_status s = read_small_file(index_path, &text, &len, err);
    if (s)
        return s;
    char *dir = strdup(index_path);
    if (!dir) {
        free(text);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", index_path);
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    else
        strcpy(dir, ".");
    s = open_index_text(out, text, len, index_path, load_shard_file, dir, err);
    free(dir);
    free(text);
    return s;
}

/* Shards as images in memory, found by file name. */
typedef struct {
    const char *label;
    const moec_st_image *images;
    size_t n;
} mem_shards;

static moec_status load_shard_image(void *ctx, st_shard *sh, const char *file, moec_err *err)
{
    const mem_shards *ms = ctx;
    size_t cap = strlen(ms->label) + strlen(file) + 2;
    char *path = malloc(cap);
    if (!path)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", ms->label);
    snprintf(path, cap, "%s/%s", ms->label, file);
    moec_status s = set_shard_path(sh, path, err);
    free(path);
    if (s)
        return s;
    for (size_t i = 0; i < ms->n; i++)
        if (ms->images[i].name && strcmp(ms->images[i].name, file) == 0) {
            if (!ms->images[i].data && ms->images[i].size)
                return moec_err_set(err, MOEC_ERR_ARG, "%s: NULL data", sh->path);
            sh->base = ms->images[i].data;
            sh->size = ms->images[i].size;
            return MOEC_OK;
        }
    return moec_err_set(err, MOEC_ERR_IO, "%s: cannot open: no such shard", sh->path);
}

moec_status moec_st_open_index_memory(moec_safetensors **out, const char *json, size_t len,
                                      const char *label, const moec_st_image *images,
                                      size_t n_images, moec_err *err)
{
    *out = NULL;
    if (!label)
        label = "<memory>";
    if ((!json && len) || (!images && n_images))
        return moec_err_set(err, MOEC_ERR_ARG, "%s: NULL index or images", label);
    mem_shards ms = {label, images, n_images};
    char index_label[512];
    snprintf(index_label, sizeof index_label, "%s/model.safetensors.index.json", label);
    return open_index_text(out, json ? json : "", len, index_label, load_shard_image, &ms, err);
}



/* ---- public ------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

moec_status moec_st_open(moec_safetensors **out, const char *path, moec_err *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) {
        if (ends_with(path, ".index.json"))
            return open_index(out, path, err);
        return open_single(out, path, err);
    }
    size_t n = strlen(path);
    char *p = malloc(n + sizeof "/model.safetensors.index.json");
    if (!p)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    moec_status s;
    sprintf(p, "%s/model.safetensors", path);
    struct stat lb;
    if (!is_file(p) && stat(p, &lb) == 0) {
        /* there, but a directory, FIFO or device: say so rather than "missing" */
        s = moec_err_set(err, MOEC_ERR_IO, "%s: not a regular file", p);
    } else if (is_file(p)) {
        s = open_single(out, p, err);
    } else {
        sprintf(p, "%s/model.safetensors.index.json", path);
        if (is_file(p))
            s = open_index(out, p, err);
        else
            s = moec_err_set(err, MOEC_ERR_IO,
                             "%s: no model.safetensors or model.safetensors.index.json in this "
                             "directory", path);
    }
    free(p);
    return s;
}

moec_status moec_st_open_memory(moec_safetensors **out, const void *data, size_t size,
                                const char *label, moec_err *err)
{
    *out = NULL;
    if (!label)
        label = "<memory>";
    if (!data && size)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: NULL data with %zu bytes", label, size);
    moec_safetensors *st = st_alloc(1);
    if (!st)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", label);
    moec_status s = set_shard_path(&st->shards[0], label, err);
    if (!s) {
        st->shards[0].base = data;
        st->shards[0].size = size;
        s = parse_shard(st, 0, 1, err);
    }
    if (!s)
        s = finish_entries(st, err);
    if (s) {
        moec_st_close(st);
        return s;
    }
    st->file_bytes = size;
    *out = st;
    return MOEC_OK;
}

void moec_st_close(moec_safetensors *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->nshards; i++) {
        st_shard *sh = &st->shards[i];
        if (sh->mapped)
            munmap((void *)sh->base, sh->size);
        free(sh->path);
    }
    for (size_t i = 0; i < st->n; i++)
        free(st->entries[i].name);
    for (size_t i = 0; i < st->nmeta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->meta);
    free(st->entries);
    free(st->shards);
    free(st);
}

size_t moec_st_count(const moec_safetensors *st)
{
    return st->n;
}

const char *moec_st_name(const moec_safetensors *st, size_t i)
{
    return st->entries[i].name;
}

const moec_tensor *moec_st_tensor(const moec_safetensors *st, size_t i)
{
    return &st->entries[i].t;
}

ptrdiff_t moec_st_index(const moec_safetensors *st, const char *name)
{
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->entries[mid].name, name);
        if (c == 0)
            return (ptrdiff_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const moec_tensor *moec_st_find(const moec_safetensors *st, const char *name)
{
    ptrdiff_t i = moec_st_index(st, name);
    return i < 0 ? NULL : &st->entries[i].t;
}

const char *moec_st_metadata(const moec_safetensors *st, const char *key)
{
    for (size_t i = 0; i < st->nmeta; i++)
        if (strcmp(st->meta[i].key, key) == 0)
            return st->meta[i].value;
    return NULL;
}

uint64_t moec_st_file_bytes(const moec_safetensors *st)
{
    return st->file_bytes;
}

bool moec_st_release(const moec_safetensors *st, const void *p, size_t n)
{
    const uint8_t *a = p;
    for (size_t i = 0; st && a && i < st->nshards; i++) {
        const st_shard *sh = &st->shards[i];
        if (a >= sh->base && n <= sh->size && a - sh->base <= (ptrdiff_t)(sh->size - n)) {
            if (sh->mapped) /* never advise memory that a caller lent us */
                moec_release_pages(p, n);
            return true;
        }
    }
    return false;
}
