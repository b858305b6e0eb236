/* Unit tests for shared/health.c and shared/metrics.c: slots, counters and their renderings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "shared/health.h"
#include "shared/metrics.h"

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        const char *hay_ = (hay), *needle_ = (needle);                                             \
        assert_non_null(hay_);                                                                     \
        if (strstr(hay_, needle_) == NULL)                                                         \
            fail_msg("expected \"%s\" in:\n%s", needle_, hay_);                                    \
    } while (0)

#define assert_not_contains(hay, needle)                                                           \
    do {                                                                                           \
        const char *hay_ = (hay), *needle_ = (needle);                                             \
        assert_non_null(hay_);                                                                     \
        if (strstr(hay_, needle_) != NULL)                                                         \
            fail_msg("did not expect \"%s\" in:\n%s", needle_, hay_);                              \
    } while (0)

static int setup(void **state)
{
    struct health *h = health_create();
    if (h == NULL)
        return -1;
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    health_destroy(*state);
    return 0;
}

static int bucket_of(uint64_t latency_us)
{
    for (int b = 0; b < HEALTH_BUCKETS - 1; b++)
        if (latency_us <= health_bucket_us[b])
            return b;
    return HEALTH_BUCKETS - 1;
}

/* Sum of a counter over every slot that ever held a worker, as a scrape would see it. */
static unsigned long long total_requests(const struct health *h, enum route_id r, int status)
{
    unsigned long long n = 0;
    int c = health_status_index(status);

    for (int i = 0; i < HEALTH_SLOTS; i++)
        n += atomic_load(&h->slot[i].requests[r][c]);
    return n;
}

static void create_is_zeroed(void **state)
{
    struct health *h = *state;

    assert_int_equal(h->magic, HEALTH_MAGIC);
    assert_int_equal(h->version, HEALTH_VERSION);
    assert_int_equal(h->nslots, HEALTH_SLOTS);
    assert_int_equal(atomic_load(&h->master_pid), getpid());
    assert_true(atomic_load(&h->started_ms) > 0);
    assert_int_equal(atomic_load(&h->generation), 0);
    assert_int_equal(atomic_load(&h->reloads_total), 0);
    assert_int_equal(atomic_load(&h->worker_restarts_total), 0);
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        const struct health_slot *s = &h->slot[i];
        assert_int_equal(atomic_load(&h->ident[i].state), SLOT_FREE);
        assert_int_equal(atomic_load(&h->ident[i].used), 0);
        assert_int_equal(atomic_load(&h->ident[i].pid), 0);
        assert_int_equal(atomic_load(&s->latency_sum_us), 0);
        for (int b = 0; b < HEALTH_BUCKETS; b++)
            assert_int_equal(atomic_load(&s->latency_bucket[b]), 0);
        for (int r = 0; r < ROUTE_COUNT; r++)
            for (int c = 0; c < HEALTH_STATUSES; c++)
                assert_int_equal(atomic_load(&s->requests[r][c]), 0);
    }
    /* Slots are cache-line aligned so workers never share a line. */
    assert_int_equal(((uintptr_t)&h->slot[0]) % 64, 0);
    assert_int_equal(((uintptr_t)&h->slot[1]) % 64, 0);
    assert_int_equal(((uintptr_t)&h->ident[1]) % 64, 0);
    assert_int_equal(sizeof(h->ident[0]), 64);
}

static void claim_distinct_slots(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 1, 1000);
    int b = health_slot_claim(h, 1, 1000);
    int c = health_slot_claim(h, 2, 1000);
    struct health_ident id;

    assert_in_range(a, 0, HEALTH_SLOTS - 1);
    assert_in_range(b, 0, HEALTH_SLOTS - 1);
    assert_in_range(c, 0, HEALTH_SLOTS - 1);
    assert_int_not_equal(a, b);
    assert_int_not_equal(a, c);
    assert_int_not_equal(b, c);
    health_slot_ident(h, a, &id);
    assert_int_equal(id.state, SLOT_STARTING);
    assert_int_equal(id.generation, 1);
    assert_int_equal(id.pid, 0);
    assert_int_equal(id.heartbeat_ms, 1000);
    assert_true(id.started_ms > 0);
    health_slot_ident(h, c, &id);
    assert_int_equal(id.state, SLOT_STARTING);
    assert_int_equal(id.generation, 2);
}

static void claim_full_segment(void **state)
{
    struct health *h = *state;
    int seen[HEALTH_SLOTS] = {0};

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        int s = health_slot_claim(h, 1, 0);
        assert_in_range(s, 0, HEALTH_SLOTS - 1);
        assert_int_equal(seen[s], 0);
        seen[s] = 1;
    }
    assert_int_equal(health_slot_claim(h, 1, 0), -1);
    health_slot_release(h, 17);
    assert_int_equal(health_slot_claim(h, 1, 0), 17);
    assert_int_equal(health_slot_claim(h, 1, 0), -1);
}

static void set_pid_ident_roundtrip(void **state)
{
    struct health *h = *state;
    int s = health_slot_claim(h, 7, 4242);
    struct health_ident id;

    health_slot_set_pid(h, s, 31337);
    health_slot_state(h, s, SLOT_READY);
    health_slot_beat(h, s, 5000, 123456);
    health_slot_ident(h, s, &id);
    assert_int_equal(id.pid, 31337);
    assert_int_equal(id.generation, 7);
    assert_int_equal(id.state, SLOT_READY);
    assert_int_equal(id.heartbeat_ms, 5000);
    assert_int_equal(atomic_load(&h->slot[s].rss_bytes), 123456);
    /* A negative rss (statm unreadable) keeps the last value. */
    health_slot_beat(h, s, 6000, -1);
    health_slot_ident(h, s, &id);
    assert_int_equal(id.heartbeat_ms, 6000);
    assert_int_equal(atomic_load(&h->slot[s].rss_bytes), 123456);
    health_slot_state(h, s, SLOT_DRAINING);
    health_slot_ident(h, s, &id);
    assert_int_equal(id.state, SLOT_DRAINING);
    /* Every identity change left the sequence counter even (no writer in progress). */
    assert_int_equal(atomic_load(&h->ident[s].seq) % 2, 0);
}

static void release_frees_slot(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 1, 0);
    int b = health_slot_claim(h, 1, 0);
    struct health_ident id;

    health_slot_set_pid(h, a, 100);
    atomic_store(&h->slot[a].connections, 5);
    atomic_store(&h->slot[a].inflight, 2);
    health_slot_release(h, a);
    health_slot_ident(h, a, &id);
    assert_int_equal(id.state, SLOT_FREE);
    assert_int_equal(id.pid, 0);
    assert_int_equal(atomic_load(&h->slot[a].connections), 0);
    assert_int_equal(atomic_load(&h->slot[a].inflight), 0);
    /* The other slot is untouched. */
    health_slot_ident(h, b, &id);
    assert_int_equal(id.state, SLOT_STARTING);
    /* The freed slot is claimable again. */
    assert_int_equal(health_slot_claim(h, 2, 0), a);
}

static void claim_prefers_used_slot(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 1, 0);
    int b = health_slot_claim(h, 1, 0);
    int c = health_slot_claim(h, 1, 0);

    (void)a;
    /* Free a slot in the middle: the next claim takes it rather than a never-used slot. */
    health_slot_release(h, b);
    assert_int_equal(health_slot_claim(h, 2, 0), b);
    health_slot_release(h, c);
    assert_int_equal(health_slot_claim(h, 3, 0), c);

    /*
     * A used free slot after never-used free ones still wins (as in a segment inherited with
     * holes): simulate it by marking slot 40 used and giving it counts.
     */
    atomic_store(&h->ident[40].used, 1);
    health_count_request(&h->slot[40], ROUTE_HEALTHZ, 200, 50);
    assert_int_equal(health_slot_claim(h, 4, 0), 40);
    assert_int_equal(atomic_load(&h->slot[40].requests[ROUTE_HEALTHZ][0]), 1);
    /* With no used free slot left, the lowest free slot is taken. */
    assert_int_equal(health_slot_claim(h, 4, 0), 3);
}

static void counters_survive_reclaim(void **state)
{
    struct health *h = *state;
    int s = health_slot_claim(h, 1, 0);

    for (int i = 0; i < 4; i++)
        health_count_request(&h->slot[s], ROUTE_HEALTHZ, 200, 50);
    assert_int_equal(total_requests(h, ROUTE_HEALTHZ, 200), 4);
    health_slot_release(h, s);
    assert_int_equal(total_requests(h, ROUTE_HEALTHZ, 200), 4);

    int s2 = health_slot_claim(h, 2, 0);
    assert_int_equal(s2, s);
    assert_int_equal(total_requests(h, ROUTE_HEALTHZ, 200), 4);
    health_count_request(&h->slot[s2], ROUTE_HEALTHZ, 200, 50);
    assert_int_equal(total_requests(h, ROUTE_HEALTHZ, 200), 5);
    assert_int_equal(atomic_load(&h->slot[s2].latency_bucket[0]), 5);
    assert_int_equal(atomic_load(&h->slot[s2].latency_sum_us), 250);

    /* The rendered counter is monotonic over the release too. */
    size_t len;
    char *text = metrics_render(h, &len);
    assert_contains(text, "authd_http_requests_total{route=\"healthz\",status=\"200\"} 5\n");
    free(text);
}

static void count_request_buckets(void **state)
{
    struct health *h = *state;
    int s = health_slot_claim(h, 1, 0);
    struct health_slot *slot = &h->slot[s];

    assert_int_equal(bucket_of(100), 0);
    health_count_request(slot, ROUTE_HEALTHZ, 200, 50); /* 50 us */
    assert_int_equal(atomic_load(&slot->latency_bucket[0]), 1);
    health_count_request(slot, ROUTE_HEALTHZ, 200, 100); /* on the first bound: still first */
    assert_int_equal(atomic_load(&slot->latency_bucket[0]), 2);
    health_count_request(slot, ROUTE_HEALTHZ, 200, 101);
    assert_int_equal(atomic_load(&slot->latency_bucket[1]), 1);

    /* 2 s lands in the 5 s bucket (le 1 s < 2 s <= 5 s). */
    int five_s = HEALTH_BUCKETS - 2;
    assert_int_equal(health_bucket_us[five_s], 5000000);
    health_count_request(slot, ROUTE_HEALTHZ, 200, 2000000);
    assert_int_equal(atomic_load(&slot->latency_bucket[five_s]), 1);
    assert_int_equal(atomic_load(&slot->latency_bucket[five_s - 1]), 0);

    /* 10 s is past every bound: +Inf. */
    health_count_request(slot, ROUTE_HEALTHZ, 200, 10000000);
    assert_int_equal(atomic_load(&slot->latency_bucket[HEALTH_BUCKETS - 1]), 1);

    unsigned long long n = 0;
    for (int b = 0; b < HEALTH_BUCKETS; b++)
        n += atomic_load(&slot->latency_bucket[b]);
    assert_int_equal(n, 5);
    assert_int_equal(atomic_load(&slot->latency_sum_us), 50 + 100 + 101 + 2000000 + 10000000);
}

static void status_index(void **state)
{
    (void)state;
    assert_int_equal(health_status_index(200), 0);
    assert_int_equal(health_status_codes[health_status_index(404)], 404);
    assert_int_equal(health_status_codes[health_status_index(503)], 503);
    assert_int_equal(health_status_codes[health_status_index(431)], 431);
    assert_int_equal(health_status_index(299), HEALTH_STATUSES - 1);
    assert_int_equal(health_status_index(0), HEALTH_STATUSES - 1);
    assert_int_equal(health_status_index(-1), HEALTH_STATUSES - 1);
    assert_int_equal(health_status_index(999), HEALTH_STATUSES - 1);
    /* Every known code maps to itself. */
    for (int i = 0; i < HEALTH_STATUSES - 1; i++)
        assert_int_equal(health_status_index(health_status_codes[i]), i);
}

static void count_request_routes(void **state)
{
    struct health *h = *state;
    int s = health_slot_claim(h, 1, 0);
    struct health_slot *slot = &h->slot[s];

    health_count_request(slot, ROUTE_METRICS, 299, 10);
    assert_int_equal(atomic_load(&slot->requests[ROUTE_METRICS][HEALTH_STATUSES - 1]), 1);
    /* An out-of-range route id is counted as unmatched, not written out of bounds. */
    health_count_request(slot, (enum route_id)ROUTE_COUNT, 404, 10);
    health_count_request(slot, (enum route_id) - 1, 404, 10);
    assert_int_equal(atomic_load(&slot->requests[ROUTE_UNMATCHED][health_status_index(404)]), 2);
}

static void render_requests_and_histogram(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 1, 0);
    int b = health_slot_claim(h, 1, 0);
    size_t len = 0;

    health_slot_state(h, a, SLOT_READY);
    health_slot_state(h, b, SLOT_READY);
    /* Three healthz 200 spread over two workers: the scrape sums them. */
    health_count_request(&h->slot[a], ROUTE_HEALTHZ, 200, 50);      /* le 0.0001 */
    health_count_request(&h->slot[a], ROUTE_HEALTHZ, 200, 300);     /* le 0.0005 */
    health_count_request(&h->slot[b], ROUTE_HEALTHZ, 200, 2000000); /* le 5 */
    health_count_request(&h->slot[b], ROUTE_READYZ, 299, 10000000); /* +Inf */

    char *text = metrics_render(h, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    assert_contains(text, "# TYPE authd_http_requests_total counter\n");
    assert_contains(text, "authd_http_requests_total{route=\"healthz\",status=\"200\"} 3\n");
    assert_contains(text, "authd_http_requests_total{route=\"readyz\",status=\"other\"} 1\n");
    assert_not_contains(text, "route=\"metrics\"");
    assert_contains(text, "# TYPE authd_http_request_duration_seconds histogram\n");
    /* Cumulative buckets. */
    assert_contains(text, "authd_http_request_duration_seconds_bucket{le=\"0.0001\"} 1\n");
    assert_contains(text, "authd_http_request_duration_seconds_bucket{le=\"0.00025\"} 1\n");
    assert_contains(text, "authd_http_request_duration_seconds_bucket{le=\"0.0005\"} 2\n");
    assert_contains(text, "authd_http_request_duration_seconds_bucket{le=\"1\"} 2\n");
    assert_contains(text, "authd_http_request_duration_seconds_bucket{le=\"5\"} 3\n");
    assert_contains(text, "authd_http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n");
    assert_contains(text, "authd_http_request_duration_seconds_count 4\n");
    assert_contains(text, "authd_http_request_duration_seconds_sum 12.000350\n");
    /* Workers by state. */
    assert_contains(text, "authd_workers{state=\"ready\"} 2\n");
    assert_contains(text, "authd_workers{state=\"starting\"} 0\n");
    assert_contains(text, "authd_workers{state=\"draining\"} 0\n");
    free(text);

    health_slot_state(h, b, SLOT_DRAINING);
    int c = health_slot_claim(h, 2, 0);
    (void)c;
    text = metrics_render(h, &len);
    assert_contains(text, "authd_workers{state=\"ready\"} 1\n");
    assert_contains(text, "authd_workers{state=\"starting\"} 1\n");
    assert_contains(text, "authd_workers{state=\"draining\"} 1\n");
    free(text);

    /* A released worker no longer counts as a worker, but its requests still do. */
    health_slot_release(h, b);
    text = metrics_render(h, &len);
    assert_contains(text, "authd_workers{state=\"draining\"} 0\n");
    assert_contains(text, "authd_http_requests_total{route=\"healthz\",status=\"200\"} 3\n");
    assert_contains(text, "authd_http_request_duration_seconds_count 4\n");
    free(text);
}

static void render_gauges(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 3, 0);
    size_t len;

    atomic_store(&h->generation, 3);
    atomic_store(&h->reloads_total, 2);
    atomic_store(&h->worker_restarts_total, 4);
    atomic_store(&h->slot[a].connections, 6);
    atomic_store(&h->slot[a].offload_rejected_total, 9);
    health_slot_beat(h, a, health_now_mono_ms(), 4096);
    char *text = metrics_render(h, &len);
    assert_contains(text, "\nauthd_generation 3\n");
    assert_contains(text, "\nauthd_reloads_total 2\n");
    assert_contains(text, "\nauthd_worker_restarts_total 4\n");
    assert_contains(text, "\nauthd_http_connections 6\n");
    assert_contains(text, "\nauthd_offload_rejected_total 9\n");
    char want[128];
    snprintf(want, sizeof(want),
             "authd_worker_resident_memory_bytes{slot=\"%d\",generation=\"3\"} 4096\n", a);
    assert_contains(text, want);
    /* No request yet: histogram present, all zero. */
    assert_contains(text, "authd_http_request_duration_seconds_bucket{le=\"+Inf\"} 0\n");
    assert_not_contains(text, "authd_http_requests_total{");
    free(text);
}

/* The retention worker: the lowest live slot of the current generation, whatever the order. */
static void first_live_slot(void **state)
{
    struct health *h = *state;
    int a, b, c;

    assert_int_equal(health_first_live_slot(h), -1);
    atomic_store(&h->generation, 2);
    a = health_slot_claim(h, 1, 0); /* an old generation's worker */
    b = health_slot_claim(h, 2, 0);
    c = health_slot_claim(h, 2, 0);
    assert_true(a < b && b < c);
    assert_int_equal(health_first_live_slot(h), b); /* starting counts: it will serve */
    health_slot_state(h, b, SLOT_DRAINING);
    assert_int_equal(health_first_live_slot(h), c);
    health_slot_release(h, b);
    health_slot_state(h, c, SLOT_READY);
    assert_int_equal(health_first_live_slot(h), c);
    b = health_slot_claim(h, 2, 0); /* a respawn takes the lower slot back */
    assert_int_equal(health_first_live_slot(h), b);
    atomic_store(&h->generation, 1); /* a rolled-back reload: the old generation again */
    assert_int_equal(health_first_live_slot(h), a);
}

/* Pruned records are counted by kind over every slot, including released ones. */
static void render_retention(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 1, 0), b = health_slot_claim(h, 1, 0);
    size_t len;

    atomic_store(&h->slot[a].store_pruned_total[PRUNE_SESSIONS], 5);
    atomic_store(&h->slot[b].store_pruned_total[PRUNE_SESSIONS], 2);
    atomic_store(&h->slot[a].store_pruned_total[PRUNE_REFRESH_TOKENS], 40);
    atomic_store(&h->slot[b].store_pruned_total[PRUNE_AUDIT], 9);
    atomic_store(&h->slot[b].store_prune_failures_total, 1);
    health_slot_release(h, b);
    atomic_store(&h->prune_last_success_ms, 1700000000123LL);
    char *text = metrics_render(h, &len);
    assert_contains(text, "# TYPE authd_store_pruned_rows_total counter\n");
    assert_contains(text, "\nauthd_store_pruned_rows_total{kind=\"sessions\"} 7\n");
    assert_contains(text, "\nauthd_store_pruned_rows_total{kind=\"refresh_tokens\"} 40\n");
    assert_contains(text, "\nauthd_store_pruned_rows_total{kind=\"audit\"} 9\n");
    assert_contains(text, "\nauthd_store_prune_failures_total 1\n");
    assert_contains(text, "\nauthd_store_prune_last_success_timestamp_seconds 1700000000\n");
    free(text);
}

static void status_json(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 4, health_now_mono_ms());
    int b = health_slot_claim(h, 4, health_now_mono_ms());
    int gone = health_slot_claim(h, 3, health_now_mono_ms());

    atomic_store(&h->generation, 4);
    atomic_store(&h->workers_wanted, 2);
    health_slot_set_pid(h, a, 1001);
    health_slot_set_pid(h, b, 1002);
    health_slot_state(h, a, SLOT_READY);
    health_count_request(&h->slot[b], ROUTE_HEALTHZ, 200, 10);
    health_count_request(&h->slot[b], ROUTE_HEALTHZ, 200, 10);
    health_slot_release(h, gone);

    json_t *j = metrics_status_json(h);
    assert_non_null(j);
    assert_true(json_is_object(j));
    assert_int_equal(json_integer_value(json_object_get(j, "master_pid")), getpid());
    assert_int_equal(json_integer_value(json_object_get(j, "generation")), 4);
    assert_int_equal(json_integer_value(json_object_get(j, "workers_wanted")), 2);
    json_t *w = json_object_get(j, "workers");
    assert_true(json_is_array(w));
    assert_int_equal(json_array_size(w), 2);

    int found_a = 0, found_b = 0;
    for (size_t i = 0; i < json_array_size(w); i++) {
        json_t *e = json_array_get(w, i);
        int slot = (int)json_integer_value(json_object_get(e, "slot"));
        assert_int_not_equal(slot, gone);
        assert_int_equal(json_integer_value(json_object_get(e, "generation")), 4);
        if (slot == a) {
            found_a = 1;
            assert_int_equal(json_integer_value(json_object_get(e, "pid")), 1001);
            assert_string_equal(json_string_value(json_object_get(e, "state")), "ready");
            assert_int_equal(json_integer_value(json_object_get(e, "requests")), 0);
        } else if (slot == b) {
            found_b = 1;
            assert_int_equal(json_integer_value(json_object_get(e, "pid")), 1002);
            assert_string_equal(json_string_value(json_object_get(e, "state")), "starting");
            assert_int_equal(json_integer_value(json_object_get(e, "requests")), 2);
        }
    }
    assert_true(found_a);
    assert_true(found_b);
    json_decref(j);
}

static void status_json_no_workers(void **state)
{
    struct health *h = *state;
    json_t *j = metrics_status_json(h);

    assert_non_null(j);
    assert_true(json_is_array(json_object_get(j, "workers")));
    assert_int_equal(json_array_size(json_object_get(j, "workers")), 0);
    json_decref(j);
}

static void status_text(void **state)
{
    struct health *h = *state;
    int a = health_slot_claim(h, 5, health_now_mono_ms());
    char want[128];

    atomic_store(&h->generation, 5);
    health_slot_set_pid(h, a, 4321);
    health_slot_state(h, a, SLOT_READY);

    char *text = metrics_status_text(h);
    assert_non_null(text);
    snprintf(want, sizeof(want), "authd master pid %d, generation 5,", (int)getpid());
    assert_true(strncmp(text, want, strlen(want)) == 0);
    char *nl = strchr(text, '\n');
    assert_non_null(nl);
    /* Second line: the column header. */
    assert_true(strncmp(nl + 1, "SLOT ", 5) == 0);
    assert_contains(nl + 1, "STATE");
    assert_contains(text, " 4321 ");
    assert_contains(text, " ready ");
    /* Backups not encrypted (the segment says so): said plainly, on its own line. */
    assert_contains(text, "\nbackups: NOT ENCRYPTED: backup.encryption_key_file is not set");
    /* Header + column header + one worker line + the backups line. */
    int lines = 0;
    for (const char *p = text; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 4);
    free(text);
}

static void state_names(void **state)
{
    (void)state;
    assert_string_equal(metrics_state_name(SLOT_FREE), "free");
    assert_string_equal(metrics_state_name(SLOT_STARTING), "starting");
    assert_string_equal(metrics_state_name(SLOT_READY), "ready");
    assert_string_equal(metrics_state_name(SLOT_DRAINING), "draining");
    assert_string_equal(metrics_state_name((enum health_state)42), "unknown");
}

static void route_names(void **state)
{
    (void)state;
    assert_string_equal(route_name(ROUTE_HEALTHZ), "healthz");
    assert_string_equal(route_name(ROUTE_UNMATCHED), "unmatched");
    assert_null(route_name((enum route_id)(ROUTE_COUNT - 1)));
    assert_null(route_name((enum route_id)ROUTE_COUNT));
}

static void self_rss(void **state)
{
    (void)state;
    assert_true(health_self_rss() > 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(create_is_zeroed),
        T(claim_distinct_slots),
        T(claim_full_segment),
        T(set_pid_ident_roundtrip),
        T(release_frees_slot),
        T(claim_prefers_used_slot),
        T(counters_survive_reclaim),
        T(count_request_buckets),
        T(status_index),
        T(count_request_routes),
        T(render_requests_and_histogram),
        T(render_gauges),
        T(first_live_slot),
        T(render_retention),
        T(status_json),
        T(status_json_no_workers),
        T(status_text),
        cmocka_unit_test(state_names),
        cmocka_unit_test(route_names),
        cmocka_unit_test(self_rss),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
