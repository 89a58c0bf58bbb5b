--- Pacing shared by the workers of one nginx through a `lua_shared_dict`, without
-- Redis (`kie.ngx.new{shared_dict = NAME}`).
--
-- The rule is `kie.ratelimit`'s ("pacing counts where kie.ai counts"), its log kept
-- in the shared dict instead of one worker's memory: a slot is held from before
-- its request is sent until its answer, then counts for `window + margin`; a
-- request goes only while fewer than `limit` slots are held or counting, whichever
-- worker holds them. Each step (look, take, release) loads the log, runs
-- kie.ratelimit's own code on it and stores it back under a lock in the dict (an
-- `add` with a 1 s expiry, so a worker that died holding it blocks nothing for
-- long; the step itself never yields). Times are kie.core's clock
-- (CLOCK_MONOTONIC: one clock for every process of the machine).
--
-- What it guarantees, and what not:
-- * No window of `window` seconds at kie.ai sees more than `limit` requests of
--   this nginx's clients sharing the dict (the same budget in the same dict),
--   whatever the latency and however requests spread over the workers.
-- * Waiters go in arrival order: each takes a ticket (the dict's atomic `incr`)
--   and only the lowest ticket waiting may take a slot. A waiter whose request
--   ended (client gone, light thread killed) leaves the queue 2 s past the wait it
--   was told. The order is by ticket, i.e. by first look, not by the exact instant
--   a request reached nginx.
-- * A slot whose answer never comes (a killed worker) counts as released `hold`
--   seconds after it was taken (kie.ratelimit's rule).
-- * Other nginx instances, other machines, plain kie processes: not seen; use
--   `fleet` (Redis) for those. A shared dict survives `nginx -s reload` but not a
--   stop and start: a fresh nginx starts with an empty log, as a plain client does.
-- * The dict full (no memory) or the lock not taken within 2 s: the call fails
--   with kind `fleet` (retryable) and nothing is sent.
-- @module kie.ngx_shared

local ratelimit = require "kie.ratelimit"
local errors = require "kie.errors"
local core = require "kie.core"
local cjson = require "cjson.safe"

local pairs, tostring, tonumber, setmetatable, error, pcall =
  pairs, tostring, tonumber, setmetatable, error, pcall
local format, random, min, huge = string.format, math.random, math.min, math.huge

local M = {}

local GRACE = 2        -- seconds a waiter keeps its place past the wait it was told
local CAP = 0.5        -- the longest sleep between two looks at the queue
local LOCK_TTL = 1     -- seconds a lock lives at most (a worker died holding it)
local LOCK_WAIT = 2    -- seconds a step waits for the lock at most

local Shared = {}
Shared.__index = Shared
Shared.__name = "kie.ngx_shared.Shared"

--- The pacing store of dict `name` (`ngx.shared[name]`); raises when nginx has no
-- `lua_shared_dict` of that name. `ngx` is ngx_lua's API table.
function M.open(ngx, name)
  local dict = ngx.shared[name]
  if not dict then
    error("kie.ngx.new: option 'shared_dict': nginx.conf has no 'lua_shared_dict " .. tostring(name)
      .. " 1m;' (http context)", 3)
  end
  return setmetatable({ ngx = ngx, dict = dict, name = name, _n = 0,
    _id = format("%d.%x", ngx.worker.pid(), random(0, 0x7fffffff)) }, Shared)
end

-- A fresh waiter id (unique across the workers).
function Shared:_next_id()
  self._n = self._n + 1
  return self._id .. ":" .. self._n
end

local function shared_error(self, what)
  return errors.new("fleet", "pacing (shared_dict " .. self.name .. "): " .. what .. "; nothing was sent",
    { retryable = true })
end

-- Runs fn(state) under the dict's lock for `key`; fn returns the results and
-- whether the state changed. Returns fn's results, or nil, err (kind fleet).
local function locked(self, key, fn)
  local ngx, dict = self.ngx, self.dict
  local lock, pause, waited = key .. ":lock", 0.001, 0
  while true do
    local ok, err = dict:add(lock, true, LOCK_TTL)
    if ok then break end
    if err ~= "exists" then return nil, shared_error(self, "lock: " .. tostring(err)) end
    if waited >= LOCK_WAIT then return nil, shared_error(self, "lock held for " .. LOCK_WAIT .. " s") end
    ngx.sleep(pause)
    waited = waited + pause
    pause = min(pause * 2, 0.01)
  end
  -- from here to the delete: no yield (only dict calls and plain Lua)
  local state = cjson.decode(dict:get(key) or "") or {}
  local fine, a, b, changed = pcall(fn, state)
  local ok, err = true, nil
  if fine and changed then ok, err = dict:set(key, cjson.encode(state)) end
  dict:delete(lock)
  if not fine then error(a, 0) end
  if not ok then return nil, shared_error(self, "store: " .. tostring(err)) end
  return a, b
end

local Limiter = {}
Limiter.__index = Limiter
Limiter.__name = "kie.ngx_shared.Limiter"

--- A limiter shared by every worker's clients for `budget` ("create", "poll"), with
-- the settings of `lim` (a `kie.ratelimit` limiter: limit, window, margin, hold).
function Shared:limiter(budget, lim)
  return setmetatable({ shared = self, key = "kie:pacing:" .. budget,
    rl = ratelimit.new{ limit = lim.limit, window = lim.window, margin = lim.margin, hold = lim.hold },
  }, Limiter)
end

-- kie.ratelimit's limiter on the stored log (state.t taken, state.e ended or
-- false, state.b blocked).
local function load(self, state)
  local rl = self.rl
  rl.taken, rl.ended = state.t or {}, state.e or {}
  rl.n, rl.blocked = #rl.taken, state.b or -huge
  return rl
end

local function store(rl, state)
  state.t, state.e = rl.taken, rl.ended
  state.b = rl.blocked > -huge and rl.blocked or nil
end

-- Leaves the queue the waiters whose lease lapsed; returns how many wait before `me`.
local function queue_ahead(state, me, now)
  local q, ahead = state.q or {}, 0
  state.q = q
  local mine = q[me] and q[me][1]
  for id, w in pairs(q) do
    if w[2] < now then q[id] = nil
    elseif mine and id ~= me and w[1] < mine then ahead = ahead + 1 end
  end
  return ahead
end

-- One look: takes a slot (returns it) or returns nil and the seconds to wait.
-- `now` is rounded as the dict's JSON stores it, so the slot (its time) is found
-- again by `release`.
local function look(self, me, ticket, now, state)
  now = tonumber(format("%.14g", now))
  local rl = load(self, state)
  local ahead = queue_ahead(state, me, now)
  if not state.q[me] then state.q[me] = { ticket, now + GRACE } end
  local d = rl:delay(now, ahead)
  if ahead == 0 and d <= 0 then
    rl:claim(now)
    state.q[me] = nil
    store(rl, state)
    return now, nil, true
  end
  if d < 0.005 then d = 0.005 end
  state.q[me][2] = now + d + GRACE
  store(rl, state)
  return nil, d, true
end

--- Waits (env.sleep) until a slot is free for this nginx, then holds it. Returns
-- the slot, or nil and the seconds still to wait when `deadline` (by env.now())
-- comes first, or nil and an error of kind `fleet` (nothing may be sent).
function Limiter:acquire(env, deadline)
  local shared = self.shared
  local me = shared:_next_id()
  local ticket, err = shared.dict:incr(self.key .. ":tickets", 1, 0)
  if not ticket then return nil, shared_error(shared, "ticket: " .. tostring(err)) end
  return ratelimit.wait_turn(env, deadline, CAP, function()
    return locked(shared, self.key, function(state)
      return look(self, me, ticket, core.now(), state)
    end)
  end, function()
    locked(shared, self.key, function(state)
      if state.q then state.q[me] = nil end
      return true, nil, true
    end)
  end)
end

--- Ends the hold of `slot`: it counts from now for window + margin. `rejected`
-- (the server answered 429) marks the whole window as used. Returns true, or nil,
-- err when the dict failed (the slot then counts until its `hold` ends).
function Limiter:release(slot, _, rejected)
  local ok, err = locked(self.shared, self.key, function(state)
    local rl = load(self, state)
    rl:release(slot, core.now(), rejected)
    store(rl, state)
    return true, nil, true
  end)
  if not ok then return nil, err end
  return true
end

M.Limiter = Limiter
return M
