-- Fault injection. m:fault{...} queues an entry; the next `times` requests that
-- match it (path exact, or prefix when it ends with "*"; optional method) are
-- served with the fault instead of (or around) the normal answer.
--
-- Kinds:
--   delay            sleep `seconds`, then answer normally (any fault also takes `delay`)
--   drop_before_body close the connection, body unread, nothing done, no response
--   drop_after_body  read the body, do the real work (a task IS created), then close
--   close_after_read read the whole request, log it, then close the connection with no
--                    answer and nothing done (a kept-alive connection dying under a request)
--   html_502         HTTP 502 with an HTML proxy error page
--   code_in_200      HTTP 200 with {"code":<code|500>,"msg":<msg>}
--   status           HTTP <status> with {"code":<code|status>,"msg":<msg>}
--   bad_json         HTTP 200, body is not JSON
--   truncated_json   HTTP 200, complete response whose JSON is cut in the middle
--   partial_body     Content-Length announces more than is sent, then the connection closes
--   huge             HTTP 200 JSON body of `bytes` (16 MiB) bytes, streamed in chunks
--                    (chunked; `content_length = true` announces the size)
--   rate_limit       HTTP 429 {"code":429,...}; Retry-After only when `retry_after` is given
--   maintenance      HTTP 455 {"code":455,...}
--   wrong_shape      HTTP 200 {"code":200,"msg":"success","data":"not-an-object"} on
--                    createTask, {"code":200,"msg":"success"} (no data) elsewhere; `data` overrides
--   raw              HTTP `status` (200) with `body`, `content_type`
--   echo_headers     HTTP `status` (400) HTML error page printing the request's headers
--                    (`names`: only these, in this order; default all, sorted), after
--                    `pad` filler bytes, as a misconfigured proxy does
-- Every kind also accepts `headers` (extra response headers) and `latency` (seconds
-- before the request counts as arrived: mock/account.lua).

local store = require "store"
local respond = require "respond"

local M = {}

M.KINDS = {
  delay = true, drop_before_body = true, drop_after_body = true, html_502 = true,
  code_in_200 = true, status = true, bad_json = true, truncated_json = true,
  partial_body = true, huge = true, rate_limit = true, maintenance = true,
  wrong_shape = true, raw = true, close_after_read = true, echo_headers = true,
}

-- kinds that replace the normal answer (nothing is done for the request)
M.REPLACES = {
  html_502 = true, code_in_200 = true, status = true, bad_json = true,
  truncated_json = true, partial_body = true, huge = true, rate_limit = true,
  maintenance = true, wrong_shape = true, raw = true, close_after_read = true,
  echo_headers = true,
}

function M.add(spec)
  if type(spec) ~= "table" then return nil, "fault spec must be an object" end
  if not M.KINDS[spec.fault] then return nil, "unknown fault: " .. tostring(spec.fault) end
  if spec.path ~= nil and type(spec.path) ~= "string" then return nil, "path must be a string" end
  local times = spec.times
  if times == nil then times = 1 end
  if type(times) ~= "number" or (times < 1 and times ~= -1) then
    return nil, "times must be >= 1 (or -1 for every request)"
  end
  spec.times = times
  spec.id = store.dict:incr("fault_seq", 1, 0)
  local list = store.get_json(store.dict, "faults") or {}
  list[#list + 1] = spec
  store.set_json(store.dict, "faults", list)
  return spec.id
end

function M.list()
  return store.get_json(store.dict, "faults") or {}
end

local function matches(f, uri, method)
  if f.method and f.method:upper() ~= method then return false end
  local p = f.path
  if p == nil or p == "*" then return true end
  if p:sub(-1) == "*" then return uri:sub(1, #p - 1) == p:sub(1, -2) end
  return uri == p
end

-- Consume one use of the first fault matching this request; returns it or nil.
function M.take(uri, method)
  local list = store.get_json(store.dict, "faults")
  if not list or #list == 0 then return nil end
  for i, f in ipairs(list) do
    if matches(f, uri, method) then
      if f.times ~= -1 then
        f.times = f.times - 1
        if f.times <= 0 then table.remove(list, i) end
      end
      if #list == 0 then store.dict:delete("faults")
      else store.set_json(store.dict, "faults", list) end
      return f
    end
  end
  return nil
end

function M.delay_of(f)
  if not f then return 0 end
  local d = tonumber(f.delay) or 0
  if f.fault == "delay" then d = d + (tonumber(f.seconds) or 1) end
  return d
end

local HTML_502 = [[<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>cloudflare</center>
</body>
</html>
]]

local function stream_huge(f)
  local total = tonumber(f.bytes) or 16 * 1024 * 1024
  local head = '{"code":200,"msg":"success","data":{"padding":"'
  local tail = '"}}'
  local pad = total - #head - #tail
  if pad < 0 then pad = 0 end
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  if f.content_length then ngx.header["Content-Length"] = #head + pad + #tail end
  if f.headers then for k, v in pairs(f.headers) do ngx.header[k] = v end end
  local chunk = string.rep("x", 65536)
  local ok = ngx.print(head)
  while ok and pad > 0 do
    local n = math.min(pad, #chunk)
    ok = ngx.print(n == #chunk and chunk or chunk:sub(1, n))
    if ok then ok = ngx.flush(true) end
    pad = pad - n
  end
  if ok then ngx.print(tail) end
  return ngx.exit(ngx.HTTP_OK)
end

local function echo_headers(f)
  local headers = ngx.req.get_headers(200) -- case-insensitive lookups
  local names = f.names
  if type(names) ~= "table" then
    names = {}
    for k in pairs(headers) do names[#names + 1] = k end
    table.sort(names)
  end
  local lines = {}
  for _, name in ipairs(names) do
    local v = headers[name]
    if type(v) == "table" then v = table.concat(v, ", ") end
    if v ~= nil then lines[#lines + 1] = name .. ": " .. tostring(v) end
  end
  local status = tonumber(f.status) or 400
  return respond.text(status, "<html><body><h1>" .. status .. " Bad Request</h1>"
    .. string.rep(" ", tonumber(f.pad) or 0) .. "<pre>" .. table.concat(lines, "\n")
    .. "</pre></body></html>\n", "text/html")
end

local function partial()
  local full = '{"code":200,"msg":"success","data":{"taskId":"task_partial_0000","state":"waiting"}}'
  local sent = full:sub(1, math.floor(#full / 2))
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #full
  ngx.print(sent)
  ngx.flush(true)
  return ngx.exit(ngx.ERROR)   -- aborts the connection
end

-- Write the response of a REPLACES fault.
function M.respond(f, uri)
  local kind = f.fault
  local res
  if kind == "html_502" then
    res = respond.text(502, HTML_502, "text/html")
  elseif kind == "code_in_200" then
    res = respond.json(200, respond.envelope(tonumber(f.code) or 500, f.msg or "Server Error", store.null))
  elseif kind == "status" then
    local status = tonumber(f.status) or 500
    if f.body then
      res = respond.text(status, f.body, f.content_type or "application/json")
    else
      res = respond.json(status, respond.envelope(tonumber(f.code) or status, f.msg or "Error", store.null))
    end
  elseif kind == "bad_json" then
    res = respond.text(200, '{"code":200,"msg":<html>oops</html> ,,,}}', "application/json")
  elseif kind == "truncated_json" then
    local full = '{"code":200,"msg":"success","data":{"taskId":"task_truncated_0000","state":"waiting"}}'
    res = respond.text(200, full:sub(1, math.floor(#full / 2)), "application/json")
  elseif kind == "partial_body" then
    return partial()
  elseif kind == "huge" then
    return stream_huge(f)
  elseif kind == "rate_limit" then
    local headers
    if f.retry_after ~= nil then headers = { ["Retry-After"] = tostring(f.retry_after) } end
    res = respond.json(429, respond.envelope(429, f.msg or "Rate limit exceeded", store.null), { headers = headers })
  elseif kind == "maintenance" then
    res = respond.json(455, respond.envelope(455, f.msg or "Service unavailable: maintenance", store.null))
  elseif kind == "wrong_shape" then
    local data = f.data
    if data == nil and uri == "/api/v1/jobs/createTask" then data = "not-an-object" end
    res = respond.json(200, respond.envelope(200, "success", data))
  elseif kind == "echo_headers" then
    res = echo_headers(f)
  elseif kind == "close_after_read" then
    return respond.drop()
  elseif kind == "raw" then
    res = respond.text(tonumber(f.status) or 200, f.body or "", f.content_type or "application/json")
  end
  if f.headers then
    res.headers = res.headers or {}
    for k, v in pairs(f.headers) do res.headers[k] = v end
  end
  return respond.send(res)
end

return M
