-- kie.journal: durable append, unfinished tasks, torn lines.
local core = require "kie.core"
local journal = require "kie.journal"

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

describe("kie.journal #smoke", function()
  it("lists created tasks until they are finished", function()
    local path = tmpname()
    local j = journal.open(path, core)
    assert.same({}, j:unfinished())
    assert.is_true(j:created("t1", "ideogram/character"))
    assert.is_true(j:created("t2", "ideogram/v3-reframe"))
    assert.is_true(j:finished("t1", "success"))
    local left = journal.open(path, core):unfinished()
    assert.equals(1, #left)
    assert.equals("t2", left[1].taskId)
    assert.equals("ideogram/v3-reframe", left[1].model)
    assert.is_number(left[1].created)
    os.remove(path)
  end)

  it("skips a torn last line", function()
    local path = tmpname()
    local j = journal.open(path, core)
    j:created("t1", "m")
    local f = assert(io.open(path, "a"))
    f:write('{"event":"created","taskId":"t2"')
    f:close()
    local left = journal.open(path, core):unfinished()
    assert.equals(1, #left)
    assert.equals("t1", left[1].taskId)
    os.remove(path)
  end)

  it("reports an unwritable journal", function()
    local j = journal.open("/nonexistent-dir/j.jsonl", core)
    local ok, msg = j:created("t1", "m")
    assert.is_nil(ok)
    assert.matches("No such file", msg)
  end)

  it("creates the file private to the user", function()
    local path = tmpname()
    journal.open(path, core):created("t", "m")
    local p = io.popen("stat -c %a " .. path)
    local mode = p:read("*l")
    p:close()
    assert.equals("600", mode)
    os.remove(path)
  end)

  -- the syscalls of one append_line run by a child lua5.4 under strace
  local function traced_append(path)
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write("package.cpath = './build/lua5.4/?.so;' .. package.cpath\n",
      "assert(require('kie.core').append_line(", string.format("%q", path), ", 'x'))\n")
    f:close()
    local p = io.popen("strace -f -e trace=openat,fsync,writev lua5.4 " .. script .. " 2>&1")
    local out = p:read("*a")
    p:close()
    os.remove(script)
    return out
  end

  it("writes each record in one write and fsyncs the directory of a new journal", function()
    local which = io.popen("command -v strace")
    local found = which:read("*a")
    which:close()
    if found == "" then
      pending("strace is not installed")
      return
    end
    local path = tmpname()
    local out = traced_append(path)
    local dir = path:match("^(.*)/[^/]*$")
    assert.matches('writev%(%d+, %[{iov_base="x", iov_len=1}, {iov_base="\\n", iov_len=1}%], 2%) = 2', out)
    local at, dirfd = out:match('()openat%([^,]+, "' .. dir:gsub("%p", "%%%0") .. '", O_RDONLY[|%u_]*%) = (%d+)')
    assert.is_string(dirfd, "the directory was not opened:\n" .. out)
    assert.matches("fsync%(" .. dirfd .. "%)%s+= 0", out:sub(at))
    -- appending to the journal that now exists syncs the file only
    out = traced_append(path)
    assert.is_nil(out:find("O_DIRECTORY", 1, true))
    assert.equals("x\nx\n", assert(io.open(path)):read("*a"))
    os.remove(path)
  end)
end)
