-- make soak-fleet-outage: the Redis outage proof of fleet mode, long version
-- (spec/support/fleet_outage.lua; the short one is spec/fleet_outage_spec.lua): for
-- each seed and each kind (restart with its data, restart empty, freeze, cut), N workers
-- at the account's limits while Redis is away OUTAGE seconds. Prints the figures;
-- exits 1 on any violation. 127.0.0.1 only.
--   FLEET_OUTAGE_SEEDS=1,2,3 FLEET_OUTAGE_KINDS=restart,empty,freeze,cut FLEET_PROCS=4
--   FLEET_OUTAGE=5 FLEET_BEFORE=4 FLEET_AFTER=5
local outage = require "spec.support.fleet_outage"

local function env(name, default) return tonumber(os.getenv(name)) or default end
local bad = 0
for seed in (os.getenv("FLEET_OUTAGE_SEEDS") or "1,2,3"):gmatch("%d+") do
  for kind in (os.getenv("FLEET_OUTAGE_KINDS") or "restart,empty,freeze,cut"):gmatch("%a+") do
    local figures, violations = outage.run{ kind = kind, seed = tonumber(seed), procs = env("FLEET_PROCS", 4),
      outage = env("FLEET_OUTAGE", 5), before = env("FLEET_BEFORE", 4), after = env("FLEET_AFTER", 5) }
    print(outage.report(figures))
    for _, v in ipairs(violations) do print("  " .. v) end
    io.stdout:flush()
    bad = bad + #violations
  end
end
os.exit(bad == 0 and 0 or 1)
