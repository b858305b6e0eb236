#!/bin/bash
# auth_jwt: access tokens checked by an independent JWT library (panva/jose@5 from npm, run by
# jwt-verify.mjs) that knows only the JWKS endpoint: ES256 and typ at+jwt verify, sub/sid/
# client_id are right, kids are RFC 7638 thumbprints, a tampered token fails. The server's own
# verification refuses tokens jose forges (foreign key, HS256 with the public key, alg none, and
# tokens signed with the real key but a wrong typ/aud/iss/exp/nbf/kid or a missing claim). Key
# rotation by reload: with [new, old] old tokens still verify (both kids published) and new ones
# carry the new kid; with [new] only the old token fails in jose and on /v1/me; kids survive a
# restart. The server's token clock is frozen (AUTHD_TEST_CLOCK_FILE, shared/testhook.h) while
# the forged tokens are checked, so exp/nbf/iat are placed exactly against the leeway: the
# result cannot depend on how long the test took to get there.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_python
need_test_hooks
CLOCK="$T/token-clock"
SERVER_ENV=(AUTHD_TEST_CLOCK_FILE="$CLOCK")
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    skip "node and npm are needed"
fi

# ---- jose from the npm registry ----
mkdir -p "$T/node"
if ! npm install --no-audit --no-fund --prefix "$T/node" jose@5 >"$T/npm.out" 2>&1; then
    fail "npm install jose@5 failed: $(tail -n 20 "$T/npm.out")"
fi
[[ -f "$T/node/node_modules/jose/package.json" ]] || fail "jose not installed under $T/node"
note "jose $(json "d['version']" <"$T/node/node_modules/jose/package.json")"
# The script resolves 'jose' from its own directory.
cp "$AUTHD_SRCDIR/tests/integration/jwt-verify.mjs" "$T/node/jwt-verify.mjs"

# jose ARGS...: runs jwt-verify.mjs trusting the test certificate (no verification turned off).
jose() {
    (cd "$T/node" && NODE_EXTRA_CA_CERTS="$CERT" timeout 30 node jwt-verify.mjs "$@")
}

# ---- server with signing keys on disk and an issuer that is this listener ----
for k in old new; do
    out=$("$AUTHD_BIN" keys generate "$T/$k.pem" 2>&1) || fail "authd keys generate $T/$k.pem: $out"
    expect_eq "$(stat -c %a "$T/$k.pem")" 600 "mode of a generated key"
done
grep -q 'BEGIN PRIVATE KEY' "$T/old.pem" || fail "generated key is not PKCS#8 PEM"
rc=0
"$AUTHD_BIN" keys generate "$T/old.pem" >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 1 "keys generate over an existing file"

AUD=authd-itest
KEYS="\"$T/old.pem\""
before_start() {
    ISS="https://127.0.0.1:$PORT"
    EXTRA_CONFIG="password = { memory_kib = 1024; iterations = 1; };
tokens = {
    issuer = \"$ISS\";
    audience = \"$AUD\";
    signing_keys = [ $KEYS ];
};"
}
start_server

UA="authd-itest-jwt/1.0"
api() { # METHOD PATH [BODY [CURL ARGS...]]: sets CODE, BODY
    local method=$1 path=$2 body=${3-}
    shift 2
    (($# > 0)) && shift
    local a=(-X "$method" -o "$T/b.out" -w '%{http_code}' -A "$UA")
    [[ -n "$body" ]] && a+=(-H 'Content-Type: application/json' --data-binary "$body")
    rm -f "$T/b.out"
    CODE=$("${CURL[@]}" "${a[@]}" "$@" "$(https_url "$path")" 2>"$T/curl.err") || true
    [[ -n "$CODE" ]] || CODE=000
    BODY=$(cat "$T/b.out" 2>/dev/null || true)
}
jget() { printf '%s' "$BODY" | json "$1"; }
jobj() {
    "$PY" -c 'import json, sys
a = sys.argv[1:]
print(json.dumps(dict(zip(a[0::2], a[1::2]))))' "$@"
}
me() { # TOKEN: GET /v1/me (sets CODE, BODY)
    api GET /v1/me "" -H "Authorization: Bearer $1"
}
# header_of TOKEN / payload_of TOKEN: decoded JSON (no verification).
header_of() {
    "$PY" -c 'import base64, json, sys
p = sys.argv[1].split(".")[0]
print(json.dumps(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))))' "$1"
}
payload_of() {
    "$PY" -c 'import base64, json, sys
p = sys.argv[1].split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))))' "$1"
}

# jose_ok TOKEN WHAT: jose verifies TOKEN; sets JV (its JSON answer).
jose_ok() {
    local rc=0
    JV=$(jose verify "$JWKS_URL" "$ISS" "$AUD" "$1" 2>"$T/node.err") || rc=$?
    ((rc == 0)) || fail "$2: jose refused the token (rc $rc): $JV $(head -c 500 "$T/node.err")"
}
# jose_refuses TOKEN CODE WHAT: jose rejects TOKEN with error CODE.
jose_refuses() {
    local rc=0
    JV=$(jose verify "$JWKS_URL" "$ISS" "$AUD" "$1" 2>"$T/node.err") || rc=$?
    expect_eq "$rc" 1 "$3: jose exit status ($JV $(head -c 300 "$T/node.err"))"
    expect_eq "$(printf '%s' "$JV" | json "d.get('error')")" "$2" "$3: jose error"
}
# jwks_kids: the kids of the JWK Set, in order, space-separated; checks every key on the way.
jwks_kids() {
    local k
    k=$(jose kids "$JWKS_URL" 2>"$T/node.err") || fail "jose kids failed: $k $(head -c 500 "$T/node.err")"
    [[ "$(printf '%s' "$k" | json "all(x['kid'] == x['thumbprint'] and x['kty'] == 'EC' and x['crv'] == 'P-256' and x['alg'] == 'ES256' and x['use'] == 'sig' and not x['private'] for x in d)")" == true ]] ||
        fail "a JWK is not a public ES256 key whose kid is its RFC 7638 thumbprint: $k"
    printf '%s' "$k" | json "' '.join(x['kid'] for x in d)"
}

# gen_ready GEN: generation GEN is current and all its workers are ready.
gen_ready() {
    local js
    js=$(status_json 2>/dev/null) || return 1
    [[ "$(printf '%s' "$js" | json "d['generation'] == $1 and sum(1 for w in d['workers'] if w['generation'] == $1 and w['state'] == 'ready') == d['workers_wanted']")" == true ]]
}
# only_gen GEN: every worker left belongs to generation GEN.
only_gen() {
    [[ "$(status_json | json "all(w['generation'] == $1 for w in d['workers'])")" == true ]]
}
# reload_keys KEYS...: signing_keys = the given files (first signs); reload; wait for it.
reload_keys() {
    local f gen out
    KEYS=""
    for f in "$@"; do
        KEYS+="${KEYS:+, }\"$T/$f.pem\""
    done
    before_start
    write_config
    gen=$(generation)
    out=$(authd reload 2>&1) || fail "authd reload ($*) failed: $out"
    expect_contains "$out" "ok: generation $((gen + 1)) starting" "authd reload ($*)"
    wait_until 15 gen_ready "$((gen + 1))" || fail "generation $((gen + 1)) not ready after reloading keys $*"
    wait_until 15 only_gen "$((gen + 1))" || fail "generation $gen still running after reloading keys $*"
    note "reloaded with signing keys [$*]: generation $((gen + 1)) serving alone"
}

# ---- discovery names this listener's JWKS ----
api GET /.well-known/openid-configuration
expect_eq "$CODE" 200 "GET /.well-known/openid-configuration"
expect_eq "$(jget "d['issuer']")" "$ISS" "discovery issuer"
JWKS_URL=$(jget "d['jwks_uri']")
expect_eq "$JWKS_URL" "$ISS/.well-known/jwks.json" "discovery jwks_uri"
expect_eq "$(jget "d['introspection_endpoint']")" "$ISS/v1/auth/introspect" "discovery introspection_endpoint"
expect_eq "$(jget "d['revocation_endpoint']")" "$ISS/v1/auth/logout" "discovery revocation_endpoint"

OLD_KID=$(jwks_kids)
expect_match "$OLD_KID" '^[A-Za-z0-9_-]{43}$' "kid of the one key"

# ---- a user and an access token ----
PW='itest jwt pass-phrase Wm3q9'
api POST /v1/auth/register "$(jobj email jwt.user@example.com password "$PW")"
expect_eq "$CODE" 201 "register: $BODY"
UID_=$(jget "d['user']['id']")
api POST /v1/auth/login "$(jobj email jwt.user@example.com password "$PW")"
expect_eq "$CODE" 200 "login: $BODY"
AT_OLD=$(jget "d['access_token']")
RT_OLD=$(jget "d['refresh_token']")

jose_ok "$AT_OLD" "the access token"
expect_eq "$(printf '%s' "$JV" | json "d['payload']['sub']")" "$UID_" "jose: sub is the user id"
expect_match "$(printf '%s' "$JV" | json "d['payload'].get('sid') or ''")" '^[0-9a-f-]{36}$' "jose: sid"
expect_eq "$(printf '%s' "$JV" | json "d['payload'].get('client_id') or ''")" authd "jose: client_id"
expect_eq "$(printf '%s' "$JV" | json "d['payload']['iss']")" "$ISS" "jose: iss"
expect_eq "$(printf '%s' "$JV" | json "d['payload']['aud']")" "$AUD" "jose: aud"
expect_eq "$(printf '%s' "$JV" | json "d['payload']['exp'] - d['payload']['iat']")" 900 "jose: exp - iat"
expect_match "$(printf '%s' "$JV" | json "d['payload'].get('jti') or ''")" '^[0-9a-f]{32}$' "jose: jti (128 bits, hex)"
expect_eq "$(printf '%s' "$JV" | json "[d['header'][k] for k in ('alg', 'typ', 'kid')]")" "[\"ES256\", \"at+jwt\", \"$OLD_KID\"]" "jose: header"
OLD_SID=$(printf '%s' "$JV" | json "d['payload']['sid']")

# ---- jose refuses a tampered token ----
flip() { # TOKEN PART(0..2): one character in the middle of that part changed
    "$PY" -c 'import sys
parts = sys.argv[1].split(".")
n = int(sys.argv[2])
p = parts[n]
i = len(p) // 2
parts[n] = p[:i] + ("A" if p[i] != "A" else "B") + p[i + 1:]
print(".".join(parts))' "$1" "$2"
}
jose_refuses "$(flip "$AT_OLD" 1)" ERR_JWS_SIGNATURE_VERIFICATION_FAILED "a token with a flipped payload character"
jose_refuses "$(flip "$AT_OLD" 2)" ERR_JWS_SIGNATURE_VERIFICATION_FAILED "a token with a flipped signature character"
# Payload claims changed and re-encoded without re-signing.
forged_payload=$("$PY" -c 'import base64, json, sys
h, p, s = sys.argv[1].split(".")
d = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
d["sub"] = "00000000-0000-4000-8000-000000000000"
p = base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=").decode()
print(".".join((h, p, s)))' "$AT_OLD")
jose_refuses "$forged_payload" ERR_JWS_SIGNATURE_VERIFICATION_FAILED "a token with another sub"
me "$forged_payload"
expect_eq "$CODE" 401 "server: /v1/me with another sub"
# jose really checks the audience it is given (the positive results above mean something).
rc=0
JV=$(jose verify "$JWKS_URL" "$ISS" someone-else "$AT_OLD" 2>/dev/null) || rc=$?
expect_eq "$rc:$(printf '%s' "$JV" | json "d.get('error')")" 1:ERR_JWT_CLAIM_VALIDATION_FAILED "jose with another audience"

# ---- the server refuses tokens jose forges ----
me "$AT_OLD"
expect_eq "$CODE" 200 "server: /v1/me with the real token"
# From here to the key rotation the server checks tokens at exactly $now (the frozen clock).
now=$(date +%s)
echo "$now" >"$CLOCK"
base_claims=$(payload_of "$AT_OLD")
# claims EXPR: base_claims modified by Python statements on c.
claims() {
    "$PY" -c 'import json, sys
c = json.loads(sys.argv[1])
now = int(sys.argv[2])
exec(sys.argv[3])
print(json.dumps(c))' "$base_claims" "$now" "$1"
}
# forge KIND HEADER_JSON CLAIMS_JSON: prints a token made by jose.
forge() {
    local t
    t=$(jose sign "$1" "$T/old.pem" "$2" "$3" 2>"$T/node.err") || fail "jose sign $1 failed: $t $(head -c 500 "$T/node.err")"
    printf '%s' "$t" | json "d['token']"
}
HDR="{\"typ\":\"at+jwt\",\"kid\":\"$OLD_KID\"}"
fresh='c["jti"] = "%032x" % (now * 7919); c["iat"] = c["nbf"] = now; c["exp"] = now + 600'
# Positive control: jose signing with the real key and the same kind of claims is accepted.
good=$(forge es256 "$HDR" "$(claims "$fresh")")
jose_ok "$good" "a token jose signed with the real key"
me "$good"
expect_eq "$CODE" 200 "server: /v1/me with a token jose signed with the real key"
api POST /v1/auth/introspect "$(jobj token "$good")"
expect_eq "$(jget "d['active']")" true "introspection of a token jose signed with the real key"
neg() { # WHAT KIND HEADER CLAIMS-PYTHON
    local t
    t=$(forge "$2" "$3" "$(claims "$fresh; $4")")
    me "$t"
    expect_eq "$CODE" 401 "server: /v1/me with $1"
    expect_eq "$(jget "d['error']")" invalid_token "server: error for $1"
    api POST /v1/auth/introspect "$(jobj token "$t")"
    expect_eq "$CODE $BODY" '200 {"active":false}' "server: introspection of $1"
}
neg "a token signed by a foreign key under the real kid" es256-foreign "$HDR" ""
neg "an HS256 token keyed with the public key" hs256 "$HDR" ""
neg "an unsecured (alg none) token" none "$HDR" ""
neg "typ JWT" es256 "{\"typ\":\"JWT\",\"kid\":\"$OLD_KID\"}" ""
neg "no typ" es256 "{\"kid\":\"$OLD_KID\"}" ""
neg "an unknown kid" es256 '{"typ":"at+jwt","kid":"no-such-kid"}' ""
neg "no kid" es256 '{"typ":"at+jwt"}' ""
neg "another audience" es256 "$HDR" 'c["aud"] = "someone-else"'
neg "an audience list without ours" es256 "$HDR" 'c["aud"] = ["a", "b"]'
neg "another issuer" es256 "$HDR" 'c["iss"] = "https://evil.example"'
neg "an expired token" es256 "$HDR" 'c["iat"] = c["nbf"] = now - 7200; c["exp"] = now - 3600'
neg "a token valid only in an hour" es256 "$HDR" 'c["iat"] = c["nbf"] = now + 3600; c["exp"] = now + 7200'
neg "a token without sub" es256 "$HDR" 'del c["sub"]'
neg "a token without exp" es256 "$HDR" 'del c["exp"]'
neg "a token without jti" es256 "$HDR" 'del c["jti"]'
neg "a string exp" es256 "$HDR" 'c["exp"] = str(c["exp"])'
neg "a token issued an hour from now" es256 "$HDR" 'c["iat"] = now + 3600; c["exp"] = now + 7200'
neg "a numeric sid" es256 "$HDR" 'c["sid"] = 5'
neg "a numeric sub" es256 "$HDR" 'c["sub"] = 5'
# Defence in depth (issue 11): every access token names a well-formed session, which is checked;
# a high-S twin of a valid signature is refused; exp at the edge of int64 does not overflow.
neg "a high-S signature (ECDSA malleability)" es256-high-s "$HDR" ""
neg "a token without sid" es256 "$HDR" 'del c["sid"]'
neg "an empty sid" es256 "$HDR" 'c["sid"] = ""'
neg "a sid that is not a session id" es256 "$HDR" 'c["sid"] = "x" * 36'
neg "an over-long sid" es256 "$HDR" 'c["sid"] = c["sid"] + "0"'
neg "an upper-case sid" es256 "$HDR" 'c["sid"] = c["sid"].upper()'
# pos WHAT KIND HEADER CLAIMS-PYTHON: the server accepts it.
pos() {
    local t
    t=$(forge "$2" "$3" "$(claims "$fresh; $4")")
    me "$t"
    expect_eq "$CODE" 200 "server: /v1/me with $1 ($BODY)"
}
pos "an audience list holding ours (RFC 7519 4.1.3)" es256 "$HDR" "c['aud'] = ['other', '$AUD']"
pos "typ application/at+jwt" es256 "{\"typ\":\"application/at+jwt\",\"kid\":\"$OLD_KID\"}" ""
pos "typ AT+JWT" es256 "{\"typ\":\"AT+JWT\",\"kid\":\"$OLD_KID\"}" ""
pos "no nbf" es256 "$HDR" 'del c["nbf"]'
pos "exp 10 s ago (within the 30 s leeway)" es256 "$HDR" 'c["exp"] = now - 10'
# The leeway's edges (tokens.leeway = 30): exp + 30 = now is still valid, one second more is not;
# the same for nbf - 30 and iat - 30.
pos "exp 30 s ago (the edge of the leeway)" es256 "$HDR" 'c["exp"] = now - 30'
neg "exp 31 s ago (past the 30 s leeway)" es256 "$HDR" 'c["exp"] = now - 31'
pos "nbf 30 s ahead (the edge of the leeway)" es256 "$HDR" 'c["nbf"] = now + 30'
neg "nbf 31 s ahead (past the 30 s leeway)" es256 "$HDR" 'c["nbf"] = now + 31'
pos "iat 30 s ahead (the edge of the leeway)" es256 "$HDR" 'c["iat"] = now + 30'
neg "iat 31 s ahead (past the 30 s leeway)" es256 "$HDR" 'c["iat"] = now + 31'

# Raw tokens (exact bytes signed with the real key): malformed JSON and encodings.
# raw_token KIND HEADER PAYLOAD: prints the token.
raw_token() {
    forge "$@"
}
HTXT="{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"$OLD_KID\"}"
PTXT=$(claims "$fresh")
raw_neg() { # WHAT TOKEN
    me "$2"
    expect_eq "$CODE" 401 "server: /v1/me with $1"
    api POST /v1/auth/introspect "$(jobj token "$2")"
    expect_eq "$CODE $BODY" '200 {"active":false}' "server: introspection of $1"
}
t=$(raw_token es256-raw "$HTXT" "$PTXT")
me "$t"
expect_eq "$CODE" 200 "server: /v1/me with a raw-signed token (control)"
# exp at the int64 limit, byte-exact (jose would round it through a double): exp + leeway must
# saturate, not overflow (UBSan aborted the worker here).
me "$(raw_token es256-raw "$HTXT" "$(claims "$fresh; c['exp'] = 2**63 - 1")")"
expect_eq "$CODE" 200 "server: /v1/me with exp = INT64_MAX ($BODY)"
me "$(raw_token es256-raw "$HTXT" "$(claims "$fresh; c['exp'] = 2**63 - 1")")"
expect_eq "$CODE" 200 "server: /v1/me with exp = INT64_MAX, again (from the verified-token cache)"
raw_neg "a duplicate kid in the header" "$(raw_token es256-raw "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"$OLD_KID\",\"kid\":\"$OLD_KID\"}" "$PTXT")"
raw_neg "a duplicate alg in the header" "$(raw_token es256-raw "{\"alg\":\"none\",\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"$OLD_KID\"}" "$PTXT")"
raw_neg "a duplicate sub in the payload" "$(raw_token es256-raw "$HTXT" "${PTXT%\}},\"sub\":\"00000000-0000-4000-8000-000000000000\"}")"
raw_neg "a crit header" "$(raw_token es256-raw "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"$OLD_KID\",\"crit\":[\"x-ext\"],\"x-ext\":1}" "$PTXT")"
raw_neg "a header that is a JSON array" "$(raw_token es256-raw "[\"ES256\"]" "$PTXT")"
raw_neg "a payload that is not JSON" "$(raw_token es256-raw "$HTXT" "not json")"
raw_neg "a DER signature" "$(raw_token es256-der "$HTXT" "$PTXT")"
# Segments: padded, and non-canonical (unused low bits set), each signed as sent.
read -r padded noncanon < <("$PY" -c 'import base64, sys
p = sys.argv[1]
while len(base64.urlsafe_b64encode(p.encode()).rstrip(b"=")) % 4 != 2:
    p = p[:-1] + " }"
e = base64.urlsafe_b64encode(p.encode()).decode()
a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
s = e.rstrip("=")
print(e, s[:-1] + a[a.index(s[-1]) + 1])' "$PTXT")
HB64=$("$PY" -c 'import base64, sys; print(base64.urlsafe_b64encode(sys.argv[1].encode()).rstrip(b"=").decode())' "$HTXT")
t=$(raw_token es256-b64 "$HB64" "${padded%%=*}")
me "$t"
expect_eq "$CODE" 200 "server: /v1/me with pre-encoded segments (control)"
raw_neg "a padded payload segment" "$(raw_token es256-b64 "$HB64" "$padded")"
raw_neg "a non-canonical payload segment" "$(raw_token es256-b64 "$HB64" "$noncanon")"
# A payload whose base64url form holds '-' or '_', sent in standard base64 ('+', '/').
std=$("$PY" -c 'import base64, json, sys
c = json.loads(sys.argv[1])
for n in range(1, 40):
    c["x"] = "?" * n + ">" * n
    e = base64.urlsafe_b64encode(json.dumps(c).encode()).rstrip(b"=").decode()
    if "_" in e and "-" in e:
        break
print(e.replace("-", "+").replace("_", "/"))' "$PTXT")
expect_match "$std" '[+/]' "a standard-base64 payload segment"
raw_neg "standard base64 characters" "$(raw_token es256-b64 "$HB64" "$std")"
raw_neg "four parts" "$t.$(printf '%s' "$t" | cut -d. -f3)"
raw_neg "an empty signature" "${t%.*}."

rm -f "$CLOCK" # the real clock again: the tokens minted below carry the real iat

# ---- rotation: [new, old] ----
reload_keys new old
kids=$(jwks_kids)
NEW_KID=${kids%% *}
[[ "$NEW_KID" != "$OLD_KID" ]] || fail "the new key has the old kid"
expect_eq "$kids" "$NEW_KID $OLD_KID" "JWKS kids after the rotation (new first, old kept)"
jose_ok "$AT_OLD" "the old token after the rotation"
expect_eq "$(printf '%s' "$JV" | json "d['header']['kid']")" "$OLD_KID" "kid of the old token"
me "$AT_OLD"
expect_eq "$CODE" 200 "server: /v1/me with the old token after the rotation"
api POST /v1/auth/login "$(jobj email jwt.user@example.com password "$PW")"
expect_eq "$CODE" 200 "login after the rotation: $BODY"
AT_NEW=$(jget "d['access_token']")
expect_eq "$(header_of "$AT_NEW" | json "d['kid']")" "$NEW_KID" "kid of a token signed after the rotation"
jose_ok "$AT_NEW" "a token signed after the rotation"
expect_eq "$(printf '%s' "$JV" | json "d['payload']['sub']")" "$UID_" "jose: sub of the new token"
me "$AT_NEW"
expect_eq "$CODE" 200 "server: /v1/me with the new token"
# A refresh of the session opened before the rotation is signed with the new key too.
api POST /v1/auth/refresh "$(jobj refresh_token "$RT_OLD")"
expect_eq "$CODE" 200 "refresh after the rotation: $BODY"
AT_REFRESHED=$(jget "d['access_token']")
expect_eq "$(header_of "$AT_REFRESHED" | json "d['kid']")" "$NEW_KID" "kid of a refreshed token"
jose_ok "$AT_REFRESHED" "a refreshed token after the rotation"
expect_eq "$(printf '%s' "$JV" | json "d['payload']['sid']")" "$OLD_SID" "sid of the refreshed token"

# ---- old key dropped: [new] ----
reload_keys new
expect_eq "$(jwks_kids)" "$NEW_KID" "JWKS kids after dropping the old key"
jose_refuses "$AT_OLD" ERR_JWKS_NO_MATCHING_KEY "the old token once its key is dropped"
me "$AT_OLD"
expect_eq "$CODE" 401 "server: /v1/me with the old token once its key is dropped"
expect_eq "$(jget "d['error']")" invalid_token "server: error for the old token"
api POST /v1/auth/introspect "$(jobj token "$AT_OLD")"
expect_eq "$CODE $BODY" '200 {"active":false}' "introspection of the old token once its key is dropped"
jose_ok "$AT_NEW" "the new token after dropping the old key"
me "$AT_NEW"
expect_eq "$CODE" 200 "server: /v1/me with the new token after dropping the old key"
jose_ok "$AT_REFRESHED" "the refreshed token after dropping the old key"

# ---- kids and tokens survive a restart (keys on disk, kid = thumbprint) ----
server_kill
start_server
expect_eq "$(jwks_kids)" "$NEW_KID" "JWKS kids after a restart"
jose_ok "$AT_NEW" "the new token after a restart"
me "$AT_NEW"
expect_eq "$CODE" 200 "server: /v1/me with the new token after a restart"
expect_eq "$(metric authd_worker_restarts_total)" 0 "authd_worker_restarts_total"

pass
