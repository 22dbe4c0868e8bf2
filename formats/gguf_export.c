/* gguf_export.c - moec_model -> GGUF for llama.cpp (gguf_export.h): the
 * architecture keys, the tensor names and layouts, and per tensor the
 * choice between block copy, code carry, conversion and encoding. */
#include "formats/gguf_export.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/dtype.h"
#include "core/ggml_blocks.h"
#include "core/ggml_carry.h"
#include "core/qformat.h"
#include "formats/gguf.h"
#include "formats/gguf_vocab.h"

/* How one source matrix becomes bytes of the output type. */
typedef enum { HOW_FLOAT, HOW_VERBATIM, HOW_CARRY, HOW_DEQUANT, HOW_ENCODE } how_t;

typedef struct gt {
    char name[64];
    int type;                /* output ggml type */
    int n_dims;
    int64_t ne[3];
    const moec_tensor **src; /* [n_src], stacked along ne[2] (experts) */
    int n_src;
    int64_t rows, cols;      /* of each source (1-D: rows 1) */
    int perm_heads;          /* > 0: rows permuted for llama's interleaved RoPE, this many heads */
    how_t how;
    struct xctx *x;
} gt;

typedef struct xctx {
    gt *t;
    int n, cap;
    moec_gguf_export_report *rep;
    moec_carry_stats carry;
} xctx;

static const char *arch_name(moec_arch a)
{
    switch (a) {
    case MOEC_ARCH_MIXTRAL: return "llama";
    case MOEC_ARCH_QWEN2_MOE: return "qwen2moe";
    case MOEC_ARCH_QWEN3_MOE: return "qwen3moe";
    case MOEC_ARCH_OLMOE: return "olmoe";
    default: return NULL;
    }
}

static bool is_float_type(int t) { return t == MOEC_GGML_F32 || t == MOEC_GGML_F16 || t == MOEC_GGML_BF16; }

static int dtype_ggml(moec_dtype d)
{
    return d == MOEC_DT_F16 ? MOEC_GGML_F16 : d == MOEC_DT_BF16 ? MOEC_GGML_BF16 : MOEC_GGML_F32;
}

static moec_dtype ggml_dtype(int t)
{
    return t == MOEC_GGML_F16 ? MOEC_DT_F16 : t == MOEC_GGML_BF16 ? MOEC_DT_BF16 : MOEC_DT_F32;
}

/* llama-quantize's fallback for rows its type cannot hold. */
static int fallback_type(int type, int64_t cols)
{
    moec_gblock gb = moec_gblock_from_ggml(type);
    if (gb == MOEC_GB_NONE || cols % moec_gblock_info(gb)->block == 0)
        return type;
    switch (gb) {
    case MOEC_GB_Q2_K:
    case MOEC_GB_Q3_K: gb = MOEC_GB_Q4_0; break;
    case MOEC_GB_Q4_K: gb = MOEC_GB_Q5_0; break;
    case MOEC_GB_Q5_K: gb = MOEC_GB_Q5_1; break;
    case MOEC_GB_Q6_K: gb = MOEC_GB_Q8_0; break;
    default: return MOEC_GGML_F16;
    }
    return cols % 32 ? MOEC_GGML_F16 : moec_gblock_info(gb)->ggml_type;
}

/* The output type of one weight matrix, and how it gets there. */
static moec_status decide(const moec_tensor *t, const char *name, const moec_gguf_export_opts *o, int *type,
                          how_t *how, moec_err *err)
{
    const int64_t cols = moec_tensor_cols(t);
    if (t->dtype == MOEC_DT_QUANT) {
        const moec_qformat *f = t->q;
        if (f->gblock) {
            *type = moec_gblock_info(f->gblock)->ggml_type;
            *how = HOW_VERBATIM;
            return MOEC_OK;
        }
        const moec_gblock c = moec_qformat_carry_type(f);
        if (c) {
            *type = moec_gblock_info(c)->ggml_type;
            *how = HOW_CARRY;
            return MOEC_OK;
        }
        if (o->type == MOEC_GGUF_AUTO || is_float_type(o->type)) {
            *type = o->type == MOEC_GGUF_AUTO ? MOEC_GGML_F32 : o->type;
            *how = HOW_DEQUANT;
            return MOEC_OK;
        }
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "%s is %d-bit in groups of %d%s, which no llama.cpp type holds; quantize with "
                            "moec-quant --grid or --preset, or export it dequantized with --type f32",
                            name, f->bits, f->group, f->symmetric ? " (symmetric)" : "");
    }
    if (!moec_dtype_is_compute(t->dtype))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "%s has dtype %s", name, moec_dtype_name(t->dtype));
    if (o->type == MOEC_GGUF_AUTO || is_float_type(o->type)) {
        *type = o->type == MOEC_GGUF_AUTO ? dtype_ggml(t->dtype) : o->type;
        *how = HOW_FLOAT;
        return MOEC_OK;
    }
    *type = fallback_type(o->type, cols);
    *how = is_float_type(*type) ? HOW_FLOAT : HOW_ENCODE;
    return MOEC_OK;
}

/* ---- tensor list ---------------------------------------------------------- */

static gt *push(xctx *x, moec_err *err)
{
    if (x->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 64;
        gt *t = realloc(x->t, (size_t)cap * sizeof *t);
        if (!t) {
            moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            return NULL;
        }
        x->t = t;
        x->cap = cap;
    }
    gt *t = &x->t[x->n++];
    memset(t, 0, sizeof *t);
    t->x = x;
    return t;
}

/* A 1-D tensor (or a [1][d] gate), written as F32. */
static moec_status add_vector(xctx *x, const moec_tensor *t, const char *name, moec_err *err)
{
    gt *g = push(x, err);
    if (!g)
        return MOEC_ERR_NOMEM;
    if (!(g->src = malloc(sizeof *g->src)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    snprintf(g->name, sizeof g->name, "%s", name);
    g->src[0] = t;
    g->n_src = 1;
    g->type = MOEC_GGML_F32;
    g->how = HOW_FLOAT;
    g->rows = 1;
    g->cols = moec_tensor_numel(t);
    g->n_dims = 1;
    g->ne[0] = g->cols;
    if (t->dtype == MOEC_DT_QUANT)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "%s is quantized; llama.cpp keeps it in F32", name);
    return MOEC_OK;
}

/* Weight matrices [rows][cols], one or stacked (experts). force_f32: a
 * router, kept in F32 as llama.cpp does. */
static moec_status add_matrix(xctx *x, const moec_tensor *const *src, int n_src, const char *name, int perm_heads,
                              bool force_f32, const moec_gguf_export_opts *o, moec_err *err)
{
    gt *g = push(x, err);
    if (!g)
        return MOEC_ERR_NOMEM;
    if (!(g->src = malloc((size_t)n_src * sizeof *g->src)))
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
    snprintf(g->name, sizeof g->name, "%s", name);
    g->n_src = n_src;
    g->rows = moec_tensor_rows(src[0]);
    g->cols = moec_tensor_cols(src[0]);
    g->perm_heads = perm_heads;
    for (int e = 0; e < n_src; e++) {
        g->src[e] = src[e];
        if (src[e]->ndim != 2 || moec_tensor_rows(src[e]) != g->rows || moec_tensor_cols(src[e]) != g->cols)
            return moec_err_set(err, MOEC_ERR_SHAPE, "%s: expert %d is not [%lld][%lld]", name, e,
                                (long long)g->rows, (long long)g->cols);
        int type;
        how_t how;
        char what[96];
        if (n_src > 1)
            snprintf(what, sizeof what, "%s (expert %d)", name, e);
        else
            snprintf(what, sizeof what, "%s", name);
        if (force_f32) {
            if (src[e]->dtype == MOEC_DT_QUANT)
                return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "%s is quantized; llama.cpp keeps it in F32", what);
            type = MOEC_GGML_F32;
            how = HOW_FLOAT;
        } else {
            moec_status st = decide(src[e], what, o, &type, &how, err);
            if (st)
                return st;
        }
        if (e == 0) {
            g->type = type;
            g->how = how;
        } else if (type != g->type || how != g->how) {
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                "%s: expert %d is %s where expert 0 is %s; llama.cpp keeps a layer's experts in one "
                                "tensor of one type (per-expert widths cannot be exported; allocate per tensor)",
                                name, e, moec_gguf_type_name(type), moec_gguf_type_name(g->type));
        }
    }
    g->n_dims = n_src > 1 ? 3 : 2;
    g->ne[0] = g->cols;
    g->ne[1] = g->rows;
    g->ne[2] = n_src;
    if (moec_gguf_tensor_bytes(g->type, g->n_dims, g->ne) == 0)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "%s: %s cannot hold rows of %lld weights", name,
                            moec_gguf_type_name(g->type), (long long)g->cols);
    return MOEC_OK;
}

/* ---- emitting ------------------------------------------------------------- */

/* Source row of output row r: llama's RoPE rotates pairs of adjacent values
 * where HF rotates the two halves of a head, so row 2i + j of a head is the
 * HF row j·hd/2 + i. */
static int64_t src_row(const gt *g, int64_t r)
{
    if (g->perm_heads <= 0)
        return r;
    const int64_t hd = g->rows / g->perm_heads, h = r / hd, k = r % hd;
    return h * hd + (k % 2) * (hd / 2) + k / 2;
}

static moec_status emit(void *vctx, moec_gguf_out *o, moec_err *err)
{
    gt *g = vctx;
    const size_t out_row = (size_t)moec_gguf_tensor_bytes(g->type, 1, &g->cols);
    unsigned char *buf = malloc(out_row);
    float *tmp = malloc((size_t)g->cols * sizeof *tmp);
    moec_status st = MOEC_OK;
    if (!buf || !tmp) {
        st = moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory for a row", g->name);
        goto done;
    }
    const moec_gblock gb = moec_gblock_from_ggml(g->type);
    for (int e = 0; e < g->n_src && !st; e++) {
        const moec_tensor *t = g->src[e];
        for (int64_t r = 0; r < g->rows && !st; r++) {
            const int64_t sr = src_row(g, r);
            const unsigned char *row;
            switch (g->how) {
            case HOW_VERBATIM:
                row = (const unsigned char *)t->q->codes + (size_t)sr * out_row;
                break;
            case HOW_CARRY:
                moec_qformat_carry_row(t->q, sr, gb, buf, &g->x->carry);
                row = buf;
                break;
            default: {
                if (t->dtype == MOEC_DT_QUANT) {
                    moec_qformat_dequant_row(t->q, sr, tmp);
                } else {
                    const size_t es = moec_dtype_size(t->dtype);
                    const char *srcp = (const char *)t->data + (size_t)sr * (size_t)g->cols * es;
                    if (g->how == HOW_FLOAT && ggml_dtype(g->type) == t->dtype) {
                        /* same storage: the bytes as they are */
                        memcpy(buf, srcp, out_row);
                        row = buf;
                        break;
                    }
                    moec_to_f32(tmp, srcp, t->dtype, (size_t)g->cols);
                }
                if (gb != MOEC_GB_NONE)
                    moec_gblock_quantize(gb, tmp, NULL, buf, g->cols);
                else
                    moec_from_f32(buf, tmp, ggml_dtype(g->type), (size_t)g->cols);
                row = buf;
            }
            }
            st = moec_gguf_out_write(o, row, out_row, err);
        }
    }
done:
    free(buf);
    free(tmp);
    return st;
}

/* ---- the model ------------------------------------------------------------ */

static moec_status check_supported(const moec_model *m, moec_err *err)
{
    const moec_config *c = &m->cfg;
    if (!arch_name(c->arch))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "GGUF export: unknown architecture");
    for (int l = 0; l < c->n_layers; l++)
        if (c->layer_experts[l] != c->n_experts)
            return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                                "GGUF export: layer %d has %d routed experts where the model has %d; llama.cpp's "
                                "%s needs every layer to be an MoE layer with the same expert count",
                                l, c->layer_experts[l], c->n_experts, arch_name(c->arch));
    const bool want_norm = c->arch == MOEC_ARCH_MIXTRAL || c->arch == MOEC_ARCH_QWEN3_MOE;
    if (c->norm_topk != want_norm)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "GGUF export: norm_topk_prob is %s, but llama.cpp's %s always %s the top-k weights",
                            c->norm_topk ? "true" : "false", arch_name(c->arch),
                            want_norm ? "renormalises" : "keeps (does not renormalise)");
    if (c->arch == MOEC_ARCH_OLMOE &&
        (c->n_kv_heads != c->n_heads || c->n_heads * c->head_dim != c->hidden_size))
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "GGUF export: OLMoE with %d KV heads of %d and head_dim %d; llama.cpp's olmoe needs "
                            "q/k norms over the hidden size (KV heads = heads, heads x head_dim = hidden)",
                            c->n_kv_heads, c->n_heads, c->head_dim);
    if (c->arch == MOEC_ARCH_QWEN2_MOE && c->shared_ffn > 0 && !c->shared_gate)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "GGUF export: a Qwen2-MoE shared expert without its gate");
    if (c->arch == MOEC_ARCH_MIXTRAL && c->head_dim % 2)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED, "GGUF export: odd head_dim %d", c->head_dim);
    if (!m->tokenizer_json)
        return moec_err_set(err, MOEC_ERR_UNSUPPORTED,
                            "GGUF export: the model has no tokenizer.json; llama.cpp needs the vocabulary");
    return MOEC_OK;
}

static moec_status add_arch_keys(moec_gguf_writer *w, const moec_model *m, const char *A, const char *name,
                                 moec_err *err)
{
    const moec_config *c = &m->cfg;
    char k[96];
    moec_status st;
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", A, suffix), k)
    if ((st = moec_gguf_add_str(w, "general.architecture", A, strlen(A), err)) ||
        (st = moec_gguf_add_str(w, "general.name", name, strlen(name), err)) ||
        (st = moec_gguf_add_u32(w, KEY("context_length"), (uint32_t)c->max_positions, err)) ||
        (st = moec_gguf_add_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size, err)) ||
        (st = moec_gguf_add_u32(w, KEY("block_count"), (uint32_t)c->n_layers, err)))
        return st;
    /* llama and olmoe size their expert tensors by feed_forward_length; the
     * Qwen MoEs by expert_feed_forward_length (feed_forward_length is then
     * the dense intermediate size of the config) */
    const bool qwen = c->arch == MOEC_ARCH_QWEN2_MOE || c->arch == MOEC_ARCH_QWEN3_MOE;
    const int ff = qwen ? (c->dense_ffn > 0 ? c->dense_ffn : c->expert_ffn) : c->expert_ffn;
    if ((st = moec_gguf_add_u32(w, KEY("feed_forward_length"), (uint32_t)ff, err)) ||
        (qwen && (st = moec_gguf_add_u32(w, KEY("expert_feed_forward_length"), (uint32_t)c->expert_ffn, err))) ||
        (c->arch == MOEC_ARCH_QWEN2_MOE && c->shared_ffn > 0 &&
         (st = moec_gguf_add_u32(w, KEY("expert_shared_feed_forward_length"), (uint32_t)c->shared_ffn, err))) ||
        (st = moec_gguf_add_u32(w, KEY("attention.head_count"), (uint32_t)c->n_heads, err)) ||
        (st = moec_gguf_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_heads, err)) ||
        (st = moec_gguf_add_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim, err)) ||
        (st = moec_gguf_add_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim, err)) ||
        (st = moec_gguf_add_u32(w, KEY("rope.dimension_count"), (uint32_t)c->head_dim, err)) ||
        (st = moec_gguf_add_f32(w, KEY("rope.freq_base"), c->rope_theta, err)) ||
        (st = moec_gguf_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->rms_eps, err)) ||
        (st = moec_gguf_add_u32(w, KEY("expert_count"), (uint32_t)c->n_experts, err)) ||
        (st = moec_gguf_add_u32(w, KEY("expert_used_count"), (uint32_t)c->top_k, err)) ||
        (st = moec_gguf_add_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size, err)))
        return st;
#undef KEY
    return MOEC_OK;
}

/* llama_ftype of the file, named by its experts' type as llama.cpp's
 * "mostly" convention does. */
static int file_type_of(int t)
{
    switch (moec_gblock_from_ggml(t)) {
    case MOEC_GB_Q4_0: return 2;
    case MOEC_GB_Q4_1: return 3;
    case MOEC_GB_Q8_0: return 7;
    case MOEC_GB_Q5_0: return 8;
    case MOEC_GB_Q5_1: return 9;
    case MOEC_GB_Q2_K: return 10;
    case MOEC_GB_Q3_K: return 12;
    case MOEC_GB_Q4_K: return 15;
    case MOEC_GB_Q5_K: return 17;
    case MOEC_GB_Q6_K: return 18;
    default: return t == MOEC_GGML_F16 ? 1 : t == MOEC_GGML_BF16 ? 32 : 0;
    }
}

static moec_status build(xctx *x, const moec_model *m, const moec_gguf_export_opts *o, moec_err *err)
{
    const moec_config *c = &m->cfg;
    const bool llama = c->arch == MOEC_ARCH_MIXTRAL;
    char n[64];
    moec_status st;
    const moec_tensor *one[1];
    const moec_tensor **ex = malloc((size_t)(c->n_experts > 0 ? c->n_experts : 1) * sizeof *ex);
    if (!ex)
        return moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
#define MAT(t, nm, perm) (one[0] = (t), add_matrix(x, one, 1, (nm), (perm), false, o, err))
    if ((st = MAT(&m->embed, "token_embd.weight", 0)))
        goto done;
    for (int l = 0; l < c->n_layers; l++) {
        const moec_layer *L = &m->layers[l];
#define NM(s) (snprintf(n, sizeof n, "blk.%d.%s", l, s), n)
        if ((st = add_vector(x, &L->attn_norm, NM("attn_norm.weight"), err)) ||
            (st = MAT(&L->wq, NM("attn_q.weight"), llama ? c->n_heads : 0)) ||
            (st = MAT(&L->wk, NM("attn_k.weight"), llama ? c->n_kv_heads : 0)) ||
            (st = MAT(&L->wv, NM("attn_v.weight"), 0)) || (st = MAT(&L->wo, NM("attn_output.weight"), 0)))
            goto done;
        if (c->qkv_bias && ((st = add_vector(x, &L->bq, NM("attn_q.bias"), err)) ||
                            (st = add_vector(x, &L->bk, NM("attn_k.bias"), err)) ||
                            (st = add_vector(x, &L->bv, NM("attn_v.bias"), err))))
            goto done;
        if (c->qk_norm != MOEC_QK_NORM_NONE && ((st = add_vector(x, &L->q_norm, NM("attn_q_norm.weight"), err)) ||
                                                 (st = add_vector(x, &L->k_norm, NM("attn_k_norm.weight"), err))))
            goto done;
        if ((st = add_vector(x, &L->ffn_norm, NM("ffn_norm.weight"), err)))
            goto done;
        one[0] = &L->router;
        if ((st = add_matrix(x, one, 1, NM("ffn_gate_inp.weight"), 0, true, o, err)))
            goto done;
        for (int e = 0; e < L->n_experts; e++)
            ex[e] = &L->experts[e].w1;
        if ((st = add_matrix(x, ex, L->n_experts, NM("ffn_gate_exps.weight"), 0, false, o, err)))
            goto done;
        for (int e = 0; e < L->n_experts; e++)
            ex[e] = &L->experts[e].w2;
        if ((st = add_matrix(x, ex, L->n_experts, NM("ffn_down_exps.weight"), 0, false, o, err)))
            goto done;
        for (int e = 0; e < L->n_experts; e++)
            ex[e] = &L->experts[e].w3;
        if ((st = add_matrix(x, ex, L->n_experts, NM("ffn_up_exps.weight"), 0, false, o, err)))
            goto done;
        if (c->shared_ffn > 0 && ((st = add_vector(x, &L->shared_gate, NM("ffn_gate_inp_shexp.weight"), err)) ||
                                  (st = MAT(&L->shared.w1, NM("ffn_gate_shexp.weight"), 0)) ||
                                  (st = MAT(&L->shared.w2, NM("ffn_down_shexp.weight"), 0)) ||
                                  (st = MAT(&L->shared.w3, NM("ffn_up_shexp.weight"), 0))))
            goto done;
#undef NM
    }
    if ((st = add_vector(x, &m->final_norm, "output_norm.weight", err)))
        goto done;
    /* llama and qwen3moe use token_embd when output is absent; qwen2moe and
     * olmoe require output, so a tied head is written as a copy */
    if ((!c->tie_embeddings || c->arch == MOEC_ARCH_QWEN2_MOE || c->arch == MOEC_ARCH_OLMOE) &&
        (st = MAT(c->tie_embeddings ? &m->embed : &m->lm_head, "output.weight", 0)))
        goto done;
#undef MAT
done:
    free(ex);
    return st;
}

static void tally(xctx *x)
{
    moec_gguf_export_report *r = x->rep;
    for (int i = 0; i < x->n; i++) {
        const gt *g = &x->t[i];
        const int64_t k = g->n_src;
        switch (g->how) {
        case HOW_VERBATIM: r->verbatim += k; break;
        case HOW_CARRY: r->carried += k; break;
        case HOW_DEQUANT: r->dequantized += k; break;
        case HOW_ENCODE: r->encoded += k; break;
        default: break;
        }
    }
}

moec_status moec_model_save_gguf(const moec_model *m, const char *path, const moec_gguf_export_opts *o,
                                 moec_gguf_export_report *rep, moec_err *err)
{
    const moec_gguf_export_opts dflt = MOEC_GGUF_EXPORT_OPTS_DEFAULT;
    moec_gguf_export_report local;
    if (!o)
        o = &dflt;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (o->type != MOEC_GGUF_AUTO && !is_float_type(o->type) && !moec_gblock_from_ggml(o->type))
        return moec_err_set(err, MOEC_ERR_ARG, "GGUF export: type %d is not F32, F16, BF16 or a block type", o->type);
    moec_status st = check_supported(m, err);
    if (st)
        return st;
    const char *A = arch_name(m->cfg.arch);
    rep->arch = A;
    xctx x = {.rep = rep};
    moec_gguf_writer *w = NULL;
    char *base = NULL;
    if ((st = build(&x, m, o, err)) || (st = moec_gguf_writer_new(&w, err)))
        goto done;
    const char *name = o->name;
    if (!name) {
        base = strdup(m->source ? m->source : "model");
        if (!base) {
            st = moec_err_set(err, MOEC_ERR_NOMEM, "out of memory");
            goto done;
        }
        size_t bl = strlen(base);
        while (bl > 1 && base[bl - 1] == '/')
            base[--bl] = '\0';
        name = basename(base);
    }
    int experts_type = x.n > 0 ? x.t[0].type : 0;
    bool any_block = false;
    for (int i = 0; i < x.n; i++) {
        if (strstr(x.t[i].name, "ffn_gate_exps") && i > 0) {
            experts_type = x.t[i].type;
            break;
        }
    }
    for (int i = 0; i < x.n; i++)
        any_block |= moec_gblock_from_ggml(x.t[i].type) != MOEC_GB_NONE;
    rep->file_type = file_type_of(experts_type);
    if ((st = add_arch_keys(w, m, A, name, err)) ||
        (st = moec_gguf_add_u32(w, "general.file_type", (uint32_t)rep->file_type, err)) ||
        (any_block && (st = moec_gguf_add_u32(w, "general.quantization_version", 2, err))))
        goto done;
    const moec_gguf_vocab_src vs = {
        .tokenizer_json = m->tokenizer_json,
        .tokenizer_json_len = m->tokenizer_json_len,
        .tokenizer_config = m->side[0].data, /* moec_side_file_names[0]: tokenizer_config.json */
        .vocab_size = m->cfg.vocab_size,
        .bos_id = m->cfg.bos_token_id,
        .eos_id = m->cfg.eos_token_id,
        .olmo = m->cfg.arch == MOEC_ARCH_OLMOE,
    };
    if ((st = moec_gguf_add_vocab(w, &vs, &rep->tokenizer, err))) {
        moec_err_prefix(err, "GGUF export");
        goto done;
    }
    for (int i = 0; i < x.n && !st; i++)
        st = moec_gguf_add_tensor(w, x.t[i].name, x.t[i].type, x.t[i].n_dims, x.t[i].ne, emit, &x.t[i], err);
    if (st || (st = moec_gguf_writer_write(w, path, err)))
        goto done;
    rep->n_tensors = x.n;
    tally(&x);
    rep->carried_groups = x.carry.groups;
    rep->rounded_mins = x.carry.rounded;
    rep->max_min_error = x.carry.max_err;
    struct stat sb;
    if (stat(path, &sb) == 0)
        rep->file_bytes = (uint64_t)sb.st_size;
done:
    moec_gguf_writer_free(w);
    for (int i = 0; i < x.n; i++)
        free(x.t[i].src);
    free(x.t);
    free(base);
    return st;
}
