#include "cli_parse.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Generated at build time by cmake/moec_version.cmake. */
extern const char moec_cli_version[];
extern const char moec_cli_commit[];

const char *cli_version(void) { return moec_cli_version; }
const char *cli_commit(void) { return moec_cli_commit; }

void cli_print_version(FILE *f)
{
    fprintf(f, "%s (moec) %s, git %s\n", cli_prog, moec_cli_version, moec_cli_commit);
}

/* ---- help ------------------------------------------------------------------ */

enum { HELP_WIDTH = 100, HELP_COL = 26 };

/* Writes text wrapped to HELP_WIDTH, the first line starting at column
 * `at` (already written), every further line indented to column `indent`.
 * In text, "\n" starts a new line, a run of two or more spaces is kept as
 * padding, and "\t" (printing nothing) makes the current column the indent
 * of that line's continuations, for hanging lists like "stun    \tSTUN: ...". */
void cli_wrap(FILE *f, const char *text, int at, int indent)
{
    int col = at, hang = indent, pending = 0;
    bool line_start = true;
    for (const char *p = text; *p;) {
        if (*p == '\n') {
            fprintf(f, "\n%*s", indent, "");
            col = hang = indent;
            line_start = true;
            pending = 0;
            p++;
        } else if (*p == '\t') {
            fprintf(f, "%*s", pending, "");
            col += pending;
            pending = 0;
            hang = col;
            p++;
        } else if (*p == ' ') {
            int r = (int)strspn(p, " ");
            p += r;
            if (r >= 2 || line_start) { /* padding, kept as written */
                fprintf(f, "%*s", pending + r, "");
                col += pending + r;
                pending = 0;
            } else {
                pending = 1;
            }
        } else {
            int n = (int)strcspn(p, " \n\t");
            if (!line_start && col + pending + n > HELP_WIDTH) {
                fprintf(f, "\n%*s", hang, "");
                col = hang;
            } else {
                fprintf(f, "%*s", pending, "");
                col += pending;
            }
            pending = 0;
            fwrite(p, 1, (size_t)n, f);
            col += n;
            p += n;
            line_start = false;
        }
    }
    fputc('\n', f);
}

/* "  -o, --output FILE" or "      --threads N" */
static int opt_label(char *buf, size_t len, const cli_opt *o)
{
    const char *arg = o->arg ? o->arg : "";
    const char *sep = o->arg ? " " : "";
    if (o->name && o->short_name)
        return snprintf(buf, len, "  -%c, --%s%s%s", o->short_name, o->name, sep, arg);
    if (o->name)
        return snprintf(buf, len, "      --%s%s%s", o->name, sep, arg);
    return snprintf(buf, len, "  -%c%s%s", o->short_name, sep, arg);
}

static void help_line(FILE *f, const char *label, int n, const char *help)
{
    fputs(label, f);
    if (n + 2 > HELP_COL) {
        fputc('\n', f);
        fprintf(f, "%*s", HELP_COL, "");
    } else {
        fprintf(f, "%*s", HELP_COL - n, "");
    }
    cli_wrap(f, help, HELP_COL, HELP_COL);
}

void cli_print_help(const cli_tool *t, FILE *f)
{
    const char *u = t->usage;
    bool first = true;
    while (u) {
        const char *nl = strchr(u, '\n');
        int n = nl ? (int)(nl - u) : (int)strlen(u);
        fprintf(f, "%s %s %.*s\n", first ? "usage:" : "      ", cli_prog, n, u);
        first = false;
        u = nl ? nl + 1 : NULL;
    }
    fprintf(f, "       %s --help | --version\n\n", cli_prog);
    cli_wrap(f, t->summary, 0, 0);
    fputc('\n', f);
    char label[128];
    if (t->operand) {
        int n = snprintf(label, sizeof label, "  %s", t->operand);
        help_line(f, label, n, t->operand_help);
    }
    bool common = false, lists = false;
    for (const cli_opt *o = t->opts; o->kind != CLI_END; o++) {
        if (o->kind == CLI_SECTION) {
            fprintf(f, "\n%s:\n", o->help);
            continue;
        }
        if (o->common && !common) {
            fputs("\nCommon options:\n", f);
            common = true;
        }
        lists |= o->kind == CLI_LIST;
        int n = opt_label(label, sizeof label, o);
        help_line(f, label, n, o->help);
    }
    if (!common)
        fputs("\nCommon options:\n", f);
    int n = snprintf(label, sizeof label, "  -h, --help");
    help_line(f, label, n, "show this help and exit");
    n = snprintf(label, sizeof label, "      --version");
    help_line(f, label, n, "print the version (project version and git commit) and exit");
    if (lists) {
        fputc('\n', f);
        cli_wrap(f, "A list (FILE..., NAME...) takes every argument up to the next option, and a repeated list "
                    "option adds to it: --text a b and --text a --text b are the same. Give MODEL before a "
                    "list, or after another option.", 0, 0);
    }
    if (t->epilog) {
        fputc('\n', f);
        cli_wrap(f, t->epilog, 0, 0);
    }
    fprintf(f, "\nexit status: 0 ok, 1 failure, 2 usage error%s\n", t->gate_exit ? ", 3 a quality gate tripped" : "");
}

/* ---- parsing ------------------------------------------------------------- */

static cli_opt *find_long(cli_tool *t, const char *name, size_t len)
{
    for (cli_opt *o = t->opts; o->kind != CLI_END; o++)
        if (o->kind != CLI_SECTION && o->name && strlen(o->name) == len && !strncmp(o->name, name, len))
            return o;
    return NULL;
}

static cli_opt *find_short(cli_tool *t, char c)
{
    for (cli_opt *o = t->opts; o->kind != CLI_END; o++)
        if (o->kind != CLI_SECTION && o->short_name == c)
            return o;
    return NULL;
}

/* How an option is named in messages: "--bits" or "-n". */
static const char *spelled(const cli_opt *o, char *buf, size_t len)
{
    if (o->name)
        snprintf(buf, len, "--%s", o->name);
    else
        snprintf(buf, len, "-%c", o->short_name);
    return buf;
}

static bool is_option(const char *a)
{
    return a[0] == '-' && a[1] != '\0';
}

static void list_add(cli_list *l, const char *v, int cap)
{
    if (!l->v && !(l->v = calloc((size_t)cap, sizeof *l->v)))
        cli_die("out of memory");
    l->v[l->n++] = v;
}

static void set_value(const cli_opt *o, const char *v)
{
    char nm[64];
    spelled(o, nm, sizeof nm);
    switch (o->kind) {
    case CLI_STRING: *(const char **)o->dest = v; break;
    case CLI_INT: *(int *)o->dest = (int)cli_parse_long(nm, v, (long)o->lo, (long)o->hi); break;
    case CLI_INT64: *(int64_t *)o->dest = (int64_t)cli_parse_long(nm, v, (long)o->lo, (long)o->hi); break;
    case CLI_DOUBLE: *(double *)o->dest = cli_parse_double(nm, v, o->lo, o->hi); break;
    case CLI_CHOICE: {
        char all[256] = "";
        for (int i = 0; o->choices[i]; i++) {
            if (!strcmp(v, o->choices[i])) {
                *(int *)o->dest = i;
                return;
            }
            size_t k = strlen(all);
            snprintf(all + k, sizeof all - k, "%s%s", i ? (o->choices[i + 1] ? ", " : " or ") : "", o->choices[i]);
        }
        cli_usage_error("%s: unknown value '%s' (%s)", nm, v, all);
    }
    case CLI_CUSTOM: {
        char why[256] = "bad value";
        if (!o->parse(v, o->dest, why, sizeof why))
            cli_usage_error("%s: %s", nm, why);
        break;
    }
    default: break;
    }
}

void cli_parse(cli_tool *t, int argc, char **argv)
{
    cli_init(argc, argv);
    cli_opt *list = NULL; /* the list option further arguments join */
    bool operands_only = false;
    const char *operand = NULL;
    char nm[64];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (operands_only || !is_option(a)) {
            if (list && !operands_only) {
                list_add(list->dest, a, argc);
            } else if (t->operand && !operand) {
                operand = a;
            } else if (t->operand) {
                cli_usage_error("unexpected argument '%s' (%s is '%s')", a, t->operand, operand);
            } else {
                cli_usage_error("unexpected argument '%s'", a);
            }
            continue;
        }
        list = NULL;
        if (!strcmp(a, "--")) {
            operands_only = true;
            continue;
        }
        cli_opt *o;
        const char *inline_val = NULL;
        if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            if ((len == 4 && !strncmp(name, "help", 4)) || (len == 7 && !strncmp(name, "version", 7))) {
                if (eq)
                    cli_usage_error("--%.*s takes no value", (int)len, name);
                if (len == 4)
                    cli_print_help(t, stdout);
                else
                    cli_print_version(stdout);
                exit(fflush(stdout) ? CLI_EXIT_FAIL : CLI_EXIT_OK);
            }
            if (!(o = find_long(t, name, len)))
                cli_usage_error("unknown option '--%.*s'", (int)len, name);
            inline_val = eq ? eq + 1 : NULL;
        } else {
            if (a[1] == 'h' && !find_short(t, 'h')) {
                cli_print_help(t, stdout);
                exit(fflush(stdout) ? CLI_EXIT_FAIL : CLI_EXIT_OK);
            }
            if (!(o = find_short(t, a[1])))
                cli_usage_error("unknown option '-%c'", a[1]);
            if (a[2])
                inline_val = a + 2;
        }
        spelled(o, nm, sizeof nm);
        o->given++;
        if (o->kind == CLI_FLAG || o->kind == CLI_UNSET) {
            if (inline_val && a[1] != '-') { /* -ds: a cluster of short flags */
                for (const char *c = inline_val; *c; c++) {
                    cli_opt *f = find_short(t, *c);
                    if (!f || (f->kind != CLI_FLAG && f->kind != CLI_UNSET))
                        cli_usage_error("unknown option '-%c' in '%s'", *c, a);
                    f->given++;
                    *(bool *)f->dest = f->kind == CLI_FLAG;
                }
            } else if (inline_val) {
                cli_usage_error("%s takes no value", nm);
            }
            *(bool *)o->dest = o->kind == CLI_FLAG;
            continue;
        }
        const char *v = inline_val;
        if (!v) {
            if (i + 1 >= argc || (o->kind == CLI_LIST && is_option(argv[i + 1])))
                cli_usage_error("%s needs %s", nm, o->kind == CLI_LIST ? "at least one value" : "a value");
            v = argv[++i];
        }
        if (o->kind == CLI_LIST) {
            list_add(o->dest, v, argc);
            list = o;
        } else {
            set_value(o, v);
        }
    }
    if (t->operand && !operand && !t->operand_optional) {
        for (cli_opt *o = t->opts; o->kind != CLI_END; o++)
            if (o->kind == CLI_LIST && o->given)
                cli_usage_error("missing %s (a list such as --%s %s takes every argument up to the next option: "
                                "give %s before it)",
                                t->operand, o->name, o->arg, t->operand);
        cli_usage_error("missing %s", t->operand);
    }
    if (t->operand_dest)
        *t->operand_dest = operand;
    /* progress is for a person at a terminal: not with --quiet, not beside --json */
    for (const cli_opt *o = t->opts; o->kind != CLI_END; o++)
        if (o->kind != CLI_SECTION && o->name && !strcmp(o->name, "json") && o->given)
            cli_progress_allowed = false;
    if (cli_quiet)
        cli_progress_allowed = false;
}

void cli_tool_free(cli_tool *t)
{
    for (cli_opt *o = t->opts; o->kind != CLI_END; o++)
        if (o->kind == CLI_LIST) {
            cli_list *l = o->dest;
            free(l->v);
            l->v = NULL;
            l->n = 0;
        }
}

int cli_given(const cli_tool *t, const char *name)
{
    for (const cli_opt *o = t->opts; o->kind != CLI_END; o++) {
        if (o->kind == CLI_SECTION)
            continue;
        if ((o->name && !strcmp(o->name, name)) || (!name[1] && o->short_name == name[0]))
            return o->given;
    }
    fprintf(stderr, "%s: internal error: no option '%s'\n", cli_prog, name);
    abort();
}
