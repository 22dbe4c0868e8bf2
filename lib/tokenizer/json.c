/* json.c - typed access to tokenizer.json fields; every error names the
 * field by its path ("pre_tokenizer.pretokenizers[0].behavior"). */
#include "tokenizer/tok_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *tok_json_path(char *buf, size_t cap, const char *where, const char *key, int index)
{
    int n = key ? snprintf(buf, cap, "%s.%s", where, key)
                : snprintf(buf, cap, "%s[%d]", where, index);
    /* A path longer than buf is cut short (it only labels error messages);
     * after an encoding error buf's contents are unspecified. */
    if (n < 0 && cap > 0)
        buf[0] = '\0';
    return buf;
}

static const char *kind(const cJSON *j)
{
    if (!j)
        return "nothing";
    if (cJSON_IsNull(j))
        return "null";
    if (cJSON_IsBool(j))
        return "a boolean";
    if (cJSON_IsNumber(j))
        return "a number";
    if (cJSON_IsString(j))
        return "a string";
    if (cJSON_IsArray(j))
        return "an array";
    if (cJSON_IsObject(j))
        return "an object";
    return "an invalid value";
}

moec_status tok_json_type(const cJSON *obj, const char *where, const char **type, moec_err *err)
{
    if (!cJSON_IsObject(obj))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: expected an object, found %s", where, kind(obj));
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    if (!cJSON_IsString(t))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.type: expected a string, found %s", where,
                            kind(t));
    *type = t->valuestring;
    return MOEC_OK;
}

moec_status tok_json_str(const cJSON *obj, const char *key, const char *where, bool required,
                         const char **out, moec_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return moec_err_set(err, MOEC_ERR_FORMAT, "%s.%s: missing", where, key);
        return MOEC_OK;
    }
    if (!cJSON_IsString(v))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.%s: expected a string, found %s", where, key,
                            kind(v));
    *out = v->valuestring;
    return MOEC_OK;
}

moec_status tok_json_bool(const cJSON *obj, const char *key, const char *where, bool dflt,
                          bool *out, moec_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = dflt;
    if (!v || cJSON_IsNull(v))
        return MOEC_OK;
    if (!cJSON_IsBool(v))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.%s: expected a boolean, found %s", where, key,
                            kind(v));
    *out = cJSON_IsTrue(v);
    return MOEC_OK;
}

moec_status tok_json_uint(const cJSON *obj, const char *key, const char *where, long dflt,
                          long max, long *out, moec_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = dflt;
    if (!v || cJSON_IsNull(v))
        return MOEC_OK;
    if (!cJSON_IsNumber(v))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.%s: expected an integer, found %s", where,
                            key, kind(v));
    double d = v->valuedouble;
    if (!(d >= 0 && d <= (double)max) || d != floor(d))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.%s: expected an integer in [0, %ld], found %g",
                            where, key, max, d);
    *out = (long)d;
    return MOEC_OK;
}

moec_status tok_json_char(const cJSON *obj, const char *key, const char *where, bool required,
                          uint32_t dflt, uint32_t *out, moec_err *err)
{
    const char *s;
    moec_status st = tok_json_str(obj, key, where, required, &s, err);
    if (st)
        return st;
    *out = dflt;
    if (!s)
        return MOEC_OK;
    size_t n = strlen(s);
    int len = 0;
    if (n > 0 && tok_utf8_check(s, n) == n)
        *out = tok_utf8_get(s, &len);
    if (n == 0 || (size_t)len != n)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.%s: expected one character, found '%s'", where,
                            key, s);
    return MOEC_OK;
}

moec_status tok_json_pattern(const cJSON *obj, const char *key, const char *where, tok_regex *rx,
                             moec_err *err)
{
    char path[256];
    tok_json_path(path, sizeof path, where, key, 0);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsObject(p))
        return moec_err_set(err, MOEC_ERR_FORMAT,
                            "%s: expected {\"String\": ...} or {\"Regex\": ...}, found %s", path,
                            kind(p));
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "Regex");
    if (cJSON_IsString(s))
        return tok_regex_compile(rx, s->valuestring, true, path, err);
    if (cJSON_IsString(r)) {
        char rpath[300];
        snprintf(rpath, sizeof rpath, "%s.Regex", path);
        return tok_regex_compile(rx, r->valuestring, false, rpath, err);
    }
    return moec_err_set(err, MOEC_ERR_FORMAT,
                        "%s: expected {\"String\": ...} or {\"Regex\": ...} with a string value", path);
}

moec_status tok_json_array(const cJSON *obj, const char *key, const char *where,
                           const cJSON **out, moec_err *err)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsArray(a))
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s.%s: expected an array, found %s", where, key,
                            kind(a));
    *out = a;
    return MOEC_OK;
}

/* depth counts the Sequences around j; HF does not limit it, but a file
 * nesting them this deep is broken and recursion must stop somewhere. */
static moec_status steps_at(const cJSON *j, const char *where, const char *list_key, int depth,
                            tok_step_fn step, void *ctx, moec_err *err)
{
    const char *type = NULL;
    moec_status st = tok_json_type(j, where, &type, err);
    if (st)
        return st;
    if (depth > 16)
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: Sequence nested too deeply", where);
    if (strcmp(type, "Sequence") != 0)
        return step(ctx, j, type, where, err);
    const cJSON *arr, *it;
    char path[256], item[300];
    if ((st = tok_json_array(j, list_key, where, &arr, err)))
        return st;
    tok_json_path(path, sizeof path, where, list_key, 0);
    int i = 0;
    cJSON_ArrayForEach(it, arr) {
        tok_json_path(item, sizeof item, path, NULL, i++);
        if ((st = steps_at(it, item, list_key, depth + 1, step, ctx, err)))
            return st;
    }
    return MOEC_OK;
}

moec_status tok_json_steps(const cJSON *j, const char *where, const char *list_key,
                           tok_step_fn step, void *ctx, moec_err *err)
{
    return steps_at(j, where, list_key, 0, step, ctx, err);
}
