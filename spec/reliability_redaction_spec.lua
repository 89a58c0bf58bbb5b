-- Issue 3 acceptance, part 4: logging and redaction. A broad set of scenarios
-- (success, wrong key, every fault, validation, unknown_outcome, download, a
-- server that echoes the key) runs with a distinctive key and a logger that keeps
-- everything; the key must appear in no log line, error, tostring or file.
local kie = require "kie"
local mock = require "spec.support.mock"
local procs = require "spec.support.procs"

math.randomseed(os.time())
local KEY = string.format("sk-REDACT-ME-%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
local WRONG = "sk-REDACT-ME-wrong-" .. string.format("%08x", math.random(0, 0x7fffffff))

local CREATE, GET, CREDIT = "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo", "/api/v1/chat/credit"

local function request(prompt)
  return { model = "ideogram/character",
    input = { prompt = prompt or "a fox", reference_image_urls = { "https://example.com/r.png" } } }
end

-- Renders any value, tables recursively (keys, values and __tostring), to text.
local function render(v, out, seen)
  out = out or {}
  seen = seen or {}
  local t = type(v)
  if t == "table" then
    if seen[v] then return out end
    seen[v] = true
    local mt = getmetatable(v)
    if mt and mt.__tostring then out[#out + 1] = tostring(v) end
    for k, x in pairs(v) do
      render(k, out, seen)
      out[#out + 1] = "="
      render(x, out, seen)
      out[#out + 1] = ";"
    end
  elseif t == "string" or t == "number" or t == "boolean" then
    out[#out + 1] = tostring(v)
  end
  return out
end

local function text_of(v)
  return table.concat(render(v), " ")
end

describe("reliability: the key never leaks #integration", function()
  local m
  local log = {}          -- every logger call: {level, message, fields}
  local seen = {}         -- every error, result and string the scenarios produced
  local journal_path = procs.tmpname(".jsonl")
  local files = {}

  local function logger(level, message, fields)
    log[#log + 1] = { level = level, message = message, fields = fields }
  end

  local function keep(...)
    for i = 1, select("#", ...) do
      local v = select(i, ...)
      seen[#seen + 1] = v
      if type(v) == "table" then seen[#seen + 1] = tostring(v) end
    end
    return ...
  end

  local function client(extra)
    local opts = { api_key = KEY, base_url = m.url, timeout = 0.3, connect_timeout = 0.3, logger = logger,
      retry = { base = 0.01, cap = 0.05, rate_limit_floor = 0.01, max_retry_after = 5 },
      rate_limits = { create = { limit = 20, window = 0.2 }, poll = { limit = 10, window = 0.05 } },
      max_response_bytes = 64 * 1024, journal = journal_path }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local c = kie.new(opts)
    keep(tostring(c))
    return c
  end

  local function no_key(text, what)
    assert.is_nil(text:find(KEY, 1, true), what .. " contains the key")
    assert.is_nil(text:find(WRONG, 1, true), what .. " contains the wrong key")
  end

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.02 }
  end)
  lazy_teardown(function()
    if m then m:stop() end
    os.remove(journal_path)
    for _, f in ipairs(files) do os.remove(f) end
  end)

  it("success: run, get_task, credits, download_url, download, resume", function()
    local c = client{ timeout = 5 }
    local info = keep(c:run{ model = "ideogram/character",
      input = { prompt = "a fox", reference_image_urls = { "https://example.com/r.png" } },
      wait = { interval = 0.02, timeout = 5 } })
    assert.equals("success", info.state)
    keep(c:get_task(info.taskId))
    keep(c:credits())
    local link = keep(c:download_url(info.resultUrls[1]))
    assert.is_string(link)
    local out = procs.tmpname(".png")
    files[#files + 1] = out
    assert.equals(out, keep(c:download(link, out)))
    keep(c:resume())
    -- a download never carries the key
    for _, r in ipairs(m:requests("/files/*")) do
      assert.is_nil(r.headers.authorization)
    end
    c:close()
  end)

  it("a wrong key: 401 on every call", function()
    local c = client{ api_key = WRONG }
    local _, e1 = keep(c:create_task(request()))
    local _, e2 = keep(c:get_task("task_x"))
    local _, e3 = keep(c:credits())
    for _, e in ipairs{ e1, e2, e3 } do assert.equals("auth", e.kind) end
    keep(tostring(c))
    c:close()
  end)

  it("every fault on create_task, get_task and credits", function()
    local c = client()
    local id = assert(c:create_task(request("for reads"))).taskId
    local faults = {
      { fault = "drop_before_body" }, { fault = "drop_after_body" }, { fault = "delay", seconds = 0.6 },
      { fault = "html_502" }, { fault = "code_in_200", code = 500 }, { fault = "status", status = 500 },
      { fault = "rate_limit" }, { fault = "rate_limit", retry_after = 0 }, { fault = "maintenance" },
      { fault = "bad_json" }, { fault = "truncated_json" }, { fault = "partial_body" },
      { fault = "huge", bytes = 256 * 1024 }, { fault = "wrong_shape" },
    }
    for _, f in ipairs(faults) do
      for _, path in ipairs{ CREATE, GET, CREDIT } do
        local spec = { path = path, times = 1 }
        for k, v in pairs(f) do spec[k] = v end
        m:fault(spec)
        if path == CREATE then keep(c:create_task(request("fault " .. f.fault)))
        elseif path == GET then keep(c:get_task(id))
        else keep(c:credits()) end
      end
    end
    -- connection refused
    local closed = client{ base_url = "http://127.0.0.1:" .. procs.closed_port(), max_retries = 1 }
    keep(closed:create_task(request()))
    keep(closed:get_task(id))
    closed:close()
    c:close()
  end)

  it("validation errors and bad options", function()
    local c = client()
    local _, e = keep(c:create_task{ model = "ideogram/character", input = { reference_image_urls = {} } })
    assert.equals("validation", e.kind)
    keep(c:create_task{ model = "ideogram/character", input = { prompt = "x",
      reference_image_urls = { "https://example.com/r.png" }, style = "NOPE" } })
    keep(c:run{ model = "", input = {} })
    local ok, msg = pcall(kie.new, { api_key = KEY, timeout = "slow" })
    assert.is_false(ok)
    keep(msg)
    keep(select(2, pcall(kie.new, { api_key = KEY, base_url = "ftp://example.com" })))
    ok, msg = pcall(c.get_task, c, 42)
    assert.is_false(ok)
    keep(msg)
    c:close()
  end)

  it("unknown_outcome, deadline and task_failed", function()
    local c = client{ timeout = 5 }
    m:fault{ path = CREATE, fault = "drop_before_body", times = 1 }
    local _, e = keep(c:create_task(request("lost")))
    assert.equals("unknown_outcome", e.kind)
    local _, d = keep(c:run{ model = "ideogram/character",
      input = { prompt = "#stuck", reference_image_urls = { "https://example.com/r.png" } },
      wait = { interval = 0.02, timeout = 0.2 } })
    assert.equals("deadline", d.kind)
    local _, f = keep(c:run{ model = "ideogram/character",
      input = { prompt = "#fail=422", reference_image_urls = { "https://example.com/r.png" } },
      wait = { interval = 0.02, timeout = 5 } })
    assert.equals("task_failed", f.kind)
    c:close()
  end)

  it("replaces the key with [redacted] when the server echoes it", function()
    local c = client{ timeout = 5 }
    local echo = "invalid key " .. KEY .. " (you sent " .. KEY .. ")"
    m:fault{ path = CREATE, fault = "code_in_200", code = 401, msg = echo, times = 1 }
    local _, e = keep(c:create_task(request()))
    assert.equals("auth", e.kind)
    assert.matches("invalid key %[redacted%] %(you sent %[redacted%]%)", e.message)
    m:fault{ path = CREDIT, fault = "status", status = 422, msg = echo, times = 1 }
    local _, e2 = keep(c:credits())
    assert.equals("invalid", e2.kind)
    assert.matches("%[redacted%]", e2.message)
    -- an HTML error page quoting it (the body excerpt goes into the message)
    m:fault{ path = CREDIT, fault = "raw", status = 403, content_type = "text/html",
      body = "<html>forbidden for " .. KEY .. "</html>", times = 1 }
    local _, e3 = keep(c:credits())
    assert.equals("http", e3.kind)
    assert.matches("%[redacted%]", e3.message)
    -- a retryable error quoting it: the retry log line quotes the message
    local id = assert(c:create_task(request("echo"))).taskId
    m:fault{ path = GET, fault = "rate_limit", msg = echo, times = 1 }
    assert(keep(c:get_task(id)))
    -- a failed task whose failMsg quotes it (the core redacts msg only; the
    -- client redacts failMsg/failCode before they reach task_failed and logs)
    local failed = '{"code":200,"msg":"success","data":{"taskId":"' .. id .. '","state":"fail",'
      .. '"failCode":"401 ' .. KEY .. '","failMsg":"bad key ' .. KEY .. '!","resultJson":"","param":"{}"}}'
    m:fault{ path = GET, fault = "raw", body = failed, times = 2 }
    local info = keep(c:get_task(id))
    assert.equals("bad key [redacted]!", info.failMsg)
    assert.equals("401 [redacted]", info.failCode)
    local _, tf = keep(c:wait(id, { interval = 0.02, timeout = 5 }))
    assert.equals("task_failed", tf.kind)
    assert.equals("bad key [redacted]!", tf.failMsg)
    assert.matches("bad key %[redacted%]!", tostring(tf))
    c:close()
  end)

  it("found nothing: not in logs, errors, tostrings or the journal", function()
    assert.is_true(#log > 20)
    assert.is_true(#seen > 50)
    for i, e in ipairs(log) do
      no_key(e.level .. " " .. e.message .. " " .. text_of(e.fields), "log line " .. i)
    end
    for i, v in ipairs(seen) do
      no_key(type(v) == "table" and text_of(v) or tostring(v), "value " .. i)
    end
    no_key(procs.read_file(journal_path) or "", "the journal")
    -- the logger saw the events that matter
    local events = {}
    for _, e in ipairs(log) do
      local word = e.message:match("retrying after") and "retry" or e.message
      events[word] = (events[word] or 0) + 1
    end
    assert.is_true((events["request"] or 0) > 10, "request events")
    assert.is_true((events["retry"] or 0) > 5, "retry events")
    assert.is_true((events["task state"] or 0) >= 3, "state-change events")
    assert.is_true((events["task created"] or 0) >= 3, "task created events")
    -- with a redacted echo among them
    local redacted = false
    for _, e in ipairs(log) do
      if text_of(e.fields):find("[redacted]", 1, true) then redacted = true end
    end
    assert.is_true(redacted)
  end)
end)
