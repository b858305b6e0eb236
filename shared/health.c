/* health: the shared-memory health segment (see health.h). */
#include "shared/health.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

const uint32_t health_bucket_us[HEALTH_BUCKETS - 1] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 5000000,
};

const int health_status_codes[HEALTH_STATUSES - 1] = {
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431, 500, 502, 503, 504,
};

struct health *health_create(void)
{
    struct health *h =
        mmap(NULL, sizeof(*h), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (h == MAP_FAILED)
        return NULL;
    /* mmap returns zeroed pages: every atomic starts at 0. */
    h->magic = HEALTH_MAGIC;
    h->version = HEALTH_VERSION;
    h->nslots = HEALTH_SLOTS;
    atomic_store(&h->master_pid, (int)getpid());
    atomic_store(&h->started_ms, health_now_wall_ms());
    return h;
}

void health_destroy(struct health *h)
{
    if (h != NULL)
        munmap(h, sizeof(*h));
}

static void ident_begin(struct health_ident_slot *s)
{
    atomic_fetch_add_explicit(&s->seq, 1, memory_order_acq_rel);
}

static void ident_end(struct health_ident_slot *s)
{
    atomic_fetch_add_explicit(&s->seq, 1, memory_order_release);
}

int health_slot_claim(struct health *h, unsigned generation, int64_t now_mono_ms)
{
    /* Prefer slots that were used before, so the segment's touched pages stay few. */
    int pick = -1;
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct health_ident_slot *s = &h->ident[i];
        if (atomic_load(&s->state) != SLOT_FREE)
            continue;
        if (atomic_load(&s->used) || pick < 0) {
            pick = i;
            if (atomic_load(&s->used))
                break;
        }
    }
    if (pick < 0)
        return -1;
    struct health_ident_slot *s = &h->ident[pick];
    struct health_slot *c = &h->slot[pick];
    ident_begin(s);
    atomic_store(&s->pid, 0);
    atomic_store(&s->generation, generation);
    atomic_store(&s->started_ms, health_now_wall_ms());
    atomic_store(&s->heartbeat_ms, now_mono_ms);
    atomic_store(&s->state, SLOT_STARTING);
    atomic_store(&s->used, 1);
    ident_end(s);
    /* Gauges belong to the process, not the slot. */
    atomic_store(&c->connections, 0);
    atomic_store(&c->inflight, 0);
    atomic_store(&c->rss_bytes, 0);
    atomic_store(&c->offload_queued, 0);
    atomic_store(&c->cpu_base_us, atomic_load(&c->cpu_us));
    return pick;
}

/* Called by the worker itself, so a slot's identity has one writer while the worker lives. */
void health_slot_set_pid(struct health *h, int slot, pid_t pid)
{
    struct health_ident_slot *s = &h->ident[slot];
    ident_begin(s);
    atomic_store(&s->pid, (int)pid);
    ident_end(s);
}

void health_slot_release(struct health *h, int slot)
{
    struct health_ident_slot *s = &h->ident[slot];
    struct health_slot *c = &h->slot[slot];
    ident_begin(s);
    atomic_store(&s->pid, 0);
    atomic_store(&s->state, SLOT_FREE);
    ident_end(s);
    atomic_store(&c->connections, 0);
    atomic_store(&c->inflight, 0);
    atomic_store(&c->rss_bytes, 0);
    atomic_store(&c->offload_queued, 0);
}

void health_slot_state(struct health *h, int slot, enum health_state state)
{
    struct health_ident_slot *s = &h->ident[slot];
    ident_begin(s);
    atomic_store(&s->state, state);
    ident_end(s);
}

void health_slot_beat(struct health *h, int slot, int64_t now_mono_ms, long rss_bytes)
{
    atomic_store_explicit(&h->ident[slot].heartbeat_ms, now_mono_ms, memory_order_release);
    if (rss_bytes >= 0)
        atomic_store_explicit(&h->slot[slot].rss_bytes, rss_bytes, memory_order_relaxed);
}

void health_slot_cpu(struct health *h, int slot, uint64_t cpu_us)
{
    struct health_slot *c = &h->slot[slot];
    uint64_t v = atomic_load(&c->cpu_base_us) + cpu_us;
    unsigned long long cur = atomic_load(&c->cpu_us);

    /* Never backwards: the master's final figure and a late heartbeat may cross. */
    while (cur < v && !atomic_compare_exchange_weak(&c->cpu_us, &cur, v))
        ;
}

int health_status_index(int status)
{
    for (int i = 0; i < HEALTH_STATUSES - 1; i++)
        if (health_status_codes[i] == status)
            return i;
    return HEALTH_STATUSES - 1;
}

void health_count_request(struct health_slot *s, enum route_id route, int status,
                          uint64_t latency_us)
{
    int b = 0;

    if ((int)route < 0 || route >= ROUTE_COUNT)
        route = ROUTE_UNMATCHED;
    while (b < HEALTH_BUCKETS - 1 && latency_us > health_bucket_us[b])
        b++;
    /* One writer per slot: relaxed increments are enough, readers only need eventual sums. */
    atomic_fetch_add_explicit(&s->requests[route][health_status_index(status)], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency_bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency_sum_us, latency_us, memory_order_relaxed);
}

void health_slot_ident(const struct health *h, int slot, struct health_ident *out)
{
    const struct health_ident_slot *s = &h->ident[slot];
    unsigned before, after;
    int tries = 0;

    do {
        before = atomic_load_explicit(&s->seq, memory_order_acquire);
        out->pid = atomic_load(&s->pid);
        out->generation = atomic_load(&s->generation);
        out->state = (enum health_state)atomic_load(&s->state);
        out->started_ms = atomic_load(&s->started_ms);
        out->heartbeat_ms = atomic_load(&s->heartbeat_ms);
        after = atomic_load_explicit(&s->seq, memory_order_acquire);
    } while ((before != after || (before & 1)) && ++tries < 1000);
}

int health_slot_used(const struct health *h, int slot)
{
    return (int)atomic_load_explicit(&h->ident[slot].used, memory_order_relaxed);
}

int64_t health_now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t health_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t health_self_cpu_us(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return health_rusage_us(&ru);
}

long health_self_rss(void)
{
    long pages_total, pages_rss;
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    char buf[128];

    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    if (sscanf(buf, "%ld %ld", &pages_total, &pages_rss) != 2)
        return -1;
    return pages_rss * sysconf(_SC_PAGESIZE);
}

int health_first_live_slot(const struct health *h)
{
    unsigned gen = atomic_load(&h->generation);

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct health_ident id;
        health_slot_ident(h, i, &id);
        if (id.generation == gen && (id.state == SLOT_STARTING || id.state == SLOT_READY))
            return i;
    }
    return -1;
}
