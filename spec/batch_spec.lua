-- client:run_all: many tasks at once, in input order, per-item errors, within
-- the client's rate limits; blocking and inside kie.spawn.
local kie = require "kie"

local KEY = "sk-batch-spec"

local function req(prompt)
  return { model = "ideogram/character", wait = { interval = 0.05, max_interval = 0.05 },
    input = { prompt = prompt, reference_image_urls = { "https://example.com/r.png" } } }
end

describe("client:run_all #core", function()
  local m
  lazy_setup(function() m = require("spec.support.mock").start{ api_key = KEY, pace = 0.03 } end)
  lazy_teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  local function client(extra)
    local o = { api_key = KEY, base_url = m.url, rate_limits = { create = { limit = 1000, window = 1 },
      poll = { limit = 1000, window = 1 } } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return kie.new(o)
  end

  it("returns results in input order, with per-item errors, one failure not sinking the rest", function()
    local c = client()
    local list = {}
    for i = 1, 12 do list[i] = req("item " .. i .. (i == 5 and " #fail" or "")) end
    list[9] = { model = "ideogram/character", input = { prompt = "no refs" } } -- invalid
    local updates = {}
    local results, errs = c:run_all(list, { concurrency = 4, on_update = function(i, info)
      updates[i] = (updates[i] or 0) + 1
      assert.is_string(info.state)
    end })
    assert.is_table(errs)
    for i = 1, 12 do
      if i == 5 then
        assert.is_nil(results[i])
        assert.equals("task_failed", errs[i].kind)
        assert.is_string(errs[i].task_id)
      elseif i == 9 then
        assert.is_nil(results[i])
        assert.equals("validation", errs[i].kind)
      else
        assert.equals("success", results[i].state, "item " .. i)
        assert.equals("item " .. i, results[i].param.input.prompt)
        assert.is_nil(errs[i])
        assert.is_true(updates[i] >= 1)
      end
    end
    assert.equals(11, m:count("/api/v1/jobs/createTask")) -- the invalid one was never sent
    c:close()
  end)

  it("returns errs = nil when everything succeeded, and keeps concurrency bounded", function()
    local c = client()
    m:fault{ path = "/api/v1/jobs/createTask", fault = "delay", seconds = 0.1, times = -1 }
    local list = {}
    for i = 1, 9 do list[i] = req("ok " .. i) end
    local results, errs = c:run_all(list, { concurrency = 3 })
    assert.is_nil(errs)
    assert.equals(9, #results)
    -- at most 3 creates were ever open at once: each is answered 0.1 s after it
    -- arrived, so no 0.09 s span of arrivals may hold more than 3
    local times = {}
    for _, e in ipairs(m:requests("/api/v1/jobs/createTask")) do times[#times + 1] = e.time end
    table.sort(times)
    assert.equals(9, #times)
    for i = 4, #times do
      assert.is_true(times[i] - times[i - 3] >= 0.09, "4 creates within 0.09 s")
    end
    c:close()
  end)

  it("works inside kie.spawn without blocking the caller's loop", function()
    local c = client()
    local list = {}
    for i = 1, 6 do list[i] = req("spawned " .. i) end
    local h = kie.spawn(function() return c:run_all(list, { concurrency = 6 }) end)
    local steps = 0
    while not h:done() do
      c:step(10)
      steps = steps + 1
      assert.is_true(steps < 5000)
    end
    local results, errs = h:result()
    assert.is_nil(errs)
    for i = 1, 6 do assert.equals("success", results[i].state) end
    assert.is_true(steps > 1)
    c:close()
  end)

  it("respects the client's create limit", function()
    local t = 0
    local sent = {}
    local c = kie.new{ api_key = KEY, base_url = m.url,
      rate_limits = { create = { limit = 3, window = 10 }, poll = { limit = 1000, window = 1 } },
      now = function() return t end,
      sleep = function(s) t = t + s end,
      logger = function(_, msg, f) if msg == "request" and f.op == "create_task" then sent[#sent + 1] = t end end,
    }
    local list = {}
    for i = 1, 7 do list[i] = req("paced " .. i) end
    local results = c:run_all(list, { concurrency = 7 })
    for i = 1, 7 do assert.is_table(results[i]) end
    assert.equals(7, #sent)
    for i = 4, 7 do assert.is_true(sent[i] - sent[i - 3] >= 10, "window " .. i) end
    c:close()
  end)

  it("raises on misuse", function()
    local c = client()
    assert.has_error(function() c:run_all("x") end)
    assert.has_error(function() c:run_all({}, { concurrency = 0 }) end)
    assert.has_error(function() c:run_all({ "x" }) end)
    local r, e = c:run_all({})
    assert.same({}, r)
    assert.is_nil(e)
    c:close()
  end)
end)
