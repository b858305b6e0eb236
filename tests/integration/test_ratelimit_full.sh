#!/bin/bash
# ratelimit_full: a full limiter table fails closed. With the smallest table
# (ratelimit.shm.slots = 256), 3,000 failed logins on 600 random emails from 120 loopback
# source addresses (127.0.0.2-121) fill the account region with accounts in a (one-hour)
# delay; afterwards, from fresh source addresses:
#   - wrong passwords on a real account get at most lockout.threshold 401s, then only 429 with
#     Retry-After (a new account whose bucket is full is refused, never allowed), and so does
#     the right password;
#   - the per-address login rule still counts (its region cannot be filled by accounts): 30
#     logins, then 429;
#   - authd_ratelimit_store_refused_total{table="account"} counts the refusals.
# Then the same with ratelimit.backend = "redis" on a private redis-server: Redis decides while
# it is up (the table fills with its mirrored answers), and once that Redis is killed the shm
# fallback keeps the property; authd warns about a Redis that would evict lockout counters.
# Delays and periods are an hour or a day: nothing here depends on how fast requests run.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python
need_tool redis-server redis-cli
for i in 2 121 122 130; do
    "$PY" -c 'import socket, sys; socket.socket().bind((sys.argv[1], 0))' "127.0.0.$i" 2>/dev/null ||
        skip "cannot bind source address 127.0.0.$i"
done

THRESHOLD=5
RATELIMIT_ENV=()
limits_config() { # BACKEND_LINES
    EXTRA_CONFIG="password = { memory_kib = 1024; iterations = 1; };
ratelimit = {
    $1
    shm = { slots = 256; };
    global = { limit = 0; };
    login = { limit = 30; period = 86400; };
    register = { limit = 10; period = 86400; };
    lockout = { threshold = $THRESHOLD; base_delay = 3600; max_delay = 3600; max_failures = 10; reset_after = 86400; };
};"
}

# The filler: NADDR source addresses from 127.0.0.2, each signing in to EMAILS/NADDR random
# emails PER times (email after email, so each one reaches the threshold), four threads of
# keep-alive TLS connections. Prints {"status": count, ...}.
cat >"$T/fill.py" <<'PYEOF'
import collections, http.client, json, os, ssl, sys, threading

port, naddr, nemails, per = (int(x) for x in sys.argv[1:5])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
counts = collections.Counter()
lock = threading.Lock()

def run(addrs):
    local = collections.Counter()
    for a in addrs:
        src = "127.0.0.%d" % (2 + a)
        conn = None
        for e in range(a, nemails, naddr):
            body = json.dumps({"email": "fill-%s-%d@example.com" % (os.urandom(6).hex(), e),
                               "password": "wrong password"})
            for _ in range(per):
                for attempt in (1, 2):
                    try:
                        if conn is None:
                            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx,
                                                               timeout=30,
                                                               source_address=(src, 0))
                        conn.request("POST", "/v1/auth/login", body,
                                     {"Content-Type": "application/json"})
                        r = conn.getresponse()
                        r.read()
                        local[str(r.status)] += 1
                        if r.getheader("Connection", "").lower() == "close":
                            conn.close()
                            conn = None
                        break
                    except (OSError, http.client.HTTPException):
                        # the server closed an idle keep-alive connection: reconnect once
                        conn = None
                        if attempt == 2:
                            local["error"] += 1
        if conn is not None:
            conn.close()
    with lock:
        counts.update(local)

threads = [threading.Thread(target=run, args=(range(k, naddr, 4),)) for k in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(dict(counts), sort_keys=True))
PYEOF

# from SRC METHOD PATH BODY: one request bound to source address SRC; sets CODE, BODY, HDRS.
from() {
    rm -f "$T/h.out" "$T/b.out"
    CODE=$("${CURL[@]}" --interface "$1" -X "$2" -D "$T/h.out" -o "$T/b.out" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary "$4" "$(https_url "$3")" 2>/dev/null) || true
    BODY=$(cat "$T/b.out" 2>/dev/null || true)
    HDRS=$(tr -d '\r' <"$T/h.out" 2>/dev/null || true)
}
retry_after() {
    printf '%s\n' "$HDRS" | awk -F': ' 'tolower($1) == "retry-after" { print $2; exit }'
}
creds() { printf '{"email":"%s","password":"%s"}' "$1" "$2"; }

# fill: the review's scenario; checks that every attempt got an answer.
fill() {
    local out
    note "filling the table: 3000 failed logins, 600 random emails, 120 source addresses"
    out=$("$PY" "$T/fill.py" "$PORT" 120 600 "$THRESHOLD") || fail "filler failed: $out"
    note "fill answers: $out"
    expect_eq "$(printf '%s' "$out" | json "sum(d.values())")" 3000 "answers to the fill"
    expect_eq "$(printf '%s' "$out" | json "sorted(k for k in d if k not in ('401', '429'))")" \
        "[]" "only 401 and 429 during the fill ($out)"
}

# lockout_holds SRC EMAIL PASSWORD: 20 wrong passwords from SRC, then the right one from
# another address: at most THRESHOLD 401s, then only 429 with Retry-After.
lockout_holds() {
    local codes="" n401=0 first429=0 i
    for i in $(seq 1 20); do
        from "$1" POST /v1/auth/login "$(creds "$2" wrong-password)"
        codes+="$CODE "
        if [[ "$CODE" == 401 ]]; then
            ((first429 == 0)) || fail "a 401 after a 429 on $2 ($codes)"
            n401=$((n401 + 1))
        elif [[ "$CODE" == 429 ]]; then
            ((first429 > 0)) || first429=$i
            expect_match "$(retry_after)" '^[1-9][0-9]*$' "Retry-After of refusal $i"
            expect_contains "$BODY" too_many_attempts "refusal $i body"
        else
            fail "login $i on $2: $CODE ($codes)"
        fi
    done
    note "20 wrong passwords on $2 from $1: $codes"
    ((n401 <= THRESHOLD)) || fail "$n401 wrong passwords on $2 got 401; at most $THRESHOLD may ($codes)"
    from 127.0.0.125 POST /v1/auth/login "$(creds "$2" "$3")"
    expect_eq "$CODE" 429 "the right password on $2 during the lockout"
}

# address_rule_holds SRC: 31 logins (bad request bodies) from SRC: 30 answered, then 429.
address_rule_holds() {
    local codes="" i
    for i in $(seq 1 31); do
        from "$1" POST /v1/auth/login '{}'
        codes+="$CODE "
    done
    expect_eq "$codes" "$(printf '400 %.0s' $(seq 1 30))429 " "31 logins from $1 (login limit 30)"
}

register() { # SRC EMAIL PASSWORD
    from "$1" POST /v1/auth/register "$(creds "$2" "$3")"
    expect_eq "$CODE" 201 "register $2"
}

PASS="correct horse battery staple"

# ---- shm backend ----
limits_config 'backend = "shm";'
start_server
register 127.0.0.130 alice@example.com "$PASS"
fill
lockout_holds 127.0.0.122 alice@example.com "$PASS"
address_rule_holds 127.0.0.123
m=$("${CURL[@]}" "$(admin_url /metrics)")
expect_match "$m" 'authd_ratelimit_store_refused_total\{table="account"\} [1-9]' "refused stores counted"
expect_match "$m" 'authd_ratelimit_store_refused_total\{table="address"\} 0' "the address region never refuses"
expect_match "$m" 'authd_ratelimit_shm_capacity\{table="account"\} [1-9]' "account region capacity"
note "$(grep -E '^authd_ratelimit_(store_refused|shm_evictions)_total' <<<"$m" | tr '\n' ' ')"

# ---- redis backend: Redis decides while up, the shm fallback once it is gone ----
server_kill
REDIS_PORT=$(pick_port)
# An evicting policy (never reached by this small fill): authd must warn about it.
bg redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$T" \
    --logfile "$T/redis.out" --maxmemory 64mb --maxmemory-policy allkeys-lru
REDIS_PID=$BG_PID
redis_up() { redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
wait_until 10 redis_up || fail "redis-server did not start on port $REDIS_PORT"
limits_config "backend = \"redis\"; redis = { port = $REDIS_PORT; timeout = 0.5; retry_interval = 0.2; prefix = \"full:\"; };"
start_server
rl_check() { # the ratelimit check of /readyz
    "${CURL[@]}" "$(admin_url /readyz)" | json "d['checks']['ratelimit']"
}
wait_until 15 eval '[[ "$(rl_check)" == ok ]]' || fail "ratelimit not on Redis: $(rl_check)"
policy_warned() { grep -q 'has maxmemory-policy allkeys-lru' "$SERVER_STDERR"; }
wait_until 15 policy_warned || fail "no warning about Redis' evicting maxmemory-policy"
register 127.0.0.130 bob@example.com "$PASS"
register 127.0.0.130 carol@example.com "$PASS"
fill
lockout_holds 127.0.0.126 bob@example.com "$PASS"
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
wait_until 15 eval '[[ "$(rl_check)" == degraded ]]' || fail "no fallback after Redis died: $(rl_check)"
lockout_holds 127.0.0.127 carol@example.com "$PASS"
address_rule_holds 127.0.0.128
expect_eq "$(metric authd_ratelimit_fallback_active)" 1 "decided by the shm fallback"
m=$("${CURL[@]}" "$(admin_url /metrics)")
note "$(grep -E '^authd_ratelimit_(store_refused|shm_evictions)_total' <<<"$m" | tr '\n' ' ')"
pass
