-- The file upload endpoints (kie-api.md section 11):
--   POST /api/file-stream-upload  multipart/form-data: file, uploadPath, fileName?
--   POST /api/file-base64-upload  JSON: base64Data (pure or data URL), uploadPath, fileName?
--   POST /api/file-url-upload     JSON: fileUrl (only URLs of this mock), uploadPath, fileName?

local store = require "store"
local files = require "files"
local respond = require "respond"

local M = {}

local EXT = {
  ["image/png"] = "png", ["image/jpeg"] = "jpg", ["image/webp"] = "webp",
  ["image/gif"] = "gif", ["application/pdf"] = "pdf", ["application/octet-stream"] = "bin",
  ["text/plain"] = "txt",
}
local BY_EXT = {
  png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", webp = "image/webp",
  gif = "image/gif", pdf = "application/pdf", txt = "text/plain",
}

function M.sniff(bytes, name)
  if bytes:sub(1, 8) == "\137PNG\r\n\26\n" then return "image/png" end
  if bytes:sub(1, 3) == "\255\216\255" then return "image/jpeg" end
  if bytes:sub(1, 4) == "RIFF" and bytes:sub(9, 12) == "WEBP" then return "image/webp" end
  if bytes:sub(1, 4) == "GIF8" then return "image/gif" end
  if bytes:sub(1, 5) == "%PDF-" then return "application/pdf" end
  local ext = name and name:match("%.(%w+)$")
  return ext and BY_EXT[ext:lower()] or "application/octet-stream"
end

function M.parse_multipart(body, content_type)
  local boundary = content_type:match('boundary="([^"]+)"') or content_type:match("boundary=([^;%s]+)")
  if not boundary then return nil, "missing multipart boundary" end
  local delim = "--" .. boundary
  local s, e = body:find(delim, 1, true)
  if not s then return nil, "multipart boundary not found" end
  local parts = {}
  local pos = e + 1
  while true do
    if body:sub(pos, pos + 1) == "--" then break end
    if body:sub(pos, pos + 1) == "\r\n" then pos = pos + 2 end
    local hend = body:find("\r\n\r\n", pos, true)
    if not hend then return nil, "malformed multipart part" end
    local head = body:sub(pos, hend - 1)
    local cstart = hend + 4
    local nxt = body:find("\r\n" .. delim, cstart, true)
    if not nxt then return nil, "unterminated multipart body" end
    local part = { data = body:sub(cstart, nxt - 1) }
    for line in (head .. "\r\n"):gmatch("(.-)\r\n") do
      local k, v = line:match("^([^:]+):%s*(.*)$")
      if k then
        k = k:lower()
        if k == "content-disposition" then
          part.name = v:match('[; ]name="([^"]*)"') or v:match("[; ]name=([^;%s]+)")
          part.filename = v:match('filename="([^"]*)"') or v:match("filename=([^;%s]+)")
        elseif k == "content-type" then
          part.content_type = v
        end
      end
    end
    if part.name then parts[part.name] = parts[part.name] or part end
    pos = nxt + 2 + #delim
  end
  return parts
end

local function iso_now()
  ngx.update_time()
  local now = ngx.now()
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(now)) ..
    string.format(".%03dZ", math.floor((now % 1) * 1000))
end

local function clean_upload_path(p)
  if type(p) ~= "string" then return nil end
  p = p:gsub("^/+", ""):gsub("/+$", "")
  if p == "" then return nil end
  for seg in p:gmatch("[^/]+") do
    if seg == "." or seg == ".." then return nil, "Invalid uploadPath" end
  end
  return p
end

local function finish(bytes, upload_path, file_name, fallback_name, scheme, host)
  local path, perr = clean_upload_path(upload_path)
  if not path then return respond.upload(400, perr or "Missing required parameter: uploadPath") end
  local mime = M.sniff(bytes, file_name or fallback_name)
  if type(file_name) ~= "string" or file_name == "" then
    file_name = fallback_name
    if not file_name or file_name == "" or not file_name:find("%.") then
      file_name = string.format("upload_%d%04d.%s", store.now_ms(), store.next_id() % 10000, EXT[mime] or "bin")
    end
  end
  file_name = file_name:gsub("[/\\]", "_")
  local file_path = path .. "/" .. file_name
  local ok, err = files.store_upload(file_path, bytes, mime)
  if not ok then return respond.upload(500, "Cannot store file: " .. tostring(err)) end
  local segs = {}
  for seg in file_path:gmatch("[^/]+") do segs[#segs + 1] = ngx.escape_uri(seg) end
  return respond.upload(200, "File uploaded successfully", {
    fileName = file_name,
    filePath = file_path,
    downloadUrl = scheme .. "://" .. host .. "/uploads/" .. table.concat(segs, "/"),
    fileSize = #bytes,
    mimeType = mime,
    uploadedAt = iso_now(),
  })
end

local function json_body(body)
  local t = body and store.decode(body)
  if type(t) ~= "table" then return nil end
  return t
end

function M.stream(body, ctx)
  local ctype = ngx.var.content_type or ""
  if not ctype:lower():find("multipart/form-data", 1, true) then
    return respond.upload(400, "Content-Type must be multipart/form-data")
  end
  local parts, err = M.parse_multipart(body or "", ctype)
  if not parts then return respond.upload(400, "Invalid multipart body: " .. err) end
  if not parts.file then return respond.upload(400, "Missing required parameter: file") end
  if not parts.uploadPath then return respond.upload(400, "Missing required parameter: uploadPath") end
  local name = parts.fileName and parts.fileName.data
  return finish(parts.file.data, parts.uploadPath.data, name, parts.file.filename, ctx.scheme, ctx.host)
end

function M.base64(body, ctx)
  local t = json_body(body)
  if not t then return respond.upload(400, "Request body must be a JSON object") end
  local data = t.base64Data
  if type(data) ~= "string" or data == "" then
    return respond.upload(400, "Missing required parameter: base64Data")
  end
  if not clean_upload_path(t.uploadPath) then
    return respond.upload(400, "Missing required parameter: uploadPath")
  end
  local b64 = data:match("^data:[^,]*;base64,(.*)$") or data
  b64 = b64:gsub("%s", "")
  local bytes = ngx.decode_base64(b64)
  if not bytes or (#b64 > 0 and #bytes == 0) then
    return respond.upload(400, "Base64 decoding failed: Invalid Base64 format")
  end
  return finish(bytes, t.uploadPath, t.fileName, nil, ctx.scheme, ctx.host)
end

function M.url(body, ctx)
  local t = json_body(body)
  if not t then return respond.upload(400, "Request body must be a JSON object") end
  local url = t.fileUrl
  if type(url) ~= "string" or url == "" then
    return respond.upload(400, "Missing required parameter: fileUrl")
  end
  if not url:match("^[hH][tT][tT][pP][sS]?://") then
    return respond.upload(400, "fileUrl must be an http(s) URL")
  end
  if not clean_upload_path(t.uploadPath) then
    return respond.upload(400, "Missing required parameter: uploadPath")
  end
  local bytes = files.own_url_bytes(url, ctx.own_hosts)
  if not bytes then
    return respond.upload(400, "Failed to download file from URL (the mock only fetches its own URLs)")
  end
  local base = url:match("^[^?#]*/([^/?#]+)")
  if base then base = ngx.unescape_uri(base) end
  return finish(bytes, t.uploadPath, t.fileName, base, ctx.scheme, ctx.host)
end

return M
