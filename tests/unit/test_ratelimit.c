/* Unit tests for shared/ratelimit.c and shared/ratelimit_shm.c: GCRA, the lockout schedule,
 * client IP extraction, and the shm table across fork(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/metrics.h"
#include "shared/ratelimit.h"

#define S 1000000LL /* one second in microseconds */

static void test_gcra_burst_then_rate(void **state)
{
    int64_t tat = 0, now = 1000 * S;
    struct rl_result r;

    /* 3 per 60 s: three at once, the fourth refused for 20 s. */
    assert_int_equal(rl_gcra(&tat, now, 3, 60 * S, &r), 1);
    assert_int_equal(r.remaining, 2);
    assert_int_equal(rl_gcra(&tat, now, 3, 60 * S, &r), 1);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(rl_gcra(&tat, now, 3, 60 * S, &r), 1);
    assert_int_equal(r.remaining, 0);
    assert_true(r.reset > 59.9 && r.reset <= 60.0);
    int64_t before = tat;
    assert_int_equal(rl_gcra(&tat, now, 3, 60 * S, &r), 0);
    assert_int_equal(tat, before); /* a refusal consumes nothing */
    assert_true(r.retry_after > 19.99 && r.retry_after <= 20.0);
    /* 20 s later exactly one more fits. */
    assert_int_equal(rl_gcra(&tat, now + 20 * S, 3, 60 * S, &r), 1);
    assert_int_equal(rl_gcra(&tat, now + 20 * S, 3, 60 * S, &r), 0);
    /* After a whole idle period the burst is back. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(rl_gcra(&tat, now + 200 * S, 3, 60 * S, &r), 1);
    assert_int_equal(rl_gcra(&tat, now + 200 * S, 3, 60 * S, &r), 0);
}

static void test_gcra_sustained_rate(void **state)
{
    int64_t tat = 0, now = 5 * S;
    struct rl_result r;
    int allowed = 0;

    /* 600/min hammered every 10 ms for 60 s: the burst plus one per 100 ms. */
    for (int i = 0; i < 6000; i++)
        allowed += rl_gcra(&tat, now + (int64_t)i * 10000, 600, 60 * S, &r);
    assert_in_range(allowed, 600 + 599, 600 + 601);
}

static const struct rl_lockout lk = {
    .threshold = 5,
    .base_delay_us = 1 * S,
    .max_delay_us = 900 * S,
    .max_failures = 100,
    .reset_after_us = 86400 * S,
};

static void test_lockout_schedule(void **state)
{
    assert_int_equal(rl_lockout_wait(&lk, 0, 0), 0);
    assert_int_equal(rl_lockout_wait(&lk, 4, 0), 0);
    assert_int_equal(rl_lockout_wait(&lk, 5, 0), 1 * S);
    assert_int_equal(rl_lockout_wait(&lk, 6, 0), 2 * S);
    assert_int_equal(rl_lockout_wait(&lk, 7, 0), 4 * S);
    assert_int_equal(rl_lockout_wait(&lk, 14, 0), 512 * S);
    assert_int_equal(rl_lockout_wait(&lk, 15, 0), 900 * S); /* capped */
    assert_int_equal(rl_lockout_wait(&lk, 99, 0), 900 * S);
    assert_int_equal(rl_lockout_wait(&lk, 7, 3 * S), 1 * S); /* time already waited counts */
    assert_int_equal(rl_lockout_wait(&lk, 7, 5 * S), 0);
    /* The hard lock lasts reset_after from the last counted failure, never longer. */
    assert_int_equal(rl_lockout_wait(&lk, 100, 0), 86400 * S);
    assert_int_equal(rl_lockout_wait(&lk, 100, 86400 * S), 0);
}

static void test_account_attempts(void **state)
{
    int64_t f = 0, last = 0, now = 1000 * S;
    struct rl_result r;

    for (int i = 1; i <= 5; i++) {
        assert_int_equal(rl_account_attempt(&f, &last, now, &lk, &r), 1);
        assert_int_equal(r.failures, i);
    }
    /* The sixth at once waits base_delay, refused attempts are not counted. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rl_account_attempt(&f, &last, now + 500000, &lk, &r), 0);
        assert_true(r.retry_after > 0.49 && r.retry_after <= 0.5);
    }
    assert_int_equal(f, 5);
    assert_int_equal(rl_account_attempt(&f, &last, now + S, &lk, &r), 1);
    assert_int_equal(f, 6);
    /* Up to the hard cap: at most max_failures are ever counted, whatever the pace. */
    int64_t t = now + S;
    int counted = 6;
    for (int i = 0; i < 100000 && t < now + 86000 * S; i++) {
        t += 60 * S;
        counted += rl_account_attempt(&f, &last, t, &lk, &r);
    }
    assert_int_equal(counted, 100);
    assert_int_equal(f, 100);
    /* Locked: refused until reset_after has passed since the last failure, then it resets. */
    assert_int_equal(rl_account_attempt(&f, &last, last + 86399 * S, &lk, &r), 0);
    assert_int_equal(rl_account_attempt(&f, &last, last + 86400 * S, &lk, &r), 1);
    assert_int_equal(r.failures, 1);
}

static void test_client_ip(void **state)
{
    struct config_cidr p[2];
    char out[64];

    assert_int_equal(config_parse_cidr("10.0.0.0/8", &p[0]), 0);
    assert_int_equal(config_parse_cidr("::1", &p[1]), 0);
    /* No trusted proxies: XFF is ignored. */
    rl_client_ip(p, 0, "10.1.2.3", "203.0.113.9", out, sizeof(out));
    assert_string_equal(out, "10.1.2.3");
    /* An untrusted peer cannot choose its address. */
    rl_client_ip(p, 2, "198.51.100.7", "203.0.113.9", out, sizeof(out));
    assert_string_equal(out, "198.51.100.7");
    /* A trusted peer: the right-most untrusted hop. */
    rl_client_ip(p, 2, "10.1.2.3", "203.0.113.9", out, sizeof(out));
    assert_string_equal(out, "203.0.113.9");
    rl_client_ip(p, 2, "10.1.2.3", "1.1.1.1, 203.0.113.9 , 10.9.9.9", out, sizeof(out));
    assert_string_equal(out, "203.0.113.9");
    rl_client_ip(p, 2, "::1", "2001:db8::1", out, sizeof(out));
    assert_string_equal(out, "2001:db8::1");
    /* All hops trusted: the left-most. */
    rl_client_ip(p, 2, "10.1.2.3", "10.0.0.1,10.0.0.2", out, sizeof(out));
    assert_string_equal(out, "10.0.0.1");
    /* Garbage stops the walk at the last good hop. */
    rl_client_ip(p, 2, "10.1.2.3", "evil, 10.0.0.2", out, sizeof(out));
    assert_string_equal(out, "10.0.0.2");
    rl_client_ip(p, 2, "10.1.2.3", "not-an-ip", out, sizeof(out));
    assert_string_equal(out, "10.1.2.3");
    rl_client_ip(p, 2, "10.1.2.3", "", out, sizeof(out));
    assert_string_equal(out, "10.1.2.3");
}

struct gcra_arg {
    int limit;
    int64_t period;
    int allowed;
};

static int gcra_fn(struct rl_state *st, int found, int64_t now, void *arg)
{
    struct gcra_arg *g = arg;
    struct rl_result r;

    g->allowed = rl_gcra(&st->a, now, g->limit, g->period, &r);
    st->expires_us = st->a;
    return g->allowed;
}

static void test_shm_across_fork(void **state)
{
    struct rl_shm *t = rl_shm_create(256);
    int64_t now = 1000 * S;
    const int children = 4, tries = 500, limit = 1000;

    assert_non_null(t);
    uint64_t key = rl_shm_key(t, RL_LOGIN, "192.0.2.1");
    assert_int_not_equal(key, 0);
    assert_int_not_equal(key, rl_shm_key(t, RL_REGISTER, "192.0.2.1"));
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    for (int c = 0; c < children; c++) {
        if (fork() == 0) {
            int mine = 0;
            for (int i = 0; i < tries; i++) {
                struct gcra_arg g = {limit, 3600 * S, 0};
                rl_shm_update(t, key, now, getpid(), gcra_fn, &g, NULL);
                mine += g.allowed;
            }
            ssize_t w = write(pipefd[1], &mine, sizeof(mine));
            _exit(w == sizeof(mine) ? 0 : 1);
        }
    }
    int total = 0;
    for (int c = 0; c < children; c++) {
        int st, mine;
        assert_int_equal(read(pipefd[0], &mine, sizeof(mine)), sizeof(mine));
        total += mine;
        wait(&st);
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    /* 2000 attempts by 4 processes on one key: exactly the limit got through. */
    assert_int_equal(total, limit);
    close(pipefd[0]);
    close(pipefd[1]);
    rl_shm_destroy(t);
}

static void test_shm_bounded_eviction(void **state)
{
    struct rl_shm *t = rl_shm_create(256);
    int64_t now = 1000 * S;
    char key[32];

    assert_non_null(t);
    int cap = rl_shm_capacity(t, RL_TABLE_ADDRESS);
    assert_true(cap >= 60);
    assert_true(cap + rl_shm_capacity(t, RL_TABLE_ACCOUNT) >= 256);
    /* Far more keys than entries: every update still succeeds (oldest evicted). */
    for (int i = 0; i < cap * 8; i++) {
        struct gcra_arg g = {5, 60 * S, 0};
        snprintf(key, sizeof(key), "k%d", i);
        rl_shm_update(t, rl_shm_key(t, RL_GLOBAL, key), now, getpid(), gcra_fn, &g, NULL);
        assert_int_equal(g.allowed, 1);
    }
    /* A recent key is still there: its sixth request within the period is refused. */
    snprintf(key, sizeof(key), "k%d", cap * 8 - 1);
    for (int i = 0; i < 4; i++) {
        struct gcra_arg g = {5, 60 * S, 0};
        rl_shm_update(t, rl_shm_key(t, RL_GLOBAL, key), now, getpid(), gcra_fn, &g, NULL);
        assert_int_equal(g.allowed, 1);
    }
    struct gcra_arg g = {5, 60 * S, 0};
    rl_shm_update(t, rl_shm_key(t, RL_GLOBAL, key), now, getpid(), gcra_fn, &g, NULL);
    assert_int_equal(g.allowed, 0);
    rl_shm_destroy(t);
}

static int hold_fn(struct rl_state *st, int found, int64_t now, void *arg)
{
    _exit(0); /* dies holding the bucket lock */
}

static int set_fn(struct rl_state *st, int found, int64_t now, void *arg)
{
    *st = *(const struct rl_state *)arg;
    return 1;
}

struct probe {
    int found;
    struct rl_state st;
};

static int probe_fn(struct rl_state *st, int found, int64_t now, void *arg)
{
    struct probe *p = arg;
    p->found = found;
    p->st = *st;
    return 0;
}

/* A zombie (exited, not reaped) still answers kill(pid, 0): its lock is taken over anyway. */
static void test_shm_zombie_lock_owner(void **state)
{
    struct rl_shm *t = rl_shm_create(256);
    int st;

    assert_non_null(t);
    uint64_t key = rl_shm_key(t, RL_ACCOUNT, "zombie");
    pid_t pid = fork();
    if (pid == 0)
        rl_shm_update(t, key, 1, getpid(), hold_fn, NULL, NULL);
    /* Not reaped before the takeover: wait until it is a zombie. */
    siginfo_t si;
    assert_int_equal(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
    struct gcra_arg g = {5, 60 * S, 0};
    rl_shm_update(t, key, 1000 * S, getpid(), gcra_fn, &g, NULL);
    assert_int_equal(g.allowed, 1);
    waitpid(pid, &st, 0);
    rl_shm_destroy(t);
}

static void test_shm_dead_lock_owner(void **state)
{
    struct rl_shm *t = rl_shm_create(256);
    uint64_t key;
    int st;

    assert_non_null(t);
    key = rl_shm_key(t, RL_ACCOUNT, "abc");
    pid_t pid = fork();
    if (pid == 0)
        rl_shm_update(t, key, 1, getpid(), hold_fn, NULL, NULL);
    waitpid(pid, &st, 0);
    /* The lock of the dead process is taken over instead of spinning forever. */
    struct gcra_arg g = {5, 60 * S, 0};
    rl_shm_update(t, key, 1000 * S, getpid(), gcra_fn, &g, NULL);
    assert_int_equal(g.allowed, 1);
    rl_shm_destroy(t);
}

/* A lookup of a missing key (fn stores nothing) must not evict a live entry. */
static int lookup_fn(struct rl_state *st, int found, int64_t now, void *arg)
{
    return 0;
}

/* Stores n account entries in the bucket of `target`: `prio`, expiring at `expires`, held until
 * `hold_s` (wall-clock seconds, 0: not held). Their keys go to keys[]. */
static void fill_bucket_of(struct rl_shm *t, const char *name, uint64_t target, int64_t now, int n,
                           int prio, int64_t expires, uint32_t hold_s, uint64_t *keys)
{
    char key[48];
    int got = 0;

    for (int i = 0; got < n && i < 100000; i++) {
        snprintf(key, sizeof(key), "%s%d", name, i);
        uint64_t k = rl_shm_key(t, RL_ACCOUNT, key);
        if (rl_shm_bucket_of(t, k) != rl_shm_bucket_of(t, target) || k == target)
            continue;
        struct rl_state want = {
            .a = prio, .b = now, .expires_us = expires, .hold_until_s = hold_s, .prio = prio};
        keys[got++] = k;
        assert_int_equal(rl_shm_update(t, k, now, getpid(), set_fn, &want, NULL), 1);
    }
    assert_int_equal(got, n);
}

static void test_shm_lookup_does_not_evict(void **state)
{
    struct rl_shm *t = rl_shm_create(256);
    int64_t now = 1000 * S;
    uint64_t keys[6];
    struct probe p;

    assert_non_null(t);
    assert_int_equal(rl_shm_capacity(t, RL_TABLE_ACCOUNT) % 6, 0);
    uint64_t missing = rl_shm_key(t, RL_ACCOUNT, "missing");
    fill_bucket_of(t, "f", missing, now, 6, 1, now + 60 * S, 0, keys);
    rl_shm_update(t, missing, now, getpid(), lookup_fn, NULL, NULL);
    for (int i = 0; i < 6; i++) {
        rl_shm_update(t, keys[i], now, getpid(), probe_fn, &p, NULL);
        assert_true(p.found);
    }
    uint64_t ev, refused;
    rl_shm_stats(t, RL_TABLE_ACCOUNT, &ev, &refused);
    assert_int_equal(ev, 0);
    assert_int_equal(refused, 0);
    rl_shm_destroy(t);
}

/*
 * Table pressure never resets an account in a delay or lock, and a newcomer that cannot be
 * stored is refused (RL_SHM_FULL), never decided on a state that is then forgotten.
 */
static void test_shm_full_bucket_refuses(void **state)
{
    struct rl_shm *t = rl_shm_create(256);
    int64_t now = 1000 * S, wait = 0;
    uint64_t keys[6], ev, refused;
    struct probe p;

    assert_non_null(t);
    uint64_t target = rl_shm_key(t, RL_ACCOUNT, "victim");
    /* A bucket of held accounts (held for 100..105 s), all expiring before the newcomer. */
    for (int i = 0; i < 6; i++) {
        char name[16];
        snprintf(name, sizeof(name), "h%d-", i);
        fill_bucket_of(t, name, target, now, 1, 7, now + 200 * S, (uint32_t)(1105 - i), keys + i);
    }
    struct rl_state fresh = {.a = 1, .b = now, .expires_us = now + 3600 * S, .prio = 2};
    assert_int_equal(rl_shm_update(t, target, now, getpid(), set_fn, &fresh, &wait), RL_SHM_FULL);
    assert_int_equal(wait, 100 * S); /* until the first hold ends */
    for (int i = 0; i < 6; i++) {
        rl_shm_update(t, keys[i], now, getpid(), probe_fn, &p, NULL);
        assert_true(p.found);
        assert_int_equal(p.st.a, 7);
    }
    rl_shm_update(t, target, now, getpid(), probe_fn, &p, NULL);
    assert_false(p.found);
    rl_shm_stats(t, RL_TABLE_ACCOUNT, &ev, &refused);
    assert_int_equal(ev, 0);
    assert_int_equal(refused, 1);
    rl_shm_stats(t, RL_TABLE_ADDRESS, &ev, &refused);
    assert_int_equal(refused, 0);
    /* A newcomer of the highest priority is refused all the same. */
    struct rl_state high = {.a = 99, .b = now, .expires_us = now + 3600 * S, .prio = 100};
    assert_int_equal(rl_shm_update(t, target, now, getpid(), set_fn, &high, NULL), RL_SHM_FULL);
    /* Once the first hold ended, that entry (and only it) makes room. */
    assert_int_equal(rl_shm_update(t, target, now + 100 * S, getpid(), set_fn, &fresh, NULL), 1);
    rl_shm_update(t, keys[5], now + 100 * S, getpid(), probe_fn, &p, NULL);
    assert_false(p.found);
    for (int i = 0; i < 5; i++) {
        rl_shm_update(t, keys[i], now + 100 * S, getpid(), probe_fn, &p, NULL);
        assert_true(p.found);
    }
    rl_shm_destroy(t);

    /* Mixed bucket: held accounts stay; the others go by failures (then expiry) first. */
    t = rl_shm_create(256);
    assert_non_null(t);
    target = rl_shm_key(t, RL_ACCOUNT, "victim");
    fill_bucket_of(t, "held", target, now, 4, 6, now + 5 * S, 2000, keys);
    fill_bucket_of(t, "low", target, now, 1, 2, now + 600 * S, 0, keys + 4);
    fill_bucket_of(t, "more", target, now, 1, 3, now + 600 * S, 0, keys + 5);
    uint64_t newer[2];
    fill_bucket_of(t, "new", target, now, 2, 3, now + 3600 * S, 0, newer);
    rl_shm_update(t, keys[4], now, getpid(), probe_fn, &p, NULL);
    assert_false(p.found); /* the fewest failures went first */
    rl_shm_update(t, keys[5], now, getpid(), probe_fn, &p, NULL);
    assert_false(p.found); /* then the next unheld one */
    for (int i = 0; i < 4; i++) {
        rl_shm_update(t, keys[i], now, getpid(), probe_fn, &p, NULL);
        assert_true(p.found); /* the held accounts stay */
    }
    for (int i = 0; i < 2; i++) {
        rl_shm_update(t, newer[i], now, getpid(), probe_fn, &p, NULL);
        assert_true(p.found);
    }
    rl_shm_stats(t, RL_TABLE_ACCOUNT, &ev, &refused);
    assert_int_equal(ev, 2);
    assert_int_equal(refused, 0);
    rl_shm_destroy(t);
}

static void test_client_key(void **state)
{
    char out[64];

    rl_client_key(64, "2001:db8:1:2:aaaa:bbbb:cccc:dddd", out, sizeof(out));
    assert_string_equal(out, "2001:db8:1:2::/64");
    rl_client_key(64, "2001:db8:1:2::1", out, sizeof(out));
    assert_string_equal(out, "2001:db8:1:2::/64");
    rl_client_key(48, "2001:db8:1:2::1", out, sizeof(out));
    assert_string_equal(out, "2001:db8:1::/48");
    rl_client_key(56, "2001:db8:1:2ff::1", out, sizeof(out));
    assert_string_equal(out, "2001:db8:1:200::/56");
    rl_client_key(128, "2001:db8::7", out, sizeof(out));
    assert_string_equal(out, "2001:db8::7");
    rl_client_key(64, "192.0.2.7", out, sizeof(out));
    assert_string_equal(out, "192.0.2.7");
    rl_client_key(64, "::ffff:192.0.2.7", out, sizeof(out));
    assert_string_equal(out, "192.0.2.7");
    rl_client_key(64, "junk", out, sizeof(out));
    assert_string_equal(out, "junk");
}

static void test_client_ip_mapped(void **state)
{
    struct config_cidr p[1];
    char out[64];

    assert_int_equal(config_parse_cidr("10.0.0.0/8", &p[0]), 0);
    /* A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: still a trusted proxy. */
    rl_client_ip(p, 1, "::ffff:10.1.2.3", "203.0.113.9", out, sizeof(out));
    assert_string_equal(out, "203.0.113.9");
    rl_client_ip(p, 1, "::ffff:198.51.100.7", "203.0.113.9", out, sizeof(out));
    assert_string_equal(out, "198.51.100.7");
    rl_client_ip(p, 1, "10.1.2.3", "::ffff:203.0.113.9, ::ffff:10.0.0.1", out, sizeof(out));
    assert_string_equal(out, "203.0.113.9");
    /* Two X-Forwarded-For lines combined: the forged left values are never reached. */
    rl_client_ip(p, 1, "10.1.2.3", "1.2.3.4, 5.6.7.8, 203.0.113.9", out, sizeof(out));
    assert_string_equal(out, "203.0.113.9");
}

static int account_done_failures;
static void account_done(void *arg, const struct rl_check *c)
{
    account_done_failures = c->denied >= 0 ? -1 : c->item[0].r.failures;
}

/* An attempt that was no guess (store down, overloaded) gives its failure back; a success
 * forgets them all. The limiter on the shm table alone (defaults: threshold 5). */
static void test_account_refund(void **state)
{
    char *errors = NULL;
    struct config *cfg = config_load(NULL, &errors);
    char err[256], key[RL_KEY_MAX];
    const enum rl_rule rule = RL_ACCOUNT;
    const char *k = key;

    if (cfg == NULL)
        fail_msg("config_load: %s", errors ? errors : "?");
    assert_int_equal(cfg->ratelimit.ipv6_prefix, 64);
    assert_int_equal(ratelimit_shm_setup(cfg, err, sizeof(err)), 0);
    struct health *h = health_create();
    assert_non_null(h);
    int slot = health_slot_claim(h, 1, 0);
    struct ratelimit *rl = ratelimit_new(cfg, NULL, &h->slot[slot]);
    assert_non_null(rl);
    ratelimit_account_key("refund@example.com", key);
    for (int i = 1; i <= 3; i++) {
        ratelimit_check(rl, 1, &rule, &k, account_done, NULL);
        assert_int_equal(account_done_failures, i);
    }
    ratelimit_account_refund(rl, key, 0); /* the third attempt hit a store error */
    ratelimit_check(rl, 1, &rule, &k, account_done, NULL);
    assert_int_equal(account_done_failures, 3);
    ratelimit_account_refund(rl, key, 0);
    ratelimit_account_refund(rl, key, 0);
    ratelimit_account_refund(rl, key, 0);
    ratelimit_account_refund(rl, key, 0); /* never below zero */
    ratelimit_check(rl, 1, &rule, &k, account_done, NULL);
    assert_int_equal(account_done_failures, 1);
    ratelimit_account_success(rl, key);
    ratelimit_check(rl, 1, &rule, &k, account_done, NULL);
    assert_int_equal(account_done_failures, 1);
    char ck[64];
    ratelimit_client_key(rl, "2001:db8:9:8:7::1", ck, sizeof(ck));
    assert_string_equal(ck, "2001:db8:9:8::/64");
    ratelimit_free(rl);
    ratelimit_shm_cleanup();
    health_destroy(h);
    config_free(cfg);
    free(errors);
}

/* ratelimit.ipv6_prefix range and the cap on ratelimit.redis.prefix (Redis key buffers). */
static struct config *load_text(const char *text, char **errors)
{
    char path[] = "/tmp/test_ratelimit_cfg.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct config *cfg = config_load(path, errors);
    unlink(path);
    return cfg;
}

static void test_config_keys(void **state)
{
    char *errors = NULL;
    struct config *cfg = load_text("ratelimit = { ipv6_prefix = 56; };\n", &errors);

    assert_non_null(cfg);
    assert_int_equal(cfg->ratelimit.ipv6_prefix, 56);
    config_free(cfg);
    free(errors);
    errors = NULL;
    assert_null(load_text("ratelimit = { ipv6_prefix = 16; };\n", &errors));
    assert_non_null(strstr(errors, "ratelimit.ipv6_prefix"));
    free(errors);
    errors = NULL;
    char text[256], prefix[CONFIG_RL_PREFIX_MAX + 2];
    memset(prefix, 'p', sizeof(prefix) - 2);
    prefix[CONFIG_RL_PREFIX_MAX] = '\0';
    snprintf(text, sizeof(text), "ratelimit = { redis = { prefix = \"%s\"; }; };\n", prefix);
    cfg = load_text(text, &errors); /* exactly the maximum */
    assert_non_null(cfg);
    config_free(cfg);
    free(errors);
    errors = NULL;
    prefix[CONFIG_RL_PREFIX_MAX] = 'p';
    prefix[CONFIG_RL_PREFIX_MAX + 1] = '\0';
    snprintf(text, sizeof(text), "ratelimit = { redis = { prefix = \"%s\"; }; };\n", prefix);
    assert_null(load_text(text, &errors));
    assert_non_null(strstr(errors, "ratelimit.redis.prefix is longer than 64 bytes"));
    free(errors);
}

static int check_denied;
static double check_retry;
static int check_failures;
static void check_done(void *arg, const struct rl_check *c)
{
    check_denied = c->denied;
    check_retry = c->denied >= 0 ? c->item[c->denied].r.retry_after : 0;
    check_failures = c->item[0].r.failures;
}

static int limiter_check(struct ratelimit *rl, enum rl_rule rule, const char *key)
{
    ratelimit_check(rl, 1, &rule, &key, check_done, NULL);
    return check_denied < 0;
}

/*
 * The limiter on a table of the minimum size (256 slots): accounts driven into a one-hour
 * delay fill their region; a new account whose bucket is full is refused with Retry-After
 * (never allowed on a state that cannot be kept); a flood of client addresses cannot push the
 * held accounts out, and a flood of new accounts cannot push an address's exhausted quota out.
 */
static void test_limiter_full_table(void **state)
{
    char *errors = NULL, err[256], key[RL_KEY_MAX], email[64];
    struct config *cfg = load_text("ratelimit = { shm = { slots = 256; };\n"
                                   "  login = { limit = 5; period = 3600; };\n"
                                   "  lockout = { threshold = 2; base_delay = 3600; "
                                   "max_delay = 3600; max_failures = 3; };\n};\n",
                                   &errors);
    int first_refused = -1, held = 0;
    uint64_t ev, refused;

    assert_non_null(cfg);
    assert_int_equal(ratelimit_shm_setup(cfg, err, sizeof(err)), 0);
    struct health *h = health_create();
    assert_non_null(h);
    struct ratelimit *rl = ratelimit_new(cfg, NULL, &h->slot[health_slot_claim(h, 1, 0)]);
    assert_non_null(rl);
    /* An address that used its whole login quota. */
    for (int i = 0; i < 5; i++)
        assert_true(limiter_check(rl, RL_LOGIN, "192.0.2.9"));
    assert_false(limiter_check(rl, RL_LOGIN, "192.0.2.9"));
    /* Accounts with two failures each (held for an hour) until a new one cannot be stored. */
    for (int i = 0; i < 5000 && first_refused < 0; i++) {
        snprintf(email, sizeof(email), "fill%d@example.com", i);
        ratelimit_account_key(email, key);
        if (!limiter_check(rl, RL_ACCOUNT, key)) {
            first_refused = i;
            break;
        }
        assert_int_equal(check_failures, 1);
        assert_true(limiter_check(rl, RL_ACCOUNT, key));
        held++;
    }
    assert_true(first_refused > 0);
    int cap = rl_shm_capacity(ratelimit_shm_table(), RL_TABLE_ACCOUNT);
    assert_true(held >= cap / 6 && held <= cap);
    /* (a) refused with Retry-After until the first hold of the bucket ends, about an hour */
    assert_true(check_retry > 3500 && check_retry <= 3601); /* holds end on whole seconds */
    rl_shm_stats(ratelimit_shm_table(), RL_TABLE_ACCOUNT, &ev, &refused);
    assert_int_equal(refused, 1);
    for (int i = 0; i < 3; i++)
        assert_false(limiter_check(rl, RL_ACCOUNT, key)); /* every time, not once */
    /* (b) 5000 client addresses on the global rule: the address region makes room among its
     * own entries, the account region is untouched. */
    for (int i = 0; i < 5000; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%d.%d.1", i / 256, i % 256);
        assert_true(limiter_check(rl, RL_GLOBAL, ip));
    }
    rl_shm_stats(ratelimit_shm_table(), RL_TABLE_ADDRESS, &ev, &refused);
    assert_true(ev > 0);
    assert_int_equal(refused, 0);
    for (int i = 0; i < first_refused; i++) {
        snprintf(email, sizeof(email), "fill%d@example.com", i);
        ratelimit_account_key(email, key);
        assert_false(limiter_check(rl, RL_ACCOUNT, key)); /* still in its one-hour delay */
        assert_int_equal(check_failures, 2);
        assert_true(check_retry > 3500);
    }
    /* ... and the accounts flood left the address's exhausted quota where it was. */
    assert_false(limiter_check(rl, RL_LOGIN, "192.0.2.9"));
    rl_shm_stats(ratelimit_shm_table(), RL_TABLE_ACCOUNT, &ev, &refused);
    assert_int_equal(refused, 4);
    ratelimit_free(rl);
    ratelimit_shm_cleanup();
    health_destroy(h);
    config_free(cfg);
    free(errors);
}

static void test_account_key(void **state)
{
    char a[RL_KEY_MAX], b[RL_KEY_MAX];

    ratelimit_account_key("alice@example.com", a);
    ratelimit_account_key("alice@example.com", b);
    assert_string_equal(a, b);
    assert_int_equal(strlen(a), 32);
    ratelimit_account_key("bob@example.com", b);
    assert_string_not_equal(a, b);
}

/* The limiter's metrics, summed over the slots; the fallback gauge only counts live workers. */
static void test_metrics(void **state)
{
    struct health *h = health_create();
    size_t len;

    assert_non_null(h);
    int a = health_slot_claim(h, 1, 0), b = health_slot_claim(h, 1, 0);
    health_slot_state(h, a, SLOT_READY);
    health_slot_state(h, b, SLOT_READY);
    atomic_store(&h->slot[a].rl_limited_total[RL_LOGIN], 3);
    atomic_store(&h->slot[b].rl_limited_total[RL_LOGIN], 4);
    atomic_store(&h->slot[b].rl_limited_total[RL_ACCOUNT], 1);
    atomic_store(&h->slot[a].rl_lockouts_total, 2);
    atomic_store(&h->slot[a].rl_checks_total[1], 10);
    atomic_store(&h->slot[b].rl_redis_latency_bucket[0], 5);
    atomic_store(&h->slot[b].rl_redis_latency_bucket[HEALTH_RL_BUCKETS - 1], 1);
    atomic_store(&h->slot[a].auth_events[AUTH_EV_REFRESH_REUSE][1], 6);
    atomic_store(&h->slot[b].rl_fallback, 1);
    char *text = metrics_render(h, &len);
    assert_non_null(text);
    assert_non_null(strstr(text, "authd_ratelimit_limited_total{rule=\"login\"} 7\n"));
    assert_non_null(strstr(text, "authd_ratelimit_limited_total{rule=\"account\"} 1\n"));
    assert_non_null(strstr(text, "authd_ratelimit_limited_total{rule=\"global\"} 0\n"));
    assert_non_null(strstr(text, "authd_ratelimit_lockouts_total 2\n"));
    assert_non_null(strstr(text, "authd_ratelimit_checks_total{backend=\"redis\"} 10\n"));
    assert_non_null(
        strstr(text, "authd_ratelimit_redis_latency_seconds_bucket{le=\"0.0001\"} 5\n"));
    assert_non_null(strstr(text, "authd_ratelimit_redis_latency_seconds_bucket{le=\"+Inf\"} 6\n"));
    assert_non_null(strstr(text, "authd_ratelimit_redis_latency_seconds_count 6\n"));
    assert_non_null(strstr(text, "authd_ratelimit_fallback_active 1\n"));
    assert_non_null(
        strstr(text, "authd_auth_events_total{event=\"refresh_reuse\",result=\"failure\"} 6\n"));
    free(text);
    /* The worker on fallback is gone: the gauge drops, its counters stay. */
    health_slot_release(h, b);
    text = metrics_render(h, &len);
    assert_non_null(strstr(text, "authd_ratelimit_fallback_active 0\n"));
    assert_non_null(strstr(text, "authd_ratelimit_limited_total{rule=\"login\"} 7\n"));
    free(text);
    health_destroy(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gcra_burst_then_rate),
        cmocka_unit_test(test_gcra_sustained_rate),
        cmocka_unit_test(test_lockout_schedule),
        cmocka_unit_test(test_account_attempts),
        cmocka_unit_test(test_client_ip),
        cmocka_unit_test(test_shm_across_fork),
        cmocka_unit_test(test_shm_bounded_eviction),
        cmocka_unit_test(test_shm_dead_lock_owner),
        cmocka_unit_test(test_shm_zombie_lock_owner),
        cmocka_unit_test(test_shm_lookup_does_not_evict),
        cmocka_unit_test(test_shm_full_bucket_refuses),
        cmocka_unit_test(test_limiter_full_table),
        cmocka_unit_test(test_client_key),
        cmocka_unit_test(test_client_ip_mapped),
        cmocka_unit_test(test_account_refund),
        cmocka_unit_test(test_config_keys),
        cmocka_unit_test(test_account_key),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
