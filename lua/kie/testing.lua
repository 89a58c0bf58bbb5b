--- A fake kie.ai for your own tests: no sockets, no real time.
--
--     local testing = require "kie.testing"
--     local fake = testing.new{ pace = 5 }      -- 5 virtual seconds per pending state
--     local client = fake:client()              -- a real kie.new client over the fake
--     local info = assert(client:run{ model = "ideogram/character", input = {...} })
--     assert(#fake:requests("create_task") == 1 and fake:now() >= 15)
--     fake:fail_next("get_task", { kind = "rate_limited", retry_after = 2 })
--
-- The fake stands in for `kie.core` (the C module that does HTTP) and for kie.ai
-- behind it. Everything above the core is the real thing: `fake:client(opts)` is
-- `kie.new` with `core = fake.core`, so validation, retries, rate limits and wait
-- schedules are those your program gets. Time is virtual: the client's clock and
-- sleep are the fake's, so `wait` and `run` return at once while `fake:now()` has
-- moved on. Answers and errors have the shapes the real core returns (they go
-- through the same JSON encoder and decoder, those of `kie.core` when it is
-- installed, else lua-cjson's).
--
-- Tasks walk waiting → queuing → generating → success by virtual time (`pace`
-- seconds per pending state). The outcome is the `outcome` option's, unless an
-- input string holds `#fail` (`#fail=422` picks the failCode) or `#stuck`, as with
-- the mock server of `kie mock`. Result URLs (`https://files.kie.testing.invalid/
-- <taskId>_<n>.png`, one per `num_images`) serve a 1×1 PNG to `download`. An
-- unknown task id is answered like kie.ai does: code 404, "Task not found".
--
-- Transfers started without blocking (`*_async`, `kie.spawn`, `client:step`) are
-- answered at the first `step` once their latency has passed; a `step(ms)` with
-- nothing ready moves the clock on by up to `ms`, as a real wait would.
--
-- Operation names (for `requests` and `fail_next`): `create_task`, `get_task`,
-- `credits`, `download_url`, `upload` (the three upload kinds), `download`, and
-- `call` (any other endpoint: answered with code 404).
--
-- Fields: `fake.core` (the module to give `kie.new` as `core`), `fake.credits`
-- (what `client:credits()` returns), `fake.cost` (credits a create takes; a create
-- without enough credits gets code 402).
-- @module kie.testing

local kie = require "kie"

local type, pairs, ipairs, tostring, tonumber, setmetatable, error, select =
  type, pairs, ipairs, tostring, tonumber, setmetatable, error, select
local open, date = io.open, os.date
local floor, ceil = math.floor, math.ceil
local format, sort, remove = string.format, table.sort, table.remove
local unpack = table.unpack or unpack

-- JSON (and HMAC, append_line, base64) of the real core when it is built, else
-- lua-cjson's JSON alone: callback HMACs and unknown_outcome fingerprints need kie.core.
local base
do
  local ok, real = pcall(require, "kie.core")
  if ok then
    base = real
  else
    local cjson = require "cjson.safe"
    base = { encode = cjson.encode, decode = cjson.decode }
    function base.append_line(path, line)
      local f, err = open(path, "ab")
      if not f then return nil, err end
      f:write(line, "\n")
      f:close()
      return true
    end
  end
end
local encode, decode = base.encode, base.decode

local M = {}

--- A 1×1 PNG: what result URLs serve unless `image` says otherwise.
M.PNG = "\137PNG\13\10\26\10\0\0\0\13IHDR\0\0\0\1\0\0\0\1\8\6\0\0\0\31\21\196\137\0\0\0\11IDAT" ..
  "x\156c\248\15\4\0\9\251\3\253\251^k+\0\0\0\0IEND\174B`\130"

local RESULTS = "https://files.kie.testing.invalid/"
local TEMP = "https://tempfile.kie.testing.invalid/"
local PENDING = { "waiting", "queuing", "generating" }
local STATES = { waiting = true, queuing = true, generating = true, success = true, fail = true }
local OPS = { create_task = true, get_task = true, credits = true, download_url = true, upload = true,
  download = true, call = true, ["*"] = true }

-- body code -> kind, as src/response.c maps them; RETRY: retryable for idempotent calls
local KIND = { [400] = "invalid", [401] = "auth", [402] = "credits", [404] = "not_found",
  [408] = "server", [422] = "invalid", [429] = "rate_limited", [433] = "key_limit",
  [455] = "maintenance", [500] = "server", [501] = "generation_failed", [505] = "disabled" }
local RETRY = { [408] = true, [429] = true, [455] = true, [500] = true }
local CODE = {}
for code, kind in pairs(KIND) do
  if code ~= 400 and code ~= 408 then CODE[kind] = code end
end
local MSG = { [400] = "Bad request", [401] = "You do not have access permissions",
  [402] = "Credits insufficient", [404] = "Not found", [408] = "Upstream timeout",
  [422] = "Validation error", [429] = "Rate limit exceeded", [433] = "Sub-key usage exceeds its limit",
  [455] = "Service unavailable", [500] = "Internal server error", [501] = "Generation failed",
  [505] = "Feature disabled" }

local function _kind_of(code)
  if KIND[code] then return KIND[code], RETRY[code] or false end
  return "http", code >= 500 and code <= 599
end

local function _pack(...) return { n = select("#", ...), ... } end

-- v as the client would see it after a trip through JSON (numbers, nulls, copies)
local function _wire(v)
  return decode(encode({ v }))[1]
end

-- what a create whose answer was lost becomes (src/response.c: create_outcome)
local function _unknown(e)
  e.cause, e.kind, e.retryable = e.kind, "unknown_outcome", false
  e.message = "create_task: the request may have reached the server (" .. e.message ..
    "); the task may exist and was not resent"
  return e
end

-- The error table the real core returns for scripted fault `f` on core operation `op`.
local function _fault_error(f, op, task_id)
  local create, kind, code, status = op == "create_task", f.kind, f.code, f.status
  if code == nil and CODE[kind] then code = CODE[kind] end
  if op == "download" then status, code = status or code, nil end -- a file host: no envelope
  local e, sent
  if code then -- an API envelope carrying an error code
    local k, retry = _kind_of(code)
    if create then retry = code == 429 or code == 455 end
    e = { kind = k, code = code, status = status or code, retryable = retry,
      message = op .. ": code " .. code .. ": " .. (f.msg or MSG[code] or "error") }
  elseif status or kind == "http" then -- a page without JSON, e.g. a proxy's
    status = status or 502
    local k, retry = _kind_of(status)
    e = { kind = k, status = status, retryable = retry and not create, message = op .. ": HTTP " .. status ..
      (op == "download" and "" or ": non-JSON body: " .. (f.msg or "<html>Bad Gateway</html>")) }
    sent = create and status >= 500
  elseif kind == "network" or kind == "timeout" or kind == "unknown_outcome" then
    local timeout = kind ~= "network"
    sent = timeout or f.sent
    e = { kind = timeout and "timeout" or "network", retryable = true,
      curl_code = timeout and 28 or (sent and 56 or 7), message = op .. ": " .. (timeout and "timed out" or
      "transport failure") .. " (" .. (f.msg or (sent and "fake: no answer" or "fake: cannot connect")) .. ")" }
  elseif kind == "protocol" or kind == "too_large" then
    sent = true
    e = { kind = kind, status = 200, retryable = false, message = op .. ": " .. (f.msg or
      (kind == "protocol" and "unexpected response (HTTP 200): body is not valid JSON" or
      "response body exceeds its cap")) }
  else -- any other kind, returned as scripted
    e = { kind = kind or "server", retryable = false, message = f.msg or (op .. ": scripted fault") }
  end
  e.op, e.task_id, e.retry_after = op, task_id, f.retry_after
  if create and sent then _unknown(e) end
  return e
end

local function _check(v, want, what)
  if type(v) ~= want then error(what .. " must be a " .. want .. ", got " .. type(v), 3) end
end

-- The real core's argument checks, raising at `level` (as seen from here):
-- a string argument takes a number as its text (luaL_checkstring; `opt`: nil is
-- nil, as luaL_optstring) ...
local function _str(v, what, opt, level)
  if type(v) == "string" or (opt and v == nil) then return v end
  if type(v) == "number" then return tostring(v) end
  error(what .. " must be a string, got " .. type(v), level + 1)
end

-- ... a number argument a numeric string (luaL_checknumber) ...
local function _number(v, what, level)
  local n = (type(v) == "number" or type(v) == "string") and tonumber(v) or nil
  if n == nil then error(what .. " must be a number, got " .. type(v), level + 1) end
  return n
end

-- ... and counts, timeouts and caps must be >= 0 (NaN is refused); nil is `default`.
local function _num(v, what, default, level)
  if v == nil then return default end
  local n = _number(v, what, level + 1)
  if not (n >= 0) then error(what .. " must be a number >= 0, got " .. tostring(v), level + 1) end
  return n
end

-- "#fail", "#fail=<code>" and "#stuck" anywhere in the strings of v
local function _markers(v, found, depth)
  if type(v) == "string" then
    found.fail = v:match("#fail=(%d+)") or (v:find("#fail", 1, true) and (found.fail or "500")) or found.fail
    found.stuck = found.stuck or v:find("#stuck", 1, true) ~= nil
  elseif type(v) == "table" and depth < 20 then
    for _, item in pairs(v) do _markers(item, found, depth + 1) end
  end
  return found
end

local function _unbase64(s)
  local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local bits = s:gsub("[^%w+/]", ""):gsub(".", function(c)
    local v, out = B64:find(c, 1, true) - 1, ""
    for i = 5, 0, -1 do out = out .. floor(v / 2 ^ i) % 2 end
    return out
  end)
  bits = bits:sub(1, #bits - #bits % 8)
  return (bits:gsub("%d%d%d%d%d%d%d%d", function(b) return string.char(tonumber(b, 2)) end))
end

local Fake = {}
Fake.__index = Fake

-- the fake server ------------------------------------------------------------------

-- Creates a task from a request body (a decoded table) and its JSON text.
function Fake:_create(req, json)
  self._seq = self._seq + 1
  local model = type(req.model) == "string" and req.model or "model"
  local id = format("task_%s_%d", (model:match("^[^/]*"):lower():gsub("[^%w]", "")), self._seq)
  local outcome, fields = self._outcome, nil
  if type(outcome) == "function" then outcome, fields = outcome(req) end
  local input = type(req.input) == "table" and req.input or {}
  local found = _markers(input, {}, 0)
  if found.stuck then outcome = "stuck" elseif found.fail then outcome, fields = "fail", { failCode = found.fail } end
  if outcome ~= "success" and outcome ~= "fail" and outcome ~= "stuck" then
    error("kie.testing: outcome must be success, fail or stuck, got " .. tostring(outcome), 0)
  end
  local n = tonumber(input.num_images) or 1
  self._tasks[id] = { id = id, model = model, param = json, created = self._t, outcome = outcome,
    fields = fields or {}, n = (n >= 1 and n <= 4) and floor(n) or 1 }
  return id
end

-- The state of `task` now and the virtual time it began.
function Fake:_state(task)
  if task.pinned then return task.pinned, task.since end
  local since = task.created
  for _, s in ipairs(PENDING) do
    local till = since + self._pace[s]
    if self._t < till or (s == "generating" and task.outcome == "stuck") then return s, since end
    since = till
  end
  return task.outcome, since
end

local function _urls(task)
  local urls = {}
  for i = 1, task.n do urls[i] = RESULTS .. task.id .. "_" .. i .. ".png" end
  return urls
end

-- The recordInfo data of `task` now, decoded as kie.core decodes it.
function Fake:_view(task)
  local state, since = self:_state(task)
  local function ms(t) return floor((self._epoch + t) * 1000 + 0.5) end
  local raw = { taskId = task.id, model = task.model, state = state, createTime = ms(task.created),
    updateTime = ms(since) }
  local f = task.fields
  if state == "success" or state == "fail" then
    raw.completeTime, raw.costTime = ms(since), floor((since - task.created) * 1000 + 0.5)
    raw.failCode = state == "fail" and (f.failCode or "500") or ""
    raw.failMsg = state == "fail" and (f.failMsg or MSG[tonumber(raw.failCode)] or "Generation failed") or ""
  end
  local info = _wire(raw)
  info.param = decode(task.param)
  info.resultUrls = {}
  if state == "success" then
    info.resultJson = _wire({ resultUrls = f.resultUrls or _urls(task) })
    info.resultUrls = info.resultJson.resultUrls
  end
  return info
end


-- The bytes served at `url`, or nil (404).
function Fake:_serve(url)
  if self._files[url] then return self._files[url] end
  local id, i = url:match("^" .. RESULTS:gsub("%p", "%%%0") .. "(task_[%w_]+)_(%d+)%.png$")
  local task = id and self._tasks[id]
  if task and not task.fields.resultUrls and self:_state(task) == "success" and tonumber(i) <= task.n then
    return self._image
  end
  return nil
end

-- The next scripted fault for operation `op`, used up.
function Fake:_fault(op)
  for i, f in ipairs(self._faults) do
    if f.op == op or f.op == "*" then
      f.left = f.left - 1
      if f.left <= 0 then remove(self._faults, i) end
      return f.fault
    end
  end
end

-- the fake core's client handle ----------------------------------------------------

local Handle = {}
Handle.__index = Handle
Handle.__name = "kie.testing.Handle"

function Handle:__tostring()
  return "kie.testing fake core (" .. (self._closed and "closed" or "open") .. ")"
end

local function _open(h)
  if h._closed then error("kie.core: the client is closed", 3) end
end

-- Records one request and answers it: a scripted fault, or serve(). Blocking, the
-- clock moves by the latency and the answer is returned; async, a transfer id.
-- `limit`: this request's timeout when it has its own (get_task's shorter one, a
-- download's or an upload's), else the client's. An answer slower than that
-- never comes: the request times out at `limit`, as with the real core.
function Handle:_run(async, op, core_op, rec, serve, limit)
  local fake = self._fake
  rec.op, rec.at, rec.async = op, fake._t, async
  fake._log[#fake._log + 1] = rec
  limit = limit or self._timeout
  local fault = fake:_fault(op)
  local delay, results = fake._latency, nil
  if fault then
    rec.fault = fault
    if fault.kind == "timeout" then delay = limit else delay = fault.delay or delay end
    if fault.kind or fault.code or fault.status then
      if fault.created and op == "create_task" then serve() end -- made, but the answer was lost
      results = _pack(nil, _fault_error(fault, core_op, rec.task_id))
    end
  end
  results = results or _pack(serve())
  if delay > limit then -- the work was done, the answer came too late
    delay = limit
    results = _pack(nil, _fault_error({ kind = "timeout", msg = "fake: the answer was slower than the timeout" },
      core_op, rec.task_id))
  end
  if not async then
    fake._t = fake._t + delay
    return unpack(results, 1, results.n)
  end
  self._next = self._next + 1
  -- a download's file, removed when the transfer ends with its result untaken
  -- (cancel, close), as the real core removes its sink
  local sink = core_op == "download" and rec.path or nil
  self._live[self._next] = { due = fake._t + delay, results = results, sink = sink }
  return self._next
end

local IMPL = {}

-- A request's own timeout argument (nil or 0: the client's): checked like the
-- core does (a number >= 0).
local function _own_timeout(t, what)
  t = _num(t, what .. ": timeout", 0, 4)
  if t > 0 then return t end
  return nil
end

-- A request body as sent: its JSON text and that text decoded; or nil, err as the
-- real core answers a body it cannot encode.
local function _body(op, t)
  local json, err = encode(t)
  if not json then
    return nil, { kind = "validation", retryable = false,
      message = op .. ": the request cannot be encoded as JSON: " .. tostring(err) }
  end
  return json, decode(json)
end

function IMPL.create_task(h, async, req)
  _check(req, "table", "create_task: request")
  local json, body = _body("create_task", req)
  if not json then return nil, body end
  local fake = h._fake
  return h:_run(async, "create_task", "create_task", { method = "POST", body = body,
    url = h._base .. "/api/v1/jobs/createTask" }, function()
    if fake.credits < fake.cost then return nil, _fault_error({ code = 402 }, "create_task") end
    fake.credits = fake.credits - fake.cost
    return { taskId = fake:_create(body, json) }
  end)
end

function IMPL.get_task(h, async, id, timeout)
  id = _str(id, "get_task: task_id", false, 3)
  timeout = _own_timeout(timeout, "get_task")
  if id == "" then
    return nil, { kind = "validation", message = "get_task: task_id is empty", retryable = false, op = "get_task" }
  end
  local fake = h._fake
  return h:_run(async, "get_task", "get_task", { method = "GET", task_id = id,
    url = h._base .. "/api/v1/jobs/recordInfo?taskId=" .. id }, function()
    local task = fake._tasks[id]
    if not task then return nil, _fault_error({ code = 404, msg = "Task not found" }, "get_task", id) end
    return fake:_view(task)
  end, timeout and timeout < h._timeout and timeout or nil)
end

-- An upload's answer: the file is kept and served at its downloadUrl.
local function _stored(fake, bytes, dir, name, mime)
  fake._seq = fake._seq + 1
  name = name or ("upload-" .. fake._seq)
  dir = dir or "kie-lua"
  local url = TEMP .. dir .. "/" .. name
  fake._files[url] = bytes
  return _wire({ fileName = name, filePath = dir .. "/" .. name, downloadUrl = url, fileSize = #bytes,
    mimeType = mime or "application/octet-stream",
    uploadedAt = date("!%Y-%m-%dT%H:%M:%S.000Z", floor(fake._epoch + fake._t)) })
end

-- the endpoints `call` knows: "METHOD /path" -> operation, answer(fake, body)
local ROUTES = {
  ["GET /api/v1/chat/credit"] = { "credits", function(fake) return _wire(fake.credits) end },
  ["POST /api/v1/common/download-url"] = { "download_url", function(fake, body)
    local bytes = type(body) == "table" and type(body.url) == "string" and fake:_serve(body.url)
    if not bytes then
      return nil, _fault_error({ code = 422, msg = "The URL is not a file generated by kie.ai" }, "call")
    end
    fake._seq = fake._seq + 1
    local url = TEMP .. fake._seq .. "/" .. body.url:match("[^/]*$")
    fake._files[url] = bytes
    return url
  end },
  ["POST /api/file-base64-upload"] = { "upload", function(fake, body)
    local mime, data = tostring(body.base64Data):match("^data:([^;]+);base64,(.*)$")
    return _stored(fake, _unbase64(data or ""), body.uploadPath, body.fileName, mime)
  end },
  ["POST /api/file-url-upload"] = { "upload", function(fake, body)
    -- the real host fetches the URL itself; the fake serves what it knows, else its image
    return _stored(fake, fake:_serve(body.fileUrl) or fake._image, body.uploadPath,
      body.fileName or tostring(body.fileUrl):match("[^/]*$"))
  end },
}

local function _under(url, base_url)
  if not base_url then return false end
  local rest = url:sub(#base_url + 1)
  return url:sub(1, #base_url) == base_url and (rest == "" or rest:find("^[/?]") ~= nil)
end

function IMPL.call(h, async, method, path, body)
  if method ~= "GET" and method ~= "POST" then error("call: method must be \"GET\" or \"POST\"", 3) end
  path = _str(path, "call: path", false, 3)
  local url, rel
  if path:sub(1, 1) == "/" then
    url, rel = h._base .. path, path
  elseif _under(path, h._base) then
    url, rel = path, path:sub(#h._base + 1)
  elseif _under(path, h._upload) then
    url, rel = path, path:sub(#h._upload + 1)
  else
    error("call: must be a path or a URL under base_url/upload_url (the API key is never sent "
      .. "to another host)", 3)
  end
  local sent
  if body ~= nil then
    _check(body, "table", "call: body")
    if method == "GET" then error("call: a GET carries no body", 3) end -- it would go out as a POST
    local json
    json, sent = _body("call", body)
    if not json then return nil, sent end
  end
  local route = ROUTES[method .. " " .. rel:gsub("%?.*", "")] or { "call", function()
    return nil, _fault_error({ code = 404 }, "call")
  end }
  local fake = h._fake
  return h:_run(async, route[1], "call", { method = method, url = url, body = sent }, function()
    return route[2](fake, sent or {})
  end)
end

function IMPL.fetch(h, async, url, path, cap, timeout)
  url = _str(url, "fetch: url", false, 3)
  path = _str(path, "fetch: path", false, 3)
  cap = _num(cap, "fetch: max_bytes", nil, 3)
  timeout = _own_timeout(timeout, "fetch")
  if not url:find("^https?://") then error("fetch: url must be an http(s) URL", 3) end
  local f, err = open(path, "wb") -- created (or truncated) at once, as the real core does
  if not f then
    return nil, { kind = "io", retryable = false, message = "download: cannot write " .. tostring(err) }
  end
  f:close()
  local fake = h._fake
  return h:_run(async, "download", "download", { method = "GET", url = url, path = path }, function()
    local bytes = fake:_serve(url)
    if not bytes then return nil, _fault_error({ status = 404 }, "download") end
    if cap and cap > 0 and #bytes > cap then return nil, _fault_error({ kind = "too_large" }, "download") end
    local out = open(path, "wb")
    if not out or not out:write(bytes) then
      if out then out:close() end
      return nil, { kind = "io", retryable = false, op = "download", message = "download: writing the file failed" }
    end
    out:close()
    return true, #bytes
  end, timeout)
end

function IMPL.upload(h, async, path, upload_path, file_name, mime, timeout)
  path = _str(path, "upload: path", false, 3)
  upload_path = _str(upload_path, "upload: upload_path", false, 3)
  file_name = _str(file_name, "upload: file_name", true, 3)
  mime = _str(mime, "upload: mime_type", true, 3)
  timeout = _own_timeout(timeout, "upload")
  local function fail(kind, message)
    return nil, { kind = kind, message = message, retryable = false, op = "upload" }
  end
  if not h._upload then return fail("validation", "upload: the client has no upload_url") end
  local f, err = open(path, "rb")
  if not f then return fail("io", "upload: cannot read " .. tostring(err)) end
  local bytes = f:read("*a") or ""
  f:close()
  local fake = h._fake
  return h:_run(async, "upload", "upload", { method = "POST", url = h._upload .. "/api/file-stream-upload",
    path = path, body = { uploadPath = upload_path, fileName = file_name } }, function()
    return _stored(fake, bytes, upload_path, file_name or path:match("[^/]*$"), mime)
  end, timeout)
end

for name, impl in pairs(IMPL) do
  Handle[name] = function(self, ...) _open(self) return impl(self, false, ...) end
  Handle[name .. "_start"] = function(self, ...) _open(self) return impl(self, true, ...) end
end

-- The ids of the live transfers, oldest first.
local function _ids(h)
  local ids = {}
  for id in pairs(h._live) do ids[#ids + 1] = id end
  sort(ids)
  return ids
end

-- step(timeout_ms, budget_ms) -> in_flight, {done ids} | nil
function Handle:step(ms, budget)
  _open(self)
  ms = _num(ms, "step: timeout_ms", 0, 2)
  _num(budget, "step: budget_ms", nil, 2) -- (the fake's work takes no time)
  local fake, ids = self._fake, _ids(self)
  local now, first = fake._t, nil
  for _, id in ipairs(ids) do
    local x = self._live[id]
    if not x.reported and (not first or x.due < first) then first = x.due end
  end
  if ms > 0 and not self._woken and not (first and first <= now) then
    fake._t = (first and first < now + ms / 1000) and first or now + ms / 1000
  end
  self._woken = nil
  local done, running = nil, 0
  for _, id in ipairs(ids) do
    local x = self._live[id]
    if x.due > fake._t then
      running = running + 1
    elseif not x.reported then
      x.reported = true
      done = done or {}
      done[#done + 1] = id
    end
  end
  return running, done
end

function Handle:result(id)
  _open(self)
  id = _number(id, "result: id", 2)
  local x = self._live[id]
  if not x then error("result: no such transfer (finished, canceled or unknown)", 2) end
  if x.due > self._fake._t then error("result: transfer has not finished (see step)", 2) end
  self._live[id] = nil
  return unpack(x.results, 1, x.results.n)
end

function Handle:progress(id, wait_ms)
  _open(self)
  id = _number(id, "progress: id", 2)
  wait_ms = _num(wait_ms, "progress: wait_ms", 0, 2)
  local x, fake = self._live[id], self._fake
  if not x then return nil end
  if wait_ms and wait_ms > 0 and x.due > fake._t then
    local till = fake._t + wait_ms / 1000
    fake._t = x.due < till and x.due or till
  end
  if x.due > fake._t then return false, 0, nil end
  local n = x.results[1] and tonumber(x.results[2]) or 0
  return true, n, n
end

function Handle:cancel(id)
  _open(self)
  id = _number(id, "cancel: id", 2)
  local x = self._live[id]
  self._live[id] = nil
  if x and x.sink then os.remove(x.sink) end
  return x ~= nil
end

function Handle:pending()
  _open(self)
  return #_ids(self)
end

function Handle:poll_timeout()
  _open(self)
  local first
  for _, x in pairs(self._live) do
    if not x.reported and (not first or x.due < first) then first = x.due end
  end
  if not next(self._live) then return nil end
  if not first then return 1000 end -- as the real core: transfers, no timer
  local d = ceil((first - self._fake._t) * 1000)
  return d > 0 and d or 0
end

function Handle:wakeup()
  _open(self)
  self._woken = true
end

function Handle:close()
  for _, x in pairs(self._live or {}) do
    if x.sink then os.remove(x.sink) end
  end
  self._closed, self._live = true, {}
end

-- the public API -------------------------------------------------------------------

local OPTIONS = { pace = "table", outcome = "string", latency = "number", credits = "number",
  cost = "number", epoch = "number", image = "string" }

-- core.new's options as the real core checks them: "string" (non-empty, one
-- line), "seconds" (0 < s <= 86400), "bytes" (a whole number from 1 to 2^53).
local CORE_NEW = { api_key = "string", base_url = "string", upload_url = "string",
  ca_file = "string", ca_path = "string", proxy = "string", user_agent = "string",
  timeout = "seconds", connect_timeout = "seconds", max_response_bytes = "bytes" }

local function _check_new(o)
  if type(o) ~= "table" then error("kie.core.new: opts must be a table, got " .. type(o), 3) end
  for k in pairs(o) do
    if not CORE_NEW[k] then error("kie.core.new: unknown option '" .. tostring(k) .. "'", 3) end
  end
  if o.api_key == nil then error("kie.core.new: option 'api_key' is required", 3) end
  for k, v in pairs(o) do
    local want = CORE_NEW[k]
    if want == "string" then
      if type(v) ~= "string" then error("kie.core.new: option '" .. k .. "' must be a string", 3) end
      if v == "" or v:find("\0", 1, true) or v:find("[\r\n]") then
        error("kie.core.new: option '" .. k .. "' must be a non-empty single-line string", 3)
      end
    elseif type(v) ~= "number" or not (v > 0) or (want == "seconds" and v > 86400)
      or (want == "bytes" and (v > 2 ^ 53 or v % 1 ~= 0)) then
      error("kie.core.new: option '" .. k .. "' must be " .. (want == "seconds"
        and "a positive number of seconds up to 86400" or "a whole number from 1 to 2^53"), 3)
    end
  end
end

--- Makes a fake kie.ai with its own virtual clock (starting at 0). Every option is
-- optional:
--
-- * `pace`: virtual seconds a task spends in each pending state (default 3), or a
--   table `{waiting =, queuing =, generating =}`
-- * `outcome`: how new tasks end: `"success"` (default), `"fail"`, `"stuck"` (never
--   ends), or `function(request) -> outcome[, fields]` (`fields` as for `set_state`)
-- * `latency`: virtual seconds every request takes (default 0)
-- * `credits` (default 100), `cost` (credits per created task, default 0)
-- * `epoch`: the Unix time (seconds) at virtual time 0, for `createTime` and the
--   like (default 1700000000)
-- * `image`: the bytes result URLs serve (default `PNG`)
--
-- Unknown options and wrong types raise.
-- @tparam[opt] table opts
-- @treturn Fake
function M.new(opts)
  if opts ~= nil then _check(opts, "table", "kie.testing.new: opts") end
  opts = opts or {}
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then error("kie.testing.new: unknown option '" .. tostring(k) .. "'", 2) end
    if type(v) ~= want and not (k == "pace" and type(v) == "number")
      and not (k == "outcome" and type(v) == "function") then
      error("kie.testing.new: option '" .. k .. "' must be a " .. want .. ", got " .. type(v), 2)
    end
  end
  local pace = opts.pace or 3
  if type(pace) == "number" then pace = { waiting = pace, queuing = pace, generating = pace } end
  for _, s in ipairs(PENDING) do
    if type(pace[s]) ~= "number" or pace[s] < 0 then error("kie.testing.new: pace." .. s .. " must be >= 0", 2) end
  end
  local self = setmetatable({ credits = opts.credits or 100, cost = opts.cost or 0, _t = 0,
    _epoch = opts.epoch or 1700000000, _pace = pace, _outcome = opts.outcome or "success",
    _latency = opts.latency or 0, _image = opts.image or M.PNG, _seq = 0, _tasks = {}, _files = {},
    _faults = {}, _log = {} }, Fake)
  local core = {}
  for k, v in pairs(base) do core[k] = v end
  function core.new(o)
    _check_new(o)
    local function trim(u) return u and (u:gsub("/+$", "")) end
    return setmetatable({ _fake = self, _base = trim(o.base_url or "https://api.kie.ai"),
      _upload = trim(o.upload_url), _timeout = o.timeout or 30, _live = {}, _next = 0 }, Handle)
  end
  function core.now() return self._t end
  function core.sleep(s)
    if type(s) ~= "number" then error("sleep: seconds must be a number", 2) end
    if s > 0 then self._t = self._t + s end
  end
  self.core = core
  return self
end

--- A fake kie.ai: made by `new`.
-- @type Fake

--- A real `kie.new` client over this fake: `opts` are `kie.new`'s, with
-- `api_key` defaulting to a dummy key, `random` to a constant 0.5 (jitter at the
-- middle of its band, the same every run) and `core` always the fake's.
-- @tparam[opt] table opts
-- @treturn kie.Client
function Fake:client(opts)
  local o = { api_key = "kie-testing-key", random = function() return 0.5 end }
  for k, v in pairs(opts or {}) do o[k] = v end
  o.core = self.core
  return kie.new(o)
end

--- The virtual clock, in seconds (what the clients' `now` returns).
function Fake:now()
  return self._t
end

--- Moves the virtual clock on by `seconds`; returns the new time.
-- @tparam number seconds
function Fake:advance(seconds)
  if type(seconds) ~= "number" or seconds < 0 then error("advance: seconds must be a number >= 0", 2) end
  self._t = self._t + seconds
  return self._t
end

--- The requests the fake received, oldest first: all of them, or those of
-- operation `op`. Each is `{op =, method =, url =, body = (the decoded JSON sent,
-- if any), task_id =, path = (local file of an upload or download), at = (virtual
-- time), async = (started without blocking), fault = (the scripted fault that
-- answered it, if any)}`. A request a fault stopped before the server (a refused
-- connection) is listed too, with its `fault`.
-- @tparam[opt] string op
-- @treturn table a list (a new one each call)
function Fake:requests(op)
  local out = {}
  for _, r in ipairs(self._log) do
    if op == nil or r.op == op then out[#out + 1] = r end
  end
  return out
end

--- Answers the next `times` (default 1) requests of operation `op` (or `"*"`: any)
-- with a fault instead; faults are used in the order they were scripted. `fault`:
--
-- * `{code = 429, msg =, status =}`: the API's envelope with that code (`status`,
--   the HTTP status, defaults to the code; 200 is what kie.ai sometimes sends)
-- * `{kind = "rate_limited"}`, or any kind of `kie.errors` with a code (`auth` 401,
--   `credits` 402, `not_found` 404, `invalid` 422, `key_limit` 433, `maintenance`
--   455, `server` 500, `generation_failed` 501, `disabled` 505): that code
-- * `{kind = "http", status = 502}` (or just `status`): a page without JSON
-- * `{kind = "network"}`: the connection failed, nothing was sent; `sent = true`:
--   it broke after sending (a create then gets `unknown_outcome`)
-- * `{kind = "timeout"}`: no answer within the request's timeout: the client's
--   `timeout`, a read's shorter one (`wait` cuts each poll's to the time left), a
--   download's or upload's own (the clock moves by it); a create gets `unknown_outcome`
-- * `{kind = "protocol"}`, `{kind = "too_large"}`: an answer that cannot be read
-- * any other kind (`io`, `validation`, ...): an error of that kind, as is
--
-- Every fault may add `retry_after` (seconds, the Retry-After header), `delay`
-- (virtual seconds before the answer; alone, a slow success; longer than the
-- request's timeout, a `timeout` at that time) and, for a create,
-- `created = true` (the task was made although its answer was lost).
-- @tparam string op
-- @tparam table fault
-- @tparam[opt=1] number times
function Fake:fail_next(op, fault, times)
  if not OPS[op] then error("fail_next: unknown operation '" .. tostring(op) .. "'", 2) end
  _check(fault, "table", "fail_next: fault")
  if fault.kind ~= nil and not kie.errors.kinds[fault.kind] then
    error("fail_next: unknown error kind '" .. tostring(fault.kind) .. "'", 2)
  end
  times = times or 1
  if type(times) ~= "number" or times < 1 then error("fail_next: times must be a number >= 1", 2) end
  self._faults[#self._faults + 1] = { op = op, fault = fault, left = times }
end

--- The task as `client:get_task` would return it now (no request is recorded),
-- or nil for an unknown id.
-- @tparam string id
function Fake:task(id)
  local task = self._tasks[id]
  return task and self:_view(task)
end

--- Makes a task as if a create had just been received (no request is recorded,
-- no credits are taken), e.g. one a previous run created. Returns its id.
-- @tparam table request `{model =, input =, callBackUrl =}`
-- @treturn string the taskId
function Fake:add_task(request)
  _check(request, "table", "add_task: request")
  local json = assert(encode(request))
  return self:_create(decode(json), json)
end

--- Puts task `id` in `state` now and keeps it there: a pending state holds the
-- task until changed again; `success` and `fail` end it. `fields`: `failCode`,
-- `failMsg` (strings, for `fail`), `resultUrls` (a list, for `success`; each
-- serves `image`).
-- @tparam string id
-- @tparam string state `waiting`, `queuing`, `generating`, `success` or `fail`
-- @tparam[opt] table fields
function Fake:set_state(id, state, fields)
  local task = self._tasks[id]
  if not task then error("kie.testing: no task '" .. tostring(id) .. "'", 2) end
  if not STATES[state] then error("kie.testing: unknown state '" .. tostring(state) .. "'", 2) end
  task.pinned, task.since = state, self._t
  for k, v in pairs(fields or {}) do task.fields[k] = v end
  for _, url in ipairs(fields and fields.resultUrls or {}) do self._files[url] = self._image end
end

--- Ends task `id` now: `set_state(id, state, fields)` with `state` `success`
-- (the default) or `fail`.
-- @tparam string id
-- @tparam[opt="success"] string state
-- @tparam[opt] table fields
function Fake:finish(id, state, fields)
  state = state or "success"
  if state ~= "success" and state ~= "fail" then error("finish: state must be success or fail", 2) end
  return self:set_state(id, state, fields)
end

--- Serves `bytes` at `url` to downloads (nil stops serving it).
-- @tparam string url
-- @tparam ?string bytes
function Fake:file(url, bytes)
  self._files[url] = bytes
end

return M
