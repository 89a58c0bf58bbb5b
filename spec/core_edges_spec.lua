-- kie.core at its edges: a kept-alive connection that dies under a create, and
-- other promises of DESIGN.md's "promises at the edges" that live in the C core.
-- Against the real mock server (nginx + Lua on 127.0.0.1).
local core = require "kie.core"

local KEY = "sk-core-edges-4e1d07"
local CREATE = "/api/v1/jobs/createTask"
local REQ = {
  model = "ideogram/character",
  input = { prompt = "a knight", reference_image_urls = { "https://example.com/ref.png" } },
}

-- Runs step until the transfer id is handed out, then returns its result.
local function settle(c, id)
  for _ = 1, 2000 do
    local _, done = c:step(10)
    for _, d in ipairs(done or {}) do
      if d == id then return c:result(id) end
    end
  end
  error("transfer " .. tostring(id) .. " never finished")
end

describe("kie.core edges #core", function()
  local m, c

  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.02 }
  end)
  lazy_teardown(function()
    if c then c:close() end
    m:stop()
  end)
  before_each(function()
    m:reset()
    if c then c:close() end
    c = core.new{ api_key = KEY, base_url = m.url, timeout = 5, connect_timeout = 2 }
  end)

  describe("a create on a kept-alive connection that dies after reading it", function()
    it("is sent once and is unknown_outcome (blocking)", function()
      c:get_task("warm") -- not_found is an answer: the connection is kept alive
      m:fault{ path = CREATE, fault = "close_after_read" }
      local r, e = c:create_task(REQ)
      assert.is_nil(r)
      assert.equals("unknown_outcome", e.kind)
      assert.equals(1, m:count(CREATE))
    end)

    it("is sent once and is unknown_outcome (async)", function()
      local id = c:get_task_start("warm")
      settle(c, id)
      m:fault{ path = CREATE, fault = "close_after_read" }
      local r, e = settle(c, c:create_task_start(REQ))
      assert.is_nil(r)
      assert.equals("unknown_outcome", e.kind)
      assert.equals(1, m:count(CREATE))
    end)

    it("goes out on a fresh connection while reads keep reusing theirs", function()
      c:get_task("warm")
      assert(c:create_task(REQ))
      c:get_task("again")
      c:get_task("and again")
      assert.equals(4, m:count())
      assert.equals(2, m:connections())
    end)
  end)
end)
