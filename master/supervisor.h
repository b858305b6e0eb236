/*
 * supervisor: the master process. It binds the listeners, maps the health segment, forks the
 * workers and then only supervises: reaps and respawns them (back-off, crash-loop stop), kills
 * those whose heartbeat stops, reloads on SIGHUP with a new worker generation, drains on
 * SIGTERM/SIGINT, and answers the control socket. It never serves a request.
 */
#ifndef AUTHD_SUPERVISOR_H
#define AUTHD_SUPERVISOR_H

#include "shared/config.h"

/*
 * Runs the master in the foreground until it stops. Takes ownership of `cfg`; `config_path` is
 * re-read on reload (NULL: defaults and environment only). Returns the process exit status.
 */
int supervisor_run(const char *config_path, struct config *cfg);

#endif
