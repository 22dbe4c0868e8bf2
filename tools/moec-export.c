/* moec-export: a .moec model (quantized tensors included) as a Hugging Face
 * checkpoint directory, so that any HF tool can check what it computes, or
 * as a GGUF file llama.cpp runs. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "core/ggml_blocks.h"
#include "formats/gguf.h"
#include "formats/gguf_export.h"
#include "model/model.h"
#include "model/model_moec.h"
#include "pipeline/export.h"

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
    cli_check_output(out, force);
    moec_err err = {0};
    moec_model *m = cli_open_model(model);
    cli_check_not_input(m, out);
    moec_gguf_export_report rep;
    cli_progress("writing", out, 0, 0, NULL);
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
        cli_json_add_version(j);
        cli_print_json(j);
        cJSON_Delete(j);
    } else if (!cli_quiet) {
        printf("wrote %s (%s, tokenizer %s, %d tensors, %.2f MiB): %lld copied as llama.cpp blocks, %lld "
                "carried (%lld of %lld Q4_1/Q5_1 mins rounded), %lld dequantized, %lld encoded by RTN\n",
                out, rep.arch, rep.tokenizer, rep.n_tensors, (double)rep.file_bytes / 1048576.0,
                (long long)rep.verbatim, (long long)rep.carried, (long long)rep.rounded_mins,
                (long long)rep.carried_groups, (long long)rep.dequantized, (long long)rep.encoded);
    }
    if (rep.dequantized && !cli_quiet)
        fprintf(stderr,
                "moec-export: note: %lld quantized tensors are in no llama.cpp type and were written dequantized, "
                "so the file is larger than the model read; to keep the codes, quantize with moec-quant --preset "
                "Q4_K_M (or --grid q4_k) or with --group 32 (carried as Q4_0/Q4_1/Q5_0/Q5_1/Q8_0)\n",
                (long long)rep.dequantized);
    moec_model_close(m);
    return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
    static const char *const dtypes[] = {"bf16", "f32", "f16", NULL};
    static const moec_dtype dtype_of[] = {MOEC_DT_BF16, MOEC_DT_F32, MOEC_DT_F16};
    static const char *const torch_dtype_of[] = {"bfloat16", "float32", "float16"};
    const char *src_path = NULL, *hf_dir = NULL, *out = NULL, *gguf = NULL, *type_name = NULL;
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
        {"gguf", 0, CLI_STRING, "OUT.gguf", &gguf,
         .help = "write a GGUF v3 file for llama.cpp instead (architectures llama for Mixtral, qwen2moe, qwen3moe, "
                 "olmoe; the tokenizer as llama.cpp's metadata). Tensors in llama.cpp block types (moec-quant "
                 "--grid/--preset) are copied byte for byte; group-wise codes that match Q8_0/Q4_0/Q5_0/Q4_1/Q5_1 "
                 "(groups of 32) are carried over unchanged; norms and routers are F32"},
        {"type", 0, CLI_STRING, "T", &type_name,
         .help = "GGUF: type of full-precision weight matrices: auto (default: as stored), f32, f16, bf16, or "
                 "q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k (moec's round-to-nearest); group-wise tensors no "
                 "llama.cpp type holds are written dequantized when T is a float type and refused otherwise"},
        CLI_OPT_FORCE(&force),
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "FILE.moec --hf OUT_DIR [--dtype bf16|f32|f16] [options]\n"
                 "MODEL --gguf OUT.gguf [--type T] [options]",
        .summary = "Writes a .moec model (quantized tensors included, dequantized) as a Hugging Face checkpoint "
                   "directory, so that any HF tool can check what it computes, or a model as a GGUF file "
                   "llama.cpp runs.",
        .operand = "FILE.moec",
        .operand_help = "model container written by moec (an HF checkpoint directory works too)",
        .operand_dest = &src_path,
        .opts = opts,
        .epilog = "--force replaces only an empty directory or one holding a model. Memory: one "
                  "tensor is dequantized at a time and each layer leaves memory once written.",
    };
    cli_parse(&tool, argc, argv);
    if (gguf)
        return export_gguf(src_path, gguf, type_name, hf_dir != NULL || out != NULL, force, json);
    if (type_name)
        cli_usage_error("--type applies to --gguf; --hf takes --dtype");
    if (hf_dir && out)
        cli_usage_error("give the output once: --hf OUT_DIR or -o OUT_DIR");
    if (!out)
        out = hf_dir;
    if (!out || !*out)
        cli_usage_error("missing --hf OUT_DIR or --gguf OUT.gguf");
    const char *dtype_name = dtypes[dtype_i], *torch_dtype = torch_dtype_of[dtype_i];
    const moec_dtype dtype = dtype_of[dtype_i];

    moec_err err = {0};
    /* a container is read a layer at a time; a directory is mmap'd anyway */
    struct stat sb;
    moec_model *m = NULL;
    if (stat(src_path, &sb) == 0 && S_ISREG(sb.st_mode)) {
        if (moec_model_open_moec_lazy(&m, src_path, &err))
            cli_die_err(&err);
    } else {
        m = cli_open_model(src_path);
    }
    cli_check_not_input(m, out);
    char *config = with_torch_dtype(m, torch_dtype);
    free(m->config_json);
    m->config_json = config;
    moec_export_summary sum;
    if (moec_export_hf(m, out, dtype, SHARD_BYTES, force, cli_stage_progress, "parts", &sum, &err))
        cli_die_err(&err);
    cli_progress_done();
    const int64_t n_quant = sum.quantized_tensors;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            cli_die("out of memory");
        cJSON_AddStringToObject(o, "source", src_path);
        cJSON_AddStringToObject(o, "output", out);
        cJSON_AddStringToObject(o, "dtype", dtype_name);
        cJSON_AddNumberToObject(o, "dequantized_tensors", (double)n_quant);
        cJSON_AddNumberToObject(o, "params_total", (double)sum.params);
        cJSON_AddNumberToObject(o, "weight_bytes", (double)sum.bytes);
        cli_json_add_version(o);
        cli_print_json(o);
        cJSON_Delete(o);
    } else if (!cli_quiet) {
        printf("wrote %s (%lld quantized tensors dequantized to %s)\n", out, (long long)n_quant, dtype_name);
    }
    moec_model_close(m);
    return CLI_EXIT_OK;
}
