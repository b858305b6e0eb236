/*
 * store_sqlite: the "sqlite" store driver (see store.h and store_sqlite.h).
 *
 * A connection prepares every statement once at open and resets each one right after use, so no
 * connection keeps a read snapshot between calls. Changes that span several rows run in
 * BEGIN IMMEDIATE transactions: the write lock is taken before anything is read, so concurrent
 * writers (other processes, other threads' connections) queue on the lock for up to
 * BUSY_TIMEOUT_MS instead of acting on a stale read. The file and its -wal/-shm companions are
 * created mode 0600.
 */
#include "shared/store_sqlite.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "shared/email.h"
#include "shared/error.h"
#include "shared/log.h"

#define BUSY_TIMEOUT_MS 5000
#define OPEN_FLAGS                                                                                 \
    (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE)
#define NO_LIMIT       ((size_t)1 << 30)
#define AUDIT_TEXT_MAX 1024 /* event, result, user_id, request_id, detail */

/*
 * When a session ended: the earliest of its revocation, idle expiry and absolute expiry. The
 * prune statements must spell it exactly so, for SQLite to use the index on this expression.
 */
#define SESSION_ENDED_AT "min(idle_expires_at, expires_at, coalesce(revoked_at, expires_at))"

/* Migration i takes a file from user_version i to i + 1. Never edit one that has shipped. */
static const char *const migrations[] = {
    /* 1: users, sessions (refresh-token families), refresh-token hashes, audit events */
    "CREATE TABLE users ("
    " id TEXT PRIMARY KEY,"
    " email TEXT UNIQUE NOT NULL,"
    " email_verified INTEGER NOT NULL DEFAULT 0,"
    " password_hash TEXT,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL);"
    "CREATE TABLE sessions ("
    " id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
    " created_at INTEGER NOT NULL,"
    " last_used_at INTEGER NOT NULL,"
    " idle_expires_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " revoked_at INTEGER,"
    " revoke_reason TEXT,"
    " ip TEXT,"
    " user_agent TEXT);"
    "CREATE INDEX sessions_user_id ON sessions(user_id);"
    "CREATE TABLE refresh_tokens ("
    " hash BLOB PRIMARY KEY CHECK (length(hash) = 32),"
    " session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,"
    " state TEXT NOT NULL CHECK (state IN ('current', 'rotated')),"
    " created_at INTEGER NOT NULL,"
    " rotated_at INTEGER);"
    "CREATE INDEX refresh_tokens_session_id ON refresh_tokens(session_id);"
    "CREATE TABLE audit_events ("
    " id INTEGER PRIMARY KEY,"
    " at INTEGER NOT NULL,"
    " event TEXT NOT NULL,"
    " result TEXT NOT NULL,"
    " user_id TEXT,"
    " ip TEXT,"
    " user_agent TEXT,"
    " request_id TEXT,"
    " detail TEXT);"
    "CREATE INDEX audit_events_user_at ON audit_events(user_id, at);",
    /* 2: emails in today's normalized form (no SQL: emails_renormalize runs after it) */
    "",
    /* 3: retention (sqlite_prune_*): ended sessions and old audit events by time */
    "CREATE INDEX sessions_ended_at ON sessions(" SESSION_ENDED_AT ");"
    "CREATE INDEX audit_events_at ON audit_events(at);",
};
#define MIGRATION_EMAILS 2

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == STORE_SQLITE_SCHEMA_VERSION,
               "STORE_SQLITE_SCHEMA_VERSION must equal the number of migrations");

/* Read by row_session(): 8 columns, then whether the session is revoked. */
#define SESSION_COLS                                                                               \
    "s.id, s.user_id, s.created_at, s.last_used_at, s.idle_expires_at, s.expires_at, s.ip, "       \
    "s.user_agent, s.revoked_at IS NOT NULL"
#define USER_COLS "id, email, email_verified, password_hash, created_at"

enum stmt {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_PING,
    S_USER_INSERT,
    S_USER_BY_EMAIL,
    S_USER_BY_ID,
    S_USER_SET_PASSWORD,
    S_SESSION_INSERT,
    S_SESSION_GET,
    S_SESSION_TOUCH,
    S_SESSION_MARK_REVOKED,
    S_SESSION_REVOKE,
    S_SESSION_REVOKE_OTHERS,
    S_SESSION_LIST,
    S_TOKEN_INSERT,
    S_TOKEN_LOOKUP,
    S_TOKEN_ROTATE,
    S_AUDIT_INSERT,
    S_COUNT
};

static const struct {
    const char *name; /* for log lines */
    const char *sql;
} sql_defs[S_COUNT] = {
    [S_BEGIN] = {"begin", "BEGIN IMMEDIATE"},
    [S_COMMIT] = {"commit", "COMMIT"},
    [S_ROLLBACK] = {"rollback", "ROLLBACK"},
    [S_PING] = {"ping", "SELECT 1 FROM sqlite_master LIMIT 1"},
    [S_USER_INSERT] = {"user_insert",
                       "INSERT INTO users (id, email, email_verified, password_hash, created_at,"
                       " updated_at) VALUES (?1, ?2, 0, ?3, ?4, ?4)"},
    [S_USER_BY_EMAIL] = {"user_by_email", "SELECT " USER_COLS " FROM users WHERE email = ?1"},
    [S_USER_BY_ID] = {"user_by_id", "SELECT " USER_COLS " FROM users WHERE id = ?1"},
    [S_USER_SET_PASSWORD] = {"user_set_password",
                             "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1"},
    [S_SESSION_INSERT] = {"session_insert",
                          "INSERT INTO sessions (id, user_id, created_at, last_used_at,"
                          " idle_expires_at, expires_at, ip, user_agent)"
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"},
    [S_SESSION_GET] = {"session_get", "SELECT " SESSION_COLS " FROM sessions s WHERE s.id = ?1"},
    [S_SESSION_TOUCH] = {"session_touch", "UPDATE sessions SET last_used_at = ?2,"
                                          " idle_expires_at = ?3 WHERE id = ?1"},
    [S_SESSION_MARK_REVOKED] = {"session_mark_revoked",
                                "UPDATE sessions SET revoked_at = ?2, revoke_reason = ?3"
                                " WHERE id = ?1 AND revoked_at IS NULL"},
    [S_SESSION_REVOKE] = {"session_revoke",
                          "UPDATE sessions SET revoked_at = ?3, revoke_reason = 'revoked'"
                          " WHERE id = ?2 AND user_id = ?1 AND revoked_at IS NULL"
                          " AND idle_expires_at > ?3 AND expires_at > ?3"},
    [S_SESSION_REVOKE_OTHERS] = {"session_revoke_others",
                                 "UPDATE sessions SET revoked_at = ?3, revoke_reason = 'revoked'"
                                 " WHERE user_id = ?1 AND (?2 IS NULL OR id <> ?2)"
                                 " AND revoked_at IS NULL"
                                 " AND idle_expires_at > ?3 AND expires_at > ?3"},
    [S_SESSION_LIST] = {"session_list",
                        "SELECT " SESSION_COLS " FROM sessions s WHERE s.user_id = ?1"
                        " AND s.revoked_at IS NULL AND s.idle_expires_at > ?2"
                        " AND s.expires_at > ?2 ORDER BY s.created_at DESC, s.rowid DESC"
                        " LIMIT ?3"},
    [S_TOKEN_INSERT] = {"token_insert", "INSERT INTO refresh_tokens (hash, session_id, state,"
                                        " created_at) VALUES (?1, ?2, 'current', ?3)"},
    [S_TOKEN_LOOKUP] = {"token_lookup",
                        "SELECT t.state = 'rotated', " SESSION_COLS " FROM refresh_tokens t"
                        " JOIN sessions s ON s.id = t.session_id WHERE t.hash = ?1"},
    [S_TOKEN_ROTATE] = {"token_rotate", "UPDATE refresh_tokens SET state = 'rotated',"
                                        " rotated_at = ?2 WHERE hash = ?1 AND state = 'current'"},
    [S_AUDIT_INSERT] = {"audit_insert",
                        "INSERT INTO audit_events (at, event, result, user_id, ip, user_agent,"
                        " request_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"},
};

struct store {
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];
};

/* ---- pure helpers ---- */

/* ---- statements ---- */

static void log_step(struct store *st, enum stmt s)
{
    log_error("sqlite3_step(%s): %s", sql_defs[s].name, sqlite3_errmsg(st->db));
}

/* Binding helpers: 0, or -1 logged. Text is bound in place (SQLITE_STATIC) until reset(). */
static int bind_check(enum stmt s, int rc)
{
    if (rc == SQLITE_OK)
        return 0;
    log_error("sqlite3_bind(%s): %s", sql_defs[s].name, sqlite3_errstr(rc));
    return -1;
}

/* Binds `v` (NULL: SQL NULL), cut at `max` bytes on a UTF-8 boundary. */
static int bind_text(struct store *st, enum stmt s, int i, const char *v, size_t max)
{
    if (v == NULL)
        return bind_check(s, sqlite3_bind_null(st->stmt[s], i));
    size_t n = store_utf8_cut(v, strnlen(v, max + 1), max);
    return bind_check(s, sqlite3_bind_text(st->stmt[s], i, v, (int)n, SQLITE_STATIC));
}

static int bind_int(struct store *st, enum stmt s, int i, int64_t v)
{
    return bind_check(s, sqlite3_bind_int64(st->stmt[s], i, v));
}

static int bind_hash(struct store *st, enum stmt s, int i, const uint8_t hash[32])
{
    return bind_check(s, sqlite3_bind_blob(st->stmt[s], i, hash, 32, SQLITE_STATIC));
}

/*
 * sqlite3_step: SQLITE_ROW, SQLITE_DONE or an (extended) error code, logged here unless it is a
 * constraint violation and `constraint_ok` (the caller maps those to a status).
 */
static int step(struct store *st, enum stmt s, int constraint_ok)
{
    int rc = sqlite3_step(st->stmt[s]);

    if (rc != SQLITE_ROW && rc != SQLITE_DONE &&
        !(constraint_ok && (rc & 0xff) == SQLITE_CONSTRAINT))
        log_step(st, s);
    return rc;
}

/* Ends a use of `s`: drops its read snapshot and its bindings to the caller's memory. */
static void reset(struct store *st, enum stmt s)
{
    sqlite3_reset(st->stmt[s]);
    sqlite3_clear_bindings(st->stmt[s]);
}

/* Steps a bound statement that returns no row, then resets it. 0, or -1 logged. */
static int run(struct store *st, enum stmt s)
{
    int rc = step(st, s, 0);

    reset(st, s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void tx_rollback(struct store *st)
{
    if (!sqlite3_get_autocommit(st->db)) /* some errors roll back by themselves */
        run(st, S_ROLLBACK);
}

static int tx_commit(struct store *st)
{
    if (run(st, S_COMMIT) == 0)
        return 0;
    tx_rollback(st);
    return -1;
}

/* Copies a text column into dst[size], cut on a UTF-8 boundary; NULL becomes "". */
static void col_text(sqlite3_stmt *q, int col, char *dst, size_t size)
{
    const char *t = (const char *)sqlite3_column_text(q, col);
    size_t n = t != NULL ? store_utf8_cut(t, (size_t)sqlite3_column_bytes(q, col), size - 1) : 0;

    if (n > 0)
        memcpy(dst, t, n);
    dst[n] = '\0';
}

static void row_user(sqlite3_stmt *q, struct store_user *u)
{
    memset(u, 0, sizeof(*u));
    col_text(q, 0, u->id, sizeof(u->id));
    col_text(q, 1, u->email, sizeof(u->email));
    u->email_verified = sqlite3_column_int(q, 2);
    col_text(q, 3, u->password_hash, sizeof(u->password_hash));
    u->created_at = sqlite3_column_int64(q, 4);
}

/* Reads SESSION_COLS starting at column `c` into *s; returns whether the session is revoked. */
static int row_session(sqlite3_stmt *q, int c, struct store_session *s)
{
    memset(s, 0, sizeof(*s));
    col_text(q, c, s->id, sizeof(s->id));
    col_text(q, c + 1, s->user_id, sizeof(s->user_id));
    s->created_at = sqlite3_column_int64(q, c + 2);
    s->last_used_at = sqlite3_column_int64(q, c + 3);
    s->idle_expires_at = sqlite3_column_int64(q, c + 4);
    s->expires_at = sqlite3_column_int64(q, c + 5);
    col_text(q, c + 6, s->ip, sizeof(s->ip));
    col_text(q, c + 7, s->user_agent, sizeof(s->user_agent));
    return sqlite3_column_int(q, c + 8);
}

/* ---- open, schema, close ---- */

/*
 * Creates `path` mode 0600 when it does not exist yet; SQLite gives its -wal and -shm files the
 * database's mode. An existing file is left untouched: opening and closing a descriptor on it
 * would drop the POSIX locks that this process's other connections hold on it.
 */
static int create_private(const char *path, char *err, size_t errlen)
{
    struct stat sb;
    int fd;

    if (stat(path, &sb) == 0)
        return 0;
    if (errno != ENOENT) {
        error_set(err, errlen, "stat(%s): %s", path, strerror(errno));
        return -1;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
        error_set(err, errlen, "open(%s): %s", path, strerror(errno));
        return -1;
    }
    if (fd >= 0)
        close(fd);
    return 0;
}

static int exec_sql(sqlite3 *db, const char *path, const char *what, const char *sql, char *err,
                    size_t errlen)
{
    char *msg = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    error_set(err, errlen, "%s: %s: %s", path, what, msg != NULL ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -1;
}

/*
 * Runs a one-row statement (a PRAGMA) and copies its first column as text and as an integer.
 * Returns the SQLite result code; anything but SQLITE_OK also leaves a message in err.
 */
static int query_one(sqlite3 *db, const char *path, const char *sql, char *text, size_t textlen,
                     int64_t *int_r, char *err, size_t errlen)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);

    if (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (text != NULL)
            col_text(q, 0, text, textlen);
        if (int_r != NULL)
            *int_r = sqlite3_column_int64(q, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_ERROR;
    }
    if (rc != SQLITE_OK)
        error_set(err, errlen, "%s: %s: %s", path, sql, sqlite3_errmsg(db));
    sqlite3_finalize(q);
    return rc;
}

/*
 * Puts the file in WAL mode. Switching takes an exclusive lock, and SQLite reports a conflict at
 * once, without its busy handler, where waiting could deadlock (several processes opening a new
 * file together), so this waits itself, up to BUSY_TIMEOUT_MS in all.
 */
static int set_wal(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    char mode[16] = "";
    int rc, waited_ms = 0, nap_ms = 1;

    rc = query_one(db, path, "PRAGMA journal_mode", mode, sizeof(mode), NULL, err, errlen);
    if (rc == SQLITE_OK && strcmp(mode, "wal") == 0)
        return 0;
    while ((rc = query_one(db, path, "PRAGMA journal_mode = WAL", mode, sizeof(mode), NULL, err,
                           errlen)) != SQLITE_OK &&
           (rc & 0xff) == SQLITE_BUSY && waited_ms < BUSY_TIMEOUT_MS) {
        usleep((useconds_t)nap_ms * 1000);
        waited_ms += nap_ms;
        nap_ms = nap_ms < 50 ? nap_ms * 2 : 50;
    }
    if (rc != SQLITE_OK)
        return -1;
    if (strcmp(mode, "wal") != 0) {
        error_set(err, errlen, "%s: journal_mode is \"%s\", not \"wal\"", path, mode);
        return -1;
    }
    return 0;
}

static int set_pragmas(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    if (set_wal(db, path, err, errlen) < 0)
        return -1;
    return exec_sql(db, path, "pragmas", "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON",
                    err, errlen);
}

/* The file's schema version; -1 with a message when unreadable or newer than this code. */
static int schema_version(sqlite3 *db, const char *path, int64_t *v, char *err, size_t errlen)
{
    if (query_one(db, path, "PRAGMA user_version", NULL, 0, v, err, errlen) != SQLITE_OK)
        return -1;
    if (*v > STORE_SQLITE_SCHEMA_VERSION) {
        error_set(err, errlen,
                  "%s: schema version %lld is newer than this authd knows (%d); "
                  "run a newer authd or restore a backup",
                  path, (long long)*v, STORE_SQLITE_SCHEMA_VERSION);
        return -1;
    }
    if (*v < 0) {
        error_set(err, errlen, "%s: invalid schema version %lld", path, (long long)*v);
        return -1;
    }
    return 0;
}

/*
 * Migration 2's one user: `id` keeps its stored email (then logged by store_renorm_*) or takes
 * the normalized one. `holder` and `update` are "SELECT id FROM users WHERE email = ?1" and
 * "UPDATE users SET email = ?1 WHERE id = ?2". 0, or -1 with a message.
 */
static int renorm_user(sqlite3_stmt *holder, sqlite3_stmt *update, struct store_renorm *r,
                       const char *id, const char *email, char *err, size_t errlen)
{
    char norm[STORE_EMAIL_MAX + 1], other[STORE_ID_LEN + 1] = "";
    int rc;

    if (!store_renorm_email(r, id, email, norm))
        return 0;
    sqlite3_bind_text(holder, 1, norm, -1, SQLITE_STATIC);
    if ((rc = sqlite3_step(holder)) == SQLITE_ROW)
        col_text(holder, 0, other, sizeof(other));
    sqlite3_reset(holder);
    if (rc == SQLITE_ROW) {
        store_renorm_collision(r, id, other);
        return 0;
    }
    if (rc == SQLITE_DONE) {
        sqlite3_bind_text(update, 1, norm, -1, SQLITE_STATIC);
        sqlite3_bind_text(update, 2, id, -1, SQLITE_STATIC);
        rc = sqlite3_step(update);
        sqlite3_reset(update);
    }
    if (rc != SQLITE_DONE) {
        error_set(err, errlen, "email migration, user %s: %s", id, sqlite3_errstr(rc));
        return -1;
    }
    r->changed++;
    return 0;
}

/* Migration 2: every user's email through email_normalize, oldest account first (store.h). */
static int emails_renormalize(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    sqlite3_stmt *all = NULL, *holder = NULL, *update = NULL;
    char id[STORE_ID_LEN + 1], email[EMAIL_INPUT_MAX + 2]; /* longer: "too long", kept */
    struct store_renorm r = {0};
    int rc = SQLITE_OK, ret = -1;

    if (sqlite3_prepare_v2(db, "SELECT id, email FROM users ORDER BY created_at, id", -1, &all,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT id FROM users WHERE email = ?1", -1, &holder, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v2(db, "UPDATE users SET email = ?1 WHERE id = ?2", -1, &update, NULL) !=
            SQLITE_OK) {
        error_set(err, errlen, "%s: email migration: %s", path, sqlite3_errmsg(db));
        goto out;
    }
    while ((rc = sqlite3_step(all)) == SQLITE_ROW) {
        col_text(all, 0, id, sizeof(id));
        col_text(all, 1, email, sizeof(email));
        if (renorm_user(holder, update, &r, id, email, err, errlen) < 0)
            goto out;
    }
    if (rc != SQLITE_DONE) {
        error_set(err, errlen, "%s: email migration: %s", path, sqlite3_errmsg(db));
        goto out;
    }
    store_renorm_done(&r, path);
    ret = 0;
out:
    sqlite3_finalize(update);
    sqlite3_finalize(holder);
    sqlite3_finalize(all);
    return ret;
}

/* Applies the pending migrations in one transaction; the version is re-read under the lock. */
static int migrate(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    char what[32], sql[64];
    int64_t v;

    if (exec_sql(db, path, "BEGIN IMMEDIATE", "BEGIN IMMEDIATE", err, errlen) < 0)
        return -1;
    if (schema_version(db, path, &v, err, errlen) < 0)
        goto fail;
    for (int64_t i = v; i < STORE_SQLITE_SCHEMA_VERSION; i++) {
        snprintf(what, sizeof(what), "migration %lld", (long long)i + 1);
        if (exec_sql(db, path, what, migrations[i], err, errlen) < 0 ||
            (i + 1 == MIGRATION_EMAILS && emails_renormalize(db, path, err, errlen) < 0))
            goto fail;
    }
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", STORE_SQLITE_SCHEMA_VERSION);
    if (exec_sql(db, path, "set user_version", sql, err, errlen) < 0 ||
        exec_sql(db, path, "COMMIT", "COMMIT", err, errlen) < 0)
        goto fail;
    return 0;
fail:
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static int schema_ready(sqlite3 *db, const char *path, int do_migrate, char *err, size_t errlen)
{
    int64_t v;

    if (schema_version(db, path, &v, err, errlen) < 0)
        return -1;
    if (v == STORE_SQLITE_SCHEMA_VERSION)
        return 0;
    if (do_migrate)
        return migrate(db, path, err, errlen);
    error_set(err, errlen, "%s: schema version %lld, this authd needs %d: migrations have not run",
              path, (long long)v, STORE_SQLITE_SCHEMA_VERSION);
    return -1;
}

static void sqlite_close(struct store *st)
{
    if (st == NULL)
        return;
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(st->stmt[i]);
    if (sqlite3_close(st->db) != SQLITE_OK)
        log_error("sqlite3_close: %s", sqlite3_errmsg(st->db));
    free(st);
}

static struct store *sqlite_open(const struct config *cfg, int do_migrate, char *err, size_t errlen)
{
    const char *path = cfg->store.path;
    struct store *st = NULL;
    sqlite3 *db = NULL;
    int rc;

    if (path == NULL || path[0] == '\0') {
        error_set(err, errlen, "store.path is empty");
        return NULL;
    }
    if (create_private(path, err, errlen) < 0)
        return NULL;
    rc = sqlite3_open_v2(path, &db, OPEN_FLAGS, NULL);
    if (rc != SQLITE_OK) {
        error_set(err, errlen, "sqlite3_open_v2(%s): %s", path,
                  db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    if (set_pragmas(db, path, err, errlen) < 0 ||
        schema_ready(db, path, do_migrate, err, errlen) < 0)
        goto fail;
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        error_set(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    st->db = db;
    for (int i = 0; i < S_COUNT; i++) {
        rc = sqlite3_prepare_v3(db, sql_defs[i].sql, -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i],
                                NULL);
        if (rc != SQLITE_OK) {
            error_set(err, errlen, "%s: sqlite3_prepare(%s): %s", path, sql_defs[i].name,
                      sqlite3_errmsg(db));
            sqlite_close(st);
            return NULL;
        }
    }
    return st;
fail:
    sqlite3_close(db);
    return NULL;
}

static enum store_status sqlite_ping(struct store *st)
{
    int rc = step(st, S_PING, 0);

    reset(st, S_PING);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? STORE_OK : STORE_ERROR;
}

/* ---- users ---- */

static enum store_status sqlite_user_create(struct store *st, const char *email, const char *hash,
                                            int64_t now, struct store_user *out)
{
    enum store_status ret = STORE_ERROR;
    size_t hash_len = hash != NULL ? strlen(hash) : 0;
    int rc;

    if (strlen(email) > STORE_EMAIL_MAX || hash_len >= STORE_HASH_MAX) {
        log_error("user_create: %s too long", hash_len >= STORE_HASH_MAX ? "hash" : "email");
        return STORE_ERROR;
    }
    memset(out, 0, sizeof(*out));
    if (store_uuid(out->id) < 0)
        return STORE_ERROR;
    if (bind_text(st, S_USER_INSERT, 1, out->id, NO_LIMIT) < 0 ||
        bind_text(st, S_USER_INSERT, 2, email, NO_LIMIT) < 0 ||
        bind_text(st, S_USER_INSERT, 3, hash, NO_LIMIT) < 0 ||
        bind_int(st, S_USER_INSERT, 4, now) < 0)
        goto out;
    rc = step(st, S_USER_INSERT, 1);
    if (rc == SQLITE_DONE) {
        snprintf(out->email, sizeof(out->email), "%s", email);
        snprintf(out->password_hash, sizeof(out->password_hash), "%s", hash ? hash : "");
        out->created_at = now;
        ret = STORE_OK;
    } else if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
        ret = STORE_CONFLICT;
    } else if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        log_step(st, S_USER_INSERT);
    }
out:
    reset(st, S_USER_INSERT);
    if (ret != STORE_OK)
        memset(out, 0, sizeof(*out));
    return ret;
}

static enum store_status user_fetch(struct store *st, enum stmt s, const char *key,
                                    struct store_user *out)
{
    enum store_status ret = STORE_ERROR;
    int rc;

    if (bind_text(st, s, 1, key, NO_LIMIT) < 0)
        goto out;
    rc = step(st, s, 0);
    if (rc == SQLITE_ROW) {
        row_user(st->stmt[s], out);
        ret = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        ret = STORE_NOT_FOUND;
    }
out:
    reset(st, s);
    return ret;
}

static enum store_status sqlite_user_by_email(struct store *st, const char *email,
                                              struct store_user *out)
{
    if (strlen(email) > STORE_EMAIL_MAX) /* never stored */
        return STORE_NOT_FOUND;
    return user_fetch(st, S_USER_BY_EMAIL, email, out);
}

static enum store_status sqlite_user_by_id(struct store *st, const char *id, struct store_user *out)
{
    return user_fetch(st, S_USER_BY_ID, id, out);
}

static enum store_status sqlite_user_set_password(struct store *st, const char *user_id,
                                                  const char *hash, int64_t now)
{
    if (hash == NULL || strlen(hash) >= STORE_HASH_MAX) {
        log_error("user_set_password: hash missing or too long");
        return STORE_ERROR;
    }
    if (bind_text(st, S_USER_SET_PASSWORD, 1, user_id, NO_LIMIT) < 0 ||
        bind_text(st, S_USER_SET_PASSWORD, 2, hash, NO_LIMIT) < 0 ||
        bind_int(st, S_USER_SET_PASSWORD, 3, now) < 0) {
        reset(st, S_USER_SET_PASSWORD);
        return STORE_ERROR;
    }
    if (run(st, S_USER_SET_PASSWORD) < 0)
        return STORE_ERROR;
    return sqlite3_changes(st->db) > 0 ? STORE_OK : STORE_NOT_FOUND;
}

/* ---- sessions ---- */

static int token_insert(struct store *st, const uint8_t hash[32], const char *session_id,
                        int64_t now)
{
    if (bind_hash(st, S_TOKEN_INSERT, 1, hash) < 0 ||
        bind_text(st, S_TOKEN_INSERT, 2, session_id, NO_LIMIT) < 0 ||
        bind_int(st, S_TOKEN_INSERT, 3, now) < 0) {
        reset(st, S_TOKEN_INSERT);
        return -1;
    }
    return run(st, S_TOKEN_INSERT);
}

/* Inserts the session row; NOT_FOUND when its user does not exist. */
static enum store_status session_insert(struct store *st, const struct store_session *s)
{
    enum store_status ret = STORE_ERROR;
    enum stmt q = S_SESSION_INSERT;
    int rc;

    if (bind_text(st, q, 1, s->id, NO_LIMIT) < 0 ||
        bind_text(st, q, 2, s->user_id, STORE_ID_LEN) < 0 ||
        bind_int(st, q, 3, s->created_at) < 0 || bind_int(st, q, 4, s->last_used_at) < 0 ||
        bind_int(st, q, 5, s->idle_expires_at) < 0 || bind_int(st, q, 6, s->expires_at) < 0 ||
        bind_text(st, q, 7, s->ip, STORE_IP_MAX) < 0 ||
        bind_text(st, q, 8, s->user_agent, STORE_UA_MAX) < 0)
        goto out;
    rc = step(st, q, 1);
    if (rc == SQLITE_DONE)
        ret = STORE_OK;
    else if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        ret = STORE_NOT_FOUND;
    else if ((rc & 0xff) == SQLITE_CONSTRAINT)
        log_step(st, q);
out:
    reset(st, q);
    return ret;
}

static enum store_status sqlite_session_create(struct store *st, struct store_session *s,
                                               const uint8_t token_hash[32])
{
    enum store_status ret;

    if (store_uuid(s->id) < 0 || run(st, S_BEGIN) < 0)
        return STORE_ERROR;
    ret = session_insert(st, s);
    if (ret == STORE_OK && token_insert(st, token_hash, s->id, s->created_at) < 0)
        ret = STORE_ERROR;
    if (ret != STORE_OK)
        tx_rollback(st);
    else if (tx_commit(st) < 0)
        ret = STORE_ERROR;
    return ret;
}

/* The session whose token is `hash`: OK (with *rotated_r, *revoked_r), NOT_FOUND or ERROR. */
static enum store_status token_lookup(struct store *st, const uint8_t hash[32],
                                      struct store_session *s, int *rotated_r, int *revoked_r)
{
    enum store_status ret = STORE_ERROR;
    int rc;

    if (bind_hash(st, S_TOKEN_LOOKUP, 1, hash) < 0)
        goto out;
    rc = step(st, S_TOKEN_LOOKUP, 0);
    if (rc == SQLITE_ROW) {
        *rotated_r = sqlite3_column_int(st->stmt[S_TOKEN_LOOKUP], 0);
        *revoked_r = row_session(st->stmt[S_TOKEN_LOOKUP], 1, s);
        ret = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        ret = STORE_NOT_FOUND;
    }
out:
    reset(st, S_TOKEN_LOOKUP);
    return ret;
}

/* Revokes session `id` unless it already is (the first reason stays). 0 or -1. */
static int session_mark_revoked(struct store *st, const char *id, int64_t now, const char *reason)
{
    if (bind_text(st, S_SESSION_MARK_REVOKED, 1, id, NO_LIMIT) < 0 ||
        bind_int(st, S_SESSION_MARK_REVOKED, 2, now) < 0 ||
        bind_text(st, S_SESSION_MARK_REVOKED, 3, reason, NO_LIMIT) < 0) {
        reset(st, S_SESSION_MARK_REVOKED);
        return -1;
    }
    return run(st, S_SESSION_MARK_REVOKED);
}

/* Makes `new_hash` the family's current token in place of `old_hash`; stores s's new times. */
static int token_advance(struct store *st, const uint8_t old_hash[32], const uint8_t new_hash[32],
                         const struct store_session *s, int64_t now)
{
    if (bind_hash(st, S_TOKEN_ROTATE, 1, old_hash) < 0 ||
        bind_int(st, S_TOKEN_ROTATE, 2, now) < 0) {
        reset(st, S_TOKEN_ROTATE);
        return -1;
    }
    if (run(st, S_TOKEN_ROTATE) < 0 || token_insert(st, new_hash, s->id, now) < 0)
        return -1;
    if (bind_text(st, S_SESSION_TOUCH, 1, s->id, NO_LIMIT) < 0 ||
        bind_int(st, S_SESSION_TOUCH, 2, s->last_used_at) < 0 ||
        bind_int(st, S_SESSION_TOUCH, 3, s->idle_expires_at) < 0) {
        reset(st, S_SESSION_TOUCH);
        return -1;
    }
    return run(st, S_SESSION_TOUCH);
}

static enum store_status sqlite_session_rotate(struct store *st, const uint8_t old_hash[32],
                                               const uint8_t new_hash[32], int64_t now,
                                               int64_t idle_ttl, struct store_session *out)
{
    struct store_session s;
    int rotated = 0, revoked = 0;
    enum store_status ret;

    if (run(st, S_BEGIN) < 0)
        return STORE_ERROR;
    ret = token_lookup(st, old_hash, &s, &rotated, &revoked);
    if (ret != STORE_OK) {
        tx_rollback(st);
        return ret;
    }
    if (rotated) {
        ret = session_mark_revoked(st, s.id, now, "reuse") < 0 ? STORE_ERROR : STORE_REUSED;
    } else if (!store_session_active(revoked, &s, now)) {
        int ok = revoked || session_mark_revoked(st, s.id, now, "expired") == 0;
        ret = ok ? STORE_EXPIRED : STORE_ERROR;
    } else {
        s.last_used_at = now;
        s.idle_expires_at = store_idle_deadline(now, idle_ttl, s.expires_at);
        ret = token_advance(st, old_hash, new_hash, &s, now) < 0 ? STORE_ERROR : STORE_OK;
    }
    if (ret == STORE_ERROR)
        tx_rollback(st);
    else if (tx_commit(st) < 0)
        ret = STORE_ERROR;
    if (ret != STORE_ERROR && out != NULL)
        *out = s;
    return ret;
}

static enum store_status sqlite_session_get(struct store *st, const char *session_id, int64_t now,
                                            struct store_session *out)
{
    enum store_status ret = STORE_ERROR;
    struct store_session s;
    int rc;

    if (bind_text(st, S_SESSION_GET, 1, session_id, NO_LIMIT) < 0)
        goto out;
    rc = step(st, S_SESSION_GET, 0);
    if (rc == SQLITE_ROW) {
        int revoked = row_session(st->stmt[S_SESSION_GET], 0, &s);
        ret = store_session_active(revoked, &s, now) ? STORE_OK : STORE_EXPIRED;
        if (ret == STORE_OK)
            *out = s;
    } else if (rc == SQLITE_DONE) {
        ret = STORE_NOT_FOUND;
    }
out:
    reset(st, S_SESSION_GET);
    return ret;
}

static enum store_status sqlite_session_revoke_token(struct store *st, const uint8_t token_hash[32],
                                                     int64_t now, struct store_session *out)
{
    struct store_session s;
    int rotated = 0, revoked = 0;
    enum store_status ret;

    if (run(st, S_BEGIN) < 0)
        return STORE_ERROR;
    ret = token_lookup(st, token_hash, &s, &rotated, &revoked);
    if (ret == STORE_OK && (rotated || !store_session_active(revoked, &s, now)))
        ret = STORE_NOT_FOUND;
    if (ret == STORE_OK && session_mark_revoked(st, s.id, now, "logout") < 0)
        ret = STORE_ERROR;
    if (ret != STORE_OK)
        tx_rollback(st);
    else if (tx_commit(st) < 0)
        ret = STORE_ERROR;
    if (ret == STORE_OK && out != NULL)
        *out = s;
    return ret;
}

static enum store_status sqlite_session_revoke(struct store *st, const char *user_id,
                                               const char *session_id, int64_t now)
{
    if (bind_text(st, S_SESSION_REVOKE, 1, user_id, NO_LIMIT) < 0 ||
        bind_text(st, S_SESSION_REVOKE, 2, session_id, NO_LIMIT) < 0 ||
        bind_int(st, S_SESSION_REVOKE, 3, now) < 0) {
        reset(st, S_SESSION_REVOKE);
        return STORE_ERROR;
    }
    if (run(st, S_SESSION_REVOKE) < 0)
        return STORE_ERROR;
    return sqlite3_changes(st->db) > 0 ? STORE_OK : STORE_NOT_FOUND;
}

static enum store_status sqlite_session_revoke_others(struct store *st, const char *user_id,
                                                      const char *keep_id, int64_t now,
                                                      int *count_r)
{
    if (count_r != NULL)
        *count_r = 0;
    if (bind_text(st, S_SESSION_REVOKE_OTHERS, 1, user_id, NO_LIMIT) < 0 ||
        bind_text(st, S_SESSION_REVOKE_OTHERS, 2, keep_id, NO_LIMIT) < 0 ||
        bind_int(st, S_SESSION_REVOKE_OTHERS, 3, now) < 0) {
        reset(st, S_SESSION_REVOKE_OTHERS);
        return STORE_ERROR;
    }
    if (run(st, S_SESSION_REVOKE_OTHERS) < 0)
        return STORE_ERROR;
    if (count_r != NULL)
        *count_r = sqlite3_changes(st->db);
    return STORE_OK;
}

static enum store_status sqlite_session_list(struct store *st, const char *user_id, int64_t now,
                                             struct store_session *out, int max, int *count_r)
{
    enum store_status ret = STORE_ERROR;
    int n = 0, rc = SQLITE_DONE;

    *count_r = 0;
    if (max <= 0)
        return STORE_OK;
    if (bind_text(st, S_SESSION_LIST, 1, user_id, NO_LIMIT) < 0 ||
        bind_int(st, S_SESSION_LIST, 2, now) < 0 || bind_int(st, S_SESSION_LIST, 3, max) < 0)
        goto out;
    while (n < max && (rc = step(st, S_SESSION_LIST, 0)) == SQLITE_ROW)
        row_session(st->stmt[S_SESSION_LIST], 0, &out[n++]);
    if (n == max || rc == SQLITE_DONE) {
        *count_r = n;
        ret = STORE_OK;
    }
out:
    reset(st, S_SESSION_LIST);
    return ret;
}

/* ---- audit ---- */

static enum store_status sqlite_audit_append(struct store *st, const struct store_audit *a)
{
    enum stmt q = S_AUDIT_INSERT;

    if (a->event == NULL || a->result == NULL) {
        log_error("audit_append: event and result are required");
        return STORE_ERROR;
    }
    if (bind_int(st, q, 1, a->at) < 0 || bind_text(st, q, 2, a->event, AUDIT_TEXT_MAX) < 0 ||
        bind_text(st, q, 3, a->result, AUDIT_TEXT_MAX) < 0 ||
        bind_text(st, q, 4, a->user_id, AUDIT_TEXT_MAX) < 0 ||
        bind_text(st, q, 5, a->ip, STORE_IP_MAX) < 0 ||
        bind_text(st, q, 6, a->user_agent, STORE_UA_MAX) < 0 ||
        bind_text(st, q, 7, a->request_id, AUDIT_TEXT_MAX) < 0 ||
        bind_text(st, q, 8, a->detail, AUDIT_TEXT_MAX) < 0) {
        reset(st, q);
        return STORE_ERROR;
    }
    return run(st, q) < 0 ? STORE_ERROR : STORE_OK;
}

/* ---- retention (store.h: prune_sessions, prune_audit) ---- */

/*
 * The hashes of ended sessions, then ended sessions left without hashes (so the foreign key's
 * cascade deletes nothing more), then old audit events; ?1 = before, ?2 = limit. The first two
 * walk the sessions_ended_at index, the third audit_events_at (migration 2).
 */
#define PRUNE_TOKENS_SQL                                                                           \
    "DELETE FROM refresh_tokens WHERE rowid IN (SELECT t.rowid FROM sessions"                      \
    " JOIN refresh_tokens t ON t.session_id = sessions.id WHERE " SESSION_ENDED_AT " < ?1"         \
    " LIMIT ?2)"
#define PRUNE_SESSIONS_SQL                                                                         \
    "DELETE FROM sessions WHERE rowid IN (SELECT rowid FROM sessions WHERE " SESSION_ENDED_AT      \
    " < ?1 AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.session_id = sessions.id)"       \
    " LIMIT ?2)"
#define PRUNE_AUDIT_SQL                                                                            \
    "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE at < ?1"              \
    " ORDER BY at LIMIT ?2)"

/*
 * Runs one DELETE (parameters before, limit), prepared for this call only: pruning runs a few
 * times per interval, not worth a statement kept on every connection. 0 with the rows deleted
 * in *n_r, or -1 logged.
 */
static int prune_exec(struct store *st, const char *what, const char *sql, int64_t before,
                      int64_t limit, int64_t *n_r)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, &q, NULL);

    if (rc == SQLITE_OK && (rc = sqlite3_bind_int64(q, 1, before)) == SQLITE_OK &&
        (rc = sqlite3_bind_int64(q, 2, limit)) == SQLITE_OK)
        rc = sqlite3_step(q);
    if (rc == SQLITE_DONE)
        *n_r = sqlite3_changes(st->db);
    else
        log_error("sqlite3_step(%s): %s", what, sqlite3_errmsg(st->db));
    sqlite3_finalize(q);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* One BEGIN IMMEDIATE transaction of at most `batch` deletions: hashes first, then sessions. */
static enum store_status sqlite_prune_sessions(struct store *st, int64_t before, int batch,
                                               int64_t *sessions_r, int64_t *tokens_r)
{
    int64_t t = 0, s = 0;

    *sessions_r = *tokens_r = 0;
    if (batch <= 0)
        return STORE_OK;
    if (run(st, S_BEGIN) < 0)
        return STORE_ERROR;
    if (prune_exec(st, "prune_tokens", PRUNE_TOKENS_SQL, before, batch, &t) < 0 ||
        (t < batch &&
         prune_exec(st, "prune_sessions", PRUNE_SESSIONS_SQL, before, batch - t, &s) < 0)) {
        tx_rollback(st);
        return STORE_ERROR;
    }
    if (tx_commit(st) < 0)
        return STORE_ERROR;
    *sessions_r = s;
    *tokens_r = t;
    return STORE_OK;
}

static enum store_status sqlite_prune_audit(struct store *st, int64_t before, int batch,
                                            int64_t *count_r)
{
    *count_r = 0;
    if (batch <= 0)
        return STORE_OK;
    return prune_exec(st, "prune_audit", PRUNE_AUDIT_SQL, before, batch, count_r) < 0 ? STORE_ERROR
                                                                                      : STORE_OK;
}

/* ---- backup: dump, restore, count ---- */

static const char *const backup_tables[] = {STORE_COLLECTIONS};
#define BACKUP_TABLES (sizeof(backup_tables) / sizeof(backup_tables[0]))

/* One column value as JSON: integers, text, NULL; BLOBs (refresh_tokens.hash) as lower-case hex. */
static json_t *column_json(sqlite3_stmt *q, int i)
{
    static const char hex[] = "0123456789abcdef";

    switch (sqlite3_column_type(q, i)) {
    case SQLITE_INTEGER:
        return json_integer(sqlite3_column_int64(q, i));
    case SQLITE_FLOAT:
        return json_real(sqlite3_column_double(q, i));
    case SQLITE_TEXT:
        return json_stringn((const char *)sqlite3_column_text(q, i),
                            (size_t)sqlite3_column_bytes(q, i));
    case SQLITE_BLOB: {
        const unsigned char *b = sqlite3_column_blob(q, i);
        size_t n = (size_t)sqlite3_column_bytes(q, i);
        char *t = malloc(2 * n + 1);
        if (t == NULL)
            return NULL;
        for (size_t k = 0; k < n; k++) {
            t[2 * k] = hex[b[k] >> 4];
            t[2 * k + 1] = hex[b[k] & 0x0f];
        }
        t[2 * n] = '\0';
        json_t *v = json_string(t);
        free(t);
        return v;
    }
    default:
        return json_null();
    }
}

/* Emits every row of `table` of `db`, in rowid order. 0, or -1 (logged, or the emitter's stop). */
static int dump_table(sqlite3 *db, const char *table, store_emit_fn emit, void *ctx)
{
    char sql[96];
    sqlite3_stmt *q = NULL;
    int rc, ret = -1;

    snprintf(sql, sizeof(sql), "SELECT * FROM %s ORDER BY rowid", table);
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
        log_error("dump: prepare(%s): %s", table, sqlite3_errmsg(db));
        return -1;
    }
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        json_t *doc = json_object();
        for (int i = 0; doc != NULL && i < sqlite3_column_count(q); i++) {
            json_t *v = column_json(q, i);
            if (v == NULL || json_object_set_new(doc, sqlite3_column_name(q, i), v) < 0) {
                log_error("dump: %s.%s: cannot encode the value as JSON", table,
                          sqlite3_column_name(q, i));
                json_decref(doc);
                doc = NULL;
            }
        }
        if (doc == NULL)
            goto out;
        int stop = emit(ctx, table, doc);
        json_decref(doc);
        if (stop < 0)
            goto out;
    }
    if (rc != SQLITE_DONE)
        log_error("dump: sqlite3_step(%s): %s", table, sqlite3_errmsg(db));
    else
        ret = 0;
out:
    sqlite3_finalize(q);
    return ret;
}

static void snapshot_remove(const char *path)
{
    static const char *const suffixes[] = {"", "-journal", "-wal", "-shm"};
    char p[4200];

    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

/*
 * Removes snapshots that a killed backup left beside `src`. A live dump holds an flock on its
 * snapshot (SQLite's own locks are POSIX locks, independent of flock), so only abandoned ones
 * can be locked here; and only files older than SNAPSHOT_STALE_S are looked at, because a
 * concurrent dump's file exists unlocked between its mkostemp and its flock.
 */
#define SNAPSHOT_STALE_S 3600
static void snapshot_sweep(const char *src)
{
    char *dir = strdup(src), *slash, prefix[512], path[4200];
    DIR *d = NULL;
    struct dirent *de;

    if (dir == NULL)
        return;
    slash = strrchr(dir, '/');
    snprintf(prefix, sizeof(prefix), "%s.snapshot-", slash ? slash + 1 : dir);
    if (slash != NULL)
        slash[slash == dir ? 1 : 0] = '\0';
    d = opendir(slash ? dir : ".");
    while (d != NULL && (de = readdir(d)) != NULL) {
        size_t pl = strlen(prefix);
        if (strncmp(de->d_name, prefix, pl) != 0 || strlen(de->d_name) != pl + 6)
            continue;
        snprintf(path, sizeof(path), "%s/%s", slash ? dir : ".", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        struct stat sb;
        if (fd >= 0 && fstat(fd, &sb) == 0 && time(NULL) - sb.st_mtime > SNAPSHOT_STALE_S &&
            flock(fd, LOCK_EX | LOCK_NB) == 0) {
            log_warn("dump: removing %s, left by an interrupted backup", path);
            snapshot_remove(path);
        }
        if (fd >= 0)
            close(fd);
    }
    if (d != NULL)
        closedir(d);
    free(dir);
}

/*
 * Copies the live database into a new file beside it (<store.path>.snapshot-XXXXXX, mode 0600,
 * flocked through *lockfd_r while it exists) with the online backup API, and returns a
 * connection to the copy. The source connection holds one read transaction (BEGIN + a read)
 * for the whole copy: in WAL mode that never blocks writers, the copy is one consistent
 * snapshot, and other connections' writes stay invisible to it, so the copy goes in batches of
 * SNAPSHOT_BATCH pages without restarting, checking store_dump_cancel between batches.
 */
#define SNAPSHOT_BATCH 1024

static int snapshot_copy(sqlite3 *src, sqlite3 *dst)
{
    sqlite3_backup *b;
    int rc = SQLITE_ERROR, tries = 0;

    if (sqlite3_exec(src, "BEGIN; SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) !=
        SQLITE_OK) {
        rc = sqlite3_errcode(src);
        if (!sqlite3_get_autocommit(src))
            sqlite3_exec(src, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    if ((b = sqlite3_backup_init(dst, "main", src, "main")) == NULL) {
        rc = sqlite3_errcode(dst);
    } else {
        while (!store_dump_cancel) {
            rc = sqlite3_backup_step(b, SNAPSHOT_BATCH);
            if ((rc == SQLITE_BUSY || rc == SQLITE_LOCKED) && ++tries < 100) {
                usleep(50 * 1000);
                continue;
            }
            if (rc != SQLITE_OK)
                break;
        }
        if (store_dump_cancel) {
            log_error("dump: cancelled");
            rc = SQLITE_INTERRUPT;
        }
        sqlite3_backup_finish(b);
    }
    sqlite3_exec(src, "COMMIT", NULL, NULL, NULL);
    return rc;
}

static sqlite3 *snapshot_open(struct store *st, char *path, size_t pathlen, int *lockfd_r)
{
    const char *src = sqlite3_db_filename(st->db, "main");
    sqlite3 *dst = NULL;
    int rc = SQLITE_ERROR;

    if (src == NULL || src[0] == '\0' ||
        (size_t)snprintf(path, pathlen, "%s.snapshot-XXXXXX", src) >= pathlen) {
        log_error("dump: no file name for the snapshot");
        return NULL;
    }
    snapshot_sweep(src);
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        log_error("dump: mkostemp(%s): %s", path, strerror(errno));
        return NULL;
    }
    flock(fd, LOCK_EX);
    *lockfd_r = fd;
    if (sqlite3_open_v2(path, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK)
        rc = snapshot_copy(st->db, dst);
    if (rc != SQLITE_DONE) {
        int os = dst != NULL ? sqlite3_system_errno(dst) : 0;
        log_error("dump: sqlite3_backup(%s -> %s): %s%s%s%s", src, path,
                  dst != NULL ? sqlite3_errmsg(dst) : sqlite3_errstr(rc), os ? " (" : "",
                  os ? strerror(os) : "", os ? ")" : "");
        sqlite3_close(dst);
        snapshot_remove(path);
        close(fd);
        *lockfd_r = -1;
        return NULL;
    }
    sqlite3_exec(dst, "PRAGMA journal_mode = DELETE", NULL, NULL, NULL);
    return dst;
}

static enum store_status sqlite_dump(struct store *st, store_emit_fn emit, void *ctx)
{
    char path[4096];
    int lockfd = -1, rc = 0;
    sqlite3 *snap = snapshot_open(st, path, sizeof(path), &lockfd);

    if (snap == NULL)
        return STORE_ERROR;
    for (size_t i = 0; rc == 0 && i < BACKUP_TABLES; i++)
        rc = store_dump_cancel ? -1 : dump_table(snap, backup_tables[i], emit, ctx);
    sqlite3_close(snap);
    snapshot_remove(path);
    close(lockfd);
    return rc == 0 ? STORE_OK : STORE_ERROR;
}

/* A prepared INSERT of every column of one table, with each column's declared type. */
struct restore_insert {
    sqlite3_stmt *q;
    int ncols;
    char *cols[16];
    int is_blob[16];
};

static int restore_prepare(sqlite3 *db, const char *table, struct restore_insert *ins)
{
    char sql[1024], info[96];
    sqlite3_stmt *q = NULL;
    size_t len = 0;

    snprintf(info, sizeof(info), "PRAGMA table_info(%s)", table);
    if (sqlite3_prepare_v2(db, info, -1, &q, NULL) != SQLITE_OK)
        goto fail;
    len = (size_t)snprintf(sql, sizeof(sql), "INSERT INTO %s (", table);
    while (sqlite3_step(q) == SQLITE_ROW && ins->ncols < 16) {
        const char *name = (const char *)sqlite3_column_text(q, 1);
        const char *type = (const char *)sqlite3_column_text(q, 2);
        ins->cols[ins->ncols] = strdup(name ? name : "");
        ins->is_blob[ins->ncols] = type != NULL && sqlite3_stricmp(type, "BLOB") == 0;
        len += (size_t)snprintf(sql + len, sizeof(sql) - len, "%s%s", ins->ncols ? ", " : "",
                                name ? name : "");
        ins->ncols++;
    }
    sqlite3_finalize(q);
    q = NULL;
    len += (size_t)snprintf(sql + len, sizeof(sql) - len, ") VALUES (");
    for (int i = 0; i < ins->ncols && len < sizeof(sql); i++)
        len += (size_t)snprintf(sql + len, sizeof(sql) - len, "%s?", i ? ", " : "");
    if (ins->ncols == 0 || len + 2 >= sizeof(sql))
        goto fail;
    strcat(sql, ")");
    if (sqlite3_prepare_v2(db, sql, -1, &ins->q, NULL) != SQLITE_OK)
        goto fail;
    return 0;
fail:
    log_error("restore: prepare insert into %s: %s", table, sqlite3_errmsg(db));
    sqlite3_finalize(q);
    return -1;
}

static void restore_insert_free(struct restore_insert *ins)
{
    sqlite3_finalize(ins->q);
    for (int i = 0; i < ins->ncols; i++)
        free(ins->cols[i]);
    memset(ins, 0, sizeof(*ins));
}

/* 64 hex digits to 32 bytes. 0 or -1. */
static int hex32(const char *t, uint8_t out[32])
{
    if (t == NULL || strlen(t) != 64)
        return -1;
    for (int i = 0; i < 64; i++) {
        int c = t[i], v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        out[i / 2] = (uint8_t)(i % 2 ? out[i / 2] | v : v << 4);
    }
    return 0;
}

/* Binds the doc's member for column i of `ins`. 0, or -1 logged. */
static int restore_bind(struct restore_insert *ins, int i, json_t *v, const char *table)
{
    sqlite3_stmt *q = ins->q;
    uint8_t blob[32];
    int rc;

    if (v == NULL || json_is_null(v)) {
        rc = sqlite3_bind_null(q, i + 1);
    } else if (ins->is_blob[i]) {
        if (hex32(json_string_value(v), blob) < 0)
            goto bad;
        rc = sqlite3_bind_blob(q, i + 1, blob, 32, SQLITE_TRANSIENT);
    } else if (json_is_integer(v)) {
        rc = sqlite3_bind_int64(q, i + 1, json_integer_value(v));
    } else if (json_is_boolean(v)) {
        rc = sqlite3_bind_int(q, i + 1, json_is_true(v));
    } else if (json_is_real(v)) {
        rc = sqlite3_bind_double(q, i + 1, json_real_value(v));
    } else if (json_is_string(v)) {
        rc = sqlite3_bind_text(q, i + 1, json_string_value(v), (int)json_string_length(v),
                               SQLITE_TRANSIENT);
    } else {
        goto bad;
    }
    return rc == SQLITE_OK ? 0 : -1;
bad:
    log_error("restore: %s.%s: unexpected value", table, ins->cols[i]);
    return -1;
}

static int restore_record(sqlite3 *db, struct restore_insert *inserts, const char *collection,
                          json_t *doc)
{
    size_t t = 0;

    while (t < BACKUP_TABLES && strcmp(backup_tables[t], collection ? collection : "") != 0)
        t++;
    if (t == BACKUP_TABLES || !json_is_object(doc)) {
        log_error("restore: malformed record (collection \"%s\")", collection ? collection : "");
        return -1;
    }
    struct restore_insert *ins = &inserts[t];
    if (ins->q == NULL && restore_prepare(db, backup_tables[t], ins) < 0)
        return -1;
    int ok = 1;
    for (int i = 0; ok && i < ins->ncols; i++)
        ok = restore_bind(ins, i, json_object_get(doc, ins->cols[i]), backup_tables[t]) == 0;
    if (ok && sqlite3_step(ins->q) != SQLITE_DONE) {
        log_error("restore: insert into %s: %s", backup_tables[t], sqlite3_errmsg(db));
        ok = 0;
    }
    sqlite3_reset(ins->q);
    sqlite3_clear_bindings(ins->q);
    return ok ? 0 : -1;
}

static enum store_status sqlite_count_users(struct store *st, int64_t *count_r)
{
    sqlite3_stmt *q = NULL;
    enum store_status ret = STORE_ERROR;

    if (sqlite3_prepare_v2(st->db, "SELECT count(*) FROM users", -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW) {
        *count_r = sqlite3_column_int64(q, 0);
        ret = STORE_OK;
    } else {
        log_error("count_users: %s", sqlite3_errmsg(st->db));
    }
    sqlite3_finalize(q);
    return ret;
}

/*
 * One BEGIN IMMEDIATE transaction: empties every table (children first), inserts every record
 * (foreign keys checked at COMMIT, so the order of records does not matter) and commits. Other
 * connections see the old content or the new one, never a mixture.
 */
static enum store_status sqlite_restore(struct store *st, store_next_fn next, void *ctx)
{
    struct restore_insert inserts[BACKUP_TABLES];
    const char *collection;
    json_t *doc;
    int r, ok = 0;
    int64_t users = 0, have = -1;

    memset(inserts, 0, sizeof(inserts));
    if (run(st, S_BEGIN) < 0)
        return STORE_ERROR;
    char *msg = NULL;
    if (sqlite3_exec(st->db,
                     "PRAGMA defer_foreign_keys = ON; DELETE FROM audit_events;"
                     " DELETE FROM refresh_tokens; DELETE FROM sessions; DELETE FROM users",
                     NULL, NULL, &msg) != SQLITE_OK) {
        log_error("restore: empty the tables: %s", msg ? msg : sqlite3_errmsg(st->db));
        sqlite3_free(msg);
        goto out;
    }
    while ((r = next(ctx, &collection, &doc)) == 1) {
        int rc = restore_record(st->db, inserts, collection, doc);
        json_decref(doc);
        if (rc < 0)
            goto out;
        users += strcmp(collection, "users") == 0;
    }
    /* Checked before COMMIT: a mismatch leaves the old content in place. */
    if (r == 0 && (sqlite_count_users(st, &have) != STORE_OK || have != users)) {
        log_error("restore: the store would hold %lld users, the file has %lld", (long long)have,
                  (long long)users);
        goto out;
    }
    ok = r == 0;
out:
    for (size_t i = 0; i < BACKUP_TABLES; i++)
        restore_insert_free(&inserts[i]);
    if (!ok) {
        tx_rollback(st);
        return STORE_ERROR;
    }
    return tx_commit(st) < 0 ? STORE_ERROR : STORE_OK;
}

const struct store_driver store_sqlite_driver = {
    .name = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .ping = sqlite_ping,
    .user_create = sqlite_user_create,
    .user_by_email = sqlite_user_by_email,
    .user_by_id = sqlite_user_by_id,
    .user_set_password = sqlite_user_set_password,
    .session_create = sqlite_session_create,
    .session_rotate = sqlite_session_rotate,
    .session_get = sqlite_session_get,
    .session_revoke_token = sqlite_session_revoke_token,
    .session_revoke = sqlite_session_revoke,
    .session_revoke_others = sqlite_session_revoke_others,
    .session_list = sqlite_session_list,
    .audit_append = sqlite_audit_append,
    .dump = sqlite_dump,
    .restore = sqlite_restore,
    .count_users = sqlite_count_users,
    .prune_sessions = sqlite_prune_sessions,
    .prune_audit = sqlite_prune_audit,
};
