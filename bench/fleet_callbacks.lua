-- make bench-fleet-callbacks: waits woken by callbacks across processes (127.0.0.1).
-- The mock kie.ai posts its signed callbacks to a receiver process
-- (spec/support/wake_receiver.lua) that calls client:deliver; worker processes
-- (spec/support/wake_runner.lua) create tasks with that callBackUrl and wait on
-- them, all on one Redis (fleet), reads paced by the fleet's shared budget
-- (10 per s, kie.ai's).
--
-- 1. latency: LAT_TASKS tasks started at LAT_RATE per s over LAT_PROCS workers;
--    prints the time from the receiver's deliver() call to the wait's return
--    in the other process (p50, p99, max).
-- 2. load: LOAD_TASKS tasks in flight at once over LOAD_PROCS workers, LOAD_DROP of
--    the callbacks lost; prints the most status reads kie.ai saw in any 1 s, the
--    429s, the tasks finished, and the reads per task.
-- The mock drops LOAD_DROP of its callbacks on purpose; a burst of 1000 also loses
-- some the mock's nginx cannot send (its timer and connection limits): the line
-- counts what arrived at the receiver.
--   LAT_TASKS=200 LAT_RATE=5 LAT_PROCS=2 LOAD_TASKS=1000 LOAD_PROCS=4 LOAD_DROP=0.1 PACE=1
--   BENCH_PARTS=latency,load
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local util = require "spec.support.util"
local socket = require "socket"

local function env(name, default) return tonumber(os.getenv(name)) or default end
local parts = os.getenv("BENCH_PARTS") or "latency,load"
local HMAC = "bench-hmac-key"
local INFO = "/api/v1/jobs/recordInfo"

local srv = server.start()
local m = mock.start{ api_key = "sk-wake-spec", pace = env("PACE", 1), hmac_key = HMAC, credits = 1e6,
  account_limit = { poll = { limit = 10, window = 1 } } }
local dir = util.tmpdir("kie-fleet-cb-bench")
local runs = 0

local function lines(path)
  local out = {}
  for line in (procs.read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.max(1, math.ceil(p * #sorted))]
end

-- Runs `tasks` tasks over `nprocs` workers (each started at `rate` / nprocs per s)
-- with a fresh fleet name; returns the receiver's and the workers' lines.
local function run(tasks, nprocs, rate, timeout)
  runs = runs + 1
  local name = "bench" .. runs
  local rout = dir .. "/recv" .. runs .. ".out"
  local rpid = procs.spawn(procs.lua_command("spec/support/wake_receiver.lua", { srv.url, name, HMAC }),
    rout, dir .. "/recv" .. runs .. ".err")
  local port = assert(procs.wait_for(rout, "port (%d+)", 10), "receiver did not start")
  local cb_url = "http://127.0.0.1:" .. port .. "/kie-callback"
  -- a fleet Redis has never seen counts its read window as full for one window:
  -- open it first (one read) so that the figures are those of a running fleet ...
  local kie = require "kie"
  local c = kie.new{ api_key = "sk-wake-spec", base_url = m.url, fleet = { redis = srv.url, name = name },
    rate_limits = { create = false, poll = { limit = 10, window = 1 } } }
  c:get_task("task_warm_up")
  -- ... and one callback delivered: a fleet that takes callbacks (its waits poll
  -- only once a task's callback is late)
  local callback = require "kie.callback"
  assert(c:deliver('{"code":200,"msg":"ok","data":{"taskId":"task_warm_up","state":"success"}}',
    callback.sign(HMAC, "task_warm_up", os.time()), { hmac_key = HMAC }))
  c:close()
  socket.sleep(1.1)
  local pids, outs = {}, {}
  for i = 1, nprocs do
    local count = math.floor(tasks / nprocs) + (i <= tasks % nprocs and 1 or 0)
    outs[i] = dir .. "/w" .. runs .. "_" .. i .. ".out"
    pids[i] = procs.spawn(procs.lua_command("spec/support/wake_runner.lua", { m.url, srv.url, name, cb_url,
      count, rate / nprocs, timeout, "w" .. i }), outs[i], dir .. "/w" .. runs .. "_" .. i .. ".err")
  end
  for _, pid in ipairs(pids) do
    while procs.alive(pid) do socket.sleep(0.1) end
  end
  procs.kill(rpid)
  local done = {}
  for _, o in ipairs(outs) do
    for _, l in ipairs(lines(o)) do
      local id, state, t = l:match("^done (%S+) (%S+) (%S+)$")
      if id then done[#done + 1] = { id = id, state = state, at = tonumber(t) } end
    end
  end
  local delivered = {}
  for _, l in ipairs(lines(rout)) do
    local id, t0 = l:match("^delivered (%S+) (%S+)")
    if id then delivered[id] = tonumber(t0) end
  end
  return done, delivered
end

if parts:find("latency") then
  m:reset()
  local tasks, rate, nprocs = env("LAT_TASKS", 200), env("LAT_RATE", 5), env("LAT_PROCS", 2)
  local done, delivered = run(tasks, nprocs, rate, 120)
  local lat, ok = {}, 0
  for _, d in ipairs(done) do
    if d.state == "success" then ok = ok + 1 end
    if delivered[d.id] then lat[#lat + 1] = (d.at - delivered[d.id]) * 1000 end
  end
  if os.getenv("LAT_SHOW") then print(table.concat(lat, " ")) end
  table.sort(lat)
  print(("bench-fleet-callbacks latency: %d tasks (%d per s, %d worker processes, callbacks to a receiver "
    .. "process): %d succeeded, %d woken by a callback; deliver() to wait return in another process: "
    .. "p50 %.1f ms, p99 %.1f ms, max %.1f ms"):format(tasks, rate, nprocs, ok, #lat, percentile(lat, 0.5),
    percentile(lat, 0.99), lat[#lat] or 0))
end

if parts:find("load") then
  m:reset()
  local drop = env("LOAD_DROP", 0.1)
  m:config{ callback_drop_rate = drop }
  local tasks, nprocs = env("LOAD_TASKS", 1000), env("LOAD_PROCS", 4)
  local t0 = socket.gettime()
  local done, delivered = run(tasks, nprocs, 0, 600)
  local took = socket.gettime() - t0
  m:config{ callback_drop_rate = 0 }
  local ok, other = 0, {}
  for _, d in ipairs(done) do
    if d.state == "success" then ok = ok + 1 else other[d.state] = (other[d.state] or 0) + 1 end
  end
  for state, k in pairs(other) do print(("  %d tasks ended %s"):format(k, state)) end
  if #done < tasks then print(("  %d tasks never reported (a worker died?)"):format(tasks - #done)) end
  local times, over = {}, 0
  for _, r in ipairs(m:requests(INFO)) do
    if r.fault == "account_limit" then over = over + 1 end
    times[#times + 1] = r.arrived
  end
  table.sort(times)
  local most, j = 0, 1
  for i = 1, #times do
    while times[i] - times[j] >= 1 do j = j + 1 end
    if i - j + 1 > most then most = i - j + 1 end
  end
  -- (the mock's own delivery list may lose entries at this size: its shared dict evicts)
  local arrived = 0
  for _ in pairs(delivered) do arrived = arrived + 1 end
  print(("bench-fleet-callbacks load: %d tasks in flight over %d worker processes, %d callbacks lost "
    .. "(%d arrived at the receiver): %d finished (success), %d status reads (%.2f per task; 1 of them "
    .. "the fleet's warm-up), at most %d in any 1 s, %d responses 429, %.0f s"):format(tasks, nprocs,
    tasks - arrived, arrived, ok, #times, #times / tasks, most, over, took))
end

m:stop()
srv:close()
if os.getenv("BENCH_KEEP") then print("outputs kept in " .. dir) else util.run("rm -rf " .. util.quote(dir)) end
