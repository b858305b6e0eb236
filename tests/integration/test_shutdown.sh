#!/bin/bash
# shutdown: SIGTERM under load drains in-flight requests and exits 0 within the drain timeout;
# an in-flight slow upload still gets its whole response; idle keep-alive connections do not
# hold the shutdown up to the drain timeout; SIGINT stops gracefully too.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python
need_tool wrk

EXTRA_CONFIG='
http = {
    header_timeout = 10.0;
};
supervisor = {
    drain_timeout = 8.0;
};'

# ---- SIGTERM under wrk load ----
start_server
bg wrk -t1 -c8 -d4s --timeout 5s "$(https_url /healthz)" >"$T/wrk.out" 2>&1
wrk_pid=$BG_PID
bg wrk -t1 -c4 -d4s --timeout 5s -H 'Connection: close' "$(https_url /healthz)" >"$T/wrk-close.out" 2>&1
wrk2_pid=$BG_PID
sleep 2
master=$SERVER_PID
wpids=$(children "$master")
t0=$(now_ms)
kill -TERM "$master"
wait_server_exit 12 || fail "master still running 12s after SIGTERM (drain_timeout 8s)"
took=$(($(now_ms) - t0))
note "master exited $SERVER_RC ${took} ms after SIGTERM under load"
expect_eq "$SERVER_RC" 0 "master exit status after SIGTERM"
((took < 8000 + 2000)) || fail "shutdown took ${took} ms, more than the drain timeout"
for w in $wpids; do
    proc_alive "$w" && fail "worker $w still running after the master exited"
done
wait_until 15 eval "! proc_alive $wrk_pid && ! proc_alive $wrk2_pid" || fail "wrk did not finish"
check_wrk() { # file what
    local w errs rd wr to
    w=$(cat "$1")
    note "$2: $(printf '%s\n' "$w" | grep -E 'requests in|Socket errors|Non-2xx' | tr '\n' ' ')"
    expect_match "$w" '[1-9][0-9]* requests in' "$2 made requests"
    errs=$(printf '%s\n' "$w" | sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\2 \3 \4/p')
    if [[ -n "$errs" ]]; then
        read -r rd wr to <<<"$errs"
        # connect errors after the listener closed are expected; nothing else is
        ((rd == 0 && wr == 0 && to == 0)) ||
            fail "$2 saw read/write/timeout errors on connections with requests in flight: $(printf '%s' "$w" | grep 'Socket errors')"
    fi
    if printf '%s' "$w" | grep -q 'Non-2xx'; then
        fail "$2 saw non-2xx responses during shutdown: $(printf '%s' "$w" | grep 'Non-2xx')"
    fi
}
check_wrk "$T/wrk.out" "wrk keep-alive"
check_wrk "$T/wrk-close.out" "wrk Connection: close"
grep -q '"msg":"stopped"' "$SERVER_STDERR" || fail "no 'stopped' log line"
grep -Eq 'drain timeout after|drain timeout: killing' "$SERVER_STDERR" && fail "workers hit the drain timeout under a plain healthz load"

# ---- an in-flight slow upload completes ----
start_server
head -c 8192 /dev/zero | tr '\0' u >"$T/8k.bin"
upload() {
    local rc=0
    curl -sS -k --noproxy '*' --max-time 20 --limit-rate 4k -X POST -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' --data-binary @"$T/8k.bin" \
        -D "$T/upload.headers" -o "$T/upload.body" -w '%{http_code}' "$(https_url /healthz)" \
        >"$T/upload.code" 2>"$T/upload.err" || rc=$?
    echo "$rc" >"$T/upload.rc"
}
t0=$(now_ms)
bg upload
up_pid=$BG_PID
sleep 0.5
proc_alive "$up_pid" || fail "the upload finished before SIGTERM; the test cannot judge draining"
kill -TERM "$SERVER_PID"
note "SIGTERM sent $(($(now_ms) - t0)) ms after the upload started"
wait_until 15 eval "! proc_alive $up_pid" || fail "upload curl still running"
note "upload finished after $(($(now_ms) - t0)) ms"
expect_eq "$(cat "$T/upload.rc")" 0 "curl exit status of the in-flight upload ($(cat "$T/upload.err"))"
expect_eq "$(cat "$T/upload.code")" 405 "status of the in-flight upload"
expect_eq "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["error"])' "$T/upload.body")" \
    method_not_allowed "body of the in-flight upload"
grep -qi '^connection: close' "$T/upload.headers" || fail "a draining worker kept the connection alive: $(cat "$T/upload.headers")"
wait_server_exit 10 || fail "master still running after the upload finished"
expect_eq "$SERVER_RC" 0 "master exit status after draining the upload"

# ---- idle keep-alive connections do not delay the shutdown ----
start_server
launch_idle() {
    pyclient --tls --port "$PORT" --max-time 30 send 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n' \
        response close_wait 25 >"$T/idle$1.out"
}
idle_pids=()
for i in 1 2 3; do
    bg launch_idle "$i"
    idle_pids+=("$BG_PID")
done
wait_until 10 eval '[[ "$(metric authd_http_connections)" -ge 4 ]]' ||
    fail "the idle clients did not connect (connections: $(metric authd_http_connections))"
sleep 0.3
t0=$(now_ms)
kill -INT "$SERVER_PID"
wait_server_exit 12 || fail "master still running 12s after SIGINT"
took=$(($(now_ms) - t0))
note "master exited $SERVER_RC ${took} ms after SIGINT with 3 idle keep-alive connections"
expect_eq "$SERVER_RC" 0 "master exit status after SIGINT"
((took < 5000)) || fail "idle keep-alive connections held the shutdown for ${took} ms (drain_timeout 8s)"
for p in "${idle_pids[@]}"; do
    wait_until 5 eval "! proc_alive $p" || fail "idle client $p still running"
done
for i in 1 2 3; do
    expect_eq "$(json "d['statuses']" <"$T/idle$i.out")" "[200]" "idle client $i"
    [[ "$(json "d['closed_s']" <"$T/idle$i.out")" != None ]] || fail "idle client $i never saw its connection close"
done

pass
