-- bin/kie, the command line: run as a new user would (a subprocess with
-- KIE_API_KEY / KIE_BASE_URL / KIE_UPLOAD_URL pointing at the mock), plus the
-- progress formatter as units.
local cli = require "kie.cli"
local callback = require "kie.callback"

local KEY = "sk-cli-spec-91b3d4"
local PNG_MAGIC = "\137PNG\r\n\26\n"

-- the interpreter running this spec, and its module paths, for the children
local LUA = rawget(_G, "jit") and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))

local util = require "spec.support.util"
local q, read, write = util.quote, util.read_file, util.write_file
local function tmpdir() return util.tmpdir("kie-cli-spec") end

local DIR -- the running block's scratch directory (made in lazy_setup)

-- Runs a shell command; returns exit code, stdout, stderr.
local function sh(cmd, stdin)
  local out, err, inp = DIR .. "/stdout", DIR .. "/stderr", DIR .. "/stdin"
  write(inp, stdin or "")
  local full = "(" .. cmd .. ") <" .. q(inp) .. " >" .. q(out) .. " 2>" .. q(err) .. "; echo $?"
  local p = assert(io.popen(full))
  local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  return rc, read(out) or "", read(err) or ""
end

local CWD = (function()
  local p = assert(io.popen("pwd"))
  local d = p:read("*l")
  p:close()
  return d
end)()

-- this process's search path with ./ made absolute (children may run elsewhere)
local function absolute(path)
  return (";" .. path):gsub(";%./", ";" .. CWD .. "/"):sub(2)
end

-- The env command prefix: only the given KIE_* variables, this process's paths.
local function env_prefix(env)
  local parts = { "env", "-u", "KIE_API_KEY", "-u", "KIE_BASE_URL", "-u", "KIE_UPLOAD_URL",
    "-u", "KIE_WEBHOOK_KEY", "LUA_PATH=" .. q(absolute(package.path)),
    "LUA_CPATH=" .. q(absolute(package.cpath)) }
  for k, v in pairs(env or {}) do
    if v then parts[#parts + 1] = k .. "=" .. q(v) end
  end
  return table.concat(parts, " ")
end

local function kie(args, env, stdin)
  return sh(env_prefix(env) .. " " .. LUA .. " bin/kie " .. args, stdin)
end

local function json_decode(s)
  local v = require("kie.core").decode(s)
  assert(type(v) == "table", "not JSON: " .. tostring(s))
  return v
end

describe("kie.cli units #smoke", function()
  it("formats durations and the progress line", function()
    assert.equals("0.0s", cli.duration(0))
    assert.equals("4.2s", cli.duration(4.24))
    assert.equals("1m05s", cli.duration(65))
    assert.equals("2h03m", cli.duration(2 * 3600 + 3 * 60 + 9))
    local line = cli.progress_line{ phase = "generating", elapsed = 12.34, task_id = "task_abc", tick = 1 }
    assert.equals("/  generating     12.3s  task_abc", line)
    line = cli.progress_line{ phase = "downloading", elapsed = 3, detail = "1/2", bytes = 1536, total = 3 * 1048576 }
    assert.equals("|  downloading     3.0s  1/2  1.5 KiB / 3.0 MiB", line)
    line = cli.progress_line({ phase = "waiting", elapsed = 1, task_id = string.rep("x", 200) }, 40)
    assert.equals(39, #line)
    assert.is_nil(cli.progress_line{ phase = "a\rb\27[K" }:find("[%c]"))
  end)

  local function sink()
    local buf = {}
    return { write = function(self, ...) for _, s in ipairs{ ... } do buf[#buf + 1] = s end return self end,
      flush = function() end, text = function() return table.concat(buf) end }
  end

  it("rewrites one line with \\r on a terminal", function()
    local out, t = sink(), 0
    local p = cli.progress(out, true, function() return t end, 80)
    p.set{ phase = "waiting", task_id = "task_1" }
    t = 2.5
    p.tick()
    p.set{ phase = "success" }
    p.clear()
    local s = out.text()
    assert.equals("\r|  waiting         0.0s  task_1\27[K" ..
      "\r/  waiting         2.5s  task_1\27[K" ..
      "\r/  success         2.5s  task_1\27[K" ..
      "\r\27[K", s)
  end)

  it("prints one plain line per phase otherwise", function()
    local out, t = sink(), 0
    local p = cli.progress(out, false, function() return t end)
    p.set{ phase = "waiting", task_id = "task_1" }
    p.tick()
    t = 1
    p.set{ phase = "waiting" }
    p.set{ phase = "success" }
    p.clear()
    assert.equals("kie: waiting (0.0s)  task_1\nkie: success (1.0s)  task_1\n", out.text())
  end)

  it("names files after a task id only when it is a plain name (kie.files.safe_name)", function()
    local safe = require("kie.files").safe_name
    assert.equals("task_ideogram_1765179922911", safe("task_ideogram_1765179922911"))
    assert.equals("ee9c-27_15", safe("ee9c-27_15"))
    for _, evil in ipairs{ "../x", "..", ".", "", "a/b", "/etc/passwd", "x\0y", "a.b", string.rep("a", 129) } do
      assert.matches("^task%-%x+$", safe(evil))
    end
    assert.are_not.equal(safe("../x"), safe("../y"))
    assert.equals(safe("../x"), safe("../x"))
  end)

  it("maps error kinds to exit codes", function()
    assert.equals(2, cli.exit_code{ kind = "validation" })
    assert.equals(3, cli.exit_code{ kind = "auth" })
    assert.equals(3, cli.exit_code{ kind = "network" })
    assert.equals(3, cli.exit_code{ kind = "deadline" })
    assert.equals(4, cli.exit_code{ kind = "task_failed" })
    assert.equals(5, cli.exit_code{ kind = "io" })
    assert.equals(1, cli.exit_code{ kind = "signature" })
  end)
end)

describe("bin/kie #core", function()
  local m, env, ref

  lazy_setup(function()
    DIR = tmpdir()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.02 }
    env = { KIE_API_KEY = KEY, KIE_BASE_URL = m.url, KIE_UPLOAD_URL = m.url }
    ref = DIR .. "/my ref.png"
    write(ref, PNG_MAGIC .. string.rep("\0\1\2\3", 500))
  end)
  lazy_teardown(function()
    if m then m:stop() end
    os.execute("rm -rf " .. q(DIR))
  end)
  before_each(function() m:reset() end)

  local function is_png(path)
    local s = read(path)
    return s ~= nil and s:sub(1, 8) == PNG_MAGIC and s:sub(13, 16) == "IHDR"
  end

  it("generate: uploads the local ref, waits, and leaves a valid PNG in --out", function()
    local out = DIR .. "/out1"
    local rc, stdout, stderr = kie("generate --prompt 'a knight' --ref " .. q(ref) .. " --out " .. q(out), env)
    assert.equals(0, rc, stderr)
    local paths = {}
    for line in stdout:gmatch("[^\n]+") do paths[#paths + 1] = line end
    assert.equals(1, #paths)
    assert.matches("^" .. out:gsub("%p", "%%%0") .. "/task_[%w_]+_1%.png$", paths[1])
    assert.is_true(is_png(paths[1]))
    -- not a terminal: plain progress lines, no \r
    assert.matches("kie: uploading ", stderr)
    assert.matches("kie: success ", stderr)
    assert.is_nil(stderr:find("\r", 1, true))
    assert.equals(1, m:count("/api/file-stream-upload"))
    local body = m:requests("/api/v1/jobs/createTask")[1].body
    assert.truthy(body:find("\\/uploads\\/kie-lua\\/my%20ref.png", 1, true) or body:find("my ref.png", 1, true))
  end)

  it("generate --json: one JSON document with the files", function()
    local out = DIR .. "/out2"
    local rc, stdout, stderr = kie("--json generate --interval 0.05 --num 2 --size square --speed TURBO " ..
      "--prompt 'two knights' --ref https://example.com/r.png -o " .. q(out), env)
    assert.equals(0, rc, stderr)
    local doc = json_decode(stdout)
    assert.equals("success", doc.state)
    assert.equals(2, #doc.files)
    assert.equals(2, #doc.resultUrls)
    for _, p in ipairs(doc.files) do assert.is_true(is_png(p)) end
    local sent = json_decode(m:requests("/api/v1/jobs/createTask")[1].body)
    assert.equals("2", sent.input.num_images)
    assert.equals("square", sent.input.image_size)
    assert.equals("TURBO", sent.input.rendering_speed)
  end)

  it("exit 2 on usage errors, before any request", function()
    local rc, _, stderr = kie("", env)
    assert.equals(2, rc)
    assert.matches("^kie: a command is required", stderr)
    rc, _, stderr = kie("generate --prompt x --ref r.png", env)
    assert.equals(2, rc)
    assert.matches("missing option '%-%-out'", stderr)
    rc = kie("generate --num 9 --prompt x -o " .. q(DIR), env)
    assert.equals(2, rc)
    rc = kie("frobnicate", env)
    assert.equals(2, rc)
    rc, _, stderr = kie("credits", { KIE_BASE_URL = m.url })
    assert.equals(2, rc)
    assert.equals("kie: validation: no API key: set KIE_API_KEY (keys: https://kie.ai/api-key)\n", stderr)
    -- invalid input found by kie.models: also a usage error
    rc, _, stderr = kie("generate --interval 0.05 --prompt x --ref https://example.com/r.png --style WEIRD -o "
      .. q(DIR), env)
    assert.equals(2, rc)
    assert.matches("style", stderr)
    assert.equals(0, m:count("/api/*"))
  end)

  it("exit 3 on an auth failure, one line, no key", function()
    local rc, stdout, stderr = kie("credits", { KIE_API_KEY = "wrong-key-123", KIE_BASE_URL = m.url })
    assert.equals(3, rc)
    assert.equals("", stdout)
    assert.matches("^kie: auth: [^\n]*\n$", stderr)
    assert.is_nil(stderr:find("wrong-key-123", 1, true))
    rc, stdout = kie("--json credits", { KIE_API_KEY = "wrong-key-123", KIE_BASE_URL = m.url })
    assert.equals(3, rc)
    assert.equals("auth", json_decode(stdout).error.kind)
  end)

  it("exit 3 on a network error", function()
    local rc, _, stderr = kie("--retries 0 credits", { KIE_API_KEY = KEY, KIE_BASE_URL = "http://127.0.0.1:1" })
    assert.equals(3, rc)
    assert.matches("^kie: network: ", stderr)
  end)

  it("exit 4 when the task fails (#fail prompt)", function()
    local rc, stdout, stderr = kie("--json generate --interval 0.05 --prompt 'boom #fail' " ..
      "--ref https://example.com/r.png -o " .. q(DIR .. "/out3"), env)
    assert.equals(4, rc)
    assert.matches("kie: task_failed: ", stderr)
    local doc = json_decode(stdout)
    assert.equals("task_failed", doc.error.kind)
    assert.equals("500", doc.error.failCode)
    assert.matches("^task_", doc.error.task_id)
  end)

  it("exit 5 on local I/O problems", function()
    local rc, _, stderr = kie("generate --prompt x --ref " .. q(DIR .. "/nope.png") .. " -o " .. q(DIR .. "/o5"), env)
    assert.equals(5, rc)
    assert.matches("\nkie: io: upload: cannot open [^\n]*\n$", stderr)
    local file = DIR .. "/plain-file"
    write(file, "x")
    rc, _, stderr = kie("generate --prompt x --ref https://example.com/r.png -o " .. q(file), env)
    assert.equals(5, rc)
    assert.matches("not a directory", stderr)
    assert.equals(0, m:count("/api/v1/jobs/createTask"))
  end)

  it("status, wait and credits", function()
    local rc, stdout, stderr = kie("--json generate --interval 0.05 --prompt x --ref https://example.com/r.png -o " ..
      q(DIR .. "/o6"), env)
    assert.equals(0, rc, stderr)
    local id = json_decode(stdout).taskId
    rc, stdout = kie("status " .. id, env)
    assert.equals(0, rc)
    assert.matches("^" .. id .. "  success  ideogram/character", stdout)
    assert.matches("\nhttp://127%.0%.0%.1:%d+/files/" .. id .. "_1%.png\n", stdout)
    rc, stdout = kie("status " .. id .. " --json", env)
    assert.equals(0, rc)
    assert.equals(id, json_decode(stdout).taskId)
    rc, stdout = kie("wait --interval 0.05 " .. id, env)
    assert.equals(0, rc)
    assert.matches("^http://[^\n]+_1%.png\n$", stdout)
    rc, stdout = kie("wait --interval 0.05 -o " .. q(DIR .. "/o7") .. " " .. id, env)
    assert.equals(0, rc)
    assert.is_true(is_png((stdout:gsub("\n$", ""))))
    rc, stdout = kie("credits", env)
    assert.equals(0, rc)
    assert.matches("^%d+\n$", stdout)
    rc, stdout = kie("credits --json", env)
    assert.equals(0, rc)
    assert.is_number(json_decode(stdout).credits)
    rc, stdout, stderr = kie("status task_does_not_exist", env)
    assert.equals(3, rc)
    assert.equals("", stdout)
    assert.matches("^kie: not_found: ", stderr)
  end)

  it("no server string chooses a path: wait -o and generate -o name files safely", function()
    local encode = require("kie.core").encode
    local real = { taskId = "task_ideogram_1765179922911" }
    local rc, stdout, stderr
    local function answer(task_id)
      local data = { taskId = task_id, model = "ideogram/character", state = "success", param = "{}",
        resultJson = encode{ resultUrls = real.resultUrls } }
      return encode{ code = 200, msg = "success", data = data }
    end
    local out = DIR .. "/jail/out"
    for _, evil in ipairs{ "../escaped", "../../escaped", "/tmp/kie-cli-escaped", "..", "a/../../escaped" } do
      m:reset()
      os.execute("rm -rf " .. q(DIR .. "/jail"))
      -- a result URL the mock serves: an uploaded PNG
      local up = assert(require("kie").new{ api_key = KEY, base_url = m.url, upload_url = m.url }:upload(ref))
      real.resultUrls = { up.downloadUrl }
      m:fault{ path = "/api/v1/jobs/recordInfo", fault = "raw", status = 200, content_type = "application/json",
        body = answer(evil), times = -1 }
      -- wait: the user's own id names the files
      rc, stdout, stderr = kie("wait --interval 0.05 -o " .. q(out) .. " " .. real.taskId, env)
      assert.equals(0, rc, stderr)
      assert.equals(out .. "/" .. real.taskId .. "_1.png\n", stdout)
      -- generate: the server's id only when it is a plain name, else a digest of it
      m:fault{ path = "/api/v1/jobs/createTask", fault = "raw", status = 200, content_type = "application/json",
        body = '{"code":200,"msg":"success","data":{"taskId":' .. require("kie.core").encode(evil) .. '}}' }
      rc, stdout, stderr = kie("generate --interval 0.05 --prompt x --ref https://example.com/r.png -o " ..
        q(out), env)
      assert.equals(0, rc, stderr)
      assert.matches("^" .. out:gsub("%p", "%%%0") .. "/task%-%w+_1%.png\n$", stdout)
      local _, listing = util.run("find " .. q(DIR .. "/jail") .. " -type f")
      for path in listing:gmatch("[^\n]+") do
        assert.equals(out, path:match("^(.*)/[^/]+$"), path)
      end
      assert.is_nil(read("/tmp/kie-cli-escaped_1.png"))
    end
    -- a user's id that is not a plain name is not used as one either
    m:reset()
    rc, stdout = kie("wait --interval 0.05 -o " .. q(out) .. " " .. q("../" .. real.taskId), env)
    assert.is_nil(read(DIR .. "/jail/" .. real.taskId .. "_1.png"))
    if rc == 0 then assert.matches("^" .. out:gsub("%p", "%%%0") .. "/task%-%w+_1%.png\n$", stdout) end
  end)

  -- Runs `kie ARGS` in the background, sends it SIGINT once its request to `path`
  -- reached the mock (and a little later, inside the transfer), and returns its
  -- exit code (nil if it did not end within 20 s), stdout and stderr.
  local function interrupted(args, path, base)
    local core = require("kie.core")
    os.execute("(" .. env_prefix(env) .. " " .. LUA .. " bin/kie " .. args .. " >" .. q(base .. ".out") ..
      " 2>" .. q(base .. ".err") .. " </dev/null & echo $! >" .. q(base .. ".pid") .. "; wait $!; echo $? >" ..
      q(base .. ".rc") .. ") >/dev/null 2>&1 &")
    local arrived = false
    for _ = 1, 400 do
      if m:count(path) > 0 then arrived = true break end
      core.sleep(0.05)
    end
    assert.is_true(arrived, args .. ": the request never reached the mock")
    core.sleep(0.2) -- inside the transfer now
    os.execute("kill -INT " .. assert(tonumber(read(base .. ".pid")), "no pid"))
    local rc
    for _ = 1, 400 do -- 20 s at most
      rc = tonumber(read(base .. ".rc") or "")
      if rc then break end
      core.sleep(0.05)
    end
    return rc, read(base .. ".out"), read(base .. ".err")
  end

  it("Ctrl-C during status, credits or upload ends at once with 130 and a short message", function()
    local cases = {
      { "credits", "/api/v1/chat/credit" },
      { "status task_whatever", "/api/v1/jobs/recordInfo" },
      { "upload " .. q(ref), "/api/file-stream-upload" },
      { "--json credits", "/api/v1/chat/credit" },
    }
    for n, case in ipairs(cases) do
      m:reset()
      -- the answer would take 60 s: an exit within 20 s did not wait for it
      m:fault{ path = case[2], fault = "delay", seconds = 60 }
      local rc, out, err = interrupted(case[1], case[2], DIR .. "/int" .. n)
      assert.equals(130, rc, case[1] .. ": " .. tostring(err))
      assert.equals("kie: interrupted\n", err)
      if case[1]:find("--json", 1, true) then
        assert.equals("interrupted", json_decode(out).error.kind)
      else
        assert.equals("", out)
      end
    end
  end)

  it("Ctrl-C while a create is in flight reads its answer first and names the task (kie wait ID)", function()
    for n, args in ipairs{ "generate --prompt x --ref https://example.com/r.png -o " .. q(DIR .. "/intc"),
      "--json generate --prompt x --ref https://example.com/r.png -o " ..
      q(DIR .. "/intc") } do
      m:reset()
      m:fault{ path = "/api/v1/jobs/createTask", fault = "delay", seconds = 1 }
      local rc, out, err = interrupted(args, "/api/v1/jobs/createTask", DIR .. "/intc" .. n)
      assert.equals(130, rc, args .. ": " .. tostring(err))
      assert.equals(1, m:count("/api/v1/jobs/createTask"))
      local id = err:match("kie wait (task_[%w_]+)")
      assert.is_string(id, err)
      assert.equals(id, m:task(id).task.taskId)
      if args:find("--json", 1, true) then
        local e = json_decode(out).error
        assert.equals("interrupted", e.kind)
        assert.equals(id, e.task_id)
      end
    end
  end)

  it("Ctrl-C while a create is in flight whose answer never comes prints its fingerprint", function()
    for n, args in ipairs{ "generate --prompt x --ref https://example.com/r.png -o " .. q(DIR .. "/intu"),
      "--json generate --prompt x --ref https://example.com/r.png -o " .. q(DIR .. "/intu") } do
      m:reset()
      -- the create is read, then its connection closes after 1 s with no answer
      m:fault{ path = "/api/v1/jobs/createTask", fault = "close_after_read", delay = 1 }
      local rc, out, err = interrupted(args, "/api/v1/jobs/createTask", DIR .. "/intu" .. n)
      assert.equals(130, rc, args .. ": " .. tostring(err))
      local fp = err:match("unknown_outcome, fingerprint ([^%s%)]+)%)")
      assert.is_string(fp, err)
      if args:find("--json", 1, true) then
        local e = json_decode(out).error
        assert.equals("interrupted", e.kind)
        assert.equals("unknown_outcome", e.outcome)
        assert.equals(fp, e.fingerprint)
      end
    end
  end)

  it("--json with a usage error prints a JSON error object (exit 2)", function()
    for _, args in ipairs{ "--json", "--json frobnicate", "--json generate --prompt x", "--json status",
      "--json generate --num 9 --prompt x -o " .. q(DIR), "--json verify-callback" } do
      local rc, stdout, stderr = kie(args, env)
      assert.equals(2, rc, args)
      assert.matches("^kie: ", stderr)
      local doc = json_decode(stdout)
      assert.equals("usage", doc.error.kind, args)
      assert.is_string(doc.error.message)
    end
    -- without --json, stdout stays empty
    local rc, stdout = kie("frobnicate", env)
    assert.equals(2, rc)
    assert.equals("", stdout)
  end)

  it("upload FILE prints the downloadUrl; a URL is uploaded by URL", function()
    local rc, stdout, stderr = kie("upload " .. q(ref) .. " --upload-path cli --name hero.png", env)
    assert.equals(0, rc, stderr)
    assert.equals(m.url .. "/uploads/cli/hero.png\n", stdout)
    rc, stdout = kie("--json upload " .. m.url .. "/uploads/cli/hero.png", env)
    assert.equals(0, rc)
    local doc = json_decode(stdout)
    assert.equals("image/png", doc.mimeType)
    assert.equals(1, m:count("/api/file-url-upload"))
    local txt = DIR .. "/fake.png"
    write(txt, "hello")
    rc, stdout, stderr = kie("upload " .. q(txt), env)
    assert.equals(2, rc)
    assert.equals("", stdout)
    assert.matches("not a JPEG, PNG or WebP", stderr)
    rc = kie("upload " .. q(DIR .. "/missing.png"), env)
    assert.equals(5, rc)
  end)

  it("verify-callback accepts a signed body and rejects a bad one", function()
    local hkey = "whsec-cli-spec"
    local task_id = "task_ideogram_123"
    local body = '{"code":200,"msg":"ok","data":{"taskId":"' .. task_id .. '","state":"success",' ..
      '"resultJson":"{\\"resultUrls\\":[\\"https://x.example/a.png\\"]}"}}'
    local h = callback.sign(hkey, task_id)
    local ts, sig = h["X-Webhook-Timestamp"], h["X-Webhook-Signature"]
    local rc, stdout, stderr = kie("verify-callback --key " .. q(hkey) .. " --timestamp " .. ts ..
      " --signature " .. q(sig), {}, body)
    assert.equals(0, rc, stderr)
    assert.equals("verified  " .. task_id .. "  success\nhttps://x.example/a.png\n", stdout)
    rc, stdout = kie("--json verify-callback --timestamp " .. ts .. " --signature " .. q(sig),
      { KIE_WEBHOOK_KEY = hkey }, body)
    assert.equals(0, rc)
    local doc = json_decode(stdout)
    assert.is_true(doc.verified)
    assert.equals(task_id, doc.task_id)

    rc, stdout, stderr = kie("verify-callback --key wrong-key --timestamp " .. ts .. " --signature " .. q(sig),
      {}, body)
    assert.equals(1, rc)
    assert.equals("", stdout)
    assert.matches("^kie: signature: callback: X%-Webhook%-Signature does not match", stderr)
    rc, stdout, stderr = kie("verify-callback --key " .. q(hkey), {}, body)
    assert.equals(1, rc)
    assert.equals("", stdout)
    assert.matches("missing X%-Webhook%-Timestamp", stderr)
    local old = callback.sign(hkey, task_id, os.time() - 3600)
    rc = kie("verify-callback --key " .. q(hkey) .. " --timestamp " .. old["X-Webhook-Timestamp"] ..
      " --signature " .. q(old["X-Webhook-Signature"]), {}, body)
    assert.equals(1, rc)
    rc = kie("verify-callback --key " .. q(hkey) .. " --timestamp " .. ts .. " --signature " .. q(sig), {},
      "not json")
    assert.equals(1, rc)
    rc, stdout, stderr = kie("verify-callback", {}, body)
    assert.equals(2, rc)
    assert.equals("", stdout)
    assert.matches("KIE_WEBHOOK_KEY", stderr)
  end)

  it("draws a \\r-updated progress line on a terminal (script -qc)", function()
    if sh("command -v script") ~= 0 then return pending("util-linux script is missing") end
    -- the terminal this test is about, whatever the caller's (TERM=dumb in CI and
    -- editors' shells turns the live line off, by design)
    local term = { TERM = "xterm", COLUMNS = "80" }
    for k, v in pairs(env) do term[k] = v end
    local cmd = env_prefix(term) .. " " .. LUA .. " bin/kie generate --interval 0.3 --prompt x " ..
      "--ref " .. q(ref) .. " -o " .. q(DIR .. "/tty")
    local rc, stdout = sh("env TERM=xterm COLUMNS=80 script -qec " .. q(cmd) .. " /dev/null")
    assert.equals(0, rc)
    assert.truthy(stdout:find("\r|  uploading", 1, true) or stdout:find("\r/  uploading", 1, true))
    assert.truthy(stdout:find("  waiting ", 1, true))
    assert.truthy(stdout:find("\27[K", 1, true))
    assert.matches("\r\27%[K[^\r]*/tty/task_[%w_]+_1%.png", stdout)
    -- the elapsed time moves while waiting
    local times = {}
    for t in stdout:gmatch("waiting +(%d+%.%d)s") do times[t] = true end
    local n = 0
    for _ in pairs(times) do n = n + 1 end
    assert.is_true(n >= 2)
  end)

  it("under TERM=dumb, even on a terminal, prints plain lines (no \\r)", function()
    if sh("command -v script") ~= 0 then return pending("util-linux script is missing") end
    local dumb = { TERM = "dumb" }
    for k, v in pairs(env) do dumb[k] = v end
    local cmd = env_prefix(dumb) .. " " .. LUA .. " bin/kie generate --interval 0.05 --prompt x " ..
      "--ref https://example.com/r.png -o " .. q(DIR .. "/dumb")
    local rc, stdout = sh("env TERM=dumb script -qec " .. q(cmd) .. " /dev/null")
    assert.equals(0, rc)
    assert.matches("kie: success ", stdout)
    assert.is_nil(stdout:find("\27[K", 1, true))
  end)

  it("works from a checkout without LUA_PATH (a new user's first run)", function()
    local flavour = LUA
    if not io.open("build/" .. flavour .. "/kie/core.so", "rb") or os.getenv("LD_PRELOAD") then
      return pending("no plain build/" .. flavour .. " here")
    end
    local rc, stdout = sh("env -u LUA_PATH -u LUA_CPATH KIE_API_KEY=" .. KEY .. " KIE_BASE_URL=" .. m.url ..
      " " .. LUA .. " bin/kie credits")
    assert.equals(0, rc)
    assert.matches("^%d+\n$", stdout)
  end)
end)

describe("kie mock #core", function()
  lazy_setup(function() DIR = tmpdir() end)
  lazy_teardown(function() os.execute("rm -rf " .. q(DIR)) end)

  local function start(args)
    local out = DIR .. "/mock-" .. math.random(1e9)
    local p = assert(io.popen(env_prefix({}) .. " " .. LUA .. " bin/kie " .. args .. " >" .. q(out .. ".out") ..
      " 2>" .. q(out .. ".err") .. " & echo $!"))
    local pid = tonumber(p:read("*l"))
    p:close()
    local text
    for _ = 1, 300 do
      text = read(out .. ".err") or ""
      if text:find("listening", 1, true) or text:find("kie: ", 1, true) then break end
      require("kie.core").sleep(0.05)
    end
    return pid, out
  end

  local function alive(pid)
    return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true or
      os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0
  end

  local function wait_gone(pid, seconds)
    for _ = 1, seconds * 20 do
      if not alive(pid) then return true end
      require("kie.core").sleep(0.05)
    end
    return false
  end

  it("serves the API for the printed URL and key, and stops on SIGINT", function()
    local pid, out = start("--json mock --pace 0.02")
    local doc = json_decode(read(out .. ".out"))
    assert.matches("^http://127%.0%.0%.1:%d+$", doc.url)
    local rc, stdout = kie("credits", { KIE_API_KEY = doc.api_key, KIE_BASE_URL = doc.url })
    assert.equals(0, rc)
    assert.equals("1000\n", stdout)
    os.execute("kill -INT " .. pid)
    assert.is_true(wait_gone(pid, 10))
    assert.is_true(wait_gone(doc.pid, 5))
    assert.matches("kie mock: stopped", read(out .. ".err"))
  end)

  it("listens on --port and the watchdog stops nginx after SIGTERM", function()
    local port
    do
      local s = assert(require("socket").bind("127.0.0.1", 0))
      port = select(2, s:getsockname())
      s:close()
    end
    local pid, out = start("mock --port " .. port .. " --key k-" .. port)
    local text = read(out .. ".out")
    assert.matches("export KIE_BASE_URL=http://127%.0%.0%.1:" .. port .. "\n", text)
    assert.matches("export KIE_API_KEY=k%-" .. port .. "\n", text)
    local url = "http://127.0.0.1:" .. port
    local rc = kie("credits", { KIE_API_KEY = "k-" .. port, KIE_BASE_URL = url })
    assert.equals(0, rc)
    local nginx = tonumber(read(out .. ".err"):match("nginx pid (%d+)"))
    os.execute("kill -TERM " .. pid)
    assert.is_true(wait_gone(pid, 5))
    assert.is_true(wait_gone(nginx, 10))
  end)

  it("says clearly when the mock is not there (an installed rock)", function()
    local elsewhere = DIR .. "/installed"
    os.execute("mkdir -p " .. q(elsewhere .. "/bin"))
    os.execute("cp bin/kie " .. q(elsewhere .. "/bin/kie"))
    local rc, _, stderr = sh("cd " .. q(elsewhere) .. " && " .. env_prefix({}) .. " " .. LUA .. " bin/kie mock")
    assert.equals(5, rc)
    assert.matches("not of an installed rock", stderr)
  end)
end)
