--- The client: thin, typed calls over kie.core, with the seams the policies use.
-- @classmod kie.Client

local errors = require "kie.errors"

local type, pairs, tostring, setmetatable, getenv = type, pairs, tostring, setmetatable, os.getenv
local wrap = errors.wrap

local Client = {}
Client.__index = Client
Client.__name = "kie.Client"

local DEFAULTS = {
  base_url = "https://api.kie.ai",
  upload_url = "https://kieai.redpandaai.co",
  timeout = 30,
  connect_timeout = 10,
  max_retries = 4,
  max_response_bytes = 8 * 1024 * 1024,
}

-- option name -> Lua type it must have
local OPTION_TYPES = {
  api_key = "string", base_url = "string", upload_url = "string",
  timeout = "number", connect_timeout = "number", max_retries = "number",
  ca_file = "string", ca_path = "string", proxy = "string",
  max_response_bytes = "number", logger = "function", user_agent = "string",
  core = "table", -- an injected core module (kie.testing's fake, or tests')
}

-- options handed to kie.core.new as they are
local CORE_OPTIONS = { "api_key", "base_url", "upload_url", "timeout", "connect_timeout",
  "ca_file", "ca_path", "proxy", "max_response_bytes", "user_agent" }

local function _env(name)
  local v = getenv(name)
  if v == "" then return nil end
  return v
end

local function _options(user)
  if user ~= nil and type(user) ~= "table" then
    error("kie.new: options must be a table", 3)
  end
  user = user or {}
  local o = {}
  for k, v in pairs(user) do
    local want = OPTION_TYPES[k]
    if not want then
      error("kie.new: unknown option '" .. tostring(k) .. "'", 3)
    end
    if type(v) ~= want and not (want == "table" and type(v) == "userdata") then
      error("kie.new: option '" .. k .. "' must be a " .. want .. ", got " .. type(v), 3)
    end
    o[k] = v
  end
  o.api_key = o.api_key or _env("KIE_API_KEY")
  o.base_url = o.base_url or _env("KIE_BASE_URL") or DEFAULTS.base_url
  o.upload_url = o.upload_url or _env("KIE_UPLOAD_URL") or DEFAULTS.upload_url
  for k, v in pairs(DEFAULTS) do
    if o[k] == nil then o[k] = v end
  end
  if not o.api_key or o.api_key == "" then
    error("kie.new: no API key: pass api_key or set KIE_API_KEY (keys: https://kie.ai/api-key)", 3)
  end
  if o.max_retries < 0 or o.max_retries % 1 ~= 0 then
    error("kie.new: option 'max_retries' must be a whole number >= 0", 3)
  end
  return o
end

--- Makes a client (see `kie.new`).
function Client.new(user)
  local o = _options(user)
  local core = o.core or require "kie.core"
  local copts = {}
  for _, k in pairs(CORE_OPTIONS) do copts[k] = o[k] end
  local ok, handle = pcall(core.new, copts)
  if not ok then
    error((tostring(handle):gsub("^kie%.core%.new", "kie.new")), 2)
  end
  o.api_key = nil -- kept only inside the core
  o.core = nil
  return setmetatable({ _core = handle, _mod = core, _opts = o }, Client)
end

Client.VERSION = (function()
  local ok, core = pcall(require, "kie.core")
  return ok and core._VERSION or "0.1.0"
end)()

function Client:__tostring()
  return "kie.Client (" .. self._opts.base_url .. ")"
end

local function _check(v, want, what, level)
  if type(v) ~= want then
    error(what .. " must be a " .. want .. ", got " .. type(v), level or 3)
  end
end

--- Creates a task. Returns `{taskId = ...}` or `nil, err`.
-- @tparam table request `{model = ..., callBackUrl = ..., input = {...}}`
function Client:create_task(request)
  _check(request, "table", "create_task: request")
  local res, err = self._core:create_task(request)
  if not res then return nil, wrap(err) end
  return res
end

--- Reads a task (recordInfo): the API's data table with `param` and
-- `resultJson` decoded and `resultUrls` (a list, empty until success).
-- @tparam string task_id
function Client:get_task(task_id)
  _check(task_id, "string", "get_task: task_id")
  local res, err = self._core:get_task(task_id)
  if not res then return nil, wrap(err) end
  return res
end

--- Remaining credits (a number) or `nil, err`.
function Client:credits()
  local res, err = self._core:call("GET", "/api/v1/chat/credit")
  if res == nil then return nil, wrap(err) end
  if type(res) ~= "number" then
    return nil, errors.new("protocol", "credits: data is not a number", { op = "credits" })
  end
  return res
end

--- A temporary (20-minute) download link for a kie.ai-generated file URL.
-- @tparam string url
function Client:download_url(url)
  _check(url, "string", "download_url: url")
  local res, err = self._core:call("POST", "/api/v1/common/download-url", { url = url })
  if res == nil then return nil, wrap(err) end
  if type(res) ~= "string" then
    return nil, errors.new("protocol", "download_url: data is not a URL string", { op = "download_url" })
  end
  return res
end

local DOWNLOAD_CAP = 100 * 1024 * 1024

local function _expired(err)
  return err.kind == "not_found" or (err.kind == "http" and (err.status == 403 or err.status == 410))
end

--- Downloads `url` to `path` atomically: the body goes to a temporary file in
-- the same directory, renamed over `path` only when complete. The API key is
-- never sent with a download. When the link has expired (403/404/410), a fresh
-- one is asked from `download_url` and tried once. Returns `path` or `nil, err`.
-- @tparam string url
-- @tparam string path
-- @tparam[opt] table opts `max_bytes` (default 100 MiB), `refresh` (default true)
function Client:download(url, path, opts)
  _check(url, "string", "download: url")
  _check(path, "string", "download: path")
  opts = opts or {}
  local cap = opts.max_bytes or DOWNLOAD_CAP
  local tmp = path .. ".part-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e9))
  local ok, err = self._core:fetch(url, tmp, cap)
  if not ok and opts.refresh ~= false and _expired(err) then
    local fresh = self:download_url(url)
    if fresh then ok, err = self._core:fetch(fresh, tmp, cap) end
  end
  if not ok then
    os.remove(tmp)
    return nil, wrap(err)
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    return nil, errors.new("io", "download: cannot move the file into place: " .. tostring(rerr),
      { op = "download" })
  end
  return path
end

--- Frees the connections. Idempotent; also done by the garbage collector.
function Client:close()
  self._core:close()
end

return Client
