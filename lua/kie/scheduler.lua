--- Coroutines that never block: `kie.spawn` and the per-client run queue.
--
-- Inside a function started with `kie.spawn`, the client's ordinary calls
-- (`create_task`, `get_task`, `wait`, `run` ...) yield instead of blocking: the
-- transfer is started on the client's libcurl multi handle, and the client's
-- `step` resumes the coroutine when it finishes. Sleeps become timers on the same
-- client. Outside a spawned function the very same calls block. A spawned
-- function that raises is not lost: its handle's `result()` returns `nil, err`
-- (kind `raised`, with the traceback).
-- @module kie.scheduler

local errors = require "kie.errors"

local create, resume, status, running, yield = coroutine.create, coroutine.resume,
  coroutine.status, coroutine.running, coroutine.yield
local select, setmetatable, tostring, type, unpack = select, setmetatable, tostring, type,
  table.unpack or unpack
local traceback = debug.traceback

local M = {}

-- coroutine -> task record, for the coroutines this module started
-- (weak both ways: Lua 5.1 and LuaJIT have no ephemerons, and a task refers back
-- to its coroutine, so a key-only weak table would keep parked tasks forever)
local tasks = setmetatable({}, { __mode = "kv" })

local Handle = {}
Handle.__index = Handle

local function pack(...) return { n = select("#", ...), ... } end

--- The task record of the running coroutine if kie started it, else nil.
function M.current()
  local co = running()
  return co and tasks[co] or nil
end

-- Ends t with results and calls its on_done: now, or from `client`'s next step.
local function finish(t, results, client)
  if t.done then return end
  t.done = true
  t.results = results
  t.co = nil
  t.parked = nil
  local cb = t.on_done
  if not cb then return end
  if client then
    client:_defer(function() cb(unpack(results, 1, results.n)) end)
  else
    cb(unpack(results, 1, results.n))
  end
end

-- What follows resume(co) of task t: ok and what co yielded or returned.
local function resumed(t, co, ok, ...)
  local req = ... -- a yield's request, or the error
  if t.done then
    -- canceled while it ran (by itself or by code it called): never park it
    -- again; drop the transfer or timer it has just asked for
    if ok and status(co) ~= "dead" and type(req) == "table" and req.client then req.client:_unpark(t, req) end
    return
  end
  if not ok then
    local msg = tostring(req)
    finish(t, pack(nil, errors.new("raised", "spawned function raised: " .. msg,
      { traceback = traceback(co, msg) })))
  elseif status(co) == "dead" then
    finish(t, pack(...))
  else
    if type(req) ~= "table" or not req.client then
      finish(t, pack(nil, errors.new("raised", "spawned function yielded outside kie")))
    else
      t.parked = req
      req.client:_park(t, req)
    end
  end
end

-- Runs t until it yields or ends. A yield hands a request table to its client.
local function step_task(t, ...)
  local co = t.co
  if not co then return end -- already ended (canceled)
  return resumed(t, co, resume(co, ...))
end
M.resume = step_task

--- Starts `fn(...)` at once in a coroutine. Returns a handle with `done()`,
-- `result()` and `cancel()`.
-- @tparam function fn
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("kie.spawn: fn must be a function", 2) end
  return M.start(fn, nil, ...)
end

--- Like spawn, with `on_done(...)` called with the results when fn ends.
function M.start(fn, on_done, ...)
  local t = { done = false, on_done = on_done }
  t.co = create(fn)
  tasks[t.co] = t
  step_task(t, ...)
  return setmetatable({ _t = t }, Handle)
end

--- Parks the running spawned coroutine until `req` is served by `req.client`.
-- Returns what the client resumes it with.
function M.wait_for(req)
  return yield(req)
end

--- True when the spawned function has ended (returned, raised or was canceled).
function Handle:done()
  return self._t.done
end

--- fn's return values; or `nil, err` if it raised or was canceled; nothing while
-- it runs.
function Handle:result()
  local r = self._t.results
  if not r then return nil end
  return unpack(r, 1, r.n)
end

--- Stops the task: its pending transfer is dropped and it ends with `nil, err`
-- (kind `canceled`). Returns true if it was still running.
function Handle:cancel()
  local t = self._t
  if t.done then return false end
  local req = t.parked
  if req then req.client:_unpark(t, req) end
  finish(t, pack(nil, errors.new("canceled", "canceled by the caller")), req and req.client)
  return true
end

M.Handle = Handle
return M
