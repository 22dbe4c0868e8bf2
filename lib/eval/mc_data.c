#include "eval/mc_data.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/fsutil.h"

void moec_mc_free(moec_mc_item *items, size_t n_items)
{
    if (!items)
        return;
    for (size_t i = 0; i < n_items; i++) {
        free(items[i].ctx);
        for (int c = 0; c < items[i].n_choices; c++)
            if (items[i].choice)
                free(items[i].choice[c]);
        free(items[i].choice);
        free(items[i].n_choice);
        free(items[i].choice_bytes);
    }
    free(items);
}

static moec_status parse_item(const char *line, const moec_tokenizer *tok, moec_mc_item *it, moec_err *err)
{
    cJSON *o = cJSON_Parse(line);
    moec_status st = MOEC_OK;
    if (!o || !cJSON_IsObject(o)) {
        st = moec_err_set(err, MOEC_ERR_FORMAT, "not a JSON object");
        goto done;
    }
    const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(o, "context");
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(o, "choices");
    const cJSON *label = cJSON_GetObjectItemCaseSensitive(o, "label");
    if (!cJSON_IsString(ctx) || !cJSON_IsArray(choices) || cJSON_GetArraySize(choices) < 1 ||
        !cJSON_IsNumber(label)) {
        st = moec_err_set(err, MOEC_ERR_FORMAT, "needs \"context\" (string), \"choices\" (list) and \"label\" (number)");
        goto done;
    }
    int nc = cJSON_GetArraySize(choices);
    if (label->valuedouble < 0 || label->valuedouble >= nc || label->valuedouble != (int)label->valuedouble) {
        st = moec_err_set(err, MOEC_ERR_FORMAT, "label %g is not an index into its %d choices", label->valuedouble,
                          nc);
        goto done;
    }
    it->label = (int)label->valuedouble;
    it->choice = calloc((size_t)nc, sizeof *it->choice);
    it->n_choice = calloc((size_t)nc, sizeof *it->n_choice);
    it->choice_bytes = calloc((size_t)nc, sizeof *it->choice_bytes);
    if (!it->choice || !it->n_choice || !it->choice_bytes) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    it->n_choices = nc;
    if ((st = moec_tokenizer_encode(tok, ctx->valuestring, strlen(ctx->valuestring), &it->ctx, &it->n_ctx, err)))
        goto done;
    for (int c = 0; c < nc; c++) {
        const cJSON *ch = cJSON_GetArrayItem(choices, c);
        if (!cJSON_IsString(ch)) {
            st = moec_err_set(err, MOEC_ERR_FORMAT, "choice %d is not a string", c);
            goto done;
        }
        size_t len = strlen(ch->valuestring);
        it->choice_bytes[c] = len;
        if ((st = moec_tokenizer_encode(tok, ch->valuestring, len, &it->choice[c], &it->n_choice[c], err)))
            goto done;
        if (it->n_choice[c] == 0) {
            st = moec_err_set(err, MOEC_ERR_FORMAT, "choice %d is empty", c);
            goto done;
        }
    }
    if (it->n_ctx == 0)
        st = moec_err_set(err, MOEC_ERR_FORMAT, "empty context");
done:
    cJSON_Delete(o);
    return st;
}

moec_status moec_mc_parse(const char *data, size_t len, const char *label, const moec_tokenizer *tok,
                          moec_mc_item **items, size_t *n_items, moec_err *err)
{
    *items = NULL;
    *n_items = 0;
    if (!label)
        label = "<memory>";
    if (!data && len)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: NULL data", label);
    /* one private NUL-terminated copy, cut into lines in place */
    char *text = malloc(len + 1);
    if (!text)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", label);
    if (len)
        memcpy(text, data, len);
    text[len] = '\0';
    moec_status st = MOEC_OK;
    size_t cap = 0, n = 0;
    moec_mc_item *arr = NULL;
    int line_no = 0;
    for (size_t at = 0; at < len && st == MOEC_OK;) {
        char *line = text + at;
        char *nl = memchr(line, '\n', len - at);
        size_t line_len = nl ? (size_t)(nl - line) : len - at;
        at += line_len + 1;
        line[line_len] = '\0';
        line_no++;
        if (memchr(line, '\0', line_len)) {
            st = moec_err_set(err, MOEC_ERR_FORMAT, "%s:%d: contains a NUL byte; not JSON text", label, line_no);
            break;
        }
        char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r')
            p++;
        if (!*p)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            moec_mc_item *na = realloc(arr, cap * sizeof *na);
            if (!na) {
                st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
                break;
            }
            arr = na;
        }
        memset(&arr[n], 0, sizeof arr[n]);
        n++;
        if ((st = parse_item(p, tok, &arr[n - 1], err)))
            moec_err_prefix(err, "%s:%d", label, line_no);
    }
    free(text);
    if (st == MOEC_OK && n == 0)
        st = moec_err_set(err, MOEC_ERR_FORMAT, "%s: no items", label);
    if (st) {
        moec_mc_free(arr, n);
        return st;
    }
    *items = arr;
    *n_items = n;
    return MOEC_OK;
}

moec_status moec_mc_load(const char *path, const moec_tokenizer *tok, moec_mc_item **items, size_t *n_items,
                         moec_err *err)
{
    *items = NULL;
    *n_items = 0;
    char *text;
    size_t len;
    moec_status st = moec_read_file(path, (size_t)1 << 30, &text, &len, err);
    if (st)
        return st;
    st = moec_mc_parse(text, len, path, tok, items, n_items, err);
    free(text);
    return st;
}
