#include "quant/gptq.h"

#include <cblas.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

/* Rows of X converted to double per dsyrk call. */
#define HESS_CHUNK 256
/* Rows of W per block in the output-error helpers. */
#define ERR_ROWS 64

struct moec_gptq_hinv {
    int64_t cols;
    float *U;          /* [cols][cols], upper triangle: H'^-1 = UᵀU, processing order */
    int64_t *perm;     /* [cols] processing position -> original column */
    unsigned char *dead; /* [cols] by original column: H_jj == 0 */
    int64_t dead_cols;
    float *diag;       /* [cols] by original column: H_jj / n, the mean squared input (importance) */
};

moec_status moec_hessian_accumulate(double *H, const float *X, int64_t n,
                                    int64_t cols, moec_err *err)
{
    if (!H || (!X && n > 0) || n < 0 || cols < 1 || cols > INT_MAX)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "hessian: bad arguments (n %lld, cols %lld)",
                            (long long)n, (long long)cols);
    if (n == 0)
        return MOEC_OK;
    int64_t chunk = n < HESS_CHUNK ? n : HESS_CHUNK;
    double *buf = malloc((size_t)chunk * (size_t)cols * sizeof *buf);
    if (!buf)
        return moec_err_set(err, MOEC_ERR_NOMEM,
                            "hessian: out of memory for a %lld x %lld chunk",
                            (long long)chunk, (long long)cols);
    for (int64_t t0 = 0; t0 < n; t0 += chunk) {
        int64_t m = n - t0 < chunk ? n - t0 : chunk;
        size_t cnt = (size_t)m * (size_t)cols;
        const float *x = X + (size_t)t0 * (size_t)cols;
        for (size_t i = 0; i < cnt; i++)
            buf[i] = x[i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)m, 1.0,
                    buf, (int)cols, 1.0, H, (int)cols);
    }
    free(buf);
    return MOEC_OK;
}

typedef struct {
    double key;
    int64_t idx;
} rank_item;

static int rank_cmp(const void *a, const void *b)
{
    const rank_item *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Fills the row-major upper triangle of A with s * H in processing order,
 * dead diagonals set to 1, then λ added to the diagonal; returns λ. */
static double fill_damped(double *A, const double *H, int64_t cols, double s,
                          const int64_t *perm, const unsigned char *dead,
                          double percdamp)
{
    double diag_sum = 0.0;
    for (int64_t i = 0; i < cols; i++) {
        int64_t pi = perm[i];
        double *row = A + (size_t)i * (size_t)cols;
        for (int64_t j = i; j < cols; j++) {
            int64_t pj = perm[j];
            int64_t a = pi < pj ? pi : pj, b = pi < pj ? pj : pi;
            row[j] = s * H[(size_t)a * (size_t)cols + (size_t)b];
        }
        if (dead[pi])
            row[i] = 1.0;
        diag_sum += row[i];
    }
    double damp = percdamp * diag_sum / (double)cols;
    for (int64_t i = 0; i < cols; i++)
        A[(size_t)i * (size_t)cols + (size_t)i] += damp;
    return damp;
}

/* Upper Cholesky factor of A^-1 in place. Row-major upper == column-major
 * lower, so LAPACK works on the caller's layout without a transposed copy.
 * Returns the first failing LAPACK info (0 on success). */
static lapack_int chol_inverse_upper(double *A, int64_t cols)
{
    lapack_int n = (lapack_int)cols;
    lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, A, n);
    if (info == 0)
        info = LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', n, A, n);
    if (info == 0)
        info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, A, n);
    return info;
}

void moec_gptq_hinv_free(moec_gptq_hinv *h)
{
    if (!h)
        return;
    free(h->U);
    free(h->perm);
    free(h->dead);
    free(h->diag);
    free(h);
}

void moec_gptq_hinv_parts(const moec_gptq_hinv *h, int64_t *cols, const float **U, const int64_t **perm,
                          const unsigned char **dead, const float **diag)
{
    *cols = h->cols;
    *U = h->U;
    *perm = h->perm;
    *dead = h->dead;
    *diag = h->diag;
}

/* The checks shared by both ways of building a factor. */
static moec_status hinv_check(const double *H, int64_t cols, int64_t n_samples, const moec_gptq_opts *o,
                              const char *name, moec_gptq_hinv **out, moec_err *err)
{
    if (!out || !o || !H)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: GPTQ: missing Hessian, options or output",
                            name);
    *out = NULL;
    if (cols < 1 || cols > INT_MAX || (uint64_t)cols > SIZE_MAX / sizeof(double) / (uint64_t)cols)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: GPTQ: %lld input columns out of range",
                            name, (long long)cols);
    if (n_samples < 1)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: GPTQ: no calibration samples (n = %lld); quantize it "
                            "with RTN instead",
                            name, (long long)n_samples);
    if (!(o->percdamp >= 0.0) || !isfinite(o->percdamp) || o->damp_retries < 0)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: GPTQ: percdamp %g / damp_retries %d (expected >= 0)",
                            name, o->percdamp, o->damp_retries);
    for (int64_t i = 0; i < cols; i++) {
        const double *row = H + (size_t)i * (size_t)cols;
        if (!(row[i] >= 0.0))
            return moec_err_set(err, MOEC_ERR_NUMERIC,
                                "%s: GPTQ: Hessian diagonal [%lld] = %g (expected finite >= 0)",
                                name, (long long)i, row[i]);
        for (int64_t j = i + 1; j < cols; j++)
            if (!isfinite(row[j]))
                return moec_err_set(err, MOEC_ERR_NUMERIC,
                                    "%s: GPTQ: Hessian [%lld][%lld] is not finite", name,
                                    (long long)i, (long long)j);
    }
    return MOEC_OK;
}

/* Builds the factor into A ([cols][cols] doubles, which it keeps, narrowed
 * to float). When A is H itself (in place, identity order only), H's upper
 * triangle is first mirrored into the lower one, which LAPACK never reads
 * (row-major upper = column-major lower, the triangle it works on), so a
 * failed factorisation can start again from H. Either way the arithmetic
 * on the upper triangle is the same, so are the results. */
static moec_status hinv_build(const double *H, double *A, int64_t cols, int64_t n_samples,
                              const moec_gptq_opts *o, const char *name, moec_gptq_hinv **out,
                              moec_gptq_report *rep, moec_err *err)
{
    const bool inplace = A == H;
    moec_status st = MOEC_OK;
    moec_gptq_hinv *h = calloc(1, sizeof *h);
    double *diag = NULL;
    rank_item *rank = NULL;
    if (!h)
        goto nomem;
    h->cols = cols;
    h->perm = malloc((size_t)cols * sizeof *h->perm);
    h->dead = malloc((size_t)cols);
    h->diag = malloc((size_t)cols * sizeof *h->diag);
    if (!h->perm || !h->dead || !h->diag)
        goto nomem;
    for (int64_t j = 0; j < cols; j++) {
        h->diag[j] = (float)(H[(size_t)j * (size_t)cols + (size_t)j] / (double)n_samples);
        h->dead[j] = H[(size_t)j * (size_t)cols + (size_t)j] == 0.0;
        h->dead_cols += h->dead[j];
        h->perm[j] = j;
    }
    if (h->dead_cols == cols) {
        st = moec_err_set(err, MOEC_ERR_NUMERIC,
                          "%s: GPTQ: every input channel is zero over %lld samples",
                          name, (long long)n_samples);
        goto fail;
    }
    if (o->act_order) {
        rank = malloc((size_t)cols * sizeof *rank);
        if (!rank)
            goto nomem;
        for (int64_t j = 0; j < cols; j++) {
            /* The reference sorts after setting dead diagonals to 1. */
            rank[j].key = h->dead[j] ? 1.0
                                     : 2.0 / (double)n_samples *
                                           H[(size_t)j * (size_t)cols + (size_t)j];
            rank[j].idx = j;
        }
        qsort(rank, (size_t)cols, sizeof *rank, rank_cmp);
        for (int64_t j = 0; j < cols; j++)
            h->perm[j] = rank[j].idx;
    }
    if (inplace) {
        if (!(diag = malloc((size_t)cols * sizeof *diag)))
            goto nomem;
        for (int64_t i = 0; i < cols; i++) {
            diag[i] = A[(size_t)i * (size_t)cols + (size_t)i];
            for (int64_t j = i + 1; j < cols; j++)
                A[(size_t)j * (size_t)cols + (size_t)i] = A[(size_t)i * (size_t)cols + (size_t)j];
        }
    }

    const double scale = 2.0 / (double)n_samples;
    double percdamp = o->percdamp, damp = 0.0;
    int tries = 0;
    lapack_int info;
    for (;;) {
        if (inplace && tries > 0) /* H again, from the mirror */
            for (int64_t i = 0; i < cols; i++) {
                A[(size_t)i * (size_t)cols + (size_t)i] = diag[i];
                for (int64_t j = i + 1; j < cols; j++)
                    A[(size_t)i * (size_t)cols + (size_t)j] = A[(size_t)j * (size_t)cols + (size_t)i];
            }
        damp = fill_damped(A, inplace ? A : H, cols, scale, h->perm, h->dead, percdamp);
        info = chol_inverse_upper(A, cols);
        if (info <= 0 || tries >= o->damp_retries)
            break;
        tries++;
        percdamp = percdamp > 0.0 ? percdamp * 10.0 : 0.01;
    }
    if (info != 0) {
        st = info > 0 ? moec_err_set(err, MOEC_ERR_NUMERIC,
                                     "%s: GPTQ: Hessian (%lld x %lld, %lld samples) not "
                                     "positive definite even with damping %g of the mean "
                                     "diagonal after %d retries",
                                     name, (long long)cols, (long long)cols,
                                     (long long)n_samples, percdamp, tries)
                      : moec_err_set(err, MOEC_ERR_INTERNAL,
                                     "%s: GPTQ: LAPACK argument %d rejected", name,
                                     (int)-info);
        goto fail;
    }

    /* Narrow to float row by row into the same allocation: row i's floats land
     * in bytes already consumed by rows <= i of doubles. */
    {
        float *tmp = malloc((size_t)cols * sizeof *tmp);
        if (!tmp)
            goto nomem;
        unsigned char *base = (unsigned char *)A;
        for (int64_t i = 0; i < cols; i++) {
            const double *src = A + (size_t)i * (size_t)cols;
            for (int64_t j = 0; j < cols; j++)
                tmp[j] = j >= i ? (float)src[j] : 0.0f;
            memcpy(base + (size_t)i * (size_t)cols * sizeof(float), tmp,
                   (size_t)cols * sizeof(float));
        }
        free(tmp);
        void *shrunk = realloc(A, (size_t)cols * (size_t)cols * sizeof(float));
        h->U = shrunk ? shrunk : (void *)A;
    }
    free(rank);
    free(diag);
    if (rep) {
        rep->percdamp_used = percdamp;
        rep->damp = damp;
        rep->retries = tries;
        rep->dead_cols = h->dead_cols;
    }
    *out = h;
    return MOEC_OK;

nomem:
    st = moec_err_set(err, MOEC_ERR_NOMEM,
                      "%s: GPTQ: out of memory for a %lld x %lld Hessian", name,
                      (long long)cols, (long long)cols);
fail:
    free(A);
    free(rank);
    free(diag);
    moec_gptq_hinv_free(h);
    return st;
}

moec_status moec_gptq_hinv_new(const double *H, int64_t cols, int64_t n_samples,
                               const moec_gptq_opts *o, const char *name,
                               moec_gptq_hinv **out, moec_gptq_report *rep,
                               moec_err *err)
{
    if (!name)
        name = "matrix";
    moec_status st = hinv_check(H, cols, n_samples, o, name, out, err);
    if (st)
        return st;
    double *A = calloc((size_t)cols * (size_t)cols, sizeof *A);
    if (!A)
        return moec_err_set(err, MOEC_ERR_NOMEM,
                            "%s: GPTQ: out of memory for a %lld x %lld Hessian", name,
                            (long long)cols, (long long)cols);
    return hinv_build(H, A, cols, n_samples, o, name, out, rep, err);
}

moec_status moec_gptq_hinv_from(double *H, int64_t cols, int64_t n_samples,
                                const moec_gptq_opts *o, const char *name,
                                moec_gptq_hinv **out, moec_gptq_report *rep,
                                moec_err *err)
{
    if (!name)
        name = "matrix";
    moec_status st = hinv_check(H, cols, n_samples, o, name, out, err);
    if (st) {
        free(H);
        return st;
    }
    if (o->act_order) { /* a permuted copy cannot share H's storage */
        st = moec_gptq_hinv_new(H, cols, n_samples, o, name, out, rep, err);
        free(H);
        return st;
    }
    return hinv_build(H, H, cols, n_samples, o, name, out, rep, err);
}

moec_status moec_gptq_quantize_with(const float *W, int64_t rows, int64_t cols,
                                    const moec_gptq_hinv *h,
                                    const moec_gptq_opts *o, const char *name,
                                    moec_qmatrix *out, moec_gptq_report *rep,
                                    moec_err *err)
{
    if (!name)
        name = "matrix";
    if (out)
        memset(out, 0, sizeof *out);
    if (!W || !h || !o || !out)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "%s: GPTQ: missing weights, factor, options or output", name);
    moec_status st = moec_quant_opts_check(&o->q, name, err);
    if (st != MOEC_OK)
        return st;
    if (o->blocksize < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: GPTQ: block size %d < 1", name,
                            o->blocksize);
    if (rows < 1 || rows > INT_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: GPTQ: %lld rows out of range", name,
                            (long long)rows);
    if (cols != h->cols)
        return moec_err_set(err, MOEC_ERR_SHAPE,
                            "%s: GPTQ: weight has %lld input columns, Hessian %lld", name,
                            (long long)cols, (long long)h->cols);
    const int group = o->q.group == 0 || o->q.group > cols ? (int)cols : o->q.group;
    st = moec_qmatrix_alloc(out, rows, cols, o->q.bits, group, o->q.symmetric, err);
    if (st != MOEC_OK)
        return moec_err_prefix(err, "%s", name);

    const int64_t ng = moec_qformat_ngroups(&out->f);
    const int64_t bs = o->blocksize < cols ? o->blocksize : cols;
    const int maxq = (1 << o->q.bits) - 1;
    const float *U = h->U;
    const int64_t *perm = h->perm;
    const size_t rc = (size_t)rows * (size_t)cols;

    float *Wp = malloc(rc * sizeof *Wp);           /* [rows][cols] processing order */
    float *Err = malloc((size_t)rows * (size_t)bs * sizeof *Err); /* [rows][bs] */
    uint8_t *codes = malloc(rc);                    /* [rows][cols] original order */
    uint16_t *scales = malloc((size_t)rows * (size_t)ng * sizeof *scales);
    uint8_t *zeros = malloc((size_t)rows * (size_t)ng);
    int64_t *invperm = malloc((size_t)cols * sizeof *invperm);
    int64_t *first_pos = malloc((size_t)ng * sizeof *first_pos);
    float *gbuf = malloc((size_t)group * sizeof *gbuf);
    if (!Wp || !Err || !codes || !scales || !zeros || !invperm || !first_pos || !gbuf) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: GPTQ: out of memory for [%lld][%lld]",
                          name, (long long)rows, (long long)cols);
        goto done;
    }
    for (int64_t p = 0; p < cols; p++)
        invperm[perm[p]] = p;
    for (int64_t g = 0; g < ng; g++)
        first_pos[g] = INT64_MAX;
    for (int64_t c = 0; c < cols; c++)
        if (invperm[c] < first_pos[c / group])
            first_pos[c / group] = invperm[c];
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + (size_t)r * (size_t)cols;
        float *wp = Wp + (size_t)r * (size_t)cols;
        for (int64_t p = 0; p < cols; p++) {
            int64_t c = perm[p];
            if (!isfinite(w[c])) {
                st = moec_err_set(err, MOEC_ERR_NUMERIC,
                                  "%s: weight [%lld][%lld] is not finite", name,
                                  (long long)r, (long long)c);
                goto done;
            }
            wp[p] = h->dead[c] ? 0.0f : w[c];
        }
    }

    double loss = 0.0;
    for (int64_t i1 = 0; i1 < cols; i1 += bs) {
        const int64_t i2 = i1 + bs < cols ? i1 + bs : cols;
        for (int64_t r = 0; r < rows; r++) {
            float *wr = Wp + (size_t)r * (size_t)cols;
            float *er = Err + (size_t)r * (size_t)bs;
            uint16_t *sr = scales + (size_t)r * (size_t)ng;
            uint8_t *zr = zeros + (size_t)r * (size_t)ng;
            for (int64_t p = i1; p < i2; p++) {
                const int64_t c = perm[p], g = c / group;
                if (first_pos[g] == p) {
                    int64_t c0 = g * group, c1 = c0 + group < cols ? c0 + group : cols;
                    for (int64_t cc = c0; cc < c1; cc++) {
                        int64_t pp = invperm[cc];
                        float v;
                        if (o->static_groups) {
                            v = h->dead[cc] ? 0.0f : W[(size_t)r * (size_t)cols + (size_t)cc];
                        } else {
                            v = wr[pp];
                            /* Columns past the block still lack this block's updates. */
                            for (int64_t k = i1; pp >= i2 && k < p; k++)
                                v -= er[k - i1] * U[(size_t)k * (size_t)cols + (size_t)pp];
                        }
                        gbuf[cc - c0] = v;
                    }
                    int z;
                    if (!moec_rtn_group_params(gbuf, c1 - c0, &o->q, &sr[g], &z)) {
                        st = moec_err_set(err, MOEC_ERR_NUMERIC,
                                          "%s: GPTQ: row %lld group %lld needs a scale "
                                          "beyond F16",
                                          name, (long long)r, (long long)g);
                        goto done;
                    }
                    zr[g] = (uint8_t)z;
                }
                const float s = moec_f16_to_f32(sr[g]);
                const int z = zr[g];
                const float x = wr[p];
                const int q = moec_rtn_code(x, s, z, maxq);
                codes[(size_t)r * (size_t)cols + (size_t)c] = (uint8_t)q;
                const float d = U[(size_t)p * (size_t)cols + (size_t)p];
                const float diff = x - s * (float)(q - z);
                const float e = diff / d;
                loss += 0.5 * (double)e * (double)e;
                er[p - i1] = e;
                const float *urow = U + (size_t)p * (size_t)cols;
                for (int64_t k = p + 1; k < i2; k++)
                    wr[k] -= e * urow[k];
            }
        }
        if (i2 < cols)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows,
                        (int)(cols - i2), (int)(i2 - i1), -1.0f, Err, (int)bs,
                        U + (size_t)i1 * (size_t)cols + (size_t)i2, (int)cols, 1.0f,
                        Wp + i2, (int)cols);
    }
    if (!isfinite(loss)) {
        st = moec_err_set(err, MOEC_ERR_NUMERIC, "%s: GPTQ: loss is not finite", name);
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        moec_qmatrix_set_row(out, r, codes + (size_t)r * (size_t)cols,
                             scales + (size_t)r * (size_t)ng, zeros + (size_t)r * (size_t)ng);
    if (rep) {
        rep->loss = loss;
        rep->dead_cols = h->dead_cols;
    }

done:
    free(Wp);
    free(Err);
    free(codes);
    free(scales);
    free(zeros);
    free(invperm);
    free(first_pos);
    free(gbuf);
    if (st != MOEC_OK)
        moec_qmatrix_free(out);
    return st;
}

moec_status moec_gptq_quantize(const float *W, int64_t rows, int64_t cols,
                               const double *H, int64_t n_samples,
                               const moec_gptq_opts *o, const char *name,
                               moec_qmatrix *out, moec_gptq_report *rep,
                               moec_err *err)
{
    moec_gptq_hinv *h;
    moec_status st = moec_gptq_hinv_new(H, cols, n_samples, o, name, &h, rep, err);
    if (st != MOEC_OK) {
        if (out)
            memset(out, 0, sizeof *out);
        return st;
    }
    st = moec_gptq_quantize_with(W, rows, cols, h, o, name, out, rep, err);
    moec_gptq_hinv_free(h);
    return st;
}

moec_status moec_quant_output_error(const float *X, int64_t n, const float *W,
                                    const moec_qformat *q, double *out,
                                    moec_err *err)
{
    if (!X || !W || !q || !out || n < 1 || q->cols > INT_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "output error: bad arguments (n %lld)",
                            (long long)n);
    const int64_t rows = q->rows, cols = q->cols;
    const int64_t rb = rows < ERR_ROWS ? rows : ERR_ROWS;
    const int64_t nb = n < 4096 ? n : 4096;
    float *D = malloc((size_t)rb * (size_t)cols * sizeof *D);
    float *Y = malloc((size_t)nb * (size_t)rb * sizeof *Y);
    if (!D || !Y) {
        free(D);
        free(Y);
        return moec_err_set(err, MOEC_ERR_NOMEM, "output error: out of memory");
    }
    double sum = 0.0;
    for (int64_t r0 = 0; r0 < rows; r0 += rb) {
        int64_t m = rows - r0 < rb ? rows - r0 : rb;
        moec_qformat_dequant_rows(q, r0, r0 + m, D);
        const float *w = W + (size_t)r0 * (size_t)cols;
        for (size_t i = 0; i < (size_t)m * (size_t)cols; i++)
            D[i] = w[i] - D[i];
        for (int64_t t0 = 0; t0 < n; t0 += nb) {
            int64_t k = n - t0 < nb ? n - t0 : nb;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)k, (int)m,
                        (int)cols, 1.0f, X + (size_t)t0 * (size_t)cols, (int)cols, D,
                        (int)cols, 0.0f, Y, (int)m);
            for (size_t i = 0; i < (size_t)k * (size_t)m; i++)
                sum += (double)Y[i] * (double)Y[i];
        }
    }
    free(D);
    free(Y);
    *out = sum;
    return MOEC_OK;
}

moec_status moec_quant_output_error_h(const double *H, const float *W,
                                      const moec_qformat *q, double *out,
                                      moec_err *err)
{
    if (!H || !W || !q || !out || q->cols > INT_MAX)
        return moec_err_set(err, MOEC_ERR_ARG, "output error: bad arguments");
    const int64_t rows = q->rows, cols = q->cols;
    const int64_t rb = rows < ERR_ROWS ? rows : ERR_ROWS;
    float *Wq = malloc((size_t)rb * (size_t)cols * sizeof *Wq);
    double *D = malloc((size_t)rb * (size_t)cols * sizeof *D);
    double *T = malloc((size_t)rb * (size_t)cols * sizeof *T);
    if (!Wq || !D || !T) {
        free(Wq);
        free(D);
        free(T);
        return moec_err_set(err, MOEC_ERR_NOMEM, "output error: out of memory");
    }
    double sum = 0.0;
    for (int64_t r0 = 0; r0 < rows; r0 += rb) {
        int64_t m = rows - r0 < rb ? rows - r0 : rb;
        moec_qformat_dequant_rows(q, r0, r0 + m, Wq);
        const float *w = W + (size_t)r0 * (size_t)cols;
        for (size_t i = 0; i < (size_t)m * (size_t)cols; i++)
            D[i] = (double)w[i] - (double)Wq[i];
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)m, (int)cols, 1.0, H,
                    (int)cols, D, (int)cols, 0.0, T, (int)cols);
        for (size_t i = 0; i < (size_t)m * (size_t)cols; i++)
            sum += D[i] * T[i];
    }
    free(Wq);
    free(D);
    free(T);
    *out = sum;
    return MOEC_OK;
}
