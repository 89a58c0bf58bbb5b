-- Keeps a mock kie.ai server (spec/support/mock.lua: nginx on 127.0.0.1) running
-- for examples/love/run.sh, with slow responses so that a blocking call would
-- show. Run from the repository root:
--   KIE_API_KEY=k lua5.4 examples/love/serve_mock.lua URL_FILE STOP_FILE OWNER_PID
-- Writes the mock's URL to URL_FILE, then serves until STOP_FILE exists or
-- OWNER_PID is gone. Delays (seconds) from env: KIE_MOCK_CREATE_DELAY (1),
-- KIE_MOCK_READ_DELAY (0.5), KIE_MOCK_PACE (0.5 per task state).
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
local mock = require "spec.support.mock"
local socket = require "socket"

local url_file, stop_file, owner = arg[1], arg[2], tonumber(arg[3])
assert(url_file and stop_file and owner, "usage: serve_mock.lua URL_FILE STOP_FILE OWNER_PID")
local function num(name, dflt) return tonumber(os.getenv(name) or "") or dflt end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local m = mock.start{ api_key = assert(os.getenv("KIE_API_KEY"), "KIE_API_KEY is not set"),
  pace = num("KIE_MOCK_PACE", 0.5) }
m:fault{ path = "/api/v1/jobs/createTask", fault = "delay", seconds = num("KIE_MOCK_CREATE_DELAY", 1), times = -1 }
m:fault{ path = "/api/v1/jobs/recordInfo", fault = "delay", seconds = num("KIE_MOCK_READ_DELAY", 0.5), times = -1 }

local f = assert(io.open(url_file .. ".tmp", "w"))
f:write(m.url, "\n")
f:close()
assert(os.rename(url_file .. ".tmp", url_file))

while not exists(stop_file) and exists("/proc/" .. owner .. "/stat") do socket.sleep(0.1) end
io.stderr:write("serve_mock: ", m:count("/api/v1/jobs/createTask"), " creates, ",
  m:count("/api/v1/jobs/recordInfo"), " reads served\n")
m:stop()
