/* calib.h - gathering calibration statistics (calib/stats.h) by running
 * text through the executor with a hook at every MoE block.
 *
 * What is collected, per MoE layer, from each block's moec_moe_view:
 *  - routing: count, gate_sum (the gate as applied: renormalised over the
 *    top-k when the config says so), prob_sum, router-logit moments,
 *    co-selection counts, near_miss (the most probable expert outside the
 *    top-k of each token, EAQuant's balance);
 *  - EASY-EP: c_{e,t} = g_e(t)·‖y_e(t)‖ for the selected experts and the
 *    token weight s_t = 1 − cos(r_t, r_t + Σ_S g_e y_e), where r_t is the
 *    residual stream entering the MoE block (before its norm) and the shared
 *    expert, if any, is left out: what the authors' code computes (it
 *    compares the hidden state before and after the routed experts), where
 *    docs/methods.md writes h_t. out_norm_sum = Σ c, easyep_sum = Σ c·s,
 *    also split by domain;
 *  - inputs: Σh² and max|h| per channel over each expert's routed tokens
 *    and over all tokens (router input);
 *  - output similarity: for the first sim_tokens tokens each layer sees,
 *    every expert's output y_e(h_t) for all E experts (not only the
 *    selected ones) and the E×E matrix of cosines, averaged over those
 *    tokens. A zero output has cosine 0 with everything; the diagonal is 1
 *    by definition.
 * Everything is summed in double over tokens; the statistics are
 * deterministic for a given input, thread count aside (float sums inside
 * the executor's matrix products).
 */
#ifndef MOEC_CALIB_CALIB_H
#define MOEC_CALIB_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "calib/stats.h"
#include "core/error.h"
#include "exec/exec.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

typedef struct moec_calib_opts {
    int ctx;            /* window length in tokens; each window starts from an empty cache (default 256) */
    int64_t max_tokens; /* calibration tokens in all, spread evenly over the files; 0 = all (default 0) */
    int sim_tokens;     /* per layer, tokens whose outputs are computed for every expert (out_cos);
                           0 skips the similarity (default 4096) */
    int threads;        /* worker threads, the caller included (default 1): the executor's, and
                           for the similarity sample a pool of calibration's own, which the hook
                           drives between the executor's parallel steps */
} moec_calib_opts;

#define MOEC_CALIB_OPTS_DEFAULT {256, 0, 4096, 1}

typedef void (*moec_calib_progress)(void *ctx, int64_t tokens_done, int64_t tokens_total);

/* Gathers statistics for model m over text files (UTF-8, each tokenized
 * whole with tok, no special tokens added), each file one domain named
 * after its base name.
 *
 * Each file is cut into windows of o->ctx tokens (a shorter tail is used
 * too). With o->max_tokens, every file gets an equal share of the budget
 * (a file shorter than its share gives the rest to the others) and its
 * windows are spread evenly through the file, so a cap still covers every
 * domain and every part of it; windows are then run round-robin across
 * files, so the out_cos sample (the first sim_tokens tokens) covers every
 * domain too.
 *
 * o may be NULL (defaults). progress (may be NULL) is called after each
 * window. On success *out is new statistics (free with moec_stats_free).
 * Errors: unreadable or non-UTF-8 text, no tokens at all, o->ctx beyond the
 * model's positions, the executor's errors. */
moec_status moec_calib_run(const moec_model *m, const moec_tokenizer *tok, const char *const *text_files, int n_files,
                           const moec_calib_opts *o, moec_stats **out, moec_calib_progress progress,
                           void *progress_ctx, moec_err *err);

/* The lower level: adds n already-tokenized ids, cut into windows of
 * o->ctx (tail included, each from an empty cache; o->max_tokens caps n)
 * and run through ex, to s. domain is an index from moec_stats_add_domain,
 * or -1 to count the tokens in no domain. s must belong to ex's model
 * (moec_stats_check) and ex's context must hold o->ctx tokens. The hook of
 * ex is replaced during the call and removed afterwards. On an error after
 * the first window started (the executor's, MOEC_ERR_NUMERIC for non-finite
 * activations), s holds part of the sums: discard it. */
moec_status moec_calib_tokens(moec_stats *s, moec_exec *ex, const int32_t *ids, size_t n, int domain,
                              const moec_calib_opts *o, moec_err *err);

#endif
