-- A tiny TCP forwarder for the reliability specs: listens on 127.0.0.1:<listen>
-- and copies bytes both ways to 127.0.0.1:<target>, so a port that refused
-- connections at first can start accepting them (a "server came back" case).
--
--   lua forward.lua <listen_port> <target_port> [owner_pid] [lifetime_s]
--
-- Prints "ready" on stdout once listening. Exits when owner_pid is gone, after
-- lifetime_s seconds (default 60), or on SIGTERM. Plain LuaSocket, Lua 5.1 - 5.4.

local socket = require "socket"

local listen_port, target_port = tonumber(arg[1]), tonumber(arg[2])
local owner = tonumber(arg[3] or "")
local lifetime = tonumber(arg[4] or "") or 60
assert(listen_port and target_port, "usage: forward.lua <listen_port> <target_port> [owner_pid] [lifetime_s]")

local server = assert(socket.bind("127.0.0.1", listen_port))
server:settimeout(0)
io.stdout:write("ready\n")
io.stdout:flush()

local peer = {}     -- socket -> the socket at the other end
local list = { server }

local function remove(s)
  for i = #list, 1, -1 do
    if list[i] == s then table.remove(list, i) end
  end
  peer[s] = nil
  s:close()
end

local function close_pair(s)
  local o = peer[s]
  remove(s)
  if o then remove(o) end
end

local function send_all(s, data)
  s:settimeout(5)
  local i = 1
  while i <= #data do
    local n, err, last = s:send(data, i)
    if not n then
      if err ~= "timeout" then s:settimeout(0) return false end
      i = (last or i - 1) + 1
    else
      i = n + 1
    end
  end
  s:settimeout(0)
  return true
end

local function owner_alive()
  if not owner then return true end
  local f = io.open("/proc/" .. owner .. "/stat", "r")
  if not f then return false end
  f:close()
  return true
end

local started = socket.gettime()
local last_check = started
while true do
  local readable = socket.select(list, nil, 0.5)
  for _, s in ipairs(readable) do
    if s == server then
      local c = server:accept()
      if c then
        local u = socket.tcp()
        u:settimeout(5)
        if u:connect("127.0.0.1", target_port) then
          c:settimeout(0)
          u:settimeout(0)
          peer[c], peer[u] = u, c
          list[#list + 1] = c
          list[#list + 1] = u
        else
          u:close()
          c:close()
        end
      end
    elseif peer[s] then
      local data, err, partial = s:receive(65536)
      data = data or partial
      local other = peer[s]
      if data and #data > 0 and not send_all(other, data) then
        close_pair(s)
      elseif err == "closed" then
        close_pair(s)
      end
    end
  end
  local now = socket.gettime()
  if now - last_check > 0.5 then
    last_check = now
    if not owner_alive() or now - started > lifetime then break end
  end
end
for _, s in ipairs(list) do s:close() end
