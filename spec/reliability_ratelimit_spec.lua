-- Issue 3 acceptance, part 2: client-side rate limits against the mock with an
-- injected fake clock (advanced only by sleep). kie.ai allows 20 creates per 10 s
-- and 10 status reads per second; the client must never send more.
local kie = require "kie"
local mock = require "spec.support.mock"
local core = require "kie.core"

local KEY = "sk-ratelimit-spec-7c1e"

local function request(i)
  return {
    model = "ideogram/character",
    input = { prompt = "fox " .. i, reference_image_urls = { "https://example.com/ref.png" } },
  }
end

-- the largest number of times within any half-open window [t, t + width)
local max_in_window = require("spec.support.fleet_run").max_in_window

describe("reliability: client-side rate limits (fake clock) #integration", function()
  local m

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0 }
  end)
  lazy_teardown(function()
    if m then m:stop() end
  end)

  -- a client whose clock moves only when it sleeps; records the fake time of
  -- every request it sends, per op
  local function fake_client(extra)
    local clock = { t = 1000, slept = {} }
    local sent = {}
    local opts = {
      api_key = KEY, base_url = m.url, timeout = 5,
      now = function() return clock.t end,
      sleep = function(s)
        assert(s >= 0, "negative sleep")
        clock.slept[#clock.slept + 1] = s
        clock.t = clock.t + s
      end,
      random = function() return 0.5 end,
      logger = function(_, message, fields)
        if message == "request" then
          sent[fields.op] = sent[fields.op] or {}
          table.insert(sent[fields.op], clock.t)
        end
      end,
    }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return kie.new(opts), clock, sent
  end

  it("never sends more than 20 creates in any 10 s window", function()
    local c, clock, sent = fake_client()
    local before = m:count("/api/v1/jobs/createTask")
    for i = 1, 25 do
      local t, err = c:create_task(request(i))
      assert.is_nil(err and tostring(err))
      assert.is_string(t.taskId)
    end
    local times = sent.create_task
    assert.equals(25, #times)
    assert.equals(25, m:count("/api/v1/jobs/createTask") - before)
    assert.is_true(max_in_window(times, 10) <= 20, "more than 20 creates in 10 s")
    -- the first 20 go at once, the 21st waits for the window (not much longer)
    assert.equals(times[1], times[20])
    assert.is_true(times[21] - times[1] >= 10)
    assert.is_true(times[21] - times[1] < 10.5)
    assert.is_true(clock.t - 1000 < 11)
    -- the mock never had to say 429
    for _, r in ipairs(m:requests("/api/v1/jobs/createTask")) do
      assert.is_nil(r.fault)
    end
    c:close()
  end)

  it("never sends more than 10 status reads in any 1 s window (get_task and credits share it)", function()
    local helper = kie.new{ api_key = KEY, base_url = m.url, rate_limits = { create = false } }
    local task = assert(helper:create_task(request(0)))
    helper:close()
    local c, _, sent = fake_client()
    local times = {}
    for i = 1, 15 do
      local info, err = c:get_task(task.taskId)
      assert.is_nil(err and tostring(err))
      assert.equals(task.taskId, info.taskId)
      if i % 3 == 0 then assert.is_number((c:credits())) end
    end
    for _, op in ipairs{ "get_task", "credits" } do
      for _, t in ipairs(sent[op]) do times[#times + 1] = t end
    end
    assert.equals(20, #times)
    assert.is_true(max_in_window(times, 1) <= 10, "more than 10 reads in 1 s")
    table.sort(times)
    assert.is_true(times[11] - times[1] >= 1)
    assert.is_true(times[20] - times[1] < 2.5)
    c:close()
  end)

  it("keeps the create and read budgets apart", function()
    local c, clock, sent = fake_client()
    local start = clock.t
    local ids = {}
    for i = 1, 20 do ids[i] = assert(c:create_task(request(i))).taskId end
    for i = 1, 10 do assert(c:get_task(ids[i])) end
    assert.equals(start, clock.t) -- 20 creates + 10 reads: nobody waited
    assert.equals(10, #sent.get_task)
    c:close()
  end)

  it("after a 429 on create waits out the whole window before the retry", function()
    local c, clock, sent = fake_client{ retry = { base = 0.01, cap = 0.05, rate_limit_floor = 0.01 } }
    local before = m:count("/api/v1/jobs/createTask")
    m:fault{ path = "/api/v1/jobs/createTask", fault = "rate_limit", times = 1 }
    local t, err = c:create_task(request("429"))
    assert.is_nil(err and tostring(err))
    assert.is_string(t.taskId)
    assert.equals(2, m:count("/api/v1/jobs/createTask") - before)
    local times = sent.create_task
    assert.equals(2, #times)
    assert.is_true(times[2] - times[1] >= 10, "retried after " .. (times[2] - times[1]) .. " s")
    assert.is_true(clock.t - times[1] < 10.5)
    c:close()
  end)

  it("honours Retry-After on reads (and a 429 fills the read window)", function()
    local c, _, sent = fake_client{ retry = { base = 0.01, cap = 0.05, rate_limit_floor = 0.01 } }
    m:fault{ path = "/api/v1/chat/credit", fault = "rate_limit", retry_after = 3, times = 1 }
    assert.is_number((c:credits()))
    local times = sent.credits
    assert.equals(2, #times)
    assert.is_true(times[2] - times[1] >= 3)
    assert.is_true(times[2] - times[1] < 3.5)
    c:close()
  end)

  it("a partial rate_limits entry keeps the published defaults for what it leaves out", function()
    local task = assert(kie.new{ api_key = KEY, base_url = m.url, rate_limits = { create = false } }
      :create_task(request("partial")))
    local c, _, sent = fake_client{ rate_limits = { poll = { limit = 5 }, create = { window = 2 } } }
    for _ = 1, 6 do assert(c:get_task(task.taskId)) end
    local t = sent.get_task
    assert.equals(t[1], t[5])
    -- the 6th waits out poll's published 1 s window, not 10 s
    assert.is_true(t[6] - t[1] >= 1 and t[6] - t[1] < 1.5, "6th read after " .. (t[6] - t[1]) .. " s")
    for i = 1, 21 do assert(c:create_task(request(i))) end
    local ct = sent.create_task
    assert.equals(ct[1], ct[20])  -- create keeps its limit of 20
    assert.is_true(ct[21] - ct[1] >= 2 and ct[21] - ct[1] < 2.5)
    c:close()
    assert.has_error(function() kie.new{ api_key = KEY, rate_limits = { poll = { limt = 5 } } } end,
      "kie.new: option 'rate_limits': kie.ratelimit.new: unknown option 'limt'")
    assert.has_error(function() kie.new{ api_key = KEY, rate_limits = { polls = { limit = 5 } } } end,
      "kie.new: option 'rate_limits': unknown entry 'polls' (create, poll)")
  end)

  it("can be configured (rate_limits) and switched off", function()
    local c, _, sent = fake_client{ rate_limits = { create = { limit = 2, window = 1 }, poll = false } }
    for i = 1, 5 do assert(c:create_task(request(i))) end
    assert.is_true(max_in_window(sent.create_task, 1) <= 2)
    assert.is_true(sent.create_task[5] - sent.create_task[1] >= 2)
    c:close()
  end)
end)

-- Issue 10 item 19: kie.ai counts a request when it ARRIVES. The mock delays each
-- request between reading it and counting it (latency), and answers 429 over an
-- account-wide sliding window of arrivals (limit 3 per 1 s here, to keep it short).
describe("reliability: pacing counts where kie.ai counts (real clock, latency) #integration", function()
  local m
  local LIMIT = { limit = 3, window = 1 }
  local CREATE = "/api/v1/jobs/createTask"

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0, account_limit = { create = LIMIT } }
  end)
  lazy_teardown(function()
    if m then m:stop() end
  end)
  before_each(function()
    m:reset()
    m:config{ latency = false }
  end)

  local function client(limits)
    return kie.new{ api_key = KEY, base_url = m.url, timeout = 5, max_retries = 0,
      rate_limits = { create = limits, poll = false } }
  end

  local function over_limit() return m:over_limit(CREATE) end

  -- the first three creates take 0.6 s to arrive, the later ones none
  local function slow_first_three()
    m:fault{ path = CREATE, fault = "delay", seconds = 0, latency = 0.6, times = 3 }
  end

  -- steps `c` until `pred()` (at most 15 s)
  local function pump(c, pred)
    local deadline = core.now() + 15
    while not pred() and core.now() < deadline do c:step(20) end
    assert.is_true(pred(), "not done in 15 s")
  end

  -- creates `n` at once (async); returns a function that tells when all ended, and errs
  local function fire(c, n, tag, before_each_send)
    local done, errs = 0, {}
    for i = 1, n do
      if before_each_send then before_each_send() end
      c:create_task_async(request(tag .. i), function(t, err)
        done = done + 1
        if not t then errs[#errs + 1] = err.kind end
      end)
    end
    return function() return done == n end, errs
  end

  it("control: a limiter that counts at sending overshoots at the server", function()
    slow_first_three()
    local c = client(false)
    local lim = require("kie.ratelimit").new(LIMIT)
    local env = { now = core.now, sleep = core.sleep }
    local function at_send() lim:release(lim:acquire(env), env.now()) end -- the old rule
    local first = fire(c, 3, "control a", at_send)
    pump(c, first)
    local second, errs = fire(c, 3, "control b", at_send)   -- sent 1.05 s after the first
    pump(c, second)
    c:close()
    assert.is_true(#errs > 0, "the mock never saw more than 3 arrivals in 1 s")
    assert.equals("rate_limited", errs[1])
    assert.equals(#errs, over_limit())
  end)

  it("the same load through the client: no 429", function()
    slow_first_three()
    local c = client(LIMIT)
    local all, errs = fire(c, 6, "held ")
    pump(c, all)
    c:close()
    assert.same({}, errs)
    assert.equals(6, m:count(CREATE))
    assert.equals(0, over_limit())
  end)

  it("random latency 0 - 300 ms, blocking and a concurrent async burst: no 429", function()
    m:config{ latency = { min = 0, max = 0.3 } }
    local c = client(LIMIT)
    for i = 1, 6 do
      local _, err = c:create_task(request("blocking " .. i))
      assert.is_nil(err and tostring(err))
    end
    local all, errs = fire(c, 9, "async ")
    pump(c, all)
    c:close()
    assert.same({}, errs)
    assert.equals(15, m:count(CREATE))
    assert.equals(0, over_limit())
  end)
end)

-- A create canceled after it was sent is still in flight (kie.lifecycle reads its
-- answer in the background): its slot counts from that answer, like any other,
-- not from the limiter's `hold` bound. Virtual time (kie.testing).
describe("reliability: pacing of a canceled create #unit", function()
  local testing = require "kie.testing"
  local REQ = request("canceled")

  it("its slot counts from the answer read in the background", function()
    local fake = testing.new{ latency = 2 }
    local c = fake:client{ timeout = 30, rate_limits = { create = { limit = 1, window = 1 } } }
    local h = c:create_task_async(REQ)
    assert.equals(1, #fake:requests("create_task"))
    h:cancel()                                   -- sent: the answer comes at t = 2
    local done = false
    c:create_task_async(request("next"), function() done = true end)
    for _ = 1, 1000 do
      if done then break end
      c:step(c:poll_timeout() or 100)
    end
    assert.is_true(done)
    local sent = fake:requests("create_task")
    assert.equals(2, #sent)
    -- window + margin after the canceled create's answer (2 s), not after 30 s
    assert.is_true(sent[2].at >= 3 and sent[2].at < 4, "second create sent at " .. sent[2].at)
  end)
end)
