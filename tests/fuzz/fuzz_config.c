/*
 * fuzz_config: libFuzzer harness for configuration loading (shared/config.c).
 *
 * Each input is written to a file that config_load reads: the same call `authd config check`
 * and `authd serve` make (libconfig parsing, schema types and ranges, unknown keys, `<key>_file`
 * secrets, cross-key rules), then config_load_lenient, the CLI verbs' variant. AUTHD_*
 * variables are removed first: no environment override. A relative @include or `_file` path is
 * looked up in the working directory (scripts/fuzz runs the harness in its scratch directory,
 * with stdin from /dev/null).
 * Invariants: a result comes with no error text and an error text with no result; an accepted
 * configuration obeys the cross-key rules; the lenient load of a readable file always returns a
 * configuration, with no errors exactly when the strict load accepted it.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/fuzz/fuzz.h"

#include "shared/config.h"

static char path[96];

static void die(const char *what)
{
    fuzz_die("fuzz_config", what);
}

/* The rules config_load promises for a configuration it returns. */
static void check_accepted(const struct config *cfg)
{
    struct config_cidr c;

    if (cfg->path == NULL || strcmp(cfg->path, path) != 0)
        die("cfg->path is not the file read");
    if (config_worker_count(cfg) < 1 || config_worker_count(cfg) > CONFIG_MAX_WORKERS)
        die("worker count out of range");
    if (cfg->password.min_length > cfg->password.max_length)
        die("password.min_length > max_length accepted");
    if (cfg->tokens.access_ttl >= cfg->tokens.refresh_ttl)
        die("access_ttl >= refresh_ttl accepted");
    if (cfg->listen.port == cfg->admin.port)
        die("admin.port == listen.port accepted");
    if (strlen(cfg->ratelimit.redis_prefix) > CONFIG_RL_PREFIX_MAX)
        die("ratelimit.redis.prefix too long accepted");
    if (cfg->supervisor.heartbeat_timeout < 2 * cfg->supervisor.heartbeat_interval)
        die("heartbeat_timeout below twice the interval accepted");
    if (cfg->tokens.signing_keys_count < 0 ||
        cfg->tokens.signing_keys_count > CONFIG_MAX_SIGNING_KEY ||
        cfg->ratelimit.trusted_proxies_count < 0 ||
        cfg->ratelimit.trusted_proxies_count > CONFIG_MAX_TRUSTED_PROXIES)
        die("a list count out of range");
    for (int i = 0; i < cfg->ratelimit.trusted_proxies_count; i++)
        if (config_parse_cidr(cfg->ratelimit.trusted_proxies[i], &c) != 0)
            die("an unparsable trusted proxy accepted");
    for (int i = 0; i < cfg->tokens.signing_keys_count; i++)
        if (cfg->tokens.signing_keys[i] == NULL)
            die("a NULL signing key path");
}

/* Reads every string and line number the callers read (ASan sees bad pointers). */
static void touch(const struct config *cfg)
{
    static const char *const keys[] = {"workers",
                                       "listen.port",
                                       "store.driver",
                                       "store.uri",
                                       "tokens.signing_keys",
                                       "log.level",
                                       "no.such.key",
                                       "ratelimit.redis.password"};
    size_t n = strlen(cfg->pid_file) + strlen(cfg->control_socket) + strlen(cfg->listen.address) +
               strlen(cfg->store.driver) + strlen(cfg->store.path) + strlen(cfg->store.uri) +
               strlen(cfg->ratelimit.backend) + strlen(cfg->ratelimit.redis_password) +
               strlen(cfg->tokens.issuer) + strlen(cfg->tokens.audience) +
               strlen(cfg->backup.encryption_key_file) + strlen(cfg->log.level);

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (config_key_line(cfg, keys[i]) < -1)
            die("negative source line");
    if (n == (size_t)-1)
        die("impossible");
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_unset_authd_env();
    /* Written for every input and removed after it: memory, not disk, when there is a tmpfs. */
    snprintf(path, sizeof(path), "%s/fuzz_config.%d.conf",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *errors = NULL, *lenient_errors = NULL;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0 || (size > 0 && write(fd, data, size) != (ssize_t)size) || close(fd) != 0)
        die("cannot write the input file");
    struct config *cfg = config_load(path, &errors);
    if ((cfg == NULL) == (errors == NULL))
        die("config_load: a result with errors, or neither");
    if (cfg != NULL) {
        check_accepted(cfg);
        touch(cfg);
    }
    struct config *lenient = config_load_lenient(path, &lenient_errors);
    if (lenient == NULL)
        die("config_load_lenient refused a readable file");
    if ((cfg != NULL) != (lenient_errors == NULL))
        die("the lenient load disagrees with the strict one");
    touch(lenient);
    unlink(path);
    config_free(lenient);
    config_free(cfg);
    free(lenient_errors);
    free(errors);
    return 0;
}
