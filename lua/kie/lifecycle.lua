--- The whole life of a call: start, park, hand over, cancel, close, the step
-- budget and callback errors, in one place.
--
-- A call that does not block is a task: a coroutine and its record, which is also
-- its handle (`done()`, `result()`, `cancel()`, and `task_id` once a create made
-- by it was answered). A task waits on one thing at a time: a transfer of a
-- client's core, a timer of that client, or its child tasks (`run_all`). The
-- client's `step` does the work queued in its run queue, first in first out:
-- finished transfers to hand over, tasks to resume, callbacks to call; the step
-- budget covers every one of them (at least one per step).
--
-- Inside a function started with `kie.spawn`, the client's ordinary calls
-- (`create_task`, `get_task`, `wait`, `run` ...) yield instead of blocking; sleeps
-- become timers of the same client. Outside, the very same calls block. A spawned
-- function that raises is not lost: its handle's `result()` returns `nil, err`
-- (kind `raised`, with the traceback).
--
-- Canceling a create after its request was started does not drop it: the call
-- ends with `unknown_outcome` (`cause = "canceled"`, `fingerprint`), the answer is
-- still read by later steps and handed to the client's `_on_orphan(req, res, err)`
-- (journal, log), and the handle's `task_id` is set when it arrives.
-- @module kie.lifecycle

local errors = require "kie.errors"

local create, resume, status, running, yield = coroutine.create, coroutine.resume,
  coroutine.status, coroutine.running, coroutine.yield
local type, select, tostring, setmetatable, pairs, ipairs, pcall, xpcall, error =
  type, select, tostring, setmetatable, pairs, ipairs, pcall, xpcall, error
local unpack = table.unpack or unpack
local concat = table.concat
local traceback = debug.traceback
local ceil = math.ceil

local M = {}

local PARK = {}          -- what a kie task yields when it parks (anything else is not kie's)
local running_task = nil -- the task whose coroutine is running, if any
local stepping = nil     -- the client whose step runs a unit of work now, if any

-- Lua 5.1's xpcall passes no arguments to the function
local XPCALL_ARGS = select(2, xpcall(function(a) return a end, tostring, true)) == true

local Handle = {}
Handle.__index = Handle
Handle.__name = "kie.Handle"

local function pack(...) return { n = select("#", ...), ... } end

-- core method name -> its non-blocking variant
local START = setmetatable({}, { __index = function(t, name)
  local v = name .. "_start"
  t[name] = v
  return v
end })

-- the run queue ------------------------------------------------------------------

-- Appends entry `e` (a finished transfer id, or a task) to client c's run queue.
local function push(c, e)
  local q = c._runq
  local tail = q.tail + 1
  q.tail = tail
  q[tail] = e
  if type(e) == "table" then c._qtasks = c._qtasks + 1 end
end

--- Gives client `c` its (empty) loop state.
function M.init(c)
  c._parked = {}   -- transfer id -> the task waiting for it, or an orphan
                   -- {_orphan = true, req =, task =, err =}
  c._timers = {}   -- sleeping tasks, latest first (the next one due is the last)
  c._runq = { head = 1, tail = 0 } -- work for step, in order: transfer ids and tasks
  c._qtasks = 0    -- how many entries of _runq are tasks
  c._joined = {}   -- tasks waiting for their children, on this client (close ends them)
  c._closed = false
end

-- ending a task --------------------------------------------------------------------

-- Ends t with `results` (packed): sets its result, calls the internal `_on_end`
-- hook, queues its callback on its owner client. Does nothing when t has ended.
local function finish(t, results)
  if t._ended then return end
  t._ended = true
  t._results = results
  local p = t._parent
  if p and p._kids then p._kids[t] = nil end
  if t._on_end then t._on_end(t) end
  if t._cb then
    local o = t._owner
    -- ended by the unit of work its client's step runs: the callback is part
    -- of that unit; else (inside the *_async call, a cancel ...) it is queued
    if o == stepping and not o._now_cb then o._now_cb = t else push(o, t) end
  end
end

--- The error of a call ended by a close of its client.
function M.closed_error()
  return errors.new("canceled", "the client was closed", { cause = "closed" })
end

-- The error a call parked in state `wait` ends with when canceled or closed.
local function _end_error(c, t, cause, paid)
  local err
  if paid then
    err = errors.new("unknown_outcome", "create_task: " .. cause .. " after the request was sent;"
      .. " it may have been created (see task_id, set if its answer comes)", { op = "create_task",
      cause = cause })
    c:_on_unknown(paid, err) -- fingerprint, model, journal intent (kie.paid)
  elseif cause == "closed" then
    err = M.closed_error()
  else
    err = errors.new("canceled", "canceled by the caller")
  end
  if t.task_id then err.task_id = t.task_id end
  local more = t._end_fields -- what t's error tells of the work it waits for (run_all's)
  if more then
    for k, v in pairs(more) do err[k] = v end
  end
  return err
end

-- Takes sleeping task t off client c's timers.
local function untimer(c, t)
  local timers = c._timers
  for i = #timers, 1, -1 do
    if timers[i] == t then table.remove(timers, i) break end
  end
  t._at = nil
end

-- Takes t off what it waits for (a canceled or closed call). A create already
-- started stays in flight as an orphan when canceled (its answer is recorded).
-- Returns the error t ends with.
local function unpark(t, cause)
  local c, w = t._client, t._wait
  t._wait, t._client = nil, nil
  if w == "transfer" then
    local id, paid = t._xid, t._paid
    t._xid, t._paid = nil, nil
    local err = _end_error(c, t, cause, paid)
    if paid and cause == "canceled" then
      c._parked[id] = { _orphan = true, req = paid, task = t, err = err }
    else
      c._parked[id] = nil
      if not c._closed then c._core:cancel(id) end
    end
    return err
  elseif w == "timer" then
    untimer(c, t)
  elseif w == "join" then
    c._joined[t] = nil
  end
  -- "queued": the run queue skips a task that has ended
  return _end_error(c or t._owner, t, cause)
end

--- Cancels task `t` (see `Handle:cancel`): its wait is dropped, it ends with
-- `nil, err`, and its children (run_all items) are canceled. Returns true if it
-- was still running.
function M.cancel(t)
  if t._ended then return false end
  local err = unpark(t, "canceled")
  finish(t, pack(nil, err))
  local co = t._co
  if co and status(co) == "suspended" then t._co = nil end -- never resumed again
  local kids = t._kids
  if kids then
    t._kids = nil
    for k in pairs(kids) do M.cancel(k) end
  end
  return true
end

-- running a task -------------------------------------------------------------------

-- What follows resume(co) of task t: ok, and what co yielded or returned.
local function resumed(t, co, prev, ok, ...)
  running_task = prev
  if status(co) == "dead" then
    t._co = nil
    if ok then
      finish(t, pack(...))
    elseif not t._ended then
      local msg = tostring((...))
      finish(t, pack(nil, errors.new("raised", "spawned function raised: " .. msg,
        { traceback = traceback(co, msg), task_id = t.task_id })))
    end
    return
  end
  if (...) ~= PARK then -- a yield that is not kie's: the task cannot go on
    t._co = nil
    finish(t, pack(nil, errors.new("raised", "spawned function yielded outside kie")))
  elseif t._ended then
    t._co = nil -- canceled while it ran: parks of an ended task record nothing
  end
end

-- Resumes t's coroutine with ... until it parks or ends.
local function run(t, ...)
  local co = t._co
  if not co then return end
  local prev = running_task
  running_task = t
  return resumed(t, co, prev, resume(co, ...))
end
M.run = run

--- A new task running `fn` (not started: `run` starts it). `cb(...)`, when
-- given, is called with fn's results (or `nil, err`) from `owner`'s step.
function M.task(fn, cb, owner)
  return setmetatable({ _co = create(fn), _cb = cb, _owner = owner, _ended = false }, Handle)
end

--- Makes `t` a child of `parent`: canceling the parent cancels it.
function M.adopt(parent, t)
  local kids = parent._kids
  if not kids then kids = {} parent._kids = kids end
  kids[t] = true
  t._parent = parent
end

--- The task of the running coroutine if kie started it, else nil.
function M.current()
  local t = running_task
  if t and t._co == running() then return t end
  return nil
end

--- Starts `fn(...)` at once in a coroutine; returns its handle.
-- @tparam function fn
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("kie.spawn: fn must be a function", 2) end
  local t = M.task(fn)
  run(t, ...)
  return t
end

-- parking --------------------------------------------------------------------------

--- Starts core method `name`'s transfer for task `t` of client `c`: returns its
-- id, or what the core returned (`nil, err`). A canceled task starts nothing and
-- never returns; a closed client returns `nil, err` (kind `canceled`).
function M.send(c, t, name, ...)
  if t._ended then return yield(PARK) end
  if c._closed then return nil, _end_error(c, t, "closed") end
  local core = c._core
  return core[START[name]](core, ...)
end

--- Parks task `t` until client `c`'s step hands over transfer `id`'s result,
-- and returns it. `paid` (the create request) makes a cancel keep the transfer.
function M.await(c, t, id, paid)
  t._wait, t._client, t._xid, t._paid = "transfer", c, id, paid
  c._parked[id] = t
  return yield(PARK)
end

--- `send` then `await`.
function M.io(c, t, paid, name, ...)
  local id, err = M.send(c, t, name, ...)
  if type(id) ~= "number" then return id, err end
  return M.await(c, t, id, paid)
end

--- Parks task `t` on a timer of client `c` for `seconds` (on a closed client,
-- `t` ends with the closed-client error).
function M.sleep(c, t, seconds)
  if t._ended then return yield(PARK) end
  if c._closed then -- no timer will run: the call ends here
    finish(t, pack(nil, _end_error(c, t, "closed")))
    return yield(PARK)
  end
  local at = c._env.now() + seconds
  local timers = c._timers
  local i = #timers
  while i > 0 and timers[i]._at <= at do i = i - 1 end -- latest first; equal: first in first out
  table.insert(timers, i + 1, t)
  t._wait, t._client, t._at = "timer", c, at
  return yield(PARK)
end

--- Parks task `t` until `wake(t)`; a close of `c` ends it. `fields` (optional)
-- go on the error t ends with if it is canceled or closed meanwhile (run_all:
-- its `results` and `errs`, which its children fill as they end).
function M.join(c, t, fields)
  if t._ended then return yield(PARK) end
  if c._closed then return end
  t._wait, t._client = "join", c
  c._joined[t] = true
  t._end_fields = fields -- until t runs again (queued by wake, it may still be canceled)
  yield(PARK)
  t._end_fields = nil
end

--- Queues a task parked by `join` to be resumed by its client's step.
function M.wake(t)
  if t._wait ~= "join" then return end
  local c = t._client
  c._joined[t] = nil
  t._wait = "queued"
  push(c, t)
end

--- Ends at once the sleep (`sleep`) task `t` is parked in: it is queued to be
-- resumed by its client's step as if its timer were due (a wait woken by a
-- callback, kie.wake). Returns true if `t` was asleep.
function M.rouse(t)
  if t._wait ~= "timer" or t._ended then return false end
  local c = t._client
  untimer(c, t)
  t._wait = "queued"
  push(c, t)
  return true
end

local function on_error(e)
  return { e, traceback("", 2) }
end

-- Calls f(...) protected; adds what it raised (with the traceback) to errs.
local function call(errs, f, ...)
  local ok, e
  if XPCALL_ARGS then
    ok, e = xpcall(f, on_error, ...)
  else
    local args = pack(...)
    ok, e = xpcall(function() return f(unpack(args, 1, args.n)) end, on_error)
  end
  if ok then return errs end
  errs = errs or {}
  errs[#errs + 1] = e
  return errs
end

-- close ----------------------------------------------------------------------------

--- Closes client `c`: every call parked or queued on it ends at once (`canceled`
-- with `cause = "closed"`, or `unknown_outcome` for a create in flight), and
-- their callbacks are called before close returns (by the running step when
-- close is called inside one). A later step returns 0. Idempotent.
function M.close(c)
  if c._closed then return end
  c._closed = true
  -- creates whose answer was read but not handed over yet: their task ids are kept
  -- (on the handle and its error) and recorded like an orphan's
  local q = c._runq
  for i = q.head, q.tail do
    local id = q[i]
    local p = type(id) == "number" and c._parked[id]
    if p and (p._orphan or p._paid) then
      local t = p._orphan and p.task or p
      local r, e = c._core:result(id)
      if type(r) == "table" and r.taskId then
        t.task_id = r.taskId
        if p._orphan then p.err.task_id = r.taskId end
      end
      call(nil, c._on_orphan, c, p.req or p._paid, r, e)
      if p._orphan then c._parked[id] = nil end -- a task: ended below, with its task id
    end
  end
  local ended = {}
  for t in pairs(c._joined) do ended[#ended + 1] = t end
  for i = q.head, q.tail do
    local e = q[i]
    if type(e) == "table" and not e._ended and e._wait == "queued" then ended[#ended + 1] = e end
  end
  for i = #c._timers, 1, -1 do ended[#ended + 1] = c._timers[i] end
  for id, t in pairs(c._parked) do
    if t._orphan then -- a canceled create still awaited: its answer is lost now
      c:_log("warn", "create_task: canceled create not answered before close",
        { op = "create_task", fingerprint = t.err.fingerprint })
    else
      ended[#ended + 1] = t
    end
    c._parked[id] = nil
  end
  for _, t in ipairs(ended) do
    if not t._ended then
      local err = unpark(t, "closed")
      finish(t, pack(nil, err))
      if t._co and status(t._co) == "suspended" then t._co = nil end
    end
  end
  c._core:close()
  if c._fleet then c._fleet:close() end -- its Redis connection (kie.fleet)
  -- the callbacks of the calls ended here: now, unless this client's step is
  -- running (it calls them); what they raise is raised after all ran, as by step
  if stepping ~= c then M.step(c, 0, nil) end
end

-- step -----------------------------------------------------------------------------

-- Moves client c's due timers to its run queue.
local function due_timers(c, now)
  local timers = c._timers
  local n = #timers
  while n > 0 and timers[n]._at <= now do
    local t = timers[n]
    timers[n] = nil
    n = n - 1
    t._wait, t._at = "queued", nil
    push(c, t)
  end
end

--- The error of kind `callback` for `errs`, a list of `{value raised,
-- traceback}`: printable with every value and traceback; `fields` (optional)
-- are added to it.
function M.callback_error(errs, fields)
  local list, tbs, lines = {}, {}, {}
  for i, e in ipairs(errs) do
    list[i], tbs[i] = e[1], e[2]
    lines[#lines + 1] = i .. ") " .. tostring(e[1]) .. (e[2] and e[2] ~= "" and ("\n" .. e[2]) or "")
  end
  local head = #errs == 1 and "a callback raised: " or (#errs .. " callbacks raised:\n")
  local err = errors.new("callback", head .. concat(lines, "\n"), { errors = list, tracebacks = tbs,
    traceback = tbs[1] })
  for k, v in pairs(fields or {}) do err[k] = v end
  return err
end

-- The value step raises: every callback error of the step, printable.
local function raise(errs)
  error(M.callback_error(errs), 0)
end

-- Hands finished transfer `id` of client c to whoever waits for it. Returns
-- true if it did work, and errs.
local function hand_over(c, id, errs)
  local parked = c._parked
  local t = parked[id]
  if t == nil then -- canceled after it finished: nobody waits any more
    c._core:cancel(id)
    return false, errs
  end
  parked[id] = nil
  local r, e = c._core:result(id)
  if t._orphan then -- a create canceled after it was sent
    local task = t.task
    if type(r) == "table" and r.taskId then
      task.task_id = r.taskId
      t.err.task_id = r.taskId
    end
    return true, call(errs, c._on_orphan, c, t.req, r, e)
  end
  if t._paid and type(r) == "table" and r.taskId then t.task_id = r.taskId end
  t._wait, t._client, t._xid, t._paid = nil, nil, nil, nil
  run(t, r, e)
  return true, errs
end

-- Calls ended task t's callback (once).
local function fire(t, errs)
  local cb = t._cb
  t._cb = nil
  local r = t._results
  return call(errs, cb, unpack(r, 1, r.n))
end

-- Runs one queued task entry: resumes it, or calls its callback once it ended.
local function run_entry(c, t, errs)
  c._qtasks = c._qtasks - 1
  if t._ended then
    if not t._cb then return false, errs end
    return true, fire(t, errs)
  end
  if t._wait ~= "queued" then return false, errs end
  t._wait, t._client = nil, nil
  run(t)
  return true, errs
end

-- Does client c's queued work, in order, until the queue is empty or the
-- deadline passed (at least one piece). Returns errs.
local function work(c, deadline, errs)
  local q, now = c._runq, c._env.now
  while q.head <= q.tail do
    local head = q.head
    local e = q[head]
    q[head] = nil
    q.head = head + 1
    local did
    if type(e) == "number" then
      if c._closed then did = false else did, errs = hand_over(c, e, errs) end
    else
      did, errs = run_entry(c, e, errs)
    end
    local t = c._now_cb
    while t do -- (a callback may end another call: its callback is called too)
      c._now_cb = nil
      errs = fire(t, errs)
      t = c._now_cb
    end
    -- once closed, the callbacks left are all called: step returns 0 from then on
    if did and deadline and not c._closed and now() >= deadline then break end
  end
  return errs
end

--- One step of client `c` (see `Client:step`); `budget_ms` nil means no budget.
function M.step(c, timeout_ms, budget_ms, watch)
  local q = c._runq
  local now = c._env.now
  local closed = c._closed
  local deadline = budget_ms and not closed and now() + budget_ms / 1000
  local errs
  if not closed then
    due_timers(c, now())
    local ms = timeout_ms
    if q.head <= q.tail then ms = 0 end
    local nt = c._timers[#c._timers]
    if nt and ms > 0 then
      local d = ceil((nt._at - now()) * 1000)
      if d < ms then ms = d > 0 and d or 0 end
    end
    local _, ids = c._core:step(ms, budget_ms and budget_ms / 2)
    if watch then errs = watch(c, nil) end
    if ids then
      for i = 1, #ids do push(c, ids[i]) end
    end
    if ms > 0 then
      -- the step waited: the budget is for work, and half of it is left for Lua's
      due_timers(c, now())
      if deadline then deadline = now() + budget_ms / 2000 end
    end
  end
  local outer = stepping
  stepping = c
  local ok, e = pcall(work, c, deadline, errs)
  stepping = outer
  if not ok then error(e, 0) end -- (not a callback's: those are in errs)
  errs = e
  if q.head > q.tail then q.head, q.tail = 1, 0 end
  if errs then raise(errs) end
  if c._closed then return 0 end
  -- count again: the tasks resumed above may have started transfers (pending
  -- counts the finished transfers still queued too: they are not handed over yet)
  return c._core:pending() + #c._timers + c._qtasks
end

--- Queues again the finished transfers of client `c` that its core reported
-- to a step that never queued them: a step cut short right as `core:step`
-- returned (the standalone interpreter raises Ctrl-C's "interrupted!" there).
-- Their answers (a paid create's too) are handed over by the next step. Returns
-- how many were queued.
function M.requeue(c)
  if c._closed then return 0 end
  local q, queued = c._runq, {}
  for i = q.head, q.tail do
    if type(q[i]) == "number" then queued[q[i]] = true end
  end
  local core, n = c._core, 0
  for id in pairs(c._parked) do
    if not queued[id] and core:progress(id) then -- done (a second report is skipped by hand_over)
      push(c, id)
      n = n + 1
    end
  end
  return n
end

--- Milliseconds a host loop may sleep before client `c`'s next step (see
-- `Client:poll_timeout`).
function M.poll_timeout(c)
  local q = c._runq
  if q.head <= q.tail then return 0 end
  if c._closed then return nil end
  local ms = c._core:poll_timeout()
  local nt = c._timers[#c._timers]
  if nt then
    local d = ceil((nt._at - c._env.now()) * 1000)
    if d < 0 then d = 0 end
    if not ms or d < ms then ms = d end
  end
  return ms
end

-- handles ---------------------------------------------------------------------------

--- True when the call has ended (returned, raised, was canceled or its client closed).
function Handle:done()
  return self._ended
end

--- The call's results; or `nil, err` if it raised, was canceled or its client
-- was closed; nothing while it runs.
function Handle:result()
  local r = self._results
  if not r then return nil end
  return unpack(r, 1, r.n)
end

--- Stops the call. It ends with `nil, err` of kind `canceled`; a create whose
-- request was already sent ends with `unknown_outcome` (`cause = "canceled"`,
-- `fingerprint`) and its answer is still read by later steps (the handle's
-- `task_id` is set when it arrives). Returns true if it was still running.
function Handle:cancel()
  return M.cancel(self)
end

return M
