/* regex.c - the patterns of tokenizer.json (Split, Replace): PCRE2 in UTF +
 * UCP mode for {"Regex": ...}, plain byte search for {"String": ...}, and
 * HF's rule for turning matches into spans that cover the text. */
#include "tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

moec_status tok_regex_compile(tok_regex *rx, const char *pat, bool literal, const char *where,
                              moec_err *err)
{
    memset(rx, 0, sizeof *rx);
    if (literal) {
        rx->lit_len = strlen(pat);
        rx->lit = malloc(rx->lit_len + 1);
        if (!rx->lit)
            return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
        memcpy(rx->lit, pat, rx->lit_len + 1);
        return MOEC_OK;
    }
    int code;
    PCRE2_SIZE at;
    rx->code = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                             &at, NULL);
    if (!rx->code) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            strcpy((char *)msg, "unknown error");
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: bad regex at offset %zu: %s", where,
                            (size_t)at, (const char *)msg);
    }
    /* JIT makes the split regex several times faster; the interpreter is
     * the fallback where JIT is unavailable. Fuzzing builds use the
     * interpreter: compiling machine code for every tokenizer loaded (and a
     * JIT stack mapped for every encode) would take most of their time. */
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    (void)pcre2_jit_compile(rx->code, PCRE2_JIT_COMPLETE);
#endif
    return MOEC_OK;
}

void tok_regex_free(tok_regex *rx)
{
    if (rx->code)
        pcre2_code_free(rx->code);
    free(rx->lit);
    memset(rx, 0, sizeof *rx);
}

void tok_rx_scratch_free(tok_rx_scratch *sc)
{
    if (sc->md)
        pcre2_match_data_free(sc->md);
    if (sc->mc)
        pcre2_match_context_free(sc->mc);
    if (sc->js)
        pcre2_jit_stack_free(sc->js);
    free(sc->spans);
    memset(sc, 0, sizeof *sc);
}

static bool push_span(tok_rx_scratch *sc, size_t start, size_t end, bool match)
{
    if (sc->nspans == sc->cap) {
        size_t c = sc->cap ? sc->cap * 2 : 64;
        tok_span *v = realloc(sc->spans, c * sizeof *v);
        if (!v)
            return false;
        sc->spans = v;
        sc->cap = c;
    }
    sc->spans[sc->nspans++] = (tok_span){ start, end, match };
    return true;
}

static moec_status ensure_match_data(tok_rx_scratch *sc, moec_err *err)
{
    if (sc->md)
        return MOEC_OK;
    /* one ovector pair: only the whole match is needed */
    sc->md = pcre2_match_data_create(1, NULL);
    sc->mc = pcre2_match_context_create(NULL);
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    sc->js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (!sc->js)
        return moec_err_set(err, MOEC_ERR_NOMEM, "regex match: out of memory");
    pcre2_jit_stack_assign(sc->mc, NULL, sc->js);
#endif
    if (!sc->md || !sc->mc)
        return moec_err_set(err, MOEC_ERR_NOMEM, "regex match: out of memory");
    return MOEC_OK;
}

/* Next match at or after pos: 1 with [*ms, *me), 0 when there is none. */
static int next_match(const tok_regex *rx, tok_rx_scratch *sc, const char *s, size_t n, size_t pos,
                      size_t *ms, size_t *me, moec_err *err)
{
    if (!rx->code) {
        if (rx->lit_len == 0 || n - pos < rx->lit_len)
            return 0;
        const char *hit = memmem(s + pos, n - pos, rx->lit, rx->lit_len);
        if (!hit)
            return 0;
        *ms = (size_t)(hit - s);
        *me = *ms + rx->lit_len;
        return 1;
    }
    /* the text was validated once as UTF-8; checking it again on every
     * call would make splitting quadratic */
    int rc = pcre2_match(rx->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, sc->md, sc->mc);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(rc, msg, sizeof msg) < 0)
            strcpy((char *)msg, "unknown error");
        moec_err_set(err, MOEC_ERR_INTERNAL, "regex match failed at byte %zu: %s", pos,
                     (const char *)msg);
        return -1;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
    if (ov[1] < ov[0] || ov[1] > n) {
        moec_err_set(err, MOEC_ERR_UNSUPPORTED, "regex match at byte %zu ends before it starts (\\K?)",
                     pos);
        return -1;
    }
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

moec_status tok_regex_spans(const tok_regex *rx, tok_rx_scratch *sc, const char *s, size_t n,
                            moec_err *err)
{
    sc->nspans = 0;
    if (n == 0)
        return push_span(sc, 0, 0, false) ? MOEC_OK
                                          : moec_err_set(err, MOEC_ERR_NOMEM, "regex split: out of memory");
    if (rx->code) {
        moec_status st = ensure_match_data(sc, err);
        if (st)
            return st;
    }
    size_t pos = 0, prev = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (pos <= n) {
        size_t ms, me;
        int r = next_match(rx, sc, s, n, pos, &ms, &me, err);
        if (r < 0)
            return err ? err->code : MOEC_ERR_INTERNAL;
        if (r == 0)
            break;
        /* an empty match right where the previous one ended is skipped and
         * the search moves one character on (Rust / Oniguruma iteration) */
        if (ms == me && have_last && me == last_end) {
            if (pos >= n)
                break;
            int cl;
            tok_utf8_get(s + pos, &cl);
            pos += (size_t)cl;
            continue;
        }
        if (prev != ms && !push_span(sc, prev, ms, false))
            return moec_err_set(err, MOEC_ERR_NOMEM, "regex split: out of memory");
        if (!push_span(sc, ms, me, true))
            return moec_err_set(err, MOEC_ERR_NOMEM, "regex split: out of memory");
        prev = me;
        pos = me;
        have_last = true;
        last_end = me;
    }
    if (prev != n) {
        if (!push_span(sc, prev, n, false))
            return moec_err_set(err, MOEC_ERR_NOMEM, "regex split: out of memory");
    }
    return MOEC_OK;
}
