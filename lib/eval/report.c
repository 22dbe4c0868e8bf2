#include "eval/report.h"

#include <string.h>
#include <stdlib.h>

#include "core/fsutil.h"
#include "eval/mc_data.h"

static void add_ppl(cJSON *o, const moec_ppl_result *r, bool with_base)
{
    cJSON_AddNumberToObject(o, "perplexity", r->perplexity);
    cJSON_AddNumberToObject(o, "tokens", (double)r->tokens);
    if (with_base) {
        cJSON_AddNumberToObject(o, "base_perplexity", r->base_perplexity);
        cJSON_AddNumberToObject(o, "kld_mean", r->kld_mean);
        cJSON_AddNumberToObject(o, "top1_agreement", r->top1_agreement);
        cJSON_AddNumberToObject(o, "ppl_ratio", r->ppl_ratio);
    }
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

typedef struct {
    moec_report_progress fn;
    void *ctx;
    const char *what;
} progress_relay;

static void relay(void *vctx, int64_t done, int64_t total)
{
    progress_relay *r = vctx;
    if (r->fn)
        r->fn(r->ctx, r->what, done, total);
}

static moec_status eval_text(moec_exec *model, moec_exec *base, const moec_tokenizer *tok, const char *path,
                             const moec_eval_spec *spec, moec_ppl_result *res, progress_relay *pr, moec_err *err)
{
    char *text;
    size_t len;
    moec_status st = moec_read_file(path, (size_t)1 << 31, &text, &len, err);
    if (st)
        return st;
    int32_t *ids;
    size_t n;
    st = moec_tokenizer_encode(tok, text, len, &ids, &n, err);
    free(text);
    if (st)
        return moec_err_prefix(err, "%s", path);
    memset(res, 0, sizeof *res);
    pr->what = base_name(path);
    st = moec_eval_ppl(model, base, ids, n, spec->ctx, spec->score_from, res, relay, pr, err);
    free(ids);
    if (st)
        return moec_err_prefix(err, "%s", path);
    moec_ppl_finish(res);
    return MOEC_OK;
}

moec_status moec_eval_report(moec_exec *model, moec_exec *base, const moec_tokenizer *tok, const moec_eval_spec *spec,
                             cJSON **out, moec_report_progress progress, void *progress_ctx, moec_err *err)
{
    *out = NULL;
    cJSON *rep = cJSON_CreateObject();
    cJSON *files = cJSON_CreateObject();
    if (!rep || !files) {
        cJSON_Delete(rep);
        cJSON_Delete(files);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    cJSON_AddNumberToObject(rep, "ctx", spec->ctx);
    cJSON_AddNumberToObject(rep, "score_from", spec->score_from);
    progress_relay pr = {progress, progress_ctx, NULL};
    moec_ppl_result total = {0};
    moec_status st = MOEC_OK;
    for (int i = 0; i < spec->n_texts && st == MOEC_OK; i++) {
        moec_ppl_result r;
        if ((st = eval_text(model, base, tok, spec->texts[i], spec, &r, &pr, err)))
            break;
        moec_ppl_add(&total, &r);
        cJSON *f = cJSON_AddObjectToObject(files, base_name(spec->texts[i]));
        add_ppl(f, &r, base != NULL);
    }
    if (st == MOEC_OK && spec->n_texts > 0) {
        moec_ppl_finish(&total);
        add_ppl(rep, &total, base != NULL);
    }
    if (st == MOEC_OK && spec->mc_path) {
        moec_mc_item *items;
        size_t n_items;
        if ((st = moec_mc_load(spec->mc_path, tok, &items, &n_items, err)) == MOEC_OK) {
            moec_mc_result mc = {0};
            pr.what = base_name(spec->mc_path);
            st = moec_eval_mc(model, items, n_items, &mc, relay, &pr, err);
            moec_mc_free(items, n_items);
            if (st == MOEC_OK) {
                cJSON_AddNumberToObject(rep, "mc_acc", mc.acc);
                cJSON_AddNumberToObject(rep, "mc_acc_norm", mc.acc_norm);
                cJSON_AddNumberToObject(rep, "mc_items", (double)mc.items);
                cJSON *f = cJSON_AddObjectToObject(files, base_name(spec->mc_path));
                cJSON_AddNumberToObject(f, "mc_acc", mc.acc);
                cJSON_AddNumberToObject(f, "mc_acc_norm", mc.acc_norm);
                cJSON_AddNumberToObject(f, "mc_items", (double)mc.items);
            } else {
                moec_err_prefix(err, "%s", spec->mc_path);
            }
        }
    }
    cJSON_AddItemToObject(rep, "files", files);
    if (st) {
        cJSON_Delete(rep);
        return st;
    }
    *out = rep;
    return MOEC_OK;
}
