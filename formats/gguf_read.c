/* gguf_read.c - a validating GGUF v3 reader over a read-only mapping
 * (format in gguf.h). Every length is checked against what is left of the
 * file before anything is read through it. */
#include "formats/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/ggml_blocks.h"

typedef struct gkv {
    char *key;
    moec_gguf_type type;
    moec_gguf_type elem; /* arrays */
    uint64_t count;      /* arrays */
    uint64_t pos;        /* file offset of the value (after the type; arrays: of the first element) */
    uint64_t *str_pos;   /* string arrays: offset of each element's length field */
} gkv;

struct moec_gguf {
    const unsigned char *base;
    size_t size;
    char *path;
    uint32_t version;
    size_t alignment;
    uint64_t data_off;
    size_t n_kv, n_tensors;
    gkv *kv;
    moec_gguf_tensor *tensors;
};

static const size_t scalar_size[MOEC_GGUF_TYPE_COUNT] = {
    [MOEC_GGUF_U8] = 1, [MOEC_GGUF_I8] = 1, [MOEC_GGUF_U16] = 2, [MOEC_GGUF_I16] = 2,
    [MOEC_GGUF_U32] = 4, [MOEC_GGUF_I32] = 4, [MOEC_GGUF_F32] = 4, [MOEC_GGUF_BOOL] = 1,
    [MOEC_GGUF_U64] = 8, [MOEC_GGUF_I64] = 8, [MOEC_GGUF_F64] = 8};

uint64_t moec_gguf_tensor_bytes(int type, int n_dims, const int64_t *ne)
{
    if (n_dims < 1 || n_dims > 4)
        return 0;
    uint64_t rows = 1;
    for (int i = 1; i < n_dims; i++) {
        if (ne[i] < 1 || __builtin_mul_overflow(rows, (uint64_t)ne[i], &rows))
            return 0;
    }
    if (ne[0] < 1)
        return 0;
    uint64_t row;
    if (type == MOEC_GGML_F32 || type == MOEC_GGML_F16 || type == MOEC_GGML_BF16) {
        if (__builtin_mul_overflow((uint64_t)ne[0], type == MOEC_GGML_F32 ? 4u : 2u, &row))
            return 0;
    } else {
        const moec_gblock gb = moec_gblock_from_ggml(type);
        if (gb == MOEC_GB_NONE)
            return 0;
        const moec_gblock_traits *tr = moec_gblock_info(gb);
        if (ne[0] % tr->block)
            return 0;
        row = (uint64_t)(ne[0] / tr->block) * (uint64_t)tr->bytes;
    }
    uint64_t total;
    if (__builtin_mul_overflow(row, rows, &total) || total > (uint64_t)INT64_MAX)
        return 0;
    return total;
}

const char *moec_gguf_type_name(int type)
{
    if (type == MOEC_GGML_F32)
        return "F32";
    if (type == MOEC_GGML_F16)
        return "F16";
    if (type == MOEC_GGML_BF16)
        return "BF16";
    const moec_gblock_traits *tr = moec_gblock_info(moec_gblock_from_ggml(type));
    return tr ? tr->name : "?";
}

/* ---- parsing ----------------------------------------------------------- */

typedef struct cur {
    const moec_gguf *g;
    uint64_t pos;
} cur;

static uint64_t ld(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static moec_status need(cur *c, uint64_t n, const char *what, moec_err *err)
{
    if (c->pos > c->g->size || n > c->g->size - c->pos)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: %s at offset %llu runs past the end of the file (%zu bytes)",
                            c->g->path, what, (unsigned long long)c->pos, c->g->size);
    return MOEC_OK;
}

static moec_status rd(cur *c, int n, uint64_t *v, const char *what, moec_err *err)
{
    moec_status st = need(c, (uint64_t)n, what, err);
    if (st)
        return st;
    *v = ld(c->g->base + c->pos, n);
    c->pos += (uint64_t)n;
    return MOEC_OK;
}

/* A string: its bytes' offset and length. */
static moec_status rd_str(cur *c, uint64_t *at, uint64_t *len, const char *what, moec_err *err)
{
    moec_status st = rd(c, 8, len, what, err);
    if (st || (st = need(c, *len, what, err)))
        return st;
    *at = c->pos;
    c->pos += *len;
    return MOEC_OK;
}

static char *dup_bytes(const unsigned char *p, uint64_t n)
{
    char *s = malloc((size_t)n + 1);
    if (s) {
        memcpy(s, p, (size_t)n);
        s[n] = '\0';
    }
    return s;
}

static moec_status parse_kv(moec_gguf *g, cur *c, gkv *kv, moec_err *err)
{
    uint64_t at, len, t;
    moec_status st = rd_str(c, &at, &len, "a metadata key", err);
    if (st)
        return st;
    if (len == 0 || memchr(g->base + at, '\0', (size_t)len))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: metadata key at offset %llu is empty or holds a NUL byte",
                            g->path, (unsigned long long)at);
    if (!(kv->key = dup_bytes(g->base + at, len)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    if ((st = rd(c, 4, &t, "a value type", err)))
        return st;
    if (t >= MOEC_GGUF_TYPE_COUNT)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: key '%s' has unknown value type %llu", g->path, kv->key,
                            (unsigned long long)t);
    kv->type = (moec_gguf_type)t;
    if (kv->type == MOEC_GGUF_STRING) {
        kv->pos = c->pos;
        return rd_str(c, &at, &len, kv->key, err);
    }
    if (kv->type != MOEC_GGUF_ARRAY) {
        kv->pos = c->pos;
        if ((st = need(c, scalar_size[t], kv->key, err)))
            return st;
        if (kv->type == MOEC_GGUF_BOOL && g->base[c->pos] > 1)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: key '%s': bool value %u", g->path, kv->key,
                                g->base[c->pos]);
        c->pos += scalar_size[t];
        return MOEC_OK;
    }
    uint64_t et, n;
    if ((st = rd(c, 4, &et, kv->key, err)) || (st = rd(c, 8, &n, kv->key, err)))
        return st;
    if (et >= MOEC_GGUF_TYPE_COUNT || et == MOEC_GGUF_ARRAY)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: key '%s': array of %s element type %llu", g->path, kv->key,
                            et == MOEC_GGUF_ARRAY ? "nested (unsupported)" : "unknown", (unsigned long long)et);
    kv->elem = (moec_gguf_type)et;
    kv->count = n;
    kv->pos = c->pos;
    if (kv->elem != MOEC_GGUF_STRING) {
        uint64_t bytes;
        if (__builtin_mul_overflow(n, (uint64_t)scalar_size[et], &bytes) || (st = need(c, bytes, kv->key, err)))
            return st ? st : moec_err_set(err, MOEC_ERR_FORMAT, "%s: key '%s': array too large", g->path, kv->key);
        c->pos += bytes;
        return MOEC_OK;
    }
    /* each string needs at least its 8-byte length */
    if (n > (g->size - c->pos) / 8)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: key '%s': %llu strings cannot fit in the file", g->path,
                            kv->key, (unsigned long long)n);
    if (!(kv->str_pos = malloc((size_t)(n ? n : 1) * sizeof *kv->str_pos)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for %llu strings", (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        kv->str_pos[i] = c->pos;
        if ((st = rd_str(c, &at, &len, kv->key, err)))
            return st;
    }
    return MOEC_OK;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const moec_gguf_tensor *const *)a)->name, (*(const moec_gguf_tensor *const *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const moec_gguf_tensor *x = *(const moec_gguf_tensor *const *)a, *y = *(const moec_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static moec_status parse(moec_gguf *g, moec_err *err)
{
    cur c = {g, 0};
    uint64_t v, nt, nkv;
    moec_status st;
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: not a GGUF file (bad magic)", g->path);
    c.pos = 4;
    if ((st = rd(&c, 4, &v, "the version", err)))
        return st;
    if (v != 2 && v != 3)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "%s: GGUF version %llu (this reader reads 2 and 3)", g->path,
                            (unsigned long long)v);
    g->version = (uint32_t)v;
    if ((st = rd(&c, 8, &nt, "the tensor count", err)) || (st = rd(&c, 8, &nkv, "the metadata count", err)))
        return st;
    /* a key-value pair takes at least 13 bytes, a tensor description 28 */
    if (nkv > g->size / 13 || nt > g->size / 28)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: %llu tensors and %llu metadata entries cannot fit in %zu bytes",
                            g->path, (unsigned long long)nt, (unsigned long long)nkv, g->size);
    if (!(g->kv = calloc((size_t)(nkv ? nkv : 1), sizeof *g->kv)) ||
        !(g->tensors = calloc((size_t)(nt ? nt : 1), sizeof *g->tensors)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < nkv; i++) {
        g->n_kv = (size_t)i + 1;
        if ((st = parse_kv(g, &c, &g->kv[i], err)))
            return st;
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(g->kv[j].key, g->kv[i].key) == 0)
                return moec_err_set(err, MOEC_ERR_FORMAT, "%s: metadata key '%s' appears twice", g->path,
                                    g->kv[i].key);
    }
    g->alignment = MOEC_GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = moec_gguf_find_kv(g, "general.alignment");
    if (ai >= 0) {
        uint32_t a;
        if (!moec_gguf_get_u32(g, "general.alignment", &a) || a == 0 || (a & (a - 1)))
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: general.alignment must be a u32 power of two", g->path);
        g->alignment = a;
    }
    for (uint64_t i = 0; i < nt; i++) {
        moec_gguf_tensor *t = &g->tensors[i];
        g->n_tensors = (size_t)i + 1;
        uint64_t at, len, nd, ty;
        if ((st = rd_str(&c, &at, &len, "a tensor name", err)))
            return st;
        if (len == 0 || len >= 64 || memchr(g->base + at, '\0', (size_t)len))
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor %llu: name of %llu bytes (1..63, no NUL)", g->path,
                                (unsigned long long)i, (unsigned long long)len);
        if (!(t->name = dup_bytes(g->base + at, len)))
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        if ((st = rd(&c, 4, &nd, t->name, err)))
            return st;
        if (nd < 1 || nd > 4)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s': %llu dimensions (1..4)", g->path, t->name,
                                (unsigned long long)nd);
        t->n_dims = (int)nd;
        for (int k = 0; k < 4; k++) {
            t->ne[k] = 1;
            if (k < t->n_dims) {
                uint64_t e;
                if ((st = rd(&c, 8, &e, t->name, err)))
                    return st;
                if (e < 1 || e > (uint64_t)INT64_MAX)
                    return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s': dimension %d is %llu", g->path,
                                        t->name, k, (unsigned long long)e);
                t->ne[k] = (int64_t)e;
            }
        }
        if ((st = rd(&c, 4, &ty, t->name, err)) || (st = rd(&c, 8, &t->offset, t->name, err)))
            return st;
        t->type = (int)ty;
        t->nbytes = moec_gguf_tensor_bytes(t->type, t->n_dims, t->ne);
        if (t->nbytes == 0)
            return moec_err_set(err, ty > 64 ? MOEC_ERR_FORMAT : MOEC_ERR_UNSUPPORTED,
                                "%s: tensor '%s': type %llu (%s) with ne[0] = %lld is not one moec reads", g->path,
                                t->name, (unsigned long long)ty, moec_gguf_type_name(t->type), (long long)t->ne[0]);
        if (t->offset % g->alignment)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s': offset %llu is not a multiple of %zu",
                                g->path, t->name, (unsigned long long)t->offset, g->alignment);
    }
    g->data_off = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (nt > 0 && g->data_off > g->size)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: the tensor data would start past the end of the file",
                            g->path);
    const moec_gguf_tensor **ord = malloc((size_t)(nt ? nt : 1) * sizeof *ord);
    if (!ord)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < g->n_tensors; i++)
        ord[i] = &g->tensors[i];
    qsort(ord, g->n_tensors, sizeof *ord, cmp_name);
    for (size_t i = 1; i < g->n_tensors && !st; i++)
        if (strcmp(ord[i - 1]->name, ord[i]->name) == 0)
            st = moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensor '%s' appears twice", g->path, ord[i]->name);
    qsort(ord, g->n_tensors, sizeof *ord, cmp_offset);
    const uint64_t avail = g->size - (nt > 0 ? g->data_off : 0);
    for (size_t i = 0; i < g->n_tensors && !st; i++) {
        const moec_gguf_tensor *t = ord[i];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            st = moec_err_set(err, MOEC_ERR_FORMAT,
                              "%s: tensor '%s': %llu bytes at data offset %llu run past the end of the file "
                              "(truncated?)",
                              g->path, t->name, (unsigned long long)t->nbytes, (unsigned long long)t->offset);
        else if (i > 0 && ord[i - 1]->offset + ord[i - 1]->nbytes > t->offset)
            st = moec_err_set(err, MOEC_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", g->path, ord[i - 1]->name,
                              t->name);
    }
    free(ord);
    for (size_t i = 0; i < g->n_tensors && !st; i++)
        g->tensors[i].data = g->base + g->data_off + g->tensors[i].offset;
    return st;
}

moec_status moec_gguf_open(const char *path, moec_gguf **out, moec_err *err)
{
    *out = NULL;
    moec_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    moec_status st = MOEC_OK;
    if (fd < 0 || fstat(fd, &sb) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = moec_err_set(err, MOEC_ERR_IO, "%s: not a regular file", path);
    else if (sb.st_size == 0)
        st = moec_err_set(err, MOEC_ERR_FORMAT, "%s: empty file, not a GGUF model", path);
    else {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            st = moec_err_set(err, MOEC_ERR_IO, "%s: mmap: %s", path, strerror(errno));
        else {
            g->base = p;
            g->size = (size_t)sb.st_size;
        }
    }
    if (fd >= 0)
        close(fd);
    if (!st)
        st = parse(g, err);
    if (st) {
        moec_gguf_close(g);
        return st;
    }
    *out = g;
    return MOEC_OK;
}

void moec_gguf_close(moec_gguf *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str_pos);
    }
    for (size_t i = 0; i < g->n_tensors; i++)
        free((char *)g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->base)
        munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

/* ---- accessors ---------------------------------------------------------- */

uint32_t moec_gguf_version(const moec_gguf *g) { return g->version; }
size_t moec_gguf_alignment(const moec_gguf *g) { return g->alignment; }
uint64_t moec_gguf_data_offset(const moec_gguf *g) { return g->data_off; }
size_t moec_gguf_kv_count(const moec_gguf *g) { return g->n_kv; }
const char *moec_gguf_kv_key(const moec_gguf *g, size_t i) { return i < g->n_kv ? g->kv[i].key : NULL; }
moec_gguf_type moec_gguf_kv_type(const moec_gguf *g, size_t i) { return g->kv[i].type; }

int64_t moec_gguf_find_kv(const moec_gguf *g, const char *key)
{
    for (size_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0)
            return (int64_t)i;
    return -1;
}

static const gkv *find_typed(const moec_gguf *g, const char *key, moec_gguf_type t)
{
    int64_t i = moec_gguf_find_kv(g, key);
    return i >= 0 && g->kv[i].type == t ? &g->kv[i] : NULL;
}

bool moec_gguf_get_u32(const moec_gguf *g, const char *key, uint32_t *v)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_U32);
    if (kv)
        *v = (uint32_t)ld(g->base + kv->pos, 4);
    return kv != NULL;
}

bool moec_gguf_get_i32(const moec_gguf *g, const char *key, int32_t *v)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_I32);
    if (kv)
        *v = (int32_t)(uint32_t)ld(g->base + kv->pos, 4);
    return kv != NULL;
}

bool moec_gguf_get_u64(const moec_gguf *g, const char *key, uint64_t *v)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_U64);
    if (kv)
        *v = ld(g->base + kv->pos, 8);
    return kv != NULL;
}

bool moec_gguf_get_f32(const moec_gguf *g, const char *key, float *v)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_F32);
    if (kv) {
        uint32_t u = (uint32_t)ld(g->base + kv->pos, 4);
        memcpy(v, &u, sizeof *v);
    }
    return kv != NULL;
}

bool moec_gguf_get_bool(const moec_gguf *g, const char *key, bool *v)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_BOOL);
    if (kv)
        *v = g->base[kv->pos] != 0;
    return kv != NULL;
}

bool moec_gguf_get_str(const moec_gguf *g, const char *key, const char **s, size_t *len)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_STRING);
    if (kv) {
        *len = (size_t)ld(g->base + kv->pos, 8);
        *s = (const char *)g->base + kv->pos + 8;
    }
    return kv != NULL;
}

bool moec_gguf_get_arr(const moec_gguf *g, const char *key, moec_gguf_type *elem, uint64_t *count)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_ARRAY);
    if (kv) {
        *elem = kv->elem;
        *count = kv->count;
    }
    return kv != NULL;
}

bool moec_gguf_arr_get(const moec_gguf *g, const char *key, uint64_t i, void *out)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_ARRAY);
    if (!kv || kv->elem == MOEC_GGUF_STRING || i >= kv->count)
        return false;
    const size_t es = scalar_size[kv->elem];
    memcpy(out, g->base + kv->pos + i * es, es);
    return true;
}

bool moec_gguf_arr_str(const moec_gguf *g, const char *key, uint64_t i, const char **s, size_t *len)
{
    const gkv *kv = find_typed(g, key, MOEC_GGUF_ARRAY);
    if (!kv || kv->elem != MOEC_GGUF_STRING || i >= kv->count)
        return false;
    *len = (size_t)ld(g->base + kv->str_pos[i], 8);
    *s = (const char *)g->base + kv->str_pos[i] + 8;
    return true;
}

size_t moec_gguf_tensor_count(const moec_gguf *g) { return g->n_tensors; }

const moec_gguf_tensor *moec_gguf_tensor_at(const moec_gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const moec_gguf_tensor *moec_gguf_find_tensor(const moec_gguf *g, const char *name)
{
    for (size_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}
