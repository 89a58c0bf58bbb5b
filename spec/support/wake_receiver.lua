-- A callback receiver for the fleet callback specs and bench: a LuaSocket HTTP
-- server on 127.0.0.1 (a free port, printed first: "port N") whose every POST goes
-- to client:deliver of a fleet client; one line per callback:
--   delivered <task id> <wall time deliver began> <wall time it returned>
--   refused <kind>
--   lua wake_receiver.lua REDIS_URL NAME HMAC_KEY
-- Serves until killed (by its pid).
local kie = require "kie"
local socket = require "socket"

local redis_url, name, hmac_key = ...
local client = kie.new{ api_key = "sk-wake-receiver", base_url = "http://127.0.0.1:1",
  fleet = { redis = redis_url, name = name } }
local server = assert(socket.bind("127.0.0.1", 0, 4096)) -- a backlog for bursts of callbacks
io.stdout:setvbuf("line")
print("port " .. select(2, server:getsockname()))

-- The request's headers (a table) and body, or nil.
local function request(conn)
  conn:settimeout(5)
  if not conn:receive("*l") then return nil end
  local headers, size = {}, 0
  repeat
    local line = conn:receive("*l")
    local k, v = (line or ""):match("^([%w%-]+):%s*(.-)%s*$")
    if k then headers[k] = v end
    if k and k:lower() == "content-length" then size = tonumber(v) or 0 end
  until not line or line == ""
  if size <= 0 or size > 1048576 then return headers, "" end
  return headers, conn:receive(size)
end

while true do
  local conn = server:accept()
  if conn then
    local headers, body = request(conn)
    local status = "400 Bad Request"
    if headers and body then
      local t0 = socket.gettime()
      local ev, err = client:deliver(body, headers, { hmac_key = hmac_key })
      if ev then
        print(("delivered %s %.6f %.6f"):format(ev.task_id, t0, socket.gettime()))
        status = "200 OK"
      else
        print("refused " .. err.kind)
        status = err.kind == "fleet" and "503 Service Unavailable" or "401 Unauthorized"
      end
    end
    conn:send("HTTP/1.1 " .. status .. "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    conn:close()
  end
end
