-- kie (the Lua layer): options, typed errors, and the thin calls against the mock.
local kie = require "kie"
local errors = require "kie.errors"

local KEY = "sk-client-spec-4d2a7e"

describe("kie.new #smoke", function()
  it("raises clearly on unknown options and wrong types", function()
    assert.has_error(function() kie.new{ api_key = KEY, timout = 3 } end, "kie.new: unknown option 'timout'")
    assert.has_error(function() kie.new{ api_key = KEY, timeout = "3" } end,
      "kie.new: option 'timeout' must be a number, got string")
    assert.has_error(function() kie.new{ api_key = KEY, max_retries = 1.5 } end)
    assert.has_error(function() kie.new("key") end, "kie.new: options must be a table")
  end)

  it("raises when there is no key at all", function()
    if os.getenv("KIE_API_KEY") then return pending("KIE_API_KEY is set in this environment") end
    assert.has_error(function() kie.new{} end,
      "kie.new: no API key: pass api_key or set KIE_API_KEY (keys: https://kie.ai/api-key)")
  end)

  it("keeps methods reachable and the key out of the client table and tostring", function()
    local c = kie.new{ api_key = KEY, base_url = "http://127.0.0.1:1" }
    assert.is_function(c.create_task)
    assert.equals("kie.Client (http://127.0.0.1:1)", tostring(c))
    for k, v in pairs(c) do
      assert.is_nil(tostring(v):find(KEY, 1, true), k)
    end
    for _, v in pairs(c._opts) do
      assert.is_nil(tostring(v):find(KEY, 1, true))
    end
    c:close()
  end)

  it("returns typed errors with a one-line tostring", function()
    local c = kie.new{ api_key = KEY, base_url = "http://127.0.0.1:1" }
    local r, e = c:get_task("abc")
    assert.is_nil(r)
    assert.is_true(errors.is(e, "network"))
    assert.matches("^kie: network: get_task: transport failure", tostring(e))
    assert.is_nil(tostring(e):find(KEY, 1, true))
    c:close()
  end)

  it("raises on wrong argument types", function()
    local c = kie.new{ api_key = KEY, base_url = "http://127.0.0.1:1" }
    assert.has_error(function() c:create_task("nope") end, "create_task: request must be a table, got string")
    assert.has_error(function() c:get_task(42) end, "get_task: task_id must be a string, got number")
    assert.has_error(function() c:download_url() end)
    c:close()
  end)

  it("documents every kind with whether it is retryable", function()
    for _, kind in ipairs{ "validation", "auth", "credits", "not_found", "invalid", "rate_limited",
      "key_limit", "maintenance", "server", "generation_failed", "disabled", "http", "network",
      "timeout", "protocol", "too_large", "task_failed", "deadline", "unknown_outcome",
      "canceled", "io", "signature", "fleet" } do
      local k = errors.kinds[kind]
      assert.is_table(k, kind)
      assert.is_boolean(k.retryable)
      assert.is_string(k.what)
      assert.is_string(k.action)
    end
    local e = errors.new("deadline", "gave up", { task_id = "t1", state = "generating" })
    assert.equals("kie: deadline: gave up (task t1)", tostring(e))
    assert.is_false(e.retryable)
  end)

  it("sends empty lists as [] and kie.object() as {}", function()
    local core = require "kie.core"
    local s = core.encode{ a = {}, b = kie.object() }
    assert.matches('"a":%[%]', s)
    assert.matches('"b":{}', s)
  end)
end)

describe("kie client against the mock #core", function()
  local m, c

  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.02 }
    c = kie.new{ api_key = KEY, base_url = m.url, timeout = 5 }
  end)
  lazy_teardown(function()
    c:close()
    m:stop()
  end)

  it("creates, reads, and downloads-url a task", function()
    local task, err = c:create_task{
      model = "ideogram/v3-reframe",
      input = { image_url = "https://example.com/a.png", image_size = "landscape_16_9" },
    }
    assert.is_nil(err)
    local info
    for _ = 1, 400 do
      info = assert(c:get_task(task.taskId))
      if info.state == "success" then break end
      require("kie.core").sleep(0.01)
    end
    assert.equals("success", info.state)
    local url, uerr = c:download_url(info.resultUrls[1])
    assert.is_nil(uerr)
    assert.matches("^http://127%.0%.0%.1", url)
  end)

  it("reads credits as a number and errors get the error type", function()
    local n = assert(c:credits())
    assert.is_number(n)
    local r, e = c:download_url("https://not-kie.example/x.png")
    assert.is_nil(r)
    assert.is_true(errors.is(e, "invalid"))
    assert.matches("^kie: invalid: call: ", tostring(e))
  end)

  it("returns protocol when credits data is not a number", function()
    m:fault{ path = "/api/v1/chat/credit", fault = "wrong_shape" }
    local r, e = c:credits()
    assert.is_nil(r)
    assert.equals("protocol", e.kind)
  end)
end)
