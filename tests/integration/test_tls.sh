#!/bin/bash
# tls: protocol versions (1.0/1.1 refused by the server, 1.2/1.3 accepted), AEAD-only TLS 1.2
# suites, ALPN http/1.1, the configured certificate, no compression, and plain HTTP on the TLS
# port refused without harming the server.
#
# The refusals are checked against a control: `openssl s_server` on the same certificate that
# accepts TLS 1.0 and a CBC suite, so a refusal by authd is not the client refusing by itself.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init

start_server

LEGACY='DEFAULT@SECLEVEL=0' # lets this OpenSSL client offer TLS 1.0/1.1 at all

# sclient PORT ARGS...: one handshake, no request; output in $out, exit status in $rc.
sclient() {
    local port=$1
    shift
    rc=0
    out=$(timeout 15 openssl s_client -connect "127.0.0.1:$port" -servername localhost "$@" \
        </dev/null 2>&1) || rc=$?
}

# session_field Protocol|Cipher: from s_client's "New, <protocol>, Cipher is <cipher>" line (the
# SSL-Session block may be missing for TLS 1.3 when s_client quits before the session ticket).
session_field() {
    local l
    l=$(printf '%s\n' "$out" | grep -E '^(New|Reused), ' | head -n 1)
    if [[ "$1" == Protocol ]]; then
        printf '%s' "$l" | sed -nE 's/^(New|Reused), ([^,]*), .*/\2/p'
    else
        printf '%s' "$l" | sed -nE 's/.*Cipher is ([^ ]*).*/\1/p'
    fi
}

accepted() { # what
    [[ $rc -eq 0 ]] || fail "$1: handshake failed (rc=$rc): $out"
    local c
    c=$(session_field Cipher)
    [[ -n "$c" && "$c" != "(NONE)" ]] || fail "$1: no cipher negotiated: $out"
}

refused() { # what alert-regex
    [[ $rc -ne 0 ]] || fail "$1: handshake unexpectedly succeeded: $(session_field Protocol) $(session_field Cipher)"
    local c
    c=$(session_field Cipher)
    [[ -z "$c" || "$c" == "(NONE)" ]] || fail "$1: a cipher was negotiated: $c"
    expect_match "$out" "$2" "$1: the server's alert"
}

# ---- control server: proves the client can speak what authd must refuse ----
s_server_up() {
    proc_alive "$BG_PID" && (exec 3<>"/dev/tcp/127.0.0.1/$ALT_PORT") 2>/dev/null
}
bg openssl s_server -accept "127.0.0.1:$ALT_PORT" -cert "$CERT" -key "$KEY" -cipher "$LEGACY" \
    -no_tls1_3 -www -quiet >"$T/s_server.out" 2>&1
wait_until 10 s_server_up || fail "control openssl s_server did not start"
control=1
sclient "$ALT_PORT" -tls1 -cipher "$LEGACY"
if [[ $rc -ne 0 || "$(session_field Protocol)" != TLSv1.0 ]]; then
    note "control: this OpenSSL cannot negotiate TLS 1.0 even with $LEGACY; the refusal is only checked by its alert"
    control=0
fi
sclient "$ALT_PORT" -tls1_2 -cipher ECDHE-ECDSA-AES128-SHA
accepted "control: ECDHE-ECDSA-AES128-SHA against openssl s_server"
kill_tree "$BG_PID" TERM

# ---- TLS 1.0 and 1.1 refused with a protocol_version alert from the server ----
sclient "$PORT" -tls1 -cipher "$LEGACY"
refused "TLS 1.0" 'alert protocol version|unsupported protocol|wrong version number'
((control == 0)) || expect_match "$out" 'alert protocol version' "TLS 1.0 refused by the server"
sclient "$PORT" -tls1_1 -cipher "$LEGACY"
refused "TLS 1.1" 'alert protocol version|unsupported protocol|wrong version number'
((control == 0)) || expect_match "$out" 'alert protocol version' "TLS 1.1 refused by the server"

# ---- TLS 1.2: accepted, AEAD suite; non-AEAD suites refused ----
sclient "$PORT" -tls1_2
accepted "TLS 1.2"
expect_eq "$(session_field Protocol)" TLSv1.2 "TLS 1.2 protocol"
expect_match "$(session_field Cipher)" '(GCM|CHACHA20)' "TLS 1.2 suite is AEAD"
expect_contains "$out" "Compression: NONE" "TLS compression off"
expect_match "$out" 'subject=.*CN ?= ?authd-itest' "served certificate subject"

for c in AES128-SHA ECDHE-ECDSA-AES128-SHA ECDHE-ECDSA-AES256-SHA ECDHE-ECDSA-AES128-SHA256 \
    ECDHE-ECDSA-AES256-SHA384; do
    sclient "$PORT" -tls1_2 -cipher "$c"
    refused "TLS 1.2 with non-AEAD $c" 'alert handshake failure|no shared cipher|no cipher'
done
# each AEAD suite the client can pair with a P-256 certificate works
for c in ECDHE-ECDSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-GCM-SHA384 ECDHE-ECDSA-CHACHA20-POLY1305; do
    sclient "$PORT" -tls1_2 -cipher "$c"
    accepted "TLS 1.2 with $c"
    expect_eq "$(session_field Cipher)" "$c" "TLS 1.2 suite"
done

# ---- TLS 1.3 ----
sclient "$PORT" -tls1_3
accepted "TLS 1.3"
expect_eq "$(session_field Protocol)" TLSv1.3 "TLS 1.3 protocol"
expect_match "$(session_field Cipher)" '^TLS_(AES_(128|256)_GCM|CHACHA20_POLY1305)_SHA' "TLS 1.3 suite"

# ---- ALPN ----
sclient "$PORT" -alpn http/1.1
accepted "ALPN http/1.1"
expect_contains "$out" "ALPN protocol: http/1.1" "ALPN http/1.1 negotiated"
sclient "$PORT" -alpn h2,http/1.1
accepted "ALPN h2,http/1.1"
expect_contains "$out" "ALPN protocol: http/1.1" "http/1.1 chosen over h2"
sclient "$PORT" -alpn h2
accepted "ALPN h2 only (no common protocol: carry on without ALPN)"
expect_contains "$out" "No ALPN negotiated" "ALPN h2 only"

# ---- curl over each version ----
expect_eq "$(status_code "$(https_url /healthz)" --tlsv1.2 --tls-max 1.2)" 200 "curl TLS 1.2"
expect_eq "$(status_code "$(https_url /healthz)" --tlsv1.3)" 200 "curl TLS 1.3"
# verification against the test certificate itself (SAN 127.0.0.1)
expect_eq "$(curl -sS --noproxy '*' --max-time 10 --cacert "$CERT" -o /dev/null -w '%{http_code}' \
    "$(https_url /healthz)")" 200 "curl verifying the certificate"

# ---- plain HTTP and garbage on the TLS port ----
failures_before=$(metric authd_tls_handshake_failures_total)
code=$(curl -s --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" || true)
[[ "$code" != 200 ]] || fail "plain HTTP on the TLS port answered 200"
head -c 3000 /dev/urandom | timeout 5 bash -c "cat >/dev/tcp/127.0.0.1/$PORT" 2>/dev/null || true
wait_until 3 eval '(( $(metric authd_tls_handshake_failures_total) >= failures_before + 2 ))' ||
    fail "authd_tls_handshake_failures_total did not count 2 failures (before $failures_before, now $(metric authd_tls_handshake_failures_total))"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "server healthy after bad handshakes"
expect_eq "$(metric authd_worker_restarts_total)" 0 "no worker crashed"

pass
