#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

moec_status moec_err_set(moec_err *err, moec_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

moec_status moec_err_prefix(moec_err *err, const char *fmt, ...)
{
    if (!err)
        return MOEC_ERR_INTERNAL;
    char prefix[MOEC_ERR_MSG_MAX], old[MOEC_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* both parts fit in msg or are cut: a truncated message beats none */
    size_t n = strnlen(prefix, sizeof err->msg - 3);
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t room = sizeof err->msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(err->msg + n + 2, old, m);
    err->msg[n + 2 + m] = '\0';
    return err->code;
}

void moec_err_clear(moec_err *err)
{
    if (err) {
        err->code = MOEC_OK;
        err->msg[0] = '\0';
    }
}

const char *moec_status_name(moec_status code)
{
    switch (code) {
    case MOEC_OK: return "ok";
    case MOEC_ERR_IO: return "I/O error";
    case MOEC_ERR_FORMAT: return "format error";
    case MOEC_ERR_UNSUPPORTED: return "unsupported";
    case MOEC_ERR_SHAPE: return "shape mismatch";
    case MOEC_ERR_NUMERIC: return "numerical error";
    case MOEC_ERR_ARG: return "invalid argument";
    case MOEC_ERR_NOMEM: return "out of memory";
    case MOEC_ERR_MISMATCH: return "model mismatch";
    case MOEC_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}
