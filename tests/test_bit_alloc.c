/* Tests for quant/bit_alloc.c: the MC-MoE integer program solved by GLPK. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant/bit_alloc.h"

static int count_width(const moec_bitalloc_result *r, int n, int w)
{
    int c = 0;
    for (int e = 0; e < n; e++)
        c += r->bits[e] == w;
    return c;
}

/* One layer of n experts choosing among the nb widths in bits; loss is
 * [n][nb]; α, β and diversity at their defaults. */
static moec_bitalloc_problem problem(int n, const double *freq, const double *weight, int nb,
                                     const int *bits, const double *loss, double avg_bits)
{
    moec_bitalloc_problem p = MOEC_BITALLOC_PROBLEM_DEFAULT;
    p.n_experts = n;
    p.freq = freq;
    p.weight = weight;
    p.n_bits = nb;
    p.bits = bits;
    p.loss = loss;
    p.avg_bits = avg_bits;
    return p;
}

/* The same loss per width for every expert: loss[e][b] = by_width[b]. */
static void same_losses(double *loss, int n, int nb, const double *by_width)
{
    for (int e = 0; e < n; e++)
        memcpy(loss + (size_t)e * nb, by_width, (size_t)nb * sizeof *loss);
}

/* Losses that fall with the width, experts of unequal importance: the whole
 * budget gets spent, exactly. */
static void test_budget_met_exactly(void **state)
{
    (void)state;
    const int bits[2] = {2, 3};
    double freq[8], weight[8], loss[16];
    for (int e = 0; e < 8; e++) {
        freq[e] = 100 + 37 * ((e * 5) % 8);
        weight[e] = 0.3 + 0.05 * ((e * 3) % 8);
        loss[e * 2 + 0] = 10.0 + e;
        loss[e * 2 + 1] = 2.0 + 0.5 * e;
    }
    moec_bitalloc_problem p = problem(8, freq, weight, 2, bits, loss, 2.5);
    moec_bitalloc_result r;
    moec_err err;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_true(r.avg_bits == 2.5);
    assert_int_equal(count_width(&r, 8, 3), 4);
    assert_int_equal(count_width(&r, 8, 2), 4);
    assert_int_equal(r.n_layers, 1);
    assert_int_equal(r.diversity_dropped, 0);
    moec_bitalloc_result_free(&r);

    /* A fractional budget rounds down to whole bits and is never exceeded. */
    p.avg_bits = 2.6; /* 20.8 bits -> 20 */
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_true(r.avg_bits <= 2.6);
    assert_true(r.avg_bits == 2.5);
    moec_bitalloc_result_free(&r);
}

/* Equal losses everywhere: the extra bits go to the experts with the largest
 * φ^α·w^β, and β = 1.5 weighs the routing weight above the frequency. */
static void test_prefers_important_experts(void **state)
{
    (void)state;
    const int bits[2] = {2, 3};
    double freq[8] = {10, 50, 20, 5, 40, 30, 15, 25};
    double weight[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    double loss[16];
    same_losses(loss, 8, 2, (const double[]){4.0, 1.0});
    moec_bitalloc_problem p = problem(8, freq, weight, 2, bits, loss, 2.25); /* two at 3 bits */
    moec_bitalloc_result r;
    moec_err err;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    const int expect[8] = {2, 3, 2, 2, 3, 2, 2, 2}; /* frequencies 50 and 40 */
    assert_memory_equal(r.bits, expect, sizeof expect);
    moec_bitalloc_result_free(&r);

    /* freq 2:1 against weight 1:1.5 -> 2 * 1 vs 1 * 1.5^1.5 = 1.84: freq wins
     * at β = 1.5 ... */
    double f2[2] = {2, 1}, w2[2] = {1, 1.5}, l2[4] = {4, 1, 4, 1};
    p = problem(2, f2, w2, 2, bits, l2, 2.5);
    p.diversity = false;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_int_equal(r.bits[0], 3);
    assert_int_equal(r.bits[1], 2);
    moec_bitalloc_result_free(&r);
    /* ... and the routing weight wins at β = 2 (2.25 > 2). */
    p.beta = 2.0;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_int_equal(r.bits[0], 2);
    assert_int_equal(r.bits[1], 3);
    moec_bitalloc_result_free(&r);
}

/* Four experts, widths {1,2,3}, 8 bits: ignoring diversity the optimum is
 * {3,3,1,1}; the paper's rows force one expert at 2 bits. */
static void test_diversity(void **state)
{
    (void)state;
    const int bits[3] = {1, 2, 3};
    double freq[4] = {4, 3, 2, 1}, weight[4] = {1, 1, 1, 1};
    double loss[12];
    same_losses(loss, 4, 3, (const double[]){1.0, 1.0, 0.0});
    moec_bitalloc_problem p = problem(4, freq, weight, 3, bits, loss, 2.0);
    p.diversity = false;
    moec_bitalloc_result r;
    moec_err err;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    const int free_choice[4] = {3, 3, 1, 1};
    assert_memory_equal(r.bits, free_choice, sizeof free_choice);
    moec_bitalloc_result_free(&r);

    p.diversity = true;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_true(count_width(&r, 4, 3) >= 1);
    assert_true(count_width(&r, 4, 2) >= 1);
    assert_true(r.avg_bits <= 2.0);
    assert_int_equal(r.bits[0], 3); /* the most frequent expert keeps the top width */
    assert_int_equal(r.diversity_dropped, 0);
    moec_bitalloc_result_free(&r);

    /* The minimum budget cannot afford diversity: dropped, reported, feasible. */
    const int b23[2] = {2, 3};
    double l8[16], f8[8], w8[8];
    for (int e = 0; e < 8; e++)
        f8[e] = w8[e] = 1.0;
    same_losses(l8, 8, 2, (const double[]){2.0, 1.0});
    p = problem(8, f8, w8, 2, b23, l8, 2.0);
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_int_equal(r.diversity_dropped, 1);
    assert_int_equal(count_width(&r, 8, 2), 8);
    moec_bitalloc_result_free(&r);
}

/* Experts that carry no routing at all take the narrowest width even when
 * the budget would allow more. */
static void test_unrouted_expert_gets_fewest_bits(void **state)
{
    (void)state;
    const int bits[3] = {2, 3, 4};
    double freq[4] = {5, 0, 3, 2}, weight[4] = {1, 0, 1, 1};
    double loss[12];
    same_losses(loss, 4, 3, (const double[]){3, 2, 1});
    moec_bitalloc_problem p = problem(4, freq, weight, 3, bits, loss, 3.5);
    moec_bitalloc_result r;
    moec_err err;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_int_equal(r.bits[1], 2);
    assert_true(r.avg_bits <= 3.5);
    moec_bitalloc_result_free(&r);
}

/* Two layers under one budget: the budget holds globally, diversity per
 * layer, and the layer with larger losses gets more of the bits. */
static void test_global_budget(void **state)
{
    (void)state;
    const int bits[3] = {2, 3, 4};
    int layer_of[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    double freq[8], weight[8], loss[24];
    for (int e = 0; e < 8; e++) {
        freq[e] = weight[e] = 1.0;
        double s = e < 4 ? 1.0 : 50.0;
        loss[e * 3 + 0] = 4 * s;
        loss[e * 3 + 1] = 2 * s;
        loss[e * 3 + 2] = 1 * s;
    }
    moec_bitalloc_problem p = problem(8, freq, weight, 3, bits, loss, 3.0);
    p.layer_of = layer_of;
    moec_bitalloc_result r;
    moec_err err;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_OK);
    assert_int_equal(r.n_layers, 2);
    assert_true(r.avg_bits == 3.0);
    int sum0 = 0, sum1 = 0;
    for (int e = 0; e < 8; e++) {
        if (e < 4)
            sum0 += r.bits[e];
        else
            sum1 += r.bits[e];
    }
    assert_true(sum1 > sum0);
    for (int l = 0; l < 2; l++) {
        int top = 0, second = 0;
        for (int e = 4 * l; e < 4 * l + 4; e++) {
            top += r.bits[e] == 4;
            second += r.bits[e] == 3;
        }
        assert_true(top >= 1 && second >= 1);
    }
    moec_bitalloc_result_free(&r);
}

static void test_infeasible_and_bad_input(void **state)
{
    (void)state;
    const int bits[2] = {2, 3};
    double freq[3] = {1, 2, 3}, weight[3] = {1, 1, 1}, loss[6] = {2, 1, 2, 1, 2, 1};
    moec_bitalloc_problem p = problem(3, freq, weight, 2, bits, loss, 1.9);
    moec_bitalloc_result r;
    moec_err err;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_ERR_ARG);
    assert_non_null(strstr(err.msg, "1.9"));
    assert_null(r.bits);

    p.avg_bits = 2.5;
    loss[3] = NAN;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_ERR_ARG);
    loss[3] = 1;
    freq[1] = -1;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_ERR_ARG);
    freq[1] = 2;
    const int unsorted[2] = {3, 2};
    p.bits = unsorted;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_ERR_ARG);
    p.bits = bits;
    p.n_experts = 0;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_ERR_ARG);
    p.n_experts = 3;
    int layer_of[3] = {0, -2, 0};
    p.layer_of = layer_of;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_ERR_ARG);
    p.layer_of = NULL;
    p.avg_bits = NAN;
    assert_int_equal(moec_bitalloc_solve(&p, &r, &err), MOEC_ERR_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_met_exactly),
        cmocka_unit_test(test_prefers_important_experts),
        cmocka_unit_test(test_diversity),
        cmocka_unit_test(test_unrouted_expert_gets_fewest_bits),
        cmocka_unit_test(test_global_budget),
        cmocka_unit_test(test_infeasible_and_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
