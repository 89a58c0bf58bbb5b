-- A throwaway nginx + ngx_lua with several worker processes that serves test
-- handlers using kie.ngx (the mock kie.ai runs in another nginx, spec/support/mock.lua,
-- with one worker: this one is the "application" side of an OpenResty deployment).
--
--   local app = require "spec.support.ngx_app"
--   local a = app.start{
--     workers = 4,                       -- worker_processes
--     main_conf = "thread_pool kie threads=8;",
--     http_conf = "lua_shared_dict pacing 1m;",
--     server_conf = "location /t { content_by_lua_block { ... } }",
--     lua_dir = DIR,                     -- prepended to lua_package_path (handler modules)
--   }
--   a.url, a.port, a.pid, a.prefix, a.error_log;  a:log_tail(n);  a:stop()
--
-- Listens on 127.0.0.1 with `reuseport`, so the kernel spreads connections over
-- the workers. Uses the repository's lua/ and the LuaJIT build (build/luajit) and
-- Debian's Lua 5.1 paths (lua-cjson, lua-nginx-redis as nginx.redis). Stopped by
-- its pid (and by a watchdog when the process that started it dies).
-- Plain Lua 5.1 - 5.4 + LuaSocket.

local socket = require "socket"
local util = require "spec.support.util"

local M = {}

local App = {}
App.__index = App

local q = util.quote

local function alive(pid)
  local stat = util.read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end

local function root()
  local _, out = util.run("pwd")
  return (out:gsub("%s+$", ""))
end

local function conf(o, prefix, port, dir)
  local lines = {}
  local function add(s) lines[#lines + 1] = s end
  if util.run("test \"$(id -u)\" = 0") then add("user root root;") end
  add("worker_processes " .. (o.workers or 4) .. ";")
  add("daemon on;")
  add("pid " .. prefix .. "/nginx.pid;")
  add("error_log " .. prefix .. "/error.log " .. (o.log_level or "warn") .. ";")
  add("worker_shutdown_timeout 1s;")
  add("load_module /usr/lib/nginx/modules/ndk_http_module.so;")
  add("load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;")
  add(o.main_conf or "")
  add("events { worker_connections 1024; }")
  add("http {")
  add("  access_log off;")
  for _, t in ipairs({ "client_body", "proxy", "fastcgi", "uwsgi", "scgi" }) do
    add("  " .. t .. "_temp_path " .. prefix .. "/tmp/" .. t .. ";")
  end
  add("  lua_socket_log_errors off;")
  add('  lua_package_path "' .. (o.lua_dir and (o.lua_dir .. "/?.lua;") or "") .. dir .. "/lua/?.lua;"
    .. dir .. "/lua/?/init.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;\";")
  add('  lua_package_cpath "' .. dir .. "/build/luajit/?.so;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;\";")
  add(o.http_conf or "")
  add("  server {")
  add("    listen 127.0.0.1:" .. port .. " reuseport;")
  add("    default_type application/json;")
  add(o.server_conf or "")
  add("  }")
  add("}")
  return table.concat(lines, "\n") .. "\n"
end

--- Starts nginx (raises with its error log when it does not answer).
function M.start(o)
  local prefix = util.tmpdir("kie-ngx-app")
  assert(util.run("mkdir -p " .. q(prefix .. "/tmp")))
  local self = setmetatable({ prefix = prefix, error_log = prefix .. "/error.log" }, App)
  local dir = root()
  for _ = 1, 5 do
    self.port = util.free_port()
    util.write_file(prefix .. "/nginx.conf", conf(o, prefix, self.port, dir))
    local ok, out = util.run("nginx -p " .. q(prefix .. "/") .. " -c " .. q(prefix .. "/nginx.conf")
      .. " -e " .. q(self.error_log))
    if ok then break end
    if not out:find("Address already in use", 1, true) then
      util.run("rm -rf " .. q(prefix))
      error("ngx_app: nginx did not start: " .. out, 2)
    end
    self.port = nil
  end
  assert(self.port, "ngx_app: no free port")
  self.url = "http://127.0.0.1:" .. self.port
  local deadline = socket.gettime() + 10
  while not self.pid do
    self.pid = tonumber(util.read_file(prefix .. "/nginx.pid") or "")
    if socket.gettime() > deadline then self:stop() error("ngx_app: no pid file", 2) end
    socket.sleep(0.02)
  end
  -- a watchdog: this nginx stops when the test process dies without stopping it
  local _, owner = util.run("echo $PPID")
  owner = tonumber(owner:match("%d+"))
  if owner then
    util.run("(while kill -0 " .. owner .. " && kill -0 " .. self.pid .. "; do sleep 1; done; "
      .. "kill -0 " .. owner .. " || kill -TERM " .. self.pid .. ") >/dev/null 2>&1 </dev/null &")
  end
  return self
end

--- The last n lines of the error log.
function App:log_tail(n)
  local _, out = util.run("tail -n " .. (n or 30) .. " " .. q(self.error_log))
  return out
end

--- Stops nginx by its pid (TERM, then KILL) and removes its prefix (idempotent).
function App:stop()
  if self.stopped then return end
  self.stopped = true
  local pid = self.pid
  if pid and alive(pid) then
    os.execute("kill -TERM " .. pid)
    local deadline = socket.gettime() + 5
    while alive(pid) and socket.gettime() < deadline do socket.sleep(0.02) end
    if alive(pid) then os.execute("kill -KILL " .. pid) end
  end
  util.run("rm -rf " .. q(self.prefix))
end

return M
