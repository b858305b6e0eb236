/* supervisor: the master's loop (see supervisor.h). */
#include "master/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "master/backup.h"
#include "master/control.h"
#include "master/pidfile.h"
#include "master/respawn.h"
#include "shared/auth.h"
#include "shared/health.h"
#include "shared/log.h"
#include "shared/metrics.h"
#include "shared/ratelimit.h"
#include "shared/tls.h"
#include "worker/worker.h"

#define TICK_MS 100

struct proc {
    pid_t pid; /* 0: no worker in this slot */
    unsigned generation;
    int position; /* index in sup.pos, -1 once retired */
    int64_t started_ms;
    int retiring; /* sent SIGTERM: drains, is not respawned */
    int64_t term_ms;
    int killed;
};

struct position {
    int slot;         /* -1: no worker */
    int streak;       /* consecutive fast crashes */
    int64_t spawn_at; /* monotonic ms; -1: nothing scheduled */
};

struct listen_fd {
    int fd;
    char *address;
    int port;
};

/*
 * What a reload replaced, kept until the new generation is ready: when the new generation
 * cannot start, the master restores it and the old workers, which never stopped serving,
 * go on as the current generation.
 */
struct prev_state {
    int valid;
    struct config *cfg;
    SSL_CTX *ssl;
    struct auth *auth;
    struct listen_fd pub, admin; /* fd -1: the reload kept that listener */
    struct position pos[CONFIG_MAX_WORKERS];
    int npos;
    unsigned generation;
};

/* The backup child: at most one at a time. */
struct backup_job {
    pid_t pid;  /* 0: no backup running */
    int fd;     /* read end of the child's report pipe */
    int client; /* control client waiting for the outcome, -1: none */
};

/* What the backup child writes into its pipe before it exits. */
struct backup_report {
    int ok;
    struct backup_result res;
    char msg[1024];
};

static struct {
    char *config_path;
    struct config *cfg;
    SSL_CTX *ssl;
    struct auth *auth;
    struct health *h;
    struct listen_fd pub, admin;
    struct proc procs[HEALTH_SLOTS]; /* indexed by health slot */
    struct position pos[CONFIG_MAX_WORKERS];
    int npos;
    unsigned generation;      /* the current one */
    unsigned last_generation; /* the highest ever started: numbers are never reused */
    struct prev_state prev;   /* while reload_waiting */
    int reload_waiting;       /* new generation starting; old one not retired yet */
    int reload_again;
    int stopping;
    int64_t stop_deadline;
    int exit_code;
    int ready_notified;
    int pidfd, ctlfd, sigpipe[2];
    char *pid_path, *ctl_path; /* as opened at start: a reload does not move them */
    int64_t last_rss_ms, last_wd_ms;
    uint64_t watchdog_usec;
    struct backup_job bk;
} sup;

/* ---- signals ---- */

static volatile sig_atomic_t got_hup, got_term, got_usr1, got_chld;
static volatile int sigpipe_w = -1;

/*
 * SIGNAL HANDLER. Async-signal-safe only: sets a flag and writes one byte to the self-pipe so
 * poll() wakes; errno is preserved. The loop acts on the flags.
 */
static void on_signal(int sig)
{
    int saved = errno;

    if (sig == SIGHUP)
        got_hup = 1;
    else if (sig == SIGTERM || sig == SIGINT)
        got_term = 1;
    else if (sig == SIGUSR1)
        got_usr1 = 1;
    else if (sig == SIGCHLD)
        got_chld = 1;
    if (sigpipe_w >= 0) {
        ssize_t w = write(sigpipe_w, "", 1);
        (void)w;
    }
    errno = saved;
}

static int install_signals(void)
{
    struct sigaction sa;
    const int sigs[] = {SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGCHLD};

    if (pipe2(sup.sigpipe, O_NONBLOCK | O_CLOEXEC) < 0)
        return -1;
    sigpipe_w = sup.sigpipe[1];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        if (sigaction(sigs[i], &sa, NULL) < 0)
            return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* ---- listeners ---- */

static int listen_open(struct listen_fd *l, const char *address, int port, int backlog, char *err,
                       size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char portstr[16];
    int one = 1, fd = -1;

    snprintf(portstr, sizeof(portstr), "%d", port);
    int r = getaddrinfo(address, portstr, &hints, &ai);
    if (r != 0) {
        snprintf(err, errlen, "listen %s:%d: %s", address, port, gai_strerror(r));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    /* TCP_NODELAY on the listener is inherited by accepted sockets: without it, responses on
     * keep-alive TLS connections wait ~40 ms for delayed ACKs. */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        snprintf(err, errlen, "listen %s:%d: %s", address, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    l->fd = fd;
    l->address = strdup(address);
    l->port = port;
    return 0;
}

static void listen_close(struct listen_fd *l)
{
    if (l->fd >= 0)
        close(l->fd);
    free(l->address);
    l->fd = -1;
    l->address = NULL;
}

static int listen_same(const struct listen_fd *l, const char *address, int port)
{
    return l->fd >= 0 && l->port == port && strcmp(l->address, address) == 0;
}

/* ---- workers ---- */

static int64_t now_ms(void)
{
    return health_now_mono_ms();
}

/*
 * In a new worker: closes every descriptor the master holds (control socket and its clients,
 * pid file, self-pipe, ...) except stdio and the two listeners. A control client whose socket
 * leaked into a worker would wait forever for the end of the master's answer.
 */
static void close_inherited(int keep1, int keep2)
{
    unsigned lo = (unsigned)(keep1 < keep2 ? keep1 : keep2);
    unsigned hi = (unsigned)(keep1 < keep2 ? keep2 : keep1);

    close_range(3, lo - 1, 0);
    if (hi > lo + 1)
        close_range(lo + 1, hi - 1, 0);
    close_range(hi + 1, ~0U, 0);
}

/*
 * fork() with every signal blocked, restored in the parent; the child starts with all of them
 * blocked. Otherwise a signal sent to a new child before it installed its own handlers (a
 * SIGTERM of a stop or a rollback right after a respawn) would run the master's handler in the
 * child, which only sets a flag the child never reads: the signal would be lost. Blocked, it
 * stays pending until the child unblocks it with its own handlers in place.
 */
static pid_t fork_blocked(void)
{
    sigset_t all, old;

    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid != 0) {
        int saved = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        errno = saved;
    }
    return pid;
}

static void spawn(int position)
{
    struct position *ps = &sup.pos[position];
    int slot = health_slot_claim(sup.h, sup.generation, now_ms());

    if (slot < 0) {
        log_error("no free health slot for worker %d; retrying in 1s", position);
        ps->spawn_at = now_ms() + 1000;
        return;
    }
    pid_t pid = fork_blocked(); /* worker_main unblocks once its handlers are in place */
    if (pid < 0) {
        log_error("fork: %s; retrying in 1s", strerror(errno));
        health_slot_release(sup.h, slot);
        ps->spawn_at = now_ms() + 1000;
        return;
    }
    if (pid == 0) {
        sigpipe_w = -1;
        close_inherited(sup.pub.fd, sup.admin.fd);
        exit(worker_main(sup.cfg, sup.ssl, sup.auth, sup.h, slot, sup.pub.fd, sup.admin.fd));
    }
    sup.procs[slot] = (struct proc){
        .pid = pid, .generation = sup.generation, .position = position, .started_ms = now_ms()};
    ps->slot = slot;
    ps->spawn_at = -1;
    log_debug("started worker pid %d in slot %d (generation %u)", (int)pid, slot, sup.generation);
}

static void describe_exit(int st, char *out, size_t n)
{
    if (WIFSIGNALED(st))
        snprintf(out, n, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(out, n, "exited with status %d", WEXITSTATUS(st));
}

static void begin_stop(int code);

static void rollback_reload(const char *why);

static void worker_died(const struct proc *p, int slot, int st)
{
    char how[96];
    int64_t lived = now_ms() - p->started_ms;

    describe_exit(st, how, sizeof(how));
    if (sup.reload_waiting && p->generation == sup.generation &&
        ((WIFEXITED(st) && WEXITSTATUS(st) == WORKER_EXIT_FATAL) ||
         lived < (int64_t)(sup.cfg->supervisor.crash_window * 1000))) {
        /* A worker of a reload's new generation that cannot start: the old one still serves. */
        char why[160];
        snprintf(why, sizeof(why), "generation %u worker pid %d %s %.1fs after its start",
                 p->generation, (int)p->pid, how, lived / 1e3);
        rollback_reload(why);
        return;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == WORKER_EXIT_FATAL) {
        log_error("worker pid %d %s: it cannot start; stopping", (int)p->pid, how);
        begin_stop(1);
        return;
    }
    if (p->position < 0)
        return;
    struct position *ps = &sup.pos[p->position];
    ps->streak =
        respawn_streak(ps->streak, lived, (int64_t)(sup.cfg->supervisor.crash_window * 1000));
    int64_t delay = respawn_delay_ms(ps->streak, sup.cfg->supervisor.crash_loop_limit,
                                     (int64_t)(sup.cfg->supervisor.backoff_max * 1000));
    if (delay < 0) {
        log_error("worker %d crashed %d times in a row, each within %.1fs of starting: crash "
                  "loop, giving up",
                  p->position, ps->streak, sup.cfg->supervisor.crash_window);
        begin_stop(1);
        return;
    }
    log_warn("worker pid %d (slot %d) %s after %.1fs; respawning in %lld ms", (int)p->pid, slot,
             how, lived / 1e3, (long long)delay);
    atomic_fetch_add(&sup.h->worker_restarts_total, 1);
    ps->spawn_at = now_ms() + delay;
}

/* ---- backups (a child process; the loop never waits for it) ---- */

/*
 * SIGNAL HANDLER (backup child). Async-signal-safe: only sets the flags that make the backup
 * stop at its next record, chunk or snapshot batch and remove its temporary files.
 */
static void on_backup_term(int sig)
{
    (void)sig;
    backup_cancel = 1;
    store_dump_cancel = 1;
}

/* In the backup child: runs the backup, writes the report into `wfd`, exits. */
static void backup_child(int wfd, const char *output)
{
    struct backup_report rep;
    struct sigaction sa;

    sigpipe_w = -1;
    close_inherited(wfd, wfd);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_backup_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    sigemptyset(&sa.sa_mask);
    sigprocmask(SIG_SETMASK, &sa.sa_mask, NULL); /* blocked since fork_blocked */
    log_set_role("backup");
    /* Behind the workers for CPU and disk: nice +10, idle I/O class (failures do not matter). */
    if (nice(10) < 0)
        log_debug("nice: %s", strerror(errno));
    syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, 3 << 13 /* IOPRIO_CLASS_IDLE */);
    memset(&rep, 0, sizeof(rep));
    rep.ok = backup_run(sup.cfg, output, &rep.res, rep.msg, sizeof(rep.msg)) == 0;
    ssize_t w = write(wfd, &rep, sizeof(rep));
    (void)w;
    log_flush();
    _exit(rep.ok ? 0 : 1);
}

/* Control command `backup [PATH]`: forks the child; the client gets its answer at the reap. */
static void backup_start(int cfd, const char *output)
{
    char msg[256];
    int p[2];

    if (sup.stopping || sup.bk.pid != 0) {
        snprintf(msg, sizeof(msg), "error: %s\n",
                 sup.stopping ? "the master is stopping" : "a backup is already running");
        control_reply(cfd, msg);
        return;
    }
    if (pipe2(p, O_CLOEXEC) < 0) {
        snprintf(msg, sizeof(msg), "error: pipe: %s\n", strerror(errno));
        control_reply(cfd, msg);
        return;
    }
    pid_t pid = fork_blocked();
    if (pid == 0)
        backup_child(p[1], output);
    close(p[1]);
    if (pid < 0) {
        snprintf(msg, sizeof(msg), "error: fork: %s\n", strerror(errno));
        control_reply(cfd, msg);
        close(p[0]);
        return;
    }
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    sup.bk = (struct backup_job){.pid = pid, .fd = p[0], .client = cfd};
    atomic_store(&sup.h->backup_running, 1);
    atomic_store(&sup.h->backup_last_attempt_ms, health_now_wall_ms());
    log_info("backup started in pid %d%s%s", (int)pid, output ? " into " : "",
             output ? output : "");
}

/* The backup child exited with status `st`: records the outcome and answers the client. */
static void backup_reaped(int st)
{
    struct backup_report rep;
    char line[6144], how[96];
    struct health *h = sup.h;
    size_t got = 0;

    memset(&rep, 0, sizeof(rep));
    while (got < sizeof(rep)) {
        ssize_t r = read(sup.bk.fd, (char *)&rep + got, sizeof(rep) - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    int ok = got == sizeof(rep) && rep.ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (ok) {
        backup_describe_result(&rep.res, line + 4, sizeof(line) - 4);
        memcpy(line, "ok: ", 4);
        atomic_store(&h->backup_last_success_ms, rep.res.finished_ms);
        atomic_store(&h->backup_last_size_bytes, rep.res.size);
        atomic_store(&h->backup_last_duration_ms, rep.res.duration_ms);
        atomic_fetch_add(&h->backup_success_total, 1);
        log_info("backup complete: %s", line + 4);
    } else {
        if (got != sizeof(rep)) {
            describe_exit(st, how, sizeof(how));
            snprintf(rep.msg, sizeof(rep.msg), "the backup process %s", how);
        } else {
            atomic_store(&h->backup_last_duration_ms, rep.res.duration_ms);
        }
        snprintf(line, sizeof(line), "error: %s", rep.msg);
        atomic_fetch_add(&h->backup_failures_total, 1);
        log_error("backup failed: %s", rep.msg);
    }
    atomic_store(&h->backup_last_failed, ok ? 0 : 1);
    atomic_store(&h->backup_running, 0);
    if (sup.bk.client >= 0) {
        strcat(line, "\n");
        control_reply(sup.bk.client, line);
    }
    close(sup.bk.fd);
    sup.bk = (struct backup_job){.fd = -1, .client = -1};
}

static void reap(void)
{
    int st;
    pid_t pid;
    struct rusage ru;

    while ((pid = wait4(-1, &st, WNOHANG, &ru)) > 0) {
        if (pid == sup.bk.pid) {
            atomic_fetch_add(&sup.h->children_cpu_us, health_rusage_us(&ru));
            backup_reaped(st);
            continue;
        }
        int slot = -1;
        for (int i = 0; i < HEALTH_SLOTS && slot < 0; i++)
            if (sup.procs[i].pid == pid)
                slot = i;
        if (slot < 0)
            continue; /* not ours: an orphan we adopted as PID 1 */
        struct proc p = sup.procs[slot];
        sup.procs[slot] = (struct proc){0};
        health_slot_cpu(sup.h, slot, health_rusage_us(&ru));
        health_slot_release(sup.h, slot);
        if (p.position >= 0 && sup.pos[p.position].slot == slot)
            sup.pos[p.position].slot = -1;
        if (p.retiring || sup.stopping) {
            char how[96];
            describe_exit(st, how, sizeof(how));
            log_debug("worker pid %d (generation %u) %s after draining", (int)pid, p.generation,
                      how);
            continue;
        }
        worker_died(&p, slot, st);
    }
}

static void signal_workers(int sig, int only_old)
{
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct proc *p = &sup.procs[i];
        if (p->pid == 0 || (only_old && p->generation == sup.generation))
            continue;
        kill(p->pid, sig);
        if (sig == SIGTERM && !p->retiring) {
            p->retiring = 1;
            p->term_ms = now_ms();
            p->position = -1;
        }
    }
}

static void watchdog(void)
{
    int64_t now = now_ms();
    int64_t timeout = (int64_t)(sup.cfg->supervisor.heartbeat_timeout * 1000);
    int64_t drain = (int64_t)(sup.cfg->supervisor.drain_timeout * 1000) + 5000;

    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct proc *p = &sup.procs[i];
        struct health_ident id;
        if (p->pid == 0 || p->killed)
            continue;
        health_slot_ident(sup.h, i, &id);
        if (respawn_heartbeat_stale(now, id.heartbeat_ms, timeout)) {
            log_warn("worker pid %d (slot %d) missed its heartbeat for %.1fs; killing it",
                     (int)p->pid, i, (now - id.heartbeat_ms) / 1e3);
        } else if (p->retiring && now - p->term_ms > drain) {
            log_warn("worker pid %d still draining after %.1fs; killing it", (int)p->pid,
                     (now - p->term_ms) / 1e3);
        } else {
            continue;
        }
        kill(p->pid, SIGKILL);
        p->killed = 1;
    }
}

static int generation_ready(void)
{
    for (int i = 0; i < sup.npos; i++) {
        struct health_ident id;
        if (sup.pos[i].slot < 0)
            return 0;
        health_slot_ident(sup.h, sup.pos[i].slot, &id);
        if (id.state != SLOT_READY)
            return 0;
    }
    return 1;
}

/* Facts of the serving configuration that status and /metrics show (after start, reload and
 * rollback). */
static void publish_config(void)
{
    int enc = backup_encrypted(sup.cfg);

    atomic_store(&sup.h->backup_encrypted, (unsigned)enc);
    if (!enc)
        log_warn("%s", BACKUP_UNENCRYPTED_WARNING);
}

static void start_generation(void)
{
    sup.generation = ++sup.last_generation;
    atomic_store(&sup.h->generation, sup.generation);
    publish_config();
    sup.npos = config_worker_count(sup.cfg);
    atomic_store(&sup.h->workers_wanted, (unsigned)sup.npos);
    for (int i = 0; i < sup.npos; i++) {
        sup.pos[i] = (struct position){.slot = -1, .spawn_at = -1};
        spawn(i);
    }
}

/* ---- reload ---- */

static void apply_log_config(const struct config *cfg)
{
    int lvl = log_level_parse(cfg->log.level);
    log_set_level(lvl < 0 ? LOG_INFO : (enum log_level)lvl);
    if (log_open(cfg->log.file) < 0)
        log_error("open log file %s: %s; logging to the previous target", cfg->log.file,
                  strerror(errno));
}

static int reload_listeners(const struct config *nc, struct listen_fd *np, struct listen_fd *na,
                            char *err, size_t errlen)
{
    *np = (struct listen_fd){.fd = -1};
    *na = (struct listen_fd){.fd = -1};
    if (!listen_same(&sup.pub, nc->listen.address, nc->listen.port) &&
        listen_open(np, nc->listen.address, nc->listen.port, nc->listen.backlog, err, errlen) < 0)
        return -1;
    if (!listen_same(&sup.admin, nc->admin.address, nc->admin.port) &&
        listen_open(na, nc->admin.address, nc->admin.port, nc->listen.backlog, err, errlen) < 0) {
        listen_close(np);
        return -1;
    }
    return 0;
}

/* Validates the configuration file again and starts a new generation on it. */
static int reload(char *msg, size_t msglen)
{
    char *errors = NULL, tlserr[512];
    struct listen_fd np, na;
    SSL_CTX *nssl = NULL;
    struct auth *nauth = NULL;

    if (sup.stopping) {
        snprintf(msg, msglen, "error: the master is stopping\n");
        return -1;
    }
    if (sup.reload_waiting) {
        sup.reload_again = 1;
        snprintf(msg, msglen, "ok: queued behind the reload in progress\n");
        return 0;
    }
    struct config *nc = config_load(sup.config_path, &errors);
    if (nc != NULL) {
        nssl =
            tls_context_new(nc->listen.tls_certificate, nc->listen.tls_key, tlserr, sizeof(tlserr));
        if (nssl == NULL)
            errors = strdup(tlserr);
    }
    if (nssl != NULL && (nauth = auth_new(nc, tlserr, sizeof(tlserr))) == NULL) {
        errors = strdup(tlserr);
        SSL_CTX_free(nssl);
        nssl = NULL;
    }
    if (nssl != NULL && reload_listeners(nc, &np, &na, tlserr, sizeof(tlserr)) < 0) {
        errors = strdup(tlserr);
        SSL_CTX_free(nssl);
        nssl = NULL;
        auth_free(nauth);
    }
    if (nssl == NULL) {
        config_free(nc);
        atomic_fetch_add(&sup.h->reload_failures_total, 1);
        log_error("reload refused, still serving the previous configuration: %s",
                  errors ? errors : "unknown error");
        snprintf(msg, msglen, "error: reload refused: %s\n", errors ? errors : "unknown error");
        free(errors);
        return -1;
    }
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
               (unsigned long long)now_ms() * 1000ULL);
    /* Keep what this reload replaces until the new generation is ready (rollback_reload). */
    sup.prev = (struct prev_state){.valid = 1,
                                   .cfg = sup.cfg,
                                   .ssl = sup.ssl,
                                   .auth = sup.auth,
                                   .pub = {.fd = -1},
                                   .admin = {.fd = -1},
                                   .npos = sup.npos,
                                   .generation = sup.generation};
    memcpy(sup.prev.pos, sup.pos, sizeof(sup.pos));
    if (np.fd >= 0) {
        sup.prev.pub = sup.pub;
        sup.pub = np;
    }
    if (na.fd >= 0) {
        sup.prev.admin = sup.admin;
        sup.admin = na;
    }
    if (strcmp(nc->pid_file, sup.pid_path) || strcmp(nc->control_socket, sup.ctl_path))
        log_warn("pid_file and control_socket changes take effect at the next start; "
                 "still using %s and %s",
                 sup.pid_path, sup.ctl_path);
    sup.cfg = nc;
    sup.ssl = nssl;
    sup.auth = nauth;
    apply_log_config(nc);
    for (int i = 0; i < HEALTH_SLOTS; i++)
        sup.procs[i].position = -1; /* the running generation is now the old one */
    malloc_trim(0); /* as at start: the new auth context's argon2id scratch memory */
    start_generation();
    sup.reload_waiting = 1;
    atomic_fetch_add(&sup.h->reloads_total, 1);
    log_info("reloading: generation %u starting %d workers", sup.generation, sup.npos);
    snprintf(msg, msglen, "ok: generation %u starting\n", sup.generation);
    return 0;
}

/* Frees what a reload replaced (it completed, or the master stops). */
static void prev_free(void)
{
    if (!sup.prev.valid)
        return;
    config_free(sup.prev.cfg);
    SSL_CTX_free(sup.prev.ssl);
    auth_free(sup.prev.auth);
    listen_close(&sup.prev.pub);
    listen_close(&sup.prev.admin);
    sup.prev.valid = 0;
}

/*
 * A reload's new generation cannot start (a worker exited with the fatal status or crashed
 * within supervisor.crash_window): retire it and go back to the configuration, listeners and
 * workers it was meant to replace, which never stopped serving. Old workers that died during
 * the attempt are respawned on the old configuration.
 */
static void rollback_reload(const char *why)
{
    unsigned failed = sup.generation;

    log_error("reload failed: %s; rolling back to generation %u and its configuration", why,
              sup.prev.generation);
    atomic_fetch_add(&sup.h->reload_failures_total, 1);
    for (int i = 0; i < HEALTH_SLOTS; i++) {
        struct proc *p = &sup.procs[i];
        if (p->pid == 0 || p->generation != failed || p->retiring)
            continue;
        kill(p->pid, SIGTERM);
        p->retiring = 1;
        p->term_ms = now_ms();
        p->position = -1;
    }
    config_free(sup.cfg);
    SSL_CTX_free(sup.ssl);
    auth_free(sup.auth);
    sup.cfg = sup.prev.cfg;
    sup.ssl = sup.prev.ssl;
    sup.auth = sup.prev.auth;
    if (sup.prev.pub.fd >= 0) {
        listen_close(&sup.pub);
        sup.pub = sup.prev.pub;
    }
    if (sup.prev.admin.fd >= 0) {
        listen_close(&sup.admin);
        sup.admin = sup.prev.admin;
    }
    sup.prev.valid = 0;
    sup.generation = sup.prev.generation;
    sup.npos = sup.prev.npos;
    memcpy(sup.pos, sup.prev.pos, sizeof(sup.pos));
    atomic_store(&sup.h->generation, sup.generation);
    atomic_store(&sup.h->workers_wanted, (unsigned)sup.npos);
    publish_config();
    for (int i = 0; i < sup.npos; i++) {
        struct position *ps = &sup.pos[i];
        struct proc *p = ps->slot >= 0 ? &sup.procs[ps->slot] : NULL;
        if (p != NULL && p->pid != 0 && p->generation == sup.generation && !p->retiring) {
            p->position = i;
        } else {
            ps->slot = -1;
            ps->spawn_at = now_ms();
        }
    }
    apply_log_config(sup.cfg);
    sup.reload_waiting = 0;
    sup.reload_again = 0;
    sd_notifyf(0, "READY=1\nSTATUS=serving, generation %u (reload to %u rolled back)",
               sup.generation, failed);
}

static void finish_reload_if_ready(void)
{
    if (!sup.reload_waiting || !generation_ready())
        return;
    signal_workers(SIGTERM, 1);
    prev_free();
    sup.reload_waiting = 0;
    sd_notifyf(0, "READY=1\nSTATUS=serving, generation %u", sup.generation);
    log_info("reload complete: generation %u serving, older workers draining", sup.generation);
    if (sup.reload_again) {
        char msg[256];
        sup.reload_again = 0;
        reload(msg, sizeof(msg));
    }
}

/* ---- stop ---- */

static void begin_stop(int code)
{
    if (sup.stopping)
        return;
    sup.stopping = 1;
    sup.exit_code = code;
    sup.stop_deadline = now_ms() + (int64_t)(sup.cfg->supervisor.drain_timeout * 1000) + 2000;
    sd_notify(0, "STOPPING=1");
    log_info("stopping: draining workers (drain timeout %.1fs)", sup.cfg->supervisor.drain_timeout);
    listen_close(&sup.pub);
    listen_close(&sup.admin);
    for (int i = 0; i < sup.npos; i++)
        sup.pos[i].spawn_at = -1;
    signal_workers(SIGTERM, 0);
    if (sup.bk.pid != 0) {
        log_warn("stopping: cancelling the backup in pid %d", (int)sup.bk.pid);
        kill(sup.bk.pid, SIGTERM);
    }
}

/* Children still running: workers and the backup child. */
static int live_procs(void)
{
    int n = sup.bk.pid != 0;
    for (int i = 0; i < HEALTH_SLOTS; i++)
        n += sup.procs[i].pid != 0;
    return n;
}

/* ---- control socket ---- */

static void serve_control(void)
{
    char cmd[4352], msg[8192];
    int cfd = control_accept(sup.ctlfd, cmd, sizeof(cmd));

    if (cfd < 0)
        return;
    if (!strcmp(cmd, "ping")) {
        control_reply(cfd, "ok\n");
    } else if (!strcmp(cmd, "status") || !strcmp(cmd, "status json")) {
        char *text = NULL;
        if (!strcmp(cmd, "status")) {
            text = metrics_status_text(sup.h);
        } else {
            json_t *j = metrics_status_json(sup.h);
            text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
            json_decref(j);
        }
        control_reply(cfd, text ? text : "error: out of memory\n");
        free(text);
    } else if (!strcmp(cmd, "reload")) {
        reload(msg, sizeof(msg));
        control_reply(cfd, msg);
    } else if (!strcmp(cmd, "backup") || !strncmp(cmd, "backup /", 8)) {
        backup_start(cfd, cmd[6] != '\0' ? cmd + 7 : NULL);
    } else if (!strcmp(cmd, "stop")) {
        snprintf(msg, sizeof(msg), "ok: stopping pid %d\n", (int)getpid());
        control_reply(cfd, msg);
        begin_stop(0);
    } else {
        control_reply(cfd, "error: unknown command (ping, status, status json, reload, stop, "
                           "backup [/PATH])\n");
    }
}

/* ---- loop ---- */

static void handle_flags(void)
{
    char msg[8192];

    if (got_chld) {
        got_chld = 0;
        reap();
    }
    if (got_term) {
        got_term = 0;
        begin_stop(0);
    }
    if (got_hup) {
        got_hup = 0;
        reload(msg, sizeof(msg));
    }
    if (got_usr1) {
        got_usr1 = 0;
        if (log_reopen() < 0)
            log_error("reopen %s: %s", sup.cfg->log.file, strerror(errno));
        signal_workers(SIGUSR1, 0);
        log_info("log files reopened");
    }
}

static void tick(void)
{
    int64_t now = now_ms();

    reap(); /* also catches exits whose SIGCHLD coalesced */
    for (int i = 0; i < sup.npos && !sup.stopping; i++)
        if (sup.pos[i].slot < 0 && sup.pos[i].spawn_at >= 0 && sup.pos[i].spawn_at <= now)
            spawn(i);
    watchdog();
    finish_reload_if_ready();
    if (!sup.ready_notified && generation_ready()) {
        sup.ready_notified = 1;
        sd_notifyf(0, "READY=1\nSTATUS=serving, generation %u\nMAINPID=%d", sup.generation,
                   (int)getpid());
        log_info("ready: %d workers serving https://%s:%d, admin on http://%s:%d", sup.npos,
                 sup.cfg->listen.address, sup.cfg->listen.port, sup.cfg->admin.address,
                 sup.cfg->admin.port);
    }
    if (sup.stopping && now > sup.stop_deadline && live_procs() > 0) {
        log_warn("drain timeout: killing %d worker(s)", live_procs());
        signal_workers(SIGKILL, 0);
        if (sup.bk.pid != 0)
            kill(sup.bk.pid, SIGKILL);
        sup.stop_deadline = now + 1000;
    }
    if (now - sup.last_rss_ms >= 1000) {
        sup.last_rss_ms = now;
        atomic_store(&sup.h->master_rss_bytes, health_self_rss());
        atomic_store(&sup.h->master_cpu_us, health_self_cpu_us());
    }
    if (sup.watchdog_usec > 0 && (uint64_t)(now - sup.last_wd_ms) * 1000 >= sup.watchdog_usec / 2) {
        sup.last_wd_ms = now;
        sd_notify(0, "WATCHDOG=1");
    }
}

static void loop(void)
{
    while (!sup.stopping || live_procs() > 0) {
        struct pollfd pfd[2] = {{.fd = sup.sigpipe[0], .events = POLLIN},
                                {.fd = sup.ctlfd, .events = POLLIN}};
        int n = poll(pfd, 2, TICK_MS);
        if (n > 0 && (pfd[0].revents & POLLIN)) {
            char buf[64];
            while (read(sup.sigpipe[0], buf, sizeof(buf)) > 0)
                ;
        }
        handle_flags();
        if (n > 0 && (pfd[1].revents & POLLIN))
            serve_control();
        tick();
    }
}

static int start(char *err, size_t errlen)
{
    sup.pidfd = pidfile_acquire(sup.cfg->pid_file, err, errlen);
    if (sup.pidfd < 0)
        return -1;
    sup.pid_path = strdup(sup.cfg->pid_file);
    sup.ctlfd = control_listen(sup.cfg->control_socket, err, errlen);
    if (sup.ctlfd < 0)
        return -1;
    sup.ctl_path = strdup(sup.cfg->control_socket);
    sup.ssl =
        tls_context_new(sup.cfg->listen.tls_certificate, sup.cfg->listen.tls_key, err, errlen);
    if (sup.ssl == NULL)
        return -1;
    if ((sup.auth = auth_new(sup.cfg, err, errlen)) == NULL)
        return -1;
    /* The dummy argon2id hash freed ~19 MiB that glibc keeps: return it before forking, or
     * every worker starts with it resident. */
    malloc_trim(0);
    if (listen_open(&sup.pub, sup.cfg->listen.address, sup.cfg->listen.port,
                    sup.cfg->listen.backlog, err, errlen) < 0 ||
        listen_open(&sup.admin, sup.cfg->admin.address, sup.cfg->admin.port,
                    sup.cfg->listen.backlog, err, errlen) < 0)
        return -1;
    if ((sup.h = health_create()) == NULL) {
        snprintf(err, errlen, "mmap health segment: %s", strerror(errno));
        return -1;
    }
    int64_t last_ms, last_size;
    if (backup_newest(sup.cfg->backup.directory, &last_ms, &last_size) == 0) {
        atomic_store(&sup.h->backup_last_success_ms, last_ms);
        atomic_store(&sup.h->backup_last_size_bytes, last_size);
    }
    if (ratelimit_shm_setup(sup.cfg, err, errlen) < 0) /* inherited by every generation */
        return -1;
    if (install_signals() < 0) {
        snprintf(err, errlen, "signals: %s", strerror(errno));
        return -1;
    }
    if (sd_watchdog_enabled(0, &sup.watchdog_usec) <= 0)
        sup.watchdog_usec = 0;
    return 0;
}

int supervisor_run(const char *config_path, struct config *cfg)
{
    char err[1024];

    sup.config_path = config_path ? strdup(config_path) : NULL;
    sup.cfg = cfg;
    sup.pidfd = sup.ctlfd = -1;
    sup.bk = (struct backup_job){.fd = -1, .client = -1};
    sup.pub.fd = sup.admin.fd = -1;
    sup.sigpipe[0] = sup.sigpipe[1] = -1;
    log_set_role("master");
    apply_log_config(cfg);
    if (start(err, sizeof(err)) < 0) {
        log_error("cannot start: %s", err);
        sup.exit_code = 1;
        goto out;
    }
    log_info("authd %s master pid %d starting %d workers", PACKAGE_VERSION, (int)getpid(),
             config_worker_count(cfg));
    start_generation();
    loop();
    log_info("stopped");
out:
    if (sup.ctlfd >= 0) {
        close(sup.ctlfd);
        unlink(sup.ctl_path);
    }
    if (sup.pidfd >= 0)
        pidfile_release(sup.pid_path, sup.pidfd);
    free(sup.pid_path);
    free(sup.ctl_path);
    listen_close(&sup.pub);
    listen_close(&sup.admin);
    for (int i = 0; i < 2; i++)
        if (sup.sigpipe[i] >= 0)
            close(sup.sigpipe[i]);
    health_destroy(sup.h);
    ratelimit_shm_cleanup();
    prev_free();
    SSL_CTX_free(sup.ssl);
    auth_free(sup.auth);
    config_free(sup.cfg);
    free(sup.config_path);
    log_flush();
    return sup.exit_code;
}
