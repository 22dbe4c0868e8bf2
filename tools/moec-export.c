/* moec-export: a .moec model (quantized tensors included) as a Hugging Face
 * checkpoint directory, so that any HF tool can check what it computes, or
 * as a GGUF file llama.cpp runs. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/fsutil.h"

#include "cli.h"
#include "core/ggml_blocks.h"
#include "formats/gguf.h"
#include "formats/gguf_export.h"
#include "model/model.h"
#include "model/model_moec.h"

static const char usage[] =
    "usage: moec-export FILE.moec --hf OUT_DIR [--dtype bf16|f32|f16] [--force] [--json] [--quiet]\n"
    "       moec-export MODEL --gguf OUT.gguf [--type T] [--force] [--json] [--quiet]\n"
    "  FILE.moec     model container written by moec (an HF checkpoint directory works too)\n"
    "  --hf OUT_DIR  write an HF checkpoint directory: config.json, model*.safetensors,\n"
    "                tokenizer.json (written to a temporary name, renamed when complete)\n"
    "  --dtype T     dtype of the dequantized tensors (default bf16). bf16 and f16 round the\n"
    "                dequantized values s*(q - z) to 16 bits; f32 stores them exactly, so the\n"
    "                export computes what the quantized model computes. Tensors that were not\n"
    "                quantized keep their stored dtype; config.json's torch_dtype becomes T\n"
    "  --gguf OUT     write a GGUF v3 file for llama.cpp (architectures llama for Mixtral,\n"
    "                qwen2moe, qwen3moe, olmoe; the tokenizer as llama.cpp's metadata). Tensors\n"
    "                in llama.cpp block types (moec-quant --grid/--preset) are copied byte for\n"
    "                byte; group-wise codes that match Q8_0/Q4_0/Q5_0/Q4_1/Q5_1 (groups of 32)\n"
    "                are carried over unchanged; norms and routers are F32\n"
    "  --type T      GGUF: type of full-precision weight matrices: auto (default: as stored),\n"
    "                f32, f16, bf16, or q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k (moec's\n"
    "                round-to-nearest); group-wise tensors no llama.cpp type holds are written\n"
    "                dequantized when T is a float type and refused otherwise\n"
    "  --force       replace OUT_DIR / OUT.gguf if it exists (only an empty or model directory)\n"
    "  --json        print a JSON summary on stdout\n"
    "  --quiet       no progress or summary on stderr\n"
    "  --help        show this help\n"
    "Memory: the dequantized tensors are held in memory until written (the size of the export).\n"
    "exit status: 0 ok, 1 failure, 2 usage error\n";

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

/* --gguf: the library writes the file; this prints what it did. */
static int export_gguf(const char *model, const char *out, const char *type_name, bool also_hf, bool force,
                       bool json)
{
    if (also_hf)
        cli_usage_error("--hf and --gguf are separate exports; give one");
    if (!*out)
        cli_usage_error("--gguf: empty output path");
    moec_gguf_export_opts o = MOEC_GGUF_EXPORT_OPTS_DEFAULT;
    if (type_name && strcmp(type_name, "auto") != 0) {
        if (strcmp(type_name, "f32") == 0)
            o.type = MOEC_GGML_F32;
        else if (strcmp(type_name, "f16") == 0)
            o.type = MOEC_GGML_F16;
        else if (strcmp(type_name, "bf16") == 0)
            o.type = MOEC_GGML_BF16;
        else if (moec_gblock_from_name(type_name))
            o.type = moec_gblock_info(moec_gblock_from_name(type_name))->ggml_type;
        else
            cli_usage_error("--type: '%s' is not auto, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, "
                            "q4_k, q5_k or q6_k", type_name);
    }
    struct stat sb;
    if (!force && stat(out, &sb) == 0)
        cli_die("%s exists (use --force to replace it)", out);
    moec_err err = {0};
    if (moec_check_parent_writable(out, &err))
        cli_die_err(&err);
    moec_model *m = cli_open_model(model);
    moec_gguf_export_report rep;
    cli_progress("writing %s", out);
    if (moec_model_save_gguf(m, out, &o, &rep, &err))
        cli_die_err(&err);
    cli_progress_done();
    if (json) {
        cJSON *j = cJSON_CreateObject();
        if (!j)
            cli_die("out of memory");
        cJSON_AddStringToObject(j, "source", model);
        cJSON_AddStringToObject(j, "output", out);
        cJSON_AddStringToObject(j, "arch", rep.arch);
        cJSON_AddStringToObject(j, "tokenizer", rep.tokenizer);
        cJSON_AddNumberToObject(j, "tensors", rep.n_tensors);
        cJSON_AddNumberToObject(j, "file_type", rep.file_type);
        cJSON_AddNumberToObject(j, "verbatim_tensors", (double)rep.verbatim);
        cJSON_AddNumberToObject(j, "carried_tensors", (double)rep.carried);
        cJSON_AddNumberToObject(j, "carried_groups", (double)rep.carried_groups);
        cJSON_AddNumberToObject(j, "rounded_mins", (double)rep.rounded_mins);
        cJSON_AddNumberToObject(j, "max_min_error", rep.max_min_error);
        cJSON_AddNumberToObject(j, "dequantized_tensors", (double)rep.dequantized);
        cJSON_AddNumberToObject(j, "encoded_tensors", (double)rep.encoded);
        cJSON_AddNumberToObject(j, "file_bytes", (double)rep.file_bytes);
        cli_print_json(j);
        cJSON_Delete(j);
    } else if (!cli_quiet) {
        fprintf(stderr,
                "%s: wrote %s (%s, tokenizer %s, %d tensors, %.2f MiB): %lld copied as llama.cpp blocks, %lld "
                "carried (%lld of %lld Q4_1/Q5_1 mins rounded), %lld dequantized, %lld encoded by RTN\n",
                cli_prog, out, rep.arch, rep.tokenizer, rep.n_tensors, (double)rep.file_bytes / 1048576.0,
                (long long)rep.verbatim, (long long)rep.carried, (long long)rep.rounded_mins,
                (long long)rep.carried_groups, (long long)rep.dequantized, (long long)rep.encoded);
    }
    moec_model_close(m);
    return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
    cli_init(argc, argv);
    enum { OPT_HF = 256, OPT_DTYPE, OPT_FORCE, OPT_JSON, OPT_QUIET, OPT_GGUF, OPT_TYPE };
    static const struct option opts[] = {{"hf", required_argument, 0, OPT_HF},
                                         {"gguf", required_argument, 0, OPT_GGUF},
                                         {"type", required_argument, 0, OPT_TYPE},
                                         {"dtype", required_argument, 0, OPT_DTYPE},
                                         {"force", no_argument, 0, OPT_FORCE},
                                         {"json", no_argument, 0, OPT_JSON},
                                         {"quiet", no_argument, 0, OPT_QUIET},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out_dir = NULL, *dtype_name = "bf16", *gguf = NULL, *type_name = NULL;
    bool force = false, json = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_HF: out_dir = optarg; break;
        case OPT_DTYPE: dtype_name = optarg; break;
        case OPT_GGUF: gguf = optarg; break;
        case OPT_TYPE: type_name = optarg; break;
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
    if (gguf)
        return export_gguf(argv[optind], gguf, type_name, out_dir != NULL, force, json);
    if (type_name)
        cli_usage_error("--type applies to --gguf; --hf takes --dtype");
    if (!out_dir || !*out_dir)
        cli_usage_error("missing --hf OUT_DIR or --gguf OUT.gguf");
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
    moec_model *src = cli_open_model(argv[optind]);
    moec_model *m;
    if (moec_model_derive(&m, src, &err))
        cli_die_err(&err);
    int64_t n_quant = 0;
    moec_model_for_each_slot(m, count_quant, &n_quant, NULL);
    cli_progress("dequantizing %lld tensors", (long long)n_quant);
    if (moec_model_dequantize(m, dtype, &err))
        cli_die_err(&err);
    char *config = with_torch_dtype(m, torch_dtype);
    free(m->config_json);
    m->config_json = config;
    cli_progress("writing %s", out_dir);
    if (moec_model_save_hf(m, out_dir, SHARD_BYTES, force, &err))
        cli_die_err(&err);
    cli_progress_done();
    if (json) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            cli_die("out of memory");
        cJSON_AddStringToObject(o, "source", argv[optind]);
        cJSON_AddStringToObject(o, "output", out_dir);
        cJSON_AddStringToObject(o, "dtype", dtype_name);
        cJSON_AddNumberToObject(o, "dequantized_tensors", (double)n_quant);
        cJSON_AddNumberToObject(o, "params_total", (double)moec_model_params(m));
        cJSON_AddNumberToObject(o, "weight_bytes", (double)moec_model_bytes(m));
        cli_print_json(o);
        cJSON_Delete(o);
    } else if (!cli_quiet) {
        fprintf(stderr, "%s: wrote %s (%lld quantized tensors dequantized to %s)\n", cli_prog, out_dir,
                (long long)n_quant, dtype_name);
    }
    moec_model_close(m);
    moec_model_close(src);
    return CLI_EXIT_OK;
}
