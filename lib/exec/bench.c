#include "exec/bench.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
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
                             int reps, double *median, double *best, double *spread, moec_err *err)
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
        *spread = (tps[reps - 1] - tps[0]) / tps[reps / 2];
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
                        &r->pp_a_best, &r->pp_a_spread, err)))
        goto done;
    moec_exec_profile_enable(ex, o->profile);
    if ((st = time_runs(ex, ids, o->prompt_b, o->prompt_b, logits, o->reps, &r->pp_b_tps,
                        &r->pp_b_best, &r->pp_b_spread, err)))
        goto done;
    moec_exec_profile(ex, r->prof_pp);
    uint64_t bytes0[MOEC_OP_COUNT], bytes1[MOEC_OP_COUNT];
    moec_exec_profile_bytes(ex, bytes0);
    if ((st = time_runs(ex, ids, o->gen, 1, logits, o->reps, &r->gen_tps, &r->gen_best, &r->gen_spread, err)))
        goto done;
    moec_exec_profile(ex, r->prof_gen);
    moec_exec_profile_bytes(ex, bytes1);
    const uint64_t generated = (uint64_t)o->reps * (uint64_t)o->gen;
    for (int i = 0; i < MOEC_OP_COUNT; i++) {
        r->prof_gen[i] -= r->prof_pp[i];
        r->bytes_gen[i] = (bytes1[i] - bytes0[i]) / generated;
        r->bytes_per_token += r->bytes_gen[i];
    }
    moec_bench_memory(&r->mem, m->source);
done:
    free(ids);
    free(logits);
    moec_exec_free(ex);
    return st;
}

/* Sums the Rss and FilePmdMapped lines of the /proc/self/smaps entries
 * whose file is dir itself or lies under it. */
static void weights_resident(const char *path, uint64_t *rss, uint64_t *huge)
{
    char real[PATH_MAX];
    if (!path || !realpath(path, real))
        return;
    const size_t len = strlen(real);
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return;
    char line[PATH_MAX + 256];
    bool ours = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        char key[64];
        /* field lines start with a capitalised name, headers with an address */
        if (line[0] >= 'A' && line[0] <= 'Z') {
            if (sscanf(line, "%63[^:]: %llu kB", key, &kb) != 2)
                continue;
            if (ours && strcmp(key, "Rss") == 0)
                *rss += (uint64_t)kb * 1024u;
            else if (ours && strcmp(key, "FilePmdMapped") == 0)
                *huge += (uint64_t)kb * 1024u;
            continue;
        }
        /* a mapping's header: "start-end perms offset dev inode   path" */
        char *p = strchr(line, '/');
        unsigned long long lo, hi;
        if (sscanf(line, "%llx-%llx ", &lo, &hi) != 2)
            continue;
        ours = false;
        if (p) {
            p[strcspn(p, "\n")] = 0;
            ours = strncmp(p, real, len) == 0 && (p[len] == 0 || p[len] == '/');
        }
    }
    fclose(f);
}

void moec_bench_memory(moec_bench_mem *out, const char *model_path)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        char key[64];
        if (sscanf(line, "%63[^:]: %llu kB", key, &kb) != 2)
            continue;
        uint64_t b = (uint64_t)kb * 1024u;
        if (strcmp(key, "VmHWM") == 0)
            out->peak_rss = b;
        else if (strcmp(key, "VmRSS") == 0)
            out->rss = b;
        else if (strcmp(key, "RssFile") == 0)
            out->rss_file = b;
        else if (strcmp(key, "RssAnon") == 0)
            out->rss_anon = b;
    }
    fclose(f);
    weights_resident(model_path, &out->rss_weights, &out->huge_weights);
}
