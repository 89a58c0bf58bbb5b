--- The paid-call state machine: every create (blocking, `*_async`, `run`,
-- `run_all`, inside `kie.spawn`) goes intent -> sent -> answered | unknown.
--
-- * intent: with a journal, `{fingerprint, model, intent id}` is fsync'd before
--   the request is sent (once per create, whatever the retries); when it cannot
--   be written nothing is sent (`io` error).
-- * answered: the task id is journaled (resolving the intent) before the create
--   returns; an answer that surely made no task (429/455 after the retries, 401,
--   402, 422, a connect failure ...) resolves the intent as `not_created`.
-- * unknown: `unknown_outcome` carries `fingerprint`, `model` and `intent`; the
--   intent stays unresolved in the journal, so `resume()` lists it
--   (`unknown = true`) until `forget` or a late answer (`settle`) ends it.
-- @module kie.paid

local errors = require "kie.errors"
local fingerprint = require "kie.fingerprint"

local tostring, setmetatable = tostring, setmetatable

local M = {}

-- the request table sent (the call's own validated copy) -> its paid call, for
-- the hooks kie.lifecycle calls with the request (a create canceled after it was
-- sent). The call never refers to its request: Lua 5.1 and LuaJIT would never
-- collect a weak key its own value refers to.
local by_req = setmetatable({}, { __mode = "k" })

--- A paid call's state for request `req` (validated): `{model =, fingerprint =,
-- intent =}`.
function M.new(self, req)
  local ctx = { model = req.model }
  if self._journal then ctx.fingerprint = fingerprint(self._mod, req) end
  by_req[req] = ctx
  return ctx
end

--- The paid call of request table `req` (nil if none).
function M.of(req)
  return by_req[req]
end

--- Gives `err` (an `unknown_outcome` made outside the call: a cancel or close
-- after sending, see kie.lifecycle) the call's fingerprint, model and intent.
function M.unknown(self, req, err)
  local ctx = by_req[req]
  err.fingerprint = ctx and ctx.fingerprint or fingerprint(self._mod, req)
  err.model = req.model
  err.intent = ctx and ctx.intent
  return err
end

-- Writes the intent before the first request goes out: nil, err when it cannot.
function M.intend(self, ctx)
  local j = self._journal
  if not j or ctx.intent then return true end
  local id, msg = j:intent(ctx.fingerprint, ctx.model)
  if not id and type(msg) == "table" then return nil, msg end -- kind fleet: Redis failed, nothing sent
  if not id then
    self:_log("error", "journal write failed: " .. tostring(msg), { op = "create_task" })
    return nil, errors.new("io", "create_task: the journal cannot be written (" .. tostring(msg)
      .. "); nothing was sent", { op = "create_task", retryable = false })
  end
  ctx.intent = id
  return true
end

--- Puts `value` into request `req`'s `callBackUrl` (when it has one) as the
-- query parameter `key` (`kie_intent`: the journal intent; `kie_batch`: a batch
-- item's): kie.ai echoes the create body in a callback's `param`, so a callback
-- names what its task resolves (fleet mode; `client:deliver` reads them back).
function M.tag_callback(req, key, value)
  local url = req.callBackUrl
  if type(url) ~= "string" or not value then return end
  local base, frag = url:match("^([^#]*)(.*)$")
  req.callBackUrl = base .. (base:find("?", 1, true) and "&" or "?") .. key .. "=" .. value .. frag
end

--- Ends the call of request `req`: `res` (the create's answer) or `err`.
-- Journals the task id (or the sure failure) and gives an `unknown_outcome` its
-- fingerprint, model and intent. Returns `res` or `nil, err`. Also the hook for
-- an answer read after the call itself ended (a create canceled after it was
-- sent, or closed with its answer read but not handed over).
function M.settle(self, ctx, req, res, err)
  local j = self._journal
  if res then
    if j then
      local ok, msg = j:created(res.taskId, ctx.model, ctx.intent)
      if not ok then
        -- the task exists and is paid for: return it all the same, loudly
        res.journal_error = msg
        self:_log("error", "journal write failed: " .. tostring(msg), { task_id = res.taskId })
      end
    end
    return res
  end
  err = errors.wrap(err)
  if err.kind == "unknown_outcome" then
    err.fingerprint = ctx.fingerprint or fingerprint(self._mod, req)
    err.model = ctx.model
    err.intent = ctx.intent
  elseif j and ctx.intent then
    local ok, msg = j:not_created(ctx.intent, err.kind)
    if not ok then
      self:_log("error", "journal write failed: " .. tostring(msg), { op = "create_task" })
    end
  end
  return nil, err
end

return M
