-- The paid-call state machine in the journal (issue 10, item 5 and the promise
-- "A paid call is a state machine: intent -> sent -> answered | unknown"): the
-- intent is on disk before a create is sent, on every create path; an
-- unknown_outcome stays as an unresolved intent that resume() lists with
-- unknown = true; forget() ends one; a task kie.ai no longer knows (404) ends.
local kie = require "kie"
local core = require "kie.core"
local journal = require "kie.journal"
local mock = require "spec.support.mock"
local procs = require "spec.support.procs"

local KEY = "sk-journal-intent-7c31"
local CREATE = "/api/v1/jobs/createTask"
local CHILD = mock.support_dir .. "/journal_child.lua"

local function req(prompt)
  return { model = "ideogram/character",
    input = { prompt = prompt, reference_image_urls = { "https://example.com/ref.png" } } }
end

local function lines_of(path)
  local out = {}
  for line in (procs.read_file(path) or ""):gmatch("[^\n]+") do
    out[#out + 1] = core.decode(line)
  end
  return out
end

local function events(path)
  local out = {}
  for i, rec in ipairs(lines_of(path)) do out[i] = rec.event end
  return table.concat(out, " ")
end

describe("kie.journal: intents", function()
  local paths = {}
  local function tmp()
    local p = procs.tmpname(".jsonl")
    paths[#paths + 1] = p
    return p
  end
  teardown(function()
    for _, p in ipairs(paths) do os.remove(p) end
  end)

  it("lists an intent without an answer as unknown, with its fingerprint", function()
    local path = tmp()
    local j = journal.open(path, core)
    local id = assert(j:intent("fp-1", "ideogram/character"))
    assert.matches("^intent_", id)
    local left = journal.open(path, core):unfinished()
    assert.equals(1, #left)
    assert.is_true(left[1].unknown)
    assert.equals(id, left[1].intent)
    assert.equals("fp-1", left[1].fingerprint)
    assert.equals("ideogram/character", left[1].model)
    assert.is_number(left[1].created)
    assert.is_nil(left[1].taskId)
  end)

  it("an answer or a sure refusal resolves the intent", function()
    local path = tmp()
    local j = journal.open(path, core)
    local a = assert(j:intent("fp-a", "m"))
    local b = assert(j:intent("fp-b", "m"))
    assert.are_not.equal(a, b)
    assert.is_true(j:created("task_a", "m", a))
    assert.is_true(j:not_created(b, "credits"))
    local left = journal.open(path, core):unfinished()
    assert.equals(1, #left)
    assert.equals("task_a", left[1].taskId)
    assert.is_nil(left[1].unknown)
  end)

  it("forget ends a task, an intent by id, or the oldest intent with a fingerprint", function()
    local path = tmp()
    local j = journal.open(path, core)
    local i1 = assert(j:intent("fp-same", "m"))
    local i2 = assert(j:intent("fp-same", "m"))
    local i3 = assert(j:intent("fp-other", "m"))
    assert.is_true(j:created("task_1", "m"))
    assert.is_true(j:forget("fp-same"))
    local left = j:unfinished()
    assert.equals(3, #left)
    assert.equals(i2, left[1].intent)
    assert.is_true(j:forget(i3))
    assert.is_true(j:forget("task_1"))
    left = journal.open(path, core):unfinished()
    assert.equals(1, #left)
    assert.equals(i2, left[1].intent)
    assert.is_false(j:forget("task_nope"))
    assert.is_false(j:forget(i1)) -- already ended
  end)

  it("a paid call does not keep its request alive (Lua 5.1 / LuaJIT: no ephemerons)", function()
    local paid = require "kie.paid"
    local client = { _journal = journal.open(tmp(), core), _mod = core }
    local probe = setmetatable({}, { __mode = "v" })
    do
      local req = { model = "m", input = { prompt = "p" } }
      probe[1] = req
      assert.is_table(paid.new(client, req))
      assert.equals("m", paid.of(req).model)
    end
    collectgarbage()
    collectgarbage()
    assert.is_nil(probe[1])
  end)

  it("still reads the records of older versions", function()
    local path = tmp()
    local f = assert(io.open(path, "w"))
    f:write('{"event":"created","taskId":"task_old1","model":"ideogram/character","created":1700000000}\n',
      '{"event":"created","taskId":"task_old2","model":"ideogram/v3-reframe","created":1700000001}\n',
      '{"event":"finished","taskId":"task_old1","state":"success","at":1700000100}\n',
      '{"event":"some_future_event","taskId":"task_old2"}\n')
    f:close()
    local left = journal.open(path, core):unfinished()
    assert.same({ { taskId = "task_old2", model = "ideogram/v3-reframe", created = 1700000001 } }, left)
  end)
end)

describe("the paid-call state machine in the journal #integration", function()
  local m
  local paths, pids = {}, {}

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.4 }
  end)
  lazy_teardown(function()
    for _, pid in ipairs(pids) do
      if procs.alive(pid) then procs.kill(pid, "KILL") end
    end
    for _, p in ipairs(paths) do os.remove(p) end
    if m then m:stop() end
  end)
  after_each(function() m:reset() end)

  local function tmp(suffix)
    local p = procs.tmpname(suffix or ".jsonl")
    paths[#paths + 1] = p
    return p
  end

  local function client(path, extra)
    local o = { api_key = KEY, base_url = m.url, journal = path, timeout = 5, max_retries = 0,
      rate_limits = { create = false, poll = false } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return kie.new(o)
  end

  -- the journal holds one unresolved intent whose fingerprint is err's
  local function assert_unknown_listed(c, path, err)
    assert.equals("unknown_outcome", err.kind)
    assert.is_string(err.fingerprint)
    assert.equals("intent", events(path))
    local open = c:resume()
    assert.equals(1, #open)
    assert.is_true(open[1].unknown)
    assert.equals(err.fingerprint, open[1].fingerprint)
    assert.equals("ideogram/character", open[1].model)
    assert.is_number(open[1].created)
    assert.equals(open[1].intent, err.intent)
  end

  it("a create whose answer is lost stays as an unresolved intent; forget ends it", function()
    local path = tmp()
    local c = client(path)
    m:fault{ path = CREATE, fault = "drop_after_body" }
    local before = m:count(CREATE)
    local task, err = c:create_task(req("answer lost"))
    assert.is_nil(task)
    assert.equals(1, m:count(CREATE) - before) -- a task IS created server-side
    assert_unknown_listed(c, path, err)
    -- a new process sees it too
    local c2 = client(path)
    assert.equals(err.fingerprint, c2:resume()[1].fingerprint)
    assert.is_true(c2:forget(err.fingerprint))
    assert.same({}, c2:resume())
    assert.same({}, client(path):resume())
    assert.is_false(c2:forget(err.fingerprint))
    c:close()
    c2:close()
  end)

  it("the intent is on disk before the create is sent, the task id after the answer", function()
    local path = tmp()
    local c = client(path)
    local task = assert(c:create_task(req("in order")))
    local recs = lines_of(path)
    assert.equals("intent created", events(path))
    assert.is_string(recs[1].fingerprint)
    assert.equals(recs[1].intent, recs[2].intent)
    assert.equals(task.taskId, recs[2].taskId)
    local open = c:resume()
    assert.equals(1, #open)
    assert.equals(task.taskId, open[1].taskId)
    c:close()
  end)

  it("a create the server refused resolves its intent", function()
    local path = tmp()
    local c = client(path)
    m:fault{ path = CREATE, fault = "status", status = 402, msg = "Insufficient credits" }
    local task, err = c:create_task(req("refused"))
    assert.is_nil(task)
    assert.equals("credits", err.kind)
    assert.equals("intent not_created", events(path))
    assert.same({}, c:resume())
    c:close()
  end)

  it("an intent that cannot be written: nothing is sent", function()
    local c = client("/nonexistent-dir/j.jsonl")
    local before = m:count(CREATE)
    local task, err = c:create_task(req("no journal"))
    assert.is_nil(task)
    assert.equals("io", err.kind)
    assert.matches("journal", err.message)
    assert.equals(0, m:count(CREATE) - before)
    c:close()
  end)

  it("create_task_async, run, run_all and kie.spawn journal the unknown intent", function()
    local function try(name, go)
      local path = tmp()
      local c = client(path)
      m:fault{ path = CREATE, fault = "drop_after_body" }
      local err = go(c)
      assert.is_table(err, name)
      assert_unknown_listed(c, path, err)
      c:close()
    end
    try("create_task_async", function(c)
      local got
      c:create_task_async(req("async lost"), function(_, e) got = e end)
      for _ = 1, 500 do
        if got then break end
        c:step(10)
      end
      return got
    end)
    try("run", function(c)
      local _, e = c:run(req("run lost"))
      return e
    end)
    try("run_all", function(c)
      local _, errs = c:run_all({ req("run_all lost") })
      return errs and errs[1]
    end)
    try("spawn", function(c)
      local h = kie.spawn(function() return c:create_task(req("spawn lost")) end)
      for _ = 1, 500 do
        if h:done() then break end
        c:step(10)
      end
      local _, e = h:result()
      return e
    end)
  end)

  it("a create canceled after it was sent: an unknown intent, resolved by its late answer", function()
    local path = tmp()
    local c = client(path)
    m:fault{ path = CREATE, fault = "delay", seconds = 0.3 }
    local got
    local h = c:create_task_async(req("canceled in flight"), function(_, e) got = e end)
    assert.is_true(h:cancel())
    c:step(0)
    assert_unknown_listed(c, path, got)
    assert.equals("canceled", got.cause)
    -- the answer is still read; its task id resolves the intent
    for _ = 1, 500 do
      if h.task_id then break end
      c:step(10)
    end
    assert.is_string(h.task_id)
    local open = c:resume()
    assert.equals(1, #open)
    assert.equals(h.task_id, open[1].taskId)
    assert.is_nil(open[1].unknown)
    local recs = lines_of(path)
    assert.equals("intent created", events(path))
    assert.equals(recs[1].intent, recs[2].intent)
    c:close()
  end)

  it("a canceled create whose late answer is lost stays unknown", function()
    local path = tmp()
    local c = client(path)
    m:fault{ path = CREATE, fault = "drop_after_body", delay = 0.3 }
    local got
    local h = kie.spawn(function() return c:create_task(req("canceled, then lost")) end)
    assert.is_true(h:cancel())
    got = select(2, h:result())
    for _ = 1, 100 do c:step(10) end
    assert.is_nil(h.task_id)
    assert_unknown_listed(c, path, got)
    c:close()
  end)

  it("close with a create's answer read but not handed over: its task id resolves the intent", function()
    local path = tmp()
    local fake = require("kie.testing").new{ latency = 1 }
    local fc = fake:client{ journal = path, rate_limits = { create = false, poll = false } }
    local h1 = fc:create_task_async(req("closed 1"))
    local h2 = fc:create_task_async(req("closed 2"))
    fake:advance(2)
    fc:step(0, 0) -- one answer handed over, the other queued
    local h = h1:done() and h2 or h1
    fc:close()
    local err = select(2, h:result())
    assert.equals("unknown_outcome", err.kind)
    assert.is_string(err.intent)
    local open = journal.open(path, core):unfinished()
    assert.equals(2, #open)
    for _, e in ipairs(open) do
      assert.is_nil(e.unknown)
      assert.is_string(e.taskId)
    end
    assert.equals("intent intent created created", events(path))
  end)

  it("a process killed between intent and answer leaves the intent on disk", function()
    local path, out, errf = tmp(), tmp(".out"), tmp(".err")
    m:fault{ path = CREATE, fault = "delay", seconds = 3 }
    local pid = procs.spawn(procs.lua_command(CHILD, { m.url, KEY, path, "killed mid-create", "exit" }), out, errf)
    pids[#pids + 1] = pid
    local found = procs.wait_for(path, '"event":"(intent)"', 10)
    assert.equals("intent", found, "no intent on disk; stderr: " .. tostring(procs.read_file(errf)))
    assert.is_true(procs.alive(pid))
    assert.is_true(procs.kill(pid, "KILL"))
    assert.is_nil((procs.read_file(out) or ""):find("created", 1, true))
    local c = client(path)
    local open = c:resume()
    assert.equals(1, #open)
    assert.is_true(open[1].unknown)
    assert.is_string(open[1].fingerprint)
    assert.equals("ideogram/character", open[1].model)
    c:close()
  end)

  it("a task kie.ai no longer knows (404) ends and leaves resume()", function()
    for _, how in ipairs{ "get_task", "wait" } do
      local path = tmp()
      assert.is_true(journal.open(path, core):created("task_gone_" .. how, "ideogram/character"))
      local c = client(path)
      assert.equals(1, #c:resume())
      local info, err
      if how == "get_task" then
        info, err = c:get_task("task_gone_" .. how)
      else
        info, err = c:wait("task_gone_" .. how, { timeout = 5, interval = 0.05 })
      end
      assert.is_nil(info)
      assert.equals("not_found", err.kind)
      assert.same({}, c:resume(), how)
      assert.same({}, client(path):resume(), how)
      local recs = lines_of(path)
      assert.equals("finished", recs[#recs].event)
      assert.equals("not_found", recs[#recs].state)
      c:close()
    end
  end)

  it("forget without a journal raises; forget of a task ends it", function()
    local c0 = kie.new{ api_key = KEY, base_url = m.url }
    assert.has_error(function() c0:forget("task_x") end)
    c0:close()
    local path = tmp()
    local c = client(path)
    assert.has_error(function() c:forget(42) end)
    local task = assert(c:create_task(req("to forget")))
    assert.is_true(c:forget(task.taskId))
    assert.same({}, c:resume())
    assert.is_false(c:forget(task.taskId))
    c:close()
  end)
end)
