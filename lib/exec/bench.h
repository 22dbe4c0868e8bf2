/* bench.h - speed of the executor on one model, measured as llama-bench
 * does: prompt processing of n tokens from an empty cache (logits of the
 * last token only) and generation of n tokens one at a time. */
#ifndef MOEC_EXEC_BENCH_H
#define MOEC_EXEC_BENCH_H

#include <stdint.h>

#include "exec/exec.h"

typedef struct moec_bench_opts {
    int threads;
    int reps;          /* repetitions of each test; the median is reported */
    int prompt_a;      /* first prompt length (128) */
    int prompt_b;      /* second prompt length (512) */
    int gen;           /* generated tokens (128) */
    bool profile;      /* collect a per-op profile */
    int act_bits;      /* activation fake-quantization (moec_exec_opts.act_bits), 0 = off */
} moec_bench_opts;

#define MOEC_BENCH_OPTS_DEFAULT {2, 5, 128, 512, 128, false, 0}

/* Memory of this process as the kernel counts it (Linux /proc/self/status;
 * zero where unavailable). Weights are mmap'd, so they count as resident
 * only once touched, as file-backed pages: a model's file size says little
 * about its resident memory. */
typedef struct moec_bench_mem {
    uint64_t peak_rss;    /* VmHWM: the most resident memory at any time */
    uint64_t rss;         /* VmRSS: resident now */
    uint64_t rss_file;    /* RssFile: resident pages of mapped files (weights, libraries) */
    uint64_t rss_anon;    /* RssAnon: heap and stacks (KV cache, activations, buffers) */
    uint64_t rss_weights; /* resident pages of the mappings of the model's own files
                           * (/proc/self/smaps), when a model path was given */
    uint64_t huge_weights; /* of those, mapped as 2 MiB pages (FilePmdMapped) */
} moec_bench_mem;

typedef struct moec_bench_result {
    double pp_a_tps, pp_b_tps, gen_tps;            /* medians, tokens/s */
    double pp_a_best, pp_b_best, gen_best;         /* best runs */
    double pp_a_spread, pp_b_spread, gen_spread;   /* (max - min) / median over the runs */
    uint64_t kv_cache_bytes;
    uint64_t prof_pp[MOEC_OP_COUNT];               /* ns over the prompt_b runs */
    uint64_t prof_gen[MOEC_OP_COUNT];              /* ns over the generation runs */
    uint64_t bytes_gen[MOEC_OP_COUNT];             /* weight bytes read per generated token, by op */
    uint64_t bytes_per_token;                      /* their sum: what a decode step moves */
    moec_bench_mem mem;                            /* at the end of the run, executor still open */
} moec_bench_result;

moec_status moec_bench_run(const moec_model *m, const moec_bench_opts *o, moec_bench_result *r, moec_err *err);

/* Reads this process's memory counters (see moec_bench_mem); model_path
 * (may be NULL) is the checkpoint directory or .moec file whose mappings
 * count as rss_weights. */
void moec_bench_memory(moec_bench_mem *out, const char *model_path);

#endif
