-- examples/host: a C program embedding Lua 5.4 or LuaJIT runs 100 kie.ai jobs
-- from a 60 Hz frame loop against a slow mock. Every job must complete and the
-- host must exit 0. The frame timings are printed, never asserted (a loaded
-- machine is slow, not wrong).
local mock = require "spec.support.mock"

local KEY = "sk-host-spec-5e07"
local TASKS = 100
local CREATE, RECORD = "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo"

local util = require "spec.support.util"
local sh_quote, run = util.quote, util.run

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local ROOT = (function()
  local p = io.popen("pwd")
  local dir = p:read("*l")
  p:close()
  return dir
end)()

local VARIANTS = {
  { name = "lua5.4", build = "lua5.4", header = "/usr/include/lua5.4/lua.h",
    flags = "-I/usr/include/lua5.4", libs = "-llua5.4" },
  { name = "luajit", build = "luajit", header = "/usr/include/luajit-2.1/lua.h",
    flags = "-I/usr/include/luajit-2.1", libs = "-lluajit-5.1" },
  -- the same Lua 5.4 host with a 0.25 ms per-frame work budget for step
  { name = "lua5.4, step budget 0.25 ms", build = "lua5.4", header = "/usr/include/lua5.4/lua.h",
    flags = "-I/usr/include/lua5.4", libs = "-llua5.4", budget = 0.25 },
}

local CFLAGS = "-O2 -g -std=c99 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes"

-- Builds kie.core for v (make is a no-op when it is up to date) and the host.
local function build(v)
  local ok, out = run("make -s build LUA=" .. v.build)
  assert(ok, "make LUA=" .. v.build .. " failed:\n" .. out)
  local dir = ROOT .. "/build/host-" .. v.build
  local exe = dir .. "/host"
  ok, out = run("mkdir -p " .. sh_quote(dir) .. " && cc " .. CFLAGS .. " " .. v.flags .. " "
    .. sh_quote(ROOT .. "/examples/host/host.c") .. " -o " .. sh_quote(exe) .. " " .. v.libs .. " -lm")
  assert(ok, "building the host for " .. v.name .. " failed:\n" .. out)
  return exe, out
end

-- The key=value pairs of the host's last line.
local function figures(out)
  local last
  for line in out:gmatch("[^\n]+") do
    if line:match("^frames=") then last = line end
  end
  assert(last, "no figures line in the host's output:\n" .. out)
  local f = {}
  for k, v in last:gmatch("(%w[%w_]*)=(%S+)") do f[k] = tonumber(v) or v end
  return f, last
end

describe("examples/host (C host, 60 Hz frame loop) #examples", function()
  local m

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.5 }
  end)
  lazy_teardown(function()
    if m then m:stop() end
  end)

  it("gives up with exit status 1 at the frame cap, figures still printed", function()
    local v = VARIANTS[1]
    if not exists(v.header) then return pending(v.header .. " is missing") end
    local exe = build(v)
    m:reset()
    m:fault{ path = CREATE, fault = "delay", seconds = 1, times = -1 }
    local ok, out, rc = run("KIE_BASE_URL=" .. sh_quote(m.url) .. " KIE_API_KEY=" .. sh_quote(KEY)
      .. " KIE_TASKS=10 KIE_MAX_FRAMES=5 " .. sh_quote(exe) .. " " .. sh_quote(ROOT))
    assert.is_false(ok)
    assert.equals(1, rc)
    local f = figures(out)
    assert.equals(5, f.frames)
    assert.equals(0, f.completed)
    assert.equals(10, f.tasks)
    assert.matches("gave up after 5 frames", out)
  end)

  for _, v in ipairs(VARIANTS) do
    it("completes " .. TASKS .. " slow jobs without blocking the loop (" .. v.name .. ")", function()
      if not exists(v.header) then
        return pending(v.header .. " is missing (install the " .. v.name .. " dev package)")
      end
      local exe, warnings = build(v)
      assert.equals("", warnings) -- the example compiles without a warning
      m:reset()
      -- every response is slow: a blocking call in frame() would stall for seconds
      m:fault{ path = CREATE, fault = "delay", seconds = 1, times = -1 }
      m:fault{ path = RECORD, fault = "delay", seconds = 0.5, times = -1 }
      local ok, out, rc = run("KIE_BASE_URL=" .. sh_quote(m.url) .. " KIE_API_KEY=" .. sh_quote(KEY)
        .. " KIE_TASKS=" .. TASKS .. " KIE_MAX_FRAMES=3600 "
        .. (v.budget and ("KIE_STEP_BUDGET_MS=" .. v.budget .. " ") or "")
        .. (exists("/usr/bin/timeout") and "timeout 180 " or "")
        .. sh_quote(exe) .. " " .. sh_quote(ROOT))
      local f, line = figures(out)
      io.stderr:write("\n# host ", v.name, ": ", line, "\n")
      assert.is_true(ok, "host exited with " .. tostring(rc) .. ":\n" .. out)
      assert.equals(TASKS, f.tasks)
      assert.equals(TASKS, f.completed)
      assert.equals(0, f.failed)
      assert.equals(TASKS, m:count(CREATE))
      assert.is_true(f.frames > 0)
      assert.is_number(f.step_max_ms)
      assert.is_number(f.step_p99_ms)
    end)
  end
end)
