-- Unit specs for kie.ratelimit: exact sliding window, checked by brute force.
local rl = require "kie.ratelimit"

local function fake_env(t0)
  local env = { t = t0 or 0, sleeps = {} }
  function env.now() return env.t end
  function env.sleep(s)
    assert(type(s) == "number" and s > 0, "bad sleep " .. tostring(s))
    env.sleeps[#env.sleeps + 1] = s
    env.t = env.t + s
  end
  return env
end

-- Park-Miller generator: deterministic and exact in doubles on every Lua version.
local function rng(seed)
  local x = seed
  return function()
    x = (16807 * x) % 2147483647
    return (x - 1) / 2147483646
  end
end

-- Brute force: the largest number of sent times inside any half-open interval
-- [a, a + span). The maximum is reached with `a` at one of the times.
local function max_in_span(times, span)
  local best = 0
  for i = 1, #times do
    local n = 0
    for j = 1, #times do
      if times[j] >= times[i] and times[j] < times[i] + span then n = n + 1 end
    end
    if n > best then best = n end
  end
  return best
end

-- Brute force: requests sent in (now - span, now].
local function count_recent(times, now, span)
  local n = 0
  for j = 1, #times do
    if times[j] > now - span and times[j] <= now then n = n + 1 end
  end
  return n
end

-- Drives a limiter with a random, bursty arrival pattern; every request waits for
-- lim:delay and is then taken. Times are multiples of `res` (default 1/64 s) and
-- window/margin are dyadic, so the brute-force comparisons are exact in binary floats.
local function simulate(lim, seed, n, res)
  res = res or 1 / 64
  local random = rng(seed)
  local t, sent, waits = 0, {}, 0
  local span = lim.window + lim.margin
  for _ = 1, n do
    local r = random()
    -- r < 0.5: a burst at the same instant
    if r >= 0.5 and r < 0.9 then
      t = t + math.floor(random() / res) * res
    elseif r >= 0.9 then
      t = t + math.floor(random() * lim.window * 2 / res) * res
    end
    local d = lim:delay(t)
    assert(d >= 0, "negative delay")
    local recent = count_recent(sent, t, span)
    -- exact: it waits if and only if `limit` requests are already in the window
    if d > 0 then
      assert(recent >= lim.limit, ("waited %s at t=%s with only %d recent"):format(d, t, recent))
      waits = waits + 1
      t = t + d
      assert(lim:delay(t) == 0, "delay not enough")
      -- and not a moment too long: the window just reached its edge
      assert(count_recent(sent, t, span) < lim.limit, "waited too long")
      assert(count_recent(sent, t - res / 4, span) >= lim.limit, "could have gone earlier")
    else
      assert(recent < lim.limit, ("no wait at t=%s with %d recent"):format(t, recent))
    end
    lim:take(t)
    sent[#sent + 1] = t
  end
  return sent, waits
end

describe("kie.ratelimit", function()
  it("lets `limit` requests through at once, then waits window + margin from the oldest", function()
    local lim = rl.new{ limit = 3, window = 10, margin = 0.5 }
    for _ = 1, 3 do
      assert.equal(0, lim:delay(0))
      lim:take(0)
    end
    assert.equal(10.5, lim:delay(0))
    assert.equal(6.5, lim:delay(4))
    assert.equal(0, lim:delay(10.5))
    assert.equal(0, lim:delay(11))
  end)

  it("slides: each slot frees window + margin after its own request", function()
    local lim = rl.new{ limit = 2, window = 1, margin = 0 }
    lim:take(0); lim:take(0.25)
    assert.equal(0.75, lim:delay(0.25))
    lim:take(1)           -- oldest (0) expired at 1
    assert.equal(0.25, lim:delay(1)) -- now oldest is 0.25
    lim:take(1.25)
    assert.equal(0.75, lim:delay(1.25))
  end)

  it("uses a default margin of 0.05 s and defaults 20 per 10 s", function()
    local lim = rl.new()
    assert.equal(20, lim.limit); assert.equal(10, lim.window); assert.equal(0.05, lim.margin)
    for _ = 1, 20 do lim:take(0) end
    assert.is_true(math.abs(lim:delay(0) - 10.05) < 1e-12)
    assert.is_true(lim:delay(10) > 0)       -- the margin still holds it back at exactly 10 s
    assert.is_true(lim:delay(10.049) > 0)
    assert.equal(0, lim:delay(10.05))
  end)

  it("never allows more than `limit` requests in any window (randomized, brute force)", function()
    local configs = {
      { limit = 1, window = 1, margin = 0 },
      { limit = 3, window = 1, margin = 0 },
      { limit = 10, window = 1, margin = 0.0625 },
      { limit = 20, window = 10, margin = 0.0625 },
      { limit = 5, window = 2.5, margin = 0.25 },
    }
    for ci, c in ipairs(configs) do
      for seed = 1, 8 do
        local lim = rl.new(c)
        local sent, waits = simulate(lim, seed * 1000 + ci, 400, seed % 2 == 0 and 1 / 1024 or nil)
        assert.is_true(waits > 0, "the sequence never hit the limit; the test proves nothing")
        assert.is_true(max_in_span(sent, c.window + c.margin) <= c.limit,
          ("config %d seed %d: %d requests in one window"):format(ci, seed, max_in_span(sent, c.window + c.margin)))
        -- exact: the limiter does reach the limit (it is not over-conservative)
        assert.equal(c.limit, max_in_span(sent, c.window))
      end
    end
  end)

  it("with the default (non-dyadic) margin no closed window-long interval exceeds the limit", function()
    local lim = rl.new{ limit = 4, window = 1 }
    local env = fake_env()
    local random = rng(99)
    local sent = {}
    for _ = 1, 300 do
      if random() < 0.3 then env.t = env.t + random() * 0.7 end
      lim:acquire(env)
      sent[#sent + 1] = env.t
    end
    for i = 1, #sent do
      local n = 0
      for j = 1, #sent do
        if sent[j] >= sent[i] and sent[j] <= sent[i] + 1 then n = n + 1 end
      end
      assert.is_true(n <= 4, "closed window from " .. sent[i] .. " holds " .. n)
    end
  end)

  it("a detector of the property catches a limiter without a window (control)", function()
    -- guards the brute force itself: a broken sequence must be flagged
    local times = { 0, 0.1, 0.2, 0.3 }
    assert.equal(4, max_in_span(times, 1))
    assert.equal(2, max_in_span({ 0, 1, 2 }, 1.5))
  end)

  it("acquire sleeps exactly as needed and returns the seconds waited", function()
    local lim = rl.new{ limit = 3, window = 1, margin = 0 }
    local env = fake_env(5)
    assert.equal(0, lim:acquire(env))
    assert.equal(0, lim:acquire(env))
    env.t = 5.25
    assert.equal(0, lim:acquire(env))
    assert.equal(0, #env.sleeps)
    assert.equal(0.75, lim:acquire(env))    -- waits for the request at t=5 to leave
    assert.same({ 0.75 }, env.sleeps)
    assert.equal(6, env.t)
    assert.equal(0, lim:acquire(env))       -- second slot (t=5) freed at 6 too
    assert.equal(0.25, lim:acquire(env))    -- third slot (5.25) frees at 6.25
    assert.equal(6.25, env.t)
  end)

  it("acquire re-checks after waking, so cooperative sharers never overshoot", function()
    local lim = rl.new{ limit = 1, window = 1, margin = 0 }
    local env = fake_env(0)
    -- a sleep that lets another task take the slot meanwhile
    local stolen = false
    local sleep = env.sleep
    env.sleep = function(s)
      sleep(s)
      if not stolen then stolen = true; lim:take(env.t) end
    end
    lim:take(0)
    local waited = lim:acquire(env)
    assert.equal(2, waited)           -- 1 s for the first holder, 1 s more for the thief
    assert.same({ 1, 1 }, env.sleeps)
  end)

  it("records a clock that steps back as the newest time (safe side)", function()
    local lim = rl.new{ limit = 1, window = 1, margin = 0 }
    lim:take(10); lim:take(9)
    assert.equal(1, lim:delay(10)) -- recorded at 10, so it leaves at 11, not 10
    local lim2 = rl.new{ limit = 3, window = 1, margin = 0 }
    lim2:take(10); lim2:take(9); lim2:take(9.5)
    assert.equal(1, lim2:delay(10))
  end)

  it("fill uses the whole budget; reset forgets it", function()
    local lim = rl.new{ limit = 5, window = 2, margin = 0 }
    lim:take(0)
    lim:fill(3)
    assert.equal(2, lim:delay(3))
    lim:reset()
    assert.equal(0, lim:delay(3))
  end)

  it("raises on bad options", function()
    assert.has_error(function() rl.new{ limit = 0 } end)
    assert.has_error(function() rl.new{ limit = 1.5 } end)
    assert.has_error(function() rl.new{ window = 0 } end)
    assert.has_error(function() rl.new{ window = 0 / 0 } end)
    assert.has_error(function() rl.new{ margin = -0.1 } end)
    assert.has_error(function() rl.new{ rate = 3 } end)
    assert.has_error(function() rl.new{}:acquire({ now = function() return 0 end }) end)
    assert.has_no_error(function() rl.new{ limit = 10, window = 1, margin = 0 } end)
  end)
end)
