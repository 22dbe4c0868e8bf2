/* quant_windows.c - calibration windows for the recipe from text files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "quant/recipe.h"

#define MAX_TEXT_BYTES ((size_t)1 << 31)


moec_status moec_quant_windows_from_text(const moec_tokenizer *tok, const char *const *files, int n_files,
                                         int ctx, int64_t max_tokens, int32_t **ids_out, int **len_out,
                                         int *n_out, moec_err *err)
{
    *ids_out = NULL;
    *len_out = NULL;
    *n_out = 0;
    if (n_files < 1 || ctx < 1 || max_tokens < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "calibration windows: %d files, window %d", n_files, ctx);
    int32_t **fids = calloc((size_t)n_files, sizeof *fids);
    size_t *fn = calloc((size_t)n_files, sizeof *fn), *nwin = calloc((size_t)n_files, sizeof *nwin);
    size_t *nfull = calloc((size_t)n_files, sizeof *nfull);
    int32_t *ids = NULL;
    int *len = NULL;
    moec_status st = MOEC_OK;
    if (!fids || !fn || !nwin || !nfull) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t total_win = 0, total_tok = 0, rounds = 0;
    const size_t C = (size_t)ctx;
    for (int f = 0; f < n_files && !st; f++) {
        char *buf;
        size_t blen;
        if ((st = moec_read_file(files[f], MAX_TEXT_BYTES, &buf, &blen, err)))
            break;
        st = moec_tokenizer_encode(tok, buf, blen, &fids[f], &fn[f], err);
        free(buf);
        if (st) {
            moec_err_prefix(err, "%s", files[f]);
            break;
        }
        const size_t quota = max_tokens > 0 ? (size_t)(max_tokens / n_files) : fn[f];
        nfull[f] = fn[f] / C;
        if (quota >= fn[f] || nfull[f] == 0) {
            nwin[f] = (fn[f] + C - 1) / C; /* all of it, the tail window shorter */
            nfull[f] = 0;
        } else {
            nwin[f] = (quota + C - 1) / C;
            if (nwin[f] > nfull[f])
                nwin[f] = nfull[f];
        }
        total_win += nwin[f];
        rounds = nwin[f] > rounds ? nwin[f] : rounds;
    }
    if (st)
        goto done;
    if (total_win == 0) {
        st = moec_err_set(err, MOEC_ERR_ARG, "calibration windows: the text files hold no tokens");
        goto done;
    }
    ids = malloc(total_win * C * sizeof *ids);
    len = malloc(total_win * sizeof *len);
    if (!ids || !len) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for %zu calibration windows", total_win);
        goto done;
    }
    int n = 0;
    for (size_t r = 0; r < rounds; r++)
        for (int f = 0; f < n_files; f++) {
            if (r >= nwin[f])
                continue;
            /* spread: window r of nwin starts at full window r·nfull/nwin */
            size_t start = nfull[f] ? (size_t)((unsigned long long)r * nfull[f] / nwin[f]) * C : r * C;
            size_t l = fn[f] - start < C ? fn[f] - start : C;
            memcpy(ids + total_tok, fids[f] + start, l * sizeof *ids);
            len[n++] = (int)l;
            total_tok += l;
        }
    *ids_out = ids;
    *len_out = len;
    *n_out = n;
    ids = NULL;
    len = NULL;
done:
    if (fids)
        for (int f = 0; f < n_files; f++)
            free(fids[f]);
    free(fids), free(fn), free(nwin), free(nfull), free(ids), free(len);
    return st;
}

