/*
 * pidfile: the master's PID file, held with an exclusive flock(2) for the master's lifetime so
 * a second instance is refused while the first lives, and a stale file left by a crash is
 * simply taken over.
 */
#ifndef AUTHD_PIDFILE_H
#define AUTHD_PIDFILE_H

#include <stddef.h>
#include <sys/types.h>

/* Locks `path` and writes our pid. Returns the fd to keep open, or -1 with a message in err. */
int pidfile_acquire(const char *path, char *err, size_t errlen);
void pidfile_release(const char *path, int fd);
/* The pid written in `path` if a process still holds its lock, else 0. */
pid_t pidfile_owner(const char *path);

/* Creates the parent directory of `path` when missing (mode 0750). Returns 0 or -1 (errno). */
int pidfile_make_parent(const char *path);

#endif
