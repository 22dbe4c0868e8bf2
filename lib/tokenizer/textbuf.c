/* textbuf.c - growable byte and id buffers, piece lists, and the UTF-8 and
 * character-class helpers the tokenizer stages share. */
#include "tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem)
            return false;
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

bool tok_buf_reserve(tok_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1)
        return false;
    /* one spare byte so that callers can NUL-terminate */
    return grow((void **)&b->p, &b->cap, b->len + extra + 1, 1);
}

bool tok_buf_put(tok_buf *b, const void *s, size_t n)
{
    if (!tok_buf_reserve(b, n))
        return false;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    return true;
}

void tok_buf_free(tok_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

bool tok_ids_put(tok_ids *ids, const int32_t *v, size_t n)
{
    if (n > SIZE_MAX - ids->n || !grow((void **)&ids->v, &ids->cap, ids->n + n, sizeof *ids->v))
        return false;
    if (n)
        memcpy(ids->v + ids->n, v, n * sizeof *v);
    ids->n += n;
    return true;
}

void tok_ids_free(tok_ids *ids)
{
    free(ids->v);
    memset(ids, 0, sizeof *ids);
}

void tok_pieces_clear(tok_pieces *p)
{
    p->n = 0;
    p->text.len = 0;
}

bool tok_pieces_commit(tok_pieces *p, size_t start, bool at_start)
{
    if (p->text.len == start)
        return true;
    if (!grow((void **)&p->v, &p->cap, p->n + 1, sizeof *p->v))
        return false;
    p->v[p->n++] = (tok_piece){ start, p->text.len - start, at_start };
    return true;
}

bool tok_pieces_commit_keep(tok_pieces *p, size_t start)
{
    if (!grow((void **)&p->v, &p->cap, p->n + 1, sizeof *p->v))
        return false;
    p->v[p->n++] = (tok_piece){ start, p->text.len - start, false };
    return true;
}

bool tok_pieces_add(tok_pieces *p, const char *s, size_t n, bool at_start)
{
    size_t start = p->text.len;
    return tok_buf_put(&p->text, s, n) && tok_pieces_commit(p, start, at_start);
}

void tok_pieces_free(tok_pieces *p)
{
    tok_buf_free(&p->text);
    free(p->v);
    memset(p, 0, sizeof *p);
}

/* Length of the valid prefix (0..3) of a multi-byte sequence at s and the
 * length the lead byte announces; the sequence is valid when they agree. */
static int utf8_valid_prefix(const unsigned char *s, size_t n, int *want)
{
    unsigned char b = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        *want = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        *want = 3;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        *want = 4;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    } else {
        *want = 1; /* stray continuation byte or a lead never valid */
        return 0;
    }
    int k = 1;
    while (k < *want && (size_t)k < n) {
        unsigned char c = s[k];
        if (c < lo || c > hi)
            break;
        lo = 0x80;
        hi = 0xBF;
        k++;
    }
    return k;
}

size_t tok_utf8_check(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int want;
        int k = utf8_valid_prefix(s + i, n - i, &want);
        if (k != want)
            return i;
        i += (size_t)k;
    }
    return n;
}

uint32_t tok_utf8_get(const char *str, int *len)
{
    const unsigned char *s = (const unsigned char *)str;
    if (s[0] < 0x80) {
        *len = 1;
        return s[0];
    }
    if (s[0] < 0xE0) {
        *len = 2;
        return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (s[0] < 0xF0) {
        *len = 3;
        return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *len = 4;
    return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
           ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

int tok_utf8_put(char *out, uint32_t cp)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool tok_utf8_lossy(tok_buf *out, const char *str, size_t n)
{
    static const char fffd[3] = { (char)0xEF, (char)0xBF, (char)0xBD };
    if (n == 0)
        return true; /* str may be NULL (no tokens to decode): no pointer arithmetic on it */
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0; /* valid bytes [run, i) not yet copied */
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int want;
        int k = utf8_valid_prefix(s + i, n - i, &want);
        if (k == want) {
            i += (size_t)k;
            continue;
        }
        if (!tok_buf_put(out, s + run, i - run) || !tok_buf_put(out, fffd, 3))
            return false;
        i += k ? (size_t)k : 1;
        run = i;
    }
    return tok_buf_put(out, s + run, n - run);
}

bool tok_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

bool tok_is_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    if (c == 0x200C || c == 0x200D)
        return true;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}
