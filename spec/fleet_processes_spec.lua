-- Fleet mode across processes: N lua children (spec/support/fleet_child.lua) create
-- tasks against the mock, which enforces kie.ai's account-wide sliding window over
-- arrivals (429 over it) after a random latency; the children share pacing through
-- a real redis-server. The negative control runs the same load with per-process
-- pacing and must see 429s.
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local run = require "spec.support.fleet_run"
local util = require "spec.support.util"
local socket = require "socket"

local KEY = "sk-fleet-spec"
local CREATE = "/api/v1/jobs/createTask"
local LIMIT = { limit = 5, window = 2 }
local max_in_window = run.max_in_window

describe("fleet mode: pacing across processes #fleet #integration", function()
  local m, srv, dir
  local names = 0

  lazy_setup(function()
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0, account_limit = { create = LIMIT } }
    dir = util.tmpdir("kie-fleet-children")
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
    if dir then util.run("rm -rf " .. util.quote(dir)) end
  end)
  before_each(function()
    m:reset()
    m:config{ latency = false }
  end)

  -- Runs n children (mode "fleet" or "local"), each making `count` creates from
  -- `start_at` on, until `stop_at`; returns what they printed, once all ended.
  local function run_children(n, mode, count, start_at, stop_at, during)
    names = names + 1
    local r = run.children{ n = n, mode = mode, mock = m.url, redis = srv.url,
      name = "procs" .. names .. "-" .. math.random(1, 1e9), limit = LIMIT.limit, window = LIMIT.window,
      start_at = start_at, count = count, stop_at = stop_at, dir = dir, during = during }
    assert.equals(0, r.unfinished, "a child did not end")
    assert.same({}, r.stderr)
    assert.same({}, r.bad)
    return r
  end

  local function arrivals() return run.arrivals(m) end

  it("4 processes at the account's limit, 0 - 300 ms latency: no 429 (control: alone, they overshoot)", function()
    m:config{ latency = { min = 0, max = 0.3 } }
    local start = socket.gettime() + 0.6
    local r = run_children(4, "fleet", 4, start, start + 20)
    local times, over = arrivals()
    assert.same({}, r.errs)
    assert.equals(16, r.ok)
    assert.equals(0, over)
    assert.equals(16, #times)
    assert.equals(LIMIT.limit, max_in_window(times, LIMIT.window)) -- the busiest window is full
    -- 16 creates need 3 windows after the first arrival at best (5 + 5 + 5 + 1)
    local span = times[#times] - times[1]
    io.stderr:write(("\n[fleet] 4 processes x 4 creates, limit %d / %d s, latency 0-300 ms: "
      .. "429s %d, arrivals over %.2f s (best %d s: %.0f %% of the budget used)\n"):format(
      LIMIT.limit, LIMIT.window, over, span, 3 * LIMIT.window, 100 * 3 * LIMIT.window / span))

    m:reset()
    start = socket.gettime() + 0.6
    r = run_children(4, "local", 4, start, start + 20)
    times, over = arrivals()
    io.stderr:write(("[fleet] control, the same load paced per process: 429s %d of %d\n"):format(
      over, over + #times))
    assert.is_true(over > 0, "the harness saw no overshoot")
    assert.equals(over, r.errs.rate_limited)
  end)

  it("Redis killed mid-run: fleet errors, nothing sent while down; back empty: the window counts as full",
    function()
    local start = socket.gettime() + 0.6
    local killing, killed, restarting, restarted
    local r = run_children(3, "fleet", 100, start, start + 8, function()
      socket.sleep(start + 3.3 - socket.gettime())
      killing = socket.gettime()
      srv:stop()
      killed = socket.gettime()
      socket.sleep(1)
      restarting = socket.gettime()
      srv:restart()
      restarted = socket.gettime()
    end)
    local times, over = arrivals()
    assert.equals(0, over)
    assert.is_true((r.errs.fleet or 0) > 0, "no fleet error while Redis was down")
    assert.is_nil(r.errs.rate_limited)
    local before, after = 0, 0
    for _, req in ipairs(m:requests(CREATE)) do
      if req.time < killing + 0.5 then -- (a slot granted just before the kill may be late)
        before = before + 1
      else
        -- nothing sent while Redis was down, nor in the window after it came back empty
        assert.is_true(req.time >= restarting + LIMIT.window,
          ("a create was sent %.3f s after the kill"):format(req.time - killed))
        after = after + 1
      end
    end
    assert.is_true(before >= LIMIT.limit)
    assert.is_true(after >= 1, "nothing sent after the restart")
    assert.is_true(max_in_window(times, LIMIT.window) <= LIMIT.limit)
    io.stderr:write(("[fleet] Redis down %.2f s: %d fleet errors, %d creates before, %d after "
      .. "(first %.2f s after the restart), 429s %d\n"):format(restarted - killed, r.errs.fleet,
      before, after, (function()
        local first = math.huge
        for _, req in ipairs(m:requests(CREATE)) do
          if req.time > killed and req.time < first then first = req.time end
        end
        return first - restarted
      end)(), over))
  end)
end)
