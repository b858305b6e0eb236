/*
 * testhook: the test builds' hooks (see testhook.h for the switches and who uses them). This
 * file is compiled only with --enable-test-hooks.
 */
#include "shared/testhook.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/log.h"

#define HOLD_POLL_US 20000

static char *hold_path;  /* AUTHD_TEST_HOLD_READY */
static char *clock_path; /* AUTHD_TEST_CLOCK_FILE */

static struct {
    struct event *ev;
    void (*ready)(void *);
    void *arg;
} hold;

static char *env_path(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? strdup(v) : NULL;
}

void testhook_init(void)
{
    hold_path = env_path("AUTHD_TEST_HOLD_READY");
    clock_path = env_path("AUTHD_TEST_CLOCK_FILE");
}

static int hold_file_missing(void)
{
    return hold_path != NULL && access(hold_path, F_OK) < 0;
}

static void on_hold_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (hold_file_missing())
        return;
    log_info("test hook: %s exists, reporting ready", hold_path);
    testhook_hold_free();
    hold.ready(hold.arg);
}

int testhook_hold_ready(struct event_base *base, void (*ready)(void *), void *arg)
{
    struct timeval tv = {0, HOLD_POLL_US};

    if (!hold_file_missing())
        return 0;
    hold.ready = ready;
    hold.arg = arg;
    hold.ev = event_new(base, -1, EV_PERSIST, on_hold_poll, NULL);
    if (hold.ev == NULL || event_add(hold.ev, &tv) < 0) {
        log_error("test hook: cannot poll %s; reporting ready now", hold_path);
        testhook_hold_free();
        return 0;
    }
    log_info("test hook: holding the ready report until %s exists", hold_path);
    return 1;
}

void testhook_hold_free(void)
{
    if (hold.ev != NULL)
        event_free(hold.ev);
    hold.ev = NULL;
}

int64_t testhook_token_clock(int64_t real_now)
{
    char buf[32];

    if (clock_path == NULL)
        return real_now;
    int fd = open(clock_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return real_now;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return real_now;
    buf[n] = '\0';
    char *end;
    errno = 0;
    long long t = strtoll(buf, &end, 10);
    if (errno != 0 || end == buf || (*end != '\0' && *end != '\n')) {
        log_warn("test hook: %s does not hold a Unix time; using the real clock", clock_path);
        return real_now;
    }
    return (int64_t)t;
}
