--- The event loop of a client: one I/O path blocking or in a coroutine, the
-- parked coroutines, timers and deferred callbacks, `step`, `poll_timeout`,
-- `wakeup`, and the callback-style async calls.
-- @submodule kie.Client

local scheduler = require "kie.scheduler"

-- Modules only some programs use load on first use (memory for the others).
local files = setmetatable({}, { __index = function(proxy, k)
  local mod = require "kie.files"
  setmetatable(proxy, { __index = mod })
  return mod[k]
end })

local type, ipairs, tostring, setmetatable, pcall, error, select =
  type, ipairs, tostring, setmetatable, pcall, error, select
local ceil, huge = math.ceil, math.huge
local remove = table.remove
local unpack = table.unpack or unpack

local Client = {}

-- The loop's state on a new client `self`.
function Client._init_loop(self)
  self._parked = {}   -- transfer id -> spawned task waiting for it
  self._timers = {}   -- sorted by .at: {at =, task =}
  self._due = {}      -- tasks to resume at the next step, first come first (before any timer)
  self._deferred = {} -- functions to call at the next step
  self._ready = { head = 1, tail = 0 } -- FIFO of finished transfer ids not yet handed over
  self._next_step = { client = self, wake = -huge } -- park a task until the next step
end

-- one I/O path, blocking or in a coroutine ---------------------------------------

-- Runs core method `name` (blocking) or `name_start` (in a kie.spawn coroutine,
-- parking it until step() hands back the result).
local START = setmetatable({}, { __index = function(t, name)
  local v = name .. "_start"
  t[name] = v
  return v
end })

function Client:_io(name, ...)
  local core = self._core
  if scheduler.current() then
    local id, err = core[START[name]](core, ...)
    if type(id) ~= "number" then return id, err end
    return scheduler.wait_for{ client = self, id = id }
  end
  return core[name](core, ...)
end

function Client:_sleep(seconds, blocking_sleep)
  if scheduler.current() then
    return scheduler.wait_for{ client = self, wake = self._env.now() + seconds }
  end
  if seconds > 0 then blocking_sleep(seconds) end
end

function Client:_park(task, req)
  if req.id then
    self._parked[req.id] = task
  elseif req.wake == -huge then
    local due = self._due
    due[#due + 1] = task
  else
    local timers, at = self._timers, req.wake
    local i = #timers
    while i > 0 and timers[i].at > at do i = i - 1 end
    table.insert(timers, i + 1, { at = at, task = task })
  end
end

function Client:_unpark(task, req)
  if req.id then
    self._parked[req.id] = nil
    self._core:cancel(req.id)
  elseif req.wake == -huge then
    for i, t in ipairs(self._due) do
      if t == task then remove(self._due, i) break end
    end
  else
    for i, t in ipairs(self._timers) do
      if t.task == task then remove(self._timers, i) break end
    end
  end
end

function Client:_defer(fn)
  self._deferred[#self._deferred + 1] = fn
end

-- Resumes the tasks parked until this step, then those whose timers are due, and
-- runs deferred callbacks. Returns the errors raised by callbacks.
function Client:_run_due(raised)
  local now = self._env.now()
  local due, timers = self._due, self._timers
  while true do
    local t
    if due[1] then
      t = remove(due, 1)
    elseif timers[1] and timers[1].at <= now then
      t = remove(timers, 1).task
    else
      break
    end
    scheduler.resume(t)
  end
  while #self._deferred > 0 do
    local fns = self._deferred
    self._deferred = {}
    for _, fn in ipairs(fns) do
      local ok, err = pcall(fn)
      if not ok then raised[#raised + 1] = err end
    end
  end
end

-- Hands finished transfer `id` to the coroutine parked on it (or drops its result
-- when nobody waits for it any more).
local function _hand_over(self, core, id)
  local parked = self._parked
  local t = parked[id]
  parked[id] = nil
  if t then
    t.parked = nil
    scheduler.resume(t, core:result(id))
  else
    core:result(id) -- nobody waits for it any more
  end
end

--- Advances every transfer and timer: never blocks when `timeout_ms` is 0 (the
-- default), else waits at most that long for activity. Fires callbacks and
-- resumes coroutines. Returns how many transfers and timers are still pending.
-- A callback that raised is re-raised here, after the others have run.
--
-- `budget_ms` (default: the client's `step_budget_ms`, 0.2 ms) bounds the work of
-- one step, for a game frame: half of it for reading answers off the sockets,
-- then, once the whole budget (by the client's clock) has passed since step
-- began, transfers that have finished but whose coroutines have not been resumed
-- yet stay queued (first finished, first resumed) and are handed over by the next
-- step(s); answers not read yet wait in their sockets. At least one is handed
-- over per step, so `budget_ms` 0 means one per step, and `math.huge` means no
-- budget. Queued transfers count in the return value, and `poll_timeout()` is 0
-- while any are queued (such a step does not wait).
-- @tparam[opt=0] integer timeout_ms
-- @tparam[opt] number budget_ms
-- @treturn integer transfers (running or queued), timers and callbacks pending
function Client:step(timeout_ms, budget_ms)
  timeout_ms = timeout_ms or 0
  if budget_ms == nil then
    budget_ms = self._opts.step_budget_ms
  elseif type(budget_ms) ~= "number" or budget_ms ~= budget_ms or budget_ms < 0 then
    error("step: budget_ms must be a number >= 0, got " .. tostring(budget_ms), 2)
  end
  if budget_ms == huge then budget_ms = nil end
  local now = self._env.now
  local deadline = budget_ms and now() + budget_ms / 1000
  local raised = {}
  self:_run_due(raised)
  local q = self._ready
  local ms = timeout_ms
  if #self._deferred > 0 or q.head <= q.tail or self._due[1] then ms = 0 end
  local nt = self._timers[1]
  if nt and ms > 0 then
    local d = ceil((nt.at - now()) * 1000)
    if d < ms then ms = d > 0 and d or 0 end
  end
  local core = self._core
  local n, ids = core:step(ms, budget_ms and budget_ms / 2)
  if self._watch then files.watch(self, raised) end -- download progress callbacks
  if ids then
    if not deadline and q.head > q.tail then
      for i = 1, #ids do _hand_over(self, core, ids[i]) end
    else
      local tail = q.tail
      for i = 1, #ids do tail = tail + 1 q[tail] = ids[i] end
      q.tail = tail
    end
  end
  while q.head <= q.tail do
    local head = q.head
    local id = q[head]
    q[head] = nil
    q.head = head + 1
    _hand_over(self, core, id)
    if deadline and now() >= deadline then break end
  end
  if q.head > q.tail then q.head, q.tail = 1, 0 end
  self:_run_due(raised)
  if raised[1] ~= nil then error(raised[1], 0) end
  -- count again: the coroutines resumed above may have started new transfers
  -- (core:pending() counts the queued transfers too: they are not handed back yet)
  if core.pending then n = core:pending() else n = n + (q.tail - q.head + 1) end
  return n + #self._due + #self._timers + #self._deferred
end

--- Milliseconds a host loop may sleep before the next `step`, or nil when
-- nothing is pending (0 while a step budget has left answers unread or finished
-- transfers queued).
function Client:poll_timeout()
  if #self._deferred > 0 or self._due[1] then return 0 end
  local q = self._ready
  if q.head <= q.tail then return 0 end
  local ms = self._core:poll_timeout()
  local nt = self._timers[1]
  if nt then
    local d = ceil((nt.at - self._env.now()) * 1000)
    if d < 0 then d = 0 end
    if not ms or d < ms then ms = d end
  end
  return ms
end

--- Interrupts a `step(timeout_ms)` that is blocking in another thread.
function Client:wakeup()
  self._core:wakeup()
end

-- Runs fn in a coroutine; cb(results) is called once, from step. cb always goes
-- through the deferred queue, so that it never runs inside the *_async call (fn
-- may raise before its first yield) and an error it raises is collected by step,
-- after the other callbacks, instead of cutting the step short.
-- fn is a function, or the name of a method called as self[fn](self, a1, a2).
local function _keep(self, ...) -- parks until step, then returns fn's results
  local n = select("#", ...)
  if n <= 2 then
    local a, b = ...
    scheduler.wait_for(self._next_step) -- hand results over in step
    if n == 2 then return a, b elseif n == 1 then return a end
    return
  end
  local r = { n = n, ... }
  scheduler.wait_for(self._next_step)
  return unpack(r, 1, n)
end

local function _async_body(self, fn, a1, a2)
  if type(fn) == "string" then return _keep(self, self[fn](self, a1, a2)) end
  return _keep(self, fn())
end

function Client:_async(cb, fn, a1, a2)
  if cb ~= nil and type(cb) ~= "function" then error("callback must be a function", 3) end
  local on_done
  if cb then
    on_done = function(...)
      local n = select("#", ...)
      if n <= 2 then
        local a, b = ...
        if n == 2 then self:_defer(function() return cb(a, b) end)
        elseif n == 1 then self:_defer(function() return cb(a) end)
        else self:_defer(function() return cb() end) end
        return
      end
      local r = { n = n, ... }
      self:_defer(function() return cb(unpack(r, 1, r.n)) end)
    end
  end
  return scheduler.start(_async_body, on_done, self, fn, a1, a2)
end

return Client
