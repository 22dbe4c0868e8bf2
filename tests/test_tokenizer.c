/* test_tokenizer.c - lib/tokenizer against the HF reference cases of the
 * fixtures and against small hand-made tokenizer.json files whose expected
 * ids are derived by hand in the comments. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "testutil.h"
#include "tokenizer/tokenizer.h"

static const char *FIXTURES[] = { "mixtral-tiny", "qwen2moe-random", "qwen3moe-random" };

static const char *fixture_tokenizer(const char *name)
{
    /* mixtral-tiny's tokenizer lives with its model */
    if (strcmp(name, "mixtral-tiny") == 0)
        return tu_src("models/mixtral-tiny/tokenizer.json");
    static char path[4096];
    snprintf(path, sizeof path, "tests/fixtures/%s/tokenizer.json", name);
    return tu_src(path);
}

static moec_tokenizer *load(const char *path)
{
    moec_tokenizer *tok = NULL;
    moec_err err = { 0 };
    moec_status st = moec_tokenizer_load(&tok, path, &err);
    if (st)
        fail_msg("loading %s: %s", path, err.msg);
    assert_non_null(tok);
    return tok;
}

/* Loads tests/data/<file> after edit() changed its JSON. */
static moec_tokenizer *load_edited(const char *file, void (*edit)(cJSON *root, const void *arg),
                                   const void *arg)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/%s", file);
    char *text = tu_read_file(tu_src(rel), NULL);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    edit(root, arg);
    char *json = cJSON_PrintUnformatted(root);
    moec_tokenizer *tok = NULL;
    moec_err err = { 0 };
    if (moec_tokenizer_load_json(&tok, json, strlen(json), &err))
        fail_msg("loading edited %s: %s", file, err.msg);
    free(json);
    cJSON_Delete(root);
    free(text);
    return tok;
}

static void expect_ids(const moec_tokenizer *tok, const char *text, const int32_t *want, size_t n)
{
    int32_t *ids = NULL;
    size_t got = 0;
    moec_err err = { 0 };
    if (moec_tokenizer_encode(tok, text, strlen(text), &ids, &got, &err))
        fail_msg("encoding '%s': %s", text, err.msg);
    assert_non_null(ids);
    int same = got == n && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!same) {
        char buf[2048];
        size_t k = 0;
        for (size_t i = 0; i < got && k < sizeof buf - 16; i++)
            k += (size_t)snprintf(buf + k, sizeof buf - k, " %d", ids[i]);
        buf[k] = '\0';
        fail_msg("encoding '%s': got %zu ids [%s ], want %zu", text, got, buf, n);
    }
    free(ids);
}

static void expect_decode(const moec_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                          const char *want)
{
    char *text = NULL;
    size_t len = 0;
    moec_err err = { 0 };
    if (moec_tokenizer_decode(tok, ids, n, skip_special, &text, &len, &err))
        fail_msg("decode: %s", err.msg);
    assert_int_equal(len, strlen(want));
    assert_string_equal(text, want);
    free(text);
}

#define IDS(...) ((const int32_t[]){ __VA_ARGS__ }), sizeof((const int32_t[]){ __VA_ARGS__ }) / sizeof(int32_t)

/* ---- the fixtures' HF reference cases ---- */

static void test_reference_cases(void **state)
{
    (void)state;
    for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++) {
        moec_tokenizer *tok = load(fixture_tokenizer(FIXTURES[f]));
        char rel[256];
        snprintf(rel, sizeof rel, "tests/fixtures/%s/reference/tokenizer_cases.json", FIXTURES[f]);
        char *json = tu_read_file(tu_src(rel), NULL);
        cJSON *cases = cJSON_Parse(json);
        assert_true(cJSON_IsArray(cases));
        assert_true(cJSON_GetArraySize(cases) > 0);
        const cJSON *c;
        cJSON_ArrayForEach(c, cases) {
            const cJSON *text = cJSON_GetObjectItem(c, "text"), *ids = cJSON_GetObjectItem(c, "ids");
            assert_true(cJSON_IsString(text) && cJSON_IsArray(ids));
            size_t n = (size_t)cJSON_GetArraySize(ids), i = 0;
            int32_t *want = malloc((n + 1) * sizeof *want);
            const cJSON *id;
            cJSON_ArrayForEach(id, ids) want[i++] = (int32_t)id->valuedouble;
            expect_ids(tok, text->valuestring, want, n);
            expect_decode(tok, want, n, 0, text->valuestring);

            /* streaming: the bytes of the tokens, concatenated, are the text */
            char buf[4096];
            size_t k = 0;
            for (i = 0; i < n; i++) {
                int b = moec_tokenizer_token_bytes(tok, want[i], buf + k, sizeof buf - k);
                assert_true(b > 0 && (size_t)b <= sizeof buf - k);
                k += (size_t)b;
            }
            assert_int_equal(k, strlen(text->valuestring));
            assert_memory_equal(buf, text->valuestring, k);
            free(want);
        }
        cJSON_Delete(cases);
        free(json);
        moec_tokenizer_free(tok);
    }
}

/* prompt.txt (no trailing newline, as given) encodes to tokens.txt. */
static void test_reference_prompt(void **state)
{
    (void)state;
    for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++) {
        moec_tokenizer *tok = load(fixture_tokenizer(FIXTURES[f]));
        char rel[256];
        size_t plen;
        snprintf(rel, sizeof rel, "tests/fixtures/%s/reference/prompt.txt", FIXTURES[f]);
        char *prompt = tu_read_file(tu_src(rel), &plen);
        snprintf(rel, sizeof rel, "tests/fixtures/%s/reference/tokens.txt", FIXTURES[f]);
        char *tokens = tu_read_file(tu_src(rel), NULL);

        int32_t want[4096];
        size_t n = 0;
        char *save = NULL;
        for (char *w = strtok_r(tokens, " \n", &save); w; w = strtok_r(NULL, " \n", &save)) {
            assert_true(n < 4096);
            want[n++] = (int32_t)strtol(w, NULL, 10);
        }
        assert_true(n > 0);

        int32_t *ids;
        size_t got;
        moec_err err;
        assert_int_equal(moec_tokenizer_encode(tok, prompt, plen, &ids, &got, &err), MOEC_OK);
        assert_int_equal(got, n);
        assert_memory_equal(ids, want, n * sizeof *ids);

        char *text;
        size_t len;
        assert_int_equal(moec_tokenizer_decode(tok, ids, got, 0, &text, &len, &err), MOEC_OK);
        assert_int_equal(len, plen);
        assert_memory_equal(text, prompt, plen);
        free(text);
        free(ids);
        free(tokens);
        free(prompt);
        moec_tokenizer_free(tok);
    }
}

/* <|endoftext|> in the text is one token; the text around it is encoded as
 * if it stood alone. */
static void test_fixture_special_token(void **state)
{
    (void)state;
    moec_tokenizer *tok = load(fixture_tokenizer("qwen2moe-random"));
    assert_int_equal(moec_tokenizer_vocab_size(tok), 4096);
    assert_int_equal(moec_tokenizer_find(tok, "<|endoftext|>"), 4095);
    assert_int_equal(moec_tokenizer_find(tok, "Ġthe"), 262);
    assert_int_equal(moec_tokenizer_find(tok, "no such token"), -1);
    assert_true(moec_tokenizer_is_special(tok, 4095));
    assert_false(moec_tokenizer_is_special(tok, 262));
    assert_false(moec_tokenizer_is_special(tok, 99999));
    assert_string_equal(moec_tokenizer_piece(tok, 262), "Ġthe");
    assert_string_equal(moec_tokenizer_piece(tok, 4095), "<|endoftext|>");
    assert_null(moec_tokenizer_piece(tok, 4096));

    /* "Hello, world!" is 72 627 111 44 1636 33 (reference case) */
    expect_ids(tok, "Hello, world!<|endoftext|>Hello, world!",
               IDS(72, 627, 111, 44, 1636, 33, 4095, 72, 627, 111, 44, 1636, 33));
    const int32_t ids[] = { 72, 627, 111, 4095, 44 };
    expect_decode(tok, ids, 5, 0, "Hello<|endoftext|>,");
    expect_decode(tok, ids, 5, 1, "Hello,");
    char buf[32];
    assert_int_equal(moec_tokenizer_token_bytes(tok, 4095, buf, sizeof buf), 13);
    assert_memory_equal(buf, "<|endoftext|>", 13);
    /* the return value is the full size even when buf is too small */
    assert_int_equal(moec_tokenizer_token_bytes(tok, 4095, buf, 4), 13);
    moec_tokenizer_free(tok);
}

/* ---- SentencePiece-style BPE: tests/data/tokenizer_sp.json ----
 * Normalizer Prepend("▁") + Replace(" " -> "▁"), no pre-tokenizer, byte
 * fallback, fused <unk>, decoder Replace + ByteFallback + Fuse + Strip.
 * ids: <unk> 0, <s> 1, </s> 2, <0xNN> 3+NN, ▁ 259, h 260, e 261, l 262,
 * o 263, w 264, r 265, d 266, a 267, b 268, c 269, ▁h 270, ll 271, he 272,
 * ▁he 273, llo 274, ▁hello 275, or 276, ▁w 277, ld 278, ▁wor 279,
 * ▁world 280, bc 281, ab 282. Merges by rank: ▁ h, l l, h e, ▁h e, ll o,
 * ▁he llo, o r, ▁ w, l d, ▁w or, ▁wor ld, b c, a b. */

static void test_sp_basic(void **state)
{
    (void)state;
    moec_tokenizer *tok = load(tu_src("tests/data/tokenizer_sp.json"));
    assert_int_equal(moec_tokenizer_vocab_size(tok), 283);
    /* "▁hello▁world": ▁h, ll, ▁he, llo, ▁hello, then or, ▁w, ld, ▁wor, ▁world */
    expect_ids(tok, "hello world", IDS(275, 280));
    expect_decode(tok, IDS(275, 280), 0, "hello world");
    /* prefix space: "▁▁hello", the first ▁ has no merge with ▁ */
    expect_ids(tok, " hello", IDS(259, 275));
    expect_decode(tok, IDS(259, 275), 0, " hello");
    /* é is not in the vocabulary: its bytes C3 A9 become <0xC3> <0xA9> */
    expect_ids(tok, "hé", IDS(270, 3 + 0xC3, 3 + 0xA9));
    expect_decode(tok, IDS(270, 3 + 0xC3, 3 + 0xA9), 0, "hé");
    /* merge priority: "b c" (rank 11) beats "a b" (rank 12) */
    expect_ids(tok, "abc", IDS(259, 267, 281));
    /* <s> is cut out first; the text after it gets its own "▁" */
    expect_ids(tok, "<s>hello", IDS(1, 275));
    expect_decode(tok, IDS(1, 275), 0, "<s> hello");
    expect_decode(tok, IDS(1, 275), 1, "hello");
    /* a lone byte token that is not UTF-8 decodes to U+FFFD */
    expect_decode(tok, IDS(270, 3 + 0xC3), 0, "h\xEF\xBF\xBD");
    expect_ids(tok, "", NULL, 0);
    /* streaming bytes: ▁ is a space, <0xC3> the raw byte */
    char buf[16];
    assert_int_equal(moec_tokenizer_token_bytes(tok, 275, buf, sizeof buf), 6);
    assert_memory_equal(buf, " hello", 6);
    assert_int_equal(moec_tokenizer_token_bytes(tok, 3 + 0xC3, buf, sizeof buf), 1);
    assert_int_equal((unsigned char)buf[0], 0xC3);
    assert_int_equal(moec_tokenizer_find(tok, "▁hello"), 275);
    assert_int_equal(moec_tokenizer_find(tok, "<0x41>"), 3 + 0x41);
    moec_tokenizer_free(tok);
}

static void set_model_flags(cJSON *root, const void *arg)
{
    const bool *f = arg; /* byte_fallback, fuse_unk */
    cJSON *model = cJSON_GetObjectItem(root, "model");
    cJSON_ReplaceItemInObject(model, "byte_fallback", cJSON_CreateBool(f[0]));
    cJSON_ReplaceItemInObject(model, "fuse_unk", cJSON_CreateBool(f[1]));
}

static void test_sp_unknown(void **state)
{
    (void)state;
    /* without byte fallback é is <unk>; consecutive unknowns fuse */
    moec_tokenizer *tok = load_edited("tokenizer_sp.json", set_model_flags, (bool[]){ false, true });
    expect_ids(tok, "héé", IDS(270, 0));
    expect_ids(tok, "héllo", IDS(270, 0, 274));
    expect_decode(tok, IDS(270, 0), 0, "h<unk>");
    expect_decode(tok, IDS(270, 0), 1, "h");
    moec_tokenizer_free(tok);
    tok = load_edited("tokenizer_sp.json", set_model_flags, (bool[]){ false, false });
    expect_ids(tok, "héé", IDS(270, 0, 0));
    moec_tokenizer_free(tok);
}

/* Merges as ["a", "b"] pairs, with "a b" moved before "b c". */
static void pair_merges_swapped(cJSON *root, const void *arg)
{
    (void)arg;
    cJSON *model = cJSON_GetObjectItem(root, "model");
    cJSON *old = cJSON_GetObjectItem(model, "merges");
    cJSON *merges = cJSON_CreateArray();
    int n = cJSON_GetArraySize(old);
    for (int i = 0; i < n; i++) {
        int k = i == n - 2 ? n - 1 : i == n - 1 ? n - 2 : i;
        char buf[64];
        snprintf(buf, sizeof buf, "%s", cJSON_GetArrayItem(old, k)->valuestring);
        char *sp = strchr(buf, ' ');
        *sp = '\0';
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(buf));
        cJSON_AddItemToArray(pair, cJSON_CreateString(sp + 1));
        cJSON_AddItemToArray(merges, pair);
    }
    cJSON_ReplaceItemInObject(model, "merges", merges);
}

static void test_sp_pair_merges(void **state)
{
    (void)state;
    moec_tokenizer *tok = load_edited("tokenizer_sp.json", pair_merges_swapped, NULL);
    expect_ids(tok, "abc", IDS(259, 282, 269));
    expect_ids(tok, "hello world", IDS(275, 280));
    moec_tokenizer_free(tok);
}

/* The newer layout: no normalizer, Metaspace pre-tokenizer and decoder. */
static void metaspace(cJSON *root, const void *arg)
{
    const char *scheme = ((const char *const *)arg)[0];
    bool split = ((const char *const *)arg)[1] != NULL;
    cJSON_ReplaceItemInObject(root, "normalizer", cJSON_CreateNull());
    cJSON *pt = cJSON_CreateObject();
    cJSON_AddStringToObject(pt, "type", "Metaspace");
    cJSON_AddStringToObject(pt, "replacement", "▁");
    cJSON_AddStringToObject(pt, "prepend_scheme", scheme);
    cJSON_AddBoolToObject(pt, "split", split);
    cJSON_ReplaceItemInObject(root, "pre_tokenizer", pt);
    cJSON *dec = cJSON_Duplicate(pt, 1);
    cJSON_ReplaceItemInObject(root, "decoder", dec);
}

static void test_sp_metaspace(void **state)
{
    (void)state;
    const char *first[] = { "first", NULL }, *always[] = { "always", NULL },
               *split[] = { "first", "split" };
    moec_tokenizer *tok = load_edited("tokenizer_sp.json", metaspace, first);
    expect_ids(tok, "hello world", IDS(275, 280));
    expect_decode(tok, IDS(275, 280), 0, "hello world");
    /* "first": text after <s> does not start the input, so no "▁":
     * h e l l o -> ll, he, llo */
    expect_ids(tok, "<s>hello", IDS(1, 272, 274));
    expect_decode(tok, IDS(1, 272, 274), 0, "<s>hello");
    expect_decode(tok, IDS(1, 272, 274), 1, "hello");
    moec_tokenizer_free(tok);

    tok = load_edited("tokenizer_sp.json", metaspace, always);
    expect_ids(tok, "<s>hello", IDS(1, 275));
    moec_tokenizer_free(tok);

    /* split: "▁hello▁world" -> "▁hello", "▁world" */
    tok = load_edited("tokenizer_sp.json", metaspace, split);
    expect_ids(tok, "hello world", IDS(275, 280));
    expect_ids(tok, "hello  world", IDS(275, 259, 280));
    moec_tokenizer_free(tok);
}

/* One more added token, <mask> (id 283, not in the model), with flags. */
static void add_mask(cJSON *root, const void *arg)
{
    const char *flags = arg;
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", 283);
    cJSON_AddStringToObject(t, "content", "<mask>");
    cJSON_AddBoolToObject(t, "single_word", strchr(flags, 'w') != NULL);
    cJSON_AddBoolToObject(t, "lstrip", strchr(flags, 'l') != NULL);
    cJSON_AddBoolToObject(t, "rstrip", strchr(flags, 'r') != NULL);
    cJSON_AddBoolToObject(t, "normalized", false);
    cJSON_AddBoolToObject(t, "special", true);
    cJSON_AddItemToArray(cJSON_GetObjectItem(root, "added_tokens"), t);
}

static void test_sp_added_flags(void **state)
{
    (void)state;
    moec_tokenizer *tok = load_edited("tokenizer_sp.json", add_mask, "");
    assert_int_equal(moec_tokenizer_vocab_size(tok), 284);
    /* "hello " + <mask> + " world": the second part becomes "▁▁world" */
    expect_ids(tok, "hello <mask> world", IDS(275, 259, 283, 259, 280));
    moec_tokenizer_free(tok);

    /* lstrip takes the space on its left */
    tok = load_edited("tokenizer_sp.json", add_mask, "l");
    expect_ids(tok, "hello <mask> world", IDS(275, 283, 259, 280));
    moec_tokenizer_free(tok);

    /* rstrip as well: " world" loses its space */
    tok = load_edited("tokenizer_sp.json", add_mask, "lr");
    expect_ids(tok, "hello <mask> world", IDS(275, 283, 280));
    moec_tokenizer_free(tok);

    /* single_word: "a<mask>" is inside a word, so <mask> is plain text:
     * ▁ a then the bytes of < m (a) s k > */
    tok = load_edited("tokenizer_sp.json", add_mask, "w");
    expect_ids(tok, "a<mask>", IDS(259, 267, 3 + '<', 3 + 'm', 267, 3 + 's', 3 + 'k', 3 + '>'));
    expect_ids(tok, "a <mask>", IDS(259, 267, 259, 283));
    moec_tokenizer_free(tok);
}

/* A normalized added token matches its normalized form: "hello" becomes
 * "▁hello" under this normalizer, and decodes from that form. */
static void add_normalized(cJSON *root, const void *arg)
{
    (void)arg;
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", 283);
    cJSON_AddStringToObject(t, "content", "hello");
    cJSON_AddBoolToObject(t, "normalized", true);
    cJSON_AddBoolToObject(t, "special", false);
    cJSON_AddItemToArray(cJSON_GetObjectItem(root, "added_tokens"), t);
}

static void test_sp_normalized_added(void **state)
{
    (void)state;
    moec_tokenizer *tok = load_edited("tokenizer_sp.json", add_normalized, NULL);
    expect_ids(tok, "hello world", IDS(283, 280));
    expect_decode(tok, IDS(283, 280), 0, "hello world");
    expect_decode(tok, IDS(283, 280), 1, "hello world");
    assert_int_equal(moec_tokenizer_find(tok, "hello"), 283);
    moec_tokenizer_free(tok);
}

/* ---- byte-level BPE with NFKC + Lowercase: tests/data/tok_bytelevel.json ----
 * Byte b has id b (Ġ = 32); Ġh 256, ll 257, Ġhe 258, Ġhell 259, Ġhello 260,
 * Ġworld 261 (no merge builds it), <|end|> 262 (special). ByteLevel
 * pre-tokenizer with add_prefix_space and the GPT-2 regex. */

static void test_bytelevel(void **state)
{
    (void)state;
    moec_tokenizer *tok = load(tu_src("tests/data/tok_bytelevel.json"));
    /* "hello world" -> " hello", " world"; Ġ h, l l, Ġh e, Ġhe ll, Ġhell o */
    expect_ids(tok, "Hello World", IDS(260, 32, 'w', 'o', 'r', 'l', 'd'));
    expect_decode(tok, IDS(260, 32, 'w', 'o', 'r', 'l', 'd'), 0, " hello world");
    /* NFKC turns the ligature ﬁ into "fi" */
    expect_ids(tok, "\xEF\xAC\x81", IDS(32, 'f', 'i'));
    /* composition across the ASCII / non-ASCII boundary: '<' + U+0338 is
     * U+226E, 'a' + U+0301 is U+00E1 */
    expect_ids(tok, "<\xCC\xB8", IDS(32, 0xE2, 0x89, 0xAE));
    expect_ids(tok, "xa\xCC\x81" "b", IDS(32, 'x', 0xC3, 0xA1, 'b'));
    /* Lowercase maps İ to "i" + U+0307 (CC 87), which the regex cuts off */
    expect_ids(tok, "\xC4\xB0", IDS(32, 'i', 0xCC, 0x87));
    /* the prefix space is added to each stretch between added tokens */
    expect_ids(tok, "a<|end|>b", IDS(32, 'a', 262, 32, 'b'));
    expect_decode(tok, IDS(32, 'a', 262, 32, 'b'), 0, " a<|end|> b");
    expect_decode(tok, IDS(32, 'a', 262, 32, 'b'), 1, " a b");
    /* a lone lead byte is not UTF-8 */
    expect_decode(tok, IDS('a', 0xC3), 0, "a\xEF\xBF\xBD");
    char buf[8];
    assert_int_equal(moec_tokenizer_token_bytes(tok, 0xC3, buf, sizeof buf), 1);
    assert_int_equal((unsigned char)buf[0], 0xC3);
    assert_int_equal(moec_tokenizer_token_bytes(tok, 260, buf, sizeof buf), 6);
    assert_memory_equal(buf, " hello", 6);
    moec_tokenizer_free(tok);
}

static void ignore_merges(cJSON *root, const void *arg)
{
    (void)arg;
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(root, "model"), "ignore_merges",
                              cJSON_CreateTrue());
}

static void test_bytelevel_ignore_merges(void **state)
{
    (void)state;
    /* a word that is itself in the vocabulary is taken whole */
    moec_tokenizer *tok = load_edited("tok_bytelevel.json", ignore_merges, NULL);
    expect_ids(tok, "Hello World", IDS(260, 261));
    moec_tokenizer_free(tok);
}

/* ---- errors ---- */

static void expect_load_error(const char *json, moec_status code, const char *needle)
{
    moec_tokenizer *tok = (moec_tokenizer *)1;
    moec_err err = { 0 };
    moec_status st = moec_tokenizer_load_json(&tok, json, strlen(json), &err);
    if (st != code || !strstr(err.msg, needle))
        fail_msg("loading %.80s: got %d '%s', want %d with '%s'", json, st, err.msg, code, needle);
    assert_null(tok);
}

static void test_load_errors(void **state)
{
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"BPE\", ", MOEC_ERR_FORMAT, "malformed JSON");
    expect_load_error("[1, 2]", MOEC_ERR_FORMAT, "top level");
    expect_load_error("{\"normalizer\": null}", MOEC_ERR_FORMAT, "model");
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}",
                      MOEC_ERR_UNSUPPORTED, "WordPiece");
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
                      MOEC_ERR_UNSUPPORTED, "Unigram");
    const char *bpe = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                      "\"merges\": [\"a b\"]}";
    char buf[1024];
    snprintf(buf, sizeof buf, "{%s, \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}}", bpe);
    expect_load_error(buf, MOEC_ERR_UNSUPPORTED, "pre_tokenizer.type: unsupported pre-tokenizer 'BertPreTokenizer'");
    snprintf(buf, sizeof buf, "{%s, \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": "
                              "[{\"type\": \"NFC\"}, {\"type\": \"Precompiled\"}]}}", bpe);
    expect_load_error(buf, MOEC_ERR_UNSUPPORTED, "normalizer.normalizers[1].type");
    snprintf(buf, sizeof buf, "{%s, \"decoder\": {\"type\": \"CTC\"}}", bpe);
    expect_load_error(buf, MOEC_ERR_UNSUPPORTED, "CTC");
    snprintf(buf, sizeof buf, "{%s, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                              "{\"Regex\": \"(\\\\p{L}\"}, \"behavior\": \"Isolated\", \"invert\": false}}", bpe);
    expect_load_error(buf, MOEC_ERR_FORMAT, "pre_tokenizer.pattern.Regex: bad regex");
    snprintf(buf, sizeof buf, "{%s, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                              "{\"String\": \" \"}, \"behavior\": \"Sideways\", \"invert\": false}}", bpe);
    expect_load_error(buf, MOEC_ERR_UNSUPPORTED, "Sideways");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
                      MOEC_ERR_FORMAT, "model.merges[0]: token 'b' is not in the vocabulary");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
                      MOEC_ERR_FORMAT, "merged token 'ab'");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}",
                      MOEC_ERR_FORMAT, "model.vocab[\"a\"]");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"abc\"]}}",
                      MOEC_ERR_FORMAT, "model.merges[0]");
    /* invalid UTF-8 anywhere in the file: a Replace normalizer whose
     * content is 0xFF bytes put them into text that PCRE2 matched without
     * checking, and it read past the text (found by fuzzing) */
    expect_load_error("{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"a\"}, "
                      "\"content\": \"\xff\xff\"}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                      "{\"Regex\": \"\\\\w+\"}, \"behavior\": \"Isolated\", \"invert\": false}, "
                      "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                      MOEC_ERR_FORMAT, "not valid UTF-8 (byte 0xFF at offset");
    /* ids far beyond the tokens defined: the id table would be sized by the
     * claim (16M entries for one token), not by the file */
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 16000000}, \"merges\": []}}",
                      MOEC_ERR_FORMAT, "far beyond");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"added_tokens\": "
                      "[{\"id\": 9000000, \"content\": \"<x>\", \"special\": true}]}",
                      MOEC_ERR_FORMAT, "far beyond");

    /* the fixture cut in half */
    size_t len;
    char *json = tu_read_file(tu_src("models/mixtral-tiny/tokenizer.json"), &len);
    moec_tokenizer *tok = NULL;
    moec_err err = { 0 };
    assert_int_equal(moec_tokenizer_load_json(&tok, json, len / 2, &err), MOEC_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "malformed JSON"));
    assert_null(tok);
    free(json);

    assert_int_equal(moec_tokenizer_load(&tok, tu_src("tests/data/no-such.json"), &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "no-such.json"));
}

static void test_use_errors(void **state)
{
    (void)state;
    moec_tokenizer *tok = load(tu_src("tests/data/tokenizer_sp.json"));
    char *text = NULL;
    moec_err err = { 0 };
    assert_int_equal(moec_tokenizer_decode(tok, IDS(275, 283), 0, &text, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "token id 283"));
    assert_null(text);
    assert_int_equal(moec_tokenizer_decode(tok, IDS(-1), 0, &text, NULL, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "token id -1"));
    char buf[8];
    assert_int_equal(moec_tokenizer_token_bytes(tok, 283, buf, sizeof buf), -1);
    assert_int_equal(moec_tokenizer_token_bytes(tok, -5, buf, sizeof buf), -1);

    int32_t *ids = NULL;
    size_t n;
    assert_int_equal(moec_tokenizer_encode(tok, "ab\xC3(", 4, &ids, &n, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "offset 2"));
    assert_null(ids);
    /* an overlong encoding of '/' and a UTF-16 surrogate are not UTF-8 */
    assert_int_equal(moec_tokenizer_encode(tok, "\xC0\xAF", 2, &ids, &n, &err), MOEC_ERR_ARG);
    assert_int_equal(moec_tokenizer_encode(tok, "\xED\xA0\x80", 3, &ids, &n, &err), MOEC_ERR_ARG);
    moec_tokenizer_free(tok);
}

/* ---- the moec-tokenize tool ---- */

static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_tool(void **state)
{
    (void)state;
    const char *bin = MOEC_BIN_DIR "/moec-tokenize";
    if (access(bin, X_OK) != 0)
        skip();
    char cmd[8192], out[4096];
    /* a model directory or the json itself; ids on one line */
    snprintf(cmd, sizeof cmd, "printf 'Hello, world!' | %s %s", bin, tu_src("models/mixtral-tiny"));
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "72 627 111 44 1636 33\n");
    snprintf(cmd, sizeof cmd, "echo '1 275  280' | %s --decode %s", bin,
             tu_src("tests/data/tokenizer_sp.json"));
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "<s> hello world");
    snprintf(cmd, sizeof cmd, "echo '1 275 280' | %s -d --skip-special %s", bin,
             tu_src("tests/data/tokenizer_sp.json"));
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "hello world");
    snprintf(cmd, sizeof cmd, "%s --help", bin);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "usage: moec-tokenize"));
    /* usage errors exit 2, failures 1 */
    snprintf(cmd, sizeof cmd, "%s 2>/dev/null </dev/null", bin);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s --frobnicate x 2>/dev/null </dev/null", bin);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s %s 2>/dev/null </dev/null", bin, tu_src("tests/data/no-such-dir"));
    assert_int_equal(run(cmd, out, sizeof out), 1);
    snprintf(cmd, sizeof cmd, "echo '9999999' | %s -d %s 2>&1", bin, tu_src("tests/data/tokenizer_sp.json"));
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "token id 9999999"));
    snprintf(cmd, sizeof cmd, "echo 'x1' | %s -d %s 2>/dev/null", bin, tu_src("tests/data/tokenizer_sp.json"));
    assert_int_equal(run(cmd, out, sizeof out), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_cases),
        cmocka_unit_test(test_reference_prompt),
        cmocka_unit_test(test_fixture_special_token),
        cmocka_unit_test(test_sp_basic),
        cmocka_unit_test(test_sp_unknown),
        cmocka_unit_test(test_sp_pair_merges),
        cmocka_unit_test(test_sp_metaspace),
        cmocka_unit_test(test_sp_added_flags),
        cmocka_unit_test(test_sp_normalized_added),
        cmocka_unit_test(test_bytelevel),
        cmocka_unit_test(test_bytelevel_ignore_merges),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_use_errors),
        cmocka_unit_test(test_tool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
