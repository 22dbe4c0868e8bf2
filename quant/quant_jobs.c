/* quant_jobs.c - the recipe's units of work: float copies of weights,
 * matrices quantized by RTN or GPTQ and inverse-Hessian factors, run over
 * the thread pool, and results installed in the output. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant/quant_internal.h"
#include "core/dtype.h"
#include "model/model_moec.h"
#include "quant/kquant_grid.h"
#include "quant/rtn.h"

double qr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void qr_note(qr_recipe_run *R, const char *fmt, ...)
{
    moec_quant_report *rep = R->rep;
    if (rep->n_notes == R->cap_notes) {
        int cap = R->cap_notes ? 2 * R->cap_notes : 8;
        char **nn = realloc(rep->notes, (size_t)cap * sizeof *nn);
        if (!nn)
            return; /* a qr_note lost to memory pressure is not worth failing the run */
        rep->notes = nn;
        R->cap_notes = cap;
    }
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *s = malloc(strlen(buf) + 1);
    if (s) {
        strcpy(s, buf);
        rep->notes[rep->n_notes++] = s;
    }
}

void qr_progress(qr_recipe_run *R, const char *stage, int layer)
{
    if (R->progress)
        R->progress(R->pctx, stage, layer, R->src->cfg.n_layers);
}

/* ---- tensors ---- */

/* A float copy of a 2-D compute tensor (malloc'd). */
moec_status qr_to_float(const moec_tensor *t, const char *what, float **out, moec_err *err)
{
    *out = NULL;
    if (!moec_tensor_present(t) || t->ndim != 2 || !moec_dtype_is_compute(t->dtype) || t->q)
        return moec_err_set(err, MOEC_ERR_ARG, "quantize: %s is %s; expected a full-precision matrix", what,
                            moec_tensor_present(t) && t->dtype == MOEC_DT_QUANT ? "already quantized"
                                                                               : "missing or not a matrix");
    const size_t n = (size_t)moec_tensor_numel(t);
    float *f = malloc(n * sizeof *f);
    if (!f)
        return moec_err_set(err, MOEC_ERR_NOMEM, "quantize: out of memory for %s", what);
    moec_to_f32(f, t->data, t->dtype, n);
    *out = f;
    return MOEC_OK;
}

/* Stores q as the output's tensor *ot and makes the working model's *wt a
 * view of it: the passes that follow run the packed groups through the
 * executor's quantized kernels, so no quantized weight is held twice or
 * widened to float. Any float copy *wt held before (EAQuant's smoothed
 * w1/w3) stays in the working model's arena until it closes. */
moec_status qr_install(qr_recipe_run *R, moec_tensor *wt, moec_tensor *ot, const moec_qformat *q,
                           const char *name, moec_err *err)
{
    moec_status st = moec_model_set_quant(R->out, ot, q, name, err);
    if (!st)
        *wt = *ot;
    return st;
}


typedef struct qr_mjobs {
    const moec_quant_recipe *r;
    qr_mjob *j;
} qr_mjobs;

static void qr_mjob_task(void *vc, int i, int t)
{
    (void)t;
    qr_mjobs *J = vc;
    qr_mjob *j = &J->j[i];
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.q.bits = j->bits;
    o.q.group = j->group;
    o.q.symmetric = J->r->symmetric;
    o.q.clip_grid = j->clip_grid;
    o.percdamp = J->r->percdamp;
    o.act_order = J->r->act_order;
    if (j->gtype) {
        j->st = moec_gptq_quantize_blocks(j->W, j->rows, j->cols, j->hinv, j->gtype, &o, j->name, &j->q, NULL, &j->err);
        return;
    }
    j->st = j->hinv ? moec_gptq_quantize_with(j->W, j->rows, j->cols, j->hinv, &o, j->name, &j->q, NULL, &j->err)
                    : moec_rtn_quantize(j->W, j->rows, j->cols, &o.q, j->name, &j->q, &j->err);
}

moec_status qr_run_mjobs(qr_recipe_run *R, qr_mjob *j, int n, moec_err *err)
{
    qr_mjobs J = {R->r, j};
    qr_parallel_for(R->pool, n, qr_mjob_task, &J);
    for (int i = 0; i < n; i++)
        if (j[i].st) {
            *err = j[i].err;
            return j[i].st;
        }
    return MOEC_OK;
}

void qr_mjobs_free(qr_mjob *j, int n)
{
    for (int i = 0; j && i < n; i++)
        moec_qmatrix_free(&j[i].q);
    free(j);
}

qr_mjob qr_mjob_make(const float *W, int64_t rows, int64_t cols, int bits, int group, int clip_grid,
                      const moec_gptq_hinv *hinv, const char *fmt, ...)
{
    qr_mjob j = {.W = W, .rows = rows, .cols = cols, .bits = bits, .group = group, .clip_grid = clip_grid,
              .hinv = hinv};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j.name, sizeof j.name, fmt, ap);
    va_end(ap);
    return j;
}


typedef struct qr_hjobs {
    const moec_quant_recipe *r;
    qr_hjob *j;
} qr_hjobs;

static void qr_hjob_task(void *vc, int i, int t)
{
    (void)t;
    qr_hjobs *J = vc;
    qr_hjob *j = &J->j[i];
    if (!j->H)
        return;
    moec_gptq_opts o = MOEC_GPTQ_OPTS_DEFAULT;
    o.percdamp = J->r->percdamp;
    o.act_order = J->r->act_order;
    j->st = moec_gptq_hinv_new(j->H, j->cols, j->n, &o, j->name, &j->hinv, &j->rep, &j->err);
}

/* Builds the factors of every job with H set; a job whose factorisation
 * fails keeps hinv NULL (RTN) and gets a qr_note. Returns damping retries. */
int qr_run_hjobs(qr_recipe_run *R, qr_hjob *j, int n)
{
    qr_hjobs J = {R->r, j};
    qr_parallel_for(R->pool, n, qr_hjob_task, &J);
    int retries = 0;
    for (int i = 0; i < n; i++) {
        if (j[i].st) {
            qr_note(R, "%s: GPTQ impossible (%s); quantized by RTN", j[i].name, j[i].err.msg);
            j[i].hinv = NULL;
        } else if (j[i].H) {
            retries += j[i].rep.retries;
        }
    }
    return retries;
}

void qr_hjobs_free(qr_hjob *j, int n)
{
    for (int i = 0; j && i < n; i++)
        moec_gptq_hinv_free(j[i].hinv);
    free(j);
}

