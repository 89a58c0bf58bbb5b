--- Per-process randomness: seeds `math.random` once per process, and names
-- temporary files so that no two processes (or calls) pick the same one.
--
-- Lua 5.1 and LuaJIT start every process with the same `math.random` sequence,
-- so without a seed every nginx worker would jitter its retries alike and two
-- processes would pick the same temporary name. `require "kie"` seeds once per
-- process (from /dev/urandom, else time, clock, an address and the pid); a
-- client made in a forked process (an nginx worker whose master loaded kie)
-- seeds again, once. A program that wants a reproducible sequence seeds after
-- `require "kie"` (kie never reseeds a process it already seeded) or passes
-- `random =` to `kie.new`.
-- @module kie.seed
-- @local

local open, type, tostring, tonumber, pcall, rawget = io.open, type, tostring, tonumber, pcall, rawget
local floor, randomseed, random = math.floor, math.randomseed, math.random
local byte, match = string.byte, string.match

local M = {}

local TWO31 = 2147483648

--- This process's id (ngx.worker.pid in nginx, else /proc/self/stat), or nil
-- when it cannot be known. (No FFI declaration: a global `getpid` cdef would
-- clash with another library's.)
-- @treturn ?number
function M.pid()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and type(ngx.worker) == "table" and type(ngx.worker.pid) == "function" then
    local ok, pid = pcall(ngx.worker.pid)
    if ok and type(pid) == "number" then return pid end
  end
  local f = open("/proc/self/stat", "rb")
  if not f then return nil end
  local s = f:read(32)
  f:close()
  return tonumber(s and match(s, "^(%d+)"))
end

-- Two numbers below 2^31 from /dev/urandom, else from time, clock, a fresh
-- table's address and the pid.
local function _entropy(pid)
  local f = open("/dev/urandom", "rb")
  if f then
    local s = f:read(8)
    f:close()
    if s and #s == 8 then
      local a1, a2, a3, a4, b1, b2, b3, b4 = byte(s, 1, 8)
      return ((a1 % 128 * 256 + a2) * 256 + a3) * 256 + a4, ((b1 % 128 * 256 + b2) * 256 + b3) * 256 + b4
    end
  end
  local addr = tonumber(match(tostring({}), "0x(%x+)") or "0", 16) or 0
  local t = os.time() % TWO31
  local c = floor(os.clock() * 1e6) % TWO31
  return (t + c * 7919 + (pid or 0) * 104729) % TWO31, (addr + c) % TWO31
end

local seeded_pid -- the pid that seeded (false: seeded, pid unknown); nil: never

--- Seeds `math.random` unless this process already did (see the module text).
function M.ensure()
  local pid = M.pid() or false
  if seeded_pid ~= nil and seeded_pid == pid then return end
  seeded_pid = pid
  randomseed(_entropy(pid or nil))
end

local count = 0

--- A temporary path beside `path`, unique to this process and call:
-- `path .. ".part-<pid>-<n>-<random>"`.
-- @tparam string path
-- @treturn string
function M.temp_path(path)
  count = count + 1
  return path .. ".part-" .. tostring(M.pid() or "x") .. "-" .. count .. "-" .. tostring(random(1e9))
end

return M
