/* moec-merge: fold each MoE layer's experts into fewer, by Sub-MoE subspace
 * merging or frequency-weighted averaging, and write an HF checkpoint. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "core/fsutil.h"
#include "calib/stats.h"
#include "cli.h"
#include "merge/merge.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#define DEFAULT_ENERGY 0.99

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

int main(int argc, char **argv)
{
    static const char *const methods[] = {"submoe", "average", NULL};
    static const char *const routers[] = {"average", "dominant", NULL};
    static const char *const weightings[] = {"count", "gate", NULL};
    static const char *const inits[] = {"freq", "kmeans++", NULL};
    moec_merge_opts mo = MOEC_MERGE_OPTS_DEFAULT;
    mo.threads = 2;
    moec_calib_opts co = MOEC_CALIB_OPTS_DEFAULT;
    int method = -1, router = 0, weighting = 0, init = 0;
    int64_t seed = 0;
    bool force = false, json = false, svd_double = false;
    const char *model_path = NULL, *stats_path = NULL, *out = NULL;
    cli_list texts = {0};
    cli_opt opts[] = {
        {"method", 0, CLI_CHOICE, "M", &method, .choices = methods,
         .help = "submoe: per group of similar experts, one SVD of the members' weights side by side gives a "
                 "shared basis U; the rank is truncated and the members' V parts are averaged by routing "
                 "frequency (Sub-MoE). average: routing-frequency-weighted average of the members' weights. "
                 "Both cluster experts by K-means on the cosine similarity of their outputs on calibration "
                 "tokens, seeded with the most routed experts"},
        {"keep", 0, CLI_INT, "N", &mo.keep, 1, 1 << 20,
         .help = "experts per MoE layer after merging (1 .. the layer's experts)"},
        {"ratio", 0, CLI_DOUBLE, "R", &mo.ratio, 1e-9, 1.0 - 1e-9,
         .help = "fraction of each layer's experts removed, 0 < R < 1 (as moec-prune: 0.25 keeps 6 of 8, 0.5 "
                 "keeps 4)"},
        {"stats", 0, CLI_STRING, "STATS", &stats_path,
         .help = "calibration statistics from moec-calib (with expert-output similarities)"},
        CLI_OPT_TEXT(&texts, "calibrate on the fly on this text instead, as moec-calib does"),
        {"tokens", 0, CLI_INT64, "N", &co.max_tokens, 0, (double)(1LL << 40),
         .help = "with --text: calibration tokens in all, 0 = all (default 0)"},
        {"ctx", 0, CLI_INT, "N", &co.ctx, 1, 1 << 20, .help = "with --text: calibration window (default 256)"},
        {"sim-tokens", 0, CLI_INT, "N", &co.sim_tokens, 1, 1 << 30,
         .help = "with --text: tokens for the output similarities (default 4096)"},
        {"rank", 0, CLI_INT, "R", &mo.rank, 1, 1 << 30, .help = "submoe: singular vectors kept per group and matrix"},
        {"energy", 0, CLI_DOUBLE, "E", &mo.energy, 1e-9, 1.0,
         .help = "submoe: keep the smallest rank whose squared singular values reach the fraction E of the "
                 "total, 0 < E <= 1 (default 0.99). At E = 1 (full rank) submoe gives exactly the average: the "
                 "truncation is what differs"},
        {"router", 0, CLI_CHOICE, "RULE", &router, .choices = routers,
         .help = "router row of a merged group: average (of the members' rows, weighted like the experts; "
                 "default) or dominant (the most routed member's row)"},
        {"weights", 0, CLI_CHOICE, "W", &weighting, .choices = weightings,
         .help = "merge weights: count (tokens routed to each expert; default) or gate (sum of the gates each "
                 "expert received)"},
        {"init", 0, CLI_CHOICE, "I", &init, .choices = inits,
         .help = "cluster seeding: freq (the N most routed experts; default) or kmeans++ (seeded restarts, the "
                 "lowest inertia kept)"},
        {"restarts", 0, CLI_INT, "N", &mo.kmeans.restarts, 1, 1 << 20, .help = "k-means++ restarts (default 8)"},
        {"seed", 0, CLI_INT64, "N", &seed, 0, (double)(1LL << 62), .help = "k-means++ seed"},
        {"svd-double", 0, CLI_FLAG, NULL, &svd_double,
         .help = "submoe: SVD in double precision (dgesdd) instead of float"},
        CLI_OPT_OUTPUT(&out, "OUT_DIR", "checkpoint directory to write (written aside and renamed when complete)"),
        CLI_OPT_FORCE(&force),
        CLI_OPT_THREADS(&mo.threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL --method M (--keep N | --ratio R) (--stats STATS | --text FILE...) -o OUT_DIR [options]",
        .summary = "Folds each MoE layer's experts into fewer, by Sub-MoE subspace merging or "
                   "frequency-weighted averaging, and writes a Hugging Face checkpoint.",
        .operand = "MODEL",
        .operand_help = "Hugging Face checkpoint directory (F32, F16 or BF16 experts)",
        .operand_dest = &model_path,
        .opts = opts,
        .epilog = "When fewer experts remain than num_experts_per_tok, it is lowered to the smallest count.",
    };
    cli_parse(&tool, argc, argv);
    const bool have_keep = cli_given(&tool, "keep"), have_ratio = cli_given(&tool, "ratio");
    const bool have_rank = cli_given(&tool, "rank"), have_energy = cli_given(&tool, "energy");
    const int n_texts = texts.n;
    mo.router = (moec_merge_router)router;
    mo.weighting = (moec_merge_weighting)weighting;
    mo.kmeans.init = (moec_kmeans_init)init;
    if (cli_given(&tool, "seed"))
        mo.kmeans.seed = (uint64_t)seed;
    if (svd_double)
        mo.precision = MOEC_SVD_DOUBLE;
    if (method < 0)
        cli_usage_error("missing --method {submoe,average}");
    mo.method = (moec_merge_method)method;
    if (have_keep == have_ratio)
        cli_usage_error(have_keep ? "give --keep or --ratio, not both" : "missing --keep N or --ratio R");
    if (!stats_path == !n_texts)
        cli_usage_error(stats_path ? "give --stats or --text, not both" : "missing --stats STATS or --text FILE...");
    if (have_rank && have_energy)
        cli_usage_error("give --rank or --energy, not both");
    if (mo.method == MOEC_MERGE_AVERAGE && (have_rank || have_energy || mo.precision == MOEC_SVD_DOUBLE))
        cli_usage_error("--rank, --energy and --svd-double apply to --method submoe only");
    if (!have_rank)
        mo.energy = have_energy ? mo.energy : DEFAULT_ENERGY;
    if (!out)
        cli_usage_error("missing -o OUT_DIR");
    cli_check_output(out, force);
    co.threads = mo.threads;

    const double t0 = cli_seconds();
    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    cli_check_not_input(m, out);
    moec_stats *stats = NULL;
    double calib_s = 0.0;
    if (stats_path) {
        if (moec_stats_load(&stats, stats_path, &err))
            cli_die_err(&err);
    } else {
        if (co.ctx > m->cfg.max_positions)
            cli_die("--ctx %d exceeds the model's %d positions", co.ctx, m->cfg.max_positions);
        moec_tokenizer *tok = cli_model_tokenizer(m);
        const double tc = cli_seconds();
        if (moec_calib_run(m, tok, texts.v, n_texts, &co, &stats, cli_calib_progress, NULL, &err))
            cli_die_err(&err);
        calib_s = cli_seconds() - tc;
        cli_progress_done();
        moec_tokenizer_free(tok);
    }

    mo.progress = cli_merge_progress;
    /* written layer by layer while it is merged: the writing is in seconds_merge */
    mo.out_dir = out;
    mo.overwrite = force;
    moec_model *merged;
    moec_merge_report rep;
    if (moec_merge_model(m, stats, &mo, &merged, &rep, &err))
        cli_die_err(&err);
    cli_progress_done();
    const double total_s = cli_seconds() - t0;

    if (json) {
        cJSON *j = report_json(&rep, &mo, model_path, out, calib_s, total_s);
        if (!j)
            cli_die("out of memory");
        cli_json_add_version(j);
        cli_print_json(j);
        cJSON_Delete(j);
    } else if (!cli_quiet) {
        report_text(&rep, out, total_s);
    }
    moec_merge_report_free(&rep);
    moec_model_close(merged);
    moec_stats_free(stats);
    moec_model_close(m);
    cli_tool_free(&tool);
    return 0;
}
