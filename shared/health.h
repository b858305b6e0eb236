/*
 * health: the shared-memory segment through which workers report to the master and to each
 * other (for /metrics and /healthz) — one versioned struct without pointers, mapped
 * MAP_SHARED | MAP_ANONYMOUS by the master before it forks.
 *
 * One cache-line-aligned slot per worker process. The master claims a slot before fork and
 * releases it when it reaps the worker; the worker writes its heartbeat and counters. Counters
 * are never reset when a slot is reused, so their sum over all slots is monotonic for the
 * life of the master (what Prometheus counters need). Fields are C11 atomics; a reader may see
 * a slot mid-update and tolerates it: identity fields are guarded by a sequence counter.
 */
#ifndef AUTHD_HEALTH_H
#define AUTHD_HEALTH_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "shared/route.h"

#define HEALTH_MAGIC   0x61757468u /* "auth" */
#define HEALTH_VERSION 4u
#define HEALTH_SLOTS   128 /* two generations of CONFIG_MAX_WORKERS during a reload */

enum health_state {
    SLOT_FREE = 0,
    SLOT_STARTING, /* forked, setting up */
    SLOT_READY,    /* accepting */
    SLOT_DRAINING, /* finishing in-flight requests, no longer accepting */
};

/* Status codes counted separately; anything else is counted as "other". */
#define HEALTH_STATUSES 20
/* Latency histogram upper bounds in microseconds; the last bucket is +Inf. */
#define HEALTH_BUCKETS 14
extern const uint32_t health_bucket_us[HEALTH_BUCKETS - 1];
extern const int health_status_codes[HEALTH_STATUSES - 1];
/* Rate-limit rules (enum rl_rule), auth events (enum health_auth_event), Redis latency buckets. */
#define HEALTH_RL_RULES    5
#define HEALTH_RL_BUCKETS  11
#define HEALTH_AUTH_EVENTS 6
/* Upper bounds (microseconds) of the Redis latency buckets; the last bucket is +Inf. */
#define HEALTH_RL_BUCKET_US                                                                        \
    {                                                                                              \
        100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000                               \
    }
enum health_auth_event {
    AUTH_EV_LOGIN,
    AUTH_EV_REGISTER,
    AUTH_EV_REFRESH,
    AUTH_EV_REFRESH_REUSE,
    AUTH_EV_LOGOUT,
    AUTH_EV_PASSWORD_CHANGE,
};

/* What retention deletes, counted apart (authd_store_pruned_rows_total{kind}). */
#define HEALTH_PRUNE_KINDS 3
enum health_prune_kind { PRUNE_SESSIONS, PRUNE_REFRESH_TOKENS, PRUNE_AUDIT };

/*
 * Who holds a slot. Kept apart from the counters, densely, so that readers that only need
 * identities (every worker's /healthz bookkeeping, the watchdog) touch two pages, not one page
 * per slot of the large counter array.
 */
struct health_ident_slot {
    _Alignas(64) atomic_uint seq; /* odd while identity fields change */
    atomic_int pid;
    atomic_uint generation;
    atomic_uint state;
    atomic_llong started_ms;   /* wall clock, for display */
    atomic_llong heartbeat_ms; /* monotonic clock */
    atomic_uint used;          /* ever held a worker: its counters count */
};

/* What a worker counts; written by the slot's worker only. */
struct health_slot {
    _Alignas(64) atomic_llong connections; /* open now */
    atomic_ullong connections_total;
    atomic_ullong accept_paused_total; /* stopped accepting at http.max_connections */
    atomic_llong inflight;
    atomic_ullong timeouts_total; /* header or idle timeouts that closed a connection */
    atomic_ullong tls_failures_total;
    atomic_llong rss_bytes;
    atomic_llong offload_queued;
    atomic_ullong offload_rejected_total;

    atomic_ullong requests[ROUTE_COUNT][HEALTH_STATUSES];
    atomic_ullong latency_bucket[HEALTH_BUCKETS];
    atomic_ullong latency_sum_us;

    /* Rate limiter (shared/ratelimit.h) and auth events (worker/api.c). */
    atomic_ullong rl_limited_total[HEALTH_RL_RULES]; /* 429s by enum rl_rule */
    atomic_ullong rl_lockouts_total;                 /* an account entered a delay or hard lock */
    atomic_ullong rl_checks_total[2];                /* decided by: 0 shm, 1 redis */
    atomic_ullong rl_redis_errors_total;             /* errors, timeouts, lost connections */
    atomic_ullong rl_redis_latency_bucket[HEALTH_RL_BUCKETS];
    atomic_ullong rl_redis_latency_sum_us;
    atomic_uint rl_fallback; /* gauge: 1 while this worker's Redis backend is not usable */
    atomic_ullong auth_events[HEALTH_AUTH_EVENTS][2]; /* [event][0 success, 1 failure] */

    /*
     * CPU time (user + system, all threads) of every worker that held this slot, in µs. Like
     * the counters it only grows: claim sets cpu_base_us to it, the worker publishes
     * base + its own rusage at each heartbeat, and the master, when it reaps the worker, raises
     * it to base + the final rusage wait4() reports.
     */
    atomic_ullong cpu_us;
    atomic_ullong cpu_base_us;

    /* Retention (worker/retention.c): records deleted by enum health_prune_kind, failures. */
    atomic_ullong store_pruned_total[HEALTH_PRUNE_KINDS];
    atomic_ullong store_prune_failures_total;
};

struct health {
    uint32_t magic;
    uint32_t version;
    uint32_t nslots;
    atomic_int master_pid;
    atomic_uint generation; /* current generation */
    atomic_uint workers_wanted;
    atomic_llong started_ms;
    atomic_ullong reloads_total;
    atomic_ullong reload_failures_total;
    atomic_ullong worker_restarts_total;
    atomic_llong master_rss_bytes;
    atomic_ullong master_cpu_us;   /* the master's own CPU time */
    atomic_ullong children_cpu_us; /* reaped children that hold no slot (backups) */
    struct health_ident_slot ident[HEALTH_SLOTS];
    struct health_slot slot[HEALTH_SLOTS];

    /*
     * Backups the master ran in a child (master/backup.c). Wall-clock milliseconds; 0 = never.
     * At start the master seeds last_success/size from the newest file in backup.directory.
     */
    atomic_llong backup_last_attempt_ms;
    atomic_llong backup_last_success_ms;
    atomic_llong backup_last_duration_ms; /* of the last attempt, success or failure */
    atomic_llong backup_last_size_bytes;  /* of the last success */
    atomic_ullong backup_success_total;
    atomic_ullong backup_failures_total;
    atomic_uint backup_running;
    atomic_uint backup_last_failed; /* 1 when the last attempt failed */
    atomic_uint backup_encrypted;   /* 1 when the serving configuration sets an encryption key */

    /* Wall-clock ms when the last retention pass finished without a failure; 0 = never. */
    atomic_llong prune_last_success_ms;
};

/* Maps a fresh segment (zeroed). Returns NULL with errno set. */
struct health *health_create(void);
void health_destroy(struct health *h);

/* Master: picks a free slot for a new worker of `generation`; -1 when none is free. */
int health_slot_claim(struct health *h, unsigned generation, int64_t now_mono_ms);
void health_slot_set_pid(struct health *h, int slot, pid_t pid);
void health_slot_release(struct health *h, int slot);

/* Worker: state changes and heartbeat. */
void health_slot_state(struct health *h, int slot, enum health_state state);
void health_slot_beat(struct health *h, int slot, int64_t now_mono_ms, long rss_bytes);
/* Worker: publishes its CPU time `cpu_us`; master: the final one of a reaped worker. */
void health_slot_cpu(struct health *h, int slot, uint64_t cpu_us);
void health_count_request(struct health_slot *s, enum route_id route, int status,
                          uint64_t latency_us);

/* Index of `status` in health_status_codes, or HEALTH_STATUSES - 1 for "other". */
int health_status_index(int status);

/* A consistent copy of a slot's identity fields. */
struct health_ident {
    pid_t pid;
    unsigned generation;
    enum health_state state;
    int64_t started_ms;
    int64_t heartbeat_ms;
};
void health_slot_ident(const struct health *h, int slot, struct health_ident *out);

/*
 * The lowest slot held by a starting or ready worker of the current generation, or -1: the
 * one worker that runs instance-wide chores (retention), without any election protocol.
 */
int health_first_live_slot(const struct health *h);

/* True when slot `i` ever held a worker (its counters count toward the totals). */
int health_slot_used(const struct health *h, int slot);

/* Time helpers shared by everything that reads the segment. */
int64_t health_now_mono_ms(void);
int64_t health_now_wall_ms(void);
/* Resident set size of the calling process in bytes (from /proc/self/statm), or -1. */
long health_self_rss(void);
/* User + system CPU time of the calling process (all threads), in µs. */
uint64_t health_self_cpu_us(void);
/* User + system time of `ru` in µs. */
static inline uint64_t health_rusage_us(const struct rusage *ru)
{
    return (uint64_t)ru->ru_utime.tv_sec * 1000000u + (uint64_t)ru->ru_utime.tv_usec +
           (uint64_t)ru->ru_stime.tv_sec * 1000000u + (uint64_t)ru->ru_stime.tv_usec;
}

#endif
