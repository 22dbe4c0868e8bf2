/* moec-quant: group-wise quantization of an MoE checkpoint's experts (and
 * optionally attention, embeddings and head) with RTN or GPTQ, MC-MoE mixed
 * precision and EAQuant, written as a .moec container. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calib/stats.h"
#include "cli.h"
#include "core/fsutil.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "model/model_sink.h"
#include "quant/recipe.h"
#include "tokenizer/tokenizer.h"

static const char usage[] =
    "usage: moec-quant MODEL --bits B [options] -o OUT.moec\n"
    "  MODEL              Hugging Face checkpoint directory (or .moec with full-precision experts)\n"
    "  --bits B           code width of the routed experts (uniform), the shared expert and dense\n"
    "                     MLPs, 1..8\n"
    "  --group G          weights per group along the input dimension (default 128; 0 = whole row)\n"
    "  --method M         rtn (default) or gptq (layer by layer, damping 1% of the mean Hessian\n"
    "                     diagonal, each expert's Hessian from the tokens routed to it)\n"
    "  --sym              symmetric groups (no zero points)\n"
    "  --clip             per-group clipping search (shrink the range while the group's squared\n"
    "                     error falls; grid 20, down to 0.5)\n"
    "  --act-order        GPTQ: process columns by decreasing Hessian diagonal\n"
    "  --damp X           GPTQ damping fraction (default 0.01)\n"
    "  --text FILE        calibration text (repeatable); needed by gptq, --eaquant and MC-MoE's\n"
    "                     measured losses\n"
    "  --stats STATS      statistics from moec-calib instead of text (rtn only): MC-MoE then uses\n"
    "                     the relative weight error as its loss\n"
    "  --tokens N         calibration tokens in all, shared evenly by the files, as whole windows\n"
    "                     spread through each file (default 32768)\n"
    "  --ctx N            calibration window length (default 256)\n"
    "  --attn             also quantize q/k/v/o projections\n"
    "  --attn-bits B      their width (default: --bits)\n"
    "  --embed-bits B     quantize embeddings and lm_head by RTN at B bits (groups of 64)\n"
    "  --avg-bits A       mixed precision: average code bits per routed expert in every layer\n"
    "  --bit-choices L    candidate widths, e.g. 1,2,3,4 (default)\n"
    "  --alloc A          mcmoe (default): MC-MoE's integer program solved with GLPK per layer over\n"
    "                     each expert's measured loss at each width; uniform: importance-blind split\n"
    "                     (every expert floor(A), the first experts of each layer one width up)\n"
    "  --mc-objective O   mcmoe: output (default): minimise the layer's output error, the sum over\n"
    "                     experts of Σ gate²·‖output change‖² on their routed tokens (routing\n"
    "                     frequency and weight enter through that sum); paper: the reference code's\n"
    "                     share^1 · gate-share^1.5 · ‖output change‖\n"
    "  --diversity        mcmoe: add the paper's constraints that at least one expert per layer\n"
    "                     takes each of the two widest choices\n"
    "  --eaquant          EAQuant: smoothing aggregation folded into the norm (one vector per\n"
    "                     layer), alpha and clipping chosen per layer by block output error +\n"
    "                     lambda * router KL (the calibration balance is on for gptq anyway)\n"
    "  --smooth-alpha A   with --eaquant --no-align: fixed smoothing alpha (default 0.5)\n"
    "  --no-align         with --eaquant: no grid search (fixed alpha)\n"
    "  --balance-min M    gptq: EAQuant's expert-level calibration balance, on by default: experts\n"
    "                     routed fewer than M calibration tokens (default: the hidden size, enough\n"
    "                     for a full-rank Hessian) get the tokens where they ranked just outside\n"
    "                     the top-k, most probable first; experts still below 32 rows use RTN\n"
    "  --no-balance       gptq: no calibration balance\n"
    "  --act-bits A       activation quantization (per token, symmetric) used while calibrating and\n"
    "                     recorded in the report; evaluate with the same setting\n"
    "  --verify-tokens N  calibration tokens compared with the original at the end (default 8192;\n"
    "                     0 skips)\n"
    "  -o OUT.moec        output container (report stored inside as report.json)\n"
    "  --force            replace OUT.moec if it exists\n"
    "  --json             print the report as JSON on stdout\n"
    "  --threads N        worker threads (default 2)\n"
    "  --quiet            no progress or summary on stderr\n"
    "  --help             show this help\n"
    "Norms, routers and the shared-expert gate stay in high precision (F32 when EAQuant changed\n"
    "them). Bits per weight are reported over the quantized tensors and over the whole file\n"
    "(file bytes x 8 / parameters, llama.cpp's convention).\n"
    "exit status: 0 ok, 1 failure, 2 usage error\n";

static void progress(void *ctx, const char *stage, int layer, int n_layers)
{
    (void)ctx;
    if (layer >= 0)
        cli_progress("%s, layer %d/%d", stage, layer + 1, n_layers);
    else
        cli_progress("%s", stage);
}

static int parse_choices(const char *s, int *out)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 8 || n == MOEC_QUANT_MAX_CHOICES)
            return -1;
        out[n++] = (int)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        p = end;
    }
    for (int i = 1; i < n; i++)
        if (out[i] <= out[i - 1])
            return -1;
    return n;
}

static void summary(const moec_quant_report *rep, const moec_quant_recipe *r, const char *out, double file_bpw,
                    uint64_t file_bytes)
{
    fprintf(stderr, "%s: %s %s, group %d%s\n", cli_prog, r->method == MOEC_QMETHOD_GPTQ ? "GPTQ" : "RTN",
            r->avg_bits > 0 ? (r->alloc == MOEC_QALLOC_MCMOE ? "MC-MoE mixed precision" : "uniform split")
                            : "uniform",
            r->group, r->smooth ? ", EAQuant" : "");
    for (int l = 0; l < rep->n_layers; l++) {
        const moec_quant_layer_report *L = &rep->layers[l];
        if (L->n_experts == 0)
            continue;
        fprintf(stderr, "  layer %-3d bits", l);
        for (int e = 0; e < L->n_experts; e++)
            fprintf(stderr, " %d", L->bits[e]);
        if (L->smooth_alpha >= 0)
            fprintf(stderr, "  alpha %.2f", L->smooth_alpha);
        if (isfinite(L->block_err))
            fprintf(stderr, "  block err %.4f  routing %.1f%%", L->block_err, 100.0 * L->router_agree);
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "  average expert bits %.3f; quantized tensors %.3f bits/weight (%.3f code bits)\n",
            rep->avg_expert_bits, rep->quant_bpw, rep->quant_code_bits);
    fprintf(stderr, "  file %llu bytes, %.3f bits/weight over %lld parameters\n", (unsigned long long)file_bytes,
            file_bpw, (long long)rep->model_params);
    if (rep->verify_tokens)
        fprintf(stderr, "  calibration check (%lld tokens): KL %.5f, top-1 %.2f%%\n", (long long)rep->verify_tokens,
                rep->verify_kld, 100.0 * rep->verify_top1);
    fprintf(stderr, "  %d passes, %.1f s\n", rep->passes, rep->seconds);
    for (int i = 0; i < rep->n_notes; i++)
        fprintf(stderr, "  note: %s\n", rep->notes[i]);
    fprintf(stderr, "  -> %s\n", out);
}

int main(int argc, char **argv)
{
    cli_init(argc, argv);
    enum {
        OPT_BITS = 256, OPT_GROUP, OPT_METHOD, OPT_SYM, OPT_CLIP, OPT_ACTORDER, OPT_DAMP, OPT_TEXT, OPT_STATS,
        OPT_TOKENS, OPT_CTX, OPT_ATTN, OPT_ATTN_BITS, OPT_EMBED_BITS, OPT_AVG, OPT_CHOICES, OPT_ALLOC, OPT_DIV, OPT_MCOBJ, OPT_EAQ,
        OPT_SALPHA, OPT_NOALIGN, OPT_BALMIN, OPT_NOBAL, OPT_ACTBITS, OPT_VERIFY, OPT_FORCE, OPT_JSON, OPT_THREADS, OPT_QUIET
    };
    static const struct option opts[] = {
        {"bits", required_argument, 0, OPT_BITS},          {"group", required_argument, 0, OPT_GROUP},
        {"method", required_argument, 0, OPT_METHOD},      {"sym", no_argument, 0, OPT_SYM},
        {"clip", no_argument, 0, OPT_CLIP},                {"act-order", no_argument, 0, OPT_ACTORDER},
        {"damp", required_argument, 0, OPT_DAMP},          {"text", required_argument, 0, OPT_TEXT},
        {"stats", required_argument, 0, OPT_STATS},        {"tokens", required_argument, 0, OPT_TOKENS},
        {"ctx", required_argument, 0, OPT_CTX},            {"attn", no_argument, 0, OPT_ATTN},
        {"attn-bits", required_argument, 0, OPT_ATTN_BITS}, {"embed-bits", required_argument, 0, OPT_EMBED_BITS},
        {"avg-bits", required_argument, 0, OPT_AVG},       {"bit-choices", required_argument, 0, OPT_CHOICES},
        {"alloc", required_argument, 0, OPT_ALLOC},        {"diversity", no_argument, 0, OPT_DIV},
        {"mc-objective", required_argument, 0, OPT_MCOBJ}, {"eaquant", no_argument, 0, OPT_EAQ},
        {"smooth-alpha", required_argument, 0, OPT_SALPHA}, {"no-align", no_argument, 0, OPT_NOALIGN},
        {"balance-min", required_argument, 0, OPT_BALMIN}, {"no-balance", no_argument, 0, OPT_NOBAL},
        {"act-bits", required_argument, 0, OPT_ACTBITS},
        {"verify-tokens", required_argument, 0, OPT_VERIFY}, {"force", no_argument, 0, OPT_FORCE},
        {"json", no_argument, 0, OPT_JSON},                {"threads", required_argument, 0, OPT_THREADS},
        {"quiet", no_argument, 0, OPT_QUIET},              {"output", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},                     {0, 0, 0, 0}};
    const char **texts = calloc((size_t)argc, sizeof *texts);
    if (!texts)
        cli_die("out of memory");
    int n_texts = 0;
    const char *stats_path = NULL, *out = NULL;
    moec_quant_recipe r = MOEC_QUANT_RECIPE_DEFAULT;
    r.threads = 2;
    int64_t tokens = 32768;
    int ctx = 256;
    bool have_bits = false, json = false, force = false, eaquant = false, no_align = false, have_salpha = false;
    bool have_choices = false, have_alloc = false, have_mcobj = false, have_balmin = false;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_BITS: r.bits = (int)cli_parse_long("--bits", optarg, 1, 8); have_bits = true; break;
        case OPT_GROUP: r.group = (int)cli_parse_long("--group", optarg, 0, 1 << 30); break;
        case OPT_METHOD:
            if (!strcmp(optarg, "rtn"))
                r.method = MOEC_QMETHOD_RTN;
            else if (!strcmp(optarg, "gptq"))
                r.method = MOEC_QMETHOD_GPTQ;
            else
                cli_usage_error("--method: unknown method '%s' (rtn or gptq)", optarg);
            break;
        case OPT_SYM: r.symmetric = true; break;
        case OPT_CLIP: r.clip_grid = 20; break;
        case OPT_ACTORDER: r.act_order = true; break;
        case OPT_DAMP: r.percdamp = cli_parse_double("--damp", optarg, 1e-9, 100.0); break;
        case OPT_TEXT: texts[n_texts++] = optarg; break;
        case OPT_STATS: stats_path = optarg; break;
        case OPT_TOKENS: tokens = cli_parse_long("--tokens", optarg, 0, 1L << 40); break;
        case OPT_CTX: ctx = (int)cli_parse_long("--ctx", optarg, 2, 1 << 20); break;
        case OPT_ATTN: r.attn = true; break;
        case OPT_ATTN_BITS: r.attn_bits = (int)cli_parse_long("--attn-bits", optarg, 1, 8); break;
        case OPT_EMBED_BITS: r.embed_bits = (int)cli_parse_long("--embed-bits", optarg, 1, 8); break;
        case OPT_AVG: r.avg_bits = cli_parse_double("--avg-bits", optarg, 1.0, 8.0); break;
        case OPT_CHOICES:
            if ((r.n_choices = parse_choices(optarg, r.choices)) < 1)
                cli_usage_error("--bit-choices: expected increasing widths in 1..8 like 1,2,3,4");
            have_choices = true;
            break;
        case OPT_ALLOC:
            if (!strcmp(optarg, "mcmoe"))
                r.alloc = MOEC_QALLOC_MCMOE;
            else if (!strcmp(optarg, "uniform"))
                r.alloc = MOEC_QALLOC_UNIFORM;
            else
                cli_usage_error("--alloc: unknown allocation '%s' (mcmoe or uniform)", optarg);
            have_alloc = true;
            break;
        case OPT_DIV: r.mc.diversity = true; break;
        case OPT_MCOBJ:
            if (!strcmp(optarg, "output"))
                r.mc.objective = MOEC_MC_OUTPUT;
            else if (!strcmp(optarg, "paper"))
                r.mc.objective = MOEC_MC_PAPER;
            else
                cli_usage_error("--mc-objective: unknown objective '%s' (output or paper)", optarg);
            have_mcobj = true;
            break;
        case OPT_EAQ: eaquant = true; break;
        case OPT_SALPHA:
            r.smooth_alpha = (float)cli_parse_double("--smooth-alpha", optarg, 0.0, 1.0);
            have_salpha = true;
            break;
        case OPT_NOALIGN: no_align = true; break;
        case OPT_BALMIN: r.balance_min = (int)cli_parse_long("--balance-min", optarg, 1, 1 << 30); have_balmin = true; break;
        case OPT_NOBAL: r.balance = false; break;
        case OPT_ACTBITS: r.act_bits = (int)cli_parse_long("--act-bits", optarg, 2, 16); break;
        case OPT_VERIFY: r.verify_tokens = cli_parse_long("--verify-tokens", optarg, 0, 1L << 40); break;
        case OPT_FORCE: force = true; break;
        case OPT_JSON: json = true; break;
        case OPT_THREADS: r.threads = (int)cli_parse_long("--threads", optarg, 1, 256); break;
        case OPT_QUIET: cli_quiet = true; break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage, stdout); free(texts); return 0;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind == argc)
        cli_usage_error("missing MODEL");
    if (optind + 1 < argc)
        cli_usage_error("unexpected argument '%s'", argv[optind + 1]);
    const char *model_path = argv[optind];
    if (!have_bits)
        cli_usage_error("missing --bits B");
    if (!out)
        cli_usage_error("missing -o OUT.moec");
    if (n_texts > 0 && stats_path)
        cli_usage_error("give --text FILE... or --stats STATS, not both");
    if (r.method == MOEC_QMETHOD_GPTQ && n_texts == 0)
        cli_usage_error("--method gptq needs --text (Hessians of each layer's inputs)");
    if (eaquant && n_texts == 0)
        cli_usage_error("--eaquant needs --text");
    if ((have_choices || have_alloc) && r.avg_bits == 0)
        cli_usage_error("--bit-choices and --alloc go with --avg-bits");
    if ((r.mc.diversity || have_mcobj) && !(r.avg_bits > 0 && r.alloc == MOEC_QALLOC_MCMOE))
        cli_usage_error("--diversity and --mc-objective go with --avg-bits and --alloc mcmoe");
    if ((no_align || have_salpha) && !eaquant)
        cli_usage_error("--no-align and --smooth-alpha go with --eaquant");
    if ((have_balmin || !r.balance) && r.method != MOEC_QMETHOD_GPTQ)
        cli_usage_error("--balance-min and --no-balance go with --method gptq");
    if (have_balmin && !r.balance)
        cli_usage_error("--balance-min and --no-balance exclude each other");
    if (have_salpha && !no_align)
        cli_usage_error("--smooth-alpha is the fixed alpha of --no-align (the search chooses it otherwise)");
    if (r.avg_bits > 0 && r.alloc == MOEC_QALLOC_MCMOE && n_texts == 0 && !stats_path)
        cli_usage_error("--alloc mcmoe needs --text or --stats (importance and losses)");
    if (eaquant) {
        r.smooth = true;
        r.align = !no_align;
    }
    struct stat sb;
    if (!force && stat(out, &sb) == 0)
        cli_die("%s: exists (use --force to replace it)", out);

    moec_err err = {0};
    if (moec_check_parent_writable(out, &err))
        cli_die_err(&err);
    moec_model *m = cli_open_model(model_path);
    if (ctx > m->cfg.max_positions)
        cli_die("--ctx %d exceeds the model's %d positions", ctx, m->cfg.max_positions);
    moec_quant_calib cal = {0};
    int32_t *ids = NULL;
    int *wlen = NULL;
    moec_stats *stats = NULL;
    moec_tokenizer *tok = NULL;
    if (n_texts > 0) {
        tok = cli_model_tokenizer(m);
        if (moec_quant_windows_from_text(tok, texts, n_texts, ctx, tokens, &ids, &wlen, &cal.n_windows, &err))
            cli_die_err(&err);
        cal.ids = ids;
        cal.window_len = wlen;
    } else if (stats_path) {
        if (moec_stats_load(&stats, stats_path, &err))
            cli_die_err(&err);
        if (moec_stats_check(stats, m, &err))
            cli_die("%s: %s", stats_path, err.msg);
        cal.stats = stats;
    }

    /* written layer by layer as the model is quantized; the report comes last */
    moec_model_sink *sink = NULL;
    moec_moec_save_opts so = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    if (moec_model_sink_moec_new(&sink, m, out, &so, &err))
        cli_die_err(&err);
    moec_quant_report rep;
    moec_model *q = NULL;
    if (moec_quant_model_to(m, &cal, &r, sink, &q, &rep, cli_quiet ? NULL : progress, NULL, &err))
        cli_die_err(&err);
    cli_progress_done();
    cJSON *j = moec_quant_report_json(&rep, &r);
    if (!j)
        cli_die("out of memory");
    cJSON_AddStringToObject(j, "model", model_path);
    char *report_text = cJSON_PrintUnformatted(j);
    if (!report_text)
        cli_die("out of memory");
    if (moec_model_sink_finish(sink, q, report_text, &err))
        cli_die_err(&err);
    moec_model_sink_free(sink);
    free(report_text);
    if (stat(out, &sb) != 0)
        cli_die("%s: written but cannot be read back", out);
    const uint64_t file_bytes = (uint64_t)sb.st_size;
    const double file_bpw = rep.model_params ? 8.0 * (double)file_bytes / (double)rep.model_params : NAN;
    if (!cli_quiet)
        summary(&rep, &r, out, file_bpw, file_bytes);
    if (json) {
        cJSON_AddStringToObject(j, "output", out);
        cJSON_AddNumberToObject(j, "file_bytes", (double)file_bytes);
        cJSON_AddNumberToObject(j, "bpw_file", file_bpw);
        cli_print_json(j);
    }
    cJSON_Delete(j);
    moec_quant_report_free(&rep);
    moec_model_close(q);
    moec_stats_free(stats);
    moec_tokenizer_free(tok);
    free(ids);
    free(wlen);
    moec_model_close(m);
    free(texts);
    return 0;
}
