--- Many `run` requests at once: `run_all`.
-- @submodule kie.Client

local options = require "kie.options"
local scheduler = require "kie.scheduler"

local type, pairs, error, tostring = type, pairs, error, tostring
local huge = math.huge
local _check = options.check

local Client = {}

local OPTIONS = { concurrency = true, on_update = true }

--- Runs many requests at once (each as `run` would) within the client's rate
-- limits, and returns `results, errs` indexed like the input: `results[i]` is the
-- finished task or nil; `errs` is nil when every item succeeded, else `errs[i]` is
-- item i's error. One failure does not stop the others. Blocking, or yielding
-- inside `kie.spawn`.
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
  local results, errs, failed = {}, {}, false
  local next_i, finished, workers = 0, 0, conc < n and conc or n
  local parent, parent_req = scheduler.current(), nil

  local function item(i)
    local req = requests[i]
    if on_update then
      req = {}
      for k, v in pairs(requests[i]) do req[k] = v end
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

  local function worker_done(cur)
    return function(_, err)
      if err and cur.i then -- the worker raised while running item cur.i
        errs[cur.i], failed = err, true
      end
      finished = finished + 1
      if finished == workers and parent_req then
        self:_unpark(parent, parent_req)
        self:_defer(function() scheduler.resume(parent) end)
      end
    end
  end

  for _ = 1, workers do
    local cur = {}
    scheduler.start(function()
      while next_i < n do
        next_i = next_i + 1
        local i = next_i
        cur.i = i
        local r, e = item(i)
        results[i] = r
        if r == nil then errs[i], failed = e, true end
      end
      cur.i = nil
    end, worker_done(cur))
  end
  if parent then
    if finished < workers then
      parent_req = { client = self, wake = huge }
      scheduler.wait_for(parent_req)
    end
  else
    while finished < workers do
      local ms = self:poll_timeout()
      if ms and ms > 0 and self._core:pending() == 0 then
        -- only timers are due: sleep with the client's own (maybe injected) sleep
        self._blocking_sleep(ms / 1000)
        ms = 0
      end
      self:step(ms and (ms < 100 and ms or 100) or 100)
    end
  end
  return results, failed and errs or nil
end

return Client
