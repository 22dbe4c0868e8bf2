/* moec-export: a .moec model (quantized tensors included) as a Hugging Face
 * checkpoint directory, so that any HF tool can check what it computes. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/model.h"
#include "model/model_moec.h"

/* HF shards above this size, as transformers' save_pretrained does (5 GB). */
#define SHARD_BYTES ((size_t)5000000000u)

static moec_status count_quant(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)err;
    if (moec_tensor_present(s->t) && s->t->dtype == MOEC_DT_QUANT)
        ++*(int64_t *)ctx;
    return MOEC_OK;
}

/* The model's HF config.json text with torch_dtype set to the export dtype. */
static char *with_torch_dtype(const moec_model *m, const char *torch_dtype)
{
    moec_err err = {0};
    char *text;
    if (moec_config_to_hf_json(&m->cfg, m->config_json, &text, &err))
        cli_die_err(&err);
    cJSON *c = cJSON_Parse(text);
    free(text);
    if (!c)
        cli_die("out of memory");
    cJSON_DeleteItemFromObjectCaseSensitive(c, "torch_dtype");
    if (!cJSON_AddStringToObject(c, "torch_dtype", torch_dtype) || !(text = cJSON_Print(c)))
        cli_die("out of memory");
    cJSON_Delete(c);
    return text;
}

int main(int argc, char **argv)
{
    static const char *const dtypes[] = {"bf16", "f32", "f16", NULL};
    static const moec_dtype dtype_of[] = {MOEC_DT_BF16, MOEC_DT_F32, MOEC_DT_F16};
    static const char *const torch_dtype_of[] = {"bfloat16", "float32", "float16"};
    const char *src_path = NULL, *hf_dir = NULL, *out = NULL;
    int dtype_i = 0;
    bool force = false, json = false;
    cli_opt opts[] = {
        {"hf", 0, CLI_STRING, "OUT_DIR", &hf_dir,
         .help = "write an HF checkpoint directory: config.json, model*.safetensors, tokenizer.json and the "
                 "tokenizer's side files (written aside and renamed when complete)"},
        {"dtype", 0, CLI_CHOICE, "T", &dtype_i, .choices = dtypes,
         .help = "dtype of the dequantized tensors: bf16 (default), f32 or f16. bf16 and f16 round the "
                 "dequantized values s*(q - z) to 16 bits; f32 stores them exactly, so the export computes "
                 "what the quantized model computes. Tensors that were not quantized keep their stored dtype; "
                 "config.json's torch_dtype becomes T"},
        CLI_OPT_OUTPUT(&out, "OUT_DIR", "the same as --hf OUT_DIR"),
        CLI_OPT_FORCE(&force),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "FILE.moec --hf OUT_DIR [--dtype bf16|f32|f16] [options]",
        .summary = "Writes a .moec model (quantized tensors included, dequantized) as a Hugging Face checkpoint "
                   "directory, so that any HF tool can check what it computes.",
        .operand = "FILE.moec",
        .operand_help = "model container written by moec (an HF checkpoint directory works too)",
        .operand_dest = &src_path,
        .opts = opts,
        .epilog = "--force replaces only an empty directory or one holding a model. Memory: the dequantized "
                  "tensors are held in memory until written (the size of the export).",
    };
    cli_parse(&tool, argc, argv);
    if (hf_dir && out)
        cli_usage_error("give the output once: --hf OUT_DIR or -o OUT_DIR");
    if (!out)
        out = hf_dir;
    if (!out || !*out)
        cli_usage_error("missing --hf OUT_DIR");
    const char *dtype_name = dtypes[dtype_i], *torch_dtype = torch_dtype_of[dtype_i];
    const moec_dtype dtype = dtype_of[dtype_i];

    moec_err err = {0};
    moec_model *src = cli_open_model(src_path);
    cli_check_not_input(src, out);
    moec_model *m;
    if (moec_model_derive(&m, src, &err))
        cli_die_err(&err);
    int64_t n_quant = 0;
    moec_model_for_each_slot(m, count_quant, &n_quant, NULL);
    if (moec_model_dequantize(m, dtype, cli_stage_progress, "tensors", &err))
        cli_die_err(&err);
    char *config = with_torch_dtype(m, torch_dtype);
    free(m->config_json);
    m->config_json = config;
    cli_progress("writing", out, 0, 0, NULL);
    if (moec_model_save_hf(m, out, SHARD_BYTES, force, &err))
        cli_die_err(&err);
    cli_progress_done();
    if (json) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            cli_die("out of memory");
        cJSON_AddStringToObject(o, "source", src_path);
        cJSON_AddStringToObject(o, "output", out);
        cJSON_AddStringToObject(o, "dtype", dtype_name);
        cJSON_AddNumberToObject(o, "dequantized_tensors", (double)n_quant);
        cJSON_AddNumberToObject(o, "params_total", (double)moec_model_params(m));
        cJSON_AddNumberToObject(o, "weight_bytes", (double)moec_model_bytes(m));
        cli_json_add_version(o);
        cli_print_json(o);
        cJSON_Delete(o);
    } else if (!cli_quiet) {
        printf("wrote %s (%lld quantized tensors dequantized to %s)\n", out, (long long)n_quant, dtype_name);
    }
    moec_model_close(m);
    moec_model_close(src);
    return CLI_EXIT_OK;
}
