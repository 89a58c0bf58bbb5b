-- One batch worker process of the fleet batch specs: client:work on one batch
-- against the mock, pacing and items shared through Redis.
--   lua batch_worker_child.lua MOCK_URL REDIS_URL NAME BATCH CONCURRENCY LEASE
-- Prints "started" once working, then "end <total> <done> <failed>" (or "err <kind>").
local kie = require "kie"

local url, redis_url, name, batch, conc, lease = ...
local client = kie.new{ api_key = "sk-fleet-batch-spec", base_url = url, timeout = 5, max_retries = 1,
  rate_limits = { create = { limit = 20, window = 1 }, poll = { limit = 200, window = 1 } },
  fleet = { redis = redis_url, name = name, timeout = 2 } }
io.stdout:setvbuf("line")
print("started")
local st, err = client:work{ batch = batch, concurrency = tonumber(conc), lease = tonumber(lease),
  max_interval = 0.2 }
if st then
  print(("end %d %d %d"):format(st.total, st.done, st.failed))
else
  print("err " .. tostring(err.kind) .. " " .. tostring(err.message))
end
client:close()
