-- A tiny callback (webhook) receiver: a LuaSocket HTTP server on 127.0.0.1 that
-- checks every POST with kie.callback.parse (HMAC signature, 5-minute window,
-- replays refused) and answers 200 (accepted), 401 (signature missing, wrong,
-- stale or replayed) or 400 (not a callback). One connection at a time: enough
-- behind a reverse proxy or a tunnel for a script's callbacks; use
-- examples/openresty for a real server.
--
--   lua5.4 examples/callback_receiver.lua
--       No KIE_API_KEY: starts the built-in mock kie.ai server with a webhook key,
--       creates one task whose callBackUrl points here, prints the verified
--       callback ("verified <taskId> <state>", then its result URLs) and exits.
--   KIE_WEBHOOK_KEY=... KIE_CALLBACK_PORT=8787 lua5.4 examples/callback_receiver.lua
--       Serves until killed, one line on stdout per verified callback. Point
--       kie.ai at it with callBackUrl = "https://<your public host>/kie-callback".
-- Run it from the repository root after `make` (it loads ./lua and ./build/lua5.4).
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath

local kie = require "kie"
local socket = require "socket"

local MAX_BODY = 1024 * 1024

-- Reads one HTTP/1.1 request; returns method, path, headers, body or nil, why.
local function read_request(conn)
  conn:settimeout(5)
  local line, err = conn:receive("*l")
  if not line then return nil, err end
  local method, path = line:match("^(%u+)%s+(%S+)%s+HTTP/1%.[01]$")
  if not method then return nil, "bad request line" end
  local headers = {}
  while true do
    local h, herr = conn:receive("*l")
    if not h then return nil, herr end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name] = value end -- kie.callback.parse matches names case-insensitively
  end
  local len = 0
  for k, v in pairs(headers) do
    if k:lower() == "content-length" then len = tonumber(v) or -1 end
  end
  if len < 0 or len > MAX_BODY then return nil, "bad Content-Length" end
  local body = ""
  if len > 0 then
    body, err = conn:receive(len)
    if not body then return nil, err end
  end
  return method, path, headers, body
end

local REASONS = { [200] = "OK", [400] = "Bad Request", [401] = "Unauthorized",
  [404] = "Not Found", [405] = "Method Not Allowed" }

local function respond(conn, status, json)
  conn:send(string.format("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
    .. "Content-Length: %d\r\nConnection: close\r\n\r\n%s", status, REASONS[status], #json, json))
end

-- Serves one connection. Returns the parsed callback when one was accepted.
local seen = {} -- task id + timestamp of every accepted callback: a replay gets 401
local function serve_one(conn, hmac_key)
  local method, path, headers, body = read_request(conn)
  if not method then
    respond(conn, 400, '{"error":"bad request"}')
    return nil
  end
  if path:match("^[^?]*") ~= "/kie-callback" then
    respond(conn, 404, '{"error":"not found"}')
    return nil
  end
  if method ~= "POST" then
    respond(conn, 405, '{"error":"POST only"}')
    return nil
  end
  local ev, err = kie.callback.parse(body, headers, { hmac_key = hmac_key, tolerance = 300,
    seen = seen })
  if not ev then
    io.stderr:write("rejected: ", tostring(err), "\n")
    respond(conn, err.kind == "signature" and 401 or 400, '{"error":"' .. err.kind .. '"}')
    return nil
  end
  -- answer at once; do the slow work (downloads) after the connection is closed
  respond(conn, 200, '{"status":"received"}')
  return ev
end

local function report(ev)
  print("verified " .. ev.task_id .. " " .. tostring(ev.state))
  for _, url in ipairs(ev.task.resultUrls or {}) do print(url) end
  if ev.state == "fail" then
    print("failCode " .. tostring(ev.task.failCode) .. ": " .. tostring(ev.task.failMsg))
  end
  io.stdout:flush()
end

local api_key = os.getenv("KIE_API_KEY")
if api_key and api_key ~= "" then
  -- server mode: serve until killed
  local hmac_key = os.getenv("KIE_WEBHOOK_KEY")
  if not hmac_key or hmac_key == "" then
    io.stderr:write("set KIE_WEBHOOK_KEY (your webhook HMAC key from kie.ai's settings)\n")
    os.exit(2)
  end
  local port = tonumber(os.getenv("KIE_CALLBACK_PORT") or "") or 8787
  local server = assert(socket.bind("127.0.0.1", port))
  io.stderr:write("listening on http://127.0.0.1:", port, "/kie-callback\n")
  while true do
    local conn = server:accept()
    if conn then
      local ok, ev = pcall(serve_one, conn, hmac_key)
      conn:close()
      if ok and ev then report(ev) elseif not ok then io.stderr:write(tostring(ev), "\n") end
    end
  end
end

-- demo mode: the mock kie.ai calls us back
local HMAC_KEY = "demo-webhook-key"
local mock = require("spec.support.mock").start{ api_key = "demo-key", pace = 0.3,
  hmac_key = HMAC_KEY }
io.stderr:write("no KIE_API_KEY: using the local mock kie.ai server at ", mock.url, "\n")
local function finish(code)
  mock:stop()
  os.exit(code)
end

local server = assert(socket.bind("127.0.0.1", 0)) -- a free port
local _, port = server:getsockname()
local callback_url = "http://127.0.0.1:" .. port .. "/kie-callback"
io.stderr:write("listening on ", callback_url, "\n")

local client = kie.new{ api_key = "demo-key", base_url = mock.url }
local task, err = client:create_task{
  model = "ideogram/character",
  callBackUrl = callback_url,
  input = {
    prompt = "A cheerful knight in a sunlit forest, storybook illustration",
    reference_image_urls = { "https://example.com/knight.png" },
    rendering_speed = "TURBO",
    num_images = 1,
  },
}
if not task then
  io.stderr:write(tostring(err), "\n")
  finish(1)
end
io.stderr:write("created ", task.taskId, "; waiting for its callback\n")

-- the server socket was bound before the create: a callback that comes early
-- waits in the listen queue
server:settimeout(1)
local deadline = socket.gettime() + 60
while socket.gettime() < deadline do
  local conn = server:accept()
  if conn then
    local ok, ev = pcall(serve_one, conn, HMAC_KEY)
    conn:close()
    if not ok then
      io.stderr:write(tostring(ev), "\n")
    elseif ev and ev.task_id == task.taskId then
      report(ev)
      server:close()
      client:close()
      finish(0)
    end
  end
end
io.stderr:write("no callback within 60 s\n")
finish(1)
