-- make bench-fleet: N worker processes (spec/support/fleet_child.lua) create tasks
-- for FLEET_SECONDS against the mock, which enforces an account-wide sliding window
-- over arrivals (429 over it) after a random latency, pacing through one Redis
-- (FLEET_MODE=fleet) or each alone (FLEET_MODE=local, the control). The workers run on
-- FLEET_HOSTS network namespaces (spec/support/netns.lua; as root; 0: all on 127.0.0.1),
-- with the clocks of hosts 2 and 4 skewed by +2 s and -3 s (faketime, when installed and
-- FLEET_SKEW is not 0). One run per latency of FLEET_LATENCY (seconds, the upper bound of
-- a uniform random latency; 0: none). Prints the 429s and the share of the account's
-- create budget used.
--   FLEET_PROCS=16 FLEET_HOSTS=4 FLEET_SECONDS=120 FLEET_LIMIT=20 FLEET_WINDOW=10
--   FLEET_LATENCY=0,0.3 FLEET_SKEW=1 FLEET_MODE=fleet
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local netns = require "spec.support.netns"
local run = require "spec.support.fleet_run"
local util = require "spec.support.util"
local socket = require "socket"

local function env(name, default) return tonumber(os.getenv(name)) or default end
local n, seconds, hosts = env("FLEET_PROCS", 16), env("FLEET_SECONDS", 120), env("FLEET_HOSTS", 4)
local limit, window = env("FLEET_LIMIT", 20), env("FLEET_WINDOW", 10)
local mode = os.getenv("FLEET_MODE") or "fleet"
local latencies = {}
for l in (os.getenv("FLEET_LATENCY") or "0,0.3"):gmatch("[^,%s]+") do latencies[#latencies + 1] = tonumber(l) end
local SKEW = { [2] = "+2s", [4] = "-3s" }

local net, where, skewed = nil, "127.0.0.1", "no skew"
if hosts > 0 then
  local ok, why = netns.available()
  if ok then
    net = netns.create(hosts)
    where = hosts .. " network namespaces"
  else
    print("bench-fleet: " .. why .. ": all workers on 127.0.0.1")
  end
end
local faketime = net and os.getenv("FLEET_SKEW") ~= "0" and run.faketime()
if faketime then
  skewed = "clocks of hosts 2, 4: +2 s, -3 s"
elseif net and os.getenv("FLEET_SKEW") ~= "0" then
  skewed = "no skew: faketime is not installed"
end

local srv = server.start{ bind = { net and net.address } }
local m = mock.start{ api_key = "sk-fleet-spec", pace = 0, listen = { net and net.address },
  account_limit = { create = { limit = limit, window = window } } }
local dir = util.tmpdir("kie-fleet-bench")

local wrap = net and run.on_hosts(net, faketime and SKEW)
local function bench(latency)
  m:reset()
  m:config{ latency = latency > 0 and { min = 0, max = latency } or false }
  local start = socket.gettime() + 1
  local stop = start + seconds
  local r = run.children{ n = n, mode = mode, mock = net and m:url_at(net.address) or m.url,
    redis = net and srv:url_at(net.address) or srv.url, name = "bench-" .. math.random(1, 1e9),
    limit = limit, window = window, start_at = start, count = 1e9, stop_at = stop, dir = dir, wrap = wrap,
    grace = 10 + math.ceil(n / limit) * window } -- (a worker asking just before its stop, 3 s late
                                                  -- when skewed, waits behind every other one)
  local times, over = run.arrivals(m)
  local pct, nth, took, allowed = run.budget(times, stop, limit, window)
  local errs = {}
  for kind, count in pairs(r.errs) do errs[#errs + 1] = kind .. " " .. count end
  print(("bench-fleet: %s, %d processes on %s (%s), %d s, limit %d / %d s, latency 0-%.0f ms: "
    .. "%d creates (%d answered to the workers), %d responses 429, %s %% of the create budget used "
    .. "(create %d arrived %.2f s after the first; the account allows %d s); errors: %s%s"):format(
    mode, n, where, skewed, seconds, limit, window, latency * 1000, #times, r.ok, over,
    pct and ("%.1f"):format(pct) or "?", nth, took, allowed,
    #errs > 0 and table.concat(errs, ", ") or "none",
    (#r.stderr > 0 or r.unfinished > 0) and (" (%d workers wrote to stderr, %d killed at the end)"):format(
      #r.stderr, r.unfinished) or ""))
  io.stdout:flush()
end

local ok, err = pcall(function()
  for _, latency in ipairs(latencies) do bench(latency) end
end)
m:stop()
srv:close()
if net then net:destroy() end
util.run("rm -rf " .. util.quote(dir))
if not ok then error(err, 0) end
