--- The half of `kie.ngx` that runs in nginx's worker threads.
--
-- `ngx.run_worker_thread(pool, "kie.ngx_worker", "call", ...)` runs `call` in a
-- separate Lua VM taken from ngx_lua's worker-thread VM pool (one VM serves one
-- task at a time; VMs are reused). Only plain data crosses: strings, numbers,
-- booleans, nil and tables without metatables. This module keeps one `kie.core`
-- client per VM per option set in an upvalue, so connections (keep-alive, TLS
-- sessions) live across calls made through the same VM.
--
-- Not for direct use: `kie.ngx` is the API.
-- @module kie.ngx_worker

local core = require "kie.core"

local type, pairs, next, setmetatable, error, tostring, select =
  type, pairs, next, setmetatable, error, tostring, select

local M = {}

-- Tables marked to be sent as JSON objects (`kie.object`) lose their metatable
-- on the way here; `kie.ngx` marks them with this key instead.
local OBJECT_KEY = "\0kie.object"
local OBJECT_MT = { __jsontype = "object" }
M.OBJECT_KEY = OBJECT_KEY

local unpack = table.unpack or unpack

local MAX_CLIENTS = 16 -- distinct option sets kept per VM

local clients, nclients = {}, 0

local function restore(v, depth)
  if type(v) ~= "table" then return v end
  if depth > 64 then error("kie.ngx: request nested too deeply", 0) end
  if v[OBJECT_KEY] then
    v[OBJECT_KEY] = nil
    setmetatable(v, OBJECT_MT)
  end
  for _, child in pairs(v) do restore(child, depth + 1) end
  return v
end

-- The cached client for `ckey` (a digest of the options, made by kie.ngx).
local function client_for(ckey, opts)
  local c = clients[ckey]
  if c then return c end
  if nclients >= MAX_CLIENTS then
    -- many option sets through one VM: start over rather than grow without bound
    local k, old = next(clients)
    while k do
      old:close()
      clients[k] = nil
      k, old = next(clients)
    end
    nclients = 0
  end
  c = core.new(opts)
  clients[ckey] = c
  nclients = nclients + 1
  return c
end

-- core client methods that never cross: the async machinery and lifetime
local REFUSED = { step = true, result = true, cancel = true, poll_timeout = true, wakeup = true,
  pending = true, progress = true, close = true }

--- Runs one blocking core call: `name` is a core client method (create_task,
-- get_task, call, fetch ...), `...` its arguments. With `deadline` (by
-- `kie.core.now`, which every thread of the process shares), the last argument
-- is the call's timeout and becomes what is left until the deadline; a deadline
-- already past sends nothing (kind `timeout`). Returns what the core returns
-- (`result` or `nil, err`), plain tables only.
function M.call(ckey, opts, deadline, name, ...)
  if type(name) ~= "string" or REFUSED[name] or name:find("_start$") then
    error("kie.ngx_worker: refused call '" .. tostring(name) .. "'", 0)
  end
  local h = client_for(ckey, opts)
  local fn = h[name]
  if type(fn) ~= "function" then
    error("kie.ngx_worker: kie.core has no client method '" .. name .. "'", 0)
  end
  local n = select("#", ...)
  if n == 0 then return fn(h) end
  local args = { ... }
  for i = 1, n do args[i] = restore(args[i], 0) end
  if deadline then
    local left = deadline - core.now()
    if left <= 0 then
      return nil, { kind = "timeout", op = name, retryable = true, message = name
        .. ": the deadline passed while the call waited for a worker thread; not sent" }
    end
    args[n] = left
  end
  return fn(h, unpack(args, 1, n))
end

--- `kie.core.append_line` (journal writes fsync: never on the event loop).
function M.append_line(path, line)
  return core.append_line(path, line)
end

--- How many clients this VM keeps (for tests).
function M.stats()
  return { clients = nclients }
end

return M
