-- Testing your own code without kie.ai, sockets or waiting: `portrait` below is
-- "your code" (it generates an image and downloads it, or says why not); the
-- checks after it run it against kie.testing's fake kie.ai, whose clock is
-- virtual, so a task that takes minutes in the fake ends at once.
--   lua5.4 examples/testing.lua
-- Run it from the repository root after `make` (it loads ./lua and ./build/lua5.4).
-- Prints one line per check and "all passed"; exits 1 at the first failure.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath

local testing = require "kie.testing"

-- your code -----------------------------------------------------------------------
local function portrait(client, prompt, path)
  local info, err = client:run{
    model = "ideogram/character",
    input = { prompt = prompt, reference_image_urls = { "https://example.com/me.png" } },
    wait = { timeout = 600 },
  }
  if not info then
    if err.kind == "task_failed" then return nil, "rejected: " .. err.failMsg end
    return nil, "try again later (" .. err.kind .. ")"
  end
  return client:download(info.resultUrls[1], path)
end

-- your tests ----------------------------------------------------------------------
local function check(name, ok, detail)
  print((ok and "ok  " or "FAIL") .. "  " .. name)
  if not ok then
    io.stderr:write(tostring(detail), "\n")
    os.exit(1)
  end
end

local out = os.tmpname()

do -- the happy path: one create, some polls, a PNG on disk
  local fake = testing.new{ pace = 20 } -- 20 virtual seconds per pending state
  local path, err = portrait(fake:client(), "A knight", out)
  local f = io.open(out, "rb")
  local png = f and f:read(8)
  if f then f:close() end
  check("writes the image", path == out and png == testing.PNG:sub(1, 8), err)
  check("creates once", #fake:requests("create_task") == 1)
  check("took a minute of virtual time", fake:now() >= 60, fake:now())
end

do -- kie.ai refuses the content
  local fake = testing.new{ outcome = function()
    return "fail", { failCode = "400", failMsg = "Content policy violation" }
  end }
  local path, err = portrait(fake:client(), "Something else", out)
  check("explains a refusal", path == nil and err == "rejected: Content policy violation", err)
end

do -- a creation whose answer never came is not sent twice
  local fake = testing.new{}
  fake:fail_next("create_task", { kind = "timeout" })
  local path, err = portrait(fake:client(), "A knight", out)
  check("asks to try later", path == nil and err == "try again later (unknown_outcome)", err)
  check("did not resend", #fake:requests("create_task") == 1)
end

do -- rate limited reads are retried by the client
  local fake = testing.new{}
  fake:fail_next("get_task", { kind = "rate_limited", retry_after = 2 }, 2)
  local path = portrait(fake:client(), "A knight", out)
  check("survives two 429s", path == out)
end

os.remove(out)
print("all passed")
