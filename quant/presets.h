/* presets.h - named quantization recipes (moec-quant --preset NAME) and how
 * a recipe is put together from defaults, a preset and explicit options.
 *
 * A preset is data: the measured-best rows of the results tables
 * (docs/results/quantization.md, docs/results/llama-cpp.md), each setting
 * some fields of a moec_quant_recipe. Explicit options win over a preset,
 * a preset over the defaults; moec_quant_recipe_resolve records where each
 * field's value came from so the report can say so.
 *
 * Each preset was measured on mixtral-tiny by scripts/results-presets.sh,
 * which writes quant/preset_results.h (KL against the original and bits per
 * weight over the file) and docs/results/presets.md; moec_quant_preset_result
 * gives those numbers to `moec-quant --list-presets`.
 *
 * Kinds: today every preset fills a recipe (MOEC_QPRESET_RECIPE). Another
 * kind (llama.cpp block types per tensor, issue 12) adds its enum value and
 * its payload to moec_quant_preset, and its entries to the table in
 * presets.c; callers switch on `kind`. */
#ifndef MOEC_QUANT_PRESETS_H
#define MOEC_QUANT_PRESETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quant/recipe.h"

/* The recipe fields an option or a preset can set; each is named by its
 * moec-quant option (moec_quant_field_option). */
typedef enum moec_quant_field {
    MOEC_QF_METHOD = 0,   /* --method */
    MOEC_QF_BITS,         /* --bits */
    MOEC_QF_GROUP,        /* --group */
    MOEC_QF_SYMMETRIC,    /* --sym */
    MOEC_QF_CLIP,         /* --clip (clip_grid) */
    MOEC_QF_ACT_ORDER,    /* --act-order */
    MOEC_QF_DAMP,         /* --damp (percdamp) */
    MOEC_QF_ATTN,         /* --attn */
    MOEC_QF_ATTN_BITS,    /* --attn-bits */
    MOEC_QF_EMBED_BITS,   /* --embed-bits */
    MOEC_QF_AVG_BITS,     /* --avg-bits */
    MOEC_QF_BIT_CHOICES,  /* --bit-choices (n_choices, choices) */
    MOEC_QF_ALLOC,        /* --alloc */
    MOEC_QF_MC_OBJECTIVE, /* --mc-objective (mc.objective) */
    MOEC_QF_DIVERSITY,    /* --diversity (mc.diversity) */
    MOEC_QF_SMOOTH,       /* --eaquant (smooth) */
    MOEC_QF_ALIGN,        /* --eaquant / --no-align (align) */
    MOEC_QF_SMOOTH_ALPHA, /* --smooth-alpha */
    MOEC_QF_BALANCE,      /* --no-balance (balance) */
    MOEC_QF_BALANCE_MIN,  /* --balance-min */
    MOEC_QF_ACT_BITS,     /* --act-bits */
    MOEC_QF_VERIFY,       /* --verify-tokens */
    MOEC_QF_COUNT
} moec_quant_field;

#define MOEC_QF(f) (1u << (f))

/* Where a resolved field's value came from. */
typedef enum moec_quant_source {
    MOEC_QSRC_DEFAULT = 0, /* MOEC_QUANT_RECIPE_DEFAULT */
    MOEC_QSRC_PRESET,      /* the preset */
    MOEC_QSRC_OPTION,      /* an explicit option */
    MOEC_QSRC_IMPLIED      /* derived from other fields (moec_quant_recipe_resolve says which) */
} moec_quant_source;

typedef enum moec_quant_preset_kind {
    MOEC_QPRESET_RECIPE = 0 /* sets `fields` of a recipe to the values in `recipe` */
} moec_quant_preset_kind;

typedef struct moec_quant_preset {
    const char *name;            /* --preset NAME */
    moec_quant_preset_kind kind;
    const char *summary;         /* one line: what it quantizes and how */
    uint32_t fields;             /* MOEC_QF() bits the preset sets */
    moec_quant_recipe recipe;    /* their values (other fields unused) */
    bool needs_text;             /* needs calibration text (GPTQ, MC-MoE's measured losses, EAQuant) */
    const char *reference;       /* the results-table row it reproduces, "file: row" */
} moec_quant_preset;

/* One preset measured on mixtral-tiny (scripts/results-presets.sh). */
typedef struct moec_quant_preset_result {
    const char *name;
    double kld;         /* mean KL(original || quantized), nats, as the reference row's table scores it */
    double top1;        /* top-1 agreement */
    double ppl_ratio;   /* perplexity ratio quantized / original */
    double bpw_file;    /* 8 x file bytes / parameters */
    double ref_kld;     /* the reference row's KL, read from its table */
    const char *scoring; /* how it was scored (the reference table's convention) */
} moec_quant_preset_result;

int moec_quant_preset_count(void);
const moec_quant_preset *moec_quant_preset_at(int i);
/* NULL when no preset has that name. */
const moec_quant_preset *moec_quant_preset_find(const char *name);
/* NULL when the preset has not been measured in this build's table. */
const moec_quant_preset_result *moec_quant_preset_result_find(const char *name);
/* How the measurements were produced (the command), for --list-presets. */
const char *moec_quant_preset_results_command(void);

/* The moec-quant option that sets field f, without "--": "bits". */
const char *moec_quant_field_option(moec_quant_field f);
const char *moec_quant_source_name(moec_quant_source s); /* "default", "preset", "option", "implied" */

/* Copies the fields in mask from src to dst. */
void moec_quant_recipe_copy_fields(moec_quant_recipe *dst, const moec_quant_recipe *src, uint32_t mask);

/* The recipe a command line asks for: MOEC_QUANT_RECIPE_DEFAULT, then the
 * preset's fields (p may be NULL; a RECIPE preset), then the fields of
 * `given` in given_mask. Then what the others imply, where neither the
 * preset nor an option set it:
 *   bits       with avg_bits > 0: the widest bit choice (the width of the
 *              shared expert and dense MLPs, and of attention unless
 *              attn_bits is set; the routed experts' widths are what the
 *              allocation decides);
 *   attn       true when attn_bits was given;
 *   align      true with smooth (EAQuant chooses its smoothing).
 * out gets the recipe (threads and other runtime fields from `given`);
 * src[MOEC_QF_COUNT] where each field came from. */
void moec_quant_recipe_resolve(const moec_quant_preset *p, const moec_quant_recipe *given, uint32_t given_mask,
                               moec_quant_recipe *out, moec_quant_source src[MOEC_QF_COUNT]);

/* Field f of r as text ("gptq", "4", "1,2,3,4", "on"); returns buf. */
const char *moec_quant_field_value(const moec_quant_recipe *r, moec_quant_field f, char *buf, size_t len);

#endif
