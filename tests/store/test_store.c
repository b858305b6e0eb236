/*
 * The store conformance suite (shared/store.h): the same cases against every driver.
 *
 * The common tests run once per entry of `backends`: each test gets a fresh, migrated database
 * from its backend's `prepare` and its own connection. A backend may add tests that look under
 * the interface (SQLite: schema version, pragmas, file modes, raw rows; MongoDB: indexes,
 * documents, unreachable servers). The concurrency tests fork real processes that each open
 * their own connection and start together on a pipe. Times are fixed numbers: no test reads the
 * clock to decide an outcome.
 *
 * SQLite always runs. MongoDB runs when AUTHD_TEST_MONGO_URI names a server (scripts/test starts
 * the npm "congodb" server for it; any real MongoDB works unmodified), each test in a database
 * of its own that is dropped afterwards. A few cases need what only a real MongoDB has (unique
 * index enforcement, explain): they run when the server is one, detected through buildInfo
 * (AUTHD_TEST_MONGO_REAL=1 or 0 overrides), and are reported as skipped otherwise.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>

#include <mongoc/mongoc.h>
#include <sqlite3.h>

#include "shared/config.h"
#include "shared/log.h"
#include "shared/store.h"
#include "shared/store_mongo.h"
#include "shared/store_sqlite.h"

/* "Now" at the start of every test: in 2096, so MongoDB's TTL monitor never removes a test's
 * documents (their expiry dates derive from these times) while the test runs. */
#define T0           INT64_C(4000000000)
#define IDLE         INT64_C(3600)    /* idle ttl */
#define TTL          INT64_C(2592000) /* absolute ttl (30 days) */
#define HASH_A       "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
#define HASH_B       "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYXNo"
#define NCHILD       8
#define CHILD_FAILED 100 /* exit code of a racing child that could not run its call */

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        const char *hay_ = (hay), *needle_ = (needle);                                             \
        if (strstr(hay_, needle_) == NULL)                                                         \
            fail_msg("expected \"%s\" in \"%s\"", needle_, hay_);                                  \
    } while (0)

/* A session that is not usable: drivers may say either (store.h leaves it open for session_get). */
#define assert_inactive(rc) assert_true((rc) == STORE_EXPIRED || (rc) == STORE_NOT_FOUND)

struct fixture;

/* A user row as authd with schema 1 stored it (emails then only trimmed and ASCII lower-cased). */
struct v1_user {
    const char *email;
    int64_t created_at;
    char id[STORE_ID_LEN + 1];
};

/* The newest audit event as the backend stored it (NULL columns: is_null[i]). */
enum { A_EVENT, A_RESULT, A_USER_ID, A_IP, A_UA, A_REQUEST_ID, A_DETAIL, A_COUNT };
struct audit_row {
    int64_t at;
    char text[A_COUNT][2048];
    int is_null[A_COUNT];
};

struct backend {
    const char *driver; /* name for store_driver_find */
    /* NULL when the backend can run here, else why not (its tests are skipped). */
    const char *(*unavailable)(void);
    /* Points the environment at a fresh, empty database of this backend (config_load reads it). */
    int (*prepare)(struct fixture *fx);
    /* Removes what prepare made. */
    void (*discard)(struct fixture *fx);
    /* Reads the newest audit event back, bypassing the driver. 0 or -1. */
    int (*audit_last)(struct fixture *fx, struct audit_row *row);
    /* Tests that look under the interface, run after the common ones. */
    const struct CMUnitTest *extra;
    size_t nextra;
    /* Replaces the (closed) database with one of schema 1 holding `users` as stored. 0 or -1. */
    int (*seed_v1)(struct fixture *fx, const struct v1_user *users, size_t n);
};

struct fixture {
    const struct backend *be;
    const struct store_driver *drv;
    struct config *cfg;
    struct store *st;
    char dir[128];
    char path[192];
};

/* ---- helpers ---- */

static void hash_of(unsigned n, uint8_t out[32])
{
    for (int i = 0; i < 32; i++)
        out[i] = (uint8_t)(n * 31u + (unsigned)i * 7u + (n >> 8));
    memcpy(out, &n, sizeof(n));
}

static void assert_uuid(const char *id)
{
    assert_int_equal(strlen(id), STORE_ID_LEN);
    for (int i = 0; i < STORE_ID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(id[i], '-');
        else
            assert_non_null(strchr("0123456789abcdef", id[i]));
    }
    assert_int_equal(id[14], '4');
    assert_non_null(strchr("89ab", id[19]));
}

static void open_store(struct fixture *fx)
{
    char err[512] = "";

    fx->st = fx->drv->open(fx->cfg, 1, err, sizeof(err));
    if (fx->st == NULL)
        fail_msg("open: %s", err);
}

static void close_store(struct fixture *fx)
{
    if (fx->st != NULL)
        fx->drv->close(fx->st);
    fx->st = NULL;
}

static void new_user(struct fixture *fx, const char *email, struct store_user *u)
{
    assert_int_equal(fx->drv->user_create(fx->st, email, HASH_A, T0, u), STORE_OK);
}

/* A session of `user_id` created at `at`, whose current token is hash_of(n). */
static void new_session(struct fixture *fx, const char *user_id, int64_t at, int64_t idle_at,
                        int64_t expires_at, unsigned n, struct store_session *s)
{
    uint8_t h[32];

    memset(s, 0, sizeof(*s));
    snprintf(s->user_id, sizeof(s->user_id), "%s", user_id);
    s->created_at = at;
    s->last_used_at = at;
    s->idle_expires_at = idle_at;
    s->expires_at = expires_at;
    snprintf(s->ip, sizeof(s->ip), "192.0.2.%u", n % 250);
    snprintf(s->user_agent, sizeof(s->user_agent), "test-agent/%u", n);
    hash_of(n, h);
    assert_int_equal(fx->drv->session_create(fx->st, s, h), STORE_OK);
    assert_uuid(s->id);
}

static enum store_status rotate(struct fixture *fx, unsigned from, unsigned to, int64_t now,
                                struct store_session *out)
{
    uint8_t a[32], b[32];

    hash_of(from, a);
    hash_of(to, b);
    return fx->drv->session_rotate(fx->st, a, b, now, IDLE, out);
}

static void assert_session_equal(const struct store_session *a, const struct store_session *b)
{
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->user_id, b->user_id);
    assert_int_equal(a->created_at, b->created_at);
    assert_int_equal(a->last_used_at, b->last_used_at);
    assert_int_equal(a->idle_expires_at, b->idle_expires_at);
    assert_int_equal(a->expires_at, b->expires_at);
    assert_string_equal(a->ip, b->ip);
    assert_string_equal(a->user_agent, b->user_agent);
}

static int list_count(struct fixture *fx, const char *user_id, int64_t now)
{
    struct store_session list[16];
    int n = -1;

    assert_int_equal(fx->drv->session_list(fx->st, user_id, now, list, 16, &n), STORE_OK);
    return n;
}

/* ---- fixture ---- */

static int setup(void **state)
{
    const struct backend *be = *state;
    struct fixture *fx = calloc(1, sizeof(*fx));
    char *errors = NULL;
    char err[512] = "";

    if (fx == NULL)
        return -1;
    *state = fx;
    fx->be = be;
    fx->drv = store_driver_find(be->driver);
    if (fx->drv == NULL || be->prepare(fx) < 0)
        return -1;
    fx->cfg = config_load(NULL, &errors);
    unsetenv("AUTHD_STORE_DRIVER");
    unsetenv("AUTHD_STORE_PATH");
    unsetenv("AUTHD_STORE_URI");
    unsetenv("AUTHD_STORE_DATABASE");
    if (fx->cfg == NULL) {
        fprintf(stderr, "config_load: %s\n", errors ? errors : "?");
        free(errors);
        return -1;
    }
    fx->st = fx->drv->open(fx->cfg, 1, err, sizeof(err));
    if (fx->st == NULL) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    if (fx->st != NULL)
        fx->drv->close(fx->st);
    if (fx->be->discard != NULL)
        fx->be->discard(fx);
    config_free(fx->cfg);
    free(fx);
    return 0;
}

/* ---- common tests: users ---- */

static void ping(void **state)
{
    struct fixture *fx = *state;

    assert_int_equal(fx->drv->ping(fx->st), STORE_OK);
}

static void user_create_and_get(void **state)
{
    struct fixture *fx = *state;
    struct store_user u, g;

    assert_int_equal(fx->drv->user_create(fx->st, "alice@example.com", HASH_A, T0, &u), STORE_OK);
    assert_uuid(u.id);
    assert_string_equal(u.email, "alice@example.com");
    assert_string_equal(u.password_hash, HASH_A);
    assert_int_equal(u.email_verified, 0);
    assert_int_equal(u.created_at, T0);

    assert_int_equal(fx->drv->user_by_email(fx->st, "alice@example.com", &g), STORE_OK);
    assert_string_equal(g.id, u.id);
    assert_string_equal(g.email, u.email);
    assert_string_equal(g.password_hash, HASH_A);
    assert_int_equal(g.email_verified, 0);
    assert_int_equal(g.created_at, T0);

    memset(&g, 0, sizeof(g));
    assert_int_equal(fx->drv->user_by_id(fx->st, u.id, &g), STORE_OK);
    assert_string_equal(g.email, "alice@example.com");
    assert_string_equal(g.password_hash, HASH_A);

    assert_int_equal(fx->drv->user_by_email(fx->st, "bob@example.com", &g), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->user_by_email(fx->st, "ALICE@example.com", &g), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->user_by_id(fx->st, "00000000-0000-4000-8000-000000000000", &g),
                     STORE_NOT_FOUND);
}

static void user_duplicate_email(void **state)
{
    struct fixture *fx = *state;
    struct store_user a, b, g;

    new_user(fx, "carol@example.com", &a);
    assert_int_equal(fx->drv->user_create(fx->st, "carol@example.com", HASH_B, T0 + 5, &b),
                     STORE_CONFLICT);
    assert_int_equal(fx->drv->user_by_email(fx->st, "carol@example.com", &g), STORE_OK);
    assert_string_equal(g.id, a.id);
    assert_string_equal(g.password_hash, HASH_A);
    /* The connection is still usable after the constraint error. */
    new_user(fx, "dave@example.com", &b);
    assert_string_not_equal(a.id, b.id);
}

static void user_email_length(void **state)
{
    struct fixture *fx = *state;
    char email[STORE_EMAIL_MAX + 2];
    struct store_user u, g;

    memset(email, 'a', sizeof(email) - 1);
    email[sizeof(email) - 1] = '\0';
    memcpy(email + STORE_EMAIL_MAX - 12, "@example.com", 12); /* 255 bytes: one too many */
    assert_int_equal(fx->drv->user_create(fx->st, email, HASH_A, T0, &u), STORE_ERROR);
    assert_int_equal(fx->drv->user_by_email(fx->st, email, &g), STORE_NOT_FOUND);

    memmove(email, email + 1, strlen(email)); /* exactly STORE_EMAIL_MAX */
    assert_int_equal(strlen(email), STORE_EMAIL_MAX);
    assert_int_equal(fx->drv->user_create(fx->st, email, HASH_A, T0, &u), STORE_OK);
    assert_int_equal(fx->drv->user_by_email(fx->st, email, &g), STORE_OK);
    assert_string_equal(g.email, email);
}

static void user_set_password(void **state)
{
    struct fixture *fx = *state;
    struct store_user u, g;

    new_user(fx, "erin@example.com", &u);
    assert_int_equal(fx->drv->user_set_password(fx->st, u.id, HASH_B, T0 + 60), STORE_OK);
    assert_int_equal(fx->drv->user_by_id(fx->st, u.id, &g), STORE_OK);
    assert_string_equal(g.password_hash, HASH_B);
    assert_int_equal(g.created_at, T0);
    assert_int_equal(fx->drv->user_by_email(fx->st, "erin@example.com", &g), STORE_OK);
    assert_string_equal(g.password_hash, HASH_B);
    assert_int_equal(
        fx->drv->user_set_password(fx->st, "00000000-0000-4000-8000-000000000000", HASH_B, T0 + 60),
        STORE_NOT_FOUND);
}

/* ---- common tests: sessions ---- */

static void session_create_get_list(void **state)
{
    struct fixture *fx = *state;
    struct store_user u, v;
    struct store_session s[3], g, list[8];
    int n = -1;

    new_user(fx, "frank@example.com", &u);
    new_user(fx, "grace@example.com", &v);
    for (int i = 0; i < 3; i++)
        new_session(fx, u.id, T0 + 10 * i, T0 + 10 * i + IDLE, T0 + TTL, 1 + (unsigned)i, &s[i]);
    assert_string_not_equal(s[0].id, s[1].id);
    assert_string_not_equal(s[1].id, s[2].id);

    assert_int_equal(fx->drv->session_get(fx->st, s[1].id, T0 + 30, &g), STORE_OK);
    assert_session_equal(&g, &s[1]);
    assert_string_equal(g.ip, "192.0.2.2");
    assert_string_equal(g.user_agent, "test-agent/2");

    assert_int_equal(fx->drv->session_list(fx->st, u.id, T0 + 30, list, 8, &n), STORE_OK);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) /* newest first */
        assert_session_equal(&list[i], &s[2 - i]);
    assert_int_equal(fx->drv->session_list(fx->st, u.id, T0 + 30, list, 2, &n), STORE_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].id, s[2].id);
    assert_string_equal(list[1].id, s[1].id);
    assert_int_equal(list_count(fx, v.id, T0 + 30), 0);

    assert_int_equal(fx->drv->session_get(fx->st, "00000000-0000-4000-8000-000000000000", T0, &g),
                     STORE_NOT_FOUND);
}

static void session_fields_at_limits(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, g;
    uint8_t h[32];

    new_user(fx, "heidi@example.com", &u);
    memset(&s, 0, sizeof(s));
    snprintf(s.user_id, sizeof(s.user_id), "%s", u.id);
    s.created_at = s.last_used_at = T0;
    s.idle_expires_at = T0 + IDLE;
    s.expires_at = T0 + TTL;
    memset(s.ip, '6', STORE_IP_MAX);
    for (int i = 0; i < STORE_UA_MAX; i += 2) /* 128 two-byte characters: exactly full */
        memcpy(s.user_agent + i, "\xc3\xa9", 2);
    hash_of(7, h);
    assert_int_equal(fx->drv->session_create(fx->st, &s, h), STORE_OK);
    assert_int_equal(fx->drv->session_get(fx->st, s.id, T0, &g), STORE_OK);
    assert_int_equal(strlen(g.ip), STORE_IP_MAX);
    assert_int_equal(strlen(g.user_agent), STORE_UA_MAX);
    assert_session_equal(&g, &s);
}

static void rotate_chain(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, r, g;

    new_user(fx, "ivan@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);

    assert_int_equal(rotate(fx, 1, 2, T0 + 100, &r), STORE_OK);
    assert_string_equal(r.id, s.id);
    assert_string_equal(r.user_id, u.id);
    assert_int_equal(r.created_at, T0);
    assert_int_equal(r.last_used_at, T0 + 100);
    assert_int_equal(r.idle_expires_at, T0 + 100 + IDLE);
    assert_int_equal(r.expires_at, T0 + TTL);
    assert_string_equal(r.ip, s.ip);
    assert_string_equal(r.user_agent, s.user_agent);

    /* The new token rotates too, past the first idle expiry (the use extended it). */
    assert_int_equal(rotate(fx, 2, 3, T0 + IDLE + 50, &r), STORE_OK);
    assert_int_equal(r.last_used_at, T0 + IDLE + 50);
    assert_int_equal(r.idle_expires_at, T0 + 2 * IDLE + 50);

    assert_int_equal(fx->drv->session_get(fx->st, s.id, T0 + IDLE + 60, &g), STORE_OK);
    assert_session_equal(&g, &r);
}

static void rotate_reuse_revokes_family(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, r, g;

    new_user(fx, "judy@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    assert_int_equal(rotate(fx, 1, 2, T0 + 10, &r), STORE_OK);

    memset(&r, 0, sizeof(r));
    assert_int_equal(rotate(fx, 1, 9, T0 + 20, &r), STORE_REUSED);
    assert_string_equal(r.id, s.id);
    assert_string_equal(r.user_id, u.id);

    /* The family is gone: the newest token no longer works, the reuse's new one never existed. */
    assert_int_equal(rotate(fx, 2, 3, T0 + 30, &r), STORE_EXPIRED);
    assert_int_equal(rotate(fx, 9, 10, T0 + 30, &r), STORE_NOT_FOUND);
    assert_inactive(fx->drv->session_get(fx->st, s.id, T0 + 30, &g));
    assert_int_equal(list_count(fx, u.id, T0 + 30), 0);
    /* Presenting the rotated token again still reports reuse. */
    assert_int_equal(rotate(fx, 1, 11, T0 + 40, &r), STORE_REUSED);
    assert_string_equal(r.id, s.id);
}

static void rotate_unknown_token(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, r;

    assert_int_equal(rotate(fx, 1, 2, T0, &r), STORE_NOT_FOUND);
    new_user(fx, "ken@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    assert_int_equal(rotate(fx, 5, 6, T0 + 1, &r), STORE_NOT_FOUND);
    /* The real token is untouched by the failed attempt. */
    assert_int_equal(rotate(fx, 1, 2, T0 + 2, &r), STORE_OK);
}

static void rotate_idle_expiry(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session a, b, r, g;

    new_user(fx, "leo@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &a);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 2, &b);

    assert_int_equal(fx->drv->session_get(fx->st, a.id, T0 + IDLE - 1, &g), STORE_OK);
    assert_inactive(fx->drv->session_get(fx->st, a.id, T0 + IDLE, &g));
    assert_int_equal(rotate(fx, 1, 3, T0 + IDLE, &r), STORE_EXPIRED);
    /* Expiry revoked the family: an earlier clock does not bring it back. */
    assert_int_equal(rotate(fx, 1, 3, T0 + 1, &r), STORE_EXPIRED);
    assert_inactive(fx->drv->session_get(fx->st, a.id, T0 + 1, &g));

    assert_int_equal(rotate(fx, 2, 4, T0 + IDLE - 1, &r), STORE_OK);
    assert_string_equal(r.id, b.id);
    assert_int_equal(list_count(fx, u.id, T0 + IDLE), 1);
}

static void rotate_absolute_caps_idle(void **state)
{
    struct fixture *fx = *state;
    const int64_t exp = T0 + IDLE + IDLE / 2;
    struct store_user u;
    struct store_session s, r;

    new_user(fx, "mallory@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, exp, 1, &s);

    assert_int_equal(rotate(fx, 1, 2, T0 + 600, &r), STORE_OK);
    assert_int_equal(r.idle_expires_at, T0 + 600 + IDLE);
    assert_int_equal(rotate(fx, 2, 3, T0 + IDLE, &r), STORE_OK);
    assert_int_equal(r.idle_expires_at, exp); /* not T0 + 2 * IDLE */
    assert_int_equal(r.expires_at, exp);
    assert_int_equal(rotate(fx, 3, 4, exp - 1, &r), STORE_OK);
    assert_int_equal(r.idle_expires_at, exp);
    assert_int_equal(rotate(fx, 4, 5, exp, &r), STORE_EXPIRED);
}

static void revoke_by_token(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, o, r, g;
    uint8_t h[32];

    new_user(fx, "nina@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 50, &o);
    assert_int_equal(rotate(fx, 1, 2, T0 + 10, &r), STORE_OK);

    hash_of(1, h); /* rotated: not the family's current token, nothing revoked */
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 20, &r), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->session_get(fx->st, s.id, T0 + 20, &g), STORE_OK);

    hash_of(2, h);
    memset(&r, 0, sizeof(r));
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 20, &r), STORE_OK);
    assert_string_equal(r.id, s.id);
    assert_string_equal(r.user_id, u.id);
    assert_inactive(fx->drv->session_get(fx->st, s.id, T0 + 20, &g));
    assert_int_equal(rotate(fx, 2, 3, T0 + 30, &r), STORE_EXPIRED);
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 40, &r), STORE_NOT_FOUND);

    hash_of(99, h);
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 40, &r), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->session_get(fx->st, o.id, T0 + 40, &g), STORE_OK);
}

static void revoke_by_id(void **state)
{
    struct fixture *fx = *state;
    struct store_user a, b;
    struct store_session s, old, g;

    new_user(fx, "oscar@example.com", &a);
    new_user(fx, "peggy@example.com", &b);
    new_session(fx, a.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    new_session(fx, a.id, T0 - TTL, T0 - TTL + IDLE, T0, 2, &old); /* already expired */

    assert_int_equal(fx->drv->session_revoke(fx->st, b.id, s.id, T0 + 5), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->session_get(fx->st, s.id, T0 + 5, &g), STORE_OK);
    assert_int_equal(fx->drv->session_revoke(fx->st, a.id, s.id, T0 + 5), STORE_OK);
    assert_inactive(fx->drv->session_get(fx->st, s.id, T0 + 5, &g));
    assert_int_equal(fx->drv->session_revoke(fx->st, a.id, s.id, T0 + 6), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->session_revoke(fx->st, a.id, old.id, T0 + 6), STORE_NOT_FOUND);
    assert_int_equal(
        fx->drv->session_revoke(fx->st, a.id, "00000000-0000-4000-8000-000000000000", T0 + 6),
        STORE_NOT_FOUND);
    assert_int_equal(rotate(fx, 1, 3, T0 + 7, &g), STORE_EXPIRED);
}

static void revoke_others(void **state)
{
    struct fixture *fx = *state;
    struct store_user a, b;
    struct store_session s[3], t, list[8];
    int n = -1;

    new_user(fx, "quinn@example.com", &a);
    new_user(fx, "rupert@example.com", &b);
    for (int i = 0; i < 3; i++)
        new_session(fx, a.id, T0 + i, T0 + IDLE, T0 + TTL, 1 + (unsigned)i, &s[i]);
    new_session(fx, b.id, T0, T0 + IDLE, T0 + TTL, 10, &t);

    assert_int_equal(fx->drv->session_revoke_others(fx->st, a.id, s[1].id, T0 + 10, &n), STORE_OK);
    assert_int_equal(n, 2);
    assert_int_equal(fx->drv->session_list(fx->st, a.id, T0 + 10, list, 8, &n), STORE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].id, s[1].id);
    assert_int_equal(list_count(fx, b.id, T0 + 10), 1);
    assert_int_equal(rotate(fx, 1, 20, T0 + 11, &list[0]), STORE_EXPIRED);
    assert_int_equal(rotate(fx, 2, 21, T0 + 11, &list[0]), STORE_OK);

    assert_int_equal(fx->drv->session_revoke_others(fx->st, a.id, NULL, T0 + 12, &n), STORE_OK);
    assert_int_equal(n, 1);
    assert_int_equal(list_count(fx, a.id, T0 + 12), 0);
    assert_int_equal(list_count(fx, b.id, T0 + 12), 1);
    assert_int_equal(fx->drv->session_revoke_others(fx->st, a.id, NULL, T0 + 13, &n), STORE_OK);
    assert_int_equal(n, 0);
}

/* A session needs its user (SQLite: a foreign key; MongoDB: a lookup first). */
static void session_of_unknown_user(void **state)
{
    struct fixture *fx = *state;
    struct store_session s = {.created_at = T0, .last_used_at = T0};
    uint8_t h[32];

    snprintf(s.user_id, sizeof(s.user_id), "00000000-0000-4000-8000-000000000000");
    s.idle_expires_at = T0 + IDLE;
    s.expires_at = T0 + TTL;
    hash_of(1, h);
    assert_int_equal(fx->drv->session_create(fx->st, &s, h), STORE_NOT_FOUND);
    assert_int_equal(rotate(fx, 1, 2, T0, &s), STORE_NOT_FOUND); /* the token was rolled back */
}

/* ---- common tests: audit ---- */

static void audit_append(void **state)
{
    struct fixture *fx = *state;
    struct store_audit a = {.at = T0, .event = "login", .result = "failure"};
    struct audit_row row;
    char ua[400];

    assert_int_equal(fx->drv->audit_append(fx->st, &a), STORE_OK);
    if (fx->be->audit_last != NULL) {
        assert_int_equal(fx->be->audit_last(fx, &row), 0);
        assert_int_equal(row.at, T0);
        assert_string_equal(row.text[A_EVENT], "login");
        assert_string_equal(row.text[A_RESULT], "failure");
        for (int i = A_USER_ID; i < A_COUNT; i++)
            assert_true(row.is_null[i]);
    }

    memset(ua, 'u', sizeof(ua) - 1); /* longer than any user agent is kept */
    ua[sizeof(ua) - 1] = '\0';
    a = (struct store_audit){.at = T0 + 1,
                             .event = "refresh_reuse",
                             .result = "success",
                             .user_id = "00000000-0000-4000-8000-000000000001",
                             .ip = "2001:db8::1",
                             .user_agent = ua,
                             .request_id = "req-42",
                             .detail = "rotated token presented"};
    assert_int_equal(fx->drv->audit_append(fx->st, &a), STORE_OK);
    if (fx->be->audit_last != NULL) {
        assert_int_equal(fx->be->audit_last(fx, &row), 0);
        assert_int_equal(row.at, T0 + 1);
        assert_string_equal(row.text[A_EVENT], "refresh_reuse");
        assert_string_equal(row.text[A_RESULT], "success");
        assert_string_equal(row.text[A_USER_ID], a.user_id);
        assert_string_equal(row.text[A_IP], "2001:db8::1");
        assert_int_equal(strlen(row.text[A_UA]), STORE_UA_MAX);
        assert_memory_equal(row.text[A_UA], ua, STORE_UA_MAX);
        assert_string_equal(row.text[A_REQUEST_ID], "req-42");
        assert_string_equal(row.text[A_DETAIL], "rotated token presented");
    }
}

/* ---- common tests: concurrency between processes ---- */

typedef enum store_status (*race_fn)(const struct store_driver *drv, struct store *st, int i);

/*
 * Runs `fn` in NCHILD forked processes, each on its own connection, released together once all
 * are connected; counts[status] is how many returned each status (counts[CHILD_FAILED]: could not
 * run). With `open_late`, the children open (and migrate) after the release instead. The parent's
 * connection is closed across the fork: SQLite connections must not cross one.
 */
static void race(struct fixture *fx, race_fn fn, int open_late, int counts[CHILD_FAILED + 1])
{
    int ready[2], go[2], status;
    pid_t pids[NCHILD];
    char buf[NCHILD];
    ssize_t got = 0, r;

    memset(counts, 0, sizeof(int) * (CHILD_FAILED + 1));
    close_store(fx);
    assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
    assert_int_equal(pipe2(go, O_CLOEXEC), 0);
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < NCHILD; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            char err[512] = "", c = 'r';
            int code = CHILD_FAILED;
            struct store *st = NULL;

            close(ready[0]);
            close(go[1]);
            alarm(60); /* a wedged child dies instead of hanging the suite */
            if (!open_late)
                st = fx->drv->open(fx->cfg, 0, err, sizeof(err));
            if (write(ready[1], &c, 1) == 1 && read(go[0], &c, 1) == 1 && open_late)
                st = fx->drv->open(fx->cfg, 1, err, sizeof(err));
            if (st == NULL)
                fprintf(stderr, "child %d: open: %s\n", i, err);
            else
                code = (int)fn(fx->drv, st, i);
            if (st != NULL)
                fx->drv->close(st);
            _exit(code);
        }
    }
    close(ready[1]);
    close(go[0]);
    while (got < NCHILD && (r = read(ready[0], buf, sizeof(buf))) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        assert_true(r > 0);
        got += r;
    }
    assert_int_equal(got, NCHILD);
    memset(buf, 'g', sizeof(buf));
    assert_int_equal(write(go[1], buf, NCHILD), NCHILD); /* one byte releases each child */
    close(ready[0]);
    close(go[1]);
    for (int i = 0; i < NCHILD; i++) {
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status));
        int code = WEXITSTATUS(status);
        counts[code <= STORE_ERROR ? code : CHILD_FAILED]++;
    }
    open_store(fx);
}

static enum store_status race_register(const struct store_driver *drv, struct store *st, int i)
{
    struct store_user u;

    return drv->user_create(st, "race@example.com", HASH_A, T0 + i, &u);
}

static enum store_status race_rotate(const struct store_driver *drv, struct store *st, int i)
{
    struct store_session s;
    uint8_t old[32], new[32];

    hash_of(1, old);
    hash_of(100 + (unsigned)i, new);
    return drv->session_rotate(st, old, new, T0 + 10, IDLE, &s);
}

static void concurrent_register(void **state)
{
    struct fixture *fx = *state;
    int counts[CHILD_FAILED + 1];
    struct store_user u;

    race(fx, race_register, 0, counts);
    assert_int_equal(counts[STORE_OK], 1);
    assert_int_equal(counts[STORE_CONFLICT], NCHILD - 1);
    assert_int_equal(fx->drv->user_by_email(fx->st, "race@example.com", &u), STORE_OK);
    assert_uuid(u.id);
}

static void concurrent_rotate(void **state)
{
    struct fixture *fx = *state;
    int counts[CHILD_FAILED + 1], current = 0;
    struct store_user u;
    struct store_session s, r;

    new_user(fx, "sybil@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    race(fx, race_rotate, 0, counts);
    assert_int_equal(counts[STORE_OK], 1);
    assert_int_equal(counts[STORE_REUSED], NCHILD - 1);

    /* Reuse revoked the family: the winner's new token is dead, the losers' never existed. */
    assert_inactive(fx->drv->session_get(fx->st, s.id, T0 + 20, &r));
    for (unsigned i = 0; i < NCHILD; i++) {
        enum store_status rc = rotate(fx, 100 + i, 200 + i, T0 + 20, &r);
        if (rc == STORE_EXPIRED)
            current++;
        else
            assert_int_equal(rc, STORE_NOT_FOUND);
    }
    assert_int_equal(current, 1);
}

/* ---- common tests: backup (dump, restore, count) ---- */

/* A dump as canonical lines "collection<TAB>json" (keys sorted; audit ids left out: a driver
 * may number them anew). */
struct records {
    size_t n, next;
    char *line[256];
    char collection[32];
};

static int collect(void *ctx, const char *collection, json_t *doc)
{
    struct records *r = ctx;
    json_t *copy = json_deep_copy(doc);
    char *text;

    if (r->n == sizeof(r->line) / sizeof(r->line[0]) || copy == NULL)
        return -1;
    if (!strcmp(collection, "audit_events"))
        json_object_del(copy, "id");
    text = json_dumps(copy, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(copy);
    if (text == NULL || asprintf(&r->line[r->n], "%s\t%s", collection, text) < 0)
        return -1;
    free(text);
    r->n++;
    return 0;
}

static int feed(void *ctx, const char **collection, json_t **doc)
{
    struct records *r = ctx;
    const char *tab;

    if (r->next == r->n)
        return 0;
    tab = strchr(r->line[r->next], '\t');
    snprintf(r->collection, sizeof(r->collection), "%.*s", (int)(tab - r->line[r->next]),
             r->line[r->next]);
    *collection = r->collection;
    *doc = json_loads(tab + 1, 0, NULL);
    r->next++;
    return *doc != NULL ? 1 : -1;
}

static void records_free(struct records *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->line[i]);
    memset(r, 0, sizeof(*r));
}

static int cmp_lines(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void dump_into(struct fixture *fx, struct records *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(fx->drv->dump(fx->st, collect, r), STORE_OK);
    qsort(r->line, r->n, sizeof(r->line[0]), cmp_lines);
}

static void assert_same_records(struct records *a, struct records *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++)
        assert_string_equal(a->line[i], b->line[i]);
}

static void restore_from(struct fixture *fx, struct records *r)
{
    r->next = 0;
    assert_int_equal(fx->drv->restore(fx->st, feed, r), STORE_OK);
}

/* Users, a rotated family, a logged-out one, a live one and audit events. */
static void populate(struct fixture *fx, struct store_user *u1, struct store_session *s1)
{
    struct store_user u2;
    struct store_session s2, s3, r;
    struct store_audit a = {.at = T0 + 40, .event = "login", .result = "success"};
    uint8_t h[32];

    new_user(fx, "wendy@example.com", u1);
    new_user(fx, "xavier@example.com", &u2);
    assert_int_equal(fx->drv->user_set_password(fx->st, u2.id, HASH_B, T0 + 5), STORE_OK);
    new_session(fx, u1->id, T0, T0 + IDLE, T0 + TTL, 1, s1);
    assert_int_equal(rotate(fx, 1, 2, T0 + 10, &r), STORE_OK);
    assert_int_equal(rotate(fx, 2, 3, T0 + 20, &r), STORE_OK);
    new_session(fx, u1->id, T0, T0 + IDLE, T0 + TTL, 4, &s2);
    hash_of(4, h);
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 30, &r), STORE_OK);
    new_session(fx, u2.id, T0 + 1, T0 + IDLE, T0 + TTL, 5, &s3);
    assert_int_equal(fx->drv->audit_append(fx->st, &a), STORE_OK);
    a = (struct store_audit){T0 + 41,       "refresh", "failure", u1->id,
                             "2001:db8::2", "ua",      "req-1",   "why"};
    assert_int_equal(fx->drv->audit_append(fx->st, &a), STORE_OK);
}

/* What populate() made behaves as before after a restore (checks change the content). */
static void assert_populated(struct fixture *fx, const struct store_user *u1,
                             const struct store_session *s1)
{
    struct store_user g;
    struct store_session r;
    int64_t n = -1;

    assert_int_equal(fx->drv->count_users(fx->st, &n), STORE_OK);
    assert_int_equal(n, 2);
    assert_int_equal(fx->drv->user_by_email(fx->st, "wendy@example.com", &g), STORE_OK);
    assert_string_equal(g.id, u1->id);
    assert_string_equal(g.password_hash, HASH_A);
    assert_int_equal(fx->drv->user_by_email(fx->st, "xavier@example.com", &g), STORE_OK);
    assert_string_equal(g.password_hash, HASH_B);
    assert_int_equal(fx->drv->session_get(fx->st, s1->id, T0 + 50, &r), STORE_OK);
    assert_int_equal(r.last_used_at, T0 + 20);
    assert_int_equal(list_count(fx, u1->id, T0 + 50), 1); /* the logged-out one is not listed */
    assert_int_equal(rotate(fx, 5, 9, T0 + 50, &r), STORE_OK);
    assert_int_equal(rotate(fx, 3, 7, T0 + 50, &r), STORE_OK);
    assert_string_equal(r.id, s1->id);
    assert_int_equal(rotate(fx, 1, 8, T0 + 60, &r), STORE_REUSED); /* rotated before the dump */
    assert_string_equal(r.id, s1->id);
    assert_int_equal(rotate(fx, 4, 10, T0 + 60, &r), STORE_EXPIRED); /* logged out */
}

static void backup_round_trip(void **state)
{
    struct fixture *fx = *state;
    struct store_user u1, g;
    struct store_session s1, r;
    struct records a, b;
    int64_t n = -1;

    assert_int_equal(fx->drv->count_users(fx->st, &n), STORE_OK);
    assert_int_equal(n, 0);
    populate(fx, &u1, &s1);
    dump_into(fx, &a);
    assert_int_equal(a.n, 2 + 3 + 5 + 2);    /* users, sessions, tokens (3 current), audit */
    new_user(fx, "yolanda@example.com", &g); /* after the dump: gone after the restore */
    assert_int_equal(rotate(fx, 3, 6, T0 + 45, &r), STORE_OK);
    restore_from(fx, &a);
    assert_int_equal(fx->drv->user_by_email(fx->st, "yolanda@example.com", &g), STORE_NOT_FOUND);
    assert_int_equal(rotate(fx, 6, 11, T0 + 46, &r), STORE_NOT_FOUND);
    dump_into(fx, &b);
    assert_same_records(&a, &b);
    records_free(&b);
    assert_populated(fx, &u1, &s1);
    records_free(&a);
}

static void restore_malformed_keeps_content(void **state)
{
    struct fixture *fx = *state;
    struct store_user u, g;
    struct records r = {0};

    new_user(fx, "zoe@example.com", &u);
    r.line[r.n++] = strdup("users\t{\"id\": \"00000000-0000-4000-8000-000000000009\","
                           " \"email\": \"new@example.com\", \"email_verified\": 0,"
                           " \"password_hash\": null, \"created_at\": 1, \"updated_at\": 1}");
    r.line[r.n++] = strdup("users\t{\"id\": 7, \"email\": \"bad@example.com\"}");
    assert_int_equal(fx->drv->restore(fx->st, feed, &r), STORE_ERROR);
    assert_int_equal(fx->drv->user_by_email(fx->st, "zoe@example.com", &g), STORE_OK);
    assert_string_equal(g.id, u.id);
    assert_int_equal(fx->drv->user_by_email(fx->st, "new@example.com", &g), STORE_NOT_FOUND);
    records_free(&r);
    r.line[r.n++] = strdup("nonsense\t{}");
    assert_int_equal(fx->drv->restore(fx->st, feed, &r), STORE_ERROR);
    assert_int_equal(fx->drv->user_by_email(fx->st, "zoe@example.com", &g), STORE_OK);
    records_free(&r);
}

/* The whole log file at `path`, malloc'd. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = calloc(1, 65536);
    size_t n;

    assert_non_null(f);
    assert_non_null(buf);
    n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void assert_email_of(struct fixture *fx, const char *id, const char *email)
{
    struct store_user g;

    assert_int_equal(fx->drv->user_by_id(fx->st, id, &g), STORE_OK);
    assert_string_equal(g.email, email);
}

static void assert_owner(struct fixture *fx, const char *email, const char *id)
{
    struct store_user g;

    assert_int_equal(fx->drv->user_by_email(fx->st, email, &g), STORE_OK);
    assert_string_equal(g.id, id);
}

/*
 * Schema 2 re-normalizes stored emails (shared/email.c): the oldest account takes a normalized
 * address nobody holds, one that holds it already keeps it, and the others keep what they had,
 * as do addresses that are no longer valid; the log names user ids, never an address.
 */
static void email_migration(void **state)
{
    struct fixture *fx = *state;
    struct v1_user u[] = {
        {"jose\xcc\x81@example.com", T0 - 300, ""},       /* NFD: 1 holds its NFC form */
        {"jos\xc3\xa9@example.com", T0 - 100, ""},        /* NFC: already normalized */
        {"\xef\xbc\xa5ve@example.com", T0 - 150, ""},     /* fullwidth E: stored first, collides */
        {"\xef\xbd\x85ve@example.com", T0 - 200, ""},     /* fullwidth e: older, takes eve@ */
        {"mallory\xe2\x80\x8b@example.com", T0 - 50, ""}, /* zero-width space: now invalid */
        {"us\xd0\xb5r@example.com", T0 - 40, ""},         /* Cyrillic e: now invalid */
        {"bob@b\303\234cher.de", T0 - 30, ""},            /* IDN (Ü): to its A-label */
        {"alice@example.com", T0 - 20, ""},               /* unchanged */
    };
    enum { N = sizeof(u) / sizeof(u[0]) };
    char logpath[256], line[256];
    char *log;

    for (int i = 0; i < N; i++)
        assert_int_equal(store_uuid(u[i].id), 0);
    close_store(fx);
    assert_int_equal(fx->be->seed_v1(fx, u, N), 0);
    snprintf(logpath, sizeof(logpath), "/tmp/test_store_email.%d.log", (int)getpid());
    unlink(logpath);
    assert_int_equal(log_open(logpath), 0);
    open_store(fx); /* migrates */
    close_store(fx);
    open_store(fx); /* nothing left to do: no second round of log lines */
    log_open(NULL);
    log = slurp(logpath);
    unlink(logpath);
    assert_owner(fx, "jos\xc3\xa9@example.com", u[1].id);
    assert_email_of(fx, u[0].id, u[0].email);
    assert_owner(fx, "eve@example.com", u[3].id);
    assert_email_of(fx, u[2].id, u[2].email);
    assert_email_of(fx, u[4].id, u[4].email);
    assert_email_of(fx, u[5].id, u[5].email);
    assert_owner(fx, "bob@xn--bcher-kva.de", u[6].id);
    assert_owner(fx, "alice@example.com", u[7].id);
    snprintf(line, sizeof(line),
             "user %s keeps its stored email: its normalized address belongs "
             "to user %s",
             u[0].id, u[1].id);
    assert_contains(log, line);
    snprintf(line, sizeof(line),
             "user %s keeps its stored email: its normalized address belongs "
             "to user %s",
             u[2].id, u[3].id);
    assert_contains(log, line);
    for (int i = 4; i <= 5; i++) {
        snprintf(line, sizeof(line), "user %s keeps its stored email, which is no longer a valid",
                 u[i].id);
        assert_contains(log, line);
    }
    assert_contains(log, "2 address(es) re-normalized, 2 kept after a collision, 2 kept as no");
    assert_null(strstr(log, "example")); /* no address in the log */
    assert_null(strstr(log, "bcher"));
    assert_int_equal(strstr(strstr(log, "re-normalized") + 1, "re-normalized"), NULL);
    free(log);
}

/* ---- common tests: retention ---- */

/* Records of each collection in a dump: users, sessions, refresh_tokens, audit_events. */
static void count_records(struct fixture *fx, int64_t n[4])
{
    static const char *const names[4] = {STORE_COLLECTIONS};
    struct records r;

    dump_into(fx, &r);
    memset(n, 0, 4 * sizeof(n[0]));
    for (size_t i = 0; i < r.n; i++)
        for (int c = 0; c < 4; c++)
            if (strncmp(r.line[i], names[c], strlen(names[c])) == 0 &&
                r.line[i][strlen(names[c])] == '\t')
                n[c]++;
    records_free(&r);
}

/* prune_sessions until a call deletes nothing; asserts every call kept within `batch`. */
static void prune_all(struct fixture *fx, int64_t before, int batch, int64_t *sessions_r,
                      int64_t *tokens_r)
{
    int64_t s, t;
    int calls = 0;

    *sessions_r = *tokens_r = 0;
    do {
        assert_int_equal(fx->drv->prune_sessions(fx->st, before, batch, &s, &t), STORE_OK);
        assert_true(s >= 0 && t >= 0 && s + t <= batch);
        *sessions_r += s;
        *tokens_r += t;
        assert_true(++calls < 1000);
    } while (s + t > 0);
}

/*
 * Sessions that ended (idle expiry, logout) before the cutoff go with their hashes: their
 * rotated tokens are unknown afterwards. Sessions that are live, or ended after the cutoff,
 * stay whole, and reuse of a live family's rotated token is still detected.
 */
static void prune_sessions_ended(void **state)
{
    struct fixture *fx = *state;
    const int64_t before = T0 + 2 * IDLE;
    struct store_user u;
    struct store_session idle, out, live, late, r;
    int64_t n[4], ps, pt;
    uint8_t h[32];

    new_user(fx, "pruned@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &idle); /* ends at T0 + 20 + IDLE */
    assert_int_equal(rotate(fx, 1, 2, T0 + 10, &r), STORE_OK);
    assert_int_equal(rotate(fx, 2, 3, T0 + 20, &r), STORE_OK);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 10, &out); /* logged out at T0 + 30 */
    assert_int_equal(rotate(fx, 10, 11, T0 + 10, &r), STORE_OK);
    hash_of(11, h);
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 30, &r), STORE_OK);
    new_session(fx, u.id, T0 + IDLE, T0 + 2 * IDLE, T0 + TTL, 20, &live);
    assert_int_equal(rotate(fx, 20, 21, T0 + IDLE + 10, &r), STORE_OK);
    new_session(fx, u.id, T0 + IDLE, T0 + 3 * IDLE, T0 + TTL, 30, &late);
    hash_of(30, h);
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, before + 5, &r), STORE_OK);
    count_records(fx, n);
    assert_int_equal(n[1], 4);
    assert_int_equal(n[2], 3 + 2 + 2 + 1);

    prune_all(fx, before, 100, &ps, &pt);
    assert_int_equal(ps, 2);
    assert_true(pt >= 3 && pt <= 5); /* rotated 1, 2, 10; current 3, 11 where they are rows */
    count_records(fx, n);
    assert_int_equal(n[0], 1);
    assert_int_equal(n[1], 2);
    assert_int_equal(n[2], 2 + 1); /* live: 20 rotated, 21 current; late: 30 */

    /* The pruned families are unknown now, no longer "reused" or "expired". */
    assert_int_equal(rotate(fx, 1, 50, before, &r), STORE_NOT_FOUND);
    assert_int_equal(rotate(fx, 3, 51, before, &r), STORE_NOT_FOUND);
    assert_int_equal(rotate(fx, 10, 52, before, &r), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->session_get(fx->st, idle.id, before, &r), STORE_NOT_FOUND);
    assert_int_equal(fx->drv->session_get(fx->st, out.id, before, &r), STORE_NOT_FOUND);
    /* Ended after the cutoff: kept (revoked, so EXPIRED, not NOT_FOUND). */
    assert_int_equal(fx->drv->session_get(fx->st, late.id, before, &r), STORE_EXPIRED);
    /* The live family rotates on, and replaying its rotated token is still reuse. */
    assert_int_equal(fx->drv->session_get(fx->st, live.id, before, &r), STORE_OK);
    assert_int_equal(rotate(fx, 21, 22, before, &r), STORE_OK);
    assert_int_equal(rotate(fx, 20, 53, before + 1, &r), STORE_REUSED);
    assert_string_equal(r.id, live.id);
}

/* A call deletes at most `batch` records of each kind, and repeated calls finish the job. */
static void prune_batches_bounded(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, r;
    struct store_audit a = {.event = "login", .result = "success"};
    int64_t n[4], ps, pt, got[5];
    uint8_t h[32];

    new_user(fx, "batch@example.com", &u);
    for (unsigned i = 0; i < 6; i++) {
        new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 100 + 10 * i, &s);
        assert_int_equal(rotate(fx, 100 + 10 * i, 101 + 10 * i, T0 + 1, &r), STORE_OK);
        assert_int_equal(rotate(fx, 101 + 10 * i, 102 + 10 * i, T0 + 2, &r), STORE_OK);
        hash_of(102 + 10 * i, h);
        assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 3, &r), STORE_OK);
    }
    assert_int_equal(fx->drv->prune_sessions(fx->st, T0 + 4, 0, &ps, &pt), STORE_OK);
    assert_int_equal(ps + pt, 0);
    prune_all(fx, T0 + 4, 4, &ps, &pt);
    assert_int_equal(ps, 6);
    assert_true(pt >= 6 * 2 && pt <= 6 * 3);
    count_records(fx, n);
    assert_int_equal(n[1] + n[2], 0);

    for (int i = 0; i < 9; i++) {
        a.at = i < 7 ? T0 + i : T0 + 100 + i;
        assert_int_equal(fx->drv->audit_append(fx->st, &a), STORE_OK);
    }
    for (int i = 0; i < 5; i++)
        assert_int_equal(fx->drv->prune_audit(fx->st, T0 + 50, 3, &got[i]), STORE_OK);
    assert_int_equal(got[0], 3);
    assert_int_equal(got[1], 3);
    assert_int_equal(got[2], 1);
    assert_int_equal(got[3], 0);
    count_records(fx, n);
    assert_int_equal(n[3], 2);
    assert_int_equal(n[0], 1);
}

static const struct {
    const char *name;
    CMUnitTestFunction fn;
} common_tests[] = {
    {"ping", ping},
    {"user_create_and_get", user_create_and_get},
    {"user_duplicate_email", user_duplicate_email},
    {"user_email_length", user_email_length},
    {"user_set_password", user_set_password},
    {"email_migration", email_migration},
    {"session_create_get_list", session_create_get_list},
    {"session_fields_at_limits", session_fields_at_limits},
    {"rotate_chain", rotate_chain},
    {"rotate_reuse_revokes_family", rotate_reuse_revokes_family},
    {"rotate_unknown_token", rotate_unknown_token},
    {"rotate_idle_expiry", rotate_idle_expiry},
    {"rotate_absolute_caps_idle", rotate_absolute_caps_idle},
    {"revoke_by_token", revoke_by_token},
    {"revoke_by_id", revoke_by_id},
    {"revoke_others", revoke_others},
    {"session_of_unknown_user", session_of_unknown_user},
    {"audit_append", audit_append},
    {"concurrent_register", concurrent_register},
    {"concurrent_rotate", concurrent_rotate},
    {"backup_round_trip", backup_round_trip},
    {"restore_malformed_keeps_content", restore_malformed_keeps_content},
    {"prune_sessions_ended", prune_sessions_ended},
    {"prune_batches_bounded", prune_batches_bounded},
};

/* ---- sqlite backend ---- */

static const char *const sqlite_suffixes[] = {"", "-wal", "-shm", "-journal"};

static int sqlite_prepare(struct fixture *fx)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(fx->dir, sizeof(fx->dir), "%s/test_store.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(fx->dir) == NULL)
        return -1;
    snprintf(fx->path, sizeof(fx->path), "%s/authd.db", fx->dir);
    setenv("AUTHD_STORE_DRIVER", "sqlite", 1);
    setenv("AUTHD_STORE_PATH", fx->path, 1);
    return 0;
}

static void sqlite_remove(struct fixture *fx)
{
    char p[256];

    for (size_t i = 0; i < sizeof(sqlite_suffixes) / sizeof(sqlite_suffixes[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", fx->path, sqlite_suffixes[i]);
        unlink(p);
    }
}

static void sqlite_discard(struct fixture *fx)
{
    sqlite_remove(fx);
    rmdir(fx->dir);
}

/* A connection of the test's own, past the driver. */
static sqlite3 *raw_open(struct fixture *fx)
{
    sqlite3 *db = NULL;

    if (sqlite3_open_v2(fx->path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        fail_msg("sqlite3_open_v2(%s): %s", fx->path, sqlite3_errmsg(db));
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, msg);
        sqlite3_free(msg);
        fail();
    }
}

/* The first column of the first row of `sql`, as text (into buf) and as an integer. */
static int64_t raw_query(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *q = NULL;
    int64_t v;

    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK || sqlite3_step(q) != SQLITE_ROW)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    v = sqlite3_column_int64(q, 0);
    if (buf != NULL)
        snprintf(buf, len, "%s", (const char *)sqlite3_column_text(q, 0));
    sqlite3_finalize(q);
    return v;
}

static int sqlite_audit_last(struct fixture *fx, struct audit_row *row)
{
    sqlite3 *db = raw_open(fx);
    sqlite3_stmt *q = NULL;
    int rc = -1;

    memset(row, 0, sizeof(*row));
    if (sqlite3_prepare_v2(db,
                           "SELECT at, event, result, user_id, ip, user_agent, request_id, detail"
                           " FROM audit_events ORDER BY id DESC LIMIT 1",
                           -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW) {
        row->at = sqlite3_column_int64(q, 0);
        for (int i = 0; i < A_COUNT; i++) {
            const char *t = (const char *)sqlite3_column_text(q, i + 1);
            row->is_null[i] = t == NULL;
            snprintf(row->text[i], sizeof(row->text[i]), "%s", t ? t : "");
        }
        rc = 0;
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return rc;
}

static void sqlite_schema_and_pragmas(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = raw_open(fx);
    char buf[64], p[256];
    struct stat sb;

    assert_int_equal(raw_query(db, "PRAGMA user_version", NULL, 0), STORE_SQLITE_SCHEMA_VERSION);
    raw_query(db, "PRAGMA journal_mode", buf, sizeof(buf));
    assert_string_equal(buf, "wal");
    assert_int_equal(raw_query(db,
                               "SELECT count(*) FROM sqlite_master WHERE name IN ('users',"
                               " 'sessions', 'refresh_tokens', 'audit_events', 'sessions_user_id',"
                               " 'refresh_tokens_session_id', 'audit_events_user_at')",
                               NULL, 0),
                     7);
    sqlite3_close(db);
    for (size_t i = 0; i < 3; i++) { /* the database, its -wal and -shm */
        snprintf(p, sizeof(p), "%s%s", fx->path, sqlite_suffixes[i]);
        assert_int_equal(stat(p, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, 0600);
    }
}

static void sqlite_migrations_idempotent(void **state)
{
    struct fixture *fx = *state;
    struct store *again, *plain;
    struct store_user u, g;
    char err[512] = "";
    sqlite3 *db;

    new_user(fx, "trent@example.com", &u);
    again = fx->drv->open(fx->cfg, 1, err, sizeof(err)); /* beside the open one */
    assert_non_null(again);
    fx->drv->close(again);
    close_store(fx);
    open_store(fx);
    plain = fx->drv->open(fx->cfg, 0, err, sizeof(err));
    assert_non_null(plain);
    assert_int_equal(fx->drv->user_by_email(plain, "trent@example.com", &g), STORE_OK);
    assert_string_equal(g.id, u.id);
    fx->drv->close(plain);
    db = raw_open(fx);
    assert_int_equal(raw_query(db, "PRAGMA user_version", NULL, 0), STORE_SQLITE_SCHEMA_VERSION);
    assert_int_equal(raw_query(db, "SELECT count(*) FROM users", NULL, 0), 1);
    sqlite3_close(db);
}

static void sqlite_newer_version_refused(void **state)
{
    struct fixture *fx = *state;
    char err[512] = "", sql[64];
    sqlite3 *db;

    close_store(fx);
    db = raw_open(fx);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", STORE_SQLITE_SCHEMA_VERSION + 1);
    raw_exec(db, sql);
    sqlite3_close(db);
    assert_null(fx->drv->open(fx->cfg, 1, err, sizeof(err)));
    assert_contains(err, fx->path);
    assert_contains(err, "newer");
    err[0] = '\0';
    assert_null(fx->drv->open(fx->cfg, 0, err, sizeof(err)));
    assert_contains(err, "newer");
    db = raw_open(fx); /* and nothing was changed */
    assert_int_equal(raw_query(db, "PRAGMA user_version", NULL, 0),
                     STORE_SQLITE_SCHEMA_VERSION + 1);
    sqlite3_close(db);
}

static void sqlite_unmigrated_refused(void **state)
{
    struct fixture *fx = *state;
    char err[512] = "";
    struct stat sb;

    close_store(fx);
    sqlite_remove(fx);
    assert_null(fx->drv->open(fx->cfg, 0, err, sizeof(err)));
    assert_contains(err, "migrations");
    open_store(fx); /* migrate = 1 creates the schema */
    assert_int_equal(stat(fx->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
}

static void sqlite_not_a_database(void **state)
{
    struct fixture *fx = *state;
    char err[512] = "";
    int fd;

    close_store(fx);
    sqlite_remove(fx);
    fd = open(fx->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    for (int i = 0; i < 64; i++)
        assert_int_equal(write(fd, "this is not an SQLite database, just text..\n", 44), 44);
    close(fd);
    assert_null(fx->drv->open(fx->cfg, 1, err, sizeof(err)));
    assert_contains(err, fx->path);
}

static void sqlite_token_rows_and_reasons(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session a, b, c, d, r;
    char buf[64], sql[256];
    uint8_t h[32];
    sqlite3 *db;
    int n;

    new_user(fx, "uma@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &a);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 2, &b);
    new_session(fx, u.id, T0, T0 + 10, T0 + TTL, 3, &c);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 4, &d);
    assert_int_equal(rotate(fx, 1, 11, T0 + 1, &r), STORE_OK);
    assert_int_equal(rotate(fx, 1, 12, T0 + 2, &r), STORE_REUSED);
    assert_int_equal(rotate(fx, 3, 13, T0 + 20, &r), STORE_EXPIRED);
    hash_of(2, h);
    assert_int_equal(fx->drv->session_revoke_token(fx->st, h, T0 + 3, &r), STORE_OK);
    assert_int_equal(fx->drv->session_revoke_others(fx->st, u.id, NULL, T0 + 4, &n), STORE_OK);
    assert_int_equal(n, 1);

    db = raw_open(fx);
    /* Only 32-byte hashes are stored; a's family has one rotated and one current hash. */
    assert_int_equal(
        raw_query(db, "SELECT count(*) FROM refresh_tokens WHERE length(hash) <> 32", NULL, 0), 0);
    snprintf(sql, sizeof(sql),
             "SELECT group_concat(state, ',') FROM (SELECT state FROM refresh_tokens"
             " WHERE session_id = '%s' ORDER BY state)",
             a.id);
    raw_query(db, sql, buf, sizeof(buf));
    assert_string_equal(buf, "current,rotated");
    const struct {
        const char *id, *reason;
        int64_t at;
    } want[] = {{a.id, "reuse", T0 + 2},
                {b.id, "logout", T0 + 3},
                {c.id, "expired", T0 + 20},
                {d.id, "revoked", T0 + 4}};
    for (size_t i = 0; i < 4; i++) {
        snprintf(sql, sizeof(sql), "SELECT revoke_reason FROM sessions WHERE id = '%s'",
                 want[i].id);
        raw_query(db, sql, buf, sizeof(buf));
        assert_string_equal(buf, want[i].reason);
        snprintf(sql, sizeof(sql), "SELECT revoked_at FROM sessions WHERE id = '%s'", want[i].id);
        assert_int_equal(raw_query(db, sql, NULL, 0), want[i].at);
    }
    sqlite3_close(db);
}

/* Rows written by something else (an older authd, a hand edit) are cut to the fields' size. */
static void sqlite_long_rows_truncated(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, g;
    char sql[256];
    sqlite3 *db;

    new_user(fx, "victor@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    db = raw_open(fx);
    snprintf(sql, sizeof(sql),
             "UPDATE sessions SET ip = printf('%%.60c', '1'),"
             " user_agent = 'a' || replace(printf('%%.300c', 'x'), 'x', char(233))"
             " WHERE id = '%s'",
             s.id);
    raw_exec(db, sql);
    sqlite3_close(db);

    assert_int_equal(fx->drv->session_get(fx->st, s.id, T0, &g), STORE_OK);
    assert_int_equal(strlen(g.ip), STORE_IP_MAX);
    /* 'a' then two-byte characters: 256 bytes would split one, so 255 are kept. */
    assert_int_equal(strlen(g.user_agent), STORE_UA_MAX - 1);
    assert_int_equal(g.user_agent[0], 'a');
    for (int i = 1; i < STORE_UA_MAX - 1; i += 2)
        assert_memory_equal(g.user_agent + i, "\xc3\xa9", 2);
}

static enum store_status race_ping(const struct store_driver *drv, struct store *st, int i)
{
    return drv->ping(st);
}

/* Every worker opens with migrations at start-up: many first opens of a new file at once. */
static void sqlite_concurrent_first_open(void **state)
{
    struct fixture *fx = *state;
    int counts[CHILD_FAILED + 1];
    sqlite3 *db;

    close_store(fx);
    sqlite_remove(fx);
    race(fx, race_ping, 1, counts);
    assert_int_equal(counts[STORE_OK], NCHILD);
    db = raw_open(fx);
    assert_int_equal(raw_query(db, "PRAGMA user_version", NULL, 0), STORE_SQLITE_SCHEMA_VERSION);
    sqlite3_close(db);
}

/* Schema 1 as authd 0.1 created it (store_sqlite.c's first migration), frozen here. */
static const char sqlite_schema_v1[] =
    "CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE NOT NULL,"
    " email_verified INTEGER NOT NULL DEFAULT 0, password_hash TEXT,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE sessions (id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
    " created_at INTEGER NOT NULL, last_used_at INTEGER NOT NULL,"
    " idle_expires_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, revoked_at INTEGER,"
    " revoke_reason TEXT, ip TEXT, user_agent TEXT);"
    "CREATE INDEX sessions_user_id ON sessions(user_id);"
    "CREATE TABLE refresh_tokens (hash BLOB PRIMARY KEY CHECK (length(hash) = 32),"
    " session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,"
    " state TEXT NOT NULL CHECK (state IN ('current', 'rotated')),"
    " created_at INTEGER NOT NULL, rotated_at INTEGER);"
    "CREATE INDEX refresh_tokens_session_id ON refresh_tokens(session_id);"
    "CREATE TABLE audit_events (id INTEGER PRIMARY KEY, at INTEGER NOT NULL,"
    " event TEXT NOT NULL, result TEXT NOT NULL, user_id TEXT, ip TEXT, user_agent TEXT,"
    " request_id TEXT, detail TEXT);"
    "CREATE INDEX audit_events_user_at ON audit_events(user_id, at);"
    "PRAGMA user_version = 1;";

static int sqlite_seed_v1(struct fixture *fx, const struct v1_user *users, size_t n)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int rc = -1;

    sqlite_remove(fx);
    if (sqlite3_open_v2(fx->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(db, sqlite_schema_v1, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT INTO users (id, email, password_hash, created_at, updated_at)"
                           " VALUES (?1, ?2, ?3, ?4, ?4)",
                           -1, &q, NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(q, 1, users[i].id, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, users[i].email, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, HASH_A, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 4, users[i].created_at);
        if (sqlite3_step(q) != SQLITE_DONE)
            goto out;
        sqlite3_reset(q);
    }
    chmod(fx->path, 0600);
    rc = 0;
out:
    if (rc < 0)
        fprintf(stderr, "seed %s: %s\n", fx->path, sqlite3_errmsg(db));
    sqlite3_finalize(q);
    sqlite3_close(db);
    return rc;
}

/* The whole EXPLAIN QUERY PLAN of `sql`, its detail column joined by "; ". */
static void raw_plan(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *q = NULL;
    char ex[1024];
    size_t used = 0;

    snprintf(ex, sizeof(ex), "EXPLAIN QUERY PLAN %s", sql);
    if (sqlite3_prepare_v2(db, ex, -1, &q, NULL) != SQLITE_OK)
        fail_msg("%s: %s", ex, sqlite3_errmsg(db));
    buf[0] = '\0';
    while (sqlite3_step(q) == SQLITE_ROW && used < len)
        used += (size_t)snprintf(buf + used, len - used, "%s; ", sqlite3_column_text(q, 3));
    sqlite3_finalize(q);
}

/*
 * Migration 3 adds the retention indexes to a version 1 file, and the pruning queries (as
 * store_sqlite.c spells them) search those indexes instead of scanning the tables.
 */
static void sqlite_prune_uses_indexes(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = raw_open(fx);
    char plan[1024];

    raw_exec(db, "DROP INDEX sessions_ended_at; DROP INDEX audit_events_at;"
                 " PRAGMA user_version = 1");
    sqlite3_close(db);
    close_store(fx);
    open_store(fx);
    db = raw_open(fx);
    assert_int_equal(raw_query(db, "PRAGMA user_version", NULL, 0), STORE_SQLITE_SCHEMA_VERSION);
    raw_plan(db,
             "SELECT t.rowid FROM sessions JOIN refresh_tokens t ON t.session_id = sessions.id"
             " WHERE min(idle_expires_at, expires_at, coalesce(revoked_at, expires_at)) < 5"
             " LIMIT 10",
             plan, sizeof(plan));
    assert_contains(plan, "INDEX sessions_ended_at");
    assert_contains(plan, "INDEX refresh_tokens_session_id");
    raw_plan(db,
             "SELECT rowid FROM sessions WHERE min(idle_expires_at, expires_at,"
             " coalesce(revoked_at, expires_at)) < 5 AND NOT EXISTS (SELECT 1 FROM"
             " refresh_tokens t WHERE t.session_id = sessions.id) LIMIT 10",
             plan, sizeof(plan));
    assert_contains(plan, "INDEX sessions_ended_at");
    raw_plan(db, "SELECT id FROM audit_events WHERE at < 5 ORDER BY at LIMIT 10", plan,
             sizeof(plan));
    assert_contains(plan, "INDEX audit_events_at");
    sqlite3_close(db);
}

static const struct CMUnitTest sqlite_tests[] = {
    cmocka_unit_test(sqlite_prune_uses_indexes),     cmocka_unit_test(sqlite_schema_and_pragmas),
    cmocka_unit_test(sqlite_migrations_idempotent),  cmocka_unit_test(sqlite_newer_version_refused),
    cmocka_unit_test(sqlite_unmigrated_refused),     cmocka_unit_test(sqlite_not_a_database),
    cmocka_unit_test(sqlite_token_rows_and_reasons), cmocka_unit_test(sqlite_long_rows_truncated),
    cmocka_unit_test(sqlite_concurrent_first_open),
};

/* ---- mongo backend ---- */

static const char *mongo_uri(void)
{
    const char *u = getenv("AUTHD_TEST_MONGO_URI");
    return u != NULL && u[0] != '\0' ? u : NULL;
}

static const char *mongo_unavailable(void)
{
    return mongo_uri() ? NULL
                       : "AUTHD_TEST_MONGO_URI is not set (scripts/test starts a server for it)";
}

static int mongo_prepare(struct fixture *fx)
{
    static int seq;

    /* fx->dir holds the database name: one per test, dropped by mongo_discard */
    snprintf(fx->dir, sizeof(fx->dir), "authd_test_%d_%d", (int)getpid(), ++seq);
    setenv("AUTHD_STORE_DRIVER", "mongo", 1);
    setenv("AUTHD_STORE_URI", mongo_uri(), 1);
    setenv("AUTHD_STORE_DATABASE", fx->dir, 1);
    return 0;
}

/* A client of the test's own, past the driver (never kept across a fork). */
static mongoc_client_t *raw_client(void)
{
    bson_error_t e;
    mongoc_uri_t *uri;
    mongoc_client_t *c;

    mongoc_init(); /* the driver did it already; a second call is a no-op */
    uri = mongoc_uri_new_with_error(mongo_uri(), &e);
    if (uri == NULL)
        fail_msg("AUTHD_TEST_MONGO_URI: %s", e.message);
    c = mongoc_client_new_from_uri(uri);
    mongoc_client_set_error_api(c, MONGOC_ERROR_API_VERSION_2);
    mongoc_uri_destroy(uri);
    return c;
}

static void mongo_discard(struct fixture *fx)
{
    mongoc_client_t *c = raw_client();
    mongoc_database_t *db = mongoc_client_get_database(c, fx->dir);
    bson_error_t e;

    if (!mongoc_database_drop(db, &e))
        fprintf(stderr, "drop database %s: %s\n", fx->dir, e.message);
    mongoc_database_destroy(db);
    mongoc_client_destroy(c);
}

/* The documents of `collection` matching `filter` (JSON), newest _id first, at most `max`. */
static int raw_find(struct fixture *fx, const char *collection, const char *filter, bson_t *out,
                    int max)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll = mongoc_client_get_collection(c, fx->dir, collection);
    bson_t *f = bson_new_from_json((const uint8_t *)filter, -1, NULL);
    bson_t *opts = BCON_NEW("sort", "{", "_id", BCON_INT32(-1), "}");
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, f, opts, NULL);
    const bson_t *doc;
    bson_error_t e;
    int n = 0;

    while (n < max && mongoc_cursor_next(cur, &doc))
        bson_copy_to(doc, &out[n++]);
    if (mongoc_cursor_error(cur, &e))
        fail_msg("find %s: %s", collection, e.message);
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    bson_destroy(f);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
    return n;
}

static void raw_text(const bson_t *d, const char *key, char *buf, size_t len, int *is_null)
{
    bson_iter_t it;

    buf[0] = '\0';
    *is_null = !bson_iter_init_find(&it, d, key) || BSON_ITER_HOLDS_NULL(&it);
    if (!*is_null && BSON_ITER_HOLDS_UTF8(&it))
        snprintf(buf, len, "%s", bson_iter_utf8(&it, NULL));
}

static int64_t raw_int(const bson_t *d, const char *key)
{
    bson_iter_t it;

    if (!bson_iter_init_find(&it, d, key))
        fail_msg("no field %s", key);
    if (BSON_ITER_HOLDS_DATE_TIME(&it))
        return bson_iter_date_time(&it);
    return bson_iter_as_int64(&it);
}

static int mongo_audit_last(struct fixture *fx, struct audit_row *row)
{
    static const char *const keys[A_COUNT] = {"event",      "result",     "user_id", "ip",
                                              "user_agent", "request_id", "detail"};
    bson_t doc;

    memset(row, 0, sizeof(*row));
    if (raw_find(fx, "audit_events", "{}", &doc, 1) != 1)
        return -1;
    row->at = raw_int(&doc, "at");
    for (int i = 0; i < A_COUNT; i++)
        raw_text(&doc, keys[i], row->text[i], sizeof(row->text[i]), &row->is_null[i]);
    bson_destroy(&doc);
    return 0;
}

/* Schema 1's documents: the users as stored and {name: "schema", version: 1}. */
static int mongo_seed_v1(struct fixture *fx, const struct v1_user *users, size_t n)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *uc = mongoc_client_get_collection(c, fx->dir, "users");
    mongoc_collection_t *mc = mongoc_client_get_collection(c, fx->dir, "authd_meta");
    bson_t *f = BCON_NEW("name", "schema");
    bson_t *v = BCON_NEW("$set", "{", "version", BCON_INT32(1), "}");
    bson_error_t e;
    int rc = 0;

    for (size_t i = 0; i < n && rc == 0; i++) {
        bson_t *d = BCON_NEW("id", BCON_UTF8(users[i].id), "email", BCON_UTF8(users[i].email),
                             "email_verified", BCON_INT32(0), "password_hash", BCON_UTF8(HASH_A),
                             "created_at", BCON_INT64(users[i].created_at), "updated_at",
                             BCON_INT64(users[i].created_at));
        if (!mongoc_collection_insert_one(uc, d, NULL, NULL, &e))
            rc = -1;
        bson_destroy(d);
    }
    if (rc == 0 && !mongoc_collection_update_one(mc, f, v, NULL, NULL, &e))
        rc = -1;
    if (rc < 0)
        fprintf(stderr, "seed %s: %s\n", fx->dir, e.message);
    bson_destroy(v);
    bson_destroy(f);
    mongoc_collection_destroy(mc);
    mongoc_collection_destroy(uc);
    mongoc_client_destroy(c);
    return rc;
}

/* Whether the server is a real MongoDB (congodb answers buildInfo with gitVersion "congodb"). */
static int mongo_is_real(void)
{
    const char *force = getenv("AUTHD_TEST_MONGO_REAL");
    mongoc_client_t *c;
    bson_t *cmd, reply;
    bson_error_t e;
    bson_iter_t it;
    int real = 0;

    if (force != NULL && force[0] != '\0')
        return strcmp(force, "0") != 0;
    c = raw_client();
    cmd = BCON_NEW("buildInfo", BCON_INT32(1));
    if (!mongoc_client_command_simple(c, "admin", cmd, NULL, &reply, &e))
        fail_msg("buildInfo: %s", e.message);
    real = !(bson_iter_init_find(&it, &reply, "gitVersion") && BSON_ITER_HOLDS_UTF8(&it) &&
             strcmp(bson_iter_utf8(&it, NULL), "congodb") == 0);
    bson_destroy(&reply);
    bson_destroy(cmd);
    mongoc_client_destroy(c);
    return real;
}

#define NEED_REAL_MONGO()                                                                          \
    do {                                                                                           \
        if (!mongo_is_real()) {                                                                    \
            fprintf(stderr, "  (needs a real MongoDB: the test server does not have it)\n");       \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

static void mongo_indexes(void **state)
{
    static const struct {
        const char *coll, *name;
        int unique, ttl;
    } want[] = {{"users", "id_unique", 1, 0},
                {"users", "email_unique", 1, 0},
                {"sessions", "id_unique", 1, 0},
                {"sessions", "token_unique", 1, 0},
                {"sessions", "user_created", 0, 0},
                {"sessions", "expire_at_ttl", 0, 1},
                {"refresh_tokens", "hash_unique", 1, 0},
                {"refresh_tokens", "expire_at_ttl", 0, 1},
                {"audit_events", "user_at", 0, 0},
                {"sessions", "idle_expires_at", 0, 0},
                {"sessions", "revoked_at", 0, 0},
                {"audit_events", "at", 0, 0},
                {"authd_meta", "name_unique", 1, 0}};
    struct fixture *fx = *state;
    mongoc_client_t *c = raw_client();

    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        mongoc_collection_t *coll = mongoc_client_get_collection(c, fx->dir, want[i].coll);
        mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(coll, NULL);
        const bson_t *doc;
        bson_iter_t it;
        int found = 0;
        while (!found && mongoc_cursor_next(cur, &doc)) {
            if (!bson_iter_init_find(&it, doc, "name") ||
                strcmp(bson_iter_utf8(&it, NULL), want[i].name) != 0)
                continue;
            found = 1;
            assert_int_equal(bson_iter_init_find(&it, doc, "unique") && bson_iter_as_bool(&it),
                             want[i].unique);
            if (want[i].ttl) {
                assert_true(bson_iter_init_find(&it, doc, "expireAfterSeconds"));
                assert_int_equal(bson_iter_as_int64(&it), STORE_MONGO_TTL_GRACE);
            }
        }
        mongoc_cursor_destroy(cur);
        mongoc_collection_destroy(coll);
        if (!found)
            fail_msg("no index %s on %s", want[i].name, want[i].coll);
    }
    mongoc_client_destroy(c);
}

static void mongo_migrations_idempotent(void **state)
{
    struct fixture *fx = *state;
    struct store *again;
    struct store_user u, g;
    char err[512] = "";
    bson_t meta[4];

    new_user(fx, "trent@example.com", &u);
    for (int i = 0; i < 2; i++) {
        again = fx->drv->open(fx->cfg, 1, err, sizeof(err)); /* beside the open one */
        if (again == NULL)
            fail_msg("open: %s", err);
        fx->drv->close(again);
    }
    assert_int_equal(fx->drv->user_by_email(fx->st, "trent@example.com", &g), STORE_OK);
    assert_string_equal(g.id, u.id);
    assert_int_equal(raw_find(fx, "authd_meta", "{\"name\": \"schema\"}", meta, 4), 1);
    assert_int_equal(raw_int(&meta[0], "version"), STORE_MONGO_SCHEMA_VERSION);
    bson_destroy(&meta[0]);
}

static void mongo_newer_version_refused(void **state)
{
    struct fixture *fx = *state;
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll = mongoc_client_get_collection(c, fx->dir, "authd_meta");
    bson_t *f = BCON_NEW("name", "schema");
    bson_t *u = BCON_NEW("$set", "{", "version", BCON_INT32(STORE_MONGO_SCHEMA_VERSION + 1), "}");
    char err[512] = "";
    bson_error_t e;

    if (!mongoc_collection_update_one(coll, f, u, NULL, NULL, &e))
        fail_msg("update: %s", e.message);
    bson_destroy(u);
    bson_destroy(f);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
    assert_null(fx->drv->open(fx->cfg, 1, err, sizeof(err)));
    assert_contains(err, fx->dir);
    assert_contains(err, "newer");
}

static void hex_str(unsigned n, char out[65])
{
    uint8_t h[32];

    hash_of(n, h);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

/* The document model (architecture.md): hashes only, TTL dates, one document per change. */
static void mongo_documents(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, r;
    char want[65], got[65], filter[128];
    bson_t d[4];
    int is_null;

    new_user(fx, "ursula@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    assert_int_equal(rotate(fx, 1, 2, T0 + 5, &r), STORE_OK);
    snprintf(filter, sizeof(filter), "{\"id\": \"%s\"}", s.id);
    assert_int_equal(raw_find(fx, "sessions", filter, d, 4), 1);
    hex_str(2, want);
    raw_text(&d[0], "token", got, sizeof(got), &is_null);
    assert_string_equal(got, want);
    assert_int_equal(raw_int(&d[0], "token_created_at"), T0 + 5);
    assert_int_equal(raw_int(&d[0], "expire_at"), (T0 + TTL) * 1000);
    bson_destroy(&d[0]);
    assert_int_equal(raw_find(fx, "refresh_tokens", "{}", d, 4), 1);
    hex_str(1, want);
    raw_text(&d[0], "hash", got, sizeof(got), &is_null);
    assert_string_equal(got, want);
    raw_text(&d[0], "state", got, sizeof(got), &is_null);
    assert_string_equal(got, "rotated");
    assert_int_equal(raw_int(&d[0], "created_at"), T0);
    assert_int_equal(raw_int(&d[0], "rotated_at"), T0 + 5);
    assert_int_equal(raw_int(&d[0], "expire_at"), (T0 + TTL) * 1000);
    bson_destroy(&d[0]);
}

/* Invalid UTF-8 from an HTTP header is stored with '?' in its place, not refused. */
static void mongo_invalid_utf8(void **state)
{
    struct fixture *fx = *state;
    struct store_audit a = {.at = T0, .event = "login", .result = "failure"};
    struct audit_row row;

    a.user_agent = "bad \xff\xfe agent \xc3";
    assert_int_equal(fx->drv->audit_append(fx->st, &a), STORE_OK);
    assert_int_equal(mongo_audit_last(fx, &row), 0);
    assert_string_equal(row.text[A_UA], "bad ?? agent ?");
}

static double elapsed_since(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Every call on `st` fails with STORE_ERROR, each within `limit` seconds. */
static void assert_prompt_errors(struct fixture *fx, struct store *st, double limit)
{
    struct store_user u;
    struct store_session s;
    struct timespec t0;
    uint8_t a[32], b[32];
    int64_t n;

    hash_of(1, a);
    hash_of(2, b);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(fx->drv->ping(st), STORE_ERROR);
    assert_true(elapsed_since(&t0) < limit);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(fx->drv->user_create(st, "v@example.com", HASH_A, T0, &u), STORE_ERROR);
    assert_true(elapsed_since(&t0) < limit);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(fx->drv->user_by_email(st, "v@example.com", &u), STORE_ERROR);
    assert_int_equal(fx->drv->session_rotate(st, a, b, T0, IDLE, &s), STORE_ERROR);
    assert_int_equal(fx->drv->count_users(st, &n), STORE_ERROR);
    assert_true(elapsed_since(&t0) < 3 * limit);
}

/* A configuration like the fixture's but for `uri` with a 0.3 s timeout. */
static struct config *config_for(const char *uri)
{
    char *errors = NULL;
    struct config *cfg;

    setenv("AUTHD_STORE_DRIVER", "mongo", 1);
    setenv("AUTHD_STORE_URI", uri, 1);
    setenv("AUTHD_STORE_TIMEOUT", "0.3", 1);
    cfg = config_load(NULL, &errors);
    unsetenv("AUTHD_STORE_DRIVER");
    unsetenv("AUTHD_STORE_URI");
    unsetenv("AUTHD_STORE_TIMEOUT");
    if (cfg == NULL)
        fail_msg("config_load: %s", errors ? errors : "?");
    return cfg;
}

/* Nothing listens: every call is STORE_ERROR within the timeout; migrate-open fails. */
static void mongo_unreachable(void **state)
{
    struct fixture *fx = *state;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    char uri[64], err[512] = "";

    /* A port that was free a moment ago and is closed now: connections are refused. */
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    snprintf(uri, sizeof(uri), "mongodb://127.0.0.1:%d/", ntohs(sa.sin_port));
    struct config *cfg = config_for(uri);
    struct store *st = fx->drv->open(cfg, 0, err, sizeof(err)); /* no I/O: succeeds */
    if (st == NULL)
        fail_msg("open: %s", err);
    assert_prompt_errors(fx, st, 1.5);
    fx->drv->close(st);
    assert_null(fx->drv->open(cfg, 1, err, sizeof(err)));
    assert_true(err[0] != '\0');
    config_free(cfg);
    assert_int_equal(fx->drv->ping(fx->st), STORE_OK); /* the fixture's pool is unaffected */
}

/* A server that accepts connections and never answers (a hung MongoDB) is no better. */
static void mongo_hung_server(void **state)
{
    struct fixture *fx = *state;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    char uri[64], err[512] = "";

    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 64), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(uri, sizeof(uri), "mongodb://127.0.0.1:%d/", ntohs(sa.sin_port));
    struct config *cfg = config_for(uri);
    struct store *st = fx->drv->open(cfg, 0, err, sizeof(err));
    if (st == NULL)
        fail_msg("open: %s", err);
    assert_prompt_errors(fx, st, 1.5);
    fx->drv->close(st);
    config_free(cfg);
    close(fd);
}

struct prober {
    const struct store_driver *drv;
    struct config *cfg;
    pthread_barrier_t *go;
    double took;
    enum store_status rc;
};

static void *probe_thread(void *arg)
{
    struct prober *p = arg;
    char err[256];
    struct store *st = p->drv->open(p->cfg, 0, err, sizeof(err));
    struct timespec t0;

    pthread_barrier_wait(p->go);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    p->rc = st != NULL ? p->drv->ping(st) : STORE_OK;
    p->took = elapsed_since(&t0);
    if (st != NULL)
        p->drv->close(st);
    return NULL;
}

/*
 * Once a call found the server unreachable, concurrent calls do not each wait out the timeout:
 * one probes, the others fail at once (the circuit breaker in store_mongo.c).
 */
static void mongo_unreachable_fails_fast(void **state)
{
    enum { N = 6 };
    struct fixture *fx = *state;
    struct config *cfg = config_for("mongodb://127.0.0.1:1/");
    char err[256];
    struct store *keep = fx->drv->open(cfg, 0, err, sizeof(err)); /* keeps the pool alive */
    struct prober p[N];
    pthread_t t[N];
    pthread_barrier_t go;
    int fast = 0;

    assert_non_null(keep);
    assert_int_equal(fx->drv->ping(keep), STORE_ERROR); /* the server is known to be away */
    pthread_barrier_init(&go, NULL, N);
    for (int i = 0; i < N; i++) {
        p[i] = (struct prober){fx->drv, cfg, &go, 0, STORE_OK};
        assert_int_equal(pthread_create(&t[i], NULL, probe_thread, &p[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(p[i].rc, STORE_ERROR);
        assert_true(p[i].took < 1.5);
        fast += p[i].took < 0.1;
    }
    assert_true(fast >= N - 1);
    pthread_barrier_destroy(&go);
    fx->drv->close(keep);
    config_free(cfg);
}

static void mongo_write_concern_zero_refused(void **state)
{
    struct fixture *fx = *state;
    char *errors = NULL, err[512] = "";
    struct config *cfg;

    mongo_prepare(fx); /* a new database name, never created */
    setenv("AUTHD_STORE_WRITE_CONCERN", "0", 1);
    cfg = config_load(NULL, &errors);
    unsetenv("AUTHD_STORE_WRITE_CONCERN");
    unsetenv("AUTHD_STORE_DRIVER");
    unsetenv("AUTHD_STORE_URI");
    unsetenv("AUTHD_STORE_DATABASE");
    assert_non_null(cfg);
    assert_null(fx->drv->open(cfg, 1, err, sizeof(err)));
    assert_contains(err, "write_concern");
    config_free(cfg);
}

/* Real MongoDB only: the unique index on the email refuses a second document by itself. */
static void mongo_unique_email_enforced(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    NEED_REAL_MONGO();
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll = mongoc_client_get_collection(c, fx->dir, "users");
    bson_t *doc = BCON_NEW("id", "00000000-0000-4000-8000-00000000000a", "email", "dup@example.com",
                           "created_at", BCON_INT64(T0));
    bson_error_t e;

    new_user(fx, "dup@example.com", &u);
    assert_false(mongoc_collection_insert_one(coll, doc, NULL, NULL, &e));
    assert_int_equal(e.code, 11000);
    bson_destroy(doc);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
}

/* Real MongoDB only: every query shape of the driver is answered by an index, not a scan. */
static void mongo_queries_use_indexes(void **state)
{
    static const struct {
        const char *coll, *filter, *sort;
    } shapes[] = {
        {"users", "{\"email\": \"a@example.com\"}", NULL},
        {"users", "{\"id\": \"x\"}", NULL},
        {"sessions", "{\"token\": \"00\"}", NULL},
        {"sessions", "{\"id\": \"x\", \"token\": \"00\", \"revoked_at\": null}", NULL},
        {"sessions",
         "{\"user_id\": \"u\", \"revoked_at\": null, \"idle_expires_at\": {\"$gt\": 1},"
         " \"expires_at\": {\"$gt\": 1}, \"id\": {\"$ne\": \"k\"}}",
         "{\"created_at\": -1, \"_id\": -1}"},
        {"refresh_tokens", "{\"hash\": \"00\"}", NULL},
        {"authd_meta", "{\"name\": \"schema\"}", NULL},
    };
    struct fixture *fx = *state;
    NEED_REAL_MONGO();
    mongoc_client_t *c = raw_client();

    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        char json[1024];
        bson_t *cmd, reply;
        bson_error_t e;
        snprintf(json, sizeof(json),
                 "{\"explain\": {\"find\": \"%s\", \"filter\": %s%s%s}, \"verbosity\": "
                 "\"queryPlanner\"}",
                 shapes[i].coll, shapes[i].filter, shapes[i].sort ? ", \"sort\": " : "",
                 shapes[i].sort ? shapes[i].sort : "");
        cmd = bson_new_from_json((const uint8_t *)json, -1, NULL);
        assert_non_null(cmd);
        if (!mongoc_client_command_simple(c, fx->dir, cmd, NULL, &reply, &e))
            fail_msg("explain: %s", e.message);
        bson_iter_t it, win;
        const uint8_t *data;
        uint32_t len;
        bson_t w;
        if (!bson_iter_init(&it, &reply) ||
            !bson_iter_find_descendant(&it, "queryPlanner.winningPlan", &win) ||
            !BSON_ITER_HOLDS_DOCUMENT(&win))
            fail_msg("explain without queryPlanner.winningPlan");
        bson_iter_document(&win, &len, &data);
        assert_true(bson_init_static(&w, data, len));
        char *plan = bson_as_relaxed_extended_json(&w, NULL);
        if (strstr(plan, "COLLSCAN") != NULL || strstr(plan, "\"SORT\"") != NULL)
            fail_msg("%s %s: not served by an index: %s", shapes[i].coll, shapes[i].filter, plan);
        bson_free(plan);
        bson_destroy(&reply);
        bson_destroy(cmd);
    }
    mongoc_client_destroy(c);
}

static const struct backend backends[2];

/* Inserts the JSON document `json` into `collection` of the fixture's database, under the driver.
 */
static void raw_insert(struct fixture *fx, const char *collection, const char *json)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll = mongoc_client_get_collection(c, fx->dir, collection);
    bson_error_t e;
    bson_t *d = bson_new_from_json((const uint8_t *)json, -1, &e);

    if (d == NULL)
        fail_msg("raw_insert: %s: %s", json, e.message);
    if (!mongoc_collection_insert_one(coll, d, NULL, NULL, &e))
        fail_msg("raw_insert into %s: %s", collection, e.message);
    bson_destroy(d);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
}

/*
 * What a rotation that missed (the session was revoked between remember_rotated and the update)
 * or failed could leave: a "rotated" history entry for the session's current token, and an
 * entry of a session that does not exist. The dump leaves both out, so the backup restores
 * (into SQLite: hash is its PRIMARY KEY, session_id a foreign key).
 */
static void mongo_dump_skips_inconsistent_history(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, r;
    struct records a, b;
    char json[512], h1[65], h99[65];

    new_user(fx, "ines@example.com", &u);
    new_session(fx, u.id, T0, T0 + IDLE, T0 + TTL, 1, &s);
    hex_str(1, h1);
    hex_str(99, h99);
    snprintf(json, sizeof(json),
             "{\"hash\": \"%s\", \"session_id\": \"%s\", \"state\": \"rotated\", \"created_at\": "
             "%lld, \"rotated_at\": %lld, \"expire_at\": {\"$date\": %lld}}",
             h1, s.id, (long long)T0, (long long)T0 + 5, (long long)(T0 + TTL) * 1000);
    raw_insert(fx, "refresh_tokens", json);
    snprintf(json, sizeof(json),
             "{\"hash\": \"%s\", \"session_id\": \"00000000-0000-4000-8000-0000000000ff\", "
             "\"state\": \"rotated\", \"created_at\": %lld, \"rotated_at\": %lld, "
             "\"expire_at\": {\"$date\": %lld}}",
             h99, (long long)T0, (long long)T0 + 5, (long long)(T0 + TTL) * 1000);
    raw_insert(fx, "refresh_tokens", json);
    dump_into(fx, &a);
    assert_int_equal(a.n, 1 + 1 + 1); /* the user, the session, its current token */
    for (size_t i = 0; i < a.n; i++)
        if (!strncmp(a.line[i], "refresh_tokens\t", 15))
            assert_contains(a.line[i], "\"state\":\"current\"");
    void *sq = (void *)&backends[0];
    assert_int_equal(setup(&sq), 0);
    struct fixture *q = sq;
    restore_from(q, &a); /* MongoDB -> SQLite */
    dump_into(q, &b);
    assert_same_records(&a, &b);
    assert_int_equal(rotate(q, 1, 2, T0 + 10, &r), STORE_OK);
    assert_string_equal(r.id, s.id);
    records_free(&a);
    records_free(&b);
    teardown(&sq);
}

/* Whether `collection` has index `name`, and with expireAfterSeconds (*ttl_r). */
static int has_index(struct fixture *fx, const char *collection, const char *name, int *ttl_r)
{
    mongoc_client_t *c = raw_client();
    mongoc_collection_t *coll = mongoc_client_get_collection(c, fx->dir, collection);
    mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(coll, NULL);
    const bson_t *doc;
    bson_iter_t it;
    int found = 0;

    while (!found && mongoc_cursor_next(cur, &doc)) {
        if (bson_iter_init_find(&it, doc, "name") && BSON_ITER_HOLDS_UTF8(&it) &&
            strcmp(bson_iter_utf8(&it, NULL), name) == 0) {
            found = 1;
            *ttl_r = bson_has_field(doc, "expireAfterSeconds");
        }
    }
    mongoc_cursor_destroy(cur);
    mongoc_collection_destroy(coll);
    mongoc_client_destroy(c);
    return found;
}

/*
 * A SQLite backup holds sessions that expired long ago (with their rotated tokens): the restore
 * builds its staging collections without TTL indexes (the TTL monitor cannot delete them
 * mid-restore), and the live collections have their TTL indexes afterwards.
 */
static void mongo_restore_expired_sessions(void **state)
{
    struct fixture *fx = *state;
    struct store_user u;
    struct store_session s, r;
    struct records a, b;
    int ttl = 0;

    void *sq = (void *)&backends[0];
    assert_int_equal(setup(&sq), 0);
    struct fixture *q = sq;
    new_user(q, "olga@example.com", &u);
    new_session(q, u.id, 1000, 1000 + IDLE, 1000 + TTL, 1, &s); /* expired in 1970 */
    assert_int_equal(rotate(q, 1, 2, 1010, &r), STORE_OK);
    dump_into(q, &a);
    teardown(&sq);
    restore_from(fx, &a);
    dump_into(fx, &b);
    assert_same_records(&a, &b);
    static const char *const ttl_colls[] = {"sessions", "refresh_tokens"};
    for (size_t i = 0; i < sizeof(ttl_colls) / sizeof(ttl_colls[0]); i++) {
        ttl = 0;
        assert_true(has_index(fx, ttl_colls[i], "expire_at_ttl", &ttl));
        assert_true(ttl);
    }
    assert_int_equal(has_index(fx, "restore_sessions", "expire_at_ttl", &ttl), 0);
    records_free(&a);
    records_free(&b);
}

/* libmongoc quotes the password in its URI parse errors: authd never passes them on. */
static void mongo_uri_error_hides_password(void **state)
{
    struct fixture *fx = *state;
    char err[512] = "";
    struct config *cfg = config_for("mongodb://authd:s3cr:et@127.0.0.1:27017/?x=1");

    assert_null(fx->drv->open(cfg, 1, err, sizeof(err)));
    assert_contains(err, "store.uri is not a valid MongoDB URI");
    assert_null(strstr(err, "s3cr"));
    assert_null(strstr(err, "et@"));
    config_free(cfg);
}

static const struct CMUnitTest mongo_tests[] = {
    cmocka_unit_test(mongo_indexes),
    cmocka_unit_test(mongo_migrations_idempotent),
    cmocka_unit_test(mongo_newer_version_refused),
    cmocka_unit_test(mongo_documents),
    cmocka_unit_test(mongo_invalid_utf8),
    cmocka_unit_test(mongo_unreachable),
    cmocka_unit_test(mongo_hung_server),
    cmocka_unit_test(mongo_unreachable_fails_fast),
    cmocka_unit_test(mongo_write_concern_zero_refused),
    cmocka_unit_test(mongo_unique_email_enforced),
    cmocka_unit_test(mongo_queries_use_indexes),
    cmocka_unit_test(mongo_dump_skips_inconsistent_history),
    cmocka_unit_test(mongo_restore_expired_sessions),
    cmocka_unit_test(mongo_uri_error_hides_password),
};

/* Every driver the suite runs against. */
static const struct backend backends[] = {
    {"sqlite", NULL, sqlite_prepare, sqlite_discard, sqlite_audit_last, sqlite_tests,
     sizeof(sqlite_tests) / sizeof(sqlite_tests[0]), sqlite_seed_v1},
    {"mongo", mongo_unavailable, mongo_prepare, mongo_discard, mongo_audit_last, mongo_tests,
     sizeof(mongo_tests) / sizeof(mongo_tests[0]), mongo_seed_v1},
};

/* ---- driver-independent ---- */

static void driver_find(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
        const struct store_driver *d = store_driver_find(backends[i].driver);
        assert_non_null(d);
        assert_string_equal(d->name, backends[i].driver);
    }
    assert_ptr_equal(store_driver_find("sqlite"), &store_sqlite_driver);
    assert_ptr_equal(store_driver_find("mongo"), &store_mongo_driver);
    assert_null(store_driver_find("nope"));
    assert_null(store_driver_find(""));
    assert_null(store_driver_find(NULL));
}

/* A backup of either driver restores into the other, and dumps back the same records. */
static void backup_crosses_drivers(void **state)
{
    void *sq = (void *)&backends[0], *mo = (void *)&backends[1];
    struct fixture *a, *b, *c;
    struct store_user u1;
    struct store_session s1;
    struct records ra, rb, rc;

    (void)state;
    if (mongo_uri() == NULL)
        skip();
    assert_int_equal(setup(&sq), 0);
    assert_int_equal(setup(&mo), 0);
    a = sq;
    b = mo;
    populate(a, &u1, &s1);
    dump_into(a, &ra);
    restore_from(b, &ra); /* SQLite -> MongoDB */
    dump_into(b, &rb);
    assert_same_records(&ra, &rb);
    void *sq2 = (void *)&backends[0];
    assert_int_equal(setup(&sq2), 0);
    c = sq2;
    restore_from(c, &rb); /* MongoDB -> SQLite */
    dump_into(c, &rc);
    assert_same_records(&ra, &rc);
    assert_populated(b, &u1, &s1);
    assert_populated(c, &u1, &s1);
    records_free(&ra);
    records_free(&rb);
    records_free(&rc);
    teardown(&sq);
    teardown(&mo);
    teardown(&sq2);
}

static int cmp_ids(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void uuid_v4(void **state)
{
    enum { N = 1000 };
    static char ids[N][STORE_ID_LEN + 1];

    (void)state;
    for (int i = 0; i < N; i++) {
        assert_int_equal(store_uuid(ids[i]), 0);
        assert_uuid(ids[i]);
    }
    qsort(ids, N, sizeof(ids[0]), cmp_ids);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
}

int main(void)
{
    static const struct CMUnitTest generic[] = {
        cmocka_unit_test(driver_find),
        cmocka_unit_test(uuid_v4),
        cmocka_unit_test(backup_crosses_drivers),
    };
    enum { NCOMMON = sizeof(common_tests) / sizeof(common_tests[0]) };
    int failed = cmocka_run_group_tests_name("store", generic, NULL, NULL);

    for (size_t b = 0; b < sizeof(backends) / sizeof(backends[0]); b++) {
        const struct backend *be = &backends[b];
        size_t n = NCOMMON + be->nextra;
        const char *why = be->unavailable ? be->unavailable() : NULL;

        if (why != NULL) {
            printf("[  SKIPPED ] %s: all %zu tests: %s\n", be->driver, n, why);
            continue;
        }
        struct CMUnitTest *tests = calloc(n, sizeof(*tests));
        if (tests == NULL)
            return 1;
        for (size_t i = 0; i < n; i++) {
            if (i < NCOMMON) {
                tests[i].name = common_tests[i].name;
                tests[i].test_func = common_tests[i].fn;
            } else {
                tests[i] = be->extra[i - NCOMMON];
            }
            tests[i].setup_func = setup;
            tests[i].teardown_func = teardown;
            tests[i].initial_state = (void *)be;
        }
        failed += _cmocka_run_group_tests(be->driver, tests, n, NULL, NULL);
        free(tests);
    }
    return failed;
}
