--- The fleet journal: the task journal of `kie.journal` kept in Redis, shared by
-- every client of a fleet (`kie.new{fleet = {...}}`), with leases so that the
-- tasks of a process that died are taken over by another.
--
-- It has the interface of `kie.journal` (`intent`, `created`, `not_created`,
-- `finished`, `unfinished`, `forget`), so kie.paid and kie.client use it
-- unchanged, plus `lease`/`release` and the renewing sleep of a wait.
--
-- * Order: a local journal file (`journal = path`), when given, is written first
--   (fsync'd), then Redis. An intent that reached the file but not Redis is
--   closed in the file (`not_created`, kind `fleet`) and the create is not sent:
--   `intent` returns nil and an error of kind `fleet` (retryable).
-- * Records: in Redis under `{kie:fleet:NAME:journal}:` (one hash slot): `tasks`
--   (task id -> JSON record, with `state` once finished), `open` (unfinished
--   task ids by creation time), `intents` (intent id -> JSON record, with
--   `resolved` once resolved), `unresolved` (intent ids by creation time),
--   `leases` (`t:ID` / `i:ID` -> expiry on Redis's clock), `owners` (`t:ID` /
--   `i:ID` -> the client holding it) and `gone` (ended `t:ID` / `i:ID` by when). Every change is one script (atomic).
-- * Leases: an intent is leased by its writer, a created task by its creator, a
--   waited-on task by its waiter (renewed while it waits); `fleet.lease`
--   seconds, 60 by default. `unfinished` (`client:resume()`) claims, in one
--   script, every open task and unresolved intent whose lease lapsed or that
--   nobody holds (and lists the ones this client holds already), so two
--   resuming processes never both claim one entry.
-- * When the file and Redis disagree, `unfinished` settles it: an entry only the
--   file has (Redis lost it, or the process died between the two writes) is put
--   back into Redis, claimed and listed; an entry Redis saw end (finished,
--   resolved, forgotten) is closed in the file; an entry another live client
--   holds is left to it.
-- * Redis away: a write it missed (a task created, a create that made no task, a
--   terminal state: truths whenever they are written) is kept in the client and
--   written again, in order, before its next script, so the client's later
--   `resume()` does not list as unknown an intent whose task it has (and a user
--   who re-creates unknown intents does not pay twice). An intent Redis missed is
--   closed (`not_created`, kind `fleet`) the same way, in case Redis runs it late.
--   Up to `BEHIND` writes are kept (the oldest go first); the file has them all.
-- * The records of finished tasks and resolved intents are kept `RETAIN` seconds
--   (7 days; `gone` orders them by when they ended), then removed by later scripts.
-- @module kie.fleet_journal

local fleet_mod = require "kie.fleet"

local type, tostring, tonumber, setmetatable, ipairs, error =
  type, tostring, tonumber, setmetatable, ipairs, error
local format, time, min, sort, select = string.format, os.time, math.min, table.sort, select
local unpack = table.unpack or unpack

local M = {}

local FleetJournal = {}
FleetJournal.__index = FleetJournal
FleetJournal.__name = "kie.fleet_journal.FleetJournal"

-- Every script: KEYS tasks, open, intents, unresolved, leases, owners, gone;
-- ARGV[1] the client, [2] the lease (s), [3] the retention (s), then the script's own.
local PRELUDE = [[
local tasks, open, intents, unresolved, leases, owners, gone =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local me, span, retain = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function lease(item, who)
  redis.call('ZADD', leases, string.format('%.6f', now + span), item)
  redis.call('HSET', owners, item, who)
end
local function unlease(item)
  redis.call('ZREM', leases, item)
  redis.call('HDEL', owners, item)
end
local function holder(item) -- the live holder of item's lease, or nil
  local exp = tonumber(redis.call('ZSCORE', leases, item))
  if exp and exp > now then return redis.call('HGET', owners, item) end
  return nil
end
local function put_task(id, model, created, intent)
  local rec = { taskId = id, model = model, created = created }
  if intent ~= '' then rec.intent = intent end
  redis.call('HSET', tasks, id, cjson.encode(rec))
  redis.call('ZADD', open, created, id)
end
-- item ('t:ID' / 'i:ID') ended now; the records of those that ended more than
-- `retain` seconds ago go (100 at most per call)
local function ended(item)
  redis.call('ZADD', gone, string.format('%.6f', now), item)
  local old = redis.call('ZRANGEBYSCORE', gone, '-inf', string.format('%.6f', now - retain), 'LIMIT', 0, 100)
  for _, it in ipairs(old) do
    local id = string.sub(it, 3)
    local hash, field = tasks, 'state'
    if string.sub(it, 1, 1) == 'i' then hash, field = intents, 'resolved' end
    local raw = redis.call('HGET', hash, id)
    if raw and cjson.decode(raw)[field] then redis.call('HDEL', hash, id) end
    redis.call('ZREM', gone, it)
  end
end
local function resolve(intent, how)
  -- (an intent Redis has not seen yet is recorded resolved: a late copy of its
  -- INTENT, run after its caller gave up, leaves it so)
  local raw = redis.call('HGET', intents, intent)
  local rec = raw and cjson.decode(raw) or { intent = intent }
  rec.resolved = how
  redis.call('HSET', intents, intent, cjson.encode(rec))
  redis.call('ZREM', unresolved, intent)
  unlease('i:' .. intent)
  ended('i:' .. intent)
end
]]

-- ARGV[4] intent id, [5] its JSON record, [6] created (epoch s).
local INTENT = PRELUDE .. [[
if redis.call('HSETNX', intents, ARGV[4], ARGV[5]) == 1 then
  redis.call('ZADD', unresolved, ARGV[6], ARGV[4])
  lease('i:' .. ARGV[4], me)
end
return 1
]]

-- ARGV[4] task id, [5] model, [6] created, [7] intent id or "". A task already
-- recorded keeps its record (a callback and the create's answer both tell it).
local CREATED = PRELUDE .. [[
local id, intent = ARGV[4], ARGV[7]
local mine = intent == '' or redis.call('HGET', owners, 'i:' .. intent) == me
if intent ~= '' then resolve(intent, id) end
if not redis.call('HGET', tasks, id) then
  put_task(id, ARGV[5], tonumber(ARGV[6]), intent)
  -- the creator holds it; a task an intent of another client named (a callback
  -- after that client died) is left for resume() at once
  if mine then lease('t:' .. id, me) end
end
return 1
]]

-- ARGV[4] intent id, [5] why.
local NOT_CREATED = PRELUDE .. [[
resolve(ARGV[4], 'not_created:' .. ARGV[5])
return 1
]]

-- ARGV[4] task id, [5] state, [6] at (epoch s).
local FINISHED = PRELUDE .. [[
local id = ARGV[4]
local raw = redis.call('HGET', tasks, id)
local rec = raw and cjson.decode(raw) or { taskId = id, created = tonumber(ARGV[6]) }
rec.state, rec.at = ARGV[5], tonumber(ARGV[6])
redis.call('HSET', tasks, id, cjson.encode(rec))
redis.call('ZREM', open, id)
unlease('t:' .. id)
ended('t:' .. id)
return 1
]]

-- ARGV[4] task id, [5] now (epoch s): leases the task to me (a wait starts or
-- renews); a task the fleet never saw is recorded open. Returns 0 when it
-- finished already, else 1.
local LEASE = PRELUDE .. [[
local id = ARGV[4]
local raw = redis.call('HGET', tasks, id)
if raw and cjson.decode(raw).state then return 0 end
if not raw then put_task(id, false, tonumber(ARGV[5]), '') end
lease('t:' .. id, me)
return 1
]]

-- ARGV[4] task id: ends my lease on it (a wait ended without a terminal state).
local RELEASE = PRELUDE .. [[
if redis.call('HGET', owners, 't:' .. ARGV[4]) == me then unlease('t:' .. ARGV[4]) end
return 1
]]

-- Claims every open task and unresolved intent nobody holds (a lapsed lease is
-- nobody's) and returns those I hold: {'t', record, 'i', record, ...}.
local CLAIM = PRELUDE .. [[
local out = {}
local function take(set, hash, kind)
  for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    local item = kind .. ':' .. id
    local who = holder(item)
    if who == nil or who == me then
      lease(item, me)
      out[#out + 1] = kind
      out[#out + 1] = redis.call('HGET', hash, id) or '{}'
    end
  end
end
take(open, tasks, 't')
take(unresolved, intents, 'i')
return out
]]

-- ARGV[4..] triples (kind 't'|'i', id, JSON record) of the file's open entries.
-- Returns one word per entry: 'list' (mine now: put back if Redis had lost it),
-- 'held' (another live client holds it), or how Redis saw it end ('finished:STATE',
-- 'resolved').
local ADOPT = PRELUDE .. [[
local out = {}
for i = 4, #ARGV, 3 do
  local kind, id, rec = ARGV[i], ARGV[i + 1], cjson.decode(ARGV[i + 2])
  local item = kind .. ':' .. id
  local word
  if kind == 't' then
    local raw = redis.call('HGET', tasks, id)
    local state = raw and cjson.decode(raw).state
    if state then word = 'finished:' .. tostring(state)
    elseif not raw then
      put_task(id, rec.model or false, tonumber(rec.created) or math.floor(now), '')
    end
  else
    local raw = redis.call('HGET', intents, id)
    if raw and cjson.decode(raw).resolved then word = 'resolved'
    elseif not raw then
      redis.call('HSET', intents, id, ARGV[i + 2])
      redis.call('ZADD', unresolved, tonumber(rec.created) or math.floor(now), id)
    end
  end
  if not word then
    local who = holder(item)
    if who == nil or who == me then lease(item, me) word = 'list' else word = 'held' end
  end
  out[#out + 1] = word
end
return out
]]

-- ARGV[4] a task id, an intent id or a fingerprint (the oldest unresolved intent
-- with it). Returns 1 when an open entry ended, else 0.
local FORGET = PRELUDE .. [[
local id = ARGV[4]
if redis.call('ZSCORE', open, id) then
  local rec = cjson.decode(redis.call('HGET', tasks, id) or '{}')
  rec.taskId, rec.state, rec.at = id, 'forgotten', math.floor(now)
  redis.call('HSET', tasks, id, cjson.encode(rec))
  redis.call('ZREM', open, id)
  unlease('t:' .. id)
  ended('t:' .. id)
  return 1
end
if redis.call('ZSCORE', unresolved, id) then resolve(id, 'forgotten') return 1 end
for _, iid in ipairs(redis.call('ZRANGE', unresolved, 0, -1)) do
  local raw = redis.call('HGET', intents, iid)
  if raw and cjson.decode(raw).fingerprint == id then resolve(iid, 'forgotten') return 1 end
end
return 0
]]

--- Seconds the record of a finished task or a resolved intent is kept in Redis.
M.RETAIN = 7 * 86400

--- The most journal writes Redis missed that a client keeps to write again.
M.BEHIND = 1000

--- Opens the journal of `fleet` (a kie.fleet handle; no I/O until first use).
-- @tparam table fleet
-- @tparam[opt] table file a `kie.journal` kept as the write-ahead record
-- @tparam number lease seconds a lease lasts without renewal
-- @tparam[opt] number retain seconds an ended record is kept (`M.RETAIN`)
function M.open(fleet, file, lease, retain)
  local base = "{kie:fleet:" .. fleet._spec.name .. ":journal}:"
  return setmetatable({
    fleet = fleet, file = file, lease_seconds = lease, _done = {},
    _behind = {}, -- the writes Redis missed, oldest first: {script, n =, ARGV from [4]...}
    _keys = { base .. "tasks", base .. "open", base .. "intents", base .. "unresolved",
      base .. "leases", base .. "owners", base .. "gone" },
    _lease = format("%.6f", lease), _retain = format("%.6f", retain or M.RETAIN),
  }, FleetJournal)
end

-- Writes again the writes Redis missed (oldest first): true, or nil and the error
-- of the first that failed again (it and the later ones stay; one Redis refused
-- for good, an error reply that is not transient, is dropped).
function FleetJournal:_catch_up()
  local list = self._behind
  if #list == 0 then return true end
  self._behind = {}
  local fleet = self.fleet
  for i, w in ipairs(list) do
    local r, err = fleet:_eval(w[1], self._keys, fleet._id, self._lease, self._retain, unpack(w, 2, w.n))
    if r == nil and not (err.code and not err.retryable) then
      local rest = {}
      for k = i, #list do rest[#rest + 1] = list[k] end
      for _, x in ipairs(self._behind) do rest[#rest + 1] = x end
      self._behind = rest
      return nil, err
    end
  end
  return true
end

-- Runs `script` with my id and the lease first, after the writes Redis missed:
-- the reply, or nil and an error of kind `fleet` (retryable) whose message
-- starts with `what`.
function FleetJournal:_run(what, script, ...)
  local fleet = self.fleet
  local r, err = self:_catch_up()
  if r then r, err = fleet:_eval(script, self._keys, fleet._id, self._lease, self._retain, ...) end
  if r == nil then return nil, fleet_mod.error(err, what) end
  return r
end

-- Keeps a write Redis missed, to write it again before the next script.
function FleetJournal:_behind_on(script, ...)
  local list = self._behind
  list[#list + 1] = { script, n = select("#", ...) + 1, ... }
  if #list > M.BEHIND then table.remove(list, 1) end
end

-- Runs a write (see _run); one Redis missed is kept (see _behind_on).
function FleetJournal:_write(what, script, ...)
  local r, err = self:_run(what, script, ...)
  if r == nil then self:_behind_on(script, ...) end
  return r, err
end

-- A string message for the `kie.journal` callers that log it.
-- true, or nil, a message and "fleet" (Redis failed)
local function _say(ok, err)
  if ok then return true end
  return nil, tostring(err), "fleet"
end

local function _json(rec)
  local s = require("kie.core").encode(rec)
  if not s then error("kie.fleet_journal: cannot encode a record") end
  return s
end

--- Records the intent of a create, before it is sent: in the file first (when
-- one is kept), then in Redis. Returns the intent id, or nil and an error of
-- kind `fleet` (Redis failed: the file's intent is closed, nothing may be sent)
-- or a message (the file cannot be written).
function FleetJournal:intent(fingerprint, model)
  local file = self.file
  local id
  if file then
    local msg
    id, msg = file:intent(fingerprint, model)
    if not id then return nil, msg end
  else
    id = format("intent_%x_%s", time(), self.fleet:_next_id())
  end
  local created = time()
  local r, err = self:_run("journal", INTENT, id, _json({ intent = id,
    fingerprint = fingerprint, model = model, created = created }), created)
  if not r then
    if file then file:not_created(id, "fleet") end
    self:_behind_on(NOT_CREATED, id, "fleet") -- (Redis may have it, and run it late)
    return nil, err
  end
  return id
end

--- Records a created task, resolving `intent` when given, whoever wrote it (a
-- callback that names an unresolved intent of a process that died). A task
-- already recorded keeps its record. Returns true, or nil, a message and, when
-- Redis failed (not the file), "fleet".
function FleetJournal:created(task_id, model, intent)
  local file = self.file
  local fok, fmsg = true, nil
  if file then fok, fmsg = file:created(task_id, model, intent) end
  local ok, err = self:_write("journal", CREATED, task_id, model or "", time(), intent or "")
  if not fok then return nil, fmsg end
  return _say(ok, err)
end

--- Records that the create of `intent` surely made no task.
function FleetJournal:not_created(intent, kind)
  local file = self.file
  local fok, fmsg = true, nil
  if file then fok, fmsg = file:not_created(intent, kind) end
  local ok, err = self:_write("journal", NOT_CREATED, intent, tostring(kind))
  if not fok then return nil, fmsg end
  return _say(ok, err)
end

--- Records a terminal state (`success`, `fail`, `not_found`) and ends the
-- task's lease; once per task per client.
function FleetJournal:finished(task_id, state)
  if self._done[task_id] then return true end
  local file = self.file
  local fok, fmsg = true, nil
  if file then fok, fmsg = file:finished(task_id, state) end
  local ok, err = self:_write("journal", FINISHED, task_id, state, time())
  if ok then self._done[task_id] = true end
  if not fok then return nil, fmsg end
  return _say(ok, err)
end

local function _record(raw, kind)
  local core = require "kie.core"
  local rec = type(raw) == "string" and core.decode(raw) or nil
  if type(rec) ~= "table" then return nil end
  local created = tonumber(rec.created)
  if kind == "t" then
    if type(rec.taskId) ~= "string" then return nil end
    return { taskId = rec.taskId, model = type(rec.model) == "string" and rec.model or nil,
      created = created }
  end
  if type(rec.intent) ~= "string" then return nil end
  return { unknown = true, intent = rec.intent,
    fingerprint = type(rec.fingerprint) == "string" and rec.fingerprint or nil,
    model = type(rec.model) == "string" and rec.model or nil, created = created }
end

-- Settles the file's open entries against Redis (see the module's text): the
-- ones to list are added to `out`, keyed in `seen`.
function FleetJournal:_adopt(out, seen)
  local args, entries = {}, {}
  for _, e in ipairs(self.file:unfinished()) do
    local kind, id = e.taskId and "t" or "i", e.taskId or e.intent
    if not seen[kind .. ":" .. id] then
      entries[#entries + 1] = e
      args[#args + 1] = kind
      args[#args + 1] = id
      args[#args + 1] = _json(e)
    end
  end
  if #entries == 0 then return true end
  local words, err = self:_run("resume", ADOPT, (table.unpack or unpack)(args))
  if not words then return nil, err end
  for i, e in ipairs(entries) do
    local w = words[i]
    if w == "list" then out[#out + 1] = e
    elseif w == "resolved" then self.file:forget(e.intent)
    elseif type(w) == "string" and w:sub(1, 9) == "finished:" then self.file:finished(e.taskId, w:sub(10))
    end
  end
  return true
end

--- Claims and lists the fleet's open tasks and unresolved intents that nobody
-- holds (their lease lapsed: their process died) or that this client holds,
-- oldest first, in `kie.journal`'s shapes: `{taskId =, model =, created =}`,
-- `{unknown = true, intent =, fingerprint =, model =, created =}`. The local
-- file's open entries are settled against Redis first. Returns the list, or nil
-- and an error of kind `fleet`.
function FleetJournal:unfinished()
  local r, err = self:_run("resume", CLAIM)
  if not r then return nil, err end
  local out, seen = {}, {}
  for i = 1, #r, 2 do
    local e = _record(r[i + 1], r[i])
    if e then
      out[#out + 1] = e
      seen[r[i] .. ":" .. (e.taskId or e.intent)] = true
    end
  end
  if self.file then
    local ok, aerr = self:_adopt(out, seen)
    if not ok then return nil, aerr end
  end
  local function key(e) return e.created or 0 end
  sort(out, function(a, b)
    if key(a) ~= key(b) then return key(a) < key(b) end
    return (a.taskId or a.intent) < (b.taskId or b.intent)
  end)
  return out
end

--- Ends one open entry fleet-wide: a task id, an intent id or a fingerprint.
-- Returns true when one ended, false when nothing open matches, or nil and a
-- message (the file) or an error of kind `fleet` (Redis).
function FleetJournal:forget(id)
  local file = self.file
  if file then
    local fok, fmsg = file:forget(id)
    if fok == nil then return nil, fmsg end
  end
  local r, err = self:_run("forget", FORGET, id)
  if r == nil then return nil, err end
  return r == 1
end

--- Leases `task_id` to this client (a wait starts). Returns true, or nil and an
-- error of kind `fleet`.
function FleetJournal:lease(task_id)
  local r, err = self:_run("lease", LEASE, task_id, time())
  if r == nil then return nil, err end
  return true
end

--- Ends this client's lease on `task_id` (its wait ended without a terminal
-- state): another client's resume() may claim it at once. Best effort.
function FleetJournal:release(task_id)
  return self:_run("release", RELEASE, task_id)
end

--- A wait's lease keeper for `task_id`: a function that renews the lease when a
-- third of it passed since the last renewal (one Redis call) and returns the
-- seconds until the next is due. A failed renewal is logged by `log`, and the
-- wait goes on: the lease lapses then, and another client may wait on it too.
function FleetJournal:renewer(task_id, now, log)
  local every = self.lease_seconds / 3
  local due = now() + every
  return function()
    if now() >= due then
      local ok, err = self:lease(task_id)
      if not ok and log then log("warn", "fleet lease not renewed: " .. tostring(err), { task_id = task_id }) end
      due = now() + every
    end
    return due - now()
  end
end

--- `env` whose sleep calls `renew` (a `renewer`) between sleeps no longer than
-- the time to the next renewal. A sleep of `env` that returns true (a wait's nap
-- that a callback ended) ends it early, returning true.
function FleetJournal.renewing(_, env, renew)
  local sleep, now = env.sleep, env.now
  return { now = now, random = env.random, sleep = function(s)
    local stop = now() + s
    while true do
      local next_in = renew()
      local left = stop - now()
      if left <= 0 then return end
      if sleep(min(left, next_in)) then return true end
    end
  end }
end

function FleetJournal:__tostring()
  return "kie.fleet_journal(" .. tostring(self.fleet._spec.name) .. ")"
end

return M
