/* moec-prune: drop experts from an MoE checkpoint (frequency baseline, STUN,
 * DERN, EASY-EP) and write the result as an HF checkpoint directory. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
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

static const char usage[] =
    "usage: moec-prune MODEL --method M (--keep N | --ratio R) (--stats STATS... | --text FILE...) -o OUT_DIR\n"
    "                  [options]\n"
    "  MODEL            Hugging Face checkpoint directory\n"
    "  --method M       freq    keep the most often selected experts (count; ties: routing weight)\n"
    "                   stun    STUN (arXiv 2409.06211): cluster experts by behaviour (router-row\n"
    "                           distance + co-selection), complete linkage, keep per cluster the\n"
    "                           expert closest to the cluster's weight centroid; then Wanda inside\n"
    "                           the kept experts with --sparsity\n"
    "                   dern    DERN (arXiv 2509.10377): drop by routing weight, split the dropped\n"
    "                           experts into neurons, merge each into its most similar kept neuron\n"
    "                           (cosine >= --dern-alpha) by a routing-weighted average\n"
    "                   easyep  EASY-EP (arXiv 2504.06792): gate x expert-output norm, weighted by\n"
    "                           how much the experts change each token; domains mixed by\n"
    "                           normalising each domain's scores per layer\n"
    "  --keep N         experts kept per MoE layer (with --global: N x MoE layers in total)\n"
    "  --ratio R        fraction of experts removed, 0 < R < 1 (0.25 keeps 6 of 8)\n"
    "  --stats FILE...  statistics from moec-calib for this model (several for easyep only)\n"
    "  --text FILE...   calibrate on this text now (each file one domain, as moec-calib does);\n"
    "                   with --stats, used only for STUN's Wanda pass\n"
    "  --tokens N       with --text: calibration tokens in all, shared evenly by the files\n"
    "                   (default 0 = all)\n"
    "  --ctx N          window length for --text (default 256)\n"
    "  --uniform        the same number of experts in every layer: a plain HF checkpoint (default)\n"
    "  --global         one budget over all layers (STUN's allocation; each layer keeps at least\n"
    "                   top_k): per-layer counts go to config.json \"moec_layer_experts\", which only\n"
    "                   moec reads; transformers and llama.cpp will not load the result\n"
    "  --sparsity S     stun: fraction of each kept expert's weights zeroed per output row by\n"
    "                   Wanda, 0 <= S < 1 (default 0); needs --text (input norms of the pruned\n"
    "                   model). Zeros are stored densely: the file does not shrink\n"
    "  --unstructured wanda  accepted for the issue's spelling; Wanda is STUN's only stage 2\n"
    "  --stun-mix L     stun: weight of the co-selection term against the router distance\n"
    "                   (default 1; 0 = router rows only)\n"
    "  --dern-alpha A   dern: segments less similar than A to every kept neuron are discarded\n"
    "                   (default 0.5)\n"
    "  --domain NAME... easyep: score on these calibration domains only (a domain\n"
    "                   \"drama.train.txt\" answers to \"drama\")\n"
    "  -o OUT_DIR       output checkpoint directory (tokenizer and other files copied)\n"
    "  --force          replace OUT_DIR if it exists\n"
    "  --json           print the report as JSON on stdout\n"
    "  --threads N      worker threads (default 2)\n"
    "  --quiet          no progress or summary on stderr\n"
    "  --help           show this help\n"
    "A list (FILE..., NAME...) runs to the next option, so give MODEL first.\n"
    "Choices and departures (details in prune/prune_<method>.c):\n"
    "  stun    router distance divided by ||R||_F in every mode, so one threshold fits all\n"
    "          layers; all cross pairs checked (complete linkage; the reference code checks a\n"
    "          subset); always a real expert per cluster (the reference averages the members\n"
    "          when a layer keeps at most --merge_max_clusters clusters); Wanda's input norms come from a pass over the expert-pruned\n"
    "          model as in the reference workflow (methods.md: the statistics' in_sq_sum), on\n"
    "          the kept experts only (the reference also prunes attention)\n"
    "  dern    similarity and merge rule as methods.md reads the paper (not checked against\n"
    "          its full text)\n"
    "  easyep  token weight 1 - cos(r, r + routed output) on the residual stream r, as the\n"
    "          authors' code (methods.md writes the normed input h); every calibration token\n"
    "          is scored, not only demonstrations\n"
    "  --global for freq, dern and easyep (not in their papers) ranks in-layer score shares\n"
    "exit status: 0 ok, 1 failure, 2 usage error\n";

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
    fprintf(stderr, "%s: %s, %s allocation, top_k %d -> %d\n", cli_prog, rep->method,
            rep->alloc == MOEC_PRUNE_GLOBAL ? "global" : "uniform", rep->top_k_before, rep->top_k_after);
    for (int l = 0; l < rep->n_layers; l++) {
        const moec_prune_layer *R = &rep->layers[l];
        if (R->n_before == 0)
            continue;
        fprintf(stderr, "  layer %-3d %d -> %d, kept", l, R->n_before, R->n_after);
        for (int i = 0; i < R->n_after; i++)
            fprintf(stderr, " %d", R->kept[i]);
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "  params %lld -> %lld (%.1f%%), bytes %llu -> %llu\n", (long long)rep->params_before,
            (long long)rep->params_after,
            rep->params_before ? 100.0 * (double)rep->params_after / (double)rep->params_before : 0.0,
            (unsigned long long)rep->bytes_before, (unsigned long long)rep->bytes_after);
    if (calib_secs > 0)
        fprintf(stderr, "  %.2f s pruning, %.2f s calibration\n", rep->seconds, calib_secs);
    else
        fprintf(stderr, "  %.2f s\n", rep->seconds);
    for (int i = 0; i < rep->n_notes; i++)
        fprintf(stderr, "  note: %s\n", rep->notes[i]);
    fprintf(stderr, "  -> %s\n", out);
}

int main(int argc, char **argv)
{
    cli_init(argc, argv);
    enum {
        OPT_METHOD = 256, OPT_KEEP, OPT_RATIO, OPT_STATS, OPT_TEXT, OPT_TOKENS, OPT_CTX, OPT_UNIFORM, OPT_GLOBAL,
        OPT_SPARSITY, OPT_MIX, OPT_ALPHA, OPT_DOMAIN, OPT_FORCE, OPT_JSON, OPT_THREADS, OPT_QUIET, OPT_UNSTRUCT
    };
    static const struct option opts[] = {
        {"method", required_argument, 0, OPT_METHOD},   {"keep", required_argument, 0, OPT_KEEP},
        {"ratio", required_argument, 0, OPT_RATIO},     {"stats", required_argument, 0, OPT_STATS},
        {"text", required_argument, 0, OPT_TEXT},       {"tokens", required_argument, 0, OPT_TOKENS},
        {"ctx", required_argument, 0, OPT_CTX},         {"uniform", no_argument, 0, OPT_UNIFORM},
        {"global", no_argument, 0, OPT_GLOBAL},         {"sparsity", required_argument, 0, OPT_SPARSITY},
        {"stun-mix", required_argument, 0, OPT_MIX},    {"dern-alpha", required_argument, 0, OPT_ALPHA},
        {"domain", required_argument, 0, OPT_DOMAIN},   {"force", no_argument, 0, OPT_FORCE},
        {"json", no_argument, 0, OPT_JSON},             {"threads", required_argument, 0, OPT_THREADS},
        {"quiet", no_argument, 0, OPT_QUIET},           {"output", required_argument, 0, 'o'},
        {"unstructured", required_argument, 0, OPT_UNSTRUCT},
        {"help", no_argument, 0, 'h'},                  {0, 0, 0, 0}};
    const char **stats_files = calloc((size_t)argc, sizeof *stats_files);
    const char **texts = calloc((size_t)argc, sizeof *texts);
    const char **domains = calloc((size_t)argc, sizeof *domains);
    if (!stats_files || !texts || !domains)
        cli_die("out of memory");
    int n_stats = 0, n_texts = 0, n_domains = 0;
    const char *method = NULL, *out = NULL, *model_path = NULL;
    /* "--text a b c": a further argument joins the last list option given */
    const char ***list = NULL;
    int *list_n = NULL;
    moec_prune_opts po = MOEC_PRUNE_OPTS_DEFAULT;
    moec_calib_opts co = MOEC_CALIB_OPTS_DEFAULT;
    co.threads = 2;
    bool json = false, force = false, have_keep = false, have_ratio = false, uniform = false, global = false;
    bool have_sparsity = false, have_mix = false, have_alpha = false, have_unstruct = false;
    int c;
    while ((c = getopt_long(argc, argv, "-o:h", opts, NULL)) != -1) {
        if (c != 1 && c != OPT_STATS && c != OPT_TEXT && c != OPT_DOMAIN)
            list = NULL;
        switch (c) {
        case 1:
            if (list)
                (*list)[(*list_n)++] = optarg;
            else if (!model_path)
                model_path = optarg;
            else
                cli_usage_error("unexpected argument '%s'", optarg);
            break;
        case OPT_METHOD: method = optarg; break;
        case OPT_KEEP: po.keep = (int)cli_parse_long("--keep", optarg, 1, 1 << 20); have_keep = true; break;
        case OPT_RATIO: po.ratio = cli_parse_double("--ratio", optarg, 0.0, 1.0); have_ratio = true; break;
        case OPT_STATS: stats_files[n_stats++] = optarg; list = &stats_files; list_n = &n_stats; break;
        case OPT_TEXT: texts[n_texts++] = optarg; list = &texts; list_n = &n_texts; break;
        case OPT_TOKENS: co.max_tokens = cli_parse_long("--tokens", optarg, 0, 1L << 40); break;
        case OPT_CTX: co.ctx = (int)cli_parse_long("--ctx", optarg, 2, 1 << 20); break;
        case OPT_UNIFORM: uniform = true; break;
        case OPT_GLOBAL: global = true; break;
        case OPT_SPARSITY:
            po.sparsity = cli_parse_double("--sparsity", optarg, 0.0, 1.0);
            have_sparsity = true;
            break;
        case OPT_MIX: po.stun_mix = cli_parse_double("--stun-mix", optarg, -1e6, 1e6); have_mix = true; break;
        case OPT_ALPHA: po.dern_alpha = cli_parse_double("--dern-alpha", optarg, -1.0, 1.0); have_alpha = true; break;
        case OPT_UNSTRUCT:
            if (strcmp(optarg, "wanda"))
                cli_usage_error("--unstructured: unknown method '%s' (only wanda)", optarg);
            have_unstruct = true;
            break;
        case OPT_DOMAIN: domains[n_domains++] = optarg; list = &domains; list_n = &n_domains; break;
        case OPT_FORCE: force = true; break;
        case OPT_JSON: json = true; break;
        case OPT_THREADS: co.threads = (int)cli_parse_long("--threads", optarg, 1, 256); break;
        case OPT_QUIET: cli_quiet = true; break;
        case 'o': out = optarg; break;
        case 'h':
            fputs(usage, stdout);
            free(stats_files);
            free(texts);
            free(domains);
            return 0;
        default: cli_usage_error("unknown option");
        }
    }
    if (!model_path)
        cli_usage_error("missing MODEL");
    if (!method)
        cli_usage_error("missing --method (freq, stun, dern or easyep)");
    bool is_stun = !strcmp(method, "stun"), is_dern = !strcmp(method, "dern"), is_easyep = !strcmp(method, "easyep");
    if (!is_stun && !is_dern && !is_easyep && strcmp(method, "freq"))
        cli_usage_error("--method: unknown method '%s' (freq, stun, dern or easyep)", method);
    if (have_keep == have_ratio)
        cli_usage_error("give one of --keep N and --ratio R");
    if (have_ratio && !(po.ratio > 0.0 && po.ratio < 1.0))
        cli_usage_error("--ratio: %g must be strictly between 0 and 1", po.ratio);
    if (uniform && global)
        cli_usage_error("--uniform and --global exclude each other");
    po.alloc = global ? MOEC_PRUNE_GLOBAL : MOEC_PRUNE_UNIFORM;
    if (n_stats == 0 && n_texts == 0)
        cli_usage_error("give --stats STATS or --text FILE");
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
    struct stat sb;
    if (!force && stat(out, &sb) == 0)
        cli_die("%s: exists (use --force to replace it)", out);

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
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
        if (moec_calib_run(m, tok, texts, n_texts, &co, &stats[0], cli_quiet ? NULL : cli_calib_progress,
                           NULL, &err))
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
        wanda_ids = text_tokens(tok, texts, n_texts, co.max_tokens, &n_wanda);
        po.calib_tokens = wanda_ids;
        po.n_calib_tokens = n_wanda;
        po.calib_ctx = co.ctx;
        po.threads = co.threads;
    }
    po.domains = domains;
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

    if (!cli_quiet)
        summary(&rep, out, calib_secs);
    if (json) {
        cJSON *j = moec_prune_report_json(&rep);
        if (!j)
            cli_die("out of memory");
        cJSON_AddStringToObject(j, "model", model_path);
        cJSON_AddStringToObject(j, "output", out);
        cJSON_AddNumberToObject(j, "calibration_seconds", calib_secs);
        cli_print_json(j);
        cJSON_Delete(j);
    }
    moec_prune_report_free(&rep);
    moec_model_close(res);
    for (int i = 0; i < n_stats; i++)
        moec_stats_free(stats[i]);
    free(stats);
    free(wanda_ids);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    free(stats_files);
    free(texts);
    free(domains);
    return 0;
}
