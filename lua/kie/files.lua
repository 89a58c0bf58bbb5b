--- Files: uploads to kie.ai's File Upload API, local image paths in `run`, and
-- download progress.
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

local type, tostring, pairs, ipairs, pcall, error = type, tostring, pairs, ipairs, pcall, error
local setmetatable, getmetatable = setmetatable, getmetatable
local open = io.open
local byte, find, match, format, sub = string.byte, string.find, string.match, string.format,
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
  if opts ~= nil and type(opts) ~= "table" then
    error("upload: opts must be a table, got " .. type(opts), 3)
  end
  opts = opts or {}
  for k, v in pairs(opts) do
    local want = UPLOAD_OPTIONS[k]
    if not want then error("upload: unknown option '" .. tostring(k) .. "'", 3) end
    if type(v) ~= want then error("upload: option '" .. k .. "' must be a " .. want, 3) end
  end
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

local function _exists(path)
  local f = open(path, "rb")
  if f then f:close() return true end
  return false
end

--- The `run` pre-step: a copy of `request` in which every image field of
-- `input` (`image_url`, `mask_url`, `reference_image_urls[i]`, `image_urls[i]`,
-- `reference_mask_urls`) that is not an http(s) URL but names an existing local
-- file (a path, or `file:///abs/path`) is uploaded and replaced by its
-- `downloadUrl`. The same path is uploaded once. The caller's tables are never
-- changed. A value that is neither a URL nor an existing file is a validation
-- error.
-- @tparam kie.Client self
-- @tparam table request a createTask request
-- @tparam[opt] table upload_opts options for `upload`
-- @treturn table the request to send, or `nil, err`
function M.resolve_local(self, request, upload_opts)
  local input = request.input
  if type(input) ~= "table" then return request end
  local new_input, cache = nil, {}

  local function resolve(v, field)
    if type(v) ~= "string" or v == "" or M.is_url(v) then return v end
    local path = match(v, "^file://(/.+)$")
    if not path then
      if find(v, "^%a[%w+.%-]*://") then return v end -- other schemes: kie.models says why
      path = v
    end
    if not _exists(path) then
      return nil, errors.new("validation", "run: input." .. field .. " = " .. format("%q", v) ..
        " is neither an http(s) URL nor an existing local file", { op = "run", field = "input." .. field })
    end
    if not cache[path] then
      local res, err = M.upload(self, path, upload_opts)
      if not res then
        err.message = "run: uploading input." .. field .. ": " .. tostring(err.message)
        err.field = "input." .. field
        return nil, err
      end
      cache[path] = res.downloadUrl
    end
    return cache[path]
  end

  for _, name in ipairs(IMAGE_FIELD_ORDER) do
    local v = input[name]
    if IMAGE_FIELDS[name] == "one" then
      local r, err = resolve(v, name)
      if r == nil and err then return nil, err end
      if r ~= v then
        new_input = new_input or {}
        new_input[name] = r
      end
    elseif type(v) == "table" then
      local list
      for i = 1, #v do
        local r, err = resolve(v[i], name .. "[" .. i .. "]")
        if r == nil and err then return nil, err end
        if r ~= v[i] then
          if not list then
            list = {}
            for j = 1, #v do list[j] = v[j] end
          end
          list[i] = r
        end
      end
      if list then
        new_input = new_input or {}
        new_input[name] = list
      end
    end
  end
  if not new_input then return request end
  local inp = {}
  for k, v in pairs(input) do inp[k] = v end
  for k, v in pairs(new_input) do inp[k] = v end
  local req = {}
  for k, v in pairs(request) do req[k] = v end
  req.input = setmetatable(inp, getmetatable(input))
  return req
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
