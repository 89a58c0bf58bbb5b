-- Small shell and file helpers shared by the specs, the mock's launcher and the
-- bench driver. Plain Lua 5.1 - 5.4 (free_port needs LuaSocket). Load it with
-- `require "spec.support.util"` from the repository root, or with dofile.
local M = {}

--- Quotes s for a POSIX shell.
function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Runs cmd in a shell without the sanitizer preload of the ASan run (children
-- such as mktemp, openssl, curl, nginx must not inherit it); returns ok, the
-- combined output, and the exit code, the same on every Lua version.
function M.run(cmd)
  local p = assert(io.popen("(unset LD_PRELOAD ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS; "
    .. cmd .. ") 2>&1; echo \"__rc=$?\""))
  local out = p:read("*a") or ""
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc == 0, out, rc
end

--- The whole file, or nil when it cannot be read.
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes data to path (raises when it cannot).
function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

--- A port free on 127.0.0.1 right now (LuaSocket).
function M.free_port()
  local s = assert(require("socket").bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- A new temporary directory named after prefix.
function M.tmpdir(prefix)
  local ok, out = M.run('mktemp -d "${TMPDIR:-/tmp}/' .. prefix .. '.XXXXXX"')
  assert(ok, "mktemp failed: " .. out)
  return (out:gsub("%s+$", ""))
end

return M
