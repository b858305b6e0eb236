#!/bin/bash
# auth: the authentication API end to end — register, login, /v1/me, refresh rotation and reuse
# detection (family revoked), logout and introspection, email normalization, identical answers
# for an unknown email and a wrong password, password change revoking the other sessions,
# session list and revocation, the password policy, request-body validation (415, 400, 413)
# without crashing a worker, concurrent registration of one email, audit events (log lines and
# rows) that never hold a secret, request metrics, and 503 admission control of the hashing pool
# while JWKS and /healthz stay fast.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python

# Cheap argon2id: the flows below hash and verify dozens of passwords under the sanitizers.
EXTRA_CONFIG='password = { memory_kib = 1024; iterations = 1; };'
start_server

UA="authd-itest-auth/1.0"
SECRETS=() # every password and token used; none may reach the log or the database file
LOGIN_OK=0  # successful logins, for the metrics check
LOGIN_401=0 # refused logins

# ---- helpers ----

# api METHOD PATH [BODY [CURL ARGS...]]: one request to the public listener. A non-empty BODY is
# sent as application/json. Sets CODE (000 when no response), BODY and HDRS (CR-free headers).
api() {
    local method=$1 path=$2 body=${3-}
    shift 2
    (($# > 0)) && shift
    local a=(-X "$method" -D "$T/h.out" -o "$T/b.out" -w '%{http_code}' -A "$UA")
    [[ -n "$body" ]] && a+=(-H 'Content-Type: application/json' --data-binary "$body")
    rm -f "$T/h.out" "$T/b.out"
    CODE=$("${CURL[@]}" "${a[@]}" "$@" "$(https_url "$path")" 2>"$T/curl.err") || true
    [[ -n "$CODE" ]] || CODE=000
    BODY=$(cat "$T/b.out" 2>/dev/null || true)
    HDRS=$(tr -d '\r' <"$T/h.out" 2>/dev/null || true)
}

# jget EXPR: Python expression on the last response body (as d).
jget() {
    printf '%s' "$BODY" | json "$1"
}

# header NAME: value of response header NAME of the last request (empty when absent).
header() {
    printf '%s\n' "$HDRS" | awk -v n="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" -F': ' \
        'tolower($1) == n { sub(/^[^:]*: /, ""); print; exit }'
}

# expect_status STATUS [ERROR_CODE] WHAT: the last response had STATUS (and that JSON error).
expect_status() {
    local want=$1 err=$2 what=$3
    [[ "$CODE" == "$want" ]] ||
        fail "$what: expected HTTP $want, got $CODE: $(printf '%s' "$BODY" | head -c 600) $(head -c 300 "$T/curl.err" 2>/dev/null)"
    if [[ -n "$err" ]]; then
        expect_eq "$(header content-type | cut -d';' -f1)" application/json "$what content type"
        expect_eq "$(jget "d.get('error')")" "$err" "$what error code"
        [[ -n "$(jget "d.get('message') or ''")" ]] || fail "$what: error without a message: $BODY"
    fi
}

# expect_no_body_headers WHAT: a 204 carries neither Content-Type nor Content-Length.
expect_no_body_headers() {
    [[ -z "$(header content-type)$(header content-length)" ]] ||
        fail "$1: 204 with Content-Type/Content-Length: $HDRS"
}

# jobj KEY VALUE ...: a JSON object of string members (UTF-8 as is).
jobj() {
    "$PY" -c 'import json, sys
a = sys.argv[1:]
print(json.dumps(dict(zip(a[0::2], a[1::2])), ensure_ascii=False))' "$@"
}

# claims TOKEN: the (unverified) JWT payload as JSON.
claims() {
    "$PY" -c 'import base64, json, sys
p = sys.argv[1].split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))))' "$1"
}

register() { # email password
    api POST /v1/auth/register "$(jobj email "$1" password "$2")"
}

# login EMAIL PASSWORD [CURL ARGS...]: sets AT, RT (and CODE/BODY) on success.
login() {
    local e=$1 p=$2
    shift 2
    AT="" RT=""
    api POST /v1/auth/login "$(jobj email "$e" password "$p")" "$@"
    if [[ "$CODE" == 200 ]]; then
        LOGIN_OK=$((LOGIN_OK + 1))
        AT=$(jget "d['access_token']")
        RT=$(jget "d['refresh_token']")
        SECRETS+=("$AT" "$RT")
    elif [[ "$CODE" == 401 ]]; then
        LOGIN_401=$((LOGIN_401 + 1))
    fi
}

refresh() { # refresh_token
    api POST /v1/auth/refresh "$(jobj refresh_token "$1")"
}

me() { # access_token
    api GET /v1/me "" -H "Authorization: Bearer $1"
}

introspect() { # token
    api POST /v1/auth/introspect "$(jobj token "$1")"
}

# check_token_response WHAT USER_ID: the last body is a full token response for USER_ID.
check_token_response() {
    local what=$1 uid=$2
    expect_eq "$(jget "d['token_type']")" Bearer "$what token_type"
    expect_eq "$(jget "d['expires_in']")" 900 "$what expires_in"
    expect_eq "$(jget "sorted(d)")" '["access_token", "expires_in", "refresh_token", "token_type", "user"]' "$what members"
    expect_match "$(jget "d['access_token']")" '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' "$what access_token shape"
    expect_match "$(jget "d['refresh_token']")" '^[A-Za-z0-9_-]{43}$' "$what refresh_token shape"
    expect_eq "$(jget "d['user']['id']")" "$uid" "$what user.id"
    expect_eq "$(jget "sorted(d['user'])")" '["created_at", "email", "email_verified", "id"]' "$what user members"
}

# burst_start NAME N CURL-ARGS...: starts N curl processes that wait on a FIFO gate, then opens
# the gate for all of them at once. Request i writes its status to $T/NAME.i, its body to
# $T/NAME.i.body and its headers to $T/NAME.i.hdr. Sets BURST_PIDS; burst_wait waits for them.
burst_start() {
    local name=$1 n=$2 i
    shift 2
    rm -f "$T/gate.$name"
    mkfifo "$T/gate.$name"
    exec 5<>"$T/gate.$name" # held open read-write: a reader that starts late still finds its byte
    BURST_PIDS=()
    for ((i = 0; i < n; i++)); do
        bg bash -c 'read -r -t 20 -N 1 _ <"$1" || exit 1
            out=$2
            shift 2
            exec "$@" -D "$out.hdr" -o "$out.body" -w "%{http_code}\n" >"$out"' \
            _ "$T/gate.$name" "$T/$name.$i" "${CURL[@]}" "$@"
        BURST_PIDS+=("$BG_PID")
    done
    sleep 0.5
    printf '%*s' "$n" '' | tr ' ' x >&5
}
burst_wait() {
    local p
    for p in "${BURST_PIDS[@]}"; do
        wait "$p" || true
    done
    exec 5>&-
}
# burst_codes NAME N: "STATUS:COUNT " pairs, sorted by status.
burst_codes() {
    local i
    for ((i = 0; i < $2; i++)); do
        cat "$T/$1.$i" 2>/dev/null || echo none
    done | sort | uniq -c | awk '{ printf "%s:%s ", $2, $1 }'
}

# check_secrets: no password or token used appears in the server log or the database files, and
# refresh tokens are stored as their SHA-256 only.
check_secrets() {
    note "checking ${#SECRETS[@]} passwords and tokens against the log and the database"
    local s f
    for s in "${SECRETS[@]}"; do
        [[ -n "$s" ]] || continue
        for f in "$SERVER_STDERR" "$T"/authd.db*; do
            if grep -aqF -- "$s" "$f"; then
                fail "a secret ($(printf '%s' "$s" | head -c 12)...) appears in $(basename "$f")"
            fi
        done
    done
    if grep -aqF -- '$argon2' "$SERVER_STDERR"; then
        fail "a password hash appears in the server log: $(grep -aF -- '$argon2' "$SERVER_STDERR" | head -n 1)"
    fi
    "$PY" - "$T/authd.db" "$RT1" <<'PYEOF' || fail "refresh token storage (see above)"
import base64, hashlib, sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
t = sys.argv[2]
def count(h):
    return db.execute("SELECT count(*) FROM refresh_tokens WHERE hash = ?", (h,)).fetchone()[0]
if count(hashlib.sha256(t.encode()).digest()) != 1:
    sys.exit("  the SHA-256 of a refresh token is not stored")
if count(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))) != 0:
    sys.exit("  a refresh token's raw bytes are stored")
PYEOF
}

# ---- discovery and JWKS ----
api GET /.well-known/openid-configuration
expect_status 200 "" "GET /.well-known/openid-configuration"
expect_eq "$(jget "d['issuer']")" "https://localhost:8443" "discovery issuer (default)"
expect_eq "$(jget "d['jwks_uri']")" "https://localhost:8443/.well-known/jwks.json" "discovery jwks_uri"
api GET /.well-known/jwks.json
expect_status 200 "" "GET /.well-known/jwks.json"
expect_eq "$(header content-type | cut -d';' -f1)" application/json "JWKS content type"
expect_eq "$(jget "len(d['keys'])")" 1 "JWKS keys (one ephemeral key)"
expect_eq "$(jget "sorted(d['keys'][0])")" '["alg", "crv", "kid", "kty", "use", "x", "y"]' "JWK members (no private d)"
expect_eq "$(jget "[d['keys'][0][k] for k in ('kty', 'crv', 'alg', 'use')]")" '["EC", "P-256", "ES256", "sig"]' "JWK kty/crv/alg/use"

# ---- register, with email normalization ----
PW_A='itest Alice pass-phrase #1 Kq81xZ'
PW_A2='itest Alice second pass-phrase 7hUvw'
SECRETS+=("$PW_A" "$PW_A2")
register "  Alice@Example.COM " "$PW_A"
expect_status 201 "" "register Alice"
expect_eq "$(header content-type | cut -d';' -f1)" application/json "register content type"
expect_eq "$(jget "sorted(d)")" '["user"]' "register body members"
expect_eq "$(jget "sorted(d['user'])")" '["created_at", "email", "email_verified", "id"]' "user object members"
expect_eq "$(jget "d['user']['email']")" "alice@example.com" "stored email is trimmed and lower-case"
expect_eq "$(jget "d['user']['email_verified']")" false "email_verified of a new user"
expect_match "$(jget "d['user']['id']")" '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' "user id is a v4 UUID"
expect_match "$(jget "d['user']['created_at']")" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$' "created_at is RFC 3339 UTC"
ALICE=$(jget "d['user']['id']")

for e in alice@example.com ALICE@EXAMPLE.COM " alice@example.com"; do
    register "$e" 'another long pass-phrase 42'
    expect_status 409 email_taken "register '$e' again"
done

# ---- password policy ----
SECRETS+=('another long pass-phrase 42' 'the wrong pass-phrase 123' 'not the current pass-phrase'
    'itest bad email pass-phrase' 'itest dup pass-phrase' 'itest overload pass-phrase'
    'itest Bob wrong pass-phrase')
register weak@example.com 'short pw 11' # 11 code points
expect_status 400 weak_password "register with an 11-character password"
register weak@example.com winniethepooh # the only blocklist entry of 12+ characters
expect_status 400 weak_password "register with a blocklisted password"
register weak@example.com WinnieThePooh
expect_status 400 weak_password "register with a blocklisted password in other case"
register weak.user@example.com weak.user@example.com
expect_status 400 weak_password "register with the email as password"
register weak.user@example.com WEAK.USER@example.com
expect_status 400 weak_password "register with the email (other case) as password"
register ctrl@example.com "$(printf 'itest tab\tpass-phrase')"
expect_status 400 invalid_request "register with a tab in the password"
register ctrl@example.com "$(printf 'itest del\x7fpass-phrase')"
expect_status 400 invalid_request "register with DEL in the password"
register weak@example.com "$(printf 'x%.0s' $(seq 129))"
expect_status 400 weak_password "register with a 129-character password"
# Length counts code points, not bytes: 11 two-byte characters are too short, 12 are enough,
# and 128 of them (256 bytes) are not too long.
register weak@example.com "$(printf 'é%.0s' $(seq 11))"
expect_status 400 weak_password "register with 11 two-byte characters"
PW_U12=$(printf 'é%.0s' $(seq 12))
PW_U128=$(printf 'ü%.0s' $(seq 128))
SECRETS+=("$PW_U12" "$PW_U128")
# ... counted after NFC: 11 e + U+0301 pairs are 22 code points but 11 characters.
register weak@example.com "$(printf 'e\xcc\x81%.0s' $(seq 11))"
expect_status 400 weak_password "register with 11 NFC characters written as 22 NFD code points"
# 128 four-byte characters (512 bytes, the byte bound) are accepted.
PW_E128=$(printf '\xf0\x9f\x98\x80%.0s' $(seq 128))
SECRETS+=("$PW_E128")
register emoji@example.com "$PW_E128"
expect_status 201 "" "register with 128 four-byte characters"
register utf12@example.com "$PW_U12"
expect_status 201 "" "register with 12 two-byte characters"
register utf128@example.com "$PW_U128"
expect_status 201 "" "register with 128 two-byte characters"
login utf128@example.com "$PW_U128"
expect_status 200 "" "login with a 128-character password"
# NFC: the decomposed form of the same password logs in.
login utf12@example.com "$(printf 'e\xcc\x81%.0s' $(seq 12))"
expect_status 200 "" "login with the NFD form of an NFC password"

# ---- login and /v1/me ----
login alice@example.com "$PW_A" -H 'X-Request-Id: itest-login-ok-1'
expect_status 200 "" "login alice@example.com"
check_token_response "login" "$ALICE"
expect_eq "$(header cache-control)" no-store "Cache-Control of a token response"
expect_match "$(header strict-transport-security)" '^max-age=[0-9]+' "HSTS on a token response"
expect_eq "$(header x-request-id)" itest-login-ok-1 "X-Request-Id echoed"
expect_eq "$(jget "d['user']['email']")" alice@example.com "login user.email"
AT1=$AT RT1=$RT
c=$(claims "$AT1")
expect_eq "$(printf '%s' "$c" | json "d['sub']")" "$ALICE" "access token sub"
[[ -n "$(printf '%s' "$c" | json "d.get('sid') or ''")" ]] || fail "access token without sid: $c"
login "  ALICE@example.COM  " "$PW_A"
expect_status 200 "" "login with the email in other case and spaces"

me "$AT1"
expect_status 200 "" "GET /v1/me"
expect_eq "$(jget "sorted(d)")" '["user"]' "/v1/me members"
expect_eq "$(jget "d['user']['id']")" "$ALICE" "/v1/me user.id"
expect_eq "$(jget "d['user']['email']")" alice@example.com "/v1/me user.email"
expect_eq "$(jget "sorted(d['user'])")" '["created_at", "email", "email_verified", "id"]' "/v1/me user members"

api GET /v1/me
expect_status 401 invalid_token "GET /v1/me without a token"
[[ -n "$(header www-authenticate)" ]] || fail "401 without WWW-Authenticate: $HDRS"
expect_match "$(header www-authenticate)" '^Bearer' "WWW-Authenticate without a token"
me "not.a.token"
expect_status 401 invalid_token "GET /v1/me with a garbage token"
expect_eq "$(header www-authenticate)" 'Bearer error="invalid_token"' "WWW-Authenticate of a bad token"
# A token with one flipped payload character does not verify.
tampered=$("$PY" -c 'import sys
h, p, s = sys.argv[1].split(".")
i = len(p) // 2
p = p[:i] + ("A" if p[i] != "A" else "B") + p[i + 1:]
print(".".join((h, p, s)))' "$AT1")
me "$tampered"
expect_status 401 invalid_token "GET /v1/me with a tampered token"
# A token in the query string is not accepted, and the access log drops query strings
# (check_secrets greps the log for these tokens at the end).
api GET "/v1/me?access_token=$AT1"
expect_status 401 invalid_token "GET /v1/me with the token in the query string"
api POST "/v1/auth/introspect?token=$AT1&refresh_token=$RT1" '{"token":"x"}'
expect_eq "$CODE $BODY" '200 {"active":false}' "introspect with tokens in the query string"
api GET /v1/me "" -H "Authorization: Basic $(printf 'a:b' | base64)"
expect_status 401 invalid_token "GET /v1/me with Basic auth"

# ---- unknown email and wrong password answer alike ----
# headers_but_volatile: the response headers without Date and X-Request-Id, sorted.
headers_but_volatile() {
    printf '%s\n' "$HDRS" | grep -viE '^(date|x-request-id):' | sort
}
login nobody@example.com "$PW_A"
c1=$CODE b1=$BODY h1=$(headers_but_volatile)
login alice@example.com 'the wrong pass-phrase 123'
expect_status 401 invalid_credentials "login with a wrong password"
expect_eq "$c1" "$CODE" "status of unknown email vs wrong password"
expect_eq "$b1" "$BODY" "body of unknown email vs wrong password"
expect_eq "$h1" "$(headers_but_volatile)" "headers of unknown email vs wrong password"
login nobody@example.com 'x' # shorter than the policy: login applies no policy
expect_status 401 invalid_credentials "login of an unknown email with a short password"

# ---- refresh rotation and reuse detection ----
refresh "$RT1"
expect_status 200 "" "refresh"
check_token_response "refresh" "$ALICE"
AT2=$(jget "d['access_token']") RT2=$(jget "d['refresh_token']")
SECRETS+=("$AT2" "$RT2")
[[ "$RT2" != "$RT1" ]] || fail "refresh did not rotate the refresh token"
[[ "$AT2" != "$AT1" ]] || fail "refresh returned the same access token"
expect_eq "$(claims "$AT2" | json "d['sid']")" "$(claims "$AT1" | json "d['sid']")" "sid after refresh"
me "$AT2"
expect_status 200 "" "GET /v1/me with the refreshed access token"
refresh "$RT2"
expect_status 200 "" "second refresh"
AT3=$(jget "d['access_token']") RT3=$(jget "d['refresh_token']")
SECRETS+=("$AT3" "$RT3")
# RT1 was rotated: presenting it again is reuse and revokes the whole family.
refresh "$RT1"
expect_status 401 invalid_grant "refresh with a rotated token (reuse)"
refresh "$RT3"
expect_status 401 invalid_grant "refresh with the newest token after reuse"
for t in "$AT1" "$AT2" "$AT3"; do
    me "$t"
    expect_status 401 invalid_token "GET /v1/me with an access token of the revoked family"
    expect_eq "$(header www-authenticate)" 'Bearer error="invalid_token"' "WWW-Authenticate of a revoked session"
done
introspect "$AT3"
expect_status 200 "" "introspect after reuse"
expect_eq "$BODY" '{"active":false}' "introspection of a revoked family's token"
refresh "unknown-refresh-token-AAAAAAAAAAAAAAAAAAAAA" # 43 characters: looked up
expect_status 401 invalid_grant "refresh with an unknown token"
refresh "short"
expect_status 401 invalid_grant "refresh with a short token"

# ---- introspection and logout ----
login alice@example.com "$PW_A"
expect_status 200 "" "login for logout"
AT4=$AT RT4=$RT
introspect "$AT4"
expect_status 200 "" "introspect"
expect_eq "$(jget "d['active']")" true "introspection active"
expect_eq "$(jget "sorted(d)")" '["active", "aud", "client_id", "exp", "iat", "iss", "jti", "nbf", "sid", "sub", "token_type"]' "introspection members"
expect_eq "$(jget "d['sub']")" "$ALICE" "introspection sub"
expect_eq "$(jget "d['iss']")" "https://localhost:8443" "introspection iss"
expect_eq "$(jget "d['aud']")" authd "introspection aud"
expect_eq "$(jget "d['token_type']")" Bearer "introspection token_type"
expect_eq "$(jget "d['client_id']")" authd "introspection client_id"
expect_eq "$(jget "d['sid']")" "$(claims "$AT4" | json "d['sid']")" "introspection sid"
expect_eq "$(jget "d['exp'] - d['iat']")" 900 "introspection exp - iat"
expect_eq "$(jget "d['nbf'] == d['iat']")" true "introspection nbf == iat"
introspect "$tampered"
expect_eq "$CODE $BODY" '200 {"active":false}' "introspection of a tampered token"
introspect "$RT4"
expect_eq "$CODE $BODY" '200 {"active":false}' "introspection of a refresh token"
api POST /v1/auth/logout "$(jobj refresh_token "$RT4")"
expect_status 204 "" "logout"
expect_eq "$BODY" "" "logout body"
expect_no_body_headers "logout"
refresh "$RT4"
expect_status 401 invalid_grant "refresh after logout"
introspect "$AT4"
expect_eq "$CODE $BODY" '200 {"active":false}' "introspection after logout"
me "$AT4"
expect_status 401 invalid_token "GET /v1/me after logout"
api POST /v1/auth/logout "$(jobj refresh_token "$RT4")"
expect_status 204 "" "logout again with the same token"
api POST /v1/auth/logout "$(jobj refresh_token "no-such-token")"
expect_status 204 "" "logout with an unknown token"

# ---- password change with two sessions ----
login alice@example.com "$PW_A" -A "itest-device-one"
expect_status 200 "" "login session 1"
S1_AT=$AT S1_RT=$RT
login alice@example.com "$PW_A" -A "itest-device-two"
expect_status 200 "" "login session 2"
S2_AT=$AT S2_RT=$RT
pwchange() { # access_token current new
    api POST /v1/me/password "$(jobj current_password "$2" new_password "$3")" -H "Authorization: Bearer $1"
}
pwchange "$S1_AT" 'not the current pass-phrase' "$PW_A2"
expect_status 401 invalid_credentials "password change with a wrong current password"
expect_eq "$(header www-authenticate)" "" "WWW-Authenticate of a wrong current password"
pwchange "$S1_AT" "$PW_A" 'too short'
expect_status 400 weak_password "password change to a short password"
pwchange "$S1_AT" "$PW_A" winniethepooh
expect_status 400 weak_password "password change to a blocklisted password"
pwchange "$S1_AT" "$PW_A" Alice@Example.com
expect_status 400 weak_password "password change to the email"
api POST /v1/me/password "$(jobj current_password "$PW_A" new_password "$PW_A2")"
expect_status 401 invalid_token "password change without a token"
api POST /v1/me/password "$(jobj current_password "$PW_A")" -H "Authorization: Bearer $S1_AT"
expect_status 400 invalid_request "password change without new_password"
printf '{"current_password":"%s","new_password":"itest \xff\xfe new pass-phrase"}' "$PW_A" >"$T/pw-latin1.json"
api POST /v1/me/password "" -H 'Content-Type: application/json' -H "Authorization: Bearer $S1_AT" --data-binary "@$T/pw-latin1.json"
expect_status 400 invalid_request "password change to a non-UTF-8 password"
pwchange "$S1_AT" "$PW_A" "$(printf 'itest new\npass-phrase line')"
expect_status 400 invalid_request "password change to a password with a newline"
# Nothing above changed anything: both sessions still work.
me "$S2_AT"
expect_status 200 "" "session 2 before the password change"
pwchange "$S1_AT" "$PW_A" "$PW_A2"
expect_status 204 "" "password change"
expect_eq "$BODY" "" "password change body"
expect_no_body_headers "password change"
refresh "$S2_RT"
expect_status 401 invalid_grant "refresh of the other session after a password change"
me "$S2_AT"
expect_status 401 invalid_token "access token of the other session after a password change"
me "$S1_AT"
expect_status 200 "" "the current session after a password change"
refresh "$S1_RT"
expect_status 200 "" "refresh of the current session after a password change"
S1_AT=$(jget "d['access_token']") S1_RT=$(jget "d['refresh_token']")
SECRETS+=("$S1_AT" "$S1_RT")
login alice@example.com "$PW_A"
expect_status 401 invalid_credentials "login with the old password"
login alice@example.com "$PW_A2"
expect_status 200 "" "login with the new password"
A_AT=$AT

# ---- sessions: list and revoke ----
PW_B='itest Bob pass-phrase #2 Pz04qW'
SECRETS+=("$PW_B")
register bob@example.com "$PW_B"
expect_status 201 "" "register Bob"
login bob@example.com 'itest Bob wrong pass-phrase'
expect_status 401 invalid_credentials "login of Bob with a wrong password"
login bob@example.com "$PW_B" -A "itest-bob-laptop"
B1_AT=$AT B1_RT=$RT
login bob@example.com "$PW_B" -A "itest-bob-phone"
B2_AT=$AT B2_RT=$RT
B1_SID=$(claims "$B1_AT" | json "d['sid']")
api GET /v1/me/sessions "" -H "Authorization: Bearer $B1_AT"
expect_status 200 "" "GET /v1/me/sessions"
B2_SID=$(jget "' '.join(s['id'] for s in d['sessions'] if not s['current'])")
expect_eq "$B2_SID" "$(claims "$B2_AT" | json "d['sid']")" "the other session in the list is the second login's sid"
expect_eq "$(jget "len(d['sessions'])")" 2 "Bob's sessions"
expect_eq "$(jget "sorted(d['sessions'][0])")" '["created_at", "current", "expires_at", "id", "ip", "last_used_at", "user_agent"]' "session members"
expect_eq "$(jget "[s['id'] for s in d['sessions'] if s['current']]")" "[\"$B1_SID\"]" "the one current session is the token's sid"
expect_eq "$(jget "sorted(s['id'] for s in d['sessions'])")" "$("$PY" -c 'import json, sys; print(json.dumps(sorted(sys.argv[1:])))' "$B1_SID" "$B2_SID")" "session ids"
expect_eq "$(jget "[s['user_agent'] for s in d['sessions'] if s['id'] == '$B2_SID']")" '["itest-bob-phone"]' "user_agent of the other session"
expect_eq "$(jget "sorted(set(s['ip'] for s in d['sessions']))")" '["127.0.0.1"]' "session ip"
expect_eq "$(jget "all(s['created_at'] <= s['last_used_at'] < s['expires_at'] for s in d['sessions'])")" true "session times ordered"
api GET /v1/me/sessions
expect_status 401 invalid_token "GET /v1/me/sessions without a token"

api DELETE "/v1/me/sessions/$B2_SID" "" -H "Authorization: Bearer $B1_AT"
expect_status 204 "" "DELETE Bob's other session"
expect_no_body_headers "DELETE of a session"
refresh "$B2_RT"
expect_status 401 invalid_grant "refresh of a deleted session"
me "$B2_AT"
expect_status 401 invalid_token "access token of a deleted session"
api DELETE "/v1/me/sessions/$B2_SID" "" -H "Authorization: Bearer $B1_AT"
expect_status 404 not_found "DELETE of an already deleted session"
A_SID=$(claims "$A_AT" | json "d['sid']")
api DELETE "/v1/me/sessions/$A_SID" "" -H "Authorization: Bearer $B1_AT"
expect_status 404 not_found "DELETE of someone else's session"
me "$A_AT"
expect_status 200 "" "Alice's session survives Bob's DELETE"
for bad in xyz 00000000-0000-4000-8000-000000000000 "${B1_SID}0" "$(printf '%s' "$B1_SID" | tr 'a-f' 'A-F')" \
    "$(printf '%s' "$B1_SID" | sed 's/-/x/')"; do
    api DELETE "/v1/me/sessions/$bad" "" -H "Authorization: Bearer $B1_AT"
    expect_status 404 not_found "DELETE /v1/me/sessions/$bad"
done
api DELETE "/v1/me/sessions/$B1_SID/x" "" -H "Authorization: Bearer $B1_AT"
expect_status 404 not_found "DELETE of a deeper path"
api DELETE "/v1/me/sessions/$B1_SID"
expect_status 401 invalid_token "DELETE without a token"
api DELETE /v1/me/sessions/xyz
expect_status 401 invalid_token "DELETE of a malformed id without a token (the token is checked first)"
api GET /v1/me/sessions "" -H "Authorization: Bearer $B1_AT"
expect_eq "$(jget "[s['id'] for s in d['sessions']]")" "[\"$B1_SID\"]" "Bob's sessions after the DELETE"
# Deleting the current session ends it too.
api DELETE "/v1/me/sessions/$B1_SID" "" -H "Authorization: Bearer $B1_AT"
expect_status 204 "" "DELETE of the current session"
me "$B1_AT"
expect_status 401 invalid_token "access token of the deleted current session"
refresh "$B1_RT"
expect_status 401 invalid_grant "refresh of the deleted current session"

# ---- request validation: 415, 400, 413; the server survives all of it ----
GOOD=$(jobj email alice@example.com password "$PW_A2")
for path in /v1/auth/register /v1/auth/login /v1/auth/refresh /v1/auth/logout /v1/auth/introspect; do
    api POST "$path" "" -H 'Content-Type: text/plain' --data-binary "$GOOD"
    expect_status 415 unsupported_media_type "POST $path as text/plain"
    api POST "$path" "" --data-binary "$GOOD" # curl's default: x-www-form-urlencoded
    expect_status 415 unsupported_media_type "POST $path as form data"
    api POST "$path" "" -H 'Content-Type: application/jsonx' --data-binary "$GOOD"
    expect_status 415 unsupported_media_type "POST $path as application/jsonx"
    api POST "$path" "" -H 'Content-Type:' --data-binary "$GOOD"
    expect_status 415 unsupported_media_type "POST $path without a content type"
done
api POST /v1/me/password "" -H 'Content-Type: text/plain' -H "Authorization: Bearer $A_AT" \
    --data-binary "$(jobj current_password "$PW_A2" new_password 'x')"
expect_status 415 unsupported_media_type "POST /v1/me/password as text/plain"
api POST /v1/auth/login "" -H 'Content-Type: application/json; charset=utf-8' --data-binary "$GOOD"
expect_status 200 "" "login with Content-Type: application/json; charset=utf-8"
LOGIN_OK=$((LOGIN_OK + 1))
SECRETS+=("$(jget "d['access_token']")" "$(jget "d['refresh_token']")")
api POST /v1/auth/login "" -H 'Content-Type: Application/JSON' --data-binary "$GOOD"
expect_status 200 "" "login with Content-Type: Application/JSON"
LOGIN_OK=$((LOGIN_OK + 1))
SECRETS+=("$(jget "d['access_token']")" "$(jget "d['refresh_token']")")
# Members the endpoint does not know are ignored.
api POST /v1/auth/login "{\"email\":\"alice@example.com\",\"password\":\"$PW_A2\",\"client\":{\"x\":[1,2]}}"
expect_status 200 "" "login with an unknown member"
LOGIN_OK=$((LOGIN_OK + 1))
SECRETS+=("$(jget "d['access_token']")" "$(jget "d['refresh_token']")")

"$PY" - "$T" <<'PYEOF'
import json, sys
t = sys.argv[1]
def w(name, data):
    with open("%s/%s" % (t, name), "wb") as f:
        f.write(data)
w("nested.json", b"[" * 2000 + b"]" * 2000)
w("nested-obj.json", b'{"email":' + b"[" * 2000 + b"]" * 2000 + b',"password":"itest nested pass-phrase"}')
w("big.json", json.dumps({"email": "big@example.com", "password": "x" * 70000}).encode())
w("latin1-email.json", b'{"email":"caf\xe9@example.com","password":"itest latin-1 pass-phrase"}')
w("latin1-password.json", b'{"email":"alice@example.com","password":"itest \xff\xfe pass-phrase"}')
w("overlong.json", b'{"email":"a\xc0\xafb@example.com","password":"itest overlong pass-phrase"}')
w("surrogate.json", b'{"email":"a\xed\xa0\x80b@example.com","password":"itest surrogate pass-phrase"}')
w("nul.json", b'{"email":"a\x00b@example.com","password":"itest nul pass-phrase"}')
PYEOF
head -c 70000 /dev/zero | tr '\0' ' ' >"$T/big-ws.json" # 70 KB of whitespace: too large all the same

# bad_body WHAT STATUS CODE PATH BODY-or-@FILE
bad_body() {
    local what=$1 st=$2 code=$3 path=$4 data=$5
    api POST "$path" "" -H 'Content-Type: application/json' --data-binary "$data"
    expect_status "$st" "$code" "$what ($path)"
}
for path in /v1/auth/register /v1/auth/login; do
    bad_body "malformed JSON" 400 invalid_request "$path" '{"email": "alice@example.com", "password": '
    bad_body "trailing garbage" 400 invalid_request "$path" "$GOOD x"
    bad_body "two objects" 400 invalid_request "$path" "$GOOD$GOOD"
    bad_body "empty body" 400 invalid_request "$path" ''
    bad_body "JSON array" 400 invalid_request "$path" "[$GOOD]"
    bad_body "JSON string" 400 invalid_request "$path" '"alice@example.com"'
    bad_body "JSON null" 400 invalid_request "$path" 'null'
    bad_body "2000-level nested array" 400 invalid_request "$path" "@$T/nested.json"
    bad_body "2000-level nested array in a member" 400 invalid_request "$path" "@$T/nested-obj.json"
    bad_body "non-UTF-8 email" 400 invalid_request "$path" "@$T/latin1-email.json"
    bad_body "non-UTF-8 password" 400 invalid_request "$path" "@$T/latin1-password.json"
    bad_body "overlong UTF-8" 400 invalid_request "$path" "@$T/overlong.json"
    bad_body "UTF-8 surrogate" 400 invalid_request "$path" "@$T/surrogate.json"
    bad_body "raw NUL in a string" 400 invalid_request "$path" "@$T/nul.json"
    bad_body "escaped NUL in the email" 400 invalid_request "$path" '{"email":"a\u0000b@example.com","password":"itest escaped nul"}'
    bad_body "duplicate keys" 400 invalid_request "$path" '{"email":"dup1@example.com","email":"dup2@example.com","password":"itest dup pass-phrase"}'
    bad_body "duplicate password keys" 400 invalid_request "$path" '{"email":"dup1@example.com","password":"itest dup pass-phrase","password":"itest dup pass-phrase"}'
    bad_body "duplicate keys in a nested object" 400 invalid_request "$path" '{"email":"dup1@example.com","password":"itest dup pass-phrase","x":{"a":1,"a":2}}'
    bad_body "missing fields" 400 invalid_request "$path" '{}'
    bad_body "missing password" 400 invalid_request "$path" '{"email":"missing@example.com"}'
    bad_body "missing email" 400 invalid_request "$path" '{"password":"itest missing email pw"}'
    bad_body "numeric email" 400 invalid_request "$path" '{"email":12345,"password":"itest numeric email pw"}'
    bad_body "numeric password" 400 invalid_request "$path" '{"email":"num@example.com","password":123456789012345}'
    bad_body "null password" 400 invalid_request "$path" '{"email":"num@example.com","password":null}'
    bad_body "array password" 400 invalid_request "$path" '{"email":"num@example.com","password":["itest array pass-phrase"]}'
    bad_body "object email" 400 invalid_request "$path" '{"email":{"a":"b@example.com"},"password":"itest object email"}'
    bad_body "boolean email" 400 invalid_request "$path" '{"email":true,"password":"itest boolean email pw"}'
    for e in alice.example.com '' '   ' '@example.com' 'alice@' 'alice@example' 'a@b@example.com' \
        'alice @example.com' 'alice@example.com.' 'alice@.example.com' '<alice@example.com>'; do
        bad_body "email '$e'" 400 invalid_request "$path" "$(jobj email "$e" password 'itest bad email pass-phrase')"
    done
    bad_body "a 300-byte email" 400 invalid_request "$path" "$(jobj email "$(printf 'a%.0s' $(seq 290))@example.com" password 'itest long email pass-phrase')"
    bad_body "70 KB body" 413 body_too_large "$path" "@$T/big.json"
    expect_eq "$(header connection)" close "Connection header of a 413"
    bad_body "70 KB of whitespace" 413 body_too_large "$path" "@$T/big-ws.json"
done
# A body sent chunked (no Content-Length) is bounded too.
api POST /v1/auth/login "" -H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' --data-binary "@$T/big.json"
expect_status 413 body_too_large "a chunked 70 KB body"
for path in /v1/auth/refresh /v1/auth/logout; do
    bad_body "malformed JSON" 400 invalid_request "$path" '{"refresh_token":'
    bad_body "JSON array" 400 invalid_request "$path" '["x"]'
    bad_body "missing refresh_token" 400 invalid_request "$path" '{}'
    bad_body "numeric refresh_token" 400 invalid_request "$path" '{"refresh_token":42}'
    bad_body "duplicate refresh_token" 400 invalid_request "$path" '{"refresh_token":"a","refresh_token":"b"}'
    bad_body "2000-level nested array" 400 invalid_request "$path" "@$T/nested.json"
    bad_body "70 KB body" 413 body_too_large "$path" "@$T/big.json"
done
bad_body "missing token" 400 invalid_request /v1/auth/introspect '{}'
bad_body "a 9000-byte token" 400 invalid_request /v1/auth/introspect "$(jobj token "$(printf 'a%.0s' $(seq 9000))")"
bad_body "a 600-byte refresh_token" 400 invalid_request /v1/auth/refresh "$(jobj refresh_token "$(printf 'a%.0s' $(seq 600))")"
bad_body "numeric token" 400 invalid_request /v1/auth/introspect '{"token":1}'
bad_body "2000-level nested array" 400 invalid_request /v1/auth/introspect "@$T/nested.json"
api POST /v1/me/password "" -H 'Content-Type: application/json' -H "Authorization: Bearer $A_AT" --data-binary "@$T/nested.json"
expect_status 400 invalid_request "2000-level nested array (/v1/me/password)"
api POST /v1/me/password '{"current_password":1,"new_password":"itest numeric current"}' -H "Authorization: Bearer $A_AT"
expect_status 400 invalid_request "numeric current_password"
for m in GET PUT DELETE; do
    api "$m" /v1/auth/login
    expect_status 405 method_not_allowed "$m /v1/auth/login"
done
api POST /v1/me "$GOOD"
expect_status 405 method_not_allowed "POST /v1/me"

# The server is still healthy, no worker restarted, and a login still works.
expect_eq "$(status_code "$(admin_url /healthz)")" 200 "admin /healthz after the bad bodies"
expect_eq "$(status_code "$(https_url /healthz)")" 200 "public /healthz after the bad bodies"
login alice@example.com "$PW_A2"
expect_status 200 "" "login after the bad bodies"
me "$AT"
expect_status 200 "" "GET /v1/me after the bad bodies"
expect_eq "$(metric authd_worker_restarts_total)" 0 "authd_worker_restarts_total after the bad bodies"
server_alive || fail "the master died"

# ---- concurrent registration of one email ----
N=20
SECRETS+=('itest race pass-phrase 77')
burst_start race "$N" -X POST -H 'Content-Type: application/json' \
    --data-binary "$(jobj email race@example.com password 'itest race pass-phrase 77')" \
    "$(https_url /v1/auth/register)"
burst_wait
expect_eq "$(burst_codes race "$N")" "201:1 409:$((N - 1)) " "statuses of $N concurrent registrations of one email"
for ((i = 0; i < N; i++)); do
    if [[ "$(cat "$T/race.$i")" == 409 ]]; then
        expect_eq "$(json "d['error']" <"$T/race.$i.body")" email_taken "a losing concurrent registration"
    fi
done
n=$("$PY" -c 'import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(db.execute("SELECT count(*) FROM users WHERE email = ?", ("race@example.com",)).fetchone()[0])' "$T/authd.db")
expect_eq "$n" 1 "users stored for race@example.com"
login race@example.com 'itest race pass-phrase 77'
expect_status 200 "" "login of the concurrently registered user"

# ---- concurrent refreshes of one token: one wins, the rest is reuse and ends the session ----
RACE_AT=$AT
N=10
burst_start refresh "$N" -X POST -H 'Content-Type: application/json' \
    --data-binary "$(jobj refresh_token "$RT")" "$(https_url /v1/auth/refresh)"
burst_wait
expect_eq "$(burst_codes refresh "$N")" "200:1 401:$((N - 1)) " "statuses of $N concurrent refreshes of one token"
for ((i = 0; i < N; i++)); do
    if [[ "$(cat "$T/refresh.$i")" == 200 ]]; then
        BODY=$(cat "$T/refresh.$i.body")
        WIN_AT=$(jget "d['access_token']") WIN_RT=$(jget "d['refresh_token']")
        SECRETS+=("$WIN_AT" "$WIN_RT")
    else
        expect_eq "$(json "d['error']" <"$T/refresh.$i.body")" invalid_grant "a losing concurrent refresh"
    fi
done
refresh "$WIN_RT"
expect_status 401 invalid_grant "the winner's refresh token after the concurrent refreshes"
me "$WIN_AT"
expect_status 401 invalid_token "the winner's access token after the concurrent refreshes"
me "$RACE_AT"
expect_status 401 invalid_token "the session's first access token after the concurrent refreshes"

# ---- metrics ----
m=$("${CURL[@]}" "$(admin_url /metrics)")
mval() { printf '%s\n' "$m" | awk -v n="$1" 'index($0, n " ") == 1 { print $2; f = 1 } END { if (!f) print 0 }'; }
expect_eq "$(mval 'authd_http_requests_total{route="login",status="200"}')" "$LOGIN_OK" "successful logins counted"
expect_eq "$(mval 'authd_http_requests_total{route="login",status="401"}')" "$LOGIN_401" "refused logins counted"
expect_eq "$(mval 'authd_http_requests_total{route="register",status="201"}')" 6 "registrations counted"
[[ "$(mval 'authd_http_requests_total{route="register",status="409"}')" -ge $((N - 1 + 3)) ]] ||
    fail "409 registrations not counted: $(printf '%s\n' "$m" | grep 'route="register"')"
[[ "$(mval 'authd_http_requests_total{route="refresh",status="200"}')" -ge 3 ]] ||
    fail "refreshes not counted: $(printf '%s\n' "$m" | grep 'route="refresh"')"
[[ "$(mval 'authd_http_requests_total{route="me",status="401"}')" -ge 5 ]] ||
    fail "/v1/me 401s not counted: $(printf '%s\n' "$m" | grep 'route="me"')"

# ---- audit: log lines and rows, with context, without secrets ----
sleep 0.3 # audit lines are written unbuffered; leave the last one time to land
"$PY" - "$SERVER_STDERR" "$T/authd.db" "$UA" "$ALICE" <<'PYEOF' || fail "audit events (see above)"
import json, sqlite3, sys
log, dbpath, ua, alice = sys.argv[1:]
events = []
for line in open(log, encoding="utf-8", errors="replace"):
    try:
        d = json.loads(line)
    except ValueError:
        continue
    if d.get("type") == "audit":
        events.append(d)
bad = []
want = [("register", "success"), ("register", "failure"), ("login", "success"),
        ("login", "failure"), ("refresh", "success"), ("refresh", "failure"),
        ("refresh_reuse", "failure"), ("logout", "success"), ("password_change", "success"),
        ("password_change", "failure"), ("session_revoke", "success")]
have = {(e.get("event"), e.get("result")) for e in events}
for w in want:
    if w not in have:
        bad.append("no audit log line for %s/%s" % w)
for e in events:
    for k in ("request_id", "ip", "user_agent"):
        if not e.get(k):
            bad.append("audit line without %s: %s" % (k, json.dumps(e)))
    if e.get("ip") not in (None, "127.0.0.1"):
        bad.append("audit ip is not 127.0.0.1: %s" % json.dumps(e))
for ev, res, want_details in (("login", "failure", ("unknown_email", "wrong_password")),
                              ("register", "failure", ("email_taken",)),
                              ("refresh", "failure", ("unknown_token", "session_expired_or_revoked")),
                              ("password_change", "failure", ("wrong_current_password",))):
    details = {e.get("detail") for e in events if e.get("event") == ev and e.get("result") == res}
    for d in want_details:
        if d not in details:
            bad.append("no %s/%s audit line with detail %s (have %s)" % (ev, res, d, details))
for e in events:
    if "@" in json.dumps(e):
        bad.append("an audit line holds an email address: %s" % json.dumps(e))
    if e.get("event") in ("refresh_reuse", "password_change", "session_revoke", "logout") \
            and e.get("result") == "success" and not e.get("user_id"):
        bad.append("audit line without user_id: %s" % json.dumps(e))
if not any(e.get("event") == "refresh_reuse" and e.get("user_id") == alice for e in events):
    bad.append("no refresh_reuse audit line for Alice (%s)" % alice)
tagged = [e for e in events if e.get("request_id") == "itest-login-ok-1"]
if len(tagged) != 1 or tagged[0].get("event") != "login" or tagged[0].get("result") != "success" \
        or tagged[0].get("user_agent") != ua or not tagged[0].get("user_id"):
    bad.append("the login sent with X-Request-Id itest-login-ok-1 is not audited as such: %s" % tagged)
db = sqlite3.connect("file:%s?mode=ro" % dbpath, uri=True)
rows = db.execute("SELECT event, result, user_id, ip, user_agent, request_id, detail FROM audit_events").fetchall()
rhave = {(r[0], r[1]) for r in rows}
for w in want:
    if w not in rhave:
        bad.append("no audit row for %s/%s" % w)
if len(rows) != len(events):
    bad.append("%d audit rows but %d audit log lines" % (len(rows), len(events)))
for r in rows:
    if not r[3] or not r[4] or not r[5]:
        bad.append("audit row without ip/user_agent/request_id: %r" % (r,))
    if any("@" in str(v) for v in r):
        bad.append("an audit row holds an email address: %r" % (r,))
trow = [r for r in rows if r[5] == "itest-login-ok-1"]
if len(trow) != 1 or trow[0][:2] != ("login", "success") or trow[0][4] != ua:
    bad.append("no audit row for request itest-login-ok-1: %r" % trow)
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF

# ---- 503 admission control of the hashing pool ----
# One hashing thread and one queue slot per worker, OWASP memory and a high iteration count so
# every verification takes a while; JWKS (event loop) and /healthz must not wait behind them.
server_kill
EXTRA_CONFIG='password = { memory_kib = 19456; iterations = 32; };
offload = { threads = 1; queue = 1; };'
start_server 60
t0=$(now_ms)
login nobody@example.com 'itest overload pass-phrase' # unknown email: a dummy verification
single_ms=$(($(now_ms) - t0))
expect_status 401 invalid_credentials "one login on the slow configuration"
note "one slow login took ${single_ms} ms"
N=20
burst_start ov "$N" --max-time 60 -X POST -H 'Content-Type: application/json' \
    --data-binary "$(jobj email nobody@example.com password 'itest overload pass-phrase')" \
    "$(https_url /v1/auth/login)"
sleep 0.1
# Probe while any login is still in flight (each round starts only then).
probes=()
rounds=0
for ((r = 0; r < 50; r++)); do
    busy=0
    for p in "${BURST_PIDS[@]}"; do
        proc_alive "$p" && busy=1 && break
    done
    ((busy)) || break
    rounds=$((rounds + 1))
    for u in "$(https_url /.well-known/jwks.json)" "$(https_url /healthz)" "$(admin_url /healthz)"; do
        probes+=("$(printf '%s %s' "$("${CURL[@]}" -o /dev/null -w '%{http_code} %{time_total}' "$u" || echo "000 99")" "$u")")
    done
done
burst_wait
note "probe rounds during the login flood: $rounds (${#probes[@]} requests)"
((rounds > 0)) || fail "the probes did not overlap the login flood (one login takes ${single_ms} ms); make hashing slower"
slowest=0
for pr in "${probes[@]}"; do
    read -r code secs url <<<"$pr"
    expect_eq "$code" 200 "GET $url during the login flood"
    awk -v s="$secs" 'BEGIN { exit !(s < 1.0) }' || fail "GET $url took ${secs}s during the login flood"
    slowest=$(awk -v a="$slowest" -v b="$secs" 'BEGIN { print (b > a ? b : a) }')
done
note "slowest JWKS/healthz probe during the flood: ${slowest}s"
n503=0 n401=0
for ((i = 0; i < N; i++)); do
    code=$(cat "$T/ov.$i")
    case "$code" in
    503)
        n503=$((n503 + 1))
        expect_eq "$(json "d['error']" <"$T/ov.$i.body")" overloaded "error of a shed login"
        expect_eq "$(tr -d '\r' <"$T/ov.$i.hdr" | awk -F': ' 'tolower($1) == "retry-after" { print $2 }')" 1 "Retry-After of a shed login"
        ;;
    401) n401=$((n401 + 1)) ;;
    *) fail "concurrent login $i: unexpected status $code: $(cat "$T/ov.$i.body")" ;;
    esac
done
note "concurrent logins: $n503 shed with 503, $n401 served (401)"
((n503 > 0)) || fail "no login was shed with 503 (one hashing thread and one queue slot per worker)"
((n401 > 0)) || fail "no login was served during the flood"
[[ "$(metric authd_offload_rejected_total)" == missing || "$(metric authd_offload_rejected_total)" -ge "$n503" ]] ||
    fail "authd_offload_rejected_total $(metric authd_offload_rejected_total) < $n503"
expect_eq "$(metric authd_worker_restarts_total)" 0 "authd_worker_restarts_total after the flood"
# Tokens signed with the previous run's ephemeral key are gone; sessions (SQLite) are not.
me "$A_AT"
expect_status 401 invalid_token "an access token signed before the restart (ephemeral key)"
login alice@example.com "$PW_A2"
expect_status 200 "" "login after the flood"
# That login re-hashed the password with the new argon2id parameters, and kept the sessions.
h=$("$PY" -c 'import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(db.execute("SELECT password_hash FROM users WHERE email = ?", ("alice@example.com",)).fetchone()[0][:40])' "$T/authd.db")
expect_match "$h" '^\$argon2id\$v=19\$m=19456,t=32,p=1\$' "Alice's password hash after a login with new parameters"
refresh "$S1_RT"
expect_status 200 "" "refresh of a session made before the restart and the re-hash"
me "$(jget "d['access_token']")"
expect_status 200 "" "GET /v1/me with a token refreshed after the restart"
check_secrets

pass
