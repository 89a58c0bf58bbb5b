-- Uploads (File Upload API), local paths in run{}, and download progress/refresh,
-- against the mock (upload_url = the mock's own origin).
local kie = require "kie"
local core = require "kie.core"
local files = require "kie.files"
local errors = require "kie.errors"

local KEY = "sk-upload-spec-7c1f02"

local PNG_MAGIC = "\137PNG\r\n\26\n"
local JPEG_MAGIC = "\255\216\255\224"

-- n pseudo-random bytes (a random block of at most 4 KiB, repeated: cheap under
-- valgrind), ending with what could confuse a multipart parser
local function bytes(n, seed)
  math.randomseed(seed or 7)
  local t = {}
  for i = 1, math.min(n, 4096) do t[i] = string.char(math.random(0, 255)) end
  local block = table.concat(t)
  if n == 0 then return "\r\n--\r\n\0" end
  local s = string.rep(block, math.floor(n / #block)) .. block:sub(1, n % math.max(#block, 1))
  return s .. "\r\n--\r\n\0"
end

local util = require "spec.support.util"
local read, write = util.read_file, util.write_file

local function tmpdir() return util.tmpdir("kie-upload-spec") end

describe("kie.files units #smoke", function()
  it("sniffs JPEG, PNG and WebP by magic bytes only", function()
    assert.equals("image/png", files.sniff(PNG_MAGIC .. "rest"))
    assert.equals("image/jpeg", files.sniff(JPEG_MAGIC .. "rest"))
    assert.equals("image/webp", files.sniff("RIFF\0\0\0\0WEBPVP8 "))
    assert.is_nil(files.sniff("GIF89a......"))
    assert.is_nil(files.sniff("hello, this is text"))
    assert.is_nil(files.sniff(""))
  end)

  it("encodes Base64 in C exactly like the reference (and the Lua fallback)", function()
    assert.equals("", core.base64_encode(""))
    assert.equals("Zg==", core.base64_encode("f"))
    assert.equals("Zm8=", core.base64_encode("fo"))
    assert.equals("Zm9v", core.base64_encode("foo"))
    assert.equals("Zm9vYmFy", core.base64_encode("foobar"))
    for n = 0, 70 do
      local s = bytes(n * 37, n)
      assert.equals(files._b64_lua(s), core.base64_encode(s))
    end
    local big = bytes(200000, 99)
    assert.equals(files._b64_lua(big), core.base64_encode(big))
  end)

  it("reports progress only on change, and a final call with the size as total", function()
    local calls = {}
    local r = files.reporter(function(n, t) calls[#calls + 1] = { n, t } end)
    r.update(0, nil)
    r.update(0, nil)
    r.update(10, 100)
    r.update(100, 100)
    r.finish(100, nil)
    assert.same({ { 0, nil }, { 10, 100 }, { 100, 100 } }, calls)
    local calls2 = {}
    local r2 = files.reporter(function(n, t) calls2[#calls2 + 1] = { n, t } end)
    r2.update(5, nil)
    r2.finish(7)
    assert.same({ { 5, nil }, { 7, 7 } }, calls2)
  end)
end)

describe("upload against the mock #core", function()
  local m, c, dir

  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.02 }
    c = kie.new{ api_key = KEY, base_url = m.url, upload_url = m.url, timeout = 10 }
    dir = tmpdir()
  end)
  lazy_teardown(function()
    if c then c:close() end
    if m then m:stop() end
    if dir then os.execute("rm -rf '" .. dir .. "'") end
  end)
  before_each(function() m:reset() end)

  local function fetch_bytes(url)
    local out = dir .. "/fetched-" .. math.random(1e9)
    local p, err = c:download(url, out)
    assert.is_nil(err)
    local s = read(p)
    os.remove(p)
    return s
  end

  it("streams a file as multipart and the mock stores the exact bytes", function()
    local data = PNG_MAGIC .. bytes(300 * 1024)
    local path = dir .. "/ref image.png"
    write(path, data)
    local res, err = c:upload(path)
    assert.is_nil(err)
    assert.equals("image/png", res.mimeType)
    assert.equals(#data, res.fileSize)
    assert.equals("ref image.png", res.fileName)
    assert.equals("kie-lua/ref image.png", res.filePath)
    assert.is_string(res.uploadedAt)
    assert.equals(data, fetch_bytes(res.downloadUrl))
    local log = m:requests("/api/file-stream-upload")
    assert.equals(1, #log)
    assert.matches("^multipart/form%-data; boundary=", log[1].headers["content-type"])
    assert.equals("Bearer " .. KEY, log[1].headers["authorization"])
  end)

  it("takes upload_path and file_name, and sniffs JPEG and WebP", function()
    local jpg = dir .. "/photo.bin"
    write(jpg, JPEG_MAGIC .. bytes(1000))
    local res = assert(c:upload(jpg, { upload_path = "/refs/2025/", file_name = "hero.jpg" }))
    assert.equals("image/jpeg", res.mimeType)
    assert.equals("refs/2025/hero.jpg", res.filePath)
    local webp = dir .. "/a.webp"
    write(webp, "RIFF\16\0\0\0WEBPVP8 " .. bytes(100))
    res = assert(c:upload(webp))
    assert.equals("image/webp", res.mimeType)
  end)

  it("uploads {data = ...} as Base64 and {url = ...} by URL", function()
    local data = JPEG_MAGIC .. bytes(5000, 3)
    local res, err = c:upload({ data = data, file_name = "small.jpg" }, { upload_path = "b64" })
    assert.is_nil(err)
    assert.equals("image/jpeg", res.mimeType)
    assert.equals("b64/small.jpg", res.filePath)
    assert.equals(data, fetch_bytes(res.downloadUrl))
    local body = m:requests("/api/file-base64-upload")[1].body
    assert.matches('"base64Data":"data:image\\/jpeg;base64,', body, 1, true)

    local res2, err2 = c:upload({ url = res.downloadUrl }, { file_name = "copy.jpg" })
    assert.is_nil(err2)
    assert.equals("kie-lua/copy.jpg", res2.filePath)
    assert.equals(data, fetch_bytes(res2.downloadUrl))
    assert.equals(1, m:count("/api/file-url-upload"))
  end)

  it("rejects a wrong type or a too-big file before sending anything", function()
    local txt = dir .. "/notes.png"
    write(txt, "just some text, renamed to .png\n")
    local r, e = c:upload(txt)
    assert.is_nil(r)
    assert.is_true(errors.is(e, "validation"))
    assert.matches("not a JPEG, PNG or WebP image", e.message)

    local png = dir .. "/big.png"
    write(png, PNG_MAGIC .. bytes(2048))
    r, e = c:upload(png, { max_bytes = 1024 })
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    assert.matches("more than the limit of 1%.0 KiB", e.message)

    r, e = c:upload({ data = "plain text" })
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    r, e = c:upload({ data = PNG_MAGIC .. string.rep("x", files.MAX_BASE64_BYTES) })
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    assert.matches("upload the path", e.message)
    r, e = c:upload({ url = "ftp://example.com/a.png" })
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    r, e = c:upload(png, { upload_path = "a/../b" })
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    r, e = c:upload(png, { file_name = "x/y.png" })
    assert.is_nil(r)
    assert.equals("validation", e.kind)
    assert.equals(0, m:count("/api/*"))
  end)

  it("reports local file problems as io", function()
    local r, e = c:upload(dir .. "/does-not-exist.png")
    assert.is_nil(r)
    assert.is_true(errors.is(e, "io"))
    assert.matches("No such file", e.message)
    r, e = c:upload(dir)
    assert.is_nil(r)
    assert.equals("io", e.kind)
    assert.equals(0, m:count("/api/*"))
  end)

  it("raises on programmer errors", function()
    assert.has_error(function() c:upload(42) end)
    assert.has_error(function() c:upload({}) end, "upload: the table must have data or url")
    assert.has_error(function() c:upload("x.png", { uploadPath = "x" }) end, "upload: unknown option 'uploadPath'")
  end)

  it("maps the upload envelope's errors, and success = false", function()
    local png = dir .. "/e.png"
    write(png, PNG_MAGIC .. "x")
    local bad = kie.new{ api_key = "wrong-key", base_url = m.url, upload_url = m.url, max_retries = 0 }
    local r, e = bad:upload(png)
    bad:close()
    assert.is_nil(r)
    assert.equals("auth", e.kind)
    assert.equals(401, e.status)
    assert.equals("upload", e.op)
    assert.matches("^kie: auth: upload: code 401: Authentication failed", tostring(e))

    m:fault{ path = "/api/file-base64-upload", fault = "raw", status = 200,
      body = '{"success":false,"code":200,"msg":"quota exceeded"}', content_type = "application/json" }
    r, e = c:upload({ data = PNG_MAGIC .. "x" })
    assert.is_nil(r)
    assert.equals("upload", e.op)
    assert.matches("^upload: success is false: quota exceeded", e.message)

    m:fault{ path = "/api/file-url-upload", fault = "raw", status = 200,
      body = '{"success":true,"code":200,"msg":"ok","data":{"fileName":"x"}}', content_type = "application/json" }
    r, e = c:upload({ url = m.url .. "/uploads/none.png" })
    assert.is_nil(r)
    assert.equals("protocol", e.kind)
  end)

  it("retries an upload like a read (502 page, then success)", function()
    local png = dir .. "/retry.png"
    write(png, PNG_MAGIC .. bytes(64))
    local rc = kie.new{ api_key = KEY, base_url = m.url, upload_url = m.url,
      retry = { base = 0.01, cap = 0.02 } }
    m:fault{ path = "/api/file-stream-upload", fault = "html_502" }
    local res, err = rc:upload(png)
    rc:close()
    assert.is_nil(err)
    assert.equals("image/png", res.mimeType)
    assert.equals(2, m:count("/api/file-stream-upload"))
  end)

  it("core: upload_start + progress(id, wait_ms) count the request body", function()
    local png = dir .. "/core.png"
    local data = PNG_MAGIC .. bytes(200000, 4)
    write(png, data)
    local h = c._core
    assert.is_nil(h:progress(987654))
    local id = assert(h:upload_start(png, "core", "core.png", "image/png"))
    local done, n, total
    for _ = 1, 500 do
      done, n, total = h:progress(id, 50)
      if done then break end
    end
    assert.is_true(done)
    assert.is_true(n > #data and total == n) -- the multipart body: file + parts
    local res = assert(h:result(id))
    assert.equals(#data, res.fileSize)
    assert.is_nil(h:progress(id))
  end)

  it("uploads without blocking inside kie.spawn", function()
    local png = dir .. "/async.png"
    local data = PNG_MAGIC .. bytes(100000)
    write(png, data)
    local h = kie.spawn(function() return c:upload(png) end)
    assert.is_false(h:done())
    local steps = 0
    while not h:done() and steps < 2000 do
      c:step(5)
      steps = steps + 1
    end
    local res, err = h:result()
    assert.is_nil(err)
    assert.equals(#data, res.fileSize)
  end)

  describe("run{} with local files (kie.file)", function()
    it("uploads kie.file refs first, then creates with their URLs", function()
      local ref = dir .. "/hero.png"
      write(ref, PNG_MAGIC .. bytes(4000, 11))
      local request = { model = "ideogram/character", input = {
        prompt = "a knight", reference_image_urls = { kie.file(ref), kie.file(ref) },
      }, wait = { interval = 0.02 } }
      local refs = request.input.reference_image_urls
      local info, err = c:run(request)
      assert.is_nil(err)
      assert.equals("success", info.state)
      -- the same path once, the caller's table untouched
      assert.equals(1, m:count("/api/file-stream-upload"))
      assert.equals(refs, request.input.reference_image_urls)
      assert.is_true(files.is_file(refs[1]) and refs[1].path == ref)
      local sent = m:requests("/api/v1/jobs/createTask")[1].body
      local want = (m.url .. "/uploads/kie-lua/hero.png"):gsub("/", "\\/")
      assert.truthy(sent:find('"reference_image_urls":["' .. want .. '","' .. want .. '"]', 1, true))
    end)

    it("handles image_url and image_urls, with request.upload options", function()
      local img = dir .. "/in.jpg"
      write(img, JPEG_MAGIC .. bytes(100))
      local info, err = c:run{ model = "ideogram/character-remix", input = {
        prompt = "remix", image_url = kie.file(img), reference_image_urls = { "https://example.com/r.png" },
        image_urls = { kie.file(img) },
      }, upload = { upload_path = "runs" }, wait = { interval = 0.02 } }
      assert.is_nil(err)
      assert.equals("success", info.state)
      assert.equals(1, m:count("/api/file-stream-upload"))
      assert.truthy(m:requests("/api/v1/jobs/createTask")[1].body:find("runs\\/in.jpg", 1, true))
    end)

    it("uploads kie.file{data = bytes, file_name = ...} as Base64", function()
      local info, err = c:run{ model = "ideogram/character", input = { prompt = "x",
        reference_image_urls = { kie.file{ data = PNG_MAGIC .. bytes(300), file_name = "mem.png" } } },
        wait = { interval = 0.02 } }
      assert.is_nil(err)
      assert.equals("success", info.state)
      assert.equals(1, m:count("/api/file-base64-upload"))
      assert.equals(0, m:count("/api/file-stream-upload"))
      assert.truthy(m:requests("/api/v1/jobs/createTask")[1].body:find("kie-lua\\/mem.png", 1, true))
    end)

    it("never reads a plain string: an existing path or file:// is a validation error naming kie.file", function()
      local secret = dir .. "/secret.png"
      write(secret, PNG_MAGIC .. bytes(100))
      for _, v in ipairs{ secret, "file://" .. secret, "/etc/passwd", "ftp://example.com/a.png", "refs/a.png" } do
        for _, field in ipairs{ "reference_image_urls", "image_url", "mask_url" } do
          local input = { prompt = "x", reference_image_urls = { "https://example.com/r.png" } }
          local where = field
          if field == "reference_image_urls" then
            input[field] = { "https://example.com/ok.png", v }
            where = field .. "[2]"
          else
            input[field] = v
          end
          local r, e = c:run{ model = "ideogram/character-edit", input = input }
          assert.is_nil(r, v)
          assert.equals("validation", e.kind)
          assert.equals("input." .. where, e.field)
          assert.matches("input%." .. where:gsub("%p", "%%%0") .. " ", e.message)
          assert.matches("kie.file(path)", e.message, 1, true)
        end
      end
      assert.equals(0, m:count("/api/*"))
    end)

    it("checks every field before uploading anything", function()
      local ref = dir .. "/first.png"
      write(ref, PNG_MAGIC .. bytes(100))
      local r, e = c:run{ model = "ideogram/character-edit", input = { prompt = "x",
        image_url = kie.file(ref), mask_url = dir .. "/mask.png",
        reference_image_urls = { "https://example.com/r.png" } } }
      assert.is_nil(r)
      assert.equals("input.mask_url", e.field)
      assert.equals(0, m:count("/api/*"))
    end)

    it("uploads nothing for a request that would fail validation", function()
      local ref = dir .. "/never-sent.png"
      write(ref, PNG_MAGIC .. bytes(100))
      for _, case in ipairs{
        { { prompt = string.rep("x", 5001), reference_image_urls = { kie.file(ref) } }, "input.prompt" },
        { { prompt = "x", style = "WATERCOLOR", reference_image_urls = { kie.file(ref) } }, "input.style" },
        { { prompt = "x", colour = "red", reference_image_urls = { kie.file(ref) } }, "input.colour" },
      } do
        local r, e = c:run{ model = "ideogram/character", input = case[1] }
        assert.is_nil(r)
        assert.equals("validation", e.kind)
        assert.equals(case[2], e.field)
      end
      assert.equals(0, m:count("/api/*"))
      -- strict = false lets the unknown field through: then the file is uploaded
      local info, err = c:run{ model = "ideogram/character", strict = false, wait = { interval = 0.02 },
        input = { prompt = "x", colour = "red", reference_image_urls = { kie.file(ref) } } }
      assert.is_nil(err)
      assert.equals("success", info.state)
      assert.equals(1, m:count("/api/file-stream-upload"))
    end)

    it("returns io for a kie.file that does not exist, and sends nothing", function()
      local r, e = c:run{ model = "ideogram/character", input = {
        prompt = "x", reference_image_urls = { kie.file(dir .. "/missing.png") } } }
      assert.is_nil(r)
      assert.equals("io", e.kind)
      assert.matches("^run: uploading input%.reference_image_urls%[1%]: upload: cannot open", e.message)
      assert.equals(0, m:count("/api/*"))
    end)

    it("stops at an upload failure, before creating (wrong type)", function()
      local txt = dir .. "/fake.png"
      write(txt, "text")
      local r, e = c:run{ model = "ideogram/character", input = { prompt = "x",
        reference_image_urls = { kie.file(txt) } } }
      assert.is_nil(r)
      assert.equals("validation", e.kind)
      assert.matches("^run: uploading input%.reference_image_urls%[1%]: upload: ", e.message)
      assert.equals(0, m:count("/api/*"))
    end)

    it("kie.file raises on misuse", function()
      assert.has_error(function() kie.file() end)
      assert.has_error(function() kie.file("") end)
      assert.has_error(function() kie.file(42) end)
      assert.has_error(function() kie.file{ path = "x.png" } end)
      assert.has_error(function() kie.file{ data = 1 } end)
      assert.has_error(function() kie.file{ data = "x", file_name = 3 } end)
      assert.matches("kie.file", tostring(kie.file("a.png")), 1, true)
    end)

    it("keeps create_task strict: a local path or kie.file there is a validation error", function()
      local ref = dir .. "/strict.png"
      write(ref, PNG_MAGIC .. "x")
      for _, v in ipairs{ ref, kie.file(ref) } do
        local r, e = c:create_task{ model = "ideogram/character",
          input = { prompt = "x", reference_image_urls = { v } } }
        assert.is_nil(r)
        assert.equals("validation", e.kind)
      end
      assert.equals(0, m:count("/api/*"))
    end)

    it("works inside kie.spawn", function()
      local ref = dir .. "/spawned.png"
      write(ref, PNG_MAGIC .. bytes(500))
      local h = kie.spawn(function()
        return c:run{ model = "ideogram/character", input = { prompt = "x",
          reference_image_urls = { kie.file(ref) } }, wait = { interval = 0.02 } }
      end)
      local n = 0
      while not h:done() and n < 5000 do c:step(5); n = n + 1 end
      local info, err = h:result()
      assert.is_nil(err)
      assert.equals("success", info.state)
    end)
  end)

  describe("download", function()
    local function finished_task()
      local info = assert(c:run{ model = "ideogram/character", input = {
        prompt = "x", reference_image_urls = { "https://example.com/r.png" } }, wait = { interval = 0.02 } })
      return info
    end

    it("calls progress between steps and once at the end (blocking)", function()
      local data = PNG_MAGIC .. bytes(3 * 1024 * 1024, 5)
      local src = dir .. "/big.png"
      write(src, data)
      local up = assert(c:upload(src))
      local calls = {}
      local out = dir .. "/big-copy.png"
      local p, err = c:download(up.downloadUrl, out, { progress = function(n, total)
        calls[#calls + 1] = { n, total }
      end })
      assert.is_nil(err)
      assert.equals(out, p)
      assert.equals(data, read(out))
      assert.is_true(#calls >= 1)
      assert.same({ #data, #data }, calls[#calls])
      for i = 2, #calls do assert.is_true(calls[i][1] >= calls[i - 1][1]) end
      for _, cl in ipairs(calls) do
        if cl[2] ~= nil then assert.equals(#data, cl[2]) end
      end
      assert.equals(0, c._core:pending())
    end)

    it("reports progress from step inside kie.spawn", function()
      local info = finished_task()
      local calls = {}
      local out = dir .. "/spawned.png"
      local h = kie.spawn(function()
        return c:download(info.resultUrls[1], out, { progress = function(n, t) calls[#calls + 1] = { n, t } end })
      end)
      local n = 0
      while not h:done() and n < 2000 do c:step(5); n = n + 1 end
      local p, err = h:result()
      assert.is_nil(err)
      assert.equals(out, p)
      local size = #read(out)
      assert.same({ size, size }, calls[#calls])
      assert.is_nil(next(c._watch or {}))
    end)

    -- the partial files (".part-...") of downloads to `name` left in dir
    local function parts(name)
      local f = assert(io.popen("ls -a " .. util.quote(dir)))
      local found = {}
      for line in f:lines() do
        if line:find(name .. ".part-", 1, true) == 1 then found[#found + 1] = line end
      end
      f:close()
      return found
    end

    it("cancels the transfer, leaves no partial file and re-raises when progress raises", function()
      local info = finished_task()
      assert.has_error(function()
        c:download(info.resultUrls[1], dir .. "/raise.png", { progress = function() error("stop!") end })
      end)
      assert.equals(0, c._core:pending())
      assert.same({}, parts("raise.png"))
      assert.has_error(function() c:download(info.resultUrls[1], dir .. "/x.png", { progress = 42 }) end)
    end)

    it("a canceled download in kie.spawn leaves no partial file", function()
      local info = finished_task()
      local url = info.resultUrls[1]
      m:fault{ path = url:match("^https?://[^/]+(/.*)$"), fault = "delay", seconds = 2 }
      local h = kie.spawn(function() return c:download(url, dir .. "/canceled.png") end)
      c:step(0)
      assert.same(1, #parts("canceled.png")) -- the transfer has begun writing
      assert.is_true(h:cancel())
      assert.same({}, parts("canceled.png"))
      assert.equals(0, c._core:pending())
      local _, err = h:result()
      assert.equals("canceled", err.kind)
    end)

    it("refreshes a link that answers 404 and never sends the key to the file host", function()
      local info = finished_task()
      local url = info.resultUrls[1]
      local name = url:match("/files/(.+)$")
      m:fault{ path = "/files/" .. name, fault = "status", status = 404 }
      local calls = {}
      local out = dir .. "/refreshed.png"
      local p, err = c:download(url, out, { progress = function(n, t) calls[#calls + 1] = { n, t } end })
      assert.is_nil(err)
      assert.equals(out, p)
      assert.equals(PNG_MAGIC, read(out):sub(1, 8))
      assert.equals(1, m:count("/api/v1/common/download-url"))
      local gets = m:requests("/files/*")
      assert.equals(2, #gets)
      assert.is_nil(gets[1].query and gets[1].query.expires)
      assert.is_string(gets[2].query.expires)
      for _, r in ipairs(gets) do assert.is_nil(r.headers["authorization"]) end
      local size = #read(out)
      assert.same({ size, size }, calls[#calls])
    end)

    it("gives up after one refresh when the fresh link is expired too", function()
      local info = finished_task()
      m:config{ download_url_ttl = -5 }
      local url = info.resultUrls[1]
      local expired = assert(c:download_url(url))
      local p, err = c:download(expired, dir .. "/expired.png")
      m:config{ download_url_ttl = 1200 }
      assert.is_nil(p)
      assert.equals(403, err.status)
      assert.is_nil(io.open(dir .. "/expired.png", "rb"))
      for _, r in ipairs(m:requests("/files/*")) do assert.is_nil(r.headers["authorization"]) end
    end)
  end)

  describe("randomness per process", function()
    -- Runs `script` in two child processes of interpreter `lua` at once (with
    -- os.time pinned: started in the same second); returns their outputs.
    local function twins(lua, script)
      local flavour = lua
      if not io.open("build/" .. flavour .. "/kie/core.so", "rb") then return nil end
      local f = dir .. "/twin-" .. lua .. ".lua"
      write(f, script)
      local env = "env LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/" .. flavour ..
        "/?.so;;' KIE_SPEC_URL='" .. m.url .. "' KIE_SPEC_KEY='" .. KEY .. "' "
      local a = io.popen(env .. lua .. " " .. f .. " a 2>&1")
      local b = io.popen(env .. lua .. " " .. f .. " b 2>&1")
      local out_a, out_b = a:read("*a"), b:read("*a")
      a:close()
      b:close()
      return out_a, out_b
    end

    it("never reseeds a process it seeded; a client made after a fork seeds once", function()
      local seed = require "kie.seed"
      -- the first values after math.randomseed(12345); kie.new may draw some (a salt)
      math.randomseed(12345)
      local mine = {}
      for _ = 1, 8 do mine[math.random()] = true end
      local function next_after(fn)
        math.randomseed(12345)
        fn()
        return math.random()
      end
      local function new() kie.new{ api_key = KEY, base_url = m.url } end
      -- the user's own seed stands: kie.new in the same process does not reseed
      assert.is_true(mine[next_after(new)])
      local real_pid = seed.pid
      seed.pid = function() return (real_pid() or 0) + 1 end -- as in a forked child
      local ok, forked = pcall(next_after, new)
      local again = ok and next_after(new)
      seed.pid = real_pid
      assert.is_true(ok, forked)
      assert.is_nil(mine[forked])
      assert.is_true(mine[again]) -- seeded once in that "process"
      seed.ensure() -- back to this process's pid (reseeds once)
    end)

    for _, lua in ipairs{ "lua5.4", "luajit" } do
      it(lua .. ": math.random differs across processes after require \"kie\"", function()
        local a, b = twins(lua, 'require "kie"\nio.write(("%.17g"):format(math.random()))\n')
        if not a then return pending("no build/" .. lua) end
        assert.matches("^0%.%d+$", a)
        assert.matches("^0%.%d+$", b)
        assert.are_not.equal(a, b)
      end)

      it(lua .. ": two processes downloading to one path use different temporary files", function()
        local src = dir .. "/twin-src.png"
        write(src, PNG_MAGIC .. bytes(2000))
        local url = assert(c:upload(src)).downloadUrl
        local script = [[
          local kie = require "kie"
          local rename = os.rename
          os.time = function() return 1700000000 end
          os.rename = function(from, to) io.write("TMP ", from, "\n") return rename(from, to) end
          local c = kie.new{ api_key = os.getenv "KIE_SPEC_KEY", base_url = os.getenv "KIE_SPEC_URL",
            upload_url = os.getenv "KIE_SPEC_URL" }
          assert(c:download("]] .. url .. [[", "]] .. dir .. [[/twin-out-" .. arg[1] .. ".png"))
        ]]
        local a, b = twins(lua, script)
        if not a then return pending("no build/" .. lua) end
        local ta = a:match("TMP [^\n]*/twin%-out%-a%.png(%.part%-[^\n]+)\n")
        local tb = b:match("TMP [^\n]*/twin%-out%-b%.png(%.part%-[^\n]+)\n")
        assert.is_string(ta, a)
        assert.is_string(tb, b)
        assert.are_not.equal(ta, tb)
      end)
    end
  end)
end)
