#include "exec/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && !defined(__clang__)
#define MOEC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOEC_CLONES
#endif

/* exp(x) for x <= 88, as 2^n · p(r) with r = x − n·ln2 in [−ln2/2, ln2/2]
 * and a degree-6 polynomial: relative error below 2e-7 (about libm's
 * accuracy in float32), branch-free so that loops over it vectorize. Large
 * negative inputs flush to 0. */
static inline float exp_poly(float x)
{
    x = x < -87.3f ? -87.3f : x; /* NaN fails both tests and stays NaN */
    x = x > 88.0f ? 88.0f : x;
    /* n comes from a NaN-free copy, so the integer conversion below is
     * always defined; a NaN x still yields NaN through r. */
    float finite = x == x ? x : 0.0f;
    float n = __builtin_rintf(finite * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;   /* ln2 split in two for exact reduction */
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Norm weights are short vectors; widen them once per call. */
static void weight_row(float *dst, const moec_tensor *w, int n)
{
    moec_to_f32(dst, w->data, w->dtype, (size_t)n);
}

MOEC_CLONES
static void rmsnorm_f32w(float *out, const float *x, const float *w, int n, float eps)
{
    float ss = 0.0f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

void moec_rmsnorm_rows(float *out, const float *x, const moec_tensor *w, int rows, int n, float eps)
{
    float wbuf[4096];
    float *wf = wbuf;
    float *heap = NULL;
    if (n > 4096) {
        heap = malloc((size_t)n * sizeof *heap);
        wf = heap;
        if (!wf)
            return;
    }
    weight_row(wf, w, n);
    for (int r = 0; r < rows; r++)
        rmsnorm_f32w(out + (int64_t)r * n, x + (int64_t)r * n, wf, n, eps);
    free(heap);
}

void moec_rmsnorm(float *out, const float *x, const moec_tensor *w, int n, float eps)
{
    moec_rmsnorm_rows(out, x, w, 1, n, eps);
}

MOEC_CLONES
void moec_rope_head(float *x, const float *cs, int hd)
{
    const int h = hd / 2;
    const float *c = cs, *s = cs + h;
    for (int i = 0; i < h; i++) {
        float a = x[i], b = x[i + h];
        x[i] = a * c[i] - b * s[i];
        x[i + h] = b * c[i] + a * s[i];
    }
}

MOEC_CLONES
void moec_softmax(float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = exp_poly(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

MOEC_CLONES
void moec_silu_mul(float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = a[i] / (1.0f + exp_poly(-a[i])) * b[i];
}

MOEC_CLONES
void moec_axpy(float *y, const float *x, float s, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += s * x[i];
}

MOEC_CLONES
float moec_dot(const float *a, const float *b, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (int j = 0; j < 16; j++)
        s += acc[j];
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

MOEC_CLONES
void moec_scale_add(float *y, float s, const float *x, float t, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = y[i] * s + x[i] * t;
}

void moec_add_bias_rows(float *y, const moec_tensor *b, int rows, int n)
{
    float buf[4096];
    for (int c0 = 0; c0 < n; c0 += 4096) {
        int m = n - c0 < 4096 ? n - c0 : 4096;
        const char *src = (const char *)b->data + (size_t)c0 * moec_dtype_size(b->dtype);
        moec_to_f32(buf, src, b->dtype, (size_t)m);
        for (int r = 0; r < rows; r++)
            moec_axpy(y + (int64_t)r * n + c0, buf, 1.0f, m);
    }
}
