/*
 * store: the table of built-in store drivers, the identifiers they all use and the rules they
 * share, the email re-normalization migration's among them (see store.h).
 */
#include "shared/store.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/rand.h>

#include "shared/email.h"
#include "shared/log.h"
#include "shared/store_mongo.h"
#include "shared/store_sqlite.h"

static const struct store_driver *const drivers[] = {
    &store_sqlite_driver,
    &store_mongo_driver,
};

volatile sig_atomic_t store_dump_cancel;

const struct store_driver *store_driver_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++)
        if (!strcmp(drivers[i]->name, name))
            return drivers[i];
    return NULL;
}

int store_uuid(char out[STORE_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    char msg[256];
    size_t j = 0;

    if (RAND_bytes(b, sizeof(b)) != 1) {
        ERR_error_string_n(ERR_get_error(), msg, sizeof(msg));
        log_error("RAND_bytes: %s", msg);
        out[0] = '\0';
        return -1;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10 (RFC 4122) */
    for (size_t i = 0; i < sizeof(b); i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[j++] = '-';
        out[j++] = hex[b[i] >> 4];
        out[j++] = hex[b[i] & 0x0f];
    }
    out[j] = '\0';
    return 0;
}

int store_uuid_valid(const char *s)
{
    for (int i = 0; i < STORE_ID_LEN; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return s[STORE_ID_LEN] == '\0';
}

int store_renorm_email(struct store_renorm *r, const char *id, const char *email,
                       char norm[STORE_EMAIL_MAX + 1])
{
    const char *why = NULL;

    if (email_normalize(email, strlen(email), norm, STORE_EMAIL_MAX + 1, &why) < 0) {
        r->invalid++;
        log_warn("email migration: user %s keeps its stored email, which is no longer a valid "
                 "address (it %s)",
                 id, why);
        return 0;
    }
    return strcmp(norm, email) != 0;
}

void store_renorm_collision(struct store_renorm *r, const char *id, const char *holder)
{
    r->collisions++;
    log_warn("email migration: user %s keeps its stored email: its normalized address belongs "
             "to user %s (collision)",
             id, holder);
}

void store_renorm_done(const struct store_renorm *r, const char *where)
{
    if (r->changed + r->collisions + r->invalid == 0)
        return;
    log_msg(r->collisions + r->invalid > 0 ? LOG_WARNING : LOG_INFO,
            "email migration on %s: %d address(es) re-normalized, %d kept after a collision, "
            "%d kept as no longer valid (docs/operations.md, \"Email re-normalization\")",
            where, r->changed, r->collisions, r->invalid);
}

int store_session_active(int revoked, const struct store_session *s, int64_t now)
{
    return !revoked && now < s->idle_expires_at && now < s->expires_at;
}

int64_t store_idle_deadline(int64_t now, int64_t idle_ttl, int64_t expires_at)
{
    if (idle_ttl < 0)
        idle_ttl = 0;
    return idle_ttl >= expires_at - now ? expires_at : now + idle_ttl;
}

size_t store_utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
        max--;
    return max;
}
