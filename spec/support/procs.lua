-- Process helpers for the reliability specs (journal crash, forwarder): start a
-- Lua script in a separate process with the interpreter and module paths of the
-- running one, find its pid, kill it (only by that pid), read its output.
-- Plain Lua 5.1 - 5.4 + LuaSocket.

local socket = require "socket"
local util = require "spec.support.util"

local M = {}

local shell_quote = util.quote
M.quote = shell_quote
M.read_file = util.read_file

local function read_cmd(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a") or ""
  p:close()
  return out
end

--- The pid of this Lua process (the parent of the shell io.popen starts).
function M.self_pid()
  return tonumber((read_cmd("echo $PPID"):match("%d+")))
end

--- The interpreter running this process (lua5.4, luajit, ...), as an absolute path.
function M.interpreter()
  local pid = M.self_pid()
  local exe = read_cmd("readlink /proc/" .. pid .. "/exe"):gsub("%s+$", "")
  if exe == "" then exe = "lua5.4" end
  return exe
end

--- A shell command line that runs `script` with `args` in a new interpreter
-- whose package.path/cpath are this process's own.
function M.lua_command(script, args)
  local setup = string.format("package.path=%q; package.cpath=%q", package.path, package.cpath)
  local parts = { shell_quote(M.interpreter()), "-e", shell_quote(setup), shell_quote(script) }
  for _, a in ipairs(args or {}) do parts[#parts + 1] = shell_quote(a) end
  return table.concat(parts, " ")
end

--- Starts `cmd` in the background with stdout/stderr to files; returns its pid.
function M.spawn(cmd, out_path, err_path)
  local line = "exec " .. cmd .. " >" .. shell_quote(out_path) .. " 2>" .. shell_quote(err_path)
  local out = read_cmd("(" .. line .. ") </dev/null & echo $!")
  return tonumber(out:match("%d+"))
end

--- Is `pid` running (zombies count as gone)?
function M.alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return false end
  local stat = f:read("*a") or ""
  f:close()
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end

--- Sends `sig` (default KILL) to `pid` and waits until it is gone.
function M.kill(pid, sig, timeout)
  os.execute("kill -" .. (sig or "KILL") .. " " .. tonumber(pid) .. " 2>/dev/null")
  local deadline = socket.gettime() + (timeout or 5)
  while M.alive(pid) and socket.gettime() < deadline do socket.sleep(0.01) end
  return not M.alive(pid)
end

--- Polls `path` until `pattern` matches its content (returns the capture) or
-- `timeout` seconds pass (returns nil).
function M.wait_for(path, pattern, timeout)
  local deadline = socket.gettime() + (timeout or 10)
  repeat
    local s = M.read_file(path)
    local cap = s and s:match(pattern)
    if cap then return cap end
    socket.sleep(0.01)
  until socket.gettime() > deadline
  return nil
end

--- A TCP port on 127.0.0.1 nothing listens on (bound once, then released).
function M.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- A temporary file name (the file itself removed).
function M.tmpname(suffix)
  local p = os.tmpname()
  os.remove(p)
  return p .. (suffix or "")
end

return M
