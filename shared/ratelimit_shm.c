/*
 * ratelimit_shm: the host-wide rate-limit table in shared memory (see ratelimit.h).
 *
 * Layout: a header, then buckets of RL_BUCKET_ENTRIES entries, each bucket one 256-byte,
 * cache-line-aligned unit with its own spinlock. A key (64-bit hash of rule + key under a
 * random per-master seed) lives in bucket hash % nbuckets, anywhere among its entries, so the
 * table is bounded and never probes further. A full bucket evicts the live entry of lowest
 * priority (GCRA entries first, then accounts by failures), expiring first among equals; an
 * account at or above the lockout threshold (prio >= RL_PRIO_KEEP) is never evicted for an
 * entry of lower priority: the newcomer is then not stored (refused_stores counts it).
 * The lock word holds the owner's pid and a start-time token: waiters spin briefly, then
 * sched_yield(); a process killed inside the (few-instruction) critical section cannot wedge
 * the bucket, the next locker takes it over once the owner is gone, a zombie, or its pid was
 * reused by another process (different start time).
 */
#include "shared/ratelimit.h"

#include <errno.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define RL_SHM_MAGIC           0x726c696du /* "rlim" */
#define RL_SHM_VERSION         2u
#define RL_BUCKET_ENTRIES      6
#define RL_SPINS_BEFORE_YIELD  128
#define RL_YIELDS_BEFORE_CHECK 256

struct rl_entry {
    uint64_t key; /* 0: empty */
    struct rl_state st;
};

struct rl_bucket {
    _Alignas(64) atomic_ullong lock; /* 0 free, else the owner's pid | start token << 32 */
    struct rl_entry e[RL_BUCKET_ENTRIES];
};
_Static_assert(sizeof(struct rl_bucket) == 256, "one bucket = four cache lines");

struct rl_shm {
    uint32_t magic, version;
    uint32_t nbuckets;
    size_t size;
    unsigned char seed[16];
    atomic_ullong evictions, refused_stores;
    struct rl_bucket b[];
};

struct rl_shm *rl_shm_create(int slots)
{
    uint32_t nb = (uint32_t)((slots + RL_BUCKET_ENTRIES - 1) / RL_BUCKET_ENTRIES);
    size_t size = sizeof(struct rl_shm) + (size_t)nb * sizeof(struct rl_bucket);
    struct rl_shm *t;

    if (nb == 0)
        nb = 1;
    t = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        return NULL;
    /* Zeroed pages: every bucket unlocked and empty. */
    t->magic = RL_SHM_MAGIC;
    t->version = RL_SHM_VERSION;
    t->nbuckets = nb;
    t->size = size;
    if (RAND_bytes(t->seed, sizeof(t->seed)) != 1) {
        munmap(t, size);
        errno = EIO;
        return NULL;
    }
    return t;
}

void rl_shm_destroy(struct rl_shm *t)
{
    if (t != NULL)
        munmap(t, t->size);
}

int rl_shm_capacity(const struct rl_shm *t)
{
    return (int)t->nbuckets * RL_BUCKET_ENTRIES;
}

uint64_t rl_shm_key(const struct rl_shm *t, enum rl_rule rule, const char *key)
{
    unsigned char buf[sizeof(t->seed) + 1 + RL_KEY_MAX], md[SHA256_DIGEST_LENGTH];
    size_t n = strnlen(key, RL_KEY_MAX);
    uint64_t k;

    memcpy(buf, t->seed, sizeof(t->seed));
    buf[sizeof(t->seed)] = (unsigned char)rule;
    memcpy(buf + sizeof(t->seed) + 1, key, n);
    SHA256(buf, sizeof(t->seed) + 1 + n, md);
    memcpy(&k, md, sizeof(k));
    return k ? k : 1;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/*
 * A process's start time (clock ticks since boot, /proc/PID/stat field 22), folded to 32 bits:
 * with the pid it names one process for the life of the host, so a pid reused by another
 * process does not look like the owner. *zombie is set for a process that exited but is not
 * reaped yet (kill(pid, 0) still succeeds on it). 0 when /proc cannot tell.
 */
static uint32_t proc_start_token(pid_t pid, int *zombie)
{
    char path[64], buf[1024];
    FILE *f;
    size_t n;

    *zombie = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "re");
    if (f == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (p == NULL || p[1] != ' ')
        return 0;
    p += 2;
    if (*p == 'Z' || *p == 'X')
        *zombie = 1;
    /* Fields after ')' start at 3 (state); skip to 22 (starttime). */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return 0;
        p++;
    }
    unsigned long long st = strtoull(p, NULL, 10);
    return (uint32_t)(st ^ (st >> 32)) | 1u; /* never 0: 0 means "unknown" */
}

/* The lock word of this process: pid in the low half, start token in the high half. */
static uint64_t lock_word(pid_t self)
{
    static pid_t cached_pid;
    static uint32_t cached_token;
    int zombie;

    if (cached_pid != self) {
        cached_token = proc_start_token(self, &zombie);
        cached_pid = self;
    }
    return (uint64_t)cached_token << 32 | (uint32_t)self;
}

/* 1 when the process that wrote lock word w is gone: exited, a zombie, or its pid reused. */
static int owner_gone(uint64_t w)
{
    pid_t pid = (pid_t)(uint32_t)w;
    uint32_t token = (uint32_t)(w >> 32);
    int zombie;

    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 1;
    uint32_t now = proc_start_token(pid, &zombie);
    if (zombie)
        return 1;
    return token != 0 && now != 0 && now != token; /* the pid belongs to another process now */
}

static void bucket_lock(struct rl_bucket *b, pid_t self)
{
    uint64_t me = lock_word(self);

    for (unsigned round = 1;; round++) {
        for (int i = 0; i < RL_SPINS_BEFORE_YIELD; i++) {
            uint64_t expected = 0;
            if (atomic_load_explicit(&b->lock, memory_order_relaxed) == 0 &&
                atomic_compare_exchange_weak_explicit(&b->lock, &expected, me, memory_order_acquire,
                                                      memory_order_relaxed))
                return;
            cpu_relax();
        }
        /* The owner may be descheduled: let it run instead of burning its core. */
        sched_yield();
        if (round % RL_YIELDS_BEFORE_CHECK != 0)
            continue;
        /* Held for a long time: if its owner died inside the critical section, take it over. */
        uint64_t owner = atomic_load_explicit(&b->lock, memory_order_relaxed);
        if (owner != 0 && owner != me && owner_gone(owner) &&
            atomic_compare_exchange_strong_explicit(&b->lock, &owner, me, memory_order_acquire,
                                                    memory_order_relaxed))
            return;
    }
}

static void bucket_unlock(struct rl_bucket *b)
{
    atomic_store_explicit(&b->lock, 0, memory_order_release);
}

static int live(const struct rl_entry *e, int64_t now)
{
    return e->key != 0 && e->st.expires_us > now;
}

/*
 * The entry of key in b (live or not), else the slot a new entry would take: a never-used one,
 * then an expired one, then the live entry that matters least: lowest `prio` (GCRA entries,
 * then accounts by failures), expiring first among equals. Nothing is changed here: the caller
 * overwrites the victim only when it stores.
 */
static struct rl_entry *bucket_find(struct rl_bucket *b, uint64_t key, int64_t now, int *found)
{
    struct rl_entry *victim = NULL;

    *found = 0;
    for (int i = 0; i < RL_BUCKET_ENTRIES; i++) {
        struct rl_entry *e = &b->e[i];
        if (e->key == key) {
            *found = e->st.expires_us > now;
            return e;
        }
        if (victim == NULL) {
            victim = e;
            continue;
        }
        if (!live(e, now)) {
            if (live(victim, now) || (victim->key != 0 && e->key == 0))
                victim = e; /* prefer a never-used entry, then any expired one */
        } else if (live(victim, now) &&
                   (e->st.prio < victim->st.prio ||
                    (e->st.prio == victim->st.prio && e->st.expires_us < victim->st.expires_us))) {
            victim = e;
        }
    }
    return victim;
}

int rl_shm_update(struct rl_shm *t, uint64_t key, int64_t now_us, pid_t self, rl_shm_fn *fn,
                  void *arg)
{
    struct rl_bucket *b = &t->b[key % t->nbuckets];
    struct rl_state st = {0};
    int found, rc;

    bucket_lock(b, self);
    struct rl_entry *e = bucket_find(b, key, now_us, &found);
    int own = e->key == key;
    if (found)
        st = e->st;
    rc = fn(&st, found, now_us, arg);
    if (rc > 0) {
        if (!own && live(e, now_us)) {
            /* Evicting a live entry. One at or above RL_PRIO_KEEP (an account at the lockout
             * threshold) never yields to an entry that matters less: the new state is not
             * stored (this attempt was allowed or refused on a fresh state, conservatively
             * counted as "refused store"), so table pressure cannot reset a lockout. */
            if (e->st.prio >= RL_PRIO_KEEP && st.prio < e->st.prio) {
                atomic_fetch_add_explicit(&t->refused_stores, 1, memory_order_relaxed);
                bucket_unlock(b);
                return rc;
            }
            atomic_fetch_add_explicit(&t->evictions, 1, memory_order_relaxed);
        }
        e->key = key;
        e->st = st;
    } else if (own && (rc < 0 || !found)) {
        /* Deleting our own entry, or clearing our own expired one; a lookup of a missing key
         * leaves the victim alone. */
        e->key = 0;
        memset(&e->st, 0, sizeof(e->st));
    }
    bucket_unlock(b);
    return rc;
}

void rl_shm_stats(const struct rl_shm *t, uint64_t *evictions, uint64_t *refused_stores)
{
    *evictions = atomic_load_explicit(&t->evictions, memory_order_relaxed);
    *refused_stores = atomic_load_explicit(&t->refused_stores, memory_order_relaxed);
}

/* ---- the host's table ---- */

static struct rl_shm *host_table;

int ratelimit_shm_setup(const struct config *cfg, char *err, size_t errlen)
{
    if (host_table != NULL)
        return 0;
    host_table = rl_shm_create(cfg->ratelimit.shm_slots);
    if (host_table == NULL) {
        snprintf(err, errlen, "mmap rate-limit table (%d slots): %s", cfg->ratelimit.shm_slots,
                 strerror(errno));
        return -1;
    }
    return 0;
}

struct rl_shm *ratelimit_shm_table(void)
{
    return host_table;
}

void ratelimit_shm_cleanup(void)
{
    rl_shm_destroy(host_table);
    host_table = NULL;
}
