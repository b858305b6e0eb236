/*
 * store: where users, credentials, sessions (refresh-token families) and audit events live.
 *
 * A driver is a struct of function pointers chosen by `store.driver` (Dovecot's passdb style):
 * "sqlite" (embedded default) and "mongo". A `struct store` is one connection and is not
 * thread-safe: each offload thread opens its own. All calls block: never call them on the event
 * loop. Times are seconds since the epoch. Refresh tokens are never stored, only their SHA-256.
 *
 * Sessions and refresh tokens: a login creates a session (a token family) whose current token
 * hash is stored. Refreshing rotates atomically: the presented token must be the family's
 * current one; it becomes "rotated" and the new hash becomes current. Presenting a rotated
 * token again is reuse (RFC 9700 §4.14.2): the whole family is revoked.
 */
#ifndef AUTHD_STORE_H
#define AUTHD_STORE_H

#include <jansson.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"

#define STORE_ID_LEN    36 /* UUID text */
#define STORE_EMAIL_MAX 254
#define STORE_HASH_MAX  192
#define STORE_IP_MAX    46
#define STORE_UA_MAX    256

enum store_status {
    STORE_OK = 0,
    STORE_NOT_FOUND, /* no such row (or already revoked, for revoke calls) */
    STORE_CONFLICT,  /* unique constraint: the email is taken */
    STORE_REUSED,    /* a rotated refresh token was presented again: family revoked */
    STORE_EXPIRED,   /* session past its idle or absolute expiry, or revoked */
    STORE_ERROR,     /* the backend failed; logged by the driver */
};

struct store_user {
    char id[STORE_ID_LEN + 1];
    char email[STORE_EMAIL_MAX + 1]; /* as email_normalize made it (shared/email.h) */
    int email_verified;
    int64_t created_at;
    char password_hash[STORE_HASH_MAX]; /* PHC string */
};

struct store_session {
    char id[STORE_ID_LEN + 1];
    char user_id[STORE_ID_LEN + 1];
    int64_t created_at;
    int64_t last_used_at;
    int64_t idle_expires_at; /* last use + idle ttl */
    int64_t expires_at;      /* absolute: creation + refresh ttl */
    char ip[STORE_IP_MAX + 1];
    char user_agent[STORE_UA_MAX + 1];
};

struct store_audit {
    int64_t at;
    const char *event;      /* "register", "login", "refresh", "refresh_reuse", "logout", ... */
    const char *result;     /* "success" | "failure" */
    const char *user_id;    /* may be NULL */
    const char *ip;         /* may be NULL */
    const char *user_agent; /* may be NULL */
    const char *request_id; /* may be NULL */
    const char *detail;     /* short reason, never a secret; may be NULL */
};

struct store;

/*
 * Backup records: driver-neutral JSON objects, one per row or document, so that a backup of
 * one driver restores into another. Collections, parents first: "users", "sessions",
 * "refresh_tokens", "audit_events". Field names are the SQLite column names (see
 * store_sqlite.c's schema); refresh_tokens.hash is 64 lower-case hex digits; times are
 * integers (seconds since the epoch); a missing value is JSON null.
 *
 * emit: called once per record, in collection order; returns 0 to go on, -1 to abort.
 * next: sets *collection and *doc (a new reference the driver releases) and returns 1, or
 * returns 0 at the end, -1 on a read error.
 */
#define STORE_COLLECTIONS "users", "sessions", "refresh_tokens", "audit_events"
typedef int (*store_emit_fn)(void *ctx, const char *collection, json_t *doc);
/*
 * Set (from a signal handler) to make a running dump stop at its next chance, also in the
 * middle of a step that emits nothing, such as SQLite's snapshot copy. The dump then fails.
 */
extern volatile sig_atomic_t store_dump_cancel;
typedef int (*store_next_fn)(void *ctx, const char **collection, json_t **doc);

struct store_driver {
    const char *name;
    /* Opens a connection; runs pending migrations when `migrate`. NULL + message on error. */
    struct store *(*open)(const struct config *cfg, int migrate, char *err, size_t errlen);
    void (*close)(struct store *st);
    enum store_status (*ping)(struct store *st);

    /* Users. `email` is already normalized. */
    enum store_status (*user_create)(struct store *st, const char *email, const char *hash,
                                     int64_t now, struct store_user *out);
    enum store_status (*user_by_email)(struct store *st, const char *email, struct store_user *out);
    enum store_status (*user_by_id)(struct store *st, const char *id, struct store_user *out);
    enum store_status (*user_set_password)(struct store *st, const char *user_id, const char *hash,
                                           int64_t now);

    /*
     * Sessions. session_create fills s->id (a new UUID) and stores `token_hash` as the family's
     * current token. s->user_id, times, ip and user_agent come from the caller.
     */
    enum store_status (*session_create)(struct store *st, struct store_session *s,
                                        const uint8_t token_hash[32]);
    /*
     * Atomic rotation of `old_hash` to `new_hash` at `now`, extending idle expiry by `idle_ttl`.
     * OK: *out is the session after rotation. REUSED: old_hash had been rotated already; the
     * family is now revoked, out->id and out->user_id say whose. EXPIRED: idle/absolute expiry
     * passed or the session was revoked. NOT_FOUND: unknown token. Exactly one of two
     * concurrent rotations of the same token returns OK.
     */
    enum store_status (*session_rotate)(struct store *st, const uint8_t old_hash[32],
                                        const uint8_t new_hash[32], int64_t now, int64_t idle_ttl,
                                        struct store_session *out);
    /* Active session by id (not revoked, not expired at `now`). */
    enum store_status (*session_get)(struct store *st, const char *session_id, int64_t now,
                                     struct store_session *out);
    /* Logout: revokes the family whose current token is `token_hash`; *out says which. */
    enum store_status (*session_revoke_token)(struct store *st, const uint8_t token_hash[32],
                                              int64_t now, struct store_session *out);
    /* Revokes one session of `user_id` (NOT_FOUND when not theirs or not active). */
    enum store_status (*session_revoke)(struct store *st, const char *user_id,
                                        const char *session_id, int64_t now);
    /* Revokes every active session of `user_id` but `keep_id` (may be NULL). *count_r = how many.
     */
    enum store_status (*session_revoke_others)(struct store *st, const char *user_id,
                                               const char *keep_id, int64_t now, int *count_r);
    /* Active sessions of `user_id`, newest first, at most `max`. */
    enum store_status (*session_list)(struct store *st, const char *user_id, int64_t now,
                                      struct store_session *out, int max, int *count_r);

    /* Audit. */
    enum store_status (*audit_append)(struct store *st, const struct store_audit *a);

    /* Backup: every record of every collection, from one consistent snapshot. */
    enum store_status (*dump)(struct store *st, store_emit_fn emit, void *ctx);
    /*
     * Restore: replaces the whole content with the records `next` yields (atomically where
     * the backend can: SQLite in one transaction). ERROR when a record is malformed.
     */
    enum store_status (*restore)(struct store *st, store_next_fn next, void *ctx);
    /* Number of users (restore refuses a non-empty store without --force). */
    enum store_status (*count_users)(struct store *st, int64_t *count_r);

    /*
     * Retention (docs/architecture.md, "Retention"). Each call is one short batch that deletes
     * at most `batch` records in all; the caller repeats while a call deleted `batch`.
     *
     * prune_sessions: sessions that ended before `before` (the earliest of revoked_at,
     * idle_expires_at and expires_at: when it stopped being usable) with every refresh-token
     * hash of their family, hashes first, so a family goes only once its hashes are gone. A
     * session that has not ended keeps every hash (reuse detection needs the rotated ones for
     * as long as the family can be presented). *sessions_r and *tokens_r: records deleted
     * (the stored hashes: SQLite keeps the current one as a row, MongoDB in the session).
     * prune_audit: audit events with at < `before`; *count_r: how many.
     * On ERROR the counts still say what was deleted before the failure.
     */
    enum store_status (*prune_sessions)(struct store *st, int64_t before, int batch,
                                        int64_t *sessions_r, int64_t *tokens_r);
    enum store_status (*prune_audit)(struct store *st, int64_t before, int batch, int64_t *count_r);
};

/* The driver named `name` ("sqlite"), or NULL. */
const struct store_driver *store_driver_find(const char *name);

/* Fills `out` with a new random (v4) UUID from the OpenSSL CSPRNG. 0 or -1. */
int store_uuid(char out[STORE_ID_LEN + 1]);
/* 1 when `s` has the shape store_uuid makes (36 characters, lower-case hex, dashes at 8/13/18/23).
 */
int store_uuid_valid(const char *s);

/*
 * The email re-normalization migration (SQLite schema 2, MongoDB schema 2): each driver walks
 * its users oldest first (created_at, then id) and asks store_renorm_email what to do with each.
 * An account keeps its stored email when that is already normalized, when another account
 * already holds the normalized address (a collision) or when it is no longer an address: those
 * are logged here with the user ids only, never an address (docs/operations.md).
 */
struct store_renorm {
    int changed, collisions, invalid;
};
/* 1 when user `id`'s stored `email` is to become `norm`; 0 to keep it (invalid ones logged). */
int store_renorm_email(struct store_renorm *r, const char *id, const char *email,
                       char norm[STORE_EMAIL_MAX + 1]);
/* Logs and counts that user `id` keeps its email because user `holder` has the address. */
void store_renorm_collision(struct store_renorm *r, const char *id, const char *holder);
/* Logs the totals of the migration on `where` (a path or database name). */
void store_renorm_done(const struct store_renorm *r, const char *where);

/* ---- rules every driver shares ---- */

/* Whether a session can be used at `now`: not revoked and before both of its expiries. */
int store_session_active(int revoked, const struct store_session *s, int64_t now);

/* Idle expiry after a use at `now` (< expires_at): now + idle_ttl, capped at the absolute one. */
int64_t store_idle_deadline(int64_t now, int64_t idle_ttl, int64_t expires_at);

/* The longest prefix of s[0..len) of at most `max` bytes that does not split a UTF-8 sequence. */
size_t store_utf8_cut(const char *s, size_t len, size_t max);

#endif
