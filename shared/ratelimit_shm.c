/*
 * ratelimit_shm: the host-wide rate-limit table in shared memory (see ratelimit.h).
 *
 * Layout: a header, then buckets of RL_BUCKET_ENTRIES entries, each bucket one 256-byte,
 * cache-line-aligned unit with its own spinlock. A key (64-bit hash of rule + key under a
 * random per-master seed) lives in bucket hash % nbuckets, anywhere among its entries; a full
 * bucket evicts the entry expiring first, so the table is bounded and never probes further.
 * The lock word holds the owner's pid: a process killed inside the (few-instruction) critical
 * section cannot wedge the bucket, the next locker takes it over after checking the owner is
 * gone.
 */
#include "shared/ratelimit.h"

#include <errno.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define RL_SHM_MAGIC          0x726c696du /* "rlim" */
#define RL_SHM_VERSION        1u
#define RL_BUCKET_ENTRIES     7
#define RL_SPINS_BEFORE_CHECK (1 << 16)

struct rl_entry {
    uint64_t key; /* 0: empty */
    struct rl_state st;
};

struct rl_bucket {
    _Alignas(64) atomic_int lock; /* 0 free, else the owner's pid */
    struct rl_entry e[RL_BUCKET_ENTRIES];
};
_Static_assert(sizeof(struct rl_bucket) == 256, "one bucket = four cache lines");

struct rl_shm {
    uint32_t magic, version;
    uint32_t nbuckets;
    size_t size;
    unsigned char seed[16];
    atomic_ullong evictions;
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

static void bucket_lock(struct rl_bucket *b, pid_t self)
{
    for (;;) {
        for (int i = 0; i < RL_SPINS_BEFORE_CHECK; i++) {
            int expected = 0;
            if (atomic_load_explicit(&b->lock, memory_order_relaxed) == 0 &&
                atomic_compare_exchange_weak_explicit(&b->lock, &expected, (int)self,
                                                      memory_order_acquire, memory_order_relaxed))
                return;
            cpu_relax();
        }
        /* Held for a long time: if its owner died inside the critical section, take it over. */
        int owner = atomic_load_explicit(&b->lock, memory_order_relaxed);
        if (owner != 0 && owner != (int)self && kill((pid_t)owner, 0) < 0 && errno == ESRCH &&
            atomic_compare_exchange_strong_explicit(&b->lock, &owner, (int)self,
                                                    memory_order_acquire, memory_order_relaxed))
            return;
    }
}

static void bucket_unlock(struct rl_bucket *b)
{
    atomic_store_explicit(&b->lock, 0, memory_order_release);
}

/* The entry of key in b (live or not), else a free/expired one, else the one expiring first. */
static struct rl_entry *bucket_find(struct rl_shm *t, struct rl_bucket *b, uint64_t key,
                                    int64_t now, int *found)
{
    struct rl_entry *victim = NULL;

    *found = 0;
    for (int i = 0; i < RL_BUCKET_ENTRIES; i++) {
        struct rl_entry *e = &b->e[i];
        if (e->key == key) {
            *found = e->st.expires_us > now;
            return e;
        }
        if (e->key == 0 || e->st.expires_us <= now) {
            if (victim == NULL || victim->key != 0)
                victim = e; /* prefer a never-used entry, then any expired one */
        } else if (victim == NULL || (victim->key != 0 && victim->st.expires_us > now &&
                                      e->st.expires_us < victim->st.expires_us)) {
            victim = e;
        }
    }
    if (victim->key != 0 && victim->st.expires_us > now)
        atomic_fetch_add_explicit(&t->evictions, 1, memory_order_relaxed);
    victim->key = 0;
    return victim;
}

int rl_shm_update(struct rl_shm *t, uint64_t key, int64_t now_us, pid_t self, rl_shm_fn *fn,
                  void *arg)
{
    struct rl_bucket *b = &t->b[key % t->nbuckets];
    struct rl_state st = {0};
    int found, rc;

    bucket_lock(b, self);
    struct rl_entry *e = bucket_find(t, b, key, now_us, &found);
    if (found)
        st = e->st;
    rc = fn(&st, found, now_us, arg);
    if (rc > 0) {
        e->key = key;
        e->st = st;
    } else if (rc < 0 || !found) {
        e->key = 0;
        memset(&e->st, 0, sizeof(e->st));
    }
    bucket_unlock(b);
    return rc;
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
