/*
 * fuzz_json_body: libFuzzer harness for JSON request bodies and the normalisation of their
 * "email" and password fields (shared/email.c, shared/password.c).
 *
 * The input is a request body, parsed as worker/api.c parses one (json_body and field): at
 * most http.max_body_size bytes, json_loadb with JSON_REJECT_DUPLICATES (and jansson's own
 * nesting limit), an object, string members without NUL of at most EMAIL_INPUT_MAX bytes
 * ("email") or password.max_length * 4 bytes (the passwords). Each field is handed over in a
 * buffer of exactly its length, so a read past it is caught.
 * Invariants: a normalized email is valid UTF-8, at most EMAIL_MAX bytes, has an '@' and no
 * ASCII upper case, is a fixed point, and fits exactly strlen + 1 bytes but not strlen; a refusal
 * has a reason and an empty output. A normalized password exists exactly for valid UTF-8, is
 * valid UTF-8 of the length returned, is a fixed point, and is what the policy check hashes.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistr.h>

#include "tests/fuzz/fuzz.h"

#include "shared/config.h"
#include "shared/email.h"
#include "shared/password.h"

static struct config *cfg;
static struct password_policy *policy;

static void die(const char *what)
{
    fuzz_die("fuzz_json_body", what);
}

/* api.c's field(): a string member of at most `max` bytes without NUL, as an exact-size copy. */
static char *field_copy(json_t *o, const char *name, size_t max, size_t *len_r)
{
    json_t *v = json_object_get(o, name);

    if (!json_is_string(v) || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v))
        return NULL;
    *len_r = json_string_length(v);
    char *copy = malloc(*len_r ? *len_r : 1);
    if (copy == NULL)
        die("out of memory");
    memcpy(copy, json_string_value(v), *len_r);
    return copy;
}

static void check_email(const char *in, size_t len)
{
    char out[EMAIL_MAX + 1], again[EMAIL_MAX + 1];
    const char *why = NULL;

    memset(out, 'x', sizeof(out));
    if (email_normalize(in, len, out, sizeof(out), &why) != 0) {
        if (why == NULL || why[0] == '\0' || out[0] != '\0')
            die("email refused without a reason or with output left");
        return;
    }
    size_t n = strlen(out);
    if (n == 0 || n > EMAIL_MAX || u8_check((const uint8_t *)out, n) != NULL ||
        strchr(out, '@') == NULL)
        die("normalized email empty, too long, not UTF-8 or without '@'");
    for (size_t i = 0; i < n; i++)
        if (out[i] >= 'A' && out[i] <= 'Z')
            die("normalized email has ASCII upper case");
    char *exact = malloc(n);
    if (exact == NULL)
        die("out of memory");
    memcpy(exact, out, n);
    if (email_normalize(exact, n, again, sizeof(again), &why) != 0 || strcmp(again, out) != 0)
        die("normalizing a normalized email changed it");
    if (email_normalize(in, len, again, n + 1, &why) != 0 || strcmp(again, out) != 0)
        die("the normalized email does not fit strlen + 1 bytes");
    if (email_normalize(in, len, again, n, &why) == 0)
        die("the normalized email fit in strlen bytes");
    free(exact);
}

static void check_password(const char *pw, size_t len, const char *email)
{
    size_t n = 0, n2 = 0;
    char *norm = password_normalize(pw, len, &n);
    int utf8 = u8_check((const uint8_t *)pw, len) == NULL;

    if ((norm != NULL) != utf8)
        die("password_normalize disagrees with u8_check on valid UTF-8");
    if (norm == NULL)
        return;
    if (strlen(norm) != n || u8_check((const uint8_t *)norm, n) != NULL)
        die("normalized password: wrong length or not UTF-8");
    char *again = password_normalize(norm, n, &n2);
    if (again == NULL || n2 != n || memcmp(again, norm, n) != 0)
        die("normalizing a normalized password changed it");
    char *checked = NULL;
    const char *code = NULL, *msg = NULL;
    if (password_policy_check(policy, pw, len, email, &checked, &code, &msg) == 0) {
        if (checked == NULL || strcmp(checked, norm) != 0)
            die("the policy check hashes another form than password_normalize");
    } else if (code == NULL || msg == NULL) {
        die("a policy refusal without code or message");
    }
    free(checked);
    free(again);
    free(norm);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char *errors = NULL, err[256];

    fuzz_unset_authd_env();
    cfg = config_load(NULL, &errors);
    if (cfg == NULL)
        die(errors ? errors : "config_load");
    policy = password_policy_new(cfg->password.min_length, cfg->password.max_length, NULL, err,
                                 sizeof(err));
    if (policy == NULL)
        die(err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const passwords[] = {"password", "current_password", "new_password"};
    size_t pw_max = (size_t)cfg->password.max_length * 4, len;

    if (size > (size_t)cfg->http.max_body_size) /* 413 before any parsing */
        return 0;
    json_t *o = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return 0;
    }
    char *email = field_copy(o, "email", EMAIL_INPUT_MAX, &len);
    char normalized[EMAIL_MAX + 1] = "";
    if (email != NULL) {
        const char *why;
        check_email(email, len);
        email_normalize(email, len, normalized, sizeof(normalized), &why);
    }
    for (size_t i = 0; i < sizeof(passwords) / sizeof(passwords[0]); i++) {
        char *pw = field_copy(o, passwords[i], pw_max, &len);
        if (pw != NULL)
            check_password(pw, len, normalized[0] ? normalized : NULL);
        free(pw);
    }
    free(email);
    json_decref(o);
    return 0;
}
