-- Garbage collection: nothing of ours keeps a client, a core client, an async handle
-- or a spawned task alive once the caller has closed or dropped it, and the
-- collector closes a client nobody closed (its sockets are released).
-- Probes are weak tables: an entry that survives full collections is a leak.
local kie = require "kie"
local core = require "kie.core"

local KEY = "sk-gc-spec-6a1f"

local function collect()
  for _ = 1, 4 do collectgarbage("collect") end
end

local function weak()
  return setmetatable({}, { __mode = "v" })
end

-- Open file descriptors of this process (Linux), or nil where /proc is missing.
local function fds()
  local p = io.popen("ls /proc/self/fd 2>/dev/null | wc -l")
  if not p then return nil end
  -- the ls counts its own descriptors: the same number on every call, so differences hold
  local n = tonumber(p:read("*a"))
  p:close()
  if not n or n == 0 then return nil end
  return n
end

local function linux()
  local f = io.open("/proc/self/status", "r")
  if f then f:close() return true end
  return false
end

describe("garbage collection #gc", function()
  local m
  local REQ = { model = "ideogram/v3-reframe",
    input = { image_url = "https://example.com/gc.png", image_size = "square_hd" } }

  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.01 }
  end)
  lazy_teardown(function()
    m:stop()
  end)

  local function new_client()
    return kie.new{ api_key = KEY, base_url = m.url, timeout = 5,
      rate_limits = { create = false, poll = false } }
  end

  it("a closed client and its core client are collectable", function()
    local probe = weak()
    do
      local c = new_client()
      assert(c:create_task(REQ))
      probe.client, probe.core = c, c._core
      c:close()
    end
    collect()
    assert.is_nil(probe.client)
    assert.is_nil(probe.core)
  end)

  it("a bare core client is collectable after close and after a plain drop", function()
    local probe = weak()
    do
      local a = core.new{ api_key = KEY, base_url = m.url }
      local b = core.new{ api_key = KEY, base_url = m.url }
      assert(a:get_task("nope") == nil) -- one transfer each, so their caches hold something
      assert(b:get_task("nope") == nil)
      a:close()
      probe.a, probe.b = a, b
    end
    collect()
    assert.is_nil(probe.a)
    assert.is_nil(probe.b)
  end)

  it("async handles, their tasks and coroutines are collectable once done and dropped", function()
    local probe = weak()
    local c = new_client()
    local done = 0
    do
      local h1 = c:create_task_async(REQ, function(task) if task then done = done + 1 end end)
      local h2 = c:get_task_async("missing-task", function(_, err) if err then done = done + 1 end end)
      local h3 = kie.spawn(function() return c:credits() end)
      probe.h1, probe.h2, probe.h3 = h1, h2, h3
      probe.t1, probe.t3 = h1._co, h3._co -- their coroutines
      while not (h1:done() and h2:done() and h3:done()) do c:step(50) end
      assert.is_number((h3:result()))
    end
    while c:step(0) > 0 do end
    assert.equals(2, done)
    collect()
    for k in pairs({ h1 = 1, h2 = 1, h3 = 1, t1 = 1, t3 = 1 }) do
      assert.is_nil(probe[k], k .. " is still reachable")
    end
    c:close()
  end)

  it("a canceled handle is collectable", function()
    local probe = weak()
    local c = new_client()
    do
      local h = c:get_task_async("t-cancel", function() end)
      probe.h, probe.t = h, h._co -- its coroutine
      assert.is_true(h:cancel())
    end
    while c:step(0) > 0 do end
    collect()
    assert.is_nil(probe.h)
    assert.is_nil(probe.t)
    c:close()
  end)

  it("a client dropped with transfers and spawned tasks in flight is collected whole", function()
    local probe = weak()
    do
      local c = new_client()
      probe.client, probe.core = c, c._core
      probe.h1 = c:create_task_async(REQ, function() end)
      probe.h2 = kie.spawn(function() return c:wait("never-finishes", { timeout = 60 }) end)
      probe.t2 = probe.h2._co -- its coroutine
      c:step(0)
    end
    collect()
    for k in pairs({ client = 1, core = 1, h1 = 1, h2 = 1, t2 = 1 }) do
      assert.is_nil(probe[k], k .. " is still reachable")
    end
  end)

  it("the collector closes a client that was never closed: its sockets are released", function()
    if not linux() then return pending("needs /proc/self/fd") end
    collect()
    local before = fds()
    do
      local c = new_client()
      assert(c:create_task(REQ))
      assert(c:credits())
      -- a kept-alive connection (and the client's wakeup pipe) are open now
      assert.is_true(fds() > before)
    end
    collect()
    assert.equals(before, fds())
  end)

  it("a core client closed explicitly survives a later __gc (close is idempotent)", function()
    if not linux() then return pending("needs /proc/self/fd") end
    collect()
    local before = fds()
    do
      local c = core.new{ api_key = KEY, base_url = m.url }
      assert(c:call("GET", "/api/v1/chat/credit"))
      c:close()
      assert.equals(before, fds())
      assert.has_error(function() c:call("GET", "/api/v1/chat/credit") end, "kie.core: the client is closed")
    end
    collect() -- __gc runs close a second time
    assert.equals(before, fds())
  end)

  it("many clients made and dropped do not accumulate memory", function()
    collect()
    local base = collectgarbage("count")
    for _ = 1, 200 do
      local c = new_client()
      c:get_task_async("t", function() end)
      if _ % 2 == 0 then c:close() end
    end
    collect()
    assert.is_true(collectgarbage("count") - base < 256, "Lua heap grew by "
      .. (collectgarbage("count") - base) .. " KiB")
  end)
end)
