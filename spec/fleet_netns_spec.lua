-- Fleet pacing across hosts: worker processes (spec/support/fleet_child.lua) on several
-- network namespaces (spec/support/netns.lua), some with their clocks skewed by faketime,
-- create tasks against the mock and share one redis-server, both listening on the
-- namespaces' bridge in the root namespace. The mock enforces kie.ai's account-wide
-- window over arrivals (429 over it) after 0 - 300 ms of random latency. The fleet counts
-- on Redis's clock, so the skew must not matter. The negative control runs the same load
-- paced per process and must see 429s. Needs root (pending otherwise).
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local netns = require "spec.support.netns"
local run = require "spec.support.fleet_run"
local util = require "spec.support.util"
local procs = require "spec.support.procs"
local socket = require "socket"

local KEY = "sk-fleet-spec"
local LIMIT = { limit = 5, window = 2 }
local HOSTS, PER_HOST, COUNT = 4, 2, 3
local SKEW = { [2] = "+2s", [4] = "-3s" } -- faketime offsets of the clocks of hosts 2 and 4

describe("fleet mode: pacing across hosts (network namespaces) #fleet #integration #netns", function()
  local can, why = netns.available()
  if not can then
    it("8 workers on 4 hosts", function() pending(why) end)
    return
  end
  local faketime = run.faketime()
  local net, m, srv, dir

  lazy_setup(function()
    net = netns.create(HOSTS)
    srv = server.start{ bind = { net.address } }
    m = mock.start{ api_key = KEY, pace = 0, account_limit = { create = LIMIT }, listen = { net.address },
      latency = { min = 0, max = 0.3 } }
    dir = util.tmpdir("kie-fleet-netns")
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
    if net then net:destroy() end
    if dir then util.run("rm -rf " .. util.quote(dir)) end
  end)

  local function load(mode)
    m:reset()
    local start = socket.gettime() + 0.6
    return run.children{ n = HOSTS * PER_HOST, mode = mode, mock = m:url_at(net.address),
      redis = srv:url_at(net.address), name = "netns-" .. math.random(1, 1e9),
      limit = LIMIT.limit, window = LIMIT.window, start_at = start, count = COUNT,
      stop_at = start + 30, dir = dir, wrap = run.on_hosts(net, SKEW) }
  end

  it("the hosts see the servers on the bridge only, and the skewed ones their own clock", function()
    for i = 1, HOSTS do
      local ok, out = net:run(i, "ip -4 addr")
      assert.is_true(ok, out)
      assert.truthy(out:find(net.hosts[i].address, 1, true))
      assert.falsy(out:find(net.address .. "/", 1, true))
    end
    if not faketime then
      io.stderr:write("\n[fleet-netns] faketime is not installed (scripts/deps.sh test): no skew\n")
      return
    end
    for host, skew in pairs(SKEW) do
      local now = "lua5.4 -e " .. util.quote("print(require('socket').gettime())")
      local ok, out = util.run(run.on_hosts(net, SKEW)(host, now))
      assert.is_true(ok, out)
      local off = tonumber(out:match("[%d.]+")) - socket.gettime()
      local want = tonumber(skew:match("^[+-]%d+"))
      assert.is_true(math.abs(off - want) < 0.5, ("host %d is %.2f s off, not %s"):format(host, off, skew))
    end
  end)

  -- are the namespaces and interfaces named with `prefix` all gone (within `timeout` s)?
  local function gone(prefix, timeout)
    local deadline = socket.gettime() + timeout
    repeat
      local _, links = util.run("ip -o link")
      if #netns.list(prefix) == 0 and not links:find(prefix, 1, true) then return true end
      socket.sleep(0.1)
    until socket.gettime() > deadline
    return false
  end

  it("leaves nothing behind: destroy removes every name, and so does the watchdog when its process dies",
    function()
    local other = netns.create(2)
    assert.equals(2, #netns.list(other.prefix))
    other:destroy()
    assert.is_true(gone(other.prefix, 0))
    other:destroy() -- idempotent

    local script = dir .. "/crash.lua"
    util.write_file(script, 'io.stdout:setvbuf("no") print(require("spec.support.netns").create(2).prefix) '
      .. 'error("a spec that fails without its teardown")')
    local out = dir .. "/crash"
    local pid = procs.spawn(procs.lua_command(script), out .. ".out", out .. ".err")
    local prefix = procs.wait_for(out .. ".out", "^(kn%x+)\n", 10)
    assert.truthy(prefix, util.read_file(out .. ".err"))
    while procs.alive(pid) do socket.sleep(0.05) end
    assert.is_true(gone(prefix, 5), "the namespaces of a dead process stayed")
  end)

  it("8 workers on 4 hosts, 2 skewed, at the account's limit, 0 - 300 ms latency: no 429, every create "
    .. "answered (control: alone, they overshoot)", function()
    local total = HOSTS * PER_HOST * COUNT
    local r = load("fleet")
    local times, over = run.arrivals(m)
    assert.same({}, r.stderr)
    assert.same({}, r.bad)
    assert.equals(0, r.unfinished)
    assert.same({}, r.errs)
    assert.equals(0, over)
    assert.equals(total, r.ok)
    assert.equals(total, #times)
    assert.equals(LIMIT.limit, run.max_in_window(times, LIMIT.window)) -- the busiest window is full
    local pct, nth, took, allowed = run.budget(times, nil, LIMIT.limit, LIMIT.window)
    io.stderr:write(("\n[fleet-netns] %d workers on %d hosts (clocks %s), limit %d / %d s, latency 0-300 ms: "
      .. "429s %d, %d creates; %.0f %% of the create budget used (create %d arrived %.2f s after the first, "
      .. "the account allows %d s)\n"):format(HOSTS * PER_HOST, HOSTS, faketime and "+2 s, -3 s" or "unskewed",
      LIMIT.limit, LIMIT.window, over, #times, pct, nth, took, allowed))

    r = load("local")
    times, over = run.arrivals(m)
    io.stderr:write(("[fleet-netns] control, the same load paced per process: 429s %d of %d\n"):format(
      over, over + #times))
    assert.same({}, r.stderr)
    assert.is_true(over > 0, "the harness saw no overshoot")
    assert.equals(over, r.errs.rate_limited)
    assert.equals(total, r.ok + over)
  end)
end)
