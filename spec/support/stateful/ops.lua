-- Op sequences of the stateful randomized test (spec/stateful_spec.lua): a seed makes
-- a list of plain-data ops, the same on every Lua (its own generator, never
-- math.random). An op names no handle or task: `pick` (0..1) chooses among those
-- alive when it runs, so a shortened list (shrink.lua) still means something.
local M = {}

-- Park-Miller minimal standard generator: exact in doubles on every Lua.
function M.prng(seed)
  -- spread small seeds over the range (exact: below 2^53 for seeds below 10^6)
  local x = (math.floor(seed) % 1000000 * 2654435 + 12345) % 2147483646 + 1
  local r = {}
  function r.float()
    x = (x * 48271) % 2147483647
    return (x - 1) / 2147483646
  end
  for _ = 1, 3 do r.float() end
  function r.int(a, b) return a + math.floor(r.float() * (b - a + 1)) end
  function r.pick(list) return list[r.int(1, #list)] end
  return r
end

-- op kind -> weight
M.WEIGHTS = {
  create = 12, get = 7, wait = 5, run = 5,
  spawn_run = 4, spawn_seq = 3, spawn_run_all = 3, spawn_raise = 1,
  cancel = 8, close = 2, close_cb = 1, raise_cb = 2, chain_cb = 3, cancel_cb = 2,
  step = 32, gc = 5, poll = 4, spawn_download = 3, blocking = 3,
}
M.ORDER = { "create", "get", "wait", "run", "spawn_run", "spawn_seq", "spawn_run_all",
  "spawn_raise", "cancel", "close", "close_cb", "raise_cb", "chain_cb", "cancel_cb", "step", "gc",
  "poll", "spawn_download", "blocking" }

-- kinds that start a call and may carry a fault for the server
local STARTS = { create = true, get = true, wait = true, run = true, spawn_run = true,
  spawn_seq = true, spawn_run_all = true, close_cb = true, raise_cb = true, chain_cb = true,
  cancel_cb = true, spawn_download = true, blocking = true }

M.TIMEOUTS = { 0, 0, 0, 1, 5, 20 }
M.BUDGETS = { "default", 0, 0.05, "huge" }

-- The run's settings and its ops. `disabled` is a set of op kinds left out;
-- `nfaults` is how many fault kinds the backend has.
function M.generate(seed, n, nfaults, disabled)
  local r = M.prng(seed)
  local cfg = {
    seed = seed,
    journal = r.float() < 0.5,
    max_retries = r.int(0, 2),
    budget = r.pick(M.BUDGETS),
    paced = r.float() < 0.5, -- client-side rate limits on (the backend's, small windows)
  }
  local total, kinds = 0, {}
  for _, k in ipairs(M.ORDER) do
    if not (disabled and disabled[k]) then
      total = total + M.WEIGHTS[k]
      kinds[#kinds + 1] = k
    end
  end
  local ops = {}
  for i = 1, n do
    local x, k = r.float() * total, nil
    for _, kk in ipairs(kinds) do
      x = x - M.WEIGHTS[kk]
      if x < 0 then k = kk break end
    end
    k = k or kinds[#kinds]
    local op = { k = k, pick = math.floor(r.float() * 1000) / 1000 }
    if STARTS[k] and nfaults > 0 and r.float() < 0.3 then
      op.fault = r.int(1, nfaults)
      op.target = k == "spawn_download" and "file" or r.pick({ "create", "create", "get", "any" })
    end
    if k == "step" then
      op.timeout = r.pick(M.TIMEOUTS)
      op.budget = r.pick(M.BUDGETS)
    elseif k == "gc" then
      op.full = r.float() < 0.3
    elseif k == "spawn_run_all" then
      op.n = r.int(1, 6)
      op.conc = r.int(1, 4)
      if r.float() < 0.5 then op.raise_item = r.int(1, op.n) end -- its on_update raises
    elseif k == "get" or k == "wait" or k == "spawn_download" then
      op.unknown = r.float() < 0.15 -- a task id the server never made
    end
    ops[i] = op
  end
  return cfg, ops
end

-- One line per op, and the whole list as a Lua table literal (for STATEFUL_REPLAY).
local FIELDS = { "pick", "fault_name", "target", "timeout", "budget", "full", "n", "conc", "raise_item",
  "unknown" }

function M.line(i, op)
  local parts = { string.format("%3d %s", i, op.k) }
  for _, f in ipairs(FIELDS) do
    if op[f] ~= nil then parts[#parts + 1] = f .. "=" .. tostring(op[f]) end
  end
  return table.concat(parts, " ")
end

local function lit(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

function M.literal(cfg, ops)
  local out = { "return { cfg = {" }
  for _, k in ipairs({ "seed", "journal", "max_retries", "budget", "paced" }) do
    out[#out + 1] = k .. " = " .. lit(cfg[k]) .. ","
  end
  out[#out + 1] = "}, ops = {\n"
  for _, op in ipairs(ops) do
    local f = {}
    for _, k in ipairs({ "k", (table.unpack or unpack)(FIELDS) }) do
      if op[k] ~= nil then f[#f + 1] = k .. " = " .. lit(op[k]) end
    end
    out[#out + 1] = "  { " .. table.concat(f, ", ") .. " },\n"
  end
  out[#out + 1] = "} }"
  return table.concat(out, " ")
end

return M
