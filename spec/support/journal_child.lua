-- Child process of spec/reliability_journal_restart_spec.lua: creates one task
-- with a journal, prints "created <taskId>" once create_task has returned, then
-- (mode "wait") waits on it until killed, or (mode "exit") exits at once.
--
--   lua journal_child.lua <base_url> <api_key> <journal_path> <prompt> <wait|exit>
local kie = require "kie"

local base_url, key, journal, prompt, mode = arg[1], arg[2], arg[3], arg[4], arg[5]
local c = kie.new{ api_key = key, base_url = base_url, journal = journal, timeout = 5 }
local task, err = c:create_task{
  model = "ideogram/character",
  input = { prompt = prompt, reference_image_urls = { "https://example.com/ref.png" } },
}
if not task then
  io.stdout:write("error ", tostring(err), "\n")
  io.stdout:flush()
  os.exit(1)
end
io.stdout:write("created ", task.taskId, "\n")
io.stdout:flush()
if mode == "wait" then
  local info, werr = c:wait(task.taskId, { timeout = 60 })
  io.stdout:write("waited ", tostring(info and info.state or werr), "\n")
  io.stdout:flush()
end
c:close()
