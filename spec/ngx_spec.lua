-- kie.ngx inside a real nginx: client:run through ngx.run_worker_thread, proof that
-- the event loop is never blocked, typed errors, and the example callback receiver.
-- Run from the repo root:  busted --lua=lua5.4 spec/ngx_spec.lua
--
-- Two nginx instances, both on 127.0.0.1 only:
--  * the mock kie.ai server (spec/support/mock.lua), started with extra config so that
--    the same single worker process also hosts test locations (/t/*) that use kie.ngx
--    against the mock's own API: a kie.ngx that blocked the event loop would stall the
--    very server it waits for;
--  * examples/openresty/nginx.conf itself, copied to a temp prefix with its port and
--    repository path substituted, talking to the mock.
-- Needs nginx + libnginx-mod-http-lua and the LuaJIT build of kie.core
-- (build/luajit/kie/core.so; `make build LUA=luajit` is run first, a no-op when fresh).
-- Writes the latency figures of the non-blocking check to build/ngx-figures.txt.

local mock = require "spec.support.mock"
local json = mock.json
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local kie_callback = require "kie.callback"

local KEY = "sk-ngx-spec-7c1e93b2"
local WRONG_KEY = "sk-ngx-spec-wrong-55aa01"
local HMAC_KEY = "ngx-spec-webhook-key-31f0"
local PINGS = 200
local DELAY = 2 -- seconds the mock holds the slow request's recordInfo

-- helpers ------------------------------------------------------------------------

local util = require "spec.support.util"
local q, read_file, write_file = util.quote, util.read_file, util.write_file

-- Runs cmd (no sanitizer preload); returns the combined output and the exit code.
local function sh(cmd)
  local _, out, rc = util.run(cmd)
  return out, rc
end

local ROOT = (sh("pwd"):gsub("%s+$", ""))

local free_port = util.free_port

local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end

-- One HTTP request: status, body, headers (or nil, err).
local function request(method, url, body, headers)
  local chunks = {}
  local h = {}
  for k, v in pairs(headers or {}) do h[k:lower()] = v end
  if body then
    h["content-type"] = h["content-type"] or "application/json"
    h["content-length"] = tostring(#body)
  end
  local saved = http.TIMEOUT
  http.TIMEOUT = 15
  local ok, r, status, rh = pcall(http.request, {
    url = url, method = method, headers = h,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  })
  http.TIMEOUT = saved
  if not ok then return nil, tostring(r) end
  if not r then return nil, tostring(status) end
  return status, table.concat(chunks), rh
end

local function get_json(url)
  local status, body = request("GET", url)
  assert(status, body)
  local doc, err = json.decode(body)
  assert(doc ~= nil, "not JSON from " .. url .. ": " .. tostring(err) .. ": " .. tostring(body))
  return status, doc, body
end

local function until_true(fn, seconds)
  local deadline = socket.gettime() + (seconds or 5)
  while true do
    local v = fn()
    if v then return v end
    if socket.gettime() > deadline then return nil end
    socket.sleep(0.01)
  end
end

local function sorted_copy(t)
  local c = {}
  for i, v in ipairs(t) do c[i] = v end
  table.sort(c)
  return c
end

local function percentile(sorted, p)
  local i = math.floor(p * (#sorted - 1) + 0.5) + 1
  return sorted[i]
end

local function ms(s)
  return string.format("%.2f", s * 1000)
end

-- Fires n "GET path" requests (with `body`: "POST path") at once: n connections,
-- every request sent before any answer is read. Returns a list of {status, body,
-- sent, done} in sending order.
local function burst(port, path, n, body)
  local list = {}
  for i = 1, n do
    local c = assert(socket.tcp())
    c:settimeout(5)
    assert(c:connect("127.0.0.1", port))
    list[i] = { sock = c, buf = {} }
  end
  for i = 1, n do
    local r = list[i]
    r.sent = socket.gettime()
    assert(r.sock:send((body and "POST " or "GET ") .. path .. " HTTP/1.0\r\nHost: 127.0.0.1\r\n"
      .. (body and ("Content-Length: " .. #body .. "\r\n\r\n" .. body) or "\r\n")))
    r.sock:settimeout(0)
  end
  local pending = n
  local deadline = socket.gettime() + 10
  while pending > 0 and socket.gettime() < deadline do
    local socks = {}
    for _, r in ipairs(list) do
      if not r.done then socks[#socks + 1] = r.sock end
    end
    local readable = socket.select(socks, nil, 1)
    local now = socket.gettime()
    for _, s in ipairs(readable) do
      for _, r in ipairs(list) do
        if r.sock == s and not r.done then
          local data, err, partial = s:receive(8192)
          data = data or partial
          if data and #data > 0 then r.buf[#r.buf + 1] = data end
          if err == "closed" then
            r.done = now
            pending = pending - 1
            s:close()
            local raw = table.concat(r.buf)
            r.status = tonumber(raw:match("^HTTP/%d%.%d (%d%d%d)"))
            r.body = raw:match("\r\n\r\n(.*)$")
          end
        end
      end
    end
  end
  for _, r in ipairs(list) do
    if not r.done then r.sock:close() end
  end
  return list
end

local function latencies(list)
  local l = {}
  for i, r in ipairs(list) do l[i] = r.done and (r.done - r.sent) or math.huge end
  return sorted_copy(l)
end

-- handlers of the /t/* test locations (run inside the mock's nginx) -----------------

local APP = [==[
local kie = require "kie.ngx"
local errors = require "kie.errors"
local cjson = require "cjson.safe"

local KEY = @KEY@
local WRONG_KEY = @WRONG_KEY@
local M = {}
local dict = ngx.shared.kie_ngx_spec
local clients = {}

local REFRAME = { image_url = "https://example.com/a.png", image_size = "landscape_16_9" }
local FAST = { interval = 0.05, max_interval = 0.1, timeout = 15 }

-- ?wrong=1 picks the wrong key (never put a key in a URL: nginx logs request lines)
local function client(wrong, pool)
  local key = wrong and WRONG_KEY or KEY
  local id = key .. "|" .. tostring(pool)
  if not clients[id] then
    local url = "http://127.0.0.1:" .. ngx.var.server_port
    clients[id] = kie.new{ api_key = key, base_url = url, upload_url = url,
      thread_pool = pool, timeout = 10, logger = kie.log }
  end
  return clients[id]
end
M.client = client

local function reply(doc)
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode(doc))
end

local function err_doc(e)
  return { kind = e.kind, status = e.status, code = e.code, message = e.message,
    retryable = e.retryable, task_id = e.task_id, is_error = errors.is(e), text = tostring(e) }
end

local function seq()
  return dict:incr("seq", 1, 0)
end

function M.ping()
  reply{ seq = seq(), t = ngx.now() }
end

function M.run()
  local args = ngx.req.get_uri_args()
  local start_seq, t0 = seq(), ngx.now()
  local info, err = client(args.wrong, args.pool):run{ model = "ideogram/v3-reframe",
    input = REFRAME, wait = FAST }
  local done_seq = seq()
  ngx.update_time()
  local out = { start_seq = start_seq, done_seq = done_seq, elapsed = ngx.now() - t0 }
  if info then
    out.ok, out.taskId, out.state, out.resultUrls = true, info.taskId, info.state, info.resultUrls
  else
    out.ok, out.err = false, err_doc(err)
  end
  reply(out)
end

function M.credits()
  local c = client(ngx.var.arg_wrong, ngx.var.arg_pool)
  if ngx.var.arg_once then
    c = clients.once or kie.new{ api_key = KEY, base_url = "http://127.0.0.1:" .. ngx.var.server_port,
      max_retries = 0, timeout = 10 }
    clients.once = c
  end
  local n, err = c:credits()
  if n then return reply{ ok = true, credits = n } end
  reply{ ok = false, err = err_doc(err) }
end

function M.object()
  local task, err = client():create_task({ model = "ideogram/v3-reframe",
    input = { image_url = REFRAME.image_url, image_size = REFRAME.image_size,
      as_object = kie.object(), as_list = {} } }, { strict = false })
  if task then return reply{ ok = true, taskId = task.taskId } end
  reply{ ok = false, err = err_doc(err) }
end

function M.download()
  local c = client()
  local info, err = c:run{ model = "ideogram/v3-reframe", input = REFRAME, wait = FAST }
  if not info then return reply{ ok = false, err = err_doc(err) } end
  local url, uerr = c:download_url(info.resultUrls[1])
  if not url then return reply{ ok = false, err = err_doc(uerr) } end
  local path, derr = c:download(url, ngx.var.arg_path)
  if not path then return reply{ ok = false, err = err_doc(derr) } end
  reply{ ok = true, path = path }
end

function M.upload()
  local c = client()
  local file, err = c:upload(ngx.var.arg_path, { upload_path = "ngx-spec" })
  if not file then return reply{ ok = false, err = err_doc(err) } end
  local f2, err2 = c:upload({ data = "\137PNG\r\n\26\n" .. string.rep("x", 64), file_name = "b.png" })
  if not f2 then return reply{ ok = false, err = err_doc(err2) } end
  reply{ ok = true, url = file.downloadUrl, url2 = f2.downloadUrl }
end

function M.run_all()
  local reqs = {}
  for i = 1, 3 do reqs[i] = { model = "ideogram/v3-reframe", input = REFRAME, wait = FAST } end
  reqs[2] = { model = "ideogram/v3-reframe", input = { image_url = "not a url" } }
  local results, errs = client():run_all(reqs, { concurrency = 2 })
  reply{ ok1 = results[1] and results[1].state, ok3 = results[3] and results[3].state,
    has2 = results[2] ~= nil, err2 = errs and errs[2] and errs[2].kind,
    err1 = errs and errs[1] ~= nil }
end

-- wait with a short deadline (the spec keeps every worker-thread VM busy meanwhile)
function M.wait_short()
  local t0 = ngx.now()
  local info, err = client(nil, ngx.var.arg_pool):wait(ngx.var.arg_id, { timeout = 0.5, interval = 0.05 })
  ngx.update_time()
  reply{ elapsed = ngx.now() - t0, state = info and info.state, kind = err and err.kind }
end

-- run_all's on_update, and items whose own code raises
function M.run_all_update()
  local reqs = {}
  for i = 1, 4 do reqs[i] = { model = "ideogram/v3-reframe", input = REFRAME, wait = FAST } end
  local updates, raised = {}, 0
  local results, errs = client():run_all(reqs, { concurrency = 2, on_update = function(i, info)
    updates[#updates + 1] = i .. ":" .. info.state
    if i == 2 and info.state == "success" then error("on_update of item 2 raised") end
    if i == 3 then raised = raised + 1; error({ "a table error" }) end
  end })
  local out = { updates = updates, errs = {}, states = {} }
  for i = 1, 4 do
    out.states[i] = results[i] and results[i].state or cjson.null
    local e = errs and errs[i]
    out.errs[i] = e and { kind = e.kind, message = e.message, task_id = e.task_id,
      traceback = e.traceback ~= nil } or cjson.null
  end
  local ok, msg = pcall(client().run_all, client(), reqs, { concurency = 2 })
  out.unknown = not ok and tostring(msg) or cjson.null
  -- a typo in item 2's wait options raises before item 1 is created
  reqs[2] = { model = "ideogram/v3-reframe", input = REFRAME, wait = { timout = 5 } }
  ok, msg = pcall(client().run_all, client(), reqs)
  out.typo = not ok and tostring(msg) or cjson.null
  reply(out)
end

-- creates from light threads, paced 3 per 1 s (the mock counts arrivals)
function M.paced()
  local c = clients.paced or kie.new{ api_key = KEY, base_url = "http://127.0.0.1:" .. ngx.var.server_port,
    max_retries = 0, timeout = 10, rate_limits = { create = { limit = 3, window = 1 } } }
  clients.paced = c
  local threads, errs = {}, {}
  for i = 1, 8 do
    threads[i] = ngx.thread.spawn(function()
      local t, err = c:create_task{ model = "ideogram/v3-reframe", input = REFRAME }
      if not t then errs[#errs + 1] = tostring(err) end
    end)
  end
  for _, t in ipairs(threads) do ngx.thread.wait(t) end
  reply{ errs = errs }
end

-- control: the plain blocking kie in the same worker (what kie.ngx avoids)
function M.blocking()
  local start_seq = seq()
  local c = require("kie").new{ api_key = KEY, base_url = "http://127.0.0.1:" .. ngx.var.server_port,
    timeout = 2, max_retries = 0 }
  local n, err = c:credits()
  local done_seq = seq()
  c:close()
  reply{ start_seq = start_seq, done_seq = done_seq, kind = err and err.kind, credits = n }
end

-- a journal: its fsync'd appends run on a worker thread too
function M.journal()
  local c = kie.new{ api_key = KEY, base_url = "http://127.0.0.1:" .. ngx.var.server_port,
    journal = ngx.var.arg_path }
  local info, err = c:run{ model = "ideogram/v3-reframe", input = REFRAME, wait = FAST }
  if not info then return reply{ ok = false, err = err_doc(err) } end
  reply{ ok = true, taskId = info.taskId, unfinished = #c:resume() }
end

-- raises are caught and their messages returned
function M.raises()
  local what = ngx.var.arg_what
  local ok, msg
  if what == "pool" then
    ok, msg = pcall(function() return client(nil, "no_such_pool"):get_task("task_x") end)
  elseif what == "step" then
    ok, msg = pcall(function() return client():step(0) end)
  elseif what == "spawn" then
    ok, msg = pcall(kie.spawn, function() end)
  elseif what == "option" then
    ok, msg = pcall(kie.new, { api_key = KEY, thread_pol = "kie" })
  elseif what == "nokey" then
    ok, msg = pcall(kie.new, { api_key = "" })
  end
  reply{ ok = ok, msg = tostring(msg) }
end

-- log phase: no yielding there; kie.ngx must refuse instead of blocking
function M.log_phase()
  local ok, msg = pcall(function() return client():get_task("task_x") end)
  dict:set("log_phase", cjson.encode{ ok = ok, msg = tostring(msg) })
end

function M.log_phase_result()
  reply{ result = dict:get("log_phase") }
end

-- a timer callback may use the client
function M.timer()
  dict:delete("timer")
  assert(ngx.timer.at(0, function(premature)
    if premature then return end
    local n, err = client():credits()
    dict:set("timer", cjson.encode{ credits = n, kind = err and err.kind })
  end))
  reply{ started = true }
end

function M.timer_result()
  reply{ result = dict:get("timer") }
end

-- the API key must not be readable from the client, its core handle, or tostring
function M.key_hidden()
  local c = client()
  local seen = {}
  local function scan(v, depth)
    if depth > 4 then return false end
    if type(v) == "string" then return v:find(KEY, 1, true) ~= nil end
    if type(v) ~= "table" or seen[v] then return false end
    seen[v] = true
    for k, val in pairs(v) do
      if scan(k, depth + 1) or scan(val, depth + 1) then return true end
    end
    return false
  end
  reply{ leaked = scan(c, 0) or tostring(c):find(KEY, 1, true) ~= nil
    or tostring(c._core):find(KEY, 1, true) ~= nil, text = tostring(c) }
end

return M
]==]

local SERVER_CONF = [[
    location = /t/ping { content_by_lua_block { require("kie_ngx_spec_app").ping() } }
    location = /t/run { content_by_lua_block { require("kie_ngx_spec_app").run() } }
    location = /t/credits { content_by_lua_block { require("kie_ngx_spec_app").credits() } }
    location = /t/object { content_by_lua_block { require("kie_ngx_spec_app").object() } }
    location = /t/download { content_by_lua_block { require("kie_ngx_spec_app").download() } }
    location = /t/upload { content_by_lua_block { require("kie_ngx_spec_app").upload() } }
    location = /t/run_all { content_by_lua_block { require("kie_ngx_spec_app").run_all() } }
    location = /t/wait_short { content_by_lua_block { require("kie_ngx_spec_app").wait_short() } }
    location = /t/run_all_update { content_by_lua_block { require("kie_ngx_spec_app").run_all_update() } }
    location = /t/paced { content_by_lua_block { require("kie_ngx_spec_app").paced() } }
    location = /t/blocking { content_by_lua_block { require("kie_ngx_spec_app").blocking() } }
    location = /t/journal { content_by_lua_block { require("kie_ngx_spec_app").journal() } }
    location = /t/raises { content_by_lua_block { require("kie_ngx_spec_app").raises() } }
    location = /t/key_hidden { content_by_lua_block { require("kie_ngx_spec_app").key_hidden() } }
    location = /t/timer { content_by_lua_block { require("kie_ngx_spec_app").timer() } }
    location = /t/timer_result { content_by_lua_block { require("kie_ngx_spec_app").timer_result() } }
    location = /t/log_phase {
      content_by_lua_block { ngx.say("ok") }
      log_by_lua_block { require("kie_ngx_spec_app").log_phase() }
    }
    location = /t/log_phase_result { content_by_lua_block { require("kie_ngx_spec_app").log_phase_result() } }
]]

-- the example nginx (examples/openresty/nginx.conf under a temp prefix) ------------

-- opts (optional): workers (worker_processes, default 1), env (more variables),
-- subs (more {pattern, replacement} edits of the conf).
local function start_example(base_url, cleanup, opts)
  opts = opts or {}
  local conf = assert(read_file(ROOT .. "/examples/openresty/nginx.conf"))
  local out, rc = sh('mktemp -d "${TMPDIR:-/tmp}/kie-ngx-example.XXXXXXXX"')
  assert(rc == 0, out)
  local prefix = out:gsub("%s+$", "")
  assert(prefix:match("/kie%-ngx%-example%.%w+$"), prefix)
  local ex = { prefix = prefix }
  function ex.stop()
    if ex.stopped then return end
    ex.stopped = true
    local pid = ex.pid or tonumber(read_file(prefix .. "/logs/nginx.pid") or "")
    if pid and alive(pid) then
      os.execute("kill -TERM " .. pid)
      if not until_true(function() return not alive(pid) end, 5) then
        os.execute("kill -KILL " .. pid)
      end
    end
    os.execute("rm -rf " .. q(prefix))
  end
  local ok, err = pcall(function()
    assert(sh("mkdir -p " .. q(prefix .. "/logs") .. " " .. q(prefix .. "/tmp")))
    local function sub(pattern, repl)
      local n
      conf, n = conf:gsub(pattern, repl)
      assert(n > 0, "examples/openresty/nginx.conf no longer has " .. pattern)
    end
    ex.port = free_port()
    -- several workers: reuseport spreads the connections over them
    sub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. ex.port
      .. ((opts.workers or 1) > 1 and " reuseport;" or ";"))
    sub("%$prefix/%.%./%.%.", (ROOT:gsub("%%", "%%%%")))
    sub("error_log logs/error%.log notice;", "error_log logs/error.log info;")
    sub("worker_processes auto;", "worker_processes " .. (opts.workers or 1) .. ";")
    sub("access_log logs/access%.log;", "access_log off;")
    -- kie.ai's polling schedule starts at 2-3 s; the mock finishes in ~0.1 s
    sub("wait = { timeout = 600 }", "wait = { timeout = 600, interval = 0.05, max_interval = 0.1 }")
    for _, edit in ipairs(opts.subs or {}) do sub(edit[1], edit[2]) end
    if sh("id -u"):match("^%s*0%s*$") then conf = "user root root;\n" .. conf end
    write_file(prefix .. "/nginx.conf", conf)
    local env = {}
    for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. q(v) .. " " end
    table.sort(env)
    local start, src = sh("env " .. table.concat(env) .. "KIE_API_KEY=" .. q(KEY) .. " KIE_BASE_URL=" .. q(base_url)
      .. " KIE_WEBHOOK_HMAC_KEY=" .. q(HMAC_KEY)
      .. " KIE_CALLBACK_URL=" .. q("http://127.0.0.1:" .. ex.port .. "/kie-callback")
      .. " nginx -p " .. q(prefix .. "/")
      .. " -c " .. q(prefix .. "/nginx.conf") .. " -e " .. q(prefix .. "/logs/error.log"))
    assert(src == 0, "example nginx did not start: " .. start)
    ex.url = "http://127.0.0.1:" .. ex.port
    assert(until_true(function()
      ex.pid = ex.pid or tonumber(read_file(prefix .. "/logs/nginx.pid") or "")
      return ex.pid and request("GET", ex.url .. "/healthz") == 200
    end, 10), "example nginx did not answer: " .. tostring(read_file(prefix .. "/logs/error.log")))
    -- a watchdog: this nginx stops when the test process dies without stopping it
    local owner = tonumber((sh("echo $PPID"):match("%d+")))
    if owner then
      sh("(while kill -0 " .. owner .. " && kill -0 " .. ex.pid .. "; do sleep 1; done; "
        .. "kill -0 " .. owner .. " || { kill -TERM " .. ex.pid .. "; sleep 1; rm -rf " .. q(prefix)
        .. (cleanup and (" " .. q(cleanup)) or "") .. "; }) >/dev/null 2>&1 </dev/null &")
    end
  end)
  if not ok then
    ex.stop()
    error(err, 0)
  end
  return ex
end

-- the specs -------------------------------------------------------------------------

describe("kie.ngx outside nginx #ngx", function()
  local kie_ngx = require "kie.ngx"

  it("loads in plain Lua and offers kie's API", function()
    for _, name in ipairs{ "new", "errors", "models", "callback", "object", "log", "spawn" } do
      assert.is_not_nil(kie_ngx[name], name)
    end
    assert.equals(require("kie")._VERSION, kie_ngx._VERSION)
    assert.equals(require("kie.callback"), kie_ngx.callback)
  end)

  it("checks options like kie.new, plus thread_pool", function()
    assert.has_error(function() kie_ngx.new{ api_key = KEY, timout = 3 } end,
      "kie.ngx.new: unknown option 'timout'")
    assert.has_error(function() kie_ngx.new{ api_key = KEY, timeout = -1 } end)
    assert.has_error(function() kie_ngx.new{ api_key = KEY, thread_pool = "" } end,
      "kie.ngx.new: option 'thread_pool' must be a non-empty string")
    assert.has_error(function() kie_ngx.new{ api_key = KEY, sleep = function() end } end)
    assert.has_error(function() kie_ngx.new("key") end, "kie.ngx.new: options must be a table")
  end)

  it("builds a client without I/O, hides the key, and refuses to call outside nginx", function()
    local c = kie_ngx.new{ api_key = KEY, base_url = "http://127.0.0.1:1", thread_pool = "p1" }
    assert.equals("kie.ngx.Client (http://127.0.0.1:1, thread pool p1)", tostring(c))
    assert.is_nil(tostring(c._core):find(KEY, 1, true))
    for k, v in pairs(c) do assert.is_nil(tostring(v):find(KEY, 1, true), k) end
    assert.has_error(function() c:get_task("task_x") end,
      "kie.ngx: get_task: not running inside nginx (ngx_lua); use require \"kie\"")
    assert.has_error(function() c:step(0) end)
    -- validation needs no I/O and returns as in kie
    local r, e = c:create_task{ model = "ideogram/v3-reframe", input = { image_url = "nope" } }
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    c:close()
  end)
end)

describe("kie.ngx in nginx #ngx", function()
  local m, ex, app_dir

  lazy_setup(function()
    local out, rc = sh("make -s build LUA=luajit")
    assert(rc == 0, "make build LUA=luajit failed:\n" .. out)
    assert(io.open(ROOT .. "/build/luajit/kie/core.so"), "build/luajit/kie/core.so is missing")
    out, rc = sh('mktemp -d "${TMPDIR:-/tmp}/kie-ngx-spec.XXXXXXXX"')
    assert(rc == 0, out)
    app_dir = out:gsub("%s+$", "")
    local app = APP:gsub("@KEY@", string.format("%q", KEY)):gsub("@WRONG_KEY@", string.format("%q", WRONG_KEY))
    write_file(app_dir .. "/kie_ngx_spec_app.lua", app)
    m = mock.start{
      api_key = KEY, pace = 0.02, log_level = "info",
      main_conf = "thread_pool kie threads=8;\nthread_pool one threads=1;",
      -- two worker-thread VMs only: more calls at once must wait for one (not fail)
      http_conf = "  lua_shared_dict kie_ngx_spec 1m;\n  lua_worker_thread_vm_pool_size 2;",
      server_conf = SERVER_CONF,
      lua_package_path = app_dir .. "/?.lua;" .. ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua",
      lua_package_cpath = ROOT .. "/build/luajit/?.so",
    }
    ex = start_example(m.url, app_dir)
  end)

  lazy_teardown(function()
    if ex then ex.stop() end
    if m then m:stop() end
    if app_dir then os.execute("rm -rf " .. q(app_dir)) end
  end)

  describe("(a) client:run", function()
    it("runs a task against the mock's own API from the mock's single worker", function()
      local status, doc = get_json(m.url .. "/t/run")
      assert.equals(200, status)
      assert.is_nil(doc.err)
      assert.is_true(doc.ok)
      assert.equals("success", doc.state)
      assert.matches("^task_", doc.taskId)
      assert.is_true(#doc.resultUrls >= 1)
      assert.matches("^" .. m.url:gsub("%p", "%%%0") .. "/files/", doc.resultUrls[1])
    end)

    it("keeps connections alive across calls (one core client per worker-thread VM)", function()
      m:reset()
      local _, doc = get_json(m.url .. "/t/run")
      assert.is_true(doc.ok)
      local reqs = m:requests()
      local api, conns = 0, {}
      for _, r in ipairs(reqs) do
        if r.path:sub(1, 5) == "/api/" then
          api = api + 1
          conns[r.connection] = true
        end
      end
      local nconns = 0
      for _ in pairs(conns) do nconns = nconns + 1 end
      assert.is_true(api >= 3, "createTask + at least two recordInfo polls")
      assert.is_true(nconns < api, api .. " API requests on " .. nconns .. " connections")
    end)

    it("runs the example's /generate against the mock", function()
      local status, body = request("POST", ex.url .. "/generate", json.encode{
        model = "ideogram/v3-reframe",
        input = { image_url = "https://example.com/a.png", image_size = "square_hd" },
      })
      assert.equals(200, status, body)
      local doc = json.decode(body)
      assert.equals("success", doc.state)
      assert.matches("^" .. m.url:gsub("%p", "%%%0") .. "/files/", doc.resultUrls[1])
      local bad = request("POST", ex.url .. "/generate", json.encode{
        model = "ideogram/v3-reframe", input = { image_url = "not a url" },
      })
      assert.equals(400, bad)
    end)

    it("takes only allow-listed fields at /generate: a path is never read, nothing else passes", function()
      m:reset()
      local png = app_dir .. "/server-side.png" -- a file nginx can read
      write_file(png, "\137PNG\r\n\26\nSECRET-BYTES" .. string.rep("x", 64))
      local app = app_dir .. "/kie_ngx_spec_app.lua"
      local ok_input = { image_url = "https://example.com/a.png", image_size = "square_hd" }
      local bad = {
        { model = "ideogram/v3-reframe", input = { image_url = png, image_size = "square_hd" } },
        { model = "ideogram/v3-reframe", input = { image_url = "file://" .. png, image_size = "square_hd" } },
        { model = "ideogram/v3-reframe", input = { image_url = app, image_size = "square_hd" } },
        { model = "ideogram/character", input = { prompt = "x", reference_image_urls = { png } } },
        { model = "ideogram/character", input = { prompt = "x", reference_image_urls = { { path = png } } } },
        { model = "ideogram/v3-reframe", input = ok_input, upload = { upload_path = "x" } },
        { model = "ideogram/v3-reframe", input = ok_input, callBackUrl = "http://127.0.0.1:1/steal" },
        { model = "ideogram/v3-reframe", input = ok_input, wait = { timeout = 1e9 } },
        { model = "ideogram/v3-reframe", input = { image_url = ok_input.image_url, image_size = "square_hd",
          colour = "red" } },
        { model = "ideogram/v3-reframe", input = { image_url = ok_input.image_url, image_size = { "square_hd" } } },
        { model = "someone/else", input = { prompt = "x" } },
      }
      for _, req in ipairs(bad) do
        local status, body = request("POST", ex.url .. "/generate", json.encode(req))
        assert.equals(400, status, body)
        assert.equals("validation", json.decode(body).error.kind)
        assert.is_nil(body:find("SECRET", 1, true), body)
        assert.is_nil(body:find("kie_ngx_spec_app", 1, true) and body:find("starts with", 1, true), body)
      end
      assert.equals(0, m:count("/api/*"))
    end)

    it("sends kie.object() as {} and empty tables as [] across the thread boundary", function()
      m:reset()
      local _, doc = get_json(m.url .. "/t/object")
      assert.is_true(doc.ok, doc.err and doc.err.text)
      local reqs = m:requests("/api/v1/jobs/createTask")
      assert.equals(1, #reqs)
      assert.matches('"as_object":{}', reqs[1].body)
      assert.matches('"as_list":%[%]', reqs[1].body)
    end)

    it("downloads a result file from a worker thread", function()
      local path = m.prefix .. "/tmp/kie-ngx-download.png"
      local _, doc = get_json(m.url .. "/t/download?path=" .. path)
      assert.is_true(doc.ok, doc.err and doc.err.text)
      assert.equals(path, doc.path)
      local png = read_file(path)
      assert.is_truthy(png)
      assert.equals("\137PNG", png:sub(1, 4))
    end)

    it("writes the task journal (created, finished) through a worker thread", function()
      local path = m.prefix .. "/tmp/kie-ngx-journal.jsonl"
      local _, doc = get_json(m.url .. "/t/journal?path=" .. path)
      assert.is_true(doc.ok, doc.err and doc.err.text)
      assert.equals(0, doc.unfinished)
      local text = read_file(path) or ""
      assert.matches('"event":"created"', text)
      assert.matches('"event":"finished"', text)
      assert.matches(doc.taskId, text, 1, true)
    end)

    it("uploads a file (streamed from disk by the worker thread) and bytes", function()
      local probe = require("kie.core").new{ api_key = "x", base_url = "http://127.0.0.1:1" }
      local has_upload = type(probe.upload) == "function"
      probe:close()
      if not has_upload then return pending("this kie.core has no upload") end
      local path = m.prefix .. "/tmp/kie-ngx-upload.png"
      write_file(path, "\137PNG\r\n\26\n" .. string.rep("\0", 256))
      local _, doc = get_json(m.url .. "/t/upload?path=" .. path)
      assert.is_true(doc.ok, doc.err and doc.err.text)
      assert.matches("^http://127%.0%.0%.1:%d+/", doc.url)
      assert.matches("^http://127%.0%.0%.1:%d+/", doc.url2)
    end)

    it("run_all runs requests in light threads and reports each one", function()
      local _, doc = get_json(m.url .. "/t/run_all")
      assert.equals("success", doc.ok1)
      assert.equals("success", doc.ok3)
      assert.is_false(doc.has2)
      assert.equals("validation", doc.err2)
      assert.is_false(doc.err1)
    end)

    it("run_all calls on_update(i, info); an item whose own code raises ends as kind raised, "
      .. "the others go on", function()
      m:reset()
      local _, doc = get_json(m.url .. "/t/run_all_update")
      assert.equals("success", doc.states[1])
      assert.equals("success", doc.states[4])
      assert.equals(json.null, doc.states[2])
      assert.equals(json.null, doc.states[3])
      assert.equals(json.null, doc.errs[1])
      assert.equals(json.null, doc.errs[4])
      for _, i in ipairs{ 2, 3 } do
        local e = doc.errs[i]
        assert.equals("raised", e.kind)
        assert.matches("^task_", e.task_id) -- created before it raised: its id is kept
        assert.is_true(e.traceback)
      end
      assert.matches("on_update of item 2 raised", doc.errs[2].message, 1, true)
      local seen = {}
      for _, u in ipairs(doc.updates) do seen[u] = true end
      assert.is_true(seen["1:success"] and seen["4:success"] and seen["2:success"], table.concat(doc.updates, " "))
      assert.matches("run_all: unknown option 'concurency'", doc.unknown, 1, true)
      assert.matches("run_all: request 2: wait: unknown option 'timout'", doc.typo, 1, true)
      assert.equals(4, m:count("/api/v1/jobs/createTask")) -- the first run_all's four only
    end)

    it("works from an ngx.timer.at callback", function()
      get_json(m.url .. "/t/timer")
      local result = until_true(function()
        local _, doc = get_json(m.url .. "/t/timer_result")
        return doc.result
      end, 5)
      assert.is_truthy(result, "the timer never reported")
      local doc = json.decode(result)
      assert.is_number(doc.credits)
    end)
  end)

  describe("(b) the event loop is never blocked", function()
    it("serves 200 concurrent requests while a run waits on a slow kie.ai", function()
      -- baseline: the same burst with nothing waiting
      local idle = burst(m.port, "/t/ping", PINGS)
      for _, r in ipairs(idle) do assert.equals(200, r.status) end

      m:reset()
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = DELAY, times = 1 }
      local slow = assert(socket.tcp())
      slow:settimeout(5)
      assert(slow:connect("127.0.0.1", m.port))
      local slow_sent = socket.gettime()
      assert(slow:send("GET /t/run HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
      -- the slow request is now inside a worker thread, its recordInfo held by the mock
      local held = until_true(function()
        for _, r in ipairs(m:requests("/api/v1/jobs/recordInfo")) do
          if r.fault then return r end
        end
      end, 5)
      assert.is_truthy(held, "the delayed recordInfo never reached the mock")

      local busy = burst(m.port, "/t/ping", PINGS)
      local last_ping = 0
      local ping_seqs = {}
      for i, r in ipairs(busy) do
        assert.equals(200, r.status, "ping " .. i)
        local doc = json.decode(r.body)
        ping_seqs[#ping_seqs + 1] = doc.seq
        if r.done > last_ping then last_ping = r.done end
      end
      assert.equals(PINGS, #ping_seqs)

      -- every ping has been answered and the slow request has still sent nothing
      slow:settimeout(0)
      local early, early_err, early_part = slow:receive(1)
      assert.is_nil(early)
      assert.equals("timeout", early_err)
      assert.equals("", early_part)

      slow:settimeout(DELAY + 10)
      local raw, err, partial = slow:receive("*a")
      raw = raw or partial
      local slow_done = socket.gettime()
      slow:close()
      assert.is_truthy(raw, err)
      assert.matches("^HTTP/1%.%d 200", raw)
      local doc = json.decode(raw:match("\r\n\r\n(.*)$"))
      assert.is_true(doc.ok, doc.err and doc.err.text)
      assert.equals("success", doc.state)

      -- ordering, by the server's own counter: the run started before every ping
      -- and finished after every ping; and by the client's clock: it arrived last
      local sorted = sorted_copy(ping_seqs)
      assert.is_true(doc.start_seq < sorted[1], "run started before the pings")
      assert.is_true(doc.done_seq > sorted[#sorted], "run finished after the pings")
      assert.is_true(slow_done > last_ping)

      local li, lb = latencies(idle), latencies(busy)
      local lines = {
        "kie.ngx non-blocking check (spec/ngx_spec.lua), " .. os.date("!%Y-%m-%dT%H:%M:%SZ"),
        "setup: " .. (sh("nginx -v"):gsub("%s+$", "")) .. " + libnginx-mod-http-lua, worker_processes 1, "
          .. "thread_pool kie threads=8, lua_worker_thread_vm_pool_size 2; the mock kie.ai API and the kie.ngx "
          .. "locations share that worker",
        string.format("slow request: GET /t/run (client:run), its recordInfo held %d s by the mock; "
          .. "answered %.0f ms after it was sent, after all %d pings", DELAY, (slow_done - slow_sent) * 1000, PINGS),
        string.format("%d concurrent GET /t/ping (ngx.say + shared-dict counter), one connection each, "
          .. "all sent before any answer was read; latency = send to full answer at the test client:", PINGS),
        string.format("  while the run waited: all %d answered 200; median %s ms, p95 %s ms, max %s ms",
          PINGS, ms(percentile(lb, 0.5)), ms(percentile(lb, 0.95)), ms(lb[#lb])),
        string.format("  idle (nothing waiting): median %s ms, p95 %s ms, max %s ms",
          ms(percentile(li, 0.5)), ms(percentile(li, 0.95)), ms(li[#li])),
        string.format("ordering (server counter): run start seq %d < pings %d..%d < run done seq %d",
          doc.start_seq, sorted[1], sorted[#sorted], doc.done_seq),
      }
      os.execute("mkdir -p " .. q(ROOT .. "/build"))
      write_file(ROOT .. "/build/ngx-figures.txt", table.concat(lines, "\n") .. "\n")
    end)

    it("control: the same check catches a client that blocks (plain kie in nginx)", function()
      -- plain `require "kie"` in the mock's only worker: its blocking HTTP call to
      -- that very worker cannot be answered until curl gives up (2 s)
      local blocker = assert(socket.tcp())
      blocker:settimeout(10)
      assert(blocker:connect("127.0.0.1", m.port))
      assert(blocker:send("GET /t/blocking HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
      socket.sleep(0.3) -- the handler is now inside curl (2 s budget)
      local pings = burst(m.port, "/t/ping", 20)
      local raw = blocker:receive("*a")
      blocker:close()
      local doc = json.decode(raw:match("\r\n\r\n(.*)$"))
      assert.equals("timeout", doc.kind)
      local seqs = {}
      for _, r in ipairs(pings) do
        assert.equals(200, r.status)
        seqs[#seqs + 1] = json.decode(r.body).seq
      end
      seqs = sorted_copy(seqs)
      -- every ping waited for the blocked loop: served only after the call gave up
      assert.is_true(doc.done_seq < seqs[1], "pings were served while plain kie blocked?")
      local l = latencies(pings)
      local fh = io.open(ROOT .. "/build/ngx-figures.txt", "ab")
      if fh then
        fh:write(string.format("control, plain blocking `kie` in the same worker (curl timeout 2 s): "
          .. "20 pings sent 0.3 s into the call were all served after it (seq %d < %d..%d); "
          .. "their latency median %s ms, max %s ms\n", doc.done_seq, seqs[1], seqs[#seqs],
          ms(percentile(l, 0.5)), ms(l[#l])))
        fh:close()
      end
    end)
  end)

  describe("(c) callbacks at the example's /kie-callback", function()
    local function callback_body(task_id)
      return json.encode{ code = 200, msg = "Playground task completed successfully.", data = {
        taskId = task_id, model = "ideogram/v3-reframe", state = "success",
        resultJson = '{"resultUrls":["https://example.com/r.png"]}', failCode = "", failMsg = "" } }
    end

    it("accepts a callback signed with the right key: 200 received", function()
      local headers = kie_callback.sign(HMAC_KEY, "task_signed_ok")
      local status, body = request("POST", ex.url .. "/kie-callback", callback_body("task_signed_ok"), headers)
      assert.equals(200, status, body)
      assert.same({ status = "received" }, json.decode(body))
      local st, doc = get_json(ex.url .. "/kie-result?taskId=task_signed_ok")
      assert.equals(200, st)
      assert.equals("success", doc.state)
      assert.is_true(doc.verified)
      assert.same({ "https://example.com/r.png" }, doc.resultUrls)
    end)

    it("rejects a wrong key, a stale timestamp and a missing signature with 401", function()
      local wrong = kie_callback.sign("not-the-key", "task_signed_bad")
      local status, body = request("POST", ex.url .. "/kie-callback", callback_body("task_signed_bad"), wrong)
      assert.equals(401, status, body)
      assert.equals("signature", json.decode(body).error)
      local stale = kie_callback.sign(HMAC_KEY, "task_signed_bad", os.time() - 3600)
      assert.equals(401, (request("POST", ex.url .. "/kie-callback", callback_body("task_signed_bad"), stale)))
      assert.equals(401, (request("POST", ex.url .. "/kie-callback", callback_body("task_signed_bad"))))
      assert.equals(404, (request("GET", ex.url .. "/kie-result?taskId=task_signed_bad")))
      assert.equals(400, (request("POST", ex.url .. "/kie-callback", "not json",
        kie_callback.sign(HMAC_KEY, "x"))))
    end)

    it("verifies a real callback from the mock (HMAC made by the mock's nginx)", function()
      m:config{ hmac_key = HMAC_KEY }
      local status, body = request("POST", ex.url .. "/generate", json.encode{
        model = "ideogram/v3-reframe", callback = true, -- to KIE_CALLBACK_URL (start_example sets it)
        input = { image_url = "https://example.com/a.png", image_size = "square_hd" },
      })
      assert.equals(200, status, body)
      local task_id = json.decode(body).taskId
      local doc = until_true(function()
        local st, d = get_json(ex.url .. "/kie-result?taskId=" .. task_id)
        return st == 200 and d
      end, 10)
      assert.is_truthy(doc, "no verified callback stored for " .. task_id)
      assert.is_true(doc.verified)
      assert.equals("success", doc.state)
      assert.matches("/files/" .. task_id, doc.resultUrls[1])
      local delivered = until_true(function()
        for _, d in ipairs(m:deliveries()) do
          if d.taskId == task_id and d.status then return d end
        end
      end, 5)
      assert.equals(200, delivered.status)
    end)

    it("answers a real mock callback signed with another key with 401", function()
      m:config{ hmac_key = "some-other-webhook-key" }
      local status, body = request("POST", ex.url .. "/generate", json.encode{
        model = "ideogram/v3-reframe", callback = true, -- to KIE_CALLBACK_URL (start_example sets it)
        input = { image_url = "https://example.com/a.png", image_size = "square_hd" },
      })
      m:config{ hmac_key = false }
      assert.equals(200, status, body)
      local task_id = json.decode(body).taskId
      local delivered = until_true(function()
        for _, d in ipairs(m:deliveries()) do
          if d.taskId == task_id and d.status then return d end
        end
      end, 10)
      assert.is_truthy(delivered, "the mock never delivered")
      assert.equals(401, delivered.status)
      assert.equals(404, (request("GET", ex.url .. "/kie-result?taskId=" .. task_id)))
    end)
  end)

  describe("(e) the example is fleet-ready: 4 workers share the account's limits", function()
    local redis = require "spec.support.redis"
    local srv
    local LIMIT = "rate_limits = { create = { limit = 3, window = 1 } },"
    local REQ = json.encode{ model = "ideogram/v3-reframe",
      input = { image_url = "https://example.com/a.png", image_size = "square_hd" } }

    lazy_setup(function() srv = redis.start() end)
    lazy_teardown(function() if srv then srv:close() end end)
    after_each(function() m:config{ account_limit = false } end)

    -- the example with 4 workers and the account's create limit at 3 per s (as
    -- the mock's); `env` picks the pacing
    local function example(env)
      return start_example(m.url, nil, { workers = 4, env = env,
        subs = { { "timeout = 30,            %-%- per HTTP request", "timeout = 30, " .. LIMIT } } })
    end

    -- n /generate at once: the statuses, and how many creates the mock refused
    local function generate_all(e, n)
      m:reset()
      m:config{ account_limit = { create = { limit = 3, window = 1 } } }
      local statuses = {}
      for i, r in ipairs(burst(e.port, "/generate", n, REQ)) do statuses[i] = r.status end
      return statuses, m:over_limit("/api/v1/jobs/createTask")
    end

    local function all(n, v)
      local t = {}
      for i = 1, n do t[i] = v end
      return t
    end

    it("by default through lua_shared_dict kie_pacing: 9 /generate at once, 0 429s", function()
      local e = example()
      local ok, statuses, over = pcall(generate_all, e, 9)
      e.stop()
      assert(ok, statuses)
      assert.same(all(9, 200), statuses)
      assert.equals(0, over)
      assert.equals(9, m:count("/api/v1/jobs/createTask"))
    end)

    it("with KIE_REDIS_URL through the fleet on Redis: 9 /generate at once, 0 429s", function()
      local name = "example-" .. math.random(1, 1e9)
      local e = example{ KIE_REDIS_URL = srv.url, KIE_FLEET = name }
      local ok, statuses, over = pcall(generate_all, e, 9)
      e.stop()
      assert(ok, statuses)
      assert.same(all(9, 200), statuses)
      assert.equals(0, over)
      assert.equals(":1", srv:cli("EXISTS", "{kie:fleet:" .. name .. ":create}:done"))
    end)

    it("with KIE_REDIS_URL a callback at /kie-callback (client:deliver) ends /generate's wait "
      .. "in whichever worker waits", function()
      local e = start_example(m.url, nil, { workers = 4,
        env = { KIE_REDIS_URL = srv.url, KIE_FLEET = "example-cb-" .. math.random(1, 1e9) },
        -- polls 20 s apart: only the callback can end the wait sooner
        subs = { { "interval = 0%.05, max_interval = 0%.1", "interval = 20, max_interval = 20" },
          { "timeout = 30,            %-%- per HTTP request", "timeout = 30, " .. LIMIT } } })
      m:reset()
      -- the task runs 1.5 s: the first poll finds it running, its callback comes later
      m:config{ hmac_key = HMAC_KEY, pace = 0.5 }
      local t0 = socket.gettime()
      local ok, status, body = pcall(request, "POST", e.url .. "/generate", json.encode{
        model = "ideogram/v3-reframe", callback = true,
        input = { image_url = "https://example.com/a.png", image_size = "square_hd" } })
      local took = socket.gettime() - t0
      m:config{ hmac_key = false, pace = 0.02 }
      local delivered = {}
      for _, d in ipairs(m:deliveries()) do delivered[#delivered + 1] = d.status end
      e.stop()
      assert(ok, status)
      assert.equals(200, status, body)
      assert.equals("success", json.decode(body).state)
      assert.same({ 200 }, delivered)
      assert.is_true(took < 8, "/generate took " .. took .. " s: the callback did not end the wait")
      assert.equals(2, m:count("/api/v1/jobs/recordInfo")) -- the first poll, then the one it woke
    end)

    it("Redis unreachable: 503 kind fleet, nothing sent", function()
      local e = example{ KIE_REDIS_URL = "redis://127.0.0.1:" .. free_port() .. "/0" }
      m:reset()
      local ok, status, body = pcall(request, "POST", e.url .. "/generate", REQ)
      e.stop()
      assert(ok, status)
      assert.equals(503, status, body)
      assert.equals("fleet", json.decode(body).error.kind)
      assert.equals(0, m:count("/api/v1/jobs/createTask"))
    end)
  end)

  describe("(d) errors and limits", function()
    it("returns typed errors: a wrong key is kind auth (401) from run and credits", function()
      local _, doc = get_json(m.url .. "/t/run?wrong=1")
      assert.is_false(doc.ok)
      assert.equals("auth", doc.err.kind)
      assert.equals(401, doc.err.status)
      assert.is_false(doc.err.retryable)
      assert.is_true(doc.err.is_error, "the error table has kie.errors' metatable again")
      assert.matches("^kie: auth: ", doc.err.text)
      local _, cdoc = get_json(m.url .. "/t/credits?wrong=1")
      assert.equals("auth", cdoc.err.kind)
      assert.is_true(cdoc.err.is_error)
      local _, ok = get_json(m.url .. "/t/credits")
      assert.is_true(ok.ok)
      assert.is_number(ok.credits)
    end)

    it("raises clear errors instead of blocking or misbehaving", function()
      local _, pool = get_json(m.url .. "/t/raises?what=pool")
      assert.is_false(pool.ok)
      assert.matches("kie.ngx: thread pool 'no_such_pool' not found: add 'thread_pool no_such_pool", pool.msg, 1, true)
      local _, step = get_json(m.url .. "/t/raises?what=step")
      assert.is_false(step.ok)
      assert.matches("client:step is not available in nginx", step.msg, 1, true)
      local _, spawn = get_json(m.url .. "/t/raises?what=spawn")
      assert.matches("kie.spawn is not available in nginx", spawn.msg, 1, true)
      local _, opt = get_json(m.url .. "/t/raises?what=option")
      assert.equals("kie.ngx.new: unknown option 'thread_pol'", opt.msg)
      local _, nokey = get_json(m.url .. "/t/raises?what=nokey")
      assert.is_false(nokey.ok)
      assert.matches("^kie%.ngx%.new: no API key", nokey.msg)
    end)

    it("waits for a free worker-thread VM instead of failing (pool of 2, 6 calls at once)", function()
      m:reset()
      m:fault{ path = "/api/v1/chat/credit", fault = "delay", seconds = 0.3, times = 6 }
      local list = burst(m.port, "/t/credits?once=1", 6) -- a client with max_retries = 0
      for i, r in ipairs(list) do
        assert.equals(200, r.status)
        local doc = json.decode(r.body)
        assert.is_true(doc.ok, "call " .. i .. ": " .. tostring(doc.err and doc.err.text))
      end
      assert.equals(6, m:count("/api/v1/chat/credit")) -- each sent once
    end)

    it("wait keeps its deadline while every worker-thread VM is busy", function()
      m:reset()
      local helper = require("kie").new{ api_key = KEY, base_url = m.url, rate_limits = { create = false } }
      local task = assert(helper:create_task{ model = "ideogram/v3-reframe",
        input = { image_url = "https://example.com/a.png", image_size = "square_hd" } })
      helper:close()
      -- both VMs (lua_worker_thread_vm_pool_size 2) held 3 s by slow credit calls
      m:fault{ path = "/api/v1/chat/credit", fault = "delay", seconds = 3, times = 2 }
      local blockers = {}
      for i = 1, 2 do
        local c = assert(socket.tcp())
        c:settimeout(10)
        assert(c:connect("127.0.0.1", m.port))
        assert(c:send("GET /t/credits?once=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
        blockers[i] = c
      end
      assert.is_truthy(until_true(function() return m:count("/api/v1/chat/credit") == 2 end, 5))
      -- (without the busy VMs the task would be found at the first poll: success)
      local _, doc = get_json(m.url .. "/t/wait_short?id=" .. task.taskId)
      for _, c in ipairs(blockers) do c:receive("*a"); c:close() end
      assert.equals("deadline", doc.kind)
      assert.is_true(doc.elapsed < 2, "wait{timeout = 0.5} took " .. doc.elapsed .. " s")
    end)

    it("paces creates where kie.ai counts them: on arrival, with 0 - 300 ms latency", function()
      m:reset()
      m:config{ latency = { min = 0, max = 0.3 }, account_limit = { create = { limit = 3, window = 1 } } }
      local ok, _, doc = pcall(get_json, m.url .. "/t/paced")
      m:config{ latency = false, account_limit = false }
      assert(ok, _)
      local over = 0
      for _, r in ipairs(m:requests("/api/v1/jobs/createTask")) do
        if r.fault == "account_limit" then over = over + 1 end
      end
      assert.equals(8, m:count("/api/v1/jobs/createTask"))
      assert.equals(0, over)
      assert.same({}, doc.errs)
    end)

    it("wait keeps its deadline while every thread of its pool is busy", function()
      m:reset()
      local helper = require("kie").new{ api_key = KEY, base_url = m.url, rate_limits = { create = false } }
      local task = assert(helper:create_task{ model = "ideogram/v3-reframe",
        input = { image_url = "https://example.com/a.png", image_size = "square_hd" } })
      helper:close()
      -- the only thread of pool "one" held 3 s by a slow credit call (a VM is free)
      m:fault{ path = "/api/v1/chat/credit", fault = "delay", seconds = 3, times = 1 }
      local blocker = assert(socket.tcp())
      blocker:settimeout(10)
      assert(blocker:connect("127.0.0.1", m.port))
      assert(blocker:send("GET /t/credits?pool=one HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
      assert.is_truthy(until_true(function() return m:count("/api/v1/chat/credit") == 1 end, 5))
      local _, doc = get_json(m.url .. "/t/wait_short?pool=one&id=" .. task.taskId)
      blocker:receive("*a")
      blocker:close()
      assert.equals("deadline", doc.kind)
      assert.is_true(doc.elapsed < 2, "wait{timeout = 0.5} took " .. doc.elapsed .. " s")
      -- the abandoned poll ran once the thread was free, and sent nothing
      socket.sleep(0.2)
      assert.equals(0, m:count("/api/v1/jobs/recordInfo"))
    end)

    it("refuses to run in a phase that cannot yield (log_by_lua)", function()
      assert.equals(200, (request("GET", m.url .. "/t/log_phase")))
      local result = until_true(function()
        local _, doc = get_json(m.url .. "/t/log_phase_result")
        return doc.result
      end, 5)
      local doc = json.decode(result)
      assert.is_false(doc.ok)
      assert.matches("get_task cannot run in the log phase", doc.msg, 1, true)
    end)

    it("never exposes or logs the API key", function()
      local _, doc = get_json(m.url .. "/t/key_hidden")
      assert.is_false(doc.leaked)
      assert.matches("^kie%.ngx%.Client %(http://127%.0%.0%.1:%d+, thread pool kie%)$", doc.text)
      local mock_log = read_file(m.error_log) or ""
      local ex_log = read_file(ex.prefix .. "/logs/error.log") or ""
      assert.matches("kie: task created", ex_log, 1, true) -- the logger did run (level info)
      for _, key in ipairs{ KEY, WRONG_KEY } do
        assert.is_nil(mock_log:find(key, 1, true))
        assert.is_nil(ex_log:find(key, 1, true))
      end
    end)
  end)
end)
