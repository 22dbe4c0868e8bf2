#include "testutil.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "core/threadpool.h"

#define MAX_T 8

/* Each worker writes its own slots with plain stores; the caller reads them
 * after the run, which is only correct if run() orders both ways. */
struct sum_ctx {
    int64_t round;
    int64_t part[MAX_T];
    int seen_n[MAX_T];
    atomic_int calls[MAX_T];
};

static void sum_fn(void *vctx, int t, int n)
{
    struct sum_ctx *c = vctx;
    c->part[t] += c->round * (t + 1);
    c->seen_n[t] = n;
    atomic_fetch_add(&c->calls[t], 1);
}

static void run_sums(int n_threads, int rounds)
{
    moec_pool *p = moec_pool_new(n_threads);
    assert_non_null(p);
    assert_int_equal(moec_pool_size(p), n_threads);
    struct sum_ctx c;
    memset(&c, 0, sizeof c);
    for (int t = 0; t < MAX_T; t++)
        atomic_init(&c.calls[t], 0);
    int64_t expect_round_sum = 0;
    for (int r = 1; r <= rounds; r++) {
        c.round = r;
        moec_pool_run(p, sum_fn, &c);
        expect_round_sum += r;
        /* every worker's write from this run is visible now */
        for (int t = 0; t < n_threads; t++)
            assert_int_equal(c.part[t], expect_round_sum * (t + 1));
    }
    for (int t = 0; t < n_threads; t++) {
        assert_int_equal(atomic_load(&c.calls[t]), rounds);
        assert_int_equal(c.seen_n[t], n_threads);
    }
    for (int t = n_threads; t < MAX_T; t++)
        assert_int_equal(atomic_load(&c.calls[t]), 0);
    moec_pool_free(p);
}

static void test_many_runs(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++)
        run_sums(n, 3000);
}

static void sleep_us(int us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000L};
    nanosleep(&ts, NULL);
}

/* Gaps of every length between runs: helpers caught spinning, yielding,
 * falling asleep or asleep on the condition variable. The caller takes the
 * shares of helpers that are slow to wake, so this also races a helper's
 * claim against the caller's; each share must still run exactly once. */
static void test_gaps_between_runs(void **state)
{
    (void)state;
    static const int gaps_us[] = {0, 50, 150, 400, 700, 2000};
    for (int n = 2; n <= 4; n++) {
        moec_pool *p = moec_pool_new(n);
        assert_non_null(p);
        struct sum_ctx c;
        memset(&c, 0, sizeof c);
        for (int t = 0; t < MAX_T; t++)
            atomic_init(&c.calls[t], 0);
        for (int r = 1; r <= 36; r++) {
            sleep_us(gaps_us[(r * 7) % 6]);
            c.round = r;
            moec_pool_run(p, sum_fn, &c);
            for (int t = 0; t < n; t++) {
                assert_int_equal(atomic_load(&c.calls[t]), r);
                assert_int_equal(c.part[t], (int64_t)r * (r + 1) / 2 * (t + 1));
            }
        }
        moec_pool_free(p);
    }
}

struct nest_ctx {
    moec_pool *p;
    struct sum_ctx inner;
    int outer_scratch, inner_scratch;
};

static void no_scratch_fn(void *vctx, int t, int n)
{
    struct nest_ctx *c = vctx;
    sum_fn(&c->inner, t, n);
    if (moec_pool_scratch(c->p, t, 64))
        c->inner_scratch++;
}

static void nest_fn(void *vctx, int t, int n)
{
    (void)n;
    struct nest_ctx *c = vctx;
    if (t == 0) {
        c->outer_scratch = moec_pool_scratch(c->p, 0, 64) != NULL;
        moec_pool_run(c->p, no_scratch_fn, c);
    }
}

/* A run from inside a run must not deadlock; it runs serially instead, and
 * gets no scratch (the outer run's shares own it). */
static void test_nested_run(void **state)
{
    (void)state;
    for (int n = 1; n <= 3; n += 2) {
        struct nest_ctx c;
        memset(&c, 0, sizeof c);
        for (int t = 0; t < MAX_T; t++)
            atomic_init(&c.inner.calls[t], 0);
        c.p = moec_pool_new(n);
        assert_non_null(c.p);
        c.inner.round = 1;
        moec_pool_run(c.p, nest_fn, &c);
        for (int t = 0; t < n; t++) {
            assert_int_equal(atomic_load(&c.inner.calls[t]), 1);
            assert_int_equal(c.inner.part[t], t + 1);
            assert_int_equal(c.inner.seen_n[t], n);
        }
        assert_int_equal(c.outer_scratch, 1);
        assert_int_equal(c.inner_scratch, 0);
        /* and the pool is usable normally afterwards */
        moec_pool_run(c.p, sum_fn, &c.inner);
        for (int t = 0; t < n; t++)
            assert_int_equal(atomic_load(&c.inner.calls[t]), 2);
        moec_pool_free(c.p);
    }
}

static void test_null_and_bad(void **state)
{
    (void)state;
    assert_null(moec_pool_new(0));
    assert_null(moec_pool_new(-3));
    assert_int_equal(moec_pool_size(NULL), 1);
    struct sum_ctx c;
    memset(&c, 0, sizeof c);
    for (int t = 0; t < MAX_T; t++)
        atomic_init(&c.calls[t], 0);
    c.round = 7;
    moec_pool_run(NULL, sum_fn, &c);
    assert_int_equal(c.part[0], 7);
    assert_int_equal(c.seen_n[0], 1);
    assert_null(moec_pool_scratch(NULL, 0, 16));
    moec_pool_free(NULL);
}

struct scratch_ctx {
    moec_pool *p;
    size_t bytes;
    int ok[MAX_T];
    void *buf[MAX_T];
};

static void scratch_fn(void *vctx, int t, int n)
{
    (void)n;
    struct scratch_ctx *c = vctx;
    unsigned char *buf = moec_pool_scratch(c->p, t, c->bytes);
    c->buf[t] = buf;
    if (!buf || ((uintptr_t)buf & 63) != 0)
        return;
    memset(buf, t + 1, c->bytes);
    for (int spin = 0; spin < 1000; spin++)
        if (buf[spin % c->bytes] != t + 1)
            return;
    c->ok[t] = 1;
}

/* Scratch is private per worker, aligned, reused and grown on demand. */
static void test_scratch(void **state)
{
    (void)state;
    struct scratch_ctx c = {.p = moec_pool_new(3)};
    assert_non_null(c.p);
    size_t sizes[] = {100, 50, 70000, 3000};
    void *prev[MAX_T] = {0};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        memset(c.ok, 0, sizeof c.ok);
        c.bytes = sizes[s];
        moec_pool_run(c.p, scratch_fn, &c);
        for (int t = 0; t < 3; t++) {
            assert_int_equal(c.ok[t], 1);
            for (int u = 0; u < t; u++)
                assert_ptr_not_equal(c.buf[t], c.buf[u]);
            /* a request that fits reuses the buffer: no allocation */
            if (sizes[s] <= (s > 0 ? sizes[s - 1] : 0))
                assert_ptr_equal(c.buf[t], prev[t]);
            prev[t] = c.buf[t];
        }
    }
    assert_null(moec_pool_scratch(c.p, 3, 10));
    assert_null(moec_pool_scratch(c.p, -1, 10));
    moec_pool_free(c.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_runs),
        cmocka_unit_test(test_gaps_between_runs),
        cmocka_unit_test(test_nested_run),
        cmocka_unit_test(test_null_and_bad),
        cmocka_unit_test(test_scratch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
