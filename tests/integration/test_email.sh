#!/bin/bash
# email: look-alike addresses are one account or none (security review, finding 3). Over the real
# API: after user@example.com and josé@example.com exist, their NFD, fullwidth, upper-case and
# IDN spellings answer 409 email_taken and the Cyrillic, zero-width-space and bidi-control ones
# 400 invalid_request — never 201 — and logging in with an equal spelling reaches the same
# account. The server starts on a schema-1 SQLite file whose rows were stored under the old rule:
# start-up re-normalizes them, a collision keeps both rows and the log names user ids only.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

# Cheap argon2id: the flows below hash and verify a few dozen passwords under the sanitizers.
EXTRA_CONFIG='password = { memory_kib = 1024; iterations = 1; };'

# ---- a schema-1 database, rows as the old rule stored them (ASCII lower-cased only) ----
OLD_NFD=$'jose\u0301@old.example'        # created first
OLD_NFC=$'jos\u00e9@old.example'         # already normalized: keeps its address
OLD_FULL=$'\uff45ve@old.example'         # fullwidth e: becomes eve@old.example
OLD_ZWSP=$'mallory\u200b@old.example'    # zero-width space: no longer valid, kept
"$PY" - "$T/authd.db" "$OLD_NFD" "$OLD_NFC" "$OLD_FULL" "$OLD_ZWSP" <<'PYEOF' || fail "seeding the schema-1 database"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript("""
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE NOT NULL,
 email_verified INTEGER NOT NULL DEFAULT 0, password_hash TEXT,
 created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE sessions (id TEXT PRIMARY KEY,
 user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, created_at INTEGER NOT NULL,
 last_used_at INTEGER NOT NULL, idle_expires_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
 revoked_at INTEGER, revoke_reason TEXT, ip TEXT, user_agent TEXT);
CREATE INDEX sessions_user_id ON sessions(user_id);
CREATE TABLE refresh_tokens (hash BLOB PRIMARY KEY CHECK (length(hash) = 32),
 session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
 state TEXT NOT NULL CHECK (state IN ('current', 'rotated')), created_at INTEGER NOT NULL,
 rotated_at INTEGER);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens(session_id);
CREATE TABLE audit_events (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, event TEXT NOT NULL,
 result TEXT NOT NULL, user_id TEXT, ip TEXT, user_agent TEXT, request_id TEXT, detail TEXT);
CREATE INDEX audit_events_user_at ON audit_events(user_id, at);
PRAGMA user_version = 1;
""")
for i, e in enumerate(sys.argv[2:]):
    db.execute("INSERT INTO users VALUES (?, ?, 0, NULL, ?, ?)",
               ("00000000-0000-4000-8000-00000000000%d" % (i + 1), e, 1000 + i, 1000 + i))
db.commit()
PYEOF
chmod 600 "$T/authd.db"
start_server

# ---- helpers (as in test_auth.sh) ----

# api METHOD PATH [BODY]: one request to the public listener; sets CODE and BODY.
api() {
    rm -f "$T/b.out"
    CODE=$("${CURL[@]}" -X "$1" -o "$T/b.out" -w '%{http_code}' \
        ${3:+-H 'Content-Type: application/json' --data-binary "$3"} "$(https_url "$2")" \
        2>"$T/curl.err") || true
    [[ -n "$CODE" ]] || CODE=000
    BODY=$(cat "$T/b.out" 2>/dev/null || true)
}
jget() {
    printf '%s' "$BODY" | json "$1"
}
# jobj KEY VALUE ...: a JSON object of string members (UTF-8 as is).
jobj() {
    "$PY" -c 'import json, sys
a = sys.argv[1:]
print(json.dumps(dict(zip(a[0::2], a[1::2])), ensure_ascii=False))' "$@"
}
register() { # email password
    api POST /v1/auth/register "$(jobj email "$1" password "$2")"
}
login() { # email password
    api POST /v1/auth/login "$(jobj email "$1" password "$2")"
}
# shown STRING: the string with its non-ASCII code points escaped, for messages.
shown() {
    "$PY" -c 'import sys; print(ascii(sys.argv[1]))' "$1"
}

# ---- the migration of the stored rows (ran at start-up) ----
migrated_rows() {
    "$PY" - "$T/authd.db" "$OLD_NFD" "$OLD_NFC" "$OLD_ZWSP" <<'PYEOF' || fail "migrated rows (see above)"
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
rows = dict(db.execute("SELECT id, email FROM users WHERE id LIKE '00000000-%'"))
want = {"00000000-0000-4000-8000-000000000001": sys.argv[2],  # collision: kept as stored
        "00000000-0000-4000-8000-000000000002": sys.argv[3],
        "00000000-0000-4000-8000-000000000003": "eve@old.example",
        "00000000-0000-4000-8000-000000000004": sys.argv[4]}
bad = [(i, ascii(rows.get(i)), ascii(e)) for i, e in want.items() if rows.get(i) != e]
if bad:
    sys.exit("  rows (id, stored, expected): %s" % bad)
if db.execute("PRAGMA user_version").fetchone()[0] < 2:
    sys.exit("  schema version still 1")
PYEOF
}
soft migrated_rows
soft expect_contains "$(cat "$SERVER_STDERR")" \
    "user 00000000-0000-4000-8000-000000000001 keeps its stored email: its normalized address belongs to user 00000000-0000-4000-8000-000000000002" \
    "collision logged with both user ids"
soft expect_contains "$(cat "$SERVER_STDERR")" \
    "user 00000000-0000-4000-8000-000000000004 keeps its stored email, which is no longer a valid address" \
    "no-longer-valid address logged by user id"
if grep -aq "old\.example" "$SERVER_STDERR"; then
    soft fail "an address appears in the log: $(grep -a "old\.example" "$SERVER_STDERR" | head -n 1)"
fi

# ---- the originals ----
PW='itest email pass-phrase 9Vq2Lm'
register user@example.com "$PW"
[[ "$CODE" == 201 ]] || fail "register user@example.com: $CODE $BODY"
declare -A ID # account name -> user id
ID[user]=$(jget "d['user']['id']")
register $'jos\u00e9@example.com' "$PW" # NFC
[[ "$CODE" == 201 ]] || fail "register josé@example.com: $CODE $BODY"
ID[jose]=$(jget "d['user']['id']")
register $'Ex@B\u00dcCHER.de' "$PW"
[[ "$CODE" == 201 ]] || fail "register Ex@BÜCHER.de: $CODE $BODY"
soft expect_eq "$(jget "d['user']['email']")" "ex@xn--bcher-kva.de" "IDN domain stored as its A-label"
ID[ex]=$(jget "d['user']['id']")

# ---- look-alikes: 409 when they are the same address, 400 when refused, never 201 ----
# "spelling|expected status|what"
LOOKALIKES=(
    $'jose\u0301@example.com|409|NFD of josé'
    $'JOS\u00c9@example.com|409|upper-case É'
    $'\uff55ser@example.com|409|fullwidth u'
    $'\uff35\uff33\uff25\uff32@\uff45xample.com|409|fullwidth USER and domain'
    $'  USER@Example.COM |409|case and surrounding spaces'
    $'user@example\u3002com|409|ideographic full stop'
    $'ex@xn--bcher-kva.de|409|A-label of bücher.de'
    $'ex@bu\u0308cher.DE|409|NFD ü in the domain'
    $'Control@New.example|201|control: a new address'
    $'eve@old.example|409|migrated fullwidth row'
    $'us\u0435r@example.com|400|Cyrillic e'
    $'user@ex\u0430mple.com|400|Cyrillic a in the domain'
    $'us\u200ber@example.com|400|zero-width space'
    $'user\u200d@example.com|400|zero-width joiner'
    $'\u202euser@example.com|400|right-to-left override'
    $'user\u2066@example.com|400|left-to-right isolate'
    $'user@example.com\u200f|400|right-to-left mark'
    $'us\u00ader@example.com|400|soft hyphen'
    $'\ufeffuser@example.com|400|byte order mark'
)
for entry in "${LOOKALIKES[@]}"; do
    IFS='|' read -r spelling want what <<<"$entry"
    register "$spelling" "$PW"
    if [[ "$CODE" != "$want" ]]; then
        soft fail "register $what $(shown "$spelling"): expected $want, got $CODE: $BODY"
        continue
    fi
    case "$want" in
    409) soft expect_eq "$(jget "d['error']")" email_taken "register $what: error code" ;;
    400)
        soft expect_eq "$(jget "d['error']")" invalid_request "register $what: error code"
        soft expect_contains "$(jget "d['message']")" 'Field "email" is not an email address: it ' \
            "register $what: message"
        ;;
    esac
done

# ---- login with an equal spelling reaches the same account ----
# "spelling|account|what"
for entry in \
    $'jose\u0301@example.com|jose|NFD of josé' \
    $'JOS\u00c9@EXAMPLE.COM|jose|upper-case É' \
    $'\uff35\uff33\uff25\uff32@example.com|user|fullwidth USER' \
    $'User@Example.Com|user|mixed case' \
    $'ex@xn--bcher-kva.de|ex|A-label' \
    $'EX@b\u00fccher.de|ex|U-label'; do
    IFS='|' read -r spelling account what <<<"$entry"
    login "$spelling" "$PW"
    if [[ "$CODE" != 200 ]]; then
        soft fail "login $what $(shown "$spelling"): expected 200, got $CODE: $BODY"
        continue
    fi
    soft expect_eq "$(jget "d['user']['id']")" "${ID[$account]}" "login $what: the same account"
done
login $'us\u0435r@example.com' "$PW"
soft expect_eq "$CODE" 400 "login with a Cyrillic e: refused"

# ---- limits ----
long=$(printf 'a%.0s' $(seq 1 1020))@x.com # 1026 bytes
register "$long" "$PW"
soft expect_eq "$CODE" 400 "register with a 1026-byte email"
soft expect_contains "$(jget "d['message']")" "at most 1024 bytes" "over-long email message"
register "$(printf 'a%.0s' $(seq 1 65))@example.com" "$PW"
soft expect_eq "$CODE" 400 "register with a 65-byte local part"

pass
