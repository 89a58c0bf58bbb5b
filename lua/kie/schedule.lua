--- Polling schedule and the wait loop for a kie.ai task.
--
-- kie.ai's guidance: poll every 2-3 s during the first 30 s, every 5-10 s until
-- 2 minutes, every 15-30 s after that. `schedule.delay` draws a delay uniformly in
-- the band for the time elapsed; `schedule.wait` polls a task with it until the task
-- ends or the deadline passes. Time and randomness come from an injected `env`
-- (`now()` monotonic seconds, `sleep(seconds)`, `random()` in [0,1)).
-- @module kie.schedule

local errors = require "kie.errors"

local type, pairs, error, tostring, tonumber = type, pairs, error, tostring, tonumber

local M = {}

-- The published bands: `{ until_elapsed, min_delay, max_delay }`, in order.
M.bands = {
  { 30, 2, 3 },
  { 120, 5, 10 },
  { math.huge, 15, 30 },
}

M.min_delay = 0.1        -- no delay is ever shorter
M.default_timeout = 900  -- seconds
--- Seconds a status read of `Client:wait` is given at least to be answered: its
-- last poll goes out `min(min_read, timeout / 2)` before the deadline (wait's
-- `reserve`), so no poll is sent that could not come back in time.
M.min_read = 1

local function positive(v)
  return type(v) == "number" and v > 0
end

--- The next poll delay in seconds.
-- @tparam number elapsed seconds since the wait started
-- @tparam[opt] table opts `interval` replaces the first band's delay (the starting
--   delay); `max_interval` caps every delay. Other keys are ignored.
-- @tparam[opt] function random `() -> [0,1)`; without it the middle of the band is used
function M.delay(elapsed, opts, random)
  local interval, max_interval
  if opts ~= nil then
    interval, max_interval = opts.interval, opts.max_interval
    if interval ~= nil and not positive(interval) then
      error("kie.schedule: interval must be a number > 0, got " .. tostring(interval), 2)
    end
    if max_interval ~= nil and not positive(max_interval) then
      error("kie.schedule: max_interval must be a number > 0, got " .. tostring(max_interval), 2)
    end
  end
  if elapsed ~= elapsed or elapsed < 0 then elapsed = 0 end
  local band = M.bands[#M.bands]
  local first = true
  for i = 1, #M.bands do
    if elapsed < M.bands[i][1] then band = M.bands[i]; first = (i == 1); break end
  end
  local d
  if first and interval ~= nil then
    d = interval
  else
    local r = random and random() or 0.5
    d = band[2] + r * (band[3] - band[2])
  end
  if max_interval ~= nil and d > max_interval then d = max_interval end
  if d < M.min_delay then d = M.min_delay end
  return d
end

M.cold_callback = 30  -- seconds after its create a task with a callback is first polled,
                      -- while no run time of its model is known
M.max_gap = 30        -- the longest gap between two polls placed by `expected`

-- The poll times (seconds after the create) `expected` chooses from, in order:
-- k -> the k-th. Returns nil when nothing is known (no run time, no callback).
local function targets(durations, callback)
  local n = #durations
  local function q(p)
    local i = math.ceil(p * n)
    if i < 1 then i = 1 end
    return durations[i]
  end
  local fixed, gap
  if n == 0 then
    if not callback then return nil end
    fixed, gap = { M.cold_callback }, 5
  elseif callback then
    -- the callback is late: 1.5 times the slow end of the model's run times
    fixed = { q(0.99) * 1.5 + 2 }
    gap = math.max(1, q(0.99) / 2)
  else
    fixed = { q(0.5), q(0.9), q(0.99) + 0.5 }
    gap = math.max(1, q(0.99) - q(0.5))
  end
  return function(k)
    if k <= #fixed then return fixed[k] end
    local t, g = fixed[#fixed], gap
    for _ = #fixed + 1, k do
      t = t + g
      g = math.min(g * 2, M.max_gap)
    end
    return t
  end
end

--- Seconds until the next poll of a task whose model's recent run times are
-- known: at the median, then the 90th and 99th percentiles, then backing off
-- (gaps doubling up to `max_gap`); with a callback expected, only once it is late
-- (1.5 times the 99th percentile, plus 2 s; `cold_callback` s while no run time
-- is known). A first poll whose time has passed goes at once.
-- @tparam table durations run times in seconds, sorted (may be empty)
-- @tparam number elapsed seconds since the task was created
-- @tparam number polls polls this wait made so far
-- @tparam boolean callback a callback is expected for the task
-- @treturn number|nil seconds; nil when nothing is known (then `delay` applies)
function M.expected(durations, elapsed, polls, callback)
  local at = targets(durations, callback)
  if not at then return nil end
  if elapsed ~= elapsed or elapsed < 0 then elapsed = 0 end
  if polls == 0 and at(1) <= elapsed then return M.min_delay end
  local k = 1
  while at(k) <= elapsed + M.min_delay do k = k + 1 end
  return at(k) - elapsed
end

local WAIT_OPTS = { timeout = true, interval = true, max_interval = true, on_update = true,
  reserve = true, first = true, delay = true }

local function check_wait_args(get_task, opts, env)
  if type(get_task) ~= "function" then error("kie.schedule.wait: get_task must be a function", 3) end
  if opts ~= nil and type(opts) ~= "table" then error("kie.schedule.wait: opts must be a table", 3) end
  opts = opts or {}
  for k in pairs(opts) do
    if not WAIT_OPTS[k] then error("kie.schedule.wait: unknown option '" .. tostring(k) .. "'", 3) end
  end
  local timeout = opts.timeout
  if timeout == nil then timeout = M.default_timeout end
  if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
    error("kie.schedule.wait: timeout must be a number >= 0, got " .. tostring(timeout), 3)
  end
  if opts.interval ~= nil and not positive(opts.interval) then
    error("kie.schedule.wait: interval must be a number > 0, got " .. tostring(opts.interval), 3)
  end
  if opts.max_interval ~= nil and not positive(opts.max_interval) then
    error("kie.schedule.wait: max_interval must be a number > 0, got " .. tostring(opts.max_interval), 3)
  end
  local reserve = opts.reserve
  if reserve ~= nil and (type(reserve) ~= "number" or reserve ~= reserve or reserve < 0) then
    error("kie.schedule.wait: reserve must be a number >= 0, got " .. tostring(reserve), 3)
  end
  if opts.on_update ~= nil and type(opts.on_update) ~= "function" then
    error("kie.schedule.wait: on_update must be a function", 3)
  end
  if opts.delay ~= nil and type(opts.delay) ~= "function" then
    error("kie.schedule.wait: delay must be a function", 3)
  end
  local first = opts.first
  if first ~= nil and (type(first) ~= "number" or first ~= first or first < 0) then
    error("kie.schedule.wait: first must be a number >= 0, got " .. tostring(first), 3)
  end
  if type(env) ~= "table" or type(env.now) ~= "function" or type(env.sleep) ~= "function" then
    error("kie.schedule.wait: env must be a table with now and sleep functions", 3)
  end
  if env.random ~= nil and type(env.random) ~= "function" then
    error("kie.schedule.wait: env.random must be a function", 3)
  end
  return opts, timeout
end

local function retry_after_of(err)
  local ra = err.retry_after
  if type(ra) == "string" then ra = tonumber(ra) end
  if type(ra) == "number" and ra == ra and ra > 0 then return ra end
  return nil
end

local NOTHING = {} -- "no state observed yet" (distinct from a nil state)

--- Polls `get_task(task_id)` until the task ends or `opts.timeout` passes.
-- The first poll is immediate (or `opts.first` seconds in); later ones follow
-- `schedule.delay` (or `opts.delay`). Retryable errors
-- from `get_task` are tolerated (a larger `err.retry_after` is honoured); any other
-- error ends the wait at once and is returned as is. No sleep crosses the deadline:
-- the last one is shortened so that a final poll happens `reserve` seconds before
-- the deadline (default 0: at the deadline), the time its answer needs.
-- @tparam function get_task `(task_id) -> info | nil, err`
-- @param task_id
-- @tparam[opt] table opts `timeout` (s, default 900), `interval`, `max_interval`,
--   `on_update(info)` called once per observed state change (first and final included),
--   `reserve` (s, default 0: no poll starts later than this before the deadline),
--   `first` (s before the first poll, default 0), `delay(elapsed, polls)` (s until
--   the next poll; replaces `schedule.delay`; `max_interval` still caps it)
-- @tparam table env `{ now = fn, sleep = fn, random = fn }`
-- @return `info` on success; or `nil, err`: kind `task_failed` (`task_id`, `failCode`,
--   `failMsg`, `state = "fail"`, `task` = the info), kind `deadline` (`task_id`, `state` =
--   last seen or nil, `last_error` = the latest error of `get_task` if any, `task` = the
--   last info, `timeout`, `polls`), or the non-retryable error of `get_task` itself
--   (given `task_id` when it had none)
function M.wait(get_task, task_id, opts, env)
  local timeout
  opts, timeout = check_wait_args(get_task, opts, env)
  local on_update = opts.on_update
  local reserve = opts.reserve or 0
  local start = env.now()
  local deadline = start + timeout
  local last_state = NOTHING
  local last_error, last_info
  local polls = 0
  local final = false -- the previous sleep was cut to end at the deadline
  local delay = opts.delay

  local first = opts.first
  if first and first > 0 then
    local remaining = deadline - reserve - start
    if first >= remaining then first = remaining; final = remaining > 0 end
    if first > 0 then env.sleep(first) end
  end
  while true do
    local info, err = get_task(task_id)
    polls = polls + 1
    local now = env.now()
    local extra = 0
    if info ~= nil then
      last_info = info
      local state = type(info) == "table" and info.state or nil
      if state ~= last_state then
        last_state = state
        if on_update then on_update(info) end
      end
      if state == "success" then return info end
      if state == "fail" then
        local msg = "task " .. tostring(task_id) .. " failed"
        if info.failMsg ~= nil and info.failMsg ~= "" then msg = msg .. ": " .. tostring(info.failMsg) end
        if info.failCode ~= nil and info.failCode ~= "" then
          msg = msg .. " (failCode " .. tostring(info.failCode) .. ")"
        end
        return nil, errors.new("task_failed", msg, {
          task_id = task_id, failCode = info.failCode, failMsg = info.failMsg,
          state = "fail", task = info,
        })
      end
      -- any other state (waiting, queuing, generating, unknown) is still running
    else
      if type(err) ~= "table" or err.retryable ~= true then
        if type(err) == "table" and err.task_id == nil then err.task_id = task_id end
        return nil, err
      end
      last_error = err
      extra = retry_after_of(err) or 0
    end

    local remaining = deadline - reserve - now -- until the last moment a poll may start
    if final or remaining <= 0 then
      local state = last_state ~= NOTHING and last_state or nil
      return nil, errors.new("deadline",
        "task " .. tostring(task_id) .. " not finished after " .. tostring(timeout) .. "s"
          .. (state and (" (state " .. tostring(state) .. ")") or ""),
        { task_id = task_id, state = state, last_error = last_error, task = last_info,
          timeout = timeout, polls = polls })
    end
    local d
    if delay then
      d = delay(now - start, polls) or M.delay(now - start, opts, env.random)
      if opts.max_interval and d > opts.max_interval then d = opts.max_interval end
    else
      d = M.delay(now - start, opts, env.random)
    end
    if extra > d then d = extra end
    if d >= remaining then d = remaining; final = true end
    env.sleep(d)
  end
end

return M
