/* tokenizer.c - loading tokenizer.json and the public encode / decode
 * pipeline; the stages themselves live in normalize.c, pretokenize.c,
 * bpe.c, added_tokens.c and decode.c. */
#include "tokenizer/tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "tokenizer/tok_internal.h"

/* tokenizer.json files reach ~10 MB (Qwen, Llama 3); anything far larger is
 * not a tokenizer. */
#define MAX_JSON_BYTES ((size_t)512 << 20)

typedef struct id_entry {
    const char *s; /* the string the decoder gets */
    uint32_t len;
    int32_t added; /* index in added.v, or -1 for a model token */
} id_entry;

struct moec_tokenizer {
    tok_normalizer *nz;
    tok_pretok *pt;
    tok_bpe *bpe;
    tok_decoder *dec;
    tok_added added;
    tok_strmap added_ids; /* content -> id */
    int32_t vocab_size;
    id_entry *by_id;      /* [vocab_size]; s == NULL for unused ids */
};

void moec_tokenizer_free(moec_tokenizer *tok)
{
    if (!tok)
        return;
    tok_normalizer_free(tok->nz);
    tok_pretok_free(tok->pt);
    tok_bpe_free(tok->bpe);
    tok_decoder_free(tok->dec);
    tok_added_free(&tok->added);
    tok_strmap_free(&tok->added_ids);
    free(tok->by_id);
    free(tok);
}

static moec_status load_model(moec_tokenizer *tok, const cJSON *root, moec_err *err)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return moec_err_set(err, MOEC_ERR_FORMAT, "model: missing or not an object");
    const char *type;
    moec_status st = tok_json_str(model, "type", "model", false, &type, err);
    if (st)
        return st;
    /* files from before "type" was written are BPE when they have merges */
    if (!type && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "model: no type and no merges; only BPE models are supported");
    if (type && strcmp(type, "BPE") != 0)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "model.type: unsupported model '%s' (only BPE is implemented)", type);
    return tok_bpe_parse(model, "model", &tok->bpe, err);
}

/* Resolves added-token ids (a token the model already knows keeps the
 * model's id, as HF does) and builds the id -> string table. */
static moec_status build_tables(moec_tokenizer *tok, moec_err *err)
{
    const tok_strmap *vocab = tok_bpe_vocab(tok->bpe);
    int32_t max_id = -1;
    for (size_t i = 0; i < vocab->n; i++)
        if ((int32_t)vocab->ents[i].val > max_id)
            max_id = (int32_t)vocab->ents[i].val;
    for (size_t i = 0; i < tok->added.n; i++) {
        tok_added_token *t = &tok->added.v[i];
        const uint64_t *v = tok_strmap_get(vocab, t->content, t->len);
        if (v)
            t->id = (int32_t)*v;
        if (t->id > max_id)
            max_id = t->id;
        if (!tok_strmap_put(&tok->added_ids, t->content, t->len, (uint64_t)t->id, true))
            return moec_err_set(err, MOEC_ERR_NOMEM, "added_tokens: out of memory");
    }
    if (max_id < 0)
        return moec_err_set(err, MOEC_ERR_FORMAT, "model.vocab: empty vocabulary");
    /* ids are dense in real tokenizers; a sparse one would make the id
     * table the file's claim rather than its contents */
    const size_t entries = vocab->n + tok->added.n;
    if ((size_t)max_id >= 4 * entries + 65536)
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "model.vocab: id %d is far beyond the %zu tokens defined (ids must be about dense)",
                            max_id, entries);
    tok->vocab_size = max_id + 1;
    tok->by_id = calloc((size_t)tok->vocab_size, sizeof *tok->by_id);
    if (!tok->by_id)
        return moec_err_set(err, MOEC_ERR_NOMEM, "vocabulary of %d ids: out of memory",
                            tok->vocab_size);
    for (size_t i = 0; i < vocab->n; i++) {
        id_entry *e = &tok->by_id[vocab->ents[i].val];
        if (!e->s) /* two strings with one id: the first one decodes */
            *e = (id_entry){ tok_strmap_key(vocab, i), vocab->ents[i].len, -1 };
    }
    /* an added token decodes from its normalized form, which the decoder
     * knows how to undo (HF's simple_id_to_token) */
    for (size_t i = 0; i < tok->added.n; i++) {
        const tok_added_token *t = &tok->added.v[i];
        tok->by_id[t->id] = (id_entry){ t->match, (uint32_t)t->match_len, (int32_t)i };
    }
    return MOEC_OK;
}

static moec_status load_root(moec_tokenizer *tok, const cJSON *root, moec_err *err)
{
    moec_status st;
    if (!cJSON_IsObject(root))
        return moec_err_set(err, MOEC_ERR_FORMAT, "expected a JSON object at the top level");
    if ((st = load_model(tok, root, err)) ||
        (st = tok_normalizer_parse(cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                                   "normalizer", &tok->nz, err)) ||
        (st = tok_pretok_parse(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                               "pre_tokenizer", &tok->pt, err)) ||
        (st = tok_decoder_parse(cJSON_GetObjectItemCaseSensitive(root, "decoder"), "decoder",
                                &tok->dec, err)) ||
        (st = tok_added_parse(cJSON_GetObjectItemCaseSensitive(root, "added_tokens"),
                              "added_tokens", &tok->added, err)) ||
        (st = tok_added_prepare(&tok->added, tok->nz, err)) || (st = build_tables(tok, err)))
        return st;
    return MOEC_OK;
}

static moec_status load_named(moec_tokenizer **out, const char *json, size_t len, const char *name,
                              moec_err *err)
{
    *out = NULL;
    if (!json)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: no JSON text given", name);
    /* JSON is UTF-8, and every string of the file may end up inside text
     * (vocabulary, Replace contents, added tokens) that PCRE2 later matches
     * without re-checking; cJSON passes invalid bytes through, so check the
     * whole text here (found by fuzzing: a Replace content of 0xFF bytes
     * sent PCRE2 reading past the subject). */
    size_t bad = tok_utf8_check(json, len);
    if (bad != len)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: not valid UTF-8 (byte 0x%02X at offset %zu)", name,
                            (unsigned char)json[bad], bad);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: malformed JSON at byte %zu of %zu%s", name,
                            at, len, at >= len ? " (truncated?)" : "");
    }
    moec_tokenizer *tok = calloc(1, sizeof *tok);
    moec_status st = tok ? load_root(tok, root, err)
                         : moec_err_set(err, MOEC_ERR_NOMEM, "tokenizer: out of memory");
    cJSON_Delete(root);
    if (st) {
        moec_err_prefix(err, "%s", name);
        moec_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return MOEC_OK;
}

moec_status moec_tokenizer_load_json(moec_tokenizer **out, const char *json, size_t len, moec_err *err)
{
    return load_named(out, json, len, "tokenizer.json", err);
}

moec_status moec_tokenizer_load(moec_tokenizer **out, const char *path, moec_err *err)
{
    char *json;
    size_t len;
    *out = NULL;
    moec_status st = moec_read_file(path, MAX_JSON_BYTES, &json, &len, err);
    if (st)
        return st;
    st = load_named(out, json, len, path, err);
    free(json);
    return st;
}

/* ---- encoding ---- */

typedef struct enc_state {
    tok_rx_scratch rx;
    tok_bpe_scratch bpe;
    tok_pieces a, b;
    tok_buf norm, norm_tmp;
    tok_seg *outer, *inner;
    size_t n_outer, cap_outer, n_inner, cap_inner;
    tok_ids ids;
} enc_state;

static void enc_free(enc_state *e)
{
    tok_rx_scratch_free(&e->rx);
    tok_bpe_scratch_free(&e->bpe);
    tok_pieces_free(&e->a);
    tok_pieces_free(&e->b);
    tok_buf_free(&e->norm);
    tok_buf_free(&e->norm_tmp);
    free(e->outer);
    free(e->inner);
    tok_ids_free(&e->ids);
}

static moec_status oom(moec_err *err)
{
    return moec_err_set(err, MOEC_ERR_NOMEM, "tokenizer: out of memory");
}

/* Pre-tokenizes one stretch of normalized text and runs BPE on the pieces. */
static moec_status encode_text(const moec_tokenizer *tok, enc_state *e, const char *s, size_t n,
                               bool at_start, moec_err *err)
{
    tok_pieces *io = &e->a, *spare = &e->b;
    tok_pieces_clear(io);
    if (!tok_pieces_add(io, s, n, at_start))
        return oom(err);
    moec_status st = tok_pretok_apply(tok->pt, &io, &spare, &e->rx, err);
    for (size_t i = 0; i < io->n && !st; i++)
        st = tok_bpe_encode(tok->bpe, &e->bpe, tok_piece_str(io, i), io->v[i].len, &e->ids, err);
    return st;
}

static moec_status encode_segment(const moec_tokenizer *tok, enc_state *e, const char *s, size_t n,
                                  bool at_start, moec_err *err)
{
    moec_status st = tok_normalizer_apply(tok->nz, s, n, &e->norm, &e->norm_tmp, &e->rx, err);
    if (st)
        return st;
    e->n_inner = 0;
    if (!tok_added_split(&tok->added, true, e->norm.p, e->norm.len, &e->inner, &e->n_inner,
                         &e->cap_inner))
        return oom(err);
    for (size_t i = 0; i < e->n_inner && !st; i++) {
        const tok_seg *g = &e->inner[i];
        if (g->id >= 0)
            st = tok_ids_put(&e->ids, &g->id, 1) ? MOEC_OK : oom(err);
        else
            st = encode_text(tok, e, e->norm.p + g->off, g->len, at_start && g->off == 0, err);
    }
    return st;
}

moec_status moec_tokenizer_encode(const moec_tokenizer *tok, const char *text, size_t len,
                                  int32_t **ids, size_t *n_ids, moec_err *err)
{
    if (!tok || !ids || !n_ids || (!text && len))
        return moec_err_set(err, MOEC_ERR_ARG, "tokenizer encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    if (!text)
        text = "";
    size_t bad = tok_utf8_check(text, len);
    if (bad != len)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "tokenizer encode: input is not valid UTF-8 (byte 0x%02X at offset %zu)",
                            (unsigned char)text[bad], bad);
    enc_state e;
    memset(&e, 0, sizeof e);
    moec_status st = MOEC_OK;
    if (!tok_added_split(&tok->added, false, text, len, &e.outer, &e.n_outer, &e.cap_outer))
        st = oom(err);
    for (size_t i = 0; i < e.n_outer && !st; i++) {
        const tok_seg *g = &e.outer[i];
        if (g->id >= 0)
            st = tok_ids_put(&e.ids, &g->id, 1) ? MOEC_OK : oom(err);
        else
            st = encode_segment(tok, &e, text + g->off, g->len, g->off == 0, err);
    }
    if (!st) {
        /* hand over the id buffer; never NULL, even for no ids */
        if (!e.ids.v && !(e.ids.v = malloc(sizeof *e.ids.v)))
            st = oom(err);
        else {
            *ids = e.ids.v;
            *n_ids = e.ids.n;
            e.ids.v = NULL;
        }
    }
    enc_free(&e);
    return st;
}

/* ---- decoding ---- */

static const id_entry *entry(const moec_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || id >= tok->vocab_size || !tok->by_id[id].s)
        return NULL;
    return &tok->by_id[id];
}

moec_status moec_tokenizer_decode(const moec_tokenizer *tok, const int32_t *ids, size_t n,
                                  int skip_special, char **text, size_t *len, moec_err *err)
{
    if (!tok || !text || (!ids && n))
        return moec_err_set(err, MOEC_ERR_ARG, "tokenizer decode: NULL argument");
    *text = NULL;
    if (len)
        *len = 0;
    tok_pieces a = { 0 }, b = { 0 };
    tok_pieces *io = &a, *spare = &b;
    tok_rx_scratch rx = { 0 };
    tok_buf joined = { 0 }, out = { 0 };
    moec_status st = MOEC_OK;
    for (size_t i = 0; i < n && !st; i++) {
        const id_entry *e = entry(tok, ids[i]);
        if (!e) {
            st = moec_err_set(err, MOEC_ERR_ARG,
                              "tokenizer decode: token id %d (position %zu) is not in the "
                              "vocabulary of %d ids",
                              ids[i], i, tok->vocab_size);
            break;
        }
        if (skip_special && e->added >= 0 && tok->added.v[e->added].special)
            continue;
        size_t start = io->text.len;
        if (!tok_buf_put(&io->text, e->s, e->len) || !tok_pieces_commit_keep(io, start))
            st = oom(err);
    }
    if (!st && tok->dec)
        st = tok_decoder_apply(tok->dec, &io, &spare, &rx, err);
    for (size_t i = 0; i < io->n && !st; i++) {
        /* without a decoder HF joins the tokens with spaces */
        if ((!tok->dec && i > 0 && !tok_buf_put(&joined, " ", 1)) ||
            !tok_buf_put(&joined, tok_piece_str(io, i), io->v[i].len))
            st = oom(err);
    }
    if (!st && (!tok_utf8_lossy(&out, joined.p, joined.len) || !tok_buf_reserve(&out, 0)))
        st = oom(err);
    if (!st) {
        out.p[out.len] = '\0';
        *text = out.p;
        if (len)
            *len = out.len;
        out.p = NULL;
    }
    tok_pieces_free(&a);
    tok_pieces_free(&b);
    tok_rx_scratch_free(&rx);
    tok_buf_free(&joined);
    tok_buf_free(&out);
    return st;
}

int moec_tokenizer_token_bytes(const moec_tokenizer *tok, int32_t id, char *buf, size_t cap)
{
    const id_entry *e = entry(tok, id);
    if (!e)
        return -1;
    tok_buf out = { 0 };
    tok_rx_scratch rx = { 0 };
    moec_err err;
    int n = -1;
    if (tok_decoder_token(tok->dec, e->s, e->len, &out, &rx, &err) == MOEC_OK && out.len <= INT32_MAX) {
        n = (int)out.len;
        if (buf && cap)
            memcpy(buf, out.p, out.len < cap ? out.len : cap);
    }
    tok_buf_free(&out);
    tok_rx_scratch_free(&rx);
    return n;
}

int moec_tokenizer_vocab_size(const moec_tokenizer *tok)
{
    return tok ? tok->vocab_size : 0;
}

int32_t moec_tokenizer_find(const moec_tokenizer *tok, const char *piece)
{
    if (!tok || !piece)
        return -1;
    size_t n = strlen(piece);
    const uint64_t *v = tok_strmap_get(&tok->added_ids, piece, n);
    if (!v)
        v = tok_strmap_get(tok_bpe_vocab(tok->bpe), piece, n);
    return v ? (int32_t)*v : -1;
}

int moec_tokenizer_is_special(const moec_tokenizer *tok, int32_t id)
{
    const id_entry *e = entry(tok, id);
    return e && e->added >= 0 && tok->added.v[e->added].special;
}

const char *moec_tokenizer_piece(const moec_tokenizer *tok, int32_t id)
{
    const id_entry *e = entry(tok, id);
    if (!e)
        return NULL;
    return e->added >= 0 ? tok->added.v[e->added].content : e->s;
}
