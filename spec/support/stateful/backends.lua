-- The two backends of the stateful test: the real core against the mock kie.ai
-- (nginx, real sockets, real time) and kie.testing (a fake core, virtual time).
-- Each gives the same small interface to harness.lua:
--
--   b.name, b.FAULTS (list of fault specs), b.WAIT (wait options), b.STEP_SCALE
--   b:start() / b:stop() / b:reset()   once per spec / once per run
--   b:client(opts)      a kie client (opts: journal, max_retries, step_budget_ms, paced)
--   b:fault(i, target)  queue fault FAULTS[i] for a "create", "get", "file" (download) or
--                       "any" API request
--   b:fault_index(name) the index in FAULTS of the fault named `name` (replays)
--   b:creates()         every create the server saw: {nonce =, made =, rejected =, fault =}
--   b:nonce_of(id)      the nonce in the prompt of the task the server made as `id`
--   b:real_time()       true when a step(ms) waits for real
--   b:now()             seconds, the clock the drain is bounded by
local M = {}

local NONCE = "<sf%-%d+%-%d+>"
M.NONCE = NONCE

local KEY = "sk-stateful-spec-5e1f"
local CREATE, RECORD = "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo"

-- FAULTS without those named in `disabled` (a set of kind names)
local function usable(list, disabled)
  local out = {}
  for _, f in ipairs(list) do
    if not (disabled and disabled[f.name or f.fault]) then out[#out + 1] = f end
  end
  return out
end

-- the mock ---------------------------------------------------------------------------

-- STEP_SCALE: an op step(ms) waits ms * STEP_SCALE (virtual time moves in bigger strides)
local Mock = { name = "mock", WAIT = { interval = 0.05, max_interval = 0.1, timeout = 3 }, STEP_SCALE = 1 }
Mock.__index = Mock

Mock.FAULTS = { -- name: as DISABLED_FAULTS of the spec names them (default: the kind)
  { fault = "delay", seconds = 0.05 },
  { name = "slow", fault = "delay", seconds = 0.3 },
  { name = "timeout", fault = "delay", seconds = 1.3 }, -- past the client's 1 s timeout
  { fault = "drop_before_body" },
  { fault = "drop_after_body" },        -- the task IS made, then the connection closes
  { fault = "html_502" },
  { fault = "rate_limit" },
  { name = "rate_limit_0", fault = "rate_limit", retry_after = 0 },
  { fault = "maintenance" },
  { fault = "bad_json" },
  { fault = "truncated_json" },
  { fault = "partial_body" },
  { fault = "status", status = 500 },
  { fault = "code_in_200", code = 500 },
}

-- kinds that make no task (the request is answered without doing its work)
local NOT_MADE = { drop_before_body = true, html_502 = true, rate_limit = true, maintenance = true,
  bad_json = true, truncated_json = true, partial_body = true, status = true, code_in_200 = true,
  huge = true, wrong_shape = true, raw = true, close_after_read = true }
-- answers that tell the client the create was refused (it may send it again)
local REJECTED = { rate_limit = true, maintenance = true }

function M.mock_has_fault(kind)
  local f = io.open("spec/support/mock/faults.lua", "r")
  if not f then return false end
  local text = f:read("*a")
  f:close()
  return text:find("%f[%w_]" .. kind .. "%s*=%s*true") ~= nil
end

function M.mock(disabled)
  local list = {}
  for i, f in ipairs(Mock.FAULTS) do list[i] = f end
  -- the mock learns real-network faults on other branches: use them when present
  if M.mock_has_fault("close_after_read") then
    list[#list + 1] = { fault = "close_after_read" }
  end
  return setmetatable({ FAULTS = usable(list, disabled) }, Mock)
end

function Mock:start()
  local mock = require "spec.support.mock"
  self.m = mock.start{ api_key = KEY, pace = 0.03, credits = 1e9, cost = 0 }
  self.json = mock.json
end

function Mock:stop()
  if self.m then self.m:stop() end
end

function Mock:reset()
  self.m:reset()
  self._nonces = {}
end

function Mock:client(o)
  local kie = require "kie"
  return kie.new{ api_key = KEY, base_url = self.m.url, timeout = 1, connect_timeout = 1,
    max_retries = o.max_retries, journal = o.journal, step_budget_ms = o.step_budget_ms,
    retry = { base = 0.01, cap = 0.05, rate_limit_floor = 0.01, max_retry_after = 2 },
    rate_limits = o.paced and { create = { limit = 4, window = 0.2 }, poll = { limit = 8, window = 0.1 } }
      or { create = false, poll = false } }
end

function Mock:fault(i, target)
  local spec = {}
  for k, v in pairs(self.FAULTS[i]) do if k ~= "name" then spec[k] = v end end
  spec.path = (target == "create" and CREATE) or (target == "get" and RECORD) or
    (target == "file" and "/files/*") or "/api/*"
  self.m:fault(spec)
end

local function str(v) return type(v) == "string" and v or nil end

function Mock:creates()
  local out = {}
  for _, e in ipairs(self.m:requests(CREATE)) do
    local nonce = str(e.body) and e.body:match(NONCE)
    if nonce then
      local f = str(e.fault)
      out[#out + 1] = { nonce = nonce, fault = f, made = not (f and NOT_MADE[f]),
        rejected = f ~= nil and REJECTED[f] == true }
    end
  end
  return out
end

function Mock:nonce_of(id)
  local cache = self._nonces
  if cache[id] ~= nil then return cache[id] or nil end
  local ok, t = pcall(self.m.task, self.m, id)
  local nonce = ok and type(t) == "table" and type(t.task) == "table" and str(t.task.param)
    and t.task.param:match(NONCE) or nil
  cache[id] = nonce or false
  return nonce
end

local function fault_index(self, name)
  for i, f in ipairs(self.FAULTS) do
    if (f.name or f.fault) == name then return i end
  end
  error("stateful: no fault named " .. tostring(name) .. " (disabled?)")
end
Mock.fault_index = fault_index

function Mock.real_time() return true end
function Mock.now() return require("kie.core").now() end

-- kie.testing --------------------------------------------------------------------------

local Fake = { name = "testing", WAIT = { timeout = 120 }, STEP_SCALE = 100 }
Fake.__index = Fake

Fake.FAULTS = { -- name: as DISABLED_FAULTS of the spec names them
  { name = "delay", delay = 0.5 },
  { name = "slow", delay = 40 },                -- a slow answer (the fake times out only kind "timeout")
  { name = "timeout", kind = "timeout" },       -- a create: unknown_outcome, nothing made
  { name = "timeout_made", kind = "timeout", created = true }, -- ... the task was made all the same
  { name = "network", kind = "network" },       -- nothing sent
  { name = "network_made", kind = "network", sent = true, created = true },
  { name = "rate_limit", kind = "rate_limited", retry_after = 1 },
  { name = "maintenance", code = 455 },
  { name = "status", code = 500 },
  { name = "code_in_200", code = 500, status = 200 },
  { name = "html_502", status = 502 },
  { name = "protocol_made", kind = "protocol", created = true },
  { name = "too_large", kind = "too_large" },
}

function M.testing(disabled)
  return setmetatable({ FAULTS = usable(Fake.FAULTS, disabled) }, Fake)
end

function Fake.start() end
function Fake.stop() end

function Fake:reset()
  self.fake = require("kie.testing").new{ pace = 0.3, latency = 0.05 }
end

function Fake:client(o)
  return self.fake:client{ max_retries = o.max_retries, journal = o.journal,
    step_budget_ms = o.step_budget_ms, timeout = 30,
    rate_limits = not o.paced and { create = false, poll = false } or nil } -- paced: kie.ai's own
end

function Fake:fault(i, target)
  local op = (target == "create" and "create_task") or (target == "get" and "get_task") or
    (target == "file" and "download") or "*"
  local f = {}
  for k, v in pairs(self.FAULTS[i]) do if k ~= "name" then f[k] = v end end
  self.fake:fail_next(op, f)
end

local function made_by(f)
  if not f then return true end
  if f.created then return true end
  return not (f.kind or f.code or f.status)
end

local function rejected_by(f)
  if not f then return false end
  return f.kind == "rate_limited" or f.code == 429 or f.code == 455 or f.kind == "maintenance"
    or (f.kind == "network" and not f.sent)
end

function Fake:creates()
  local out = {}
  for _, r in ipairs(self.fake:requests("create_task")) do
    local input = type(r.body) == "table" and r.body.input
    local nonce = type(input) == "table" and str(input.prompt) and input.prompt:match(NONCE)
    if nonce then
      out[#out + 1] = { nonce = nonce, made = made_by(r.fault), rejected = rejected_by(r.fault),
        fault = r.fault and (r.fault.kind or r.fault.code or r.fault.status or "delay") }
    end
  end
  return out
end

function Fake:nonce_of(id)
  local t = self.fake._tasks[id]
  return t and str(t.param) and t.param:match(NONCE) or nil
end

Fake.fault_index = fault_index

function Fake.real_time() return false end
function Fake:now() return self.fake:now() end

return M
