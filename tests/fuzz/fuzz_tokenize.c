/* fuzz_tokenize.c - libFuzzer target for encoding and decoding arbitrary
 * text with real tokenizers, loaded once: the bundled model's byte-level BPE
 * (models/mixtral-tiny, NFC + Qwen2's pre-tokenizer regex), a byte-level BPE
 * with NFKC + Lowercase and an added token (tests/data/tok_bytelevel.json),
 * and a SentencePiece-style BPE with byte fallback
 * (tests/data/tokenizer_sp.json).
 *
 * Input: one byte choosing the tokenizer, then the text (any bytes: invalid
 * UTF-8 must be refused with an error, never a crash). Every id encoded must
 * be in the vocabulary and decode; with the byte-level tokenizer of the
 * model, decoding gives back the NFC form of the text exactly. The input
 * also runs as a list of int32 ids through decode (invalid ids refused).
 * Seeds in tests/fuzz/corpus/tokenize. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

#ifndef MOEC_SOURCE_DIR
#define MOEC_SOURCE_DIR "."
#endif

static const char *files[] = {"models/mixtral-tiny/tokenizer.json", "tests/data/tok_bytelevel.json",
                              "tests/data/tokenizer_sp.json"};
#define N_TOK (sizeof files / sizeof *files)
static moec_tokenizer *toks[N_TOK];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("MOEC_SOURCE_DIR");
    for (size_t i = 0; i < N_TOK; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", root ? root : MOEC_SOURCE_DIR, files[i]);
        moec_err err;
        if (moec_tokenizer_load(&toks[i], path, &err) != MOEC_OK) {
            fprintf(stderr, "fuzz_tokenize: %s\n", err.msg);
            exit(1);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const size_t which = data[0] % N_TOK;
    const moec_tokenizer *tok = toks[which];
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    moec_err err;
    int32_t *ids;
    size_t n;
    if (moec_tokenizer_encode(tok, text, len, &ids, &n, &err) == MOEC_OK) {
        const int vocab = moec_tokenizer_vocab_size(tok);
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= vocab)
                abort();
        char *out;
        size_t olen;
        if (moec_tokenizer_decode(tok, ids, n, 0, &out, &olen, &err) != MOEC_OK)
            abort();
        if (which == 0) {
            /* byte-level BPE loses nothing but what NFC changes */
            char *z = malloc(len + 1);
            memcpy(z, text, len);
            z[len] = '\0';
            utf8proc_uint8_t *nfc = memchr(z, '\0', len) ? NULL : utf8proc_NFC((const utf8proc_uint8_t *)z);
            if (nfc && (strlen((const char *)nfc) != olen || memcmp(nfc, out, olen) != 0)) {
                fprintf(stderr, "decode(encode(text)) != NFC(text)\n");
                abort();
            }
            free(nfc);
            free(z);
        }
        free(out);
        free(ids);
    }
    size_t nraw = len / 4;
    if (nraw) {
        int32_t *raw = malloc(nraw * sizeof *raw);
        memcpy(raw, text, nraw * 4);
        char *out;
        if (moec_tokenizer_decode(tok, raw, nraw, 1, &out, NULL, &err) == MOEC_OK)
            free(out);
        free(raw);
    }
    return 0;
}
