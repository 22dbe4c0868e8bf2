#include "merge/subspace.h"

#include <cblas.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "merge/average.h"

/* Allocation ledger, so the report can state the peak this call reached. */
typedef struct ledger {
    size_t cur, peak;
} ledger;

static void *take(ledger *l, size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (p) {
        l->cur += bytes;
        if (l->cur > l->peak)
            l->peak = l->cur;
    }
    return p;
}

static void give(ledger *l, void *p, size_t bytes)
{
    if (p) {
        free(p);
        l->cur -= bytes;
    }
}

/* The concatenation as LAPACK sees it: column-major Mc x Nc with lda = Mc.
 * LEFT: row-major [rows][m*cols] is column-major (m*cols) x rows.
 * RIGHT: row-major [m*rows][cols] is column-major cols x (m*rows). */
typedef struct svd_dims {
    lapack_int Mc, Nc, mn;
    lapack_int ldu, ldvt; /* jobz = 'O': only the block not overwritten onto A is stored apart */
} svd_dims;

static moec_status svd_dims_for(int m, int rows, int cols, moec_share_side share, svd_dims *d,
                                moec_err *err)
{
    int64_t Mc = share == MOEC_SHARE_LEFT ? (int64_t)m * cols : cols;
    int64_t Nc = share == MOEC_SHARE_LEFT ? rows : (int64_t)m * rows;
    if (Mc * Nc > INT32_MAX)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "subspace: concatenation of %d members of [%d][%d] has %lld elements; "
                            "LAPACK's 32-bit indices allow at most %d",
                            m, rows, cols, (long long)(Mc * Nc), INT32_MAX);
    d->Mc = (lapack_int)Mc;
    d->Nc = (lapack_int)Nc;
    d->mn = d->Mc < d->Nc ? d->Mc : d->Nc;
    d->ldu = d->Mc >= d->Nc ? 1 : d->Mc;
    d->ldvt = d->Mc >= d->Nc ? d->Nc : 1;
    return MOEC_OK;
}

static moec_status query_lwork(const svd_dims *d, moec_svd_precision prec, size_t *lwork,
                               moec_err *err)
{
    lapack_int info, iw = 0;
    double q;
    if (prec == MOEC_SVD_DOUBLE) {
        double dummy = 0.0, wq = 0.0;
        info = LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'O', d->Mc, d->Nc, &dummy, d->Mc, &dummy, &dummy,
                                   d->ldu, &dummy, d->ldvt, &wq, -1, &iw);
        q = wq;
    } else {
        float dummy = 0.0f, wq = 0.0f;
        info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'O', d->Mc, d->Nc, &dummy, d->Mc, &dummy, &dummy,
                                   d->ldu, &dummy, d->ldvt, &wq, -1, &iw);
        q = wq;
    }
    const char *name = prec == MOEC_SVD_DOUBLE ? "dgesdd" : "sgesdd";
    if (info != 0)
        return moec_err_set(err, MOEC_ERR_NUMERIC, "subspace: %s workspace query failed (info %d)", name,
                            (int)info);
    /* a float reply is exact only to 24 bits: round the count up generously */
    double want = ceil(q * (1.0 + 0x1.0p-20)) + 64.0;
    if (want > INT32_MAX)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "subspace: %s wants a workspace of %.0f elements, beyond 32-bit LAPACK", name,
                            want);
    *lwork = (size_t)want;
    return MOEC_OK;
}

static size_t svd_peak_bytes(const svd_dims *d, moec_svd_precision prec, size_t lwork)
{
    size_t el = prec == MOEC_SVD_DOUBLE ? sizeof(double) : sizeof(float);
    size_t mn = (size_t)d->mn;
    return el * ((size_t)d->Mc * d->Nc + mn * mn + mn + lwork) + 8 * mn * sizeof(lapack_int);
}

moec_status moec_subspace_peak_bytes(int m, int rows, int cols, moec_share_side share,
                                     moec_svd_precision precision, size_t *bytes, moec_err *err)
{
    if (m < 1 || rows < 1 || cols < 1 || !bytes)
        return moec_err_set(err, MOEC_ERR_ARG, "subspace: bad size query (%d members of [%d][%d])", m,
                            rows, cols);
    svd_dims d = {0};
    size_t lwork = 0;
    moec_status st = svd_dims_for(m, rows, cols, share, &d, err);
    if (st == MOEC_OK)
        st = query_lwork(&d, precision, &lwork, err);
    if (st == MOEC_OK)
        *bytes = svd_peak_bytes(&d, precision, lwork);
    return st;
}

void moec_subspace_factors_free(moec_subspace_factors *f)
{
    if (!f)
        return;
    free(f->a);
    free(f->b);
    f->a = f->b = NULL;
    f->rows = f->rank = f->cols = 0;
}

static moec_status check_members(const moec_tensor *members, int m, int *rows, int *cols,
                                 moec_err *err)
{
    for (int e = 0; e < m; e++) {
        const moec_tensor *t = &members[e];
        if (t->ndim != 2)
            return moec_err_set(err, MOEC_ERR_SHAPE, "subspace: member %d has %d dimensions; expected 2", e,
                                t->ndim);
        if (t->dtype != MOEC_DT_F32)
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                "subspace: member %d is %s; expected F32 (convert before merging)", e,
                                moec_dtype_name(t->dtype));
        if (t->shape[0] != members[0].shape[0] || t->shape[1] != members[0].shape[1])
            return moec_err_set(err, MOEC_ERR_SHAPE,
                                "subspace: member %d is [%lld][%lld]; expected [%lld][%lld] like member 0", e,
                                (long long)t->shape[0], (long long)t->shape[1],
                                (long long)members[0].shape[0], (long long)members[0].shape[1]);
        if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > INT_MAX || t->shape[1] > INT_MAX)
            return moec_err_set(err, MOEC_ERR_SHAPE, "subspace: member %d has unusable shape [%lld][%lld]", e,
                                (long long)t->shape[0], (long long)t->shape[1]);
        size_t need = (size_t)t->shape[0] * (size_t)t->shape[1] * sizeof(float);
        if (!t->data || t->nbytes < need)
            return moec_err_set(err, MOEC_ERR_SHAPE, "subspace: member %d holds %zu bytes; [%lld][%lld] F32 needs %zu",
                                e, t->data ? t->nbytes : 0, (long long)t->shape[0], (long long)t->shape[1], need);
    }
    *rows = (int)members[0].shape[0];
    *cols = (int)members[0].shape[1];
    for (int e = 0; e < m; e++) {
        const float *w = members[e].data;
        for (size_t i = 0; i < (size_t)*rows * *cols; i++)
            if (!isfinite(w[i]))
                return moec_err_set(err, MOEC_ERR_NUMERIC, "subspace: member %d has a non-finite value at [%zu][%zu]",
                                    e, i / (size_t)*cols, i % (size_t)*cols);
    }
    return MOEC_OK;
}

/* Smallest r reaching the energy fraction, or the requested rank, within 1..mn. */
static int choose_rank(const double *s2cum, int mn, int rank, double energy)
{
    if (rank > 0)
        return rank < mn ? rank : mn;
    double total = s2cum[mn - 1];
    if (!(total > 0.0))
        return 1;
    for (int r = 1; r <= mn; r++)
        if (s2cum[r - 1] >= energy * total)
            return r;
    return mn;
}

static double frob(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s);
}

moec_status moec_subspace_merge(const moec_tensor *members, int m, const float *weights,
                                const moec_subspace_opts *opts, float *out,
                                moec_subspace_factors *factors, moec_subspace_report *rep,
                                moec_err *err)
{
    const moec_subspace_opts def = MOEC_SUBSPACE_OPTS_DEFAULT;
    const moec_subspace_opts *o = opts ? opts : &def;
    if (!members || m < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "subspace: need at least one member (got %d)", m);
    if (!out && !factors)
        return moec_err_set(err, MOEC_ERR_ARG, "subspace: neither an output matrix nor factors requested");
    if (o->share != MOEC_SHARE_LEFT && o->share != MOEC_SHARE_RIGHT)
        return moec_err_set(err, MOEC_ERR_ARG, "subspace: unknown shared side %d", (int)o->share);
    if (o->precision != MOEC_SVD_FLOAT && o->precision != MOEC_SVD_DOUBLE)
        return moec_err_set(err, MOEC_ERR_ARG, "subspace: unknown SVD precision %d", (int)o->precision);
    if (o->rank < 0)
        return moec_err_set(err, MOEC_ERR_ARG, "subspace: rank %d; expected > 0", o->rank);
    if (o->whiten && o->share != MOEC_SHARE_LEFT)
        return moec_err_set(err, MOEC_ERR_ARG, "subspace: whitening needs the shared left basis");
    if (o->whiten)
        for (int e = 0; e < m; e++)
            if (!o->whiten[e])
                return moec_err_set(err, MOEC_ERR_ARG, "subspace: no whitening matrix for member %d", e);
    if (o->rank == 0 && !(o->energy > 0.0 && o->energy <= 1.0))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "subspace: truncation unset: give a rank > 0 or an energy fraction in (0, 1] (got %g)",
                            o->energy);

    int rows = 0, cols = 0;
    moec_status st = check_members(members, m, &rows, &cols, err);
    if (st != MOEC_OK)
        return st;
    double *w = malloc((size_t)m * sizeof *w);
    if (!w)
        return moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for %d weights", m);
    st = moec_merge_weights_normalise(weights, m, w, err);
    if (st != MOEC_OK) {
        free(w);
        moec_err_prefix(err, "subspace");
        return st;
    }

    const int left = o->share == MOEC_SHARE_LEFT;
    const int dbl = o->precision == MOEC_SVD_DOUBLE;
    const size_t el = dbl ? sizeof(double) : sizeof(float);
    const size_t nw = (size_t)rows * cols;
    svd_dims d = {0};
    size_t lwork = 0;
    ledger L = {0, 0};
    void *A = NULL, *Q = NULL, *S = NULL, *work = NULL;
    lapack_int *iwork = NULL;
    double *s2cum = NULL;
    float *basis = NULL, *own_basis = NULL; /* own_basis: a compact float copy we allocated */
    float *Ce = NULL, *Cavg = NULL, *R = NULL, *Wavg = NULL, *fa = NULL;
    size_t sizeA = 0, sizeQ = 0, sizeS = 0, sizeW = 0, sizeI = 0, size_own = 0;
    int r = 0;
    lapack_int ldb = 0; /* leading dimension of basis as stored */

    st = svd_dims_for(m, rows, cols, o->share, &d, err);
    if (st == MOEC_OK)
        st = query_lwork(&d, o->precision, &lwork, err);
    if (st != MOEC_OK)
        goto done;

    sizeA = el * (size_t)d.Mc * d.Nc;
    sizeQ = el * (size_t)d.mn * d.mn;
    sizeS = el * (size_t)d.mn;
    sizeW = el * lwork;
    sizeI = sizeof(lapack_int) * 8 * (size_t)d.mn;
    A = take(&L, sizeA);
    Q = take(&L, sizeQ);
    S = take(&L, sizeS);
    work = take(&L, sizeW);
    iwork = take(&L, sizeI);
    s2cum = malloc((size_t)d.mn * sizeof *s2cum);
    if (!A || !Q || !S || !work || !iwork || !s2cum) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for the SVD of %d members of [%d][%d] (%zu bytes)",
                          m, rows, cols, sizeA + sizeQ + sizeS + sizeW + sizeI);
        goto done;
    }

    /* LEFT: row j of A is [W_1[j] | ... | W_m[j]]; RIGHT: members one after another.
     * Whitened (Sub-MoE†): W_e S_e in place of W_e. */
    if (o->whiten && !(Wavg = take(&L, nw * sizeof(float)))) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for [%d][%d]", rows, cols);
        goto done;
    }
    for (int e = 0; e < m; e++) {
        const float *We = members[e].data;
        if (o->whiten) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, 1.0f, We, cols, o->whiten[e],
                        cols, 0.0f, Wavg, cols);
            We = Wavg;
        }
        for (int j = 0; j < rows; j++) {
            size_t dst = left ? (size_t)j * d.Mc + (size_t)e * cols : ((size_t)e * rows + j) * cols;
            if (dbl)
                for (int c = 0; c < cols; c++)
                    ((double *)A)[dst + c] = We[(size_t)j * cols + c];
            else
                memcpy((float *)A + dst, We + (size_t)j * cols, (size_t)cols * sizeof(float));
        }
    }

    /* jobz = 'O': one singular-vector block overwrites A, the other goes to
     * Q (LAPACK leaves the unused one of its two U/VT arguments alone) */
    lapack_int info;
    void *U = d.Mc >= d.Nc ? A : Q, *VT = d.Mc >= d.Nc ? Q : A;
    if (dbl)
        info = LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'O', d.Mc, d.Nc, A, d.Mc, S, Q, d.ldu, Q, d.ldvt, work,
                                   (lapack_int)lwork, iwork);
    else
        info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'O', d.Mc, d.Nc, A, d.Mc, S, Q, d.ldu, Q, d.ldvt, work,
                                   (lapack_int)lwork, iwork);
    if (info != 0) {
        const char *name = dbl ? "dgesdd" : "sgesdd";
        if (info > 0)
            st = moec_err_set(err, MOEC_ERR_NUMERIC,
                              "subspace: %s failed (info %d): the SVD did not converge on %d members of [%d][%d]",
                              name, (int)info, m, rows, cols);
        else
            st = moec_err_set(err, MOEC_ERR_NUMERIC, "subspace: %s failed (info %d): LAPACKE argument %d was rejected",
                              name, (int)info, (int)-info);
        goto done;
    }
    give(&L, work, sizeW);
    work = NULL;
    give(&L, iwork, sizeI);
    iwork = NULL;
    if (Wavg) { /* the whitening scratch; the average below gets its own */
        give(&L, Wavg, nw * sizeof(float));
        Wavg = NULL;
    }

    double acc = 0.0;
    for (lapack_int i = 0; i < d.mn; i++) {
        double s = dbl ? ((double *)S)[i] : ((float *)S)[i];
        acc += s * s;
        s2cum[i] = acc;
    }
    r = choose_rank(s2cum, d.mn, o->rank, o->energy);

    /* Where the shared basis landed (column-major outputs read row-major):
     * LEFT needs U, which is gesdd's VT of the transpose: row-major
     * [rows][mn], ld mn. RIGHT needs V, gesdd's U of the transpose: V^T
     * row-major [mn][cols], ld cols. */
    void *bsrc = left ? VT : U;
    void *bother = bsrc == A ? Q : A;
    size_t bother_size = bsrc == A ? sizeQ : sizeA;
    ldb = left ? d.mn : (lapack_int)cols;
    if (bother == A)
        A = NULL;
    else
        Q = NULL;
    give(&L, bother, bother_size);
    if (dbl) {
        /* keep only the r basis vectors, compact and in float, for sgemm */
        size_own = sizeof(float) * (size_t)r * (left ? rows : cols);
        own_basis = take(&L, size_own);
        if (!own_basis) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for a rank-%d basis (%zu bytes)", r,
                              size_own);
            goto done;
        }
        const double *src = bsrc;
        if (left)
            for (int j = 0; j < rows; j++)
                for (int i = 0; i < r; i++)
                    own_basis[(size_t)j * r + i] = (float)src[(size_t)j * ldb + i];
        else
            for (size_t i = 0; i < (size_t)r * cols; i++)
                own_basis[i] = (float)src[i];
        ldb = left ? r : (lapack_int)cols;
        give(&L, bsrc, bsrc == A ? sizeA : sizeQ);
        if (bsrc == A)
            A = NULL;
        else
            Q = NULL;
        basis = own_basis;
    } else {
        basis = bsrc;
    }

    /* C is S_r V_e^T = U_r^T W_e (LEFT, [r][cols]) or U_e S_r = W_e V_r (RIGHT, [rows][r]) */
    const size_t nC = (size_t)r * (left ? cols : rows);
    const int ldc = left ? cols : r;
    Cavg = take(&L, nC * sizeof(float));
    if (!Cavg) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for rank-%d coefficients", r);
        goto done;
    }
    if (rep && rep->member_rel_err) {
        Ce = take(&L, nC * sizeof(float));
        R = take(&L, nw * sizeof(float));
        if (!Ce || !R) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for residuals of [%d][%d]", rows, cols);
            goto done;
        }
        memset(Cavg, 0, nC * sizeof(float));
        for (int e = 0; e < m; e++) {
            const float *We = members[e].data;
            if (left)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, cols, rows, 1.0f, basis, ldb, We, cols,
                            0.0f, Ce, ldc);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r, cols, 1.0f, We, cols, basis, ldb,
                            0.0f, Ce, ldc);
            cblas_saxpy((int)nC, (float)w[e], Ce, 1, Cavg, 1);
            memcpy(R, We, nw * sizeof(float));
            if (left)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, r, -1.0f, basis, ldb, Ce, ldc,
                            1.0f, R, cols);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, r, -1.0f, Ce, ldc, basis, ldb,
                            1.0f, R, cols);
            double nwe = frob(We, nw), nr = frob(R, nw);
            rep->member_rel_err[e] = nwe > 0.0 ? nr / nwe : nr;
        }
    } else {
        /* the projection is linear: project the weighted average once */
        Wavg = out ? out : take(&L, nw * sizeof(float));
        if (!Wavg) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for [%d][%d]", rows, cols);
            goto done;
        }
        const float **ptrs = malloc((size_t)m * sizeof *ptrs);
        float *wf = malloc((size_t)m * sizeof *wf);
        if (!ptrs || !wf) {
            free(ptrs);
            free(wf);
            st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for %d member pointers", m);
            goto done;
        }
        for (int e = 0; e < m; e++) {
            ptrs[e] = members[e].data;
            wf[e] = (float)w[e];
        }
        st = moec_average_weighted(ptrs, m, nw, wf, Wavg, err);
        free(ptrs);
        free(wf);
        if (st != MOEC_OK)
            goto done;
        if (left)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, cols, rows, 1.0f, basis, ldb, Wavg, cols, 0.0f,
                        Cavg, ldc);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r, cols, 1.0f, Wavg, cols, basis, ldb, 0.0f,
                        Cavg, ldc);
    }

    if (out) {
        if (left)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, r, 1.0f, basis, ldb, Cavg, ldc, 0.0f,
                        out, cols);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, r, 1.0f, Cavg, ldc, basis, ldb, 0.0f,
                        out, cols);
    }

    if (factors) {
        /* the basis half is copied compact; the coefficient half is handed over */
        size_t nb = (size_t)r * (left ? rows : cols);
        fa = take(&L, nb * sizeof(float));
        if (!fa) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "subspace: out of memory for a rank-%d factor", r);
            goto done;
        }
        if (left)
            for (int j = 0; j < rows; j++)
                memcpy(fa + (size_t)j * r, basis + (size_t)j * ldb, (size_t)r * sizeof(float));
        else
            memcpy(fa, basis, nb * sizeof(float));
        factors->a = left ? fa : Cavg;
        factors->b = left ? Cavg : fa;
        factors->rows = rows;
        factors->rank = r;
        factors->cols = cols;
        fa = NULL;
        Cavg = NULL; /* now the caller's */
    }

    if (rep) {
        rep->rank = r;
        rep->max_rank = d.mn;
        rep->energy = s2cum[d.mn - 1] > 0.0 ? s2cum[r - 1] / s2cum[d.mn - 1] : 1.0;
        rep->sigma_first = dbl ? ((double *)S)[0] : ((float *)S)[0];
        rep->sigma_last = dbl ? ((double *)S)[r - 1] : ((float *)S)[r - 1];
        rep->a_rows = (size_t)rows;
        rep->a_cols = (size_t)r;
        rep->b_rows = (size_t)r;
        rep->b_cols = (size_t)cols;
        rep->peak_bytes = L.peak;
    }

done:
    free(w);
    free(s2cum);
    free(A);
    free(Q);
    free(S);
    free(work);
    free(iwork);
    free(own_basis);
    free(Ce);
    free(Cavg);
    free(R);
    if (Wavg && Wavg != out)
        free(Wavg);
    free(fa);
    return st;
}
