-- auth-login.lua: wrk script for scripts/bench/auth. POST /v1/auth/login with the users that
-- the benchmark registered (AUTH_BENCH_EMAIL_PREFIX .. i .. "@bench.example", i = 1..AUTH_BENCH_USERS,
-- all with AUTH_BENCH_PASSWORD), cycling through them; each wrk thread starts at a different
-- user. Counts the answers by status: 200 (a login), 401, 503 (overloaded; also whether it
-- carried Retry-After) and anything else, and prints them in done() as
--   auth-bench: status=200 count=N
--   auth-bench: retry_after_503=N
--   auth-bench: duration_s=S
-- Environment: AUTH_BENCH_USERS (64), AUTH_BENCH_PASSWORD, AUTH_BENCH_EMAIL_PREFIX ("bench-").
local threads = {}
local nthreads = 0

function setup(thread)
   thread:set("id", nthreads)
   nthreads = nthreads + 1
   table.insert(threads, thread)
end

function init(args)
   local n = tonumber(os.getenv("AUTH_BENCH_USERS") or "64")
   local password = os.getenv("AUTH_BENCH_PASSWORD") or "authd bench passphrase 42"
   local prefix = os.getenv("AUTH_BENCH_EMAIL_PREFIX") or "bench-"
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   requests = {}
   for i = 1, n do
      local body = string.format('{"email":"%s%d@bench.example","password":"%s"}', prefix, i, password)
      requests[i] = wrk.format("POST", "/v1/auth/login", nil, body)
   end
   nusers = n
   next_user = ((id or 0) * 7) % n -- spread the threads' starting points
   c200, c401, c503, c503ra, cother = 0, 0, 0, 0, 0
end

function request()
   next_user = next_user % nusers + 1
   return requests[next_user]
end

function response(status, headers, body)
   if status == 200 then
      c200 = c200 + 1
   elseif status == 401 then
      c401 = c401 + 1
   elseif status == 503 then
      c503 = c503 + 1
      if headers["Retry-After"] or headers["retry-after"] then
         c503ra = c503ra + 1
      end
   else
      cother = cother + 1
   end
end

function done(summary, latency, requests)
   local t = {c200 = 0, c401 = 0, c503 = 0, c503ra = 0, cother = 0}
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do
         t[k] = t[k] + (thread:get(k) or 0)
      end
   end
   io.write(string.format("auth-bench: status=200 count=%d\n", t.c200))
   io.write(string.format("auth-bench: status=401 count=%d\n", t.c401))
   io.write(string.format("auth-bench: status=503 count=%d\n", t.c503))
   io.write(string.format("auth-bench: status=other count=%d\n", t.cother))
   io.write(string.format("auth-bench: retry_after_503=%d\n", t.c503ra))
   io.write(string.format("auth-bench: duration_s=%.3f\n", summary.duration / 1e6))
end
