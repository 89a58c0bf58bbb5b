--- The event loop of a client: one I/O path blocking or in a coroutine, `step`,
-- `poll_timeout`, `wakeup`, `close` and the callback-style async calls. The life
-- of each call is `kie.lifecycle`'s.
-- @submodule kie.Client

local lifecycle = require "kie.lifecycle"

-- Modules only some programs use load on first use (memory for the others).
local files = setmetatable({}, { __index = function(proxy, k)
  local mod = require "kie.files"
  setmetatable(proxy, { __index = mod })
  return mod[k]
end })

local type, ipairs, tostring, error = type, ipairs, tostring, error
local huge = math.huge
local current = lifecycle.current

local Client = {}

-- The loop's state on a new client `self`.
Client._init_loop = lifecycle.init

-- Runs core method `name`: blocking, or in a kie.spawn coroutine as a transfer
-- the coroutine is parked on until step hands back its result. A create_task is
-- a paid transfer: canceled once started, it stays in flight (see kie.lifecycle).
function Client:_io(name, ...)
  local t = current()
  if t then
    return lifecycle.io(self, t, name == "create_task" and (...) or nil, name, ...)
  end
  local core = self._core
  return core[name](core, ...)
end

function Client:_sleep(seconds, blocking_sleep)
  local t = current()
  if t then return lifecycle.sleep(self, t, seconds) end
  if seconds > 0 then blocking_sleep(seconds) end
end

-- files.watch's errors in lifecycle's form ({err, traceback})
local function _watch(self, errs)
  local raised = {}
  files.watch(self, raised)
  for _, e in ipairs(raised) do
    errs = errs or {}
    errs[#errs + 1] = { e, "" }
  end
  return errs
end

--- Advances every transfer and timer: never blocks when `timeout_ms` is 0 (the
-- default), else waits at most that long for activity. Hands finished transfers
-- to their calls, resumes coroutines and fires callbacks. Returns how many
-- transfers, timers and callbacks are still pending (0 once the client is
-- closed). `step` never raises for the library's own state; when callbacks
-- raised, it raises once after every other callback ran, with an error of kind
-- `callback` whose `errors` holds every value raised in that step and
-- `tracebacks` their tracebacks (all of them in its message).
--
-- `budget_ms` (default: the client's `step_budget_ms`, 0.2 ms) bounds the work of
-- one step, for a game frame: half of it for reading answers off the sockets,
-- then, once the whole budget (by the client's clock) has passed since step
-- began, the work left (finished transfers to hand over, due timers, coroutines
-- to resume, callbacks to call) stays queued, in order, for the next step(s);
-- answers not read yet wait in their sockets. At least one piece of work is done
-- per step, so `budget_ms` 0 means one per step, and `math.huge` means no
-- budget. Queued work counts in the return value, and `poll_timeout()` is 0 while
-- any is queued (such a step does not wait).
-- @tparam[opt=0] integer timeout_ms
-- @tparam[opt] number budget_ms
-- @treturn integer transfers (running or queued), timers and callbacks pending
function Client:step(timeout_ms, budget_ms)
  if budget_ms == nil then
    budget_ms = self._opts.step_budget_ms
  elseif type(budget_ms) ~= "number" or budget_ms ~= budget_ms or budget_ms < 0 then
    error("step: budget_ms must be a number >= 0, got " .. tostring(budget_ms), 2)
  end
  if budget_ms == huge then budget_ms = nil end
  return lifecycle.step(self, timeout_ms or 0, budget_ms, self._watch and _watch)
end

--- Milliseconds a host loop may sleep before the next `step`, or nil when
-- nothing is pending (0 while a step budget has left work queued).
function Client:poll_timeout()
  return lifecycle.poll_timeout(self)
end

--- Interrupts a `step(timeout_ms)` that is blocking in another thread.
function Client:wakeup()
  if not self._closed then self._core:wakeup() end
end

--- Frees the connections. Every call still pending on the client ends at once,
-- exactly once: `canceled` (`cause = "closed"`), or `unknown_outcome` for a
-- create already sent. Their callbacks are called before `close` returns (when
-- `close` is called inside a step, by that step, after the callback that
-- closed); callback errors are raised after all ran, as `step` does. Later
-- steps return 0. Idempotent; the garbage collector frees the connections of a
-- client never closed.
function Client:close()
  lifecycle.close(self)
end

local function _async_body(self, name, a1, a2)
  return self[name](self, a1, a2)
end

-- Runs method `name` as self[name](self, a1, a2) in a task; cb(results) is
-- called once, from step (never inside the *_async call, and an error it raises
-- is collected by step after the other callbacks ran). Returns the handle.
function Client:_async(cb, name, a1, a2)
  if cb ~= nil and type(cb) ~= "function" then error("callback must be a function", 3) end
  -- as a blocking call on a closed client (its callback would have no step to run from)
  if self._closed then error("kie: the client is closed", 3) end
  local t = lifecycle.task(_async_body, cb, self)
  lifecycle.run(t, self, name, a1, a2)
  return t
end

return Client
