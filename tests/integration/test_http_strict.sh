#!/bin/bash
# http_strict: RFC 9112 framing over real TLS and on the plain admin listener, with raw requests.
# Header values are never read past their end: a chunked body's trailer fields are dropped (a
# trailer X-Request-Id, User-Agent or X-Forwarded-For is not used), an early answer (400 on a
# broken header, 408 on a slow head) does not read a partial header section, and no worker
# crashes. Refused with a JSON 400 and a closed connection: bare LF (request line, header line,
# end of head, trailer), CR without LF, obs-fold, whitespace before the first header or before a
# colon, a missing (1.1) or repeated Host, any Transfer-Encoding but one "chunked" (and any on
# 1.0), chunk data not followed by CRLF; HTTP/1.9 and HTTP/2.0 get 505. Valid requests still
# work: HTTP/1.0 without Host, chunked bodies (also byte by byte, and with 100-continue),
# pipelining, empty lines before a request.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

LOG="$T/authd.log"
EXTRA_CONFIG="
http = { header_timeout = 4.0; };
password = { memory_kib = 1024; iterations = 1; };
ratelimit = { trusted_proxies = [\"127.0.0.1\"]; };
supervisor = { heartbeat_interval = 0.1; };
log = { file = \"$LOG\"; level = \"info\"; };"
start_server
pids_at_start=$(worker_pids)

# raw public|admin REQUEST [keep]: sends REQUEST (escapes \r \n \t \xNN) on a new connection, reads
# every response, then (without `keep`) waits for the server to close. Sets R_STATUS R_ERROR
# R_MESSAGE R_ID (of the first final response), R_STATUSES (all final ones), R_CLOSED (yes/no);
# the first final body is in $T/raw.body.
raw() {
    local args=(--port "$PORT" --tls) steps=(send "$2" response)
    [[ $1 == admin ]] && args=(--port "$ADMIN_PORT")
    [[ ${3:-} == keep ]] || steps+=(close_wait 10)
    [[ ${3:-} == two ]] && steps=(send "$2" response response)
    pyclient "${args[@]}" --max-time 25 "${steps[@]}" >"$T/raw.json"
    IFS=$'\t' read -r R_STATUS R_ERROR R_MESSAGE R_ID R_STATUSES R_CLOSED < <("$PY" - "$T/raw.json" "$T/raw.body" <<'PYEOF'
import json, re, sys
res = json.load(open(sys.argv[1]))
buf = res["data"].encode("latin-1")
finals = []
while True:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        break
    head = buf[:end].decode("latin-1")
    m = re.search(r"(?im)^content-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    body, buf = buf[end + 4:end + 4 + n], buf[end + 4 + n:]
    status = int(head.split(" ")[1])
    if status != 100:
        finals.append((status, head, body))
st, err, msg, rid = "-", "-", "-", "-"
if finals:
    st, head, body = finals[0]
    open(sys.argv[2], "wb").write(body)
    m = re.search(r"(?im)^x-request-id:\s*(\S+)", head)
    rid = m.group(1) if m else "-"
    try:
        j = json.loads(body)
        err, msg = j.get("error", "-"), j.get("message", "-")
    except ValueError:
        pass
print("\t".join([str(st), err, msg, rid, ",".join(str(f[0]) for f in finals) or "-",
                 "yes" if res["closed_s"] is not None else "no"]))
PYEOF
    )
}

# refused WHAT public|admin REQUEST STATUS MESSAGE-PART: the request is refused with a JSON error
# naming the problem, and the connection is closed.
refused() {
    local code=bad_request
    [[ $4 == 505 ]] && code=http_version_not_supported
    raw "$2" "$3"
    expect_eq "$R_STATUS" "$4" "$1: status" || return 1
    expect_eq "$R_ERROR" "$code" "$1: error code" || return 1
    expect_contains "$R_MESSAGE" "$5" "$1: message" || return 1
    expect_eq "$R_CLOSED" yes "$1: connection closed after the error"
}

# access_line ID: the access-log line with request_id ID (waits for the heartbeat flush).
access_line() {
    wait_until 10 grep -qF "\"request_id\":\"$1\"" "$LOG" || return 0
    grep -F "\"request_id\":\"$1\"" "$LOG" | grep -F '"type":"access"' | head -n 1
}

# user_agent_of ID: the user_agent field of that access line ("<none>" without a line).
user_agent_of() {
    local line
    line=$(access_line "$1")
    [[ -n "$line" ]] || {
        echo "<none>"
        return 0
    }
    printf '%s' "$line" | json "d.get('user_agent', '')"
}

# workers_intact WHAT: the same workers serve, and none reported a sanitizer error.
workers_intact() {
    expect_eq "$(worker_pids)" "$pids_at_start" "$1: worker pids (a worker crashed)"
    if grep -q "AddressSanitizer\|runtime error:" "$SERVER_STDERR"; then
        fail "$1: sanitizer report: $(grep -m3 "AddressSanitizer\|runtime error:\|#[0-9] " "$SERVER_STDERR")"
    fi
}

H='Host: localhost\r\n'
JSON='Content-Type: application/json\r\n'
LOGOUT='{"refresh_token":"x"}' # 21 bytes = 0x15

# ---- finding 1: values past their end ----
note "trailer X-Request-Id after a chunked logout body is not used"
raw public "POST /v1/auth/logout HTTP/1.1\r\n$H$JSON""Transfer-Encoding: chunked\r\n\r\n15\r\n$LOGOUT\r\n0\r\nX-Request-Id: abc\r\n\r\n" keep
expect_eq "$R_STATUS" 204 "logout with a trailer: status"
[[ "$R_ID" != abc* ]] || fail "the trailer X-Request-Id was used: $R_ID"
[[ -n "$(access_line "$R_ID")" ]] || fail "no access line for request $R_ID"
workers_intact "after the trailer request"

note "400 on a broken header: the access log has no bytes the client did not send"
raw public "GET /healthz HTTP/1.1\r\nUser-Agent: a\r\nBad\x01: y\r\n\r\n"
expect_eq "$R_STATUS" 400 "control byte in a header name: status"
expect_contains "$R_MESSAGE" "invalid character in header" "control byte in a header name: message"
ua=$(user_agent_of "$R_ID")
[[ "$ua" == "" || "$ua" == a ]] || fail "400's access line user_agent is '$ua' (the client sent 'a')"
workers_intact "after the broken header"

note "408 on a head that stops mid-header (header_timeout 4 s)"
pyclient --port "$PORT" --tls --max-time 25 send "GET /healthz HTTP/1.1\r\n${H}User-Agent: slow" \
    response close_wait 10 >"$T/slow.json"
expect_eq "$(json "d['statuses']" <"$T/slow.json")" "[408]" "slow head: statuses"
rid=$(json "[l.split(':', 1)[1].strip() for l in d['data'].split('\r\n') if l.lower().startswith('x-request-id:')][0]" <"$T/slow.json")
ua=$(user_agent_of "$rid")
[[ "$ua" == "" || "$ua" == slow ]] || fail "408's access line user_agent is '$ua' (the client sent 'slow')"
expect_eq "$(json "d['closed_s'] is not None" <"$T/slow.json")" true "slow head: connection closed"
workers_intact "after the 408"

note "trailer User-Agent and X-Forwarded-For do not reach the session"
code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary '{"email":"strict@example.com","password":"correct horse battery"}' \
    "$(https_url /v1/auth/register)") || true
expect_eq "$code" 201 "register"
body='{"email":"strict@example.com","password":"correct horse battery"}'
raw public "POST /v1/auth/login HTTP/1.1\r\n$H${JSON}X-Forwarded-For: 198.51.100.7\r\nTransfer-Encoding: chunked\r\n\r\n$(printf '%x' ${#body})\r\n$body\r\n0\r\nUser-Agent: trailer-agent\r\nX-Forwarded-For: 203.0.113.66\r\n\r\n" keep
expect_eq "$R_STATUS" 200 "chunked login with trailers: status"
token=$(json "d['access_token']" <"$T/raw.body")
"${CURL[@]}" -H "Authorization: Bearer $token" "$(https_url /v1/me/sessions)" >"$T/sessions.json"
expect_eq "$(json "d['sessions'][0]['ip']" <"$T/sessions.json")" 198.51.100.7 \
    "session ip (header X-Forwarded-For via the trusted proxy, not the trailer's)"
expect_eq "$(json "d['sessions'][0].get('user_agent') or ''" <"$T/sessions.json")" "" \
    "session user_agent (no User-Agent header was sent; the trailer's is not one)"
workers_intact "after the login with trailers"

# ---- finding 6: strict HTTP/1.1 ----
note "refused framing and headers"
soft refused "bare LF after the request line" public "GET /healthz HTTP/1.1\n$H\r\n" 400 "bare LF"
soft refused "bare LF in a header line" public "GET /healthz HTTP/1.1\r\nHost: localhost\nUser-Agent: a\r\n\r\n" 400 "bare LF"
soft refused "bare LF everywhere (admin)" admin "GET /healthz HTTP/1.1\nHost: localhost\n\n" 400 "bare LF"
soft refused "CR without LF" public "GET /healthz HTTP/1.1\r\n$H\rX" 400 "CR must be followed by LF"
soft refused "obs-fold" public "GET /healthz HTTP/1.1\r\n${H}User-Agent: a\r\n b\r\n\r\n" 400 "folding"
soft refused "obs-fold with HTAB (admin)" admin "GET /healthz HTTP/1.1\r\n${H}X-A: a\r\n\tb\r\n\r\n" 400 "folding"
soft refused "whitespace before the first header" public "GET /healthz HTTP/1.1\r\n $H\r\n" 400 "folding"
soft refused "whitespace before a colon" public "GET /healthz HTTP/1.1\r\nHost : localhost\r\n\r\n" 400 "colon"
soft refused "HTTP/1.1 without Host" public "GET /healthz HTTP/1.1\r\n\r\n" 400 "Host"
soft refused "HTTP/1.1 without Host (admin)" admin "GET /healthz HTTP/1.1\r\nUser-Agent: a\r\n\r\n" 400 "Host"
soft refused "two Host headers" public "GET /healthz HTTP/1.1\r\n${H}Host: other\r\n\r\n" 400 "more than one Host"
soft refused "two Host headers on 1.0" admin "GET /healthz HTTP/1.0\r\n${H}Host: other\r\n\r\n" 400 "more than one Host"
TE_REQ="POST /v1/auth/logout HTTP/1.1\r\n$H$JSON"
CHUNKS="15\r\n$LOGOUT\r\n0\r\n\r\n"
soft refused "Transfer-Encoding: gzip, chunked" public "${TE_REQ}Transfer-Encoding: gzip, chunked\r\n\r\n$CHUNKS" 400 'Transfer-Encoding'
soft refused "Transfer-Encoding: identity" public "${TE_REQ}Transfer-Encoding: identity\r\n\r\n" 400 'Transfer-Encoding'
soft refused "Transfer-Encoding: chunked, chunked" public "${TE_REQ}Transfer-Encoding: chunked, chunked\r\n\r\n$CHUNKS" 400 'Transfer-Encoding'
soft refused "two Transfer-Encoding: chunked lines" public "${TE_REQ}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n$CHUNKS" 400 'Transfer-Encoding'
soft refused "Transfer-Encoding on HTTP/1.0" public "POST /v1/auth/logout HTTP/1.0\r\n${JSON}Transfer-Encoding: chunked\r\n\r\n$CHUNKS" 400 'HTTP/1.0'
soft refused "Transfer-Encoding with Content-Length" public "${TE_REQ}Transfer-Encoding: chunked\r\nContent-Length: 26\r\n\r\n$CHUNKS" 400 'content-length'
soft refused "chunk data not followed by CRLF" public "${TE_REQ}Transfer-Encoding: chunked\r\n\r\n15\r\n${LOGOUT}XY0\r\n\r\n" 400 "Chunk data must be followed by CRLF"
soft refused "CR without LF in a chunk-size line" public "${TE_REQ}Transfer-Encoding: chunked\r\n\r\n15\rX$LOGOUT\r\n0\r\n\r\n" 400 "CR must be followed by LF"
soft refused "bare LF ending the trailer section" public "${TE_REQ}Transfer-Encoding: chunked\r\n\r\n15\r\n$LOGOUT\r\n0\r\n\n" 400 "bare LF"
soft refused "HTTP/1.9" public "GET /healthz HTTP/1.9\r\n$H\r\n" 505 "HTTP/1.1 and HTTP/1.0"
soft refused "HTTP/2.0 over the 1.1 parser" public "GET /healthz HTTP/2.0\r\n$H\r\n" 505 "HTTP/1.1 and HTTP/1.0"
soft refused "HTTP/2.0 (admin)" admin "GET /healthz HTTP/2.0\r\n$H\r\n" 505 "HTTP/1.1 and HTTP/1.0"
workers_intact "after the refused requests"

# ---- still served ----
note "valid requests"
raw public "GET /healthz HTTP/1.0\r\n\r\n"
expect_eq "$R_STATUS" 200 "HTTP/1.0 without Host"
raw admin "GET /healthz HTTP/1.0\r\nUser-Agent: a\r\n\r\n"
expect_eq "$R_STATUS" 200 "HTTP/1.0 without Host (admin)"
raw public "\r\n\r\nGET /healthz HTTP/1.1\r\n$H\r\n" keep
expect_eq "$R_STATUS" 200 "empty lines before the request line"
raw public "GET /healthz HTTP/1.1\r\n$H\r\nGET /healthz HTTP/1.1\r\n${H}X-Request-Id: second\r\n\r\n" two
expect_eq "$R_STATUSES" "200,200" "two pipelined requests"
raw public "${TE_REQ}Transfer-Encoding: Chunked \r\n\r\n5;ext=1\r\n{\"ref\r\n10\r\nresh_token\":\"x\"}\r\n0\r\nX-Trailer: t\r\n\r\n" keep
expect_eq "$R_STATUS" 204 "chunked body in two chunks with an extension and a trailer"
req="${TE_REQ}Transfer-Encoding: chunked\r\n\r\n15\r\n$LOGOUT\r\n0\r\n\r\n"
pyclient --port "$PORT" --tls --max-time 25 trickle "$req" 0 response >"$T/trickle.json"
expect_eq "$(json "d['statuses']" <"$T/trickle.json")" "[204]" "chunked logout sent one byte per TLS record"
code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -H 'Transfer-Encoding: chunked' -H 'Expect: 100-continue' --data-binary "$LOGOUT" \
    "$(https_url /v1/auth/logout)") || true
expect_eq "$code" 204 "curl: chunked body with Expect: 100-continue"
workers_intact "at the end"
pass
