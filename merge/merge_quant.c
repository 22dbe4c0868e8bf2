/* merge_quant.c - RTN quantization of a merged model's expert weights and
 * factors (merge_quant.h). */
#include "merge/merge_quant.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/dtype.h"
#include "core/qformat.h"
#include "model/model_moec.h"

static moec_status quantize_one(moec_model *m, moec_tensor *t, const moec_quant_opts *q, const char *name,
                                moec_merge_quant_report *rep, moec_err *err)
{
    if (!moec_tensor_present(t))
        return MOEC_OK;
    if (t->dtype == MOEC_DT_QUANT || !moec_dtype_is_compute(t->dtype))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "%s is %s; expected F32, F16 or BF16", name,
                            moec_dtype_name(t->dtype));
    const int64_t rows = t->shape[0], cols = t->ndim > 1 ? t->shape[1] : 1;
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    if (!w)
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", name);
    moec_to_f32(w, t->data, t->dtype, (size_t)(rows * cols));
    moec_qmatrix qm = {0};
    moec_status st = moec_rtn_quantize(w, rows, cols, q, name, &qm, err);
    free(w);
    if (st == MOEC_OK)
        st = moec_model_set_quant(m, t, &qm.f, name, err);
    if (st == MOEC_OK) {
        rep->tensors++;
        rep->params += rows * cols;
        rep->bytes += qm.f.codes_bytes + qm.f.scales_bytes + qm.f.zeros_bytes;
    }
    moec_qmatrix_free(&qm);
    return st;
}

moec_status moec_merge_quantize_layer(moec_model *m, int l, const moec_quant_opts *q, moec_merge_quant_report *rep,
                                      moec_err *err)
{
    moec_merge_quant_report local = {0};
    if (!rep)
        rep = &local;
    moec_status st = moec_quant_opts_check(q, "merged experts", err);
    for (int e = 0; e < m->layers[l].n_experts && !st; e++) {
        moec_ffn *f = &m->layers[l].experts[e];
        moec_tensor *t[9] = {&f->w1, &f->w3, &f->w2, &f->w1f.u, &f->w1f.v, &f->w3f.u, &f->w3f.v, &f->w2f.u, &f->w2f.v};
        static const char *const kinds[9] = {"w1", "w3", "w2", "w1.u", "w1.v", "w3.u", "w3.v", "w2.u", "w2.v"};
        for (int k = 0; k < 9 && !st; k++) {
            char name[96];
            snprintf(name, sizeof name, "layer %d expert %d %s", l, e, kinds[k]);
            st = quantize_one(m, t[k], q, name, rep, err);
        }
    }
    return st;
}

moec_status moec_merge_quantize_experts(moec_model *m, const moec_quant_opts *q, moec_merge_quant_report *rep,
                                        moec_err *err)
{
    moec_merge_quant_report local = {0};
    if (!rep)
        rep = &local;
    *rep = (moec_merge_quant_report){0};
    moec_status st = MOEC_OK;
    for (int l = 0; l < m->cfg.n_layers && !st; l++)
        st = moec_merge_quantize_layer(m, l, q, rep, err);
    return st;
}
