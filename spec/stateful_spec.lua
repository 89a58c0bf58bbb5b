-- The stateful randomized test of the async API (issue 10, "tests that find the next
-- defect by themselves"): random sequences of create_task_async / get_task_async /
-- wait_async (some with a raising on_update) / run_async / kie.spawn (run;
-- create+get+wait; run_all, some with a raising item; get+download; a raising
-- function) / handle:cancel() / client:close() (both also from inside a callback) /
-- callbacks that raise or start a create / blocking get_task and create_task on the
-- same client / client:step(timeout, budget) /
-- poll_timeout / collectgarbage, with random server faults, over
--   (a) the real core against the mock kie.ai (nginx, real sockets, real time) and
--   (b) kie.testing (the fake core, virtual time).
-- After every op the invariants of spec/support/stateful/harness.lua are checked
-- (each callback exactly once, step raises only for a user callback, every task the
-- server made is accounted for, no create twice, nothing left after close, ...).
--
-- Reproduce and explore:
--   STATEFUL_SEED=123 busted --lua=lua5.4 spec/stateful_spec.lua      one seed (both backends)
--   STATEFUL_SEEDS=1000 STATEFUL_OPS=400 ...                          seeds 1..1000
--   STATEFUL_BACKEND=testing|mock                                     one backend
--   STATEFUL_REPLAY=file.lua                                          an op list printed on failure
--   STATEFUL_SECONDS=600                                              stop starting seeds after that
--   STATEFUL_ALL=1                                                    also the op kinds disabled below
--   STATEFUL_SHRINK=0                                                 no minimizing on failure
--   STATEFUL_DISABLE=close,close_cb                                   leave these op kinds out
--   STATEFUL_DISABLE_FAULTS=drop_after_body                           ... and these fault kinds
--   STATEFUL_DISABLE_CHECKS=excuse_run_all,no_files_check@testing     ... and these checks
--   STATEFUL_STATS=1                                                  counts of what ran, at exit
-- `make soak-stateful` runs many seeds with everything enabled.
local ops_mod = require "spec.support.stateful.ops"
local backends = require "spec.support.stateful.backends"
local harness = require "spec.support.stateful.harness"
local shrink = require "spec.support.stateful.shrink"
local core = require "kie.core"

-- Op kinds left out of the fixed seeds of the normal suite (main must stay green)
-- until the defect each one finds is fixed; `make soak-stateful` (STATEFUL_ALL=1)
-- runs them. Kind -> why. (Issue 10's #1, #3-#8, found by this test on the main of
-- 2026-12-04 17:58 (a65a9e6), are fixed: every op kind runs.)
local DISABLED = {
}
-- Checks left out of the fixed seeds, the same way (harness.lua's options).
local DISABLED_CHECKS = {
  -- (excuse_run_all is gone: a canceled or closed spawned run_all's error now carries
  -- its items' results and errs, fingerprints and late task ids included.)
}
-- Fault kinds (backends.lua's names) left out of the fixed seeds, the same way.
local DISABLED_FAULTS = {
}

local env = os.getenv
local all = env("STATEFUL_ALL") == "1"
-- STATEFUL_DISABLE / STATEFUL_DISABLE_FAULTS replace both lists above (explore past a
-- known defect): e.g. STATEFUL_DISABLE=close,close_cb STATEFUL_DISABLE_FAULTS=
if env("STATEFUL_DISABLE") or env("STATEFUL_DISABLE_FAULTS") or env("STATEFUL_DISABLE_CHECKS") then
  all = false
  DISABLED, DISABLED_FAULTS, DISABLED_CHECKS = {}, {}, {}
  for k in (env("STATEFUL_DISABLE") or ""):gmatch("[%w_]+") do DISABLED[k] = "env" end
  for k in (env("STATEFUL_DISABLE_FAULTS") or ""):gmatch("[%w_]+") do DISABLED_FAULTS[k] = "env" end
  for k in (env("STATEFUL_DISABLE_CHECKS") or ""):gmatch("[%w_@]+") do DISABLED_CHECKS[k] = "env" end
end
local n_ops = tonumber(env("STATEFUL_OPS") or "") or 200
local seconds = tonumber(env("STATEFUL_SECONDS") or "")
local do_shrink = env("STATEFUL_SHRINK") ~= "0"

local function seed_list()
  local one = env("STATEFUL_SEED")
  if one and one ~= "" then return { tonumber(one) } end
  local many = env("STATEFUL_SEEDS")
  local seeds = {}
  if many and many:find(",") then
    for s in many:gmatch("%d+") do seeds[#seeds + 1] = tonumber(s) end
  else
    for s = 1, tonumber(many or "") or 8 do seeds[#seeds + 1] = s end
  end
  return seeds
end

local function replay()
  local path = env("STATEFUL_REPLAY")
  if not path or path == "" then return nil end
  local t = assert(dofile(path))
  return t
end

local function report(backend, cfg, ops, failure, shrunk, runs)
  for _, list in ipairs({ ops, shrunk or {} }) do -- faults by name: indices depend on what is disabled
    for _, op in ipairs(list) do
      if op.fault and not op.fault_name then
        local f = backend.FAULTS[op.fault]
        op.fault_name = f.name or f.fault
      end
    end
  end
  local out = {}
  local function add(s) out[#out + 1] = s end
  add(("stateful %s: seed %d (journal=%s max_retries=%d budget=%s paced=%s): [%s] %s"):format(backend.name,
    cfg.seed, tostring(cfg.journal), cfg.max_retries, tostring(cfg.budget), tostring(cfg.paced),
    failure.class, failure.msg))
  add(("after op %d of %d (0: at the end)"):format(failure.at, #ops))
  if failure.traceback then add(failure.traceback) end
  if shrunk then
    add(("minimized to %d ops (%d runs):"):format(#shrunk, runs))
    for i, op in ipairs(shrunk) do add(ops_mod.line(i, op)) end
    add("replay: put this in a file and run STATEFUL_BACKEND=" .. backend.name ..
      " STATEFUL_REPLAY=<file> busted --lua=lua5.4 spec/stateful_spec.lua")
    add(ops_mod.literal(cfg, shrunk))
  else
    for i, op in ipairs(ops) do
      if i <= failure.at or failure.at == 0 then add(ops_mod.line(i, op)) end
    end
  end
  add(("replay: STATEFUL_SEED=%d STATEFUL_OPS=%d STATEFUL_BACKEND=%s%s busted --lua=lua5.4 spec/stateful_spec.lua")
    :format(cfg.seed, #ops, backend.name, all and " STATEFUL_ALL=1" or ""))
  return table.concat(out, "\n")
end

local started = core.now()

-- STATEFUL_STATS=1: what the runs did, per backend, printed when its runs are over
local stats = { mock = {}, testing = {} }
local function show_stats(name)
  if env("STATEFUL_STATS") ~= "1" then return end
  local t, keys, parts = stats[name], {}, {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. t[k] end
  io.stderr:write("stateful ", name, ": ", table.concat(parts, " "), "\n")
end

local which = env("STATEFUL_BACKEND")
for _, make in ipairs({ backends.mock, backends.testing }) do
  local backend = make(not all and DISABLED_FAULTS or nil)
  if not which or which == "" or which == backend.name then
    local title = backend.name == "mock" and "the real core and the mock" or "kie.testing"
    describe("stateful test over " .. title, function()
      lazy_setup(function() backend:start() end)
      lazy_teardown(function()
        backend:stop()
        show_stats(backend.name)
      end)

      local function check(cfg, ops)
        local hopts = { no_close = DISABLED.close and not all, stats = stats[backend.name] }
        if not all then -- "check" or "check@backend"
          for k in pairs(DISABLED_CHECKS) do
            local name, only = k:match("^([%w_]+)@?([%w_]*)$")
            if only == "" or only == backend.name then hopts[name] = true end
          end
        end
        local failure = harness.run(backend, cfg, ops, hopts)
        if not failure then return end
        local shrunk, runs
        if do_shrink then
          local class = failure.class
          shrunk, runs = shrink.shrink(ops, function(cand)
            local f = harness.run(backend, cfg, cand, hopts)
            return f ~= nil and f.class == class
          end, 300, backend.name == "mock" and 60 or 30, core.now)
        end
        local text = report(backend, cfg, ops, failure, shrunk, runs)
        error(text, 0)
      end

      local r = replay()
      if r then
        it("replays " .. env("STATEFUL_REPLAY"), function() check(r.cfg, r.ops) end)
        return
      end
      for _, seed in ipairs(seed_list()) do
        it(("seed %d, %d ops: every promise holds after every op"):format(seed, n_ops), function()
          if seconds and core.now() - started > seconds then -- time is up (soak)
            pending("STATEFUL_SECONDS passed")
            return
          end
          local cfg, ops = ops_mod.generate(seed, n_ops, #backend.FAULTS, not all and DISABLED or nil)
          check(cfg, ops)
        end)
      end
    end)
  end
end
