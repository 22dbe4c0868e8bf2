/* moec-calib: run calibration text through a model and save the per-layer,
 * per-expert statistics that pruning, merging and quantization reuse. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calib/calib.h"
#include "calib/stats.h"
#include "cli.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static double share(const double *v, int i, int n)
{
    double sum = 0;
    for (int e = 0; e < n; e++)
        sum += v[e];
    return sum > 0 ? v[i] / sum : 0.0;
}

static cJSON *summary_json(const moec_stats *s, const char *model, const char *out, int ctx, double secs)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "stats", out);
    cJSON_AddNumberToObject(o, "tokens", s->tokens);
    cJSON_AddNumberToObject(o, "ctx", ctx);
    cJSON_AddNumberToObject(o, "seconds", secs);
    cJSON_AddNumberToObject(o, "tokens_per_s", secs > 0 ? s->tokens / secs : 0.0);
    cJSON *files = cJSON_AddArrayToObject(o, "domains");
    for (int i = 0; i < s->n_domains; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "name", s->domains[i]);
        cJSON_AddNumberToObject(f, "tokens", s->domain_tokens[i]);
        cJSON_AddItemToArray(files, f);
    }
    cJSON *layers = cJSON_AddArrayToObject(o, "layers");
    for (int l = 0; l < s->n_layers; l++) {
        const moec_layer_stats *ls = &s->layers[l];
        if (ls->n_experts <= 0)
            continue;
        cJSON *L = cJSON_CreateObject();
        cJSON_AddNumberToObject(L, "layer", l);
        cJSON_AddNumberToObject(L, "experts", ls->n_experts);
        cJSON_AddNumberToObject(L, "sim_tokens", ls->sim_tokens);
        cJSON *cs = cJSON_AddArrayToObject(L, "count_share"), *gs = cJSON_AddArrayToObject(L, "gate_share");
        for (int e = 0; e < ls->n_experts; e++) {
            cJSON_AddItemToArray(cs, cJSON_CreateNumber(share(ls->count, e, ls->n_experts)));
            cJSON_AddItemToArray(gs, cJSON_CreateNumber(share(ls->gate_sum, e, ls->n_experts)));
        }
        cJSON_AddItemToArray(layers, L);
    }
    return o;
}

static void summary_text(const moec_stats *s, const char *out, double secs)
{
    printf("%.0f tokens from %d file%s in %.1f s (%.0f tokens/s) -> %s\n", s->tokens, s->n_domains,
           s->n_domains == 1 ? "" : "s", secs, secs > 0 ? s->tokens / secs : 0.0, out);
    for (int i = 0; i < s->n_domains; i++)
        printf("  %-24s %9.0f tokens\n", s->domains[i], s->domain_tokens[i]);
    printf("routing share per expert (%% of routed tokens):\n");
    for (int l = 0; l < s->n_layers; l++) {
        const moec_layer_stats *ls = &s->layers[l];
        const int E = ls->n_experts;
        if (E <= 0)
            continue;
        printf("  layer %-3d", l);
        if (E <= 16) {
            for (int e = 0; e < E; e++)
                printf(" %5.1f", 100.0 * share(ls->count, e, E));
        } else {
            int lo = 0, hi = 0, unused = 0;
            for (int e = 0; e < E; e++) {
                lo = ls->count[e] < ls->count[lo] ? e : lo;
                hi = ls->count[e] > ls->count[hi] ? e : hi;
                unused += ls->count[e] == 0;
            }
            printf(" %d experts: min %.2f%% (expert %d), max %.2f%% (expert %d), %d never routed", E,
                   100.0 * share(ls->count, lo, E), lo, 100.0 * share(ls->count, hi, E), hi, unused);
        }
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *out = NULL;
    cli_list texts = {0};
    moec_calib_opts o = MOEC_CALIB_OPTS_DEFAULT;
    o.threads = 2;
    bool json = false, force = false;
    cli_opt opts[] = {
        CLI_OPT_TEXT(&texts, "calibration text, UTF-8. Each file is one domain, tokenized whole without special "
                             "tokens and cut into windows of --ctx tokens (a shorter tail is used), each run "
                             "from an empty cache"),
        {"tokens", 0, CLI_INT64, "N", &o.max_tokens, 0, (double)(1LL << 40),
         .help = "calibration tokens in all, 0 = every token of every file (default 0). Each file gets an "
                 "equal share (a shorter file gives the rest to the others), taken as windows spread evenly "
                 "through the file; windows run round-robin across files"},
        {"ctx", 0, CLI_INT, "N", &o.ctx, 1, 1 << 20, .help = "window length (default 256)"},
        {"sim-tokens", 0, CLI_INT, "N", &o.sim_tokens, 0, 1 << 30,
         .help = "per layer, the first N tokens are run through every expert, selected or not, for the "
                 "expert-output cosine similarities merging uses; 0 skips them (default 4096)"},
        CLI_OPT_OUTPUT(&out, "STATS", "statistics file to write (format: docs/stats.md; written aside and "
                                      "renamed when complete)"),
        CLI_OPT_FORCE(&force),
        CLI_OPT_THREADS(&o.threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL --text FILE... -o STATS [options]",
        .summary = "Runs calibration text through a model and saves the per-layer, per-expert statistics that "
                   "pruning, merging and quantization reuse: routing counts and weights, co-selection, output "
                   "norms, EASY-EP scores, per-channel input moments, expert-output similarities.",
        .operand = "MODEL",
        .operand_help = "Hugging Face checkpoint directory or .moec file",
        .operand_dest = &model_path,
        .opts = opts,
    };
    cli_parse(&tool, argc, argv);
    const char **text_files = texts.v;
    const int n_texts = texts.n;
    if (n_texts == 0)
        cli_usage_error("missing --text FILE...");
    if (!out)
        cli_usage_error("missing -o STATS");
    struct stat sb;
    if (stat(out, &sb) == 0 && S_ISDIR(sb.st_mode))
        cli_die("%s: is a directory", out);
    cli_check_output(out, force);

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    cli_check_not_input(m, out);
    if (o.ctx > m->cfg.max_positions)
        cli_die("--ctx %d exceeds the model's %d positions", o.ctx, m->cfg.max_positions);
    moec_tokenizer *tok = cli_model_tokenizer(m);
    moec_stats *s;
    double t0 = cli_seconds();
    if (moec_calib_run(m, tok, text_files, n_texts, &o, &s, cli_calib_progress, NULL, &err))
        cli_die_err(&err);
    double secs = cli_seconds() - t0;
    cli_progress_done();
    if (moec_stats_save(s, out, &err))
        cli_die_err(&err);

    if (json) {
        cJSON *j = summary_json(s, model_path, out, o.ctx, secs);
        if (!j)
            cli_die("out of memory");
        cli_json_add_version(j);
        cli_print_json(j);
        cJSON_Delete(j);
    } else if (!cli_quiet) {
        summary_text(s, out, secs);
    }
    moec_stats_free(s);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    cli_tool_free(&tool);
    return 0;
}
