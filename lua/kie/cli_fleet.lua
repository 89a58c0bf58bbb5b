--- The fleet batch commands of `kie` (see `kie.cli`): `kie submit FILE`,
-- `kie worker`, `kie batch ID`. They need the kie-fleet rock (kie.redis) and a
-- Redis: `--redis URL` (or `KIE_REDIS_URL`, default redis://127.0.0.1:6379/0)
-- and `--fleet NAME` (or `KIE_FLEET`, default `kie`).
-- @module kie.cli_fleet

local core = require "kie.core"
local errors = require "kie.errors"

local type, tostring, tonumber, ipairs, pcall = type, tostring, tonumber, ipairs, pcall
local format, concat = string.format, table.concat

local M = {}

local DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

-- The fleet options shared by the three commands.
local function _fleet_options(cmd)
  cmd:option("--redis", "Redis URL of the fleet (KIE_REDIS_URL; default " .. DEFAULT_REDIS .. ").")
  cmd:option("--fleet", "Fleet name: clients with the same name share limits and batches (KIE_FLEET; default kie).")
end

--- Adds the commands `submit`, `worker` and `batch` to argparse parser `p`.
function M.add_commands(p, positive, whole)
  local s = p:command("submit", "Put a batch on the fleet's Redis: FILE holds one create request (JSON) a line.")
  s:argument("file", "JSON-lines file of create requests ({\"model\": ..., \"input\": {...}}).")
  _fleet_options(s)

  local w = p:command("worker", "Work on fleet batches (create each item once, wait, record) until they ended.")
  w:option("--batch", "The batch id (or --all).")
  w:flag("--all", "Every batch of the fleet.")
  w:option("--concurrency -c", "Items in flight in this worker.", 4, whole(1, 1000, "--concurrency"))
  w:option("--lease", "Seconds after which a silent worker's items are taken over.", 30, positive)
  w:option("--timeout", "Seconds to wait for each task.", 900, positive)
  w:option("--max-interval", "Longest pause between two polls of a task (default: kie.ai's schedule).", nil,
    positive)
  _fleet_options(w)

  local b = p:command("batch", "Show a fleet batch's progress and results.")
  b:argument("id", "Batch id.")
  _fleet_options(b)
end

-- A fleet client for ctx (nil, err when it cannot be made).
local function _client(ctx)
  local a = ctx.args
  local url = a.redis or ctx.getenv("KIE_REDIS_URL") or DEFAULT_REDIS
  local name = a.fleet or ctx.getenv("KIE_FLEET") or "kie"
  return ctx:client{ fleet = { redis = url, name = name } }
end

--- `kie submit FILE`: prints the batch id (`{"batch": ID}` with --json).
function M.submit(ctx)
  local f, oerr = io.open(ctx.args.file, "rb")
  if not f then return ctx:fail(errors.new("io", "submit: cannot read " .. tostring(oerr))) end
  local reqs, n = {}, 0
  for line in f:lines() do
    n = n + 1
    if line:match("%S") then
      local r = core.decode(line)
      if type(r) ~= "table" then
        f:close()
        return ctx:fail(errors.new("validation", "submit: line " .. n .. " is not a JSON object"))
      end
      reqs[#reqs + 1] = r
    end
  end
  f:close()
  if #reqs == 0 then return ctx:fail(errors.new("validation", "submit: the file holds no request")) end
  local client, cerr = _client(ctx)
  if not client then return ctx:fail(cerr) end
  local id, err = client:submit(reqs)
  client:close()
  if not id then return ctx:fail(err) end
  if ctx.args.json then ctx:json({ batch = id, total = #reqs }) else ctx:out(id, "\n") end
  return 0
end

--- The progress line of a worker: `p` is work's on_progress table.
function M.worker_line(what, p)
  return format("%s: %d/%d ended (%d done, %d failed), %d in flight here, %d created here",
    what, p.done + p.failed, p.total, p.done, p.failed, p.active, p.created)
end

-- A live line on a terminal ("\r", redrawn), else one plain line per change.
local function _reporter(ctx, what)
  local tty = not ctx.args.quiet and ctx.isatty(2) and (ctx.getenv("TERM") or "") ~= "dumb"
  local width = tonumber(ctx.getenv("COLUMNS") or "") or 80
  local last, drawn = nil, false
  local r = {}
  function r.update(p)
    if ctx.args.quiet then return end
    local line = M.worker_line(what, p)
    if tty then
      if #line > width - 1 then line = line:sub(1, width - 1) end
      ctx.stderr:write("\r", line, "\27[K")
      drawn = true
    elseif line ~= last then
      ctx.stderr:write("kie: ", line, "\n")
    end
    last = line
    ctx.stderr:flush()
  end
  function r.clear()
    if drawn then ctx.stderr:write("\r\27[K") ctx.stderr:flush() end
  end
  return r
end

local function _is_interrupt(err)
  if type(err) == "table" then err = err.message end
  return tostring(err):find("interrupted!", 1, true) ~= nil
end

--- `kie worker`: works until the batch (or every batch) ended; Ctrl-C finishes
-- the creates in flight (their task ids recorded in Redis) and exits 130.
function M.worker(ctx)
  local a = ctx.args
  if (a.batch == nil) == (not a.all) then return ctx:usage("worker: give either --batch ID or --all") end
  local client, cerr = _client(ctx)
  if not client then return ctx:fail(cerr) end
  local rep = _reporter(ctx, a.batch and ("batch " .. a.batch) or "all batches")
  local ok, st, err = pcall(client.work, client, { batch = a.batch, all = a.all or nil,
    concurrency = a.concurrency, lease = a.lease, timeout = a.timeout, max_interval = a.max_interval,
    on_progress = rep.update })
  rep.clear()
  if not ok then
    client:close()
    if _is_interrupt(st) then
      ctx.stderr:write("kie: interrupted; the creates in flight were answered and recorded; ",
        "the other items go to another worker once their lease lapses\n")
      if a.json then ctx:json({ error = { kind = "interrupted", message = "interrupted" } }) end
      return 130
    end
    if type(st) == "string" and st:match("^work: ") then return ctx:usage(st) end
    error(st, 0)
  end
  client:close()
  if not st then return ctx:fail(err) end
  if a.json then
    ctx:json(st)
  elseif st.results then
    ctx:out(format("%s: %d items, %d done, %d failed\n", a.batch, st.total, st.done, st.failed))
  else
    ctx:out(format("%d batches ended\n", st.batches))
  end
  return 0
end

--- `kie batch ID`: the counts, then one line per item (state, task id, URLs or
-- the error); `--json` prints `client:batch`'s table.
function M.batch(ctx)
  local client, cerr = _client(ctx)
  if not client then return ctx:fail(cerr) end
  local okc, st, err = pcall(client.batch, client, ctx.args.id)
  client:close()
  if not okc then return ctx:usage(tostring(st):gsub("^[^:]*:%d+: ", "")) end
  if not st then return ctx:fail(err) end
  if ctx.args.json then
    ctx:json(st)
    return 0
  end
  local pending = st.total - st.done - st.failed
  ctx:out(format("%s: %d items, %d done, %d failed, %d not ended\n", ctx.args.id, st.total, st.done,
    st.failed, pending))
  for i, r in ipairs(st.results) do
    local parts = { tostring(i), r.state, r.task_id or "-" }
    if r.urls then
      for _, u in ipairs(r.urls) do parts[#parts + 1] = tostring(u) end
    end
    if r.kind then parts[#parts + 1] = r.kind .. ": " .. tostring(r.message or "") end
    ctx:out((concat(parts, "  "):gsub("[%c]", " ")), "\n")
  end
  return 0
end

return M
