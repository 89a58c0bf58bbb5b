--- The redactor of server text that may echo the API key.
-- @module kie.redact

local type, tostring = type, tostring
local concat = table.concat

-- The slow redactor: only the key's length and a salted HMAC of it are kept, and
-- every window of that length is compared by HMAC (one HMAC per byte). nil when
-- the core cannot HMAC (a minimal fake core).
local function _hmac_redactor(core, key)
  local hmac = core.hmac_sha256_base64
  if type(hmac) ~= "function" or type(key) ~= "string" or key == "" then return nil end
  local salt = tostring({}) .. tostring(math.random()) .. tostring(os.time())
  local want, n = hmac(salt, key), #key
  return function(s)
    if type(s) ~= "string" or #s < n then return s end
    local out, i, from, last = {}, 1, 1, #s - n + 1
    while i <= last do
      if hmac(salt, s:sub(i, i + n - 1)) == want then
        out[#out + 1] = s:sub(from, i - 1)
        out[#out + 1] = "[redacted]"
        i = i + n
        from = i
      else
        i = i + 1
      end
    end
    if from == 1 then return s end
    out[#out + 1] = s:sub(from)
    return concat(out)
  end
end

-- A redactor for server text the core hands over unredacted (a task's failMsg,
-- failCode); the key stays in the core. handle:redact (kie.core's client) is one
-- linear pass in C; without it (an injected fake core), or once the handle is
-- closed and answers nil, the HMAC redactor does it. nil when neither can.
local function _redactor(core, key, handle)
  local slow = _hmac_redactor(core, key)
  local fast = type(handle) == "table" or type(handle) == "userdata"
  fast = fast and handle.redact
  if not fast or type(key) ~= "string" or key == "" then return slow end
  return function(s)
    if type(s) ~= "string" then return s end
    local r = fast(handle, s)
    if r == nil then return slow and slow(s) or s end
    return r
  end
end

return _redactor
