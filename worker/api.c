/* api: authentication API handlers (see api.h). */
#include "worker/api.h"

#include <math.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "shared/auth.h"
#include "shared/email.h"
#include "shared/log.h"
#include "shared/ratelimit.h"
#include "shared/testhook.h"
#include "worker/offload.h"
#include "worker/worker.h"

#define REFRESH_TOKEN_LEN 43 /* base64url of 32 random bytes */
#define MAX_TOKEN_LEN     8192
#define MAX_SESSIONS      100
#define API_CLIENT_ID     "authd" /* first-party API: the password grant has one client */

enum job_kind {
    J_REGISTER,
    J_LOGIN,
    J_REFRESH,
    J_LOGOUT,
    J_INTROSPECT,
    J_ME,
    J_PASSWORD,
    J_SESSIONS,
    J_SESSION_DELETE,
    J_READY,
};

struct job {
    enum job_kind kind;
    struct http_request *req;
    struct worker *w;
    int64_t now;
    char ip[STORE_IP_MAX + 1];
    char ua[STORE_UA_MAX + 1];
    char request_id[72];
    char email[STORE_EMAIL_MAX + 1]; /* normalized by email_normalize */
    char *password, *new_password;   /* wiped before free */
    size_t password_len, new_password_len;
    char user_id[STORE_ID_LEN + 1];
    char session_id[STORE_ID_LEN + 1];
    char refresh_token[REFRESH_TOKEN_LEN + 1];
    json_t *claims;               /* verified access-token claims */
    char account_key[RL_KEY_MAX]; /* login, password change: the lockout key */
    int account_failures;         /* failures counted by the lockout check, 0 = none */
    int account_by_redis;         /* the lockout check was answered by Redis */

    int status;
    int active; /* introspection: the token's session is active */
    const char *code, *message;
    struct store_user user;
    struct store_session session;
    struct store_session *sessions;
    int nsessions;
    char new_refresh[REFRESH_TOKEN_LEN + 1];
    char *access_token;
};

static const struct auth *auth_of(const struct job *j)
{
    return j->w->auth;
}

/* ---- per-thread store connection ---- */

struct thread_store {
    const struct store_driver *driver;
    struct store *st;
};

static pthread_key_t store_key;
static pthread_once_t store_once = PTHREAD_ONCE_INIT;

static void thread_store_free(void *p)
{
    struct thread_store *t = p;
    t->driver->close(t->st);
    free(t);
}

static void make_store_key(void)
{
    pthread_key_create(&store_key, thread_store_free);
}

/* The calling offload thread's connection, opened on first use; closed when the thread ends. */
static struct store *thread_store(struct job *j)
{
    char err[256];

    pthread_once(&store_once, make_store_key);
    struct thread_store *t = pthread_getspecific(store_key);
    if (t != NULL)
        return t->st;
    struct store *st = auth_of(j)->store->open(j->w->cfg, 0, err, sizeof(err));
    if (st == NULL) {
        log_error("store open: %s", err);
        return NULL;
    }
    if ((t = malloc(sizeof(*t))) == NULL) {
        auth_of(j)->store->close(st);
        return NULL;
    }
    t->driver = auth_of(j)->store;
    t->st = st;
    pthread_setspecific(store_key, t);
    return st;
}

/* ---- helpers ---- */

static void job_fail(struct job *j, int status, const char *code, const char *message)
{
    j->status = status;
    j->code = code;
    j->message = message;
}

static void store_failed(struct job *j)
{
    job_fail(j, 503, "store_unavailable", "The user store is unavailable; retry shortly.");
}

static void wipe_free(char *p, size_t len)
{
    if (p != NULL) {
        OPENSSL_cleanse(p, len);
        free(p);
    }
}

static void job_free(struct job *j)
{
    wipe_free(j->password, j->password_len);
    wipe_free(j->new_password, j->new_password_len);
    OPENSSL_cleanse(j->refresh_token, sizeof(j->refresh_token));
    OPENSSL_cleanse(j->new_refresh, sizeof(j->new_refresh));
    free(j->access_token);
    free(j->sessions);
    json_decref(j->claims);
    free(j);
}

/* Counts an audited event in authd_auth_events_total (pool threads: atomic increments). */
static void count_event(struct job *j, const char *event, const char *result)
{
    static const char *const names[HEALTH_AUTH_EVENTS] = {
        [AUTH_EV_LOGIN] = "login",     [AUTH_EV_REGISTER] = "register",
        [AUTH_EV_REFRESH] = "refresh", [AUTH_EV_REFRESH_REUSE] = "refresh_reuse",
        [AUTH_EV_LOGOUT] = "logout",   [AUTH_EV_PASSWORD_CHANGE] = "password_change",
    };

    for (int e = 0; e < HEALTH_AUTH_EVENTS; e++)
        if (strcmp(names[e], event) == 0)
            atomic_fetch_add_explicit(&j->w->hs->auth_events[e][strcmp(result, "success") != 0], 1,
                                      memory_order_relaxed);
}

static void audit(struct job *j, struct store *st, const char *event, const char *result,
                  const char *user_id, const char *detail)
{
    struct store_audit a = {j->now, event, result, user_id, j->ip, j->ua, j->request_id, detail};

    count_event(j, event, result);

    if (st != NULL)
        auth_of(j)->store->audit_append(st, &a);
    log_json(LOG_INFO,
             json_pack("{s:s, s:s, s:s, s:s?, s:s, s:s, s:s, s:s?}", "type", "audit", "event",
                       event, "result", result, "user_id", user_id, "ip", j->ip, "user_agent",
                       j->ua, "request_id", j->request_id, "detail", detail),
             0);
}

static void token_hash(const char *token, uint8_t out[32])
{
    SHA256((const unsigned char *)token, strlen(token), out);
}

/* A new refresh token (text into out) and its hash. */
static int new_refresh_token(char out[REFRESH_TOKEN_LEN + 1], uint8_t hash[32])
{
    unsigned char raw[32];

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    char *text = jwt_b64url_encode(raw, sizeof(raw));
    OPENSSL_cleanse(raw, sizeof(raw));
    if (text == NULL || strlen(text) != REFRESH_TOKEN_LEN) {
        free(text);
        return -1;
    }
    memcpy(out, text, REFRESH_TOKEN_LEN + 1);
    OPENSSL_cleanse(text, REFRESH_TOKEN_LEN);
    free(text);
    token_hash(out, hash);
    return 0;
}

static int sign_access(struct job *j, const char *user_id, const char *session_id)
{
    const struct config *cfg = j->w->cfg;
    struct jwt_access a = {.iss = cfg->tokens.issuer,
                           .aud = cfg->tokens.audience,
                           .sub = user_id,
                           .sid = session_id,
                           .iat = j->now,
                           .ttl = cfg->tokens.access_ttl,
                           .client_id = API_CLIENT_ID};

    j->access_token = jwt_sign(auth_of(j)->keys, &a);
    return j->access_token ? 0 : -1;
}

/* Creates a session for j->user and signs its first tokens. */
static void issue_session(struct job *j, struct store *st)
{
    const struct config *cfg = j->w->cfg;
    uint8_t hash[32];

    memset(&j->session, 0, sizeof(j->session));
    snprintf(j->session.user_id, sizeof(j->session.user_id), "%s", j->user.id);
    j->session.created_at = j->session.last_used_at = j->now;
    j->session.expires_at = j->now + cfg->tokens.refresh_ttl;
    j->session.idle_expires_at = j->now + cfg->tokens.refresh_idle_ttl;
    if (j->session.idle_expires_at > j->session.expires_at)
        j->session.idle_expires_at = j->session.expires_at;
    snprintf(j->session.ip, sizeof(j->session.ip), "%s", j->ip);
    snprintf(j->session.user_agent, sizeof(j->session.user_agent), "%s", j->ua);
    if (new_refresh_token(j->new_refresh, hash) < 0 ||
        auth_of(j)->store->session_create(st, &j->session, hash) != STORE_OK) {
        store_failed(j);
        return;
    }
    if (sign_access(j, j->user.id, j->session.id) < 0)
        job_fail(j, 500, "internal_error", "The access token could not be signed.");
}

/* ---- work (offload threads) ---- */

static void work_register(struct job *j, struct store *st)
{
    char phc[PASSWORD_PHC_MAX];

    if (password_hash(&auth_of(j)->params, j->password, j->password_len, phc, sizeof(phc)) < 0) {
        job_fail(j, 500, "internal_error", "The password could not be hashed.");
        return;
    }
    enum store_status r = auth_of(j)->store->user_create(st, j->email, phc, j->now, &j->user);
    OPENSSL_cleanse(phc, sizeof(phc));
    if (r == STORE_CONFLICT) {
        audit(j, st, "register", "failure", NULL, "email_taken");
        job_fail(j, 409, "email_taken", "An account with this email address already exists.");
        return;
    }
    if (r != STORE_OK) {
        store_failed(j);
        return;
    }
    audit(j, st, "register", "success", j->user.id, NULL);
    j->status = 201;
}

static void work_login(struct job *j, struct store *st)
{
    const struct auth *a = auth_of(j);
    int rehash = 0;
    enum store_status r = a->store->user_by_email(st, j->email, &j->user);

    if (r == STORE_NOT_FOUND) {
        /* same cost as a real account, with this generation's parameters */
        password_verify_dummy(a->dummy_phc, j->password, j->password_len);
        audit(j, st, "login", "failure", NULL, "unknown_email");
        job_fail(j, 401, "invalid_credentials", "The email or password is incorrect.");
        return;
    }
    if (r != STORE_OK) {
        store_failed(j);
        return;
    }
    if (password_verify(j->user.password_hash, j->password, j->password_len, &a->params, &rehash) !=
        1) {
        audit(j, st, "login", "failure", j->user.id, "wrong_password");
        job_fail(j, 401, "invalid_credentials", "The email or password is incorrect.");
        return;
    }
    if (rehash) {
        char phc[PASSWORD_PHC_MAX];
        if (password_hash(&a->params, j->password, j->password_len, phc, sizeof(phc)) == 0 &&
            a->store->user_set_password(st, j->user.id, phc, j->now) == STORE_OK)
            log_info("re-hashed the password of user %s with the current argon2id parameters",
                     j->user.id);
        OPENSSL_cleanse(phc, sizeof(phc));
    }
    issue_session(j, st);
    audit(j, st, "login", j->status ? "failure" : "success", j->user.id, NULL);
    if (j->status == 0)
        j->status = 200;
}

static void work_refresh(struct job *j, struct store *st)
{
    const struct store_driver *d = auth_of(j)->store;
    uint8_t old_hash[32], hash[32];

    token_hash(j->refresh_token, old_hash);
    if (new_refresh_token(j->new_refresh, hash) < 0) {
        job_fail(j, 500, "internal_error", "No token could be made.");
        return;
    }
    enum store_status r = d->session_rotate(st, old_hash, hash, j->now,
                                            j->w->cfg->tokens.refresh_idle_ttl, &j->session);
    if (r == STORE_REUSED) {
        audit(j, st, "refresh_reuse", "failure", j->session.user_id,
              "a rotated refresh token was presented again; the session is revoked");
    } else if (r == STORE_OK) {
        r = d->user_by_id(st, j->session.user_id, &j->user);
        if (r == STORE_OK && sign_access(j, j->user.id, j->session.id) == 0) {
            audit(j, st, "refresh", "success", j->user.id, NULL);
            j->status = 200;
            return;
        }
        if (r == STORE_OK) {
            job_fail(j, 500, "internal_error", "The access token could not be signed.");
            return;
        }
    } else if (r == STORE_ERROR) {
        store_failed(j);
        return;
    } else {
        audit(j, st, "refresh", "failure", j->session.user_id[0] ? j->session.user_id : NULL,
              r == STORE_EXPIRED ? "session_expired_or_revoked" : "unknown_token");
    }
    job_fail(j, 401, "invalid_grant", "The refresh token is invalid, expired or revoked.");
}

static void work_logout(struct job *j, struct store *st)
{
    uint8_t hash[32];

    token_hash(j->refresh_token, hash);
    enum store_status r = auth_of(j)->store->session_revoke_token(st, hash, j->now, &j->session);
    if (r == STORE_OK)
        audit(j, st, "logout", "success", j->session.user_id, NULL);
    else if (r == STORE_ERROR)
        store_failed(j);
    else
        audit(j, st, "logout", "failure", NULL, "unknown_token");
    if (j->status == 0)
        j->status = 204; /* RFC 7009: an unknown token is not an error */
}

/* The session named in a verified access token must still be active; a token without a
 * well-formed sid names none, so it is never active. */
static int session_active(struct job *j, struct store *st)
{
    if (!store_uuid_valid(j->session_id))
        return 0;
    enum store_status r = auth_of(j)->store->session_get(st, j->session_id, j->now, &j->session);
    if (r == STORE_ERROR) {
        store_failed(j);
        return -1;
    }
    return r == STORE_OK;
}

static void work_introspect(struct job *j, struct store *st)
{
    int active = session_active(j, st);
    if (active >= 0) {
        j->active = active;
        j->status = 200;
    }
}

static int bearer_user(struct job *j, struct store *st)
{
    int active = session_active(j, st);
    if (active < 0)
        return -1;
    if (!active) {
        job_fail(j, 401, "invalid_token", "The session of this access token has ended.");
        return -1;
    }
    enum store_status r = auth_of(j)->store->user_by_id(st, j->user_id, &j->user);
    if (r == STORE_NOT_FOUND)
        job_fail(j, 401, "invalid_token", "The user of this access token no longer exists.");
    else if (r != STORE_OK)
        store_failed(j);
    return r == STORE_OK ? 0 : -1;
}

static void work_me(struct job *j, struct store *st)
{
    if (bearer_user(j, st) == 0)
        j->status = 200;
}

static void work_password(struct job *j, struct store *st)
{
    const struct auth *a = auth_of(j);
    char phc[PASSWORD_PHC_MAX], *normalized = NULL;
    const char *code, *message;
    int rehash, revoked = 0;

    if (bearer_user(j, st) < 0)
        return;
    if (password_verify(j->user.password_hash, j->password, j->password_len, &a->params, &rehash) !=
        1) {
        audit(j, st, "password_change", "failure", j->user.id, "wrong_current_password");
        job_fail(j, 401, "invalid_credentials", "The current password is incorrect.");
        return;
    }
    if (password_policy_check(a->policy, j->new_password, j->new_password_len, j->user.email,
                              &normalized, &code, &message) < 0) {
        job_fail(j, 400, code, message);
        return;
    }
    int ok = password_hash(&a->params, normalized, strlen(normalized), phc, sizeof(phc)) == 0;
    wipe_free(normalized, strlen(normalized));
    /* Other sessions go first: a failure may leave the old password, never stale sessions. */
    if (!ok ||
        a->store->session_revoke_others(st, j->user.id, j->session_id, j->now, &revoked) !=
            STORE_OK ||
        a->store->user_set_password(st, j->user.id, phc, j->now) != STORE_OK) {
        OPENSSL_cleanse(phc, sizeof(phc));
        store_failed(j);
        return;
    }
    OPENSSL_cleanse(phc, sizeof(phc));
    char detail[64];
    snprintf(detail, sizeof(detail), "%d other session(s) revoked", revoked);
    audit(j, st, "password_change", "success", j->user.id, detail);
    j->status = 204;
}

static void work_sessions(struct job *j, struct store *st)
{
    if (bearer_user(j, st) < 0)
        return;
    j->sessions = calloc(MAX_SESSIONS, sizeof(*j->sessions));
    if (j->sessions == NULL ||
        auth_of(j)->store->session_list(st, j->user_id, j->now, j->sessions, MAX_SESSIONS,
                                        &j->nsessions) != STORE_OK) {
        store_failed(j);
        return;
    }
    j->status = 200;
}

static void work_session_delete(struct job *j, struct store *st)
{
    /* j->refresh_token carries the session id from the path here. */
    if (bearer_user(j, st) < 0)
        return;
    enum store_status r =
        auth_of(j)->store->session_revoke(st, j->user_id, j->refresh_token, j->now);
    if (r == STORE_NOT_FOUND) {
        job_fail(j, 404, "not_found", "No such active session.");
        return;
    }
    if (r != STORE_OK) {
        store_failed(j);
        return;
    }
    audit(j, st, "session_revoke", "success", j->user_id, NULL);
    j->status = 204;
}

static void work_ready(struct job *j, struct store *st)
{
    j->active = auth_of(j)->store->ping(st) == STORE_OK;
    j->status = 200;
}

static void job_work(void *arg)
{
    struct job *j = arg;
    static void (*const work[])(struct job *, struct store *) = {
        [J_REGISTER] = work_register,
        [J_LOGIN] = work_login,
        [J_REFRESH] = work_refresh,
        [J_LOGOUT] = work_logout,
        [J_INTROSPECT] = work_introspect,
        [J_ME] = work_me,
        [J_PASSWORD] = work_password,
        [J_SESSIONS] = work_sessions,
        [J_SESSION_DELETE] = work_session_delete,
        [J_READY] = work_ready,
    };
    struct store *st = thread_store(j);

    if (st == NULL) {
        if (j->kind == J_READY)
            j->status = 200; /* answered as "store": "down" */
        else
            store_failed(j);
        return;
    }
    work[j->kind](j, st);
}

/* ---- responses (event loop) ---- */

static json_t *iso_time(int64_t t)
{
    char buf[32];
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

static json_t *user_json(const struct store_user *u)
{
    return json_pack("{s:s, s:s, s:b, s:o}", "id", u->id, "email", u->email, "email_verified",
                     u->email_verified, "created_at", iso_time(u->created_at));
}

static json_t *token_response(struct job *j)
{
    return json_pack("{s:s, s:s, s:i, s:s, s:o}", "access_token", j->access_token, "token_type",
                     "Bearer", "expires_in", j->w->cfg->tokens.access_ttl, "refresh_token",
                     j->new_refresh, "user", user_json(&j->user));
}

static json_t *introspection(struct job *j)
{
    if (!j->active)
        return json_pack("{s:b}", "active", 0);
    json_t *o = json_pack("{s:b, s:s}", "active", 1, "token_type", "Bearer");
    const char *copy[] = {"sub", "iss", "aud", "exp", "iat", "nbf", "jti", "sid", "client_id"};
    for (size_t i = 0; o && i < sizeof(copy) / sizeof(copy[0]); i++) {
        json_t *v = json_object_get(j->claims, copy[i]);
        if (v != NULL)
            json_object_set(o, copy[i], v);
    }
    return o;
}

static json_t *sessions_json(struct job *j)
{
    json_t *arr = json_array();

    for (int i = 0; arr && i < j->nsessions; i++) {
        const struct store_session *s = &j->sessions[i];
        json_array_append_new(
            arr, json_pack("{s:s, s:o, s:o, s:o, s:s, s:s, s:b}", "id", s->id, "created_at",
                           iso_time(s->created_at), "last_used_at", iso_time(s->last_used_at),
                           "expires_at", iso_time(s->expires_at), "ip", s->ip, "user_agent",
                           s->user_agent, "current", strcmp(s->id, j->session_id) == 0));
    }
    return json_pack("{s:o}", "sessions", arr);
}

static void ready_reply(struct job *j)
{
    json_t *checks =
        json_pack("{s:s, s:s, s:s}", "workers", "ok", "store", j->active ? "ok" : "down",
                  "ratelimit", ratelimit_degraded(j->w->rl) ? "degraded" : "ok");

    if (j->active)
        http_reply_json(j->req, 200, json_pack("{s:s, s:o}", "status", "ready", "checks", checks));
    else
        http_reply_json(j->req, 503,
                        json_pack("{s:s, s:s, s:o}", "error", "not_ready", "message",
                                  "The user store does not answer.", "checks", checks));
}

static void job_done(void *arg)
{
    struct job *j = arg;
    struct http_request *req = j->req;

    if ((j->kind == J_LOGIN || j->kind == J_PASSWORD) && j->account_failures > 0) {
        /* Login: 200 = right password, 401 = wrong one. Password change: verified when it
         * succeeded (204) or the new password was refused (400, checked after the current
         * one); 401 invalid_credentials = wrong current password. Anything else (store down,
         * overloaded, session ended) was no guess: the failure counted up front is refunded. */
        int right = j->kind == J_LOGIN ? j->status == 200 : j->status == 204 || j->status == 400;
        int wrong = j->status == 401 &&
                    (j->kind == J_LOGIN || (j->code && !strcmp(j->code, "invalid_credentials")));
        if (right)
            ratelimit_account_success(j->w->rl, j->account_key);
        else if (wrong)
            ratelimit_account_failed(j->w->rl, j->account_failures);
        else
            ratelimit_account_refund(j->w->rl, j->account_key, j->account_by_redis);
    }

    if (j->status >= 400 || j->status == 0) {
        if (j->status == 0)
            job_fail(j, 500, "internal_error", "The request could not be completed.");
        if (j->status == 503)
            http_add_header(req, "Retry-After", "1");
        if (j->status == 401 &&
            (j->kind == J_ME || j->kind == J_SESSIONS || j->kind == J_SESSION_DELETE ||
             j->kind == J_PASSWORD) &&
            strcmp(j->code, "invalid_token") == 0)
            http_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        http_reply_error(req, j->status, j->code, j->message);
        job_free(j);
        return;
    }
    switch (j->kind) {
    case J_REGISTER:
        http_reply_json(req, 201, json_pack("{s:o}", "user", user_json(&j->user)));
        break;
    case J_LOGIN:
    case J_REFRESH:
        http_reply_json(req, 200, token_response(j));
        break;
    case J_INTROSPECT:
        http_reply_json(req, 200, introspection(j));
        break;
    case J_ME:
        http_reply_json(req, 200, json_pack("{s:o}", "user", user_json(&j->user)));
        break;
    case J_SESSIONS:
        http_reply_json(req, 200, sessions_json(j));
        break;
    case J_READY:
        ready_reply(j);
        break;
    case J_LOGOUT:
    case J_PASSWORD:
    case J_SESSION_DELETE:
        http_reply(req, 204, "application/json", "", 0);
        break;
    }
    job_free(j);
}

/* ---- request validation (event loop) ---- */

static struct job *job_new(struct http_request *req, enum job_kind kind)
{
    struct job *j = calloc(1, sizeof(*j));
    const char *ua = http_header(req, "user-agent");

    if (j == NULL) {
        http_reply_error(req, 500, "internal_error", "Out of memory.");
        return NULL;
    }
    j->kind = kind;
    j->req = req;
    j->w = http_worker(req);
    j->now = (int64_t)time(NULL);
    snprintf(j->ip, sizeof(j->ip), "%s", req->client_addr);
    snprintf(j->request_id, sizeof(j->request_id), "%s", req->request_id);
    /* The user agent is informational: keep printable ASCII, bounded. */
    size_t n = 0;
    for (const char *p = ua ? ua : ""; *p && n < sizeof(j->ua) - 1; p++)
        j->ua[n++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
    j->ua[n] = '\0';
    return j;
}

static void submit(struct job *j, int hashing)
{
    struct worker *w = j->w;
    struct offload *pool = hashing ? w->offload : w->store_pool;

    if (offload_submit(pool, job_work, job_done, j) < 0) {
        atomic_fetch_add_explicit(&w->hs->offload_rejected_total, 1, memory_order_relaxed);
        http_add_header(j->req, "Retry-After", "1");
        http_reply_error(j->req, 503, "overloaded", "The server is busy; retry shortly.");
        job_free(j);
    }
}

/* Parses the JSON object body; on failure answers 415/400 and returns NULL. */
static json_t *json_body(struct http_request *req)
{
    const char *ct = http_header(req, "content-type");
    size_t n = strlen("application/json");
    json_error_t err;

    if (ct == NULL || strncasecmp(ct, "application/json", n) != 0 ||
        (ct[n] != '\0' && ct[n] != ';' && ct[n] != ' ')) {
        http_reply_error(req, 415, "unsupported_media_type",
                         "Send the request body as Content-Type: application/json.");
        return NULL;
    }
    json_t *o = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &err);
    if (o == NULL || !json_is_object(o)) {
        json_decref(o);
        http_reply_error(req, 400, "invalid_request",
                         "The request body must be one valid UTF-8 JSON object.");
        return NULL;
    }
    return o;
}

/* A string member of at most `max` bytes without NUL; answers 400 and returns NULL if not. */
static const char *field(struct http_request *req, json_t *o, const char *name, size_t max,
                         size_t *len_r)
{
    json_t *v = json_object_get(o, name);
    char msg[160];

    if (json_is_string(v) && json_string_length(v) <= max &&
        strlen(json_string_value(v)) == json_string_length(v)) {
        if (len_r)
            *len_r = json_string_length(v);
        return json_string_value(v);
    }
    snprintf(msg, sizeof(msg), "Field \"%s\" is required: a string of at most %zu bytes.", name,
             max);
    http_reply_error(req, 400, "invalid_request", msg);
    return NULL;
}

_Static_assert(EMAIL_MAX == STORE_EMAIL_MAX, "a normalized email must fit the store");

/* The request's "email", normalized into j->email; answers 400 with the reason and -1 if not. */
static int email_field(struct http_request *req, json_t *o, struct job *j)
{
    size_t len;
    const char *email = field(req, o, "email", EMAIL_INPUT_MAX, &len);
    const char *why = NULL;
    char msg[160];

    if (email == NULL)
        return -1;
    if (email_normalize(email, len, j->email, sizeof(j->email), &why) < 0) {
        snprintf(msg, sizeof(msg), "Field \"email\" is not an email address: it %s.", why);
        http_reply_error(req, 400, "invalid_request", msg);
        return -1;
    }
    return 0;
}

/* Password bytes are bounded before any work: 4 bytes per code point at most. */
static size_t password_max_bytes(const struct worker *w)
{
    return (size_t)w->cfg->password.max_length * 4;
}

static int refresh_field(struct http_request *req, json_t *o, struct job *j)
{
    size_t len;
    const char *t = field(req, o, "refresh_token", 512, &len);

    if (t == NULL)
        return -1;
    /* Anything not shaped like our tokens cannot match: no store lookup, same answer. */
    snprintf(j->refresh_token, sizeof(j->refresh_token), "%s", len == REFRESH_TOKEN_LEN ? t : "");
    return 0;
}

/*
 * Verified-token cache (event loop only). ECDSA verification is most of the CPU of a token
 * check, and resource servers present the same token many times. A token string's signature
 * and claims cannot change while this worker's key ring is fixed (a new ring means a new worker
 * generation), so a token verified once is remembered by the SHA-256 of its text until its
 * exp + leeway. Session state is not cached: every request still asks the store.
 */
#define TOKEN_CACHE_SLOTS 512

static struct {
    unsigned char key[32];
    int64_t valid_until;
    json_t *claims;
} token_cache[TOKEN_CACHE_SLOTS];

static enum jwt_error verify_token(struct worker *w, const char *token, json_t **claims_r)
{
    unsigned char key[32];
    int64_t now = testhook_token_clock((int64_t)time(NULL));

    SHA256((const unsigned char *)token, strlen(token), key);
    unsigned idx = ((unsigned)key[0] << 8 | key[1]) % TOKEN_CACHE_SLOTS;
    if (token_cache[idx].claims != NULL && now <= token_cache[idx].valid_until &&
        memcmp(token_cache[idx].key, key, sizeof(key)) == 0) {
        *claims_r = json_incref(token_cache[idx].claims);
        return JWT_OK;
    }
    enum jwt_error e = jwt_verify(w->auth->keys, token, w->cfg->tokens.issuer,
                                  w->cfg->tokens.audience, now, w->cfg->tokens.leeway, claims_r);
    if (e == JWT_OK) {
        json_decref(token_cache[idx].claims);
        memcpy(token_cache[idx].key, key, sizeof(key));
        token_cache[idx].valid_until = jwt_valid_until(*claims_r, w->cfg->tokens.leeway);
        token_cache[idx].claims = json_incref(*claims_r);
    }
    return e;
}

void api_cache_clear(void)
{
    for (int i = 0; i < TOKEN_CACHE_SLOTS; i++) {
        json_decref(token_cache[i].claims);
        token_cache[i].claims = NULL;
    }
}

/* Verifies the bearer access token; on failure answers 401 and returns NULL. */
static json_t *bearer(struct http_request *req)
{
    struct worker *w = http_worker(req);
    const char *h = http_header(req, "authorization");
    json_t *claims = NULL;

    if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0 && strlen(h + 7) <= MAX_TOKEN_LEN &&
        verify_token(w, h + 7, &claims) == JWT_OK)
        return claims;
    http_add_header(req, "WWW-Authenticate",
                    h ? "Bearer error=\"invalid_token\"" : "Bearer realm=\"authd\"");
    http_reply_error(req, 401, "invalid_token",
                     h ? "The access token is invalid or expired."
                       : "An access token is required.");
    return NULL;
}

static void copy_claim(json_t *claims, const char *name, char *out, size_t outlen)
{
    const char *v = json_string_value(json_object_get(claims, name));
    snprintf(out, outlen, "%s", v && strlen(v) < outlen ? v : "");
}

/* A job for verified `claims` (stolen): the user and session they name. NULL on OOM (answered). */
static struct job *claims_job(struct http_request *req, enum job_kind kind, json_t *claims)
{
    struct job *j = job_new(req, kind);
    if (j == NULL) {
        json_decref(claims);
        return NULL;
    }
    j->claims = claims;
    copy_claim(claims, "sub", j->user_id, sizeof(j->user_id));
    copy_claim(claims, "sid", j->session_id, sizeof(j->session_id));
    return j;
}

/* Verifies the bearer token (answering 401 when it fails) and makes a job for its claims. */
static struct job *bearer_job(struct http_request *req, enum job_kind kind)
{
    json_t *claims = bearer(req);
    return claims ? claims_job(req, kind, claims) : NULL;
}

/* ---- handlers ---- */

void api_register(struct http_request *req)
{
    struct worker *w = http_worker(req);
    const char *code, *message;
    size_t len;
    json_t *o = json_body(req);
    struct job *j = o ? job_new(req, J_REGISTER) : NULL;

    if (j == NULL || email_field(req, o, j) < 0)
        goto fail;
    const char *pw = field(req, o, "password", password_max_bytes(w), &len);
    if (pw == NULL)
        goto fail;
    if (password_policy_check(w->auth->policy, pw, len, j->email, &j->password, &code, &message) <
        0) {
        http_reply_error(req, 400, code, message);
        goto fail;
    }
    j->password_len = strlen(j->password);
    json_decref(o);
    submit(j, 1);
    return;
fail:
    json_decref(o);
    if (j)
        job_free(j);
}

/* The account lockout answered: refuse (429, correct password or not) or verify. */
static void account_checked(void *arg, const struct rl_check *c)
{
    struct job *j = arg;

    if (c->denied >= 0) {
        char ra[32];
        double wait = c->item[0].r.retry_after;
        snprintf(ra, sizeof(ra), "%ld", wait < 1 ? 1L : (long)ceil(wait));
        http_add_header(j->req, "Retry-After", ra);
        http_reply_error(j->req, 429, "too_many_attempts",
                         j->kind == J_LOGIN
                             ? "Too many failed sign-in attempts for this account; retry after "
                               "the delay in Retry-After."
                             : "Too many wrong current passwords for this account; retry after "
                               "the delay in Retry-After.");
        job_free(j);
        return;
    }
    j->account_failures = c->item[0].r.failures;
    j->account_by_redis = c->by_redis;
    submit(j, 1);
}

/* Counts a password attempt on j->account_key (lockout schedule), then verifies it. */
static void submit_account_checked(struct job *j)
{
    const enum rl_rule rule = RL_ACCOUNT;
    const char *key = j->account_key;

    if (j->w->cfg->ratelimit.lockout.threshold == 0 || j->w->rl == NULL) {
        submit(j, 1);
        return;
    }
    ratelimit_check(j->w->rl, 1, &rule, &key, account_checked, j);
}

void api_login(struct http_request *req)
{
    struct worker *w = http_worker(req);
    size_t len;
    json_t *o = json_body(req);
    struct job *j = o ? job_new(req, J_LOGIN) : NULL;

    if (j == NULL || email_field(req, o, j) < 0)
        goto fail;
    const char *pw = field(req, o, "password", password_max_bytes(w), &len);
    if (pw == NULL)
        goto fail;
    j->password = password_normalize(pw, len, &j->password_len);
    if (j->password == NULL) {
        http_reply_error(req, 400, "invalid_request", "The password is not valid UTF-8.");
        goto fail;
    }
    json_decref(o);
    /* Keyed on the email whether or not an account exists: a lockout reveals nothing. */
    ratelimit_account_key(j->email, j->account_key);
    submit_account_checked(j);
    return;
fail:
    json_decref(o);
    if (j)
        job_free(j);
}

static void refresh_or_logout(struct http_request *req, enum job_kind kind)
{
    json_t *o = json_body(req);
    struct job *j = o ? job_new(req, kind) : NULL;

    if (j == NULL || refresh_field(req, o, j) < 0) {
        json_decref(o);
        if (j)
            job_free(j);
        return;
    }
    json_decref(o);
    if (j->refresh_token[0] == '\0' && kind == J_REFRESH) {
        http_reply_error(req, 401, "invalid_grant",
                         "The refresh token is invalid, expired or revoked.");
        job_free(j);
        return;
    }
    if (j->refresh_token[0] == '\0') {
        http_reply(req, 204, "application/json", "", 0);
        job_free(j);
        return;
    }
    submit(j, 0);
}

void api_refresh(struct http_request *req)
{
    refresh_or_logout(req, J_REFRESH);
}

void api_logout(struct http_request *req)
{
    refresh_or_logout(req, J_LOGOUT);
}

void api_introspect(struct http_request *req)
{
    struct worker *w = http_worker(req);
    json_t *claims = NULL;
    json_t *o = json_body(req);

    if (o == NULL)
        return;
    const char *token = field(req, o, "token", MAX_TOKEN_LEN, NULL);
    if (token == NULL) {
        json_decref(o);
        return;
    }
    enum jwt_error e = verify_token(w, token, &claims);
    json_decref(o);
    if (e != JWT_OK) {
        http_reply_json(req, 200, json_pack("{s:b}", "active", 0));
        return;
    }
    struct job *j = claims_job(req, J_INTROSPECT, claims);
    if (j)
        submit(j, 0);
}

void api_me(struct http_request *req)
{
    struct job *j = bearer_job(req, J_ME);
    if (j)
        submit(j, 0);
}

void api_me_password(struct http_request *req)
{
    struct worker *w = http_worker(req);
    size_t len, nlen;
    json_t *o = json_body(req);
    struct job *j = o ? bearer_job(req, J_PASSWORD) : NULL;

    if (j == NULL)
        goto fail;
    const char *cur = field(req, o, "current_password", password_max_bytes(w), &len);
    const char *nw = cur ? field(req, o, "new_password", password_max_bytes(w), &nlen) : NULL;
    if (nw == NULL)
        goto fail;
    j->password = password_normalize(cur, len, &j->password_len);
    j->new_password = malloc(nlen + 1);
    if (j->password == NULL || j->new_password == NULL) {
        http_reply_error(req, 400, "invalid_request", "The current password is not valid UTF-8.");
        goto fail;
    }
    memcpy(j->new_password, nw, nlen + 1);
    j->new_password_len = nlen;
    json_decref(o);
    /* A stolen access token must not allow brute-forcing the current password: the same
     * lockout schedule as sign-in, keyed on the user id of the token. */
    char uid[sizeof(j->user_id) + 8];
    snprintf(uid, sizeof(uid), "user:%s", j->user_id);
    ratelimit_account_key(uid, j->account_key);
    submit_account_checked(j);
    return;
fail:
    json_decref(o);
    if (j)
        job_free(j);
}

void api_me_sessions(struct http_request *req)
{
    struct job *j = bearer_job(req, J_SESSIONS);
    if (j)
        submit(j, 0);
}

void api_me_session_delete(struct http_request *req)
{
    const char *id = req->path + strlen("/v1/me/sessions/");
    struct job *j = bearer_job(req, J_SESSION_DELETE); /* authenticate before looking at the id */

    if (j == NULL)
        return;
    if (strlen(id) != STORE_ID_LEN) {
        http_reply_error(req, 404, "not_found", "No such active session.");
        job_free(j);
        return;
    }
    snprintf(j->refresh_token, sizeof(j->refresh_token), "%s", id);
    submit(j, 0);
}

void api_readiness(struct http_request *req)
{
    struct job *j = job_new(req, J_READY);
    if (j)
        submit(j, 0);
}

void api_jwks(struct http_request *req)
{
    const char *text = http_worker(req)->auth->jwks_json;
    http_reply(req, 200, "application/json", text, strlen(text));
}

void api_discovery(struct http_request *req)
{
    const char *text = http_worker(req)->auth->discovery_json;
    http_reply(req, 200, "application/json", text, strlen(text));
}
