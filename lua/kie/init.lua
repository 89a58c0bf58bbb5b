--- lua-kie: a client for kie.ai's image-generation job API.
--
--    local kie = require "kie"
--    local client = kie.new{}              -- reads KIE_API_KEY
--    local task, err = client:create_task{model = "ideogram/character", input = {...}}
--
-- Runtime failures return `nil, err` (see `kie.errors`); programmer errors
-- (wrong argument types, unknown option names) raise.
-- @module kie

local Client = require "kie.client"
local errors = require "kie.errors"
local files = require "kie.files"
local lifecycle = require "kie.lifecycle"
local seed = require "kie.seed"

-- math.random differs per process (Lua 5.1 and LuaJIT start every process alike);
-- a program that wants a fixed sequence seeds after this require (see kie.seed)
seed.ensure()

local M = {
  _VERSION = Client.VERSION,
  errors = errors,
  models = require "kie.models",
}

-- kie.callback (webhook verification) loads on first use: most programs never need it
setmetatable(M, { __index = function(t, k)
  if k ~= "callback" then return nil end
  local v = require "kie.callback"
  rawset(t, k, v)
  return v
end })

--- Runs `fn(...)` at once in a coroutine in which the client calls yield instead
-- of blocking; the `step` of the client a call used resumes it. Returns a handle
-- with `done()`, `result()` (fn's results, or `nil, err` if it raised),
-- `cancel()` and `task_id` (see `kie.lifecycle`). The same code works blocking
-- and non-blocking.
M.spawn = lifecycle.spawn

--- Makes a client. Every option is optional:
--
-- * `api_key` (default `KIE_API_KEY`; none at all raises)
-- * `base_url` (`KIE_BASE_URL`, default https://api.kie.ai), `upload_url`
--   (`KIE_UPLOAD_URL`, default https://kieai.redpandaai.co)
-- * `timeout` (30 s per HTTP request), `connect_timeout` (10 s)
-- * `max_retries` (4 retries after the first attempt), `retry` (`base`, `cap`,
--   `max_retry_after`, `rate_limit_floor` of the backoff)
-- * `rate_limits` (`{create = {limit = 20, window = 10}, poll = {limit = 10, window = 1}}`;
--   `false` for either turns it off)
-- * `ca_file`, `ca_path`, `proxy`, `max_response_bytes` (8 MiB), `user_agent`
-- * `journal` (a file path: every created taskId is fsync'd there; see `resume`)
-- * `fleet` (`{redis = URL, name = NAME, timeout =, connect_timeout =, lease = 60}`):
--   rate limits shared with every client of the fleet (`kie.fleet`) and the journal
--   kept in Redis, waited-on tasks leased for `lease` seconds (`kie.fleet_journal`;
--   `journal`, when given too, stays the local write-ahead record)
-- * `strict` (true: an unknown input field of a known model is an error)
-- * `logger` (`function(level, message, fields)`; never sees the key)
-- * `step_budget_ms` (0.2: the work budget of one `step`, for a game frame)
-- * `now`, `sleep`, `random` (inject the clock, e.g. in tests), `core` (inject a core)
--
-- Raises when no key is found or an option is unknown or of the wrong type.
-- @tparam[opt] table opts
-- @treturn kie.Client
function M.new(opts)
  return Client.new(opts)
end

--- Marks a local file for `run`: `kie.file(path)` or `kie.file{data = bytes,
-- file_name = ...}` in an image field (`image_url`, `reference_image_urls[i]` ...)
-- is uploaded first and sent as its URL. Plain strings are never read as paths.
M.file = files.file

--- A file name for server text such as a task id: the text itself when it is a
-- plain name (letters, digits, `_`, `-`), else `task-<digest>`; server text never
-- chooses a path as is (`("out/%s.png"):format(kie.safe_name(info.taskId))`).
M.safe_name = files.safe_name

--- Marks a table so that it is sent as a JSON object even when empty
-- (empty tables are sent as `[]`, which is what every empty list in this API is).
function M.object(t)
  return setmetatable(t or {}, { __jsontype = "object" })
end

return M
