/* testutil.h - small helpers shared by the cmocka tests. */
#ifndef MOEC_TESTUTIL_H
#define MOEC_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include "core/qformat.h"

struct moec_model;

/* Absolute path of a file in the source tree: tu_src("tests/fixtures/x").
 * Returns a static buffer (one of a small ring, so a few can be live at once). */
const char *tu_src(const char *rel);
/* Reads a whole file; returns malloc'd bytes (NUL-terminated) and its size. */
char *tu_read_file(const char *path, size_t *size);
/* Opens a model in the source tree (tu_src(rel)), asserting success. */
struct moec_model *tu_open_model(const char *rel);
/* Logits of a fixed prompt of n tokens (1 <= n <= 64; token i is
 * (977 i + 13) mod vocab) from a fresh executor: n x vocab floats for every
 * position when all, else the last position's vocab floats; asserted
 * finite. malloc'd. */
float *tu_prompt_logits(const struct moec_model *m, int n, bool all);
/* max |a - b| / max |b| over n values (max |a - b| when b is all zero). */
double tu_max_rel_diff(const float *a, const float *b, size_t n);
/* Writes bytes to a file, asserting success. */
void tu_write_file(const char *path, const void *data, size_t size);
/* A fresh empty directory under the build dir, unique per call. */
const char *tu_tmpdir(void);
/* A cmocka test named name that runs fn with *state = arg, for one test
 * function run on several fixtures: TU_TEST_ON("test_x_qwen3", test_x, PATH). */
#define TU_TEST_ON(name, fn, arg) {name, fn, NULL, NULL, (void *)(arg)}
/* Entries of a directory other than "." and "..", asserting it opens. */
size_t tu_count_dir_entries(const char *dir);
/* A fixed-seed xorshift stream shared by a test binary: 32 random bits,
 * and a float uniform in [-1, 1). */
uint32_t tu_urand(void);
float tu_frand(void);
/* Allocates m (rows x cols, b bits, group, sym) with uniformly random codes,
 * zeros and small positive scales: the widest spread of q - z. */
void tu_random_qmatrix(moec_qmatrix *m, int64_t rows, int64_t cols, int b, int group, bool sym);

#endif
