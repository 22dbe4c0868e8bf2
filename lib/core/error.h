/* error.h - errors as values.
 *
 * Every library function that can fail returns a moec_status and, when it
 * fails, fills a caller-provided moec_err with one human-readable line naming
 * the file, tensor or option involved (expected vs found where it helps).
 * The library never prints and never exits; tools print err.msg and exit.
 */
#ifndef MOEC_CORE_ERROR_H
#define MOEC_CORE_ERROR_H

typedef enum moec_status {
    MOEC_OK = 0,
    MOEC_ERR_IO,          /* open/read/write/mmap/rename failed */
    MOEC_ERR_FORMAT,      /* malformed or corrupt input file */
    MOEC_ERR_UNSUPPORTED, /* valid input we do not handle (architecture, dtype, option) */
    MOEC_ERR_SHAPE,       /* tensor shapes disagree with each other or the config */
    MOEC_ERR_NUMERIC,     /* NaN/Inf, singular matrix, solver failure */
    MOEC_ERR_ARG,         /* invalid argument from the caller */
    MOEC_ERR_NOMEM,       /* allocation failed */
    MOEC_ERR_MISMATCH,    /* inputs belong to different models */
    MOEC_ERR_INTERNAL
} moec_status;

#define MOEC_ERR_MSG_MAX 512

typedef struct moec_err {
    moec_status code;
    char msg[MOEC_ERR_MSG_MAX];
} moec_err;

/* Fills err (may be NULL) and returns code, so a failure reads
 * `return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));` */
moec_status moec_err_set(moec_err *err, moec_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an already-set message (adds context on the way up). */
moec_status moec_err_prefix(moec_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void moec_err_clear(moec_err *err);

/* Short name of a status, e.g. "format error". */
const char *moec_status_name(moec_status code);

#endif
