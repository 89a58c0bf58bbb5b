-- lua-kie under benchmark. Run from the repository root:
--   lua5.4 bench/clients/ours.lua MODE URL N [INFLIGHT] [CA_FILE]
-- MODE: seq        N x (create_task + get_task) through kie.new (the public API),
--                  nested param/resultJson decoded, one connection
--       seq-core   the same through kie.core directly (no validation, no retry layer)
--       conc       N create_task_async with INFLIGHT in flight, driven by client:step
--       conc-core  N core:create_task_start with INFLIGHT in flight, core:step/result
-- Prints "requests=<n> seconds=<s>" (time measured in-process, startup excluded).
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("BENCH_CPATH") or "./build/lua5.4/?.so") .. ";" .. package.cpath

local bodies = dofile("bench/bodies.lua")
local kie = require "kie"
local core = require "kie.core"

local mode, url, n, inflight, ca = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4] or "32"), arg[5]
if ca == "" then ca = nil end
assert(mode and url and n, "usage: ours.lua MODE URL N [INFLIGHT] [CA_FILE]")

local function fail(...)
  io.stderr:write("ours: ", table.concat({ ... }, " "), "\n")
  os.exit(1)
end

local function check_info(info, err)
  if not info then fail("get_task:", tostring(err)) end
  if info.state ~= "success" or info.resultUrls[1] ~= bodies.RESULT_URL
    or type(info.param) ~= "table" or info.param.input.num_images ~= "1" then
    fail("get_task: unexpected task")
  end
end

local requests = 0
local t0, t1
if mode == "seq" or mode == "conc" then
  local client = kie.new{ api_key = bodies.API_KEY, base_url = url, ca_file = ca,
    rate_limits = { create = false, poll = false } }
  local req = bodies.request()
  if mode == "seq" then
    t0 = core.now()
    for _ = 1, n do
      local task, err = client:create_task(req)
      if not task or task.taskId ~= bodies.TASK_ID then fail("create_task:", tostring(err)) end
      check_info(client:get_task(task.taskId))
    end
    t1 = core.now()
    requests = 2 * n
  else
    local started, done, live = 0, 0, 0
    local function cb(task, err)
      if not task or task.taskId ~= bodies.TASK_ID then fail("create_task_async:", tostring(err)) end
      done, live = done + 1, live - 1
    end
    t0 = core.now()
    while done < n do
      while live < inflight and started < n do
        client:create_task_async(req, cb)
        started, live = started + 1, live + 1
      end
      client:step(100)
    end
    t1 = core.now()
    requests = n
  end
  client:close()
elseif mode == "seq-core" or mode == "conc-core" then
  local c = core.new{ api_key = bodies.API_KEY, base_url = url, ca_file = ca }
  local req = bodies.request()
  if mode == "seq-core" then
    t0 = core.now()
    for _ = 1, n do
      local task, err = c:create_task(req)
      if not task or task.taskId ~= bodies.TASK_ID then fail("create_task:", tostring(err and err.message)) end
      check_info(c:get_task(task.taskId))
    end
    t1 = core.now()
    requests = 2 * n
  else
    local started, done, live = 0, 0, 0
    t0 = core.now()
    while done < n do
      while live < inflight and started < n do
        local id, err = c:create_task_start(req)
        if not id then fail("create_task_start:", tostring(err and err.message)) end
        started, live = started + 1, live + 1
      end
      local _, ids = c:step(100)
      if ids then
        for i = 1, #ids do
          local task, err = c:result(ids[i])
          if not task or task.taskId ~= bodies.TASK_ID then fail("create_task:", tostring(err and err.message)) end
          done, live = done + 1, live - 1
        end
      end
    end
    t1 = core.now()
    requests = n
  end
  c:close()
else
  fail("unknown mode " .. tostring(mode))
end
print(string.format("requests=%d seconds=%.6f", requests, t1 - t0))
