--- kie for OpenResty / nginx + ngx_lua: the same client API as `require "kie"`,
-- and the nginx event loop is never blocked.
--
--    # nginx.conf, main context:   thread_pool kie threads=16;
--    local kie = require "kie.ngx"
--    local client = kie.new{thread_pool = "kie"}       -- every kie.new option too
--    local info, err = client:run{model = ..., input = {...}}
--
-- How: every HTTP call of the C core (blocking libcurl) runs in one of nginx's
-- worker threads through `ngx.run_worker_thread(pool, "kie.ngx_worker", ...)`,
-- which suspends only the calling request (its coroutine) until the thread is
-- done. The thread runs its own Lua VM: only plain data crosses (the options,
-- key included, request tables, ids); error tables come back as plain tables
-- and get the `kie.errors` metatable again. Every wait (polling interval,
-- retry backoff, rate-limit pacing) is `ngx.sleep`. Validation, retry policy,
-- schedule and rate limits are kie's own code, unchanged (`kie.Client`, whose
-- `_io` and `_sleep` seams are overridden here). Each worker-thread VM keeps one
-- core client per option set (`kie.ngx_worker`), so connections are reused. A
-- call that finds no free worker-thread VM (`lua_worker_thread_vm_pool_size`,
-- default 10) or queue slot waits for one (ngx.sleep) up to the client's
-- `timeout`, then returns a retryable `network` error (nothing was sent). A
-- `wait`'s poll never waits past the wait's deadline, for a VM nor in the thread
-- pool's queue (it is abandoned: kind `timeout`; the worker thread sends nothing
-- once the deadline passed).
--
-- Calls are possible where ngx_lua can yield: rewrite, access and content
-- handlers and `ngx.timer.at` callbacks. Elsewhere (init, init_worker, set,
-- header/body filter, log) and on an ngx_lua without `ngx.run_worker_thread`
-- they raise a clear error instead of blocking. `kie.ngx.new` itself does no
-- I/O and works in any phase (init_worker_by_lua is a good place).
--
-- Rate limits: kie.ai counts per account. `shared_dict = NAME` (a
-- `lua_shared_dict`) shares them among this nginx's workers (kie.ngx_shared);
-- `fleet = {redis =, name =}` shares them through Redis with every client of the
-- fleet, nginx or not, with kie.fleet's scripts over lua-resty-redis cosockets
-- (kie.redis_ngx: a worker never blocks), and keeps the task journal in Redis
-- (kie.fleet_journal: any client of the fleet resumes what a dead worker left).
-- Without either, each worker paces alone.
--
-- Not available here (they drive the core's own event loop): `step`,
-- `poll_timeout`, `wakeup`, the `*_async` calls and `kie.spawn`; use
-- `ngx.thread.spawn` (and `client:run_all`) for concurrency.
-- @module kie.ngx

local Client = require "kie.client"
local errors = require "kie.errors"
local kie = require "kie"
local core = require "kie.core" -- in this VM: clock, HMAC, JSON (CPU only, never I/O)

local type, pairs, ipairs, tostring, setmetatable, getmetatable, pcall, error, select, rawget =
  type, pairs, ipairs, tostring, setmetatable, getmetatable, pcall, error, select, rawget
local sort, concat = table.sort, table.concat
local traceback, xpcall = debug.traceback, xpcall
local min = math.min
local unpack = table.unpack or unpack

local WORKER = "kie.ngx_worker"
local OBJECT_KEY = "\0kie.object" -- must match kie.ngx_worker
local DEFAULT_POOL = "kie"

-- phases in which ngx.run_worker_thread and ngx.sleep may yield
local YIELDABLE = { rewrite = true, access = true, content = true, timer = true }

local M = {
  _VERSION = kie._VERSION,
  errors = errors,
  models = kie.models,
  callback = kie.callback,
  object = kie.object,
  --- the thread pool used when `kie.ngx.new` gets no `thread_pool`
  DEFAULT_THREAD_POOL = DEFAULT_POOL,
}

local function ngx_api()
  local n = rawget(_G, "ngx")
  if type(n) ~= "table" then return nil end
  return n
end

-- Raises unless this is a phase in which kie.ngx can wait without blocking.
local function check_phase(what)
  local ngx = ngx_api()
  if not ngx then
    error("kie.ngx: " .. what .. ": not running inside nginx (ngx_lua); use require \"kie\"", 0)
  end
  if type(ngx.run_worker_thread) ~= "function" then
    error("kie.ngx: " .. what .. ": ngx.run_worker_thread is not available (it needs "
      .. "lua-nginx-module >= 0.10.21 in an nginx built --with-threads); kie.ngx will not "
      .. "block the event loop with the blocking core", 0)
  end
  local phase = ngx.get_phase()
  if not YIELDABLE[phase] then
    error("kie.ngx: " .. what .. " cannot run in the " .. tostring(phase) .. " phase: HTTP runs "
      .. "on a worker thread and waits with ngx.sleep, which ngx_lua allows only in rewrite, "
      .. "access and content handlers and ngx.timer.at callbacks", 0)
  end
  return ngx
end

-- Copies a value into plain data for the worker VM: tables marked as JSON
-- objects (kie.object) carry OBJECT_KEY instead of their metatable.
local function plain(v, depth, seen)
  local t = type(v)
  if t ~= "table" then
    if t == "function" or t == "thread" or t == "userdata" then
      error("kie.ngx: cannot send a " .. t .. " to the worker thread (plain data only)", 0)
    end
    return v
  end
  if depth > 64 or seen[v] then error("kie.ngx: request nested too deeply or cyclic", 0) end
  seen[v] = true
  local out = {}
  for k, val in pairs(v) do
    local tk = type(k)
    if tk ~= "string" and tk ~= "number" and tk ~= "boolean" then
      error("kie.ngx: cannot send a table key of type " .. tk .. " to the worker thread", 0)
    end
    out[k] = plain(val, depth + 1, seen)
  end
  local mt = getmetatable(v)
  if type(mt) == "table" and rawget(mt, "__jsontype") == "object" then out[OBJECT_KEY] = true end
  seen[v] = nil
  return out
end

-- Replaces every occurrence of `key` in `s` (plain text).
local function redact(s, key)
  s = tostring(s)
  if not key or key == "" then return s end
  local out, i = {}, 1
  while true do
    local a, b = s:find(key, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = "[redacted]"
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return concat(out)
end

-- the core stand-in ------------------------------------------------------------

-- What kie.Client sees as its core handle: each method runs the real core's
-- method in a worker thread. The options (and the key) live in `private`, not
-- in a field anybody can read.
local Handle = {}
local private = setmetatable({}, { __mode = "k" })

-- messages of ngx.run_worker_thread that mean "not sent: no VM or queue slot free"
local BUSY = {
  ["no available Lua vm"] = true,
  ["ngx_thread_task_post failed"] = true,
  ["no memory"] = true,
}

local LATE = "kie.ngx: past the deadline" -- thread_call's message when abandoned
local GRACE = 0.05 -- s after the deadline for an answer already on its way

-- ngx.run_worker_thread(pool, WORKER, fn, ...) in a light thread, abandoned when
-- `deadline` (+ GRACE) passes first, e.g. while every thread of the pool is busy:
-- ngx_lua then drops the thread's results (and the worker sends nothing late).
local function run_by(ngx, deadline, pool, fn, ...)
  local spawn = ngx.thread.spawn
  local worker = spawn(function(...) return ngx.run_worker_thread(pool, WORKER, fn, ...) end, ...)
  local left = deadline + GRACE - core.now()
  local timer = spawn(function()
    if left > 0 then ngx.sleep(left) end
    return LATE
  end)
  local r = { ngx.thread.wait(worker, timer) }
  if r[2] == LATE then
    ngx.thread.kill(worker)
    return { false, LATE }
  end
  ngx.thread.kill(timer)
  if not r[1] then error(r[2], 0) end
  return { unpack(r, 2, #r) }
end

-- ngx.run_worker_thread(pool, WORKER, fn, ...), waiting (ngx.sleep, at most
-- `wait_limit` seconds) while no worker-thread VM or queue slot is free, as a
-- queue would; with `deadline`, never past it. Returns the packed results of
-- run_worker_thread.
local function thread_call(ngx, pool, wait_limit, deadline, fn, ...)
  local r, until_, pause
  while true do
    if deadline then
      r = run_by(ngx, deadline, pool, fn, ...)
    else
      r = { ngx.run_worker_thread(pool, WORKER, fn, ...) }
    end
    if r[1] or not BUSY[r[2]] then return r end
    local now = core.now()
    until_ = until_ or now + wait_limit
    if now >= until_ then return r end
    pause = pause and min(pause * 2, 0.05) or 0.002
    ngx.sleep(pause)
  end
end

-- core methods whose last argument is a shorter timeout (seconds) for this call
local TIMED = { get_task = 2 }

local function run_in_thread(h, name, ...)
  local p = private[h]
  if not p then error("kie.ngx: not a kie.ngx core handle", 0) end
  if p.closed then error("kie.ngx: the client is closed", 0) end
  local ngx = check_phase(name)
  local n = select("#", ...)
  local args = { ... }
  for i = 1, n do args[i] = plain(args[i], 0, {}) end
  -- a call with its own timeout (wait's polls) has a deadline: no wait for a free
  -- VM, nor the thread pool's queue, may carry it past that (the worker thread
  -- gives the transfer what is left)
  local wait_limit, deadline = p.wait_limit, false
  if n == TIMED[name] and type(args[n]) == "number" then
    deadline = core.now() + args[n]
    if args[n] < wait_limit then wait_limit = args[n] end
  end
  local r = thread_call(ngx, p.pool, wait_limit, deadline, "call", p.ckey, p.opts, deadline, name,
    unpack(args, 1, n))
  if r[1] then
    if r[2] == nil and type(r[3]) == "table" then return nil, errors.wrap(r[3]) end
    return r[2], r[3]
  end
  local msg = redact(r[2], p.key)
  if msg == "thread_pool not found" or msg:find("^thread pool .* not found$") then
    error("kie.ngx: thread pool '" .. p.pool .. "' not found: add 'thread_pool " .. p.pool
      .. " threads=16;' to nginx.conf's main context (or pass thread_pool = <name>)", 0)
  end
  if msg == LATE then
    return nil, errors.new("timeout", name .. ": no worker thread ran it before the deadline "
      .. "(the thread pool is busy); abandoned", { op = name, retryable = true })
  end
  if BUSY[msg] then
    -- nothing was sent: safe to retry, also for create_task
    return nil, errors.new("network", name .. ": no worker thread available for "
      .. wait_limit .. " s (" .. msg .. "); the request was not sent",
      { op = name, retryable = true })
  end
  if msg == "unsupported argument type" or msg:find(" in the argument$") then
    error("kie.ngx: " .. name .. ": cannot pass the arguments to the worker thread: " .. msg, 0)
  end
  if msg == "unsupported return value" or msg:find(" in the return value$") then
    return nil, errors.new("protocol", name .. ": the worker thread returned a value that "
      .. "cannot cross Lua VMs (" .. msg .. ")", { op = name })
  end
  -- the worker raised: a programmer error (bad argument) or a broken install
  error("kie.ngx: " .. name .. " failed in the worker thread: " .. msg, 0)
end

-- a closed kie.core client of this VM: which methods the real core has
local specimen

Handle.__index = function(_, name)
  local m = Handle[name]
  if m ~= nil then return m end
  if type(name) ~= "string" or name:sub(1, 1) == "_" then return nil end
  -- the async machinery of the core is not used here
  if name:find("_start$") or name == "step" or name == "result" or name == "cancel"
    or name == "poll_timeout" or name == "wakeup" or name == "pending" or name == "progress" then
    return nil
  end
  if not specimen then
    specimen = core.new{ api_key = "specimen", base_url = "http://127.0.0.1:1" }
    specimen:close()
  end
  if type(specimen[name]) ~= "function" then return nil end
  local fn = function(self, ...) return run_in_thread(self, name, ...) end
  Handle[name] = fn
  return fn
end

function Handle:close()
  local p = private[self]
  if p then p.closed = true end
end

function Handle:__tostring()
  local p = private[self]
  return "kie.ngx core (thread pool " .. (p and p.pool or "?") .. ")"
end

-- options handed to kie.core.new (the same list kie.Client uses)
local CORE_OPTIONS = { "api_key", "base_url", "upload_url", "timeout", "connect_timeout",
  "ca_file", "ca_path", "proxy", "max_response_bytes", "user_agent" }

-- A digest naming the option set, so a worker VM keeps one core client per set.
local function cache_key(copts)
  local parts = {}
  for _, k in ipairs(CORE_OPTIONS) do
    local v = copts[k]
    if v ~= nil then
      if k == "api_key" then v = core.hmac_sha256_base64("kie.ngx api key", v) end
      parts[#parts + 1] = k .. "=" .. tostring(v)
    end
  end
  sort(parts)
  return core.hmac_sha256_base64("kie.ngx options", concat(parts, "\n"))
end

-- A core module for kie.Client.new whose client handles run in worker threads.
local function core_module(pool)
  -- the real module's CPU-only functions (clock, JSON, HMAC, Base64 ...) as they
  -- are; what does I/O or blocks is replaced below
  local mod = {}
  for k, v in pairs(core) do mod[k] = v end
  function mod.sleep(seconds)
    local ngx = check_phase("sleep")
    ngx.sleep(seconds)
  end
  -- the journal's fsync'd append: on a worker thread too
  function mod.append_line(path, line)
    local ngx = check_phase("journal write")
    local r = thread_call(ngx, pool, 30, false, "append_line", path, line)
    if not r[1] then return nil, "journal write: " .. tostring(r[2]) end
    return r[2], r[3]
  end
  function mod.new(copts)
    -- validate exactly as kie.core does (it opens no connection)
    local probe = core.new(copts)
    probe:close()
    local opts = {}
    for _, k in ipairs(CORE_OPTIONS) do opts[k] = copts[k] end
    local h = setmetatable({}, Handle)
    private[h] = { pool = pool, opts = opts, key = copts.api_key, ckey = cache_key(copts),
      wait_limit = copts.timeout or 30 }
    return h
  end
  return mod
end

-- the client ---------------------------------------------------------------------

local NgxClient = setmetatable({}, { __index = Client })
NgxClient.__index = NgxClient
NgxClient.__name = "kie.ngx.Client"

function NgxClient:__tostring()
  return "kie.ngx.Client (" .. self._opts.base_url .. ", thread pool " .. self._pool .. ")"
end

-- Every core call goes to a worker thread (the request's coroutine waits).
function NgxClient:_io(name, ...)
  local h = self._core
  return h[name](h, ...)
end

-- Every wait is ngx.sleep (never the core's blocking sleep).
function NgxClient:_sleep(seconds) -- luacheck: ignore self
  if seconds > 0 then
    local ngx = check_phase("sleep")
    ngx.sleep(seconds)
  end
end

local function unsupported(name, instead)
  return function()
    error("kie.ngx: " .. name .. " is not available in nginx: " .. instead, 2)
  end
end

local USE_THREADS = "use ngx.thread.spawn (or client:run_all) for concurrency"
NgxClient.step = unsupported("client:step", USE_THREADS)
NgxClient.poll_timeout = unsupported("client:poll_timeout", USE_THREADS)
NgxClient.wakeup = unsupported("client:wakeup", USE_THREADS)
NgxClient.create_task_async = unsupported("client:create_task_async", USE_THREADS)
NgxClient.get_task_async = unsupported("client:get_task_async", USE_THREADS)
NgxClient.wait_async = unsupported("client:wait_async", USE_THREADS)
NgxClient.run_async = unsupported("client:run_async", USE_THREADS)
M.spawn = unsupported("kie.spawn", "use ngx.thread.spawn")

-- The message of an error that xpcall(.., traceback) caught (its first line).
local function strip_traceback(tb)
  return (tostring(tb):match("^[^\n]*"))
end

local RUN_ALL_OPTIONS = { concurrency = true, on_update = true }

--- Runs many requests (as `client:run`), at most `opts.concurrency` (8) at a
-- time, each in an ngx light thread; `opts.on_update(i, info)` on each state
-- change of item i. Returns `results, errs` indexed like the input; `errs` is nil
-- when every item succeeded. An item whose own code raises (a bad option, an
-- `on_update` that raises) ends with kind `raised` (its `task_id` kept when it was
-- created); the others go on.
function NgxClient:run_all(list, opts)
  if type(list) ~= "table" then error("run_all: list must be a table, got " .. type(list), 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("run_all: opts must be a table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not RUN_ALL_OPTIONS[k] then error("run_all: unknown option '" .. tostring(k) .. "'", 2) end
  end
  local n = #list
  -- every item's options before the first request (nothing paid, then a raise)
  for i = 1, n do self:_check_run(list[i], "run_all: request " .. i, 3) end
  local concurrency = opts.concurrency or 8
  if type(concurrency) ~= "number" or concurrency < 1 or concurrency % 1 ~= 0 then
    error("run_all: concurrency must be a whole number >= 1", 2)
  end
  local on_update = opts.on_update
  if on_update ~= nil and type(on_update) ~= "function" then
    error("run_all: on_update must be a function, got " .. type(on_update), 2)
  end
  local ngx = check_phase("run_all")
  local results, errs, next_i = {}, nil, 0
  local function fail(i, e)
    errs = errs or {}
    errs[i] = e
  end
  -- item i as `run` with its wait's on_update chained to ours; the task id each
  -- update shows is kept for an error raised after the create
  local function item(i, seen)
    local req, w = {}, {}
    for k, v in pairs(list[i]) do req[k] = v end
    for k, v in pairs(req.wait or {}) do w[k] = v end
    local inner = w.on_update
    w.on_update = function(info)
      seen[i] = info.taskId
      if inner then inner(info) end
      if on_update then on_update(i, info) end
    end
    req.wait = w
    return self:run(req)
  end
  local function worker()
    local seen = {}
    while next_i < n do
      next_i = next_i + 1
      local i = next_i
      local ok, r, e = xpcall(item, traceback, i, seen)
      if not ok then
        local msg = strip_traceback(r)
        fail(i, errors.new("raised", "run_all: item " .. i .. " raised: " .. msg,
          { traceback = r, task_id = seen[i] }))
      elseif r ~= nil then
        results[i] = r
      else
        fail(i, e)
      end
    end
  end
  local threads = {}
  for k = 1, min(concurrency, n) do threads[k] = ngx.thread.spawn(worker) end
  for _, t in ipairs(threads) do ngx.thread.wait(t) end
  return results, errs
end

local function strip_position(msg)
  return (tostring(msg):gsub("^[^\n]-%.lua:%d+: ", ""))
end

-- Where the rate limits are shared: a kie.fleet on Redis through cosockets
-- (kie.redis_ngx), a lua_shared_dict (kie.ngx_shared), or nil (this worker alone).
local function pacing_store(fleet_spec, dict_name)
  if fleet_spec and dict_name then
    error("kie.ngx.new: options 'fleet' and 'shared_dict' exclude each other (a fleet already "
      .. "shares the limits among this nginx's workers)", 3)
  end
  if dict_name then
    local ngx = ngx_api()
    if not ngx or type(ngx.shared) ~= "table" then
      error("kie.ngx.new: option 'shared_dict' works only inside nginx (ngx_lua)", 3)
    end
    return require("kie.ngx_shared").open(ngx, dict_name)
  end
  if not fleet_spec then return nil end
  local ok, fleet = pcall(require, "kie.fleet")
  if not ok then
    error("kie.ngx.new: option 'fleet' needs kie.fleet (the kie-fleet rock's Lua files): " .. tostring(fleet), 3)
  end
  local transport = require "kie.redis_ngx"
  if ngx_api() then
    local lib, lerr = transport.library()
    if not lib then error((lerr:gsub("^kie%.ngx:", "kie.ngx.new:")), 3) end
  end
  local fok, f = pcall(fleet.open, fleet_spec, transport)
  if not fok then error((strip_position(f):gsub("^kie%.new", "kie.ngx.new")), 3) end
  return f
end

--- Makes a client: the options of `kie.new` plus `thread_pool` (the name of a
-- `thread_pool` in nginx.conf's main context; default "kie") and `shared_dict`
-- (the name of a `lua_shared_dict`: the rate limits shared by this nginx's
-- workers, kie.ngx_shared). `fleet` shares them through Redis with every client of
-- the fleet, over cosockets (kie.redis_ngx; needs lua-resty-redis). Without either,
-- each worker paces alone. Does no I/O, so it may run in any phase. Raises like
-- `kie.new` on bad options.
-- @tparam[opt] table opts
-- @treturn kie.ngx.Client
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then error("kie.ngx.new: options must be a table", 2) end
  local user, pool, fleet_spec, dict_name = {}, DEFAULT_POOL, nil, nil
  for k, v in pairs(opts or {}) do
    if k == "thread_pool" then
      if type(v) ~= "string" or v == "" then
        error("kie.ngx.new: option 'thread_pool' must be a non-empty string", 2)
      end
      pool = v
    elseif k == "fleet" then
      if type(v) ~= "table" then error("kie.ngx.new: option 'fleet' must be a table, got " .. type(v), 2) end
      fleet_spec = v
    elseif k == "shared_dict" then
      if type(v) ~= "string" or v == "" then
        error("kie.ngx.new: option 'shared_dict' must be a non-empty string (a lua_shared_dict)", 2)
      end
      dict_name = v
    elseif k == "core" or k == "sleep" then
      error("kie.ngx.new: option '" .. k .. "' is not supported (kie.ngx runs HTTP on worker "
        .. "threads and waits with ngx.sleep)", 2)
    else
      user[k] = v
    end
  end
  user.core = core_module(pool)
  local ok, c = pcall(Client.new, user)
  if not ok then
    error((strip_position(c):gsub("^kie%.new", "kie.ngx.new"):gsub("^kie%.core%.new", "kie.ngx.new")), 2)
  end
  c._pool = pool
  -- a paced call may wait for a worker thread (up to `timeout`) before its
  -- request goes: a slot nobody releases counts that much longer (kie.ratelimit)
  local wait_limit = user.timeout or 30
  for _, lim in ipairs{ c._create_lim or false, c._poll_lim or false } do
    if lim then lim.hold = lim.hold + wait_limit end
  end
  local store = pacing_store(fleet_spec, dict_name)
  if store then
    if c._create_lim then c._create_lim = store:limiter("create", c._create_lim) end
    if c._poll_lim then c._poll_lim = store:limiter("poll", c._poll_lim) end
    if fleet_spec then -- the journal in Redis too (the file, if any, stays the write-ahead record)
      c._fleet = store
      c._journal = store:journal(c._journal)
    end
  end
  return setmetatable(c, NgxClient)
end

local LEVELS -- filled lazily: ngx's constants exist only inside nginx

--- A `logger` for `kie.ngx.new{logger = kie.ngx.log}`: writes to nginx's
-- error_log (debug → ngx.DEBUG, info → ngx.INFO, warn → ngx.WARN, error → ngx.ERR).
-- kie never hands the API key to a logger.
function M.log(level, message, fields)
  local ngx = ngx_api()
  if not ngx then return end
  LEVELS = LEVELS or { debug = ngx.DEBUG, info = ngx.INFO, warn = ngx.WARN, error = ngx.ERR }
  local parts = {}
  if type(fields) == "table" then
    local keys = {}
    for k, v in pairs(fields) do
      local tv = type(v)
      if tv == "string" or tv == "number" or tv == "boolean" then keys[#keys + 1] = tostring(k) end
    end
    sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(fields[k]) end
  end
  ngx.log(LEVELS[level] or ngx.NOTICE, "kie: ", tostring(message),
    #parts > 0 and (" (" .. concat(parts, ", ") .. ")") or "")
end

return M
