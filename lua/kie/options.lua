--- The options of `kie.new`: their names and types, defaults, checks, and the
-- rate limiters and retry policies made from them.
-- @module kie.options

local ratelimit = require "kie.ratelimit"
local retry = require "kie.retry"

local type, pairs, tostring, pcall, error = type, pairs, tostring, pcall, error
local getenv = os.getenv

local M = {}

local DEFAULTS = {
  base_url = "https://api.kie.ai",
  upload_url = "https://kieai.redpandaai.co",
  timeout = 30,
  connect_timeout = 10,
  max_retries = 4,
  max_response_bytes = 8 * 1024 * 1024,
  strict = true,
  step_budget_ms = 0.2,
}

-- kie.ai's published limits: 20 creates per 10 s per account, 10 status reads per s per key
local RATE_LIMITS = { create = { limit = 20, window = 10 }, poll = { limit = 10, window = 1 } }

-- option name -> Lua type it must have
local OPTION_TYPES = {
  api_key = "string", base_url = "string", upload_url = "string",
  timeout = "number", connect_timeout = "number", max_retries = "number",
  ca_file = "string", ca_path = "string", proxy = "string",
  max_response_bytes = "number", logger = "function", user_agent = "string",
  journal = "string", strict = "boolean", rate_limits = "table", retry = "table",
  now = "function", sleep = "function", random = "function",
  step_budget_ms = "number",
  fleet = "table", -- {redis = URL, name = NAME, lease = s}: pacing and journal in Redis (kie.fleet)
  core = "table", -- an injected core module (tests' fakes)
}

-- options handed to kie.core.new as they are
local CORE_OPTIONS = { "api_key", "base_url", "upload_url", "timeout", "connect_timeout",
  "ca_file", "ca_path", "proxy", "max_response_bytes", "user_agent" }

local function _env(name)
  local v = getenv(name)
  if v == "" then return nil end
  return v
end

-- kie.fleet (pure Lua, shipped with the kie-fleet rock), loaded only for `fleet`
local function _fleet_module()
  local ok, fleet = pcall(require, "kie.fleet")
  if not ok then
    error("kie.new: option 'fleet' needs the kie-fleet rock (kie.fleet, kie.redis): " .. tostring(fleet), 4)
  end
  return fleet
end

local function _options(user)
  if user ~= nil and type(user) ~= "table" then
    error("kie.new: options must be a table", 3)
  end
  user = user or {}
  local o = {}
  for k, v in pairs(user) do
    local want = OPTION_TYPES[k]
    if not want then
      error("kie.new: unknown option '" .. tostring(k) .. "'", 3)
    end
    if type(v) ~= want and not (want == "table" and type(v) == "userdata") then
      error("kie.new: option '" .. k .. "' must be a " .. want .. ", got " .. type(v), 3)
    end
    o[k] = v
  end
  o.api_key = o.api_key or _env("KIE_API_KEY")
  o.base_url = o.base_url or _env("KIE_BASE_URL") or DEFAULTS.base_url
  o.upload_url = o.upload_url or _env("KIE_UPLOAD_URL") or DEFAULTS.upload_url
  for k, v in pairs(DEFAULTS) do
    if o[k] == nil then o[k] = v end
  end
  if not o.api_key or o.api_key == "" then
    error("kie.new: no API key: pass api_key or set KIE_API_KEY (keys: https://kie.ai/api-key)", 3)
  end
  if o.max_retries < 0 or o.max_retries % 1 ~= 0 then
    error("kie.new: option 'max_retries' must be a whole number >= 0", 3)
  end
  for k in pairs(o.rate_limits or {}) do
    if not RATE_LIMITS[k] then
      error("kie.new: option 'rate_limits': unknown entry '" .. tostring(k) .. "' (create, poll)", 3)
    end
  end
  if o.fleet then _fleet_module().check(o.fleet, 3) end
  if o.step_budget_ms ~= o.step_budget_ms or o.step_budget_ms < 0 then
    error("kie.new: option 'step_budget_ms' must be a number >= 0", 3)
  end
  return o
end

-- A limiter from a `rate_limits` entry (false: none); what it leaves out keeps
-- `default`'s value. A slot never released counts as released after the longest a
-- request can take (`timeout`, plus a second).
local function _limiter(spec, default, timeout)
  if spec == false then return nil end
  local ok, lim = pcall(ratelimit.new, spec,
    { limit = default.limit, window = default.window, hold = (timeout or 30) + 1 })
  if not ok then error("kie.new: option 'rate_limits': " .. tostring(lim), 4) end
  return lim
end

-- The fleet of option `fleet` (nil without it): Redis is reached on first use.
local function _fleet(spec)
  if not spec then return nil end
  return _fleet_module().open(spec)
end

-- `lim` shared through `fleet` (budget "create" or "poll"), or `lim` itself
-- without a fleet or a limiter.
local function _shared(fleet, budget, lim)
  if not fleet or not lim then return lim end
  return fleet:limiter(budget, lim)
end

local function _policy(o, idempotent)
  local p = { max_retries = o.max_retries, idempotent = idempotent }
  for k, v in pairs(o.retry or {}) do
    if k == "max_retries" or k == "idempotent" then
      error("kie.new: option 'retry' sets base, cap, max_retry_after or rate_limit_floor", 4)
    end
    p[k] = v
  end
  local ok, pol = pcall(retry.policy, p)
  if not ok then error("kie.new: option 'retry': " .. tostring(pol), 4) end
  return pol
end

-- Raises "what must be a want, got ..." at `level` (default: the caller's caller)
-- unless v is of type `want`.
local function _check(v, want, what, level)
  if type(v) ~= want then
    error(what .. " must be a " .. want .. ", got " .. type(v), level or 3)
  end
end

M.RATE_LIMITS = RATE_LIMITS
M.CORE_OPTIONS = CORE_OPTIONS
M.parse = _options
M.limiter = _limiter
M.fleet = _fleet
M.shared = _shared
M.policy = _policy
M.check = _check
return M
