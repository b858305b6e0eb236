/*
 * config: schema-driven loading and validation of authd's configuration.
 *
 * One table (keys[]) names every key with its type, default, range and documentation. The same
 * table drives defaults, file parsing, AUTHD_* environment overrides, `<key>_file` secrets,
 * unknown-key detection and the reference printed by `authd config reference`.
 */
#include "shared/config.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

enum key_type { K_INT, K_DURATION, K_STRING, K_BOOL, K_LIST, K_ENUM };

#define KEY_SECRET   0x1 /* also accepted as <key>_file (config) / AUTHD_<KEY>_FILE (env) */
#define KEY_NONEMPTY 0x2 /* an empty string is an error */

struct key {
    const char *path;
    enum key_type type;
    size_t offset;
    const char *def;
    double min, max;     /* K_INT, K_DURATION */
    const char *choices; /* K_ENUM: "a|b" */
    unsigned flags;
    const char *doc;
};

#define OFF(field) offsetof(struct config, field)
#define LINE_ENV   (-1) /* cfg->lines[] value of a key set by the environment */

static const struct key keys[] = {
    {"workers", K_INT, OFF(workers), "0", 0, CONFIG_MAX_WORKERS, NULL, 0,
     "Worker processes; 0 = one per online CPU."},
    {"pid_file", K_STRING, OFF(pid_file), "/run/authd/authd.pid", 0, 0, NULL, KEY_NONEMPTY,
     "PID file, locked while the master runs."},
    {"control_socket", K_STRING, OFF(control_socket), "/run/authd/control.sock", 0, 0, NULL,
     KEY_NONEMPTY, "Unix socket the CLI (status, reload, stop) talks to."},
    {"listen.address", K_STRING, OFF(listen.address), "0.0.0.0", 0, 0, NULL, KEY_NONEMPTY,
     "Public HTTPS listener address (IPv4 or IPv6 literal)."},
    {"listen.port", K_INT, OFF(listen.port), "8443", 1, 65535, NULL, 0, "Public HTTPS port."},
    {"listen.backlog", K_INT, OFF(listen.backlog), "511", 1, 65535, NULL, 0,
     "listen(2) backlog of both listeners."},
    {"listen.tls.certificate", K_STRING, OFF(listen.tls_certificate), "/etc/authd/tls/cert.pem", 0,
     0, NULL, KEY_NONEMPTY, "PEM certificate chain, leaf first. Re-read on reload."},
    {"listen.tls.key", K_STRING, OFF(listen.tls_key), "/etc/authd/tls/key.pem", 0, 0, NULL,
     KEY_NONEMPTY, "PEM private key of the certificate. Re-read on reload."},
    {"admin.address", K_STRING, OFF(admin.address), "127.0.0.1", 0, 0, NULL, KEY_NONEMPTY,
     "Admin listener (plain HTTP: /healthz, /readyz, /metrics)."},
    {"admin.port", K_INT, OFF(admin.port), "9100", 1, 65535, NULL, 0, "Admin listener port."},
    {"http.max_header_size", K_INT, OFF(http.max_header_size), "8192", 512, 1048576, NULL, 0,
     "Largest request line + headers in bytes; larger gets 431."},
    {"http.max_body_size", K_INT, OFF(http.max_body_size), "65536", 0, 67108864, NULL, 0,
     "Largest request body in bytes; larger gets 413."},
    {"http.max_connections", K_INT, OFF(http.max_connections), "4096", 1, 1000000, NULL, 0,
     "Open connections per worker; past it the worker stops accepting."},
    {"http.header_timeout", K_DURATION, OFF(http.header_timeout), "10", 0.1, 3600, NULL, 0,
     "Seconds to receive a whole request (TLS handshake, headers, body) once it started."},
    {"http.idle_timeout", K_DURATION, OFF(http.idle_timeout), "60", 0.1, 86400, NULL, 0,
     "Seconds a keep-alive connection may stay idle between requests."},
    {"supervisor.heartbeat_interval", K_DURATION, OFF(supervisor.heartbeat_interval), "0.5", 0.05,
     60, NULL, 0, "Seconds between worker heartbeats in the health segment."},
    {"supervisor.heartbeat_timeout", K_DURATION, OFF(supervisor.heartbeat_timeout), "10", 0.2, 3600,
     NULL, 0, "A worker whose heartbeat is older than this is killed and replaced."},
    {"supervisor.drain_timeout", K_DURATION, OFF(supervisor.drain_timeout), "30", 0, 3600, NULL, 0,
     "Seconds a draining worker (reload, stop) may take to finish in-flight requests."},
    {"supervisor.crash_window", K_DURATION, OFF(supervisor.crash_window), "5", 0.1, 3600, NULL, 0,
     "A worker exiting sooner than this after its start counts as a fast crash."},
    {"supervisor.crash_loop_limit", K_INT, OFF(supervisor.crash_loop_limit), "10", 1, 1000, NULL, 0,
     "Consecutive fast crashes of one worker after which the master gives up (exit 1)."},
    {"supervisor.backoff_max", K_DURATION, OFF(supervisor.backoff_max), "10", 0, 3600, NULL, 0,
     "Upper bound of the exponential respawn back-off after fast crashes."},
    {"offload.threads", K_INT, OFF(offload.threads), "2", 1, 64, NULL, 0,
     "Password-hashing threads per worker (argon2id for login, register, password change)."},
    {"offload.store_threads", K_INT, OFF(offload.store_threads), "2", 1, 64, NULL, 0,
     "Store threads per worker (refresh, introspection, sessions), apart from hashing."},
    {"offload.queue", K_INT, OFF(offload.queue), "64", 1, 100000, NULL, 0,
     "Jobs that may wait per pool and worker; past it requests get 503 + Retry-After."},
    {"password.min_length", K_INT, OFF(password.min_length), "12", 8, 64, NULL, 0,
     "Shortest password accepted, in Unicode code points after NFC."},
    {"password.max_length", K_INT, OFF(password.max_length), "128", 64, 1024, NULL, 0,
     "Longest password accepted, in code points (never truncated)."},
    {"password.blocklist", K_STRING, OFF(password.blocklist), "/usr/share/john/password.lst", 0, 0,
     NULL, 0, "Common passwords refused, one per line; empty = no list."},
    {"password.memory_kib", K_INT, OFF(password.memory_kib), "19456", 64, 4194304, NULL, 0,
     "argon2id memory cost in KiB (OWASP: 19456)."},
    {"password.iterations", K_INT, OFF(password.iterations), "2", 1, 100, NULL, 0,
     "argon2id time cost (OWASP: 2)."},
    {"password.parallelism", K_INT, OFF(password.parallelism), "1", 1, 64, NULL, 0,
     "argon2id lanes (OWASP: 1)."},
    {"store.driver", K_ENUM, OFF(store.driver), "sqlite", 0, 0, "sqlite|mongo", 0,
     "User store driver."},
    {"store.path", K_STRING, OFF(store.path), "/var/lib/authd/authd.db", 0, 0, NULL, 0,
     "SQLite database file (store.driver = sqlite)."},
    {"store.uri", K_STRING, OFF(store.uri), "", 0, 0, NULL, KEY_SECRET,
     "MongoDB connection URI (store.driver = mongo); may hold credentials."},
    {"store.database", K_STRING, OFF(store.database), "authd", 0, 0, NULL, 0,
     "MongoDB database name."},
    {"store.write_concern", K_STRING, OFF(store.write_concern), "majority", 0, 0, NULL,
     KEY_NONEMPTY, "MongoDB write concern: \"majority\" or a number of nodes."},
    {"store.timeout", K_DURATION, OFF(store.timeout), "2", 0.05, 60, NULL, 0,
     "MongoDB server selection, connect and socket timeout; past it requests get 503."},
    {"store.pool_size", K_INT, OFF(store.pool_size), "0", 0, 1000, NULL, 0,
     "MongoDB connections per worker; 0 = offload.store_threads + offload.threads."},
    {"ratelimit.backend", K_ENUM, OFF(ratelimit.backend), "shm", 0, 0, "shm|redis", 0,
     "Where rate-limit counters live: shared memory (one host) or Redis (many)."},
    {"ratelimit.redis.host", K_STRING, OFF(ratelimit.redis_host), "127.0.0.1", 0, 0, NULL, 0,
     "Redis host (ratelimit.backend = redis)."},
    {"ratelimit.redis.port", K_INT, OFF(ratelimit.redis_port), "6379", 1, 65535, NULL, 0,
     "Redis port."},
    {"ratelimit.redis.password", K_STRING, OFF(ratelimit.redis_password), "", 0, 0, NULL,
     KEY_SECRET, "Redis AUTH password."},
    {"ratelimit.redis.timeout", K_DURATION, OFF(ratelimit.redis_timeout), "0.05", 0.001, 10, NULL,
     0, "A Redis check slower than this falls back to the shm backend at once."},
    {"ratelimit.redis.retry_interval", K_DURATION, OFF(ratelimit.redis_retry_interval), "1", 0.05,
     300, NULL, 0, "Seconds between reconnection attempts while Redis is down."},
    {"ratelimit.redis.prefix", K_STRING, OFF(ratelimit.redis_prefix), "authd:rl:", 0, 0, NULL, 0,
     "Prefix of every Redis key authd writes (at most 64 bytes)."},
    {"ratelimit.shm.slots", K_INT, OFF(ratelimit.shm_slots), "16384", 256, 4194304, NULL, 0,
     "Entries of the host-wide shared-memory limiter table (also the Redis fallback): a quarter "
     "for client addresses, the rest for accounts; see Sizing in docs/operations.md."},
    {"ratelimit.trusted_proxies", K_LIST, OFF(ratelimit.trusted_proxies), "", 0,
     CONFIG_MAX_TRUSTED_PROXIES, NULL, 0,
     "Peers (address or CIDR) whose X-Forwarded-For names the client; empty = trust none."},
    {"ratelimit.ipv6_prefix", K_INT, OFF(ratelimit.ipv6_prefix), "64", 32, 128, NULL, 0,
     "IPv6 clients are limited per network of this prefix length (IPv4 per address)."},
    {"ratelimit.global.limit", K_INT, OFF(ratelimit.global.limit), "600", 0, 100000000, NULL, 0,
     "Requests per client IP per period on every public route; 0 = off."},
    {"ratelimit.global.period", K_DURATION, OFF(ratelimit.global.period), "60", 1, 86400, NULL, 0,
     "Period of ratelimit.global.limit, seconds."},
    {"ratelimit.login.limit", K_INT, OFF(ratelimit.login.limit), "30", 0, 100000000, NULL, 0,
     "Login attempts per client IP per period; 0 = off."},
    {"ratelimit.login.period", K_DURATION, OFF(ratelimit.login.period), "60", 1, 86400, NULL, 0,
     "Period of ratelimit.login.limit, seconds."},
    {"ratelimit.register.limit", K_INT, OFF(ratelimit.register_.limit), "10", 0, 100000000, NULL, 0,
     "Registrations per client IP per period; 0 = off."},
    {"ratelimit.register.period", K_DURATION, OFF(ratelimit.register_.period), "3600", 1, 86400,
     NULL, 0, "Period of ratelimit.register.limit, seconds."},
    {"ratelimit.refresh.limit", K_INT, OFF(ratelimit.refresh.limit), "60", 0, 100000000, NULL, 0,
     "Token refreshes per client IP per period; 0 = off."},
    {"ratelimit.refresh.period", K_DURATION, OFF(ratelimit.refresh.period), "60", 1, 86400, NULL, 0,
     "Period of ratelimit.refresh.limit, seconds."},
    {"ratelimit.lockout.threshold", K_INT, OFF(ratelimit.lockout.threshold), "5", 0, 100, NULL, 0,
     "Consecutive failed logins of one account before delays start; 0 = no account lockout "
     "(for tests and benchmarks only)."},
    {"ratelimit.lockout.base_delay", K_DURATION, OFF(ratelimit.lockout.base_delay), "1", 0.1, 3600,
     NULL, 0, "First delay after the threshold; it doubles with each further failure."},
    {"ratelimit.lockout.max_delay", K_DURATION, OFF(ratelimit.lockout.max_delay), "900", 1, 86400,
     NULL, 0, "Cap of the per-account delay."},
    {"ratelimit.lockout.max_failures", K_INT, OFF(ratelimit.lockout.max_failures), "100", 2, 100,
     NULL, 0,
     "Consecutive failures after which the account refuses logins until reset_after passes "
     "(NIST SP 800-63B: at most 100)."},
    {"ratelimit.lockout.reset_after", K_DURATION, OFF(ratelimit.lockout.reset_after), "86400", 60,
     2592000, NULL, 0, "An account's failure count is forgotten this long after its last failure."},
    {"tokens.issuer", K_STRING, OFF(tokens.issuer), "https://localhost:8443", 0, 0, NULL,
     KEY_NONEMPTY, "JWT iss claim and OpenID issuer."},
    {"tokens.audience", K_STRING, OFF(tokens.audience), "authd", 0, 0, NULL, KEY_NONEMPTY,
     "JWT aud claim."},
    {"tokens.signing_keys", K_LIST, OFF(tokens.signing_keys), "", 0, CONFIG_MAX_SIGNING_KEY, NULL,
     0,
     "PEM P-256 private key files; the first signs, the others still verify (rotation). "
     "Empty: an ephemeral key (tokens die with the master)."},
    {"tokens.access_ttl", K_INT, OFF(tokens.access_ttl), "900", 30, 86400, NULL, 0,
     "Access token lifetime in seconds."},
    {"tokens.refresh_ttl", K_INT, OFF(tokens.refresh_ttl), "2592000", 60, 31536000, NULL, 0,
     "Session (refresh-token family) absolute lifetime in seconds."},
    {"tokens.refresh_idle_ttl", K_INT, OFF(tokens.refresh_idle_ttl), "1209600", 60, 31536000, NULL,
     0, "A session unused for this many seconds expires."},
    {"tokens.leeway", K_INT, OFF(tokens.leeway), "30", 0, 300, NULL, 0,
     "Clock skew tolerated when checking exp/nbf/iat, in seconds."},
    {"retention.sessions", K_DURATION, OFF(retention.sessions), "604800", 0, 315360000, NULL, 0,
     "Seconds ended sessions (revoked or expired) and their refresh-token hashes are kept; "
     "0 = forever. Live sessions keep all their hashes (reuse detection)."},
    {"retention.audit", K_DURATION, OFF(retention.audit), "7776000", 0, 315360000, NULL, 0,
     "Seconds audit events are kept (default 90 days); 0 = forever."},
    {"retention.interval", K_DURATION, OFF(retention.interval), "600", 0, 86400, NULL, 0,
     "Seconds between pruning passes (one worker runs them); 0 = never prune."},
    {"retention.batch", K_INT, OFF(retention.batch), "500", 1, 100000, NULL, 0,
     "Most records one pruning step deletes (one short store transaction)."},
    {"retention.pause", K_DURATION, OFF(retention.pause), "0.1", 0, 60, NULL, 0,
     "Seconds between two pruning steps of a pass, so request traffic interleaves."},
    {"backup.directory", K_STRING, OFF(backup.directory), "/var/lib/authd/backups", 0, 0, NULL, 0,
     "Where `authd backup` writes."},
    {"backup.keep", K_INT, OFF(backup.keep), "7", 1, 10000, NULL, 0,
     "Newest backups kept in backup.directory; older ones are deleted after a success."},
    {"backup.max_age", K_DURATION, OFF(backup.max_age), "0", 0, 315360000, NULL, 0,
     "Backups older than this many seconds are deleted too; 0 = no age limit."},
    {"backup.encryption_key_file", K_STRING, OFF(backup.encryption_key_file), "", 0, 0, NULL, 0,
     "File holding the backup encryption key; empty = unencrypted."},
    {"log.level", K_ENUM, OFF(log.level), "info", 0, 0, "debug|info|warning|error", 0,
     "Least severe level written."},
    {"log.file", K_STRING, OFF(log.file), "", 0, 0, NULL, 0,
     "Log file (JSON lines); empty = stderr. Reopened on SIGUSR1."},
    {"log.access", K_BOOL, OFF(log.access), "true", 0, 0, NULL, 0,
     "Write one JSON access-log line per request."},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* ---- error collection ---- */

struct errors {
    char *buf;
    size_t len;
    int count;
};

static void __attribute__((format(printf, 2, 3))) err_add(struct errors *e, const char *fmt, ...)
{
    va_list ap;
    char line[1024];

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    size_t n = strlen(line);
    char *nb = realloc(e->buf, e->len + n + 2);
    if (nb == NULL)
        return;
    e->buf = nb;
    memcpy(e->buf + e->len, line, n);
    e->len += n;
    e->buf[e->len++] = '\n';
    e->buf[e->len] = '\0';
    e->count++;
}

/* ---- typed setters: `where` names the source for messages ---- */

static void *field(struct config *cfg, const struct key *k)
{
    return (char *)cfg + k->offset;
}

static bool enum_ok(const struct key *k, const char *v)
{
    size_t n = strlen(v);
    const char *p = k->choices;

    while (p != NULL && *p != '\0') {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

static void set_string(struct config *cfg, const struct key *k, const char *v, const char *where,
                       struct errors *e)
{
    char **dst = field(cfg, k);

    if (k->type == K_ENUM && !enum_ok(k, v)) {
        err_add(e, "%s: %s must be one of %s, not \"%s\"", where, k->path, k->choices, v);
        return;
    }
    if ((k->flags & KEY_NONEMPTY) && v[0] == '\0') {
        err_add(e, "%s: %s must not be empty", where, k->path);
        return;
    }
    if (strlen(v) > 4096) {
        err_add(e, "%s: %s is longer than 4096 bytes", where, k->path);
        return;
    }
    free(*dst);
    *dst = strdup(v);
}

static void set_number(struct config *cfg, const struct key *k, double v, const char *where,
                       struct errors *e)
{
    if (!(v >= k->min && v <= k->max)) {
        err_add(e, "%s: %s = %.15g is out of range [%.15g, %.15g]", where, k->path, v, k->min,
                k->max);
        return;
    }
    if (k->type == K_INT)
        *(int *)field(cfg, k) = (int)v;
    else
        *(double *)field(cfg, k) = v;
}

/*
 * A K_LIST field is `char *name[k->max]` directly followed by `int name_count` (asserted below
 * for every list key), so one pair of functions serves them all.
 */
static int *list_count(struct config *cfg, const struct key *k)
{
    return (int *)((char *)field(cfg, k) + (size_t)k->max * sizeof(char *));
}

_Static_assert(offsetof(struct config, tokens.signing_keys_count) ==
                   offsetof(struct config, tokens.signing_keys) +
                       CONFIG_MAX_SIGNING_KEY * sizeof(char *),
               "list count follows its array");
_Static_assert(offsetof(struct config, ratelimit.trusted_proxies_count) ==
                   offsetof(struct config, ratelimit.trusted_proxies) +
                       CONFIG_MAX_TRUSTED_PROXIES * sizeof(char *),
               "list count follows its array");

static void list_clear(struct config *cfg, const struct key *k)
{
    char **arr = field(cfg, k);

    for (int i = 0; i < (int)k->max; i++) {
        free(arr[i]);
        arr[i] = NULL;
    }
    *list_count(cfg, k) = 0;
}

static void list_append(struct config *cfg, const struct key *k, const char *v, const char *where,
                        struct errors *e)
{
    char **arr = field(cfg, k);
    int *count = list_count(cfg, k);

    if (*count >= (int)k->max) {
        err_add(e, "%s: %s holds more than %d entries", where, k->path, (int)k->max);
        return;
    }
    if (v[0] == '\0') {
        err_add(e, "%s: %s entry %d is empty", where, k->path, *count + 1);
        return;
    }
    arr[(*count)++] = strdup(v);
}

/* Parses `text` (a default or an environment value) into key `k`. */
static void set_text(struct config *cfg, const struct key *k, const char *text, const char *where,
                     struct errors *e)
{
    char *end;

    switch (k->type) {
    case K_STRING:
    case K_ENUM:
        set_string(cfg, k, text, where, e);
        break;
    case K_INT: {
        errno = 0;
        long v = strtol(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0')
            err_add(e, "%s: %s expects an integer, got \"%s\"", where, k->path, text);
        else
            set_number(cfg, k, (double)v, where, e);
        break;
    }
    case K_DURATION: {
        errno = 0;
        double v = strtod(text, &end);
        if (errno != 0 || end == text || *end != '\0' || !isfinite(v))
            err_add(e, "%s: %s expects a number of seconds, got \"%s\"", where, k->path, text);
        else
            set_number(cfg, k, v, where, e);
        break;
    }
    case K_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "1") || !strcmp(text, "yes"))
            *(int *)field(cfg, k) = 1;
        else if (!strcmp(text, "false") || !strcmp(text, "0") || !strcmp(text, "no"))
            *(int *)field(cfg, k) = 0;
        else
            err_add(e, "%s: %s expects true or false, got \"%s\"", where, k->path, text);
        break;
    case K_LIST: {
        list_clear(cfg, k);
        if (text[0] == '\0')
            break; /* an empty variable means an empty list */
        char *copy = strdup(text), *rest = copy, *t;
        while ((t = strsep(&rest, ",")) != NULL)
            list_append(cfg, k, t, where, e);
        free(copy);
        break;
    }
    }
}

/* ---- file values ---- */

static const char *type_name(int t)
{
    switch (t) {
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a float";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    }
    return "an unknown type";
}

static const char *want_name(enum key_type t)
{
    switch (t) {
    case K_INT:
        return "an integer";
    case K_DURATION:
        return "a number of seconds";
    case K_STRING:
    case K_ENUM:
        return "a string";
    case K_BOOL:
        return "true or false";
    case K_LIST:
        return "an array of strings";
    }
    return "?";
}

static void set_setting(struct config *cfg, const struct key *k, config_setting_t *s,
                        const char *where, struct errors *e)
{
    int t = config_setting_type(s);

    switch (k->type) {
    case K_INT:
        if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
            set_number(cfg, k, (double)config_setting_get_int64(s), where, e);
            return;
        }
        break;
    case K_DURATION:
        if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
            set_number(cfg, k, (double)config_setting_get_int64(s), where, e);
            return;
        }
        if (t == CONFIG_TYPE_FLOAT) {
            set_number(cfg, k, config_setting_get_float(s), where, e);
            return;
        }
        break;
    case K_STRING:
    case K_ENUM:
        if (t == CONFIG_TYPE_STRING) {
            set_string(cfg, k, config_setting_get_string(s), where, e);
            return;
        }
        break;
    case K_BOOL:
        if (t == CONFIG_TYPE_BOOL) {
            *(int *)field(cfg, k) = config_setting_get_bool(s);
            return;
        }
        break;
    case K_LIST:
        if (t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) {
            list_clear(cfg, k);
            for (int i = 0; i < config_setting_length(s); i++) {
                config_setting_t *el = config_setting_get_elem(s, (unsigned)i);
                if (config_setting_type(el) != CONFIG_TYPE_STRING) {
                    err_add(e, "%s: %s entries must be strings", where, k->path);
                    return;
                }
                list_append(cfg, k, config_setting_get_string(el), where, e);
            }
            return;
        }
        break;
    }
    err_add(e, "%s: %s expects %s, got %s", where, k->path, want_name(k->type), type_name(t));
}

/* Reads a secret file: the whole content without trailing CR/LF characters, at most 4 KiB. */
static char *read_secret(const char *path, const char **why_r)
{
    FILE *f = fopen(path, "re");
    char buf[4097];
    size_t n;

    if (f == NULL) {
        *why_r = strerror(errno);
        return NULL;
    }
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    if (n == sizeof(buf)) {
        *why_r = "larger than 4096 bytes";
        return NULL;
    }
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    return strdup(buf);
}

static void set_secret_file(struct config *cfg, const struct key *k, const char *file,
                            const char *where, struct errors *e)
{
    const char *why = NULL;
    char *v = read_secret(file, &why);

    if (v == NULL) {
        err_add(e, "%s: %s_file: cannot read %s: %s", where, k->path, file, why);
        return;
    }
    set_string(cfg, k, v, where, e);
    free(v);
}

static const char *setting_file(config_setting_t *s, const char *fallback)
{
    const char *f = config_setting_source_file(s);
    return f ? f : fallback;
}

static void apply_file_key(struct config *cfg, config_t *lc, size_t i, const char *path,
                           struct errors *e)
{
    const struct key *k = &keys[i];
    char where[PATH_MAX + 32], fpath[256];
    config_setting_t *s = config_lookup(lc, k->path);
    config_setting_t *sf = NULL;

    if (k->flags & KEY_SECRET) {
        snprintf(fpath, sizeof(fpath), "%s_file", k->path);
        sf = config_lookup(lc, fpath);
    }
    if (s != NULL && sf != NULL) {
        snprintf(where, sizeof(where), "%s:%d", setting_file(sf, path),
                 config_setting_source_line(sf));
        err_add(e, "%s: set either %s or %s_file, not both", where, k->path, k->path);
        return;
    }
    if (sf != NULL) {
        snprintf(where, sizeof(where), "%s:%d", setting_file(sf, path),
                 config_setting_source_line(sf));
        if (config_setting_type(sf) != CONFIG_TYPE_STRING)
            err_add(e, "%s: %s_file expects a string, got %s", where, k->path,
                    type_name(config_setting_type(sf)));
        else
            set_secret_file(cfg, k, config_setting_get_string(sf), where, e);
        cfg->lines[i] = config_setting_source_line(sf);
        return;
    }
    if (s == NULL)
        return;
    snprintf(where, sizeof(where), "%s:%d", setting_file(s, path), config_setting_source_line(s));
    set_setting(cfg, k, s, where, e);
    cfg->lines[i] = config_setting_source_line(s);
}

/* ---- unknown keys ---- */

static bool known_leaf(const char *path)
{
    for (size_t i = 0; i < NKEYS; i++) {
        size_t n = strlen(keys[i].path);
        if (!strcmp(keys[i].path, path))
            return true;
        if ((keys[i].flags & KEY_SECRET) && !strncmp(keys[i].path, path, n) &&
            !strcmp(path + n, "_file"))
            return true;
    }
    return false;
}

static bool known_group(const char *path)
{
    size_t n = strlen(path);

    for (size_t i = 0; i < NKEYS; i++)
        if (!strncmp(keys[i].path, path, n) && keys[i].path[n] == '.')
            return true;
    return false;
}

static void check_unknown(config_setting_t *group, const char *prefix, const char *file,
                          struct errors *e)
{
    for (int i = 0; i < config_setting_length(group); i++) {
        config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(s);
        char path[512];

        if (name == NULL)
            continue;
        snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", name);
        bool group_here = config_setting_type(s) == CONFIG_TYPE_GROUP;
        if (group_here && known_group(path)) {
            check_unknown(s, path, file, e);
        } else if (!group_here && known_leaf(path)) {
            continue;
        } else if (!group_here && known_group(path)) {
            err_add(e, "%s:%d: %s expects a group { ... }, got %s", setting_file(s, file),
                    config_setting_source_line(s), path, type_name(config_setting_type(s)));
        } else if (group_here && known_leaf(path)) {
            err_add(e, "%s:%d: %s expects a value, got a group", setting_file(s, file),
                    config_setting_source_line(s), path);
        } else {
            err_add(e, "%s:%d: unknown key '%s'", setting_file(s, file),
                    config_setting_source_line(s), path);
        }
    }
}

/* ---- environment ---- */

static void env_name(const char *path, const char *suffix, char *out, size_t outlen)
{
    size_t j = 0;

    j += (size_t)snprintf(out, outlen, "AUTHD_");
    for (const char *p = path; *p && j + 1 < outlen; p++)
        out[j++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    out[j] = '\0';
    strncat(out, suffix, outlen - strlen(out) - 1);
}

static void apply_env(struct config *cfg, struct errors *e)
{
    char name[256], where[300];

    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        env_name(k->path, "", name, sizeof(name));
        const char *v = getenv(name);
        snprintf(where, sizeof(where), "environment %s", name);
        if (v != NULL) {
            set_text(cfg, k, v, where, e);
            cfg->lines[i] = LINE_ENV;
        }
        if (k->flags & KEY_SECRET) {
            env_name(k->path, "_FILE", name, sizeof(name));
            const char *f = getenv(name);
            snprintf(where, sizeof(where), "environment %s", name);
            if (f != NULL && v != NULL)
                err_add(e, "%s: set either %.*s or %s, not both", where, (int)(strlen(name) - 5),
                        name, name);
            else if (f != NULL) {
                set_secret_file(cfg, k, f, where, e);
                cfg->lines[i] = LINE_ENV;
            }
        }
    }
}

/* ---- cross-key rules ---- */

static int key_index(const char *path)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].path, path))
            return (int)i;
    return -1;
}

/* Names where `a` (or else `b`) was set: "file:line", "environment AUTHD_X" or the file. */
static void where_of(const struct config *cfg, const char *a, const char *b, char *out, size_t n)
{
    const char *keys2[2] = {a, b};
    char env[256];

    for (int j = 0; j < 2; j++) {
        int i = keys2[j] ? key_index(keys2[j]) : -1;
        if (i < 0)
            continue;
        if (cfg->lines[i] > 0 && cfg->path != NULL) {
            snprintf(out, n, "%s:%d", cfg->path, cfg->lines[i]);
            return;
        }
        if (cfg->lines[i] == LINE_ENV) {
            env_name(keys2[j], "", env, sizeof(env));
            snprintf(out, n, "environment %s", env);
            return;
        }
    }
    snprintf(out, n, "%s", cfg->path ? cfg->path : "defaults");
}

static void check_rules(const struct config *cfg, struct errors *e)
{
    char w[PATH_MAX + 32];

    if (!strcmp(cfg->store.driver, "mongo") && cfg->store.uri[0] == '\0') {
        where_of(cfg, "store.driver", "store.uri", w, sizeof(w));
        err_add(e, "%s: store.driver = \"mongo\" needs store.uri", w);
    }
    if (!strcmp(cfg->store.driver, "sqlite") && cfg->store.path[0] == '\0') {
        where_of(cfg, "store.path", "store.driver", w, sizeof(w));
        err_add(e, "%s: store.driver = \"sqlite\" needs store.path", w);
    }
    if (!strcmp(cfg->ratelimit.backend, "redis") && cfg->ratelimit.redis_host[0] == '\0') {
        where_of(cfg, "ratelimit.redis.host", "ratelimit.backend", w, sizeof(w));
        err_add(e, "%s: ratelimit.backend = \"redis\" needs ratelimit.redis.host", w);
    }
    if (cfg->tokens.access_ttl >= cfg->tokens.refresh_ttl) {
        where_of(cfg, "tokens.access_ttl", "tokens.refresh_ttl", w, sizeof(w));
        err_add(e, "%s: tokens.access_ttl must be shorter than tokens.refresh_ttl", w);
    }
    if (cfg->listen.port == cfg->admin.port) {
        where_of(cfg, "admin.port", "listen.port", w, sizeof(w));
        err_add(e, "%s: admin.port must differ from listen.port", w);
    }
    if (cfg->password.min_length > cfg->password.max_length) {
        where_of(cfg, "password.min_length", "password.max_length", w, sizeof(w));
        err_add(e, "%s: password.min_length must not exceed password.max_length", w);
    }
    for (int i = 0; i < cfg->ratelimit.trusted_proxies_count; i++) {
        struct config_cidr c;
        if (config_parse_cidr(cfg->ratelimit.trusted_proxies[i], &c) < 0) {
            where_of(cfg, "ratelimit.trusted_proxies", NULL, w, sizeof(w));
            err_add(e, "%s: ratelimit.trusted_proxies entry \"%s\" is not an address or CIDR", w,
                    cfg->ratelimit.trusted_proxies[i]);
        }
    }
    if (strlen(cfg->ratelimit.redis_prefix) > CONFIG_RL_PREFIX_MAX) {
        where_of(cfg, "ratelimit.redis.prefix", NULL, w, sizeof(w));
        err_add(e, "%s: ratelimit.redis.prefix is longer than %d bytes", w, CONFIG_RL_PREFIX_MAX);
    }
    if (cfg->ratelimit.lockout.max_delay < cfg->ratelimit.lockout.base_delay) {
        where_of(cfg, "ratelimit.lockout.max_delay", "ratelimit.lockout.base_delay", w, sizeof(w));
        err_add(e, "%s: ratelimit.lockout.max_delay must not be below base_delay", w);
    }
    if (cfg->ratelimit.lockout.threshold >= cfg->ratelimit.lockout.max_failures) {
        where_of(cfg, "ratelimit.lockout.threshold", "ratelimit.lockout.max_failures", w,
                 sizeof(w));
        err_add(e, "%s: ratelimit.lockout.threshold must be below max_failures", w);
    }
    if (strcmp(cfg->store.write_concern, "majority") != 0) {
        char *end;
        long n = strtol(cfg->store.write_concern, &end, 10);
        if (*end != '\0' || end == cfg->store.write_concern || n < 0 || n > 50) {
            where_of(cfg, "store.write_concern", NULL, w, sizeof(w));
            err_add(e, "%s: store.write_concern must be \"majority\" or a number from 0 to 50", w);
        }
    }
    if (cfg->supervisor.heartbeat_timeout < 2 * cfg->supervisor.heartbeat_interval) {
        where_of(cfg, "supervisor.heartbeat_timeout", "supervisor.heartbeat_interval", w,
                 sizeof(w));
        err_add(e, "%s: supervisor.heartbeat_timeout must be at least twice the interval", w);
    }
}

/* ---- public ---- */

int config_parse_cidr(const char *text, struct config_cidr *out)
{
    char addr[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(text, '/');
    size_t n = slash ? (size_t)(slash - text) : strlen(text);

    if (n == 0 || n >= sizeof(addr))
        return -1;
    memcpy(addr, text, n);
    addr[n] = '\0';
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, addr, out->addr) == 1) {
        out->family = AF_INET;
        out->prefix = 32;
    } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
        out->family = AF_INET6;
        out->prefix = 128;
    } else {
        return -1;
    }
    if (slash != NULL) {
        char *end;
        errno = 0;
        long p = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || errno != 0 || p < 0 || p > out->prefix)
            return -1;
        out->prefix = (int)p;
    }
    return 0;
}

int config_cidr_match(const struct config_cidr *c, int family, const void *addr)
{
    const unsigned char *a = addr;
    int bits = c->prefix;

    if (family != c->family)
        return 0;
    for (int i = 0; bits > 0; i++, bits -= 8) {
        unsigned char mask = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));
        if ((a[i] & mask) != (c->addr[i] & mask))
            return 0;
    }
    return 1;
}

int config_key_line(const struct config *cfg, const char *key)
{
    int i = key_index(key);
    return i < 0 || cfg->lines[i] < 0 ? 0 : cfg->lines[i];
}

int config_worker_count(const struct config *cfg)
{
    long n = cfg->workers;

    if (n == 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (n > CONFIG_MAX_WORKERS)
        n = CONFIG_MAX_WORKERS;
    return (int)n;
}

/*
 * Reads `path` into cfg. Returns 0, or -1 when nothing usable came from it. After a syntax
 * error libconfig keeps what it parsed before the error: in lenient mode those keys are used
 * (so the CLI still finds the master's socket), otherwise the file is refused whole.
 */
static int load_file(struct config *cfg, const char *path, int lenient, struct errors *e)
{
    config_t lc;
    struct stat st;

    if (stat(path, &st) < 0 || access(path, R_OK) < 0) {
        err_add(e, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        err_add(e, "%s: cannot read: is a directory", path);
        return -1;
    }
    config_init(&lc);
    if (config_read_file(&lc, path) != CONFIG_TRUE) {
        const char *f = config_error_file(&lc);
        if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
            err_add(e, "%s: cannot read", path);
        else
            err_add(e, "%s:%d: syntax error: %s", f ? f : path, config_error_line(&lc),
                    config_error_text(&lc));
        if (!lenient || config_error_type(&lc) == CONFIG_ERR_FILE_IO) {
            config_destroy(&lc);
            return -1;
        }
    }
    check_unknown(config_root_setting(&lc), "", path, e);
    for (size_t i = 0; i < NKEYS; i++)
        apply_file_key(cfg, &lc, i, path, e);
    config_destroy(&lc);
    return 0;
}

static struct config *load(const char *path, int lenient, char **errors_r)
{
    struct errors e = {0};
    struct config *cfg = calloc(1, sizeof(*cfg));

    *errors_r = NULL;
    if (cfg == NULL || (cfg->lines = calloc(NKEYS, sizeof(int))) == NULL) {
        free(cfg);
        *errors_r = strdup("out of memory");
        return NULL;
    }
    for (size_t i = 0; i < NKEYS; i++)
        set_text(cfg, &keys[i], keys[i].def, "default", &e);
    if (path != NULL) {
        cfg->path = strdup(path);
        if (load_file(cfg, path, lenient, &e) < 0) {
            lenient = 0; /* nothing usable came from the file */
            goto out;
        }
    }
    apply_env(cfg, &e);
    if (e.count == 0)
        check_rules(cfg, &e);
out:
    if (e.count > 0 && lenient) {
        if (e.buf[e.len - 1] == '\n')
            e.buf[e.len - 1] = '\0';
        *errors_r = e.buf;
        return cfg;
    }
    if (e.count > 0) {
        config_free(cfg);
        if (e.len > 0 && e.buf[e.len - 1] == '\n')
            e.buf[e.len - 1] = '\0';
        *errors_r = e.buf;
        return NULL;
    }
    free(e.buf);
    return cfg;
}

struct config *config_load(const char *path, char **errors_r)
{
    return load(path, 0, errors_r);
}

struct config *config_load_lenient(const char *path, char **errors_r)
{
    return load(path, 1, errors_r);
}

void config_free(struct config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type == K_STRING || keys[i].type == K_ENUM)
            free(*(char **)field(cfg, &keys[i]));
        else if (keys[i].type == K_LIST)
            list_clear(cfg, &keys[i]);
    }
    free(cfg->lines);
    free(cfg->path);
    free(cfg);
}

void config_print_reference(FILE *out)
{
    static const char *const tnames[] = {"integer", "seconds",      "string",
                                         "boolean", "string array", "enum"};
    char env[256];

    fprintf(out, "| key | type | default | environment | meaning |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        env_name(k->path, "", env, sizeof(env));
        fprintf(out, "| `%s` | %s", k->path, tnames[k->type]);
        if (k->type == K_ENUM) {
            fputs(": ", out);
            for (const char *c = k->choices; *c; c++)
                fputs(*c == '|' ? " \\| " : (char[]){*c, '\0'}, out);
        }
        const char *def = k->def[0] ? k->def : (k->type == K_LIST ? "[]" : "\"\"");
        fprintf(out, " | `%s` | `%s`%s | %s |\n", def, env,
                (k->flags & KEY_SECRET) ? " (or `_FILE`)" : "", k->doc);
    }
}
