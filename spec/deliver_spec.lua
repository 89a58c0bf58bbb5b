-- client:deliver without a fleet: a callback verified like kie.callback.parse
-- (typed errors, nothing recorded), the task id checked before it is used, the
-- client's own waits woken (each confirms with one get_task), and an intent named
-- by the callback's param.callBackUrl (kie_intent=ID) resolved in the journal.
-- Talks only to the mock on 127.0.0.1.
local kie = require "kie"
local callback = require "kie.callback"
local mock = require "spec.support.mock"
local procs = require "spec.support.procs"
local core = require "kie.core"

local KEY = "sk-deliver-spec"
local HMAC = "deliver-hmac-key"
local INFO = "/api/v1/jobs/recordInfo"

local function body_of(task_id, state, param)
  return core.encode{ code = state == "success" and 200 or 501, msg = "done", data = {
    taskId = task_id, model = "ideogram/character", state = state,
    param = param or core.encode{ model = "ideogram/character", input = { prompt = "p" } },
    resultJson = state == "success" and '{"resultUrls":["https://example.com/a.png"]}' or "",
  } }
end

local function request(m, prompt)
  return { model = "ideogram/character", callBackUrl = m.url .. "/_mock/callback_sink",
    input = { prompt = prompt, reference_image_urls = { m.url .. "/files/ref.png" } } }
end

describe("client:deliver #integration", function()
  local m
  setup(function() m = mock.start{ api_key = KEY, pace = 0.05, hmac_key = HMAC } end)
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  local function client(extra)
    local o = { api_key = KEY, base_url = m.url, timeout = 5, rate_limits = { create = false, poll = false } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return kie.new(o)
  end

  it("refuses bad signatures, stale timestamps, non-JSON bodies and odd task ids (typed errors)", function()
    local c = client()
    local id = "task_ideogram_17651799229110001"
    local good = callback.sign(HMAC, id, os.time())
    local cases = {
      { body_of(id, "success"), callback.sign("other-key", id, os.time()), "signature" },
      { body_of(id, "success"), callback.sign(HMAC, id, os.time() - 3600), "signature" },
      { body_of(id, "success"), {}, "signature" },
      { "<html>not json</html>", good, "protocol" },
      { body_of("../../etc/passwd", "success"), callback.sign(HMAC, "../../etc/passwd", os.time()), "protocol" },
      { body_of("a b", "success"), callback.sign(HMAC, "a b", os.time()), "protocol" },
      { body_of(("x"):rep(200), "success"), callback.sign(HMAC, ("x"):rep(200), os.time()), "protocol" },
    }
    for i, cs in ipairs(cases) do
      local ev, err = c:deliver(cs[1], cs[2], { hmac_key = HMAC })
      assert.is_nil(ev, "case " .. i)
      assert.equal(cs[3], err.kind, "case " .. i .. ": " .. tostring(err))
    end
    -- nothing recorded: a wait on the task still polls (no delivery shortcut)
    local ev = assert(c:deliver(body_of(id, "success"), good, { hmac_key = HMAC }))
    assert.equal(id, ev.task_id)
    assert.equal("success", ev.state)
    assert.is_true(ev.verified)
    c:close()
  end)

  it("a callBackUrl alone does not delay the polls: callbacks reaching deliver do", function()
    local c = client()
    local task = assert(c:create_task(request(m, "no deliver")))
    -- nothing delivered on this client: kie.ai's schedule (30 s would pass the deadline)
    assert.equal("success", assert(c:wait(task.taskId, { timeout = 5 })).state)
    c:close()
  end)

  it("wakes the client's own spawned wait, which confirms with one get_task", function()
    local c = client()
    local other = "task_ideogram_17651799229110008" -- this client does take callbacks
    assert(c:deliver(body_of(other, "success"), callback.sign(HMAC, other, os.time()), { hmac_key = HMAC }))
    local task = assert(c:create_task(request(m, "deliver local")))
    local h = kie.spawn(function() return c:wait(task.taskId, { timeout = 60 }) end)
    local cbs = m:wait_callbacks(1, 5)
    assert.equal(1, #cbs)
    -- the wait expects a callback (its create had a callBackUrl): it did not poll yet
    for _ = 1, 20 do c:step(10) end
    assert.is_false(h:done())
    assert.equal(0, m:count(INFO))
    local ev = assert(c:deliver(cbs[1].body, cbs[1].headers, { hmac_key = HMAC }))
    assert.equal(task.taskId, ev.task_id)
    local t0 = os.time()
    while not h:done() and os.time() - t0 < 10 do c:step(10) end
    local info, err = h:result()
    assert.is_nil(err)
    assert.equal("success", info.state)
    assert.equal(1, m:count(INFO))
    c:close()
  end)

  it("a callback delivered before the wait starts ends it with one get_task", function()
    local c = client()
    local task = assert(c:create_task(request(m, "deliver early")))
    local cbs = m:wait_callbacks(1, 5)
    assert(c:deliver(cbs[1].body, cbs[1].headers, { hmac_key = HMAC }))
    local info = assert(c:wait(task.taskId, { timeout = 60 }))
    assert.equal("success", info.state)
    assert.equal(1, m:count(INFO))
    c:close()
  end)

  it("a sleep that is not a kie task (a host whose sleep yields, as kie.ngx's) is woken too", function()
    local pending -- the callback to deliver from inside the sleep, as another request would
    local slept = 0 -- seconds of sleep asked for
    local c
    c = client{ sleep = function(sec)
      slept = slept + sec
      if pending then
        local cb = pending
        pending = nil
        assert(c:deliver(cb.body, cb.headers, { hmac_key = HMAC }))
      end
      require("kie.core").sleep(sec)
    end }
    local other = "task_ideogram_17651799229110009" -- a callback of another task first
    assert(c:deliver(body_of(other, "success"), callback.sign(HMAC, other, os.time()), { hmac_key = HMAC }))
    local task = assert(c:create_task(request(m, "deliver sleep 2")))
    pending = m:wait_callbacks(1, 5)[1]
    -- no run time known with a callback: no poll before 30 s (cut to the deadline);
    -- woken, it ends after the slice it was in
    slept = 0
    local info, err = c:wait(task.taskId, { timeout = 10 })
    assert.is_nil(err)
    assert.equal("success", info.state)
    assert.equal(1, m:count(INFO))
    assert.is_true(slept < 1, slept .. " s of sleep asked for")
    c:close()
  end)

  it("resolves the journal intent named by kie_intent in param.callBackUrl", function()
    local path = procs.tmpname(".jsonl")
    local c = client{ journal = path }
    local j = c._journal
    local intent = assert(j:intent("fp-1", "ideogram/character"))
    local id = "task_ideogram_17651799229110002"
    local param = core.encode{ model = "ideogram/character",
      callBackUrl = "https://example.com/kie-callback?a=1&kie_intent=" .. intent, input = { prompt = "p" } }
    -- unverified (no hmac_key): the intent stays open, the body is not signed
    assert(c:deliver(body_of(id, "success", param), {}))
    local open = c:resume()
    assert.equal(1, #open)
    assert.equal(intent, open[1].intent)
    assert(c:deliver(body_of(id, "success", param), callback.sign(HMAC, id, os.time()), { hmac_key = HMAC }))
    open = c:resume()
    assert.equal(1, #open)
    assert.equal(id, open[1].taskId)
    assert.equal("ideogram/character", open[1].model)
    -- an intent id that is not one (odd characters) is ignored
    local bad = core.encode{ model = "ideogram/character",
      callBackUrl = "https://example.com/cb?kie_intent=..%2F..%2Fx y", input = { prompt = "p" } }
    local id2 = "task_ideogram_17651799229110003"
    assert(c:deliver(body_of(id2, "success", bad), callback.sign(HMAC, id2, os.time()), { hmac_key = HMAC }))
    assert.equal(1, #c:resume())
    c:close()
    os.remove(path)
  end)
end)
