-- bin/kie's fleet batch commands, run as a user would (subprocesses against the
-- mock and a real redis-server): submit a JSON-lines file, a worker (plain
-- progress lines off a terminal), batch with and without --json, Ctrl-C.
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local util = require "spec.support.util"
local core = require "kie.core"

local KEY = "sk-cli-fleet-spec"
local LUA = rawget(_G, "jit") and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
local q, read, write = util.quote, util.read_file, util.write_file

describe("kie submit / worker / batch #fleet #integration", function()
  local m, srv, dir

  lazy_setup(function()
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0.05 }
    dir = util.tmpdir("kie-cli-fleet")
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
    if dir then util.run("rm -rf " .. q(dir)) end
  end)

  before_each(function() m:reset() end)

  local n = 0
  local function kie(args)
    n = n + 1
    local out, err = dir .. "/o" .. n, dir .. "/e" .. n
    local prefix = "env KIE_API_KEY=" .. q(KEY) .. " KIE_BASE_URL=" .. q(m.url) .. " KIE_REDIS_URL=" .. q(srv.url)
      .. " LUA_PATH=" .. q(package.path) .. " LUA_CPATH=" .. q(package.cpath) .. " "
    local p = assert(io.popen("(" .. prefix .. LUA .. " bin/kie " .. args .. ") </dev/null >" .. q(out)
      .. " 2>" .. q(err) .. "; echo $?"))
    local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    return rc, read(out) or "", read(err) or ""
  end

  -- A fleet whose Redis has been in use: a new one counts kie.ai's last window
  -- as full (kie.fleet), 10 s with the CLI's default limits.
  local function warm(fleet)
    for _, budget in ipairs{ "create", "poll" } do
      srv:cli("HSET", "{kie:fleet:" .. fleet .. ":" .. budget .. "}:meta", "blocked", "0")
    end
  end

  local function jsonl(count, fleet, bad)
    local lines = {}
    for i = 1, count do
      local prompt = fleet .. " " .. i .. (i == 2 and " #fail=501" or "")
      lines[i] = core.encode{ model = "ideogram/character",
        input = { prompt = prompt, reference_image_urls = { "https://example.com/ref.png" } } }
    end
    if bad then lines[#lines + 1] = '{"model": "ideogram/character", "input": {}}' end
    local path = dir .. "/" .. fleet .. ".jsonl"
    write(path, table.concat(lines, "\n") .. "\n")
    return path
  end

  it("submit, worker and batch: every item ended, results printed", function()
    local fleet = "clif" .. math.random(1, 1e9)
    warm(fleet)
    local rc, _, err = kie("submit --fleet " .. fleet .. " " .. q(jsonl(4, fleet, true)))
    local out
    assert.equals(2, rc, err)
    assert.matches("request 5", err)
    rc, out, err = kie("submit --fleet " .. fleet .. " " .. q(jsonl(4, fleet)))
    assert.equals(0, rc, err)
    local id = out:match("^(%S+)\n$")
    assert.is_string(id)
    rc, out, err = kie("worker --fleet " .. fleet .. " --batch " .. id .. " -c 2 --max-interval 0.1")
    assert.equals(0, rc, err)
    assert.equals(id .. ": 4 items, 3 done, 1 failed\n", out)
    assert.matches("kie: batch " .. id:gsub("%p", "%%%0") .. ": 4/4 ended %(3 done, 1 failed%)", err)
    rc, out, err = kie("batch --fleet " .. fleet .. " " .. id)
    assert.equals(0, rc, err)
    assert.matches("^" .. id:gsub("%p", "%%%0") .. ": 4 items, 3 done, 1 failed, 0 not ended\n", out)
    assert.matches("\n2  failed  %S+  task_failed: ", out)
    assert.matches("\n1  done  %S+  http://", out)
    rc, out = kie("--json batch --fleet " .. fleet .. " " .. id)
    assert.equals(0, rc)
    local st = core.decode(out)
    assert.equals(4, st.total)
    assert.equals("task_failed", st.results[2].kind)
    rc, out, err = kie("batch --fleet " .. fleet .. " nope")
    assert.equals(3, rc)
    assert.matches("no batch nope", err)
    assert.equals("", out)
    rc, out, err = kie("worker --fleet " .. fleet)
    assert.equals("", out)
    assert.equals(2, rc)
    assert.matches("either %-%-batch ID or %-%-all", err)
  end)

  it("Ctrl-C: the worker exits 130 once its creates in flight are recorded; another worker ends the batch", function()
    local fleet = "clii" .. math.random(1, 1e9)
    warm(fleet)
    local _, out = kie("submit --fleet " .. fleet .. " " .. q(jsonl(3, fleet)))
    local id = out:match("^(%S+)\n$")
    m:config{ latency = { min = 0.6, max = 0.6 } }
    local base = dir .. "/int"
    local prefix = "env KIE_API_KEY=" .. q(KEY) .. " KIE_BASE_URL=" .. q(m.url) .. " KIE_REDIS_URL=" .. q(srv.url)
      .. " LUA_PATH=" .. q(package.path) .. " LUA_CPATH=" .. q(package.cpath) .. " "
    os.execute("(" .. prefix .. LUA .. " bin/kie worker --lease 1 --max-interval 0.1 --fleet " .. fleet
      .. " --batch " .. id .. " >" .. q(base .. ".out") .. " 2>" .. q(base .. ".err")
      .. " </dev/null & echo $! >" .. q(base .. ".pid") .. "; wait $!; echo $? >" .. q(base .. ".rc")
      .. ") >/dev/null 2>&1 &")
    for _ = 1, 400 do
      if m:count("/api/v1/jobs/createTask") > 0 then break end
      core.sleep(0.02)
    end
    core.sleep(0.2) -- creates in flight
    os.execute("kill -INT " .. assert(tonumber(read(base .. ".pid"))))
    local rc
    for _ = 1, 400 do
      rc = tonumber(read(base .. ".rc") or "")
      if rc then break end
      core.sleep(0.05)
    end
    m:config{ latency = false }
    assert.equals(130, rc, read(base .. ".err"))
    assert.matches("kie: interrupted; the creates in flight were answered and recorded", read(base .. ".err"))
    local sent = m:count("/api/v1/jobs/createTask")
    assert.is_true(sent >= 1)
    local rc2, out2, err2 = kie("worker --lease 1 --max-interval 0.1 --fleet " .. fleet .. " --batch " .. id)
    assert.equals(0, rc2, err2)
    assert.equals(id .. ": 3 items, 2 done, 1 failed\n", out2)
    assert.equals(3, m:count("/api/v1/jobs/createTask")) -- each created once
  end)
end)
