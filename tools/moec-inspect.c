/* moec-inspect: what a checkpoint is — architecture, sizes, parameters, dtypes. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "model/model.h"
#include "model/summary.h"

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
    const cJSON *fa = cJSON_GetObjectItem(s, "factored");
    if (fa) /* merged experts stored as two factors */
        printf("factored experts    %.0f weights: %.0f parameters (%.0f dense)\n",
               cJSON_GetObjectItem(fa, "weights")->valuedouble, cJSON_GetObjectItem(fa, "params")->valuedouble,
               cJSON_GetObjectItem(fa, "dense_params")->valuedouble);
#undef NUM
}

int main(int argc, char **argv)
{
    const char *model_path = NULL;
    bool json = false;
    cli_opt opts[] = {
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL [--json]",
        .summary = "What a checkpoint is: architecture, layers, experts per layer, top-k, sizes, parameters in "
                   "all and active per token, dtypes and bytes.",
        .operand = "MODEL",
        .operand_help = "Hugging Face checkpoint directory (config.json + *.safetensors) or .moec file",
        .operand_dest = &model_path,
        .opts = opts,
    };
    cli_parse(&tool, argc, argv);
    moec_model *m = cli_open_model(model_path);
    cJSON *s = moec_model_summary(m);
    if (!s)
        cli_die("out of memory");
    if (json) {
        cli_print_json(s);
    } else {
        print_table(s);
    }
    cJSON_Delete(s);
    moec_model_close(m);
    return 0;
}
