/* matmul.h - y = x · Wᵀ for a linear layer, with F32, F16 or BF16 weights.
 *
 * Weights are used where they lie (usually an mmap'd safetensors file): a
 * 16-bit checkpoint is never copied to float32 as a whole. Arithmetic is
 * float32 throughout and x is never rounded to 16 bits, so results agree
 * with a float64 reference to ~1e-6 of sum|x·w|.
 *
 * Kernels, chosen at run time from the CPU (the library is built without
 * -march flags):
 *  - avx512 (AVX-512F/BW/VL/DQ): a direct kernel for every n. It streams W
 *    once per block of up to 6 x rows, widens 16 weights at a time to
 *    float32 in registers (BF16: zero-extend and shift; F16: vcvtph2ps) and
 *    keeps up to 24 accumulators busy. For n = 1 (decode) its cost is
 *    reading W, which it prefetches a tile ahead; from n = 4 on it runs near
 *    the FMA peak (210-245 GFLOP/s per Zen 5 core), ~1.8x OpenBLAS's Haswell
 *    sgemm and as fast as or faster than tile conversion + its AVX-512
 *    sgemm, with no conversion buffer (bench/bench_matmul.c has the
 *    figures).
 *  - avx2 (AVX2+FMA+F16C) and portable C: the direct kernel up to n = 64
 *    (avx2) or n = 3 (portable); beyond that each worker converts a tile of
 *    its W rows (~256 KB) into its pool scratch and calls cblas_sgemm on it,
 *    writing its columns of y. F32 weights go to sgemm without conversion.
 * sgemm always runs single-threaded inside our workers (moec_pool_new sets
 * OpenBLAS to one thread): the pool is the one source of parallelism, and
 * a second set of spinning BLAS threads would fight it for the cores.
 *
 * Work is split over the pool's workers by output rows, in multiples of 16
 * (by x rows when W has too few rows); products under ~50 kflop run on the
 * caller alone. pool may be NULL: everything runs on the caller (and the
 * sgemm path allocates its tile per call). Calls may come from several
 * threads at once; those sharing a pool while another call uses it run all
 * their shares on their own caller (correct, not parallel).
 */
#ifndef MOEC_EXEC_MATMUL_H
#define MOEC_EXEC_MATMUL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "core/threadpool.h"

/* Checks that W can be used by the functions below: 2-D, dtype F32, F16 or
 * BF16, data present, nbytes covering shape[0]·shape[1] elements, and (when
 * in_features >= 0) shape[1] == in_features. The matmul functions assume
 * this holds; call it once when the weights are loaded, so that a bad file
 * becomes an error message instead of a crash. */
moec_status moec_matmul_check(const moec_tensor *W, int64_t in_features, moec_err *err);

/* y[n][out] = x[n][in] · Wᵀ, W a 2-D [out][in] tensor (F32, F16 or BF16,
 * rows contiguous, 16-bit data possibly only 2-byte aligned). accumulate:
 * y += x · Wᵀ instead of =. x and y are contiguous row-major, must not
 * overlap, and are only read/written within the shapes above. n == 0 does
 * nothing. Runs on the pool's workers; not reentrant on one pool. */
void moec_matmul(moec_pool *pool, float *y, const float *x, int64_t n, const moec_tensor *W,
                 bool accumulate);

/* The same with only W's rows [r0, r1) (0 <= r0 <= r1 <= out): writes
 * y[n][r1-r0]. For fused projections and experts stored in one tensor. */
void moec_matmul_rows(moec_pool *pool, float *y, const float *x, int64_t n, const moec_tensor *W,
                      int64_t r0, int64_t r1, bool accumulate);

/* The general form: row i of x starts at x + i·ldx (ldx >= in) and row i of
 * y at y + i·ldy (ldy >= r1-r0), so y can be a column block of a wider
 * buffer. A call outside these bounds (or with NULL x or y) does nothing. */
void moec_matmul_ex(moec_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                    const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate);

/* moec_matmul_ex's product done entirely on the calling thread, which runs
 * share `thread` of a run of the caller's own on pool: the pool's scratch
 * of that share may be used (pool NULL: none is). For jobs that split
 * several products over the workers in one run (all the experts of a
 * token, say) instead of paying a run per product. */
void moec_matmul_share(moec_pool *pool, int thread, float *y, int64_t ldy, const float *x, int64_t ldx,
                       int64_t n, const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate);

/* For tests and benchmarks: true makes every later call use the portable C
 * kernels (sgemm is still OpenBLAS); false returns to the CPU's best. Not
 * meant to be flipped while a matmul runs. */
void moec_matmul_force_portable(bool on);

/* For tests and benchmarks: use the named kernel family ("portable",
 * "avx2" or "avx512") from now on, or the CPU's best for NULL. Returns false
 * (and changes nothing) for an unknown name or one the CPU cannot run. */
bool moec_matmul_set_kernel(const char *name);

/* Name of the kernel family currently in use: "avx512", "avx2" or
 * "portable". */
const char *moec_matmul_kernel_name(void);

/* Largest n that the current kernel family serves with its direct kernel;
 * larger n goes through sgemm (for benchmarks' labels). */
int64_t moec_matmul_direct_max_n(void);

/* ---- internal: the ISA-specific kernels behind the functions above ------
 * Not for callers; declared here so matmul.c and matmul_<isa>.c agree.
 *
 * direct: y[i·ldy + r] (+)= sum_k x[i·ldx + k] · w[r·K + k] for i < n,
 * r < rows; w points at the first row, in dtype dt.
 * to_f32: dst[i] = (float)src[i] for count elements of dtype dt. */
typedef struct moec_mm_kernels {
    const char *name;
    int64_t direct_max_n; /* n above this goes to tile conversion + sgemm */
    void (*direct)(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n, const void *w,
                   int dt, int64_t rows, int64_t K, bool accumulate);
    void (*to_f32)(float *dst, const void *src, int dt, int64_t count);
} moec_mm_kernels;

extern const moec_mm_kernels moec_mm_avx512_kernels;
extern const moec_mm_kernels moec_mm_avx2_kernels;

#endif
