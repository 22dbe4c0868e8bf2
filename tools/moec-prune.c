/* moec-prune: drop experts from an MoE checkpoint (frequency baseline, STUN,
 * DERN, EASY-EP) and write the result as an HF checkpoint directory. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calib/calib.h"
#include "calib/stats.h"
#include "cli.h"
#include "model/model.h"
#include "prune/prune.h"
#include "tokenizer/tokenizer.h"

/* The text files' tokens for STUN's Wanda pass: up to cap tokens from each
 * file (0: all), concatenated. */
static int32_t *text_tokens(const moec_tokenizer *tok, const char *const *files, int n, int64_t total_cap,
                            size_t *n_out)
{
    int32_t *all = NULL;
    size_t used = 0;
    int64_t cap = total_cap > 0 ? total_cap / n : 0;
    for (int f = 0; f < n; f++) {
        FILE *fp = fopen(files[f], "rb");
        if (!fp)
            cli_die("%s: %s", files[f], strerror(errno));
        char *buf = NULL;
        size_t len = 0, capb = 0;
        for (;;) {
            if (len == capb) {
                capb = capb ? 2 * capb : 1 << 16;
                char *nb = realloc(buf, capb);
                if (!nb)
                    cli_die("out of memory");
                buf = nb;
            }
            size_t r = fread(buf + len, 1, capb - len, fp);
            len += r;
            if (r == 0)
                break;
        }
        bool bad = ferror(fp);
        fclose(fp);
        if (bad)
            cli_die("%s: read error", files[f]);
        int32_t *ids;
        size_t n_ids;
        moec_err err = {0};
        if (moec_tokenizer_encode(tok, buf, len, &ids, &n_ids, &err))
            cli_die("%s: %s", files[f], err.msg);
        free(buf);
        if (cap > 0 && n_ids > (size_t)cap)
            n_ids = (size_t)cap;
        int32_t *na = realloc(all, (used + n_ids + 1) * sizeof *na);
        if (!na)
            cli_die("out of memory");
        all = na;
        memcpy(all + used, ids, n_ids * sizeof *ids);
        used += n_ids;
        free(ids);
    }
    *n_out = used;
    return all;
}

static void summary(const moec_prune_report *rep, const char *out, double calib_secs)
{
    printf("%s, %s allocation, top_k %d -> %d\n", rep->method,
            rep->alloc == MOEC_PRUNE_GLOBAL ? "global" : "uniform", rep->top_k_before, rep->top_k_after);
    for (int l = 0; l < rep->n_layers; l++) {
        const moec_prune_layer *R = &rep->layers[l];
        if (R->n_before == 0)
            continue;
        printf("  layer %-3d %d -> %d, kept", l, R->n_before, R->n_after);
        for (int i = 0; i < R->n_after; i++)
            printf(" %d", R->kept[i]);
        printf("\n");
    }
    printf("  params %lld -> %lld (%.1f%%), bytes %llu -> %llu\n", (long long)rep->params_before,
            (long long)rep->params_after,
            rep->params_before ? 100.0 * (double)rep->params_after / (double)rep->params_before : 0.0,
            (unsigned long long)rep->bytes_before, (unsigned long long)rep->bytes_after);
    if (calib_secs > 0)
        printf("  %.2f s pruning, %.2f s calibration\n", rep->seconds, calib_secs);
    else
        printf("  %.2f s\n", rep->seconds);
    for (int i = 0; i < rep->n_notes; i++)
        printf("  note: %s\n", rep->notes[i]);
    printf("  -> %s\n", out);
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *out = NULL;
    cli_list stats_list = {0}, texts = {0}, domains = {0};
    moec_prune_opts po = MOEC_PRUNE_OPTS_DEFAULT;
    moec_calib_opts co = MOEC_CALIB_OPTS_DEFAULT;
    co.threads = 2;
    int method_i = -1;
    static const char *const methods[] = {"freq", "stun", "dern", "easyep", NULL};
    static const char *const unstructured[] = {"wanda", NULL};
    int unstruct_i = 0;
    bool json = false, force = false, uniform = false, global = false;
    cli_opt opts[] = {
        {"method", 0, CLI_CHOICE, "M", &method_i, .choices = methods,
         .help = "freq, stun, dern or easyep:\n"
                 "freq    \tkeep the most often selected experts (count; ties: routing weight)\n"
                 "stun    \tSTUN (arXiv 2409.06211): cluster experts by behaviour (router-row distance + "
                 "co-selection), complete linkage, keep per cluster the expert closest to the cluster's weight "
                 "centroid; then Wanda inside the kept experts with --sparsity\n"
                 "dern    \tDERN (arXiv 2509.10377): drop by routing weight, split the dropped experts into "
                 "neurons, merge each into its most similar kept neuron (cosine >= --dern-alpha) by a "
                 "routing-weighted average\n"
                 "easyep  \tEASY-EP (arXiv 2504.06792): gate x expert-output norm, weighted by how much the "
                 "experts change each token; domains mixed by normalising each domain's scores per layer"},
        {"keep", 0, CLI_INT, "N", &po.keep, 1, 1 << 20,
         .help = "experts kept per MoE layer (with --global: N x MoE layers in total)"},
        {"ratio", 0, CLI_DOUBLE, "R", &po.ratio, 0.0, 1.0,
         .help = "fraction of experts removed, 0 < R < 1 (0.25 keeps 6 of 8)"},
        {"stats", 0, CLI_LIST, "STATS...", &stats_list,
         .help = "statistics from moec-calib for this model (several for easyep only)"},
        CLI_OPT_TEXT(&texts, "calibrate on this text now (each file one domain, as moec-calib does); with "
                             "--stats, used only for STUN's Wanda pass"),
        {"tokens", 0, CLI_INT64, "N", &co.max_tokens, 0, (double)(1LL << 40),
         .help = "with --text: calibration tokens in all, shared evenly by the files (default 0 = all)"},
        {"ctx", 0, CLI_INT, "N", &co.ctx, 2, 1 << 20, .help = "with --text: window length (default 256)"},
        {"uniform", 0, CLI_FLAG, NULL, &uniform,
         .help = "the same number of experts in every layer: a plain HF checkpoint (default)"},
        {"global", 0, CLI_FLAG, NULL, &global,
         .help = "one budget over all layers (STUN's allocation; each layer keeps at least top_k): per-layer "
                 "counts go to config.json \"moec_layer_experts\", which only moec reads; transformers and "
                 "llama.cpp will not load the result"},
        {"sparsity", 0, CLI_DOUBLE, "S", &po.sparsity, 0.0, 1.0,
         .help = "stun: fraction of each kept expert's weights zeroed per output row by Wanda, 0 <= S < 1 "
                 "(default 0); needs --text (input norms of the pruned model). Zeros are stored densely: the "
                 "file does not shrink"},
        {"unstructured", 0, CLI_CHOICE, "wanda", &unstruct_i, .choices = unstructured,
         .help = "accepted for the issue's spelling; Wanda is STUN's only stage 2"},
        {"stun-mix", 0, CLI_DOUBLE, "L", &po.stun_mix, -1e6, 1e6,
         .help = "stun: weight of the co-selection term against the router distance (default 1; 0 = router "
                 "rows only)"},
        {"dern-alpha", 0, CLI_DOUBLE, "A", &po.dern_alpha, -1.0, 1.0,
         .help = "dern: segments less similar than A to every kept neuron are discarded (default 0.5)"},
        {"domain", 0, CLI_LIST, "NAME...", &domains,
         .help = "easyep: score on these calibration domains only (a domain \"drama.train.txt\" answers to "
                 "\"drama\")"},
        CLI_OPT_OUTPUT(&out, "OUT_DIR", "output checkpoint directory (tokenizer and other files copied; written "
                                        "aside and renamed when complete)"),
        CLI_OPT_FORCE(&force),
        CLI_OPT_THREADS(&co.threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL --method M (--keep N | --ratio R) (--stats STATS... | --text FILE...) -o OUT_DIR [options]",
        .summary = "Drops experts from an MoE checkpoint (frequency baseline, STUN, DERN, EASY-EP) and writes "
                   "the result as a Hugging Face checkpoint directory.",
        .operand = "MODEL",
        .operand_help = "Hugging Face checkpoint directory",
        .operand_dest = &model_path,
        .opts = opts,
        .epilog = "Choices and departures (details in prune/prune_<method>.c):\n"
                  "stun    \trouter distance divided by ||R||_F in every mode, so one threshold fits all layers; "
                  "all cross pairs checked (complete linkage; the reference code checks a subset); always a "
                  "real expert per cluster (the reference averages the members when a layer keeps at most "
                  "--merge_max_clusters clusters); Wanda's input norms come from a pass over the expert-pruned "
                  "model as in the reference workflow (methods.md: the statistics' in_sq_sum), on the kept "
                  "experts only (the reference also prunes attention)\n"
                  "dern    \tsimilarity and merge rule as methods.md reads the paper (not checked against its "
                  "full text)\n"
                  "easyep  \ttoken weight 1 - cos(r, r + routed output) on the residual stream r, as the "
                  "authors' code (methods.md writes the normed input h); every calibration token is scored, "
                  "not only demonstrations\n"
                  "--global\tfor freq, dern and easyep (not in their papers) ranks in-layer score shares",
    };
    cli_parse(&tool, argc, argv);
    const char *method = method_i >= 0 ? methods[method_i] : NULL;
    const char **stats_files = stats_list.v, **text_files = texts.v;
    const int n_texts = texts.n, n_domains = domains.n;
    int n_stats = stats_list.n;
    const bool have_keep = cli_given(&tool, "keep"), have_ratio = cli_given(&tool, "ratio");
    const bool have_sparsity = cli_given(&tool, "sparsity"), have_mix = cli_given(&tool, "stun-mix");
    const bool have_alpha = cli_given(&tool, "dern-alpha"), have_unstruct = cli_given(&tool, "unstructured");
    if (!method)
        cli_usage_error("missing --method (freq, stun, dern or easyep)");
    bool is_stun = !strcmp(method, "stun"), is_dern = !strcmp(method, "dern"), is_easyep = !strcmp(method, "easyep");
    if (have_keep == have_ratio)
        cli_usage_error("give one of --keep N and --ratio R");
    if (have_ratio && !(po.ratio > 0.0 && po.ratio < 1.0))
        cli_usage_error("--ratio: %g must be strictly between 0 and 1", po.ratio);
    if (uniform && global)
        cli_usage_error("--uniform and --global exclude each other");
    po.alloc = global ? MOEC_PRUNE_GLOBAL : MOEC_PRUNE_UNIFORM;
    if (n_stats == 0 && n_texts == 0)
        cli_usage_error("give --stats STATS... or --text FILE...");
    if (n_stats > 1 && !is_easyep)
        cli_usage_error("--stats: only easyep mixes several statistics files");
    if (have_unstruct && !is_stun)
        cli_usage_error("--unstructured applies to --method stun only");
    if (have_sparsity && !is_stun)
        cli_usage_error("--sparsity applies to --method stun only");
    if (have_sparsity && !(po.sparsity < 1.0))
        cli_usage_error("--sparsity: %g must be below 1", po.sparsity);
    if (po.sparsity > 0 && n_texts == 0)
        cli_usage_error("--sparsity needs --text: Wanda reads the input norms of the expert-pruned model");
    if (have_mix && !is_stun)
        cli_usage_error("--stun-mix applies to --method stun only");
    if (have_alpha && !is_dern)
        cli_usage_error("--dern-alpha applies to --method dern only");
    if (n_domains > 0 && !is_easyep)
        cli_usage_error("--domain applies to --method easyep only");
    if (!out)
        cli_usage_error("missing -o OUT_DIR");
    cli_check_output(out, force);

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    cli_check_not_input(m, out);
    if (co.ctx > m->cfg.max_positions)
        cli_die("--ctx %d exceeds the model's %d positions", co.ctx, m->cfg.max_positions);
    moec_tokenizer *tok = NULL;
    moec_stats **stats = calloc((size_t)(n_stats > 0 ? n_stats : 1), sizeof *stats);
    if (!stats)
        cli_die("out of memory");
    double calib_secs = 0.0;
    for (int i = 0; i < n_stats; i++) {
        if (moec_stats_load(&stats[i], stats_files[i], &err))
            cli_die_err(&err);
        if (moec_stats_check(stats[i], m, &err))
            cli_die("%s: %s", stats_files[i], err.msg);
    }
    if (n_stats == 0) {
        tok = cli_model_tokenizer(m);
        double t0 = cli_seconds();
        if (moec_calib_run(m, tok, text_files, n_texts, &co, &stats[0], cli_calib_progress, NULL, &err))
            cli_die_err(&err);
        cli_progress_done();
        calib_secs = cli_seconds() - t0;
        n_stats = 1;
    }
    int32_t *wanda_ids = NULL;
    size_t n_wanda = 0;
    if (is_stun && po.sparsity > 0) {
        if (!tok)
            tok = cli_model_tokenizer(m);
        wanda_ids = text_tokens(tok, text_files, n_texts, co.max_tokens, &n_wanda);
        po.calib_tokens = wanda_ids;
        po.n_calib_tokens = n_wanda;
        po.calib_ctx = co.ctx;
        po.threads = co.threads;
    }
    po.domains = domains.v;
    po.n_domains = n_domains;
    /* written layer by layer while it is built */
    po.out_dir = out;
    po.overwrite = force;

    moec_prune_report rep;
    moec_model *res = NULL;
    moec_status st;
    if (is_easyep)
        st = moec_prune_easyep(m, (const moec_stats *const *)stats, n_stats, &po, &res, &rep, &err);
    else if (is_stun)
        st = moec_prune_stun(m, stats[0], &po, &res, &rep, &err);
    else if (is_dern)
        st = moec_prune_dern(m, stats[0], &po, &res, &rep, &err);
    else
        st = moec_prune_freq(m, stats[0], &po, &res, &rep, &err);
    if (st)
        cli_die_err(&err);

    if (json) {
        cJSON *j = moec_prune_report_json(&rep);
        if (!j)
            cli_die("out of memory");
        cJSON_AddStringToObject(j, "model", model_path);
        cJSON_AddStringToObject(j, "output", out);
        cJSON_AddNumberToObject(j, "calibration_seconds", calib_secs);
        cli_json_add_version(j);
        cli_print_json(j);
        cJSON_Delete(j);
    } else if (!cli_quiet) {
        summary(&rep, out, calib_secs);
    }
    moec_prune_report_free(&rep);
    moec_model_close(res);
    for (int i = 0; i < n_stats; i++)
        moec_stats_free(stats[i]);
    free(stats);
    free(wanda_ids);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    cli_tool_free(&tool);
    return 0;
}
