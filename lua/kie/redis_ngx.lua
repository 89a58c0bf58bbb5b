--- The Redis transport of `kie.fleet` inside nginx: kie.redis's API (`connect`,
-- `conn:eval`, `conn:close`) over lua-resty-redis and ngx_lua's cosockets, so a
-- fleet call suspends only the request that makes it, never the worker.
--
-- * The library: `resty.redis` (OpenResty bundles it) or `nginx.redis` (Debian's
--   `lua-nginx-redis`, in /usr/share/lua/5.1: keep that in `lua_package_path`).
-- * A cosocket belongs to the request that opened it, so `connect` does no I/O and
--   every `eval` takes a socket from ngx_lua's keepalive pool for this Redis (named
--   after host, port, database and a digest of the password), connects it when new
--   (AUTH, SELECT), runs the script (EVALSHA, EVAL when Redis does not know it) and
--   puts it back. A socket that failed is closed, never pooled.
-- * Failures: `nil, {kind = "fleet", message, code?, retryable, timeout?}` as kie.redis
--   gives: I/O (refused, reset, timeout: `timeout = true`) retryable without `code`; a
--   Redis error reply with `code` (its first word). The connection is `pooled`:
--   kie.fleet retries an I/O failure but a timeout once (an old pooled socket Redis closed).
-- * Host names need nginx's `resolver`; give Redis's IP address otherwise.
-- @module kie.redis_ngx

local type, tostring, tonumber, ipairs, pcall, require, setmetatable, rawget, select =
  type, tostring, tonumber, ipairs, pcall, require, setmetatable, rawget, select
local unpack = table.unpack or unpack
local format, byte = string.format, string.byte

local M = {}

local POOL_SIZE = 64       -- idle sockets kept per worker and Redis
local IDLE_MS = 60000      -- how long an idle socket stays in the pool

local lib -- the lua-resty-redis module, loaded on first use

--- The lua-resty-redis module (`resty.redis`, else `nginx.redis`), or nil and a
-- message saying what to install.
function M.library()
  if lib then return lib end
  for _, name in ipairs{ "resty.redis", "nginx.redis" } do
    local ok, r = pcall(require, name)
    if ok and type(r) == "table" and r.new then
      lib = r
      return r
    end
  end
  return nil, "kie.ngx: option 'fleet' needs lua-resty-redis (OpenResty's resty.redis, or "
    .. "Debian's lua-nginx-redis as nginx.redis in lua_package_path)"
end

local function fail(message, code, retryable)
  return nil, { kind = "fleet", message = message, code = code, retryable = retryable }
end

local function hex(s)
  return (s:gsub(".", function(c) return format("%02x", byte(c)) end))
end

--- Parses a redis:// URL as kie.redis does: host, port (6379), database (0) and
-- the password of `redis://[user:password@]host[:port][/db]`; or nil and a message.
function M.parse_url(url)
  if type(url) ~= "string" or url:sub(1, 8) ~= "redis://" then
    return nil, "the URL must start with redis://"
  end
  local rest = url:sub(9)
  local authority, path = rest:match("^([^/]*)(.*)$")
  local password
  local at = authority:match("^.*()@")
  if at then
    password = authority:sub(1, at - 1):match("^[^:]*:(.+)$")
    authority = authority:sub(at + 1)
  end
  local host, port = authority:match("^(.*):([^:]*)$")
  if host then
    port = port:match("^%d+$") and tonumber(port)
    if not port or port < 1 or port > 65535 then return nil, "bad port" end
  else
    host, port = authority, 6379
  end
  if host == "" then return nil, "no host" end
  local db = 0
  if #path > 1 then
    db = path:sub(2):match("^%d+$") and tonumber(path:sub(2))
    if not db or db > 1000000 then return nil, "bad database number" end
  end
  return host, port, db, password
end

local Conn = {}
Conn.__index = Conn
Conn.__name = "kie.redis_ngx.Conn"

--- A connection for kie.fleet (no I/O). `opts`: `timeout`, `connect_timeout`
-- (seconds). Returns nil, err (kind fleet) for a bad URL or a missing library.
function M.connect(url, opts)
  local host, port, db, password = M.parse_url(url)
  if not host then return fail("Redis URL: " .. port, nil, false) end
  local r, lerr = M.library()
  if not r then return fail(lerr, nil, false) end
  local ngx = rawget(_G, "ngx")
  local digest = password and hex(ngx.sha1_bin(password)):sub(1, 16) or "-"
  return setmetatable({
    pooled = true, _host = host, _port = port, _db = db, _password = password,
    _timeout = (opts and opts.timeout or 2) * 1000,
    _connect_timeout = (opts and opts.connect_timeout or 2) * 1000,
    _pool = format("kie.fleet:%s:%d:%d:%s", host, port, db, digest),
    _shas = {},
  }, Conn)
end

-- A connected client from the pool (set up when new), or nil, err.
local function open(self)
  local red, err = lib:new()
  if not red then return fail("Redis: " .. tostring(err), nil, true) end
  red:set_timeout(self._connect_timeout)
  local ok
  ok, err = red:connect(self._host, self._port, { pool = self._pool })
  if not ok then return fail("Redis " .. self._host .. ":" .. self._port .. ": " .. tostring(err), nil, true) end
  red:set_timeout(self._timeout)
  if (red:get_reused_times() or 0) == 0 then
    local steps = {}
    if self._password then steps[#steps + 1] = { "auth", self._password } end
    if self._db ~= 0 then steps[#steps + 1] = { "select", self._db } end
    for _, step in ipairs(steps) do
      local r, e = red[step[1]](red, step[2])
      if not r then
        red:close()
        return fail(step[1]:upper() .. ": " .. tostring(e), r == false and tostring(e):match("^%S+") or nil, r == nil)
      end
    end
  end
  return red
end

-- The error of a reply `r, e` from lua-resty-redis: false = an error reply.
local function reply_error(r, e)
  if r == false then
    local code = tostring(e):match("^%S+")
    local transient = code == "LOADING" or code == "BUSY" or code == "TRYAGAIN" or code == "MASTERDOWN"
    return fail(tostring(e), code, transient)
  end
  local _, err = fail("Redis: " .. tostring(e), nil, true)
  if e == "timeout" then err.timeout = true end -- no answer in time: Redis may still run it
  return nil, err
end

-- Runs send(red) on a pooled client: its reply, or nil, err (kind fleet).
local function run(self, send)
  local red, err = open(self)
  if not red then return nil, err end
  local r, e = send(red)
  if r == nil then
    red:close() -- I/O failed: the socket's state is unknown
    return reply_error(r, e)
  end
  red:set_keepalive(IDLE_MS, POOL_SIZE)
  if r == false then return reply_error(r, e) end
  return r
end

--- Runs `script` with `nkeys` keys then the arguments (EVALSHA, else EVAL): the
-- script's reply, or nil, err (kind fleet).
function Conn:eval(script, nkeys, ...)
  local sha = self._shas[script]
  if not sha then
    sha = hex(rawget(_G, "ngx").sha1_bin(script))
    self._shas[script] = sha
  end
  local n, args = select("#", ...), { ... }
  return run(self, function(red)
    local r, e = red:evalsha(sha, nkeys, unpack(args, 1, n))
    if r == false and tostring(e):match("^NOSCRIPT") then
      r, e = red:eval(script, nkeys, unpack(args, 1, n))
    end
    return r, e
  end)
end

--- Runs one command (`conn:call("XREAD", ...)`, as kie.redis): its reply (a nil
-- reply is ngx.null), or nil, err (kind fleet). A blocking command (XREAD BLOCK)
-- must end within `timeout`.
function Conn:call(command, ...)
  local n, args = select("#", ...), { ... }
  return run(self, function(red)
    return red[command:lower()](red, unpack(args, 1, n))
  end)
end

--- Nothing to close: every call returns its socket to the pool.
function Conn:close() -- luacheck: ignore self
end

return M
