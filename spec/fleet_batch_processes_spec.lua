-- Fleet batches across processes: worker processes (spec/support/batch_worker_child.lua)
-- on one batch against the mock, sharing Redis; this process (a third party) reads
-- the results. Every item ends, each is created at most once (the mock's log),
-- and a worker killed with -9 mid-batch has its items taken over: none lost, no
-- create sent twice. FLEET_BATCH_SEED, FLEET_BATCH_ITEMS, FLEET_BATCH_WORKERS,
-- FLEET_BATCH_KILLS make the long run (make soak-fleet-batch).
local kie = require "kie"
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local util = require "spec.support.util"
local socket = require "socket"

local KEY = "sk-fleet-batch-spec"
local CREATE = "/api/v1/jobs/createTask"
local CHILD = "spec/support/batch_worker_child.lua"
local SEED = tonumber(os.getenv("FLEET_BATCH_SEED") or "") or os.time()
local ITEMS = tonumber(os.getenv("FLEET_BATCH_ITEMS") or "") or 24
local WORKERS = tonumber(os.getenv("FLEET_BATCH_WORKERS") or "") or 3
local KILLS = tonumber(os.getenv("FLEET_BATCH_KILLS") or "") or 1
local LEASE = 1

describe("fleet batches across processes #fleet #integration", function()
  local m, srv, dir
  local names = 0

  lazy_setup(function()
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0.1, latency = { min = 0.1, max = 0.5 } }
    dir = util.tmpdir("kie-fleet-batch")
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
    if dir then util.run("rm -rf " .. util.quote(dir)) end
  end)
  before_each(function() m:reset() end)

  local function client(name)
    return kie.new{ api_key = KEY, base_url = m.url, timeout = 5, max_retries = 1,
      fleet = { redis = srv.url, name = name } }
  end

  local function spawn(name, id, k)
    local out = dir .. "/w" .. names .. "-" .. k
    local cmd = procs.lua_command(CHILD, { m.url, srv.url, name, id, 3, LEASE })
    return procs.spawn(cmd, out .. ".out", out .. ".err"), out
  end

  local function prompts_created()
    local seen, n = {}, 0
    for _, r in ipairs(m:requests(CREATE)) do
      if r.status == nil or r.status == 200 then
        local p = mock.json.decode(r.body).input.prompt
        seen[p] = (seen[p] or 0) + 1
        n = n + 1
      end
    end
    return seen, n
  end

  -- Runs a batch of `items` with `workers` processes, killing `kills` of them
  -- (-9, at random moments while creates go out; each replaced); returns the
  -- batch, the requests and the outputs of the workers that were not killed.
  local function run(items, workers, kills, seed)
    math.randomseed(seed)
    names = names + 1
    local name = "fbp" .. names .. "-" .. math.random(1, 1e9)
    local c = client(name)
    local reqs = {}
    for i = 1, items do
      local tag = name .. " item " .. i
      if math.random() < 0.1 then tag = tag .. " #fail=501" end
      reqs[i] = { model = "ideogram/character",
        input = { prompt = tag, reference_image_urls = { "https://example.com/ref.png" } } }
    end
    local id = assert(c:submit(reqs))
    local pids, outs, killed = {}, {}, {}
    for k = 1, workers do pids[k], outs[k] = spawn(name, id, k) end
    local deadline = socket.gettime() + 60 + items
    local points = {}
    for j = 1, kills do points[j] = math.random(1, math.max(1, math.floor(items * 0.7))) end
    table.sort(points)
    for _, at in ipairs(points) do
      -- a moment while creates go out: after `at` of them, one living worker
      while m:count(CREATE) < at and socket.gettime() < deadline do socket.sleep(0.005) end
      local alive = {}
      for k = 1, #pids do if not killed[k] then alive[#alive + 1] = k end end
      local k = alive[math.random(1, #alive)]
      socket.sleep(math.random() * 0.1)
      procs.kill(pids[k], "KILL")
      killed[k] = true
      pids[#pids + 1], outs[#outs + 1] = spawn(name, id, #pids + 1)
    end
    for k, pid in ipairs(pids) do
      while procs.alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
      assert.is_false(procs.alive(pid), "worker " .. k .. " did not end (seed " .. seed .. ")")
    end
    local lines = {}
    for k = 1, #pids do
      if not killed[k] then
        assert.equals("", util.read_file(outs[k] .. ".err") or "", "seed " .. seed)
        lines[#lines + 1] = util.read_file(outs[k] .. ".out")
      end
    end
    local st = assert(c:batch(id))
    c:close()
    return st, reqs, lines
  end

  local function check(st, reqs, lines, seed, kills)
    local why = " (seed " .. seed .. ")"
    local seen, creates = prompts_created()
    assert.equals(#reqs, st.total, why)
    assert.equals(#reqs, st.done + st.failed, "every item ended" .. why)
    for _, out in ipairs(lines) do
      assert.matches("\nend " .. #reqs .. " %d+ %d+\n$", "\n" .. out, nil, false, why)
    end
    local unknown, with_id = 0, 0
    for i, r in ipairs(st.results) do
      local p = reqs[i].input.prompt
      assert.is_true((seen[p] or 0) <= 1, "item " .. i .. " created twice" .. why)
      if r.kind == "unknown_outcome" then
        unknown = unknown + 1
        assert.is_nil(r.task_id)
      else
        assert.equals(1, seen[p], "item " .. i .. " ended " .. r.state .. " without its create" .. why)
        assert.is_string(r.task_id, why)
        with_id = with_id + 1
        if p:find("#fail", 1, true) then
          assert.equals("task_failed", r.kind, why)
        else
          assert.equals("done", r.state, why)
        end
      end
    end
    -- only a killed worker's creates can be unknown: at most its concurrency each
    assert.is_true(unknown <= 3 * kills, "unknown_outcome " .. unknown .. why)
    -- every create the mock answered is an item's task, except the unknown ones
    assert.is_true(creates - with_id <= unknown, "a paid task id was lost" .. why)
  end

  it("several workers on one batch: each item created once, every item ended, results seen "
    .. "from a third process", function()
    local st, reqs, lines = run(ITEMS, WORKERS, 0, SEED)
    check(st, reqs, lines, SEED, 0)
    assert.equals(0, #(function()
      local u = {}
      for _, r in ipairs(st.results) do if r.kind == "unknown_outcome" then u[#u + 1] = r end end
      return u
    end)())
  end)

  it("a worker killed with -9 mid-batch: its items taken over, no create sent twice, none lost", function()
    local st, reqs, lines = run(ITEMS, WORKERS, KILLS, SEED + 1)
    check(st, reqs, lines, SEED + 1, KILLS)
  end)
end)
