--- The task journal: nothing paid for is ever lost.
-- An append-only JSON-lines file. Every created taskId is appended and fsync'd
-- before `create_task` returns; a terminal state (`success`/`fail`) seen by
-- `get_task` or `wait` is appended too. `unfinished()` lists the tasks created
-- but never seen finished, so a restarted process polls them instead of paying
-- again. A torn last line (a crash mid-write) is skipped when reading.
-- @module kie.journal

local type, tostring, setmetatable, ipairs = type, tostring, setmetatable, ipairs
local open, time = io.open, os.time

local M = {}
local Journal = {}
Journal.__index = Journal

--- Opens (creates on first write) the journal at `path`.
-- @tparam string path
-- @tparam table core the kie.core module (for encode/decode/append_line)
function M.open(path, core)
  if type(path) ~= "string" or path == "" then
    error("kie.new: option 'journal' must be a file path", 3)
  end
  return setmetatable({ path = path, _core = core, _done = {} }, Journal)
end

-- A record whose newline never made it to disk (a crash between the two writes)
-- would glue itself to the next record and both would be unreadable: before the
-- first append of this process, end such a tail with a newline.
function Journal:_end_torn_tail()
  local f = open(self.path, "rb")
  if not f then return true end
  local size = f:seek("end")
  local last
  if size and size > 0 then
    f:seek("set", size - 1)
    last = f:read(1)
  end
  f:close()
  if last == nil or last == "\n" then return true end
  return self._core.append_line(self.path, "")
end

-- Appends one JSON line, durably. Returns true or nil, msg.
function Journal:_append(rec)
  local line = assert(self._core.encode(rec))
  if not self._tail_ok then
    local ok, msg = self:_end_torn_tail()
    if not ok then return nil, msg end
    self._tail_ok = true
  end
  return self._core.append_line(self.path, line)
end

--- Records a created task. Returns true, or nil and a message.
function Journal:created(task_id, model)
  return self:_append{ event = "created", taskId = task_id, model = model, created = time() }
end

--- Records a terminal state, once per task per process.
function Journal:finished(task_id, state)
  if self._done[task_id] then return true end
  local ok, msg = self:_append{ event = "finished", taskId = task_id, state = state, at = time() }
  if ok then self._done[task_id] = true end
  return ok, msg
end

--- The tasks created and not seen finished, oldest first:
-- `{ {taskId =, model =, created = <epoch s>}, ... }`.
function Journal:unfinished()
  local f = open(self.path, "r")
  if not f then return {} end
  local order, open_tasks = {}, {}
  for line in f:lines() do
    local rec = self._core.decode(line)
    if type(rec) == "table" and type(rec.taskId) == "string" then
      if rec.event == "created" then
        if not open_tasks[rec.taskId] then order[#order + 1] = rec.taskId end
        local created = type(rec.created) == "number" and math.floor(rec.created) or nil
        open_tasks[rec.taskId] = { taskId = rec.taskId, model = rec.model, created = created }
      elseif rec.event == "finished" then
        open_tasks[rec.taskId] = false
        self._done[rec.taskId] = true
      end
    end
  end
  f:close()
  local out = {}
  for _, id in ipairs(order) do
    if open_tasks[id] then out[#out + 1] = open_tasks[id] end
  end
  return out
end

function Journal:__tostring()
  return "kie.journal(" .. tostring(self.path) .. ")"
end

return M
