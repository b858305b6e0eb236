#!/bin/bash
# logs: log.file receives JSON lines from the master and the workers; access-log lines carry
# request_id, method, path and status, and the X-Request-Id response header matches (given or
# generated); SIGUSR1 after the file was moved away opens a new file that receives the lines.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

LOG="$T/authd.log"
EXTRA_CONFIG="
log = {
    file = \"$LOG\";
    level = \"info\";
};
supervisor = {
    heartbeat_interval = 0.1;
};"
start_server

# access_line ID FILE: the access-log line with request_id ID in FILE (waits for the buffered
# worker log to be flushed: it is written at each heartbeat).
access_line() {
    local line="" i
    for ((i = 0; i < 50; i++)); do
        line=$(grep -F "\"request_id\":\"$1\"" "$2" 2>/dev/null | grep -F '"type":"access"' | head -n 1 || true)
        [[ -n "$line" ]] && break
        sleep 0.1
    done
    printf '%s' "$line"
}

# field LINE NAME: one field of a JSON log line.
field() {
    printf '%s' "$1" | json "d.get('$2')"
}

# ---- the file is used, stderr is not ----
wait_until 5 grep -q '"msg":"ready: ' "$LOG" || fail "no 'ready' line in $LOG"
grep -q '"type":"access"' "$SERVER_STDERR" && fail "access lines went to stderr although log.file is set"

# ---- a given X-Request-Id ----
"${CURL[@]}" -D "$T/h1.out" -o /dev/null -H 'X-Request-Id: itest-given-42' "$(https_url /healthz)" ||
    fail "request with X-Request-Id failed"
expect_eq "$(grep -i '^x-request-id:' "$T/h1.out" | tr -d '\r' | cut -d' ' -f2)" itest-given-42 \
    "X-Request-Id echoed"
line=$(access_line itest-given-42 "$LOG")
[[ -n "$line" ]] || fail "no access line for request id itest-given-42 in $LOG"
expect_eq "$(field "$line" type)" access "access line type"
expect_eq "$(field "$line" status)" 200 "access line status"
expect_eq "$(field "$line" path)" /healthz "access line path"
expect_eq "$(field "$line" method)" GET "access line method"
expect_eq "$(field "$line" listener)" public "access line listener"
expect_eq "$(field "$line" role)" worker "access line role"
expect_eq "$(field "$line" remote)" 127.0.0.1 "access line remote"
for k in ts level pid duration_ms bytes; do
    [[ "$(field "$line" "$k")" != None ]] || fail "access line has no '$k': $line"
done

# ---- a generated X-Request-Id, also on errors and on the admin listener ----
for spec in "404 $(https_url /no-such-thing) GET" "405 $(https_url /healthz) DELETE" \
    "200 $(admin_url /metrics) GET"; do
    read -r want url method <<<"$spec"
    "${CURL[@]}" -D "$T/h2.out" -o /dev/null -X "$method" "$url" || fail "$method $url failed"
    id=$(grep -i '^x-request-id:' "$T/h2.out" | tr -d '\r' | cut -d' ' -f2)
    expect_match "$id" '^[A-Za-z0-9._:-]{8,64}$' "generated X-Request-Id for $method $url"
    line=$(access_line "$id" "$LOG")
    [[ -n "$line" ]] || fail "no access line for generated request id $id ($method $url)"
    expect_eq "$(field "$line" status)" "$want" "access line status for $method $url"
    expect_eq "$(field "$line" path)" "/${url#*://*/}" "access line path for $method $url"
done
# a request refused before routing (431) gets an id too, echoed and logged
big=$(head -c 10240 /dev/zero | tr '\0' a)
"${CURL[@]}" -D "$T/h4.out" -o /dev/null -H "X-Big: $big" "$(https_url /healthz)" || fail "431 request failed"
expect_contains "$(head -n 1 "$T/h4.out")" " 431" "oversized header status"
id=$(grep -i '^x-request-id:' "$T/h4.out" | tr -d '\r' | cut -d' ' -f2)
expect_match "$id" '^[A-Za-z0-9._:-]{8,64}$' "X-Request-Id of a 431 response"
line=$(access_line "$id" "$LOG")
[[ -n "$line" ]] || fail "no access line for the 431 response's id $id"
expect_eq "$(field "$line" status)" 431 "access line status of the 431 response"

# the query string is not part of the logged path
"${CURL[@]}" -o /dev/null -H 'X-Request-Id: itest-query' "$(https_url '/healthz?token=secret')"
line=$(access_line itest-query "$LOG")
expect_eq "$(field "$line" path)" /healthz "logged path without the query string"
expect_not_contains "$line" "secret" "query string kept out of the access log"

# ---- an unacceptable X-Request-Id is replaced ----
for bad in 'has space' "$(head -c 100 /dev/zero | tr '\0' x)" 'quote"inside'; do
    "${CURL[@]}" -D "$T/h3.out" -o /dev/null -H "X-Request-Id: $bad" "$(https_url /healthz)"
    id=$(grep -i '^x-request-id:' "$T/h3.out" | tr -d '\r' | cut -d' ' -f2-)
    [[ "$id" != "$bad" ]] || fail "unsafe X-Request-Id '$bad' was echoed"
    expect_match "$id" '^[A-Za-z0-9._:-]{8,64}$' "replacement for X-Request-Id '$bad'"
    [[ -n "$(access_line "$id" "$LOG")" ]] || fail "no access line for replacement id $id"
done

# ---- every line in the file is a JSON object with the common fields ----
"$PY" - "$LOG" <<'PYEOF' || fail "log file check failed"
import json, sys
roles = set()
for n, line in enumerate(open(sys.argv[1]), 1):
    try:
        d = json.loads(line)
    except Exception:
        sys.exit("line %d is not JSON: %r" % (n, line))
    for k in ("ts", "level", "pid", "role"):
        if k not in d:
            sys.exit("line %d has no %s: %r" % (n, k, line))
    roles.add(d["role"])
if not {"master", "worker"} <= roles:
    sys.exit("roles seen: %s" % sorted(roles))
PYEOF

# ---- SIGUSR1 reopens the moved file ----
mv "$LOG" "$LOG.1"
"${CURL[@]}" -o /dev/null -H 'X-Request-Id: itest-before-reopen' "$(https_url /healthz)"
[[ -n "$(access_line itest-before-reopen "$LOG.1")" ]] ||
    fail "before SIGUSR1 the workers should still write to the moved file"
kill -USR1 "$SERVER_PID"
wait_until 5 test -s "$LOG" || fail "no new $LOG after SIGUSR1"
wait_until 5 grep -q 'log files reopened' "$LOG" || fail "no 'log files reopened' line in the new file"
sleep 0.5 # the workers reopen on their own SIGUSR1
"${CURL[@]}" -o /dev/null -H 'X-Request-Id: itest-after-reopen' "$(https_url /healthz)"
"${CURL[@]}" -o /dev/null -H 'X-Request-Id: itest-after-reopen-admin' "$(admin_url /healthz)"
[[ -n "$(access_line itest-after-reopen "$LOG")" ]] || fail "access line after SIGUSR1 not in the new file"
[[ -n "$(access_line itest-after-reopen-admin "$LOG")" ]] || fail "admin access line after SIGUSR1 not in the new file"
grep -q 'itest-after-reopen' "$LOG.1" && fail "lines after SIGUSR1 still went to the old file"

# ---- stop: the last lines land in the new file ----
kill -TERM "$SERVER_PID"
wait_server_exit 10 || fail "master did not stop"
expect_eq "$SERVER_RC" 0 "master exit status"
grep -q '"msg":"stopped"' "$LOG" || fail "no 'stopped' line in the new file"

pass
