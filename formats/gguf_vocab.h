/* gguf_vocab.h - a Hugging Face tokenizer.json as llama.cpp's tokenizer
 * metadata ("tokenizer.ggml.*" keys of a GGUF file).
 *
 * Two tokenizer families, as moec's own tokenizer reads them:
 *  - byte-level BPE (GPT-2, Qwen, Llama 3, OLMoE): tokenizer.ggml.model
 *    "gpt2"; tokens are the vocabulary strings as they are (byte-level
 *    characters, "Ġthe"), merges "a b" in rank order, and
 *    tokenizer.ggml.pre names llama.cpp's pre-tokenizer whose regex is the
 *    one tokenizer.json splits with: "qwen2", "llama-bpe", "gpt-2" (ByteLevel
 *    with its own regex; "olmo" for OLMoE). A regex llama.cpp does not know
 *    is refused: its tokenization would differ.
 *  - SentencePiece-style BPE (Llama 2, Mistral, Mixtral: a "▁" metaspace
 *    with byte fallback): tokenizer.ggml.model "llama", scores and token
 *    types. llama.cpp's SentencePiece tokenizer merges the adjacent pair
 *    whose joined text has the highest score, so each merge's result gets
 *    score -rank (the first merge scores 0, the next -1, ...) and tokens no
 *    merge produces score below every merge: the merge order is then the
 *    HF BPE's. <0xNN> tokens are BYTE, added tokens CONTROL (special) or
 *    USER_DEFINED. tokenizer.ggml.add_space_prefix says whether the
 *    normalizer or pre-tokenizer prepends "▁".
 * Token types (tokenizer.ggml.token_type, i32): 1 normal, 2 unknown, 3
 * control, 4 user-defined, 5 unused (padding rows past the tokenizer's
 * vocabulary up to the model's vocab_size: "[PADn]"), 6 byte.
 * Special ids come from the model config (bos/eos) and the unk token;
 * add_bos_token / add_eos_token from tokenizer_config.json when it says,
 * else llama.cpp's defaults for the family (SentencePiece adds BOS); the
 * chat template travels as tokenizer.chat_template.
 */
#ifndef MOEC_FORMATS_GGUF_VOCAB_H
#define MOEC_FORMATS_GGUF_VOCAB_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "formats/gguf.h"

typedef struct moec_gguf_vocab_src {
    const char *tokenizer_json;   /* tokenizer.json text */
    size_t tokenizer_json_len;
    const char *tokenizer_config; /* tokenizer_config.json text, or NULL */
    int vocab_size;               /* the model's embedding rows */
    int bos_id, eos_id;           /* -1 when the config has none */
    bool olmo;                    /* OLMoE: name GPT-2's regex "olmo", as llama.cpp's converter does */
} moec_gguf_vocab_src;

/* Adds the tokenizer keys to w. Errors name tokenizer.json and the field:
 * MOEC_ERR_FORMAT (malformed JSON, missing vocab, a token id past
 * vocab_size), MOEC_ERR_UNSUPPORTED (a model type other than BPE, a
 * pre-tokenizer or normalizer llama.cpp would not reproduce). *pre (may be
 * NULL) gets the family and pre-tokenizer name, e.g. "gpt2/qwen2" or
 * "llama" (static storage). */
moec_status moec_gguf_add_vocab(moec_gguf_writer *w, const moec_gguf_vocab_src *src, const char **pre,
                                moec_err *err);

#endif
