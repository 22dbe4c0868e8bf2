/* fuzz_tokenizer.c - libFuzzer target for tokenizer.json loading, then
 * encoding and decoding with what was loaded.
 *
 * Input: a tokenizer.json text, FUZZ_SEP, then text to encode (any bytes:
 * invalid UTF-8 must be refused cleanly). For a tokenizer that loads: the
 * text is encoded, every id must be inside the vocabulary, the ids decode;
 * the text's bytes are also decoded as arbitrary int32 ids (invalid ids must
 * be refused cleanly), and single tokens go through the streaming path
 * (moec_tokenizer_token_bytes) and the piece table. Seeds (small
 * tokenizers of every supported kind) in tests/fuzz/corpus/tokenizer. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *part[2];
    size_t len[2];
    int n = fuzz_split(data, size, part, len, 2);
    moec_tokenizer *tok;
    moec_err err;
    if (moec_tokenizer_load_json(&tok, (const char *)part[0], len[0], &err) != MOEC_OK)
        return 0;
    const int vocab = moec_tokenizer_vocab_size(tok);
    const char *text = n > 1 ? (const char *)part[1] : "";
    const size_t tlen = n > 1 ? len[1] : 0;
    int32_t *ids;
    size_t n_ids;
    if (moec_tokenizer_encode(tok, text, tlen, &ids, &n_ids, &err) == MOEC_OK) {
        for (size_t i = 0; i < n_ids; i++)
            if (ids[i] < 0 || ids[i] >= vocab)
                abort(); /* an id the tokenizer cannot decode */
        char *out;
        size_t olen;
        if (moec_tokenizer_decode(tok, ids, n_ids, 0, &out, &olen, &err) != MOEC_OK)
            abort(); /* its own ids must decode */
        fuzz_touch(out, olen);
        free(out);
        if (moec_tokenizer_decode(tok, ids, n_ids, 1, &out, &olen, &err) == MOEC_OK)
            free(out);
        free(ids);
    }
    /* the text's bytes as ids, most of them invalid */
    size_t nraw = tlen / 4;
    int32_t *raw = malloc((nraw ? nraw : 1) * sizeof *raw);
    if (raw) {
        memcpy(raw, text, nraw * 4);
        char *out;
        if (moec_tokenizer_decode(tok, raw, nraw, 0, &out, NULL, &err) == MOEC_OK)
            free(out);
        for (size_t i = 0; i < nraw && i < 8; i++) {
            int32_t id = raw[i] % (vocab + 2);
            char buf[16];
            int k = moec_tokenizer_token_bytes(tok, id, buf, sizeof buf);
            if (k > 0)
                fuzz_touch(buf, (size_t)k < sizeof buf ? (size_t)k : sizeof buf);
            const char *piece = moec_tokenizer_piece(tok, id);
            if (piece) {
                int32_t back = moec_tokenizer_find(tok, piece);
                if (back < 0)
                    abort(); /* a piece the tokenizer lists must be found */
            }
            fuzz_sink ^= (uint8_t)moec_tokenizer_is_special(tok, id);
        }
        free(raw);
    }
    moec_tokenizer_free(tok);
    return 0;
}
