-- One worker of the fleet callback bench: runs COUNT tasks (create with a
-- callBackUrl, then wait) in kie.spawn coroutines on one fleet client, starting
-- one every 1/RATE s (RATE 0: all at once), reads paced by the fleet's shared poll
-- budget; one line per task as its wait returns:
--   done <task id> <state or error kind> <wall time it returned>
--   lua wake_runner.lua MOCK_URL REDIS_URL NAME CALLBACK_URL COUNT RATE TIMEOUT TAG
local kie = require "kie"
local socket = require "socket"

local url, redis_url, name, cb_url, count, rate, timeout, tag = ...
count, rate, timeout = tonumber(count), tonumber(rate), tonumber(timeout)

local client = kie.new{ api_key = "sk-wake-spec", base_url = url, timeout = 10,
  fleet = { redis = redis_url, name = name },
  rate_limits = { create = false, poll = { limit = 10, window = 1 } } }
io.stdout:setvbuf("line")

local left, started = count, 0
local t0 = socket.gettime()
local function one(i)
  local info, err = client:run{ model = "ideogram/character", callBackUrl = cb_url,
    input = { prompt = tag .. " " .. i, reference_image_urls = { url .. "/files/ref.png" } },
    wait = { timeout = timeout } }
  print(("done %s %s %.6f"):format(info and info.taskId or err.task_id or "-", info and info.state or err.kind,
    socket.gettime()))
  left = left - 1
end
while left > 0 do
  while started < count and (rate == 0 or socket.gettime() - t0 >= started / rate) do
    started = started + 1
    kie.spawn(one, started)
  end
  client:step(started < count and 5 or 20)
end
print("end")
client:close()
