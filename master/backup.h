/*
 * backup: the backup file format and the backup, verify and restore operations.
 *
 * A backup is one file: a 64-byte versioned header, then the zlib-compressed JSON lines of every
 * store record ({"collection","doc"}, then one {"counts"} line) cut into chunks of at most
 * BACKUP_CHUNK_MAX bytes, each sealed with AES-256-GCM when a key is configured (nonce = random
 * base XOR chunk index; header, index and the final-chunk flag are bound into the AAD, so
 * tampering, truncation and reordering fail), then a SHA-256 of everything before it.
 * docs/operations.md describes it byte by byte.
 *
 * Files are written under a temporary name in the target directory, fsynced, read back and
 * verified, then renamed and the directory fsynced: a crash or a full disk never leaves a file
 * that looks valid. Retention runs only after a verified success.
 */
#ifndef AUTHD_BACKUP_H
#define AUTHD_BACKUP_H

#include <jansson.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"

#define BACKUP_MAGIC          "AUTHDBK1"
#define BACKUP_FORMAT_VERSION 1
#define BACKUP_HEADER_LEN     64
#define BACKUP_CHUNK_MAX      65536 /* payload bytes per chunk (before the GCM tag) */
#define BACKUP_KEY_LEN        32
#define BACKUP_TAG_LEN        16
#define BACKUP_SHA_LEN        32
#define BACKUP_FLAG_ZLIB      0x0001u
#define BACKUP_FLAG_AES_GCM   0x0002u
#define BACKUP_COLLECTIONS    4 /* STORE_COLLECTIONS */

/* What the header and the content say about a file. */
struct backup_info {
    unsigned version;
    unsigned flags;
    int64_t created_ms;
    char driver[17];
    char key_id[17]; /* hex of the 8-byte key id; "" when unencrypted */
    int64_t counts[BACKUP_COLLECTIONS];
    uint64_t chunks;
    int64_t size; /* bytes */
};

/* The outcome of one backup, as `authd backup` reports it and the master records it. */
struct backup_result {
    char path[4096];
    int64_t size;
    int64_t duration_ms;
    int64_t finished_ms; /* wall clock */
    int64_t counts[BACKUP_COLLECTIONS];
    int encrypted;
    int deleted; /* old backups removed by retention */
};

/* Set by a signal handler of the process running a backup: the backup stops and cleans up. */
extern volatile sig_atomic_t backup_cancel;

/*
 * Reads a key file: exactly 32 raw bytes, or 64 hex digits (optionally followed by a newline).
 * Refuses a file that others can read or anyone but its owner/group can write.
 */
int backup_key_load(const char *path, unsigned char key[BACKUP_KEY_LEN], char *err, size_t errlen);
/* 1 when backups of `cfg` are encrypted (backup.encryption_key_file is set), else 0. */
int backup_encrypted(const struct config *cfg);
/* The plain warning `config check`, `status` and the log give while backups are not encrypted. */
#define BACKUP_UNENCRYPTED_WARNING                                                                 \
    "backups are NOT encrypted (backup.encryption_key_file is not set): a backup file holds "      \
    "password hashes, email addresses and client IP addresses in clear; set a key before "         \
    "production (docs/operations.md, production checklist)"

/* ---- streaming writer and reader (the format) ---- */

struct backup_writer;

/* Writes the header to `fd` (owned by the caller). `key` NULL: unencrypted. */
struct backup_writer *backup_writer_new(int fd, const char *driver, int64_t created_ms,
                                        const unsigned char *key, char *err, size_t errlen);
/* Appends one record. 0, or -1 with the message in the writer's err buffer. */
int backup_writer_record(struct backup_writer *w, const char *collection, json_t *doc);
/* Writes the counts line, the final chunk and the trailer. 0 or -1; *size_r = file size. */
int backup_writer_finish(struct backup_writer *w, int64_t *size_r);
void backup_writer_free(struct backup_writer *w);

struct backup_reader;

/* Reads and checks the header of `fd` (owned by the caller). `key` NULL: none configured. */
struct backup_reader *backup_reader_open(int fd, const unsigned char *key, char *err,
                                         size_t errlen);
/*
 * Next record: 1 with *collection (valid until the next call) and *doc (a new reference),
 * 0 at the end of a complete, authentic file, -1 with backup_reader_error() set.
 */
int backup_reader_next(struct backup_reader *r, const char **collection, json_t **doc);
const char *backup_reader_error(const struct backup_reader *r);
const struct backup_info *backup_reader_info(const struct backup_reader *r);
void backup_reader_free(struct backup_reader *r);

/* ---- operations ---- */

/*
 * Backs the configured store up into `output` (NULL: backup.directory; a directory: a new
 * authd-<UTC time>.bak in it; else that file, which must not exist). Retention runs in the
 * directory when the standard name was used. 0, or -1 with a one-line message.
 */
int backup_run(const struct config *cfg, const char *output, struct backup_result *res, char *err,
               size_t errlen);

/* Checks a whole file (integrity, key, content) without touching the store. 0 or -1. */
int backup_verify(const struct config *cfg, const char *path, struct backup_info *info, char *err,
                  size_t errlen);

/*
 * Verifies `path`, then replaces the configured store's content with it. Refuses a store that
 * holds users unless `force`. 0 or -1.
 */
int backup_restore(const struct config *cfg, const char *path, int force, struct backup_info *info,
                   char *err, size_t errlen);

/* One line describing a result / a verified file (for the CLI and the control socket). */
void backup_describe_result(const struct backup_result *res, char *out, size_t outlen);
void backup_describe_info(const char *path, const struct backup_info *info, char *out,
                          size_t outlen);

/* ---- retention (pure) ---- */

/* Unix time of a backup name authd-YYYYMMDDTHHMMSSZ[-N].bak; -1 when not such a name. */
int64_t backup_name_time(const char *name);

/*
 * Marks in doomed[i] the backups of names[0..n) that retention deletes: all but the newest `keep`
 * and, when max_age > 0, those older than max_age seconds at `now`. Names that are not backup
 * names and `just_written` are never marked. Returns the number marked.
 */
size_t backup_retention(const char *const *names, size_t n, int keep, double max_age, int64_t now,
                        const char *just_written, int *doomed);

/* The newest backup in `dir`: its time (ms) and size; 0, or -1 when there is none. */
int backup_newest(const char *dir, int64_t *time_ms_r, int64_t *size_r);

#endif
