#!/bin/bash
# reload_rollback: a reload's new generation whose workers crash before it is ready is rolled
# back: the master retires it and goes back to the previous configuration and generation, whose
# workers serve on untouched; the failure is counted and logged; the next reload gets a
# generation number never used before.
#
# The new generation is held "starting" by the AUTHD_TEST_HOLD_READY test hook
# (shared/testhook.h: its workers report ready only once $HOLD exists) while the test kills its
# workers, so the test never races the master to catch the generation before it is ready.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python
need_test_hooks

HOLD="$T/ready-release"
touch "$HOLD"
SERVER_ENV=(AUTHD_TEST_HOLD_READY="$HOLD")
# crash_window far longer than any run: a held worker killed however late is a crash at start.
EXTRA_CONFIG='
supervisor = {
    drain_timeout = 10.0;
    crash_window = 3600.0;
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

# started GEN: all workers of generation GEN run (each wrote its pid into its slot); sets PIDS.
started() {
    PIDS=$(status_json | json "' '.join(sorted(str(w['pid']) for w in d['workers'] if w['generation'] == $1 and w['pid'] > 0))")
    (($(wc -w <<<"$PIDS") == WORKERS))
}

# One ordinary reload first: the rollback goes back to a generation a reload made.
gen0=$(generation)
out=$(timeout 10 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || fail "authd reload: $out"
wait_until 15 gen_ready "$((gen0 + 1))" || fail "generation $((gen0 + 1)) not ready"
wait_until 15 only_gen "$((gen0 + 1))" || fail "generation $gen0 not retired: $(worker_pids)"

# ---- a new generation that crashes at start is rolled back; the old one keeps serving ----
gen=$(generation)
old_pids=$(worker_pids "$gen")
# shellcheck disable=SC2034 # read by the eval below
failures=$(metric authd_reload_failures_total)
rm -f "$HOLD"
out=$(timeout 10 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || fail "authd reload: $out"
expect_contains "$out" "ok: generation $((gen + 1)) starting" "authd reload answer"
wait_until 15 started "$((gen + 1))" || fail "generation $((gen + 1)) did not start its workers"
new_pids=$PIDS
# Held: the new generation is not ready, so the old one has not been retired.
expect_eq "$(status_json | json "sorted(w['state'] for w in d['workers'] if w['generation'] == $((gen + 1)))")" \
    '["starting", "starting"]' "states of the held generation $((gen + 1))"
expect_eq "$(worker_pids "$gen")" "$old_pids" "generation $gen workers while $((gen + 1)) starts"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving while generation $((gen + 1)) starts"
# shellcheck disable=SC2086 # a list of pids
kill -KILL $new_pids
wait_until 10 eval '[[ "$(metric authd_reload_failures_total)" == "$((failures + 1))" ]]' ||
    fail "killing the starting generation $((gen + 1)) was not counted as a failed reload"
note "generation $((gen + 1)) (workers $new_pids) killed at start: rolled back to generation $gen"
grep -q "reload failed: generation $((gen + 1)) worker pid .*rolling back to generation $gen" \
    "$SERVER_STDERR" || fail "no 'reload failed ... rolling back' log line"
server_alive || fail "the master stopped instead of rolling back"
expect_eq "$(generation)" "$gen" "generation after the rollback"
wait_until 10 gen_ready "$gen" || fail "generation $gen not ready after the rollback"
expect_eq "$(worker_pids "$gen")" "$old_pids" "the old workers serve on after the rollback"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "serving after the rollback"
for p in $new_pids; do
    proc_alive "$p" && fail "worker $p of the rolled-back generation still runs"
done

# The next reload works, with a generation number never used before.
touch "$HOLD"
out=$(timeout 10 "$AUTHD_BIN" --config "$CONF" reload 2>&1) || fail "reload after a rollback: $out"
expect_contains "$out" "ok: generation $((gen + 2)) starting" "reload after a rollback"
wait_until 10 gen_ready "$((gen + 2))" || fail "generation $((gen + 2)) not ready after the rollback"
wait_until 15 only_gen "$((gen + 2))" || fail "generation $gen not retired: $(worker_pids)"
expect_eq "$(metric authd_reloads_total)" 3 "authd_reloads_total (the rolled-back one counts)"
expect_eq "$(metric authd_worker_restarts_total)" 0 "a rolled-back worker is not a restart"

pass
