/*
 * jwt: ES256 access tokens (RFC 7519, RFC 9068 "at+jwt") signed with OpenSSL EVP, the key ring
 * they are signed with, and its JWK Set (RFC 7517).
 *
 * The ring is loaded from PEM P-256 private keys; the first key signs, the others only verify,
 * so a rotation by reload never invalidates live tokens. A key's `kid` is its RFC 7638 JWK
 * thumbprint (base64url SHA-256), stable across restarts and hosts. Verification is strict
 * (RFC 8725): the algorithm is pinned to ES256 whatever the header says, the kid must be in
 * the ring, typ must be "at+jwt", duplicate JSON members are rejected, iss/aud/exp/nbf/iat are
 * checked with a leeway; sid is required; signatures are low-S only (s <= n/2), so a token
 * cannot be re-encoded with (r, n - s). base64url and JSON go through OpenSSL and jansson, never by
 * hand.
 */
#ifndef AUTHD_JWT_H
#define AUTHD_JWT_H

#include <jansson.h>
#include <stdint.h>

struct jwt_keyring;

/* Loads `n` PEM files (P-256 private keys). Returns NULL with a message naming the file. */
struct jwt_keyring *jwt_keyring_load(char *const *paths, int n, char *err, size_t errlen);
void jwt_keyring_free(struct jwt_keyring *kr);
int jwt_keyring_size(const struct jwt_keyring *kr);
const char *jwt_keyring_kid(const struct jwt_keyring *kr, int i); /* 0 = signing key */

/* The public JWK Set {"keys":[{"kty":"EC","crv":"P-256","x","y","kid","use":"sig","alg":"ES256"}]}.
 */
json_t *jwt_jwks(const struct jwt_keyring *kr);

/* Generates a P-256 key as PKCS#8 PEM at `path` (mode 0600; never overwrites). 0 or -1. */
int jwt_key_generate(const char *path, char *err, size_t errlen);

struct jwt_access {
    const char *iss, *aud, *sub;
    const char *sid;       /* session (refresh-token family) id, as claim "sid"; required */
    int64_t iat;           /* seconds since the epoch; nbf = iat */
    int ttl;               /* exp = iat + ttl */
    const char *jti;       /* unique id; NULL: 128 random bits, hex */
    const char *client_id; /* RFC 9068 client_id claim; NULL: none */
};

/* Signs an access token. Returns the malloc'd compact JWS, or NULL. */
char *jwt_sign(const struct jwt_keyring *kr, const struct jwt_access *a);

enum jwt_error {
    JWT_OK = 0,
    JWT_MALFORMED,     /* not three base64url parts, bad JSON, duplicate members, ... */
    JWT_BAD_ALG,       /* alg is not ES256 (none, HS256, RS256, ...) */
    JWT_BAD_TYPE,      /* typ is not at+jwt */
    JWT_UNKNOWN_KID,   /* kid missing or not in the ring */
    JWT_BAD_SIGNATURE, /* signature does not verify */
    JWT_EXPIRED,       /* now > exp + leeway */
    JWT_NOT_YET_VALID, /* now < nbf - leeway, or iat in the future beyond leeway */
    JWT_BAD_ISSUER,    /* iss differs */
    JWT_BAD_AUDIENCE,  /* aud (string or array) does not hold ours */
    JWT_MISSING_CLAIM, /* sub, sid, exp, iat, jti absent or of the wrong type */
};

/*
 * Verifies `token` (at most 8 KiB). On JWT_OK, *claims_r (if not NULL) holds the payload object
 * (caller decrefs). `leeway` is in seconds.
 */
enum jwt_error jwt_verify(const struct jwt_keyring *kr, const char *token, const char *iss,
                          const char *aud, int64_t now, int leeway, json_t **claims_r);
const char *jwt_error_string(enum jwt_error e);
/* exp + leeway of verified claims, saturated at INT64_MAX (exp may be any integer). */
int64_t jwt_valid_until(const json_t *claims, int leeway);

/* base64url without padding (OpenSSL EVP_EncodeBlock underneath). Malloc'd; NULL on failure. */
char *jwt_b64url_encode(const unsigned char *data, size_t len);
/* Decodes base64url (no padding); malloc'd bytes in *out_r, length in *len_r. 0 or -1. */
int jwt_b64url_decode(const char *text, size_t len, unsigned char **out_r, size_t *len_r);

#endif
