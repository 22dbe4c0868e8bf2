/* moec_bench_run (lib/exec/bench.c): the weight bytes it reports per decode
 * token equal what a token reads by construction (attention, router, top-k
 * experts of every layer, the shared expert, the head), and the memory it
 * reports is labelled consistently: resident weight pages no more than the
 * files, peak at least the current resident set. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "exec/bench.h"
#include "model/model.h"

static uint64_t bytes(const moec_tensor *t)
{
    return moec_tensor_present(t) ? (uint64_t)t->nbytes : 0;
}

static uint64_t ffn_bytes(const moec_ffn *f)
{
    return bytes(&f->w1) + bytes(&f->w3) + bytes(&f->w2);
}

static void check(const char *dir)
{
    moec_err err = {0};
    moec_model *m;
    assert_int_equal(moec_model_open(&m, tu_src(dir), &err), MOEC_OK);
    const moec_config *c = &m->cfg;
    uint64_t want = bytes(&m->lm_head);
    for (int l = 0; l < c->n_layers; l++) {
        const moec_layer *L = &m->layers[l];
        want += bytes(&L->wq) + bytes(&L->wk) + bytes(&L->wv) + bytes(&L->wo);
        if (L->n_experts == 0) {
            want += ffn_bytes(&L->dense);
            continue;
        }
        /* experts of one layer share their shapes in these fixtures */
        want += bytes(&L->router) + (uint64_t)c->top_k * ffn_bytes(&L->experts[0]);
        if (c->shared_ffn > 0)
            want += ffn_bytes(&L->shared) + (c->shared_gate ? bytes(&L->shared_gate) : 0);
    }
    moec_bench_opts o = MOEC_BENCH_OPTS_DEFAULT;
    o.reps = 1, o.prompt_a = 4, o.prompt_b = 8, o.gen = 4, o.profile = true;
    moec_bench_result r;
    assert_int_equal(moec_bench_run(m, &o, &r, &err), MOEC_OK);
    printf("# %s: %llu weight bytes per decode token (expected %llu); peak RSS %llu, weights resident %llu of %llu\n",
           dir, (unsigned long long)r.bytes_per_token, (unsigned long long)want, (unsigned long long)r.mem.peak_rss,
           (unsigned long long)r.mem.rss_weights, (unsigned long long)m->file_bytes);
    assert_true(r.gen_tps > 0 && r.pp_a_tps > 0 && r.pp_b_tps > 0);
    assert_int_equal(r.bytes_per_token, want);
    uint64_t sum = 0;
    for (int i = 0; i < MOEC_OP_COUNT; i++)
        sum += r.bytes_gen[i];
    assert_int_equal(sum, r.bytes_per_token);
    assert_int_equal(r.bytes_gen[MOEC_OP_HEAD], bytes(&m->lm_head));
    /* every weight was touched by the runs: mapped pages cover the model
     * (page rounding aside), and never exceed the files */
    assert_true(r.mem.rss_weights > 0);
    assert_true(r.mem.rss_weights <= m->file_bytes + (uint64_t)64 * 4096);
    assert_true(r.mem.peak_rss >= r.mem.rss && r.mem.rss >= r.mem.rss_anon);
    moec_model_close(m);
}

static void test_qwen3moe(void **state)
{
    (void)state;
    check("tests/fixtures/qwen3moe-random");
}

static void test_qwen2moe(void **state)
{
    (void)state;
    check("tests/fixtures/qwen2moe-random");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3moe),
        cmocka_unit_test(test_qwen2moe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
