-- Fleet mode, one process: the `fleet` option, pacing shared through a real
-- redis-server (kie.fleet), Redis down, Redis without its data, arrival order.
local kie = require "kie"
local fleet = require "kie.fleet"
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local core = require "kie.core"

local KEY = "sk-fleet-spec"
local CREATE = "/api/v1/jobs/createTask"
local LIMIT = { limit = 3, window = 1 }

local function request(i)
  return { model = "ideogram/character",
    input = { prompt = "fleet " .. i, reference_image_urls = { "https://example.com/ref.png" } } }
end

local names = 0
local function fresh_name()
  names = names + 1
  return "spec" .. names .. "-" .. math.random(1, 1e9)
end

describe("fleet mode: option and pacing shared through Redis #fleet #integration", function()
  local m, srv

  lazy_setup(function()
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0, account_limit = { create = LIMIT, poll = LIMIT } }
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
  end)
  before_each(function() m:reset() end)

  local function client(name, extra)
    local o = { api_key = KEY, base_url = m.url, timeout = 5, max_retries = 0,
      rate_limits = { create = LIMIT, poll = false } }
    if name then o.fleet = { redis = srv.url, name = name } end
    for k, v in pairs(extra or {}) do o[k] = v end
    return kie.new(o)
  end

  local function over_limit() return m:over_limit(CREATE) end

  it("checks the option: redis and name required, unknown fields raise (kie.ngx alike)", function()
    assert.has_error(function() kie.new{ api_key = KEY, fleet = { redis = srv.url } } end,
      "kie.new: option 'fleet': field 'name' is required")
    assert.has_error(function() kie.new{ api_key = KEY, fleet = { name = "x" } } end,
      "kie.new: option 'fleet': field 'redis' is required")
    assert.has_error(function() kie.new{ api_key = KEY, fleet = { redis = srv.url, name = "x", nmae = 1 } } end,
      "kie.new: option 'fleet': unknown field 'nmae'")
    assert.has_error(function() kie.new{ api_key = KEY, fleet = { redis = srv.url, name = 7 } } end,
      "kie.new: option 'fleet': field 'name' must be a string, got number")
    assert.has_error(function() kie.new{ api_key = KEY, fleet = { redis = srv.url, name = "x", timeout = 0 } } end,
      "kie.new: option 'fleet': field 'timeout' must be a number of seconds in (0, 86400]")
    assert.has_error(function() kie.new{ api_key = KEY, fleet = { redis = "http://x", name = "x" } } end)
    assert.has_error(function() kie.new{ api_key = KEY, fleet = "redis://127.0.0.1" } end,
      "kie.new: option 'fleet' must be a table, got string")
    -- kie.ngx takes the same option (checked alike; Redis over cosockets, spec/ngx_fleet_spec.lua)
    local kngx = require "kie.ngx"
    kngx.new{ api_key = KEY, fleet = { redis = srv.url, name = "x" } }:close()
    assert.has_error(function() kngx.new{ api_key = KEY, fleet = { redis = srv.url } } end,
      "kie.ngx.new: option 'fleet': field 'name' is required")
    assert.has_error(function() kngx.new{ api_key = KEY, fleet = { redis = srv.url, name = "x" },
      shared_dict = "d" } end)
    assert.has_error(function() kngx.new{ api_key = KEY, shared_dict = "d" } end,
      "kie.ngx.new: option 'shared_dict' works only inside nginx (ngx_lua)")
  end)

  it("without fleet, kie.fleet and kie.redis are never loaded", function()
    local script = procs.tmpname(".lua")
    require("spec.support.util").write_file(script, [[
      local kie = require "kie"
      local c = kie.new{ api_key = "k", base_url = "http://127.0.0.1:1" }
      c:close()
      print(package.loaded["kie.fleet"] == nil and package.loaded["kie.redis"] == nil and "clean" or "loaded")
    ]])
    local p = io.popen(procs.lua_command(script) .. " 2>&1")
    local out = p:read("*a")
    p:close()
    os.remove(script)
    assert.equals("clean\n", out)
  end)

  it("two clients of one fleet share the budget: no 429; two alone overshoot (control)", function()
    local function run(a, b)
      m:reset()
      local errs = 0
      for i = 1, 8 do
        local _, err = ((i % 2 == 0) and a or b):create_task(request(i))
        if err then errs = errs + 1 end
      end
      a:close()
      b:close()
      return errs
    end
    local name = fresh_name()
    assert.equals(0, run(client(name), client(name)))
    assert.equals(8, m:count(CREATE))
    assert.equals(0, over_limit())
    local errs = run(client(nil), client(nil))  -- each alone: 3 + 3 go in the first second
    assert.is_true(errs > 0, "two unshared limiters never overshot")
    assert.equals(errs, over_limit())
  end)

  it("reads share the poll budget the same way (control: alone, they overshoot)", function()
    local function run(a, b)
      m:reset() -- forgets tasks too
      local task = assert(kie.new{ api_key = KEY, base_url = m.url, rate_limits = { create = false } }
        :create_task(request("read")))
      local errs = 0
      for i = 1, 8 do
        local _, err = ((i % 2 == 0) and a or b):get_task(task.taskId)
        if err then errs = errs + 1 end
      end
      a:close()
      b:close()
      local over = 0
      for _, r in ipairs(m:requests("/api/v1/jobs/recordInfo")) do
        if r.fault == "account_limit" then over = over + 1 end
      end
      return errs, over
    end
    local name = fresh_name()
    local limits = { poll = LIMIT, create = false }
    local errs, over = run(client(name, { rate_limits = limits }), client(name, { rate_limits = limits }))
    assert.equals(0, errs)
    assert.equals(0, over)
    errs, over = run(client(nil, { rate_limits = limits }), client(nil, { rate_limits = limits }))
    assert.is_true(over > 0, "two unshared read limiters never overshot")
    assert.equals(errs, over)
  end)

  it("a slot never released (its process died) stops counting after its lease", function()
    local name = fresh_name()
    local base = require("kie.ratelimit").new{ limit = 1, window = 0.2, margin = 0, hold = 0.5 }
    local f1, f2 = fleet.open{ redis = srv.url, name = name }, fleet.open{ redis = srv.url, name = name }
    local l1, l2 = f1:limiter("create", base), f2:limiter("create", base)
    local env = { now = core.now, sleep = core.sleep }
    l1:release(assert(l1:acquire(env))) -- past the fleet's first window
    local t0 = core.now()
    assert(l1:acquire(env))             -- held, never released
    local slot, wait = l2:acquire(env, t0 + 0.3)
    assert.is_nil(slot)                 -- held: not before the deadline
    assert.is_true(wait > 0)
    slot = l2:acquire(env, core.now() + 5)
    assert.is_string(slot, "the dead slot was never freed")
    assert.is_true(core.now() - t0 >= 0.5 + 0.2, "freed before lease + window")
    f1:close()
    f2:close()
  end)

  it("an acquire Redis ran after its caller gave up (frozen, then let go) holds nothing: "
    .. "the caller's next acquire drops it", function()
    local name = fresh_name()
    local base = require("kie.ratelimit").new{ limit = 1, window = 0.2, margin = 0, hold = 30 }
    local f = fleet.open{ redis = srv.url, name = name, timeout = 0.3, connect_timeout = 0.3 }
    local lim = f:limiter("create", base)
    local env = { now = core.now, sleep = core.sleep }
    lim:release(assert(lim:acquire(env))) -- past the fleet's first window (and the script cached)
    core.sleep(0.25)
    srv:freeze()
    local slot, err = lim:acquire(env)
    srv:thaw()
    assert.is_nil(slot)
    assert.equals("fleet", err.kind)
    assert.is_true(err.retryable)
    assert.matches("no answer within 0.3 s", err.message, 1, true)
    core.sleep(0.1) -- Redis runs what it got meanwhile: the only slot, held for 30 s
    slot = lim:acquire(env, core.now() + 1)
    assert.is_string(slot, "a slot Redis granted to nobody is still held")
    f:close()
  end)

  it("client:close closes its Redis connection", function()
    local probe = assert(require("kie.redis").connect(srv.url))
    local function clients()
      return tonumber(probe:call("INFO", "clients"):match("connected_clients:(%d+)"))
    end
    local function settle(want) -- Redis takes closes in on its next loop turn
      local deadline = core.now() + 5
      while clients() ~= want and core.now() < deadline do core.sleep(0.01) end
      return clients()
    end
    collectgarbage()
    collectgarbage()
    local before = settle(clients())
    local c = client(fresh_name())
    assert(c:create_task(request("close")))
    assert.equals(before + 1, clients())
    c:close()
    assert.equals(before, settle(before))
    probe:close()
  end)

  it("Redis unreachable: kind fleet (retryable) and nothing sent", function()
    local port = require("spec.support.util").free_port()
    local c = kie.new{ api_key = KEY, base_url = m.url, max_retries = 2,
      retry = { base = 0.01, cap = 0.02 },
      fleet = { redis = "redis://127.0.0.1:" .. port .. "/0", name = fresh_name() } }
    local t, err = c:create_task(request("down"))
    assert.is_nil(t)
    assert.equals("fleet", err.kind)
    assert.is_true(err.retryable)
    assert.equals(3, err.attempts)
    assert.matches("nothing was sent", err.message)
    local info, rerr = c:get_task("task-x")
    assert.is_nil(info)
    assert.equals("fleet", rerr.kind)
    assert.equals(0, m:count())
    c:close()
  end)

  it("a fleet Redis has no record of (new, or restarted without its data) counts the window as full", function()
    local name = fresh_name()
    local c = client(name)
    local t0 = core.now()
    assert(c:create_task(request("first")))
    local first = core.now() - t0
    assert.is_true(first >= LIMIT.window, "the first create of a new fleet went after " .. first .. " s")
    assert(c:create_task(request("second")))  -- the window is known now: at once
    assert.is_true(core.now() - t0 < first + 0.9, "the second create waited for a window")
    srv:restart()
    t0 = core.now()
    assert(c:create_task(request("after restart")))
    local after = core.now() - t0
    assert.is_true(after >= LIMIT.window, "the first create after the data loss went after " .. after .. " s")
    assert.equals(0, over_limit())
    c:close()
  end)

  it("serves waiters in arrival order, whichever asks again first", function()
    local name = fresh_name()
    local f1, f2 = fleet.open{ redis = srv.url, name = name }, fleet.open{ redis = srv.url, name = name }
    local base = require("kie.ratelimit").new{ limit = 1, window = 0.3, margin = 0, hold = 5 }
    local l1, l2 = f1:limiter("create", base), f2:limiter("create", base)
    local env = { now = core.now, sleep = function() coroutine.yield() end }
    -- the fleet's first window (no record yet) and one slot in use
    local blocking = { now = core.now, sleep = core.sleep }
    l1:release(assert(l1:acquire(blocking)))
    local got, waiters = {}, {}
    for i, lim in ipairs{ l1, l2, l1, l2 } do
      waiters[i] = coroutine.create(function()
        local slot = assert(lim:acquire(env))
        got[#got + 1] = i
        lim:release(slot)
      end)
      coroutine.resume(waiters[i]) -- takes its ticket now, in this order
      core.sleep(0.01)
    end
    local deadline = core.now() + 5
    while #got < 4 and core.now() < deadline do
      for i = 4, 1, -1 do -- the later waiters ask first
        if coroutine.status(waiters[i]) == "suspended" then assert(coroutine.resume(waiters[i])) end
      end
      core.sleep(0.005)
    end
    assert.same({ 1, 2, 3, 4 }, got)
    f1:close()
    f2:close()
  end)
end)
