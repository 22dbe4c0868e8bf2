#include "exec/bench.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Deterministic token ids spread over the vocabulary (the speed of a dense
 * forward does not depend on which tokens; routing does a little). */
static void fill_tokens(int32_t *ids, int n, int vocab)
{
    uint32_t x = 12345;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = (int32_t)((x >> 8) % (uint32_t)vocab);
    }
}

/* Median and best tokens per second over reps runs from an empty cache,
 * feeding the n tokens step at a time: step = n times a prompt, step = 1
 * times decoding. */
static moec_status time_runs(moec_exec *ex, const int32_t *ids, int n, int step, float *logits,
                             int reps, double *median, double *best, moec_err *err)
{
    double *tps = malloc((size_t)reps * sizeof *tps);
    if (!tps)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    moec_status st = MOEC_OK;
    for (int r = 0; r < reps && !st; r++) {
        moec_exec_reset(ex);
        double t0 = seconds();
        for (int i = 0; i < n && !st; i += step)
            st = moec_exec_forward(ex, ids + i, step, logits, false, err);
        tps[r] = n / (seconds() - t0);
    }
    if (!st) {
        qsort(tps, (size_t)reps, sizeof *tps, cmp_double);
        *median = tps[reps / 2];
        *best = tps[reps - 1];
    }
    free(tps);
    return st;
}

moec_status moec_bench_run(const moec_model *m, const moec_bench_opts *o, moec_bench_result *r, moec_err *err)
{
    memset(r, 0, sizeof *r);
    int longest = o->prompt_a > o->prompt_b ? o->prompt_a : o->prompt_b;
    if (o->gen > longest)
        longest = o->gen;
    if (o->reps < 1 || o->prompt_a < 1 || o->prompt_b < 1 || o->gen < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "bench: lengths and repetitions must be positive");
    moec_exec *ex;
    moec_exec_opts eo = {.threads = o->threads, .max_ctx = longest, .act_bits = o->act_bits};
    moec_status st = moec_exec_new(&ex, m, &eo, err);
    if (st)
        return st;
    const moec_config *c = &m->cfg;
    r->kv_cache_bytes = 2ull * c->n_layers * (uint64_t)longest * c->n_kv_heads * c->head_dim * sizeof(float);
    int32_t *ids = malloc((size_t)longest * sizeof *ids);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    if (!ids || !logits) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        goto done;
    }
    fill_tokens(ids, longest, c->vocab_size);
    /* warm-up: page in the weights, grow the buffers */
    if ((st = moec_exec_forward(ex, ids, o->prompt_b, logits, false, err)))
        goto done;
    if ((st = time_runs(ex, ids, o->prompt_a, o->prompt_a, logits, o->reps, &r->pp_a_tps,
                        &r->pp_a_best, err)))
        goto done;
    moec_exec_profile_enable(ex, o->profile);
    if ((st = time_runs(ex, ids, o->prompt_b, o->prompt_b, logits, o->reps, &r->pp_b_tps,
                        &r->pp_b_best, err)))
        goto done;
    moec_exec_profile(ex, r->prof_pp);
    if ((st = time_runs(ex, ids, o->gen, 1, logits, o->reps, &r->gen_tps, &r->gen_best, err)))
        goto done;
    moec_exec_profile(ex, r->prof_gen);
    for (int i = 0; i < MOEC_OP_COUNT; i++)
        r->prof_gen[i] -= r->prof_pp[i];
done:
    free(ids);
    free(logits);
    moec_exec_free(ex);
    return st;
}
