#!/bin/bash
# reload: 10 reloads under continuous keep-alive (wrk) and new-connection (curl) load lose no
# request; an invalid configuration is refused (exit 1 naming file:line), the old generation
# keeps serving and the failure is counted; a fixed file reloads; a certificate replaced on disk
# is served after a reload, and a mismatched key is refused. (A new generation that cannot start
# is rolled back: test_reload_rollback.sh.)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python
need_tool wrk

EXTRA_CONFIG='
supervisor = {
    drain_timeout = 10.0;
};'
start_server

# gen_ready GEN: generation GEN is current and all its workers are ready.
gen_ready() {
    local js
    js=$(status_json 2>/dev/null) || return 1
    [[ "$(printf '%s' "$js" | json "d['generation'] == $1 and sum(1 for w in d['workers'] if w['generation'] == $1 and w['state'] == 'ready') == d['workers_wanted']")" == true ]]
}

# only_gen GEN: every worker left belongs to generation GEN (older ones finished draining).
only_gen() {
    [[ "$(status_json | json "all(w['generation'] == $1 for w in d['workers'])")" == true ]]
}

# ---- 10 reloads under load ----
duration=22
bg wrk -t1 -c8 -d${duration}s --timeout 5s "$(https_url /healthz)" >"$T/wrk.out" 2>&1
wrk_pid=$BG_PID
curl_loop() {
    local end=$(($(now_ms) + (duration - 2) * 1000)) n=0 code
    while (($(now_ms) < end && n < 5000)); do
        code=$(status_code "$(https_url /healthz)" --max-time 5)
        echo "$code"
        n=$((n + 1))
    done
}
bg curl_loop >"$T/curl-loop.out"
curl_pid=$BG_PID
bg wrk -t1 -c2 -d$((duration - 2))s --timeout 5s -H 'Connection: close' "$(https_url /healthz)" >"$T/wrk-close.out" 2>&1
wrk2_pid=$BG_PID
sleep 1.5

# Alternately `authd reload` (control socket) and SIGHUP.
gen0=$(generation)
for i in $(seq 1 10); do
    want=$((gen0 + i))
    if ((i % 2)); then
        rc=0
        out=$(timeout 10 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || rc=$?
        expect_eq "$rc" 0 "authd reload $i exit status ($out)"
        expect_contains "$out" "ok: generation $want starting" "authd reload $i answer"
    else
        kill -HUP "$SERVER_PID"
    fi
    wait_until 8 gen_ready "$want" || fail "generation $want not ready 8s after reload $i"
    sleep 0.8
done
note "10 reloads done, generation $(generation)"
expect_eq "$(generation)" "$((gen0 + 10))" "generation after 10 reloads"

wait_until $((duration + 10)) eval "! proc_alive $wrk_pid" || fail "wrk did not finish"
wait_until 10 eval "! proc_alive $curl_pid" || fail "curl loop did not finish"
wait_until 10 eval "! proc_alive $wrk2_pid" || fail "second wrk did not finish"

check_wrk() { # file what
    local w
    w=$(cat "$1")
    note "$2: $(printf '%s\n' "$w" | grep -E 'requests in|Requests/sec|Socket errors|Non-2xx' | tr '\n' ' ')"
    expect_match "$w" '[1-9][0-9]* requests in' "$2 made requests"
    if printf '%s' "$w" | grep -q 'Socket errors'; then
        fail "$2 saw socket errors during reloads: $(printf '%s' "$w" | grep 'Socket errors')"
    fi
    if printf '%s' "$w" | grep -q 'Non-2xx'; then
        fail "$2 saw non-2xx responses during reloads: $(printf '%s' "$w" | grep 'Non-2xx')"
    fi
}
check_wrk "$T/wrk.out" "wrk keep-alive"
check_wrk "$T/wrk-close.out" "wrk Connection: close"
total=$(wc -l <"$T/curl-loop.out")
good=$(grep -cx 200 "$T/curl-loop.out" || true)
note "curl loop: $good of $total requests succeeded"
((total >= 20)) || fail "curl loop made only $total requests"
expect_eq "$good" "$total" "curl loop requests answered 200 (failures: $(grep -vx 200 "$T/curl-loop.out" | sort | uniq -c | tr '\n' ' '))"
wait_until 15 only_gen "$((gen0 + 10))" || fail "old generations still running: $(worker_pids)"
expect_eq "$(metric authd_reloads_total)" 10 "authd_reloads_total"
expect_eq "$(metric authd_worker_restarts_total)" 0 "no worker crashed during reloads"

# ---- an invalid configuration is refused (SIGHUP) ----
gen=$(generation)
pids=$(worker_pids)
cp "$CONF" "$T/good.conf"
printf 'http = {\n    max_body_size = = 5;\n};\n' >>"$CONF"
bad_line=$(($(wc -l <"$T/good.conf") + 2))
CLI_CONF="$T/good.conf" # the CLI reads its configuration too: let status work meanwhile
kill -HUP "$SERVER_PID"
wait_until 5 eval '[[ "$(metric authd_reload_failures_total)" == 1 ]]' ||
    fail "SIGHUP with an invalid file not counted in authd_reload_failures_total ($(metric authd_reload_failures_total))"
server_alive || fail "master died on SIGHUP with an invalid file"
expect_eq "$(generation)" "$gen" "generation after a refused reload"
expect_eq "$(worker_pids)" "$pids" "workers after a refused reload"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "old generation serves after a refused reload"
expect_eq "$(metric authd_reloads_total)" 10 "authd_reloads_total after a refused reload"
grep -q "reload refused.*$CONF:$bad_line: syntax error" "$SERVER_STDERR" ||
    fail "no 'reload refused ... $CONF:$bad_line: syntax error' log line"

# fixed file: reload works again
cp "$T/good.conf" "$CONF"
CLI_CONF=""
kill -HUP "$SERVER_PID"
wait_until 8 gen_ready "$((gen + 1))" || fail "generation $((gen + 1)) not ready after the fixed reload"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving after the fixed reload"

# ---- certificate rotation ----
serial_of() { # port
    timeout 10 openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -serial -subject 2>/dev/null | tr '\n' ' '
}
before=$(serial_of "$PORT")
expect_match "$before" 'serial=0*3E9 .*CN ?= ?authd-itest' "certificate before rotation (serial 1001)"
gen_cert rotated "authd-itest-rotated" 2002
cp "$T/rotated.key" "$KEY.new" && mv -f "$KEY.new" "$KEY"
cp "$T/rotated.crt" "$CERT.new" && mv -f "$CERT.new" "$CERT"
gen=$(generation)
# the running generation keeps the certificate it loaded until a reload
expect_eq "$(serial_of "$PORT")" "$before" "certificate before the reload"
kill -HUP "$SERVER_PID"
wait_until 8 gen_ready "$((gen + 1))" || fail "generation $((gen + 1)) not ready after the rotation"
wait_until 5 only_gen "$((gen + 1))" || fail "old generation still running after the rotation"
after=$(serial_of "$PORT")
expect_match "$after" 'serial=0*7D2 .*CN ?= ?authd-itest-rotated' "certificate after rotation (serial 2002)"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving with the new certificate"

# ---- `authd reload` refused by the master: a key that does not match the certificate ----
gen_cert other "authd-itest-other" 3003
cp "$T/other.key" "$KEY"
gen=$(generation)
rc=0
out=$(timeout 20 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || rc=$?
expect_eq "$rc" 1 "authd reload with a mismatched key"
expect_contains "$out" "error: reload refused:" "authd reload with a mismatched key"
expect_match "$out" "private key.*(mismatch|does not match)" "authd reload with a mismatched key"
expect_eq "$(generation)" "$gen" "generation after the mismatched key"
expect_match "$(serial_of "$PORT")" 'serial=0*7D2 ' "certificate after the refused reload"
expect_eq "$(metric authd_reload_failures_total)" 2 "authd_reload_failures_total after the mismatched key"
cp "$T/rotated.key" "$KEY"

# ---- `authd reload` with an out-of-range value: refused by the master, exit 1 with file:line ----
cp "$T/good.conf" "$CONF"
printf 'http = {\n    max_header_size = 10;\n};\n' >>"$CONF"
gen=$(generation)
rc=0
out=$(timeout 20 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || rc=$?
expect_eq "$rc" 1 "authd reload with an out-of-range value"
expect_contains "$out" "error: reload refused:" "authd reload with an out-of-range value"
expect_contains "$out" "$CONF:$bad_line: http.max_header_size = 10 is out of range" \
    "authd reload with an out-of-range value names file:line"
expect_eq "$(generation)" "$gen" "generation after authd reload with an out-of-range value"
expect_eq "$(metric authd_reload_failures_total)" 3 "authd_reload_failures_total after the out-of-range value"

# ---- `authd reload` with a syntax error: refused by the master, exit 1 with file:line ----
cp "$T/good.conf" "$CONF"
printf 'http = {\n    max_body_size = = 5;\n};\n' >>"$CONF"
CLI_CONF="$T/good.conf"
gen=$(generation)
rc=0
out=$(timeout 20 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || rc=$?
expect_eq "$rc" 1 "authd reload with a syntax error"
expect_contains "$out" "$CONF:$bad_line:" "authd reload with a syntax error names file:line"
expect_eq "$(generation)" "$gen" "generation after authd reload with a syntax error"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving after authd reload with a syntax error"
soft expect_contains "$out" "error: reload refused:" "authd reload with a syntax error (the master must judge it)"
soft expect_eq "$(metric authd_reload_failures_total)" 4 "authd_reload_failures_total after authd reload with a syntax error"
cp "$T/good.conf" "$CONF"
CLI_CONF=""

# ---- `authd reload` over the control socket: answers promptly, exactly one new generation ----
gen=$(generation)
t0=$(now_ms)
rc=0
out=$(timeout 10 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || rc=$?
took=$(($(now_ms) - t0))
note "authd reload returned $rc in ${took} ms: $out"
wait_until 8 gen_ready "$((gen + 1))" || fail "generation $((gen + 1)) not ready after authd reload"
soft expect_eq "$rc" 0 "authd reload exit status (124: still waiting for the master's answer after 10s)"
soft expect_contains "$out" "ok: generation $((gen + 1)) starting" "authd reload answer"
((took < 5000)) || soft fail "authd reload took ${took} ms to return"
sleep 1
expect_eq "$(generation)" "$((gen + 1))" "generation after one authd reload"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving at the end"

pass
