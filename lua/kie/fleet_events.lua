--- Fleet mode's callback events in Redis: what `client:deliver` records for the
-- whole fleet and what waits read back (used by `kie.wake`).
--
-- Keys, all in one hash slot `{kie:fleet:NAME:events}`:
--
-- * `stream`: one fleet-wide Redis stream of `task STATE` entries (XADD, capped
--   near `MAXLEN` entries). Each process reads it from the last id it saw (XREAD),
--   so an event written while its connection was down is read after it reconnects:
--   nothing is lost as plain pub/sub would lose it. One stream for the fleet, not
--   one per task: a process follows all its waits with one XREAD.
-- * `task:ID`: a hash per task (`state` once a callback came; `created` on
--   Redis's clock, `model`, `cb` = 1 when its create carried a callBackUrl), kept
--   `TTL` seconds: a wait that starts after the callback still sees it, and any
--   process's wait knows when the task was made and whether a callback will come.
-- * `delivering`: set for `TTL` seconds by each callback recorded: the fleet does
--   take callbacks (a create's callBackUrl alone does not say its callbacks reach
--   `deliver`).
-- * `dur:MODEL`: the latest `KEEP` run times (ms, kie.ai's completeTime -
--   createTime, one clock) of the model's tasks: where a poll is likely to find
--   the task finished.
--
-- Task ids and model names are checked by the caller (`kie.wake`) before they
-- become keys. Every call returns nil, err (kind `fleet`) when Redis fails.
-- @module kie.fleet_events

local type, tostring, tonumber, ipairs, format = type, tostring, tonumber, ipairs, string.format
local floor = math.floor

-- Whole milliseconds of `seconds`, at least `least` (Redis takes integers only;
-- XREAD's BLOCK 0 would block for ever).
local function ms(seconds, least)
  local n = floor(seconds * 1000 + 0.5)
  if n < least then n = least end
  return format("%d", n)
end

local M = {}

M.TTL = 86400    -- seconds a task's record lives after its last write
M.MAXLEN = 100000 -- entries the stream keeps (about)
M.KEEP = 100     -- run times kept per model

-- KEYS[1] stream, [2] task hash, [3] delivering; ARGV[1] task id, [2] state, [3] ttl,
-- [4] maxlen.
local RECORD = [[
redis.call('HSET', KEYS[2], 'state', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'task', ARGV[1], 'state', ARGV[2])
]]

-- KEYS[1] task hash; ARGV[1] model, [2] cb (0/1), [3] ttl.
local CREATED = [[
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'created', t[1] .. '.' .. string.format('%06d', tonumber(t[2])),
  'model', ARGV[1], 'cb', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
]]

-- KEYS[1] stream, [2] task hash, [3] delivering; ARGV[1] the prefix of the run-time
-- lists. Returns {last stream id, state, created, model, cb, now, delivering, run
-- times (ms)...}.
local LOOK = [[
if redis.replicate_commands then redis.replicate_commands() end
local last = '0-0'
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if top[1] then last = top[1][1] end
local h = redis.call('HMGET', KEYS[2], 'state', 'created', 'model', 'cb')
local t = redis.call('TIME')
local out = { last, h[1] or '', h[2] or '', h[3] or '', h[4] or '',
  t[1] .. '.' .. string.format('%06d', tonumber(t[2])), tostring(redis.call('EXISTS', KEYS[3])) }
if h[3] then
  local d = redis.call('LRANGE', ARGV[1] .. h[3], 0, -1)
  for i = 1, #d do out[#out + 1] = d[i] end
end
return out
]]

-- KEYS[1] run-time list; ARGV[1] ms, [2] keep, [3] ttl.
local LEARN = [[
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
]]

local function prefix(fleet)
  return "{kie:fleet:" .. fleet._spec.name .. ":events}:"
end

local function eval(fleet, script, nkeys, ...)
  return fleet:_run("eval", script, nkeys, ...)
end

--- Records that task `task_id` ended in `state` (a callback): its hash and an
-- event on the stream. Returns the event's stream id, or nil, err.
function M.record(fleet, task_id, state)
  local p = prefix(fleet)
  return eval(fleet, RECORD, 3, p .. "stream", p .. "task:" .. task_id, p .. "delivering", task_id, state,
    M.TTL, M.MAXLEN)
end

--- Records that task `task_id` of `model` was just created (`cb`: its create had
-- a callBackUrl). Returns true, or nil, err.
function M.created(fleet, task_id, model, cb)
  return eval(fleet, CREATED, 1, prefix(fleet) .. "task:" .. task_id, model, cb and "1" or "0", M.TTL)
end

--- What the fleet knows of task `task_id`, and the stream's last id:
-- `{last =, state =, created =, model =, cb =, now =, delivering =, durations =
-- {seconds...}}` (`delivering`: a callback was delivered in the last `TTL` s)
-- (times on Redis's clock, in seconds), or nil, err.
function M.look(fleet, task_id)
  local p = prefix(fleet)
  local r, err = eval(fleet, LOOK, 3, p .. "stream", p .. "task:" .. task_id, p .. "delivering", p .. "dur:")
  if not r then return nil, err end
  local durations = {}
  for i = 8, #r do
    local n = tonumber(r[i])
    if n then durations[#durations + 1] = n / 1000 end
  end
  return {
    last = r[1], state = r[2] ~= "" and r[2] or nil, created = tonumber(r[3]),
    model = r[4] ~= "" and r[4] or nil, cb = r[5] == "1", now = tonumber(r[6]), delivering = r[7] == "1",
    durations = durations,
  }
end

--- Adds a run time (seconds) of a task of `model`. Returns true, or nil, err.
function M.learn(fleet, model, seconds)
  return eval(fleet, LEARN, 1, prefix(fleet) .. "dur:" .. model, ms(seconds, 0), M.KEEP, M.TTL * 7)
end

--- The events after stream id `last`: a list of `{id, task, state}` (empty when
-- none came within `block` seconds; nil: do not block), or nil, err.
function M.read(fleet, last, block)
  local stream = prefix(fleet) .. "stream"
  local r, err
  if block then
    r, err = fleet:_run("call", "XREAD", "COUNT", "1000", "BLOCK", ms(block, 1),
      "STREAMS", stream, last)
  else
    r, err = fleet:_run("call", "XREAD", "COUNT", "1000", "STREAMS", stream, last)
  end
  if r == nil then return nil, err end
  local out = {}
  if type(r) ~= "table" or type(r[1]) ~= "table" or type(r[1][2]) ~= "table" then return out end
  for _, e in ipairs(r[1][2]) do
    local f = e[2]
    local ev = { id = tostring(e[1]) }
    if type(f) == "table" then
      for i = 1, #f - 1, 2 do
        if f[i] == "task" then ev.task = f[i + 1] elseif f[i] == "state" then ev.state = f[i + 1] end
      end
    end
    out[#out + 1] = ev
  end
  return out
end

return M
