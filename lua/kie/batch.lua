--- Many `run` requests at once: `run_all`.
-- @submodule kie.Client

local lifecycle = require "kie.lifecycle"
local options = require "kie.options"

local type, pairs, ipairs, pcall, error, tostring = type, pairs, ipairs, pcall, error, tostring
local _check = options.check

local Client = {}

local OPTIONS = { concurrency = true, on_update = true }

-- The body of item i's task: run(requests[i]), with run_all's on_update.
local function _item(self, batch, i)
  local req = batch.requests[i]
  local on_update = batch.on_update
  if on_update then
    local src = req
    req = {}
    for k, v in pairs(src) do req[k] = v end
    local w = {}
    for k, v in pairs(req.wait or {}) do w[k] = v end
    local inner = w.on_update
    w.on_update = function(info)
      if inner then inner(info) end
      on_update(i, info)
    end
    req.wait = w
  end
  return self:run(req)
end

--- Runs many requests at once (each as `run` would) within the client's rate
-- limits, and returns `results, errs` indexed like the input: `results[i]` is the
-- finished task or nil; `errs` is nil when every item succeeded, else `errs[i]` is
-- item i's error. Every item's options (`wait`, `upload`, `strict`) and run_all's
-- own are checked before the first request: a bad one raises, nothing is paid.
-- One failure does not stop the others: an item whose own code raises (an
-- `on_update` that raises) ends with kind `raised` (`task_id` set when its task
-- was created). Blocking, or yielding inside
-- `kie.spawn`: canceling that job starts no further item and cancels the running
-- ones. Closing the client ends the items still pending (`canceled`). A job
-- ended so has `results` and `errs` on its error (an item whose create was in
-- flight: `unknown_outcome`, `fingerprint`, `task_id` once answered). Blocking,
-- run_all steps the client: a callback of another call on it that raises does
-- not stop the batch; once every item ended, run_all raises what they raised
-- (kind `callback`, as `step` does) with `results` and `errs` on the error.
-- @tparam table requests a list of `run` requests
-- @tparam[opt] table opts `concurrency` (default 8), `on_update(i, info)` on each
-- state change of item i
function Client:run_all(requests, opts)
  _check(requests, "table", "run_all: requests")
  opts = opts or {}
  _check(opts, "table", "run_all: opts")
  for k in pairs(opts) do
    if not OPTIONS[k] then error("run_all: unknown option '" .. tostring(k) .. "'", 2) end
  end
  local conc = opts.concurrency or 8
  if type(conc) ~= "number" or conc < 1 or conc % 1 ~= 0 then
    error("run_all: concurrency must be a whole number >= 1", 2)
  end
  local on_update = opts.on_update
  if on_update ~= nil then _check(on_update, "function", "run_all: on_update") end
  local n = #requests
  -- every item's options before the first request (nothing paid, then a raise)
  for i = 1, n do self:_check_run(requests[i], "run_all: request " .. i, 3) end
  local batch = { requests = requests, on_update = on_update }
  local results, errs, failed = {}, {}, false
  local next_i, active, launching = 0, 0, false
  local parent = lifecycle.current()
  local launch

  local function on_end(t)
    active = active - 1
    local r = t._results
    local i = t._item
    if r[1] == nil then
      local e = r[2]
      if type(e) == "table" and e.task_id == nil and t.task_id then e.task_id = t.task_id end
      errs[i], failed = e, true
    else
      results[i] = r[1]
    end
    launch()
  end

  -- starts items while fewer than conc run; none once the job was canceled
  function launch()
    if launching then return end
    launching = true
    while active < conc and next_i < n and not (parent and parent._ended) do
      if self._closed then -- the items never started end like the pending ones
        for i = next_i + 1, n do
          errs[i], failed = lifecycle.closed_error(), true
        end
        next_i = n
        break
      end
      next_i = next_i + 1
      active = active + 1
      local t = lifecycle.task(_item)
      t._item, t._on_end = next_i, on_end
      if parent then lifecycle.adopt(parent, t) end
      lifecycle.run(t, self, batch, next_i)
    end
    launching = false
    if active == 0 and parent then lifecycle.wake(parent) end
  end

  launch()
  local raised -- what callbacks of other calls on this client raised in the steps below
  if parent then
    -- canceled or closed meanwhile, the job's error has what each item became
    if active > 0 then lifecycle.join(self, parent, { results = results, errs = errs }) end
  else
    while active > 0 do
      local ms = self:poll_timeout()
      if ms and ms > 0 and self._core:pending() == 0 then
        -- only timers are due: sleep with the client's own (maybe injected) sleep
        self._blocking_sleep(ms / 1000)
        ms = 0
      end
      local ok, e = pcall(self.step, self, ms and (ms < 100 and ms or 100) or 100)
      if not ok then
        if not (type(e) == "table" and e.kind == "callback") then error(e, 0) end
        raised = raised or {}
        for i, v in ipairs(e.errors or { e }) do raised[#raised + 1] = { v, (e.tracebacks or {})[i] } end
      end
    end
  end
  if raised then
    -- the batch is not sunk by another call's callback: it ran to its end, and
    -- its results (paid tasks) go with the error
    error(lifecycle.callback_error(raised, { results = results, errs = failed and errs or nil }), 0)
  end
  return results, failed and errs or nil
end

return Client
