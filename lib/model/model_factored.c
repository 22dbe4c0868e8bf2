/* model_factored.c - routed-expert weights stored as two factors (model.h,
 * moec_factored): parameter counts and the dense product for export. */
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/qformat.h"
#include "model/model.h"


static int64_t weight_params(const moec_tensor *dense, const moec_factored *fw)
{
    return moec_factored_present(fw) ? moec_tensor_numel(&fw->u) + moec_tensor_numel(&fw->v)
                                     : moec_tensor_numel(dense);
}

int64_t moec_ffn_params(const moec_ffn *f)
{
    return weight_params(&f->w1, &f->w1f) + weight_params(&f->w3, &f->w3f) + weight_params(&f->w2, &f->w2f);
}

int64_t moec_ffn_inner(const moec_ffn *f)
{
    return moec_factored_present(&f->w1f) ? f->w1f.u.shape[0] : moec_tensor_rows(&f->w1);
}

int64_t moec_ffn_in(const moec_ffn *f)
{
    return moec_factored_present(&f->w1f) ? moec_tensor_cols(&f->w1f.v) : moec_tensor_cols(&f->w1);
}

bool moec_model_has_factored(const moec_model *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int e = 0; e < m->layers[l].n_experts; e++) {
            const moec_ffn *f = &m->layers[l].experts[e];
            if (moec_factored_present(&f->w1f) || moec_factored_present(&f->w3f) || moec_factored_present(&f->w2f))
                return true;
        }
    return false;
}

/* Row r of a factor in float32: widened, or dequantized (factors may be
 * group-wise quantized, merge_quant.h). */
static void factor_row(const moec_tensor *t, int64_t r, float *out)
{
    if (t->dtype == MOEC_DT_QUANT) {
        moec_qformat_dequant_row(t->q, r, out);
        return;
    }
    const int64_t cols = t->shape[1];
    moec_to_f32(out, (const char *)t->data + (size_t)(r * cols) * moec_dtype_size(t->dtype), t->dtype, (size_t)cols);
}

/* dense = u · v in float32 (one row of u at a time against the widened v). */
static moec_status densify_one(moec_model *m, moec_tensor *dense, moec_factored *fw, moec_dtype dtype, int l, int e,
                               moec_err *err)
{
    const moec_tensor *u = &fw->u, *v = &fw->v;
    for (int i = 0; i < 2; i++) {
        const moec_tensor *t = i ? v : u;
        if (!(t->dtype == MOEC_DT_QUANT ? t->q != NULL : moec_dtype_is_compute(t->dtype) && t->data != NULL))
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                "layer %d expert %d: a factor is %s without data; densify needs F32, F16, BF16 or "
                                "group-wise quantized factors",
                                l, e, moec_dtype_name(t->dtype));
    }
    if (u->ndim != 2 || v->ndim != 2 || u->shape[1] != v->shape[0])
        return moec_err_set(err, MOEC_ERR_SHAPE, "layer %d expert %d: factors [%lld][%lld] x [%lld][%lld] do not chain",
                            l, e, (long long)u->shape[0], (long long)u->shape[1], (long long)v->shape[0],
                            (long long)v->shape[1]);
    const int64_t rows = u->shape[0], rank = u->shape[1], cols = v->shape[1];
    float *vf = malloc((size_t)(rank * cols) * sizeof *vf), *uf = malloc((size_t)rank * sizeof *uf),
          *row = malloc((size_t)cols * sizeof *row);
    moec_tensor t;
    moec_status st = vf && uf && row ? moec_model_new_tensor(m, &t, dtype, rows, cols, err)
                                     : moec_err_set(err, MOEC_ERR_NOMEM, "densify: out of memory");
    if (st == MOEC_OK) {
        for (int64_t k = 0; k < rank; k++)
            factor_row(v, k, vf + (size_t)(k * cols));
        const size_t es = moec_dtype_size(dtype);
        for (int64_t r = 0; r < rows; r++) {
            factor_row(u, r, uf);
            for (int64_t c = 0; c < cols; c++)
                row[c] = 0.0f;
            for (int64_t k = 0; k < rank; k++) {
                const float a = uf[k], *vr = vf + (size_t)(k * cols);
                for (int64_t c = 0; c < cols; c++)
                    row[c] += a * vr[c];
            }
            moec_from_f32((char *)t.data + (size_t)(r * cols) * es, row, dtype, (size_t)cols);
        }
        *dense = t;
        memset(fw, 0, sizeof *fw);
    }
    free(vf);
    free(uf);
    free(row);
    return st;
}

moec_status moec_model_densify_layer(moec_model *m, int l, moec_dtype dtype, moec_err *err)
{
    if (!moec_dtype_is_compute(dtype))
        return moec_err_set(err, MOEC_ERR_ARG, "densify: target dtype %s is not F32, F16 or BF16",
                            moec_dtype_name(dtype));
    for (int e = 0; e < m->layers[l].n_experts; e++) {
        moec_ffn *f = &m->layers[l].experts[e];
        moec_tensor *dense[3] = {&f->w1, &f->w3, &f->w2};
        moec_factored *fw[3] = {&f->w1f, &f->w3f, &f->w2f};
        for (int k = 0; k < 3; k++)
            if (moec_factored_present(fw[k])) {
                moec_status st = densify_one(m, dense[k], fw[k], dtype, l, e, err);
                if (st)
                    return st;
            }
    }
    return MOEC_OK;
}

moec_status moec_model_densify(moec_model *m, moec_dtype dtype, moec_err *err)
{
    moec_status st = MOEC_OK;
    for (int l = 0; l < m->cfg.n_layers && !st; l++)
        st = moec_model_densify_layer(m, l, dtype, err);
    return st;
}
