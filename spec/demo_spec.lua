-- `make demo`'s script, run as a user would without KIE_API_KEY: it must print
-- the path of a real PNG it downloaded from the built-in mock.
describe("examples/demo.lua #examples", function()
  it("prints the path of a downloaded PNG", function()
    -- the demo always runs the plain Lua 5.4 build, whichever build this suite uses
    assert.truthy(os.execute("env -u LD_PRELOAD make -s build LUA=lua5.4 >/dev/null 2>&1"))
    local p = assert(io.popen("env -u KIE_API_KEY -u LD_PRELOAD lua5.4 examples/demo.lua 2>/dev/null"))
    local out = p:read("*a")
    local ok = p:close()
    assert.truthy(ok, out)
    local path = out:match("([^\n]+)\n?$")
    assert.matches("^out/.+%.png$", path)
    local f = assert(io.open(path, "rb"))
    local head = f:read(8)
    f:close()
    os.remove(path)
    assert.equals("\137PNG\r\n\26\n", head)
  end)
end)
