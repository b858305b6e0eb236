/* fuzz: helpers shared by the libFuzzer harnesses in tests/fuzz (static inline, header only). */
#ifndef AUTHD_FUZZ_H
#define AUTHD_FUZZ_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* Stops the run with a message: libFuzzer records the input as a crash. */
static inline void fuzz_die(const char *harness, const char *what)
{
    fprintf(stderr, "%s: invariant broken: %s\n", harness, what);
    abort();
}

/* Removes every AUTHD_* variable, so config_load sees defaults and the file only. */
static inline void fuzz_unset_authd_env(void)
{
    char name[256];

    for (;;) {
        char **e = environ;
        while (*e != NULL && strncmp(*e, "AUTHD_", 6) != 0)
            e++;
        if (*e == NULL)
            return;
        size_t n = strcspn(*e, "=");
        if (n >= sizeof(name))
            fuzz_die("fuzz", "an AUTHD_* variable name is longer than 255 bytes");
        memcpy(name, *e, n);
        name[n] = '\0';
        unsetenv(name);
    }
}

#endif
