/*
 * store_mongo: the "mongo" store driver (see store.h and store_mongo.h).
 *
 * Collections (every _id is an ObjectId the server or driver makes; authd's own keys are fields
 * with unique indexes, so the driver works the same against servers that only take ObjectIds):
 *   users          {id, email, email_verified, password_hash, created_at, updated_at}
 *   sessions       {id, user_id, created_at, last_used_at, idle_expires_at, expires_at,
 *                   revoked_at, revoke_reason, ip, user_agent, token, token_created_at, expire_at}
 *                  token = hex SHA-256 of the family's current refresh token
 *   refresh_tokens {hash, session_id, state: "rotated", created_at, rotated_at, expire_at}
 *                  the family's rotated hashes, kept for reuse detection until retention
 *                  (mongo_prune_sessions) or the TTL index removes them
 *   audit_events   {at, event, result, user_id, ip, user_agent, request_id, detail}
 *   authd_meta     {name: "schema", version}
 * Times are int64 seconds like the other drivers; expire_at is a BSON date for the TTL indexes.
 *
 * Every change is one single-document operation whose filter states what it expects, so no
 * transaction is needed: registration is an upsert on the email ($setOnInsert), rotation a
 * findAndModify on {id, token: old, revoked_at: null}. Errors are logged here without the URI.
 */
#include "shared/store_mongo.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mongoc/mongoc.h>

#include "shared/email.h"
#include "shared/error.h"
#include "shared/log.h"

#define AUDIT_TEXT_MAX 1024
#define TEXT_BUF       (AUDIT_TEXT_MAX + 1)
#define RESTORE_BATCH  1000
#define ROTATE_TRIES   3
/* While the server is unreachable, probes are at least this far apart (so the next store call
 * of a request whose first one just timed out fails at once instead of waiting again). */
#define PROBE_INTERVAL_MS 250

enum coll { C_USERS, C_SESSIONS, C_TOKENS, C_AUDIT, C_META, C_COUNT };

static const char *const coll_names[C_COUNT] = {"users", "sessions", "refresh_tokens",
                                                "audit_events", "authd_meta"};

/* Index definitions: the driver's queries and what each one serves (architecture.md). */
static const struct index_def {
    enum coll c;
    const char *name;
    const char *key; /* JSON, field order kept */
    int unique, sparse, ttl;
} index_defs[] = {
    {C_USERS, "id_unique", "{\"id\": 1}", 1, 0, 0},
    {C_USERS, "email_unique", "{\"email\": 1}", 1, 0, 0},
    {C_SESSIONS, "id_unique", "{\"id\": 1}", 1, 0, 0},
    {C_SESSIONS, "token_unique", "{\"token\": 1}", 1, 1, 0},
    {C_SESSIONS, "user_created", "{\"user_id\": 1, \"created_at\": -1, \"_id\": -1}", 0, 0, 0},
    {C_SESSIONS, "expire_at_ttl", "{\"expire_at\": 1}", 0, 0, 1},
    {C_TOKENS, "hash_unique", "{\"hash\": 1}", 1, 0, 0},
    {C_TOKENS, "expire_at_ttl", "{\"expire_at\": 1}", 0, 0, 1},
    {C_AUDIT, "user_at", "{\"user_id\": 1, \"at\": 1}", 0, 0, 0},
    {C_META, "name_unique", "{\"name\": 1}", 1, 0, 0},
    /* Retention (mongo_prune_*): ended sessions and old audit events by time. */
    {C_SESSIONS, "idle_expires_at", "{\"idle_expires_at\": 1}", 0, 0, 0},
    {C_SESSIONS, "revoked_at", "{\"revoked_at\": 1}", 0, 0, 0},
    {C_AUDIT, "at", "{\"at\": 1}", 0, 0, 0},
};

/* ---- process-wide pools ---- */

struct mpool {
    struct mpool *next;
    char *key;                  /* everything of the configuration the pool depends on */
    mongoc_client_pool_t *pool; /* its monitoring threads start at the first pop */
    mongoc_uri_t *uri;
    pid_t pid;
    int refs;
    /* Circuit breaker: while the server is known to be unreachable, one call at a time probes
     * it and the others fail at once instead of each waiting out store.timeout. */
    atomic_int down, probing;
    atomic_llong next_probe_ms; /* monotonic: no probe before (PROBE_INTERVAL_MS apart) */
    atomic_llong quiet_until;   /* no "failing fast" log line before this second */
};

static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mpool *pools;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

struct store {
    struct mpool *mp;
    char db[128];
};

/* libmongoc's own messages (warnings and worse) go to the authd log. */
static void log_from_mongoc(mongoc_log_level_t level, const char *domain, const char *message,
                            void *data)
{
    (void)data;
    if (level <= MONGOC_LOG_LEVEL_ERROR)
        log_error("libmongoc %s: %s", domain, message);
    else if (level == MONGOC_LOG_LEVEL_WARNING)
        log_warn("libmongoc %s: %s", domain, message);
}

static void init_mongoc(void)
{
    mongoc_init();
    mongoc_log_set_handler(log_from_mongoc, NULL);
}

/*
 * The URI with authd's settings applied over the operator's: timeouts from store.timeout,
 * retryable reads and writes, primary reads, the configured write concern bounded by wtimeout.
 */
static mongoc_uri_t *make_uri(const struct config *cfg, char *err, size_t errlen)
{
    int32_t ms = (int32_t)(cfg->store.timeout * 1000);
    bson_error_t e;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(cfg->store.uri, &e);

    if (uri == NULL) {
        /* Never e.message: libmongoc quotes parts of the URI in it, the password included
         * ("Password \"...\" must not have unescaped chars"). */
        error_set(err, errlen,
                  "store.uri is not a valid MongoDB URI (libmongoc error domain %u code %u); "
                  "percent-encode reserved characters in the user name and password",
                  (unsigned)e.domain, (unsigned)e.code);
        return NULL;
    }
    mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, ms);
    mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, ms);
    mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, ms);
    mongoc_uri_set_option_as_bool(uri, MONGOC_URI_RETRYWRITES, true);
    mongoc_uri_set_option_as_bool(uri, MONGOC_URI_RETRYREADS, true);
    mongoc_read_prefs_t *rp = mongoc_read_prefs_new(MONGOC_READ_PRIMARY);
    mongoc_uri_set_read_prefs_t(uri, rp);
    mongoc_read_prefs_destroy(rp);
    mongoc_write_concern_t *wc = mongoc_write_concern_new();
    if (strcmp(cfg->store.write_concern, "majority") == 0)
        mongoc_write_concern_set_w(wc, MONGOC_WRITE_CONCERN_W_MAJORITY);
    else
        mongoc_write_concern_set_w(wc, (int32_t)atoi(cfg->store.write_concern));
    mongoc_write_concern_set_wtimeout_int64(wc, ms);
    mongoc_uri_set_write_concern(uri, wc);
    mongoc_write_concern_destroy(wc);
    return uri;
}

static int pool_size(const struct config *cfg)
{
    int n = cfg->store.pool_size;
    return n > 0 ? n : cfg->offload.store_threads + cfg->offload.threads;
}

static struct mpool *pool_new(const struct config *cfg, const char *key, char *err, size_t errlen)
{
    bson_error_t e;
    mongoc_uri_t *uri = make_uri(cfg, err, errlen);
    struct mpool *mp;

    if (uri == NULL)
        return NULL;
    mp = calloc(1, sizeof(*mp));
    if (mp == NULL || (mp->key = strdup(key)) == NULL) {
        error_set(err, errlen, "out of memory");
        goto fail;
    }
    mp->pool = mongoc_client_pool_new_with_error(uri, &e);
    if (mp->pool == NULL) {
        error_set(err, errlen, "mongoc_client_pool_new: %s", e.message);
        goto fail;
    }
    mongoc_client_pool_set_error_api(mp->pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_pool_set_appname(mp->pool, "authd");
    mongoc_client_pool_max_size(mp->pool, (uint32_t)pool_size(cfg));
    mp->pid = getpid();
    mp->uri = uri;
    return mp;
fail:
    if (mp != NULL)
        free(mp->key);
    free(mp);
    mongoc_uri_destroy(uri);
    return NULL;
}

/*
 * The pool for `cfg` in this process, made on first use, one reference taken. Pools a parent
 * process made are forgotten (never used nor destroyed here: their sockets and threads are the
 * parent's).
 */
static struct mpool *pool_get(const struct config *cfg, char *err, size_t errlen)
{
    char *key = NULL;
    struct mpool *mp, **pp;

    pthread_once(&init_once, init_mongoc);
    if (asprintf(&key, "%s\n%g\n%s\n%d", cfg->store.uri, cfg->store.timeout,
                 cfg->store.write_concern, pool_size(cfg)) < 0) {
        error_set(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_lock(&pools_lock);
    for (pp = &pools; *pp != NULL;)
        if ((*pp)->pid != getpid())
            *pp = (*pp)->next; /* inherited across fork: leaked on purpose */
        else
            pp = &(*pp)->next;
    for (mp = pools; mp != NULL && strcmp(mp->key, key) != 0; mp = mp->next)
        ;
    if (mp == NULL && (mp = pool_new(cfg, key, err, errlen)) != NULL) {
        mp->next = pools;
        pools = mp;
    }
    if (mp != NULL)
        mp->refs++;
    pthread_mutex_unlock(&pools_lock);
    memset(key, 0, strlen(key)); /* holds the URI's password */
    free(key);
    return mp;
}

/* Drops one reference; the last one destroys the pool (ending its server sessions). */
static void pool_put(struct mpool *mp)
{
    struct mpool **pp;
    int last = 0;

    pthread_mutex_lock(&pools_lock);
    if (--mp->refs == 0) {
        for (pp = &pools; *pp != NULL && *pp != mp; pp = &(*pp)->next)
            ;
        if (*pp == mp)
            *pp = mp->next;
        last = 1;
    }
    pthread_mutex_unlock(&pools_lock);
    if (!last || mp->pid != getpid())
        return;
    mongoc_client_pool_destroy(mp->pool);
    mongoc_uri_destroy(mp->uri);
    memset(mp->key, 0, strlen(mp->key));
    free(mp->key);
    free(mp);
}

/* ---- one call's client and collections ---- */

/* A call's client: NULL when the call fails fast (the helpers below then fail without I/O). */
struct conn {
    struct store *st;
    mongoc_client_t *client;
    mongoc_collection_t *c[C_COUNT];
    int probe;       /* this call probes a server known to be unreachable */
    int unreachable; /* a server-selection or network error happened */
};

static long long mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_begin(struct conn *k, struct store *st)
{
    struct mpool *mp = st->mp;
    int idle = 0;

    memset(k, 0, sizeof(*k));
    k->st = st;
    if (atomic_load(&mp->down)) {
        if (mono_ms() < atomic_load(&mp->next_probe_ms) ||
            !atomic_compare_exchange_strong(&mp->probing, &idle, 1)) {
            long long now = (long long)time(NULL), quiet = atomic_load(&mp->quiet_until);
            if (now >= quiet && atomic_compare_exchange_strong(&mp->quiet_until, &quiet, now + 10))
                log_error("mongo: the server is unreachable: store calls fail at once while one "
                          "at a time probes it");
            k->unreachable = 1;
            return;
        }
        k->probe = 1;
    }
    k->client = mongoc_client_pool_pop(mp->pool);
}

static mongoc_collection_t *coll(struct conn *k, enum coll c)
{
    if (k->c[c] == NULL)
        k->c[c] = mongoc_client_get_collection(k->client, k->st->db, coll_names[c]);
    return k->c[c];
}

static void conn_end(struct conn *k)
{
    struct mpool *mp = k->st->mp;

    if (k->client == NULL) {
        /* Refused at once, or no client from the pool: a probe that could not run must not
         * keep every later call from probing. */
        if (k->probe)
            atomic_store(&mp->probing, 0);
        return;
    }
    for (int i = 0; i < C_COUNT; i++)
        if (k->c[i] != NULL)
            mongoc_collection_destroy(k->c[i]);
    mongoc_client_pool_push(mp->pool, k->client);
    if (k->unreachable) {
        atomic_store(&mp->next_probe_ms, mono_ms() + PROBE_INTERVAL_MS);
        atomic_store(&mp->down, 1);
    } else if (atomic_exchange(&mp->down, 0))
        log_info("mongo: the server answers again");
    if (k->probe)
        atomic_store(&mp->probing, 0);
}

/* ---- pure helpers ---- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/*
 * `v` cut at `max` bytes on a character boundary, each byte that is not valid UTF-8 replaced by
 * '?' (BSON strings must be UTF-8; HTTP headers need not be). buf has at least max + 1 bytes.
 */
static const char *clean_text(const char *v, size_t max, char *buf)
{
    size_t n = store_utf8_cut(v, strnlen(v, max + 1), max), i = 0;

    while (i < n) {
        size_t len = utf8_seq((const unsigned char *)v + i, n - i);
        if (len == 0) {
            buf[i++] = '?';
            continue;
        }
        memcpy(buf + i, v + i, len);
        i += len;
    }
    buf[n] = '\0';
    return buf;
}

static void hex_of(const uint8_t hash[32], char out[65])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[hash[i] >> 4];
        out[2 * i + 1] = hex[hash[i] & 0x0f];
    }
    out[64] = '\0';
}

/* ---- reading documents ---- */

static int64_t doc_int(const bson_t *d, const char *key)
{
    bson_iter_t it;

    if (bson_iter_init_find(&it, d, key) &&
        (BSON_ITER_HOLDS_NUMBER(&it) || BSON_ITER_HOLDS_BOOL(&it)))
        return bson_iter_as_int64(&it);
    return 0;
}

/* Missing or null. */
static int doc_null(const bson_t *d, const char *key)
{
    bson_iter_t it;

    return !bson_iter_init_find(&it, d, key) || BSON_ITER_HOLDS_NULL(&it);
}

/* A string field copied into dst[size], cut on a UTF-8 boundary; anything else becomes "". */
static void doc_text(const bson_t *d, const char *key, char *dst, size_t size)
{
    bson_iter_t it;
    uint32_t len = 0;
    const char *t = NULL;
    size_t n = 0;

    if (bson_iter_init_find(&it, d, key) && BSON_ITER_HOLDS_UTF8(&it))
        t = bson_iter_utf8(&it, &len);
    if (t != NULL)
        n = store_utf8_cut(t, len, size - 1);
    if (n > 0)
        memcpy(dst, t, n);
    dst[n] = '\0';
}

static void doc_user(const bson_t *d, struct store_user *u)
{
    memset(u, 0, sizeof(*u));
    doc_text(d, "id", u->id, sizeof(u->id));
    doc_text(d, "email", u->email, sizeof(u->email));
    u->email_verified = (int)doc_int(d, "email_verified");
    doc_text(d, "password_hash", u->password_hash, sizeof(u->password_hash));
    u->created_at = doc_int(d, "created_at");
}

/* Reads a session document; returns whether it is revoked. */
static int doc_session(const bson_t *d, struct store_session *s)
{
    memset(s, 0, sizeof(*s));
    doc_text(d, "id", s->id, sizeof(s->id));
    doc_text(d, "user_id", s->user_id, sizeof(s->user_id));
    s->created_at = doc_int(d, "created_at");
    s->last_used_at = doc_int(d, "last_used_at");
    s->idle_expires_at = doc_int(d, "idle_expires_at");
    s->expires_at = doc_int(d, "expires_at");
    doc_text(d, "ip", s->ip, sizeof(s->ip));
    doc_text(d, "user_agent", s->user_agent, sizeof(s->user_agent));
    return !doc_null(d, "revoked_at");
}

/* ---- operations: each logs its own failure ---- */

static int is_duplicate(const bson_error_t *e)
{
    return e->code == 11000 || e->code == 11001 || e->code == 12582;
}

static void log_failure(const char *what, const bson_error_t *e)
{
    log_error("mongo %s: %s (domain %" PRIu32 ", code %" PRIu32 ")", what, e->message, e->domain,
              e->code);
}

/* Logs a failed operation of call k; a server-selection or network error trips the breaker. */
static void note_error(struct conn *k, const char *what, const bson_error_t *e)
{
    log_failure(what, e);
    if (e->domain == MONGOC_ERROR_SERVER_SELECTION || e->domain == MONGOC_ERROR_STREAM)
        k->unreachable = 1;
}

/* The first document matching `filter` copied into *out (initialised): 1, 0 for none, -1. */
static int find_one(struct conn *k, enum coll c, const bson_t *filter, const char *what,
                    bson_t *out)
{
    bson_t *opts;
    mongoc_cursor_t *cur;
    const bson_t *doc;
    bson_error_t e;
    int rc = 0;

    if (k->client == NULL)
        return -1;
    opts = BCON_NEW("limit", BCON_INT64(1), "singleBatch", BCON_BOOL(true));
    cur = mongoc_collection_find_with_opts(coll(k, c), filter, opts, NULL);
    if (mongoc_cursor_next(cur, &doc)) {
        bson_copy_to(doc, out);
        rc = 1;
    } else if (mongoc_cursor_error(cur, &e)) {
        note_error(k, what, &e);
        rc = -1;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    return rc;
}

struct upd_result {
    int64_t matched, modified, upserted;
    int duplicate; /* failed on a unique index (E11000), not logged */
};

/* update_one or update_many (`many`), upserting when `upsert`. 0, or -1 (logged unless dup). */
static int update(struct conn *k, enum coll c, const bson_t *filter, const bson_t *upd, int many,
                  int upsert, const char *what, struct upd_result *r)
{
    bson_t *opts, reply;
    bson_error_t e;
    bool ok;

    memset(r, 0, sizeof(*r));
    if (k->client == NULL)
        return -1;
    opts = BCON_NEW("upsert", BCON_BOOL(upsert != 0));
    if (many)
        ok = mongoc_collection_update_many(coll(k, c), filter, upd, opts, &reply, &e);
    else
        ok = mongoc_collection_update_one(coll(k, c), filter, upd, opts, &reply, &e);
    if (ok) {
        r->matched = doc_int(&reply, "matchedCount");
        r->modified = doc_int(&reply, "modifiedCount");
        r->upserted = doc_int(&reply, "upsertedCount");
    } else if (is_duplicate(&e)) {
        r->duplicate = 1;
    } else {
        note_error(k, what, &e);
    }
    bson_destroy(&reply);
    bson_destroy(opts);
    return ok ? 0 : -1;
}

/* One update on its own connection; takes `filter` and `upd`. OK when a document matched. */
static enum store_status update_one(struct store *st, enum coll c, bson_t *filter, bson_t *upd,
                                    const char *what)
{
    struct upd_result r;
    struct conn k;

    conn_begin(&k, st);
    int rc = update(&k, c, filter, upd, 0, 0, what, &r);
    conn_end(&k);
    bson_destroy(upd);
    bson_destroy(filter);
    if (rc < 0)
        return STORE_ERROR;
    return r.matched > 0 ? STORE_OK : STORE_NOT_FOUND;
}

static int insert(struct conn *k, enum coll c, const bson_t *doc, const char *what, int *dup_r)
{
    bson_error_t e;

    if (dup_r != NULL)
        *dup_r = 0;
    if (k->client == NULL)
        return -1;
    if (mongoc_collection_insert_one(coll(k, c), doc, NULL, NULL, &e))
        return 0;
    if (dup_r != NULL && is_duplicate(&e))
        *dup_r = 1;
    else
        note_error(k, what, &e);
    return -1;
}

/* findAndModify returning the new document into *out: 1, 0 when nothing matched, -1. */
static int find_and_update(struct conn *k, enum coll c, const bson_t *filter, const bson_t *upd,
                           const char *what, bson_t *out)
{
    mongoc_find_and_modify_opts_t *opts;
    bson_t reply;
    bson_iter_t it;
    bson_error_t e;
    int rc = -1;

    if (k->client == NULL)
        return -1;
    opts = mongoc_find_and_modify_opts_new();
    mongoc_find_and_modify_opts_set_update(opts, upd);
    mongoc_find_and_modify_opts_set_flags(opts, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
    bool ok = mongoc_collection_find_and_modify_with_opts(coll(k, c), filter, opts, &reply, &e);
    int has_value = bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it);
    if (!ok && has_value) {
        /* A write-concern error (e.g. wtimeout): the primary applied the change and says what
         * it became; failing here would make the caller retry something already done (for a
         * rotation: the client retries the old token, which is reuse). */
        log_warn("mongo %s: applied on the primary, but: %s", what, e.message);
    }
    if (!ok && !has_value) {
        note_error(k, what, &e);
    } else if (has_value) {
        const uint8_t *data;
        uint32_t len;
        bson_t v;
        bson_iter_document(&it, &len, &data);
        if (bson_init_static(&v, data, len)) {
            bson_copy_to(&v, out);
            rc = 1;
        }
    } else {
        rc = 0;
    }
    bson_destroy(&reply);
    mongoc_find_and_modify_opts_destroy(opts);
    return rc;
}

/* ---- schema ---- */

/*
 * createIndexes for the indexes of `c` on the collection named `name` (without the TTL indexes
 * unless `ttl`: a restore's staging collections must not lose documents to the TTL monitor while
 * they are filled). 0 or -1 with message.
 */
static int create_indexes(struct conn *k, enum coll c, const char *name, int ttl, char *err,
                          size_t errlen)
{
    bson_t cmd = BSON_INITIALIZER, list, reply;
    bson_error_t e;
    char idx[16];
    int n = 0, rc = 0;

    BSON_APPEND_UTF8(&cmd, "createIndexes", name);
    BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &list);
    for (size_t i = 0; i < sizeof(index_defs) / sizeof(index_defs[0]); i++) {
        const struct index_def *d = &index_defs[i];
        bson_t spec, *key;
        if (d->c != c || (d->ttl && !ttl))
            continue;
        key = bson_new_from_json((const uint8_t *)d->key, -1, NULL);
        snprintf(idx, sizeof(idx), "%d", n++);
        BSON_APPEND_DOCUMENT_BEGIN(&list, idx, &spec);
        BSON_APPEND_DOCUMENT(&spec, "key", key);
        BSON_APPEND_UTF8(&spec, "name", d->name);
        if (d->unique)
            BSON_APPEND_BOOL(&spec, "unique", true);
        if (d->sparse)
            BSON_APPEND_BOOL(&spec, "sparse", true);
        if (d->ttl)
            BSON_APPEND_INT32(&spec, "expireAfterSeconds", STORE_MONGO_TTL_GRACE);
        bson_append_document_end(&list, &spec);
        bson_destroy(key);
    }
    bson_append_array_end(&cmd, &list);
    if (k->client == NULL) {
        error_set(err, errlen, "the server is unreachable");
        bson_destroy(&cmd);
        return -1;
    }
    mongoc_database_t *db = mongoc_client_get_database(k->client, k->st->db);
    if (!mongoc_database_write_command_with_opts(db, &cmd, NULL, &reply, &e)) {
        note_error(k, "createIndexes", &e);
        error_set(err, errlen, "createIndexes on %s.%s: %s", k->st->db, name, e.message);
        rc = -1;
    }
    mongoc_database_destroy(db);
    bson_destroy(&reply);
    bson_destroy(&cmd);
    return rc;
}

/* The id of the user whose email is `email` into other: 1, 0 when none, -1 (logged). */
static int holder_of(struct conn *k, const char *email, char *other, size_t size)
{
    bson_t *filter = BCON_NEW("email", BCON_UTF8(email));
    bson_t doc = BSON_INITIALIZER;
    int found = find_one(k, C_USERS, filter, "email migration", &doc);

    if (found == 1)
        doc_text(&doc, "id", other, size);
    bson_destroy(&doc);
    bson_destroy(filter);
    return found;
}

/*
 * Schema 2's one user: `id` keeps its stored email (logged by store_renorm_*) or takes the
 * normalized one. The update names the old email too, so that it changes nothing when a
 * concurrent migration got there first. 0, or -1 (logged).
 */
static int renorm_user(struct conn *k, struct store_renorm *r, const char *id, const char *email)
{
    char norm[STORE_EMAIL_MAX + 1], other[STORE_ID_LEN + 1] = "";
    struct upd_result u;
    int found, rc;

    if (!store_renorm_email(r, id, email, norm))
        return 0;
    if ((found = holder_of(k, norm, other, sizeof(other))) < 0)
        return -1;
    if (found == 0) {
        bson_t *filter = BCON_NEW("id", BCON_UTF8(id), "email", BCON_UTF8(email));
        bson_t *upd = BCON_NEW("$set", "{", "email", BCON_UTF8(norm), "}");
        rc = update(k, C_USERS, filter, upd, 0, 0, "email migration", &u);
        bson_destroy(upd);
        bson_destroy(filter);
        if (rc == 0) {
            r->changed += u.modified > 0;
            return 0;
        }
        /* Taken meanwhile (the unique index): by a registration or another migration. */
        if (!u.duplicate || holder_of(k, norm, other, sizeof(other)) < 0)
            return -1;
    }
    store_renorm_collision(r, id, other);
    return 0;
}

/* Schema 2: every user's email through email_normalize, oldest account first (store.h). */
static int emails_renormalize(struct conn *k, char *err, size_t errlen)
{
    bson_t *filter = bson_new();
    bson_t *opts = BCON_NEW("sort", "{", "created_at", BCON_INT32(1), "id", BCON_INT32(1), "}",
                            "projection", "{", "id", BCON_INT32(1), "email", BCON_INT32(1), "}",
                            "allowDiskUse", BCON_BOOL(true));
    char id[STORE_ID_LEN + 1], email[EMAIL_INPUT_MAX + 2]; /* longer: "too long", kept */
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll(k, C_USERS), filter, opts, NULL);
    struct store_renorm r = {0};
    const bson_t *doc;
    bson_error_t e;
    int rc = 0;

    while (rc == 0 && mongoc_cursor_next(cur, &doc)) {
        doc_text(doc, "id", id, sizeof(id));
        doc_text(doc, "email", email, sizeof(email));
        rc = renorm_user(k, &r, id, email);
    }
    if (rc == 0 && mongoc_cursor_error(cur, &e)) {
        note_error(k, "email migration", &e);
        rc = -1;
    }
    if (rc < 0)
        error_set(err, errlen, "database %s: email migration failed (see the log)", k->st->db);
    else
        store_renorm_done(&r, k->st->db);
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    bson_destroy(filter);
    return rc;
}

/* Refuses a database written by a newer authd; creates the indexes; records the version. */
static int migrate(struct conn *k, char *err, size_t errlen)
{
    bson_t *filter = BCON_NEW("name", "schema");
    bson_t *upd = BCON_NEW("$max", "{", "version", BCON_INT32(STORE_MONGO_SCHEMA_VERSION), "}");
    bson_t meta = BSON_INITIALIZER;
    struct upd_result r;
    int rc = -1, found = find_one(k, C_META, filter, "schema version", &meta);

    if (found < 0) {
        error_set(err, errlen, "database %s: cannot read the schema version (see the log)",
                  k->st->db);
        goto out;
    }
    if (found && doc_int(&meta, "version") > STORE_MONGO_SCHEMA_VERSION) {
        error_set(err, errlen,
                  "database %s: schema version %" PRId64 " is newer than this authd knows (%d); "
                  "run a newer authd or restore a backup",
                  k->st->db, doc_int(&meta, "version"), STORE_MONGO_SCHEMA_VERSION);
        goto out;
    }
    for (int c = 0; c < C_COUNT; c++)
        if (create_indexes(k, (enum coll)c, coll_names[c], 1, err, errlen) < 0)
            goto out;
    if ((!found || doc_int(&meta, "version") < 2) && emails_renormalize(k, err, errlen) < 0)
        goto out;
    if (update(k, C_META, filter, upd, 0, 1, "schema version", &r) < 0) {
        error_set(err, errlen, "database %s: cannot record the schema version", k->st->db);
        goto out;
    }
    rc = 0;
out:
    bson_destroy(&meta);
    bson_destroy(upd);
    bson_destroy(filter);
    return rc;
}

/* ---- open, close, ping ---- */

static void mongo_close(struct store *st)
{
    if (st == NULL)
        return;
    pool_put(st->mp);
    free(st);
}

/*
 * Takes a reference to this process's pool for the configuration (no network I/O) and, with
 * `do_migrate`, creates the indexes: that needs the server, within store.timeout.
 */
static struct store *mongo_open(const struct config *cfg, int do_migrate, char *err, size_t errlen)
{
    struct store *st;
    struct conn k;

    if (cfg->store.uri == NULL || cfg->store.uri[0] == '\0') {
        error_set(err, errlen, "store.uri is empty");
        return NULL;
    }
    if (strcmp(cfg->store.write_concern, "0") == 0) {
        error_set(err, errlen,
                  "store.write_concern = 0 (unacknowledged) cannot report a taken "
                  "email or a lost refresh race; use 1 or more, or \"majority\"");
        return NULL;
    }
    if (strlen(cfg->store.database) == 0 || strlen(cfg->store.database) >= sizeof(st->db) ||
        strpbrk(cfg->store.database, "/\\. \"$") != NULL) {
        error_set(err, errlen, "store.database \"%s\" is not a valid database name",
                  cfg->store.database);
        return NULL;
    }
    if ((st = calloc(1, sizeof(*st))) == NULL) {
        error_set(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(st->db, sizeof(st->db), "%s", cfg->store.database);
    if ((st->mp = pool_get(cfg, err, errlen)) == NULL) {
        free(st);
        return NULL;
    }
    if (do_migrate) {
        /*
         * A single-threaded client of its own: the master migrates before it forks, and a pool
         * would start monitoring threads there (whose malloc arenas every worker would inherit).
         */
        memset(&k, 0, sizeof(k));
        k.st = st;
        k.client = mongoc_client_new_from_uri(st->mp->uri);
        if (k.client == NULL) {
            error_set(err, errlen, "mongoc_client_new_from_uri failed");
            mongo_close(st);
            return NULL;
        }
        mongoc_client_set_error_api(k.client, MONGOC_ERROR_API_VERSION_2);
        mongoc_client_set_appname(k.client, "authd");
        int rc = migrate(&k, err, errlen);
        for (int i = 0; i < C_COUNT; i++)
            if (k.c[i] != NULL)
                mongoc_collection_destroy(k.c[i]);
        mongoc_client_destroy(k.client);
        if (rc < 0) {
            mongo_close(st);
            return NULL;
        }
    }
    return st;
}

/* A round trip to a primary (the server that can take writes). */
static enum store_status mongo_ping(struct store *st)
{
    bson_t *cmd = BCON_NEW("ping", BCON_INT32(1));
    mongoc_read_prefs_t *rp = mongoc_read_prefs_new(MONGOC_READ_PRIMARY);
    bson_error_t e;
    struct conn k;
    bool ok;

    conn_begin(&k, st);
    ok = k.client != NULL &&
         mongoc_client_read_command_with_opts(k.client, st->db, cmd, rp, NULL, NULL, &e);
    if (!ok && k.client != NULL)
        note_error(&k, "ping", &e);
    conn_end(&k);
    mongoc_read_prefs_destroy(rp);
    bson_destroy(cmd);
    return ok ? STORE_OK : STORE_ERROR;
}

/* ---- users ---- */

/*
 * One upsert keyed on the email inserts the user only if no document has that email: atomic on
 * every server, and on MongoDB also backed by the unique index (a duplicate-key error on a
 * concurrent upsert is retried by the server or reported as E11000: both mean CONFLICT).
 */
static enum store_status mongo_user_create(struct store *st, const char *email, const char *hash,
                                           int64_t now, struct store_user *out)
{
    size_t hash_len = hash != NULL ? strlen(hash) : 0;
    enum store_status ret = STORE_ERROR;
    struct upd_result r;
    struct conn k;

    if (strlen(email) > STORE_EMAIL_MAX || hash_len >= STORE_HASH_MAX) {
        log_error("user_create: %s too long", hash_len >= STORE_HASH_MAX ? "hash" : "email");
        return STORE_ERROR;
    }
    memset(out, 0, sizeof(*out));
    if (store_uuid(out->id) < 0)
        return STORE_ERROR;
    bson_t *filter = BCON_NEW("email", BCON_UTF8(email));
    bson_t *upd = BCON_NEW("$setOnInsert", "{", "id", BCON_UTF8(out->id), "email_verified",
                           BCON_INT32(0), "password_hash", BCON_UTF8(hash ? hash : ""),
                           "created_at", BCON_INT64(now), "updated_at", BCON_INT64(now), "}");
    if (hash == NULL) { /* like SQLite: no password is NULL */
        bson_destroy(upd);
        upd = BCON_NEW("$setOnInsert", "{", "id", BCON_UTF8(out->id), "email_verified",
                       BCON_INT32(0), "password_hash", BCON_NULL, "created_at", BCON_INT64(now),
                       "updated_at", BCON_INT64(now), "}");
    }
    conn_begin(&k, st);
    if (update(&k, C_USERS, filter, upd, 0, 1, "user_create", &r) == 0)
        ret = r.upserted == 1 ? STORE_OK : STORE_CONFLICT;
    else if (r.duplicate)
        ret = STORE_CONFLICT;
    conn_end(&k);
    bson_destroy(upd);
    bson_destroy(filter);
    if (ret == STORE_OK) {
        snprintf(out->email, sizeof(out->email), "%s", email);
        snprintf(out->password_hash, sizeof(out->password_hash), "%s", hash ? hash : "");
        out->created_at = now;
    } else {
        memset(out, 0, sizeof(*out));
    }
    return ret;
}

static enum store_status user_fetch(struct store *st, const char *key, const char *value,
                                    struct store_user *out)
{
    bson_t *filter = BCON_NEW(key, BCON_UTF8(value));
    bson_t doc = BSON_INITIALIZER;
    struct conn k;
    int rc;

    conn_begin(&k, st);
    rc = find_one(&k, C_USERS, filter, "user lookup", &doc);
    conn_end(&k);
    if (rc == 1)
        doc_user(&doc, out);
    bson_destroy(&doc);
    bson_destroy(filter);
    return rc < 0 ? STORE_ERROR : rc == 0 ? STORE_NOT_FOUND : STORE_OK;
}

static enum store_status mongo_user_by_email(struct store *st, const char *email,
                                             struct store_user *out)
{
    if (strlen(email) > STORE_EMAIL_MAX) /* never stored */
        return STORE_NOT_FOUND;
    return user_fetch(st, "email", email, out);
}

static enum store_status mongo_user_by_id(struct store *st, const char *id, struct store_user *out)
{
    return user_fetch(st, "id", id, out);
}

static enum store_status mongo_user_set_password(struct store *st, const char *user_id,
                                                 const char *hash, int64_t now)
{
    if (hash == NULL || strlen(hash) >= STORE_HASH_MAX) {
        log_error("user_set_password: hash missing or too long");
        return STORE_ERROR;
    }
    bson_t *filter = BCON_NEW("id", BCON_UTF8(user_id));
    bson_t *upd =
        BCON_NEW("$set", "{", "password_hash", BCON_UTF8(hash), "updated_at", BCON_INT64(now), "}");
    return update_one(st, C_USERS, filter, upd, "user_set_password");
}

/* ---- sessions ---- */

static bson_t *session_doc(const struct store_session *s, const char *token_hex)
{
    char ip[STORE_IP_MAX + 1], ua[STORE_UA_MAX + 1];

    return BCON_NEW("id", BCON_UTF8(s->id), "user_id", BCON_UTF8(s->user_id), "created_at",
                    BCON_INT64(s->created_at), "last_used_at", BCON_INT64(s->last_used_at),
                    "idle_expires_at", BCON_INT64(s->idle_expires_at), "expires_at",
                    BCON_INT64(s->expires_at), "revoked_at", BCON_NULL, "revoke_reason", BCON_NULL,
                    "ip", BCON_UTF8(clean_text(s->ip, STORE_IP_MAX, ip)), "user_agent",
                    BCON_UTF8(clean_text(s->user_agent, STORE_UA_MAX, ua)), "token",
                    BCON_UTF8(token_hex), "token_created_at", BCON_INT64(s->created_at),
                    "expire_at", BCON_DATE_TIME(s->expires_at * 1000));
}

/* NOT_FOUND when the user does not exist (as SQLite's foreign key). */
static enum store_status mongo_session_create(struct store *st, struct store_session *s,
                                              const uint8_t token_hash[32])
{
    enum store_status ret = STORE_ERROR;
    bson_t *filter = BCON_NEW("id", BCON_UTF8(s->user_id)), *doc = NULL;
    bson_t user = BSON_INITIALIZER;
    char hex[65];
    struct conn k;
    int rc;

    hex_of(token_hash, hex);
    if (store_uuid(s->id) < 0)
        goto out;
    conn_begin(&k, st);
    rc = find_one(&k, C_USERS, filter, "session_create: user lookup", &user);
    if (rc == 0)
        ret = STORE_NOT_FOUND;
    if (rc == 1) {
        doc = session_doc(s, hex);
        ret = insert(&k, C_SESSIONS, doc, "session_create", NULL) < 0 ? STORE_ERROR : STORE_OK;
    }
    conn_end(&k);
out:
    if (doc != NULL)
        bson_destroy(doc);
    bson_destroy(&user);
    bson_destroy(filter);
    return ret;
}

/* Revokes session `id` unless it already is (the first reason stays). 0 or -1. */
static int mark_revoked(struct conn *k, const char *id, int64_t now, const char *reason)
{
    bson_t *filter = BCON_NEW("id", BCON_UTF8(id), "revoked_at", BCON_NULL);
    bson_t *upd = BCON_NEW("$set", "{", "revoked_at", BCON_INT64(now), "revoke_reason",
                           BCON_UTF8(reason), "}");
    struct upd_result r;
    int rc = update(k, C_SESSIONS, filter, upd, 0, 0, "session revoke", &r);

    bson_destroy(upd);
    bson_destroy(filter);
    return rc;
}

/* The session whose current token is `hex`: 1 (into *doc), 0, -1. */
static int session_by_token(struct conn *k, const char *hex, bson_t *doc)
{
    bson_t *filter = BCON_NEW("token", BCON_UTF8(hex));
    int rc = find_one(k, C_SESSIONS, filter, "session by token", doc);

    bson_destroy(filter);
    return rc;
}

/* A rotated token was presented: revoke its family. REUSED, NOT_FOUND or ERROR. */
static enum store_status rotated_reuse(struct conn *k, const char *hex, int64_t now,
                                       struct store_session *out)
{
    bson_t *filter = BCON_NEW("hash", BCON_UTF8(hex)), *sf = NULL;
    bson_t tok = BSON_INITIALIZER, sess = BSON_INITIALIZER;
    char sid[STORE_ID_LEN + 1];
    int rc = find_one(k, C_TOKENS, filter, "refresh token lookup", &tok);

    if (rc == 1) {
        doc_text(&tok, "session_id", sid, sizeof(sid));
        sf = BCON_NEW("id", BCON_UTF8(sid));
        rc = find_one(k, C_SESSIONS, sf, "session lookup", &sess);
    }
    if (rc == 1) {
        doc_session(&sess, out);
        rc = mark_revoked(k, out->id, now, "reuse") < 0 ? -1 : 1;
    }
    if (sf != NULL)
        bson_destroy(sf);
    bson_destroy(&sess);
    bson_destroy(&tok);
    bson_destroy(filter);
    return rc < 0 ? STORE_ERROR : rc == 0 ? STORE_NOT_FOUND : STORE_REUSED;
}

/*
 * Keeps the hash being rotated away findable (reuse detection) before the rotation itself; an
 * upsert, so that a retried or concurrent attempt finds it there already.
 */
static int remember_rotated(struct conn *k, const char *old_hex, const bson_t *sess, int64_t now)
{
    char sid[STORE_ID_LEN + 1];
    struct upd_result r;

    doc_text(sess, "id", sid, sizeof(sid));
    bson_t *filter = BCON_NEW("hash", BCON_UTF8(old_hex));
    bson_t *upd = BCON_NEW("$setOnInsert", "{", "session_id", BCON_UTF8(sid), "state", "rotated",
                           "created_at", BCON_INT64(doc_int(sess, "token_created_at")),
                           "rotated_at", BCON_INT64(now), "expire_at",
                           BCON_DATE_TIME(doc_int(sess, "expires_at") * 1000), "}");
    int rc = update(k, C_TOKENS, filter, upd, 0, 1, "refresh token history", &r);

    bson_destroy(upd);
    bson_destroy(filter);
    return rc < 0 && !r.duplicate ? -1 : 0;
}

/*
 * After a rotation of `old_hex` that missed or failed: removes the history entry that
 * remember_rotated wrote, unless `old_hex` really was rotated away. It goes when session `sid`
 * is gone, or still has `old_hex` as its token but is revoked (nobody can rotate it any more);
 * it stays when the token moved on (a concurrent rotation won: reuse detection needs it) and
 * when the session still holds `old_hex` and is active (a concurrent rotation may be between
 * its remember_rotated and its update; the client retries and the entry is needed then). A
 * leftover entry is harmless for the driver, and the dump skips it (mongo_dump).
 */
static void forget_rotated(struct conn *k, const char *old_hex, const char *sid)
{
    bson_t *filter = BCON_NEW("id", BCON_UTF8(sid));
    bson_t sess = BSON_INITIALIZER;
    char token[65] = "";
    bson_error_t e;
    int rc = find_one(k, C_SESSIONS, filter, "session by id", &sess);

    bson_destroy(filter);
    if (rc == 1)
        doc_text(&sess, "token", token, sizeof(token));
    if (rc == 0 || (rc == 1 && strcmp(token, old_hex) == 0 && !doc_null(&sess, "revoked_at"))) {
        filter =
            BCON_NEW("hash", BCON_UTF8(old_hex), "session_id", BCON_UTF8(sid), "state", "rotated");
        if (!mongoc_collection_delete_one(coll(k, C_TOKENS), filter, NULL, NULL, &e))
            note_error(k, "refresh token history: delete", &e);
        bson_destroy(filter);
    }
    bson_destroy(&sess);
}

/*
 * One attempt at rotating: DECIDED (*ret set) or, when a concurrent change made the conditional
 * update miss, AGAIN. The update's filter {id, token: old, revoked_at: null} is what makes
 * exactly one of concurrent rotations win; the losers then find `old` rotated.
 */
enum attempt { DECIDED, AGAIN };

static enum attempt rotate_once(struct conn *k, const char *old_hex, const char *new_hex,
                                int64_t now, int64_t idle_ttl, struct store_session *out,
                                enum store_status *ret)
{
    bson_t sess = BSON_INITIALIZER, fresh = BSON_INITIALIZER;
    enum attempt a = DECIDED;
    int rc = session_by_token(k, old_hex, &sess), revoked;

    *ret = STORE_ERROR;
    if (rc == 0)
        *ret = rotated_reuse(k, old_hex, now, out);
    if (rc != 1)
        goto out;
    revoked = doc_session(&sess, out);
    if (!store_session_active(revoked, out, now)) {
        int ok = revoked || mark_revoked(k, out->id, now, "expired") == 0;
        *ret = ok ? STORE_EXPIRED : STORE_ERROR;
        goto out;
    }
    if (remember_rotated(k, old_hex, &sess, now) < 0)
        goto out;
    int64_t idle = store_idle_deadline(now, idle_ttl, out->expires_at);
    bson_t *filter =
        BCON_NEW("id", BCON_UTF8(out->id), "token", BCON_UTF8(old_hex), "revoked_at", BCON_NULL);
    bson_t *upd =
        BCON_NEW("$set", "{", "token", BCON_UTF8(new_hex), "token_created_at", BCON_INT64(now),
                 "last_used_at", BCON_INT64(now), "idle_expires_at", BCON_INT64(idle), "}");
    rc = find_and_update(k, C_SESSIONS, filter, upd, "session_rotate", &fresh);
    bson_destroy(upd);
    bson_destroy(filter);
    if (rc == 1) {
        doc_session(&fresh, out);
        *ret = STORE_OK;
    } else {
        forget_rotated(k, old_hex, out->id);
        if (rc == 0)
            a = AGAIN;
    }
out:
    bson_destroy(&fresh);
    bson_destroy(&sess);
    return a;
}

static enum store_status mongo_session_rotate(struct store *st, const uint8_t old_hash[32],
                                              const uint8_t new_hash[32], int64_t now,
                                              int64_t idle_ttl, struct store_session *out)
{
    enum store_status ret = STORE_ERROR;
    struct store_session s;
    char old_hex[65], new_hex[65];
    struct conn k;
    int i;

    hex_of(old_hash, old_hex);
    hex_of(new_hash, new_hex);
    conn_begin(&k, st);
    for (i = 0; i < ROTATE_TRIES; i++)
        if (rotate_once(&k, old_hex, new_hex, now, idle_ttl, &s, &ret) == DECIDED)
            break;
    conn_end(&k);
    if (i == ROTATE_TRIES) {
        log_error("session_rotate: the session kept changing; giving up");
        ret = STORE_ERROR;
    }
    if (ret != STORE_ERROR && ret != STORE_NOT_FOUND && out != NULL)
        *out = s;
    return ret;
}

static enum store_status mongo_session_get(struct store *st, const char *session_id, int64_t now,
                                           struct store_session *out)
{
    bson_t *filter = BCON_NEW("id", BCON_UTF8(session_id));
    bson_t doc = BSON_INITIALIZER;
    struct store_session s;
    enum store_status ret;
    struct conn k;
    int rc;

    conn_begin(&k, st);
    rc = find_one(&k, C_SESSIONS, filter, "session_get", &doc);
    conn_end(&k);
    ret = rc < 0 ? STORE_ERROR : STORE_NOT_FOUND;
    if (rc == 1) {
        int revoked = doc_session(&doc, &s);
        ret = store_session_active(revoked, &s, now) ? STORE_OK : STORE_EXPIRED;
        if (ret == STORE_OK)
            *out = s;
    }
    bson_destroy(&doc);
    bson_destroy(filter);
    return ret;
}

/* Logout: the family whose current token this is, if active; the update re-checks both. */
static enum store_status mongo_session_revoke_token(struct store *st, const uint8_t token_hash[32],
                                                    int64_t now, struct store_session *out)
{
    bson_t doc = BSON_INITIALIZER;
    enum store_status ret = STORE_NOT_FOUND;
    struct store_session s;
    struct upd_result r;
    char hex[65];
    struct conn k;
    int rc;

    hex_of(token_hash, hex);
    conn_begin(&k, st);
    rc = session_by_token(&k, hex, &doc);
    if (rc < 0)
        ret = STORE_ERROR;
    if (rc == 1 && store_session_active(doc_session(&doc, &s), &s, now)) {
        bson_t *filter =
            BCON_NEW("id", BCON_UTF8(s.id), "token", BCON_UTF8(hex), "revoked_at", BCON_NULL);
        bson_t *upd =
            BCON_NEW("$set", "{", "revoked_at", BCON_INT64(now), "revoke_reason", "logout", "}");
        if (update(&k, C_SESSIONS, filter, upd, 0, 0, "session_revoke_token", &r) < 0)
            ret = STORE_ERROR;
        else if (r.matched > 0)
            ret = STORE_OK;
        bson_destroy(upd);
        bson_destroy(filter);
    }
    conn_end(&k);
    bson_destroy(&doc);
    if (ret == STORE_OK && out != NULL)
        *out = s;
    return ret;
}

/* {user_id, revoked_at: null, both expiries after now} plus the caller's extra condition. */
static bson_t *active_filter(const char *user_id, int64_t now)
{
    return BCON_NEW("user_id", BCON_UTF8(user_id), "revoked_at", BCON_NULL, "idle_expires_at", "{",
                    "$gt", BCON_INT64(now), "}", "expires_at", "{", "$gt", BCON_INT64(now), "}");
}

static bson_t *revoke_update(int64_t now)
{
    return BCON_NEW("$set", "{", "revoked_at", BCON_INT64(now), "revoke_reason", "revoked", "}");
}

static enum store_status mongo_session_revoke(struct store *st, const char *user_id,
                                              const char *session_id, int64_t now)
{
    bson_t *filter = active_filter(user_id, now), *upd = revoke_update(now);

    BSON_APPEND_UTF8(filter, "id", session_id);
    return update_one(st, C_SESSIONS, filter, upd, "session_revoke");
}

static enum store_status mongo_session_revoke_others(struct store *st, const char *user_id,
                                                     const char *keep_id, int64_t now, int *count_r)
{
    bson_t *filter = active_filter(user_id, now), *upd = revoke_update(now), ne;
    struct upd_result r;
    struct conn k;
    int rc;

    if (count_r != NULL)
        *count_r = 0;
    if (keep_id != NULL) {
        BSON_APPEND_DOCUMENT_BEGIN(filter, "id", &ne);
        BSON_APPEND_UTF8(&ne, "$ne", keep_id);
        bson_append_document_end(filter, &ne);
    }
    conn_begin(&k, st);
    rc = update(&k, C_SESSIONS, filter, upd, 1, 0, "session_revoke_others", &r);
    conn_end(&k);
    bson_destroy(upd);
    bson_destroy(filter);
    if (rc < 0)
        return STORE_ERROR;
    if (count_r != NULL)
        *count_r = (int)r.modified;
    return STORE_OK;
}

static enum store_status mongo_session_list(struct store *st, const char *user_id, int64_t now,
                                            struct store_session *out, int max, int *count_r)
{
    bson_t *filter = active_filter(user_id, now);
    bson_t *opts = BCON_NEW("sort", "{", "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1), "}",
                            "limit", BCON_INT64(max));
    mongoc_cursor_t *cur;
    const bson_t *doc;
    bson_error_t e;
    struct conn k;
    int n = 0, failed = 1;

    *count_r = 0;
    if (max <= 0) {
        bson_destroy(opts);
        bson_destroy(filter);
        return STORE_OK;
    }
    conn_begin(&k, st);
    if (k.client != NULL) {
        cur = mongoc_collection_find_with_opts(coll(&k, C_SESSIONS), filter, opts, NULL);
        while (n < max && mongoc_cursor_next(cur, &doc))
            doc_session(doc, &out[n++]);
        failed = mongoc_cursor_error(cur, &e);
        if (failed)
            note_error(&k, "session_list", &e);
        mongoc_cursor_destroy(cur);
    }
    conn_end(&k);
    bson_destroy(opts);
    bson_destroy(filter);
    if (failed)
        return STORE_ERROR;
    *count_r = n;
    return STORE_OK;
}

/* ---- audit ---- */

static void append_text(bson_t *b, const char *key, const char *v, size_t max, char *buf)
{
    if (v == NULL)
        BSON_APPEND_NULL(b, key);
    else
        BSON_APPEND_UTF8(b, key, clean_text(v, max, buf));
}

static enum store_status mongo_audit_append(struct store *st, const struct store_audit *a)
{
    bson_t doc = BSON_INITIALIZER;
    char buf[TEXT_BUF];
    struct conn k;
    int rc;

    if (a->event == NULL || a->result == NULL) {
        log_error("audit_append: event and result are required");
        return STORE_ERROR;
    }
    BSON_APPEND_INT64(&doc, "at", a->at);
    append_text(&doc, "event", a->event, AUDIT_TEXT_MAX, buf);
    append_text(&doc, "result", a->result, AUDIT_TEXT_MAX, buf);
    append_text(&doc, "user_id", a->user_id, AUDIT_TEXT_MAX, buf);
    append_text(&doc, "ip", a->ip, STORE_IP_MAX, buf);
    append_text(&doc, "user_agent", a->user_agent, STORE_UA_MAX, buf);
    append_text(&doc, "request_id", a->request_id, AUDIT_TEXT_MAX, buf);
    append_text(&doc, "detail", a->detail, AUDIT_TEXT_MAX, buf);
    conn_begin(&k, st);
    rc = insert(&k, C_AUDIT, &doc, "audit_append", NULL);
    conn_end(&k);
    bson_destroy(&doc);
    return rc < 0 ? STORE_ERROR : STORE_OK;
}

/* ---- backup: dump, restore, count ---- */

enum kind { K_TEXT, K_TEXT_NULL, K_INT, K_INT_NULL };

struct field {
    const char *name;
    enum kind kind;
};

/* The backup record of each collection (store.h): SQLite's columns, in its order. */
static const struct field user_fields[] = {{"id", K_TEXT},
                                           {"email", K_TEXT},
                                           {"email_verified", K_INT},
                                           {"password_hash", K_TEXT_NULL},
                                           {"created_at", K_INT},
                                           {"updated_at", K_INT},
                                           {NULL, 0}};
static const struct field session_fields[] = {{"id", K_TEXT},
                                              {"user_id", K_TEXT},
                                              {"created_at", K_INT},
                                              {"last_used_at", K_INT},
                                              {"idle_expires_at", K_INT},
                                              {"expires_at", K_INT},
                                              {"revoked_at", K_INT_NULL},
                                              {"revoke_reason", K_TEXT_NULL},
                                              {"ip", K_TEXT_NULL},
                                              {"user_agent", K_TEXT_NULL},
                                              {NULL, 0}};
static const struct field token_fields[] = {{"hash", K_TEXT},           {"session_id", K_TEXT},
                                            {"state", K_TEXT},          {"created_at", K_INT},
                                            {"rotated_at", K_INT_NULL}, {NULL, 0}};
static const struct field audit_fields[] = {{"at", K_INT},
                                            {"event", K_TEXT},
                                            {"result", K_TEXT},
                                            {"user_id", K_TEXT_NULL},
                                            {"ip", K_TEXT_NULL},
                                            {"user_agent", K_TEXT_NULL},
                                            {"request_id", K_TEXT_NULL},
                                            {"detail", K_TEXT_NULL},
                                            {NULL, 0}};

/* The collections of a backup, in store.h's order, with their record fields. */
static const struct {
    const char *name;
    enum coll c;
    const struct field *fields;
} backup_colls[] = {{"users", C_USERS, user_fields},
                    {"sessions", C_SESSIONS, session_fields},
                    {"refresh_tokens", C_TOKENS, token_fields},
                    {"audit_events", C_AUDIT, audit_fields}};
#define BACKUP_COLLS (sizeof(backup_colls) / sizeof(backup_colls[0]))

/* A document's fields as a backup record; NULL when a string is not UTF-8 (logged). */
static json_t *record_of(const bson_t *d, const struct field *f, const char *what)
{
    json_t *rec = json_object();
    bson_iter_t it;

    for (; rec != NULL && f->name != NULL; f++) {
        json_t *v;
        if (!bson_iter_init_find(&it, d, f->name) || BSON_ITER_HOLDS_NULL(&it)) {
            v = json_null();
        } else if (BSON_ITER_HOLDS_UTF8(&it)) {
            uint32_t len;
            const char *t = bson_iter_utf8(&it, &len);
            v = json_stringn(t, len);
        } else if (BSON_ITER_HOLDS_NUMBER(&it) || BSON_ITER_HOLDS_BOOL(&it)) {
            v = json_integer(bson_iter_as_int64(&it));
        } else {
            v = NULL;
        }
        if (v == NULL || json_object_set_new(rec, f->name, v) < 0) {
            log_error("dump: %s.%s: unexpected value", what, f->name);
            json_decref(rec);
            return NULL;
        }
    }
    return rec;
}

/* A set of short strings (session ids, token hashes): appended, then sorted and searched. */
struct keyset {
    char (*v)[65];
    size_t n, cap;
    int sorted;
};

static int keyset_add(struct keyset *ks, const char *key)
{
    if (ks->n == ks->cap) {
        size_t nc = ks->cap ? ks->cap * 2 : 1024;
        char(*nv)[65] = realloc(ks->v, nc * sizeof(*nv));
        if (nv == NULL) {
            log_error("dump: out of memory");
            return -1;
        }
        ks->v = nv;
        ks->cap = nc;
    }
    snprintf(ks->v[ks->n++], sizeof(ks->v[0]), "%s", key);
    ks->sorted = 0;
    return 0;
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int keyset_has(struct keyset *ks, const char *key)
{
    char k[65];

    if (ks->n == 0)
        return 0;
    if (!ks->sorted) {
        qsort(ks->v, ks->n, sizeof(ks->v[0]), key_cmp);
        ks->sorted = 1;
    }
    snprintf(k, sizeof(k), "%s", key);
    return bsearch(k, ks->v, ks->n, sizeof(ks->v[0]), key_cmp) != NULL;
}

struct dump {
    struct keyset sessions; /* ids of the emitted sessions */
    struct keyset current;  /* their current tokens, as emitted */
    struct conn *k;
    mongoc_client_session_t *cs; /* snapshot session on a replica set, else NULL */
    store_emit_fn emit;
    void *ctx;
    int64_t audit_id;
};

/* Calls fn for each document of collection c (in _id order). 0, or -1 (logged / fn's -1). */
static int each_doc(struct dump *dp, enum coll c, const bson_t *filter,
                    int (*fn)(struct dump *, const bson_t *))
{
    bson_t *opts = BCON_NEW("sort", "{", "_id", BCON_INT32(1), "}");
    bson_error_t e;
    const bson_t *doc;
    int rc = 0;

    if (dp->cs != NULL && !mongoc_client_session_append(dp->cs, opts, &e)) {
        log_failure("dump: session", &e);
        bson_destroy(opts);
        return -1;
    }
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll(dp->k, c), filter, opts, NULL);
    while (rc == 0 && mongoc_cursor_next(cur, &doc))
        rc = fn(dp, doc);
    if (rc == 0 && mongoc_cursor_error(cur, &e)) {
        note_error(dp->k, "dump", &e);
        rc = -1;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    return rc;
}

static int emit_record(struct dump *dp, const char *collection, json_t *rec)
{
    int rc;

    if (rec == NULL)
        return -1;
    rc = dp->emit(dp->ctx, collection, rec);
    json_decref(rec);
    return rc < 0 ? -1 : 0;
}

static int dump_user(struct dump *dp, const bson_t *d)
{
    return emit_record(dp, "users", record_of(d, user_fields, "users"));
}

static int dump_session(struct dump *dp, const bson_t *d)
{
    char id[STORE_ID_LEN + 1];

    doc_text(d, "id", id, sizeof(id));
    if (keyset_add(&dp->sessions, id) < 0)
        return -1;
    return emit_record(dp, "sessions", record_of(d, session_fields, "sessions"));
}

/* A session's current token as a refresh_tokens record. */
static int dump_current(struct dump *dp, const bson_t *d)
{
    char id[STORE_ID_LEN + 1], hash[65];

    if (doc_null(d, "token"))
        return 0;
    doc_text(d, "id", id, sizeof(id));
    doc_text(d, "token", hash, sizeof(hash));
    /* Without a snapshot (standalone server) the second pass may see a session the first did
     * not emit: its token would be an orphan. */
    if (!keyset_has(&dp->sessions, id))
        return 0;
    if (keyset_add(&dp->current, hash) < 0)
        return -1;
    return emit_record(dp, "refresh_tokens",
                       json_pack("{s:s, s:s, s:s, s:I, s:n}", "hash", hash, "session_id", id,
                                 "state", "current", "created_at",
                                 (json_int_t)doc_int(d, "token_created_at"), "rotated_at"));
}

/*
 * A rotated token, unless it would make the file unrestorable: its session was not emitted, or
 * its hash is also an emitted session's current token (a history entry left by a rotation that
 * did not happen, see forget_rotated: the session still holds the token, so it is current).
 */
static int dump_rotated(struct dump *dp, const bson_t *d)
{
    char sid[STORE_ID_LEN + 1], hash[65];

    doc_text(d, "session_id", sid, sizeof(sid));
    doc_text(d, "hash", hash, sizeof(hash));
    if (!keyset_has(&dp->sessions, sid) || keyset_has(&dp->current, hash))
        return 0;
    return emit_record(dp, "refresh_tokens", record_of(d, token_fields, "refresh_tokens"));
}

/* Audit events get ids 1, 2, ... in insertion order (SQLite's INTEGER PRIMARY KEY). */
static int dump_audit(struct dump *dp, const bson_t *d)
{
    json_t *rec = record_of(d, audit_fields, "audit_events");

    if (rec != NULL && json_object_set_new(rec, "id", json_integer(++dp->audit_id)) < 0) {
        json_decref(rec);
        rec = NULL;
    }
    return emit_record(dp, "audit_events", rec);
}

/* Whether the deployment is a replica set (snapshot reads need one). -1 when unreachable. */
static int is_replica_set(struct conn *k)
{
    bson_t *cmd = BCON_NEW("hello", BCON_INT32(1));
    bson_t reply = BSON_INITIALIZER;
    bson_error_t e;
    int rc = -1;

    if (k->client == NULL)
        log_error("dump: the server is unreachable");
    else if (mongoc_client_command_simple(k->client, "admin", cmd, NULL, &reply, &e))
        rc = bson_has_field(&reply, "setName");
    else
        note_error(k, "dump: hello", &e);
    bson_destroy(&reply);
    bson_destroy(cmd);
    return rc;
}

/*
 * On a replica set every read runs in one snapshot session (one point in time); a standalone
 * server has no snapshot reads, so there the dump is only as consistent as the traffic allows.
 */
static enum store_status mongo_dump(struct store *st, store_emit_fn emit, void *ctx)
{
    struct dump dp = {.emit = emit, .ctx = ctx};
    bson_t all = BSON_INITIALIZER, rotated;
    mongoc_session_opt_t *so = NULL;
    bson_error_t e;
    struct conn k;
    int rc = -1, rs;

    bson_init(&rotated);
    BSON_APPEND_UTF8(&rotated, "state", "rotated");
    conn_begin(&k, st);
    dp.k = &k;
    if ((rs = is_replica_set(&k)) < 0)
        goto out;
    if (rs) {
        so = mongoc_session_opts_new();
        mongoc_session_opts_set_snapshot(so, true);
        if ((dp.cs = mongoc_client_start_session(k.client, so, &e)) == NULL) {
            log_failure("dump: snapshot session", &e);
            goto out;
        }
    }
    rc = each_doc(&dp, C_USERS, &all, dump_user);
    if (rc == 0)
        rc = each_doc(&dp, C_SESSIONS, &all, dump_session);
    if (rc == 0)
        rc = each_doc(&dp, C_SESSIONS, &all, dump_current);
    if (rc == 0)
        rc = each_doc(&dp, C_TOKENS, &rotated, dump_rotated);
    if (rc == 0)
        rc = each_doc(&dp, C_AUDIT, &all, dump_audit);
out:
    if (dp.cs != NULL)
        mongoc_client_session_destroy(dp.cs);
    if (so != NULL)
        mongoc_session_opts_destroy(so);
    conn_end(&k);
    free(dp.sessions.v);
    free(dp.current.v);
    bson_destroy(&rotated);
    bson_destroy(&all);
    return rc == 0 ? STORE_OK : STORE_ERROR;
}

struct restore {
    struct conn *k;
    mongoc_collection_t *stage[BACKUP_COLLS];
    mongoc_bulk_operation_t *bulk[BACKUP_COLLS];
    int pending[BACKUP_COLLS];
    int64_t added[BACKUP_COLLS]; /* records added per collection */
};

static void stage_name(size_t i, char *buf, size_t len)
{
    snprintf(buf, len, "restore_%s", backup_colls[i].name);
}

/* Whether staging collection i holds as many documents as records were added (before the swap:
 * a mismatch leaves the live data as it was). 0, or -1 logged. */
static int stage_count_ok(struct restore *r, size_t i)
{
    char stage[64];
    bson_t reply;
    bson_error_t e;
    int rc = -1;

    stage_name(i, stage, sizeof(stage));
    bson_t *cmd = BCON_NEW("count", BCON_UTF8(stage), "query", "{", "}");
    bson_init(&reply);
    if (!mongoc_client_read_command_with_opts(r->k->client, r->k->st->db, cmd, NULL, NULL, &reply,
                                              &e))
        log_failure("restore: count", &e);
    else if (doc_int(&reply, "n") != r->added[i])
        log_error("restore: %s would hold %lld documents, the file has %lld records", stage,
                  (long long)doc_int(&reply, "n"), (long long)r->added[i]);
    else
        rc = 0;
    bson_destroy(&reply);
    bson_destroy(cmd);
    return rc;
}

/* A backup record as a document; NULL when a field is missing or of the wrong type (logged). */
static bson_t *doc_of_record(json_t *rec, const struct field *f, const char *what)
{
    bson_t *d = bson_new();

    for (; f->name != NULL; f++) {
        json_t *v = json_object_get(rec, f->name);
        int nullable = f->kind == K_TEXT_NULL || f->kind == K_INT_NULL;
        if (v == NULL || json_is_null(v)) {
            if (!nullable)
                goto bad;
            BSON_APPEND_NULL(d, f->name);
        } else if ((f->kind == K_TEXT || f->kind == K_TEXT_NULL) && json_is_string(v)) {
            bson_append_utf8(d, f->name, -1, json_string_value(v), (int)json_string_length(v));
        } else if ((f->kind == K_INT || f->kind == K_INT_NULL) && json_is_integer(v)) {
            BSON_APPEND_INT64(d, f->name, json_integer_value(v));
        } else {
            goto bad;
        }
    }
    return d;
bad:
    log_error("restore: %s.%s: missing or of the wrong type", what, f->name);
    bson_destroy(d);
    return NULL;
}

static int hash_ok(const bson_t *d)
{
    char h[66], state[16];

    doc_text(d, "hash", h, sizeof(h));
    doc_text(d, "state", state, sizeof(state));
    if (strlen(h) != 64 || strspn(h, "0123456789abcdef") != 64)
        return 0;
    return strcmp(state, "current") == 0 || strcmp(state, "rotated") == 0;
}

static int flush(struct restore *r, size_t i)
{
    bson_error_t e;
    bson_t reply;
    int ok;

    if (r->bulk[i] == NULL)
        return 0;
    ok = mongoc_bulk_operation_execute(r->bulk[i], &reply, &e) != 0;
    if (!ok)
        log_failure("restore: insert", &e);
    bson_destroy(&reply);
    mongoc_bulk_operation_destroy(r->bulk[i]);
    r->bulk[i] = NULL;
    return ok ? 0 : -1;
}

/* Adds one record to its collection's staging batch. 0, or -1 logged. */
static int restore_record(struct restore *r, const char *collection, json_t *rec)
{
    size_t i = 0;
    bson_error_t e;

    while (i < BACKUP_COLLS && strcmp(backup_colls[i].name, collection ? collection : "") != 0)
        i++;
    if (i == BACKUP_COLLS || !json_is_object(rec)) {
        log_error("restore: malformed record (collection \"%s\")", collection ? collection : "");
        return -1;
    }
    bson_t *d = doc_of_record(rec, backup_colls[i].fields, backup_colls[i].name);
    if (d == NULL)
        return -1;
    int ok = backup_colls[i].c != C_TOKENS || hash_ok(d);
    if (!ok)
        log_error("restore: refresh_tokens: hash or state malformed");
    if (backup_colls[i].c == C_SESSIONS)
        BSON_APPEND_DATE_TIME(d, "expire_at", doc_int(d, "expires_at") * 1000);
    if (ok && r->bulk[i] == NULL)
        r->bulk[i] = mongoc_collection_create_bulk_operation_with_opts(r->stage[i], NULL);
    if (ok && !mongoc_bulk_operation_insert_with_opts(r->bulk[i], d, NULL, &e)) {
        log_failure("restore: batch", &e);
        ok = 0;
    }
    bson_destroy(d);
    if (ok)
        r->added[i]++;
    if (ok && ++r->pending[i] >= RESTORE_BATCH) {
        r->pending[i] = 0;
        return flush(r, i);
    }
    return ok ? 0 : -1;
}

/*
 * Refresh-token records become what the driver keeps: a current one is its session's `token`,
 * a rotated one stays with its session's expiry for TTL. 0, or -1 logged.
 */
static int restore_tokens(struct restore *r)
{
    mongoc_collection_t *tokens = r->stage[2], *sessions = r->stage[1];
    bson_t *all = bson_new(), *current = BCON_NEW("state", "current");
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(tokens, all, NULL, NULL);
    const bson_t *t;
    bson_error_t e;
    int rc = 0;

    while (rc == 0 && mongoc_cursor_next(cur, &t)) {
        char sid[STORE_ID_LEN + 1], hash[65], state[16];
        bson_t sess = BSON_INITIALIZER, *f, *u;
        doc_text(t, "session_id", sid, sizeof(sid));
        doc_text(t, "hash", hash, sizeof(hash));
        doc_text(t, "state", state, sizeof(state));
        f = BCON_NEW("id", BCON_UTF8(sid));
        mongoc_cursor_t *sc = mongoc_collection_find_with_opts(sessions, f, NULL, NULL);
        const bson_t *sd;
        if (mongoc_cursor_next(sc, &sd))
            bson_copy_to(sd, &sess);
        else
            rc = -1;
        mongoc_cursor_destroy(sc);
        bson_destroy(f);
        if (rc < 0) {
            log_error("restore: refresh token of an unknown session %s", sid);
            bson_destroy(&sess);
            break;
        }
        if (strcmp(state, "current") == 0) {
            f = BCON_NEW("id", BCON_UTF8(sid));
            u = BCON_NEW("$set", "{", "token", BCON_UTF8(hash), "token_created_at",
                         BCON_INT64(doc_int(t, "created_at")), "}");
            rc = mongoc_collection_update_one(sessions, f, u, NULL, NULL, &e) ? 0 : -1;
        } else {
            f = BCON_NEW("hash", BCON_UTF8(hash));
            u = BCON_NEW("$set", "{", "expire_at",
                         BCON_DATE_TIME(doc_int(&sess, "expires_at") * 1000), "}");
            rc = mongoc_collection_update_one(tokens, f, u, NULL, NULL, &e) ? 0 : -1;
        }
        if (rc < 0)
            log_failure("restore: refresh token", &e);
        bson_destroy(u);
        bson_destroy(f);
        bson_destroy(&sess);
    }
    if (rc == 0 && mongoc_cursor_error(cur, &e)) {
        log_failure("restore: refresh tokens", &e);
        rc = -1;
    }
    mongoc_cursor_destroy(cur);
    if (rc == 0 && !mongoc_collection_delete_many(tokens, current, NULL, NULL, &e)) {
        log_failure("restore: refresh tokens", &e);
        rc = -1;
    }
    bson_destroy(current);
    bson_destroy(all);
    return rc;
}

/* Drops the staging collections (a missing one is fine). */
static void stage_drop(struct restore *r)
{
    bson_error_t e;

    for (size_t i = 0; i < BACKUP_COLLS; i++)
        if (!mongoc_collection_drop(r->stage[i], &e) && e.code != 26 /* NamespaceNotFound */)
            log_failure("restore: drop a staging collection", &e);
}

/* Each staging collection replaces its live one (renameCollection with dropTarget). */
static int stage_swap(struct restore *r)
{
    char from[256], to[256], stage[64];
    bson_error_t e;

    for (size_t i = 0; i < BACKUP_COLLS; i++) {
        stage_name(i, stage, sizeof(stage));
        snprintf(from, sizeof(from), "%s.%s", r->k->st->db, stage);
        snprintf(to, sizeof(to), "%s.%s", r->k->st->db, backup_colls[i].name);
        bson_t *cmd = BCON_NEW("renameCollection", BCON_UTF8(from), "to", BCON_UTF8(to),
                               "dropTarget", BCON_BOOL(true));
        int ok = mongoc_client_command_simple(r->k->client, "admin", cmd, NULL, NULL, &e);
        bson_destroy(cmd);
        if (!ok) {
            log_failure("restore: renameCollection", &e);
            return -1;
        }
    }
    return 0;
}

/*
 * Fills staging collections (restore_users, ...) with their indexes, then renames each over its
 * live collection. A malformed record or a failure before the renames leaves the live data as it
 * was; the renames themselves are atomic one collection at a time (MongoDB has no atomic rename
 * of several), so stop the workers during a restore (docs/operations.md).
 */
static enum store_status mongo_restore(struct store *st, store_next_fn next, void *ctx)
{
    struct restore r;
    struct conn k;
    const char *collection;
    char stage[64], err[256];
    json_t *rec;
    int rc = 0, n;

    memset(&r, 0, sizeof(r));
    conn_begin(&k, st);
    if (k.client == NULL) {
        log_error("restore: the server is unreachable");
        return STORE_ERROR;
    }
    r.k = &k;
    for (size_t i = 0; i < BACKUP_COLLS; i++) {
        stage_name(i, stage, sizeof(stage));
        r.stage[i] = mongoc_client_get_collection(k.client, st->db, stage);
    }
    stage_drop(&r);
    for (size_t i = 0; rc == 0 && i < BACKUP_COLLS; i++) {
        stage_name(i, stage, sizeof(stage));
        if ((rc = create_indexes(&k, backup_colls[i].c, stage, 0, err, sizeof(err))) < 0)
            log_error("restore: %s", err);
    }
    while (rc == 0 && (n = next(ctx, &collection, &rec)) != 0) {
        rc = n < 0 ? -1 : restore_record(&r, collection, rec);
        if (n > 0)
            json_decref(rec);
    }
    for (size_t i = 0; i < BACKUP_COLLS; i++)
        if (flush(&r, i) < 0)
            rc = -1;
    if (rc == 0)
        rc = stage_count_ok(&r, 0); /* users: restore_tokens changes the token count */
    if (rc == 0)
        rc = restore_tokens(&r);
    if (rc == 0)
        rc = stage_swap(&r);
    if (rc < 0)
        stage_drop(&r);
    /* The TTL indexes only now: sessions that expired long ago are in the file too (their
     * tokens refer to them); the TTL monitor removes them from the live collections later. */
    for (size_t i = 0; rc == 0 && i < BACKUP_COLLS; i++)
        if ((rc = create_indexes(&k, backup_colls[i].c, backup_colls[i].name, 1, err,
                                 sizeof(err))) < 0)
            log_error("restore: %s", err);
    for (size_t i = 0; i < BACKUP_COLLS; i++)
        mongoc_collection_destroy(r.stage[i]);
    conn_end(&k);
    return rc == 0 ? STORE_OK : STORE_ERROR;
}

static enum store_status mongo_count_users(struct store *st, int64_t *count_r)
{
    bson_t *cmd = BCON_NEW("count", coll_names[C_USERS], "query", "{", "}");
    bson_t reply;
    bson_error_t e;
    struct conn k;
    bool ok;

    bson_init(&reply);
    conn_begin(&k, st);
    ok = k.client != NULL &&
         mongoc_client_read_command_with_opts(k.client, st->db, cmd, NULL, NULL, &reply, &e);
    if (!ok && k.client != NULL)
        note_error(&k, "count_users", &e);
    conn_end(&k);
    if (ok)
        *count_r = doc_int(&reply, "n");
    bson_destroy(&reply);
    bson_destroy(cmd);
    return ok ? STORE_OK : STORE_ERROR;
}

/* ---- retention (store.h: prune_sessions, prune_audit) ---- */

/*
 * Sessions that ended before `before`: revoked, idle-expired or expired (expire_at, the TTL
 * index's date, is expires_at). Every branch of the $or has its index, so the server can use
 * them all (an unindexed branch would make it scan the collection).
 */
static bson_t *ended_filter(int64_t before)
{
    return BCON_NEW("$or", "[", "{", "idle_expires_at", "{", "$lt", BCON_INT64(before), "}", "}",
                    "{", "revoked_at", "{", "$lt", BCON_INT64(before), "}", "}", "{", "expire_at",
                    "{", "$lt", BCON_DATE_TIME(before * 1000), "}", "}", "]");
}

/*
 * Appends to the array `out` the `field` value of at most `limit` documents of `c` matching
 * `filter`. The number appended, or -1 logged.
 */
static int64_t collect_keys(struct conn *k, enum coll c, const bson_t *filter, const char *field,
                            int64_t limit, bson_t *out, const char *what)
{
    bson_t *opts =
        BCON_NEW("projection", "{", field, BCON_INT32(1), "}", "limit", BCON_INT64(limit));
    mongoc_cursor_t *cur;
    const bson_t *doc;
    bson_error_t e;
    bson_iter_t it;
    int64_t n = 0;

    if (k->client == NULL) {
        bson_destroy(opts);
        return -1;
    }
    cur = mongoc_collection_find_with_opts(coll(k, c), filter, opts, NULL);
    while (n < limit && mongoc_cursor_next(cur, &doc)) {
        char idx[24];
        const char *key;
        if (!bson_iter_init_find(&it, doc, field))
            continue;
        bson_uint32_to_string((uint32_t)n, &key, idx, sizeof(idx));
        bson_append_iter(out, key, -1, &it);
        n++;
    }
    if (mongoc_cursor_error(cur, &e)) {
        note_error(k, what, &e);
        n = -1;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    return n;
}

/*
 * deleteMany {field: {$in: the first `max` values of keys}} plus the conditions of `also` (may
 * be NULL). The number deleted, or -1 logged.
 */
static int64_t delete_in(struct conn *k, enum coll c, const char *field, const bson_t *keys,
                         int64_t max, const bson_t *also, const char *what)
{
    bson_t filter = BSON_INITIALIZER, cond, in, reply;
    bson_iter_t it;
    bson_error_t e;
    int64_t n = 0;

    BSON_APPEND_DOCUMENT_BEGIN(&filter, field, &cond);
    BSON_APPEND_ARRAY_BEGIN(&cond, "$in", &in);
    if (bson_iter_init(&it, keys))
        while (n < max && bson_iter_next(&it)) {
            char idx[24];
            const char *key;
            bson_uint32_to_string((uint32_t)n++, &key, idx, sizeof(idx));
            bson_append_iter(&in, key, -1, &it);
        }
    bson_append_array_end(&cond, &in);
    bson_append_document_end(&filter, &cond);
    if (also != NULL)
        bson_concat(&filter, also);
    n = -1;
    if (k->client != NULL && mongoc_collection_delete_many(coll(k, c), &filter, NULL, &reply, &e))
        n = doc_int(&reply, "deletedCount");
    else if (k->client != NULL)
        note_error(k, what, &e);
    if (k->client != NULL)
        bson_destroy(&reply);
    bson_destroy(&filter);
    return n;
}

/*
 * At most `batch` ended sessions are looked at; at most `batch` of their rotated hashes go;
 * when fewer than `batch` were left, every hash of those sessions is gone and as many sessions
 * as the batch still allows go too (re-checked against ended_filter in the delete itself).
 */
static enum store_status mongo_prune_sessions(struct store *st, int64_t before, int batch,
                                              int64_t *sessions_r, int64_t *tokens_r)
{
    bson_t *ended = ended_filter(before), ids = BSON_INITIALIZER, oids = BSON_INITIALIZER;
    bson_t *of = NULL;
    int64_t ns = 0, nt = 0, dt = 0, ds = 0;
    struct conn k;

    *sessions_r = *tokens_r = 0;
    conn_begin(&k, st);
    if (batch > 0)
        ns = collect_keys(&k, C_SESSIONS, ended, "id", batch, &ids, "prune: ended sessions");
    if (ns > 0) {
        of = BCON_NEW("session_id", "{", "$in", BCON_ARRAY(&ids), "}");
        nt = collect_keys(&k, C_TOKENS, of, "_id", batch, &oids, "prune: refresh tokens");
    }
    if (nt > 0)
        dt = delete_in(&k, C_TOKENS, "_id", &oids, nt, NULL, "prune: delete refresh tokens");
    if (ns > 0 && nt >= 0 && nt < batch && dt >= 0)
        ds = delete_in(&k, C_SESSIONS, "id", &ids, batch - nt, ended, "prune: delete sessions");
    conn_end(&k);
    if (of != NULL)
        bson_destroy(of);
    bson_destroy(&oids);
    bson_destroy(&ids);
    bson_destroy(ended);
    *tokens_r = dt > 0 ? dt : 0;
    *sessions_r = ds > 0 ? ds : 0;
    return ns < 0 || nt < 0 || dt < 0 || ds < 0 ? STORE_ERROR : STORE_OK;
}

static enum store_status mongo_prune_audit(struct store *st, int64_t before, int batch,
                                           int64_t *count_r)
{
    bson_t *old = BCON_NEW("at", "{", "$lt", BCON_INT64(before), "}"), oids = BSON_INITIALIZER;
    int64_t n = 0, d = 0;
    struct conn k;

    *count_r = 0;
    conn_begin(&k, st);
    if (batch > 0)
        n = collect_keys(&k, C_AUDIT, old, "_id", batch, &oids, "prune: old audit events");
    if (n > 0)
        d = delete_in(&k, C_AUDIT, "_id", &oids, n, NULL, "prune: delete audit events");
    conn_end(&k);
    bson_destroy(&oids);
    bson_destroy(old);
    *count_r = d > 0 ? d : 0;
    return n < 0 || d < 0 ? STORE_ERROR : STORE_OK;
}

const struct store_driver store_mongo_driver = {
    .name = "mongo",
    .open = mongo_open,
    .close = mongo_close,
    .ping = mongo_ping,
    .user_create = mongo_user_create,
    .user_by_email = mongo_user_by_email,
    .user_by_id = mongo_user_by_id,
    .user_set_password = mongo_user_set_password,
    .session_create = mongo_session_create,
    .session_rotate = mongo_session_rotate,
    .session_get = mongo_session_get,
    .session_revoke_token = mongo_session_revoke_token,
    .session_revoke = mongo_session_revoke,
    .session_revoke_others = mongo_session_revoke_others,
    .session_list = mongo_session_list,
    .audit_append = mongo_audit_append,
    .dump = mongo_dump,
    .restore = mongo_restore,
    .count_users = mongo_count_users,
    .prune_sessions = mongo_prune_sessions,
    .prune_audit = mongo_prune_audit,
};
