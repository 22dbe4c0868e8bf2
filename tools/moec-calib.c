/* moec-calib: run calibration text through a model and save the per-layer,
 * per-expert statistics that pruning, merging and quantization reuse. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calib/calib.h"
#include "calib/stats.h"
#include "cli.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static const char usage[] =
    "usage: moec-calib MODEL --text FILE [FILE...] -o STATS [options]\n"
    "  MODEL            Hugging Face checkpoint directory or .moec file\n"
    "  --text FILE      calibration text, UTF-8 (repeatable; further FILE arguments count as\n"
    "                   --text too). Each file is one domain, tokenized whole without special\n"
    "                   tokens and cut into windows of --ctx tokens (a shorter tail is used),\n"
    "                   each run from an empty cache\n"
    "  -o STATS         statistics file to write (replaced atomically; format: docs/stats.md)\n"
    "  --tokens N       calibration tokens in all, 0 = every token of every file (default 0).\n"
    "                   Each file gets an equal share (a shorter file gives the rest to the\n"
    "                   others), taken as windows spread evenly through the file; windows run\n"
    "                   round-robin across files\n"
    "  --ctx N          window length (default 256)\n"
    "  --sim-tokens N   per layer, the first N tokens are run through every expert, selected or\n"
    "                   not, for the expert-output cosine similarities merging uses; 0 skips\n"
    "                   them (default 4096)\n"
    "  --threads N      worker threads (default 2)\n"
    "  --json           print a JSON summary (tokens, per-layer count and gate shares)\n"
    "  --quiet          no progress on stderr\n"
    "  --help           show this help\n"
    "exit status: 0 ok, 1 failure, 2 usage error\n";

/* Fails now rather than after the whole pass when -o cannot be written. */
static void check_output(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        cli_die("%s: is a directory", path);
    char *dir = strdup(path);
    if (!dir)
        cli_die("out of memory");
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    if (access(d, W_OK) != 0)
        cli_die("%s: cannot write in %s: %s", path, d, strerror(errno));
    free(dir);
}

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
    cli_init(argc, argv);
    enum { OPT_TEXT = 256, OPT_TOKENS, OPT_CTX, OPT_SIM, OPT_THREADS, OPT_JSON, OPT_QUIET };
    static const struct option opts[] = {
        {"text", required_argument, 0, OPT_TEXT},       {"tokens", required_argument, 0, OPT_TOKENS},
        {"ctx", required_argument, 0, OPT_CTX},         {"sim-tokens", required_argument, 0, OPT_SIM},
        {"threads", required_argument, 0, OPT_THREADS}, {"json", no_argument, 0, OPT_JSON},
        {"quiet", no_argument, 0, OPT_QUIET},           {"output", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},                  {0, 0, 0, 0}};
    const char **texts = calloc((size_t)argc, sizeof *texts);
    if (!texts)
        cli_die("out of memory");
    int n_texts = 0;
    const char *out = NULL;
    moec_calib_opts o = MOEC_CALIB_OPTS_DEFAULT;
    o.threads = 2;
    bool json = false;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_TEXT: texts[n_texts++] = optarg; break;
        case OPT_TOKENS: o.max_tokens = cli_parse_long("--tokens", optarg, 0, 1L << 40); break;
        case OPT_CTX: o.ctx = (int)cli_parse_long("--ctx", optarg, 1, 1 << 20); break;
        case OPT_SIM: o.sim_tokens = (int)cli_parse_long("--sim-tokens", optarg, 0, 1 << 30); break;
        case OPT_THREADS: o.threads = (int)cli_parse_long("--threads", optarg, 1, 256); break;
        case OPT_JSON: json = true; break;
        case OPT_QUIET: cli_quiet = true; break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind == argc)
        cli_usage_error("missing MODEL");
    const char *model_path = argv[optind];
    for (int i = optind + 1; i < argc; i++)
        texts[n_texts++] = argv[i];
    if (n_texts == 0)
        cli_usage_error("missing --text FILE");
    if (!out)
        cli_usage_error("missing -o STATS");
    check_output(out);

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    cli_check_output(m, out);
    if (o.ctx > m->cfg.max_positions)
        cli_die("--ctx %d exceeds the model's %d positions", o.ctx, m->cfg.max_positions);
    moec_tokenizer *tok = cli_model_tokenizer(m);
    moec_stats *s;
    double t0 = cli_seconds();
    if (moec_calib_run(m, tok, texts, n_texts, &o, &s, cli_calib_progress, &t0, &err))
        cli_die_err(&err);
    double secs = cli_seconds() - t0;
    cli_progress_done();
    if (moec_stats_save(s, out, &err))
        cli_die_err(&err);

    if (json) {
        cJSON *j = summary_json(s, model_path, out, o.ctx, secs);
        if (!j)
            cli_die("out of memory");
        cli_print_json(j);
        cJSON_Delete(j);
    } else {
        summary_text(s, out, secs);
    }
    moec_stats_free(s);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    free(texts);
    return 0;
}
