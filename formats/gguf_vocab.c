/* gguf_vocab.c - tokenizer.json -> llama.cpp tokenizer metadata (see
 * gguf_vocab.h for the mapping and why the SentencePiece scores are -rank). */
#include "formats/gguf_vocab.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* Byte-level pre-tokenizer regexes (as tokenizer.json spells them) and the
 * llama.cpp pre-tokenizer that splits text the same way. */
static const struct {
    const char *name;
    const char *regex;
} known_pre[] = {
    {"qwen2", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
              "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"llama-bpe", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"gpt-2", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"},
};

/* token string -> id, open addressing (vocabularies reach 10^5 tokens). */
typedef struct tok_index {
    int *slot; /* id + 1, 0 = empty */
    size_t mask;
    char *const *tokens;
} tok_index;

static bool index_build(tok_index *x, char *const *tokens, const int32_t *types, int n, int wanted_type)
{
    size_t cap = 16;
    while (cap < 2 * (size_t)n)
        cap *= 2;
    x->mask = cap - 1;
    x->tokens = tokens;
    if (!(x->slot = calloc(cap, sizeof *x->slot)))
        return false;
    for (int id = 0; id < n; id++) {
        if (types[id] != wanted_type)
            continue;
        size_t h = (size_t)XXH3_64bits(tokens[id], strlen(tokens[id])) & x->mask;
        while (x->slot[h] && strcmp(tokens[x->slot[h] - 1], tokens[id]) != 0)
            h = (h + 1) & x->mask;
        if (!x->slot[h])
            x->slot[h] = id + 1;
    }
    return true;
}

static int index_find(const tok_index *x, const char *s)
{
    size_t h = (size_t)XXH3_64bits(s, strlen(s)) & x->mask;
    while (x->slot[h]) {
        if (strcmp(x->tokens[x->slot[h] - 1], s) == 0)
            return x->slot[h] - 1;
        h = (h + 1) & x->mask;
    }
    return -1;
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool type_is(const cJSON *o, const char *t)
{
    const char *s = str_of(o, "type");
    return s && strcmp(s, t) == 0;
}

/* A bool field with a default when absent. */
static bool bool_of(const cJSON *o, const char *key, bool dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* The byte-level pre-tokenizer's llama.cpp name, or NULL with *why set. */
static const char *bytelevel_pre(const cJSON *pre, bool olmo, const char **why)
{
    const char *regex = NULL;
    if (type_is(pre, "ByteLevel")) {
        if (bool_of(pre, "add_prefix_space", true)) {
            *why = "ByteLevel with add_prefix_space (llama.cpp's BPE adds no prefix space)";
            return NULL;
        }
        if (!bool_of(pre, "use_regex", true)) {
            *why = "ByteLevel without a splitting regex";
            return NULL;
        }
        return olmo ? "olmo" : "gpt-2";
    }
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    if (!type_is(pre, "Sequence") || cJSON_GetArraySize(seq) != 2) {
        *why = "a pre-tokenizer other than ByteLevel or Split(regex) + ByteLevel";
        return NULL;
    }
    const cJSON *split = cJSON_GetArrayItem(seq, 0), *bl = cJSON_GetArrayItem(seq, 1);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const char *beh = str_of(split, "behavior");
    if (!type_is(split, "Split") || !(regex = str_of(pat, "Regex")) || !beh || strcmp(beh, "Isolated") != 0 ||
        bool_of(split, "invert", false) || !type_is(bl, "ByteLevel") || bool_of(bl, "use_regex", true) ||
        bool_of(bl, "add_prefix_space", false)) {
        *why = "a pre-tokenizer other than ByteLevel or Split(regex, Isolated) + ByteLevel(no regex)";
        return NULL;
    }
    for (size_t i = 0; i < sizeof known_pre / sizeof *known_pre; i++)
        if (strcmp(regex, known_pre[i].regex) == 0)
            return strcmp(known_pre[i].name, "gpt-2") == 0 && olmo ? "olmo" : known_pre[i].name;
    *why = "a split regex llama.cpp has no pre-tokenizer for";
    return NULL;
}

/* SentencePiece style: spaces become "▁" (normalizer Replace or Metaspace)
 * and byte fallback; *prefix: a "▁" is prepended. NULL when fine, else why
 * not. */
static const char *sp_style(const cJSON *norm, const cJSON *pre, bool *prefix)
{
    static const char *const mark = "\xe2\x96\x81"; /* U+2581 */
    bool replaces = false;
    *prefix = false;
    if (norm && !cJSON_IsNull(norm)) {
        const cJSON *list = type_is(norm, "Sequence") ? cJSON_GetObjectItemCaseSensitive(norm, "normalizers") : NULL;
        const cJSON *it;
        int n = list ? cJSON_GetArraySize(list) : 1;
        for (int i = 0; i < n; i++) {
            it = list ? cJSON_GetArrayItem(list, i) : norm;
            const cJSON *pat = cJSON_GetObjectItemCaseSensitive(it, "pattern");
            if (type_is(it, "Prepend") && str_of(it, "prepend") && strcmp(str_of(it, "prepend"), mark) == 0)
                *prefix = true;
            else if (type_is(it, "Replace") && str_of(pat, "String") && strcmp(str_of(pat, "String"), " ") == 0 &&
                     str_of(it, "content") && strcmp(str_of(it, "content"), mark) == 0)
                replaces = true;
            else
                return "a normalizer other than Prepend(\"\xe2\x96\x81\") and Replace(\" \" -> \"\xe2\x96\x81\")";
        }
    }
    if (pre && !cJSON_IsNull(pre)) {
        if (!type_is(pre, "Metaspace"))
            return "a pre-tokenizer other than Metaspace";
        if (bool_of(pre, "split", false))
            return "a Metaspace that splits on spaces (llama.cpp's SentencePiece does not)";
        const char *scheme = str_of(pre, "prepend_scheme");
        replaces = true;
        *prefix = scheme ? strcmp(scheme, "never") != 0 : bool_of(pre, "add_prefix_space", true);
    }
    return replaces ? NULL : "spaces that are not turned into \"\xe2\x96\x81\"";
}

static int is_byte_token(const char *s)
{
    unsigned v;
    char tail;
    return strlen(s) == 6 && sscanf(s, "<0x%2X%c", &v, &tail) == 2 && tail == '>' && v <= 255;
}

/* tokenizer_config.json's bos/eos token, by content, or -1. */
static int config_token_id(const cJSON *tc, const char *key, const char *const *tokens, int n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(tc, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : str_of(v, "content");
    for (int i = 0; s && i < n; i++)
        if (tokens[i] && strcmp(tokens[i], s) == 0)
            return i;
    return -1;
}

moec_status moec_gguf_add_vocab(moec_gguf_writer *w, const moec_gguf_vocab_src *src, const char **pre_out,
                                moec_err *err)
{
    static char family[48];
    const int n = src->vocab_size;
    cJSON *tj = cJSON_ParseWithLength(src->tokenizer_json, src->tokenizer_json_len);
    cJSON *tc = src->tokenizer_config ? cJSON_Parse(src->tokenizer_config) : NULL;
    char **tokens = calloc((size_t)(n > 0 ? n : 1), sizeof *tokens);
    int32_t *types = calloc((size_t)(n > 0 ? n : 1), sizeof *types);
    float *scores = calloc((size_t)(n > 0 ? n : 1), sizeof *scores);
    size_t *lens = calloc((size_t)(n > 0 ? n : 1), sizeof *lens);
    char **merges = NULL;
    size_t *mlens = NULL;
    int n_merges = 0;
    moec_status st = MOEC_OK;
    if (!tokens || !types || !scores || !lens) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for a vocabulary of %d", n);
        goto done;
    }
    if (!tj) {
        st = moec_err_set(err, MOEC_ERR_FORMAT, "tokenizer.json: not valid JSON");
        goto done;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *mlist = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!type_is(model, "BPE")) {
        st = moec_err_set(err, MOEC_ERR_UNSUPPORTED, "tokenizer.json: model type %s; GGUF export carries BPE only",
                          str_of(model, "type") ? str_of(model, "type") : "(missing)");
        goto done;
    }
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(mlist)) {
        st = moec_err_set(err, MOEC_ERR_FORMAT, "tokenizer.json: model.vocab or model.merges missing");
        goto done;
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(tj, "pre_tokenizer");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(tj, "normalizer");
    const bool byte_fallback = bool_of(model, "byte_fallback", false);
    const char *why = NULL, *pre_name = NULL;
    bool sp = byte_fallback || type_is(pre, "Metaspace"), prefix = false;
    if (sp) {
        why = sp_style(norm, pre, &prefix);
    } else {
        if (norm && !cJSON_IsNull(norm) && !type_is(norm, "NFC"))
            why = "a normalizer other than NFC";
        else
            pre_name = bytelevel_pre(pre, src->olmo, &why);
    }
    if (why) {
        st = moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                          "tokenizer.json: %s; llama.cpp would tokenize differently, so it is not exported", why);
        goto done;
    }
    /* vocabulary, then added tokens over it */
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab)
    {
        const int id = cJSON_IsNumber(it) ? (int)it->valuedouble : -1;
        if (id < 0 || id >= n) {
            st = moec_err_set(err, MOEC_ERR_FORMAT,
                              "tokenizer.json: token '%s' has id %d, outside the model's vocabulary of %d", it->string,
                              id, n);
            goto done;
        }
        if (tokens[id]) {
            st = moec_err_set(err, MOEC_ERR_FORMAT, "tokenizer.json: id %d names two tokens", id);
            goto done;
        }
        if (!(tokens[id] = strdup(it->string))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        types[id] = sp && is_byte_token(it->string) ? TT_BYTE : TT_NORMAL;
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(tj, "added_tokens"))
    {
        const cJSON *idj = cJSON_GetObjectItemCaseSensitive(it, "id");
        const char *content = str_of(it, "content");
        const int id = cJSON_IsNumber(idj) ? (int)idj->valuedouble : -1;
        if (!content || id < 0 || id >= n) {
            st = moec_err_set(err, MOEC_ERR_FORMAT, "tokenizer.json: added token %s with id %d outside [0, %d)",
                              content ? content : "(no content)", id, n);
            goto done;
        }
        if (!tokens[id] && !(tokens[id] = strdup(content))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        types[id] = bool_of(it, "special", false) ? TT_CONTROL : TT_USER;
    }
    const char *unk = str_of(model, "unk_token");
    int unk_id = -1;
    /* merges: "a b" strings or ["a", "b"] pairs */
    n_merges = cJSON_GetArraySize(mlist);
    merges = calloc((size_t)(n_merges ? n_merges : 1), sizeof *merges);
    mlens = calloc((size_t)(n_merges ? n_merges : 1), sizeof *mlens);
    if (!merges || !mlens) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for %d merges", n_merges);
        goto done;
    }
    for (int i = 0; i < n_merges; i++) {
        const cJSON *m = cJSON_GetArrayItem(mlist, i);
        const char *a = NULL, *b = NULL;
        if (cJSON_IsString(m)) {
            merges[i] = strdup(m->valuestring);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 0)) && cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            a = cJSON_GetArrayItem(m, 0)->valuestring;
            b = cJSON_GetArrayItem(m, 1)->valuestring;
            if ((merges[i] = malloc(strlen(a) + strlen(b) + 2)))
                sprintf(merges[i], "%s %s", a, b);
        } else {
            st = moec_err_set(err, MOEC_ERR_FORMAT, "tokenizer.json: merge %d is neither \"a b\" nor [a, b]", i);
            goto done;
        }
        if (!merges[i]) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        mlens[i] = strlen(merges[i]);
    }
    for (int id = 0; id < n; id++) {
        if (!tokens[id]) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", id);
            if (!(tokens[id] = strdup(pad))) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
                goto done;
            }
            types[id] = TT_UNUSED;
        }
        lens[id] = strlen(tokens[id]);
        if (unk && types[id] != TT_UNUSED && strcmp(tokens[id], unk) == 0) {
            unk_id = id;
            types[id] = TT_UNKNOWN;
        }
    }
    if (sp) {
        /* score of a merge's result: -rank (first merge producing it); tokens
         * no merge produces score below every merge */
        for (int id = 0; id < n; id++)
            scores[id] = -(float)n_merges - 1.0f;
        tok_index index;
        if (!index_build(&index, tokens, types, n, TT_NORMAL)) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        char *joined = NULL;
        size_t cap = 0;
        for (int r = 0; r < n_merges && !st; r++) {
            const char *sp_at = strchr(merges[r], ' ');
            if (!sp_at) {
                st = moec_err_set(err, MOEC_ERR_FORMAT, "tokenizer.json: merge %d ('%s') has no space", r, merges[r]);
                break;
            }
            if (mlens[r] > cap) {
                cap = mlens[r] + 1;
                char *p = realloc(joined, cap);
                if (!p) {
                    st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
                    break;
                }
                joined = p;
            }
            size_t la = (size_t)(sp_at - merges[r]);
            memcpy(joined, merges[r], la);
            strcpy(joined + la, sp_at + 1);
            const int id = index_find(&index, joined);
            if (id >= 0 && scores[id] < -(float)n_merges)
                scores[id] = -(float)r;
        }
        free(joined);
        free(index.slot);
        for (int id = 0; id < n; id++)
            if (types[id] != TT_NORMAL && types[id] != TT_USER)
                scores[id] = 0.0f;
        if (st)
            goto done;
    }
    int bos = src->bos_id, eos = src->eos_id;
    if (bos < 0 && tc)
        bos = config_token_id(tc, "bos_token", (const char *const *)tokens, n);
    if (eos < 0 && tc)
        eos = config_token_id(tc, "eos_token", (const char *const *)tokens, n);
    const cJSON *ab = tc ? cJSON_GetObjectItemCaseSensitive(tc, "add_bos_token") : NULL;
    const cJSON *ae = tc ? cJSON_GetObjectItemCaseSensitive(tc, "add_eos_token") : NULL;
    const bool add_bos = cJSON_IsBool(ab) ? cJSON_IsTrue(ab) : sp;
    const bool add_eos = cJSON_IsBool(ae) ? cJSON_IsTrue(ae) : false;
    const char *tmpl = tc ? str_of(tc, "chat_template") : NULL;

    if ((st = moec_gguf_add_str(w, "tokenizer.ggml.model", sp ? "llama" : "gpt2", sp ? 5 : 4, err)))
        goto done;
    if (!sp && (st = moec_gguf_add_str(w, "tokenizer.ggml.pre", pre_name, strlen(pre_name), err)))
        goto done;
    if ((st = moec_gguf_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, lens, (uint64_t)n, err)) ||
        (sp && (st = moec_gguf_add_arr_f32(w, "tokenizer.ggml.scores", scores, (uint64_t)n, err))) ||
        (st = moec_gguf_add_arr_i32(w, "tokenizer.ggml.token_type", types, (uint64_t)n, err)))
        goto done;
    if (!sp && (st = moec_gguf_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, mlens,
                                           (uint64_t)n_merges, err)))
        goto done;
    if ((bos >= 0 && (st = moec_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos, err))) ||
        (eos >= 0 && (st = moec_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos, err))) ||
        (unk_id >= 0 && (st = moec_gguf_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk_id, err))) ||
        (st = moec_gguf_add_bool(w, "tokenizer.ggml.add_bos_token", add_bos, err)) ||
        (st = moec_gguf_add_bool(w, "tokenizer.ggml.add_eos_token", add_eos, err)) ||
        (sp && (st = moec_gguf_add_bool(w, "tokenizer.ggml.add_space_prefix", prefix, err))) ||
        (tmpl && (st = moec_gguf_add_str(w, "tokenizer.chat_template", tmpl, strlen(tmpl), err))))
        goto done;
    snprintf(family, sizeof family, "%s%s%s", sp ? "llama" : "gpt2", sp ? "" : "/", sp ? "" : pre_name);
    if (pre_out)
        *pre_out = family;
done:
    for (int i = 0; tokens && i < n; i++)
        free(tokens[i]);
    for (int i = 0; merges && i < n_merges; i++)
        free(merges[i]);
    free(tokens), free(types), free(scores), free(lens), free(merges), free(mlens);
    cJSON_Delete(tj);
    cJSON_Delete(tc);
    return st;
}
