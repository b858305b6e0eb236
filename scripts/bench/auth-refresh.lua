-- auth-refresh.lua: wrk script for scripts/bench/auth. POST /v1/auth/refresh with a rotating
-- pool of valid refresh tokens. Each refresh token can be used once (the answer carries its
-- successor; presenting a used one again revokes the session), so every wrk thread keeps its
-- own FIFO of tokens: init() loads its share of AUTH_BENCH_TOKENS (a file, one token per line,
-- from logins done beforehand; line i goes to thread i mod AUTH_BENCH_THREADS), request() takes
-- the oldest, response() appends the new "refresh_token" of a 200 answer. A token is only ever
-- in one place (the queue or one request in flight), so no two refreshes of a session overlap:
-- every 401 means the chain broke. Keep at least two tokens per connection.
-- Prints in done():
--   auth-bench: status=200 count=N   (and 401, 503, other)
--   auth-bench: pool_empty=N         (requests sent with no token left: must be 0)
--   auth-bench: no_token_in_200=N    (200 answers whose body had no refresh_token: must be 0)
--   auth-bench: duration_s=S
-- When AUTH_BENCH_TOKENS_OUT is set, done() writes the tokens left in the queues there (those of
-- requests still in flight when wrk stopped are lost), for a further run.
local threads = {}
local nthreads = 0

function setup(thread)
   thread:set("id", nthreads)
   nthreads = nthreads + 1
   table.insert(threads, thread)
end

function init(args)
   local file = os.getenv("AUTH_BENCH_TOKENS")
   local every = tonumber(os.getenv("AUTH_BENCH_THREADS") or "1")
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   queue, head, tail = {}, 1, 0
   local i = 0
   for line in io.lines(file) do
      if line ~= "" then
         if i % every == (id or 0) then
            tail = tail + 1
            queue[tail] = line
         end
         i = i + 1
      end
   end
   c200, c401, c503, cother, pool_empty, no_token = 0, 0, 0, 0, 0, 0
end

function request()
   local token
   if head <= tail then
      token = queue[head]
      queue[head] = nil
      head = head + 1
   else
      pool_empty = pool_empty + 1
      token = "pool-empty" -- not 43 characters: answered 401 without a store lookup
   end
   return wrk.format("POST", "/v1/auth/refresh", nil, '{"refresh_token":"' .. token .. '"}')
end

function response(status, headers, body)
   if status == 200 then
      c200 = c200 + 1
      local t = body:match('"refresh_token"%s*:%s*"([^"]+)"')
      if t then
         tail = tail + 1
         queue[tail] = t
      else
         no_token = no_token + 1
      end
   elseif status == 401 then
      c401 = c401 + 1
   elseif status == 503 then
      c503 = c503 + 1 -- the token is lost for this run (we cannot tell which one it was)
   else
      cother = cother + 1
   end
end

function done(summary, latency, requests)
   local t = {c200 = 0, c401 = 0, c503 = 0, cother = 0, pool_empty = 0, no_token = 0}
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do
         t[k] = t[k] + (thread:get(k) or 0)
      end
   end
   io.write(string.format("auth-bench: status=200 count=%d\n", t.c200))
   io.write(string.format("auth-bench: status=401 count=%d\n", t.c401))
   io.write(string.format("auth-bench: status=503 count=%d\n", t.c503))
   io.write(string.format("auth-bench: status=other count=%d\n", t.cother))
   io.write(string.format("auth-bench: pool_empty=%d\n", t.pool_empty))
   io.write(string.format("auth-bench: no_token_in_200=%d\n", t.no_token))
   io.write(string.format("auth-bench: duration_s=%.3f\n", summary.duration / 1e6))
   local out = os.getenv("AUTH_BENCH_TOKENS_OUT")
   if out and out ~= "" then
      local f = assert(io.open(out, "w"))
      local left = 0
      for _, thread in ipairs(threads) do
         local q, h, tl = thread:get("queue"), thread:get("head"), thread:get("tail")
         for i = h, tl do
            if q[i] then
               f:write(q[i], "\n")
               left = left + 1
            end
         end
      end
      f:close()
      io.write(string.format("auth-bench: tokens_left=%d\n", left))
   end
end
