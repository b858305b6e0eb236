/*
 * Unit tests for master/backup.c: the file format (round trip plain and encrypted, over many
 * chunks), every byte tampered, truncation at every length and chunk boundary, reordered
 * chunks, wrong key, wrong version, key files, retention decisions, and backup/restore of a
 * real SQLite store (empty and with users, sessions, tokens and audit rows).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "master/backup.h"
#include "shared/config.h"
#include "shared/store.h"

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        const char *hay_ = (hay), *needle_ = (needle);                                             \
        if (strstr(hay_, needle_) == NULL)                                                         \
            fail_msg("expected \"%s\" in \"%s\"", needle_, hay_);                                  \
    } while (0)

static const unsigned char KEY[BACKUP_KEY_LEN] = "0123456789abcdef0123456789abcdef";
static const unsigned char KEY2[BACKUP_KEY_LEN] = "fedcba9876543210fedcba9876543210";

struct fx {
    char dir[64];
    char path[128];
};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/authd-test-backup.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->path, sizeof(fx->path), "%s/f.bak", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}

/* A pseudo-random doc that compresses poorly, so that many records span several chunks. */
static json_t *make_doc(int i)
{
    char noise[129];
    unsigned x = (unsigned)i * 2654435761u + 12345u;
    for (int k = 0; k < 128; k++) {
        x = x * 1103515245u + 12345u;
        noise[k] = "0123456789abcdefghijklmnopqrstuvwxyz"[(x >> 16) % 36];
    }
    noise[128] = '\0';
    return json_pack("{s:i, s:s, s:n, s:s}", "id", i, "noise", noise, "nothing", "text",
                     "caf\xc3\xa9 \"quoted\"\n");
}

static const char *const COLL[] = {"users", "sessions", "refresh_tokens", "audit_events"};

/* Writes `n` records (spread over the collections) to fx->path. Returns the file size. */
static int64_t write_file(struct fx *fx, int n, const unsigned char *key)
{
    char err[256] = "";
    int64_t size = 0;
    int fd = open(fx->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    struct backup_writer *w = backup_writer_new(fd, "sqlite", 1700000000123, key, err, sizeof(err));
    assert_non_null(w);
    for (int i = 0; i < n; i++) {
        json_t *d = make_doc(i);
        assert_int_equal(backup_writer_record(w, COLL[i * 4 / (n ? n : 1)], d), 0);
        json_decref(d);
    }
    assert_int_equal(backup_writer_finish(w, &size), 0);
    backup_writer_free(w);
    close(fd);
    return size;
}

/* Reads fx->path completely: 0 and the record count, or -1 with the message in err. */
static int read_file(const char *path, const unsigned char *key, int *n_r, char *err, size_t len)
{
    int fd = open(path, O_RDONLY), rc, n = 0;
    const char *coll;
    json_t *doc;

    assert_true(fd >= 0);
    err[0] = '\0';
    struct backup_reader *r = backup_reader_open(fd, key, err, len);
    if (r == NULL) {
        close(fd);
        return -1;
    }
    while ((rc = backup_reader_next(r, &coll, &doc)) == 1) {
        json_t *want = make_doc(n);
        if (!json_equal(doc, want))
            rc = -2;
        json_decref(want);
        json_decref(doc);
        if (rc == -2)
            break;
        n++;
    }
    if (rc == -1)
        snprintf(err, len, "%s", backup_reader_error(r));
    if (rc == -2)
        snprintf(err, len, "record %d differs", n);
    backup_reader_free(r);
    close(fd);
    if (n_r)
        *n_r = n;
    return rc == 0 ? 0 : -1;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    unsigned char *b = malloc((size_t)sb.st_size + 1);
    int fd = open(path, O_RDONLY);
    assert_int_equal(read(fd, b, (size_t)sb.st_size), sb.st_size);
    close(fd);
    *len = (size_t)sb.st_size;
    return b;
}

static void spit(const char *path, const unsigned char *b, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, len), (ssize_t)len);
    close(fd);
}

/* Offsets where each chunk frame starts, and the trailer's offset last. */
static size_t frames(const unsigned char *b, size_t len, int encrypted, size_t *off, size_t max)
{
    size_t pos = BACKUP_HEADER_LEN, n = 0;
    for (;;) {
        assert_true(pos + 4 <= len && n < max);
        off[n++] = pos;
        uint32_t w = (uint32_t)b[pos] << 24 | b[pos + 1] << 16 | b[pos + 2] << 8 | b[pos + 3];
        pos += 4 + (w & 0x7fffffff) + (encrypted ? BACKUP_TAG_LEN : 0);
        if (w & 0x80000000u)
            break;
    }
    off[n++] = pos;
    assert_int_equal(pos + BACKUP_SHA_LEN, len);
    return n;
}

static void round_trip(void **state, const unsigned char *key)
{
    struct fx *fx = *state;
    char err[512];
    int n = 0;

    write_file(fx, 3000, key);
    assert_int_equal(read_file(fx->path, key, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3000);

    int fd = open(fx->path, O_RDONLY);
    struct backup_reader *r = backup_reader_open(fd, key, err, sizeof(err));
    assert_non_null(r);
    const char *c;
    json_t *d;
    while (backup_reader_next(r, &c, &d) == 1)
        json_decref(d);
    const struct backup_info *info = backup_reader_info(r);
    assert_int_equal(info->version, BACKUP_FORMAT_VERSION);
    assert_string_equal(info->driver, "sqlite");
    assert_int_equal(info->created_ms, 1700000000123);
    assert_true(info->chunks >= 3); /* 3000 noisy records do not fit one chunk */
    for (int i = 0; i < 4; i++)
        assert_int_equal(info->counts[i], 750);
    assert_int_equal(!!(info->flags & BACKUP_FLAG_AES_GCM), key != NULL);
    backup_reader_free(r);
    close(fd);
}

static void round_trip_plain(void **state)
{
    round_trip(state, NULL);
}

static void round_trip_encrypted(void **state)
{
    round_trip(state, KEY);
}

static void empty_file(void **state)
{
    struct fx *fx = *state;
    char err[256];
    int n = -1;

    write_file(fx, 0, KEY);
    assert_int_equal(read_file(fx->path, KEY, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 0);
}

/* Every single-byte change of a small file is detected. */
static void tamper_every_byte(void **state, const unsigned char *key)
{
    struct fx *fx = *state;
    char err[512], bad[160];
    size_t len;

    write_file(fx, 20, key);
    unsigned char *b = slurp(fx->path, &len);
    snprintf(bad, sizeof(bad), "%s/bad.bak", fx->dir);
    for (size_t i = 0; i < len; i++) {
        b[i] ^= 0x01;
        spit(bad, b, len);
        if (read_file(bad, key, NULL, err, sizeof(err)) == 0)
            fail_msg("flipping byte %zu of %zu went unnoticed", i, len);
        assert_true(err[0] != '\0');
        b[i] ^= 0x01;
    }
    free(b);
}

static void tamper_plain(void **state)
{
    tamper_every_byte(state, NULL);
}

static void tamper_encrypted(void **state)
{
    tamper_every_byte(state, KEY);
}

/* Each region of a multi-chunk encrypted file names what failed. */
static void tamper_regions(void **state)
{
    struct fx *fx = *state;
    char err[512], bad[160];
    size_t len, off[64];

    write_file(fx, 3000, KEY);
    unsigned char *b = slurp(fx->path, &len);
    size_t nf = frames(b, len, 1, off, 64);
    snprintf(bad, sizeof(bad), "%s/bad.bak", fx->dir);
    struct {
        size_t at;
        const char *msg;
    } cases[] = {
        {0, "not an authd backup"},
        {17, "chunk 0: authentication failed"},          /* created_at: header is in the AAD */
        {off[1] + 10, "chunk 1: authentication failed"}, /* ciphertext */
        {off[2] - 1, "chunk 1: authentication failed"},  /* tag */
        {off[1] + 3, "chunk 1"},                         /* length word */
        {len - 1, "SHA-256 mismatch"},                   /* trailer */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        b[cases[i].at] ^= 0x40;
        spit(bad, b, len);
        assert_int_equal(read_file(bad, KEY, NULL, err, sizeof(err)), -1);
        assert_contains(err, cases[i].msg);
        b[cases[i].at] ^= 0x40;
    }
    /* Swapping two whole chunks (same length: both full) fails authentication. */
    assert_true(nf >= 4);
    size_t l1 = off[1] - off[0];
    assert_int_equal(off[2] - off[1], l1);
    unsigned char *tmp = malloc(l1);
    memcpy(tmp, b + off[0], l1);
    memmove(b + off[0], b + off[1], l1);
    memcpy(b + off[1], tmp, l1);
    free(tmp);
    spit(bad, b, len);
    assert_int_equal(read_file(bad, KEY, NULL, err, sizeof(err)), -1);
    assert_contains(err, "chunk 0: authentication failed");
    free(b);
}

/* A file cut anywhere — in particular at every chunk boundary — is refused. */
static void truncate_everywhere(void **state)
{
    struct fx *fx = *state;
    char err[512], bad[160];
    size_t len, off[64];

    for (int enc = 0; enc < 2; enc++) {
        write_file(fx, 3000, enc ? KEY : NULL);
        unsigned char *b = slurp(fx->path, &len);
        size_t nf = frames(b, len, enc, off, 64);
        snprintf(bad, sizeof(bad), "%s/bad.bak", fx->dir);
        for (size_t i = 0; i < nf; i++) {
            for (int d = -1; d <= 1; d++) {
                size_t cut = off[i] + (size_t)d;
                spit(bad, b, cut);
                assert_int_equal(read_file(bad, enc ? KEY : NULL, NULL, err, sizeof(err)), -1);
                assert_true(strstr(err, "truncated") != NULL || strstr(err, "authentication"));
            }
        }
        spit(bad, b, off[2]);
        assert_int_equal(read_file(bad, enc ? KEY : NULL, NULL, err, sizeof(err)), -1);
        assert_contains(err, "truncated after chunk 1 (no final chunk)");
        spit(bad, b, len - 1);
        assert_int_equal(read_file(bad, enc ? KEY : NULL, NULL, err, sizeof(err)), -1);
        assert_contains(err, "SHA-256 trailer");
        /* Appended bytes too. */
        unsigned char *longer = malloc(len + 1);
        memcpy(longer, b, len);
        longer[len] = 0;
        spit(bad, longer, len + 1);
        assert_int_equal(read_file(bad, enc ? KEY : NULL, NULL, err, sizeof(err)), -1);
        assert_contains(err, "after the SHA-256 trailer");
        free(longer);
        free(b);
    }
    /* Every length of a small file. */
    write_file(fx, 10, KEY);
    unsigned char *b = slurp(fx->path, &len);
    for (size_t cut = 0; cut < len; cut++) {
        spit(bad, b, cut);
        assert_int_equal(read_file(bad, KEY, NULL, err, sizeof(err)), -1);
    }
    free(b);
}

static void wrong_key_and_version(void **state)
{
    struct fx *fx = *state;
    char err[512];
    size_t len;

    write_file(fx, 10, KEY);
    assert_int_equal(read_file(fx->path, KEY2, NULL, err, sizeof(err)), -1);
    assert_contains(err, "wrong key");
    assert_int_equal(read_file(fx->path, NULL, NULL, err, sizeof(err)), -1);
    assert_contains(err, "encrypted");
    unsigned char *b = slurp(fx->path, &len);
    b[9] = 9;
    spit(fx->path, b, len);
    assert_int_equal(read_file(fx->path, KEY, NULL, err, sizeof(err)), -1);
    assert_contains(err, "unsupported format version 9 (this authd reads 1)");
    free(b);
    /* An unencrypted file reads without a key only: with one, the reader itself refuses it
     * (its origin cannot be authenticated), whoever uses the reader. */
    write_file(fx, 10, NULL);
    assert_int_equal(read_file(fx->path, NULL, NULL, err, sizeof(err)), 0);
    assert_int_equal(read_file(fx->path, KEY, NULL, err, sizeof(err)), -1);
    assert_contains(err, "not encrypted");
}

/* The header's driver name is printed: anything but [a-z0-9_-] and zero padding is refused. */
static void header_driver_and_time(void **state)
{
    struct fx *fx = *state;
    struct backup_info info;
    char err[512], out[1024];
    size_t len;

    write_file(fx, 10, NULL);
    unsigned char *b = slurp(fx->path, &len);
    b[24 + 2] = 0x1b; /* "sq\033ite" */
    spit(fx->path, b, len);
    assert_int_equal(read_file(fx->path, NULL, NULL, err, sizeof(err)), -1);
    assert_contains(err, "bad store driver name");
    b[24 + 2] = 'l';
    b[24 + 10] = 'x'; /* after the terminating zero */
    spit(fx->path, b, len);
    assert_int_equal(read_file(fx->path, NULL, NULL, err, sizeof(err)), -1);
    assert_contains(err, "bad store driver name");
    free(b);
    /* A crafted creation time does not make describe read garbage. */
    memset(&info, 0, sizeof(info));
    snprintf(info.driver, sizeof(info.driver), "sqlite");
    for (int i = 0; i < 2; i++) {
        info.created_ms = i ? INT64_MIN : INT64_MAX;
        backup_describe_info("x.bak", &info, out, sizeof(out));
        assert_contains(out, "sqlite store, created ");
    }
}

/* Records near the longest line accepted, back to back: each is found once and whole. */
static void long_lines(void **state)
{
    struct fx *fx = *state;
    char err[256] = "";
    int64_t size = 0;
    size_t big = (4u << 20) - 200;
    char *s = malloc(big + 1);
    int fd = open(fx->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    assert_non_null(s);
    memset(s, 'a', big);
    s[big] = '\0';
    struct backup_writer *w =
        backup_writer_new(fd, "sqlite", 1700000000123, NULL, err, sizeof(err));
    assert_non_null(w);
    for (int i = 0; i < 3; i++) {
        s[i] = 'b';
        json_t *d = json_pack("{s:s, s:i}", "x", s, "i", i);
        assert_int_equal(backup_writer_record(w, "users", d), 0);
        json_decref(d);
    }
    assert_int_equal(backup_writer_finish(w, &size), 0);
    backup_writer_free(w);
    close(fd);
    fd = open(fx->path, O_RDONLY);
    struct backup_reader *r = backup_reader_open(fd, NULL, err, sizeof(err));
    assert_non_null(r);
    const char *coll;
    json_t *doc;
    int n = 0, rc;
    while ((rc = backup_reader_next(r, &coll, &doc)) == 1) {
        assert_int_equal(json_integer_value(json_object_get(doc, "i")), n);
        assert_int_equal(json_string_length(json_object_get(doc, "x")), big);
        json_decref(doc);
        n++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(n, 3);
    backup_reader_free(r);
    close(fd);
    free(s);
}

static void key_files(void **state)
{
    struct fx *fx = *state;
    unsigned char key[BACKUP_KEY_LEN];
    char err[512], path[160];

    snprintf(path, sizeof(path), "%s/key", fx->dir);
    spit(path, KEY, 32);
    assert_int_equal(backup_key_load(path, key, err, sizeof(err)), 0);
    assert_memory_equal(key, KEY, 32);
    const char *hex = "3031323334353637383961626364656630313233343536373839616263646566\n";
    spit(path, (const unsigned char *)hex, strlen(hex));
    memset(key, 0, sizeof(key));
    assert_int_equal(backup_key_load(path, key, err, sizeof(err)), 0);
    assert_memory_equal(key, KEY, 32);
    spit(path, (const unsigned char *)"short\n", 6);
    assert_int_equal(backup_key_load(path, key, err, sizeof(err)), -1);
    assert_contains(err, "32 raw bytes or 64 hex digits");
    spit(path, (const unsigned char *)hex, strlen(hex));
    chmod(path, 0644);
    assert_int_equal(backup_key_load(path, key, err, sizeof(err)), -1);
    assert_contains(err, "mode 0644");
    chmod(path, 0640);
    assert_int_equal(backup_key_load(path, key, err, sizeof(err)), 0);
    /* Owned by someone else (not root): refused, whatever the mode. */
    if (geteuid() == 0) {
        assert_int_equal(chown(path, 4242, 4242), 0);
        assert_int_equal(backup_key_load(path, key, err, sizeof(err)), -1);
        assert_contains(err, "owned by uid 4242");
        assert_int_equal(chown(path, 0, 0), 0);
        assert_int_equal(backup_key_load(path, key, err, sizeof(err)), 0);
    } else {
        assert_int_equal(chown(path, geteuid(), (gid_t)-1), 0);
        assert_int_equal(backup_key_load(path, key, err, sizeof(err)), 0);
    }
}

static void retention(void **state)
{
    (void)state;
    const char *names[] = {
        "authd-20261101T000000Z.bak",
        "authd-20261102T000000Z.bak",
        "authd-20261103T000000Z.bak",
        "authd-20261103T000000Z-2.bak",
        "other.bak",
        "authd-2026.bak",
        "authd-20261104T000000Z.bak",
    };
    int doomed[7];
    int64_t now = backup_name_time("authd-20261104T000000Z.bak");

    assert_int_equal(backup_name_time("authd-19700101T000010Z.bak"), 10);
    assert_int_equal(backup_name_time("authd-19700101T000010Z-12.bak"), 10);
    assert_int_equal(backup_name_time("authd-19700101T000010Z.bak.tmp"), -1);
    assert_int_equal(backup_name_time(".authd-ABCDEF.tmp"), -1);
    /* keep 2: the two newest stay (04, 03-2), the rest of the backups go, others untouched. */
    assert_int_equal(backup_retention(names, 7, 2, 0, now, names[6], doomed), 3);
    int want[] = {1, 1, 1, 0, 0, 0, 0};
    assert_memory_equal(doomed, want, sizeof(want));
    /* keep 10 but max age 1.5 days: 01 and 02 go. */
    assert_int_equal(backup_retention(names, 7, 10, 1.5 * 86400, now, names[6], doomed), 2);
    int want2[] = {1, 1, 0, 0, 0, 0, 0};
    assert_memory_equal(doomed, want2, sizeof(want2));
    /* The file just written is never deleted, even when older than max age. */
    assert_int_equal(backup_retention(names, 7, 1, 1, now + 999999, names[6], doomed), 4);
    assert_int_equal(doomed[6], 0);
}

/* ---- with a real SQLite store ---- */

static struct config *store_config(struct fx *fx, const char *db)
{
    char path[160], bdir[160], *errors = NULL;
    snprintf(path, sizeof(path), "%s/%s", fx->dir, db);
    snprintf(bdir, sizeof(bdir), "%s/backups", fx->dir);
    setenv("AUTHD_STORE_PATH", path, 1);
    setenv("AUTHD_BACKUP_DIRECTORY", bdir, 1);
    setenv("AUTHD_BACKUP_KEEP", "2", 1);
    struct config *cfg = config_load(NULL, &errors);
    unsetenv("AUTHD_STORE_PATH");
    unsetenv("AUTHD_BACKUP_DIRECTORY");
    unsetenv("AUTHD_BACKUP_KEEP");
    if (cfg == NULL)
        fail_msg("config_load: %s", errors ? errors : "?");
    free(errors);
    return cfg;
}

static void fill_store(const struct config *cfg, int users)
{
    char err[256];
    const struct store_driver *drv = store_driver_find("sqlite");
    struct store *st = drv->open(cfg, 1, err, sizeof(err));
    assert_non_null(st);
    for (int i = 0; i < users; i++) {
        struct store_user u;
        struct store_session s = {.created_at = 1700000000,
                                  .last_used_at = 1700000000,
                                  .idle_expires_at = 1800000000,
                                  .expires_at = 1900000000};
        char email[64];
        uint8_t h[32];
        snprintf(email, sizeof(email), "user%d@example.com", i);
        assert_int_equal(drv->user_create(st, email, "$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA",
                                          1700000000 + i, &u),
                         STORE_OK);
        snprintf(s.user_id, sizeof(s.user_id), "%s", u.id);
        snprintf(s.ip, sizeof(s.ip), "192.0.2.1");
        memset(h, i & 0xff, sizeof(h));
        h[0] = (uint8_t)(i >> 8);
        assert_int_equal(drv->session_create(st, &s, h), STORE_OK);
        struct store_audit a = {
            .at = 1700000000, .event = "login", .result = "success", .user_id = u.id};
        assert_int_equal(drv->audit_append(st, &a), STORE_OK);
    }
    drv->close(st);
}

static int64_t users_in(const struct config *cfg)
{
    char err[256];
    int64_t n = -1;
    const struct store_driver *drv = store_driver_find("sqlite");
    struct store *st = drv->open(cfg, 1, err, sizeof(err));
    assert_non_null(st);
    assert_int_equal(drv->count_users(st, &n), STORE_OK);
    drv->close(st);
    return n;
}

static void store_round_trip(void **state)
{
    struct fx *fx = *state;
    struct config *cfg = store_config(fx, "a.db");
    struct backup_result res;
    struct backup_info info;
    char err[1024];

    fill_store(cfg, 300);
    assert_int_equal(users_in(cfg), 300);
    assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), 0);
    assert_int_equal(res.counts[0], 300);
    assert_int_equal(res.counts[1], 300);
    assert_int_equal(res.counts[2], 300);
    assert_int_equal(res.counts[3], 300);
    assert_int_equal(backup_verify(cfg, res.path, &info, err, sizeof(err)), 0);

    /* Into a fresh database: the same users, sessions and token hashes. */
    struct config *cfg2 = store_config(fx, "b.db");
    assert_int_equal(users_in(cfg2), 0);
    assert_int_equal(backup_restore(cfg2, res.path, 0, &info, err, sizeof(err)), 0);
    assert_int_equal(users_in(cfg2), 300);
    const struct store_driver *drv = store_driver_find("sqlite");
    struct store *st = drv->open(cfg2, 0, err, sizeof(err));
    struct store_user u;
    assert_int_equal(drv->user_by_email(st, "user7@example.com", &u), STORE_OK);
    assert_string_equal(u.password_hash, "$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA");
    uint8_t h[32], nh[32];
    memset(h, 7, sizeof(h));
    h[0] = 0;
    memset(nh, 0xee, sizeof(nh));
    struct store_session s;
    assert_int_equal(drv->session_rotate(st, h, nh, 1700000100, 3600, &s), STORE_OK);
    assert_string_equal(s.user_id, u.id);
    drv->close(st);

    /* A store with users is not overwritten without force. */
    assert_int_equal(backup_restore(cfg2, res.path, 0, &info, err, sizeof(err)), -1);
    assert_contains(err, "holds 300 users");
    assert_contains(err, "--force");
    assert_int_equal(backup_restore(cfg2, res.path, 1, &info, err, sizeof(err)), 0);
    config_free(cfg2);
    config_free(cfg);
}

static void store_empty(void **state)
{
    struct fx *fx = *state;
    struct config *cfg = store_config(fx, "e.db");
    struct backup_result res;
    struct backup_info info;
    char err[1024];

    fill_store(cfg, 0);
    assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(res.counts[i], 0);
    assert_int_equal(backup_restore(cfg, res.path, 0, &info, err, sizeof(err)), 0);
    assert_int_equal(users_in(cfg), 0);
    config_free(cfg);
}

/* A corrupt file never touches the store; retention keeps backup.keep files. */
static void store_corrupt_and_retention(void **state)
{
    struct fx *fx = *state;
    struct config *cfg = store_config(fx, "c.db");
    struct backup_result res;
    struct backup_info info;
    char err[1024], paths[3][4096];
    size_t len;

    fill_store(cfg, 5);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), 0);
        snprintf(paths[i], sizeof(paths[i]), "%s", res.path);
    }
    /* keep = 2: the first is gone (same-second runs get -2, -3 suffixes). */
    assert_int_equal(access(paths[0], F_OK), -1);
    assert_int_equal(access(paths[1], F_OK), 0);
    assert_int_equal(access(paths[2], F_OK), 0);
    unsigned char *b = slurp(paths[2], &len);
    spit(paths[2], b, len - 40);
    free(b);
    assert_int_equal(backup_restore(cfg, paths[2], 1, &info, err, sizeof(err)), -1);
    assert_contains(err, "the store was not touched");
    assert_int_equal(users_in(cfg), 5);
    /* --output to an existing file is refused. */
    assert_int_equal(backup_run(cfg, paths[1], &res, err, sizeof(err)), -1);
    assert_contains(err, "exists");
    config_free(cfg);
}

/*
 * A snapshot left by a killed backup (older than an hour, not flocked) is removed by the next
 * one; a live (flocked) one is not, nor a young unlocked one (a concurrent dump between its
 * mkostemp and its flock).
 */
static void stale_snapshots(void **state)
{
    struct fx *fx = *state;
    struct config *cfg = store_config(fx, "s.db");
    struct backup_result res;
    char err[1024], stale[192], live[192], young[192];
    struct timeval old[2] = {{time(NULL) - 7200, 0}, {time(NULL) - 7200, 0}};

    fill_store(cfg, 3);
    snprintf(stale, sizeof(stale), "%s/s.db.snapshot-AbCdEf", fx->dir);
    snprintf(live, sizeof(live), "%s/s.db.snapshot-LiVeLi", fx->dir);
    snprintf(young, sizeof(young), "%s/s.db.snapshot-YoUnGg", fx->dir);
    spit(stale, (const unsigned char *)"x", 1);
    spit(live, (const unsigned char *)"x", 1);
    spit(young, (const unsigned char *)"x", 1);
    assert_int_equal(utimes(stale, old), 0);
    assert_int_equal(utimes(live, old), 0);
    int fd = open(live, O_RDONLY);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), 0);
    assert_int_equal(access(stale, F_OK), -1);
    assert_int_equal(access(live, F_OK), 0);
    assert_int_equal(access(young, F_OK), 0);
    close(fd);
    config_free(cfg);
}

/* Files in `dir` whose name contains `part`. */
static int count_files(const char *dir, const char *part)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;

    while (d != NULL && (de = readdir(d)) != NULL)
        n += strstr(de->d_name, part) != NULL;
    if (d != NULL)
        closedir(d);
    return n;
}

/* A cancelled backup (SIGTERM) fails and leaves no temporary file and no snapshot. */
static void cancel_leaves_nothing(void **state)
{
    struct fx *fx = *state;
    struct config *cfg = store_config(fx, "k.db");
    struct backup_result res;
    char err[1024], bdir[160];

    snprintf(bdir, sizeof(bdir), "%s/backups", fx->dir);
    fill_store(cfg, 20);
    store_dump_cancel = 1; /* stops the SQLite snapshot copy */
    assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), -1);
    assert_contains(err, "cancelled");
    store_dump_cancel = 0;
    backup_cancel = 1; /* stops at the next record */
    assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), -1);
    assert_contains(err, "cancelled");
    backup_cancel = 0;
    assert_int_equal(count_files(bdir, ".tmp"), 0);
    assert_int_equal(count_files(bdir, ".bak"), 0);
    assert_int_equal(count_files(fx->dir, ".snapshot-"), 0);
    assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), 0);
    config_free(cfg);
}

/* info may be NULL; with a key set, an unencrypted backup is refused and the store untouched. */
static void restore_checks(void **state)
{
    struct fx *fx = *state;
    struct config *cfg = store_config(fx, "p.db");
    struct backup_result res;
    char err[1024], key[160];

    fill_store(cfg, 4);
    assert_int_equal(backup_run(cfg, NULL, &res, err, sizeof(err)), 0);
    assert_int_equal(backup_verify(cfg, res.path, NULL, err, sizeof(err)), 0);
    struct config *cfg2 = store_config(fx, "q.db");
    assert_int_equal(backup_restore(cfg2, res.path, 0, NULL, err, sizeof(err)), 0);
    assert_int_equal(users_in(cfg2), 4);
    config_free(cfg2);

    snprintf(key, sizeof(key), "%s/key", fx->dir);
    spit(key, KEY, 32);
    setenv("AUTHD_BACKUP_ENCRYPTION_KEY_FILE", key, 1);
    struct config *cfg3 = store_config(fx, "r.db");
    unsetenv("AUTHD_BACKUP_ENCRYPTION_KEY_FILE");
    fill_store(cfg3, 2);
    assert_int_equal(backup_restore(cfg3, res.path, 1, NULL, err, sizeof(err)), -1);
    assert_contains(err, "not encrypted");
    assert_contains(err, "the store was not touched");
    assert_int_equal(users_in(cfg3), 2);
    config_free(cfg3);
    config_free(cfg);
}

int main(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(round_trip_plain, setup, teardown),
        cmocka_unit_test_setup_teardown(round_trip_encrypted, setup, teardown),
        cmocka_unit_test_setup_teardown(empty_file, setup, teardown),
        cmocka_unit_test_setup_teardown(tamper_plain, setup, teardown),
        cmocka_unit_test_setup_teardown(tamper_encrypted, setup, teardown),
        cmocka_unit_test_setup_teardown(tamper_regions, setup, teardown),
        cmocka_unit_test_setup_teardown(truncate_everywhere, setup, teardown),
        cmocka_unit_test_setup_teardown(wrong_key_and_version, setup, teardown),
        cmocka_unit_test_setup_teardown(key_files, setup, teardown),
        cmocka_unit_test(retention),
        cmocka_unit_test_setup_teardown(store_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(store_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(store_corrupt_and_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(stale_snapshots, setup, teardown),
        cmocka_unit_test_setup_teardown(header_driver_and_time, setup, teardown),
        cmocka_unit_test_setup_teardown(long_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(restore_checks, setup, teardown),
    };
    return cmocka_run_group_tests_name("backup", tests, NULL, NULL);
}
