#!/bin/bash
# authd as PID 1 of a PID namespace (a container's entrypoint): it serves, reaps orphans that
# the kernel re-parents to it (no zombies), and SIGTERM stops it with status 0.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_tool unshare nsenter
unshare --pid --fork --mount-proc true 2>/dev/null || skip "PID namespaces are not available here"

write_config
bg unshare --pid --fork --mount-proc "$AUTHD_BIN" --config "$CONF" serve 2>>"$SERVER_STDERR"
NS_PID=$BG_PID
ready() { [[ "$(status_code "$(admin_url /readyz)")" == 200 ]]; }
wait_until 20 ready || fail "authd as PID 1 did not become ready"
MASTER=$(children "$NS_PID")
[[ -n "$MASTER" ]] || fail "no authd under unshare"
inside() { nsenter -t "$MASTER" -p -m "$@"; }
expect_eq "$(inside ps -o pid= -p 1 | tr -d ' ')" 1 "authd is PID 1 in its namespace"
expect_contains "$(inside ps -o comm= -p 1)" authd "PID 1 is authd"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "public /healthz served by PID 1's workers"

# An orphan: its parent exits at once, so the kernel re-parents it to PID 1.
orphan=$(inside sh -c 'sleep 0.5 >/dev/null 2>&1 & echo $!')
note "orphan pid $orphan (in the namespace)"
expect_eq "$(inside ps -o ppid= -p "$orphan" | tr -d ' ')" 1 "orphan re-parented to authd"
no_zombie() { [[ -z "$(inside ps -o pid= -p "$orphan" 2>/dev/null | tr -d ' ')" ]]; }
wait_until 5 no_zombie || fail "orphan $orphan left as a zombie: $(inside ps -o pid,ppid,stat,comm)"
zombies=$(inside ps -eo stat= | grep -c '^Z' || true)
expect_eq "$zombies" 0 "zombies in the namespace"

kill -TERM "$MASTER"
rc=0
wait_until 15 eval '! proc_alive "$NS_PID"' || fail "authd as PID 1 did not stop on SIGTERM"
wait "$NS_PID" 2>/dev/null || rc=$?
expect_eq "$rc" 0 "exit status of authd as PID 1 after SIGTERM"
expect_contains "$(cat "$SERVER_STDERR")" '"msg":"stopped"' "master logged its stop"
pass
