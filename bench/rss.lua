-- Resident memory over many sequential calls: is anything kept per call?
--   lua5.4 bench/rss.lua URL [CALLS=100000]
-- Alternates create_task and get_task (nested JSON decoded) through kie.new on one
-- client, with Lua's default GC settings, and samples VmRSS (/proc/self/status) after
-- 1k, 10k, 50k and CALLS calls. Prints rss_1k_kib=, rss_end_kib=, growth_kib=, the
-- anonymous part (anon_*: what is ours, not shared-library pages) and the Lua heap
-- (collectgarbage "count") at the same points.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("BENCH_CPATH") or "./build/lua5.4/?.so") .. ";" .. package.cpath

local bodies = dofile("bench/bodies.lua")
local kie = require "kie"

local url = assert(arg[1], "usage: rss.lua URL [CALLS]")
local calls = tonumber(arg[2] or "100000")

-- VmRSS, and RssAnon (our own memory: the rest is shared-library pages)
local function rss_kib()
  local f = io.open("/proc/self/status", "r")
  if not f then return 0, 0 end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0, tonumber(s:match("RssAnon:%s*(%d+)")) or 0
end

local client = kie.new{ api_key = bodies.API_KEY, base_url = url,
  rate_limits = { create = false, poll = false } }
local req = bodies.request()
local marks = { [1000] = true, [10000] = true, [50000] = true, [calls] = true }
local samples = {}
for i = 1, calls do
  if i % 2 == 1 then
    local task, err = client:create_task(req)
    if not task then error("create_task: " .. tostring(err)) end
  else
    local info, err = client:get_task(bodies.TASK_ID)
    if not info then error("get_task: " .. tostring(err)) end
  end
  if marks[i] then
    local rss, anon = rss_kib()
    samples[#samples + 1] = { calls = i, rss = rss, anon = anon, heap = collectgarbage("count") }
  end
end
client:close()
local first, last = samples[1], samples[#samples]
for _, s in ipairs(samples) do
  io.stderr:write(string.format("rss: after %d calls: VmRSS %d KiB (RssAnon %d KiB), Lua heap %.0f KiB\n",
    s.calls, s.rss, s.anon, s.heap))
end
print(string.format("rss_1k_kib=%d rss_end_kib=%d growth_kib=%d anon_1k_kib=%d anon_end_kib=%d "
  .. "heap_1k_kib=%.0f heap_end_kib=%.0f calls=%d", first.rss, last.rss, last.rss - first.rss,
  first.anon, last.anon, first.heap, last.heap, calls))
