/* pretokenize.c - tokenizer.json pre-tokenizers: cut normalized text into
 * the pieces the BPE model sees. Split (and the pre-tokenizers that are
 * splits on a fixed pattern: Digits, Whitespace, WhitespaceSplit,
 * CharDelimiterSplit, Punctuation), ByteLevel and Metaspace; a Sequence is
 * flattened into one list of steps when loading. */
#include "tokenizer/tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is set. */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef enum { PT_SPLIT, PT_BYTELEVEL, PT_METASPACE } pt_kind;

typedef enum {
    B_REMOVED, B_ISOLATED, B_MERGED_WITH_PREVIOUS, B_MERGED_WITH_NEXT, B_CONTIGUOUS
} behavior;

typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

typedef struct pt_step {
    pt_kind kind;
    tok_regex rx;          /* Split pattern, ByteLevel's GPT-2 regex, Metaspace's replacement */
    behavior behavior;     /* Split */
    bool invert;           /* Split */
    bool add_prefix_space; /* ByteLevel */
    bool use_regex;        /* ByteLevel; Metaspace: split */
    char rep[4];           /* Metaspace replacement, UTF-8 */
    int rep_len;
    prepend_scheme prepend;
} pt_step;

struct tok_pretok {
    pt_step *v;
    size_t n, cap;
};

void tok_pretok_free(tok_pretok *pt)
{
    if (!pt)
        return;
    for (size_t i = 0; i < pt->n; i++)
        tok_regex_free(&pt->v[i].rx);
    free(pt->v);
    free(pt);
}

static moec_status add_step(tok_pretok *pt, pt_step *st, const char *where, moec_err *err)
{
    if (pt->n == pt->cap) {
        size_t c = pt->cap ? pt->cap * 2 : 4;
        pt_step *v = realloc(pt->v, c * sizeof *v);
        if (!v) {
            tok_regex_free(&st->rx);
            return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
        }
        pt->v = v;
        pt->cap = c;
    }
    pt->v[pt->n++] = *st;
    return MOEC_OK;
}

static moec_status parse_behavior(const cJSON *j, const char *where, bool required, behavior dflt,
                                  behavior *out, moec_err *err)
{
    static const char *names[] = { "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                   "Contiguous" };
    const char *s;
    moec_status st = tok_json_str(j, "behavior", where, required, &s, err);
    if (st)
        return st;
    *out = dflt;
    if (!s)
        return MOEC_OK;
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (behavior)i;
            return MOEC_OK;
        }
    }
    return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                        "%s.behavior: unknown split behavior '%s' (expected Removed, Isolated, "
                        "MergedWithPrevious, MergedWithNext or Contiguous)",
                        where, s);
}

/* A split on a fixed regex (the pre-tokenizers HF defines by a character
 * predicate; a one-character regex gives the same one-character matches). */
static moec_status fixed_split(pt_step *step, const char *pattern, bool literal, behavior b,
                               bool invert, const char *where, moec_err *err)
{
    step->kind = PT_SPLIT;
    step->behavior = b;
    step->invert = invert;
    return tok_regex_compile(&step->rx, pattern, literal, where, err);
}

static moec_status parse_metaspace(const cJSON *j, const char *where, pt_step *step, moec_err *err)
{
    uint32_t rep;
    bool add_prefix_space = true, have_aps = false, split;
    const char *scheme;
    moec_status st;
    if ((st = tok_json_char(j, "replacement", where, false, 0x2581, &rep, err)) ||
        (st = tok_json_str(j, "prepend_scheme", where, false, &scheme, err)) ||
        (st = tok_json_bool(j, "split", where, true, &split, err)))
        return st;
    const cJSON *aps = cJSON_GetObjectItemCaseSensitive(j, "add_prefix_space");
    if (aps && !cJSON_IsNull(aps)) {
        if ((st = tok_json_bool(j, "add_prefix_space", where, true, &add_prefix_space, err)))
            return st;
        have_aps = true;
    }
    step->kind = PT_METASPACE;
    step->use_regex = split;
    step->rep_len = tok_utf8_put(step->rep, rep);
    step->prepend = PREPEND_ALWAYS;
    if (scheme) {
        if (strcmp(scheme, "always") == 0)
            step->prepend = PREPEND_ALWAYS;
        else if (strcmp(scheme, "first") == 0)
            step->prepend = PREPEND_FIRST;
        else if (strcmp(scheme, "never") == 0)
            step->prepend = PREPEND_NEVER;
        else
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s.prepend_scheme: expected always, first or never, found '%s'",
                                where, scheme);
    }
    /* files from before prepend_scheme existed say add_prefix_space */
    if (have_aps && !add_prefix_space) {
        if (scheme && step->prepend != PREPEND_NEVER)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: add_prefix_space false contradicts prepend_scheme '%s'", where,
                                scheme);
        step->prepend = PREPEND_NEVER;
    }
    char pat[8];
    memcpy(pat, step->rep, (size_t)step->rep_len);
    pat[step->rep_len] = '\0';
    return tok_regex_compile(&step->rx, pat, true, where, err);
}

/* One non-Sequence component (tok_json_steps walks the Sequences). */
static moec_status parse_step(void *ctx, const cJSON *j, const char *type, const char *where,
                              moec_err *err)
{
    tok_pretok *pt = ctx;
    moec_status st;
    pt_step step;
    memset(&step, 0, sizeof step);
    if (strcmp(type, "Split") == 0) {
        step.kind = PT_SPLIT;
        if ((st = parse_behavior(j, where, true, B_ISOLATED, &step.behavior, err)) ||
            (st = tok_json_bool(j, "invert", where, false, &step.invert, err)) ||
            (st = tok_json_pattern(j, "pattern", where, &step.rx, err)))
            return st;
    } else if (strcmp(type, "ByteLevel") == 0) {
        step.kind = PT_BYTELEVEL;
        if ((st = tok_json_bool(j, "add_prefix_space", where, true, &step.add_prefix_space, err)) ||
            (st = tok_json_bool(j, "use_regex", where, true, &step.use_regex, err)))
            return st;
        if (step.use_regex && (st = tok_regex_compile(&step.rx, GPT2_REGEX, false, where, err)))
            return st;
    } else if (strcmp(type, "Metaspace") == 0) {
        if ((st = parse_metaspace(j, where, &step, err)))
            return st;
    } else if (strcmp(type, "Digits") == 0) {
        bool individual;
        if ((st = tok_json_bool(j, "individual_digits", where, false, &individual, err)) ||
            (st = fixed_split(&step, "\\p{N}", false, individual ? B_ISOLATED : B_CONTIGUOUS,
                              false, where, err)))
            return st;
    } else if (strcmp(type, "Whitespace") == 0) {
        if ((st = fixed_split(&step, "\\w+|[^\\w\\s]+", false, B_REMOVED, true, where, err)))
            return st;
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        if ((st = fixed_split(&step, "[\\s\\x{85}]", false, B_REMOVED, false, where, err)))
            return st;
    } else if (strcmp(type, "CharDelimiterSplit") == 0) {
        uint32_t d;
        char pat[8];
        if ((st = tok_json_char(j, "delimiter", where, true, 0, &d, err)))
            return st;
        pat[tok_utf8_put(pat, d)] = '\0';
        if ((st = fixed_split(&step, pat, true, B_REMOVED, false, where, err)))
            return st;
    } else if (strcmp(type, "Punctuation") == 0) {
        behavior b;
        if ((st = parse_behavior(j, where, false, B_ISOLATED, &b, err)) ||
            (st = fixed_split(&step, "[\\p{P}!-/:-@\\[-`{-~]", false, b, false, where, err)))
            return st;
    } else {
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s.type: unsupported pre-tokenizer '%s' (supported: Split, ByteLevel, "
                            "Metaspace, Digits, Whitespace, WhitespaceSplit, CharDelimiterSplit, "
                            "Punctuation, Sequence)",
                            where, type);
    }
    return add_step(pt, &step, where, err);
}

moec_status tok_pretok_parse(const cJSON *j, const char *where, tok_pretok **out, moec_err *err)
{
    *out = NULL;
    if (!j || cJSON_IsNull(j))
        return MOEC_OK;
    tok_pretok *pt = calloc(1, sizeof *pt);
    if (!pt)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
    moec_status st = tok_json_steps(j, where, "pretokenizers", parse_step, pt, err);
    if (st) {
        tok_pretok_free(pt);
        return st;
    }
    *out = pt;
    return MOEC_OK;
}

/* Turns the match / non-match spans in sc into the pieces a split behavior
 * keeps, in place; on return spans [*first, sc->nspans) are the pieces and
 * a span's match flag means "drop it". Mirrors HF's NormalizedString::split. */
static void apply_behavior(tok_rx_scratch *sc, behavior b, bool invert, size_t *first)
{
    tok_span *s = sc->spans;
    size_t n = sc->nspans, w = 0;
    bool prev = false;
    if (invert)
        for (size_t i = 0; i < n; i++)
            s[i].match = !s[i].match;
    *first = 0;
    switch (b) {
    case B_REMOVED:
        return;
    case B_ISOLATED:
        for (size_t i = 0; i < n; i++)
            s[i].match = false;
        return;
    case B_CONTIGUOUS:
    case B_MERGED_WITH_PREVIOUS:
        for (size_t r = 0; r < n; r++) {
            bool m = s[r].match;
            bool merge = b == B_CONTIGUOUS ? m == prev : (m && !prev);
            if (merge && w > 0) {
                s[w - 1].end = s[r].end;
            } else {
                s[w] = s[r];
                s[w++].match = false;
            }
            prev = m;
        }
        sc->nspans = w;
        return;
    case B_MERGED_WITH_NEXT:
        w = n;
        for (size_t r = n; r-- > 0;) {
            bool m = s[r].match;
            if (m && !prev && w < n) {
                s[w].start = s[r].start;
            } else {
                s[--w] = s[r];
                s[w].match = false;
            }
            prev = m;
        }
        *first = w;
        return;
    }
}

static moec_status oom(moec_err *err)
{
    return moec_err_set(err, MOEC_ERR_NOMEM, "pre-tokenizer: out of memory");
}

/* Splits s (from a piece) with the step's pattern and behavior and appends
 * the resulting pieces, mapped to the byte-level alphabet if asked. */
static moec_status split_into(const pt_step *step, behavior b, bool invert, bool bytelevel,
                              const char *s, size_t n, bool at_start, tok_pieces *out,
                              tok_rx_scratch *sc, moec_err *err)
{
    moec_status st = tok_regex_spans(&step->rx, sc, s, n, err);
    if (st)
        return st;
    size_t first;
    apply_behavior(sc, b, invert, &first);
    for (size_t i = first; i < sc->nspans; i++) {
        const tok_span *sp = &sc->spans[i];
        if (sp->match || sp->end == sp->start)
            continue;
        bool piece_start = at_start && sp->start == 0;
        if (!bytelevel) {
            if (!tok_pieces_add(out, s + sp->start, sp->end - sp->start, piece_start))
                return oom(err);
            continue;
        }
        size_t start = out->text.len;
        if (!tok_buf_reserve(&out->text, 2 * (sp->end - sp->start)))
            return oom(err);
        for (size_t k = sp->start; k < sp->end; k++)
            out->text.len += (size_t)tok_bytelevel_char((uint8_t)s[k], out->text.p + out->text.len);
        if (!tok_pieces_commit(out, start, piece_start))
            return oom(err);
    }
    return MOEC_OK;
}

static moec_status run_bytelevel(const pt_step *step, const char *s, size_t n, bool at_start,
                                 tok_pieces *out, tok_buf *tmp, tok_rx_scratch *sc, moec_err *err)
{
    if (step->add_prefix_space && (n == 0 || s[0] != ' ')) {
        tmp->len = 0;
        if (!tok_buf_put(tmp, " ", 1) || !tok_buf_put(tmp, s, n))
            return oom(err);
        s = tmp->p;
        n = tmp->len;
    }
    if (step->use_regex)
        return split_into(step, B_ISOLATED, false, true, s, n, at_start, out, sc, err);
    size_t start = out->text.len;
    if (!tok_buf_reserve(&out->text, 2 * n))
        return oom(err);
    for (size_t k = 0; k < n; k++)
        out->text.len += (size_t)tok_bytelevel_char((uint8_t)s[k], out->text.p + out->text.len);
    return tok_pieces_commit(out, start, at_start) ? MOEC_OK : oom(err);
}

static moec_status run_metaspace(const pt_step *step, const char *s, size_t n, bool at_start,
                                 tok_pieces *out, tok_buf *tmp, tok_rx_scratch *sc, moec_err *err)
{
    size_t rl = (size_t)step->rep_len;
    tmp->len = 0;
    if (!tok_buf_reserve(tmp, n * rl + rl))
        return oom(err);
    for (size_t k = 0; k < n; k++) {
        if (s[k] == ' ')
            tok_buf_put(tmp, step->rep, rl);
        else
            tok_buf_put(tmp, s + k, 1);
    }
    bool starts = tmp->len >= rl && memcmp(tmp->p, step->rep, rl) == 0;
    bool prepend = step->prepend == PREPEND_ALWAYS || (step->prepend == PREPEND_FIRST && at_start);
    if (prepend && !starts) {
        memmove(tmp->p + rl, tmp->p, tmp->len);
        memcpy(tmp->p, step->rep, rl);
        tmp->len += rl;
    }
    if (step->use_regex)
        return split_into(step, B_MERGED_WITH_NEXT, false, false, tmp->p, tmp->len, at_start, out,
                          sc, err);
    return tok_pieces_add(out, tmp->p, tmp->len, at_start) ? MOEC_OK : oom(err);
}

moec_status tok_pretok_apply(const tok_pretok *pt, tok_pieces **io, tok_pieces **spare,
                             tok_rx_scratch *sc, moec_err *err)
{
    if (!pt)
        return MOEC_OK;
    tok_buf tmp = { 0 };
    moec_status st = MOEC_OK;
    for (size_t k = 0; k < pt->n && !st; k++) {
        const pt_step *step = &pt->v[k];
        tok_pieces *in = *io, *out = *spare;
        tok_pieces_clear(out);
        for (size_t i = 0; i < in->n && !st; i++) {
            const char *s = tok_piece_str(in, i);
            size_t n = in->v[i].len;
            bool at_start = in->v[i].at_start;
            switch (step->kind) {
            case PT_SPLIT:
                st = split_into(step, step->behavior, step->invert, false, s, n, at_start, out, sc,
                                err);
                break;
            case PT_BYTELEVEL:
                st = run_bytelevel(step, s, n, at_start, out, &tmp, sc, err);
                break;
            case PT_METASPACE:
                st = run_metaspace(step, s, n, at_start, out, &tmp, sc, err);
                break;
            }
        }
        *io = out;
        *spare = in;
    }
    tok_buf_free(&tmp);
    return st;
}
