-- The life of a call (kie.lifecycle): cancel, close, step's errors and budget,
-- run_all items and their cancellation, and a create canceled after it was sent.
-- The real core against the mock, and kie.testing (a virtual clock) for timers.
local kie = require "kie"
local core = require "kie.core"
local mock = require "spec.support.mock"
local testing = require "kie.testing"

local KEY = "sk-lifecycle-spec-5d21"
local CREATE = "/api/v1/jobs/createTask"
local REQ = {
  model = "ideogram/v3-reframe",
  input = { image_url = "https://example.com/a.png", image_size = "landscape_16_9" },
}
local BAD_REQ = { model = "ideogram/v3-reframe" } -- input is missing
local FAST_WAIT = { interval = 0.05, max_interval = 0.1, timeout = 30 }

-- Steps `c` until pred() is true; raises after `seconds` (10).
local function pump(c, pred, seconds)
  local deadline = core.now() + (seconds or 10)
  while not pred() do
    if core.now() > deadline then error("pump: timed out", 2) end
    c:step(10)
  end
end

-- finished transfers a step budget left queued (the client's run queue)
local function queued(cl)
  local q, n = cl._runq, 0
  for i = q.head, q.tail do
    if type(q[i]) == "number" then n = n + 1 end
  end
  return n
end

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

describe("lifecycle of a call", function()
  local m, c

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.02 }
  end)
  lazy_teardown(function()
    if m then m:stop() end
  end)

  local function new_client(extra)
    local o = { api_key = KEY, base_url = m.url, timeout = 10,
      rate_limits = { create = false, poll = false } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return kie.new(o)
  end

  before_each(function()
    m:reset()
    c = new_client()
  end)
  after_each(function()
    if c then c:close() end
  end)

  describe("cancel after the answer arrived", function()
    it("a call whose answer is queued by the step budget: step never raises", function()
      local fake = testing.new{ latency = 1 }
      local fc = fake:client{ rate_limits = { create = false, poll = false } }
      local task = assert(fc:create_task(REQ))
      local calls, kinds, hs = {}, {}, {}
      for i = 1, 4 do
        hs[i] = fc:get_task_async(task.taskId, function(_, err)
          calls[i] = (calls[i] or 0) + 1
          kinds[i] = err and err.kind or "ok"
        end)
      end
      fake:advance(2) -- every answer is in; a zero budget hands over one per step
      fc:step(0, 0)
      assert.is_true(queued(fc) >= 1)
      for i = 1, 4 do hs[i]:cancel() end
      for _ = 1, 10 do assert.has_no.errors(function() fc:step(0) end) end
      assert.equals(0, fc:step(0))
      local n = 0
      for i = 1, 4 do
        assert.equals(1, calls[i])
        if kinds[i] == "canceled" then n = n + 1 end
      end
      assert.is_true(n >= 3, "the queued calls end canceled")
      fc:close()
    end)

    it("a coroutine canceling another whose answer came in the same step: step never raises", function()
      local fake = testing.new{ latency = 1 }
      local fc = fake:client{ rate_limits = { create = false, poll = false } }
      local task = assert(fc:create_task(REQ))
      local ha, hb
      ha = kie.spawn(function()
        local info = fc:get_task(task.taskId)
        hb:cancel()
        return info
      end)
      hb = kie.spawn(function()
        local info = fc:get_task(task.taskId)
        ha:cancel()
        return info
      end)
      fake:advance(2) -- both answers are in when the step looks
      for _ = 1, 5 do assert.has_no.errors(function() fc:step(0, math.huge) end) end
      assert.is_true(ha:done() and hb:done())
      local ka = select(2, ha:result()) -- exactly one was canceled by the other
      local kb = select(2, hb:result())
      assert.is_true((ka == nil) ~= (kb == nil))
      assert.equals(0, fc:step(0))
      fc:close()
    end)
  end)

  describe("cancel from a callback", function()
    it("the canceled call's callback is called in the same step", function()
      local fake = testing.new{ latency = 1, pace = 1000 }
      local fc = fake:client{ rate_limits = { create = false, poll = false } }
      local id = assert(fc:create_task(REQ)).taskId
      local got = {}
      local hb = fc:wait_async(id, { interval = 60, timeout = 600 }, function(_, err) got.b = err end)
      fc:step(0, math.huge)
      fake:advance(2) -- b's first poll came back: it sleeps on a timer now
      fc:step(0, math.huge)
      fc:get_task_async(id, function(info) got.a = info hb:cancel() end)
      fake:advance(2)
      assert.equals(0, fc:step(0, math.huge))
      assert.is_table(got.a)
      assert.equals("canceled", got.b and got.b.kind)
      fc:close()
    end)
  end)

  describe("a step cut short by an error of the core", function()
    it("leaves no state behind: a later cancel's callback still comes from the next step", function()
      local fake = testing.new{ latency = 1 }
      local fc = fake:client{ rate_limits = { create = false, poll = false } }
      fc:get_task_async("task-a", function() end)
      fake:advance(0.5)
      local got
      local h2 = fc:get_task_async("task-b", function(_, err) got = err end)
      fake:advance(0.6) -- the first answered, the second not yet
      local core_h = fc._core
      local real = core_h.result
      core_h.result = function() core_h.result = real error("broken core") end
      assert.has_error(function() fc:step(0, math.huge) end, "broken core")
      assert.is_true(h2:cancel())
      fc:step(0, math.huge)
      assert.equals("canceled", got and got.kind)
      fc:close()
    end)
  end)

  describe("a step cut short after the core reported finished transfers (Ctrl-C)", function()
    it("requeue queues them again: the next step hands them over", function()
      local lifecycle = require "kie.lifecycle"
      local got
      c:get_task_async("task_nope", function(_, e) got = e end)
      -- the core reports the transfer finished to a step that never queues it: the
      -- interpreter's "interrupted!" is raised as core:step returns
      local ids
      for _ = 1, 500 do
        local _, r = c._core:step(10)
        if r then ids = r break end
      end
      assert.equals(1, #ids)
      for _ = 1, 3 do c:step(0) end
      assert.is_nil(got)
      assert.equals(1, lifecycle.requeue(c))
      assert.equals(0, lifecycle.requeue(c)) -- queued once
      c:step(0)
      assert.equals("not_found", got.kind)
      assert.equals(0, c:step(0))
    end)
  end)

  describe("close", function()
    it("inside a callback: the other callbacks fire once, later steps return 0", function()
      local task = assert(c:create_task(REQ))
      local calls = {}
      local N = 4
      for i = 1, N do
        c:get_task_async(task.taskId, function()
          calls[i] = (calls[i] or 0) + 1
          c:close()
        end)
      end
      local deadline = core.now() + 10
      while true do
        assert.is_true(core.now() < deadline, "timed out")
        local n
        assert.has_no.errors(function() n = c:step(10) end)
        if calls[1] or calls[2] or calls[3] or calls[4] then
          assert.equals(0, n)
          break
        end
      end
      for i = 1, N do assert.equals(1, calls[i], "callback " .. i) end
      for _ = 1, 3 do assert.equals(0, c:step(0)) end
      assert.is_nil(c:poll_timeout())
    end)

    it("with calls, sleeps and spawned jobs in flight: each ends exactly once", function()
      local id = assert(c:create_task(REQ)).taskId
      m:fault{ path = CREATE, fault = "delay", seconds = 1, times = -1 }
      local got = {}
      local function cb(name) return function(r, err)
        got[name] = got[name] or {}
        table.insert(got[name], err or r)
      end end
      local hc = c:create_task_async(REQ, cb("create"))
      local hg = c:get_task_async(id, cb("get"))
      local hw = c:wait_async(id, { interval = 30, timeout = 60 }, cb("wait"))
      local hs = kie.spawn(function() return c:wait(id, { interval = 30, timeout = 60 }) end)
      pump(c, function() return hg:done() end) -- the wait and the job now sleep on timers
      c:close()
      for _, h in ipairs { hc, hw, hs } do assert.is_true(h:done()) end
      assert.equals(1, #got.create) -- called by close itself
      assert.equals(1, #got.wait)
      assert.equals("unknown_outcome", select(2, hc:result()).kind)
      assert.is_string(select(2, hc:result()).fingerprint)
      assert.equals("closed", select(2, hc:result()).cause)
      assert.equals("canceled", select(2, hw:result()).kind)
      assert.equals("canceled", select(2, hs:result()).kind)
      assert.equals(0, c:step(0))
      assert.equals(0, c:step(10))
      assert.equals(1, #got.create)
      assert.equals(1, #got.get)
      assert.equals(1, #got.wait)
      assert.equals("canceled", got.wait[1].kind)
      assert.is_nil(c:poll_timeout())
      c:close() -- idempotent
    end)

    it("an async call on a closed client raises, as a blocking one does", function()
      c:close()
      assert.has_error(function() c:get_task_async("task-x", function() end) end, "kie: the client is closed")
      assert.has_error(function() c:get_task("task-x") end, "kie.core: the client is closed")
      assert.equals(0, c:step(0))
    end)

    it("a spawned job that closes its client and then sleeps (rate limiter) ends, never spins", function()
      -- LuaJIT keeps one hook for all coroutines: never leave it to later specs
      finally(function() debug.sethook() end)
      local fake = testing.new{}
      local fc = fake:client{ rate_limits = { create = { limit = 1, window = 60 }, poll = false } }
      local h = kie.spawn(function()
        debug.sethook(function() error("spins on the closed client") end, "", 1e7)
        assert(fc:create_task(REQ))
        fc:close()
        return fc:create_task(REQ) -- waits for the limiter: a sleep on a closed client
      end)
      for _ = 1, 3 do fc:step(0) end
      assert.is_true(h:done())
      local r, err = h:result()
      assert.is_nil(r)
      assert.equals("canceled", err.kind)
      assert.equals("closed", err.cause)
      assert.equals(1, #fake:requests("create_task"))
    end)

    it("keeps the task id of a create whose answer was read but not handed over", function()
      local fake = testing.new{ latency = 1 }
      local fc = fake:client{ rate_limits = { create = false, poll = false } }
      local errs = {}
      local h1 = fc:create_task_async(REQ, function(_, e) errs[1] = e end)
      local h2 = fc:create_task_async(REQ, function(_, e) errs[2] = e end)
      fake:advance(2)
      fc:step(0, 0) -- one answer handed over, the other queued
      assert.is_true(h1:done() ~= h2:done())
      local h = h1:done() and h2 or h1
      fc:close()
      local r, err = h:result()
      assert.is_nil(r)
      assert.equals("unknown_outcome", err.kind)
      assert.equals("closed", err.cause)
      assert.is_string(h.task_id)
      assert.equals(h.task_id, err.task_id)
      assert.equals(0, fc:step(0))
      assert.equals(err, errs[h == h1 and 1 or 2])
    end)

    it("a spawned job that closes its client gets errors, not a hang, from later calls", function()
      local h = kie.spawn(function()
        assert(c:create_task(REQ))
        c:close()
        return c:credits()
      end)
      pump(c, function() return h:done() end)
      local ok, r = pcall(h.result, h)
      assert.is_true(ok)
      assert.is_nil(r)
      assert.equals(0, c:step(0))
    end)
  end)

  describe("callback errors", function()
    it("step re-raises once, after every callback ran, with every error and its traceback", function()
      local ran = 0
      for i = 1, 3 do
        c:create_task_async(BAD_REQ, function()
          ran = ran + 1
          if i ~= 2 then error("callback " .. i .. " failed") end
        end)
      end
      local ok, err = pcall(c.step, c, 0, math.huge)
      assert.is_false(ok)
      assert.equals(3, ran)
      local s = tostring(err)
      assert.matches("callback 1 failed", s, 1, true)
      assert.matches("callback 3 failed", s, 1, true)
      assert.matches("stack traceback", s, 1, true)
      assert.equals(2, #err.errors)
      assert.equals(0, c:step(0))
    end)
  end)

  describe("step budget", function()
    it("covers deferred callbacks: a zero budget fires one per step; poll_timeout is 0 meanwhile", function()
      local fired = 0
      for _ = 1, 20 do c:create_task_async(BAD_REQ, function() fired = fired + 1 end) end
      local steps = 0
      while fired < 20 do
        local before = fired
        c:step(0, 0)
        steps = steps + 1
        assert.is_true(fired - before <= 1, "fired " .. (fired - before) .. " in one step")
        if fired < 20 then assert.equals(0, c:poll_timeout()) end
        assert.is_true(steps <= 40)
      end
      assert.equals(0, c:step(0))
    end)

    it("covers due timers: 100 sleeping coroutines are resumed at most one per step(0, 0)", function()
      local fake = testing.new{ pace = 1000 }
      local fc = fake:client{ rate_limits = { create = false, poll = false } }
      local id = assert(fc:create_task(REQ)).taskId
      local N = 100
      for _ = 1, N do
        kie.spawn(function() return fc:wait(id, { interval = 5, max_interval = 5, timeout = 3000 }) end)
      end
      while #fake:requests("get_task") < N do fc:step(0, math.huge) end -- first polls, then sleeps
      fc:step(0, math.huge)
      fake:advance(10) -- every timer is due
      local before = #fake:requests("get_task")
      fc:step(0, 0)
      assert.is_true(#fake:requests("get_task") - before <= 1)
      assert.equals(0, fc:poll_timeout())
      for _ = 1, 3 * N do fc:step(0, 0) end
      assert.equals(before + N, #fake:requests("get_task"))
      fc:close()
    end)
  end)

  describe("run_all", function()
    it("an item that raises ends with kind raised and its task id; the others go on", function()
      local reqs = {}
      for i = 1, 4 do reqs[i] = { model = REQ.model, input = REQ.input, wait = FAST_WAIT } end
      local results, errs = c:run_all(reqs, { concurrency = 1, on_update = function(i)
        if i == 2 then error("on_update of item 2 raised") end
      end })
      assert.is_table(errs)
      assert.equals("raised", errs[2].kind)
      assert.matches("on_update of item 2 raised", tostring(errs[2].message), 1, true)
      assert.is_string(errs[2].task_id)
      assert.is_nil(results[2])
      for _, i in ipairs { 1, 3, 4 } do
        assert.is_nil(errs[i])
        assert.equals("success", results[i].state)
      end
    end)

    it("a raising callback of another call on the client: the batch ends, then its error is raised"
      .. " with the results", function()
      local reqs = {}
      for i = 1, 3 do reqs[i] = { model = REQ.model, input = REQ.input, wait = FAST_WAIT } end
      local ran = 0
      -- an unrelated call whose answer (not_found) comes while run_all steps the client
      c:get_task_async("task_nope", function()
        ran = ran + 1
        error("the unrelated callback raised")
      end)
      local ok, err = pcall(c.run_all, c, reqs, { concurrency = 1 })
      assert.is_false(ok)
      assert.equals(1, ran)
      assert.equals("callback", err.kind)
      assert.equals(1, #err.errors)
      assert.matches("the unrelated callback raised", tostring(err.errors[1]), 1, true)
      assert.matches("the unrelated callback raised", tostring(err), 1, true)
      -- no item was dropped: every task made is in the results
      assert.equals(3, m:count(CREATE))
      assert.is_nil(err.errs)
      for i = 1, 3 do
        assert.equals("success", err.results[i].state)
        assert.is_string(err.results[i].taskId)
      end
      assert.equals(0, c:step(0))
    end)

    it("an item with a bad option: run_all raises before any request, inside kie.spawn too", function()
      -- everything is checked before anything is paid (checked_before_paid_spec)
      local reqs = {}
      for i = 1, 3 do reqs[i] = { model = REQ.model, input = REQ.input, wait = FAST_WAIT } end
      reqs[2] = { model = REQ.model, input = REQ.input, wait = { timout = 5 } }
      local h = kie.spawn(function() return c:run_all(reqs, { concurrency = 1 }) end)
      pump(c, function() return h:done() end)
      local results, err = h:result()
      assert.is_nil(results)
      assert.equals("raised", err.kind)
      assert.matches("request 2: wait: unknown option 'timout'", tostring(err.message), 1, true)
      assert.equals(0, m:count(CREATE))
    end)

    it("canceling a spawned run_all starts no further item and cancels the running ones", function()
      local reqs = {}
      for i = 1, 6 do reqs[i] = { model = REQ.model, input = REQ.input, wait = FAST_WAIT } end
      m:config{ pace = 20 } -- tasks stay unfinished: the items sit in wait
      local h = kie.spawn(function() return c:run_all(reqs, { concurrency = 2 }) end)
      pump(c, function() return m:count(CREATE) == 2 and c._core:pending() == 0 end)
      assert.is_true(h:cancel())
      assert.equals("canceled", select(2, h:result()).kind)
      for _ = 1, 20 do c:step(10) end
      assert.equals(2, m:count(CREATE))
      assert.equals(0, c:step(0))
      m:config{ pace = 0.02 }
    end)
  end)

  describe("a spawned run_all ended while its creates are in flight", function()
    -- the job ends canceled, and its error still tells of every item (results,
    -- errs indexed like the input): a create in flight is an unknown_outcome with
    -- its fingerprint, whose task_id is set when the answer comes (cancel)
    local function in_flight(cl, n)
      local reqs = {}
      for i = 1, n do reqs[i] = { model = REQ.model, input = REQ.input, wait = FAST_WAIT } end
      m:fault{ path = CREATE, fault = "delay", seconds = 0.3, times = -1 }
      local h = kie.spawn(function() return cl:run_all(reqs, { concurrency = 2 }) end)
      pump(cl, function() return m:count(CREATE) == 2 end)
      return h
    end

    local function check(h, cause)
      local r, err = h:result()
      assert.is_nil(r)
      assert.equals("canceled", err.kind)
      assert.equals(cause, err.cause)
      assert.is_table(err.results)
      assert.is_table(err.errs)
      for i = 1, 2 do
        assert.equals("unknown_outcome", err.errs[i].kind)
        assert.is_string(err.errs[i].fingerprint)
      end
      assert.is_nil(err.errs[3] and err.errs[3].fingerprint) -- never started: nothing paid
      return err
    end

    it("cancel: the job's error carries the items' errors; their task ids come", function()
      local h = in_flight(c, 3)
      assert.is_true(h:cancel())
      local err = check(h, nil)
      pump(c, function() return err.errs[1].task_id ~= nil and err.errs[2].task_id ~= nil end)
      for i = 1, 2 do assert.equals(err.errs[i].task_id, m:task(err.errs[i].task_id).task.taskId) end
      assert.equals(2, m:count(CREATE))
    end)

    it("close: the job's error carries the items' errors", function()
      local h = in_flight(c, 3)
      c:close()
      check(h, "closed")
      assert.equals(2, m:count(CREATE))
    end)
  end)

  describe("a create canceled", function()
    it("before it was sent (waiting for the rate limiter): canceled, nothing sent", function()
      local cl = new_client{ rate_limits = { create = { limit = 1, window = 60 }, poll = false } }
      assert(cl:create_task(REQ))
      local got
      local h = cl:create_task_async(REQ, function(_, err) got = err end)
      cl:step(0)
      assert.is_true(h:cancel())
      for _ = 1, 3 do cl:step(0) end
      assert.equals("canceled", got.kind)
      assert.equals(1, m:count(CREATE))
      assert.equals(0, cl:step(0))
      cl:close()
    end)

    it("after it was sent: unknown_outcome (cause canceled), answer read and journaled", function()
      local path = tmpname()
      local cl = new_client{ journal = path }
      m:fault{ path = CREATE, fault = "delay", seconds = 0.3 }
      local got, calls = nil, 0
      local h = cl:create_task_async(REQ, function(_, err) got = err calls = calls + 1 end)
      cl:step(0)
      assert.is_true(h:cancel())
      cl:step(0)
      assert.equals(1, calls)
      assert.equals("unknown_outcome", got.kind)
      assert.equals("canceled", got.cause)
      assert.is_string(got.fingerprint)
      assert.is_nil(h.task_id)
      assert.is_true(cl:step(0) > 0, "the answer is still awaited")
      pump(cl, function() return h.task_id ~= nil end)
      assert.equals(1, m:count(CREATE))
      local left = cl:resume()
      assert.equals(1, #left)
      assert.equals(h.task_id, left[1].taskId)
      assert.equals(0, cl:step(0))
      assert.equals(1, calls)
      cl:close()
      os.remove(path)
    end)

    it("inside kie.spawn after it was sent: the job ends unknown_outcome; the task id shows up", function()
      m:fault{ path = CREATE, fault = "delay", seconds = 0.3 }
      local after = false
      local h = kie.spawn(function() local t = c:create_task(REQ); after = true; return t end)
      assert.is_true(h:cancel())
      local r, err = h:result()
      assert.is_nil(r)
      assert.equals("unknown_outcome", err.kind)
      assert.equals("canceled", err.cause)
      pump(c, function() return h.task_id ~= nil end)
      assert.equals(h.task_id, err.task_id)
      assert.is_false(after)
    end)

    it("a spawned job canceled before it creates sends nothing", function()
      local h
      h = kie.spawn(function()
        assert(c:credits())
        h:cancel()
        return c:create_task(REQ)
      end)
      pump(c, function() return h:done() end)
      for _ = 1, 3 do c:step(10) end
      assert.equals(0, m:count(CREATE))
      assert.equals(0, c:step(0))
    end)

    it("async handles expose the task id of a create that finished", function()
      local h = c:run_async({ model = REQ.model, input = REQ.input, wait = FAST_WAIT }, function() end)
      pump(c, function() return h:done() end)
      local info = assert(h:result())
      assert.equals(info.taskId, h.task_id)
    end)
  end)
end)
