/* gguf_logits.c - moec's executor beside llama.cpp on the same model: the
 * largest logit difference, relative to the largest logit, over every
 * position of a text. Built and run by scripts/check-gguf-llamacpp.sh
 * against llama.cpp's libllama (not part of the moec build or test suite).
 *
 *   gguf_logits MODEL (HF dir or .moec) MODEL.gguf TEXT [N_TOKENS]
 *
 * The text is tokenized by moec (no special tokens) and the same ids go to
 * both. llama.cpp runs with an F32 KV cache and without flash attention,
 * the setting in which the fixtures' reference logits agree with it to
 * ~1e-6 (fixtures/README.md). Prints "max_rel_diff X tokens N" and exits 0,
 * or 1 with a message. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#include "core/fsutil.h"
#include "exec/exec.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static void quiet(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level >= GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: gguf_logits MODEL MODEL.gguf TEXT [N_TOKENS]\n");
        return 2;
    }
    int n_max = argc > 4 ? atoi(argv[4]) : 128;
    moec_err err = {0};
    moec_model *m;
    moec_tokenizer *tok;
    char *text;
    size_t len, n_ids;
    int32_t *ids;
    if (moec_model_open(&m, argv[1], &err) ||
        moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, &err) ||
        moec_read_file(argv[3], 1 << 30, &text, &len, &err) ||
        moec_tokenizer_encode(tok, text, len, &ids, &n_ids, &err)) {
        fprintf(stderr, "gguf_logits: %s\n", err.msg);
        return 1;
    }
    const int n = (int)n_ids < n_max ? (int)n_ids : n_max;
    const int V = m->cfg.vocab_size;
    float *a = malloc((size_t)n * V * sizeof *a);
    moec_exec *ex;
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.max_ctx = n;
    if (!a || moec_exec_new(&ex, m, &eo, &err) || moec_exec_forward(ex, ids, n, a, true, &err)) {
        fprintf(stderr, "gguf_logits: moec: %s\n", err.msg);
        return 1;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *lm = llama_model_load_from_file(argv[2], mp);
    if (!lm) {
        fprintf(stderr, "gguf_logits: llama.cpp cannot load %s\n", argv[2]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n;
    cp.n_batch = (uint32_t)n;
    cp.n_ubatch = (uint32_t)n;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(lm, cp);
    if (!ctx) {
        fprintf(stderr, "gguf_logits: llama.cpp cannot make a context\n");
        return 1;
    }
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b) != 0) {
        fprintf(stderr, "gguf_logits: llama_decode failed\n");
        return 1;
    }
    double maxdiff = 0.0, maxlogit = 0.0;
    for (int i = 0; i < n; i++) {
        const float *l = llama_get_logits_ith(ctx, i);
        for (int v = 0; v < V; v++) {
            const double dd = fabs((double)l[v] - a[(size_t)i * V + v]);
            maxdiff = dd > maxdiff ? dd : maxdiff;
            maxlogit = fabs(a[(size_t)i * V + v]) > maxlogit ? fabs(a[(size_t)i * V + v]) : maxlogit;
        }
    }
    printf("max_rel_diff %.3g tokens %d\n", maxdiff / maxlogit, n);
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(lm);
    moec_exec_free(ex);
    moec_model_close(m);
    moec_tokenizer_free(tok);
    free(a);
    free(ids);
    free(text);
    return 0;
}
