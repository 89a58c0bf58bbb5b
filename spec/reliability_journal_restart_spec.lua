-- Issue 3 acceptance, part 5: the journal across a crash. A separate process
-- creates a task with kie.new{journal = path} and waits; it is killed with
-- SIGKILL mid-wait; a new client on the same journal resumes the task and waits
-- for it without creating it again.
local kie = require "kie"
local mock = require "spec.support.mock"
local procs = require "spec.support.procs"

local KEY = "sk-journal-restart-58e0"
local CREATE, GET = "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo"
local CHILD = mock.support_dir .. "/journal_child.lua"

describe("reliability: the journal survives a kill -9 #integration", function()
  local m
  local pids, paths = {}, {}

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.4 } -- a task takes 1.2 s
  end)
  lazy_teardown(function()
    for _, pid in ipairs(pids) do
      if procs.alive(pid) then procs.kill(pid, "KILL") end
    end
    for _, p in ipairs(paths) do os.remove(p) end
    if m then m:stop() end
  end)

  local function tmp(suffix)
    local p = procs.tmpname(suffix)
    paths[#paths + 1] = p
    return p
  end

  local function journal_lines(path)
    local out = {}
    for line in (procs.read_file(path) or ""):gmatch("[^\n]+") do
      out[#out + 1] = require("kie.core").decode(line)
    end
    return out
  end

  it("a killed process's task is resumed, not created again", function()
    local journal, out, err = tmp(".jsonl"), tmp(".out"), tmp(".err")
    local creates = m:count(CREATE)
    local pid = procs.spawn(procs.lua_command(CHILD, { m.url, KEY, journal, "crash test", "wait" }), out, err)
    pids[#pids + 1] = pid
    local id = procs.wait_for(out, "created (task_[%w_]+)\n", 10)
    assert.is_string(id, "child printed no task id; stderr: " .. tostring(procs.read_file(err)))
    -- the line was on disk when create_task returned (the id is printed after it),
    -- after the intent written before the request was sent
    local lines = journal_lines(journal)
    assert.equals(2, #lines)
    assert.equals("intent", lines[1].event)
    assert.equals("created", lines[2].event)
    assert.equals(lines[1].intent, lines[2].intent)
    assert.equals(id, lines[2].taskId)
    assert.equals("ideogram/character", lines[2].model)
    -- kill it mid-wait: after its first poll, before the task is done
    local polled = false
    for _ = 1, 300 do
      for _, r in ipairs(m:requests(GET)) do
        local q = r.query
        if type(q) == "table" then q = q.taskId end
        if type(q) == "string" and q:find(id, 1, true) then polled = true end
      end
      if polled then break end
      require("kie.core").sleep(0.01)
    end
    assert.is_true(polled, "the child never polled")
    assert.is_true(procs.alive(pid))
    assert.is_true(procs.kill(pid, "KILL"))
    assert.is_nil((procs.read_file(out) or ""):find("waited", 1, true)) -- it died waiting
    assert.equals(1, m:count(CREATE) - creates)

    -- a new process (here: a new client) on the same journal
    local c = kie.new{ api_key = KEY, base_url = m.url, journal = journal, timeout = 5 }
    local open = c:resume()
    assert.equals(1, #open)
    assert.equals(id, open[1].taskId)
    assert.equals("ideogram/character", open[1].model)
    assert.is_number(open[1].created)
    assert.is_true(math.abs(open[1].created - os.time()) < 60)
    local info, werr = c:wait(open[1].taskId, { interval = 0.05, timeout = 10 })
    assert.is_nil(werr and tostring(werr))
    assert.equals("success", info.state)
    assert.equals(id, info.taskId)
    -- exactly one createTask for it, ever
    assert.equals(1, m:count(CREATE) - creates)
    local with_prompt = 0
    for _, r in ipairs(m:requests(CREATE)) do
      if r.body and r.body:find("crash test", 1, true) then with_prompt = with_prompt + 1 end
    end
    assert.equals(1, with_prompt)
    -- the end is recorded: nothing left to resume, for this client or the next
    assert.same({}, c:resume())
    c:close()
    local c2 = kie.new{ api_key = KEY, base_url = m.url, journal = journal }
    assert.same({}, c2:resume())
    c2:close()
    lines = journal_lines(journal)
    assert.equals(3, #lines)
    assert.equals("finished", lines[3].event)
    assert.equals("success", lines[3].state)
  end)

  it("a record cut off before its newline does not swallow the next one", function()
    -- a crash between the record's write and its newline's write leaves this tail
    local journal = tmp(".jsonl")
    local f = assert(io.open(journal, "wb"))
    f:write('{"event":"created","taskId":"task_torn_1","model":"ideogram/character","created":'
      .. os.time() .. '}')
    f:close()
    local c = kie.new{ api_key = KEY, base_url = m.url, journal = journal, timeout = 5 }
    local task = assert(c:create_task{ model = "ideogram/character",
      input = { prompt = "after a torn line", reference_image_urls = { "https://example.com/r.png" } } })
    local open = c:resume()
    assert.equals(2, #open)
    assert.equals("task_torn_1", open[1].taskId)
    assert.equals(task.taskId, open[2].taskId)
    c:close()
  end)

  it("fsyncs the journal line before create_task returns (strace)", function()
    local ok = os.execute("strace -o /dev/null true >/dev/null 2>&1")
    if ok ~= true and ok ~= 0 then return pending("strace is not usable here") end
    local journal, out, err, trace = tmp(".jsonl"), tmp(".out"), tmp(".err"), tmp(".trace")
    local cmd = "strace -f -s 4096 -e trace=openat,open,write,writev,fsync,fdatasync,sendto,sendmsg -o "
      .. procs.quote(trace) .. " "
      .. procs.lua_command(CHILD, { m.url, KEY, journal, "fsync test", "exit" })
    local pid = procs.spawn(cmd, out, err)
    pids[#pids + 1] = pid
    local deadline = os.time() + 20
    while procs.alive(pid) and os.time() < deadline do require("kie.core").sleep(0.02) end
    local id = (procs.read_file(out) or ""):match("created (task_[%w_]+)")
    assert.is_string(id, "stderr: " .. tostring(procs.read_file(err)))
    -- order of events in the trace: open journal -> write id -> fsync -> print id
    local fd, wrote, synced, printed
    local intent, intent_synced, sent
    local n = 0
    for line in (procs.read_file(trace) or ""):gmatch("[^\n]+") do
      n = n + 1
      local got = line:match('open[a]?t?%(.-"' .. journal:gsub("%p", "%%%0") .. '".-%)%s+=%s+(%d+)')
      if got then fd = got end
      local to_journal = fd and line:match("writev?%(" .. fd .. ",")
      if to_journal and not intent and line:find('\\"intent\\"', 1, true) then intent = n end
      if intent and not intent_synced and line:match("f[data]*sync%(" .. fd .. "%)") then intent_synced = n end
      if not sent and line:match("^%d*%s*send[tomsg]*%(") and line:find("createTask", 1, true) then sent = n end
      if fd and not wrote and line:match("writev?%(" .. fd .. ",") and line:find(id, 1, true) then wrote = n end
      if wrote and not synced and (line:match("fsync%(" .. fd .. "%)") or line:match("fdatasync%(" .. fd .. "%)")) then
        synced = n
      end
      if not printed and line:match("write%(1,") and line:find("created " .. id, 1, true) then printed = n end
    end
    assert.is_string(fd, "journal never opened")
    assert.is_number(wrote, "id never written to the journal")
    assert.is_number(synced, "journal never fsync'd")
    assert.is_number(printed, "id never printed")
    assert.is_true(wrote < synced and synced < printed)
    -- the intent before it: written and fsync'd before the create is sent
    assert.is_number(intent, "intent never written to the journal")
    assert.is_number(sent, "the create was never seen sent")
    assert.is_true(intent < intent_synced and intent_synced < sent and sent < wrote)
  end)
end)
