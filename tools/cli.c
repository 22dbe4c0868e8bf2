#include "cli.h"

#include <cjson/cJSON.h>

#include "core/fsutil.h"
#include "model/check.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *cli_prog = "moec";
bool cli_quiet = false;

void cli_init(int argc, char **argv)
{
    (void)argc;
    if (argv && argv[0]) {
        const char *slash = strrchr(argv[0], '/');
        cli_prog = slash ? slash + 1 : argv[0];
    }
    /* Ctrl-C (or SIGTERM, SIGHUP) removes the temporary output before the
     * process ends, so no .tmp file or directory is left beside -o */
    moec_err err = {0};
    if (moec_cleanup_on_signals(&err))
        cli_die_err(&err);
}

static void vline(const char *fmt, va_list ap)
{
    cli_progress_done();
    fprintf(stderr, "%s: ", cli_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void cli_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(fmt, ap);
    va_end(ap);
    exit(CLI_EXIT_FAIL);
}

void cli_die_err(const moec_err *err)
{
    cli_die("%s", err->msg[0] ? err->msg : moec_status_name(err->code));
}

void cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help'.\n", cli_prog);
    exit(CLI_EXIT_USAGE);
}

long cli_parse_long(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0')
        cli_usage_error("%s: '%s' is not an integer", opt, s);
    if (v < lo || v > hi)
        cli_usage_error("%s: %ld is out of range [%ld, %ld]", opt, v, lo, hi);
    return v;
}

double cli_parse_double(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v))
        cli_usage_error("%s: '%s' is not a number", opt, s);
    if (v < lo || v > hi)
        cli_usage_error("%s: %g is out of range [%g, %g]", opt, v, lo, hi);
    return v;
}

double cli_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_check_output(const char *path, bool force)
{
    struct stat sb;
    if (!*path)
        cli_usage_error("-o: empty path");
    if (!force && stat(path, &sb) == 0)
        cli_die("%s: exists (use --force to replace it)", path);
    moec_err err = {0};
    if (moec_check_parent_writable(path, &err))
        cli_die_err(&err);
}

struct moec_model *cli_open_model(const char *path)
{
    moec_err err = {0};
    moec_model *m;
    if (moec_model_open(&m, path, &err))
        cli_die_err(&err);
    return m;
}

void cli_check_not_input(const struct moec_model *m, const char *out)
{
    moec_err err = {0};
    if (moec_model_check_output(m, out, &err))
        cli_die_err(&err);
}

struct moec_tokenizer *cli_model_tokenizer(const struct moec_model *m)
{
    moec_err err = {0};
    moec_tokenizer *tok;
    if (moec_model_tokenizer(m, &tok, &err)) /* also checks it against the embedding */
        cli_die_err(&err);
    return tok;
}

void cli_print_json(const struct cJSON *o)
{
    char *txt = cJSON_Print(o);
    if (!txt)
        cli_die("out of memory");
    puts(txt);
    free(txt);
}

void cli_json_add_version(struct cJSON *o)
{
    char v[128];
    snprintf(v, sizeof v, "%s, git %s", cli_version(), cli_commit());
    cJSON_AddStringToObject(o, "moec_version", v);
}
