-- Stops this nginx when the process that launched it is gone (crash, kill -9,
-- os.exit without cleanup): every 0.5 s the worker checks the owner pid and,
-- if it no longer runs (or is a zombie), sends SIGTERM to its master and
-- removes the temp prefix.

local ffi = require "ffi"

pcall(ffi.cdef, "int kill(int pid, int sig);")
pcall(ffi.cdef, "int getppid(void);")

local M = {}

local function alive(pid)
  local fh = io.open("/proc/" .. pid .. "/stat", "r")
  if fh then
    local stat = fh:read("*l") or ""
    fh:close()
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= "Z" and state ~= "X"
  end
  if ffi.C.kill(pid, 0) == 0 then return true end
  return ffi.errno() == 1   -- EPERM: exists, not ours
end

function M.start()
  local cfg = require("store").config()
  local owner = tonumber(cfg.owner_pid)
  if not owner or owner <= 1 then return end
  local fired = false
  local ok, err = ngx.timer.every(0.5, function(premature)
    if premature or fired then return end
    if not alive(owner) then
      fired = true
      ngx.log(ngx.WARN, "kie mock: owner process ", owner, " is gone, shutting down")
      ffi.C.kill(ffi.C.getppid(), 15)
      -- nobody else will remove the temp prefix now
      local prefix = cfg.prefix
      if type(prefix) == "string" and prefix:match("^/[%w%._/%-]*/kie%-mock%.[%w]+$") then
        os.execute("rm -rf '" .. prefix .. "'")
      end
    end
  end)
  if not ok then ngx.log(ngx.ERR, "kie mock: watchdog timer: ", err) end
end

return M
