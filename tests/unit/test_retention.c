/*
 * Unit tests for worker/retention.c: the pure decisions, and whole passes on a real event loop,
 * a real store pool and a real SQLite file (no mocks): only the first live worker of the
 * generation prunes, a pass takes as many bounded steps as the backlog needs, and what it
 * deleted is counted in the worker's health slot.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shared/auth.h"
#include "shared/health.h"
#include "shared/store.h"
#include "worker/offload.h"
#include "worker/retention.h"
#include "worker/worker.h"

static void cutoff_and_more(void **state)
{
    (void)state;
    assert_int_equal(retention_cutoff(1000000, 3600), 1000000 - 3600);
    assert_int_equal(retention_cutoff(1000000, 0.5), 1000000); /* whole seconds */
    assert_true(retention_cutoff(1000000, 0) == INT64_MIN);    /* 0: kept forever */
    assert_true(retention_more(500, 500, 0));
    assert_false(retention_more(499, 500, 0));
    assert_false(retention_more(500, 500, 1)); /* a failure ends the pass */
}

struct fixture {
    char dir[64];
    struct config *cfg;
    struct auth auth;
    struct health *h;
    struct worker w;
    struct store *st;
};

/* A SQLite store in a fresh directory, and a worker of generation 1 in `slot`. */
static struct fixture *fixture_new(int slot, int batch)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    char *errors = NULL, err[256];

    snprintf(fx->dir, sizeof(fx->dir), "/tmp/authd-test-retention.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    fx->cfg = config_load(NULL, &errors);
    assert_non_null(fx->cfg);
    free(fx->cfg->store.path);
    assert_true(asprintf(&fx->cfg->store.path, "%s/authd.db", fx->dir) > 0);
    fx->cfg->retention.interval = 0.05;
    fx->cfg->retention.pause = 0;
    fx->cfg->retention.batch = batch;
    fx->cfg->retention.sessions = 60;
    fx->cfg->retention.audit = 60;
    fx->auth.store = store_driver_find("sqlite");
    fx->st = fx->auth.store->open(fx->cfg, 1, err, sizeof(err));
    assert_non_null(fx->st);
    fx->h = health_create();
    assert_non_null(fx->h);
    atomic_store(&fx->h->generation, 1);
    for (int i = 0; i <= slot; i++)
        assert_int_equal(health_slot_claim(fx->h, 1, 0), i);
    fx->w =
        (struct worker){.cfg = fx->cfg, .health = fx->h, .slot = slot, .hs = &fx->h->slot[slot]};
    fx->w.auth = &fx->auth;
    fx->w.base = event_base_new();
    fx->w.store_pool = offload_new(fx->w.base, 1, 4);
    assert_non_null(fx->w.store_pool);
    return fx;
}

static void fixture_free(struct fixture *fx)
{
    char cmd[128];

    offload_free(fx->w.store_pool); /* as worker_teardown: the pool first, no step runs then */
    retention_free(fx->w.retention);
    event_base_free(fx->w.base);
    fx->auth.store->close(fx->st);
    health_destroy(fx->h);
    config_free(fx->cfg);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
}

/* `n` sessions logged out an hour ago (each with 2 hashes) and `n` audit events of then. */
static void backlog(struct fixture *fx, int n)
{
    int64_t then = (int64_t)time(NULL) - 3600;
    struct store_user u;
    struct store_session s, r;
    struct store_audit a = {.at = then, .event = "login", .result = "success"};
    uint8_t h1[32] = {0}, h2[32] = {0};

    assert_int_equal(fx->auth.store->user_create(fx->st, "old@example.com", NULL, then, &u),
                     STORE_OK);
    for (int i = 0; i < n; i++) {
        memset(&s, 0, sizeof(s));
        snprintf(s.user_id, sizeof(s.user_id), "%s", u.id);
        s.created_at = s.last_used_at = then;
        s.idle_expires_at = s.expires_at = then + 600;
        h1[0] = (uint8_t)i;
        h2[0] = (uint8_t)i;
        h2[1] = 1;
        assert_int_equal(fx->auth.store->session_create(fx->st, &s, h1), STORE_OK);
        assert_int_equal(fx->auth.store->session_rotate(fx->st, h1, h2, then + 1, 600, &r),
                         STORE_OK);
        assert_int_equal(fx->auth.store->session_revoke_token(fx->st, h2, then + 2, &r), STORE_OK);
        assert_int_equal(fx->auth.store->audit_append(fx->st, &a), STORE_OK);
    }
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    struct fixture *fx = arg;

    (void)fd;
    (void)what;
    if (atomic_load(&fx->h->prune_last_success_ms) != 0)
        event_base_loopexit(fx->w.base, NULL);
}

/* Runs the loop until a pass finished or `seconds` passed. */
static void run_loop(struct fixture *fx, double seconds)
{
    struct timeval poll = {0, 10000}, limit = {(time_t)seconds, 0};
    struct event *ev = event_new(fx->w.base, -1, EV_PERSIST, on_poll, fx);

    event_add(ev, &poll);
    event_base_loopexit(fx->w.base, &limit);
    event_base_dispatch(fx->w.base);
    event_free(ev);
}

static uint64_t pruned(struct fixture *fx, int kind)
{
    return atomic_load(&fx->w.hs->store_pruned_total[kind]);
}

/* 25 ended sessions (50 hashes) and 25 events with batch 4: one pass of many steps. */
static void leader_prunes_in_steps(void **state)
{
    struct fixture *fx = fixture_new(0, 4);

    (void)state;
    backlog(fx, 25);
    fx->w.retention = retention_new(&fx->w);
    assert_non_null(fx->w.retention);
    run_loop(fx, 60);
    assert_int_not_equal(atomic_load(&fx->h->prune_last_success_ms), 0);
    assert_int_equal(pruned(fx, PRUNE_SESSIONS), 25);
    assert_int_equal(pruned(fx, PRUNE_REFRESH_TOKENS), 50);
    assert_int_equal(pruned(fx, PRUNE_AUDIT), 25);
    assert_int_equal(atomic_load(&fx->w.hs->store_prune_failures_total), 0);
    fixture_free(fx);
}

/* Slot 1 while slot 0 of the same generation lives: its timer fires, it deletes nothing. */
static void follower_does_not_prune(void **state)
{
    struct fixture *fx = fixture_new(1, 4);
    struct timeval ticks = {0, 300000}; /* several retention.interval periods */

    (void)state;
    backlog(fx, 3);
    fx->w.retention = retention_new(&fx->w);
    event_base_loopexit(fx->w.base, &ticks);
    event_base_dispatch(fx->w.base);
    assert_int_equal(atomic_load(&fx->h->prune_last_success_ms), 0);
    assert_int_equal(pruned(fx, PRUNE_SESSIONS) + pruned(fx, PRUNE_AUDIT), 0);
    /* Slot 0 goes away: slot 1 is the first live one now and takes over. */
    health_slot_release(fx->h, 0);
    run_loop(fx, 60);
    assert_int_equal(pruned(fx, PRUNE_SESSIONS), 3);
    assert_int_equal(pruned(fx, PRUNE_AUDIT), 3);
    fixture_free(fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cutoff_and_more),
        cmocka_unit_test(leader_prunes_in_steps),
        cmocka_unit_test(follower_does_not_prune),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
