/*
 * http: HTTP/1.1 connections over libevent bufferevents (OpenSSL on the public listener,
 * plain sockets on the admin listener), parsed by http-parser.
 *
 * Each connection is a small state machine: IDLE -> HEAD -> BODY -> HANDLING -> WRITING ->
 * IDLE (keep-alive) or LINGER -> closed. Limits are enforced before anything is buffered past
 * them: request line + headers (431), body (413), a deadline for the whole request from its
 * first byte (slowloris; 408), an idle timeout between requests, and a write timeout. Every
 * error is a JSON body {"error","message"}. A handler answers with http_reply*() now or later
 * (from an offload completion); the connection stays alive until it has.
 */
#ifndef AUTHD_HTTP_H
#define AUTHD_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "shared/route.h"

struct worker;
struct worker_listener;
struct http_conn;

struct http_request {
    struct http_conn *conn;
    int method;              /* enum http_method of http-parser */
    const char *method_name; /* "GET", ... */
    const char *path;        /* target up to '?', as received */
    const char *query;       /* after '?', or "" */
    const char *body;        /* NUL-terminated copy, may be "" */
    size_t body_len;
    int admin; /* arrived on the admin listener */
    enum route_id route;
    const char *request_id;
    const char *remote_addr; /* the TCP peer */
    const char *client_addr; /* the client: the peer, or X-Forwarded-For from a trusted proxy */
};

/* Takes over an accepted socket. */
void http_conn_accept(struct worker_listener *l, int fd, const struct sockaddr *sa, int salen);

/* The worker serving `req`. */
struct worker *http_worker(const struct http_request *req);

/*
 * Value of the first request header line `name` (case-insensitive), or NULL. Only the header
 * section counts: NULL while it is incomplete, and trailer fields are never returned.
 */
const char *http_header(const struct http_request *req, const char *name);

/*
 * Every field line `name` combined in order with ", " (RFC 9110 section 5.3), as a new string
 * the caller frees; NULL when absent (or out of memory). For list fields such as
 * X-Forwarded-For, where each proxy may append its own line.
 */
char *http_header_combined(const struct http_request *req, const char *name);

/* Sets req->client_addr (copied; at most INET6_ADDRSTRLEN - 1 bytes). */
void http_set_client_addr(struct http_request *req, const char *addr);

/* Adds a response header; call before http_reply*. Both strings are copied. */
void http_add_header(struct http_request *req, const char *name, const char *value);

/* Sends the response. The request (and its strings) must not be used afterwards. */
void http_reply(struct http_request *req, int status, const char *content_type, const char *body,
                size_t len);
void http_reply_json(struct http_request *req, int status, json_t *body /* stolen */);
void http_reply_error(struct http_request *req, int status, const char *code, const char *message);

/* Drain: idle connections close soon, busy ones close after their current response. */
void http_drain(struct worker *w);
/* Closes every connection now (end of a drain, or the drain deadline). */
void http_close_all(struct worker *w);

const char *http_status_text(int status);

#endif
