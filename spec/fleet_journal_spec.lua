-- The fleet journal (kie.fleet_journal), one process: intents in Redis before a
-- create is sent, task ids and terminal states after, leases on waited-on tasks,
-- resume() claiming what a dead process left, a foreign intent resolved by
-- created(), the local journal file kept as the write-ahead record.
local kie = require "kie"
local mock = require "spec.support.mock"
local server = require "spec.support.redis"
local procs = require "spec.support.procs"
local util = require "spec.support.util"
local socket = require "socket"

local KEY = "sk-fleet-journal-spec"
local CREATE = "/api/v1/jobs/createTask"
local MODEL = "ideogram/character"

local function request(i, extra)
  local r = { model = MODEL,
    input = { prompt = "fjournal " .. i, reference_image_urls = { "https://example.com/ref.png" } } }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

local names = 0
local function fresh_name()
  names = names + 1
  return "fj" .. names .. "-" .. math.random(1, 1e9)
end

local function ids(list, field)
  local out = {}
  for _, e in ipairs(list) do out[#out + 1] = e[field] end
  table.sort(out)
  return out
end

describe("fleet journal: intents, tasks, leases and resume in Redis #fleet #integration", function()
  local m, srv

  lazy_setup(function()
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0.05 }
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
  end)
  before_each(function() m:reset() end)

  local function client(name, extra)
    local fleet = { redis = srv.url, name = name, timeout = 1 }
    for k, v in pairs(extra and extra.fleet or {}) do fleet[k] = v end
    local o = { api_key = KEY, base_url = m.url, timeout = 5, max_retries = 0,
      rate_limits = { create = false, poll = false }, fleet = fleet }
    for k, v in pairs(extra or {}) do if k ~= "fleet" then o[k] = v end end
    return kie.new(o)
  end

  it("checks fleet.lease: a number of seconds in (0, 86400]", function()
    assert.has_error(function() client("x", { fleet = { lease = 0 } }) end,
      "kie.new: option 'fleet': field 'lease' must be a number of seconds in (0, 86400]")
    assert.has_error(function() client("x", { fleet = { lease = "60" } }) end,
      "kie.new: option 'fleet': field 'lease' must be a number, got string")
    client("x", { fleet = { lease = 5 } }):close()
  end)

  it("a fleet client journals in Redis: the task is open and leased by its creator until it finished", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 30 } })
    local task = assert(a:create_task(request(1)))
    local b = client(name)
    assert.same({}, assert(b:resume())) -- leased by a (alive)
    local info = assert(a:wait(task.taskId, { timeout = 10, interval = 0.05 }))
    assert.equals("success", info.state)
    local c = client(name)
    assert.same({}, assert(c:resume())) -- finished
    a:close() b:close() c:close()
  end)

  it("the intent is in Redis before the create is sent; Redis down: kind fleet, nothing sent", function()
    local name = fresh_name()
    local path = procs.tmpname(".jsonl")
    local a = client(name, { journal = path, fleet = { lease = 0.2 } })
    srv:stop()
    local task, err = a:create_task(request(2))
    assert.is_nil(task)
    assert.equals("fleet", err.kind)
    assert.is_true(err.retryable)
    assert.equals(0, m:count(CREATE))
    -- the file's intent written before Redis failed is closed: nothing unresolved
    local file = require("kie.journal").open(path, require "kie.core")
    assert.same({}, file:unfinished())
    srv:restart()
    a:close()
    os.remove(path)
  end)

  it("a dead creator's task and intent are claimed by resume(), by one resumer only", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 0.2 } })
    local task = assert(a:create_task(request(3)))
    local intent = assert(a._journal:intent("fp-of-a-lost-answer", MODEL)) -- sent, answer never read
    -- a dies (never waits, never renews)
    socket.sleep(0.3)
    local b, c = client(name, { fleet = { lease = 30 } }), client(name)
    local got = assert(b:resume())
    assert.equals(2, #got)
    assert.same({ task.taskId }, ids(got, "taskId"))
    assert.same({ intent }, ids(got, "intent"))
    for _, e in ipairs(got) do
      if e.taskId then
        assert.equals(MODEL, e.model)
        assert.equals("number", type(e.created))
      else
        assert.same({ unknown = true, intent = intent, fingerprint = "fp-of-a-lost-answer",
          model = MODEL, created = e.created }, e)
      end
    end
    assert.same({}, assert(c:resume())) -- b holds both now
    -- b's listing again (its own claims) is the same
    assert.equals(2, #assert(b:resume()))
    assert(b:wait(task.taskId, { timeout = 10, interval = 0.05 }))
    a:close() b:close() c:close()
  end)

  it("resume() in several processes at once: each lapsed entry is claimed by exactly one", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 0.2 } })
    local want = {}
    for i = 1, 40 do
      assert(a._journal:created("task_claim_" .. i, MODEL))
      want[#want + 1] = "task_claim_" .. i
      if i % 4 == 0 then want[#want + 1] = assert(a._journal:intent("fp-claim-" .. i, MODEL)) end
    end
    a:close()
    socket.sleep(0.3) -- a died: every lease lapsed
    local script = procs.tmpname(".lua")
    util.write_file(script, [[
      local kie, socket = require "kie", require "socket"
      local url, name, at = ...
      local c = kie.new{ api_key = "k", base_url = "http://127.0.0.1:1",
        fleet = { redis = url, name = name, lease = 30 } }
      socket.sleep(math.max(0, tonumber(at) - socket.gettime()))
      for _, e in ipairs(assert(c:resume())) do print(e.taskId or e.intent) end
      c:close()
    ]])
    local dir = util.tmpdir("kie-fj-claim")
    local at = ("%.3f"):format(socket.gettime() + 0.5)
    local pids = {}
    for i = 1, 4 do
      pids[i] = procs.spawn(procs.lua_command(script, { srv.url, name, at }), dir .. "/" .. i .. ".out",
        dir .. "/" .. i .. ".err")
    end
    local got = {}
    for i, pid in ipairs(pids) do
      while procs.alive(pid) do socket.sleep(0.02) end
      for id in (util.read_file(dir .. "/" .. i .. ".out") or ""):gmatch("[^\n]+") do
        assert.is_nil(got[id], "claimed twice: " .. id)
        got[id] = i
      end
      assert.equals("", util.read_file(dir .. "/" .. i .. ".err"))
    end
    local all = {}
    for id in pairs(got) do all[#all + 1] = id end
    table.sort(all)
    table.sort(want)
    assert.same(want, all)
    util.run("rm -rf " .. util.quote(dir))
    os.remove(script)
  end)

  it("a callback handed to deliver in another process resolves the fleet intent its callBackUrl names", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 0.2 } })
    local plain = kie.new{ api_key = KEY, base_url = m.url, timeout = 5, max_retries = 0,
      rate_limits = { create = false, poll = false } }
    -- a's create is tagged with its intent; its answer never reaches a
    local sent
    local intent = assert(a._journal:intent("fp-cb", MODEL))
    sent = request(9, { callBackUrl = m.url .. "/_mock/callback_sink" })
    require("kie.paid").tag_callback(sent, "kie_intent", intent)
    assert.truthy(sent.callBackUrl:find("kie_intent=" .. intent, 1, true))
    local task = assert(plain:create_task(sent))
    -- kie.ai echoes the create body in the callback's param
    local core = require "kie.core"
    local body = core.encode{ code = 200, msg = "done", data = { taskId = task.taskId, model = MODEL,
      state = "success", param = core.encode(sent), resultJson = '{"resultUrls":["https://example.com/a.png"]}' } }
    local receiver = client(name)
    local hk = "fj-hmac"
    assert(receiver:deliver(body, require("kie.callback").sign(hk, task.taskId, os.time()), { hmac_key = hk }))
    socket.sleep(0.3)
    local got = assert(client(name):resume())
    assert.equals(1, #got)
    assert.equals(task.taskId, got[1].taskId)
    assert.is_nil(got[1].unknown)
    a:close() plain:close() receiver:close()
  end)

  it("created() on an intent another process wrote resolves it (a callback naming it)", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 0.2 } })
    local intent = assert(a._journal:intent("fp-x", MODEL))
    local cb = client(name, { fleet = { lease = 30 } }) -- a process receiving the callback
    assert(cb._journal:created("task_from_callback", MODEL, intent))
    socket.sleep(0.3)
    local r = client(name)
    local got = assert(r:resume())
    assert.equals(1, #got)
    assert.equals("task_from_callback", got[1].taskId)
    assert.is_nil(got[1].unknown)
    -- a late second record of the same task (the creator's own answer) changes nothing
    assert(a._journal:created("task_from_callback", MODEL, intent))
    assert(r._journal:finished("task_from_callback", "success"))
    assert(a._journal:created("task_from_callback", MODEL, intent))
    socket.sleep(0.3)
    assert.same({}, assert(client(name):resume()))
    a:close() cb:close() r:close()
  end)

  it("a wait leases its task and renews the lease; a waiter that stops lets it lapse", function()
    local name = fresh_name()
    m:config{ pace = 0.4 }
    local a = client(name, { fleet = { lease = 0.3 } })
    local other = client(name, { fleet = { lease = 30 } })
    local task = assert(a:create_task(request(4)))
    local h = kie.spawn(function() return a:wait(task.taskId, { timeout = 10, interval = 0.05 }) end)
    local t0 = socket.gettime()
    while not h:done() do
      a:step(10)
      assert.same({}, assert(other:resume())) -- renewed in time: never claimable
      assert(socket.gettime() - t0 < 10)
    end
    assert.equals("success", (assert(h:result())).state)
    -- a second task: a's wait stops being stepped (its process hangs): the lease lapses
    local t2 = assert(a:create_task(request(5)))
    local h2 = kie.spawn(function() return a:wait(t2.taskId, { timeout = 10, interval = 0.05 }) end)
    a:step(0)
    socket.sleep(0.5)
    local got = assert(other:resume())
    assert.same({ t2.taskId }, ids(got, "taskId"))
    while not h2:done() do a:step(10) end
    m:config{ pace = 0.05 }
    a:close() other:close()
  end)

  it("a wait's read retries and their backoff renew the lease too", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 0.3 }, max_retries = 10, retry = { base = 0.25, cap = 0.25 } })
    local other = client(name, { fleet = { lease = 30 } })
    local task = assert(a:create_task(request(41)))
    m:fault{ path = "/api/v1/jobs/recordInfo", fault = "html_502", times = 6 } -- about 1.5 s of retries
    local h = kie.spawn(function() return a:wait(task.taskId, { timeout = 10, interval = 0.05 }) end)
    while not h:done() do
      a:step(10)
      assert.same({}, assert(other:resume()))
    end
    assert.equals("success", (assert(h:result())).state)
    assert.equals(0, #m:faults())
    a:close() other:close()
  end)

  it("a wait that ends without a terminal state releases its lease at once", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 30 } })
    local task = assert(a:create_task(request("#stuck")))
    local info, err = a:wait(task.taskId, { timeout = 0.3, interval = 0.05 })
    assert.is_nil(info)
    assert.equals("deadline", err.kind)
    local got = assert(client(name):resume())
    assert.same({ task.taskId }, ids(got, "taskId"))
    a:close()
  end)

  it("puts the intent id in callBackUrl (kie_intent) so a callback can name it", function()
    local name = fresh_name()
    local a = client(name)
    assert(a:create_task(request(6, { callBackUrl = "https://example.com/cb?x=1" })))
    assert(a:create_task(request(7, { callBackUrl = "https://example.com/cb" })))
    local bodies = m:requests(CREATE)
    local u1 = mock.json.decode(bodies[1].body).callBackUrl
    local u2 = mock.json.decode(bodies[2].body).callBackUrl
    assert.matches("^https://example%.com/cb%?x=1&kie_intent=intent_[%w_:]+$", u1)
    assert.matches("^https://example%.com/cb%?kie_intent=intent_[%w_:]+$", u2)
    a:close()
  end)

  it("forget ends a task, an intent or the oldest intent with a fingerprint, fleet-wide", function()
    local name = fresh_name()
    local a = client(name, { fleet = { lease = 0.2 } })
    local task = assert(a:create_task(request(8)))
    local i1 = assert(a._journal:intent("fp-same", MODEL))
    local i2 = assert(a._journal:intent("fp-same", MODEL))
    assert.is_true(a:forget(task.taskId))
    assert.is_true(a:forget("fp-same"))
    assert.is_false(a:forget("nothing-like-it"))
    socket.sleep(0.3)
    local got = assert(client(name):resume())
    assert.same({ i2 }, ids(got, "intent"))
    assert.is_true(a:forget(i2))
    assert.is_false(a:forget(i1))
    a:close()
  end)

  it("file first, then Redis: a task only the file knows (Redis lost its data) is put back and listed; "
    .. "one Redis saw finished is closed in the file", function()
    local name = fresh_name()
    local path = procs.tmpname(".jsonl")
    local a = client(name, { journal = path, fleet = { lease = 30 } })
    local t1 = assert(a:create_task(request(9)))
    srv:restart() -- Redis loses t1
    local t2 = assert(a:create_task(request(10)))
    a:close() -- the process dies
    assert(client(name)._journal:finished(t2.taskId, "success")) -- finished by another process
    local b = client(name, { journal = path, fleet = { lease = 30 } }) -- restarted, same file
    local got = assert(b:resume())
    assert.same({ t1.taskId }, ids(got, "taskId"))
    assert.same({}, assert(client(name):resume())) -- t1 is back in Redis, leased by b
    local file = require("kie.journal").open(path, require "kie.core")
    assert.same({ t1.taskId }, ids(file:unfinished(), "taskId")) -- t2 closed in the file
    b:close()
    os.remove(path)
  end)

  it("keeps the records of finished tasks and resolved intents for `retain` seconds, then drops them", function()
    local name = fresh_name()
    local a = client(name)
    local j = require("kie.fleet_journal").open(a._fleet, nil, 30, 0.3)
    local base = "{kie:fleet:" .. name .. ":journal}:"
    local intent = assert(j:intent("fp-old", MODEL))
    assert(j:created("task_old", MODEL, intent))
    assert(j:finished("task_old", "success"))
    assert(j:created("task_open", MODEL))
    assert.equals(":1", srv:cli("HEXISTS", base .. "tasks", "task_old"))
    socket.sleep(0.4)
    assert(j:finished("task_new", "fail")) -- a later end drops the ones past retain
    assert.equals(":0", srv:cli("HEXISTS", base .. "tasks", "task_old"))
    assert.equals(":0", srv:cli("HEXISTS", base .. "intents", intent))
    assert.equals(":1", srv:cli("HEXISTS", base .. "tasks", "task_new"))
    assert.equals(":1", srv:cli("HEXISTS", base .. "tasks", "task_open")) -- open: kept
    assert.equals(":1", srv:cli("ZCARD", base .. "gone"))
    a:close()
  end)

  it("resume() with Redis down: nil and kind fleet", function()
    local name = fresh_name()
    local a = client(name)
    srv:stop()
    local got, err = a:resume()
    assert.is_nil(got)
    assert.equals("fleet", err.kind)
    srv:restart()
    a:close()
  end)

  it("a task id Redis missed (it was down) is written again before the next script: "
    .. "resume() lists the task, not its intent as unknown", function()
    local keep = server.start{ persist = true } -- back with its data
    local a = kie.new{ api_key = KEY, base_url = m.url, rate_limits = { create = false, poll = false },
      fleet = { redis = keep.url, name = fresh_name(), timeout = 0.5, connect_timeout = 0.5 } }
    local j = a._journal
    local intent = assert(j:intent("fp-missed", MODEL))
    keep:stop()
    local ok, msg = j:created("task_missed", MODEL, intent) -- the create's answer came meanwhile
    assert.is_nil(ok)
    assert.matches("nothing was sent", msg)
    keep:restart{ keep = true }
    local list = assert(a:resume())
    assert.same({ "task_missed" }, ids(list, "taskId"))
    assert.equals(1, #list)
    a:close()
    keep:close()
  end)

  it("an intent Redis ran after its caller gave up (frozen, then let go) is closed: resume() "
    .. "does not list it", function()
    local a = client(fresh_name(), { fleet = { timeout = 0.3, connect_timeout = 0.3 } })
    local j = a._journal
    assert(j:created("task_before", MODEL, assert(j:intent("fp-before", MODEL)))) -- (scripts cached)
    srv:freeze()
    local id, err = j:intent("fp-late", MODEL)
    srv:thaw()
    assert.is_nil(id)
    assert.equals("fleet", err.kind)
    socket.sleep(0.2) -- Redis runs what it got meanwhile
    local list = assert(a:resume())
    assert.same({ "task_before" }, ids(list, "taskId"))
    assert.equals(1, #list)
    a:close()
  end)

  it("is in the rock and installed with it", function()
    local rock = util.read_file("kie-fleet-scm-1.rockspec")
    assert.truthy(rock:find('["kie.fleet_journal"] = "lua/kie/fleet_journal.lua"', 1, true))
    assert.truthy(util.read_file("Makefile"):find("lua/kie/fleet_journal.lua", 1, true))
  end)
end)
