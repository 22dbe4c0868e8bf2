/* added_tokens.c - tokens listed in "added_tokens" (special ones such as
 * <|endoftext|> and plain additions). They are cut out of the text before
 * normalization (normalized = false) or right after it (normalized = true),
 * taking the leftmost match and the longest one there, as HF's
 * leftmost-longest Aho-Corasick does; lstrip / rstrip absorb neighbouring
 * whitespace, single_word refuses matches inside a word. */
#include "tokenizer/tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tok_added_free(tok_added *a)
{
    for (size_t i = 0; i < a->n; i++) {
        if (a->v[i].match != a->v[i].content)
            free(a->v[i].match);
        free(a->v[i].content);
    }
    free(a->v);
    for (int p = 0; p < 2; p++)
        for (int b = 0; b < 256; b++)
            free(a->by_byte[p][b]);
    memset(a, 0, sizeof *a);
}

moec_status tok_added_parse(const cJSON *arr, const char *where, tok_added *out, moec_err *err)
{
    memset(out, 0, sizeof *out);
    if (!arr || cJSON_IsNull(arr))
        return MOEC_OK;
    if (!cJSON_IsArray(arr))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: expected an array", where);
    size_t count = (size_t)cJSON_GetArraySize(arr);
    out->v = calloc(count ? count : 1, sizeof *out->v);
    if (!out->v)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, arr) {
        char path[256];
        tok_json_path(path, sizeof path, where, NULL, i++);
        if (!cJSON_IsObject(it))
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s: expected an object", path);
        tok_added_token t = { 0 };
        const char *content;
        long id;
        moec_status st;
        if ((st = tok_json_str(it, "content", path, true, &content, err)) ||
            (st = tok_json_uint(it, "id", path, -1, TOK_MAX_ID - 1, &id, err)) ||
            (st = tok_json_bool(it, "special", path, false, &t.special, err)) ||
            (st = tok_json_bool(it, "single_word", path, false, &t.single_word, err)) ||
            (st = tok_json_bool(it, "lstrip", path, false, &t.lstrip, err)) ||
            (st = tok_json_bool(it, "rstrip", path, false, &t.rstrip, err)) ||
            (st = tok_json_bool(it, "normalized", path, !t.special, &t.normalized, err)))
            return st;
        if (id < 0)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s.id: missing", path);
        if (!*content)
            continue; /* HF ignores empty added tokens */
        t.id = (int32_t)id;
        t.len = strlen(content);
        t.content = malloc(t.len + 1);
        if (!t.content)
            return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
        memcpy(t.content, content, t.len + 1);
        t.match = t.content;
        t.match_len = t.len;
        out->v[out->n++] = t;
    }
    return MOEC_OK;
}

moec_status tok_added_prepare(tok_added *a, const tok_normalizer *nz, moec_err *err)
{
    tok_buf out = { 0 }, tmp = { 0 };
    tok_rx_scratch sc = { 0 };
    moec_status st = MOEC_OK;
    for (size_t i = 0; i < a->n && !st; i++) {
        tok_added_token *t = &a->v[i];
        if (!t->normalized || !nz)
            continue;
        st = tok_normalizer_apply(nz, t->content, t->len, &out, &tmp, &sc, err);
        if (st) {
            moec_err_prefix(err, "added token '%.64s'", t->content);
            break;
        }
        char *m = malloc(out.len + 1);
        if (!m) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "added tokens: out of memory");
            break;
        }
        memcpy(m, out.p, out.len);
        m[out.len] = '\0';
        t->match = m;
        t->match_len = out.len;
    }
    tok_buf_free(&out);
    tok_buf_free(&tmp);
    tok_rx_scratch_free(&sc);
    if (st)
        return st;

    for (size_t i = 0; i < a->n; i++) {
        const tok_added_token *t = &a->v[i];
        if (t->match_len == 0)
            continue;
        int p = t->normalized ? 1 : 0;
        uint8_t b = (uint8_t)t->match[0];
        uint32_t *v = realloc(a->by_byte[p][b], (a->by_byte_n[p][b] + 1) * sizeof *v);
        if (!v)
            return moec_err_set(err, MOEC_ERR_NOMEM, "added tokens: out of memory");
        a->by_byte[p][b] = v;
        /* keep each list longest first, so the first hit is the longest */
        size_t k = a->by_byte_n[p][b]++;
        while (k > 0 && a->v[v[k - 1]].match_len < t->match_len) {
            v[k] = v[k - 1];
            k--;
        }
        v[k] = (uint32_t)i;
    }
    return MOEC_OK;
}

/* Whether the character that ends s[0, end) / starts s[start, n) is \w. */
static bool word_before(const char *s, size_t end)
{
    if (end == 0)
        return false;
    size_t k = end - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    int cl;
    return tok_is_word(tok_utf8_get(s + k, &cl));
}

static bool word_after(const char *s, size_t start, size_t n)
{
    if (start >= n)
        return false;
    int cl;
    return tok_is_word(tok_utf8_get(s + start, &cl));
}

static bool push_seg(tok_seg **segs, size_t *nseg, size_t *cap, size_t off, size_t len, int32_t id)
{
    if (len == 0 && id < 0)
        return true;
    if (*nseg == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        tok_seg *v = realloc(*segs, c * sizeof *v);
        if (!v)
            return false;
        *segs = v;
        *cap = c;
    }
    (*segs)[(*nseg)++] = (tok_seg){ off, len, id };
    return true;
}

bool tok_added_split(const tok_added *a, bool normalized_pass, const char *s, size_t n,
                     tok_seg **segs, size_t *nseg, size_t *cap)
{
    int p = normalized_pass ? 1 : 0;
    size_t done = 0; /* text before this is already in segments */
    size_t i = 0;
    while (i < n) {
        uint8_t b = (uint8_t)s[i];
        const tok_added_token *hit = NULL;
        for (uint32_t k = 0; k < a->by_byte_n[p][b]; k++) {
            const tok_added_token *t = &a->v[a->by_byte[p][b][k]];
            if (t->match_len <= n - i && memcmp(s + i, t->match, t->match_len) == 0) {
                hit = t;
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        size_t start = i, stop = i + hit->match_len;
        if (hit->single_word && (word_before(s, start) || word_after(s, stop, n))) {
            i = stop; /* the matcher moves past a refused match, as HF's does */
            continue;
        }
        if (hit->lstrip) {
            while (start > done) {
                size_t k = start - 1;
                while (k > done && ((unsigned char)s[k] & 0xC0) == 0x80)
                    k--;
                int cl;
                if (!tok_is_space(tok_utf8_get(s + k, &cl)))
                    break;
                start = k;
            }
        }
        if (hit->rstrip) {
            while (stop < n) {
                int cl;
                if (!tok_is_space(tok_utf8_get(s + stop, &cl)))
                    break;
                stop += (size_t)cl;
            }
        }
        if (!push_seg(segs, nseg, cap, done, start - done, -1) ||
            !push_seg(segs, nseg, cap, start, stop - start, hit->id))
            return false;
        done = stop;
        i = stop;
    }
    return push_seg(segs, nseg, cap, done, n - done, -1);
}
