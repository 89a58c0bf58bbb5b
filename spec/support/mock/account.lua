-- Timing of the real network and of kie.ai's account limits.
--
-- Latency: the time between the server reading a request and counting it (a slow
-- path, a new TLS connection): so requests arrive in another order and spacing
-- than they were sent in.
--   config  latency = {min = s, max = s}   uniform per request on /api/* paths
--   fault   latency = s                    this request's latency (overrides)
-- Account limits: sliding windows over ARRIVALS (after the latency), as kie.ai
-- counts; a request over its limit is answered 429 (and not counted).
--   config  account_limit = {create = {limit =, window =}, poll = {limit =, window =}}
--           create: createTask; poll: recordInfo

local store = require "store"

local M = {}

local BUCKET = { ["/api/v1/jobs/createTask"] = "create", ["/api/v1/jobs/recordInfo"] = "poll" }

local function latency(uri, cfg, fault)
  local l = fault and tonumber(fault.latency)
  if l then return l end
  local c = cfg.latency
  if type(c) ~= "table" or uri:sub(1, 5) ~= "/api/" then return 0 end
  local lo = tonumber(c.min) or 0
  local hi = tonumber(c.max) or lo
  return lo + math.random() * (hi - lo)
end

-- Sleeps the request's latency, then counts its arrival. Returns the arrival time
-- and true when it is over the account limit.
function M.arrive(uri, cfg, fault)
  local d = latency(uri, cfg, fault)
  if d > 0 then ngx.sleep(d) end
  ngx.update_time()
  local now = ngx.now()
  local bucket = BUCKET[uri]
  local limits = cfg.account_limit
  local lim = bucket and type(limits) == "table" and limits[bucket]
  if type(lim) ~= "table" then return now, false end
  local window, limit = tonumber(lim.window) or 1, tonumber(lim.limit) or 1
  local key = "arrivals:" .. bucket
  local kept = {}
  for _, t in ipairs(store.get_json(store.dict, key) or {}) do
    if t > now - window then kept[#kept + 1] = t end
  end
  local over = #kept >= limit
  if not over then kept[#kept + 1] = now end
  store.set_json(store.dict, key, kept)
  return now, over
end

return M
