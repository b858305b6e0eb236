#!/bin/bash
# backup: `authd backup` through the running master (a child process; result in status and
# /metrics) under a concurrent login/refresh load with zero failed requests; 1,000 users backed
# up, wiped, restored (counts equal, sampled logins and refreshes succeed, refresh tokens behave
# as documented); restore refuses a store with users without --force; verify catches tampered,
# truncated, wrong-key and wrong-version files (exit 1, one clear line); a full disk (tmpfs) and
# a file size limit (ulimit -f) give a clear error, leave no partial file and keep earlier
# backups; retention keeps backup.keep files; the CLI backs up by itself when no master runs;
# scripts/backup-cron. With AUTHD_TEST_MONGO_URI set, the round trip also goes through MongoDB.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MONGO_URI=${AUTHD_TEST_MONGO_URI:-} # itest_init unsets every AUTHD_* variable
itest_init
need_python
need_tool sha256sum sqlite3 flock

NUSERS=${BACKUP_TEST_USERS:-1000}
# shellcheck disable=SC2034 # read by start_server (lib.sh)
EXTRA_CONFIG='password = { memory_kib = 1024; iterations = 1; };'
export AUTHD_BACKUP_KEEP=3
start_server 60
BK="$T/backups"

# ---- a small HTTPS client (keep-alive connections, threads) ----
cat >"$T/client.py" <<'PYEOF'
import http.client, json, random, ssl, sys, threading, time

port = int(sys.argv[1])
mode = sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def pw(i):
    return "correct horse battery staple %d" % i

def email(i):
    return "user%d@example.com" % i

class Client:
    def __init__(self):
        self.c = None
    def call(self, path, body):
        for attempt in range(2):
            try:
                if self.c is None:
                    self.c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
                self.c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                r = self.c.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.c.close()
                    self.c = None
                return r.status, (json.loads(data) if data else None)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                # a keep-alive connection the server closed between two requests: retry once
                self.c = None
                if attempt == 1:
                    return 0, {"error": str(e)}
            except Exception as e:
                self.c = None
                return 0, {"error": "%s: %s" % (type(e).__name__, e)}

def run_threads(n, fn):
    ts = [threading.Thread(target=fn, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

if mode == "register":  # register N: users 0..N-1
    n = int(sys.argv[3])
    bad = []
    def work(k):
        c = Client()
        for i in range(k, n, 8):
            st, b = c.call("/v1/auth/register", {"email": email(i), "password": pw(i)})
            if st != 201:
                bad.append((i, st, b))
    run_threads(8, work)
    print(json.dumps({"failed": len(bad), "first": bad[:3]}))
    sys.exit(1 if bad else 0)

if mode == "login":  # login I...: prints {"email": [access, refresh]} for each
    c = Client()
    out = {}
    for i in map(int, sys.argv[3:]):
        st, b = c.call("/v1/auth/login", {"email": email(i), "password": pw(i)})
        if st != 200:
            print("login %s: %s %s" % (email(i), st, b), file=sys.stderr)
            sys.exit(1)
        out[str(i)] = b["refresh_token"]
    print(json.dumps(out))
    sys.exit(0)

if mode == "refresh":  # refresh TOKEN: prints status and the new token
    st, b = Client().call("/v1/auth/refresh", {"refresh_token": sys.argv[3]})
    print(st, (b or {}).get("refresh_token") or (b or {}).get("error"))
    sys.exit(0)

if mode == "load":  # load N STOPFILE: logins and refreshes of users 0..N-1 until STOPFILE exists
    import os
    n, stop = int(sys.argv[3]), sys.argv[4]
    stats = {"ok": 0, "failed": 0, "errors": []}
    lock = threading.Lock()
    def work(k):
        c = Client()
        rnd = random.Random(k)
        while not os.path.exists(stop):
            i = rnd.randrange(n)
            st, b = c.call("/v1/auth/login", {"email": email(i), "password": pw(i)})
            results = [st == 200]
            if st == 200:
                rt = b["refresh_token"]
                for _ in range(2):
                    st, b = c.call("/v1/auth/refresh", {"refresh_token": rt})
                    results.append(st == 200)
                    if st != 200:
                        break
                    rt = b["refresh_token"]
            with lock:
                for okay in results:
                    stats["ok" if okay else "failed"] += 1
                if not all(results) and len(stats["errors"]) < 5:
                    stats["errors"].append([st, b])
    run_threads(6, work)
    print(json.dumps(stats))
    sys.exit(0)
sys.exit("unknown mode")
PYEOF
client() {
    "$PY" "$T/client.py" "$PORT" "$@"
}

# ---- 1,000 users, some sessions ----
t0=$(now_ms)
out=$(client register "$NUSERS") || fail "registering $NUSERS users: $out"
note "registered $NUSERS users in $(($(now_ms) - t0)) ms"
SAMPLE="0 1 17 333 $((NUSERS - 1))"
# shellcheck disable=SC2086 # SAMPLE is a list
tokens=$(client login $SAMPLE) || fail "sample logins"
rt_of() { printf '%s' "$tokens" | json "d['$1']"; }
RT_KEEP=$(rt_of 17)    # not used again before the restore: works after it
RT_ROTATED=$(rt_of 333) # rotated after the backup: the restore brings the old one back

# ---- backup through the master under a login/refresh load ----
rm -f "$T/stop"
bg client load "$NUSERS" "$T/stop" >"$T/load.out"
LOAD_PID=$BG_PID
sleep 1
for i in 1 2 3 4 5; do
    out=$(authd backup 2>&1) || fail "authd backup #$i under load exited $?: $out"
    expect_match "$out" "^ok: $BK/authd-[0-9]{8}T[0-9]{6}Z(-[0-9]+)?\\.bak: [0-9]+ bytes, $NUSERS users, " "backup #$i answer"
    sleep 0.3
done
BACKUP=$(printf '%s' "$out" | sed -E 's/^ok: ([^:]+): .*/\1/')
sleep 1
touch "$T/stop"
wait "$LOAD_PID" || fail "load generator failed"
load=$(cat "$T/load.out")
note "load during the backups: $load"
expect_eq "$(printf '%s' "$load" | json "d['failed']")" 0 "failed requests during the backups"
(($(printf '%s' "$load" | json "d['ok']") > 50)) || fail "the load generator did too little: $load"

# The master ran them (a child; the log says so) and recorded the outcome.
grep -q '"msg":"backup complete: ' "$SERVER_STDERR" || fail "no 'backup complete' log line"
expect_eq "$(metric authd_backup_success_total)" 5 "authd_backup_success_total"
expect_eq "$(metric authd_backup_failures_total)" 0 "authd_backup_failures_total"
expect_eq "$(metric authd_backup_running)" 0 "authd_backup_running"
(($(metric authd_backup_last_success_timestamp_seconds) >= $(date +%s) - 60)) ||
    fail "authd_backup_last_success_timestamp_seconds is not recent"
expect_eq "$(metric authd_backup_last_size_bytes)" "$(stat -c %s "$BACKUP")" "authd_backup_last_size_bytes"
js=$(status_json)
expect_eq "$(printf '%s' "$js" | json "d['backup']['successes']")" 5 "status --json backup.successes"
expect_contains "$(authd status)" "last backup: " "authd status text"

# Retention: backup.keep = 3 files, the newest; nothing else left behind.
expect_eq "$(find "$BK" -name 'authd-*.bak' | wc -l)" 3 "backups kept (backup.keep = 3)"
expect_eq "$(find "$BK" -name '.authd-*' ! -name .authd-backup.lock | wc -l)" 0 "temporary files left"
expect_eq "$(stat -c %a "$BACKUP")" 600 "backup file mode"

# ---- verify, and files that must fail ----
out=$(authd backup verify "$BACKUP") || fail "verify: $out"
expect_contains "$out" "$NUSERS users" "verify output"
expect_contains "$out" "SHA-256 ok" "verify output"
size=$(stat -c %s "$BACKUP")
head -c $((size - 100)) "$BACKUP" >"$T/trunc.bak"
head -c 2000 "$BACKUP" >"$T/trunc2.bak"
cp "$BACKUP" "$T/tamper.bak"
printf '\x5a' | dd of="$T/tamper.bak" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
cp "$BACKUP" "$T/version.bak"
printf '\x07' | dd of="$T/version.bak" bs=1 seek=9 conv=notrunc 2>/dev/null
for f in trunc trunc2 tamper version; do
    rc=0
    out=$(authd backup verify "$T/$f.bak" 2>&1) || rc=$?
    expect_eq "$rc" 1 "verify of $f.bak"
    expect_eq "$(printf '%s\n' "$out" | wc -l)" 1 "verify of $f.bak: one line"
    expect_match "$out" "^authd backup verify: $T/$f.bak: " "verify of $f.bak message"
    note "$f: $out"
done
expect_contains "$(authd backup verify "$T/version.bak" 2>&1)" "unsupported format version 7 (this authd reads 1)" "wrong version message"

# Encrypted backups (no master: the CLI runs it), wrong key, missing key.
openssl rand -hex 32 >"$T/bk.key"
openssl rand -hex 32 >"$T/other.key"
chmod 600 "$T/bk.key" "$T/other.key"
mkdir "$T/enc"
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" AUTHD_CONTROL_SOCKET="$T/none.sock" \
    authd backup --output "$T/enc") || fail "encrypted backup: $out"
expect_contains "$out" ", encrypted" "encrypted backup answer"
ENC=$(find "$T/enc" -name 'authd-*.bak')
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" authd backup verify "$ENC") || fail "verify encrypted: $out"
expect_contains "$out" "encrypted (AES-256-GCM)" "verify encrypted"
rc=0
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/other.key" authd backup verify "$ENC" 2>&1) || rc=$?
expect_eq "$rc" 1 "verify with the wrong key"
expect_contains "$out" "wrong key" "verify with the wrong key"
rc=0
out=$(authd backup verify "$ENC" 2>&1) || rc=$?
expect_eq "$rc" 1 "verify of an encrypted file without a key"
expect_contains "$out" "backup.encryption_key_file is not set" "verify without a key"
esize=$(stat -c %s "$ENC")
cp "$ENC" "$T/etamper.bak"
printf '\x01' | dd of="$T/etamper.bak" bs=1 seek=$((esize - 200)) conv=notrunc 2>/dev/null
rc=0
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" authd backup verify "$T/etamper.bak" 2>&1) || rc=$?
expect_eq "$rc" 1 "verify of a tampered encrypted file"
expect_contains "$out" "authentication failed" "tampered encrypted file"
chmod 644 "$T/bk.key"
rc=0
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" authd backup verify "$ENC" 2>&1) || rc=$?
expect_eq "$rc" 1 "a world-readable key file"
expect_contains "$out" "mode 0644" "a world-readable key file"
chmod 600 "$T/bk.key"
# With a key set, an unencrypted file is refused (its origin cannot be authenticated), by verify
# and by restore alike: the reader refuses it, so a file swapped in after the check cannot pass.
rc=0
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" authd backup verify "$BACKUP" 2>&1) || rc=$?
expect_eq "$rc" 1 "verify of an unencrypted file with a key set"
expect_contains "$out" "is not encrypted but backup.encryption_key_file is set" \
    "verify of an unencrypted file with a key set"
rc=0
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" AUTHD_STORE_PATH="$T/unenc.db" \
    authd restore "$BACKUP" 2>&1) || rc=$?
expect_eq "$rc" 1 "restore of an unencrypted file with a key set"
expect_contains "$out" "is not encrypted but backup.encryption_key_file is set" \
    "restore of an unencrypted file with a key set"
expect_contains "$out" "the store was not touched" "restore of an unencrypted file with a key set"
if ((EUID == 0)); then # a key file of another user (not root) is refused, whatever its mode
    chown 4242 "$T/bk.key"
    rc=0
    out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/bk.key" authd backup verify "$ENC" 2>&1) || rc=$?
    expect_eq "$rc" 1 "a key file owned by another user"
    expect_contains "$out" "owned by uid 4242" "a key file owned by another user"
    chown 0 "$T/bk.key"
fi

# ---- full disk: a small tmpfs with an earlier backup in it ----
FULL="$T/full"
mkdir "$FULL"
if mount -t tmpfs -o size=$((size * 3 / 1024 + 64))k tmpfs "$FULL" 2>/dev/null; then
    cleanup_mount() { umount "$FULL" 2>/dev/null || true; }
    trap 'cleanup_mount; itest_cleanup' EXIT
    cp "$BACKUP" "$FULL/authd-20200101T000000Z.bak"
    before=$(sha256sum "$FULL/authd-20200101T000000Z.bak")
    free_kb=$(df -k --output=avail "$FULL" | tail -1)
    fill_kb=$((free_kb - size / 1024 / 2))
    ((fill_kb > 0)) && dd if=/dev/zero of="$FULL/filler" bs=1k count="$fill_kb" 2>/dev/null
    rc=0
    out=$(authd backup --output "$FULL" 2>&1) || rc=$?
    expect_eq "$rc" 1 "backup into a full tmpfs (through the master)"
    expect_contains "$out" "No space left on device" "full disk message"
    note "full disk: $out"
    expect_eq "$(find "$FULL" -name '*.bak' | wc -l)" 1 "backups in the full tmpfs"
    expect_eq "$(find "$FULL" -name '.authd-*.tmp' | wc -l)" 0 "partial files in the full tmpfs"
    expect_eq "$(sha256sum "$FULL/authd-20200101T000000Z.bak")" "$before" "the earlier backup"
    expect_eq "$(metric authd_backup_failures_total)" 1 "authd_backup_failures_total after the full disk"
    expect_contains "$(authd status)" "LAST ATTEMPT FAILED" "status after a failed backup"
    cleanup_mount
else
    note "cannot mount a tmpfs (not root?): full-disk check through ulimit -f only"
fi
# A file size limit (the CLI without a master): EFBIG, nothing left behind. The limit also
# stops the SQLite snapshot (as large as the database, beside it), which fails first.
mkdir "$T/small"
rc=0
out=$(ulimit -f 64 && AUTHD_CONTROL_SOCKET="$T/none.sock" authd backup --output "$T/small" 2>&1) || rc=$?
expect_eq "$rc" 1 "backup over ulimit -f"
expect_contains "$out" "File too large" "ulimit -f message"
expect_eq "$(find "$T/small" -name '*.bak' -o -name '*.tmp' | wc -l)" 0 "files left over ulimit -f"
expect_eq "$(find "$T" -maxdepth 1 -name 'authd.db.snapshot-*' | wc -l)" 0 "snapshots left over ulimit -f"

# A successful backup after the failures clears the failed flag.
out=$(authd backup) || fail "backup after the failures: $out"
expect_eq "$(authd status --json | json "d['backup']['last_failed']")" false "last_failed after a success"
BACKUP=$(printf '%s' "$out" | sed -E 's/^ok: ([^:]+): .*/\1/')

# ---- refresh tokens after the backup ----
read -r code RT_NEW < <(client refresh "$RT_ROTATED")
expect_eq "$code" 200 "rotation after the backup"

# ---- restore: refused without --force, then wipe and restore ----
rc=0
out=$(authd restore "$BACKUP" 2>&1) || rc=$?
expect_eq "$rc" 1 "restore over a store with users"
expect_contains "$out" "holds $NUSERS users" "restore refusal"
expect_contains "$out" "--force" "restore refusal"

# Register one more user: the restore must remove it.
"${CURL[@]}" -o /dev/null -H 'Content-Type: application/json' \
    --data '{"email":"after@example.com","password":"registered after the backup"}' \
    "$(https_url /v1/auth/register)"

authd stop >/dev/null || fail "authd stop"
wait_server_exit 30 || fail "server did not stop"
rm -f "$T/authd.db" "$T/authd.db-wal" "$T/authd.db-shm"
out=$(authd restore "$BACKUP") || fail "restore into a wiped store: $out"
expect_contains "$out" "$NUSERS users" "restore output"
note "$out"
expect_eq "$(sqlite3 "$T/authd.db" 'SELECT count(*) FROM users')" "$NUSERS" "users after the restore"
expect_eq "$(sqlite3 "$T/authd.db" "SELECT count(*) FROM users WHERE email = 'after@example.com'")" 0 "user registered after the backup"

# The CLI backs up by itself when no master runs (a CronJob pod).
out=$(authd backup) || fail "backup with no master: $out"
expect_contains "$out" "$NUSERS users" "backup with no master"
OFFLINE=$(printf '%s' "$out" | sed -E 's/^ok: ([^:]+): .*/\1/')

start_server 60
# shellcheck disable=SC2086
client login $SAMPLE 42 500 >/dev/null || fail "sampled logins after the restore"
read -r code _ < <(client refresh "$RT_KEEP")
expect_eq "$code" 200 "a refresh token unused since the backup works after the restore"
read -r code _ < <(client refresh "$RT_NEW")
expect_eq "$code" 401 "a token issued after the backup is unknown after the restore"
read -r code _ < <(client refresh "$RT_ROTATED")
expect_eq "$code" 200 "the token rotated after the backup is current again after the restore"

# Restore while the master runs (--force): one transaction; logins keep working.
out=$(authd restore --force "$OFFLINE" 2>&1) || fail "restore --force with a running master: $out"
# shellcheck disable=SC2086
client login $SAMPLE >/dev/null || fail "sampled logins after a live restore"

# ---- scripts/backup-cron ----
CRON="$AUTHD_SRCDIR/scripts/backup-cron"
if [[ -x "$CRON" ]]; then
    out=$(AUTHD_BIN="$AUTHD_BIN" AUTHD_CONFIG="$CONF" BACKUP_CRON_LOCK="$T/cron.lock" \
        BACKUP_CRON_SYSLOG=0 "$CRON" 2>&1) || fail "backup-cron: $out"
    expect_contains "$out" "backup-cron: ok in " "backup-cron log line"
    exec 9>"$T/cron.lock"
    flock 9
    rc=0
    out=$(AUTHD_BIN="$AUTHD_BIN" AUTHD_CONFIG="$CONF" BACKUP_CRON_LOCK="$T/cron.lock" \
        BACKUP_CRON_SYSLOG=0 "$CRON" 2>&1) || rc=$?
    exec 9>&-
    expect_eq "$rc" 75 "backup-cron while another run holds the lock"
    expect_contains "$out" "already running" "backup-cron overlap message"
fi

# ---- across drivers (MongoDB), when a test server is available ----
if [[ -n "$MONGO_URI" ]]; then
    db="authd_backup_test_$$"
    out=$(AUTHD_STORE_DRIVER=mongo AUTHD_STORE_URI="$MONGO_URI" AUTHD_STORE_DATABASE="$db" \
        AUTHD_CONTROL_SOCKET="$T/none.sock" authd restore --force "$OFFLINE" 2>&1) ||
        fail "restore of a SQLite backup into MongoDB: $out"
    expect_contains "$out" "$NUSERS users" "sqlite -> mongo restore"
    mkdir "$T/mongo"
    out=$(AUTHD_STORE_DRIVER=mongo AUTHD_STORE_URI="$MONGO_URI" AUTHD_STORE_DATABASE="$db" \
        AUTHD_CONTROL_SOCKET="$T/none.sock" authd backup --output "$T/mongo" 2>&1) ||
        fail "backup of MongoDB: $out"
    expect_contains "$out" "$NUSERS users" "mongo backup"
    MB=$(find "$T/mongo" -name 'authd-*.bak')
    out=$(AUTHD_STORE_PATH="$T/from-mongo.db" AUTHD_CONTROL_SOCKET="$T/none.sock" \
        authd restore "$MB" 2>&1) || fail "restore of a MongoDB backup into SQLite: $out"
    expect_eq "$(sqlite3 "$T/from-mongo.db" 'SELECT count(*) FROM users')" "$NUSERS" "mongo -> sqlite users"
    q="SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM refresh_tokens),
        (SELECT count(*) FROM audit_events), (SELECT password_hash FROM users WHERE email = 'user17@example.com'),
        (SELECT hex(hash) FROM refresh_tokens ORDER BY hash LIMIT 1)"
    AUTHD_STORE_PATH="$T/ref.db" AUTHD_CONTROL_SOCKET="$T/none.sock" authd restore "$OFFLINE" >/dev/null ||
        fail "restore of the SQLite backup into a new SQLite file"
    expect_eq "$(sqlite3 "$T/from-mongo.db" "$q")" "$(sqlite3 "$T/ref.db" "$q")" "sqlite -> mongo -> sqlite content"
    # The users restored into MongoDB log in there with their old passwords.
    authd stop >/dev/null || fail "authd stop before the MongoDB server"
    wait_server_exit 30 || fail "server did not stop"
    export AUTHD_STORE_DRIVER=mongo AUTHD_STORE_URI="$MONGO_URI" AUTHD_STORE_DATABASE="$db"
    start_server 60
    # shellcheck disable=SC2086
    client login $SAMPLE >/dev/null || fail "sampled logins on MongoDB after the sqlite -> mongo restore"
    authd stop >/dev/null || fail "authd stop (MongoDB)"
    wait_server_exit 30 || fail "server on MongoDB did not stop"
    unset AUTHD_STORE_DRIVER AUTHD_STORE_URI AUTHD_STORE_DATABASE
else
    note "AUTHD_TEST_MONGO_URI is not set: the SQLite <-> MongoDB round trip was not run"
fi

pass
