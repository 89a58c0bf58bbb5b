-- The kill -9 proof of the fleet journal (issue 11): N worker processes
-- (spec/support/fjournal_child.lua) create and wait tasks against the mock with the
-- fleet journal in one Redis; every few seconds (seeded) the harness kill -9s a
-- random worker and starts a replacement, which claims what the dead left through
-- resume(). At the end a sweeper resolves the unresolved intents whose create did
-- reach kie.ai, as `client:deliver` would from their callback (kie_intent in the
-- callBackUrl the mock echoes), claims what is left and waits on it. Then `check`
-- reads the mock's create log and callbacks and the fleet journal in Redis.
--
--   local kill = require "spec.support.fleet_kill"
--   local figures, violations = kill.run{ procs = 4, seconds = 10, kill_every = 1.5,
--     seed = 1, lease = 1 }
--   kill.report(figures)  -> one line
--
-- Plain Lua 5.1 - 5.4 + LuaSocket, kie (fleet) built.
local kie = require "kie"
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local util = require "spec.support.util"
local socket = require "socket"

local M = {}

local CREATE = "/api/v1/jobs/createTask"
local KEY = "sk-fleet-kill"

--- The invariants, from what the mock saw and what the fleet journal holds.
-- `creates`: the bodies (JSON strings) of the creates the mock took; `tasks`:
-- task id -> the callBackUrl the mock holds for it (every task it made);
-- `journal`: task id -> the record the fleet journal holds (a table with
-- `state` once finished); `unresolved`: intent ids still unresolved. Returns
-- the list of violations (strings), empty when every invariant holds:
--  * no create sent twice (no prompt in two bodies);
--  * no task id lost: every task of the mock is in the journal and finished;
--  * no unresolved intent names a task the mock made (it would be a lost id).
function M.check(creates, tasks, journal, unresolved)
  local out, seen = {}, {}
  for _, body in ipairs(creates) do
    local req = mock.json.decode(body)
    local prompt = type(req) == "table" and type(req.input) == "table" and req.input.prompt
    if not prompt then
      out[#out + 1] = "a create the mock took has no prompt"
    elseif seen[prompt] then
      out[#out + 1] = "create sent twice: " .. prompt
    end
    if prompt then seen[prompt] = true end
  end
  local by_intent = {}
  for id, url in pairs(tasks) do
    local rec = journal[id]
    if not rec then out[#out + 1] = "task lost (not in the fleet journal): " .. id
    elseif not rec.state then out[#out + 1] = "task never finished: " .. id end
    local intent = type(url) == "string" and url:match("[?&]kie_intent=([^&#]+)")
    if intent then by_intent[intent] = id end
  end
  for _, intent in ipairs(unresolved) do
    if by_intent[intent] then
      out[#out + 1] = "intent " .. intent .. " unresolved, yet task " .. by_intent[intent] .. " exists"
    end
  end
  table.sort(out)
  return out
end

--- The fleet journal's records in Redis: task id -> record, the unresolved intent
-- ids, and how many tasks are open.
function M.read_journal(url, name)
  local conn = assert(require("kie.redis").connect(url, { timeout = 5, connect_timeout = 5 }))
  local base = "{kie:fleet:" .. name .. ":journal}:"
  local flat = assert(conn:call("HGETALL", base .. "tasks"))
  local journal = {}
  for i = 1, #flat, 2 do journal[flat[i]] = mock.json.decode(flat[i + 1]) end
  local unresolved = assert(conn:call("ZRANGE", base .. "unresolved", 0, -1))
  local open = assert(conn:call("ZCARD", base .. "open"))
  conn:close()
  return journal, unresolved, open
end

--- The mock's creates (bodies) and tasks (id -> callBackUrl, and how many), once
-- every task's callback was delivered (or `timeout` passed).
function M.read_mock(m, timeout)
  local creates = {}
  for _, r in ipairs(m:requests(CREATE)) do
    if not r.fault or r.fault == "delay" then creates[#creates + 1] = r.body end -- (a delay creates)
  end
  local tasks, n
  local deadline = socket.gettime() + timeout
  repeat
    tasks, n = {}, 0
    for _, d in ipairs(m:deliveries()) do
      if not tasks[d.taskId] then n = n + 1 end
      tasks[d.taskId] = d.url
    end
    if n >= #creates then break end
    socket.sleep(0.1)
  until socket.gettime() > deadline
  return creates, tasks, n
end

-- Counts the event lines of every worker's output.
local function tally(dir, spawned)
  local t = { created = 0, claimed = 0, unknown = 0, finished = 0, err = 0 }
  for i = 1, spawned do
    for line in (util.read_file(dir .. "/" .. i .. ".out") or ""):gmatch("[^\n]+") do
      local ev = line:match("^(%a+)")
      if t[ev] then t[ev] = t[ev] + 1 end
    end
  end
  return t
end

-- As `client:deliver` does for a callback that names an unresolved intent: the
-- intents of `list` whose create made a task (by the mock's callbacks) are resolved.
local function resolve_by_callbacks(sweeper, list, tasks)
  local by_intent, n = {}, 0
  for id, url in pairs(tasks) do
    local intent = type(url) == "string" and url:match("[?&]kie_intent=([^&#]+)")
    if intent then by_intent[intent] = id end
  end
  for _, e in ipairs(list) do
    if e.unknown and by_intent[e.intent] then
      assert(sweeper._journal:created(by_intent[e.intent], e.model, e.intent))
      n = n + 1
    end
  end
  return n
end

--- Runs the proof; returns the figures and the violations (see `check`).
-- opts: procs, seconds, kill_every (mean seconds between kills), seed, lease,
-- pace (mock seconds per state), latency (mock max seconds per request).
function M.run(opts)
  local n, seconds, every = opts.procs or 4, opts.seconds or 10, opts.kill_every or 1.5
  local seed, lease = opts.seed or 1, opts.lease or 1
  math.randomseed(seed)
  local srv = server.start()
  local m = mock.start{ api_key = KEY, pace = opts.pace or 0.05,
    latency = { min = 0, max = opts.latency or 0.4 } }
  local dir = util.tmpdir("kie-fleet-kill")
  local name = "kill" .. seed
  local t0 = socket.gettime()
  local stop = t0 + seconds
  local spawned, kills, live = 0, 0, {}
  local function start(slot)
    spawned = spawned + 1
    local cmd = procs.lua_command("spec/support/fjournal_child.lua", { m.url, srv.url, name,
      "w" .. slot .. "g" .. spawned, tostring(seed * 1000 + spawned), ("%.3f"):format(stop),
      tostring(lease), tostring(lease) })
    live[slot] = procs.spawn(cmd, dir .. "/" .. spawned .. ".out", dir .. "/" .. spawned .. ".err")
  end
  for slot = 1, n do start(slot) end
  local next_kill = t0 + every * (0.5 + math.random())
  while socket.gettime() < stop - 0.5 do
    if socket.gettime() >= next_kill then
      local slot = math.random(1, n)
      procs.kill(live[slot], "KILL")
      kills = kills + 1
      start(slot)
      next_kill = socket.gettime() + every * (0.5 + math.random())
    end
    socket.sleep(0.02)
  end
  for slot = 1, n do
    local deadline = socket.gettime() + 40
    while procs.alive(live[slot]) and socket.gettime() < deadline do socket.sleep(0.05) end
    if procs.alive(live[slot]) then procs.kill(live[slot], "KILL") end
  end
  local ran = socket.gettime() - t0
  -- the sweep: leases of the last dead lapse, then what a resume() + deliver finds
  socket.sleep(lease + 0.2)
  local creates, tasks, ntasks = M.read_mock(m, 10)
  local sweeper = kie.new{ api_key = KEY, base_url = m.url, timeout = 5,
    rate_limits = { create = false, poll = false },
    fleet = { redis = srv.url, name = name, timeout = 2, lease = 30 } }
  local resolved = resolve_by_callbacks(sweeper, assert(sweeper:resume()), tasks)
  local swept, unknown = 0, 0
  for _, e in ipairs(assert(sweeper:resume())) do
    if e.taskId then
      assert(sweeper:wait(e.taskId, { timeout = 30, interval = 0.05 }))
      swept = swept + 1
    else
      unknown = unknown + 1
    end
  end
  sweeper:close()
  local journal, unresolved, open = M.read_journal(srv.url, name)
  local violations = M.check(creates, tasks, journal, unresolved)
  local t = tally(dir, spawned)
  local figures = { seed = seed, procs = n, seconds = ran, kills = kills, spawned = spawned,
    creates = #creates, tasks = ntasks, created_lines = t.created, claimed = t.claimed,
    unknown_seen = t.unknown, finished_lines = t.finished, errors = t.err,
    resolved_by_callback = resolved, swept = swept, intents_without_task = unknown,
    open_left = open, violations = #violations }
  m:stop()
  srv:close()
  util.run("rm -rf " .. util.quote(dir))
  return figures, violations
end

--- One line of figures.
function M.report(f)
  return ("fleet kill -9: seed %d, %d workers, %.1f s, %d killed (%d started): %d creates, %d tasks; "
    .. "claimed by resume() %d, intents resolved by callback %d, finished by the sweep %d, "
    .. "intents with no task %d, open left %d; worker errors %d; violations %d (creates twice, lost, "
    .. "unfinished)"):format(f.seed, f.procs, f.seconds, f.kills, f.spawned, f.creates, f.tasks,
    f.claimed, f.resolved_by_callback, f.swept, f.intents_without_task, f.open_left, f.errors,
    f.violations)
end

return M
