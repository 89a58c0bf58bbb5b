--- Typed errors: one error type on every Lua version.
-- Runtime failures are returned as `nil, err` where `err` is a table with this
-- module's metatable: `kind` (stable word), `message`, `code` (API body code),
-- `status` (HTTP status), `retryable`, `retry_after` (seconds), `task_id`,
-- `curl_code`, `op` (which call failed), plus kind-specific fields
-- (`failCode`/`failMsg` for `task_failed`, `state` for `deadline`,
-- `fingerprint` for `unknown_outcome`). `tostring(err)` gives one line.
-- @module kie.errors

local setmetatable, getmetatable, tostring, type, pairs = setmetatable, getmetatable, tostring, type, pairs
local concat = table.concat

local M = {}

--- Every kind: whether a retry can help, what it means, and what to do.
M.kinds = {
  validation = { retryable = false, what = "the request is invalid before sending", action = "fix the named field" },
  auth = { retryable = false, what = "401: missing or wrong API key", action = "check KIE_API_KEY / api_key" },
  credits = { retryable = false, what = "402: not enough credits", action = "top up the account" },
  not_found = { retryable = false, what = "404: unknown task or endpoint", action = "check the task id" },
  invalid = { retryable = false, what = "400/422: the server rejected the parameters",
              action = "read message; fix the input" },
  rate_limited = { retryable = true, what = "429: too many requests",
                   action = "retried with backoff; lower concurrency" },
  key_limit = { retryable = false, what = "433: the key's usage cap is reached",
                action = "raise the key's limit in the dashboard" },
  maintenance = { retryable = true, what = "455: service under maintenance",
                  action = "retried with backoff; try later" },
  server = { retryable = true, what = "500/408: server error", action = "retried for idempotent calls; try later" },
  generation_failed = { retryable = false, what = "501: generation failed",
                        action = "change the input or try again yourself" },
  disabled = { retryable = false, what = "505: feature disabled", action = "contact kie.ai support" },
  http = { retryable = false, what = "another non-2xx status (proxy page, ...)",
           action = "5xx are retried for idempotent calls" },
  network = { retryable = true, what = "transport failure (DNS, connect, reset, TLS)",
              action = "check connectivity, proxy, ca_file" },
  timeout = { retryable = true, what = "the HTTP request timed out", action = "raise timeout or check the network" },
  protocol = { retryable = false, what = "the response was not understood (bad JSON, wrong shape)",
               action = "report it; the server misbehaved" },
  too_large = { retryable = false, what = "the response exceeded max_response_bytes",
                action = "raise max_response_bytes if legitimate" },
  task_failed = { retryable = false, what = "the task ended in state fail (failCode, failMsg)",
                  action = "read failMsg; change the input" },
  deadline = { retryable = false, what = "wait gave up before the task ended (state = last seen)",
               action = "wait again later with the same task_id" },
  unknown_outcome = { retryable = false, what = "a create may have reached the server; it was not resent",
                      action = "check kie.ai/logs or your callback before creating again" },
  canceled = { retryable = false, what = "the call was canceled", action = "none" },
  raised = { retryable = false, what = "a function run by kie.spawn raised (traceback kept)",
             action = "fix the bug in that function" },
  callback = { retryable = false, what = "callbacks raised in a step (`errors`, `tracebacks`: every one)",
               action = "fix those callbacks" },
  io = { retryable = false, what = "a local file could not be read or written",
         action = "check the path and permissions" },
  signature = { retryable = false, what = "callback signature missing, wrong or stale",
                action = "check the HMAC key and clock" },
  fleet = { retryable = true, what = "fleet mode's Redis failed or could not be reached; nothing was sent",
            action = "check Redis (option fleet.redis); retried with backoff" },
}

local Error = {}
Error.__index = Error
Error.__name = "kie.Error"

function Error.__tostring(e)
  local parts = { "kie: ", tostring(e.kind), ": ", tostring(e.message) }
  local extra = {}
  if e.status then extra[#extra + 1] = "HTTP " .. tostring(e.status) end
  if e.code and e.code ~= e.status then extra[#extra + 1] = "code " .. tostring(e.code) end
  if e.task_id then extra[#extra + 1] = "task " .. tostring(e.task_id) end
  if e.retry_after then extra[#extra + 1] = "retry after " .. tostring(e.retry_after) .. "s" end
  if #extra > 0 then parts[#parts + 1] = " (" .. concat(extra, ", ") .. ")" end
  return concat(parts)
end

M.Error = Error

--- Makes an error. `fields` (optional) are copied in.
-- @tparam string kind one of `kinds`
-- @tparam string message
-- @tparam[opt] table fields
-- @treturn table the error
function M.new(kind, message, fields)
  local e = { kind = kind, message = message }
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  if e.retryable == nil then
    local k = M.kinds[kind]
    e.retryable = k and k.retryable or false
  end
  return setmetatable(e, Error)
end

--- Gives a plain error table (as kie.core returns them) the error metatable.
function M.wrap(e)
  if type(e) == "table" and getmetatable(e) == nil then return setmetatable(e, Error) end
  return e
end

--- True when `v` is an error of this module (optionally of kind `kind`).
function M.is(v, kind)
  return type(v) == "table" and getmetatable(v) == Error and (kind == nil or v.kind == kind)
end

return M
