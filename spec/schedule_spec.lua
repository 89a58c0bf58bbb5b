-- Unit specs for kie.schedule: polling bands and the wait loop, on a fake clock.
local schedule = require "kie.schedule"
local errors = require "kie.errors"

local new_env = require "spec.support.fake_env"
local function fake_env(rnd, t0) return new_env(rnd, t0, 777) end

-- A scripted get_task: `script` is a list of steps, each `{state = ...}` (an info
-- table is built) or `{err = <error>}`; the last step repeats forever.
local function scripted(env, script)
  local g = { calls = 0, times = {}, ids = {} }
  g.fn = function(id)
    g.calls = g.calls + 1
    g.times[#g.times + 1] = env.t
    g.ids[#g.ids + 1] = id
    local step = script[math.min(g.calls, #script)]
    if step.err then return nil, step.err end
    local info = { taskId = id, state = step.state, n = g.calls }
    for k, v in pairs(step) do info[k] = v end
    return info
  end
  return g
end

local function near(a, b) return math.abs(a - b) < 1e-9 end

describe("kie.schedule.delay", function()
  it("follows kie.ai's bands: [2,3] < 30 s, [5,10] < 120 s, [15,30] after", function()
    local function r(x) return function() return x end end
    assert.equal(2, schedule.delay(0, nil, r(0)))
    assert.equal(2.5, schedule.delay(10, nil, r(0.5)))
    assert.is_true(near(2.999, schedule.delay(29.9, nil, r(0.999))))
    assert.equal(5, schedule.delay(30, nil, r(0)))
    assert.equal(7.5, schedule.delay(60, nil, r(0.5)))
    assert.is_true(near(9.995, schedule.delay(119.9, nil, r(0.999))))
    assert.equal(15, schedule.delay(120, nil, r(0)))
    assert.equal(22.5, schedule.delay(500, nil, r(0.5)))
    assert.is_true(near(29.985, schedule.delay(1e6, nil, r(0.999))))
  end)

  it("stays inside each band for seeded random draws", function()
    local env = fake_env{ seed = 5 }
    for i = 0, 300 do
      local elapsed = i * 0.7
      local d = schedule.delay(elapsed, {}, env.random)
      local lo, hi
      if elapsed < 30 then lo, hi = 2, 3 elseif elapsed < 120 then lo, hi = 5, 10 else lo, hi = 15, 30 end
      assert.is_true(d >= lo and d < hi, ("elapsed %s: %s not in [%s,%s)"):format(elapsed, d, lo, hi))
    end
  end)

  it("uses the middle of the band without a random function", function()
    assert.equal(2.5, schedule.delay(0))
    assert.equal(7.5, schedule.delay(45))
    assert.equal(22.5, schedule.delay(300))
  end)

  it("treats negative elapsed as 0", function()
    assert.equal(2, schedule.delay(-5, nil, function() return 0 end))
  end)

  it("lets interval replace the first band only", function()
    local r0 = function() return 0 end
    assert.equal(1, schedule.delay(0, { interval = 1 }, r0))
    assert.equal(1, schedule.delay(29, { interval = 1 }, r0))
    assert.equal(5, schedule.delay(30, { interval = 1 }, r0))
    assert.equal(15, schedule.delay(200, { interval = 1 }, r0))
  end)

  it("caps every delay at max_interval", function()
    local r1 = function() return 0.999 end
    assert.equal(2.5, schedule.delay(0, { max_interval = 2.5 }, r1))
    assert.equal(4, schedule.delay(60, { max_interval = 4 }, r1))
    assert.equal(4, schedule.delay(600, { max_interval = 4 }, r1))
    assert.equal(4, schedule.delay(0, { interval = 9, max_interval = 4 }, r1))
    assert.is_true(near(2.999, schedule.delay(0, { max_interval = 4 }, r1)))
  end)

  it("never goes below 0.1 s", function()
    assert.equal(0.1, schedule.delay(0, { interval = 0.01 }))
    assert.equal(0.1, schedule.delay(500, { max_interval = 0.05 }))
    assert.equal(0.5, schedule.delay(0, { interval = 0.5 }))
  end)

  it("raises on bad interval values", function()
    assert.has_error(function() schedule.delay(0, { interval = 0 }) end)
    assert.has_error(function() schedule.delay(0, { max_interval = "5" }) end)
  end)
end)

describe("kie.schedule.wait", function()
  it("polls at once, follows the schedule, returns the success info and reports each change once", function()
    local env = fake_env(0)
    local g = scripted(env, {
      { state = "waiting" }, { state = "waiting" }, { state = "queuing" },
      { state = "generating" }, { state = "generating" }, { state = "generating" },
      { state = "success", resultUrls = { "https://x/1.png" } },
    })
    local seen = {}
    local info, err = schedule.wait(g.fn, "task_1", {
      on_update = function(i) seen[#seen + 1] = i.state .. "#" .. i.n end,
    }, env)
    assert.is_nil(err)
    assert.equal("success", info.state)
    assert.equal(7, info.n)
    assert.same({ "https://x/1.png" }, info.resultUrls)
    assert.same({ "waiting#1", "queuing#3", "generating#4", "success#7" }, seen)
    assert.equal(7, g.calls)
    assert.equal(0, g.times[1])                        -- first poll immediate
    assert.same({ 0, 2, 4, 6, 8, 10, 12 }, g.times)    -- random = 0 → every 2 s in band 1
    assert.equal("task_1", g.ids[7])
  end)

  it("moves to the later bands as time passes", function()
    local env = fake_env(0)
    local g = scripted(env, { { state = "generating" } })
    schedule.wait(g.fn, "t", { timeout = 200 }, env)
    -- 2 s steps while elapsed < 30, then 5 s while < 120, then 15 s
    for i = 2, #g.times do
      local prev, gap = g.times[i - 1], g.times[i] - g.times[i - 1]
      local want = prev < 30 and 2 or (prev < 120 and 5 or 15)
      if g.times[i] < 200 then assert.equal(want, gap, "poll after t=" .. prev) end
    end
    assert.equal(30, g.times[16])
    assert.equal(35, g.times[17])
  end)

  it("uses interval and max_interval from opts", function()
    local env = fake_env(0.999)
    local g = scripted(env, { { state = "queuing" } })
    schedule.wait(g.fn, "t", { timeout = 60, interval = 1, max_interval = 6 }, env)
    assert.equal(1, g.times[2])
    assert.equal(2, g.times[3])
    assert.equal(30, g.times[31])
    assert.equal(36, g.times[32]) -- band 2 would give 9.995 s; capped at 6
    for i = 2, #g.times do assert.is_true(g.times[i] - g.times[i - 1] <= 6) end
  end)

  it("returns task_failed with the API's failCode and failMsg", function()
    local env = fake_env(0.5)
    local g = scripted(env, { { state = "generating" }, { state = "fail", failCode = "422", failMsg = "bad prompt" } })
    local n = 0
    local info, err = schedule.wait(g.fn, "task_9", { on_update = function() n = n + 1 end }, env)
    assert.is_nil(info)
    assert.is_true(errors.is(err, "task_failed"))
    assert.equal("task_9", err.task_id)
    assert.equal("422", err.failCode)
    assert.equal("bad prompt", err.failMsg)
    assert.equal("fail", err.state)
    assert.equal(2, err.task.n)
    assert.equal("fail", err.task.state)
    assert.is_false(err.retryable)
    assert.matches("bad prompt", tostring(err))
    assert.equal(2, n) -- generating, fail
    assert.equal(2, g.calls)
  end)

  it("keeps failCode/failMsg exactly as sent, even empty", function()
    local env = fake_env(0.5)
    local g = scripted(env, { { state = "fail", failCode = "", failMsg = "" } })
    local _, err = schedule.wait(g.fn, "t", nil, env)
    assert.equal("", err.failCode)
    assert.equal("", err.failMsg)
  end)

  it("gives up at the deadline with the last state, without overshooting it", function()
    local env = fake_env(0.999, 1000)
    local g = scripted(env, { { state = "waiting" }, { state = "generating" } })
    local updates = 0
    local opts = { timeout = 100, on_update = function() updates = updates + 1 end }
    local info, err = schedule.wait(g.fn, "task_d", opts, env)
    assert.is_nil(info)
    assert.is_true(errors.is(err, "deadline"))
    assert.equal("task_d", err.task_id)
    assert.equal("generating", err.state)
    assert.is_nil(err.last_error)
    assert.equal(1100, env.t)                 -- slept exactly up to the deadline
    assert.equal(1100, g.times[#g.times])     -- one last poll at the deadline
    for _, t in ipairs(g.times) do assert.is_true(t <= 1100) end
    assert.equal(2, updates)
    assert.is_false(err.retryable)
  end)

  it("polls once after the clamped last sleep even if the clock wakes a bit early", function()
    local env = fake_env(0)
    local requested = {}
    env.sleep = function(s)
      requested[#requested + 1] = { s = s, left = 10 - env.t }
      env.t = env.t + s * 0.999 -- wakes slightly early, as real sleeps may
    end
    local g = scripted(env, { { state = "generating" } })
    local _, err = schedule.wait(g.fn, "t", { timeout = 10 }, env)
    assert.equal("deadline", err.kind)
    for _, r in ipairs(requested) do assert.is_true(r.s <= r.left, "slept past the deadline") end
    -- 0, 1.998, 3.996, 5.994, 7.992, 9.99, then the cut sleep (0.01) and its final poll
    assert.equal(7, g.calls)
    assert.equal(6, #requested)
    assert.is_true(near(0.01, requested[6].s))
  end)

  it("respects the default timeout of 900 s", function()
    local env = fake_env(0.5)
    local g = scripted(env, { { state = "generating" } })
    local _, err = schedule.wait(g.fn, "t", nil, env)
    assert.equal("deadline", err.kind)
    assert.equal(900, env.t)
  end)

  it("clamps a Retry-After wait to the deadline too", function()
    local env = fake_env(0.5)
    local g = scripted(env, { { err = errors.new("rate_limited", "slow down", { retry_after = 50 }) } })
    local _, err = schedule.wait(g.fn, "t", { timeout = 20 }, env)
    assert.equal("deadline", err.kind)
    assert.same({ 20 }, env.sleeps)
    assert.same({ 0, 20 }, g.times)
  end)

  it("with reserve, starts no poll later than reserve seconds before the deadline", function()
    local env = fake_env(0.5)
    local g = scripted(env, { { state = "generating" } })
    local _, err = schedule.wait(g.fn, "t", { timeout = 20, reserve = 1.5 }, env)
    assert.equal("deadline", err.kind)
    assert.equal(18.5, g.times[#g.times])
    for _, t in ipairs(g.times) do assert.is_true(t <= 18.5) end
    assert.has_error(function() schedule.wait(g.fn, "t", { reserve = -1 }, env) end)
  end)

  it("polls once and gives up when timeout is 0", function()
    local env = fake_env(0.5)
    local g = scripted(env, { { state = "queuing" } })
    local _, err = schedule.wait(g.fn, "t", { timeout = 0 }, env)
    assert.equal("deadline", err.kind)
    assert.equal("queuing", err.state)
    assert.equal(1, g.calls)
    assert.equal(0, #env.sleeps)
  end)

  it("reports no state and the last error when every poll failed", function()
    local env = fake_env(0.5)
    local n = 0
    local get = function()
      n = n + 1
      return nil, errors.new("network", "reset " .. n)
    end
    local _, err = schedule.wait(get, "t", { timeout = 10 }, env)
    assert.equal("deadline", err.kind)
    assert.is_nil(err.state)
    assert.equal("network", err.last_error.kind)
    assert.equal("reset " .. n, err.last_error.message)
    assert.is_true(n > 1)
  end)

  it("returns a non-retryable error at once", function()
    for _, kind in ipairs({ "not_found", "auth", "protocol" }) do
      local env = fake_env(0.5)
      local e = errors.new(kind, "no")
      local g = scripted(env, { { state = "waiting" }, { err = e } })
      local info, err = schedule.wait(g.fn, "task_x", nil, env)
      assert.is_nil(info)
      assert.equal(e, err)
      assert.equal("task_x", err.task_id)
      assert.equal(2, g.calls)
      assert.equal(1, #env.sleeps)
    end
  end)

  it("tolerates retryable errors and keeps polling on schedule", function()
    local env = fake_env(0)
    local g = scripted(env, {
      { state = "waiting" },
      { err = errors.new("network", "blip") },
      { err = errors.new("server", "502 page", { status = 502 }) },
      { state = "generating" },
      { err = errors.new("timeout", "slow") },
      { state = "success" },
    })
    local states = {}
    local info, err = schedule.wait(g.fn, "t", { on_update = function(i) states[#states + 1] = i.state end }, env)
    assert.is_nil(err)
    assert.equal("success", info.state)
    assert.equal(6, g.calls)
    assert.same({ 0, 2, 4, 6, 8, 10 }, g.times)
    assert.same({ "waiting", "generating", "success" }, states)
  end)

  it("honours err.retry_after when it is longer than the scheduled delay", function()
    local env = fake_env(0)
    local g = scripted(env, {
      { err = errors.new("rate_limited", "429", { retry_after = 12 }) },
      { err = errors.new("rate_limited", "429", { retry_after = 1 }) },
      { state = "success" },
    })
    local info = schedule.wait(g.fn, "t", nil, env)
    assert.equal("success", info.state)
    assert.same({ 0, 12, 14 }, g.times) -- 12 (Retry-After beats 2 s), then 2 (schedule beats 1 s)
  end)

  it("treats unknown states as still running", function()
    local env = fake_env(0)
    local g = scripted(env, { { state = "paused" }, { state = "RUNNING" }, { state = "success" } })
    local seen = {}
    local info = schedule.wait(g.fn, "t", { on_update = function(i) seen[#seen + 1] = i.state end }, env)
    assert.equal("success", info.state)
    assert.equal(3, g.calls)
    assert.same({ "paused", "RUNNING", "success" }, seen)
  end)

  it("reports the first info even when it carries no state", function()
    local env = fake_env(0)
    local g = scripted(env, { {}, {}, { state = "success" } })
    local n = 0
    schedule.wait(g.fn, "t", { on_update = function() n = n + 1 end }, env)
    assert.equal(2, n)
  end)

  it("calls on_update once when the first poll already succeeded", function()
    local env = fake_env(0)
    local g = scripted(env, { { state = "success" } })
    local n = 0
    local info = schedule.wait(g.fn, "t", { on_update = function() n = n + 1 end }, env)
    assert.equal("success", info.state)
    assert.equal(1, n)
    assert.equal(0, #env.sleeps)
  end)

  it("raises on programmer errors", function()
    local env = fake_env(0)
    local get = function() return { state = "success" } end
    assert.has_error(function() schedule.wait(get, "t", { timeuot = 5 }, env) end)
    assert.has_error(function() schedule.wait(get, "t", { timeout = -1 }, env) end)
    assert.has_error(function() schedule.wait(get, "t", { on_update = 5 }, env) end)
    assert.has_error(function() schedule.wait("get", "t", nil, env) end)
    assert.has_error(function() schedule.wait(get, "t", nil, { now = env.now }) end)
    assert.has_no_error(function() schedule.wait(get, "t", nil, env) end)
  end)
end)

describe("kie.schedule.expected (polls placed by the model's run times)", function()
  local D = { 4, 4, 5, 6, 10 } -- sorted run times (s)

  it("knows nothing without run times or a callback", function()
    assert.is_nil(schedule.expected({}, 0, 0, false))
  end)

  it("without a callback: the median, the 90th and 99th percentiles, then backs off", function()
    local t, at = 0, {}
    for polls = 0, 6 do
      t = t + schedule.expected(D, t, polls, false)
      at[#at + 1] = t
    end
    assert.same({ 5, 10, 10.5 }, { at[1], at[2], at[3] })
    for i = 4, #at do
      assert.is_true(at[i] - at[i - 1] > at[i - 1] - at[i - 2] - 1e-9, "gaps grow")
      assert.is_true(at[i] - at[i - 1] <= schedule.max_gap)
    end
  end)

  it("with a callback: first when it is late (1.5 x p99 + 2 s); cold: cold_callback s", function()
    assert.equal(17, schedule.expected(D, 0, 0, true))
    assert.equal(7, schedule.expected(D, 10, 0, true))
    assert.equal(schedule.cold_callback - 3, schedule.expected({}, 3, 0, true))
  end)

  it("a first poll whose time has passed goes at once; later ones never earlier than min_delay", function()
    assert.equal(schedule.min_delay, schedule.expected(D, 100, 0, false))
    -- a randomized search: always > 0, and the next target is after now
    math.randomseed(11)
    for _ = 1, 500 do
      local n = math.random(0, 6)
      local d = {}
      for i = 1, n do d[i] = math.random() * 20 end
      table.sort(d)
      local cb = math.random() < 0.5
      local e, polls = math.random() * 200, math.random(0, 5)
      local x = schedule.expected(d, e, polls, cb)
      if n == 0 and not cb then assert.is_nil(x) else assert.is_true(x >= schedule.min_delay) end
    end
  end)
end)

describe("kie.schedule.wait with first and delay", function()
  it("sleeps `first` before the first poll, then follows `delay`", function()
    local env = fake_env(0)
    local g = scripted(env, { { state = "generating" }, { state = "generating" }, { state = "success" } })
    local info = schedule.wait(g.fn, "t", { first = 5, delay = function(_, polls) return polls * 10 end }, env)
    assert.equal("success", info.state)
    assert.same({ 5, 15, 35 }, g.times)
  end)

  it("a first sleep past the deadline is cut: one poll at the deadline, then `deadline`", function()
    local env = fake_env(0)
    local g = scripted(env, { { state = "generating" } })
    local info, err = schedule.wait(g.fn, "t", { first = 50, timeout = 10, reserve = 1 }, env)
    assert.is_nil(info)
    assert.equal("deadline", err.kind)
    assert.same({ 9 }, g.times)
    assert.has_error(function() schedule.wait(g.fn, "t", { first = -1 }, env) end)
    assert.has_error(function() schedule.wait(g.fn, "t", { delay = 3 }, env) end)
  end)
end)
