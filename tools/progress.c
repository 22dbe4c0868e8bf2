#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cli.h"

bool cli_progress_allowed = true;

static struct {
    bool open;          /* a line is on screen */
    char stage[128];    /* current stage, copied */
    double t0;          /* when the stage began */
    int64_t done0;      /* its count then */
    int64_t last_done;
    double last_draw;
} P;

bool cli_progress_on(void)
{
    static int tty = -1;
    if (tty < 0)
        tty = isatty(STDERR_FILENO);
    return cli_progress_allowed && tty;
}

static int columns(void)
{
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
        return ws.ws_col;
    return 80;
}

static int num(char *b, size_t n, double v)
{
    return snprintf(b, n, v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : "%.2f", v);
}

static int duration(char *b, size_t n, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        return snprintf(b, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    if (t >= 60)
        return snprintf(b, n, "%ldm%02lds", t / 60, t % 60);
    return snprintf(b, n, "%lds", t);
}

size_t cli_progress_format(char *line, size_t len, const char *stage, const char *detail, int64_t done,
                           int64_t total, const char *unit, double rate)
{
    size_t n = 0;
    unit = unit ? unit : "";
#define ADD(...) (n += (size_t)snprintf(line + n, n < len ? len - n : 0, __VA_ARGS__))
    ADD("%s", stage);
    if (detail) {
        if (*detail)
            ADD(": %s", detail);
    } else if (total > 0) {
        ADD(": %lld/%lld %s", (long long)done, (long long)total, unit);
    } else {
        ADD(": %lld %s", (long long)done, unit);
    }
    if (total > 0)
        ADD(" · %.0f%%", 100.0 * (double)done / (double)total);
    if (rate > 0) {
        char r[32], e[32];
        num(r, sizeof r, rate);
        ADD(" · %s %s/s", r, unit);
        if (total > done) {
            duration(e, sizeof e, (double)(total - done) / rate);
            ADD(" · ETA %s", e);
        }
    }
#undef ADD
    return n < len ? n : len - 1;
}

void cli_progress(const char *stage, const char *detail, int64_t done, int64_t total, const char *unit)
{
    if (!cli_progress_on())
        return;
    const double now = cli_seconds();
    bool fresh = strncmp(P.stage, stage, sizeof P.stage - 1) != 0 || done < P.last_done;
    if (fresh) {
        snprintf(P.stage, sizeof P.stage, "%s", stage);
        P.t0 = now;
        P.done0 = done;
    }
    P.last_done = done;
    if (!fresh && now - P.last_draw < 0.1 && !(total > 0 && done >= total))
        return;
    P.last_draw = now;

    char line[512];
    const double dt = now - P.t0;
    const double rate = done > P.done0 && dt > 0.2 ? (double)(done - P.done0) / dt : -1.0;
    size_t n = cli_progress_format(line, sizeof line, stage, detail, done, total, unit, rate);
    if (n >= sizeof line)
        n = sizeof line - 1;
    /* one line, never wrapped (a wrapped line cannot be redrawn in place):
     * cut to the terminal's width, counting "·" (2 bytes) as one column */
    int cols = columns() - 1, width = 0;
    size_t keep = 0;
    while (keep < n && width < cols) {
        const unsigned char c = (unsigned char)line[keep];
        keep += c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        width++;
    }
    if (keep > n)
        keep = n;
    fprintf(stderr, "\r\033[K%.*s", (int)keep, line);
    fflush(stderr);
    P.open = true;
}

void cli_progress_done(void)
{
    if (P.open) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        P.open = false;
    }
    P.stage[0] = '\0';
    P.last_done = 0;
}

void cli_calib_progress(void *ctx, int64_t done, int64_t total)
{
    (void)ctx;
    cli_progress("calibrating", NULL, done, total, "tokens");
}

void cli_eval_progress(void *ctx, const char *what, int64_t done, int64_t total)
{
    (void)ctx;
    char stage[160];
    snprintf(stage, sizeof stage, "evaluating %s", what);
    const size_t k = strlen(what);
    const bool mc = k > 6 && !strcmp(what + k - 6, ".jsonl");
    cli_progress(stage, NULL, done, total, mc ? "items" : "windows");
}

void cli_merge_progress(void *ctx, int done, int total)
{
    (void)ctx;
    cli_progress("merging", NULL, done, total, "matrices");
}

void cli_quant_progress(void *ctx, const char *stage, int layer, int n_layers)
{
    (void)ctx;
    if (layer < 0) {
        cli_progress(stage, "", 0, 0, NULL);
        return;
    }
    char detail[160];
    snprintf(detail, sizeof detail, "layer %d/%d, %s", layer + 1, n_layers, stage);
    /* layers finished so far drive the rate and the ETA */
    cli_progress("quantizing", detail, layer, n_layers, "layers");
}

void cli_stage_progress(void *ctx, const char *stage, int64_t done, int64_t total)
{
    cli_progress(stage, NULL, done, total, ctx);
}
