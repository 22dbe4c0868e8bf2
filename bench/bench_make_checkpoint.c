/* bench_make_checkpoint.c - a random-weight HF checkpoint at a published shape.
 *
 *   bench-make-checkpoint CONFIG.json OUT_DIR [--layers N] [--shard-mb MB]
 *                         [--tokenizer tokenizer.json] [--seed S] [--force]
 *
 * Reads a published config.json (Mixtral-8x7B, Qwen3-30B-A3B, ...), keeps
 * every size but cuts the depth to N layers (default 1), and writes
 * config.json plus BF16 safetensors with the exact tensor names and shapes
 * transformers uses, sharded as HF hubs shard ("model-0000i-of-0000n.
 * safetensors" of at most MB megabytes, and model.safetensors.index.json),
 * in layer order. The default, 2000 MB, shards a slice of a few GB too. With --tokenizer the file is
 * copied beside them (a real vocabulary is not needed: eval text only has to
 * tokenize to ids below vocab_size).
 *
 * Speed and memory at real scale are measured on such checkpoints: they are
 * GBs, so OUT_DIR must be outside the repository and they never enter the
 * test suite. Weights are uniform with the variance of a unit-gain
 * initialisation (1/in_features), so activations stay O(1) through a few
 * layers and routing is spread over the experts; norms are 1, biases 0.
 * Data is generated while it is written: memory stays a few MB whatever the
 * shape. The directory appears only when complete (written to
 * OUT_DIR.tmp-XXXXXX, then renamed).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/fsutil.h"
#include "model/model.h"

typedef struct {
    char name[192];
    int ndim;
    int64_t shape[2];
    int kind; /* 0 matrix, 1 norm (ones), 2 bias (zeros) */
    uint64_t bytes;
    int shard;
} gen_tensor;

typedef struct {
    gen_tensor *t;
    size_t n, cap;
} gen_list;

static moec_status collect(void *ctx, const moec_slot *s, moec_err *err)
{
    gen_list *g = ctx;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        gen_tensor *t = realloc(g->t, cap * sizeof *t);
        if (!t)
            return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
        g->t = t, g->cap = cap;
    }
    gen_tensor *t = &g->t[g->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", s->name);
    t->ndim = s->shape[1] > 0 ? 2 : 1;
    t->shape[0] = s->shape[0], t->shape[1] = s->shape[1];
    const bool bias = strstr(s->name, ".bias") != NULL;
    t->kind = t->ndim == 2 ? 0 : bias ? 2 : 1;
    t->bytes = 2u * (uint64_t)s->shape[0] * (uint64_t)(t->ndim == 2 ? s->shape[1] : 1);
    return MOEC_OK;
}

static uint64_t rng_state;
static inline uint64_t next64(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint16_t bf16_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Streams one tensor's values into f. */
static int write_tensor(FILE *f, const gen_tensor *t)
{
    enum { CHUNK = 1 << 16 };
    static uint16_t buf[CHUNK];
    uint64_t left = t->bytes / 2;
    const float amp = t->kind == 0 ? sqrtf(3.0f / (float)t->shape[1]) : 0.0f;
    const uint16_t one = bf16_of(1.0f), zero = 0;
    while (left) {
        size_t n = left < CHUNK ? (size_t)left : CHUNK;
        if (t->kind == 0) {
            for (size_t i = 0; i < n; i += 4) {
                uint64_t r = next64();
                for (size_t j = 0; j < 4 && i + j < n; j++) {
                    float u = (float)((r >> (16 * j)) & 0xffff) * (2.0f / 65535.0f) - 1.0f;
                    buf[i + j] = bf16_of(u * amp);
                }
            }
        } else {
            for (size_t i = 0; i < n; i++)
                buf[i] = t->kind == 1 ? one : zero;
        }
        if (fwrite(buf, 2, n, f) != n)
            return -1;
        left -= n;
    }
    return 0;
}

static char *shard_header(const gen_list *g, int shard, uint64_t *data_bytes)
{
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t off = 0;
    for (size_t i = 0; i < g->n; i++) {
        const gen_tensor *t = &g->t[i];
        if (t->shard != shard)
            continue;
        cJSON *o = cJSON_AddObjectToObject(h, t->name);
        cJSON_AddStringToObject(o, "dtype", "BF16");
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + t->bytes)));
        off += t->bytes;
    }
    char *s = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    *data_bytes = off;
    return s;
}

static void shard_name(char *buf, size_t cap, int i, int n)
{
    if (n == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", i + 1, n);
}

static int write_shard(const char *dir, const gen_list *g, int shard, int n_shards)
{
    uint64_t data_bytes;
    char *hdr = shard_header(g, shard, &data_bytes);
    if (!hdr)
        return -1;
    size_t hlen = strlen(hdr), padded = (hlen + 8 + 63) / 64 * 64 - 8; /* data starts 64-aligned */
    char path[4200], name[64];
    shard_name(name, sizeof name, shard, n_shards);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int rc = f ? 0 : -1;
    uint64_t len = padded;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(len >> (8 * i));
    if (!rc && (fwrite(le, 1, 8, f) != 8 || fwrite(hdr, 1, hlen, f) != hlen))
        rc = -1;
    for (size_t i = hlen; !rc && i < padded; i++)
        rc = fputc(' ', f) == EOF ? -1 : 0;
    for (size_t i = 0; !rc && i < g->n; i++)
        if (g->t[i].shard == shard)
            rc = write_tensor(f, &g->t[i]);
    if (f && fclose(f) != 0)
        rc = -1;
    free(hdr);
    return rc;
}

static int write_index(const char *dir, const gen_list *g, int n_shards, uint64_t total)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    char name[64];
    for (size_t i = 0; i < g->n; i++) {
        shard_name(name, sizeof name, g->t[i].shard, n_shards);
        cJSON_AddStringToObject(map, g->t[i].name, name);
    }
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    moec_err err = {0};
    int rc = s && moec_write_file(path, s, strlen(s), &err) == MOEC_OK ? 0 : -1;
    free(s);
    return rc;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench-make-checkpoint CONFIG.json OUT_DIR [--layers N] [--shard-mb MB] "
                    "[--tokenizer tokenizer.json] [--seed S] [--force]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *cfg_path = NULL, *out = NULL, *tok = NULL;
    int layers = 1;
    long shard_mb = 2000;
    bool force = false;
    rng_state = 0x6d6f6563ull;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc)
            layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--shard-mb") && i + 1 < argc)
            shard_mb = atol(argv[++i]);
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            tok = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            rng_state = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--force"))
            force = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(), 0;
        else if (argv[i][0] == '-')
            return usage();
        else if (!cfg_path)
            cfg_path = argv[i];
        else if (!out)
            out = argv[i];
        else
            return usage();
    }
    if (!cfg_path || !out || layers < 1 || shard_mb < 1)
        return usage();

    moec_err err = {0};
    char *json = NULL;
    size_t json_len;
    moec_config cfg;
    moec_model *m = NULL;
    char *cfg_out = NULL;
    char tmp[4096];
    gen_list g = {0};
    int rc = 1;
    if (moec_read_file(cfg_path, 1 << 20, &json, &json_len, &err) || moec_config_parse_hf(&cfg, json, &err))
        goto fail;
    if (layers < cfg.n_layers)
        cfg.n_layers = layers;
    if (moec_model_new_empty(&m, &cfg, &err) || moec_model_for_each_slot(m, collect, &g, &err) ||
        moec_config_to_hf_json(&cfg, json, &cfg_out, &err) || moec_tmpdir_beside(out, tmp, sizeof tmp, force, &err))
        goto fail;

    /* shards in layer order, closed before the tensor that would pass the limit */
    const uint64_t limit = (uint64_t)shard_mb << 20;
    uint64_t in_shard = 0, total = 0;
    int shard = 0;
    for (size_t i = 0; i < g.n; i++) {
        if (in_shard > 0 && in_shard + g.t[i].bytes > limit)
            shard++, in_shard = 0;
        g.t[i].shard = shard;
        in_shard += g.t[i].bytes;
        total += g.t[i].bytes;
    }
    const int n_shards = shard + 1;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", tmp);
    if (moec_write_file(path, cfg_out, strlen(cfg_out), &err))
        goto fail_tmp;
    if (tok) {
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        if (moec_copy_file(tok, path, &err))
            goto fail_tmp;
    }
    for (int s = 0; s < n_shards; s++) {
        fprintf(stderr, "\rwriting shard %d of %d", s + 1, n_shards);
        if (write_shard(tmp, &g, s, n_shards)) {
            moec_err_set(&err, MOEC_ERR_IO, "%s: cannot write shard %d: %s", tmp, s + 1, strerror(errno));
            goto fail_tmp;
        }
    }
    fprintf(stderr, "\n");
    if (n_shards > 1 && write_index(tmp, &g, n_shards, total)) {
        moec_err_set(&err, MOEC_ERR_IO, "%s: cannot write the index", tmp);
        goto fail_tmp;
    }
    if (moec_commit_dir(tmp, out, force, &err))
        goto fail_tmp;
    printf("%s: %s, %d layer(s), %zu tensors, %.2f GB in %d shard(s)\n", out, moec_arch_name(cfg.arch),
           cfg.n_layers, g.n, (double)total / 1e9, n_shards);
    rc = 0;
    goto done;
fail_tmp:
    moec_remove_tree(tmp);
fail:
    fprintf(stderr, "bench-make-checkpoint: %s\n", err.msg);
done:
    free(g.t);
    free(cfg_out);
    free(json);
    moec_model_close(m);
    return rc;
}
