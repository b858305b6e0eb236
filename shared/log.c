/*
 * log: JSON-lines logging (see log.h). Lines are built with jansson so every string a client
 * controls is escaped by the library, never by hand.
 */
#include "shared/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096 /* PIPE_BUF: one write of a whole line is atomic on pipes */
#define BUF_BYTES      (16 * 1024)

static const char *const level_names[] = {"debug", "info", "warning", "error"};
static enum log_level min_level = LOG_INFO;
static const char *role = "authd";
static int cached_pid; /* set by log_set_role, which every process calls after it forks */
static char *log_path;
static int saved_stderr = -1; /* the original stderr, to return to when log.file is emptied */
static char buf[BUF_BYTES];
static size_t buf_len;
/* Offload threads log too (audit events): the buffer and the writes are serialized. */
static pthread_mutex_t buf_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_role(const char *r)
{
    role = r;
    cached_pid = (int)getpid();
}

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, level_names[i]))
            return i;
    return -1;
}

void log_set_level(enum log_level level)
{
    min_level = level;
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere left to report it */
        p += w;
        n -= (size_t)w;
    }
}

static void flush_locked(void)
{
    /* Write in chunks of whole lines no larger than PIPE_BUF. */
    size_t off = 0;
    while (off < buf_len) {
        size_t end = off;
        while (end < buf_len) {
            char *nl = memchr(buf + end, '\n', buf_len - end);
            size_t next = nl ? (size_t)(nl - buf) + 1 : buf_len;
            if (next - off > LINE_MAX_BYTES && end > off)
                break;
            end = next;
        }
        write_all(buf + off, end - off);
        off = end;
    }
    buf_len = 0;
}

void log_flush(void)
{
    pthread_mutex_lock(&buf_lock);
    flush_locked();
    pthread_mutex_unlock(&buf_lock);
}

int log_open(const char *file)
{
    if (file == NULL || file[0] == '\0') {
        if (log_path != NULL && saved_stderr >= 0) {
            log_flush();
            dup2(saved_stderr, STDERR_FILENO);
        }
        free(log_path);
        log_path = NULL;
        return 0;
    }
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    if (saved_stderr < 0)
        saved_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    log_flush();
    if (dup2(fd, STDERR_FILENO) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    close(fd);
    if (log_path == NULL || strcmp(log_path, file) != 0) {
        free(log_path);
        log_path = strdup(file);
    }
    return 0;
}

int log_reopen(void)
{
    if (log_path == NULL)
        return 0;
    char *p = strdup(log_path);
    int r = p ? log_open(p) : -1;
    free(p);
    return r;
}

/*
 * Writes the start of a line, {"ts":...,"level":...,"pid":...,"role":...  (no closing brace).
 * The date part is formatted once per second per thread.
 */
static int envelope(enum log_level level, char *out, size_t n)
{
    static __thread time_t stamp_sec = -1;
    static __thread char stamp[32];
    struct timeval tv;

    gettimeofday(&tv, NULL);
    if (tv.tv_sec != stamp_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        stamp_sec = tv.tv_sec;
    }
    return snprintf(out, n, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"pid\":%d,\"role\":\"%s\"",
                    stamp, (long)tv.tv_usec / 1000, level_names[level],
                    cached_pid ? cached_pid : (int)getpid(), role);
}

static void emit(const char *line, size_t n, int buffered)
{
    pthread_mutex_lock(&buf_lock);
    if (!buffered) {
        flush_locked();
        write_all(line, n);
    } else {
        if (buf_len + n > sizeof(buf))
            flush_locked();
        memcpy(buf + buf_len, line, n);
        buf_len += n;
    }
    pthread_mutex_unlock(&buf_lock);
}

void log_json(enum log_level level, json_t *fields, int buffered)
{
    char line[LINE_MAX_BYTES];

    if (level < min_level || fields == NULL) {
        json_decref(fields);
        return;
    }
    size_t n = (size_t)envelope(level, line, sizeof(line));
    /* The fields object, dumped after the envelope with its opening brace replaced by a comma. */
    size_t f = json_dumpb(fields, line + n, sizeof(line) - n - 1,
                          JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(fields);
    if (f < 2 || n + f >= sizeof(line) - 1)
        return;   /* cannot be encoded whole: a truncated JSON line would be worse */
    if (f == 2) { /* {} */
        line[n++] = '}';
    } else {
        line[n] = ',';
        n += f;
    }
    line[n++] = '\n';
    emit(line, n, buffered);
}

void log_access(const char *members, size_t len)
{
    char line[LINE_MAX_BYTES];

    if (LOG_INFO < min_level)
        return;
    size_t n = (size_t)envelope(LOG_INFO, line, sizeof(line));
    if (n + len + 3 > sizeof(line))
        return;
    line[n++] = ',';
    memcpy(line + n, members, len);
    n += len;
    line[n++] = '}';
    line[n++] = '\n';
    emit(line, n, 1);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;

    if (level < min_level)
        return;
    int saved = errno;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_json(level, json_pack("{s:s}", "msg", msg), 0);
    errno = saved;
}
