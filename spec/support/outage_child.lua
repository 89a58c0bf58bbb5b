-- One worker of the Redis outage proof (spec/support/fleet_outage.lua): a fleet
-- client paced at the account's limits, with the fleet journal and its own journal
-- file, creates and waits tasks until wall-clock time STOP_AT. A create or a wait
-- that failed with kind `fleet` (Redis down: nothing was sent) is tried again, the
-- create with the same body (so one sent twice shows in the mock's log). Then it
-- resumes (until Redis answers) and waits what it is given.
--   lua outage_child.lua MOCK_URL REDIS_URL NAME TAG JOURNAL STOP_AT LIMIT WINDOW LEASE
-- One line per event, with the wall time T:
--   created ID T | finished ID STATE T | claimed ID T | unknown INTENT T |
--   err KIND T MESSAGE | done T
local kie = require "kie"
local socket = require "socket"

local url, redis_url, name, tag, journal, stop_at, limit, window, lease = ...
stop_at, limit, window, lease = tonumber(stop_at), tonumber(limit), tonumber(window), tonumber(lease)
io.stdout:setvbuf("line")

local client = kie.new{ api_key = "sk-fleet-outage", base_url = url, timeout = 10, max_retries = 2,
  journal = journal,
  rate_limits = { create = { limit = limit, window = window }, poll = { limit = 10, window = 1 } },
  fleet = { redis = redis_url, name = name, timeout = 0.5, connect_timeout = 0.5, lease = lease } }

local function say(fmt, ...) print((fmt):format(...)) end
local function now() return socket.gettime() end

local function fail(err) -- (a fleet error that is not retryable shows as kind "fleet-final")
  local kind = err.kind == "fleet" and err.retryable ~= true and "fleet-final" or err.kind
  say("err %s %.3f %s", kind, now(), (tostring(err.message):gsub("\n", " ")))
end

-- Waits on `id` until it ends, through Redis outages; `until_t` bounds it.
local function wait(id, until_t)
  while now() < until_t do
    local info, err = client:wait(id, { timeout = 20, interval = 0.05, max_interval = 0.2 })
    if info then say("finished %s %s %.3f", id, info.state, now()) return end
    fail(err)
    if err.kind ~= "fleet" then return end
    socket.sleep(0.1)
  end
end

local i = 1
while now() < stop_at do
  local task, err = client:create_task{ model = "ideogram/character",
    callBackUrl = url .. "/_mock/callback_sink",
    input = { prompt = tag .. " " .. i, reference_image_urls = { "https://example.com/ref.png" } } }
  if task then
    say("created %s %.3f", task.taskId, now())
    wait(task.taskId, stop_at + 30)
    i = i + 1
  else
    fail(err)
    if err.kind == "fleet" then socket.sleep(0.05) else i = i + 1 end
  end
end

-- what this worker's file or the fleet left: taken over and waited
local deadline = now() + 30
while now() < deadline do
  local list, err = client:resume()
  if list then
    for _, e in ipairs(list) do
      if e.taskId then
        say("claimed %s %.3f", e.taskId, now())
        wait(e.taskId, deadline)
      else
        say("unknown %s %.3f", e.intent, now())
      end
    end
    break
  end
  fail(err)
  socket.sleep(0.1)
end
say("done %.3f", now())
client:close()
