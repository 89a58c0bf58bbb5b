-- Files the mock serves: result images (/files/<taskId>_<n>.png, optionally
-- with ?expires= from download-url) and uploaded files (/uploads/<filePath>).

local store = require "store"
local tasks = require "tasks"
local png = require "png"
local respond = require "respond"

local M = {}

local cache, cache_n = {}, 0

function M.result_png(name)
  local bytes = cache[name]
  if not bytes then
    if cache_n > 64 then cache, cache_n = {}, 0 end
    bytes = png.gradient(ngx.crc32_long(name) % 256)
    cache[name] = bytes
    cache_n = cache_n + 1
  end
  return bytes
end

-- uploads ------------------------------------------------------------------

local function disk_name(file_path)
  local cfg = store.config()
  local prefix = cfg.prefix or ngx.config.prefix()
  if prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
  return prefix .. "uploads/" .. file_path:gsub("[^%w%-%._]", function(c)
    return string.format("%%%02X", c:byte())
  end)
end

function M.store_upload(file_path, bytes, mime)
  local fh, err = io.open(disk_name(file_path), "wb")
  if not fh then return nil, err end
  fh:write(bytes)
  fh:close()
  store.set_json(store.dict, "upload:" .. file_path, { mime = mime, size = #bytes })
  return true
end

function M.upload_bytes(file_path)
  local meta = store.get_json(store.dict, "upload:" .. file_path)
  if not meta then return nil end
  local fh = io.open(disk_name(file_path), "rb")
  if not fh then return nil end
  local bytes = fh:read("*a")
  fh:close()
  return bytes, meta.mime
end

-- Bytes behind a URL of this mock (used by file-url-upload), or nil.
function M.own_url_bytes(url, allowed)
  local authority, path = url:match("^[hH][tT][tT][pP][sS]?://([^/?#]+)(/[^?#]*)")
  if not authority or not allowed[authority:lower()] then return nil end
  path = ngx.unescape_uri(path)
  local name = path:match("^/files/([^/]+)$")
  if name then
    if tasks.result_file(name) then return M.result_png(name), "image/png" end
    return nil
  end
  local fp = path:match("^/uploads/(.+)$")
  if fp then return M.upload_bytes(fp) end
  return nil
end

-- GET/HEAD /files/... and /uploads/...
function M.serve(uri)
  local name = uri:match("^/files/([^/]+)$")
  if name then
    if not tasks.result_file(name) then return respond.text(404, "Not Found\n") end
    local expires = ngx.req.get_uri_args().expires
    if expires ~= nil then
      local t = tonumber(expires)
      if not t or t < ngx.time() then return respond.text(403, "Link expired\n") end
    end
    return respond.text(200, M.result_png(name), "image/png")
  end
  local fp = uri:match("^/uploads/(.+)$")
  if fp then
    local bytes, mime = M.upload_bytes(fp)
    if not bytes then return respond.text(404, "Not Found\n") end
    return respond.text(200, bytes, mime or "application/octet-stream")
  end
  return respond.text(404, "Not Found\n")
end

return M
