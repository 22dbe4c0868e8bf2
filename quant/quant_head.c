/* quant_head.c - the output head's calibration pass: Σ hhᵀ of the head's
 * input h = final_norm(last hidden state), with every layer already
 * quantized (GPTQ's order), for quantizing lm_head by GPTQ.
 *
 * The last hidden state is read from the last layer's MoE hook: the block's
 * input residual plus its routed output, plus the shared expert's output
 * (Qwen2-MoE; recomputed here from the working model's weights, sigmoid
 * gate included, since the hook does not show it). A model whose last layer
 * is dense has no such hook: the pass then refuses (the caller falls back to
 * round-to-nearest). */
#include <math.h>
#include <stdlib.h>

#include "exec/matmul.h"
#include "exec/ops.h"
#include "quant/gptq.h"
#include "quant/quant_internal.h"

typedef struct head_ctx {
    const moec_model *m;
    double *H;
    int64_t n;
    qr_hook_status hs;
} head_ctx;

static void head_hook(void *vc, const moec_moe_view *v)
{
    head_ctx *c = vc;
    const moec_model *m = c->m;
    if (v->layer != m->cfg.n_layers - 1 || c->hs.st)
        return;
    const int n = v->n, d = v->d;
    const moec_layer *L = &m->layers[v->layer];
    float *h = malloc((size_t)n * d * sizeof *h), *hn = malloc((size_t)n * d * sizeof *hn);
    float *a = NULL, *b = NULL, *ys = NULL;
    if (!h || !hn) {
        c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "head pass: out of memory");
        goto done;
    }
    for (size_t i = 0; i < (size_t)n * d; i++)
        h[i] = v->resid[i] + v->routed_out[i];
    if (m->cfg.shared_ffn > 0) {
        const int64_t fs = m->cfg.shared_ffn;
        a = malloc((size_t)n * fs * sizeof *a);
        b = malloc((size_t)n * fs * sizeof *b);
        ys = malloc((size_t)n * d * sizeof *ys);
        if (!a || !b || !ys) {
            c->hs.st = moec_err_set(&c->hs.err, MOEC_ERR_NOMEM, "head pass: out of memory");
            goto done;
        }
        moec_matmul(NULL, a, v->x, n, &L->shared.w1, false);
        moec_matmul(NULL, b, v->x, n, &L->shared.w3, false);
        moec_silu_mul(a, b, (int64_t)n * fs);
        moec_matmul(NULL, ys, a, n, &L->shared.w2, false);
        for (int t = 0; t < n; t++) {
            float g = 1.0f;
            if (m->cfg.shared_gate) {
                float z;
                moec_matmul(NULL, &z, v->x + (size_t)t * d, 1, &L->shared_gate, false);
                g = 1.0f / (1.0f + expf(-z));
            }
            for (int j = 0; j < d; j++)
                h[(size_t)t * d + j] += g * ys[(size_t)t * d + j];
        }
    }
    moec_rmsnorm_rows(hn, h, &m->final_norm, n, d, m->cfg.rms_eps);
    moec_status st = moec_hessian_accumulate(c->H, hn, n, d, &c->hs.err);
    if (st)
        c->hs.st = st;
    c->n += n;
done:
    free(h), free(hn), free(a), free(b), free(ys);
}

moec_status qr_collect_head(const qr_windows *w, const moec_model *work, double *H, int64_t *n, moec_err *err)
{
    const int last = work->cfg.n_layers - 1;
    if (last < 0 || !moec_config_layer_is_moe(&work->cfg, last))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "head pass: the last layer is not an MoE layer");
    head_ctx c = {.m = work, .H = H};
    moec_status st = qr_run_pass(w, work, false, 0, head_hook, NULL, &c, &c.hs, err);
    *n = c.n;
    return st ? moec_err_prefix(err, "head pass") : MOEC_OK;
}
