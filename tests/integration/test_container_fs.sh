#!/bin/bash
# container_fs: the container image's runtime contract without a container engine. authd runs
# as uid/gid 10001 with the image's configuration (docker/authd.conf at /etc/authd/authd.conf)
# on a READ-ONLY root filesystem (bubblewrap), writable only where the Dockerfile, compose and
# Kubernetes mount something: /run/authd, /tmp and /var/lib/authd. It must become ready,
# register and log a user in (SQLite store under /var/lib/authd), pass the image's health
# check (docker/healthcheck), answer `authd status`, and drain and exit 0 on SIGTERM.
# shellcheck disable=SC2317 # the predicates below run through wait_until
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_tool bwrap setpriv
need_python
[[ $(id -u) == 0 ]] || skip "needs root (bubblewrap mounts, setpriv to uid 10001)"

uid=10001
mkdir -p "$T/run" "$T/tmp" "$T/data" "$T/etc/tls"
chmod 1777 "$T/tmp"
chown "$uid:$uid" "$T/run" "$T/data"
chmod 0750 "$T/run" "$T/data"
# The TLS files as a Secret or a read-only bind mount provides them: readable by the user.
install -m 0644 "$CERT" "$T/etc/tls/tls.crt"
install -m 0640 -g "$uid" "$KEY" "$T/etc/tls/tls.key"
# $T itself must be traversable by uid 10001 (mktemp made it 0700).
chmod 0755 "$T"

# The sandbox: the host's root read-only, the image's paths on top of it. Mount points cannot
# be made in a read-only tree, so /etc, /run and /var/lib are rebuilt on tmpfs (the host's /etc
# entries bound back read-only) and remounted read-only once the image's paths are in place.
# The binary under test is bound at /usr/local/sbin/authd (it may live under the hidden /tmp).
etc_binds=()
for e in /etc/*; do
    [[ "$e" == /etc/authd ]] || etc_binds+=(--ro-bind "$e" "$e")
done
sandbox=(bwrap --ro-bind / / --dev /dev --proc /proc
    --tmpfs /etc "${etc_binds[@]}"
    --dir /etc/authd --ro-bind "$AUTHD_SRCDIR/docker/authd.conf" /etc/authd/authd.conf
    --ro-bind "$T/etc/tls" /etc/authd/tls --remount-ro /etc
    --tmpfs /run --bind "$T/run" /run/authd --remount-ro /run
    --bind "$T/tmp" /tmp
    --tmpfs /usr/local/sbin --ro-bind "$AUTHD_BIN" /usr/local/sbin/authd --remount-ro /usr/local/sbin
    --tmpfs /var/lib --bind "$T/data" /var/lib/authd --remount-ro /var/lib
    --die-with-parent
    setpriv --reuid "$uid" --regid "$uid" --clear-groups --)
# Only the ports (and loopback addresses) differ from the image's configuration.
env_overrides=(AUTHD_LISTEN_ADDRESS=127.0.0.1 AUTHD_LISTEN_PORT="$PORT"
    AUTHD_ADMIN_ADDRESS=127.0.0.1 AUTHD_ADMIN_PORT="$ADMIN_PORT" AUTHD_WORKERS=2)

bg env "${env_overrides[@]}" "${sandbox[@]}" /usr/local/sbin/authd --config /etc/authd/authd.conf serve \
    2>"$T/server.log"
SANDBOX_PID=$BG_PID
ready() {
    [[ "$(status_code "$(admin_url /readyz)")" == 200 ]]
}
wait_until 30 ready || fail "authd in the read-only sandbox did not become ready"
master=$(cat "$T/run/authd.pid")
note "authd pid $master ready in the sandbox (read-only root, uid $uid)"
expect_eq "$(stat -c %u "/proc/$master")" "$uid" "uid of the master"
grep -q ' / .* ro[, ]' "/proc/$master/mounts" || fail "the sandbox's root is not read-only"

# The API writes the store under /var/lib/authd.
email="ro-$RANDOM@example.com"
pw="correct horse battery staple 42"
body=$(printf '{"email":"%s","password":"%s"}' "$email" "$pw")
code=$("${CURL[@]}" -o "$T/register.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "$body" "$(https_url /v1/auth/register)") || true
expect_eq "$code" 201 "register in the sandbox ($(cat "$T/register.out"))"
code=$("${CURL[@]}" -o "$T/login.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "$body" "$(https_url /v1/auth/login)") || true
expect_eq "$code" 200 "login in the sandbox ($(cat "$T/login.out"))"
[[ -s "$T/data/authd.db" ]] || fail "no SQLite store in /var/lib/authd"
expect_eq "$(stat -c %u "$T/data/authd.db")" "$uid" "owner of the store file"

# The image's HEALTHCHECK command and the CLI through the control socket in /run/authd.
AUTHD_ADMIN_PORT=$ADMIN_PORT bash "$AUTHD_SRCDIR/docker/healthcheck" || fail "docker/healthcheck failed"
out=$(AUTHD_CONTROL_SOCKET="$T/run/control.sock" AUTHD_PID_FILE="$T/run/authd.pid" \
    "$AUTHD_BIN" --config /dev/null status 2>&1) || fail "authd status: $out"
expect_contains "$out" "master pid $master" "authd status"

# Nothing was written outside the mounted paths: the log has no EROFS.
if grep -qi 'read-only file system' "$T/server.log"; then
    fail "authd tried to write outside its volumes: $(grep -i 'read-only' "$T/server.log" | head -n 3)"
fi

# SIGTERM to the master (what docker stop / the kubelet send to PID 1): drain, exit 0.
kill -TERM "$master"
sandbox_gone() {
    ! proc_alive "$SANDBOX_PID"
}
wait_until 40 sandbox_gone || fail "authd did not stop within 40 s of SIGTERM"
rc=0
wait "$SANDBOX_PID" || rc=$?
expect_eq "$rc" 0 "exit status after SIGTERM"
[[ ! -e "$T/run/authd.pid" ]] || fail "the PID file is left behind in /run/authd"
note "stopped cleanly; left in /run/authd: $(find "$T/run" -mindepth 1 -printf '%f ')"
pass
