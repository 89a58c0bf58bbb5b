--- Callbacks (webhooks): parse what kie.ai POSTs to `callBackUrl`, and verify its
-- HMAC signature.
--
-- kie.ai signs `taskId .. "." .. timestamp` with HMAC-SHA256 under the account's
-- webhook key and sends `X-Webhook-Timestamp` and `X-Webhook-Signature` (Base64).
-- The body itself is not covered by the signature; the task id and timestamp are.
-- Both published payload shapes are read: the task id comes from `taskId`, then
-- `data.taskId`, then `data.task_id`; a body whose task ids disagree is refused
-- (kind `signature` when verifying, else `protocol`), so a signed id never vouches
-- for another task's results.
--
--    local ev, err = kie.callback.parse(body, headers, {hmac_key = KEY})
--    -- ev = {task_id =, state =, task = <get_task-shaped table>, verified = true}
-- @module kie.callback

local core = require "kie.core"
local errors = require "kie.errors"

local type, tostring, pairs, tonumber, select = type, tostring, pairs, tonumber, select
local lower, time = string.lower, os.time

local M = {}

local DEFAULT_TOLERANCE = 300

local function _header(headers, name)
  if type(headers) ~= "table" then return nil end
  local want = lower(name)
  for k, v in pairs(headers) do
    if type(k) == "string" and lower(k) == want then
      if type(v) == "table" then v = v[1] end -- nginx gives repeated headers as a list
      return v
    end
  end
  return nil
end

-- The first of the given ids (any may be nil) that is not `want`, or nil.
local function _other_id(want, ...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil and v ~= want then return v end
  end
  return nil
end

local function _fail(kind, message, task_id)
  return nil, errors.new(kind, "callback: " .. message, { op = "callback", task_id = task_id })
end

--- Signs a callback the way kie.ai does (for tests and local tools).
-- @tparam string key the webhook HMAC key
-- @tparam string task_id
-- @tparam number|string timestamp Unix seconds
-- @treturn table headers `X-Webhook-Timestamp` and `X-Webhook-Signature`
function M.sign(key, task_id, timestamp)
  if type(key) ~= "string" or type(task_id) ~= "string" then
    error("callback.sign: key and task_id must be strings", 2)
  end
  local ts = tostring(timestamp or time())
  return {
    ["X-Webhook-Timestamp"] = ts,
    ["X-Webhook-Signature"] = core.hmac_sha256_base64(key, task_id .. "." .. ts),
  }
end

--- Parses (and, with `hmac_key`, verifies) a callback.
-- @tparam string|table body the raw JSON body (or an already decoded table)
-- @tparam table headers request headers; names are matched case-insensitively
-- @tparam[opt] table opts `hmac_key` (verify; required signature), `tolerance`
-- (seconds either way, default 300), `now` (function returning Unix seconds),
-- `seen` (a table: rejects a task id + timestamp seen before, and records it)
-- @treturn table `{task_id, state, task, verified, code, msg}` or `nil, err`
-- (kind `signature` or `protocol`)
function M.parse(body, headers, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("callback.parse: opts must be a table", 2) end
  local doc = body
  if type(body) == "string" then
    doc = core.decode(body)
  elseif type(body) ~= "table" then
    error("callback.parse: body must be a string or a table", 2)
  end
  if type(doc) ~= "table" then return _fail("protocol", "body is not a JSON object") end
  local data = type(doc.data) == "table" and doc.data or {}
  local task_id = doc.taskId or data.taskId or data.task_id
  if type(task_id) ~= "string" or task_id == "" then
    return _fail("protocol", "no task id (taskId, data.taskId or data.task_id)")
  end
  -- the signature covers one task id: a body naming another one anywhere could
  -- carry a different task's results under a valid signature
  local other = _other_id(task_id, doc.taskId, data.taskId, data.task_id)
  if other ~= nil then
    return _fail(opts.hmac_key ~= nil and "signature" or "protocol", "the body's task ids disagree (" ..
      task_id .. " and " .. ("%q"):format(tostring(other):sub(1, 64)) .. ")", task_id)
  end

  local verified = false
  if opts.hmac_key ~= nil then
    if type(opts.hmac_key) ~= "string" or opts.hmac_key == "" then
      error("callback.parse: hmac_key must be a non-empty string", 2)
    end
    local ts = _header(headers, "X-Webhook-Timestamp")
    local sig = _header(headers, "X-Webhook-Signature")
    if type(ts) ~= "string" or type(sig) ~= "string" then
      return _fail("signature", "missing X-Webhook-Timestamp or X-Webhook-Signature", task_id)
    end
    if not ts:match("^%d+$") or #ts > 12 then
      return _fail("signature", "X-Webhook-Timestamp is not Unix seconds", task_id)
    end
    local now = opts.now and opts.now() or time()
    local skew = now - tonumber(ts)
    local tolerance = opts.tolerance or DEFAULT_TOLERANCE
    if skew > tolerance then
      return _fail("signature", "timestamp is " .. skew .. " s old (tolerance " .. tolerance .. " s)", task_id)
    elseif -skew > tolerance then
      return _fail("signature", "timestamp is " .. -skew .. " s in the future (tolerance " .. tolerance .. " s)",
        task_id)
    end
    local want = core.hmac_sha256_base64(opts.hmac_key, task_id .. "." .. ts)
    if not core.equal(want, sig) then
      return _fail("signature", "X-Webhook-Signature does not match", task_id)
    end
    if opts.seen then
      local k = task_id .. "." .. ts
      if opts.seen[k] then return _fail("signature", "replayed callback", task_id) end
      opts.seen[k] = now
    end
    verified = true
  end

  local task = {}
  for k, v in pairs(data) do task[k] = v end
  task.taskId = task.taskId or task_id
  local decoded, msg = core.decode_task(task)
  if not decoded then return _fail("protocol", msg, task_id) end
  local state = task.state
  if type(state) ~= "string" then state = doc.code == 200 and "success" or "fail" end
  return {
    task_id = task_id,
    state = state,
    task = task,
    verified = verified,
    code = doc.code,
    msg = doc.msg or doc.message,
  }
end

return M
