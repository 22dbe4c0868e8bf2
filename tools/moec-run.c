/* moec-run: generate text from a prompt; prompt and decode speed on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "exec/exec.h"
#include "exec/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char **argv)
{
    const char *model_path = NULL, *prompt = NULL;
    int n_gen = 64, threads = 2, act_bits = 0;
    int64_t seed = 1;
    double temp = 0.8, top_p = 0.95;
    bool stop_eos = false, json = false;
    cli_opt opts[] = {
        {"prompt", 'p', CLI_STRING, "TEXT", &prompt, .help = "text to continue (required)"},
        {"gen", 'n', CLI_INT, "N", &n_gen, 0, 1 << 20, .help = "tokens to generate (default 64)"},
        {"temp", 0, CLI_DOUBLE, "T", &temp, 0.0, 100.0, .help = "sampling temperature, 0 = greedy (default 0.8)"},
        {"top-p", 0, CLI_DOUBLE, "P", &top_p, 1e-6, 1.0, .help = "nucleus sampling mass in (0, 1] (default 0.95)"},
        {"seed", 0, CLI_INT64, "S", &seed, 0, 0x7fffffffL, .help = "random seed (default 1)"},
        {"stop-eos", 0, CLI_FLAG, NULL, &stop_eos,
         .help = "stop at the end-of-sequence token (default: generate N tokens)"},
        {"act-bits", 0, CLI_INT, "A", &act_bits, 2, 16,
         .help = "quantize linear-layer inputs per token to A bits (simulated)"},
        CLI_OPT_THREADS(&threads),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL -p PROMPT [options]",
        .summary = "Generates text from a prompt. The text goes to stdout as it is made; prompt and decode "
                   "speed go to stderr (with --json, all of it is one JSON object on stdout).",
        .operand = "MODEL",
        .operand_help = "Hugging Face checkpoint directory or .moec file",
        .operand_dest = &model_path,
        .opts = opts,
    };
    cli_parse(&tool, argc, argv);
    if (!prompt)
        cli_usage_error("missing -p PROMPT");

    moec_err err = {0};
    moec_model *m = cli_open_model(model_path);
    moec_tokenizer *tok = cli_model_tokenizer(m);
    int32_t *ids;
    size_t n_ids;
    if (moec_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n_ids, &err))
        cli_die_err(&err);
    if (n_ids == 0)
        cli_die("the prompt encodes to no tokens");
    const int V = m->cfg.vocab_size;
    int ctx = (int)n_ids + n_gen;
    if (ctx > m->cfg.max_positions)
        cli_die("prompt (%zu tokens) + %d new tokens exceed the model's %d positions", n_ids, n_gen,
                m->cfg.max_positions);
    moec_exec *ex;
    moec_exec_opts eo = {.threads = threads, .max_ctx = ctx, .act_bits = act_bits};
    if (moec_exec_new(&ex, m, &eo, &err))
        cli_die_err(&err);
    float *logits = malloc((size_t)V * sizeof(float));
    if (!logits)
        cli_die("out of memory");
    moec_sampler smp;
    moec_sampler_init(&smp, (float)temp, (float)top_p, (uint64_t)seed);

    /* with --json the text is collected and printed once */
    char *text = NULL;
    size_t text_len = 0;
    FILE *mem = json ? open_memstream(&text, &text_len) : stdout;
    if (!mem)
        cli_die("out of memory");
    fwrite(prompt, 1, strlen(prompt), mem);
    fflush(mem);
    double t0 = cli_seconds();
    if (moec_exec_forward(ex, ids, (int)n_ids, logits, false, &err))
        cli_die_err(&err);
    double t1 = cli_seconds();
    int made = 0;
    char piece[256];
    while (made < n_gen) {
        int32_t next = moec_sampler_pick(&smp, logits, V);
        made++;
        if (stop_eos && next == m->cfg.eos_token_id)
            break;
        int nb = moec_tokenizer_token_bytes(tok, next, piece, sizeof piece);
        if (nb > 0 && !moec_tokenizer_is_special(tok, next))
            fwrite(piece, 1, (size_t)nb, mem);
        fflush(mem);
        if (made == n_gen)
            break;
        if (moec_exec_forward(ex, &next, 1, logits, false, &err))
            cli_die_err(&err);
    }
    double t2 = cli_seconds();
    const double pp_tps = (double)n_ids / (t1 - t0), tg_tps = made > 1 ? (double)(made - 1) / (t2 - t1) : 0.0;
    if (json) {
        if (fclose(mem))
            cli_die("out of memory");
        cJSON *o = cJSON_CreateObject();
        if (!o)
            cli_die("out of memory");
        cJSON_AddStringToObject(o, "model", model_path);
        cJSON_AddStringToObject(o, "text", text);
        cJSON_AddNumberToObject(o, "text_bytes", (double)text_len);
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)n_ids);
        cJSON_AddNumberToObject(o, "generated_tokens", made);
        cJSON_AddNumberToObject(o, "prompt_tokens_per_s", pp_tps);
        cJSON_AddNumberToObject(o, "decode_tokens_per_s", tg_tps);
        cJSON_AddNumberToObject(o, "threads", threads);
        cli_print_json(o);
        cJSON_Delete(o);
        free(text);
    } else {
        fputc('\n', stdout);
        fflush(stdout);
        if (!cli_quiet)
            fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s; decode: %d tokens, %.1f tokens/s (%d threads)\n",
                    n_ids, pp_tps, made, tg_tps, threads);
    }
    free(logits);
    free(ids);
    moec_exec_free(ex);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    return 0;
}
