/* hstates.c - calibration hidden states pushed through one layer at a time
 * (hstates.h). */
#include "pipeline/hstates.h"

#include <stdlib.h>
#include <string.h>

moec_status moec_hstates_new(moec_hstates **out, const int32_t *ids, const int *len, int n_windows, int d,
                             moec_err *err)
{
    *out = NULL;
    if (!ids || !len || n_windows < 1 || d < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "hidden states: %d windows of width %d", n_windows, d);
    moec_hstates *s = calloc(1, sizeof *s);
    if (!s)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    s->d = d;
    s->n_windows = n_windows;
    s->ids = ids;
    s->len = len;
    s->start = malloc((size_t)n_windows * sizeof *s->start);
    if (!s->start) {
        moec_hstates_free(s);
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_windows; i++) {
        if (len[i] < 1) {
            moec_hstates_free(s);
            return moec_err_set(err, MOEC_ERR_ARG, "hidden states: window %d has %d tokens", i, len[i]);
        }
        s->start[i] = s->tokens;
        s->tokens += len[i];
        s->max_len = len[i] > s->max_len ? len[i] : s->max_len;
    }
    s->h = malloc((size_t)s->tokens * (size_t)d * sizeof *s->h);
    s->scratch = malloc((size_t)s->max_len * (size_t)d * sizeof *s->scratch);
    if (!s->h || !s->scratch) {
        moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the hidden states of %lld calibration tokens",
                     (long long)s->tokens);
        moec_hstates_free(s);
        return MOEC_ERR_NOMEM;
    }
    *out = s;
    return MOEC_OK;
}

void moec_hstates_free(moec_hstates *s)
{
    if (!s)
        return;
    free(s->start);
    free(s->h);
    free(s->scratch);
    free(s);
}

moec_status moec_hstates_embed(moec_hstates *s, moec_exec *ex, moec_err *err)
{
    for (int i = 0; i < s->n_windows; i++) {
        moec_status st = moec_exec_embed(ex, s->ids + s->start[i], s->len[i], s->h + (size_t)s->start[i] * s->d, err);
        if (st)
            return moec_err_prefix(err, "calibration window %d", i);
    }
    s->layer = 0;
    return MOEC_OK;
}

moec_status moec_hstates_run(moec_hstates *s, moec_exec *ex, int layer, bool commit, moec_hstates_window_fn on_window,
                             void *ctx, moec_err *err)
{
    if (layer != s->layer)
        return moec_err_set(err, MOEC_ERR_INTERNAL, "hidden states are at layer %d, not %d", s->layer, layer);
    const size_t d = (size_t)s->d;
    for (int i = 0; i < s->n_windows; i++) {
        moec_status st;
        if (on_window && (st = on_window(ctx, i, err)))
            return st;
        float *x = s->h + (size_t)s->start[i] * d;
        if (!commit) {
            memcpy(s->scratch, x, (size_t)s->len[i] * d * sizeof *x);
            x = s->scratch;
        }
        if ((st = moec_exec_layer(ex, layer, 0, x, s->len[i], err)))
            return st;
    }
    if (commit)
        s->layer = layer + 1;
    return MOEC_OK;
}

moec_status moec_hstates_logits(moec_hstates *s, moec_exec *ex, int window, float *logits, moec_err *err)
{
    if (window < 0 || window >= s->n_windows)
        return moec_err_set(err, MOEC_ERR_ARG, "hidden states: window %d of %d", window, s->n_windows);
    return moec_exec_head(ex, s->h + (size_t)s->start[window] * s->d, s->len[window], logits, err);
}
