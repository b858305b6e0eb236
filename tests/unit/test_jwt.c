/*
 * Unit tests for shared/jwt.c: base64url, key generation and loading, the RFC 7638 kid, the
 * JWK Set, signing, and every way jwt_verify must refuse a token (RFC 8725).
 *
 * The group setup generates three P-256 keys in a temporary directory: A (the ring under test),
 * B (a newer key, for rotation) and C (a stranger's key). Hostile tokens are built here with a
 * second signing path (EVP_DigestSign + our own DER -> r||s), not with jwt_sign.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "shared/jwt.h"

#define NOW ((int64_t)1700000000)
#define ISS "https://auth.example.test"
#define AUD "api.example.test"

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        const char *hay_ = (hay), *needle_ = (needle);                                             \
        assert_non_null(hay_);                                                                     \
        if (strstr(hay_, needle_) == NULL)                                                         \
            fail_msg("expected \"%s\" in:\n%s", needle_, hay_);                                    \
    } while (0)

/* A fixed key whose thumbprint was computed apart (Python hashlib + base64, RFC 7638). */
static const char kat_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                              "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQzwm46qvnXZSy7Mk\n"
                              "uuU4Qo+pmMdTHdCowZDO6cVm/9mhRANCAAQxqd58TB7Fo4bE7XSRiLqWeRU9uiUc\n"
                              "T6M2v5RGXF8ziEy97dPcesDtt5wVkYcDf5q8Q7H/+griv17gBVQIGITm\n"
                              "-----END PRIVATE KEY-----\n";
#define KAT_X   "ManefEwexaOGxO10kYi6lnkVPbolHE-jNr-URlxfM4g"
#define KAT_Y   "TL3t09x6wO23nBWRhwN_mrxDsf_6CuK_XuAFVAgYhOY"
#define KAT_KID "VoOInATrkV98YmQXpnfptdw_Rt8vQ0HemVJqzsIOnu8"

static struct world {
    char dir[64];
    char a[128], b[128], c[128];
    struct jwt_keyring *ring;  /* [A] */
    struct jwt_keyring *ring2; /* [B, A] */
    struct jwt_keyring *ringb; /* [B] */
    EVP_PKEY *key_a, *key_c;
    char kid_a[64], kid_b[64];
} w;

static void path_in(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", w.dir, name);
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *fp = fopen(path, "r");
    EVP_PKEY *pkey;

    if (fp == NULL)
        return NULL;
    pkey = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
    fclose(fp);
    return pkey;
}

static struct jwt_keyring *load1(const char *p1, const char *p2)
{
    char *paths[2] = {(char *)p1, (char *)p2};
    char err[256] = "";
    struct jwt_keyring *kr = jwt_keyring_load(paths, p2 != NULL ? 2 : 1, err, sizeof(err));

    if (kr == NULL)
        print_error("load: %s\n", err);
    return kr;
}

static int group_setup(void **state)
{
    char err[256];

    strcpy(w.dir, "/tmp/test_jwt.XXXXXX");
    if (mkdtemp(w.dir) == NULL)
        return -1;
    path_in(w.a, sizeof(w.a), "a.pem");
    path_in(w.b, sizeof(w.b), "b.pem");
    path_in(w.c, sizeof(w.c), "c.pem");
    if (jwt_key_generate(w.a, err, sizeof(err)) != 0 ||
        jwt_key_generate(w.b, err, sizeof(err)) != 0 ||
        jwt_key_generate(w.c, err, sizeof(err)) != 0) {
        print_error("generate: %s\n", err);
        return -1;
    }
    w.ring = load1(w.a, NULL);
    w.ring2 = load1(w.b, w.a);
    w.ringb = load1(w.b, NULL);
    w.key_a = read_key(w.a);
    w.key_c = read_key(w.c);
    if (w.ring == NULL || w.ring2 == NULL || w.ringb == NULL || w.key_a == NULL || w.key_c == NULL)
        return -1;
    snprintf(w.kid_a, sizeof(w.kid_a), "%s", jwt_keyring_kid(w.ring, 0));
    snprintf(w.kid_b, sizeof(w.kid_b), "%s", jwt_keyring_kid(w.ringb, 0));
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[128];

    jwt_keyring_free(w.ring);
    jwt_keyring_free(w.ring2);
    jwt_keyring_free(w.ringb);
    EVP_PKEY_free(w.key_a);
    EVP_PKEY_free(w.key_c);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", w.dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- helpers: a second, independent way to build tokens ---- */

static char *b64s(const char *text)
{
    char *s = jwt_b64url_encode((const unsigned char *)text, strlen(text));

    assert_non_null(s);
    return s;
}

static char *join3(const char *a, const char *b, const char *c)
{
    char *s;

    assert_true(asprintf(&s, "%s.%s.%s", a, b, c) > 0);
    return s;
}

enum sig_form { SIG_RAW, SIG_DER, SIG_EMPTY, SIG_63, SIG_65, SIG_ZERO, SIG_HIGH_S };

/* The P-256 group order n, from OpenSSL's named curve (independent of jwt.c's copy). */
static BIGNUM *p256_n(void)
{
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    BIGNUM *n;

    assert_non_null(g);
    n = BN_dup(EC_GROUP_get0_order(g));
    assert_non_null(n);
    EC_GROUP_free(g);
    return n;
}

/* 1 when the 32-byte big-endian s is above n/2. */
static int s_is_high(const unsigned char s32[32])
{
    BIGNUM *n = p256_n(), *s = BN_bin2bn(s32, 32, NULL), *twice = BN_new();
    int high;

    assert_non_null(s);
    assert_non_null(twice);
    assert_int_equal(BN_lshift1(twice, s), 1);
    high = BN_cmp(twice, n) > 0;
    BN_free(twice);
    BN_free(s);
    BN_free(n);
    return high;
}

/* s32 = n - s32 in place (the other signature that verifies: ECDSA malleability). */
static void s_flip(unsigned char s32[32])
{
    BIGNUM *n = p256_n(), *s = BN_bin2bn(s32, 32, NULL);

    assert_non_null(s);
    assert_int_equal(BN_sub(s, n, s), 1);
    assert_int_equal(BN_bn2binpad(s, s32, 32), 32);
    BN_free(s);
    BN_free(n);
}

/* ES256 over "b64(hdr).b64(payload)" with `key`; the signature in the given form. */
static char *forge(const char *hdr, const char *payload, EVP_PKEY *key, enum sig_form form)
{
    char *h = b64s(hdr), *p = b64s(payload), *tbs, *s, *tok;
    unsigned char der[128], raw[65] = {0};
    const unsigned char *dp = der;
    size_t derlen = sizeof(der), rawlen = 64;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    ECDSA_SIG *sig;
    const BIGNUM *r, *sv;

    assert_true(asprintf(&tbs, "%s.%s", h, p) > 0);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(ctx, der, &derlen, (unsigned char *)tbs, strlen(tbs)), 1);
    EVP_MD_CTX_free(ctx);
    sig = d2i_ECDSA_SIG(NULL, &dp, (long)derlen);
    assert_non_null(sig);
    ECDSA_SIG_get0(sig, &r, &sv);
    assert_int_equal(BN_bn2binpad(r, raw, 32), 32);
    assert_int_equal(BN_bn2binpad(sv, raw + 32, 32), 32);
    ECDSA_SIG_free(sig);
    /* Valid tokens are low-S; SIG_HIGH_S is the same signature with s replaced by n - s. */
    if (s_is_high(raw + 32) != (form == SIG_HIGH_S))
        s_flip(raw + 32);
    if (form == SIG_DER)
        s = jwt_b64url_encode(der, derlen);
    else {
        rawlen = form == SIG_EMPTY ? 0 : form == SIG_63 ? 63 : form == SIG_65 ? 65 : 64;
        if (form == SIG_ZERO)
            memset(raw, 0, sizeof(raw));
        s = jwt_b64url_encode(raw, rawlen);
    }
    assert_non_null(s);
    tok = join3(h, p, s);
    free(s);
    free(tbs);
    free(p);
    free(h);
    return tok;
}

static char *header(const char *alg, const char *typ, const char *kid)
{
    json_t *h = json_object();
    char *text;

    if (alg != NULL)
        json_object_set_new(h, "alg", json_string(alg));
    if (typ != NULL)
        json_object_set_new(h, "typ", json_string(typ));
    if (kid != NULL)
        json_object_set_new(h, "kid", json_string(kid));
    text = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    assert_non_null(text);
    return text;
}

static json_t *std_claims(void)
{
    json_t *c = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:s}", "iss", ISS, "sub", "alice",
                          "aud", AUD, "exp", (json_int_t)(NOW + 300), "iat", (json_int_t)NOW, "nbf",
                          (json_int_t)NOW, "jti", "jti-1", "sid", "fam-1");

    assert_non_null(c);
    return c;
}

/* Properly signed by A with the standard header; `claims` is consumed. */
static char *forge_claims(json_t *claims)
{
    char *hdr = header("ES256", "at+jwt", w.kid_a), *text = json_dumps(claims, JSON_COMPACT);
    char *tok;

    assert_non_null(text);
    tok = forge(hdr, text, w.key_a, SIG_RAW);
    free(text);
    free(hdr);
    json_decref(claims);
    return tok;
}

static char *forge_hdr(const char *hdr_text)
{
    json_t *c = std_claims();
    char *text = json_dumps(c, JSON_COMPACT), *tok = forge(hdr_text, text, w.key_a, SIG_RAW);

    free(text);
    json_decref(c);
    return tok;
}

static enum jwt_error verify_at(const char *tok, int64_t now, int leeway)
{
    json_t *claims = (json_t *)&claims; /* must be reset to NULL on failure */
    enum jwt_error e = jwt_verify(w.ring, tok, ISS, AUD, now, leeway, &claims);

    if (e == JWT_OK)
        assert_true(json_is_object(claims));
    else
        assert_null(claims);
    json_decref(claims);
    return e;
}

static enum jwt_error verify(const char *tok)
{
    return verify_at(tok, NOW, 0);
}

/* Each helper frees the token it checks. */
static void expect(char *tok, enum jwt_error want)
{
    enum jwt_error got = verify(tok);

    if (got != want)
        fail_msg("token %s: got %s, want %s", tok, jwt_error_string(got), jwt_error_string(want));
    free(tok);
}

static void expect_claims(json_t *claims, enum jwt_error want)
{
    expect(forge_claims(claims), want);
}

static void expect_hdr(const char *hdr_text, enum jwt_error want)
{
    expect(forge_hdr(hdr_text), want);
}

static char *sign_std(const struct jwt_keyring *kr, int64_t iat, int ttl)
{
    struct jwt_access a = {
        .iss = ISS, .aud = AUD, .sub = "alice", .sid = "fam-1", .iat = iat, .ttl = ttl};
    char *tok = jwt_sign(kr, &a);

    assert_non_null(tok);
    return tok;
}

/* Decodes part `idx` (0..2) of a compact token. */
static unsigned char *token_part(const char *tok, int idx, size_t *len_r)
{
    const char *p = tok, *end;
    unsigned char *out;

    for (int i = 0; i < idx; i++)
        p = strchr(p, '.') + 1;
    end = strchr(p, '.');
    if (end == NULL)
        end = p + strlen(p);
    assert_int_equal(jwt_b64url_decode(p, (size_t)(end - p), &out, len_r), 0);
    return out;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "r");
    char *buf = calloc(1, 4096);

    assert_non_null(fp);
    assert_non_null(buf);
    buf[fread(buf, 1, 4095, fp)] = '\0';
    fclose(fp);
    return buf;
}

/* ---- base64url ---- */

static void roundtrip(const unsigned char *data, size_t len)
{
    char *enc = jwt_b64url_encode(data, len);
    unsigned char *dec;
    size_t dlen;

    assert_non_null(enc);
    assert_int_equal(strlen(enc), (len * 4 + 2) / 3); /* unpadded length */
    assert_null(strpbrk(enc, "=+/"));
    assert_int_equal(jwt_b64url_decode(enc, strlen(enc), &dec, &dlen), 0);
    assert_int_equal(dlen, len);
    if (len > 0)
        assert_memory_equal(dec, data, len);
    free(dec);
    free(enc);
}

static void test_b64url_vectors(void **state)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    static const unsigned char url[] = {0xfb, 0xff, 0xbf};

    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        char *enc = jwt_b64url_encode((const unsigned char *)plain[i], strlen(plain[i]));

        assert_string_equal(enc, coded[i]);
        free(enc);
    }
    char *enc = jwt_b64url_encode(url, sizeof(url));
    assert_string_equal(enc, "-_-_"); /* "+/+/" in standard base64 */
    free(enc);
}

static void test_b64url_roundtrip(void **state)
{
    unsigned char all[256], rnd[1000];

    for (size_t len = 0; len <= 5; len++)
        roundtrip((const unsigned char *)"\x00\xff\xfe\x01\x80", len);
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    for (size_t len = 0; len <= sizeof(all); len++)
        roundtrip(all, len);
    assert_int_equal(RAND_bytes(rnd, sizeof(rnd)), 1);
    roundtrip(rnd, sizeof(rnd));
}

static void test_b64url_rejects(void **state)
{
    static const char *const bad[] = {
        "Zg==",      "Zg=",  "Zm9v=", "ab+c",
        "ab/c",      "+/8",  "Z",     "Zm9vY",
        "Zm9vYmFy1", "Zh",   "Zm9",   "Zm 9v",
        "Zm9v\n",    "Zm.v", "Zm9v!", "\xc3\xa9\x61\x62", /* "éab" */
    };
    unsigned char *out = (unsigned char *)"x";
    size_t len = 99;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        /* "Zh" and "Zm9" are not canonical: their unused trailing bits are set. */
        if (strcmp(bad[i], "Zm9") == 0) {
            assert_int_equal(jwt_b64url_decode("Zm8", 3, &out, &len), 0); /* control */
            free(out);
        }
        if (jwt_b64url_decode(bad[i], strlen(bad[i]), &out, &len) == 0)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_null(out);
        assert_int_equal(len, 0);
    }
    assert_int_equal(jwt_b64url_decode("Zm\0v", 4, &out, &len), -1);  /* NUL inside */
    assert_int_equal(jwt_b64url_decode("Zm9vYg", 5, &out, &len), -1); /* length 5 */
}

/* ---- keys, kid, JWKS ---- */

static void test_kid_known_answer(void **state)
{
    char path[128];
    struct jwt_keyring *kr;
    json_t *jwks, *k;

    path_in(path, sizeof(path), "kat.pem");
    write_file(path, kat_pem);
    kr = load1(path, NULL);
    assert_non_null(kr);
    assert_string_equal(jwt_keyring_kid(kr, 0), KAT_KID);
    jwks = jwt_jwks(kr);
    k = json_array_get(json_object_get(jwks, "keys"), 0);
    assert_string_equal(json_string_value(json_object_get(k, "x")), KAT_X);
    assert_string_equal(json_string_value(json_object_get(k, "y")), KAT_Y);
    json_decref(jwks);
    jwt_keyring_free(kr);
    unlink(path);
}

/* kid recomputed from the JWKS members (jansson, sorted keys) and x/y from the PEM point. */
static void test_kid_thumbprint_independent(void **state)
{
    json_t *jwks = jwt_jwks(w.ring), *k, *canon;
    unsigned char pt[65], md[32], *x, *y;
    size_t ptlen = 0, mdlen = 0, xl, yl;
    char *text, *kid;

    assert_int_equal(strlen(w.kid_a), 43);
    k = json_array_get(json_object_get(jwks, "keys"), 0);
    canon = json_pack("{s:s, s:O, s:O, s:s}", "kty", "EC", "y", json_object_get(k, "y"), "x",
                      json_object_get(k, "x"), "crv", "P-256");
    text = json_dumps(canon, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(text);
    assert_int_equal(strncmp(text, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"", 31), 0);
    assert_int_equal(EVP_Q_digest(NULL, "SHA256", NULL, text, strlen(text), md, &mdlen), 1);
    assert_int_equal(mdlen, 32);
    kid = jwt_b64url_encode(md, mdlen);
    assert_string_equal(kid, w.kid_a);
    assert_string_equal(json_string_value(json_object_get(k, "kid")), w.kid_a);

    assert_int_equal(
        EVP_PKEY_get_octet_string_param(w.key_a, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt), &ptlen),
        1);
    assert_int_equal(ptlen, 65);
    assert_int_equal(pt[0], 0x04);
    x = token_part(json_string_value(json_object_get(k, "x")), 0, &xl);
    y = token_part(json_string_value(json_object_get(k, "y")), 0, &yl);
    assert_int_equal(xl, 32);
    assert_int_equal(yl, 32);
    assert_memory_equal(x, pt + 1, 32);
    assert_memory_equal(y, pt + 33, 32);
    free(x);
    free(y);
    free(kid);
    free(text);
    json_decref(canon);
    json_decref(jwks);
}

static void test_jwks(void **state)
{
    static const char *const members[] = {"kty", "crv", "x", "y", "kid", "use", "alg"};
    json_t *jwks = jwt_jwks(w.ring2), *keys = json_object_get(jwks, "keys"), *k;
    size_t i;

    assert_true(json_is_object(jwks));
    assert_int_equal(json_object_size(jwks), 1);
    assert_int_equal(json_array_size(keys), 2);
    json_array_foreach(keys, i, k)
    {
        assert_int_equal(json_object_size(k), 7);
        for (size_t m = 0; m < sizeof(members) / sizeof(members[0]); m++)
            assert_true(json_is_string(json_object_get(k, members[m])));
        assert_null(json_object_get(k, "d"));
        assert_string_equal(json_string_value(json_object_get(k, "kty")), "EC");
        assert_string_equal(json_string_value(json_object_get(k, "crv")), "P-256");
        assert_string_equal(json_string_value(json_object_get(k, "use")), "sig");
        assert_string_equal(json_string_value(json_object_get(k, "alg")), "ES256");
        assert_int_equal(strlen(json_string_value(json_object_get(k, "x"))), 43);
        assert_int_equal(strlen(json_string_value(json_object_get(k, "y"))), 43);
        assert_string_equal(json_string_value(json_object_get(k, "kid")),
                            jwt_keyring_kid(w.ring2, (int)i));
    }
    assert_string_equal(jwt_keyring_kid(w.ring2, 0), w.kid_b);
    assert_string_equal(jwt_keyring_kid(w.ring2, 1), w.kid_a);
    assert_string_not_equal(w.kid_a, w.kid_b);
    json_decref(jwks);
}

static void test_keyring_accessors(void **state)
{
    assert_int_equal(jwt_keyring_size(w.ring), 1);
    assert_int_equal(jwt_keyring_size(w.ring2), 2);
    assert_int_equal(jwt_keyring_size(NULL), 0);
    assert_null(jwt_keyring_kid(w.ring2, 2));
    assert_null(jwt_keyring_kid(w.ring2, -1));
    assert_null(jwt_keyring_kid(NULL, 0));
    jwt_keyring_free(NULL);
}

static void test_generate(void **state)
{
    char path[128], link[128], target[128], err[256] = "", *before, *after;
    struct stat st;
    mode_t old;

    path_in(path, sizeof(path), "gen.pem");
    old = umask(0);
    assert_int_equal(jwt_key_generate(path, err, sizeof(err)), 0);
    umask(0277); /* even a umask that strips the owner's write bit */
    path_in(target, sizeof(target), "gen2.pem");
    assert_int_equal(jwt_key_generate(target, err, sizeof(err)), 0);
    umask(old);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(stat(target, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    unlink(target);

    before = read_text(path);
    assert_int_equal(strncmp(before, "-----BEGIN PRIVATE KEY-----\n", 28), 0); /* PKCS#8 */
    assert_int_equal(jwt_key_generate(path, err, sizeof(err)), -1);
    assert_contains(err, path);
    after = read_text(path);
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* a dangling symlink is not followed */
    path_in(link, sizeof(link), "link.pem");
    path_in(target, sizeof(target), "target.pem");
    assert_int_equal(symlink(target, link), 0);
    assert_int_equal(jwt_key_generate(link, err, sizeof(err)), -1);
    assert_int_equal(access(target, F_OK), -1);
    unlink(link);

    assert_int_equal(jwt_key_generate("/nonexistent-dir/k.pem", err, sizeof(err)), -1);
    assert_contains(err, "/nonexistent-dir/k.pem");
    assert_int_equal(jwt_key_generate("", err, sizeof(err)), -1);
    unlink(path);
}

static void write_key(const char *path, EVP_PKEY *pkey, const EVP_CIPHER *enc)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(pkey);
    assert_non_null(fp);
    assert_int_equal(PEM_write_PrivateKey(fp, pkey, enc, enc != NULL ? (unsigned char *)"pw" : NULL,
                                          enc != NULL ? 2 : 0, NULL, NULL),
                     1);
    fclose(fp);
    EVP_PKEY_free(pkey);
}

static void expect_load_error(const char *p1, const char *p2, const char *needle)
{
    char *paths[2] = {(char *)p1, (char *)p2};
    char err[512] = "";

    assert_null(jwt_keyring_load(paths, p2 != NULL ? 2 : 1, err, sizeof(err)));
    assert_contains(err, needle);
}

static void test_load_errors(void **state)
{
    char rsa[128], p384[128], ed[128], garbage[128], empty[128], pub[128], enc[128], copy[128];
    char missing[128], text[128], err[256] = "", *pem;
    FILE *fp;

    path_in(rsa, sizeof(rsa), "rsa.pem");
    path_in(p384, sizeof(p384), "p384.pem");
    path_in(ed, sizeof(ed), "ed25519.pem");
    path_in(garbage, sizeof(garbage), "garbage.pem");
    path_in(empty, sizeof(empty), "empty.pem");
    path_in(pub, sizeof(pub), "pub.pem");
    path_in(enc, sizeof(enc), "enc.pem");
    path_in(copy, sizeof(copy), "copy-of-a.pem");
    path_in(missing, sizeof(missing), "missing.pem");
    write_key(rsa, EVP_RSA_gen(2048), NULL);
    write_key(p384, EVP_EC_gen("P-384"), NULL);
    write_key(ed, EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"), NULL);
    write_key(enc, EVP_EC_gen("P-256"), EVP_aes_256_cbc());
    write_file(garbage, "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n");
    write_file(empty, "");
    path_in(text, sizeof(text), "text.pem");
    write_file(text, "this is not a key\n");
    fp = fopen(pub, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PUBKEY(fp, w.key_a), 1);
    fclose(fp);
    pem = read_text(w.a);
    write_file(copy, pem);
    free(pem);

    expect_load_error(rsa, NULL, rsa);
    expect_load_error(rsa, NULL, "P-256");
    expect_load_error(p384, NULL, p384);
    expect_load_error(p384, NULL, "not an EC P-256");
    expect_load_error(ed, NULL, "not an EC P-256");
    expect_load_error(ed, NULL, ed);
    expect_load_error(garbage, NULL, garbage);
    expect_load_error(empty, NULL, empty);
    expect_load_error(text, NULL, text);
    expect_load_error(pub, NULL, pub);
    expect_load_error(enc, NULL, enc); /* no passphrase prompt: just an error */
    expect_load_error(missing, NULL, missing);
    expect_load_error(w.a, missing, missing); /* the first key loaded fine, then freed */
    expect_load_error(w.a, p384, p384);
    expect_load_error(w.a, w.a, "duplicate");
    expect_load_error(w.a, copy, copy);
    expect_load_error(w.a, copy, w.kid_a);

    char *none[1] = {w.a};
    assert_null(jwt_keyring_load(none, 0, err, sizeof(err)));
    assert_true(strlen(err) > 0);
    assert_null(jwt_keyring_load(NULL, 1, err, sizeof(err)));
    char *hole[2] = {w.a, NULL};
    assert_null(jwt_keyring_load(hole, 2, err, sizeof(err)));
    assert_contains(err, "missing");
    assert_null(jwt_keyring_load(none + 0, -1, NULL, 0));
    char *bad[1] = {rsa};
    assert_null(jwt_keyring_load(bad, 1, NULL, 0)); /* no error buffer: still safe */
}

/* ---- signing ---- */

static void test_sign_verify(void **state)
{
    struct jwt_access a = {
        .iss = ISS, .aud = AUD, .sub = "alice", .sid = "fam-1", .iat = NOW, .ttl = 300};
    char *tok = jwt_sign(w.ring, &a), *tok2 = jwt_sign(w.ring, &a), *hdr_want;
    unsigned char *hdr, *sig;
    size_t hlen, slen;
    json_t *c = NULL;
    const char *jti;

    assert_non_null(tok);
    assert_string_not_equal(tok, tok2);
    assert_int_equal(jwt_verify(w.ring, tok, ISS, AUD, NOW, 0, &c), JWT_OK);
    assert_string_equal(json_string_value(json_object_get(c, "iss")), ISS);
    assert_string_equal(json_string_value(json_object_get(c, "sub")), "alice");
    assert_string_equal(json_string_value(json_object_get(c, "aud")), AUD);
    assert_string_equal(json_string_value(json_object_get(c, "sid")), "fam-1");
    assert_int_equal(json_integer_value(json_object_get(c, "exp")), NOW + 300);
    assert_int_equal(json_integer_value(json_object_get(c, "iat")), NOW);
    assert_int_equal(json_integer_value(json_object_get(c, "nbf")), NOW);
    jti = json_string_value(json_object_get(c, "jti"));
    assert_non_null(jti);
    assert_int_equal(strlen(jti), 32);
    assert_int_equal(strspn(jti, "0123456789abcdef"), 32);
    json_decref(c);

    assert_true(
        asprintf(&hdr_want, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}", w.kid_a) > 0);
    hdr = token_part(tok, 0, &hlen);
    assert_int_equal(hlen, strlen(hdr_want));
    assert_memory_equal(hdr, hdr_want, hlen);
    sig = token_part(tok, 2, &slen);
    assert_int_equal(slen, 64);
    assert_int_equal(jwt_verify(w.ring, tok2, ISS, AUD, NOW, 0, NULL), JWT_OK);
    free(sig);
    free(hdr);
    free(hdr_want);
    free(tok2);
    free(tok);

    a.sid = NULL; /* every access token names its session */
    assert_null(jwt_sign(w.ring, &a));
    a.sid = "fam-2";
    a.jti = "fixed-jti";
    tok = jwt_sign(w.ring, &a);
    assert_int_equal(jwt_verify(w.ring, tok, ISS, AUD, NOW, 0, &c), JWT_OK);
    assert_string_equal(json_string_value(json_object_get(c, "jti")), "fixed-jti");
    json_decref(c);
    free(tok);
}

static void test_sign_rejects(void **state)
{
    struct jwt_access a = {
        .iss = ISS, .aud = AUD, .sub = "alice", .sid = "fam-1", .iat = NOW, .ttl = 300};
    struct jwt_access b;
    char *big = malloc(9000), *tok;

    assert_null(jwt_sign(NULL, &a));
    assert_null(jwt_sign(w.ring, NULL));
    b = a, b.iss = NULL;
    assert_null(jwt_sign(w.ring, &b));
    b = a, b.aud = NULL;
    assert_null(jwt_sign(w.ring, &b));
    b = a, b.sub = NULL;
    assert_null(jwt_sign(w.ring, &b));
    b = a, b.sid = NULL;
    assert_null(jwt_sign(w.ring, &b));
    b = a, b.ttl = 0;
    assert_null(jwt_sign(w.ring, &b));
    b = a, b.ttl = -5;
    assert_null(jwt_sign(w.ring, &b));
    b = a, b.iat = INT64_MAX - 10;
    assert_null(jwt_sign(w.ring, &b));
    b = a, b.sub = "\xff\xfe not utf-8";
    assert_null(jwt_sign(w.ring, &b));
    memset(big, 'x', 8999);
    big[8999] = '\0';
    b = a, b.sub = big;
    assert_null(jwt_sign(w.ring, &b)); /* would exceed what jwt_verify accepts */
    big[5000] = '\0';                  /* ~6.9 KiB token: still fine */
    tok = jwt_sign(w.ring, &b);
    assert_non_null(tok);
    assert_true(strlen(tok) > 6000 && strlen(tok) <= 8192);
    assert_int_equal(verify(tok), JWT_OK);
    free(tok);
    free(big);
}

/* ---- verification: algorithm, type, kid ---- */

static void test_alg_none(void **state)
{
    json_t *c = std_claims();
    char *payload = json_dumps(c, JSON_COMPACT), *hdr = header("none", "at+jwt", w.kid_a);
    char *h = b64s(hdr), *p = b64s(payload), *tok;

    expect(join3(h, p, ""), JWT_BAD_ALG); /* "header.payload." */
    free(hdr);
    free(h);
    hdr = header("none", NULL, NULL);
    h = b64s(hdr);
    expect(join3(h, p, ""), JWT_BAD_ALG);
    assert_true(asprintf(&tok, "%s.%s", h, p) > 0); /* no second dot at all */
    expect(tok, JWT_MALFORMED);
    free(hdr);
    hdr = header("ES256", "at+jwt", w.kid_a); /* ES256 claimed but unsigned */
    free(h);
    h = b64s(hdr);
    expect(join3(h, p, ""), JWT_BAD_SIGNATURE);
    free(h);
    free(p);
    free(hdr);
    free(payload);
    json_decref(c);
}

/* HS256 with the public key (PEM or JWK) as the HMAC secret: the classic confusion attack. */
static char *hs256_token(const char *alg, const void *secret, size_t secretlen)
{
    json_t *c = std_claims();
    char *payload = json_dumps(c, JSON_COMPACT), *hdr = header(alg, "at+jwt", w.kid_a);
    char *h = b64s(hdr), *p = b64s(payload), *tbs, *s, *tok;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;

    assert_true(asprintf(&tbs, "%s.%s", h, p) > 0);
    assert_non_null(HMAC(EVP_sha256(), secret, (int)secretlen, (unsigned char *)tbs, strlen(tbs),
                         mac, &maclen));
    assert_int_equal(maclen, 32);
    s = jwt_b64url_encode(mac, maclen);
    tok = join3(h, p, s);
    free(s);
    free(tbs);
    free(p);
    free(h);
    free(hdr);
    free(payload);
    json_decref(c);
    return tok;
}

static void test_alg_confusion(void **state)
{
    BIO *bio = BIO_new(BIO_s_mem());
    json_t *jwks = jwt_jwks(w.ring);
    char *jwk = json_dumps(json_array_get(json_object_get(jwks, "keys"), 0), JSON_COMPACT);
    char *pem;
    long pemlen;

    assert_int_equal(PEM_write_bio_PUBKEY(bio, w.key_a), 1);
    pemlen = BIO_get_mem_data(bio, &pem);
    assert_true(pemlen > 0);
    expect(hs256_token("HS256", pem, (size_t)pemlen), JWT_BAD_ALG);
    expect(hs256_token("HS256", jwk, strlen(jwk)), JWT_BAD_ALG);
    expect(hs256_token("HS256", w.kid_a, strlen(w.kid_a)), JWT_BAD_ALG);
    expect(hs256_token("HS512", pem, (size_t)pemlen), JWT_BAD_ALG);
    /* the same MAC under an honest-looking ES256 header is just a bad signature */
    expect(hs256_token("ES256", pem, (size_t)pemlen), JWT_BAD_SIGNATURE);
    free(jwk);
    json_decref(jwks);
    BIO_free(bio);
}

static void test_alg_variants(void **state)
{
    static const char *const algs[] = {"RS256", "ES256 ", " ES256", "es256", "ES384", "ES256K",
                                       "PS256", "EdDSA",  "",       "none",  "None"};
    char *h, tmp[128];

    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        h = header(algs[i], "at+jwt", w.kid_a);
        expect_hdr(h, JWT_BAD_ALG);
        free(h);
    }
    h = header(NULL, "at+jwt", w.kid_a);
    expect_hdr(h, JWT_BAD_ALG);
    free(h);
    snprintf(tmp, sizeof(tmp), "{\"alg\":[\"ES256\"],\"typ\":\"at+jwt\",\"kid\":\"%s\"}", w.kid_a);
    expect_hdr(tmp, JWT_BAD_ALG);
    snprintf(tmp, sizeof(tmp), "{\"alg\":256,\"typ\":\"at+jwt\",\"kid\":\"%s\"}", w.kid_a);
    expect_hdr(tmp, JWT_BAD_ALG);
    h = header("ES256", "at+jwt", w.kid_a);
    expect_hdr(h, JWT_OK); /* control */
    free(h);
}

static void test_typ(void **state)
{
    static const char *const bad[] = {"JWT", "jwt", "at+jwt ", "application/jwt", "", "at+JWS"};
    static const char *const good[] = {"at+jwt", "AT+JWT", "application/at+jwt",
                                       "Application/At+Jwt"};
    char *h, tmp[128];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h = header("ES256", bad[i], w.kid_a);
        expect_hdr(h, JWT_BAD_TYPE);
        free(h);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        h = header("ES256", good[i], w.kid_a);
        expect_hdr(h, JWT_OK);
        free(h);
    }
    h = header("ES256", NULL, w.kid_a);
    expect_hdr(h, JWT_BAD_TYPE);
    free(h);
    snprintf(tmp, sizeof(tmp), "{\"alg\":\"ES256\",\"typ\":1,\"kid\":\"%s\"}", w.kid_a);
    expect_hdr(tmp, JWT_BAD_TYPE);
}

static void test_crit(void **state)
{
    char tmp[256];

    snprintf(tmp, sizeof(tmp),
             "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\",\"crit\":[\"exp\"]}", w.kid_a);
    expect_hdr(tmp, JWT_MALFORMED);
    snprintf(
        tmp, sizeof(tmp),
        "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\",\"b64\":false,\"crit\":[\"b64\"]}",
        w.kid_a);
    expect_hdr(tmp, JWT_MALFORMED);
}

static void test_kid(void **state)
{
    char *h, tmp[128];

    h = header("ES256", "at+jwt", NULL);
    expect_hdr(h, JWT_UNKNOWN_KID);
    free(h);
    h = header("ES256", "at+jwt", "no-such-kid");
    expect_hdr(h, JWT_UNKNOWN_KID);
    free(h);
    h = header("ES256", "at+jwt", "");
    expect_hdr(h, JWT_UNKNOWN_KID);
    free(h);
    h = header("ES256", "at+jwt", w.kid_b); /* a real kid, but not in this ring */
    expect_hdr(h, JWT_UNKNOWN_KID);
    free(h);
    snprintf(tmp, sizeof(tmp), "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":[\"%s\"]}", w.kid_a);
    expect_hdr(tmp, JWT_UNKNOWN_KID);
    snprintf(tmp, sizeof(tmp), "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\\u0000\"}",
             w.kid_a);
    expect_hdr(tmp, JWT_MALFORMED); /* jansson refuses NUL inside strings */
}

/* ---- verification: signature ---- */

static void test_foreign_key(void **state)
{
    json_t *c = std_claims();
    char *payload = json_dumps(c, JSON_COMPACT), *hdr = header("ES256", "at+jwt", w.kid_a);

    expect(forge(hdr, payload, w.key_c, SIG_RAW), JWT_BAD_SIGNATURE);
    expect(forge(hdr, payload, w.key_a, SIG_RAW), JWT_OK); /* control */
    json_decref(c);
    free(payload);

    /* a bad signature is reported before any claim problem */
    c = std_claims();
    json_object_set_new(c, "exp", json_integer(NOW - 1000));
    json_object_set_new(c, "iss", json_string("https://evil.example"));
    json_object_del(c, "sub");
    payload = json_dumps(c, JSON_COMPACT);
    expect(forge(hdr, payload, w.key_c, SIG_RAW), JWT_BAD_SIGNATURE);
    expect(forge(hdr, "[1,2,3]", w.key_c, SIG_RAW), JWT_BAD_SIGNATURE);
    expect(forge(hdr, "{\"sub\":\"a\",\"sub\":\"b\"}", w.key_c, SIG_RAW), JWT_BAD_SIGNATURE);
    json_decref(c);
    free(payload);
    free(hdr);
}

static void test_tampered_payload(void **state)
{
    char *tok = sign_std(w.ring, NOW, 300), *dot1 = strchr(tok, '.'), *dot2 = strchr(dot1 + 1, '.');
    unsigned char *raw;
    size_t len;
    json_t *c;
    char *text, *p64, *h64, *forged;

    raw = token_part(tok, 1, &len);
    c = json_loadb((const char *)raw, len, 0, NULL);
    assert_non_null(c);
    json_object_set_new(c, "sub", json_string("admin"));
    text = json_dumps(c, JSON_COMPACT);
    p64 = b64s(text);
    h64 = strndup(tok, (size_t)(dot1 - tok));
    forged = join3(h64, p64, dot2 + 1);
    expect(forged, JWT_BAD_SIGNATURE);

    /* same claims, only a later exp */
    json_object_set_new(c, "sub", json_string("alice"));
    json_object_set_new(c, "exp", json_integer(NOW + 999999));
    free(text);
    free(p64);
    text = json_dumps(c, JSON_COMPACT);
    p64 = b64s(text);
    expect(join3(h64, p64, dot2 + 1), JWT_BAD_SIGNATURE);
    assert_int_equal(verify(tok), JWT_OK); /* the original still verifies */
    free(text);
    free(p64);
    free(h64);
    json_decref(c);
    free(raw);
    free(tok);
}

static void test_tampered_signature(void **state)
{
    char *tok = sign_std(w.ring, NOW, 300), *dot2 = strrchr(tok, '.'), *s64, *forged;
    unsigned char *sig, tmp[32];
    size_t len;

    sig = token_part(tok, 2, &len);
    assert_int_equal(len, 64);
    for (size_t bit = 0; bit < 512; bit += 37) {
        sig[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        s64 = jwt_b64url_encode(sig, 64);
        assert_true(asprintf(&forged, "%.*s.%s", (int)(dot2 - tok), tok, s64) > 0);
        expect(forged, JWT_BAD_SIGNATURE);
        free(s64);
        sig[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    }
    memcpy(tmp, sig, 32); /* s || r */
    memmove(sig, sig + 32, 32);
    memcpy(sig + 32, tmp, 32);
    s64 = jwt_b64url_encode(sig, 64);
    assert_true(asprintf(&forged, "%.*s.%s", (int)(dot2 - tok), tok, s64) > 0);
    expect(forged, JWT_BAD_SIGNATURE);
    free(s64);
    /* the last character of the signature carries 4 unused bits: setting one is malformed */
    forged = strdup(tok);
    forged[strlen(forged) - 1] = 'B';
    expect(forged, JWT_MALFORMED);
    free(sig);
    free(tok);
}

/* ECDSA malleability: (r, n - s) verifies mathematically but is refused; jwt_sign is low-S. */
static void test_low_s(void **state)
{
    json_t *c = std_claims();
    char *payload = json_dumps(c, JSON_COMPACT), *hdr = header("ES256", "at+jwt", w.kid_a);
    int high_seen = 0;

    expect(forge(hdr, payload, w.key_a, SIG_HIGH_S), JWT_BAD_SIGNATURE);
    expect(forge(hdr, payload, w.key_a, SIG_RAW), JWT_OK);
    for (int i = 0; i < 64; i++) { /* about half of raw ECDSA signatures are high-S */
        char *tok = sign_std(w.ring, NOW, 300), *dot2 = strrchr(tok, '.'), *s64, *twin;
        size_t len;
        unsigned char *sig = token_part(tok, 2, &len);

        assert_int_equal(len, 64);
        assert_false(s_is_high(sig + 32));
        assert_int_equal(verify(tok), JWT_OK);
        s_flip(sig + 32); /* the malleated twin of a token jwt_sign made */
        high_seen += s_is_high(sig + 32);
        s64 = jwt_b64url_encode(sig, 64);
        assert_true(asprintf(&twin, "%.*s.%s", (int)(dot2 - tok), tok, s64) > 0);
        expect(twin, JWT_BAD_SIGNATURE);
        free(s64);
        free(sig);
        free(tok);
    }
    assert_int_equal(high_seen, 64);
    json_decref(c);
    free(payload);
    free(hdr);
}

static void test_signature_forms(void **state)
{
    json_t *c = std_claims();
    char *payload = json_dumps(c, JSON_COMPACT), *hdr = header("ES256", "at+jwt", w.kid_a);
    char *tok;

    expect(forge(hdr, payload, w.key_a, SIG_63), JWT_BAD_SIGNATURE);
    expect(forge(hdr, payload, w.key_a, SIG_65), JWT_BAD_SIGNATURE);
    expect(forge(hdr, payload, w.key_a, SIG_DER), JWT_BAD_SIGNATURE);
    expect(forge(hdr, payload, w.key_a, SIG_EMPTY), JWT_BAD_SIGNATURE);
    expect(forge(hdr, payload, w.key_a, SIG_ZERO), JWT_BAD_SIGNATURE); /* CVE-2022-21449 */
    tok = forge(hdr, payload, w.key_a, SIG_RAW);
    tok = realloc(tok, strlen(tok) + 3);
    strcat(tok, "=="); /* padded: not base64url as JWS uses it */
    expect(tok, JWT_MALFORMED);
    json_decref(c);
    free(payload);
    free(hdr);
}

/* ---- verification: JSON ---- */

static void test_duplicates(void **state)
{
    char hdr[256], payload[512];

    snprintf(payload, sizeof(payload),
             "{\"iss\":\"%s\",\"sub\":\"alice\",\"sub\":\"admin\",\"aud\":\"%s\",\"exp\":%lld,"
             "\"iat\":%lld,\"jti\":\"j\"}",
             ISS, AUD, (long long)NOW + 300, (long long)NOW);
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}", w.kid_a);
    expect(forge(hdr, payload, w.key_a, SIG_RAW), JWT_MALFORMED);

    snprintf(hdr, sizeof(hdr),
             "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\",\"kid\":\"%s\"}", w.kid_a,
             w.kid_a);
    expect_hdr(hdr, JWT_MALFORMED);
    snprintf(hdr, sizeof(hdr),
             "{\"alg\":\"none\",\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}", w.kid_a);
    expect_hdr(hdr, JWT_MALFORMED);
}

static void test_malformed(void **state)
{
    char *tok = sign_std(w.ring, NOW, 300), *t, big[8194];
    char hdr[128];

    assert_int_equal(verify(tok), JWT_OK);
    assert_true(asprintf(&t, "%s.", tok) > 0);
    expect(t, JWT_MALFORMED);
    assert_true(asprintf(&t, "%s.%s", tok, "AAAA") > 0);
    expect(t, JWT_MALFORMED);
    assert_true(asprintf(&t, ".%s", tok) > 0);
    expect(t, JWT_MALFORMED);
    expect(strdup(""), JWT_MALFORMED);
    expect(strdup("garbage"), JWT_MALFORMED);
    expect(strdup("a.b"), JWT_MALFORMED);
    expect(strdup(".."), JWT_MALFORMED);
    expect(strdup("a.b.c.d.e"), JWT_MALFORMED);
    expect(strdup("!!!.@@@.###"), JWT_MALFORMED);
    expect(strdup("bm90IGpzb24.e30.AAAA"), JWT_MALFORMED);          /* "not json" */
    expect(strdup("WzEsMiwzXQ.e30.AAAA"), JWT_MALFORMED);           /* [1,2,3] */
    expect(strdup("ImVzMjU2Ig.e30.AAAA"), JWT_MALFORMED);           /* "es256" */
    expect(strdup("eyJhbGciOiJFUzI1NiJ9eA.e30.AA"), JWT_MALFORMED); /* {...}x */
    assert_int_equal(jwt_verify(w.ring, NULL, ISS, AUD, NOW, 0, NULL), JWT_MALFORMED);
    assert_int_equal(jwt_verify(NULL, tok, ISS, AUD, NOW, 0, NULL), JWT_MALFORMED);

    /* oversize: 8193 bytes is refused before any decoding */
    memset(big, 'A', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    big[100] = big[200] = '.';
    assert_int_equal(verify(big), JWT_MALFORMED);

    /* a signed payload that is not an object */
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}", w.kid_a);
    expect(forge(hdr, "[1,2,3]", w.key_a, SIG_RAW), JWT_MALFORMED);
    expect(forge(hdr, "{\"sub\":", w.key_a, SIG_RAW), JWT_MALFORMED);
    free(tok);
}

static char *padded_token(size_t n)
{
    json_t *c = std_claims();
    char *pad = malloc(n + 1);

    assert_non_null(pad);
    memset(pad, 'p', n);
    pad[n] = '\0';
    json_object_set_new(c, "pad", json_string(pad));
    free(pad);
    return forge_claims(c);
}

/* A validly signed token a few bytes either side of the 8 KiB limit (a "pad" claim). */
static void test_size_limit(void **state)
{
    char *tok = padded_token(0);
    size_t base = strlen(tok), start = (8192 - base) * 3 / 4 - 8;
    int under = 0, over = 0;

    free(tok);
    for (size_t n = start; n < start + 16; n++) {
        size_t len;

        tok = padded_token(n);
        len = strlen(tok);
        if (len <= 8192 && len > 8186) {
            assert_int_equal(verify(tok), JWT_OK);
            under++;
        } else if (len > 8192 && len < 8199) {
            assert_int_equal(verify(tok), JWT_MALFORMED);
            over++;
        }
        free(tok);
    }
    assert_true(under > 0 && over > 0);
}

/* ---- verification: claims ---- */

static void test_expiry(void **state)
{
    char *tok = sign_std(w.ring, NOW - 330, 300); /* exp = NOW - 30 */
    json_t *c;

    assert_int_equal(verify_at(tok, NOW, 0), JWT_EXPIRED);
    assert_int_equal(verify_at(tok, NOW, 29), JWT_EXPIRED);
    assert_int_equal(verify_at(tok, NOW, 30), JWT_OK); /* now == exp + leeway */
    assert_int_equal(verify_at(tok, NOW, 60), JWT_OK);
    assert_int_equal(verify_at(tok, NOW - 30, 0), JWT_OK); /* now == exp */
    assert_int_equal(verify_at(tok, NOW - 29, 0), JWT_EXPIRED);
    assert_int_equal(verify_at(tok, NOW, -100), JWT_EXPIRED); /* negative leeway = 0 */
    free(tok);
    tok = sign_std(w.ring, NOW - 250, 300); /* exp = NOW + 50 */
    assert_int_equal(verify_at(tok, NOW, -100), JWT_OK);
    free(tok);

    c = std_claims(); /* no overflow at the edges */
    json_object_set_new(c, "exp", json_integer(INT64_MAX));
    tok = forge_claims(c);
    assert_int_equal(verify_at(tok, NOW, 60), JWT_OK);
    assert_int_equal(verify_at(tok, INT64_MAX, INT32_MAX), JWT_OK);
    assert_int_equal(jwt_verify(w.ring, tok, ISS, AUD, NOW, 60, &c), JWT_OK);
    assert_true(jwt_valid_until(c, 60) == INT64_MAX); /* exp + leeway saturates */
    assert_true(jwt_valid_until(c, INT32_MAX) == INT64_MAX);
    json_decref(c);
    free(tok);
    c = std_claims();
    json_object_set_new(c, "exp", json_integer(INT64_MIN));
    json_object_set_new(c, "iat", json_integer(INT64_MIN));
    json_object_set_new(c, "nbf", json_integer(INT64_MIN));
    tok = forge_claims(c);
    assert_int_equal(verify_at(tok, NOW, INT32_MAX), JWT_EXPIRED);
    assert_int_equal(verify_at(tok, INT64_MIN, INT32_MAX), JWT_OK);
    free(tok);
}

static void test_not_yet_valid(void **state)
{
    char *tok = sign_std(w.ring, NOW + 100, 300); /* iat = nbf = NOW + 100 */
    json_t *c;

    assert_int_equal(verify_at(tok, NOW, 0), JWT_NOT_YET_VALID);
    assert_int_equal(verify_at(tok, NOW, 99), JWT_NOT_YET_VALID);
    assert_int_equal(verify_at(tok, NOW, 100), JWT_OK);
    assert_int_equal(verify_at(tok, NOW + 100, 0), JWT_OK);
    free(tok);

    c = std_claims(); /* only nbf in the future */
    json_object_set_new(c, "nbf", json_integer(NOW + 100));
    expect_claims(c, JWT_NOT_YET_VALID);
    c = std_claims(); /* only iat in the future, no nbf */
    json_object_set_new(c, "iat", json_integer(NOW + 100));
    json_object_del(c, "nbf");
    tok = forge_claims(c);
    assert_int_equal(verify_at(tok, NOW, 0), JWT_NOT_YET_VALID);
    assert_int_equal(verify_at(tok, NOW, 100), JWT_OK);
    free(tok);
    c = std_claims();
    json_object_set_new(c, "sid", json_integer(7));
    expect_claims(c, JWT_MISSING_CLAIM);
    c = std_claims();
    json_object_set_new(c, "sid", json_string("fam-1"));
    expect_claims(c, JWT_OK);
    c = std_claims(); /* nbf is optional */
    json_object_del(c, "nbf");
    expect_claims(c, JWT_OK);
    c = std_claims();
    json_object_set_new(c, "nbf", json_string("0"));
    expect_claims(c, JWT_MALFORMED);
}

static void test_issuer_audience(void **state)
{
    json_t *c;
    char *tok;

    c = std_claims();
    json_object_set_new(c, "iss", json_string("https://evil.example"));
    expect_claims(c, JWT_BAD_ISSUER);
    c = std_claims();
    json_object_set_new(c, "iss", json_string(ISS "/"));
    expect_claims(c, JWT_BAD_ISSUER);
    c = std_claims();
    json_object_del(c, "iss");
    expect_claims(c, JWT_BAD_ISSUER);
    c = std_claims();
    json_object_set_new(c, "aud", json_string("other-api"));
    expect_claims(c, JWT_BAD_AUDIENCE);
    c = std_claims();
    json_object_del(c, "aud");
    expect_claims(c, JWT_BAD_AUDIENCE);
    c = std_claims();
    json_object_set_new(c, "aud", json_pack("[s, i, s]", "other", 5, AUD));
    expect_claims(c, JWT_OK);
    c = std_claims();
    json_object_set_new(c, "aud", json_pack("[s, s]", "other", "more"));
    expect_claims(c, JWT_BAD_AUDIENCE);
    c = std_claims();
    json_object_set_new(c, "aud", json_array());
    expect_claims(c, JWT_BAD_AUDIENCE);
    c = std_claims();
    json_object_set_new(c, "aud", json_integer(1));
    expect_claims(c, JWT_BAD_AUDIENCE);

    tok = sign_std(w.ring, NOW, 300);
    assert_int_equal(jwt_verify(w.ring, tok, "other", AUD, NOW, 0, NULL), JWT_BAD_ISSUER);
    assert_int_equal(jwt_verify(w.ring, tok, NULL, AUD, NOW, 0, NULL), JWT_BAD_ISSUER);
    assert_int_equal(jwt_verify(w.ring, tok, ISS, "other", NOW, 0, NULL), JWT_BAD_AUDIENCE);
    assert_int_equal(jwt_verify(w.ring, tok, ISS, NULL, NOW, 0, NULL), JWT_BAD_AUDIENCE);
    free(tok);
}

static void test_missing_claims(void **state)
{
    static const char *const required[] = {"exp", "iat", "sub", "jti", "sid"};
    json_t *c;

    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        c = std_claims();
        json_object_del(c, required[i]);
        expect_claims(c, JWT_MISSING_CLAIM);
        c = std_claims();
        json_object_set_new(c, required[i], json_null());
        expect_claims(c, JWT_MISSING_CLAIM);
    }
    c = std_claims();
    json_object_set_new(c, "exp", json_string("1700000300"));
    expect_claims(c, JWT_MISSING_CLAIM);
    c = std_claims();
    json_object_set_new(c, "exp", json_real(1700000300.0));
    expect_claims(c, JWT_MISSING_CLAIM);
    c = std_claims();
    json_object_set_new(c, "sub", json_integer(42));
    expect_claims(c, JWT_MISSING_CLAIM);
    c = std_claims();
    json_object_set_new(c, "jti", json_true());
    expect_claims(c, JWT_MISSING_CLAIM);
}

/* ---- rotation and threads ---- */

static void test_rotation(void **state)
{
    char *old = sign_std(w.ring, NOW, 300);    /* signed by A */
    char *fresh = sign_std(w.ring2, NOW, 300); /* [B, A]: signed by B */
    unsigned char *hdr;
    size_t len;

    assert_int_equal(jwt_verify(w.ring2, old, ISS, AUD, NOW, 0, NULL), JWT_OK);
    assert_int_equal(jwt_verify(w.ringb, old, ISS, AUD, NOW, 0, NULL), JWT_UNKNOWN_KID);
    assert_int_equal(jwt_verify(w.ring2, fresh, ISS, AUD, NOW, 0, NULL), JWT_OK);
    assert_int_equal(jwt_verify(w.ringb, fresh, ISS, AUD, NOW, 0, NULL), JWT_OK);
    assert_int_equal(jwt_verify(w.ring, fresh, ISS, AUD, NOW, 0, NULL), JWT_UNKNOWN_KID);
    hdr = token_part(fresh, 0, &len);
    assert_non_null(memmem(hdr, len, w.kid_b, strlen(w.kid_b)));
    free(hdr);
    free(fresh);
    free(old);
}

struct thread_arg {
    const char *foreign; /* signed by A, verified through [B, A] */
    int failures;
};

static void *hammer(void *p)
{
    struct thread_arg *ta = p;
    struct jwt_access a = {.iss = ISS, .aud = AUD, .sub = "t", .sid = "s", .iat = NOW, .ttl = 60};

    for (int i = 0; i < 100; i++) {
        char *tok = jwt_sign(w.ring2, &a);

        if (tok == NULL || jwt_verify(w.ring2, tok, ISS, AUD, NOW, 0, NULL) != JWT_OK ||
            jwt_verify(w.ring2, ta->foreign, ISS, AUD, NOW, 0, NULL) != JWT_OK ||
            jwt_verify(w.ring, tok, ISS, AUD, NOW, 0, NULL) != JWT_UNKNOWN_KID)
            ta->failures++;
        free(tok);
    }
    return NULL;
}

static void test_threads(void **state)
{
    pthread_t th[4];
    struct thread_arg args[4];
    char *foreign = sign_std(w.ring, NOW, 300);

    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){.foreign = foreign};
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].failures, 0);
    }
    free(foreign);
}

static void test_error_strings(void **state)
{
    for (int i = JWT_OK; i <= JWT_MISSING_CLAIM; i++) {
        assert_non_null(jwt_error_string((enum jwt_error)i));
        for (int j = JWT_OK; j < i; j++)
            assert_string_not_equal(jwt_error_string((enum jwt_error)i),
                                    jwt_error_string((enum jwt_error)j));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_b64url_roundtrip),
        cmocka_unit_test(test_b64url_rejects),
        cmocka_unit_test(test_kid_known_answer),
        cmocka_unit_test(test_kid_thumbprint_independent),
        cmocka_unit_test(test_jwks),
        cmocka_unit_test(test_keyring_accessors),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_sign_verify),
        cmocka_unit_test(test_sign_rejects),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_alg_confusion),
        cmocka_unit_test(test_alg_variants),
        cmocka_unit_test(test_typ),
        cmocka_unit_test(test_crit),
        cmocka_unit_test(test_kid),
        cmocka_unit_test(test_foreign_key),
        cmocka_unit_test(test_tampered_payload),
        cmocka_unit_test(test_low_s),
        cmocka_unit_test(test_tampered_signature),
        cmocka_unit_test(test_signature_forms),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_issuer_audience),
        cmocka_unit_test(test_missing_claims),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_error_strings),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
