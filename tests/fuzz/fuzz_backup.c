/*
 * fuzz_backup: libFuzzer harness for the backup reader (master/backup.c), the code behind
 * `authd backup verify` and `authd restore`: header checks, chunk framing, AES-256-GCM,
 * the SHA-256 trailer, zlib and the JSON lines with their counts.
 *
 * The first input byte picks what the rest is (the file is a memfd the reader reads):
 *   'T'  a backup file without its SHA-256 trailer: the harness appends the right one, so
 *        mutations of the header, framing and compressed data reach inflate and the parser;
 *   'C'  one option byte (bit 0: encrypt; bits 1-3: chunk size) and then the decompressed
 *        content, JSON lines: the header comes from backup_writer_new, the harness compresses,
 *        cuts, seals (AES-256-GCM, as docs/operations.md describes the format) and hashes it;
 *   else the rest is the file as it is (seeds: real backups from `authd backup`, plain and
 *        encrypted with the test key below; tests/fuzz/make-backup-seeds.sh makes them).
 * Encrypted files are read with the test key, plain ones without a key. FUZZ_VERBOSE=1 prints
 * how far each input got.
 * Invariants: a file read to its end has per-collection record counts equal to its counts
 * line, info.size equal to the file's size, and documents that are JSON objects.
 */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "tests/fuzz/fuzz.h"

#include "master/backup.h"

/* Test key: 00 01 .. 1f (make-backup-seeds.sh writes the same one). */
static unsigned char key[BACKUP_KEY_LEN];
static const char *const names[BACKUP_COLLECTIONS] = {"users", "sessions", "refresh_tokens",
                                                      "audit_events"};
static const size_t chunk_sizes[8] = {BACKUP_CHUNK_MAX, 1, 7, 64, 512, 4096, 16384, 65535};
static int fd = -1;

static void die(const char *what)
{
    fuzz_die("fuzz_backup", what);
}

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

static void append(const void *p, size_t n)
{
    if (n > 0 && write(fd, p, n) != (ssize_t)n)
        die("write to the memfd");
}

static void sha256_of_file(unsigned char md[32])
{
    struct stat st;

    if (fstat(fd, &st) != 0)
        die("fstat");
    unsigned char *all = malloc((size_t)st.st_size + 1);
    if (all == NULL || pread(fd, all, (size_t)st.st_size, 0) != st.st_size ||
        EVP_Digest(all, (size_t)st.st_size, md, NULL, EVP_sha256(), NULL) != 1)
        die("sha256");
    free(all);
}

/* AES-256-GCM of one chunk in place: AAD = header || be64 index || word; nonce = base ^ index. */
static void seal(const unsigned char *hdr, uint64_t ix, const unsigned char word[4],
                 unsigned char *data, size_t len, unsigned char tag[BACKUP_TAG_LEN])
{
    unsigned char aad[BACKUP_HEADER_LEN + 12], nonce[12];
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int outl;

    memcpy(aad, hdr, BACKUP_HEADER_LEN);
    put_be(aad + BACKUP_HEADER_LEN, ix, 8);
    memcpy(aad + BACKUP_HEADER_LEN + 8, word, 4);
    memcpy(nonce, hdr + 40, 12);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] ^= (unsigned char)(ix >> (56 - 8 * i));
    if (c == NULL || EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_EncryptUpdate(c, NULL, &outl, aad, (int)sizeof(aad)) != 1 ||
        (len > 0 && EVP_EncryptUpdate(c, data, &outl, data, (int)len) != 1) ||
        EVP_EncryptFinal_ex(c, data + len, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, BACKUP_TAG_LEN, tag) != 1)
        die("AES-256-GCM");
    EVP_CIPHER_CTX_free(c);
}

/* 'C': a whole valid file around `content` (compressed, chunked, maybe sealed, hashed). */
static void build_file(const uint8_t *content, size_t len, unsigned opt)
{
    int enc = opt & 1;
    size_t chunk = chunk_sizes[(opt >> 1) & 7];
    char err[256];
    unsigned char hdr[BACKUP_HEADER_LEN], md[32];
    struct backup_writer *w =
        backup_writer_new(fd, "sqlite", 1700000000000, enc ? key : NULL, err, sizeof(err));
    uLongf zlen = compressBound((uLong)len);
    unsigned char *z = malloc(zlen), *buf = malloc(chunk + BACKUP_TAG_LEN);

    if (w == NULL || z == NULL || buf == NULL || pread(fd, hdr, sizeof(hdr), 0) != sizeof(hdr) ||
        compress2(z, &zlen, content, (uLong)len, Z_DEFAULT_COMPRESSION) != Z_OK)
        die("cannot build the file");
    backup_writer_free(w); /* the header is written; the writer adds nothing more */
    for (uint64_t ix = 0, off = 0; off < zlen || ix == 0; ix++) {
        size_t n = zlen - off < chunk ? zlen - off : chunk;
        unsigned char word[4];
        put_be(word, n | (off + n == zlen ? 0x80000000u : 0), 4);
        memcpy(buf, z + off, n);
        if (enc)
            seal(hdr, ix, word, buf, n, buf + n);
        append(word, 4);
        append(buf, n + (enc ? BACKUP_TAG_LEN : 0));
        off += n;
    }
    sha256_of_file(md);
    append(md, sizeof(md));
    free(buf);
    free(z);
}

static void read_all(size_t file_size)
{
    unsigned char flags[2] = {0, 0};
    char err[512], line[4200];
    int64_t seen[BACKUP_COLLECTIONS] = {0};
    const char *coll;
    json_t *doc;
    int rc;

    if (pread(fd, flags, 2, 10) < 0)
        die("pread");
    struct backup_reader *r = backup_reader_open(fd, (flags[1] & 2) ? key : NULL, err, sizeof(err));
    if (r == NULL) {
        if (getenv("FUZZ_VERBOSE") != NULL)
            fprintf(stderr, "fuzz_backup: open: %s\n", err);
        return;
    }
    while ((rc = backup_reader_next(r, &coll, &doc)) == 1) {
        int i = 0;
        while (i < BACKUP_COLLECTIONS && strcmp(coll, names[i]) != 0)
            i++;
        if (i == BACKUP_COLLECTIONS || !json_is_object(doc))
            die("a record of no known collection, or not an object");
        seen[i]++;
        json_decref(doc);
    }
    const struct backup_info *info = backup_reader_info(r);
    if (rc == 0) {
        for (int i = 0; i < BACKUP_COLLECTIONS; i++)
            if (seen[i] != info->counts[i])
                die("records read differ from the counts line");
        if (info->size != (int64_t)file_size || info->chunks == 0)
            die("info.size is not the file's size, or no chunk");
        backup_describe_info("fuzz.bak", info, line, sizeof(line));
    } else if (backup_reader_error(r)[0] == '\0') {
        die("a failed read without a message");
    }
    if (getenv("FUZZ_VERBOSE") != NULL) /* what a seed reaches, for whoever edits the corpus */
        fprintf(stderr, "fuzz_backup: %s\n", rc == 0 ? line : backup_reader_error(r));
    backup_reader_free(r);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    for (int i = 0; i < BACKUP_KEY_LEN; i++)
        key[i] = (unsigned char)i;
    fd = memfd_create("fuzz_backup", MFD_CLOEXEC);
    if (fd < 0)
        die("memfd_create");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char md[32];
    struct stat st;

    if (size < 1 || ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
        return 0;
    if (data[0] == 'C' && size >= 2) {
        build_file(data + 2, size - 2, data[1]);
    } else {
        append(data + 1, size - 1);
        if (data[0] == 'T') {
            sha256_of_file(md);
            append(md, sizeof(md));
        }
    }
    if (fstat(fd, &st) != 0 || lseek(fd, 0, SEEK_SET) != 0)
        die("fstat/lseek");
    read_all((size_t)st.st_size);
    return 0;
}
