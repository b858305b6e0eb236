/* backup: the backup file format, backup, verify, restore and retention (see backup.h). */
#include "master/backup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <zlib.h>

#include "shared/error.h"
#include "shared/store.h"

#define LINE_MAX_BYTES (4u << 20) /* longest JSON line accepted when reading */
#define INFLATE_STEP   65536
#define KEY_ID_LEN     8
#define LOCK_NAME      ".authd-backup.lock"

volatile sig_atomic_t backup_cancel;

static int cancelled(void)
{
    return backup_cancel || store_dump_cancel;
}

static const char *const collections[BACKUP_COLLECTIONS] = {STORE_COLLECTIONS};

static int collection_index(const char *name)
{
    for (int i = 0; name != NULL && i < BACKUP_COLLECTIONS; i++)
        if (!strcmp(collections[i], name))
            return i;
    return -1;
}

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

static uint64_t get_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- key ---- */

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

int backup_key_load(const char *path, unsigned char key[BACKUP_KEY_LEN], char *err, size_t errlen)
{
    unsigned char buf[BACKUP_KEY_LEN * 2 + 3];
    struct stat sb;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC), ret = -1;

    if (fd < 0 || fstat(fd, &sb) < 0) {
        error_set(err, errlen, "backup.encryption_key_file: open(%s): %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode) || (sb.st_mode & 0027) != 0) {
        error_set(err, errlen,
                  "backup.encryption_key_file %s: mode %04o: must be a regular file that only "
                  "its owner (and group, read-only) can access, e.g. chmod 0600 or 0640",
                  path, (unsigned)(sb.st_mode & 07777));
        goto out;
    }
    if (sb.st_uid != geteuid() && sb.st_uid != 0) {
        error_set(err, errlen,
                  "backup.encryption_key_file %s: owned by uid %u: must be owned by root or by "
                  "the user authd runs as (uid %u)",
                  path, (unsigned)sb.st_uid, (unsigned)geteuid());
        goto out;
    }
    n = read(fd, buf, sizeof(buf));
    if (n == BACKUP_KEY_LEN) {
        memcpy(key, buf, BACKUP_KEY_LEN);
        ret = 0;
    } else if (n >= 64 && n <= 66) {
        size_t len = (size_t)n;
        while (len > 64 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            len--;
        ret = len == 64 ? 0 : -1;
        for (int i = 0; ret == 0 && i < BACKUP_KEY_LEN; i++) {
            int hi = hexval(buf[2 * i]), lo = hexval(buf[2 * i + 1]);
            if (hi < 0 || lo < 0)
                ret = -1;
            else
                key[i] = (unsigned char)(hi << 4 | lo);
        }
    }
    if (ret < 0 && n >= 0)
        error_set(err, errlen,
                  "backup.encryption_key_file %s: expected 32 raw bytes or 64 hex digits "
                  "(make one with: openssl rand -hex 32 > FILE)",
                  path);
    else if (n < 0)
        error_set(err, errlen, "backup.encryption_key_file: read(%s): %s", path, strerror(errno));
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (fd >= 0)
        close(fd);
    return ret;
}

/* First 8 bytes of SHA-256("authd-backup-key-id" || key): names a key without revealing it. */
static void key_id(const unsigned char *key, unsigned char id[KEY_ID_LEN])
{
    static const char label[] = "authd-backup-key-id";
    unsigned char md[32];
    EVP_MD_CTX *c = EVP_MD_CTX_new();

    memset(md, 0, sizeof(md));
    if (c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(c, label, sizeof(label) - 1) == 1 &&
        EVP_DigestUpdate(c, key, BACKUP_KEY_LEN) == 1)
        EVP_DigestFinal_ex(c, md, NULL);
    EVP_MD_CTX_free(c);
    memcpy(id, md, KEY_ID_LEN);
}

static void hex_encode(const unsigned char *b, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

/* ---- chunk sealing (shared by writer and reader) ---- */

/* AAD = header || u64 BE chunk index || the chunk's 4-byte length word (with the final flag). */
static void chunk_aad(const unsigned char *hdr, uint64_t index, const unsigned char word[4],
                      unsigned char aad[BACKUP_HEADER_LEN + 12])
{
    memcpy(aad, hdr, BACKUP_HEADER_LEN);
    put_be(aad + BACKUP_HEADER_LEN, index, 8);
    memcpy(aad + BACKUP_HEADER_LEN + 8, word, 4);
}

static void chunk_nonce(const unsigned char *base, uint64_t index, unsigned char nonce[12])
{
    unsigned char ix[8];

    memcpy(nonce, base, 12);
    put_be(ix, index, 8);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] ^= ix[i];
}

/* AES-256-GCM in place: encrypt (tag out) or decrypt (tag in). 0, or -1 (auth failure). */
static int chunk_gcm(EVP_CIPHER_CTX *c, int enc, const unsigned char *key, const unsigned char *hdr,
                     uint64_t index, const unsigned char word[4], unsigned char *data, int len,
                     unsigned char tag[BACKUP_TAG_LEN])
{
    unsigned char aad[BACKUP_HEADER_LEN + 12], nonce[12];
    int outl = 0, ok;

    chunk_aad(hdr, index, word, aad);
    chunk_nonce(hdr + 40, index, nonce);
    ok = EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce, enc) == 1 &&
         EVP_CipherUpdate(c, NULL, &outl, aad, (int)sizeof(aad)) == 1 &&
         (len == 0 || EVP_CipherUpdate(c, data, &outl, data, len) == 1);
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, BACKUP_TAG_LEN, tag) == 1;
    if (ok)
        ok = EVP_CipherFinal_ex(c, data + len, &outl) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, BACKUP_TAG_LEN, tag) == 1;
    return ok ? 0 : -1;
}

/* ---- writer ---- */

struct backup_writer {
    int fd;
    int encrypted;
    unsigned char key[BACKUP_KEY_LEN];
    unsigned char hdr[BACKUP_HEADER_LEN];
    EVP_CIPHER_CTX *cipher;
    EVP_MD_CTX *sha;
    z_stream z;
    int z_ready;
    unsigned char out[BACKUP_CHUNK_MAX + BACKUP_TAG_LEN];
    uint64_t index;
    int64_t size;
    int64_t counts[BACKUP_COLLECTIONS];
    char *err;
    size_t errlen;
};

static int write_all(struct backup_writer *w, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            error_set(w->err, w->errlen, "write: %s", k < 0 ? strerror(errno) : "short write");
            return -1;
        }
        p += k;
        n -= (size_t)k;
        w->size += k;
    }
    return 0;
}

/* Writes w->out[0..len) as chunk w->index (sealed when encrypting) and hashes the frame. */
static int emit_chunk(struct backup_writer *w, size_t len, int final)
{
    unsigned char word[4];

    put_be(word, (uint64_t)len | (final ? 0x80000000u : 0), 4);
    if (w->encrypted && chunk_gcm(w->cipher, 1, w->key, w->hdr, w->index, word, w->out, (int)len,
                                  w->out + len) < 0) {
        error_set(w->err, w->errlen, "AES-256-GCM encryption of chunk %llu failed",
                  (unsigned long long)w->index);
        return -1;
    }
    size_t total = len + (w->encrypted ? BACKUP_TAG_LEN : 0);
    if (EVP_DigestUpdate(w->sha, word, 4) != 1 || EVP_DigestUpdate(w->sha, w->out, total) != 1 ||
        write_all(w, word, 4) < 0 || write_all(w, w->out, total) < 0)
        return -1;
    w->index++;
    return 0;
}

/* Compresses `len` bytes (flush Z_NO_FLUSH or Z_FINISH), emitting each full chunk. */
static int deflate_feed(struct backup_writer *w, const void *data, size_t len, int flush)
{
    w->z.next_in = (Bytef *)(uintptr_t)data;
    w->z.avail_in = (uInt)len;
    for (;;) {
        int zr = deflate(&w->z, flush);
        if (zr == Z_STREAM_ERROR) {
            error_set(w->err, w->errlen, "deflate failed");
            return -1;
        }
        size_t have = BACKUP_CHUNK_MAX - w->z.avail_out;
        if (zr == Z_STREAM_END)
            return emit_chunk(w, have, 1);
        if (w->z.avail_out == 0) {
            if (emit_chunk(w, have, 0) < 0)
                return -1;
            w->z.next_out = w->out;
            w->z.avail_out = BACKUP_CHUNK_MAX;
            continue;
        }
        if (w->z.avail_in == 0 && flush != Z_FINISH)
            return 0;
    }
}

struct backup_writer *backup_writer_new(int fd, const char *driver, int64_t created_ms,
                                        const unsigned char *key, char *err, size_t errlen)
{
    struct backup_writer *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        error_set(err, errlen, "out of memory");
        return NULL;
    }
    w->fd = fd;
    w->err = err;
    w->errlen = errlen;
    w->encrypted = key != NULL;
    memcpy(w->hdr, BACKUP_MAGIC, 8);
    put_be(w->hdr + 8, BACKUP_FORMAT_VERSION, 2);
    put_be(w->hdr + 10, BACKUP_FLAG_ZLIB | (key ? BACKUP_FLAG_AES_GCM : 0), 2);
    put_be(w->hdr + 12, BACKUP_CHUNK_MAX, 4);
    put_be(w->hdr + 16, (uint64_t)created_ms, 8);
    strncpy((char *)w->hdr + 24, driver, 16);
    if (key != NULL) {
        memcpy(w->key, key, BACKUP_KEY_LEN);
        key_id(key, w->hdr + 52);
        if (RAND_bytes(w->hdr + 40, 12) != 1) {
            error_set(err, errlen, "RAND_bytes failed");
            goto fail;
        }
    }
    w->cipher = EVP_CIPHER_CTX_new();
    w->sha = EVP_MD_CTX_new();
    if (w->cipher == NULL || w->sha == NULL || EVP_DigestInit_ex(w->sha, EVP_sha256(), NULL) != 1 ||
        deflateInit(&w->z, Z_DEFAULT_COMPRESSION) != Z_OK) {
        error_set(err, errlen, "cannot set up SHA-256, AES-256-GCM or zlib");
        goto fail;
    }
    w->z_ready = 1;
    w->z.next_out = w->out;
    w->z.avail_out = BACKUP_CHUNK_MAX;
    if (EVP_DigestUpdate(w->sha, w->hdr, BACKUP_HEADER_LEN) != 1 ||
        write_all(w, w->hdr, BACKUP_HEADER_LEN) < 0)
        goto fail;
    return w;
fail:
    backup_writer_free(w);
    return NULL;
}

int backup_writer_record(struct backup_writer *w, const char *collection, json_t *doc)
{
    int ci = collection_index(collection);

    if (ci < 0) {
        error_set(w->err, w->errlen, "unknown collection \"%s\"", collection ? collection : "");
        return -1;
    }
    char *text = json_dumps(doc, JSON_COMPACT);
    if (text == NULL) {
        error_set(w->err, w->errlen, "cannot encode a %s record", collection);
        return -1;
    }
    char head[64];
    int hl = snprintf(head, sizeof(head), "{\"collection\":\"%s\",\"doc\":", collection);
    int rc = deflate_feed(w, head, (size_t)hl, Z_NO_FLUSH);
    if (rc == 0)
        rc = deflate_feed(w, text, strlen(text), Z_NO_FLUSH);
    if (rc == 0)
        rc = deflate_feed(w, "}\n", 2, Z_NO_FLUSH);
    free(text);
    if (rc == 0)
        w->counts[ci]++;
    return rc;
}

int backup_writer_finish(struct backup_writer *w, int64_t *size_r)
{
    unsigned char md[BACKUP_SHA_LEN];
    char line[256];
    int n = snprintf(
        line, sizeof(line), "{\"counts\":{\"%s\":%lld,\"%s\":%lld,\"%s\":%lld,\"%s\":%lld}}\n",
        collections[0], (long long)w->counts[0], collections[1], (long long)w->counts[1],
        collections[2], (long long)w->counts[2], collections[3], (long long)w->counts[3]);

    if (deflate_feed(w, line, (size_t)n, Z_NO_FLUSH) < 0 || deflate_feed(w, "", 0, Z_FINISH) < 0)
        return -1;
    if (EVP_DigestFinal_ex(w->sha, md, NULL) != 1) {
        error_set(w->err, w->errlen, "SHA-256 failed");
        return -1;
    }
    if (write_all(w, md, sizeof(md)) < 0)
        return -1;
    *size_r = w->size;
    return 0;
}

void backup_writer_free(struct backup_writer *w)
{
    if (w == NULL)
        return;
    if (w->z_ready)
        deflateEnd(&w->z);
    EVP_CIPHER_CTX_free(w->cipher);
    EVP_MD_CTX_free(w->sha);
    OPENSSL_cleanse(w, sizeof(*w));
    free(w);
}

/* ---- reader ---- */

struct backup_reader {
    int fd;
    int have_key;
    unsigned char key[BACKUP_KEY_LEN];
    unsigned char hdr[BACKUP_HEADER_LEN];
    struct backup_info info;
    EVP_CIPHER_CTX *cipher;
    EVP_MD_CTX *sha;
    z_stream z;
    int z_ready, z_end, more_out; /* more_out: the last inflate filled its output */
    int final_seen, done, counts_seen;
    uint64_t limit;
    unsigned char *chunk; /* payload + tag of the current chunk */
    char *buf;            /* inflated bytes not consumed yet: buf[off..len) */
    size_t off, len, cap;
    size_t scanned; /* buf[off..off+scanned) was searched for a newline already */
    char collection[32];
    int64_t seen[BACKUP_COLLECTIONS];
    char err[512];
};

static int rfail(struct backup_reader *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int rfail(struct backup_reader *r, const char *fmt, ...)
{
    va_list ap;

    if (r->err[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(r->err, sizeof(r->err), fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Reads exactly n bytes: n, or fewer at end of file, or -1. */
static ssize_t read_full(int fd, void *p, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t k = read(fd, (char *)p + got, n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        if (k == 0)
            break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

static int check_header(struct backup_reader *r)
{
    const unsigned char *h = r->hdr;
    static const unsigned char zero[8];

    if (memcmp(h, BACKUP_MAGIC, 8) != 0)
        return rfail(r, "not an authd backup (bad magic)");
    r->info.version = (unsigned)get_be(h + 8, 2);
    if (r->info.version != BACKUP_FORMAT_VERSION)
        return rfail(r, "unsupported format version %u (this authd reads %d)", r->info.version,
                     BACKUP_FORMAT_VERSION);
    r->info.flags = (unsigned)get_be(h + 10, 2);
    if ((r->info.flags & ~(BACKUP_FLAG_ZLIB | BACKUP_FLAG_AES_GCM)) != 0 ||
        !(r->info.flags & BACKUP_FLAG_ZLIB))
        return rfail(r, "unsupported flags 0x%04x in the header", r->info.flags);
    r->limit = get_be(h + 12, 4);
    if (r->limit == 0 || r->limit > BACKUP_CHUNK_MAX)
        return rfail(r, "corrupt header: chunk size %llu", (unsigned long long)r->limit);
    r->info.created_ms = (int64_t)get_be(h + 16, 8);
    memcpy(r->info.driver, h + 24, 16);
    r->info.driver[16] = '\0';
    /* The driver name is printed: [a-z0-9_-]+, then zero bytes only. */
    size_t dl = strspn(r->info.driver, "abcdefghijklmnopqrstuvwxyz0123456789_-");
    for (size_t i = dl; i < 16; i++)
        if (h[24 + i] != 0)
            dl = 0;
    if (dl == 0)
        return rfail(r, "corrupt header: bad store driver name");
    if (memcmp(h + 60, zero, 4) != 0)
        return rfail(r, "corrupt header: reserved bytes are not zero");
    if (!(r->info.flags & BACKUP_FLAG_AES_GCM)) {
        if (memcmp(h + 40, zero, 8) != 0 || memcmp(h + 48, zero, 8) != 0 ||
            memcmp(h + 56, zero, 4) != 0)
            return rfail(r, "corrupt header: nonce or key id set in an unencrypted file");
        if (r->have_key)
            return rfail(r, "the file is not encrypted but backup.encryption_key_file is set: its "
                            "origin cannot be authenticated (run with "
                            "AUTHD_BACKUP_ENCRYPTION_KEY_FILE= to accept it)");
        return 0;
    }
    hex_encode(h + 52, KEY_ID_LEN, r->info.key_id);
    if (!r->have_key)
        return rfail(r,
                     "the file is encrypted (key id %s) but backup.encryption_key_file is not "
                     "set",
                     r->info.key_id);
    unsigned char id[KEY_ID_LEN];
    char mine[2 * KEY_ID_LEN + 1];
    key_id(r->key, id);
    if (memcmp(id, h + 52, KEY_ID_LEN) != 0) {
        hex_encode(id, KEY_ID_LEN, mine);
        return rfail(r,
                     "wrong key: the file was encrypted with key id %s, "
                     "backup.encryption_key_file holds key id %s",
                     r->info.key_id, mine);
    }
    return 0;
}

struct backup_reader *backup_reader_open(int fd, const unsigned char *key, char *err, size_t errlen)
{
    struct backup_reader *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        error_set(err, errlen, "out of memory");
        return NULL;
    }
    r->fd = fd;
    if (key != NULL) {
        memcpy(r->key, key, BACKUP_KEY_LEN);
        r->have_key = 1;
    }
    r->cipher = EVP_CIPHER_CTX_new();
    r->sha = EVP_MD_CTX_new();
    r->chunk = malloc(BACKUP_CHUNK_MAX + BACKUP_TAG_LEN);
    if (r->cipher == NULL || r->sha == NULL || r->chunk == NULL ||
        EVP_DigestInit_ex(r->sha, EVP_sha256(), NULL) != 1 || inflateInit(&r->z) != Z_OK) {
        error_set(err, errlen, "cannot set up SHA-256, AES-256-GCM or zlib");
        goto fail;
    }
    r->z_ready = 1;
    ssize_t n = read_full(fd, r->hdr, BACKUP_HEADER_LEN);
    if (n < 0) {
        error_set(err, errlen, "read: %s", strerror(errno));
        goto fail;
    }
    if (n < 8 || (n < BACKUP_HEADER_LEN && memcmp(r->hdr, BACKUP_MAGIC, 8) == 0)) {
        error_set(err, errlen, n < 8 ? "not an authd backup (%zd bytes)" : "truncated header", n);
        goto fail;
    }
    if (n < BACKUP_HEADER_LEN || check_header(r) < 0) {
        error_set(err, errlen, "%s", r->err[0] ? r->err : "not an authd backup (bad magic)");
        goto fail;
    }
    r->info.size = BACKUP_HEADER_LEN;
    EVP_DigestUpdate(r->sha, r->hdr, BACKUP_HEADER_LEN);
    return r;
fail:
    backup_reader_free(r);
    return NULL;
}

/* After the final chunk: the SHA-256 trailer, then the end of the file. */
static int read_trailer(struct backup_reader *r)
{
    unsigned char want[BACKUP_SHA_LEN], got[BACKUP_SHA_LEN], extra;

    ssize_t n = read_full(r->fd, got, sizeof(got));
    if (n < 0)
        return rfail(r, "read: %s", strerror(errno));
    if (n < (ssize_t)sizeof(got))
        return rfail(r, "truncated in the SHA-256 trailer");
    r->info.size += n;
    if (EVP_DigestFinal_ex(r->sha, want, NULL) != 1 || memcmp(want, got, sizeof(got)) != 0)
        return rfail(r, "SHA-256 mismatch: the file is corrupt or was modified");
    n = read_full(r->fd, &extra, 1);
    if (n != 0)
        return rfail(r, "unexpected data after the SHA-256 trailer");
    return 0;
}

/* Reads, authenticates and hashes the next chunk and hands it to inflate. */
static int read_chunk(struct backup_reader *r)
{
    unsigned char word[4];
    uint64_t ix = r->info.chunks;
    size_t tag = r->info.flags & BACKUP_FLAG_AES_GCM ? BACKUP_TAG_LEN : 0;

    if (cancelled())
        return rfail(r, "cancelled");
    ssize_t n = read_full(r->fd, word, 4);
    if (n < 0)
        return rfail(r, "read: %s", strerror(errno));
    if (n == 0 && ix == 0)
        return rfail(r, "truncated after the header (no chunk)");
    if (n == 0)
        return rfail(r, "truncated after chunk %llu (no final chunk)", (unsigned long long)ix - 1);
    if (n < 4)
        return rfail(r, "truncated in chunk %llu", (unsigned long long)ix);
    uint64_t w = get_be(word, 4), len = w & 0x7fffffffu;
    if (len > r->limit)
        return rfail(r, "chunk %llu: length %llu exceeds the chunk size (corrupt)",
                     (unsigned long long)ix, (unsigned long long)len);
    n = read_full(r->fd, r->chunk, len + tag);
    if (n < 0)
        return rfail(r, "read: %s", strerror(errno));
    if ((size_t)n < len + tag)
        return rfail(r, "truncated in chunk %llu", (unsigned long long)ix);
    r->info.size += 4 + n;
    EVP_DigestUpdate(r->sha, word, 4);
    EVP_DigestUpdate(r->sha, r->chunk, (size_t)n);
    if (tag &&
        chunk_gcm(r->cipher, 0, r->key, r->hdr, ix, word, r->chunk, (int)len, r->chunk + len) < 0)
        return rfail(r, "chunk %llu: authentication failed: the file was modified or reordered",
                     (unsigned long long)ix);
    r->info.chunks++;
    r->final_seen = (w & 0x80000000u) != 0;
    if (r->final_seen && read_trailer(r) < 0)
        return -1;
    if (r->z_end && len > 0)
        return rfail(r, "chunk %llu: data after the end of the compressed stream",
                     (unsigned long long)ix);
    r->z.next_in = r->chunk;
    r->z.avail_in = (uInt)len;
    return 0;
}

/* Adds inflated bytes to buf (or sets done). 0 or -1. */
static int fill(struct backup_reader *r)
{
    if (r->z.avail_in == 0 && !r->more_out) {
        if (r->final_seen) {
            if (!r->z_end)
                return rfail(r, "the compressed stream ends early (corrupt)");
            r->done = 1;
            return 0;
        }
        return read_chunk(r);
    }
    if (r->z_end)
        return rfail(r, "data after the end of the compressed stream");
    if (cancelled())
        return rfail(r, "cancelled");
    /* Consumed bytes are dropped only when room is needed: one move per buffer, not per fill. */
    if (r->off > 0 && r->cap - r->len < INFLATE_STEP) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    if (r->cap - r->len < INFLATE_STEP) {
        size_t nc = r->len + INFLATE_STEP;
        char *nb = realloc(r->buf, nc);
        if (nb == NULL)
            return rfail(r, "out of memory");
        r->buf = nb;
        r->cap = nc;
    }
    r->z.next_out = (Bytef *)r->buf + r->len;
    r->z.avail_out = INFLATE_STEP;
    int zr = inflate(&r->z, Z_NO_FLUSH);
    if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR)
        return rfail(r, "chunk %llu: corrupt compressed data (%s)",
                     (unsigned long long)r->info.chunks - 1, r->z.msg ? r->z.msg : "zlib error");
    r->more_out = r->z.avail_out == 0;
    r->len += INFLATE_STEP - r->z.avail_out;
    if (zr == Z_STREAM_END) {
        r->z_end = 1;
        r->more_out = 0;
        if (r->z.avail_in > 0)
            return rfail(r, "data after the end of the compressed stream");
    }
    return 0;
}

static int check_counts(struct backup_reader *r, json_t *counts)
{
    for (int i = 0; i < BACKUP_COLLECTIONS; i++) {
        json_t *v = json_object_get(counts, collections[i]);
        if (!json_is_integer(v))
            return rfail(r, "the counts line lacks %s", collections[i]);
        if (json_integer_value(v) != r->seen[i])
            return rfail(r, "record counts differ: %s: the file says %lld, it holds %lld",
                         collections[i], (long long)json_integer_value(v), (long long)r->seen[i]);
        r->info.counts[i] = r->seen[i];
    }
    r->counts_seen = 1;
    return 0;
}

/* One JSON line: a record (1) or the counts line (0). */
static int parse_line(struct backup_reader *r, const char *line, size_t len, json_t **doc)
{
    json_error_t je;
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    int ret = -1;

    if (!json_is_object(o)) {
        rfail(r, "corrupt content: malformed record after %lld records (%s)",
              (long long)(r->seen[0] + r->seen[1] + r->seen[2] + r->seen[3]), je.text);
        goto out;
    }
    if (r->counts_seen) {
        rfail(r, "records after the counts line");
        goto out;
    }
    json_t *counts = json_object_get(o, "counts");
    if (counts != NULL) {
        ret = check_counts(r, counts) < 0 ? -1 : 0;
        goto out;
    }
    int ci = collection_index(json_string_value(json_object_get(o, "collection")));
    json_t *d = json_object_get(o, "doc");
    if (ci < 0 || !json_is_object(d)) {
        rfail(r, "malformed record: unknown collection or no document");
        goto out;
    }
    r->seen[ci]++;
    snprintf(r->collection, sizeof(r->collection), "%s", collections[ci]);
    *doc = json_incref(d);
    ret = 1;
out:
    json_decref(o);
    return ret;
}

int backup_reader_next(struct backup_reader *r, const char **collection, json_t **doc)
{
    if (r->err[0])
        return -1;
    for (;;) {
        /* buf[off .. off+scanned) holds no newline: only the bytes after it are searched. */
        size_t from = r->off + r->scanned;
        char *nl = r->len > from ? memchr(r->buf + from, '\n', r->len - from) : NULL;
        r->scanned = r->len - r->off;
        if (nl != NULL) {
            size_t len = (size_t)(nl - (r->buf + r->off));
            int rc = parse_line(r, r->buf + r->off, len, doc);
            r->off += len + 1;
            r->scanned = 0;
            if (rc < 0)
                return -1;
            if (rc == 1) {
                *collection = r->collection;
                return 1;
            }
            continue;
        }
        if (r->len - r->off > LINE_MAX_BYTES)
            return rfail(r, "a record is longer than %u bytes (corrupt)", LINE_MAX_BYTES);
        if (r->done) {
            if (r->len > r->off)
                return rfail(r, "incomplete last line");
            if (!r->counts_seen)
                return rfail(r, "no counts line at the end (corrupt)");
            return 0;
        }
        if (fill(r) < 0)
            return -1;
    }
}

const char *backup_reader_error(const struct backup_reader *r)
{
    return r->err;
}

const struct backup_info *backup_reader_info(const struct backup_reader *r)
{
    return &r->info;
}

void backup_reader_free(struct backup_reader *r)
{
    if (r == NULL)
        return;
    if (r->z_ready)
        inflateEnd(&r->z);
    EVP_CIPHER_CTX_free(r->cipher);
    EVP_MD_CTX_free(r->sha);
    free(r->chunk);
    free(r->buf);
    OPENSSL_cleanse(r->key, sizeof(r->key));
    free(r);
}

/* ---- retention ---- */

int64_t backup_name_time(const char *name)
{
    struct tm tm;
    const char *p = name;

    if (strncmp(p, "authd-", 6) != 0)
        return -1;
    p += 6;
    for (int i = 0; i < 16; i++) {
        int want_digit = !(i == 8 || i == 15);
        char c = p[i];
        if (want_digit ? (c < '0' || c > '9') : c != (i == 8 ? 'T' : 'Z'))
            return -1;
    }
    const char *rest = p + 16;
    if (*rest == '-') {
        rest++;
        if (*rest < '0' || *rest > '9')
            return -1;
        while (*rest >= '0' && *rest <= '9')
            rest++;
    }
    if (strcmp(rest, ".bak") != 0)
        return -1;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(p, "%4d%2d%2dT%2d%2d%2dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec) != 6)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm);
}

/* Newer first: by time in the name, then by the whole name (suffixes) descending. */
static int newer_first(const char *a, const char *b)
{
    int64_t ta = backup_name_time(a), tb = backup_name_time(b);
    if (ta != tb)
        return ta > tb ? -1 : 1;
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return la > lb ? -1 : 1;
    return -strcmp(a, b);
}

size_t backup_retention(const char *const *names, size_t n, int keep, double max_age, int64_t now,
                        const char *just_written, int *doomed)
{
    size_t marked = 0;

    for (size_t i = 0; i < n; i++) {
        doomed[i] = 0;
        int64_t t = backup_name_time(names[i]);
        if (t < 0 || (just_written != NULL && !strcmp(names[i], just_written)))
            continue;
        size_t newer = 0; /* backups newer than this one */
        for (size_t j = 0; j < n; j++)
            if (j != i && backup_name_time(names[j]) >= 0 && newer_first(names[j], names[i]) < 0)
                newer++;
        if ((keep > 0 && newer >= (size_t)keep) || (max_age > 0 && (double)(now - t) > max_age)) {
            doomed[i] = 1;
            marked++;
        }
    }
    return marked;
}

/* The names in `dir` (malloc'd array of malloc'd strings); -1 when it cannot be read. */
static ssize_t list_dir(const char *dir, char ***names_r)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL) {
        if (backup_name_time(de->d_name) < 0)
            continue;
        char **nn = realloc(names, (n + 1) * sizeof(*names));
        if (nn == NULL || (nn[n] = strdup(de->d_name)) == NULL) {
            names = nn ? nn : names;
            break;
        }
        names = nn;
        n++;
    }
    closedir(d);
    *names_r = names;
    return (ssize_t)n;
}

static void free_names(char **names, ssize_t n)
{
    for (ssize_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int backup_newest(const char *dir, int64_t *time_ms_r, int64_t *size_r)
{
    char **names = NULL, path[4352];
    ssize_t n = list_dir(dir, &names);
    ssize_t best = -1;
    struct stat sb;

    for (ssize_t i = 0; i < n; i++)
        if (best < 0 || newer_first(names[i], names[best]) < 0)
            best = i;
    int ret = -1;
    if (best >= 0) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[best]);
        if (stat(path, &sb) == 0) {
            *time_ms_r = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
            *size_r = (int64_t)sb.st_size;
            ret = 0;
        }
    }
    free_names(names, n);
    return ret;
}

/* Deletes what retention marks in `dir`; returns how many were deleted. */
static int retention_apply(const struct config *cfg, const char *dir, const char *just_written)
{
    char **names = NULL, path[4352];
    ssize_t n = list_dir(dir, &names);
    int deleted = 0;

    if (n <= 0) {
        free_names(names, n);
        return 0;
    }
    int *doomed = calloc((size_t)n, sizeof(int));
    if (doomed != NULL)
        backup_retention((const char *const *)names, (size_t)n, cfg->backup.keep,
                         cfg->backup.max_age, time(NULL), just_written, doomed);
    for (ssize_t i = 0; doomed != NULL && i < n; i++) {
        if (!doomed[i])
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (unlink(path) == 0)
            deleted++;
        else
            fprintf(stderr, "authd backup: retention: unlink(%s): %s\n", path, strerror(errno));
    }
    free(doomed);
    free_names(names, n);
    return deleted;
}

/* ---- operations ---- */

struct run_ctx {
    struct backup_writer *w;
};

static int emit_record(void *ctx, const char *collection, json_t *doc)
{
    struct run_ctx *rc = ctx;

    if (cancelled())
        return -1;
    return backup_writer_record(rc->w, collection, doc);
}

/* Resolves `output` into a directory and a file name; *standard_r: the name is ours. */
static int target(const struct config *cfg, const char *output, char *dir, size_t dirlen,
                  char *name, size_t namelen, int *standard_r, char *err, size_t errlen)
{
    struct stat sb;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "authd-%Y%m%dT%H%M%SZ.bak", &tm);
    *standard_r = 1;
    if (output == NULL || (stat(output, &sb) == 0 && S_ISDIR(sb.st_mode))) {
        const char *d = output ? output : cfg->backup.directory;
        if (output == NULL && mkdir(d, 0700) < 0 && errno != EEXIST) {
            error_set(err, errlen, "mkdir(%s): %s", d, strerror(errno));
            return -1;
        }
        snprintf(dir, dirlen, "%s", d);
        snprintf(name, namelen, "%s", stamp);
        return 0;
    }
    char *copy1 = strdup(output), *copy2 = strdup(output);
    if (copy1 && copy2) {
        snprintf(dir, dirlen, "%s", dirname(copy1));
        snprintf(name, namelen, "%s", basename(copy2));
    }
    free(copy1);
    free(copy2);
    *standard_r = 0;
    if (access(output, F_OK) == 0) {
        error_set(err, errlen, "%s exists; refusing to overwrite it", output);
        return -1;
    }
    return 0;
}

/* Takes the directory's backup lock and removes temporary files an interrupted run left. */
static int lock_dir(const char *dir, char *err, size_t errlen)
{
    char path[4352];
    snprintf(path, sizeof(path), "%s/%s", dir, LOCK_NAME);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

    if (fd < 0) {
        error_set(err, errlen, "open(%s): %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        error_set(err, errlen, "another backup is running in %s (it holds %s)", dir, path);
        close(fd);
        return -1;
    }
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (!strncmp(de->d_name, ".authd-", 7) && l > 11 && !strcmp(de->d_name + l - 4, ".tmp")) {
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            unlink(path);
        }
    }
    if (d != NULL)
        closedir(d);
    return fd;
}

int backup_encrypted(const struct config *cfg)
{
    return cfg->backup.encryption_key_file != NULL && cfg->backup.encryption_key_file[0] != '\0';
}

static int load_key(const struct config *cfg, unsigned char key[BACKUP_KEY_LEN], int *have_r,
                    char *err, size_t errlen)
{
    *have_r = 0;
    if (!backup_encrypted(cfg))
        return 0;
    if (backup_key_load(cfg->backup.encryption_key_file, key, err, errlen) < 0)
        return -1;
    *have_r = 1;
    return 0;
}

/* Reads a whole file with the reader; with `counts` checks they match. 0 or -1. */
static int verify_fd(int fd, const unsigned char *key, const char *path, struct backup_info *info,
                     char *err, size_t errlen)
{
    char e[512] = "";
    struct backup_reader *r = backup_reader_open(fd, key, e, sizeof(e));
    const char *coll;
    json_t *doc;
    int rc;

    if (r == NULL) {
        error_set(err, errlen, "%s: %s", path, e);
        return -1;
    }
    while ((rc = backup_reader_next(r, &coll, &doc)) == 1)
        json_decref(doc);
    if (rc < 0)
        error_set(err, errlen, "%s: %s", path, backup_reader_error(r));
    else if (info != NULL)
        *info = *backup_reader_info(r);
    backup_reader_free(r);
    return rc < 0 ? -1 : 0;
}

/* Writes the store into the open temporary file `fd`, fsyncs and verifies it. 0 or -1. */
static int write_backup(const struct config *cfg, int fd, const char *tmp, const unsigned char *key,
                        struct backup_result *res, char *err, size_t errlen)
{
    const struct store_driver *drv = store_driver_find(cfg->store.driver);
    char e[512] = "";
    struct store *st = NULL;
    struct backup_writer *w = NULL;
    struct backup_info info;
    int ret = -1;

    if (drv == NULL || drv->dump == NULL) {
        error_set(err, errlen, "store.driver \"%s\" cannot be backed up by this authd",
                  cfg->store.driver);
        return -1;
    }
    if ((st = drv->open(cfg, 0, e, sizeof(e))) == NULL) {
        error_set(err, errlen, "store: %s", e);
        return -1;
    }
    if ((w = backup_writer_new(fd, drv->name, wall_ms(), key, e, sizeof(e))) == NULL) {
        error_set(err, errlen, "%s: %s", tmp, e);
        goto out;
    }
    struct run_ctx ctx = {w};
    if (drv->dump(st, emit_record, &ctx) != STORE_OK) {
        if (e[0] != '\0')
            error_set(err, errlen, "%s: %s", tmp, e);
        else
            error_set(err, errlen, "%s",
                      cancelled() ? "cancelled"
                                  : "the store could not be read (see the log line above)");
        goto out;
    }
    if (backup_writer_finish(w, &res->size) < 0) {
        error_set(err, errlen, "%s: %s", tmp, e);
        goto out;
    }
    if (fsync(fd) < 0) {
        error_set(err, errlen, "fsync(%s): %s", tmp, strerror(errno));
        goto out;
    }
    int rfd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) {
        error_set(err, errlen, "open(%s): %s", tmp, strerror(errno));
        goto out;
    }
    ret = verify_fd(rfd, key, tmp, &info, err, errlen);
    close(rfd);
    if (ret == 0)
        memcpy(res->counts, info.counts, sizeof(res->counts));
out:
    backup_writer_free(w);
    drv->close(st);
    return ret;
}

/* Renames tmp to dir/name without replacing anything (a -N suffix for a standard name). */
static int place(const char *tmp, const char *dir, const char *name, int standard, char *path,
                 size_t pathlen, char *err, size_t errlen)
{
    char n2[512];

    for (int i = 1; i < 100; i++) {
        if (i == 1)
            snprintf(n2, sizeof(n2), "%s", name);
        else
            snprintf(n2, sizeof(n2), "%.*s-%d.bak", (int)strlen(name) - 4, name, i);
        if ((size_t)snprintf(path, pathlen, "%s/%s", dir, n2) >= pathlen) {
            errno = ENAMETOOLONG;
            break;
        }
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
            return 0;
        if (errno == EINVAL || errno == ENOSYS) {
            /* NFS, SMB and others have no RENAME_NOREPLACE: link() refuses to replace too. */
            if (link(tmp, path) == 0) {
                unlink(tmp);
                return 0;
            }
        }
        if (errno != EEXIST || !standard)
            break;
    }
    error_set(err, errlen, "rename(%s, %s): %s", tmp, path, strerror(errno));
    return -1;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int backup_run(const struct config *cfg, const char *output, struct backup_result *res, char *err,
               size_t errlen)
{
    char dir[4096], name[512], tmp[4352] = "";
    unsigned char key[BACKUP_KEY_LEN];
    int standard, have_key, lockfd = -1, fd = -1, ret = -1;
    int64_t t0 = mono_ms();

    memset(res, 0, sizeof(*res));
    signal(SIGXFSZ, SIG_IGN); /* a file size limit gives EFBIG, not a dead process */
    if (load_key(cfg, key, &have_key, err, errlen) < 0 ||
        target(cfg, output, dir, sizeof(dir), name, sizeof(name), &standard, err, errlen) < 0 ||
        (lockfd = lock_dir(dir, err, errlen)) < 0)
        goto out;
    snprintf(tmp, sizeof(tmp), "%s/.authd-XXXXXX.tmp", dir);
    if ((fd = mkostemps(tmp, 4, O_CLOEXEC)) < 0) {
        error_set(err, errlen, "mkstemp(%s): %s", tmp, strerror(errno));
        tmp[0] = '\0';
        goto out;
    }
    if (write_backup(cfg, fd, tmp, have_key ? key : NULL, res, err, errlen) < 0)
        goto out;
    close(fd);
    fd = -1;
    if (place(tmp, dir, name, standard, res->path, sizeof(res->path), err, errlen) < 0)
        goto out;
    tmp[0] = '\0';
    fsync_dir(dir);
    res->encrypted = have_key;
    res->finished_ms = wall_ms();
    res->duration_ms = mono_ms() - t0;
    if (standard)
        res->deleted = retention_apply(cfg, dir, strrchr(res->path, '/') + 1);
    ret = 0;
out:
    if (fd >= 0)
        close(fd);
    if (tmp[0] != '\0')
        unlink(tmp);
    if (lockfd >= 0)
        close(lockfd);
    OPENSSL_cleanse(key, sizeof(key));
    if (ret < 0)
        res->duration_ms = mono_ms() - t0;
    return ret;
}

int backup_verify(const struct config *cfg, const char *path, struct backup_info *info, char *err,
                  size_t errlen)
{
    unsigned char key[BACKUP_KEY_LEN];
    int have_key, ret = -1;

    if (load_key(cfg, key, &have_key, err, errlen) < 0)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error_set(err, errlen, "open(%s): %s", path, strerror(errno));
        goto out;
    }
    /* The reader itself refuses an unencrypted file when a key is set. */
    ret = verify_fd(fd, have_key ? key : NULL, path, info, err, errlen);
    close(fd);
out:
    OPENSSL_cleanse(key, sizeof(key));
    return ret;
}

struct restore_ctx {
    struct backup_reader *r;
};

static int restore_next(void *ctx, const char **collection, json_t **doc)
{
    struct restore_ctx *rc = ctx;
    return backup_reader_next(rc->r, collection, doc);
}

/*
 * Second pass: streams the file, verified through the same descriptor `fd`, into the store.
 * (Not a new open() of the path: the file could have been replaced since the verification.)
 */
static int restore_into(const struct store_driver *drv, struct store *st, int fd, const char *path,
                        const unsigned char *key, char *err, size_t errlen)
{
    char e[512] = "";
    int ret = -1;

    if (lseek(fd, 0, SEEK_SET) != 0) {
        error_set(err, errlen, "lseek(%s): %s", path, strerror(errno));
        return -1;
    }
    struct restore_ctx ctx = {backup_reader_open(fd, key, e, sizeof(e))};
    if (ctx.r == NULL) {
        error_set(err, errlen, "%s: %s", path, e);
    } else if (drv->restore(st, restore_next, &ctx) != STORE_OK) {
        error_set(err, errlen, "restore into the %s store failed: %s", drv->name,
                  backup_reader_error(ctx.r)[0] ? backup_reader_error(ctx.r)
                                                : "see the log line above");
    } else {
        ret = 0;
    }
    backup_reader_free(ctx.r);
    return ret;
}

int backup_restore(const struct config *cfg, const char *path, int force, struct backup_info *info,
                   char *err, size_t errlen)
{
    const struct store_driver *drv = store_driver_find(cfg->store.driver);
    unsigned char key[BACKUP_KEY_LEN];
    char e[512] = "";
    struct store *st = NULL;
    struct backup_info local;
    int have_key, fd = -1, ret = -1;
    int64_t users = 0;

    if (info == NULL)
        info = &local;
    if (drv == NULL || drv->restore == NULL || drv->count_users == NULL) {
        error_set(err, errlen, "store.driver \"%s\" cannot be restored by this authd",
                  cfg->store.driver);
        return -1;
    }
    if (load_key(cfg, key, &have_key, err, errlen) < 0)
        return -1;
    /* One open: the verification and the restore read the same file, whatever happens to the
     * path in between. */
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        error_set(err, errlen, "open(%s): %s", path, strerror(errno));
    struct stat before, after;
    if (fd >= 0 && (fstat(fd, &before) < 0 || !S_ISREG(before.st_mode))) {
        error_set(err, errlen, "%s: not a regular file", path);
        close(fd);
        fd = -1;
    }
    if (fd < 0 || verify_fd(fd, have_key ? key : NULL, path, info, err, errlen) < 0) {
        size_t l = strlen(err);
        error_set(err + l, errlen - l, " (the store was not touched)");
        goto out;
    }
    /* Someone with write access to the file itself could still change it in place: refuse a
     * file that changed during the verification (the second pass checks every chunk, the
     * counts and the SHA-256 again, and SQLite rolls back when it fails). */
    if (fstat(fd, &after) < 0 || after.st_size != before.st_size ||
        after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
        after.st_mtim.tv_nsec != before.st_mtim.tv_nsec) {
        error_set(err, errlen,
                  "%s: the file changed while it was verified (the store was not "
                  "touched)",
                  path);
        goto out;
    }
    if ((st = drv->open(cfg, 1, e, sizeof(e))) == NULL) {
        error_set(err, errlen, "store: %s", e);
        goto out;
    }
    if (drv->count_users(st, &users) != STORE_OK) {
        error_set(err, errlen, "cannot count the users in the store (see the log)");
        goto out;
    }
    if (users > 0 && !force) {
        error_set(err, errlen,
                  "the %s store holds %lld users; restore replaces everything in it: add --force "
                  "(and stop authd first)",
                  drv->name, (long long)users);
        goto out;
    }
    if (restore_into(drv, st, fd, path, have_key ? key : NULL, err, errlen) < 0)
        goto out;
    if (drv->count_users(st, &users) != STORE_OK || users != info->counts[0]) {
        error_set(err, errlen, "after the restore the store holds %lld users, the file %lld",
                  (long long)users, (long long)info->counts[0]);
        goto out;
    }
    ret = 0;
out:
    if (st != NULL)
        drv->close(st);
    if (fd >= 0)
        close(fd);
    OPENSSL_cleanse(key, sizeof(key));
    return ret;
}

void backup_describe_result(const struct backup_result *res, char *out, size_t outlen)
{
    snprintf(out, outlen,
             "%s: %lld bytes, %lld users, %lld sessions, %lld refresh tokens, %lld audit events, "
             "%.2fs, %s%s",
             res->path, (long long)res->size, (long long)res->counts[0], (long long)res->counts[1],
             (long long)res->counts[2], (long long)res->counts[3], res->duration_ms / 1e3,
             res->encrypted ? "encrypted" : "not encrypted",
             res->deleted > 0 ? ", older backups deleted by retention" : "");
}

void backup_describe_info(const char *path, const struct backup_info *info, char *out,
                          size_t outlen)
{
    char when[32] = "(invalid time)";
    time_t t = (time_t)(info->created_ms / 1000);
    struct tm tm;

    if (gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(out, outlen,
             "%s: format %u, %s store, created %s, %s, %lld bytes in %llu chunks, %lld users, "
             "%lld sessions, %lld refresh tokens, %lld audit events, SHA-256 ok",
             path, info->version, info->driver, when,
             info->flags & BACKUP_FLAG_AES_GCM ? "encrypted (AES-256-GCM)" : "not encrypted",
             (long long)info->size, (unsigned long long)info->chunks, (long long)info->counts[0],
             (long long)info->counts[1], (long long)info->counts[2], (long long)info->counts[3]);
}
