-- Every module under lua/kie/ ships in exactly one rock (kie or kie-fleet), and
-- kie-fleet's Lua modules are installed by `make install-fleet` too: a module a
-- merge adds cannot be left out of what users install.
local util = require "spec.support.util"

local function modules(rockspec)
  local out = {}
  for name, path in util.read_file(rockspec):gmatch('%["(kie[%w_.]*)"%]%s*=%s*"(lua/kie/[%w_]+%.lua)"') do
    out[path] = name
  end
  return out
end

describe("the rocks", function()
  local main, fleet = modules("kie-scm-1.rockspec"), modules("kie-fleet-scm-1.rockspec")

  it("list every lua/kie module once, under its own name", function()
    local ls = io.popen("ls lua/kie/*.lua")
    local n = 0
    for path in ls:read("*a"):gmatch("[^\n]+") do
      n = n + 1
      local name = main[path] or fleet[path]
      assert(name, path .. " is in neither rockspec")
      assert(not (main[path] and fleet[path]), path .. " is in both rockspecs")
      local want = path == "lua/kie/init.lua" and "kie" or path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", ".")
      assert.equals(want, name)
    end
    ls:close()
    assert.is_true(n > 20)
  end)

  it("make install-fleet installs kie-fleet's Lua modules", function()
    local mk = util.read_file("Makefile")
    local rule = mk:match("\ninstall%-fleet:.-\n\n")
    assert.truthy(rule)
    for path in pairs(fleet) do
      assert(rule:find(path, 1, true), path .. " is not installed by make install-fleet")
    end
  end)
end)
