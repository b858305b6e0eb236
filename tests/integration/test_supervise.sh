#!/bin/bash
# supervise: a killed worker is replaced and counted; a stopped (hung) worker is killed after
# the heartbeat timeout and replaced; requests keep succeeding; a crash loop makes the master
# give up with a non-zero exit status and no worker left behind.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

# replaced OLD: OLD is gone (reaped) and two ready workers of the current generation run.
replaced() {
    local pids
    proc_alive "$1" && return 1
    pids=$(worker_pids) || return 1
    [[ " $pids " != *" $1 "* ]] || return 1
    [[ "$(ready_count 1)" == 2 ]]
}

# outlived SECONDS: every worker has run longer than SECONDS (status uptime_s).
outlived() {
    [[ "$(status_json | json "all(w['uptime_s'] > $1 for w in d['workers'] if w['state'] != 'free')")" == true ]]
}

# cpu_counted: process_cpu_seconds_total is positive (the master samples it once a second).
cpu_counted() {
    awk -v c="$(metric process_cpu_seconds_total)" 'BEGIN { exit !(c + 0 > 0) }'
}

# all_ok N: N requests on new connections all succeed.
all_ok() {
    local i code
    for ((i = 1; i <= $1; i++)); do
        code=$(status_code "$(https_url /healthz)" --max-time 5)
        [[ "$code" == 200 ]] || fail "request $i got '$code'"
    done
}

# ---- part 1: kill -9 and SIGSTOP (crash_window short so these do not build a crash streak) ----
EXTRA_CONFIG='
supervisor = {
    heartbeat_interval = 0.2;
    heartbeat_timeout = 1.0;
    crash_window = 0.5;
};'
start_server
wait_until 10 outlived 0.6 || fail "workers did not outlive crash_window"

pids=$(worker_pids)
victim=${pids%% *}
other=${pids##* }
[[ "$victim" != "$other" ]] || fail "expected two workers, got '$pids'"
# process_cpu_seconds_total counts master + workers and must not fall when a worker dies.
wait_until 10 cpu_counted ||
    fail "process_cpu_seconds_total should be positive, got '$(metric process_cpu_seconds_total)'"
cpu_before=$(metric process_cpu_seconds_total)
t0=$(now_ms)
kill -KILL "$victim"
wait_until 6 replaced "$victim" || fail "worker $victim not replaced within 6s (status: $(worker_pids))"
took=$(($(now_ms) - t0))
note "SIGKILLed worker $victim replaced in ${took} ms by $(worker_pids)"
((took <= 3000)) || fail "replacing a SIGKILLed worker took ${took} ms (expected about 2s at most)"
proc_alive "$other" || fail "the other worker $other died too"
all_ok 10
expect_eq "$(metric authd_worker_restarts_total)" 1 "authd_worker_restarts_total after one kill"
cpu_after=$(metric process_cpu_seconds_total)
awk -v a="$cpu_after" -v b="$cpu_before" 'BEGIN { exit !(a + 0 >= b + 0) }' ||
    fail "process_cpu_seconds_total fell from $cpu_before to $cpu_after when a worker died"
note "process_cpu_seconds_total $cpu_before -> $cpu_after across the kill"
expect_eq "$(status_json | json "d['worker_restarts']")" 1 "status worker_restarts after one kill"
grep -q "worker pid $victim .*killed by signal 9" "$SERVER_STDERR" || fail "no log line for the killed worker"
expect_eq "$(generation)" 1 "generation unchanged by a respawn"

wait_until 10 outlived 0.6 || fail "the new worker did not outlive crash_window"
pids=$(worker_pids)
victim=${pids%% *}
t0=$(now_ms)
kill -STOP "$victim"
# while it is stopped the other worker keeps serving new connections
all_ok 5
wait_until 7 replaced "$victim" || fail "stopped worker $victim not replaced within 7s (status: $(worker_pids))"
took=$(($(now_ms) - t0))
note "SIGSTOPped worker $victim killed and replaced in ${took} ms"
((took <= 4500)) || fail "replacing a stopped worker took ${took} ms (heartbeat_timeout 1s; expected about 3s at most)"
all_ok 10
expect_eq "$(metric authd_worker_restarts_total)" 2 "authd_worker_restarts_total after the hung worker"
grep -q "worker pid $victim .*missed its heartbeat" "$SERVER_STDERR" || fail "no 'missed its heartbeat' log line"
expect_eq "$(metric 'authd_workers{state="ready"}')" 2 "ready workers at the end of part 1"

server_kill

# ---- part 2: crash loop ----
# Only the workers the master reports are killed, each as soon as it shows up in `authd status`
# (never "every child of the master": after it gives up, an ASan build's master forks the
# LeakSanitizer tracer at exit, and killing that leaves the master spinning forever in
# StopTheWorld). crash_window is far longer than any run can take, so each kill is a fast crash
# however slow the machine is.
: >"$SERVER_STDERR"
WORKERS=1
EXTRA_CONFIG='
supervisor = {
    heartbeat_interval = 0.2;
    heartbeat_timeout = 1.0;
    crash_window = 3600.0;
    crash_loop_limit = 3;
    backoff_max = 1.0;
};'
start_server
killed=" "
kills=0
# next_worker: sets W to a worker pid the master reports that was not killed yet, or to ""
# once the master has exited; 1 while neither.
next_worker() {
    local p pids
    W=""
    server_alive || return 0
    pids=$(worker_pids 2>/dev/null) || return 1
    for p in $pids; do
        if ((p > 0)) && [[ "$killed" != *" $p "* ]]; then
            W=$p
            return 0
        fi
    done
    return 1
}
t0=$(now_ms)
while ((kills < 10)); do
    wait_until 30 next_worker || fail "no new worker within 30s after $kills kills (status: $(worker_pids 2>&1))"
    [[ -n "$W" ]] || break
    kill -KILL "$W" 2>/dev/null || fail "worker $W reported by status was already gone"
    kills=$((kills + 1))
    killed+="$W "
done
wait_server_exit 10 || fail "master still running 10s after $kills worker kills (crash_loop_limit 3)"
note "master exited with status $SERVER_RC after $kills kills in $(($(now_ms) - t0)) ms"
[[ "$SERVER_RC" != 0 ]] || fail "master exited 0 after a crash loop"
expect_eq "$SERVER_RC" 1 "master exit status after a crash loop"
((kills >= 3)) || fail "master gave up after only $kills crashes (crash_loop_limit 3)"
((kills <= 4)) || fail "master needed $kills crashes to give up (crash_loop_limit 3)"
expect_eq "$kills" 3 "workers killed until the master gave up (crash_loop_limit 3)"
grep -q "crash loop" "$SERVER_STDERR" || fail "no 'crash loop' log line"
for w in $killed; do
    proc_alive "$w" && fail "worker $w left running after the master gave up"
done
[[ ! -e "$T/authd.pid" ]] || fail "pid file left behind after the crash loop exit"

pass
