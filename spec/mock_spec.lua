-- Tests of the mock kie.ai server itself (spec/support/mock.lua + spec/support/mock/*.lua).
-- Run from the repo root:  busted --lua=lua5.4 spec/mock_spec.lua
-- Talks only to 127.0.0.1, through the curl CLI (so HTTPS, multipart and
-- connection reuse are exercised by a real, independent client).

local mock = require "spec.support.mock"
local json = mock.json
local socket = require "socket"

local KEY = "test-key"
local HMAC_KEY = "test-webhook-hmac-key"
local VECTOR_TASK, VECTOR_TS = "ee9c2715375b7837f8bb51d641ff5863", "1769670760"
local VECTOR_SIG = "xG6/yOyrMyJtUdc1yjmHpKLHSHF3MpzOPa6uxSj3qb4="

-- helpers ------------------------------------------------------------------------

local util = require "spec.support.util"
local q, read_file, write_file = util.quote, util.read_file, util.write_file

-- Runs cmd (no sanitizer preload); returns the combined output and the exit code.
local function sh(cmd)
  local _, out, rc = util.run(cmd)
  return out, rc
end

-- exited (a zombie left for a non-reaping init counts as exited)
local function process_gone(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  return stat == nil or stat:match("^%d+ %b() ([ZX])") ~= nil
end


local tmpdir = (sh("mktemp -d \"${TMPDIR:-/tmp}/kie-mock-spec.XXXXXXXX\""):gsub("%s+$", ""))
local tmpn = 0
local function tmpfile(name)
  tmpn = tmpn + 1
  return tmpdir .. "/" .. tmpn .. "-" .. (name or "f")
end

-- curl{ url=, method=, key= (false: no Authorization), body=, json=, headers={},
--       cacert=, form={...}, max_time=, urls={...} (extra URLs, same connection) }
-- -> { status, headers (lowercased), body, json, rc, err, time }
local function curl(o)
  local bodyf, hdrf, errf = tmpfile("body"), tmpfile("hdr"), tmpfile("err")
  local args = { "curl", "-sS", "--noproxy", q("*"), "-o", q(bodyf), "-D", q(hdrf),
    "-w", q("%{http_code} %{time_total}"), "--max-time", tostring(o.max_time or 20) }
  if o.method then args[#args + 1] = "-X " .. o.method end
  local key = o.key
  if key == nil then key = KEY end
  if key then args[#args + 1] = "-H " .. q("Authorization: Bearer " .. key) end
  local body = o.body
  if o.json ~= nil then
    body = json.encode(o.json)
    args[#args + 1] = "-H " .. q("Content-Type: application/json")
  end
  if body then
    local inf = tmpfile("in")
    write_file(inf, body)
    args[#args + 1] = "--data-binary @" .. q(inf)
  end
  for k, v in pairs(o.headers or {}) do args[#args + 1] = "-H " .. q(k .. ": " .. v) end
  for _, f in ipairs(o.form or {}) do args[#args + 1] = "-F " .. q(f) end
  if o.cacert then args[#args + 1] = "--cacert " .. q(o.cacert) end
  args[#args + 1] = q(o.url)
  local out, rc = sh(table.concat(args, " ") .. " 2>" .. q(errf))
  local res = { rc = rc, err = read_file(errf) or "", body = read_file(bodyf) or "", headers = {} }
  res.status = tonumber(out:match("^(%d+)"))
  res.time = tonumber(out:match("^%d+ ([%d.]+)"))
  local hdr = read_file(hdrf) or ""
  for line in hdr:gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then res.headers[k:lower()] = v end
  end
  res.json = json.decode(res.body)
  return res
end

local function create(m, body, extra)
  local o = { url = m.url .. "/api/v1/jobs/createTask", json = body }
  for k, v in pairs(extra or {}) do o[k] = v end
  return curl(o)
end

local function record(m, id, extra)
  local o = { url = m.url .. "/api/v1/jobs/recordInfo?taskId=" .. id }
  for k, v in pairs(extra or {}) do o[k] = v end
  return curl(o)
end

local function credits(m)
  return curl{ url = m.url .. "/api/v1/chat/credit" }.json.data
end

local function character(prompt, extra)
  local input = { prompt = prompt or "a knight", reference_image_urls = { "https://example.com/ref.png" } }
  for k, v in pairs(extra or {}) do input[k] = v end
  return { model = "ideogram/character", input = input }
end

local function wait_state(m, id, want, timeout, extra)
  local deadline = socket.gettime() + (timeout or 5)
  local seen, last = {}, nil   -- luacheck: ignore 311
  repeat
    local r = record(m, id, extra)
    last = r.json and r.json.data
    if last and seen[#seen] ~= last.state then seen[#seen + 1] = last.state end
    if last and (last.state == want or last.state == "success" or last.state == "fail") then break end
    socket.sleep(0.01)
  until socket.gettime() > deadline
  return last, seen
end

-- PNG check by spec/support/pngcheck.lua (its own CRC-32, zlib and Adler-32
-- code, independent of the mock's encoder; no python3 needed)
local function png_ok(path)
  local w, h = require("spec.support.pngcheck").check(read_file(path) or "")
  return w and tostring(w), h
end

local function openssl_sig(key, message)
  local out = sh("printf '%s' " .. q(message) .. " | openssl dgst -sha256 -hmac " .. q(key)
    .. " -binary | openssl base64 -A")
  return (out:gsub("%s+$", ""))
end

teardown(function()
  os.execute("rm -rf " .. q(tmpdir))
end)

-- stop a mock after checking its error_log holds no Lua failure
local function stop_clean(m)
  local log = m:log_tail(400)
  m:stop()
  for line in log:gmatch("[^\n]+") do
    if line:find("runtime error", 1, true) or line:find("[alert]", 1, true)
        or line:find("[crit]", 1, true) or line:find("lua entry thread aborted", 1, true) then
      error("mock error_log: " .. line)
    end
  end
end

-- specs -----------------------------------------------------------------------------

describe("mock lifecycle", function()
  it("starts two independent servers and stops them cleanly", function()
    local a = mock.start{}
    local b = mock.start{ api_key = "other" }
    assert.are_not.equal(a.url, b.url)
    assert.are_not.equal(a.prefix, b.prefix)
    assert.matches("^http://127%.0%.0%.1:%d+$", a.url)
    assert.equal(401, curl{ url = b.url .. "/api/v1/chat/credit" }.status)
    assert.equal(200, curl{ url = b.url .. "/api/v1/chat/credit", key = "other" }.status)
    local pid_a = a.pid
    a:stop()
    a:stop()   -- idempotent
    assert.is_false(a:running())
    assert.is_true(process_gone(pid_a))
    assert.is_nil(io.open(a.prefix .. "/nginx.conf"))
    assert.is_true(b:running())
    assert.equal(200, curl{ url = b.url .. "/api/v1/chat/credit", key = "other" }.status)
    b:stop()
    assert.is_false(b:running())
  end)

  it("reports a clear error when nginx cannot start, leaving nothing behind", function()
    local ok, err = pcall(mock.start, { nginx = "/bin/false" })
    assert.is_false(ok)
    assert.matches("nginx failed to start", err)
    assert.has_error(function() mock.start{ bogus_option = 1 } end)
  end)

  it("stops nginx when the owning process dies (watchdog)", function()
    local script = tmpfile("owner.lua")
    write_file(script, [[
      package.path = "./?.lua;" .. package.path
      local m = require("spec.support.mock").start{}
      io.stdout:write(m.pid, " ", m.prefix, "\n"); io.stdout:flush()
      require("socket").sleep(30)
    ]])
    local outf = tmpfile("owner.out")
    local out = sh("lua5.4 " .. q(script) .. " >" .. q(outf) .. " 2>&1 & echo $!")
    local owner = tonumber(out:match("(%d+)"))
    local nginx_pid, prefix
    local deadline = socket.gettime() + 10
    while not nginx_pid and socket.gettime() < deadline do
      local pid_s, p = (read_file(outf) or ""):match("^(%d+) (%S+)")
      nginx_pid, prefix = tonumber(pid_s), p
      socket.sleep(0.02)
    end
    assert.is_number(nginx_pid)
    assert.is_false(process_gone(nginx_pid))
    os.execute("kill -KILL " .. owner)
    deadline = socket.gettime() + 5
    local gone = false
    while socket.gettime() < deadline do
      if process_gone(nginx_pid) and not io.open(prefix .. "/nginx.conf") then gone = true; break end
      socket.sleep(0.05)
    end
    assert.is_true(gone)
  end)
end)

describe("mock API basics", function()
  local m
  setup(function() m = mock.start{ credits = 5, pace = 0.05 } end)
  teardown(function() stop_clean(m) end)
  before_each(function() m:reset(); m:config{ status_mode = "mirror", use_message_key = false, credits = 5 } end)

  it("requires the Bearer key on every /api/ endpoint", function()
    for _, path in ipairs({ "/api/v1/chat/credit", "/api/v1/jobs/recordInfo?taskId=x",
                            "/api/v1/jobs/createTask", "/api/v1/common/download-url" }) do
      local r = curl{ url = m.url .. path, key = false }
      assert.equal(401, r.status)
      assert.same({ code = 401, msg = "You do not have access permissions" }, r.json)
      r = curl{ url = m.url .. path, key = "wrong" }
      assert.equal(401, r.status)
    end
  end)

  it("answers credits as an integer and charges one per task, 402 when out", function()
    local r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal(200, r.status)
    assert.same({ code = 200, msg = "success", data = 5 }, r.json)
    assert.equal(5, r.json.data)
    assert.is_nil(r.body:match('"data":5%.'), "credits must be written as an integer")
    assert.equal(200, create(m, character()).status)
    assert.equal(4, credits(m))
    m:config{ credits = 0 }
    r = create(m, character())
    assert.equal(402, r.status)
    assert.equal(402, r.json.code)
    assert.equal(0, credits(m))
  end)

  it("walks a task to success with real PNG results", function()
    m:config{ pace = 0.12 }
    local body = character("a knight", { num_images = "2" })
    body.callBackUrl = "https://example.com/cb"
    local r = create(m, body)
    assert.equal(200, r.status)
    assert.equal("success", r.json.msg)
    local id = r.json.data.taskId
    assert.matches("^task_ideogram_%d+$", id)

    local first = record(m, id).json
    assert.equal(200, first.code)
    assert.equal("waiting", first.data.state)
    assert.equal("", first.data.resultJson)
    assert.is_nil(first.data.completeTime)
    assert.is_nil(first.data.failCode)
    assert.is_true(first.data.createTime > 1600000000000)
    assert.same(body, json.decode(first.data.param))

    local info, seen = wait_state(m, id, "success", 5)
    assert.same({ "waiting", "queuing", "generating", "success" }, seen)
    assert.equal("", info.failCode)
    assert.equal("", info.failMsg)
    assert.is_true(info.completeTime >= info.createTime)
    assert.equal(info.completeTime - info.createTime, info.costTime)
    local result = json.decode(info.resultJson)
    assert.equal(2, #result.resultUrls)
    for i, url in ipairs(result.resultUrls) do
      assert.equal(m.url .. "/files/" .. id .. "_" .. i .. ".png", url)
      local f = curl{ url = url, key = false }
      assert.equal(200, f.status)
      assert.equal("image/png", f.headers["content-type"])
      assert.equal("\137PNG\r\n\26\n", f.body:sub(1, 8))
      local path = tmpfile("r.png")
      write_file(path, f.body)
      assert.equal("64", png_ok(path))
    end
    assert.equal(404, curl{ url = m.url .. "/files/" .. id .. "_3.png" }.status)
  end)

  it("fails a task whose prompt contains #fail", function()
    local id = create(m, character("please #fail now")).json.data.taskId
    local info = wait_state(m, id, "fail", 5)
    assert.equal("fail", info.state)
    assert.equal("500", info.failCode)
    assert.equal("Internal server error", info.failMsg)
    assert.equal("", info.resultJson)
    assert.is_number(info.completeTime)
  end)

  it("answers 400 without taskId and 404 for an unknown task", function()
    local r = curl{ url = m.url .. "/api/v1/jobs/recordInfo" }
    assert.equal(400, r.status)
    assert.same({ code = 400, msg = "taskId parameter is required" }, r.json)
    r = record(m, "task_nope_1")
    assert.equal(404, r.status)
    assert.same({ code = 404, msg = "Task not found" }, r.json)
  end)

  it("accepts unknown models with only model required", function()
    local r = create(m, { model = "some/other-model" })
    assert.equal(200, r.status)
    assert.matches("^task_some_", r.json.data.taskId)
    assert.equal(422, create(m, { input = {} }).status)
    local bad = curl{ url = m.url .. "/api/v1/jobs/createTask", body = "{nope" }
    assert.equal(422, bad.status)
  end)

  it("uses \"message\" in recordInfo when use_message_key is set", function()
    local id = create(m, character()).json.data.taskId
    m:config{ use_message_key = true }
    local r = record(m, id)
    assert.equal("success", r.json.message)
    assert.is_nil(r.json.msg)
    assert.equal("Task not found", record(m, "task_x_1").json.message)
    assert.equal("success", create(m, character()).json.msg)
  end)

  it("answers errors as HTTP 200 in status_mode 200", function()
    m:config{ status_mode = "200" }
    local r = curl{ url = m.url .. "/api/v1/chat/credit", key = false }
    assert.equal(200, r.status)
    assert.equal(401, r.json.code)
    r = create(m, { model = "ideogram/character", input = { prompt = "x" } })
    assert.equal(200, r.status)
    assert.equal(422, r.json.code)
    assert.equal(404, record(m, "task_x_1").json.code)
  end)

  it("gives temporary download URLs for its own result files only", function()
    m:config{ pace = 0 }
    local id = create(m, character()).json.data.taskId
    local url = json.decode(record(m, id).json.data.resultJson).resultUrls[1]
    local r = curl{ url = m.url .. "/api/v1/common/download-url", json = { url = url } }
    assert.equal(200, r.status)
    assert.equal("string", type(r.json.data))
    assert.matches("^" .. m.url:gsub("%p", "%%%0") .. "/files/" .. id .. "_1%.png%?expires=%d+$", r.json.data)
    local f = curl{ url = r.json.data, key = false }
    assert.equal(200, f.status)
    assert.equal("\137PNG", f.body:sub(1, 4))
    for _, other in ipairs({ "https://example.com/x.png", m.url .. "/files/task_none_1_1.png", "" }) do
      r = curl{ url = m.url .. "/api/v1/common/download-url", json = { url = other } }
      assert.equal(422, r.status)
      assert.equal(422, r.json.code)
    end
    m:config{ download_url_ttl = -5 }
    r = curl{ url = m.url .. "/api/v1/common/download-url", json = { url = url } }
    assert.equal(403, curl{ url = r.json.data }.status)
  end)
end)

describe("mock createTask validation", function()
  local m
  setup(function() m = mock.start{ credits = 100000 } end)
  teardown(function() stop_clean(m) end)

  local REF = { "https://example.com/ref.png" }
  local IMG = "https://example.com/img.png"
  local valid = {
    ["ideogram/character"] = { prompt = "p", reference_image_urls = REF, rendering_speed = "TURBO",
      style = "FICTION", expand_prompt = false, num_images = "4", image_size = "landscape_16_9",
      seed = 7, negative_prompt = "n" },
    ["ideogram/character-edit"] = { prompt = "p", image_url = IMG, mask_url = IMG,
      reference_image_urls = REF, style = "REALISTIC", num_images = "1", seed = 42 },
    ["ideogram/character-remix"] = { prompt = "p", image_url = IMG, reference_image_urls = REF,
      strength = 0.8, negative_prompt = "", image_urls = json.array({}), reference_mask_urls = "",
      image_size = "square" },
    ["ideogram/v3-reframe"] = { image_url = IMG, image_size = "square_hd", style = "DESIGN",
      seed = 0, num_images = "2" },
  }

  local function with(model, changes)
    local input = {}
    for k, v in pairs(valid[model]) do input[k] = v end
    for k, v in pairs(changes) do
      if v == json.null then input[k] = nil else input[k] = v end
    end
    return { model = model, input = input }
  end

  it("accepts the documented example inputs for all four models", function()
    for model in pairs(valid) do
      local r = create(m, with(model, {}))
      assert.equal(200, r.status, model .. ": " .. r.body)
    end
  end)

  local cases = {
    { "ideogram/character", { prompt = json.null }, "input.prompt" },
    { "ideogram/character", { prompt = string.rep("a", 5001) }, "input.prompt" },
    { "ideogram/character", { reference_image_urls = json.null }, "input.reference_image_urls" },
    { "ideogram/character", { reference_image_urls = "https://example.com/a.png" }, "input.reference_image_urls" },
    { "ideogram/character", { reference_image_urls = { "not a url" } }, "input.reference_image_urls" },
    { "ideogram/character", { num_images = 2 }, "input.num_images" },
    { "ideogram/character", { num_images = "5" }, "input.num_images" },
    { "ideogram/character", { rendering_speed = "FAST" }, "input.rendering_speed" },
    { "ideogram/character", { style = "GENERAL" }, "input.style" },
    { "ideogram/character", { image_size = "square_4k" }, "input.image_size" },
    { "ideogram/character", { expand_prompt = "yes" }, "input.expand_prompt" },
    { "ideogram/character", { negative_prompt = string.rep("n", 5001) }, "input.negative_prompt" },
    { "ideogram/character-edit", { mask_url = json.null }, "input.mask_url" },
    { "ideogram/character-edit", { image_url = "ftp://x/y.png" }, "input.image_url" },
    { "ideogram/character-remix", { strength = 1.5 }, "input.strength" },
    { "ideogram/character-remix", { strength = 0.05 }, "input.strength" },
    { "ideogram/character-remix", { negative_prompt = string.rep("n", 501) }, "input.negative_prompt" },
    { "ideogram/character-remix", { image_urls = "https://example.com/a.png" }, "input.image_urls" },
    { "ideogram/character-remix", { reference_mask_urls = { "https://example.com/m.png" } }, "input.reference_mask_urls" },
    { "ideogram/v3-reframe", { image_size = json.null }, "input.image_size" },
    { "ideogram/v3-reframe", { style = "FICTION" }, "input.style" },
    { "ideogram/v3-reframe", { seed = "1" }, "input.seed" },
  }

  it("rejects invalid inputs with 422 naming the field", function()
    local before = credits(m)
    for _, c in ipairs(cases) do
      local r = create(m, with(c[1], c[2]))
      assert.equal(422, r.status, c[3] .. " " .. r.body)
      assert.equal(422, r.json.code)
      assert.is_truthy(r.json.msg:find(c[3], 1, true), c[3] .. " not named in: " .. r.json.msg)
    end
    assert.equal(before, credits(m))
  end)

  it("checks the top level: model, input, callBackUrl", function()
    local r = create(m, { model = "ideogram/character" })
    assert.equal(422, r.status)
    assert.matches("input", r.json.msg)
    r = create(m, { model = 5 })
    assert.matches("model", r.json.msg)
    local body = with("ideogram/character", {})
    body.callBackUrl = "not-a-url"
    r = create(m, body)
    assert.equal(422, r.status)
    assert.matches("callBackUrl", r.json.msg)
    -- 5000 characters counted as characters, not bytes
    r = create(m, with("ideogram/character", { prompt = string.rep("\195\169", 5000) }))
    assert.equal(200, r.status)
  end)
end)

describe("mock faults", function()
  local m
  local CREATE = "/api/v1/jobs/createTask"
  setup(function() m = mock.start{ credits = 1000 } end)
  teardown(function() stop_clean(m) end)
  before_each(function() m:reset() end)

  local function last_logged(path)
    local list = m:requests(path)
    return list[#list]
  end

  it("delay: answers normally after the delay", function()
    m:fault{ path = "/api/v1/chat/credit", fault = "delay", seconds = 0.3 }
    local t0 = socket.gettime()
    local r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.is_true(socket.gettime() - t0 >= 0.29)
    assert.equal(200, r.status)
    assert.equal("delay", last_logged("/api/v1/chat/credit").fault)
    t0 = socket.gettime()
    curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.is_true(socket.gettime() - t0 < 0.25)
  end)

  it("drop_before_body: no response and no task", function()
    local before = credits(m)
    m:fault{ path = CREATE, fault = "drop_before_body" }
    local r = create(m, { model = "ideogram/character", input = { prompt = "x", reference_image_urls = { "https://e.com/a.png" } } })
    assert.is_true(r.rc == 52 or r.rc == 56, "curl rc " .. tostring(r.rc) .. " " .. r.err)
    assert.equal(before, credits(m))
    local e = last_logged(CREATE)
    assert.equal("drop_before_body", e.fault)
    assert.is_nil(e.body)
    assert.equal(200, create(m, character()).status)   -- consumed: next one is normal
  end)

  it("drop_after_body: the task is created and charged, but no response", function()
    local before = credits(m)
    m:fault{ path = CREATE, fault = "drop_after_body" }
    local r = create(m, character("dropped"))
    assert.is_true(r.rc == 52 or r.rc == 56, "curl rc " .. tostring(r.rc))
    assert.equal(before - 1, credits(m))
    local e = last_logged(CREATE)
    assert.equal("drop_after_body", e.fault)
    assert.matches("dropped", e.body)
  end)

  it("html_502, status, code_in_200, maintenance: no task is created", function()
    local before = credits(m)
    m:fault{ path = CREATE, fault = "html_502" }
    local r = create(m, character())
    assert.equal(502, r.status)
    assert.matches("^text/html", r.headers["content-type"])
    assert.matches("<html>", r.body)
    assert.is_nil(r.json)

    m:fault{ path = CREATE, fault = "status", status = 503, msg = "busy" }
    r = create(m, character())
    assert.equal(503, r.status)
    assert.same({ code = 503, msg = "busy" }, r.json)

    m:fault{ path = CREATE, fault = "code_in_200", code = 402, msg = "no money" }
    r = create(m, character())
    assert.equal(200, r.status)
    assert.same({ code = 402, msg = "no money" }, r.json)
    m:fault{ path = CREATE, fault = "code_in_200" }
    assert.equal(500, create(m, character()).json.code)

    m:fault{ path = CREATE, fault = "maintenance" }
    r = create(m, character())
    assert.equal(455, r.status)
    assert.equal(455, r.json.code)
    assert.equal(before, credits(m))
  end)

  it("bad_json, truncated_json, partial_body", function()
    m:fault{ path = "/api/v1/chat/credit", fault = "bad_json" }
    local r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal(200, r.status)
    assert.matches('^{"code":200,"msg":', r.body)
    assert.is_nil(json.decode(r.body))

    m:fault{ path = "/api/v1/chat/credit", fault = "truncated_json" }
    r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal(200, r.status)
    assert.equal(0, r.rc)
    assert.matches('^{"code":200', r.body)
    assert.is_nil(json.decode(r.body))

    m:fault{ path = "/api/v1/chat/credit", fault = "partial_body" }
    r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal(18, r.rc)   -- CURLE_PARTIAL_FILE
  end)

  it("huge: streams a big body, chunked by default", function()
    m:fault{ path = "/api/v1/chat/credit", fault = "huge" }
    local r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal(200, r.status)
    assert.equal(16 * 1024 * 1024, #r.body)
    assert.equal("chunked", r.headers["transfer-encoding"])
    assert.matches('^{"code":200,"msg":"success","data":{"padding":"x', r.body)
    assert.equal('xx"}}', r.body:sub(-5))
    m:fault{ path = "/api/v1/chat/credit", fault = "huge", bytes = 100000, content_length = true }
    r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal("100000", r.headers["content-length"])
    assert.equal(100000, #r.body)
  end)

  it("rate_limit: 429, Retry-After only when asked", function()
    m:fault{ path = CREATE, fault = "rate_limit" }
    local r = create(m, character())
    assert.equal(429, r.status)
    assert.same({ code = 429, msg = "Rate limit exceeded" }, r.json)
    assert.is_nil(r.headers["retry-after"])
    m:fault{ path = CREATE, fault = "rate_limit", retry_after = 7 }
    assert.equal("7", create(m, character()).headers["retry-after"])
    m:fault{ path = CREATE, fault = "rate_limit", retry_after = "Wed, 21 Oct 2037 07:28:00 GMT" }
    assert.equal("Wed, 21 Oct 2037 07:28:00 GMT", create(m, character()).headers["retry-after"])
  end)

  it("wrong_shape and raw", function()
    m:fault{ path = CREATE, fault = "wrong_shape" }
    local r = create(m, character())
    assert.same({ code = 200, msg = "success", data = "not-an-object" }, r.json)
    m:fault{ path = "/api/v1/chat/credit", fault = "wrong_shape" }
    r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.same({ code = 200, msg = "success" }, r.json)
    m:fault{ path = "/api/v1/chat/credit", fault = "raw", status = 418, body = "teapot", content_type = "text/plain" }
    r = curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal(418, r.status)
    assert.equal("teapot", r.body)
  end)

  it("matches by path, counts times, supports prefixes and combined delay", function()
    m:fault{ path = "/api/v1/chat/credit", fault = "status", status = 500, times = 2 }
    assert.equal(404, record(m, "task_x_1").status)   -- another path: fault not consumed
    assert.equal(500, curl{ url = m.url .. "/api/v1/chat/credit" }.status)
    assert.equal(500, curl{ url = m.url .. "/api/v1/chat/credit" }.status)
    assert.equal(200, curl{ url = m.url .. "/api/v1/chat/credit" }.status)
    assert.same({}, m:faults())

    m:config{ pace = 0 }
    local id = create(m, character()).json.data.taskId
    m:fault{ path = "/files/*", fault = "html_502", delay = 0.2 }
    local t0 = socket.gettime()
    local r = curl{ url = m.url .. "/files/" .. id .. "_1.png" }
    assert.equal(502, r.status)
    assert.is_true(socket.gettime() - t0 >= 0.19)
    assert.equal(200, curl{ url = m.url .. "/files/" .. id .. "_1.png" }.status)
    m:config{ pace = 0.05 }

    assert.has_error(function() m:fault{ path = CREATE, fault = "no_such_fault" } end)
  end)
end)

describe("mock callbacks", function()
  local m
  setup(function() m = mock.start{ hmac_key = HMAC_KEY, pace = 0.02 } end)
  teardown(function() stop_clean(m) end)
  before_each(function() m:reset() end)

  it("computes the published HMAC test vector (FFI libcrypto and openssl CLI agree)", function()
    assert.equal(VECTOR_SIG, m:hmac(HMAC_KEY, VECTOR_TASK .. "." .. VECTOR_TS))
    assert.equal(VECTOR_SIG, openssl_sig(HMAC_KEY, VECTOR_TASK .. "." .. VECTOR_TS))
  end)

  it("posts a signed success callback to callBackUrl", function()
    local body = character("cb")
    body.callBackUrl = m.url .. "/_mock/callback_sink"
    local id = create(m, body).json.data.taskId
    local cbs = m:wait_callbacks(1, 5)
    assert.equal(1, #cbs)
    local cb = cbs[1]
    assert.equal("application/json", cb.headers["content-type"])
    local ts = cb.headers["x-webhook-timestamp"]
    assert.matches("^%d+$", ts)
    assert.is_true(math.abs(tonumber(ts) - os.time()) < 30)
    assert.equal(openssl_sig(HMAC_KEY, id .. "." .. ts), cb.headers["x-webhook-signature"])
    assert.equal(200, cb.json.code)
    assert.equal("Playground task completed successfully.", cb.json.msg)
    assert.equal(id, cb.json.data.taskId)
    assert.equal("success", cb.json.data.state)
    assert.same(body, json.decode(cb.json.data.param))
    assert.equal(1, #json.decode(cb.json.data.resultJson).resultUrls)
    local d = m:deliveries()
    assert.equal(1, #d)
    assert.equal(200, d[1].status)
  end)

  it("posts code 501 for a failed task, unsigned when no hmac_key", function()
    m:config{ hmac_key = false }
    local body = character("#fail")
    body.callBackUrl = m.url .. "/_mock/callback_sink"
    local id = create(m, body).json.data.taskId
    local cb = m:wait_callbacks(1, 5)[1]
    assert.equal(501, cb.json.code)
    assert.equal("fail", cb.json.data.state)
    assert.equal(id, cb.json.data.taskId)
    assert.equal("500", cb.json.data.failCode)
    assert.is_nil(cb.headers["x-webhook-signature"])
    assert.is_nil(cb.headers["x-webhook-timestamp"])
    m:config{ hmac_key = HMAC_KEY }
  end)

  it("records failed deliveries and sends no callback without callBackUrl", function()
    local body = character()
    body.callBackUrl = "http://127.0.0.1:1/nowhere"
    create(m, body)
    create(m, character())
    socket.sleep(0.3)
    local d = m:deliveries()
    assert.equal(1, #d)
    assert.is_nil(d[1].status)
    assert.is_string(d[1].error)
    assert.equal(0, #m:callbacks())
  end)
end)

describe("mock over HTTPS", function()
  local m
  setup(function() m = mock.start{ https = true, pace = 0 } end)
  teardown(function() stop_clean(m) end)

  it("serves TLS with a CA made at start (IP and localhost names)", function()
    assert.matches("^https://127%.0%.0%.1:%d+$", m.https_url)
    local r = curl{ url = m.https_url .. "/api/v1/chat/credit", cacert = m.ca_file }
    assert.equal(200, r.status)
    assert.equal(1000, r.json.data)
    local port = m.https_url:match(":(%d+)$")
    r = curl{ url = "https://localhost:" .. port .. "/api/v1/chat/credit", cacert = m.ca_file }
    assert.equal(200, r.status)
    r = curl{ url = m.https_url .. "/api/v1/chat/credit" }   -- system trust only
    assert.equal(60, r.rc)                                     -- CURLE_PEER_FAILED_VERIFICATION
  end)

  it("gives https result URLs to https clients", function()
    local id = curl{ url = m.https_url .. "/api/v1/jobs/createTask", json = character(), cacert = m.ca_file }.json.data.taskId
    local info = curl{ url = m.https_url .. "/api/v1/jobs/recordInfo?taskId=" .. id, cacert = m.ca_file }.json.data
    assert.equal("success", info.state)
    local url = json.decode(info.resultJson).resultUrls[1]
    assert.equal(m.https_url .. "/files/" .. id .. "_1.png", url)
    local f = curl{ url = url, cacert = m.ca_file, key = false }
    assert.equal(200, f.status)
    assert.equal("\137PNG", f.body:sub(1, 4))
    local logged = m:requests("/files/*")
    assert.equal("https", logged[#logged].scheme)
  end)
end)

describe("mock request log", function()
  local m
  setup(function() m = mock.start{ pace = 0 } end)
  teardown(function() stop_clean(m) end)
  before_each(function() m:reset() end)

  it("logs method, path, query, lowercased headers and body", function()
    local body = character("logged")
    create(m, body, { headers = { ["X-Custom-Thing"] = "v1" } })
    curl{ url = m.url .. "/api/v1/jobs/recordInfo?taskId=abc&x=1" }
    local all = m:requests()
    assert.equal(2, #all)
    local e = m:requests("/api/v1/jobs/createTask")[1]
    assert.equal("POST", e.method)
    assert.equal("/api/v1/jobs/createTask", e.path)
    assert.equal("Bearer " .. KEY, e.headers.authorization)
    assert.equal("v1", e.headers["x-custom-thing"])
    assert.same(body, json.decode(e.body))
    assert.is_number(e.connection)
    assert.is_number(e.time)
    local g = m:requests("/api/v1/jobs/recordInfo")[1]
    assert.same({ taskId = "abc", x = "1" }, g.query)
    assert.equal(1, m:count("/api/v1/jobs/recordInfo"))
    assert.equal(2, m:count())
    m:reset()
    assert.equal(0, m:count())
    assert.same({}, m:requests())
  end)

  it("truncates bodies over 64 KiB in the log", function()
    create(m, character(string.rep("z", 100000)))
    local e = m:requests("/api/v1/jobs/createTask")[1]
    assert.is_true(e.body_truncated)
    assert.equal(65536, #e.body)
    assert.is_true(e.body_size > 100000)
  end)

  it("keeps connections alive and counts them", function()
    local id = create(m, character()).json.data.taskId
    m:reset()
    -- one curl process, 100 URLs (curl globbing): one connection, kept alive
    local url = m.url .. "/api/v1/jobs/recordInfo?taskId=" .. id .. "&n=[1-100]"
    local out, rc = sh("curl -sS --noproxy '*' -H " .. q("Authorization: Bearer " .. KEY) .. " " .. q(url) .. " >/dev/null")
    assert.equal(0, rc, out)
    assert.equal(100, m:count("/api/v1/jobs/recordInfo"))
    assert.equal(1, m:connections("/api/v1/jobs/recordInfo"))
    local list = m:requests("/api/v1/jobs/recordInfo")
    assert.equal(1, list[1].connection_requests)
    assert.equal(100, list[100].connection_requests)
    curl{ url = m.url .. "/api/v1/chat/credit" }
    curl{ url = m.url .. "/api/v1/chat/credit" }
    assert.equal(2, m:connections("/api/v1/chat/credit"))
    assert.equal(3, m:connections())
  end)
end)

describe("mock uploads", function()
  local m, png_path, png_bytes
  setup(function()
    m = mock.start{ pace = 0 }
    local id = create(m, character()).json.data.taskId
    png_bytes = curl{ url = m.url .. "/files/" .. id .. "_1.png" }.body
    os.execute("mkdir -p " .. q(tmpdir .. "/up"))
    png_path = tmpdir .. "/up/ref image.png"
    write_file(png_path, png_bytes)
  end)
  teardown(function() stop_clean(m) end)

  local function check_ok(r, name, path)
    assert.equal(200, r.status, r.body)
    assert.is_true(r.json.success)
    assert.equal(200, r.json.code)
    assert.equal("File uploaded successfully", r.json.msg)
    local d = r.json.data
    if name then assert.equal(name, d.fileName) end
    if path then assert.equal(path, d.filePath) end
    assert.equal(#png_bytes, d.fileSize)
    assert.equal("image/png", d.mimeType)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", d.uploadedAt)
    local f = curl{ url = d.downloadUrl, key = false }
    assert.equal(200, f.status)
    assert.equal("image/png", f.headers["content-type"])
    assert.equal(png_bytes, f.body)
    return d
  end

  it("stream upload (multipart)", function()
    local r = curl{ url = m.url .. "/api/file-stream-upload",
      form = { "file=@" .. png_path, "uploadPath=images/user-uploads/" } }
    local d = check_ok(r, "ref image.png", "images/user-uploads/ref image.png")
    assert.matches("^" .. m.url:gsub("%p", "%%%0") .. "/uploads/images/user%-uploads/ref%%20image%.png$", d.downloadUrl)
    r = curl{ url = m.url .. "/api/file-stream-upload",
      form = { "file=@" .. png_path, "uploadPath=refs", "fileName=hero.png" } }
    check_ok(r, "hero.png", "refs/hero.png")
    local logged = m:requests("/api/file-stream-upload")
    assert.matches("^multipart/form%-data", logged[1].headers["content-type"])
    r = curl{ url = m.url .. "/api/file-stream-upload", form = { "file=@" .. png_path } }
    assert.equal(400, r.status)
    assert.same({ success = false, code = 400, msg = "Missing required parameter: uploadPath" }, r.json)
    r = curl{ url = m.url .. "/api/file-stream-upload", form = { "uploadPath=x" } }
    assert.equal("Missing required parameter: file", r.json.msg)
  end)

  it("base64 upload (pure and data URL)", function()
    local b64 = (sh("openssl base64 -A -in " .. q(png_path)))
    local r = curl{ url = m.url .. "/api/file-base64-upload",
      json = { base64Data = b64, uploadPath = "b64", fileName = "a.png" } }
    check_ok(r, "a.png", "b64/a.png")
    r = curl{ url = m.url .. "/api/file-base64-upload",
      json = { base64Data = "data:image/png;base64," .. b64, uploadPath = "b64" } }
    local d = check_ok(r, nil, nil)
    assert.matches("%.png$", d.fileName)
    r = curl{ url = m.url .. "/api/file-base64-upload", json = { base64Data = "@@@not base64", uploadPath = "b64" } }
    assert.equal(400, r.status)
    assert.equal("Base64 decoding failed: Invalid Base64 format", r.json.msg)
  end)

  it("URL upload (own URLs only), auth and status_mode", function()
    local src = m:requests("/files/*")[1]
    local own = m.url .. src.path
    local r = curl{ url = m.url .. "/api/file-url-upload", json = { fileUrl = own, uploadPath = "from-url" } }
    check_ok(r, src.path:match("[^/]+$"), "from-url/" .. src.path:match("[^/]+$"))
    r = curl{ url = m.url .. "/api/file-url-upload", json = { fileUrl = "https://example.com/x.png", uploadPath = "u" } }
    assert.equal(400, r.status)
    assert.is_false(r.json.success)
    r = curl{ url = m.url .. "/api/file-url-upload", key = "bad", json = { fileUrl = own, uploadPath = "u" } }
    assert.equal(401, r.status)
    assert.same({ success = false, code = 401, msg = "Authentication failed: Invalid API Key" }, r.json)
    m:config{ status_mode = "200" }
    r = curl{ url = m.url .. "/api/file-url-upload", json = { fileUrl = own } }
    assert.equal(200, r.status)
    assert.equal(400, r.json.code)
    m:config{ status_mode = "mirror" }
  end)
end)
