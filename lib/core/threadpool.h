/* threadpool.h - a fixed set of workers for short, frequent parallel steps.
 *
 * The executor calls moec_pool_run() ~50 times per decoded token, so a
 * dispatch plus join has to cost about a microsecond, not the tens of
 * microseconds a condition-variable round trip costs. Workers therefore spin
 * on an atomic generation counter for a while after each run (with a CPU
 * pause hint, then sched_yield) and only then block on a condition variable,
 * so an idle pool stops using CPU within about a millisecond.
 *
 * The calling thread is worker 0 and does its share of every run; a pool of
 * n threads starts n-1 helper threads. On a busy machine a helper may not
 * get a core for a scheduler tick; rather than wait that long, the caller
 * does the shares nobody has started (see moec_pool_run). One run is in
 * flight on a pool at a time: a nested call (from inside fn) or a
 * concurrent call from another thread does not deadlock, it runs
 * fn(ctx, i, n) for every i one after the other on the calling thread (and
 * without scratch, see moec_pool_scratch).
 *
 * BLAS: creating a pool sets OpenBLAS to one thread (openblas_set_num_threads)
 * for the whole process. The pool is where moec's parallelism comes from;
 * sgemm runs inside our workers on each worker's slice, and OpenBLAS's own
 * threads would compete with ours for the same cores (both spin-wait).
 */
#ifndef MOEC_CORE_THREADPOOL_H
#define MOEC_CORE_THREADPOOL_H

#include <stddef.h>

typedef struct moec_pool moec_pool;

/* Work item: called once per worker with thread in [0, n_threads). */
typedef void (*moec_pool_fn)(void *ctx, int thread, int n_threads);

/* Starts n_threads-1 helper threads (n_threads >= 1). Returns NULL when
 * n_threads < 1 or a thread or allocation fails. Free with moec_pool_free. */
moec_pool *moec_pool_new(int n_threads);

/* Stops and joins the helpers and frees the per-worker scratch buffers.
 * NULL is a no-op. Must not be called while a run is in flight. */
void moec_pool_free(moec_pool *p);

/* Number of workers, the caller included (1 for NULL). */
int moec_pool_size(const moec_pool *p);

/* Runs fn(ctx, i, n) exactly once for every i in [0, n) and returns when all
 * have returned. Share 0 runs on the caller and share i normally on helper
 * i, but when helper i has not started its share by the time the caller
 * finished its own (it is asleep, or the OS preempted it), the caller runs
 * share i itself instead of waiting: so fn must not care which OS thread
 * runs which i (keep per-share state indexed by i, e.g. moec_pool_scratch,
 * not in thread-locals). Everything written before the call is visible to
 * fn, and everything fn wrote is visible to the caller afterwards. p may be
 * NULL: fn(ctx, 0, 1) runs on the caller. */
void moec_pool_run(moec_pool *p, moec_pool_fn fn, void *ctx);

/* A per-share scratch buffer of at least nbytes, 64-byte aligned, owned by
 * the pool. It stays allocated between runs (so steady-state callers do not
 * allocate), grows when asked for more (contents are not kept across growth)
 * and is freed with the pool. During a run only the fn call running share
 * `thread` may use it; between runs the pool's owner may use share 0's, as
 * long as no other thread uses the pool meanwhile. Returns NULL when the
 * allocation fails, p is NULL, or the caller is inside a run that found the
 * pool busy (nested or concurrent, see moec_pool_run): users must have a way
 * to work without it. */
void *moec_pool_scratch(moec_pool *p, int thread, size_t nbytes);

#endif
