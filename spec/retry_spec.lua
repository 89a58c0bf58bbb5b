-- Unit specs for kie.retry: no sockets, no real time (fake clock advanced by sleep).
local retry = require "kie.retry"
local errors = require "kie.errors"

local new_env = require "spec.support.fake_env"
local function fake_env(rnd, t0) return new_env(rnd, t0, 12345) end

local function err_of(kind, fields)
  return errors.new(kind, kind .. " happened", fields)
end

-- fn failing `n` times with a fresh error from make_err(i), then succeeding with results.
local function flaky(n, make_err, ...)
  local results = { n = select("#", ...), ... }
  local f = { calls = 0, times = {} }
  f.fn = function()
    f.calls = f.calls + 1
    if f.env then f.times[#f.times + 1] = f.env.now() end
    if f.calls <= n then return nil, make_err(f.calls) end
    return (table.unpack or unpack)(results, 1, results.n)
  end
  return f
end

local function always(kind, fields)
  return flaky(math.huge, function() return err_of(kind, fields) end)
end

local function pack(...) return { n = select("#", ...), ... } end

local function near(a, b) return math.abs(a - b) < 1e-9 end

describe("kie.retry.call", function()
  it("returns every result of a first-time success without sleeping", function()
    local env = fake_env(0.5)
    local f = flaky(0, nil, 1, nil, "three")
    local r = pack(retry.call(retry.policy(), env, f.fn))
    assert.equal(1, f.calls)
    assert.equal(3, r.n)
    assert.equal(1, r[1]); assert.is_nil(r[2]); assert.equal("three", r[3])
    assert.equal(0, #env.sleeps)
  end)

  it("retries a retryable error and returns the later success", function()
    local env = fake_env(0.5)
    local f = flaky(2, function() return err_of("server") end, "ok")
    local res, err = retry.call(retry.policy(), env, f.fn)
    assert.equal("ok", res); assert.is_nil(err)
    assert.equal(3, f.calls)
    assert.equal(2, #env.sleeps)
  end)

  it("makes max_retries + 1 attempts and reports them in err.attempts", function()
    for _, n in ipairs({ 0, 1, 4, 7 }) do
      local env = fake_env(0.5)
      local f = always("network")
      local res, err = retry.call(retry.policy{ max_retries = n }, env, f.fn)
      assert.is_nil(res)
      assert.equal("network", err.kind)
      assert.equal(n + 1, f.calls)
      assert.equal(n + 1, err.attempts)
      assert.equal(n, #env.sleeps)
    end
  end)

  it("defaults to 4 retries (5 attempts)", function()
    local env = fake_env(0.5)
    local f = always("server")
    local _, err = retry.call(nil, env, f.fn)
    assert.equal(5, f.calls)
    assert.equal(5, err.attempts)
  end)

  it("uses full-jitter exponential backoff: random * min(cap, base * 2^(k-1))", function()
    local cases = {
      { 0, { 0, 0, 0, 0 } },
      { 0.5, { 0.25, 0.5, 1, 2 } },
      { 0.999, { 0.4995, 0.999, 1.998, 3.996 } },
    }
    for _, c in ipairs(cases) do
      local env = fake_env(c[1])
      retry.call(retry.policy(), env, always("server").fn)
      assert.equal(#c[2], #env.sleeps)
      for i, want in ipairs(c[2]) do
        assert.is_true(near(want, env.sleeps[i]),
          ("random=%s retry %d: want %s got %s"):format(c[1], i, want, env.sleeps[i]))
      end
    end
  end)

  it("caps the backoff ceiling at cap", function()
    local env = fake_env(0.999)
    retry.call(retry.policy{ base = 1, cap = 3, max_retries = 6 }, env, always("server").fn)
    local want = { 0.999, 1.998, 2.997, 2.997, 2.997, 2.997 }
    assert.equal(#want, #env.sleeps)
    for i, w in ipairs(want) do assert.is_true(near(w, env.sleeps[i]), i .. ": " .. env.sleeps[i]) end
  end)

  it("keeps every seeded-random delay within [0, min(cap, base*2^(k-1)))", function()
    local seen_high = false
    for seed = 1, 50 do
      local env = fake_env{ seed = seed * 7919 }
      retry.call(retry.policy{ base = 0.5, cap = 5, max_retries = 8 }, env, always("timeout").fn)
      assert.equal(8, #env.sleeps)
      for k, d in ipairs(env.sleeps) do
        local ceiling = math.min(5, 0.5 * 2 ^ (k - 1))
        assert.is_true(d >= 0 and d < ceiling, ("seed %d retry %d: %s not in [0,%s)"):format(seed, k, d, ceiling))
        if d > ceiling / 2 then seen_high = true end
      end
    end
    assert.is_true(seen_high) -- the jitter actually spreads (not always at the bottom)
  end)

  it("waits at least Retry-After", function()
    local env = fake_env(0.5)
    local f = flaky(2, function() return err_of("server", { retry_after = 7 }) end, "ok")
    assert.equal("ok", retry.call(retry.policy(), env, f.fn))
    assert.same({ 7, 7 }, env.sleeps)
  end)

  it("keeps the backoff when it is longer than Retry-After", function()
    local env = fake_env(0.999)
    local f = flaky(4, function() return err_of("server", { retry_after = 1.5 }) end, "ok")
    retry.call(retry.policy(), env, f.fn)
    assert.equal(4, #env.sleeps)
    assert.is_true(near(1.5, env.sleeps[1]))
    assert.is_true(near(1.5, env.sleeps[2]))
    assert.is_true(near(1.998, env.sleeps[3]))
    assert.is_true(near(3.996, env.sleeps[4]))
  end)

  it("gives up instead of waiting a Retry-After beyond max_retry_after (default 60)", function()
    local env = fake_env(0.5)
    local f = always("rate_limited", { retry_after = 61 })
    local res, err = retry.call(retry.policy(), env, f.fn)
    assert.is_nil(res)
    assert.equal("rate_limited", err.kind)
    assert.equal(1, f.calls)
    assert.equal(1, err.attempts)
    assert.equal(0, #env.sleeps)

    local env2 = fake_env(0.5)
    local f2 = flaky(1, function() return err_of("rate_limited", { retry_after = 60 }) end, "ok")
    assert.equal("ok", retry.call(retry.policy(), env2, f2.fn))
    assert.same({ 60 }, env2.sleeps)
  end)

  it("honours a configured max_retry_after", function()
    local env = fake_env(0.5)
    local f = flaky(1, function() return err_of("maintenance", { retry_after = 90 }) end, "ok")
    assert.equal("ok", retry.call(retry.policy{ max_retry_after = 120 }, env, f.fn))
    assert.same({ 90 }, env.sleeps)

    local env2 = fake_env(0.5)
    local f2 = always("maintenance", { retry_after = 5 })
    retry.call(retry.policy{ max_retry_after = 4 }, env2, f2.fn)
    assert.equal(1, f2.calls)
  end)

  it("waits at least rate_limit_floor after a 429 without Retry-After", function()
    local env = fake_env(0)
    retry.call(retry.policy{ max_retries = 2 }, env, always("rate_limited").fn)
    assert.same({ 1, 1 }, env.sleeps)

    local env2 = fake_env(0)
    retry.call(retry.policy{ max_retries = 2, rate_limit_floor = 3 }, env2, always("rate_limited").fn)
    assert.same({ 3, 3 }, env2.sleeps)

    -- above the floor the jittered backoff stands
    local env3 = fake_env(0.999)
    retry.call(retry.policy{ max_retries = 3, base = 1 }, env3, always("rate_limited").fn)
    assert.is_true(near(1, env3.sleeps[1]))
    assert.is_true(near(1.998, env3.sleeps[2]))
    assert.is_true(near(3.996, env3.sleeps[3]))

    -- the floor is for 429 only
    local env4 = fake_env(0)
    retry.call(retry.policy{ max_retries = 2 }, env4, always("server").fn)
    assert.same({ 0, 0 }, env4.sleeps)
  end)

  it("never sleeps past the policy deadline and returns the last error", function()
    local env = fake_env(0.5, 100)
    local n = 0
    local fn = function() n = n + 1; return nil, err_of("server", { retry_after = 2, n = n }) end
    local res, err = retry.call(retry.policy{ deadline = 105, max_retries = 10 }, env, fn)
    assert.is_nil(res)
    assert.equal(3, n)              -- t=100, 102, 104; the next would land on 106 > 105
    assert.equal(3, err.n)          -- the last error, not the first
    assert.equal(3, err.attempts)
    assert.same({ 2, 2 }, env.sleeps)
    assert.is_true(env.t <= 105)
  end)

  it("may sleep exactly up to the deadline", function()
    local env = fake_env(0.5)
    local f = always("server", { retry_after = 2 })
    retry.call(retry.policy{ deadline = 4, max_retries = 10 }, env, f.fn)
    assert.equal(3, f.calls)
    assert.equal(4, env.t)
  end)

  it("takes the deadline as 5th argument, overriding the policy's", function()
    local env = fake_env(0.5)
    local f = always("server", { retry_after = 3 })
    retry.call(retry.policy{ deadline = 100, max_retries = 10 }, env, f.fn, nil, 7)
    assert.equal(3, f.calls) -- t=0, 3, 6
    assert.equal(6, env.t)
  end)

  it("stops at once on a non-retryable error", function()
    for _, kind in ipairs({ "auth", "credits", "not_found", "invalid", "validation", "protocol" }) do
      local env = fake_env(0.5)
      local f = always(kind)
      local res, err = retry.call(retry.policy(), env, f.fn)
      assert.is_nil(res)
      assert.equal(kind, err.kind)
      assert.equal(1, f.calls)
      assert.equal(1, err.attempts)
      assert.equal(0, #env.sleeps)
    end
    -- err.retryable is what counts, not the kind
    local env = fake_env(0.5)
    local f = always("network", { retryable = false })
    retry.call(retry.policy(), env, f.fn)
    assert.equal(1, f.calls)
  end)

  it("never retries unknown_outcome, whatever retryable says and whatever the policy", function()
    for _, idem in ipairs({ true, false }) do
      for _, flag in ipairs({ false, true }) do
        local env = fake_env(0.5)
        local f = always("unknown_outcome", { retryable = flag })
        local _, err = retry.call(retry.policy{ idempotent = idem }, env, f.fn)
        assert.equal("unknown_outcome", err.kind)
        assert.equal(1, f.calls)
        assert.equal(0, #env.sleeps)
      end
    end
  end)

  it("idempotent=false retries only rate_limited, maintenance, network and timeout marked retryable", function()
    local p = retry.policy{ idempotent = false, max_retries = 2 }
    local want = {
      { "rate_limited", nil, 3 }, { "maintenance", nil, 3 },
      { "network", true, 3 }, { "timeout", true, 3 },
      { "network", false, 1 }, { "timeout", false, 1 },
      { "server", true, 1 }, { "http", true, 1 },
    }
    for _, w in ipairs(want) do
      local f = always(w[1], { retryable = w[2] })
      retry.call(p, fake_env(0.5), f.fn)
      assert.equal(w[3], f.calls, w[1] .. " retryable=" .. tostring(w[2]))
    end
    -- the default (idempotent) policy retries server errors
    local f = always("server")
    retry.call(retry.policy{ max_retries = 2 }, fake_env(0.5), f.fn)
    assert.equal(3, f.calls)
  end)

  it("calls on_retry(err, attempt, delay) before each sleep", function()
    local env = fake_env(0.5)
    local calls = {}
    local f = flaky(3, function(i) return err_of("server", { i = i }) end, "ok")
    local res = retry.call(retry.policy(), env, f.fn, function(err, attempt, delay)
      calls[#calls + 1] = { i = err.i, attempt = attempt, delay = delay, t = env.t, slept = #env.sleeps }
    end)
    assert.equal("ok", res)
    assert.equal(3, #calls)
    for k, c in ipairs(calls) do
      assert.equal(k, c.i)
      assert.equal(k, c.attempt)
      assert.equal(env.sleeps[k], c.delay)
      assert.equal(k - 1, c.slept) -- before its sleep, after the previous ones
    end
    -- not called when the error is not retried
    local n = 0
    retry.call(retry.policy(), env, always("auth").fn, function() n = n + 1 end)
    assert.equal(0, n)
  end)

  it("passes a non-table error through untouched and does not retry it", function()
    local env = fake_env(0.5)
    local n = 0
    local res, err = retry.call(retry.policy(), env, function() n = n + 1; return nil, "boom" end)
    assert.is_nil(res); assert.equal("boom", err); assert.equal(1, n)
  end)

  it("gives plain core error tables the error metatable", function()
    local _, err = retry.call(retry.policy(), fake_env(0.5),
      function() return nil, { kind = "auth", message = "bad key", retryable = false } end)
    assert.is_true(errors.is(err, "auth"))
    assert.matches("bad key", tostring(err))
  end)

  it("accepts a plain options table as the policy", function()
    local f = always("server")
    retry.call({ max_retries = 1 }, fake_env(0.5), f.fn)
    assert.equal(2, f.calls)
  end)
end)

describe("kie.retry.policy", function()
  it("has the documented defaults", function()
    local p = retry.policy()
    assert.equal(4, p.max_retries); assert.equal(0.5, p.base); assert.equal(20, p.cap)
    assert.equal(true, p.idempotent); assert.equal(60, p.max_retry_after)
    assert.equal(1, p.rate_limit_floor); assert.is_nil(p.deadline)
  end)

  it("raises on unknown options and bad values", function()
    assert.has_error(function() retry.policy{ max_retry = 3 } end)
    assert.has_error(function() retry.policy{ max_retries = -1 } end)
    assert.has_error(function() retry.policy{ max_retries = 1.5 } end)
    assert.has_error(function() retry.policy{ base = "1" } end)
    assert.has_error(function() retry.policy{ cap = 0 / 0 } end)
    assert.has_error(function() retry.policy{ idempotent = "no" } end)
    assert.has_error(function() retry.policy{ deadline = "soon" } end)
    assert.has_error(function() retry.policy(5) end)
    assert.has_no_error(function() retry.policy{ max_retries = 0, base = 0, cap = 0, deadline = 10 } end)
  end)

  it("raises when env lacks what is needed", function()
    local p = retry.policy{ deadline = 5 }
    local no_now = { sleep = function() end, random = math.random }
    assert.has_error(function() retry.call(p, no_now, function() return 1 end) end)
    assert.has_error(function() retry.call(retry.policy(), { sleep = function() end }, function() return 1 end) end)
    assert.has_error(function() retry.call(retry.policy(), fake_env(0), "not a function") end)
  end)
end)
