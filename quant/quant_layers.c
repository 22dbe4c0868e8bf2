/* quant_layers.c - the recipe's parts outside the MoE blocks: embeddings
 * and head, attention projections, dense MLP layers. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant_internal.h"


/* The embedding by RTN (the recipe's first step: the calibration windows
 * enter the working model through it), on the plan's type when there is a
 * plan; a tied head is the same tensor. */
moec_status qr_quant_embed(qr_recipe_run *R, moec_err *err)
{
    const moec_model *src = R->src;
    const int64_t V = src->cfg.vocab_size, d = src->cfg.hidden_size;
    const moec_gplan *P = R->r->gplan;
    if (P && !P->embed) /* the plan keeps it in full precision */
        return MOEC_OK;
    float *E = NULL;
    moec_status st = qr_to_float(&src->embed, "embed_tokens", &E, err);
    if (st)
        return st;
    qr_mjob j = qr_mjob_make(E, V, d, R->r->embed_bits, R->r->embed_group, R->r->clip_grid, NULL,
                             "model.embed_tokens");
    j.gtype = P ? P->embed : MOEC_GB_NONE;
    if (!(st = qr_run_mjobs(R, &j, 1, err)))
        st = qr_install(R, &R->work->embed, &R->out->embed, &j.q.f, j.name, err);
    if (!st && src->cfg.tie_embeddings) {
        R->work->lm_head = R->work->embed;
        R->out->lm_head = R->out->embed;
    }
    moec_qmatrix_free(&j.q);
    free(E);
    return st;
}

/* An untied lm_head (the recipe's last step): by RTN, or, with a plan,
 * GPTQ and calibration windows, by GPTQ on the plan's type from the head
 * input's Hessian over the windows' final states (quant_head.c), which the
 * pipeline holds after every quantized layer. */
moec_status qr_quant_head(qr_recipe_run *R, moec_err *err)
{
    const moec_model *src = R->src;
    const moec_gplan *P = R->r->gplan;
    if (src->cfg.tie_embeddings || (P && !P->head))
        return MOEC_OK;
    const int64_t V = src->cfg.vocab_size, d = src->cfg.hidden_size;
    const bool gptq = P && R->r->method == MOEC_QMETHOD_GPTQ && R->have_windows;
    float *W = NULL;
    double *H = NULL;
    qr_hjob hj = {0};
    qr_mjob j = {0};
    moec_status st = qr_to_float(&src->lm_head, "lm_head", &W, err);
    if (st)
        return st;
    if (gptq) {
        if (!(H = calloc((size_t)(d * d), sizeof *H))) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for the head Hessian");
            goto done;
        }
        qr_progress(R, "head pass", -1);
        if ((st = qr_collect_head(R, H, &hj.n, err)))
            goto done;
        hj.H = H;
        hj.cols = d;
        snprintf(hj.name, sizeof hj.name, "lm_head");
        qr_run_hjobs(R, &hj, 1);
    }
    j = qr_mjob_make(W, V, d, R->r->embed_bits, R->r->embed_group, R->r->clip_grid, hj.hinv, "lm_head");
    j.gtype = P ? P->head : MOEC_GB_NONE;
    if (!(st = qr_run_mjobs(R, &j, 1, err)))
        st = qr_install(R, &R->work->lm_head, &R->out->lm_head, &j.q.f, j.name, err);
done:
    moec_qmatrix_free(&j.q);
    moec_gptq_hinv_free(hj.hinv);
    free(W);
    free(H);
    return st;
}

moec_status qr_quant_attention(qr_recipe_run *R, int l, moec_err *err)
{
    const moec_layer *S = &R->src->layers[l];
    moec_layer *W = &R->work->layers[l], *O = &R->out->layers[l];
    const moec_quant_recipe *r = R->r;
    const int64_t d = R->src->cfg.hidden_size, qdim = (int64_t)R->src->cfg.n_heads * R->src->cfg.head_dim;
    const int bits = r->attn_bits ? r->attn_bits : r->bits;
    const moec_tensor *st_src[4] = {&S->wq, &S->wk, &S->wv, &S->wo};
    moec_tensor *st_w[4] = {&W->wq, &W->wk, &W->wv, &W->wo}, *st_o[4] = {&O->wq, &O->wk, &O->wv, &O->wo};
    static const char *const names[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    float *F[4] = {0};
    double *Hx = NULL, *Ha = NULL;
    qr_hjob *hj = NULL;
    qr_mjob mj[4];
    int nm = 0;
    moec_status st = MOEC_OK;
    char what[64];
    for (int i = 0; i < 4 && !st; i++) {
        snprintf(what, sizeof what, "layer %d %s", l, names[i]);
        st = qr_to_float(st_src[i], what, &F[i], err);
    }
    if (st)
        goto done;
    if (r->method == MOEC_QMETHOD_GPTQ) {
        Hx = calloc((size_t)(d * d), sizeof *Hx);
        Ha = calloc((size_t)(qdim * qdim), sizeof *Ha);
        hj = calloc(2, sizeof *hj);
        if (!Hx || !Ha || !hj) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory for attention Hessians");
            goto done;
        }
        int64_t n = 0;
        qr_progress(R, "attention pass", l);
        if ((st = qr_collect_attn(&R->w, R->work, R->pool, l, Hx, Ha, &n, err)))
            goto done;
        R->rep->passes++;
        hj[0] = (qr_hjob){.H = Hx, .cols = d, .n = n};
        hj[1] = (qr_hjob){.H = Ha, .cols = qdim, .n = n};
        snprintf(hj[0].name, sizeof hj[0].name, "layer %d q/k/v", l);
        snprintf(hj[1].name, sizeof hj[1].name, "layer %d o_proj", l);
        R->rep->layers[l].gptq_retries += qr_run_hjobs(R, hj, 2);
    }
    int which[4]; /* the projection of each job */
    for (int i = 0; i < 4; i++) {
        const moec_gblock g = qr_gtype(R, l, (moec_gslot)(MOEC_GS_Q + i));
        if (r->gplan && !g) /* the plan keeps it in full precision */
            continue;
        mj[nm] = qr_mjob_make(F[i], moec_tensor_rows(st_src[i]), moec_tensor_cols(st_src[i]), bits, r->group,
                              r->clip_grid, hj ? hj[i < 3 ? 0 : 1].hinv : NULL, "model.layers.%d.self_attn.%s", l,
                              names[i]);
        mj[nm].gtype = g;
        which[nm++] = i;
    }
    if ((st = qr_run_mjobs(R, mj, nm, err)))
        goto done;
    for (int i = 0; i < nm && !st; i++)
        st = qr_install(R, st_w[which[i]], st_o[which[i]], &mj[i].q.f, mj[i].name, err);
done:
    for (int i = 0; i < nm; i++)
        moec_qmatrix_free(&mj[i].q);
    qr_hjobs_free(hj, hj ? 2 : 0);
    for (int i = 0; i < 4; i++)
        free(F[i]);
    free(Hx), free(Ha);
    return st;
}

moec_status qr_quant_dense(qr_recipe_run *R, int l, moec_err *err)
{
    const moec_ffn *S = &R->src->layers[l].dense;
    moec_ffn *W = &R->work->layers[l].dense, *O = &R->out->layers[l].dense;
    const moec_tensor *s3[3] = {&S->w1, &S->w3, &S->w2};
    moec_tensor *w3[3] = {&W->w1, &W->w3, &W->w2}, *o3[3] = {&O->w1, &O->w3, &O->w2};
    static const char *const names[3] = {"gate_proj", "up_proj", "down_proj"};
    float *F[3] = {0};
    qr_mjob mj[3];
    int nm = 0;
    moec_status st = MOEC_OK;
    char what[64];
    for (int i = 0; i < 3 && !st; i++) {
        snprintf(what, sizeof what, "layer %d dense %s", l, names[i]);
        if ((st = qr_to_float(s3[i], what, &F[i], err)) == MOEC_OK) {
            mj[nm] = qr_mjob_make(F[i], moec_tensor_rows(s3[i]), moec_tensor_cols(s3[i]), R->r->bits, R->r->group,
                                  R->r->clip_grid, NULL, "model.layers.%d.mlp.%s", l, names[i]);
            mj[nm++].gtype = qr_gtype(R, l, i == 0 ? MOEC_GS_GATE : i == 1 ? MOEC_GS_UP : MOEC_GS_DOWN);
        }
    }
    if (!st)
        st = qr_run_mjobs(R, mj, nm, err);
    for (int i = 0; i < 3 && !st; i++)
        st = qr_install(R, w3[i], o3[i], &mj[i].q.f, mj[i].name, err);
    for (int i = 0; i < nm; i++)
        moec_qmatrix_free(&mj[i].q);
    for (int i = 0; i < 3; i++)
        free(F[i]);
    if (!st && R->r->method == MOEC_QMETHOD_GPTQ)
        qr_note(R, "layer %d: dense MLP quantized by RTN (no calibration hook on dense blocks)", l);
    return st;
}

