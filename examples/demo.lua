-- The main job, end to end: create an Ideogram character task, wait for it
-- (polling, with a deadline), download the first image and print its path.
--   make demo                    (no KIE_API_KEY: runs against the built-in mock server)
--   KIE_API_KEY=... make demo    (the real API; costs credits)
local env = dofile("examples/setup.lua").connect{ pace = 0.4, poll = 0.3 }
local finish = env.finish

local kie = require "kie"

local client = kie.new(env.opts)
local task, err = client:create_task{
  model = "ideogram/character",
  input = {
    prompt = "A cheerful knight in a sunlit forest, storybook illustration",
    reference_image_urls = {
      "https://file.aiquickdraw.com/custom-page/akr/section-images/1755767145415pvz49dpi.webp",
    },
    rendering_speed = "TURBO",
    style = "AUTO",
    num_images = 1, -- sent as "1": kie.models coerces losslessly
    image_size = "square_hd",
  },
}
if not task then
  io.stderr:write(tostring(err), "\n")
  finish(1)
end
io.stderr:write("created ", task.taskId, "\n")

-- poll until the task ends, on kie.ai's published schedule (15-minute deadline)
local info, werr = client:wait(task.taskId, env.wait{
  timeout = 900,
  on_update = function(i) io.stderr:write("state: ", tostring(i.state), "\n") end,
})
if not info then
  io.stderr:write(tostring(werr), "\n")
  finish(1)
end

os.execute("mkdir -p out")
local path, derr = client:download(info.resultUrls[1], "out/" .. kie.safe_name(task.taskId) .. "-1.png")
if not path then
  io.stderr:write(tostring(derr), "\n")
  finish(1)
end
print(path)
client:close()
finish(0)
