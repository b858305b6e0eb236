/* http: HTTP/1.1 connection state machine (see http.h). */
#include "worker/http.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <http_parser.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shared/log.h"
#include "worker/http_framing.h"
#include "worker/router.h"
#include "worker/worker.h"

#define MAX_HEADERS      100
#define LINGER_SECONDS   2.0
#define DRAIN_IDLE_GRACE 1.0
#define INPUT_HIGH_WATER (64 * 1024) /* stop reading a socket whose input we are not parsing */

enum conn_state { C_IDLE, C_HEAD, C_BODY, C_HANDLING, C_WRITING, C_LINGER };
enum last_cb { CB_NONE, CB_URL, CB_FIELD, CB_VALUE };

struct header {
    uint32_t name, value; /* offsets into conn->hbuf */
};

struct http_conn {
    TAILQ_ENTRY(http_conn) link;
    struct worker *w;
    struct worker_listener *l;
    struct bufferevent *bev; /* NULL once the peer went away during HANDLING */
    struct event *timer;
    http_parser parser;
    enum conn_state state;
    int handshake_done;
    int started; /* the current request's first byte arrived: its deadline runs */
    int close_after;
    int early_status;          /* set by a parser callback that refused the request */
    const char *early_msg;     /* its message for the client (static), or NULL for the default */
    enum http_errno parse_err; /* the parser's own error, for the message */
    size_t head_bytes;
    size_t trailer_bytes;
    int head_done;       /* the header section is complete: headers may be read */
    int want_continue;   /* send 100 Continue once the head's bytes have passed the checks */
    uint64_t chunk_size; /* the chunk-size line the parser paused after */
    struct http_framing framing;

    /* request head, kept as NUL-separated strings in hbuf; hbuf[hlen] is always NUL */
    char *hbuf;
    size_t hlen, hcap;
    enum last_cb last;
    uint32_t url_off;
    struct header headers[MAX_HEADERS];
    int nheaders;
    struct evbuffer *body;
    struct evbuffer *resp_headers;

    struct http_request req;
    int64_t start_us;
    char request_id[72];
    char remote[INET6_ADDRSTRLEN];
    char client[INET6_ADDRSTRLEN];
};

static void conn_free(struct http_conn *c);
static void parse_input(struct http_conn *c);
static void reply_early(struct http_conn *c, int status);

static const struct timeval *tv_of(double seconds, struct timeval *tv)
{
    tv->tv_sec = (time_t)seconds;
    tv->tv_usec = (suseconds_t)((seconds - (double)tv->tv_sec) * 1e6);
    return tv;
}

static void arm_timer(struct http_conn *c, double seconds)
{
    struct timeval tv;
    evtimer_add(c->timer, tv_of(seconds, &tv));
}

static int64_t now_us(struct http_conn *c)
{
    struct timespec ts;
    (void)c;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    }
    return "Unknown";
}

/* ---- request head accumulation (parser callbacks) ---- */

static int hbuf_append(struct http_conn *c, const char *p, size_t n)
{
    size_t limit = (size_t)c->w->cfg->http.max_header_size + 1;

    if (c->hlen + n + 1 > limit) {
        c->early_status = 431;
        return -1;
    }
    if (c->hlen + n + 1 > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 512;
        while (cap < c->hlen + n + 1)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        char *nb = realloc(c->hbuf, cap);
        if (nb == NULL) {
            c->early_status = 500;
            return -1;
        }
        c->hbuf = nb;
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hlen, p, n);
    c->hlen += n;
    c->hbuf[c->hlen] = '\0'; /* room for it was checked above: a partial string is a string */
    return 0;
}

static int hbuf_terminate(struct http_conn *c)
{
    return hbuf_append(c, "", 1);
}

static int on_message_begin(http_parser *p)
{
    struct http_conn *c = p->data;
    c->state = C_HEAD;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->last != CB_URL) {
        c->url_off = (uint32_t)c->hlen;
        c->last = CB_URL;
    }
    return hbuf_append(c, at, len);
}

/*
 * Trailer fields (after a chunked body) are never stored with the headers: they are counted
 * against http.max_header_size and dropped (RFC 9110 section 6.5 lets a recipient discard them).
 */
static int trailer_bytes(struct http_conn *c, size_t len)
{
    c->trailer_bytes += len;
    if (c->trailer_bytes > (size_t)c->w->cfg->http.max_header_size) {
        c->early_status = 431;
        c->early_msg = "The trailer section is larger than the server accepts.";
        return -1;
    }
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (c->head_done)
        return trailer_bytes(c, len);
    if (c->last != CB_FIELD) {
        if (c->last == CB_URL || c->last == CB_VALUE)
            if (hbuf_terminate(c) < 0)
                return -1;
        if (c->nheaders == MAX_HEADERS) {
            c->early_status = 431;
            return -1;
        }
        c->headers[c->nheaders++].name = (uint32_t)c->hlen;
        c->last = CB_FIELD;
    }
    return hbuf_append(c, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (c->head_done)
        return trailer_bytes(c, len);
    if (c->last != CB_VALUE) {
        if (hbuf_terminate(c) < 0)
            return -1;
        c->headers[c->nheaders - 1].value = (uint32_t)c->hlen;
        c->last = CB_VALUE;
    }
    return hbuf_append(c, at, len);
}

static void send_continue(struct http_conn *c)
{
    static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
    evbuffer_add(bufferevent_get_output(c->bev), msg, sizeof(msg) - 1);
}

static int refuse(struct http_conn *c, int status, const char *msg)
{
    c->early_status = status;
    c->early_msg = msg;
    return -1;
}

/* "chunked", case-insensitive, with optional whitespace around it. */
static int te_is_chunked(const char *v)
{
    size_t n;

    v += strspn(v, " \t");
    n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n == 7 && strncasecmp(v, "chunked", 7) == 0;
}

/*
 * RFC 9112 rules that http-parser leaves to us: the version is 1.0 or 1.1; one Host (required
 * on 1.1); Transfer-Encoding only on 1.1, once, and exactly "chunked" (http-parser would take
 * "gzip, chunked" as chunked and "chunked" twice over two lines).
 */
static int head_check(struct http_conn *c, const http_parser *p)
{
    int hosts = 0, tes = 0;
    const char *te = "";

    if (p->http_major != 1 || p->http_minor > 1)
        return refuse(c, 505, "Only HTTP/1.1 and HTTP/1.0 are served.");
    for (int i = 0; i < c->nheaders; i++) {
        const char *name = c->hbuf + c->headers[i].name;
        if (strcasecmp(name, "host") == 0) {
            hosts++;
        } else if (strcasecmp(name, "transfer-encoding") == 0) {
            tes++;
            te = c->hbuf + c->headers[i].value;
        }
    }
    if (hosts > 1)
        return refuse(c, 400, "The request has more than one Host header.");
    if (hosts == 0 && p->http_minor == 1)
        return refuse(c, 400, "An HTTP/1.1 request must have a Host header.");
    if (tes > 0 && p->http_minor == 0)
        return refuse(c, 400, "Transfer-Encoding is not accepted on HTTP/1.0.");
    if (tes > 1 || (tes == 1 && !te_is_chunked(te)))
        return refuse(c, 400, "The only Transfer-Encoding accepted is a single \"chunked\".");
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct http_conn *c = p->data;

    if ((c->last == CB_URL || c->last == CB_VALUE) && hbuf_terminate(c) < 0)
        return -1;
    if (c->last == CB_FIELD) { /* a header name without a value */
        c->early_status = 400;
        return -1;
    }
    c->head_done = 1;
    if (head_check(c, p) < 0)
        return -1;
    c->state = C_BODY;
    c->req.method = p->method;
    c->req.method_name = http_method_str((enum http_method)p->method);
    uint64_t max_body = (uint64_t)c->w->cfg->http.max_body_size;
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > max_body) {
        c->early_status = 413;
        return -1;
    }
    http_framing_body(&c->framing, (p->flags & F_CHUNKED) != 0);
    const char *expect = http_header(&c->req, "expect");
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && p->http_minor >= 1)
        c->want_continue = 1;
    return 0;
}

/* Pauses after each chunk-size line, so that the framing check learns where the data ends. */
static int on_chunk_header(http_parser *p)
{
    struct http_conn *c = p->data;

    c->chunk_size = p->content_length;
    http_parser_pause(p, 1);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (c->body == NULL && (c->body = evbuffer_new()) == NULL) {
        c->early_status = 500;
        return -1;
    }
    if (evbuffer_get_length(c->body) + len > (size_t)c->w->cfg->http.max_body_size) {
        c->early_status = 413;
        return -1;
    }
    return evbuffer_add(c->body, at, len) == 0 ? 0 : -1;
}

static int on_message_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    c->state = C_HANDLING;
    http_parser_pause(p, 1); /* one request at a time; pipelined bytes wait in the buffer */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_chunk_header = on_chunk_header,
};

struct worker *http_worker(const struct http_request *req)
{
    return req->conn->w;
}

const char *http_header(const struct http_request *req, const char *name)
{
    const struct http_conn *c = req->conn;

    if (!c->head_done) /* an answer before the header section ended reads none of it */
        return NULL;
    for (int i = 0; i < c->nheaders; i++)
        if (c->headers[i].value != 0 && strcasecmp(c->hbuf + c->headers[i].name, name) == 0)
            return c->hbuf + c->headers[i].value;
    return NULL;
}

char *http_header_combined(const struct http_request *req, const char *name)
{
    const struct http_conn *c = req->conn;
    size_t len = 0;
    int n = 0;

    if (!c->head_done)
        return NULL;
    for (int i = 0; i < c->nheaders; i++)
        if (c->headers[i].value != 0 && strcasecmp(c->hbuf + c->headers[i].name, name) == 0) {
            len += strlen(c->hbuf + c->headers[i].value) + 2;
            n++;
        }
    if (n == 0)
        return NULL;
    char *out = malloc(len + 1), *p = out;
    if (out == NULL)
        return NULL;
    for (int i = 0; i < c->nheaders; i++)
        if (c->headers[i].value != 0 && strcasecmp(c->hbuf + c->headers[i].name, name) == 0) {
            const char *v = c->hbuf + c->headers[i].value;
            size_t vl = strlen(v);
            if (p != out) {
                memcpy(p, ", ", 2);
                p += 2;
            }
            memcpy(p, v, vl);
            p += vl;
        }
    *p = '\0';
    return out;
}

void http_set_client_addr(struct http_request *req, const char *addr)
{
    struct http_conn *c = req->conn;

    snprintf(c->client, sizeof(c->client), "%s", addr);
    req->client_addr = c->client;
}

/* ---- request lifecycle ---- */

static void request_reset(struct http_conn *c)
{
    c->hlen = 0;
    c->last = CB_NONE;
    c->nheaders = 0;
    c->head_bytes = 0;
    c->trailer_bytes = 0;
    c->head_done = 0;
    c->want_continue = 0;
    c->early_status = 0;
    c->early_msg = NULL;
    c->parse_err = HPE_OK;
    http_framing_start(&c->framing);
    if (c->body)
        evbuffer_drain(c->body, evbuffer_get_length(c->body));
    if (c->resp_headers)
        evbuffer_drain(c->resp_headers, evbuffer_get_length(c->resp_headers));
    memset(&c->req, 0, sizeof(c->req));
    c->started = 0;
    c->request_id[0] = '\0';
    c->req.conn = c;
    c->req.admin = c->l->admin;
    c->req.remote_addr = c->remote;
    c->req.client_addr = c->remote;
    c->state = C_IDLE;
}

static int id_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_' || ch == '.' || ch == ':';
}

static void assign_request_id(struct http_conn *c)
{
    const char *given = http_header(&c->req, "x-request-id");
    size_t n = given ? strlen(given) : 0;
    int ok = n > 0 && n <= 64;

    for (size_t i = 0; ok && i < n; i++)
        ok = id_char_ok(given[i]);
    if (ok)
        memcpy(c->request_id, given, n + 1);
    else
        snprintf(c->request_id, sizeof(c->request_id), "%s-%08llx", c->w->id_prefix,
                 (unsigned long long)++c->w->request_seq);
    c->req.request_id = c->request_id;
}

static void dispatch(struct http_conn *c)
{
    char *url = c->hbuf + c->url_off;
    char *q = strchr(url, '?');

    evtimer_del(c->timer);
    if (q) {
        *q = '\0';
        c->req.query = q + 1;
    } else {
        c->req.query = "";
    }
    c->req.path = url;
    if (c->body && evbuffer_get_length(c->body) > 0) {
        evbuffer_add(c->body, "", 1);
        c->req.body_len = evbuffer_get_length(c->body) - 1;
        c->req.body = (const char *)evbuffer_pullup(c->body, -1);
    } else {
        c->req.body = "";
        c->req.body_len = 0;
    }
    assign_request_id(c);
    atomic_fetch_add_explicit(&c->w->hs->inflight, 1, memory_order_relaxed);
    router_dispatch(&c->req);
}

/*
 * Runs the parser over the first contiguous piece of buffered input, and the framing check over
 * exactly the bytes it consumed (the parser pauses after each chunk-size line and each message,
 * so the check always knows which part of the message it is in). Returns 1 to go on, 0 once the
 * request was dispatched or refused.
 */
static int parse_step(struct http_conn *c, struct evbuffer *in)
{
    size_t max_head = (size_t)c->w->cfg->http.max_header_size;
    struct evbuffer_iovec v;
    const char *why = NULL;

    evbuffer_peek(in, -1, NULL, &v, 1);
    size_t n = v.iov_len;
    int in_head = c->state <= C_HEAD;
    if (in_head && n > max_head + 1 - c->head_bytes)
        n = max_head + 1 - c->head_bytes;
    size_t used = http_parser_execute(&c->parser, &parser_settings, v.iov_base, n);
    int framing_ok = http_framing_scan(&c->framing, v.iov_base, used, &why) == 0;
    evbuffer_drain(in, used);
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (!framing_ok) {
        c->early_msg = why;
        reply_early(c, 400);
        return 0;
    }
    if (in_head && c->state <= C_HEAD) {
        c->head_bytes += used;
        if (c->head_bytes > max_head && err == HPE_OK) {
            reply_early(c, 431);
            return 0;
        }
    }
    if (err != HPE_OK && err != HPE_PAUSED) {
        c->parse_err = err;
        int status = c->early_status ? c->early_status : 400;
        reply_early(c, err == HPE_HEADER_OVERFLOW ? 431 : status);
        return 0;
    }
    if (c->want_continue) { /* only now: the head's bytes passed the framing check */
        c->want_continue = 0;
        send_continue(c);
    }
    if (err == HPE_PAUSED) {
        http_parser_pause(&c->parser, 0);
        if (c->state == C_HANDLING) {
            dispatch(c);
            return 0;
        }
        http_framing_chunk(&c->framing, c->chunk_size); /* paused after a chunk-size line */
    }
    return 1;
}

/* Parses what is buffered; stops at a complete request (dispatched) or when data runs out. */
static void parse_input(struct http_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);

    while (c->state <= C_BODY && evbuffer_get_length(in) > 0) {
        if (!c->started) {
            /* Armed once per request: blank lines before it must not push the deadline. */
            c->started = 1;
            c->start_us = now_us(c);
            arm_timer(c, c->w->cfg->http.header_timeout);
        }
        if (!parse_step(c, in))
            return;
    }
}

/* ---- responses ---- */

static const char *date_header(struct http_conn *c)
{
    static char buf[64];
    static time_t at;
    struct timeval tv;
    struct tm tm;

    event_base_gettimeofday_cached(c->w->base, &tv);
    if (tv.tv_sec != at) {
        at = tv.tv_sec;
        gmtime_r(&at, &tm);
        strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    }
    return buf;
}

void http_add_header(struct http_request *req, const char *name, const char *value)
{
    struct http_conn *c = req->conn;

    if (c->resp_headers == NULL && (c->resp_headers = evbuffer_new()) == NULL)
        return;
    evbuffer_add_printf(c->resp_headers, "%s: %s\r\n", name, value);
}

/*
 * Encodes a client-controlled string as a JSON string literal into out (jansson escapes it);
 * bytes that are not UTF-8 or a value too long for the line must not drop the line.
 */
static size_t client_string(const char *s, char *out, size_t n)
{
    size_t len = strlen(s);

    if (len > 1024) { /* cut at a character boundary */
        len = 1024;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    json_t *j = json_stringn(s, len);
    size_t w = j ? json_dumpb(j, out, n, JSON_ENCODE_ANY) : 0;
    json_decref(j);
    if (w == 0 || w > n) {
        static const char bad[] = "\"(not UTF-8 or too long)\"";
        memcpy(out, bad, sizeof(bad) - 1);
        return sizeof(bad) - 1;
    }
    return w;
}

/* One access-log line. Only path and user agent come from the client: they go through jansson;
 * the other values are ours (request ids are checked against [A-Za-z0-9._:-]). */
static void access_log(struct http_conn *c, int status, size_t bytes, int64_t us)
{
    const char *ua = http_header(&c->req, "user-agent");
    char path[1200], agent[1200], line[3000];
    size_t pl = client_string(c->req.path ? c->req.path : "-", path, sizeof(path));
    size_t al = client_string(ua ? ua : "", agent, sizeof(agent));
    int n =
        snprintf(line, sizeof(line),
                 "\"type\":\"access\",\"request_id\":\"%s\",\"remote\":\"%s\",\"method\":\"%s\","
                 "\"path\":%.*s,\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f,"
                 "\"user_agent\":%.*s,\"listener\":\"%s\"",
                 c->request_id[0] ? c->request_id : "-", c->remote,
                 c->req.method_name ? c->req.method_name : "-", (int)pl, path, status, bytes,
                 (double)us / 1000.0, (int)al, agent, c->l->admin ? "admin" : "public");
    if (n > 0 && (size_t)n < sizeof(line))
        log_access(line, (size_t)n);
}

static void finish_request(struct http_conn *c, int status, size_t bytes, int counted_inflight)
{
    int64_t us = now_us(c) - c->start_us;

    if (us < 0)
        us = 0;
    if (counted_inflight)
        atomic_fetch_sub_explicit(&c->w->hs->inflight, 1, memory_order_relaxed);
    health_count_request(c->w->hs, c->req.route, status, (uint64_t)us);
    c->w->served++;
    if (c->w->cfg->log.access)
        access_log(c, status, bytes, us);
}

static void write_response(struct http_conn *c, int status, const char *ctype, const char *body,
                           size_t len)
{
    static const char secure[] = "Strict-Transport-Security: max-age=63072000\r\n"
                                 "X-Content-Type-Options: nosniff\r\n"
                                 "Cache-Control: no-store\r\n";
    struct evbuffer *out = bufferevent_get_output(c->bev);
    int keep = !c->close_after && !c->w->draining && http_should_keep_alive(&c->parser);

    c->close_after = !keep;
    char head[512];
    int hn;
    const char *id = c->request_id[0] ? c->request_id : "-";
    if (status == 204) /* RFC 9110: no content, no Content-Length */
        hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 204 No Content\r\nDate: %s\r\nX-Request-Id: %s\r\n", date_header(c),
                      id);
    else
        hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "X-Request-Id: %s\r\n",
                      status, http_status_text(status), date_header(c), ctype, len, id);
    evbuffer_add(out, head, hn > 0 && (size_t)hn < sizeof(head) ? (size_t)hn : 0);
    if (!c->l->admin)
        evbuffer_add(out, secure, sizeof(secure) - 1);
    if (c->resp_headers)
        evbuffer_add_buffer(out, c->resp_headers);
    if (!keep)
        evbuffer_add(out, "Connection: close\r\n\r\n", 21);
    else if (c->parser.http_minor == 0)
        evbuffer_add(out, "Connection: keep-alive\r\n\r\n", 26);
    else
        evbuffer_add(out, "\r\n", 2);
    if (c->req.method != HTTP_HEAD && status != 204)
        evbuffer_add(out, body, len);
    c->state = C_WRITING;
    bufferevent_enable(c->bev, EV_WRITE);
}

void http_reply(struct http_request *req, int status, const char *content_type, const char *body,
                size_t len)
{
    struct http_conn *c = req->conn;

    finish_request(c, status, len, 1);
    if (c->bev == NULL) { /* the client left while we were working */
        conn_free(c);
        return;
    }
    write_response(c, status, content_type, body, len);
}

void http_reply_json(struct http_request *req, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;

    json_decref(body);
    if (text == NULL) {
        static const char oom[] = "{\"error\":\"internal_error\",\"message\":\"Out of memory.\"}";
        http_reply(req, 500, "application/json", oom, sizeof(oom) - 1);
        return;
    }
    http_reply(req, status, "application/json", text, strlen(text));
    free(text);
}

void http_reply_error(struct http_request *req, int status, const char *code, const char *message)
{
    http_reply_json(req, status, json_pack("{s:s, s:s}", "error", code, "message", message));
}

static const char *early_message(int status, const char **code_r)
{
    switch (status) {
    case 408:
        *code_r = "request_timeout";
        return "The request was not received in time.";
    case 413:
        *code_r = "body_too_large";
        return "The request body is larger than the server accepts.";
    case 431:
        *code_r = "headers_too_large";
        return "The request line and headers are larger than the server accepts.";
    case 505:
        *code_r = "http_version_not_supported";
        return "Only HTTP/1.1 and HTTP/1.0 are served.";
    case 500:
        *code_r = "internal_error";
        return "The server could not process the request.";
    default:
        *code_r = "bad_request";
        return "The request is not valid HTTP/1.1.";
    }
}

/* The client's sentence for an early answer: the refusing check's own, or the parser's. */
static const char *early_text(struct http_conn *c, int status, const char **code_r, char *buf,
                              size_t size)
{
    const char *msg = early_message(status, code_r);

    if (c->early_msg != NULL)
        return c->early_msg;
    if (status == 400 && c->parse_err > HPE_CB_chunk_complete && c->parse_err != HPE_PAUSED) {
        snprintf(buf, size, "The request is not valid HTTP/1.1: %s.",
                 http_errno_description(c->parse_err));
        return buf;
    }
    return msg;
}

/*
 * Answers a request refused before routing, then closes the connection. The header section may
 * be incomplete: nothing here reads it (http_header answers NULL until it is complete).
 */
static void reply_early(struct http_conn *c, int status)
{
    static const char fallback[] = "{\"error\":\"internal_error\",\"message\":\"Out of memory.\"}";
    const char *code;
    char buf[160];
    const char *msg = early_text(c, status, &code, buf, sizeof(buf));
    json_t *j = json_pack("{s:s, s:s}", "error", code, "message", msg);
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    size_t n = body ? strlen(body) : sizeof(fallback) - 1;

    json_decref(j);
    evtimer_del(c->timer);
    if (c->start_us == 0)
        c->start_us = now_us(c);
    if (c->request_id[0] == '\0')
        snprintf(c->request_id, sizeof(c->request_id), "%s-%08llx", c->w->id_prefix,
                 (unsigned long long)++c->w->request_seq);
    c->req.route = ROUTE_UNMATCHED;
    finish_request(c, status, n, 0);
    c->close_after = 1;
    write_response(c, status, "application/json", body ? body : fallback, n);
    free(body);
}

/* ---- connection events ---- */

static void start_linger(struct http_conn *c)
{
    int fd = bufferevent_getfd(c->bev);

    c->state = C_LINGER;
    if (fd >= 0)
        shutdown(fd, SHUT_WR);
    arm_timer(c, LINGER_SECONDS);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct http_conn *c = arg;

    if (c->state != C_WRITING)
        return;
    if (c->close_after) {
        start_linger(c);
        return;
    }
    request_reset(c);
    arm_timer(c, c->w->draining ? DRAIN_IDLE_GRACE : c->w->cfg->http.idle_timeout);
    parse_input(c); /* a pipelined request may be waiting */
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct http_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (c->state == C_LINGER) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    if (c->state <= C_BODY)
        parse_input(c);
}

static void count_tls_failure(struct http_conn *c)
{
    unsigned long e;
    int any = 0;

    while ((e = bufferevent_get_openssl_error(c->bev)) != 0)
        any = 1;
    if (any || !c->handshake_done)
        atomic_fetch_add_explicit(&c->w->hs->tls_failures_total, 1, memory_order_relaxed);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct http_conn *c = arg;

    if (what & BEV_EVENT_CONNECTED) {
        c->handshake_done = 1;
        return;
    }
    if ((what & BEV_EVENT_ERROR) && c->l->ssl && !c->handshake_done)
        count_tls_failure(c);
    if (what & BEV_EVENT_TIMEOUT)
        atomic_fetch_add_explicit(&c->w->hs->timeouts_total, 1, memory_order_relaxed);
    if (c->state == C_HANDLING) {
        /* Keep the request until its handler replies; drop the socket now. */
        bufferevent_free(c->bev);
        c->bev = NULL;
        evtimer_del(c->timer);
        return;
    }
    conn_free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct http_conn *c = arg;

    if (c->state == C_HEAD || c->state == C_BODY) {
        atomic_fetch_add_explicit(&c->w->hs->timeouts_total, 1, memory_order_relaxed);
        reply_early(c, 408);
        return;
    }
    if (c->state == C_IDLE) /* handshake not finished, or keep-alive idle */
        atomic_fetch_add_explicit(&c->w->hs->timeouts_total, 1, memory_order_relaxed);
    conn_free(c);
}

void http_conn_accept(struct worker_listener *l, int fd, const struct sockaddr *sa, int salen)
{
    struct worker *w = l->w;
    struct http_conn *c = calloc(1, sizeof(*c));
    struct timeval wtv;

    if (c == NULL) {
        close(fd);
        return;
    }
    c->w = w;
    c->l = l;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->remote,
                  sizeof(c->remote));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->remote,
                  sizeof(c->remote));
    if (l->ssl) {
        SSL *ssl = SSL_new(l->ssl);
        c->bev = ssl ? bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (c->bev)
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        else if (ssl)
            SSL_free(ssl);
    } else {
        c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
        c->handshake_done = 1;
    }
    c->timer = evtimer_new(w->base, on_timer, c);
    if (c->bev == NULL || c->timer == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        if (c->timer)
            event_free(c->timer);
        free(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    request_reset(c);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_set_timeouts(c->bev, NULL, tv_of(w->cfg->http.idle_timeout, &wtv));
    bufferevent_setwatermark(c->bev, EV_READ, 0, INPUT_HIGH_WATER);
    bufferevent_enable(c->bev, EV_READ);
    arm_timer(c, w->cfg->http.header_timeout); /* TLS handshake + first request */
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    w->nconns++;
    atomic_fetch_add_explicit(&w->hs->connections, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->hs->connections_total, 1, memory_order_relaxed);
    (void)salen;
}

static void conn_free(struct http_conn *c)
{
    struct worker *w = c->w;

    TAILQ_REMOVE(&w->conns, c, link);
    if (c->bev)
        bufferevent_free(c->bev);
    event_free(c->timer);
    if (c->body)
        evbuffer_free(c->body);
    if (c->resp_headers)
        evbuffer_free(c->resp_headers);
    free(c->hbuf);
    free(c);
    w->nconns--;
    atomic_fetch_sub_explicit(&w->hs->connections, 1, memory_order_relaxed);
    worker_conn_closed(w);
}

void http_drain(struct worker *w)
{
    struct http_conn *c;

    TAILQ_FOREACH(c, &w->conns, link)
    {
        if (c->state == C_IDLE && c->handshake_done) {
            struct timeval tv;
            evtimer_add(c->timer, tv_of(DRAIN_IDLE_GRACE, &tv));
        }
    }
}

void http_close_all(struct worker *w)
{
    struct http_conn *c = TAILQ_FIRST(&w->conns), *next;

    for (; c != NULL; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->state != C_HANDLING) {
            conn_free(c);
        } else if (c->bev != NULL) {
            /* The handler still owns the request; it frees the connection when it replies. */
            bufferevent_free(c->bev);
            c->bev = NULL;
            evtimer_del(c->timer);
        }
    }
}
