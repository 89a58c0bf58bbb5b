-- The "game" side of examples/host: N image jobs (create + wait) run in kie.spawn
-- coroutines while the host calls frame() once per video frame. frame() only
-- ever calls client:step(0), which never blocks: the jobs advance between frames
-- and the frame time stays flat however slow kie.ai (here: the mock) answers.
--
-- The host (host.c) calls, in order:
--   game.init{ base_url =, api_key =, tasks = }   once
--   game.frame() -> finished (boolean), in_flight (integer)   every frame
--   game.progress() -> ended, total                              any time
--   game.summary() -> completed, failed, total, max_in_flight   once at the end
-- and nothing here is specific to that host: examples/love/main.lua uses it too.
local kie = require "kie"

local M = {}

-- A cheap, valid request; a different prompt per job.
local function request(i)
  return {
    model = "ideogram/character",
    input = {
      prompt = "Portrait of hero #" .. i .. ", storybook style",
      reference_image_urls = { "https://example.com/hero.png" },
      rendering_speed = "TURBO",
      style = "AUTO",
      num_images = "1",
      image_size = "square_hd",
    },
  }
end

-- Polling: a small interval against the mock, kie.ai's own schedule otherwise.
local fast_wait
local client
local total, completed, failed, max_in_flight = 0, 0, 0, 0
local handles = {}
local failures = {}

-- One job. The same function works blocking (called directly) and non-blocking
-- (under kie.spawn): the client calls yield inside a spawned coroutine.
local function job(i)
  local task, err = client:create_task(request(i))
  if not task then return nil, err end
  return client:wait(task.taskId, fast_wait)
end

-- Runs job(i) and counts how it ended.
local function tracked(i)
  local info, err = job(i)
  if info and info.state == "success" then
    completed = completed + 1
  else
    failed = failed + 1
    failures[#failures + 1] = "job " .. i .. ": " .. tostring(err)
  end
  return info, err
end

--- Makes the client and starts every job; returns at once.
function M.init(cfg)
  total = tonumber(cfg.tasks) or 100
  local local_mock = (cfg.base_url or ""):match("^https?://127%.0%.0%.1[:/]") ~= nil
  local opts = { api_key = cfg.api_key, base_url = cfg.base_url }
  if local_mock then
    -- the local mock has no limits: do not pace 100 creates over 50 s, and poll
    -- every 0.1-0.25 s instead of kie.ai's 2-3 s
    opts.rate_limits = { create = false, poll = false }
    fast_wait = { interval = 0.1, max_interval = 0.25, timeout = 120 }
  end
  client = kie.new(opts)
  for i = 1, total do
    handles[i] = kie.spawn(tracked, i)
  end
end

--- One frame's worth of work: never blocks. Returns whether every job has
-- ended, and how many transfers and timers are still pending.
-- KIE_STEP_BUDGET_MS: an optional per-frame work budget for step (see
-- Client:step): finished transfers beyond it wait for the next frame.
local budget_ms = tonumber(os.getenv("KIE_STEP_BUDGET_MS") or "")

function M.frame()
  local n = client:step(0, budget_ms)
  if n > max_in_flight then max_in_flight = n end
  -- nothing pending: no job can move any more (one that raised ended early)
  return completed + failed >= total or n == 0, n
end

--- Jobs that ended (completed or failed) and the total, for a progress display.
function M.progress()
  return completed + failed, total
end

--- completed, failed, total, max_in_flight; reports failures on stderr. A job
-- whose coroutine raised counts as failed with its error (never lost).
function M.summary()
  for i = 1, total do
    local h = handles[i]
    if h and h:done() then
      local _, err = h:result()
      if err and err.kind == "raised" then
        failed = failed + 1
        failures[#failures + 1] = "job " .. i .. ": " .. tostring(err) .. "\n" .. tostring(err.traceback)
      end
    end
  end
  for _, f in ipairs(failures) do io.stderr:write("game: ", f, "\n") end
  if client then client:close() end
  return completed, failed, total, max_in_flight
end

return M
