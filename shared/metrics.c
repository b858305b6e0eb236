/* metrics: Prometheus and status rendering of the health segment (see metrics.h). */
#include "shared/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

const char *metrics_state_name(enum health_state state)
{
    switch (state) {
    case SLOT_FREE:
        return "free";
    case SLOT_STARTING:
        return "starting";
    case SLOT_READY:
        return "ready";
    case SLOT_DRAINING:
        return "draining";
    }
    return "unknown";
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

struct totals {
    unsigned long long requests[ROUTE_COUNT][HEALTH_STATUSES];
    unsigned long long bucket[HEALTH_BUCKETS];
    unsigned long long latency_sum_us;
    long long connections, inflight, offload_queued;
    unsigned long long connections_total, rejected, timeouts, tls_failures, offload_rejected;
    int workers[4];
};

static void sum_slots(const struct health *h, struct totals *t)
{
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        const struct health_slot *s = &h->slot[i];
        if (!health_slot_used(h, i))
            continue;
        unsigned st = LOAD(h->ident[i].state);
        if (st < 4)
            t->workers[st]++;
        for (int r = 0; r < ROUTE_COUNT; r++)
            for (int c = 0; c < HEALTH_STATUSES; c++)
                t->requests[r][c] += LOAD(s->requests[r][c]);
        for (int b = 0; b < HEALTH_BUCKETS; b++)
            t->bucket[b] += LOAD(s->latency_bucket[b]);
        t->latency_sum_us += LOAD(s->latency_sum_us);
        t->connections += LOAD(s->connections);
        t->inflight += LOAD(s->inflight);
        t->offload_queued += LOAD(s->offload_queued);
        t->connections_total += LOAD(s->connections_total);
        t->rejected += LOAD(s->accept_paused_total);
        t->timeouts += LOAD(s->timeouts_total);
        t->tls_failures += LOAD(s->tls_failures_total);
        t->offload_rejected += LOAD(s->offload_rejected_total);
    }
}

static void metric_head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_requests(FILE *f, const struct totals *t)
{
    metric_head(f, "authd_http_requests_total", "counter",
                "HTTP requests answered, by route and status code.");
    for (int r = 0; r < ROUTE_COUNT; r++) {
        const char *name = route_name((enum route_id)r);
        if (name == NULL)
            continue;
        for (int c = 0; c < HEALTH_STATUSES; c++) {
            if (t->requests[r][c] == 0)
                continue;
            if (c < HEALTH_STATUSES - 1)
                fprintf(f, "authd_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n", name,
                        health_status_codes[c], t->requests[r][c]);
            else
                fprintf(f, "authd_http_requests_total{route=\"%s\",status=\"other\"} %llu\n", name,
                        t->requests[r][c]);
        }
    }
    metric_head(f, "authd_http_request_duration_seconds", "histogram",
                "Time from a request's first byte to its response being queued.");
    unsigned long long cum = 0;
    for (int b = 0; b < HEALTH_BUCKETS; b++) {
        cum += t->bucket[b];
        if (b < HEALTH_BUCKETS - 1)
            fprintf(f, "authd_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                    health_bucket_us[b] / 1e6, cum);
        else
            fprintf(f, "authd_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
    }
    fprintf(f, "authd_http_request_duration_seconds_sum %.6f\n", t->latency_sum_us / 1e6);
    fprintf(f, "authd_http_request_duration_seconds_count %llu\n", cum);
}

static void render_gauge(FILE *f, const char *name, const char *type, const char *help, long long v)
{
    metric_head(f, name, type, help);
    fprintf(f, "%s %lld\n", name, v);
}

static void render_workers(FILE *f, const struct health *h, const struct totals *t)
{
    int64_t now = health_now_mono_ms();

    metric_head(f, "authd_workers", "gauge", "Worker processes by state.");
    for (int st = SLOT_STARTING; st <= SLOT_DRAINING; st++)
        fprintf(f, "authd_workers{state=\"%s\"} %d\n", metrics_state_name((enum health_state)st),
                t->workers[st]);
    metric_head(f, "authd_worker_resident_memory_bytes", "gauge",
                "Resident set size of each live worker.");
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct health_ident id;
        health_slot_ident(h, i, &id);
        if (id.state != SLOT_FREE)
            fprintf(f, "authd_worker_resident_memory_bytes{slot=\"%d\",generation=\"%u\"} %lld\n",
                    i, id.generation, (long long)LOAD(h->slot[i].rss_bytes));
    }
    metric_head(f, "authd_worker_heartbeat_age_seconds", "gauge",
                "Seconds since each live worker's last heartbeat.");
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct health_ident id;
        health_slot_ident(h, i, &id);
        if (id.state != SLOT_FREE)
            fprintf(f, "authd_worker_heartbeat_age_seconds{slot=\"%d\",generation=\"%u\"} %.3f\n",
                    i, id.generation, (now - id.heartbeat_ms) / 1e3);
    }
}

/* Rate limiter and auth-event counters, summed over every slot that ever held a worker. */
static void render_ratelimit(FILE *f, const struct health *h)
{
    static const char *const rules[HEALTH_RL_RULES] = {"global", "login", "register", "refresh",
                                                       "account"};
    static const char *const events[HEALTH_AUTH_EVENTS] = {
        "login", "register", "refresh", "refresh_reuse", "logout", "password_change"};
    static const uint32_t bounds[HEALTH_RL_BUCKETS - 1] = HEALTH_RL_BUCKET_US;
    unsigned long long limited[HEALTH_RL_RULES] = {0}, checks[2] = {0}, lockouts = 0, errors = 0;
    unsigned long long bucket[HEALTH_RL_BUCKETS] = {0}, sum_us = 0;
    unsigned long long ev[HEALTH_AUTH_EVENTS][2] = {{0}};
    int fallback = 0;

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        const struct health_slot *s = &h->slot[i];
        if (!health_slot_used(h, i))
            continue;
        for (int r = 0; r < HEALTH_RL_RULES; r++)
            limited[r] += LOAD(s->rl_limited_total[r]);
        for (int b = 0; b < 2; b++)
            checks[b] += LOAD(s->rl_checks_total[b]);
        for (int b = 0; b < HEALTH_RL_BUCKETS; b++)
            bucket[b] += LOAD(s->rl_redis_latency_bucket[b]);
        for (int e = 0; e < HEALTH_AUTH_EVENTS; e++)
            for (int k = 0; k < 2; k++)
                ev[e][k] += LOAD(s->auth_events[e][k]);
        lockouts += LOAD(s->rl_lockouts_total);
        errors += LOAD(s->rl_redis_errors_total);
        sum_us += LOAD(s->rl_redis_latency_sum_us);
        if (LOAD(h->ident[i].state) != SLOT_FREE && LOAD(s->rl_fallback))
            fallback = 1;
    }
    metric_head(f, "authd_ratelimit_limited_total", "counter",
                "Requests refused with 429 by a rate-limit rule.");
    for (int r = 0; r < HEALTH_RL_RULES; r++)
        fprintf(f, "authd_ratelimit_limited_total{rule=\"%s\"} %llu\n", rules[r], limited[r]);
    render_gauge(f, "authd_ratelimit_lockouts_total", "counter",
                 "Accounts that entered a login delay or the hard lock.", (long long)lockouts);
    metric_head(f, "authd_ratelimit_checks_total", "counter",
                "Rate-limit checks, by the backend whose answer decided them.");
    fprintf(f, "authd_ratelimit_checks_total{backend=\"shm\"} %llu\n", checks[0]);
    fprintf(f, "authd_ratelimit_checks_total{backend=\"redis\"} %llu\n", checks[1]);
    render_gauge(f, "authd_ratelimit_redis_errors_total", "counter",
                 "Redis errors, timeouts and lost connections of the rate limiter.",
                 (long long)errors);
    metric_head(f, "authd_ratelimit_redis_latency_seconds", "histogram",
                "Round trip of a rate-limit check to Redis.");
    unsigned long long cum = 0;
    for (int b = 0; b < HEALTH_RL_BUCKETS; b++) {
        cum += bucket[b];
        if (b < HEALTH_RL_BUCKETS - 1)
            fprintf(f, "authd_ratelimit_redis_latency_seconds_bucket{le=\"%g\"} %llu\n",
                    bounds[b] / 1e6, cum);
        else
            fprintf(f, "authd_ratelimit_redis_latency_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
    }
    fprintf(f, "authd_ratelimit_redis_latency_seconds_sum %.6f\n", sum_us / 1e6);
    fprintf(f, "authd_ratelimit_redis_latency_seconds_count %llu\n", cum);
    render_gauge(f, "authd_ratelimit_fallback_active", "gauge",
                 "1 while any live worker checks limits in shared memory because Redis failed.",
                 fallback);
    metric_head(f, "authd_auth_events_total", "counter", "Audited authentication events.");
    for (int e = 0; e < HEALTH_AUTH_EVENTS; e++)
        for (int k = 0; k < 2; k++)
            fprintf(f, "authd_auth_events_total{event=\"%s\",result=\"%s\"} %llu\n", events[e],
                    k ? "failure" : "success", ev[e][k]);
}

/* Backups the master ran (authd backup with a running master). */
static void render_backup(FILE *f, const struct health *h)
{
    render_gauge(f, "authd_backup_last_success_timestamp_seconds", "gauge",
                 "Unix time of the last successful backup (0: none known).",
                 (long long)(LOAD(h->backup_last_success_ms) / 1000));
    metric_head(f, "authd_backup_last_duration_seconds", "gauge",
                "Duration of the last backup attempt.");
    fprintf(f, "authd_backup_last_duration_seconds %.3f\n", LOAD(h->backup_last_duration_ms) / 1e3);
    render_gauge(f, "authd_backup_last_size_bytes", "gauge",
                 "Size of the last successful backup file.",
                 (long long)LOAD(h->backup_last_size_bytes));
    render_gauge(f, "authd_backup_success_total", "counter",
                 "Backups completed and verified since the master started.",
                 (long long)LOAD(h->backup_success_total));
    render_gauge(f, "authd_backup_failures_total", "counter",
                 "Backups that failed since the master started.",
                 (long long)LOAD(h->backup_failures_total));
    render_gauge(f, "authd_backup_running", "gauge", "1 while a backup runs.",
                 (long long)LOAD(h->backup_running));
    render_gauge(f, "authd_backup_encrypted", "gauge",
                 "1 when backups are encrypted (backup.encryption_key_file is set), 0 when a "
                 "backup holds password hashes and emails in clear.",
                 (long long)LOAD(h->backup_encrypted));
}

/* Retention (worker/retention.c): counters summed over every slot that ever held a worker. */
static void render_retention(FILE *f, const struct health *h)
{
    static const char *const kinds[HEALTH_PRUNE_KINDS] = {"sessions", "refresh_tokens", "audit"};
    unsigned long long pruned[HEALTH_PRUNE_KINDS] = {0}, failures = 0;

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        if (!health_slot_used(h, i))
            continue;
        for (int k = 0; k < HEALTH_PRUNE_KINDS; k++)
            pruned[k] += LOAD(h->slot[i].store_pruned_total[k]);
        failures += LOAD(h->slot[i].store_prune_failures_total);
    }
    metric_head(f, "authd_store_pruned_rows_total", "counter",
                "Store records deleted by retention, by kind.");
    for (int k = 0; k < HEALTH_PRUNE_KINDS; k++)
        fprintf(f, "authd_store_pruned_rows_total{kind=\"%s\"} %llu\n", kinds[k], pruned[k]);
    render_gauge(f, "authd_store_prune_failures_total", "counter",
                 "Retention steps that failed (the store call returned an error).",
                 (long long)failures);
    render_gauge(f, "authd_store_prune_last_success_timestamp_seconds", "gauge",
                 "Unix time the last retention pass finished without a failure (0: none yet).",
                 (long long)(LOAD(h->prune_last_success_ms) / 1000));
}

/*
 * The standard process_* metrics, for authd as a whole (master + workers + backup children),
 * so that one scrape answers "how much CPU and memory does authd use" without cAdvisor.
 */
static void render_process(FILE *f, const struct health *h)
{
    unsigned long long cpu = LOAD(h->master_cpu_us) + LOAD(h->children_cpu_us);
    long long rss = LOAD(h->master_rss_bytes);

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        if (!health_slot_used(h, i))
            continue;
        cpu += LOAD(h->slot[i].cpu_us);
        if (LOAD(h->ident[i].state) != SLOT_FREE)
            rss += LOAD(h->slot[i].rss_bytes);
    }
    metric_head(f, "process_cpu_seconds_total", "counter",
                "User and system CPU time of the master, its workers and backup children.");
    fprintf(f, "process_cpu_seconds_total %.6f\n", cpu / 1e6);
    render_gauge(f, "process_resident_memory_bytes", "gauge",
                 "Resident set size of the master plus every live worker.", rss);
    render_gauge(f, "process_start_time_seconds", "gauge", "Unix time the master started.",
                 (long long)(LOAD(h->started_ms) / 1000));
}

char *metrics_render(const struct health *h, size_t *len_r)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    struct totals *t = calloc(1, sizeof(*t));

    if (f == NULL || t == NULL) {
        if (f)
            fclose(f);
        free(out);
        free(t);
        return NULL;
    }
    sum_slots(h, t);
    render_requests(f, t);
    render_gauge(f, "authd_http_connections", "gauge", "Open client connections.", t->connections);
    render_gauge(f, "authd_http_connections_total", "counter", "Accepted client connections.",
                 (long long)t->connections_total);
    render_gauge(f, "authd_http_accept_paused_total", "counter",
                 "Times a worker stopped accepting because it reached http.max_connections.",
                 (long long)t->rejected);
    render_gauge(f, "authd_http_timeouts_total", "counter",
                 "Connections closed by the header/body or idle timeout.", (long long)t->timeouts);
    render_gauge(f, "authd_tls_handshake_failures_total", "counter", "TLS handshakes that failed.",
                 (long long)t->tls_failures);
    render_gauge(f, "authd_http_requests_in_flight", "gauge", "Requests being handled now.",
                 t->inflight);
    render_gauge(f, "authd_offload_queue_depth", "gauge",
                 "Blocking jobs queued or running in the worker thread pools.", t->offload_queued);
    render_gauge(f, "authd_offload_rejected_total", "counter",
                 "Jobs refused because a worker's offload queue was full (503).",
                 (long long)t->offload_rejected);
    render_workers(f, h, t);
    render_ratelimit(f, h);
    render_gauge(f, "authd_worker_restarts_total", "counter",
                 "Workers respawned after a crash or a missed heartbeat.",
                 (long long)LOAD(h->worker_restarts_total));
    render_gauge(f, "authd_reloads_total", "counter", "Successful configuration reloads.",
                 (long long)LOAD(h->reloads_total));
    render_gauge(f, "authd_reload_failures_total", "counter",
                 "Reloads refused because the new configuration was invalid.",
                 (long long)LOAD(h->reload_failures_total));
    render_gauge(f, "authd_generation", "gauge", "Current worker generation.",
                 (long long)LOAD(h->generation));
    render_gauge(f, "authd_master_resident_memory_bytes", "gauge",
                 "Resident set size of the master process.", (long long)LOAD(h->master_rss_bytes));
    render_gauge(f, "authd_start_time_seconds", "gauge", "Unix time the master started.",
                 (long long)(LOAD(h->started_ms) / 1000));
    render_process(f, h);
    render_backup(f, h);
    render_retention(f, h);
    free(t);
    fclose(f);
    *len_r = len;
    return out;
}

static unsigned long long slot_requests(const struct health_slot *s)
{
    unsigned long long n = 0;
    for (int b = 0; b < HEALTH_BUCKETS; b++)
        n += LOAD(s->latency_bucket[b]);
    return n;
}

/* The "backup" member of `authd status --json`: times are Unix seconds, null when unknown. */
static json_t *backup_json(const struct health *h)
{
    long long last = LOAD(h->backup_last_success_ms), attempt = LOAD(h->backup_last_attempt_ms);

    return json_pack("{s:o, s:o, s:f, s:I, s:I, s:I, s:b, s:b, s:b}", "last_success",
                     last ? json_real(last / 1e3) : json_null(), "last_attempt",
                     attempt ? json_real(attempt / 1e3) : json_null(), "last_duration_s",
                     LOAD(h->backup_last_duration_ms) / 1e3, "last_size_bytes",
                     (json_int_t)LOAD(h->backup_last_size_bytes), "successes",
                     (json_int_t)LOAD(h->backup_success_total), "failures",
                     (json_int_t)LOAD(h->backup_failures_total), "running",
                     (int)LOAD(h->backup_running), "last_failed", (int)LOAD(h->backup_last_failed),
                     "encrypted", (int)LOAD(h->backup_encrypted));
}

/* The last lines of `authd status`, about backups. */
static void backup_text(FILE *f, const struct health *h)
{
    long long last = LOAD(h->backup_last_success_ms);
    char when[32] = "none known";

    fprintf(f, "backups: %s\n",
            LOAD(h->backup_encrypted)
                ? "encrypted"
                : "NOT ENCRYPTED: backup.encryption_key_file is not set, so a backup holds "
                  "password hashes, emails and client addresses in clear");
    if (last == 0 && LOAD(h->backup_last_attempt_ms) == 0 && !LOAD(h->backup_running))
        return;

    if (last > 0) {
        time_t t = (time_t)(last / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    fprintf(f, "last backup: %s", when);
    if (last > 0)
        fprintf(f, " (%.1f MiB)", LOAD(h->backup_last_size_bytes) / 1048576.0);
    fprintf(f, "; since start %llu ok, %llu failed%s%s\n",
            (unsigned long long)LOAD(h->backup_success_total),
            (unsigned long long)LOAD(h->backup_failures_total),
            LOAD(h->backup_last_failed) ? "; the LAST ATTEMPT FAILED" : "",
            LOAD(h->backup_running) ? "; a backup is running" : "");
}

json_t *metrics_status_json(const struct health *h)
{
    int64_t now = health_now_mono_ms(), wall = health_now_wall_ms();
    json_t *workers = json_array();

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct health_ident id;
        health_slot_ident(h, i, &id);
        if (id.state == SLOT_FREE)
            continue;
        const struct health_slot *s = &h->slot[i];
        json_array_append_new(
            workers,
            json_pack("{s:i, s:i, s:i, s:s, s:f, s:I, s:I, s:I, s:I}", "slot", i, "pid",
                      (int)id.pid, "generation", (int)id.generation, "state",
                      metrics_state_name(id.state), "uptime_s", (wall - id.started_ms) / 1e3,
                      "heartbeat_age_ms", (json_int_t)(now - id.heartbeat_ms), "connections",
                      (json_int_t)LOAD(s->connections), "requests", (json_int_t)slot_requests(s),
                      "rss_bytes", (json_int_t)LOAD(s->rss_bytes)));
    }
    json_t *root =
        json_pack("{s:i, s:i, s:i, s:f, s:I, s:I, s:I, s:I, s:o}", "master_pid",
                  LOAD(h->master_pid), "generation", (int)LOAD(h->generation), "workers_wanted",
                  (int)LOAD(h->workers_wanted), "uptime_s", (wall - LOAD(h->started_ms)) / 1e3,
                  "reloads", (json_int_t)LOAD(h->reloads_total), "reload_failures",
                  (json_int_t)LOAD(h->reload_failures_total), "worker_restarts",
                  (json_int_t)LOAD(h->worker_restarts_total), "master_rss_bytes",
                  (json_int_t)LOAD(h->master_rss_bytes), "workers", workers);
    if (root != NULL)
        json_object_set_new(root, "backup", backup_json(h));
    return root;
}

char *metrics_status_text(const struct health *h)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    int64_t now = health_now_mono_ms(), wall = health_now_wall_ms();

    if (f == NULL)
        return NULL;
    fprintf(f,
            "authd master pid %d, generation %u, up %.0fs, %u workers wanted, reloads %llu "
            "(%llu refused), worker restarts %llu, master rss %.1f MiB\n",
            LOAD(h->master_pid), LOAD(h->generation), (wall - LOAD(h->started_ms)) / 1e3,
            LOAD(h->workers_wanted), (unsigned long long)LOAD(h->reloads_total),
            (unsigned long long)LOAD(h->reload_failures_total),
            (unsigned long long)LOAD(h->worker_restarts_total),
            LOAD(h->master_rss_bytes) / 1048576.0);
    fprintf(f, "%-5s %-8s %-4s %-9s %-9s %-10s %-6s %-10s %s\n", "SLOT", "PID", "GEN", "STATE",
            "UPTIME", "HEARTBEAT", "CONNS", "REQUESTS", "RSS");
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct health_ident id;
        health_slot_ident(h, i, &id);
        if (id.state == SLOT_FREE)
            continue;
        const struct health_slot *s = &h->slot[i];
        fprintf(f, "%-5d %-8d %-4u %-9s %-9.1f %-10lld %-6lld %-10llu %.1fM\n", i, (int)id.pid,
                id.generation, metrics_state_name(id.state), (wall - id.started_ms) / 1e3,
                (long long)(now - id.heartbeat_ms), (long long)LOAD(s->connections),
                slot_requests(s), LOAD(s->rss_bytes) / 1048576.0);
    }
    backup_text(f, h);
    fclose(f);
    return out;
}
