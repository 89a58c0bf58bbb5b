-- Issue 3 acceptance, part 6: validation against the mock. An invalid request is
-- returned as kind `validation` and never sent; lossless coercions arrive as the
-- API's types; strict = false lets unknown input fields through.
local kie = require "kie"
local mock = require "spec.support.mock"

local KEY = "sk-validation-spec-90b3"
local CREATE = "/api/v1/jobs/createTask"

local function character(input)
  local inp = { prompt = "a fox", reference_image_urls = { "https://example.com/r.png" } }
  for k, v in pairs(input or {}) do inp[k] = v end
  return { model = "ideogram/character", input = inp }
end

describe("reliability: validation before sending #integration", function()
  local m, c

  lazy_setup(function()
    m = mock.start{ api_key = KEY, pace = 0.05 }
    c = kie.new{ api_key = KEY, base_url = m.url, timeout = 5 }
  end)
  lazy_teardown(function()
    if c then c:close() end
    if m then m:stop() end
  end)

  -- the body the mock received for the last createTask
  local function last_body()
    local list = m:requests(CREATE)
    return mock.json.decode(list[#list].body)
  end

  local cases = {
    { "a missing prompt",
      { model = "ideogram/character", input = { reference_image_urls = { "https://e.com/r.png" } } },
      "input.prompt" },
    { "an empty reference list", character{ reference_image_urls = {} }, "input.reference_image_urls" },
    { "a style outside the enum", character{ style = "WATERCOLOR" }, "input.style" },
    { "num_images = 5", character{ num_images = 5 }, "input.num_images" },
    { "num_images = 1.5", character{ num_images = 1.5 }, "input.num_images" },
    { "a non-URL reference", character{ reference_image_urls = { "file:///etc/passwd" } },
      "input.reference_image_urls[1]" },
    { "a prompt over 5000 characters", character{ prompt = string.rep("é", 5001) }, "input.prompt" },
    { "an unknown input field (strict)", character{ colour = "red" }, "input.colour" },
    { "a misspelt top-level field", { model = "ideogram/character", inptu = {} }, "inptu" },
    { "an empty model", { model = "", input = {} }, "model" },
    { "a bad callBackUrl", { model = "ideogram/v3-reframe", callBackUrl = "not a url",
      input = { image_url = "https://e.com/a.png", image_size = "square" } }, "callBackUrl" },
    { "v3-reframe without image_size", { model = "ideogram/v3-reframe", input = { image_url = "https://e.com/a.png" } },
      "input.image_size" },
  }

  for _, case in ipairs(cases) do
    it("returns validation for " .. case[1] .. " and sends nothing", function()
      local before = m:count()
      local task, err = c:create_task(case[2])
      assert.is_nil(task)
      assert.equals("validation", err.kind)
      assert.equals(case[3], err.field)
      assert.is_truthy(err.message:find(case[3], 1, true), err.message)
      assert.is_false(err.retryable)
      assert.matches("^kie: validation: ", tostring(err))
      -- run returns it the same way (never raises), and still sends nothing
      local info, rerr = c:run(case[2])
      assert.is_nil(info)
      assert.equals("validation", rerr.kind)
      assert.equals(before, m:count())
    end)
  end

  it("sends num_images = 2 as the string \"2\" (and leaves the caller's table alone)", function()
    local req = character{ num_images = 2 }
    local task = assert(c:create_task(req))
    assert.is_string(task.taskId)
    local body = last_body()
    assert.equals("2", body.input.num_images)
    assert.equals(2, req.input.num_images)
    local info = assert(c:wait(task.taskId, { interval = 0.05, timeout = 5 }))
    assert.equals(2, #info.resultUrls)
    assert.equals("2", info.param.input.num_images)
  end)

  it("strict = false lets an unknown input field through (client option)", function()
    local loose = kie.new{ api_key = KEY, base_url = m.url, timeout = 5, strict = false }
    local task, err = loose:create_task(character{ future_option = "on" })
    assert.is_nil(err and tostring(err))
    assert.is_string(task.taskId)
    assert.equals("on", last_body().input.future_option)
    loose:close()
  end)

  it("strict = false lets an unknown input field through (per call), strict stays the default", function()
    local before = m:count(CREATE)
    local _, err = c:create_task(character{ future_option = "on" })
    assert.equals("validation", err.kind)
    assert.equals(before, m:count(CREATE))
    local task = assert(c:create_task(character{ future_option = "on" }, { strict = false }))
    assert.is_string(task.taskId)
    assert.equals(before + 1, m:count(CREATE))
    assert.equals("on", last_body().input.future_option)
    -- and through run
    local info = assert(c:run{ model = "ideogram/character", strict = false,
      input = { prompt = "x", reference_image_urls = { "https://e.com/r.png" }, future_option = 1 },
      wait = { interval = 0.05, timeout = 5 } })
    assert.equals("success", info.state)
    assert.equals(1, last_body().input.future_option)
  end)

  it("the server's own 422 is kind invalid (validation passed, the mock refused)", function()
    -- an unknown model gets only structural checks here; the mock requires nothing
    -- more for it either, so force the server-side refusal with a fault
    m:fault{ path = CREATE, fault = "status", status = 422, msg = "input.prompt is required" }
    local before = m:count(CREATE)
    local task, err = c:create_task(character())
    assert.is_nil(task)
    assert.equals("invalid", err.kind)
    assert.equals(422, err.status)
    assert.matches("input.prompt is required", err.message, 1, true)
    assert.equals(before + 1, m:count(CREATE))
  end)
end)
