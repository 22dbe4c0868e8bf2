/* gguf_write.c - a GGUF v3 writer (format in gguf.h): metadata and tensor
 * descriptions are serialised into one buffer, the tensors' bytes are then
 * streamed from their callbacks into a temporary file that is renamed into
 * place only when complete. */
#include "formats/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
    bool oom;
} buf;

static void put(buf *b, const void *data, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put_le(buf *b, uint64_t v, int n)
{
    unsigned char t[8];
    for (int i = 0; i < n; i++)
        t[i] = (unsigned char)(v >> (8 * i));
    put(b, t, (size_t)n);
}

static void put_str(buf *b, const char *s, size_t len)
{
    put_le(b, len, 8);
    put(b, s, len);
}

typedef struct wtensor {
    char name[64];
    int type, n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
    moec_gguf_emit_fn emit;
    void *ctx;
} wtensor;

struct moec_gguf_writer {
    buf kv;          /* serialised key-value pairs */
    uint64_t n_kv;
    char **keys;     /* for uniqueness */
    wtensor *t;
    size_t n_t, cap_t;
    uint64_t data_bytes;
};

struct moec_gguf_out {
    int fd;
    const char *path;
    const char *tensor;
    uint64_t left; /* bytes the tensor still owes */
};

moec_status moec_gguf_out_write(moec_gguf_out *o, const void *data, size_t n, moec_err *err)
{
    if (n > o->left)
        return moec_err_set(err, MOEC_ERR_INTERNAL, "GGUF writer: tensor '%s' emitted more bytes than its size",
                            o->tensor);
    const unsigned char *p = data;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(o->fd, p + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return moec_err_set(err, MOEC_ERR_IO, "%s: write failed: %s", o->path, strerror(errno));
        done += (size_t)w;
    }
    o->left -= n;
    return MOEC_OK;
}

moec_status moec_gguf_writer_new(moec_gguf_writer **out, moec_err *err)
{
    *out = calloc(1, sizeof **out);
    return *out ? MOEC_OK : moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
}

void moec_gguf_writer_free(moec_gguf_writer *w)
{
    if (!w)
        return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    free(w->kv.p);
    free(w->t);
    free(w);
}

/* Starts a key-value pair: unique key, then the value type. */
static moec_status begin_kv(moec_gguf_writer *w, const char *key, moec_gguf_type t, moec_err *err)
{
    if (!key || !*key)
        return moec_err_set(err, MOEC_ERR_ARG, "GGUF writer: empty key");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return moec_err_set(err, MOEC_ERR_ARG, "GGUF writer: key '%s' added twice", key);
    char **k = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *k);
    if (!k)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    w->keys = k;
    if (!(k[w->n_kv] = strdup(key)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    w->n_kv++;
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, (uint64_t)t, 4);
    return MOEC_OK;
}

static moec_status end_kv(moec_gguf_writer *w, moec_err *err)
{
    return w->kv.oom ? moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for GGUF metadata") : MOEC_OK;
}

moec_status moec_gguf_add_u32(moec_gguf_writer *w, const char *key, uint32_t v, moec_err *err)
{
    moec_status st = begin_kv(w, key, MOEC_GGUF_U32, err);
    if (!st)
        put_le(&w->kv, v, 4);
    return st ? st : end_kv(w, err);
}

moec_status moec_gguf_add_i32(moec_gguf_writer *w, const char *key, int32_t v, moec_err *err)
{
    moec_status st = begin_kv(w, key, MOEC_GGUF_I32, err);
    if (!st)
        put_le(&w->kv, (uint32_t)v, 4);
    return st ? st : end_kv(w, err);
}

moec_status moec_gguf_add_f32(moec_gguf_writer *w, const char *key, float v, moec_err *err)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    moec_status st = begin_kv(w, key, MOEC_GGUF_F32, err);
    if (!st)
        put_le(&w->kv, u, 4);
    return st ? st : end_kv(w, err);
}

moec_status moec_gguf_add_bool(moec_gguf_writer *w, const char *key, bool v, moec_err *err)
{
    moec_status st = begin_kv(w, key, MOEC_GGUF_BOOL, err);
    if (!st)
        put_le(&w->kv, v ? 1 : 0, 1);
    return st ? st : end_kv(w, err);
}

moec_status moec_gguf_add_str(moec_gguf_writer *w, const char *key, const char *s, size_t len, moec_err *err)
{
    moec_status st = begin_kv(w, key, MOEC_GGUF_STRING, err);
    if (!st)
        put_str(&w->kv, s, len);
    return st ? st : end_kv(w, err);
}

static moec_status add_arr(moec_gguf_writer *w, const char *key, moec_gguf_type et, const void *v, uint64_t n,
                           moec_err *err)
{
    moec_status st = begin_kv(w, key, MOEC_GGUF_ARRAY, err);
    if (st)
        return st;
    put_le(&w->kv, (uint64_t)et, 4);
    put_le(&w->kv, n, 8);
    const uint32_t *u = v; /* i32 and f32 elements: their 4 bytes, little-endian */
    for (uint64_t i = 0; i < n; i++)
        put_le(&w->kv, u[i], 4);
    return end_kv(w, err);
}

moec_status moec_gguf_add_arr_i32(moec_gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                                  moec_err *err)
{
    return add_arr(w, key, MOEC_GGUF_I32, v, n, err);
}

moec_status moec_gguf_add_arr_f32(moec_gguf_writer *w, const char *key, const float *v, uint64_t n,
                                  moec_err *err)
{
    return add_arr(w, key, MOEC_GGUF_F32, v, n, err);
}

moec_status moec_gguf_add_arr_str(moec_gguf_writer *w, const char *key, const char *const *s, const size_t *lens,
                                  uint64_t n, moec_err *err)
{
    moec_status st = begin_kv(w, key, MOEC_GGUF_ARRAY, err);
    if (st)
        return st;
    put_le(&w->kv, MOEC_GGUF_STRING, 4);
    put_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n; i++)
        put_str(&w->kv, s[i], lens[i]);
    return end_kv(w, err);
}

moec_status moec_gguf_add_tensor(moec_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                                 moec_gguf_emit_fn emit, void *ctx, moec_err *err)
{
    if (!name || !*name || strlen(name) >= 64)
        return moec_err_set(err, MOEC_ERR_ARG, "GGUF writer: tensor name '%s' is empty or longer than 63 bytes",
                            name ? name : "");
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return moec_err_set(err, MOEC_ERR_ARG, "GGUF writer: tensor '%s' added twice", name);
    const uint64_t nbytes = moec_gguf_tensor_bytes(type, n_dims, ne);
    if (nbytes == 0)
        return moec_err_set(err, MOEC_ERR_ARG, "GGUF writer: tensor '%s': type %s with %d dims, ne[0] = %lld", name,
                            moec_gguf_type_name(type), n_dims, (long long)(n_dims > 0 ? ne[0] : 0));
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    for (int k = 0; k < 4; k++)
        t->ne[k] = k < n_dims ? ne[k] : 1;
    t->nbytes = nbytes;
    t->offset = (w->data_bytes + MOEC_GGUF_DEFAULT_ALIGNMENT - 1) / MOEC_GGUF_DEFAULT_ALIGNMENT *
                MOEC_GGUF_DEFAULT_ALIGNMENT;
    w->data_bytes = t->offset + nbytes;
    t->emit = emit;
    t->ctx = ctx;
    return MOEC_OK;
}

static moec_status write_zeros(moec_gguf_out *o, size_t n, moec_err *err)
{
    static const unsigned char z[MOEC_GGUF_DEFAULT_ALIGNMENT];
    o->left = n;
    return moec_gguf_out_write(o, z, n, err);
}

moec_status moec_gguf_writer_write(moec_gguf_writer *w, const char *path, moec_err *err)
{
    if (w->kv.oom)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for GGUF metadata");
    buf h = {0};
    put(&h, "GGUF", 4);
    put_le(&h, 3, 4);
    put_le(&h, w->n_t, 8);
    put_le(&h, w->n_kv, 8);
    put(&h, w->kv.p, w->kv.n);
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_le(&h, (uint64_t)t->n_dims, 4);
        for (int k = 0; k < t->n_dims; k++)
            put_le(&h, (uint64_t)t->ne[k], 8);
        put_le(&h, (uint64_t)t->type, 4);
        put_le(&h, t->offset, 8);
    }
    static const unsigned char z[MOEC_GGUF_DEFAULT_ALIGNMENT];
    put(&h, z, (MOEC_GGUF_DEFAULT_ALIGNMENT - h.n % MOEC_GGUF_DEFAULT_ALIGNMENT) % MOEC_GGUF_DEFAULT_ALIGNMENT);
    if (h.oom) {
        free(h.p);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the GGUF header");
    }

    static atomic_uint counter;
    const size_t plen = strlen(path) + 64;
    char *tmp = malloc(plen);
    if (!tmp) {
        free(h.p);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    int fd = -1;
    for (int tries = 0; tries < 100 && fd < 0; tries++) {
        snprintf(tmp, plen, "%s.tmp-%ld-%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    moec_status st = MOEC_OK;
    if (fd < 0) {
        st = moec_err_set(err, MOEC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(h.p);
        return st;
    }
    moec_gguf_out o = {.fd = fd, .path = tmp, .tensor = "(header)", .left = h.n};
    st = moec_gguf_out_write(&o, h.p, h.n, err);
    free(h.p);
    uint64_t pos = 0;
    for (size_t i = 0; i < w->n_t && !st; i++) {
        const wtensor *t = &w->t[i];
        o.tensor = t->name;
        if (t->offset > pos && (st = write_zeros(&o, (size_t)(t->offset - pos), err)))
            break;
        o.left = t->nbytes;
        if ((st = t->emit(t->ctx, &o, err)))
            break;
        if (o.left)
            st = moec_err_set(err, MOEC_ERR_INTERNAL, "GGUF writer: tensor '%s' emitted %llu bytes of %llu", t->name,
                              (unsigned long long)(t->nbytes - o.left), (unsigned long long)t->nbytes);
        pos = t->offset + t->nbytes;
    }
    if (!st && fsync(fd) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !st)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!st && rename(tmp, path) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: cannot rename into place: %s", path, strerror(errno));
    if (st) {
        unlink(tmp);
    } else {
        /* make the rename durable; some file systems refuse, harmlessly */
        char *d = strdup(path);
        if (d) {
            int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
            free(d);
        }
    }
    free(tmp);
    return st;
}
