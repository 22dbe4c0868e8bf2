/* bench_decode_kl.c - what the int8 activations of quantized decoding cost.
 *
 *   bench-decode-kl MODEL BASE TEXT [--windows W] [--ctx N] [--threads T]
 *
 * Decoding a quantized model (one token at a time, 4- or 8-bit weights in
 * groups of a multiple of 64) multiplies int8-quantized activations with
 * integer dot products (qgemv_vnni.c); everything else, and every batched
 * forward, keeps float32 activations. This runs W windows of N tokens of
 * TEXT (tokenized whole, consecutive windows, as moec-eval) token by token
 * through the KV cache three times: BASE (the unquantized model), MODEL
 * with float activations, MODEL with int8 activations, and prints the mean
 * KL divergence (nats, every position) of each pair:
 *   KL(base || float), KL(base || int8): what quantization costs, and
 *   KL(float || int8): what the int8 activations add.
 * Defaults: 8 windows of 256, 2 threads.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "eval/eval.h"
#include "exec/exec.h"
#include "exec/matmul_quant.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static void die(const char *what, const moec_err *err)
{
    fprintf(stderr, "bench-decode-kl: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

/* logits[pos][V] of the window, fed one token at a time. */
static void decode_window(moec_exec *ex, const int32_t *ids, int n, float *logits, int V)
{
    moec_err err = {0};
    moec_exec_reset(ex);
    for (int i = 0; i < n; i++)
        if (moec_exec_forward(ex, ids + i, 1, logits + (size_t)i * V, false, &err))
            die("forward", &err);
}

int main(int argc, char **argv)
{
    int windows = 8, ctx = 256, threads = 2;
    const char *pos[3];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--windows") == 0 && i + 1 < argc)
            windows = atoi(argv[++i]);
        else if (strcmp(argv[i], "--ctx") == 0 && i + 1 < argc)
            ctx = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (argv[i][0] != '-' && npos < 3)
            pos[npos++] = argv[i];
        else {
            fprintf(stderr, "usage: bench-decode-kl MODEL BASE TEXT [--windows W] [--ctx N] [--threads T]\n");
            return 2;
        }
    }
    if (npos != 3 || windows < 1 || ctx < 2 || threads < 1) {
        fprintf(stderr, "usage: bench-decode-kl MODEL BASE TEXT [--windows W] [--ctx N] [--threads T]\n");
        return 2;
    }
    moec_err err = {0};
    moec_model *m, *b;
    if (moec_model_open(&m, pos[0], &err))
        die(pos[0], &err);
    if (moec_model_open(&b, pos[1], &err))
        die(pos[1], &err);
    if (!b->tokenizer_json)
        die("base has no tokenizer.json", NULL);
    moec_tokenizer *tok;
    if (moec_tokenizer_load_json(&tok, b->tokenizer_json, b->tokenizer_json_len, &err))
        die("tokenizer", &err);
    char *text;
    size_t len;
    if (moec_read_file(pos[2], (size_t)1 << 30, &text, &len, &err))
        die(pos[2], &err);
    int32_t *ids;
    size_t nids;
    if (moec_tokenizer_encode(tok, text, len, &ids, &nids, &err))
        die("tokenize", &err);
    if ((size_t)windows * ctx > nids)
        windows = (int)(nids / (size_t)ctx);
    if (windows < 1)
        die("text shorter than one window", NULL);
    const int V = m->cfg.vocab_size;
    if (b->cfg.vocab_size != V)
        die("model and base have different vocabularies", NULL);
    moec_exec_opts o = {.threads = threads, .max_ctx = ctx};
    moec_exec *em, *eb;
    if (moec_exec_new(&em, m, &o, &err) || moec_exec_new(&eb, b, &o, &err))
        die("executor", &err);
    float *lb = malloc((size_t)ctx * V * sizeof *lb), *lf = malloc((size_t)ctx * V * sizeof *lf),
          *li = malloc((size_t)ctx * V * sizeof *li);
    if (!lb || !lf || !li)
        die("out of memory", NULL);
    double kl_bf = 0, kl_bi = 0, kl_fi = 0;
    long same_fi = 0, count = 0;
    for (int w = 0; w < windows; w++) {
        const int32_t *win = ids + (size_t)w * ctx;
        decode_window(eb, win, ctx, lb, V);
        moec_matmul_quant_int8_activations(false);
        decode_window(em, win, ctx, lf, V);
        moec_matmul_quant_int8_activations(true);
        decode_window(em, win, ctx, li, V);
        for (int i = 0; i < ctx; i++) {
            const float *pb = lb + (size_t)i * V, *pf = lf + (size_t)i * V, *pi = li + (size_t)i * V;
            kl_bf += moec_kl_logits(pb, pf, V);
            kl_bi += moec_kl_logits(pb, pi, V);
            kl_fi += moec_kl_logits(pf, pi, V);
            int af = 0, ai = 0;
            for (int v = 1; v < V; v++) {
                af = pf[v] > pf[af] ? v : af;
                ai = pi[v] > pi[ai] ? v : ai;
            }
            same_fi += af == ai;
            count++;
        }
    }
    printf("{\"model\": \"%s\", \"base\": \"%s\", \"text\": \"%s\", \"windows\": %d, \"ctx\": %d, "
           "\"positions\": %ld, \"kl_base_float\": %.6f, \"kl_base_int8\": %.6f, \"kl_float_int8\": %.6f, "
           "\"top1_float_int8\": %.4f}\n",
           pos[0], pos[1], pos[2], windows, ctx, count, kl_bf / count, kl_bi / count, kl_fi / count,
           (double)same_fi / count);
    free(lb), free(lf), free(li), free(ids), free(text);
    moec_exec_free(em);
    moec_exec_free(eb);
    moec_tokenizer_free(tok);
    moec_model_close(m);
    moec_model_close(b);
    return 0;
}
