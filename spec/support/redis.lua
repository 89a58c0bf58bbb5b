-- A throwaway Debian redis-server for the fleet specs: a free 127.0.0.1 port, its
-- own directory in /tmp, no persistence (save "", appendonly no) unless asked for,
-- stopped by its pid (and by a watchdog when the process that started it dies).
--
--   local redis = require "spec.support.redis"
--   local r = redis.start()          -- r.port, r.url ("redis://127.0.0.1:PORT/0"), r.pid, r.dir
--   redis.start{ bind = { "10.1.2.1" } }  -- also on these addresses (network namespaces' bridge);
--   r:url_at("10.1.2.1")             -- "redis://10.1.2.1:PORT/0"
--   r:cli("DBSIZE")                  -- one command over a raw socket: the reply line(s)
--   r:stop()                         -- kill -9 by pid (idempotent); the data is gone
--   r:restart()                      -- a new, empty server on the same port
--   r = redis.start{ persist = true } -- an AOF fsync'd at every write (appendfsync always)
--   r:stop(); r:restart{ keep = true } -- back with every write it acknowledged
--   r:freeze(); r:thaw()             -- SIGSTOP / SIGCONT: it keeps its port, answers nothing
--
-- Plain Lua 5.1 - 5.4 + LuaSocket; needs redis-server (Debian redis-server).

local socket = require "socket"
local util = require "spec.support.util"

local M = {}

local Server = {}
Server.__index = Server

local function pid_alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return false end
  local stat = f:read("*a") or ""
  f:close()
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end

local function owner_pid()
  local p = io.popen("echo $PPID")
  local pid = tonumber(p:read("*l") or "")
  p:close()
  return pid
end

--- Is redis-server installed?
function M.available()
  return (util.run("command -v redis-server"))
end

-- One command as a RESP array over a fresh socket; returns the raw reply text or
-- nil, err. Enough for PING, DBSIZE, FLUSHALL, KEYS in a spec.
function Server:cli(...)
  local args = { ... }
  local c = socket.tcp()
  c:settimeout(2)
  local ok, err = c:connect("127.0.0.1", self.port)
  if not ok then c:close() return nil, err end
  local parts = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  c:send(table.concat(parts))
  local line, rerr = c:receive("*l")
  c:close()
  return line, rerr
end

local function launch(self)
  util.write_file(self.dir .. "/redis.conf", table.concat({
    "port " .. self.port, "bind " .. table.concat(self.bind, " "), 'save ""',
    self.persist and "appendonly yes\nappendfsync always" or "appendonly no",
    "dir " .. self.dir, "logfile " .. self.dir .. "/redis.log", "daemonize no",
    -- protected mode refuses every client not on loopback: the extra addresses are the
    -- private bridge of the spec's own network namespaces
    "protected-mode " .. (#self.bind > 1 and "no" or "yes"), "databases 4", "",
  }, "\n"))
  local pidfile = self.dir .. "/pid"
  os.remove(pidfile)
  local q = util.quote
  -- the server, then a watchdog that kills it once this Lua process is gone
  local ok, out = util.run("redis-server " .. q(self.dir .. "/redis.conf")
    .. " </dev/null >/dev/null 2>&1 & echo $! > " .. q(pidfile) .. "; rpid=$!; "
    .. "(while kill -0 " .. self.owner .. " 2>/dev/null && kill -0 $rpid 2>/dev/null; do sleep 1; done; "
    .. "kill -9 $rpid 2>/dev/null) </dev/null >/dev/null 2>&1 &")
  assert(ok, "cannot start redis-server: " .. out)
  self.pid = tonumber(util.read_file(pidfile):match("%d+"))
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    if self:cli("PING") == "+PONG" then return self end
    if not pid_alive(self.pid) then break end
    socket.sleep(0.02)
  end
  error("redis-server did not answer PING on port " .. self.port .. ": "
    .. tostring(util.read_file(self.dir .. "/redis.log")))
end

--- Starts a server; returns it. opts: `bind` (more addresses to listen on),
-- `persist` (an AOF, fsync'd at every write).
function M.start(opts)
  local bind = { "127.0.0.1" }
  for _, address in ipairs(opts and opts.bind or {}) do bind[#bind + 1] = address end
  local self = setmetatable({ dir = util.tmpdir("kie-redis"), port = util.free_port(),
    owner = owner_pid(), bind = bind, persist = opts and opts.persist or false }, Server)
  self.url = "redis://127.0.0.1:" .. self.port .. "/0"
  return launch(self)
end

--- The URL on `address`, one of the `bind` addresses of start.
function Server:url_at(address)
  return "redis://" .. address .. ":" .. self.port .. "/0"
end

-- Does anything accept connections on the port?
local function listening(port)
  local c = socket.tcp()
  c:settimeout(1)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end

--- Kills the server by its pid (-9: nothing saved) and waits until it is gone and
-- its port refuses connections (the main thread of a killed redis-server shows as a
-- zombie while its other threads still hold the listening socket).
function Server:stop()
  if not self.pid then return end
  os.execute("kill -9 " .. tonumber(self.pid) .. " 2>/dev/null")
  local deadline = socket.gettime() + 5
  while (pid_alive(self.pid) or listening(self.port)) and socket.gettime() < deadline do
    socket.sleep(0.01)
  end
  self.pid = nil
end

--- A new server on the same port, without the old one's data; with `keep`
-- (opts.keep, a server started with `persist`) with it, read back from its AOF.
function Server:restart(opts)
  self:stop()
  if not (opts and opts.keep) then
    util.run("rm -rf " .. util.quote(self.dir .. "/appendonlydir") .. " " .. util.quote(self.dir .. "/dump.rdb"))
  end
  return launch(self)
end

--- Stops (SIGSTOP) the server without ending it: connections and the port stay
-- open, nothing is answered until `thaw` (SIGCONT).
function Server:freeze()
  os.execute("kill -STOP " .. tonumber(self.pid))
end

--- Lets a frozen server run again.
function Server:thaw()
  os.execute("kill -CONT " .. tonumber(self.pid))
end

--- Stops the server and removes its directory.
function Server:close()
  self:stop()
  util.run("rm -rf " .. util.quote(self.dir))
end

return M
