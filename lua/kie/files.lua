--- Files: uploads to kie.ai's File Upload API, `kie.file` (local files in `run`),
-- and download progress.
--
-- The File Upload API lives on its own host (`upload_url`, default
-- https://kieai.redpandaai.co) with its own envelope `{success, code, msg, data}`.
-- Three ways in, chosen by what `Client:upload` is given:
--
--  * a path: checked locally (exists, at most `max_bytes`, JPEG/PNG/WebP by its
--    magic bytes) before anything is sent, then streamed from disk as
--    `multipart/form-data` (`/api/file-stream-upload`);
--  * `{data = bytes, file_name = ...}`: small data (at most 10 MiB), same checks,
--    sent as a Base64 data URL (`/api/file-base64-upload`);
--  * `{url = ...}`: the upload host fetches the URL itself (`/api/file-url-upload`).
--
-- Uploads are idempotent (at worst a second copy of a temporary file), so they
-- are retried like reads. Uploaded files are temporary (kie.ai keeps them for
-- 1 to 3 days).
--
-- Download progress: `Client:download(url, path, {progress = fn})` calls
-- `fn(bytes_so_far, total_or_nil)` whenever the byte count changed, always from
-- Lua between transfer steps (never from inside libcurl), and once at the end
-- with the final size. Blocking, the download is driven by the C core's
-- `progress(id, wait_ms)`; inside `kie.spawn`, the client's `step` reports it.
-- @module kie.files

local errors = require "kie.errors"
local lifecycle = require "kie.lifecycle"
local models = require "kie.models"

local type, tostring, pairs, ipairs, pcall, error = type, tostring, pairs, ipairs, pcall, error
local setmetatable, getmetatable = setmetatable, getmetatable
local open = io.open
local byte, find, format, sub = string.byte, string.find, string.format,
  string.sub
local floor, concat = math.floor, table.concat

local M = {}

--- Default `uploadPath` (folder on the upload host).
M.UPLOAD_PATH = "kie-lua"
--- Default size limit of a path upload (100 MiB, kie.ai's recommended maximum).
M.MAX_STREAM_BYTES = 100 * 1024 * 1024
--- Default size limit of a `{data = ...}` upload (10 MiB; Base64 adds a third).
M.MAX_BASE64_BYTES = 10 * 1024 * 1024

local MIB = 1024 * 1024

local UPLOAD_OPTIONS = { upload_path = "string", file_name = "string", max_bytes = "number",
  timeout = "number" }

--- Raises (at `level`) unless `opts` is nil or a table of `upload`'s options
-- with the right types; `what` names the call ("upload", "run: upload").
-- @local
function M.check_options(opts, what, level)
  if opts == nil then return end
  if type(opts) ~= "table" then error(what .. ": opts must be a table, got " .. type(opts), level) end
  for k, v in pairs(opts) do
    local want = UPLOAD_OPTIONS[k]
    if not want then error(what .. ": unknown option '" .. tostring(k) .. "'", level) end
    if type(v) ~= want then error(what .. ": option '" .. k .. "' must be a " .. want, level) end
  end
end

-- input fields that hold image URLs: "one" a string, "list" an array of strings
local IMAGE_FIELDS = {
  image_url = "one", mask_url = "one", reference_mask_urls = "one",
  reference_image_urls = "list", image_urls = "list",
}
local IMAGE_FIELD_ORDER = { "image_url", "mask_url", "reference_image_urls", "image_urls",
  "reference_mask_urls" }

--- The MIME type of image bytes by their magic number: `"image/jpeg"`,
-- `"image/png"`, `"image/webp"`, or nil for anything else.
-- @tparam string bytes at least the first 12 bytes
-- @treturn ?string
function M.sniff(bytes)
  if sub(bytes, 1, 8) == "\137PNG\r\n\26\n" then return "image/png" end
  if sub(bytes, 1, 3) == "\255\216\255" then return "image/jpeg" end
  if sub(bytes, 1, 4) == "RIFF" and sub(bytes, 9, 12) == "WEBP" then return "image/webp" end
  return nil
end

--- True when `s` is an http(s) URL (by its scheme; `kie.models` checks the rest).
-- @tparam string s
function M.is_url(s)
  return type(s) == "string" and find(s, "^[hH][tT][tT][pP][sS]?://") ~= nil
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Pure Lua Base64 (only used with an injected core that has no base64_encode).
local function _b64_lua(s)
  local out, n = {}, #s
  for i = 1, n, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local d1, d2 = floor(v / 262144) % 64, floor(v / 4096) % 64
    local d3, d4 = floor(v / 64) % 64, v % 64
    out[#out + 1] = sub(B64, d1 + 1, d1 + 1) .. sub(B64, d2 + 1, d2 + 1) ..
      (b and sub(B64, d3 + 1, d3 + 1) or "=") .. (c and sub(B64, d4 + 1, d4 + 1) or "=")
  end
  return concat(out)
end
M._b64_lua = _b64_lua

local function _fail(kind, message, fields)
  local f = { op = "upload" }
  for k, v in pairs(fields or {}) do f[k] = v end
  return nil, errors.new(kind, message, f)
end

local function _size_text(n)
  if n >= MIB then return format("%.1f MiB", n / MIB) end
  if n >= 1024 then return format("%.1f KiB", n / 1024) end
  return format("%d bytes", n)
end
M.size_text = _size_text

local function _type_problem(what, head)
  local shown = head:sub(1, 8):gsub("[^%w%p ]", "."):gsub("%%", "%%%%")
  return _fail("validation", "upload: " .. what .. " is not a JPEG, PNG or WebP image" ..
    (head == "" and " (it is empty)" or " (it starts with \"" .. shown .. "\")"))
end

-- Checks a local file before it is sent: returns size, mime or nil, err.
local function _inspect(path, max)
  local f, oerr = open(path, "rb")
  if not f then return _fail("io", "upload: cannot open " .. tostring(oerr), { path = path }) end
  local head, rerr = f:read(16)
  if head == nil and rerr then
    f:close()
    return _fail("io", "upload: cannot read " .. path .. ": " .. tostring(rerr), { path = path })
  end
  local size, serr = f:seek("end")
  f:close()
  if not size then
    return _fail("io", "upload: cannot size " .. path .. ": " .. tostring(serr), { path = path })
  end
  if size > max then
    return _fail("validation", format("upload: %s is %s, more than the limit of %s (max_bytes)",
      path, _size_text(size), _size_text(max)), { path = path, size = size })
  end
  local mime = M.sniff(head or "")
  if not mime then return _type_problem(path, head or "") end
  return size, mime
end

-- uploadPath: a folder without leading/trailing slashes, no "." or ".." segments.
local function _upload_path(p)
  p = (p or M.UPLOAD_PATH):gsub("^/+", ""):gsub("/+$", "")
  if p == "" or find(p, "[%c\\]") then
    return _fail("validation", "upload: upload_path must be a folder path like \"refs/2025\"")
  end
  for seg in p:gmatch("[^/]+") do
    if seg == "." or seg == ".." then
      return _fail("validation", "upload: upload_path must not contain . or .. segments")
    end
  end
  return p
end

local function _file_name(name)
  if name == nil then return true end
  if type(name) ~= "string" or name == "" or find(name, "[/\\%c]") then
    return _fail("validation", "upload: file_name must be a plain file name (with its extension)")
  end
  return true
end

-- Turns an error of the generic `call` into an upload error.
local function _as_upload(err)
  err = errors.wrap(err)
  if type(err) == "table" then
    if err.op == "call" or err.op == nil then err.op = "upload" end
    if type(err.message) == "string" then err.message = err.message:gsub("^call:", "upload:") end
  end
  return err
end

--- Uploads a file (see the module text); used as `client:upload(src, opts)`.
-- @tparam kie.Client self
-- @tparam string|table src a local path, `{data = bytes, file_name = ...}` or `{url = ...}`
-- @tparam[opt] table opts `upload_path` (default "kie-lua"), `file_name`,
-- `max_bytes` (100 MiB for a path, 10 MiB for data), `timeout` (seconds for the
-- stream upload; default the client's timeout plus one second per MiB)
-- @treturn table the upload's `data`: `downloadUrl`, `fileName`, `filePath`,
-- `fileSize`, `mimeType`, `uploadedAt`; or `nil, err`
function M.upload(self, src, opts)
  M.check_options(opts, "upload", 4)
  opts = opts or {}
  local upload_path, perr = _upload_path(opts.upload_path)
  if not upload_path then return nil, perr end
  local base = self._opts.upload_url
  local res, err, what
  if type(src) == "string" then
    local ok, nerr = _file_name(opts.file_name)
    if not ok then return nil, nerr end
    local size, mime = _inspect(src, opts.max_bytes or M.MAX_STREAM_BYTES)
    if not size then return nil, mime end
    local timeout = opts.timeout or (self._opts.timeout + size / MIB)
    what = src
    res, err = self:_read("upload", nil, "upload", src, upload_path, opts.file_name, mime, timeout)
  elseif type(src) == "table" then
    local name = opts.file_name or src.file_name
    local ok, nerr = _file_name(name)
    if not ok then return nil, nerr end
    if src.data ~= nil then
      if type(src.data) ~= "string" then error("upload: data must be a string of bytes", 3) end
      local max = opts.max_bytes or M.MAX_BASE64_BYTES
      if #src.data > max then
        return _fail("validation", format("upload: data is %s, more than the limit of %s for a " ..
          "Base64 upload (write it to a file and upload the path)", _size_text(#src.data),
          _size_text(max)), { size = #src.data })
      end
      local mime = M.sniff(src.data)
      if not mime then return _type_problem("data", src.data) end
      local b64 = self._mod.base64_encode or _b64_lua
      what = name or "data"
      res, err = self:_read("upload", nil, "call", "POST", base .. "/api/file-base64-upload", {
        base64Data = "data:" .. mime .. ";base64," .. b64(src.data),
        uploadPath = upload_path, fileName = name,
      })
    elseif src.url ~= nil then
      if type(src.url) ~= "string" then error("upload: url must be a string", 3) end
      if not M.is_url(src.url) then
        return _fail("validation", "upload: url must be an http(s) URL, got " .. format("%q", src.url))
      end
      what = src.url
      res, err = self:_read("upload", nil, "call", "POST", base .. "/api/file-url-upload", {
        fileUrl = src.url, uploadPath = upload_path, fileName = name,
      })
    else
      error("upload: the table must have data or url", 3)
    end
  else
    error("upload: source must be a path or a table, got " .. type(src), 3)
  end
  if res == nil then
    err = _as_upload(err)
    self:_log("error", "upload failed: " .. tostring(err.kind), { op = "upload", kind = err.kind,
      message = err.message })
    return nil, err
  end
  if type(res) ~= "table" or type(res.downloadUrl) ~= "string" or not M.is_url(res.downloadUrl) then
    return _fail("protocol", "upload: the response data has no downloadUrl")
  end
  self:_log("info", "uploaded", { op = "upload", file = what, url = res.downloadUrl })
  return res
end

--- A file name (without extension) for server text such as a task id, that
-- cannot leave its directory: `s` itself when it is a plain name (letters,
-- digits, `_`, `-`; at most 128 bytes), else `"task-"` and a digest of it.
-- Server text never chooses a path as is: name files `safe_name(info.taskId)`.
-- @param s a task id (any value)
-- @treturn string
function M.safe_name(s)
  s = tostring(s)
  if #s <= 128 and find(s, "^[%w_%-]+$") then return s end
  local h1, h2 = 5381, 52711
  for i = 1, #s do
    local b = byte(s, i)
    h1 = (h1 * 33 + b) % 4294967291
    h2 = (h2 * 131 + b) % 4294967279
  end
  return format("task-%08x%08x", h1, h2)
end

-- kie.file ---------------------------------------------------------------------

-- metatable of the markers made by `file`
local FILE = { __name = "kie.file" }
FILE.__index = FILE
function FILE.__tostring(f)
  if f.path then return "kie.file(" .. format("%q", f.path) .. ")" end
  return "kie.file{" .. #f.data .. " bytes" .. (f.file_name and (", " .. format("%q", f.file_name)) or "") .. "}"
end

--- Marks a local file for `run`: `kie.file(path)` or `kie.file{data = bytes,
-- file_name = ...}`, put in an image field of `input` (`image_url`, `mask_url`,
-- `reference_image_urls[i]`, `image_urls[i]`, `reference_mask_urls`). `run`
-- uploads it (see `upload`) and sends its `downloadUrl`. A plain string is never
-- read as a path: only a value made by this function makes the library read a
-- file. Raises on wrong arguments.
-- @tparam string|table src a path, or `{data = bytes, file_name = ...}`
-- @treturn table the marker
function M.file(src)
  if type(src) == "string" then
    if src == "" then error("kie.file: the path is empty", 2) end
    return setmetatable({ path = src }, FILE)
  end
  if type(src) ~= "table" then
    error("kie.file: expects a path or {data = bytes, file_name = ...}, got " .. type(src), 2)
  end
  for k in pairs(src) do
    if k ~= "data" and k ~= "file_name" then
      error("kie.file: unknown field '" .. tostring(k) .. "' (data, file_name)", 2)
    end
  end
  if type(src.data) ~= "string" then error("kie.file: data must be a string of bytes", 2) end
  if src.file_name ~= nil and type(src.file_name) ~= "string" then
    error("kie.file: file_name must be a string", 2)
  end
  return setmetatable({ data = src.data, file_name = src.file_name }, FILE)
end

--- True when `v` was made by `kie.file`.
function M.is_file(v)
  return getmetatable(v) == FILE
end

-- The image values of `input` in order: a list of `{field = "name" or
-- "name[i]", name =, i =, value =}`.
local function _image_values(input)
  local out = {}
  for _, name in ipairs(IMAGE_FIELD_ORDER) do
    local v = input[name]
    if IMAGE_FIELDS[name] == "one" then
      if v ~= nil then out[#out + 1] = { field = name, name = name, value = v } end
    elseif type(v) == "table" and not M.is_file(v) then
      for i = 1, #v do out[#out + 1] = { field = name .. "[" .. i .. "]", name = name, i = i, value = v[i] } end
    elseif v ~= nil then
      out[#out + 1] = { field = name, name = name, value = v }
    end
  end
  return out
end

-- A copy of `request` whose image values listed in `todo` are `url_of(entry)`
-- (the caller's tables are never changed).
local function _replaced(request, todo, url_of)
  local input = request.input
  local inp, copied = {}, {}
  for k, v in pairs(input) do inp[k] = v end
  for _, e in ipairs(todo) do
    local url = url_of(e)
    if e.i then
      if not copied[e.name] then
        local list = {}
        for j = 1, #input[e.name] do list[j] = input[e.name][j] end
        inp[e.name], copied[e.name] = list, true
      end
      inp[e.name][e.i] = url
    else
      inp[e.name] = url
    end
  end
  local req = {}
  for k, v in pairs(request) do req[k] = v end
  req.input = setmetatable(inp, getmetatable(input))
  return req
end

local PLACEHOLDER = "https://kie-file.invalid/placeholder.png"

--- The `run` pre-step: a copy of `request` in which every `kie.file` in an image
-- field of `input` is uploaded and replaced by its `downloadUrl` (the same path,
-- or the same marker, once). A plain string there that is not an http(s) URL
-- is a validation error naming `kie.file`, found before anything is uploaded:
-- a string (from a web request, say) never makes the library read a file. With
-- `strict` (a boolean), a request that would fail validation (`kie.models`)
-- uploads nothing. The caller's tables are never changed.
-- @tparam kie.Client self
-- @tparam table request a createTask request
-- @tparam[opt] table upload_opts options for `upload`
-- @tparam[opt] boolean strict validate the request (with the files in place) first
-- @treturn table the request to send, or `nil, err`
function M.resolve_local(self, request, upload_opts, strict)
  local input = request.input
  if type(input) ~= "table" then return request end
  local values, todo = _image_values(input), {}
  for _, e in ipairs(values) do
    local v = e.value
    if M.is_file(v) then
      todo[#todo + 1] = e
    elseif type(v) == "string" and v ~= "" and not M.is_url(v) then
      local shown = #v > 200 and (sub(v, 1, 200) .. "...") or v
      return nil, errors.new("validation", "run: input." .. e.field .. " = " .. format("%q", shown) ..
        " is not an http(s) URL; a local file must be given as kie.file(path) (plain strings " ..
        "are never read as paths)", { op = "run", field = "input." .. e.field })
    end
  end
  if #todo == 0 then return request end
  if strict == true or strict == false then
    local ok, verr = models.check(_replaced(request, todo, function() return PLACEHOLDER end), strict)
    if not ok then return nil, verr end
  end

  local urls = {}
  for _, e in ipairs(todo) do
    local f = e.value
    local key = f.path or f
    if not urls[key] then
      local res, err = M.upload(self, f.path or { data = f.data, file_name = f.file_name }, upload_opts)
      if not res then
        err.message = "run: uploading input." .. e.field .. ": " .. tostring(err.message)
        err.field = "input." .. e.field
        return nil, err
      end
      urls[key] = res.downloadUrl
    end
  end
  return _replaced(request, todo, function(e) return urls[e.value.path or e.value] end)
end

-- progress ---------------------------------------------------------------------

--- A progress reporter around `fn(bytes, total_or_nil)`: `update(n, total)` calls
-- fn when the values changed; `finish(n, total)` makes the last call, with the
-- final size as total when none was announced.
-- @tparam function fn
-- @treturn table
-- @local
function M.reporter(fn)
  local last_n, last_total
  local r = {}
  function r.update(n, total)
    if n == last_n and total == last_total then return end
    last_n, last_total = n, total
    fn(n, total)
  end
  function r.finish(n, total)
    r.update(n, total or n)
  end
  return r
end

--- Called by `Client:step` after the core stepped: reports the byte counts of
-- the transfers being watched. Errors raised by the callbacks are added to
-- `raised`.
-- @tparam kie.Client self
-- @tparam table raised
-- @local
function M.watch(self, raised)
  local w = self._watch
  if not w then return end
  local core = self._core
  for id, rep in pairs(w) do
    local done, n, total = core:progress(id)
    if done == nil then
      w[id] = nil
    else
      local ok, err = pcall(rep.update, n, total)
      if not ok then raised[#raised + 1] = err end
    end
  end
end

--- Runs core method `name` (a transfer) reporting its progress to `rep` (a
-- `reporter`); without `rep`, or when `_io` was replaced (an adapter such as
-- `kie.ngx`) or the core has no `progress`, it is `self:_io(name, ...)`.
-- @tparam kie.Client self
-- @tparam function plain_io `kie.Client._io`
-- @tparam ?table rep
-- @tparam string name
-- @param ... the method's arguments
-- @local
function M.io(self, plain_io, rep, name, ...)
  local core = self._core
  if not rep or self._io ~= plain_io or type(core.progress) ~= "function" then
    return self:_io(name, ...)
  end
  local t = lifecycle.current()
  if t then
    local id, err = lifecycle.send(self, t, name, ...)
    if type(id) ~= "number" then return id, err end
    local w = self._watch or {}
    self._watch = w
    w[id] = rep
    local function done(...)
      w[id] = nil
      return ...
    end
    return done(lifecycle.await(self, t, id))
  end
  local id, err = core[name .. "_start"](core, ...)
  if type(id) ~= "number" then return id, err end
  -- blocking: drive this transfer (and the others of the client, without
  -- handing out their results) until it ends, reporting in between
  local ok, raised = pcall(function()
    while true do
      local finished, n, total = core:progress(id, 100)
      if finished == nil then return end
      rep.update(n, total)
      if finished then return end
    end
  end)
  if not ok then
    core:cancel(id)
    error(raised, 0)
  end
  return core:result(id)
end

return M
