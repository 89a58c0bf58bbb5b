--- Logging through the client's `logger` option (never with the key), and the
-- retry loggers of each operation.
-- @submodule kie.Client

local tostring, pcall = tostring, pcall

local Client = {}

function Client:_log(level, message, fields)
  local logger = self._opts.logger
  if not logger then return end
  local ok, err = pcall(logger, level, message, fields or {})
  if not ok and level ~= "error" then
    io.stderr:write("kie: logger raised: ", tostring(err), "\n")
  end
end

-- The on_retry function of retry.call for operation `op`: one per client and op,
-- made on first use.
local function _retry_logger(self, op)
  local cache = self._retry_loggers
  local f = cache[op]
  if f then return f end
  f = function(err, attempt, delay)
    if not self._opts.logger then return end
    self:_log("warn", op .. ": retrying after " .. err.kind, {
      op = op, attempt = attempt, delay = delay, kind = err.kind, status = err.status,
      code = err.code, message = err.message,
    })
  end
  cache[op] = f
  return f
end

Client._retry_logger = _retry_logger
return Client
