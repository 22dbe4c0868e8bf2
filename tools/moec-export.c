/* moec-export: a .moec model (quantized tensors included) as a Hugging Face
 * checkpoint directory, so that any HF tool can check what it computes. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "pipeline/export.h"

static const char usage[] =
    "usage: moec-export FILE.moec --hf OUT_DIR [--dtype bf16|f32|f16] [--force] [--json] [--quiet]\n"
    "  FILE.moec     model container written by moec (an HF checkpoint directory works too)\n"
    "  --hf OUT_DIR  write an HF checkpoint directory: config.json, model*.safetensors,\n"
    "                tokenizer.json (written to a temporary name, renamed when complete)\n"
    "  --dtype T     dtype of the dequantized tensors (default bf16). bf16 and f16 round the\n"
    "                dequantized values s*(q - z) to 16 bits; f32 stores them exactly, so the\n"
    "                export computes what the quantized model computes. Tensors that were not\n"
    "                quantized keep their stored dtype; config.json's torch_dtype becomes T\n"
    "  --force       replace OUT_DIR if it exists (only an empty or model directory)\n"
    "  --json        print a JSON summary on stdout\n"
    "  --quiet       no progress or summary on stderr\n"
    "  --help        show this help\n"
    "Memory: one tensor is dequantized at a time and each layer leaves memory once written.\n"
    "exit status: 0 ok, 1 failure, 2 usage error\n";

/* HF shards above this size, as transformers' save_pretrained does (5 GB). */
#define SHARD_BYTES ((size_t)5000000000u)

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
    cli_init(argc, argv);
    enum { OPT_HF = 256, OPT_DTYPE, OPT_FORCE, OPT_JSON, OPT_QUIET };
    static const struct option opts[] = {{"hf", required_argument, 0, OPT_HF},
                                         {"dtype", required_argument, 0, OPT_DTYPE},
                                         {"force", no_argument, 0, OPT_FORCE},
                                         {"json", no_argument, 0, OPT_JSON},
                                         {"quiet", no_argument, 0, OPT_QUIET},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out_dir = NULL, *dtype_name = "bf16";
    bool force = false, json = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_HF: out_dir = optarg; break;
        case OPT_DTYPE: dtype_name = optarg; break;
        case OPT_FORCE: force = true; break;
        case OPT_JSON: json = true; break;
        case OPT_QUIET: cli_quiet = true; break;
        case 'h': fputs(usage, stdout); return CLI_EXIT_OK;
        default: cli_usage_error("unknown option");
        }
    }
    if (optind == argc)
        cli_usage_error("missing FILE.moec");
    if (optind + 1 != argc)
        cli_usage_error("expected one FILE.moec, got %d arguments", argc - optind);
    if (!out_dir || !*out_dir)
        cli_usage_error("missing --hf OUT_DIR");
    moec_dtype dtype;
    const char *torch_dtype;
    if (strcmp(dtype_name, "bf16") == 0)
        dtype = MOEC_DT_BF16, torch_dtype = "bfloat16";
    else if (strcmp(dtype_name, "f32") == 0)
        dtype = MOEC_DT_F32, torch_dtype = "float32";
    else if (strcmp(dtype_name, "f16") == 0)
        dtype = MOEC_DT_F16, torch_dtype = "float16";
    else
        cli_usage_error("--dtype: '%s' is not one of bf16, f32, f16", dtype_name);

    moec_err err = {0};
    /* a container is read a layer at a time; a directory is mmap'd anyway */
    struct stat sb;
    moec_model *m = NULL;
    if (stat(argv[optind], &sb) == 0 && S_ISREG(sb.st_mode)) {
        if (moec_model_open_moec_lazy(&m, argv[optind], &err))
            cli_die_err(&err);
    } else {
        m = cli_open_model(argv[optind]);
    }
    char *config = with_torch_dtype(m, torch_dtype);
    free(m->config_json);
    m->config_json = config;
    cli_progress("writing %s", out_dir);
    moec_export_summary sum;
    if (moec_export_hf(m, out_dir, dtype, SHARD_BYTES, force, &sum, &err))
        cli_die_err(&err);
    cli_progress_done();
    const int64_t n_quant = sum.quantized_tensors;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            cli_die("out of memory");
        cJSON_AddStringToObject(o, "source", argv[optind]);
        cJSON_AddStringToObject(o, "output", out_dir);
        cJSON_AddStringToObject(o, "dtype", dtype_name);
        cJSON_AddNumberToObject(o, "dequantized_tensors", (double)n_quant);
        cJSON_AddNumberToObject(o, "params_total", (double)sum.params);
        cJSON_AddNumberToObject(o, "weight_bytes", (double)sum.bytes);
        cli_print_json(o);
        cJSON_Delete(o);
    } else if (!cli_quiet) {
        fprintf(stderr, "%s: wrote %s (%lld quantized tensors dequantized to %s)\n", cli_prog, out_dir,
                (long long)n_quant, dtype_name);
    }
    moec_model_close(m);
    return CLI_EXIT_OK;
}
