/* The tools' shared command line (tools/cli_parse.c, tools/progress.c):
 * lists and repeats read the same, values attach either way, --help is
 * rendered from the table, and the progress line's text. Error exits are
 * checked through the real binaries in tests/cli_errors.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *model, *out;
    cli_list text, stats;
    int bits, method;
    double ratio;
    bool force, json;
} parsed;

static const char *const methods[] = {"rtn", "gptq", NULL};

static cli_tool tool_for(parsed *p, cli_opt *opts, size_t n_opts)
{
    const cli_opt table[] = {
        CLI_OPT_TEXT(&p->text, "text"),
        {"stats", 0, CLI_LIST, "STATS...", &p->stats, .help = "stats"},
        {"bits", 0, CLI_INT, "B", &p->bits, 1, 8, .help = "bits"},
        {"method", 0, CLI_CHOICE, "M", &p->method, .choices = methods, .help = "method"},
        {"ratio", 0, CLI_DOUBLE, "R", &p->ratio, 0.0, 1.0, .help = "ratio"},
        CLI_OPT_OUTPUT(&p->out, "OUT", "output"),
        CLI_OPT_FORCE(&p->force),
        CLI_OPT_JSON(&p->json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    assert_true(n_opts >= sizeof table / sizeof table[0]);
    memcpy(opts, table, sizeof table);
    return (cli_tool){.usage = "MODEL [options]", .summary = "a test tool", .operand = "MODEL",
                      .operand_help = "the model", .operand_dest = &p->model, .opts = opts};
}

/* Parses a NULL-terminated list of arguments into *p. */
static void parse(parsed *p, cli_opt *opts, cli_tool *t, ...)
{
    char *argv[64] = {"moec-test"};
    int argc = 1;
    va_list ap;
    va_start(ap, t);
    for (char *a; (a = va_arg(ap, char *));)
        argv[argc++] = a;
    va_end(ap);
    memset(p, 0, sizeof *p);
    *t = tool_for(p, opts, 16);
    cli_progress_allowed = true;
    cli_quiet = false;
    cli_parse(t, argc, argv);
}

static void assert_list(const cli_list *l, int n, ...)
{
    assert_int_equal(l->n, n);
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        assert_string_equal(l->v[i], va_arg(ap, const char *));
    va_end(ap);
}

static void test_list_and_repeat_forms_agree(void **state)
{
    (void)state;
    parsed p;
    cli_opt opts[16];
    cli_tool t;
    parse(&p, opts, &t, "M", "--text", "a", "b", "c", "-o", "x", NULL);
    assert_string_equal(p.model, "M");
    assert_list(&p.text, 3, "a", "b", "c");
    assert_int_equal(cli_given(&t, "text"), 1);
    cli_tool_free(&t);
    parse(&p, opts, &t, "M", "--text", "a", "--text", "b", "--text=c", "-o", "x", NULL);
    assert_list(&p.text, 3, "a", "b", "c");
    assert_int_equal(cli_given(&t, "text"), 3);
    cli_tool_free(&t);
    /* mixed, with the operand after an option that ends the list */
    parse(&p, opts, &t, "--text", "a", "b", "--bits", "3", "M", "--text", "c", NULL);
    assert_string_equal(p.model, "M");
    assert_list(&p.text, 3, "a", "b", "c");
    assert_int_equal(p.bits, 3);
    cli_tool_free(&t);
    /* two lists, each to the next option */
    parse(&p, opts, &t, "M", "--stats", "s1", "s2", "--text", "t1", "--json", NULL);
    assert_list(&p.stats, 2, "s1", "s2");
    assert_list(&p.text, 1, "t1");
    assert_true(p.json);
    cli_tool_free(&t);
}

static void test_values_attach_either_way(void **state)
{
    (void)state;
    parsed p;
    cli_opt opts[16];
    cli_tool t;
    parse(&p, opts, &t, "M", "--bits=5", "-oout.moec", "--method", "gptq", "--ratio", "0.25", "--force", NULL);
    assert_int_equal(p.bits, 5);
    assert_string_equal(p.out, "out.moec");
    assert_int_equal(p.method, 1);
    assert_true(p.ratio == 0.25);
    assert_true(p.force);
    assert_int_equal(cli_given(&t, "o"), 1);
    assert_int_equal(cli_given(&t, "output"), 1);
    assert_int_equal(cli_given(&t, "stats"), 0);
    cli_tool_free(&t);
    /* the last value wins; "--" ends options; a value may start with '-' */
    parse(&p, opts, &t, "--bits", "2", "--bits", "7", "-o", "-", "--", "--weird-model", NULL);
    assert_int_equal(p.bits, 7);
    assert_string_equal(p.out, "-");
    assert_string_equal(p.model, "--weird-model");
    cli_tool_free(&t);
}

static void test_progress_off_with_json_or_quiet(void **state)
{
    (void)state;
    parsed p;
    cli_opt opts[16];
    cli_tool t;
    parse(&p, opts, &t, "M", NULL);
    assert_true(cli_progress_allowed);
    cli_tool_free(&t);
    parse(&p, opts, &t, "M", "--json", NULL);
    assert_false(cli_progress_allowed);
    cli_tool_free(&t);
    parse(&p, opts, &t, "M", "--quiet", NULL);
    assert_false(cli_progress_allowed);
    assert_true(cli_quiet);
    cli_tool_free(&t);
    cli_quiet = false;
}

static char *help_text(cli_tool *t)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    cli_print_help(t, f);
    fclose(f);
    return buf;
}

static void test_help_from_table(void **state)
{
    (void)state;
    parsed p;
    cli_opt opts[16];
    cli_tool t;
    parse(&p, opts, &t, "M", NULL);
    char *h = help_text(&t);
    /* every option of the table, the common block, help and version, the list note */
    static const char *const want[] = {"usage: moec-test MODEL [options]\n", "      --text FILE...",
                                       "  -o, --output OUT", "\nCommon options:\n", "      --json ",
                                       "  -h, --help", "      --version", "--text a b and --text a --text b",
                                       "exit status: 0 ok, 1 failure, 2 usage error\n"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(h, want[i]))
            fail_msg("--help lacks \"%s\":\n%s", want[i], h);
    /* the common block comes after the tool's own options */
    assert_true(strstr(h, "--ratio R") < strstr(h, "Common options"));
    free(h);
    cli_tool_free(&t);
}

static void test_help_wraps(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cli_wrap(f, "one two\nab    \tthree four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen", 0, 2);
    fclose(f);
    /* "\n" breaks, padding is kept, "\t" sets the continuation indent */
    assert_string_equal(buf, "one two\n  ab    three four five six seven eight nine ten eleven twelve thirteen "
                             "fourteen fifteen sixteen\n        seventeen eighteen\n");
    free(buf);
}

static void test_progress_line(void **state)
{
    (void)state;
    char line[256];
    cli_progress_format(line, sizeof line, "calibrating", NULL, 2048, 8192, "tokens", -1.0);
    assert_string_equal(line, "calibrating: 2048/8192 tokens · 25%");
    cli_progress_format(line, sizeof line, "calibrating", NULL, 2048, 8192, "tokens", 1024.0);
    assert_string_equal(line, "calibrating: 2048/8192 tokens · 25% · 1024 tokens/s · ETA 6s");
    cli_progress_format(line, sizeof line, "quantizing", "layer 3/32, expert pass", 2, 32, "layers", 0.01);
    assert_string_equal(line, "quantizing: layer 3/32, expert pass · 6% · 0.01 layers/s · ETA 50m00s");
    cli_progress_format(line, sizeof line, "writing", "out.moec", 0, 0, NULL, -1.0);
    assert_string_equal(line, "writing: out.moec");
    cli_progress_format(line, sizeof line, "merging", NULL, 96, 96, "matrices", 12.5);
    assert_string_equal(line, "merging: 96/96 matrices · 100% · 12.5 matrices/s");
    /* cut, never overrun */
    assert_int_equal(cli_progress_format(line, 8, "calibrating", NULL, 1, 2, "tokens", -1.0), 7);
    assert_string_equal(line, "calibra");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_and_repeat_forms_agree),
        cmocka_unit_test(test_values_attach_either_way),
        cmocka_unit_test(test_progress_off_with_json_or_quiet),
        cmocka_unit_test(test_help_from_table),
        cmocka_unit_test(test_help_wraps),
        cmocka_unit_test(test_progress_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
