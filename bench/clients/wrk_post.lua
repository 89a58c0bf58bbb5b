-- wrk script: POST createTask only (the concurrent ceiling). Body and key from env.
-- luacheck: globals init request wrk
local body = os.getenv("BENCH_BODY") or "{}"
local key = os.getenv("BENCH_KEY") or "bench-key"
local req

function init()
  req = wrk.format("POST", "/api/v1/jobs/createTask", { ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json", ["Accept"] = "application/json" }, body)
end

function request()
  return req
end
