-- "Everything is checked before anything is paid" (issue 10, items 2 and 22): run,
-- run_all and the *_async calls check every option (theirs, wait's, upload's)
-- before the first request; an unknown option name raises in every call that
-- takes options. Each case counts the creates the mock kie.ai received.
local kie = require "kie"
local mock = require "spec.support.mock"

local KEY = "sk-checked-first-2b9d"
local CREATE = "/api/v1/jobs/createTask"

local function req(extra)
  local r = { model = "ideogram/character",
    input = { prompt = "checked", reference_image_urls = { "https://example.com/ref.png" } } }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

describe("options are checked before anything is paid #integration", function()
  local m, c

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0 }
    c = kie.new{ api_key = KEY, base_url = m.url, upload_url = m.url, timeout = 5,
      rate_limits = { create = false, poll = false } }
  end)
  lazy_teardown(function()
    if c then c:close() end
    if m then m:stop() end
  end)

  -- fn raises a message matching `pattern`, and no create (nor upload) went out
  local function raises_unpaid(pattern, fn)
    local creates, uploads = m:count(CREATE), #m:requests("/api/file-*")
    local ok, msg = pcall(fn)
    assert.is_false(ok, "did not raise")
    assert.matches(pattern, tostring(msg))
    assert.equals(0, m:count(CREATE) - creates, "a create was sent before the check")
    assert.equals(0, #m:requests("/api/file-*") - uploads, "an upload was sent before the check")
  end

  local BAD_WAITS = {
    { { timout = 5 }, "unknown option 'timout'" },
    { { timeout = "5" }, "timeout" },
    { { timeout = -1 }, "timeout" },
    { { timeout = 0 / 0 }, "timeout" },
    { { interval = 0 }, "interval" },
    { { max_interval = -2 }, "max_interval" },
    { { on_update = true }, "on_update" },
    { "fast", "wait" },
  }

  it("run: a bad wait option raises before the create (its id would be lost)", function()
    for _, case in ipairs(BAD_WAITS) do
      raises_unpaid(case[2], function() c:run(req{ wait = case[1] }) end)
    end
  end)

  it("run: bad upload options and a non-boolean strict raise before anything is sent", function()
    raises_unpaid("unknown option 'uploadPath'", function() c:run(req{ upload = { uploadPath = "x" } }) end)
    raises_unpaid("max_bytes", function() c:run(req{ upload = { max_bytes = "1" } }) end)
    raises_unpaid("strict", function() c:run(req{ strict = "yes" }) end)
  end)

  it("run_async, wait_async and create_task's opts raise at the call", function()
    raises_unpaid("unknown option 'timout'", function() c:run_async(req{ wait = { timout = 1 } }, function() end) end)
    raises_unpaid("unknown option 'bogus'", function() c:wait_async("task_x", { bogus = 1 }, function() end) end)
    raises_unpaid("interval", function() c:wait_async("task_x", { interval = -1 }) end)
    raises_unpaid("unknown option 'stict'", function() c:create_task(req(), { stict = false }) end)
    assert.equals(0, c:step(0))
  end)

  it("run_all: every item is checked before the first request; unknown options raise", function()
    raises_unpaid("request 3", function()
      c:run_all({ req(), req(), req{ wait = { timout = 5 } } }, { concurrency = 1 })
    end)
    raises_unpaid("request 2", function() c:run_all({ req(), req{ upload = { bogus = 1 } } }) end)
    raises_unpaid("unknown option 'concurency'", function() c:run_all({ req() }, { concurency = 2 }) end)
    -- and inside kie.spawn the same
    local h = kie.spawn(function() return c:run_all({ req(), req{ wait = { timeout = -1 } } }) end)
    local _, err = h:result()
    assert.equals("raised", err.kind)
    assert.matches("request 2", err.message)
  end)

  it("a good run still goes through once", function()
    local creates = m:count(CREATE)
    local info = assert(c:run(req{ wait = { interval = 0.02, timeout = 5 } }))
    assert.equals("success", info.state)
    assert.equals(1, m:count(CREATE) - creates)
  end)
end)
