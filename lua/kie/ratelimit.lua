--- Sliding-window rate limiter that counts where the server counts.
--
-- kie.ai counts a request when it ARRIVES, and the client cannot know when that
-- is: any time between sending it and reading its answer. So a slot is held from
-- before its request is sent until its answer came back (`acquire` ... `release`),
-- and it counts for `window + margin` seconds from then. A later request may go
-- only while fewer than `limit` slots are held or counting; so, however latency
-- varies, no interval of length `window` at the server ever sees more than
-- `limit` requests. One limiter is meant to be shared by everything a client does
-- against one budget (kie.ai: creates 20 per 10 s per account, polls 10 per 1 s).
--
--     local rl = require "kie.ratelimit"
--     local creates = rl.new{ limit = 20, window = 10 }
--     local slot = creates:acquire(env)   -- waits (env.sleep) as needed
--     ... send the request, read its answer ...
--     creates:release(slot, env.now())    -- counts from now for window + margin
--
-- A slot whose release never comes (a canceled coroutine, a killed nginx light
-- thread) counts as released `hold` seconds after it was taken; `hold` must be at
-- least the longest a request can take.
--
-- Time is always passed in (`now`) or read from an injected `env`; the module never
-- reads a clock itself. `now` must come from a monotonic clock.
-- @module kie.ratelimit

local type, pairs, error, tostring, setmetatable = type, pairs, error, tostring, setmetatable
local floor, huge, sort = math.floor, math.huge, table.sort

local M = {}

M.defaults = { limit = 20, window = 10, margin = 0.05, hold = 120 }

local Limiter = {}
Limiter.__index = Limiter
Limiter.__name = "kie.ratelimit.Limiter"

local function bad(name, v, what, level)
  error("kie.ratelimit.new: " .. name .. " must be " .. what .. ", got " .. tostring(v), level)
end

--- Makes a limiter. Unknown option names and bad values raise.
-- @tparam[opt] table opts `limit` (requests, integer >= 1, default 20), `window`
--   (seconds > 0, default 10), `margin` (seconds >= 0 added to the window, default
--   0.05), `hold` (seconds > 0 after which an unreleased slot counts as released,
--   default 120; may be math.huge)
-- @tparam[opt] table defaults what `opts` leaves out (else `M.defaults`): a partial
--   option keeps the other defaults
function M.new(opts, defaults)
  if opts ~= nil and type(opts) ~= "table" then
    error("kie.ratelimit.new: options must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if M.defaults[k] == nil then error("kie.ratelimit.new: unknown option '" .. tostring(k) .. "'", 2) end
  end
  local o = {}
  for k, v in pairs(M.defaults) do
    local d = defaults and defaults[k]
    if opts[k] ~= nil then o[k] = opts[k] elseif d ~= nil then o[k] = d else o[k] = v end
  end
  local limit, window, margin, hold = o.limit, o.window, o.margin, o.hold
  if type(limit) ~= "number" or limit < 1 or floor(limit) ~= limit or limit == huge then
    bad("limit", limit, "an integer >= 1", 3)
  end
  if type(window) ~= "number" or window ~= window or window <= 0 or window == huge then
    bad("window", window, "a finite number > 0", 3)
  end
  if type(margin) ~= "number" or margin ~= margin or margin < 0 or margin == huge then
    bad("margin", margin, "a finite number >= 0", 3)
  end
  if type(hold) ~= "number" or hold ~= hold or hold <= 0 then
    bad("hold", hold, "a number > 0", 3)
  end
  return setmetatable({
    limit = limit, window = window, margin = margin, hold = hold,
    taken = {},  -- per slot: when it was taken (acquire)
    ended = {},  -- per slot: when its answer came (release), or false while held
    n = 0,       -- slots held or still counting
    blocked = -huge, -- nothing may go before this (fill)
  }, Limiter)
end

-- When slot i stops counting: window + margin after its answer (or its hold bound).
local function expiry(self, i)
  local e = self.ended[i]
  if not e then e = self.taken[i] + self.hold end
  return e + self.window + self.margin
end

-- Forgets the slots that stopped counting at `now`.
local function prune(self, now)
  local taken, ended, n, j = self.taken, self.ended, self.n, 0
  for i = 1, n do
    if expiry(self, i) > now then
      j = j + 1
      taken[j], ended[j] = taken[i], ended[i]
    end
  end
  for i = j + 1, n do taken[i], ended[i] = nil, nil end
  self.n = j
end

--- Seconds to wait from `now` before the next request may go (0 when it may go
-- now). While slots are held it is a lower bound: wait it, then ask again.
-- `ahead` (default 0): how many waiters go first (kie.ngx_shared's queue).
function Limiter:delay(now, ahead)
  prune(self, now)
  local d = self.blocked - now
  if d < 0 then d = 0 end
  local n, limit = self.n, self.limit
  ahead = ahead or 0
  if n + ahead < limit then return d end
  -- the (n - limit + 1 + ahead)-th slot to stop counting frees the way; a held slot
  -- stops at the earliest window + margin after now (its answer comes at now or later)
  local k, exp, held = n - limit + 1 + ahead, {}, now + self.window + self.margin
  if k > n then k = n end
  if k < 1 then return d end -- no slot counts: only waiters ahead
  for i = 1, n do
    local e = expiry(self, i)
    if not self.ended[i] and e > held then e = held end
    exp[i] = e
  end
  local e
  if k == 1 then
    e = exp[1]
    for i = 2, n do if exp[i] < e then e = exp[i] end end
  else
    sort(exp)
    e = exp[k]
  end
  if e - now > d then d = e - now end
  return d
end

--- Takes a slot at `now` without waiting, held until `release`. Returns the slot.
function Limiter:claim(now)
  local n = self.n + 1
  self.taken[n], self.ended[n], self.n = now, false, n
  return now
end

--- Ends the hold of `slot` (what `acquire` returned): it counts from `now` for
-- window + margin. `rejected` (the server answered 429: over its limit) marks the
-- whole budget as used (`fill`). A slot already forgotten is ignored.
function Limiter:release(slot, now, rejected)
  local taken, ended = self.taken, self.ended
  for i = 1, self.n do
    if not ended[i] and taken[i] == slot then
      ended[i] = now < slot and slot or now
      break
    end
  end
  if rejected then self:fill(now) end
end

--- Waits until a slot is free, then holds it. Re-checks after every sleep, so
-- limiters shared by cooperative tasks (coroutines whose `env.sleep` yields) stay
-- exact. With `deadline`, never sleeps past it: returns nil and the seconds still
-- to wait (at least) when the slot would come too late (nothing held).
-- @tparam table env `{ now = fn, sleep = fn }`
-- @tparam[opt] number deadline by `env.now()`
-- @return the slot (the time it was taken, by `env.now()`), for `release`
function Limiter:acquire(env, deadline)
  if type(env) ~= "table" or type(env.now) ~= "function" or type(env.sleep) ~= "function" then
    error("kie.ratelimit: acquire needs env with now and sleep functions", 2)
  end
  while true do
    local now = env.now()
    local d = self:delay(now)
    if d <= 0 then return self:claim(now) end
    if deadline and now + d > deadline then return nil, d end
    env.sleep(d)
  end
end

--- The waiting loop of a limiter whose log lives elsewhere, shared by processes
-- (kie.fleet in Redis, kie.ngx_shared in a lua_shared_dict): `look()` takes a slot
-- and returns it, or returns nil and the seconds to wait at least, or nil and an
-- error table (returned as is: nothing may be sent); `leave()` gives up the place
-- in the queue when `deadline` (by `env.now()`) would pass first (then nil and the
-- seconds are returned). Sleeps (env.sleep) at most `cap` seconds between looks.
function M.wait_turn(env, deadline, cap, look, leave)
  while true do
    local slot, d = look()
    if slot then return slot end
    if type(d) == "table" then return nil, d end
    if deadline and env.now() + d > deadline then
      leave()
      return nil, d
    end
    env.sleep(d < cap and d or cap)
  end
end

--- Marks the whole budget as used at `now` (e.g. after the server answered 429), so the
-- next request waits a full `window + margin`.
function Limiter:fill(now)
  local b = now + self.window + self.margin
  if b > self.blocked then self.blocked = b end
end

--- Forgets every recorded request.
function Limiter:reset()
  self.taken, self.ended, self.n, self.blocked = {}, {}, 0, -huge
end

M.Limiter = Limiter

return M
