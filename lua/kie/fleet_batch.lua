--- Batches beyond one machine (fleet clients only): `submit` puts a batch of
-- create requests on a Redis stream, `work` (in any number of processes, on any
-- number of machines) takes its items through a consumer group and creates each
-- ONCE fleet-wide, `batch` shows progress and results. The state lives in
-- `kie.fleet_batch_store`; creates and waits are the client's own public calls,
-- so they are paced by the fleet's shared limiter.
--
-- Failure semantics, per item: its intent (owned and leased by one worker) is in
-- Redis before its create is sent. A worker that dies is replaced once its lease
-- lapsed (`lease` seconds without renewal): an item with a task id is waited on
-- by whoever takes it; one without a task id ends `unknown_outcome` and is
-- never created again (the create may have gone out; it is never paid twice),
-- unless its intent is resolved (`batch_created`, what a callback naming the
-- intent calls), which queues it again to be waited on.
-- @submodule kie.Client

local errors = require "kie.errors"
local models = require "kie.models"
local lifecycle = require "kie.lifecycle"
local store = require "kie.fleet_batch_store"
local paid = require "kie.paid"

local type, pairs, tostring, error, pcall, select = type, pairs, tostring, error, pcall, select
local format, min = string.format, math.min

local Client = {}

local FLEET_ONLY = ": batches need a fleet client (kie.new{fleet = {redis =, name =}})"

local function _need_fleet(self, what)
  if not self._fleet then error(what .. FLEET_ONLY, 3) end
end

local function _check_id(id, what)
  if not store.valid_id(id) then
    error(what .. ": a batch id is letters, digits, '_', '-' or '.', got " .. tostring(id), 3)
  end
end

--- Validates every request (as `create_task` would; the client's `strict`),
-- then puts the batch on the fleet's Redis and returns its id. An invalid
-- request puts nothing on Redis: `nil, err` (kind `validation`, `index` = the
-- first bad item, named in the message). Redis failing: `nil, err` (kind
-- `fleet`). Raises when the client has no `fleet` or `requests` is not a
-- non-empty list.
-- @tparam table requests a list of `create_task` requests
-- @treturn string the batch id
function Client:submit(requests)
  _need_fleet(self, "submit")
  if type(requests) ~= "table" or #requests == 0 then
    error("submit: requests must be a non-empty list", 2)
  end
  local strict = self._opts.strict == true
  local jsons, encode = {}, self._mod.encode
  for i = 1, #requests do
    local r = requests[i]
    if type(r) ~= "table" then
      return nil, errors.new("validation", "submit: request " .. i .. ": must be a table, got " .. type(r),
        { op = "submit", index = i })
    end
    local req, verr = models.check(r, strict)
    if not req then
      return nil, errors.new("validation", "submit: request " .. i .. ": " .. tostring(verr.message),
        { op = "submit", index = i, field = verr.field })
    end
    jsons[i] = encode(req)
  end
  local s, err = store.open(self)
  if not s then return nil, err end
  local id
  id, err = s:submit(jsons)
  s:close()
  return id, err
end

--- Progress and results of batch `id`: `{total =, done =, failed =, results =
-- {...}}`, results by item index, each `{state =, task_id =, urls =, kind =,
-- message =, intent =}` (state `pending`, `intent`, `created`, `done` or
-- `failed`; `kind`/`message` the error of a failed item). `nil, err`: kind
-- `not_found` (no such batch) or `fleet`.
-- @tparam string id
function Client:batch(id)
  _need_fleet(self, "batch")
  _check_id(id, "batch")
  local s, err = store.open(self)
  if not s then return nil, err end
  local st
  st, err = s:results(id)
  s:close()
  if st == false then
    return nil, errors.new("not_found", "batch: no batch " .. id .. " in this fleet", { op = "batch" })
  end
  return st, err
end

--- Resolves the intent of a batch item: what a callback naming it calls (the
-- journal's `created(task_id, model, intent_id)` interface). An item that ended
-- `unknown_outcome` gets its task id and is queued again, to be waited on by a
-- worker. Returns true when the intent was a batch item's unresolved one, else
-- false; `nil, err` (kind `fleet`) when Redis failed.
-- @tparam string task_id
-- @tparam string model (unused: the item's request has it)
-- @tparam string intent_id
function Client:batch_created(task_id, model, intent_id)
  _need_fleet(self, "batch_created")
  local _ = model
  local id, i = store.parse_intent(intent_id)
  if not id or type(task_id) ~= "string" then return false end
  local s, err = store.open(self)
  if not s then return nil, err end
  local r
  r, err = s:record(id, i, intent_id, task_id)
  s:close()
  if r == nil then return nil, err end
  return r ~= 0
end

local WORK_OPTIONS = { batch = "string", all = "boolean", concurrency = "number", lease = "number",
  timeout = "number", max_interval = "number", on_progress = "function" }

local function _work_opts(opts)
  if type(opts) ~= "table" then error("work: opts must be a table, got " .. type(opts), 3) end
  for k, v in pairs(opts) do
    local want = WORK_OPTIONS[k]
    if not want then error("work: unknown option '" .. tostring(k) .. "'", 3) end
    if type(v) ~= want then error("work: option '" .. k .. "' must be a " .. want .. ", got " .. type(v), 3) end
  end
  if (opts.batch == nil) == (not opts.all) then error("work: give either batch = ID or all = true", 3) end
  if opts.batch then _check_id(opts.batch, "work") end
  local conc = opts.concurrency or 4
  if conc < 1 or conc % 1 ~= 0 or conc > 1000 then
    error("work: concurrency must be a whole number from 1 to 1000", 3)
  end
  local lease = opts.lease or 30
  if lease ~= lease or lease <= 0 or lease > 86400 then
    error("work: lease must be a number of seconds in (0, 86400]", 3)
  end
  local timeout = opts.timeout or 900
  if timeout ~= timeout or timeout <= 0 then error("work: timeout must be a number of seconds > 0", 3) end
  local mi = opts.max_interval
  if mi ~= nil and (mi ~= mi or mi <= 0) then error("work: max_interval must be a number of seconds > 0", 3) end
  return conc, lease, timeout
end

-- Calls fn(...) until it returns non-nil or an error other than kind `fleet`
-- (Redis down: tried again after a pause that grows to 1 s; a paid task id in
-- the arguments is never dropped for a Redis outage).
local function _must(w, fn, ...)
  local pause = 0.05
  while true do
    local r, err = fn(...)
    if r ~= nil or (err and err.kind ~= "fleet") then return r, err end
    w.redis_errors = w.redis_errors + 1
    w.client._env.sleep(pause)
    pause = min(pause * 2, 1)
  end
end

-- The result fields of an ended wait.
local function _outcome(task_id, info, err)
  if info then return "done", { task_id = task_id, urls = info.resultUrls or {} } end
  local msg = err.message
  if err.kind == "task_failed" then msg = tostring(err.failMsg or err.message) end
  return "failed", { task_id = task_id, kind = err.kind, message = msg }
end

local RETRY_WAIT = { fleet = true, network = true, timeout = true, rate_limited = true, server = true,
  maintenance = true }

-- Waits on item it's task (again while the error is one a retry can end).
local function _wait(w, task_id)
  local c = w.client
  while true do
    local info, err = c:wait(task_id, { timeout = w.timeout, max_interval = w.max_interval })
    if info or not RETRY_WAIT[err.kind] or w.draining then return info, err end
    c._env.sleep(1)
  end
end

-- One item, in its own kie.spawn coroutine: claim, create once, record, wait, end.
local function _item(w, it)
  local s, c, id, i = w.store, w.client, it.batch, it.i
  local r, err = _must(w, s.claim, s, id, i, w.me, w.lease)
  if not r then return nil, err end
  local action = r[1]
  if action == "busy" then return end -- its owner lives (or it runs here already)
  if action == "ended" or action == "unknown" then _must(w, s.ack, s, id, it.entry) return end
  local task_id = r[2]
  if action == "create" then
    local intent = r[2]
    local json
    json, err = _must(w, s.request, s, id, i)
    local req = json and c._mod.decode(json)
    if type(req) ~= "table" then
      _must(w, s.finish, s, id, i, "failed", { kind = "protocol", message = tostring(err and err.message
        or "the stored request is not JSON") })
      _must(w, s.ack, s, id, it.entry)
      return
    end
    paid.tag_callback(req, "kie_batch", intent) -- its callback resolves the item if the answer is lost
    it.phase = "create"
    local task
    repeat -- kind fleet: the pacer's Redis failed, nothing was sent
      task, err = c:create_task(req)
      if not task and err.kind == "fleet" then c._env.sleep(0.5) end
    until task or err.kind ~= "fleet"
    if not task then
      _must(w, s.finish, s, id, i, "failed", { kind = err.kind, message = err.message })
      _must(w, s.ack, s, id, it.entry)
      it.phase = nil
      return
    end
    task_id = task.taskId
    it.task_id = task_id
    _must(w, s.record, s, id, i, intent, task_id)
    it.phase = nil
    w.created = w.created + 1
  end
  if w.draining then return end -- taken over once its lease lapses
  it.phase = "wait"
  local state, fields = _outcome(task_id, _wait(w, task_id))
  if w.draining and fields.kind == "canceled" then return end
  it.phase = nil
  _must(w, s.finish, s, id, i, state, fields)
  _must(w, s.ack, s, id, it.entry)
end

-- Starts item (entry, i) of batch `id` in a coroutine.
local function _start(w, id, entry, i)
  local it = { batch = id, entry = entry, i = i }
  w.active[it] = true
  w.nactive = w.nactive + 1
  -- no pcall here: Lua 5.1 cannot yield across it (kie.spawn's handle keeps what raised)
  it.handle = lifecycle.spawn(_item, w, it)
end

-- Forgets the items whose coroutine ended.
local function _reap(w)
  for it in pairs(w.active) do
    if it.handle:done() then
      w.active[it] = nil
      w.nactive = w.nactive - 1
      local _, e = it.handle:result()
      if e and e.kind ~= "canceled" then -- a bug or a Redis error: the item's lease lapses, another takes it
        w.client:_log("error", "batch item ended with an error: " .. tostring(e), { batch = it.batch, index = it.i })
      end
    end
  end
end

-- The batches to work on: `{id = meta}` of those not ended yet; false when none
-- is left; nil, err.
local function _open_batches(w)
  local ids = w.ids
  if not ids then
    local err
    ids, err = w.store:batches()
    if not ids then return nil, err end
  end
  local left = false
  for _, id in pairs(ids) do
    local meta, err = w.store:meta(id)
    if meta == nil then return nil, err end
    if meta and meta.done + meta.failed < meta.total then
      left = left or {}
      left[id] = meta
    end
    w.metas[id] = meta or nil
  end
  return left
end

-- Takes items while fewer than `conc` run. Returns true when one was taken.
local function _fill(w, open)
  local took = false
  for id in pairs(open) do
    while w.nactive < w.conc do
      local entry, i = w.store:take(id, w.me, w.lease)
      if not entry then break end
      _start(w, id, entry, i)
      took = true
    end
  end
  return took
end

-- Renews the lease of every item this worker runs (`lapse`: ends them).
local function _renew(w, lapse)
  local by = {}
  for it in pairs(w.active) do
    by[it.batch] = by[it.batch] or {}
    local l = by[it.batch]
    l[#l + 1] = it
  end
  for id, items in pairs(by) do w.store:renew(id, w.me, w.lease, items, lapse) end
end

local function _progress(w)
  if not w.on_progress then return end
  local total, done, failed = 0, 0, 0
  for _, m in pairs(w.metas) do total, done, failed = total + m.total, done + m.done, failed + m.failed end
  w.on_progress({ total = total, done = done, failed = failed, active = w.nactive, created = w.created,
    batches = w.ids and #w.ids or nil, redis_errors = w.redis_errors })
end

-- One turn of the client's loop (at most `cap` ms).
local function _turn(c, cap)
  local ms = c:poll_timeout()
  if ms == nil then c._blocking_sleep(cap / 1000) return end
  if ms > 0 and c._core:pending() == 0 then
    c._blocking_sleep(min(ms, cap) / 1000)
    ms = 0
  end
  c:step(min(ms, cap))
end

-- The worker's loop: returns when no batch has items left, or nil, err.
local function _loop(w)
  local c, now = w.client, w.client._env.now
  local renew_at, look_at = now() + w.lease / 3, 0
  while true do
    _reap(w)
    if now() >= look_at then
      local open, err = _open_batches(w)
      if open == nil then
        w.redis_errors = w.redis_errors + 1
        if w.redis_errors > w.max_redis_errors then return nil, err end
      else
        _progress(w)
        if not open and w.nactive == 0 then return true end
        if not open or not _fill(w, open) then look_at = now() + 0.1 end
      end
    end
    if now() >= renew_at then
      _renew(w, false)
      renew_at = now() + w.lease / 3
    end
    _turn(c, 50)
  end
end

-- After the loop raised (Ctrl-C, a callback error): no new item; the creates in
-- flight get their answers and their task ids recorded (the client's request
-- timeout bounds it); the waits stop and their items' leases end at once, so
-- another worker waits on them.
local function _drain(w)
  w.draining = true
  lifecycle.requeue(w.client)
  for it in pairs(w.active) do
    if it.phase ~= "create" then it.handle:cancel() end
  end
  local now = w.client._env.now
  local deadline = now() + w.client._opts.timeout + w.lease
  while now() < deadline do
    _reap(w)
    local creating = false
    for it in pairs(w.active) do
      if it.phase == "create" then creating = true else it.handle:cancel() end
    end
    if not creating then break end
    _turn(w.client, 50)
  end
  _reap(w)
  _renew(w, true)
end

--- Works on batch items until none is left: `work{batch = ID}` (that batch) or
-- `work{all = true}` (every batch of the fleet). Takes items through the
-- stream's consumer group (new ones, and those a dead worker left: idle for
-- `lease` seconds), creates each once fleet-wide (`create_task`, paced by the
-- fleet's shared limiter), waits for it and records the result. Returns once
-- every item has ended (done or failed), including items other workers took:
-- `client:batch(ID)`'s table with `batch`, or `{batches = n}` with `all`; `nil,
-- err` (`not_found`: no such batch; `fleet`: Redis kept failing). Blocking (it
-- steps the client, running up to `concurrency` items in `kie.spawn`
-- coroutines). When something raises inside (Ctrl-C's "interrupted!"), the
-- creates in flight are finished and their task ids recorded before it is
-- raised again; the other items are left to the next worker.
-- @tparam table opts `batch` or `all`, `concurrency` (4), `lease` (30 s),
-- `timeout` (each wait's, 900 s), `max_interval` (caps each wait's poll delay:
-- kie.ai's schedule otherwise), `on_progress(p)` (`total`, `done`, `failed`,
-- `active`, `created`)
function Client:work(opts)
  _need_fleet(self, "work")
  local conc, lease, timeout = _work_opts(opts)
  if lifecycle.current() then error("work: blocking only (not inside kie.spawn)", 2) end
  local s, err = store.open(self)
  if not s then return nil, err end
  local w = { client = self, store = s, conc = conc, lease = lease, timeout = timeout, active = {},
    nactive = 0, created = 0, redis_errors = 0, max_redis_errors = 100, metas = {},
    on_progress = opts.on_progress, max_interval = opts.max_interval,
    me = format("%s:w%x", self._fleet:_next_id(), math.random(0, 0xffffff)) }
  if opts.batch then
    local meta
    meta, err = s:meta(opts.batch)
    if not meta then
      s:close()
      if meta == nil then return nil, err end
      return nil, errors.new("not_found", "work: no batch " .. opts.batch .. " in this fleet", { op = "work" })
    end
    w.ids = { opts.batch }
  end
  local function finish(ok, ...)
    if not ok then
      local e = ...
      pcall(_drain, w)
      s:close()
      error(e, 0)
    end
    s:close()
    if select(1, ...) == nil then return ... end
    if opts.batch then return self:batch(opts.batch) end
    local n = 0
    for _ in pairs(w.metas) do n = n + 1 end
    return { batches = n }
  end
  return finish(pcall(_loop, w))
end

return Client
