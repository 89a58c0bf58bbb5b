-- Soak: SOAK_CALLS mixed calls (create_task, get_task, credits, download_url) through
-- kie.new against the mock kie.ai server, with faults injected at random. Run from the
-- repository root (bench/soak.sh runs it under ASan + UBSan):
--   SOAK_CALLS=100000 lua5.4 bench/soak.lua
-- Checks, and exits 1 when one fails:
--  * every call ends in a result of the right shape or an error table of a known kind
--    (a call that raises is a failure);
--  * no create is ever paid twice: with charged = credits the mock took,
--    ok_creates <= charged <= ok_creates + unknown_outcome;
--  * memory stays flat: the peak VmRSS of the second half of the run may exceed the
--    peak between the 25 % and 50 % marks by at most SOAK_RSS_SLACK_KIB (default 4096),
--    and the Lua heap after a full collection stays under 4 MiB.
-- Environment: SOAK_CALLS (100000), SOAK_SEED (time), SOAK_CPATH (./build/lua5.4/?.so),
-- SOAK_RSS_SLACK_KIB, SOAK_FAULT_EVERY (inject a fault batch every N calls, 40).
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = (os.getenv("SOAK_CPATH") or "./build/lua5.4/?.so") .. ";" .. package.cpath

local kie = require "kie"
local errors = require "kie.errors"
local core = require "kie.core"
local mock = require "spec.support.mock"

local CALLS = tonumber(os.getenv("SOAK_CALLS") or "100000")
local SEED = tonumber(os.getenv("SOAK_SEED") or "") or os.time()
local RSS_SLACK = tonumber(os.getenv("SOAK_RSS_SLACK_KIB") or "4096")
local FAULT_EVERY = tonumber(os.getenv("SOAK_FAULT_EVERY") or "40")
local RESET_EVERY = 2000 -- the mock keeps everything in shared dicts: clear them now and then
local KEY = "sk-soak-5f1e0a7c"
local CREDITS = 1e9
math.randomseed(SEED)

local function rss_kib()
  local f = io.open("/proc/self/status", "r")
  if not f then return 0 end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

local m = mock.start{ api_key = KEY, pace = 0.01, credits = CREDITS, cost = 1 }
local client = kie.new{
  api_key = KEY, base_url = m.url, timeout = 2, connect_timeout = 2, max_retries = 2,
  max_response_bytes = 1024 * 1024,
  rate_limits = { create = false, poll = false },
  retry = { base = 0.001, cap = 0.005, max_retry_after = 1, rate_limit_floor = 0.001 },
}

local REQUESTS = {
  { model = "ideogram/character", input = { prompt = "soak", reference_image_urls = { "https://example.com/r.png" },
    num_images = "1" } },
  { model = "ideogram/v3-reframe", input = { image_url = "https://example.com/a.png", image_size = "square_hd" } },
  { model = "ideogram/character-remix", input = { prompt = "remix", image_url = "https://example.com/a.png",
    reference_image_urls = { "https://example.com/r.png" }, strength = 0.5 } },
}

-- fault kinds per endpoint (the mock's faults.lua); delays stay under the 2 s timeout
-- except the rare "slow" one
local FAULTS = {
  { fault = "drop_before_body" }, { fault = "drop_after_body" }, { fault = "html_502" },
  { fault = "code_in_200", code = 500 }, { fault = "code_in_200", code = 402 },
  { fault = "status", status = 500 }, { fault = "status", status = 404 }, { fault = "status", status = 433 },
  { fault = "bad_json" }, { fault = "truncated_json" }, { fault = "partial_body" },
  { fault = "rate_limit" }, { fault = "rate_limit", retry_after = 0 }, { fault = "maintenance" },
  { fault = "wrong_shape" }, { fault = "delay", seconds = 0.02 },
  { fault = "huge", bytes = 2 * 1024 * 1024 },
  -- (on recordInfo only: on createTask it would be a success the mock never charged)
  { fault = "raw", status = 200, content_type = "application/json", path = "/api/v1/jobs/recordInfo",
    body = '{"code":200,"msg":"success","data":{"taskId":"t","state":"waiting","param":"","resultJson":""}}' },
  { fault = "raw", status = 503, content_type = "text/plain", body = "upstream gone" },
}
local SLOW = { fault = "delay", seconds = 3 } -- a timeout: create -> unknown_outcome
local PATHS = { "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo", "/api/v1/chat/credit",
  "/api/v1/common/download-url", nil }

local tally = {}      -- op -> outcome -> count
local failures = {}
local ok_creates, unknown = 0, 0
local ids, nids = {}, 0
local result_url
local samples = {}
local faults_injected = 0

local function count(op, outcome)
  tally[op] = tally[op] or {}
  tally[op][outcome] = (tally[op][outcome] or 0) + 1
end

local function fail(i, op, msg)
  if #failures < 20 then failures[#failures + 1] = string.format("call %d (%s): %s", i, op, msg) end
end

local function check_err(i, op, err)
  if type(err) ~= "table" then return fail(i, op, "error is a " .. type(err)) end
  if type(err.kind) ~= "string" or not errors.kinds[err.kind] then
    return fail(i, op, "unknown kind " .. tostring(err.kind))
  end
  if type(err.message) ~= "string" or type(err.retryable) ~= "boolean" then
    return fail(i, op, "error without message/retryable: " .. tostring(err))
  end
  if tostring(err):find(KEY, 1, true) then return fail(i, op, "the key leaked: " .. tostring(err)) end
  count(op, err.kind)
  if op == "create" and err.kind == "unknown_outcome" then unknown = unknown + 1 end
end

local function inject()
  local n = math.random(1, 3)
  for _ = 1, n do
    local f = {}
    for k, v in pairs(FAULTS[math.random(#FAULTS)]) do f[k] = v end
    if math.random(1000) == 1 then f = { fault = SLOW.fault, seconds = SLOW.seconds } end
    if not f.path then f.path = PATHS[math.random(#PATHS + 1)] end -- nil: any request
    f.times = math.random(1, 3)
    m:fault(f)
    faults_injected = faults_injected + 1
  end
end

local t0 = core.now()
for i = 1, CALLS do
  if i % RESET_EVERY == 0 then
    m:reset() -- log, faults, tasks: credits stay
    nids = 0
  end
  if i % FAULT_EVERY == 0 then inject() end
  local r = math.random()
  local op, ok, res, err
  if r < 0.25 or nids == 0 then
    op = "create"
    ok, res, err = pcall(client.create_task, client, REQUESTS[math.random(#REQUESTS)])
    if ok and res then
      if type(res.taskId) ~= "string" then fail(i, op, "no taskId") else
        ok_creates = ok_creates + 1
        nids = nids + 1
        ids[nids] = res.taskId
      end
    end
  elseif r < 0.75 then
    op = "get"
    ok, res, err = pcall(client.get_task, client, ids[math.random(nids)])
    if ok and res then
      if type(res.resultUrls) ~= "table" then fail(i, op, "no resultUrls")
      elseif res.resultUrls[1] then result_url = res.resultUrls[1] end
    end
  elseif r < 0.875 then
    op = "credits"
    ok, res, err = pcall(client.credits, client)
    if ok and res and type(res) ~= "number" then fail(i, op, "credits not a number") end
  else
    op = "download_url"
    ok, res, err = pcall(client.download_url, client, result_url or (m.url .. "/files/none.png"))
    if ok and res and type(res) ~= "string" then fail(i, op, "url not a string") end
  end
  if not ok then
    fail(i, op, "raised: " .. tostring(res))
  elseif res == nil then
    check_err(i, op, err)
  else
    count(op, "ok")
  end
  if i % math.max(1, math.floor(CALLS / 20)) == 0 or i == CALLS then
    samples[#samples + 1] = { calls = i, rss = rss_kib(), heap = collectgarbage("count") }
  end
end
local elapsed = core.now() - t0

-- every fault consumed or not, the mock's balance tells what was paid
m:reset()
local credits_left = m:config().credits
local charged = CREDITS - credits_left
client:close()
m:stop()

collectgarbage()
collectgarbage()

print(string.format("soak: %d calls in %.1f s (%.0f calls/s), seed %d, %d fault specs injected",
  CALLS, elapsed, CALLS / elapsed, SEED, faults_injected))
local ops = {}
for op in pairs(tally) do ops[#ops + 1] = op end
table.sort(ops)
for _, op in ipairs(ops) do
  local parts = {}
  for k, v in pairs(tally[op]) do parts[#parts + 1] = k .. "=" .. v end
  table.sort(parts)
  print("  " .. op .. ": " .. table.concat(parts, " "))
end
print(string.format("  creates: ok %d, unknown_outcome %d, charged by the mock %d", ok_creates, unknown, charged))
if charged < ok_creates then failures[#failures + 1] = "the mock charged fewer creates than succeeded" end
if charged > ok_creates + unknown then
  failures[#failures + 1] = string.format("DUPLICATE CREATES: charged %d > ok %d + unknown_outcome %d",
    charged, ok_creates, unknown)
end
-- flat: the peak of the second half against the peak from 25 % to 50 % (single
-- samples swing by several MiB with ASan's quarantine and the big fault bodies)
local peak_early, peak_late = 0, 0
for _, s in ipairs(samples) do
  print(string.format("  after %6d calls: VmRSS %6d KiB, Lua heap %6.0f KiB", s.calls, s.rss, s.heap))
  if s.calls >= CALLS / 4 and s.calls <= CALLS / 2 then peak_early = math.max(peak_early, s.rss) end
  if s.calls > CALLS / 2 then peak_late = math.max(peak_late, s.rss) end
end
if peak_early > 0 and peak_late > 0 then
  print(string.format("  RSS peak 25-50 %%: %d KiB, 50-100 %%: %d KiB: growth %d KiB (slack %d)", peak_early,
    peak_late, peak_late - peak_early, RSS_SLACK))
  if peak_late - peak_early > RSS_SLACK then
    failures[#failures + 1] = "RSS grew by " .. (peak_late - peak_early) .. " KiB"
  end
end
print(string.format("  Lua heap after full collection: %.0f KiB", collectgarbage("count")))
if collectgarbage("count") > 4096 then failures[#failures + 1] = "Lua heap above 4 MiB after collection" end
if #failures > 0 then
  for _, f in ipairs(failures) do print("FAIL " .. f) end
  print("soak: FAILED")
  os.exit(1)
end
print("soak: ok")
