-- kie.redis: fleet mode's Redis client (hiredis), against a real redis-server.
local redis = require "kie.redis"
local server = require "spec.support.redis"

describe("kie.redis (hiredis) #fleet", function()
  local srv

  lazy_setup(function() srv = server.start() end)
  lazy_teardown(function() if srv then srv:close() end end)

  local function connect(opts)
    return assert(redis.connect(srv.url, opts or { connect_timeout = 1, timeout = 1 }))
  end

  it("converts strings (binary), integers, arrays with nil holes and status replies", function()
    local c = connect()
    assert.equals("OK", c:call("SET", "k:bin", "a\0b"))
    assert.equals("a\0b", c:call("GET", "k:bin"))
    assert.equals(3, c:call("STRLEN", "k:bin"))
    assert.equals(redis.null, c:call("GET", "k:none"))
    assert.equals(2, c:call("RPUSH", "k:list", 1.5, "x"))
    assert.same({ "1.5", "x" }, c:call("LRANGE", "k:list", 0, -1))
    assert.same({ "a\0b", redis.null }, c:call("MGET", "k:bin", "k:none"))
    assert.equals("PONG", c:call("PING"))
    c:close()
  end)

  it("returns an error reply as nil, err of kind fleet with Redis's code", function()
    local c = connect()
    c:call("SET", "k:str", "v")
    local r, err = c:call("LPUSH", "k:str", "x")
    assert.is_nil(r)
    assert.equals("fleet", err.kind)
    assert.equals("WRONGTYPE", err.code)
    assert.is_false(err.retryable)
    assert.matches("WRONGTYPE", err.message)
    -- the connection stays usable after an error reply
    assert.equals("v", c:call("GET", "k:str"))
    c:close()
  end)

  it("eval runs a script by EVALSHA and falls back to EVAL when Redis forgot it", function()
    local c = connect()
    local script = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"
    assert.same({ "k1", "a", 3 }, c:eval(script, 1, "k1", "a", 2))
    local calls = function()
      local info = c:call("INFO", "commandstats")
      return tonumber(info:match("cmdstat_evalsha:calls=(%d+)")) or 0,
        tonumber(info:match("cmdstat_eval:calls=(%d+)")) or 0
    end
    local sha0, eval0 = calls()
    assert.same({ "k2", "b", 5 }, c:eval(script, 1, "k2", "b", 4))
    local sha1, eval1 = calls()
    assert.equals(sha0 + 1, sha1)
    assert.equals(eval0, eval1)
    assert.equals("OK", c:call("SCRIPT", "FLUSH"))
    assert.same({ "k3", "c", 7 }, c:eval(script, 1, "k3", "c", 6)) -- NOSCRIPT, then EVAL
    local _, eval2 = calls()
    assert.equals(eval1 + 1, eval2)
    local r, err = c:eval("return redis.call('NOPE')", 0)
    assert.is_nil(r)
    assert.equals("fleet", err.kind)
    c:close()
  end)

  it("selects the database of the URL", function()
    local c2 = assert(redis.connect("redis://127.0.0.1:" .. srv.port .. "/2"))
    c2:call("SET", "k:db", "two")
    local c0 = connect()
    assert.equals(redis.null, c0:call("GET", "k:db"))
    assert.equals("OK", c0:call("SELECT", 2))
    assert.equals("two", c0:call("GET", "k:db"))
    c0:close()
    c2:close()
  end)

  it("an unreachable Redis is nil, err of kind fleet (retryable)", function()
    local port = require("spec.support.util").free_port()
    local c, err = redis.connect("redis://127.0.0.1:" .. port .. "/0", { connect_timeout = 0.5 })
    assert.is_nil(c)
    assert.equals("fleet", err.kind)
    assert.is_true(err.retryable)
    assert.matches("127.0.0.1:" .. port, err.message)
  end)

  it("a command past the timeout fails (retryable) and the next call reconnects", function()
    local c = connect{ timeout = 0.2 }
    local r, err = c:call("BLPOP", "k:never", 2)
    assert.is_nil(r)
    assert.equals("fleet", err.kind)
    assert.is_true(err.retryable)
    assert.is_true(err.timeout)
    assert.matches("no answer within 0.2 s", err.message, 1, true)
    assert.equals("PONG", c:call("PING"))
    c:close()
  end)

  it("a Redis killed mid-way fails calls (retryable); a restarted one is reconnected", function()
    local c = connect()
    assert.equals("PONG", c:call("PING"))
    srv:stop()
    local r, err = c:call("PING")
    assert.is_nil(r)
    assert.equals("fleet", err.kind)
    assert.is_true(err.retryable)
    assert.is_nil(err.timeout)
    r, err = c:call("PING") -- reconnecting fails too while it is down
    assert.is_nil(r)
    assert.matches("cannot connect", err.message)
    srv:restart()
    assert.equals("PONG", c:call("PING"))
    c:close()
  end)

  it("a write to a connection Redis closed is an error, not a SIGPIPE that kills the process", function()
    -- a child without LuaSocket (which ignores SIGPIPE for the whole process when loaded)
    local procs = require "spec.support.procs"
    local util = require "spec.support.util"
    local script = procs.tmpname(".lua")
    util.write_file(script, [[
      local redis = require "kie.redis"
      local url = ...
      local c = assert(redis.connect(url))
      local other = assert(redis.connect(url))
      assert(other:call("CLIENT", "KILL", "ID", c:call("CLIENT", "ID")) == 1)
      os.execute("sleep 0.1")
      local r, err = c:call("SET", "k:big", string.rep("x", 8 * 1024 * 1024))
      print("alive", r, err and err.kind, err and err.retryable)
      print(c:call("PING"))
    ]])
    -- SIGPIPE as a fresh program has it (the busted process ignores it: LuaSocket)
    -- (io.popen, not util.run: the child keeps the sanitizer preload of an ASan run)
    local p = io.popen("env --default-signal=PIPE " .. procs.lua_command(script, { srv.url })
      .. " 2>&1; echo \"rc=$?\"")
    local out = p:read("*a")
    p:close()
    os.remove(script)
    assert.equals("alive\tnil\tfleet\ttrue\nPONG\nrc=0\n", out)
  end)

  it("close is idempotent, a closed connection fails calls, __gc frees it", function()
    local c = connect()
    c:close()
    c:close()
    local r, err = c:call("PING")
    assert.is_nil(r)
    assert.equals("fleet", err.kind)
    assert.matches("closed", tostring(c))
    -- counted by name: connections of other tests' children may still be closing
    local probe = connect()
    local tag = "gc" .. math.random(1, 1e9)
    local function clients()
      local n = 0
      for _ in probe:call("CLIENT", "LIST"):gmatch("name=" .. tag .. " ") do n = n + 1 end
      return n
    end
    local open = {}
    for i = 1, 20 do
      open[i] = connect()
      assert.equals("OK", open[i]:call("CLIENT", "SETNAME", tag))
    end
    assert.equals(20, clients())
    open = nil -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    local socket = require "socket" -- Redis takes the closes in on its next loop turn
    local deadline = socket.gettime() + 5
    while clients() > 0 and socket.gettime() < deadline do socket.sleep(0.01) end
    assert.equals(0, clients())
    probe:close()
  end)

  it("bad arguments raise", function()
    assert.has_error(function() redis.connect(42) end)
    assert.has_error(function() redis.connect("http://127.0.0.1:1") end,
      "kie.redis.connect: the URL must start with redis:// in 'http://127.0.0.1:1'")
    assert.has_error(function() redis.connect("redis://127.0.0.1:99999/0") end)
    assert.has_error(function() redis.connect(srv.url, { timeout = -1 }) end)
    local c = connect()
    assert.has_error(function() c:call("SET", "k", {}) end)
    assert.has_error(function() c:call() end)
    c:close()
  end)
end)
