-- Writing responses. Route handlers return a response table
--   { status = <http status>, body = <string> | json = <table>, content_type =,
--     headers = {...}, api = true when it is a JSON API envelope }
-- and respond.send writes it out.

local store = require "store"

local M = {}

function M.json(status, tbl, extra)
  local res = { status = status, json = tbl, api = true }
  if extra then for k, v in pairs(extra) do res[k] = v end end
  return res
end

-- kie.ai API envelope {code, msg|message, data}
function M.envelope(code, msg, data, msg_key)
  local t = { code = code }
  t[msg_key or "msg"] = msg
  if data ~= nil then t.data = data end
  return t
end

function M.api(code, msg, data, msg_key)
  return M.json(code == 200 and 200 or code, M.envelope(code, msg, data, msg_key))
end

-- upload host envelope {success, code, msg, data}
function M.upload(code, msg, data)
  local t = { success = code == 200, code = code, msg = msg }
  if data ~= nil then t.data = data end
  return M.json(code, t)
end

function M.text(status, body, content_type)
  return { status = status, body = body, content_type = content_type or "text/plain; charset=utf-8" }
end

function M.send(res)
  local body = res.body
  if body == nil and res.json ~= nil then body = store.encode(res.json) end
  body = body or ""
  ngx.status = res.status or 200
  ngx.header["Content-Type"] = res.content_type or "application/json"
  if res.headers then
    for k, v in pairs(res.headers) do ngx.header[k] = v end
  end
  ngx.header["Content-Length"] = #body
  if ngx.req.get_method() ~= "HEAD" then ngx.print(body) end
  return ngx.exit(ngx.HTTP_OK)
end

-- Close the connection without writing anything.
function M.drop()
  return ngx.exit(444)
end

return M
