/*
 * password: argon2id hashing (libargon2, PHC strings) and the password policy of NIST SP
 * 800-63B: length in Unicode code points after NFC normalization (libunistring), no
 * composition rules, a common-password blocklist, never the account's email, never truncated.
 *
 * Hashing and verification are slow on purpose (~tens of ms): call them from the offload pool,
 * never from the event loop.
 */
#ifndef AUTHD_PASSWORD_H
#define AUTHD_PASSWORD_H

#include <stddef.h>
#include <stdint.h>

#define PASSWORD_PHC_MAX 192 /* longest PHC string password_hash writes, with its NUL */

struct password_params {
    uint32_t memory_kib;  /* OWASP default 19456 */
    uint32_t iterations;  /* default 2 */
    uint32_t parallelism; /* default 1 */
};

/*
 * Hashes `password` (len bytes, already normalized) with argon2id, a 16-byte salt from the
 * OpenSSL CSPRNG and a 32-byte tag into `phc` ("$argon2id$v=19$m=...,t=...,p=...$salt$hash").
 * Returns 0, or -1 (bad parameters, out of memory, phclen too small).
 */
int password_hash(const struct password_params *p, const char *password, size_t len, char *phc,
                  size_t phclen);

/*
 * Verifies `password` against `phc` (argon2id or argon2i/d PHC strings). Returns 1 on a match,
 * 0 on a mismatch, -1 when `phc` is malformed. On a match, *rehash_r is set to 1 when the
 * hash's algorithm or parameters differ from `current` (the caller re-hashes), else 0.
 */
int password_verify(const char *phc, const char *password, size_t len,
                    const struct password_params *current, int *rehash_r);

/*
 * Makes a dummy hash for unknown accounts: the PHC string of a random secret under parameters
 * `p`, written to `phc`. Whoever owns the parameters (a generation's auth context) owns its dummy,
 * so unknown and real accounts cost the same for exactly the parameters that generation uses.
 * Returns 0 or -1.
 */
int password_dummy_make(const struct password_params *p, char phc[PASSWORD_PHC_MAX]);
/* Verifies `password` against dummy `phc`: the same cost as a real verification, no result. */
void password_verify_dummy(const char *phc, const char *password, size_t len);

struct password_policy;

/*
 * Builds a policy. `min_len`/`max_len` count code points (max_len >= 64). `blocklist_file` is
 * a text file of common passwords, one per line (lines starting "#!comment:" and empty lines
 * are skipped), compared case-insensitively after NFC; NULL or "" means no list.
 * Returns NULL with a message in err.
 */
struct password_policy *password_policy_new(int min_len, int max_len, const char *blocklist_file,
                                            char *err, size_t errlen);
void password_policy_free(struct password_policy *pol);
size_t password_policy_blocklist_size(const struct password_policy *pol);

/*
 * Checks a candidate password for the account `email` (may be NULL). On success returns 0 and
 * *normalized_r = malloc'd NFC form (what to hash; caller frees). On refusal returns -1 with
 * *code_r = "weak_password" (policy) or "invalid_request" (not UTF-8, contains NUL/control
 * characters) and *message_r = a static sentence saying why ("The password must be at least 12
 * characters long.", "This password is too common.", "The password must not be the email
 * address.", ...).
 */
int password_policy_check(const struct password_policy *pol, const char *password, size_t len,
                          const char *email, char **normalized_r, const char **code_r,
                          const char **message_r);

/*
 * NFC-normalizes a password for login (no policy: an account made under an older policy must
 * still log in). Returns malloc'd text, or NULL when `password` is not valid UTF-8.
 */
char *password_normalize(const char *password, size_t len, size_t *outlen_r);

#endif
