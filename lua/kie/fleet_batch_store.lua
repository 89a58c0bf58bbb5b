--- The Redis state of fleet batches (`client:submit`, `client:work`,
-- `client:batch`): one connection per call, every change of an item in one
-- atomic script on Redis's clock.
--
-- Keys, all in one hash slot per fleet (`{kie:batch:NAME}:`):
--
-- * `all`: a sorted set of the batch ids (scored by submit time);
-- * `ID:meta`: hash `total`, `done`, `failed`, `created` (written last by
--   submit: a batch without it does not exist);
-- * `ID:req`: hash index -> the validated request as JSON;
-- * `ID:stream`: one entry `i = index` per item, consumer group `kie`;
-- * `ID:item:I`: hash `state` (absent: pending; `intent`, `created`, `done`,
--   `failed`), `intent`, `owner` (a worker id), `lease` (Redis time until which
--   the owner holds it), `task_id`, `kind`, `message`, `urls` (JSON).
--
-- The create-once rule: `claim` records the item's intent (owned by the worker,
-- leased) before its create is sent. A claim of an item whose intent's owner
-- let its lease lapse never sends a create: with a task id it waits on it;
-- without one the item ends `unknown_outcome` (the create may have gone out).
-- `record` (the owner's answer, or a callback's through `created`) gives such an
-- item its task id back and queues it again, to be waited on.
-- @module kie.fleet_batch_store

local errors = require "kie.errors"

local type, tostring, tonumber, setmetatable, ipairs, select = type, tostring, tonumber, setmetatable, ipairs, select
local format, random = string.format, math.random
local unpack = table.unpack or unpack

local M = {}

local GROUP = "kie"
local CHUNK = 200 -- items per submit script (bounded argument lists)

--- Is `id` a batch id this module accepts (letters, digits, `_`, `-`, `.`)?
function M.valid_id(id)
  return type(id) == "string" and #id > 0 and #id <= 100 and id:match("^[%w_%-%.]+$") ~= nil
end

local PRELUDE = [[
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
]]

-- KEYS req, stream; ARGV first index, then the requests' JSON.
local PUT = [[
local first = tonumber(ARGV[1])
for j = 2, #ARGV do
  local i = first + j - 2
  redis.call('HSET', KEYS[1], i, ARGV[j])
  redis.call('XADD', KEYS[2], '*', 'i', i)
end
return 1
]]

-- KEYS meta, stream, all; ARGV id, total.
local COMMIT = PRELUDE .. [[
redis.call('XGROUP', 'CREATE', KEYS[2], 'kie', '0', 'MKSTREAM')
redis.call('HSET', KEYS[1], 'total', ARGV[2], 'done', 0, 'failed', 0, 'created', t[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 1
]]

-- KEYS item, meta; ARGV worker, intent, lease (s).
-- {'create', intent} | {'wait', task_id, intent} | {'unknown', intent} | {'ended'} | {'busy'}
local CLAIM = PRELUDE .. [[
local f = redis.call('HMGET', KEYS[1], 'state', 'owner', 'lease', 'task_id', 'intent')
local st, owner, lease, tid, intent = f[1], f[2], tonumber(f[3]) or 0, f[4], f[5]
local me = ARGV[1]
if st == 'done' or st == 'failed' then return { 'ended' } end
local until_ = string.format('%.6f', now + tonumber(ARGV[3]))
if st == 'intent' or st == 'created' then
  if lease > now then return { 'busy' } end -- its owner lives (it renews the lease)
  if tid then
    redis.call('HSET', KEYS[1], 'owner', me, 'lease', until_)
    return { 'wait', tid, intent or '' }
  end
  redis.call('HSET', KEYS[1], 'state', 'failed', 'kind', 'unknown_outcome', 'message',
    'its worker died after recording the intent to create it: the create may have been sent; it was not sent again')
  redis.call('HINCRBY', KEYS[2], 'failed', 1)
  return { 'unknown', intent or '' }
end
redis.call('HSET', KEYS[1], 'state', 'intent', 'intent', ARGV[2], 'owner', me, 'lease', until_)
return { 'create', ARGV[2] }
]]

-- KEYS item, meta, stream; ARGV intent, task_id, index.
-- 0: not this intent (or its task id known already), 1: recorded, 2: recorded
-- and the item (ended unknown_outcome) queued again to be waited on.
local RECORD = [[
local f = redis.call('HMGET', KEYS[1], 'state', 'intent', 'task_id', 'kind')
if f[2] ~= ARGV[1] or f[3] then return 0 end
redis.call('HSET', KEYS[1], 'task_id', ARGV[2])
if f[1] == 'intent' then
  redis.call('HSET', KEYS[1], 'state', 'created')
  return 1
end
if f[1] == 'failed' and f[4] == 'unknown_outcome' then
  redis.call('HSET', KEYS[1], 'state', 'created', 'lease', 0)
  redis.call('HDEL', KEYS[1], 'kind', 'message')
  redis.call('HINCRBY', KEYS[2], 'failed', -1)
  redis.call('XADD', KEYS[3], '*', 'i', ARGV[3])
  return 2
end
return 0
]]

-- KEYS item, meta; ARGV state (done|failed), task_id or '', kind, message, urls JSON.
local FINISH = [[
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'done' or st == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'kind', ARGV[3], 'message', ARGV[4], 'urls', ARGV[5])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'task_id', ARGV[2]) end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
]]

-- KEYS stream, then the items; ARGV worker, lease (s), lapse ("1": end the
-- lease now), then the items' entry ids. The worker's items get their lease
-- renewed and their stream entries back (XCLAIM resets the idle time).
local RENEW = PRELUDE .. [[
local me = ARGV[1]
local until_ = ARGV[3] == '1' and '0' or string.format('%.6f', now + tonumber(ARGV[2]))
for j = 2, #KEYS do
  if redis.call('HGET', KEYS[j], 'owner') == me then
    redis.call('HSET', KEYS[j], 'lease', until_)
    if ARGV[3] ~= '1' then redis.call('XCLAIM', KEYS[1], 'kie', me, 0, ARGV[j + 2], 'JUSTID') end
  end
end
return 1
]]

-- KEYS meta, then the items. {total, done, failed, then per item its fields}
local RESULTS = [[
local m = redis.call('HMGET', KEYS[1], 'total', 'done', 'failed')
local out = { m[1] or '', m[2] or '0', m[3] or '0' }
for j = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[j], 'state', 'task_id', 'kind', 'message', 'urls', 'intent')
  for k = 1, 6 do out[#out + 1] = f[k] or '' end
end
return out
]]

local Store = {}
Store.__index = Store

local function fleet_error(err, what)
  err = errors.wrap(err)
  if type(err) ~= "table" then err = errors.new("fleet", tostring(err)) end
  return errors.new("fleet", what .. ": " .. tostring(err.message), { retryable = true })
end

--- Opens a connection to the fleet's Redis of `client` (a fleet client).
-- Returns the store, or nil, err (kind `fleet`).
function M.open(client)
  local fleet = client._fleet
  local spec = fleet._spec
  local conn, err = fleet._redis.connect(spec.redis, { timeout = spec.timeout or 2,
    connect_timeout = spec.connect_timeout or 2 })
  if not conn then return nil, fleet_error(err, "batch: Redis") end
  return setmetatable({ _conn = conn, _null = fleet._redis.null, _core = client._mod,
    _base = "{kie:batch:" .. spec.name .. "}:" }, Store)
end

--- Closes the connection (idempotent).
function Store:close()
  if self._conn then self._conn:close() end
  self._conn = nil
end

function Store:_key(id, what)
  return self._base .. id .. ":" .. what
end

function Store:_item(id, i)
  return self._base .. id .. ":item:" .. i
end

-- conn:eval with a fleet error naming `what` on failure.
function Store:_eval(what, script, keys, ...)
  local args, n = { script, #keys }, #keys
  for j = 1, n do args[2 + j] = keys[j] end
  for j = 1, select("#", ...) do args[2 + n + j] = (select(j, ...)) end
  local r, err = self._conn:eval(unpack(args, 1, 2 + n + select("#", ...)))
  if r == nil then return nil, fleet_error(err, what) end
  return r
end

function Store:_call(what, ...)
  local r, err = self._conn:call(...)
  if r == nil then return nil, fleet_error(err, what) end
  return r
end

--- Puts a batch of requests (JSON strings) on Redis; returns its new id or nil,
-- err (then nothing of it is visible: the `meta` hash is written last).
function Store:submit(jsons)
  local id = format("%x-%06x%06x", os.time(), random(0, 0xffffff), random(0, 0xffffff))
  local req, stream = self:_key(id, "req"), self:_key(id, "stream")
  for first = 1, #jsons, CHUNK do
    local last = first + CHUNK - 1
    if last > #jsons then last = #jsons end
    local ok, err = self:_eval("submit", PUT, { req, stream }, first, unpack(jsons, first, last))
    if not ok then return nil, err end
  end
  local ok, err = self:_eval("submit", COMMIT, { self:_key(id, "meta"), stream, self._base .. "all" },
    id, #jsons)
  if not ok then return nil, err end
  return id
end

--- The batch's counts `{total, done, failed}`, nil when there is no such batch,
-- or nil, err.
function Store:meta(id)
  local r, err = self:_call("batch", "HMGET", self:_key(id, "meta"), "total", "done", "failed")
  if not r then return nil, err end
  local total = tonumber(r[1])
  if not total then return false end
  return { total = total, done = tonumber(r[2]) or 0, failed = tonumber(r[3]) or 0 }
end

--- The ids of the fleet's batches, oldest first (or nil, err).
function Store:batches()
  return self:_call("batches", "ZRANGE", self._base .. "all", 0, -1)
end

--- Claims item `i` for worker `me` (see CLAIM above): a list whose first value
-- is `create`, `wait`, `unknown`, `ended` or `busy`.
function Store:claim(id, i, me, lease)
  local intent = format("kb:%s:%d:%s", id, i, me)
  return self:_eval("claim", CLAIM, { self:_item(id, i), self:_key(id, "meta") }, me, intent,
    format("%.3f", lease))
end

--- Item `i`'s request (the JSON text), or nil, err.
function Store:request(id, i)
  local r, err = self:_call("request", "HGET", self:_key(id, "req"), i)
  if r == self._null then return nil, errors.new("protocol", "batch " .. id .. ": item " .. i .. " has no request") end
  return r, err
end

--- Gives the intent `intent` of item `i` its task id: 0, 1 or 2 (see RECORD).
function Store:record(id, i, intent, task_id)
  return self:_eval("record", RECORD, { self:_item(id, i), self:_key(id, "meta"), self:_key(id, "stream") },
    intent, task_id, i)
end

--- Ends item `i` (once): `state` is "done" or "failed"; `r` holds `task_id`,
-- `kind`, `message`, `urls` (a list).
function Store:finish(id, i, state, r)
  local urls = r.urls and self._core.encode(r.urls) or ""
  return self:_eval("finish", FINISH, { self:_item(id, i), self:_key(id, "meta") }, state,
    r.task_id or "", r.kind or "", r.message or "", urls)
end

--- Acknowledges stream entry `entry` (its item ended or needs no work here).
function Store:ack(id, entry)
  return self:_call("ack", "XACK", self:_key(id, "stream"), GROUP, entry)
end

--- Renews the lease of worker `me` on `items` (`{i =, entry =}` each), or ends
-- it at once when `lapse`.
function Store:renew(id, me, lease, items, lapse)
  if #items == 0 then return true end
  local keys, entries = { self:_key(id, "stream") }, {}
  for _, it in ipairs(items) do
    keys[#keys + 1] = self:_item(id, it.i)
    entries[#entries + 1] = it.entry
  end
  return self:_eval("renew", RENEW, keys, me, format("%.3f", lease), lapse and "1" or "0", unpack(entries))
end

-- The first entry of an XREADGROUP / XAUTOCLAIM reply list: entry id, index.
local function first_entry(list)
  local e = type(list) == "table" and list[1]
  if type(e) ~= "table" or type(e[2]) ~= "table" then return nil end
  local f = e[2]
  for k = 1, #f - 1, 2 do
    if f[k] == "i" then return e[1], tonumber(f[k + 1]) end
  end
  return nil
end

--- The next item for worker `me`: one a dead worker left (idle in the group for
-- `idle` seconds), else a new one. Returns entry id, index; nil when none; or
-- nil, err.
function Store:take(id, me, idle)
  local stream = self:_key(id, "stream")
  local r, err = self:_call("take", "XAUTOCLAIM", stream, GROUP, me, math.floor(idle * 1000), "0-0", "COUNT", 1)
  if not r then return nil, err end
  local entry, i = first_entry(r[2])
  if entry then return entry, i end
  r, err = self:_call("take", "XREADGROUP", "GROUP", GROUP, me, "COUNT", 1, "STREAMS", stream, ">")
  if not r then return nil, err end
  if r == self._null then return nil end
  return first_entry(r[1] and r[1][2])
end

--- `{total =, done =, failed =, results = {...}}` of batch `id` (see
-- `client:batch`), false when there is no such batch, or nil, err.
function Store:results(id)
  local meta, err = self:meta(id)
  if not meta then return meta, err end
  local keys = { self:_key(id, "meta") }
  for i = 1, meta.total do keys[#keys + 1] = self:_item(id, i) end
  local r
  r, err = self:_eval("batch", RESULTS, keys)
  if not r then return nil, err end
  local res = {}
  for i = 1, meta.total do
    local b = 3 + (i - 1) * 6
    local st, tid, kind, msg, urls, intent = r[b + 1], r[b + 2], r[b + 3], r[b + 4], r[b + 5], r[b + 6]
    local e = { state = st ~= "" and st or "pending" }
    if tid ~= "" then e.task_id = tid end
    if kind ~= "" then e.kind = kind end
    if msg ~= "" then e.message = msg end
    if intent ~= "" then e.intent = intent end
    if urls ~= "" then e.urls = self._core.decode(urls) end
    res[i] = e
  end
  return { total = meta.total, done = tonumber(r[2]) or 0, failed = tonumber(r[3]) or 0, results = res }
end

--- Parses an intent id made by `claim`: batch id, index (nil when it is not one).
function M.parse_intent(intent)
  if type(intent) ~= "string" then return nil end
  local id, i = intent:match("^kb:([%w_%-%.]+):(%d+):")
  if not id then return nil end
  return id, tonumber(i)
end

M.Store = Store
return M
