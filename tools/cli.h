/* cli.h - what every moec tool shares: one-line errors, exit codes, number
 * parsing, the option parser (cli_parse.h) and the progress line
 * (progress.h). Tools are thin mains over libmoec.
 *
 * Output conventions, the same in every tool:
 *   stdout  the result: a text summary or table, or with --json one JSON object;
 *   stderr  errors (one line each) and, on a terminal, one progress line;
 *   --quiet leaves only errors and the result asked for (no progress, no
 *           summary of a written file). */
#ifndef MOEC_TOOLS_CLI_H
#define MOEC_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "cli_parse.h"
#include "core/error.h"
#include "progress.h"

enum { CLI_EXIT_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2, CLI_EXIT_GATE = 3 };

/* Prints "PROG: message" on stderr and exits 1. */
void cli_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Prints the library error as one line and exits 1. */
void cli_die_err(const moec_err *err) __attribute__((noreturn));
/* Prints "PROG: message" and "Try 'PROG --help'." on stderr and exits 2. */
void cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Set once from argv[0] by cli_init() (cli_parse calls it). */
extern const char *cli_prog;
void cli_init(int argc, char **argv);

/* Set by --quiet: no progress and no summary. */
extern bool cli_quiet;

/* Strict number parsing for option values: the whole string must be a number
 * in [lo, hi], else a usage error naming the option. */
long cli_parse_long(const char *opt, const char *s, long lo, long hi);
double cli_parse_double(const char *opt, const char *s, double lo, double hi);

/* Monotonic seconds, for timing a step. */
double cli_seconds(void);

/* Fails now, before any work, when `path` cannot become the output: it
 * exists and force is not set, or its directory cannot be written. */
void cli_check_output(const char *path, bool force);

/* Opens a model (HF directory or .moec file) or dies with its error. */
struct moec_model;
struct moec_tokenizer;
struct moec_model *cli_open_model(const char *path);
/* Dies (exit 1) when writing `out` would replace or damage the model being
 * read (the same path, a symlink or hard link to it, inside it, or holding
 * it): called right after opening, before any long work. */
void cli_check_not_input(const struct moec_model *m, const char *out);
/* The tokenizer a model carries (tokenizer.json), or dies naming the model. */
struct moec_tokenizer *cli_model_tokenizer(const struct moec_model *m);
/* Prints a cJSON object to stdout and frees nothing. */
struct cJSON;
void cli_print_json(const struct cJSON *o);
/* Adds "moec_version": "VERSION, git COMMIT" to a JSON report. */
void cli_json_add_version(struct cJSON *o);

#endif
