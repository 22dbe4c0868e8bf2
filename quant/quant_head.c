/* quant_head.c - the output head's calibration: Σ hhᵀ of the head's input
 * h = final_norm(last hidden state), with every layer already quantized
 * (GPTQ's order), for quantizing lm_head by GPTQ.
 *
 * The pipeline keeps the windows' residual stream between layers; at the
 * recipe's end it has gone through every quantized layer of the working
 * model, so the head's inputs are those states through the final norm: no
 * extra pass over the model. */
#include <stdlib.h>

#include "exec/ops.h"
#include "quant/gptq.h"
#include "quant/quant_internal.h"

moec_status qr_collect_head(qr_recipe_run *R, double *H, int64_t *n, moec_err *err)
{
    *n = 0;
    moec_hstates *s = R->w.p ? moec_pipeline_states(R->w.p) : NULL;
    if (!s || s->layer != R->src->cfg.n_layers)
        return moec_err_set(err, MOEC_ERR_INTERNAL, "head pass: the calibration states have not passed every layer");
    const moec_model *m = R->work;
    const int d = s->d;
    enum { ROWS = 256 }; /* normed rows at a time */
    float *hn = malloc((size_t)ROWS * (size_t)d * sizeof *hn);
    if (!hn)
        return moec_err_set(err, MOEC_ERR_NOMEM, "head pass: out of memory");
    moec_status st = MOEC_OK;
    for (int64_t t0 = 0; t0 < s->tokens && !st; t0 += ROWS) {
        const int rows = (int)(s->tokens - t0 < ROWS ? s->tokens - t0 : ROWS);
        moec_rmsnorm_rows(hn, s->h + (size_t)t0 * (size_t)d, &m->final_norm, rows, d, m->cfg.rms_eps);
        st = moec_hessian_accumulate(H, hn, rows, d, err);
    }
    free(hn);
    if (st)
        return moec_err_prefix(err, "head pass");
    *n = s->tokens;
    return MOEC_OK;
}
