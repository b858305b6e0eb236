#!/bin/bash
# retention: the real server with short retention settings (sessions and audit events kept 1 s,
# a pass every 0.5 s, steps of 7 records) deletes logged-out sessions with their refresh-token
# hashes and old audit events, leaves the live sessions whole, counts every deleted row in
# authd_store_pruned_rows_total (on SQLite: equal to the rows that left the file), and reuse
# detection still works on a live family afterwards, while a pruned family's rotated token is
# simply unknown. Waits on the metric and the file, each with a bound; no sleeps. With
# AUTHD_TEST_MONGO_URI set, the same again on the "mongo" driver (a fresh database), checked
# through the metric and the API (MongoDB keeps a family's current hash in its session
# document, so 8 families x 3 rotated hashes are counted there).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MONGO_URI=${AUTHD_TEST_MONGO_URI:-} # itest_init unsets every AUTHD_* variable
itest_init
need_python
need_tool sqlite3

# shellcheck disable=SC2034 # read by write_config (lib.sh)
WORKERS=2
# shellcheck disable=SC2034 # read by write_config (lib.sh)
EXTRA_CONFIG='password = { memory_kib = 1024; iterations = 1; };
ratelimit = { login = { limit = 0; }; refresh = { limit = 0; }; global = { limit = 0; }; };
retention = { sessions = 1; audit = 1; interval = 0.5; batch = 7; pause = 0; };'
DB="$T/authd.db"

# ---- traffic: one user, 12 logins, 3 refreshes each; 8 sessions logged out, 4 stay live ----
cat >"$T/client.py" <<'PYEOF'
import http.client, json, ssl, sys

port, out = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)

def post(path, body):
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)

cred = {"email": "churn@example.com", "password": "correct horse battery staple"}
st, _ = post("/v1/auth/register", cred)
assert st == 201, st
live, ended = [], []
for i in range(12):
    st, b = post("/v1/auth/login", cred)
    assert st == 200, (st, b)
    chain = [b["refresh_token"]]
    for _ in range(3):
        st, b = post("/v1/auth/refresh", {"refresh_token": chain[-1]})
        assert st == 200, (st, b)
        chain.append(b["refresh_token"])
    if i < 8:
        st, _ = post("/v1/auth/logout", {"refresh_token": chain[-1]})
        assert st == 204, st
        ended.append(chain)
    else:
        live.append(chain)
json.dump({"live": live, "ended": ended}, open(out, "w"))
PYEOF

# ---- replays: a pruned family's rotated token; a live family's current, then rotated token ----
cat >"$T/replay.py" <<'PYEOF'
import http.client, json, ssl, sys

port, toks = int(sys.argv[1]), json.load(open(sys.argv[2]))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)

def refresh(t):
    conn.request("POST", "/v1/auth/refresh", json.dumps({"refresh_token": t}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status

step = sys.argv[3]
if step == "pruned":      # a rotated token of a pruned family
    print(refresh(toks["ended"][0][0]))
elif step == "live":      # a live family: its current token works, then a rotated one is reuse
    print(refresh(toks["live"][0][-1]), refresh(toks["live"][1][0]), refresh(toks["live"][1][-1]))
PYEOF

# Every audit event is also a log line (of this case: after its marker); what the store holds
# is what was not pruned yet.
audit_total() { sed -n "/^---- case $DRIVER/,\$p" "$SERVER_STDERR" | grep -c '"type":"audit"'; }
sql() { sqlite3 -cmd '.timeout 5000' "$DB" "$1"; }
pruned() { metric "authd_store_pruned_rows_total{kind=\"$1\"}"; }
reuses() { metric 'authd_auth_events_total{event="refresh_reuse",result="failure"}'; }
# shellcheck disable=SC2317 # called through wait_until
sessions_pruned() { [[ "$(pruned sessions)" == 8 ]]; }
# shellcheck disable=SC2317 # called through wait_until
audit_pruned() {
    local left=0
    if [[ $DRIVER == sqlite ]]; then
        left=$(sql 'SELECT count(*) FROM audit_events') || return 1
    fi
    [[ "$left" == 0 && "$(pruned audit)" == "$(audit_total)" ]]
}

# run_case DRIVER: a server on DRIVER (configured through the environment), traffic, checks.
run_case() {
    DRIVER=$1
    echo "---- case $DRIVER ----" >>"$SERVER_STDERR"
    start_server 60
    "$PY" "$T/client.py" "$PORT" "$T/tokens.json" >"$T/client.out" 2>&1 ||
        fail "$DRIVER: traffic failed: $(cat "$T/client.out")"

    # The 8 ended sessions go (after retention.sessions), with all their hashes.
    wait_until 60 sessions_pruned || fail "$DRIVER: sessions pruned: $(pruned sessions), want 8"
    if [[ $DRIVER == sqlite ]]; then
        expect_eq "$(sql 'SELECT count(*) FROM sessions')" 4 "sessions left in the file"
        # 12 families x 4 hashes were stored; the 4 live ones keep all theirs (reuse detection).
        expect_eq "$(sql 'SELECT count(*) FROM refresh_tokens')" 16 "refresh-token hashes left"
        expect_eq "$(pruned refresh_tokens)" 32 "refresh-token hashes counted as pruned"
        expect_eq "$(sql 'SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL')" 0 \
            "revoked sessions left"
    else
        expect_eq "$(pruned refresh_tokens)" 24 "mongo: rotated hashes counted as pruned"
    fi

    # Audit events older than retention.audit go; the counter matches what was written.
    wait_until 60 audit_pruned || fail "$DRIVER: audit: $(pruned audit) pruned, $(audit_total) written"
    note "$DRIVER: pruned 8 sessions, $(pruned refresh_tokens) hashes, $(pruned audit) audit events"
    expect_eq "$(metric authd_store_prune_failures_total)" 0 "$DRIVER: prune failures"
    local last
    last=$(metric authd_store_prune_last_success_timestamp_seconds)
    ((last > $(date +%s) - 60)) || fail "$DRIVER: last successful pass at $last"

    # Reuse detection: intact on a live family; a pruned family's token is just unknown.
    local reuse0
    reuse0=$(reuses)
    expect_eq "$("$PY" "$T/replay.py" "$PORT" "$T/tokens.json" pruned)" 401 \
        "$DRIVER: pruned family's rotated token"
    expect_eq "$(reuses)" "$reuse0" "$DRIVER: reuse events after a pruned family's token"
    # live[1]'s rotated token is reuse: its family is revoked, so its current token fails too.
    expect_eq "$("$PY" "$T/replay.py" "$PORT" "$T/tokens.json" live)" "200 401 401" \
        "$DRIVER: live family: refresh, replayed rotated token, then its current token"
    expect_eq "$(reuses)" "$((reuse0 + 1))" "$DRIVER: reuse events after a live family's replay"

    expect_eq "$(grep -c 'retention: \|prune' "$SERVER_STDERR")" 0 "retention error lines in the log"
    server_kill
}

run_case sqlite
if [[ -n "$MONGO_URI" ]]; then
    export AUTHD_STORE_DRIVER=mongo AUTHD_STORE_URI="$MONGO_URI"
    export AUTHD_STORE_DATABASE="authd_retention_$$"
    run_case mongo
else
    note "mongo case skipped: AUTHD_TEST_MONGO_URI is not set"
fi
pass
