#!/bin/bash
# limits: 431 for oversized headers, 413 for oversized bodies, 400 for garbage, the header
# timeout (slowloris on headers and on the body, silent TLS and TCP connections, counted from a
# request's first byte on keep-alive connections), the idle timeout; normal clients keep being
# served meanwhile, and no worker crashes.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

EXTRA_CONFIG='
http = {
    max_header_size = 4096;
    max_body_size = 1024;
    header_timeout = 2.0;
    idle_timeout = 3.0;
};'
start_server
pids_at_start=$(worker_pids)

# req_error URL CURL-ARGS...: status and JSON error code of one request, as "STATUS CODE".
req_error() {
    local url=$1 b
    shift
    b=$("${CURL[@]}" -o "$T/body.out" -w '%{http_code}' "$@" "$url" 2>"$T/curl.err") || true
    printf '%s %s' "$b" "$("$PY" -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["error"])
except Exception: print("-")' "$T/body.out")"
}

# ---- headers ----
big=$(head -c 10240 /dev/zero | tr '\0' a)
expect_eq "$(req_error "$(https_url /healthz)" -H "X-Big: $big")" "431 headers_too_large" "10 KB header"
expect_eq "$(req_error "$(admin_url /healthz)" -H "X-Big: $big")" "431 headers_too_large" "10 KB header on admin"
ok=$(head -c 3000 /dev/zero | tr '\0' b)
expect_eq "$(status_code "$(https_url /healthz)" -H "X-Ok: $ok")" 200 "3 KB header (within the limit)"
hdrs=()
for i in $(seq 1 120); do hdrs+=(-H "X-H$i: v"); done
expect_eq "$(req_error "$(https_url /healthz)" "${hdrs[@]}")" "431 headers_too_large" "120 header fields"
longurl="/healthz?$(head -c 6000 /dev/zero | tr '\0' q)"
expect_eq "$(req_error "$(https_url "$longurl")")" "431 headers_too_large" "6 KB request line"

# ---- bodies ----
head -c 4096 /dev/zero | tr '\0' x >"$T/4k.bin"
head -c 1000 /dev/zero | tr '\0' y >"$T/1000.bin"
expect_eq "$(req_error "$(https_url /healthz)" -X POST --data-binary @"$T/4k.bin")" "413 body_too_large" "4 KB body"
expect_eq "$(req_error "$(https_url /healthz)" -X POST --data-binary @"$T/4k.bin" -H 'Expect:')" \
    "413 body_too_large" "4 KB body without Expect"
expect_eq "$(req_error "$(https_url /healthz)" -X POST --data-binary @"$T/4k.bin" \
    -H 'Transfer-Encoding: chunked')" "413 body_too_large" "4 KB chunked body"
expect_eq "$(req_error "$(https_url /healthz)" -X POST --data-binary @"$T/1000.bin")" \
    "405 method_not_allowed" "1000-byte body (within the limit) reaches the router"

# ---- malformed requests ----
out=$(pyclient --tls --port "$PORT" --max-time 10 send 'BLAH\r\n\r\n' response close_wait 5)
expect_eq "$(printf '%s' "$out" | json "d['statuses']")" "[400]" "garbage request line"
expect_contains "$out" 'bad_request' "garbage request body"
out=$(pyclient --tls --port "$PORT" --max-time 10 send 'GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n' response close_wait 5)
expect_match "$(printf '%s' "$out" | json "d['statuses']")" '^\[(400|505)\]$' "HTTP/2.0 request line"

# after all of that the server still serves
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving after 431/413/400"

# ---- timeouts: all the slow clients at once, with normal traffic at the same time ----
# Each timed client is cut no sooner than its timeout; the upper bounds leave room for a loaded
# machine (2 cores shared with parallel tests) but stay below what an uncut client would see
# (every trickle lasts longer than its client's --max-time).
timeouts_before=$(metric authd_http_timeouts_total)
slow_pids=()
launch() { # NAME pyclient-args...
    local name=$1
    shift
    bg pyclient "$@" >"$T/$name.out"
    slow_pids+=("$BG_PID")
}
get='GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'
slow_req='GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n'
for i in 1 2 3 4 5; do
    launch "slowloris$i" --tls --port "$PORT" --max-time 12 trickle "$slow_req" 0.5 close_wait 5
done
launch slowbody --tls --port "$PORT" --max-time 12 \
    send 'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n' \
    trickle "$(head -c 100 /dev/zero | tr '\0' z)" 0.3 close_wait 5
launch blank_lines --tls --port "$PORT" --max-time 12 trickle "$(printf '\\r\\n%.0s' $(seq 1 40))" 0.3 close_wait 5
launch admin_slowloris --port "$ADMIN_PORT" --max-time 12 trickle "$slow_req" 0.5 close_wait 5
launch silent_tls --tls --port "$PORT" --max-time 12 close_wait 10
launch silent_tcp --port "$PORT" --max-time 12 close_wait 10
launch slow_handshake --port "$PORT" --max-time 12 \
    trickle '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' 0.5 close_wait 10
launch idle --tls --port "$PORT" --max-time 15 send "$get" response close_wait 10
launch second --tls --port "$PORT" --max-time 15 send "$get" response sleep 2 \
    trickle 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n' 0.25 close_wait 6
launch twice --tls --port "$PORT" --max-time 15 send "$get" response sleep 2 send "$get" response

ok_count=0
start=$(now_ms)
for i in $(seq 1 20); do
    code=$(status_code "$(https_url /healthz)" --max-time 5)
    [[ "$code" == 200 ]] || fail "normal request $i during the slow clients got '$code'"
    ok_count=$((ok_count + 1))
    sleep 0.2
done
note "$ok_count normal requests served in $(($(now_ms) - start)) ms during the slow clients"
for p in "${slow_pids[@]}"; do
    wait_until 20 eval "! proc_alive $p" || fail "slow client $p still running"
done

# closed_between NAME FROM-EXPR LOW HIGH what: the close time (relative to FROM-EXPR) is in range.
closed_between() {
    local out v
    out=$(cat "$T/$1.out")
    v=$(printf '%s' "$out" | json "None if d['closed_s'] is None else round(d['closed_s'] - ($2), 2)")
    awk -v c="$v" -v lo="$3" -v hi="$4" 'BEGIN { exit !(c != "None" && c >= lo && c <= hi) }' ||
        fail "$5: closed after ${v}s, expected $3..$4s: $out"
}
statuses() {
    json "d['statuses']" <"$T/$1.out"
}

for i in 1 2 3 4 5; do
    closed_between "slowloris$i" 0 1.5 7 "slowloris $i (header_timeout 2s)"
    expect_eq "$(statuses "slowloris$i")" "[408]" "slowloris $i response"
    expect_contains "$(cat "$T/slowloris$i.out")" 'request_timeout' "slowloris $i body"
done
closed_between slowbody 0 1.5 7 "slow body (header_timeout 2s)"
expect_eq "$(statuses slowbody)" "[408]" "slow body response"
closed_between blank_lines 0 1.5 7 "blank lines before the request line do not extend the deadline"
closed_between admin_slowloris 0 1.5 7 "slowloris on the admin listener (header_timeout 2s)"
expect_eq "$(statuses admin_slowloris)" "[408]" "slowloris on the admin listener response"
closed_between silent_tls 0 1.5 7 "silent TLS connection (header_timeout 2s)"
closed_between silent_tcp 0 1.5 7 "TCP connection without a TLS handshake (header_timeout 2s)"
closed_between slow_handshake 0 1.5 7 "trickled TLS handshake (header_timeout 2s)"
expect_eq "$(statuses idle)" "[200]" "keep-alive first response"
closed_between idle "d['response_s'][0]" 2.5 7 "idle keep-alive connection (idle_timeout 3s)"
expect_eq "$(statuses second)" "[200, 408]" "slow second request on a keep-alive connection"
closed_between second "[s for s in d['steps'] if s[0] == 'trickle'][0][1]" 1.6 6 \
    "slow second request, from its first byte (header_timeout 2s)"
expect_eq "$(statuses twice)" "[200, 200]" "keep-alive request after 2s idle"

# ---- health afterwards ----
m=$("${CURL[@]}" "$(admin_url /metrics)")
expect_contains "$m" 'status="431"}' "431 responses counted"
expect_contains "$m" 'status="413"}' "413 responses counted"
expect_contains "$m" 'status="408"}' "408 responses counted"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving at the end"
expect_eq "$(metric authd_worker_restarts_total)" 0 "no worker restarted"
expect_eq "$(worker_pids)" "$pids_at_start" "same workers at the end"

# ---- every timeout closure is counted ----
# Since $timeouts_before: 5 slowloris + 1 admin slowloris + 1 slow body + 1 blank lines
# + 1 silent TCP + 1 trickled handshake + 1 silent TLS connection (closed by the header timeout
# after its handshake) + 1 idle keep-alive connection (idle timeout) + 1 slow second request
# = 13 connections closed by the header/body or idle timeout, which is what
# authd_http_timeouts_total's HELP text promises.
timeouts_after=$(metric authd_http_timeouts_total)
note "authd_http_timeouts_total: $timeouts_before -> $timeouts_after"
expect_eq "$((timeouts_after - timeouts_before))" 13 \
    "authd_http_timeouts_total increase (connections closed by the header/body or idle timeout)"

pass
