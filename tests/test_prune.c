/* Expert pruning on the random fixtures with hand-built statistics, so each
 * method's answer is known: a never-routed expert goes first (freq, EASY-EP),
 * two identical experts are one cluster (STUN), a dropped expert made of
 * scaled copies of a kept expert's neurons lands in that expert with the
 * predicted merge (DERN); outputs round-trip through the HF reader, uniform
 * and non-uniform; Wanda zeroes exactly the requested fraction per row; bad
 * options are refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include <cjson/cJSON.h>

#include "calib/stats.h"
#include "model/model.h"
#include "prune/prune.h"

#define QWEN3 "tests/fixtures/qwen3moe-random"
#define QWEN2 "tests/fixtures/qwen2moe-random"

/* Statistics of m (its fingerprint), every sum zero; tests fill what they need. */
static moec_stats *stats_for(const moec_model *m)
{
    moec_err err = {0};
    moec_stats *s = NULL;
    assert_int_equal(moec_stats_new(&s, m, &err), MOEC_OK);
    return s;
}

static void stats_free(moec_stats *s) { moec_stats_free(s); }

/* Every layer: count and gate_sum decreasing with the index except for a
 * never-routed expert `never` (count, gate_sum, easyep all 0). */
static void fill_routing(moec_stats *s, int never)
{
    for (int l = 0; l < s->n_layers; l++) {
        moec_layer_stats *ls = &s->layers[l];
        for (int e = 0; e < ls->n_experts; e++) {
            bool routed = e != never;
            ls->count[e] = routed ? 1000.0 - 10.0 * e : 0.0;
            ls->gate_sum[e] = routed ? 400.0 - 3.0 * e : 0.0;
            ls->easyep_sum[e] = routed ? 50.0 + 7.0 * ((e * 5) % 8) : 0.0;
            for (int f = 0; f < ls->n_experts; f++)
                ls->co_count[e * ls->n_experts + f] = e == f || !routed || f == never ? 0.0 : 10.0 + ((e + f) % 5);
        }
    }
}

static void assert_router_rows(const moec_model *src, const moec_model *out, int l, const int *kept, int n)
{
    const moec_tensor *a = &src->layers[l].router, *b = &out->layers[l].router;
    size_t row = (size_t)a->shape[1] * moec_dtype_size(a->dtype);
    assert_int_equal(b->shape[0], n);
    for (int i = 0; i < n; i++)
        assert_memory_equal((const char *)b->data + i * row, (const char *)a->data + (size_t)kept[i] * row, row);
}

static void test_freq_drops_never_routed(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_stats *s = stats_for(src);
    fill_routing(s, 3);
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    o.keep = 7;
    moec_prune_report rep;
    moec_model *out = NULL;
    moec_err err = {0};
    assert_int_equal(moec_prune_freq(src, s, &o, &out, &rep, &err), MOEC_OK);
    for (int l = 0; l < src->cfg.n_layers; l++) {
        const moec_prune_layer *R = &rep.layers[l];
        assert_int_equal(R->n_after, 7);
        int want[7] = {0, 1, 2, 4, 5, 6, 7};
        assert_memory_equal(R->kept, want, sizeof want);
        assert_int_equal(R->group[3], -1);
        assert_int_equal(out->layers[l].n_experts, 7);
        assert_ptr_equal(out->layers[l].experts[3].w1.data, src->layers[l].experts[4].w1.data);
        assert_router_rows(src, out, l, want, 7);
    }
    assert_true(rep.params_after < rep.params_before);
    assert_int_equal(rep.top_k_after, src->cfg.top_k);
    moec_model_close(out);
    moec_prune_report_free(&rep);

    /* ratio 0.5 of 8 keeps the 4 most selected: 0, 1, 2, 4 */
    o.keep = 0;
    o.ratio = 0.5;
    assert_int_equal(moec_prune_freq(src, s, &o, &out, &rep, &err), MOEC_OK);
    int want4[4] = {0, 1, 2, 4};
    assert_memory_equal(rep.layers[0].kept, want4, sizeof want4);
    moec_model_close(out);
    moec_prune_report_free(&rep);
    stats_free(s);
    moec_model_close(src);
}

static void test_easyep_scores_and_domains(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_stats *s = stats_for(src);
    fill_routing(s, 5);
    /* expert 5 has no EASY-EP score; a large count (which freq would keep)
     * must not save it: EASY-EP ranks on its own score */
    for (int l = 0; l < s->n_layers; l++)
        s->layers[l].count[5] = 5000.0;
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    o.keep = 7;
    moec_prune_report rep;
    moec_model *out = NULL;
    moec_err err = {0};
    const moec_stats *one[1] = {s};
    assert_int_equal(moec_prune_easyep(src, one, 1, &o, &out, &rep, &err), MOEC_OK);
    for (int l = 0; l < src->cfg.n_layers; l++) {
        assert_int_equal(rep.layers[l].group[5], -1);
        assert_int_equal(rep.layers[l].n_after, 7);
    }
    moec_model_close(out);
    moec_prune_report_free(&rep);

    /* two domains on different scales: A's raw scores are 100x B's, yet after
     * per-layer normalisation each domain counts the same.
     * A: expert 0 holds 91% of A's mass, experts 1..6 share 9%, 7 has none;
     * B: experts 1..7 share B evenly, expert 0 has nothing.
     * Averaged shares: e0 = 0.455, e1..6 = (0.015 + 0.1429) / 2 = 0.0789,
     * e7 = 0.0714: the lowest. Once as two domains of one statistics (what
     * moec-calib writes for two text files), once as two statistics. */
    moec_stats *a = stats_for(src), *b = stats_for(src), *ab = stats_for(src);
    int ia, ib;
    assert_int_equal(moec_stats_add_domain(ab, "a.train.txt", &ia, &err), MOEC_OK);
    assert_int_equal(moec_stats_add_domain(ab, "b.train.txt", &ib, &err), MOEC_OK);
    for (int l = 0; l < src->cfg.n_layers; l++)
        for (int e = 0; e < 8; e++) {
            double va = e == 0 ? 9100.0 : e == 7 ? 0.0 : 150.0, vb = e == 0 ? 0.0 : 1.0;
            a->layers[l].easyep_sum[e] = va;
            b->layers[l].easyep_sum[e] = vb;
            ab->layers[l].easyep_domain[ia * 8 + e] = va;
            ab->layers[l].easyep_domain[ib * 8 + e] = vb;
            ab->layers[l].easyep_sum[e] = va + vb;
            a->layers[l].gate_sum[e] = b->layers[l].gate_sum[e] = ab->layers[l].gate_sum[e] = 1.0;
        }
    const moec_stats *two[2] = {a, b}, *joint[1] = {ab};
    for (int form = 0; form < 2; form++) {
        o.keep = 7;
        assert_int_equal(form ? moec_prune_easyep(src, two, 2, &o, &out, &rep, &err)
                              : moec_prune_easyep(src, joint, 1, &o, &out, &rep, &err),
                         MOEC_OK);
        assert_int_equal(rep.domains, 2);
        assert_int_equal(rep.layers[0].group[7], -1);
        assert_in_range((long)(1e4 * rep.layers[0].score[0]), 4549, 4551);
        moec_model_close(out);
        moec_prune_report_free(&rep);
        /* keep 2: expert 0, then experts 1..6 tie at 0.0789 (their gate_sum
         * shares tie too): the lower index wins */
        o.keep = 2;
        assert_int_equal(form ? moec_prune_easyep(src, two, 2, &o, &out, &rep, &err)
                              : moec_prune_easyep(src, joint, 1, &o, &out, &rep, &err),
                         MOEC_OK);
        int want[2] = {0, 1};
        assert_memory_equal(rep.layers[1].kept, want, sizeof want);
        moec_model_close(out);
        moec_prune_report_free(&rep);
    }
    /* domain B alone (by its short name): expert 0 has no score there */
    const char *only_b[1] = {"b"};
    o.keep = 7;
    o.domains = only_b;
    o.n_domains = 1;
    assert_int_equal(moec_prune_easyep(src, joint, 1, &o, &out, &rep, &err), MOEC_OK);
    assert_int_equal(rep.domains, 1);
    assert_int_equal(rep.layers[0].group[0], -1);
    moec_model_close(out);
    moec_prune_report_free(&rep);
    const char *none[1] = {"python"};
    o.domains = none;
    assert_int_equal(moec_prune_easyep(src, joint, 1, &o, &out, &rep, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "python"));
    moec_prune_report_free(&rep);
    stats_free(a);
    stats_free(b);
    stats_free(ab);
    stats_free(s);
    moec_model_close(src);
}

/* A model derived from src where, in every layer, expert `copy` has expert
 * `orig`'s weights and router row. */
static moec_model *with_twin(const moec_model *src, int orig, int copy)
{
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_derive(&m, src, &err), MOEC_OK);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        moec_layer *L = &m->layers[l];
        L->experts[copy] = L->experts[orig];
        moec_tensor r;
        assert_int_equal(moec_model_new_tensor(m, &r, L->router.dtype, L->router.shape[0], L->router.shape[1], &err),
                         MOEC_OK);
        size_t row = (size_t)L->router.shape[1] * moec_dtype_size(L->router.dtype);
        memcpy((void *)r.data, L->router.data, r.nbytes);
        memcpy((char *)r.data + (size_t)copy * row, (const char *)L->router.data + (size_t)orig * row, row);
        L->router = r;
    }
    return m;
}

static void test_stun_identical_experts(void **state)
{
    (void)state;
    moec_model *base = tu_open_model(QWEN3);
    moec_model *src = with_twin(base, 2, 6);
    moec_stats *s = stats_for(src);
    fill_routing(s, -1);
    moec_err err = {0};
    for (int variant = 0; variant < 2; variant++) {
        moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
        o.keep = 7;
        o.stun_mix = variant == 0 ? 0.0 : 1.0;
        if (variant == 1)
            /* the twins are always selected together */
            for (int l = 0; l < s->n_layers; l++) {
                s->layers[l].co_count[2 * 8 + 6] = s->layers[l].co_count[6 * 8 + 2] = 500.0;
            }
        moec_prune_report rep;
        moec_model *out = NULL;
        assert_int_equal(moec_prune_stun(src, s, &o, &out, &rep, &err), MOEC_OK);
        for (int l = 0; l < src->cfg.n_layers; l++) {
            const moec_prune_layer *R = &rep.layers[l];
            assert_int_equal(R->n_after, 7);
            /* equidistant from their centroid: the lower index represents them */
            int want[7] = {0, 1, 2, 3, 4, 5, 7};
            assert_memory_equal(R->kept, want, sizeof want);
            assert_int_equal(R->group[6], R->group[2]);
            assert_true(R->score[2] == 2.0 && R->score[6] == 2.0 && R->score[0] == 1.0);
        }
        moec_model_close(out);
        moec_prune_report_free(&rep);
    }
    stats_free(s);
    moec_model_close(src);
    moec_model_close(base);
}

/* Router rows on a chain 0 - 1 - 2 (neighbours 1 apart, ends 2 apart) and a
 * pair 3 - 4 (1.5 apart), everything else far away. Two merges: single
 * linkage would chain 0, 1, 2; complete linkage merges {0, 1}, refuses 2
 * (2 is 2 away from 0) and takes {3, 4} instead. */
static void test_stun_complete_linkage(void **state)
{
    (void)state;
    moec_model *q = tu_open_model(QWEN3);
    moec_err err = {0};
    moec_model *src;
    assert_int_equal(moec_model_derive(&src, q, &err), MOEC_OK);
    const int d = src->cfg.hidden_size;
    for (int l = 0; l < src->cfg.n_layers; l++) {
        moec_tensor r;
        assert_int_equal(moec_model_new_tensor(src, &r, MOEC_DT_BF16, 8, d, &err), MOEC_OK);
        uint16_t *p = (uint16_t *)r.data;
        float rows[8][2] = {{0, 0}, {1, 0}, {2, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}};
        for (int e = 0; e < 8; e++) {
            for (int c = 0; c < d; c++)
                p[e * d + c] = moec_f32_to_bf16(0.0f);
            p[e * d + 0] = moec_f32_to_bf16(rows[e][0]);
            if (e >= 3)
                p[e * d + e] = moec_f32_to_bf16(10.0f);
        }
        p[4 * d + 3] = moec_f32_to_bf16(10.0f); /* 4 = 3 + 1.5 e_4 */
        p[4 * d + 4] = moec_f32_to_bf16(1.5f);
        src->layers[l].router = r;
    }
    moec_stats *s = stats_for(src);
    fill_routing(s, -1);
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    o.keep = 6;
    o.stun_mix = 0.0;
    moec_prune_report rep;
    moec_model *out = NULL;
    assert_int_equal(moec_prune_stun(src, s, &o, &out, &rep, &err), MOEC_OK);
    for (int l = 0; l < src->cfg.n_layers; l++) {
        const int *g = rep.layers[l].group;
        assert_int_equal(g[0], g[1]);
        assert_int_equal(g[3], g[4]);
        assert_int_not_equal(g[2], g[1]);
        assert_int_not_equal(g[2], g[0]);
        assert_int_equal(rep.layers[l].n_after, 6);
    }
    moec_model_close(out);
    moec_prune_report_free(&rep);
    stats_free(s);
    moec_model_close(src);
    moec_model_close(q);
}

static void test_roundtrip(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN2);
    moec_stats *s = stats_for(src);
    fill_routing(s, -1);
    moec_err err = {0};
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    moec_prune_report rep;
    moec_model *out = NULL, *back = NULL;
    char dir[4200];

    /* uniform, 4 of 8 with top-4 routing: top_k stays */
    o.keep = 4;
    assert_int_equal(moec_prune_freq(src, s, &o, &out, &rep, &err), MOEC_OK);
    snprintf(dir, sizeof dir, "%s/out", tu_tmpdir());
    assert_int_equal(moec_model_save_hf(out, dir, 0, false, &err), MOEC_OK);
    assert_int_equal(moec_model_open(&back, dir, &err), MOEC_OK);
    assert_int_equal(back->cfg.top_k, 4);
    for (int l = 0; l < back->cfg.n_layers; l++) {
        assert_int_equal(back->cfg.layer_experts[l], 4);
        assert_int_equal(back->layers[l].experts[1].w2.nbytes, src->layers[l].experts[1].w2.nbytes);
        assert_memory_equal(back->layers[l].experts[1].w2.data, src->layers[l].experts[1].w2.data,
                            src->layers[l].experts[1].w2.nbytes);
        int kept[4] = {0, 1, 2, 3};
        assert_router_rows(src, back, l, kept, 4);
    }
    assert_true(moec_config_uniform(&back->cfg));
    assert_int_equal(moec_model_params(back), rep.params_after);
    moec_model_close(back);
    moec_model_close(out);
    moec_prune_report_free(&rep);

    /* 3 of 8 under top-4 routing: top_k lowered, said in the report */
    o.keep = 3;
    assert_int_equal(moec_prune_freq(src, s, &o, &out, &rep, &err), MOEC_OK);
    assert_int_equal(rep.top_k_after, 3);
    assert_true(rep.n_notes >= 1 && strstr(rep.notes[0], "lowered from 4 to 3"));
    snprintf(dir, sizeof dir, "%s/out", tu_tmpdir());
    assert_int_equal(moec_model_save_hf(out, dir, 0, false, &err), MOEC_OK);
    assert_int_equal(moec_model_open(&back, dir, &err), MOEC_OK);
    assert_int_equal(back->cfg.top_k, 3);
    moec_model_close(back);
    moec_model_close(out);
    moec_prune_report_free(&rep);
    stats_free(s);
    moec_model_close(src);

    /* global STUN: two twin pairs in layer 0 and none in layer 1, a budget of
     * 14 of 16: both merges land in layer 0 (distance 0), layer 1 keeps all */
    moec_model *q = tu_open_model(QWEN3);
    moec_model *t1 = with_twin(q, 0, 1);
    moec_model *t2;
    assert_int_equal(moec_model_derive(&t2, t1, &err), MOEC_OK);
    /* undo the twins in layer 1, add a second pair (4, 5) in layer 0 */
    moec_ffn *own = t2->layers[1].experts;
    t2->layers[1] = q->layers[1];
    t2->layers[1].experts = own;
    memcpy(own, q->layers[1].experts, 8 * sizeof *own);
    t2->layers[0].experts[5] = t2->layers[0].experts[4];
    {
        moec_tensor *r = &t2->layers[0].router, nr;
        assert_int_equal(moec_model_new_tensor(t2, &nr, r->dtype, r->shape[0], r->shape[1], &err), MOEC_OK);
        size_t row = (size_t)r->shape[1] * moec_dtype_size(r->dtype);
        memcpy((void *)nr.data, r->data, nr.nbytes);
        memcpy((char *)nr.data + 5 * row, (const char *)r->data + 4 * row, row);
        *r = nr;
    }
    s = stats_for(t2);
    fill_routing(s, -1);
    o = (moec_prune_opts)MOEC_PRUNE_OPTS_DEFAULT;
    o.alloc = MOEC_PRUNE_GLOBAL;
    o.keep = 7;
    o.stun_mix = 0.0;
    assert_int_equal(moec_prune_stun(t2, s, &o, &out, &rep, &err), MOEC_OK);
    assert_int_equal(rep.layers[0].n_after, 6);
    assert_int_equal(rep.layers[1].n_after, 8);
    assert_true(rep.non_uniform);
    bool said = false;
    for (int i = 0; i < rep.n_notes; i++)
        said |= strstr(rep.notes[i], "will not load") != NULL;
    assert_true(said);
    snprintf(dir, sizeof dir, "%s/out", tu_tmpdir());
    assert_int_equal(moec_model_save_hf(out, dir, 0, false, &err), MOEC_OK);
    assert_int_equal(moec_model_open(&back, dir, &err), MOEC_OK);
    assert_int_equal(back->cfg.layer_experts[0], 6);
    assert_int_equal(back->cfg.layer_experts[1], 8);
    assert_int_equal(back->cfg.top_k, 2);
    assert_false(moec_config_uniform(&back->cfg));
    {
        size_t n;
        char path[4300];
        snprintf(path, sizeof path, "%s/config.json", dir);
        char *cfg = tu_read_file(path, &n);
        assert_non_null(strstr(cfg, "moec_layer_experts"));
        free(cfg);
    }
    moec_model_close(back);
    moec_model_close(out);
    moec_prune_report_free(&rep);
    stats_free(s);
    moec_model_close(t2);
    moec_model_close(t1);
    moec_model_close(q);
}

static float bf16_at(const moec_tensor *t, int64_t r, int64_t c)
{
    const uint16_t *p = t->data;
    return moec_bf16_to_f32(p[r * t->shape[1] + c]);
}

/* Expert 7 of each layer becomes 2x expert 2's neurons, in a permuted order;
 * gate_sum makes 7 the one dropped. */
static void test_dern_segments(void **state)
{
    (void)state;
    moec_model *q = tu_open_model(QWEN3);
    moec_err err = {0};
    moec_model *src;
    assert_int_equal(moec_model_derive(&src, q, &err), MOEC_OK);
    const int64_t ff = q->cfg.expert_ffn, d = q->cfg.hidden_size;
    int perm[256];
    for (int j = 0; j < ff; j++)
        perm[j] = (int)((j * 7 + 3) % ff); /* 7 is coprime with 48: a permutation */
    for (int l = 0; l < src->cfg.n_layers; l++) {
        const moec_ffn *k = &q->layers[l].experts[2];
        moec_ffn *x = &src->layers[l].experts[7];
        assert_int_equal(k->w1.dtype, MOEC_DT_BF16);
        moec_tensor w1, w3, w2;
        assert_int_equal(moec_model_new_tensor(src, &w1, MOEC_DT_BF16, ff, d, &err), MOEC_OK);
        assert_int_equal(moec_model_new_tensor(src, &w3, MOEC_DT_BF16, ff, d, &err), MOEC_OK);
        assert_int_equal(moec_model_new_tensor(src, &w2, MOEC_DT_BF16, d, ff, &err), MOEC_OK);
        uint16_t *p1 = (uint16_t *)w1.data, *p3 = (uint16_t *)w3.data, *p2 = (uint16_t *)w2.data;
        for (int64_t j = 0; j < ff; j++)
            for (int64_t c = 0; c < d; c++) {
                p1[j * d + c] = moec_f32_to_bf16(2.0f * bf16_at(&k->w1, perm[j], c));
                p3[j * d + c] = moec_f32_to_bf16(2.0f * bf16_at(&k->w3, perm[j], c));
                p2[c * ff + j] = moec_f32_to_bf16(2.0f * bf16_at(&k->w2, c, perm[j]));
            }
        x->w1 = w1;
        x->w3 = w3;
        x->w2 = w2;
    }
    moec_stats *s = stats_for(src);
    fill_routing(s, -1);
    for (int l = 0; l < s->n_layers; l++) {
        s->layers[l].gate_sum[2] = 3.0;
        s->layers[l].gate_sum[7] = 1.0; /* the lowest: dropped */
    }
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    o.keep = 7;
    o.dern_alpha = 0.9;
    moec_prune_report rep;
    moec_model *out = NULL;
    assert_int_equal(moec_prune_dern(src, s, &o, &out, &rep, &err), MOEC_OK);
    assert_int_equal(rep.segments, 2 * ff);
    assert_int_equal(rep.segments_assigned, 2 * ff);
    for (int l = 0; l < src->cfg.n_layers; l++) {
        const moec_prune_layer *R = &rep.layers[l];
        assert_int_equal(R->n_after, 7);
        assert_int_equal(R->kept[2], 2);
        assert_int_equal(R->group[7], 2);
        assert_int_equal(R->segments[2], ff);
        assert_int_equal(R->segments[0], 0);
        /* n <- (3 n + 1 * 2n) / (3 + 1) = 1.25 n, every neuron of expert 2 */
        const moec_ffn *k = &q->layers[l].experts[2], *m = &out->layers[l].experts[2];
        for (int64_t j = 0; j < ff; j++)
            for (int64_t c = 0; c < d; c++) {
                assert_true(bf16_at(&m->w1, j, c) == moec_bf16_to_f32(moec_f32_to_bf16(1.25f * bf16_at(&k->w1, j, c))));
                assert_true(bf16_at(&m->w3, j, c) == moec_bf16_to_f32(moec_f32_to_bf16(1.25f * bf16_at(&k->w3, j, c))));
                assert_true(bf16_at(&m->w2, c, j) == moec_bf16_to_f32(moec_f32_to_bf16(1.25f * bf16_at(&k->w2, c, j))));
            }
        /* the other kept experts received nothing and still point at the source */
        assert_ptr_equal(out->layers[l].experts[0].w1.data, src->layers[l].experts[0].w1.data);
    }
    moec_model_close(out);
    moec_prune_report_free(&rep);

    /* a dropped expert unlike every kept neuron: all its segments are discarded */
    for (int l = 0; l < s->n_layers; l++) {
        s->layers[l].gate_sum[7] = 5.0;
        s->layers[l].gate_sum[4] = 0.5;
    }
    assert_int_equal(moec_prune_dern(src, s, &o, &out, &rep, &err), MOEC_OK);
    assert_int_equal(rep.segments_assigned, 0);
    assert_int_equal(rep.segments_discarded, 2 * ff);
    assert_int_equal(rep.layers[0].group[4], -1);
    assert_ptr_equal(out->layers[0].experts[2].w1.data, src->layers[0].experts[2].w1.data);
    moec_model_close(out);
    moec_prune_report_free(&rep);
    stats_free(s);
    moec_model_close(src);
    moec_model_close(q);
}

static void test_wanda_sparsity(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_stats *s = stats_for(src);
    fill_routing(s, -1);
    int32_t tokens[768];
    uint32_t x = 12345;
    for (int i = 0; i < 768; i++) {
        x = x * 1664525u + 1013904223u;
        tokens[i] = (int32_t)((x >> 8) % 4000);
    }
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    o.keep = 6;
    o.sparsity = 0.5;
    o.calib_tokens = tokens;
    o.n_calib_tokens = 768;
    o.calib_ctx = 128;
    moec_prune_report rep;
    moec_model *out = NULL;
    moec_err err = {0};
    assert_int_equal(moec_prune_stun(src, s, &o, &out, &rep, &err), MOEC_OK);
    assert_int_equal(rep.wanda_skipped, 0);
    int64_t weights = 0;
    for (int l = 0; l < out->cfg.n_layers; l++)
        for (int e = 0; e < out->layers[l].n_experts; e++) {
            const moec_ffn *f = &out->layers[l].experts[e], *g = &src->layers[l].experts[rep.layers[l].kept[e]];
            const moec_tensor *t[3] = {&f->w1, &f->w3, &f->w2}, *u[3] = {&g->w1, &g->w3, &g->w2};
            for (int k = 0; k < 3; k++) {
                const int64_t R = t[k]->shape[0], C = t[k]->shape[1];
                weights += R * C;
                for (int64_t r = 0; r < R; r++) {
                    int64_t zeros = 0;
                    for (int64_t c = 0; c < C; c++) {
                        float v = bf16_at(t[k], r, c);
                        if (v == 0.0f)
                            zeros++;
                        else
                            assert_true(v == bf16_at(u[k], r, c));
                    }
                    assert_int_equal(zeros, C / 2);
                }
            }
        }
    assert_int_equal(rep.wanda_weights, weights);
    assert_true(fabs(rep.sparsity_achieved - 0.5) < 1e-12);
    moec_model_close(out);
    moec_prune_report_free(&rep);
    stats_free(s);
    moec_model_close(src);
}

static void test_bad_options(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_stats *s = stats_for(src);
    fill_routing(s, -1);
    moec_prune_report rep;
    moec_model *out = NULL;
    moec_err err = {0};
    const moec_stats *one[1] = {s};
    struct {
        int keep;
        double ratio, sparsity, alpha;
        moec_prune_alloc alloc;
        moec_status want;
        const char *says;
    } cases[] = {
        {9, 0, 0, 0.5, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "exceeds"},
        {0, 0, 0, 0.5, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "ratio"},
        {0, 1.0, 0, 0.5, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "ratio"},
        {3, 0.5, 0, 0.5, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "not both"},
        {-1, 0, 0, 0.5, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "negative"},
        {1, 0, 0, 0.5, MOEC_PRUNE_GLOBAL, MOEC_ERR_ARG, "below"},
        {4, 0, 1.0, 0.5, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "sparsity"},
        {4, 0, 0.3, 0.5, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "calibration tokens"},
        {4, 0, 0, 2.0, MOEC_PRUNE_UNIFORM, MOEC_ERR_ARG, "alpha"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
        o.keep = cases[i].keep;
        o.ratio = cases[i].ratio;
        o.sparsity = cases[i].sparsity;
        o.dern_alpha = cases[i].alpha;
        o.alloc = cases[i].alloc;
        moec_status st = cases[i].sparsity != 0   ? moec_prune_stun(src, s, &o, &out, &rep, &err)
                         : cases[i].alpha != 0.5 ? moec_prune_dern(src, s, &o, &out, &rep, &err)
                         : i % 2                 ? moec_prune_freq(src, s, &o, &out, &rep, &err)
                                                 : moec_prune_easyep(src, one, 1, &o, &out, &rep, &err);
        assert_int_equal(st, cases[i].want);
        if (!strstr(err.msg, cases[i].says))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, err.msg, cases[i].says);
        moec_prune_report_free(&rep);
    }
    /* statistics of another model: another architecture, then the same
     * shapes with other router weights */
    moec_model *big = tu_open_model("models/mixtral-tiny");
    moec_stats *other = stats_for(big);
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    o.keep = 4;
    assert_int_equal(moec_prune_freq(src, other, &o, &out, &rep, &err), MOEC_ERR_MISMATCH);
    moec_prune_report_free(&rep);
    stats_free(other);
    moec_model_close(big);
    moec_model *twin = with_twin(src, 0, 1);
    assert_int_equal(moec_prune_stun(twin, s, &o, &out, &rep, &err), MOEC_ERR_MISMATCH);
    assert_non_null(strstr(err.msg, "router"));
    moec_prune_report_free(&rep);
    moec_model_close(twin);
    stats_free(s);
    moec_model_close(src);
}

static void test_report_json(void **state)
{
    (void)state;
    moec_model *src = tu_open_model(QWEN3);
    moec_stats *s = stats_for(src);
    fill_routing(s, 0);
    moec_prune_opts o = MOEC_PRUNE_OPTS_DEFAULT;
    o.keep = 6;
    moec_prune_report rep;
    moec_model *out = NULL;
    moec_err err = {0};
    assert_int_equal(moec_prune_dern(src, s, &o, &out, &rep, &err), MOEC_OK);
    cJSON *j = moec_prune_report_json(&rep);
    assert_non_null(j);
    char *txt = cJSON_PrintUnformatted(j);
    assert_non_null(strstr(txt, "\"method\":\"dern\""));
    assert_non_null(strstr(txt, "\"kept\":[1,2,3,4,5,6]"));
    assert_non_null(strstr(txt, "\"params_before\""));
    assert_non_null(strstr(txt, "\"bytes_after\""));
    free(txt);
    cJSON_Delete(j);
    moec_model_close(out);
    moec_prune_report_free(&rep);
    stats_free(s);
    moec_model_close(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_freq_drops_never_routed), cmocka_unit_test(test_easyep_scores_and_domains),
        cmocka_unit_test(test_stun_identical_experts),  cmocka_unit_test(test_stun_complete_linkage),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_dern_segments),           cmocka_unit_test(test_wanda_sparsity),
        cmocka_unit_test(test_bad_options),             cmocka_unit_test(test_report_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
