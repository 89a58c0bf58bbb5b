-- Fleet mode: a callback taken by one client ends the wait in another, through
-- Redis (client:deliver). In production the receiver is your web server (e.g.
-- examples/openresty's /kie-callback) and the waits run in other processes or on
-- other machines; every client with the same fleet name on the same Redis takes
-- part.
--
--   lua5.4 examples/fleet_callbacks.lua
--       No KIE_API_KEY: starts a throwaway redis-server and the built-in mock
--       kie.ai server, creates two tasks whose callBackUrl points at a receiver
--       here, waits on them with a second client (coroutines, one host loop), and
--       prints each callback delivered and each wait woken (one status read each).
--   KIE_API_KEY=... KIE_WEBHOOK_KEY=... KIE_REDIS_URL=redis://127.0.0.1:6379/0 \
--   KIE_FLEET=acme KIE_CALLBACK_PORT=8787 lua5.4 examples/fleet_callbacks.lua
--       The receiver alone: serves POST /kie-callback on 127.0.0.1 until killed and
--       delivers each callback to the fleet (put it behind your public HTTPS host).
-- Run it from the repository root after `make build build-fleet`.
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath

local kie = require "kie"
local socket = require "socket"

-- Takes one HTTP request off `conn` and hands its body to receiver:deliver;
-- answers 200, 401/400 (refused) or 503 (Redis failed: the sender may retry).
local function serve(conn, receiver, hmac_key)
  conn:settimeout(5)
  local headers, size = {}, 0
  local line = conn:receive("*l")
  while line and line ~= "" do
    local k, v = line:match("^([%w%-]+):%s*(.-)%s*$")
    if k then headers[k] = v end
    if k and k:lower() == "content-length" then size = tonumber(v) or 0 end
    line = conn:receive("*l")
  end
  local body = size > 0 and size <= 1048576 and conn:receive(size) or ""
  local ev, err = receiver:deliver(body, headers, { hmac_key = hmac_key })
  local status = ev and "200 OK" or err.kind == "fleet" and "503 Service Unavailable"
    or err.kind == "signature" and "401 Unauthorized" or "400 Bad Request"
  conn:send("HTTP/1.1 " .. status .. "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
  conn:close()
  return ev, err
end

local api_key = os.getenv("KIE_API_KEY")
if api_key and api_key ~= "" then
  local redis_url, fleet = os.getenv("KIE_REDIS_URL"), os.getenv("KIE_FLEET")
  local hmac_key = os.getenv("KIE_WEBHOOK_KEY")
  if not (redis_url and fleet and hmac_key) then
    io.stderr:write("set KIE_REDIS_URL, KIE_FLEET and KIE_WEBHOOK_KEY\n")
    os.exit(2)
  end
  local receiver = kie.new{ api_key = api_key, fleet = { redis = redis_url, name = fleet } }
  local server = assert(socket.bind("127.0.0.1", tonumber(os.getenv("KIE_CALLBACK_PORT") or "") or 8787))
  while true do
    local conn = server:accept()
    if conn then
      local ev, err = serve(conn, receiver, hmac_key)
      print(ev and ("delivered " .. ev.task_id .. " " .. tostring(ev.state)) or ("refused: " .. tostring(err)))
    end
  end
end

-- demo: a throwaway Redis and the mock kie.ai, both on 127.0.0.1
local HMAC_KEY = "demo-webhook-key"
local redis = require("spec.support.redis").start()
local mock = require("spec.support.mock").start{ api_key = "demo-key", pace = 0.2, hmac_key = HMAC_KEY }
local function finish(code)
  mock:stop()
  redis:close()
  os.exit(code)
end

local fleet = { redis = redis.url, name = "demo" }
-- two clients of one fleet, as two processes would have: one receives callbacks...
local receiver = kie.new{ api_key = "demo-key", base_url = mock.url, fleet = fleet }
-- ... the other creates tasks and waits on them
local worker = kie.new{ api_key = "demo-key", base_url = mock.url, fleet = fleet }

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0) -- the host loop below polls it between steps
local callback_url = ("http://127.0.0.1:%d/kie-callback"):format(select(2, server:getsockname()))

local left = 2
for i = 1, 2 do
  kie.spawn(function()
    local info, err = worker:run{ model = "ideogram/character", callBackUrl = callback_url,
      input = { prompt = "A lighthouse at dawn, take " .. i,
        reference_image_urls = { "https://example.com/lighthouse.png" } } }
    if info then
      print("wait woken: " .. info.taskId .. " " .. info.state .. " " .. tostring(info.resultUrls[1]))
    else
      print("wait failed: " .. tostring(err))
    end
    left = left - 1
  end)
end

local deadline = socket.gettime() + 20
while left > 0 and socket.gettime() < deadline do
  local conn = server:accept()
  if conn then
    local ev, err = serve(conn, receiver, HMAC_KEY)
    print(ev and ("callback delivered: " .. ev.task_id .. " " .. ev.state) or ("refused: " .. tostring(err)))
  end
  worker:step(10)
end
print(("status reads: %d for 2 tasks"):format(mock:count("/api/v1/jobs/recordInfo")))
worker:close()
receiver:close()
finish(left == 0 and 0 or 1)
