-- Peer: Debian's lua-curl (luacurl 1.x binding of libcurl, Lua 5.1) with one reused
-- easy handle (keep-alive) and lua-cjson; the same job as `ours.lua seq`:
-- encode the create request, decode the envelope, decode param and resultJson.
--   lua5.1 bench/clients/luacurl.lua URL N [CA_FILE]
local curl = require "curl"
local cjson = require "cjson"
local socket = require "socket"
local bodies = dofile("bench/bodies.lua")

local url, n, ca = arg[1], tonumber(arg[2]), arg[3]
if ca == "" then ca = nil end
local function fail(msg) io.stderr:write("luacurl: ", msg, "\n") os.exit(1) end

local e = curl.easy_init()
local chunks, nchunks = {}, 0
e:setopt(curl.OPT_WRITEFUNCTION, function(buf, size) -- luacurl passes (data, size)
  nchunks = nchunks + 1
  chunks[nchunks] = buf
  return size
end)
e:setopt(curl.OPT_HTTPHEADER, { "Authorization: Bearer " .. bodies.API_KEY,
  "Accept: application/json", "Content-Type: application/json", "Expect:" })
e:setopt(curl.OPT_NOSIGNAL, 1)
e:setopt(curl.OPT_TIMEOUT, 30)
e:setopt(curl.OPT_SSL_VERIFYPEER, 1)
e:setopt(curl.OPT_SSL_VERIFYHOST, 2)
if ca then e:setopt(curl.OPT_CAINFO, ca) end

local function body()
  local s = table.concat(chunks, "", 1, nchunks)
  for i = 1, nchunks do chunks[i] = nil end
  nchunks = 0
  return s
end

local create_url, get_url = url .. bodies.CREATE_PATH, url .. bodies.GET_PATH
local req = bodies.request()
local t0 = socket.gettime()
for _ = 1, n do
  e:setopt(curl.OPT_URL, create_url)
  e:setopt(curl.OPT_POSTFIELDS, cjson.encode(req))
  local rc, err = e:perform() -- 0 (CURLE_OK) on success
  if rc ~= 0 and rc ~= true then fail(tostring(err or rc)) end
  local env = cjson.decode(body())
  if env.code ~= 200 or env.data.taskId ~= bodies.TASK_ID then fail("bad create answer") end
  e:setopt(curl.OPT_HTTPGET, 1)
  e:setopt(curl.OPT_URL, get_url)
  rc, err = e:perform()
  if rc ~= 0 and rc ~= true then fail(tostring(err or rc)) end
  env = cjson.decode(body())
  local data = env.data
  data.param = cjson.decode(data.param)
  data.resultJson = cjson.decode(data.resultJson)
  data.resultUrls = data.resultJson.resultUrls
  if env.code ~= 200 or data.state ~= "success" or data.resultUrls[1] ~= bodies.RESULT_URL then
    fail("bad recordInfo answer")
  end
end
local t1 = socket.gettime()
print(string.format("requests=%d seconds=%.6f", 2 * n, t1 - t0))
