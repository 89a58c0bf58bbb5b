-- Task records and their state machine. A task walks
-- waiting -> queuing -> generating -> success|fail, spending `pace` seconds
-- (taken from the config when the task is created) in each pending state; the
-- state is derived from the time elapsed since creation.

local store = require "store"

local M = {}

local null = store.null
local PENDING = { "waiting", "queuing", "generating" }

local function key(id) return "task:" .. id end

local function slug(model)
  local s = (model:match("^([^/]+)") or model):lower():gsub("[^%w]", "")
  if s == "" then s = "model" end
  return s
end

-- Looks through every string inside `input` for the magic markers
-- "#fail" (optionally "#fail=<code>") and "#stuck".
local function markers(v, found, depth)
  depth = depth or 0
  if depth > 20 then return found end
  if type(v) == "string" then
    local code = v:match("#fail=(%d+)")
    if code then found.fail = code
    elseif v:find("#fail", 1, true) then found.fail = found.fail or "500" end
    if v:find("#stuck", 1, true) then found.stuck = true end
  elseif type(v) == "table" then
    for _, item in pairs(v) do markers(item, found, depth + 1) end
  end
  return found
end

local FAIL_MESSAGES = {
  ["500"] = "Internal server error",
  ["422"] = "Validation error",
  ["400"] = "Content policy violation",
  ["501"] = "Generation failed",
}

function M.create(req, raw_body, cfg, scheme, host)
  local now = store.now_ms()
  local seq = store.next_id()
  local id = string.format("task_%s_%d%04d", slug(req.model), now, seq % 10000)
  local input = type(req.input) == "table" and req.input or {}
  local n = tonumber(type(input.num_images) == "string" and input.num_images or "1")
  if not n or n < 1 or n > 4 or n ~= math.floor(n) then n = 1 end
  local found = markers(input, {})
  local task = {
    taskId = id,
    model = req.model,
    param = (raw_body:gsub("^%s+", ""):gsub("%s+$", "")),
    createTime = now,
    pace = cfg.pace,
    num_images = n,
    outcome = found.stuck and "stuck" or (found.fail and "fail" or "success"),
    failCode = found.fail,
    failMsg = found.fail and (FAIL_MESSAGES[found.fail] or "Generation failed") or nil,
    callBackUrl = type(req.callBackUrl) == "string" and req.callBackUrl or nil,
    scheme = scheme,
    host = host,
    cost = cfg.cost,
  }
  store.set_json(store.dict, key(id), task)
  return task
end

function M.get(id)
  if type(id) ~= "string" or id == "" then return nil end
  return store.get_json(store.dict, key(id))
end

function M.result_urls(task, scheme, host)
  local urls = {}
  for i = 1, task.num_images do
    urls[i] = string.format("%s://%s/files/%s_%d.png", scheme, host, task.taskId, i)
  end
  return urls
end

-- epoch ms at which the task reaches its terminal state (nil: never)
function M.complete_time(task)
  if task.outcome == "stuck" then return nil end
  return task.createTime + math.floor(3 * task.pace * 1000 + 0.5)
end

-- The recordInfo `data` table for `task` as seen at `now` (epoch ms). Result
-- URLs use `scheme` and `host` (the asking request's own, by default the
-- creating request's).
function M.view(task, scheme, host, now)
  now = now or store.now_ms()
  scheme = scheme or task.scheme
  host = host or task.host
  local pace_ms = task.pace * 1000
  local elapsed = now - task.createTime
  local idx
  if pace_ms <= 0 then idx = 4 else idx = math.floor(elapsed / pace_ms) + 1 end
  if idx < 1 then idx = 1 end
  if idx > 4 then idx = 4 end
  if task.outcome == "stuck" and idx > 3 then idx = 3 end
  local data = {
    taskId = task.taskId,
    model = task.model,
    param = task.param,
    createTime = task.createTime,
  }
  if idx <= 3 then
    data.state = PENDING[idx]
    data.resultJson = ""
    data.failCode = null
    data.failMsg = null
    data.costTime = null
    data.completeTime = null
    data.updateTime = task.createTime + math.floor((idx - 1) * pace_ms + 0.5)
    return data
  end
  local complete = M.complete_time(task)
  data.completeTime = complete
  data.updateTime = complete
  data.costTime = complete - task.createTime
  if task.outcome == "fail" then
    data.state = "fail"
    data.resultJson = ""
    data.failCode = task.failCode
    data.failMsg = task.failMsg
  else
    data.state = "success"
    data.resultJson = '{"resultUrls":["' .. table.concat(M.result_urls(task, scheme, host), '","') .. '"]}'
    data.failCode = ""
    data.failMsg = ""
  end
  return data
end

function M.is_terminal(state)
  return state == "success" or state == "fail"
end

-- Does `name` (like "<taskId>_<n>.png") name a result file of a finished task?
function M.result_file(name)
  local id, n = name:match("^(task_[%w_]+)_(%d+)%.png$")
  if not id then return nil end
  local task = M.get(id)
  n = tonumber(n)
  if not task or n < 1 or n > task.num_images then return nil end
  if M.view(task).state ~= "success" then return nil end
  return task, n
end

return M
