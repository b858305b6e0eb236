/*
 * ratelimit: rate limiting and brute-force protection.
 *
 * One limiter interface (struct ratelimit) in front of two backends chosen by
 * `ratelimit.backend` (struct rl_backend_ops, like the store drivers):
 *   - shm: a fixed-size table in shared memory mapped by the master before it forks, used by
 *     every worker of the host (shared/ratelimit_shm.c);
 *   - redis: hiredis async on the worker's event loop, one EVALSHA round trip per check
 *     (worker/ratelimit_redis.c), shared by every instance pointing at one Redis.
 * With Redis, Redis decides while it answers and every answer is copied into the shm table, so
 * the table is a warm fallback: when Redis fails or is slower than `ratelimit.redis.timeout`,
 * checks are answered from it at once, starting from the shared state this host last saw.
 *
 * Rules: per client IP (IPv6: per /ratelimit.ipv6_prefix network; GCRA: `limit` requests per
 * `period`, burst = limit) for every public route (global), login, register and refresh; per
 * account (a hash of the normalized email, whether or not the account exists) on logins, and
 * per user on the current password of a password change, with a progressive delay and a
 * bounded hard lock. The pure decisions (GCRA, lockout schedule, client IP) are separate functions
 * so that they are unit-tested without processes or sockets.
 */
#ifndef AUTHD_RATELIMIT_H
#define AUTHD_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/config.h"
#include "shared/health.h"

enum rl_rule {
    RL_GLOBAL,
    RL_LOGIN,
    RL_REGISTER,
    RL_REFRESH,
    RL_ACCOUNT,
    RL_RULES,
};
_Static_assert(RL_RULES == HEALTH_RL_RULES, "health segment counts one counter per rule");

#define RL_MAX_ITEMS 3
#define RL_KEY_MAX   64

/* "global", "login", ... (metrics labels, header policy names, Redis key parts). */
const char *ratelimit_rule_name(enum rl_rule rule);

/* ---- pure decisions ---- */

/* The outcome of one rule for one key. */
struct rl_result {
    int allowed;
    long remaining;     /* GCRA: requests left in the current burst */
    double reset;       /* GCRA: seconds until the whole quota is back */
    double retry_after; /* refused: seconds until an attempt may succeed */
    int failures;       /* account: consecutive failures counted, this attempt included */
};

/*
 * GCRA (generic cell rate algorithm): `limit` requests per `period_us`, all of them allowed in
 * a burst. *tat is the theoretical arrival time in microseconds (0: no state); it advances by
 * period/limit per allowed request. Returns 1 when allowed (and updates *tat), 0 when refused.
 */
int rl_gcra(int64_t *tat, int64_t now_us, int limit, int64_t period_us, struct rl_result *r);

struct rl_lockout {
    int threshold;
    int64_t base_delay_us, max_delay_us;
    int max_failures;
    int64_t reset_after_us;
};

/* Fills p from the configuration. */
void rl_lockout_from_config(const struct config *cfg, struct rl_lockout *p);

/*
 * How long (microseconds) an account with `failures` consecutive failures, the last one
 * `since_last_us` ago, must still wait before its next attempt: 0 below the threshold; then
 * base_delay doubling per failure up to max_delay; at max_failures, until reset_after has
 * passed since the last counted failure (refused attempts are not counted, so the lock always
 * ends).
 */
int64_t rl_lockout_wait(const struct rl_lockout *p, int failures, int64_t since_last_us);

/*
 * One login attempt on an account whose state is (*failures, *last_us): refused (0) while
 * rl_lockout_wait says wait, else counted as a failure up front (1) — the caller resets the
 * state on success. Counting before the password is verified bounds the consecutive failures
 * even for concurrent attempts; a wrong password can never reset it.
 */
int rl_account_attempt(int64_t *failures, int64_t *last_us, int64_t now_us,
                       const struct rl_lockout *p, struct rl_result *r);

/*
 * The client address of a request from TCP peer `peer` carrying X-Forwarded-For `xff` (NULL
 * when absent; every XFF field line combined in order with ","): the peer itself unless it
 * lies in one of the `n` trusted proxies; then the right-most XFF entry that is not a trusted
 * proxy (the left-most when all are). Malformed entries stop the walk. IPv4-mapped IPv6
 * addresses (::ffff:a.b.c.d) are IPv4, for the proxy match and the result. Writes a
 * NUL-terminated address to out.
 */
void rl_client_ip(const struct config_cidr *proxies, int n, const char *peer, const char *xff,
                  char *out, size_t outlen);

/*
 * The limiter key of client address `addr`: an IPv4 address (IPv4-mapped IPv6 included) as
 * itself (/32); an IPv6 address as its /ipv6_prefix network ("2001:db8:1:2::/64"), since one
 * subscriber usually holds a whole /64. Unparsable text is copied as is.
 */
void rl_client_key(int ipv6_prefix, const char *addr, char *out, size_t outlen);

/* ---- the shared-memory table (shared/ratelimit_shm.c) ---- */

struct rl_shm;

/*
 * The table has two regions, so that neither kind of state can push the other out: per-address
 * (GCRA) entries of the global, login, register and refresh rules, and account-lockout entries.
 */
enum rl_table {
    RL_TABLE_ADDRESS,
    RL_TABLE_ACCOUNT,
    RL_TABLES,
};

/* "address", "account" (metrics labels). */
const char *rl_table_name(enum rl_table table);

/*
 * One entry's state: GCRA uses a = TAT; the account rule a = failures, b = last failure.
 * An entry whose hold_until_s lies in the future (an account in a delay or the hard lock) is
 * never evicted: a new key of a bucket that holds only such entries is not stored, and its
 * request is refused (RL_SHM_FULL). Any other live entry may be evicted for a new key: the one
 * of lowest prio (GCRA entries 0, accounts 1 + failures), expiring first among equals.
 */
struct rl_state {
    int64_t a, b;
    int64_t expires_us;    /* the state is equivalent to none after this */
    uint32_t hold_until_s; /* wall-clock seconds: protected from eviction until then */
    int16_t prio;          /* eviction order, set by the writer */
    int16_t pending;       /* account: failures counted here that Redis has not seen yet */
};

/* rl_shm_update: a new key that could not be stored (its bucket holds only protected entries). */
#define RL_SHM_FULL (-2)

/*
 * Maps a table of at least `slots` entries, MAP_SHARED|MAP_ANONYMOUS, with a random seed: a
 * quarter of them (whole buckets, at least one) for per-address entries, the rest for accounts.
 */
struct rl_shm *rl_shm_create(int slots);
void rl_shm_destroy(struct rl_shm *t);
/* Of one region since creation: live entries evicted, and new entries refused (RL_SHM_FULL). */
void rl_shm_stats(const struct rl_shm *t, enum rl_table table, uint64_t *evictions,
                  uint64_t *refused);
/* Entries one region holds (a multiple of the bucket size). */
int rl_shm_capacity(const struct rl_shm *t, enum rl_table table);

/*
 * The table's 64-bit key (never 0) of (rule, key), under its per-master random seed. The key
 * names its region too: RL_ACCOUNT keys live in the account region, every other rule's in the
 * address region.
 */
uint64_t rl_shm_key(const struct rl_shm *t, enum rl_rule rule, const char *key);
/* The region of a key, and the index of its bucket (over the whole table; for tests). */
enum rl_table rl_shm_key_table(uint64_t key);
uint32_t rl_shm_bucket_of(const struct rl_shm *t, uint64_t key);

/*
 * Runs fn on the state of `key` under its bucket's lock. `found` says whether a live entry
 * existed (otherwise the state is zeroed). fn returns 1 to store the state, 0 to leave it
 * unchanged, -1 to delete the entry. Only a store takes a slot: a lookup of a missing key
 * evicts nothing. A full bucket evicts as struct rl_state says. Returns fn's answer, or
 * RL_SHM_FULL when fn asked to store a new key and every entry of its bucket is protected:
 * nothing was stored, and *wait_r (unless NULL) is the time in microseconds until the first of
 * them stops being protected. `self` is the caller's pid (the lock owner with its start time,
 * so a lock held by a dead process, a zombie or a process whose pid was reused is taken over).
 */
typedef int rl_shm_fn(struct rl_state *st, int found, int64_t now_us, void *arg);
int rl_shm_update(struct rl_shm *t, uint64_t key, int64_t now_us, pid_t self, rl_shm_fn *fn,
                  void *arg, int64_t *wait_r);

/*
 * The host's table: created by the master before the first fork (ratelimit_shm_setup, at
 * start-up only, so it outlives reloads) and inherited by every worker. -1 with a message.
 */
int ratelimit_shm_setup(const struct config *cfg, char *err, size_t errlen);
struct rl_shm *ratelimit_shm_table(void);
void ratelimit_shm_cleanup(void);

/* ---- the limiter (one per worker) ---- */

struct event_base;
struct ratelimit;
struct rl_check;

typedef void rl_done_fn(void *arg, const struct rl_check *c);

struct rl_item {
    enum rl_rule rule;
    char key[RL_KEY_MAX];
    struct rl_result r;
    /* account, Redis: failures counted in shm during an outage, sent with this check */
    int pushed;
    int64_t pushed_age_us;
};

/*
 * One check: up to RL_MAX_ITEMS rules evaluated in order, atomically per backend, stopping at
 * the first refusal. Owned by the limiter; the done callback must not keep it.
 */
struct rl_check {
    struct ratelimit *rl;
    int n;
    struct rl_item item[RL_MAX_ITEMS];
    int denied; /* index of the refusing item, or -1 */
    int by_redis;
    rl_done_fn *done;
    void *arg;
    /* backend bookkeeping */
    int finished, outstanding;
    int64_t sent_us;
    struct event *timer;
    struct rl_backend *be;
};

/* A backend: the shm table alone, or Redis with the shm table as mirror and fallback. */
struct rl_backend;
struct rl_backend_ops {
    const char *name;
    struct rl_backend *(*open)(struct ratelimit *rl, const struct config *cfg,
                               struct event_base *base, struct health_slot *hs);
    /* Decides c: ratelimit_finish with the backend's answers, or ratelimit_answer_from_shm. */
    void (*check)(struct rl_backend *be, struct rl_check *c);
    /* Forgets an account's failures (queued while Redis is down, sent when it is back). */
    void (*reset)(struct rl_backend *be, enum rl_rule rule, const char *key);
    /* Gives back one failure the backend counted (fire and forget). */
    void (*refund)(struct rl_backend *be, enum rl_rule rule, const char *key);
    /* 1 while checks are answered by the shm fallback instead of this backend. */
    int (*degraded)(const struct rl_backend *be);
    /* Answers every pending check (from the shm) and frees the backend. */
    void (*close)(struct rl_backend *be);
};

extern const struct rl_backend_ops rl_backend_redis;

/* Per worker, after fork. NULL on failure (logged). */
struct ratelimit *ratelimit_new(const struct config *cfg, struct event_base *base,
                                struct health_slot *hs);
/* Closes the backend, answering pending checks from the shm table (before the pools go). */
void ratelimit_shutdown(struct ratelimit *rl);
void ratelimit_free(struct ratelimit *rl);

/* 1 when `rule` has a non-zero limit. */
int ratelimit_rule_on(const struct ratelimit *rl, enum rl_rule rule);
/* "degraded" while the Redis backend is not usable, else "ok". */
int ratelimit_degraded(const struct ratelimit *rl);

/* The client address of a request (see rl_client_ip) with the configured trusted proxies. */
void ratelimit_client_ip(const struct ratelimit *rl, const char *peer, const char *xff, char *out,
                         size_t outlen);

/* Account key: hex SHA-256 of the normalized email (128 bits), same for unknown accounts. */
void ratelimit_account_key(const char *email, char out[RL_KEY_MAX]);

/*
 * A check with the `n` (rule, key) pairs; `done(arg, c)` is called exactly once, possibly
 * before this returns. Never blocks the loop longer than one shm update per item. A check
 * that cannot be counted (no memory for it, or a new key the shm table cannot store) is
 * refused, never allowed.
 */
void ratelimit_check(struct ratelimit *rl, int n, const enum rl_rule *rules,
                     const char *const *keys, rl_done_fn *done, void *arg);

/* A successful login: the account's failures are forgotten (shm and backend). */
void ratelimit_account_success(struct ratelimit *rl, const char *key);
/* A failed login counted by check c: counts a lockout when it started a delay or the lock. */
void ratelimit_account_failed(struct ratelimit *rl, int failures);
/*
 * An attempt counted up front that turned out to be no guess at the password (store down,
 * overloaded, ...): gives the failure back, in shm and, when `by_redis` (the check that counted
 * it was answered by Redis), in Redis.
 */
void ratelimit_account_refund(struct ratelimit *rl, const char *key, int by_redis);
/* The limiter key of a client address (rl_client_key with ratelimit.ipv6_prefix). */
void ratelimit_client_key(const struct ratelimit *rl, const char *addr, char *out, size_t outlen);
/* Backends: takes (and clears) the failures an account counted in shm while Redis was down. */
void ratelimit_take_pending(struct ratelimit *rl, struct rl_item *it);

/* Backends: answer c. Calls the done callback unless already called; frees c if possible. */
void ratelimit_finish(struct rl_check *c);
/* Backends: answer c from the shm table (fallback), unless it was answered already. */
void ratelimit_answer_from_shm(struct rl_check *c);
/* Backends: c is no longer referenced by the backend; frees it once finished. */
void ratelimit_release(struct rl_check *c);
/* Backends: GCRA/lockout parameters as the Lua script wants them. */
int ratelimit_rule_limit(const struct ratelimit *rl, enum rl_rule rule, int64_t *period_us);
const struct rl_lockout *ratelimit_lockout(const struct ratelimit *rl);
/* Backends: copy the backend's state of an item into the shm table (a fallback starts there). */
void ratelimit_mirror(struct ratelimit *rl, const struct rl_item *it, int64_t a, int64_t b,
                      int64_t ttl_us);

/* RateLimit-Policy / RateLimit field values (draft-ietf-httpapi-ratelimit-headers-10). */
void ratelimit_policy_header(const struct ratelimit *rl, const enum rl_rule *rules, int n,
                             char *out, size_t outlen);
void ratelimit_state_header(const struct rl_check *c, char *out, size_t outlen);

int64_t ratelimit_now_us(void);

#endif
