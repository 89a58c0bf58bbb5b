-- The kill -9 proof of the fleet journal, short version (the long one: make
-- soak-fleet-kill): workers killed at random moments, replacements that resume();
-- 0 creates sent twice, 0 task ids lost, every task finished by someone.
local kill = require "spec.support.fleet_kill"

local function body(prompt) return '{"model":"m","input":{"prompt":"' .. prompt .. '"}}' end

describe("fleet journal: kill -9 of random workers #fleet #integration #processes", function()
  it("the checker sees a create sent twice, a lost task, an unfinished one, an intent left with a task", function()
    local url = "http://x/cb?kie_intent="
    assert.same({}, kill.check({ body("a"), body("b") }, { t1 = url .. "i1", t2 = url .. "i2" },
      { t1 = { state = "success" }, t2 = { state = "fail" } }, { "i3" }))
    assert.same({
      "create sent twice: a",
      "intent i1 unresolved, yet task t1 exists",
      "task lost (not in the fleet journal): t2",
      "task never finished: t3",
    }, kill.check({ body("a"), body("a") }, { t1 = url .. "i1", t2 = url .. "i2", t3 = url .. "i3" },
      { t1 = { state = "success" }, t3 = {} }, { "i1" }))
  end)

  it("no create twice, no task id lost, every task finished (seeded)", function()
    local seed = tonumber(os.getenv("FLEET_KILL_SEED")) or 1
    local figures, violations = kill.run{ procs = 4, seconds = 10, kill_every = 1.2, seed = seed,
      lease = 1 }
    print(kill.report(figures))
    assert.same({}, violations)
    assert.is_true(figures.kills >= 3)
    assert.is_true(figures.tasks > 20)
    assert.equals(0, figures.open_left)
  end)
end)
