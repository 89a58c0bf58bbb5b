-- kie.callback: both payload shapes, HMAC verification (C, libcrypto), the
-- timestamp window both ways, replays, and real callbacks from the mock.
local callback = require "kie.callback"

local KEY = "test-webhook-hmac-key"
local TASK = "ee9c2715375b7837f8bb51d641ff5863"
local TS = 1769670760
local VECTOR = "xG6/yOyrMyJtUdc1yjmHpKLHSHF3MpzOPa6uxSj3qb4="

local function now() return TS + 10 end

local MARKET = [[{"code":200,"msg":"Playground task completed successfully.","data":{
  "taskId":"ee9c2715375b7837f8bb51d641ff5863","model":"ideogram/character","state":"success",
  "param":"{\"model\":\"ideogram/character\",\"input\":{\"prompt\":\"p\"}}",
  "resultJson":"{\"resultUrls\":[\"https://example.com/generated-image.jpg\"]}",
  "completeTime":1755599644000,"createTime":1755599634000,"costTime":8,"consumeCredits":100}}]]

local WEBHOOK_PAGE = [[{"taskId":"ee9c2715375b7837f8bb51d641ff5863","code":200,"msg":"Success",
  "data":{"task_id":"ee9c2715375b7837f8bb51d641ff5863","callbackType":"task_completed"}}]]

local FAILED = [[{"code":501,"msg":"Playground task failed.","data":{"taskId":"bd3a","model":"m",
  "state":"fail","param":"{}","failCode":"500","failMsg":"Internal server error"}}]]

describe("kie.callback #smoke", function()
  it("signs with the published scheme (test vector)", function()
    local h = callback.sign(KEY, TASK, TS)
    assert.equals(VECTOR, h["X-Webhook-Signature"])
    assert.equals(tostring(TS), h["X-Webhook-Timestamp"])
  end)

  it("parses and verifies the Market shape, decoding the task like get_task", function()
    local ev, err = callback.parse(MARKET, callback.sign(KEY, TASK, TS), { hmac_key = KEY, now = now })
    assert.is_nil(err)
    assert.equals(TASK, ev.task_id)
    assert.equals("success", ev.state)
    assert.is_true(ev.verified)
    assert.equals("p", ev.task.param.input.prompt)
    assert.same({ "https://example.com/generated-image.jpg" }, ev.task.resultUrls)
  end)

  it("reads the task id from data.task_id (webhook-verification page shape)", function()
    local ev = assert(callback.parse(WEBHOOK_PAGE, { ["x-webhook-timestamp"] = tostring(TS),
      ["x-webhook-signature"] = VECTOR }, { hmac_key = KEY, now = now }))
    assert.equals(TASK, ev.task_id)
    assert.equals("success", ev.state)
    assert.is_true(ev.verified)
  end)

  it("parses a failure and leaves verified false without a key", function()
    local ev = assert(callback.parse(FAILED, {}))
    assert.equals("fail", ev.state)
    assert.equals("500", ev.task.failCode)
    assert.is_false(ev.verified)
  end)

  it("rejects missing, wrong, stale and future signatures", function()
    local function kind(headers, opts)
      opts = opts or {}
      opts.hmac_key = opts.hmac_key or KEY
      opts.now = opts.now or now
      local ev, err = callback.parse(MARKET, headers, opts)
      assert.is_nil(ev)
      return err.kind, err.message
    end
    assert.equals("signature", (kind({})))
    local bad = callback.sign(KEY, TASK, TS)
    bad["X-Webhook-Signature"] = bad["X-Webhook-Signature"]:gsub("^.", "A")
    assert.equals("signature", (kind(bad)))
    assert.equals("signature", (kind(callback.sign("other-key", TASK, TS))))
    local _, msg = kind(callback.sign(KEY, TASK, TS), { now = function() return TS + 301 end })
    assert.matches("301 s old", msg)
    _, msg = kind(callback.sign(KEY, TASK, TS), { now = function() return TS - 301 end })
    assert.matches("in the future", msg)
    assert.equals("signature", (kind({ ["X-Webhook-Timestamp"] = "12abc", ["X-Webhook-Signature"] = VECTOR })))
    -- inside the window either way is fine
    assert.truthy(callback.parse(MARKET, callback.sign(KEY, TASK, TS), { hmac_key = KEY,
      now = function() return TS - 299 end }))
  end)

  it("rejects a replay when given a seen table", function()
    local seen = {}
    local h = callback.sign(KEY, TASK, TS)
    assert.truthy(callback.parse(MARKET, h, { hmac_key = KEY, now = now, seen = seen }))
    local ev, err = callback.parse(MARKET, h, { hmac_key = KEY, now = now, seen = seen })
    assert.is_nil(ev)
    assert.equals("signature", err.kind)
    assert.matches("replayed", err.message)
  end)


  it("is verified only when every task id in the body is the signed one", function()
    local h = callback.sign(KEY, TASK, TS)
    -- a signed top-level taskId with another task's results in data: forged
    local forged = {
      '{"taskId":"' .. TASK .. '","code":200,"data":{"taskId":"task_other","state":"success",' ..
        '"resultJson":"{\\"resultUrls\\":[\\"https://evil.example/x.png\\"]}"}}',
      '{"taskId":"' .. TASK .. '","code":200,"data":{"task_id":"task_other","state":"success"}}',
      '{"code":200,"data":{"taskId":"' .. TASK .. '","task_id":"task_other","state":"success"}}',
      '{"taskId":"' .. TASK .. '","code":200,"data":{"taskId":"' .. TASK .. '","task_id":7}}',
    }
    for _, body in ipairs(forged) do
      local seen = {}
      local ev, err = callback.parse(body, h, { hmac_key = KEY, now = now, seen = seen })
      assert.is_nil(ev, body)
      assert.equals("signature", err.kind)
      assert.matches("task ids? .*disagree", err.message)
      assert.is_nil(next(seen)) -- a forged body does not use up the replay slot
      -- unverified, the body is ambiguous: not understood
      ev, err = callback.parse(body, {})
      assert.is_nil(ev)
      assert.equals("protocol", err.kind)
    end
    -- the same id in every place is fine
    local ev = assert(callback.parse('{"taskId":"' .. TASK .. '","code":200,"data":{"taskId":"' .. TASK ..
      '","task_id":"' .. TASK .. '","state":"success"}}', h, { hmac_key = KEY, now = now }))
    assert.is_true(ev.verified)
    assert.equals(TASK, ev.task.taskId)
  end)
  it("returns protocol for bodies it cannot understand", function()
    for _, body in ipairs{ "not json", "[1,2]", '{"code":200,"data":{}}', '{"data":{"taskId":""}}' } do
      local ev, err = callback.parse(body, {})
      assert.is_nil(ev)
      assert.equals("protocol", err.kind)
    end
    local ev, err = callback.parse('{"data":{"taskId":"t","resultJson":"{oops"}}', {})
    assert.is_nil(ev)
    assert.equals("protocol", err.kind)
  end)

  it("raises on misuse", function()
    assert.has_error(function() callback.parse(42, {}) end)
    assert.has_error(function() callback.parse(MARKET, {}, { hmac_key = "" }) end)
    assert.has_error(function() callback.sign(nil, TASK, TS) end)
  end)
end)

describe("kie.callback against the mock #core", function()
  local m
  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = "k", pace = 0.01, hmac_key = "mock-hmac-key" }
  end)
  lazy_teardown(function() m:stop() end)

  it("verifies the callbacks the mock sends for success and failure", function()
    local core = require "kie.core"
    local c = core.new{ api_key = "k", base_url = m.url }
    local sink = m.url .. "/_mock/callback_sink"
    local ok_task = assert(c:create_task{ model = "ideogram/character", callBackUrl = sink,
      input = { prompt = "x", reference_image_urls = { "https://example.com/r.png" } } })
    local bad_task = assert(c:create_task{ model = "ideogram/character", callBackUrl = sink,
      input = { prompt = "#fail", reference_image_urls = { "https://example.com/r.png" } } })
    c:close()
    local got = m:wait_callbacks(2, 10)
    assert.equals(2, #got)
    local states = {}
    for _, cb in ipairs(got) do
      local ev, err = callback.parse(cb.body, cb.headers, { hmac_key = "mock-hmac-key" })
      assert.is_nil(err)
      assert.is_true(ev.verified)
      states[ev.task_id] = ev.state
      local _, bad = callback.parse(cb.body, cb.headers, { hmac_key = "wrong-key" })
      assert.equals("signature", bad.kind)
    end
    assert.equals("success", states[ok_task.taskId])
    assert.equals("fail", states[bad_task.taskId])
  end)
end)
