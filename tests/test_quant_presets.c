/* quant/presets.c: the preset table is well formed, and a recipe is the
 * defaults, overridden by a preset, overridden by explicit options, with
 * implied values filled and every field's source recorded. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "quant/presets.h"

static void test_table(void **state)
{
    (void)state;
    assert_true(moec_quant_preset_count() >= 3);
    moec_err err = {0};
    for (int i = 0; i < moec_quant_preset_count(); i++) {
        const moec_quant_preset *p = moec_quant_preset_at(i);
        assert_non_null(p->name);
        assert_non_null(p->summary);
        assert_non_null(strstr(p->reference, "docs/results/"));
        assert_ptr_equal(moec_quant_preset_find(p->name), p);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(moec_quant_preset_at(j)->name, p->name);
        /* every preset resolves to a valid recipe, given text when it says it needs it */
        moec_quant_recipe given = MOEC_QUANT_RECIPE_DEFAULT, r;
        moec_quant_source src[MOEC_QF_COUNT];
        moec_quant_recipe_resolve(p, &given, 0, &r, src);
        assert_int_equal(moec_quant_recipe_check(&r, p->needs_text, &err), MOEC_OK);
        if (!p->needs_text)
            assert_int_equal(moec_quant_recipe_check(&r, false, &err), MOEC_OK);
        else
            assert_true(r.method == MOEC_QMETHOD_GPTQ || r.smooth || r.avg_bits > 0);
    }
    /* llama.cpp's names are issue 12's (GGUF block-type presets), not ours */
    assert_null(moec_quant_preset_find("Q4_K_M"));
    assert_null(moec_quant_preset_find(NULL));
    assert_null(moec_quant_preset_at(-1));
    assert_null(moec_quant_preset_at(moec_quant_preset_count()));
}

static void test_precedence(void **state)
{
    (void)state;
    const moec_quant_preset *p = moec_quant_preset_find("4bit");
    assert_non_null(p);
    moec_quant_recipe given = MOEC_QUANT_RECIPE_DEFAULT, r;
    moec_quant_source src[MOEC_QF_COUNT];
    given.group = 128;
    given.threads = 3;
    given.bits = 7; /* not in the mask: ignored */
    moec_quant_recipe_resolve(p, &given, MOEC_QF(MOEC_QF_GROUP), &r, src);
    assert_int_equal(r.group, 128);
    assert_int_equal(src[MOEC_QF_GROUP], MOEC_QSRC_OPTION);
    assert_int_equal(r.bits, 4);
    assert_int_equal(src[MOEC_QF_BITS], MOEC_QSRC_PRESET);
    assert_int_equal(r.method, MOEC_QMETHOD_GPTQ);
    assert_true(r.attn);
    assert_int_equal(r.embed_bits, 8);
    assert_int_equal(src[MOEC_QF_SYMMETRIC], MOEC_QSRC_DEFAULT);
    assert_int_equal(r.threads, 3); /* runtime fields come from the caller */
    /* no preset: the defaults and the options only */
    moec_quant_recipe_resolve(NULL, &given, MOEC_QF(MOEC_QF_BITS), &r, src);
    assert_int_equal(r.bits, 7);
    assert_int_equal(r.group, MOEC_QUANT_RECIPE_DEFAULT.group);
    assert_int_equal(src[MOEC_QF_GROUP], MOEC_QSRC_DEFAULT);
    assert_int_equal(src[MOEC_QF_METHOD], MOEC_QSRC_DEFAULT);
}

static void test_implied(void **state)
{
    (void)state;
    moec_quant_recipe given = MOEC_QUANT_RECIPE_DEFAULT, r;
    moec_quant_source src[MOEC_QF_COUNT];
    /* --avg-bits without --bits: the widest choice */
    given.avg_bits = 2.0;
    given.n_choices = 3;
    given.choices[0] = 1, given.choices[1] = 2, given.choices[2] = 3;
    moec_quant_recipe_resolve(NULL, &given, MOEC_QF(MOEC_QF_AVG_BITS) | MOEC_QF(MOEC_QF_BIT_CHOICES), &r, src);
    assert_int_equal(r.bits, 3);
    assert_int_equal(src[MOEC_QF_BITS], MOEC_QSRC_IMPLIED);
    /* an explicit --bits stays */
    given.bits = 6;
    moec_quant_recipe_resolve(NULL, &given,
                              MOEC_QF(MOEC_QF_AVG_BITS) | MOEC_QF(MOEC_QF_BIT_CHOICES) | MOEC_QF(MOEC_QF_BITS), &r,
                              src);
    assert_int_equal(r.bits, 6);
    assert_int_equal(src[MOEC_QF_BITS], MOEC_QSRC_OPTION);
    /* --attn-bits implies --attn; --eaquant implies its search */
    given = (moec_quant_recipe)MOEC_QUANT_RECIPE_DEFAULT;
    given.attn_bits = 8;
    given.smooth = true;
    moec_quant_recipe_resolve(NULL, &given, MOEC_QF(MOEC_QF_ATTN_BITS) | MOEC_QF(MOEC_QF_SMOOTH), &r, src);
    assert_true(r.attn);
    assert_int_equal(src[MOEC_QF_ATTN], MOEC_QSRC_IMPLIED);
    assert_true(r.align);
    assert_int_equal(src[MOEC_QF_ALIGN], MOEC_QSRC_IMPLIED);
    /* --no-attn over a preset that quantizes attention */
    given = (moec_quant_recipe)MOEC_QUANT_RECIPE_DEFAULT;
    given.attn = false;
    moec_quant_recipe_resolve(moec_quant_preset_find("3bit"), &given, MOEC_QF(MOEC_QF_ATTN), &r, src);
    assert_false(r.attn);
    assert_int_equal(src[MOEC_QF_ATTN], MOEC_QSRC_OPTION);
    assert_int_equal(r.bits, 3);
}

static void test_names_and_values(void **state)
{
    (void)state;
    char v[64];
    for (int f = 0; f < MOEC_QF_COUNT; f++) {
        assert_string_not_equal(moec_quant_field_option((moec_quant_field)f), "?");
        for (int g = 0; g < f; g++)
            assert_string_not_equal(moec_quant_field_option((moec_quant_field)g),
                                    moec_quant_field_option((moec_quant_field)f));
    }
    const moec_quant_recipe *r = &moec_quant_preset_find("mix2.5")->recipe;
    assert_string_equal(moec_quant_field_value(r, MOEC_QF_BIT_CHOICES, v, sizeof v), "1,2,3,4");
    assert_string_equal(moec_quant_field_value(r, MOEC_QF_AVG_BITS, v, sizeof v), "2.5");
    assert_string_equal(moec_quant_field_value(r, MOEC_QF_ALLOC, v, sizeof v), "mcmoe");
    assert_string_equal(moec_quant_field_value(r, MOEC_QF_METHOD, v, sizeof v), "gptq");
    assert_string_equal(moec_quant_source_name(MOEC_QSRC_IMPLIED), "implied");
    /* copy_fields copies exactly the masked fields */
    moec_quant_recipe a = MOEC_QUANT_RECIPE_DEFAULT;
    moec_quant_recipe_copy_fields(&a, r, MOEC_QF(MOEC_QF_BIT_CHOICES) | MOEC_QF(MOEC_QF_GROUP));
    assert_int_equal(a.group, 64);
    assert_int_equal(a.n_choices, 4);
    assert_int_equal(a.method, MOEC_QMETHOD_RTN);
    assert_true(a.avg_bits == 0.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_implied),
        cmocka_unit_test(test_names_and_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
