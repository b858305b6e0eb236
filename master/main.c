/*
 * main: the `authd` command line. `serve` (the default) runs the master; the other verbs are
 * short-lived clients of a running master's control socket, or offline tools.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "master/backup.h"
#include "master/control.h"
#include "master/pidfile.h"
#include "master/supervisor.h"
#include "shared/config.h"
#include "shared/jwt.h"
#include "shared/password.h"
#include "shared/store.h"
#include "shared/log.h"
#include "shared/testhook.h"
#include "shared/tls.h"

#define EXIT_USAGE 2

static void usage(FILE *out)
{
    fprintf(out,
            "usage: authd [--config FILE] [VERB]\n"
            "\n"
            "  serve                 run the master in the foreground (default)\n"
            "  config check          validate the configuration; exit 1 naming file:line\n"
            "  config reference      print every configuration key (Markdown)\n"
            "  status [--json]       workers, generations, heartbeats, counters\n"
            "  reload                re-read the configuration, start a new worker generation\n"
            "  stop                  drain and stop the running master\n"
            "  keys generate PATH    write a new P-256 signing key (PEM, mode 0600)\n"
            "  migrate               create or upgrade the store's schema and indexes\n"
            "  backup [--output PATH] back the store up (by the running master, else here)\n"
            "  backup verify PATH    check a backup's integrity and key; the store is untouched\n"
            "  restore PATH [--force] replace the store's content with a backup\n"
            "  version               print the version\n"
            "\n"
            "--config FILE defaults to $AUTHD_CONFIG, else %s when it exists, else built-in\n"
            "defaults; AUTHD_<KEY> environment variables override any key.\n",
            CONFIG_DEFAULT_PATH);
}

/* The file to read: --config, $AUTHD_CONFIG, the default path if present, or none. */
static const char *config_path(const char *given, int *explicit_r)
{
    *explicit_r = 1;
    if (given != NULL)
        return given;
    const char *env = getenv("AUTHD_CONFIG");
    if (env != NULL && env[0] != '\0')
        return env;
    *explicit_r = 0;
    return access(CONFIG_DEFAULT_PATH, F_OK) == 0 ? CONFIG_DEFAULT_PATH : NULL;
}

static struct config *load_or_report(const char *path)
{
    char *errors = NULL;
    struct config *cfg = config_load(path, &errors);

    if (cfg == NULL) {
        fprintf(stderr, "%s\n", errors ? errors : "cannot load configuration");
        free(errors);
    }
    return cfg;
}

/* Signing keys and the password blocklist load (the store is checked when the master starts). */
static int check_auth(const struct config *cfg, const char *path)
{
    char err[512];
    const char *key = "tokens.signing_keys";

    if (cfg->tokens.signing_keys_count > 0) {
        struct jwt_keyring *kr = jwt_keyring_load(cfg->tokens.signing_keys,
                                                  cfg->tokens.signing_keys_count, err, sizeof(err));
        if (kr == NULL)
            goto fail;
        jwt_keyring_free(kr);
    }
    key = "store.driver";
    if (store_driver_find(cfg->store.driver) == NULL) {
        snprintf(err, sizeof(err), "\"%s\" is not built into this authd", cfg->store.driver);
        goto fail;
    }
    key = "password.blocklist";
    struct password_policy *pol =
        password_policy_new(cfg->password.min_length, cfg->password.max_length,
                            cfg->password.blocklist, err, sizeof(err));
    if (pol == NULL)
        goto fail;
    password_policy_free(pol);
    return 0;
fail : {
    int line = config_key_line(cfg, key);
    if (path && line > 0)
        fprintf(stderr, "%s:%d: %s: %s\n", path, line, key, err);
    else
        fprintf(stderr, "%s: %s: %s\n", path ? path : "defaults", key, err);
}
    return -1;
}

static int cmd_keys_generate(const char *path)
{
    char err[512];

    if (jwt_key_generate(path, err, sizeof(err)) < 0) {
        fprintf(stderr, "authd: %s\n", err);
        return 1;
    }
    printf("%s: new P-256 signing key; list it first in tokens.signing_keys and reload\n", path);
    return 0;
}

static int cmd_config_check(const char *path)
{
    char err[512];
    struct config *cfg = load_or_report(path);

    if (cfg == NULL)
        return 1;
    SSL_CTX *ctx =
        tls_context_new(cfg->listen.tls_certificate, cfg->listen.tls_key, err, sizeof(err));
    if (ctx == NULL) {
        int line = config_key_line(cfg, "listen.tls.certificate");
        if (path && line > 0)
            fprintf(stderr, "%s:%d: listen.tls: %s\n", path, line, err);
        else
            fprintf(stderr, "%s: listen.tls: %s\n", path ? path : "defaults", err);
        config_free(cfg);
        return 1;
    }
    SSL_CTX_free(ctx);
    if (check_auth(cfg, path) < 0) {
        config_free(cfg);
        return 1;
    }
    printf("%s: configuration ok (%d workers, https://%s:%d, admin http://%s:%d)\n",
           path ? path : "built-in defaults", config_worker_count(cfg), cfg->listen.address,
           cfg->listen.port, cfg->admin.address, cfg->admin.port);
    if (!backup_encrypted(cfg))
        printf("warning: %s\n", BACKUP_UNENCRYPTED_WARNING);
    config_free(cfg);
    return 0;
}

/* Sends `cmd` to the master; falls back to a signal through the PID file when given one. */
static int cmd_control(const struct config *cfg, const char *cmd, int fallback_sig, char **out_r)
{
    *out_r = control_request(cfg->control_socket, cmd, 30.0);
    if (*out_r != NULL)
        return strncmp(*out_r, "error", 5) == 0 ? 1 : 0;
    int err = errno;
    pid_t pid = pidfile_owner(cfg->pid_file);
    if (fallback_sig != 0 && pid > 0) {
        if (kill(pid, fallback_sig) < 0) {
            fprintf(stderr, "authd: kill(%d): %s\n", (int)pid, strerror(errno));
            return 1;
        }
        if (asprintf(out_r, "ok: signalled pid %d (control socket %s: %s)\n", (int)pid,
                     cfg->control_socket, strerror(err)) < 0)
            *out_r = NULL;
        return 0;
    }
    fprintf(stderr, "authd: no running master: control socket %s: %s\n", cfg->control_socket,
            strerror(err));
    return 1;
}

/* Waits for `pid` to exit, up to `seconds`. */
static int wait_gone(pid_t pid, double seconds)
{
    struct timespec ts = {0, 50 * 1000 * 1000};

    for (double waited = 0; waited < seconds; waited += 0.05) {
        if (kill(pid, 0) < 0 && errno == ESRCH)
            return 0;
        nanosleep(&ts, NULL);
    }
    return -1;
}

static int cmd_client(const struct config *cfg, const char *verb, int json)
{
    char *out = NULL;
    int rc;

    if (!strcmp(verb, "status")) {
        rc = cmd_control(cfg, json ? "status json" : "status", 0, &out);
    } else if (!strcmp(verb, "reload")) {
        rc = cmd_control(cfg, "reload", SIGHUP, &out);
    } else {
        pid_t pid = pidfile_owner(cfg->pid_file);
        rc = cmd_control(cfg, "stop", SIGTERM, &out);
        if (rc == 0 && pid > 0 && wait_gone(pid, cfg->supervisor.drain_timeout + 10) < 0) {
            fprintf(stderr, "authd: pid %d has not exited yet\n", (int)pid);
            rc = 1;
        }
    }
    if (out != NULL) {
        fputs(out, rc == 0 ? stdout : stderr);
        if (json && out[0] != '\0' && out[strlen(out) - 1] != '\n')
            fputc('\n', stdout);
    }
    free(out);
    return rc;
}

/* The configuration the offline verbs act on: strict, as `serve` would read it. */
static struct config *load_strict(const char *path)
{
    return load_or_report(path);
}

/* Runs the backup here (no master answers): a CronJob pod, or a host where authd is stopped. */
static int backup_here(const char *path, const char *output)
{
    struct backup_result res;
    char err[1024], line[4608];
    struct config *cfg = load_strict(path);

    if (cfg == NULL)
        return 1;
    int rc = backup_run(cfg, output, &res, err, sizeof(err));
    config_free(cfg);
    if (rc < 0) {
        fprintf(stderr, "authd backup: %s\n", err);
        return 1;
    }
    backup_describe_result(&res, line, sizeof(line));
    printf("ok: %s\n", line);
    return 0;
}

/* `authd backup [--output PATH]`: asks the running master, or backs up here when none runs. */
static int cmd_backup(const char *path, const char *output)
{
    char abs[4096], cmd[4200], *errors = NULL;

    if (output != NULL && output[0] != '/') {
        char cwd[2048];
        if (getcwd(cwd, sizeof(cwd)) == NULL) {
            fprintf(stderr, "authd backup: getcwd: %s\n", strerror(errno));
            return 1;
        }
        snprintf(abs, sizeof(abs), "%s/%s", cwd, output);
        output = abs;
    }
    if (output != NULL && strpbrk(output, "\r\n") != NULL) {
        fprintf(stderr, "authd backup: the output path holds a line break\n");
        return EXIT_USAGE;
    }
    struct config *cfg = config_load_lenient(path, &errors);
    if (cfg == NULL)
        fprintf(stderr, "%s\n", errors ? errors : "cannot load configuration");
    free(errors);
    if (cfg == NULL)
        return 1;
    snprintf(cmd, sizeof(cmd), "backup%s%s", output ? " " : "", output ? output : "");
    char *out = control_request(cfg->control_socket, cmd, 24 * 3600.0);
    int err = errno;
    config_free(cfg);
    if (out == NULL && err != ENOENT && err != ECONNREFUSED) {
        fprintf(stderr, "authd backup: control socket: %s\n", strerror(err));
        return 1;
    }
    if (out == NULL)
        return backup_here(path, output);
    int rc = strncmp(out, "ok", 2) == 0 ? 0 : 1;
    if (out[0] == '\0')
        fputs("authd backup: the master closed the connection without an answer\n", stderr);
    else if (rc == 0)
        fputs(out, stdout);
    else
        fprintf(stderr, "authd backup: %s", strncmp(out, "error: ", 7) ? out : out + 7);
    free(out);
    return rc;
}

static int cmd_backup_verify(const char *path, const char *file)
{
    struct backup_info info;
    char err[1024], line[4608], *errors = NULL;
    struct config *cfg = config_load_lenient(path, &errors);

    if (cfg == NULL) {
        fprintf(stderr, "%s\n", errors ? errors : "cannot load configuration");
        free(errors);
        return 1;
    }
    if (errors != NULL)
        fprintf(stderr, "authd: warning: %s\n", errors);
    free(errors);
    int rc = backup_verify(cfg, file, &info, err, sizeof(err));
    config_free(cfg);
    if (rc < 0) {
        fprintf(stderr, "authd backup verify: %s\n", err);
        return 1;
    }
    backup_describe_info(file, &info, line, sizeof(line));
    printf("ok: %s\n", line);
    return 0;
}

static int cmd_restore(const char *path, const char *file, int force)
{
    struct backup_info info;
    char err[1024];
    struct config *cfg = load_strict(path);

    if (cfg == NULL)
        return 1;
    char *pong = control_request(cfg->control_socket, "ping", 2.0);
    if (pong != NULL)
        fprintf(stderr, "authd restore: note: a master is running; its workers see the restored "
                        "content as soon as it commits\n");
    free(pong);
    int rc = backup_restore(cfg, file, force, &info, err, sizeof(err));
    const char *driver = cfg->store.driver;
    if (rc < 0) {
        fprintf(stderr, "authd restore: %s\n", err);
    } else {
        printf("ok: restored %s into the %s store: %lld users, %lld sessions, %lld refresh "
               "tokens, %lld audit events (made by the %s store)\n",
               file, driver, (long long)info.counts[0], (long long)info.counts[1],
               (long long)info.counts[2], (long long)info.counts[3], info.driver);
    }
    config_free(cfg);
    return rc < 0 ? 1 : 0;
}

/* backup [--output PATH] | backup verify PATH | restore PATH [--force]; args after the verb. */
static int cmd_backup_verbs(const char *path, const char *verb, int argc, char **argv)
{
    const char *output = NULL, *file = NULL;
    int force = 0;

    if (!strcmp(verb, "backup") && argc == 2 && !strcmp(argv[0], "verify"))
        return cmd_backup_verify(path, argv[1]);
    for (int i = 0; i < argc; i++) {
        if (!strcmp(verb, "backup") && (!strcmp(argv[i], "--output") || !strcmp(argv[i], "-o")) &&
            i + 1 < argc && output == NULL)
            output = argv[++i];
        else if (!strcmp(verb, "backup") && !strncmp(argv[i], "--output=", 9) && output == NULL)
            output = argv[i] + 9;
        else if (!strcmp(verb, "restore") && !strcmp(argv[i], "--force"))
            force = 1;
        else if (!strcmp(verb, "restore") && file == NULL && argv[i][0] != '-')
            file = argv[i];
        else
            goto usage;
    }
    if (!strcmp(verb, "backup"))
        return cmd_backup(path, output);
    if (file != NULL)
        return cmd_restore(path, file, force);
usage:
    usage(stderr);
    return EXIT_USAGE;
}

/*
 * `authd migrate`: opens the configured store with migrations (SQLite: the schema; MongoDB: the
 * indexes and schema version), idempotently; `serve` does the same at start-up and on reload.
 */
static int cmd_migrate(const char *path)
{
    char err[512] = "";
    struct config *cfg = load_or_report(path);

    if (cfg == NULL)
        return 1;
    const struct store_driver *drv = store_driver_find(cfg->store.driver);
    struct store *st = drv != NULL ? drv->open(cfg, 1, err, sizeof(err)) : NULL;
    if (st == NULL)
        fprintf(stderr, "authd migrate: %s store: %s\n", cfg->store.driver,
                drv != NULL ? err : "not built in");
    else
        printf("ok: the %s store is migrated\n", cfg->store.driver);
    if (st != NULL)
        drv->close(st);
    config_free(cfg);
    return st != NULL ? 0 : 1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"json", no_argument, NULL, 'j'},
                                         {NULL, 0, NULL, 0}};
    const char *given = NULL;
    int json = 0, c, explicit_path;

    while ((c = getopt_long(argc, argv, "+c:hj", opts, NULL)) != -1) {
        if (c == 'c')
            given = optarg;
        else if (c == 'j')
            json = 1;
        else if (c == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    const char *verb = optind < argc ? argv[optind++] : "serve";
    const char *sub = optind < argc ? argv[optind] : NULL;
    if (sub && !strcmp(sub, "--json")) {
        json = 1;
        optind++;
        sub = NULL;
    }
    if (!strcmp(verb, "version")) {
        printf("authd %s%s\n", PACKAGE_VERSION, TESTHOOK_VERSION_SUFFIX);
        return 0;
    }
    testhook_init();
    log_set_role("cli");
    if (!strcmp(verb, "keys")) {
        if (sub && !strcmp(sub, "generate") && optind + 2 == argc)
            return cmd_keys_generate(argv[optind + 1]);
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *path = config_path(given, &explicit_path);
    if (!strcmp(verb, "config") && sub && !strcmp(sub, "reference") && optind + 1 == argc) {
        config_print_reference(stdout);
        return 0;
    }
    if (!strcmp(verb, "config") && sub && !strcmp(sub, "check") && optind + 1 == argc)
        return cmd_config_check(path);
    if (!strcmp(verb, "backup") || !strcmp(verb, "restore"))
        return cmd_backup_verbs(path, verb, argc - optind, argv + optind);
    if (!strcmp(verb, "migrate") && optind == argc)
        return cmd_migrate(path);
    if (optind < argc || !strcmp(verb, "config") ||
        (strcmp(verb, "serve") && strcmp(verb, "status") && strcmp(verb, "reload") &&
         strcmp(verb, "stop"))) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(verb, "serve")) {
        struct config *cfg = load_or_report(path);
        return cfg ? supervisor_run(path, cfg) : 1;
    }
    /* The client verbs only need to find the master: on reload, the master judges the file. */
    char *errors = NULL;
    struct config *cfg = config_load_lenient(path, &errors);
    if (cfg == NULL) {
        fprintf(stderr, "%s\n", errors ? errors : "cannot load configuration");
        free(errors);
        return 1;
    }
    if (errors != NULL && strcmp(verb, "reload") != 0)
        fprintf(stderr, "authd: warning: %s\n", errors);
    free(errors);
    int rc = cmd_client(cfg, verb, json);
    config_free(cfg);
    return rc;
}
