/* retention: batched pruning of the store from one worker (see retention.h). */
#include "worker/retention.h"

#include <event2/event.h>
#include <stdlib.h>
#include <time.h>

#include "shared/auth.h"
#include "shared/log.h"
#include "shared/store.h"
#include "worker/offload.h"
#include "worker/worker.h"

/* First pass this soon after a worker starts (or retention.interval, if shorter). */
#define FIRST_PASS_S 5.0

struct retention {
    struct worker *w;
    struct event *timer;
    struct store *st; /* opened by the first step; used by one step at a time */
    int in_pass;      /* a pass started and has steps left */
    int64_t now;      /* the pass's "now" (wall clock at its start) */
    int more_sessions, more_audit;
    /* One step's results: written on a pool thread, read in step_done. */
    int64_t sessions, tokens, audit;
    int failed;
};

int64_t retention_cutoff(int64_t now, double keep)
{
    if (keep <= 0)
        return INT64_MIN;
    return now - (int64_t)keep;
}

int retention_more(int64_t deleted, int batch, int failed)
{
    return !failed && deleted >= batch;
}

static void arm(struct retention *r, double seconds)
{
    struct timeval tv = {.tv_sec = (time_t)seconds,
                         .tv_usec = (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6)};

    evtimer_add(r->timer, &tv);
}

/* Pool thread: one prune call per kind that still has work. */
static void step_work(void *arg)
{
    struct retention *r = arg;
    const struct config *cfg = r->w->cfg;
    const struct store_driver *drv = r->w->auth->store;
    char err[256];

    r->sessions = r->tokens = r->audit = 0;
    r->failed = 0;
    if (r->st == NULL && (r->st = drv->open(cfg, 0, err, sizeof(err))) == NULL) {
        log_error("retention: store open: %s", err);
        r->failed = 1;
        return;
    }
    if (r->more_sessions &&
        drv->prune_sessions(r->st, retention_cutoff(r->now, cfg->retention.sessions),
                            cfg->retention.batch, &r->sessions, &r->tokens) != STORE_OK)
        r->failed = 1;
    if (r->more_audit && drv->prune_audit(r->st, retention_cutoff(r->now, cfg->retention.audit),
                                          cfg->retention.batch, &r->audit) != STORE_OK)
        r->failed = 1;
}

static void count(struct retention *r)
{
    struct health_slot *hs = r->w->hs;

    atomic_fetch_add_explicit(&hs->store_pruned_total[PRUNE_SESSIONS], (uint64_t)r->sessions,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&hs->store_pruned_total[PRUNE_REFRESH_TOKENS], (uint64_t)r->tokens,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&hs->store_pruned_total[PRUNE_AUDIT], (uint64_t)r->audit,
                              memory_order_relaxed);
    if (r->failed)
        atomic_fetch_add_explicit(&hs->store_prune_failures_total, 1, memory_order_relaxed);
}

/* Loop: counts the step; schedules the next one after the pause, or ends the pass. */
static void step_done(void *arg)
{
    struct retention *r = arg;
    const struct config *cfg = r->w->cfg;

    count(r);
    r->more_sessions = r->more_sessions &&
                       retention_more(r->sessions + r->tokens, cfg->retention.batch, r->failed);
    r->more_audit = r->more_audit && retention_more(r->audit, cfg->retention.batch, r->failed);
    if (r->w->draining)
        return;
    if (r->more_sessions || r->more_audit) {
        arm(r, cfg->retention.pause);
        return;
    }
    r->in_pass = 0;
    if (!r->failed)
        atomic_store(&r->w->health->prune_last_success_ms, (long long)time(NULL) * 1000);
    arm(r, cfg->retention.interval);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct retention *r = arg;
    const struct config *cfg = r->w->cfg;

    (void)fd;
    (void)what;
    if (r->w->draining)
        return;
    if (!r->in_pass) {
        if (health_first_live_slot(r->w->health) != r->w->slot) {
            arm(r, cfg->retention.interval);
            return;
        }
        r->in_pass = 1;
        r->now = (int64_t)time(NULL);
        r->more_sessions = cfg->retention.sessions > 0;
        r->more_audit = cfg->retention.audit > 0;
    }
    /* A full queue: requests come first; try again after the pause. */
    if (offload_submit(r->w->store_pool, step_work, step_done, r) < 0)
        arm(r, cfg->retention.pause > 0 ? cfg->retention.pause : 0.1);
}

struct retention *retention_new(struct worker *w)
{
    struct retention *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        log_error("retention: out of memory");
        return NULL;
    }
    r->w = w;
    if (w->cfg->retention.interval <= 0)
        return r;
    if ((r->timer = evtimer_new(w->base, on_timer, r)) == NULL) {
        log_error("retention: evtimer_new failed");
        free(r);
        return NULL;
    }
    arm(r, w->cfg->retention.interval < FIRST_PASS_S ? w->cfg->retention.interval : FIRST_PASS_S);
    return r;
}

void retention_free(struct retention *r)
{
    if (r == NULL)
        return;
    if (r->timer != NULL)
        event_free(r->timer);
    if (r->st != NULL)
        r->w->auth->store->close(r->st);
    free(r);
}
