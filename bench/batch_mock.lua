-- Batch throughput against the mock kie.ai server (issue 4's figure):
--   lua5.4 bench/batch_mock.lua [N=1000] [INFLIGHT=32]
-- N creates with INFLIGHT in flight through kie.new's create_task_async (validation,
-- retry policy, the coroutine path; the client-side rate limiter is off, since its
-- whole point is to hold a real account to 20 creates per 10 s), then the same N as
-- a run_all batch (create + wait until success) with concurrency INFLIGHT.
-- The mock validates every body in nginx-Lua, so this measures client + mock.
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath
local kie = require "kie"
local core = require "kie.core"

local n, inflight = tonumber(arg[1] or "1000"), tonumber(arg[2] or "32")
local m = require("spec.support.mock").start{ api_key = "bench-key", pace = 0.05, credits = 10 * n }
local client = kie.new{ api_key = "bench-key", base_url = m.url,
  rate_limits = { create = false, poll = false } }
local function req(i)
  return { model = "ideogram/character", input = { prompt = "batch item " .. i,
    reference_image_urls = { "https://example.com/ref.png" } } }
end

local started, done, live, failed = 0, 0, 0, 0
local function cb(task) done, live = done + 1, live - 1; if not task then failed = failed + 1 end end
local t0 = core.now()
while done < n do
  while live < inflight and started < n do
    started, live = started + 1, live + 1
    client:create_task_async(req(started), cb)
  end
  client:step(100)
end
local t1 = core.now()
print(string.format("creates: n=%d inflight=%d seconds=%.3f creates_per_s=%.0f failed=%d mock_received=%d",
  n, inflight, t1 - t0, n / (t1 - t0), failed, m:count("/api/v1/jobs/createTask")))

local list = {}
for i = 1, n do list[i] = req(i); list[i].wait = { interval = 0.05, max_interval = 0.1 } end
t0 = core.now()
local results, errs = client:run_all(list, { concurrency = inflight })
t1 = core.now()
local ok = 0
for i = 1, n do if results[i] then ok = ok + 1 end end
print(string.format("run_all: n=%d concurrency=%d seconds=%.3f tasks_per_s=%.1f succeeded=%d errors=%s",
  n, inflight, t1 - t0, n / (t1 - t0), ok, errs and "yes" or "none"))
client:close()
m:stop()
