-- The scripts in examples/, run as a user would without KIE_API_KEY: each starts
-- the built-in mock kie.ai server itself.

local PNG = "\137PNG\r\n\26\n"

-- Runs `lua5.4 <script>` from the repository root; returns stdout and whether it exited 0.
local function run(script)
  -- the examples always load the plain Lua 5.4 build, whichever build this suite uses
  assert.truthy(os.execute("env -u LD_PRELOAD make -s build LUA=lua5.4 >/dev/null 2>&1"))
  local p = assert(io.popen("env -u KIE_API_KEY -u KIE_WEBHOOK_KEY -u LD_PRELOAD lua5.4 "
    .. script .. " 2>/dev/null"))
  local out = p:read("*a")
  local ok = p:close()
  return out, ok
end

local function head(path, n)
  local f = assert(io.open(path, "rb"))
  local h = f:read(n)
  f:close()
  return h
end

describe("examples #examples", function()
  it("batch.lua downloads one PNG per prompt and prints every path", function()
    local out, ok = run("examples/batch.lua")
    assert.truthy(ok, out)
    local paths, tasks = {}, {}
    for line in out:gmatch("[^\n]+") do paths[#paths + 1] = line end
    assert.equals(6, #paths, out) -- six prompts, one image each
    for _, path in ipairs(paths) do
      local task = path:match("^out/(task_[%w_]+)%-1%.png$")
      assert.truthy(task, "not a result path: " .. path)
      assert.is_nil(tasks[task], "task printed twice: " .. task)
      tasks[task] = true
      assert.equals(PNG, head(path, 8))
      os.remove(path)
    end
  end)

  it("fleet_batch.lua submits a batch to Redis, works on it and prints every item done #fleet", function()
    assert.truthy(os.execute("env -u LD_PRELOAD make -s build-fleet LUA=lua5.4 >/dev/null 2>&1"))
    local out, ok = run("examples/fleet_batch.lua")
    assert.truthy(ok, out)
    local n = 0
    for line in out:gmatch("[^\n]+") do
      n = n + 1
      assert.matches("^" .. n .. "\tdone\ttask_[%w_]+\thttps?://", line)
    end
    assert.equals(4, n, out)
  end)

  it("callback_receiver.lua verifies the mock's signed callback", function()
    local out, ok = run("examples/callback_receiver.lua")
    assert.truthy(ok, out)
    local task, state = out:match("^verified (task_[%w_]+) (%a+)\n")
    assert.truthy(task, out)
    assert.equals("success", state)
    -- then the result URLs of that very task
    assert.matches("\nhttps?://127%.0%.0%.1:%d+/[^\n]*" .. task .. "[^\n]*\n", out)
  end)

  it("fleet_callbacks.lua: callbacks taken by one fleet client end the waits of another, one read each", function()
    local out, ok = run("examples/fleet_callbacks.lua")
    assert.truthy(ok, out)
    local woken = {}
    for task in out:gmatch("wait woken: (task_[%w_]+) success http") do woken[#woken + 1] = task end
    assert.equals(2, #woken, out)
    for _, task in ipairs(woken) do assert.matches("callback delivered: " .. task .. " success\n", out) end
    local reads = tonumber(out:match("\nstatus reads: (%d+) for 2 tasks\n$"))
    assert.truthy(reads and reads >= 2 and reads <= 4, out) -- a confirmation each (a poll, at most)
  end)

  it("testing.lua runs its checks against kie.testing's fake and passes them all", function()
    local out, ok = run("examples/testing.lua")
    assert.truthy(ok, out)
    assert.not_matches("FAIL", out)
    assert.equals(7, select(2, ("\n" .. out):gsub("\nok  ", "")), out) -- one line per check
    assert.matches("\nall passed\n$", out)
  end)
end)
