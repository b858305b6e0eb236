/* http_framing: CRLF, obs-fold and control-character checks over the raw bytes (see .h). */
#include "worker/http_framing.h"

#include <string.h>

#define E_BARE_LF    "Line endings must be CRLF; a bare LF is not accepted."
#define E_BARE_CR    "A CR must be followed by LF."
#define E_OBS_FOLD   "A header line must not start with whitespace (obsolete line folding)."
#define E_NAME_WS    "Whitespace between a header name and its colon is not accepted."
#define E_CTL        "Control characters are not accepted in the request line or headers."
#define E_REQ_LINE   "The request line must be method, target and version separated by single spaces."
#define E_CHUNK_CRLF "Chunk data must be followed by CRLF."

void http_framing_start(struct http_framing *f)
{
    memset(f, 0, sizeof(*f));
    f->part = HF_HEAD;
    f->after_head = HF_OFF;
}

void http_framing_body(struct http_framing *f, int chunked)
{
    f->after_head = chunked ? HF_CHUNK_LINE : HF_OFF;
}

void http_framing_chunk(struct http_framing *f, uint64_t size)
{
    f->col = 0;
    f->cr = 0;
    f->colon = 0;
    if (size == 0) {
        f->part = HF_TRAILER;
        f->lines = 0;
    } else {
        f->part = HF_CHUNK_DATA;
        f->data_left = size;
        f->crlf_due = 2;
    }
}

static int is_ctl(unsigned char ch)
{
    return ch < 0x20 || ch == 0x7f;
}

/* A byte of the request line or of a field line, other than CR and LF. */
static const char *content_byte(struct http_framing *f, unsigned char ch)
{
    if (f->part == HF_CHUNK_LINE)
        return NULL; /* the parser checks chunk sizes and extensions */
    if (f->part == HF_HEAD && f->lines == 0) {
        if (is_ctl(ch))
            return E_CTL;
        if (ch == ' ' && (f->sp || f->col == 0))
            return E_REQ_LINE;
        f->sp = ch == ' ';
        return NULL;
    }
    if ((ch == ' ' || ch == '\t') && f->col == 0)
        return E_OBS_FOLD;
    if ((ch == ' ' || ch == '\t') && !f->colon)
        return E_NAME_WS;
    if (is_ctl(ch) && ch != '\t')
        return E_CTL;
    if (ch == ':')
        f->colon = 1;
    return NULL;
}

/* The LF of a CRLF: one line of the current part ends. */
static void line_end(struct http_framing *f)
{
    int empty = f->col == 0;

    f->col = 0;
    f->colon = 0;
    f->sp = 0;
    if (f->part == HF_CHUNK_LINE) {
        f->part = HF_OFF; /* until http_framing_chunk */
    } else if (!empty) {
        f->lines++;
    } else if (f->part == HF_TRAILER) {
        f->part = HF_OFF;
    } else if (f->lines > 0) { /* HF_HEAD; empty lines before the request line are skipped */
        f->part = f->after_head;
    }
}

static const char *line_byte(struct http_framing *f, unsigned char ch)
{
    if (f->cr) {
        if (ch != '\n')
            return E_BARE_CR;
        f->cr = 0;
        line_end(f);
        return NULL;
    }
    if (ch == '\n')
        return E_BARE_LF;
    if (ch == '\r') {
        f->cr = 1;
        return NULL;
    }
    const char *why = content_byte(f, ch);
    f->col++;
    return why;
}

/* Chunk data and its CRLF; returns the bytes taken from p (at most n). */
static size_t data_bytes(struct http_framing *f, const char *p, size_t n, const char **why_r)
{
    if (f->data_left > 0) {
        size_t k = f->data_left < n ? (size_t)f->data_left : n;
        f->data_left -= k;
        return k;
    }
    if (p[0] != (f->crlf_due == 2 ? '\r' : '\n')) {
        *why_r = E_CHUNK_CRLF;
        return 1;
    }
    if (--f->crlf_due == 0)
        f->part = HF_CHUNK_LINE;
    return 1;
}

int http_framing_scan(struct http_framing *f, const char *p, size_t n, const char **error_r)
{
    const char *why = NULL;
    size_t i = 0;

    while (i < n && why == NULL) {
        switch (f->part) {
        case HF_OFF:
            return 0;
        case HF_CHUNK_DATA:
            i += data_bytes(f, p + i, n - i, &why);
            break;
        default:
            why = line_byte(f, (unsigned char)p[i++]);
            break;
        }
    }
    if (why != NULL) {
        *error_r = why;
        return -1;
    }
    return 0;
}
