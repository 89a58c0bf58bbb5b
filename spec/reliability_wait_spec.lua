-- Issue 3 acceptance, part 3: client:wait. Unit tests run the real client over an
-- injected fake core with a fake clock (kie.ai's polling bands take minutes);
-- integration tests run wait and run against the mock with a real clock.
local kie = require "kie"
local real = require "kie.core"
local schedule = require "kie.schedule"
local mock = require "spec.support.mock"

-- A fake kie.core: a clock moved only by sleep, and tasks whose state is a
-- function of the fake time. `script(t, id)` returns the task's data table at
-- elapsed time t (or nil, err).
local function fake_core(script)
  local f = { t = 0, polls = {}, sleeps = {}, creates = 0 }
  local handle = {}
  function handle.create_task(_, req)
    f.creates = f.creates + 1
    f.last_request = req
    return { taskId = "task_fake_" .. f.creates }
  end
  f.read_timeouts = {}
  function handle.get_task(_, id, timeout)
    f.polls[#f.polls + 1] = f.t
    f.read_timeouts[#f.read_timeouts + 1] = timeout or false
    local info, err = script(f.t, id)
    if info then
      info.taskId = id
      info.resultUrls = info.resultUrls or {}
    end
    return info, err
  end
  function handle.call() return nil, { kind = "network", message = "fake: no call", retryable = false } end
  function handle.close() end
  f.module = {
    new = function() return handle end,
    now = function() return f.t end,
    sleep = function(s)
      assert(s >= 0, "negative sleep " .. s)
      f.sleeps[#f.sleeps + 1] = { at = f.t, d = s }
      f.t = f.t + s
    end,
    encode = real.encode, decode = real.decode, append_line = real.append_line,
    hmac_sha256_base64 = real.hmac_sha256_base64,
  }
  return f
end

-- a reproducible random() in [0,1)
local function lcg(seed)
  local s = seed
  return function()
    s = (s * 1103515245 + 12345) % 2147483648
    return s / 2147483648
  end
end

-- waiting < 10 s, queuing < 40 s, generating < done_at, then success (or `final`)
local function walker(done_at, final)
  return function(t)
    local state
    if t < 10 then state = "waiting"
    elseif t < 40 then state = "queuing"
    elseif t < done_at then state = "generating"
    else state = final or "success" end
    local info = { state = state, model = "ideogram/character" }
    if state == "success" then info.resultUrls = { "https://files.example/" .. t .. ".png" } end
    if state == "fail" then info.failCode = "422"; info.failMsg = "Content policy violation" end
    return info
  end
end

local function client_for(f, extra)
  local opts = { api_key = "sk-wait-spec", core = f.module, random = lcg(7) }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return kie.new(opts)
end

describe("reliability: wait over a fake core #unit", function()
  it("polls at once, then on kie.ai's bands: 2-3 s, 5-10 s after 30 s, 15-30 s after 2 min", function()
    local f = fake_core(walker(400))
    local c = client_for(f)
    local info, err = c:wait("task_a", { timeout = 900 })
    assert.is_nil(err and tostring(err))
    assert.equals("success", info.state)
    local polls = f.polls
    assert.equals(0, polls[1])
    local seen = { 0, 0, 0 }
    for i = 1, #polls - 1 do
      local elapsed, gap = polls[i], polls[i + 1] - polls[i]
      local lo, hi, band
      if elapsed < 30 then lo, hi, band = 2, 3, 1
      elseif elapsed < 120 then lo, hi, band = 5, 10, 2
      else lo, hi, band = 15, 30, 3 end
      seen[band] = seen[band] + 1
      assert.is_true(gap >= lo - 1e-9 and gap <= hi + 1e-9,
        string.format("poll %d at %.2f s: next after %.2f s, want %g-%g", i, elapsed, gap, lo, hi))
    end
    for b = 1, 3 do assert.is_true(seen[b] >= 2, "band " .. b .. " used " .. seen[b] .. " times") end
    -- roughly what the bands imply: ~12 polls in 30 s, ~12 more until 2 min, ~10 after
    assert.is_true(#polls >= 25 and #polls <= 45, #polls .. " polls")
    -- finished no later than one band step after the task did
    assert.is_true(polls[#polls] >= 400 and polls[#polls] <= 430)
    c:close()
  end)

  it("jitters the delays (not a fixed period)", function()
    local f = fake_core(walker(60))
    local c = client_for(f)
    assert(c:wait("task_j"))
    local gaps = {}
    for i = 1, 5 do gaps[f.polls[i + 1] - f.polls[i]] = true end
    local n = 0
    for _ in pairs(gaps) do n = n + 1 end
    assert.is_true(n >= 3)
    c:close()
  end)

  it("calls on_update once per state change, first and final included", function()
    local f = fake_core(walker(100))
    local c = client_for(f)
    local states = {}
    local info = assert(c:wait("task_u", { on_update = function(i) states[#states + 1] = i.state end }))
    assert.equals("success", info.state)
    assert.same({ "waiting", "queuing", "generating", "success" }, states)
    assert.is_true(#f.polls > 8) -- many polls, still only four updates
    c:close()
  end)

  it("returns task_failed with failCode, failMsg and task_id", function()
    local f = fake_core(walker(50, "fail"))
    local c = client_for(f)
    local states = {}
    local info, err = c:wait("task_f", { on_update = function(i) states[#states + 1] = i.state end })
    assert.is_nil(info)
    assert.equals("task_failed", err.kind)
    assert.equals("422", err.failCode)
    assert.equals("Content policy violation", err.failMsg)
    assert.equals("task_f", err.task_id)
    assert.is_false(err.retryable)
    assert.matches("Content policy violation", tostring(err))
    assert.equals("fail", states[#states])
    c:close()
  end)

  it("gives up at the deadline with the last state, never sleeping past it", function()
    local f = fake_core(walker(math.huge))
    local c = client_for(f)
    local info, err = c:wait("task_d", { timeout = 100 })
    assert.is_nil(info)
    assert.equals("deadline", err.kind)
    assert.equals("generating", err.state)
    assert.equals("task_d", err.task_id)
    assert.is_true(f.t <= 100 + 1e-9, "clock at " .. f.t)
    for _, s in ipairs(f.sleeps) do assert.is_true(s.at + s.d <= 100 + 1e-9) end
    -- one last look as late as its answer can still arrive in time
    assert.is_true(math.abs(f.polls[#f.polls] - (100 - schedule.min_read)) < 1e-9)
    c:close()
  end)

  it("never sends a status read that has no time to be answered (item 24)", function()
    -- the last poll used to go out at the deadline itself with a 1 ms timeout
    for _, timeout in ipairs{ 100, 31, 7.5, 2, 1, 0.4 } do
      local f = fake_core(walker(math.huge))
      local c = client_for(f)
      local info, err = c:wait("task_t", { timeout = timeout })
      assert.is_nil(info)
      assert.equals("deadline", err.kind)
      local least = math.min(schedule.min_read, timeout / 2)
      for i, t in ipairs(f.read_timeouts) do
        assert.is_number(t, "read " .. i .. " without the deadline's timeout")
        assert.is_true(t >= least - 1e-9, string.format("timeout %g: read %d at %.3f s had %.3f s",
          timeout, i, f.polls[i], t))
        assert.is_true(f.polls[i] + t <= timeout + 1e-9) -- and never past the deadline
      end
      -- the last look is as late as an answer can still come back in time
      assert.is_true(math.abs(f.polls[#f.polls] - (timeout - least)) < 1e-9 or #f.polls == 1,
        "timeout " .. timeout .. ": last poll at " .. f.polls[#f.polls])
      c:close()
    end
  end)

  it("a wait with no time at all sends nothing", function()
    local f = fake_core(walker(math.huge))
    local c = client_for(f)
    local info, err = c:wait("task_0", { timeout = 0 })
    assert.is_nil(info)
    assert.equals("deadline", err.kind)
    assert.equals(0, #f.polls)
    c:close()
  end)

  it("never overshoots the deadline while the reads fail with long Retry-After", function()
    local f = fake_core(function(t)
      if t < 5 then return { state = "generating" } end
      return nil, { kind = "rate_limited", message = "429", retryable = true, retry_after = 40, status = 429 }
    end)
    local c = client_for(f)
    local info, err = c:wait("task_r", { timeout = 30 })
    assert.is_nil(info)
    assert.equals("deadline", err.kind)
    assert.equals("generating", err.state)
    assert.equals("rate_limited", err.last_error.kind)
    assert.is_true(f.t <= 30 + 1e-9, "clock at " .. f.t)
    c:close()
  end)

  it("never overshoots the deadline with a short interval (the read limiter included)", function()
    -- with 0.1 s polls the 10/s read limiter is what paces them; a deadline that
    -- falls while the limiter holds the next poll back must still be kept
    for _, timeout in ipairs{ 1, 1.052, 1.351, 1.962, 3, 3.002 } do
      local f = fake_core(walker(math.huge))
      local c = client_for(f)
      local info, err = c:wait("task_i", { timeout = timeout, interval = 0.1, max_interval = 0.1 })
      assert.is_nil(info)
      assert.equals("deadline", err.kind)
      assert.equals("waiting", err.state)
      assert.is_true(f.t <= timeout + 1e-9, "timeout " .. timeout .. ": clock at " .. f.t)
      for _, p in ipairs(f.polls) do assert.is_true(p <= timeout + 1e-9, "poll at " .. p) end
      -- and the read limit held: at most 10 polls in any second
      for i = 11, #f.polls do assert.is_true(f.polls[i] - f.polls[i - 10] >= 1 - 1e-9) end
      -- polls until the last one that can be answered in time
      local last = timeout - math.min(schedule.min_read, timeout / 2)
      assert.is_true(#f.polls >= 9 * last, #f.polls .. " polls in " .. last .. " s")
      c:close()
    end
  end)

  it("honours interval and max_interval", function()
    local f = fake_core(walker(200))
    local c = client_for(f)
    assert(c:wait("task_m", { interval = 1, max_interval = 4 }))
    for i = 1, #f.polls - 1 do
      local gap = f.polls[i + 1] - f.polls[i]
      if f.polls[i] < 30 then assert.is_true(math.abs(gap - 1) < 1e-9, "gap " .. gap) end
      assert.is_true(gap <= 4 + 1e-9)
    end
    c:close()
  end)

  it("ends at once on a non-retryable read error, giving it the task_id", function()
    local f = fake_core(function()
      return nil, { kind = "not_found", message = "get_task: code 404", retryable = false, status = 404 }
    end)
    local c = client_for(f)
    local info, err = c:wait("task_nf", { timeout = 100 })
    assert.is_nil(info)
    assert.equals("not_found", err.kind)
    assert.equals("task_nf", err.task_id)
    assert.equals(1, #f.polls)
    c:close()
  end)

  it("run creates once and carries task_id on a failed task", function()
    local f = fake_core(walker(20, "fail"))
    local c = client_for(f)
    local info, err = c:run{ model = "ideogram/character",
      input = { prompt = "x", reference_image_urls = { "https://example.com/r.png" }, num_images = 2 } }
    assert.is_nil(info)
    assert.equals("task_failed", err.kind)
    assert.equals("task_fake_1", err.task_id)
    assert.equals(1, f.creates)
    assert.equals("2", f.last_request.input.num_images)
    c:close()
  end)

  it("raises on unknown wait options and wrong types", function()
    local c = client_for(fake_core(walker(1)))
    assert.has_error(function() c:wait("t", { timeot = 3 }) end, "wait: unknown option 'timeot'")
    assert.has_error(function() c:wait("t", { timeout = "3" }) end)
    assert.has_error(function() c:wait(42) end)
    c:close()
  end)
end)

describe("reliability: wait and run against the mock #integration", function()
  local m, c
  local KEY = "sk-wait-spec-mock-31"

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.05 }
    c = kie.new{ api_key = KEY, base_url = m.url, timeout = 5 }
  end)
  lazy_teardown(function()
    if c then c:close() end
    if m then m:stop() end
  end)

  local function req(prompt)
    return { model = "ideogram/character",
      input = { prompt = prompt, reference_image_urls = { "https://example.com/r.png" } } }
  end

  it("wait returns the finished task", function()
    local task = assert(c:create_task(req("a fox")))
    local states = {}
    local t0 = real.now()
    local info, err = c:wait(task.taskId, { interval = 0.05, timeout = 5,
      on_update = function(i) states[#states + 1] = i.state end })
    assert.is_nil(err and tostring(err))
    assert.equals("success", info.state)
    assert.equals(task.taskId, info.taskId)
    assert.equals(1, #info.resultUrls)
    assert.equals("success", states[#states])
    assert.is_true(real.now() - t0 < 2)
  end)

  it("run works end to end", function()
    local before = m:count("/api/v1/jobs/createTask")
    local info, err = c:run{ model = "ideogram/v3-reframe",
      input = { image_url = "https://example.com/a.png", image_size = "square", num_images = 2 },
      wait = { interval = 0.05, timeout = 5 } }
    assert.is_nil(err and tostring(err))
    assert.equals("success", info.state)
    assert.equals(2, #info.resultUrls)
    assert.equals(1, m:count("/api/v1/jobs/createTask") - before)
    assert.equals("ideogram/v3-reframe", info.param.model)
  end)

  it("run with a #fail prompt returns task_failed with the task_id", function()
    local info, err = c:run{ model = "ideogram/character",
      input = { prompt = "please #fail=501", reference_image_urls = { "https://example.com/r.png" } },
      wait = { interval = 0.05, timeout = 5 } }
    assert.is_nil(info)
    assert.equals("task_failed", err.kind)
    assert.matches("^task_", err.task_id)
    assert.equals("501", err.failCode)
    assert.equals("Generation failed", err.failMsg)
  end)

  it("run on a stuck task ends at its deadline with the last state", function()
    local t0 = real.now()
    local info, err = c:run{ model = "ideogram/character",
      input = { prompt = "#stuck", reference_image_urls = { "https://example.com/r.png" } },
      wait = { interval = 0.05, timeout = 2 } }
    local took = real.now() - t0
    assert.is_nil(info)
    assert.equals("deadline", err.kind)
    assert.equals("generating", err.state)
    assert.matches("^task_", err.task_id)
    -- the last poll went out 1 s (schedule.min_read) before the deadline
    assert.is_true(took >= 1 and took < 3, "took " .. took)
  end)

  it("the last poll leaves its answer time to arrive (a 0.3 s read is not cut)", function()
    local task = assert(c:create_task(req("a patient fox #stuck")))
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = 0.3, times = -1 }
    local before = m:count("/api/v1/jobs/recordInfo")
    -- #stuck is never done: the wait ends at its deadline whatever happens
    local info, err = c:wait(task.taskId, { interval = 2, timeout = 2.5 })
    local polls = m:count("/api/v1/jobs/recordInfo") - before
    m:reset()
    assert.is_nil(info)
    assert.equals("deadline", err.kind)
    assert.equals(2, polls)
    assert.is_nil(err.last_error and tostring(err.last_error)) -- every read was answered
  end)

  it("a slow status read does not carry wait past its deadline", function()
    -- the client's request timeout (5 s) is longer than what is left of wait's
    -- 0.6 s; the mock holds every status read for 3 s
    local task = assert(c:create_task(req("a slow fox")))
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = 3, times = -1 }
    local t0 = real.now()
    local info, err = c:wait(task.taskId, { interval = 0.05, timeout = 0.6 })
    local took = real.now() - t0
    m:reset()
    assert.is_nil(info)
    assert.equals("deadline", err.kind)
    assert.equals(task.taskId, err.task_id)
    assert.is_true(took < 2, "took " .. took .. " s (the mock's delay is 3 s)")
  end)
end)
