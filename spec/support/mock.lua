-- Launcher for the mock kie.ai server: a real nginx + ngx_lua on 127.0.0.1.
--
--   local mock = require "spec.support.mock"
--   local m = mock.start{            -- every option optional
--     api_key = "test-key",          -- Bearer key accepted on /api/*
--     pace = 0.05,                   -- seconds per state (waiting, queuing, generating)
--     hmac_key = nil,                -- sign callbacks (X-Webhook-Timestamp/-Signature)
--     https = false,                 -- also listen with TLS; CA + cert made at start
--     credits = 1000, cost = 1,      -- balance, and what each createTask charges
--     status_mode = "mirror",        -- "200": API errors answered as HTTP 200
--     use_message_key = false,       -- true: recordInfo says "message"; "all": every endpoint
--     download_url_ttl = 1200,       -- seconds a download-url link lives (negative: expired)
--     callback_timeout = 15, callback_retries = 0, callback_retry_delay = 0.2,
--     callback_repeat = 1,           -- send each callback n times (duplicate deliveries)
--     callback_ts_offset = 0,        -- shift X-Webhook-Timestamp (stale-signature tests)
--     sink_status = 200,             -- HTTP status of /_mock/callback_sink
--     max_log_body = 65536,          -- bodies longer than this are truncated in the log
--     latency = false,               -- {min =, max =}: seconds before a request counts (per
--                                    -- request, /api/*; a fault's `latency` overrides it)
--     account_limit = false,         -- {create = {limit =, window =}, poll = {...}}: kie.ai's
--                                    -- sliding windows over arrivals; 429 over them (mock/account.lua)
--     -- launcher only:
--     watchdog = true,               -- nginx stops itself when this process dies
--     nginx = "/usr/sbin/nginx", log_level = "warn", start_timeout = 10,
--     main_conf, http_conf, server_conf = <nginx.conf text added at main / http / server level>,
--     listen = nil,                  -- more addresses to listen on (HTTP, the same port), e.g.
--                                    -- a bridge's for network namespaces (spec/support/netns.lua)
--     lua_package_path, lua_package_cpath = <prepended to nginx's Lua paths>,
--   }
--   m.url, m.https_url, m.ca_file, m.prefix, m.port, m.https_port, m.pid, m.error_log
--   m:url_at(address)          the HTTP URL on one of the `listen` addresses
--   m:fault{ path = "/api/v1/jobs/createTask", fault = "html_502", times = 1, delay = nil, ... }
--       path exact, prefix when it ends in "*", any request when nil; optional method;
--       times = -1: every matching request. Kinds and parameters: see mock/faults.lua.
--   m:faults()                 queued faults
--   m:config{ ... } / m:config()   change settings at run time (hmac_key = false removes it;
--                              credits = n sets the balance) / read them (with credits)
--   m:requests(path?)          request log entries {method, path, query, body, body_size,
--                              body_truncated, headers (lowercased), connection,
--                              connection_requests, scheme, fault, time, arrived, seq}
--   m:count(path?), m:connections(path?)
--   m:over_limit(path?)        requests the account_limit refused (429)
--   m:callbacks()              what /_mock/callback_sink got: {headers, body, json, method, uri, time}
--   m:wait_callbacks(n, timeout?)  poll until n callbacks arrived (returns the list)
--   m:deliveries()             the mock's own callback attempts {taskId, url, attempt, status, error}
--   m:task(id)                 {task = stored record, view = recordInfo data}
--   m:hmac(key, message)       base64 HMAC-SHA256 computed inside nginx (FFI self test)
--   m:reset()                  clear log, faults, callbacks, deliveries, tasks (config and
--                              credits stay)
--   m:log_tail(n?)             last lines of nginx's error_log
--   m:running(), m:stop()      stop is idempotent; also runs on __gc / Lua state close
--   mock.json                  the small JSON codec the launcher uses (decode/encode/null/array)
--
-- Plain Lua 5.1 - 5.4; needs LuaSocket (socket, socket.http, ltn12), the nginx
-- binary with /usr/lib/nginx/modules/{ndk_http,ngx_http_lua}_module.so, and the
-- openssl CLI when https = true. No busted dependency. Handler code running
-- inside nginx lives in spec/support/mock/*.lua.

local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local M = {}

-- where this file lives (absolute) -------------------------------------------


local function cwd()
  local p = io.popen("pwd")
  local dir = p and p:read("*l")
  if p then p:close() end
  return dir or os.getenv("PWD") or "."
end

local function normalize(path)
  path = path:gsub("/%./", "/"):gsub("/%.$", ""):gsub("//+", "/")
  local changed = true
  while changed do
    local n
    path, n = path:gsub("/[^/]+/%.%./", "/", 1)
    changed = n > 0
  end
  return path
end

local HERE = (function()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then dir = cwd() .. "/" .. dir end
  return normalize(dir .. "/")
end)():gsub("/$", "")

local util = dofile(HERE .. "/util.lua")
local shell_quote, run, read_file, write_file = util.quote, util.run, util.read_file, util.write_file
local json = dofile(HERE .. "/mock/purejson.lua")
M.json = json
M.support_dir = HERE

-- small process helpers ---------------------------------------------------------

local function tail(path, n)
  local text = read_file(path)
  if not text then return "(no " .. path .. ")" end
  local lines = {}
  for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local from = math.max(1, #lines - (n or 20) + 1)
  return table.concat(lines, "\n", from)
end

-- Is process `pid` running (zombies count as gone)?
local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= "Z" and state ~= "X"
  end
  local self_stat = io.open("/proc/self/stat", "r")
  if self_stat then self_stat:close(); return false end  -- /proc exists: pid is gone
  local ok = run("kill -0 " .. pid)
  return ok
end

local function child_pids(pid)
  local pids = {}
  local ok, out = run("ps -o pid= --ppid " .. pid)
  if ok then
    for p in out:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
  end
  return pids
end

local function wait_gone(pid, seconds)
  local deadline = socket.gettime() + seconds
  while alive(pid) do
    if socket.gettime() > deadline then return false end
    socket.sleep(0.01)
  end
  return true
end

local free_port = util.free_port

local function find_nginx()
  for _, p in ipairs({ "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx" }) do
    if io.open(p, "r") then return p end
  end
  local ok, out = run("command -v nginx")
  if ok and out:match("%S") then return (out:gsub("%s+$", "")) end
  error("mock: nginx binary not found")
end

-- TLS material ----------------------------------------------------------------------

local CA_CNF = [[
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = lua-kie mock CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
]]

local SERVER_CNF = [[
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
]]

local SERVER_EXT = [[
[v3_srv]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
]]

local function make_certs(dir)
  write_file(dir .. "/ca.cnf", CA_CNF)
  write_file(dir .. "/server.cnf", SERVER_CNF)
  write_file(dir .. "/server_ext.cnf", SERVER_EXT)
  local d = shell_quote(dir)
  local serial = string.format("0x%x%06x", os.time(), math.random(0, 0xffffff))
  local cmd = table.concat({
    "cd " .. d,
    "openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -keyout ca.key -out ca.pem -days 3 -config ca.cnf",
    "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -keyout server.key -out server.csr -config server.cnf",
    "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial " .. serial
      .. " -days 2 -extfile server_ext.cnf -extensions v3_srv -out server.crt",
  }, " && ")
  local ok, out = run(cmd)
  if not ok then error("mock: certificate generation failed:\n" .. out) end
  return dir .. "/ca.pem", dir .. "/server.crt", dir .. "/server.key"
end

-- nginx.conf ------------------------------------------------------------------------

local function nginx_conf(o)
  local lines = {}
  local function add(s) lines[#lines + 1] = s end
  if o.root then add("user root root;") end
  add("worker_processes 1;")
  add("daemon on;")
  add("master_process on;")
  add("pid " .. o.prefix .. "/nginx.pid;")
  add("error_log " .. o.prefix .. "/error.log " .. (o.log_level or "warn") .. ";")
  add("worker_shutdown_timeout 1s;")
  add("load_module /usr/lib/nginx/modules/ndk_http_module.so;")
  add("load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;")
  if o.main_conf then add(o.main_conf) end
  add("events { worker_connections 1024; }")
  add("http {")
  add("  access_log off;")
  for _, t in ipairs({ "client_body", "proxy", "fastcgi", "uwsgi", "scgi" }) do
    add("  " .. t .. "_temp_path " .. o.prefix .. "/tmp/" .. t .. ";")
  end
  add("  client_max_body_size 256m;")
  add("  client_body_buffer_size 32m;")
  add("  keepalive_timeout 60s;")
  add("  keepalive_requests 100000;")
  add("  lua_socket_log_errors off;")
  add('  lua_package_path "' .. (o.lua_package_path and (o.lua_package_path .. ";") or "")
    .. HERE .. "/mock/?.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;\";")
  add('  lua_package_cpath "' .. (o.lua_package_cpath and (o.lua_package_cpath .. ";") or "")
    .. "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;/usr/local/lib/lua/5.1/?.so;;\";")
  add("  lua_shared_dict kie_mock 32m;")
  add("  lua_shared_dict kie_mock_log 64m;")
  add("  init_by_lua_block { require(\"control\").init([==[" .. o.prefix .. "/config.json]==]) }")
  add("  init_worker_by_lua_block { math.randomseed(ngx.now() * 1000 + ngx.worker.pid()) require(\"watchdog\").start() }")
  if o.http_conf then add(o.http_conf) end
  add("  server {")
  add("    listen 127.0.0.1:" .. o.port .. ";")
  for _, address in ipairs(o.listen or {}) do add("    listen " .. address .. ":" .. o.port .. ";") end
  if o.https_port then
    add("    listen 127.0.0.1:" .. o.https_port .. " ssl;")
    add("    ssl_certificate " .. o.cert .. ";")
    add("    ssl_certificate_key " .. o.key .. ";")
    add("    ssl_session_cache shared:kie_mock_ssl:1m;")
  end
  add("    server_name localhost;")
  add("    location / { content_by_lua_block { require(\"handlers\").main() } }")
  if o.server_conf then add(o.server_conf) end
  add("  }")
  add("}")
  return table.concat(lines, "\n") .. "\n"
end

-- control channel ---------------------------------------------------------------------

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- One HTTP request to the mock; returns status, body or nil, err.
local function http_call(url, method, body, timeout)
  local chunks = {}
  local headers = {}
  if body then
    headers["content-type"] = "application/json"
    headers["content-length"] = tostring(#body)
  end
  local saved = http.TIMEOUT
  http.TIMEOUT = timeout or 10
  local ok, r, status = pcall(http.request, {
    url = url, method = method, headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  })
  http.TIMEOUT = saved
  if not ok then return nil, tostring(r) end
  if not r then return nil, tostring(status) end
  return status, table.concat(chunks)
end

local Mock = {}
Mock.__index = Mock

function Mock:_call(method, path, payload)
  local status, text = http_call(self.url .. path, method, payload ~= nil and json.encode(payload) or nil, 10)
  if not status then error("mock control " .. path .. ": " .. tostring(text), 3) end
  local value, err = json.decode(text)
  if err then error("mock control " .. path .. ": bad JSON: " .. err, 3) end
  if status ~= 200 then
    error("mock control " .. path .. ": " .. tostring(type(value) == "table" and value.error or text), 3)
  end
  return value
end

local function path_query(path)
  if path == nil then return "" end
  return "?path=" .. urlencode(path)
end

function Mock:fault(spec)
  assert(type(spec) == "table" and type(spec.fault) == "string", "fault{fault = <name>, ...} expected")
  return self:_call("POST", "/_mock/fault", spec).id
end

function Mock:faults()
  return self:_call("GET", "/_mock/faults")
end

function Mock:config(changes)
  if changes == nil then return self:_call("GET", "/_mock/config") end
  assert(type(changes) == "table", "config{...} expected")
  return self:_call("POST", "/_mock/config", changes)
end

function Mock:requests(path)
  return self:_call("GET", "/_mock/requests" .. path_query(path))
end

function Mock:count(path)
  return self:_call("GET", "/_mock/count" .. path_query(path)).count
end

-- How many requests (to `path`) the account limit refused with 429.
function Mock:over_limit(path)
  local n = 0
  for _, r in ipairs(self:requests(path)) do
    if r.fault == "account_limit" then n = n + 1 end
  end
  return n
end

function Mock:connections(path)
  return self:_call("GET", "/_mock/connections" .. path_query(path)).connections
end

function Mock:callbacks()
  local list = self:_call("GET", "/_mock/callbacks")
  for _, cb in ipairs(list) do cb.json = json.decode(cb.body or "") end
  return list
end

-- Polls until at least n callbacks arrived (or timeout seconds, default 5).
function Mock:wait_callbacks(n, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  local list = self:callbacks()
  while #list < n and socket.gettime() < deadline do
    socket.sleep(0.02)
    list = self:callbacks()
  end
  return list
end

function Mock:deliveries()
  return self:_call("GET", "/_mock/deliveries")
end

function Mock:task(task_id)
  return self:_call("GET", "/_mock/task?taskId=" .. urlencode(task_id))
end

function Mock:hmac(key, message)
  return self:_call("GET", "/_mock/hmac?key=" .. urlencode(key) .. "&message=" .. urlencode(message)).signature
end

function Mock:reset()
  self:_call("POST", "/_mock/reset", {})
end

function Mock:log_tail(n)
  return tail(self.error_log, n)
end

function Mock:stop()
  if self._stopped then return end
  self._stopped = true
  local pid = self.pid or tonumber(read_file(self.prefix .. "/nginx.pid") or "")
  if pid and alive(pid) then
    local workers = child_pids(pid)
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    if not wait_gone(pid, 5) then
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      wait_gone(pid, 2)
    end
    for _, w in ipairs(workers) do
      if not wait_gone(w, 1) then
        os.execute("kill -KILL " .. w .. " 2>/dev/null")
        wait_gone(w, 1)
      end
    end
  end
  if self.prefix and self.prefix:match("/kie%-mock%.[%w]+$") then
    os.execute("rm -rf " .. shell_quote(self.prefix))
  end
end

-- The HTTP URL on `address`, one of the `listen` addresses of mock.start.
function Mock:url_at(address)
  return "http://" .. address .. ":" .. self.port
end

function Mock:running()
  return not self._stopped and self.pid ~= nil and alive(self.pid)
end

-- start ----------------------------------------------------------------------------

local SETTINGS = {   -- go to config.json (changeable later with m:config)
  api_key = "test-key", pace = 0.05, hmac_key = false, credits = 1000, cost = 1,
  status_mode = "mirror", use_message_key = false, download_url_ttl = 1200,
  callback_timeout = 15, callback_retries = 0, callback_retry_delay = 0.2,
  callback_repeat = 1, callback_ts_offset = 0, sink_status = 200, max_log_body = 65536,
  latency = false, account_limit = false,
}
local LAUNCH = {     -- launcher-only options
  https = true, watchdog = true, nginx = true, main_conf = true, http_conf = true,
  server_conf = true, lua_package_path = true, lua_package_cpath = true,
  log_level = true, start_timeout = true, listen = true,
}

local seeded = false

function M.start(opts)
  opts = opts or {}
  for k in pairs(opts) do
    if SETTINGS[k] == nil and not LAUNCH[k] then error("mock.start: unknown option " .. tostring(k), 2) end
  end
  if not seeded then
    math.randomseed(os.time() + math.floor((socket.gettime() % 1) * 1e6))
    seeded = true
  end
  local nginx = opts.nginx or find_nginx()
  local ok, out = run('mktemp -d "${TMPDIR:-/tmp}/kie-mock.XXXXXXXX"')
  local prefix = out:gsub("%s+$", "")
  if not ok or not prefix:match("/kie%-mock%.[%w]+$") then error("mock: mktemp failed: " .. out) end
  local self = setmetatable({ prefix = prefix, error_log = prefix .. "/error.log" }, Mock)

  local started = false
  local function cleanup_on_error(msg)
    if not started then self:stop() end
    error(msg, 0)
  end

  local okdirs, dout = run("mkdir -p " .. shell_quote(prefix .. "/tmp") .. " " .. shell_quote(prefix .. "/uploads"))
  if not okdirs then cleanup_on_error("mock: mkdir failed: " .. dout) end

  local owner
  if opts.watchdog ~= false then
    local p = io.popen("echo $PPID")
    owner = tonumber(p:read("*l") or "")
    p:close()
  end
  local is_root = (function()
    local okid, idout = run("id -u")
    return okid and idout:match("^%s*0%s*$") ~= nil
  end)()

  local cert, key
  if opts.https then
    local okc, a, b, c = pcall(make_certs, prefix)
    if not okc then cleanup_on_error(a) end
    self.ca_file, cert, key = a, b, c
  end

  local settings = {}
  for k, v in pairs(SETTINGS) do
    if opts[k] ~= nil then settings[k] = opts[k] else settings[k] = v end
  end
  if settings.hmac_key == false then settings.hmac_key = nil end

  local last_err
  for _ = 1, 8 do
    local port = free_port()
    local https_port = opts.https and free_port() or nil
    if https_port == port then https_port = free_port() end
    settings.port, settings.https_port = port, https_port
    settings.prefix, settings.owner_pid = prefix, owner
    write_file(prefix .. "/config.json", json.encode(settings))
    write_file(prefix .. "/nginx.conf", nginx_conf({
      prefix = prefix, root = is_root, port = port, https_port = https_port, listen = opts.listen,
      cert = cert, key = key, log_level = opts.log_level,
      main_conf = opts.main_conf, http_conf = opts.http_conf, server_conf = opts.server_conf,
      lua_package_path = opts.lua_package_path, lua_package_cpath = opts.lua_package_cpath,
    }))
    os.remove(prefix .. "/nginx.pid")
    local okn, nout = run(shell_quote(nginx) .. " -p " .. shell_quote(prefix .. "/")
      .. " -c " .. shell_quote(prefix .. "/nginx.conf") .. " -e " .. shell_quote(prefix .. "/error.log")
      .. " </dev/null >" .. shell_quote(prefix .. "/start.log") .. " 2>&1")
    local start_log = read_file(prefix .. "/start.log") or ""
    if okn then
      self.port, self.https_port = port, https_port
      self.url = "http://127.0.0.1:" .. port
      if https_port then self.https_url = "https://127.0.0.1:" .. https_port end
      break
    end
    last_err = nout .. start_log .. "\n" .. tail(prefix .. "/error.log", 20)
    if not last_err:find("Address already in use", 1, true) then
      cleanup_on_error("mock: nginx failed to start:\n" .. last_err)
    end
  end
  if not self.url then cleanup_on_error("mock: no free port after 8 tries:\n" .. tostring(last_err)) end

  -- wait for the pid file and the first answer
  local deadline = socket.gettime() + (opts.start_timeout or 10)
  while true do
    self.pid = self.pid or tonumber(read_file(prefix .. "/nginx.pid") or "")
    if self.pid then
      local st, text = http_call(self.url .. "/_mock/ping", "GET", nil, 1)
      if st == 200 and text:find('"ok"', 1, true) then break end
    end
    if socket.gettime() > deadline then
      cleanup_on_error("mock: nginx did not answer in time; error_log tail:\n" .. tail(self.error_log, 30))
    end
    socket.sleep(0.02)
  end
  started = true

  -- stop nginx when this object is collected or the Lua state closes
  local me = self
  if newproxy then   -- Lua 5.1 / LuaJIT: only userdata get __gc
    local proxy = newproxy(true)
    getmetatable(proxy).__gc = function() me:stop() end
    self._gc = proxy
  else
    self._gc = setmetatable({}, { __gc = function() me:stop() end })
  end
  return self
end

return M
