/* moec-eval: perplexity, distance from a base model, multiple-choice
 * accuracy; quality gates for CI pipelines (exit 3 when tripped). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/check.h"
#include "eval/report.h"
#include "exec/exec.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

/* --score-from: a position or "half" (ctx/2, resolved once --ctx is known: -1 here) */
static bool parse_score_from(const char *v, void *dest, char *why, size_t why_len)
{
    if (!strcmp(v, "half")) {
        *(long *)dest = -1;
        return true;
    }
    char *end;
    long n = strtol(v, &end, 10);
    if (end == v || *end || n < 0 || n > (1 << 20)) {
        snprintf(why, why_len, "'%s' is not a position (0..ctx-2) or 'half'", v);
        return false;
    }
    *(long *)dest = n;
    return true;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void print_row(const char *name, const cJSON *o, bool base)
{
    if (cJSON_GetObjectItem(o, "perplexity")) {
        printf("%-22s %10.4f %9.0f", name, num(o, "perplexity"), num(o, "tokens"));
        if (base)
            printf(" %10.4f %9.4f %9.5f %8.2f%%", num(o, "base_perplexity"), num(o, "ppl_ratio"), num(o, "kld_mean"),
                   100.0 * num(o, "top1_agreement"));
        printf("\n");
    }
    if (cJSON_GetObjectItem(o, "mc_acc"))
        printf("%-22s acc %.4f  acc_norm %.4f  (%.0f items)\n", name, num(o, "mc_acc"), num(o, "mc_acc_norm"),
               num(o, "mc_items"));
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *model_opt = NULL, *base_path = NULL, *mc = NULL;
    cli_list texts = {0};
    int ctx = 256, threads = 2, act_bits = 0;
    long score_from = 0;
    bool json = false;
    double max_pplr = NAN, max_kld = NAN;
    cli_opt opts[] = {
        {"model", 0, CLI_STRING, "MODEL", &model_opt, .help = "the model to evaluate, as the MODEL operand"},
        {"base", 0, CLI_STRING, "MODEL", &base_path,
         .help = "reference model: adds mean KL(base || model) in nats, top-1 agreement and the perplexity "
                 "ratio model/base"},
        CLI_OPT_TEXT(&texts, "text files scored for perplexity: each tokenized whole, no special tokens, cut "
                             "into complete windows of --ctx tokens (a shorter tail is dropped), each from an "
                             "empty cache; positions --score-from..ctx-2 predict the next token"),
        {"mc", 0, CLI_STRING, "FILE.jsonl", &mc,
         .help = "multiple choice (lm-eval style: context, choices, label): acc by summed log-likelihood of "
                 "the choice tokens, acc_norm by that sum / choice bytes"},
        {"ctx", 0, CLI_INT, "N", &ctx, 2, 1 << 20, .help = "window length (default 256)"},
        {"score-from", 0, CLI_CUSTOM, "N|half", &score_from, .parse = parse_score_from,
         .help = "first scored position of each window, 0..ctx-2 (default 0: every position but the last); "
                 "half = ctx/2, llama-perplexity's convention"},
        {"act-bits", 0, CLI_INT, "A", &act_bits, 2, 16,
         .help = "quantize each linear layer's input per token to A bits (symmetric, dynamic, simulated in "
                 "float) when evaluating the model (not the base): W·A· settings"},
        CLI_SECTION("Quality gates (exit 3 when one trips; need --base and --text)"),
        {"max-ppl-ratio", 0, CLI_DOUBLE, "X", &max_pplr, 0.0, 1e9,
         .help = "the perplexity ratio model/base must not exceed X"},
        {"max-kld", 0, CLI_DOUBLE, "X", &max_kld, 0.0, 1e9, .help = "the mean KL divergence must not exceed X nats"},
        CLI_OPT_THREADS(&threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL [--base MODEL] [--text FILE...] [--mc FILE.jsonl] [options]",
        .summary = "Perplexity on text, distance from a base model (mean KL, top-1 agreement, perplexity "
                   "ratio) and multiple-choice accuracy; quality gates for CI pipelines.",
        .operand = "MODEL",
        .operand_help = "model to evaluate (HF checkpoint directory or .moec file); --model MODEL says the same",
        .operand_optional = true,
        .operand_dest = &model_path,
        .opts = opts,
        .gate_exit = true,
    };
    cli_parse(&tool, argc, argv);
    if (model_path && model_opt)
        cli_usage_error("give the model once: MODEL or --model MODEL");
    if (!model_path)
        model_path = model_opt;
    if (!model_path)
        cli_usage_error(texts.n ? "missing MODEL (a list such as --text FILE... takes every argument up to the "
                                  "next option: give MODEL before it)"
                                : "missing MODEL");
    const int n_texts = texts.n;
    if (n_texts == 0 && !mc)
        cli_usage_error("nothing to evaluate: give --text FILE... and/or --mc FILE.jsonl");
    if ((!isnan(max_pplr) || !isnan(max_kld)) && (!base_path || n_texts == 0))
        cli_usage_error("--max-ppl-ratio and --max-kld need --base and --text");
    if (score_from < 0)
        score_from = ctx / 2;
    if (score_from > ctx - 2)
        cli_usage_error("--score-from: %ld is out of range [0, %d] for --ctx %d", score_from, ctx - 2, ctx);

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    moec_model *b = base_path ? cli_open_model(base_path) : NULL;
    if (moec_model_check_finite(m, &err) || (b && moec_model_check_finite(b, &err)))
        cli_die_err(&err); /* names the tensor, rather than NaN perplexities */
    if (b && b->cfg.vocab_size != m->cfg.vocab_size)
        cli_die("--base has a vocabulary of %d, --model of %d", b->cfg.vocab_size, m->cfg.vocab_size);
    if (ctx > m->cfg.max_positions || (b && ctx > b->cfg.max_positions))
        cli_die("--ctx %d exceeds the model's %d positions", ctx, m->cfg.max_positions);
    moec_tokenizer *tok = cli_model_tokenizer(m);
    /* multiple-choice items may be longer than a perplexity window: give the
     * cache the model's positions (capped), cutting contexts only beyond that */
    int positions = m->cfg.max_positions < 4096 ? m->cfg.max_positions : 4096;
    if (b && b->cfg.max_positions < positions)
        positions = b->cfg.max_positions;
    moec_exec_opts eo = {.threads = threads, .max_ctx = mc && positions > ctx ? positions : ctx,
                         .act_bits = act_bits};
    moec_exec *mx, *bx = NULL;
    moec_exec_opts base_eo = eo;
    base_eo.act_bits = 0; /* the reference stays in full precision */
    if (moec_exec_new(&mx, m, &eo, &err) || (b && moec_exec_new(&bx, b, &base_eo, &err)))
        cli_die_err(&err);
    moec_eval_spec spec = {texts.v, n_texts, mc, ctx, (int)score_from};
    cJSON *rep;
    if (moec_eval_report(mx, bx, tok, &spec, &rep, cli_eval_progress, NULL, &err))
        cli_die_err(&err);
    cli_progress_done();
    cJSON_AddStringToObject(rep, "model", model_path);
    if (base_path)
        cJSON_AddStringToObject(rep, "base", base_path);

    int status = 0;
    if (!isnan(max_pplr) && num(rep, "ppl_ratio") > max_pplr) {
        fprintf(stderr, "%s: gate tripped: perplexity ratio %.4f > %.4f\n", cli_prog, num(rep, "ppl_ratio"), max_pplr);
        status = CLI_EXIT_GATE;
    }
    if (!isnan(max_kld) && num(rep, "kld_mean") > max_kld) {
        fprintf(stderr, "%s: gate tripped: mean KL divergence %.5f > %.5f\n", cli_prog, num(rep, "kld_mean"), max_kld);
        status = CLI_EXIT_GATE;
    }
    cJSON_AddBoolToObject(rep, "gates_passed", status == 0);
    cli_json_add_version(rep);

    if (json) {
        cli_print_json(rep);
    } else {
        printf("%-22s %10s %9s", "file", "ppl", "tokens");
        if (b)
            printf(" %10s %9s %9s %9s", "base ppl", "ratio", "KLD", "top-1");
        printf("\n");
        const cJSON *f;
        cJSON_ArrayForEach(f, cJSON_GetObjectItem(rep, "files")) print_row(f->string, f, b != NULL);
        if (n_texts > 1) {
            cJSON *all = cJSON_Duplicate(rep, true);
            cJSON_DeleteItemFromObject(all, "mc_acc");
            print_row("all text", all, b != NULL);
            cJSON_Delete(all);
        }
    }
    cJSON_Delete(rep);
    moec_exec_free(mx);
    moec_exec_free(bx);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    moec_model_close(b);
    cli_tool_free(&tool);
    return status;
}
