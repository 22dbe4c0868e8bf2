/* moec-eval: perplexity, distance from a base model, multiple-choice
 * accuracy; quality gates for CI pipelines (exit 3 when tripped). */
#include <getopt.h>
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

static const char usage[] =
    "usage: moec-eval --model MODEL [--base MODEL] [--text FILE]... [--mc FILE.jsonl] [options]\n"
    "  --model MODEL       model to evaluate (HF checkpoint directory or .moec file)\n"
    "  --base MODEL        reference model: adds mean KL(base || model) in nats, top-1\n"
    "                      agreement and the perplexity ratio model/base\n"
    "  --text FILE         text scored for perplexity (repeatable): tokenized whole, no special\n"
    "                      tokens, cut into complete windows of --ctx tokens (a shorter tail is\n"
    "                      dropped), each from an empty cache; positions --score-from..ctx-2\n"
    "                      predict the next token\n"
    "  --mc FILE.jsonl     multiple choice (lm-eval style: context, choices, label): acc by summed\n"
    "                      log-likelihood of the choice tokens, acc_norm by that sum / choice bytes\n"
    "  --ctx N             window length (default 256)\n"
    "  --score-from N      first scored position of each window, 0..ctx-2 (default 0: every\n"
    "                      position but the last); 'half' = ctx/2, llama-perplexity's convention\n"
    "  --threads N         worker threads (default 2)\n"
    "  --json              print one JSON object\n"
    "  --max-ppl-ratio X   exit 3 if perplexity ratio model/base exceeds X (needs --base, --text)\n"
    "  --max-kld X         exit 3 if mean KL divergence exceeds X nats (needs --base, --text)\n"
    "  --act-bits A        quantize each linear layer's input per token to A bits (symmetric,\n"
    "                      dynamic, simulated in float) when evaluating --model: W·A· settings\n"
    "  --quiet             no progress on stderr\n"
    "  --help              show this help\n"
    "exit status: 0 ok, 1 failure, 2 usage error, 3 a quality gate tripped\n";

static void progress(void *ctx, const char *what, int64_t done, int64_t total)
{
    (void)ctx;
    cli_progress("%s: %lld/%lld", what, (long long)done, (long long)total);
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
    cli_init(argc, argv);
    enum {
        OPT_MODEL = 256, OPT_BASE, OPT_TEXT, OPT_MC, OPT_CTX, OPT_THREADS, OPT_JSON, OPT_PPLR, OPT_KLD, OPT_QUIET,
        OPT_ACT, OPT_FROM
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, OPT_MODEL},   {"base", required_argument, 0, OPT_BASE},
        {"text", required_argument, 0, OPT_TEXT},     {"mc", required_argument, 0, OPT_MC},
        {"ctx", required_argument, 0, OPT_CTX},       {"threads", required_argument, 0, OPT_THREADS},
        {"json", no_argument, 0, OPT_JSON},           {"max-ppl-ratio", required_argument, 0, OPT_PPLR},
        {"max-kld", required_argument, 0, OPT_KLD},   {"quiet", no_argument, 0, OPT_QUIET},
        {"act-bits", required_argument, 0, OPT_ACT},  {"score-from", required_argument, 0, OPT_FROM},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0}};
    const char *model_path = NULL, *base_path = NULL, *mc = NULL;
    const char **texts = calloc((size_t)argc, sizeof *texts);
    int n_texts = 0;
    long ctx = 256, threads = 2, act_bits = 0, score_from = 0;
    bool score_half = false; /* resolved once --ctx is known */
    bool json = false;
    double max_pplr = NAN, max_kld = NAN;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: model_path = optarg; break;
        case OPT_BASE: base_path = optarg; break;
        case OPT_TEXT: texts[n_texts++] = optarg; break;
        case OPT_MC: mc = optarg; break;
        case OPT_CTX: ctx = cli_parse_long("--ctx", optarg, 2, 1 << 20); break;
        case OPT_THREADS: threads = cli_parse_long("--threads", optarg, 1, 256); break;
        case OPT_JSON: json = true; break;
        case OPT_PPLR: max_pplr = cli_parse_double("--max-ppl-ratio", optarg, 0.0, 1e9); break;
        case OPT_KLD: max_kld = cli_parse_double("--max-kld", optarg, 0.0, 1e9); break;
        case OPT_QUIET: cli_quiet = true; break;
        case OPT_ACT: act_bits = cli_parse_long("--act-bits", optarg, 2, 16); break;
        case OPT_FROM:
            score_half = !strcmp(optarg, "half");
            score_from = score_half ? 0 : cli_parse_long("--score-from", optarg, 0, 1 << 20);
            break;
        case 'h': fputs(usage, stdout); free(texts); return 0;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind != argc)
        cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!model_path)
        cli_usage_error("missing --model");
    if (n_texts == 0 && !mc)
        cli_usage_error("nothing to evaluate: give --text and/or --mc");
    if ((!isnan(max_pplr) || !isnan(max_kld)) && (!base_path || n_texts == 0))
        cli_usage_error("--max-ppl-ratio and --max-kld need --base and --text");
    if (score_half)
        score_from = ctx / 2;
    if (score_from > ctx - 2)
        cli_usage_error("--score-from: %ld is out of range [0, %ld] for --ctx %ld", score_from, ctx - 2, ctx);

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    moec_model *b = base_path ? cli_open_model(base_path) : NULL;
    if (moec_model_check_finite(m, &err) || (b && moec_model_check_finite(b, &err)))
        cli_die_err(&err); /* names the tensor, rather than NaN perplexities */
    if (b && b->cfg.vocab_size != m->cfg.vocab_size)
        cli_die("--base has a vocabulary of %d, --model of %d", b->cfg.vocab_size, m->cfg.vocab_size);
    if (ctx > m->cfg.max_positions || (b && ctx > b->cfg.max_positions))
        cli_die("--ctx %ld exceeds the model's %d positions", ctx, m->cfg.max_positions);
    moec_tokenizer *tok = cli_model_tokenizer(m);
    /* multiple-choice items may be longer than a perplexity window: give the
     * cache the model's positions (capped), cutting contexts only beyond that */
    int positions = m->cfg.max_positions < 4096 ? m->cfg.max_positions : 4096;
    if (b && b->cfg.max_positions < positions)
        positions = b->cfg.max_positions;
    moec_exec_opts eo = {.threads = (int)threads, .max_ctx = mc && positions > ctx ? positions : (int)ctx,
                         .act_bits = (int)act_bits};
    moec_exec *mx, *bx = NULL;
    moec_exec_opts base_eo = eo;
    base_eo.act_bits = 0; /* the reference stays in full precision */
    if (moec_exec_new(&mx, m, &eo, &err) || (b && moec_exec_new(&bx, b, &base_eo, &err)))
        cli_die_err(&err);
    moec_eval_spec spec = {texts, n_texts, mc, (int)ctx, (int)score_from};
    cJSON *rep;
    if (moec_eval_report(mx, bx, tok, &spec, &rep, progress, NULL, &err))
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
    free(texts);
    return status;
}
