/*
 * config: the whole runtime configuration of authd as one immutable object.
 *
 * A config is built from built-in defaults, then a libconfig file, then AUTHD_* environment
 * overrides; every key is described by one schema table (config.c) that also drives type and
 * range checks, unknown-key detection and `<key>_file` secrets. Reload builds a new object and
 * swaps it in only when it validated completely.
 */
#ifndef AUTHD_CONFIG_H
#define AUTHD_CONFIG_H

#include <stdio.h>

#define CONFIG_MAX_WORKERS         64
#define CONFIG_MAX_SIGNING_KEY     8
#define CONFIG_MAX_TRUSTED_PROXIES 32
/* Longest ratelimit.redis.prefix (bytes): Redis keys are built in fixed buffers. */
#define CONFIG_RL_PREFIX_MAX 64
#define CONFIG_DEFAULT_PATH  "/etc/authd/authd.conf"

struct config {
    char *path; /* file read, or NULL when running on built-in defaults */

    int workers; /* as configured; 0 = one per CPU (see config_worker_count) */
    char *pid_file;
    char *control_socket;

    struct {
        char *address;
        int port;
        int backlog;
        char *tls_certificate;
        char *tls_key;
    } listen;

    struct {
        char *address;
        int port;
    } admin;

    struct {
        int max_header_size;
        int max_body_size;
        int max_connections;
        double header_timeout;
        double idle_timeout;
    } http;

    struct {
        double heartbeat_interval;
        double heartbeat_timeout;
        double drain_timeout;
        double crash_window;
        int crash_loop_limit;
        double backoff_max;
    } supervisor;

    struct {
        int threads;
        int store_threads;
        int queue;
    } offload;

    struct {
        int min_length;
        int max_length;
        char *blocklist;
        int memory_kib;
        int iterations;
        int parallelism;
    } password;

    struct {
        char *driver;
        char *path;
        char *uri;
        char *database;
        char *write_concern;
        double timeout;
        int pool_size;
    } store;

    struct {
        char *backend;
        char *redis_host;
        int redis_port;
        char *redis_password;
        double redis_timeout;
        double redis_retry_interval;
        char *redis_prefix;
        int shm_slots;
        char *trusted_proxies[CONFIG_MAX_TRUSTED_PROXIES];
        int trusted_proxies_count;
        int ipv6_prefix;
        struct config_rate {
            int limit;
            double period;
        } global, login, register_, refresh;
        struct {
            int threshold;
            double base_delay;
            double max_delay;
            int max_failures;
            double reset_after;
        } lockout;
    } ratelimit;

    struct {
        char *issuer;
        char *audience;
        char *signing_keys[CONFIG_MAX_SIGNING_KEY];
        int signing_keys_count;
        int access_ttl;
        int refresh_ttl;
        int refresh_idle_ttl;
        int leeway;
    } tokens;

    struct {
        double sessions; /* kept this long after they ended; 0 = forever */
        double audit;    /* audit events kept this long; 0 = forever */
        double interval; /* between pruning passes; 0 = no pruning */
        int batch;       /* most records deleted per store call (one short transaction) */
        double pause;    /* between two batches of a pass */
    } retention;

    struct {
        char *directory;
        int keep;
        double max_age;
        char *encryption_key_file;
    } backup;

    struct {
        char *level;
        char *file;
        int access;
    } log;

    int *lines; /* per schema entry: source line in the file, 0 if not from the file */
};

/*
 * Build a config from defaults, then `path` (NULL: defaults only), then the environment.
 * Returns the new config, or NULL with every problem found written to *errors_r as
 * newline-separated "file:line: problem" lines (caller frees *errors_r).
 */
struct config *config_load(const char *path, char **errors_r);

/*
 * Like config_load, but keeps every valid value even when others are wrong (those keep their
 * defaults), and after a syntax error keeps the keys read before it; *errors_r still lists the
 * problems. NULL only when the file cannot be read. For CLI verbs that only need to find the
 * running master (which judges the file itself on reload).
 */
struct config *config_load_lenient(const char *path, char **errors_r);

void config_free(struct config *cfg);

/* Resolves workers = 0 to the number of online CPUs, capped at CONFIG_MAX_WORKERS. */
int config_worker_count(const struct config *cfg);

/* Source line of `key` in the file (0 when it came from a default or the environment). */
int config_key_line(const struct config *cfg, const char *key);

/* An address or CIDR of ratelimit.trusted_proxies, parsed. */
struct config_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix; /* bits */
};

/* Parses "192.0.2.1", "10.0.0.0/8", "::1" or "fd00::/8". 0, or -1 when malformed. */
int config_parse_cidr(const char *text, struct config_cidr *out);

/* 1 when `addr` (4 or 16 bytes of `family`) lies inside `c`. IPv4-mapped IPv6 is not unmapped. */
int config_cidr_match(const struct config_cidr *c, int family, const void *addr);

/* Writes the schema (key, type, default, description) as a Markdown table to `out`. */
void config_print_reference(FILE *out);

#endif
