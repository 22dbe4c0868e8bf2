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

typedef struct moec_bench_result {
    double pp_a_tps, pp_b_tps, gen_tps;            /* medians, tokens/s */
    double pp_a_best, pp_b_best, gen_best;         /* best runs */
    uint64_t kv_cache_bytes;
    uint64_t prof_pp[MOEC_OP_COUNT];               /* ns over the prompt_b runs */
    uint64_t prof_gen[MOEC_OP_COUNT];              /* ns over the generation runs */
} moec_bench_result;

moec_status moec_bench_run(const moec_model *m, const moec_bench_opts *o, moec_bench_result *r, moec_err *err);

#endif
