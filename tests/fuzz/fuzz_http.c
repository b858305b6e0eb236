/*
 * fuzz_http: libFuzzer harness for the HTTP/1.1 request layer (worker/http.c).
 *
 * Each input is one client byte stream sent over a socketpair to a real http_conn on a plain
 * listener of a worker with the default configuration: the real bufferevents, http-parser
 * callbacks, limits, keep-alive and pipelining, early replies, linger and close paths run.
 * The router is this file's router_dispatch: it reads everything a handler may read (method,
 * path, query, body up to body_len and its NUL, request id, many header and trailer values,
 * combined list headers) and answers through http_reply / http_reply_json, some at once and
 * some from a later event, as offload completions do.
 *
 * Input: byte 0 = options (bit 0: admin listener; bit 2: log.access = false), byte 1 = where to
 * split the stream into two writes (exercises partial reads), then the stream. The client's write
 * side is shut after it, and the loop runs until the connection is gone (bounded; see run_conn).
 */
#include <event2/event.h>
#include <http_parser.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/fuzz/fuzz.h"

#include "shared/config.h"
#include "shared/health.h"
#include "shared/log.h"
#include "worker/http.h"
#include "worker/router.h"
#include "worker/worker.h"

#define NONBLOCK_ROUNDS 400
#define TIMED_ROUNDS    20

static struct worker w;
static struct config *cfg;
static struct health_slot *slot;
static struct worker_listener listeners[2];
static int client_fd = -1;

/* Names a handler or the HTTP layer may look up; trailers can carry any of them too. */
static const char *const lookup_names[] = {
    "host",           "user-agent",    "content-type",
    "content-length", "authorization", "x-request-id",
    "x-echo",         "expect",        "te",
    "trailer",        "cookie",        "x-trailer",
    "accept",         "connection",    "transfer-encoding",
    "origin",         "x-real-ip",     "x-forwarded-for",
};

static void die(const char *what)
{
    fuzz_die("fuzz_http", what);
}

/* Reads the whole string (ASan sees an over-read past its terminator) and folds it in. */
static size_t touch(const char *s, uint64_t *sum)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        *sum = *sum * 31 + (unsigned char)s[i];
    return n;
}

static void check_request(const struct http_request *req, uint64_t *sum)
{
    if (req->path == NULL || req->query == NULL || req->body == NULL || req->method_name == NULL)
        die("a request field is NULL");
    touch(req->method_name, sum);
    touch(req->path, sum);
    touch(req->query, sum);
    touch(req->remote_addr, sum);
    touch(req->client_addr, sum);
    if (touch(req->request_id, sum) > 64 && req->request_id[0] != '\0')
        die("request id longer than 64 bytes");
    for (size_t i = 0; i < req->body_len; i++)
        *sum += (unsigned char)req->body[i];
    if (req->body[req->body_len] != '\0')
        die("body is not NUL-terminated at body_len");
    if (req->body_len > (size_t)cfg->http.max_body_size)
        die("body longer than http.max_body_size");
}

/* Every name of lookup_names, the name the client put in X-Echo-Name, and list headers. */
static void read_headers(struct http_request *req, uint64_t *sum)
{
    for (size_t i = 0; i < sizeof(lookup_names) / sizeof(lookup_names[0]); i++) {
        const char *v = http_header(req, lookup_names[i]);
        if (v != NULL)
            touch(v, sum);
    }
    const char *name = http_header(req, "x-echo-name");
    if (name != NULL) {
        const char *v = http_header(req, name);
        if (v != NULL)
            touch(v, sum);
    }
    const char *lists[] = {"x-forwarded-for", "accept", name ? name : "cookie"};
    for (size_t i = 0; i < 3; i++) {
        char *all = http_header_combined(req, lists[i]);
        if (all != NULL) {
            touch(all, sum);
            free(all);
        }
    }
}

static void answer(struct http_request *req)
{
    uint64_t sum = 0;
    const char *echo = http_header(req, "x-echo");
    size_t plen = strlen(req->path);
    static const int statuses[] = {200, 201, 204, 400, 404, 429, 500, 503};
    int status = statuses[plen % (sizeof(statuses) / sizeof(statuses[0]))];

    check_request(req, &sum);
    read_headers(req, &sum);
    if (echo != NULL)
        http_add_header(req, "X-Echo", echo);
    http_set_client_addr(req, echo != NULL ? echo : req->remote_addr);
    if (plen % 2 == 0) {
        char text[64];
        int n = snprintf(text, sizeof(text), "%zu %llx", req->body_len, (unsigned long long)sum);
        http_reply(req, status, "text/plain", text, (size_t)n);
        return;
    }
    /* Values that are not UTF-8 make json_pack fail: http_reply_json answers 500 then. */
    http_reply_json(req, status,
                    json_pack("{s:s, s:s, s:s?, s:I}", "path", req->path, "query", req->query,
                              "echo", echo, "body_len", (json_int_t)req->body_len));
}

static void answer_later(evutil_socket_t fd, short what, void *arg)
{
    answer(arg);
}

void router_dispatch(struct http_request *req)
{
    struct timeval now = {0, 0};

    req->route = (enum route_id)(strlen(req->path) % ROUTE_HEALTHZ + 1);
    /* Paths under /later are answered from a later event, as offload completions are. */
    if (strncmp(req->path, "/later", 6) == 0) {
        if (event_base_once(w.base, -1, EV_TIMEOUT, answer_later, req, &now) != 0)
            die("event_base_once");
        return;
    }
    answer(req);
}

void worker_conn_closed(struct worker *wk)
{
    if (wk != &w || wk->nconns < 0)
        die("worker_conn_closed: bad worker or count");
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char *errors = NULL;

    signal(SIGPIPE, SIG_IGN);
    fuzz_unset_authd_env(); /* defaults only: no AUTHD_* override */
    cfg = config_load(NULL, &errors);
    if (cfg == NULL)
        die(errors ? errors : "config_load");
    /* Timers only matter when a connection outlives the client's EOF: keep them short. */
    cfg->http.header_timeout = 0.05;
    cfg->http.idle_timeout = 0.05;
    log_set_role("worker");
    log_set_level(LOG_ERROR); /* access lines are still built, not written */
    slot = aligned_alloc(64, (sizeof(*slot) + 63) / 64 * 64);
    w.base = event_base_new();
    if (slot == NULL || w.base == NULL)
        die("out of memory");
    memset(slot, 0, sizeof(*slot));
    w.cfg = cfg;
    w.hs = slot;
    snprintf(w.id_prefix, sizeof(w.id_prefix), "fuzz0001");
    TAILQ_INIT(&w.conns);
    for (int i = 0; i < 2; i++) {
        listeners[i].w = &w;
        listeners[i].admin = i;
    }
    return 0;
}

static void drain_client(void)
{
    char buf[16384];

    while (read(client_fd, buf, sizeof(buf)) > 0)
        ;
}

static void send_part(const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(client_fd, p, n);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        /* The server must read before more fits: let it, and take what it answered. */
        event_base_loop(w.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        drain_client();
    }
}

/* Runs the loop until the connection is gone: first without waiting, then with short waits
 * (the timers), and at last closes what is left through the layer's own close path. */
static void run_conn(void)
{
    struct timeval tick = {0, 20000};

    for (int i = 0; i < NONBLOCK_ROUNDS && w.nconns > 0; i++) {
        event_base_loop(w.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        drain_client();
    }
    for (int i = 0; i < TIMED_ROUNDS && w.nconns > 0; i++) {
        event_base_loopexit(w.base, &tick);
        event_base_loop(w.base, 0);
        drain_client();
    }
    if (w.nconns > 0)
        http_close_all(&w);
    /* A reply scheduled for later still runs: it frees its connection. */
    for (int i = 0; i < NONBLOCK_ROUNDS && w.nconns > 0; i++)
        event_base_loop(w.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    if (w.nconns != 0)
        die("a connection outlived http_close_all");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    if (size < 2)
        return 0;
    int admin = data[0] & 1;
    cfg->log.access = !(data[0] & 4);
    size_t len = size - 2, split = (size_t)data[1] * len / 256;
    const uint8_t *stream = data + 2;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        die("socketpair");
    client_fd = sv[1];
    http_conn_accept(&listeners[admin], sv[0], (struct sockaddr *)&sa, (int)sizeof(sa));
    if (w.nconns != 1)
        die("http_conn_accept did not take the connection");
    send_part(stream, split);
    event_base_loop(w.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    drain_client();
    send_part(stream + split, len - split);
    shutdown(client_fd, SHUT_WR);
    run_conn();
    close(client_fd);
    client_fd = -1;
    return 0;
}
