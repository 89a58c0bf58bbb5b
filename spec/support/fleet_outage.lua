-- The Redis outage proof of fleet mode (issue 11): N worker processes
-- (spec/support/outage_child.lua) create and wait tasks at the mock's account limits,
-- paced by the fleet and journaled in Redis and in a file each, while Redis is (from
-- when a create is in flight, its answer held back by the mock so that it comes meanwhile)
--   "restart": killed (-9) for `outage` seconds and started again with its data
--              (an AOF fsync'd at every write),
--   "empty":   killed for `outage` seconds and started again empty (the limiter
--              counts the window as full for one window),
--   "freeze":  SIGSTOPped for `outage` seconds (connections open, no answer), then
--              SIGCONTinued,
--   "cut":     reached through a forwarder (spec/support/forward.lua) that is killed
--              for `outage` seconds (connections closed, refused) while Redis runs on.
-- Then a later client resumes and waits what is left. `check` is fleet_kill's (no
-- create twice, no task id lost or unfinished: a task counts as finished when a
-- worker saw it end or the fleet journal holds its state), plus: no 429 from the
-- mock, nothing sent during the outage (nor, after "empty", in the first window),
-- workers saw errors of kind `fleet` only and only around the outage (their waits
-- may ride it out), a create tried meanwhile fails at once with kind `fleet`, no intent
-- left unresolved (nothing died, the mock answered every create), creates again
-- within a window (and a few seconds) after Redis is back.
--
--   local outage = require "spec.support.fleet_outage"
--   local figures, violations = outage.run{ kind = "freeze", seed = 1 }
--   outage.report(figures)  -> one line
-- FLEET_OUTAGE_KEEP=1 keeps the workers' output (their directory in /tmp).
--
-- Plain Lua 5.1 - 5.4 + LuaSocket, kie (fleet) built. 127.0.0.1 only.
local kie = require "kie"
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local util = require "spec.support.util"
local kill = require "spec.support.fleet_kill"
local socket = require "socket"

local M = {}

local KEY = "sk-fleet-outage"
local CREATE = "/api/v1/jobs/createTask"
local POLL = { limit = 10, window = 1 }
local GRACE = 1      -- a request whose slot was granted right before the outage may arrive late
                     -- (on a loaded machine, its process may wait for a core)
local PROMPT = 5     -- seconds within which a create fails while Redis is away (no hang)
local HELD = 0.5     -- seconds the mock holds back the answer of the create in flight as Redis goes
local SETTLE = 2.5   -- seconds after Redis is back (and, back empty, a window) by which the
                     -- last fleet errors ended and creates go again

-- Reads the workers' lines: the finished tasks (id -> state), the errors
-- ({kind, t, message}), and the counts of the other events.
local function read_workers(dir, n)
  local finished, errs, count = {}, {}, { created = 0, claimed = 0, unknown = 0, done = 0 }
  local stderr = {}
  for i = 1, n do
    for line in (util.read_file(dir .. "/" .. i .. ".out") or ""):gmatch("[^\n]+") do
      local ev, rest = line:match("^(%a+) ?(.*)$")
      if ev == "finished" then
        local id, state = rest:match("^(%S+) (%S+)")
        finished[id] = state
      elseif ev == "err" then
        local kind, t, msg = rest:match("^(%S+) (%S+) ?(.*)$")
        errs[#errs + 1] = { kind = kind, t = tonumber(t), message = msg }
      elseif count[ev] then
        count[ev] = count[ev] + 1
      end
    end
    local e = util.read_file(dir .. "/" .. i .. ".err") or ""
    if e ~= "" then stderr[#stderr + 1] = e end
  end
  return finished, errs, count, stderr
end

-- The later client: resume() and wait what it lists. Returns how many tasks it
-- finished and the intents it found unresolved.
local function sweep(m, srv, name, lease)
  socket.sleep(lease + 0.2) -- the workers' last leases lapse
  local sweeper = kie.new{ api_key = KEY, base_url = m.url, timeout = 5,
    rate_limits = { create = false, poll = false },
    fleet = { redis = srv.url, name = name, timeout = 2, lease = 30 } }
  local swept, unknown = 0, {}
  for _, e in ipairs(assert(sweeper:resume())) do
    if e.taskId then
      assert(sweeper:wait(e.taskId, { timeout = 30, interval = 0.05 }))
      swept = swept + 1
    else
      unknown[#unknown + 1] = e.intent
    end
  end
  sweeper:close()
  return swept, unknown
end

-- Starts the forwarder of kind "cut" on `port` to Redis; returns its pid.
local function forward(srv, port, dir)
  local out = dir .. "/fwd" .. port .. "-" .. math.random(1, 1e9)
  local pid = procs.spawn(procs.lua_command("spec/support/forward.lua",
    { port, srv.port, procs.self_pid(), 120 }), out .. ".out", out .. ".err")
  assert(procs.wait_for(out .. ".out", "(ready)", 10), "forwarder did not start: "
    .. tostring(util.read_file(out .. ".err")))
  return pid
end

-- Takes Redis away for `seconds` the way `kind` says, and meanwhile tries a create
-- every half second through `probe` (a client of the fleet): each answer
-- `{kind =, retryable =, message =, took = s}` goes to `probes`. Returns when Redis
-- went and when it came back (from when it may answer).
local function outage(srv, kind, seconds, probe, probes, cut)
  local gone = socket.gettime()
  if kind == "freeze" then srv:freeze()
  elseif kind == "cut" then procs.kill(cut.pid, "KILL")
  else srv:stop() end
  socket.sleep(0.3)
  while socket.gettime() < gone + seconds - 0.6 do -- (a probe may take fleet.timeout)
    local t = socket.gettime()
    local task, err = probe:create_task{ model = "ideogram/character",
      input = { prompt = "probe " .. #probes, reference_image_urls = { "https://example.com/ref.png" } } }
    err = err or { kind = "none (created " .. tostring(task and task.taskId) .. ")" }
    probes[#probes + 1] = { kind = err.kind, retryable = err.retryable, message = tostring(err.message),
      took = socket.gettime() - t }
    socket.sleep(0.5)
  end
  socket.sleep(gone + seconds - socket.gettime())
  local back = socket.gettime() -- (it may answer from here on)
  if kind == "freeze" then srv:thaw()
  elseif kind == "cut" then cut.pid = forward(srv, cut.port, cut.dir)
  else srv:restart{ keep = kind == "restart" } end
  return gone, back
end

-- The requests the mock got while Redis was away (from `gone + GRACE` to `back`),
-- creates up to `back + create_window` and reads up to `back + POLL.window` for
-- "empty"; and the 429s.
local function sent_meanwhile(m, gone, back, empty, create_window)
  local out, over = {}, 0
  for _, r in ipairs(m:requests()) do
    if r.path:match("^/api/") then
      if r.fault == "account_limit" then over = over + 1 end
      local until_t = back
      if empty then until_t = back + (r.path:match("createTask") and create_window or POLL.window) end
      if r.time > gone + GRACE and r.time < until_t then
        out[#out + 1] = ("%s sent %.2f s after Redis went"):format(r.path, r.time - gone)
      end
    end
  end
  return out, over
end

--- Runs the proof; returns the figures and the violations (strings).
-- opts: kind ("restart", "empty", "freeze", "cut"), seed, procs (4), before (s of load
-- before the outage, 4: a new fleet's first window counts as full), outage (5), after (5), limit and window (the
-- account's create limit, 5 per 2 s), lease (2).
function M.run(opts)
  local kind, seed, n = opts.kind, opts.seed or 1, opts.procs or 4
  local limit, window, lease = opts.limit or 5, opts.window or 2, opts.lease or 2
  math.randomseed(seed)
  local srv = server.start{ persist = kind == "restart" }
  local m = mock.start{ api_key = KEY, pace = 0.05,
    latency = { min = 0, max = 0.1 + 0.3 * math.random() }, -- creates in flight as Redis goes
    account_limit = { create = { limit = limit, window = window }, poll = POLL } }
  local dir = util.tmpdir("kie-fleet-outage")
  local name = "outage-" .. kind .. "-" .. seed
  local cut, url = nil, srv.url -- the fleet's Redis (through the forwarder for "cut")
  if kind == "cut" then
    cut = { port = util.free_port(), dir = dir }
    cut.pid = forward(srv, cut.port, dir)
    url = "redis://127.0.0.1:" .. cut.port .. "/0"
  end
  local t0 = socket.gettime()
  local before = (opts.before or 4) * (0.9 + 0.2 * math.random())
  local stop_at = t0 + before + (opts.outage or 5) + (opts.after or 5)
  local pids = {}
  for i = 1, n do
    local cmd = procs.lua_command("spec/support/outage_child.lua", { m.url, url, name,
      "s" .. seed .. "w" .. i, dir .. "/" .. i .. ".journal", ("%.3f"):format(stop_at),
      tostring(limit), tostring(window), tostring(lease) })
    pids[i] = procs.spawn(cmd, dir .. "/" .. i .. ".out", dir .. "/" .. i .. ".err")
  end
  local probe, probes = kie.new{ api_key = KEY, base_url = m.url, timeout = 10, max_retries = 0,
    rate_limits = { create = { limit = limit, window = window }, poll = POLL },
    fleet = { redis = url, name = name, timeout = 0.5, connect_timeout = 0.5 } }, {}
  socket.sleep(t0 + before - socket.gettime())
  -- Redis goes while a create is in flight: the mock makes the next one's task, logs
  -- it, and holds its answer back HELD s, so the answer comes while Redis is away
  m:fault{ path = CREATE, fault = "delay", seconds = HELD, times = 1 }
  local give_up = socket.gettime() + 5
  repeat
    local sent = false
    for _, r in ipairs(m:requests(CREATE)) do sent = sent or r.fault == "delay" end
    if not sent then socket.sleep(0.02) end
  until sent or socket.gettime() > give_up
  local gone, back = outage(srv, kind, opts.outage or 5, probe, probes, cut)
  probe:close()
  local violations, stuck = {}, 0
  for _, pid in ipairs(pids) do
    local deadline = stop_at + 60
    while procs.alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
    if procs.alive(pid) then
      stuck = stuck + 1
      procs.kill(pid, "KILL")
    end
  end
  local finished, errs, count, stderr = read_workers(dir, n)
  local creates, tasks, ntasks = kill.read_mock(m, 10)
  local swept, unknown = sweep(m, srv, name, lease)
  local journal, unresolved, open = kill.read_journal(srv.url, name)
  for id, state in pairs(finished) do -- a result counts as much as the journal
    journal[id] = journal[id] or {}
    journal[id].state = journal[id].state or state
  end
  for _, v in ipairs(kill.check(creates, tasks, journal, unresolved)) do violations[#violations + 1] = v end
  local meanwhile, over = sent_meanwhile(m, gone, back, kind == "empty", window)
  for _, v in ipairs(meanwhile) do violations[#violations + 1] = v end
  if over > 0 then violations[#violations + 1] = over .. " answers 429 from the mock" end
  local fleet_errs, first, last = 0, nil, nil
  for _, e in ipairs(errs) do
    if e.kind ~= "fleet" then
      violations[#violations + 1] = "a worker saw an error of kind " .. e.kind .. ": " .. e.message
    else
      fleet_errs = fleet_errs + 1
      if not first or e.t < first then first = e.t end
      if not last or e.t > last then last = e.t end
      if e.t < gone or e.t > back + SETTLE then
        violations[#violations + 1] = ("a fleet error %.2f s after Redis went: %s"):format(e.t - gone, e.message)
      end
    end
  end
  local slowest = 0
  for _, p in ipairs(probes) do
    if p.kind ~= "fleet" or p.retryable ~= true or not p.message:find("nothing was sent", 1, true) then
      violations[#violations + 1] = ("a create while Redis was away: %s (retryable %s): %s"):format(
        p.kind, tostring(p.retryable), p.message)
    end
    if p.took > PROMPT then
      violations[#violations + 1] = ("a create while Redis was away took %.2f s to fail"):format(p.took)
    end
    if p.took > slowest then slowest = p.took end
  end
  if #probes == 0 and back - gone >= 1 then
    violations[#violations + 1] = "no create tried while Redis was away"
  end
  for _, id in ipairs(unknown) do violations[#violations + 1] = "an intent resume() lists as unknown: " .. id end
  if count.unknown > 0 then violations[#violations + 1] = count.unknown .. " unknown intents seen by workers" end
  if stuck > 0 then violations[#violations + 1] = stuck .. " workers did not end" end
  for _, e in ipairs(stderr) do violations[#violations + 1] = "a worker's stderr: " .. e end
  local first_after = math.huge
  for _, r in ipairs(m:requests(CREATE)) do
    if r.time > back and r.time < first_after then first_after = r.time end
  end
  if first_after > back + (kind == "empty" and window or 0) + SETTLE then
    violations[#violations + 1] = ("no create until %.2f s after Redis was back"):format(first_after - back)
  end
  local figures = { kind = kind, seed = seed, procs = n, outage = back - gone, creates = #creates,
    tasks = ntasks, over = over, fleet_errors = fleet_errs,
    first_error = first and first - gone or -1, last_error = last and last - back or -1,
    first_create = first_after - back, probes = #probes, probe_slowest = slowest,
    probe_message = probes[1] and probes[1].message or "", claimed = count.claimed, swept = swept, open_left = open,
    violations = #violations }
  m:stop()
  if cut then procs.kill(cut.pid, "KILL") end
  srv:close()
  if not os.getenv("FLEET_OUTAGE_KEEP") then util.run("rm -rf " .. util.quote(dir)) end
  table.sort(violations)
  return figures, violations
end

--- One line of figures.
function M.report(f)
  return ("fleet Redis outage (%s): seed %d, %d workers, Redis away %.1f s: %d creates, %d tasks, "
    .. "429s %d; workers' fleet errors %d (first %.2f s after it went, last %.2f s after it was back); "
    .. "creates tried meanwhile %d, each failed (kind fleet) within %.2f s; "
    .. "first create %.2f s after it was back; claimed by resume() %d, by the later client %d, "
    .. "open left %d; violations %d\n  a create meanwhile: %s"):format(f.kind, f.seed, f.procs, f.outage,
    f.creates, f.tasks, f.over, f.fleet_errors, f.first_error, f.last_error, f.probes, f.probe_slowest,
    f.first_create, f.claimed, f.swept, f.open_left, f.violations, f.probe_message)
end

return M
