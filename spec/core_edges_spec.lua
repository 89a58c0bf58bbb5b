-- kie.core at its edges: a kept-alive connection that dies under a create, and
-- other promises of DESIGN.md's "promises at the edges" that live in the C core.
-- Against the real mock server (nginx + Lua on 127.0.0.1).
local core = require "kie.core"

local KEY = "sk-core-edges-4e1d07"
local CREATE = "/api/v1/jobs/createTask"
local REQ = {
  model = "ideogram/character",
  input = { prompt = "a knight", reference_image_urls = { "https://example.com/ref.png" } },
}

-- Runs `code` (with kie.core loaded as core) in a new interpreter with this
-- process's paths; returns its output, or nil when it ran past `seconds`.
local function in_child(code, seconds)
  local procs = require "spec.support.procs"
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write('local core = require "kie.core"\n', code)
  f:close()
  -- not util.run: the child loads this process's core, sanitizer build included
  local cmd = procs.lua_command(script)
  if procs.interpreter():find("valgrind", 1, true) then -- the interpreter valgrind runs
    local lua = rawget(_G, "jit") and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
    cmd = cmd:gsub("^%S+", lua, 1)
  end
  local p = assert(io.popen("timeout " .. seconds .. " " .. cmd .. " 2>&1; echo \"__rc=$?\""))
  local out = p:read("*a")
  p:close()
  os.remove(script)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  if rc == 124 then return nil end
  assert(rc == 0, out)
  return out
end

describe("kie.core encoding #core", function()
  it("refuses a table that contains itself at once", function()
    local out = in_child([[
      local t = {}
      t[1] = t
      t[2] = t
      local r, msg = core.encode(t)
      print(r, msg)
      local c = core.new{ api_key = "sk-cycle-key-0", base_url = "http://127.0.0.1:1" }
      local _, e = c:create_task{ model = "m", input = t }
      print(e.kind, e.message)
    ]], 20)
    assert.is_not_nil(out, "encoding a cycle ran for 20 s")
    assert.matches("nil\ta table contains itself", out)
    assert.matches("validation\tcreate_task: the request cannot be encoded as JSON: a table contains itself", out)
  end)

  it("still encodes a table used twice (no cycle)", function()
    local urls = { "https://example.com/a.png" }
    local empty = {}
    local s = core.encode{ a = urls, b = urls, c = empty, d = empty }
    assert.same({ a = urls, b = urls, c = {}, d = {} }, core.decode(s))
    assert.matches('"c":%[%]', s)
    assert.matches('"d":%[%]', s)
  end)
end)

describe("kie.core numbers #core", function()
  local function new(o)
    o.api_key = "sk-numbers-0"
    o.base_url = "http://127.0.0.1:1"
    return core.new(o)
  end
  local NAN, HUGE = 0 / 0, math.huge

  it("refuses a timeout that is not a positive number of seconds up to a day", function()
    for _, name in ipairs({ "timeout", "connect_timeout" }) do
      for _, v in ipairs({ HUGE, -HUGE, NAN, 1e19, 86401, 0, -1, "5" }) do
        assert.has_error(function() new{ [name] = v } end,
          "kie.core.new: option '" .. name .. "' must be a positive number of seconds up to 86400")
      end
      new{ [name] = 86400 }:close()
      new{ [name] = 0.0001 }:close()
    end
  end)

  it("refuses a max_response_bytes that is not a whole number from 1 to 2^53", function()
    for _, v in ipairs({ HUGE, NAN, 1e19, 0.5, 0, -1, 2 ^ 53 + 2 }) do
      assert.has_error(function() new{ max_response_bytes = v } end,
        "kie.core.new: option 'max_response_bytes' must be a whole number from 1 to 2^53")
    end
    new{ max_response_bytes = 2 ^ 53 }:close()
    new{ max_response_bytes = 1 }:close()
  end)

  it("checks every other number it takes", function()
    local c = new{ timeout = 1 }
    -- a read's own timeout: math.huge shortens nothing
    local _, e = c:get_task("t", HUGE)
    assert.equals("network", e.kind)
    assert.has_error(function() c:get_task("t", NAN) end)
    -- step: wait and budget
    assert.has_error(function() c:step(NAN) end)
    assert.has_error(function() c:step(-1) end)
    assert.has_error(function() c:step(0, NAN) end)
    assert.has_error(function() c:step(0, -1) end)
    assert.equals(0, (c:step(0.5)))
    assert.equals(0, (c:step(0, HUGE)))
    -- transfer ids no transfer can have
    for _, id in ipairs({ HUGE, NAN, 1e300, 0.5, -1 }) do
      assert.is_nil(c:progress(id))
      assert.is_false(c:cancel(id))
      assert.has_error(function() c:result(id) end)
    end
    local id = c:get_task_start("t")
    assert.has_error(function() c:progress(id, NAN) end)
    assert.has_error(function() c:progress(id, -1) end)
    assert.is_boolean((c:progress(id, 0.5)))
    -- a download's cap: math.huge is no cap of its own, NaN is an error
    local path = os.tmpname()
    assert.has_error(function() c:fetch("http://127.0.0.1:1/x", path, NAN) end)
    assert.has_error(function() c:fetch("http://127.0.0.1:1/x", path, -1) end)
    _, e = c:fetch("http://127.0.0.1:1/x", path, HUGE)
    assert.equals("network", e.kind)
    os.remove(path)
    assert.has_error(function() c:upload("/nonexistent", "p", nil, nil, NAN) end)
    c:close()
  end)
end)

-- Runs step until the transfer id is handed out, then returns its result.
local function settle(c, id)
  for _ = 1, 2000 do
    local _, done = c:step(10)
    for _, d in ipairs(done or {}) do
      if d == id then return c:result(id) end
    end
  end
  error("transfer " .. tostring(id) .. " never finished")
end

describe("kie.core edges #core", function()
  local m, c

  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.02 }
  end)
  lazy_teardown(function()
    if c then c:close() end
    m:stop()
  end)
  before_each(function()
    m:reset()
    if c then c:close() end
    c = core.new{ api_key = KEY, base_url = m.url, timeout = 5, connect_timeout = 2 }
  end)

  describe("the key", function()
    it("an HTML page echoing the Authorization header shows none of the key", function()
      for pad = 0, 90, 5 do -- the key crosses the excerpt's end at some pad
        m:fault{ path = "/api/v1/jobs/recordInfo", fault = "echo_headers",
          names = { "Authorization" }, pad = pad }
        local _, e = c:get_task("t")
        assert.equals("invalid", e.kind)
        assert.is_nil(e.message:find(KEY:sub(1, 6), 1, true), e.message)
      end
    end)

    it("handle:redact replaces the key in linear time, held in C", function()
      assert.is_function(c.redact)
      assert.equals("no key here", c:redact("no key here"))
      assert.equals("a [redacted] b [redacted][redacted]", c:redact("a " .. KEY .. " b " .. KEY .. KEY))
      assert.equals(KEY:sub(1, -2), c:redact(KEY:sub(1, -2)))
      local big = string.rep("s", 2 ^ 20) .. KEY .. string.rep(KEY:sub(1, -2) .. "!", 1000)
      local r = c:redact(big)
      assert.equals(#big - #KEY + #"[redacted]", #r)
      assert.is_nil(r:find(KEY, 1, true))
      assert.has_error(function() c:redact(nil) end)
      local k = core.new{ api_key = "sk-gone-0123", base_url = m.url }
      k:close()
      assert.is_nil(k:redact("sk-gone-0123")) -- closed: the key is gone, the caller decides
    end)

    it("the Lua redactor uses the core's (fake cores without it keep the HMAC one)", function()
      local redactor = require "kie.redact"
      local calls = 0
      local handle = { redact = function(_, s) calls = calls + 1; return c:redact(s) end }
      local r = redactor({}, KEY, handle) -- a core module without HMAC
      assert.equals("x [redacted] y", r("x " .. KEY .. " y"))
      assert.equals(1, calls)
      handle.redact = function() return nil end -- a closed handle: HMAC fallback
      r = redactor(core, KEY, handle)
      assert.equals("x [redacted] y", r("x " .. KEY .. " y"))
      r = redactor(core, KEY, {}) -- a fake handle without redact
      assert.equals("x [redacted] y", r("x " .. KEY .. " y"))
    end)

    it("close() leaves no copy of the key in the process's memory", function()
      local exe = require("spec.support.procs").interpreter()
      if (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) or exe:find("valgrind", 1, true) then
        return pending("the probe reads glibc's heap: ASan and valgrind replace the allocator")
      end
      local mem = io.open("/proc/self/mem", "rb")
      local maps = io.open("/proc/self/maps", "r")
      if not (mem and maps) then return pending("no /proc/self/mem here") end
      -- keys made here: the caller's own strings never follow "Bearer "; the second
      -- client stays open, so that a blind probe is seen
      local function make_key()
        return ("sk-wipe-%08x%08x"):format(math.random(0, 2 ^ 30), math.random(0, 2 ^ 30))
      end
      local key, kept = make_key(), make_key()
      local regions = {}
      for a, b, perms in maps:read("*a"):gmatch("(%x+)%-(%x+) (%S+)[^\n]*\n") do
        local from, to = tonumber(a, 16), tonumber(b, 16)
        if perms:sub(1, 2) == "rw" and to - from <= 256 * 2 ^ 20 then
          regions[#regions + 1] = { from, to - from }
        end
      end
      maps:close()
      local E = { ("earer "):byte(1, -1) } -- "Bearer " less the byte malloc may reuse
      -- copies of "...earer <k>" in readable memory, allocating nothing that could
      -- reuse a freed copy but the region reads themselves
      local function copies(data, k)
        local n, i = 0, 1
        while true do
          local p = data:find(k, i, true)
          if not p then return n end
          local hit = p > 6
          for j = 1, 6 do hit = hit and data:byte(p - 7 + j) == E[j] end
          if hit then n = n + 1 end
          i = p + 1
        end
      end
      local closed = core.new{ api_key = key, base_url = m.url }
      local open = core.new{ api_key = kept, base_url = m.url }
      collectgarbage("collect")
      collectgarbage("stop")
      closed:close()
      local left, seen = 0, 0
      for _, r in ipairs(regions) do
        mem:seek("set", r[1])
        local data = mem:read(r[2])
        if data then
          left = left + copies(data, key)
          seen = seen + copies(data, kept)
        end
      end
      collectgarbage("restart")
      mem:close()
      open:close()
      if seen < 3 then return pending("the probe cannot see this allocator's heap") end
      assert.equals(0, left)
    end)
  end)

  describe("requests", function()
    it("a GET carries no body: call raises instead of sending a POST", function()
      assert.has_error(function() c:call("GET", "/api/v1/chat/credit", { a = 1 }) end)
      assert.has_error(function() c:call_start("GET", "/api/v1/chat/credit", { a = 1 }) end)
      assert(c:call("GET", "/api/v1/chat/credit"))
      local reqs = m:requests()
      assert.equals(1, #reqs)
      assert.equals("GET", reqs[1].method)
    end)

    it("an async request on a fresh connection goes out at the call, not at the next step", function()
      local id = c:create_task_start(REQ) -- a fresh client: no connection yet
      core.sleep(0.3)                     -- no step in between
      assert.equals(1, m:count(CREATE))
      local task = settle(c, id)
      assert.matches("^task_", task.taskId)
      id = c:get_task_start(task.taskId)  -- and on the kept-alive one
      core.sleep(0.3)
      assert.equals(1, m:count("/api/v1/jobs/recordInfo"))
      assert(settle(c, id))
    end)
  end)

  it("the step budget counts from the end of the wait, not from the call", function()
    -- 16 answers arrive together after 0.3 s; each round's first step that hands
    -- any out waited for them far longer than its 50 ms budget. Counted from the
    -- call, that budget is spent before the first socket: one answer per step.
    -- Counted from the wait's end, every answer ready by then is read (how many are
    -- ready when poll returns varies, so over ten rounds)
    local most = 0
    for _ = 1, 10 do
      local k = core.new{ api_key = KEY, base_url = m.url }
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = 0.3, times = 16 }
      for i = 1, 16 do k:get_task_start("t" .. i) end
      local done
      repeat
        local _, d = k:step(2000, 50)
        done = d
      until done
      if #done > most then most = #done end
      k:close()
    end
    assert.is_true(most > 1, "every step read a single answer")
  end)

  describe("Retry-After", function()
    local function retry_after(value)
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "rate_limit", retry_after = value }
      local _, e = c:get_task("t")
      assert.equals("rate_limited", e.kind)
      return e.retry_after
    end
    local function http_date(fmt, offset)
      return os.date("!" .. fmt, os.time() + offset)
    end

    it("reads delta-seconds: digits only", function()
      assert.equals(120, retry_after("120"))
      assert.equals(0, retry_after("0"))
      assert.equals(7, retry_after("007"))
      assert.is_true(retry_after("99999999999999999999") >= 2 ^ 31 - 1) -- the most it can say
    end)

    it("refuses anything else a number parser would take", function()
      for _, v in ipairs({ "0x10", "1e3", "-7", "+7", "inf", "nan", "1.5", "12abc", "3 4", "soon" }) do
        assert.is_nil(retry_after(v), v)
      end
    end)

    it("reads the three HTTP-date forms, strictly", function()
      local function near(want, got) return got and math.abs(got - want) <= 2 end
      assert.is_true(near(30, retry_after(http_date("%a, %d %b %Y %H:%M:%S GMT", 30))))
      assert.is_true(near(40, retry_after(http_date("%A, %d-%b-%y %H:%M:%S GMT", 40))))
      local asctime = http_date("%a %b %d %H:%M:%S %Y", 50):gsub("^(%a+ %a+ )0", "%1 ")
      assert.is_true(near(50, retry_after(asctime)))
      assert.equals(0, retry_after(http_date("%a, %d %b %Y %H:%M:%S GMT", -3600))) -- past
      for _, v in ipairs({ "Wed, 21 Foo 2015 07:28:00 GMT", "Wed, 21 Oct 2015 24:00:00 GMT",
        "Wed, 21 Oct 2015 07:28:00 CET", "Sun, 29 Feb 2015 00:00:00 GMT", "Wed, 21 Oct 2015",
        "21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT junk" }) do
        assert.is_nil(retry_after(v), v)
      end
    end)
  end)

  describe("a create on a kept-alive connection that dies after reading it", function()
    it("is sent once and is unknown_outcome (blocking)", function()
      c:get_task("warm") -- not_found is an answer: the connection is kept alive
      m:fault{ path = CREATE, fault = "close_after_read" }
      local r, e = c:create_task(REQ)
      assert.is_nil(r)
      assert.equals("unknown_outcome", e.kind)
      assert.equals(1, m:count(CREATE))
    end)

    it("is sent once and is unknown_outcome (async)", function()
      local id = c:get_task_start("warm")
      settle(c, id)
      m:fault{ path = CREATE, fault = "close_after_read" }
      local r, e = settle(c, c:create_task_start(REQ))
      assert.is_nil(r)
      assert.equals("unknown_outcome", e.kind)
      assert.equals(1, m:count(CREATE))
    end)

    it("reuses the kept-alive connection like every other call", function()
      c:get_task("warm")
      assert(c:create_task(REQ))
      c:get_task("again")
      assert(c:create_task(REQ))
      assert.equals(4, m:count())
      assert.equals(1, m:connections())
    end)

    it("is sent once on the second of two kept-alive connections (async, 2 in flight)", function()
      -- steps until every id is handed out; their results, by id
      local function settle_all(ids)
        local left, out = #ids, {}
        for _ = 1, 2000 do
          local _, done = c:step(10)
          for _, d in ipairs(done or {}) do out[d] = { c:result(d) }; left = left - 1 end
          if left == 0 then return out end
        end
        error("transfers never finished")
      end
      -- two reads in flight at once (slow answers: a fast build may otherwise read the
      -- first before the second starts, and reuse its connection) open two connections
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = 0.3, times = 2 }
      settle_all{ c:get_task_start("warm 1"), c:get_task_start("warm 2") }
      assert.equals(2, m:connections())
      m:fault{ path = CREATE, fault = "close_after_read", times = 2 }
      local x, y = c:create_task_start(REQ), c:create_task_start(REQ)
      local out = settle_all{ x, y }
      for _, id in ipairs{ x, y } do
        assert.is_nil(out[id][1])
        assert.equals("unknown_outcome", out[id][2].kind)
      end
      assert.equals(2, m:count(CREATE))
    end)
  end)
end)
