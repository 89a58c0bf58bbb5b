-- Runs the worker processes of the fleet pacing specs and benches
-- (spec/support/fleet_child.lua) and reads what the mock kie.ai saw of them.
--
--   local run = require "spec.support.fleet_run"
--   local r = run.children{ n = 4, mode = "fleet", mock = m.url, redis = srv.url,
--     name = "x", limit = 5, window = 2, start_at = t, count = 4, stop_at = t + 20,
--     dir = "/tmp/...", wrap = function(i, cmd) return cmd end,  -- wrap: child i's command line
--     grace = 10 }                 -- seconds after stop_at a child may take to end
--   r.ok, r.errs (kind -> count), r.stderr (non-empty stderr texts), r.bad (unexpected lines),
--   r.unfinished (children still running at stop_at + grace, then killed)
--   run.on_hosts(net, { [2] = "+2s" })      -- a wrap: child i on host 1 + (i - 1) % #net.hosts
--                                            -- (spec/support/netns.lua), the skewed ones under faketime
--   local times, over = run.arrivals(m)      -- arrival times of the creates counted, 429s
--   run.max_in_window(times, width)          -- the most arrivals in any [t, t + width)
--   run.budget(times, stop, limit, window)   -- share of the create budget used, and the parts
--
-- Plain Lua 5.1 - 5.4 + LuaSocket.

local socket = require "socket"
local procs = require "spec.support.procs"
local util = require "spec.support.util"

local M = {}

local CHILD = "spec/support/fleet_child.lua"
local CREATE = "/api/v1/jobs/createTask"

local runs = 0

-- Reads the lines child `out` printed into r.
local function collect(r, out)
  local err = util.read_file(out .. ".err") or ""
  if err ~= "" then r.stderr[#r.stderr + 1] = err end
  for line in (util.read_file(out .. ".out") or ""):gmatch("[^\n]+") do
    local kind = line:match("^err (%S+)")
    if kind then
      r.errs[kind] = (r.errs[kind] or 0) + 1
    elseif line:match("^ok ") then
      r.ok = r.ok + 1
    else
      r.bad[#r.bad + 1] = line
    end
  end
end

--- Starts o.n children, waits until they ended (or stop_at + grace: then kills them),
-- and returns what they printed (see the top of this file).
function M.children(o)
  runs = runs + 1
  local pids, outs = {}, {}
  for i = 1, o.n do
    outs[i] = ("%s/child%d-%d"):format(o.dir, runs, i)
    local cmd = procs.lua_command(CHILD, { o.mock, o.mode, o.redis, o.name, o.limit, o.window,
      ("%.3f"):format(o.start_at), o.count, ("%.3f"):format(o.stop_at), "p" .. i })
    if o.wrap then cmd = o.wrap(i, cmd) end
    pids[i] = procs.spawn(cmd, outs[i] .. ".out", outs[i] .. ".err")
  end
  if o.during then o.during() end
  local r = { ok = 0, errs = {}, stderr = {}, bad = {}, unfinished = 0 }
  local deadline = o.stop_at + (o.grace or 10)
  for _, pid in ipairs(pids) do
    while procs.alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
    if procs.alive(pid) then
      r.unfinished = r.unfinished + 1
      procs.kill(pid)
    end
  end
  for i = 1, o.n do collect(r, outs[i]) end
  return r
end

--- Is faketime installed?
function M.faketime()
  return (util.run("command -v faketime"))
end

--- A `wrap` for M.children putting child i on host 1 + (i - 1) % #net.hosts of `net`
-- (spec/support/netns.lua), under `faketime -f OFFSET` when skew[host] is an offset
-- ("+2s") and faketime is installed.
function M.on_hosts(net, skew)
  local faketime = skew and next(skew) and M.faketime()
  return function(i, cmd)
    local host = 1 + (i - 1) % #net.hosts
    if faketime and skew[host] then cmd = "faketime -f " .. util.quote(skew[host]) .. " " .. cmd end
    return net:command(host, cmd)
  end
end

--- The arrival times of the creates the mock counted, and how many it answered 429.
function M.arrivals(m)
  local times, over = {}, 0
  for _, r in ipairs(m:requests(CREATE)) do
    if r.fault == "account_limit" then over = over + 1 else times[#times + 1] = r.arrived end
  end
  table.sort(times)
  return times, over
end

--- The largest number of times within any half-open window [t, t + width).
function M.max_in_window(times, width)
  table.sort(times)
  local best, j = 0, 1
  for i = 1, #times do
    while times[i] - times[j] >= width do j = j + 1 end
    if i - j + 1 > best then best = i - j + 1 end
  end
  return best
end

--- Share of the create budget used by sorted arrival `times` (those before `stop`; all
-- when stop is nil): the account lets create number 1 + j * limit arrive j windows after
-- the first at the earliest; how long the fleet took for it instead. Returns the percent,
-- that create's number, the seconds it took and the seconds the account allows (percent
-- nil when there were too few creates to tell).
function M.budget(times, stop, limit, window)
  local before = 0
  for _, t in ipairs(times) do
    if not stop or t < stop then before = before + 1 end
  end
  local j = math.floor((before - 1) / limit)
  if j < 1 then return nil, before, 0, 0 end
  local took = times[1 + j * limit] - times[1]
  return 100 * j * window / took, 1 + j * limit, took, j * window
end

return M
