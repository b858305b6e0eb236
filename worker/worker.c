/* worker: the worker process's event loop, heartbeat and drain (see worker.h). */
#include "worker/worker.h"

#include <errno.h>
#include <malloc.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/ratelimit.h"
#include "shared/testhook.h"
#include "worker/api.h"
#include "worker/http.h"
#include "worker/offload.h"
#include "worker/retention.h"
#include "worker/router.h"

static const struct timeval *seconds_tv(double s, struct timeval *tv)
{
    tv->tv_sec = (time_t)s;
    tv->tv_usec = (suseconds_t)((s - (double)tv->tv_sec) * 1e6);
    return tv;
}

static void set_accepting(struct worker *w, int on)
{
    for (int i = 0; i < 2; i++) {
        if (w->listeners[i].l == NULL)
            continue;
        if (on)
            evconnlistener_enable(w->listeners[i].l);
        else
            evconnlistener_disable(w->listeners[i].l);
    }
    w->accepting_paused = !on;
}

static void maybe_finish_drain(struct worker *w)
{
    if (w->draining && w->nconns == 0 && offload_pending(w->offload) == 0 &&
        offload_pending(w->store_pool) == 0)
        event_base_loopexit(w->base, NULL);
}

void worker_conn_closed(struct worker *w)
{
    if (w->accepting_paused && !w->draining && w->nconns < w->cfg->http.max_connections)
        set_accepting(w, 1);
    maybe_finish_drain(w);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct worker_listener *wl = arg;
    struct worker *w = wl->w;

    if (w->draining) {
        close(fd);
        return;
    }
    http_conn_accept(wl, fd, sa, salen);
    if (w->nconns >= w->cfg->http.max_connections) {
        /* Leave further connections in the kernel queue for the other workers. */
        atomic_fetch_add_explicit(&w->hs->accept_paused_total, 1, memory_order_relaxed);
        set_accepting(w, 0);
    }
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    log_warn("accept: %s", evutil_socket_error_to_string(err));
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;

    router_refresh_health(w);
    /* Idle after traffic: hand freed heap back to the kernel (glibc keeps it otherwise). */
    if (w->served == w->served_at_beat && w->served != w->served_at_trim) {
        malloc_trim(0);
        w->served_at_trim = w->served;
    }
    w->served_at_beat = w->served;
    health_slot_beat(w->health, w->slot, health_now_mono_ms(), health_self_rss());
    health_slot_cpu(w->health, w->slot, health_self_cpu_us());
    atomic_store_explicit(&w->hs->offload_queued,
                          offload_pending(w->offload) + offload_pending(w->store_pool),
                          memory_order_relaxed);
    log_flush();
    maybe_finish_drain(w);
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;

    log_warn("drain timeout after %.1fs with %d connection(s) open; closing them",
             w->cfg->supervisor.drain_timeout, w->nconns);
    event_base_loopexit(w->base, NULL);
}

static void start_drain(struct worker *w)
{
    struct timeval tv;

    if (w->draining)
        return;
    w->draining = 1;
    health_slot_state(w->health, w->slot, SLOT_DRAINING);
    for (int i = 0; i < 2; i++) {
        if (w->listeners[i].l) {
            evconnlistener_free(w->listeners[i].l); /* closes this process's copy only */
            w->listeners[i].l = NULL;
        }
    }
    http_drain(w);
    w->drain_deadline = evtimer_new(w->base, on_drain_deadline, w);
    evtimer_add(w->drain_deadline, seconds_tv(w->cfg->supervisor.drain_timeout, &tv));
    maybe_finish_drain(w);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct worker *w = arg;

    if (sig == SIGTERM)
        start_drain(w);
    else if (sig == SIGUSR1 && log_reopen() < 0)
        log_error("reopen %s: %s", w->cfg->log.file, strerror(errno));
}

/* SIGTERM and SIGUSR1: the signals the worker's loop handles (on_signal). */
static void own_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGUSR1);
}

/*
 * Signal dispositions inherited from the master are not ours: reset them. The master forks
 * with every signal blocked (fork_blocked); all are unblocked here but SIGTERM and SIGUSR1,
 * which stay blocked (a SIGTERM sent already stays pending) until the loop handles them.
 */
static void reset_signals(void)
{
    sigset_t own;

    signal(SIGHUP, SIG_IGN); /* reload is the master's business */
    signal(SIGINT, SIG_IGN); /* a terminal's Ctrl-C reaches the whole group: master decides */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    own_signals(&own);
    sigprocmask(SIG_SETMASK, &own, NULL);
}

static int add_listener(struct worker *w, int idx, int fd, SSL_CTX *ssl)
{
    struct worker_listener *wl = &w->listeners[idx];

    wl->w = w;
    wl->ssl = ssl;
    wl->admin = ssl == NULL;
    wl->l = evconnlistener_new(w->base, on_accept, wl, LEV_OPT_CLOSE_ON_FREE, -1, fd);
    if (wl->l == NULL) {
        log_error("evconnlistener_new(fd %d): %s", fd, strerror(errno));
        return -1;
    }
    evconnlistener_set_error_cb(wl->l, on_accept_error);
    return 0;
}

static int worker_setup(struct worker *w, SSL_CTX *ssl, int public_fd, int admin_fd)
{
    struct timeval tv;
    unsigned char rnd[4];

    if ((w->base = event_base_new()) == NULL) {
        log_error("event_base_new failed");
        return -1;
    }
    w->offload = offload_new(w->base, w->cfg->offload.threads, w->cfg->offload.queue);
    if (w->offload == NULL) {
        log_error("offload_new(%d threads): %s", w->cfg->offload.threads, strerror(errno));
        return -1;
    }
    w->store_pool = offload_new(w->base, w->cfg->offload.store_threads, w->cfg->offload.queue);
    if (w->store_pool == NULL) {
        log_error("offload_new(%d threads): %s", w->cfg->offload.store_threads, strerror(errno));
        return -1;
    }
    if ((w->rl = ratelimit_new(w->cfg, w->base, w->hs)) == NULL)
        return -1;
    if ((w->retention = retention_new(w)) == NULL)
        return -1;
    if (add_listener(w, 0, public_fd, ssl) < 0 ||
        (admin_fd >= 0 && add_listener(w, 1, admin_fd, NULL) < 0))
        return -1;
    w->ev_term = evsignal_new(w->base, SIGTERM, on_signal, w);
    w->ev_usr1 = evsignal_new(w->base, SIGUSR1, on_signal, w);
    w->heartbeat = event_new(w->base, -1, EV_PERSIST, on_heartbeat, w);
    if (!w->ev_term || !w->ev_usr1 || !w->heartbeat || evsignal_add(w->ev_term, NULL) < 0 ||
        evsignal_add(w->ev_usr1, NULL) < 0 ||
        event_add(w->heartbeat, seconds_tv(w->cfg->supervisor.heartbeat_interval, &tv)) < 0) {
        log_error("cannot register worker events");
        return -1;
    }
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        memset(rnd, 0, sizeof(rnd));
    snprintf(w->id_prefix, sizeof(w->id_prefix), "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3]);
    return 0;
}

/* Set up: the worker counts as ready (a test build may hold this, see shared/testhook.h). */
static void report_ready(void *arg)
{
    struct worker *w = arg;

    if (w->draining)
        return;
    health_slot_state(w->health, w->slot, SLOT_READY);
    router_refresh_health(w);
    log_debug("worker ready in slot %d, generation %u", w->slot,
              atomic_load(&w->health->ident[w->slot].generation));
}

static void worker_teardown(struct worker *w)
{
    testhook_hold_free();
    http_close_all(w);
    ratelimit_shutdown(w->rl); /* answers checks waiting on Redis, before the pools go */
    offload_free(w->offload);  /* runs pending completions, which free their connections */
    offload_free(w->store_pool);
    retention_free(w->retention); /* after the pool: no step runs any more */
    ratelimit_free(w->rl);
    api_cache_clear();
    for (int i = 0; i < 2; i++)
        if (w->listeners[i].l)
            evconnlistener_free(w->listeners[i].l);
    if (w->ev_term)
        event_free(w->ev_term);
    if (w->ev_usr1)
        event_free(w->ev_usr1);
    if (w->heartbeat)
        event_free(w->heartbeat);
    if (w->drain_deadline)
        event_free(w->drain_deadline);
    if (w->base)
        event_base_free(w->base);
    log_flush();
}

int worker_main(const struct config *cfg, SSL_CTX *ssl, const struct auth *auth, struct health *h,
                int slot, int public_fd, int admin_fd)
{
    struct worker w = {.cfg = cfg, .auth = auth, .health = h, .slot = slot, .hs = &h->slot[slot]};
    int status = 0;

    log_set_role("worker");
    reset_signals();
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* a master killed with SIGKILL must not leave us behind */
    if (getppid() != atomic_load(&h->master_pid))
        return 0; /* it died before prctl took effect */
    /* One malloc arena: argon2id's scratch memory (password.memory_kib per hash) freed by a pool
     * thread then sits in the main arena, whose top malloc_trim can return when the worker goes
     * idle; glibc never shrinks the top of a per-thread arena. */
    mallopt(M_ARENA_MAX, 1);
    TAILQ_INIT(&w.conns);
    health_slot_set_pid(h, slot, getpid());
    health_slot_beat(h, slot, health_now_mono_ms(), -1);
    if (worker_setup(&w, ssl, public_fd, admin_fd) < 0) {
        status = WORKER_EXIT_FATAL;
        goto out;
    }
    sigset_t own;
    own_signals(&own);
    sigprocmask(SIG_UNBLOCK, &own, NULL); /* the loop's handlers are in place (worker_setup) */
    if (!testhook_hold_ready(w.base, report_ready, &w))
        report_ready(&w);
    event_base_dispatch(w.base);
    log_debug("worker in slot %d drained", slot);
out:
    worker_teardown(&w);
    return status;
}
