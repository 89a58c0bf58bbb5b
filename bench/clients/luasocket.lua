-- Peer: LuaSocket + lua-cjson, the same job as `ours.lua seq`.
--   lua5.4 bench/clients/luasocket.lua keepalive URL N   raw HTTP/1.1 on one kept-alive
--                                                       socket.tcp (Content-Length bodies)
--   lua5.4 bench/clients/luasocket.lua http URL N        socket.http.request: LuaSocket's
--                                                       HTTP client has no keep-alive, so
--                                                       this opens one connection per request
-- Plain http only (LuaSec would be needed for TLS). Prints "requests=<n> seconds=<s>".
local socket = require "socket"
local cjson = require "cjson"
local bodies = dofile("bench/bodies.lua")

local mode, url, n = arg[1], arg[2], tonumber(arg[3])
local host, port = url:match("^http://([^:/]+):(%d+)")
assert(host, "usage: luasocket.lua keepalive|http http://HOST:PORT N")
local function fail(msg) io.stderr:write("luasocket: ", msg, "\n") os.exit(1) end

local AUTH = "Bearer " .. bodies.API_KEY
local send_request

if mode == "keepalive" then
  local sock = assert(socket.tcp())
  sock:settimeout(30)
  assert(sock:connect(host, tonumber(port)))
  sock:setoption("tcp-nodelay", true)
  local head_common = "Host: " .. host .. ":" .. port .. "\r\nAuthorization: " .. AUTH
    .. "\r\nAccept: application/json\r\nUser-Agent: luasocket-bench\r\n"
  send_request = function(method, path, body)
    local msg = method .. " " .. path .. " HTTP/1.1\r\n" .. head_common
    if body then
      msg = msg .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
    else
      msg = msg .. "\r\n"
    end
    assert(sock:send(msg))
    local status = assert(sock:receive("*l"))
    local code = tonumber(status:match("^HTTP/1%.%d (%d%d%d)"))
    local len
    while true do
      local line = assert(sock:receive("*l"))
      if line == "" then break end
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name and name:lower() == "content-length" then len = tonumber(value) end
      if name and name:lower() == "transfer-encoding" then fail("chunked body not supported") end
    end
    if not len then fail("no Content-Length") end
    return code, assert(sock:receive(len))
  end
elseif mode == "http" then
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  send_request = function(method, path, body)
    local out = {}
    local headers = { authorization = AUTH, accept = "application/json" }
    if body then
      headers["content-type"] = "application/json"
      headers["content-length"] = tostring(#body)
    end
    local ok, code = http.request{ url = url .. path, method = method, headers = headers,
      source = body and ltn12.source.string(body) or nil, sink = ltn12.sink.table(out) }
    if not ok then fail(tostring(code)) end
    return code, table.concat(out)
  end
else
  fail("unknown mode " .. tostring(mode))
end

local req = bodies.request()
local t0 = socket.gettime()
for _ = 1, n do
  local code, text = send_request("POST", bodies.CREATE_PATH, cjson.encode(req))
  local env = cjson.decode(text)
  if code ~= 200 or env.code ~= 200 or env.data.taskId ~= bodies.TASK_ID then fail("bad create answer") end
  code, text = send_request("GET", bodies.GET_PATH)
  env = cjson.decode(text)
  local data = env.data
  data.param = cjson.decode(data.param)
  data.resultJson = cjson.decode(data.resultJson)
  data.resultUrls = data.resultJson.resultUrls
  if code ~= 200 or env.code ~= 200 or data.state ~= "success" or data.resultUrls[1] ~= bodies.RESULT_URL then
    fail("bad recordInfo answer")
  end
end
local t1 = socket.gettime()
print(string.format("requests=%d seconds=%.6f", 2 * n, t1 - t0))
