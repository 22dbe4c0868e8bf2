/* progress.h - how long library work reports how far it has got.
 *
 * The library only calls the callback; rendering (a line on a terminal,
 * nothing in a pipe) is the caller's: tools/progress.c for the moec tools.
 * stage names the work ("dequantizing"), done and total count its units
 * (total 0 = not known in advance). Called from one thread at a time. */
#ifndef MOEC_CORE_PROGRESS_H
#define MOEC_CORE_PROGRESS_H

#include <stdint.h>

typedef void (*moec_progress_fn)(void *ctx, const char *stage, int64_t done, int64_t total);

#endif
