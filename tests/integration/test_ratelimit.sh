#!/bin/bash
# ratelimit: the embedded (shm) backend end to end — per-IP rules on login, registration, token
# refresh and every public route, shared by all workers (a concurrent burst lets exactly the
# limit through); X-Forwarded-For honoured from a trusted proxy only; 429 too_many_attempts with
# Retry-After, RateLimit-Policy and RateLimit; the per-account lockout (delay after the
# threshold, even for the right password; identical for an unknown email; reset by a success;
# a hard lock at max_failures); /healthz never limited; after a reload without trusted proxies,
# a forged X-Forwarded-For is ignored; the metrics and /readyz. Several X-Forwarded-For lines are
# combined (a forged first line does not evade the limit); IPv6 clients share a limit per /64;
# the per-account lockout also guards the current password of /v1/me/password.
# Every period and delay asserted on is an hour or a day, so a slow machine cannot refill a
# quota or end a delay during the test; what needs a delay to end (a success after it, the
# hard lock) runs on a second server with 0.1-1 s delays and only asserts what holds however
# much later the next request comes (after sleeping past the delay).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

RATELIMIT_ENV=()
DAY=86400
limits_config() { # LOCKOUT
    EXTRA_CONFIG="password = { memory_kib = 1024; iterations = 1; };
ratelimit = {
    trusted_proxies = [\"127.0.0.1\"];
    global = { limit = 30; period = $DAY; };
    login = { limit = 5; period = $DAY; };
    register = { limit = 3; period = $DAY; };
    refresh = { limit = 2; period = $DAY; };
    lockout = { $1 };
};"
}
# An hour-long first delay: "during the delay" cannot end before the next request.
limits_config "threshold = 3; base_delay = 3600; max_delay = 3600; max_failures = 6; reset_after = $DAY;"
start_server

# api METHOD PATH IP [BODY]: one request from client IP (X-Forwarded-For through the trusted
# peer 127.0.0.1). Sets CODE, BODY, HDRS.
api() {
    local method=$1 path=$2 ip=$3 body=${4-}
    local a=(-X "$method" -D "$T/h.out" -o "$T/b.out" -w '%{http_code}' -H "X-Forwarded-For: $ip")
    [[ -n "$body" ]] && a+=(-H 'Content-Type: application/json' --data-binary "$body")
    rm -f "$T/h.out" "$T/b.out"
    CODE=$("${CURL[@]}" "${a[@]}" "$(https_url "$path")" 2>/dev/null) || true
    BODY=$(cat "$T/b.out" 2>/dev/null || true)
    HDRS=$(tr -d '\r' <"$T/h.out" 2>/dev/null || true)
}
header() {
    printf '%s\n' "$HDRS" | awk -v n="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" -F': ' \
        'tolower($1) == n { sub(/^[^:]*: /, ""); print; exit }'
}
creds() { printf '{"email":"%s","password":"%s"}' "$1" "$2"; }
login() { api POST /v1/auth/login "$1" "$(creds "$2" "$3")"; }
expect_429() { # WHAT
    expect_eq "$CODE" 429 "$1 status"
    expect_eq "$(printf '%s' "$BODY" | json "d['error']")" too_many_attempts "$1 error code"
    expect_match "$(header retry-after)" '^[1-9][0-9]*$' "$1 Retry-After"
}

# ---- per-IP login limit, shared by both workers: a burst of 16 lets exactly 5 through ----
note "burst of 16 concurrent logins from one client address (limit 5 per day)"
pids=()
for i in $(seq 1 16); do
    bg bash -c '"${@:2}" >"$1" 2>/dev/null' _ "$T/burst.$i" "${CURL[@]}" -o /dev/null \
        -w '%{http_code}\n' -H 'X-Forwarded-For: 198.51.100.1' -H 'Content-Type: application/json' \
        --data-binary "$(creds "nobody$i@example.com" wrong-password)" "$(https_url /v1/auth/login)"
    pids+=("$BG_PID")
done
for p in "${pids[@]}"; do
    wait "$p" || true
done
codes=$(cat "$T"/burst.* | sort | uniq -c | awk '{ printf "%s:%s ", $2, $1 }')
note "burst answers: $codes"
expect_eq "$(cat "$T"/burst.* | grep -c '^401$')" 5 "logins let through by the per-IP limit ($codes)"
expect_eq "$(cat "$T"/burst.* | grep -c '^429$')" 11 "logins refused by the per-IP limit ($codes)"
login 198.51.100.1 someone@example.com wrong-password
expect_429 "login over the per-IP limit"
expect_eq "$(header ratelimit-policy)" "\"global\";q=30;w=$DAY, \"login\";q=5;w=$DAY" "RateLimit-Policy"
expect_match "$(header ratelimit)" '^"global";r=[0-9]+;t=[0-9]+, "login";r=0;t=[0-9]+$' "RateLimit"
# another client address is not affected
login 198.51.100.2 someone@example.com wrong-password
expect_eq "$CODE" 401 "login from another client address"
expect_match "$(header ratelimit)" '"login";r=4;t=' "RateLimit of a fresh client address"

# ---- X-Forwarded-For is ignored unless the peer is a trusted proxy: covered by the unit test;
# here a malformed header falls back to the peer (127.0.0.1), which has its own quota ----
login "not-an-address" someone@example.com wrong-password
expect_eq "$CODE" 401 "malformed X-Forwarded-For uses the peer address"

# ---- registration and refresh limits ----
for i in 1 2 3; do
    api POST /v1/auth/register 198.51.100.3 "$(creds "user$i@example.com" "correct horse battery $i")"
    expect_eq "$CODE" 201 "registration $i"
done
api POST /v1/auth/register 198.51.100.3 "$(creds user4@example.com "correct horse battery 4")"
expect_429 "registration over the limit"
expect_contains "$(header ratelimit-policy)" "\"register\";q=3;w=$DAY" "register RateLimit-Policy"
for i in 1 2; do
    api POST /v1/auth/refresh 198.51.100.4 '{"refresh_token":"x"}'
    expect_eq "$CODE" 401 "refresh $i"
done
api POST /v1/auth/refresh 198.51.100.4 '{"refresh_token":"x"}'
expect_429 "refresh over the limit"

# ---- the global rule covers every public route ----
for i in $(seq 1 30); do
    api GET /.well-known/jwks.json 198.51.100.5
    [[ "$CODE" == 200 ]] || fail "JWKS request $i: $CODE"
done
api GET /.well-known/jwks.json 198.51.100.5
expect_429 "31st request on the global rule"
expect_eq "$(header ratelimit-policy)" "\"global\";q=30;w=$DAY" "global RateLimit-Policy on a refusal"
api GET /no/such/path 198.51.100.5
expect_eq "$CODE" 429 "unknown paths count on the global rule too"
api GET /healthz 198.51.100.5
expect_eq "$CODE" 200 "/healthz (load-balancer probes) is never limited"

# ---- per-account lockout ----
EMAIL=alice@example.com
PASS="correct horse battery staple"
api POST /v1/auth/register 198.51.100.10 "$(creds "$EMAIL" "$PASS")"
expect_eq "$CODE" 201 "register $EMAIL"
for i in 1 2 3; do # from three addresses: the account counts, not the IP
    login "198.51.100.1$i" "$EMAIL" wrong-password
    expect_eq "$CODE" 401 "wrong password $i"
done
login 198.51.100.14 "$EMAIL" "$PASS"
expect_429 "right password during the delay"
expect_contains "$BODY" "account" "lockout message"
known_body=$BODY
known_ra=$(header retry-after)
((known_ra > 3000 && known_ra <= 3600)) || fail "lockout Retry-After $known_ra, expected the hour's rest"
# an unknown email gets exactly the same answer after the same failures
for i in 1 2 3; do
    login "198.51.100.2$i" ghost@example.com wrong-password
    expect_eq "$CODE" 401 "unknown email failure $i"
done
login 198.51.100.24 ghost@example.com wrong-password
expect_429 "unknown email after the threshold"
expect_eq "$BODY" "$known_body" "lockout body identical for an unknown email"
ra=$(header retry-after)
((ra > 3000 && ra <= 3600)) || fail "unknown email Retry-After $ra, expected the hour's rest like $known_ra"
# a success resets the count: two failures, the right password, then three failures again
# before the delay (without the reset the first of them would be refused)
BOB=bob@example.com
api POST /v1/auth/register 198.51.100.10 "$(creds "$BOB" "$PASS")"
expect_eq "$CODE" 201 "register $BOB"
for i in 1 2; do
    login 198.51.100.17 "$BOB" wrong-password
    expect_eq "$CODE" 401 "$BOB failure $i before the success"
done
login 198.51.100.15 "$BOB" "$PASS"
expect_eq "$CODE" 200 "right password below the threshold"
for i in 1 2 3; do
    login 198.51.100.16 "$BOB" wrong-password
    expect_eq "$CODE" 401 "failure $i after the reset"
done
login 198.51.100.16 "$BOB" wrong-password
expect_429 "delay again after three new failures"

# ---- several X-Forwarded-For lines: combined in order, the proxy's own line counts ----
# The client sends a forged line, the trusted proxy (127.0.0.1) appends its own line.
codes=""
for i in 1 2 3 4 5 6; do
    CODE=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -H "X-Forwarded-For: 203.0.113.$i" \
        -H 'X-Forwarded-For: 198.51.100.60' -H 'Content-Type: application/json' \
        --data-binary "$(creds "multi$i@example.com" wrong-password)" \
        "$(https_url /v1/auth/login)" 2>/dev/null) || true
    codes+="$CODE "
done
expect_eq "$codes" "401 401 401 401 401 429 " "forged left X-Forwarded-For lines do not evade the limit"
login 198.51.100.60 multi7@example.com wrong-password
expect_429 "the address of the proxy's line is the one limited"
login 203.0.113.7 multi8@example.com wrong-password
expect_eq "$CODE" 401 "the forged address has its own, untouched quota"

# ---- IPv6 clients are limited per /64 (ratelimit.ipv6_prefix) ----
codes=""
for i in 1 2 3 4 5 6; do
    login "2001:db8:5:6::$i" "v6-$i@example.com" wrong-password
    codes+="$CODE "
done
expect_eq "$codes" "401 401 401 401 401 429 " "addresses of one IPv6 /64 share the limit"
login 2001:db8:5:6:ffff:1:2:3 v6-7@example.com wrong-password
expect_eq "$CODE" 429 "any address of the /64"
login 2001:db8:5:7::1 v6-8@example.com wrong-password
expect_eq "$CODE" 401 "another /64 is not affected"

# ---- password change: the current password cannot be brute-forced with an access token ----
PW_EMAIL=pwchange@example.com
api POST /v1/auth/register 198.51.100.70 "$(creds "$PW_EMAIL" "$PASS")"
expect_eq "$CODE" 201 "register $PW_EMAIL"
login 198.51.100.70 "$PW_EMAIL" "$PASS"
expect_eq "$CODE" 200 "sign in $PW_EMAIL"
PW_AT=$(printf '%s' "$BODY" | json "d['access_token']")
change() { # IP CURRENT NEW
    api_auth POST /v1/me/password "$1" "$(printf '{"current_password":"%s","new_password":"%s"}' "$2" "$3")"
}
api_auth() { # METHOD PATH IP BODY, with the access token
    rm -f "$T/h.out" "$T/b.out"
    CODE=$("${CURL[@]}" -X "$1" -D "$T/h.out" -o "$T/b.out" -w '%{http_code}' \
        -H "X-Forwarded-For: $3" -H "Authorization: Bearer $PW_AT" \
        -H 'Content-Type: application/json' --data-binary "$4" "$(https_url "$2")" \
        2>/dev/null) || true
    BODY=$(cat "$T/b.out" 2>/dev/null || true)
    HDRS=$(tr -d '\r' <"$T/h.out" 2>/dev/null || true)
}
for i in 1 2 3; do
    change "198.51.100.7$i" "wrong current $i" "another good passphrase $i"
    expect_eq "$CODE" 401 "wrong current password $i"
done
change 198.51.100.75 "$PASS" "another good passphrase 9"
expect_429 "password change with the right password during the delay"
expect_contains "$BODY" "current password" "password-change lockout message"

# ---- without trusted proxies (after a reload) X-Forwarded-For is ignored ----
EXTRA_CONFIG=${EXTRA_CONFIG/trusted_proxies = \[\"127.0.0.1\"\];/trusted_proxies = [];}
[[ "$EXTRA_CONFIG" != *127.0.0.1* ]] || fail "test bug: trusted_proxies not removed"
write_config
# shellcheck disable=SC2034 # read by the eval below
next_gen=$(($(generation) + 1))
authd reload >/dev/null || fail "reload refused"
wait_until 20 eval '[[ "$(ready_count "$next_gen")" -ge $WORKERS ]]' || fail "new generation not ready"
codes=""
for i in 1 2 3 4 5 6; do
    login "203.0.113.$i" "spoof$i@example.com" wrong-password
    codes+="$CODE "
done
note "six logins with six forged X-Forwarded-For addresses: $codes"
expect_contains "$codes" 429 "forged X-Forwarded-For from an untrusted peer must not evade the limit"
if grep -q '"ip":"203.0.113.1"' "$SERVER_STDERR"; then
    fail "a forged X-Forwarded-For address reached the audit log"
fi

# ---- metrics and readiness ----
m=$("${CURL[@]}" "$(admin_url /metrics)")
for rule in login register refresh global account; do
    v=$(awk -v n="authd_ratelimit_limited_total{rule=\"$rule\"}" 'index($0, n " ") == 1 { print $2 }' <<<"$m")
    [[ -n "$v" && "$v" -gt 0 ]] || fail "authd_ratelimit_limited_total{rule=\"$rule\"} = '$v'"
done
expect_match "$m" 'authd_ratelimit_lockouts_total [1-9]' "lockouts counted"
expect_match "$m" 'authd_ratelimit_checks_total\{backend="shm"\} [1-9]' "shm checks counted"
expect_match "$m" 'authd_ratelimit_checks_total\{backend="redis"\} 0' "no redis checks"
expect_match "$m" 'authd_ratelimit_fallback_active 0' "no fallback on shm"
expect_match "$m" 'authd_ratelimit_shm_capacity\{table="address"\} [1-9][0-9]*' "address region capacity exported"
expect_match "$m" 'authd_ratelimit_shm_capacity\{table="account"\} [1-9][0-9]*' "account region capacity exported"
expect_match "$m" 'authd_ratelimit_store_refused_total\{table="account"\} 0' "no store refused in a roomy table"
expect_match "$m" 'authd_auth_events_total\{event="login",result="failure"\} [1-9]' "login failures counted"
expect_match "$m" 'authd_auth_events_total\{event="login",result="success"\} [1-9]' "login successes counted"
expect_match "$m" 'authd_auth_events_total\{event="register",result="success"\} [1-9]' "registrations counted"
expect_match "$m" 'authd_http_requests_total\{route="login",status="429"\} [1-9]' "429 counted on the login route"
ready=$("${CURL[@]}" "$(admin_url /readyz)")
expect_eq "$(printf '%s' "$ready" | json "d['checks']['ratelimit']")" ok "/readyz ratelimit check"
# the audit lines carry the client address from X-Forwarded-For
grep -q '"ip":"198.51.100.15"' "$SERVER_STDERR" || fail "audit line without the forwarded client address"

# ---- delays end; the hard lock (a second server: delays of 0.1 to 1 s) ----
# Only what holds however late the next request comes: each sleep outlasts the delay before it.
server_kill
limits_config "threshold = 1; base_delay = 0.1; max_delay = 1; max_failures = 3; reset_after = $DAY;"
start_server
login 198.51.100.80 "$BOB" wrong-password
expect_eq "$CODE" 401 "$BOB failure on the short-delay server"
sleep 1.1
login 198.51.100.81 "$BOB" "$PASS"
expect_eq "$CODE" 200 "right password after the delay"
# hard lock at max_failures (3): failures counted after each delay, then locked for reset_after
for i in 1 2 3; do
    login "198.51.100.8$((i + 1))" ghost2@example.com wrong-password
    expect_eq "$CODE" 401 "ghost2 failure $i (after the delay before it)"
    ((i == 3)) || sleep 1.1
done
login 198.51.100.85 ghost2@example.com wrong-password
expect_429 "hard lock"
ra=$(header retry-after)
((ra > DAY - 600 && ra <= DAY)) || fail "hard lock Retry-After $ra, expected about reset_after ($DAY)"
sleep 1.1
login 198.51.100.86 ghost2@example.com wrong-password
expect_429 "hard lock after max_delay has passed"
# the current password of a password change: the delay ends too
login 198.51.100.87 "$PW_EMAIL" "$PASS"
expect_eq "$CODE" 200 "sign in $PW_EMAIL on the short-delay server"
PW_AT=$(printf '%s' "$BODY" | json "d['access_token']")
change 198.51.100.88 "wrong current 4" "another good passphrase 8"
expect_eq "$CODE" 401 "wrong current password on the short-delay server"
sleep 1.1
change 198.51.100.89 "$PASS" "another good passphrase 9"
expect_eq "$CODE" 204 "password change after the delay"
pass
