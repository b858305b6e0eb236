#!/bin/bash
# basic: public and admin endpoints, JSON errors, keep-alive, pid file, single instance,
# status (text and JSON), stop and version.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

# version needs no configuration at all.
out=$("$AUTHD_BIN" version) || fail "authd version exited $?"
expect_match "$out" '^authd [0-9]+\.[0-9]+' "authd version"

start_server

# ---- public listener ----
hdr="$T/h.out"
body=$("${CURL[@]}" -D "$hdr" "$(https_url /healthz)") || fail "GET /healthz over TLS failed"
expect_contains "$(head -n 1 "$hdr")" " 200" "public /healthz status"
grep -qi '^content-type: application/json' "$hdr" || fail "public /healthz is not application/json"
printf '%s' "$body" | json "d['status']" | grep -qx ok || fail "public /healthz body: $body"
grep -qi '^x-request-id: ' "$hdr" || fail "no X-Request-Id on the response"
grep -qi '^strict-transport-security: ' "$hdr" || fail "no HSTS header on the public listener"

# HEAD /healthz: headers only.
out=$("${CURL[@]}" -I "$(https_url /healthz)") || fail "HEAD /healthz failed"
expect_contains "$(printf '%s' "$out" | head -n 1)" " 200" "HEAD /healthz"

# ---- admin listener ----
for p in /healthz /readyz /metrics; do
    expect_eq "$(status_code "$(admin_url "$p")")" 200 "admin GET $p"
done
body=$("${CURL[@]}" "$(admin_url /readyz)")
expect_eq "$(printf '%s' "$body" | json "d['status']")" ready "admin /readyz body"
body=$("${CURL[@]}" "$(admin_url /healthz)")
expect_eq "$(printf '%s' "$body" | json "d['status']")" ok "admin /healthz body"

m=$("${CURL[@]}" -D "$hdr" "$(admin_url /metrics)")
grep -qi '^content-type: text/plain' "$hdr" || fail "/metrics content type: $(cat "$hdr")"
for want in \
    'authd_http_requests_total{route="healthz",status="200"} ' \
    '# TYPE authd_http_requests_total counter' \
    '# TYPE authd_workers gauge' \
    'authd_workers{state="ready"} 2' \
    'authd_worker_restarts_total 0' \
    'authd_reloads_total 0' \
    'authd_reload_failures_total 0' \
    '# TYPE authd_http_request_duration_seconds histogram' \
    'authd_http_request_duration_seconds_bucket{le="+Inf"} ' \
    'authd_http_request_duration_seconds_sum ' \
    'authd_http_request_duration_seconds_count ' \
    'authd_http_connections_total ' \
    'authd_generation 1'; do
    expect_contains "$m" "$want" "/metrics"
done
# Every non-comment line is "name{labels} value".
bad=$(printf '%s\n' "$m" | grep -v '^#' | grep -Ev '^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfa]+$' || true)
[[ -z "$bad" ]] || fail "malformed Prometheus lines: $bad"
# The histogram's +Inf bucket equals its count.
inf=$(printf '%s\n' "$m" | awk '/^authd_http_request_duration_seconds_bucket\{le="\+Inf"\}/ { print $2 }')
cnt=$(printf '%s\n' "$m" | awk '/^authd_http_request_duration_seconds_count/ { print $2 }')
expect_eq "$inf" "$cnt" "histogram +Inf bucket vs count"

# ---- errors are JSON ----
check_error() { # url method status code [extra curl args]
    local url=$1 method=$2 want=$3 code=$4
    shift 4
    local b
    b=$("${CURL[@]}" -D "$hdr" -X "$method" "$@" "$url") || fail "$method $url: curl failed"
    expect_contains "$(head -n 1 "$hdr")" " $want" "$method $url status"
    grep -qi '^content-type: application/json' "$hdr" || fail "$method $url: not JSON: $(cat "$hdr")"
    expect_eq "$(printf '%s' "$b" | json "d['error']")" "$code" "$method $url error code"
    [[ -n "$(printf '%s' "$b" | json "d['message']")" ]] || fail "$method $url: empty message"
}
check_error "$(https_url /no/such/path)" GET 404 not_found
check_error "$(https_url /readyz)" GET 404 not_found # admin-only route
check_error "$(admin_url /nope)" GET 404 not_found
check_error "$(https_url /healthz)" POST 405 method_not_allowed -d '{}'
allow=$(grep -i '^allow:' "$hdr" | tr -d '\r')
expect_match "$allow" '(GET.*HEAD|HEAD.*GET)' "Allow header of POST /healthz"
check_error "$(admin_url /metrics)" DELETE 405 method_not_allowed
expect_match "$(grep -i '^allow:' "$hdr" | tr -d '\r')" 'GET' "Allow header of DELETE /metrics"
check_error "$(https_url /healthz?x=1)" PUT 405 method_not_allowed -d 'x'

# ---- keep-alive: two requests on one connection ----
before=$(metric authd_http_connections_total)
out=$("${CURL[@]}" -v -o /dev/null -o /dev/null "$(https_url /healthz)" "$(https_url /healthz)" 2>&1) ||
    fail "two requests on one curl failed: $out"
expect_match "$out" 'Re-using existing connection|Reusing existing connection' "curl keep-alive"
after=$(metric authd_http_connections_total)
# one public connection for both requests + the second /metrics request's own connection
expect_eq "$((after - before))" 2 "connections accepted for two keep-alive requests (+1 metrics)"

# ---- pipelined requests are answered in order on one connection ----
out=$(pyclient --tls --port "$PORT" --max-time 10 \
    send 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n' \
    response response sleep 0.5)
expect_eq "$(printf '%s' "$out" | json "d['statuses']")" "[200, 404, 200]" "pipelined GET, GET, HEAD"

# ---- HTTP/1.0: no keep-alive unless asked ----
out=$("${CURL[@]}" --http1.0 -D - -o /dev/null "$(https_url /healthz)") || fail "HTTP/1.0 request failed"
expect_match "$(printf '%s' "$out" | head -n 1)" '^HTTP/1\.[01] 200' "HTTP/1.0 request"
printf '%s' "$out" | grep -qi '^connection: close' || fail "HTTP/1.0 response without Connection: close: $out"

# ---- Expect: 100-continue ----
head -c 2048 /dev/zero | tr '\0' e >"$T/2k.bin"
out=$("${CURL[@]}" -v -X POST -H 'Expect: 100-continue' --data-binary @"$T/2k.bin" -o "$T/e.out" \
    -w '%{http_code}' "$(https_url /healthz)" 2>"$T/e.err") || fail "POST with Expect failed: $(cat "$T/e.err")"
expect_eq "$out" 405 "POST with Expect: 100-continue"
grep -q 'HTTP/1.1 100 Continue' "$T/e.err" || fail "no 100 Continue sent: $(grep '^<' "$T/e.err")"

# ---- pid file ----
[[ -f "$T/authd.pid" ]] || fail "pid file $T/authd.pid not written"
expect_eq "$(tr -d '[:space:]' <"$T/authd.pid")" "$SERVER_PID" "pid file content"
[[ -S "$T/control.sock" ]] || fail "control socket $T/control.sock missing"

# ---- a second serve with the same configuration is refused ----
rc=0
timeout 20 "$AUTHD_BIN" --config "$CONF" serve >"$T/second.out" 2>&1 || rc=$?
expect_eq "$rc" 1 "exit status of a second serve"
expect_match "$(cat "$T/second.out")" "another authd \(pid $SERVER_PID\) is running" "second serve message"
server_alive || fail "the first master died when a second one was started"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "first master still serves"
expect_eq "$(tr -d '[:space:]' <"$T/authd.pid")" "$SERVER_PID" "pid file after the second serve"
[[ -S "$T/control.sock" ]] || fail "a second serve removed the control socket"

# ---- status ----
st=$(authd status) || fail "authd status exited $?"
expect_contains "$st" "master pid $SERVER_PID" "status text"
expect_contains "$st" "generation 1" "status text"
expect_eq "$(printf '%s\n' "$st" | grep -Ec '^[0-9]+ +[0-9]+ +1 +ready ')" 2 "ready workers in status text"
js=$(authd status --json) || fail "authd status --json exited $?"
expect_eq "$(printf '%s' "$js" | json "d['master_pid']")" "$SERVER_PID" "status --json master_pid"
expect_eq "$(printf '%s' "$js" | json "d['generation']")" 1 "status --json generation"
expect_eq "$(printf '%s' "$js" | json "len(d['workers'])")" 2 "status --json worker count"
expect_eq "$(printf '%s' "$js" | json "sorted(set(w['state'] for w in d['workers']))")" '["ready"]' "worker states"
expect_eq "$(printf '%s' "$js" | json "sorted(w['slot'] for w in d['workers']) == sorted(set(w['slot'] for w in d['workers']))")" true "distinct slots"
for w in $(printf '%s' "$js" | json "' '.join(str(w['pid']) for w in d['workers'])"); do
    expect_eq "$(ps -o ppid= -p "$w" | tr -d ' ')" "$SERVER_PID" "parent of worker $w"
done
# status --json must be valid JSON on stdout only.
authd status --json 2>/dev/null | "$PY" -c 'import json,sys; json.load(sys.stdin)' ||
    fail "status --json stdout is not JSON"

# ---- backups without encryption are reported plainly; a reload that sets a key clears it ----
expect_eq "$(metric authd_backup_encrypted)" 0 "authd_backup_encrypted without a key"
expect_contains "$(authd status)" "backups: NOT ENCRYPTED" "authd status without a key"
expect_eq "$(status_json | json "d['backup']['encrypted']")" false "status --json backup.encrypted"
grep -q '"level":"warning".*backups are NOT encrypted' "$SERVER_STDERR" ||
    fail "no warning about unencrypted backups in the log"
(umask 077 && openssl rand -hex 32 >"$T/backup.key")
sed -i "s|^    directory = \"$T/backups\";|&\n    encryption_key_file = \"$T/backup.key\";|" "$CONF"
gen=$(generation)
out=$(authd reload 2>&1) || fail "authd reload with a backup key: $out"
wait_until 30 test "$(ready_count $((gen + 1)))" = "$WORKERS" || fail "generation $((gen + 1)) not ready"
expect_eq "$(metric authd_backup_encrypted)" 1 "authd_backup_encrypted after a reload with a key"
expect_contains "$(authd status)" "backups: encrypted" "authd status with a key"
expect_eq "$(status_json | json "d['backup']['encrypted']")" true "status --json backup.encrypted with a key"

# ---- stop ----
wpids=$(worker_pids)
out=$(authd stop 2>&1) || fail "authd stop exited $?: $out"
expect_contains "$out" "stopping pid $SERVER_PID" "authd stop output"
wait_server_exit 10 || fail "master still running 10s after authd stop"
expect_eq "$SERVER_RC" 0 "master exit status after authd stop"
for w in $wpids; do
    proc_alive "$w" && fail "worker $w still running after stop"
done
[[ ! -e "$T/authd.pid" ]] || fail "pid file left behind after stop"
[[ ! -e "$T/control.sock" ]] || fail "control socket left behind after stop"
expect_eq "$(status_code "$(https_url /healthz)")" 000 "public listener closed after stop"
rc=0
out=$(authd status 2>&1) || rc=$?
expect_eq "$rc" 1 "authd status with no master"
expect_contains "$out" "no running master" "authd status with no master"
grep -q '"msg":"stopped"' "$SERVER_STDERR" || fail "no 'stopped' log line"
# Every stderr line of the server is JSON.
grep -v '^---- start attempt' "$SERVER_STDERR" | "$PY" -c '
import json, sys
for n, line in enumerate(sys.stdin, 1):
    try:
        json.loads(line)
    except Exception:
        sys.exit("server stderr line %d is not JSON: %r" % (n, line))' || fail "server log is not JSON lines"

pass
