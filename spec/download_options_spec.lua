-- download's options (issue 10, items 22 and 13): unknown names raise like
-- kie.new; `timeout` bounds the whole transfer (longer or shorter than the
-- client's request timeout); `max_bytes` is honoured (math.huge: no cap of ours)
-- or refused, never silently replaced by the client's max_response_bytes.
local kie = require "kie"
local util = require "spec.support.util"

local KEY = "sk-download-options-5e1a"
local PNG_MAGIC = "\137PNG\r\n\26\n"

describe("download options #integration", function()
  local m, c, dir, url, size

  lazy_setup(function()
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0 }
    -- a short request timeout and a small response cap: a download is neither
    c = kie.new{ api_key = KEY, base_url = m.url, upload_url = m.url, timeout = 1,
      max_response_bytes = 64 * 1024 }
    dir = util.tmpdir("kie-download-options")
    local src = dir .. "/big.png"
    util.write_file(src, PNG_MAGIC .. string.rep("\0\1\2\3", 50 * 1024)) -- 200 KiB
    url = assert(c:upload(src)).downloadUrl
    size = #util.read_file(src)
  end)
  lazy_teardown(function()
    if c then c:close() end
    if m then m:stop() end
    if dir then os.execute("rm -rf '" .. dir .. "'") end
  end)

  local function path_of(u) return u:match("^https?://[^/]+([^?]*)") end

  it("raises on unknown option names and bad values, before sending", function()
    local before = #m:requests("/uploads/*")
    local out = dir .. "/never.png"
    for _, case in ipairs{
      { { max_byte = 10 }, "unknown option 'max_byte'" },
      { { timout = 10 }, "unknown option 'timout'" },
      { { timeout = "10" }, "timeout" },
      { { timeout = 0 }, "timeout" },
      { { timeout = -1 }, "timeout" },
      { { timeout = 0 / 0 }, "timeout" },
      { { timeout = math.huge }, "timeout" },
      { { max_bytes = 0 }, "max_bytes" },
      { { max_bytes = -5 }, "max_bytes" },
      { { max_bytes = 0.5 }, "max_bytes" },
      { { max_bytes = 0 / 0 }, "max_bytes" },
      { { max_bytes = 2 ^ 60 }, "max_bytes" },
      { { max_bytes = "1" }, "max_bytes" },
      { { refresh = "no" }, "refresh" },
      { { progress = 42 }, "progress" },
      { "fast", "opts" },
    } do
      local ok, msg = pcall(c.download, c, url, out, case[1])
      assert.is_false(ok, case[2])
      assert.matches(case[2], tostring(msg))
    end
    assert.equals(0, #m:requests("/uploads/*") - before)
    assert.is_nil(io.open(out, "rb"))
  end)

  it("max_bytes = math.huge is no cap of ours: not the client's max_response_bytes", function()
    local out = dir .. "/huge-cap.png"
    local p, err = c:download(url, out, { max_bytes = math.huge })
    assert.is_nil(err and tostring(err))
    assert.equals(out, p)
    assert.equals(size, #util.read_file(out))
    -- a finite cap above the client's is honoured too
    p, err = c:download(url, out, { max_bytes = size })
    assert.is_nil(err and tostring(err))
    assert.equals(out, p)
  end)

  it("a finite max_bytes below the size is honoured: too_large, no file", function()
    local out = dir .. "/small-cap.png"
    local p, err = c:download(url, out, { max_bytes = 1000 })
    assert.is_nil(p)
    assert.equals("too_large", err.kind)
    assert.is_nil(io.open(out, "rb"))
  end)

  it("timeout may be longer than the client's request timeout", function()
    m:fault{ path = path_of(url), fault = "delay", seconds = 1.5 }
    local out = dir .. "/slow.png"
    local p, err = c:download(url, out, { timeout = 10, max_bytes = math.huge })
    assert.is_nil(err and tostring(err))
    assert.equals(out, p)
  end)

  it("the default timeout is not the client's short request timeout", function()
    m:fault{ path = path_of(url), fault = "delay", seconds = 1.5 }
    local out = dir .. "/slow-default.png"
    local p, err = c:download(url, out, { max_bytes = math.huge })
    assert.is_nil(err and tostring(err))
    assert.equals(out, p)
  end)

  it("timeout shorter than the transfer ends it with kind timeout, no file left", function()
    local c2 = kie.new{ api_key = KEY, base_url = m.url, timeout = 30 }
    m:fault{ path = path_of(url), fault = "delay", seconds = 3 }
    local out = dir .. "/cut.png"
    local t0 = require("kie.core").now()
    local p, err = c2:download(url, out, { timeout = 0.5, max_bytes = math.huge, refresh = false })
    local took = require("kie.core").now() - t0
    c2:close()
    assert.is_nil(p)
    assert.equals("timeout", err.kind)
    assert.is_true(took < 2.5, "took " .. took .. " s (the delay is 3 s)")
    assert.is_nil(io.open(out, "rb"))
  end)
end)
