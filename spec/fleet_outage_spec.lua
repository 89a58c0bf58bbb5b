-- Redis restarted or cut for 5 s under 4 workers at the account's limits (issue 11),
-- short version (the long one, several seeds: make soak-fleet-outage): 0 creates sent
-- twice, 0 task ids lost, 0 answers 429, only errors of kind `fleet` and nothing sent
-- while Redis is away, creates again soon after it is back. See
-- spec/support/fleet_outage.lua.
local outage = require "spec.support.fleet_outage"

local seed = tonumber(os.getenv("FLEET_OUTAGE_SEED")) or 1

-- #outage: once per `make test` (lua5.4), like #netns: the same Lua runs on every version
describe("fleet mode: Redis away for 5 s under load #fleet #integration #processes #outage", function()
  local function proves(kind)
    -- 3 s of load first (a new fleet's first window counts as full), 3 s after (5 s back
    -- empty: its first window counts as full too)
    local figures, violations = outage.run{ kind = kind, seed = seed, before = 3,
      after = kind == "empty" and 5 or 3 }
    print(outage.report(figures))
    assert.same({}, violations)
    assert.is_true(figures.creates >= 8)
    assert.equals(0, figures.open_left)
  end

  it("killed and restarted with its data (AOF)", function() proves("restart") end)
  it("killed and restarted empty: the window counts as full", function() proves("empty") end)
  it("frozen (SIGSTOP: connections open, no answer), then let go", function() proves("freeze") end)
end)
