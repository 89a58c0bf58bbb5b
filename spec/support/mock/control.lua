-- Control endpoints under /_mock/ (no key needed; only the launcher and specs
-- use them), plus init() that loads the launcher's config.json at start.
--
--   GET  /_mock/ping                      {"ok":true}
--   GET  /_mock/config                    current config (+ credits)
--   POST /_mock/config   {...}            merge settings (hmac_key=false removes it)
--   POST /_mock/fault    {...}            queue a fault -> {"id":n}
--   GET  /_mock/faults                    queued faults
--   GET  /_mock/requests?path=P           request log (path exact, or prefix with "*")
--   GET  /_mock/count?path=P              {"count":n}
--   GET  /_mock/connections?path=P        {"connections":n}  distinct TCP connections
--   GET  /_mock/callbacks                 what /_mock/callback_sink received
--   GET  /_mock/deliveries                callback delivery attempts of the mock
--   GET  /_mock/task?taskId=ID            stored task + current view
--   GET  /_mock/hmac?key=K&message=M      {"signature": base64 HMAC-SHA256} (self test)
--   POST /_mock/reset                     clear log, faults, callbacks, tasks
--   POST /_mock/callback_sink             records the request, answers sink_status

local store = require "store"
local faults = require "faults"
local reqlog = require "reqlog"
local tasks = require "tasks"

local M = {}

function M.init(path)
  local fh = assert(io.open(path, "rb"))
  local text = fh:read("*a")
  fh:close()
  local cfg = assert(store.decode(text), "kie mock: bad config.json")
  local credits = cfg.credits
  cfg.credits = nil
  store.dict:set("credits", tonumber(credits) or 1000)
  store.set_json(store.dict, "config", cfg)
end

local function reply(status, tbl, raw)
  local body = raw or store.encode(tbl)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK)
end

local function body_json()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    local f = ngx.req.get_body_file()
    if f then
      local fh = io.open(f, "rb")
      if fh then body = fh:read("*a"); fh:close() end
    end
  end
  if not body or body == "" then return {}, body end
  return store.decode(body), body
end

local function arg(name)
  local v = ngx.req.get_uri_args()[name]
  if type(v) == "table" then v = v[1] end
  if v == true then v = nil end
  return v
end

local function config_view()
  local cfg = store.config()
  cfg.credits = store.credits()
  if cfg.hmac_key == nil then cfg.hmac_key = store.null end
  return cfg
end

function M.handle(uri)
  local method = ngx.req.get_method()
  local name = uri:sub(8)
  if name == "ping" then
    return reply(200, { ok = true })
  elseif name == "config" then
    if method == "POST" then
      local t = body_json()
      if type(t) ~= "table" then return reply(400, { error = "config must be a JSON object" }) end
      local _, err = store.update_config(t)
      if err then return reply(400, { error = err }) end
    end
    return reply(200, config_view())
  elseif name == "fault" and method == "POST" then
    local t = body_json()
    local id, err = faults.add(t)
    if not id then return reply(400, { error = err }) end
    return reply(200, { id = id })
  elseif name == "faults" then
    return reply(200, nil, store.encode_list(faults.list()))
  elseif name == "requests" then
    return reply(200, nil, store.encode_list(reqlog.list(arg("path"))))
  elseif name == "count" then
    return reply(200, { count = #reqlog.list(arg("path")) })
  elseif name == "connections" then
    return reply(200, { connections = reqlog.connections(arg("path")) })
  elseif name == "callbacks" then
    return reply(200, nil, store.encode_list(store.list(store.dict, "sink")))
  elseif name == "deliveries" then
    return reply(200, nil, store.encode_list(store.list(store.dict, "delivery")))
  elseif name == "task" then
    local task = tasks.get(arg("taskId"))
    if not task then return reply(404, { error = "no such task" }) end
    return reply(200, { task = task, view = tasks.view(task) })
  elseif name == "hmac" then
    local key, msg = arg("key"), arg("message")
    if not key or not msg then return reply(400, { error = "key and message required" }) end
    return reply(200, { signature = ngx.encode_base64(require("hmac").sha256(key, msg)) })
  elseif name == "reset" and method == "POST" then
    store.reset()
    return reply(200, { ok = true })
  elseif name == "callback_sink" then
    local _, body = body_json()
    ngx.update_time()
    store.push(store.dict, "sink", {
      method = method,
      uri = ngx.var.request_uri,
      headers = ngx.req.get_headers(200),
      body = body or "",
      time = ngx.now(),
    })
    local status = tonumber(store.config().sink_status) or 200
    return reply(status, { status = "received" })
  end
  return reply(404, { error = "unknown control endpoint " .. uri })
end

return M
