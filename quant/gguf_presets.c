/* gguf_presets.c - llama-quantize's per-tensor type choices for MoE models
 * as a moec plan (the table in gguf_presets.h). */
#include "quant/gguf_presets.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

typedef enum { P_Q4_K_M, P_Q3_K_M, P_Q2_K, P_LEGACY } preset;

static const struct {
    const char *name;
    preset p;
    moec_gblock dflt;
} presets[] = {
    {"Q4_K_M", P_Q4_K_M, MOEC_GB_Q4_K},
    {"Q3_K_M", P_Q3_K_M, MOEC_GB_Q3_K},
    {"Q2_K", P_Q2_K, MOEC_GB_Q2_K},
    {"Q8_0", P_LEGACY, MOEC_GB_Q8_0},
    {"Q4_0", P_LEGACY, MOEC_GB_Q4_0},
    {"Q4_1", P_LEGACY, MOEC_GB_Q4_1},
    {"Q5_0", P_LEGACY, MOEC_GB_Q5_0},
    {"Q5_1", P_LEGACY, MOEC_GB_Q5_1},
};

bool moec_gplan_is_preset(const char *name)
{
    for (size_t i = 0; name && i < sizeof presets / sizeof *presets; i++)
        if (strcasecmp(name, presets[i].name) == 0)
            return true;
    return false;
}

/* llama-quantize's fallback when a type's block does not divide the rows;
 * MOEC_GB_NONE = F16 (left unquantized here). */
static moec_gblock fit(moec_gblock t, int64_t cols)
{
    while (t != MOEC_GB_NONE && cols % moec_gblock_info(t)->block) {
        switch (t) {
        case MOEC_GB_Q2_K:
        case MOEC_GB_Q3_K: t = MOEC_GB_Q4_0; break;
        case MOEC_GB_Q4_K: t = MOEC_GB_Q5_0; break;
        case MOEC_GB_Q5_K: t = MOEC_GB_Q5_1; break;
        case MOEC_GB_Q6_K: t = MOEC_GB_Q8_0; break;
        default: t = MOEC_GB_NONE; break;
        }
    }
    return t;
}

static bool more_bits(int l, int n) { return l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2; }

/* Input widths of each slot's rows (what the type's block must divide). */
static int64_t slot_cols(const moec_config *c, int l, moec_gslot s)
{
    switch (s) {
    case MOEC_GS_O: return (int64_t)c->n_heads * c->head_dim;
    case MOEC_GS_DOWN: return moec_config_layer_is_moe(c, l) ? c->expert_ffn : c->dense_ffn;
    case MOEC_GS_SH_DOWN: return c->shared_ffn;
    default: return c->hidden_size;
    }
}

static void set(moec_gplan *p, const moec_config *c, int l, moec_gslot s, moec_gblock t)
{
    const int64_t cols = slot_cols(c, l, s);
    p->layer[l][s] = (uint8_t)(cols > 0 ? fit(t, cols) : MOEC_GB_NONE);
}

moec_status moec_gplan_preset(moec_gplan *p, const moec_config *c, const char *name, moec_err *err)
{
    int k = -1;
    for (size_t i = 0; name && i < sizeof presets / sizeof *presets; i++)
        if (strcasecmp(name, presets[i].name) == 0)
            k = (int)i;
    if (k < 0)
        return moec_err_set(err, MOEC_ERR_ARG,
                            "unknown llama.cpp preset '%s' (Q4_K_M, Q3_K_M, Q2_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)",
                            name ? name : "");
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", presets[k].name);
    const preset P = presets[k].p;
    const moec_gblock D = presets[k].dflt;
    const int L = c->n_layers;
    const bool eight = c->n_experts == 8;
    const int gqa = c->n_kv_heads > 0 ? c->n_heads / c->n_kv_heads : 1;
    /* output: Q6_K unless its rows do not fit the default type's block (then Q8_0); Q8_0 files keep Q8_0 */
    p->head = D == MOEC_GB_Q8_0 || c->hidden_size % moec_gblock_info(D)->block ? MOEC_GB_Q8_0 : MOEC_GB_Q6_K;
    p->head = fit(p->head, c->hidden_size);
    p->embed = c->tie_embeddings ? p->head : fit(D, c->hidden_size);
    for (int l = 0; l < L; l++) {
        moec_gblock v, kk = D, o = D, down = D;
        switch (P) {
        case P_Q2_K:
            v = gqa >= 4 ? MOEC_GB_Q4_K : MOEC_GB_Q3_K;
            o = MOEC_GB_Q3_K;
            down = MOEC_GB_Q3_K;
            break;
        case P_Q3_K_M:
            v = l < 2 ? MOEC_GB_Q5_K : MOEC_GB_Q4_K;
            o = MOEC_GB_Q4_K;
            down = l < L / 16 ? MOEC_GB_Q5_K : MOEC_GB_Q4_K;
            break;
        case P_LEGACY: /* the 32-block types: their type everywhere but the output */
            v = D;
            break;
        default: /* Q4_K_M */
            v = more_bits(l, L) ? MOEC_GB_Q6_K : D;
            down = more_bits(l, L) ? MOEC_GB_Q6_K : D;
            break;
        }
        if (eight) {
            v = MOEC_GB_Q8_0;
            kk = MOEC_GB_Q8_0;
            if (P != P_LEGACY)
                o = MOEC_GB_Q5_K;
        }
        set(p, c, l, MOEC_GS_Q, D);
        set(p, c, l, MOEC_GS_K, kk);
        set(p, c, l, MOEC_GS_V, v);
        set(p, c, l, MOEC_GS_O, o);
        set(p, c, l, MOEC_GS_GATE, D);
        set(p, c, l, MOEC_GS_UP, D);
        set(p, c, l, MOEC_GS_DOWN, down);
        if (c->shared_ffn > 0) {
            set(p, c, l, MOEC_GS_SH_GATE, D);
            set(p, c, l, MOEC_GS_SH_UP, D);
            set(p, c, l, MOEC_GS_SH_DOWN, down);
        }
    }
    return MOEC_OK;
}

void moec_gplan_uniform(moec_gplan *p, const moec_config *c, moec_gblock ffn, moec_gblock attn, moec_gblock embed,
                        moec_gblock head)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "grid");
    p->embed = fit(embed, c->hidden_size);
    p->head = fit(head, c->hidden_size);
    for (int l = 0; l < c->n_layers; l++) {
        for (int s = MOEC_GS_Q; s <= MOEC_GS_O; s++)
            set(p, c, l, (moec_gslot)s, attn);
        for (int s = MOEC_GS_GATE; s <= MOEC_GS_DOWN; s++)
            set(p, c, l, (moec_gslot)s, ffn);
        if (c->shared_ffn > 0)
            for (int s = MOEC_GS_SH_GATE; s <= MOEC_GS_SH_DOWN; s++)
                set(p, c, l, (moec_gslot)s, ffn);
    }
}

bool moec_gplan_has_attn(const moec_gplan *p, const moec_config *c)
{
    for (int l = 0; p && l < c->n_layers; l++)
        for (int s = MOEC_GS_Q; s <= MOEC_GS_O; s++)
            if (p->layer[l][s])
                return true;
    return false;
}
