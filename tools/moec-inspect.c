/* moec-inspect: what a checkpoint is — architecture, sizes, parameters, dtypes. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "model/model.h"
#include "model/summary.h"

static const char usage[] =
    "usage: moec-inspect MODEL [--json]\n"
    "  MODEL    Hugging Face checkpoint directory (config.json + *.safetensors) or .moec file\n"
    "  --json   print one JSON object instead of a table\n"
    "  --help   show this help\n";

static void print_table(const cJSON *s)
{
#define NUM(k) cJSON_GetObjectItem(s, k)->valuedouble
    printf("architecture        %s\n", cJSON_GetObjectItem(s, "architecture")->valuestring);
    printf("layers              %.0f\n", NUM("layers"));
    printf("hidden size         %.0f (heads %.0f, kv heads %.0f, head dim %.0f)\n", NUM("hidden_size"), NUM("heads"),
           NUM("kv_heads"), NUM("head_dim"));
    printf("vocabulary          %.0f\n", NUM("vocab_size"));
    printf("experts per layer  ");
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(s, "experts_per_layer")) printf(" %.0f", e->valuedouble);
    printf("\n");
    printf("top-k               %.0f (%s)\n", NUM("top_k"),
           cJSON_IsTrue(cJSON_GetObjectItem(s, "norm_topk")) ? "renormalised" : "not renormalised");
    printf("expert FFN          %.0f\n", NUM("expert_ffn"));
    if (NUM("shared_expert_ffn") > 0)
        printf("shared expert FFN   %.0f\n", NUM("shared_expert_ffn"));
    if (NUM("dense_ffn") > 0)
        printf("dense FFN           %.0f\n", NUM("dense_ffn"));
    printf("parameters          %.0f total, %.0f active per token\n", NUM("params_total"),
           NUM("params_active_per_token"));
    printf("dtypes             ");
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(s, "dtypes")) printf(" %s: %.0f", e->string, e->valuedouble);
    printf("\n");
    printf("weight bytes        %.0f (%.2f bits per weight)\n", NUM("weight_bytes"), NUM("bits_per_weight"));
    printf("file bytes          %.0f\n", NUM("file_bytes"));
#undef NUM
}

int main(int argc, char **argv)
{
    cli_init(argc, argv);
    static const struct option opts[] = {{"json", no_argument, 0, 'j'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'h') {
            fputs(usage, stdout);
            return 0;
        } else
            cli_usage_error("unknown option");
    }
    if (optind + 1 != argc)
        cli_usage_error(optind == argc ? "missing MODEL" : "expected one MODEL");
    moec_err err = {0};
    moec_model *m;
    if (moec_model_open(&m, argv[optind], &err))
        cli_die_err(&err);
    cJSON *s = moec_model_summary(m);
    if (!s)
        cli_die("out of memory");
    if (json) {
        char *txt = cJSON_Print(s);
        puts(txt);
        free(txt);
    } else {
        print_table(s);
    }
    cJSON_Delete(s);
    moec_model_close(m);
    return 0;
}
