-- One waiting process of the fleet callback specs and bench: waits on task ids
-- with a fleet client (reads paced by the fleet's shared poll budget) and prints
-- one line per task as its wait returns:
--   done <task id> <state or error kind> <wall-clock time it returned>
--   lua wake_child.lua MOCK_URL REDIS_URL NAME MODE TIMEOUT ID...
-- MODE "spawn": every wait in a kie.spawn coroutine, one host loop calling step;
-- "block": blocking waits, one after another. Ends with "end".
local kie = require "kie"
local socket = require "socket"

local url, redis_url, name, mode, timeout = ...
local ids = { select(6, ...) }
timeout = tonumber(timeout)

local client = kie.new{ api_key = "sk-wake-spec", base_url = url, timeout = 10,
  fleet = { redis = redis_url, name = name },
  rate_limits = { create = false, poll = { limit = 10, window = 1 } } }
io.stdout:setvbuf("line")

local function report(id, info, err)
  print(("done %s %s %.6f"):format(id, info and info.state or err.kind, socket.gettime()))
end

if mode == "block" then
  for _, id in ipairs(ids) do report(id, client:wait(id, { timeout = timeout })) end
else
  local left = #ids
  for _, id in ipairs(ids) do
    kie.spawn(function()
      report(id, client:wait(id, { timeout = timeout }))
      left = left - 1
    end)
  end
  while left > 0 do client:step(20) end
end
print("end")
client:close()
