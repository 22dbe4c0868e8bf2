/* kquant_grid.c - GPTQ whose grid is a llama.cpp block type's
 * (kquant_grid.h). The column loop is gptq.c's; only the grid differs:
 * parameters per block of 32 or 256 columns chosen by moec_gblock_choose
 * under the columns' importance, codes by that grid's rounding. */
#include "quant/kquant_grid.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static moec_status rtn_blocks(const float *W, int64_t rows, int64_t cols, moec_gblock t, moec_qmatrix *out)
{
    const size_t rb = moec_gblock_row_bytes(t, cols);
    for (int64_t r = 0; r < rows; r++)
        moec_gblock_quantize(t, W + (size_t)r * (size_t)cols, NULL, out->codes + (size_t)r * rb, cols);
    return MOEC_OK;
}

moec_status moec_gptq_quantize_blocks(const float *W, int64_t rows, int64_t cols, const moec_gptq_hinv *h,
                                      moec_gblock t, const moec_gptq_opts *o, const char *name, moec_qmatrix *out,
                                      moec_gptq_report *rep, moec_err *err)
{
    if (!name)
        name = "matrix";
    if (out)
        memset(out, 0, sizeof *out);
    const moec_gblock_traits *tr = moec_gblock_info(t);
    if (!W || !o || !out || !tr)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: GPTQ (llama.cpp grid): missing weights, options, output or type",
                            name);
    if (rows < 1 || rows > INT_MAX || o->blocksize < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: GPTQ (llama.cpp grid): %lld rows, block size %d", name,
                            (long long)rows, o->blocksize);
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++)
        if (!isfinite(W[i]))
            return moec_err_set(err, MOEC_ERR_NUMERIC, "%s: weight [%lld][%lld] is not finite", name,
                                (long long)(i / (size_t)cols), (long long)(i % (size_t)cols));
    moec_status st = moec_qmatrix_alloc_blocks(out, rows, cols, t, err);
    if (st)
        return moec_err_prefix(err, "%s", name);
    if (!h)
        return rtn_blocks(W, rows, cols, t, out);

    const float *U, *diag;
    const int64_t *perm;
    const unsigned char *dead;
    int64_t hcols;
    moec_gptq_hinv_parts(h, &hcols, &U, &perm, &dead, &diag);
    if (hcols != cols) {
        moec_qmatrix_free(out);
        return moec_err_set(err, MOEC_ERR_SHAPE, "%s: GPTQ: weight has %lld input columns, Hessian %lld", name,
                            (long long)cols, (long long)hcols);
    }
    const int B = tr->block, S = tr->sub, ns = B / S, z = tr->zero, maxq = (1 << tr->bits) - 1;
    const int64_t nb = cols / B;
    const int64_t bs = o->blocksize < cols ? o->blocksize : cols;
    const size_t rc = (size_t)rows * (size_t)cols, rb = moec_gblock_row_bytes(t, cols);
    float *Wp = malloc(rc * sizeof *Wp);
    float *Err = malloc((size_t)rows * (size_t)bs * sizeof *Err);
    uint8_t *codes = malloc(rc);
    moec_gblock_params *par = malloc((size_t)rows * (size_t)nb * sizeof *par);
    float *A = malloc((size_t)rows * (size_t)nb * (size_t)ns * sizeof *A);
    float *Bv = malloc((size_t)rows * (size_t)nb * (size_t)ns * sizeof *Bv);
    int64_t *invperm = malloc((size_t)cols * sizeof *invperm), *first_pos = malloc((size_t)nb * sizeof *first_pos);
    float *imp = malloc((size_t)cols * sizeof *imp), v[MOEC_GB_MAX_BLOCK];
    double loss = 0.0;
    if (!Wp || !Err || !codes || !par || !A || !Bv || !invperm || !first_pos || !imp) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: GPTQ: out of memory for [%lld][%lld]", name, (long long)rows,
                          (long long)cols);
        goto done;
    }
    /* importance: the mean squared input; a floor keeps a block of dead
     * (never active) columns from weighing nothing at all */
    double mean = 0.0;
    for (int64_t c = 0; c < cols; c++)
        mean += dead[c] ? 0.0 : diag[c];
    mean /= (double)cols;
    for (int64_t c = 0; c < cols; c++)
        imp[c] = (dead[c] ? 0.0f : diag[c]) + (float)(1e-6 * mean) + 1e-30f;
    for (int64_t p = 0; p < cols; p++)
        invperm[perm[p]] = p;
    for (int64_t g = 0; g < nb; g++)
        first_pos[g] = INT64_MAX;
    for (int64_t c = 0; c < cols; c++)
        if (invperm[c] < first_pos[c / B])
            first_pos[c / B] = invperm[c];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t p = 0; p < cols; p++)
            Wp[(size_t)r * cols + p] = dead[perm[p]] ? 0.0f : W[(size_t)r * cols + perm[p]];

    for (int64_t i1 = 0; i1 < cols; i1 += bs) {
        const int64_t i2 = i1 + bs < cols ? i1 + bs : cols;
        for (int64_t r = 0; r < rows; r++) {
            float *wr = Wp + (size_t)r * (size_t)cols, *er = Err + (size_t)r * (size_t)bs;
            float *ar = A + (size_t)r * (size_t)nb * ns, *br = Bv + (size_t)r * (size_t)nb * ns;
            for (int64_t p = i1; p < i2; p++) {
                const int64_t c = perm[p], g = c / B;
                if (first_pos[g] == p) {
                    for (int64_t cc = g * B; cc < (g + 1) * B; cc++) {
                        const int64_t pp = invperm[cc];
                        float x;
                        if (o->static_groups) {
                            x = dead[cc] ? 0.0f : W[(size_t)r * (size_t)cols + (size_t)cc];
                        } else {
                            x = wr[pp];
                            /* columns past the block still lack this block's updates */
                            for (int64_t k = i1; pp >= i2 && k < p; k++)
                                x -= er[k - i1] * U[(size_t)k * (size_t)cols + (size_t)pp];
                        }
                        v[cc - g * B] = x;
                    }
                    moec_gblock_params *pg = &par[(size_t)r * (size_t)nb + (size_t)g];
                    moec_gblock_grid gr;
                    moec_gblock_choose(t, v, imp + g * B, pg);
                    moec_gblock_grid_of(t, pg, &gr);
                    memcpy(ar + g * ns, gr.a, (size_t)ns * sizeof *ar);
                    memcpy(br + g * ns, gr.b, (size_t)ns * sizeof *br);
                }
                const int s = (int)((c % B) / S);
                const float a = ar[g * ns + s], b = br[g * ns + s], x = wr[p];
                int q = z;
                if (a != 0.0f) {
                    const float tq = rintf((x + b) / a) + (float)z;
                    q = !(tq >= 0.0f) ? 0 : tq > (float)maxq ? maxq : (int)tq;
                }
                codes[(size_t)r * (size_t)cols + (size_t)c] = (uint8_t)q;
                const float what = a * (float)(q - z) - b;
                const float e = (x - what) / U[(size_t)p * (size_t)cols + (size_t)p];
                loss += 0.5 * (double)e * (double)e;
                er[p - i1] = e;
                const float *urow = U + (size_t)p * (size_t)cols;
                for (int64_t k = p + 1; k < i2; k++)
                    wr[k] -= e * urow[k];
            }
        }
        if (i2 < cols)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)(cols - i2), (int)(i2 - i1), -1.0f,
                        Err, (int)bs, U + (size_t)i1 * (size_t)cols + (size_t)i2, (int)cols, 1.0f, Wp + i2, (int)cols);
    }
    if (!isfinite(loss)) {
        st = moec_err_set(err, MOEC_ERR_NUMERIC, "%s: GPTQ: loss is not finite", name);
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < nb; g++)
            moec_gblock_pack(t, &par[(size_t)r * (size_t)nb + (size_t)g], codes + (size_t)r * (size_t)cols + g * B,
                             out->codes + (size_t)r * rb + (size_t)g * (size_t)tr->bytes);
    if (rep)
        rep->loss = loss;
done:
    free(Wp), free(Err), free(codes), free(par), free(A), free(Bv), free(invperm), free(first_pos), free(imp);
    if (st)
        moec_qmatrix_free(out);
    return st;
}
