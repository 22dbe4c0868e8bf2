/* normalize.c - tokenizer.json normalizers. A Sequence is flattened into one
 * list of steps when loading; applying it runs the steps in order, each
 * reading the previous result and writing a fresh string. */
#include "tokenizer/tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

typedef enum {
    NZ_NFC, NZ_NFD, NZ_NFKC, NZ_NFKD, NZ_LOWERCASE, NZ_REPLACE, NZ_PREPEND, NZ_STRIP,
    NZ_STRIP_ACCENTS
} nz_kind;

typedef struct nz_step {
    nz_kind kind;
    tok_regex rx;      /* Replace */
    char *text;        /* Replace: content; Prepend: prefix */
    size_t text_len;
    bool left, right;  /* Strip */
} nz_step;

struct tok_normalizer {
    nz_step *v;
    size_t n, cap;
};

void tok_normalizer_free(tok_normalizer *nz)
{
    if (!nz)
        return;
    for (size_t i = 0; i < nz->n; i++) {
        tok_regex_free(&nz->v[i].rx);
        free(nz->v[i].text);
    }
    free(nz->v);
    free(nz);
}

static moec_status add_step(tok_normalizer *nz, nz_step st, const char *where, moec_err *err)
{
    if (nz->n == nz->cap) {
        size_t c = nz->cap ? nz->cap * 2 : 4;
        nz_step *v = realloc(nz->v, c * sizeof *v);
        if (!v) {
            tok_regex_free(&st.rx);
            free(st.text);
            return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
        }
        nz->v = v;
        nz->cap = c;
    }
    nz->v[nz->n++] = st;
    return MOEC_OK;
}

static moec_status copy_text(const char *s, char **out, size_t *len, const char *where, moec_err *err)
{
    *len = strlen(s);
    *out = malloc(*len + 1);
    if (!*out)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
    memcpy(*out, s, *len + 1);
    return MOEC_OK;
}

/* One non-Sequence component (tok_json_steps walks the Sequences). */
static moec_status parse_step(void *ctx, const cJSON *j, const char *type, const char *where,
                              moec_err *err)
{
    tok_normalizer *nz = ctx;
    moec_status st;
    nz_step step = { 0 };
    if (strcmp(type, "NFC") == 0) {
        step.kind = NZ_NFC;
    } else if (strcmp(type, "NFD") == 0) {
        step.kind = NZ_NFD;
    } else if (strcmp(type, "NFKC") == 0) {
        step.kind = NZ_NFKC;
    } else if (strcmp(type, "NFKD") == 0) {
        step.kind = NZ_NFKD;
    } else if (strcmp(type, "Lowercase") == 0) {
        step.kind = NZ_LOWERCASE;
    } else if (strcmp(type, "StripAccents") == 0) {
        step.kind = NZ_STRIP_ACCENTS;
    } else if (strcmp(type, "Strip") == 0) {
        step.kind = NZ_STRIP;
        if ((st = tok_json_bool(j, "strip_left", where, true, &step.left, err)) ||
            (st = tok_json_bool(j, "strip_right", where, true, &step.right, err)))
            return st;
    } else if (strcmp(type, "Prepend") == 0) {
        const char *p;
        step.kind = NZ_PREPEND;
        if ((st = tok_json_str(j, "prepend", where, true, &p, err)) ||
            (st = copy_text(p, &step.text, &step.text_len, where, err)))
            return st;
    } else if (strcmp(type, "Replace") == 0) {
        const char *c;
        step.kind = NZ_REPLACE;
        if ((st = tok_json_str(j, "content", where, true, &c, err)))
            return st;
        if ((st = tok_json_pattern(j, "pattern", where, &step.rx, err)))
            return st;
        if ((st = copy_text(c, &step.text, &step.text_len, where, err))) {
            tok_regex_free(&step.rx);
            return st;
        }
    } else {
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s.type: unsupported normalizer '%s' (supported: NFC, NFD, NFKC, NFKD, "
                            "Lowercase, Replace, Prepend, Strip, StripAccents, Sequence)",
                            where, type);
    }
    return add_step(nz, step, where, err);
}

moec_status tok_normalizer_parse(const cJSON *j, const char *where, tok_normalizer **out,
                                 moec_err *err)
{
    *out = NULL;
    if (!j || cJSON_IsNull(j))
        return MOEC_OK;
    tok_normalizer *nz = calloc(1, sizeof *nz);
    if (!nz)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
    moec_status st = tok_json_steps(j, where, "normalizers", parse_step, nz, err);
    if (st) {
        tok_normalizer_free(nz);
        return st;
    }
    *out = nz;
    return MOEC_OK;
}

static moec_status unicode_run(const char *s, size_t n, utf8proc_option_t opt, tok_buf *out,
                               moec_err *err)
{
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      opt | UTF8PROC_STABLE);
    if (r < 0)
        return moec_err_set(err, r == UTF8PROC_ERROR_NOMEM ? MOEC_ERR_NOMEM : MOEC_ERR_ARG,
                            "unicode normalization: %s", utf8proc_errmsg(r));
    bool ok = tok_buf_put(out, dst, (size_t)r);
    free(dst);
    return ok ? MOEC_OK : moec_err_set(err, MOEC_ERR_NOMEM, "normalizer: out of memory");
}

/* NFC / NFD / NFKC / NFKD. Every form leaves ASCII alone and nothing
 * composes with a following ASCII character, so only the non-ASCII runs,
 * each with the one ASCII character before it (a starter that a combining
 * mark may compose with, as '<' + U+0338), go through utf8proc; mostly-ASCII
 * text such as code then costs little more than a copy. */
static moec_status unicode_form(const char *s, size_t n, utf8proc_option_t opt, tok_buf *out,
                                moec_err *err)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && (unsigned char)s[j] < 0x80)
            j++;
        size_t run = j == n || j == i ? j : j - 1;
        if (!tok_buf_put(out, s + i, run - i))
            return moec_err_set(err, MOEC_ERR_NOMEM, "normalizer: out of memory");
        if (j == n)
            break;
        size_t k = j;
        while (k < n && (unsigned char)s[k] >= 0x80)
            k++;
        moec_status st = unicode_run(s + run, k - run, opt, out, err);
        if (st)
            return st;
        i = k;
    }
    return MOEC_OK;
}

/* Per-character rewriting: Lowercase (full mapping, so U+0130 becomes
 * "i" + U+0307 as in Rust's char::to_lowercase) and StripAccents. */
static bool map_chars(nz_kind kind, const char *s, size_t n, tok_buf *out)
{
    if (!tok_buf_reserve(out, n))
        return false;
    for (size_t i = 0; i < n;) {
        int cl;
        uint32_t c = tok_utf8_get(s + i, &cl);
        char enc[8];
        int el = 0;
        if (kind == NZ_LOWERCASE) {
            if (c == 0x130) {
                el = tok_utf8_put(enc, 'i');
                el += tok_utf8_put(enc + el, 0x307);
            } else {
                el = tok_utf8_put(enc, (uint32_t)utf8proc_tolower((utf8proc_int32_t)c));
            }
        } else {
            utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
            if (cat != UTF8PROC_CATEGORY_MN && cat != UTF8PROC_CATEGORY_MC &&
                cat != UTF8PROC_CATEGORY_ME) {
                memcpy(enc, s + i, (size_t)cl);
                el = cl;
            }
        }
        if (!tok_buf_put(out, enc, (size_t)el))
            return false;
        i += (size_t)cl;
    }
    return true;
}

static bool strip(const nz_step *stp, const char *s, size_t n, tok_buf *out)
{
    size_t a = 0, b = n;
    if (stp->left) {
        while (a < b) {
            int cl;
            if (!tok_is_space(tok_utf8_get(s + a, &cl)))
                break;
            a += (size_t)cl;
        }
    }
    if (stp->right) {
        while (b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80)
                k--;
            int cl;
            if (!tok_is_space(tok_utf8_get(s + k, &cl)))
                break;
            b = k;
        }
    }
    return tok_buf_put(out, s + a, b - a);
}

static moec_status replace(const nz_step *stp, const char *s, size_t n, tok_buf *out,
                           tok_rx_scratch *sc, moec_err *err)
{
    moec_status st = tok_regex_spans(&stp->rx, sc, s, n, err);
    if (st)
        return st;
    for (size_t i = 0; i < sc->nspans; i++) {
        const tok_span *sp = &sc->spans[i];
        bool ok = sp->match ? tok_buf_put(out, stp->text, stp->text_len)
                            : tok_buf_put(out, s + sp->start, sp->end - sp->start);
        if (!ok)
            return moec_err_set(err, MOEC_ERR_NOMEM, "normalizer Replace: out of memory");
    }
    return MOEC_OK;
}

static moec_status apply_step(const nz_step *stp, const char *s, size_t n, tok_buf *out,
                              tok_rx_scratch *sc, moec_err *err)
{
    bool ok = true;
    switch (stp->kind) {
    case NZ_NFC: return unicode_form(s, n, UTF8PROC_COMPOSE, out, err);
    case NZ_NFD: return unicode_form(s, n, UTF8PROC_DECOMPOSE, out, err);
    case NZ_NFKC: return unicode_form(s, n, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out, err);
    case NZ_NFKD: return unicode_form(s, n, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out, err);
    case NZ_REPLACE: return replace(stp, s, n, out, sc, err);
    case NZ_LOWERCASE:
    case NZ_STRIP_ACCENTS: ok = map_chars(stp->kind, s, n, out); break;
    case NZ_STRIP: ok = strip(stp, s, n, out); break;
    case NZ_PREPEND:
        if (n)
            ok = tok_buf_put(out, stp->text, stp->text_len);
        ok = ok && tok_buf_put(out, s, n);
        break;
    }
    return ok ? MOEC_OK : moec_err_set(err, MOEC_ERR_NOMEM, "normalizer: out of memory");
}

moec_status tok_normalizer_apply(const tok_normalizer *nz, const char *s, size_t n, tok_buf *out,
                                 tok_buf *tmp, tok_rx_scratch *sc, moec_err *err)
{
    out->len = 0;
    if (!nz || nz->n == 0)
        return tok_buf_put(out, s, n) ? MOEC_OK
                                      : moec_err_set(err, MOEC_ERR_NOMEM, "normalizer: out of memory");
    /* steps alternate between the two buffers; the last one writes to out */
    tok_buf *bufs[2] = { out, tmp };
    int dst = (nz->n % 2) ? 0 : 1;
    const char *cur = s;
    size_t cur_n = n;
    for (size_t i = 0; i < nz->n; i++) {
        tok_buf *d = bufs[dst];
        d->len = 0;
        moec_status st = apply_step(&nz->v[i], cur, cur_n, d, sc, err);
        if (st)
            return st;
        cur = d->p;
        cur_n = d->len;
        dst ^= 1;
    }
    return MOEC_OK;
}
