-- A batch job: several prompts run at once with client:run_all (at most 4 in
-- flight, within kie.ai's rate limits), one progress line per state change on
-- stderr, then every result image downloaded into out/ and its path printed on
-- stdout. One failed item does not stop the others; the exit status is 1 when
-- any item failed.
--   lua5.4 examples/batch.lua                  (no KIE_API_KEY: the built-in mock server)
--   KIE_API_KEY=... lua5.4 examples/batch.lua  (the real API; costs credits)
-- Run it from the repository root after `make` (it loads ./lua and ./build/lua5.4).
local env = dofile("examples/setup.lua").connect{ pace = 0.3, poll = 0.2 }
local finish = env.finish

local kie = require "kie"

local PROMPTS = {
  "A cheerful knight in a sunlit forest, storybook illustration",
  "The same knight reading a map by candlelight",
  "The knight crossing a rope bridge over a misty gorge",
  "The knight sharing bread with a friendly dragon",
  "The knight asleep under the stars, campfire embers",
  "The knight returning home to a cheering village",
}
local REFERENCE = "https://file.aiquickdraw.com/custom-page/akr/section-images/1755767145415pvz49dpi.webp"

-- one `run` request per prompt: create, then wait (15-minute deadline each)
local requests = {}
for i, prompt in ipairs(PROMPTS) do
  requests[i] = {
    model = "ideogram/character",
    input = {
      prompt = prompt,
      reference_image_urls = { REFERENCE },
      rendering_speed = "TURBO",
      style = "AUTO",
      num_images = 1,
      image_size = "square_hd",
    },
    wait = env.wait{ timeout = 900 },
  }
end

local client = kie.new(env.opts)
local results, errs = client:run_all(requests, {
  concurrency = 4,
  on_update = function(i, info) -- once per state change of item i
    io.stderr:write(string.format("[%d/%d] %s %s\n", i, #requests, tostring(info.taskId),
      tostring(info.state)))
  end,
})

os.execute("mkdir -p out")
local failed = 0 -- prompts that failed (the task, or one of its downloads)
for i = 1, #requests do
  local info = results[i]
  if not info then
    failed = failed + 1
    io.stderr:write(string.format("[%d/%d] failed: %s\n", i, #requests, tostring(errs[i])))
  else
    local ok = true
    for n, url in ipairs(info.resultUrls) do
      local path, derr = client:download(url, string.format("out/%s-%d.png", kie.safe_name(info.taskId), n))
      if path then
        print(path)
      else
        ok = false
        io.stderr:write(string.format("[%d/%d] download failed: %s\n", i, #requests, tostring(derr)))
      end
    end
    if not ok then failed = failed + 1 end
  end
end
client:close()
io.stderr:write(string.format("%d of %d prompts done\n", #requests - failed, #requests))
finish(failed == 0 and 0 or 1)
