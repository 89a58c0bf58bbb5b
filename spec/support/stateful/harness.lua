-- Runs one op list (ops.lua) against a backend (backends.lua) and checks the
-- promises at the edges (DESIGN.md) after every op:
--
--   once        every callback fires exactly once, only from step (or close); every
--               spawned job ends
--   step        step (and close) raise only an error a user callback raised, and then
--               carry every error raised by a callback in it
--   cancel      cancel() never raises; a cancel that returned true ends the call with
--               kind canceled (or unknown_outcome)
--   closed      after close(), step returns 0, poll_timeout is nil, every call has ended
--   leak        once everything ended, step returns 0 and the core has no transfer
--   accounted   every task the server made for a create is known to the program: a result
--               or an error carrying its taskId, an unknown_outcome with the fingerprint of
--               its request, or a journal entry
--   sent_twice  no create reached the server twice (except after a 429/455 answer)
--   typed       every error handed to a callback is a typed table with a kind
--   handle      a handle is done() when its callback fires
--   run_all_cancel  a canceled run_all starts no further item
--   batch       an item whose on_update raises never sinks its run_all
--   poll        poll_timeout() is never nil while a call is pending
--   files       downloads leave their file, complete, and no partial file
--
-- H.run returns nil when every invariant held, else a failure {class =, msg =, at =}
-- (`at`: the index of the op after which it was seen; 0: at the end).
local kie = require "kie"
local models = require "kie.models"

local H = {}

local huge, floor = math.huge, math.floor

local function fail(class, msg)
  error({ stateful = true, class = class, msg = msg }, 0)
end

-- Does v (an error: string or table, searched a few levels deep) mention marker?
local function mentions(v, marker, depth)
  depth = depth or 0
  if depth > 4 then return false end
  if type(v) == "string" then return v:find(marker, 1, true) ~= nil end
  if type(v) == "table" then
    local ok, s = pcall(tostring, v)
    if ok and type(s) == "string" and s:find(marker, 1, true) then return true end
    for _, x in pairs(v) do
      if mentions(x, marker, depth + 1) then return true end
    end
  end
  return false
end

local function budget_value(b)
  if b == "default" then return nil end
  if b == "huge" then return huge end
  return b
end

local CANCEL_KINDS = { canceled = true, unknown_outcome = true }

function H.run(backend, cfg, ops, opts)
  opts = opts or {}
  local stats = opts.stats or {} -- counters, for STATEFUL_STATS
  local function count(k, n) stats[k] = (stats[k] or 0) + (n or 1) end
  local st = {
    calls = {}, jobs = {}, gen = 0, seq = 0,
    learned = {}, learned_list = {}, -- task ids the program was told
    succeeded = {}, succeeded_list = {}, -- ... and of those, seen in state success
    unknown = {},                    -- nonce -> true: an unknown_outcome with a fingerprint
    fps = {},                        -- fingerprints of unknown_outcome errors
    req_of = {},                     -- nonce -> the create request
    raises = {}, in_step = false, violation = nil,
    closed_clients = setmetatable({}, { __mode = "k" }),
  }
  local journal = cfg.journal and os.tmpname() or nil
  if journal then os.remove(journal) end
  local util = require "spec.support.util"
  local files_dir -- made by the first spawn_download
  local function download_dir()
    if not files_dir then
      files_dir = os.tmpname()
      os.remove(files_dir)
      assert(util.run("mkdir -p " .. util.quote(files_dir)))
    end
    return files_dir
  end
  backend:reset()

  local function violate(class, msg)
    if not st.violation then st.violation = { class = class, msg = msg } end
  end

  local function open()
    st.gen = st.gen + 1
    st.c = backend:client{ journal = journal, max_retries = cfg.max_retries,
      step_budget_ms = budget_value(cfg.budget), paced = cfg.paced }
  end

  -- the fingerprint of nonce's request as client c computes it (kie.fingerprint, or
  -- the older Client:_fingerprint); nil when neither is there
  local has_fp_module, fp_module = pcall(require, "kie.fingerprint")
  local function fingerprint(c, nonce)
    local req = st.req_of[nonce]
    local checked = req and models.check(req, true)
    if not checked then return nil end
    if has_fp_module and type(fp_module) == "function" and c._mod then return fp_module(c._mod, checked) end
    if type(c._fingerprint) == "function" then return c:_fingerprint(checked) end
    return nil
  end

  local function new_req()
    st.seq = st.seq + 1
    local nonce = "<sf-" .. cfg.seed .. "-" .. st.seq .. ">"
    local prompt = "stateful " .. nonce .. (st.seq % 7 == 0 and " #fail" or "")
    local req = { model = "ideogram/character",
      input = { prompt = prompt, reference_image_urls = { "https://example.com/me.png" } } }
    st.req_of[nonce] = req
    return req, nonce
  end

  local function run_req(req)
    return { model = req.model, input = req.input, wait = backend.WAIT }
  end

  local function learn_id(id)
    if type(id) == "string" and not st.learned[id] then
      st.learned[id] = true
      st.learned_list[#st.learned_list + 1] = id
    end
  end

  -- what a call, a job or code inside a job was told
  local function learn(res, err, nonce, c)
    if type(res) == "table" then
      learn_id(res.taskId)
      if res.state == "success" and type(res.taskId) == "string" and not st.succeeded[res.taskId] then
        st.succeeded[res.taskId] = true
        st.succeeded_list[#st.succeeded_list + 1] = res.taskId
      end
    end
    if err ~= nil then
      if type(err) ~= "table" or type(err.kind) ~= "string" then
        violate("typed", "an error is not a typed table: " .. tostring(err))
        return
      end
      learn_id(err.task_id)
      if err.kind == "unknown_outcome" then
        local fp = err.fingerprint
        if type(fp) ~= "string" or fp == "" then
          violate("no_fingerprint", "unknown_outcome without a fingerprint: " .. tostring(err))
        else
          st.fps[fp] = true
          if nonce then
            st.unknown[nonce] = true
            local want = fingerprint(c, nonce)
            if want and want ~= fp then
              violate("fingerprint", "unknown_outcome of " .. nonce .. " carries fingerprint " .. fp ..
                ", its request's is " .. want)
            end
          end
        end
      end
    end
  end

  local function check_cancel_result(what, rec, res, err)
    if rec.cancel_ret == true and not (res == nil and type(err) == "table" and CANCEL_KINDS[err.kind]) then
      violate("cancel", what .. " was canceled (cancel() returned true) but ended with " ..
        tostring(res) .. ", " .. tostring(err))
    end
  end

  local function new_call(kind, nonce)
    local rec = { n = #st.calls + 1, kind = kind, nonce = nonce, gen = st.gen, fired = 0, client = st.c,
      weak = setmetatable({}, { __mode = "v" }) }
    st.calls[rec.n] = rec
    rec.cb = function(res, err)
      rec.fired = rec.fired + 1
      count("callbacks")
      local what = "call #" .. rec.n .. " (" .. rec.kind .. ")"
      if rec.fired > 1 then violate("once", "the callback of " .. what .. " fired twice") end
      if not st.in_step then violate("once", "the callback of " .. what .. " fired outside step and close") end
      rec.res, rec.err = res, err
      local h = rec.handle or rec.weak[1]
      if h and not h:done() then violate("handle", "the callback of " .. what .. " fired, its handle is not done()") end
      if h and type(res) == "table" and res.taskId and h.task_id ~= nil and h.task_id ~= res.taskId then
        violate("handle", "the handle of " .. what .. " has task_id " .. tostring(h.task_id) ..
          ", its callback got " .. tostring(res.taskId))
      end
      learn(res, err, rec.nonce, rec.client)
      check_cancel_result(what, rec, res, err)
      if rec.update_raised and res ~= nil then
        violate("update", what .. ": its on_update raised, yet it ended with a result")
      end
      if rec.update_raised then count("updates_raised") end
      if rec.fired == 1 and rec.then_fn then rec.then_fn() end
      if rec.closes and rec.fired == 1 then
        st.closed_clients[rec.client] = true
        rec.client:close() -- a user callback closing the client (raises: the step raises it)
        if rec.client == st.c and not st.closing then st.closed_in_cb = true end
      end
      if rec.raise and rec.fired == 1 then
        st.raises[rec.raise] = "fired"
        error(rec.raise)
      end
    end
    return rec
  end

  local function new_job(kind, nonces, fn)
    local j = { n = #st.jobs + 1, kind = kind, nonces = nonces, gen = st.gen, client = st.c }
    st.jobs[j.n] = j
    j.handle = kie.spawn(fn)
    return j
  end

  local function pick_id(op, list)
    list = list or st.learned_list
    if op.unknown or #list == 0 then return "task_stateful_unknown_" .. cfg.seed end
    return list[floor(op.pick * #list) + 1]
  end

  -- jobs that ended since the last look
  local function collect_jobs()
    for _, j in ipairs(st.jobs) do
      if not j.seen and j.handle:done() then
        j.seen = true
        local res, err = j.handle:result()
        if j.kind == "spawn_run_all" and type(err) == "table" and err.kind == "raised" then
          violate("batch", "job #" .. j.n .. ": run_all raised (one item must never sink the batch): " ..
            tostring(err))
        end
        -- run_all's job returns results, errs (a list): its items were learned inside it
        if err ~= nil and not (j.kind == "spawn_run_all" and res ~= nil) then
          learn(nil, err, #j.nonces == 1 and j.nonces[1] or nil, j.client)
        end
        if j.kind == "spawn_run_all" and type(err) == "table" and type(err.errs) == "table" then
          for i, nonce in ipairs(j.nonces) do
            learn(err.results and err.results[i], err.errs[i], nonce, j.client)
          end
        end
        check_cancel_result("job #" .. j.n .. " (" .. j.kind .. ")", j, res, err)
      end
    end
  end

  local function check_violation()
    if st.violation then fail(st.violation.class, st.violation.msg) end
  end

  local post_close, items_seen

  -- Runs c:method(...), where callbacks may fire (step; close, which calls the
  -- callbacks of the calls it ended before it returns): it raises only when a
  -- callback raised, and then carries every error a callback raised in it.
  local function guarded(c, method, ...)
    count(method == "step" and "steps" or "closes")
    st.in_step = true
    local ok, n = pcall(c[method], c, ...)
    st.in_step = false
    local fired = {}
    for marker, s in pairs(st.raises) do
      if s == "fired" then fired[#fired + 1] = marker st.raises[marker] = "done" end
    end
    table.sort(fired)
    local class = method == "step" and "step" or "cancel"
    if not ok then
      if #fired == 0 then fail(class, method .. " raised, no callback did: " .. tostring(n)) end
      for _, marker in ipairs(fired) do
        if not mentions(n, marker) then
          fail("raise_lost", "callbacks raised " .. table.concat(fired, ", ") .. "; " .. method .. " raised " ..
            tostring(n) .. ", which does not carry " .. marker)
        end
      end
    elseif #fired > 0 then
      fail("raise_lost", "callbacks raised " .. table.concat(fired, ", ") .. " but " .. method .. " returned " ..
        tostring(n))
    end
    return ok, n
  end

  -- One step of client c, with the step and raise invariants.
  local function step(c, timeout, budget)
    local ok, n = guarded(c, "step", timeout, budget)
    if ok and type(n) ~= "number" then fail("step", "step returned " .. tostring(n)) end
    collect_jobs()
    check_violation()
    if st.closed_in_cb then
      st.closed_in_cb = false
      post_close(c)
      open()
    end
    return ok and n
  end

  -- the calls of client generation gen: all ended, each callback once
  local function all_ended(gen, what)
    for _, rec in ipairs(st.calls) do
      if (gen == nil or rec.gen == gen) and rec.fired ~= 1 then
        fail("once", what .. ": the callback of call #" .. rec.n .. " (" .. rec.kind .. ") fired " ..
          rec.fired .. " times")
      end
    end
    for _, j in ipairs(st.jobs) do
      if (gen == nil or j.gen == gen) and not j.handle:done() then
        fail("once", what .. ": job #" .. j.n .. " (" .. j.kind .. ") has not ended")
      end
    end
  end

  post_close = function(c)
    local n
    st.closing = true
    for _ = 1, 3 do
      n = step(c, 0, huge) or -1 -- -1: a user callback raised; step again
    end
    st.closing = false
    if n ~= 0 then fail("closed", "step after close() returns " .. tostring(n)) end
    local ok, ms = pcall(c.poll_timeout, c)
    if not ok then fail("closed", "poll_timeout after close() raised: " .. tostring(ms)) end
    if ms ~= nil then fail("closed", "poll_timeout after close() is " .. tostring(ms)) end
    all_ended(st.gen, "after close()")
  end

  local function close()
    local c = st.c
    st.closed_clients[c] = true
    st.closing = true -- a callback that closes c again changes nothing
    guarded(c, "close")
    st.closing = false
    collect_jobs()
    check_violation()
    post_close(c)
    open()
  end

  local function live_handles()
    local live = {}
    for _, rec in ipairs(st.calls) do
      if rec.fired == 0 and rec.cancel_ret == nil and rec.handle then live[#live + 1] = rec end
    end
    for _, j in ipairs(st.jobs) do
      if not j.handle:done() then live[#live + 1] = j end
    end
    return live
  end

  -- how many of `nonces` the server has seen a create of
  function items_seen(nonces)
    local want, seen, n = {}, {}, 0
    for _, nonce in ipairs(nonces) do want[nonce] = true end
    for _, cr in ipairs(backend:creates()) do
      if want[cr.nonce] and not seen[cr.nonce] then seen[cr.nonce] = true n = n + 1 end
    end
    return n
  end

  local EXEC = {}

  local function start(op)
    if op.fault_name then
      backend:fault(backend:fault_index(op.fault_name), op.target)
    elseif op.fault then
      backend:fault(op.fault, op.target)
    end
  end

  function EXEC.create(op)
    start(op)
    local req, nonce = new_req()
    local rec = new_call("create", nonce)
    local h = st.c:create_task_async(req, rec.cb)
    -- GC pressure: some handles are dropped at once (the call must go on all the same)
    if op.pick < 0.85 then rec.handle = h else rec.weak[1] = h end
  end

  function EXEC.get(op)
    start(op)
    local rec = new_call("get")
    rec.handle = st.c:get_task_async(pick_id(op), rec.cb)
  end

  function EXEC.wait(op)
    start(op)
    local rec = new_call("wait")
    local wopts = backend.WAIT
    if op.pick >= 0.8 then -- an on_update that raises: the call ends with an error
      wopts = {}
      for k, v in pairs(backend.WAIT) do wopts[k] = v end
      wopts.on_update = function()
        rec.update_raised = true
        error("STATEFUL-UPDATE-RAISE")
      end
      rec.kind = "wait+raising on_update"
    end
    rec.handle = st.c:wait_async(pick_id(op), wopts, rec.cb)
  end

  function EXEC.run(op)
    start(op)
    local req, nonce = new_req()
    local rec = new_call("run", nonce)
    rec.handle = st.c:run_async(run_req(req), rec.cb)
  end

  -- a callback that raises, or one that closes the client: on a get or a create
  local function special(op, field, value)
    start(op)
    local rec
    if op.pick < 0.5 then
      local req, nonce = new_req()
      rec = new_call("create", nonce)
      rec[field] = value
      rec.handle = st.c:create_task_async(req, rec.cb)
    else
      rec = new_call("get")
      rec[field] = value
      rec.handle = st.c:get_task_async(pick_id(op), rec.cb)
    end
    rec.kind = rec.kind .. "+" .. field
  end

  -- a callback that starts a create on its client (unless the program closed it)
  function EXEC.chain_cb(op)
    special(op, "chains", true)
    local rec = st.calls[#st.calls]
    local c = rec.client
    rec.then_fn = function()
      if st.closed_clients[c] then return end
      local req, nonce = new_req()
      local chained = new_call("create(chained)", nonce)
      chained.client, chained.gen = c, rec.gen
      chained.handle = c:create_task_async(req, chained.cb)
    end
  end

  -- a callback that cancels another live call or job
  function EXEC.cancel_cb(op)
    special(op, "cancels", true)
    local rec = st.calls[#st.calls]
    rec.then_fn = function()
      local live = live_handles()
      if #live == 0 then return end
      local victim = live[floor(op.pick * #live) + 1]
      local ok, ret = pcall(victim.handle.cancel, victim.handle)
      if not ok then violate("cancel", "cancel() from a callback raised: " .. tostring(ret)) return end
      victim.cancel_ret = ret
    end
  end

  function EXEC.raise_cb(op)
    st.raise_seq = (st.raise_seq or 0) + 1
    special(op, "raise", "STATEFUL-RAISE-" .. st.raise_seq .. "-")
  end

  function EXEC.close_cb(op)
    special(op, "closes", true)
  end

  function EXEC.spawn_run(op)
    start(op)
    local req, nonce = new_req()
    local c = st.c
    new_job("spawn_run", { nonce }, function()
      local info, err = c:run(run_req(req))
      learn(info, err, nonce, c)
      return info, err
    end)
  end

  function EXEC.spawn_seq(op)
    start(op)
    local req, nonce = new_req()
    local c = st.c
    new_job("spawn_seq", { nonce }, function()
      local task, err = c:create_task(req)
      learn(task, err, nonce, c)
      if not task then return nil, err end
      local info, gerr = c:get_task(task.taskId)
      learn(info, gerr, nil, c)
      local done, werr = c:wait(task.taskId, backend.WAIT)
      learn(done, werr, nil, c)
      return done or task, werr
    end)
  end

  function EXEC.spawn_run_all(op)
    start(op)
    local reqs, nonces = {}, {}
    for i = 1, op.n do
      local req, nonce = new_req()
      reqs[i], nonces[i] = run_req(req), nonce
    end
    local c = st.c
    local on_update = op.raise_item and function(i)
      if i == op.raise_item then error("STATEFUL-ITEM-RAISE") end
    end
    local j = new_job("spawn_run_all", nonces, function()
      local results, errs = c:run_all(reqs, { concurrency = op.conc, on_update = on_update })
      for i = 1, op.n do
        if errs and type(errs[i]) == "table" and errs[i].kind == "raised" then count("items_raised") end
        learn(results[i], errs and errs[i], nonces[i], c)
        if results[i] == nil and (errs == nil or errs[i] == nil) then
          violate("once", "run_all item " .. i .. " has neither a result nor an error")
        end
      end
      return results, errs
    end)
    j.conc = op.conc
  end

  -- get a task and download its first image (a partial file must never stay behind)
  function EXEC.spawn_download(op)
    start(op)
    local c = st.c
    local id = pick_id(op, #st.succeeded_list > 0 and st.succeeded_list or nil)
    local path = download_dir() .. "/d" .. (#st.jobs + 1) .. ".png"
    local j = new_job("spawn_download", {}, function()
      local info, err = c:get_task(id)
      learn(info, err, nil, c)
      if not info then return nil, err end
      local url = type(info.resultUrls) == "table" and info.resultUrls[1]
      if type(url) ~= "string" then return "no image" end
      return c:download(url, path)
    end)
    j.path = path
  end

  -- a host loop asking how long it may sleep: never nil while a call is pending
  function EXEC.poll()
    local c = st.c
    local ok, ms = pcall(c.poll_timeout, c)
    if not ok then fail("poll", "poll_timeout() raised: " .. tostring(ms)) end
    if ms ~= nil and (type(ms) ~= "number" or ms < 0 or ms ~= ms) then
      fail("poll", "poll_timeout() returned " .. tostring(ms))
    end
    if ms == nil then
      for _, rec in ipairs(st.calls) do
        if rec.client == c and rec.fired == 0 then
          fail("poll", "call #" .. rec.n .. " (" .. rec.kind .. ") is pending but poll_timeout() is nil: " ..
            "a host loop sleeping on it never wakes")
        end
      end
      for _, j in ipairs(st.jobs) do
        if j.client == c and not j.handle:done() then
          fail("poll", "job #" .. j.n .. " (" .. j.kind .. ") is pending but poll_timeout() is nil")
        end
      end
    end
  end

  -- a blocking call on the client the async calls use (it drives their transfers too)
  function EXEC.blocking(op)
    start(op)
    local c = st.c
    if op.pick < 0.5 then
      local id = pick_id(op)
      local info, err = c:get_task(id)
      learn(info, err, nil, c)
    else
      local req, nonce = new_req()
      local task, err = c:create_task(req)
      learn(task, err, nonce, c)
    end
    count("blocking")
  end

  function EXEC.spawn_raise()
    new_job("spawn_raise", {}, function() error("STATEFUL-SPAWN-RAISE") end)
  end

  function EXEC.cancel(op)
    local live = live_handles()
    if #live == 0 then return end
    local rec = live[floor(op.pick * #live) + 1]
    local ok, ret = pcall(rec.handle.cancel, rec.handle)
    if not ok then fail("cancel", "cancel() raised: " .. tostring(ret)) end
    rec.cancel_ret = ret
    if ret then count("cancels") end
    if ret and rec.kind == "spawn_run_all" then
      -- "canceling a run_all starts no further item": the items whose creates the
      -- server has seen now are all it may ever see, but for those started and still
      -- on their way (kie.testing records a request when it is made: none; over real
      -- sockets up to `conc` may not have arrived yet)
      if backend:real_time() then require("kie.core").sleep(0.1) end
      rec.items_at_cancel = items_seen(rec.nonces) + (backend:real_time() and rec.conc or 0)
    end
    collect_jobs()
    check_violation()
  end

  function EXEC.close()
    close()
  end

  function EXEC.step(op)
    step(st.c, op.timeout * backend.STEP_SCALE, budget_value(op.budget))
  end

  function EXEC.gc(op)
    if op.full then collectgarbage("collect") else collectgarbage("step", 8) end
    collect_jobs()
    check_violation()
  end

  -- every call and job ended; step returns 0; no transfer left
  local function drain()
    local deadline = backend:now() + (backend:real_time() and 20 or 3600)
    local quiet = 0
    for _ = 1, 200000 do
      local n = step(st.c, backend:real_time() and 10 or 200, huge)
      local ended = true
      for _, rec in ipairs(st.calls) do if rec.fired == 0 then ended = false break end end
      for _, j in ipairs(st.jobs) do if not j.handle:done() then ended = false break end end
      if ended and n == 0 then quiet = quiet + 1 else quiet = 0 end
      if quiet >= 2 then break end
      if backend:now() > deadline then break end
    end
    all_ended(nil, "after draining")
    local n = step(st.c, 0, huge)
    if n ~= 0 then fail("leak", "every call has ended but step returns " .. tostring(n)) end
    local ms = st.c:poll_timeout()
    if ms ~= nil then fail("leak", "every call has ended but poll_timeout is " .. tostring(ms)) end
    local core = st.c._core
    if core and core.pending then
      local p = core:pending()
      if p ~= 0 then fail("leak", "every call has ended but the core has " .. p .. " transfers") end
    end
  end

  local function account()
    local made, sent = {}, {}
    for _, cr in ipairs(backend:creates()) do
      count("creates_seen")
      if cr.made then made[cr.nonce] = true count("tasks_made") end
      if not cr.rejected then sent[cr.nonce] = (sent[cr.nonce] or 0) + 1 end
    end
    -- a handle's task_id (set once a create's answer came, even after a cancel)
    for _, rec in ipairs(st.calls) do
      local h = rec.handle or rec.weak[1]
      if h then learn_id(h.task_id) end
    end
    for _, j in ipairs(st.jobs) do learn_id(j.handle.task_id) end
    local known = {}
    for _, id in ipairs(st.learned_list) do
      local nonce = backend:nonce_of(id)
      if nonce then known[nonce] = "result" end
    end
    if journal then
      local f = io.open(journal, "r")
      local text = f and f:read("*a") or ""
      if f then f:close() end
      for id in text:gmatch('"taskId"%s*:%s*"([^"]+)"') do
        local nonce = backend:nonce_of(id)
        if nonce then known[nonce] = known[nonce] or "journal" end
      end
      -- an unresolved intent (resume(): unknown = true) accounts for its fingerprint
      local c = st.c
      local ok, list = pcall(c.resume, c)
      if not ok then fail("accounted", "resume() raised: " .. tostring(list)) end
      for _, e in ipairs(list) do
        if e.unknown and type(e.fingerprint) == "string" then st.fps[e.fingerprint] = true end
        if type(e.taskId) == "string" then known[backend:nonce_of(e.taskId) or ""] = "journal" end
      end
    end
    local nonces = {}
    for nonce in pairs(made) do nonces[#nonces + 1] = nonce end
    table.sort(nonces)
    -- opts.excuse_run_all: the creates of a spawned run_all that ended canceled (cancel
    -- or close while items were in flight) are not checked in runs without a journal
    local excused = {}
    if opts.excuse_run_all and not journal then
      for _, j in ipairs(st.jobs) do
        local _, err = j.handle:result()
        if j.kind == "spawn_run_all" and type(err) == "table" and err.kind == "canceled" then
          for _, nonce in ipairs(j.nonces) do excused[nonce] = true end
        end
      end
    end
    for _, nonce in ipairs(nonces) do
      local fp = fingerprint(st.c, nonce)
      if not (known[nonce] or st.unknown[nonce] or (fp and st.fps[fp]) or excused[nonce]) then
        fail("accounted", "the server made a task for " .. nonce .. " that the program never learned of " ..
          "(no result, no unknown_outcome with its fingerprint, no journal entry)")
      end
    end
    for nonce, n in pairs(sent) do
      if n > 1 then fail("sent_twice", "the create " .. nonce .. " reached the server " .. n .. " times") end
    end
    for _, j in ipairs(st.jobs) do
      if j.items_at_cancel then
        local n = items_seen(j.nonces)
        if n > j.items_at_cancel then
          fail("run_all_cancel", "job #" .. j.n .. " (run_all of " .. #j.nonces .. ") was canceled when at most " ..
            j.items_at_cancel .. " items had started; the server saw creates of " .. n)
        end
      end
    end
  end

  -- the download directory holds the files of the downloads that returned a path,
  -- complete, and nothing else (no partial file of a canceled or failed one)
  local function check_files()
    if not files_dir then return end
    local want = {}
    for _, j in ipairs(st.jobs) do
      if j.path and j.handle:result() == j.path then
        want[j.path:match("[^/]+$")] = true
        count("downloads")
      end
    end
    if opts.no_files_check then return end
    local _, out = util.run("ls -A " .. util.quote(files_dir))
    for name in out:gmatch("[^\n]+") do
      if not want[name] then fail("files", "the download directory holds " .. name ..
        " (a partial file, or a download that did not return its path)") end
      want[name] = nil
    end
    for name in pairs(want) do fail("files", "a download returned its path but " .. name .. " is missing") end
  end

  open()
  local at = 0
  local ok, err = xpcall(function()
    for i, op in ipairs(ops) do
      at = i
      count("ops")
      EXEC[op.k](op)
      collect_jobs()
      check_violation()
    end
    at = 0
    drain()
    account() -- everything has ended: nothing can still be learned
    check_files()
    if not opts.no_close then
      local c = st.c
      st.closed_clients[c] = true
      st.closing = true
      guarded(c, "close")
      st.closing = false
      collect_jobs()
      check_violation()
      post_close(c)
    end
  end, function(e)
    if type(e) == "table" and e.stateful then return e end
    return { class = "raised", msg = "an op raised: " .. tostring(e), traceback = debug.traceback(tostring(e), 2) }
  end)
  -- whatever happened, leave no client open
  pcall(function() st.c:close() end)
  for _, rec in ipairs(st.calls) do pcall(function() rec.client:close() end) end
  if journal then os.remove(journal) end
  if files_dir then util.run("rm -rf " .. util.quote(files_dir)) end
  if ok then return nil end
  err.at = at
  return err
end

return H
