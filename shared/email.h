/*
 * email: the one normalization of email addresses, so that two spellings that look alike or
 * mean the same address become one account (docs/api.md, "Email addresses").
 *
 * The local part is put in NFKC, fully case-folded and put in NFKC again (an NFKC_Casefold-like
 * form: fullwidth letters, NFD and upper case all fold; ß becomes ss); the domain becomes its
 * IDNA2008 A-label (libidn2, UTS #46 non-transitional mapping), lower-case. Refused: invalid
 * UTF-8, invisible, format, bidi-control, space, private-use and unassigned code points, and a
 * label or local part that mixes scripts (Latin with Cyrillic) beyond the combinations UTS #39
 * "highly restrictive" allows (Latin with Han and Japanese kana, with Bopomofo or with Hangul).
 */
#ifndef AUTHD_EMAIL_H
#define AUTHD_EMAIL_H

#include <stddef.h>

/* Input bytes looked at, at most: longer input is refused before any allocation. */
#define EMAIL_INPUT_MAX 1024
/* RFC 5321 limits in bytes, on the normalized form (EMAIL_MAX equals STORE_EMAIL_MAX). */
#define EMAIL_MAX        254
#define EMAIL_LOCAL_MAX  64
#define EMAIL_DOMAIN_MAX 253
#define EMAIL_LABEL_MAX  63

/*
 * Normalizes the address in[0..len) (not necessarily NUL-terminated; never read past len) into
 * out, NUL-terminated. Returns 0, or -1 with a short human reason in *error_r (a static string,
 * e.g. "mixes scripts in the local part") and out set to "" when outlen > 0. An address whose
 * normalized form does not fit outlen or exceeds EMAIL_MAX bytes is refused as too long. The result
 * is a fixed point: normalizing it again gives it back unchanged. Thread-safe.
 */
int email_normalize(const char *in, size_t len, char *out, size_t outlen, const char **error_r);

#endif
