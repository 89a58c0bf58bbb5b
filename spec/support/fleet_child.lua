-- One worker process of the fleet specs: creates tasks against the mock through a
-- client paced by the fleet (mode "fleet") or by itself alone (mode "local", the
-- negative control), starting at wall-clock time start_at.
--   lua fleet_child.lua MOCK_URL MODE REDIS_URL NAME LIMIT WINDOW START_AT COUNT UNTIL TAG
-- COUNT creates, each tried until it got an answer other than kind `fleet` (Redis
-- down: tried again after 50 ms) or wall-clock time UNTIL passed. One line per try:
--   ok <tag> <wall before> <wall after>  |  err <kind> <wall before> <wall after>
local kie = require "kie"
local socket = require "socket"

local url, mode, redis_url, name, limit, window, start_at, count, stop_at, tag = ...
limit, window = tonumber(limit), tonumber(window)
start_at, count, stop_at = tonumber(start_at), tonumber(count), tonumber(stop_at)

local opts = { api_key = "sk-fleet-spec", base_url = url, timeout = 5, max_retries = 0,
  rate_limits = { create = { limit = limit, window = window }, poll = false } }
if mode == "fleet" then opts.fleet = { redis = redis_url, name = name, timeout = 1 } end
local client = kie.new(opts)

local wait = start_at - socket.gettime()
if wait > 0 then socket.sleep(wait) end
io.stdout:setvbuf("line")
local i = 0
while i < count and socket.gettime() < stop_at do
  local t0 = socket.gettime()
  local task, err = client:create_task{ model = "ideogram/character",
    input = { prompt = tag .. " " .. i, reference_image_urls = { "https://example.com/ref.png" } } }
  local t1 = socket.gettime()
  if task then
    print(("ok %s %.3f %.3f"):format(tag, t0, t1))
    i = i + 1
  else
    print(("err %s %.3f %.3f"):format(err.kind, t0, t1))
    if err.kind == "fleet" then socket.sleep(0.05) else i = i + 1 end
  end
end
client:close()
