#!/bin/bash
# ratelimit_redis: the Redis backend with a real redis-server started here — limits shared by
# two authd instances (per-IP and per-account), a slow Redis (SIGSTOP) answered from shared
# memory within the timeout and noticed by idle instances too (PING), redis-server killed under a login load (no 5xx, /readyz
# "degraded" but 200, the fallback metric and one warning line, limits and the account lockout
# still enforced), and, after a restart, shared counting again without restarting authd;
# account failures counted during an outage reach Redis when it is back, and a successful
# sign-in during an outage clears the account in Redis when it is back.
# Periods and delays are a day and an hour, so nothing asserted depends on how fast requests run.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python
need_tool redis-server redis-cli

REDIS_PORT=$(pick_port)
REDIS_PID=""
redis_up() {
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
}
start_redis() {
    bg redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$T" --logfile "$T/redis.out"
    REDIS_PID=$BG_PID
    wait_until 10 redis_up || fail "redis-server did not start on port $REDIS_PORT"
}
rcli() {
    redis-cli -p "$REDIS_PORT" "$@"
}
start_redis
note "redis-server pid $REDIS_PID on port $REDIS_PORT"

RATELIMIT_ENV=()
EXTRA_CONFIG="password = { memory_kib = 1024; iterations = 1; };
ratelimit = {
    backend = \"redis\";
    redis = { port = $REDIS_PORT; timeout = 0.05; retry_interval = 0.2; prefix = \"itest:rl:\"; };
    trusted_proxies = [\"127.0.0.1\"];
    global = { limit = 0; };
    login = { limit = 6; period = 86400; };
    lockout = { threshold = 3; base_delay = 3600; max_delay = 3600; max_failures = 10; reset_after = 86400; };
};"
start_server
A_PORT=$PORT
A_ADMIN=$ADMIN_PORT

# ---- a second instance on the same Redis (and the same SQLite file) ----
B_PORT=$(pick_port)
B_ADMIN=$(pick_port)
sed -e "s/port = $PORT;/port = $B_PORT;/" -e "s/port = $ADMIN_PORT;/port = $B_ADMIN;/" \
    -e "s#$T/authd.pid#$T/b.pid#" -e "s#$T/control.sock#$T/b.sock#" "$CONF" >"$T/b.conf"
bg "$AUTHD_BIN" --config "$T/b.conf" serve 2>>"$T/b.log"
B_PID=$BG_PID

readyz() { # ADMIN_PORT: the ratelimit check of /readyz ("" when not 200)
    local body
    body=$(curl -s --noproxy '*' --max-time 2 -w '\n%{http_code}' "http://127.0.0.1:$1/readyz") || return 0
    [[ "${body##*$'\n'}" == 200 ]] || return 0
    printf '%s' "${body%$'\n'*}" | json "d['checks'].get('ratelimit', '')"
}
shared_ok() {
    [[ "$(readyz "$A_ADMIN")" == ok && "$(readyz "$B_ADMIN")" == ok ]]
}
wait_until 15 shared_ok || fail "both instances should report ratelimit ok: A '$(readyz "$A_ADMIN")' B '$(readyz "$B_ADMIN")'"
note "instance A :$A_PORT, instance B pid $B_PID :$B_PORT, both on Redis"

# login PORT IP EMAIL PASSWORD: sets CODE.
login() {
    CODE=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -H "X-Forwarded-For: $2" \
        -H 'Content-Type: application/json' \
        --data-binary "{\"email\":\"$3\",\"password\":\"$4\"}" "https://127.0.0.1:$1/v1/auth/login" \
        2>/dev/null) || true
}
# alternate_logins IP N: N failed logins from IP, alternating A and B; prints the codes.
alternate_logins() {
    local i port codes=""
    for ((i = 1; i <= $2; i++)); do
        port=$A_PORT
        ((i % 2 == 0)) && port=$B_PORT
        login "$port" "$1" "nobody$i-$RANDOM@example.com" wrong-password
        codes+="$CODE "
    done
    echo "$codes"
}
metric_of() { # ADMIN_PORT NAME
    "${CURL[@]}" "http://127.0.0.1:$1/metrics" |
        awk -v n="$2" 'index($0, n " ") == 1 { print $2; f = 1 } END { if (!f) print "missing" }'
}

# ---- per-IP limit shared by two instances ----
codes=$(alternate_logins 198.51.100.1 7)
expect_eq "$codes" "401 401 401 401 401 401 429 " "7 logins from one address over two instances (limit 6)"
keys=$(rcli --scan --pattern 'itest:rl:login:*')
expect_contains "$keys" "itest:rl:login:198.51.100.1" "the per-IP counter lives in Redis"

# ---- per-account lockout shared by two instances ----
for i in 1 2 3; do
    login "$A_PORT" "198.51.100.1$i" ghost@example.com wrong-password
    expect_eq "$CODE" 401 "ghost failure $i on A"
done
login "$B_PORT" 198.51.100.14 ghost@example.com wrong-password
expect_eq "$CODE" 429 "ghost on B after three failures on A"
[[ -n "$(rcli --scan --pattern 'itest:rl:account:*')" ]] || fail "no account counter in Redis"
v=$(metric_of "$A_ADMIN" 'authd_ratelimit_checks_total{backend="redis"}')
[[ "$v" != missing && "$v" -gt 0 ]] || fail "redis checks on A: $v"
v=$(metric_of "$B_ADMIN" 'authd_ratelimit_redis_latency_seconds_count')
[[ "$v" != missing && "$v" -gt 0 ]] || fail "redis latency observations on B: $v"

# ---- an account with failures in Redis, to be reset by a success during the outage below ----
akey() { # EMAIL: the Redis key of the account's lockout counter
    printf 'itest:rl:account:%s' "$(printf '%s' "$1" | sha256sum | cut -c1-32)"
}
RESET_EMAIL=reset@example.com
RESET_PASS="correct horse battery staple"
CODE=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -H 'X-Forwarded-For: 198.51.100.50' \
    -H 'Content-Type: application/json' \
    --data-binary "{\"email\":\"$RESET_EMAIL\",\"password\":\"$RESET_PASS\"}" \
    "https://127.0.0.1:$A_PORT/v1/auth/register" 2>/dev/null) || true
expect_eq "$CODE" 201 "register $RESET_EMAIL"
for i in 1 2; do
    login "$A_PORT" "198.51.100.5$i" "$RESET_EMAIL" wrong-password
    expect_eq "$CODE" 401 "$RESET_EMAIL failure $i before the outage"
done
expect_eq "$(rcli HGET "$(akey "$RESET_EMAIL")" f)" 2 "two failures of $RESET_EMAIL in Redis"

# ---- a slow Redis: answered from shared memory, without waiting for Redis ----
# Redis stays stopped until the answer is in: a check that waited for it would never finish
# (curl gives up after 10 s), so an answer proves the shm fallback; its time is only noted.
shm_before=$(metric_of "$A_ADMIN" 'authd_ratelimit_checks_total{backend="shm"}')
kill -STOP "$REDIS_PID"
t0=$(now_ms)
login "$A_PORT" 198.51.100.20 someone@example.com wrong-password
t1=$(now_ms)
expect_eq "$CODE" 401 "login while Redis is stopped"
shm_after=$(metric_of "$A_ADMIN" 'authd_ratelimit_checks_total{backend="shm"}')
((shm_after > shm_before)) || fail "the login with a stopped Redis was not decided in shm ($shm_before -> $shm_after)"
note "login with a stopped Redis answered in $((t1 - t0)) ms (timeout 50 ms)"
kill -CONT "$REDIS_PID"
wait_until 15 shared_ok || fail "ratelimit not ok again after SIGCONT"
# without any traffic, the per-interval PING notices a silent Redis too
kill -STOP "$REDIS_PID"
both_degraded() {
    [[ "$(readyz "$A_ADMIN")" == degraded && "$(readyz "$B_ADMIN")" == degraded ]]
}
wait_until 15 both_degraded || fail "an idle instance did not notice the stopped Redis"
# a success while Redis does not answer: the reset is queued and sent once it is back
login "$A_PORT" 198.51.100.53 "$RESET_EMAIL" "$RESET_PASS"
expect_eq "$CODE" 200 "$RESET_EMAIL signs in while Redis is stopped"
kill -CONT "$REDIS_PID"
wait_until 15 shared_ok || fail "ratelimit not ok again after the second SIGCONT"
reset_sent() {
    [[ "$(rcli EXISTS "$(akey "$RESET_EMAIL")")" == 0 ]]
}
wait_until 10 reset_sent || fail "the reset of a success during the outage never reached Redis"

# ---- redis-server killed under a login load ----
warn_before=$(grep -c 'checking limits in shared memory' "$SERVER_STDERR" || true)
# loader PORT NAME: 80 failed logins from rotating addresses, codes to $T/NAME.codes
loader() {
    local i
    for ((i = 0; i < 80; i++)); do
        "${CURL[@]}" -o /dev/null -w '%{http_code}\n' -H "X-Forwarded-For: 203.0.113.$((i % 50))" \
            -H 'Content-Type: application/json' \
            --data-binary "{\"email\":\"load$i@example.com\",\"password\":\"wrong\"}" \
            "https://127.0.0.1:$1/v1/auth/login" 2>/dev/null || echo 000
    done >"$T/$2.codes"
}
bg loader "$A_PORT" loadA
LA=$BG_PID
bg loader "$B_PORT" loadB
LB=$BG_PID
load_started() {
    [[ "$(cat "$T/loadA.codes" "$T/loadB.codes" 2>/dev/null | wc -l)" -ge 10 ]]
}
wait_until 30 load_started || fail "the login load did not start"
note "killing redis-server (pid $REDIS_PID) under load"
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
wait "$LA" || true
wait "$LB" || true
all=$(cat "$T/loadA.codes" "$T/loadB.codes" | sort | uniq -c | awk '{ printf "%s:%s ", $2, $1 }')
note "load answers: $all"
expect_eq "$(cat "$T/loadA.codes" "$T/loadB.codes" | wc -l)" 160 "every load request answered"
expect_eq "$(cat "$T/loadA.codes" "$T/loadB.codes" | grep -c '^[05]' || true)" 0 "no 5xx or failed request while Redis died ($all)"
# (each worker notices the closed connection on its own loop: wait for it, do not race it)
wait_until 15 both_degraded ||
    fail "/readyz with Redis down (still 200): A '$(readyz "$A_ADMIN")' B '$(readyz "$B_ADMIN")'"
expect_eq "$(metric_of "$A_ADMIN" authd_ratelimit_fallback_active)" 1 "fallback gauge of A"
v=$(metric_of "$A_ADMIN" authd_ratelimit_redis_errors_total)
[[ "$v" != missing && "$v" -gt 0 ]] || fail "redis errors on A: $v"
warn_after=$(grep -c 'checking limits in shared memory' "$SERVER_STDERR" || true)
((warn_after > warn_before && warn_after - warn_before <= WORKERS)) ||
    fail "expected one fallback warning per worker, got $((warn_after - warn_before))"
# limits still hold: per IP (all workers of A share the shm table) and the account lockout
codes=""
for i in 1 2 3 4 5 6 7; do
    login "$A_PORT" 198.51.100.30 "down$i@example.com" wrong-password
    codes+="$CODE "
done
expect_eq "$codes" "401 401 401 401 401 401 429 " "per-IP limit during the outage"
login "$A_PORT" 198.51.100.31 ghost@example.com wrong-password
expect_eq "$CODE" 429 "the account lockout survives the outage (mirrored into shared memory)"
# failures counted during the outage reach Redis once it is back (no free guesses from a
# flapping Redis), and a success during the outage clears Redis once it is back
for i in 1 2 3; do
    login "$A_PORT" "198.51.100.6$i" flap@example.com wrong-password
    expect_eq "$CODE" 401 "flap@example.com failure $i during the outage"
done
login "$A_PORT" 198.51.100.64 flap@example.com wrong-password
expect_eq "$CODE" 429 "flap@example.com delayed during the outage"

# ---- Redis back: shared again without a restart ----
start_redis
note "redis-server restarted (pid $REDIS_PID)"
wait_until 15 shared_ok || fail "ratelimit not ok after Redis came back: A '$(readyz "$A_ADMIN")' B '$(readyz "$B_ADMIN")'"
grep -q 'is back; limits are shared again' "$SERVER_STDERR" || fail "no recovery log line"
expect_eq "$(metric_of "$A_ADMIN" authd_ratelimit_fallback_active)" 0 "fallback gauge of A after recovery"
# the restarted Redis is empty: A's next check of flap@example.com pushes its outage failures
flap_in_redis() {
    login "$A_PORT" 198.51.100.65 flap@example.com wrong-password
    [[ "$CODE" == 429 ]] || fail "flap@example.com on A after recovery: $CODE, expected 429"
    [[ "$(rcli HGET "$(akey flap@example.com)" f)" == 3 ]]
}
wait_until 10 flap_in_redis || fail "the failures counted during the outage did not reach Redis"
login "$B_PORT" 198.51.100.66 flap@example.com wrong-password
expect_eq "$CODE" 429 "flap@example.com on B after recovery (outage failures shared)"
codes=$(alternate_logins 198.51.100.40 7)
expect_eq "$codes" "401 401 401 401 401 401 429 " "shared per-IP counting after Redis returned"
expect_contains "$(rcli --scan --pattern 'itest:rl:login:*')" "198.51.100.40" "counter back in Redis"
proc_alive "$B_PID" || fail "instance B died"
pass
