-- auth-introspect.lua: wrk script for scripts/bench/auth. POST /v1/auth/introspect with one
-- valid access token (AUTH_BENCH_TOKEN) on every request. The request is built once; no
-- response() function, so wrk does not parse bodies (non-2xx answers still show in wrk's
-- "Non-2xx or 3xx responses" line). The script checks separately that the answer is
-- {"active":true,...}.
function init(args)
   wrk.method = "POST"
   wrk.path = "/v1/auth/introspect"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = '{"token":"' .. (os.getenv("AUTH_BENCH_TOKEN") or "") .. '"}'
end
