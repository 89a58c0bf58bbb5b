-- Callback delivery: when a task with a callBackUrl finishes, POST the
-- recordInfo-shaped payload to it (ngx.timer.at + cosocket). With hmac_key set,
-- X-Webhook-Timestamp / X-Webhook-Signature headers are added. Every attempt is
-- recorded in the "delivery" list (m:deliveries()).

local store = require "store"
local tasks = require "tasks"
local hmac = require "hmac"

local M = {}

local function parse_url(url)
  local scheme, authority, path = url:match("^(%a[%w+.-]*)://([^/?#]+)(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  local host, port = authority:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host then return nil end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  path = path:gsub("#.*$", "")
  if path == "" or path:sub(1, 1) == "?" then path = "/" .. path end
  return { scheme = scheme, host = host, port = port, path = path, authority = authority }
end
M.parse_url = parse_url

function M.payload(task)
  local data = tasks.view(task)
  local ok = data.state == "success"
  data.consumeCredits = task.cost or 0
  data.remainedCredits = store.credits()
  return {
    code = ok and 200 or 501,
    msg = ok and "Playground task completed successfully." or "Playground task failed.",
    data = data,
  }
end

-- One HTTP/1.1 POST; returns the status code or nil, err.
local function post(u, body, headers, timeout)
  local sock = ngx.socket.tcp()
  sock:settimeout(timeout * 1000)
  local host = u.host
  if host == "localhost" then host = "127.0.0.1" end
  local ok, err = sock:connect(host, u.port)
  if not ok then return nil, "connect: " .. tostring(err) end
  if u.scheme == "https" then
    ok, err = sock:sslhandshake(nil, u.host, false)
    if not ok then sock:close(); return nil, "tls: " .. tostring(err) end
  end
  local lines = {
    "POST " .. u.path .. " HTTP/1.1",
    "Host: " .. u.authority,
    "User-Agent: kie-mock-callback/1",
    "Content-Type: application/json",
    "Content-Length: " .. #body,
    "Connection: close",
  }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  local req = table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
  ok, err = sock:send(req)
  if not ok then sock:close(); return nil, "send: " .. tostring(err) end
  local line
  line, err = sock:receive("*l")
  sock:close()
  if not line then return nil, "receive: " .. tostring(err) end
  local status = tonumber(line:match("^HTTP/%d[%.%d]*%s+(%d%d%d)"))
  if not status then return nil, "bad status line: " .. line end
  return status
end

local deliver

deliver = function(premature, task_id, attempt)
  if premature then return end
  local task = tasks.get(task_id)
  if not task or not task.callBackUrl then return end
  local cfg = store.config()
  local u = parse_url(task.callBackUrl)
  local payload = M.payload(task)
  if not tasks.is_terminal(payload.data.state) then return end
  local body = store.encode(payload)
  local success = false
  for _ = 1, math.max(1, tonumber(cfg.callback_repeat) or 1) do
    local headers = {}
    local ts
    if cfg.hmac_key and cfg.hmac_key ~= "" then
      ngx.update_time()
      ts = tostring(math.floor(ngx.time() + (tonumber(cfg.callback_ts_offset) or 0)))
      headers["X-Webhook-Timestamp"] = ts
      headers["X-Webhook-Signature"] = hmac.sign(cfg.hmac_key, task_id, ts)
    end
    local status, err
    local dropped = math.random() < (tonumber(cfg.callback_drop_rate) or 0)
    if dropped then
      err = "dropped"  -- lost on the way, as real networks lose webhooks
    elseif u then
      status, err = post(u, body, headers, tonumber(cfg.callback_timeout) or 15)
    else
      err = "bad callBackUrl"
    end
    ngx.update_time()
    store.push(store.dict, "delivery", {
      taskId = task_id, url = task.callBackUrl, attempt = attempt, status = status,
      error = err, timestamp = ts, time = ngx.now(), dropped = dropped or nil,
    })
    if status and status >= 200 and status < 300 then success = true end
  end
  if not success and attempt <= (tonumber(cfg.callback_retries) or 0) then
    ngx.timer.at(tonumber(cfg.callback_retry_delay) or 0.2, deliver, task_id, attempt + 1)
  end
end

function M.schedule(task)
  if not task.callBackUrl then return end
  local done = tasks.complete_time(task)
  if not done then return end   -- "#stuck" tasks never finish
  local delay = (done - store.now_ms()) / 1000 + 0.002
  if delay < 0 then delay = 0 end
  local ok, err = ngx.timer.at(delay, deliver, task.taskId, 1)
  if not ok then ngx.log(ngx.ERR, "kie mock: cannot schedule callback: ", err) end
end

return M
