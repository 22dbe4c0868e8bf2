/* Tests for the calibration-driven parts of merging: the ridge fits
 * (merge/fit.c), Sub-MoE† whitening (merge/subspace.c), factored expert
 * weights (model, .moec container, executor), the per-layer merge with its
 * fits (merge/merge_layer.c), two-layer joint clustering (merge/cluster.c)
 * and quantized factors (merge/merge_quant.c), on the random Qwen3-MoE
 * fixture with random calibration tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "core/dtype.h"
#include "exec/exec.h"
#include "exec/lowrank.h"
#include "merge/acts.h"
#include "merge/cluster.h"
#include "merge/fit.h"
#include "merge/merge.h"
#include "merge/merge_quant.h"
#include "merge/subspace.h"
#include "model/model.h"
#include "model/model_moec.h"

#define QWEN3 "tests/fixtures/qwen3moe-random"

/* Random calibration windows over the fixture's vocabulary. */
typedef struct windows {
    int32_t ids[16 * 64];
    int len[16];
    moec_merge_windows w;
} windows;

static void make_windows(windows *w, int n, int len, int vocab)
{
    for (int i = 0; i < n * len; i++)
        w->ids[i] = (int32_t)(tu_urand() % (uint32_t)vocab);
    for (int i = 0; i < n; i++)
        w->len[i] = len;
    w->w = (moec_merge_windows){w->ids, w->len, n};
}

/* ---- fit.h ---- */

/* Noise-free data: the fit recovers the true matrix; no data: the prior. */
static void test_lsq_exact_and_prior(void **state)
{
    (void)state;
    enum { P = 12, Q = 5, N = 200 };
    float W[Q * P], Z[N * P], Y[N * Q], got[Q * P], prior[Q * P];
    double scratch[N * (P + Q)];
    for (int i = 0; i < Q * P; i++) {
        W[i] = tu_frand();
        prior[i] = tu_frand();
    }
    for (int i = 0; i < N * P; i++)
        Z[i] = tu_frand();
    for (int n = 0; n < N; n++)
        for (int q = 0; q < Q; q++) {
            double s = 0.0;
            for (int p = 0; p < P; p++)
                s += (double)W[q * P + p] * Z[n * P + p];
            Y[n * Q + q] = (float)s;
        }
    moec_err err = {0};
    moec_lsq L;
    assert_int_equal(moec_lsq_init(&L, P, Q, &err), MOEC_OK);
    moec_lsq_add(&L, Z, Y, NULL, N / 2, scratch);
    moec_lsq_add(&L, Z + (N / 2) * P, Y + (N / 2) * Q, NULL, N - N / 2, scratch);
    assert_int_equal(moec_lsq_solve(&L, 1e-9, prior, got, &err), MOEC_OK);
    assert_true(tu_max_rel_diff(got, W, Q * P) < 1e-4);
    moec_lsq_free(&L);

    assert_int_equal(moec_lsq_init(&L, P, Q, &err), MOEC_OK);
    assert_int_equal(moec_lsq_solve(&L, 1e-2, prior, got, &err), MOEC_OK);
    assert_memory_equal(got, prior, sizeof got);
    moec_lsq_free(&L);
}

/* ---- Sub-MoE† (subspace.h whiten) ---- */

static moec_tensor f32_view(float *x, int rows, int cols)
{
    return (moec_tensor){.dtype = MOEC_DT_F32, .ndim = 2, .shape = {rows, cols}, .data = x,
                         .nbytes = (size_t)rows * cols * sizeof(float)};
}

/* Identity whitening changes nothing; any whitening at full rank still
 * gives the weighted average (the de-whitened projection, Eq. 11). */
static void test_whiten(void **state)
{
    (void)state;
    enum { R = 10, C = 6, M = 2 };
    float a[R * C], b[R * C], plain[R * C], white[R * C], eye[C * C], S0[C * C], S1[C * C], avg[R * C];
    for (int i = 0; i < R * C; i++) {
        a[i] = tu_frand();
        b[i] = tu_frand();
    }
    for (int i = 0; i < C * C; i++) {
        eye[i] = i % (C + 1) == 0 ? 1.0f : 0.0f;
        S0[i] = i / C >= i % C ? tu_frand() + (i % (C + 1) == 0 ? 2.0f : 0.0f) : 0.0f;
        S1[i] = i / C >= i % C ? tu_frand() + (i % (C + 1) == 0 ? 2.0f : 0.0f) : 0.0f;
    }
    moec_tensor mem[M] = {f32_view(a, R, C), f32_view(b, R, C)};
    const float w[M] = {3.0f, 1.0f};
    moec_err err = {0};
    moec_subspace_opts so = MOEC_SUBSPACE_OPTS_DEFAULT;
    so.rank = 4;
    assert_int_equal(moec_subspace_merge(mem, M, w, &so, plain, NULL, NULL, &err), MOEC_OK);
    const float *ident[M] = {eye, eye};
    so.whiten = ident;
    assert_int_equal(moec_subspace_merge(mem, M, w, &so, white, NULL, NULL, &err), MOEC_OK);
    assert_true(tu_max_rel_diff(white, plain, R * C) < 1e-5);

    const float *tri[M] = {S0, S1};
    so.whiten = tri;
    so.rank = 1 << 20;
    assert_int_equal(moec_subspace_merge(mem, M, w, &so, white, NULL, NULL, &err), MOEC_OK);
    for (int i = 0; i < R * C; i++)
        avg[i] = 0.75f * a[i] + 0.25f * b[i];
    assert_true(tu_max_rel_diff(white, avg, R * C) < 1e-5);

    so.share = MOEC_SHARE_RIGHT;
    assert_int_equal(moec_subspace_merge(mem, M, w, &so, white, NULL, NULL, &err), MOEC_ERR_ARG);
}

/* ---- factored weights: model, container, executor ---- */

/* Replaces w1 and w2 of layer 0 expert 1 by rank-r F32 factors. */
static void factor_expert(moec_model *m, int r)
{
    moec_err err = {0};
    moec_ffn *F = &m->layers[0].experts[1];
    const int f = m->cfg.expert_ffn, d = m->cfg.hidden_size;
    moec_factored *fw[2] = {&F->w1f, &F->w2f};
    moec_tensor *dense[2] = {&F->w1, &F->w2};
    const int rows[2] = {f, d}, cols[2] = {d, f};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(moec_model_new_tensor(m, &fw[k]->u, MOEC_DT_F32, rows[k], r, &err), MOEC_OK);
        assert_int_equal(moec_model_new_tensor(m, &fw[k]->v, MOEC_DT_F32, r, cols[k], &err), MOEC_OK);
        for (int i = 0; i < rows[k] * r; i++)
            ((float *)fw[k]->u.data)[i] = 0.2f * tu_frand();
        for (int i = 0; i < r * cols[k]; i++)
            ((float *)fw[k]->v.data)[i] = 0.2f * tu_frand();
        memset(dense[k], 0, sizeof *dense[k]);
    }
}

/* The executor runs factored weights as two products: the same logits as
 * the densified model; the .moec round trip keeps them; parameters count
 * the factors; an HF checkpoint is refused. */
static void test_factored_model(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *src = tu_open_model(QWEN3), *m;
    assert_int_equal(moec_model_derive(&m, src, &err), MOEC_OK);
    const int r = 5, f = m->cfg.expert_ffn, d = m->cfg.hidden_size, n = 20, V = m->cfg.vocab_size;
    factor_expert(m, r);
    assert_true(moec_model_has_factored(m));
    assert_int_equal(moec_model_max_rank(m), r);
    assert_int_equal(moec_model_params(m), moec_model_params(src) - 2 * (int64_t)f * d + 2 * (int64_t)r * (f + d));
    assert_int_equal(moec_ffn_params(&m->layers[0].experts[1]), (int64_t)f * d + 2 * (int64_t)r * (f + d));
    float *got = tu_prompt_logits(m, n, true);

    char path[512];
    snprintf(path, sizeof path, "%s/f.moec", tu_tmpdir());
    assert_int_equal(moec_model_save_moec(m, path, NULL, &err), MOEC_OK);
    moec_model *back;
    if (moec_model_open(&back, path, &err) != MOEC_OK)
        fail_msg("reopening: %s", err.msg);
    assert_true(moec_factored_present(&back->layers[0].experts[1].w1f));
    assert_false(moec_tensor_present(&back->layers[0].experts[1].w1));
    assert_false(moec_factored_present(&back->layers[0].experts[1].w3f));
    assert_int_equal(moec_model_params(back), moec_model_params(m));
    float *again = tu_prompt_logits(back, n, true);
    assert_memory_equal(again, got, (size_t)n * V * sizeof *got);

    char hf[512];
    snprintf(hf, sizeof hf, "%s/hf", tu_tmpdir());
    assert_int_equal(moec_model_save_hf(back, hf, 0, false, &err), MOEC_ERR_UNSUPPORTED);

    assert_int_equal(moec_model_densify(m, MOEC_DT_F32, &err), MOEC_OK);
    assert_false(moec_model_has_factored(m));
    float *dense = tu_prompt_logits(m, n, true);
    assert_true(tu_max_rel_diff(got, dense, (size_t)n * V) < 1e-5);

    free(got), free(again), free(dense);
    moec_model_close(back);
    moec_model_close(m);
    moec_model_close(src);
}

/* Factors that do not chain are refused when saving. */
static void test_factored_shapes_checked(void **state)
{
    (void)state;
    moec_err err = {0};
    moec_model *src = tu_open_model(QWEN3), *m;
    assert_int_equal(moec_model_derive(&m, src, &err), MOEC_OK);
    factor_expert(m, 3);
    /* a v factor of the wrong rank no longer chains with u */
    m->layers[0].experts[1].w2f.v.shape[0] = 2;
    char path[512];
    snprintf(path, sizeof path, "%s/bad.moec", tu_tmpdir());
    assert_int_not_equal(moec_model_save_moec(m, path, NULL, &err), MOEC_OK);
    moec_model_close(m);
    moec_model_close(src);
}

/* ---- the per-layer merge with calibration ---- */

static moec_merge_opts calib_opts(int keep, const moec_merge_windows *w)
{
    moec_merge_opts o = MOEC_MERGE_OPTS_DEFAULT;
    o.keep = keep;
    o.windows = w;
    o.sim_tokens = 256;
    return o;
}

static moec_model *merge_ok(const moec_model *src, const moec_merge_opts *o, moec_merge_report *rep)
{
    moec_err err = {0};
    moec_model *out = NULL;
    if (moec_merge_model(src, NULL, o, &out, rep, &err) != MOEC_OK)
        fail_msg("merge failed: %s", err.msg);
    return out;
}

/* fit_all refits the w2 of experts left alone only in a layer where a
 * group merged: with nothing merged the layers come back as they
 * were, bit for bit; with one merge per layer every singleton is refitted,
 * and without fit_all none is. */
static void test_fit_all_scope(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    windows w;
    make_windows(&w, 8, 64, src->cfg.vocab_size);
    const int E = src->layers[0].n_experts;
    moec_merge_opts o = calib_opts(E, &w.w);
    o.fit_all = true;
    moec_merge_report rep;
    moec_model *out = merge_ok(src, &o, &rep);
    for (int i = 0; i < rep.n_layers; i++) {
        const int l = rep.layers[i].layer;
        assert_true(rep.layers[i].out_err == 0.0);
        for (int e = 0; e < E; e++) {
            assert_false(rep.layers[i].groups[e].kind[MOEC_MERGE_W2].fitted);
            assert_ptr_equal(out->layers[l].experts[e].w2.data, src->layers[l].experts[e].w2.data);
        }
    }
    float *a = tu_prompt_logits(src, 16, true), *b = tu_prompt_logits(out, 16, true);
    assert_memory_equal(a, b, (size_t)16 * src->cfg.vocab_size * sizeof(float));
    free(a), free(b);
    moec_merge_report_free(&rep);
    moec_model_close(out);
    for (int all = 0; all < 2; all++) {
        o = calib_opts(E - 1, &w.w);
        o.fit_all = all;
        out = merge_ok(src, &o, &rep);
        for (int i = 0; i < rep.n_layers; i++) {
            assert_true(isfinite(rep.layers[i].out_err));
            for (int g = 0; g < rep.layers[i].n_after; g++) {
                const moec_merge_group *G = &rep.layers[i].groups[g];
                assert_true(G->kind[MOEC_MERGE_W2].fitted == (G->n_members > 1 || all));
            }
        }
        moec_merge_report_free(&rep);
        moec_model_close(out);
    }
    moec_model_close(src);
}

/* Every variant runs and reports: counts, shapes, finite errors; the fitted
 * w2 and router give a lower layer error than plain averaging here. */
static void test_variants(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    windows w;
    make_windows(&w, 8, 64, src->cfg.vocab_size);
    const int E = src->layers[0].n_experts, keep = E - 3;
    double plain_err = 0.0, fit_err = 0.0;
    for (int v = 0; v < 6; v++) {
        moec_merge_opts o = calib_opts(keep, &w.w);
        o.features = MOEC_MERGE_FEAT_METHOD;
        o.router = MOEC_MERGE_ROUTER_AVERAGE;
        o.fit_down = false;
        switch (v) {
        case 0: o.method = MOEC_MERGE_AVERAGE; break;
        case 1: o.method = MOEC_MERGE_AVERAGE, o.fit_down = true, o.router = MOEC_MERGE_ROUTER_FIT; break;
        case 2: o.whiten = true, o.rank = 8, o.energy = 0.0; break;
        case 3: o.features = MOEC_MERGE_FEAT_NEURONS, o.fit_down = true; break;
        case 4: o.features = MOEC_MERGE_FEAT_DOMINANT, o.router = MOEC_MERGE_ROUTER_DOMINANT; break;
        case 5: o.clustering = MOEC_MERGE_CLUSTER_JOINT2, o.sequential = false; break;
        }
        moec_merge_report rep;
        moec_model *out = merge_ok(src, &o, &rep);
        int total = 0;
        for (int i = 0; i < rep.n_layers; i++) {
            const moec_merge_layer *L = &rep.layers[i];
            total += L->n_after;
            assert_int_equal(out->layers[L->layer].n_experts, L->n_after);
            assert_true(isfinite(L->out_err) && L->out_err >= 0.0);
            if (v != 5)
                assert_int_equal(L->n_after, keep);
            for (int g = 0; g < L->n_after; g++)
                if (L->groups[g].n_members > 1 && o.fit_down)
                    assert_true(L->groups[g].kind[MOEC_MERGE_W2].fitted);
        }
        assert_int_equal(total, keep * rep.n_layers);
        double err = 0.0;
        for (int i = 0; i < rep.n_layers; i++)
            err += rep.layers[i].out_err;
        if (v == 0)
            plain_err = err;
        if (v == 1)
            fit_err = err;
        free(tu_prompt_logits(out, 8, true));
        moec_merge_report_free(&rep);
        moec_model_close(out);
    }
    assert_true(fit_err < plain_err);
    moec_model_close(src);
}

/* Sub-MoE† with factored storage: merged matrices stored as factors where
 * the rank saves, counted in bytes, run by the executor, quantized with
 * their factors, and kept through the .moec round trip. */
static void test_factored_merge_and_quant(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    windows w;
    make_windows(&w, 8, 64, src->cfg.vocab_size);
    moec_merge_opts o = calib_opts(src->layers[0].n_experts - 3, &w.w);
    o.features = MOEC_MERGE_FEAT_METHOD;
    o.whiten = o.factored = true;
    o.rank = 8;
    o.energy = 0.0;
    moec_merge_report rep;
    moec_model *out = merge_ok(src, &o, &rep);
    assert_true(moec_model_has_factored(out));
    assert_true(rep.params_factored < rep.params_after);
    assert_int_equal(moec_model_params(out), rep.params_factored);
    assert_int_equal(rep.bytes_after, moec_model_bytes(out));
    float *before = tu_prompt_logits(out, 8, true);

    moec_err err = {0};
    moec_quant_opts q = MOEC_QUANT_OPTS_DEFAULT;
    q.bits = 8;
    q.group = 32;
    moec_merge_quant_report qr;
    assert_int_equal(moec_merge_quantize_experts(out, &q, &qr, &err), MOEC_OK);
    assert_true(qr.tensors > 0 && qr.bytes < (uint64_t)qr.params * 2);
    assert_true(moec_model_bytes(out) < rep.bytes_after);
    assert_int_equal(out->layers[0].experts[0].w2.dtype == MOEC_DT_QUANT ||
                         out->layers[0].experts[0].w2f.u.dtype == MOEC_DT_QUANT,
                     1);
    float *after = tu_prompt_logits(out, 8, true);
    assert_true(tu_max_rel_diff(after, before, (size_t)8 * src->cfg.vocab_size) < 5e-2);
    char path[512];
    snprintf(path, sizeof path, "%s/q.moec", tu_tmpdir());
    assert_int_equal(moec_model_save_moec(out, path, NULL, &err), MOEC_OK);
    moec_model *back;
    assert_int_equal(moec_model_open(&back, path, &err), MOEC_OK);
    float *again = tu_prompt_logits(back, 8, true);
    assert_memory_equal(again, after, (size_t)8 * src->cfg.vocab_size * sizeof *after);
    assert_int_equal(moec_model_bytes(back), moec_model_bytes(out));
    free(before), free(after), free(again);
    moec_model_close(back);
    moec_merge_report_free(&rep);
    moec_model_close(out);
    moec_model_close(src);
}

/* Options that need calibration text are refused without it. */
static void test_needs_windows(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_err err = {0};
    moec_stats *s;
    assert_int_equal(moec_stats_new(&s, src, &err), MOEC_OK);
    moec_merge_opts o = MOEC_MERGE_OPTS_DEFAULT;
    o.keep = 2;
    o.features = MOEC_MERGE_FEAT_NEURONS;
    moec_model *out = NULL;
    assert_int_equal(moec_merge_model(src, s, &o, &out, NULL, &err), MOEC_ERR_ARG);
    assert_null(out);
    assert_non_null(strstr(err.msg, "calibration text"));
    moec_stats_free(s);
    moec_model_close(src);
}

/* ---- two-layer joint clustering ---- */

/* Two layers of four experts; layer 0's experts all alike, layer 1's all
 * different and more routed (so the frequency seeds fall there first): the
 * joint clustering gives layer 0 fewer groups, and the counts always sum
 * to the target. */
static void test_joint_clustering(void **state)
{
    (void)state;
    enum { E = 4, N = 2 * E };
    float gram[N * N], freq[N];
    for (int i = 0; i < N; i++) {
        freq[i] = (float)(i + 1);
        for (int j = 0; j < N; j++)
            gram[i * N + j] = i == j ? 1.0f : (i < E && j < E) ? 0.95f : 0.0f;
    }
    moec_err err = {0};
    for (int target = 2; target <= N; target++) {
        int a0[E], a1[E], n0 = 0, n1 = 0;
        assert_int_equal(moec_merge_cluster_joint(gram, E, E, freq, target, NULL, a0, a1, &n0, &n1, NULL, &err),
                         MOEC_OK);
        assert_int_equal(n0 + n1, target);
        assert_true(n0 >= 1 && n0 <= E && n1 >= 1 && n1 <= E);
        if (target == E + 1) {
            assert_int_equal(n0, 1);
            assert_int_equal(n1, E);
        }
        for (int e = 0; e < E; e++) {
            assert_true(a0[e] >= 0 && a0[e] < n0);
            assert_true(a1[e] >= 0 && a1[e] < n1);
        }
        assert_int_equal(a0[0], 0);
        assert_int_equal(a1[0], 0);
    }
    int a0[E], a1[E], n0, n1;
    assert_int_equal(moec_merge_cluster_joint(gram, E, E, freq, 1, NULL, a0, a1, &n0, &n1, NULL, &err), MOEC_ERR_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lsq_exact_and_prior),
        cmocka_unit_test(test_whiten),
        cmocka_unit_test(test_factored_model),
        cmocka_unit_test(test_factored_shapes_checked),
        cmocka_unit_test(test_fit_all_scope),
        cmocka_unit_test(test_variants),
        cmocka_unit_test(test_factored_merge_and_quant),
        cmocka_unit_test(test_needs_windows),
        cmocka_unit_test(test_joint_clustering),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
