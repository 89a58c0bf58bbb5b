-- The mock loses callbacks on request (config callback_drop_rate): the fleet's
-- waits must not depend on every webhook arriving. Talks only to 127.0.0.1.
local mock = require "spec.support.mock"
local socket = require "socket"

local function body(m, prompt)
  return {
    model = "ideogram/character",
    callBackUrl = m.url .. "/_mock/callback_sink",
    input = { prompt = prompt, reference_image_urls = { m.url .. "/files/ref.png" } },
  }
end

local function create_all(m, n)
  local kie = require "kie"
  local client = kie.new{ api_key = "test-key", base_url = m.url, rate_limits = { create = false } }
  for i = 1, n do
    local t, err = client:create_task(body(m, "drop " .. i))
    assert(t, tostring(err))
  end
  client:close()
end

-- waits until the mock recorded `n` delivery attempts (or `seconds` passed)
local function deliveries(m, n, seconds)
  local t0 = socket.gettime()
  local d = m:deliveries()
  while #d < n and socket.gettime() - t0 < seconds do
    socket.sleep(0.05)
    d = m:deliveries()
  end
  return d
end

describe("mock callback_drop_rate", function()
  local m
  setup(function() m = mock.start{ pace = 0.01 } end)
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  it("0 (the default) delivers every callback", function()
    create_all(m, 3)
    local d = deliveries(m, 3, 5)
    assert.equal(3, #d)
    for _, e in ipairs(d) do assert.equal(200, e.status); assert.is_nil(e.dropped) end
    assert.equal(3, #m:callbacks())
  end)

  it("1 drops every callback and records each as dropped", function()
    m:config{ callback_drop_rate = 1 }
    create_all(m, 3)
    local d = deliveries(m, 3, 5)
    assert.equal(3, #d)
    for _, e in ipairs(d) do
      assert.is_true(e.dropped)
      assert.equal("dropped", e.error)
      assert.is_nil(e.status)
    end
    assert.equal(0, #m:callbacks())
    m:config{ callback_drop_rate = 0 }
  end)

  it("0.5 loses some and delivers the others (seeded per worker)", function()
    m:config{ callback_drop_rate = 0.5 }
    create_all(m, 40)
    local d = deliveries(m, 40, 10)
    assert.equal(40, #d)
    local dropped = 0
    for _, e in ipairs(d) do if e.dropped then dropped = dropped + 1 end end
    -- both outcomes occur: P(all 40 alike) = 2^-39
    assert.is_true(dropped > 0 and dropped < 40, "dropped " .. dropped .. " of 40")
    assert.equal(40 - dropped, #m:callbacks())
    m:config{ callback_drop_rate = 0 }
  end)
end)
