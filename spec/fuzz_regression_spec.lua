-- Regressions for what `make fuzz` found in the core's response decoding (fuzz/).
local kie = require "kie"
local core = require "kie.core"
local callback = require "kie.callback"

local KEY = "sk-fuzz-regression-31c9"

describe("fuzz findings #core", function()
  it("decode_task keeps an empty param string and does not lose its stack slot", function()
    -- `"param": ""` made decode_task pop one value too many: the task table itself,
    -- so the next lookup raised "attempt to index a nil value"
    local t = { taskId = "t1", param = "", resultJson = '{"resultUrls":["https://x/a.png"]}' }
    local ok, r = pcall(core.decode_task, t)
    assert.is_true(ok, tostring(r))
    assert.equals(t, r)
    assert.equals("", t.param)
    assert.same({ "https://x/a.png" }, t.resultUrls)
  end)

  it("a callback whose param is empty parses instead of raising", function()
    local ev, err = callback.parse('{"code":200,"data":{"taskId":"t1","state":"success","param":"","resultJson":""}}', {})
    assert.is_nil(err)
    assert.equals("t1", ev.task_id)
    assert.same({}, ev.task.resultUrls)
  end)

  describe("against the mock", function()
    local m, c
    lazy_setup(function()
      m = require("spec.support.mock").start{ api_key = KEY }
      c = kie.new{ api_key = KEY, base_url = m.url, timeout = 5, max_retries = 0,
        rate_limits = { create = false, poll = false } }
    end)
    lazy_teardown(function()
      c:close()
      m:stop()
    end)

    it("get_task of a task whose param is empty returns it", function()
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "raw", status = 200, content_type = "application/json",
        body = '{"code":200,"msg":"success","data":{"taskId":"t1","state":"waiting","param":"","resultJson":""}}' }
      local info, err = c:get_task("t1")
      assert.is_nil(err)
      assert.equals("waiting", info.state)
      assert.equals("", info.param)
      assert.same({}, info.resultUrls)
    end)

    for _, code in ipairs{ "2033333333333333333330", "1e400", "200.5", "-9.3e18" } do
      it("a body code of " .. code .. " is an error, never success", function()
        m:fault{ path = "/api/v1/jobs/recordInfo", fault = "raw", status = 200, content_type = "application/json",
          body = '{"code":' .. code .. ',"msg":"odd","data":{"taskId":"t1","state":"success"}}' }
        local info, err = c:get_task("t1")
        assert.is_nil(info)
        assert.equals("http", err.kind)
        assert.equals(200, err.status)
        assert.matches("odd", err.message)
      end)
    end
  end)
end)
