/* moec-merge: fold each MoE layer's experts into fewer, by Sub-MoE subspace
 * merging or frequency-weighted averaging, and write an HF checkpoint. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "calib/calib.h"
#include "core/fsutil.h"
#include "calib/stats.h"
#include "cli.h"
#include "merge/merge.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#define DEFAULT_ENERGY 0.99

static const char usage[] =
    "usage: moec-merge MODEL --method {submoe,average} (--keep N | --ratio R)\n"
    "                  (--stats STATS | --text FILE...) [--rank R | --energy E] -o OUT_DIR [options]\n"
    "  MODEL            Hugging Face checkpoint directory (F32, F16 or BF16 experts)\n"
    "  --method M       submoe: per group of similar experts, one SVD of the members' weights\n"
    "                   side by side gives a shared basis U; the rank is truncated and the\n"
    "                   members' V parts are averaged by routing frequency (Sub-MoE).\n"
    "                   average: routing-frequency-weighted average of the members' weights.\n"
    "                   Both cluster experts by K-means on the cosine similarity of their\n"
    "                   outputs on calibration tokens, seeded with the most routed experts\n"
    "  --keep N         experts per MoE layer after merging (1 .. the layer's experts)\n"
    "  --ratio R        fraction of each layer's experts removed, 0 < R < 1 (as moec-prune:\n"
    "                   0.25 keeps 6 of 8, 0.5 keeps 4)\n"
    "  --stats STATS    calibration statistics from moec-calib (with expert-output similarities)\n"
    "  --text FILE      calibrate on the fly on this text instead (repeatable; further FILE\n"
    "                   arguments count as --text too), as moec-calib does\n"
    "  --tokens N       with --text: calibration tokens in all, 0 = all (default 0)\n"
    "  --ctx N          with --text: calibration window (default 256)\n"
    "  --sim-tokens N   with --text: tokens for the output similarities (default 4096)\n"
    "  --rank R         submoe: singular vectors kept per group and matrix\n"
    "  --energy E       submoe: keep the smallest rank whose squared singular values reach the\n"
    "                   fraction E of the total, 0 < E <= 1 (default 0.99). At E = 1 (full rank)\n"
    "                   submoe gives exactly the average: the truncation is what differs\n"
    "  --router RULE    router row of a merged group: average (of the members' rows, weighted\n"
    "                   like the experts; default) or dominant (the most routed member's row)\n"
    "  --weights W      merge weights: count (tokens routed to each expert; default) or gate\n"
    "                   (sum of the gates each expert received)\n"
    "  --init I         cluster seeding: freq (the N most routed experts; default) or kmeans++\n"
    "                   (seeded restarts, the lowest inertia kept)\n"
    "  --restarts N     k-means++ restarts (default 8)\n"
    "  --seed N         k-means++ seed\n"
    "  --svd-double     submoe: SVD in double precision (dgesdd) instead of float\n"
    "  -o OUT_DIR       checkpoint directory to write (written aside and renamed when complete)\n"
    "  --force          replace OUT_DIR if it exists\n"
    "  --threads N      worker threads for calibration and merging (default 2)\n"
    "  --json           print the merge report as JSON (groups, ranks, errors, parameters, time)\n"
    "  --quiet          no progress on stderr\n"
    "  --help           show this help\n"
    "When fewer experts remain than num_experts_per_tok, it is lowered to the smallest count.\n"
    "exit status: 0 ok, 1 failure, 2 usage error\n";

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void calib_progress(void *ctx, int64_t done, int64_t total)
{
    (void)ctx;
    cli_progress("calibrating: %lld/%lld tokens", (long long)done, (long long)total);
}

static void merge_progress(void *ctx, int done, int total)
{
    (void)ctx;
    cli_progress("merging: %d/%d matrices", done, total);
}

static cJSON *doubles(const double *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static cJSON *report_json(const moec_merge_report *r, const moec_merge_opts *o, const char *model,
                          const char *outdir, double calib_s, double total_s)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddStringToObject(j, "output", outdir);
    cJSON_AddStringToObject(j, "method", moec_merge_method_name(r->method));
    if (r->method == MOEC_MERGE_SUBMOE) {
        if (o->rank > 0)
            cJSON_AddNumberToObject(j, "rank", o->rank);
        else
            cJSON_AddNumberToObject(j, "energy", o->energy);
    }
    cJSON_AddStringToObject(j, "router", o->router == MOEC_MERGE_ROUTER_DOMINANT ? "dominant" : "average");
    cJSON_AddStringToObject(j, "weights", o->weighting == MOEC_MERGE_WEIGHT_GATE ? "gate" : "count");
    cJSON_AddStringToObject(j, "init", o->kmeans.init == MOEC_KMEANS_INIT_PLUSPLUS ? "kmeans++" : "freq");
    cJSON_AddNumberToObject(j, "top_k_before", r->top_k_before);
    cJSON_AddNumberToObject(j, "top_k_after", r->top_k_after);
    cJSON_AddNumberToObject(j, "params_before", (double)r->params_before);
    cJSON_AddNumberToObject(j, "params_after", (double)r->params_after);
    cJSON_AddNumberToObject(j, "params_factored", (double)r->params_factored);
    cJSON_AddNumberToObject(j, "seconds_calibration", calib_s);
    cJSON_AddNumberToObject(j, "seconds_cluster", r->seconds_cluster);
    cJSON_AddNumberToObject(j, "seconds_merge", r->seconds_merge);
    cJSON_AddNumberToObject(j, "seconds", total_s);
    cJSON *layers = cJSON_AddArrayToObject(j, "layers");
    for (int i = 0; i < r->n_layers; i++) {
        const moec_merge_layer *L = &r->layers[i];
        cJSON *jl = cJSON_CreateObject();
        cJSON_AddNumberToObject(jl, "layer", L->layer);
        cJSON_AddNumberToObject(jl, "experts_before", L->n_before);
        cJSON_AddNumberToObject(jl, "experts_after", L->n_after);
        cJSON_AddNumberToObject(jl, "inertia", L->inertia);
        cJSON_AddNumberToObject(jl, "iterations", L->iterations);
        cJSON_AddBoolToObject(jl, "converged", L->converged);
        cJSON *groups = cJSON_AddArrayToObject(jl, "groups");
        for (int g = 0; g < L->n_after; g++) {
            const moec_merge_group *G = &L->groups[g];
            cJSON *jg = cJSON_CreateObject();
            cJSON *mem = cJSON_AddArrayToObject(jg, "members");
            for (int m = 0; m < G->n_members; m++)
                cJSON_AddItemToArray(mem, cJSON_CreateNumber(G->members[m]));
            cJSON_AddItemToObject(jg, "weights", doubles(G->weights, G->n_members));
            if (G->uniform_weights)
                cJSON_AddBoolToObject(jg, "uniform_weights", 1);
            if (G->n_members > 1)
                for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
                    const moec_merge_kind *K = &G->kind[k];
                    cJSON *jk = cJSON_AddObjectToObject(jg, moec_merge_kind_name(k));
                    if (r->method == MOEC_MERGE_SUBMOE) {
                        cJSON_AddNumberToObject(jk, "rank", K->rank);
                        cJSON_AddNumberToObject(jk, "max_rank", K->max_rank);
                        cJSON_AddNumberToObject(jk, "energy", K->energy);
                        cJSON_AddNumberToObject(jk, "factored_params", (double)K->factored_params);
                        cJSON_AddItemToObject(jk, "recon_err", doubles(K->recon_err, G->n_members));
                    }
                    cJSON_AddItemToObject(jk, "merged_err", doubles(K->merged_err, G->n_members));
                }
            cJSON_AddItemToArray(groups, jg);
        }
        cJSON_AddItemToArray(layers, jl);
    }
    return j;
}

static void report_text(const moec_merge_report *r, const char *outdir, double total_s)
{
    for (int i = 0; i < r->n_layers; i++) {
        const moec_merge_layer *L = &r->layers[i];
        printf("layer %-3d %d -> %d experts:", L->layer, L->n_before, L->n_after);
        for (int g = 0; g < L->n_after; g++) {
            const moec_merge_group *G = &L->groups[g];
            printf(" {");
            for (int m = 0; m < G->n_members; m++)
                printf("%s%d", m ? "," : "", G->members[m]);
            printf("}");
            if (G->n_members > 1 && r->method == MOEC_MERGE_SUBMOE)
                printf("r%d/%d/%d", G->kind[MOEC_MERGE_W1].rank, G->kind[MOEC_MERGE_W3].rank,
                       G->kind[MOEC_MERGE_W2].rank);
        }
        printf("\n");
    }
    if (r->method == MOEC_MERGE_SUBMOE)
        printf("(rN/N/N: rank kept for w1/w3/w2 of a merged group)\n");
    if (r->top_k_after != r->top_k_before)
        printf("num_experts_per_tok lowered from %d to %d\n", r->top_k_before, r->top_k_after);
    printf("parameters: %lld -> %lld (%.1f%%)", (long long)r->params_before, (long long)r->params_after,
           r->params_before ? 100.0 * (double)r->params_after / (double)r->params_before : 0.0);
    if (r->method == MOEC_MERGE_SUBMOE)
        printf("; %lld with merged experts stored as factors", (long long)r->params_factored);
    printf("\n%s written in %.2f s\n", outdir, total_s);
}

static int pick(const char *opt, const char *v, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v, names[i]))
            return i;
    cli_usage_error("%s: unknown value '%s'", opt, v);
}

int main(int argc, char **argv)
{
    cli_init(argc, argv);
    enum {
        OPT_METHOD = 256, OPT_KEEP, OPT_RATIO, OPT_STATS, OPT_TEXT, OPT_TOKENS, OPT_CTX, OPT_SIM, OPT_RANK,
        OPT_ENERGY, OPT_ROUTER, OPT_WEIGHTS, OPT_INIT, OPT_RESTARTS, OPT_SEED, OPT_DOUBLE, OPT_FORCE,
        OPT_THREADS, OPT_JSON, OPT_QUIET
    };
    static const struct option opts[] = {
        {"method", required_argument, 0, OPT_METHOD},   {"keep", required_argument, 0, OPT_KEEP},
        {"ratio", required_argument, 0, OPT_RATIO},     {"stats", required_argument, 0, OPT_STATS},
        {"text", required_argument, 0, OPT_TEXT},       {"tokens", required_argument, 0, OPT_TOKENS},
        {"ctx", required_argument, 0, OPT_CTX},         {"sim-tokens", required_argument, 0, OPT_SIM},
        {"rank", required_argument, 0, OPT_RANK},       {"energy", required_argument, 0, OPT_ENERGY},
        {"router", required_argument, 0, OPT_ROUTER},   {"weights", required_argument, 0, OPT_WEIGHTS},
        {"init", required_argument, 0, OPT_INIT},       {"restarts", required_argument, 0, OPT_RESTARTS},
        {"seed", required_argument, 0, OPT_SEED},       {"svd-double", no_argument, 0, OPT_DOUBLE},
        {"force", no_argument, 0, OPT_FORCE},           {"threads", required_argument, 0, OPT_THREADS},
        {"json", no_argument, 0, OPT_JSON},             {"quiet", no_argument, 0, OPT_QUIET},
        {"output", required_argument, 0, 'o'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    static const char *const methods[] = {"submoe", "average"};
    static const char *const routers[] = {"average", "dominant"};
    static const char *const weightings[] = {"count", "gate"};
    static const char *const inits[] = {"freq", "kmeans++"};

    moec_merge_opts mo = MOEC_MERGE_OPTS_DEFAULT;
    mo.threads = 2;
    moec_calib_opts co = MOEC_CALIB_OPTS_DEFAULT;
    int method = -1;
    bool have_keep = false, have_ratio = false, have_rank = false, have_energy = false, force = false, json = false;
    const char *stats_path = NULL, *out = NULL;
    int n_texts = 0;
    const char **texts = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_METHOD: method = pick("--method", optarg, methods, 2); break;
        case OPT_KEEP: mo.keep = (int)cli_parse_long("--keep", optarg, 1, 1 << 20); have_keep = true; break;
        case OPT_RATIO: mo.ratio = cli_parse_double("--ratio", optarg, 1e-9, 1.0 - 1e-9); have_ratio = true; break;
        case OPT_STATS: stats_path = optarg; break;
        case OPT_TEXT:
            if (!texts && !(texts = calloc((size_t)argc, sizeof *texts)))
                cli_die("out of memory");
            texts[n_texts++] = optarg;
            break;
        case OPT_TOKENS: co.max_tokens = cli_parse_long("--tokens", optarg, 0, 1L << 40); break;
        case OPT_CTX: co.ctx = (int)cli_parse_long("--ctx", optarg, 1, 1 << 20); break;
        case OPT_SIM: co.sim_tokens = (int)cli_parse_long("--sim-tokens", optarg, 1, 1 << 30); break;
        case OPT_RANK: mo.rank = (int)cli_parse_long("--rank", optarg, 1, 1L << 30); have_rank = true; break;
        case OPT_ENERGY:
            mo.energy = cli_parse_double("--energy", optarg, 1e-9, 1.0);
            have_energy = true;
            break;
        case OPT_ROUTER: mo.router = (moec_merge_router)pick("--router", optarg, routers, 2); break;
        case OPT_WEIGHTS: mo.weighting = (moec_merge_weighting)pick("--weights", optarg, weightings, 2); break;
        case OPT_INIT: mo.kmeans.init = (moec_kmeans_init)pick("--init", optarg, inits, 2); break;
        case OPT_RESTARTS: mo.kmeans.restarts = (int)cli_parse_long("--restarts", optarg, 1, 1 << 20); break;
        case OPT_SEED: mo.kmeans.seed = (uint64_t)cli_parse_long("--seed", optarg, 0, (1L << 62)); break;
        case OPT_DOUBLE: mo.precision = MOEC_SVD_DOUBLE; break;
        case OPT_FORCE: force = true; break;
        case OPT_THREADS: mo.threads = (int)cli_parse_long("--threads", optarg, 1, 256); break;
        case OPT_JSON: json = true; break;
        case OPT_QUIET: cli_quiet = true; break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage, stdout); free(texts); return 0;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind == argc)
        cli_usage_error("missing MODEL");
    const char *model_path = argv[optind];
    if (optind + 1 < argc) {
        if (!texts && !(texts = calloc((size_t)argc, sizeof *texts)))
            cli_die("out of memory");
        for (int i = optind + 1; i < argc; i++)
            texts[n_texts++] = argv[i];
    }
    if (method < 0)
        cli_usage_error("missing --method {submoe,average}");
    mo.method = (moec_merge_method)method;
    if (have_keep == have_ratio)
        cli_usage_error(have_keep ? "give --keep or --ratio, not both" : "missing --keep N or --ratio R");
    if (!stats_path == !n_texts)
        cli_usage_error(stats_path ? "give --stats or --text, not both" : "missing --stats STATS or --text FILE");
    if (have_rank && have_energy)
        cli_usage_error("give --rank or --energy, not both");
    if (mo.method == MOEC_MERGE_AVERAGE && (have_rank || have_energy || mo.precision == MOEC_SVD_DOUBLE))
        cli_usage_error("--rank, --energy and --svd-double apply to --method submoe only");
    if (!have_rank)
        mo.energy = have_energy ? mo.energy : DEFAULT_ENERGY;
    if (!out)
        cli_usage_error("missing -o OUT_DIR");
    struct stat sb;
    if (!force && stat(out, &sb) == 0)
        cli_die("%s: already exists (--force replaces it)", out);
    moec_err perr = {0};
    if (moec_check_parent_writable(out, &perr))
        cli_die_err(&perr);
    co.threads = mo.threads;

    const double t0 = seconds();
    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    moec_stats *stats = NULL;
    double calib_s = 0.0;
    if (stats_path) {
        if (moec_stats_load(&stats, stats_path, &err))
            cli_die_err(&err);
    } else {
        if (co.ctx > m->cfg.max_positions)
            cli_die("--ctx %d exceeds the model's %d positions", co.ctx, m->cfg.max_positions);
        moec_tokenizer *tok = cli_model_tokenizer(m);
        const double tc = seconds();
        if (moec_calib_run(m, tok, texts, n_texts, &co, &stats, calib_progress, NULL, &err))
            cli_die_err(&err);
        calib_s = seconds() - tc;
        cli_progress_done();
        moec_tokenizer_free(tok);
    }

    mo.progress = merge_progress;
    /* written layer by layer while it is merged: the writing is in seconds_merge */
    mo.out_dir = out;
    mo.overwrite = force;
    moec_model *merged;
    moec_merge_report rep;
    if (moec_merge_model(m, stats, &mo, &merged, &rep, &err))
        cli_die_err(&err);
    cli_progress_done();
    const double total_s = seconds() - t0;

    if (json) {
        cJSON *j = report_json(&rep, &mo, model_path, out, calib_s, total_s);
        if (!j)
            cli_die("out of memory");
        cli_print_json(j);
        cJSON_Delete(j);
    } else {
        report_text(&rep, out, total_s);
    }
    moec_merge_report_free(&rep);
    moec_model_close(merged);
    moec_stats_free(stats);
    moec_model_close(m);
    free(texts);
    return 0;
}
