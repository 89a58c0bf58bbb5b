-- kie.testing: the fake kie.ai for users' own tests, exercised through real
-- kie.new clients. Time is the fake's virtual clock: every assertion about time is
-- about fake:now() and the recorded requests, never about the wall clock.
local kie = require "kie"
local testing = require "kie.testing"
local unpack = table.unpack or unpack

local REQ = {
  model = "ideogram/character",
  input = { prompt = "A knight", reference_image_urls = { "https://example.com/me.png" } },
}

-- a copy of REQ with a different prompt (and num_images)
local function req(prompt, n)
  return { model = REQ.model, input = { prompt = prompt, reference_image_urls = REQ.input.reference_image_urls,
    num_images = n } }
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Steps `c` until pred() holds, at most `n` (1000) steps: a bound on work, not on time.
local function pump(c, pred, n)
  for _ = 1, n or 1000 do
    if pred() then return end
    c:step(c:poll_timeout() or 100)
  end
  error("pump: still not done", 2)
end

describe("kie.testing #unit", function()
  local fake, client
  before_each(function()
    fake = testing.new{}
    client = fake:client()
  end)

  describe("tasks in virtual time", function()
    it("run creates, polls through every state and succeeds; the clock moved, not the wall", function()
      local seen = {}
      local info, err = client:run{ model = REQ.model, input = REQ.input,
        wait = { on_update = function(i) seen[#seen + 1] = i.state end } }
      assert.is_nil(err)
      assert.equals("success", info.state)
      assert.same({ "waiting", "queuing", "generating", "success" }, seen)
      assert.equals(1, #fake:requests("create_task"))
      local polls = fake:requests("get_task")
      assert.is_true(#polls >= 4)
      assert.equals(0, polls[1].at)                     -- the first poll is at once
      assert.is_true(fake:now() >= 9)                   -- 3 pending states of 3 s
      assert.is_true(fake:now() < 9 + 3.1)              -- and a 2-3 s poll band after
      assert.equals(info.taskId, polls[#polls].task_id)
    end)

    it("answers with the real core's shapes: decoded param and resultJson, resultUrls, times", function()
      local info = assert(client:run(req("two", 2)))
      assert.equals("ideogram/character", info.model)
      assert.equals("two", info.param.input.prompt)
      assert.equals("2", info.param.input.num_images)  -- sent as the client coerced it
      assert.equals(2, #info.resultUrls)
      assert.same(info.resultUrls, info.resultJson.resultUrls)
      assert.equals("", info.failCode)
      assert.equals(1700000000000, info.createTime)
      assert.equals(info.createTime + info.costTime, info.completeTime)
      local pending = fake:task(fake:add_task(REQ))
      assert.equals("waiting", pending.state)
      assert.is_nil(pending.resultJson)
      assert.is_nil(pending.failCode)
      assert.same({}, pending.resultUrls)
    end)

    it("walks tasks by the clock at the given pace; advance moves it", function()
      fake = testing.new{ pace = { waiting = 1, queuing = 2, generating = 10 } }
      local id = fake:add_task(REQ)
      assert.equals("waiting", fake:task(id).state)
      fake:advance(1)
      assert.equals("queuing", fake:task(id).state)
      assert.equals(13, fake:advance(12))
      assert.equals("success", fake:task(id).state)
      assert.is_nil(fake:task("task_unknown"))
    end)

    it("a failed task is task_failed with failCode, failMsg and task_id", function()
      local task = assert(client:create_task(REQ))
      fake:finish(task.taskId, "fail", { failCode = "422", failMsg = "Content policy violation" })
      local info, err = client:wait(task.taskId)
      assert.is_nil(info)
      assert.equals("task_failed", err.kind)
      assert.equals("422", err.failCode)
      assert.equals("Content policy violation", err.failMsg)
      assert.equals(task.taskId, err.task_id)
    end)

    it("outcome: an option, a function, or #fail / #stuck markers in the input", function()
      local f2 = testing.new{ outcome = function(r)
        if r.input.prompt == "bad" then return "fail", { failCode = "501", failMsg = "nope" } end
        return "success"
      end }
      local c2 = f2:client()
      assert.truthy(c2:run(req("good")))
      local _, err = c2:run(req("bad"))
      assert.equals("501", err.failCode)
      _, err = client:run(req("this one #fail=400"))
      assert.equals("task_failed", err.kind)
      assert.equals("400", err.failCode)
      _, err = testing.new{ outcome = "fail" }:client():run(REQ)
      assert.equals("500", err.failCode)
      assert.equals("Internal server error", err.failMsg)
    end)

    it("wait gives up at its deadline on a stuck task, in virtual time", function()
      local info, err = client:run{ model = REQ.model, input = { prompt = "#stuck",
        reference_image_urls = REQ.input.reference_image_urls }, wait = { timeout = 600 } }
      assert.is_nil(info)
      assert.equals("deadline", err.kind)
      assert.equals("generating", err.state)
      assert.is_true(fake:now() >= 590 and fake:now() <= 600)
    end)

    it("set_state holds a task in a pending state until it is finished", function()
      local id = fake:add_task(REQ)
      fake:set_state(id, "queuing")
      fake:advance(3600)
      assert.equals("queuing", fake:task(id).state)
      fake:finish(id, "success", { resultUrls = { "https://cdn.example/x.png" } })
      assert.same({ "https://cdn.example/x.png" }, fake:task(id).resultUrls)
      assert.has_error(function() fake:set_state("task_nope", "fail") end)
      assert.has_error(function() fake:set_state(id, "done") end)
      assert.has_error(function() fake:finish(id, "waiting") end)
    end)

    it("answers an unknown task id as kie.ai does: not_found, not retried", function()
      local info, err = client:get_task("task_nobody")
      assert.is_nil(info)
      assert.equals("not_found", err.kind)
      assert.equals(404, err.code)
      assert.equals(404, err.status)
      assert.equals("task_nobody", err.task_id)
      assert.matches("Task not found", err.message)
      assert.equals(1, #fake:requests("get_task"))
    end)
  end)

  describe("scripted faults", function()
    it("reads retry a 429 after its Retry-After, then succeed", function()
      local id = fake:add_task(REQ)
      fake:fail_next("get_task", { kind = "rate_limited", retry_after = 2 })
      local info = assert(client:get_task(id))
      assert.equals("waiting", info.state)
      local polls = fake:requests("get_task")
      assert.equals(2, #polls)
      assert.equals("rate_limited", polls[1].fault.kind)
      assert.is_true(polls[2].at - polls[1].at >= 2)
    end)

    it("reads retry 5xx (an API code 500, an HTML 502) up to max_retries", function()
      fake:fail_next("credits", { code = 500, status = 200 })
      fake:fail_next("credits", { status = 502 })
      assert.equals(100, client:credits())
      assert.equals(3, #fake:requests("credits"))
      fake:fail_next("credits", { kind = "server" }, math.huge)
      local n, err = fake:client{ max_retries = 2 }:credits()
      assert.is_nil(n)
      assert.equals("server", err.kind)
      assert.equals(500, err.code)
      assert.equals(3 + 3, #fake:requests("credits"))
    end)

    it("a create is not resent after a timeout: unknown_outcome with a fingerprint", function()
      fake:fail_next("create_task", { kind = "timeout" })
      local task, err = client:create_task(REQ)
      assert.is_nil(task)
      assert.equals("unknown_outcome", err.kind)
      assert.equals("timeout", err.cause)
      assert.is_false(err.retryable)
      assert.is_string(err.fingerprint)
      assert.equals(1, #fake:requests("create_task"))
      assert.equals(30, fake:now()) -- the client's timeout passed
    end)

    it("a timeout fault takes a read's shorter timeout: wait ends at its deadline", function()
      local task = assert(client:create_task(REQ))
      local t0 = fake:now()
      fake:fail_next("get_task", { kind = "timeout" }, math.huge)
      local info, err = client:wait(task.taskId, { timeout = 5 })
      assert.is_nil(info)
      assert.equals("deadline", err.kind)
      assert.equals("timeout", err.last_error.kind)
      assert.is_true(fake:now() <= t0 + 5, "wait{timeout = 5} ended at +" .. (fake:now() - t0))
      -- the same through a spawned wait (the core's get_task_start)
      t0 = fake:now()
      local h = kie.spawn(function() return client:wait(task.taskId, { timeout = 4 }) end)
      pump(client, function() return h:done() end)
      local _, aerr = h:result()
      assert.equals("deadline", aerr.kind)
      assert.is_true(fake:now() <= t0 + 4, "spawned wait{timeout = 4} ended at +" .. (fake:now() - t0))
    end)

    it("a create whose answer was lost may still have made the task (created = true)", function()
      fake:fail_next("create_task", { kind = "network", sent = true, created = true })
      local _, err = client:create_task(REQ)
      assert.equals("unknown_outcome", err.kind)
      assert.equals("network", err.cause)
      assert.equals("waiting", fake:task("task_ideogram_1").state)
    end)

    it("a create is retried on 429, 455 and a refused connection, never on 500", function()
      fake:fail_next("create_task", { code = 429 })
      fake:fail_next("create_task", { kind = "maintenance" })
      fake:fail_next("create_task", { kind = "network" })
      assert.truthy(client:create_task(REQ))
      assert.equals(4, #fake:requests("create_task"))
      fake:fail_next("create_task", { code = 500 })
      local task, err = client:create_task(REQ)
      assert.is_nil(task)
      assert.equals("server", err.kind)
      assert.is_false(err.retryable)
      assert.equals(5, #fake:requests("create_task"))
      fake:fail_next("create_task", { status = 502 })
      task, err = client:create_task(REQ)
      assert.is_nil(task)
      assert.equals("unknown_outcome", err.kind)
      assert.equals("http", err.cause)
    end)

    it("errors carry the real core's fields", function()
      fake:fail_next("*", { code = 401, status = 200 })
      local _, err = client:get_task("task_x")
      assert.is_true(kie.errors.is(err, "auth"))
      assert.equals(401, err.code)
      assert.equals(200, err.status)
      assert.equals("get_task", err.op)
      assert.equals("task_x", err.task_id)
      assert.is_false(err.retryable)
      assert.equals("get_task: code 401: You do not have access permissions", err.message)
      fake:fail_next("download_url", { code = 433, msg = "slow down" })
      _, err = client:download_url("https://files.kie.testing.invalid/a.png")
      assert.equals("key_limit", err.kind)
      assert.equals("call", err.op)
      assert.matches("slow down", err.message)
    end)

    it("faults are used in order, `times` times, and only by their operation", function()
      fake:fail_next("credits", { code = 402 }, 2)
      fake:fail_next("*", { code = 505 })
      local id = fake:add_task(REQ)
      local _, err = client:get_task(id) -- the credits faults are not its, "*" is
      assert.equals("disabled", err.kind)
      assert.truthy(client:get_task(id))
      _, err = client:credits()
      assert.equals("credits", err.kind)
      _, err = client:credits()
      assert.equals("credits", err.kind)
      assert.equals(100, client:credits())
      assert.has_error(function() fake:fail_next("createTask", { code = 500 }) end)
      assert.has_error(function() fake:fail_next("get_task", { kind = "oops" }) end)
      assert.has_error(function() fake:fail_next("get_task", { code = 500 }, 0) end)
    end)

    it("a delay alone makes a slow success", function()
      fake:fail_next("credits", { delay = 7 })
      assert.equals(100, client:credits())
      assert.equals(7, fake:now())
    end)

    it("an answer slower than the request's timeout is a timeout at that time", function()
      local c = fake:client{ max_retries = 0, timeout = 10 }
      fake:fail_next("credits", { delay = 25 })
      local n, err = c:credits()
      assert.is_nil(n)
      assert.equals("timeout", err.kind)
      assert.equals(10, fake:now())
      -- a create: the task was made, its answer is lost
      fake:fail_next("create_task", { delay = 25 })
      local _, cerr = c:create_task(REQ)
      assert.equals("unknown_outcome", cerr.kind)
      assert.equals(20, fake:now())
      -- a wait's poll: cut to the time left, so the wait ends at its deadline
      local task = assert(c:create_task(REQ))
      local t0 = fake:now()
      fake:fail_next("get_task", { delay = 8 }, math.huge)
      local _, werr = c:wait(task.taskId, { timeout = 5 })
      assert.equals("deadline", werr.kind)
      assert.is_true(fake:now() <= t0 + 5)
      -- a download has its own, longer timeout
      local info = assert(client:run(REQ))
      local path = os.tmpname()
      fake:fail_next("download", { delay = 60 })
      assert.equals(path, client:download(info.resultUrls[1], path))
      fake:fail_next("download", { delay = 60 })
      local _, derr = client:download(info.resultUrls[1], path, { timeout = 40 })
      os.remove(path)
      assert.equals("timeout", derr.kind)
    end)
  end)

  describe("credits, downloads and uploads", function()
    it("credits are the fake's; a create costs `cost`; too few is code 402", function()
      fake = testing.new{ credits = 5, cost = 4 }
      client = fake:client()
      assert.equals(5, client:credits())
      assert.truthy(client:create_task(REQ))
      assert.equals(1, client:credits())
      local _, err = client:create_task(REQ)
      assert.equals("credits", err.kind)
      assert.equals(402, err.code)
    end)

    it("downloads a result image into a file; an unknown URL is not_found", function()
      local info = assert(client:run(REQ))
      local path = os.tmpname()
      assert.equals(path, client:download(info.resultUrls[1], path))
      assert.equals(testing.PNG, read(path))
      local _, err = client:download("https://files.kie.testing.invalid/nothing.png", path)
      assert.equals("not_found", err.kind)
      os.remove(path)
    end)

    it("a download canceled or closed in flight leaves no partial file (as the real core)", function()
      local info = assert(client:run(REQ))
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. dir))
      local function parts()
        local p = io.popen("ls -A " .. dir)
        local s = p:read("*a")
        p:close()
        return s
      end
      for _, how in ipairs{ "cancel", "close" } do
        local c = fake:client()
        fake:fail_next("download", { delay = 5 })
        local h = kie.spawn(function() return c:download(info.resultUrls[1], dir .. "/out.png") end)
        c:step(0)
        assert.is_false(h:done())
        assert.matches("out%.png%.part", parts()) -- the fetch made its file at once
        if how == "cancel" then h:cancel() else c:close() end
        c:step(0)
        assert.is_true(h:done())
        assert.equals("", parts(), how .. " left a file")
        c:close()
      end
      os.execute("rm -rf " .. dir)
    end)


    it("an expired link is refreshed through download_url and tried once more", function()
      local info = assert(client:run(REQ))
      fake:fail_next("download", { status = 410 })
      local path = os.tmpname()
      assert.equals(path, client:download(info.resultUrls[1], path))
      assert.equals(testing.PNG, read(path))
      local dl = fake:requests("download")
      assert.equals(2, #dl)
      assert.matches("^https://tempfile%.kie%.testing%.invalid/", dl[2].url)
      assert.equals(info.resultUrls[1], fake:requests("download_url")[1].body.url)
      os.remove(path)
    end)

    it("uploads a file, a Base64 string and a URL; the download URLs serve them", function()
      local src = os.tmpname()
      local png = testing.PNG .. "tail"
      local f = assert(io.open(src, "wb"))
      f:write(png)
      f:close()
      local up = assert(client:upload(src, { upload_path = "refs", file_name = "me.png" }))
      assert.equals("refs/me.png", up.filePath)
      assert.equals(#png, up.fileSize)
      assert.equals("image/png", up.mimeType)
      local out = os.tmpname()
      assert.truthy(client:download(up.downloadUrl, out))
      assert.equals(png, read(out))
      local b64 = assert(client:upload({ data = png .. "x", file_name = "b.png" }))
      assert.truthy(client:download(b64.downloadUrl, out))
      assert.equals(png .. "x", read(out))
      assert.truthy(client:upload({ url = "https://example.com/c.png" }))
      assert.equals(3, #fake:requests("upload"))
      assert.equals(src, fake:requests("upload")[1].path)
      local _, err = client:upload("/nonexistent/file.png")
      assert.equals("io", err.kind)
      os.remove(src)
      os.remove(out)
    end)

    it("run uploads a local reference image (kie.file) first", function()
      local src = os.tmpname()
      local f = assert(io.open(src, "wb"))
      f:write(testing.PNG)
      f:close()
      local info = assert(client:run{ model = REQ.model,
        input = { prompt = "p", reference_image_urls = { kie.file(src) } } })
      assert.matches("^https://tempfile", info.param.input.reference_image_urls[1])
      os.remove(src)
    end)
  end)

  describe("without blocking", function()
    it("create_task_async calls back once, from step, after the latency", function()
      fake = testing.new{ latency = 1 }
      client = fake:client()
      local got, calls = nil, 0
      client:create_task_async(REQ, function(task, err)
        calls = calls + 1
        got = task or err
      end)
      assert.equals(0, calls)
      assert.equals(1, #fake:requests("create_task")) -- sent at the call
      assert.is_true(fake:requests("create_task")[1].async)
      client:step(0)
      assert.equals(0, calls)                     -- 1 s has not passed
      assert.equals(1000, client:poll_timeout())
      fake:advance(1)
      client:step(0)
      assert.equals(1, calls)
      assert.matches("^task_", got.taskId)
      client:step(0)
      assert.equals(1, calls)
    end)

    it("step(ms) lets virtual time pass, at most ms", function()
      fake = testing.new{ latency = 5 }
      client = fake:client()
      local done = false
      client:get_task_async("task_nobody", function(_, err) done = err end)
      client:step(2000)
      assert.equals(2, fake:now())
      assert.is_false(done)
      client:step(60000)
      assert.equals(5, fake:now())             -- it stopped at the answer
      assert.equals("not_found", done.kind)
    end)

    it("kie.spawn runs a whole run in a coroutine driven by step", function()
      local job = kie.spawn(function()
        local info, err = client:run(REQ)
        if not info then return nil, err end
        return info.state, #info.resultUrls
      end)
      assert.is_false(job:done())
      pump(client, function() return job:done() end)
      local state, n = job:result()
      assert.equals("success", state)
      assert.equals(1, n)
      assert.is_true(fake:now() >= 9)
      for _, r in ipairs(fake:requests()) do assert.is_true(r.async) end
    end)

    it("run_all runs many in virtual time; a canceled call ends with canceled", function()
      local results, errs = client:run_all({ req("a"), req("b #fail"), req("c") }, { concurrency = 2 })
      assert.equals("success", results[1].state)
      assert.equals("task_failed", errs[2].kind)
      assert.equals("success", results[3].state)
      fake = testing.new{ latency = 3 }
      client = fake:client()
      local err
      local h = client:get_task_async("task_nobody", function(_, e) err = e end)
      h:cancel()
      pump(client, function() return err ~= nil end)
      assert.equals("canceled", err.kind)
    end)
  end)

  describe("the fake itself", function()
    it("never opens a socket: a closed port as base_url works (the real core fails there)", function()
      local opts = { base_url = "http://127.0.0.1:1", upload_url = "http://127.0.0.1:1", max_retries = 0,
        timeout = 2, connect_timeout = 1 }
      local info = assert(fake:client(opts):run(REQ))
      assert.equals("success", info.state)
      assert.equals("http://127.0.0.1:1/api/v1/jobs/createTask", fake:requests("create_task")[1].url)
      opts.api_key = "k"
      local _, err = kie.new(opts):credits() -- the real core, same options
      assert.equals("network", err.kind)
    end)

    it("several clients share one fake's tasks and clock", function()
      local a, b = fake:client(), fake:client()
      local task = assert(a:create_task(REQ))
      local info = assert(b:wait(task.taskId))
      assert.equals("success", info.state)
      assert.equals(fake:now(), a._env.now())
    end)

    it("a journal works over the fake (the real core's append_line)", function()
      local path = os.tmpname()
      os.remove(path)
      local c = fake:client{ journal = path }
      local task = assert(c:create_task(REQ))
      assert.equals(task.taskId, c:resume()[1].taskId)
      assert.truthy(c:wait(task.taskId))
      assert.same({}, c:resume())
      os.remove(path)
    end)

    it("other endpoints answer 404; a URL of another host raises as in the real core", function()
      local h = fake.core.new{ api_key = "k" }
      local r, err = h:call("GET", "/api/v1/nothing")
      assert.is_nil(r)
      assert.equals("not_found", err.kind)
      assert.equals("call", fake:requests()[1].op)
      assert.has_error(function() h:call("GET", "https://evil.example/steal") end)
      h:close()
      assert.has_error(function() h:get_task("t") end)
    end)

    it("refuses unknown options and wrong types", function()
      assert.has_error(function() testing.new{ speed = 1 } end)
      assert.has_error(function() testing.new{ latency = "1" } end)
      assert.has_error(function() testing.new{ pace = { waiting = 1 } } end)
      assert.has_error(function() fake:advance(-1) end)
    end)
  end)
end)

-- A user's tests against kie.testing must meet the same programmer errors as
-- against the real core: every argument the real core's methods refuse (they
-- raise), the fake refuses; every one it takes, the fake takes. The real core
-- here only ever talks to a closed port on 127.0.0.1.
describe("kie.testing's fake core checks arguments as the real core does #unit", function()
  local core = require "kie.core"
  local dir = os.tmpname()
  local png = dir .. ".png"
  local out = dir .. ".out"
  lazy_setup(function()
    local f = assert(io.open(png, "wb"))
    f:write(testing.PNG)
    f:close()
  end)
  lazy_teardown(function()
    os.remove(dir)
    os.remove(png)
    os.remove(out)
  end)

  local URL = "http://127.0.0.1:1"
  local nan = 0 / 0
  -- {method, arguments...}: each is called on both cores, by pcall
  -- a case: method name and arguments (n counts trailing nils)
  local function C(...) return { n = select("#", ...), ... } end
  local CASES = {
    C("call_start", "GET", "/api/v1/chat/credit"),
    C("call_start", "GET", "/api/v1/chat/credit", {}),
    C("call_start", "GET", "/api/v1/chat/credit", { a = 1 }),
    C("call_start", "POST", "/api/v1/common/download-url", { url = "x" }),
    C("call_start", "POST", "/api/v1/common/download-url", "body"),
    C("call_start", "PUT", "/api/v1/chat/credit"),
    C("call_start", "GET", "https://evil.example/x"),
    C("get_task_start", "task_1"),
    C("get_task_start", "task_1", 5),
    C("get_task_start", "task_1", 0),
    C("get_task_start", "task_1", 0.0001),
    C("get_task_start", "task_1", math.huge),
    C("get_task_start", "task_1", -1),
    C("get_task_start", "task_1", nan),
    C("get_task_start", 7),
    C("fetch_start", URL .. "/f.png", out),
    C("fetch_start", URL .. "/f.png", out, 0),
    C("fetch_start", URL .. "/f.png", out, 10),
    C("fetch_start", URL .. "/f.png", out, math.huge),
    C("fetch_start", URL .. "/f.png", out, -1),
    C("fetch_start", URL .. "/f.png", out, nan),
    C("fetch_start", URL .. "/f.png", out, nil, 0),
    C("fetch_start", URL .. "/f.png", out, nil, 3),
    C("fetch_start", URL .. "/f.png", out, nil, math.huge),
    C("fetch_start", URL .. "/f.png", out, nil, -1),
    C("fetch_start", URL .. "/f.png", out, nil, nan),
    C("fetch_start", "ftp://127.0.0.1/f.png", out),
    C("upload_start", png, "refs"),
    C("upload_start", png, "refs", "a.png", "image/png", 0),
    C("upload_start", png, "refs", nil, nil, 5),
    C("upload_start", png, "refs", nil, nil, -1),
    C("upload_start", png, "refs", nil, nil, nan),
    C("upload_start", png, nil),
    C("upload_start", png, "refs", {}),
    C("upload_start", png, "refs", nil, {}),
    C("step"),
    C("step", 0),
    C("step", 10, 5),
    C("step", 0, 0),
    C("step", -1),
    C("step", nan),
    C("step", 0, -1),
    C("step", 0, nan),
    C("progress", 999),
    C("progress", 999, -1),
    C("progress", "x"),
    C("result", 999),
    C("result", "x"),
    C("cancel", 999),
    C("cancel", "x"),
    C("cancel", -1),
    C("progress", -1),
    C("result", -1),
  }

  local function show(case)
    local parts = {}
    for i = 1, case.n do parts[i] = tostring(case[i]) end
    return table.concat(parts, ", ")
  end

  it("raises for the same arguments", function()
    local fake = testing.new()
    local opts = { api_key = "k", base_url = URL, upload_url = URL }
    local real, faked = core.new(opts), fake.core.new(opts)
    local wrong = {}
    for _, case in ipairs(CASES) do
      local n = case.n
      local ok_real, e_real = pcall(real[case[1]], real, unpack(case, 2, n))
      local ok_fake, e_fake = pcall(faked[case[1]], faked, unpack(case, 2, n))
      if ok_real ~= ok_fake then wrong[#wrong + 1] = show(case) .. ": the real core " .. (ok_real and "takes it" or
        ("raises (" .. tostring(e_real) .. ")")) .. ", the fake " .. (ok_fake and "takes it" or
        ("raises (" .. tostring(e_fake) .. ")")) end
      if ok_real and type(e_real) == "number" then real:cancel(e_real) end
      if ok_fake and type(e_fake) == "number" then faked:cancel(e_fake) end
    end
    real:close()
    faked:close()
    assert(#wrong == 0, table.concat(wrong, "\n"))
  end)

  it("core.new refuses the same options", function()
    local fake = testing.new()
    local wrong = {}
    for _, o in ipairs{
      { api_key = "k" }, {}, { api_key = "" }, { api_key = 5 }, { api_key = "k\nX-Evil: 1" },
      { api_key = "k", bogus = 1 }, { api_key = "k", base_url = URL, upload_url = URL },
      { api_key = "k", timeout = 5 }, { api_key = "k", timeout = 0 }, { api_key = "k", timeout = -1 },
      { api_key = "k", timeout = nan }, { api_key = "k", timeout = math.huge }, { api_key = "k", timeout = 86401 },
      { api_key = "k", connect_timeout = 0.5 }, { api_key = "k", connect_timeout = "5" },
      { api_key = "k", max_response_bytes = 1024 }, { api_key = "k", max_response_bytes = 0.5 },
      { api_key = "k", max_response_bytes = 2 ^ 53 }, { api_key = "k", max_response_bytes = 2 ^ 54 },
      { api_key = "k", proxy = "" }, { api_key = "k", user_agent = "ua" },
    } do
      o.base_url = o.base_url or URL -- (the fake alone has a default: kie.new always gives one)
      local ok_real, r = pcall(core.new, o)
      local ok_fake, f = pcall(fake.core.new, o)
      if ok_real then r:close() end
      if ok_fake then f:close() end
      if ok_real ~= ok_fake then
        local keys = {}
        for k, v in pairs(o) do keys[#keys + 1] = k .. "=" .. tostring(v) end
        wrong[#wrong + 1] = table.concat(keys, " ") .. ": real " .. tostring(ok_real) .. " (" .. tostring(r) ..
          "), fake " .. tostring(ok_fake) .. " (" .. tostring(f) .. ")"
      end
    end
    assert(#wrong == 0, table.concat(wrong, "\n"))
  end)

  it("a GET with a body raises in the fake as in the real core, blocking or not", function()
    local fake = testing.new()
    local h = fake.core.new{ api_key = "k" }
    local ok, err = pcall(h.call, h, "GET", "/api/v1/chat/credit", {})
    assert.is_false(ok)
    assert.matches("a GET carries no body", tostring(err))
    assert.has_error(function() h:call_start("GET", "/api/v1/chat/credit", {}) end)
    assert.equals(0, #fake:requests())
  end)
end)
