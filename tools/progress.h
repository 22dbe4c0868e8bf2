/* progress.h - the tools' one progress reporter: a single line on stderr,
 * redrawn in place with the rate and the time left, shown only when stderr
 * is a terminal and neither --quiet nor --json was given (cli_parse turns it
 * off for those). Library calls report through their callbacks; the
 * adapters below turn each callback into a line. */
#ifndef MOEC_TOOLS_PROGRESS_H
#define MOEC_TOOLS_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* False after --quiet or --json (set by cli_parse). */
extern bool cli_progress_allowed;

/* Whether progress is drawn at all: allowed and stderr is a terminal. */
bool cli_progress_on(void);

/* Draws "stage: detail · done/total unit · pct · rate unit/s · ETA". A
 * new stage restarts the clock the rate and ETA are measured on; detail
 * (may be NULL) replaces the done/total count in the line; total <= 0 means
 * unknown (no percentage or ETA). Redraws at most 10 times a second, and
 * always on a new stage and on the last unit. */
void cli_progress(const char *stage, const char *detail, int64_t done, int64_t total, const char *unit);

/* The line's text without the terminal handling: rate < 0 = not known yet
 * (no rate or ETA). Returns its length (cut to len - 1). */
size_t cli_progress_format(char *line, size_t len, const char *stage, const char *detail, int64_t done,
                           int64_t total, const char *unit, double rate);

/* Erases the line (before other output, and when the work is done). */
void cli_progress_done(void);

/* Adapters for the library's progress callbacks (ctx unused). */
void cli_calib_progress(void *ctx, int64_t done, int64_t total);                  /* moec_calib_progress */
void cli_eval_progress(void *ctx, const char *what, int64_t done, int64_t total); /* moec_report_progress */
void cli_merge_progress(void *ctx, int done, int total);                          /* moec_merge_progress */
void cli_quant_progress(void *ctx, const char *stage, int layer, int n_layers);   /* moec_quant_progress */
void cli_stage_progress(void *ctx, const char *stage, int64_t done, int64_t total); /* moec_progress_fn */

#endif
