/*
 * testhook: switches that let the integration tests put authd into a state deterministically
 * instead of racing it with signals or the clock. They exist only in a build configured with
 * --enable-test-hooks (AUTHD_TEST_HOOKS; scripts/test and `make distcheck` build that way). In
 * any other build this header turns every hook into a no-op and shared/testhook.c is not
 * compiled: a release binary holds none of it.
 *
 * The hooks are read from the environment once, when the process starts (testhook_init, from
 * main), and every worker inherits them through fork:
 *
 *   AUTHD_TEST_HOLD_READY=FILE  a worker that has finished its set-up reports itself ready only
 *                               once FILE exists: until then it stays "starting" (it beats its
 *                               heartbeat and drains on SIGTERM as usual; it looks every 20 ms).
 *                               A test removes FILE before a reload to hold the new generation
 *                               "not ready yet" for as long as it needs (test_reload_rollback).
 *   AUTHD_TEST_CLOCK_FILE=FILE  while FILE exists and holds a Unix time in seconds, the workers'
 *                               access-token checks (exp, nbf, iat and the verified-token cache)
 *                               take that as the current time: a frozen clock, so a test can
 *                               place a token's exp exactly relative to the server's "now"
 *                               (test_auth_jwt). Without FILE they use the real clock.
 *
 * `authd version` ends in " (test-hooks)" in a build that has them; the tests that need one
 * skip (exit 77) naming the missing configure option otherwise (lib.sh need_test_hooks).
 */
#ifndef AUTHD_TESTHOOK_H
#define AUTHD_TESTHOOK_H

#include <stdint.h>

struct event_base;

#ifdef AUTHD_TEST_HOOKS

#define TESTHOOK_VERSION_SUFFIX " (test-hooks)"

/* Reads the AUTHD_TEST_* variables; call once at start-up, before any fork. */
void testhook_init(void);

/*
 * AUTHD_TEST_HOLD_READY: returns 0 when the caller may report ready now; 1 when the hold file
 * is missing, in which case `ready(arg)` is called on `base`'s loop once it appears (the caller
 * checks it has not started draining meanwhile). testhook_hold_free releases the polling event.
 */
int testhook_hold_ready(struct event_base *base, void (*ready)(void *), void *arg);
void testhook_hold_free(void);

/* AUTHD_TEST_CLOCK_FILE: the time the access-token checks use; `real_now` without the file. */
int64_t testhook_token_clock(int64_t real_now);

#else

#define TESTHOOK_VERSION_SUFFIX ""

static inline void testhook_init(void)
{
}

static inline int testhook_hold_ready(struct event_base *base, void (*ready)(void *), void *arg)
{
    (void)base;
    (void)ready;
    (void)arg;
    return 0;
}

static inline void testhook_hold_free(void)
{
}

static inline int64_t testhook_token_clock(int64_t real_now)
{
    return real_now;
}

#endif

#endif
