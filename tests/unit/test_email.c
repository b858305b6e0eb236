/*
 * Unit tests for shared/email.c: the look-alikes of the security review (NFD vs NFC, a Cyrillic
 * letter in a Latin local part, fullwidth letters, a zero-width space), bidi controls and other
 * invisibles, IDN domains, lengths, invalid UTF-8, and that a normalized address is a fixed point.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <unistr.h>

#include "shared/email.h"

#define OUT_SIZE (EMAIL_MAX + 1)

/* Normalizes s from a buffer of exactly strlen(s) bytes (ASan sees any read past len). */
static int norm(const char *s, char *out, size_t outlen, const char **why)
{
    size_t n = strlen(s);
    char *copy = malloc(n > 0 ? n : 1);
    int rc;

    assert_non_null(copy);
    memcpy(copy, s, n);
    *why = NULL;
    rc = email_normalize(copy, n, out, outlen, why);
    free(copy);
    return rc;
}

/* `in` normalizes to `want`, and `want` to itself. */
static void expect(const char *in, const char *want)
{
    char out[OUT_SIZE], again[OUT_SIZE];
    const char *why;

    if (norm(in, out, sizeof(out), &why) != 0)
        fail_msg("\"%s\" refused: %s", in, why);
    assert_string_equal(out, want);
    assert_int_equal(norm(out, again, sizeof(again), &why), 0);
    assert_string_equal(again, out);
}

/* `in` is refused with a reason containing `reason`, and out is left empty. */
static void refuse(const char *in, const char *reason)
{
    char out[OUT_SIZE] = "junk";
    const char *why;

    if (norm(in, out, sizeof(out), &why) == 0)
        fail_msg("\"%s\" accepted as \"%s\"", in, out);
    assert_non_null(why);
    if (strstr(why, reason) == NULL)
        fail_msg("\"%s\": reason \"%s\", expected \"%s\"", in, why, reason);
    assert_string_equal(out, "");
}

static void test_ordinary_unchanged(void **state)
{
    expect("user@example.com", "user@example.com");
    expect("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk");
    expect("o'brien_x-1@a-b.example", "o'brien_x-1@a-b.example");
    expect("User@Example.COM", "user@example.com");
    expect(" \t user@example.com \r\n", "user@example.com");
    expect("x@1.2.3.com", "x@1.2.3.com");
}

/* Review case 1: the same é as one code point (NFC) and as e + combining acute (NFD). */
static void test_nfd_equals_nfc(void **state)
{
    expect("jose\xcc\x81@example.com", "jos\xc3\xa9@example.com");
    expect("jos\xc3\xa9@example.com", "jos\xc3\xa9@example.com");
    expect("JOSE\xcc\x81@example.com", "jos\xc3\xa9@example.com"); /* É in NFD */
}

/* Review case 2: Cyrillic е (U+0435) in a Latin local part; a Greek α likewise. */
static void test_mixed_script_refused(void **state)
{
    refuse("us\xd0\xb5r@example.com", "mixes scripts");
    refuse("\xd0\xb5xample@example.com", "mixes scripts");
    refuse("p\xce\xb1ypal@example.com", "mixes scripts");
    /* One script is fine, whichever it is; digits and punctuation are Common. */
    expect("\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd.1@example.com",
           "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd.1@example.com");
    /* UTS #39 highly restrictive: Latin + Han + kana (Japanese) is one writing system. */
    expect("yamada\xe5\xb1\xb1\xe7\x94\xb0\xe3\x81\x9f\xe3\x82\xab@example.jp",
           "yamada\xe5\xb1\xb1\xe7\x94\xb0\xe3\x81\x9f\xe3\x82\xab@example.jp");
    /* ... but Hangul with kana is not. */
    refuse("\xea\xb0\x80\xe3\x81\x9f@example.kr", "mixes scripts");
}

/* Review case 3: fullwidth letters fold to ASCII (NFKC), upper case too. */
static void test_fullwidth_folds(void **state)
{
    expect("\xef\xbd\x85xample@x.com", "example@x.com");                            /* ｅ */
    expect("\xef\xbc\xb5\xef\xbc\xb3\xef\xbc\xa5\xef\xbc\xb2@x.com", "user@x.com"); /* ＵＳＥＲ */
    expect("user@\xef\xbd\x85xample.com", "user@example.com");
    expect("user@example\xe3\x80\x82"
           "com",
           "user@example.com"); /* ideographic full stop */
    refuse("a\xef\xbc\xa0"
           "b@x.com",
           "not allowed"); /* fullwidth @ in the local part */
    refuse("a\xef\xbc\x9c"
           "b@x.com",
           "not allowed"); /* fullwidth < */
}

/* Review case 4 and its relatives: code points that render as nothing. */
static void test_invisible_refused(void **state)
{
    static const char *const invisible[] = {
        "\xe2\x80\x8b", /* U+200B zero-width space */
        "\xe2\x80\x8c", /* U+200C ZWNJ */
        "\xe2\x80\x8d", /* U+200D ZWJ */
        "\xe2\x81\xa0", /* U+2060 word joiner */
        "\xef\xbb\xbf", /* U+FEFF BOM */
        "\xc2\xad",     /* U+00AD soft hyphen */
        "\xcd\x8f",     /* U+034F combining grapheme joiner */
        "\xef\xb8\x8f", /* U+FE0F variation selector 16 */
        "\xe3\x85\xa4", /* U+3164 Hangul filler */
        "\xc2\xa0",     /* U+00A0 no-break space */
        "\xe3\x80\x80", /* U+3000 ideographic space */
        "\xe2\x80\xa8", /* U+2028 line separator */
        "\x7f",         "\x01", "\x1b",
    };
    char buf[64];

    for (size_t i = 0; i < sizeof(invisible) / sizeof(invisible[0]); i++) {
        snprintf(buf, sizeof(buf), "us%ser@example.com", invisible[i]);
        refuse(buf, "invisible");
        snprintf(buf, sizeof(buf), "user@exa%smple.com", invisible[i]);
        refuse(buf, "invisible");
    }
}

static void test_nul_inside_refused(void **state)
{
    static const char addr[] = "us\0er@example.com";
    char out[OUT_SIZE];
    const char *why = NULL;

    assert_int_equal(email_normalize(addr, sizeof(addr) - 1, out, sizeof(out), &why), -1);
    assert_non_null(strstr(why, "invisible"));
}

static void test_bidi_controls_refused(void **state)
{
    static const char *const bidi[] = {
        "\xe2\x80\xaa", "\xe2\x80\xab", "\xe2\x80\xac", "\xe2\x80\xad", "\xe2\x80\xae", /* 202A-E */
        "\xe2\x81\xa6", "\xe2\x81\xa7", "\xe2\x81\xa8", "\xe2\x81\xa9", /* 2066-2069 isolates */
        "\xe2\x80\x8e", "\xe2\x80\x8f",                                 /* LRM, RLM */
        "\xd8\x9c", /* U+061C Arabic letter mark */
    };
    char buf[64];

    for (size_t i = 0; i < sizeof(bidi) / sizeof(bidi[0]); i++) {
        snprintf(buf, sizeof(buf), "%suser@example.com", bidi[i]);
        refuse(buf, "invisible");
        snprintf(buf, sizeof(buf), "user@example.com%s", bidi[i]);
        refuse(buf, "invisible");
    }
}

static void test_idn_domains(void **state)
{
    expect("Ex@B\xc3\x9c"
           "CHER.de",
           "ex@xn--bcher-kva.de");
    expect("ex@xn--bcher-kva.de", "ex@xn--bcher-kva.de");
    expect("ex@XN--BCHER-KVA.DE", "ex@xn--bcher-kva.de");
    expect("ex@bu\xcc\x88"
           "cher.de",
           "ex@xn--bcher-kva.de");                /* NFD ü */
    expect("a@fa\xc3\x9f.de", "a@xn--fa-hia.de"); /* non-transitional: ß kept */
    expect("a@\xe4\xbe\x8b\xe3\x81\x88.jp", "a@xn--r8jz45g.jp");
    refuse("a@ex\xd0\xb0mple.com", "domain label"); /* Cyrillic а among Latin */
    refuse("a@xn--zz.com", "domain");               /* invalid punycode */
    refuse("a@-foo.com", "domain");
    refuse("a@foo-.com", "domain");
    refuse("a@exa_mple.com", "host name");
    refuse("a@localhost", "host name");
    refuse("a@a..b", "host name");
    refuse("a@foo.com.", "host name");
    refuse("a@.foo.com", "host name");
    refuse("a@[127.0.0.1]", "host name");
    refuse("a@x\xf0\x9f\x92\xa9.com", "domain"); /* emoji: disallowed by IDNA2008 */
}

static void test_full_case_folding(void **state)
{
    expect("Stra\xc3\x9f"
           "e@example.de",
           "strasse@example.de");
    expect("STRASSE@example.de", "strasse@example.de");
    expect("\xce\xa3\xce\xbf\xcf\x86\xce\xaf\xce\xb1@example.gr",
           "\xcf\x83\xce\xbf\xcf\x86\xce\xaf\xce\xb1@example.gr"); /* Σοφία -> σοφία */
}

static void test_syntax(void **state)
{
    refuse("", "empty");
    refuse("   ", "empty");
    refuse("userexample.com", "exactly one @");
    refuse("a@b@example.com", "exactly one @");
    refuse("@example.com", "empty local part");
    refuse("user@", "empty domain");
    refuse("a b@example.com", "invisible");
    refuse("a<b@example.com", "not allowed");
    refuse("a\"b@example.com", "not allowed");
    refuse("a\\b@example.com", "not allowed");
    refuse("a,b@example.com", "not allowed");
}

static void test_invalid_utf8(void **state)
{
    refuse("\xc3(@example.com", "UTF-8");
    refuse("\xc0\xaf@example.com", "UTF-8");     /* overlong / */
    refuse("\xed\xa0\x80@example.com", "UTF-8"); /* surrogate */
    refuse("user@example.com\xe2\x80", "UTF-8"); /* truncated at the end */
    refuse("\xf4\x90\x80\x80@example.com", "UTF-8");
    refuse("\xf3\xb0\x80\x80@example.com", "invisible"); /* U+F0000: private use */
    refuse("a\xcd\xb8@example.com", "invisible");        /* U+0378: unassigned */
}

static void test_lengths(void **state)
{
    char in[EMAIL_INPUT_MAX + 2], out[OUT_SIZE], want[OUT_SIZE];
    const char *why;

    /* Longer than EMAIL_INPUT_MAX: refused whatever the content, even all spaces. */
    memset(in, ' ', sizeof(in));
    assert_int_equal(email_normalize(in, EMAIL_INPUT_MAX + 1, out, sizeof(out), &why), -1);
    assert_string_equal(why, "is too long");
    /* A 64-byte local part is fine, 65 is not; so after folding (U+0149 -> U+02BC n). */
    memset(in, 'a', 64);
    strcpy(in + 64, "@example.com");
    memcpy(want, in, strlen(in) + 1);
    expect(in, want);
    memcpy(in, "a\xc5\x89", 3); /* 64 bytes in, 65 once folded */
    refuse(in, "local part that is too long");
    /* The whole address: 254 bytes normalized is the limit (64 + 1 + 3 * 62 + 3). */
    memset(in, 'a', 64);
    in[64] = '@';
    for (int i = 0; i < 3; i++) {
        memset(in + 65 + i * 62, 'b', 61);
        in[65 + i * 62 + 61] = '.';
    }
    strcpy(in + 251, "com");
    assert_int_equal(strlen(in), EMAIL_MAX);
    memcpy(want, in, strlen(in) + 1);
    expect(in, want);
    strcpy(in + 251, "coma");
    refuse(in, "too long");
    strcpy(in + 251, "c\xc3\xb6m"); /* 255 bytes in, 254 + "xn--cm-fka" out */
    refuse(in, "too long");
    /* A small output buffer: refused as too long, nothing written past it. */
    assert_int_equal(email_normalize("user@example.com", 16, out, 16, &why), -1);
    assert_string_equal(out, "");
    assert_int_equal(email_normalize("user@example.com", 16, out, 17, &why), 0);
    assert_string_equal(out, "user@example.com");
}

/* Every code point that a local part may hold normalizes to a fixed point. */
static void test_fixed_point_sweep(void **state)
{
    char in[32], out[OUT_SIZE], again[OUT_SIZE];
    const char *why;
    int accepted = 0;

    for (ucs4_t uc = 0x20; uc <= 0x10FFFF; uc++) {
        uint8_t u8[6];
        int k = u8_uctomb(u8, uc, sizeof(u8));
        if (k <= 0)
            continue; /* surrogates */
        memcpy(in, "a", 1);
        memcpy(in + 1, u8, (size_t)k);
        strcpy(in + 1 + k, "@x.com");
        if (email_normalize(in, strlen(in), out, sizeof(out), &why) != 0)
            continue;
        accepted++;
        if (email_normalize(out, strlen(out), again, sizeof(again), &why) != 0)
            fail_msg("U+%04X: %s refused on the second pass: %s", uc, out, why);
        if (strcmp(out, again) != 0)
            fail_msg("U+%04X: %s then %s", uc, out, again);
    }
    assert_true(accepted > 10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ordinary_unchanged),    cmocka_unit_test(test_nfd_equals_nfc),
        cmocka_unit_test(test_mixed_script_refused),  cmocka_unit_test(test_fullwidth_folds),
        cmocka_unit_test(test_invisible_refused),     cmocka_unit_test(test_nul_inside_refused),
        cmocka_unit_test(test_bidi_controls_refused), cmocka_unit_test(test_idn_domains),
        cmocka_unit_test(test_full_case_folding),     cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_invalid_utf8),          cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_fixed_point_sweep),
    };

    return cmocka_run_group_tests_name("email", tests, NULL, NULL);
}
