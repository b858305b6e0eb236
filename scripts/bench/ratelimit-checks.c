/*
 * ratelimit-checks: maximum rate-limit checks per second of authd's own limiter
 * (shared/ratelimit.c, the shm table, the Redis backend), for scripts/bench/ratelimit.
 *
 * usage: ratelimit-checks CONFIG SECONDS PROCS INFLIGHT
 * Loads CONFIG (its ratelimit group picks the backend), maps the shm table as the master does,
 * forks PROCS processes that each run a libevent loop like a worker's and keep INFLIGHT checks
 * outstanding — each check the login path's two per-IP rules (global + login) on one of 10,000
 * client addresses — for SECONDS, and prints "checks_per_s=N redis=R shm=S" (which backend
 * answered how many). With PROCS = 1 and INFLIGHT = 1 it also prints the latency of one check
 * (ratelimit_check to its callback) as "p50_us=A p99_us=B".
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/config.h"
#include "shared/health.h"
#include "shared/log.h"
#include "shared/ratelimit.h"

struct run {
    struct event_base *base;
    struct ratelimit *rl;
    struct health_slot *hs;
    struct event *kick; /* starts the checks owed; shm checks finish inside ratelimit_check */
    unsigned long long done;
    double started; /* INFLIGHT = 1: when the check in flight started */
    double *lat;    /* INFLIGHT = 1: latencies (seconds) */
    size_t nlat, caplat;
    unsigned seq;
    int owed;
    int stopping;
};

static void start_one(struct run *r);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void on_done(void *arg, const struct rl_check *c)
{
    struct run *r = arg;

    r->done++;
    if (r->lat != NULL && r->nlat < r->caplat)
        r->lat[r->nlat++] = now_s() - r->started;
    static const struct timeval zero = {0, 0};

    /* A zero timer, not event_active: the loop must get round to the stop timer. */
    if (!r->stopping && r->owed++ == 0)
        evtimer_add(r->kick, &zero);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    int n = r->owed;

    r->owed = 0;
    for (int i = 0; i < n && !r->stopping; i++)
        start_one(r);
}

static void start_one(struct run *r)
{
    static const enum rl_rule rules[2] = {RL_GLOBAL, RL_LOGIN};
    char ip[32];
    const char *keys[2] = {ip, ip};
    unsigned n = r->seq++ % 10000;

    snprintf(ip, sizeof(ip), "198.51.%u.%u", n / 100, n % 100);
    if (r->lat != NULL)
        r->started = now_s();
    ratelimit_check(r->rl, 2, rules, keys, on_done, r);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    r->stopping = 1;
    event_base_loopexit(r->base, NULL);
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    if (!ratelimit_degraded(r->rl))
        event_base_loopexit(r->base, NULL);
}

static int child(const struct config *cfg, double seconds, int inflight, int out)
{
    struct run r = {0};
    struct timeval poll = {0, 10000}, tv = {(time_t)seconds, 0};

    r.base = event_base_new();
    r.hs = calloc(1, sizeof(*r.hs));
    if (r.base == NULL || r.hs == NULL || (r.rl = ratelimit_new(cfg, r.base, r.hs)) == NULL)
        return 1;
    /* Wait (up to 5 s) until the Redis backend is connected and its script loaded. */
    struct event *ready = event_new(r.base, -1, EV_PERSIST, on_ready, &r);
    struct timeval five = {5, 0};
    event_add(ready, &poll);
    event_base_loopexit(r.base, &five);
    event_base_dispatch(r.base);
    event_free(ready);
    r.kick = event_new(r.base, -1, 0, on_kick, &r);
    if (inflight == 1) {
        r.caplat = 4000000;
        r.lat = malloc(r.caplat * sizeof(*r.lat));
    }
    struct event *stop = evtimer_new(r.base, on_stop, &r);
    evtimer_add(stop, &tv);
    double t0 = now_s();
    for (int i = 0; i < inflight; i++)
        start_one(&r);
    event_base_dispatch(r.base);
    double dt = now_s() - t0;
    unsigned long long res[3] = {(unsigned long long)((double)r.done / dt),
                                 atomic_load(&r.hs->rl_checks_total[1]),
                                 atomic_load(&r.hs->rl_checks_total[0])};
    if (r.lat != NULL && r.nlat > 0) {
        qsort(r.lat, r.nlat, sizeof(*r.lat), cmp_double);
        printf("p50_us=%.1f p99_us=%.1f ", r.lat[r.nlat / 2] * 1e6,
               r.lat[(size_t)((double)r.nlat * 0.99)] * 1e6);
        fflush(stdout);
    }
    free(r.lat);
    ratelimit_free(r.rl); /* answers what is still in flight */
    event_free(stop);
    event_free(r.kick);
    event_base_free(r.base);
    free(r.hs);
    return write(out, res, sizeof(res)) == sizeof(res) ? 0 : 1;
}

int main(int argc, char **argv)
{
    char *errors = NULL, err[256];
    int fds[2];

    if (argc != 5) {
        fprintf(stderr, "usage: %s CONFIG SECONDS PROCS INFLIGHT\n", argv[0]);
        return 2;
    }
    struct config *cfg = config_load(argv[1], &errors);
    if (cfg == NULL) {
        fprintf(stderr, "%s\n", errors ? errors : "config error");
        return 1;
    }
    double seconds = atof(argv[2]);
    int procs = atoi(argv[3]), inflight = atoi(argv[4]);
    if (ratelimit_shm_setup(cfg, err, sizeof(err)) < 0 || pipe(fds) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (int p = 0; p < procs; p++)
        if (fork() == 0)
            _exit(child(cfg, seconds, inflight, fds[1]));
    unsigned long long total = 0, redis = 0, shm = 0;
    for (int p = 0; p < procs; p++) {
        unsigned long long res[3];
        int st;
        if (read(fds[0], res, sizeof(res)) == sizeof(res)) {
            total += res[0];
            redis += res[1];
            shm += res[2];
        }
        wait(&st);
    }
    printf("checks_per_s=%llu redis=%llu shm=%llu\n", total, redis, shm);
    ratelimit_shm_cleanup();
    config_free(cfg);
    return 0;
}
