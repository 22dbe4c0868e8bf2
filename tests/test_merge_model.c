/* Tests for merge/merge_model.c: whole-model expert merging (submoe and
 * average) on the random Qwen2-MoE and Qwen3-MoE fixtures, with statistics
 * built by hand (to pin the clustering down) or gathered by calibration. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "calib/calib.h"
#include "calib/stats.h"
#include "core/dtype.h"
#include "exec/exec.h"
#include "merge/merge.h"
#include "model/model.h"

#define QWEN2 "tests/fixtures/qwen2moe-random"
#define QWEN3 "tests/fixtures/qwen3moe-random"

static moec_model *open_model_abs(const char *path)
{
    moec_err err = {0};
    moec_model *m;
    if (moec_model_open(&m, path, &err) != MOEC_OK)
        fail_msg("reopening %s: %s", path, err.msg);
    return m;
}

static moec_model *derive(const moec_model *src)
{
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_derive(&m, src, &err), MOEC_OK);
    return m;
}

/* Statistics for m with routing counts 10 + e (so expert 0 is the least
 * routed), gates half the counts and identity output similarities: no two
 * experts alike. Tests then make chosen experts similar. */
static moec_stats *hand_stats(const moec_model *m)
{
    moec_err err = {0};
    moec_stats *s;
    assert_int_equal(moec_stats_new(&s, m, &err), MOEC_OK);
    for (int l = 0; l < s->n_layers; l++) {
        moec_layer_stats *ls = &s->layers[l];
        const int E = ls->n_experts;
        ls->tokens = 1000;
        ls->sim_tokens = 64;
        for (int e = 0; e < E; e++) {
            ls->count[e] = 10 + e;
            ls->gate_sum[e] = 0.5 * ls->count[e];
            ls->out_cos[e * E + e] = 1.0;
        }
    }
    return s;
}

static void set_cos(moec_stats *s, int l, int i, int j, double v)
{
    const int E = s->layers[l].n_experts;
    s->layers[l].out_cos[i * E + j] = v;
    s->layers[l].out_cos[j * E + i] = v;
}

static moec_merge_opts opts_for(moec_merge_method method, int keep)
{
    moec_merge_opts o = MOEC_MERGE_OPTS_DEFAULT;
    o.method = method;
    o.keep = keep;
    /* statistics only: the folds of the methods themselves, as published */
    o.features = MOEC_MERGE_FEAT_METHOD;
    o.router = MOEC_MERGE_ROUTER_AVERAGE;
    o.fit_down = false;
    o.energy = 0.99;
    return o;
}

static moec_model *merge_ok(const moec_model *src, const moec_stats *s, const moec_merge_opts *o,
                            moec_merge_report *rep)
{
    moec_err err = {0};
    moec_model *out = NULL;
    moec_status st = moec_merge_model(src, s, o, &out, rep, &err);
    if (st != MOEC_OK)
        fail_msg("merge failed: %s", err.msg);
    return out;
}

static float *to_f32(const moec_tensor *t)
{
    size_t n = (size_t)moec_tensor_numel(t);
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    moec_to_f32(x, t->data, t->dtype, n);
    return x;
}

static const moec_tensor *kind(const moec_ffn *f, int k)
{
    return k == MOEC_MERGE_W1 ? &f->w1 : k == MOEC_MERGE_W3 ? &f->w3 : &f->w2;
}

static void assert_same_bytes(const moec_tensor *a, const moec_tensor *b)
{
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->shape[0], b->shape[0]);
    assert_int_equal(a->shape[1], b->shape[1]);
    size_t n = (size_t)moec_tensor_numel(a) * moec_dtype_size(a->dtype);
    assert_memory_equal(a->data, b->data, n);
}

/* A layer whose experts are all one expert merges back to that expert, for
 * any grouping: bit for bit by averaging, and at full rank by Sub-MoE up to
 * the float rounding of the projection (none survives BF16 here). */
static void test_identical_experts(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN2), *twin = derive(src);
    const int E = twin->layers[0].n_experts;
    for (int e = 0; e < E; e++)
        twin->layers[0].experts[e] = src->layers[0].experts[3];
    moec_stats *s = hand_stats(twin);
    for (int i = 0; i < E; i++)
        for (int j = 0; j < E; j++)
            set_cos(s, 0, i, j, 1.0);

    for (int method = 0; method < 2; method++) {
        moec_merge_opts o = opts_for(method ? MOEC_MERGE_AVERAGE : MOEC_MERGE_SUBMOE, 3);
        o.rank = 1 << 20;
        moec_merge_report rep;
        moec_model *out = merge_ok(twin, s, &o, &rep);
        assert_int_equal(out->layers[0].n_experts, 3);
        assert_int_equal(out->cfg.layer_experts[0], 3);
        for (int g = 0; g < 3; g++)
            for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
                const moec_tensor *want = kind(&src->layers[0].experts[3], k);
                const moec_tensor *got = kind(&out->layers[0].experts[g], k);
                if (method == 1) {
                    assert_same_bytes(got, want);
                } else {
                    float *a = to_f32(got), *b = to_f32(want);
                    double maxabs = 0, maxdiff = 0;
                    for (int64_t i = 0; i < moec_tensor_numel(want); i++) {
                        maxabs = fmax(maxabs, fabs(b[i]));
                        maxdiff = fmax(maxdiff, fabs((double)a[i] - b[i]));
                    }
                    assert_true(maxdiff <= 1e-6 * maxabs);
                    free(a);
                    free(b);
                }
                const moec_merge_group *G = &rep.layers[0].groups[g];
                for (int i = 0; G->n_members > 1 && i < G->n_members; i++) {
                    assert_true(G->kind[k].merged_err[i] < 1e-6);
                    if (method == 0)
                        assert_true(G->kind[k].recon_err[i] < 1e-5);
                }
            }
        moec_merge_report_free(&rep);
        moec_model_close(out);
    }
    moec_stats_free(s);
    moec_model_close(twin);
    moec_model_close(src);
}

/* keep == E changes nothing: every expert is a view of its source, the
 * router is byte-identical and the executor gives identical logits. */
static void test_keep_all_unchanged(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_stats *s = hand_stats(src);
    float *want = tu_prompt_logits(src, 24, false);
    const int V = src->cfg.vocab_size;
    for (int method = 0; method < 2; method++) {
        moec_merge_opts o = opts_for(method ? MOEC_MERGE_AVERAGE : MOEC_MERGE_SUBMOE, src->layers[0].n_experts);
        moec_merge_report rep;
        moec_model *out = merge_ok(src, s, &o, &rep);
        assert_int_equal(rep.params_after, rep.params_before);
        assert_int_equal(rep.top_k_after, src->cfg.top_k);
        for (int l = 0; l < src->cfg.n_layers; l++) {
            assert_int_equal(out->layers[l].n_experts, src->layers[l].n_experts);
            assert_same_bytes(&out->layers[l].router, &src->layers[l].router);
            for (int e = 0; e < src->layers[l].n_experts; e++) {
                assert_ptr_equal(out->layers[l].experts[e].w1.data, src->layers[l].experts[e].w1.data);
                assert_ptr_equal(out->layers[l].experts[e].w2.data, src->layers[l].experts[e].w2.data);
                assert_int_equal(rep.layers[l].groups[e].n_members, 1);
                assert_int_equal(rep.layers[l].groups[e].members[0], e);
            }
        }
        float *got = tu_prompt_logits(out, 24, false);
        assert_memory_equal(got, want, (size_t)V * sizeof *got);
        free(got);
        moec_merge_report_free(&rep);
        moec_model_close(out);
    }
    free(want);
    moec_stats_free(s);
    moec_model_close(src);
}

/* Experts 2 and 5 of layer 1 are alike and 5 is the least routed, so keep
 * E - 1 merges exactly {2, 5}: the six singletons are untouched (same views,
 * same router rows), the group's weights are its routing counts, the merged
 * expert is their weighted average (computed here independently), the
 * router follows the chosen rule, and Sub-MoE at full rank is the average
 * while a truncated rank moves away from it. */
static void test_one_pair(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_stats *s = hand_stats(src);
    const int l = 1, E = src->layers[l].n_experts;
    s->layers[l].count[5] = 1;
    s->layers[l].count[2] = 3;
    set_cos(s, l, 2, 5, 0.99);
    const moec_layer *SL = &src->layers[l];

    moec_merge_opts o = opts_for(MOEC_MERGE_AVERAGE, E - 1);
    moec_merge_report rep;
    moec_model *avg = merge_ok(src, s, &o, &rep);
    const moec_merge_layer *RL = &rep.layers[l];
    assert_int_equal(RL->n_after, E - 1);
    int pair = -1;
    for (int g = 0; g < RL->n_after; g++) {
        const moec_merge_group *G = &RL->groups[g];
        if (G->n_members == 2) {
            pair = g;
            assert_int_equal(G->members[0], 2);
            assert_int_equal(G->members[1], 5);
            assert_true(fabs(G->weights[0] - 0.75) < 1e-12);
            assert_true(fabs(G->weights[1] - 0.25) < 1e-12);
            continue;
        }
        assert_int_equal(G->n_members, 1);
        const int e = G->members[0];
        assert_int_equal(RL->assign[e], g);
        for (int k = 0; k < MOEC_MERGE_KINDS; k++)
            assert_ptr_equal(kind(&avg->layers[l].experts[g], k)->data, kind(&SL->experts[e], k)->data);
        size_t rb = (size_t)SL->router.shape[1] * moec_dtype_size(SL->router.dtype);
        assert_memory_equal((const char *)avg->layers[l].router.data + g * rb,
                            (const char *)SL->router.data + e * rb, rb);
    }
    assert_int_equal(pair, 2);

    /* the weighted average, formed independently in double then rounded once */
    for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
        const moec_tensor *a = kind(&SL->experts[2], k), *b = kind(&SL->experts[5], k);
        float *xa = to_f32(a), *xb = to_f32(b);
        size_t n = (size_t)moec_tensor_numel(a);
        float *want = malloc(n * sizeof *want);
        for (size_t i = 0; i < n; i++)
            want[i] = (float)(0.75 * xa[i] + 0.25 * xb[i]);
        uint16_t *wb = malloc(n * sizeof *wb);
        moec_from_f32(wb, want, MOEC_DT_BF16, n);
        assert_int_equal(kind(&avg->layers[l].experts[pair], k)->dtype, MOEC_DT_BF16);
        assert_memory_equal(kind(&avg->layers[l].experts[pair], k)->data, wb, n * sizeof *wb);
        free(xa);
        free(xb);
        free(want);
        free(wb);
    }
    const int d = src->cfg.hidden_size;
    float *router = to_f32(&SL->router), *merged_router = to_f32(&avg->layers[l].router);
    for (int i = 0; i < d; i++) {
        float w = (float)(0.75 * router[2 * d + i] + 0.25 * router[5 * d + i]);
        assert_true(fabsf(merged_router[pair * d + i] - w) <= 1e-2f * fabsf(w) + 1e-6f);
    }
    free(merged_router);

    o.router = MOEC_MERGE_ROUTER_DOMINANT;
    moec_model *dom = merge_ok(src, s, &o, NULL);
    merged_router = to_f32(&dom->layers[l].router);
    assert_memory_equal(merged_router + pair * d, router + 2 * d, (size_t)d * sizeof(float));
    free(merged_router);
    moec_model_close(dom);

    /* Sub-MoE at full rank is the average; truncated, the shared basis keeps less */
    o = opts_for(MOEC_MERGE_SUBMOE, E - 1);
    o.rank = 1 << 20;
    moec_merge_report full_rep, half_rep;
    moec_model *full = merge_ok(src, s, &o, &full_rep);
    o.rank = 0;
    o.energy = 0.5;
    moec_model *half = merge_ok(src, s, &o, &half_rep);
    for (int k = 0; k < MOEC_MERGE_KINDS; k++) {
        const moec_tensor *ta = kind(&avg->layers[l].experts[pair], k);
        float *xa = to_f32(ta), *xf = to_f32(kind(&full->layers[l].experts[pair], k)),
              *xh = to_f32(kind(&half->layers[l].experts[pair], k));
        /* the average lands on BF16 ties often (0.75a + 0.25b of BF16 values), so
         * the SVD's float rounding (about 1e-6 of the matrix's scale) may send an
         * element one unit the other way */
        double num_h = 0, den = 0, maxabs = 0;
        for (int64_t i = 0; i < moec_tensor_numel(ta); i++)
            maxabs = fmax(maxabs, fabs(xa[i]));
        for (int64_t i = 0; i < moec_tensor_numel(ta); i++) {
            assert_true(fabs((double)xf[i] - xa[i]) <= 0x1p-7 * fabs(xa[i]) + 1e-5 * maxabs);
            num_h += ((double)xh[i] - xa[i]) * ((double)xh[i] - xa[i]);
            den += (double)xa[i] * xa[i];
        }
        assert_true(sqrt(num_h / den) > 0.05);
        const moec_merge_kind *Kf = &full_rep.layers[l].groups[pair].kind[k];
        const moec_merge_kind *Kh = &half_rep.layers[l].groups[pair].kind[k];
        assert_int_equal(Kf->rank, Kf->max_rank);
        assert_true(Kh->rank < Kh->max_rank && Kh->energy >= 0.5 && Kh->energy < 1.0);
        assert_int_equal(Kh->factored_params, (int64_t)Kh->rank * (Kh->rows + Kh->cols));
        for (int i = 0; i < 2; i++) {
            assert_true(Kf->recon_err[i] < 1e-4);
            assert_true(Kh->recon_err[i] > Kf->recon_err[i] && Kh->recon_err[i] < 1.0);
        }
        free(xa);
        free(xf);
        free(xh);
    }
    assert_true(half_rep.params_factored != half_rep.params_after);
    free(router);
    moec_merge_report_free(&rep);
    moec_merge_report_free(&full_rep);
    moec_merge_report_free(&half_rep);
    moec_model_close(full);
    moec_model_close(half);
    moec_model_close(avg);
    moec_stats_free(s);
    moec_model_close(src);
}

/* Real statistics from a short calibration pass. */
static moec_stats *calibrated(const moec_model *m)
{
    moec_err err = {0};
    moec_stats *s;
    moec_exec *ex;
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.max_ctx = 32;
    assert_int_equal(moec_stats_new(&s, m, &err), MOEC_OK);
    assert_int_equal(moec_exec_new(&ex, m, &eo, &err), MOEC_OK);
    int32_t ids[96];
    for (int i = 0; i < 96; i++)
        ids[i] = (int32_t)((i * 7919 + 11) % m->cfg.vocab_size);
    moec_calib_opts co = MOEC_CALIB_OPTS_DEFAULT;
    co.ctx = 32;
    co.sim_tokens = 64;
    if (moec_calib_tokens(s, ex, ids, 96, -1, &co, &err) != MOEC_OK)
        fail_msg("calibration failed: %s", err.msg);
    moec_exec_free(ex);
    return s;
}

/* Both methods end to end on both fixtures: the result saves as an HF
 * directory, reopens with the new expert counts (and top_k lowered below
 * it where needed) and the same weights, and runs with finite logits; the
 * thread count does not change a byte. */
static void test_end_to_end(void **state)
{
    (void)state;
    const char *fixtures[] = {QWEN2, QWEN3};
    for (int fx = 0; fx < 2; fx++) {
        moec_model *src = tu_open_model(fixtures[fx]);
        moec_stats *s = calibrated(src);
        for (int method = 0; method < 2; method++) {
            moec_merge_opts o = opts_for(method ? MOEC_MERGE_AVERAGE : MOEC_MERGE_SUBMOE, 0);
            o.ratio = 0.625; /* 5 of 8 removed, 3 kept: below Qwen2-MoE's top-4 */
            o.energy = 0.9;
            moec_merge_report rep;
            moec_model *out = merge_ok(src, s, &o, &rep);
            const int want_k = src->cfg.top_k < 3 ? src->cfg.top_k : 3;
            assert_int_equal(rep.top_k_after, want_k);
            assert_int_equal(out->cfg.top_k, want_k);
            assert_true(rep.params_after < rep.params_before);

            o.threads = 2;
            moec_model *out2 = merge_ok(src, s, &o, NULL);
            for (int l = 0; l < out->cfg.n_layers; l++) {
                assert_same_bytes(&out2->layers[l].router, &out->layers[l].router);
                for (int e = 0; e < out->layers[l].n_experts; e++)
                    for (int k = 0; k < MOEC_MERGE_KINDS; k++)
                        assert_same_bytes(kind(&out2->layers[l].experts[e], k), kind(&out->layers[l].experts[e], k));
            }
            moec_model_close(out2);

            char dir[4096];
            snprintf(dir, sizeof dir, "%s/merged", tu_tmpdir());
            moec_err err = {0};
            if (moec_model_save_hf(out, dir, 0, false, &err) != MOEC_OK)
                fail_msg("save failed: %s", err.msg);
            moec_model *back = open_model_abs(dir);
            assert_int_equal(back->cfg.top_k, want_k);
            assert_int_equal(moec_model_params(back), rep.params_after);
            for (int l = 0; l < back->cfg.n_layers; l++) {
                assert_int_equal(back->cfg.layer_experts[l], 3);
                assert_int_equal(back->layers[l].n_experts, 3);
                assert_same_bytes(&back->layers[l].router, &out->layers[l].router);
                for (int e = 0; e < 3; e++)
                    for (int k = 0; k < MOEC_MERGE_KINDS; k++)
                        assert_same_bytes(kind(&back->layers[l].experts[e], k), kind(&out->layers[l].experts[e], k));
            }
            free(tu_prompt_logits(back, 24, false));
            moec_model_close(back);
            moec_merge_report_free(&rep);
            moec_model_close(out);
        }
        moec_stats_free(s);
        moec_model_close(src);
    }
}

static void expect_error(const moec_model *src, const moec_stats *s, const moec_merge_opts *o, moec_status want,
                         const char *const *needles)
{
    moec_err err = {0};
    moec_model *out = (moec_model *)1;
    moec_status st = moec_merge_model(src, s, o, &out, NULL, &err);
    if (st != want)
        fail_msg("expected status %d, got %d: %s", (int)want, (int)st, err.msg);
    assert_null(out);
    assert_null(strchr(err.msg, '\n'));
    for (int i = 0; needles[i]; i++)
        if (!strstr(err.msg, needles[i]))
            fail_msg("message '%s' does not mention '%s'", err.msg, needles[i]);
}

/* Bad options, foreign or incomplete statistics and damaged weights fail
 * with one line naming the problem, and nothing is returned. */
static void test_errors(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN2), *other = tu_open_model(QWEN3);
    moec_stats *s = hand_stats(src), *s_other = hand_stats(other);
    moec_merge_opts o = opts_for(MOEC_MERGE_SUBMOE, 0);
    expect_error(src, s, &o, MOEC_ERR_ARG, (const char *[]){"keep", "ratio", NULL});
    o.ratio = 0.99;
    expect_error(src, s, &o, MOEC_ERR_ARG, (const char *[]){"removes every expert", "layer 0", NULL});
    o.keep = 2;
    expect_error(src, s, &o, MOEC_ERR_ARG, (const char *[]){"not both", NULL});
    o.ratio = 0.0;
    o.keep = 9;
    expect_error(src, s, &o, MOEC_ERR_ARG, (const char *[]){"keep 9", "8 experts", "layer 0", NULL});
    o.keep = 4;
    o.energy = 0.0;
    expect_error(src, s, &o, MOEC_ERR_ARG, (const char *[]){"rank", "energy", NULL});
    o.energy = 0.9;
    expect_error(src, s_other, &o, MOEC_ERR_MISMATCH, (const char *[]){"merge", NULL});
    expect_error(src, NULL, &o, MOEC_ERR_ARG, (const char *[]){"statistics", NULL});
    expect_error(src, s, NULL, MOEC_ERR_ARG, (const char *[]){"options", NULL});

    s->layers[1].sim_tokens = 0;
    expect_error(src, s, &o, MOEC_ERR_ARG, (const char *[]){"similarities", "layer 1", NULL});
    s->layers[1].sim_tokens = 64;

    /* a NaN in expert 6's up projection of layer 1, everything merged into one */
    moec_model *bad = derive(src);
    moec_err err = {0};
    moec_tensor *w3 = &bad->layers[1].experts[6].w3;
    moec_tensor copy;
    assert_int_equal(moec_model_new_tensor(bad, &copy, w3->dtype, w3->shape[0], w3->shape[1], &err), MOEC_OK);
    memcpy((void *)copy.data, w3->data, copy.nbytes);
    ((uint16_t *)copy.data)[w3->shape[1] + 2] = 0x7fc0;
    *w3 = copy;
    o.keep = 1;
    for (int method = 0; method < 2; method++) {
        o.method = method ? MOEC_MERGE_AVERAGE : MOEC_MERGE_SUBMOE;
        expect_error(bad, s, &o, MOEC_ERR_NUMERIC, (const char *[]){"layer 1", "expert 6", "w3", "[1][2]", NULL});
    }

    /* an expert whose shape disagrees with the config, and one that is not floating point */
    *w3 = src->layers[1].experts[6].w3;
    moec_tensor *w2 = &bad->layers[0].experts[5].w2;
    w2->shape[0] /= 2;
    w2->shape[1] *= 2;
    expect_error(bad, s, &o, MOEC_ERR_SHAPE, (const char *[]){"layer 0 expert 5 w2", "expected [64][32]", NULL});
    *w2 = src->layers[0].experts[5].w2;
    bad->layers[0].experts[1].w1.dtype = MOEC_DT_I16;
    expect_error(bad, s, &o, MOEC_ERR_UNSUPPORTED, (const char *[]){"layer 0 expert 1 w1", "I16", NULL});

    moec_model_close(bad);
    moec_stats_free(s);
    moec_stats_free(s_other);
    moec_model_close(src);
    moec_model_close(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical_experts),
        cmocka_unit_test(test_keep_all_unchanged),
        cmocka_unit_test(test_one_pair),
        cmocka_unit_test(test_end_to_end),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
