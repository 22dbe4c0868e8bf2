/* cli.h - what every moec tool shares: one-line errors, exit codes, number
 * parsing and progress on stderr. Tools are thin mains over libmoec. */
#ifndef MOEC_TOOLS_CLI_H
#define MOEC_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

enum { CLI_EXIT_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2, CLI_EXIT_GATE = 3 };

/* Prints "PROG: message" on stderr and exits 1. */
void cli_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Prints the library error as one line and exits 1. */
void cli_die_err(const moec_err *err) __attribute__((noreturn));
/* Prints "PROG: message" and "Try 'PROG --help'." on stderr and exits 2. */
void cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Set once from argv[0] by cli_init(). */
extern const char *cli_prog;
void cli_init(int argc, char **argv);

/* Strict number parsing for option values: the whole string must be a number
 * in [lo, hi], else a usage error naming the option. */
long cli_parse_long(const char *opt, const char *s, long lo, long hi);
double cli_parse_double(const char *opt, const char *s, double lo, double hi);

/* Progress on stderr, only when stderr is a terminal and not --quiet. */
extern bool cli_quiet;
void cli_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_progress_done(void);
/* Monotonic seconds, for timing a step. */
double cli_seconds(void);
/* A moec_calib_run progress callback: "calibrating: done/total tokens",
 * with the rate when ctx points at the start time (a double from
 * cli_seconds()), ctx may be NULL. */
void cli_calib_progress(void *ctx, int64_t done, int64_t total);


/* Opens a model (HF directory or .moec file) or dies with its error. */
struct moec_model;
struct moec_tokenizer;
struct moec_model *cli_open_model(const char *path);
/* Dies (exit 1) when writing `out` would replace or damage the model being
 * read (the same path, a symlink or hard link to it, inside it, or holding
 * it): called right after opening, before any long work. */
void cli_check_output(const struct moec_model *m, const char *out);
/* The tokenizer a model carries (tokenizer.json), or dies naming the model. */
struct moec_tokenizer *cli_model_tokenizer(const struct moec_model *m);
/* Prints a cJSON object to stdout and frees nothing. */
struct cJSON;
void cli_print_json(const struct cJSON *o);

#endif
