/*
 * log: JSON-lines logging for the master and the workers.
 *
 * Every line is one JSON object written with a single write(2), so lines from many processes
 * sharing one file or pipe never interleave. Access-log lines are buffered per process and
 * flushed by log_flush() (on a timer and at exit); everything else is written at once.
 */
#ifndef AUTHD_LOG_H
#define AUTHD_LOG_H

#include <jansson.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERROR };

/* Sets the role ("master", "worker", "cli") written in every line. */
void log_set_role(const char *role);
/* Parses "debug".."error"; returns -1 for an unknown name. */
int log_level_parse(const char *name);
void log_set_level(enum log_level level);

/*
 * Points logging at `file` (NULL or "": stderr). The file is opened O_APPEND and dup2()ed
 * onto stderr, so children inherit it. Returns 0, or -1 with errno set (logging unchanged).
 */
int log_open(const char *file);
/* Re-opens the current log file (SIGUSR1, after logrotate moved it). */
int log_reopen(void);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/*
 * Writes `fields` (an object; stolen) as one line, with ts/level/pid/role added. When
 * `buffered`, the line waits in the process's buffer until log_flush() or the buffer fills.
 */
void log_json(enum log_level level, json_t *fields, int buffered);
void log_flush(void);

/*
 * The access log's fast path: `members` is the inside of a JSON object ("k":v,...) whose
 * client-controlled strings the caller has already encoded with jansson. Buffered.
 */
void log_access(const char *members, size_t len);

#endif
