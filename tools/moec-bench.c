/* moec-bench: prompt and decode speed, peak memory (llama-bench's tests). */
#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "exec/bench.h"
#include "exec/matmul.h"
#include "model/model.h"

/* "128,512": two positive prompt lengths */
static bool parse_lengths(const char *v, void *dest, char *why, size_t why_len)
{
    int a, b;
    char tail;
    if (sscanf(v, "%d,%d%c", &a, &b, &tail) != 2 || a < 1 || b < 1) {
        snprintf(why, why_len, "expected two positive lengths like 128,512, got '%s'", v);
        return false;
    }
    ((int *)dest)[0] = a;
    ((int *)dest)[1] = b;
    return true;
}

int main(int argc, char **argv)
{
    moec_bench_opts bo = MOEC_BENCH_OPTS_DEFAULT;
    const char *model_path = NULL;
    int lengths[2] = {bo.prompt_a, bo.prompt_b};
    bool json = false;
    cli_opt opts[] = {
        {"reps", 0, CLI_INT, "N", &bo.reps, 1, 1000,
         .help = "repetitions of each test, the median is reported (default 5)"},
        {"prompt-lengths", 0, CLI_CUSTOM, "A,B", lengths, .parse = parse_lengths,
         .help = "the two prompt lengths tested (default 128,512)"},
        {"gen", 'n', CLI_INT, "N", &bo.gen, 1, 1 << 20, .help = "generated tokens (default 128)"},
        {"profile", 0, CLI_FLAG, NULL, &bo.profile,
         .help = "per-operation time shares for the long prompt and for decoding"},
        {"act-bits", 0, CLI_INT, "A", &bo.act_bits, 2, 16,
         .help = "quantize linear-layer inputs per token to A bits (simulated)"},
        CLI_OPT_THREADS(&bo.threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL [options]",
        .summary = "Prompt and decode speed and peak memory, as llama-bench measures them. Prompt tests process "
                   "the prompt from an empty cache and compute the last token's logits; the decode test "
                   "generates N tokens one at a time from an empty cache.",
        .operand = "MODEL",
        .operand_help = "Hugging Face checkpoint directory or .moec file",
        .operand_dest = &model_path,
        .opts = opts,
    };
    cli_parse(&tool, argc, argv);
    bo.prompt_a = lengths[0];
    bo.prompt_b = lengths[1];
    moec_model *m = cli_open_model(model_path);
    int longest = bo.prompt_a > bo.prompt_b ? bo.prompt_a : bo.prompt_b;
    if ((bo.gen > longest ? bo.gen : longest) > m->cfg.max_positions)
        cli_die("test lengths exceed the model's %d positions", m->cfg.max_positions);
    moec_err err = {0};
    moec_bench_result r;
    if (moec_bench_run(m, &bo, &r, &err))
        cli_die_err(&err);
    const double mib = 1048576.0, gbs = (double)r.bytes_per_token * r.gen_tps / 1e9;

    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", model_path);
    cJSON_AddNumberToObject(o, "threads", bo.threads);
    cJSON_AddStringToObject(o, "kernels", moec_matmul_kernel_name());
    char key[64];
    snprintf(key, sizeof key, "pp%d_tps", bo.prompt_a);
    cJSON_AddNumberToObject(o, key, r.pp_a_tps);
    snprintf(key, sizeof key, "pp%d_tps", bo.prompt_b);
    cJSON_AddNumberToObject(o, key, r.pp_b_tps);
    snprintf(key, sizeof key, "tg%d_tps", bo.gen);
    cJSON_AddNumberToObject(o, key, r.gen_tps);
    snprintf(key, sizeof key, "pp%d_spread", bo.prompt_a);
    cJSON_AddNumberToObject(o, key, r.pp_a_spread);
    snprintf(key, sizeof key, "pp%d_spread", bo.prompt_b);
    cJSON_AddNumberToObject(o, key, r.pp_b_spread);
    snprintf(key, sizeof key, "tg%d_spread", bo.gen);
    cJSON_AddNumberToObject(o, key, r.gen_spread);
    cJSON_AddNumberToObject(o, "decode_weight_bytes_per_token", (double)r.bytes_per_token);
    cJSON_AddNumberToObject(o, "decode_gbs", gbs);
    cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)r.mem.peak_rss);
    cJSON_AddNumberToObject(o, "rss_file_bytes", (double)r.mem.rss_file);
    cJSON_AddNumberToObject(o, "rss_anon_bytes", (double)r.mem.rss_anon);
    cJSON_AddNumberToObject(o, "rss_weights_bytes", (double)r.mem.rss_weights);
    cJSON_AddNumberToObject(o, "rss_weights_huge_bytes", (double)r.mem.huge_weights);
    cJSON_AddNumberToObject(o, "weight_file_bytes", (double)m->file_bytes);
    cJSON_AddNumberToObject(o, "kv_cache_bytes", (double)r.kv_cache_bytes);
    if (bo.profile) {
        cJSON *pp = cJSON_AddObjectToObject(o, "profile_prompt_ns");
        cJSON *tg = cJSON_AddObjectToObject(o, "profile_decode_ns");
        cJSON *tb = cJSON_AddObjectToObject(o, "decode_weight_bytes_per_token_by_op");
        for (int i = 0; i < MOEC_OP_COUNT; i++) {
            cJSON_AddNumberToObject(pp, moec_op_name((moec_op)i), (double)r.prof_pp[i]);
            cJSON_AddNumberToObject(tg, moec_op_name((moec_op)i), (double)r.prof_gen[i]);
            cJSON_AddNumberToObject(tb, moec_op_name((moec_op)i), (double)r.bytes_gen[i]);
        }
    }
    if (json) {
        cli_print_json(o);
    } else {
        printf("model %s, %d threads, %s kernels, median of %d runs\n", model_path, bo.threads,
               moec_matmul_kernel_name(), bo.reps);
        printf("  pp%-5d %10.1f tokens/s (best %.1f, spread %.0f%%)\n", bo.prompt_a, r.pp_a_tps, r.pp_a_best,
               100 * r.pp_a_spread);
        printf("  pp%-5d %10.1f tokens/s (best %.1f, spread %.0f%%)\n", bo.prompt_b, r.pp_b_tps, r.pp_b_best,
               100 * r.pp_b_spread);
        printf("  tg%-5d %10.1f tokens/s (best %.1f, spread %.0f%%)\n", bo.gen, r.gen_tps, r.gen_best,
               100 * r.gen_spread);
        printf("  decode reads %.1f MiB of weights per token: %.1f GB/s at the median speed\n",
               r.bytes_per_token / mib, gbs);
        printf("  peak RSS %.1f MiB (VmHWM); at the end %.1f MiB: weight pages %.1f MiB of %.1f MiB of files "
               "(%.0f%% of them in 2 MiB pages), anonymous %.1f MiB (KV cache %.1f MiB, activations, buffers), "
               "other files %.1f MiB\n",
               r.mem.peak_rss / mib, r.mem.rss / mib, r.mem.rss_weights / mib, m->file_bytes / mib,
               r.mem.rss_weights ? 100.0 * r.mem.huge_weights / r.mem.rss_weights : 0.0, r.mem.rss_anon / mib,
               r.kv_cache_bytes / mib,
               (r.mem.rss_file > r.mem.rss_weights ? r.mem.rss_file - r.mem.rss_weights : 0) / mib);
        if (bo.profile) {
            uint64_t tp = 0, tg = 0;
            for (int i = 0; i < MOEC_OP_COUNT; i++)
                tp += r.prof_pp[i], tg += r.prof_gen[i];
            const double steps = (double)bo.reps * bo.gen;
            printf("  %-10s %12s %12s %14s %10s\n", "op", "prompt", "decode", "decode MiB/tok", "GB/s");
            for (int i = 0; i < MOEC_OP_COUNT; i++) {
                const double sec = r.prof_gen[i] / 1e9 / steps;
                printf("  %-10s %11.1f%% %11.1f%% %14.2f %10.1f\n", moec_op_name((moec_op)i),
                       100.0 * r.prof_pp[i] / (tp ? tp : 1), 100.0 * r.prof_gen[i] / (tg ? tg : 1),
                       r.bytes_gen[i] / mib, sec > 0 ? r.bytes_gen[i] / sec / 1e9 : 0.0);
            }
        }
    }
    cJSON_Delete(o);
    moec_model_close(m);
    return 0;
}
