-- Issue 3 ("Reliability layer") acceptance, part 1: every fault of the mock x every
-- call, counting what the mock received. A create is sent once per logical call
-- unless the server rejected it (429/455) or it never reached the server (connect
-- failure); idempotent reads retry on network errors, timeouts, 5xx, 429, 455.
-- Writes the measured table to build/fault-table.md.
local kie = require "kie"
local core = require "kie.core"
local mock = require "spec.support.mock"
local procs = require "spec.support.procs"

local KEY = "sk-reliability-" .. tostring(os.time())

local PATHS = {
  create_task = "/api/v1/jobs/createTask",
  get_task = "/api/v1/jobs/recordInfo",
  credits = "/api/v1/chat/credit",
  download_url = "/api/v1/common/download-url",
}
local CALLS = { "create_task", "get_task", "credits", "download_url" }

-- fast backoff; tiny rate-limit windows so a 429 (which fills the window) costs
-- milliseconds, not 10 s (the real windows are checked in reliability_ratelimit_spec)
local RETRY = { base = 0.01, cap = 0.05, rate_limit_floor = 0.01, max_retry_after = 5 }
local LIMITS = { create = { limit = 20, window = 0.2 }, poll = { limit = 10, window = 0.05 } }

local function request(prompt)
  return {
    model = "ideogram/character",
    input = { prompt = prompt or "a red fox", reference_image_urls = { "https://example.com/ref.png" } },
  }
end

-- ok: retried once, then succeeded (mock saw 2 requests); any other word: that
-- error kind after exactly one request
local FAULTS = {
  { name = "drop_before_body", spec = { fault = "drop_before_body" },
    create_task = "unknown_outcome", read = "ok" },
  { name = "drop_after_body", spec = { fault = "drop_after_body" },
    create_task = "unknown_outcome", read = "ok" },
  { name = "delay 1 s > timeout 0.3 s", spec = { fault = "delay", seconds = 1 },
    create_task = "unknown_outcome", read = "ok" },
  { name = "html_502", spec = { fault = "html_502" }, create_task = "unknown_outcome", cause = "http", read = "ok" },
  { name = "code_in_200 500", spec = { fault = "code_in_200", code = 500 }, create_task = "server", read = "ok" },
  { name = "status 500", spec = { fault = "status", status = 500 }, create_task = "server", read = "ok" },
  { name = "rate_limit (no Retry-After)", spec = { fault = "rate_limit" }, create_task = "ok", read = "ok" },
  { name = "rate_limit Retry-After: 1", spec = { fault = "rate_limit", retry_after = 1 },
    create_task = "ok", read = "ok", min_elapsed = 1 },
  { name = "maintenance 455", spec = { fault = "maintenance" }, create_task = "ok", read = "ok" },
  { name = "bad_json", spec = { fault = "bad_json" }, create_task = "unknown_outcome", cause = "protocol",
    read = "protocol" },
  { name = "truncated_json", spec = { fault = "truncated_json" }, create_task = "unknown_outcome",
    cause = "protocol", read = "protocol" },
  { name = "partial_body", spec = { fault = "partial_body" }, create_task = "unknown_outcome", read = "ok" },
  { name = "huge (1 MiB > max_response_bytes 64 KiB)", spec = { fault = "huge", bytes = 1024 * 1024 },
    create_task = "unknown_outcome", cause = "too_large", read = "too_large" },
  { name = "wrong_shape", spec = { fault = "wrong_shape" }, create_task = "unknown_outcome", cause = "protocol",
    read = "protocol" },
  { name = "connection refused, then the port opens", refused = true, create_task = "ok", read = "ok" },
  { name = "connection refused, stays closed", refused = "always",
    create_task = "network", read = "network" },
}

describe("reliability: fault x call against the mock #integration", function()
  local m, helper
  local rows = {}
  local forwarders = {}

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0 } -- pace 0: a task is finished at once
    helper = kie.new{ api_key = KEY, base_url = m.url, timeout = 5, rate_limits = { create = false, poll = false } }
  end)

  lazy_teardown(function()
    for _, pid in ipairs(forwarders) do
      if procs.alive(pid) then procs.kill(pid, "TERM") end
    end
    if helper then helper:close() end
    if m then m:stop() end
    local out = {
      "# Fault table (spec/reliability_spec.lua)",
      "",
      "Measured against the mock kie.ai server: each fault queued once (`times = 1`) on the",
      "path of the call; `timeout = 0.3`, `max_retries = 3` (2 for \"stays closed\"), retry",
      "`base = 0.01, cap = 0.05`. *calls made* = HTTP attempts by the client, *mock received*",
      "= requests the mock logged on that path. `ok` = the call succeeded after retrying.",
      "",
      "| fault | call | calls made | mock received | outcome |",
      "| --- | --- | ---: | ---: | --- |",
    }
    for _, r in ipairs(rows) do
      out[#out + 1] = string.format("| %s | %s | %d | %d | %s |", r[1], r[2], r[3], r[4], r[5])
    end
    os.execute("mkdir -p build")
    local f = io.open("build/fault-table.md", "w")
    if f then
      f:write(table.concat(out, "\n"), "\n")
      f:close()
    end
  end)

  -- a finished task (and its first result URL) made without faults
  local function finished_task()
    local t = assert(helper:create_task(request("setup")))
    local info = assert(helper:get_task(t.taskId))
    assert.equals("success", info.state)
    return t.taskId, info.resultUrls[1]
  end

  local function new_client(extra)
    local log = {}
    local opts = {
      api_key = KEY, base_url = m.url, timeout = 0.3, connect_timeout = 0.3, max_retries = 3,
      retry = RETRY, rate_limits = LIMITS, max_response_bytes = 64 * 1024,
      logger = function(level, message, fields) log[#log + 1] = { level, message, fields } end,
    }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return kie.new(opts), log
  end

  local function attempts(log, op)
    local n = 0
    for _, e in ipairs(log) do
      if e[2] == "request" and e[3].op == op then n = n + 1 end
    end
    return n
  end

  local function start_forwarder(port)
    local dir = procs.tmpname("-fwd")
    local out, err = dir .. ".out", dir .. ".err"
    local pid = procs.spawn(procs.lua_command(mock.support_dir .. "/forward.lua",
      { port, m.port, procs.self_pid(), 30 }), out, err)
    forwarders[#forwarders + 1] = pid
    assert(procs.wait_for(out, "(ready)", 10), "forwarder did not start: " .. tostring(procs.read_file(err)))
    os.remove(out)
    os.remove(err)
    return pid
  end

  local function perform(c, call, id, url)
    if call == "create_task" then
      local t, err = c:create_task(request("fault cell"))
      return t, err, t and type(t.taskId) == "string"
    elseif call == "get_task" then
      local info, err = c:get_task(id)
      return info, err, info and info.taskId == id and info.state == "success"
    elseif call == "credits" then
      local n, err = c:credits()
      return n, err, type(n) == "number"
    else
      local u, err = c:download_url(url)
      return u, err, type(u) == "string" and u:match("^http://127%.0%.0%.1:%d+/files/") ~= nil
    end
  end

  for _, F in ipairs(FAULTS) do
    for _, call in ipairs(CALLS) do
      local expect = call == "create_task" and F.create_task or F.read
      it(F.name .. " x " .. call .. " -> " .. expect, function()
        local id, url
        if call == "get_task" or call == "download_url" then id, url = finished_task() end
        local path = PATHS[call]
        local c, log, fwd
        if F.refused then
          local port = procs.closed_port()
          local hook
          if F.refused ~= "always" then
            hook = function() fwd = start_forwarder(port) end
          end
          c, log = new_client{
            base_url = "http://127.0.0.1:" .. port,
            max_retries = F.refused == "always" and 2 or 3,
            sleep = function(s)
              if hook then local h = hook; hook = nil; h() end
              core.sleep(s)
            end,
          }
        else
          c, log = new_client()
        end
        local before = m:count(path)
        if F.spec then
          local spec = {}
          for k, v in pairs(F.spec) do spec[k] = v end
          spec.path, spec.times = path, 1
          m:fault(spec)
        end
        local t0 = core.now()
        local res, err, good = perform(c, call, id, url)
        local elapsed = core.now() - t0
        local received = m:count(path) - before
        local made = attempts(log, call)
        c:close()
        if fwd then procs.kill(fwd, "TERM") end
        rows[#rows + 1] = { F.name, call, made, received, res ~= nil and "ok" or err.kind }

        assert.same({}, m:faults()) -- the fault was hit
        if expect == "ok" then
          assert.is_nil(err and tostring(err))
          assert.is_true(good)
          assert.equals(2, made)
          assert.equals(F.refused and 1 or 2, received)
          if F.min_elapsed then assert.is_true(elapsed >= F.min_elapsed, "waited " .. elapsed) end
        else
          assert.is_nil(res)
          assert.equals(expect, err.kind, tostring(err))
          assert.equals("kie.Error", getmetatable(err).__name)
          assert.is_string(err.message)
          if F.refused then
            assert.is_true(err.retryable)
            assert.equals(3, made) -- 1 + max_retries, all before any connection
            assert.equals(0, received)
          else
            assert.equals(1, made)
            assert.equals(1, received)
            assert.is_false(err.retryable)
          end
          if expect == "unknown_outcome" then
            assert.is_string(err.fingerprint)
            assert.is_true(#err.fingerprint >= 16)
            assert.equals("ideogram/character", err.model)
            if F.cause then
              assert.equals(F.cause, err.cause)
            else
              assert.is_truthy(err.cause == "network" or err.cause == "timeout", tostring(err.cause))
            end
          else
            assert.is_nil(err.fingerprint)
          end
          if expect == "too_large" or expect == "protocol" then
            assert.equals(200, err.status)
          end
        end
        assert.is_true(elapsed < 4, "took " .. elapsed .. " s")
      end)
    end
  end

  it("a create that timed out after sending is never resent, even with retries left", function()
    local c, log = new_client{ max_retries = 10 }
    local before = m:count(PATHS.create_task)
    m:fault{ path = PATHS.create_task, fault = "delay", seconds = 0.6, times = -1 }
    local t, err = c:create_task(request("slow"))
    local received = m:count(PATHS.create_task) - before
    m:reset() -- removes the every-request fault
    assert.is_nil(t)
    assert.equals("unknown_outcome", err.kind)
    assert.equals("timeout", err.cause)
    assert.equals(1, attempts(log, "create_task"))
    assert.equals(1, received)
    c:close()
  end)

  it("gives unknown_outcome a fingerprint that is stable for the same request", function()
    local c = new_client()
    local function fp(req)
      m:fault{ path = PATHS.create_task, fault = "drop_before_body", times = 1 }
      local t, err = c:create_task(req)
      assert.is_nil(t)
      assert.equals("unknown_outcome", err.kind)
      return err.fingerprint
    end
    local a = fp(request("same prompt"))
    local b = fp(request("same prompt"))
    assert.equals(a, b)
    local r = request("same prompt")
    r.input.num_images = 2           -- normalized to "2" before fingerprinting
    local r2 = request("same prompt")
    r2.input.num_images = "2"
    assert.equals(fp(r), fp(r2))
    assert.not_equals(a, fp(request("another prompt")))
    assert.not_equals(a, fp(r))
    c:close()
  end)

  it("gives up at once on a Retry-After beyond max_retry_after", function()
    local c, log = new_client()
    local before = m:count(PATHS.get_task)
    m:fault{ path = PATHS.get_task, fault = "rate_limit", retry_after = 30, times = 1 }
    local t0 = core.now()
    local info, err = c:get_task("task_whatever")
    assert.is_nil(info)
    assert.equals("rate_limited", err.kind)
    assert.equals(30, err.retry_after)
    assert.equals(1, attempts(log, "get_task"))
    assert.equals(1, m:count(PATHS.get_task) - before)
    assert.is_true(core.now() - t0 < 1)
    c:close()
  end)

  it("stops retrying a read after max_retries and returns the last error", function()
    local c, log = new_client{ max_retries = 2 }
    local before = m:count(PATHS.credits)
    m:fault{ path = PATHS.credits, fault = "status", status = 500, times = 5 }
    local n, err = c:credits()
    local received = m:count(PATHS.credits) - before
    m:reset()
    assert.is_nil(n)
    assert.equals("server", err.kind)
    assert.equals(500, err.status)
    assert.equals(3, err.attempts)
    assert.equals(3, attempts(log, "credits"))
    assert.equals(3, received)
    c:close()
  end)

  it("does not retry non-retryable API errors (401, 404, 422) on reads", function()
    local c, log = new_client()
    local before = m:count(PATHS.get_task)
    local info, err = c:get_task("task_does_not_exist")
    assert.is_nil(info)
    assert.equals("not_found", err.kind)
    assert.equals(1, m:count(PATHS.get_task) - before)
    local u, uerr = c:download_url("https://elsewhere.example/x.png")
    assert.is_nil(u)
    assert.equals("invalid", uerr.kind)
    local bad = new_client{ api_key = KEY .. "-wrong" }
    local n, aerr = bad:credits()
    assert.is_nil(n)
    assert.equals("auth", aerr.kind)
    assert.equals(1, attempts(log, "get_task"))
    assert.equals(1, attempts(log, "download_url"))
    c:close()
    bad:close()
  end)
end)

describe("reliability: unknown_outcome over an injected core without HMAC #unit", function()
  it("still carries a stable fingerprint", function()
    local creates = 0
    local handle = {
      create_task = function()
        creates = creates + 1
        return nil, { kind = "unknown_outcome", cause = "timeout", retryable = false,
          message = "create_task: the answer was lost" }
      end,
      close = function() end,
    }
    local fake = { new = function() return handle end, now = core.now, sleep = core.sleep,
      encode = core.encode, decode = core.decode }
    local c = kie.new{ api_key = "sk-no-hmac", core = fake }
    local req = { model = "ideogram/v3-reframe",
      input = { image_url = "https://example.com/a.png", image_size = "square" } }
    local _, e1 = c:create_task(req)
    local _, e2 = c:create_task(req)
    assert.equals("unknown_outcome", e1.kind)
    assert.matches("^%x+$", e1.fingerprint)
    assert.equals(e1.fingerprint, e2.fingerprint)
    assert.equals(2, creates) -- each call sent once, never resent
  end)
end)
