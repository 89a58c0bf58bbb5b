-- What every example script does first: find the module (./lua and the Lua 5.4
-- build, so run the examples from the repository root after `make`), and pick
-- the server: the real API with KIE_API_KEY, else the built-in mock kie.ai
-- server (spec/support/mock.lua), which is fast, so polls are made shorter.
--   local setup = dofile("examples/setup.lua")
--   local env = setup.connect{ pace = 0.4, poll = 0.3 }
--   kie.new(env.opts) ... env.wait{ timeout = 900 } ... env.finish(0)
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./build/lua5.4/?.so;" .. package.cpath

local M = {}

--- Returns `{opts =, mock =, wait =, finish =}`: `opts` for kie.new; `wait(t)` adds
-- the mock's short poll interval to wait options t (the real API keeps kie.ai's
-- schedule); `finish(code)` stops the mock and exits. `cfg`: `pace` (the mock's
-- seconds per task state), `poll` (seconds between polls against the mock), and
-- any other mock.start option.
function M.connect(cfg)
  local env = { opts = {} }
  local key = os.getenv("KIE_API_KEY")
  if not key or key == "" then
    local start = { api_key = "demo-key" }
    for k, v in pairs(cfg) do
      if k ~= "poll" then start[k] = v end
    end
    env.mock = require("spec.support.mock").start(start)
    env.opts = { api_key = "demo-key", base_url = env.mock.url }
    io.stderr:write("no KIE_API_KEY: using the local mock kie.ai server at ", env.mock.url, "\n")
  end
  function env.wait(t)
    if env.mock then
      t.interval, t.max_interval = cfg.poll, cfg.poll
    end
    return t
  end
  function env.finish(code)
    if env.mock then env.mock:stop() end
    os.exit(code)
  end
  return env
end

return M
