-- HMAC-SHA256 through LuaJIT FFI on OpenSSL's libcrypto (nginx links it).
-- sign(key, task_id, timestamp) gives kie.ai's X-Webhook-Signature:
-- base64(HMAC-SHA256(key, task_id .. "." .. timestamp)).

local ffi = require "ffi"

local M = {}

-- Declarations one by one inside pcall: another module in the same nginx may
-- have declared the same names already.
pcall(ffi.cdef, "typedef struct evp_md_st EVP_MD;")
pcall(ffi.cdef, "const EVP_MD *EVP_sha256(void);")
pcall(ffi.cdef, [[
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const char *d, size_t n, unsigned char *md, unsigned int *md_len);
]])

local function find_lib()
  local candidates = {
    function() return ffi.C end,
    function() return ffi.load("crypto") end,
    function() return ffi.load("libcrypto.so.3") end,
    function() return ffi.load("libcrypto.so.1.1") end,
  }
  for _, get in ipairs(candidates) do
    local ok, lib = pcall(get)
    if ok and lib and pcall(function() return lib.HMAC and lib.EVP_sha256 end) then
      return lib
    end
  end
  error("kie mock: libcrypto HMAC not found")
end

local lib = find_lib()

function M.sha256(key, message)
  local md = ffi.new("unsigned char[64]")
  local md_len = ffi.new("unsigned int[1]")
  local r = lib.HMAC(lib.EVP_sha256(), key, #key, message, #message, md, md_len)
  if r == nil then error("kie mock: HMAC failed") end
  return ffi.string(md, md_len[0])
end

function M.sign(key, task_id, timestamp)
  return ngx.encode_base64(M.sha256(key, task_id .. "." .. tostring(timestamp)))
end

return M
