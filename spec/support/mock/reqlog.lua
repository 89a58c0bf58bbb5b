-- The request log: one entry per request (control endpoints excluded).

local store = require "store"

local M = {}

function M.new(fault)
  ngx.update_time()
  return {
    method = ngx.req.get_method(),
    path = ngx.var.uri,
    query = ngx.req.get_uri_args(100),
    headers = ngx.req.get_headers(200),
    connection = tonumber(ngx.var.connection),
    connection_requests = tonumber(ngx.var.connection_requests),
    scheme = ngx.var.scheme,
    fault = fault and fault.fault or nil,
    fault_id = fault and fault.id or nil,
    time = ngx.now(),
  }
end

function M.set_body(entry, body, max)
  if body == nil then return end
  entry.body_size = #body
  if #body > max then
    entry.body = body:sub(1, max)
    entry.body_truncated = true
  else
    entry.body = body
  end
end

function M.commit(entry)
  entry.seq = store.push(store.logd, "req", entry)
end

-- filter by path (exact; prefix when it ends with "*")
local function path_filter(path)
  if not path or path == "" then return nil end
  if path:sub(-1) == "*" then
    local p = path:sub(1, -2)
    return function(e) return e.path:sub(1, #p) == p end
  end
  return function(e) return e.path == path end
end

function M.list(path)
  return store.list(store.logd, "req", path_filter(path))
end

function M.connections(path)
  local seen, n = {}, 0
  for _, e in ipairs(M.list(path)) do
    if e.connection and not seen[e.connection] then
      seen[e.connection] = true
      n = n + 1
    end
  end
  return n
end

return M
