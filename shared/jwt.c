/*
 * jwt: ES256 access tokens, the key ring that signs and verifies them, and its JWK Set
 * (see jwt.h). A loaded ring is read-only: every sign/verify call builds its own EVP_MD_CTX,
 * so one ring serves many threads at once. No logging here; errors go to the caller.
 */
#include "shared/jwt.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "shared/error.h"

#define JWT_MAX_TOKEN   8192
#define B64URL_ALPHABET "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#define B64_MAX_INPUT   (1 << 28) /* EVP_EncodeBlock/EVP_DecodeBlock take an int */
#define COORD_LEN       32        /* P-256 field element, big-endian */
#define SIG_LEN         (2 * COORD_LEN)
#define B64_COORD_LEN   43 /* base64url length of 32 bytes */
#define JTI_BYTES       16

struct jwt_key {
    EVP_PKEY *pkey;
    char kid[B64_COORD_LEN + 1];
    char x[B64_COORD_LEN + 1];
    char y[B64_COORD_LEN + 1];
};

struct jwt_keyring {
    int n; /* keys loaded so far; keys[0] signs */
    struct jwt_key keys[];
};

/* "<what>(<file>): <first OpenSSL reason>"; empties the thread's OpenSSL error queue. */
static void openssl_err(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "unknown error";

    if (e != 0)
        ERR_error_string_n(e, reason, sizeof(reason));
    ERR_clear_error();
    error_set(err, errlen, "%s(%s): %s", what, file, reason);
}

/* ---- base64url ---- */

char *jwt_b64url_encode(const unsigned char *data, size_t len)
{
    static const unsigned char empty[1];
    unsigned char *out;
    int n;

    if (len > B64_MAX_INPUT || (data == NULL && len > 0))
        return NULL;
    out = malloc((len + 2) / 3 * 4 + 1);
    if (out == NULL)
        return NULL;
    n = EVP_EncodeBlock(out, data != NULL ? data : empty, (int)len);
    if (n < 0) {
        free(out);
        return NULL;
    }
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (int i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return (char *)out;
}

/*
 * Strict: only the base64url alphabet, no padding, no length of 4k+1, and the encoding must
 * be canonical (unused trailing bits zero), so one byte string has exactly one text form.
 */
int jwt_b64url_decode(const char *text, size_t len, unsigned char **out_r, size_t *len_r)
{
    size_t pad = (4 - len % 4) % 4, padded = len + pad;
    unsigned char *in = NULL, *out = NULL;
    char *again = NULL;
    int n, ret = -1;

    *out_r = NULL;
    *len_r = 0;
    if ((text == NULL && len > 0) || len > B64_MAX_INPUT || len % 4 == 1)
        return -1;
    if (len == 0) {
        *out_r = calloc(1, 1);
        return *out_r != NULL ? 0 : -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (memchr(B64URL_ALPHABET, text[i], sizeof(B64URL_ALPHABET) - 1) == NULL)
            return -1;
    }
    in = malloc(padded + 1);
    out = malloc(padded / 4 * 3 + 1);
    if (in == NULL || out == NULL)
        goto out;
    for (size_t i = 0; i < len; i++)
        in[i] = text[i] == '-' ? '+' : text[i] == '_' ? '/' : (unsigned char)text[i];
    memset(in + len, '=', pad);
    in[padded] = '\0';
    /* EVP_DecodeBlock counts the zero bytes that stand for the padding: drop them. */
    n = EVP_DecodeBlock(out, in, (int)padded);
    if (n < 0 || (size_t)n != padded / 4 * 3)
        goto out;
    again = jwt_b64url_encode(out, (size_t)n - pad);
    if (again == NULL || strlen(again) != len || memcmp(again, text, len) != 0)
        goto out;
    *out_r = out;
    *len_r = (size_t)n - pad;
    out = NULL;
    ret = 0;
out:
    free(again);
    free(out);
    free(in);
    return ret;
}

/* ---- keys ---- */

/* Never prompt on a terminal for an encrypted key: such a key is an error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

static int is_p256(EVP_PKEY *pkey)
{
    char group[64];

    if (!EVP_PKEY_is_a(pkey, "EC") ||
        EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       NULL) != 1)
        return 0;
    return strcmp(group, SN_X9_62_prime256v1) == 0 ||
           EC_curve_nist2nid(group) == NID_X9_62_prime256v1;
}

/* Writes the base64url of a 32-byte big-endian coordinate into `out` (44 bytes). */
static int coord_b64(EVP_PKEY *pkey, const char *param, char *out)
{
    unsigned char bin[COORD_LEN];
    BIGNUM *bn = NULL;
    char *b64 = NULL;
    int ok;

    ok = EVP_PKEY_get_bn_param(pkey, param, &bn) == 1 &&
         BN_bn2binpad(bn, bin, COORD_LEN) == COORD_LEN &&
         (b64 = jwt_b64url_encode(bin, COORD_LEN)) != NULL && strlen(b64) == B64_COORD_LEN;
    if (ok)
        memcpy(out, b64, B64_COORD_LEN + 1);
    free(b64);
    BN_free(bn);
    return ok ? 0 : -1;
}

/* Fills x, y and kid (RFC 7638 thumbprint: members in lexical order, no whitespace). */
static int key_init(struct jwt_key *k, EVP_PKEY *pkey)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char json[128], *kid;
    int n;

    if (coord_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_X, k->x) != 0 ||
        coord_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, k->y) != 0)
        return -1;
    n = snprintf(json, sizeof(json), "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
                 k->x, k->y);
    if (n < 0 || (size_t)n >= sizeof(json) ||
        EVP_Digest(json, (size_t)n, md, &mdlen, EVP_sha256(), NULL) != 1)
        return -1;
    kid = jwt_b64url_encode(md, mdlen);
    if (kid == NULL || strlen(kid) != B64_COORD_LEN) {
        free(kid);
        return -1;
    }
    memcpy(k->kid, kid, B64_COORD_LEN + 1);
    free(kid);
    k->pkey = pkey;
    return 0;
}

static EVP_PKEY *load_p256(const char *path, char *err, size_t errlen)
{
    EVP_PKEY *pkey;
    FILE *fp = path != NULL ? fopen(path, "re") : NULL;

    if (path == NULL) {
        error_set(err, errlen, "jwt: key path missing");
        return NULL;
    }
    if (fp == NULL) {
        error_set(err, errlen, "open(%s): %s", path, strerror(errno));
        return NULL;
    }
    pkey = PEM_read_PrivateKey(fp, NULL, no_passphrase, NULL);
    fclose(fp);
    if (pkey == NULL) {
        openssl_err(err, errlen, "PEM_read_PrivateKey", path);
        return NULL;
    }
    if (!is_p256(pkey)) {
        ERR_clear_error();
        error_set(err, errlen, "%s: not an EC P-256 private key (ES256 needs P-256)", path);
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return pkey;
}

struct jwt_keyring *jwt_keyring_load(char *const *paths, int n, char *err, size_t errlen)
{
    struct jwt_keyring *kr;
    EVP_PKEY *pkey;

    if (paths == NULL || n < 1 || (size_t)n > (SIZE_MAX - sizeof(*kr)) / sizeof(struct jwt_key)) {
        error_set(err, errlen, "jwt: need at least one signing key");
        return NULL;
    }
    kr = calloc(1, sizeof(*kr) + (size_t)n * sizeof(struct jwt_key));
    if (kr == NULL) {
        error_set(err, errlen, "jwt: out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        pkey = load_p256(paths[i], err, errlen);
        if (pkey == NULL)
            goto fail;
        if (key_init(&kr->keys[i], pkey) != 0) {
            EVP_PKEY_free(pkey);
            openssl_err(err, errlen, "jwk thumbprint", paths[i]);
            goto fail;
        }
        kr->n = i + 1;
        for (int j = 0; j < i; j++) {
            if (strcmp(kr->keys[j].kid, kr->keys[i].kid) == 0) {
                error_set(err, errlen, "%s: duplicate key (same kid %s as %s)", paths[i],
                          kr->keys[i].kid, paths[j]);
                goto fail;
            }
        }
    }
    return kr;
fail:
    jwt_keyring_free(kr);
    return NULL;
}

void jwt_keyring_free(struct jwt_keyring *kr)
{
    if (kr == NULL)
        return;
    for (int i = 0; i < kr->n; i++)
        EVP_PKEY_free(kr->keys[i].pkey);
    free(kr);
}

int jwt_keyring_size(const struct jwt_keyring *kr)
{
    return kr != NULL ? kr->n : 0;
}

const char *jwt_keyring_kid(const struct jwt_keyring *kr, int i)
{
    if (kr == NULL || i < 0 || i >= kr->n)
        return NULL;
    return kr->keys[i].kid;
}

json_t *jwt_jwks(const struct jwt_keyring *kr)
{
    json_t *keys = json_array(), *jwk;

    if (keys == NULL || kr == NULL)
        goto fail;
    for (int i = 0; i < kr->n; i++) {
        const struct jwt_key *k = &kr->keys[i];

        jwk = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x",
                        k->x, "y", k->y, "kid", k->kid, "use", "sig", "alg", "ES256");
        if (json_array_append_new(keys, jwk) != 0)
            goto fail;
    }
    return json_pack("{s:o}", "keys", keys);
fail:
    json_decref(keys);
    return NULL;
}

int jwt_key_generate(const char *path, char *err, size_t errlen)
{
    EVP_PKEY *pkey = NULL;
    FILE *fp = NULL;
    int fd, created = 0, ret = -1;

    if (path == NULL || *path == '\0') {
        error_set(err, errlen, "jwt_key_generate: empty path");
        return -1;
    }
    pkey = EVP_EC_gen("P-256");
    if (pkey == NULL) {
        openssl_err(err, errlen, "EVP_EC_gen", "P-256");
        return -1;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        error_set(err, errlen, "open(%s): %s", path, strerror(errno));
        goto out;
    }
    created = 1;
    /* The umask may have cleared the owner bits; the mode is exactly 0600 either way. */
    if (fchmod(fd, 0600) != 0 || (fp = fdopen(fd, "w")) == NULL) {
        error_set(err, errlen, "fchmod/fdopen(%s): %s", path, strerror(errno));
        close(fd);
        goto out;
    }
    if (PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL) != 1) {
        openssl_err(err, errlen, "PEM_write_PrivateKey", path);
        goto out;
    }
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        error_set(err, errlen, "write(%s): %s", path, strerror(errno));
        goto out;
    }
    ret = fclose(fp) == 0 ? 0 : -1;
    fp = NULL;
    if (ret != 0)
        error_set(err, errlen, "close(%s): %s", path, strerror(errno));
out:
    if (fp != NULL)
        fclose(fp);
    if (ret != 0 && created)
        unlink(path);
    EVP_PKEY_free(pkey);
    return ret;
}

/* ---- low-S (signature malleability) ---- */

/*
 * ECDSA signatures are malleable: (r, s) and (r, n - s) both verify. Tokens are signed with
 * s <= n/2 and a signature with s > n/2 is refused, so one set of claims has one token text.
 * The P-256 order n comes from OpenSSL's curve, read once.
 */
static pthread_once_t order_once = PTHREAD_ONCE_INIT;
static BIGNUM *p256_order;                 /* NULL if the curve could not be read */
static unsigned char p256_half[COORD_LEN]; /* floor(n / 2), big-endian */

static void order_init(void)
{
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    BIGNUM *n = g != NULL ? BN_dup(EC_GROUP_get0_order(g)) : NULL, *half = BN_new();

    if (n != NULL && half != NULL && BN_rshift1(half, n) == 1 &&
        BN_bn2binpad(half, p256_half, COORD_LEN) == COORD_LEN) {
        p256_order = n;
        n = NULL;
    }
    BN_free(half);
    BN_free(n);
    EC_GROUP_free(g);
    ERR_clear_error();
}

/* 1 when the big-endian `s` is at most n/2; 0 when it is high or the order is unknown. */
static int s_is_low(const unsigned char s[COORD_LEN])
{
    pthread_once(&order_once, order_init);
    return p256_order != NULL && memcmp(s, p256_half, COORD_LEN) <= 0;
}

/* Writes s, or n - s when s is high, as 32 big-endian bytes. 0 or -1. */
static int s_low_bytes(const BIGNUM *s, unsigned char out[COORD_LEN])
{
    BIGNUM *t;
    int ok;

    if (BN_bn2binpad(s, out, COORD_LEN) != COORD_LEN)
        return -1;
    if (s_is_low(out))
        return 0;
    if (p256_order == NULL || (t = BN_new()) == NULL)
        return -1;
    ok = BN_sub(t, p256_order, s) == 1 && BN_bn2binpad(t, out, COORD_LEN) == COORD_LEN &&
         s_is_low(out);
    BN_free(t);
    return ok ? 0 : -1;
}

/* ---- signing ---- */

/*
 * ES256 over `tbs`; the DER ECDSA-Sig-Value becomes JOSE's raw r||s (RFC 7518 §3.4), with s
 * normalized to the low half.
 */
static int es256_sign(EVP_PKEY *pkey, const char *tbs, unsigned char raw[SIG_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char der[128];
    const unsigned char *p = der;
    size_t derlen = sizeof(der);
    ECDSA_SIG *sig = NULL;
    const BIGNUM *r, *s;
    int ok;

    ok = ctx != NULL && EVP_PKEY_get_size(pkey) <= (int)sizeof(der) &&
         EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
         EVP_DigestSign(ctx, der, &derlen, (const unsigned char *)tbs, strlen(tbs)) == 1 &&
         (sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen)) != NULL;
    if (ok) {
        ECDSA_SIG_get0(sig, &r, &s);
        ok = BN_bn2binpad(r, raw, COORD_LEN) == COORD_LEN && s_low_bytes(s, raw + COORD_LEN) == 0;
    }
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok ? 0 : -1;
}

/* Compact JSON, base64url-encoded. */
static char *b64_json(const json_t *v)
{
    char *text = v != NULL ? json_dumps(v, JSON_COMPACT) : NULL;
    char *b64;

    if (text == NULL)
        return NULL;
    b64 = jwt_b64url_encode((const unsigned char *)text, strlen(text));
    free(text);
    return b64;
}

static json_t *access_claims(const struct jwt_access *a)
{
    unsigned char rnd[JTI_BYTES];
    char jti[2 * JTI_BYTES + 1];
    json_t *c;

    if (a->jti == NULL) {
        if (RAND_bytes(rnd, sizeof(rnd)) != 1)
            return NULL;
        for (size_t i = 0; i < sizeof(rnd); i++)
            snprintf(jti + 2 * i, 3, "%02x", rnd[i]);
    }
    c = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "iss", a->iss, "sub", a->sub, "aud",
                  a->aud, "exp", (json_int_t)(a->iat + a->ttl), "iat", (json_int_t)a->iat, "nbf",
                  (json_int_t)a->iat, "jti", a->jti != NULL ? a->jti : jti);
    if (c != NULL && a->sid != NULL && json_object_set_new(c, "sid", json_string(a->sid)) != 0) {
        json_decref(c);
        return NULL;
    }
    /* RFC 9068 §2.2: client_id is required in at+jwt tokens. */
    if (c != NULL && a->client_id != NULL &&
        json_object_set_new(c, "client_id", json_string(a->client_id)) != 0) {
        json_decref(c);
        return NULL;
    }
    return c;
}

char *jwt_sign(const struct jwt_keyring *kr, const struct jwt_access *a)
{
    const struct jwt_key *k;
    json_t *hdr = NULL, *claims = NULL;
    char *h64 = NULL, *p64 = NULL, *s64 = NULL, *tbs = NULL, *token = NULL;
    unsigned char raw[SIG_LEN];

    if (kr == NULL || kr->n < 1 || a == NULL || a->iss == NULL || a->aud == NULL ||
        a->sub == NULL || a->sid == NULL || a->ttl <= 0 || a->iat > INT64_MAX - a->ttl)
        return NULL;
    k = &kr->keys[0];
    hdr = json_pack("{s:s, s:s, s:s}", "alg", "ES256", "typ", "at+jwt", "kid", k->kid);
    claims = access_claims(a);
    h64 = b64_json(hdr);
    p64 = b64_json(claims);
    if (h64 == NULL || p64 == NULL || asprintf(&tbs, "%s.%s", h64, p64) < 0) {
        tbs = NULL;
        goto out;
    }
    if (es256_sign(k->pkey, tbs, raw) != 0 || (s64 = jwt_b64url_encode(raw, SIG_LEN)) == NULL)
        goto out;
    if (asprintf(&token, "%s.%s", tbs, s64) < 0)
        token = NULL;
    if (token != NULL && strlen(token) > JWT_MAX_TOKEN) { /* jwt_verify would refuse it */
        free(token);
        token = NULL;
    }
out:
    free(s64);
    free(tbs);
    free(p64);
    free(h64);
    json_decref(claims);
    json_decref(hdr);
    return token;
}

/* ---- verification ---- */

/* Raw r||s back to DER, then EVP_DigestVerify. 0 when the signature holds. */
static int es256_verify(EVP_PKEY *pkey, const char *tbs, size_t tbslen,
                        const unsigned char raw[SIG_LEN])
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, COORD_LEN, NULL), *s = BN_bin2bn(raw + COORD_LEN, COORD_LEN, NULL);
    EVP_MD_CTX *ctx = NULL;
    unsigned char *der = NULL;
    int derlen, ok = 0;

    if (sig == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(sig, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        goto out;
    }
    derlen = i2d_ECDSA_SIG(sig, &der);
    ctx = EVP_MD_CTX_new();
    ok = derlen > 0 && ctx != NULL &&
         EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
         EVP_DigestVerify(ctx, der, (size_t)derlen, (const unsigned char *)tbs, tbslen) == 1;
out:
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    ERR_clear_error();
    return ok ? 0 : -1;
}

/* A base64url part that must hold a JSON object without duplicate members. */
static enum jwt_error parse_part(const char *b64, size_t len, json_t **obj_r)
{
    unsigned char *text;
    size_t n;
    json_t *v;

    *obj_r = NULL;
    if (len == 0 || jwt_b64url_decode(b64, len, &text, &n) != 0)
        return JWT_MALFORMED;
    v = json_loadb((const char *)text, n, JSON_REJECT_DUPLICATES, NULL);
    free(text);
    if (!json_is_object(v)) {
        json_decref(v);
        return JWT_MALFORMED;
    }
    *obj_r = v;
    return JWT_OK;
}

/* The algorithm is pinned: the header can only agree with ES256, never choose. */
static enum jwt_error check_header(const struct jwt_keyring *kr, const json_t *hdr,
                                   const struct jwt_key **key_r)
{
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    const char *typ = json_string_value(json_object_get(hdr, "typ"));
    const char *kid = json_string_value(json_object_get(hdr, "kid"));

    if (alg == NULL || strcmp(alg, "ES256") != 0)
        return JWT_BAD_ALG;
    if (typ == NULL ||
        (strcasecmp(typ, "at+jwt") != 0 && strcasecmp(typ, "application/at+jwt") != 0))
        return JWT_BAD_TYPE;
    if (json_object_get(hdr, "crit") != NULL) /* we understand no extension */
        return JWT_MALFORMED;
    if (kid == NULL)
        return JWT_UNKNOWN_KID;
    for (int i = 0; i < kr->n; i++) {
        if (strcmp(kr->keys[i].kid, kid) == 0) {
            *key_r = &kr->keys[i];
            return JWT_OK;
        }
    }
    return JWT_UNKNOWN_KID;
}

static enum jwt_error check_signature(const struct jwt_key *k, const char *tbs, size_t tbslen,
                                      const char *sig64, size_t siglen)
{
    unsigned char *raw;
    size_t rawlen;
    enum jwt_error e;

    if (jwt_b64url_decode(sig64, siglen, &raw, &rawlen) != 0)
        return JWT_MALFORMED;
    e = rawlen == SIG_LEN && s_is_low(raw + COORD_LEN) &&
                es256_verify(k->pkey, tbs, tbslen, raw) == 0
            ? JWT_OK
            : JWT_BAD_SIGNATURE;
    free(raw);
    return e;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;

    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* Pure time decision; `nbf` may be NULL. */
static enum jwt_error check_times(int64_t now, int leeway, int64_t exp, int64_t iat,
                                  const int64_t *nbf)
{
    if (leeway < 0)
        leeway = 0;
    if (now > sat_add(exp, leeway))
        return JWT_EXPIRED;
    if (nbf != NULL && now < sat_add(*nbf, -(int64_t)leeway))
        return JWT_NOT_YET_VALID;
    if (iat > sat_add(now, leeway))
        return JWT_NOT_YET_VALID;
    return JWT_OK;
}

static int audience_ok(const json_t *claim, const char *aud)
{
    size_t i;
    const json_t *v;

    if (aud == NULL)
        return 0;
    if (json_is_string(claim))
        return strcmp(json_string_value(claim), aud) == 0;
    json_array_foreach(claim, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), aud) == 0)
            return 1;
    }
    return 0;
}

static enum jwt_error check_claims(const json_t *c, const char *iss, const char *aud, int64_t now,
                                   int leeway)
{
    const json_t *exp = json_object_get(c, "exp"), *iat = json_object_get(c, "iat");
    const json_t *nbf = json_object_get(c, "nbf"), *sid = json_object_get(c, "sid");
    const char *tiss = json_string_value(json_object_get(c, "iss"));
    int64_t nbf_v;

    if (!json_is_integer(exp) || !json_is_integer(iat) ||
        !json_is_string(json_object_get(c, "sub")) || !json_is_string(json_object_get(c, "jti")) ||
        !json_is_string(sid))
        return JWT_MISSING_CLAIM;
    if (nbf != NULL && !json_is_integer(nbf))
        return JWT_MALFORMED;
    if (iss == NULL || tiss == NULL || strcmp(iss, tiss) != 0)
        return JWT_BAD_ISSUER;
    if (!audience_ok(json_object_get(c, "aud"), aud))
        return JWT_BAD_AUDIENCE;
    nbf_v = nbf != NULL ? json_integer_value(nbf) : 0;
    return check_times(now, leeway, json_integer_value(exp), json_integer_value(iat),
                       nbf != NULL ? &nbf_v : NULL);
}

/*
 * Order: shape, header (alg, typ, crit, kid), signature, and only then the payload; the claims
 * of a token whose signature failed are never looked at.
 */
enum jwt_error jwt_verify(const struct jwt_keyring *kr, const char *token, const char *iss,
                          const char *aud, int64_t now, int leeway, json_t **claims_r)
{
    const char *dot1, *dot2;
    const struct jwt_key *key = NULL;
    json_t *hdr, *claims;
    size_t len;
    enum jwt_error e;

    if (claims_r != NULL)
        *claims_r = NULL;
    if (kr == NULL || token == NULL)
        return JWT_MALFORMED;
    len = strnlen(token, JWT_MAX_TOKEN + 1);
    if (len > JWT_MAX_TOKEN)
        return JWT_MALFORMED;
    dot1 = memchr(token, '.', len);
    dot2 = dot1 != NULL ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        return JWT_MALFORMED;
    e = parse_part(token, (size_t)(dot1 - token), &hdr);
    if (e != JWT_OK)
        return e;
    e = check_header(kr, hdr, &key);
    json_decref(hdr);
    if (e != JWT_OK)
        return e;
    e = check_signature(key, token, (size_t)(dot2 - token), dot2 + 1,
                        len - (size_t)(dot2 + 1 - token));
    if (e != JWT_OK)
        return e;
    e = parse_part(dot1 + 1, (size_t)(dot2 - dot1 - 1), &claims);
    if (e != JWT_OK)
        return e;
    e = check_claims(claims, iss, aud, now, leeway);
    if (e == JWT_OK && claims_r != NULL)
        *claims_r = claims;
    else
        json_decref(claims);
    return e;
}

int64_t jwt_valid_until(const json_t *claims, int leeway)
{
    return sat_add(json_integer_value(json_object_get(claims, "exp")), leeway < 0 ? 0 : leeway);
}

const char *jwt_error_string(enum jwt_error e)
{
    switch (e) {
    case JWT_OK:
        return "ok";
    case JWT_MALFORMED:
        return "malformed token";
    case JWT_BAD_ALG:
        return "algorithm not allowed";
    case JWT_BAD_TYPE:
        return "token type is not at+jwt";
    case JWT_UNKNOWN_KID:
        return "unknown key id";
    case JWT_BAD_SIGNATURE:
        return "bad signature";
    case JWT_EXPIRED:
        return "token expired";
    case JWT_NOT_YET_VALID:
        return "token not yet valid";
    case JWT_BAD_ISSUER:
        return "wrong issuer";
    case JWT_BAD_AUDIENCE:
        return "wrong audience";
    case JWT_MISSING_CLAIM:
        return "missing or mistyped claim";
    }
    return "unknown error";
}
