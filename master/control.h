/*
 * control: the master's unix control socket and the CLI side of it.
 *
 * Protocol: the client sends one command line ("status", "status json", "reload", "stop",
 * "ping", "backup [/ABSOLUTE/DIR]"); the master writes its answer and closes. "backup" is
 * answered only when the backup child it forks has been reaped (the client waits; the master's
 * loop does not). An answer that starts with "error:" means the command failed. The socket is
 * created with umask 077: only the master's user may steer it.
 */
#ifndef AUTHD_CONTROL_H
#define AUTHD_CONTROL_H

#include <stddef.h>

/* Binds `path`, replacing a stale socket but refusing one a live master answers on. */
int control_listen(const char *path, char *err, size_t errlen);

/* Accepts one client and reads its command (1 s limit). Returns the client fd or -1. */
int control_accept(int lfd, char *cmd, size_t cmdlen);

/* Writes `text` to the client and closes it. */
void control_reply(int cfd, const char *text);

/* CLI: sends `cmd` and returns the malloc'd answer, or NULL with errno when nobody listens. */
char *control_request(const char *path, const char *cmd, double timeout_s);

#endif
