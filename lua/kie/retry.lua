--- Retry policy: exponential backoff with full jitter, Retry-After, deadlines.
--
-- Pure policy, no I/O: time and randomness come from an injected `env`
-- (`env.now()` monotonic seconds, `env.sleep(seconds)`, `env.random()` in [0,1)).
--
--     local retry = require "kie.retry"
--     local policy = retry.policy{ max_retries = 4, base = 0.5, cap = 20 }
--     local res, err = retry.call(policy, env, function() return core:get_task(id) end)
--
-- Delay before retry number `k` (k = 1 for the first retry, i.e. after attempt k):
-- `random() * min(cap, base * 2^(k-1))` (full jitter). A numeric `err.retry_after`
-- raises the delay to at least that value; one above `max_retry_after` makes the call
-- give up at once instead. A `rate_limited` error without `retry_after` waits at least
-- `rate_limit_floor`. A deadline is never slept past.
-- @module kie.retry

local errors = require "kie.errors"

local type, pairs, select, error, tostring, tonumber, getmetatable, setmetatable =
  type, pairs, select, error, tostring, tonumber, getmetatable, setmetatable
local floor = math.floor
local unpack = table.unpack or unpack

local M = {}

--- Defaults of `retry.policy` (every field may be overridden).
M.defaults = {
  max_retries = 4,        -- retries after the first attempt; 0 = one attempt
  base = 0.5,             -- seconds; backoff ceiling of the first retry
  cap = 20,               -- seconds; the backoff ceiling never exceeds this
  idempotent = true,      -- false: only rate_limited/maintenance/network/timeout are retried
  max_retry_after = 60,   -- seconds; a longer Retry-After makes the call give up
  rate_limit_floor = 1,   -- seconds; minimum wait after a 429 without Retry-After
  deadline = nil,         -- absolute env.now() time; never sleep past it
}

--- Kinds a non-idempotent policy may retry (still only when `err.retryable == true`).
-- (`fleet`: the fleet's Redis failed before the request was sent)
M.non_idempotent_kinds = { rate_limited = true, maintenance = true, network = true, timeout = true,
  fleet = true }

local Policy = {}
Policy.__index = Policy
Policy.__name = "kie.retry.Policy"

local function is_number(v)
  return type(v) == "number" and v == v
end

local function check_nonneg(opts, name)
  local v = opts[name]
  if not is_number(v) or v < 0 then
    error("kie.retry.policy: " .. name .. " must be a number >= 0, got " .. tostring(v), 3)
  end
end

--- Makes a policy. Unknown option names and bad values raise (programmer errors).
-- @tparam[opt] table opts fields of `retry.defaults`
-- @treturn table the policy
function M.policy(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("kie.retry.policy: options must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if type(k) ~= "string" or (M.defaults[k] == nil and k ~= "deadline") then
      error("kie.retry.policy: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  local p = {}
  for k, v in pairs(M.defaults) do p[k] = v end
  for k, v in pairs(opts) do p[k] = v end
  check_nonneg(p, "max_retries")
  if floor(p.max_retries) ~= p.max_retries or p.max_retries == math.huge then
    error("kie.retry.policy: max_retries must be an integer, got " .. tostring(p.max_retries), 2)
  end
  check_nonneg(p, "base")
  check_nonneg(p, "cap")
  check_nonneg(p, "max_retry_after")
  check_nonneg(p, "rate_limit_floor")
  if type(p.idempotent) ~= "boolean" then
    error("kie.retry.policy: idempotent must be a boolean, got " .. tostring(p.idempotent), 2)
  end
  if p.deadline ~= nil and not is_number(p.deadline) then
    error("kie.retry.policy: deadline must be a number, got " .. tostring(p.deadline), 2)
  end
  return setmetatable(p, Policy)
end

local function as_policy(p)
  if getmetatable(p) == Policy then return p end
  return M.policy(p)
end

--- True when `policy` allows retrying `err` (attempt budget not considered).
-- Requires `err.retryable == true`; never retries `unknown_outcome`; a non-idempotent
-- policy further restricts the kinds to `non_idempotent_kinds`.
function M.retryable(policy, err)
  policy = as_policy(policy)
  if type(err) ~= "table" or err.retryable ~= true then return false end
  if err.kind == "unknown_outcome" then return false end
  if not policy.idempotent and not M.non_idempotent_kinds[err.kind] then return false end
  return true
end

local function retry_after_of(err)
  local ra = err.retry_after
  if type(ra) == "string" then ra = tonumber(ra) end
  if is_number(ra) and ra >= 0 then return ra end
  return nil
end

--- The delay before the retry that follows failed attempt number `attempt` (1-based).
-- @return seconds, or `nil` when the server asked for a wait beyond `max_retry_after`
function M.delay(policy, err, attempt, random)
  policy = as_policy(policy)
  local ceiling = policy.cap
  local e = attempt - 1
  if e < 1000 then
    local c = policy.base * 2 ^ e
    if c < ceiling then ceiling = c end
  end
  local d = random() * ceiling
  local ra = type(err) == "table" and retry_after_of(err) or nil
  if ra then
    if ra > policy.max_retry_after then return nil end
    if ra > d then d = ra end
  elseif type(err) == "table" and err.kind == "rate_limited" and d < policy.rate_limit_floor then
    d = policy.rate_limit_floor
  end
  return d
end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- What follows failed attempt `attempt`: the error (wrapped, with `attempts`) and
-- the delay to sleep before the next attempt, or no delay to give up.
local function after_failure(policy, env, err, attempt, deadline)
  if type(err) ~= "table" then return err end -- not ours: no fields to trust
  err = errors.wrap(err)
  err.attempts = attempt
  if attempt > policy.max_retries or not M.retryable(policy, err) then return err end
  local d = M.delay(policy, err, attempt, env.random)
  if d == nil or (deadline ~= nil and env.now() + d > deadline) then return err end
  return err, d
end

--- Calls `fn` until it succeeds or the policy says stop.
-- `fn()` returns results, or `nil, err`. Failure is a nil first result with a non-nil
-- second one; anything else is success and every result is returned as is.
-- @tparam table|nil policy from `retry.policy` (a plain options table or nil also works)
-- @tparam table env `{ now = fn, sleep = fn, random = fn }` (`now` needed only with a deadline)
-- @tparam function fn
-- @tparam[opt] function on_retry `on_retry(err, attempt, delay)` before each sleep;
--   `attempt` is the number of the attempt that just failed (1 for the first)
-- @tparam[opt] number deadline absolute `env.now()` time; overrides `policy.deadline`
-- @return fn's results, or `nil, err` with `err.attempts` = attempts made
function M.call(policy, env, fn, on_retry, deadline)
  policy = as_policy(policy)
  if type(env) ~= "table" or type(env.sleep) ~= "function" or type(env.random) ~= "function" then
    error("kie.retry.call: env must be a table with sleep and random functions", 2)
  end
  if type(fn) ~= "function" then error("kie.retry.call: fn must be a function", 2) end
  if on_retry ~= nil and type(on_retry) ~= "function" then
    error("kie.retry.call: on_retry must be a function or nil", 2)
  end
  if deadline == nil then deadline = policy.deadline end
  if deadline ~= nil then
    if not is_number(deadline) then error("kie.retry.call: deadline must be a number", 2) end
    if type(env.now) ~= "function" then
      error("kie.retry.call: env.now is required with a deadline", 2)
    end
  end

  local attempt = 0
  while true do
    attempt = attempt + 1
    local r = pack(fn())
    local err = r[2]
    if r[1] ~= nil or err == nil then return unpack(r, 1, r.n) end
    local d
    err, d = after_failure(policy, env, err, attempt, deadline)
    if not d then return nil, err end
    if on_retry then on_retry(err, attempt, d) end
    env.sleep(d)
  end
end

--- `call` for callers that hold a checked policy (from `retry.policy`) and env, and
-- whose `fn` returns at most two values: `fn(a1, ..., a6)` is called with these
-- arguments (so no closure is needed per call), and `r, err` is returned. Same
-- policy as `call` in every respect.
function M.call2(policy, env, on_retry, deadline, fn, a1, a2, a3, a4, a5, a6)
  if deadline == nil then deadline = policy.deadline end
  local attempt = 0
  while true do
    attempt = attempt + 1
    local r, err = fn(a1, a2, a3, a4, a5, a6)
    if r ~= nil or err == nil then return r, err end
    local d
    err, d = after_failure(policy, env, err, attempt, deadline)
    if not d then return nil, err end
    if on_retry then on_retry(err, attempt, d) end
    env.sleep(d)
  end
end

return M
