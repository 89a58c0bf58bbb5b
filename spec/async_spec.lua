-- The non-blocking engine against the mock: *_async callbacks, handles, step,
-- poll_timeout, and kie.spawn coroutines in which the ordinary calls yield.
--
-- "Promptly" is always measured against a delay the mock is told to add (a
-- blocking step would take at least that long), never against a fixed budget.
local kie = require "kie"
local core = require "kie.core"
local mock = require "spec.support.mock"

local KEY = "sk-async-spec-91c3"
local CREATE, RECORD = "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo"
local REQ = {
  model = "ideogram/v3-reframe",
  input = { image_url = "https://example.com/a.png", image_size = "landscape_16_9" },
}
local BAD_REQ = { model = "ideogram/v3-reframe" } -- input is missing
local FAST_WAIT = { interval = 0.1, max_interval = 0.2, timeout = 30 }

local unpack = table.unpack or unpack

local function pack(...) return { n = select("#", ...), ... } end

-- Steps `c` until pred() is true; raises after `seconds` (10).
local function pump(c, pred, seconds)
  local deadline = core.now() + (seconds or 10)
  while not pred() do
    if core.now() > deadline then error("pump: timed out", 2) end
    c:step(10)
  end
end

-- A task that stays unfinished for a minute (the mock keeps each task's pace).
local function slow_task(m, c)
  m:config{ pace = 20 }
  local task, err = c:create_task(REQ)
  m:config{ pace = 0.02 }
  assert(task, tostring(err))
  return task.taskId
end

-- Seconds taken by fn(...), and fn's results.
local function timed(fn, ...)
  local t0 = core.now()
  local r = pack(fn(...))
  return core.now() - t0, unpack(r, 1, r.n)
end

describe("non-blocking engine against the mock", function()
  local m, c

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.02 }
  end)
  lazy_teardown(function()
    if m then m:stop() end
  end)

  before_each(function()
    m:reset()
    -- the mock has no limits: do not pace the calls (kie.ai's 20 creates / 10 s)
    c = kie.new{ api_key = KEY, base_url = m.url, timeout = 10,
      rate_limits = { create = false, poll = false } }
  end)
  after_each(function()
    if c then c:close() end
  end)

  describe("create_task_async / get_task_async", function()
    it("calls back exactly once, only from step", function()
      local calls, got, gerr = 0, nil, nil
      local h = c:create_task_async(REQ, function(task, err)
        calls = calls + 1
        got, gerr = task, err
      end)
      assert.equals(0, calls)
      assert.is_false(h:done())
      pump(c, function() return calls > 0 end)
      assert.equals(1, calls)
      assert.is_nil(gerr)
      assert.is_string(got.taskId)
      assert.is_true(h:done())
      assert.equals(got, (h:result()))
      for _ = 1, 5 do c:step(0) end
      assert.equals(1, calls)
      assert.equals(1, m:count(CREATE))
    end)

    it("reports a validation error from step, never inside the call", function()
      local calls, gerr = 0, nil
      c:create_task_async(BAD_REQ, function(task, err)
        calls = calls + 1
        assert.is_nil(task)
        gerr = err
      end)
      assert.equals(0, calls)
      c:step(0)
      assert.equals(1, calls)
      assert.equals("validation", gerr.kind)
      c:step(0)
      assert.equals(1, calls)
      assert.equals(0, m:count(CREATE))
    end)

    it("reports a core-side error (empty task id) from step too", function()
      local calls, gerr = 0, nil
      c:get_task_async("", function(_, err) calls = calls + 1; gerr = err end)
      assert.equals(0, calls)
      c:step(0)
      assert.equals(1, calls)
      assert.equals("validation", gerr.kind)
    end)

    it("reads a task with get_task_async", function()
      local task = assert(c:create_task(REQ))
      local calls, info = 0, nil
      local h = c:get_task_async(task.taskId, function(i, err)
        assert.is_nil(err)
        calls = calls + 1
        info = i
      end)
      assert.equals(0, calls)
      pump(c, function() return h:done() and calls > 0 end)
      assert.equals(1, calls)
      assert.equals(task.taskId, info.taskId)
      assert.is_string(info.state)
    end)

    it("runs wait_async and run_async to the end", function()
      local task = assert(c:create_task(REQ))
      local waited, ran
      c:wait_async(task.taskId, FAST_WAIT, function(i, e) waited = pack(i, e) end)
      c:run_async({ model = REQ.model, input = REQ.input, wait = FAST_WAIT },
        function(i, e) ran = pack(i, e) end)
      assert.is_nil(waited)
      assert.is_nil(ran)
      pump(c, function() return waited and ran end)
      assert.equals("success", waited[1].state)
      assert.equals("success", ran[1].state)
      assert.equals(2, m:count(CREATE))
    end)

    it("reports an error raised inside the call through the callback, from step", function()
      local task = assert(c:create_task(REQ))
      local calls, gerr = 0, nil
      c:wait_async(task.taskId, { interval = 0.02, on_update = function() error("on_update broke") end },
        function(info, err)
          calls = calls + 1
          assert.is_nil(info)
          gerr = err
        end)
      pump(c, function() return calls > 0 end)
      assert.equals(1, calls)
      assert.equals("raised", gerr.kind)
      assert.matches("on_update broke", gerr.message)
    end)

    it("raises at the call for an unknown or bad option: nothing starts", function()
      assert.has_error(function() c:wait_async("some-id", { bogus = 1 }, function() end) end,
        "wait_async: unknown option 'bogus'")
      assert.has_error(function() c:run_async{ model = "m", wait = { timeout = -1 } } end)
      assert.equals(0, c:step(0))
    end)

    it("lets a nil callback through and still finishes the handle", function()
      local h = c:create_task_async(REQ)
      pump(c, function() return h:done() end)
      assert.is_string((h:result()).taskId)
    end)

    it("raises at once on programmer errors", function()
      assert.has_error(function() c:create_task_async("x", function() end) end)
      assert.has_error(function() c:get_task_async(1, function() end) end)
      assert.has_error(function() c:create_task_async(REQ, "not a function") end)
    end)
  end)

  describe("cancel", function()
    it("calls back with canceled from the next step and drops the transfer", function()
      -- a read: a create canceled after it was sent stays in flight (lifecycle_spec)
      m:fault{ path = RECORD, fault = "delay", seconds = 2, times = -1 }
      local calls, gerr = 0, nil
      local h = c:get_task_async("task-cancel", function(task, err)
        calls = calls + 1
        assert.is_nil(task)
        gerr = err
      end)
      assert.equals(1, c:step(0))
      assert.is_true(h:cancel())
      assert.equals(0, calls)
      assert.is_true(h:done())
      assert.is_false(h:cancel()) -- only once
      assert.equals(0, c._core:pending()) -- the transfer is gone at once
      c:step(0)
      assert.equals(1, calls)
      assert.equals("canceled", gerr.kind)
      assert.equals(0, c:step(0))
      assert.is_nil(c:poll_timeout())
      assert.equals(1, calls)
      local r, err = h:result()
      assert.is_nil(r)
      assert.equals("canceled", err.kind)
    end)

    it("does nothing once the call has finished", function()
      local calls = 0
      local h = c:create_task_async(BAD_REQ, function() calls = calls + 1 end)
      c:step(0)
      assert.equals(1, calls)
      assert.is_false(h:cancel())
      c:step(0)
      assert.equals(1, calls)
    end)

    it("cancels a spawned function parked on a transfer or on a sleep", function()
      local id = slow_task(m, c)
      m:fault{ path = CREATE, fault = "delay", seconds = 2, times = -1 }
      local after = false
      local h1 = kie.spawn(function() c:create_task(REQ); after = true end)
      local h2 = kie.spawn(function() c:wait(id, { interval = 5, timeout = 60 }); after = true end)
      assert.is_true(h1:cancel())
      -- h2's first poll comes back; it then sleeps 5 s on a timer
      pump(c, function() return c._core:pending() == 0 end)
      assert.equals(1, #c._timers)
      assert.is_true(h2:cancel())
      assert.equals(0, #c._timers)
      assert.is_nil(select(1, h1:result()))
      -- a create canceled after it was sent (lifecycle_spec has the details)
      assert.equals("unknown_outcome", select(2, h1:result()).kind)
      assert.equals("canceled", select(2, h2:result()).kind)
      for _ = 1, 3 do c:step(0) end
      assert.is_false(after)
      assert.equals(0, c:step(0))
      assert.is_nil(c:poll_timeout())
    end)

    it("lets a spawned function cancel itself; what it starts next is dropped", function()
      local h, reached
      h = kie.spawn(function()
        assert(c:create_task(REQ))
        assert(h:cancel())
        c:create_task(REQ) -- started, then dropped: the task has ended
        reached = true
      end)
      pump(c, function() return h:done() end)
      assert.equals("canceled", select(2, h:result()).kind)
      assert.equals(0, c._core:pending())
      for _ = 1, 5 do assert.equals(0, c:step(5)) end
      assert.is_nil(reached)
    end)
  end)

  describe("step and poll_timeout", function()
    it("step(0) returns promptly with the in-flight count while requests are slow", function()
      local SLOW = 1.5
      m:fault{ path = RECORD, fault = "delay", seconds = SLOW, times = -1 }
      local task = assert(c:create_task(REQ))
      local results = 0
      for _ = 1, 3 do
        c:get_task_async(task.taskId, function() results = results + 1 end)
      end
      local worst, n = 0, nil
      for _ = 1, 20 do
        local dt, count = timed(c.step, c, 0)
        if dt > worst then worst = dt end
        n = count
      end
      assert.equals(0, results)
      assert.equals(3, n)
      assert.is_true(worst < SLOW / 3, "step(0) took " .. worst .. " s")
      pump(c, function() return results == 3 end)
      assert.equals(0, c:step(0))
    end)

    it("step(timeout) waits no longer than asked", function()
      local SLOW = 2
      m:fault{ path = CREATE, fault = "delay", seconds = SLOW, times = -1 }
      c:create_task_async(REQ, function() end)
      local dt, n = timed(c.step, c, 50)
      assert.equals(1, n)
      assert.is_true(dt < SLOW / 2, "step(50) took " .. dt .. " s")
    end)

    it("poll_timeout is nil when idle and a number when busy", function()
      assert.is_nil(c:poll_timeout())
      assert.equals(0, c:step(0))
      local done = false
      c:create_task_async(REQ, function() done = true end)
      local ms = c:poll_timeout()
      assert.is_number(ms)
      assert.is_true(ms >= 0)
      pump(c, function() return done end)
      assert.is_nil(c:poll_timeout())
    end)

    it("poll_timeout is 0 when a callback is ready and bounded by a parked sleep", function()
      c:create_task_async(BAD_REQ, function() end)
      assert.equals(0, c:poll_timeout())
      c:step(0)
      assert.is_nil(c:poll_timeout())
      local id = slow_task(m, c)
      local h = kie.spawn(function() c:wait(id, { interval = 3, timeout = 60 }) end)
      -- the first poll is in flight, then a 3 s sleep: the hint never exceeds it
      pump(c, function() return c._core:pending() == 0 end)
      local ms = c:poll_timeout()
      assert.is_number(ms)
      assert.is_true(ms <= 3000)
      h:cancel()
    end)

    it("counts transfers started by the coroutines it resumed", function()
      -- create, then get at once (no sleep in between): when the create finishes
      -- inside step, the get starts before step returns, and must be counted
      local h = kie.spawn(function()
        local t = assert(c:create_task(REQ))
        return c:get_task(t.taskId)
      end)
      local deadline = core.now() + 10
      repeat
        local n = c:step(10)
        assert.is_true(core.now() < deadline, "timed out")
      until n == 0
      assert.is_true(h:done())
      assert.is_string((h:result()).state)
      assert.equals(1, m:count(RECORD))
    end)
  end)

  describe("kie.spawn", function()
    it("yields inside create_task and is resumed by step", function()
      m:fault{ path = CREATE, fault = "delay", seconds = 0.5, times = -1 }
      local h = kie.spawn(function(a, b) return c:create_task(REQ), a + b end, 1, 2)
      assert.is_false(h:done())
      assert.is_nil(h:result())
      pump(c, function() return h:done() end)
      local task, sum = h:result()
      assert.is_string(task.taskId)
      assert.equals(3, sum)
    end)

    it("never blocks step while a spawned wait is pending", function()
      local SLOW = 1
      m:fault{ path = RECORD, fault = "delay", seconds = SLOW, times = -1 }
      local h = kie.spawn(function()
        local t = assert(c:create_task(REQ))
        return c:wait(t.taskId, FAST_WAIT)
      end)
      local worst, steps = 0, 0
      local t0 = core.now()
      while not h:done() do
        local dt = timed(c.step, c, 0)
        steps = steps + 1
        if dt > worst then worst = dt end
        assert.is_true(core.now() - t0 < 20, "timed out")
        core.sleep(0.002)
      end
      local info, err = h:result()
      assert.is_nil(err)
      assert.equals("success", info.state)
      assert.is_true(m:count(RECORD) >= 2) -- it polled through the slow reads
      assert.is_true(steps > 50, "only " .. steps .. " steps")
      assert.is_true(worst < SLOW / 2, "step(0) took " .. worst .. " s")
    end)

    it("runs client:run to the end", function()
      local h = kie.spawn(function()
        return c:run{ model = REQ.model, input = REQ.input, wait = FAST_WAIT }
      end)
      assert.is_false(h:done())
      pump(c, function() return h:done() end)
      assert.equals("success", (h:result()).state)
    end)

    it("completes 50 spawned runs at once", function()
      local N = 50
      m:fault{ path = CREATE, fault = "delay", seconds = 0.3, times = -1 }
      local handles = {}
      for i = 1, N do
        handles[i] = kie.spawn(function()
          return c:run{ model = REQ.model, input = REQ.input, wait = FAST_WAIT }
        end)
      end
      local max_n = 0
      pump(c, function()
        local n = c:step(0)
        if n > max_n then max_n = n end
        for i = 1, N do if not handles[i]:done() then return false end end
        return true
      end, 60)
      local ids = {}
      for i = 1, N do
        local info, err = handles[i]:result()
        assert.is_nil(err)
        assert.equals("success", info.state)
        ids[info.taskId] = true
      end
      local distinct = 0
      for _ in pairs(ids) do distinct = distinct + 1 end
      assert.equals(N, distinct)
      assert.equals(N, m:count(CREATE))
      assert.is_true(max_n >= N / 2, "at most " .. max_n .. " in flight")
    end)

    it("keeps the error of a spawned function that raises", function()
      local h1 = kie.spawn(function() error("boom before any yield") end)
      assert.is_true(h1:done())
      local r, err = h1:result()
      assert.is_nil(r)
      assert.equals("raised", err.kind)
      assert.matches("boom before any yield", err.message)
      assert.is_string(err.traceback)

      local h2 = kie.spawn(function()
        local t = assert(c:create_task(REQ))
        error({ custom = t.taskId }) -- not a string: still kept
      end)
      local h3 = kie.spawn(function()
        local t = assert(c:create_task(REQ))
        local x = nil
        return t.taskId .. x.field
      end)
      pump(c, function() return h2:done() and h3:done() end)
      local _, e2 = h2:result()
      assert.equals("raised", e2.kind)
      local _, e3 = h3:result()
      assert.equals("raised", e3.kind)
      assert.matches("attempt to index", e3.message)
      assert.matches("async_spec", e3.traceback)
    end)

    it("runs the same user function blocking and non-blocking", function()
      local function job(client, label)
        local t, err = client:create_task(REQ)
        if not t then return nil, err end
        local info, werr = client:wait(t.taskId, FAST_WAIT)
        if not info then return nil, werr end
        return label, info.state
      end
      -- blocking: no coroutine, no step
      local label, state = job(c, "plain")
      assert.equals("plain", label)
      assert.equals("success", state)
      -- non-blocking: the same function, spawned
      local h = kie.spawn(job, c, "spawned")
      assert.is_false(h:done())
      pump(c, function() return h:done() end)
      assert.same({ "spawned", "success" }, { h:result() })
    end)

    it("complains when a spawned function yields something that is not kie's", function()
      local h = kie.spawn(function() coroutine.yield("mine") end)
      assert.is_true(h:done())
      local _, err = h:result()
      assert.equals("raised", err.kind)
    end)
  end)

  describe("callbacks that raise", function()
    it("surface from step after the other callbacks ran", function()
      local ran = {}
      c:create_task_async(BAD_REQ, function() ran[#ran + 1] = 1; error("first callback failed") end)
      c:create_task_async(BAD_REQ, function() ran[#ran + 1] = 2 end)
      c:create_task_async(BAD_REQ, function() ran[#ran + 1] = 3 end)
      local ok, err = pcall(c.step, c, 0, math.huge)
      assert.is_false(ok)
      assert.matches("first callback failed", tostring(err))
      table.sort(ran)
      assert.same({ 1, 2, 3 }, ran)
      assert.equals(0, c:step(0))
    end)

    it("do not lose the other callbacks of transfers finishing in the same step", function()
      local task = assert(c:create_task(REQ))
      local ran = 0
      for i = 1, 4 do
        c:get_task_async(task.taskId, function()
          ran = ran + 1
          if i == 2 then error("callback " .. i .. " failed") end
        end)
      end
      local raised = {}
      local deadline = core.now() + 10
      while ran < 4 do
        assert.is_true(core.now() < deadline, "timed out")
        local ok, err = pcall(c.step, c, 10)
        if not ok then raised[#raised + 1] = tostring(err) end
      end
      assert.equals(1, #raised)
      assert.matches("callback 2 failed", raised[1])
      assert.equals(4, ran)
    end)
  end)

  describe("step work budget", function()
    -- finished transfers held back by a budget (the client's FIFO)
    local function queued(cl)
      local q, n = cl._runq, 0
      for i = q.head, q.tail do
        if type(q[i]) == "number" then n = n + 1 end
      end
      return n
    end

    it("with budget 0 hands over at most one finished transfer per step; all complete once", function()
      local calls, per_step_max, steps = {}, 0, 0
      local N = 8
      for i = 1, N do
        c:create_task_async(REQ, function(task, err)
          assert.is_nil(err)
          assert.is_string(task.taskId)
          calls[i] = (calls[i] or 0) + 1
        end)
      end
      local fired = 0
      local deadline = core.now() + 10
      while fired < N do
        assert.is_true(core.now() < deadline, "timed out")
        c:step(10, 0)
        steps = steps + 1
        local now_fired = 0
        for i = 1, N do now_fired = now_fired + (calls[i] or 0) end
        if now_fired - fired > per_step_max then per_step_max = now_fired - fired end
        fired = now_fired
      end
      assert.equals(1, per_step_max)
      assert.is_true(steps >= N)
      for i = 1, N do assert.equals(1, calls[i]) end
      assert.equals(0, c:step(0, 0))
      assert.equals(0, c:step(0))
    end)

    it("counts queued transfers in step's result and poll_timeout is 0 while any are queued", function()
      local task = assert(c:create_task(REQ))
      local N, fired = 5, 0
      for _ = 1, N do
        c:get_task_async(task.taskId, function(info, err)
          assert.is_nil(err)
          assert.equals(task.taskId, info.taskId)
          fired = fired + 1
        end)
      end
      -- let every answer arrive, then step with a zero budget
      local deadline = core.now() + 10
      local saw_queued = false
      while fired < N do
        assert.is_true(core.now() < deadline, "timed out")
        core.sleep(0.05)
        local n = c:step(0, 0)
        assert.equals(N - fired, n)
        if queued(c) > 0 then
          saw_queued = true
          assert.equals(0, c:poll_timeout())
        end
      end
      assert.is_true(saw_queued, "never had finished transfers queued")
      assert.equals(0, c:step(0))
      assert.is_nil(c:poll_timeout())
    end)

    it("a step with budget math.huge hands over everything still queued", function()
      local N, fired = 12, 0
      for _ = 1, N do
        c:create_task_async(REQ, function(t) assert.is_table(t) fired = fired + 1 end)
      end
      local deadline = core.now() + 10
      while queued(c) == 0 do
        assert.is_true(core.now() < deadline and fired < N, "nothing was queued")
        core.sleep(0.02) -- answers pile up between frames
        c:step(0, 0)
      end
      local before = fired
      local n = c:step(0, math.huge)
      assert.equals(0, queued(c))
      assert.is_true(fired > before)
      assert.equals(N - fired, n)
      pump(c, function() return fired == N end)
      assert.equals(0, c:step(0))
    end)

    it("a budget of many ms hands over every finished transfer at once", function()
      local N, fired = 4, 0
      for _ = 1, N do
        c:create_task_async(REQ, function(t) assert.is_table(t) fired = fired + 1 end)
      end
      pump(c, function() return fired == N end)
      assert.equals(N, fired)
      assert.equals(0, c:step(0, 1000))
    end)

    it("step_budget_ms is the default budget of every step", function()
      local cl = kie.new{ api_key = KEY, base_url = m.url, step_budget_ms = 0,
        rate_limits = { create = false, poll = false } }
      local N, fired, per_step_max = 5, 0, 0
      for _ = 1, N do
        cl:create_task_async(REQ, function(t) assert.is_table(t) fired = fired + 1 end)
      end
      local deadline = core.now() + 10
      while fired < N do
        assert.is_true(core.now() < deadline, "timed out")
        core.sleep(0.02) -- answers pile up between frames
        local before = fired
        cl:step(0)
        if fired - before > per_step_max then per_step_max = fired - before end
      end
      assert.equals(1, per_step_max)
      cl:close()
      assert.has_error(function() kie.new{ api_key = KEY, step_budget_ms = -1 } end)
      assert.has_error(function() kie.new{ api_key = KEY, step_budget_ms = "1" } end)
    end)

    it("rejects a bad budget", function()
      assert.has_error(function() c:step(0, -1) end)
      assert.has_error(function() c:step(0, "1") end)
      assert.has_error(function() c:step(0, 0 / 0) end)
    end)
  end)
end)
