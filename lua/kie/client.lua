--- The client: typed calls over kie.core with every policy of DESIGN.md:
-- validation before sending, retries that never double-charge, client-side rate
-- limits, waits with deadlines, a durable task journal, logging without the key,
-- and the same code blocking or inside `kie.spawn` coroutines.
-- @classmod kie.Client

local errors = require "kie.errors"
local models = require "kie.models"
local retry = require "kie.retry"
local schedule = require "kie.schedule"
local options = require "kie.options"
local redactor = require "kie.redact"
local paid = require "kie.paid"
local seed = require "kie.seed"

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
local wake = _lazy "kie.wake"

local type, pairs, ipairs, tostring, setmetatable, pcall, error, select =
  type, pairs, ipairs, tostring, setmetatable, pcall, error, select
local max, huge = math.max, math.huge
local unpack = table.unpack or unpack
local wrap = errors.wrap
local _check = options.check
local _options, _limiter, _policy = options.parse, options.limiter, options.policy
local RATE_LIMITS, CORE_OPTIONS = options.RATE_LIMITS, options.CORE_OPTIONS

local Client = {}
Client.__index = Client
Client.__name = "kie.Client"

-- the methods of each concern, mixed in: logging, the event loop, run_all,
-- callbacks, fleet batches
for _, name in ipairs { "kie.log", "kie.loop", "kie.batch", "kie.deliver", "kie.fleet_batch" } do
  for k, v in pairs(require(name)) do Client[k] = v end
end
local _retry_logger = Client._retry_logger

--- Makes a client (see `kie.new`).
function Client.new(user)
  local o = _options(user)
  seed.ensure() -- once per process: a forked nginx worker seeds its own jitter
  local core = o.core or require "kie.core"
  local copts = {}
  for _, k in ipairs(CORE_OPTIONS) do copts[k] = o[k] end
  local ok, handle = pcall(core.new, copts)
  if not ok then
    error((tostring(handle):gsub("^kie%.core%.new", "kie.new")), 2)
  end
  local redact = redactor(core, o.api_key, handle)
  o.api_key = nil -- kept only inside the core
  o.core = nil
  local limits = o.rate_limits or {}
  local fleet = options.fleet(o.fleet) -- pacing shared through Redis (kie.fleet)
  local file = o.journal and journal.open(o.journal, core) or nil
  local self = setmetatable({
    _core = handle,
    _mod = core,
    _redact = redact,
    _opts = o,
    _create_policy = _policy(o, false),
    _read_policy = _policy(o, true),
    _fleet = fleet,
    _create_lim = options.shared(fleet, "create", _limiter(limits.create, RATE_LIMITS.create, o.timeout)),
    _poll_lim = options.shared(fleet, "poll", _limiter(limits.poll, RATE_LIMITS.poll, o.timeout)),
    -- with a fleet, the journal is in Redis (kie.fleet_journal), the file its write-ahead record
    _journal = fleet and fleet:journal(file) or file,
    _retry_loggers = {}, -- op -> on_retry function
  }, Client)
  local blocking_sleep = o.sleep or core.sleep
  self._blocking_sleep = blocking_sleep
  self:_init_loop()
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

-- the calls ----------------------------------------------------------------------

-- One attempt of create_task (retry.call2's fn) for paid call `ctx`: the intent
-- goes to the journal right before the first request is sent.
local function _create_attempt(self, ctx, req)
  local env, lim = self._env, self._create_lim
  local slot, ferr
  if lim then
    slot, ferr = lim:acquire(env) -- held until the answer (kie.ratelimit)
    if not slot then return nil, ferr end -- a fleet's Redis failed: nothing sent
  end
  if self._journal and not ctx.intent then
    local ok, jerr = paid.intend(self, ctx)
    if not ok then
      if lim then lim:release(slot, env.now(), false) end
      return nil, jerr
    end
    if self._fleet then paid.tag_callback(req, "kie_intent", ctx.intent) end
  end
  if self._opts.logger then self:_log("debug", "request", { op = "create_task", model = req.model }) end
  ctx.slot = slot -- a cancel leaves the answer to _on_orphan, which releases it
  local r, e = self:_io("create_task", req)
  ctx.slot = nil
  if lim then lim:release(slot, env.now(), not r and e.kind == "rate_limited") end
  return r, e
end

-- The answer of a create canceled after it was sent (kie.lifecycle reads it in
-- the background), or read but not handed over when the client was closed: it
-- settles the paid call like any other answer (a task id resolves the intent in
-- the journal; a lost answer leaves it unknown).
function Client:_on_orphan(req, res, err)
  local ctx = paid.of(req) or paid.new(self, req)
  if ctx.slot and self._create_lim then -- its rate-limit slot counts from this answer
    self._create_lim:release(ctx.slot, self._env.now(), err ~= nil and err.kind == "rate_limited")
    ctx.slot = nil
  end
  if type(res) ~= "table" or not res.taskId then
    paid.settle(self, ctx, req, nil, err or errors.new("protocol", "create_task: answer without a task"))
    self:_log("warn", "create_task: a canceled create was answered without a task", {
      op = "create_task", model = req.model, kind = err and err.kind, message = err and err.message })
    return
  end
  paid.settle(self, ctx, req, res)
  self:_log("info", "task created by a canceled (or closed) create", { op = "create_task",
    task_id = res.taskId, model = req.model })
end

-- The unknown_outcome of a create canceled or closed after it was sent
-- (kie.lifecycle): the paid call's fingerprint, model and intent.
function Client:_on_unknown(req, err)
  return paid.unknown(self, req, err)
end

--- Creates a task: validates it (see `kie.models`), paces it within kie.ai's
-- create limit, and retries only when the request surely never reached the server
-- (or the server rejected it with 429/455). A create that may have reached it
-- returns `unknown_outcome` with `fingerprint`; it is never resent. With a
-- journal, the intent is on disk before the request is sent and the new taskId
-- before this returns (see `kie.paid`); an intent that cannot be written sends
-- nothing (`io`).
-- @tparam table request `{model = ..., callBackUrl = ..., input = {...}}`
-- @tparam[opt] table opts `strict` (false lets unknown input fields through)
-- @treturn table `{taskId = ...}` or `nil, err`
function Client:create_task(request, opts)
  if type(request) ~= "table" then _check(request, "table", "create_task: request") end
  local strict = self._opts.strict
  if opts ~= nil then
    _check(opts, "table", "create_task: opts")
    for k in pairs(opts) do
      if k ~= "strict" then error("create_task: unknown option '" .. tostring(k) .. "'", 2) end
    end
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
  local ctx = paid.new(self, req)
  local res, err = retry.call2(self._create_policy, self._env,
    self._retry_loggers.create_task or _retry_logger(self, "create_task"), nil, _create_attempt, self, ctx, req)
  res, err = paid.settle(self, ctx, req, res, err)
  if not res then
    self:_log("error", "create_task failed: " .. err.kind, { op = "create_task", kind = err.kind,
      message = err.message, fingerprint = err.fingerprint })
    return nil, err
  end
  if self._opts.logger then
    self:_log("info", "task created", { op = "create_task", task_id = res.taskId, model = req.model })
  end
  wake.created(self, res.taskId, req.model, req.callBackUrl ~= nil) -- where its waits poll
  return res
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
-- one argument itself when n is 1). `by` (a wait's) is nil or `{send_by =,
-- deadline =, env =}`: no request starts after send_by, none runs past deadline;
-- its sleeps go through `env` when set (a fleet wait's, which renews its lease).
local function _read_attempt(self, op, by, name, n, args)
  local env, lim = by and by.env or self._env, self._poll_lim
  local slot, wait
  if lim then
    slot, wait = lim:acquire(env, by and by.send_by)
    if not slot and type(wait) == "table" then return nil, wait end -- kind fleet
    if not slot then
      return nil, errors.new("rate_limited", op .. ": the client-side read limit would delay "
        .. "this request past the deadline; not sent", { op = op, client_side = true,
        retry_after = wait })
    end
  end
  local left
  if by and n == 1 and name == "get_task" then
    -- the read's own timeout never carries wait past its deadline
    left = by.deadline - env.now()
    if left <= 0 then
      if lim then lim:release(slot, env.now(), false) end
      return nil, errors.new("timeout", op .. ": no time left before the deadline; not sent",
        { op = op, not_sent = true })
    end
  end
  if self._opts.logger then self:_log("debug", "request", { op = op }) end
  local r, e
  if left then
    r, e = self:_io(name, args, left)
  elseif n == 1 then
    r, e = self:_io(name, args)
  elseif n <= 5 then
    r, e = _io_n(self, name, n, args[1], args[2], args[3], args[4], args[5])
  else
    r, e = self:_io(name, unpack(args, 1, n))
  end
  if lim then lim:release(slot, env.now(), r == nil and e.kind == "rate_limited") end
  return r, e
end

local NO_ARGS = {}

-- `by`: nil, or a wait's `{send_by =, deadline =}` (see _read_attempt); no retry
-- starts after send_by.
function Client:_read(op, by, name, ...)
  local n = select("#", ...)
  local args
  if n == 1 then args = ...
  elseif n == 0 then args = NO_ARGS
  else args = { ... } end
  local res, err = retry.call2(self._read_policy, by and by.env or self._env,
    self._retry_loggers[op] or _retry_logger(self, op), by and by.send_by, _read_attempt, self, op, by, name, n, args)
  if res == nil then return nil, wrap(err) end
  return res
end

function Client:_get(task_id, by)
  local info, err = self:_read("get_task", by, "get_task", task_id)
  local redact = self._redact
  if redact and type(info) == "table" then -- these reach task_failed errors and logs
    local msg, code = info.failMsg, info.failCode
    if msg ~= "" and type(msg) == "string" then info.failMsg = redact(msg) end
    if code ~= "" and type(code) == "string" then info.failCode = redact(code) end
  end
  local j = self._journal
  if j then
    if info and (info.state == "success" or info.state == "fail") then
      j:finished(task_id, info.state)
    elseif not info and err.kind == "not_found" and err.code == 404 then
      j:finished(task_id, "not_found") -- kie.ai no longer knows the task: it ends here
    end
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

-- Raises (at `level`) unless `opts` is nil or wait's options: names, types and
-- values (timeout >= 0; interval, max_interval > 0). `what` names the call.
local function _check_wait(opts, what, level)
  if opts == nil then return end
  if type(opts) ~= "table" then error(what .. ": opts must be a table, got " .. type(opts), level) end
  for k, v in pairs(opts) do
    local want = WAIT_OPTIONS[k]
    if not want then error(what .. ": unknown option '" .. tostring(k) .. "'", level) end
    if type(v) ~= want then
      error(what .. ": option '" .. k .. "' must be a " .. want .. ", got " .. type(v), level)
    end
  end
  local t, i, mi = opts.timeout, opts.interval, opts.max_interval
  if t ~= nil and (t ~= t or t < 0) then error(what .. ": option 'timeout' must be a number >= 0", level) end
  if i ~= nil and (i ~= i or i <= 0) then error(what .. ": option 'interval' must be a number > 0", level) end
  if mi ~= nil and (mi ~= mi or mi <= 0) then
    error(what .. ": option 'max_interval' must be a number > 0", level)
  end
end

-- Raises (at `level`) unless `request` is a table whose run options (`wait`,
-- `upload`, `strict`) are right: run, run_async and run_all check them all
-- before the first request, so nothing is paid for and then lost to a typo.
function Client._check_run(_, request, what, level)
  if type(request) ~= "table" then
    error(what .. " must be a table, got " .. type(request), level)
  end
  _check_wait(request.wait, what .. ": wait", level + 1)
  if request.upload ~= nil then files.check_options(request.upload, what .. ": upload", level + 1) end
  local strict = request.strict
  if strict ~= nil and type(strict) ~= "boolean" then
    error(what .. ": strict must be a boolean, got " .. type(strict), level)
  end
end

--- Waits until a task ends or the deadline passes. A callback handed to
-- `deliver` (this client's, or with `fleet` any client of the fleet) ends its
-- sleep at once; it then confirms with one `get_task`. Its polls go where the
-- task likely ended: for a task this client (or fleet) created, after the
-- recent run times of its model (`kie.schedule.expected`; with a `callBackUrl`,
-- only once the callback is late); else on kie.ai's published schedule (2–3 s
-- for the first 30 s, 5–10 s until 2 min, 15–30 s after, with jitter; also
-- when `interval` is given).
-- Returns the finished task, or `nil, err`: `task_failed` (failCode, failMsg),
-- `deadline` (state = last seen), or a non-retryable error.
-- @tparam string task_id
-- @tparam[opt] table opts `timeout` (900 s), `interval`, `max_interval`,
-- `on_update(info)` (once per state change)
function Client:wait(task_id, opts)
  _check(task_id, "string", "wait: task_id")
  _check_wait(opts, "wait", 3)
  opts = opts or {}
  local timeout = opts.timeout or 900
  -- no poll goes out that could not be answered before the deadline: the last
  -- one leaves it min(schedule.min_read, timeout / 2) seconds
  local reserve = timeout / 2
  if reserve > schedule.min_read then reserve = schedule.min_read end
  local deadline = self._env.now() + timeout
  local by = { send_by = deadline - reserve, deadline = deadline }
  local user_update = opts.on_update
  local placed = opts.interval == nil -- an interval asked for keeps kie.ai's schedule
  local j, env = self._journal, self._env
  local leased = j and j.lease -- a fleet's journal: the task is leased while this waits
  local renew -- (leased) renews the lease when due; seconds to its next renewal
  if leased then
    local ok, lerr = j:lease(task_id)
    if not ok then
      lerr.task_id = task_id
      return nil, lerr
    end
    renew = j:renewer(task_id, env.now, function(...) return self:_log(...) end)
    env = j:renewing(env, renew)
    by.env = env -- the read's pacing and retry sleeps renew it too
  end
  local w = wake.start(self, task_id) -- callbacks end its sleeps; where its polls go
  local now = env.now
  local function nap(s) return wake.nap(self, w, s) end -- until the next poll or a callback
  if renew then nap = j:renewing({ now = now, sleep = nap }, renew).sleep end
  local info, err = schedule.wait(function(id) return self:_get(id, by) end, task_id, {
    timeout = timeout, interval = opts.interval, max_interval = opts.max_interval, reserve = reserve,
    first = placed and w.first or nil, delay = placed and w.delay or nil,
    on_update = function(i)
      self:_log("info", "task state", { task_id = task_id, state = i.state })
      if user_update then user_update(i) end
    end,
  }, { now = now, random = env.random, sleep = nap })
  wake.stop(self, w, info)
  if not info and j and err.kind == "task_failed" then
    j:finished(task_id, "fail")
  end
  if leased and not info and err.kind ~= "task_failed" and err.kind ~= "not_found" then
    j:release(task_id) -- no terminal state: another client may take it over at once
  end
  return info, err
end

--- Validates, creates and waits: `client:run{model =, input =, callBackUrl =,
-- wait = {...}, strict = bool, upload = {...}}`. Returns the finished task or
-- `nil, err`; an error after the task was created carries its `task_id`.
--
-- Local files are never implied: a `kie.file(path)` (or `kie.file{data =, file_name =}`)
-- in an image field of `input` (`image_url`, `mask_url`, `reference_image_urls[i]`,
-- `image_urls[i]`, `reference_mask_urls`) is uploaded first (see `upload`;
-- `upload` holds its options) and replaced by its `downloadUrl`; a plain string
-- there that is not an http(s) URL is a `validation` error (see `kie.files`).
-- `create_task` itself stays strict: it sends exactly one request and takes URLs
-- only.
function Client:run(request)
  self:_check_run(request, "run: request", 3)
  local req = {}
  for k, v in pairs(request) do
    if k ~= "wait" and k ~= "strict" and k ~= "upload" then req[k] = v end
  end
  local lerr
  local strict = request.strict
  if strict == nil then strict = self._opts.strict end
  req, lerr = files.resolve_local(self, req, request.upload, strict) -- nothing uploaded for an invalid request
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

--- The journal's unfinished tasks and unresolved creates, oldest first, so a
-- restarted process can `wait` on them instead of paying again: `{taskId =,
-- model =, created = <epoch s>}` for a task; `{unknown = true, fingerprint =,
-- model =, created =, intent =}` for a create whose outcome is unknown (sent,
-- answer never read: check kie.ai's logs or your callback, then `forget` it).
-- A task ends when `get_task`/`wait` sees `success`, `fail` or a 404.
--
-- In fleet mode it claims, atomically, the fleet's entries whose lease lapsed
-- (their process died) or that nobody holds, and lists those and the ones this
-- client holds already (see `kie.fleet_journal`); `nil, err` (kind `fleet`)
-- when Redis fails.
function Client:resume()
  if not self._journal then
    error("resume: no journal configured (kie.new{journal = path})", 2)
  end
  return self._journal:unfinished()
end

--- Ends one entry of `resume()` by writing a record: a task id, an intent id, or
-- a fingerprint (the oldest unresolved create with it). Returns true when one
-- was ended, false when nothing unfinished matches `id`, or `nil, err` (kind
-- `io`) when the journal cannot be written.
-- @tparam string id
function Client:forget(id)
  _check(id, "string", "forget: id")
  if not self._journal then
    error("forget: no journal configured (kie.new{journal = path})", 2)
  end
  local ok, msg = self._journal:forget(id)
  if ok == nil and type(msg) == "table" then return nil, msg end -- kind fleet
  if ok == nil then
    return nil, errors.new("io", "forget: the journal cannot be written: " .. tostring(msg),
      { op = "forget" })
  end
  return ok
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
local DOWNLOAD_TIMEOUT = 300 -- seconds, the whole transfer (or the client's timeout, when longer)
local NO_CAP = 2 ^ 53        -- what max_bytes = math.huge means: bytes no file reaches

local DOWNLOAD_OPTIONS = { max_bytes = "number", refresh = "boolean", progress = "function",
  timeout = "number" }

-- download's options, checked: returns the byte cap and the timeout.
local function _download_opts(self, opts)
  if opts == nil then return DOWNLOAD_CAP, max(DOWNLOAD_TIMEOUT, self._opts.timeout) end
  if type(opts) ~= "table" then error("download: opts must be a table, got " .. type(opts), 3) end
  for k, v in pairs(opts) do
    local want = DOWNLOAD_OPTIONS[k]
    if not want then error("download: unknown option '" .. tostring(k) .. "'", 3) end
    if type(v) ~= want then
      error("download: option '" .. k .. "' must be a " .. want .. ", got " .. type(v), 3)
    end
  end
  local cap, timeout = opts.max_bytes, opts.timeout
  if cap == huge then
    cap = NO_CAP
  elseif cap == nil then
    cap = DOWNLOAD_CAP
  elseif cap ~= cap or cap < 1 or cap % 1 ~= 0 or cap > NO_CAP then
    error("download: option 'max_bytes' must be a whole number of bytes from 1 to 2^53, "
      .. "or math.huge (no cap), got " .. tostring(cap), 3)
  end
  if timeout == nil then
    timeout = max(DOWNLOAD_TIMEOUT, self._opts.timeout)
  elseif timeout ~= timeout or timeout <= 0 or timeout == huge then
    error("download: option 'timeout' must be a finite number of seconds > 0, got " .. tostring(timeout), 3)
  end
  return cap, timeout
end

local function _expired(err)
  return err.kind == "not_found" or (err.kind == "http" and (err.status == 403 or err.status == 410))
end

--- Downloads `url` to `path` atomically: the body goes to a temporary file in
-- the same directory, renamed over `path` only when complete. The API key is
-- never sent with a download. When the link has expired (403/404/410), a fresh
-- one is asked from `download_url` and tried once. Returns `path` or `nil, err`.
-- @tparam string url
-- @tparam string path
-- @tparam[opt] table opts `max_bytes` (default 100 MiB; a whole number, or
-- `math.huge` for no cap), `timeout` (seconds for the whole download, refresh
-- included; default 300, or the client's `timeout` when longer), `refresh`
-- (default true), `progress` (`function(bytes_so_far, total_or_nil)`: called
-- from Lua between transfer steps whenever the count changed, and once at the
-- end with the final size; it restarts from 0 when a refreshed link is tried;
-- see `kie.files`). An unknown option name raises.
function Client:download(url, path, opts)
  _check(url, "string", "download: url")
  _check(path, "string", "download: path")
  local cap, timeout = _download_opts(self, opts)
  opts = opts or {}
  local rep = opts.progress ~= nil and files.reporter(opts.progress) or nil
  local now = self._env.now
  local deadline = now() + timeout
  local tmp = seed.temp_path(path) -- unique across processes and calls
  local ok, err = files.io(self, Client._io, rep, "fetch", url, tmp, cap, timeout)
  if not ok and opts.refresh ~= false and _expired(err) then
    local fresh = self:download_url(url)
    local left = deadline - now()
    if fresh and left > 0 then
      ok, err = files.io(self, Client._io, rep, "fetch", fresh, tmp, cap, left)
    end
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

--- `create_task` without blocking: returns a handle (`cancel`, `done`, `result`,
-- `task_id`; see `kie.lifecycle`); `cb(task, err)` is called once from `step`.
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
  _check_wait(opts, "wait_async", 3)
  return self:_async(cb, "wait", task_id, opts)
end

--- `run` without blocking (see `create_task_async`).
function Client:run_async(request, cb)
  self:_check_run(request, "run_async: request", 3)
  return self:_async(cb, "run", request)
end

return Client
