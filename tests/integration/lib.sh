# authd integration tests: helpers sourced by every tests/integration/test_*.sh.
#
# A test does:
#     . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#     itest_init                      # temp dir, traps, tool checks, certificate, ports
#     EXTRA_CONFIG='http = { header_timeout = 2.0; };'
#     start_server                    # writes $CONF, starts the master, waits until it serves
#     ...  assertions (fail "why" on a failure) ...
#     pass                            # or just reach the end
#
# Environment from the harness (Makefile.am): AUTHD_BIN (absolute path to the binary) and
# AUTHD_SRCDIR. Every temporary file lives in $T (removed on exit unless ITEST_KEEP=1); the
# server is always stopped on exit (SIGTERM, then SIGKILL after a bound), background helpers are
# killed by their own pid. Exit status: 0 pass, 1 fail, 77 skip (a required tool is missing).
# shellcheck shell=bash

set -euo pipefail

ITEST_NAME=$(basename "${BASH_SOURCE[1]:-$0}" .sh)
ITEST_START=$(date +%s.%N)
T=""
SERVER_PID=""
SERVER_RC=""
SERVER_STDERR=""
BG_PIDS=()
EXTRA_CONFIG=""
WORKERS=2
PORT=""
ADMIN_PORT=""
ALT_PORT=""
USED_PORTS=" "
PY=""
CURL=(curl -sS -k --noproxy '*' --max-time 10)
# Rate limits and the account lockout are off for the servers start_server starts (the tests
# hammer from 127.0.0.1). Set through the environment, which overrides the file, so a test's own
# `ratelimit` group stays valid; a test of the limiter sets RATELIMIT_ENV=() and configures it.
RATELIMIT_ENV=(AUTHD_RATELIMIT_GLOBAL_LIMIT=0 AUTHD_RATELIMIT_LOGIN_LIMIT=0
    AUTHD_RATELIMIT_REGISTER_LIMIT=0 AUTHD_RATELIMIT_REFRESH_LIMIT=0
    AUTHD_RATELIMIT_LOCKOUT_THRESHOLD=0)
# More VAR=VALUE pairs for the servers start_server starts (the test hooks, need_test_hooks).
SERVER_ENV=()

# ---- messages and assertions ----

note() {
    printf '[%s %s] %s\n' "$(date +%H:%M:%S.%3N)" "$ITEST_NAME" "$*"
}

ITEST_SOFT=0
ITEST_SOFT_FAILS=0
fail() {
    printf '[%s %s] FAIL: %s\n' "$(date +%H:%M:%S.%3N)" "$ITEST_NAME" "$*" >&2
    if [[ $ITEST_SOFT == 1 ]]; then
        ITEST_SOFT_FAILS=$((ITEST_SOFT_FAILS + 1))
        return 1
    fi
    exit 1
}

# soft CHECK ARGS...: runs one assertion; a failure is reported and makes the test fail at its
# end (pass), but the test goes on. For checks nothing later depends on.
soft() {
    ITEST_SOFT=1
    "$@" || true
    ITEST_SOFT=0
}

skip() {
    note "SKIP: $*"
    exit 77
}

pass() {
    if ((ITEST_SOFT_FAILS > 0)); then
        printf '[%s %s] FAIL: %d check(s) failed (see above)\n' "$(date +%H:%M:%S.%3N)" \
            "$ITEST_NAME" "$ITEST_SOFT_FAILS" >&2
        exit 1
    fi
    note "PASS ($(elapsed)s)"
    exit 0
}

elapsed() {
    awk -v a="$ITEST_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# now_ms: monotonic-enough wall clock in milliseconds.
now_ms() {
    date +%s%3N
}

expect_eq() { # actual expected what
    [[ "$1" == "$2" ]] || fail "$3: expected '$2', got '$1'"
}

expect_contains() { # haystack needle what
    [[ "$1" == *"$2"* ]] || fail "$3: expected to contain '$2', got: $(printf '%s' "$1" | head -c 2000)"
}

expect_not_contains() { # haystack needle what
    [[ "$1" != *"$2"* ]] || fail "$3: expected not to contain '$2', got: $(printf '%s' "$1" | head -c 2000)"
}

expect_match() { # haystack extended-regex what
    printf '%s' "$1" | grep -Eq -- "$2" ||
        fail "$3: expected to match /$2/, got: $(printf '%s' "$1" | head -c 2000)"
}

# need_test_hooks: skips unless $AUTHD_BIN was configured with --enable-test-hooks (the
# AUTHD_TEST_* switches of shared/testhook.h; `authd version` then ends in "(test-hooks)").
need_test_hooks() {
    [[ "$("$AUTHD_BIN" version 2>/dev/null)" == *"(test-hooks)"* ]] ||
        skip "$AUTHD_BIN has no test hooks: configure it with --enable-test-hooks (scripts/test does)"
}

need_tool() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip "required tool '$t' is not installed"
    done
}

# wait_until SECONDS CMD...: runs CMD every 0.1 s until it succeeds (0) or SECONDS pass (1).
wait_until() {
    local limit=$1 deadline
    shift
    deadline=$(($(now_ms) + $(awk -v s="$limit" 'BEGIN { printf "%d", s * 1000 }')))
    local i
    for ((i = 0; i < 100000; i++)); do
        if "$@"; then
            return 0
        fi
        (($(now_ms) < deadline)) || return 1
        sleep 0.1
    done
    return 1
}

# ---- set-up and clean-up ----

itest_cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local p
    for p in "${BG_PIDS[@]}"; do
        kill_tree "$p" TERM
    done
    server_kill
    for p in "${BG_PIDS[@]}"; do
        kill_tree "$p" KILL
        wait "$p" 2>/dev/null
    done
    if [[ $rc -ne 0 && $rc -ne 77 && -n "$T" && -d "$T" ]]; then
        local f
        for f in "$T"/*.log "$T"/*.log.* "$T"/*.out; do
            [[ -s "$f" ]] || continue
            echo "---- tail of $f ----" >&2
            tail -n 60 "$f" >&2
        done
        note "FAILED after $(elapsed)s (rc=$rc)" >&2
    fi
    if [[ -n "$T" && -d "$T" ]]; then
        if [[ "${ITEST_KEEP:-0}" == 1 ]]; then
            note "keeping $T"
        else
            rm -rf "$T"
        fi
    fi
    exit "$rc"
}

itest_init() {
    if [[ -z "${AUTHD_BIN:-}" || ! -x "${AUTHD_BIN:-}" ]]; then
        echo "AUTHD_BIN is not set to an executable authd binary (got '${AUTHD_BIN:-}')" >&2
        exit 1
    fi
    need_tool curl openssl awk grep sed ps mktemp
    if [[ -x /usr/bin/python3 ]]; then
        PY=/usr/bin/python3
    elif command -v python3 >/dev/null 2>&1; then
        PY=$(command -v python3)
    fi
    # No inherited configuration may leak into the servers under test.
    local v
    for v in $(compgen -e); do
        case "$v" in
        AUTHD_BIN | AUTHD_SRCDIR) ;;
        AUTHD_*) unset "$v" ;;
        http_proxy | https_proxy | HTTP_PROXY | HTTPS_PROXY | all_proxy | ALL_PROXY) unset "$v" ;;
        esac
    done
    local base=${TMPDIR:-/tmp}
    ((${#base} < 60)) || base=/tmp
    T=$(mktemp -d "$base/authd-it.XXXXXX")
    trap itest_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    SERVER_STDERR="$T/server.log"
    CONF="$T/authd.conf"
    gen_cert server "authd-itest" 1001
    CERT="$T/server.crt"
    KEY="$T/server.key"
    pick_ports
    note "temp dir $T, binary $AUTHD_BIN"
}

need_python() {
    [[ -n "$PY" ]] || skip "python3 is not installed"
}

# gen_cert NAME CN SERIAL: self-signed P-256 certificate $T/NAME.crt and key $T/NAME.key.
gen_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$T/$1.key" -out "$T/$1.crt" -days 2 -subj "/CN=$2" -set_serial "$3" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$T/openssl-req.out" 2>&1 ||
        fail "openssl req failed: $(cat "$T/openssl-req.out")"
    rm -f "$T/openssl-req.out"
}

# ---- ports ----

port_busy() {
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Htan "( sport = :$1 or dport = :$1 )" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# pick_port: a free port in 20000-32767 (below the kernel's ephemeral range), not yet used here.
pick_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12768))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        port_busy "$p" && continue
        USED_PORTS+="$p "
        echo "$p"
        return 0
    done
    fail "no free port found"
}

pick_ports() {
    PORT=$(pick_port)
    USED_PORTS+="$PORT "
    ADMIN_PORT=$(pick_port)
    USED_PORTS+="$ADMIN_PORT "
    ALT_PORT=$(pick_port)
    USED_PORTS+="$ALT_PORT "
}

# ---- configuration ----

# write_config [FILE]: the base configuration plus $EXTRA_CONFIG (extra top-level groups such as
# http, supervisor, log; the base sets workers, pid_file, control_socket, listen, admin, store,
# backup).
write_config() {
    local file=${1:-$CONF}
    cat >"$file" <<EOF
# authd integration test configuration ($ITEST_NAME)
workers = $WORKERS;
pid_file = "$T/authd.pid";
control_socket = "$T/control.sock";
listen = {
    address = "127.0.0.1";
    port = $PORT;
    tls = {
        certificate = "$CERT";
        key = "$KEY";
    };
};
admin = {
    address = "127.0.0.1";
    port = $ADMIN_PORT;
};
store = {
    path = "$T/authd.db";
};
backup = {
    directory = "$T/backups";
};
$EXTRA_CONFIG
EOF
}

# ---- the server ----

# proc_alive PID: true while PID runs (a zombie counts as gone).
proc_alive() {
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

server_alive() {
    [[ -n "$SERVER_PID" ]] && proc_alive "$SERVER_PID"
}

# children PID: direct children of PID.
children() {
    ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true
}

# kill_tree PID SIG: signals PID's descendants and PID itself.
kill_tree() {
    local c
    for c in $(children "$1"); do
        kill_tree "$c" "$2"
    done
    kill "-$2" "$1" 2>/dev/null || true
}

# authd ARGS...: the CLI on the test's configuration ($CLI_CONF when a test needs the CLI to read
# another file, e.g. while $CONF is deliberately broken).
authd() {
    "$AUTHD_BIN" --config "${CLI_CONF:-$CONF}" "$@"
}

# server_ready: the master we started answers on its control socket, all its workers of the
# current generation are ready, and the admin /readyz says 200.
server_ready() {
    server_alive || return 1
    local code
    code=$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' \
        "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null) || return 1
    [[ "$code" == 200 ]] || return 1
    local js
    js=$(authd status --json 2>/dev/null) || return 1
    [[ -n "$PY" ]] || return 0
    printf '%s' "$js" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
ok = d["master_pid"] == int(sys.argv[1]) and sum(
    1 for w in d["workers"]
    if w["generation"] == d["generation"] and w["state"] == "ready") >= d["workers_wanted"]
sys.exit(0 if ok else 1)' "$SERVER_PID"
}

# start_server [SECONDS]: writes $CONF, starts `authd serve` (stderr to $SERVER_STDERR), waits for
# readiness. A port taken by someone else in the meantime makes it pick new ports and retry.
# A function `before_start` (optional, defined by the test) runs after the ports are chosen.
start_server() {
    local limit=${1:-30} attempt
    for ((attempt = 1; attempt <= 5; attempt++)); do
        if declare -F before_start >/dev/null; then
            before_start
        fi
        write_config
        echo "---- start attempt $attempt: ports $PORT/$ADMIN_PORT ----" >>"$SERVER_STDERR"
        env "${RATELIMIT_ENV[@]}" "${SERVER_ENV[@]}" "$AUTHD_BIN" --config "$CONF" serve \
            2>>"$SERVER_STDERR" &
        SERVER_PID=$!
        SERVER_RC=""
        if wait_until "$limit" server_ready; then
            note "server pid $SERVER_PID ready on https://127.0.0.1:$PORT admin :$ADMIN_PORT"
            return 0
        fi
        if server_alive; then
            fail "server pid $SERVER_PID not ready after ${limit}s"
        fi
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        if grep -q "Address already in use" "$SERVER_STDERR" "$T"/*.log 2>/dev/null; then
            note "a port was taken; retrying with new ports"
            sed -i 's/Address already in use/(port clash, retried)/' "$SERVER_STDERR"
            pick_ports
            continue
        fi
        fail "server exited during start-up"
    done
    fail "server could not start after 5 attempts"
}

# wait_server_exit SECONDS: waits for the master to exit; sets SERVER_RC; 1 on timeout.
wait_server_exit() {
    [[ -n "$SERVER_PID" ]] || return 0
    if ! wait_until "$1" eval '! server_alive'; then
        return 1
    fi
    SERVER_RC=0
    wait "$SERVER_PID" 2>/dev/null || SERVER_RC=$?
    SERVER_PID=""
    return 0
}

# server_kill: stops the server whatever state it is in (clean-up path; no assertions).
server_kill() {
    [[ -n "$SERVER_PID" ]] || return 0
    local kids
    kids=$(children "$SERVER_PID")
    if server_alive; then
        kill -CONT "$SERVER_PID" $kids 2>/dev/null || true
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        if ! wait_server_exit 10; then
            note "server did not stop within 10s of SIGTERM; SIGKILL"
            kill_tree "$SERVER_PID" KILL
            wait_server_exit 5 || true
        fi
    else
        wait_server_exit 1 || true
    fi
    local k
    for k in $kids; do
        proc_alive "$k" && kill -KILL "$k" 2>/dev/null
    done
    SERVER_PID=""
    return 0
}

# bg CMD...: runs CMD in the background, remembered for clean-up; sets BG_PID.
bg() {
    "$@" &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}

# ---- clients ----

# https PATH [CURL ARGS...]: request to the public listener; prints the body.
https_url() {
    echo "https://127.0.0.1:$PORT$1"
}

admin_url() {
    echo "http://127.0.0.1:$ADMIN_PORT$1"
}

# status_code URL [CURL ARGS...]: prints the HTTP status (000 when no response).
status_code() {
    local url=$1
    shift
    "${CURL[@]}" -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}

# metric NAME: value of the metric line that starts with NAME (name plus labels) on /metrics.
metric() {
    "${CURL[@]}" "$(admin_url /metrics)" | awk -v n="$1" 'index($0, n " ") == 1 { print $2; f = 1 } END { if (!f) print "missing" }'
}

status_json() {
    authd status --json
}

# json EXPR: evaluates Python expression EXPR on the JSON document read from stdin (as `d`).
json() {
    "$PY" -c 'import json, sys
d = json.load(sys.stdin)
r = eval(sys.argv[1])
print(json.dumps(r) if isinstance(r, (dict, list, bool)) or r is None else r)' "$1"
}

# worker_pids [GENERATION]: pids of the workers in status, space-separated, sorted.
worker_pids() {
    status_json | json "' '.join(sorted(str(w['pid']) for w in d['workers'] if w['state'] != 'free' and ('${1:-}' == '' or w['generation'] == int('${1:-0}'))))"
}

generation() {
    status_json | json "d['generation']"
}

# ready_count GEN: workers of generation GEN in state ready.
ready_count() {
    status_json | json "sum(1 for w in d['workers'] if w['generation'] == $1 and w['state'] == 'ready')"
}

# pyclient ARGS...: a scripted raw client (TLS or plain TCP) for timing tests; prints JSON.
#   --port P [--tls] [--max-time S] then steps, each one word with arguments:
#     send TEXT            send TEXT (\r\n escapes understood) at once
#     trickle TEXT SECS    send TEXT one byte every SECS seconds (stops when the peer closes)
#     sleep SECS
#     response             read until one whole response (Content-Length) arrived
#     close_wait SECS      wait up to SECS for the peer to close
#   Output: {"connect_s", "first_byte_s", "closed_s" (null if still open), "statuses": [...],
#            "response_s": [...], "steps": [[step, start], ...], "data": "<everything received>",
#            "error": "..."}, times in seconds since just before the TCP connect.
pyclient() {
    need_python
    if [[ ! -f "$T/pyclient.py" ]]; then
        cat >"$T/pyclient.py" <<'PYEOF'
import json, re, select, socket, ssl, sys, time

args = sys.argv[1:]
port, use_tls, max_time = None, False, 30.0
while args and args[0].startswith("--"):
    a = args.pop(0)
    if a == "--port":
        port = int(args.pop(0))
    elif a == "--tls":
        use_tls = True
    elif a == "--max-time":
        max_time = float(args.pop(0))
t_start = time.monotonic()
res = {"connect_s": None, "first_byte_s": None, "closed_s": None, "statuses": [], "data": "",
       "error": None}
buf = b""
closed = False

def now():
    return round(time.monotonic() - t_start, 3)

def pump(timeout):
    """Reads whatever arrives within timeout; returns False once the peer closed."""
    global buf, closed
    if closed:
        return False
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        pending = use_tls and s.pending() > 0
        if left <= 0 and not pending:
            return True
        if not pending:
            r, _, _ = select.select([s], [], [], max(left, 0))
            if not r:
                return True
        try:
            chunk = s.recv(65536)
        except ssl.SSLWantReadError:
            continue
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
            res["error"] = res["error"] or ("recv: %s" % e)
            chunk = b""
        if not chunk:
            closed = True
            res["closed_s"] = now()
            return False
        buf += chunk

def send(data):
    if res["first_byte_s"] is None:
        res["first_byte_s"] = now()
    try:
        s.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
        res["error"] = res["error"] or ("send: %s" % e)
        pump(0.5)
        return False

def whole_responses():
    n, pos = 0, 0
    while True:
        head_end = buf.find(b"\r\n\r\n", pos)
        if head_end < 0:
            return n
        m = re.search(rb"(?im)^content-length:\s*(\d+)", buf[pos:head_end])
        end = head_end + 4 + (int(m.group(1)) if m else 0)
        if len(buf) < end:
            return n
        n, pos = n + 1, end

try:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if use_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(raw, server_hostname="localhost")
    else:
        s = raw
    s.setblocking(True)
    s.settimeout(10)
    res["connect_s"] = now()
    want = 0
    while args:
        if now() > max_time:
            res["error"] = res["error"] or "max time reached"
            break
        step = args.pop(0)
        res.setdefault("steps", []).append([step, now()])
        if step == "send":
            if not send(args.pop(0).encode().decode("unicode_escape").encode("latin-1")):
                break
        elif step == "trickle":
            data = args.pop(0).encode().decode("unicode_escape").encode("latin-1")
            every = float(args.pop(0))
            for i in range(len(data)):
                if closed or not send(data[i:i + 1]) or not pump(every) or now() > max_time:
                    break
        elif step == "sleep":
            pump(float(args.pop(0)))
        elif step == "response":
            want += 1
            while whole_responses() < want and not closed and now() < max_time:
                pump(0.2)
            res.setdefault("response_s", []).append(now())
        elif step == "close_wait":
            end = time.monotonic() + float(args.pop(0))
            while not closed and time.monotonic() < end:
                pump(min(0.2, max(end - time.monotonic(), 0)))
        else:
            raise SystemExit("unknown step " + step)
except Exception as e:
    res["error"] = res["error"] or ("%s: %s" % (type(e).__name__, e))
res["statuses"] = [int(x) for x in re.findall(rb"HTTP/1\.[01] (\d{3}) ", buf)]
res["data"] = buf.decode("latin-1")
print(json.dumps(res))
PYEOF
    fi
    "$PY" "$T/pyclient.py" "$@"
}
