-- One worker of the kill -9 proof (spec/support/fleet_kill.lua): a fleet client with
-- the fleet journal that claims what dead workers left (resume(), at start and then
-- every RESUME_EVERY seconds) and waits on it, and creates and waits its own tasks
-- until wall-clock time STOP_AT.
--   lua fjournal_child.lua MOCK_URL REDIS_URL NAME TAG SEED STOP_AT LEASE RESUME_EVERY
-- One line per event: created ID | claimed ID | unknown INTENT | finished ID STATE |
--   err KIND (a create or a wait that failed) | done
local kie = require "kie"
local socket = require "socket"

local url, redis_url, name, tag, seed, stop_at, lease, every = ...
stop_at, lease, every = tonumber(stop_at), tonumber(lease), tonumber(every)
math.randomseed(tonumber(seed))
io.stdout:setvbuf("line")

local client = kie.new{ api_key = "sk-fleet-kill", base_url = url, timeout = 5, max_retries = 2,
  rate_limits = { create = false, poll = false },
  fleet = { redis = redis_url, name = name, timeout = 1, lease = lease } }

local function wait(id)
  local info, err = client:wait(id, { timeout = 30, interval = 0.05, max_interval = 0.2 })
  if info then print("finished " .. id .. " " .. info.state)
  else print("err " .. err.kind .. " " .. id) end
end

local function resume()
  local list, err = client:resume()
  if not list then print("err " .. err.kind) return end
  for _, e in ipairs(list) do
    if e.taskId then
      print("claimed " .. e.taskId)
      wait(e.taskId)
    else
      print("unknown " .. e.intent)
    end
  end
end

resume()
local next_resume, i = socket.gettime() + every, 0
while socket.gettime() < stop_at do
  i = i + 1
  local task, err = client:create_task{ model = "ideogram/character",
    callBackUrl = url .. "/_mock/callback_sink",
    input = { prompt = tag .. " " .. i, reference_image_urls = { "https://example.com/ref.png" } } }
  if task then
    print("created " .. task.taskId)
    wait(task.taskId)
  else
    print("err " .. err.kind)
    socket.sleep(0.05)
  end
  if socket.gettime() >= next_resume then
    resume()
    next_resume = socket.gettime() + every
  end
end
print("done")
client:close()
