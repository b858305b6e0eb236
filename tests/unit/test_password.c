/* Unit tests for shared/password.c: argon2id hashes, verification, re-hash, dummy, policy. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>

#include <argon2.h>

#include "shared/password.h"

#define JOHN_LIST  "/usr/share/john/password.lst"
#define EMOJI      "\xf0\x9f\x98\x80" /* U+1F600, 4 bytes */
#define E_ACUTE    "\xc3\xa9"         /* U+00E9 */
#define E_COMBINED "e\xcc\x81"        /* U+0065 U+0301 */

static const struct password_params small = {256, 1, 1};
static const struct password_params owasp = {19456, 2, 1};

/* `s` repeated n times, malloc'd and NUL-terminated. */
static char *repeat(const char *s, size_t n)
{
    size_t len = strlen(s);
    char *r = malloc(len * n + 1);

    assert_non_null(r);
    for (size_t i = 0; i < n; i++)
        memcpy(r + i * len, s, len);
    r[len * n] = '\0';
    return r;
}

static void hash_ok(const struct password_params *p, const char *pw, char *phc)
{
    assert_int_equal(password_hash(p, pw, strlen(pw), phc, PASSWORD_PHC_MAX), 0);
}

/* ---- hashing ---- */

static void test_hash_format_owasp(void **state)
{
    static const char prefix[] = "$argon2id$v=19$m=19456,t=2,p=1$";
    char phc[PASSWORD_PHC_MAX];
    const char *salt, *tag;
    int rehash = -1;

    hash_ok(&owasp, "correct horse battery staple", phc);
    assert_int_equal(strncmp(phc, prefix, strlen(prefix)), 0);
    salt = phc + strlen(prefix);
    tag = strchr(salt, '$');
    assert_non_null(tag);
    assert_int_equal(tag - salt, 22);      /* 16 bytes, unpadded base64 */
    assert_int_equal(strlen(tag + 1), 43); /* 32 bytes */
    assert_null(strchr(tag + 1, '$'));
    assert_int_equal(password_verify(phc, "correct horse battery staple", 28, &owasp, &rehash), 1);
    assert_int_equal(rehash, 0);
}

static void test_verify_match_mismatch(void **state)
{
    char phc[PASSWORD_PHC_MAX];
    int rehash = -1;

    hash_ok(&small, "hunter2hunter2", phc);
    assert_int_equal(strncmp(phc, "$argon2id$v=19$m=256,t=1,p=1$", 29), 0);
    assert_int_equal(password_verify(phc, "hunter2hunter2", 14, &small, &rehash), 1);
    assert_int_equal(rehash, 0);
    assert_int_equal(password_verify(phc, "hunter2hunter3", 14, &small, &rehash), 0);
    assert_int_equal(rehash, 0);
    assert_int_equal(password_verify(phc, "hunter2hunter", 13, &small, &rehash), 0);
    assert_int_equal(password_verify(phc, "", 0, &small, &rehash), 0);
    /* rehash_r and current are optional */
    assert_int_equal(password_verify(phc, "hunter2hunter2", 14, NULL, NULL), 1);
}

/* Long passwords are hashed whole; bytes after a NUL count too. */
static void test_no_truncation(void **state)
{
    char phc[PASSWORD_PHC_MAX];
    char *a = repeat("x", 1000), *b = repeat("x", 1000);
    const char nul1[] = "ab\0cd", nul2[] = "ab\0ce";

    b[999] = 'y';
    assert_int_equal(password_hash(&small, a, 1000, phc, sizeof(phc)), 0);
    assert_int_equal(password_verify(phc, a, 1000, &small, NULL), 1);
    assert_int_equal(password_verify(phc, b, 1000, &small, NULL), 0);
    assert_int_equal(password_verify(phc, a, 999, &small, NULL), 0);
    assert_int_equal(password_hash(&small, nul1, 5, phc, sizeof(phc)), 0);
    assert_int_equal(password_verify(phc, nul1, 5, &small, NULL), 1);
    assert_int_equal(password_verify(phc, nul2, 5, &small, NULL), 0);
    assert_int_equal(password_verify(phc, nul1, 2, &small, NULL), 0);
    free(a);
    free(b);
}

static void test_salt_differs(void **state)
{
    char a[PASSWORD_PHC_MAX], b[PASSWORD_PHC_MAX];

    hash_ok(&small, "same password here", a);
    hash_ok(&small, "same password here", b);
    assert_string_not_equal(a, b);
    assert_int_equal(password_verify(a, "same password here", 18, &small, NULL), 1);
    assert_int_equal(password_verify(b, "same password here", 18, &small, NULL), 1);
}

static void test_hash_bad_arguments(void **state)
{
    const struct password_params no_time = {256, 0, 1}, no_lanes = {256, 1, 0},
                                 no_memory = {0, 1, 1}, memory_below_lanes = {8, 1, 2};
    char phc[PASSWORD_PHC_MAX];
    size_t need;

    assert_int_equal(password_hash(&no_time, "x", 1, phc, sizeof(phc)), -1);
    assert_int_equal(password_hash(&no_lanes, "x", 1, phc, sizeof(phc)), -1);
    assert_int_equal(password_hash(&no_memory, "x", 1, phc, sizeof(phc)), -1);
    assert_int_equal(password_hash(&memory_below_lanes, "x", 1, phc, sizeof(phc)), -1);
    assert_int_equal(password_hash(NULL, "x", 1, phc, sizeof(phc)), -1);
    assert_int_equal(password_hash(&small, NULL, 1, phc, sizeof(phc)), -1);
    /* the buffer must hold the string and its NUL */
    hash_ok(&small, "x", phc);
    need = strlen(phc) + 1;
    assert_int_equal(password_hash(&small, "x", 1, phc, need - 1), -1);
    assert_int_equal(password_hash(&small, "x", 1, phc, need), 0);
    assert_int_equal(strlen(phc) + 1, need);
}

static void test_verify_malformed(void **state)
{
    char phc[PASSWORD_PHC_MAX], bad[PASSWORD_PHC_MAX + 8];
    const char *cases[] = {
        "",
        "plain text",
        "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
        "$argon2x$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=256,t=1,p=1$",
        "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$",
        "$argon2id$v=19$m=256,t=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=99999999999,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=-1,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=0,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=256,t=0,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo",
        "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGF",
        "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo$",
        "$argon2id$v=19$m=256,t=1,p=1$c2Fs!HNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNo",
    };
    int rehash = -1;

    hash_ok(&small, "pw", phc);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rehash = -1;
        if (password_verify(cases[i], "pw", 2, &small, &rehash) != -1)
            fail_msg("case %zu (%s) not refused as malformed", i, cases[i]);
        assert_int_equal(rehash, 0);
    }
    assert_int_equal(password_verify(NULL, "pw", 2, &small, &rehash), -1);
    snprintf(bad, sizeof(bad), "%s!", phc); /* trailing garbage */
    assert_int_equal(password_verify(bad, "pw", 2, &small, &rehash), -1);
}

static void verify_rehash(const char *phc, const char *pw, const struct password_params *cur,
                          int expected)
{
    int rehash = -1;

    assert_int_equal(password_verify(phc, pw, strlen(pw), cur, &rehash), 1);
    assert_int_equal(rehash, expected);
}

static void test_rehash_on_params(void **state)
{
    const struct password_params more_m = {512, 1, 1}, more_t = {256, 2, 1}, more_p = {256, 1, 2};
    char phc[PASSWORD_PHC_MAX];
    int rehash = -1;

    hash_ok(&small, "rehash me please", phc);
    verify_rehash(phc, "rehash me please", &small, 0);
    verify_rehash(phc, "rehash me please", &more_m, 1);
    verify_rehash(phc, "rehash me please", &more_t, 1);
    verify_rehash(phc, "rehash me please", &more_p, 1);
    verify_rehash(phc, "rehash me please", &owasp, 1);
    /* a mismatch never asks for a re-hash */
    assert_int_equal(password_verify(phc, "wrong", 5, &owasp, &rehash), 0);
    assert_int_equal(rehash, 0);
    /* a hash made with p=2 verifies */
    hash_ok(&more_p, "rehash me please", phc);
    assert_int_equal(strncmp(phc, "$argon2id$v=19$m=256,t=1,p=2$", 29), 0);
    verify_rehash(phc, "rehash me please", &more_p, 0);
    verify_rehash(phc, "rehash me please", &small, 1);
}

/* Hashes of another type, version or size verify and ask for a re-hash. */
static void test_rehash_on_algorithm(void **state)
{
    const unsigned char salt[16] = "0123456789abcdef";
    char phc[PASSWORD_PHC_MAX];
    static const struct {
        argon2_type type;
        uint32_t version;
        size_t taglen;
        const char *prefix;
    } cases[] = {
        {Argon2_i, ARGON2_VERSION_13, 32, "$argon2i$v=19$"},
        {Argon2_d, ARGON2_VERSION_13, 32, "$argon2d$v=19$"},
        {Argon2_id, ARGON2_VERSION_10, 32, "$argon2id$v=16$"},
        {Argon2_id, ARGON2_VERSION_13, 16, "$argon2id$v=19$"},
        {Argon2_id, ARGON2_VERSION_13, 32, "$argon2id$v=19$"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(argon2_hash(1, 256, 1, "legacy", 6, salt, sizeof(salt), NULL,
                                     cases[i].taglen, phc, sizeof(phc), cases[i].type,
                                     cases[i].version),
                         ARGON2_OK);
        assert_int_equal(strncmp(phc, cases[i].prefix, strlen(cases[i].prefix)), 0);
        verify_rehash(phc, "legacy", &small, i + 1 < sizeof(cases) / sizeof(cases[0]));
        assert_int_equal(password_verify(phc, "legacY", 6, &small, NULL), 0);
    }
}

/* ---- dummy ---- */

static void *dummy_reader(void *arg)
{
    for (int i = 0; i < 3; i++)
        password_verify_dummy(arg, "no such user's password", 23);
    return NULL;
}

static void test_dummy(void **state)
{
    const struct password_params bad = {256, 0, 1}, other = {small.memory_kib * 2, 1, 1};
    char phc[PASSWORD_PHC_MAX], phc2[PASSWORD_PHC_MAX];
    pthread_t th[4];

    assert_int_equal(password_dummy_make(&bad, phc), -1);
    assert_string_equal(phc, "");
    assert_int_equal(password_dummy_make(&small, phc), 0);
    assert_int_equal(password_dummy_make(&other, phc2), 0);
    /* Each dummy carries the parameters it was made with: two generations, two dummies. */
    assert_non_null(strstr(phc, "$m=256,t=1,p=1$"));
    assert_non_null(strstr(phc2, "$m=512,t=1,p=1$"));
    assert_int_equal(password_verify(phc, "x", 1, &small, NULL), 0); /* a mismatch, not an error */
    password_verify_dummy(phc, "whatever", 8);
    password_verify_dummy(phc, "", 0);
    password_verify_dummy(phc, NULL, 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, dummy_reader, phc), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
}

/* ---- policy ---- */

struct fixture {
    char dir[64];
    char file[96];
    struct password_policy *pol; /* (12, 64), the test list below */
};

/* 4 entries: comments, empty lines, CRLF, a case duplicate, bad UTF-8 and a tab are dropped. */
static const char test_list[] = "#!comment: a list for the unit test\n"
                                "\n"
                                "correcthorsebattery\r\n"
                                "CorrectHorseBattery\n"
                                "\r\n"
                                "A\xcc\x88pfelBirnenKuchen\n" /* decomposed U+00C4 */
                                "\xff\xfeinvalid-utf8-entry\n"
                                "tab\there-is-control\n"
                                "#!comment: another comment\n"
                                "# not a comment marker\n"
                                "monkeymonkey123"; /* no final newline */

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char err[256];
    FILE *fp;

    if (f == NULL)
        return -1;
    strcpy(f->dir, "/tmp/test_password.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->file, sizeof(f->file), "%s/blocklist.txt", f->dir);
    if ((fp = fopen(f->file, "w")) == NULL)
        return -1;
    fputs(test_list, fp);
    fclose(fp);
    f->pol = password_policy_new(12, 64, f->file, err, sizeof(err));
    if (f->pol == NULL) {
        fprintf(stderr, "password_policy_new: %s\n", err);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    password_policy_free(f->pol);
    unlink(f->file);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Checks a refusal: code and message. */
static void refused(const struct password_policy *pol, const char *pw, size_t len,
                    const char *email, const char *code, const char *message)
{
    char *norm = (char *)1;
    const char *c = NULL, *m = NULL;

    assert_int_equal(password_policy_check(pol, pw, len, email, &norm, &c, &m), -1);
    assert_null(norm);
    assert_non_null(c);
    assert_non_null(m);
    assert_string_equal(c, code);
    assert_string_equal(m, message);
}

/* Checks an acceptance; returns the normalized form (caller frees). */
static char *accepted(const struct password_policy *pol, const char *pw, size_t len,
                      const char *email)
{
    char *norm = NULL;
    const char *c = NULL, *m = NULL;

    if (password_policy_check(pol, pw, len, email, &norm, &c, &m) != 0)
        fail_msg("refused (%s: %s): %s", c, m, pw);
    assert_non_null(norm);
    return norm;
}

static void accept_str(const struct password_policy *pol, const char *pw, const char *email)
{
    char *norm = accepted(pol, pw, strlen(pw), email);

    assert_string_equal(norm, pw);
    free(norm);
}

#define TOO_SHORT_12 "The password must be at least 12 characters long."
#define TOO_LONG_64  "The password must be at most 64 characters long."
#define COMMON       "This password is too common."
#define IS_EMAIL     "The password must not be the email address."

static void test_blocklist_file_count(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(password_policy_blocklist_size(f->pol), 4);
}

static void test_length_code_points(void **state)
{
    struct fixture *f = *state;
    char *pw, *norm, *want;

    refused(f->pol, "short", 5, NULL, "weak_password", TOO_SHORT_12);
    refused(f->pol, "", 0, NULL, "weak_password", TOO_SHORT_12);
    refused(f->pol, "elevenchars", 11, NULL, "weak_password", TOO_SHORT_12);
    accept_str(f->pol, "twelve chars", NULL); /* exactly min; spaces allowed */
    pw = repeat(EMOJI, 12);                   /* 48 bytes, 12 code points */
    accept_str(f->pol, pw, NULL);
    free(pw);
    pw = repeat(EMOJI, 11);
    refused(f->pol, pw, strlen(pw), NULL, "weak_password", TOO_SHORT_12);
    free(pw);
    /* 11 decomposed e-acute: 22 code points as sent, 11 after NFC */
    pw = repeat(E_COMBINED, 11);
    refused(f->pol, pw, strlen(pw), NULL, "weak_password", TOO_SHORT_12);
    free(pw);
    pw = repeat(E_COMBINED, 12);
    want = repeat(E_ACUTE, 12);
    norm = accepted(f->pol, pw, strlen(pw), NULL);
    assert_string_equal(norm, want); /* what to hash is the NFC form */
    free(norm);
    free(want);
    free(pw);
}

static void test_length_max(void **state)
{
    struct fixture *f = *state;
    char *pw;

    pw = repeat("z", 64);
    accept_str(f->pol, pw, NULL);
    free(pw);
    pw = repeat("z", 65);
    refused(f->pol, pw, strlen(pw), NULL, "weak_password", TOO_LONG_64);
    free(pw);
    pw = repeat(EMOJI, 64); /* 256 bytes = 4 * max: allowed to be read */
    accept_str(f->pol, pw, NULL);
    free(pw);
    pw = repeat(EMOJI, 65);
    refused(f->pol, pw, strlen(pw), NULL, "weak_password", TOO_LONG_64);
    free(pw);
    /* more than 4 * max bytes is refused before it is even looked at */
    pw = repeat("\xff", 257);
    refused(f->pol, pw, strlen(pw), NULL, "weak_password", TOO_LONG_64);
    free(pw);
    pw = repeat("\xff", 256);
    refused(f->pol, pw, strlen(pw), NULL, "invalid_request",
            "The password is not valid UTF-8 text.");
    free(pw);
}

static void test_messages_state_numbers(void **state)
{
    char err[128];
    struct password_policy *pol = password_policy_new(8, 100, NULL, err, sizeof(err));
    char *pw;

    assert_non_null(pol);
    assert_int_equal(password_policy_blocklist_size(pol), 0);
    refused(pol, "seven77", 7, NULL, "weak_password",
            "The password must be at least 8 characters long.");
    accept_str(pol, "eight888", NULL);
    pw = repeat("k", 101);
    refused(pol, pw, 101, NULL, "weak_password",
            "The password must be at most 100 characters long.");
    free(pw);
    password_policy_free(pol);
    pol = password_policy_new(12, 64, "", err, sizeof(err));
    assert_non_null(pol);
    assert_int_equal(password_policy_blocklist_size(pol), 0);
    password_policy_free(pol);
    password_policy_free(NULL);
}

static void test_policy_bad_lengths(void **state)
{
    char err[128];

    err[0] = '\0';
    assert_null(password_policy_new(12, 63, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "64"));
    assert_null(password_policy_new(0, 64, NULL, err, sizeof(err)));
    assert_null(password_policy_new(65, 64, NULL, err, sizeof(err)));
    assert_null(password_policy_new(-1, 64, NULL, NULL, 0));
}

static void test_blocklisted(void **state)
{
    struct fixture *f = *state;

    refused(f->pol, "correcthorsebattery", 19, NULL, "weak_password", COMMON);
    refused(f->pol, "CORRECThorseBATTERY", 19, NULL, "weak_password", COMMON);
    refused(f->pol, "monkeymonkey123", 15, NULL, "weak_password", COMMON);
    refused(f->pol, "# Not A Comment Marker", 22, NULL, "weak_password", COMMON);
    /* composed upper case against a decomposed entry */
    refused(f->pol, "\xc3\x84PFELBIRNENKUCHEN", 18, NULL, "weak_password", COMMON);
    /* the whole password only, and comments are not entries */
    accept_str(f->pol, "correcthorsebattery!", NULL);
    accept_str(f->pol, "my correcthorsebattery", NULL);
    accept_str(f->pol, "#!comment: another comment", NULL);
    accept_str(f->pol, "invalid-utf8-entry", NULL);
}

static void test_john_list(void **state)
{
    char err[256];
    struct password_policy *pol;

    if (access(JOHN_LIST, R_OK) != 0) {
        print_message("skipped: %s is absent (Debian package john-data)\n", JOHN_LIST);
        skip();
    }
    pol = password_policy_new(12, 64, JOHN_LIST, err, sizeof(err));
    assert_non_null(pol);
    assert_true(password_policy_blocklist_size(pol) >= 3000);
    refused(pol, "winniethepooh", 13, NULL, "weak_password", COMMON);
    refused(pol, "WinnieThePooh", 13, NULL, "weak_password", COMMON);
    accept_str(pol, "winniethepooh1", NULL);
    password_policy_free(pol);
    pol = password_policy_new(8, 64, JOHN_LIST, err, sizeof(err));
    assert_non_null(pol);
    refused(pol, "password1", 9, NULL, "weak_password", COMMON);
    refused(pol, "PassWord1", 9, NULL, "weak_password", COMMON);
    refused(pol, "12345678", 8, NULL, "weak_password", COMMON);
    password_policy_free(pol);
}

static void test_missing_blocklist(void **state)
{
    char err[256];

    err[0] = '\0';
    assert_null(password_policy_new(12, 64, "/nonexistent/blocklist.txt", err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/blocklist.txt"));
    assert_non_null(strstr(err, "No such file"));
}

static void test_equals_email(void **state)
{
    struct fixture *f = *state;

    refused(f->pol, "alice@example.com", 17, "alice@example.com", "weak_password", IS_EMAIL);
    refused(f->pol, "ALICE@Example.COM", 17, "alice@example.com", "weak_password", IS_EMAIL);
    refused(f->pol, "alice@example.com", 17, "Alice@EXAMPLE.com", "weak_password", IS_EMAIL);
    accept_str(f->pol, "alice@example.com1", "alice@example.com");
    accept_str(f->pol, "alice@example.com", "bob@example.com");
    accept_str(f->pol, "alice@example.com", NULL);
    accept_str(f->pol, "alice@example.com", "\xff\xfe not utf-8");
}

static void test_invalid_utf8(void **state)
{
    struct fixture *f = *state;
    static const char *const cases[] = {
        "abcdefghijkl\xff",
        "abcdefghijkl\xc3(",
        "abcdefghijkl\xc0\xaf",         /* overlong '/' */
        "abcdefghijkl\xed\xa0\x80",     /* surrogate U+D800 */
        "abcdefghijkl\xf4\x90\x80\x80", /* beyond U+10FFFF */
        "abcdefghijkl\xe2\x82",         /* truncated */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        refused(f->pol, cases[i], strlen(cases[i]), NULL, "invalid_request",
                "The password is not valid UTF-8 text.");
    assert_null(password_normalize(cases[0], strlen(cases[0]), NULL));
}

static void test_control_characters(void **state)
{
    struct fixture *f = *state;
    static const char *const cases[] = {
        "abcdefghijkl\tm",      "abcdefghijkl\nm",  "abcdefghijkl\rm",
        "\x1b[31mabcdefghijkl", "abcdefghijkl\x7f", "abcdefghijkl\x01",
    };
    const char nul[] = "abcdefgh\0ijklmn";

    refused(f->pol, nul, sizeof(nul) - 1, NULL, "invalid_request",
            "The password must not contain control characters.");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        refused(f->pol, cases[i], strlen(cases[i]), NULL, "invalid_request",
                "The password must not contain control characters.");
}

static void test_normalize(void **state)
{
    size_t n = 99;
    char *r;
    const char nul[] = "a\0b";

    r = password_normalize("Cafe\xcc\x81", 6, &n);
    assert_non_null(r);
    assert_string_equal(r, "Caf\xc3\xa9");
    assert_int_equal(n, 5);
    free(r);
    /* Hangul jamo compose into one syllable; composed text is unchanged */
    r = password_normalize("\xe1\x84\x80\xe1\x85\xa1", 6, &n);
    assert_string_equal(r, "\xea\xb0\x80");
    assert_int_equal(n, 3);
    free(r);
    r = password_normalize("Caf\xc3\xa9", 5, &n);
    assert_string_equal(r, "Caf\xc3\xa9");
    free(r);
    /* no policy at login: short, control characters and NUL pass through */
    r = password_normalize(nul, 3, &n);
    assert_non_null(r);
    assert_int_equal(n, 3);
    assert_memory_equal(r, nul, 3);
    free(r);
    r = password_normalize("", 0, &n);
    assert_non_null(r);
    assert_int_equal(n, 0);
    assert_string_equal(r, "");
    free(r);
    n = 99;
    assert_null(password_normalize("\xe2\x82", 2, &n));
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest hashing[] = {
        cmocka_unit_test(test_hash_format_owasp),
        cmocka_unit_test(test_verify_match_mismatch),
        cmocka_unit_test(test_no_truncation),
        cmocka_unit_test(test_salt_differs),
        cmocka_unit_test(test_hash_bad_arguments),
        cmocka_unit_test(test_verify_malformed),
        cmocka_unit_test(test_rehash_on_params),
        cmocka_unit_test(test_rehash_on_algorithm),
        cmocka_unit_test(test_dummy),
    };
    const struct CMUnitTest policy[] = {
        cmocka_unit_test(test_blocklist_file_count), cmocka_unit_test(test_length_code_points),
        cmocka_unit_test(test_length_max),           cmocka_unit_test(test_blocklisted),
        cmocka_unit_test(test_equals_email),         cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_control_characters),
    };
    const struct CMUnitTest standalone[] = {
        cmocka_unit_test(test_messages_state_numbers),
        cmocka_unit_test(test_policy_bad_lengths),
        cmocka_unit_test(test_john_list),
        cmocka_unit_test(test_missing_blocklist),
        cmocka_unit_test(test_normalize),
    };
    int failed = 0;

    failed += cmocka_run_group_tests_name("password_hash", hashing, NULL, NULL);
    failed += cmocka_run_group_tests_name("password_policy", policy, setup, teardown);
    failed += cmocka_run_group_tests_name("password_misc", standalone, NULL, NULL);
    return failed == 0 ? 0 : 1;
}
