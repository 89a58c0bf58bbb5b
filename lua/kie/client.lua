--- The client: typed calls over kie.core with every policy of DESIGN.md:
-- validation before sending, retries that never double-charge, client-side rate
-- limits, waits with deadlines, a durable task journal, logging without the key,
-- and the same code blocking or inside `kie.spawn` coroutines.
-- @classmod kie.Client

local errors = require "kie.errors"
local models = require "kie.models"
local retry = require "kie.retry"
local ratelimit = require "kie.ratelimit"
local schedule = require "kie.schedule"
local scheduler = require "kie.scheduler"

-- Modules only some programs use load on first use (memory for the others).
local function _lazy(name)
  return setmetatable({}, { __index = function(proxy, k)
    local mod = require(name)
    setmetatable(proxy, { __index = mod })
    return mod[k]
  end })
end
local journal = _lazy "kie.journal"
local files = _lazy "kie.files"

local type, pairs, ipairs, tostring, setmetatable, pcall, error, select =
  type, pairs, ipairs, tostring, setmetatable, pcall, error, select
local getenv, ceil, huge, max = os.getenv, math.ceil, math.huge, math.max
local sort, concat, remove = table.sort, table.concat, table.remove
local unpack = table.unpack or unpack
local wrap = errors.wrap

local Client = {}
Client.__index = Client
Client.__name = "kie.Client"

local DEFAULTS = {
  base_url = "https://api.kie.ai",
  upload_url = "https://kieai.redpandaai.co",
  timeout = 30,
  connect_timeout = 10,
  max_retries = 4,
  max_response_bytes = 8 * 1024 * 1024,
  strict = true,
  step_budget_ms = 0.2,
}

-- kie.ai's published limits: 20 creates per 10 s per account, 10 status reads per s per key
local RATE_LIMITS = { create = { limit = 20, window = 10 }, poll = { limit = 10, window = 1 } }

-- option name -> Lua type it must have
local OPTION_TYPES = {
  api_key = "string", base_url = "string", upload_url = "string",
  timeout = "number", connect_timeout = "number", max_retries = "number",
  ca_file = "string", ca_path = "string", proxy = "string",
  max_response_bytes = "number", logger = "function", user_agent = "string",
  journal = "string", strict = "boolean", rate_limits = "table", retry = "table",
  now = "function", sleep = "function", random = "function",
  step_budget_ms = "number",
  core = "table", -- an injected core module (tests' fakes)
}

-- options handed to kie.core.new as they are
local CORE_OPTIONS = { "api_key", "base_url", "upload_url", "timeout", "connect_timeout",
  "ca_file", "ca_path", "proxy", "max_response_bytes", "user_agent" }

local function _env(name)
  local v = getenv(name)
  if v == "" then return nil end
  return v
end

local function _options(user)
  if user ~= nil and type(user) ~= "table" then
    error("kie.new: options must be a table", 3)
  end
  user = user or {}
  local o = {}
  for k, v in pairs(user) do
    local want = OPTION_TYPES[k]
    if not want then
      error("kie.new: unknown option '" .. tostring(k) .. "'", 3)
    end
    if type(v) ~= want and not (want == "table" and type(v) == "userdata") then
      error("kie.new: option '" .. k .. "' must be a " .. want .. ", got " .. type(v), 3)
    end
    o[k] = v
  end
  o.api_key = o.api_key or _env("KIE_API_KEY")
  o.base_url = o.base_url or _env("KIE_BASE_URL") or DEFAULTS.base_url
  o.upload_url = o.upload_url or _env("KIE_UPLOAD_URL") or DEFAULTS.upload_url
  for k, v in pairs(DEFAULTS) do
    if o[k] == nil then o[k] = v end
  end
  if not o.api_key or o.api_key == "" then
    error("kie.new: no API key: pass api_key or set KIE_API_KEY (keys: https://kie.ai/api-key)", 3)
  end
  if o.max_retries < 0 or o.max_retries % 1 ~= 0 then
    error("kie.new: option 'max_retries' must be a whole number >= 0", 3)
  end
  if o.step_budget_ms ~= o.step_budget_ms or o.step_budget_ms < 0 then
    error("kie.new: option 'step_budget_ms' must be a number >= 0", 3)
  end
  return o
end

local function _limiter(spec, default)
  if spec == false then return nil end
  spec = spec or default
  local ok, lim = pcall(ratelimit.new, { limit = spec.limit, window = spec.window, margin = spec.margin })
  if not ok then error("kie.new: option 'rate_limits': " .. tostring(lim), 4) end
  return lim
end

local function _policy(o, idempotent)
  local p = { max_retries = o.max_retries, idempotent = idempotent }
  for k, v in pairs(o.retry or {}) do
    if k == "max_retries" or k == "idempotent" then
      error("kie.new: option 'retry' sets base, cap, max_retry_after or rate_limit_floor", 4)
    end
    p[k] = v
  end
  local ok, pol = pcall(retry.policy, p)
  if not ok then error("kie.new: option 'retry': " .. tostring(pol), 4) end
  return pol
end

-- A redactor for server text the core hands over unredacted (a task's failMsg,
-- failCode): the key stays in the core; only its length and a salted HMAC of it
-- are kept, and every window of that length is compared by HMAC. nil when the
-- core cannot HMAC (a minimal fake core).
local function _redactor(core, key)
  local hmac = core.hmac_sha256_base64
  if type(hmac) ~= "function" or type(key) ~= "string" or key == "" then return nil end
  local salt = tostring({}) .. tostring(math.random()) .. tostring(os.time())
  local want, n = hmac(salt, key), #key
  return function(s)
    if type(s) ~= "string" or #s < n then return s end
    local out, i, from, last = {}, 1, 1, #s - n + 1
    while i <= last do
      if hmac(salt, s:sub(i, i + n - 1)) == want then
        out[#out + 1] = s:sub(from, i - 1)
        out[#out + 1] = "[redacted]"
        i = i + n
        from = i
      else
        i = i + 1
      end
    end
    if from == 1 then return s end
    out[#out + 1] = s:sub(from)
    return concat(out)
  end
end

--- Makes a client (see `kie.new`).
function Client.new(user)
  local o = _options(user)
  local core = o.core or require "kie.core"
  local copts = {}
  for _, k in ipairs(CORE_OPTIONS) do copts[k] = o[k] end
  local ok, handle = pcall(core.new, copts)
  if not ok then
    error((tostring(handle):gsub("^kie%.core%.new", "kie.new")), 2)
  end
  local redact = _redactor(core, o.api_key)
  o.api_key = nil -- kept only inside the core
  o.core = nil
  local limits = o.rate_limits or {}
  local self = setmetatable({
    _core = handle,
    _mod = core,
    _redact = redact,
    _opts = o,
    _create_policy = _policy(o, false),
    _read_policy = _policy(o, true),
    _create_lim = _limiter(limits.create, RATE_LIMITS.create),
    _poll_lim = _limiter(limits.poll, RATE_LIMITS.poll),
    _journal = o.journal and journal.open(o.journal, core) or nil,
    _parked = {},   -- transfer id -> spawned task waiting for it
    _timers = {},   -- sorted by .at: {at =, task =}
    _due = {},      -- tasks to resume at the next step, first come first (before any timer)
    _deferred = {}, -- functions to call at the next step
    _ready = { head = 1, tail = 0 }, -- FIFO of finished transfer ids not yet handed over
    _retry_loggers = {}, -- op -> on_retry function
  }, Client)
  local blocking_sleep = o.sleep or core.sleep
  self._blocking_sleep = blocking_sleep
  self._next_step = { client = self, wake = -huge } -- park a task until the next step
  self._env = {
    now = o.now or core.now,
    random = o.random or math.random,
    sleep = function(s) return self:_sleep(s, blocking_sleep) end,
  }
  return self
end

Client.VERSION = (function()
  local ok, core = pcall(require, "kie.core")
  return ok and core._VERSION or "0.1.0"
end)()

function Client:__tostring()
  return "kie.Client (" .. self._opts.base_url .. ")"
end

local function _check(v, want, what, level)
  if type(v) ~= want then
    error(what .. " must be a " .. want .. ", got " .. type(v), level or 3)
  end
end

-- logging ---------------------------------------------------------------------

function Client:_log(level, message, fields)
  local logger = self._opts.logger
  if not logger then return end
  local ok, err = pcall(logger, level, message, fields or {})
  if not ok and level ~= "error" then
    io.stderr:write("kie: logger raised: ", tostring(err), "\n")
  end
end

-- The on_retry function of retry.call for operation `op`: one per client and op,
-- made on first use.
local function _retry_logger(self, op)
  local cache = self._retry_loggers
  local f = cache[op]
  if f then return f end
  f = function(err, attempt, delay)
    if not self._opts.logger then return end
    self:_log("warn", op .. ": retrying after " .. err.kind, {
      op = op, attempt = attempt, delay = delay, kind = err.kind, status = err.status,
      code = err.code, message = err.message,
    })
  end
  cache[op] = f
  return f
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

-- the calls ----------------------------------------------------------------------

-- A stable digest of a request (sorted keys), for matching an unknown_outcome
-- create against kie.ai's logs or a later callback.
local function _canonical(v, out)
  local t = type(v)
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    sort(keys)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      out[#out + 1] = k .. "="
      local val = v[k]
      if val == nil then val = v[tonumber(k)] end
      _canonical(val, out)
      out[#out + 1] = ";"
    end
    out[#out + 1] = "}"
  else
    out[#out + 1] = t:sub(1, 1) .. tostring(v)
  end
  return out
end

function Client:_fingerprint(req)
  local canon = concat(_canonical(req, {}))
  local hmac = self._mod.hmac_sha256_base64
  if type(hmac) ~= "function" then -- a minimal injected core: a plain polynomial hash
    local h = 0
    for i = 1, #canon do h = (h * 31 + canon:byte(i)) % 4294967296 end
    return string.format("%08x", h)
  end
  local digest = hmac("kie-request-fingerprint", canon)
  return (digest:gsub("[+/=]", ""):sub(1, 24))
end

-- One attempt of create_task (retry.call2's fn).
local function _create_attempt(self, req)
  local env, lim = self._env, self._create_lim
  if lim then lim:acquire(env) end
  if self._opts.logger then self:_log("debug", "request", { op = "create_task", model = req.model }) end
  local r, e = self:_io("create_task", req)
  if not r and lim and e.kind == "rate_limited" then lim:fill(env.now()) end
  return r, e
end

--- Creates a task: validates it (see `kie.models`), paces it within kie.ai's
-- create limit, and retries only when the request surely never reached the server
-- (or the server rejected it with 429/455). A create that may have reached it
-- returns `unknown_outcome` with `fingerprint`; it is never resent. With a
-- journal, the new taskId is on disk before this returns.
-- @tparam table request `{model = ..., callBackUrl = ..., input = {...}}`
-- @tparam[opt] table opts `strict` (false lets unknown input fields through)
-- @treturn table `{taskId = ...}` or `nil, err`
function Client:create_task(request, opts)
  if type(request) ~= "table" then _check(request, "table", "create_task: request") end
  local strict = self._opts.strict
  if opts ~= nil then
    _check(opts, "table", "create_task: opts")
    if opts.strict ~= nil then strict = opts.strict end
  end
  local req, verr
  if strict == true or strict == false then
    req, verr = models.check(request, strict)
  else
    req, verr = models.validate(request, { strict = strict }) -- raises: not a boolean
  end
  if not req then
    self:_log("warn", "create_task: invalid request", { op = "create_task", message = verr.message })
    return nil, verr
  end
  local res, err = retry.call2(self._create_policy, self._env,
    self._retry_loggers.create_task or _retry_logger(self, "create_task"), nil, _create_attempt, self, req)
  if not res then
    err = wrap(err)
    if err.kind == "unknown_outcome" then
      err.fingerprint = self:_fingerprint(req)
      err.model = req.model
    end
    self:_log("error", "create_task failed: " .. err.kind, { op = "create_task", kind = err.kind,
      message = err.message, fingerprint = err.fingerprint })
    return nil, err
  end
  if self._journal then
    local ok, msg = self._journal:created(res.taskId, req.model)
    if not ok then
      -- the task exists and is paid for: return it all the same, loudly
      res.journal_error = msg
      self:_log("error", "journal write failed: " .. tostring(msg), { task_id = res.taskId })
    end
  end
  if self._opts.logger then
    self:_log("info", "task created", { op = "create_task", task_id = res.taskId, model = req.model })
  end
  return res
end

-- Waits for a slot of limiter `lim` like lim:acquire(env), but never past
-- `deadline`: returns false (nothing taken) when the slot comes too late.
local function _acquire_by(lim, env, deadline)
  if not deadline then lim:acquire(env) return true end
  while true do
    local now = env.now()
    local d = lim:delay(now)
    if d <= 0 then lim:take(now) return true end
    if now + d > deadline then return false end
    env.sleep(d)
  end
end

-- An idempotent read: paced by the poll limiter, retried with backoff. With a
-- deadline (wait), neither the limiter nor a retry sleeps past it.
-- Calls self:_io(name, ...) with exactly `n` of the arguments a1..a5.
local function _io_n(self, name, n, a1, a2, a3, a4, a5)
  if n == 1 then return self:_io(name, a1) end
  if n == 0 then return self:_io(name) end
  if n == 2 then return self:_io(name, a1, a2) end
  if n == 3 then return self:_io(name, a1, a2, a3) end
  if n == 4 then return self:_io(name, a1, a2, a3, a4) end
  return self:_io(name, a1, a2, a3, a4, a5)
end

-- One attempt of a read (retry.call2's fn): `n` arguments in `args`, a table (the
-- one argument itself when n is 1).
local function _read_attempt(self, op, deadline, name, n, args)
  local env, lim = self._env, self._poll_lim
  if lim and not _acquire_by(lim, env, deadline) then
    return nil, errors.new("rate_limited", op .. ": the client-side read limit would delay "
      .. "this request past the deadline; not sent", { op = op, client_side = true,
      retry_after = lim:delay(env.now()) })
  end
  if self._opts.logger then self:_log("debug", "request", { op = op }) end
  local r, e
  if n == 1 and deadline and name == "get_task" then
    -- the read's own timeout never carries wait past its deadline
    r, e = self:_io(name, args, max(deadline - env.now(), 0.001))
  elseif n == 1 then
    r, e = self:_io(name, args)
  elseif n <= 5 then
    r, e = _io_n(self, name, n, args[1], args[2], args[3], args[4], args[5])
  else
    r, e = self:_io(name, unpack(args, 1, n))
  end
  if r == nil and lim and e.kind == "rate_limited" then lim:fill(env.now()) end
  return r, e
end

local NO_ARGS = {}

function Client:_read(op, deadline, name, ...)
  local n = select("#", ...)
  local args
  if n == 1 then args = ...
  elseif n == 0 then args = NO_ARGS
  else args = { ... } end
  local res, err = retry.call2(self._read_policy, self._env, self._retry_loggers[op] or _retry_logger(self, op),
    deadline, _read_attempt, self, op, deadline, name, n, args)
  if res == nil then return nil, wrap(err) end
  return res
end

function Client:_get(task_id, deadline)
  local info, err = self:_read("get_task", deadline, "get_task", task_id)
  local redact = self._redact
  if redact and type(info) == "table" then -- these reach task_failed errors and logs
    local msg, code = info.failMsg, info.failCode
    if msg ~= "" and type(msg) == "string" then info.failMsg = redact(msg) end
    if code ~= "" and type(code) == "string" then info.failCode = redact(code) end
  end
  if info and self._journal and (info.state == "success" or info.state == "fail") then
    self._journal:finished(task_id, info.state)
  end
  return info, err
end

--- Reads a task (recordInfo): the API's data table with `param` and
-- `resultJson` decoded and `resultUrls` (a list, empty until success).
-- Retried on network errors, 5xx, 429 and 455.
-- @tparam string task_id
function Client:get_task(task_id)
  if type(task_id) ~= "string" then _check(task_id, "string", "get_task: task_id") end
  return self:_get(task_id)
end

local WAIT_OPTIONS = { timeout = "number", interval = "number", max_interval = "number",
  on_update = "function" }

--- Polls a task on kie.ai's published schedule (2–3 s for the first 30 s, 5–10 s
-- until 2 min, 15–30 s after, with jitter) until it ends or the deadline passes.
-- Returns the finished task, or `nil, err`: `task_failed` (failCode, failMsg),
-- `deadline` (state = last seen), or a non-retryable error.
-- @tparam string task_id
-- @tparam[opt] table opts `timeout` (900 s), `interval`, `max_interval`,
-- `on_update(info)` (once per state change)
function Client:wait(task_id, opts)
  _check(task_id, "string", "wait: task_id")
  opts = opts or {}
  _check(opts, "table", "wait: opts")
  for k, v in pairs(opts) do
    if not WAIT_OPTIONS[k] then error("wait: unknown option '" .. tostring(k) .. "'", 2) end
    _check(v, WAIT_OPTIONS[k], "wait: option '" .. k .. "'")
  end
  local timeout = opts.timeout or 900
  local deadline = self._env.now() + timeout
  local user_update = opts.on_update
  local info, err = schedule.wait(function(id) return self:_get(id, deadline) end, task_id, {
    timeout = timeout, interval = opts.interval, max_interval = opts.max_interval,
    on_update = function(i)
      self:_log("info", "task state", { task_id = task_id, state = i.state })
      if user_update then user_update(i) end
    end,
  }, self._env)
  if not info and self._journal and err.kind == "task_failed" then
    self._journal:finished(task_id, "fail")
  end
  return info, err
end

--- Validates, creates and waits: `client:run{model =, input =, callBackUrl =,
-- wait = {...}, strict = bool, upload = {...}}`. Returns the finished task or
-- `nil, err`; an error after the task was created carries its `task_id`.
--
-- Local files: an image field of `input` (`image_url`, `mask_url`,
-- `reference_image_urls[i]`, `image_urls[i]`, `reference_mask_urls`) that is not
-- an http(s) URL but names an existing local file is uploaded first (see
-- `upload`; `upload` holds its options) and replaced by its `downloadUrl`.
-- `create_task` itself stays strict: it sends exactly one request and takes URLs
-- only.
function Client:run(request)
  _check(request, "table", "run: request")
  local req = {}
  for k, v in pairs(request) do
    if k ~= "wait" and k ~= "strict" and k ~= "upload" then req[k] = v end
  end
  if request.upload ~= nil then _check(request.upload, "table", "run: request.upload") end
  local lerr
  req, lerr = files.resolve_local(self, req, request.upload)
  if not req then return nil, lerr end
  local task, err = self:create_task(req, { strict = request.strict })
  if not task then return nil, err end
  local info, werr = self:wait(task.taskId, request.wait)
  if not info then
    werr.task_id = werr.task_id or task.taskId
    return nil, werr
  end
  return info
end

--- Runs many requests at once (each as `run` would) within the client's rate
-- limits, and returns `results, errs` indexed like the input: `results[i]` is the
-- finished task or nil; `errs` is nil when every item succeeded, else `errs[i]` is
-- item i's error. One failure does not stop the others. Blocking, or yielding
-- inside `kie.spawn`.
-- @tparam table requests a list of `run` requests
-- @tparam[opt] table opts `concurrency` (default 8), `on_update(i, info)` on each
-- state change of item i
function Client:run_all(requests, opts)
  _check(requests, "table", "run_all: requests")
  opts = opts or {}
  _check(opts, "table", "run_all: opts")
  local conc = opts.concurrency or 8
  if type(conc) ~= "number" or conc < 1 or conc % 1 ~= 0 then
    error("run_all: concurrency must be a whole number >= 1", 2)
  end
  local on_update = opts.on_update
  if on_update ~= nil then _check(on_update, "function", "run_all: on_update") end
  local n = #requests
  for i = 1, n do _check(requests[i], "table", "run_all: request " .. i) end
  local results, errs, failed = {}, {}, false
  local next_i, finished, workers = 0, 0, conc < n and conc or n
  local parent, parent_req = scheduler.current(), nil

  local function item(i)
    local req = requests[i]
    if on_update then
      req = {}
      for k, v in pairs(requests[i]) do req[k] = v end
      local w = {}
      for k, v in pairs(req.wait or {}) do w[k] = v end
      local inner = w.on_update
      w.on_update = function(info)
        if inner then inner(info) end
        on_update(i, info)
      end
      req.wait = w
    end
    return self:run(req)
  end

  local function worker_done(cur)
    return function(_, err)
      if err and cur.i then -- the worker raised while running item cur.i
        errs[cur.i], failed = err, true
      end
      finished = finished + 1
      if finished == workers and parent_req then
        self:_unpark(parent, parent_req)
        self:_defer(function() scheduler.resume(parent) end)
      end
    end
  end

  for _ = 1, workers do
    local cur = {}
    scheduler.start(function()
      while next_i < n do
        next_i = next_i + 1
        local i = next_i
        cur.i = i
        local r, e = item(i)
        results[i] = r
        if r == nil then errs[i], failed = e, true end
      end
      cur.i = nil
    end, worker_done(cur))
  end
  if parent then
    if finished < workers then
      parent_req = { client = self, wake = huge }
      scheduler.wait_for(parent_req)
    end
  else
    while finished < workers do
      local ms = self:poll_timeout()
      if ms and ms > 0 and self._core:pending() == 0 then
        -- only timers are due: sleep with the client's own (maybe injected) sleep
        self._blocking_sleep(ms / 1000)
        ms = 0
      end
      self:step(ms and (ms < 100 and ms or 100) or 100)
    end
  end
  return results, failed and errs or nil
end

--- The journal's unfinished tasks: `{ {taskId =, model =, created =}, ... }`, so a
-- restarted process can `wait` on them instead of paying again.
function Client:resume()
  if not self._journal then
    error("resume: no journal configured (kie.new{journal = path})", 2)
  end
  return self._journal:unfinished()
end

--- Remaining credits (a number) or `nil, err`.
function Client:credits()
  local res, err = self:_read("credits", nil, "call", "GET", "/api/v1/chat/credit")
  if res == nil then return nil, err end
  if type(res) ~= "number" then
    return nil, errors.new("protocol", "credits: data is not a number",
      { op = "credits", status = 200 }) -- a 2xx code-200 answer did arrive
  end
  return res
end

--- A temporary (20-minute) download link for a kie.ai-generated file URL.
-- @tparam string url
function Client:download_url(url)
  _check(url, "string", "download_url: url")
  local res, err = self:_read("download_url", nil, "call", "POST", "/api/v1/common/download-url",
    { url = url })
  if res == nil then return nil, err end
  if type(res) ~= "string" then
    return nil, errors.new("protocol", "download_url: data is not a URL string",
      { op = "download_url", status = 200 })
  end
  return res
end

local DOWNLOAD_CAP = 100 * 1024 * 1024

local function _expired(err)
  return err.kind == "not_found" or (err.kind == "http" and (err.status == 403 or err.status == 410))
end

--- Downloads `url` to `path` atomically: the body goes to a temporary file in
-- the same directory, renamed over `path` only when complete. The API key is
-- never sent with a download. When the link has expired (403/404/410), a fresh
-- one is asked from `download_url` and tried once. Returns `path` or `nil, err`.
-- @tparam string url
-- @tparam string path
-- @tparam[opt] table opts `max_bytes` (default 100 MiB), `refresh` (default true),
-- `progress` (`function(bytes_so_far, total_or_nil)`: called from Lua between
-- transfer steps whenever the count changed, and once at the end with the final
-- size; it restarts from 0 when a refreshed link is tried; see `kie.files`)
function Client:download(url, path, opts)
  _check(url, "string", "download: url")
  _check(path, "string", "download: path")
  opts = opts or {}
  local cap = opts.max_bytes or DOWNLOAD_CAP
  local rep = opts.progress ~= nil and files.reporter(opts.progress) or nil
  if rep then _check(opts.progress, "function", "download: opts.progress") end
  local tmp = path .. ".part-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e9))
  local ok, err = files.io(self, Client._io, rep, "fetch", url, tmp, cap)
  if not ok and opts.refresh ~= false and _expired(err) then
    local fresh = self:download_url(url)
    if fresh then ok, err = files.io(self, Client._io, rep, "fetch", fresh, tmp, cap) end
  end
  if ok and rep then rep.finish(err) end -- err is the byte count here
  if not ok then
    os.remove(tmp)
    return nil, wrap(err)
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    return nil, errors.new("io", "download: cannot move the file into place: " .. tostring(rerr),
      { op = "download" })
  end
  return path
end

--- Uploads a file to kie.ai's File Upload API (`upload_url`) and returns its
-- `data`: `downloadUrl` (use it as an image URL), `fileName`, `filePath`,
-- `fileSize`, `mimeType`, `uploadedAt`; or `nil, err`. A path is checked first
-- (exists: else `io`; at most `max_bytes` and a JPEG/PNG/WebP by its magic
-- bytes: else `validation`) and then streamed from disk; `{data = bytes,
-- file_name = ...}` goes as Base64 (10 MiB at most); `{url = ...}` lets the
-- upload host fetch it. Retried like reads. See `kie.files`.
-- @tparam string|table src a path, `{data = ..., file_name = ...}` or `{url = ...}`
-- @tparam[opt] table opts `upload_path` (default "kie-lua"), `file_name`,
-- `max_bytes`, `timeout` (stream upload; default timeout + 1 s per MiB)
-- @treturn table the upload's data, or `nil, err`
function Client:upload(src, opts)
  return files.upload(self, src, opts)
end

-- callback-style async calls: cb(result, err) once, from step --------------------

--- `create_task` without blocking: returns a handle (`cancel`, `done`, `result`);
-- `cb(task, err)` is called once from `step`.
function Client:create_task_async(request, cb)
  _check(request, "table", "create_task_async: request")
  return self:_async(cb, "create_task", request)
end

--- `get_task` without blocking (see `create_task_async`).
function Client:get_task_async(task_id, cb)
  _check(task_id, "string", "get_task_async: task_id")
  return self:_async(cb, "get_task", task_id)
end

--- `wait` without blocking (see `create_task_async`).
function Client:wait_async(task_id, opts, cb)
  _check(task_id, "string", "wait_async: task_id")
  return self:_async(cb, "wait", task_id, opts)
end

--- `run` without blocking (see `create_task_async`).
function Client:run_async(request, cb)
  _check(request, "table", "run_async: request")
  return self:_async(cb, "run", request)
end

--- Frees the connections. Idempotent; also done by the garbage collector.
function Client:close()
  self._core:close()
end

return Client
