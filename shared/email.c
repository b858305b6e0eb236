/*
 * email: normalization of email addresses (see email.h; the rule is docs/api.md's "Email
 * addresses"). Unicode data comes from libunistring (normalization, case folding, general
 * categories, scripts) and IDNA from libidn2; nothing here knows a code point by number.
 */
#include "shared/email.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <idn2.h>
#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>
#include <unistr.h>

/* Case fold + NFKC is repeated until it changes nothing, at most this often. */
#define FOLD_ROUNDS 4

/* Scripts that UTS #39 "highly restrictive" lets one label mix (section 5.2). */
enum {
    SC_LATIN = 1 << 0,
    SC_HAN = 1 << 1,
    SC_HIRAGANA = 1 << 2,
    SC_KATAKANA = 1 << 3,
    SC_BOPOMOFO = 1 << 4,
    SC_HANGUL = 1 << 5,
};

static const unsigned allowed_mixes[] = {
    SC_LATIN | SC_HAN | SC_HIRAGANA | SC_KATAKANA, /* Japanese */
    SC_LATIN | SC_HAN | SC_BOPOMOFO,               /* Chinese */
    SC_LATIN | SC_HAN | SC_HANGUL,                 /* Korean */
};

static const struct {
    const char *name; /* libunistring's script name */
    unsigned bit;
} mixable[] = {
    {"Latin", SC_LATIN},       {"Han", SC_HAN},           {"Hiragana", SC_HIRAGANA},
    {"Katakana", SC_KATAKANA}, {"Bopomofo", SC_BOPOMOFO}, {"Hangul", SC_HANGUL},
};

static int fail(const char **error_r, const char *why)
{
    *error_r = why;
    return -1;
}

/*
 * Code points no address may contain: controls (Cc), format characters (Cf: zero-width space,
 * ZWJ/ZWNJ, LRM/RLM, bidi embeddings, overrides and isolates, BOM, soft hyphen), separators
 * (Zs, Zl, Zp), surrogates, private use, unassigned, and the other default-ignorable code points
 * (variation selectors, combining grapheme joiner, Hangul fillers), which render as nothing.
 */
static bool is_forbidden(ucs4_t uc)
{
    static const uc_general_category_t *const cats[] = {
        &UC_CATEGORY_Cc, &UC_CATEGORY_Cf, &UC_CATEGORY_Cs, &UC_CATEGORY_Co,
        &UC_CATEGORY_Cn, &UC_CATEGORY_Zs, &UC_CATEGORY_Zl, &UC_CATEGORY_Zp,
    };

    for (size_t i = 0; i < sizeof(cats) / sizeof(cats[0]); i++)
        if (uc_is_general_category(uc, *cats[i]))
            return true;
    return uc_is_property_default_ignorable_code_point(uc);
}

/* ASCII that the old rule already refused in a local part, and a second "@" (from NFKC). */
static bool is_local_special(ucs4_t uc)
{
    return uc < 0x80 && strchr("<>,;\"\\@", (int)uc) != NULL;
}

static int codepoints_check(const uint8_t *s, size_t n, bool local, const char **error_r)
{
    const uint8_t *p = s, *end = s + n;
    ucs4_t uc;
    int k;

    while (p < end) {
        k = u8_mbtoucr(&uc, p, (size_t)(end - p));
        if (k <= 0)
            return fail(error_r, "is not valid UTF-8");
        if (is_forbidden(uc))
            return fail(error_r, "contains an invisible, control, space or unassigned character");
        if (local && is_local_special(uc))
            return fail(error_r, "contains a character not allowed in an address");
        p += k;
    }
    return 0;
}

static unsigned mixable_bit(const uc_script_t *sc)
{
    for (size_t i = 0; i < sizeof(mixable) / sizeof(mixable[0]); i++)
        if (strcmp(sc->name, mixable[i].name) == 0)
            return mixable[i].bit;
    return 0;
}

/*
 * One script for the letters of s[0..n), Common and Inherited (digits, punctuation, combining
 * marks) aside; the only mixes allowed are those of allowed_mixes. 0 or -1.
 */
static int scripts_check(const uint8_t *s, size_t n, const char *why, const char **error_r)
{
    const uc_script_t *other = NULL, *sc;
    const uint8_t *p = s, *end = s + n;
    unsigned seen = 0, bit;
    ucs4_t uc;
    int k;

    for (; p < end; p += k) {
        if ((k = u8_mbtoucr(&uc, p, (size_t)(end - p))) <= 0)
            return fail(error_r, "is not valid UTF-8");
        sc = uc_script(uc);
        if (sc == NULL || strcmp(sc->name, "Common") == 0 || strcmp(sc->name, "Inherited") == 0)
            continue;
        if ((bit = mixable_bit(sc)) != 0)
            seen |= bit;
        else if (other != NULL && other != sc)
            return fail(error_r, why);
        else
            other = sc;
    }
    if (other != NULL && seen != 0)
        return fail(error_r, why);
    for (size_t i = 0; i < sizeof(allowed_mixes) / sizeof(allowed_mixes[0]); i++)
        if ((seen & ~allowed_mixes[i]) == 0)
            return 0;
    return fail(error_r, why);
}

/* Whether a and b hold the same bytes. */
static bool same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/*
 * NFKC, then full case folding + NFKC until that changes nothing (a fixed point, so that a
 * normalized address normalizes to itself). Returns a malloc'd result (no NUL) or NULL.
 */
static uint8_t *local_fold(const uint8_t *s, size_t n, size_t *len_r, const char **error_r)
{
    uint8_t *cur, *next;
    size_t curlen, nextlen;

    if ((cur = u8_normalize(UNINORM_NFKC, s, n, NULL, &curlen)) == NULL) {
        fail(error_r, "cannot be normalized (out of memory)");
        return NULL;
    }
    for (int round = 0; round < FOLD_ROUNDS; round++) {
        next = u8_casefold(cur, curlen, NULL, UNINORM_NFKC, NULL, &nextlen);
        if (next == NULL)
            break;
        if (same(cur, curlen, next, nextlen)) {
            free(next);
            *len_r = curlen;
            return cur;
        }
        free(cur);
        cur = next;
        curlen = nextlen;
    }
    free(cur);
    fail(error_r, "cannot be normalized");
    return NULL;
}

/* The local part s[0..n) (n > 0) normalized into out (NUL-terminated). 0 or -1. */
static int local_normalize(const uint8_t *s, size_t n, char *out, size_t outlen,
                           const char **error_r)
{
    size_t len = 0;
    uint8_t *f = local_fold(s, n, &len, error_r);
    int rc = -1;

    if (f == NULL)
        return -1;
    if (codepoints_check(f, len, true, error_r) < 0 ||
        scripts_check(f, len, "mixes scripts (such as Latin and Cyrillic) in the local part",
                      error_r) < 0)
        goto out;
    if (len == 0 || len > EMAIL_LOCAL_MAX || len >= outlen) {
        fail(error_r, len == 0 ? "has an empty local part" : "has a local part that is too long");
        goto out;
    }
    memcpy(out, f, len);
    out[len] = '\0';
    rc = 0;
out:
    free(f);
    return rc;
}

/* RFC 5321 sub-domain: letters, digits and inner hyphens, 1 to 63 of them (lower case here). */
static bool label_ok(const char *l, size_t n)
{
    if (n == 0 || n > EMAIL_LABEL_MAX || l[0] == '-' || l[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((l[i] >= 'a' && l[i] <= 'z') || (l[i] >= '0' && l[i] <= '9') || l[i] == '-'))
            return false;
    return true;
}

/* An A-label domain (ASCII, lower case): at least two labels, each label_ok. */
static bool domain_syntax_ok(const char *d)
{
    size_t n = strlen(d), labels = 0;
    const char *p = d, *dot;

    if (n == 0 || n > EMAIL_DOMAIN_MAX)
        return false;
    for (;;) {
        dot = strchr(p, '.');
        size_t l = dot != NULL ? (size_t)(dot - p) : strlen(p);
        if (!label_ok(p, l))
            return false;
        labels++;
        if (dot == NULL)
            break;
        p = dot + 1;
    }
    return labels >= 2;
}

/* Each label of the A-label domain `ascii`, shown as Unicode, passes scripts_check. */
static int domain_scripts_check(const char *ascii, const char **error_r)
{
    const char *why = "mixes scripts (such as Latin and Cyrillic) in a domain label";
    char *u = NULL, *p, *dot;
    int rc = 0;

    if (idn2_to_unicode_8z8z(ascii, &u, 0) != IDN2_OK || u == NULL) {
        idn2_free(u);
        return fail(error_r, "has a domain that is not a valid internationalized domain name");
    }
    for (p = u; rc == 0; p = dot + 1) {
        dot = strchr(p, '.');
        size_t l = dot != NULL ? (size_t)(dot - p) : strlen(p);
        rc = scripts_check((const uint8_t *)p, l, why, error_r);
        if (dot == NULL)
            break;
    }
    idn2_free(u);
    return rc;
}

/*
 * The domain d[0..n) (n > 0) as its lower-case A-label into out: UTS #46 non-transitional
 * mapping (upper case, fullwidth forms, ideographic full stops) and IDNA2008 (libidn2). 0 or -1.
 */
static int domain_normalize(const char *d, size_t n, char *out, size_t outlen, const char **error_r)
{
    char in[EMAIL_INPUT_MAX + 1];
    char *a = NULL;
    int rc = -1;

    memcpy(in, d, n); /* n <= EMAIL_INPUT_MAX; codepoints_check refused any NUL */
    in[n] = '\0';
    if (idn2_lookup_u8((const uint8_t *)in, (uint8_t **)&a,
                       IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL) != IDN2_OK ||
        a == NULL) {
        fail(error_r, "has a domain that is not a valid internationalized domain name");
        goto out;
    }
    for (char *p = a; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (!domain_syntax_ok(a)) {
        fail(error_r, "has a domain that is not a host name (letters, digits, hyphens, dots)");
        goto out;
    }
    if (domain_scripts_check(a, error_r) < 0)
        goto out;
    if (strlen(a) >= outlen) {
        fail(error_r, "is too long");
        goto out;
    }
    memcpy(out, a, strlen(a) + 1);
    rc = 0;
out:
    idn2_free(a);
    return rc;
}

static bool is_ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* The one "@" of s[0..n), or -1 when there is none or more than one. */
static long at_sign(const char *s, size_t n)
{
    const char *at = memchr(s, '@', n);

    if (at == NULL || memchr(at + 1, '@', n - (size_t)(at - s) - 1) != NULL)
        return -1;
    return (long)(at - s);
}

int email_normalize(const char *in, size_t len, char *out, size_t outlen, const char **error_r)
{
    char local[EMAIL_LOCAL_MAX + 1], domain[EMAIL_DOMAIN_MAX + 1];
    long at;

    if (outlen > 0)
        out[0] = '\0';
    if (len > EMAIL_INPUT_MAX)
        return fail(error_r, "is too long");
    while (len > 0 && is_ascii_space(in[0])) {
        in++;
        len--;
    }
    while (len > 0 && is_ascii_space(in[len - 1]))
        len--;
    if (len == 0)
        return fail(error_r, "is empty");
    if (u8_check((const uint8_t *)in, len) != NULL)
        return fail(error_r, "is not valid UTF-8");
    if (codepoints_check((const uint8_t *)in, len, false, error_r) < 0)
        return -1;
    if ((at = at_sign(in, len)) < 0)
        return fail(error_r, "must contain exactly one @");
    if (at == 0)
        return fail(error_r, "has an empty local part");
    if ((size_t)at == len - 1)
        return fail(error_r, "has an empty domain");
    if (local_normalize((const uint8_t *)in, (size_t)at, local, sizeof(local), error_r) < 0 ||
        domain_normalize(in + at + 1, len - (size_t)at - 1, domain, sizeof(domain), error_r) < 0)
        return -1;
    if (strlen(local) + 1 + strlen(domain) > EMAIL_MAX ||
        strlen(local) + 1 + strlen(domain) >= outlen)
        return fail(error_r, "is too long");
    memcpy(out, local, strlen(local));
    out[strlen(local)] = '@';
    memcpy(out + strlen(local) + 1, domain, strlen(domain) + 1);
    return 0;
}
