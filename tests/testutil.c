#include "testutil.h"

#include "core/dtype.h"
#include "exec/exec.h"
#include "model/model.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *tu_src(const char *rel)
{
    static char ring[8][4096];
    static int next;
    char *buf = ring[next++ % 8];
    snprintf(buf, 4096, "%s/%s", MOEC_SOURCE_DIR, rel);
    return buf;
}

char *tu_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (size)
        *size = (size_t)n;
    return buf;
}

void tu_write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

const char *tu_tmpdir(void)
{
    static char buf[8][4096];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 4096, "%s/tmp-tests/XXXXXX", MOEC_BIN_DIR "/..");
    char parent[4096];
    snprintf(parent, sizeof parent, "%s/tmp-tests", MOEC_BIN_DIR "/..");
    mkdir(parent, 0755);
    assert_non_null(mkdtemp(p));
    return p;
}

size_t tu_count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static uint64_t tu_rng = 0x243f6a8885a308d3ull;

uint32_t tu_urand(void)
{
    tu_rng ^= tu_rng << 13;
    tu_rng ^= tu_rng >> 7;
    tu_rng ^= tu_rng << 17;
    return (uint32_t)(tu_rng >> 32);
}

float tu_frand(void)
{
    return (float)((double)tu_urand() / 2147483648.0 - 1.0);
}

void tu_random_qmatrix(moec_qmatrix *m, int64_t rows, int64_t cols, int b, int group, bool sym)
{
    moec_err err;
    assert_int_equal(moec_qmatrix_alloc(m, rows, cols, b, group, sym, &err), MOEC_OK);
    const int64_t ng = moec_qformat_ngroups(&m->f);
    uint8_t *codes = malloc((size_t)cols), *zeros = malloc((size_t)ng);
    uint16_t *scales = malloc((size_t)ng * sizeof *scales);
    assert_non_null(codes);
    assert_non_null(zeros);
    assert_non_null(scales);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t g = 0; g < ng; g++) {
            scales[g] = moec_f32_to_f16(0.001f + 0.05f * fabsf(tu_frand()));
            zeros[g] = (uint8_t)(tu_urand() & ((1u << b) - 1));
        }
        for (int64_t c = 0; c < cols; c++)
            codes[c] = (uint8_t)(tu_urand() & ((1u << b) - 1));
        moec_qmatrix_set_row(m, r, codes, scales, zeros);
    }
    free(codes);
    free(zeros);
    free(scales);
}

struct moec_model *tu_open_model(const char *rel)
{
    moec_err err = {0};
    moec_model *m = NULL;
    if (moec_model_open(&m, tu_src(rel), &err) != MOEC_OK)
        fail_msg("%s: %s", rel, err.msg);
    return m;
}

float *tu_prompt_logits(const struct moec_model *m, int n, bool all)
{
    assert_true(n >= 1 && n <= 64);
    moec_err err = {0};
    moec_exec *ex;
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.max_ctx = 64;
    if (moec_exec_new(&ex, m, &eo, &err) != MOEC_OK)
        fail_msg("executor: %s", err.msg);
    int32_t ids[64];
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 977 + 13) % m->cfg.vocab_size);
    const size_t count = (size_t)(all ? n : 1) * (size_t)moec_exec_vocab(ex);
    float *lg = malloc(count * sizeof *lg);
    assert_non_null(lg);
    if (moec_exec_forward(ex, ids, n, lg, all, &err) != MOEC_OK)
        fail_msg("forward failed: %s", err.msg);
    for (size_t i = 0; i < count; i++)
        assert_true(isfinite(lg[i]));
    moec_exec_free(ex);
    return lg;
}

double tu_max_rel_diff(const float *a, const float *b, size_t n)
{
    double mx = 0.0, md = 0.0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs((double)b[i]));
        md = fmax(md, fabs((double)a[i] - b[i]));
    }
    return mx > 0.0 ? md / mx : md;
}
