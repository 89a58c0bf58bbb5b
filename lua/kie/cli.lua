--- The `kie` command line (bin/kie): generate, status, wait, credits, upload,
-- verify-callback, mock; fleet batches: submit, worker, batch (kie.cli_fleet).
--
-- Exit codes: 0 ok, 1 callback verification failed, 2 usage error (also bad
-- input and a missing key), 3 API or network error, 4 the task failed, 5 local
-- I/O, 130 interrupted (Ctrl-C: at once, except that a create in flight has its
-- answer read first). Errors are one line on stderr; with `--json` stdout gets
-- `{"error": {...}}` (usage errors and Ctrl-C too). The key comes from
-- `KIE_API_KEY` only (never from argv, where `ps` would show it); `KIE_BASE_URL`
-- and `KIE_UPLOAD_URL` pick the hosts.
-- @module kie.cli

local kie = require "kie"
local core = require "kie.core"
local errors = require "kie.errors"
local files = require "kie.files"
local lifecycle = require "kie.lifecycle"

local type, tostring, tonumber, pairs, ipairs, pcall, error, setmetatable =
  type, tostring, tonumber, pairs, ipairs, pcall, error, setmetatable
local format, floor = string.format, math.floor
local concat = table.concat

local M = {}

--- Exit codes.
M.EXIT = { ok = 0, verify = 1, usage = 2, api = 3, task_failed = 4, io = 5, interrupted = 130 }

local DEFAULT_MODEL = "ideogram/character"
local MOCK_KEY = "kie-mock-key"

--- The exit code for an error: `validation` 2, `io` 5, `task_failed` 4,
-- `signature` 1, anything else (API, network, deadline) 3.
-- @param err an error of `kie.errors`
-- @treturn integer
function M.exit_code(err)
  local kind = type(err) == "table" and err.kind or nil
  if kind == "validation" then return M.EXIT.usage end
  if kind == "io" then return M.EXIT.io end
  if kind == "task_failed" then return M.EXIT.task_failed end
  if kind == "signature" then return M.EXIT.verify end
  return M.EXIT.api
end

-- formatting --------------------------------------------------------------------

--- Seconds as "4.2s", "1m05s", "1h02m".
-- @tparam number s
-- @treturn string
function M.duration(s)
  if s < 0 then s = 0 end
  if s < 60 then return format("%.1fs", s) end
  if s < 3600 then return format("%dm%02ds", floor(s / 60), floor(s % 60)) end
  return format("%dh%02dm", floor(s / 3600), floor(s % 3600 / 60))
end

local SPINNER = { "|", "/", "-", "\\" }

--- The text of the live progress line: spinner, phase, elapsed time, task id
-- and details (download bytes), cut to `width` columns (no newline, no
-- control characters).
-- @tparam table st `{phase =, elapsed =, task_id =, detail =, bytes =, total =, tick =}`
-- @tparam[opt=80] integer width
-- @treturn string
function M.progress_line(st, width)
  width = width or 80
  local parts = {
    SPINNER[(st.tick or 0) % #SPINNER + 1],
    format("%-11s", st.phase or "?"),
    format("%7s", M.duration(st.elapsed or 0)),
  }
  if st.task_id then parts[#parts + 1] = st.task_id end
  if st.detail then parts[#parts + 1] = st.detail end
  if st.bytes then
    parts[#parts + 1] = files.size_text(st.bytes) ..
      (st.total and (" / " .. files.size_text(st.total)) or "")
  end
  local line = concat(parts, "  "):gsub("[%c]", " ")
  if #line > width - 1 then line = line:sub(1, width - 1) end
  return line
end

--- Progress output to a stream: on a terminal one line rewritten in place with
-- "\r" (`tick` redraws it), else one plain line per phase change.
-- @tparam file out where to write (stderr)
-- @tparam boolean tty
-- @tparam function now monotonic seconds
-- @tparam[opt=80] integer width
-- @treturn table with `set(fields)`, `tick()`, `clear()`
function M.progress(out, tty, now, width)
  local st = { tick = 0 }
  local start = now()
  local drawn, last_plain = false, nil
  local p = {}
  local function draw()
    st.elapsed = now() - start
    out:write("\r", M.progress_line(st, width), "\27[K")
    out:flush()
    drawn = true
  end
  function p.set(fields)
    for k, v in pairs(fields) do st[k] = v end
    if fields.phase and fields.bytes == nil then st.bytes, st.total = nil, nil end
    if tty then
      draw()
    else
      local line = st.phase .. (st.detail and (" " .. st.detail) or "")
      if line ~= last_plain then
        last_plain = line
        out:write(format("kie: %s (%s)%s\n", line, M.duration(now() - start),
          st.task_id and ("  " .. st.task_id) or ""))
        out:flush()
      end
    end
  end
  function p.tick()
    if not tty then return end
    st.tick = st.tick + 1
    draw()
  end
  function p.clear()
    if tty and drawn then
      out:write("\r\27[K")
      out:flush()
    end
  end
  p.state = st
  return p
end

-- small helpers -------------------------------------------------------------------

local function _isatty(fd)
  local r = os.execute("test -t " .. fd)
  return r == true or r == 0
end

local function _shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function _is_dir(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local _, _, code = f:read(1)
  f:close()
  return code == 21 -- EISDIR
end

local function _number_text(n)
  if type(n) == "number" and n == floor(n) and n > -1e15 and n < 1e15 then
    return format("%d", n)
  end
  return tostring(n)
end

-- the context of one run: streams, env and the exit code
local Ctx = {}
Ctx.__index = Ctx

function Ctx:out(...)
  self.stdout:write(...)
end

function Ctx:json(value)
  local s, err = core.encode(value)
  if not s then s = core.encode({ error = { kind = "protocol", message = tostring(err) } }) end
  self.stdout:write(s, "\n")
end

-- Reports err (one line on stderr; JSON on stdout with --json); returns the exit code.
function Ctx:fail(err, code)
  err = errors.wrap(err)
  local line = tostring(err)
  if not line:match("^kie") then line = "kie: " .. line end
  self.stderr:write(line, "\n")
  if self.args and self.args.json and type(err) == "table" then
    self:json({ error = {
      kind = err.kind, message = err.message, status = err.status, code = err.code,
      task_id = err.task_id, failCode = err.failCode, failMsg = err.failMsg,
    } })
  end
  return code or M.exit_code(err)
end

function Ctx:usage(msg)
  self.stderr:write("kie: ", msg, " (see kie --help)\n")
  if self.want_json then self:json({ error = { kind = "usage", message = msg } }) end
  return M.EXIT.usage
end

-- Ctrl-C: one short line (and a JSON error with --json); returns 130. `paid`
-- (see _drive) names the task of a create that was sent: its id with the
-- command that picks it up, or the fingerprint when its answer never came.
function Ctx:interrupted(paid)
  local detail, id = "", paid and paid.task_id
  if id then
    -- the id is server text: shown quoted for the shell unless it is a plain name
    local shown = files.safe_name(id) == id and id or _shell_quote(id)
    detail = "; task " .. shown .. " goes on: `kie wait " .. shown .. " --out DIR` picks it up"
  elseif paid and paid.fingerprint then
    detail = "; a create was sent and its answer never came (unknown_outcome, fingerprint " ..
      paid.fingerprint .. "): it may have made a task; check before creating it again"
  end
  self.stderr:write("kie: interrupted", detail, "\n")
  if self.want_json then
    self:json({ error = { kind = "interrupted", message = "interrupted" .. detail, task_id = id,
      fingerprint = paid and paid.fingerprint, outcome = paid and paid.fingerprint and "unknown_outcome" or nil } })
  end
  return M.EXIT.interrupted
end

-- The client of a command; `extra` holds more kie.new options (fleet).
function Ctx:client(extra)
  local key = self.getenv("KIE_API_KEY")
  if not key or key == "" then
    return nil, errors.new("validation", "no API key: set KIE_API_KEY (keys: https://kie.ai/api-key)")
  end
  local o = { api_key = key, max_retries = self.args.retries }
  for k, v in pairs(extra or {}) do o[k] = v end
  local ok, c = pcall(kie.new, o)
  if not ok then
    return nil, errors.new("validation", (tostring(c):gsub("^[^:]*:%d+: ", "")))
  end
  return c
end

local QUIET = { set = function() end, tick = function() end, clear = function() end, state = {} }

function Ctx:progress()
  local quiet = self.args.quiet
  local tty = not quiet and self.isatty(2) and (self.getenv("TERM") or "") ~= "dumb"
  local width = tonumber(self.getenv("COLUMNS") or "") or 80
  if quiet then return QUIET end
  return M.progress(self.stderr, tty, core.now, width)
end

-- True for the error the standalone interpreter raises on SIGINT.
local function _is_interrupt(err)
  if type(err) == "table" then err = err.message end
  return tostring(err):find("interrupted!", 1, true) ~= nil
end

-- After a Ctrl-C that canceled job h: a create it had in flight is not dropped.
-- Its cancel left it unknown_outcome (its answer still read by later steps):
-- steps on until that answer came (h.task_id), nothing is pending any more, or
-- the client's request timeout passed (the create's own transfer ends by then).
-- A second Ctrl-C ends the process at once (the interpreter's default action is
-- back after the first). Returns `{task_id =, fingerprint =}` or nil when no
-- create was in flight.
local function _settle_create(client, h, stderr)
  local _, err = h:result()
  if h.task_id or type(err) ~= "table" then
    return h.task_id and { task_id = h.task_id } or nil
  end
  if err.task_id then return { task_id = err.task_id } end
  if err.kind ~= "unknown_outcome" then return nil end
  if stderr then
    stderr:write("kie: interrupted; reading the answer of the create already sent",
      " (Ctrl-C again to quit at once)\n")
    stderr:flush()
  end
  -- answers the interrupted step was given but never queued are handed over too
  lifecycle.requeue(client)
  local deadline = core.now() + client._opts.timeout
  while not h.task_id and core.now() < deadline do
    if client:step(100) == 0 then break end
  end
  if h.task_id then return { task_id = h.task_id } end
  return { fingerprint = err.fingerprint }
end

-- Runs fn in kie.spawn, stepping the client and redrawing the progress line
-- until it ends: the interpreter's Ctrl-C hook runs between steps (at most
-- 100 ms apart), never only after a whole transfer. Ctrl-C (Lua's
-- "interrupted!", raised in this loop or, on LuaJIT, inside the job) returns
-- nil, "interrupted", and what became of a create in flight (see _settle_create).
local function _drive(client, prog, fn, stderr)
  local h = kie.spawn(fn)
  local ok, err = pcall(function()
    while not h:done() do
      client:step(100)
      prog.tick()
    end
  end)
  prog.clear()
  if not ok then
    h:cancel()
    if _is_interrupt(err) then return nil, "interrupted", _settle_create(client, h, stderr) end
    error(err, 0)
  end
  local function check(res, ...)
    local e = ...
    if res == nil and type(e) == "table" and e.kind == "raised" and _is_interrupt(e) then
      return nil, "interrupted", e.task_id and { task_id = e.task_id } or nil
    end
    return res, ...
  end
  return check(h:result())
end

local function _ext_of(url)
  local ext = url:match("^[^?#]*%.(%w+)[?#]?") or url:match("^[^?#]*%.(%w+)$")
  ext = ext and ext:lower()
  if ext == "png" or ext == "jpg" or ext == "jpeg" or ext == "webp" then return ext end
  return "png"
end

-- Downloads every result URL of info into dir, named after `stem` (a
-- files.safe_name); returns the paths or nil, err.
local function _download_all(client, info, dir, stem, prog)
  local paths = {}
  local urls = info.resultUrls or {}
  for i, url in ipairs(urls) do
    local path = dir:gsub("/+$", "") .. "/" .. stem .. "_" .. i .. "." .. _ext_of(url)
    if dir == "/" then path = "/" .. stem .. "_" .. i .. "." .. _ext_of(url) end
    prog.set{ phase = "downloading", detail = i .. "/" .. #urls }
    local got, err = client:download(url, path, {
      progress = function(n, total) prog.state.bytes, prog.state.total = n, total end,
    })
    if not got then return nil, err end
    paths[#paths + 1] = got
  end
  return paths
end

local function _ensure_dir(ctx, dir)
  if _is_dir(dir) then return true end
  if io.open(dir, "rb") then
    return nil, errors.new("io", "--out " .. dir .. " exists and is not a directory")
  end
  os.execute("mkdir -p -- " .. _shell_quote(dir) .. " 2>/dev/null")
  if not _is_dir(dir) then
    return nil, errors.new("io", "cannot create the output directory " .. dir)
  end
  ctx.created_dir = dir
  return true
end

local function _print_result(ctx, info, paths)
  if ctx.args.json then
    ctx:json({
      taskId = info.taskId, model = info.model, state = info.state, costTime = info.costTime,
      resultUrls = info.resultUrls or {}, files = paths or nil,
    })
    return
  end
  for _, p in ipairs(paths or info.resultUrls or {}) do ctx:out(p, "\n") end
end

-- commands ---------------------------------------------------------------------------

local commands = {}

function commands.generate(ctx)
  local a = ctx.args
  local client, cerr = ctx:client()
  if not client then return ctx:fail(cerr) end
  local okdir, derr = _ensure_dir(ctx, a.out)
  if not okdir then return ctx:fail(derr) end
  local input = {
    prompt = a.prompt, image_size = a.size, style = a.style, rendering_speed = a.speed,
    num_images = a.num and tostring(a.num) or nil, seed = a.seed, negative_prompt = a.negative_prompt,
  }
  if a.no_expand then input.expand_prompt = false end
  local prog = ctx:progress()
  local task_id
  local info, err, paid = _drive(client, prog, function()
    -- local files first: each is checked and uploaded, then used by its URL
    local function resolve(v)
      if v == nil or files.is_url(v) then return v end
      prog.set{ phase = "uploading", detail = v }
      local up, uerr = client:upload(v, { upload_path = a.upload_path })
      if not up then return nil, uerr end
      return up.downloadUrl
    end
    local uerr
    if #a.ref > 0 then
      input.reference_image_urls = {}
      for i, r in ipairs(a.ref) do
        input.reference_image_urls[i], uerr = resolve(r)
        if uerr then return nil, uerr end
      end
    end
    input.image_url, uerr = resolve(a.image)
    if uerr then return nil, uerr end
    input.mask_url, uerr = resolve(a.mask)
    if uerr then return nil, uerr end
    prog.set{ phase = "creating", detail = false }
    local task, terr = client:create_task{ model = a.model, input = input,
      callBackUrl = a.callback }
    if not task then return nil, terr end
    task_id = task.taskId
    prog.set{ phase = "waiting", task_id = task_id }
    local done, werr = client:wait(task_id, { timeout = a.timeout, interval = a.interval,
      on_update = function(i)
      prog.set{ phase = i.state }
    end })
    if not done then return nil, werr end
    local paths, ferr = _download_all(client, done, a.out, files.safe_name(task_id), prog)
    if not paths then
      ferr.task_id = ferr.task_id or task_id
      return nil, ferr
    end
    done.files = paths
    return done
  end, ctx.stderr)
  if err == "interrupted" then
    return ctx:interrupted(paid or (task_id and { task_id = task_id }))
  end
  if not info then
    if type(err) == "table" and task_id then err.task_id = err.task_id or task_id end
    return ctx:fail(err)
  end
  _print_result(ctx, info, info.files)
  return M.EXIT.ok
end

function commands.status(ctx)
  local client, cerr = ctx:client()
  if not client then return ctx:fail(cerr) end
  local info, err = _drive(client, QUIET, function() return client:get_task(ctx.args.id) end)
  if err == "interrupted" then return ctx:interrupted() end
  if not info then return ctx:fail(err) end
  if ctx.args.json then
    ctx:json(info)
    return M.EXIT.ok
  end
  local line = { info.taskId or ctx.args.id, tostring(info.state), tostring(info.model or "") }
  if type(info.costTime) == "number" then line[#line + 1] = "(" .. M.duration(info.costTime / 1000) .. ")" end
  ctx:out(concat(line, "  "), "\n")
  if info.state == "fail" then
    ctx:out("failCode ", tostring(info.failCode), ": ", tostring(info.failMsg), "\n")
  end
  for _, u in ipairs(info.resultUrls or {}) do ctx:out(u, "\n") end
  return M.EXIT.ok
end

function commands.wait(ctx)
  local a = ctx.args
  local client, cerr = ctx:client()
  if not client then return ctx:fail(cerr) end
  if a.out then
    local okdir, derr = _ensure_dir(ctx, a.out)
    if not okdir then return ctx:fail(derr) end
  end
  local prog = ctx:progress()
  local info, err = _drive(client, prog, function()
    prog.set{ phase = "waiting", task_id = a.id }
    local done, werr = client:wait(a.id, { timeout = a.timeout, interval = a.interval,
      on_update = function(i)
      prog.set{ phase = i.state }
    end })
    if not done then return nil, werr end
    if a.out then
      local paths, ferr = _download_all(client, done, a.out, files.safe_name(a.id), prog)
      if not paths then return nil, ferr end
      done.files = paths
    end
    return done
  end)
  if err == "interrupted" then return ctx:interrupted() end
  if not info then return ctx:fail(err) end
  _print_result(ctx, info, info.files)
  return M.EXIT.ok
end

function commands.credits(ctx)
  local client, cerr = ctx:client()
  if not client then return ctx:fail(cerr) end
  local n, err = _drive(client, QUIET, function() return client:credits() end)
  if err == "interrupted" then return ctx:interrupted() end
  if not n then return ctx:fail(err) end
  if ctx.args.json then ctx:json({ credits = n }) else ctx:out(_number_text(n), "\n") end
  return M.EXIT.ok
end

function commands.upload(ctx)
  local a = ctx.args
  local client, cerr = ctx:client()
  if not client then return ctx:fail(cerr) end
  local src = a.file
  if files.is_url(src) then src = { url = src } end
  local res, err = _drive(client, QUIET, function()
    return client:upload(src, { upload_path = a.upload_path, file_name = a.name })
  end)
  if err == "interrupted" then return ctx:interrupted() end
  if not res then return ctx:fail(err) end
  if a.json then ctx:json(res) else ctx:out(res.downloadUrl, "\n") end
  return M.EXIT.ok
end

commands["verify-callback"] = function(ctx)
  local a = ctx.args
  local key = a.key or ctx.getenv("KIE_WEBHOOK_KEY")
  if not key or key == "" then
    return ctx:usage("verify-callback needs the webhook HMAC key: --key KEY or KIE_WEBHOOK_KEY")
  end
  local body
  if a.body then
    local f, oerr = io.open(a.body, "rb")
    if not f then return ctx:fail(errors.new("io", "cannot read " .. tostring(oerr))) end
    body = f:read("*a")
    f:close()
  else
    body = ctx.stdin:read("*a")
  end
  if not body or body == "" then
    return ctx:fail(errors.new("protocol", "verify-callback: no body on stdin"), M.EXIT.verify)
  end
  local headers = { ["X-Webhook-Timestamp"] = a.timestamp, ["X-Webhook-Signature"] = a.signature }
  local ev, err = kie.callback.parse(body, headers, { hmac_key = key, tolerance = a.tolerance })
  if not ev then return ctx:fail(err, M.EXIT.verify) end
  if a.json then
    ctx:json({ verified = ev.verified, task_id = ev.task_id, state = ev.state, task = ev.task })
  else
    ctx:out("verified  ", ev.task_id, "  ", tostring(ev.state), "\n")
    for _, u in ipairs(ev.task.resultUrls or {}) do ctx:out(u, "\n") end
  end
  return M.EXIT.ok
end

-- Where spec/support/mock.lua is: next to the script's checkout, or under the
-- current directory. Returns the path or nil, the places looked at.
function M.find_mock(script)
  local places = {}
  local dir = script and script:match("^(.*)/[^/]*$")
  if script and not dir then dir = "." end
  if dir then places[#places + 1] = dir .. "/../spec/support/mock.lua" end
  places[#places + 1] = "./spec/support/mock.lua"
  for _, p in ipairs(places) do
    local f = io.open(p, "rb")
    if f then
      f:close()
      return p
    end
  end
  return nil, places
end

function commands.mock(ctx)
  local a = ctx.args
  local path, looked = M.find_mock(ctx.script)
  if not path then
    return ctx:fail(errors.new("io", "kie mock: the mock server is not available here: it is part " ..
      "of lua-kie's source tree (spec/support/mock.lua), not of an installed rock; run bin/kie " ..
      "from a checkout of lua-kie (looked in " .. concat(looked, ", ") .. ")"))
  end
  local okload, mock = pcall(dofile, path)
  if not okload then
    return ctx:fail(errors.new("io", "kie mock: cannot load " .. path .. ": " .. tostring(mock)))
  end
  local opts = { api_key = a.key or MOCK_KEY, pace = a.pace, hmac_key = a.hmac_key }
  if a.port then
    local oksock, socket = pcall(require, "socket")
    local s, perr = nil, "LuaSocket is missing"
    if oksock then s, perr = socket.bind("127.0.0.1", a.port) end
    if not s then
      return ctx:fail(errors.new("io", "kie mock: port " .. a.port .. " is not free: " .. tostring(perr)))
    end
    s:close()
    opts.server_conf = "listen 127.0.0.1:" .. a.port .. ";"
  end
  local okstart, m = pcall(mock.start, opts)
  if not okstart then
    return ctx:fail(errors.new("io", "kie mock: the mock did not start: " .. tostring(m)))
  end
  local url = a.port and ("http://127.0.0.1:" .. a.port) or m.url
  if a.json then
    ctx:json({ url = url, upload_url = url, api_key = opts.api_key, hmac_key = a.hmac_key,
      pid = m.pid, prefix = m.prefix })
  else
    ctx:out("export KIE_BASE_URL=", url, "\n", "export KIE_UPLOAD_URL=", url, "\n",
      "export KIE_API_KEY=", opts.api_key, "\n")
    if a.hmac_key then ctx:out("export KIE_WEBHOOK_KEY=", a.hmac_key, "\n") end
  end
  ctx.stdout:flush()
  ctx.stderr:write("kie mock: a mock kie.ai is listening on ", url, " (nginx pid ", tostring(m.pid),
    "); prompts with #fail fail, #stuck never end; Ctrl-C stops it\n")
  ctx.stderr:flush()
  local ok, err = pcall(function()
    while m:running() do core.sleep(0.2) end
  end)
  local was_running = m:running()
  m:stop()
  if not ok and not tostring(err):find("interrupted", 1, true) then error(err, 0) end
  if ok and not was_running then
    ctx.stderr:write("kie mock: nginx stopped on its own; see its error log\n")
    return M.EXIT.api
  end
  ctx.stderr:write("kie mock: stopped\n")
  return M.EXIT.ok
end

-- fleet batches (kie.cli_fleet): submit, worker, batch
for _, name in ipairs { "submit", "worker", "batch" } do
  commands[name] = function(ctx) return require("kie.cli_fleet")[name](ctx) end
end

-- argument parsing ----------------------------------------------------------------

local function _parser()
  local argparse = require "argparse"
  local p = argparse("kie", "kie.ai image jobs from the command line (lua-kie " .. kie._VERSION .. ")")
    :epilog("Environment: KIE_API_KEY (required for API commands), KIE_BASE_URL, KIE_UPLOAD_URL, " ..
      "KIE_WEBHOOK_KEY.\nExit codes: 0 ok, 1 callback not verified, 2 usage, 3 API/network error, " ..
      "4 task failed, 5 local I/O.")
  p:flag("--json", "Machine-readable output (one JSON document on stdout).")
  p:flag("-q --quiet", "No progress output on stderr.")
  p:option("--retries", "Retries of idempotent calls (default 4).", nil, tonumber)
  p:command_target("command")
  p:help_max_width(100)

  local function num_range(lo, hi, what)
    return function(s)
      local n = tonumber(s)
      if not n or n % 1 ~= 0 or n < lo or n > hi then
        return nil, what .. " must be a whole number from " .. lo .. " to " .. hi
      end
      return n
    end
  end
  local function positive(s)
    local n = tonumber(s)
    if not n or n <= 0 then return nil, "must be a number of seconds > 0" end
    return n
  end

  local g = p:command("generate", "Create a task, wait for it and download the images.")
  g:option("--prompt", "What to generate.")
  g:option("--ref", "Character reference image: a local file (uploaded first) or a URL. Repeatable.")
    :count("*")
  g:option("--image", "Input image (edit/remix/reframe): a local file or a URL.")
  g:option("--mask", "Inpainting mask (character-edit): a local file or a URL.")
  g:option("--model", "Model name.", DEFAULT_MODEL)
  g:option("--size", "image_size (square, square_hd, portrait_4_3, portrait_16_9, landscape_4_3, landscape_16_9).")
  g:option("--style", "style (AUTO, REALISTIC, FICTION).")
  g:option("--speed", "rendering_speed (TURBO, BALANCED, QUALITY).")
  g:option("--num", "Number of images, 1 to 4.", nil, num_range(1, 4, "--num"))
  g:option("--seed", "Random seed.", nil, num_range(0, 2 ^ 31 - 1, "--seed"))
  g:option("--negative-prompt", "What to avoid.")
  g:flag("--no-expand", "Turn MagicPrompt (expand_prompt) off.")
  g:option("--callback", "callBackUrl for kie.ai's webhook.")
  g:option("--upload-path", "Folder on the upload host for local files.", files.UPLOAD_PATH)
  g:option("--timeout", "Seconds to wait for the task.", 900, positive)
  g:option("--interval", "First poll delay in seconds (default: kie.ai's schedule, 2-3 s).", nil, positive)
  g:option("--out -o", "Directory for the images (created if missing)."):args(1):count(1)

  local s = p:command("status", "Show a task's state (and result URLs).")
  s:argument("id", "Task id.")

  local w = p:command("wait", "Wait for a task to end; print its result URLs (or files with --out).")
  w:argument("id", "Task id.")
  w:option("--timeout", "Seconds to wait.", 900, positive)
  w:option("--interval", "First poll delay in seconds (default: kie.ai's schedule, 2-3 s).", nil, positive)
  w:option("--out -o", "Download the images into this directory.")

  p:command("credits", "Print the remaining credits.")

  local u = p:command("upload", "Upload a JPEG/PNG/WebP file (or a URL) and print its downloadUrl.")
  u:argument("file", "Local file, or an http(s) URL for the upload host to fetch.")
  u:option("--upload-path", "Folder on the upload host.", files.UPLOAD_PATH)
  u:option("--name", "File name to store it under.")

  local v = p:command("verify-callback",
    "Verify and parse a callback body read from stdin (kie.callback.parse).")
  v:option("--key", "Webhook HMAC key (or KIE_WEBHOOK_KEY).")
  v:option("--timestamp", "The X-Webhook-Timestamp header.")
  v:option("--signature", "The X-Webhook-Signature header.")
  v:option("--tolerance", "Seconds of clock skew accepted (default 300).", nil, tonumber)
  v:option("--body", "Read the body from this file instead of stdin.")

  local mk = p:command("mock", "Run the mock kie.ai server (from a source checkout) until Ctrl-C.")
  mk:option("--port", "Port on 127.0.0.1 (default: a free one).", nil, num_range(1, 65535, "--port"))
  mk:option("--key", "API key the mock accepts.", MOCK_KEY)
  mk:option("--pace", "Seconds per task state.", 1, positive)
  mk:option("--hmac-key", "Sign callbacks with this key.")
  require("kie.cli_fleet").add_commands(p, positive, num_range)
  return p
end

--- Runs the command line `argv` (a list of strings, like `arg`).
-- @tparam table argv
-- @tparam[opt] table sys `stdout`, `stderr`, `stdin`, `getenv`, `isatty(fd)`,
-- `script` (path of bin/kie, to find the mock)
-- @treturn integer the exit code
function M.main(argv, sys)
  sys = sys or {}
  local ctx = setmetatable({
    stdout = sys.stdout or io.stdout, stderr = sys.stderr or io.stderr,
    stdin = sys.stdin or io.stdin, getenv = sys.getenv or os.getenv,
    isatty = sys.isatty or _isatty, script = sys.script,
  }, Ctx)
  local list = {}
  for i = 1, #argv do
    list[i] = argv[i]
    if argv[i] == "--" then break end
    -- known before parsing, so that even a usage error is answered in JSON
    if argv[i] == "--json" then ctx.want_json = true end
  end
  for i = #list + 1, #argv do list[i] = argv[i] end
  local okp, parser = pcall(_parser)
  if not okp then
    return ctx:usage("the command line needs lua-argparse (apt-get install lua-argparse, " ..
      "or luarocks install argparse): " .. tostring(parser))
  end
  local ok, args = parser:pparse(list)
  if not ok then return ctx:usage(args) end
  ctx.args = args
  ctx.want_json = args.json and true or false
  local cmd = commands[args.command]
  local okrun, code = pcall(cmd, ctx)
  if not okrun then
    if _is_interrupt(code) then return ctx:interrupted() end
    ctx.stderr:write("kie: internal error: ", tostring(code), "\n")
    if ctx.want_json then ctx:json({ error = { kind = "internal", message = tostring(code) } }) end
    return M.EXIT.api
  end
  return code
end

return M
