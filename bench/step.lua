-- How long one client:step(0) takes (a game's per-frame cost) while INFLIGHT
-- transfers are in flight. Run from the repository root:
--   lua5.4 bench/step.lua URL [TOTAL=3000] [INFLIGHT=100] [FRAME_MS=0] [LAYER=client|core]
--                         [BUDGET_MS=default] [GC=on|off]
-- get_task calls (recordInfo with nested param/resultJson, decoded in step) are kept at
-- INFLIGHT: after each frame the finished ones are replaced (outside the timed region).
-- FRAME_MS > 0 sleeps that long between frames, as a frame-capped game loop does, so
-- that more answers arrive per frame. Prints frames=, median_ms=, p99_ms=, max_ms=,
-- per_done_us= (mean step time per finished transfer), perform_us= (core layer: the part
-- of it spent in core:step, i.e. libcurl; the rest is decoding the results), start_us=
-- (mean time of the call that starts a transfer: the request is sent there).
-- BUDGET_MS: passed to step (client layer default: the client's step_budget_ms,
-- 0.2 ms; core layer default: none). GC=off stops Lua's collector (to show its share).
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("BENCH_CPATH") or "./build/lua5.4/?.so") .. ";" .. package.cpath

local bodies = dofile("bench/bodies.lua")
local kie = require "kie"
local core = require "kie.core"

local url = assert(arg[1], "usage: step.lua URL [TOTAL] [INFLIGHT] [FRAME_MS] [LAYER]")
local total = tonumber(arg[2] or "3000")
local inflight = tonumber(arg[3] or "100")
local frame_ms = tonumber(arg[4] or "0")
local layer = arg[5] or "client"
local budget = tonumber(arg[6] or "")
if arg[7] == "off" then collectgarbage("stop") end
local starting = 0 -- time spent in the calls that start transfers
local now = core.now

local times, nt = {}, 0
local perform = 0 -- core layer: time inside core:step (libcurl), the rest is result decoding
local started, done, live = 0, 0, 0
local function fail(msg) io.stderr:write("step: ", msg, "\n") os.exit(1) end

-- the layer's three parts: start one transfer, run one frame, close
local start_one, frame, close
if layer == "client" then
  local client = kie.new{ api_key = bodies.API_KEY, base_url = url,
    rate_limits = { create = false, poll = false } }
  local function cb(info, err)
    if not info or info.resultUrls[1] ~= bodies.RESULT_URL then fail(tostring(err)) end
    done, live = done + 1, live - 1
  end
  start_one = function() client:get_task_async(bodies.TASK_ID, cb) end
  frame = function() client:step(0, budget) end
  close = function() client:close() end
else
  local c = core.new{ api_key = bodies.API_KEY, base_url = url }
  start_one = function() assert(c:get_task_start(bodies.TASK_ID)) end
  frame = function()
    local t0 = now()
    local _, ids = c:step(0, budget)
    perform = perform + (now() - t0)
    if ids then
      for i = 1, #ids do
        local info, err = c:result(ids[i])
        if not info or info.resultUrls[1] ~= bodies.RESULT_URL then fail(tostring(err and err.message)) end
        done, live = done + 1, live - 1
      end
    end
  end
  close = function() c:close() end
end

while done < total do
  local s0 = now()
  while live < inflight and started < total do
    start_one()
    started, live = started + 1, live + 1
  end
  starting = starting + (now() - s0)
  local t0 = now()
  frame()
  nt = nt + 1
  times[nt] = now() - t0
  if frame_ms > 0 then core.sleep(frame_ms / 1000) end
end
close()

local sum = 0
for i = 1, nt do sum = sum + times[i] end
table.sort(times)
local function pct(p) return times[math.max(1, math.min(nt, math.ceil(nt * p)))] end
print(string.format("frames=%d median_ms=%.4f p99_ms=%.4f max_ms=%.4f per_done_us=%.2f perform_us=%.2f start_us=%.2f",
  nt, pct(0.5) * 1e3, pct(0.99) * 1e3, times[nt] * 1e3, sum / total * 1e6, perform / total * 1e6,
  starting / total * 1e6))
