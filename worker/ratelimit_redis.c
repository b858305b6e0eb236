/*
 * ratelimit_redis: the Redis rate-limit backend (see shared/ratelimit.h).
 *
 * hiredis async on the worker's event loop (its libevent adapter). A check is one EVALSHA of
 * the Lua script below: GCRA for the per-IP rules and the lockout schedule for the account
 * rule, all items of a check atomically, timed by Redis' own clock (TIME) so instances with
 * skewed clocks agree. Connection states: DOWN -> CONNECTING (AUTH, SCRIPT LOAD) -> UP. Any
 * error, a lost connection or a reply slower than ratelimit.redis.timeout drops the
 * connection: every pending check is answered at once from the shm table (which the limiter
 * always updates first), the worker is "degraded" (metric, /readyz, one warning line), and a
 * timer reconnects every ratelimit.redis.retry_interval; the first successful SCRIPT LOAD makes
 * it UP again (one info line). Redis decides while it answers; its answers are copied into the
 * shm table, so a fallback starts from the shared counts this worker last saw.
 */
#include <errno.h>
#include <netinet/in.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "shared/log.h"
#include "shared/ratelimit.h"

/* KEYS[i]: one per item. ARGV[1..5]: lockout threshold, base_delay_us, max_delay_us,
 * max_failures, reset_after_us; then per item: kind ("g" GCRA or "a" account) and two numbers:
 * GCRA interval_us, period_us; account: failures this host counted while Redis was down
 * (pending) and the age of the last of them in microseconds, added to Redis' count before the
 * attempt so that an outage (or a flapping Redis) gives no free guesses. Reply: per evaluated item
 * {allowed, a, b, retry_after_us}, where GCRA gives a = TAT - now, b = remaining; the account rule
 * a = failures, b = microseconds since the last failure. Evaluation stops at the first refusal. The
 * math mirrors rl_gcra/rl_account_attempt. */
static const char script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local th, base, maxd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local maxf, reset = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local out = {}\n"
    "for i = 1, #KEYS do\n"
    "  local o = 5 + (i - 1) * 3\n"
    "  local kind, iv, period = ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])\n"
    "  if kind == 'g' then\n"
    "    local tat = tonumber(redis.call('GET', KEYS[i])) or now\n"
    "    if tat < now then tat = now end\n"
    "    local nxt = tat + iv\n"
    "    if nxt - now > period then\n"
    "      out[i] = {0, tat - now, 0, nxt - now - period}\n"
    "      return out\n"
    "    end\n"
    "    redis.call('SET', KEYS[i], string.format('%d', nxt), 'PX',\n"
    "               math.ceil((nxt - now) / 1000) + 1)\n"
    "    out[i] = {1, nxt - now, math.floor((period - (nxt - now)) / iv), 0}\n"
    "  else\n"
    "    local v = redis.call('HMGET', KEYS[i], 'f', 'l')\n"
    "    local f, l = tonumber(v[1]) or 0, tonumber(v[2]) or 0\n"
    "    if l > 0 and now - l >= reset then f = 0 end\n"
    "    if iv > 0 and period < reset then\n"
    "      f = f + iv\n"
    "      if now - period > l then l = now - period end\n"
    "      redis.call('HSET', KEYS[i], 'f', f, 'l', string.format('%d', l))\n"
    "      redis.call('PEXPIRE', KEYS[i], math.ceil((reset - (now - l)) / 1000) + 1)\n"
    "    end\n"
    "    local wait = 0\n"
    "    if f >= maxf then wait = reset\n"
    "    elseif f >= th then wait = math.min(base * 2 ^ (f - th), maxd) end\n"
    "    wait = wait - (now - l)\n"
    "    if f >= th and wait > 0 then\n"
    "      out[i] = {0, f, now - l, wait}\n"
    "      return out\n"
    "    end\n"
    "    f = f + 1\n"
    "    redis.call('HSET', KEYS[i], 'f', f, 'l', string.format('%d', now))\n"
    "    redis.call('PEXPIRE', KEYS[i], math.ceil(reset / 1000))\n"
    "    out[i] = {1, f, 0, 0}\n"
    "  end\n"
    "end\n"
    "return out\n";

enum conn_state { R_DOWN, R_CONNECTING, R_UP };

/* Resets queued per worker during an outage; past it the oldest are dropped (those accounts
 * keep their failures in Redis until reset_after: fail-safe). */
#define RL_REDIS_RESET_QUEUE 256
/* Room for a Redis key: the prefix (config caps it at CONFIG_RL_PREFIX_MAX), a rule name, ':'
 * and a key. */
#define RL_REDIS_KEY_MAX (CONFIG_RL_PREFIX_MAX + 16 + RL_KEY_MAX)

struct rl_backend {
    struct ratelimit *rl;
    const struct config *cfg;
    struct event_base *base;
    struct health_slot *hs;
    redisAsyncContext *ac;
    struct evdns_base *dns;
    struct evdns_getaddrinfo_request *dns_req; /* resolving the host */
    enum conn_state state;
    int warned;        /* the fallback warning was logged and not yet followed by "back" */
    int ever_up;       /* for the wording of the recovery line */
    int policy_warned; /* the evicting maxmemory-policy was logged (once per worker) */
    char sha[41];
    struct event *retry;
    struct timeval timeout;
    int64_t connect_started_us;
    int64_t ping_sent_us; /* a PING is in flight since (0: none) */
    /* account resets (successful logins) made while Redis was down, sent when it is back */
    struct {
        enum rl_rule rule;
        char key[RL_KEY_MAX];
    } resets[RL_REDIS_RESET_QUEUE];
    int nresets;
    int resets_dropped; /* logged once per outage */
};

static void set_fallback(struct rl_backend *r, int on)
{
    atomic_store_explicit(&r->hs->rl_fallback, (unsigned)on, memory_order_relaxed);
}

static void count_error(struct rl_backend *r)
{
    atomic_fetch_add_explicit(&r->hs->rl_redis_errors_total, 1, memory_order_relaxed);
}

/* Leaves UP (or CONNECTING): drops the connection, which answers pending checks from shm. */
static void go_down(struct rl_backend *r, const char *why)
{
    redisAsyncContext *ac = r->ac;

    if (r->state != R_DOWN && !r->warned) {
        log_warn("ratelimit: Redis %s:%d: %s; checking limits in shared memory until it is back",
                 r->cfg->ratelimit.redis_host, r->cfg->ratelimit.redis_port, why);
        r->warned = 1;
    }
    r->state = R_DOWN;
    set_fallback(r, 1);
    if (r->dns_req != NULL) {
        struct evdns_getaddrinfo_request *req = r->dns_req;
        r->dns_req = NULL;
        evdns_getaddrinfo_cancel(req);
    }
    r->ac = NULL;
    if (ac != NULL) {
        ac->data = NULL;
        redisAsyncFree(ac); /* deferred by hiredis when called from its own callback */
    }
}

/* Redis key of (rule, key). */
static void redis_key(const struct rl_backend *r, enum rl_rule rule, const char *key, char *out,
                      size_t outlen)
{
    snprintf(out, outlen, "%s%s:%s", r->cfg->ratelimit.redis_prefix, ratelimit_rule_name(rule),
             key);
}

static void queue_reset(struct rl_backend *r, enum rl_rule rule, const char *key)
{
    for (int i = 0; i < r->nresets; i++)
        if (r->resets[i].rule == rule && strcmp(r->resets[i].key, key) == 0)
            return;
    if (r->nresets == RL_REDIS_RESET_QUEUE) {
        if (!r->resets_dropped)
            log_warn("ratelimit: more than %d account resets queued while Redis is down; the "
                     "oldest are dropped (those accounts keep their failures in Redis)",
                     RL_REDIS_RESET_QUEUE);
        r->resets_dropped = 1;
        memmove(&r->resets[0], &r->resets[1], sizeof(r->resets[0]) * (RL_REDIS_RESET_QUEUE - 1));
        r->nresets--;
    }
    r->resets[r->nresets].rule = rule;
    snprintf(r->resets[r->nresets].key, sizeof(r->resets[r->nresets].key), "%s", key);
    r->nresets++;
}

/* Connected again: the resets of the outage go first, before any check is sent. */
static void flush_resets(struct rl_backend *r)
{
    char k[RL_REDIS_KEY_MAX];
    int sent = 0;

    for (; sent < r->nresets; sent++) {
        redis_key(r, r->resets[sent].rule, r->resets[sent].key, k, sizeof(k));
        if (redisAsyncCommand(r->ac, NULL, NULL, "DEL %s", k) != REDIS_OK)
            break;
    }
    memmove(&r->resets[0], &r->resets[sent], sizeof(r->resets[0]) * (size_t)(r->nresets - sent));
    r->nresets -= sent;
    r->resets_dropped = 0;
}

/*
 * The value of `field` ("name:value" lines) in an INFO reply, copied to out; "" when absent.
 */
static void info_field(const char *info, const char *field, char *out, size_t outlen)
{
    size_t n = strlen(field);

    out[0] = '\0';
    for (const char *p = info; p != NULL && *p != '\0';) {
        if (strncmp(p, field, n) == 0 && p[n] == ':') {
            size_t len = strcspn(p + n + 1, "\r\n");
            snprintf(out, outlen, "%.*s", (int)len, p + n + 1);
            return;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
}

/*
 * INFO memory: a Redis with a memory limit and an evicting policy would silently forget
 * lockouts (every authd key has a TTL, so volatile-* policies evict them too): fail open.
 * With noeviction it refuses writes instead, and the check falls back to the shm table.
 */
static void on_info(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rl_backend *r = ac->data;
    redisReply *rep = reply;
    char maxmemory[32], policy[32];

    if (r == NULL || ac != r->ac || rep == NULL || rep->type != REDIS_REPLY_STRING ||
        r->policy_warned)
        return;
    info_field(rep->str, "maxmemory", maxmemory, sizeof(maxmemory));
    info_field(rep->str, "maxmemory_policy", policy, sizeof(policy));
    if (maxmemory[0] == '\0' || strcmp(maxmemory, "0") == 0 || policy[0] == '\0' ||
        strcmp(policy, "noeviction") == 0)
        return;
    log_warn("ratelimit: Redis %s:%d has maxmemory-policy %s: when it is full it evicts "
             "lockout counters (fail open); set maxmemory-policy noeviction",
             r->cfg->ratelimit.redis_host, r->cfg->ratelimit.redis_port, policy);
    r->policy_warned = 1;
}

static void on_script_loaded(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rl_backend *r = ac->data;
    redisReply *rep = reply;

    if (r == NULL || ac != r->ac)
        return;
    if (rep == NULL || rep->type != REDIS_REPLY_STRING || rep->len != 40) {
        count_error(r);
        go_down(r, rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "refused SCRIPT LOAD");
        return;
    }
    memcpy(r->sha, rep->str, 40);
    r->sha[40] = '\0';
    if (!r->policy_warned)
        redisAsyncCommand(ac, on_info, NULL, "INFO memory");
    flush_resets(r);
    r->state = R_UP;
    r->ping_sent_us = 0;
    set_fallback(r, 0);
    if (r->warned || r->ever_up)
        log_info("ratelimit: Redis %s:%d is back; limits are shared again",
                 r->cfg->ratelimit.redis_host, r->cfg->ratelimit.redis_port);
    else
        log_debug("ratelimit: using Redis %s:%d", r->cfg->ratelimit.redis_host,
                  r->cfg->ratelimit.redis_port);
    r->warned = 0;
    r->ever_up = 1;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rl_backend *r = ac->data;
    redisReply *rep = reply;

    if (r == NULL || ac != r->ac)
        return;
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        count_error(r);
        go_down(r, rep ? "refused AUTH" : "closed the connection");
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rl_backend *r = ac->data;

    if (r == NULL || ac != r->ac || status == REDIS_OK)
        return;
    /* hiredis frees the context after this callback. */
    r->ac = NULL;
    count_error(r);
    go_down(r, ac->errstr[0] ? ac->errstr : "cannot be reached");
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rl_backend *r = ac->data;

    if (r == NULL || ac != r->ac)
        return;
    r->ac = NULL; /* freed by hiredis after this callback */
    count_error(r);
    go_down(r, "closed the connection");
}

/* Connects to an address (numeric: no blocking resolution on the loop). */
static void connect_addr(struct rl_backend *r, const char *addr)
{
    const struct config *cfg = r->cfg;
    redisAsyncContext *ac = redisAsyncConnect(addr, cfg->ratelimit.redis_port);

    if (ac == NULL || ac->err) {
        go_down(r, ac ? ac->errstr : "cannot be connected to (out of memory)");
        if (ac)
            redisAsyncFree(ac);
        return;
    }
    ac->data = r;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        go_down(r, "cannot be attached to the event loop");
        return;
    }
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Queued now, sent once connected; replies come back in order. */
    if (cfg->ratelimit.redis_password[0] != '\0')
        redisAsyncCommand(ac, on_auth, NULL, "AUTH %s", cfg->ratelimit.redis_password);
    redisAsyncCommand(ac, on_script_loaded, NULL, "SCRIPT LOAD %s", script);
}

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct rl_backend *r = arg;
    char addr[INET6_ADDRSTRLEN] = "";

    if (result == EVUTIL_EAI_CANCEL) { /* go_down or close cancelled it */
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    r->dns_req = NULL;
    if (result == 0 && res != NULL) {
        if (res->ai_family == AF_INET)
            evutil_inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, addr,
                             sizeof(addr));
        else if (res->ai_family == AF_INET6)
            evutil_inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, addr,
                             sizeof(addr));
    }
    if (res)
        evutil_freeaddrinfo(res);
    if (addr[0] == '\0') {
        count_error(r);
        go_down(r, result ? evutil_gai_strerror(result) : "has no address");
        return;
    }
    connect_addr(r, addr);
}

/* DOWN -> CONNECTING: resolves the host asynchronously (evdns) unless it is an address. */
static void start_connect(struct rl_backend *r)
{
    const char *host = r->cfg->ratelimit.redis_host;
    unsigned char buf[sizeof(struct in6_addr)];
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};

    r->connect_started_us = ratelimit_now_us();
    r->state = R_CONNECTING;
    if (evutil_inet_pton(AF_INET, host, buf) == 1 || evutil_inet_pton(AF_INET6, host, buf) == 1) {
        connect_addr(r, host);
        return;
    }
    /* The callback may run before this returns (hosts file); then it already cleared dns_req. */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(r->dns, host, NULL, &hints, on_resolved, r);
    if (req != NULL && r->state == R_CONNECTING && r->ac == NULL)
        r->dns_req = req;
}

static void on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rl_backend *r = ac->data;

    if (r != NULL && ac == r->ac && reply != NULL)
        r->ping_sent_us = 0;
}

/* UP and idle or not: one PING per interval, so a Redis that vanished without traffic (or a
 * silent network) is noticed and /readyz tells the truth. */
static void keepalive(struct rl_backend *r)
{
    int64_t now = ratelimit_now_us();
    int64_t limit = (int64_t)(r->cfg->ratelimit.redis_timeout * 1e6);

    if (r->ping_sent_us != 0 && now - r->ping_sent_us > limit) {
        count_error(r);
        go_down(r, "did not answer PING in time");
        return;
    }
    if (r->ping_sent_us == 0 && redisAsyncCommand(r->ac, on_ping, NULL, "PING") == REDIS_OK)
        r->ping_sent_us = now;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct rl_backend *r = arg;

    if (r->state == R_UP) {
        keepalive(r);
        return;
    }
    if (r->state == R_CONNECTING && ratelimit_now_us() - r->connect_started_us >
                                        (int64_t)(r->cfg->ratelimit.redis_retry_interval * 1e6)) {
        count_error(r);
        go_down(r, "did not answer the connection in time");
    }
    if (r->state == R_DOWN)
        start_connect(r);
}

static struct rl_backend *redis_open(struct ratelimit *rl, const struct config *cfg,
                                     struct event_base *base, struct health_slot *hs)
{
    struct rl_backend *r = calloc(1, sizeof(*r));
    double ri = cfg->ratelimit.redis_retry_interval, to = cfg->ratelimit.redis_timeout;
    struct timeval tv = {(time_t)ri, (suseconds_t)((ri - (double)(time_t)ri) * 1e6)};

    if (r == NULL) {
        log_error("ratelimit: out of memory");
        return NULL;
    }
    r->rl = rl;
    r->cfg = cfg;
    r->base = base;
    r->hs = hs;
    r->timeout.tv_sec = (time_t)to;
    r->timeout.tv_usec = (suseconds_t)((to - (double)(time_t)to) * 1e6);
    r->retry = event_new(base, -1, EV_PERSIST, on_retry, r);
    r->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (r->dns == NULL) /* no usable resolv.conf: still resolves numeric hosts and /etc/hosts */
        r->dns = evdns_base_new(base, 0);
    if (r->retry == NULL || r->dns == NULL || event_add(r->retry, &tv) < 0) {
        log_error("ratelimit: cannot register the Redis retry timer or resolver");
        if (r->retry)
            event_free(r->retry);
        if (r->dns)
            evdns_base_free(r->dns, 0);
        free(r);
        return NULL;
    }
    r->state = R_DOWN;
    set_fallback(r, 1);
    start_connect(r);
    return r;
}

static void observe_latency(struct rl_backend *r, int64_t us)
{
    static const uint32_t bounds[HEALTH_RL_BUCKETS - 1] = HEALTH_RL_BUCKET_US;
    int b = 0;

    if (us < 0)
        us = 0;
    while (b < HEALTH_RL_BUCKETS - 1 && (uint64_t)us > bounds[b])
        b++;
    atomic_fetch_add_explicit(&r->hs->rl_redis_latency_bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->hs->rl_redis_latency_sum_us, (unsigned long long)us,
                              memory_order_relaxed);
}

static long long int_at(const redisReply *a, size_t i)
{
    return i < a->elements && a->element[i]->type == REDIS_REPLY_INTEGER ? a->element[i]->integer
                                                                         : 0;
}

/* Fills c's items from the script's reply and mirrors them into the shm table. -1: malformed. */
static int apply_reply(struct rl_backend *r, struct rl_check *c, const redisReply *rep)
{
    const struct rl_lockout *lk = ratelimit_lockout(r->rl);
    int64_t now = ratelimit_now_us();

    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0 || rep->elements > (size_t)c->n)
        return -1;
    c->denied = -1;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        struct rl_item *it = &c->item[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 4)
            return -1;
        long long allowed = int_at(e, 0), a = int_at(e, 1), b = int_at(e, 2), wait = int_at(e, 3);
        memset(&it->r, 0, sizeof(it->r));
        it->r.allowed = allowed == 1;
        it->r.retry_after = (double)wait / 1e6;
        if (it->rule == RL_ACCOUNT) {
            it->r.failures = (int)a;
            ratelimit_mirror(r->rl, it, a, now - b, lk->reset_after_us - b);
        } else {
            it->r.remaining = (long)b;
            it->r.reset = (double)a / 1e6;
            ratelimit_mirror(r->rl, it, now + a, 0, a);
        }
        if (!it->r.allowed) {
            c->denied = (int)i;
            break;
        }
    }
    return 0;
}

static void send_check(struct rl_backend *r, struct rl_check *c, int full_script);

static void on_check_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rl_check *c = privdata;
    struct rl_backend *r = ac->data;
    redisReply *rep = reply;

    if (rep == NULL || r == NULL) { /* connection dropped */
        ratelimit_answer_from_shm(c);
        ratelimit_release(c);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 && !c->finished) {
        send_check(r, c, 1); /* the script cache was flushed: EVAL loads it again */
        return;
    }
    if (c->timer)
        event_del(c->timer);
    observe_latency(r, ratelimit_now_us() - c->sent_us);
    if (!c->finished && apply_reply(r, c, rep) == 0) {
        c->by_redis = 1;
        ratelimit_finish(c);
    } else if (!c->finished) {
        count_error(r);
        go_down(r, rep->type == REDIS_REPLY_ERROR ? rep->str : "sent an unexpected reply");
        ratelimit_answer_from_shm(c);
    }
    ratelimit_release(c);
}

static void on_check_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct rl_check *c = arg;
    struct rl_backend *r = c->be;

    /* Answer now from shm; dropping the connection then releases c (and every other check). */
    ratelimit_answer_from_shm(c);
    count_error(r);
    go_down(r, "answered slower than ratelimit.redis.timeout");
}

static void send_check(struct rl_backend *r, struct rl_check *c, int full_script)
{
    const struct rl_lockout *lk = ratelimit_lockout(r->rl);
    char nums[5 + 3 * RL_MAX_ITEMS][24], keys[RL_MAX_ITEMS][RL_REDIS_KEY_MAX], nkeys[8];
    const char *argv[3 + RL_MAX_ITEMS + 5 + 3 * RL_MAX_ITEMS];
    int argc = 0, k = 0;

    argv[argc++] = full_script ? "EVAL" : "EVALSHA";
    argv[argc++] = full_script ? script : r->sha;
    snprintf(nkeys, sizeof(nkeys), "%d", c->n);
    argv[argc++] = nkeys;
    for (int i = 0; i < c->n; i++) {
        redis_key(r, c->item[i].rule, c->item[i].key, keys[i], sizeof(keys[i]));
        argv[argc++] = keys[i];
    }
    long long lv[5] = {lk->threshold, lk->base_delay_us, lk->max_delay_us, lk->max_failures,
                       lk->reset_after_us};
    for (int i = 0; i < 5; i++) {
        snprintf(nums[k], sizeof(nums[k]), "%lld", lv[i]);
        argv[argc++] = nums[k++];
    }
    for (int i = 0; i < c->n; i++) {
        int64_t period;
        int limit = ratelimit_rule_limit(r->rl, c->item[i].rule, &period);
        long long x, y;
        if (c->item[i].rule == RL_ACCOUNT) {
            x = c->item[i].pushed;
            y = c->item[i].pushed_age_us < 0 ? 0 : c->item[i].pushed_age_us;
        } else {
            x = limit > 0 ? (period / limit > 0 ? period / limit : 1) : 1;
            y = period;
        }
        argv[argc++] = c->item[i].rule == RL_ACCOUNT ? "a" : "g";
        snprintf(nums[k], sizeof(nums[k]), "%lld", x);
        argv[argc++] = nums[k++];
        snprintf(nums[k], sizeof(nums[k]), "%lld", y);
        argv[argc++] = nums[k++];
    }
    if (redisAsyncCommandArgv(r->ac, on_check_reply, c, argc, argv, NULL) != REDIS_OK) {
        count_error(r);
        ratelimit_answer_from_shm(c);
        ratelimit_release(c);
        go_down(r, "refused a command");
    }
}

static void redis_check(struct rl_backend *r, struct rl_check *c)
{
    if (r->state != R_UP || r->ac == NULL) {
        ratelimit_answer_from_shm(c);
        ratelimit_release(c);
        return;
    }
    c->timer = evtimer_new(r->base, on_check_timeout, c);
    if (c->timer == NULL) {
        ratelimit_answer_from_shm(c);
        ratelimit_release(c);
        return;
    }
    c->be = r;
    for (int i = 0; i < c->n; i++)
        ratelimit_take_pending(r->rl, &c->item[i]);
    evtimer_add(c->timer, &r->timeout);
    c->sent_us = ratelimit_now_us();
    send_check(r, c, 0);
}

static void redis_reset(struct rl_backend *r, enum rl_rule rule, const char *key)
{
    char k[RL_REDIS_KEY_MAX];

    redis_key(r, rule, key, k, sizeof(k));
    if (r->state != R_UP || r->ac == NULL ||
        redisAsyncCommand(r->ac, NULL, NULL, "DEL %s", k) != REDIS_OK)
        queue_reset(r, rule, key); /* sent before the first check once Redis is back */
}

/* Gives back one failure (never below 0); lost if Redis is down (conservative). */
static const char refund_script[] =
    "local f = tonumber(redis.call('HGET', KEYS[1], 'f'))\n"
    "if f and f > 0 then redis.call('HINCRBY', KEYS[1], 'f', -1) end\n"
    "return 0\n";

static void redis_refund(struct rl_backend *r, enum rl_rule rule, const char *key)
{
    char k[RL_REDIS_KEY_MAX];

    if (r->state != R_UP || r->ac == NULL)
        return;
    redis_key(r, rule, key, k, sizeof(k));
    redisAsyncCommand(r->ac, NULL, NULL, "EVAL %s 1 %s", refund_script, k);
}

static int redis_degraded(const struct rl_backend *r)
{
    return r->state != R_UP;
}

static void redis_close(struct rl_backend *r)
{
    event_free(r->retry);
    r->warned = 1; /* stopping is not an outage */
    go_down(r, "closed");
    set_fallback(r, 0);
    evdns_base_free(r->dns, 0);
    free(r);
}

const struct rl_backend_ops rl_backend_redis = {
    .name = "redis",
    .open = redis_open,
    .check = redis_check,
    .reset = redis_reset,
    .refund = redis_refund,
    .degraded = redis_degraded,
    .close = redis_close,
};
