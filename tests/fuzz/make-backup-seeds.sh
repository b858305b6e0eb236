#!/bin/bash
# Makes the real backups of tests/fuzz/corpus/backup/ with the authd binary: a server on a
# fresh SQLite store, two registered users (sessions, refresh tokens, audit events), then
# `authd backup` plain and encrypted with the harness's test key (fuzz_backup.c FUZZ_KEY_HEX).
# The first byte of each seed is the harness's mode byte ('R': the file as it is).
#
#   AUTHD_BIN=$PWD/build-san/authd bash tests/fuzz/make-backup-seeds.sh
# shellcheck source=../integration/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../integration/lib.sh"
itest_init
# shellcheck disable=SC2034 # read by start_server (lib.sh)
EXTRA_CONFIG='password = { memory_kib = 1024; iterations = 1; };'
start_server 60
out=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/corpus/backup
for who in ada grace; do
    "${CURL[@]}" -H 'Content-Type: application/json' -d "{\"email\":\"$who@example.com\",\"password\":\"correct horse $who\"}" \
        "$(https_url /v1/auth/register)" >/dev/null
    "${CURL[@]}" -H 'Content-Type: application/json' -d "{\"email\":\"$who@example.com\",\"password\":\"correct horse $who\"}" \
        "$(https_url /v1/auth/login)" >/dev/null
done
printf '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n' >"$T/bk.key"
chmod 600 "$T/bk.key"
mkdir "$T/plain" "$T/enc"
AUTHD_CONTROL_SOCKET="$T/none.sock" authd backup --output "$T/plain"
AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" AUTHD_CONTROL_SOCKET="$T/none.sock" \
    authd backup --output "$T/enc"
{ printf R; cat "$T"/plain/authd-*.bak; } >"$out/real_plain"
{ printf R; cat "$T"/enc/authd-*.bak; } >"$out/real_encrypted"
ls -l "$out/real_plain" "$out/real_encrypted"
pass
