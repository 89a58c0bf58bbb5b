--- `client:deliver`: a callback that arrived here wakes the waits on its task, in
-- this process and (with `fleet`) in every process of the fleet.
-- @submodule kie.Client

local callback = require "kie.callback"
local errors = require "kie.errors"

local type, tostring = type, tostring

local Client = {}

local wake -- kie.wake, loaded on first use

-- What callback `ev` could not be recorded in: kind `fleet` (Redis; retryable, as
-- kie.ai sends the callback again) or `io` (the journal file).
local function unrecorded(ev, kind, what)
  return errors.new(kind, "callback: " .. what, { op = "callback", task_id = ev.task_id,
    retryable = kind == "fleet" })
end

-- The value of query parameter `key` in a callBackUrl (an intent id: letters,
-- digits, `_ - . :`, at most 128), if there is one.
local function tag_of(param, key)
  local url = type(param) == "table" and param.callBackUrl
  if type(url) ~= "string" then return nil end
  local query = url:match("^[^?#]*%?([^#]*)")
  if not query then return nil end
  for pair in query:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k == key then
      if #v <= 128 and v:match("^[%w_%-%.:]+$") then return v end
      return nil
    end
  end
  return nil
end

--- Takes a callback kie.ai POSTed to your `callBackUrl`: verifies it (like
-- `kie.callback.parse`: with `opts.hmac_key`, a missing, wrong or stale
-- signature is refused), checks its task id is shaped like kie.ai's, records it
-- and wakes every `wait` on that task: this client's at once, and with `fleet`
-- those of every process of the fleet (through a Redis stream; a wait that
-- starts later sees it too). A woken wait confirms with one `get_task` (the body
-- is not signed: it is never taken as the result) and returns.
--
-- A verified callback whose `param.callBackUrl` carries `kie_intent=ID` resolves
-- that journal intent with its task id (`journal:created`), so a create whose
-- answer was lost is not left unknown; with `fleet`, one that carries
-- `kie_batch=ID` gives that batch item its task id (`batch_created`). An
-- unsigned callback resolves nothing (its task id could be anyone's).
--
-- Answer kie.ai 200 when an event is returned; a `signature` or `protocol` error
-- is a callback to refuse (401/400); a `fleet` error (Redis failed: this
-- client's waits were woken, other processes' will poll) is worth a 5xx so the
-- sender may try again.
-- @tparam string|table body the raw JSON body
-- @tparam table headers the request's headers (names in any case)
-- @tparam[opt] table opts `hmac_key`, `tolerance`, `now`, `seen` (see `kie.callback.parse`)
-- @treturn table the event `{task_id =, state =, task =, verified =, code =, msg =}`,
-- or `nil, err` (kind `signature`, `protocol`, `io` (the journal) or `fleet`); nothing is recorded for
-- a refused callback
function Client:deliver(body, headers, opts)
  local ev, err = callback.parse(body, headers, opts)
  if not ev then return nil, err end
  wake = wake or require "kie.wake"
  if not wake.task_id_ok(ev.task_id) then
    return nil, errors.new("protocol", "callback: the task id is not shaped like kie.ai's ("
      .. ("%q"):format(ev.task_id:sub(1, 64)) .. ")", { op = "callback" })
  end
  local j = self._journal
  local param = type(ev.task.param) == "table" and ev.task.param or {}
  local model = ev.task.model or param.model
  local failed -- what could not be recorded: the sender should try again
  local intent = ev.verified and j and tag_of(param, "kie_intent")
  if intent then
    local ok, msg, kind = j:created(ev.task_id, model, intent)
    if not ok then -- the task id is not lost: kie.ai sends the callback again
      self:_log("error", "journal write failed: " .. tostring(msg), { op = "callback", task_id = ev.task_id })
      failed = unrecorded(ev, kind == "fleet" and "fleet" or "io",
        "the journal cannot be written (" .. tostring(msg) .. ")")
    end
  end
  local item = ev.verified and self._fleet and tag_of(param, "kie_batch")
  if item then -- a batch item whose create's answer was lost gets its task id
    local r, berr = self:batch_created(ev.task_id, model, item)
    if r == nil then
      failed = failed or unrecorded(ev, "fleet", "recording it in its batch failed: "
        .. tostring(berr and berr.message or berr))
    end
  end
  local ok, ferr = wake.deliver(self, ev) -- this process's waits are woken whatever failed
  if not ok and not failed then
    failed = unrecorded(ev, "fleet", "recording it in the fleet failed: " .. tostring(ferr and ferr.message or ferr))
  end
  if failed then
    failed.message = failed.message .. "; this process's waits were woken"
    return nil, failed
  end
  self:_log("info", "callback delivered", { op = "callback", task_id = ev.task_id, state = ev.state })
  return ev
end

return Client
