-- Entry point of the mock (content_by_lua): request log, faults, auth, routing,
-- status_mode. Control endpoints under /_mock/ go to control.lua.

local store = require "store"
local faults = require "faults"
local reqlog = require "reqlog"
local respond = require "respond"
local api = require "api"
local uploads = require "uploads"
local files = require "files"
local account = require "account"

local M = {}

-- path -> { method, handler, kind } ; kind "api" (api.kie.ai) or "upload"
local ROUTES = {
  ["/api/v1/jobs/createTask"] = { "POST", api.create_task, "api" },
  ["/api/v1/jobs/recordInfo"] = { "GET", api.record_info, "api" },
  ["/api/v1/chat/credit"] = { "GET", api.credit, "api" },
  ["/api/v1/common/download-url"] = { "POST", api.download_url, "api" },
  ["/api/file-stream-upload"] = { "POST", uploads.stream, "upload" },
  ["/api/file-base64-upload"] = { "POST", uploads.base64, "upload" },
  ["/api/file-url-upload"] = { "POST", uploads.url, "upload" },
}

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return body end
  local path = ngx.req.get_body_file()
  if not path then return nil end
  local fh = io.open(path, "rb")
  if not fh then return nil end
  body = fh:read("*a")
  fh:close()
  return body
end

local function context(cfg)
  local host = ngx.var.http_host or ("127.0.0.1:" .. ngx.var.server_port)
  local own = { [host:lower()] = true }
  for _, p in ipairs({ cfg.port, cfg.https_port }) do
    own["127.0.0.1:" .. p] = true
    own["localhost:" .. p] = true
  end
  return { cfg = cfg, scheme = ngx.var.scheme, host = host, own_hosts = own }
end

local function authorized(cfg)
  local h = ngx.var.http_authorization
  if not h then return false end
  local token = h:match("^[Bb]earer%s+(.-)%s*$")
  return token ~= nil and token == cfg.api_key
end

local function route(uri, method, body, ctx)
  local r = ROUTES[uri]
  if r then
    if not authorized(ctx.cfg) then
      if r[3] == "upload" then
        return respond.upload(401, "Authentication failed: Invalid API Key")
      end
      return respond.api(401, "You do not have access permissions", nil, api.msg_key(ctx, uri == "/api/v1/jobs/recordInfo"))
    end
    if method ~= r[1] then
      if r[3] == "upload" then return respond.upload(405, "Method not allowed") end
      return respond.api(405, "Method not allowed", nil, api.msg_key(ctx))
    end
    return r[2](body, ctx)
  end
  if uri:sub(1, 7) == "/files/" or uri:sub(1, 9) == "/uploads/" then
    if method ~= "GET" and method ~= "HEAD" then return respond.text(405, "Method Not Allowed\n") end
    return files.serve(uri)
  end
  if uri:sub(1, 5) == "/api/" then
    if not authorized(ctx.cfg) then
      return respond.api(401, "You do not have access permissions", nil, api.msg_key(ctx))
    end
    return respond.api(404, "Not found", nil, api.msg_key(ctx))
  end
  return respond.text(404, "Not Found\n")
end

function M.main()
  local uri = ngx.var.uri
  if uri:sub(1, 7) == "/_mock/" then
    return require("control").handle(uri)
  end
  local method = ngx.req.get_method()
  local cfg = store.config()
  local fault = faults.take(uri, method)
  local entry = reqlog.new(fault)
  local delay = faults.delay_of(fault)
  local kind = fault and fault.fault

  if kind == "drop_before_body" then
    reqlog.commit(entry)
    if delay > 0 then ngx.sleep(delay) end
    return respond.drop()
  end

  local body = read_body()
  reqlog.set_body(entry, body, tonumber(cfg.max_log_body) or 65536)
  local over
  entry.arrived, over = account.arrive(uri, cfg, fault)
  if over then entry.fault = "account_limit" end
  reqlog.commit(entry)
  if over then return faults.respond({ fault = "rate_limit", msg = "account rate limit exceeded" }, uri) end

  if kind and faults.REPLACES[kind] then
    if delay > 0 then ngx.sleep(delay) end
    return faults.respond(fault, uri)
  end

  local res = route(uri, method, body, context(cfg))
  if res.api and res.status ~= 200 and cfg.status_mode == "200" then
    res.status = 200
  end
  if delay > 0 then ngx.sleep(delay) end
  if kind == "drop_after_body" then return respond.drop() end
  return respond.send(res)
end

return M
