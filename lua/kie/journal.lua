--- The task journal: nothing paid for is ever lost.
-- An append-only JSON-lines file, one record per line, each written with one
-- writev and fsync'd. A create is a state machine (intent -> sent -> answered |
-- unknown) and the journal holds it:
--
--  * `intent`: before a create is sent, `{event = "intent", intent = <id>,
--    fingerprint =, model =, created =}`;
--  * `created`: once its answer came, `{event = "created", taskId =, model =,
--    created =, intent = <id>}` (records of older versions have no `intent`);
--  * `not_created`: the create surely made no task (refused, never sent);
--  * `finished`: a terminal state seen by `get_task` or `wait` (`success`,
--    `fail`, or `not_found` when kie.ai no longer knows the task);
--  * `forgotten`: `client:forget(id)` ended a task or an intent.
--
-- An intent with none of `created`/`not_created`/`forgotten` after it is
-- unresolved (the process died, or the create ended `unknown_outcome`).
-- `unfinished()` lists the unfinished tasks and the unresolved intents, so a
-- restarted process polls them instead of paying again. A torn last line (a
-- crash mid-write) is skipped when reading; unknown events are ignored.
-- @module kie.journal

local type, tostring, setmetatable, ipairs = type, tostring, setmetatable, ipairs
local open, time, floor, random, format = io.open, os.time, math.floor, math.random, string.format

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
  local addr = tostring({}):match("(%x+)$") or "0"
  return setmetatable({ path = path, _core = core, _done = {}, _seq = 0, _addr = addr:sub(-6) },
    Journal)
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

-- A new intent id: unique across processes (time, a per-journal counter, the
-- table's address and a random draw).
function Journal:_intent_id()
  self._seq = self._seq + 1
  return format("intent_%x_%s_%x_%06x", time(), self._addr, self._seq, floor(random() * 16777216))
end

--- Records the intent of a create, before it is sent. Returns the intent id, or
-- nil and a message (then the create must not be sent).
-- @tparam string fingerprint the request's fingerprint (`unknown_outcome`'s)
-- @tparam string model
function Journal:intent(fingerprint, model)
  local id = self:_intent_id()
  local ok, msg = self:_append{ event = "intent", intent = id, fingerprint = fingerprint,
    model = model, created = time() }
  if not ok then return nil, msg end
  return id
end

--- Records a created task (and resolves its intent, when given). Returns true,
-- or nil and a message.
function Journal:created(task_id, model, intent)
  return self:_append{ event = "created", taskId = task_id, model = model, created = time(),
    intent = intent }
end

--- Records that the create of `intent` surely made no task (`kind` says why).
function Journal:not_created(intent, kind)
  return self:_append{ event = "not_created", intent = intent, kind = kind, at = time() }
end

--- Records a terminal state (`success`, `fail`, `not_found`), once per task per
-- process.
function Journal:finished(task_id, state)
  if self._done[task_id] then return true end
  local ok, msg = self:_append{ event = "finished", taskId = task_id, state = state, at = time() }
  if ok then self._done[task_id] = true end
  return ok, msg
end

local function _epoch(v)
  if type(v) == "number" and v == v and v > -math.huge and v < math.huge then return floor(v) end
  return nil
end

-- Reads the file: the open entries in journal order (oldest first), each a
-- resume() entry; tasks keyed by taskId, intents by intent id.
function Journal:_scan()
  local f = open(self.path, "r")
  if not f then return {} end
  local order, entries = {}, {}
  local decode = self._core.decode
  for line in f:lines() do
    local rec = decode(line)
    if type(rec) == "table" then
      local ev, tid, iid = rec.event, rec.taskId, rec.intent
      if type(tid) ~= "string" then tid = nil end
      if type(iid) ~= "string" then iid = nil end
      if ev == "intent" and iid then
        if entries["i:" .. iid] == nil then order[#order + 1] = "i:" .. iid end
        entries["i:" .. iid] = { unknown = true, intent = iid,
          fingerprint = type(rec.fingerprint) == "string" and rec.fingerprint or nil,
          model = rec.model, created = _epoch(rec.created) }
      elseif ev == "created" and tid then
        if iid then entries["i:" .. iid] = false end
        if entries["t:" .. tid] == nil then order[#order + 1] = "t:" .. tid end
        if entries["t:" .. tid] ~= false then
          entries["t:" .. tid] = { taskId = tid, model = rec.model, created = _epoch(rec.created) }
        end
      elseif ev == "not_created" and iid then
        entries["i:" .. iid] = false
      elseif ev == "finished" and tid then
        entries["t:" .. tid] = false
        self._done[tid] = true
      elseif ev == "forgotten" then
        if tid then entries["t:" .. tid] = false end
        if iid then entries["i:" .. iid] = false end
      end
    end
  end
  f:close()
  local out = {}
  for _, k in ipairs(order) do
    if entries[k] then out[#out + 1] = entries[k] end
  end
  return out
end

--- The tasks created and not seen finished, and the unresolved intents, oldest
-- first: `{taskId =, model =, created = <epoch s>}` for a task, `{unknown = true,
-- intent =, fingerprint =, model =, created =}` for an intent.
function Journal:unfinished()
  return self:_scan()
end

--- Ends one open entry: a task id, an intent id, or a fingerprint (the oldest
-- unresolved intent with it). Returns true when one was ended, false when
-- nothing open matches `id`, or nil and a message when the journal cannot be
-- written.
-- @tparam string id
function Journal:forget(id)
  local hit, by_fingerprint
  for _, e in ipairs(self:_scan()) do
    if e.taskId == id or e.intent == id then hit = e break end
    if not by_fingerprint and e.unknown and e.fingerprint == id then by_fingerprint = e end
  end
  hit = hit or by_fingerprint
  if not hit then return false end
  local ok, msg
  if hit.taskId then
    ok, msg = self:_append{ event = "forgotten", taskId = hit.taskId, at = time() }
    if ok then self._done[hit.taskId] = true end
  else
    ok, msg = self:_append{ event = "forgotten", intent = hit.intent, at = time() }
  end
  if not ok then return nil, msg end
  return true
end

function Journal:__tostring()
  return "kie.journal(" .. tostring(self.path) .. ")"
end

return M
