-- The benchmark driver behind `make bench` (see bench/README.md). Run from the
-- repository root with lua5.4 (needs LuaSocket); bench/run.sh builds first.
--
-- One nginx on 127.0.0.1 answers createTask and recordInfo with fixed bodies
-- (`return 200 '...'`, no Lua) over HTTP and HTTPS (a CA and certificate are made
-- with openssl now). Every row runs the same job; each is run BENCH_RUNS times
-- unpinned, then BENCH_RUNS times with client and nginx pinned to CPU 0, and the
-- median is reported. Then: callgrind instructions per round trip, step(0) frame
-- times, RSS over 100k calls. Prints a table and writes bench/RESULTS.md.
--
-- Environment (all optional):
--   BENCH_N=2000        sequential round trips (create + get) for the fast clients
--   BENCH_SLOW_N=500    round trips for Python requests and Node fetch
--   BENCH_CONC_N=1000   creates in the concurrent rows, BENCH_INFLIGHT=32 in flight
--   BENCH_RUNS=5        runs per row and mode (median)
--   BENCH_WRK_SECONDS=3 duration of each wrk run
--   BENCH_MODES="unpinned pinned"
--   BENCH_ONLY=lua-pattern   only rows whose id matches (e.g. "^ours")
--   BENCH_EXTRAS=1      callgrind / step / rss measurements (0 to skip)
--   BENCH_RSS_CALLS=100000
--   BENCH_CPATH=./build/bench-lua5.4/?.so   the kie.core under test
--   BENCH_OUT=bench/RESULTS.md
--   BENCH_SERVE=1       only start the nginx, print its URLs and CA, serve until killed
local socket = require "socket"
local http = require "socket.http"

local bodies = dofile("bench/bodies.lua")

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local N = tonumber(env("BENCH_N", "2000"))
local SLOW_N = tonumber(env("BENCH_SLOW_N", "500"))
local CONC_N = tonumber(env("BENCH_CONC_N", "1000"))
local INFLIGHT = tonumber(env("BENCH_INFLIGHT", "32"))
local RUNS = tonumber(env("BENCH_RUNS", "5"))
local WRK_SECONDS = tonumber(env("BENCH_WRK_SECONDS", "3"))
local MODES = {}
for m in env("BENCH_MODES", "unpinned pinned"):gmatch("%S+") do MODES[#MODES + 1] = m end
local ONLY = env("BENCH_ONLY", nil)
local EXTRAS = env("BENCH_EXTRAS", "1") ~= "0"
local RSS_CALLS = tonumber(env("BENCH_RSS_CALLS", "100000"))
local CPATH = env("BENCH_CPATH", "./build/bench-lua5.4/?.so")
local OUT = env("BENCH_OUT", "bench/RESULTS.md")

-- shell helpers -----------------------------------------------------------------

local util = dofile("spec/support/util.lua")
-- sh(cmd) -> ok, output (stdout + stderr), exit code
local q, sh, read_file, write_file = util.quote, util.run, util.read_file, util.write_file

local function must(cmd)
  local ok, out = sh(cmd)
  if not ok then error("command failed: " .. cmd .. "\n" .. out, 2) end
  return out
end

local function have(cmd) return (sh("command -v " .. cmd .. " >/dev/null")) end


local function median(list)
  local t = {}
  for i, v in ipairs(list) do t[i] = v end
  table.sort(t)
  local n = #t
  if n == 0 then return nil end
  if n % 2 == 1 then return t[(n + 1) / 2] end
  return (t[n / 2] + t[n / 2 + 1]) / 2
end

local function log(...)
  io.stderr:write(table.concat({ ... }), "\n")
end

-- the static nginx ----------------------------------------------------------------

local NPROC = tonumber((must("nproc"):match("%d+"))) or 1
local dir = must('mktemp -d "${TMPDIR:-/tmp}/kie-bench.XXXXXXXX"'):gsub("%s+$", "")
assert(dir:match("/kie%-bench%.[%w]+$"), "mktemp failed")

local free_port = util.free_port

local function nginx_string(s)
  assert(not s:find("%$"), "a body must not contain $ (nginx variables)")
  return "'" .. s:gsub("\\", "\\\\"):gsub("'", "\\'") .. "'"
end

local function make_certs()
  write_file(dir .. "/ca.cnf", "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n"
    .. "[dn]\nCN = lua-kie bench CA\n[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
    .. "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n")
  write_file(dir .. "/srv.cnf", "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n")
  write_file(dir .. "/srv_ext.cnf", "[v3_srv]\nbasicConstraints = CA:FALSE\n"
    .. "keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n"
    .. "subjectAltName = IP:127.0.0.1,DNS:localhost\nsubjectKeyIdentifier = hash\n"
    .. "authorityKeyIdentifier = keyid\n")
  must("cd " .. q(dir) .. " && openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
    .. " -nodes -keyout ca.key -out ca.pem -days 2 -config ca.cnf"
    .. " && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    .. " -keyout srv.key -out srv.csr -config srv.cnf"
    .. " && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
    .. " -extfile srv_ext.cnf -extensions v3_srv -out srv.crt")
  return dir .. "/ca.pem"
end

local CA = make_certs()
local PORT, TLS_PORT = free_port(), free_port()
local URL = "http://127.0.0.1:" .. PORT
local TLS_URL = "https://127.0.0.1:" .. TLS_PORT

local conf = table.concat({
  "worker_processes 1;",
  "daemon on;",
  "pid " .. dir .. "/nginx.pid;",
  "error_log " .. dir .. "/error.log warn;",
  "events { worker_connections 4096; }",
  "http {",
  "  access_log off;",
  "  keepalive_requests 100000000;",
  "  keepalive_timeout 120s;",
  "  client_body_temp_path " .. dir .. "/body;",
  "  proxy_temp_path " .. dir .. "/proxy;",
  "  fastcgi_temp_path " .. dir .. "/fastcgi;",
  "  uwsgi_temp_path " .. dir .. "/uwsgi;",
  "  scgi_temp_path " .. dir .. "/scgi;",
  "  ssl_session_cache shared:bench:1m;",
  "  server {",
  "    listen 127.0.0.1:" .. PORT .. ";",
  "    listen 127.0.0.1:" .. TLS_PORT .. " ssl;",
  "    ssl_certificate " .. dir .. "/srv.crt;",
  "    ssl_certificate_key " .. dir .. "/srv.key;",
  "    location = /api/v1/jobs/createTask { default_type application/json; return 200 "
    .. nginx_string(bodies.CREATE_RESPONSE) .. "; }",
  "    location = /api/v1/jobs/recordInfo { default_type application/json; return 200 "
    .. nginx_string(bodies.RECORD_RESPONSE) .. "; }",
  "    location = /nginx_status { stub_status; }",
  "    location / { return 404; }",
  "  }",
  "}",
}, "\n") .. "\n"
write_file(dir .. "/nginx.conf", conf)
write_file(dir .. "/request.json", bodies.REQUEST_JSON)
local REQ_FILE = dir .. "/request.json"

local nginx_pid
local function stop_nginx()
  if nginx_pid then
    os.execute("kill -QUIT " .. nginx_pid .. " 2>/dev/null")
    for _ = 1, 100 do
      if not read_file("/proc/" .. nginx_pid .. "/stat") then break end
      socket.sleep(0.02)
    end
    nginx_pid = nil
  end
  if dir:match("/kie%-bench%.[%w]+$") then os.execute("rm -rf " .. q(dir)) end
end

local function start_nginx()
  must("nginx -p " .. q(dir .. "/") .. " -c " .. q(dir .. "/nginx.conf") .. " -e " .. q(dir .. "/error.log"))
  for _ = 1, 200 do
    nginx_pid = tonumber(read_file(dir .. "/nginx.pid") or "")
    if nginx_pid then
      local body = http.request(URL .. "/nginx_status")
      if body and body:find("accepts") then return end
    end
    socket.sleep(0.02)
  end
  error("bench: nginx did not start:\n" .. (read_file(dir .. "/error.log") or ""))
end

-- connections accepted so far (the probe itself is one of them)
local function accepts()
  local body = assert(http.request(URL .. "/nginx_status"))
  return tonumber(body:match("\n%s*(%d+)%s+%d+%s+%d+"))
end

local function nginx_pids()
  local pids = { nginx_pid }
  local ok, out = sh("ps -o pid= --ppid " .. nginx_pid)
  if ok then for p in out:gmatch("%d+") do pids[#pids + 1] = p end end
  return pids
end

local function pin_nginx(cpus)
  for _, p in ipairs(nginx_pids()) do must("taskset -a -p -c " .. cpus .. " " .. p .. " >/dev/null") end
end

-- rows ----------------------------------------------------------------------------

local REQ_ARG = q(bodies.REQUEST_JSON)
local LUA54 = "env BENCH_CPATH=" .. q(CPATH) .. " lua5.4"
local LUAJIT_CPATH = env("BENCH_LUAJIT_CPATH", nil)
local LUAJIT = LUAJIT_CPATH and ("env BENCH_CPATH=" .. q(LUAJIT_CPATH) .. " luajit")

-- kind: "inproc" (client prints requests= seconds=), "wrk"
-- group: which "ours" row the ratio is taken against
local ROWS = {
  { id = "ours-seq", group = "seq", ours = true, what = "lua-kie `kie.new` client: create_task + get_task",
    cmd = LUA54 .. " bench/clients/ours.lua seq " .. URL .. " " .. N },
  { id = "ours-core-seq", group = "seq", what = "lua-kie `kie.core` directly: create_task + get_task",
    cmd = LUA54 .. " bench/clients/ours.lua seq-core " .. URL .. " " .. N },
  { id = "lua-curl", group = "seq", what = "Debian lua-curl (Lua 5.1), one easy handle, lua-cjson",
    need = "lua5.1", probe = "lua5.1 -e 'require \"curl\"; require \"cjson\"; require \"socket\"'",
    cmd = "lua5.1 bench/clients/luacurl.lua " .. URL .. " " .. N },
  { id = "luasocket-keepalive", group = "seq", what = "LuaSocket raw HTTP/1.1 on one kept-alive socket + lua-cjson",
    probe = "lua5.4 -e 'require \"socket\"; require \"cjson\"'",
    cmd = "lua5.4 bench/clients/luasocket.lua keepalive " .. URL .. " " .. N },
  { id = "luasocket-http", group = "seq", what = "LuaSocket socket.http (no keep-alive: a connection per request) + lua-cjson",
    probe = "lua5.4 -e 'require \"socket.http\"; require \"cjson\"'",
    cmd = "lua5.4 bench/clients/luasocket.lua http " .. URL .. " " .. SLOW_N },
  { id = "curl-cli-seq", group = "seq", what = "curl CLI, one process, -K config of all requests (no JSON decoding; wall time incl. start-up)",
    need = "curl", cmd = "sh bench/clients/curl_cli.sh seq " .. URL .. " " .. N .. " " .. q(REQ_FILE) },
  { id = "python-requests", group = "seq", what = "Python requests.Session",
    need = "python3", probe = "python3 -c 'import requests'",
    cmd = "python3 bench/clients/requests_seq.py " .. URL .. " " .. SLOW_N .. " '' " .. REQ_ARG },
  { id = "node-fetch-seq", group = "seq", what = "Node built-in fetch (undici, keep-alive)",
    need = "node", cmd = "node bench/clients/node_fetch.mjs seq " .. URL .. " " .. SLOW_N .. " " .. REQ_ARG },
  { id = "wrk-c1", group = "seq", what = "wrk -c1 (ceiling): POST createTask / GET recordInfo alternating, no decoding",
    need = "wrk", kind = "wrk", conns = 1,
    cmd = "wrk -t1 -c1 -d" .. WRK_SECONDS .. "s -s bench/clients/wrk_seq.lua " .. URL },

  { id = "ours-conc", group = "conc", ours = true, what = "lua-kie `kie.new`: create_task_async, " .. INFLIGHT .. " in flight, client:step",
    cmd = LUA54 .. " bench/clients/ours.lua conc " .. URL .. " " .. CONC_N .. " " .. INFLIGHT },
  { id = "ours-core-conc", group = "conc", what = "lua-kie `kie.core`: create_task_start/step/result, " .. INFLIGHT .. " in flight",
    cmd = LUA54 .. " bench/clients/ours.lua conc-core " .. URL .. " " .. CONC_N .. " " .. INFLIGHT },
  { id = "curl-cli-parallel", group = "conc", what = "curl CLI --parallel --parallel-max " .. INFLIGHT .. " (wall time incl. start-up)",
    need = "curl", cmd = "sh bench/clients/curl_cli.sh conc " .. URL .. " " .. CONC_N .. " " .. q(REQ_FILE) .. " " .. INFLIGHT },
  { id = "node-fetch-conc", group = "conc", what = "Node fetch, " .. INFLIGHT .. " promises in flight",
    need = "node", cmd = "node bench/clients/node_fetch.mjs conc " .. URL .. " " .. CONC_N .. " " .. REQ_ARG .. " " .. INFLIGHT },
  { id = "wrk-c32", group = "conc", what = "wrk -c" .. INFLIGHT .. " (ceiling): POST createTask",
    need = "wrk", kind = "wrk", conns = INFLIGHT,
    cmd = "wrk -t1 -c" .. INFLIGHT .. " -d" .. WRK_SECONDS .. "s -s bench/clients/wrk_post.lua " .. URL },

  { id = "ours-https", group = "https", ours = true, what = "lua-kie `kie.new` over HTTPS (verification on, ca_file)",
    cmd = LUA54 .. " bench/clients/ours.lua seq " .. TLS_URL .. " " .. N .. " 0 " .. q(CA) },
  { id = "ours-core-https", group = "https", what = "lua-kie `kie.core` over HTTPS",
    cmd = LUA54 .. " bench/clients/ours.lua seq-core " .. TLS_URL .. " " .. N .. " 0 " .. q(CA) },
  { id = "lua-curl-https", group = "https", what = "Debian lua-curl over HTTPS (its libcurl is the GnuTLS build)",
    need = "lua5.1", probe = "lua5.1 -e 'require \"curl\"; require \"cjson\"; require \"socket\"'",
    cmd = "lua5.1 bench/clients/luacurl.lua " .. TLS_URL .. " " .. N .. " " .. q(CA) },
  { id = "curl-cli-https", group = "https", what = "curl CLI over HTTPS (--cacert)",
    need = "curl", cmd = "sh bench/clients/curl_cli.sh seq " .. TLS_URL .. " " .. N .. " " .. q(REQ_FILE) .. " " .. q(CA) },
  { id = "python-requests-https", group = "https", what = "Python requests.Session over HTTPS (verify=CA)",
    need = "python3", probe = "python3 -c 'import requests'",
    cmd = "python3 bench/clients/requests_seq.py " .. TLS_URL .. " " .. SLOW_N .. " " .. q(CA) .. " " .. REQ_ARG },
  { id = "node-fetch-https", group = "https", what = "Node fetch over HTTPS (NODE_EXTRA_CA_CERTS)",
    need = "node", cmd = "env NODE_EXTRA_CA_CERTS=" .. q(CA) .. " node bench/clients/node_fetch.mjs seq " .. TLS_URL .. " " .. SLOW_N .. " " .. REQ_ARG },
  { id = "wrk-c1-https", group = "https", what = "wrk -c1 over HTTPS (ceiling; no verification)",
    need = "wrk", kind = "wrk", conns = 1,
    cmd = "wrk -t1 -c1 -d" .. WRK_SECONDS .. "s -s bench/clients/wrk_seq.lua " .. TLS_URL },
}

-- Runs one row once; returns {rps, rss_kib, conns} or nil, why.
local function run_once(row, pinned)
  local rssf = dir .. "/rss.txt"
  os.remove(rssf)
  local prefix = (pinned and "taskset -c 0 " or "") .. "/usr/bin/time -f %M -o " .. q(rssf) .. " "
  local envs = "env BENCH_BODY=" .. REQ_ARG .. " BENCH_KEY=" .. bodies.API_KEY
    .. " BENCH_GET_PATH=" .. q(bodies.GET_PATH) .. " "
  local a0 = accepts()
  local ok, out = sh(prefix .. envs .. row.cmd)
  local a1 = accepts()
  if not ok then return nil, out end
  local rps
  if row.kind == "wrk" then
    rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
    local errs = out:match("Non%-2xx or 3xx responses:%s*(%d+)") or out:match("Socket errors:[^\n]*")
    if errs then return nil, "wrk reported errors: " .. out end
  else
    local n, s = out:match("requests=(%d+) seconds=([%d%.]+)")
    if n then rps = tonumber(n) / tonumber(s) end
  end
  if not rps then return nil, "no figure in output:\n" .. out end
  local rss = tonumber((read_file(rssf) or ""):match("(%d+)%s*$"))
  return { rps = rps, rss = rss, conns = a1 - a0 - 1 }
end

local function available(row)
  if row.need and not have(row.need) then return false, row.need .. " not installed" end
  local first = row.cmd:match("^(%S+)")
  if first ~= "env" and first ~= "sh" and not have(first) then return false, first .. " not installed" end
  if row.probe then
    local ok, out = sh(row.probe)
    if not ok then return false, (out:match("[^\n]*module '([^']+)' not found") or out:match("[^\n]+") or "probe failed") end
  end
  return true
end

-- machine ---------------------------------------------------------------------------

local function first_line(cmd)
  local ok, out = sh(cmd)
  if not ok then return "n/a" end
  return (out:match("[^\n]+") or "n/a"):gsub("%s+$", "")
end

local function machine()
  local cpu = (read_file("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "?"
  local m = {
    { "date", first_line("date -u +%Y-%m-%dT%H:%M:%SZ") },
    { "nproc", tostring(NPROC) },
    { "CPU", cpu },
    { "kernel", first_line("uname -sr") },
    { "memory", first_line("free -h | awk '/^Mem:/ {print $2}'") },
    { "load average at start", first_line("cat /proc/loadavg") },
    { "lua", first_line("lua5.4 -v") },
    { "kie.core", first_line(LUA54 .. " -e 'package.cpath=os.getenv(\"BENCH_CPATH\")..\";\"..package.cpath;"
      .. " local c=require\"kie.core\"; print(c._VERSION..\" (libcurl \"..c.curl_version..\", \"..c.ssl_version..\")\")'") },
    { "nginx", first_line("nginx -v") },
    { "wrk", first_line("wrk -v 2>&1 | head -1") },
    { "lua-curl", first_line("dpkg-query -W -f '${Version} (libcurl3-gnutls ' lua-curl && dpkg-query -W -f '${Version})' libcurl3-gnutls") },
    { "curl", first_line("curl --version") },
    { "python", first_line("python3 -c 'import sys, requests; print(sys.version.split()[0], \"requests\", requests.__version__)'") },
    { "node", first_line("node --version") },
    { "LuaSocket", first_line("lua5.4 -e 'print(require\"socket\"._VERSION)'") },
  }
  return m
end

-- extras ------------------------------------------------------------------------------

local function callgrind_total(file)
  local s = read_file(file) or ""
  return tonumber(s:match("\ntotals:%s*(%d+)") or s:match("\nsummary:%s*(%d+)"))
end

local function callgrind_ir(mode, n)
  local file = dir .. "/cg." .. mode .. "." .. n
  -- env before valgrind: valgrind does not follow an exec (env -> lua5.4) by default
  local ok, out = sh("env BENCH_CPATH=" .. q(CPATH) .. " valgrind --tool=callgrind --callgrind-out-file=" .. q(file)
    .. " lua5.4 bench/clients/ours.lua " .. mode .. " " .. URL .. " " .. n)
  if not ok then return nil, out end
  return callgrind_total(file), file
end

local function extras()
  local x = {}
  if have("valgrind") then
    for _, mode in ipairs({ "seq", "seq-core" }) do
      local lo, hi = 200, 1200
      local a, fa = callgrind_ir(mode, lo)
      local b, fb = callgrind_ir(mode, hi)
      if a and b then
        x["ir_" .. mode] = (b - a) / (hi - lo)
        local function lines_of(text)
          local t = {}
          for line in (text .. "\n"):gmatch("([^\n]*)\n") do t[#t + 1] = line end
          return t
        end
        local ok, ann = sh("callgrind_annotate --threshold=99 " .. q(fb))
        if ok then
          local top, started = {}, false
          for _, line in ipairs(lines_of(ann)) do
            if line:match("file:function") then
              started = true
            elseif started and line:match("^%s*[%d,]+ %(") then
              if #top < 16 then top[#top + 1] = (line:gsub("%[/[^%]]*/([^/%]]+)%]", "[%1]")) end
            elseif started and #top > 0 and not line:match("%S") then
              break
            end
          end
          x["top_" .. mode] = top
        end
        -- inclusive cost of the main pieces, per round trip (the largest entry of each name)
        local ok2, inc = sh("callgrind_annotate --inclusive=yes --threshold=100 " .. q(fb))
        if ok2 then
          local best = {}
          local names = { "curl_multi_socket_action", "curl_multi_add_handle", "curl_multi_remove_handle",
            "curl_easy_setopt", "kie_xfer_start", "kie_events_wait", "kie_json_encode", "kie_push_response",
            "kie_json_decode", "kie_decode_task" }
          for _, line in ipairs(lines_of(inc)) do
            local ir, where = line:match("^%s*([%d,]+) %([^)]*%)%s+(%S+)")
            if ir then
              local fn = where:match(":([%w_]+)'?%d*$") or where:match("^([%w_]+)$")
              for _, want in ipairs(names) do
                if fn == want then
                  local v = tonumber((ir:gsub(",", "")))
                  if not best[want] or v > best[want] then best[want] = v end
                end
              end
            end
          end
          local parts = {}
          for _, want in ipairs(names) do
            if best[want] then parts[#parts + 1] = string.format("%s %.0f", want, best[want] / hi) end
          end
          x["parts_" .. mode] = parts
        end
        log("callgrind ", mode, ": ", string.format("%.0f", x["ir_" .. mode]), " instructions per round trip")
      else
        log("callgrind ", mode, " failed: ", tostring(fa or fb))
      end
    end
  end
  x.step = {}
  -- {frame_ms, layer, inflight, budget_ms ("" = the layer's default), GC, luajit}
  local rows = { { 0, "client" }, { 0, "client", 100, "", "off" }, { 0, "core" }, { 0, "core", 100, 0.1 },
    { 1, "client" }, { 16, "client" }, { 0, "client", 10 } }
  if LUAJIT then
    rows[#rows + 1] = { 0, "client", 100, "", "on", true }
    rows[#rows + 1] = { 16, "client", 100, "", "on", true }
  end
  for _, v in ipairs(rows) do
    local inflight = v[3] or 100
    local ok, out = sh((v[6] and LUAJIT or LUA54) .. " bench/step.lua " .. URL .. " 3000 " .. inflight .. " "
      .. v[1] .. " " .. v[2] .. " " .. (v[4] or "''") .. " " .. (v[5] or "on"))
    local row = { frame_ms = v[1], layer = v[2], inflight = inflight, budget = v[4], gc = v[5], luajit = v[6] }
    if ok then
      for k, val in out:gmatch("([%w_]+)=([%d%.]+)") do row[k] = tonumber(val) end
    else
      row.error = out
    end
    x.step[#x.step + 1] = row
    log("step(0) ", v[6] and "luajit " or "", v[2], " frame_ms=", v[1], " inflight=", inflight, ": ",
      (out:gsub("\n", " ")))
  end
  local ok, out = sh(LUA54 .. " bench/rss.lua " .. URL .. " " .. RSS_CALLS)
  x.rss = {}
  if ok then
    for k, val in out:gmatch("([%w_]+)=([%d%.]+)") do x.rss[k] = tonumber(val) end
    x.rss.detail = {}
    for line in out:gmatch("rss: ([^\n]+)") do x.rss.detail[#x.rss.detail + 1] = line end
  else
    x.rss.error = out
  end
  log("rss: ", (out:gsub("\n", " ")))
  return x
end

-- report --------------------------------------------------------------------------------

local function fmt(v, f)
  if v == nil then return "n/a" end
  return string.format(f or "%.0f", v)
end

local function report(results, x, mach, load_end, elapsed)
  local lines = {}
  local function add(s) lines[#lines + 1] = s end
  local ours = {}
  for _, row in ipairs(ROWS) do
    if row.ours and results[row.id] then ours[row.group] = results[row.id] end
  end
  add("# lua-kie benchmark results")
  add("")
  add("Generated by `make bench` (bench/run.lua). Same job for every row: POST createTask with the")
  add("published ideogram/character body, then GET recordInfo of a finished task whose `param` and")
  add("`resultJson` are JSON strings (decoded by every client except curl and wrk), against one")
  add("nginx (1 worker, static `return 200` answers) on 127.0.0.1. req/s counts HTTP requests")
  add("(a round trip is 2). Each figure is the median of " .. RUNS .. " runs. *Pinned*: client and nginx")
  add("both on CPU 0 (`taskset -c 0`). Ratio = lua-kie `kie.new` row of the same group / this row.")
  add("RSS = peak resident set of the client process (`/usr/bin/time -f %M`), unpinned run.")
  add("Conns = TCP connections the client opened (nginx stub_status accepts), unpinned run.")
  add("")
  add("## Machine")
  add("")
  for _, kv in ipairs(mach) do add("* " .. kv[1] .. ": " .. kv[2]) end
  add("* load average at end: " .. load_end)
  add(string.format("* total bench time: %.0f s", elapsed))
  add("")
  local groups = { { "seq", "Sequential (one connection, create + get)" },
    { "conc", "Concurrent (" .. CONC_N .. " creates, " .. INFLIGHT .. " in flight)" },
    { "https", "Sequential over HTTPS (verification on)" } }
  for _, g in ipairs(groups) do
    add("## " .. g[2])
    add("")
    add("| row | req/s unpinned | req/s pinned | peak RSS MiB | conns | ours/row unpinned | ours/row pinned | what |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for _, row in ipairs(ROWS) do
      if row.group == g[1] then
        local r = results[row.id]
        if r and r.skipped then
          add("| " .. row.id .. " | skipped | | | | | | " .. row.what .. " (" .. r.skipped .. ") |")
        elseif r then
          local o = ours[g[1]]
          local ru, rp = r.unpinned, r.pinned
          local ou, op = o and o.unpinned, o and o.pinned
          add(string.format("| %s | %s | %s | %s | %s | %s | %s | %s |", row.id,
            fmt(ru and ru.rps), fmt(rp and rp.rps),
            fmt(ru and ru.rss and ru.rss / 1024, "%.1f"), fmt(ru and ru.conns),
            (ou and ru and ou.rps and ru.rps) and string.format("%.2f", ou.rps / ru.rps) or "n/a",
            (op and rp and op.rps and rp.rps) and string.format("%.2f", op.rps / rp.rps) or "n/a",
            row.what .. ((r.failed and (" — FAILED: " .. r.failed)) or "")))
        end
      end
    end
    add("")
  end
  if x then
    add("## CPU, frame time, memory")
    add("")
    if x.ir_seq then
      add(string.format("* callgrind instructions per sequential create+get round trip (user space, whole process;"
        .. " (Ir(1200) - Ir(200)) / 1000): `kie.new` **%.0f**, `kie.core` **%.0f**", x.ir_seq, x["ir_seq-core"] or 0))
    end
    for _, s in ipairs(x.step or {}) do
      if s.error then
        add("* step(0) " .. s.layer .. " frame_ms=" .. s.frame_ms .. " inflight=" .. s.inflight .. ": failed")
      else
        local budget = (s.budget == nil or s.budget == "") and (s.layer == "client" and "default budget 0.2 ms"
          or "no budget") or ("budget " .. s.budget .. " ms")
        add(string.format("* step(0), %s%s layer, %s%s, %d get_task in flight, %s: median %.3f ms, p99 **%.3f ms**,"
          .. " max %.3f ms over %d frames (%.1f µs per finished transfer%s; the call that starts one: %.1f µs)",
          s.luajit and "**LuaJIT**, " or "", s.layer, budget, s.gc == "off" and ", Lua GC stopped" or "", s.inflight,
          s.frame_ms == 0 and "frames back to back" or (s.frame_ms .. " ms sleep between frames"),
          s.median_ms or 0, s.p99_ms or 0, s.max_ms or 0, s.frames or 0, s.per_done_us or 0,
          (s.perform_us and s.perform_us > 0) and string.format(", of which %.1f in libcurl", s.perform_us) or "",
          s.start_us or 0))
      end
    end
    if x.rss and x.rss.rss_1k_kib then
      add(string.format("* RSS after 1k sequential calls %d KiB, after %d calls %d KiB: growth **%d KiB**"
        .. " (of which anonymous, i.e. not shared-library pages: %d → %d KiB; Lua heap %d → %d KiB)",
        x.rss.rss_1k_kib, x.rss.calls, x.rss.rss_end_kib, x.rss.growth_kib, x.rss.anon_1k_kib or 0,
        x.rss.anon_end_kib or 0, x.rss.heap_1k_kib, x.rss.heap_end_kib))
    end
    add("")
    for _, mode in ipairs({ "seq", "seq-core" }) do
      local top = x["top_" .. mode]
      local parts = x["parts_" .. mode]
      if parts and #parts > 0 then
        add("Inclusive instructions per round trip (callgrind, " .. mode .. "): " .. table.concat(parts, ", ") .. ".")
        add("")
      end
      if top and #top > 0 then
        add("Top functions by instructions (callgrind, " .. mode .. ", 1200 round trips, exclusive):")
        add("")
        add("```")
        for _, l in ipairs(top) do add(l) end
        add("```")
        add("")
      end
    end
  end
  -- targets
  add("## Targets")
  add("")
  local function r(id, mode) local t = results[id]; return t and t[mode] end
  local function ratio(a, b, mode)
    local ra, rb = r(a, mode), r(b, mode)
    if ra and rb and ra.rps and rb.rps then return ra.rps / rb.rps end
  end
  local function target(text, value, ok_fn, f)
    local verdict = value == nil and "n/a" or (ok_fn(value) and "met" or "MISSED")
    add(string.format("* %s: %s — %s", text, value == nil and "n/a" or string.format(f or "%.2f", value), verdict))
  end
  for _, who in ipairs({ { "ours-seq", "ours-conc", "ours-https", "`kie.new`" },
                         { "ours-core-seq", "ours-core-conc", "ours-core-https", "`kie.core`" } }) do
    add("With " .. who[4] .. ":")
    add("")
    target("sequential pinned ≥ 1.3× lua-curl", ratio(who[1], "lua-curl", "pinned"), function(v) return v >= 1.3 end)
    target("sequential pinned ≥ 15× Python requests", ratio(who[1], "python-requests", "pinned"), function(v) return v >= 15 end)
    target("sequential unpinned ≥ 0.9× wrk -c1", ratio(who[1], "wrk-c1", "unpinned"), function(v) return v >= 0.9 end)
    target("concurrent unpinned ≥ 2.5× curl --parallel", ratio(who[2], "curl-cli-parallel", "unpinned"), function(v) return v >= 2.5 end)
    target("concurrent pinned ≥ 2.5× curl --parallel", ratio(who[2], "curl-cli-parallel", "pinned"), function(v) return v >= 2.5 end)
    target("HTTPS pinned ≥ 1.3× lua-curl", ratio(who[3], "lua-curl-https", "pinned"), function(v) return v >= 1.3 end)
    local h = r(who[3], "unpinned")
    target("HTTPS: TLS handshakes (connections) per run = 1", h and h.conns, function(v) return v == 1 end, "%d")
    local s = r(who[1], "unpinned")
    target("peak RSS sequential < 12 MiB", s and s.rss and s.rss / 1024, function(v) return v < 12 end, "%.1f MiB")
    add("")
  end
  if x then
    target("RSS growth 1k → " .. RSS_CALLS .. " calls < 1 MiB", x.rss and x.rss.growth_kib and x.rss.growth_kib / 1024,
      function(v) return v < 1 end, "%.2f MiB")
    local s0 = x.step and x.step[1]
    target("step(0) p99 < 0.3 ms (kie.new, 100 in flight, frames back to back)", s0 and s0.p99_ms,
      function(v) return v < 0.3 end, "%.3f ms")
    for _, sj in ipairs(x.step or {}) do
      if sj.luajit and sj.frame_ms == 0 then
        target("step(0) p99 < 0.3 ms, the same under LuaJIT (LÖVE, Defold)", sj.p99_ms,
          function(v) return v < 0.3 end, "%.3f ms")
      end
    end
    add("")
  end
  return table.concat(lines, "\n") .. "\n"
end

-- main ----------------------------------------------------------------------------------

local function main()
  local t_start = socket.gettime()
  local mach = machine()
  start_nginx()
  if env("BENCH_SERVE", "0") == "1" then
    print(URL .. " " .. TLS_URL .. " " .. CA)
    io.stdout:flush()
    -- short sleeps: LuaSocket resumes a sleep that a signal interrupts, so Ctrl-C
    -- (which Lua turns into an error at the next instruction) needs them
    local ok = pcall(function() while true do socket.sleep(0.2) end end)
    stop_nginx()
    return ok
  end
  local results = {}
  for _, row in ipairs(ROWS) do
    if not ONLY or row.id:match(ONLY) then
      local ok, why = available(row)
      if not ok then
        results[row.id] = { skipped = why }
        log("skip ", row.id, ": ", why)
      else
        results[row.id] = {}
      end
    end
  end
  for _, mode in ipairs(MODES) do
    local pinned = mode == "pinned"
    pin_nginx(pinned and "0" or ("0-" .. (NPROC - 1)))
    for _, row in ipairs(ROWS) do
      local res = results[row.id]
      if res and not res.skipped then
        local rps, rss, conns = {}, {}, {}
        for i = 1, RUNS do
          local r, why = run_once(row, pinned)
          if not r then
            res.failed = (why or "?"):gsub("\n", " "):sub(1, 300)
            log("FAILED ", row.id, " (", mode, "): ", why)
            break
          end
          rps[i], rss[i], conns[i] = r.rps, r.rss, r.conns
        end
        if #rps > 0 then
          local c = conns[1]
          for _, v in ipairs(conns) do if v > c then c = v end end
          local peak
          for _, v in ipairs(rss) do if not peak or v > peak then peak = v end end
          res[mode] = { rps = median(rps), rss = peak, conns = c, all = rps }
          local all = {}
          for i, v in ipairs(rps) do all[i] = string.format("%.0f", v) end
          log(string.format("%-22s %-8s %9.0f req/s  rss %5.1f MiB  conns %d  (runs: %s)", row.id, mode,
            res[mode].rps, (peak or 0) / 1024, c, table.concat(all, " ")))
        end
      end
    end
  end
  pin_nginx("0-" .. (NPROC - 1))
  local x = EXTRAS and extras() or nil
  local load_end = first_line("cat /proc/loadavg")
  local text = report(results, x, mach, load_end, socket.gettime() - t_start)
  io.stdout:write(text)
  write_file(OUT, text)
  log("wrote ", OUT)
end

local ok, err = xpcall(main, debug.traceback)
stop_nginx()
if not ok then
  io.stderr:write("bench: ", tostring(err), "\n")
  os.exit(1)
end
