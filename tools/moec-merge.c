/* moec-merge: fold each MoE layer's experts into fewer (Sub-MoE's clustering;
 * a merge fitted to the group's outputs, Sub-MoE's subspace merge, or
 * frequency-weighted averaging) and write an HF checkpoint or a .moec file,
 * layer by layer as it is merged. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "calib/stats.h"
#include "cli.h"
#include "core/fsutil.h"
#include "merge/acts.h"
#include "merge/merge.h"
#include "merge/merge_quant.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "model/model_sink.h"
#include "quant/recipe.h"
#include "tokenizer/tokenizer.h"

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
    static const char *const routers[] = {"average", "dominant", "fit"};
    static const char *const features[] = {"fold", "dominant", "neurons"};
    cJSON_AddStringToObject(j, "router", routers[o->router]);
    cJSON_AddStringToObject(j, "features", features[o->features]);
    cJSON_AddBoolToObject(j, "whiten", o->whiten);
    cJSON_AddBoolToObject(j, "factored", o->factored);
    cJSON_AddBoolToObject(j, "fit_down", o->fit_down);
    cJSON_AddBoolToObject(j, "fit_all", o->fit_all);
    cJSON_AddNumberToObject(j, "ridge", o->ridge);
    cJSON_AddStringToObject(j, "cluster", o->clustering == MOEC_MERGE_CLUSTER_JOINT2 ? "joint2" : "layer");
    cJSON_AddBoolToObject(j, "sequential", o->sequential);
    cJSON_AddNumberToObject(j, "calib_tokens", (double)r->calib_tokens);
    cJSON_AddNumberToObject(j, "bytes_after", (double)r->bytes_after);
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
        if (L->tokens > 0) {
            cJSON_AddNumberToObject(jl, "out_err", L->out_err);
            cJSON_AddNumberToObject(jl, "top1_agree", L->top1_agree);
        }
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
                    cJSON_AddBoolToObject(jk, "factored", K->factored);
                    if (K->fitted) {
                        cJSON_AddBoolToObject(jk, "fitted", 1);
                        cJSON_AddNumberToObject(jk, "fit_tokens", (double)K->fit_tokens);
                    }
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
    static const char *const routers[] = {"average", "dominant", "fit", NULL};
    static const char *const weightings[] = {"count", "gate", NULL};
    static const char *const inits[] = {"freq", "kmeans++", NULL};
    static const char *const features[] = {"fold", "dominant", "neurons", NULL};
    static const char *const clusters[] = {"layer", "joint2", NULL};
    moec_merge_opts mo = MOEC_MERGE_OPTS_DEFAULT;
    mo.threads = 2;
    int ctx = 256, sim_tokens = 4096;
    int64_t max_tokens = 65536;
    moec_quant_opts qo = MOEC_QUANT_OPTS_DEFAULT;
    qo.bits = 0;
    int method = -1, router = 0, weighting = 0, init = 0, feature = 0, cluster = 0, quant_bits = 0;
    int quant_group = qo.group;
    int64_t seed = 0;
    bool force = false, json = false, svd_double = false, fit_down = false, no_fit_down = false, fit_all = false;
    bool parallel = false;
    const char *model_path = NULL, *stats_path = NULL, *out = NULL;
    cli_list texts = {0};
    cli_opt opts[] = {
        {"method", 0, CLI_CHOICE, "M", &method, .choices = methods,
         .help = "Both cluster each layer's experts by K-means on the cosine similarity of their outputs on "
                 "calibration tokens (Sub-MoE's clustering, seeded with the most routed experts) and merge each "
                 "group into one expert. submoe, by default (the best setting in docs/results/merging.md): the "
                 "merged expert keeps the neurons of its members that carry most of the group's gated output "
                 "(--features neurons), its down projection is solved by least squares to reproduce the group's "
                 "gate-weighted output on the calibration tokens routed to it (--fit-down) and its router row is "
                 "fitted to the log-sum-exp of the members' logits (--router fit). The paper's merge is "
                 "--features fold --router average --no-fit-down: one SVD of the members side by side gives a "
                 "shared basis U, the rank is truncated and the members' V parts are averaged by routing "
                 "frequency. average: the routing-frequency-weighted average of the members' weights and router "
                 "rows (the fits are options)"},
        {"keep", 0, CLI_INT, "N", &mo.keep, 1, 1 << 20,
         .help = "experts per MoE layer after merging (1 .. the layer's experts)"},
        {"ratio", 0, CLI_DOUBLE, "R", &mo.ratio, 1e-9, 1.0 - 1e-9,
         .help = "fraction of each layer's experts removed, 0 < R < 1 (as moec-prune: 0.25 keeps 6 of 8, 0.5 "
                 "keeps 4)"},
        CLI_OPT_TEXT(&texts, "calibration text: every layer is merged on its inputs for these tokens"),
        {"tokens", 0, CLI_INT64, "N", &max_tokens, 0, (double)(1LL << 40),
         .help = "calibration tokens in all, spread over the files (default 65536; 0 = all)"},
        {"ctx", 0, CLI_INT, "N", &ctx, 1, 1 << 20, .help = "calibration window (default 256)"},
        {"sim-tokens", 0, CLI_INT, "N", &sim_tokens, 1, 1 << 30,
         .help = "tokens per layer for the output similarities clustering reads (default 4096)"},
        {"stats", 0, CLI_STRING, "STATS", &stats_path,
         .help = "instead of --text: statistics from moec-calib (with expert-output similarities); then only the "
                 "methods' folds apply (no fits, neurons, whitening or joint clustering)"},
        {"features", 0, CLI_CHOICE, "F", &feature, .choices = features,
         .help = "w1/w3 of a merged group: neurons (submoe's default), fold (the method's own merge; average's "
                 "default) or dominant (the most routed member's)"},
        {"fit-down", 0, CLI_FLAG, NULL, &fit_down,
         .help = "fit w2 of a merged group by least squares (submoe's default)"},
        {"no-fit-down", 0, CLI_FLAG, NULL, &no_fit_down,
         .help = "fold w2 like w1/w3 instead (average's default)"},
        {"fit-all", 0, CLI_FLAG, NULL, &fit_all,
         .help = "with --fit-down, also refit w2 of the experts left alone in a layer where a group merged, "
                 "since their tokens and gates changed: one more least-squares fit per such expert (a p x p "
                 "system, p the expert FFN width), which paid off on fine-grained experts only "
                 "(docs/results/merging.md)"},
        {"ridge", 0, CLI_DOUBLE, "R", &mo.ridge, 1e-12, 1e6,
         .help = "relative ridge of the fits, towards the merged weights (default 0.3)"},
        {"router", 0, CLI_CHOICE, "RULE", &router, .choices = routers,
         .help = "router row of a merged group: fit (submoe's default), average (of the members' rows, weighted "
                 "like the experts; average's default) or dominant (the most routed member's row)"},
        {"rank", 0, CLI_INT, "R", &mo.rank, 1, 1 << 30, .help = "submoe fold: singular vectors kept per group and matrix"},
        {"energy", 0, CLI_DOUBLE, "E", &mo.energy, 1e-9, 1.0,
         .help = "submoe fold: keep the smallest rank whose squared singular values reach the fraction E of the "
                 "total, 0 < E <= 1 (default 1: full rank, where the fold is exactly the average; the truncation "
                 "is what differs)"},
        {"whiten", 0, CLI_FLAG, NULL, &mo.whiten,
         .help = "submoe fold: Sub-MoE dagger: the SVD of the members whitened by their calibration inputs, so "
                 "the truncation keeps what matters for them"},
        {"factored", 0, CLI_FLAG, NULL, &mo.factored,
         .help = "submoe fold: store a truncated merged matrix as its two factors where that is smaller (needs "
                 "-o FILE.moec); the executor runs them as two products"},
        {"cluster", 0, CLI_CHOICE, "C", &cluster, .choices = clusters,
         .help = "layer: K-means per layer (default); joint2: the paper's adaptive allocation, two consecutive "
                 "layers clustered together so that each layer's count adapts (their sum is kept)"},
        {"parallel-calib", 0, CLI_FLAG, NULL, &parallel,
         .help = "calibrate every layer on the original model's inputs (default: on the inputs the already "
                 "merged layers before it produce)"},
        {"weights", 0, CLI_CHOICE, "W", &weighting, .choices = weightings,
         .help = "merge weights: count (tokens routed to each expert; default) or gate (sum of the gates each "
                 "expert received)"},
        {"init", 0, CLI_CHOICE, "I", &init, .choices = inits,
         .help = "cluster seeding: freq (the N most routed experts; default) or kmeans++ (seeded restarts, the "
                 "lowest inertia kept)"},
        {"restarts", 0, CLI_INT, "N", &mo.kmeans.restarts, 1, 1 << 20, .help = "k-means++ restarts (default 8)"},
        {"seed", 0, CLI_INT64, "N", &seed, 0, (double)(1LL << 62), .help = "k-means++ seed"},
        {"svd-double", 0, CLI_FLAG, NULL, &svd_double,
         .help = "submoe fold: SVD in double precision (dgesdd) instead of float"},
        {"quant-bits", 0, CLI_INT, "B", &quant_bits, 1, 8,
         .help = "quantize every routed expert weight, factors included, by RTN to B bits in groups of "
                 "--quant-group columns; needs -o FILE.moec"},
        {"quant-group", 0, CLI_INT, "G", &quant_group, 0, 1 << 30,
         .help = "with --quant-bits: columns per group (default 128; 0 = whole rows)"},
        CLI_OPT_OUTPUT(&out, "OUT",
                       "a checkpoint directory, or FILE.moec for the .moec container (needed for --factored and "
                       "--quant-bits); written aside layer by layer and renamed when complete"),
        CLI_OPT_FORCE(&force),
        CLI_OPT_THREADS(&mo.threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL --method M (--keep N | --ratio R) (--text FILE... | --stats STATS) -o OUT [options]",
        .summary = "Folds each MoE layer's experts into fewer and writes a Hugging Face checkpoint or a .moec "
                   "file, one layer at a time.",
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
    if (method < 0)
        cli_usage_error("missing --method {submoe,average}");
    mo.method = (moec_merge_method)method;
    if (fit_down && no_fit_down)
        cli_usage_error("give --fit-down or --no-fit-down, not both");
    if (cli_given(&tool, "features"))
        mo.features = (moec_merge_features)feature;
    if (cli_given(&tool, "router"))
        mo.router = (moec_merge_router)router;
    if (fit_down || no_fit_down)
        mo.fit_down = fit_down;
    /* average is the plain baseline, and statistics alone allow only the
     * methods' own folds: the fitted merge is submoe's default with text */
    if (mo.method == MOEC_MERGE_AVERAGE || stats_path) {
        if (!cli_given(&tool, "features"))
            mo.features = MOEC_MERGE_FEAT_METHOD;
        if (!cli_given(&tool, "router"))
            mo.router = MOEC_MERGE_ROUTER_AVERAGE;
        if (!fit_down && !no_fit_down)
            mo.fit_down = false;
    }
    mo.fit_all = fit_all;
    mo.clustering = (moec_merge_clustering)cluster;
    mo.sequential = !parallel;
    mo.weighting = (moec_merge_weighting)weighting;
    mo.kmeans.init = (moec_kmeans_init)init;
    if (cli_given(&tool, "seed"))
        mo.kmeans.seed = (uint64_t)seed;
    if (svd_double)
        mo.precision = MOEC_SVD_DOUBLE;
    if (have_keep == have_ratio)
        cli_usage_error(have_keep ? "give --keep or --ratio, not both" : "missing --keep N or --ratio R");
    if (!stats_path == !n_texts)
        cli_usage_error(stats_path ? "give --stats or --text, not both" : "missing --text FILE or --stats STATS");
    if (have_rank && have_energy)
        cli_usage_error("give --rank or --energy, not both");
    if (mo.method == MOEC_MERGE_AVERAGE &&
        (have_rank || have_energy || mo.precision == MOEC_SVD_DOUBLE || mo.whiten || mo.factored))
        cli_usage_error("--rank, --energy, --whiten, --factored and --svd-double apply to --method submoe only");
    if (have_rank)
        mo.energy = 0.0;
    if (!out)
        cli_usage_error("missing -o OUT");
    const size_t out_len = strlen(out);
    const bool to_moec = out_len > 5 && strcmp(out + out_len - 5, ".moec") == 0;
    if (mo.factored && !to_moec)
        cli_usage_error("--factored needs -o FILE.moec (a checkpoint directory has no factored form)");
    if (quant_bits && !to_moec)
        cli_usage_error("--quant-bits needs -o FILE.moec");
    if (cli_given(&tool, "quant-group") && !quant_bits)
        cli_usage_error("--quant-group applies to --quant-bits");
    if (mo.fit_all && !mo.fit_down)
        cli_usage_error("--fit-all needs --fit-down");
    if (stats_path && (mo.whiten || mo.fit_down || mo.router == MOEC_MERGE_ROUTER_FIT ||
                       mo.features == MOEC_MERGE_FEAT_NEURONS || mo.clustering == MOEC_MERGE_CLUSTER_JOINT2))
        cli_usage_error("--whiten, --fit-down, --router fit, --features neurons and --cluster joint2 need --text");
    cli_check_output(out, force);

    const double t0 = cli_seconds();
    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    cli_check_not_input(m, out);
    moec_stats *stats = NULL;
    int32_t *ids = NULL;
    int *wlen = NULL;
    moec_merge_windows win = {0};
    if (stats_path) {
        if (moec_stats_load(&stats, stats_path, &err))
            cli_die_err(&err);
    } else {
        if (ctx > m->cfg.max_positions)
            cli_die("--ctx %d exceeds the model's %d positions", ctx, m->cfg.max_positions);
        moec_tokenizer *tok = cli_model_tokenizer(m);
        if (moec_quant_windows_from_text(tok, texts.v, n_texts, ctx, max_tokens, &ids, &wlen, &win.n_windows, &err))
            cli_die_err(&err);
        moec_tokenizer_free(tok);
        win.ids = ids;
        win.window_len = wlen;
        mo.windows = &win;
        mo.sim_tokens = sim_tokens;
    }
    moec_merge_quant_report qr = {0};
    if (quant_bits) {
        qo.bits = quant_bits;
        qo.group = quant_group;
        mo.quant = &qo;
        mo.quant_rep = &qr;
    }

    /* written layer by layer while it is merged: the writing is in seconds_merge */
    moec_model_sink *sink = NULL;
    if (to_moec) {
        moec_moec_save_opts so = MOEC_MOEC_SAVE_OPTS_DEFAULT;
        if (moec_model_sink_moec_new(&sink, m, out, &so, &err))
            cli_die_err(&err);
        mo.sink = sink;
    } else {
        mo.out_dir = out;
        mo.overwrite = force;
    }
    mo.progress = cli_merge_progress;
    moec_model *merged;
    moec_merge_report rep;
    if (moec_merge_model(m, stats, &mo, &merged, &rep, &err)) {
        moec_model_sink_free(sink); /* removes the unfinished container */
        cli_die_err(&err);
    }
    cli_progress_done();
    if (sink) {
        /* the container carries the merge report */
        cJSON *j = report_json(&rep, &mo, model_path, out, rep.seconds_calib, 0.0);
        char *text = j ? cJSON_PrintUnformatted(j) : NULL;
        if (!text)
            cli_die("out of memory");
        if (moec_model_sink_finish(sink, merged, text, &err)) {
            moec_model_sink_free(sink);
            cli_die_err(&err);
        }
        moec_model_sink_free(sink);
        free(text);
        cJSON_Delete(j);
    }
    const double total_s = cli_seconds() - t0;

    if (json) {
        cJSON *j = report_json(&rep, &mo, model_path, out, rep.seconds_calib, total_s);
        if (!j)
            cli_die("out of memory");
        if (quant_bits) {
            cJSON_AddNumberToObject(j, "quant_bits", quant_bits);
            cJSON_AddNumberToObject(j, "quant_tensors", (double)qr.tensors);
        }
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
    free(ids);
    free(wlen);
    cli_tool_free(&tool);
    return 0;
}
