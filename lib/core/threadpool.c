#include "core/threadpool.h"

#include <cblas.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* How long an idle helper stays responsive before it blocks: pure pause-spin
 * first (wake-up within ~0.1 µs), then spin with sched_yield so that other
 * runnable threads (the caller itself, on a machine with fewer free cores
 * than workers) get the core, then sleep on the condition variable (a
 * wake-up then costs a futex round trip, ~10-50 µs, which the caller does
 * not wait for: it takes over the share). A decode step's gaps between runs
 * are a few microseconds, so helpers stay in the first phase. */
#define SPIN_PAUSE_NS 50000
#define SPIN_YIELD_NS 1000000
/* The caller waiting for the others at the end of a run never sleeps (they
 * are working, not idle), but after this long it yields between checks: a
 * helper that has not finished by then was most likely preempted. */
#define JOIN_PAUSE_NS 20000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* One per worker, on its own cache line so that scratch bookkeeping never
 * shares a line with the hot counters. */
struct slot {
    alignas(64) pthread_t thread;
    bool started;
    void *scratch;
    size_t scratch_cap;
    struct moec_pool *pool;
    int index;
    /* The last generation whose share i was taken, by this helper or by the
     * caller stealing it. Every run takes every share, so run g finds g-1
     * here; moving it g-1 -> g makes each share run exactly once, and a
     * helper that slept through a whole run cannot take a later run's share
     * with the stale generation it woke up with. */
    alignas(64) atomic_uint claimed;
};

struct moec_pool {
    int n;
    struct slot *slots;
    /* Bumped once per run (and once at shutdown); helpers wait for it to
     * change. fn and ctx are published by the release in that bump. */
    alignas(64) atomic_uint gen;
    moec_pool_fn fn;
    void *ctx;
    atomic_bool stop;
    /* Helpers still working on the current run. */
    alignas(64) atomic_int pending;
    /* Helpers blocked (or about to block) on cv; the caller only takes the
     * mutex to wake them when this is non-zero. */
    alignas(64) atomic_int sleepers;
    atomic_flag busy;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

/* Nonzero while this thread runs a run's shares itself because the pool was
 * busy (nested or concurrent moec_pool_run); scratch is then refused. */
static _Thread_local int serial_depth;

/* Returns the new generation once it differs from seen. */
static unsigned wait_for_run(moec_pool *p, unsigned seen)
{
    unsigned g;
    int64_t start = now_ns();
    for (;;) {
        for (int i = 0; i < 256; i++) {
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
            if (g != seen)
                return g;
            cpu_relax();
        }
        int64_t waited = now_ns() - start;
        if (waited > SPIN_YIELD_NS)
            break;
        if (waited > SPIN_PAUSE_NS)
            sched_yield();
    }
    /* The sleepers increment and the generation load are sequentially
     * consistent, as are the caller's generation bump and sleepers load, so
     * either the caller sees us asleep and broadcasts, or we see its bump. */
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    while ((g = atomic_load(&p->gen)) == seen)
        pthread_cond_wait(&p->cv, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static bool claim(struct slot *s, unsigned gen)
{
    unsigned expect = gen - 1;
    return atomic_compare_exchange_strong_explicit(&s->claimed, &expect, gen, memory_order_acq_rel,
                                                   memory_order_relaxed);
}

static void *helper_main(void *arg)
{
    struct slot *s = arg;
    moec_pool *p = s->pool;
    unsigned seen = 0; /* runs only start after moec_pool_new returns */
    for (;;) {
        seen = wait_for_run(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            break;
        if (claim(s, seen)) {
            p->fn(p->ctx, s->index, p->n);
            atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
        }
    }
    return NULL;
}

static void wake_all(moec_pool *p)
{
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void stop_helpers(moec_pool *p)
{
    atomic_store_explicit(&p->stop, true, memory_order_release);
    atomic_fetch_add(&p->gen, 1);
    wake_all(p);
    for (int i = 1; i < p->n; i++)
        if (p->slots[i].started)
            pthread_join(p->slots[i].thread, NULL);
}

moec_pool *moec_pool_new(int n_threads)
{
    if (n_threads < 1)
        return NULL;
    moec_pool *p = aligned_alloc(64, sizeof *p);
    if (!p)
        return NULL;
    struct slot *slots = aligned_alloc(64, sizeof *slots * (size_t)n_threads);
    if (!slots) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < n_threads; i++) {
        slots[i] = (struct slot){.pool = p, .index = i};
        atomic_init(&slots[i].claimed, 0);
    }
    p->n = n_threads;
    p->slots = slots;
    p->fn = NULL;
    p->ctx = NULL;
    atomic_init(&p->gen, 0);
    atomic_init(&p->stop, false);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_flag_clear(&p->busy);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(slots);
        free(p);
        return NULL;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(slots);
        free(p);
        return NULL;
    }
    openblas_set_num_threads(1);
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&slots[i].thread, NULL, helper_main, &slots[i]) != 0) {
            moec_pool_free(p);
            return NULL;
        }
        slots[i].started = true;
    }
    return p;
}

void moec_pool_free(moec_pool *p)
{
    if (!p)
        return;
    stop_helpers(p);
    for (int i = 0; i < p->n; i++)
        free(p->slots[i].scratch);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->slots);
    free(p);
}

int moec_pool_size(const moec_pool *p)
{
    return p ? p->n : 1;
}

void moec_pool_run(moec_pool *p, moec_pool_fn fn, void *ctx)
{
    if (!p) {
        fn(ctx, 0, 1);
        return;
    }
    if (atomic_flag_test_and_set_explicit(&p->busy, memory_order_acquire)) {
        /* The pool (and every share's scratch) belongs to the run in
         * flight; this thread does all the shares, without scratch. */
        serial_depth++;
        for (int i = 0; i < p->n; i++)
            fn(ctx, i, p->n);
        serial_depth--;
        return;
    }
    if (p->n == 1) {
        fn(ctx, 0, 1);
        atomic_flag_clear_explicit(&p->busy, memory_order_release);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    unsigned gen = atomic_fetch_add(&p->gen, 1) + 1;
    if (atomic_load(&p->sleepers) > 0)
        wake_all(p);

    fn(ctx, 0, p->n);
    /* A helper that has not picked up its share by now is asleep or was
     * preempted; doing its share here beats waiting for the scheduler. */
    for (int i = 1; i < p->n; i++)
        if (claim(&p->slots[i], gen)) {
            fn(ctx, i, p->n);
            atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
        }

    int64_t start = 0;
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spins++) {
        if ((spins & 63) == 63) {
            int64_t t = now_ns();
            if (start == 0)
                start = t;
            else if (t - start > JOIN_PAUSE_NS)
                sched_yield();
        }
        cpu_relax();
    }
    atomic_flag_clear_explicit(&p->busy, memory_order_release);
}

void *moec_pool_scratch(moec_pool *p, int thread, size_t nbytes)
{
    if (!p || thread < 0 || thread >= p->n || serial_depth > 0)
        return NULL;
    struct slot *s = &p->slots[thread];
    if (nbytes <= s->scratch_cap && s->scratch)
        return s->scratch;
    size_t cap = (nbytes + 4095) & ~(size_t)4095;
    if (cap < nbytes)
        return NULL;
    if (cap < 2 * s->scratch_cap && 2 * s->scratch_cap > s->scratch_cap)
        cap = 2 * s->scratch_cap;
    void *buf = aligned_alloc(64, cap);
    if (!buf)
        return NULL;
    free(s->scratch);
    s->scratch = buf;
    s->scratch_cap = cap;
    return buf;
}
