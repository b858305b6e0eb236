/*
 * ratelimit_shm: the host-wide rate-limit table in shared memory (see ratelimit.h).
 *
 * Layout: a header, then buckets of RL_BUCKET_ENTRIES entries, each bucket one 256-byte,
 * cache-line-aligned unit with its own spinlock. The buckets form two regions: per-address
 * (GCRA) entries first, then account-lockout entries, so that a flood of one kind can never
 * push the other out. A key (64-bit hash of rule + key under a random per-master seed, its top
 * bit naming the region) lives in bucket hash % nbuckets of its region, anywhere among its
 * entries, so the table is bounded and never probes further. A full bucket evicts the live
 * entry of lowest priority (GCRA entries, then accounts by failures), expiring first among
 * equals; an entry held (an account in a delay or the hard lock, hold_until_s in the future)
 * is never evicted: when every entry of the bucket is held, the new key is not stored and the
 * caller refuses its request (RL_SHM_FULL, counted per region).
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
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define RL_SHM_MAGIC           0x726c696du /* "rlim" */
#define RL_SHM_VERSION         3u
#define RL_ACCOUNT_BIT         (1ULL << 63)
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
    uint32_t nbuckets[RL_TABLES]; /* address region first, then the account region */
    size_t size;
    unsigned char seed[16];
    atomic_ullong evictions[RL_TABLES], refused[RL_TABLES];
    struct rl_bucket b[];
};

const char *rl_table_name(enum rl_table table)
{
    return table == RL_TABLE_ACCOUNT ? "account" : "address";
}

struct rl_shm *rl_shm_create(int slots)
{
    uint32_t nb = (uint32_t)((slots + RL_BUCKET_ENTRIES - 1) / RL_BUCKET_ENTRIES);
    struct rl_shm *t;

    if (nb < 2)
        nb = 2;
    /* Accounts live for lockout.reset_after, addresses only until their quota is back. */
    uint32_t account = (3 * nb + 3) / 4;
    if (account >= nb)
        account = nb - 1;
    size_t size = sizeof(struct rl_shm) + (size_t)nb * sizeof(struct rl_bucket);
    t = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        return NULL;
    /* Zeroed pages: every bucket unlocked and empty. */
    t->magic = RL_SHM_MAGIC;
    t->version = RL_SHM_VERSION;
    t->nbuckets[RL_TABLE_ADDRESS] = nb - account;
    t->nbuckets[RL_TABLE_ACCOUNT] = account;
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

int rl_shm_capacity(const struct rl_shm *t, enum rl_table table)
{
    return (int)t->nbuckets[table] * RL_BUCKET_ENTRIES;
}

enum rl_table rl_shm_key_table(uint64_t key)
{
    return (key & RL_ACCOUNT_BIT) ? RL_TABLE_ACCOUNT : RL_TABLE_ADDRESS;
}

uint32_t rl_shm_bucket_of(const struct rl_shm *t, uint64_t key)
{
    enum rl_table table = rl_shm_key_table(key);
    uint32_t first = table == RL_TABLE_ACCOUNT ? t->nbuckets[RL_TABLE_ADDRESS] : 0;

    return first + (uint32_t)((key & ~RL_ACCOUNT_BIT) % t->nbuckets[table]);
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
    k &= ~RL_ACCOUNT_BIT;
    if (rule == RL_ACCOUNT)
        return k | RL_ACCOUNT_BIT;
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

/* A live entry that must not be evicted: an account in a delay or the hard lock. */
static int held(const struct rl_entry *e, int64_t now)
{
    return live(e, now) && (int64_t)e->st.hold_until_s * 1000000 > now;
}

/* 1 when live entry e matters less than live entry v: lower prio, or expiring first. */
static int matters_less(const struct rl_entry *e, const struct rl_entry *v)
{
    return e->st.prio < v->st.prio ||
           (e->st.prio == v->st.prio && e->st.expires_us < v->st.expires_us);
}

/*
 * The entry of key in b (live or not), else the slot a new entry would take: a never-used one,
 * then an expired one, then the live entry that matters least and is not held; NULL when every
 * entry is held. Nothing is changed here: the caller overwrites the victim only when it stores.
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
        if (held(e, now))
            continue;
        if (victim == NULL)
            victim = e;
        else if (!live(e, now)) {
            if (live(victim, now) || (victim->key != 0 && e->key == 0))
                victim = e; /* prefer a never-used entry, then any expired one */
        } else if (live(victim, now) && matters_less(e, victim))
            victim = e;
    }
    return victim;
}

/* Microseconds until the first held entry of a full bucket may be evicted. */
static int64_t bucket_wait(const struct rl_bucket *b, int64_t now)
{
    int64_t wait = INT64_MAX;

    for (int i = 0; i < RL_BUCKET_ENTRIES; i++) {
        int64_t until = (int64_t)b->e[i].st.hold_until_s * 1000000;
        if (b->e[i].st.expires_us < until)
            until = b->e[i].st.expires_us;
        if (until - now < wait)
            wait = until - now;
    }
    return wait > 0 ? wait : 1;
}

int rl_shm_update(struct rl_shm *t, uint64_t key, int64_t now_us, pid_t self, rl_shm_fn *fn,
                  void *arg, int64_t *wait_r)
{
    enum rl_table table = rl_shm_key_table(key);
    struct rl_bucket *b = &t->b[rl_shm_bucket_of(t, key)];
    struct rl_state st = {0};
    int found, rc;

    bucket_lock(b, self);
    struct rl_entry *e = bucket_find(b, key, now_us, &found);
    int own = e != NULL && e->key == key;
    if (found)
        st = e->st;
    rc = fn(&st, found, now_us, arg);
    if (rc > 0 && e == NULL) {
        /* Every entry is an account in a delay or lock: none is given up for a newcomer, and the
         * newcomer is not decided on a state that cannot be kept — its request is refused. */
        atomic_fetch_add_explicit(&t->refused[table], 1, memory_order_relaxed);
        if (wait_r != NULL)
            *wait_r = bucket_wait(b, now_us);
        rc = RL_SHM_FULL;
    } else if (rc > 0) {
        if (!own && live(e, now_us))
            atomic_fetch_add_explicit(&t->evictions[table], 1, memory_order_relaxed);
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

void rl_shm_stats(const struct rl_shm *t, enum rl_table table, uint64_t *evictions,
                  uint64_t *refused)
{
    *evictions = atomic_load_explicit(&t->evictions[table], memory_order_relaxed);
    *refused = atomic_load_explicit(&t->refused[table], memory_order_relaxed);
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
