/* moec-run: generate text from a prompt; prompt and decode speed on stderr. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "exec/exec.h"
#include "exec/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static const char usage[] =
    "usage: moec-run MODEL -p PROMPT [options]\n"
    "  MODEL           Hugging Face checkpoint directory or .moec file\n"
    "  -p, --prompt S  text to continue (required)\n"
    "  -n N            tokens to generate (default 64)\n"
    "  --temp T        sampling temperature, 0 = greedy (default 0.8)\n"
    "  --top-p P       nucleus sampling mass in (0, 1] (default 0.95)\n"
    "  --seed S        random seed (default 1)\n"
    "  --threads N     worker threads (default 2)\n"
    "  --act-bits A    quantize linear-layer inputs per token to A bits (simulated)\n"
    "  --stop-eos      stop at the end-of-sequence token (default: generate N tokens)\n"
    "  --help          show this help\n";

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    cli_init(argc, argv);
    enum { OPT_TEMP = 256, OPT_TOPP, OPT_SEED, OPT_THREADS, OPT_EOS, OPT_ACT };
    static const struct option opts[] = {{"prompt", required_argument, 0, 'p'},
                                         {"temp", required_argument, 0, OPT_TEMP},
                                         {"top-p", required_argument, 0, OPT_TOPP},
                                         {"seed", required_argument, 0, OPT_SEED},
                                         {"threads", required_argument, 0, OPT_THREADS},
                                         {"stop-eos", no_argument, 0, OPT_EOS},
                                         {"act-bits", required_argument, 0, OPT_ACT},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *prompt = NULL;
    long n_gen = 64, seed = 1, threads = 2, act_bits = 0;
    double temp = 0.8, top_p = 0.95;
    bool stop_eos = false;
    int c;
    while ((c = getopt_long(argc, argv, "p:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'n': n_gen = cli_parse_long("-n", optarg, 0, 1 << 20); break;
        case OPT_TEMP: temp = cli_parse_double("--temp", optarg, 0.0, 100.0); break;
        case OPT_TOPP: top_p = cli_parse_double("--top-p", optarg, 1e-6, 1.0); break;
        case OPT_SEED: seed = cli_parse_long("--seed", optarg, 0, 0x7fffffffL); break;
        case OPT_THREADS: threads = cli_parse_long("--threads", optarg, 1, 256); break;
        case OPT_EOS: stop_eos = true; break;
        case OPT_ACT: act_bits = cli_parse_long("--act-bits", optarg, 2, 16); break;
        case 'h': fputs(usage, stdout); return 0;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind + 1 != argc)
        cli_usage_error(optind == argc ? "missing MODEL" : "expected one MODEL");
    if (!prompt)
        cli_usage_error("missing -p PROMPT");

    moec_err err = {0};
    moec_model *m;
    if (moec_model_open(&m, argv[optind], &err))
        cli_die_err(&err);
    moec_tokenizer *tok = cli_model_tokenizer(m);
    int32_t *ids;
    size_t n_ids;
    if (moec_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n_ids, &err))
        cli_die_err(&err);
    if (n_ids == 0)
        cli_die("the prompt encodes to no tokens");
    const int V = m->cfg.vocab_size;
    int ctx = (int)n_ids + (int)n_gen;
    if (ctx > m->cfg.max_positions)
        cli_die("prompt (%zu tokens) + %ld new tokens exceed the model's %d positions", n_ids, n_gen,
                m->cfg.max_positions);
    moec_exec *ex;
    moec_exec_opts eo = {.threads = (int)threads, .max_ctx = ctx, .act_bits = (int)act_bits};
    if (moec_exec_new(&ex, m, &eo, &err))
        cli_die_err(&err);
    float *logits = malloc((size_t)V * sizeof(float));
    if (!logits)
        cli_die("out of memory");
    moec_sampler smp;
    moec_sampler_init(&smp, (float)temp, (float)top_p, (uint64_t)seed);

    fwrite(prompt, 1, strlen(prompt), stdout);
    fflush(stdout);
    double t0 = seconds();
    if (moec_exec_forward(ex, ids, (int)n_ids, logits, false, &err))
        cli_die_err(&err);
    double t1 = seconds();
    long made = 0;
    char piece[256];
    while (made < n_gen) {
        int32_t next = moec_sampler_pick(&smp, logits, V);
        made++;
        if (stop_eos && next == m->cfg.eos_token_id)
            break;
        int nb = moec_tokenizer_token_bytes(tok, next, piece, sizeof piece);
        if (nb > 0 && !moec_tokenizer_is_special(tok, next))
            fwrite(piece, 1, (size_t)nb, stdout);
        fflush(stdout);
        if (made == n_gen)
            break;
        if (moec_exec_forward(ex, &next, 1, logits, false, &err))
            cli_die_err(&err);
    }
    double t2 = seconds();
    fputc('\n', stdout);
    fflush(stdout);
    fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s; decode: %ld tokens, %.1f tokens/s (%ld threads)\n", n_ids,
            (double)n_ids / (t1 - t0), made, made > 1 ? (double)(made - 1) / (t2 - t1) : 0.0, threads);
    free(logits);
    free(ids);
    moec_exec_free(ex);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    return 0;
}
