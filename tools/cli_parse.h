/* cli_parse.h - the one option parser every moec tool uses: a declarative
 * table of options, parsed the same way in every tool, and the --help text
 * rendered from that same table (so help shows exactly what is accepted,
 * and docs/cli.md, generated from --help, cannot drift).
 *
 * Spelling, the same in every tool:
 *   --name VALUE, --name=VALUE   an option with a value (the last one given wins)
 *   -o VALUE, -oVALUE            a short option
 *   --text A B C                 a list runs to the next option; repeats add to it,
 *   --text A --text B              so both forms give the same list
 *   --                           everything after it is an operand
 * An argument that is not an option and follows no list is the tool's
 * operand (MODEL). Long names are never abbreviated, so options added later
 * cannot change what an existing command line means. --help (-h) and
 * --version are added to every tool by the parser.
 *
 * Errors are usage errors (exit 2): unknown option, missing or malformed
 * value, a number out of range, an unknown choice, a missing or extra operand. */
#ifndef MOEC_TOOLS_CLI_PARSE_H
#define MOEC_TOOLS_CLI_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum cli_kind {
    CLI_END = 0,  /* terminates a table */
    CLI_FLAG,     /* bool *: set to true */
    CLI_UNSET,    /* bool *: set to false (--no-balance) */
    CLI_STRING,   /* const char **: the value */
    CLI_LIST,     /* cli_list *: values to the next option; repeats append */
    CLI_INT,      /* int *, value in [lo, hi] */
    CLI_INT64,    /* int64_t *, value in [lo, hi] */
    CLI_DOUBLE,   /* double *, finite value in [lo, hi] */
    CLI_CHOICE,   /* int *: index of the value in choices (NULL-terminated) */
    CLI_CUSTOM,   /* parse(value, dest, why): false = usage error "--name: why" */
    CLI_SECTION   /* not an option: a heading in --help (help = the heading) */
} cli_kind;

typedef struct cli_list {
    const char **v; /* values, pointing into argv */
    int n;
} cli_list;

typedef struct cli_opt {
    const char *name;  /* long name without "--"; NULL for a short-only option */
    char short_name;   /* 'o' for -o, or 0 */
    cli_kind kind;
    const char *arg;   /* the value's name in help ("FILE", "N"); NULL for flags */
    void *dest;
    double lo, hi;     /* CLI_INT, CLI_INT64, CLI_DOUBLE */
    const char *const *choices; /* CLI_CHOICE */
    bool (*parse)(const char *value, void *dest, char *why, size_t why_len); /* CLI_CUSTOM */
    const char *help;  /* one paragraph, wrapped by the renderer; "\n" starts a new line */
    bool common;       /* one of the common options: listed under "Common options" in --help */
    int given;         /* set by cli_parse: times the option appeared */
} cli_opt;

typedef struct cli_tool {
    const char *usage;   /* synopsis after the tool name; "\n" separates alternatives */
    const char *summary; /* what the tool does, one paragraph ("\n" breaks lines) */
    const char *operand; /* "MODEL", or NULL when the tool takes no operand */
    const char *operand_help;
    bool operand_optional;
    const char **operand_dest;
    cli_opt *opts;       /* terminated by a CLI_END entry */
    const char *epilog;  /* notes printed after the options, or NULL */
    bool gate_exit;      /* the tool exits 3 when a quality gate trips */
} cli_tool;

/* Common options: same spelling, meaning and help in every tool that has them. */
#define CLI_OPT_THREADS(dest) \
    {"threads", 0, CLI_INT, "N", (dest), 1, 256, .help = "worker threads (default 2)", .common = true}
#define CLI_OPT_JSON(dest) \
    {"json", 0, CLI_FLAG, NULL, (dest), .help = "print the result as one JSON object on stdout instead of text", \
     .common = true}
#define CLI_OPT_QUIET \
    {"quiet", 0, CLI_FLAG, NULL, &cli_quiet, \
     .help = "print nothing but errors and the result asked for: no progress, no summary", .common = true}
#define CLI_OPT_FORCE(dest) {"force", 0, CLI_FLAG, NULL, (dest), .help = "replace the output if it exists"}
#define CLI_OPT_OUTPUT(dest, ARG, HELP) {"output", 'o', CLI_STRING, (ARG), (dest), .help = (HELP)}
#define CLI_OPT_TEXT(dest, HELP) {"text", 0, CLI_LIST, "FILE...", (dest), .help = (HELP)}
#define CLI_SECTION(title) {NULL, 0, CLI_SECTION, .help = (title)}
#define CLI_OPT_END {.kind = CLI_END}

/* Parses argv by t. Prints help or the version and exits 0 on --help or
 * --version; prints a usage error and exits 2 on bad input. Sets each
 * option's `given`. Lists are allocated: free them with cli_tool_free. */
void cli_parse(cli_tool *t, int argc, char **argv);
void cli_tool_free(cli_tool *t);

/* Times the option named `name` (long name, or the short letter as a
 * one-character string) was given; aborts on a name not in the table, a
 * programming error the tests catch. */
int cli_given(const cli_tool *t, const char *name);

/* Writes text wrapped to 100 columns as --help does: the first line
 * starting at column `at` (already written), further lines indented to
 * `indent`; "\n" breaks a line, two or more spaces are kept, "\t" sets the
 * indent of the line's continuations to the current column. */
void cli_wrap(FILE *f, const char *text, int at, int indent);

/* The --help text of t. */
void cli_print_help(const cli_tool *t, FILE *f);

/* Prints "PROG (moec) VERSION, git COMMIT" on stdout. */
void cli_print_version(FILE *f);

/* Project version and git commit captured at build time ("unknown" when
 * the source had no git history). */
const char *cli_version(void);
const char *cli_commit(void);

#endif
