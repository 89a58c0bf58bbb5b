-- kie.ngx sharing the account's rate limits in a real nginx with 4 worker processes:
-- `shared_dict` (one nginx's workers, no Redis) and `fleet` (Redis, shared with
-- plain kie.fleet processes too). Many concurrent requests create tasks against the
-- mock, which enforces kie.ai's account-wide sliding window over arrivals (429 over
-- it). The negative control (per-worker pacing, kie.ngx's default) must see 429s.
-- Run from the repo root:  busted --lua=lua5.4 spec/ngx_fleet_spec.lua
-- Needs nginx + libnginx-mod-http-lua, lua-nginx-redis, redis-server and the
-- LuaJIT (nginx) and Lua 5.4 (the plain process) builds.
local mock = require "spec.support.mock"
local app = require "spec.support.ngx_app"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local util = require "spec.support.util"
local socket = require "socket"
local http = require "socket.http"
local json = mock.json

local KEY = "sk-fleet-spec" -- spec/support/fleet_child.lua's
local CREATE = "/api/v1/jobs/createTask"
local LIMIT = { limit = 5, window = 1 }
local CHILD = "spec/support/fleet_child.lua"
local N = 16 -- creates at once per run (the account: 5 per s)

-- The handlers (a module in the app's Lua path). GET /t/create?mode=&name=&redis=
-- makes one create through a client of that mode (one per worker and mode):
-- "worker" (kie.ngx's own per-worker pacing), "dict" (shared_dict), "fleet".
local HANDLERS = [==[
local kie = require "kie.ngx"
local cjson = require "cjson.safe"
local M = {}
local clients = {}

local function client(a)
  local id = a.mode .. "|" .. tostring(a.name) .. "|" .. tostring(a.redis) .. "|" .. tostring(a.limit)
    .. "|" .. tostring(a.lease)
  if clients[id] then return clients[id] end
  local o = { api_key = @KEY@, base_url = a.mock, timeout = 5, max_retries = 0,
    rate_limits = { create = { limit = tonumber(a.limit) or @LIMIT@, window = tonumber(a.window) or @WINDOW@ },
      poll = false } }
  if a.mode == "dict" then o.shared_dict = "kie_pacing" end
  if a.mode == "fleet" then o.fleet = { redis = a.redis, name = a.name, timeout = 1, lease = tonumber(a.lease) } end
  clients[id] = kie.new(o)
  return clients[id]
end

function M.create()
  local a = ngx.req.get_uri_args()
  local c = client(a)
  local task, err = c:create_task{ model = "ideogram/character",
    input = { prompt = "ngx " .. tostring(a.i), reference_image_urls = { "https://example.com/ref.png" } } }
  ngx.say(cjson.encode{ ok = task ~= nil, kind = err and err.kind, message = err and err.message,
    worker = ngx.worker.id(), task_id = task and task.taskId })
end

-- kie.redis_ngx's calls in a request: GET /t/redis?redis=URL
function M.redis()
  local rn = require "kie.redis_ngx"
  local conn = assert(rn.connect(ngx.req.get_uri_args().redis, { timeout = 1 }))
  local out = {}
  out.set = conn:call("SET", "kie:ngx:spec", "v1")
  out.get = conn:call("GET", "kie:ngx:spec")
  out.missing_is_null = conn:call("GET", "kie:ngx:absent") == ngx.null
  local _, e = conn:call("INCR", "kie:ngx:spec")
  out.err = { kind = e.kind, code = e.code, retryable = e.retryable }
  out.eval = conn:eval("return {KEYS[1], ARGV[1], 7}", 1, "k", "a")
  local t0 = ngx.now()
  out.xread_null = conn:call("XREAD", "BLOCK", "200", "STREAMS", "kie:ngx:stream", "$") == ngx.null
  ngx.update_time()
  out.xread_waited = ngx.now() - t0
  ngx.say(cjson.encode(out))
end

function M.flush()
  ngx.shared.kie_pacing:flush_all()
  ngx.say('{"ok":true}')
end

return M
]==]

-- the largest number of times within any half-open window [t, t + width)
local max_in_window = require("spec.support.fleet_run").max_in_window

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- Sends every request of `paths` at once (one connection each; the kernel spreads
-- them over the workers), or `gap` seconds apart, then reads every answer.
-- Returns the decoded answers.
local function burst(port, paths, seconds, gap)
  local list = {}
  for i = 1, #paths do
    local c = assert(socket.tcp())
    c:settimeout(5)
    assert(c:connect("127.0.0.1", port))
    list[i] = { sock = c, buf = {} }
  end
  for i, r in ipairs(list) do
    if gap and i > 1 then socket.sleep(gap) end
    assert(r.sock:send("GET " .. paths[i] .. " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
    r.sock:settimeout(0)
  end
  local pending, deadline = #list, socket.gettime() + seconds
  while pending > 0 and socket.gettime() < deadline do
    local socks = {}
    for _, r in ipairs(list) do if not r.done then socks[#socks + 1] = r.sock end end
    for _, s in ipairs(socket.select(socks, nil, 1)) do
      for _, r in ipairs(list) do
        if r.sock == s and not r.done then
          local data, err, partial = s:receive(8192)
          data = data or partial
          if data and #data > 0 then r.buf[#r.buf + 1] = data end
          if err == "closed" then
            r.done, pending = true, pending - 1
            s:close()
            r.doc = json.decode(table.concat(r.buf):match("\r\n\r\n(.*)$") or "")
          end
        end
      end
    end
  end
  local docs = {}
  for i, r in ipairs(list) do
    if not r.done then r.sock:close() end
    docs[i] = r.doc or { ok = false, kind = "no answer" }
  end
  return docs
end

describe("kie.redis_ngx outside nginx #ngx #fleet", function()
  local rn = require "kie.redis_ngx"

  it("parses redis:// URLs as kie.redis does", function()
    local function parse(url) return { rn.parse_url(url) } end
    assert.same({ "127.0.0.1", 6379, 0 }, parse("redis://127.0.0.1"))
    assert.same({ "127.0.0.1", 6380, 2 }, parse("redis://127.0.0.1:6380/2"))
    assert.same({ "10.0.0.5", 6379, 0, "s3cr:et" }, parse("redis://:s3cr:et@10.0.0.5/"))
    assert.same({ "h", 1, 0, "pw" }, parse("redis://user:pw@h:1"))
    assert.same({ "h", 6379, 0 }, parse("redis://user@h"))
    assert.same({ nil, "bad port" }, parse("redis://h:0"))
    assert.same({ nil, "bad port" }, parse("redis://h:x"))
    assert.same({ nil, "no host" }, parse("redis://:6379"))
    assert.same({ nil, "bad database number" }, parse("redis://h/x"))
    assert.same({ nil, "the URL must start with redis://" }, parse("http://h"))
  end)

  it("a bad URL is kind fleet, not retryable; connect does no I/O", function()
    local c, err = rn.connect("redis://h:99999", {})
    assert.is_nil(c)
    assert.equals("fleet", err.kind)
    assert.is_false(err.retryable)
  end)
end)

describe("kie.ngx pacing shared by nginx's workers (4 workers) #ngx #fleet #integration", function()
  local m, a, srv, dir
  local names = 0

  lazy_setup(function()
    local ok, out = util.run("make -s build LUA=luajit")
    assert(ok, out)
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0, account_limit = { create = LIMIT } }
    dir = util.tmpdir("kie-ngx-fleet")
    util.write_file(dir .. "/ngx_fleet_handlers.lua", (HANDLERS:gsub("@KEY@", ("%q"):format(KEY))
      :gsub("@LIMIT@", tostring(LIMIT.limit)):gsub("@WINDOW@", tostring(LIMIT.window))))
    a = app.start{ workers = 4, lua_dir = dir,
      main_conf = "thread_pool kie threads=8;",
      http_conf = "  lua_shared_dict kie_pacing 1m;\n  lua_worker_thread_vm_pool_size 16;",
      server_conf = '    location = /t/create { content_by_lua_block { require("ngx_fleet_handlers").create() } }\n'
        .. '    location = /t/redis { content_by_lua_block { require("ngx_fleet_handlers").redis() } }\n'
        .. '    location = /t/flush { content_by_lua_block { require("ngx_fleet_handlers").flush() } }',
    }
  end)
  lazy_teardown(function()
    if a then a:stop() end
    if m then m:stop() end
    if srv then srv:close() end
    if dir then util.run("rm -rf " .. util.quote(dir)) end
  end)
  before_each(function()
    m:reset()
    m:config{ latency = { min = 0, max = 0.2 } }
  end)

  local function fresh_name()
    names = names + 1
    return "ngx" .. names .. "-" .. math.random(1, 1e9)
  end

  -- n creates at once in `mode` (or `gap` s apart, with their own limit `extra`):
  -- returns the answers
  local function load(n, mode, name, redis_url, gap, extra)
    local paths = {}
    for i = 1, n do
      paths[i] = "/t/create?mode=" .. mode .. "&i=" .. i .. "&mock=" .. urlencode(m.url)
        .. (name and ("&name=" .. urlencode(name)) or "")
        .. (redis_url and ("&redis=" .. urlencode(redis_url)) or "") .. (extra or "")
    end
    return burst(a.port, paths, 30, gap)
  end

  -- the i of each create the mock counted, in the order they arrived
  local function arrival_order()
    local list = {}
    for _, r in ipairs(m:requests(CREATE)) do
      list[#list + 1] = { at = r.arrived, i = tonumber(json.decode(r.body).input.prompt:match("(%d+)$")) }
    end
    table.sort(list, function(x, y) return x.at < y.at end)
    local order = {}
    for k, v in ipairs(list) do order[k] = v.i end
    return order
  end

  local function tally(docs)
    local t = { ok = 0, kinds = {}, workers = {}, nworkers = 0 }
    for _, d in ipairs(docs) do
      if d.ok then t.ok = t.ok + 1 else t.kinds[d.kind] = (t.kinds[d.kind] or 0) + 1 end
      if d.worker and not t.workers[d.worker] then
        t.workers[d.worker] = true
        t.nworkers = t.nworkers + 1
      end
    end
    return t
  end

  local function arrivals()
    local times, over = {}, 0
    for _, r in ipairs(m:requests(CREATE)) do
      if r.fault == "account_limit" then over = over + 1 else times[#times + 1] = r.arrived end
    end
    return times, over
  end

  local function report(what, n, t, over, times)
    io.stderr:write(("\n[ngx-fleet] %s: %d creates at once over %d workers, limit %d / %d s, "
      .. "latency 0-200 ms: ok %d, 429s %d, arrivals over %.2f s\n"):format(what, n, t.nworkers,
      LIMIT.limit, LIMIT.window, t.ok, over, #times > 1 and (times[#times] - times[1]) or 0))
  end

  it("control: per-worker pacing (no shared_dict, no fleet) overshoots the account", function()
    local docs = load(N, "worker")
    local t = tally(docs)
    local times, over = arrivals()
    report("control, per worker", N, t, over, times)
    assert.is_true(t.nworkers >= 2, "the requests reached one worker only")
    assert.is_true(over > 0, "the harness saw no overshoot")
    assert.equals(over, t.kinds.rate_limited)
  end)

  it("shared_dict: every worker shares the account's window: 0 429s, all created", function()
    local _, status = http.request(a.url .. "/t/flush")
    assert.equals(200, status)
    local docs = load(N, "dict")
    local t = tally(docs)
    local times, over = arrivals()
    report("shared_dict", N, t, over, times)
    assert.is_true(t.nworkers >= 2, "the requests reached one worker only")
    assert.same({}, t.kinds)
    assert.equals(N, t.ok)
    assert.equals(0, over)
    assert.equals(LIMIT.limit, max_in_window(times, LIMIT.window))
  end)

  it("fleet: the workers share the account through Redis: 0 429s, all created", function()
    local docs = load(N, "fleet", fresh_name(), srv.url)
    local t = tally(docs)
    local times, over = arrivals()
    report("fleet", N, t, over, times)
    assert.is_true(t.nworkers >= 2, "the requests reached one worker only")
    assert.same({}, t.kinds)
    assert.equals(N, t.ok)
    assert.equals(0, over)
    assert.equals(LIMIT.limit, max_in_window(times, LIMIT.window))
  end)

  it("fleet: the journal is in Redis; a plain process's resume() claims what the workers left", function()
    local name = fresh_name()
    local docs = load(6, "fleet", name, srv.url, nil, "&lease=0.3")
    assert.equals(6, tally(docs).ok)
    local made = {}
    for _, d in ipairs(docs) do made[#made + 1] = d.task_id end
    assert.equals(6, #made)
    socket.sleep(0.5) -- the creators' leases lapse (their requests ended)
    local kie = require "kie"
    local c = kie.new{ api_key = KEY, base_url = m.url, rate_limits = { create = false, poll = false },
      fleet = { redis = srv.url, name = name } }
    local got = assert(c:resume())
    local ids = {}
    for _, e in ipairs(got) do
      assert.is_nil(e.unknown)
      ids[#ids + 1] = e.taskId
    end
    table.sort(ids)
    table.sort(made)
    assert.same(made, ids)
    c:close()
  end)

  it("fleet, mixed: nginx workers and a plain kie.fleet process on one fleet name: 0 429s", function()
    local name = fresh_name()
    local out = dir .. "/child"
    local start = socket.gettime() + 0.3
    local cmd = procs.lua_command(CHILD, { m.url, "fleet", srv.url, name, LIMIT.limit, LIMIT.window,
      ("%.3f"):format(start), 6, ("%.3f"):format(start + 20), "plain" })
    local pid = procs.spawn(cmd, out .. ".out", out .. ".err")
    socket.sleep(math.max(0, start - socket.gettime()))
    local docs = load(10, "fleet", name, srv.url)
    local deadline = socket.gettime() + 20
    while procs.alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
    assert.is_false(procs.alive(pid), "the plain process did not end")
    assert.equals("", util.read_file(out .. ".err") or "")
    local plain = 0
    for line in (util.read_file(out .. ".out") or ""):gmatch("[^\n]+") do
      assert.matches("^ok ", line)
      plain = plain + 1
    end
    local t = tally(docs)
    local times, over = arrivals()
    report("fleet, 10 from nginx + 6 from a plain process", 16, t, over, times)
    assert.equals(6, plain)
    assert.same({}, t.kinds)
    assert.equals(10, t.ok)
    assert.equals(0, over)
    assert.equals(16, #times)
    assert.is_true(max_in_window(times, LIMIT.window) <= LIMIT.limit)
  end)

  for _, mode in ipairs{ "dict", "fleet" } do
    it(mode .. ": waiters in several workers are served in arrival order", function()
      m:config{ latency = false }
      if mode == "dict" then
        local _, status = http.request(a.url .. "/t/flush")
        assert.equals(200, status)
      end
      local n = 8
      local docs = load(n, mode, fresh_name(), srv.url, 0.03, "&limit=1&window=0.2")
      local t = tally(docs)
      assert.same({}, t.kinds)
      assert.is_true(t.nworkers >= 2, "the requests reached one worker only")
      local want = {}
      for i = 1, n do want[i] = i end
      assert.same(want, arrival_order())
    end)
  end

  it("fleet, Redis restarted empty: the workers go on (new sockets), the first window counts as full", function()
    local name = fresh_name()
    local docs = load(6, "fleet", name, srv.url)
    assert.same({}, tally(docs).kinds)
    srv:restart()
    m:reset()
    local restarted = socket.gettime()
    docs = load(6, "fleet", name, srv.url)
    local t = tally(docs)
    local times, over = arrivals()
    assert.same({}, t.kinds)
    assert.equals(6, t.ok)
    assert.equals(0, over)
    for _, r in ipairs(m:requests(CREATE)) do
      assert.is_true(r.time >= restarted + LIMIT.window, "a create went in the window after the restart")
    end
    assert.is_true(max_in_window(times, LIMIT.window) <= LIMIT.limit)
  end)

  it("kie.redis_ngx in a request: commands, nil replies as ngx.null, error replies, eval, a blocking XREAD", function()
    local body, status = http.request(a.url .. "/t/redis?redis=" .. urlencode(srv.url))
    assert.equals(200, status, a:log_tail(10))
    local doc = json.decode(body)
    assert.equals("OK", doc.set)
    assert.equals("v1", doc.get)
    assert.is_true(doc.missing_is_null)
    assert.same({ kind = "fleet", code = "ERR", retryable = false }, doc.err)
    assert.same({ "k", "a", 7 }, doc.eval)
    assert.is_true(doc.xread_null)
    assert.is_true(doc.xread_waited >= 0.15, "XREAD BLOCK 200 returned after " .. doc.xread_waited .. " s")
  end)

  it("fleet, Redis unreachable: kind fleet (retryable) and nothing sent", function()
    local closed = "redis://127.0.0.1:" .. util.free_port() .. "/0"
    local docs = load(4, "fleet", fresh_name(), closed)
    for _, d in ipairs(docs) do
      assert.is_false(d.ok)
      assert.equals("fleet", d.kind, d.message)
      assert.matches("nothing was sent", d.message)
    end
    assert.equals(0, m:count(CREATE))
  end)
end)
