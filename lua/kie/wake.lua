--- Waits woken by callbacks, and polls placed where a task likely ended.
--
-- `client:deliver` hands a verified callback here: the waits on that task in this
-- process are woken at once; with `fleet`, the event is also recorded in Redis
-- (`kie.fleet_events`: a fleet-wide stream and a per-task record), and every
-- process of the fleet reads the stream and wakes its own waits. A woken wait
-- confirms with one `get_task` (the callback's body is not signed) and returns.
--
-- How a wait sleeps between polls (`nap`):
--
-- * inside `kie.spawn` (and the `*_async` calls): a timer of its client that a
--   delivery ends early (`kie.lifecycle.rouse`). With `fleet`, one task per
--   client reads the stream every `TICK` seconds (XREAD without BLOCK, so the host
--   loop keeps running) while any of its waits sleeps.
-- * blocking, with `fleet`: XREAD BLOCK on the fleet's connection, bounded by the
--   time to its next poll (and half the fleet's `timeout`).
-- * blocking without `fleet`: the client's sleep; once `deliver` was called on the
--   client, in slices of `SLICE` s (a host whose sleep yields, as kie.ngx's, may
--   deliver meanwhile). In kie.ngx with `fleet`, the XREAD BLOCK above goes over a
--   cosocket and suspends only the request. A host whose sleep yields but whose
--   Redis calls block may set `client._nap_slice` (s): its waits then read the
--   stream without blocking, between sleeps of that length.
--
-- A callback delivered before the wait began is seen too: from Redis's per-task
-- record (fleet), or this client's own table of delivered tasks.
--
-- Where the polls go (without a callback, or when one is lost): `schedule.expected`
-- from the run times of the model's recent tasks (learned at each wait's end, in
-- Redis for the fleet) and the time since the task was created (recorded at its
-- create, on Redis's clock for the fleet). A task whose create carried a
-- `callBackUrl` is polled only once its callback is late, when callbacks do reach
-- `deliver` (this client's, or the fleet's in the last day). A task the client (or
-- fleet) knows nothing of is polled on kie.ai's published schedule.
-- @module kie.wake

local lifecycle = require "kie.lifecycle"
local schedule = require "kie.schedule"

local type, pairs, next, tonumber, min = type, pairs, next, tonumber, math.min
local sort, remove = table.sort, table.remove

local M = {}

M.TICK = 0.01      -- seconds between two reads of the fleet's stream while a wait sleeps
local CAP = 10000  -- tasks remembered per client (delivered ones, created ones)
local KEEP = 100   -- run times kept per model without a fleet
local SLICE = 0.05 -- a sleep outside kie.spawn, once deliver was called: it looks this often

local events -- kie.fleet_events, loaded with the first fleet

--- Is `id` shaped like a kie.ai task id (letters, digits, `_`, `-`; 1 to 128)?
-- Nothing else from a callback becomes a Redis key or a table key.
function M.task_id_ok(id)
  return type(id) == "string" and #id <= 128 and id:match("^[%w_%-]+$") ~= nil
end

local function model_ok(m)
  return type(m) == "string" and #m <= 64 and m:match("^[%w_%-%./]+$") ~= nil
end

-- The client's wake state.
local function state(c)
  local s = c._wake
  if not s then
    s = { waiters = {}, seen = {}, nseen = 0, seq = 0, tasks = {}, ntasks = 0, durations = {},
      last = nil, pump = nil }
    c._wake = s
    if c._fleet and not events then events = require "kie.fleet_events" end
  end
  return s
end

-- Marks task_id delivered in this process and wakes its sleeping waits.
local function dispatch(s, task_id)
  if s.nseen >= CAP then s.seen, s.nseen = {}, 0 end
  if not s.seen[task_id] then s.nseen = s.nseen + 1 end
  s.seq = s.seq + 1
  s.seen[task_id] = s.seq
  local list = s.waiters[task_id]
  if not list then return end
  for w in pairs(list) do
    if w.task then lifecycle.rouse(w.task) end
  end
end

-- Reads the fleet's stream from the last id seen (blocking up to `block` s when
-- given) and dispatches its events. Returns true, or nil when Redis failed.
local function pump(c, s, block)
  if not s.last then return nil end -- no wait could reach Redis yet: they poll
  repeat
    local list = events.read(c._fleet, s.last, block)
    if not list then return nil end
    for _, e in pairs(list) do
      s.last = e.id
      -- (one delivered here is dispatched again: a wait it woke has consumed it,
      -- or was told the task still runs; then one more read confirms)
      if M.task_id_ok(e.task) then dispatch(s, e.task) end
    end
    block = nil
  until #list < 1000
  return true
end

-- Drops the waits of ended tasks (canceled, closed); true while one is left.
local function live(s)
  for id, list in pairs(s.waiters) do
    for w in pairs(list) do
      if w.task and w.task._ended then list[w] = nil end
    end
    if next(list) == nil then s.waiters[id] = nil end
  end
  return next(s.waiters) ~= nil
end

local function pump_body(c, s)
  while not c._closed and live(s) do
    pump(c, s, nil) -- Redis down: the waits' own polls go on
    c._env.sleep(M.TICK)
  end
  s.pump = nil
end

local function ensure_pump(c, s)
  if s.pump and not s.pump._ended then return end
  local t = lifecycle.task(pump_body, nil, c)
  s.pump = t
  lifecycle.run(t, c, s)
end

--- Records that this client made task `task_id` of `model` (`cb`: with a
-- callBackUrl), for the waits on it: in Redis with `fleet` (failures are
-- ignored: the waits poll on kie.ai's schedule then), else in the client.
function M.created(c, task_id, model, cb)
  if not M.task_id_ok(task_id) or not model_ok(model) then return end
  local s = state(c)
  if c._fleet then
    events.created(c._fleet, task_id, model, cb)
    return
  end
  if s.ntasks >= CAP then s.tasks, s.ntasks = {}, 0 end
  if not s.tasks[task_id] then s.ntasks = s.ntasks + 1 end
  s.tasks[task_id] = { created = c._env.now(), model = model, cb = cb }
end

--- A new wait on `task_id`: `{task_id =, first =, delay =}` where `first` and
-- `delay` (nil: kie.ai's published schedule) place its polls (see
-- `schedule.wait`).
function M.start(c, task_id)
  local s = state(c)
  local w = { task_id = task_id, consumed = 0 }
  if not M.task_id_ok(task_id) then return w end
  local rec, durations, elapsed
  if c._fleet then
    local look = events.look(c._fleet, task_id)
    if look then
      if not s.last then s.last = look.last end -- events from here on reach this client
      if look.state then w.pending = true end  -- delivered before the wait began
      if look.created and look.now then
        rec, elapsed, durations = look, look.now - look.created, look.durations
      end
    end
  else
    rec = s.tasks[task_id]
    if rec then
      elapsed = c._env.now() - rec.created
      durations = {}
      for i, d in pairs(s.durations[rec.model] or {}) do durations[i] = d end
    end
  end
  if not rec then return w end
  sort(durations)
  w.model = rec.model
  -- a callback is expected when the create had a callBackUrl and callbacks do
  -- reach deliver (this client's, or the fleet's within a day)
  local cb = rec.cb and (rec.delivering or s.delivered) or false
  if schedule.expected(durations, elapsed, 0, cb) == nil then return w end
  w.first = schedule.expected(durations, elapsed, 0, cb)
  w.delay = function(since_start, polls)
    return schedule.expected(durations, elapsed + since_start, polls, cb)
  end
  return w
end

-- Was task_id delivered since w last looked? (consumes it)
local function take(s, w)
  if w.pending then
    w.pending = nil
    return true
  end
  local seq = s.seen[w.task_id]
  if seq and seq > w.consumed then
    w.consumed = seq
    return true
  end
  return false
end

--- Sleeps `seconds` before wait `w`'s next poll, or less when a callback for its
-- task is delivered meanwhile (in this process, or with `fleet` anywhere).
-- Returns true when a delivery ended it.
function M.nap(c, w, seconds)
  local s = state(c)
  if take(s, w) then return true end
  local woken
  local id = w.task_id
  local list = s.waiters[id]
  if not list then list = {} s.waiters[id] = list end
  list[w] = true
  local t = lifecycle.current()
  if t then
    w.task = t
    if c._fleet and s.last then ensure_pump(c, s) end
    c._env.sleep(seconds)
    w.task = nil
    woken = take(s, w)
  else
    local now = c._env.now
    local stop = now() + seconds
    local slice = c._nap_slice -- (a host whose sleep yields sets it: it never blocks on Redis)
    local block = c._fleet and s.last and not slice
    if not slice and not c._fleet and s.delivered then slice = SLICE end
    local cap = c._fleet and (c._fleet._spec.timeout or 2) / 2
    while true do
      woken = take(s, w)
      if woken then break end
      local left = stop - now()
      if left <= 0 then break end
      if block then
        if not pump(c, s, min(left, cap)) then
          c._env.sleep(stop - now()) -- Redis failed: the poll is the fallback
          break
        end
      elseif slice then
        if c._fleet and s.last then pump(c, s, nil) end
        c._env.sleep(min(left, slice))
      else
        c._env.sleep(left)
        break
      end
    end
  end
  list[w] = nil
  if next(list) == nil and s.waiters[id] == list then s.waiters[id] = nil end
  return woken
end

--- Ends wait `w` with `info` (the task, when it succeeded): its run time is
-- learned for the next waits on tasks of its model.
function M.stop(c, w, info)
  local s = state(c)
  s.tasks[w.task_id] = nil
  if type(info) ~= "table" or info.state ~= "success" then return end
  local model = info.model or w.model
  local ct, st = tonumber(info.completeTime), tonumber(info.createTime)
  if not model_ok(model) or not ct or not st or ct <= st then return end
  local secs = (ct - st) / 1000
  if c._fleet then
    events.learn(c._fleet, model, secs)
    return
  end
  local list = s.durations[model]
  if not list then list = {} s.durations[model] = list end
  list[#list + 1] = secs
  if #list > KEEP then remove(list, 1) end
end

--- Records a verified callback event `ev` (kie.callback.parse's) and wakes the
-- waits on its task: this process's at once; with `fleet`, the fleet's through
-- Redis. Returns true, or nil, err (kind `fleet`: Redis failed; this process's
-- waits were woken all the same).
function M.deliver(c, ev)
  local s = state(c)
  s.delivered = true -- sleeps that are not kie tasks (kie.ngx's) look for deliveries from now on
  dispatch(s, ev.task_id)
  if not c._fleet then return true end
  local id, err = events.record(c._fleet, ev.task_id, ev.state or "")
  if not id then return nil, err end
  return true
end

return M
