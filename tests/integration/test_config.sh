#!/bin/bash
# config: `config check` diagnostics (file:line for syntax errors, unknown keys, wrong types,
# out-of-range values, unknown enum values), AUTHD_* environment overrides, <key>_file secrets,
# `config reference`, and a server started on an environment-overridden port.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

write_config
base_lines=$(wc -l <"$CONF")

# check FILE WANT_RC: runs `config check`, leaves stdout in $out and stderr in $err.
check() {
    local rc=0
    "$AUTHD_BIN" --config "$1" config check >"$T/check.out" 2>"$T/check.err" || rc=$?
    out=$(cat "$T/check.out")
    err=$(cat "$T/check.err")
    expect_eq "$rc" "$2" "config check exit status for $1 (stderr: $err)"
}

# bad NAME CONTENT: a config file = the valid base + CONTENT appended; echoes its path.
# The first appended line is line $((base_lines + 1)).
bad() {
    local f="$T/$1.conf"
    write_config "$f"
    printf '%s\n' "$2" >>"$f"
    echo "$f"
}

# ---- a valid file ----
check "$CONF" 0
expect_contains "$out" "configuration ok" "valid config"
expect_contains "$out" "https://127.0.0.1:$PORT" "valid config summary"
expect_contains "$out" "http://127.0.0.1:$ADMIN_PORT" "valid config summary"
[[ -z "$err" ]] || fail "valid config printed on stderr: $err"
# Backups without an encryption key: still valid, but said plainly.
expect_contains "$out" "warning: backups are NOT encrypted (backup.encryption_key_file is not set)" \
    "config check without a backup key"
(umask 077 && openssl rand -hex 32 >"$T/backup.key")
out=$(AUTHD_BACKUP_ENCRYPTION_KEY_FILE="$T/backup.key" "$AUTHD_BIN" --config "$CONF" config check) ||
    fail "config check with a backup key failed: $out"
expect_contains "$out" "configuration ok" "config check with a backup key"
expect_not_contains "$out" "NOT encrypted" "config check with a backup key"

# ---- syntax error ----
f=$(bad syntax $'http = {\n    max_body_size = 1024;\n    max_header_size 4096;\n};')
check "$f" 1
expect_match "$err" "^$f:$((base_lines + 3)): syntax error" "syntax error line"
[[ -z "$out" ]] || fail "invalid config printed on stdout: $out"

f=$(bad syntax2 'this is not libconfig')
check "$f" 1
expect_match "$err" "^$f:$((base_lines + 1)): syntax error" "syntax error line (garbage)"

# ---- unknown keys: top level and nested ----
f=$(bad unknown $'\n\nbogus_key = 1;')
check "$f" 1
expect_contains "$err" "$f:$((base_lines + 3)): unknown key 'bogus_key'" "unknown top-level key"

f=$(bad unknown2 $'http = {\n    max_body_size = 1024;\n    max_headr_size = 4096;\n};')
check "$f" 1
expect_contains "$err" "$f:$((base_lines + 3)): unknown key 'http.max_headr_size'" "unknown nested key"

# ---- wrong type ----
f="$T/type.conf"
write_config "$f"
sed -i "s/^    port = $PORT;/    port = \"x\";/" "$f"
line=$(grep -n '    port = "x";' "$f" | cut -d: -f1)
[[ -n "$line" ]] || fail "test bug: could not edit the port line"
check "$f" 1
expect_match "$err" "^$f:$line: listen.port expects an integer, got a string" "wrong type"

f=$(bad type2 $'http = {\n    header_timeout = "ten";\n};')
check "$f" 1
expect_match "$err" "^$f:$((base_lines + 2)): http.header_timeout expects a number of seconds" "wrong type (duration)"

f=$(bad type3 $'log = {\n    access = 1;\n};')
check "$f" 1
expect_match "$err" "^$f:$((base_lines + 2)): log.access expects true or false" "wrong type (bool)"

# ---- out of range ----
f="$T/range.conf"
write_config "$f"
sed -i "s/^    port = $PORT;/    port = 70000;/" "$f"
line=$(grep -n '    port = 70000;' "$f" | cut -d: -f1)
check "$f" 1
expect_match "$err" "^$f:$line: listen.port = 70000 is out of range" "out of range"

f=$(bad range2 $'http = {\n    max_header_size = 10;\n};')
check "$f" 1
expect_match "$err" "^$f:$((base_lines + 2)): http.max_header_size = 10 is out of range" "out of range (low)"

# ---- unknown enum value ----
f="$T/enum.conf"
write_config "$f"
sed -i 's/^    path = "\(.*authd.db\)";/    driver = "x";\n    path = "\1";/' "$f"
line=$(grep -n '    driver = "x";' "$f" | cut -d: -f1)
[[ -n "$line" ]] || fail "test bug: could not add store.driver"
check "$f" 1
expect_match "$err" "^$f:$line: store.driver must be one of sqlite\|mongo" "unknown enum value"

f=$(bad enum2 $'log = {\n    level = "loud";\n};')
check "$f" 1
expect_match "$err" "^$f:$((base_lines + 2)): log.level must be one of" "unknown log.level"

# ---- several problems are all reported, each with its own line ----
f=$(bad several $'nope = 1;\nhttp = {\n    max_body_size = -5;\n};')
check "$f" 1
expect_contains "$err" "$f:$((base_lines + 1)): unknown key 'nope'" "first of several problems"
expect_contains "$err" "$f:$((base_lines + 3)): http.max_body_size = -5 is out of range" "second of several problems"

# ---- cross-key rule: admin.port equal to listen.port ----
f="$T/same.conf"
write_config "$f"
sed -i "s/^    port = $ADMIN_PORT;/    port = $PORT;/" "$f"
line=$(awk -v p="    port = $PORT;" '$0 == p { n = NR } END { print n }' "$f")
check "$f" 1
expect_match "$err" "^$f:$line: admin.port must differ from listen.port" "admin.port = listen.port"

# ---- missing file, missing certificate ----
check "$T/does-not-exist.conf" 1
expect_contains "$err" "$T/does-not-exist.conf" "missing config file"
f="$T/nocert.conf"
write_config "$f"
sed -i "s|certificate = \"$CERT\";|certificate = \"$T/missing.crt\";|" "$f"
line=$(grep -n 'missing.crt' "$f" | cut -d: -f1)
check "$f" 1
expect_contains "$err" "$f:$line:" "missing certificate names the line"
expect_contains "$err" "$T/missing.crt" "missing certificate names the file"

# ---- environment overrides ----
out=$(AUTHD_LISTEN_PORT=$ALT_PORT "$AUTHD_BIN" --config "$CONF" config check) ||
    fail "config check with AUTHD_LISTEN_PORT=$ALT_PORT failed"
expect_contains "$out" "https://127.0.0.1:$ALT_PORT" "AUTHD_LISTEN_PORT override"
out=$(AUTHD_WORKERS=3 "$AUTHD_BIN" --config "$CONF" config check) || fail "AUTHD_WORKERS=3 refused"
expect_contains "$out" "(3 workers" "AUTHD_WORKERS override"

for bad_value in abc 70000 ""; do
    rc=0
    err=$(AUTHD_LISTEN_PORT=$bad_value "$AUTHD_BIN" --config "$CONF" config check 2>&1 >/dev/null) || rc=$?
    expect_eq "$rc" 1 "config check with AUTHD_LISTEN_PORT='$bad_value'"
    expect_contains "$err" "AUTHD_LISTEN_PORT" "error for AUTHD_LISTEN_PORT='$bad_value'"
done
rc=0
err=$(AUTHD_STORE_DRIVER=x "$AUTHD_BIN" --config "$CONF" config check 2>&1 >/dev/null) || rc=$?
expect_eq "$rc" 1 "AUTHD_STORE_DRIVER=x"
expect_contains "$err" "AUTHD_STORE_DRIVER" "AUTHD_STORE_DRIVER=x message"
# serve refuses a bad environment value too, before binding anything
rc=0
err=$(AUTHD_LISTEN_PORT=abc timeout 20 "$AUTHD_BIN" --config "$CONF" serve 2>&1) || rc=$?
expect_eq "$rc" 1 "serve with AUTHD_LISTEN_PORT=abc"
expect_contains "$err" "AUTHD_LISTEN_PORT" "serve with AUTHD_LISTEN_PORT=abc message"

# ---- <key>_file secrets ----
f=$(bad secret_missing $'ratelimit = {\n    redis = {\n        password_file = "'"$T"$'/no-such-secret";\n    };\n};')
check "$f" 1
expect_contains "$err" "$f:$((base_lines + 3)):" "missing secret file names the line"
expect_contains "$err" "ratelimit.redis.password_file" "missing secret file names the key"
expect_contains "$err" "$T/no-such-secret" "missing secret file names the file"

printf 's3cret\n' >"$T/redis-password"
f=$(bad secret_ok $'ratelimit = {\n    redis = {\n        password_file = "'"$T"$'/redis-password";\n    };\n};')
check "$f" 0

f=$(bad secret_both $'ratelimit = {\n    redis = {\n        password = "a";\n        password_file = "'"$T"$'/redis-password";\n    };\n};')
check "$f" 1
expect_contains "$err" "not both" "password and password_file together"

rc=0
err=$(AUTHD_RATELIMIT_REDIS_PASSWORD_FILE=$T/no-such-secret "$AUTHD_BIN" --config "$CONF" config check 2>&1 >/dev/null) || rc=$?
expect_eq "$rc" 1 "AUTHD_RATELIMIT_REDIS_PASSWORD_FILE to a missing file"
expect_contains "$err" "AUTHD_RATELIMIT_REDIS_PASSWORD_FILE" "env secret file error names the variable"
AUTHD_RATELIMIT_REDIS_PASSWORD_FILE=$T/redis-password "$AUTHD_BIN" --config "$CONF" config check >/dev/null ||
    fail "AUTHD_RATELIMIT_REDIS_PASSWORD_FILE to an existing file refused"
# a non-secret key has no _file variant
f=$(bad secret_nonsecret $'listen_file = "x";')
check "$f" 1
expect_contains "$err" "unknown key 'listen_file'" "_file on a non-secret key"

# ---- config reference ----
ref=$("$AUTHD_BIN" config reference) || fail "config reference exited $?"
for k in workers listen.address listen.port listen.tls.certificate listen.tls.key admin.address \
    admin.port store.driver store.path store.uri store.database ratelimit.backend \
    ratelimit.redis.host ratelimit.redis.port tokens.issuer tokens.audience tokens.signing_keys \
    tokens.access_ttl tokens.refresh_ttl backup.directory backup.keep backup.encryption_key_file \
    pid_file control_socket log.level log.file http.max_header_size http.max_body_size \
    http.header_timeout http.idle_timeout supervisor.heartbeat_interval \
    supervisor.heartbeat_timeout supervisor.drain_timeout supervisor.crash_window \
    supervisor.crash_loop_limit supervisor.backoff_max; do
    expect_contains "$ref" "\`$k\`" "config reference lists $k"
done
expect_contains "$ref" "AUTHD_LISTEN_PORT" "config reference names environment variables"

# ---- usage errors exit 2 ----
rc=0
"$AUTHD_BIN" --config "$CONF" frobnicate >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 2 "unknown verb"
rc=0
"$AUTHD_BIN" --config "$CONF" config >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 2 "config without a sub-command"

# ---- the environment override is what the server serves on ----
before_start() {
    export AUTHD_LISTEN_PORT=$ALT_PORT
}
start_server
expect_eq "$(status_code "https://127.0.0.1:$ALT_PORT/healthz")" 200 "serving on AUTHD_LISTEN_PORT"
expect_eq "$(status_code "$(https_url /healthz)")" 000 "file's listen.port not used when overridden"

pass
