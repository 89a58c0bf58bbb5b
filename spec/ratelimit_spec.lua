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

-- A request sent and answered at the same instant `t`.
local function take(lim, t)
  lim:release(lim:claim(t), t)
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
    take(lim, t)
    sent[#sent + 1] = t
  end
  return sent, waits
end

-- Discrete-event run of `workers` cooperative tasks sending `n` requests in all
-- through one limiter. Each request: acquire (sleeping as told), a random latency
-- to the server (its arrival is recorded there), a random latency back, release.
-- `at_send` releases at sending instead (a limiter that counts at the client).
-- Returns the arrival times at the server.
local function simulate_latency(lim, seed, workers, n, at_send)
  local random = rng(seed)
  local t, queue, arrivals, sent = 0, {}, {}, 0
  local env = { now = function() return t end }
  function env.sleep(s) coroutine.yield(t + s) end
  local function worker()
    while sent < n do
      sent = sent + 1
      local slot = lim:acquire(env)
      if at_send then lim:release(slot, t) end
      env.sleep(math.floor(random() * 20) / 64)          -- to the server: 0 - 0.3 s
      arrivals[#arrivals + 1] = t
      env.sleep(math.floor(random() * 4) / 64)           -- the answer back
      if not at_send then lim:release(slot, t) end
      if random() < 0.3 then env.sleep(math.floor(random() * 32) / 64) end
    end
  end
  for i = 1, workers do queue[i] = { co = coroutine.create(worker), at = 0, i = i } end
  while #queue > 0 do
    table.sort(queue, function(a, b) if a.at ~= b.at then return a.at < b.at end return a.i < b.i end)
    local w = table.remove(queue, 1)
    t = w.at
    local ok, at = coroutine.resume(w.co)
    assert(ok, at)
    if coroutine.status(w.co) ~= "dead" then w.at = at; queue[#queue + 1] = w end
  end
  return arrivals
end

describe("kie.ratelimit", function()
  it("lets `limit` requests through at once, then waits window + margin from the oldest", function()
    local lim = rl.new{ limit = 3, window = 10, margin = 0.5 }
    for _ = 1, 3 do
      assert.equal(0, lim:delay(0))
      take(lim, 0)
    end
    assert.equal(10.5, lim:delay(0))
    assert.equal(6.5, lim:delay(4))
    assert.equal(0, lim:delay(10.5))
    assert.equal(0, lim:delay(11))
  end)

  it("slides: each slot frees window + margin after its own request", function()
    local lim = rl.new{ limit = 2, window = 1, margin = 0 }
    take(lim, 0); take(lim, 0.25)
    assert.equal(0.75, lim:delay(0.25))
    take(lim, 1)           -- oldest (0) expired at 1
    assert.equal(0.25, lim:delay(1)) -- now oldest is 0.25
    take(lim, 1.25)
    assert.equal(0.75, lim:delay(1.25))
  end)

  it("uses a default margin of 0.05 s and defaults 20 per 10 s", function()
    local lim = rl.new()
    assert.equal(20, lim.limit); assert.equal(10, lim.window); assert.equal(0.05, lim.margin)
    for _ = 1, 20 do take(lim, 0) end
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

  it("however latency varies, no window at the server sees more than `limit` (randomized)", function()
    local configs = {
      { limit = 1, window = 1, margin = 0 },
      { limit = 3, window = 1, margin = 0 },
      { limit = 10, window = 1, margin = 0.0625 },
      { limit = 20, window = 10, margin = 0 },
    }
    local overshoots = 0
    for ci, c in ipairs(configs) do
      for seed = 1, 6 do
        for _, workers in ipairs{ 1, 4, 32 } do
          local s = seed * 100 + ci * 10 + workers
          local arrivals = simulate_latency(rl.new(c), s, workers, 120)
          assert.equal(120, #arrivals)
          local most = max_in_span(arrivals, c.window)
          assert.is_true(most <= c.limit, ("config %d seed %d workers %d: %d arrivals in one window")
            :format(ci, seed, workers, most))
          -- control: the same traffic counted at sending overshoots at the server
          if max_in_span(simulate_latency(rl.new(c), s, workers, 120, true), c.window) > c.limit then
            overshoots = overshoots + 1
          end
        end
      end
    end
    assert.is_true(overshoots > 10, "counting at sending never overshot: the test proves nothing")
  end)

  it("a detector of the property catches a limiter without a window (control)", function()
    -- guards the brute force itself: a broken sequence must be flagged
    local times = { 0, 0.1, 0.2, 0.3 }
    assert.equal(4, max_in_span(times, 1))
    assert.equal(2, max_in_span({ 0, 1, 2 }, 1.5))
  end)

  it("acquire sleeps exactly as needed and returns the slot (its time)", function()
    local lim = rl.new{ limit = 3, window = 1, margin = 0 }
    local env = fake_env(5)
    lim:release(lim:acquire(env), env.t)
    lim:release(lim:acquire(env), env.t)
    env.t = 5.25
    lim:release(lim:acquire(env), env.t)
    assert.equal(0, #env.sleeps)
    assert.equal(6, lim:acquire(env))       -- waits for the request at t=5 to leave
    assert.same({ 0.75 }, env.sleeps)
    assert.equal(6, env.t)
    lim:release(6, env.t)
    assert.equal(6, lim:acquire(env))       -- second slot (t=5) freed at 6 too
    lim:release(6, env.t)
    assert.equal(6.25, lim:acquire(env))    -- third slot (5.25) frees at 6.25
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
      if not stolen then stolen = true; take(lim, env.t) end
    end
    take(lim, 0)
    assert.equal(2, lim:acquire(env)) -- 1 s for the first holder, 1 s more for the thief
    assert.same({ 1, 1 }, env.sleeps)
  end)

  it("with a deadline, gives up at once (nothing held) when the slot comes too late", function()
    local lim = rl.new{ limit = 1, window = 1, margin = 0 }
    local env = fake_env(0)
    take(lim, 0)
    local slot, wait = lim:acquire(env, 0.5)
    assert.is_nil(slot)
    assert.equal(1, wait)
    assert.same({}, env.sleeps)
    assert.equal(1, lim:acquire(env, 1))
  end)

  it("holds a slot from acquire to release, and counts it window + margin from the release", function()
    local lim = rl.new{ limit = 2, window = 1, margin = 0.25 }
    local env = fake_env(0)
    local a = lim:acquire(env)
    local b = lim:acquire(env)
    assert.equal(1.25, lim:delay(0))       -- both held: at least a window from now
    assert.equal(1.25, lim:delay(3))       -- still held 3 s later: no slot freed by time
    lim:release(a, 3)                      -- its answer came at 3
    assert.equal(1.25, lim:delay(3))
    assert.equal(0.25, lim:delay(4))
    assert.equal(0, lim:delay(4.25))
    lim:release(b, 4.25)
    env.t = 4.25
    local c = lim:acquire(env)             -- a's slot is free again at 4.25
    assert.equal(4.25, c)
    assert.equal(1.25, lim:delay(4.25))    -- b counts until 5.5, c is held
    assert.same({}, env.sleeps)
  end)

  it("a slot never released counts as released `hold` seconds after it was taken", function()
    local lim = rl.new{ limit = 1, window = 1, margin = 0, hold = 30 }
    local env = fake_env(0)
    lim:acquire(env)                       -- a canceled caller: never released
    assert.equal(31, lim:acquire(env))     -- 30 s hold + the window, then free again
  end)

  it("delay(now, ahead): the wait of the waiter with `ahead` others before it", function()
    local l = rl.new{ limit = 2, window = 1, margin = 0 }
    assert.equals(0, l:delay(0, 1))           -- empty: a waiter ahead takes one of two slots
    assert.equals(0, l:delay(0, 5))           -- no slot counts: only the queue decides
    l:release(l:claim(0), 0)                  -- counts until 1
    l:release(l:claim(0.5), 0.5)              -- counts until 1.5
    assert.near(0.4, l:delay(0.6), 1e-9)
    assert.near(0.4, l:delay(0.6, 0), 1e-9)
    assert.near(0.9, l:delay(0.6, 1), 1e-9)   -- the second slot to free is its
    assert.near(0.9, l:delay(0.6, 5), 1e-9)   -- further back: at least the last one
    local h = rl.new{ limit = 1, window = 1, margin = 0 }
    h:claim(0)                                -- held: frees window after now at the earliest
    assert.near(1, h:delay(0.2, 1), 1e-9)
  end)

  it("a partial option keeps the given defaults for what it leaves out", function()
    local lim = rl.new({ limit = 5 }, { limit = 10, window = 1 })
    assert.equal(5, lim.limit); assert.equal(1, lim.window); assert.equal(0.05, lim.margin)
    assert.equal(10, rl.new(nil, { limit = 10, window = 1 }).limit)
    assert.has_error(function() rl.new({ windw = 1 }, { limit = 10, window = 1 }) end)
  end)

  it("fill uses the whole budget; reset forgets it", function()
    local lim = rl.new{ limit = 5, window = 2, margin = 0 }
    take(lim, 0)
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
