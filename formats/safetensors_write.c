/* safetensors_write.c - streaming, atomic safetensors writer.
 *
 * Only the headers are built in memory; tensor data goes from the caller's
 * buffers to the file with pwrite() at offsets laid out in advance, so
 * tensors may arrive in any order (moec_st_writer_begin / _put / _finish)
 * and a layer-streaming caller never holds more than the tensor it hands
 * over. Files appear under their final names only once every one of them
 * is complete and fsync'd.
 */
#include "formats/safetensors.h"
#include "core/fsutil.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "core/fsutil.h"

#define ST_ALIGN 64
/* Streamed tensors at least this large are flushed and dropped from the
 * page cache as soon as they are written. */
#define DROP_MIN ((size_t)1 << 20)

typedef struct wr_tensor {
    char *name;
    moec_tensor t;   /* data NULL until put when streaming */
    uint64_t offset; /* within its shard's data section, set by the layout */
    size_t shard;    /* set by the layout */
    int written;     /* streaming: bytes are in the file */
} wr_tensor;

typedef struct wr_kv {
    char *key, *value;
} wr_kv;

typedef struct out_file {
    char *final_path;
    char *tmp_path; /* NULL once renamed or removed */
    int renamed;
    int fd;         /* open while streaming, else -1 */
    uint64_t data_start; /* file offset of the data section */
} out_file;

/* An open output: the layout of every tensor and the temporary files. */
typedef struct wr_stream {
    char *dir;
    wr_tensor **v;     /* name order */
    size_t nshards;
    out_file *files;   /* [nshards + 1]: shards, then the index */
    size_t nfiles;
    uint64_t total;
    size_t n_written;
} wr_stream;

struct moec_st_writer {
    wr_tensor *t;
    size_t n, cap;
    size_t *slots; /* open addressing over t by name hash; SIZE_MAX = empty */
    size_t nslots;
    wr_kv *meta;
    size_t nmeta;
    wr_stream *s;  /* between begin and finish */
};

/* ---- small growable string ---------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_put(b, tmp, n < (int)sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal; s is valid UTF-8 (checked on the way in), so only
 * quotes, backslashes and control characters need escaping. */
static void sb_json_str(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_put(b, run, (size_t)(s - run));
        if (c == '"')
            sb_puts(b, "\\\"");
        else if (c == '\\')
            sb_puts(b, "\\\\");
        else
            sb_printf(b, "\\u%04x", c);
        run = s + 1;
    }
    sb_put(b, run, (size_t)(s - run));
    sb_put(b, "\"", 1);
}

/* ---- writer object ------------------------------------------------------ */

static int valid_utf8(const char *s)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t n = (utf8proc_ssize_t)strlen(s);
    while (n > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p, n, &cp);
        if (k <= 0)
            return 0;
        p += k;
        n -= k;
    }
    return 1;
}

static size_t name_slot(const moec_st_writer *w, const char *name)
{
    size_t mask = w->nslots - 1;
    size_t i = (size_t)XXH64(name, strlen(name), 0) & mask;
    while (w->slots[i] != SIZE_MAX && strcmp(w->t[w->slots[i]].name, name) != 0)
        i = (i + 1) & mask;
    return i;
}

static int rehash(moec_st_writer *w, size_t nslots)
{
    size_t *slots = malloc(nslots * sizeof *slots);
    if (!slots)
        return 0;
    free(w->slots);
    w->slots = slots;
    w->nslots = nslots;
    for (size_t i = 0; i < nslots; i++)
        slots[i] = SIZE_MAX;
    for (size_t k = 0; k < w->n; k++)
        slots[name_slot(w, w->t[k].name)] = k;
    return 1;
}

moec_st_writer *moec_st_writer_new(void)
{
    moec_st_writer *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    if (!rehash(w, 64) || moec_st_writer_set_metadata(w, "format", "pt", NULL) != MOEC_OK) {
        moec_st_writer_free(w);
        return NULL;
    }
    return w;
}

static void stream_abort(moec_st_writer *w);

void moec_st_writer_free(moec_st_writer *w)
{
    if (!w)
        return;
    stream_abort(w);
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->t);
    free(w->slots);
    free(w->meta);
    free(w);
}

moec_status moec_st_writer_add(moec_st_writer *w, const char *name, const moec_tensor *t,
                               moec_err *err)
{
    if (!name || !name[0] || strcmp(name, "__metadata__") == 0 || !valid_utf8(name))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "safetensors writer: tensor name '%s' is empty, reserved or not UTF-8",
                            name ? name : "(null)");
    if ((unsigned)t->dtype >= MOEC_DT_QUANT)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "safetensors writer: tensor '%s' has dtype %s, which safetensors "
                            "cannot store", name, moec_dtype_name(t->dtype));
    if (t->ndim < 0 || t->ndim > MOEC_MAX_DIMS)
        return moec_err_set(err, MOEC_ERR_ARG, "safetensors writer: tensor '%s' has ndim %d",
                            name, t->ndim);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return moec_err_set(err, MOEC_ERR_ARG,
                                "safetensors writer: tensor '%s' has shape[%d] = %" PRId64, name,
                                d, t->shape[d]);
        uint64_t v = (uint64_t)t->shape[d];
        if (v && numel > UINT64_MAX / v)
            return moec_err_set(err, MOEC_ERR_ARG,
                                "safetensors writer: tensor '%s': element count overflows", name);
        numel *= v;
    }
    size_t es = moec_dtype_size(t->dtype);
    if (numel > UINT64_MAX / es || numel * es != (uint64_t)t->nbytes)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "safetensors writer: tensor '%s' has %zu bytes, its shape and dtype "
                            "%s need %" PRIu64, name, t->nbytes, moec_dtype_name(t->dtype),
                            numel * es);
    if (w->s)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "safetensors writer: tensor '%s' added after writing began", name);
    if (w->slots[name_slot(w, name)] != SIZE_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "safetensors writer: duplicate tensor name '%s'",
                            name);
    if (2 * (w->n + 1) > w->nslots && !rehash(w, w->nslots * 2))
        return moec_err_set(err, MOEC_ERR_NOMEM, "safetensors writer: out of memory");
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        wr_tensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt)
            return moec_err_set(err, MOEC_ERR_NOMEM, "safetensors writer: out of memory");
        w->t = nt;
        w->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return moec_err_set(err, MOEC_ERR_NOMEM, "safetensors writer: out of memory");
    wr_tensor *e = &w->t[w->n];
    e->name = copy;
    e->t = *t;
    e->t.q = NULL;
    e->offset = 0;
    e->shard = 0;
    e->written = 0;
    w->slots[name_slot(w, name)] = w->n++;
    return MOEC_OK;
}

moec_status moec_st_writer_set_metadata(moec_st_writer *w, const char *key, const char *value,
                                        moec_err *err)
{
    if (!key || !value || !valid_utf8(key) || !valid_utf8(value))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "safetensors writer: metadata key and value must be UTF-8 strings");
    char *v = strdup(value);
    if (!v)
        return moec_err_set(err, MOEC_ERR_NOMEM, "safetensors writer: out of memory");
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->meta[i].key, key) == 0) {
            free(w->meta[i].value);
            w->meta[i].value = v;
            return MOEC_OK;
        }
    char *k = strdup(key);
    wr_kv *m = realloc(w->meta, (w->nmeta + 1) * sizeof *m);
    if (!k || !m) {
        free(k);
        free(v);
        if (m)
            w->meta = m;
        return moec_err_set(err, MOEC_ERR_NOMEM, "safetensors writer: out of memory");
    }
    w->meta = m;
    m[w->nmeta].key = k;
    m[w->nmeta].value = v;
    w->nmeta++;
    return MOEC_OK;
}

/* ---- layout ------------------------------------------------------------- */

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(wr_tensor *const *)a)->name, (*(wr_tensor *const *)b)->name);
}

/* Data order inside a shard: tensors of a multiple of 64 bytes first (each
 * then starts 64-aligned), then by decreasing element size (each stays
 * aligned to its element size, as sizes are powers of two), then by name. */
static int cmp_layout(const void *a, const void *b)
{
    const wr_tensor *x = *(wr_tensor *const *)a, *y = *(wr_tensor *const *)b;
    int xr = x->t.nbytes % ST_ALIGN != 0, yr = y->t.nbytes % ST_ALIGN != 0;
    if (xr != yr)
        return xr - yr;
    size_t xs = moec_dtype_size(x->t.dtype), ys = moec_dtype_size(y->t.dtype);
    if (xs != ys)
        return xs > ys ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Header JSON for tensors v[0..n) (in name order), with offsets already
 * assigned, padded with spaces so that 8 + length is a multiple of 64. */
static int build_header(const moec_st_writer *w, wr_tensor **v, size_t n, sbuf *b)
{
    b->len = 0;
    sb_puts(b, "{");
    if (w->nmeta) {
        sb_puts(b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->nmeta; i++) {
            if (i)
                sb_puts(b, ",");
            sb_json_str(b, w->meta[i].key);
            sb_puts(b, ":");
            sb_json_str(b, w->meta[i].value);
        }
        sb_puts(b, "}");
    }
    for (size_t i = 0; i < n; i++) {
        const wr_tensor *e = v[i];
        if (i || w->nmeta)
            sb_puts(b, ",");
        sb_json_str(b, e->name);
        sb_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", moec_dtype_name(e->t.dtype));
        for (int d = 0; d < e->t.ndim; d++)
            sb_printf(b, "%s%" PRId64, d ? "," : "", e->t.shape[d]);
        sb_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", e->offset,
                  e->offset + (uint64_t)e->t.nbytes);
    }
    sb_puts(b, "}");
    while ((8 + b->len) % ST_ALIGN)
        sb_put(b, " ", 1);
    return !b->oom;
}

/* ---- files -------------------------------------------------------------- */

static moec_status pwrite_all(int fd, const void *p, size_t n, uint64_t off, const char *path,
                              moec_err *err)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = pwrite(fd, c, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return moec_err_set(err, MOEC_ERR_IO, "%s: write failed: %s", path,
                                k < 0 ? strerror(errno) : "no progress");
        c += k;
        off += (uint64_t)k;
        n -= (size_t)k;
    }
    return MOEC_OK;
}

/* Creates dir/.NAME.tmp.PID.K exclusively (mode 0666 & ~umask, as any
 * created file). */
static moec_status create_tmp(const char *dir, const char *name, out_file *f, moec_err *err)
{
    static unsigned counter;
    size_t cap = strlen(dir) + strlen(name) + 64;
    f->fd = -1;
    f->final_path = malloc(cap);
    f->tmp_path = malloc(cap);
    if (!f->final_path || !f->tmp_path) {
        free(f->final_path);
        free(f->tmp_path);
        f->final_path = f->tmp_path = NULL;
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s/%s: out of memory", dir, name);
    }
    snprintf(f->final_path, cap, "%s/%s", dir, name);
    for (int attempt = 0;; attempt++) {
        snprintf(f->tmp_path, cap, "%s/.%s.tmp.%ld.%u", dir, name, (long)getpid(),
                 __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
        f->fd = open(f->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (f->fd >= 0) {
            moec_tmp_track(f->tmp_path);
            return MOEC_OK;
        }
        if (errno != EEXIST || attempt > 100) {
            moec_status s = moec_err_set(err, MOEC_ERR_IO, "%s: cannot create: %s",
                                         f->tmp_path, strerror(errno));
            free(f->tmp_path);
            f->tmp_path = NULL;
            return s;
        }
    }
}

static moec_status finish_tmp(out_file *f, moec_err *err)
{
    moec_status s = MOEC_OK;
    if (fsync(f->fd) != 0)
        s = moec_err_set(err, MOEC_ERR_IO, "%s: fsync failed: %s", f->tmp_path, strerror(errno));
    if (close(f->fd) != 0 && !s)
        s = moec_err_set(err, MOEC_ERR_IO, "%s: close failed: %s", f->tmp_path, strerror(errno));
    f->fd = -1;
    return s;
}

/* Lays out shard k (tensors v[0..n) in name order), creates its temporary
 * file and writes its header; the data follows with pwrite. */
static moec_status open_shard(const moec_st_writer *w, wr_tensor **v, size_t n, sbuf *hdr,
                              out_file *f, const char *dir, const char *name, moec_err *err)
{
    wr_tensor **order = malloc((n ? n : 1) * sizeof *order);
    if (!order)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s/%s: out of memory", dir, name);
    memcpy(order, v, n * sizeof *order);
    qsort(order, n, sizeof *order, cmp_layout);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        order[i]->offset = off;
        off += order[i]->t.nbytes;
    }
    free(order);
    if (!build_header(w, v, n, hdr))
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s/%s: out of memory for the header", dir,
                            name);
    moec_status s = create_tmp(dir, name, f, err);
    if (s)
        return s;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hdr->len >> (8 * i));
    f->data_start = 8 + (uint64_t)hdr->len;
    s = pwrite_all(f->fd, len8, 8, 0, f->tmp_path, err);
    if (!s)
        s = pwrite_all(f->fd, hdr->p, hdr->len, 8, f->tmp_path, err);
    /* the file has its final size from the start: tensors fill it in any order */
    if (!s && ftruncate(f->fd, (off_t)(f->data_start + off)) != 0)
        s = moec_err_set(err, MOEC_ERR_IO, "%s: cannot size to %llu bytes: %s", f->tmp_path,
                         (unsigned long long)(f->data_start + off), strerror(errno));
    return s;
}

static moec_status write_index(wr_tensor **v, size_t n, size_t nshards, uint64_t total,
                               out_file *f, const char *dir, moec_err *err)
{
    const char *name = "model.safetensors.index.json";
    sbuf b = {0};
    sb_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n", total);
    sb_puts(&b, "  \"weight_map\": {\n");
    for (size_t i = 0; i < n; i++) {
        sb_puts(&b, "    ");
        sb_json_str(&b, v[i]->name);
        sb_printf(&b, ": \"model-%05zu-of-%05zu.safetensors\"%s\n", v[i]->shard + 1, nshards,
                  i + 1 < n ? "," : "");
    }
    sb_puts(&b, "  }\n}\n");
    if (b.oom) {
        free(b.p);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s/%s: out of memory", dir, name);
    }
    moec_status s = create_tmp(dir, name, f, err);
    if (!s) {
        s = pwrite_all(f->fd, b.p, b.len, 0, f->tmp_path, err);
        moec_status s2 = finish_tmp(f, err);
        if (!s)
            s = s2;
    }
    free(b.p);
    return s;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Removes a stale checkpoint of the other form so that readers, which try
 * model.safetensors before the index, see what was just written. */
static void remove_stale(const char *dir, const char *name)
{
    size_t cap = strlen(dir) + strlen(name) + 2;
    char *p = malloc(cap);
    if (!p)
        return;
    snprintf(p, cap, "%s/%s", dir, name);
    unlink(p);
    free(p);
}

/* Closes and removes what an unfinished (or failed) stream left. */
static void stream_abort(moec_st_writer *w)
{
    wr_stream *s = w->s;
    if (!s)
        return;
    for (size_t k = 0; k < s->nfiles; k++) {
        out_file *f = &s->files[k];
        if (f->fd >= 0)
            close(f->fd);
        if (f->renamed)
            unlink(f->final_path);
        else if (f->tmp_path) {
            unlink(f->tmp_path);
            moec_tmp_untrack(f->tmp_path);
        }
        free(f->final_path);
        free(f->tmp_path);
    }
    free(s->files);
    free(s->v);
    free(s->dir);
    free(s);
    w->s = NULL;
}

moec_status moec_st_writer_begin(moec_st_writer *w, const char *dir, size_t shard_bytes,
                                 moec_err *err)
{
    if (w->s)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: safetensors writer: already writing", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return moec_err_set(err, MOEC_ERR_IO, "%s: not a directory", dir);

    const size_t n = w->n;
    wr_stream *s = calloc(1, sizeof *s);
    if (!s)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", dir);
    w->s = s;
    s->dir = strdup(dir);
    s->v = malloc((n ? n : 1) * sizeof *s->v);
    if (!s->dir || !s->v) {
        stream_abort(w);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", dir);
    }
    for (size_t i = 0; i < n; i++)
        s->v[i] = &w->t[i];
    qsort(s->v, n, sizeof *s->v, cmp_name);

    s->nshards = 1;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t b = s->v[i]->t.nbytes;
        if (shard_bytes && in_shard > 0 && in_shard + b > shard_bytes) {
            s->nshards++;
            in_shard = 0;
        }
        s->v[i]->shard = s->nshards - 1;
        s->v[i]->written = 0;
        in_shard += b;
        s->total += b;
    }

    s->files = calloc(s->nshards + 1, sizeof *s->files);
    if (!s->files) {
        stream_abort(w);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", dir);
    }
    sbuf hdr = {0};
    moec_status st = MOEC_OK;
    for (size_t k = 0, i = 0; k < s->nshards && !st; k++) {
        size_t j = i;
        while (j < n && s->v[j]->shard == k)
            j++;
        char name[64];
        if (s->nshards == 1)
            snprintf(name, sizeof name, "model.safetensors");
        else
            snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, s->nshards);
        s->files[s->nfiles].fd = -1;
        st = open_shard(w, s->v + i, j - i, &hdr, &s->files[s->nfiles++], dir, name, err);
        i = j;
    }
    free(hdr.p);
    if (st)
        stream_abort(w);
    return st;
}

moec_status moec_st_writer_put(moec_st_writer *w, const char *name, const moec_tensor *t,
                               moec_err *err)
{
    wr_stream *s = w->s;
    if (!s)
        return moec_err_set(err, MOEC_ERR_ARG, "safetensors writer: '%s' put before begin", name);
    size_t slot = name_slot(w, name);
    if (w->slots[slot] == SIZE_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "safetensors writer: '%s' was not added", name);
    wr_tensor *e = &w->t[w->slots[slot]];
    if (e->written)
        return moec_err_set(err, MOEC_ERR_ARG, "safetensors writer: '%s' written twice", name);
    bool same = t->dtype == e->t.dtype && t->ndim == e->t.ndim && t->nbytes == e->t.nbytes &&
                (t->data || !t->nbytes);
    for (int d = 0; same && d < t->ndim; d++)
        same = t->shape[d] == e->t.shape[d];
    if (!same)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "safetensors writer: '%s' given as %s, %zu bytes%s, where it was added "
                            "as %s, %zu bytes", name, moec_dtype_name(t->dtype), t->nbytes,
                            t->data ? "" : " (no data)", moec_dtype_name(e->t.dtype), e->t.nbytes);
    const void *data = t->data;
    const size_t nbytes = t->nbytes;
    out_file *f = &s->files[e->shard];
    const uint64_t off = f->data_start + e->offset;
    moec_status st = pwrite_all(f->fd, data, nbytes, off, f->tmp_path, err);
    if (st)
        return st;
    if (nbytes >= DROP_MIN) /* small tensors are not worth a flush each */
        moec_drop_written(f->fd, (long long)off, (long long)nbytes);
    e->written = 1;
    s->n_written++;
    return MOEC_OK;
}

moec_status moec_st_writer_finish(moec_st_writer *w, moec_err *err)
{
    wr_stream *s = w->s;
    if (!s)
        return moec_err_set(err, MOEC_ERR_ARG, "safetensors writer: finish before begin");
    moec_status st = MOEC_OK;
    if (s->n_written != w->n) {
        for (size_t i = 0; i < w->n; i++)
            if (!w->t[i].written) {
                st = moec_err_set(err, MOEC_ERR_ARG,
                                  "%s: safetensors writer: tensor '%s' was never written", s->dir,
                                  w->t[i].name);
                break;
            }
    }
    for (size_t k = 0; k < s->nshards && !st; k++)
        st = finish_tmp(&s->files[k], err);
    if (!st && s->nshards > 1)
        st = write_index(s->v, w->n, s->nshards, s->total, &s->files[s->nfiles++], s->dir, err);
    for (size_t k = 0; k < s->nfiles && !st; k++) {
        if (moec_tmp_rename(s->files[k].tmp_path, s->files[k].final_path) != 0)
            st = moec_err_set(err, MOEC_ERR_IO, "%s: cannot rename into place: %s",
                              s->files[k].final_path, strerror(errno));
        else
            s->files[k].renamed = 1;
    }
    if (st) {
        stream_abort(w);
        return st;
    }
    remove_stale(s->dir, s->nshards > 1 ? "model.safetensors" : "model.safetensors.index.json");
    fsync_dir(s->dir);
    for (size_t k = 0; k < s->nfiles; k++) {
        free(s->files[k].final_path);
        free(s->files[k].tmp_path);
        s->files[k].final_path = s->files[k].tmp_path = NULL;
        s->files[k].renamed = 0;
    }
    s->nfiles = 0;
    stream_abort(w);
    return MOEC_OK;
}

moec_status moec_st_writer_write(moec_st_writer *w, const char *dir, size_t shard_bytes,
                                 moec_err *err)
{
    for (size_t i = 0; i < w->n; i++)
        if (w->t[i].t.nbytes && !w->t[i].t.data)
            return moec_err_set(err, MOEC_ERR_ARG, "safetensors writer: tensor '%s' has no data",
                                w->t[i].name);
    moec_status st = moec_st_writer_begin(w, dir, shard_bytes, err);
    for (size_t i = 0; i < w->n && !st; i++)
        st = moec_st_writer_put(w, w->t[i].name, &w->t[i].t, err);
    if (!st)
        return moec_st_writer_finish(w, err);
    stream_abort(w);
    return st;
}
