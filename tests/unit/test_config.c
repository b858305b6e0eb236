/*
 * Unit tests for shared/config.c: defaults, file values, error reporting with file:line,
 * AUTHD_* environment overrides, `_file` secrets and cross-key rules.
 *
 * Each test writes its configuration to a mkstemp file; environment variables are set inside a
 * test and removed by the teardown, so tests do not depend on each other.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "shared/config.h"

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        const char *hay_ = (hay), *needle_ = (needle);                                             \
        assert_non_null(hay_);                                                                     \
        if (strstr(hay_, needle_) == NULL)                                                         \
            fail_msg("expected \"%s\" in:\n%s", needle_, hay_);                                    \
    } while (0)

/* Every variable a test may set; the teardown unsets them all. */
static const char *const env_vars[] = {
    "AUTHD_LISTEN_PORT",
    "AUTHD_ADMIN_PORT",
    "AUTHD_LOG_ACCESS",
    "AUTHD_TOKENS_SIGNING_KEYS",
    "AUTHD_RATELIMIT_REDIS_PASSWORD",
    "AUTHD_RATELIMIT_REDIS_PASSWORD_FILE",
    "AUTHD_WORKERS",
    "AUTHD_STORE_DRIVER",
    "AUTHD_SUPERVISOR_DRAIN_TIMEOUT",
};

#define MAX_TEMP 4

struct fixture {
    char paths[MAX_TEMP][64];
    int npaths;
    struct config *cfg;
    char *errors;
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
        unsetenv(env_vars[i]);
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));

    if (fx == NULL)
        return -1;
    clear_env();
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    for (int i = 0; i < fx->npaths; i++)
        unlink(fx->paths[i]);
    config_free(fx->cfg);
    free(fx->errors);
    free(fx);
    clear_env();
    return 0;
}

/* Writes `text` to a new temporary file owned by the fixture; returns its path. */
static const char *write_temp(struct fixture *fx, const char *text)
{
    assert_true(fx->npaths < MAX_TEMP);
    char *path = fx->paths[fx->npaths];
    snprintf(path, sizeof(fx->paths[0]), "/tmp/authd-test-config.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fx->npaths++;
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

/* Loads `text` (NULL: defaults only) and expects success. */
static struct config *load_ok(struct fixture *fx, const char *text)
{
    const char *path = text ? write_temp(fx, text) : NULL;

    fx->cfg = config_load(path, &fx->errors);
    if (fx->cfg == NULL)
        fail_msg("config_load failed:\n%s", fx->errors ? fx->errors : "(no errors)");
    assert_null(fx->errors);
    return fx->cfg;
}

/* Loads `text` and expects failure; returns the error text. */
static const char *load_err(struct fixture *fx, const char *text)
{
    const char *path = text ? write_temp(fx, text) : NULL;

    fx->cfg = config_load(path, &fx->errors);
    if (fx->cfg != NULL)
        fail_msg("config_load accepted a configuration it should have refused");
    assert_non_null(fx->errors);
    assert_true(fx->errors[0] != '\0');
    return fx->errors;
}

/* "PATH:LINE:" of the most recently written temp file. */
static const char *at_line(struct fixture *fx, int line)
{
    static char buf[128];

    snprintf(buf, sizeof(buf), "%s:%d: ", fx->paths[fx->npaths - 1], line);
    return buf;
}

static int count_lines(const char *s)
{
    int n = 1;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ---- defaults ---- */

static void defaults_without_file(void **state)
{
    struct fixture *fx = *state;
    struct config *c = load_ok(fx, NULL);

    assert_null(c->path);
    assert_int_equal(c->listen.port, 8443);
    assert_int_equal(c->admin.port, 9100);
    assert_string_equal(c->store.driver, "sqlite");
    assert_int_equal(c->workers, 0);
    assert_true(config_worker_count(c) >= 1);
    assert_true(config_worker_count(c) <= CONFIG_MAX_WORKERS);
    assert_string_equal(c->listen.address, "0.0.0.0");
    assert_string_equal(c->admin.address, "127.0.0.1");
    assert_string_equal(c->ratelimit.backend, "shm");
    assert_string_equal(c->ratelimit.redis_password, "");
    assert_string_equal(c->log.level, "info");
    assert_int_equal(c->log.access, 1);
    assert_int_equal(c->offload.threads, 2);
    assert_int_equal(c->offload.queue, 64);
    assert_int_equal(c->tokens.signing_keys_count, 0);
    assert_null(c->tokens.signing_keys[0]);
    assert_true(c->supervisor.heartbeat_interval > 0.49 && c->supervisor.heartbeat_interval < 0.51);
    assert_true(c->http.header_timeout > 9.99 && c->http.header_timeout < 10.01);
    assert_int_equal(config_key_line(c, "listen.port"), 0);
    assert_int_equal(config_key_line(c, "workers"), 0);
}

static void worker_count_explicit(void **state)
{
    struct fixture *fx = *state;
    struct config *c = load_ok(fx, "workers = 3;\n");

    assert_int_equal(c->workers, 3);
    assert_int_equal(config_worker_count(c), 3);
    c->workers = CONFIG_MAX_WORKERS;
    assert_int_equal(config_worker_count(c), CONFIG_MAX_WORKERS);
}

static void empty_file_is_defaults(void **state)
{
    struct fixture *fx = *state;
    struct config *c = load_ok(fx, "# nothing set\n");

    assert_string_equal(c->path, fx->paths[0]);
    assert_int_equal(c->listen.port, 8443);
    assert_int_equal(config_key_line(c, "listen.port"), 0);
}

/* ---- file values ---- */

static void file_overrides(void **state)
{
    struct fixture *fx = *state;
    struct config *c =
        load_ok(fx, "# authd test\n"
                    "workers = 4;\n"
                    "listen: {\n"
                    "  port = 10443;\n"
                    "  tls: { certificate = \"/x/cert.pem\"; key = \"/x/key.pem\"; };\n"
                    "};\n"
                    "admin = { port = 9200; address = \"::1\"; };\n"
                    "store = { driver = \"mongo\"; uri = \"mongodb://db/x\"; };\n"
                    "log = { access = false; level = \"debug\"; };\n"
                    "tokens = { signing_keys = [\"k1.pem\", \"k2.pem\", \"k3.pem\"]; };\n");

    assert_string_equal(c->path, fx->paths[0]);
    assert_int_equal(c->workers, 4);
    assert_int_equal(config_worker_count(c), 4);
    assert_int_equal(c->listen.port, 10443);
    assert_string_equal(c->listen.tls_certificate, "/x/cert.pem");
    assert_string_equal(c->listen.tls_key, "/x/key.pem");
    assert_int_equal(c->admin.port, 9200);
    assert_string_equal(c->admin.address, "::1");
    assert_string_equal(c->store.driver, "mongo");
    assert_string_equal(c->store.uri, "mongodb://db/x");
    assert_int_equal(c->log.access, 0);
    assert_string_equal(c->log.level, "debug");
    assert_int_equal(c->tokens.signing_keys_count, 3);
    assert_string_equal(c->tokens.signing_keys[0], "k1.pem");
    assert_string_equal(c->tokens.signing_keys[2], "k3.pem");
    assert_null(c->tokens.signing_keys[3]);
    /* Untouched keys keep their defaults. */
    assert_int_equal(c->listen.backlog, 511);
    assert_string_equal(c->store.database, "authd");
}

static void key_line_from_file(void **state)
{
    struct fixture *fx = *state;
    struct config *c = load_ok(fx, "# line 1\n"
                                   "\n"
                                   "listen: {\n"
                                   "  port = 10443;\n"
                                   "  tls: {\n"
                                   "    key = \"/k.pem\";\n"
                                   "  };\n"
                                   "};\n"
                                   "workers = 2;\n");

    assert_int_equal(config_key_line(c, "listen.port"), 4);
    assert_int_equal(config_key_line(c, "listen.tls.key"), 6);
    assert_int_equal(config_key_line(c, "workers"), 9);
    assert_int_equal(config_key_line(c, "admin.port"), 0);
    assert_int_equal(config_key_line(c, "listen.tls.certificate"), 0);
    assert_int_equal(config_key_line(c, "no.such.key"), 0);
}

static void durations_int_and_float(void **state)
{
    struct fixture *fx = *state;
    struct config *c = load_ok(fx, "supervisor = { drain_timeout = 5; crash_window = 2.5; "
                                   "heartbeat_interval = 1; heartbeat_timeout = 3.75; };\n"
                                   "http = { header_timeout = 0.25; idle_timeout = 120; };\n");

    assert_true(c->supervisor.drain_timeout == 5.0);
    assert_true(c->supervisor.crash_window == 2.5);
    assert_true(c->supervisor.heartbeat_interval == 1.0);
    assert_true(c->supervisor.heartbeat_timeout == 3.75);
    assert_true(c->http.header_timeout == 0.25);
    assert_true(c->http.idle_timeout == 120.0);
}

static void int_key_rejects_float(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "\nworkers = 2.5;\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "workers expects an integer, got a float");
}

/* ---- errors ---- */

static void error_syntax(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "workers = 2;\n"
                                 "listen = {\n"
                                 "  port = 8443;\n"
                                 "  backlog = = 10;\n"
                                 "};\n");

    assert_contains(e, at_line(fx, 4));
    assert_contains(e, "syntax error");
}

static void error_missing_file(void **state)
{
    struct fixture *fx = *state;

    fx->cfg = config_load("/nonexistent/authd-test.conf", &fx->errors);
    assert_null(fx->cfg);
    assert_contains(fx->errors, "/nonexistent/authd-test.conf");
}

static void error_unknown_top_level(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "workers = 2;\n"
                                 "wrokers = 3;\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "unknown key 'wrokers'");
}

static void error_unknown_nested(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "listen = {\n"
                                 "  port = 8443;\n"
                                 "  tls = {\n"
                                 "    certificate = \"/c.pem\";\n"
                                 "    foo = 1;\n"
                                 "  };\n"
                                 "};\n");

    assert_contains(e, at_line(fx, 5));
    assert_contains(e, "unknown key 'listen.tls.foo'");
}

static void error_unknown_group(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "\n\nbogus = { a = 1; };\n");

    assert_contains(e, at_line(fx, 3));
    assert_contains(e, "unknown key 'bogus'");
}

static void error_group_for_value(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "listen = {\n  port = { x = 1; };\n};\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "listen.port");
}

static void error_wrong_type(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "# ports\n"
                                 "listen = {\n"
                                 "  port = \"8443\";\n"
                                 "};\n");

    assert_contains(e, at_line(fx, 3));
    assert_contains(e, "listen.port expects an integer, got a string");
}

static void error_wrong_type_bool(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "log = { access = \"yes\"; };\n");

    assert_contains(e, at_line(fx, 1));
    assert_contains(e, "log.access");
}

static void error_out_of_range_port(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "\nlisten = { port = 70000; };\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "listen.port = 70000 is out of range [1, 65535]");
}

static void error_out_of_range_workers(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "\n\n\nworkers = 65;\n");

    assert_contains(e, at_line(fx, 4));
    assert_contains(e, "workers = 65 is out of range [0, 64]");
}

static void boundaries_in_range(void **state)
{
    struct fixture *fx = *state;
    struct config *c = load_ok(fx, "workers = 64;\nlisten = { port = 65535; };\n"
                                   "admin = { port = 1; };\n");

    assert_int_equal(c->workers, 64);
    assert_int_equal(c->listen.port, 65535);
    assert_int_equal(c->admin.port, 1);
}

static void error_negative_and_duration_range(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "workers = -1;\n"
                                 "supervisor = { heartbeat_interval = 0.01; };\n");

    assert_contains(e, at_line(fx, 1));
    assert_contains(e, "workers = -1 is out of range");
    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "supervisor.heartbeat_interval = 0.01 is out of range");
}

static void error_bad_enum(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "store = {\n"
                                 "  driver = \"postgres\";\n"
                                 "};\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "store.driver must be one of sqlite|mongo, not \"postgres\"");
}

static void error_enum_prefix_rejected(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "log = { level = \"inf\"; };\n");

    assert_contains(e, at_line(fx, 1));
    assert_contains(e, "log.level must be one of");
}

static void error_empty_nonempty_string(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "\ntokens = { issuer = \"\"; };\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "tokens.issuer must not be empty");
}

static void error_too_many_signing_keys(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "tokens = { signing_keys = [\"1\", \"2\", \"3\", \"4\", \"5\", "
                                 "\"6\", \"7\", \"8\", \"9\"]; };\n");

    assert_contains(e, at_line(fx, 1));
    assert_contains(e, "tokens.signing_keys holds more than 8 entries");
}

static void errors_all_reported(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "workers = 65;\n"                 /* 1: range */
                                 "listen = {\n"                    /* 2 */
                                 "  port = \"x\";\n"               /* 3: type */
                                 "  tls = { foo = 1; };\n"         /* 4: unknown */
                                 "};\n"                            /* 5 */
                                 "store = { driver = \"pg\"; };\n" /* 6: enum */
                                 "nonsense = true;\n");            /* 7: unknown */

    assert_contains(e, at_line(fx, 1));
    assert_contains(e, at_line(fx, 3));
    assert_contains(e, at_line(fx, 4));
    assert_contains(e, at_line(fx, 6));
    assert_contains(e, at_line(fx, 7));
    assert_contains(e, "'listen.tls.foo'");
    assert_contains(e, "'nonsense'");
    /* One line per problem, no trailing newline. */
    assert_int_equal(count_lines(e), 5);
    assert_true(e[strlen(e) - 1] != '\n');
}

/* ---- environment ---- */

static void env_port_override(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_LISTEN_PORT", "9443", 1);
    struct config *c = load_ok(fx, "listen = { port = 10443; };\n");
    assert_int_equal(c->listen.port, 9443);
    /* The value no longer comes from the file. */
    assert_int_equal(config_key_line(c, "listen.port"), 0);
}

static void env_port_override_defaults(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_LISTEN_PORT", "9443", 1);
    struct config *c = load_ok(fx, NULL);
    assert_int_equal(c->listen.port, 9443);
}

static void env_port_not_a_number(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_LISTEN_PORT", "abc", 1);
    const char *e = load_err(fx, NULL);
    assert_contains(e, "AUTHD_LISTEN_PORT");
    assert_contains(e, "abc");
}

static void env_port_trailing_garbage(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_LISTEN_PORT", "9443x", 1);
    assert_contains(load_err(fx, NULL), "AUTHD_LISTEN_PORT");
}

static void env_port_out_of_range(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_LISTEN_PORT", "70000", 1);
    const char *e = load_err(fx, NULL);
    assert_contains(e, "AUTHD_LISTEN_PORT");
    assert_contains(e, "out of range");
}

static void env_bool(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_LOG_ACCESS", "false", 1);
    struct config *c = load_ok(fx, "log = { access = true; };\n");
    assert_int_equal(c->log.access, 0);
}

static void env_bool_invalid(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_LOG_ACCESS", "maybe", 1);
    assert_contains(load_err(fx, NULL), "AUTHD_LOG_ACCESS");
}

static void env_list(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_TOKENS_SIGNING_KEYS", "a.pem,b.pem", 1);
    struct config *c =
        load_ok(fx, "tokens = { signing_keys = [\"x.pem\", \"y.pem\", \"z.pem\"]; };\n");
    assert_int_equal(c->tokens.signing_keys_count, 2);
    assert_string_equal(c->tokens.signing_keys[0], "a.pem");
    assert_string_equal(c->tokens.signing_keys[1], "b.pem");
    assert_null(c->tokens.signing_keys[2]);
}

/* An empty entry is an error in the file ([""]); the environment must not silently drop it. */
static void env_list_empty_entry(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_TOKENS_SIGNING_KEYS", "a.pem,,b.pem", 1);
    const char *e = load_err(fx, NULL);
    assert_contains(e, "AUTHD_TOKENS_SIGNING_KEYS");
    assert_contains(e, "is empty");
}

static void env_duration(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_SUPERVISOR_DRAIN_TIMEOUT", "1.5", 1);
    struct config *c = load_ok(fx, NULL);
    assert_true(c->supervisor.drain_timeout == 1.5);
}

static void env_enum_invalid(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_STORE_DRIVER", "oracle", 1);
    const char *e = load_err(fx, NULL);
    assert_contains(e, "AUTHD_STORE_DRIVER");
    assert_contains(e, "store.driver must be one of");
}

/* ---- secrets ---- */

static void secret_file_in_config(void **state)
{
    struct fixture *fx = *state;
    const char *secret = write_temp(fx, "s3cret\n");
    char text[256];

    snprintf(text, sizeof(text),
             "ratelimit = {\n  backend = \"redis\";\n  redis = { password_file = \"%s\"; };\n};\n",
             secret);
    struct config *c = load_ok(fx, text);
    assert_string_equal(c->ratelimit.redis_password, "s3cret");
    assert_int_equal(config_key_line(c, "ratelimit.redis.password"), 3);
}

static void secret_file_without_newline(void **state)
{
    struct fixture *fx = *state;
    const char *secret = write_temp(fx, "pa ss");
    char text[256];

    snprintf(text, sizeof(text), "ratelimit = { redis = { password_file = \"%s\"; }; };\n", secret);
    struct config *c = load_ok(fx, text);
    assert_string_equal(c->ratelimit.redis_password, "pa ss");
}

static void secret_inline(void **state)
{
    struct fixture *fx = *state;
    struct config *c = load_ok(fx, "ratelimit = { redis = { password = \"inline\"; }; };\n");

    assert_string_equal(c->ratelimit.redis_password, "inline");
}

static void secret_both_is_error(void **state)
{
    struct fixture *fx = *state;
    const char *secret = write_temp(fx, "s3cret\n");
    char text[256];

    snprintf(text, sizeof(text),
             "ratelimit = {\n  redis = {\n    password = \"x\";\n    password_file = \"%s\";\n"
             "  };\n};\n",
             secret);
    const char *e = load_err(fx, text);
    assert_contains(e, at_line(fx, 4));
    assert_contains(e, "set either ratelimit.redis.password or ratelimit.redis.password_file");
}

static void secret_missing_file_is_error(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "\nratelimit = { redis = { password_file = "
                                 "\"/nonexistent/authd-secret\"; }; };\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "/nonexistent/authd-secret");
    assert_contains(e, "cannot read");
}

static void secret_file_not_a_string(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "ratelimit = { redis = { password_file = 5; }; };\n");

    assert_contains(e, at_line(fx, 1));
    assert_contains(e, "password_file expects a string");
}

static void secret_file_suffix_only_on_secret_keys(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "\nlisten = { address_file = \"/x\"; };\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "unknown key 'listen.address_file'");
}

static void secret_file_from_env(void **state)
{
    struct fixture *fx = *state;
    const char *secret = write_temp(fx, "from-env\n");

    setenv("AUTHD_RATELIMIT_REDIS_PASSWORD_FILE", secret, 1);
    struct config *c = load_ok(fx, NULL);
    assert_string_equal(c->ratelimit.redis_password, "from-env");
}

static void secret_env_both_is_error(void **state)
{
    struct fixture *fx = *state;
    const char *secret = write_temp(fx, "from-env\n");

    setenv("AUTHD_RATELIMIT_REDIS_PASSWORD_FILE", secret, 1);
    setenv("AUTHD_RATELIMIT_REDIS_PASSWORD", "direct", 1);
    const char *e = load_err(fx, NULL);
    assert_contains(e, "AUTHD_RATELIMIT_REDIS_PASSWORD_FILE");
}

static void secret_env_missing_file(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_RATELIMIT_REDIS_PASSWORD_FILE", "/nonexistent/authd-secret", 1);
    const char *e = load_err(fx, NULL);
    assert_contains(e, "AUTHD_RATELIMIT_REDIS_PASSWORD_FILE");
    assert_contains(e, "/nonexistent/authd-secret");
}

/* ---- cross-key rules ---- */

static void rule_mongo_needs_uri(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "# store\n"
                                 "store = {\n"
                                 "  driver = \"mongo\";\n"
                                 "};\n");

    assert_contains(e, at_line(fx, 3));
    assert_contains(e, "store.driver = \"mongo\" needs store.uri");
}

static void rule_admin_port_differs(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "listen = { port = 9000; };\n"
                                 "admin = {\n"
                                 "  port = 9000;\n"
                                 "};\n");

    assert_contains(e, at_line(fx, 3));
    assert_contains(e, "admin.port must differ from listen.port");
}

/* The conflict comes from listen.port in the file: the message must still carry its line. */
static void rule_admin_port_differs_listen_in_file(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "# admin.port keeps its default 9100\n"
                                 "listen = { port = 9100; };\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "admin.port must differ from listen.port");
}

static void rule_admin_port_differs_env(void **state)
{
    struct fixture *fx = *state;

    setenv("AUTHD_ADMIN_PORT", "8443", 1);
    assert_contains(load_err(fx, NULL), "admin.port must differ from listen.port");
}

static void rule_ttl_order(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "tokens = {\n  access_ttl = 3600;\n  refresh_ttl = 3600;\n};\n");

    assert_contains(e, at_line(fx, 2));
    assert_contains(e, "tokens.access_ttl must be shorter than tokens.refresh_ttl");
}

static void rule_heartbeat_timeout(void **state)
{
    struct fixture *fx = *state;
    const char *e = load_err(fx, "supervisor = {\n  heartbeat_interval = 1;\n"
                                 "  heartbeat_timeout = 1.5;\n};\n");

    assert_contains(e, at_line(fx, 3));
    assert_contains(e, "heartbeat_timeout must be at least twice the interval");
}

/* ---- reference ---- */

static void reference_lists_keys(void **state)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    (void)state;
    assert_non_null(f);
    config_print_reference(f);
    fclose(f);
    assert_contains(buf, "| key | type | default | environment | meaning |\n");
    assert_contains(buf, "| `listen.port` | integer | `8443` | `AUTHD_LISTEN_PORT` |");
    assert_contains(buf, "| `store.driver` | enum: sqlite \\| mongo | `sqlite` |");
    assert_contains(buf, "`AUTHD_RATELIMIT_REDIS_PASSWORD` (or `_FILE`)");
    assert_contains(buf, "| `log.access` | boolean | `true` |");
    free(buf);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(defaults_without_file),
        T(worker_count_explicit),
        T(empty_file_is_defaults),
        T(file_overrides),
        T(key_line_from_file),
        T(durations_int_and_float),
        T(int_key_rejects_float),
        T(error_syntax),
        T(error_missing_file),
        T(error_unknown_top_level),
        T(error_unknown_nested),
        T(error_unknown_group),
        T(error_group_for_value),
        T(error_wrong_type),
        T(error_wrong_type_bool),
        T(error_out_of_range_port),
        T(error_out_of_range_workers),
        T(boundaries_in_range),
        T(error_negative_and_duration_range),
        T(error_bad_enum),
        T(error_enum_prefix_rejected),
        T(error_empty_nonempty_string),
        T(error_too_many_signing_keys),
        T(errors_all_reported),
        T(env_port_override),
        T(env_port_override_defaults),
        T(env_port_not_a_number),
        T(env_port_trailing_garbage),
        T(env_port_out_of_range),
        T(env_bool),
        T(env_bool_invalid),
        T(env_list),
        T(env_list_empty_entry),
        T(env_duration),
        T(env_enum_invalid),
        T(secret_file_in_config),
        T(secret_file_without_newline),
        T(secret_inline),
        T(secret_both_is_error),
        T(secret_missing_file_is_error),
        T(secret_file_not_a_string),
        T(secret_file_suffix_only_on_secret_keys),
        T(secret_file_from_env),
        T(secret_env_both_is_error),
        T(secret_env_missing_file),
        T(rule_mongo_needs_uri),
        T(rule_admin_port_differs),
        T(rule_admin_port_differs_listen_in_file),
        T(rule_admin_port_differs_env),
        T(rule_ttl_order),
        T(rule_heartbeat_timeout),
        cmocka_unit_test(reference_lists_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
