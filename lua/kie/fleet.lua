--- Fleet mode: clients in many processes (and machines) on one kie.ai account share
-- its rate limits through Redis (`kie.new{fleet = {redis = URL, name = NAME}}`).
--
-- Pacing is the rule of `kie.ratelimit` ("pacing counts where kie.ai counts") kept
-- in Redis, in one atomic script per step, on Redis's clock (`TIME`), so workers'
-- clocks may be skewed:
--
-- * a sliding-window LOG per budget (`create`, `poll`): `acquire` registers a held
--   slot before the request is sent (a lease: it counts as answered `hold` seconds
--   after it was taken, so a dead process holds nothing for ever), `release` at the
--   answer turns it into an entry that counts for `window + margin` from then. A
--   request may go only while fewer than `limit` slots are held or counting.
-- * waiters are served in arrival order: each takes a ticket in Redis and goes only
--   from the head of the queue (a waiter that vanished leaves it after its queue
--   lease, `GRACE` seconds past the wait it was told).
-- * Redis down or unreachable: `acquire` returns `nil, err` (kind `fleet`,
--   retryable) and the request is not sent. A `release` that fails is dropped: the
--   slot's lease in Redis ends it (later, never earlier).
-- * A Redis that got a step and did not answer in time (stopped, swapping, cut off
--   with the socket open) may run it later, when its caller gave up: an acquire
--   would then hold a slot, or a place at the head of the queue, that nobody uses,
--   for `hold` seconds. So the ids of a failed acquire go with this limiter's next
--   acquire, which drops what they hold and marks them (`dropped`, until the keys'
--   ttl) so that a copy run later does nothing.
-- * a Redis that has no record of the fleet (new, or it lost its data: the hash
--   `meta` with `blocked` is gone) counts the window as full for one window, since
--   the account may have been used during the last one. Not covered: a request sent
--   before the loss and answered more than a window after it (its held slot was lost
--   with the data; its release records it, but only at its answer).
--
-- The scripts and the limiter are the same everywhere; only the Redis transport
-- differs: by default kie.redis (hiredis' synchronous API: the calls block, bounded
-- by `fleet.timeout`), inside nginx kie.redis_ngx (lua-resty-redis over cosockets:
-- only the calling request waits). The waits between calls go through `env.sleep`,
-- so a coroutine client yields there (kie.ngx: ngx.sleep).
-- Needs the kie-fleet rock (kie.redis) or, in nginx, lua-resty-redis.
-- @module kie.fleet

local errors = require "kie.errors"
local ratelimit = require "kie.ratelimit"

local type, pairs, tostring, tonumber, error, setmetatable, pcall, require, select =
  type, pairs, tostring, tonumber, error, setmetatable, pcall, require, select
local format, random = string.format, math.random
local unpack = table.unpack or unpack

local M = {}

--- The fields of the `fleet` option and their Lua types.
M.OPTIONS = { redis = "string", name = "string", timeout = "number", connect_timeout = "number",
  lease = "number" }

--- Seconds a waited-on task stays leased without a renewal (`fleet.lease`'s default).
M.LEASE = 60

local GRACE = 2      -- seconds a waiter keeps its place in the queue past the wait it was told
local CAP = 0.5      -- the longest sleep between two looks at the queue
local DOUBTS = 200   -- the most ids of failed acquires kept for the next one to drop

-- Keys: {kie:fleet:NAME:BUDGET}:held|done|queue|qlease|meta|dropped (one hash slot per budget).
-- ARGV: span (window + margin), hold, ttl of the keys (s), then the step's own.
local PRELUDE = [[
if redis.replicate_commands then redis.replicate_commands() end -- Redis < 5: TIME, then writes
local held, done, queue, qlease, meta, dropped = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local span, hold, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(x) return string.format('%.6f', x) end
local blocked = tonumber(redis.call('HGET', meta, 'blocked'))
if not blocked then
  -- no record of this fleet (new Redis or lost data): the last window is unknown
  blocked = now + span
  redis.call('HSET', meta, 'blocked', num(blocked))
  redis.call('HINCRBY', meta, 'epoch', 1)
end
local lapsed = redis.call('ZRANGEBYSCORE', held, '-inf', num(now), 'WITHSCORES')
for i = 1, #lapsed, 2 do redis.call('ZADD', done, num(tonumber(lapsed[i + 1]) + span), lapsed[i]) end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', held, '-inf', num(now)) end
redis.call('ZREMRANGEBYSCORE', done, '-inf', num(now))
redis.call('ZREMRANGEBYSCORE', dropped, '-inf', num(now))
local function touch()
  for _, k in ipairs({ held, done, queue, qlease, dropped }) do redis.call('EXPIRE', k, ttl) end
end
]]

-- ARGV[4] waiter id, [5] its ticket or "", [6] limit, [7] slot id, [8] grace,
-- [9..] the waiter and slot ids of acquires that failed (dropped first).
-- Returns {1, ticket, "0"} (slot held), {0, ticket, seconds to wait at least},
-- or {-1, 0, "0"} (this waiter was dropped: its caller gave up).
local ACQUIRE = PRELUDE .. [[
local me, ticket, limit, slot, grace = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
for i = 9, #ARGV do
  redis.call('ZREM', held, ARGV[i])
  redis.call('ZREM', queue, ARGV[i])
  redis.call('ZREM', qlease, ARGV[i])
  redis.call('ZADD', dropped, num(now + ttl), ARGV[i])
end
if #ARGV >= 9 then touch() end
if redis.call('ZSCORE', dropped, me) then return { -1, 0, '0' } end
local gone = redis.call('ZRANGEBYSCORE', qlease, '-inf', num(now))
for i = 1, #gone do redis.call('ZREM', queue, gone[i]) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', qlease, '-inf', num(now)) end
if not ticket then ticket = redis.call('HINCRBY', meta, 'tickets', 1) end
redis.call('ZADD', queue, 'NX', ticket, me)
local pos = redis.call('ZRANK', queue, me)
local nheld = redis.call('ZCARD', held)
local n = nheld + redis.call('ZCARD', done)
if pos == 0 and n < limit and blocked <= now then
  redis.call('ZREM', queue, me)
  redis.call('ZREM', qlease, me)
  redis.call('ZADD', held, num(now + hold), slot)
  touch()
  return { 1, ticket, '0' }
end
-- my turn comes when the k-th slot stops counting (a held one: window + margin
-- after its answer, which comes now at the earliest)
local k, d = n - limit + 1 + pos, 0.005
if k >= 1 and n > 0 then
  local exp = {}
  local ds = redis.call('ZRANGE', done, 0, -1, 'WITHSCORES')
  for i = 2, #ds, 2 do exp[#exp + 1] = tonumber(ds[i]) end
  for _ = 1, nheld do exp[#exp + 1] = now + span end
  table.sort(exp)
  if k > #exp then k = #exp end
  if exp[k] - now > d then d = exp[k] - now end
end
if blocked - now > d then d = blocked - now end
redis.call('ZADD', qlease, num(now + d + grace), me)
touch()
return { 0, ticket, num(d) }
]]

-- ARGV[4] slot id, [5] "1" when the server answered 429 (the whole window is used).
local RELEASE = PRELUDE .. [[
redis.call('ZREM', held, ARGV[4])
redis.call('ZADD', done, num(now + span), ARGV[4])
if ARGV[5] == '1' and now + span > blocked then redis.call('HSET', meta, 'blocked', num(now + span)) end
touch()
return 1
]]

-- ARGV[4] waiter id: leaves the queue (a deadline came first).
local LEAVE = PRELUDE .. [[
redis.call('ZREM', queue, ARGV[4])
redis.call('ZREM', qlease, ARGV[4])
return 1
]]

--- Checks a `fleet` option (raises on unknown fields and wrong types; `redis` and
-- `name` are required).
function M.check(spec, level)
  level = (level or 1) + 1
  for k, v in pairs(spec) do
    local want = M.OPTIONS[k]
    if not want then error("kie.new: option 'fleet': unknown field '" .. tostring(k) .. "'", level) end
    if type(v) ~= want then
      error("kie.new: option 'fleet': field '" .. k .. "' must be a " .. want .. ", got " .. type(v), level)
    end
  end
  for _, k in pairs{ "redis", "name" } do
    if spec[k] == nil or spec[k] == "" then
      error("kie.new: option 'fleet': field '" .. k .. "' is required", level)
    end
  end
  if not spec.redis:match("^redis://.") then
    error("kie.new: option 'fleet': field 'redis' must be a redis:// URL, got '" .. spec.redis .. "'", level)
  end
  for _, k in pairs{ "timeout", "connect_timeout", "lease" } do
    local v = spec[k]
    if v ~= nil and not (v > 0 and v <= 86400) then
      error("kie.new: option 'fleet': field '" .. k .. "' must be a number of seconds in (0, 86400]", level)
    end
  end
end

local Fleet = {}
Fleet.__index = Fleet
Fleet.__name = "kie.fleet.Fleet"

--- Makes a fleet handle (no I/O: Redis is reached on first use). `transport`
-- reaches Redis: a module with `connect(url, {timeout =, connect_timeout =})` that
-- returns a connection with `eval(script, nkeys, ...)` and `close()`, failing with
-- `nil, {kind = "fleet", message, code?, retryable}` (a connection whose field
-- `pooled` is true may fail on an old socket at any call: retried once). Default:
-- kie.redis (hiredis); raises when it is missing.
function M.open(spec, transport)
  M.check(spec, 2)
  local redis = transport
  if not redis then
    local ok, r = pcall(require, "kie.redis")
    if not ok then
      error("kie.new: option 'fleet' needs kie.redis (the kie-fleet rock, built on hiredis: "
        .. "luarocks make kie-fleet-scm-1.rockspec, or make build-fleet): " .. tostring(r), 3)
    end
    redis = r
  end
  return setmetatable({
    _redis = redis, _spec = spec, _conn = false, _n = 0,
    _id = format("%x%x", random(0, 0x7fffffff), random(0, 0x7fffffff)),
  }, Fleet)
end

-- A fresh id for a slot or a waiter: unique across processes and Redis restarts.
function Fleet:_next_id()
  self._n = self._n + 1
  return self._id .. ":" .. self._n
end

-- Runs conn:METHOD(...) on Redis (connecting first when needed): the reply, or
-- nil, err. A connection that broke since its last use (Redis restarted) is tried
-- once more on a new one; not one that got no answer in time (`err.timeout`: Redis
-- is stopped or cut off, and may still run it). Every command sent through here
-- may run twice (a slot or a waiter is a set member; a journal record is written
-- with the same value; an event read or written twice wakes a wait twice). A
-- pooled transport (kie.redis_ngx) may hand out an old socket at any call.
function Fleet:_run(method, ...)
  local conn, fresh = self._conn, false
  if not conn then
    local spec = self._spec
    local err
    conn, err = self._redis.connect(spec.redis, { timeout = spec.timeout or 2,
      connect_timeout = spec.connect_timeout or 2 })
    if not conn then return nil, err end
    self._conn, fresh = conn, true
  end
  local r, err = conn[method](conn, ...)
  if r == nil and (not fresh or conn.pooled) and err.retryable and not err.code and not err.timeout then
    r, err = conn[method](conn, ...)
  end
  return r, err
end

-- Runs `script` on Redis with the key list `keys` (see _run).
function Fleet:_eval(script, keys, ...)
  local nk, na = #keys, select("#", ...)
  local args = { ... }
  for i = na, 1, -1 do args[nk + i] = args[i] end
  for i = 1, nk do args[i] = keys[i] end
  return self:_run("eval", script, nk, unpack(args, 1, nk + na))
end

-- `err` (a kie.redis failure) as a retryable error of kind `fleet` whose message
-- starts with `what` and ends with "; nothing was sent".
local function fleet_error(err, what)
  err = errors.wrap(err)
  if type(err) ~= "table" then err = errors.new("fleet", tostring(err)) end
  err.message = what .. ": " .. tostring(err.message) .. "; nothing was sent"
  err.retryable = true
  return err
end
M.error = fleet_error

--- This fleet's journal (kie.fleet_journal): intents, task ids, terminal states
-- and leases in Redis; `file` (a kie.journal, or nil) stays the write-ahead record.
function Fleet:journal(file)
  return require("kie.fleet_journal").open(self, file, self._spec.lease or M.LEASE)
end

--- Closes the Redis connection (idempotent; a later call reconnects).
function Fleet:close()
  if self._conn then self._conn:close() end
  self._conn = false
end

local Limiter = {}
Limiter.__index = Limiter
Limiter.__name = "kie.fleet.Limiter"

--- A limiter shared by every client of this fleet for `budget` ("create", "poll"),
-- with the settings of `lim` (a `kie.ratelimit` limiter: limit, window, margin, hold).
function Fleet:limiter(budget, lim)
  local base = "{kie:fleet:" .. self._spec.name .. ":" .. budget .. "}:"
  local span = lim.window + lim.margin
  local hold = lim.hold == math.huge and 86400 or lim.hold
  return setmetatable({
    fleet = self, limit = lim.limit, window = lim.window, margin = lim.margin, hold = hold,
    _keys = { base .. "held", base .. "done", base .. "queue", base .. "qlease", base .. "meta",
      base .. "dropped" },
    _doubt = {}, -- ids of acquires that failed: Redis may still run them
    _span = format("%.6f", span),
    _ttl = tostring(math.ceil(hold + span + GRACE + 60)),
  }, Limiter)
end

-- The ARGV every step starts with (hold may be raised after making: kie.ngx).
local function head(self)
  return self._span, format("%.6f", self.hold), self._ttl
end

-- Notes the ids of a failed acquire (see the module's text); the oldest go past DOUBTS.
local function doubt(self, me, slot)
  local list = self._doubt
  list[#list + 1], list[#list + 2] = me, slot
  while #list > DOUBTS do table.remove(list, 1) end
end

-- Forgets the first `n` ids of failed acquires, sent from `list` (an acquire
-- dropped them in Redis); when another acquire replaced the list meanwhile, they
-- stay and go again with the next (dropping is idempotent).
local function undoubt(self, list, n)
  if self._doubt ~= list then return end
  local rest = {}
  for i = n + 1, #list do rest[#rest + 1] = list[i] end
  self._doubt = rest
end

--- Waits (env.sleep) until the fleet has a slot, then holds it. Returns the slot,
-- or nil and the seconds still to wait when `deadline` (by env.now()) comes first,
-- or nil and an error of kind `fleet` when Redis fails (nothing may be sent).
function Limiter:acquire(env, deadline)
  local fleet = self.fleet
  local me, slot = fleet:_next_id(), fleet:_next_id()
  local ticket = ""
  return ratelimit.wait_turn(env, deadline, CAP, function()
    local span, hold, ttl = head(self)
    local list = self._doubt
    local n = #list
    local r, err = fleet:_eval(ACQUIRE, self._keys, span, hold, ttl, me, ticket, self.limit, slot, GRACE,
      unpack(list, 1, n))
    if not r then
      doubt(self, me, slot)
      return nil, fleet_error(err, "pacing")
    end
    if n > 0 then undoubt(self, list, n) end
    if r[1] == 1 then return slot end
    if r[1] == -1 then
      doubt(self, me, slot)
      return nil, fleet_error({ kind = "fleet", message = "this wait for a slot was dropped" }, "pacing")
    end
    ticket = tostring(r[2])
    return nil, tonumber(r[3]) or CAP
  end, function()
    local span, hold, ttl = head(self)
    fleet:_eval(LEAVE, self._keys, span, hold, ttl, me)
  end)
end

--- Ends the hold of `slot`: it counts from now (Redis's clock) for window + margin.
-- `rejected` (the server answered 429) marks the whole window as used. Returns
-- true, or nil, err when Redis failed (the slot's lease ends it then).
function Limiter:release(slot, _, rejected)
  local span, hold, ttl = head(self)
  local r, err = self.fleet:_eval(RELEASE, self._keys, span, hold, ttl, slot, rejected and "1" or "0")
  if not r then return nil, fleet_error(err, "release") end
  return true
end

M.Fleet = Fleet
M.Limiter = Limiter
return M
