-- The main job, end to end: create an Ideogram character task, poll it until it
-- ends, download the first image and print its path.
--   make demo                    (no KIE_API_KEY: runs against the built-in mock server)
--   KIE_API_KEY=... make demo    (the real API; costs credits)
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath

local kie = require "kie"
local core = require "kie.core"

local key = os.getenv("KIE_API_KEY")
local opts, mock, pause = {}, nil, 3
if not key or key == "" then
  mock = require("spec.support.mock").start{ api_key = "demo-key", pace = 0.4 }
  opts = { api_key = "demo-key", base_url = mock.url }
  pause = 0.3
  io.stderr:write("no KIE_API_KEY: using the local mock kie.ai server at ", mock.url, "\n")
end

local function finish(code)
  if mock then mock:stop() end
  os.exit(code)
end

local client = kie.new(opts)
local task, err = client:create_task{
  model = "ideogram/character",
  input = {
    prompt = "A cheerful knight in a sunlit forest, storybook illustration",
    reference_image_urls = {
      "https://file.aiquickdraw.com/custom-page/akr/section-images/1755767145415pvz49dpi.webp",
    },
    rendering_speed = "TURBO",
    style = "AUTO",
    num_images = "1",
    image_size = "square_hd",
  },
}
if not task then
  io.stderr:write(tostring(err), "\n")
  finish(1)
end
io.stderr:write("created ", task.taskId, "\n")

-- poll until the task ends (a 15-minute deadline), printing each new state
local deadline, last, info = core.now() + 900, nil, nil
repeat
  info, err = client:get_task(task.taskId)
  if info and info.state ~= last then
    last = info.state
    io.stderr:write("state: ", last, "\n")
  elseif not info and not err.retryable then
    io.stderr:write(tostring(err), "\n")
    finish(1)
  end
  if last == "success" or last == "fail" then break end
  core.sleep(pause)
until core.now() > deadline
if last ~= "success" then
  io.stderr:write("task ended in state ", tostring(last), ": ", tostring(info and info.failMsg), "\n")
  finish(1)
end

os.execute("mkdir -p out")
local path, derr = client:download(info.resultUrls[1], "out/" .. task.taskId .. "-1.png")
if not path then
  io.stderr:write(tostring(derr), "\n")
  finish(1)
end
print(path)
client:close()
finish(0)
