/*
 * router: the route table and the operational handlers (/healthz, /readyz, /metrics).
 */
#include "worker/router.h"

#include <http_parser.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/metrics.h"
#include "shared/ratelimit.h"
#include "worker/api.h"
#include "worker/worker.h"

#define ON_PUBLIC 0x1
#define ON_ADMIN  0x2
#define PREFIX    0x4 /* path is a prefix followed by one more segment */

typedef void handler_fn(struct http_request *req);

struct route {
    int method; /* enum http_method */
    const char *path;
    enum route_id id;
    unsigned where;
    handler_fn *handler;
};

static struct worker *worker_of(struct http_request *req)
{
    return http_worker(req);
}

/*
 * Counts live workers (heartbeat younger than the timeout) and ready ones of the current
 * generation into w. Called on every heartbeat, so /healthz and /readyz read two integers.
 */
void router_refresh_health(struct worker *w)
{
    int64_t now = health_now_mono_ms();
    int64_t timeout_ms = (int64_t)(w->cfg->supervisor.heartbeat_timeout * 1000);
    unsigned gen = atomic_load(&w->health->generation);
    int live = 0, ready = 0;

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct health_ident id;
        if (!health_slot_used(w->health, i))
            continue;
        health_slot_ident(w->health, i, &id);
        if (id.state == SLOT_FREE || now - id.heartbeat_ms > timeout_ms)
            continue;
        live++;
        if (id.state == SLOT_READY && id.generation == gen)
            ready++;
    }
    w->live_workers = live;
    w->ready_workers = ready;
}

static void handle_healthz(struct http_request *req)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"status\":\"ok\",\"workers\":%d}",
                     worker_of(req)->live_workers);

    http_reply(req, 200, "application/json", body, (size_t)n);
}

static void handle_readyz(struct http_request *req)
{
    struct worker *w = worker_of(req);
    int ready = w->ready_workers;

    if (ready > 0 && !w->draining) {
        api_readiness(req); /* the store must answer too */
        return;
    }
    json_t *checks = json_pack("{s:s}", "workers", ready > 0 ? "ok" : "down");
    http_reply_json(req, 503,
                    json_pack("{s:s, s:s, s:o}", "error", "not_ready", "message",
                              w->draining ? "This worker is draining."
                                          : "No worker of the current generation is ready.",
                              "checks", checks));
}

/* Appends the host-wide limiter table's own counters, per region (the table lives beside, not
 * in, the health segment). Returns the new text, or `text` unchanged when there is no table. */
static char *append_limiter_table(char *text, size_t *len)
{
    const struct rl_shm *t = ratelimit_shm_table();
    uint64_t ev[RL_TABLES], refused[RL_TABLES];
    const char *a = rl_table_name(RL_TABLE_ADDRESS), *c = rl_table_name(RL_TABLE_ACCOUNT);
    char *out;

    if (t == NULL || text == NULL)
        return text;
    for (int i = 0; i < RL_TABLES; i++)
        rl_shm_stats(t, (enum rl_table)i, &ev[i], &refused[i]);
    int n = asprintf(
        &out,
        "%s# HELP authd_ratelimit_shm_capacity Entries of the host-wide limiter table, by region."
        "\n# TYPE authd_ratelimit_shm_capacity gauge\n"
        "authd_ratelimit_shm_capacity{table=\"%s\"} %d\n"
        "authd_ratelimit_shm_capacity{table=\"%s\"} %d\n"
        "# HELP authd_ratelimit_shm_evictions_total Live limiter entries evicted to make room "
        "(the region is too small when this grows fast).\n"
        "# TYPE authd_ratelimit_shm_evictions_total counter\n"
        "authd_ratelimit_shm_evictions_total{table=\"%s\"} %llu\n"
        "authd_ratelimit_shm_evictions_total{table=\"%s\"} %llu\n"
        "# HELP authd_ratelimit_store_refused_total New limiter entries that could not be stored "
        "because every entry of their bucket was an account in a delay or lock (the request got "
        "429).\n"
        "# TYPE authd_ratelimit_store_refused_total counter\n"
        "authd_ratelimit_store_refused_total{table=\"%s\"} %llu\n"
        "authd_ratelimit_store_refused_total{table=\"%s\"} %llu\n",
        text, a, rl_shm_capacity(t, RL_TABLE_ADDRESS), c, rl_shm_capacity(t, RL_TABLE_ACCOUNT), a,
        (unsigned long long)ev[RL_TABLE_ADDRESS], c, (unsigned long long)ev[RL_TABLE_ACCOUNT], a,
        (unsigned long long)refused[RL_TABLE_ADDRESS], c,
        (unsigned long long)refused[RL_TABLE_ACCOUNT]);
    if (n < 0)
        return text;
    free(text);
    *len = (size_t)n;
    return out;
}

static void handle_metrics(struct http_request *req)
{
    size_t len;
    char *text = append_limiter_table(metrics_render(worker_of(req)->health, &len), &len);

    if (text == NULL) {
        http_reply_error(req, 500, "internal_error", "Could not render metrics.");
        return;
    }
    http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static const struct route routes[] = {
    {HTTP_GET, "/healthz", ROUTE_HEALTHZ, ON_PUBLIC | ON_ADMIN, handle_healthz},
    {HTTP_HEAD, "/healthz", ROUTE_HEALTHZ, ON_PUBLIC | ON_ADMIN, handle_healthz},
    {HTTP_GET, "/readyz", ROUTE_READYZ, ON_ADMIN, handle_readyz},
    {HTTP_GET, "/metrics", ROUTE_METRICS, ON_ADMIN, handle_metrics},
    {HTTP_POST, "/v1/auth/register", ROUTE_REGISTER, ON_PUBLIC, api_register},
    {HTTP_POST, "/v1/auth/login", ROUTE_LOGIN, ON_PUBLIC, api_login},
    {HTTP_POST, "/v1/auth/refresh", ROUTE_REFRESH, ON_PUBLIC, api_refresh},
    {HTTP_POST, "/v1/auth/logout", ROUTE_LOGOUT, ON_PUBLIC, api_logout},
    {HTTP_POST, "/v1/auth/introspect", ROUTE_INTROSPECT, ON_PUBLIC, api_introspect},
    {HTTP_GET, "/v1/me", ROUTE_ME, ON_PUBLIC, api_me},
    {HTTP_POST, "/v1/me/password", ROUTE_ME_PASSWORD, ON_PUBLIC, api_me_password},
    {HTTP_GET, "/v1/me/sessions", ROUTE_ME_SESSIONS, ON_PUBLIC, api_me_sessions},
    {HTTP_DELETE, "/v1/me/sessions/", ROUTE_ME_SESSION_DELETE, ON_PUBLIC | PREFIX,
     api_me_session_delete},
    {HTTP_GET, "/.well-known/jwks.json", ROUTE_JWKS, ON_PUBLIC, api_jwks},
    {HTTP_GET, "/.well-known/openid-configuration", ROUTE_DISCOVERY, ON_PUBLIC, api_discovery},
};

static int path_matches(const struct route *r, const char *path)
{
    size_t n = strlen(r->path);

    if (!(r->where & PREFIX))
        return strcmp(r->path, path) == 0;
    /* "/v1/me/sessions/" + one non-empty segment */
    return strncmp(r->path, path, n) == 0 && path[n] != '\0' && strchr(path + n, '/') == NULL;
}

/* Runs the route of req, or answers 404/405. */
static void run(struct http_request *req)
{
    unsigned where = req->admin ? ON_ADMIN : ON_PUBLIC;
    char allow[128] = "";
    int path_known = 0;

    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        const struct route *r = &routes[i];
        if (!(r->where & where) || !path_matches(r, req->path))
            continue;
        if (r->method == req->method) {
            req->route = r->id;
            r->handler(req);
            return;
        }
        path_known = 1;
        size_t n = strlen(allow);
        snprintf(allow + n, sizeof(allow) - n, "%s%s", n ? ", " : "",
                 http_method_str((enum http_method)r->method));
    }
    req->route = ROUTE_UNMATCHED;
    if (path_known) {
        http_add_header(req, "Allow", allow);
        http_reply_error(req, 405, "method_not_allowed", "This method is not allowed here.");
        return;
    }
    http_reply_error(req, 404, "not_found", "No such endpoint.");
}

/* The public route req will run (ROUTE_UNMATCHED for a 404/405). */
static enum route_id route_of(const struct http_request *req)
{
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
        if ((routes[i].where & ON_PUBLIC) && routes[i].method == req->method &&
            path_matches(&routes[i], req->path))
            return routes[i].id;
    return ROUTE_UNMATCHED;
}

/* The per-IP rule of a route besides the global one, or RL_RULES for none. */
static enum rl_rule route_rule(enum route_id id)
{
    switch (id) {
    case ROUTE_LOGIN:
        return RL_LOGIN;
    case ROUTE_REGISTER:
        return RL_REGISTER;
    case ROUTE_REFRESH:
        return RL_REFRESH;
    default:
        return RL_RULES;
    }
}

/* Adds RateLimit-Policy / RateLimit (and Retry-After when refused) for check c. */
void router_limit_headers(struct http_request *req, const struct rl_check *c)
{
    struct ratelimit *rl = worker_of(req)->rl;
    enum rl_rule rules[RL_MAX_ITEMS];
    char buf[256];
    int n = 0;

    for (int i = 0; i < c->n; i++)
        if (c->item[i].rule != RL_ACCOUNT)
            rules[n++] = c->item[i].rule;
    if (n > 0) {
        ratelimit_policy_header(rl, rules, n, buf, sizeof(buf));
        http_add_header(req, "RateLimit-Policy", buf);
        ratelimit_state_header(c, buf, sizeof(buf));
        http_add_header(req, "RateLimit", buf);
    }
    if (c->denied >= 0) {
        double ra = c->item[c->denied].r.retry_after;
        snprintf(buf, sizeof(buf), "%ld", ra < 1 ? 1L : (long)ceil(ra));
        http_add_header(req, "Retry-After", buf);
    }
}

static void on_limits(void *arg, const struct rl_check *c)
{
    struct http_request *req = arg;
    enum route_id id = route_of(req);

    if (route_rule(id) != RL_RULES || c->denied >= 0)
        router_limit_headers(req, c);
    if (c->denied >= 0) {
        req->route = id;
        http_reply_error(req, 429, "too_many_attempts",
                         "Too many requests from this client; retry after the delay in "
                         "Retry-After.");
        return;
    }
    run(req);
}

void router_dispatch(struct http_request *req)
{
    struct worker *w = worker_of(req);
    char client[INET6_ADDRSTRLEN], key[INET6_ADDRSTRLEN + 8];
    enum rl_rule rules[2];
    const char *keys[2] = {key, key};
    int n = 0;

    if (req->admin || w->rl == NULL) {
        run(req);
        return;
    }
    /* Every X-Forwarded-For line counts: a client's forged line comes first, the line its
     * proxy added last; the walk from the right then finds the address the proxy saw. */
    char *xff = http_header_combined(req, "x-forwarded-for");
    ratelimit_client_ip(w->rl, req->remote_addr, xff, client, sizeof(client));
    free(xff);
    http_set_client_addr(req, client);
    /* IPv6 clients are limited per network (ratelimit.ipv6_prefix), IPv4 per address. */
    ratelimit_client_key(w->rl, client, key, sizeof(key));
    enum route_id id = route_of(req);
    enum rl_rule rr = route_rule(id);
    /* Liveness probes of load balancers must never be refused: /healthz is not limited. */
    if (id != ROUTE_HEALTHZ && ratelimit_rule_on(w->rl, RL_GLOBAL))
        rules[n++] = RL_GLOBAL;
    if (rr != RL_RULES && ratelimit_rule_on(w->rl, rr))
        rules[n++] = rr;
    if (n == 0) {
        run(req);
        return;
    }
    ratelimit_check(w->rl, n, rules, keys, on_limits, req);
}
