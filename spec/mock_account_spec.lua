-- The mock's real-network timing (spec/support/mock/account.lua): per-request
-- latency before a request counts as arrived, and kie.ai's account-wide sliding
-- windows over arrivals (429 over them). Talks only to 127.0.0.1.
local mock = require "spec.support.mock"
local kie = require "kie"

describe("mock latency and account_limit #integration", function()
  local m, c, task
  setup(function()
    m = mock.start{ pace = 0 }
    c = kie.new{ api_key = "test-key", base_url = m.url, max_retries = 0,
      rate_limits = { create = false, poll = false } }
    task = assert(c:create_task{ model = "ideogram/character",
      input = { prompt = "p", reference_image_urls = { "https://example.com/r.png" } } })
  end)
  teardown(function()
    c:close()
    m:stop()
  end)

  it("answers 429 over the poll window (arrivals), and counts again once it slid", function()
    m:reset()
    m:config{ account_limit = { poll = { limit = 2, window = 0.5 } } }
    local _, e1 = c:get_task(task.taskId)
    local _, e2 = c:get_task(task.taskId)
    local _, e3 = c:get_task(task.taskId)
    require("kie.core").sleep(0.6)
    local _, e4 = c:get_task(task.taskId)
    m:config{ account_limit = false }
    -- the task itself was forgotten by reset: 404 is an answer, not a 429
    assert.equals("not_found", e1.kind)
    assert.equals("not_found", e2.kind)
    assert.equals("rate_limited", e3.kind)
    assert.equals("not_found", e4.kind)
    local faults = {}
    for i, r in ipairs(m:requests("/api/v1/jobs/recordInfo")) do faults[i] = r.fault or "-" end
    assert.same({ "-", "-", "account_limit", "-" }, faults)
  end)

  it("a fault's latency delays the arrival, not the reading", function()
    m:reset()
    m:fault{ path = "/api/v1/chat/credit", fault = "delay", seconds = 0, latency = 0.3 }
    assert.is_number((c:credits()))
    local r = m:requests("/api/v1/chat/credit")[1]
    assert.is_true(r.arrived - r.time >= 0.29, "arrived " .. (r.arrived - r.time) .. " s after read")
    m:config{ latency = { min = 0.1, max = 0.1 } }
    assert.is_number((c:credits()))
    m:config{ latency = false }
    r = m:requests("/api/v1/chat/credit")[2]
    assert.is_true(r.arrived - r.time >= 0.09)
  end)
end)
