-- luacheck: globals love
-- lua-kie in a LÖVE 11.4 game: 100 image jobs (create + wait) run in kie.spawn
-- coroutines; love.update calls client:step(0) once per frame (through
-- examples/host/game.lua, shared with the C host), which never blocks, and the
-- window shows the progress. The game quits by itself when every job has ended
-- (exit 0; 3 if some failed) or after KIE_MAX_FRAMES frames (exit 1), and prints
-- the step times as one line on stdout:
--   frames=N completed=N failed=N tasks=N max_in_flight=N step_mean_ms=X step_p99_ms=X step_max_ms=X
--
-- Run it with examples/love/run.sh (a local mock kie.ai server, under xvfb-run
-- when there is no display), or by hand:
--   make LUA=luajit
--   KIE_BASE_URL=... KIE_API_KEY=... love examples/love
-- LÖVE runs LuaJIT, so it loads build/luajit/kie/core.so; KIE_ROOT names the
-- repository (default: two levels above this folder).

local MAX_FRAMES = tonumber(os.getenv("KIE_MAX_FRAMES") or "") or 3600
local TASKS = tonumber(os.getenv("KIE_TASKS") or "") or 100
local FRAME = 1 / 60

local game
local frames, times = 0, {}
local finished, in_flight, next_tick = false, 0, nil
local status_line = "starting"

local function repo_root()
  local r = os.getenv("KIE_ROOT")
  if r and r ~= "" then return r end
  local src = love.filesystem.getSource()
  if src:sub(1, 1) ~= "/" then src = love.filesystem.getWorkingDirectory() .. "/" .. src end
  return (src:gsub("/+$", "")) .. "/../.."
end

-- Prints the figures line and quits with `code`.
local function finish(code)
  local sorted, sum, max = {}, 0, 0
  for i = 1, #times do
    sorted[i] = times[i]
    sum = sum + times[i]
    if times[i] > max then max = times[i] end
  end
  table.sort(sorted)
  local p99 = #sorted > 0 and sorted[math.ceil(0.99 * #sorted)] or 0
  local completed, failed, total, max_in_flight = game.summary()
  if code == 0 and (failed > 0 or completed ~= total) then code = 3 end
  io.stdout:write(string.format("frames=%d completed=%d failed=%d tasks=%d max_in_flight=%d "
    .. "step_mean_ms=%.3f step_p99_ms=%.3f step_max_ms=%.3f\n", frames, completed, failed, total,
    max_in_flight, #times > 0 and sum / #times or 0, p99, max))
  io.stdout:flush()
  love.event.quit(code)
end

function love.load()
  local root = repo_root()
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  package.cpath = root .. "/build/luajit/?.so;" .. package.cpath
  local url, key = os.getenv("KIE_BASE_URL"), os.getenv("KIE_API_KEY")
  if not url or not key then
    io.stderr:write("love example: set KIE_BASE_URL and KIE_API_KEY (or use run.sh)\n")
    love.event.quit(2)
    return
  end
  game = dofile(root .. "/examples/host/game.lua")
  game.init{ base_url = url, api_key = key, tasks = TASKS }
  love.graphics.setFont(love.graphics.newFont(16))
end

function love.update()
  if not game or finished then return end
  -- 60 Hz even where vsync does nothing (xvfb): sleep to the next tick
  local now = love.timer.getTime()
  if next_tick and next_tick > now then love.timer.sleep(next_tick - now) end
  now = love.timer.getTime()
  next_tick = math.max((next_tick or now) + FRAME, now)

  local t0 = love.timer.getTime()
  finished, in_flight = game.frame() -- client:step(0), callbacks, coroutines
  frames = frames + 1
  times[frames] = (love.timer.getTime() - t0) * 1000

  status_line = string.format("frame %d: %d pending, step %.3f ms", frames, in_flight, times[frames])
  if finished then
    finish(0)
  elseif frames >= MAX_FRAMES then
    io.stderr:write("love example: gave up after ", frames, " frames\n")
    finish(1)
  end
end

function love.draw()
  local w = love.graphics.getWidth()
  love.graphics.clear(0.1, 0.1, 0.14)
  love.graphics.setColor(1, 1, 1)
  love.graphics.print("lua-kie: " .. TASKS .. " image jobs against " .. tostring(os.getenv("KIE_BASE_URL")), 20, 20)
  love.graphics.print(status_line, 20, 50)
  -- progress bar: jobs that ended / all
  local ended, total = 0, TASKS
  if game then ended, total = game.progress() end
  love.graphics.print(string.format("%d / %d jobs ended", ended, total), 20, 140)
  love.graphics.setColor(0.3, 0.3, 0.35)
  love.graphics.rectangle("fill", 20, 100, w - 40, 30)
  love.graphics.setColor(0.3, 0.8, 0.4)
  love.graphics.rectangle("fill", 20, 100, (w - 40) * ended / math.max(total, 1), 30)
end

-- No blue screen waiting for a click on a headless run: print and exit 2.
function love.errorhandler(msg)
  io.stderr:write("love example: error: ", tostring(msg), "\n", debug.traceback(), "\n")
  io.stderr:flush()
  return function() return 2 end
end
