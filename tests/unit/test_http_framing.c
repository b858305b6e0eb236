/* Unit tests for worker/http_framing.c: CRLF, obs-fold and control-character checks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "worker/http_framing.h"

/* Scans s in pieces of `step` bytes (0: at once); returns the error or NULL. */
static const char *scan_in(struct http_framing *f, const char *s, size_t step)
{
    size_t n = strlen(s);
    const char *why = NULL;

    if (step == 0)
        step = n ? n : 1;
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        if (http_framing_scan(f, s + i, k, &why) < 0)
            return why;
    }
    return NULL;
}

/* A head alone, scanned at once and byte by byte; both must agree. */
static const char *head(const char *s)
{
    struct http_framing a, b;
    const char *w1, *w2;

    http_framing_start(&a);
    http_framing_start(&b);
    w1 = scan_in(&a, s, 0);
    w2 = scan_in(&b, s, 1);
    assert_true((w1 == NULL) == (w2 == NULL));
    return w1;
}

static void valid_heads(void **state)
{
    (void)state;
    assert_null(head("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_null(head("\r\n\r\nGET /x?y=1 HTTP/1.0\r\n\r\n"));
    assert_null(head("GET / HTTP/1.1\r\nHost: a\r\nX-E:\r\nX-T: a\tb\r\n\r\n"));
    assert_null(head("GET /caf\xc3\xa9 HTTP/1.1\r\nUser-Agent: \xc3\xa9\r\n\r\n"));
}

static void bare_line_ends(void **state)
{
    (void)state;
    assert_string_equal(head("GET / HTTP/1.1\nHost: a\r\n\r\n"),
                        "Line endings must be CRLF; a bare LF is not accepted.");
    assert_non_null(head("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"));
    assert_non_null(head("GET / HTTP/1.1\r\nHost: a\r\n\n"));
    assert_non_null(head("\nGET / HTTP/1.1\r\n\r\n"));
    assert_string_equal(head("GET / HTTP/1.1\r\nHost: a\r\n\rX"), "A CR must be followed by LF.");
    assert_non_null(head("GET / HTTP/1.1\rX"));
}

static void folding_and_whitespace(void **state)
{
    (void)state;
    assert_string_equal(head("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n"),
                        "A header line must not start with whitespace (obsolete line folding).");
    assert_non_null(head("GET / HTTP/1.1\r\nX: b\r\n\tc\r\n\r\n"));
    assert_non_null(head("GET / HTTP/1.1\r\n Host: a\r\n\r\n"));
    assert_string_equal(head("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
                        "Whitespace between a header name and its colon is not accepted.");
    assert_non_null(head("GET  / HTTP/1.1\r\n\r\n"));
    assert_non_null(head("GET /\tx HTTP/1.1\r\n\r\n"));
    assert_non_null(head("GET / HTTP/1.1\r\nX: a\x01"));
    assert_non_null(head("GET / HTTP/1.1\r\nX: a\x7f"));
}

/* A chunked message: the caller plays the parser, announcing each chunk-size line. */
static void chunked_body(void **state)
{
    struct http_framing f;
    const char *why = NULL;
    (void)state;

    http_framing_start(&f);
    http_framing_body(&f, 1);
    assert_null(scan_in(&f, "POST / HTTP/1.1\r\nHost: a\r\n\r\n3;x=y\r\n", 1));
    http_framing_chunk(&f, 3);
    assert_null(scan_in(&f, "a\nb\r\n0\r\n", 0));
    http_framing_chunk(&f, 0);
    assert_null(scan_in(&f, "X-T: 1\r\n\r\n", 1));
    assert_int_equal(f.part, HF_OFF);
    assert_int_equal(http_framing_scan(&f, "\n\n", 2, &why), 0); /* not ours to check */

    http_framing_start(&f);
    http_framing_body(&f, 1);
    assert_null(scan_in(&f, "POST / HTTP/1.1\r\nHost: a\r\n\r\n1\r\n", 0));
    http_framing_chunk(&f, 1);
    assert_string_equal(scan_in(&f, "aXY0\r\n", 0), "Chunk data must be followed by CRLF.");

    http_framing_start(&f);
    http_framing_body(&f, 1);
    assert_non_null(scan_in(&f, "POST / HTTP/1.1\r\nHost: a\r\n\r\n1\rX", 0));

    http_framing_start(&f);
    http_framing_body(&f, 1);
    assert_null(scan_in(&f, "POST / HTTP/1.1\r\nHost: a\r\n\r\n0\r\n", 0));
    http_framing_chunk(&f, 0);
    assert_non_null(scan_in(&f, "X: y\n\r\n", 0));
}

static void content_length_body_unchecked(void **state)
{
    struct http_framing f;
    (void)state;

    http_framing_start(&f);
    assert_null(
        scan_in(&f, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\n\r\x01\n", 0));
    assert_int_equal(f.part, HF_OFF);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_heads),
        cmocka_unit_test(bare_line_ends),
        cmocka_unit_test(folding_and_whitespace),
        cmocka_unit_test(chunked_body),
        cmocka_unit_test(content_length_body_unchecked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
