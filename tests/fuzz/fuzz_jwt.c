/*
 * fuzz_jwt: libFuzzer harness for access-token verification (shared/jwt.c, jwt_verify).
 *
 * The key ring is [A, B], loaded from PEM files through jwt_keyring_load; C is a stranger's
 * key. The three keys are fixed test keys (below) so that the seed tokens stay valid. The first
 * input byte picks what the rest is:
 *   'S'  a token "header.payload[.anything]": the harness signs header.payload with A (a valid
 *        signature, so the claims checks run) and with C (must never verify), then verifies;
 *   'J'  "header JSON\npayload JSON": base64url-encoded, then as 'S' (mutations work on the JSON);
 *   else the rest is a token verified as it is (seeds: valid tokens, alg none, wrong kid, ...).
 * Invariants: a token signed by C never verifies; a verified token's claims are an object with
 * our issuer, our audience, string sub and jti, and exp/nbf/iat that hold at `now`.
 *
 * FUZZ_JWT_WRITE_SEEDS=DIR makes the binary write freshly signed seed tokens to DIR and exit.
 */
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/fuzz/fuzz.h"

#include "shared/jwt.h"

#define ISS    "https://auth.example.test"
#define AUD    "api.example.test"
#define NOW    ((int64_t)1700000000)
#define LEEWAY 60

/* Test keys (P-256, PKCS#8), never used outside this harness. */
static const char key_a[] = "-----BEGIN PRIVATE KEY-----\n"
                            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQzwm46qvnXZSy7Mk\n"
                            "uuU4Qo+pmMdTHdCowZDO6cVm/9mhRANCAAQxqd58TB7Fo4bE7XSRiLqWeRU9uiUc\n"
                            "T6M2v5RGXF8ziEy97dPcesDtt5wVkYcDf5q8Q7H/+griv17gBVQIGITm\n"
                            "-----END PRIVATE KEY-----\n";
static const char key_b[] = "-----BEGIN PRIVATE KEY-----\n"
                            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgH58lbC29CjqlsMbC\n"
                            "M5wZbUEcq35vG4ZVavmAGIivG6OhRANCAASRnNLdRV4G9Ru1TKuMXGcamrMMVCFH\n"
                            "iULYHsNm0vmmu0LjIGcAEZdCu8QUKhgFJX5T4Gfd3ToXs5c8y5HSC1XL\n"
                            "-----END PRIVATE KEY-----\n";
static const char key_c[] = "-----BEGIN PRIVATE KEY-----\n"
                            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4/c+54JXz+iK2lHa\n"
                            "p10D/LgI3ekXU/5kqCl+ImhTUq2hRANCAATUfpiZ+OwoQlN4zXYyDIlfRd7MZiFw\n"
                            "VyXlePGZW8sJayIZ1P2hNst333UfdnchG0CK2dygKCBO8VRM0hpfoyjK\n"
                            "-----END PRIVATE KEY-----\n";

static struct jwt_keyring *ring; /* [A, B] */
static EVP_PKEY *pkey_a, *pkey_c;

static void die(const char *what)
{
    fuzz_die("fuzz_jwt", what);
}

static EVP_PKEY *pem_key(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;

    BIO_free(b);
    if (k == NULL)
        die("cannot read a test key");
    return k;
}

/* The ring goes through the real loader: PEM files in a temporary directory. */
static void ring_load(void)
{
    char dir[] = "/tmp/fuzz_jwt.XXXXXX", pa[64], pb[64], err[256];
    char *paths[2] = {pa, pb};
    const char *pems[2] = {key_a, key_b};

    if (mkdtemp(dir) == NULL)
        die("mkdtemp");
    snprintf(pa, sizeof(pa), "%s/a.pem", dir);
    snprintf(pb, sizeof(pb), "%s/b.pem", dir);
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(paths[i], "w");
        if (f == NULL || fputs(pems[i], f) < 0 || fclose(f) != 0)
            die("cannot write a test key");
    }
    ring = jwt_keyring_load(paths, 2, err, sizeof(err));
    if (ring == NULL)
        die(err);
    unlink(pa);
    unlink(pb);
    rmdir(dir);
}

/* ES256 over `tbs`: "tbs.<base64url r||s>" (malloc'd), the same JWS shape jwt_sign makes. */
static char *sign_with(EVP_PKEY *k, const char *tbs, size_t tbslen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char der[80], raw[64];
    const unsigned char *p = der;
    size_t derlen = sizeof(der);
    ECDSA_SIG *sig = NULL;
    char *s64 = NULL, *out = NULL;

    if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k) != 1 ||
        EVP_DigestSign(ctx, der, &derlen, (const unsigned char *)tbs, tbslen) != 1 ||
        (sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen)) == NULL ||
        BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) != 32 ||
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) != 32 ||
        (s64 = jwt_b64url_encode(raw, sizeof(raw))) == NULL)
        die("signing failed");
    if (asprintf(&out, "%.*s.%s", (int)tbslen, tbs, s64) < 0)
        die("out of memory");
    free(s64);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(ctx);
    return out;
}

static int64_t int_claim(const json_t *c, const char *name)
{
    return json_integer_value(json_object_get(c, name));
}

/* What jwt_verify promises about the claims of a token it accepted. */
static void check_claims(json_t *c)
{
    const json_t *aud = json_object_get(c, "aud");
    int aud_ok = json_is_string(aud) && strcmp(json_string_value(aud), AUD) == 0;
    size_t i;
    const json_t *v;

    json_array_foreach(aud, i, v) aud_ok |= json_is_string(v) && !strcmp(json_string_value(v), AUD);
    if (!json_is_object(c) || !aud_ok)
        die("accepted without our audience");
    if (!json_is_string(json_object_get(c, "iss")) ||
        strcmp(json_string_value(json_object_get(c, "iss")), ISS) != 0)
        die("accepted with another issuer");
    if (!json_is_string(json_object_get(c, "sub")) || !json_is_string(json_object_get(c, "jti")))
        die("accepted without a string sub or jti");
    if (int_claim(c, "exp") < NOW - LEEWAY || int_claim(c, "iat") > NOW + LEEWAY)
        die("accepted an expired token or one issued in the future");
    if (json_object_get(c, "nbf") != NULL && int_claim(c, "nbf") > NOW + LEEWAY)
        die("accepted a token before its nbf");
}

static enum jwt_error verify(const char *token)
{
    json_t *claims = NULL;
    enum jwt_error e = jwt_verify(ring, token, ISS, AUD, NOW, LEEWAY, &claims);

    if (e == JWT_OK)
        check_claims(claims);
    else if (claims != NULL)
        die("claims returned with an error");
    if (jwt_error_string(e) == NULL)
        die("no error string");
    json_decref(claims);
    return e;
}

/* header.payload signed by A (verified) and by C (never accepted). */
static void verify_signed(const char *tbs, size_t len)
{
    char *good = sign_with(pkey_a, tbs, len), *forged = sign_with(pkey_c, tbs, len);

    verify(good);
    if (verify(forged) == JWT_OK)
        die("a token signed by a key outside the ring verified");
    free(good);
    free(forged);
}

/* 'J': header JSON up to the first newline, payload JSON after it. */
static void from_json(const char *text, size_t len)
{
    const char *nl = memchr(text, '\n', len);
    size_t hl = nl ? (size_t)(nl - text) : len;
    char *h64 = jwt_b64url_encode((const unsigned char *)text, hl);
    char *p64 = nl ? jwt_b64url_encode((const unsigned char *)nl + 1, len - hl - 1) : strdup("");
    char *tbs = NULL;

    if (h64 == NULL || p64 == NULL || asprintf(&tbs, "%s.%s", h64, p64) < 0)
        die("out of memory");
    verify_signed(tbs, strlen(tbs));
    free(tbs);
    free(p64);
    free(h64);
}

/* Writes seed tokens signed with A and B (run with FUZZ_JWT_WRITE_SEEDS=DIR). */
static void write_seeds(const char *dir)
{
    static const char *const names[] = {"valid_a", "valid_b_array_aud", "expired_a", "valid_nbf"};
    static const char *const claims[] = {
        "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"u1\",\"sid\":\"s1\",\"iat\":1700000000,"
        "\"nbf\":1700000000,\"exp\":1700000900,\"jti\":\"j1\",\"client_id\":\"web\"}",
        "{\"iss\":\"" ISS "\",\"aud\":[\"other\",\"" AUD "\"],\"sub\":\"u2\",\"iat\":1699999990,"
        "\"exp\":1700000500,\"jti\":\"j2\"}",
        "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"u3\",\"iat\":1690000000,"
        "\"exp\":1690000900,\"jti\":\"j3\"}",
        "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"u4\",\"iat\":1700000000,"
        "\"nbf\":1700000030,\"exp\":1700000900,\"jti\":\"j4\"}"};
    EVP_PKEY *keys[2] = {pkey_a, pem_key(key_b)};

    for (int i = 0; i < 4; i++) {
        const char *kid = jwt_keyring_kid(ring, i == 1);
        char *hdr = NULL, *h64, *p64, *tbs = NULL, *tok, path[512];
        if (asprintf(&hdr, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}", kid) < 0)
            die("out of memory");
        h64 = jwt_b64url_encode((const unsigned char *)hdr, strlen(hdr));
        p64 = jwt_b64url_encode((const unsigned char *)claims[i], strlen(claims[i]));
        if (h64 == NULL || p64 == NULL || asprintf(&tbs, "%s.%s", h64, p64) < 0)
            die("out of memory");
        tok = sign_with(keys[i == 1], tbs, strlen(tbs));
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "w");
        if (f == NULL || fprintf(f, "V%s", tok) < 0 || fclose(f) != 0)
            die("cannot write a seed");
        printf("%s: %s\n", path, jwt_error_string(verify(tok)));
        free(tok);
        free(tbs);
        free(p64);
        free(h64);
        free(hdr);
    }
    EVP_PKEY_free(keys[1]);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ring_load();
    pkey_a = pem_key(key_a);
    pkey_c = pem_key(key_c);
    const char *seeds = getenv("FUZZ_JWT_WRITE_SEEDS");
    if (seeds != NULL) {
        write_seeds(seeds);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* jwt_verify takes a C string: the token ends at the first NUL, as it would in a header. */
    char *text = strndup((const char *)data + 1, size - 1);
    size_t len;

    if (text == NULL)
        die("out of memory");
    len = strlen(text);
    if (data[0] == 'J') {
        from_json(text, len);
    } else if (data[0] == 'S') {
        const char *dot1 = strchr(text, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
        verify_signed(text, dot2 ? (size_t)(dot2 - text) : len);
    } else {
        verify(text);
    }
    free(text);
    return 0;
}
