/* tok_internal.h - what the tokenizer's source files share; not public.
 *
 * The encode pipeline is HF's: split the text on added tokens, normalize
 * the rest, split it on normalized added tokens, pre-tokenize into pieces,
 * run the BPE model on each piece. Every stage works on a tok_pieces list
 * (one byte buffer plus (offset, length) spans) and writes a new list, so a
 * stage never reads from the buffer it is appending to.
 */
#ifndef MOEC_TOKENIZER_TOK_INTERNAL_H
#define MOEC_TOKENIZER_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <pcre2.h>

#include "core/error.h"

/* Token ids above this are refused when loading: a vocabulary this large
 * would be a corrupt file, and the id table is allocated densely. */
#define TOK_MAX_ID (1 << 24)

/* ---- growable buffers, piece lists, UTF-8 (textbuf.c) ---- */

typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;

bool tok_buf_reserve(tok_buf *b, size_t extra);
bool tok_buf_put(tok_buf *b, const void *s, size_t n);
void tok_buf_free(tok_buf *b);

typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

bool tok_ids_put(tok_ids *ids, const int32_t *v, size_t n);
void tok_ids_free(tok_ids *ids);

/* at_start: the piece begins at offset 0 of the original text (Metaspace's
 * prepend_scheme "first" looks at it). */
typedef struct tok_piece {
    size_t off, len;
    bool at_start;
} tok_piece;

typedef struct tok_pieces {
    tok_buf text;
    tok_piece *v;
    size_t n, cap;
} tok_pieces;

void tok_pieces_clear(tok_pieces *p);
/* Copies s as a new piece; empty pieces are dropped, as HF drops them. */
bool tok_pieces_add(tok_pieces *p, const char *s, size_t n, bool at_start);
/* Makes text[start, text.len) a piece (bytes already appended). */
bool tok_pieces_commit(tok_pieces *p, size_t start, bool at_start);
/* The same, keeping an empty piece (decoders keep every token's place). */
bool tok_pieces_commit_keep(tok_pieces *p, size_t start);
void tok_pieces_free(tok_pieces *p);

static inline const char *tok_piece_str(const tok_pieces *p, size_t i)
{
    /* pieces kept empty (tok_pieces_commit_keep) may leave no text buffer at
     * all: NULL + 0 is undefined, so they read as "" */
    return p->text.p ? p->text.p + p->v[i].off : "";
}

/* Offset of the first byte that is not strict UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF), or n when all of s is valid. */
size_t tok_utf8_check(const char *s, size_t n);
/* Decodes one character of valid UTF-8, storing its byte length in *len. */
uint32_t tok_utf8_get(const char *s, int *len);
/* Encodes cp into out (4 bytes room); returns the byte count. */
int tok_utf8_put(char *out, uint32_t cp);
/* Appends s with every maximal invalid UTF-8 subsequence replaced by U+FFFD,
 * as Rust's String::from_utf8_lossy does. */
bool tok_utf8_lossy(tok_buf *out, const char *s, size_t n);
/* Unicode White_Space (Rust's char::is_whitespace). */
bool tok_is_space(uint32_t cp);
/* Unicode \w as the regex crate defines it. */
bool tok_is_word(uint32_t cp);

/* ---- string -> value hash map (strmap.c) ---- */

typedef struct tok_strmap_ent {
    uint64_t hash;
    uint64_t val;
    uint32_t off, len; /* key bytes in keys, NUL-terminated there */
} tok_strmap_ent;

typedef struct tok_strmap {
    uint32_t *slots; /* entry index + 1; 0 = empty */
    size_t mask;
    tok_strmap_ent *ents;
    size_t n, cap;
    tok_buf keys;
} tok_strmap;

/* Inserts key -> val; an existing key keeps its value unless overwrite.
 * Returns false only when out of memory. */
bool tok_strmap_put(tok_strmap *m, const char *key, size_t len, uint64_t val, bool overwrite);
/* NULL when absent. */
const uint64_t *tok_strmap_get(const tok_strmap *m, const char *key, size_t len);
void tok_strmap_free(tok_strmap *m);

static inline const char *tok_strmap_key(const tok_strmap *m, size_t i)
{
    return m->keys.p + m->ents[i].off;
}

/* ---- regexes and literal patterns (regex.c) ---- */

/* A pattern from tokenizer.json: {"Regex": ...} compiled by PCRE2, or
 * {"String": ...} matched literally. */
typedef struct tok_regex {
    pcre2_code *code; /* NULL for a literal */
    char *lit;
    size_t lit_len;
} tok_regex;

/* A span of a string that a pattern did or did not match. */
typedef struct tok_span {
    size_t start, end;
    bool match;
} tok_span;

/* Per-call working memory for matching; tok_regex itself is shared. */
typedef struct tok_rx_scratch {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
    tok_span *spans;
    size_t nspans, cap;
} tok_rx_scratch;

moec_status tok_regex_compile(tok_regex *rx, const char *pat, bool literal, const char *where,
                              moec_err *err);
void tok_regex_free(tok_regex *rx);
void tok_rx_scratch_free(tok_rx_scratch *sc);

/* Cuts s into spans covering it in order, alternating non-matches and
 * matches as HF's find_matches does (an empty s gives one empty non-match).
 * The result is in sc->spans / sc->nspans. */
moec_status tok_regex_spans(const tok_regex *rx, tok_rx_scratch *sc, const char *s, size_t n,
                            moec_err *err);

/* ---- JSON field access with errors naming the field (json.c) ---- */

/* Builds "where.key" or "where[i]" into buf. */
const char *tok_json_path(char *buf, size_t cap, const char *where, const char *key, int index);

/* The "type" string of a component object. */
moec_status tok_json_type(const cJSON *obj, const char *where, const char **type, moec_err *err);
/* A string field; absent or null gives *out = NULL unless required. */
moec_status tok_json_str(const cJSON *obj, const char *key, const char *where, bool required,
                         const char **out, moec_err *err);
/* A boolean field; absent or null gives dflt. */
moec_status tok_json_bool(const cJSON *obj, const char *key, const char *where, bool dflt,
                          bool *out, moec_err *err);
/* A non-negative integer field; absent or null gives dflt. */
moec_status tok_json_uint(const cJSON *obj, const char *key, const char *where, long dflt,
                          long max, long *out, moec_err *err);
/* A field holding one character, e.g. Metaspace's replacement. */
moec_status tok_json_char(const cJSON *obj, const char *key, const char *where, bool required,
                          uint32_t dflt, uint32_t *out, moec_err *err);
/* A pattern field {"String": s} or {"Regex": r}, compiled. */
moec_status tok_json_pattern(const cJSON *obj, const char *key, const char *where, tok_regex *rx,
                             moec_err *err);
/* An array field (required). */
moec_status tok_json_array(const cJSON *obj, const char *key, const char *where,
                           const cJSON **out, moec_err *err);

/* One component of a step list, of the given "type" (never "Sequence"). */
typedef moec_status (*tok_step_fn)(void *ctx, const cJSON *j, const char *type, const char *where,
                                   moec_err *err);
/* Walks a normalizer, pre-tokenizer or decoder: calls step on j, or, when j
 * is a "Sequence", on each component of its array list_key in order
 * (Sequences nest), with the component's path ("where.list_key[i]"). */
moec_status tok_json_steps(const cJSON *j, const char *where, const char *list_key,
                           tok_step_fn step, void *ctx, moec_err *err);

/* ---- byte-level alphabet (bytelevel.c) ---- */

/* The printable character GPT-2's byte-level BPE uses for byte b, as UTF-8
 * in out (2 bytes room); returns its length. */
int tok_bytelevel_char(uint8_t b, char *out);
/* The byte a byte-level character stands for, or -1. */
int tok_bytelevel_byte(uint32_t cp);

/* ---- normalizers (normalize.c) ---- */

typedef struct tok_normalizer tok_normalizer;

/* j may be NULL or JSON null: *out = NULL, meaning none. */
moec_status tok_normalizer_parse(const cJSON *j, const char *where, tok_normalizer **out,
                                 moec_err *err);
void tok_normalizer_free(tok_normalizer *n);
/* Normalizes s into out (overwritten); tmp is scratch. */
moec_status tok_normalizer_apply(const tok_normalizer *nz, const char *s, size_t n, tok_buf *out,
                                 tok_buf *tmp, tok_rx_scratch *sc, moec_err *err);

/* ---- pre-tokenizers (pretokenize.c) ---- */

typedef struct tok_pretok tok_pretok;

moec_status tok_pretok_parse(const cJSON *j, const char *where, tok_pretok **out, moec_err *err);
void tok_pretok_free(tok_pretok *pt);
/* Splits and rewrites the pieces in *io; *spare is scratch. The two
 * pointers may be swapped on return. */
moec_status tok_pretok_apply(const tok_pretok *pt, tok_pieces **io, tok_pieces **spare,
                             tok_rx_scratch *sc, moec_err *err);

/* ---- BPE model (bpe.c) ---- */

typedef struct tok_bpe tok_bpe;

/* Per-call working memory: symbol list, merge heap, and the cache of words
 * already encoded during this call. */
typedef struct tok_bpe_scratch {
    void *sym;
    size_t sym_cap;
    void *heap;
    size_t heap_cap;
    tok_buf word;
    tok_strmap cache;
    tok_ids cache_ids;
} tok_bpe_scratch;

moec_status tok_bpe_parse(const cJSON *model, const char *where, tok_bpe **out, moec_err *err);
void tok_bpe_free(tok_bpe *bpe);
/* The vocabulary: token string -> id. */
const tok_strmap *tok_bpe_vocab(const tok_bpe *bpe);
/* Appends the ids of one pre-tokenized word to out. */
moec_status tok_bpe_encode(const tok_bpe *bpe, tok_bpe_scratch *sc, const char *w, size_t n,
                           tok_ids *out, moec_err *err);
void tok_bpe_scratch_free(tok_bpe_scratch *sc);

/* ---- added tokens (added_tokens.c) ---- */

typedef struct tok_added_token {
    char *content;
    size_t len;
    char *match; /* what is searched for: content, or its normalized form */
    size_t match_len;
    int32_t id;
    bool special, single_word, lstrip, rstrip, normalized;
} tok_added_token;

typedef struct tok_added {
    tok_added_token *v;
    size_t n;
    /* by_byte[b]: indices of tokens whose match string starts with byte b,
     * longest first, for the raw (normalized = 0) and normalized passes. */
    uint32_t *by_byte[2][256];
    uint32_t by_byte_n[2][256];
} tok_added;

/* A part of a text: an added token (id >= 0) or text to tokenize (id -1). */
typedef struct tok_seg {
    size_t off, len;
    int32_t id;
} tok_seg;

moec_status tok_added_parse(const cJSON *arr, const char *where, tok_added *out, moec_err *err);
/* Builds the match strings (normalized forms for normalized tokens) and the
 * first-byte index; call once the ids are final. */
moec_status tok_added_prepare(tok_added *a, const tok_normalizer *nz, moec_err *err);
void tok_added_free(tok_added *a);
/* Cuts s into segments: the added tokens of one pass (normalized_pass
 * selects which tokens) and the text between them. Empty text segments are
 * dropped. Appends to *segs. */
bool tok_added_split(const tok_added *a, bool normalized_pass, const char *s, size_t n,
                     tok_seg **segs, size_t *nseg, size_t *cap);

/* ---- decoders (decode.c) ---- */

typedef struct tok_decoder tok_decoder;

moec_status tok_decoder_parse(const cJSON *j, const char *where, tok_decoder **out, moec_err *err);
void tok_decoder_free(tok_decoder *d);
/* Runs the decoder chain over the token strings in *io, leaving the decoded
 * parts in *io (to be concatenated). Pointers may be swapped. */
moec_status tok_decoder_apply(const tok_decoder *d, tok_pieces **io, tok_pieces **spare,
                              tok_rx_scratch *sc, moec_err *err);
/* Appends the raw bytes one token stands for to out: the decoder's
 * per-token rewriting without what depends on the token's position. */
moec_status tok_decoder_token(const tok_decoder *d, const char *s, size_t n, tok_buf *out,
                              tok_rx_scratch *sc, moec_err *err);

#endif
