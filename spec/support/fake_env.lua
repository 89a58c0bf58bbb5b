-- A fake env for the policy specs (kie.retry, kie.schedule): the clock only moves
-- through sleep, which records every delay; random is a fixed value, or ({seed=n})
-- a seeded Park-Miller generator (exact in doubles, so identical on every Lua).
--   local env = require("spec.support.fake_env")(rnd, t0, default_seed)
return function(rnd, t0, default_seed)
  local env = { t = t0 or 0, sleeps = {} }
  function env.now() return env.t end
  function env.sleep(s)
    assert(type(s) == "number" and s >= 0, "bad sleep " .. tostring(s))
    env.sleeps[#env.sleeps + 1] = s
    env.t = env.t + s
  end
  if type(rnd) == "number" then
    function env.random() return rnd end
  else -- { seed = n }
    local x = rnd and rnd.seed or default_seed
    function env.random()
      x = (16807 * x) % 2147483647
      return (x - 1) / 2147483646
    end
  end
  return env
end
