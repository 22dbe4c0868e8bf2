/* tokenizer.h - Hugging Face tokenizer.json, reimplemented: byte-level BPE
 * (GPT-2, Qwen, Llama 3) and SentencePiece-style BPE (Llama 2, Mistral,
 * Mixtral).
 *
 * What is read from tokenizer.json:
 *   normalizer     NFC, NFD, NFKC, NFKD, Lowercase, Replace, Prepend, Strip,
 *                  StripAccents, Sequence of those, or null.
 *   pre_tokenizer  Split (String or Regex pattern, every behavior, invert),
 *                  ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit,
 *                  CharDelimiterSplit, Punctuation, Sequence, or null.
 *   model          BPE only: vocab, merges ("a b" strings or ["a","b"]
 *                  pairs), unk_token, fuse_unk, byte_fallback, ignore_merges,
 *                  continuing_subword_prefix, end_of_word_suffix.
 *   added_tokens   matched in the text before anything else, longest match
 *                  first, with lstrip / rstrip / single_word / normalized.
 *   decoder        ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip,
 *                  BPEDecoder, Sequence, or null (tokens joined by spaces).
 *   post_processor, truncation and padding are ignored: encoding never adds
 *                  template tokens, never cuts and never pads.
 * Anything else (WordPiece, Unigram, a BertNormalizer, ...) makes loading
 * fail with an error naming the JSON field and the type found.
 *
 * Regexes are compiled with PCRE2 in UTF + UCP mode, so \s, \w and \p{..}
 * follow Unicode as the Oniguruma engine of HF tokenizers does.
 *
 * A loaded tokenizer is immutable: any number of threads may encode and
 * decode with it at once (every call keeps its working memory to itself).
 */
#ifndef MOEC_TOKENIZER_TOKENIZER_H
#define MOEC_TOKENIZER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct moec_tokenizer moec_tokenizer;

/* Loads a tokenizer.json file. On success *out owns everything it needs (the
 * file is not kept open); free it with moec_tokenizer_free. Errors name the
 * path and the JSON field: MOEC_ERR_IO (cannot read), MOEC_ERR_FORMAT
 * (malformed JSON, missing or mistyped field, bad regex, merge naming an
 * unknown token), MOEC_ERR_UNSUPPORTED (a component type not implemented). */
moec_status moec_tokenizer_load(moec_tokenizer **out, const char *path, moec_err *err);

/* The same from a JSON text in memory (containers embed the json); json need
 * not be NUL-terminated and is not referenced after the call. */
moec_status moec_tokenizer_load_json(moec_tokenizer **out, const char *json, size_t len, moec_err *err);

/* Frees a tokenizer; NULL is fine. */
void moec_tokenizer_free(moec_tokenizer *tok);

/* Encodes UTF-8 text to token ids. Adds no BOS/EOS or other template tokens;
 * added and special tokens that appear literally in the text are matched as
 * HF tokenizers match them. On success *ids is malloc'd (never NULL, even for
 * zero ids) and the caller frees it. Text that is not valid UTF-8 is refused
 * (MOEC_ERR_ARG naming the byte offset). */
moec_status moec_tokenizer_encode(const moec_tokenizer *tok, const char *text, size_t len,
                                  int32_t **ids, size_t *n_ids, moec_err *err);

/* Decodes ids to text through the tokenizer's decoder. *text is malloc'd and
 * NUL-terminated (caller frees); *len (may be NULL) excludes the NUL. Byte
 * sequences that do not form UTF-8 come out as U+FFFD, as in HF. An id with no
 * token is an error naming the id (MOEC_ERR_ARG). skip_special: drop special
 * added tokens (e.g. <|endoftext|>, <s>). */
moec_status moec_tokenizer_decode(const moec_tokenizer *tok, const int32_t *ids, size_t n,
                                  int skip_special, char **text, size_t *len, moec_err *err);

/* The raw bytes one token stands for, for streaming output: byte-level
 * characters and <0xNN> tokens become their bytes, the metaspace becomes a
 * space. The bytes may be part of a UTF-8 character, and the one leading
 * space that a SentencePiece decoder strips from the start of a whole text is
 * kept. Writes at most cap bytes to buf (no NUL) and returns the full byte
 * count (compare with cap to detect truncation), or -1 for an invalid id. */
int moec_tokenizer_token_bytes(const moec_tokenizer *tok, int32_t id, char *buf, size_t cap);

/* Largest token id + 1 (model vocabulary and added tokens together). */
int moec_tokenizer_vocab_size(const moec_tokenizer *tok);

/* Id of a token given its vocabulary string (e.g. "<|endoftext|>", "Ġthe",
 * "▁the"); added tokens are looked up first. -1 if absent. */
int32_t moec_tokenizer_find(const moec_tokenizer *tok, const char *piece);

/* 1 if id is a special added token, 0 otherwise (also for invalid ids). */
int moec_tokenizer_is_special(const moec_tokenizer *tok, int32_t id);

/* The vocabulary string of a token (e.g. "Ġthe"), NUL-terminated and owned by
 * the tokenizer; NULL for an invalid id. */
const char *moec_tokenizer_piece(const moec_tokenizer *tok, int32_t id);

#endif
