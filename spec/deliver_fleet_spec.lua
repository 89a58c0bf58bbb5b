-- client:deliver with a fleet: a callback taken by one process ends the waits on
-- its task in other processes (coroutine and blocking waits), a wait that starts
-- after its callback sees it, callbacks lost on the way are made up by polls
-- placed after the model's learned run time, and every task ends with few reads.
-- Real redis-server and the mock on 127.0.0.1; the waits run in child processes.
local kie = require "kie"
local core = require "kie.core"
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local socket = require "socket"

local KEY = "sk-wake-spec"
local HMAC = "wake-hmac-key"
local INFO = "/api/v1/jobs/recordInfo"

describe("client:deliver across a fleet #fleet #integration", function()
  local m, srv
  local names = 0

  lazy_setup(function()
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0.1, hmac_key = HMAC }
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
  end)
  before_each(function() m:reset() end)

  local function fresh_name()
    names = names + 1
    return "wake" .. names .. "-" .. math.random(1, 1e9)
  end

  local function client(name)
    return kie.new{ api_key = KEY, base_url = m.url, timeout = 5, fleet = { redis = srv.url, name = name },
      rate_limits = { create = false, poll = { limit = 10, window = 1 } } }
  end

  local function create(c, n)
    local ids = {}
    for i = 1, n do
      local t = assert(c:create_task{ model = "ideogram/character", callBackUrl = m.url .. "/_mock/callback_sink",
        input = { prompt = "wake " .. i, reference_image_urls = { m.url .. "/files/ref.png" } } })
      ids[i] = t.taskId
    end
    return ids
  end

  -- starts a waiting child; returns {pid, out}
  local function child(name, mode, ids, timeout)
    local out, err = procs.tmpname(".out"), procs.tmpname(".err")
    local args = { m.url, srv.url, name, mode, tostring(timeout or 20) }
    for _, id in ipairs(ids) do args[#args + 1] = id end
    local pid = procs.spawn(procs.lua_command("spec/support/wake_child.lua", args), out, err)
    return { pid = pid, out = out, err = err }
  end

  -- the receiver: delivers every callback the mock's sink got, until `done()`;
  -- returns task id -> wall time it was delivered
  local function receive(c, done, seconds)
    local delivered, n = {}, 0
    local stop = socket.gettime() + seconds
    while not done() and socket.gettime() < stop do
      local cbs = m:callbacks()
      for i = n + 1, #cbs do
        local ev = assert(c:deliver(cbs[i].body, cbs[i].headers, { hmac_key = HMAC }))
        delivered[ev.task_id] = socket.gettime()
      end
      n = #cbs
      socket.sleep(0.02)
    end
    return delivered
  end

  local function results(kid)
    local got, ended = {}, false
    for line in (procs.read_file(kid.out) or ""):gmatch("[^\n]+") do
      local id, state, t = line:match("^done (%S+) (%S+) (%S+)$")
      if id then got[id] = { state = state, at = tonumber(t) } end
      if line == "end" then ended = true end
    end
    return got, ended
  end

  local function reads()
    local per = {}
    for _, r in ipairs(m:requests(INFO)) do
      local id = type(r.query) == "table" and r.query.taskId
      if id then per[id] = (per[id] or 0) + 1 end
    end
    return per
  end

  -- a callback of another task delivered: the fleet takes callbacks
  local function taking_callbacks(c)
    local id = "task_ideogram_17651799229110007"
    local body = '{"code":200,"msg":"ok","data":{"taskId":"' .. id .. '","state":"success"}}'
    assert(c:deliver(body, require("kie.callback").sign(HMAC, id, os.time()), { hmac_key = HMAC }))
  end

  -- one task waited on and delivered here: the fleet learns the model's run time
  local function warm_up(c)
    local id = create(c, 1)[1]
    local h = kie.spawn(function() return c:wait(id, { timeout = 20 }) end)
    local cbs = m:wait_callbacks(1, 5)
    assert(c:deliver(cbs[1].body, cbs[1].headers, { hmac_key = HMAC }))
    while not h:done() do c:step(10) end
    assert.equal("success", (h:result()).state)
    m:reset()
  end

  it("a callback delivered here ends the waits in other processes, each with one read", function()
    -- no run time known yet: without the callback, no wait would poll before
    -- schedule.cold_callback (30 s), past the children's timeout (10 s)
    local name = fresh_name()
    local c = client(name)
    taking_callbacks(c)
    local ids = create(c, 6)
    local a = child(name, "spawn", { ids[1], ids[2], ids[3] }, 10)
    local b = child(name, "block", { ids[4], ids[5], ids[6] }, 10)
    local delivered = receive(c, function()
      local _, ea = results(a)
      local _, eb = results(b)
      return ea and eb
    end, 20)
    for _, kid in ipairs{ a, b } do
      local got, ended = results(kid)
      assert.is_true(ended, procs.read_file(kid.err))
      for id, r in pairs(got) do
        assert.equal("success", r.state)
        assert.is_truthy(delivered[id])
      end
    end
    local per = reads()
    for _, id in ipairs(ids) do assert.equal(1, per[id], id) end
    c:close()
  end)

  it("Redis unreachable: deliver answers kind fleet, a wait ends with a typed error (no raise, no hang)", function()
    local callback = require "kie.callback"
    local url = "redis://127.0.0.1:" .. procs.closed_port() .. "/0"
    for _, spawned in ipairs{ false, true } do
      local c = kie.new{ api_key = KEY, base_url = m.url, timeout = 5, max_retries = 1,
        fleet = { redis = url, name = fresh_name(), timeout = 0.2, connect_timeout = 0.2 } }
      local id = "task_ideogram_1765179922911000" .. (spawned and 1 or 2)
      local body = '{"code":200,"msg":"ok","data":{"taskId":"' .. id .. '","state":"success"}}'
      local ev, err = c:deliver(body, callback.sign(HMAC, id, os.time()), { hmac_key = HMAC })
      assert.is_nil(ev)
      assert.equal("fleet", err.kind)
      assert.is_true(err.retryable)
      -- one naming a journal intent or a batch item (as every fleet create with a
      -- callBackUrl does): the same kind, worth a 5xx so that kie.ai sends it again
      for _, tag in ipairs{ "kie_intent=intent_1_ab:1", "kie_batch=kb:b1:1:w" } do
        local param = core.encode{ model = "ideogram/character", callBackUrl = "https://h/cb?" .. tag }
        local tagged = core.encode{ code = 200, msg = "ok", data = { taskId = id, state = "success",
          param = param } }
        ev, err = c:deliver(tagged, callback.sign(HMAC, id, os.time()), { hmac_key = HMAC })
        assert.is_nil(ev)
        assert.equal("fleet", err.kind, tostring(err))
        assert.is_true(err.retryable)
      end
      local info, werr
      if spawned then
        local h = kie.spawn(function() return c:wait(id, { timeout = 1 }) end)
        local stop = socket.gettime() + 10
        while not h:done() and socket.gettime() < stop do c:step(10) end
        assert.is_true(h:done())
        info, werr = h:result()
      else
        info, werr = c:wait(id, { timeout = 1 })
      end
      assert.is_nil(info)
      assert.is_truthy(werr.kind == "fleet" or (werr.kind == "deadline" and werr.last_error.kind == "fleet"),
        tostring(werr))
      c:close()
    end
  end)

  it("a wait that starts after its task's callback was delivered ends with one read", function()
    local name = fresh_name()
    local c = client(name)
    local ids = create(c, 2)
    local cbs = m:wait_callbacks(2, 5)
    for _, cb in ipairs(cbs) do assert(c:deliver(cb.body, cb.headers, { hmac_key = HMAC })) end
    local kid = child(name, "block", ids, 10) -- (cold: no poll before 30 s)
    procs.wait_for(kid.out, "\nend", 15)
    local got, ended = results(kid)
    assert.is_true(ended, procs.read_file(kid.err))
    for _, id in ipairs(ids) do assert.equal("success", got[id].state) end
    local per = reads()
    for _, id in ipairs(ids) do assert.equal(1, per[id]) end
    c:close()
  end)

  it("with callbacks lost, every task ends, polled after the learned run time (few reads each)", function()
    local name = fresh_name()
    local c = client(name)
    warm_up(c)
    m:config{ callback_drop_rate = 0.3 }
    local ids = create(c, 16)
    local a = child(name, "spawn", { (table.unpack or unpack)(ids, 1, 8) })
    local b = child(name, "spawn", { (table.unpack or unpack)(ids, 9, 16) })
    local delivered = receive(c, function()
      local _, ea = results(a)
      local _, eb = results(b)
      return ea and eb
    end, 25)
    m:config{ callback_drop_rate = 0 }
    local done, total = 0, 0
    for _, kid in ipairs{ a, b } do
      local got, ended = results(kid)
      assert.is_true(ended, procs.read_file(kid.err))
      for _, r in pairs(got) do
        assert.equal("success", r.state)
        done = done + 1
      end
    end
    assert.equal(#ids, done)
    local per = reads()
    for _, id in ipairs(ids) do
      total = total + per[id]
      -- a delivered task: one read; a lost callback: a poll after the run time
      if delivered[id] then assert.equal(1, per[id]) else assert.is_true(per[id] <= 2) end
    end
    assert.is_true(total <= 2 * #ids)
    c:close()
  end)
end)
