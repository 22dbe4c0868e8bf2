/* bpe.c - the BPE model of tokenizer.json: vocabulary, merges ranked by
 * their position in the file, and HF's word encoding (characters, byte
 * fallback or unk for unknown ones, then merges applied lowest rank first,
 * leftmost first among equals). */
#include "tokenizer/tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* HF caches words shorter than this; longer ones are rare and unlikely to
 * repeat. */
#define CACHE_MAX_WORD 256

struct tok_bpe {
    tok_strmap vocab;
    /* merges: open-addressed (left id, right id) -> (rank, merged id) */
    uint64_t *mkey;
    uint32_t *mrank;
    int32_t *mnew;
    size_t mmask;
    char *unk;
    int32_t unk_id; /* -1: unk_token names no vocabulary entry */
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix */
    size_t prefix_len, suffix_len;
    bool fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256]; /* <0xNN> tokens, -1 where absent */
};

typedef struct sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len; /* bytes of the word covered; 0 = merged into its left */
} sym;

typedef struct merge {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} merge;

#define EMPTY_KEY UINT64_MAX

static size_t pair_slot(const tok_bpe *b, uint64_t key)
{
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & b->mmask;
    while (b->mkey[i] != EMPTY_KEY && b->mkey[i] != key)
        i = (i + 1) & b->mmask;
    return i;
}

static bool pair_get(const tok_bpe *b, int32_t l, int32_t r, uint32_t *rank, int32_t *new_id)
{
    if (!b->mkey)
        return false;
    size_t i = pair_slot(b, ((uint64_t)(uint32_t)l << 32) | (uint32_t)r);
    if (b->mkey[i] == EMPTY_KEY)
        return false;
    *rank = b->mrank[i];
    *new_id = b->mnew[i];
    return true;
}

void tok_bpe_free(tok_bpe *b)
{
    if (!b)
        return;
    tok_strmap_free(&b->vocab);
    free(b->mkey);
    free(b->mrank);
    free(b->mnew);
    free(b->unk);
    free(b->prefix);
    free(b->suffix);
    free(b);
}

const tok_strmap *tok_bpe_vocab(const tok_bpe *b)
{
    return &b->vocab;
}

static int32_t vocab_id(const tok_bpe *b, const char *s, size_t n)
{
    const uint64_t *v = tok_strmap_get(&b->vocab, s, n);
    return v ? (int32_t)*v : -1;
}

static moec_status dup_opt(const cJSON *j, const char *key, const char *where, char **out,
                           size_t *len, moec_err *err)
{
    const char *s;
    moec_status st = tok_json_str(j, key, where, false, &s, err);
    /* an empty prefix or suffix changes nothing: keep it absent */
    if (st || !s || !*s)
        return st;
    *len = strlen(s);
    *out = malloc(*len + 1);
    if (!*out)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s.%s: out of memory", where, key);
    memcpy(*out, s, *len + 1);
    return MOEC_OK;
}

static moec_status parse_vocab(tok_bpe *b, const cJSON *model, const char *where, moec_err *err)
{
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.vocab: expected an object of token -> id",
                            where);
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(d >= 0 && d < TOK_MAX_ID) || d != (double)(int32_t)d)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s.vocab[\"%.64s\"]: expected an integer id in [0, %d)", where,
                                it->string, TOK_MAX_ID);
        /* a key given twice keeps its last id, as serde's map does */
        if (!tok_strmap_put(&b->vocab, it->string, strlen(it->string), (uint64_t)(int32_t)d, true))
            return moec_err_set(err, MOEC_ERR_NOMEM, "%s.vocab: out of memory", where);
    }
    return MOEC_OK;
}

/* One merge: "a b" (legacy) or ["a", "b"]; *skip for "#version" lines. */
static moec_status merge_parts(const cJSON *it, const char *path, char *buf, size_t cap,
                               const char **a, const char **bb, bool *skip, moec_err *err)
{
    *skip = false;
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        if (strncmp(s, "#version", 8) == 0) {
            *skip = true;
            return MOEC_OK;
        }
        const char *sp = strchr(s, ' ');
        size_t n = strlen(s);
        if (!sp || strchr(sp + 1, ' ') || n + 1 > cap)
            return moec_err_set(err, MOEC_ERR_FORMAT,
                                "%s: expected two tokens separated by one space, found '%.64s'", path, s);
        memcpy(buf, s, n + 1);
        buf[sp - s] = '\0';
        *a = buf;
        *bb = buf + (sp - s) + 1;
        return MOEC_OK;
    }
    if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
        cJSON_IsString(it->child->next)) {
        *a = it->child->valuestring;
        *bb = it->child->next->valuestring;
        return MOEC_OK;
    }
    return moec_err_set(err, MOEC_ERR_FORMAT, "%s: expected \"a b\" or [\"a\", \"b\"]", path);
}

static moec_status parse_merges(tok_bpe *b, const cJSON *model, const char *where, moec_err *err)
{
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!merges || cJSON_IsNull(merges))
        return MOEC_OK;
    if (!cJSON_IsArray(merges))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.merges: expected an array", where);
    size_t count = (size_t)cJSON_GetArraySize(merges);
    size_t nslots = 16;
    while (nslots < 2 * count)
        nslots *= 2;
    b->mkey = malloc(nslots * sizeof *b->mkey);
    b->mrank = malloc(nslots * sizeof *b->mrank);
    b->mnew = malloc(nslots * sizeof *b->mnew);
    if (!b->mkey || !b->mrank || !b->mnew)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s.merges: out of memory", where);
    memset(b->mkey, 0xFF, nslots * sizeof *b->mkey);
    b->mmask = nslots - 1;

    tok_buf joined = { 0 };
    char *line = NULL;
    size_t line_cap = 0;
    moec_status st = MOEC_OK;
    uint32_t rank = 0;
    int index = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        char path[256];
        snprintf(path, sizeof path, "%s.merges[%d]", where, index++);
        size_t need = cJSON_IsString(it) ? strlen(it->valuestring) + 1 : 0;
        if (need > line_cap) {
            char *l = realloc(line, need);
            if (!l) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            line = l;
            line_cap = need;
        }
        const char *a = NULL, *r = NULL;
        bool skip;
        if ((st = merge_parts(it, path, line, line_cap, &a, &r, &skip, err)))
            break;
        if (skip)
            continue;
        size_t al = strlen(a), rl = strlen(r);
        int32_t aid = vocab_id(b, a, al), rid = vocab_id(b, r, rl);
        if (aid < 0 || rid < 0) {
            st = moec_err_set(err, MOEC_ERR_FORMAT, "%s: token '%.64s' is not in the vocabulary",
                              path, aid < 0 ? a : r);
            break;
        }
        if (rl < b->prefix_len) {
            st = moec_err_set(err, MOEC_ERR_FORMAT,
                              "%s: '%.64s' is shorter than continuing_subword_prefix", path, r);
            break;
        }
        joined.len = 0;
        if (!tok_buf_put(&joined, a, al) ||
            !tok_buf_put(&joined, r + b->prefix_len, rl - b->prefix_len)) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        joined.p[joined.len] = '\0'; /* tok_buf keeps room for it */
        int32_t nid = vocab_id(b, joined.p, joined.len);
        if (nid < 0) {
            st = moec_err_set(err, MOEC_ERR_FORMAT,
                              "%s: merged token '%.64s' is not in the vocabulary", path, joined.p);
            break;
        }
        /* a pair listed twice takes its later rank, as HF's map does */
        uint64_t key = ((uint64_t)(uint32_t)aid << 32) | (uint32_t)rid;
        size_t slot = pair_slot(b, key);
        b->mkey[slot] = key;
        b->mrank[slot] = rank++;
        b->mnew[slot] = nid;
    }
    free(line);
    tok_buf_free(&joined);
    return st;
}

moec_status tok_bpe_parse(const cJSON *model, const char *where, tok_bpe **out, moec_err *err)
{
    *out = NULL;
    tok_bpe *b = calloc(1, sizeof *b);
    if (!b)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", where);
    moec_status st;
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0)) {
        st = moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                          "%s.dropout: BPE dropout is not supported (only null or 0)", where);
        goto fail;
    }
    if ((st = dup_opt(model, "unk_token", where, &b->unk, &(size_t){ 0 }, err)) ||
        (st = dup_opt(model, "continuing_subword_prefix", where, &b->prefix, &b->prefix_len, err)) ||
        (st = dup_opt(model, "end_of_word_suffix", where, &b->suffix, &b->suffix_len, err)) ||
        (st = tok_json_bool(model, "fuse_unk", where, false, &b->fuse_unk, err)) ||
        (st = tok_json_bool(model, "byte_fallback", where, false, &b->byte_fallback, err)) ||
        (st = tok_json_bool(model, "ignore_merges", where, false, &b->ignore_merges, err)) ||
        (st = parse_vocab(b, model, where, err)) || (st = parse_merges(b, model, where, err)))
        goto fail;
    b->unk_id = b->unk ? vocab_id(b, b->unk, strlen(b->unk)) : -1;
    for (int i = 0; i < 256; i++) {
        char code[8];
        snprintf(code, sizeof code, "<0x%02X>", i);
        b->byte_ids[i] = vocab_id(b, code, 6);
    }
    *out = b;
    return MOEC_OK;
fail:
    tok_bpe_free(b);
    return st;
}

void tok_bpe_scratch_free(tok_bpe_scratch *sc)
{
    free(sc->sym);
    free(sc->heap);
    tok_buf_free(&sc->word);
    tok_strmap_free(&sc->cache);
    tok_ids_free(&sc->cache_ids);
    memset(sc, 0, sizeof *sc);
}

static bool sym_push(tok_bpe_scratch *sc, size_t *n, int32_t id, uint32_t len)
{
    if (*n == sc->sym_cap) {
        size_t c = sc->sym_cap ? sc->sym_cap * 2 : 64;
        sym *v = realloc(sc->sym, c * sizeof *v);
        if (!v)
            return false;
        sc->sym = v;
        sc->sym_cap = c;
    }
    sym *s = sc->sym;
    s[*n] = (sym){ id, (int32_t)*n - 1, (int32_t)*n + 1, len };
    (*n)++;
    return true;
}

static bool heap_push(tok_bpe_scratch *sc, size_t *n, merge m)
{
    if (*n == sc->heap_cap) {
        size_t c = sc->heap_cap ? sc->heap_cap * 2 : 64;
        merge *v = realloc(sc->heap, c * sizeof *v);
        if (!v)
            return false;
        sc->heap = v;
        sc->heap_cap = c;
    }
    merge *h = sc->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < m.rank || (h[p].rank == m.rank && h[p].pos < m.pos))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = m;
    return true;
}

static merge heap_pop(tok_bpe_scratch *sc, size_t *n)
{
    merge *h = sc->heap;
    merge top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static bool push_pair(const tok_bpe *b, tok_bpe_scratch *sc, size_t *nh, size_t pos)
{
    const sym *s = sc->sym;
    uint32_t rank;
    int32_t nid;
    if (s[pos].next < 0 || !pair_get(b, s[pos].id, s[s[pos].next].id, &rank, &nid))
        return true;
    return heap_push(sc, nh, (merge){ rank, (uint32_t)pos, nid });
}

static bool merge_all(const tok_bpe *b, tok_bpe_scratch *sc, size_t n)
{
    size_t nh = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (!push_pair(b, sc, &nh, i))
            return false;
    while (nh > 0) {
        merge top = heap_pop(sc, &nh);
        sym *s = sc->sym;
        sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        uint32_t rank;
        int32_t nid;
        /* stale entry: the pair at pos changed since it was queued */
        if (!pair_get(b, cur->id, s[cur->next].id, &rank, &nid) || nid != top.new_id)
            continue;
        sym *right = &s[cur->next];
        cur->id = top.new_id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0)
            s[cur->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && !push_pair(b, sc, &nh, (size_t)cur->prev))
            return false;
        if (!push_pair(b, sc, &nh, top.pos))
            return false;
    }
    return true;
}

static moec_status oom(moec_err *err)
{
    return moec_err_set(err, MOEC_ERR_NOMEM, "BPE: out of memory");
}

/* The initial symbols of a word: one per character (with the subword
 * prefix / word suffix where configured), byte tokens or unk for unknown
 * ones. Follows HF's merge_word, including where a pending unk goes. */
static moec_status initial_symbols(const tok_bpe *b, tok_bpe_scratch *sc, const char *w, size_t n,
                                   size_t *nsym, moec_err *err)
{
    int32_t unk = -1;
    uint32_t unk_len = 0;
    *nsym = 0;
    for (size_t i = 0; i < n;) {
        int cl;
        tok_utf8_get(w + i, &cl);
        bool first = i == 0, last = i + (size_t)cl >= n;
        const char *s = w + i;
        size_t sl = (size_t)cl;
        if ((b->prefix && !first) || (b->suffix && last)) {
            sc->word.len = 0;
            if ((b->prefix && !first && !tok_buf_put(&sc->word, b->prefix, b->prefix_len)) ||
                !tok_buf_put(&sc->word, s, sl) ||
                (b->suffix && last && !tok_buf_put(&sc->word, b->suffix, b->suffix_len)))
                return oom(err);
            s = sc->word.p;
            sl = sc->word.len;
        }
        i += (size_t)cl;
        int32_t id = vocab_id(b, s, sl);
        if (id >= 0) {
            if (unk >= 0 && !sym_push(sc, nsym, unk, unk_len))
                return oom(err);
            unk = -1;
            if (!sym_push(sc, nsym, id, (uint32_t)cl))
                return oom(err);
            continue;
        }
        if (b->byte_fallback) {
            size_t k = 0;
            while (k < sl && b->byte_ids[(uint8_t)s[k]] >= 0)
                k++;
            if (k == sl) {
                for (k = 0; k < sl; k++)
                    if (!sym_push(sc, nsym, b->byte_ids[(uint8_t)s[k]], 1))
                        return oom(err);
                continue;
            }
        }
        if (!b->unk)
            continue; /* HF drops a character it can neither find nor replace */
        if (b->unk_id < 0)
            return moec_err_set(err, MOEC_ERR_FORMAT, "model.unk_token '%.64s' is not in the vocabulary",
                                b->unk);
        if (unk >= 0 && b->fuse_unk) {
            unk_len += (uint32_t)cl;
            continue;
        }
        if (unk >= 0 && !sym_push(sc, nsym, unk, unk_len))
            return oom(err);
        unk = b->unk_id;
        unk_len = (uint32_t)cl;
    }
    if (unk >= 0 && !sym_push(sc, nsym, unk, unk_len))
        return oom(err);
    if (*nsym > 0)
        ((sym *)sc->sym)[*nsym - 1].next = -1;
    return MOEC_OK;
}

moec_status tok_bpe_encode(const tok_bpe *b, tok_bpe_scratch *sc, const char *w, size_t n,
                           tok_ids *out, moec_err *err)
{
    if (n == 0)
        return MOEC_OK;
    if (b->ignore_merges) {
        int32_t id = vocab_id(b, w, n);
        if (id >= 0)
            return tok_ids_put(out, &id, 1) ? MOEC_OK : oom(err);
    }
    bool cacheable = n < CACHE_MAX_WORD;
    if (cacheable) {
        const uint64_t *hit = tok_strmap_get(&sc->cache, w, n);
        if (hit) {
            const size_t cnt = (size_t)(*hit & 0xFFFFFFFFu);
            if (cnt == 0)
                return MOEC_OK; /* a word of no ids; cache_ids.v may be NULL */
            return tok_ids_put(out, sc->cache_ids.v + (*hit >> 32), cnt) ? MOEC_OK : oom(err);
        }
    }
    size_t nsym;
    moec_status st = initial_symbols(b, sc, w, n, &nsym, err);
    if (st)
        return st;
    if (!merge_all(b, sc, nsym))
        return oom(err);
    size_t start = out->n;
    const sym *s = sc->sym;
    for (size_t i = 0; i < nsym; i++)
        if (s[i].len && !tok_ids_put(out, &s[i].id, 1))
            return oom(err);
    if (cacheable && sc->cache_ids.n < UINT32_MAX / 2) {
        uint64_t off = sc->cache_ids.n, cnt = out->n - start;
        /* a word may give no ids at all (every symbol unknown, no unk):
         * out->v may then still be NULL */
        if ((cnt && !tok_ids_put(&sc->cache_ids, out->v + start, cnt)) ||
            !tok_strmap_put(&sc->cache, w, n, (off << 32) | cnt, false))
            return oom(err);
    }
    return MOEC_OK;
}
