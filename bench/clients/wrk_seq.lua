-- wrk script: the same job as the clients' sequential run, over each connection:
-- POST createTask, then GET recordInfo, alternating. Body and key come from env.
-- luacheck: globals init request wrk
local body = os.getenv("BENCH_BODY") or "{}"
local key = os.getenv("BENCH_KEY") or "bench-key"
local get_path = os.getenv("BENCH_GET_PATH") or "/api/v1/jobs/recordInfo?taskId=x"
local n = 0
local post, get

function init()
  local h = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json",
    ["Accept"] = "application/json" }
  post = wrk.format("POST", "/api/v1/jobs/createTask", h, body)
  get = wrk.format("GET", get_path, h)
end

function request()
  n = n + 1
  if n % 2 == 1 then return post end
  return get
end
