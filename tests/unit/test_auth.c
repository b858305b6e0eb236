/*
 * Unit tests for shared/auth.c: the per-generation authentication context. A context owns the
 * dummy hash made with its own argon2id parameters, so building (or building and discarding)
 * another generation's context, as a refused or rolled-back reload does, never changes what the
 * serving generation verifies unknown accounts against.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/auth.h"
#include "shared/config.h"

static char dir[64];

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/authd-test-auth.XXXXXX");
    return mkdtemp(dir) != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A configuration with the given argon2id memory (KiB); `key` names a signing key file or "". */
static struct config *config_with(const char *memory_kib, const char *key)
{
    char path[128], *errors = NULL;
    struct config *cfg;

    snprintf(path, sizeof(path), "%s/authd.db", dir);
    setenv("AUTHD_STORE_PATH", path, 1);
    setenv("AUTHD_PASSWORD_MEMORY_KIB", memory_kib, 1);
    setenv("AUTHD_PASSWORD_ITERATIONS", "1", 1);
    setenv("AUTHD_TOKENS_SIGNING_KEYS", key, 1);
    cfg = config_load(NULL, &errors);
    unsetenv("AUTHD_STORE_PATH");
    unsetenv("AUTHD_PASSWORD_MEMORY_KIB");
    unsetenv("AUTHD_PASSWORD_ITERATIONS");
    unsetenv("AUTHD_TOKENS_SIGNING_KEYS");
    if (cfg == NULL)
        fail_msg("config_load: %s", errors ? errors : "?");
    free(errors);
    return cfg;
}

static void assert_dummy_memory(const struct auth *a, const char *m)
{
    char want[32];
    snprintf(want, sizeof(want), "$m=%s,", m);
    assert_int_equal(strncmp(a->dummy_phc, "$argon2id$v=19$", 15), 0);
    if (strstr(a->dummy_phc, want) == NULL)
        fail_msg("dummy %s: expected %s", a->dummy_phc, want);
}

static void test_dummy_belongs_to_generation(void **state)
{
    char err[256];
    struct config *c1 = config_with("1024", ""), *c2 = config_with("2048", "");
    struct auth *g1 = auth_new(c1, err, sizeof(err)), *g2;

    assert_non_null(g1);
    assert_dummy_memory(g1, "1024");
    /* A new generation is built, then retired (a rollback): the serving one is unchanged. */
    g2 = auth_new(c2, err, sizeof(err));
    assert_non_null(g2);
    assert_dummy_memory(g2, "2048");
    assert_dummy_memory(g1, "1024");
    auth_free(g2);
    assert_dummy_memory(g1, "1024");
    password_verify_dummy(g1->dummy_phc, "unknown account's password", 26);
    auth_free(g1);
    config_free(c2);
    config_free(c1);
}

static void test_refused_generation(void **state)
{
    char err[256], missing[128];
    struct config *c1 = config_with("1024", ""), *bad;
    struct auth *g1 = auth_new(c1, err, sizeof(err));

    snprintf(missing, sizeof(missing), "%s/no-such-key.pem", dir);
    bad = config_with("4096", missing);
    assert_non_null(g1);
    assert_null(auth_new(bad, err, sizeof(err))); /* refused: the key file is missing */
    assert_non_null(strstr(err, "no-such-key.pem"));
    assert_dummy_memory(g1, "1024");
    auth_free(g1);
    config_free(bad);
    config_free(c1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dummy_belongs_to_generation),
        cmocka_unit_test(test_refused_generation),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
