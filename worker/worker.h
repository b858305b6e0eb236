/*
 * worker: one pre-forked worker process — a single-threaded libevent loop that accepts on the
 * listening sockets inherited from the master, serves HTTP/1.1 (TLS on the public listener,
 * plain on the admin listener), beats its heartbeat into the health segment and drains
 * gracefully on SIGTERM.
 */
#ifndef AUTHD_WORKER_H
#define AUTHD_WORKER_H

#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <sys/queue.h>

#include "shared/config.h"
#include "shared/health.h"

#define WORKER_EXIT_FATAL 78 /* EX_CONFIG: the master must not respawn, it stops instead */

struct http_conn;
struct offload;
struct auth;
struct ratelimit;
struct retention;

struct worker_listener {
    struct worker *w;
    struct evconnlistener *l;
    SSL_CTX *ssl; /* NULL: plain HTTP (admin) */
    int admin;
};

struct worker {
    const struct config *cfg;
    struct health *health;
    int slot;
    struct health_slot *hs;
    struct event_base *base;
    const struct auth *auth;
    struct offload *offload;     /* password hashing */
    struct offload *store_pool;  /* store calls */
    struct ratelimit *rl;        /* rate limits and account lockout */
    struct retention *retention; /* pruning of the store (one worker of a generation) */
    struct worker_listener listeners[2];
    TAILQ_HEAD(, http_conn) conns;
    int nconns;
    int accepting_paused;
    int draining;
    struct event *ev_term, *ev_usr1, *heartbeat, *drain_deadline;
    uint64_t request_seq;
    uint64_t served, served_at_beat, served_at_trim; /* requests answered, for malloc_trim */
    int live_workers, ready_workers;                 /* from the health segment, per heartbeat */
    char id_prefix[9];
};

/*
 * Runs a worker in the freshly forked child until it has drained. `public_fd` and `admin_fd`
 * are listening sockets (admin_fd may be -1). Returns the process exit status.
 */
int worker_main(const struct config *cfg, SSL_CTX *ssl, const struct auth *auth, struct health *h,
                int slot, int public_fd, int admin_fd);

/* Called by the HTTP layer when a connection closed: resumes accepting, ends a drain. */
void worker_conn_closed(struct worker *w);

#endif
