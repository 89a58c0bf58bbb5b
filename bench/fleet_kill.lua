-- make soak-fleet-kill: the kill -9 proof of the fleet journal, long version
-- (spec/support/fleet_kill.lua; the short one is spec/fleet_kill_spec.lua). N workers
-- create and wait tasks against the mock with the fleet journal; a random one is
-- kill -9'd every KILL_EVERY seconds (on average) and replaced by one that resumes.
-- Prints the figures per seed; exits 1 on any violation. 127.0.0.1 only.
--   FLEET_PROCS=8 FLEET_SECONDS=60 KILL_EVERY=3 FLEET_LEASE=2 FLEET_KILL_SEEDS=1,2
local kill = require "spec.support.fleet_kill"

local function env(name, default) return tonumber(os.getenv(name)) or default end
local bad = 0
for seed in (os.getenv("FLEET_KILL_SEEDS") or "1"):gmatch("%d+") do
  local figures, violations = kill.run{ procs = env("FLEET_PROCS", 8), seconds = env("FLEET_SECONDS", 60),
    kill_every = env("KILL_EVERY", 3), seed = tonumber(seed), lease = env("FLEET_LEASE", 2) }
  print(kill.report(figures))
  for _, v in ipairs(violations) do print("  " .. v) end
  bad = bad + #violations
end
os.exit(bad == 0 and 0 or 1)
