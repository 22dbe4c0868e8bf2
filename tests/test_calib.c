/* Calibration statistics on the qwen3moe-random fixture (norm_topk): the
 * sums agree with each other and with a direct float64 computation of the
 * experts, the file round-trips bit for bit and refuses damage cleanly,
 * statistics are refused by other models, and an expert the router never
 * picks gets no tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "testutil.h"

#include "calib/calib.h"
#include "calib/stats.h"
#include "exec/exec.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#define FIXTURE "tests/fixtures/qwen3moe-random"

static moec_exec *new_exec(const moec_model *m, int max_ctx)
{
    moec_err err = {0};
    moec_exec_opts eo = MOEC_EXEC_OPTS_DEFAULT;
    eo.max_ctx = max_ctx;
    moec_exec *ex;
    assert_int_equal(moec_exec_new(&ex, m, &eo, &err), MOEC_OK);
    return ex;
}

static moec_tokenizer *model_tokenizer(const moec_model *m)
{
    moec_err err = {0};
    moec_tokenizer *tok;
    assert_non_null(m->tokenizer_json);
    assert_int_equal(moec_tokenizer_load_json(&tok, m->tokenizer_json, m->tokenizer_json_len, &err), MOEC_OK);
    return tok;
}

/* The first `bytes` bytes of a corpus file (ASCII) as a text file in dir. */
static const char *text_slice(const char *dir, const char *corpus, size_t bytes)
{
    static char paths[4][4096];
    static int next;
    char *p = paths[next++ % 4];
    size_t size;
    char *buf = tu_read_file(tu_src(corpus), &size);
    snprintf(p, 4096, "%s/%s", dir, strrchr(corpus, '/') + 1);
    tu_write_file(p, buf, bytes < size ? bytes : size);
    free(buf);
    return p;
}

static moec_stats *calibrate(const moec_model *m, const char *const *files, int n_files, int64_t max_tokens,
                             int ctx, int sim)
{
    moec_err err = {0};
    moec_tokenizer *tok = model_tokenizer(m);
    moec_calib_opts o = MOEC_CALIB_OPTS_DEFAULT;
    o.ctx = ctx;
    o.max_tokens = max_tokens;
    o.sim_tokens = sim;
    moec_stats *s = NULL;
    moec_status st = moec_calib_run(m, tok, files, n_files, &o, &s, NULL, NULL, &err);
    if (st)
        fprintf(stderr, "# %s\n", err.msg);
    assert_int_equal(st, MOEC_OK);
    moec_tokenizer_free(tok);
    return s;
}

static void assert_close(double a, double b, double tol)
{
    if (fabs(a - b) > tol)
        fail_msg("%.9g != %.9g (tolerance %.3g)", a, b, tol);
}

static void test_invariants(void **state)
{
    (void)state;
    moec_model *m = tu_open_model(FIXTURE);
    const char *dir = tu_tmpdir();
    const char *files[2] = {text_slice(dir, "data/corpus/c.val.txt", 1500),
                            text_slice(dir, "data/corpus/python.val.txt", 1500)};
    moec_stats *s = calibrate(m, files, 2, 300, 64, 100);
    const int k = m->cfg.top_k;
    assert_true(m->cfg.norm_topk);
    assert_int_equal(s->version, MOEC_STATS_VERSION);
    assert_int_equal(s->n_layers, m->cfg.n_layers);
    assert_true(s->tokens == 300);
    assert_int_equal(s->n_domains, 2);
    assert_string_equal(s->domains[0], "c.val.txt");
    assert_string_equal(s->domains[1], "python.val.txt");
    assert_true(s->domain_tokens[0] == 150 && s->domain_tokens[1] == 150);
    assert_non_null(strstr(s->source, "python.val.txt"));
    for (int l = 0; l < s->n_layers; l++) {
        const moec_layer_stats *ls = &s->layers[l];
        const int E = ls->n_experts, d = ls->d;
        assert_int_equal(E, m->cfg.layer_experts[l]);
        assert_true(ls->tokens == 300);
        assert_true(ls->sim_tokens == 100);
        double cnt = 0, gate = 0, prob = 0, miss = 0;
        for (int e = 0; e < E; e++) {
            cnt += ls->count[e];
            gate += ls->gate_sum[e];
            prob += ls->prob_sum[e];
            miss += ls->near_miss[e];
            assert_true(ls->gate_sum[e] <= ls->count[e] + 1e-9);
            assert_true(ls->logit_sq_sum[e] * ls->tokens >= ls->logit_sum[e] * ls->logit_sum[e] * (1 - 1e-12));
            assert_true(ls->out_norm_sum[e] >= 0 && ls->easyep_sum[e] >= 0);
            assert_close(ls->easyep_domain[e] + ls->easyep_domain[E + e], ls->easyep_sum[e],
                         1e-12 * ls->easyep_sum[e] + 1e-15);
            double row = 0;
            for (int j = 0; j < E; j++) {
                const double co = ls->co_count[(size_t)e * E + j], sim = ls->out_cos[(size_t)e * E + j];
                assert_true(co == ls->co_count[(size_t)j * E + e]);
                assert_true(sim == ls->out_cos[(size_t)j * E + e]);
                assert_true(sim >= -1.0 && sim <= 1.0);
                row += co;
            }
            /* every token that picks e picks k experts, e among them */
            assert_true(row == k * ls->count[e]);
            assert_true(ls->co_count[(size_t)e * E + e] == ls->count[e]);
            assert_true(ls->out_cos[(size_t)e * E + e] == 1.0);
        }
        assert_true(cnt == ls->tokens * k);
        assert_close(gate, ls->tokens, 1e-4 * ls->tokens);
        assert_close(prob, ls->tokens, 1e-4 * ls->tokens);
        assert_true(miss == ls->tokens); /* E > k: one near miss per token */
        /* each token's input reaches k experts: per channel, the experts'
         * sums add up to k times the router's, and their maxima to its max */
        for (int j = 0; j < d; j++) {
            double sq = 0, mx = 0;
            for (int e = 0; e < E; e++) {
                sq += ls->in_sq_sum[(size_t)e * d + j];
                mx = fmax(mx, ls->in_absmax[(size_t)e * d + j]);
            }
            assert_close(sq, k * ls->x_sq_sum[j], 1e-9 * sq);
            assert_true(mx == ls->x_absmax[j]);
        }
    }
    moec_stats_free(s);
    moec_model_close(m);
}

/* ---- a direct computation to compare with ---- */

typedef struct capture {
    int layer, n, d, E, k;
    float *x, *resid, *gates;
    int32_t *sel;
} capture;

static void capture_hook(void *ctx, const moec_moe_view *v)
{
    capture *c = ctx;
    if (v->layer != c->layer)
        return;
    c->n = v->n;
    c->d = v->d;
    c->E = v->n_experts;
    c->k = v->top_k;
    c->x = malloc((size_t)v->n * v->d * sizeof(float));
    c->resid = malloc((size_t)v->n * v->d * sizeof(float));
    c->gates = malloc((size_t)v->n * v->top_k * sizeof(float));
    c->sel = malloc((size_t)v->n * v->top_k * sizeof(int32_t));
    memcpy(c->x, v->x, (size_t)v->n * v->d * sizeof(float));
    memcpy(c->resid, v->resid, (size_t)v->n * v->d * sizeof(float));
    memcpy(c->gates, v->gates, (size_t)v->n * v->top_k * sizeof(float));
    memcpy(c->sel, v->sel, (size_t)v->n * v->top_k * sizeof(int32_t));
}

static double weight(const moec_tensor *t, int64_t r, int64_t col)
{
    float f;
    const size_t es = moec_dtype_size(t->dtype);
    moec_to_f32(&f, (const char *)t->data + ((size_t)r * (size_t)t->shape[1] + (size_t)col) * es, t->dtype, 1);
    return f;
}

/* y = W2 (silu(W1 x) ⊙ W3 x) in float64 */
static void expert_ref(const moec_ffn *f, const float *x, int d, double *y)
{
    const int64_t ff = moec_tensor_rows(&f->w1);
    double *h = malloc((size_t)ff * sizeof *h);
    for (int64_t j = 0; j < ff; j++) {
        double a = 0, b = 0;
        for (int i = 0; i < d; i++) {
            a += weight(&f->w1, j, i) * x[i];
            b += weight(&f->w3, j, i) * x[i];
        }
        h[j] = a / (1 + exp(-a)) * b;
    }
    for (int i = 0; i < d; i++) {
        double s = 0;
        for (int64_t j = 0; j < ff; j++)
            s += weight(&f->w2, i, j) * h[j];
        y[i] = s;
    }
    free(h);
}

static double dot(const double *a, const double *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void test_against_direct_computation(void **state)
{
    (void)state;
    moec_model *m = tu_open_model(FIXTURE);
    moec_err err = {0};
    const int n = 12, layer = 1;
    int32_t ids[12];
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 331 + 17) % m->cfg.vocab_size);
    moec_exec *ex = new_exec(m, 64);
    capture cap = {.layer = layer};
    moec_exec_set_moe_hook(ex, capture_hook, &cap);
    assert_int_equal(moec_exec_forward(ex, ids, n, NULL, false, &err), MOEC_OK);
    assert_int_equal(cap.n, n);

    moec_stats *s;
    assert_int_equal(moec_stats_new(&s, m, &err), MOEC_OK);
    int dom;
    assert_int_equal(moec_stats_add_domain(s, "direct", &dom, &err), MOEC_OK);
    moec_calib_opts o = MOEC_CALIB_OPTS_DEFAULT;
    o.ctx = 64;
    assert_int_equal(moec_calib_tokens(s, ex, ids, (size_t)n, dom, &o, &err), MOEC_OK);
    assert_true(s->tokens == n && s->domain_tokens[0] == n);

    const int d = cap.d, E = cap.E, k = cap.k;
    const moec_layer *L = &m->layers[layer];
    const moec_layer_stats *ls = &s->layers[layer];
    double *y = malloc((size_t)E * d * sizeof *y), *cos_sum = calloc((size_t)E * E, sizeof *cos_sum);
    double *norm_sum = calloc((size_t)E, sizeof *norm_sum), *ep_sum = calloc((size_t)E, sizeof *ep_sum);
    double *a = malloc((size_t)d * sizeof *a), *r = malloc((size_t)d * sizeof *r);
    for (int t = 0; t < n; t++) {
        for (int e = 0; e < E; e++)
            expert_ref(&L->experts[e], cap.x + (size_t)t * d, d, y + (size_t)e * d);
        for (int e = 0; e < E; e++)
            for (int q = 0; q < E; q++) {
                const double *ye = y + (size_t)e * d, *yq = y + (size_t)q * d;
                cos_sum[e * E + q] += dot(ye, yq, d) / sqrt(dot(ye, ye, d) * dot(yq, yq, d));
            }
        for (int i = 0; i < d; i++)
            r[i] = a[i] = cap.resid[(size_t)t * d + i];
        for (int j = 0; j < k; j++) {
            const int e = cap.sel[t * k + j];
            for (int i = 0; i < d; i++)
                a[i] += cap.gates[t * k + j] * y[(size_t)e * d + i];
        }
        const double s_t = 1 - dot(r, a, d) / sqrt(dot(r, r, d) * dot(a, a, d));
        for (int j = 0; j < k; j++) {
            const int e = cap.sel[t * k + j];
            const double c = cap.gates[t * k + j] * sqrt(dot(y + (size_t)e * d, y + (size_t)e * d, d));
            norm_sum[e] += c;
            ep_sum[e] += c * s_t;
        }
    }
    double ep_total = 0;
    for (int e = 0; e < E; e++)
        ep_total += ep_sum[e];
    assert_true(ep_total > 0);
    for (int e = 0; e < E; e++) {
        assert_close(ls->out_norm_sum[e], norm_sum[e], 1e-4 * (1 + norm_sum[e]));
        /* s_t is a small difference of near-equal numbers: compare on the layer's scale */
        assert_close(ls->easyep_sum[e], ep_sum[e], 1e-3 * ep_total);
        assert_true(ls->easyep_domain[e] == ls->easyep_sum[e]);
        for (int q = 0; q < E; q++)
            assert_close(ls->out_cos[e * E + q], cos_sum[e * E + q] / n, 1e-4);
    }

    /* adding the same tokens again doubles the sums and keeps the means */
    double cnt0 = ls->count[0], cos01 = ls->out_cos[1];
    assert_int_equal(moec_calib_tokens(s, ex, ids, (size_t)n, -1, &o, &err), MOEC_OK);
    assert_true(ls->count[0] == 2 * cnt0);
    assert_true(ls->sim_tokens == 2 * n);
    assert_close(ls->out_cos[1], cos01, 1e-12);
    assert_true(s->domain_tokens[0] == n && s->tokens == 2 * n);

    /* a window longer than the executor's context is refused before any work */
    o.ctx = 65;
    assert_int_equal(moec_calib_tokens(s, ex, ids, (size_t)n, -1, &o, &err), MOEC_ERR_ARG);
    assert_true(s->tokens == 2 * n);

    free(a);
    free(r);
    free(y);
    free(cos_sum);
    free(norm_sum);
    free(ep_sum);
    free(cap.x);
    free(cap.resid);
    free(cap.gates);
    free(cap.sel);
    moec_stats_free(s);
    moec_exec_free(ex);
    moec_model_close(m);
}

static void test_budget_shares(void **state)
{
    (void)state;
    moec_model *m = tu_open_model(FIXTURE);
    moec_tokenizer *tok = model_tokenizer(m);
    const char *dir = tu_tmpdir();
    const char *files[2] = {text_slice(dir, "data/corpus/c.val.txt", 200),
                            text_slice(dir, "data/corpus/python.val.txt", 3000)};
    size_t size;
    char *text = tu_read_file(files[0], &size);
    int32_t *ids;
    size_t n_short;
    moec_err err = {0};
    assert_int_equal(moec_tokenizer_encode(tok, text, size, &ids, &n_short, &err), MOEC_OK);
    free(text);
    free(ids);
    assert_true(n_short > 10 && n_short < 200);
    /* the short file gives what it cannot use to the other */
    moec_stats *s = calibrate(m, files, 2, 400, 48, 0);
    assert_true(s->tokens == 400);
    assert_true(s->domain_tokens[0] == (double)n_short);
    assert_true(s->domain_tokens[1] == 400 - (double)n_short);
    assert_true(s->layers[0].sim_tokens == 0);
    moec_stats_free(s);

    /* no budget: everything, tails included */
    s = calibrate(m, files, 1, 0, 7, 0);
    assert_true(s->tokens == (double)n_short);
    moec_stats_free(s);
    moec_tokenizer_free(tok);
    moec_model_close(m);
}

/* ---- the file ---- */

static void assert_same_stats(moec_stats *a, moec_stats *b)
{
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->arch, b->arch);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->d, b->d);
    assert_int_equal(a->top_k, b->top_k);
    assert_int_equal(a->expert_ffn, b->expert_ffn);
    assert_int_equal(a->vocab, b->vocab);
    assert_true(a->router_hash == b->router_hash);
    assert_memory_equal(&a->tokens, &b->tokens, sizeof a->tokens);
    assert_string_equal(a->source, b->source);
    assert_int_equal(a->n_domains, b->n_domains);
    for (int i = 0; i < a->n_domains; i++) {
        assert_string_equal(a->domains[i], b->domains[i]);
        assert_memory_equal(&a->domain_tokens[i], &b->domain_tokens[i], sizeof(double));
    }
    for (int l = 0; l < a->n_layers; l++) {
        moec_layer_stats *la = &a->layers[l], *lb = &b->layers[l];
        assert_int_equal(la->n_experts, lb->n_experts);
        assert_int_equal(la->d, lb->d);
        assert_memory_equal(&la->tokens, &lb->tokens, sizeof(double));
        assert_memory_equal(&la->sim_tokens, &lb->sim_tokens, sizeof(double));
        moec_stats_array xa[MOEC_STATS_N_ARRAYS], xb[MOEC_STATS_N_ARRAYS];
        int na = moec_layer_stats_arrays(la, a->n_domains, xa);
        assert_int_equal(na, moec_layer_stats_arrays(lb, b->n_domains, xb));
        for (int i = 0; i < na; i++) {
            assert_int_equal(xa[i].len, xb[i].len);
            assert_memory_equal(*xa[i].p, *xb[i].p, xa[i].len * sizeof(double));
        }
    }
}

static void expect_load_error(const char *path, const char *what)
{
    moec_err err = {0};
    moec_stats *s = (moec_stats *)1;
    moec_status st = moec_stats_load(&s, path, &err);
    if (st == MOEC_OK)
        fail_msg("%s: loaded", what);
    assert_null(s);
    assert_true(err.msg[0] != '\0');
    assert_null(strchr(err.msg, '\n'));
    assert_non_null(strstr(err.msg, path));
}

static void test_file_round_trip_and_damage(void **state)
{
    (void)state;
    moec_model *m = tu_open_model(FIXTURE);
    const char *dir = tu_tmpdir();
    const char *files[2] = {text_slice(dir, "data/corpus/c.val.txt", 800),
                            text_slice(dir, "data/corpus/python.val.txt", 800)};
    moec_stats *s = calibrate(m, files, 2, 200, 50, 40);
    char path[4096], path2[4096], bad[4096];
    snprintf(path, sizeof path, "%s/a.stats", dir);
    snprintf(path2, sizeof path2, "%s/b.stats", dir);
    snprintf(bad, sizeof bad, "%s/bad.stats", dir);
    moec_err err = {0};
    assert_int_equal(moec_stats_save(s, path, &err), MOEC_OK);
    moec_stats *t;
    assert_int_equal(moec_stats_load(&t, path, &err), MOEC_OK);
    assert_same_stats(s, t);
    assert_int_equal(moec_stats_check(t, m, &err), MOEC_OK);
    assert_int_equal(moec_stats_save(t, path2, &err), MOEC_OK);
    size_t size, size2;
    unsigned char *buf = (unsigned char *)tu_read_file(path, &size);
    char *buf2 = tu_read_file(path2, &size2);
    assert_int_equal(size, size2);
    assert_memory_equal(buf, buf2, size);
    free(buf2);
    moec_stats_free(t);

    /* truncated anywhere */
    const size_t cuts[] = {0, 5, 8, 15, 40, 100, size / 2, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        tu_write_file(bad, buf, cuts[i]);
        expect_load_error(bad, "truncated");
    }
    /* one flipped byte anywhere */
    for (size_t pos = 0; pos < size; pos += pos < 200 ? 1 : 97) {
        buf[pos] ^= 0x10;
        tu_write_file(bad, buf, size);
        expect_load_error(bad, "flipped byte");
        buf[pos] ^= 0x10;
    }
    /* trailing bytes */
    unsigned char *longer = malloc(size + 3);
    memcpy(longer, buf, size);
    memset(longer + size, 0, 3);
    tu_write_file(bad, longer, size + 3);
    expect_load_error(bad, "trailing bytes");
    free(longer);
    /* not a statistics file */
    tu_write_file(bad, "MOECSTAX", 8);
    expect_load_error(bad, "wrong magic");
    tu_write_file(bad, "{\"json\": true}\n", 15);
    expect_load_error(bad, "wrong magic");
    /* a newer format (with a valid header checksum) is refused by name */
    const uint32_t hbytes = (uint32_t)buf[12] | (uint32_t)buf[13] << 8 | (uint32_t)buf[14] << 16 |
                            (uint32_t)buf[15] << 24;
    buf[8] = MOEC_STATS_VERSION + 1;
    uint64_t h = XXH3_64bits(buf, hbytes - 8);
    for (int i = 0; i < 8; i++)
        buf[hbytes - 8 + i] = (unsigned char)(h >> (8 * i));
    tu_write_file(bad, buf, size);
    moec_stats *u = NULL;
    assert_int_equal(moec_stats_load(&u, bad, &err), MOEC_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "newer"));
    free(buf);
    snprintf(bad, sizeof bad, "%s/missing.stats", dir);
    assert_int_equal(moec_stats_load(&u, bad, &err), MOEC_ERR_IO);

    moec_stats_free(s);
    moec_model_close(m);
}

/* A well-formed header (checksums right) that claims a ~200 MB payload
 * behind a zstd frame that only says so: refused as truncated, with the
 * output buffer grown only as far as the frame really decodes (found by
 * reading the reader: it used to allocate the claimed size first). */
static void test_payload_claim_beyond_data(void **state)
{
    (void)state;
    enum { E = 2048, D = 4096 };
    unsigned char h[108] = {0};
    memcpy(h, "MOECSTAT", 8);
    const uint32_t u32[][2] = {{8, 1}, {12, sizeof h}, {16, 1}, {20, 0}, {24, 0}, {28, D}, {32, 2},
                               {36, 8}, {40, 16}, {44, 0}, {96, E}};
    for (size_t i = 0; i < sizeof u32 / sizeof *u32; i++)
        for (int k = 0; k < 4; k++)
            h[u32[i][0] + k] = (unsigned char)(u32[i][1] >> (8 * k));
    /* the payload the shapes imply, as docs/stats.md lists the arrays */
    const uint64_t pbytes = 8 * (2 + 8 * (uint64_t)E + 2 * (uint64_t)E * E + 2 * (uint64_t)E * D + 2 * (uint64_t)D);
    /* a zstd frame header promising pbytes (8-byte content size), then one
     * last raw block of one byte */
    unsigned char frame[17] = {0x28, 0xB5, 0x2F, 0xFD, 0xC0 /* 8-byte content size */, 0x50 /* 1 MiB window */};
    for (int k = 0; k < 8; k++)
        frame[6 + k] = (unsigned char)(pbytes >> (8 * k));
    frame[14] = 0x09; /* last block, raw, size 1 */
    unsigned char file[sizeof h + sizeof frame + 1];
    const uint64_t put64[][2] = {{64, pbytes}, {72, sizeof frame + 1}, {80, 0},
                                 {88, XXH3_64bits(frame, sizeof frame)}};
    memcpy(file + sizeof h, frame, sizeof frame);
    file[sizeof h + sizeof frame] = 0x42;
    for (size_t i = 0; i < sizeof put64 / sizeof *put64; i++)
        for (int k = 0; k < 8; k++)
            h[put64[i][0] + k] = (unsigned char)(put64[i][1] >> (8 * k));
    /* the compressed checksum covers the stored bytes, the one-byte block too */
    memcpy(file, h, sizeof h);
    const uint64_t csum = XXH3_64bits(file + sizeof h, sizeof frame + 1);
    for (int k = 0; k < 8; k++)
        h[88 + k] = (unsigned char)(csum >> (8 * k));
    const uint64_t hsum = XXH3_64bits(h, sizeof h - 8);
    for (int k = 0; k < 8; k++)
        h[sizeof h - 8 + k] = (unsigned char)(hsum >> (8 * k));
    memcpy(file, h, sizeof h);
    moec_stats *s = (moec_stats *)1;
    moec_err err = {0};
    assert_int_equal(moec_stats_load_mem(&s, file, sizeof file, "claim.stats", &err), MOEC_ERR_FORMAT);
    assert_null(s);
    if (!strstr(err.msg, "claim.stats: corrupt statistics file: payload"))
        fail_msg("%s", err.msg);
}

/* ---- belonging to a model ---- */

static void test_other_models_refused(void **state)
{
    (void)state;
    moec_model *m = tu_open_model(FIXTURE);
    moec_err err = {0};
    moec_stats *s;
    assert_int_equal(moec_stats_new(&s, m, &err), MOEC_OK);
    assert_int_equal(moec_stats_check(s, m, &err), MOEC_OK);

    moec_model *other = tu_open_model("tests/fixtures/qwen2moe-random");
    assert_int_equal(moec_stats_check(s, other, &err), MOEC_ERR_MISMATCH);
    assert_non_null(strstr(err.msg, "Qwen3MoeForCausalLM"));
    moec_exec *ex = new_exec(other, 16);
    int32_t ids[4] = {1, 2, 3, 4};
    assert_int_equal(moec_calib_tokens(s, ex, ids, 4, -1, NULL, &err), MOEC_ERR_MISMATCH);
    moec_exec_free(ex);
    moec_model_close(other);

    /* fewer experts in layer 0 */
    moec_model *fewer;
    assert_int_equal(moec_model_derive(&fewer, m, &err), MOEC_OK);
    assert_int_equal(moec_model_resize_experts(fewer, 0, 6, &err), MOEC_OK);
    assert_int_equal(moec_stats_check(s, fewer, &err), MOEC_ERR_MISMATCH);
    assert_string_equal(err.msg, "statistics were gathered on a model with 8 experts in layer 0, this one has 6");
    moec_model_close(fewer);

    /* same shapes, one router weight changed */
    moec_model *changed;
    assert_int_equal(moec_model_derive(&changed, m, &err), MOEC_OK);
    moec_tensor *R = &changed->layers[1].router;
    const moec_tensor old = *R;
    assert_int_equal(moec_model_new_tensor(changed, R, old.dtype, old.shape[0], old.shape[1], &err), MOEC_OK);
    memcpy((void *)R->data, old.data, old.nbytes);
    ((unsigned char *)R->data)[3] ^= 1;
    assert_int_equal(moec_stats_check(s, changed, &err), MOEC_ERR_MISMATCH);
    assert_string_equal(err.msg, "router weights differ: statistics belong to another model");
    moec_model_close(changed);

    moec_stats_free(s);
    moec_model_close(m);
}

/* The router is linear in h_t, so no row is below the others for every
 * input; it is for the inputs at hand when it points against all of them.
 * Layer 0's inputs do not depend on its router, so they are measured on the
 * original model first. */
static void test_never_routed_expert(void **state)
{
    (void)state;
    moec_model *m = tu_open_model(FIXTURE);
    moec_err err = {0};
    moec_tokenizer *tok = model_tokenizer(m);
    size_t size, n;
    char *text = tu_read_file(tu_src("data/corpus/c.val.txt"), &size);
    int32_t *ids;
    assert_int_equal(moec_tokenizer_encode(tok, text, 1500, &ids, &n, &err), MOEC_OK);
    free(text);
    moec_tokenizer_free(tok);
    assert_true(n >= 200);
    n = 200;
    const int layer = 0, dead = 3;
    moec_exec *ex = new_exec(m, (int)n);
    capture cap = {.layer = layer};
    moec_exec_set_moe_hook(ex, capture_hook, &cap);
    assert_int_equal(moec_exec_forward(ex, ids, (int)n, NULL, false, &err), MOEC_OK);
    moec_exec_free(ex);
    const int d = cap.d;
    double *u = calloc((size_t)d, sizeof *u);
    for (size_t t = 0; t < n; t++)
        for (int j = 0; j < d; j++)
            u[j] += cap.x[t * d + j];
    double un = 0, lowest = INFINITY;
    for (int j = 0; j < d; j++)
        un += u[j] * u[j];
    for (size_t t = 0; t < n; t++) {
        double p = 0;
        for (int j = 0; j < d; j++)
            p += u[j] * cap.x[t * d + j];
        lowest = fmin(lowest, p / sqrt(un));
    }
    assert_true(lowest > 0); /* the mean input direction is shared by every input */

    moec_model *dm;
    assert_int_equal(moec_model_derive(&dm, m, &err), MOEC_OK);
    moec_tensor *R = &dm->layers[layer].router;
    const moec_tensor old = *R;
    const int64_t E = old.shape[0];
    assert_int_equal(moec_model_new_tensor(dm, R, MOEC_DT_F32, E, d, &err), MOEC_OK);
    float *w = (float *)R->data;
    moec_to_f32(w, old.data, old.dtype, (size_t)(E * d));
    for (int j = 0; j < d; j++)
        w[dead * d + j] = (float)(-1e3 / lowest * u[j] / sqrt(un)); /* logit <= -1000 for every input */

    moec_stats *s;
    assert_int_equal(moec_stats_new(&s, dm, &err), MOEC_OK);
    ex = new_exec(dm, (int)n);
    moec_calib_opts o = MOEC_CALIB_OPTS_DEFAULT;
    o.ctx = (int)n;
    o.sim_tokens = 30;
    assert_int_equal(moec_calib_tokens(s, ex, ids, n, -1, &o, &err), MOEC_OK);
    moec_exec_free(ex);
    assert_int_equal(moec_stats_check(s, dm, &err), MOEC_OK);
    assert_int_equal(moec_stats_check(s, m, &err), MOEC_ERR_MISMATCH);
    const moec_layer_stats *ls = &s->layers[layer];
    assert_true(ls->tokens == (double)n);
    assert_true(ls->count[dead] == 0);
    assert_true(ls->gate_sum[dead] == 0);
    assert_true(ls->out_norm_sum[dead] == 0);
    for (int j = 0; j < d; j++)
        assert_true(ls->in_sq_sum[(size_t)dead * d + j] == 0 && ls->in_absmax[(size_t)dead * d + j] == 0);
    assert_true(ls->prob_sum[dead] < 1e-6);
    for (int e = 0; e < E; e++)
        if (e != dead)
            assert_true(ls->co_count[(size_t)dead * E + e] == 0 && ls->count[e] > 0);
    /* its output is still measured for the similarity sample */
    assert_true(ls->sim_tokens == 30);
    assert_true(ls->out_cos[(size_t)dead * E + dead] == 1.0);

    free(u);
    free(ids);
    free(cap.x);
    free(cap.resid);
    free(cap.gates);
    free(cap.sel);
    moec_stats_free(s);
    moec_model_close(dm);
    moec_model_close(m);
}

/* NaN weights must not turn into statistics silently: calibration asks the
 * executor for no logits, so it checks its own sums. */
static void test_non_finite_refused(void **state)
{
    (void)state;
    moec_model *m = tu_open_model(FIXTURE);
    moec_err err = {0};
    moec_model *dm;
    assert_int_equal(moec_model_derive(&dm, m, &err), MOEC_OK);
    const int d = m->cfg.hidden_size;
    moec_tensor *w = &dm->layers[0].ffn_norm;
    const moec_tensor old = *w;
    assert_int_equal(moec_model_new_tensor(dm, w, MOEC_DT_F32, d, 0, &err), MOEC_OK);
    moec_to_f32((float *)w->data, old.data, old.dtype, (size_t)d);
    ((float *)w->data)[5] = NAN;
    moec_stats *s;
    assert_int_equal(moec_stats_new(&s, dm, &err), MOEC_OK);
    moec_exec *ex = new_exec(dm, 16);
    int32_t ids[6] = {11, 12, 13, 14, 15, 16};
    moec_calib_opts o = MOEC_CALIB_OPTS_DEFAULT;
    o.ctx = 16;
    assert_int_equal(moec_calib_tokens(s, ex, ids, 6, -1, &o, &err), MOEC_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "layer 0"));
    moec_exec_free(ex);
    moec_stats_free(s);
    moec_model_close(dm);
    moec_model_close(m);
}

/* ---- the tool ---- */

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_tool(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    const char *text = text_slice(dir, "data/corpus/python.val.txt", 600);
    char cmd[16384], out[4096];
    snprintf(out, sizeof out, "%s/tool.stats", dir);
    snprintf(cmd, sizeof cmd, "%s/moec-calib %s --text %s --ctx 32 --sim-tokens 16 --threads 2 -o %s --json >%s/out.json",
             MOEC_BIN_DIR, tu_src(FIXTURE), text, out, dir);
    assert_int_equal(run(cmd), 0);
    moec_err err = {0};
    moec_stats *s;
    assert_int_equal(moec_stats_load(&s, out, &err), MOEC_OK);
    assert_true(s->tokens > 0);
    snprintf(cmd, sizeof cmd, "%s/out.json", dir);
    char *json = tu_read_file(cmd, NULL);
    assert_non_null(strstr(json, "\"count_share\""));
    free(json);
    moec_stats_free(s);
    /* usage errors exit 2, failures 1 */
    snprintf(cmd, sizeof cmd, "%s/moec-calib %s -o %s 2>/dev/null", MOEC_BIN_DIR, tu_src(FIXTURE), out);
    assert_int_equal(run(cmd), 2);
    snprintf(cmd, sizeof cmd, "%s/moec-calib %s --text %s/none.txt -o %s 2>/dev/null", MOEC_BIN_DIR, tu_src(FIXTURE),
             dir, out);
    assert_int_equal(run(cmd), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invariants),
        cmocka_unit_test(test_against_direct_computation),
        cmocka_unit_test(test_budget_shares),
        cmocka_unit_test(test_file_round_trip_and_damage),
        cmocka_unit_test(test_payload_claim_beyond_data),
        cmocka_unit_test(test_other_models_refused),
        cmocka_unit_test(test_never_routed_expert),
        cmocka_unit_test(test_non_finite_refused),
        cmocka_unit_test(test_tool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
