-- Shared state of the mock (nginx side): config, credits, tasks, faults, logs.
-- Everything lives in lua_shared_dict zones so it survives across requests and
-- timers. worker_processes is 1, so a get/modify/set without a yield in between
-- is atomic.

local cjson = require "cjson.safe"

local M = {}

local dict = ngx.shared.kie_mock       -- config, credits, tasks, faults, callbacks
local logd = ngx.shared.kie_mock_log   -- request log (bodies can be big)
M.dict, M.logd = dict, logd

M.null = cjson.null

M.DEFAULTS = {
  api_key = "test-key",
  pace = 0.05,
  hmac_key = nil,
  cost = 1,
  status_mode = "mirror",        -- or "200"
  use_message_key = false,       -- true: recordInfo uses "message"; "all": every api envelope
  download_url_ttl = 1200,       -- seconds a download-url link lives
  callback_timeout = 15,         -- seconds per delivery attempt
  callback_retries = 0,          -- extra attempts after a failed delivery
  callback_retry_delay = 0.2,
  callback_repeat = 1,           -- deliveries per attempt (duplicates on purpose when > 1)
  callback_ts_offset = 0,        -- seconds added to X-Webhook-Timestamp (stale signatures)
  callback_drop_rate = 0,        -- share of delivery attempts silently not sent (lost callbacks)
  sink_status = 200,             -- HTTP status the /_mock/callback_sink answers
  max_log_body = 65536,          -- request bodies longer than this are truncated in the log
  latency = false,               -- {min =, max =} seconds before a request counts (account.lua)
  account_limit = false,         -- {create = {limit =, window =}, poll = ...} (account.lua)
  port = nil, https_port = nil, prefix = nil,
}

M.KNOWN = { hmac_key = true, port = true, https_port = true, prefix = true, owner_pid = true }
for k in pairs(M.DEFAULTS) do M.KNOWN[k] = true end

-- cjson escapes "/" as "\/"; every "/" in its output is escaped that way, so
-- dropping the backslash in front of each one gives plain JSON like the real API.
function M.encode(v)
  local s = cjson.encode(v)
  if not s then return nil end
  return (s:gsub("\\/", "/"))
end

-- upstream lua-cjson 2.1.0 encodes an empty table as {}; lists must be [].
function M.encode_list(list)
  if #list == 0 then return "[]" end
  return M.encode(list)
end

M.decode = cjson.decode

function M.get_json(d, key)
  local s = d:get(key)
  if s == nil then return nil end
  return cjson.decode(s)
end

function M.set_json(d, key, value)
  local ok, err = d:set(key, M.encode(value))
  if not ok then ngx.log(ngx.ERR, "kie mock: cannot store ", key, ": ", err) end
  return ok, err
end

-- config ----------------------------------------------------------------

function M.config()
  local cfg = M.get_json(dict, "config") or {}
  for k, v in pairs(M.DEFAULTS) do
    if cfg[k] == nil then cfg[k] = v end
  end
  return cfg
end

-- Merge `changes` into the stored config. A value of false for hmac_key (or any
-- key whose default is nil) removes it. Returns the new config or nil, err.
function M.update_config(changes)
  local cfg = M.get_json(dict, "config") or {}
  for k, v in pairs(changes) do
    if k == "credits" then
      if type(v) ~= "number" then return nil, "credits must be a number" end
      dict:set("credits", v)
    elseif not M.KNOWN[k] then
      return nil, "unknown config key: " .. tostring(k)
    else
      if v == false and k == "hmac_key" then v = nil end
      if v == cjson.null then v = nil end
      cfg[k] = v
    end
  end
  if cfg.status_mode ~= nil and cfg.status_mode ~= "mirror" and cfg.status_mode ~= "200" then
    return nil, 'status_mode must be "mirror" or "200"'
  end
  if cfg.pace ~= nil and (type(cfg.pace) ~= "number" or cfg.pace < 0) then
    return nil, "pace must be a number >= 0"
  end
  M.set_json(dict, "config", cfg)
  return M.config()
end

function M.credits()
  return dict:get("credits") or 0
end

-- lists (append-only, numbered) ---------------------------------------------

function M.push(d, name, value)
  local n = d:incr(name .. ":n", 1, 0)
  local ok, err = d:set(name .. ":" .. n, M.encode(value))
  if not ok then ngx.log(ngx.ERR, "kie mock: cannot store ", name, " entry: ", err) end
  return n
end

function M.list(d, name, filter)
  local n = d:get(name .. ":n") or 0
  local out = {}
  for i = 1, n do
    local s = d:get(name .. ":" .. i)
    if s then
      local v = cjson.decode(s)
      if v and (not filter or filter(v)) then out[#out + 1] = v end
    end
  end
  return out
end

-- unique ids ----------------------------------------------------------------

function M.next_id()
  return dict:incr("seq", 1, 0)
end

function M.now_ms()
  ngx.update_time()
  return math.floor(ngx.now() * 1000)
end

-- reset: clear tasks, faults, callbacks and the log; keep config and credits.
function M.reset()
  local cfg = dict:get("config")
  local credits = dict:get("credits")
  local seq = dict:get("seq")
  dict:flush_all()
  dict:flush_expired()
  logd:flush_all()
  logd:flush_expired()
  if cfg then dict:set("config", cfg) end
  if credits then dict:set("credits", credits) end
  if seq then dict:set("seq", seq) end   -- ids stay unique across resets
end

return M
