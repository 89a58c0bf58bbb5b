-- Batches beyond one machine, one process: client:submit puts a batch on a Redis
-- stream (every request validated first), client:work takes its items through a
-- consumer group and creates each once, client:batch shows progress and results;
-- an item whose create may have gone out in a dead worker ends unknown_outcome
-- (never created again) unless its intent is resolved.
local kie = require "kie"
local mock = require "spec.support.mock"
local server = require "spec.support.redis"

local KEY = "sk-fleet-batch-spec"
local CREATE = "/api/v1/jobs/createTask"

local function request(i, tag)
  return { model = "ideogram/character",
    input = { prompt = (tag or "batch") .. " " .. i, reference_image_urls = { "https://example.com/ref.png" } } }
end

local names = 0
local function fresh_name()
  names = names + 1
  return "fb" .. names .. "-" .. math.random(1, 1e9)
end

describe("fleet batches: submit, work, batch #fleet #integration", function()
  local m, srv

  lazy_setup(function()
    srv = server.start()
    m = mock.start{ api_key = KEY, pace = 0.02 }
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if srv then srv:close() end
  end)
  before_each(function() m:reset() end)

  local function client(name)
    local o = { api_key = KEY, base_url = m.url, timeout = 5, max_retries = 1,
      rate_limits = { create = { limit = 50, window = 1 }, poll = false } }
    if name then o.fleet = { redis = srv.url, name = name } end
    return kie.new(o)
  end

  -- the prompts of every create the mock received, counted
  local function creates_by_prompt()
    local seen = {}
    for _, r in ipairs(m:requests(CREATE)) do
      local body = mock.json.decode(r.body)
      local p = body.input.prompt
      seen[p] = (seen[p] or 0) + 1
    end
    return seen
  end

  it("submit, work and batch need a fleet client", function()
    local c = client(nil)
    assert.has_error(function() c:submit{ request(1) } end,
      "submit: batches need a fleet client (kie.new{fleet = {redis =, name =}})")
    assert.has_error(function() c:work{ batch = "x" } end,
      "work: batches need a fleet client (kie.new{fleet = {redis =, name =}})")
    assert.has_error(function() c:batch("x") end,
      "batch: batches need a fleet client (kie.new{fleet = {redis =, name =}})")
    c:close()
  end)

  it("an invalid item puts nothing on Redis: one validation error naming it", function()
    local name = fresh_name()
    local c = client(name)
    local reqs = { request(1), request(2), { model = "ideogram/character", input = {} }, request(4) }
    local before = srv:cli("DBSIZE")
    local id, err = c:submit(reqs)
    assert.is_nil(id)
    assert.equals("validation", err.kind)
    assert.equals(3, err.index)
    assert.matches("submit: request 3: ", err.message, 1, true)
    assert.equals(before, srv:cli("DBSIZE"))
    assert.has_error(function() c:submit("x") end)
    assert.has_error(function() c:submit{} end, "submit: requests must be a non-empty list")
    c:close()
  end)

  it("one worker ends every item, each created once; results by index", function()
    local name = fresh_name()
    local c = client(name)
    local reqs = {}
    for i = 1, 7 do reqs[i] = request(i, name) end
    reqs[5].input.prompt = reqs[5].input.prompt .. " #fail=501"
    local id = assert(c:submit(reqs))
    assert.is_string(id)
    local st0 = assert(c:batch(id))
    assert.same({ total = 7, done = 0, failed = 0 }, { total = st0.total, done = st0.done, failed = st0.failed })
    local seen_progress = 0
    local st = assert(c:work{ batch = id, concurrency = 3, max_interval = 0.1, on_progress = function(p)
      seen_progress = seen_progress + 1
      assert.equals(7, p.total)
    end })
    assert.is_true(seen_progress > 0)
    assert.equals(7, st.total)
    assert.equals(6, st.done)
    assert.equals(1, st.failed)
    for i = 1, 7 do
      local r = st.results[i]
      assert.is_string(r.task_id)
      if i == 5 then
        assert.equals("failed", r.state)
        assert.equals("task_failed", r.kind)
      else
        assert.equals("done", r.state)
        assert.is_true(#r.urls >= 1)
      end
    end
    local seen = creates_by_prompt()
    for i = 1, 7 do assert.equals(1, seen[reqs[i].input.prompt]) end
    -- a second work on an ended batch returns at once, sends nothing
    local n = m:count(CREATE)
    local again = assert(c:work{ batch = id })
    assert.equals(6, again.done)
    assert.equals(n, m:count(CREATE))
    -- seen from another client
    local other = client(name)
    local st2 = assert(other:batch(id))
    assert.same(st.results, st2.results)
    other:close()
    c:close()
  end)

  it("work{all = true} ends every batch of the fleet, and only this fleet's", function()
    local name = fresh_name()
    local c = client(name)
    local a = assert(c:submit{ request(1, name .. "a"), request(2, name .. "a") })
    local b = assert(c:submit{ request(1, name .. "b") })
    local other = client(fresh_name())
    local o = assert(other:submit{ request(1, "other") })
    local st = assert(c:work{ all = true, max_interval = 0.1 })
    assert.same({ batches = 2 }, st)
    assert.equals(2, assert(c:batch(a)).done)
    assert.equals(1, assert(c:batch(b)).done)
    assert.equals(0, assert(other:batch(o)).done)
    assert.is_nil(creates_by_prompt()["other 1"])
    assert.has_error(function() c:work{ all = true, batch = a } end, "work: give either batch = ID or all = true")
    other:close()
    c:close()
  end)

  it("unknown batch ids: batch returns not_found; a bad id raises", function()
    local c = client(fresh_name())
    local st, err = c:batch("nope")
    assert.is_nil(st)
    assert.equals("not_found", err.kind)
    local _, werr = c:work{ batch = "nope" }
    assert.equals("not_found", werr.kind)
    assert.has_error(function() c:batch("a b") end)
    assert.has_error(function() c:work{ batch = "x", concurrency = 0 } end)
    assert.has_error(function() c:work{ bacth = "x" } end, "work: unknown option 'bacth'")
    c:close()
  end)

  it("an item whose intent a dead worker left ends unknown_outcome, never created again; "
    .. "batch_created resolves it", function()
    local name = fresh_name()
    local c = client(name)
    local reqs = { request(1, name), request(2, name) }
    local id = assert(c:submit(reqs))
    -- a worker that claimed item 1 (intent recorded) and died before any create
    local store = require "kie.fleet_batch_store"
    local s = assert(store.open(c))
    local r = assert(s:claim(id, 1, "deadworker", 0.2))
    assert.equals("create", r[1])
    local intent = r[2]
    s:close()
    local st = assert(c:work{ batch = id, lease = 0.2, max_interval = 0.1 })
    assert.equals(1, st.done)
    assert.equals(1, st.failed)
    assert.equals("unknown_outcome", st.results[1].kind)
    assert.equals(intent, st.results[1].intent)
    local seen = creates_by_prompt()
    assert.is_nil(seen[reqs[1].input.prompt])
    assert.equals(1, seen[reqs[2].input.prompt])
    -- a callback naming the intent resolves it: the item is waited on, not created
    local task = assert(c:create_task(reqs[1]))
    assert.is_true(c:batch_created(task.taskId, reqs[1].model, intent))
    assert.is_false(c:batch_created(task.taskId, reqs[1].model, intent)) -- once
    assert.is_false(c:batch_created("x", "m", "not-a-batch-intent"))
    local st2 = assert(c:work{ batch = id, lease = 0.2, max_interval = 0.1 })
    assert.equals(2, st2.done)
    assert.equals(0, st2.failed)
    assert.equals(task.taskId, st2.results[1].task_id)
    assert.equals(1, creates_by_prompt()[reqs[1].input.prompt])
    c:close()
  end)

  it("a worker's create names its batch intent in callBackUrl (kie_batch); a callback naming it, "
    .. "handed to deliver, gives the unknown item its task id and it is waited on", function()
    local name = fresh_name()
    local c = client(name)
    local cb = m.url .. "/_mock/callback_sink?x=1"
    local reqs = { request(1, name), request(2, name) }
    reqs[1].callBackUrl, reqs[2].callBackUrl = cb, cb
    local id = assert(c:submit(reqs))
    -- item 1: a worker claimed it, sent its create and died before recording the task id
    local store = require "kie.fleet_batch_store"
    local s = assert(store.open(c))
    local r = assert(s:claim(id, 1, "deadworker", 0.2))
    local intent = r[2]
    s:close()
    local sent = {}
    for k, v in pairs(reqs[1]) do sent[k] = v end
    sent.callBackUrl = cb .. "&kie_batch=" .. intent
    local task = assert(client():create_task(sent))
    local st = assert(c:work{ batch = id, lease = 0.2, max_interval = 0.1 })
    assert.equals("unknown_outcome", st.results[1].kind)
    -- item 2's create, sent by work, carries its own batch intent
    local url
    for _, q in ipairs(m:requests(CREATE)) do
      local body = mock.json.decode(q.body)
      if body.input.prompt == reqs[2].input.prompt then url = body.callBackUrl end
    end
    assert.truthy(url:find(cb, 1, true) == 1, url)
    assert.truthy(url:match("[?&]kie_batch=kb:[^&#]+"), url)
    -- kie.ai's callback echoes the create body in param
    local core = require "kie.core"
    local body = core.encode{ code = 200, msg = "done", data = { taskId = task.taskId,
      model = sent.model, state = "success", param = core.encode(sent),
      resultJson = '{"resultUrls":["https://example.com/a.png"]}' } }
    local hk = "fb-hmac" -- only a signed callback resolves anything
    assert.is_nil(c:batch(id).results[1].task_id)
    assert(c:deliver(body, {})) -- unsigned: wakes waits, resolves nothing
    assert.equals("failed", c:batch(id).results[1].state)
    assert(c:deliver(body, require("kie.callback").sign(hk, task.taskId, os.time()), { hmac_key = hk }))
    local st2 = assert(c:work{ batch = id, lease = 0.2, max_interval = 0.1 })
    assert.equals(2, st2.done)
    assert.equals(task.taskId, st2.results[1].task_id)
    assert.equals(1, creates_by_prompt()[reqs[1].input.prompt]) -- the dead worker's only
    c:close()
  end)
end)
