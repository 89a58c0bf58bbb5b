--- The request fingerprint an `unknown_outcome` create carries.
-- @module kie.fingerprint

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local sort, concat = table.sort, table.concat

-- A stable digest of a request (sorted keys), for matching an unknown_outcome
-- create against kie.ai's logs or a later callback.
local function _canonical(v, out)
  local t = type(v)
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    sort(keys)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      out[#out + 1] = k .. "="
      local val = v[k]
      if val == nil then val = v[tonumber(k)] end
      _canonical(val, out)
      out[#out + 1] = ";"
    end
    out[#out + 1] = "}"
  else
    out[#out + 1] = t:sub(1, 1) .. tostring(v)
  end
  return out
end

-- The fingerprint of `req` with core module `mod`'s HMAC (a plain hash without).
return function(mod, req)
  local canon = concat(_canonical(req, {}))
  local hmac = mod.hmac_sha256_base64
  if type(hmac) ~= "function" then -- a minimal injected core: a plain polynomial hash
    local h = 0
    for i = 1, #canon do h = (h * 31 + canon:byte(i)) % 4294967296 end
    return string.format("%08x", h)
  end
  local digest = hmac("kie-request-fingerprint", canon)
  return (digest:gsub("[+/=]", ""):sub(1, 24))
end
