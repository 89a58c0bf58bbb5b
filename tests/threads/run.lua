-- Runs tests/threads/threads (built by `make test-threads`) against the mock kie.ai
-- server and checks the mock saw exactly THREADS x ROUNDS creates.
--   lua5.4 tests/threads/run.lua BINARY [THREADS=8] [ROUNDS=100] [CPATH]
package.path = "./?.lua;./lua/?.lua;" .. package.path
local mock = require "spec.support.mock"

local bin = assert(arg[1], "usage: run.lua BINARY [THREADS] [ROUNDS] [CPATH]")
local threads = tonumber(arg[2] or "8")
local rounds = tonumber(arg[3] or "100")
local cpath = arg[4] or "./build/lua5.4/?.so"
local KEY = "sk-threads-2b7d"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local m = mock.start{ api_key = KEY, pace = 0.01, credits = 1e9 }
local ok, how, code = os.execute("KIE_THREADS_KEY=" .. q(KEY) .. " KIE_THREADS_CPATH=" .. q(cpath) .. " "
  .. q(bin) .. " " .. q(m.url) .. " " .. threads .. " " .. rounds)
local creates = m:count("/api/v1/jobs/createTask")
local gets = m:count("/api/v1/jobs/recordInfo")
m:stop()
local rc = (ok == true or ok == 0) and 0 or (code or 1)
print(string.format("threads: the mock saw %d creates and %d gets (want %d each)", creates, gets, threads * rounds))
if rc ~= 0 then
  print("threads: the program failed (" .. tostring(how) .. " " .. tostring(code) .. ")")
  os.exit(1)
end
if creates ~= threads * rounds or gets ~= threads * rounds then
  print("threads: request counts differ")
  os.exit(1)
end
print("threads: ok")
