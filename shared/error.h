/*
 * error: the one helper every module uses to hand a message back through `char *err, size_t
 * errlen` parameters (the project's error-out convention). Header-only so unit tests that
 * compile a single module need nothing more.
 */
#ifndef AUTHD_ERROR_H
#define AUTHD_ERROR_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

static inline void error_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats into err (when err is not NULL and errlen > 0). */
static inline void error_set(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

#endif
