--- Sliding-window rate limiter, exact over the last `limit` request times.
--
-- A ring buffer holds the send times of the last `limit` requests. A new request may
-- go once the oldest of them is at least `window + margin` seconds old, so no
-- interval of length `window` (plus the margin) ever contains more than `limit`
-- requests. One limiter is meant to be shared by everything a client does against
-- one budget (kie.ai: creates 20 per 10 s per account, polls 10 per 1 s per key).
--
--     local rl = require "kie.ratelimit"
--     local creates = rl.new{ limit = 20, window = 10 }
--     local polls   = rl.new{ limit = 10, window = 1 }
--     creates:acquire(env)         -- waits (env.sleep) as needed, then records the send
--
-- Time is always passed in (`now`) or read from an injected `env`; the module never
-- reads a clock itself. `now` must come from a monotonic clock.
-- @module kie.ratelimit

local type, pairs, error, tostring, setmetatable = type, pairs, error, tostring, setmetatable
local floor = math.floor

local M = {}

M.defaults = { limit = 20, window = 10, margin = 0.05 }

local Limiter = {}
Limiter.__index = Limiter
Limiter.__name = "kie.ratelimit.Limiter"

local function bad(name, v, what)
  error("kie.ratelimit.new: " .. name .. " must be " .. what .. ", got " .. tostring(v), 3)
end

--- Makes a limiter. Unknown option names and bad values raise.
-- @tparam[opt] table opts `limit` (requests, integer >= 1, default 20), `window`
--   (seconds > 0, default 10), `margin` (seconds >= 0 added to the window, default 0.05)
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("kie.ratelimit.new: options must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if M.defaults[k] == nil then error("kie.ratelimit.new: unknown option '" .. tostring(k) .. "'", 2) end
  end
  local limit, window, margin = opts.limit, opts.window, opts.margin
  if limit == nil then limit = M.defaults.limit end
  if window == nil then window = M.defaults.window end
  if margin == nil then margin = M.defaults.margin end
  if type(limit) ~= "number" or limit < 1 or floor(limit) ~= limit or limit == math.huge then
    bad("limit", limit, "an integer >= 1")
  end
  if type(window) ~= "number" or window ~= window or window <= 0 or window == math.huge then
    bad("window", window, "a finite number > 0")
  end
  if type(margin) ~= "number" or margin ~= margin or margin < 0 or margin == math.huge then
    bad("margin", margin, "a finite number >= 0")
  end
  return setmetatable({
    limit = limit, window = window, margin = margin,
    times = {},  -- ring buffer of send times
    pos = 1,     -- next slot to write; when full it holds the oldest time
    count = 0,   -- slots in use (<= limit)
  }, Limiter)
end

--- Seconds to wait from `now` before the next request may go (0 when it may go now).
function Limiter:delay(now)
  if self.count < self.limit then return 0 end
  local ready = self.times[self.pos] + self.window + self.margin
  if now >= ready then return 0 end
  return ready - now
end

--- Records that a request went out at `now`.
-- A time earlier than the newest recorded one (a clock that stepped back) is recorded
-- as the newest one, which keeps the buffer ordered and errs on the safe side.
function Limiter:take(now)
  if self.count > 0 then
    local newest = self.times[(self.pos - 2) % self.limit + 1]
    if now < newest then now = newest end
  end
  self.times[self.pos] = now
  self.pos = self.pos % self.limit + 1
  if self.count < self.limit then self.count = self.count + 1 end
end

--- Waits until a request may go, then records it.
-- Re-checks after every sleep, so limiters shared by cooperative tasks (coroutines
-- whose `env.sleep` yields) stay exact.
-- @tparam table env `{ now = fn, sleep = fn }`
-- @return seconds waited (by `env.now()`)
function Limiter:acquire(env)
  if type(env) ~= "table" or type(env.now) ~= "function" or type(env.sleep) ~= "function" then
    error("kie.ratelimit: acquire needs env with now and sleep functions", 2)
  end
  local start = env.now()
  local now = start
  local d = self:delay(now)
  while d > 0 do
    env.sleep(d)
    now = env.now()
    d = self:delay(now)
  end
  self:take(now)
  return now - start
end

--- Marks the whole budget as used at `now` (e.g. after the server answered 429), so the
-- next request waits a full `window + margin`.
function Limiter:fill(now)
  for _ = 1, self.limit do self:take(now) end
end

--- Forgets every recorded request.
function Limiter:reset()
  self.times, self.pos, self.count = {}, 1, 0
end

M.Limiter = Limiter

return M
