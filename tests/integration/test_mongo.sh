#!/bin/bash
# mongo: authd with store.driver = "mongo" end to end, against the MongoDB-wire test server that
# scripts/mongo-test-server installs from npm (its own instance on a free port, so that this test
# may stop it): register (and 409 email_taken), login, /v1/me, refresh rotation and reuse
# detection, logout, /readyz, `authd migrate` beside a running server, a backup restored into
# SQLite and back into MongoDB. Then, under a steady load
# of refreshes, MongoDB hangs (SIGSTOP) and later dies (SIGTERM): requests that need the store
# get 503 store_unavailable within store.timeout plus a margin, /readyz answers 503 naming the
# store, /healthz stays fast; when MongoDB is back, authd recovers by itself, with the same master
# and workers. (The test server keeps its data in memory: after its restart it starts empty.)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python
need_tool node npm

MONGO=$AUTHD_SRCDIR/scripts/mongo-test-server
TIMEOUT=1 # store.timeout, seconds
MARGIN=0.75 # scheduling under the sanitizers on a busy machine
"$MONGO" install >"$T/mongo-install.log" 2>&1 ||
    fail "scripts/mongo-test-server install failed: $(tail -5 "$T/mongo-install.log")"
MPORT=$(pick_port)
MONGO_PID=""

mongo_start() {
    bg "$MONGO" run "$MPORT" >>"$T/mongo.log" 2>&1
    MONGO_PID=$BG_PID
    wait_until 15 "$MONGO" ping "$MPORT" 1 || fail "the test server did not answer on $MPORT"
    note "MongoDB-wire server pid $MONGO_PID on 127.0.0.1:$MPORT"
}

mongo_start
export AUTHD_STORE_DRIVER=mongo AUTHD_STORE_URI="mongodb://127.0.0.1:$MPORT"
export AUTHD_STORE_DATABASE="authd_itest_$$" AUTHD_STORE_TIMEOUT=$TIMEOUT
EXTRA_CONFIG='password = { memory_kib = 1024; iterations = 1; };'
start_server

# ---- helpers (as in test_auth.sh) ----

api() { # METHOD PATH [BODY [CURL ARGS...]]: sets CODE, BODY
    local method=$1 path=$2 body=${3-}
    shift 2
    (($# > 0)) && shift
    local a=(-X "$method" -o "$T/b.out" -w '%{http_code}')
    [[ -n "$body" ]] && a+=(-H 'Content-Type: application/json' --data-binary "$body")
    rm -f "$T/b.out"
    CODE=$("${CURL[@]}" "${a[@]}" "$@" "$(https_url "$path")" 2>"$T/curl.err") || true
    [[ -n "$CODE" ]] || CODE=000
    BODY=$(cat "$T/b.out" 2>/dev/null || true)
}

jget() {
    printf '%s' "$BODY" | json "$1"
}

expect_status() { # STATUS [ERROR_CODE] WHAT
    [[ "$CODE" == "$1" ]] || fail "$3: expected HTTP $1, got $CODE: $(printf '%s' "$BODY" | head -c 600)"
    [[ -z "$2" ]] || expect_eq "$(jget "d.get('error')")" "$2" "$3 error code"
}

jobj() {
    "$PY" -c 'import json, sys
a = sys.argv[1:]
print(json.dumps(dict(zip(a[0::2], a[1::2]))))' "$@"
}

login() { # EMAIL PASSWORD: sets AT, RT
    api POST /v1/auth/login "$(jobj email "$1" password "$2")"
    expect_status 200 "" "login $1"
    AT=$(jget "d['access_token']")
    RT=$(jget "d['refresh_token']")
}

readyz() { # sets CODE, BODY
    CODE=$(curl -s --noproxy '*' --max-time 10 -o "$T/r.out" -w '%{http_code}' \
        "$(admin_url /readyz)" 2>/dev/null) || true
    BODY=$(cat "$T/r.out" 2>/dev/null || true)
}

# ---- the API on the mongo driver ----

PW="correct horse battery staple"
api POST /v1/auth/register "$(jobj email " Ada@Example.COM " password "$PW")"
expect_status 201 "" "register"
UID1=$(jget "d['user']['id']")
api POST /v1/auth/register "$(jobj email "ada@example.com" password "$PW")"
expect_status 409 email_taken "register the same email again"
login ada@example.com "$PW"
AT1=$AT RT1=$RT
api GET /v1/me "" -H "Authorization: Bearer $AT1"
expect_status 200 "" "/v1/me"
expect_eq "$(jget "d['user']['id']")" "$UID1" "/v1/me user id"
api POST /v1/auth/refresh "$(jobj refresh_token "$RT1")"
expect_status 200 "" "refresh"
RT2=$(jget "d['refresh_token']")
api POST /v1/auth/refresh "$(jobj refresh_token "$RT1")"
expect_status 401 invalid_grant "refresh with the rotated token (reuse)"
api POST /v1/auth/refresh "$(jobj refresh_token "$RT2")"
expect_status 401 invalid_grant "refresh after reuse revoked the family"
login ada@example.com "$PW"
api GET /v1/me/sessions "" -H "Authorization: Bearer $AT"
expect_status 200 "" "session list"
expect_eq "$(jget "len(d['sessions'])")" 1 "active sessions (the reused family is revoked)"
api POST /v1/auth/logout "$(jobj refresh_token "$RT")"
expect_status 204 "" "logout"
api POST /v1/auth/refresh "$(jobj refresh_token "$RT")"
expect_status 401 invalid_grant "refresh after logout"
readyz
expect_status 200 "" "/readyz"
expect_eq "$(jget "d['checks']['store']")" ok "/readyz store check"
out=$(authd migrate 2>&1) || fail "authd migrate beside the running server: $out"
expect_contains "$out" "migrated" "authd migrate"
# libmongoc quotes the password in its URI errors: authd must not pass them on (stderr, logs).
if out=$(AUTHD_STORE_URI="mongodb://authd:s3cr:et@127.0.0.1:$MPORT/" authd migrate 2>&1); then
    fail "authd migrate with an invalid URI succeeded: $out"
fi
expect_contains "$out" "store.uri is not a valid MongoDB URI" "migrate with an invalid URI"
expect_not_contains "$out" "s3cr" "migrate with an invalid URI (the password)"
note "API flows on the mongo driver: ok"

# A backup made through the running master restores into SQLite, and that store's backup into
# a fresh MongoDB database: the same records both ways (the format is driver-neutral).
out=$(authd backup --output "$T/mongo.bak" 2>&1) || fail "authd backup (mongo): $out"
expect_contains "$out" "1 users, 2 sessions, 3 refresh tokens" "backup of the mongo store"
out=$(AUTHD_STORE_DRIVER=sqlite authd restore "$T/mongo.bak" 2>&1) ||
    fail "restore of the mongo backup into SQLite: $out"
expect_contains "$out" "into the sqlite store: 1 users, 2 sessions, 3 refresh tokens" \
    "restore of the mongo backup into SQLite"
out=$(AUTHD_STORE_DRIVER=sqlite authd backup --output "$T/sqlite.bak" 2>&1) ||
    fail "authd backup (sqlite): $out"
out=$(AUTHD_STORE_DATABASE="authd_itest_$$_restored" authd restore "$T/sqlite.bak" 2>&1) ||
    fail "restore of the SQLite backup into MongoDB: $out"
expect_contains "$out" "into the mongo store: 1 users, 2 sessions, 3 refresh tokens" \
    "restore of the SQLite backup into MongoDB"
note "backups cross drivers: ok"

# ---- MongoDB hangs, dies and comes back under load ----

cat >"$T/load.py" <<'PYEOF'
# Threads posting well-formed unknown refresh tokens (one store lookup each) until the stop file
# appears; one line per request: start time, latency, status, error code.
import base64, http.client, json, os, ssl, sys, threading, time
port, out, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl._create_unverified_context()
lock = threading.Lock()
f = open(out, "w")
def worker():
    conn = None
    for _ in range(100000):
        if os.path.exists(stop):
            return
        tok = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        t0 = time.time()
        status, err = 0, ""
        try:
            if conn is None:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=15)
            conn.request("POST", "/v1/auth/refresh", json.dumps({"refresh_token": tok}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            status = r.status
            try:
                err = json.loads(body).get("error", "")
            except ValueError:
                err = "?"
        except Exception as e:
            err = type(e).__name__
            conn = None
        with lock:
            f.write("%.3f %.3f %d %s\n" % (t0, time.time() - t0, status, err or "-"))
            f.flush()
        time.sleep(0.02)
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
PYEOF
pids_before=$(worker_pids)
rm -f "$T/stop"
bg "$PY" "$T/load.py" "$PORT" "$T/load.out" "$T/stop"
LOAD_PID=$BG_PID
sleep 1.5

# readyz_down: /readyz answers 503 naming the store; prints its latency in seconds.
readyz_down() {
    local t0 t1
    t0=$(now_ms)
    readyz
    t1=$(now_ms)
    expect_eq "$CODE" 503 "/readyz while MongoDB is $1"
    expect_eq "$(jget "d['checks']['store']")" down "/readyz store check while MongoDB is $1"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1000 }'
}

store_recovered() {
    readyz
    [[ "$CODE" == 200 ]] || return 1
    api POST /v1/auth/refresh "$(jobj refresh_token "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")"
    [[ "$CODE" == 401 ]]
}

HUNG_AT=$(date +%s.%N)
kill -STOP "$MONGO_PID"
note "MongoDB hung (SIGSTOP)"
sleep $((TIMEOUT + 1))
lat=$(readyz_down hung)
note "/readyz while hung: 503 store down in ${lat}s"
t0=$(now_ms)
code=$(status_code "$(https_url /healthz)")
expect_eq "$code" 200 "/healthz while MongoDB is hung"
(($(now_ms) - t0 < 1000)) || fail "/healthz took $(($(now_ms) - t0)) ms while MongoDB was hung"
sleep 1
BACK1_AT=$(date +%s.%N)
kill -CONT "$MONGO_PID"
wait_until 15 store_recovered || fail "authd did not recover within 15 s of MongoDB resuming"
note "recovered $(awk -v a="$BACK1_AT" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s after SIGCONT"
sleep 1

DEAD_AT=$(date +%s.%N)
kill -TERM "$MONGO_PID"
wait "$MONGO_PID" 2>/dev/null || true
note "MongoDB stopped (SIGTERM)"
sleep $((TIMEOUT + 1))
lat=$(readyz_down stopped)
note "/readyz while stopped: 503 store down in ${lat}s"
api POST /v1/auth/login "$(jobj email ada@example.com password "$PW")"
expect_status 503 store_unavailable "login while MongoDB is stopped"
sleep 1
BACK2_AT=$(date +%s.%N)
mongo_start
wait_until 15 store_recovered || fail "authd did not recover within 15 s of MongoDB restarting"
UP2_AT=$(date +%s.%N)
note "recovered $(awk -v a="$BACK2_AT" -v b="$UP2_AT" 'BEGIN { printf "%.1f", b - a }')s after the restart"
sleep 2
touch "$T/stop"
wait "$LOAD_PID" 2>/dev/null || true

# The restarted test server is empty: registration and login work again (no authd restart).
api POST /v1/auth/register "$(jobj email "grace@example.com" password "$PW")"
expect_status 201 "" "register after MongoDB came back"
login grace@example.com "$PW"
api POST /v1/auth/refresh "$(jobj refresh_token "$RT")"
expect_status 200 "" "refresh after MongoDB came back"
expect_eq "$(worker_pids)" "$pids_before" "worker pids (no worker died or was replaced)"
server_alive || fail "the master exited"

# ---- what the load saw ----
# Every request that started after an outage began and ended before MongoDB was back got 503.
# Once the calls in flight when it went away have drained (an operation already sent to a hung
# server waits out the socket timeout, then its one retryable-read attempt server selection:
# 2 x store.timeout, and requests queued behind it wait too), every request is answered within
# store.timeout + MARGIN (the one call at a time that probes the server), most at once. No
# request ever waits more than 2 x store.timeout + MARGIN.
"$PY" - "$T/load.out" "$HUNG_AT" "$BACK1_AT" "$DEAD_AT" "$BACK2_AT" "$UP2_AT" "$TIMEOUT" \
    "$MARGIN" <<'PYEOF' ||
import sys
path, hung, back1, dead, back2, up2, timeout, margin = sys.argv[1], *map(float, sys.argv[2:])
rows = [l.split() for l in open(path)]
rows = [(float(a), float(b), int(c), d) for a, b, c, d in rows]
bad = [r for r in rows if (r[2], r[3]) not in ((401, "invalid_grant"), (503, "store_unavailable"))]
down = [r for r in rows if hung + 0.2 <= r[0] and r[0] + r[1] <= back1 or
        dead + 0.2 <= r[0] and r[0] + r[1] <= back2]
after = [r for r in rows if r[0] >= up2]
settled = sorted(r[1] for r in down if r[0] >= hung + 2 * timeout + 0.5 and r[0] < back1 or
                 r[0] >= dead + 2 * timeout + 0.5 and r[0] < back2)
slow = max((r[1] for r in rows), default=0)
n503 = sum(1 for r in down if r[2] == 503)
print("load: %d requests, %d during the outages (%d answered 503 store_unavailable), slowest "
      "%.2fs, %d after recovery" % (len(rows), len(down), n503, slow, len(after)))
if settled:
    print("once the outages were detected: %d requests, median %.3fs, slowest %.3fs" %
          (len(settled), settled[len(settled) // 2], settled[-1]))
if len(settled) < 5 or settled[-1] > timeout + margin or settled[len(settled) // 2] > 0.1:
    sys.exit("503s were not prompt once the outages were detected")
if bad:
    sys.exit("unexpected answers: %s" % bad[:5])
if n503 < 5 or any(r[2] != 503 for r in down):
    sys.exit("requests during the outages were not all 503: %s" % [r for r in down if r[2] != 503][:5])
if len(after) < 5 or any(r[2] != 401 for r in after):
    sys.exit("after recovery: %s" % [r for r in after if r[2] != 401][:5])
if slow > 2 * timeout + margin:
    sys.exit("a request took %.2fs (more than %.2fs)" % (slow, 2 * timeout + margin))
PYEOF
    fail "load during the MongoDB outages"
pass
