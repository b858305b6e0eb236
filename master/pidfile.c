/* pidfile: locked PID file (see pidfile.h). */
#include "master/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int pidfile_make_parent(const char *path)
{
    char copy[PATH_MAX];

    snprintf(copy, sizeof(copy), "%s", path);
    char *dir = dirname(copy);
    if (mkdir(dir, 0750) == 0 || errno == EEXIST)
        return 0;
    return -1;
}

static pid_t read_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return (pid_t)strtol(buf, NULL, 10);
}

int pidfile_acquire(const char *path, char *err, size_t errlen)
{
    char buf[32];

    if (pidfile_make_parent(path) < 0) {
        snprintf(err, errlen, "mkdir for %s: %s", path, strerror(errno));
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "open(%s): %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        pid_t other = read_pid(fd);
        if (e == EWOULDBLOCK)
            snprintf(err, errlen, "another authd (pid %d) is running: it holds %s", (int)other,
                     path);
        else
            snprintf(err, errlen, "flock(%s): %s", path, strerror(e));
        close(fd);
        return -1;
    }
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        snprintf(err, errlen, "write(%s): %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

void pidfile_release(const char *path, int fd)
{
    if (fd < 0)
        return;
    unlink(path);
    close(fd);
}

pid_t pidfile_owner(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    pid_t pid = 0;

    if (fd < 0)
        return 0;
    if (flock(fd, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK)
        pid = read_pid(fd);
    close(fd);
    return pid;
}
