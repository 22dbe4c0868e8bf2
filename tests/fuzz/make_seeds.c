/* make_seeds.c - writes the binary seeds of tests/fuzz/corpus with moec's
 * own writers: small .moec containers (raw and multi-chunk zstd sections of
 * every storage type, blobs), tiny models stored as .moec (float and
 * group-wise quantized tensors, a tokenizer blob), and calibration
 * statistics of such a model. Small seeds keep the fuzzer fast and inside
 * the format from its first input (a real checkpoint cut to max_len never
 * gets past the directory). The text seeds come from make_seeds.py.
 *
 * usage: make_seeds OUT_DIR   (writes OUT_DIR/{container,moec_model,stats}/) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calib/stats.h"
#include "core/qformat.h"
#include "formats/container.h"
#include "model/model.h"
#include "model/model_moec.h"

static void die(const moec_err *err)
{
    fprintf(stderr, "make_seeds: %s\n", err->msg);
    exit(1);
}

static uint32_t rng = 2024;
static uint8_t rnd(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (uint8_t)(rng >> 24);
}

/* ---- containers --------------------------------------------------------- */

typedef struct {
    const char *name;
    moec_ctensor_type type;
    moec_compress compress;
    int patterned;
} spec;

static void container_seed(const char *path, const spec *sp, int n, uint32_t chunk, int with_blobs)
{
    moec_err err;
    moec_container_writer_opts o;
    moec_container_writer_opts_default(&o);
    o.chunk_size = chunk;
    moec_container_writer *w;
    if (moec_container_writer_new(&o, &w, &err))
        die(&err);
    static const char cfg[] = "{\"model_type\": \"mixtral\"}";
    static const char tok[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}";
    if (with_blobs && (moec_container_writer_add_blob(w, "config.json", cfg, strlen(cfg), &err) ||
                       moec_container_writer_add_blob(w, "tokenizer.json", tok, strlen(tok), &err) ||
                       moec_container_writer_add_blob(w, "empty", "", 0, &err)))
        die(&err);
    void *bufs[8][MOEC_SECTION_KIND_COUNT] = {{0}};
    for (int i = 0; i < n; i++) {
        uint64_t want[MOEC_SECTION_KIND_COUNT];
        if (moec_ctensor_section_bytes(&sp[i].type, want, &err))
            die(&err);
        moec_ctensor_desc d = {.name = sp[i].name, .type = sp[i].type, .compress = sp[i].compress};
        for (int k = 0; k < MOEC_SECTION_KIND_COUNT; k++) {
            if (!want[k])
                continue;
            uint8_t *b = malloc(want[k]);
            for (uint64_t j = 0; j < want[k]; j++)
                b[j] = sp[i].patterned ? (uint8_t)((j / 5) % 3 ? 0x11 : 0x3c) : rnd();
            if (k == MOEC_SECTION_SCALES) /* finite F16 scales: 0x3c00 = 1.0 */
                for (uint64_t j = 1; j < want[k]; j += 2)
                    b[j] = 0x3c, b[j - 1] = 0;
            bufs[i][k] = b;
            d.sections[d.n_sections++] = (moec_csection){(moec_section_kind)k, b, want[k]};
        }
        if (moec_container_writer_add_tensor(w, &d, &err))
            die(&err);
    }
    if (moec_container_writer_write(w, path, &err))
        die(&err);
    moec_container_writer_free(w);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < MOEC_SECTION_KIND_COUNT; k++)
            free(bufs[i][k]);
}

static moec_ctensor_type ft(moec_storage st, int ndim, int64_t a, int64_t b)
{
    moec_ctensor_type t = {.storage = st, .ndim = ndim, .shape = {a, b}};
    return t;
}

static moec_ctensor_type gw(int bits, int group, int sym, int64_t rows, int64_t cols)
{
    return (moec_ctensor_type){.storage = MOEC_STORAGE_GROUPWISE, .bits = bits, .group = group,
                               .symmetric = sym, .ndim = 2, .shape = {rows, cols}};
}

static void containers(const char *dir)
{
    char p[4200];
    const spec all[] = {
        {"f32", ft(MOEC_STORAGE_F32, 2, 3, 5), MOEC_COMPRESS_NONE, 0},
        {"bf16.zstd", ft(MOEC_STORAGE_BF16, 2, 4, 40), MOEC_COMPRESS_ZSTD, 1},
        {"gw4.asym.zstd", gw(4, 8, 0, 3, 40), MOEC_COMPRESS_ZSTD, 1},
        {"gw3.sym", gw(3, 5, 1, 2, 10), MOEC_COMPRESS_NONE, 0},
        {"f16.1d", ft(MOEC_STORAGE_F16, 1, 7, 0), MOEC_COMPRESS_AUTO, 0},
    };
    snprintf(p, sizeof p, "%s/all_kinds.moec", dir);
    container_seed(p, all, 5, 64, 1);
    const spec one[] = {{"w", gw(2, 16, 0, 4, 64), MOEC_COMPRESS_ZSTD, 1}};
    snprintf(p, sizeof p, "%s/one_zstd_groupwise.moec", dir);
    container_seed(p, one, 1, 64, 0);
    const spec raw[] = {{"a", ft(MOEC_STORAGE_F32, 1, 4, 0), MOEC_COMPRESS_NONE, 0},
                        {"b", gw(8, 3, 0, 2, 7), MOEC_COMPRESS_NONE, 0}};
    snprintf(p, sizeof p, "%s/raw_only.moec", dir);
    container_seed(p, raw, 2, 1u << 20, 1);
    snprintf(p, sizeof p, "%s/blobs_only.moec", dir);
    container_seed(p, NULL, 0, 64, 1);
}

/* ---- tiny models as .moec ---------------------------------------------- */

typedef struct {
    moec_model *m;
    int quantize_experts;
    int bits;
    int symmetric;
} fill_ctx;

static moec_status fill_slot(void *vctx, const moec_slot *s, moec_err *err)
{
    fill_ctx *c = vctx;
    if (s->optional)
        return MOEC_OK;
    moec_status st;
    if (c->quantize_experts && s->expert >= 0) {
        moec_qmatrix q;
        const int group = 4;
        if ((st = moec_qmatrix_alloc(&q, s->shape[0], s->shape[1], c->bits, group, c->symmetric, err)))
            return st;
        const int64_t ng = (s->shape[1] + group - 1) / group;
        uint8_t codes[64], zeros[64];
        uint16_t scales[64];
        for (int64_t r = 0; r < s->shape[0]; r++) {
            for (int64_t j = 0; j < s->shape[1]; j++)
                codes[j] = (uint8_t)(rnd() & ((1u << c->bits) - 1));
            for (int64_t g = 0; g < ng; g++) {
                scales[g] = (uint16_t)(0x2000 + (rnd() & 0xff)); /* small positive F16 */
                zeros[g] = (uint8_t)(rnd() & ((1u << c->bits) - 1));
            }
            moec_qmatrix_set_row(&q, r, codes, scales, zeros);
        }
        st = moec_model_set_quant(c->m, s->t, &q.f, s->name, err);
        moec_qmatrix_free(&q);
        return st;
    }
    const moec_dtype dt = s->layer < 0 ? MOEC_DT_F32 : s->expert >= 0 ? MOEC_DT_F16 : MOEC_DT_BF16;
    if ((st = moec_model_new_tensor(c->m, s->t, dt, s->shape[0], s->ndim == 2 ? s->shape[1] : 0, err)))
        return st;
    float v[1024];
    const size_t n = (size_t)moec_tensor_numel(s->t);
    for (size_t i = 0; i < n && i < 1024; i++)
        v[i] = ((float)rnd() - 128.0f) / 256.0f;
    moec_from_f32((void *)s->t->data, v, dt, n);
    return MOEC_OK;
}

static void model_seed(const char *path, const char *config, const char *tokenizer, int quantize, int bits,
                       int symmetric, int compress)
{
    moec_err err;
    moec_config cfg;
    if (moec_config_parse_hf(&cfg, config, &err))
        die(&err);
    moec_model *m;
    if (moec_model_new_empty(&m, &cfg, &err))
        die(&err);
    m->config_json = strdup(config);
    if (tokenizer) {
        m->tokenizer_json = strdup(tokenizer);
        m->tokenizer_json_len = strlen(tokenizer);
    }
    fill_ctx c = {m, quantize, bits, symmetric};
    if (moec_model_for_each_slot(m, fill_slot, &c, &err))
        die(&err);
    moec_moec_save_opts o = MOEC_MOEC_SAVE_OPTS_DEFAULT;
    o.compress = compress;
    o.report_json = "{\"method\": \"seed\"}";
    if (moec_model_save_moec(m, path, &o, &err))
        die(&err);
    moec_model_close(m);
}

static const char mixtral_cfg[] =
    "{\"architectures\": [\"MixtralForCausalLM\"], \"model_type\": \"mixtral\", \"vocab_size\": 16,"
    " \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
    " \"head_dim\": 4, \"intermediate_size\": 8, \"num_local_experts\": 2, \"num_experts_per_tok\": 1,"
    " \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0,"
    " \"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}";

static const char qwen2_cfg[] =
    "{\"architectures\": [\"Qwen2MoeForCausalLM\"], \"model_type\": \"qwen2_moe\", \"vocab_size\": 12,"
    " \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,"
    " \"intermediate_size\": 8, \"moe_intermediate_size\": 4, \"shared_expert_intermediate_size\": 8,"
    " \"num_experts\": 3, \"num_experts_per_tok\": 2, \"norm_topk_prob\": false, \"mlp_only_layers\": [1],"
    " \"max_position_embeddings\": 32, \"tie_word_embeddings\": true}";

static const char qwen3_cfg[] =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", \"vocab_size\": 10,"
    " \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
    " \"head_dim\": 4, \"moe_intermediate_size\": 4, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
    " \"norm_topk_prob\": true, \"max_position_embeddings\": 32}";

static const char tiny_tokenizer[] =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
    " \"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true}]}";

static void models(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/mixtral_float.moec", dir);
    model_seed(p, mixtral_cfg, tiny_tokenizer, 0, 0, 0, 0);
    snprintf(p, sizeof p, "%s/mixtral_q4.moec", dir);
    model_seed(p, mixtral_cfg, NULL, 1, 4, 0, 1);
    snprintf(p, sizeof p, "%s/qwen2_q3sym.moec", dir);
    model_seed(p, qwen2_cfg, NULL, 1, 3, 1, 1);
    snprintf(p, sizeof p, "%s/qwen3_q2.moec", dir);
    model_seed(p, qwen3_cfg, tiny_tokenizer, 1, 2, 0, 0);
}

/* ---- statistics --------------------------------------------------------- */

static void stats_seed(const char *path, const char *config, int n_domains)
{
    moec_err err;
    moec_config cfg;
    if (moec_config_parse_hf(&cfg, config, &err))
        die(&err);
    moec_model *m;
    if (moec_model_new_empty(&m, &cfg, &err))
        die(&err);
    fill_ctx c = {m, 0, 0, 0};
    if (moec_model_for_each_slot(m, fill_slot, &c, &err))
        die(&err);
    moec_stats *s;
    if (moec_stats_new(&s, m, &err))
        die(&err);
    static const char *names[] = {"drama", "c"};
    for (int i = 0; i < n_domains; i++) {
        int idx;
        if (moec_stats_add_domain(s, names[i], &idx, &err))
            die(&err);
        s->domain_tokens[idx] = 10 + i;
    }
    snprintf(s->source, sizeof s->source, "seed.txt");
    s->tokens = 20;
    for (int l = 0; l < s->n_layers; l++) {
        moec_stats_array a[MOEC_STATS_N_ARRAYS];
        int na = moec_layer_stats_arrays(&s->layers[l], s->n_domains, a);
        s->layers[l].tokens = 20;
        for (int i = 0; i < na; i++)
            for (size_t j = 0; j < a[i].len; j++)
                (*a[i].p)[j] = (double)(rnd() % 7);
    }
    if (moec_stats_save(s, path, &err))
        die(&err);
    moec_stats_free(s);
    moec_model_close(m);
}

static void stats(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/mixtral_1domain.stats", dir);
    stats_seed(p, mixtral_cfg, 1);
    snprintf(p, sizeof p, "%s/qwen2_dense_layer_2domains.stats", dir);
    stats_seed(p, qwen2_cfg, 2);
    snprintf(p, sizeof p, "%s/qwen3_no_domain.stats", dir);
    stats_seed(p, qwen3_cfg, 0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds OUT_DIR\n");
        return 2;
    }
    const char *sub[] = {"container", "moec_model", "stats"};
    char d[3][4096];
    for (int i = 0; i < 3; i++) {
        snprintf(d[i], sizeof d[i], "%s/%s", argv[1], sub[i]);
        mkdir(argv[1], 0777);
        mkdir(d[i], 0777);
    }
    containers(d[0]);
    models(d[1]);
    stats(d[2]);
    return 0;
}
