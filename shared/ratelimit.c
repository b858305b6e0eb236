/* ratelimit: the limiter interface, GCRA and lockout math, client IP (see ratelimit.h). */
#include "shared/ratelimit.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <math.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shared/log.h"

struct ratelimit {
    const struct config *cfg;
    struct rl_shm *shm;
    const struct rl_backend_ops *ops; /* NULL: the shm table decides alone */
    struct rl_backend *be;
    struct health_slot *hs;
    struct rl_lockout lockout;
    struct config_cidr proxies[CONFIG_MAX_TRUSTED_PROXIES];
    int nproxies;
    int ipv6_prefix;
    pid_t pid;
};

static const char *const rule_names[RL_RULES] = {"global", "login", "register", "refresh",
                                                 "account"};

const char *ratelimit_rule_name(enum rl_rule rule)
{
    return (unsigned)rule < RL_RULES ? rule_names[rule] : "unknown";
}

int64_t ratelimit_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* wall clock: Redis TIME is wall clock too */
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- pure decisions ---- */

int rl_gcra(int64_t *tat, int64_t now_us, int limit, int64_t period_us, struct rl_result *r)
{
    int64_t interval = period_us / (limit > 0 ? limit : 1);
    if (interval < 1)
        interval = 1;
    int64_t t = *tat > now_us ? *tat : now_us;
    int64_t next = t + interval;

    memset(r, 0, sizeof(*r));
    if (next - now_us > period_us) {
        r->retry_after = (double)(next - now_us - period_us) / 1e6;
        r->reset = (double)(t - now_us) / 1e6;
        return 0;
    }
    *tat = next;
    r->allowed = 1;
    r->remaining = (long)((period_us - (next - now_us)) / interval);
    r->reset = (double)(next - now_us) / 1e6;
    return 1;
}

void rl_lockout_from_config(const struct config *cfg, struct rl_lockout *p)
{
    p->threshold = cfg->ratelimit.lockout.threshold;
    p->base_delay_us = (int64_t)(cfg->ratelimit.lockout.base_delay * 1e6);
    p->max_delay_us = (int64_t)(cfg->ratelimit.lockout.max_delay * 1e6);
    p->max_failures = cfg->ratelimit.lockout.max_failures;
    p->reset_after_us = (int64_t)(cfg->ratelimit.lockout.reset_after * 1e6);
}

int64_t rl_lockout_wait(const struct rl_lockout *p, int failures, int64_t since_last_us)
{
    int64_t delay;

    if (failures >= p->max_failures)
        delay = p->reset_after_us;
    else if (failures < p->threshold)
        return 0;
    else {
        double d = ldexp((double)p->base_delay_us, failures - p->threshold);
        delay = d >= (double)p->max_delay_us ? p->max_delay_us : (int64_t)d;
    }
    return delay > since_last_us ? delay - since_last_us : 0;
}

int rl_account_attempt(int64_t *failures, int64_t *last_us, int64_t now_us,
                       const struct rl_lockout *p, struct rl_result *r)
{
    memset(r, 0, sizeof(*r));
    if (*last_us != 0 && now_us - *last_us >= p->reset_after_us)
        *failures = 0;
    int64_t wait = rl_lockout_wait(p, (int)*failures, now_us - *last_us);
    r->failures = (int)*failures;
    if (wait > 0) {
        r->retry_after = (double)wait / 1e6;
        return 0;
    }
    *failures += 1;
    *last_us = now_us;
    r->allowed = 1;
    r->failures = (int)*failures;
    return 1;
}

static int parse_addr(const char *text, size_t len, int *family, unsigned char addr[16])
{
    char buf[INET6_ADDRSTRLEN];

    while (len > 0 && (*text == ' ' || *text == '\t')) {
        text++;
        len--;
    }
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, text, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, addr) == 1)
        *family = AF_INET;
    else if (inet_pton(AF_INET6, buf, addr) == 1)
        *family = AF_INET6;
    else
        return -1;
    /* ::ffff:a.b.c.d (a dual-stack socket's IPv4 peer) is that IPv4 address. */
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (*family == AF_INET6 && memcmp(addr, mapped, sizeof(mapped)) == 0) {
        memmove(addr, addr + 12, 4);
        *family = AF_INET;
    }
    return 0;
}

static int trusted(const struct config_cidr *proxies, int n, int family, const unsigned char *a)
{
    for (int i = 0; i < n; i++)
        if (config_cidr_match(&proxies[i], family, a))
            return 1;
    return 0;
}

static void addr_text(int family, const unsigned char *a, char *out, size_t outlen)
{
    if (inet_ntop(family, a, out, (socklen_t)outlen) == NULL)
        snprintf(out, outlen, "-");
}

void rl_client_ip(const struct config_cidr *proxies, int n, const char *peer, const char *xff,
                  char *out, size_t outlen)
{
    unsigned char a[16];
    int family;

    snprintf(out, outlen, "%s", peer);
    if (parse_addr(peer, strlen(peer), &family, a) < 0)
        return;
    addr_text(family, a, out, outlen); /* canonical, IPv4-mapped as IPv4 */
    if (n == 0 || xff == NULL || !trusted(proxies, n, family, a))
        return;
    /* Walk X-Forwarded-For from the right: each hop appended the address it received from. */
    const char *end = xff + strlen(xff);
    while (end > xff) {
        const char *start = end;
        while (start > xff && start[-1] != ',')
            start--;
        if (parse_addr(start, (size_t)(end - start), &family, a) < 0)
            return; /* malformed: keep the last good hop */
        addr_text(family, a, out, outlen);
        if (!trusted(proxies, n, family, a))
            return;
        end = start > xff ? start - 1 : xff;
    }
}

void rl_client_key(int ipv6_prefix, const char *addr, char *out, size_t outlen)
{
    unsigned char a[16];
    int family;
    char text[INET6_ADDRSTRLEN];

    if (parse_addr(addr, strlen(addr), &family, a) < 0) {
        snprintf(out, outlen, "%s", addr);
        return;
    }
    if (family == AF_INET6 && ipv6_prefix >= 0 && ipv6_prefix < 128) {
        for (int i = 0; i < 16; i++) {
            int bits = ipv6_prefix - 8 * i;
            a[i] &= bits >= 8 ? 0xff : bits <= 0 ? 0 : (unsigned char)(0xff << (8 - bits));
        }
        addr_text(family, a, text, sizeof(text));
        snprintf(out, outlen, "%s/%d", text, ipv6_prefix);
        return;
    }
    addr_text(family, a, out, outlen);
}

/* A trusted proxy written as ::ffff:a.b.c.d[/96+n] matches IPv4 a.b.c.d[/n]. */
static void unmap_cidr(struct config_cidr *c)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (c->family == AF_INET6 && c->prefix >= 96 && memcmp(c->addr, mapped, 12) == 0) {
        memmove(c->addr, c->addr + 12, 4);
        memset(c->addr + 4, 0, 12);
        c->family = AF_INET;
        c->prefix -= 96;
    }
}

/* ---- the limiter ---- */

struct ratelimit *ratelimit_new(const struct config *cfg, struct event_base *base,
                                struct health_slot *hs)
{
    struct ratelimit *rl = calloc(1, sizeof(*rl));

    if (rl == NULL) {
        log_error("ratelimit: out of memory");
        return NULL;
    }
    rl->cfg = cfg;
    rl->hs = hs;
    rl->pid = getpid();
    rl->shm = ratelimit_shm_table();
    if (rl->shm == NULL) {
        log_error("ratelimit: no shared-memory table (the master maps it before forking)");
        free(rl);
        return NULL;
    }
    rl_lockout_from_config(cfg, &rl->lockout);
    for (int i = 0; i < cfg->ratelimit.trusted_proxies_count; i++)
        if (config_parse_cidr(cfg->ratelimit.trusted_proxies[i], &rl->proxies[rl->nproxies]) == 0)
            unmap_cidr(&rl->proxies[rl->nproxies++]);
    rl->ipv6_prefix = cfg->ratelimit.ipv6_prefix;
    atomic_store_explicit(&hs->rl_fallback, 0, memory_order_relaxed);
    if (strcmp(cfg->ratelimit.backend, "redis") == 0) {
        rl->ops = &rl_backend_redis;
        rl->be = rl->ops->open(rl, cfg, base, hs);
        if (rl->be == NULL) {
            free(rl);
            return NULL;
        }
    }
    return rl;
}

void ratelimit_shutdown(struct ratelimit *rl)
{
    if (rl == NULL || rl->be == NULL)
        return;
    struct rl_backend *be = rl->be;
    rl->be = NULL; /* checks started from the callbacks below use the shm table */
    rl->ops->close(be);
}

void ratelimit_free(struct ratelimit *rl)
{
    ratelimit_shutdown(rl);
    free(rl);
}

int ratelimit_rule_limit(const struct ratelimit *rl, enum rl_rule rule, int64_t *period_us)
{
    const struct config_rate *r = NULL;

    switch (rule) {
    case RL_GLOBAL:
        r = &rl->cfg->ratelimit.global;
        break;
    case RL_LOGIN:
        r = &rl->cfg->ratelimit.login;
        break;
    case RL_REGISTER:
        r = &rl->cfg->ratelimit.register_;
        break;
    case RL_REFRESH:
        r = &rl->cfg->ratelimit.refresh;
        break;
    default:
        *period_us = 0;
        return 0;
    }
    *period_us = (int64_t)(r->period * 1e6);
    return r->limit;
}

const struct rl_lockout *ratelimit_lockout(const struct ratelimit *rl)
{
    return &rl->lockout;
}

int ratelimit_rule_on(const struct ratelimit *rl, enum rl_rule rule)
{
    int64_t period;
    if (rule == RL_ACCOUNT)
        return 1;
    return ratelimit_rule_limit(rl, rule, &period) > 0;
}

int ratelimit_degraded(const struct ratelimit *rl)
{
    return rl->be != NULL && rl->ops->degraded(rl->be);
}

void ratelimit_client_ip(const struct ratelimit *rl, const char *peer, const char *xff, char *out,
                         size_t outlen)
{
    rl_client_ip(rl->proxies, rl->nproxies, peer, xff, out, outlen);
}

void ratelimit_client_key(const struct ratelimit *rl, const char *addr, char *out, size_t outlen)
{
    rl_client_key(rl->ipv6_prefix, addr, out, outlen);
}

void ratelimit_account_key(const char *email, char out[RL_KEY_MAX])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)email, strlen(email), md);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* ---- shm evaluation ---- */

struct shm_op {
    struct ratelimit *rl;
    struct rl_item *it;
};

/* Eviction order of an account entry with `failures`: fewest failures first (see rl_state). */
static int16_t account_prio(int64_t failures)
{
    if (failures < 0)
        failures = 0;
    if (failures > INT16_MAX - 1)
        failures = INT16_MAX - 1;
    return (int16_t)(1 + failures);
}

/* Until when (wall-clock seconds) an account entry is held: while its delay or lock lasts. */
static uint32_t account_hold(const struct rl_lockout *p, int64_t failures, int64_t last_us,
                             int64_t now)
{
    int64_t wait =
        rl_lockout_wait(p, failures > INT32_MAX ? INT32_MAX : (int)failures, now - last_us);

    return wait > 0 ? (uint32_t)((now + wait + 999999) / 1000000) : 0;
}

/* st's eviction order and hold from its failures, after any change of them. */
static void account_mark(struct rl_state *st, const struct rl_lockout *p, int64_t now)
{
    st->prio = account_prio(st->a);
    st->hold_until_s = account_hold(p, st->a, st->b, now);
}

static void add_pending(struct rl_state *st, int64_t n)
{
    int64_t v = st->pending + n;
    st->pending = (int16_t)(v > INT16_MAX ? INT16_MAX : v < 0 ? 0 : v);
}

static int shm_apply(struct rl_state *st, int found, int64_t now, void *arg)
{
    struct shm_op *op = arg;
    struct ratelimit *rl = op->rl;
    struct rl_item *it = op->it;
    int64_t period;

    if (it->rule == RL_ACCOUNT) {
        int changed = 0;
        if (it->pushed > 0) {
            /* Failures taken for a Redis check that never got an answer: still not seen by
             * Redis, so they stay pending (and counted here). */
            if (!found) {
                st->a = it->pushed;
                st->b = now - it->pushed_age_us;
            }
            add_pending(st, it->pushed);
            it->pushed = 0;
            changed = 1;
        }
        int allowed = rl_account_attempt(&st->a, &st->b, now, &rl->lockout, &it->r);
        if (allowed && rl->ops != NULL)
            add_pending(st, 1); /* Redis learns about it with the next check it answers */
        if (st->a == 0)
            st->pending = 0;
        st->expires_us = st->b + rl->lockout.reset_after_us;
        account_mark(st, &rl->lockout, now);
        return allowed || changed;
    }
    int limit = ratelimit_rule_limit(rl, it->rule, &period);
    if (!rl_gcra(&st->a, now, limit, period, &it->r))
        return 0;
    st->expires_us = st->a;
    st->prio = 0;
    st->hold_until_s = 0; /* GCRA entries are never held: the address region never refuses */
    return 1;
}

/*
 * A new key that the table could not store is refused, never decided on a state that is then
 * forgotten: retry once the bucket has room (its first held entry's delay ends).
 */
static void shm_refuse_full(struct rl_item *it, int64_t wait_us)
{
    memset(&it->r, 0, sizeof(it->r));
    it->r.retry_after = (double)wait_us / 1e6;
    it->r.reset = it->r.retry_after;
}

/* Evaluates the items in order against the shm table; stops at the first refusal. */
static void shm_eval(struct ratelimit *rl, struct rl_check *c)
{
    int64_t now = ratelimit_now_us();

    c->denied = -1;
    for (int i = 0; i < c->n; i++) {
        struct shm_op op = {rl, &c->item[i]};
        int64_t wait;
        if (rl_shm_update(rl->shm, rl_shm_key(rl->shm, c->item[i].rule, c->item[i].key), now,
                          rl->pid, shm_apply, &op, &wait) == RL_SHM_FULL)
            shm_refuse_full(&c->item[i], wait);
        if (!c->item[i].r.allowed) {
            c->denied = i;
            return;
        }
    }
}

struct mirror_op {
    int rule_account;
    int64_t a, b, expires;
    const struct rl_lockout *lockout;
};

/*
 * Redis is authoritative while it answers: its state replaces the local one, plus the account
 * failures counted here since the check was sent (still pending: Redis gets them next time).
 */
static int shm_mirror(struct rl_state *st, int found, int64_t now, void *arg)
{
    struct mirror_op *m = arg;

    if (!found)
        st->pending = 0;
    st->a = m->a;
    st->b = m->rule_account ? m->b : 0;
    st->expires_us = m->expires;
    if (m->rule_account) {
        st->a += st->pending;
        account_mark(st, m->lockout, now);
    } else {
        st->pending = 0;
        st->prio = 0;
        st->hold_until_s = 0;
    }
    return m->expires > now ? 1 : (found ? -1 : 0);
}

void ratelimit_mirror(struct ratelimit *rl, const struct rl_item *it, int64_t a, int64_t b,
                      int64_t ttl_us)
{
    int64_t now = ratelimit_now_us();
    struct mirror_op m = {it->rule == RL_ACCOUNT, a, b, now + ttl_us, &rl->lockout};

    /* Not stored when the bucket is full of held accounts: a fallback then refuses this key. */
    rl_shm_update(rl->shm, rl_shm_key(rl->shm, it->rule, it->key), now, rl->pid, shm_mirror, &m,
                  NULL);
}

static int shm_forget(struct rl_state *st, int found, int64_t now, void *arg)
{
    return found ? -1 : 0;
}

static int shm_take_pending(struct rl_state *st, int found, int64_t now, void *arg)
{
    struct rl_item *it = arg;

    if (!found || st->pending <= 0)
        return 0;
    it->pushed = st->pending;
    it->pushed_age_us = now - st->b;
    st->pending = 0;
    return 1;
}

void ratelimit_take_pending(struct ratelimit *rl, struct rl_item *it)
{
    it->pushed = 0;
    it->pushed_age_us = 0;
    if (it->rule == RL_ACCOUNT)
        rl_shm_update(rl->shm, rl_shm_key(rl->shm, it->rule, it->key), ratelimit_now_us(), rl->pid,
                      shm_take_pending, it, NULL);
}

struct refund_op {
    const struct rl_lockout *lockout;
    int by_redis;
};

static int shm_refund(struct rl_state *st, int found, int64_t now, void *arg)
{
    struct refund_op *op = arg;

    if (!found || st->a <= 0)
        return 0;
    st->a--;
    if (!op->by_redis && st->pending > 0)
        st->pending--;
    if (st->a == 0)
        return -1;
    account_mark(st, op->lockout, now);
    return 1;
}

/* ---- checks ---- */

void ratelimit_check(struct ratelimit *rl, int n, const enum rl_rule *rules,
                     const char *const *keys, rl_done_fn *done, void *arg)
{
    struct rl_check *c = calloc(1, sizeof(*c));

    if (c == NULL) { /* out of memory: nothing can be counted, so nothing is allowed */
        struct rl_check none = {.rl = rl, .n = 1, .denied = 0};
        none.item[0].rule = n > 0 ? rules[0] : RL_GLOBAL;
        none.item[0].r.retry_after = 1;
        done(arg, &none);
        return;
    }
    c->rl = rl;
    c->done = done;
    c->arg = arg;
    c->n = n > RL_MAX_ITEMS ? RL_MAX_ITEMS : n;
    for (int i = 0; i < c->n; i++) {
        c->item[i].rule = rules[i];
        snprintf(c->item[i].key, sizeof(c->item[i].key), "%s", keys[i]);
    }
    if (rl->be == NULL || rl->ops->degraded(rl->be)) {
        ratelimit_answer_from_shm(c);
        return;
    }
    c->outstanding = 1;
    rl->ops->check(rl->be, c);
}

void ratelimit_answer_from_shm(struct rl_check *c)
{
    if (!c->finished) {
        c->by_redis = 0;
        shm_eval(c->rl, c);
    }
    ratelimit_finish(c);
}

void ratelimit_finish(struct rl_check *c)
{
    struct ratelimit *rl = c->rl;

    if (!c->finished) {
        c->finished = 1;
        atomic_fetch_add_explicit(&rl->hs->rl_checks_total[c->by_redis ? 1 : 0], 1,
                                  memory_order_relaxed);
        if (c->denied >= 0)
            atomic_fetch_add_explicit(&rl->hs->rl_limited_total[c->item[c->denied].rule], 1,
                                      memory_order_relaxed);
        c->done(c->arg, c);
    }
    if (!c->outstanding) {
        if (c->timer)
            event_free(c->timer);
        free(c);
    }
}

void ratelimit_release(struct rl_check *c)
{
    c->outstanding = 0;
    if (c->finished)
        ratelimit_finish(c);
}

void ratelimit_account_success(struct ratelimit *rl, const char *key)
{
    rl_shm_update(rl->shm, rl_shm_key(rl->shm, RL_ACCOUNT, key), ratelimit_now_us(), rl->pid,
                  shm_forget, NULL, NULL);
    if (rl->be != NULL)
        rl->ops->reset(rl->be, RL_ACCOUNT, key);
}

void ratelimit_account_refund(struct ratelimit *rl, const char *key, int by_redis)
{
    struct refund_op op = {&rl->lockout, by_redis};

    rl_shm_update(rl->shm, rl_shm_key(rl->shm, RL_ACCOUNT, key), ratelimit_now_us(), rl->pid,
                  shm_refund, &op, NULL);
    if (by_redis && rl->be != NULL)
        rl->ops->refund(rl->be, RL_ACCOUNT, key);
}

void ratelimit_account_failed(struct ratelimit *rl, int failures)
{
    if (failures == rl->lockout.threshold || failures == rl->lockout.max_failures)
        atomic_fetch_add_explicit(&rl->hs->rl_lockouts_total, 1, memory_order_relaxed);
}

/* ---- headers ---- */

void ratelimit_policy_header(const struct ratelimit *rl, const enum rl_rule *rules, int n,
                             char *out, size_t outlen)
{
    size_t len = 0;

    out[0] = '\0';
    for (int i = 0; i < n && len < outlen; i++) {
        int64_t period;
        int limit = ratelimit_rule_limit(rl, rules[i], &period);
        if (limit <= 0)
            continue;
        int w = snprintf(out + len, outlen - len, "%s\"%s\";q=%d;w=%lld", len ? ", " : "",
                         rule_names[rules[i]], limit, (long long)(period / 1000000));
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

void ratelimit_state_header(const struct rl_check *c, char *out, size_t outlen)
{
    size_t len = 0;

    int n = c->denied >= 0 ? c->denied + 1 : c->n; /* later items were not evaluated */

    out[0] = '\0';
    for (int i = 0; i < n && len < outlen; i++) {
        const struct rl_item *it = &c->item[i];
        if (it->rule == RL_ACCOUNT)
            continue;
        int w = snprintf(out + len, outlen - len, "%s\"%s\";r=%ld;t=%ld", len ? ", " : "",
                         rule_names[it->rule], it->r.allowed ? it->r.remaining : 0L,
                         (long)ceil(it->r.allowed ? it->r.reset : it->r.retry_after));
        if (w < 0)
            break;
        len += (size_t)w;
    }
}
