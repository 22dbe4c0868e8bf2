/* moec-quant: group-wise quantization of an MoE checkpoint's experts (and
 * optionally attention, embeddings and head) with RTN or GPTQ, MC-MoE mixed
 * precision and EAQuant, written as a .moec container. Named presets
 * (quant/presets.h) give the measured-best recipes; options override them. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calib/stats.h"
#include "cli.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "core/ggml_blocks.h"
#include "quant/gguf_presets.h"
#include "quant/presets.h"
#include "model/model_sink.h"
#include "quant/recipe.h"
#include "tokenizer/tokenizer.h"

/* --bit-choices 1,2,3,4: strictly increasing widths in 1..8 */
static bool parse_choices(const char *s, void *dest, char *why, size_t why_len)
{
    moec_quant_recipe *r = dest;
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 8 || n == MOEC_QUANT_MAX_CHOICES || (n > 0 && v <= r->choices[n - 1]))
            break;
        r->choices[n++] = (int)v;
        if (*end == ',' && end[1])
            end++;
        else if (*end)
            break;
        p = end;
    }
    if (n == 0 || *p) {
        snprintf(why, why_len, "expected increasing widths in 1..8 like 1,2,3,4, got '%s'", s);
        return false;
    }
    r->n_choices = n;
    return true;
}

/* --grid T / --embed-grid T: a llama.cpp block type */
static bool parse_grid(const char *s, void *dest, char *why, size_t why_len)
{
    moec_gblock b = moec_gblock_from_name(s);
    if (!b) {
        snprintf(why, why_len, "'%s' is not one of q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k", s);
        return false;
    }
    *(moec_gblock *)dest = b;
    return true;
}

/* Field f of r as the option that sets it: "--bits 4", "--attn", "--no-align". */
static const char *option_text(const moec_quant_recipe *r, moec_quant_field f, char *buf, size_t len)
{
    char v[64];
    moec_quant_field_value(r, f, v, sizeof v);
    const char *opt = moec_quant_field_option(f);
    if (f == MOEC_QF_ALIGN || f == MOEC_QF_BALANCE || f == MOEC_QF_ATTN)
        snprintf(buf, len, "--%s%s", strcmp(v, "on") ? "no-" : "", opt);
    else if (!strcmp(v, "on"))
        snprintf(buf, len, "--%s", opt);
    else if (!strcmp(v, "off"))
        snprintf(buf, len, "--%s off", opt);
    else
        snprintf(buf, len, "--%s %s", opt, v);
    return buf;
}

/* "--method gptq --bits 4 ...": the options a preset stands for */
static void preset_options(const moec_quant_preset *p, char *buf, size_t len)
{
    size_t n = 0;
    char o[96];
    buf[0] = '\0';
    for (int f = 0; f < MOEC_QF_COUNT && n < len; f++)
        if (p->fields & MOEC_QF(f))
            n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? " " : "",
                                  option_text(&p->recipe, (moec_quant_field)f, o, sizeof o));
}

static void list_presets(bool json)
{
    char opts[512];
    if (json) {
        cJSON *a = cJSON_CreateArray();
        for (int i = 0; i < moec_quant_preset_count(); i++) {
            const moec_quant_preset *p = moec_quant_preset_at(i);
            const moec_quant_preset_result *m = moec_quant_preset_result_find(p->name);
            cJSON *o = cJSON_CreateObject();
            preset_options(p, opts, sizeof opts);
            cJSON_AddStringToObject(o, "name", p->name);
            cJSON_AddStringToObject(o, "summary", p->summary);
            cJSON_AddStringToObject(o, "options", opts);
            cJSON_AddBoolToObject(o, "needs_text", p->needs_text);
            cJSON_AddStringToObject(o, "reference", p->reference);
            if (m) {
                cJSON *mo = cJSON_AddObjectToObject(o, "measured");
                cJSON_AddNumberToObject(mo, "kld", m->kld);
                cJSON_AddNumberToObject(mo, "top1", m->top1);
                cJSON_AddNumberToObject(mo, "ppl_ratio", m->ppl_ratio);
                cJSON_AddNumberToObject(mo, "bpw_file", m->bpw_file);
                cJSON_AddNumberToObject(mo, "reference_kld", m->ref_kld);
                cJSON_AddStringToObject(mo, "scoring", m->scoring);
            }
            cJSON_AddItemToArray(a, o);
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "presets", a);
        cJSON_AddStringToObject(o, "measured_by", moec_quant_preset_results_command());
        cli_print_json(o);
        cJSON_Delete(o);
        return;
    }
    printf("Presets (--preset NAME), measured on models/mixtral-tiny:\n\n");
    char line[1024];
    for (int i = 0; i < moec_quant_preset_count(); i++) {
        const moec_quant_preset *p = moec_quant_preset_at(i);
        const moec_quant_preset_result *m = moec_quant_preset_result_find(p->name);
        preset_options(p, opts, sizeof opts);
        if (m)
            printf("%-9s %.2f bits/weight, KL %.4f, top-1 %.1f%%%s\n", p->name, m->bpw_file, m->kld, 100.0 * m->top1,
                   p->needs_text ? "; needs --text" : "");
        else
            printf("%-9s (not measured in this build)%s\n", p->name, p->needs_text ? "; needs --text" : "");
        snprintf(line, sizeof line, "%s\n= %s\nreproduces %s", p->summary, opts, p->reference);
        if (m) {
            size_t k = strlen(line);
            snprintf(line + k, sizeof line - k, " (KL %.4f there)", m->ref_kld);
        }
        printf("%10s", "");
        cli_wrap(stdout, line, 10, 10);
    }
    printf("\n");
    snprintf(line, sizeof line,
             "KL: mean KL(original || quantized) in nats, scored as the reference row's table scores it (moec-eval "
             "--score-from half on data/corpus/*.val.txt); bits/weight: 8 x file bytes / parameters. Measured by "
             "%s. Options given beside --preset override its values.",
             moec_quant_preset_results_command());
    cli_wrap(stdout, line, 0, 0);
}

static void summary(const moec_quant_report *rep, const moec_quant_recipe *r, const char *out, double file_bpw,
                    uint64_t file_bytes)
{
    if (r->gplan)
        printf("%s on llama.cpp types (%s)%s\n", r->method == MOEC_QMETHOD_GPTQ ? "GPTQ" : "RTN", r->gplan->name,
               r->smooth ? ", EAQuant" : "");
    else
        printf("%s %s, group %d%s\n", r->method == MOEC_QMETHOD_GPTQ ? "GPTQ" : "RTN",
               r->avg_bits > 0 ? (r->alloc == MOEC_QALLOC_MCMOE ? "MC-MoE mixed precision" : "uniform split")
                               : "uniform",
               r->group, r->smooth ? ", EAQuant" : "");
    for (int l = 0; l < rep->n_layers; l++) {
        const moec_quant_layer_report *L = &rep->layers[l];
        if (L->n_experts == 0)
            continue;
        printf("  layer %-3d bits", l);
        for (int e = 0; e < L->n_experts; e++)
            printf(" %d", L->bits[e]);
        if (L->smooth_alpha >= 0)
            printf("  alpha %.2f", L->smooth_alpha);
        if (isfinite(L->block_err))
            printf("  block err %.4f  routing %.1f%%", L->block_err, 100.0 * L->router_agree);
        printf("\n");
    }
    printf("  average expert bits %.3f; quantized tensors %.3f bits/weight (%.3f code bits)\n", rep->avg_expert_bits,
           rep->quant_bpw, rep->quant_code_bits);
    printf("  file %llu bytes, %.3f bits/weight over %lld parameters\n", (unsigned long long)file_bytes, file_bpw,
           (long long)rep->model_params);
    if (rep->verify_tokens)
        printf("  calibration check (%lld tokens): KL %.5f, top-1 %.2f%%\n", (long long)rep->verify_tokens,
               rep->verify_kld, 100.0 * rep->verify_top1);
    printf("  %d passes, %.1f s\n", rep->passes, rep->seconds);
    for (int i = 0; i < rep->n_notes; i++)
        printf("  note: %s\n", rep->notes[i]);
    printf("  -> %s\n", out);
}

/* Why an implied value is what it is, for the report. */
static const char *implied_why(moec_quant_field f)
{
    switch (f) {
    case MOEC_QF_BITS:
        return "the widest --bit-choices width: --avg-bits decides the routed experts' widths, --bits is then the "
               "width of the shared expert, dense MLPs and (with --attn) attention";
    case MOEC_QF_ATTN: return "--attn-bits quantizes attention";
    case MOEC_QF_ALIGN: return "--eaquant chooses its smoothing by search unless --no-align";
    default: return "";
    }
}

/* The recipe's provenance, for the text summary. */
static void recipe_sources_text(const moec_quant_preset *p, const moec_quant_recipe *r,
                                const moec_quant_source src[MOEC_QF_COUNT])
{
    char o[96];
    if (p)
        printf("  recipe: preset %s (%s)\n", p->name, p->reference);
    bool any = false;
    for (int f = 0; f < MOEC_QF_COUNT; f++) {
        if (src[f] != MOEC_QSRC_OPTION)
            continue;
        printf("%s%s", any ? " " : p ? "  options over the preset: " : "  options: ",
               option_text(r, (moec_quant_field)f, o, sizeof o));
        any = true;
    }
    if (any)
        printf("\n");
    for (int f = 0; f < MOEC_QF_COUNT; f++)
        if (src[f] == MOEC_QSRC_IMPLIED && f != MOEC_QF_ALIGN)
            printf("  implied: %s (%s)\n", option_text(r, (moec_quant_field)f, o, sizeof o),
                   implied_why((moec_quant_field)f));
}

static void recipe_sources_json(cJSON *j, const moec_quant_preset *p, const moec_quant_recipe *r,
                                const moec_quant_source src[MOEC_QF_COUNT])
{
    char v[64];
    if (p)
        cJSON_AddStringToObject(j, "preset", p->name);
    else
        cJSON_AddNullToObject(j, "preset");
    cJSON *o = cJSON_AddObjectToObject(j, "recipe_sources");
    for (int f = 0; f < MOEC_QF_COUNT; f++) {
        cJSON *e = cJSON_AddObjectToObject(o, moec_quant_field_option((moec_quant_field)f));
        cJSON_AddStringToObject(e, "value", moec_quant_field_value(r, (moec_quant_field)f, v, sizeof v));
        cJSON_AddStringToObject(e, "from", moec_quant_source_name(src[f]));
        if (src[f] == MOEC_QSRC_IMPLIED)
            cJSON_AddStringToObject(e, "why", implied_why((moec_quant_field)f));
    }
}

int main(int argc, char **argv)
{
    static const char *const methods[] = {"rtn", "gptq", NULL};
    static const char *const allocs[] = {"uniform", "mcmoe", NULL};
    static const char *const objectives[] = {"output", "paper", NULL};
    const char *model_path = NULL, *preset_name = NULL, *stats_path = NULL, *out = NULL;
    cli_list texts = {0};
    moec_quant_recipe g = MOEC_QUANT_RECIPE_DEFAULT; /* what the options say */
    g.threads = 2;
    int method = 0, alloc = 1, objective = 0, ctx = 256;
    int64_t tokens = 32768;
    double smooth_alpha = 0.5;
    bool list = false, clip = false, eaquant = false, no_align = false, no_balance = false;
    bool json = false, force = false;
    moec_gblock grid = MOEC_GB_NONE, embed_grid = MOEC_GB_NONE;
    cli_opt opts[] = {
        CLI_SECTION("Recipe"),
        {"preset", 0, CLI_STRING, "NAME", &preset_name,
         .help = "a measured-best recipe by name (--list-presets shows them with their KL and size); options "
                 "given beside it override its values. Or llama.cpp's per-tensor types of Q4_K_M, Q3_K_M, Q2_K, "
                 "Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1 (which tensors take Q6_K, Q5_K, ..., as llama-quantize chooses "
                 "them for MoE models) for every weight matrix, embeddings and head included, quantized by "
                 "--method on those grids; moec-export --gguf then copies the blocks (--bits is not needed)"},
        {"list-presets", 0, CLI_FLAG, NULL, &list, .help = "print the presets and exit (with --json, as JSON)"},
        {"bits", 0, CLI_INT, "B", &g.bits, 1, 8,
         .help = "code width of the routed experts (uniform), the shared expert and dense MLPs, 1..8; with "
                 "--avg-bits it defaults to the widest --bit-choices width"},
        {"group", 0, CLI_INT, "G", &g.group, 0, 1 << 30,
         .help = "weights per group along the input dimension (default 128; 0 = whole row)"},
        {"method", 0, CLI_CHOICE, "M", &method, .choices = methods,
         .help = "rtn (default) or gptq (layer by layer, damping 1% of the mean Hessian diagonal, each expert's "
                 "Hessian from the tokens routed to it)"},
        {"sym", 0, CLI_FLAG, NULL, &g.symmetric, .help = "symmetric groups (no zero points)"},
        {"clip", 0, CLI_FLAG, NULL, &clip,
         .help = "per-group clipping search (shrink the range while the group's squared error falls; grid 20, "
                 "down to 0.5)"},
        {"act-order", 0, CLI_FLAG, NULL, &g.act_order, .help = "GPTQ: process columns by decreasing Hessian diagonal"},
        {"damp", 0, CLI_DOUBLE, "X", &g.percdamp, 1e-9, 100.0, .help = "GPTQ damping fraction (default 0.01)"},
        {"attn", 0, CLI_FLAG, NULL, &g.attn, .help = "also quantize q/k/v/o projections"},
        {"no-attn", 0, CLI_UNSET, NULL, &g.attn, .help = "keep them in high precision (the default; overrides a preset)"},
        {"attn-bits", 0, CLI_INT, "B", &g.attn_bits, 1, 8, .help = "their width (default: --bits; implies --attn)"},
        {"embed-bits", 0, CLI_INT, "B", &g.embed_bits, 0, 8,
         .help = "quantize embeddings and lm_head by RTN at B bits (groups of 64); 0 keeps them (the default)"},
        {"grid", 0, CLI_CUSTOM, "T", &grid, .parse = parse_grid,
         .help = "llama.cpp block type for the routed experts, shared expert and dense MLPs (q8_0, q4_0, q4_1, "
                 "q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k): each block's scales (and mins) are chosen as the "
                 "type stores them, then the method (GPTQ's error feedback, or RTN) quantizes on that grid; the "
                 ".moec keeps the blocks and moec-export --gguf copies them as they are. With --attn, the "
                 "attention projections take T too. Not with --avg-bits"},
        {"embed-grid", 0, CLI_CUSTOM, "T", &embed_grid, .parse = parse_grid,
         .help = "with --grid: embeddings and lm_head in type T by round-to-nearest"},
        CLI_SECTION("Calibration"),
        CLI_OPT_TEXT(&texts, "calibration text; needed by gptq, --eaquant and MC-MoE's measured losses"),
        {"stats", 0, CLI_STRING, "STATS", &stats_path,
         .help = "statistics from moec-calib instead of text (rtn only): MC-MoE then uses the relative weight "
                 "error as its loss"},
        {"tokens", 0, CLI_INT64, "N", &tokens, 0, (double)(1LL << 40),
         .help = "calibration tokens in all, shared evenly by the files, as whole windows spread through each "
                 "file (default 32768)"},
        {"ctx", 0, CLI_INT, "N", &ctx, 2, 1 << 20, .help = "calibration window length (default 256)"},
        CLI_SECTION("Mixed precision"),
        {"avg-bits", 0, CLI_DOUBLE, "A", &g.avg_bits, 1.0, 8.0,
         .help = "average code bits per routed expert in every layer"},
        {"bit-choices", 0, CLI_CUSTOM, "L", &g, .parse = parse_choices,
         .help = "candidate widths, e.g. 1,2,3,4 (default)"},
        {"alloc", 0, CLI_CHOICE, "A", &alloc, .choices = allocs,
         .help = "mcmoe (default): MC-MoE's integer program solved with GLPK per layer over each expert's "
                 "measured loss at each width; uniform: importance-blind split (every expert floor(A), the "
                 "first experts of each layer one width up)"},
        {"mc-objective", 0, CLI_CHOICE, "O", &objective, .choices = objectives,
         .help = "mcmoe: output (default): minimise the layer's output error, the sum over experts of "
                 "Σ gate²·‖output change‖² on their routed tokens (routing frequency and weight enter through "
                 "that sum); paper: the reference code's share^1 · gate-share^1.5 · ‖output change‖"},
        {"diversity", 0, CLI_FLAG, NULL, &g.mc.diversity,
         .help = "mcmoe: add the paper's constraints that at least one expert per layer takes each of the two "
                 "widest choices"},
        CLI_SECTION("EAQuant and activations"),
        {"eaquant", 0, CLI_FLAG, NULL, &eaquant,
         .help = "EAQuant: smoothing aggregation folded into the norm (one vector per layer), alpha and clipping "
                 "chosen per layer by block output error + lambda * router KL (the calibration balance is on "
                 "for gptq anyway)"},
        {"smooth-alpha", 0, CLI_DOUBLE, "A", &smooth_alpha, 0.0, 1.0,
         .help = "with --eaquant --no-align: fixed smoothing alpha (default 0.5)"},
        {"no-align", 0, CLI_FLAG, NULL, &no_align, .help = "with --eaquant: no grid search (fixed alpha)"},
        {"balance-min", 0, CLI_INT, "M", &g.balance_min, 1, 1 << 30,
         .help = "gptq: EAQuant's expert-level calibration balance, on by default: experts routed fewer than M "
                 "calibration tokens (default: the hidden size, enough for a full-rank Hessian) get the tokens "
                 "where they ranked just outside the top-k, most probable first; experts still below 32 rows "
                 "use RTN"},
        {"no-balance", 0, CLI_FLAG, NULL, &no_balance, .help = "gptq: no calibration balance"},
        {"act-bits", 0, CLI_INT, "A", &g.act_bits, 2, 16,
         .help = "activation quantization (per token, symmetric) used while calibrating and recorded in the "
                 "report; evaluate with the same setting"},
        CLI_SECTION("Output"),
        {"verify-tokens", 0, CLI_INT64, "N", &g.verify_tokens, 0, (double)(1LL << 40),
         .help = "calibration tokens compared with the original at the end (default 8192; 0 skips)"},
        CLI_OPT_OUTPUT(&out, "OUT.moec", "output container (report stored inside as report.json; written aside "
                                         "and renamed when complete)"),
        CLI_OPT_FORCE(&force),
        CLI_OPT_THREADS(&g.threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL (--preset NAME | --bits B) [options] -o OUT.moec\n--list-presets [--json]",
        .summary = "Group-wise quantization of an MoE checkpoint (RTN, GPTQ), per-expert widths by MC-MoE's "
                   "integer program, EAQuant; writes the .moec container (docs/format.md) the executor runs. "
                   "Start from a preset: `moec-quant MODEL --preset 4bit --text FILE... -o OUT.moec`.",
        .operand = "MODEL",
        .operand_help = "Hugging Face checkpoint directory (or .moec with full-precision experts)",
        .operand_optional = true,
        .operand_dest = &model_path,
        .opts = opts,
        .epilog = "Norms, routers and the shared-expert gate stay in high precision (F32 when EAQuant changed "
                  "them). Bits per weight are reported over the quantized tensors and over the whole file (file "
                  "bytes x 8 / parameters, llama.cpp's convention). The report (summary, --json, and report.json "
                  "in the container) says which preset was used and where each recipe value came from: the "
                  "preset, an option, the default, or implied by other options.",
    };
    cli_parse(&tool, argc, argv);
    if (list) {
        list_presets(json);
        cli_tool_free(&tool);
        return 0;
    }
    if (!model_path)
        cli_usage_error(texts.n ? "missing MODEL (a list such as --text FILE... takes every argument up to the "
                                  "next option: give MODEL before it)"
                                : "missing MODEL");

    /* the fields the options set */
    static const struct {
        const char *opt;
        moec_quant_field f;
    } opt_field[] = {
        {"method", MOEC_QF_METHOD},       {"bits", MOEC_QF_BITS},
        {"group", MOEC_QF_GROUP},         {"sym", MOEC_QF_SYMMETRIC},
        {"clip", MOEC_QF_CLIP},           {"act-order", MOEC_QF_ACT_ORDER},
        {"damp", MOEC_QF_DAMP},           {"attn", MOEC_QF_ATTN},
        {"no-attn", MOEC_QF_ATTN},
        {"attn-bits", MOEC_QF_ATTN_BITS}, {"embed-bits", MOEC_QF_EMBED_BITS},
        {"avg-bits", MOEC_QF_AVG_BITS},   {"bit-choices", MOEC_QF_BIT_CHOICES},
        {"alloc", MOEC_QF_ALLOC},         {"mc-objective", MOEC_QF_MC_OBJECTIVE},
        {"diversity", MOEC_QF_DIVERSITY}, {"eaquant", MOEC_QF_SMOOTH},
        {"no-align", MOEC_QF_ALIGN},      {"smooth-alpha", MOEC_QF_SMOOTH_ALPHA},
        {"no-balance", MOEC_QF_BALANCE},  {"balance-min", MOEC_QF_BALANCE_MIN},
        {"act-bits", MOEC_QF_ACT_BITS},   {"verify-tokens", MOEC_QF_VERIFY},
    };
    uint32_t given = 0;
    for (size_t i = 0; i < sizeof opt_field / sizeof opt_field[0]; i++)
        if (cli_given(&tool, opt_field[i].opt))
            given |= MOEC_QF(opt_field[i].f);
    g.method = method ? MOEC_QMETHOD_GPTQ : MOEC_QMETHOD_RTN;
    g.alloc = alloc ? MOEC_QALLOC_MCMOE : MOEC_QALLOC_UNIFORM;
    g.mc.objective = objective ? MOEC_MC_PAPER : MOEC_MC_OUTPUT;
    g.clip_grid = clip ? 20 : 0;
    g.smooth = eaquant;
    g.align = !no_align;
    g.balance = !no_balance;
    g.smooth_alpha = (float)smooth_alpha;

    const moec_quant_preset *preset = NULL;
    const bool gguf_preset = preset_name && !moec_quant_preset_find(preset_name) && moec_gplan_is_preset(preset_name);
    if (preset_name && !gguf_preset && !(preset = moec_quant_preset_find(preset_name))) {
        char names[256] = "";
        for (int i = 0; i < moec_quant_preset_count(); i++) {
            size_t k = strlen(names);
            snprintf(names + k, sizeof names - k, "%s%s", i ? ", " : "", moec_quant_preset_at(i)->name);
        }
        cli_usage_error("--preset: unknown preset '%s' (%s; --list-presets describes them; llama.cpp's: Q4_K_M, "
                        "Q3_K_M, Q2_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)", preset_name, names);
    }
    if (preset && preset->kind != MOEC_QPRESET_RECIPE)
        cli_die("--preset %s: this kind of preset is not supported by moec-quant", preset->name);
    moec_quant_recipe r;
    moec_quant_source src[MOEC_QF_COUNT];
    moec_quant_recipe_resolve(preset, &g, given, &r, src);

    const int n_texts = texts.n;
    /* who asked for the thing that needs calibration text, for the message */
    char who[96];
    if (src[MOEC_QF_METHOD] == MOEC_QSRC_PRESET)
        snprintf(who, sizeof who, "--preset %s (GPTQ)", preset->name);
    else
        snprintf(who, sizeof who, "--method gptq");
    if (gguf_preset && (grid || embed_grid))
        cli_usage_error("--preset %s gives every tensor its type; it does not combine with --grid/--embed-grid",
                        preset_name);
    if (embed_grid && !grid)
        cli_usage_error("--embed-grid goes with --grid");
    if ((grid || gguf_preset) && r.avg_bits > 0)
        cli_usage_error("--avg-bits: a layer's experts share one type in llama.cpp's files, so per-expert widths do "
                        "not combine with --grid/--preset %s", gguf_preset ? preset_name : "");
    if (!preset && !gguf_preset && !grid && src[MOEC_QF_BITS] == MOEC_QSRC_DEFAULT)
        cli_usage_error("missing --bits B or --preset NAME (--list-presets shows the presets)");
    if (!out)
        cli_usage_error("missing -o OUT.moec");
    if (n_texts > 0 && stats_path)
        cli_usage_error("give --text FILE... or --stats STATS, not both");
    if (r.method == MOEC_QMETHOD_GPTQ && n_texts == 0)
        cli_usage_error("%s needs --text FILE... (Hessians of each layer's inputs)", who);
    if (r.smooth && n_texts == 0)
        cli_usage_error("--eaquant needs --text FILE...");
    if ((src[MOEC_QF_BIT_CHOICES] == MOEC_QSRC_OPTION || src[MOEC_QF_ALLOC] == MOEC_QSRC_OPTION) && r.avg_bits == 0)
        cli_usage_error("--bit-choices and --alloc go with --avg-bits");
    if ((src[MOEC_QF_DIVERSITY] == MOEC_QSRC_OPTION || src[MOEC_QF_MC_OBJECTIVE] == MOEC_QSRC_OPTION) &&
        !(r.avg_bits > 0 && r.alloc == MOEC_QALLOC_MCMOE))
        cli_usage_error("--diversity and --mc-objective go with --avg-bits and --alloc mcmoe");
    if ((src[MOEC_QF_ALIGN] == MOEC_QSRC_OPTION || src[MOEC_QF_SMOOTH_ALPHA] == MOEC_QSRC_OPTION) && !r.smooth)
        cli_usage_error("--no-align and --smooth-alpha go with --eaquant");
    if ((src[MOEC_QF_BALANCE_MIN] == MOEC_QSRC_OPTION || src[MOEC_QF_BALANCE] == MOEC_QSRC_OPTION) &&
        r.method != MOEC_QMETHOD_GPTQ)
        cli_usage_error("--balance-min and --no-balance go with --method gptq");
    if (src[MOEC_QF_BALANCE_MIN] == MOEC_QSRC_OPTION && !r.balance)
        cli_usage_error("--balance-min and --no-balance exclude each other");
    if (src[MOEC_QF_SMOOTH_ALPHA] == MOEC_QSRC_OPTION && r.align)
        cli_usage_error("--smooth-alpha is the fixed alpha of --no-align (the search chooses it otherwise)");
    if (r.avg_bits > 0 && r.alloc == MOEC_QALLOC_MCMOE && n_texts == 0 && !stats_path)
        cli_usage_error("--avg-bits with --alloc mcmoe (the default) needs --text FILE... or --stats STATS "
                        "(importance and losses)");
    cli_check_output(out, force);

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    cli_check_not_input(m, out);
    if (ctx > m->cfg.max_positions)
        cli_die("--ctx %d exceeds the model's %d positions", ctx, m->cfg.max_positions);
    moec_quant_calib cal = {0};
    int32_t *ids = NULL;
    int *wlen = NULL;
    moec_stats *stats = NULL;
    moec_tokenizer *tok = NULL;
    if (n_texts > 0) {
        tok = cli_model_tokenizer(m);
        if (moec_quant_windows_from_text(tok, texts.v, n_texts, ctx, tokens, &ids, &wlen, &cal.n_windows, &err))
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

    moec_gplan plan;
    if (gguf_preset) {
        if (moec_gplan_preset(&plan, &m->cfg, preset_name, &err))
            cli_die_err(&err);
        r.gplan = &plan;
        r.attn = true;
    } else if (grid) {
        moec_gplan_uniform(&plan, &m->cfg, grid, r.attn ? grid : MOEC_GB_NONE, embed_grid, embed_grid);
        r.gplan = &plan;
    }

    /* written layer by layer as the model is quantized; the report comes last */
    moec_model_sink *sink = NULL;
    moec_moec_save_opts so = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    if (moec_model_sink_moec_new(&sink, m, out, &so, &err))
        cli_die_err(&err);
    moec_quant_report rep;
    moec_model *q = NULL;
    if (moec_quant_model_to(m, &cal, &r, sink, &q, &rep, cli_quant_progress, NULL, &err)) {
        moec_model_sink_free(sink); /* removes the unfinished container */
        cli_die_err(&err);
    }
    cJSON *j = moec_quant_report_json(&rep, &r);
    if (!j)
        cli_die("out of memory");
    cJSON_AddStringToObject(j, "model", model_path);
    recipe_sources_json(j, preset, &r, src);
    if (r.gplan) { /* llama.cpp's per-tensor types: the plan's name (a preset, or "grid") */
        cJSON_DeleteItemFromObjectCaseSensitive(j, "preset");
        cJSON_AddStringToObject(j, "preset", r.gplan->name);
    }
    cli_json_add_version(j);
    /* the copy stored in the container leaves out the run time, so that the
     * same command writes the same bytes */
    cJSON *seconds = cJSON_DetachItemFromObjectCaseSensitive(j, "seconds");
    char *report_text = cJSON_PrintUnformatted(j);
    if (seconds)
        cJSON_AddItemToObject(j, "seconds", seconds);
    if (!report_text)
        cli_die("out of memory");
    cli_progress("writing", out, 0, 0, NULL);
    if (moec_model_sink_finish(sink, q, report_text, &err)) {
        moec_model_sink_free(sink);
        cli_die_err(&err);
    }
    cli_progress_done();
    moec_model_sink_free(sink);
    free(report_text);
    struct stat sb;
    if (stat(out, &sb) != 0)
        cli_die("%s: written but cannot be read back", out);
    const uint64_t file_bytes = (uint64_t)sb.st_size;
    const double file_bpw = rep.model_params ? 8.0 * (double)file_bytes / (double)rep.model_params : NAN;
    if (json) {
        cJSON_AddStringToObject(j, "output", out);
        cJSON_AddNumberToObject(j, "file_bytes", (double)file_bytes);
        cJSON_AddNumberToObject(j, "bpw_file", file_bpw);
        cli_print_json(j);
    } else if (!cli_quiet) {
        summary(&rep, &r, out, file_bpw, file_bytes);
        recipe_sources_text(preset, &r, src);
    }
    cJSON_Delete(j);
    moec_quant_report_free(&rep);
    moec_model_close(q);
    moec_stats_free(stats);
    moec_tokenizer_free(tok);
    free(ids);
    free(wlen);
    moec_model_close(m);
    cli_tool_free(&tool);
    return 0;
}
