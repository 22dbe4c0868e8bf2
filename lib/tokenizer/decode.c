/* decode.c - tokenizer.json decoders: turn token strings back into text.
 * Like HF, each step maps a list of strings to a list of strings and the
 * result is their concatenation; a Sequence is flattened when loading. */
#include "tokenizer/tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { D_BYTELEVEL, D_METASPACE, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_BPE } d_kind;

typedef struct d_step {
    d_kind kind;
    tok_regex rx;     /* Replace */
    char *text;       /* Replace: content; BPEDecoder: suffix */
    size_t text_len;
    char rep[4];      /* Metaspace replacement; Strip content */
    int rep_len;
    bool strip_first; /* Metaspace: prepend_scheme is not "never" */
    long start, stop; /* Strip */
} d_step;

struct tok_decoder {
    d_step *v;
    size_t n, cap;
};

void tok_decoder_free(tok_decoder *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        tok_regex_free(&d->v[i].rx);
        free(d->v[i].text);
    }
    free(d->v);
    free(d);
}

static moec_status add_step(tok_decoder *d, d_step *st, const char *where, moec_err *err)
{
    if (d->n == d->cap) {
        size_t c = d->cap ? d->cap * 2 : 4;
        d_step *v = realloc(d->v, c * sizeof *v);
        if (!v) {
            tok_regex_free(&st->rx);
            free(st->text);
            return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
        }
        d->v = v;
        d->cap = c;
    }
    d->v[d->n++] = *st;
    return MOEC_OK;
}

static moec_status copy_text(const char *s, d_step *step, const char *where, moec_err *err)
{
    step->text_len = strlen(s);
    step->text = malloc(step->text_len + 1);
    if (!step->text)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
    memcpy(step->text, s, step->text_len + 1);
    return MOEC_OK;
}

static moec_status parse_metaspace(const cJSON *j, const char *where, d_step *step, moec_err *err)
{
    uint32_t rep;
    const char *scheme;
    bool aps;
    moec_status st;
    if ((st = tok_json_char(j, "replacement", where, false, 0x2581, &rep, err)) ||
        (st = tok_json_str(j, "prepend_scheme", where, false, &scheme, err)) ||
        (st = tok_json_bool(j, "add_prefix_space", where, true, &aps, err)))
        return st;
    if (scheme && strcmp(scheme, "always") && strcmp(scheme, "first") && strcmp(scheme, "never"))
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s.prepend_scheme: expected always, first or never, found '%s'", where,
                            scheme);
    step->kind = D_METASPACE;
    step->rep_len = tok_utf8_put(step->rep, rep);
    step->strip_first = scheme ? strcmp(scheme, "never") != 0 : aps;
    return MOEC_OK;
}

/* One non-Sequence component (tok_json_steps walks the Sequences). */
static moec_status parse_step(void *ctx, const cJSON *j, const char *type, const char *where,
                              moec_err *err)
{
    tok_decoder *d = ctx;
    moec_status st;
    d_step step;
    memset(&step, 0, sizeof step);
    if (strcmp(type, "ByteLevel") == 0) {
        step.kind = D_BYTELEVEL;
    } else if (strcmp(type, "Metaspace") == 0) {
        if ((st = parse_metaspace(j, where, &step, err)))
            return st;
    } else if (strcmp(type, "ByteFallback") == 0) {
        step.kind = D_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        step.kind = D_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        uint32_t c;
        step.kind = D_STRIP;
        if ((st = tok_json_char(j, "content", where, true, ' ', &c, err)) ||
            (st = tok_json_uint(j, "start", where, 0, 1L << 30, &step.start, err)) ||
            (st = tok_json_uint(j, "stop", where, 0, 1L << 30, &step.stop, err)))
            return st;
        step.rep_len = tok_utf8_put(step.rep, c);
    } else if (strcmp(type, "Replace") == 0) {
        const char *c;
        step.kind = D_REPLACE;
        if ((st = tok_json_str(j, "content", where, true, &c, err)) ||
            (st = tok_json_pattern(j, "pattern", where, &step.rx, err)))
            return st;
        if ((st = copy_text(c, &step, where, err))) {
            tok_regex_free(&step.rx);
            return st;
        }
    } else if (strcmp(type, "BPEDecoder") == 0) {
        const char *suffix;
        step.kind = D_BPE;
        if ((st = tok_json_str(j, "suffix", where, false, &suffix, err)) ||
            (st = copy_text(suffix ? suffix : "</w>", &step, where, err)))
            return st;
    } else {
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s.type: unsupported decoder '%s' (supported: ByteLevel, Metaspace, "
                            "Replace, ByteFallback, Fuse, Strip, BPEDecoder, Sequence)",
                            where, type);
    }
    return add_step(d, &step, where, err);
}

moec_status tok_decoder_parse(const cJSON *j, const char *where, tok_decoder **out, moec_err *err)
{
    *out = NULL;
    if (!j || cJSON_IsNull(j))
        return MOEC_OK;
    tok_decoder *d = calloc(1, sizeof *d);
    if (!d)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
    moec_status st = tok_json_steps(j, where, "decoders", parse_step, d, err);
    if (st) {
        tok_decoder_free(d);
        return st;
    }
    *out = d;
    return MOEC_OK;
}

/* ---- one token, one step ---- */

/* Byte-level characters back to bytes; a token holding any other
 * character (an added token such as "<|im start|>") is kept as it is. */
static bool bytelevel_token(const char *s, size_t n, tok_buf *out)
{
    size_t start = out->len;
    if (!tok_buf_reserve(out, n))
        return false;
    for (size_t i = 0; i < n;) {
        int cl;
        int b = tok_bytelevel_byte(tok_utf8_get(s + i, &cl));
        if (b < 0) {
            out->len = start;
            return tok_buf_put(out, s, n);
        }
        out->p[out->len++] = (char)b;
        i += (size_t)cl;
    }
    return true;
}

/* Occurrences of rep become with (which may be empty). */
static bool replace_literal(const char *s, size_t n, const char *rep, size_t rl, const char *with,
                            size_t wl, tok_buf *out)
{
    size_t i = 0;
    while (i < n) {
        const char *hit = rl ? memmem(s + i, n - i, rep, rl) : NULL;
        size_t end = hit ? (size_t)(hit - s) : n;
        if (!tok_buf_put(out, s + i, end - i))
            return false;
        if (!hit)
            break;
        if (!tok_buf_put(out, with, wl))
            return false;
        i = end + rl;
    }
    return true;
}

static moec_status replace_token(const d_step *st, const char *s, size_t n, tok_buf *out,
                                 tok_rx_scratch *sc, moec_err *err)
{
    if (!st->rx.code)
        return replace_literal(s, n, st->rx.lit, st->rx.lit_len, st->text, st->text_len, out)
                   ? MOEC_OK
                   : moec_err_set(err, MOEC_ERR_NOMEM, "decoder: out of memory");
    moec_status r = tok_regex_spans(&st->rx, sc, s, n, err);
    if (r)
        return r;
    for (size_t i = 0; i < sc->nspans; i++) {
        const tok_span *sp = &sc->spans[i];
        bool ok = sp->match ? tok_buf_put(out, st->text, st->text_len)
                            : tok_buf_put(out, s + sp->start, sp->end - sp->start);
        if (!ok)
            return moec_err_set(err, MOEC_ERR_NOMEM, "decoder: out of memory");
    }
    return MOEC_OK;
}

/* <0xNN> -> the byte, else -1. */
static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = (c >= '0' && c <= '9') ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Strip's per-token trimming of up to start / stop copies of a character. */
static void strip_token(const d_step *st, const char *s, size_t *a, size_t *b)
{
    size_t rl = (size_t)st->rep_len;
    for (long k = 0; k < st->start && *b - *a >= rl && memcmp(s + *a, st->rep, rl) == 0; k++)
        *a += rl;
    for (long k = 0; k < st->stop && *b - *a >= rl && memcmp(s + *b - rl, st->rep, rl) == 0; k++)
        *b -= rl;
}

/* ---- the whole token list ---- */

static moec_status oom(moec_err *err)
{
    return moec_err_set(err, MOEC_ERR_NOMEM, "decoder: out of memory");
}

/* ByteFallback: runs of <0xNN> tokens become their bytes when those form
 * valid UTF-8, else one U+FFFD per byte. */
static moec_status flush_bytes(tok_buf *bytes, tok_pieces *out, moec_err *err)
{
    if (!bytes->len)
        return MOEC_OK;
    bool ok;
    if (tok_utf8_check(bytes->p, bytes->len) == bytes->len) {
        ok = tok_pieces_add(out, bytes->p, bytes->len, false);
    } else {
        ok = true;
        for (size_t k = 0; k < bytes->len && ok; k++)
            ok = tok_pieces_add(out, "\xEF\xBF\xBD", 3, false);
    }
    bytes->len = 0;
    return ok ? MOEC_OK : oom(err);
}

static moec_status run_step(const d_step *st, const tok_pieces *in, tok_pieces *out,
                            tok_rx_scratch *sc, moec_err *err)
{
    moec_status r = MOEC_OK;
    tok_buf bytes = { 0 };
    if (st->kind == D_BYTELEVEL || st->kind == D_FUSE) {
        tok_buf raw = { 0 };
        bool ok = true;
        for (size_t i = 0; i < in->n && ok; i++)
            ok = st->kind == D_FUSE ? tok_buf_put(&raw, tok_piece_str(in, i), in->v[i].len)
                                    : bytelevel_token(tok_piece_str(in, i), in->v[i].len, &raw);
        size_t start = out->text.len;
        ok = ok && (st->kind == D_FUSE ? tok_buf_put(&out->text, raw.p, raw.len)
                                       : tok_utf8_lossy(&out->text, raw.p, raw.len));
        ok = ok && tok_pieces_commit(out, start, false);
        tok_buf_free(&raw);
        return ok ? MOEC_OK : oom(err);
    }
    for (size_t i = 0; i < in->n && !r; i++) {
        const char *s = tok_piece_str(in, i);
        size_t n = in->v[i].len, start = out->text.len;
        bool ok = true;
        switch (st->kind) {
        case D_METASPACE:
            ok = replace_literal(s, n, st->rep, (size_t)st->rep_len, " ",
                                 (i == 0 && st->strip_first) ? 0 : 1, &out->text);
            break;
        case D_REPLACE:
            r = replace_token(st, s, n, &out->text, sc, err);
            break;
        case D_BYTEFALLBACK: {
            int b = byte_token(s, n);
            if (b >= 0) {
                char c = (char)b;
                if (!tok_buf_put(&bytes, &c, 1))
                    r = oom(err);
                continue;
            }
            r = flush_bytes(&bytes, out, err);
            start = out->text.len;
            ok = tok_buf_put(&out->text, s, n);
            break;
        }
        case D_STRIP: {
            size_t a = 0, b = n;
            strip_token(st, s, &a, &b);
            ok = tok_buf_put(&out->text, s + a, b - a);
            break;
        }
        case D_BPE:
            ok = replace_literal(s, n, st->text, st->text_len, " ", i + 1 == in->n ? 0 : 1,
                                 &out->text);
            break;
        case D_BYTELEVEL:
        case D_FUSE:
            break;
        }
        if (!r && !ok)
            r = oom(err);
        /* a token emptied here keeps its place in the list: Metaspace
         * looks at the first token and BPEDecoder at the last */
        if (!r && !tok_pieces_commit_keep(out, start))
            r = oom(err);
    }
    if (!r && st->kind == D_BYTEFALLBACK)
        r = flush_bytes(&bytes, out, err);
    tok_buf_free(&bytes);
    return r;
}

moec_status tok_decoder_apply(const tok_decoder *d, tok_pieces **io, tok_pieces **spare,
                              tok_rx_scratch *sc, moec_err *err)
{
    for (size_t k = 0; d && k < d->n; k++) {
        tok_pieces_clear(*spare);
        moec_status st = run_step(&d->v[k], *io, *spare, sc, err);
        if (st)
            return st;
        tok_pieces *t = *io;
        *io = *spare;
        *spare = t;
    }
    return MOEC_OK;
}

moec_status tok_decoder_token(const tok_decoder *d, const char *s, size_t n, tok_buf *out,
                              tok_rx_scratch *sc, moec_err *err)
{
    tok_buf a = { 0 }, b = { 0 };
    tok_buf *cur = &a, *next = &b;
    moec_status st = MOEC_OK;
    if (!tok_buf_put(cur, s, n))
        st = oom(err);
    for (size_t k = 0; d && k < d->n && !st; k++) {
        const d_step *step = &d->v[k];
        bool ok = true;
        next->len = 0;
        switch (step->kind) {
        case D_BYTELEVEL:
            ok = bytelevel_token(cur->p, cur->len, next);
            break;
        case D_METASPACE:
            ok = replace_literal(cur->p, cur->len, step->rep, (size_t)step->rep_len, " ", 1, next);
            break;
        case D_REPLACE:
            /* a regex must not see the bytes of a partial character */
            if (step->rx.code && tok_utf8_check(cur->p, cur->len) != cur->len)
                ok = tok_buf_put(next, cur->p, cur->len);
            else
                st = replace_token(step, cur->p, cur->len, next, sc, err);
            break;
        case D_BYTEFALLBACK: {
            int v = byte_token(cur->p, cur->len);
            char c = (char)v;
            ok = v >= 0 ? tok_buf_put(next, &c, 1) : tok_buf_put(next, cur->p, cur->len);
            break;
        }
        case D_BPE:
            ok = replace_literal(cur->p, cur->len, step->text, step->text_len, " ", 1, next);
            break;
        case D_FUSE:
        case D_STRIP:
            ok = tok_buf_put(next, cur->p, cur->len);
            break;
        }
        if (!st && !ok)
            st = oom(err);
        tok_buf *t = cur;
        cur = next;
        next = t;
    }
    if (!st && !tok_buf_put(out, cur->p, cur->len))
        st = oom(err);
    tok_buf_free(&a);
    tok_buf_free(&b);
    return st;
}
