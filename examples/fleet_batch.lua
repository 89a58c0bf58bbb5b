-- A batch beyond one machine: the prompts go to the fleet's Redis as one batch
-- (client:submit), then this process works on it (client:work: each item
-- created once fleet-wide, then waited on); any number of `kie worker --batch ID`
-- processes, on any machine with the same Redis and fleet name, may help. The
-- results come from Redis (client:batch): one line per item on stdout.
--   lua5.4 examples/fleet_batch.lua      (no KIE_API_KEY / KIE_REDIS_URL: the mock
--                                         kie.ai server and a throwaway redis-server)
--   KIE_API_KEY=... KIE_REDIS_URL=redis://127.0.0.1:6379/0 lua5.4 examples/fleet_batch.lua
-- Run it from the repository root after `make build build-fleet`.
local env = dofile("examples/setup.lua").connect{ pace = 0.3, poll = 0.2 }

local kie = require "kie"

local redis_url, srv = os.getenv("KIE_REDIS_URL"), nil
if not redis_url or redis_url == "" then
  srv = require("spec.support.redis").start()
  redis_url = srv.url
  io.stderr:write("no KIE_REDIS_URL: using a throwaway redis-server at ", redis_url, "\n")
end

local opts = {}
for k, v in pairs(env.opts) do opts[k] = v end
opts.fleet = { redis = redis_url, name = os.getenv("KIE_FLEET") or "example" }
if env.mock then -- the mock has no account to protect: a short window (a new fleet waits one)
  opts.rate_limits = { create = { limit = 20, window = 1 } }
end
local client = kie.new(opts)

local PROMPTS = {
  "A lighthouse keeper's cat watching the sea, watercolor",
  "The same cat climbing the lighthouse stairs",
  "The cat asleep next to the great lamp",
  "The cat greeting a fishing boat at dawn",
}
local REFERENCE = "https://file.aiquickdraw.com/custom-page/akr/section-images/1755767145415pvz49dpi.webp"
local requests = {}
for i, prompt in ipairs(PROMPTS) do
  requests[i] = { model = "ideogram/character", input = { prompt = prompt, reference_image_urls = { REFERENCE } } }
end

local function stop(code)
  client:close()
  if srv then srv:close() end
  env.finish(code)
end

local id, err = client:submit(requests) -- every request validated first: nothing goes on a bad one
if not id then
  io.stderr:write("submit: ", tostring(err), "\n")
  stop(1)
end
io.stderr:write("batch ", id, ": help with `kie worker --batch ", id, "`\n")

local st
st, err = client:work{ batch = id, concurrency = 4, max_interval = env.mock and 0.2 or nil,
  on_progress = function(p)
    io.stderr:write(("\r%d/%d ended (%d failed)"):format(p.done + p.failed, p.total, p.failed))
  end }
io.stderr:write("\n")
if not st then
  io.stderr:write("work: ", tostring(err), "\n")
  stop(1)
end
for i, r in ipairs(st.results) do
  print(i, r.state, r.task_id or "-", r.urls and r.urls[1] or (tostring(r.kind) .. ": " .. tostring(r.message)))
end
stop(st.failed == 0 and 0 or 1)
