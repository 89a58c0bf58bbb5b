-- kie.core, the C module: options, JSON bridge, every error kind, and the
-- non-blocking engine (step budget, progress, wakeup) against
-- the real mock server (nginx + Lua on 127.0.0.1).
local core = require "kie.core"

local KEY = "sk-core-spec-9f3b1c"

local function new(opts)
  local o = { api_key = KEY, base_url = "http://127.0.0.1:1" }
  for k, v in pairs(opts or {}) do o[k] = v end
  return core.new(o)
end

describe("kie.core module #smoke #core", function()
  it("has a version and reports libcurl", function()
    assert.matches("^%d+%.%d+%.%d+", core._VERSION)
    assert.is_string(core.curl_version)
    assert.is_true(core.async_dns)
  end)

  it("raises on programmer errors in new()", function()
    assert.has_error(function() core.new() end)
    assert.has_error(function() core.new{ base_url = "http://x" } end, "kie.core.new: option 'api_key' is required")
    assert.has_error(function() new{ bogus = 1 } end, "kie.core.new: unknown option 'bogus'")
    local bad_timeout = "kie.core.new: option 'timeout' must be a positive number of seconds up to 86400"
    assert.has_error(function() new{ timeout = -1 } end, bad_timeout)
    assert.has_error(function() new{ timeout = "5" } end, bad_timeout)
    assert.has_error(function() new{ api_key = "a\r\nX-Evil: 1" } end)
  end)

  it("never shows the key in tostring and closes idempotently", function()
    local c = new()
    assert.equals("kie.core.Client (open)", tostring(c))
    c:close()
    c:close()
    assert.equals("kie.core.Client (closed)", tostring(c))
    assert.has_error(function() c:get_task("x") end, "kie.core: the client is closed")
  end)

  it("raises on wrong argument types, returns validation for an empty id", function()
    local c = new()
    assert.has_error(function() c:create_task("x") end)
    assert.has_error(function() c:get_task(nil) end)
    assert.has_error(function() c:call("DELETE", "/x") end)
    local r, e = c:get_task("")
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    c:close()
  end)

  it("refuses to send the key to another origin", function()
    local c = new{ base_url = "http://127.0.0.1:1/", upload_url = "http://127.0.0.1:2" }
    assert.has_error(function() c:call("GET", "http://127.0.0.1:1.evil.example/x") end)
    assert.has_error(function() c:call("GET", "http://127.0.0.1:3/x") end)
    assert.has_error(function() c:call("GET", "ftp://127.0.0.1:1/x") end)
    local _, e = c:call("GET", "http://127.0.0.1:2/api/x") -- allowed origin, nothing listens
    assert.equals("network", e.kind)
    c:close()
  end)

  it("encodes empty tables as arrays unless marked as objects", function()
    assert.equals('[]', core.encode({}))
    local s = core.encode{ input = { image_urls = {}, meta = setmetatable({}, { __jsontype = "object" }) } }
    assert.matches('"image_urls":%[%]', s)
    assert.matches('"meta":{}', s)
    assert.equals('["a",[]]', core.encode{ "a", {} })
    assert.equals('{"s":"x\\u0001"}', core.encode{ s = "x\1" })
    local r, msg = core.encode{ f = function() end }
    assert.is_nil(r)
    assert.is_string(msg)
  end)

  it("decodes null as nil and reports bad JSON", function()
    local t = core.decode('{"a":null,"b":{"c":null,"d":1},"e":[1,2]}')
    assert.is_nil(t.a)
    assert.is_nil(t.b.c)
    assert.equals(1, t.b.d)
    assert.same({ 1, 2 }, t.e)
    local r, msg = core.decode('{"a":')
    assert.is_nil(r)
    assert.is_string(msg)
    assert.is_nil((core.decode("null")))
  end)

  it("bounds JSON depth", function()
    local deep = string.rep("[", 200) .. string.rep("]", 200)
    assert.is_nil((core.decode(deep)))
  end)

  it("decodes a task's nested JSON strings (decode_task)", function()
    local t = core.decode_task{
      taskId = "t1", state = "success",
      param = '{"model":"m","input":{"prompt":"p"}}',
      resultJson = '{"resultUrls":["http://x/1.png"]}',
    }
    assert.equals("p", t.param.input.prompt)
    assert.same({ "http://x/1.png" }, t.resultUrls)
    local p = core.decode_task{ taskId = "t2", state = "waiting", resultJson = "" }
    assert.is_nil(p.resultJson)
    assert.same({}, p.resultUrls)
    local r, msg = core.decode_task{ resultJson = "{broken" }
    assert.is_nil(r)
    assert.matches("resultJson", msg)
  end)

  it("reports a refused connection as a retryable network error, also for creates", function()
    local c = new()
    local r, e = c:create_task{ model = "m", input = {} }
    assert.is_nil(r)
    assert.equals("network", e.kind)
    assert.is_true(e.retryable)
    assert.equals(7, e.curl_code)
    assert.equals("create_task", e.op)
    c:close()
  end)
end)

describe("kie.core against the mock #core", function()
  local m, c

  local REQ = {
    model = "ideogram/character",
    input = {
      prompt = "a knight in a forest",
      reference_image_urls = { "https://example.com/ref.png" },
      num_images = "2",
    },
  }

  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.02, https = true }
  end)
  lazy_teardown(function()
    if c then c:close() end
    m:stop()
  end)
  before_each(function()
    m:reset()
    m:config{ status_mode = "mirror", use_message_key = false }
    if c then c:close() end
    c = core.new{ api_key = KEY, base_url = m.url, timeout = 5, connect_timeout = 2 }
  end)

  local function wait_done(id)
    for _ = 1, 400 do
      local info, err = c:get_task(id)
      assert.is_nil(err)
      if info.state == "success" or info.state == "fail" then return info end
      core.sleep(0.01)
    end
    error("task did not finish")
  end

  it("creates a task and sends the key, JSON and num_images as a string", function()
    local task, err = c:create_task(REQ)
    assert.is_nil(err)
    assert.matches("^task_", task.taskId)
    local reqs = m:requests("/api/v1/jobs/createTask")
    assert.equals(1, #reqs)
    assert.equals("Bearer " .. KEY, reqs[1].headers["authorization"])
    assert.matches("application/json", reqs[1].headers["content-type"])
    assert.matches('"num_images":"2"', reqs[1].body)
  end)

  it("walks a task to success and decodes param, resultJson and resultUrls", function()
    local task = assert(c:create_task(REQ))
    local first = assert(c:get_task(task.taskId))
    assert.equals(task.taskId, first.taskId)
    assert.is_table(first.resultUrls)
    local info = wait_done(task.taskId)
    assert.equals("success", info.state)
    assert.equals("ideogram/character", info.param.model)
    assert.equals("a knight in a forest", info.param.input.prompt)
    assert.equals(2, #info.resultUrls)
    assert.same(info.resultJson.resultUrls, info.resultUrls)
    assert.matches("^http://127%.0%.0%.1:%d+/.*%.png", info.resultUrls[1])
  end)

  it("reports a failed task as data (state fail, failCode, failMsg)", function()
    local req = { model = "ideogram/character", input = { prompt = "#fail please",
      reference_image_urls = { "https://example.com/r.png" } } }
    local task = assert(c:create_task(req))
    local info = wait_done(task.taskId)
    assert.equals("fail", info.state)
    assert.equals("500", info.failCode)
    assert.is_string(info.failMsg)
    assert.same({}, info.resultUrls)
  end)

  it("maps a wrong key to auth (401) without leaking either key", function()
    local bad = core.new{ api_key = "sk-wrong-key-77", base_url = m.url }
    local r, e = bad:get_task("x")
    assert.is_nil(r)
    assert.equals("auth", e.kind)
    assert.equals(401, e.status)
    assert.equals(401, e.code)
    assert.is_false(e.retryable)
    assert.matches("access permissions", e.message)
    assert.is_nil(e.message:find("sk-wrong-key-77", 1, true))
    bad:close()
  end)

  it("maps the server's 422 validation to invalid, not retryable", function()
    local r, e = c:create_task{ model = "ideogram/character", input = { prompt = "x" } }
    assert.is_nil(r)
    assert.equals("invalid", e.kind)
    assert.equals(422, e.code)
    assert.is_false(e.retryable)
    assert.matches("reference_image_urls", e.message)
  end)

  it("maps an unknown task to not_found and URL-escapes the id", function()
    local r, e = c:get_task("a b&c=d/é")
    assert.is_nil(r)
    assert.equals("not_found", e.kind)
    assert.equals("a b&c=d/é", e.task_id)
    local q = m:requests("/api/v1/jobs/recordInfo")[1].query
    assert.equals("a b&c=d/é", q.taskId)
  end)

  it("reads credits and download-url through the generic call", function()
    local n = c:call("GET", "/api/v1/chat/credit")
    assert.is_number(n)
    local task = assert(c:create_task(REQ))
    local info = wait_done(task.taskId)
    local url = c:call("POST", "/api/v1/common/download-url", { url = info.resultUrls[1] })
    assert.is_string(url)
    local r, e = c:call("POST", "/api/v1/common/download-url", { url = "https://elsewhere.example/x.png" })
    assert.is_nil(r)
    assert.equals("invalid", e.kind)
  end)

  -- every documented code, answered both as an HTTP status and as HTTP 200 + body code
  local CODES = {
    [400] = { "invalid", false }, [401] = { "auth", false }, [402] = { "credits", false },
    [404] = { "not_found", false }, [408] = { "server", true }, [422] = { "invalid", false },
    [429] = { "rate_limited", true }, [433] = { "key_limit", false }, [455] = { "maintenance", true },
    [500] = { "server", true }, [501] = { "generation_failed", false }, [505] = { "disabled", false },
  }
  for code, want in pairs(CODES) do
    it("maps code " .. code .. " to " .. want[1] .. " (HTTP status and in-body)", function()
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "status", status = code, code = code, msg = "m" .. code }
      local r, e = c:get_task("t")
      assert.is_nil(r)
      assert.equals(want[1], e.kind)
      assert.equals(code, e.status)
      assert.equals(code, e.code)
      assert.equals(want[2], e.retryable)
      assert.matches("m" .. code, e.message)
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "code_in_200", code = code, msg = "b" .. code }
      r, e = c:get_task("t")
      assert.equals(want[1], e.kind)
      assert.equals(200, e.status)
      assert.equals(code, e.code)
      -- a create is retryable only for 429 and 455
      m:fault{ path = "/api/v1/jobs/createTask", fault = "status", status = code, code = code }
      r, e = c:create_task(REQ)
      assert.equals(want[1], e.kind)
      assert.equals(code == 429 or code == 455, e.retryable)
    end)
  end

  it("maps an HTML 502 page from a proxy to http, retryable only for reads", function()
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "html_502" }
    local r, e = c:get_task("t")
    assert.is_nil(r)
    assert.equals("http", e.kind)
    assert.equals(502, e.status)
    assert.is_nil(e.code)
    assert.is_true(e.retryable)
    assert.matches("non%-JSON", e.message)
    -- a gateway's 5xx page may hide a created task: a create reports unknown_outcome
    m:fault{ path = "/api/v1/jobs/createTask", fault = "html_502" }
    r, e = c:create_task(REQ)
    assert.equals("unknown_outcome", e.kind)
    assert.equals("http", e.cause)
    assert.equals(502, e.status)
    assert.is_false(e.retryable)
    -- while a 4xx page is a refusal
    m:fault{ path = "/api/v1/jobs/createTask", fault = "raw", status = 403, body = "<html>no</html>",
      content_type = "text/html" }
    r, e = c:create_task(REQ)
    assert.equals("http", e.kind)
    assert.equals(403, e.status)
  end)

  it("maps broken, truncated and wrongly shaped JSON to protocol", function()
    for _, f in ipairs{ "bad_json", "truncated_json" } do
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = f }
      local r, e = c:get_task("t")
      assert.is_nil(r)
      assert.equals("protocol", e.kind, f)
      assert.is_false(e.retryable)
      assert.equals(200, e.status)
    end
    -- for a create, an unreadable answer means the task may exist
    m:fault{ path = "/api/v1/jobs/createTask", fault = "wrong_shape" }
    local r, e = c:create_task(REQ)
    assert.is_nil(r)
    assert.equals("unknown_outcome", e.kind)
    assert.equals("protocol", e.cause)
    assert.matches("may exist", e.message)
  end)

  it("caps the response body (too_large)", function()
    local small = core.new{ api_key = KEY, base_url = m.url, max_response_bytes = 64 * 1024 }
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "huge", bytes = 4 * 1024 * 1024 }
    local r, e = small:get_task("t")
    assert.is_nil(r)
    assert.equals("too_large", e.kind)
    assert.is_false(e.retryable)
    small:close()
  end)

  it("reads Retry-After as seconds or an HTTP date", function()
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "rate_limit", retry_after = "3" }
    local _, e = c:get_task("t")
    assert.equals("rate_limited", e.kind)
    assert.equals(3, e.retry_after)
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "rate_limit",
      retry_after = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 30) }
    _, e = c:get_task("t")
    assert.is_true(e.retry_after > 20 and e.retry_after <= 31)
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "rate_limit" }
    _, e = c:get_task("t")
    assert.equals("rate_limited", e.kind)
    assert.is_nil(e.retry_after)
  end)

  it("reads msg or message", function()
    m:config{ use_message_key = true }
    local r, e = c:get_task("nope")
    assert.is_nil(r)
    assert.equals("not_found", e.kind)
    assert.matches("not found", e.message)
  end)

  it("treats HTTP 200 with an error code as an error (status_mode 200)", function()
    m:config{ status_mode = "200" }
    local r, e = c:get_task("nope")
    assert.is_nil(r)
    assert.equals("not_found", e.kind)
    assert.equals(200, e.status)
    assert.equals(404, e.code)
  end)

  it("redacts the key when the server echoes it", function()
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "code_in_200", code = 401, msg = "bad key " .. KEY .. "!" }
    local _, e = c:get_task("t")
    assert.matches("bad key %[redacted%]!", e.message)
    assert.is_nil(e.message:find(KEY, 1, true))
  end)

  it("returns unknown_outcome when a create may have reached the server", function()
    m:fault{ path = "/api/v1/jobs/createTask", fault = "drop_after_body" }
    local r, e = c:create_task(REQ)
    assert.is_nil(r)
    assert.equals("unknown_outcome", e.kind)
    assert.equals("network", e.cause)
    assert.is_false(e.retryable)
    assert.equals(1, m:count("/api/v1/jobs/createTask"))

    local quick = core.new{ api_key = KEY, base_url = m.url, timeout = 0.3 }
    m:fault{ path = "/api/v1/jobs/createTask", fault = "delay", seconds = 1.5 }
    r, e = quick:create_task(REQ)
    assert.equals("unknown_outcome", e.kind)
    assert.equals("timeout", e.cause)
    assert.equals(28, e.curl_code)
    quick:close()
  end)

  it("reports dropped connections and timeouts on reads as retryable", function()
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "drop_before_body" }
    local r, e = c:get_task("t")
    assert.is_nil(r)
    assert.equals("network", e.kind)
    assert.is_true(e.retryable)
    local quick = core.new{ api_key = KEY, base_url = m.url, timeout = 0.3 }
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = 1.5 }
    r, e = quick:get_task("t")
    assert.equals("timeout", e.kind)
    assert.is_true(e.retryable)
    quick:close()
  end)

  it("get_task's own timeout shortens the client's for that read only", function()
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = 1.5, times = 2 }
    local t0 = core.now()
    local r, e = c:get_task("t", 0.3) -- the client's timeout is 5 s
    assert.is_nil(r)
    assert.equals("timeout", e.kind)
    assert.is_true(core.now() - t0 < 1.2, "the 1.5 s delay was waited out")
    r, e = c:get_task("t") -- the next read has the client's 5 s again: it outlasts the delay
    assert.is_nil(r)
    assert.equals("not_found", e.kind)
    assert.has_error(function() c:get_task("t", -1) end)
    assert.has_error(function() c:get_task("t", 0 / 0) end)
  end)

  it("keeps one connection alive for 100 sequential get_task calls", function()
    local task = assert(c:create_task(REQ))
    for _ = 1, 100 do assert(c:get_task(task.taskId)) end
    assert.equals(100, m:count("/api/v1/jobs/recordInfo"))
    assert.equals(1, m:connections("/api/v1/jobs/recordInfo"))
    assert.equals(1, m:connections()) -- the create and the reads shared one kept-alive connection
  end)

  it("verifies TLS: works with the test CA, fails without it", function()
    local tls = core.new{ api_key = KEY, base_url = m.https_url, ca_file = m.ca_file }
    local task, err = tls:create_task(REQ)
    assert.is_nil(err)
    assert.matches("^task_", task.taskId)
    tls:close()
    local untrusted = core.new{ api_key = KEY, base_url = m.https_url, ca_file = "/etc/ssl/certs/ca-certificates.crt" }
    local r, e = untrusted:create_task(REQ)
    assert.is_nil(r)
    assert.equals("network", e.kind)
    assert.is_false(e.retryable) -- a certificate problem is not fixed by retrying
    untrusted:close()
    assert.equals(1, m:count("/api/v1/jobs/createTask")) -- the untrusted one sent nothing
  end)

  describe("step", function()
    local RECORD = "/api/v1/jobs/recordInfo"
    local tid
    before_each(function()
      tid = assert(c:create_task{ model = "ideogram/v3-reframe",
        input = { image_url = "https://example.com/a.png", image_size = "square" } }).taskId
    end)

    -- Steps until every id in `want` has been handed out; returns the ids per step.
    local function drain(want, budget)
      local got, per_step = {}, {}
      local deadline = core.now() + 10
      while next(want) do
        assert.is_true(core.now() < deadline, "timed out")
        local _, ids = c:step(10, budget)
        per_step[#per_step + 1] = ids and #ids or 0
        for _, id in ipairs(ids or {}) do
          assert.is_true(want[id], "unexpected id " .. id)
          want[id] = nil
          got[#got + 1] = id
          local info, err = c:result(id)
          assert.is_nil(err)
          assert.equals(tid, info.taskId)
        end
      end
      return got, per_step
    end

    local function start(n)
      local want = {}
      for _ = 1, n do want[assert(c:get_task_start(tid))] = true end
      return want
    end

    it("with a zero budget still hands every transfer out exactly once", function()
      local N = 6
      drain(start(N))
      local before = m:count(RECORD)
      local want = start(N)
      core.sleep(0.2) -- answers pile up between frames
      local got = drain(want, 0)
      assert.equals(N, #got)
      assert.equals(0, c:pending())
      assert.equals(before + N, m:count(RECORD))
    end)

    it("poll_timeout is 0 while a budget has left answers unread", function()
      local N = 6
      drain(start(N))
      local before = m:count(RECORD)
      local want = start(N)
      local left, deadline = N, core.now() + 20
      while left > 0 do
        assert.is_true(core.now() < deadline, "timed out")
        -- every request sent so far has its answer waiting after this pause (a
        -- transfer that had to open a connection sends in a step)
        local all_sent = m:count(RECORD) - before == N
        core.sleep(0.05)
        local _, ids = c:step(0, 0)
        for _, id in ipairs(ids or {}) do
          assert.is_true(want[id])
          c:result(id)
          left = left - 1
        end
        if left > 0 and all_sent then assert.equals(0, c:poll_timeout()) end
      end
      assert.is_nil(c:poll_timeout())
    end)

    it("progress drives transfers without handing them out; step then hands out all", function()
      local N = 4
      local want = start(N)
      for id in pairs(want) do
        local deadline = core.now() + 10
        while not c:progress(id, 10) do assert.is_true(core.now() < deadline, "timed out") end
      end
      local n, ids = c:step(0, 0) -- nothing left to read: the budget limits reading only
      assert.equals(0, n)
      assert.equals(N, #ids)
      for _, id in ipairs(ids) do
        assert.is_true(want[id])
        assert.is_table((c:result(id)))
      end
    end)

    it("wakeup makes a waiting step return before the answer", function()
      m:fault{ path = RECORD, fault = "delay", seconds = 3 }
      local id = assert(c:get_task_start(tid))
      c:wakeup()
      local t0 = core.now()
      local n, ids = c:step(5000)
      assert.is_true(core.now() - t0 < 2, "step did not return at the wakeup")
      assert.equals(1, n)
      assert.is_nil(ids)
      local got = drain({ [id] = true })
      assert.same({ id }, got)
    end)

    it("rejects a bad budget", function()
      assert.has_error(function() c:step(0, -1) end)
      assert.has_error(function() c:step(0, 0 / 0) end)
      assert.has_error(function() c:step(-1) end)
    end)
  end)
end)
