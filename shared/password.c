/*
 * password: argon2id hashing and verification (libargon2, PHC strings, salt from the OpenSSL
 * CSPRNG), the dummy hash that gives unknown accounts the cost of a real verification, and the
 * NIST SP 800-63B policy: NFC (libunistring), length in code points, a case-insensitive
 * blocklist kept as a sorted array of case-folded NFC strings, never the account's email.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <argon2.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <unicase.h>
#include <uninorm.h>
#include <unistr.h>

#include "shared/error.h"

#include "shared/password.h"

#define SALT_LEN      16
#define TAG_LEN       32
#define SALT_B64_LEN  22 /* unpadded base64 of SALT_LEN bytes */
#define TAG_B64_LEN   43 /* unpadded base64 of TAG_LEN bytes */
#define DUMMY_SECRET  32
#define MAX_LEN_LIMIT 4096 /* largest max_len a policy accepts: 16 KiB of input at most */
#define COMMENT       "#!comment:"

static const char code_weak[] = "weak_password";
static const char code_invalid[] = "invalid_request";
static const char code_internal[] = "internal_error";
static const char msg_utf8[] = "The password is not valid UTF-8 text.";
static const char msg_control[] = "The password must not contain control characters.";
static const char msg_common[] = "This password is too common.";
static const char msg_email[] = "The password must not be the email address.";
static const char msg_oom[] = "The password could not be checked (out of memory).";

struct password_policy {
    int min_len;
    int max_len;
    char **blocklist; /* sorted, unique, case-folded NFC strings */
    size_t blocklist_n;
    char msg_short[80]; /* formatted once, so that messages handed out stay valid */
    char msg_long[80];
};

/* What the PHC header of a hash says; enough to decide on a re-hash. */
struct phc_info {
    argon2_type type;
    uint32_t version, m, t, p;
    size_t salt_b64, tag_b64;
};

/* ---- hashing ---- */

int password_hash(const struct password_params *p, const char *password, size_t len, char *phc,
                  size_t phclen)
{
    unsigned char salt[SALT_LEN];
    int rc;

    if (p == NULL || phc == NULL || (password == NULL && len > 0) || len > ARGON2_MAX_PWD_LENGTH)
        return -1;
    if (p->iterations < ARGON2_MIN_TIME || p->parallelism < ARGON2_MIN_LANES ||
        p->parallelism > ARGON2_MAX_LANES || p->memory_kib < ARGON2_MIN_MEMORY * p->parallelism)
        return -1;
    if (argon2_encodedlen(p->iterations, p->memory_kib, p->parallelism, SALT_LEN, TAG_LEN,
                          Argon2_id) > phclen)
        return -1;
    if (RAND_bytes(salt, sizeof(salt)) != 1)
        return -1;
    rc = argon2_hash(p->iterations, p->memory_kib, p->parallelism, password, len, salt,
                     sizeof(salt), NULL, TAG_LEN, phc, phclen, Argon2_id, ARGON2_VERSION_13);
    return rc == ARGON2_OK ? 0 : -1;
}

/* Reads a decimal uint32 without sign or leading zeros; returns the end, or NULL. */
static const char *parse_u32(const char *s, uint32_t *v_r)
{
    uint64_t v = 0;
    const char *start = s;

    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > UINT32_MAX)
            return NULL;
        s++;
    }
    if (s == start || (*start == '0' && s - start > 1))
        return NULL;
    *v_r = (uint32_t)v;
    return s;
}

static size_t b64_span(const char *s)
{
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
}

/* Parses "$argon2<x>[$v=<n>]$m=<n>,t=<n>,p=<n>$<salt>$<tag>". Returns 0 or -1. */
static int phc_parse(const char *s, struct phc_info *info)
{
    static const struct {
        const char *prefix;
        argon2_type type;
    } types[] = {{"$argon2id$", Argon2_id}, {"$argon2i$", Argon2_i}, {"$argon2d$", Argon2_d}};
    size_t i;

    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strncmp(s, types[i].prefix, strlen(types[i].prefix)) == 0)
            break;
    if (i == sizeof(types) / sizeof(types[0]))
        return -1;
    info->type = types[i].type;
    s += strlen(types[i].prefix);
    info->version = ARGON2_VERSION_10; /* what a hash without "v=" means to libargon2 */
    if (strncmp(s, "v=", 2) == 0) {
        if ((s = parse_u32(s + 2, &info->version)) == NULL || *s++ != '$')
            return -1;
    }
    if (strncmp(s, "m=", 2) != 0 || (s = parse_u32(s + 2, &info->m)) == NULL)
        return -1;
    if (strncmp(s, ",t=", 3) != 0 || (s = parse_u32(s + 3, &info->t)) == NULL)
        return -1;
    if (strncmp(s, ",p=", 3) != 0 || (s = parse_u32(s + 3, &info->p)) == NULL)
        return -1;
    if (*s++ != '$')
        return -1;
    info->salt_b64 = b64_span(s);
    s += info->salt_b64;
    if (info->salt_b64 == 0 || *s++ != '$')
        return -1;
    info->tag_b64 = b64_span(s);
    s += info->tag_b64;
    return info->tag_b64 > 0 && *s == '\0' ? 0 : -1;
}

static int phc_outdated(const struct phc_info *info, const struct password_params *current)
{
    return info->type != Argon2_id || info->version != ARGON2_VERSION_13 ||
           info->m != current->memory_kib || info->t != current->iterations ||
           info->p != current->parallelism || info->salt_b64 != SALT_B64_LEN ||
           info->tag_b64 != TAG_B64_LEN;
}

int password_verify(const char *phc, const char *password, size_t len,
                    const struct password_params *current, int *rehash_r)
{
    struct phc_info info;
    int rc;

    if (rehash_r != NULL)
        *rehash_r = 0;
    if (phc == NULL || phc_parse(phc, &info) < 0)
        return -1;
    if ((password == NULL && len > 0) || len > ARGON2_MAX_PWD_LENGTH)
        return -1;
    /* argon2_verify recomputes the tag and compares it in constant time. */
    rc = argon2_verify(phc, password, len, info.type);
    if (rc == ARGON2_VERIFY_MISMATCH)
        return 0;
    if (rc != ARGON2_OK)
        return -1;
    if (rehash_r != NULL && current != NULL)
        *rehash_r = phc_outdated(&info, current);
    return 1;
}

/* ---- dummy hash ---- */

int password_dummy_make(const struct password_params *p, char phc[PASSWORD_PHC_MAX])
{
    unsigned char secret[DUMMY_SECRET];
    int rc;

    phc[0] = '\0';
    if (RAND_bytes(secret, sizeof(secret)) != 1)
        return -1;
    rc = password_hash(p, (const char *)secret, sizeof(secret), phc, PASSWORD_PHC_MAX);
    OPENSSL_cleanse(secret, sizeof(secret));
    if (rc < 0)
        phc[0] = '\0';
    return rc < 0 ? -1 : 0;
}

void password_verify_dummy(const char *phc, const char *password, size_t len)
{
    (void)password_verify(phc, password, len, NULL, NULL);
}

/* ---- Unicode helpers ---- */

/* NUL-terminates a malloc'd libunistring result (which has no NUL of its own); frees on failure. */
static char *terminate(uint8_t *s, size_t n)
{
    uint8_t *t = realloc(s, n + 1);

    if (t == NULL) {
        free(s);
        return NULL;
    }
    t[n] = '\0';
    return (char *)t;
}

/* Returns the malloc'd NFC form of valid UTF-8 `s`, NUL-terminated, or NULL (no memory). */
static char *nfc_dup(const char *s, size_t n, size_t *outlen_r)
{
    uint8_t *r;

    *outlen_r = 0;
    if (n == 0)
        return strdup("");
    r = u8_normalize(UNINORM_NFC, (const uint8_t *)s, n, NULL, outlen_r);
    return r == NULL ? NULL : terminate(r, *outlen_r);
}

/* Returns the malloc'd case fold + NFC of valid UTF-8 `s`, NUL-terminated, or NULL. */
static char *fold_dup(const char *s, size_t n, size_t *outlen_r)
{
    uint8_t *r;

    *outlen_r = 0;
    if (n == 0)
        return strdup("");
    r = u8_casefold((const uint8_t *)s, n, NULL, UNINORM_NFC, NULL, outlen_r);
    return r == NULL ? NULL : terminate(r, *outlen_r);
}

/* C0 controls (NUL included) and DEL; the bytes never occur inside multi-byte UTF-8. */
static int has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 1;
    return 0;
}

static int is_utf8(const char *s, size_t n)
{
    return n == 0 || u8_check((const uint8_t *)s, n) == NULL;
}

static void free_secret(char *s, size_t n)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, n);
        free(s);
    }
}

char *password_normalize(const char *password, size_t len, size_t *outlen_r)
{
    size_t n;
    char *r;

    if (outlen_r != NULL)
        *outlen_r = 0;
    if ((password == NULL && len > 0) || !is_utf8(password, len))
        return NULL;
    r = nfc_dup(password, len, &n);
    if (r != NULL && outlen_r != NULL)
        *outlen_r = n;
    return r;
}

/* ---- blocklist ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int blocklist_add(struct password_policy *pol, size_t *cap, char *entry)
{
    if (pol->blocklist_n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 1024;
        char **t = realloc(pol->blocklist, ncap * sizeof(*t));

        if (t == NULL)
            return -1;
        pol->blocklist = t;
        *cap = ncap;
    }
    pol->blocklist[pol->blocklist_n++] = entry;
    return 0;
}

/* Sorts the entries and drops duplicates (case variants fold to one entry). */
static void blocklist_sort(struct password_policy *pol)
{
    size_t i, j = 0;

    if (pol->blocklist_n == 0)
        return;
    qsort(pol->blocklist, pol->blocklist_n, sizeof(char *), cmp_str);
    for (i = 1; i < pol->blocklist_n; i++) {
        if (strcmp(pol->blocklist[i], pol->blocklist[j]) == 0)
            free(pol->blocklist[i]);
        else
            pol->blocklist[++j] = pol->blocklist[i];
    }
    pol->blocklist_n = j + 1;
}

/*
 * One line of the file (newline stripped) to the list. Comments, empty lines, text that is not
 * UTF-8 and entries with control characters (no accepted password has one) are skipped.
 */
static int blocklist_line(struct password_policy *pol, size_t *cap, char *line, size_t n)
{
    size_t flen;
    char *entry;

    if (n > 0 && line[n - 1] == '\r')
        line[--n] = '\0';
    if (n == 0 || strncmp(line, COMMENT, strlen(COMMENT)) == 0)
        return 0;
    if (!is_utf8(line, n) || has_control(line, n))
        return 0;
    if ((entry = fold_dup(line, n, &flen)) == NULL)
        return -1;
    if (blocklist_add(pol, cap, entry) < 0) {
        free(entry);
        return -1;
    }
    return 0;
}

static int blocklist_load(struct password_policy *pol, const char *file, char *err, size_t errlen)
{
    FILE *f = fopen(file, "re");
    char *line = NULL;
    size_t linecap = 0, cap = 0;
    ssize_t n;
    int rc = -1;

    if (f == NULL) {
        error_set(err, errlen, "password blocklist: open(%s): %s", file, strerror(errno));
        return -1;
    }
    while ((n = getline(&line, &linecap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n')
            line[--n] = '\0';
        if (blocklist_line(pol, &cap, line, (size_t)n) < 0) {
            error_set(err, errlen, "password blocklist: %s: %s", file, strerror(ENOMEM));
            goto out;
        }
    }
    if (ferror(f)) {
        error_set(err, errlen, "password blocklist: read(%s): %s", file, strerror(errno));
        goto out;
    }
    blocklist_sort(pol);
    rc = 0;
out:
    free(line);
    fclose(f);
    return rc;
}

static int blocklist_has(const struct password_policy *pol, const char *folded)
{
    return pol->blocklist_n > 0 &&
           bsearch(&folded, pol->blocklist, pol->blocklist_n, sizeof(char *), cmp_str) != NULL;
}

/* ---- policy ---- */

struct password_policy *password_policy_new(int min_len, int max_len, const char *blocklist_file,
                                            char *err, size_t errlen)
{
    struct password_policy *pol;

    if (min_len < 1 || max_len < 64 || max_len > MAX_LEN_LIMIT || min_len > max_len) {
        error_set(err, errlen,
                  "password policy: lengths must satisfy 1 <= min (%d) <= max (%d), "
                  "64 <= max <= %d",
                  min_len, max_len, MAX_LEN_LIMIT);
        return NULL;
    }
    if ((pol = calloc(1, sizeof(*pol))) == NULL) {
        error_set(err, errlen, "password policy: %s", strerror(ENOMEM));
        return NULL;
    }
    pol->min_len = min_len;
    pol->max_len = max_len;
    snprintf(pol->msg_short, sizeof(pol->msg_short),
             "The password must be at least %d characters long.", min_len);
    snprintf(pol->msg_long, sizeof(pol->msg_long),
             "The password must be at most %d characters long.", max_len);
    if (blocklist_file != NULL && blocklist_file[0] != '\0' &&
        blocklist_load(pol, blocklist_file, err, errlen) < 0) {
        password_policy_free(pol);
        return NULL;
    }
    return pol;
}

void password_policy_free(struct password_policy *pol)
{
    if (pol == NULL)
        return;
    for (size_t i = 0; i < pol->blocklist_n; i++)
        free(pol->blocklist[i]);
    free(pol->blocklist);
    free(pol);
}

size_t password_policy_blocklist_size(const struct password_policy *pol)
{
    return pol != NULL ? pol->blocklist_n : 0;
}

/* Whether the case-folded password equals the case-folded email (1), or not (0); -1: memory. */
static int equals_email(const char *folded, size_t flen, const char *email)
{
    size_t elen = strlen(email), eflen;
    char *efold;
    int eq;

    if (!is_utf8(email, elen))
        return 0;
    if ((efold = fold_dup(email, elen, &eflen)) == NULL)
        return -1;
    eq = eflen == flen && memcmp(efold, folded, flen) == 0;
    free(efold);
    return eq;
}

/* The policy's verdict on the NFC form `norm`: NULL (accepted) or the refusal message. */
static const char *policy_verdict(const struct password_policy *pol, const char *norm,
                                  size_t normlen, const char *email)
{
    size_t cps = u8_mbsnlen((const uint8_t *)norm, normlen), flen;
    const char *msg = NULL;
    char *folded;
    int eq = 0;

    if (cps < (size_t)pol->min_len)
        return pol->msg_short;
    if (cps > (size_t)pol->max_len)
        return pol->msg_long;
    if ((folded = fold_dup(norm, normlen, &flen)) == NULL)
        return msg_oom;
    if (email != NULL && (eq = equals_email(folded, flen, email)) != 0)
        msg = eq > 0 ? msg_email : msg_oom;
    else if (blocklist_has(pol, folded))
        msg = msg_common;
    free_secret(folded, flen);
    return msg;
}

int password_policy_check(const struct password_policy *pol, const char *password, size_t len,
                          const char *email, char **normalized_r, const char **code_r,
                          const char **message_r)
{
    const char *code = code_weak, *msg;
    size_t normlen = 0;
    char *norm = NULL;

    *normalized_r = NULL;
    *code_r = NULL;
    *message_r = NULL;
    if (len > 4 * (size_t)pol->max_len) {
        msg = pol->msg_long; /* refused before any work on it */
    } else if ((password == NULL && len > 0) || !is_utf8(password, len)) {
        code = code_invalid;
        msg = msg_utf8;
    } else if (has_control(password, len)) {
        code = code_invalid;
        msg = msg_control;
    } else if ((norm = nfc_dup(password, len, &normlen)) == NULL) {
        msg = msg_oom;
    } else {
        msg = policy_verdict(pol, norm, normlen, email);
    }
    if (msg == NULL) {
        *normalized_r = norm;
        return 0;
    }
    if (msg == msg_oom)
        code = code_internal;
    free_secret(norm, normlen);
    *code_r = code;
    *message_r = msg;
    return -1;
}
