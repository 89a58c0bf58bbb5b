-- make bench-fleet: N worker processes (spec/support/fleet_child.lua) create tasks
-- for FLEET_SECONDS against the mock, which enforces an account-wide sliding window
-- over arrivals (429 over it) after a random latency, pacing through one Redis
-- (FLEET_MODE=fleet) or each alone (FLEET_MODE=local, the control). Prints the
-- 429s and the share of the account's create budget used. 127.0.0.1 only.
--   FLEET_PROCS=8 FLEET_SECONDS=60 FLEET_LIMIT=20 FLEET_WINDOW=10 FLEET_LATENCY=0.3
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local util = require "spec.support.util"
local socket = require "socket"

local function env(name, default) return tonumber(os.getenv(name)) or default end
local n, seconds = env("FLEET_PROCS", 8), env("FLEET_SECONDS", 60)
local limit, window, latency = env("FLEET_LIMIT", 20), env("FLEET_WINDOW", 10), env("FLEET_LATENCY", 0.3)
local mode = os.getenv("FLEET_MODE") or "fleet"

local srv = server.start()
local m = mock.start{ api_key = "sk-fleet-bench", pace = 0,
  account_limit = { create = { limit = limit, window = window } },
  latency = latency > 0 and { min = 0, max = latency } or false }
local dir = util.tmpdir("kie-fleet-bench")
local start = socket.gettime() + 1
local stop = start + seconds
local pids = {}
for i = 1, n do
  local cmd = procs.lua_command("spec/support/fleet_child.lua", { m.url, mode, srv.url, "bench", limit, window,
    ("%.3f"):format(start), 1e9, ("%.3f"):format(stop), "p" .. i })
  pids[i] = procs.spawn(cmd, dir .. "/" .. i .. ".out", dir .. "/" .. i .. ".err")
end
for _, pid in ipairs(pids) do
  while procs.alive(pid) do socket.sleep(0.1) end
end
local times, over = {}, 0
for _, r in ipairs(m:requests("/api/v1/jobs/createTask")) do
  if r.fault == "account_limit" then over = over + 1 else times[#times + 1] = r.arrived end
end
table.sort(times)
-- budget used: the account lets create number 1 + j * limit arrive j windows after the
-- first at the earliest; how long the fleet took for it instead (before the end of the run)
local before = 0
for _, t in ipairs(times) do
  if t < stop then before = before + 1 end
end
local j = math.floor((before - 1) / limit)
local took = j > 0 and times[1 + j * limit] - times[1] or 0
if took <= 0 then j, took = 0, 1 end -- too short a run to tell
print(("bench-fleet: %s, %d processes, %d s, limit %d / %d s, latency 0-%.0f ms: %d creates, "
  .. "%d responses 429, %.1f %% of the create budget used (create %d arrived %.2f s after the "
  .. "first; the account allows %d s)"):format(mode, n, seconds, limit, window, latency * 1000, #times,
  over, 100 * j * window / took, 1 + j * limit, took, j * window))
m:stop()
srv:close()
util.run("rm -rf " .. util.quote(dir))
