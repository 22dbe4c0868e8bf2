/* stats_io.c - the statistics file (docs/stats.md): a checksummed header
 * with the model fingerprint and every size, then the arrays as one
 * zstd-compressed, checksummed payload. Reading validates everything before
 * it trusts a size, so a damaged file gives one line, never a crash. */
#include "calib/stats.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

#include "core/fsutil.h"

static const char magic[8] = {'M', 'O', 'E', 'C', 'S', 'T', 'A', 'T'};

/* Fixed part of the header; the layer table, source and domain names follow. */
enum {
    H_MAGIC = 0,
    H_VERSION = 8,
    H_HEADER_BYTES = 12,
    H_N_LAYERS = 16,
    H_N_DOMAINS = 20,
    H_ARCH = 24,
    H_D = 28,
    H_TOP_K = 32,
    H_EXPERT_FFN = 36,
    H_VOCAB = 40,
    H_SOURCE_LEN = 44,
    H_ROUTER_HASH = 48,
    H_TOKENS = 56,
    H_PAYLOAD_BYTES = 64,
    H_COMPRESSED_BYTES = 72,
    H_PAYLOAD_HASH = 80,
    H_COMPRESSED_HASH = 88,
    H_FIXED = 96
};

/* Limits that keep a corrupt header from asking for absurd allocations. */
#define MAX_EXPERTS 65536
#define MAX_D (1 << 20)
#define MAX_DOMAINS 4096
#define MAX_NAME 255
#define MAX_PAYLOAD ((uint64_t)1 << 40)
#define MAX_FILE ((size_t)1 << 40)

/* ---- little-endian encoding, independent of the host's byte order ---- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_f64(unsigned char *p, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    put_u64(p, u);
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static double get_f64(const unsigned char *p)
{
    uint64_t u = get_u64(p);
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* ---- sizes, shared by writer and reader ---- */

static size_t header_size(const moec_stats *s, size_t source_len)
{
    size_t n = H_FIXED + 4 * (size_t)s->n_layers + source_len;
    for (int i = 0; i < s->n_domains; i++)
        n += 4 + strnlen(s->domains[i], MAX_NAME);
    return n + 8;
}

/* Payload bytes implied by the shapes, or 0 when they exceed MAX_PAYLOAD. */
static uint64_t payload_size(moec_stats *s)
{
    uint64_t n = 8 * (uint64_t)s->n_domains;
    for (int l = 0; l < s->n_layers; l++) {
        moec_stats_array a[MOEC_STATS_N_ARRAYS];
        int na = moec_layer_stats_arrays(&s->layers[l], s->n_domains, a);
        n += 16;
        for (int i = 0; i < na; i++) {
            n += 8 * (uint64_t)a[i].len;
            if (n > MAX_PAYLOAD)
                return 0;
        }
    }
    return n;
}

/* ---- writing ---- */

moec_status moec_stats_save(const moec_stats *cs, const char *path, moec_err *err)
{
    moec_stats *s = (moec_stats *)cs; /* moec_layer_stats_arrays hands out writable pointers; only read here */
    if (s->n_layers <= 0 || s->n_layers > MOEC_MAX_LAYERS || s->n_domains < 0 || s->n_domains > MAX_DOMAINS)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: statistics with %d layers and %d domains cannot be saved", path,
                            s->n_layers, s->n_domains);
    const size_t source_len = strnlen(s->source, sizeof s->source - 1);
    const size_t hbytes = header_size(s, source_len);
    const uint64_t pbytes = payload_size(s);
    if (pbytes == 0 || pbytes > SIZE_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: statistics too large to save", path);

    unsigned char *payload = malloc((size_t)pbytes);
    if (!payload)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    unsigned char *p = payload;
    for (int i = 0; i < s->n_domains; i++, p += 8)
        put_f64(p, s->domain_tokens[i]);
    for (int l = 0; l < s->n_layers; l++) {
        moec_layer_stats *ls = &s->layers[l];
        put_f64(p, ls->tokens);
        put_f64(p + 8, ls->sim_tokens);
        p += 16;
        moec_stats_array a[MOEC_STATS_N_ARRAYS];
        int na = moec_layer_stats_arrays(ls, s->n_domains, a);
        for (int i = 0; i < na; i++)
            for (size_t j = 0; j < a[i].len; j++, p += 8)
                put_f64(p, (*a[i].p)[j]);
    }

    const size_t bound = ZSTD_compressBound((size_t)pbytes);
    unsigned char *file = malloc(hbytes + bound);
    if (!file) {
        free(payload);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t cbytes = ZSTD_compress(file + hbytes, bound, payload, (size_t)pbytes, 3);
    uint64_t phash = XXH3_64bits(payload, (size_t)pbytes);
    free(payload);
    if (ZSTD_isError(cbytes)) {
        free(file);
        return moec_err_set(err, MOEC_ERR_INTERNAL, "%s: zstd: %s", path, ZSTD_getErrorName(cbytes));
    }

    unsigned char *h = file;
    memcpy(h + H_MAGIC, magic, sizeof magic);
    put_u32(h + H_VERSION, MOEC_STATS_VERSION);
    put_u32(h + H_HEADER_BYTES, (uint32_t)hbytes);
    put_u32(h + H_N_LAYERS, (uint32_t)s->n_layers);
    put_u32(h + H_N_DOMAINS, (uint32_t)s->n_domains);
    put_u32(h + H_ARCH, (uint32_t)s->arch);
    put_u32(h + H_D, (uint32_t)s->d);
    put_u32(h + H_TOP_K, (uint32_t)s->top_k);
    put_u32(h + H_EXPERT_FFN, (uint32_t)s->expert_ffn);
    put_u32(h + H_VOCAB, (uint32_t)s->vocab);
    put_u32(h + H_SOURCE_LEN, (uint32_t)source_len);
    put_u64(h + H_ROUTER_HASH, s->router_hash);
    put_f64(h + H_TOKENS, s->tokens);
    put_u64(h + H_PAYLOAD_BYTES, pbytes);
    put_u64(h + H_COMPRESSED_BYTES, (uint64_t)cbytes);
    put_u64(h + H_PAYLOAD_HASH, phash);
    put_u64(h + H_COMPRESSED_HASH, XXH3_64bits(file + hbytes, cbytes));
    p = h + H_FIXED;
    for (int l = 0; l < s->n_layers; l++, p += 4)
        put_u32(p, (uint32_t)s->layers[l].n_experts);
    memcpy(p, s->source, source_len);
    p += source_len;
    for (int i = 0; i < s->n_domains; i++) {
        size_t len = strnlen(s->domains[i], MAX_NAME);
        put_u32(p, (uint32_t)len);
        memcpy(p + 4, s->domains[i], len);
        p += 4 + len;
    }
    put_u64(p, XXH3_64bits(h, hbytes - 8));

    moec_status st = moec_write_file(path, file, hbytes + cbytes, err);
    free(file);
    return st;
}

/* ---- reading ---- */

/* Fuzzing builds accept any checksum so that mutated inputs reach the
 * parsing behind it (the usual libFuzzer convention). */
static bool sum_ok(uint64_t stored, uint64_t computed)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    (void)stored;
    (void)computed;
    return true;
#else
    return stored == computed;
#endif
}

static moec_status corrupt(moec_err *err, const char *path, const char *what)
{
    return moec_err_set(err, MOEC_ERR_FORMAT, "%s: corrupt statistics file: %s", path, what);
}

/* Header fields into a fresh moec_stats, arrays not yet allocated; h has
 * been checked to hold hbytes with a valid header checksum. */
static moec_status parse_header(const unsigned char *h, size_t hbytes, const char *path, moec_stats **out,
                                moec_err *err)
{
    const uint32_t n_layers = get_u32(h + H_N_LAYERS), n_domains = get_u32(h + H_N_DOMAINS);
    const uint32_t d = get_u32(h + H_D), source_len = get_u32(h + H_SOURCE_LEN);
    if (n_layers == 0 || n_layers > MOEC_MAX_LAYERS)
        return corrupt(err, path, "layer count out of range");
    if (d == 0 || d > MAX_D)
        return corrupt(err, path, "hidden size out of range");
    if (n_domains > MAX_DOMAINS)
        return corrupt(err, path, "domain count out of range");
    if (source_len >= sizeof(((moec_stats *)0)->source))
        return corrupt(err, path, "source note too long");
    if (H_FIXED + 4 * (size_t)n_layers + source_len + 8 > hbytes)
        return corrupt(err, path, "header shorter than its tables");

    moec_stats *s = calloc(1, sizeof *s);
    if (!s)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    s->version = (int)get_u32(h + H_VERSION);
    s->arch = (int)get_u32(h + H_ARCH);
    s->n_layers = (int)n_layers;
    s->d = (int)d;
    s->top_k = (int)get_u32(h + H_TOP_K);
    s->expert_ffn = (int)get_u32(h + H_EXPERT_FFN);
    s->vocab = (int)get_u32(h + H_VOCAB);
    s->router_hash = get_u64(h + H_ROUTER_HASH);
    s->tokens = get_f64(h + H_TOKENS);
    moec_status st = MOEC_OK;
    s->layers = calloc(n_layers, sizeof *s->layers);
    if (!s->layers) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    const unsigned char *p = h + H_FIXED;
    for (uint32_t l = 0; l < n_layers; l++, p += 4) {
        uint32_t E = get_u32(p);
        if (E > MAX_EXPERTS) {
            st = corrupt(err, path, "expert count out of range");
            goto fail;
        }
        s->layers[l].n_experts = (int)E;
        s->layers[l].d = (int)d;
    }
    memcpy(s->source, p, source_len);
    s->source[source_len] = '\0';
    p += source_len;
    const unsigned char *end = h + hbytes - 8;
    if (n_domains > 0) {
        s->domains = calloc(n_domains, sizeof *s->domains);
        s->domain_tokens = calloc(n_domains, sizeof *s->domain_tokens);
        if (!s->domains || !s->domain_tokens) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        s->n_domains = (int)n_domains;
    }
    for (uint32_t i = 0; i < n_domains; i++) {
        uint32_t len = end - p >= 4 ? get_u32(p) : UINT32_MAX;
        if (len > MAX_NAME || (size_t)(end - p - 4) < len) {
            st = corrupt(err, path, "domain names run past the header");
            goto fail;
        }
        if (!(s->domains[i] = malloc(len + 1))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        memcpy(s->domains[i], p + 4, len);
        s->domains[i][len] = '\0';
        p += 4 + len;
    }
    if (p != end) {
        st = corrupt(err, path, "header size disagrees with its contents");
        goto fail;
    }
    *out = s;
    return MOEC_OK;
fail:
    moec_stats_free(s);
    return st;
}

/* Decompresses the one zstd frame of n bytes at src, which must yield
 * exactly want bytes, into a malloc'd buffer. The buffer grows only as
 * output actually appears, so a header that claims a huge payload costs
 * memory only when the compressed bytes really decode to it. */
static moec_status inflate_exact(const unsigned char *src, size_t n, size_t want, unsigned char **out,
                                 const char *path, moec_err *err)
{
    *out = NULL;
    ZSTD_DCtx *d = ZSTD_createDCtx();
    size_t cap = want < ((size_t)1 << 20) ? want : ((size_t)1 << 20);
    unsigned char *buf = malloc(cap ? cap : 1);
    if (!d || !buf) {
        ZSTD_freeDCtx(d);
        free(buf);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    }
    ZSTD_inBuffer in = {src, n, 0};
    ZSTD_outBuffer ob = {buf, cap, 0};
    moec_status st = MOEC_OK;
    for (;;) {
        size_t r = ZSTD_decompressStream(d, &ob, &in);
        if (ZSTD_isError(r)) {
            st = corrupt(err, path, "payload does not decompress");
            break;
        }
        if (r == 0)
            break; /* frame complete */
        if (ob.pos == ob.size) {
            if (cap == want) {
                st = corrupt(err, path, "payload decompresses to more than the header names");
                break;
            }
            cap = want - cap < cap ? want : 2 * cap;
            unsigned char *nb = realloc(buf, cap);
            if (!nb) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            buf = nb;
            ob.dst = buf;
            ob.size = cap;
        } else if (in.pos == in.size) {
            st = corrupt(err, path, "payload is truncated");
            break;
        }
    }
    if (!st && (ob.pos != want || in.pos != n))
        st = corrupt(err, path, "payload does not hold the size the header names");
    ZSTD_freeDCtx(d);
    if (st) {
        free(buf);
        return st;
    }
    *out = buf;
    return MOEC_OK;
}

/* Zeroed arrays, once the sizes they imply have been checked. */
static moec_status alloc_arrays(moec_stats *s, const char *path, moec_err *err)
{
    for (int l = 0; l < s->n_layers; l++) {
        moec_stats_array a[MOEC_STATS_N_ARRAYS];
        int na = moec_layer_stats_arrays(&s->layers[l], s->n_domains, a);
        for (int i = 0; i < na; i++) {
            if (a[i].len == 0)
                continue;
            *a[i].p = calloc(a[i].len, sizeof(double));
            if (!*a[i].p)
                return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for %s of layer %d", path, a[i].name,
                                    l);
        }
    }
    return MOEC_OK;
}

static void parse_payload(moec_stats *s, const unsigned char *p)
{
    for (int i = 0; i < s->n_domains; i++, p += 8)
        s->domain_tokens[i] = get_f64(p);
    for (int l = 0; l < s->n_layers; l++) {
        moec_layer_stats *ls = &s->layers[l];
        ls->tokens = get_f64(p);
        ls->sim_tokens = get_f64(p + 8);
        p += 16;
        moec_stats_array a[MOEC_STATS_N_ARRAYS];
        int na = moec_layer_stats_arrays(ls, s->n_domains, a);
        for (int i = 0; i < na; i++)
            for (size_t j = 0; j < a[i].len; j++, p += 8)
                (*a[i].p)[j] = get_f64(p);
    }
}

static moec_status load_buf(const unsigned char *buf, size_t size, const char *path, moec_stats **out, moec_err *err)
{
    if (size < sizeof magic) {
        if (memcmp(buf, magic, size) == 0)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: truncated statistics file (%zu bytes)", path, size);
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: not a moec statistics file (no MOECSTAT magic)", path);
    }
    if (memcmp(buf, magic, sizeof magic) != 0)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: not a moec statistics file (no MOECSTAT magic)", path);
    if (size < 16)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: truncated statistics file (%zu bytes)", path, size);
    /* Magic, version, header size and the header checksum in the last 8
     * header bytes keep their places in every version, so that damage is
     * told apart from a newer file before anything else is trusted. */
    const uint32_t hbytes = get_u32(buf + H_HEADER_BYTES);
    if (hbytes < 24)
        return corrupt(err, path, "header size out of range");
    if (hbytes > size)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: truncated statistics file (%zu bytes, header alone is %u)",
                            path, size, hbytes);
    if (!sum_ok(get_u64(buf + hbytes - 8), XXH3_64bits(buf, hbytes - 8)))
        return corrupt(err, path, "header checksum mismatch");
    const uint32_t version = get_u32(buf + H_VERSION);
    if (version > MOEC_STATS_VERSION)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s: statistics format version %u is newer than this moec reads (%d); update moec or "
                            "rerun moec-calib",
                            path, version, MOEC_STATS_VERSION);
    if (version == 0)
        return corrupt(err, path, "format version 0");
    if (hbytes < H_FIXED + 8)
        return corrupt(err, path, "header size out of range");
    const uint64_t pbytes = get_u64(buf + H_PAYLOAD_BYTES), cbytes = get_u64(buf + H_COMPRESSED_BYTES);
    if (cbytes > size - hbytes)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: truncated statistics file (%zu bytes, expected %llu)", path,
                            size, (unsigned long long)(hbytes + cbytes));
    if (cbytes < size - hbytes)
        return corrupt(err, path, "trailing bytes after the payload");

    moec_stats *s = NULL;
    moec_status st = parse_header(buf, hbytes, path, &s, err);
    if (st)
        return st;
    const uint64_t want = payload_size(s);
    if (want == 0 || want != pbytes || want > SIZE_MAX) {
        moec_stats_free(s);
        return corrupt(err, path, "payload size disagrees with the shapes in the header");
    }
    const unsigned char *cdata = buf + hbytes;
    /* zstd ignores some bits of its frame header: check the bytes as stored
     * too, so that any damage is reported, and before zstd reads them */
    if (!sum_ok(get_u64(buf + H_COMPRESSED_HASH), XXH3_64bits(cdata, (size_t)cbytes))) {
        moec_stats_free(s);
        return corrupt(err, path, "compressed payload checksum mismatch");
    }
    unsigned long long fsize = ZSTD_getFrameContentSize(cdata, (size_t)cbytes);
    if (fsize != pbytes) {
        moec_stats_free(s);
        return corrupt(err, path, "compressed payload does not hold the size the header names");
    }
    unsigned char *payload;
    if ((st = inflate_exact(cdata, (size_t)cbytes, (size_t)pbytes, &payload, path, err))) {
        moec_stats_free(s);
        return st;
    }
    if (!sum_ok(get_u64(buf + H_PAYLOAD_HASH), XXH3_64bits(payload, (size_t)pbytes))) {
        free(payload);
        moec_stats_free(s);
        return corrupt(err, path, "payload checksum mismatch");
    }
    if ((st = alloc_arrays(s, path, err))) {
        free(payload);
        moec_stats_free(s);
        return st;
    }
    parse_payload(s, payload);
    free(payload);
    *out = s;
    return MOEC_OK;
}

moec_status moec_stats_load_mem(moec_stats **out, const void *data, size_t size, const char *label,
                                moec_err *err)
{
    *out = NULL;
    if (!label)
        label = "<memory>";
    if (!data && size)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: NULL data", label);
    return load_buf(size ? data : (const unsigned char *)"", size, label, out, err);
}

moec_status moec_stats_load(moec_stats **out, const char *path, moec_err *err)
{
    *out = NULL;
    char *buf;
    size_t size;
    moec_status st = moec_read_file(path, MAX_FILE, &buf, &size, err);
    if (st)
        return st;
    st = load_buf((const unsigned char *)buf, size, path, out, err);
    free(buf);
    return st;
}
