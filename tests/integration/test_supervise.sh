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
sleep 0.6 # let the workers outlive crash_window

pids=$(worker_pids)
victim=${pids%% *}
other=${pids##* }
[[ "$victim" != "$other" ]] || fail "expected two workers, got '$pids'"
# process_cpu_seconds_total counts master + workers and must not fall when a worker dies.
sleep 1.1 # one master tick and a few heartbeats
cpu_before=$(metric process_cpu_seconds_total)
awk -v c="$cpu_before" 'BEGIN { exit !(c + 0 > 0) }' ||
    fail "process_cpu_seconds_total should be positive, got '$cpu_before'"
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

sleep 0.6
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
: >"$SERVER_STDERR"
WORKERS=1
EXTRA_CONFIG='
supervisor = {
    heartbeat_interval = 0.2;
    heartbeat_timeout = 1.0;
    crash_window = 5.0;
    crash_loop_limit = 3;
    backoff_max = 1.0;
};'
start_server
master=$SERVER_PID
killed=" "
kills=0
t0=$(now_ms)
for ((i = 0; i < 300 && kills < 10; i++)); do
    server_alive || break
    for w in $(children "$master"); do
        if [[ "$killed" != *" $w "* ]]; then
            kill -KILL "$w" 2>/dev/null && kills=$((kills + 1))
            killed+="$w "
        fi
    done
    sleep 0.05
done
wait_server_exit 10 || fail "master still running 10s after $kills worker kills (crash_loop_limit 3)"
note "master exited with status $SERVER_RC after $kills kills in $(($(now_ms) - t0)) ms"
[[ "$SERVER_RC" != 0 ]] || fail "master exited 0 after a crash loop"
expect_eq "$SERVER_RC" 1 "master exit status after a crash loop"
((kills >= 3)) || fail "master gave up after only $kills crashes (crash_loop_limit 3)"
((kills <= 4)) || fail "master needed $kills crashes to give up (crash_loop_limit 3)"
grep -q "crash loop" "$SERVER_STDERR" || fail "no 'crash loop' log line"
for w in $killed; do
    proc_alive "$w" && fail "worker $w left running after the master gave up"
done
[[ ! -e "$T/authd.pid" ]] || fail "pid file left behind after the crash loop exit"

pass
