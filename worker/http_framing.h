/*
 * http_framing: byte-level checks of HTTP/1.1 framing (RFC 9112) that http-parser does not make.
 * Debian's libhttp-parser is built with HTTP_PARSER_STRICT=0: it takes a bare LF as a line end,
 * any byte after a CR as its LF, any two bytes after chunk data as CRLF, and obs-fold. This
 * module sees the same bytes as the parser, in order and across reads, and refuses:
 *   - a line end other than CRLF (bare LF, CR not followed by LF) in the head, chunk-size
 *     lines, after chunk data and in the trailer section;
 *   - a field line that starts with SP or HTAB (obs-fold, or whitespace before the first field);
 *   - whitespace between a field name and its colon;
 *   - control characters other than HTAB in field lines, and any in the request line;
 *   - a request line whose parts are not separated by single spaces.
 * Pure: no I/O, no allocation. The caller tells it where a chunked body's chunks begin.
 */
#ifndef AUTHD_HTTP_FRAMING_H
#define AUTHD_HTTP_FRAMING_H

#include <stddef.h>
#include <stdint.h>

enum http_framing_part {
    HF_HEAD,       /* leading empty lines, request line, field lines, empty line */
    HF_CHUNK_LINE, /* a chunk-size line, up to its LF */
    HF_CHUNK_DATA, /* chunk data, then CRLF */
    HF_TRAILER,    /* trailer field lines, empty line */
    HF_OFF         /* not checked: a Content-Length body, or between a chunk-size line and
                      http_framing_chunk */
};

struct http_framing {
    enum http_framing_part part;
    enum http_framing_part after_head; /* HF_CHUNK_LINE for a chunked body, else HF_OFF */
    unsigned lines;                    /* non-empty lines of this head or trailer section */
    unsigned col;                      /* bytes of the current line so far */
    int cr;                            /* the previous byte was a CR */
    int colon;                         /* the current field line has had its colon */
    int sp;                            /* the previous request-line byte was SP */
    int crlf_due;                      /* HF_CHUNK_DATA: bytes of the CRLF still expected */
    uint64_t data_left;                /* HF_CHUNK_DATA: chunk bytes still expected */
};

/* A new request message begins (its first byte is the next one scanned). */
void http_framing_start(struct http_framing *f);

/* The head announced a chunked body (or not): what follows the head's empty line. */
void http_framing_body(struct http_framing *f, int chunked);

/* The parser has read a chunk-size line for `size` bytes (0: the last chunk, trailers follow). */
void http_framing_chunk(struct http_framing *f, uint64_t size);

/*
 * Checks the next n bytes of the connection. Returns 0, or -1 with *error_r set to a sentence
 * for the client (a static string) at the first byte that breaks the rules; the state is then
 * undefined until http_framing_start.
 */
int http_framing_scan(struct http_framing *f, const char *p, size_t n, const char **error_r);

#endif
