/* control: unix control socket (see control.h). */
#include "master/control.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "master/pidfile.h"

static int fill_addr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa->sun_path, path);
    return 0;
}

int control_listen(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    int fd = -1;

    if (fill_addr(&sa, path) < 0 || pidfile_make_parent(path) < 0)
        goto fail;
    char *answer = control_request(path, "ping", 1.0);
    if (answer != NULL) {
        free(answer);
        snprintf(err, errlen, "another authd answers on control socket %s", path);
        return -1;
    }
    unlink(path); /* stale: nobody answered */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto fail;
    mode_t old = umask(0077);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (r < 0 || listen(fd, 16) < 0)
        goto fail;
    return fd;
fail:
    snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

int control_accept(int lfd, char *cmd, size_t cmdlen)
{
    struct timeval tv = {1, 0};
    size_t n = 0;

    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0)
        return -1;
    setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    while (n + 1 < cmdlen) {
        ssize_t r = read(cfd, cmd + n, cmdlen - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (memchr(cmd, '\n', n))
            break;
    }
    cmd[n] = '\0';
    cmd[strcspn(cmd, "\r\n")] = '\0';
    return cfd;
}

void control_reply(int cfd, const char *text)
{
    size_t len = strlen(text), off = 0;

    while (off < len) {
        ssize_t w = write(cfd, text + off, len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(cfd);
}

char *control_request(const char *path, const char *cmd, double timeout_s)
{
    struct sockaddr_un sa;
    struct timeval tv = {(time_t)timeout_s, (suseconds_t)((timeout_s - (time_t)timeout_s) * 1e6)};
    char *out = NULL;
    size_t len = 0;

    if (fill_addr(&sa, path) < 0)
        return NULL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || write(fd, cmd, strlen(cmd)) < 0 ||
        write(fd, "\n", 1) < 0)
        goto fail;
    for (;;) {
        char buf[4096];
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r < 0)
            goto fail;
        if (r == 0)
            break;
        char *nb = realloc(out, len + (size_t)r + 1);
        if (nb == NULL)
            goto fail;
        out = nb;
        memcpy(out + len, buf, (size_t)r);
        len += (size_t)r;
    }
    close(fd);
    if (out == NULL)
        out = calloc(1, 1);
    else
        out[len] = '\0';
    return out;
fail : {
    int e = errno;
    close(fd);
    free(out);
    errno = e;
}
    return NULL;
}
