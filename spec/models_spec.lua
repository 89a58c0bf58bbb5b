-- kie.models: request validation (pure Lua, no network, no C core).
local models = require "kie.models"
local errors = require "kie.errors"

local CB = "https://your-domain.com/api/callback"
local IMG = "https://file.aiquickdraw.com/custom-page/akr/section-images/"

-- The published example bodies of kie-api.md §5 (prompts shortened).
local function examples()
  return {
    ["ideogram/character"] = {
      model = "ideogram/character",
      callBackUrl = CB,
      input = {
        prompt = "A fisherman mending nets on a pier at dawn",
        reference_image_urls = { IMG .. "1755767145415pvz49dpi.webp" },
        rendering_speed = "BALANCED",
        style = "AUTO",
        expand_prompt = true,
        num_images = "1",
        image_size = "square_hd",
        negative_prompt = "",
      },
    },
    ["ideogram/character-edit"] = {
      model = "ideogram/character-edit",
      callBackUrl = CB,
      input = {
        prompt = "A red scarf around the neck",
        image_url = IMG .. "17557680349256sa0lk53.webp",
        mask_url = IMG .. "1755768046014ftgvma28.webp",
        reference_image_urls = { IMG .. "1755768064644jodsmfhq.webp" },
        rendering_speed = "BALANCED",
        style = "AUTO",
        expand_prompt = true,
        num_images = "1",
        seed = 42,
      },
    },
    ["ideogram/character-remix"] = {
      model = "ideogram/character-remix",
      callBackUrl = CB,
      input = {
        prompt = "The same character as a watercolour painting",
        image_url = IMG .. "1755768466167d0tiuc6e.webp",
        reference_image_urls = { IMG .. "1755768479029sugx0g6f.webp" },
        rendering_speed = "BALANCED",
        style = "AUTO",
        expand_prompt = true,
        image_size = "square_hd",
        num_images = "1",
        strength = 0.8,
        negative_prompt = "",
        image_urls = {},
        reference_mask_urls = "",
      },
    },
    ["ideogram/v3-reframe"] = {
      model = "ideogram/v3-reframe",
      callBackUrl = CB,
      input = {
        image_url = IMG .. "1757168087001amxesd6e.webp",
        image_size = "square_hd",
        rendering_speed = "BALANCED",
        style = "AUTO",
        num_images = "1",
        seed = 0,
      },
    },
  }
end

local function example(model) return examples()[model] end

local MODEL_NAMES = {
  "ideogram/character", "ideogram/character-edit", "ideogram/character-remix", "ideogram/v3-reframe",
}

-- Example of `model` with input fields overridden (DELETE removes a field).
local DELETE = {}
local function with(model, fields)
  local req = example(model)
  for k, v in pairs(fields or {}) do
    if v == DELETE then req.input[k] = nil else req.input[k] = v end
  end
  return req
end

local function deep_equal(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function assert_ok(req, opts)
  local out, err = models.validate(req, opts)
  assert.is_nil(err and tostring(err))
  assert.is_table(out)
  return out
end

-- Asserts a validation failure naming `field`, with `fragment` (plain text) in the message.
local function assert_fails(req, field, fragment, opts)
  local out, err = models.validate(req, opts)
  assert.is_nil(out)
  assert.is_true(errors.is(err, "validation"), "expected a validation error, got " .. tostring(err))
  assert.are.equal(field, err.field)
  assert.are.equal(field .. ": ", err.message:sub(1, #field + 2))
  if fragment then
    assert.is_truthy(err.message:find(fragment, 1, true),
      "message " .. string.format("%q", err.message) .. " lacks " .. string.format("%q", fragment))
  end
  assert.is_false(err.retryable)
  return err
end

describe("kie.models", function()
  describe("published examples", function()
    for _, name in ipairs(MODEL_NAMES) do
      it("accepts the " .. name .. " example unchanged", function()
        local req = example(name)
        local out = assert_ok(req)
        assert.are.equal(name, out.model)
        assert.are.equal(CB, out.callBackUrl)
        assert.are.equal("1", out.input.num_images)
        assert.is_true(deep_equal(req, out))
        assert.are_not.equal(req, out)
        assert.are_not.equal(req.input, out.input)
      end)

      it("converts a whole-number num_images to a string for " .. name, function()
        local out = assert_ok(with(name, { num_images = 2 }))
        assert.are.equal("2", out.input.num_images)
        assert.are.equal("string", type(out.input.num_images))
      end)
    end

    it("accepts the example without callBackUrl", function()
      local req = example("ideogram/character")
      req.callBackUrl = nil
      local out = assert_ok(req)
      assert.is_nil(out.callBackUrl)
    end)
  end)

  describe("required fields", function()
    for _, name in ipairs(MODEL_NAMES) do
      for _, spec in ipairs(models.schemas[name].fields) do
        if spec.required then
          it(name .. " requires " .. spec.name, function()
            assert_fails(with(name, { [spec.name] = DELETE }), "input." .. spec.name, "is required for " .. name)
          end)
        end
      end
    end

    it("knows which fields are required", function()
      local function required(name)
        local list = {}
        for _, spec in ipairs(models.schemas[name].fields) do
          if spec.required then list[#list + 1] = spec.name end
        end
        return table.concat(list, ",")
      end
      assert.are.equal("prompt,reference_image_urls", required("ideogram/character"))
      assert.are.equal("prompt,image_url,mask_url,reference_image_urls", required("ideogram/character-edit"))
      assert.are.equal("prompt,image_url,reference_image_urls", required("ideogram/character-remix"))
      assert.are.equal("image_url,image_size", required("ideogram/v3-reframe"))
    end)

    it("rejects an empty prompt", function()
      assert_fails(with("ideogram/character", { prompt = "" }), "input.prompt", "must not be empty")
    end)

    it("rejects an empty reference_image_urls", function()
      assert_fails(with("ideogram/character", { reference_image_urls = {} }), "input.reference_image_urls",
        "needs at least 1 element")
    end)
  end)

  describe("enums", function()
    for _, name in ipairs(MODEL_NAMES) do
      for _, spec in ipairs(models.schemas[name].fields) do
        if spec.enum then
          it(name .. " rejects a wrong " .. spec.name, function()
            assert_fails(with(name, { [spec.name] = "NOPE" }), "input." .. spec.name,
              '"NOPE" is not one of ' .. table.concat(spec.enum, ", "))
          end)
          it(name .. " accepts every " .. spec.name, function()
            for _, v in ipairs(spec.enum) do
              assert.are.equal(v, assert_ok(with(name, { [spec.name] = v })).input[spec.name])
            end
          end)
        end
      end
    end

    it("words the message as documented", function()
      local err = assert_fails(with("ideogram/character", { style = "CARTOON" }), "input.style")
      assert.are.equal('input.style: "CARTOON" is not one of AUTO, REALISTIC, FICTION', err.message)
    end)

    it("has the v3-reframe style set only on v3-reframe", function()
      assert_ok(with("ideogram/v3-reframe", { style = "DESIGN" }))
      assert_fails(with("ideogram/v3-reframe", { style = "FICTION" }), "input.style",
        "not one of AUTO, GENERAL, REALISTIC, DESIGN")
      assert_fails(with("ideogram/character-remix", { style = "GENERAL" }), "input.style",
        "not one of AUTO, REALISTIC, FICTION")
    end)

    it("is case-sensitive but hints at the right case", function()
      assert_fails(with("ideogram/character", { rendering_speed = "turbo" }), "input.rendering_speed",
        'did you mean "TURBO"?')
    end)

    it("rejects a non-string enum value", function()
      assert_fails(with("ideogram/character", { image_size = 1 }), "input.image_size", "must be a string, got number")
    end)
  end)

  describe("lengths", function()
    local A5000, A5001 = string.rep("a", 5000), string.rep("a", 5001)

    it("accepts a 5000-character prompt and rejects 5001", function()
      assert_ok(with("ideogram/character", { prompt = A5000 }))
      assert_fails(with("ideogram/character", { prompt = A5001 }), "input.prompt",
        "is 5001 characters long; the maximum is 5000")
      assert_fails(with("ideogram/character-edit", { prompt = A5001 }), "input.prompt", "maximum is 5000")
      assert_fails(with("ideogram/character-remix", { prompt = A5001 }), "input.prompt", "maximum is 5000")
    end)

    it("limits negative_prompt to 5000 for character", function()
      assert_ok(with("ideogram/character", { negative_prompt = A5000 }))
      assert_fails(with("ideogram/character", { negative_prompt = A5001 }), "input.negative_prompt",
        "maximum is 5000")
    end)

    it("limits negative_prompt to 500 for character-remix", function()
      assert_ok(with("ideogram/character-remix", { negative_prompt = string.rep("n", 500) }))
      assert_fails(with("ideogram/character-remix", { negative_prompt = string.rep("n", 501) }),
        "input.negative_prompt", "is 501 characters long; the maximum is 500")
    end)

    it("counts a multibyte character as one", function()
      for _, ch in ipairs({ "\195\169", "\230\188\162", "\240\159\152\128" }) do -- é, 漢, 😀
        local out = assert_ok(with("ideogram/character", { prompt = string.rep(ch, 5000) }))
        assert.are.equal(5000 * #ch, #out.input.prompt)
        assert_fails(with("ideogram/character", { prompt = string.rep(ch, 5001) }), "input.prompt",
          "is 5001 characters long")
      end
      assert_ok(with("ideogram/character-remix", { negative_prompt = string.rep("\195\169", 500) }))
      assert_fails(with("ideogram/character-remix", { negative_prompt = string.rep("\195\169", 501) }),
        "input.negative_prompt", "is 501 characters long")
    end)

    it("rejects invalid UTF-8", function()
      for _, bad in ipairs({ "abc\255", "\195", "\192\175", "\237\160\128", "\244\144\128\128", "a\128b" }) do
        assert_fails(with("ideogram/character", { prompt = bad }), "input.prompt", "is not valid UTF-8")
      end
    end)

    it("exposes the UTF-8 counter", function()
      assert.are.equal(0, models.utf8_len(""))
      assert.are.equal(3, models.utf8_len("a\195\169\240\159\152\128"))
      local n, at = models.utf8_len("ab\255")
      assert.is_nil(n)
      assert.are.equal(3, at)
    end)

    it("rejects a prompt that is not a string", function()
      assert_fails(with("ideogram/character", { prompt = 42 }), "input.prompt", "must be a string, got number")
    end)
  end)

  describe("num_images", function()
    it("accepts 1-4 as strings and whole numbers", function()
      for i = 1, 4 do
        assert.are.equal(tostring(i), assert_ok(with("ideogram/character", { num_images = i })).input.num_images)
        assert.are.equal(tostring(i),
          assert_ok(with("ideogram/character", { num_images = tostring(i) })).input.num_images)
      end
      assert.are.equal("3", assert_ok(with("ideogram/character", { num_images = 3.0 })).input.num_images)
    end)

    it("rejects out-of-range, fractional and non-numeric values", function()
      local cases = { { 0, "0 is not one of 1, 2, 3, 4" }, { 5, "5 is not one of" }, { "5", '"5" is not one of' },
        { 2.5, "2.5 is not one of" }, { "two", '"two" is not one of' }, { "0", '"0" is not one of' },
        { 0 / 0, "is not one of" }, { math.huge, "is not one of" }, { true, "must be a string, got boolean" } }
      for _, case in ipairs(cases) do
        assert_fails(with("ideogram/character", { num_images = case[1] }), "input.num_images", case[2])
      end
    end)
  end)

  describe("numbers", function()
    it("bounds strength to 0.1-1", function()
      for _, v in ipairs({ 0.1, 0.5, 1 }) do
        assert.are.equal(v, assert_ok(with("ideogram/character-remix", { strength = v })).input.strength)
      end
      assert_fails(with("ideogram/character-remix", { strength = 0.05 }), "input.strength",
        "must be between 0.1 and 1, got 0.05")
      assert_fails(with("ideogram/character-remix", { strength = 1.1 }), "input.strength", "got 1.1")
      assert_fails(with("ideogram/character-remix", { strength = "0.5" }), "input.strength",
        "must be a number, got string")
      assert_fails(with("ideogram/character-remix", { strength = 0 / 0 }), "input.strength", "must be a number")
    end)

    it("takes strength only on character-remix", function()
      assert_fails(with("ideogram/character", { strength = 0.5 }), "input.strength",
        "unknown field for ideogram/character")
    end)

    it("wants seed to be a whole number on every model", function()
      for _, name in ipairs(MODEL_NAMES) do
        assert.are.equal(7, assert_ok(with(name, { seed = 7 })).input.seed)
        assert_fails(with(name, { seed = 1.5 }), "input.seed", "must be a whole number, got 1.5")
        assert_fails(with(name, { seed = "42" }), "input.seed", "must be a whole number, got string")
        assert_fails(with(name, { seed = math.huge }), "input.seed", "must be a whole number")
      end
      assert.are.equal(0, assert_ok(with("ideogram/v3-reframe", { seed = 0 })).input.seed)
    end)

    it("wants expand_prompt to be a boolean", function()
      assert.is_false(assert_ok(with("ideogram/character", { expand_prompt = false })).input.expand_prompt)
      assert_fails(with("ideogram/character", { expand_prompt = "yes" }), "input.expand_prompt",
        "must be a boolean (true or false), got string")
    end)
  end)

  describe("URLs", function()
    local bad = {
      { "ftp://example.com/a.png", "scheme ftp is not http or https" },
      { "not a url", "contains whitespace" },
      { "example.com/a.png", "no scheme://" },
      { "https://", "no host" },
      { "https:///a.png", "no host" },
      { "http://:8080/a.png", "no host" },
      { "http://exa mple.com/a.png", "contains whitespace" },
      { "http://example.com:port/a.png", "bad port" },
      { "http://exa<mple.com/", "bad host" },
      { "", "empty" },
    }
    local good = { "http://localhost:8080/a.png", "HTTPS://Example.com", "https://user:pw@host.example/x?y=1#z",
      "https://[::1]:443/a", "https://host/a%20b.png" }

    it("checks image_url and mask_url", function()
      for _, case in ipairs(bad) do
        assert_fails(with("ideogram/character-edit", { image_url = case[1] }), "input.image_url", case[2])
        assert_fails(with("ideogram/character-edit", { mask_url = case[1] }), "input.mask_url", "is not an http(s) URL")
      end
      for _, url in ipairs(good) do
        assert.are.equal(url, assert_ok(with("ideogram/character-edit", { image_url = url })).input.image_url)
      end
      assert_fails(with("ideogram/v3-reframe", { image_url = 5 }), "input.image_url", "must be a string, got number")
    end)

    it("checks each element of the URL arrays", function()
      assert_fails(with("ideogram/character", { reference_image_urls = { IMG .. "a.png", "ftp://x/y" } }),
        "input.reference_image_urls[2]", '"ftp://x/y" is not an http(s) URL')
      assert_fails(with("ideogram/character-remix", { image_urls = { "not a url" } }), "input.image_urls[1]",
        "is not an http(s) URL")
      assert_fails(with("ideogram/character-remix", { image_urls = { IMG .. "a.png", 3 } }), "input.image_urls[2]",
        "must be a string, got number")
      local out = assert_ok(with("ideogram/character-remix", { image_urls = { IMG .. "a.png", IMG .. "b.png" } }))
      assert.are.same({ IMG .. "a.png", IMG .. "b.png" }, out.input.image_urls)
    end)

    it("checks callBackUrl", function()
      local req = example("ideogram/character")
      req.callBackUrl = "ftp://example.com/cb"
      assert_fails(req, "callBackUrl", 'callBackUrl: "ftp://example.com/cb" is not an http(s) URL')
      req.callBackUrl = "https://"
      assert_fails(req, "callBackUrl", "no host")
      req.callBackUrl = 12
      assert_fails(req, "callBackUrl", "must be a string, got number")
    end)

    it("takes reference_mask_urls as a string: empty or a URL", function()
      local out = assert_ok(with("ideogram/character-remix", { reference_mask_urls = "" }))
      assert.are.equal("", out.input.reference_mask_urls)
      assert_ok(with("ideogram/character-remix", { reference_mask_urls = IMG .. "m.png" }))
      assert_fails(with("ideogram/character-remix", { reference_mask_urls = "mask" }), "input.reference_mask_urls",
        "is not an http(s) URL")
      assert_fails(with("ideogram/character-remix", { reference_mask_urls = { IMG .. "m.png" } }),
        "input.reference_mask_urls", "must be a string, got table")
    end)
  end)

  describe("arrays", function()
    it("rejects a string where an array is expected", function()
      assert_fails(with("ideogram/character", { reference_image_urls = IMG .. "a.png" }), "input.reference_image_urls",
        "must be an array (a Lua sequence) of URLs, got string")
      assert_fails(with("ideogram/character-remix", { image_urls = IMG .. "a.png" }), "input.image_urls",
        "must be an array")
    end)

    it("rejects a map or a sparse table", function()
      assert_fails(with("ideogram/character", { reference_image_urls = { first = IMG .. "a.png" } }),
        "input.reference_image_urls", "got a table with string keys")
      assert_fails(with("ideogram/character", { reference_image_urls = { IMG .. "a.png", x = IMG .. "b.png" } }),
        "input.reference_image_urls", "mixing string keys and array indices")
      local sparse = { [1] = IMG .. "a.png", [3] = IMG .. "c.png" }
      assert_fails(with("ideogram/character", { reference_image_urls = sparse }),
        "input.reference_image_urls", "index 2 is missing")
      assert_fails(with("ideogram/character", { reference_image_urls = { [0] = IMG .. "a.png" } }),
        "input.reference_image_urls", "key 0")
    end)

    it("accepts an empty optional array", function()
      local out = assert_ok(with("ideogram/character-remix", { image_urls = {} }))
      assert.are.same({}, out.input.image_urls)
    end)
  end)

  describe("unknown fields", function()
    it("suggests the closest known field", function()
      local req = with("ideogram/character",
        { reference_image_urls = DELETE, refrence_image_urls = { IMG .. "a.png" } })
      local err = assert_fails(req, "input.refrence_image_urls", 'did you mean "reference_image_urls"?')
      assert.are.equal("reference_image_urls", err.suggestion)
      assert_fails(with("ideogram/character", { negativePrompt = "x" }), "input.negativePrompt",
        'did you mean "negative_prompt"?')
      assert_fails(with("ideogram/character", { sede = 1 }), "input.sede", 'did you mean "seed"?')
      assert_fails(with("ideogram/character-edit", { numImages = "2" }), "input.numImages",
        'did you mean "num_images"?')
    end)

    it("lists the known fields when nothing is close", function()
      local err = assert_fails(with("ideogram/v3-reframe", { aspect_ratio = "16:9" }), "input.aspect_ratio",
        "unknown field for ideogram/v3-reframe (known fields: image_url, image_size, rendering_speed, style, "
        .. "num_images, seed)")
      assert.is_nil(err.suggestion)
    end)

    it("rejects fields of another model", function()
      assert_fails(with("ideogram/character-edit", { image_size = "square" }), "input.image_size",
        "unknown field for ideogram/character-edit")
      assert_fails(with("ideogram/v3-reframe", { prompt = "x" }), "input.prompt",
        "unknown field for ideogram/v3-reframe")
    end)

    it("passes unknown fields through untouched with strict = false", function()
      local extra = { nested = { 1, 2, { deep = "x" } }, flag = false }
      local out = assert_ok(with("ideogram/character", { future_option = extra, another = "v" }), { strict = false })
      assert.are.same(extra, out.input.future_option)
      assert.are_not.equal(extra, out.input.future_option)
      assert.are.equal("v", out.input.another)
      -- known fields are still checked
      assert_fails(with("ideogram/character", { future_option = 1, style = "CARTOON" }), "input.style",
        "is not one of", { strict = false })
      -- and unknown ones must still be encodable
      assert_fails(with("ideogram/character", { future_option = { f = print } }), "input.future_option.f",
        "a function cannot be encoded as JSON", { strict = false })
    end)

    it("is strict by default and with strict = true", function()
      assert_fails(with("ideogram/character", { extra = 1 }), "input.extra", "unknown field", { strict = true })
      assert_fails(with("ideogram/character", { extra = 1 }), "input.extra", "unknown field", {})
    end)

    it("rejects unknown top-level keys", function()
      local req = example("ideogram/character")
      req.callBackUrl = nil
      req.callbackUrl = CB
      local err = assert_fails(req, "callbackUrl", 'unknown top-level field; did you mean "callBackUrl"?')
      assert.are.equal("callBackUrl", err.suggestion)
      req = example("ideogram/character")
      req.priority = 1
      assert_fails(req, "priority", "unknown top-level field (expected model, callBackUrl, input)")
      req = example("ideogram/character")
      req[1] = "x"
      assert_fails(req, "[1]", "unknown top-level key of type number")
      req = example("ideogram/character")
      req.extra = 1
      assert_fails(req, "extra", "unknown top-level field", { strict = false })
    end)
  end)

  describe("unknown models", function()
    it("pass through with structural checks only", function()
      local req = { model = "flux/kontext", callBackUrl = CB,
        input = { prompt = "", anything = { 1, 2, 3 }, nested = { a = { b = true } }, n = 2.5 } }
      local out = assert_ok(req)
      assert.is_true(deep_equal(req, out))
      assert.are_not.equal(req.input.nested, out.input.nested)
      assert.are.equal(2.5, out.input.n)
      assert.is_false(models.is_known("flux/kontext"))
    end)

    it("still require a non-empty model string", function()
      assert_fails({ input = {} }, "model", "is required")
      assert_fails({ model = "", input = {} }, "model", "must not be empty")
      assert_fails({ model = 7, input = {} }, "model", "must be a string, got number")
    end)

    it("still require input to be an object", function()
      assert_fails({ model = "x/y" }, "input", "is required")
      assert_fails({ model = "x/y", input = "prompt" }, "input", "must be a table, got string")
      assert_fails({ model = "x/y", input = { "a", "b" } }, "input",
        "must be an object (a table with string keys), got an array")
      assert_fails({ model = "x/y", input = { a = 1, [2] = 2 } }, "input", "mixing string keys and array indices")
      assert_fails({ model = "ideogram/character", input = { 1 } }, "input", "got an array")
    end)

    it("send an empty input as a JSON object", function()
      local out = assert_ok({ model = "x/y", input = {} })
      assert.are.same({}, out.input)
      assert.are.equal("object", getmetatable(out.input).__jsontype)
    end)

    it("still check callBackUrl and top-level keys", function()
      assert_fails({ model = "x/y", input = {}, callBackUrl = "not a url" }, "callBackUrl", "is not an http(s) URL")
      assert_fails({ model = "x/y", input = {}, webhook = CB }, "webhook", "unknown top-level field")
    end)
  end)

  describe("JSON encodability", function()
    local function fails_in(value, field, fragment)
      return assert_fails({ model = "x/y", input = { v = value } }, field, fragment)
    end

    it("rejects functions, coroutines and userdata, naming the path", function()
      fails_in(print, "input.v", "a function cannot be encoded as JSON")
      fails_in({ a = { b = { 1, coroutine.create(function() end) } } }, "input.v.a.b[2]",
        "a thread cannot be encoded as JSON")
      fails_in({ io.stdout }, "input.v[1]", "a userdata cannot be encoded as JSON")
    end)

    it("rejects NaN and infinities", function()
      fails_in(0 / 0, "input.v", "is not a finite number")
      fails_in({ x = math.huge }, "input.v.x", "is not a finite number")
      fails_in({ -math.huge }, "input.v[1]", "is not a finite number")
    end)

    it("rejects tables JSON cannot represent", function()
      fails_in({ 1, 2, k = 3 }, "input.v", "mixing string keys and array indices")
      fails_in({ [1] = 1, [3] = 3 }, "input.v", "index 2 is missing")
      fails_in({ [true] = 1 }, "input.v", "a key of type boolean")
      fails_in({ [1.5] = 1 }, "input.v", "key 1.5")
    end)

    it("rejects cycles and excessive depth", function()
      local t = { a = {} }
      t.a.back = t
      fails_in(t, "input.v.a.back", "reference cycle")
      local deep = {}
      local cur = deep
      for _ = 1, 70 do cur.x = {}; cur = cur.x end
      -- the request is level 1, input 2, v 3: the 65th level is v followed by 62 x's
      fails_in(deep, "input.v" .. string.rep(".x", 62), "is nested deeper than 64 levels")
      local shared = { 1 }
      assert_ok({ model = "x/y", input = { a = shared, b = shared } })
    end)

    it("rejects invalid UTF-8 in strings and keys", function()
      fails_in("\255", "input.v", "is not valid UTF-8")
      fails_in({ ["k\255"] = 1 }, "input.v", "is not valid UTF-8")
    end)

    it("rejects non-encodable values in known fields too", function()
      assert_fails(with("ideogram/character", { prompt = print }), "input.prompt", "must be a string, got function")
      assert_fails(with("ideogram/character", { seed = 0 / 0 }), "input.seed", "must be a whole number")
    end)

    it("accepts cjson.null when lua-cjson is present", function()
      local ok, cjson = pcall(require, "cjson")
      if not ok then return pending("lua-cjson is not installed") end
      local out = assert_ok({ model = "x/y", input = { v = cjson.null } })
      assert.are.equal(cjson.null, out.input.v)
      assert_fails(with("ideogram/character", { style = cjson.null }), "input.style", "must be a string, got null")
    end)

    it("keeps a __jsontype marker", function()
      local obj = setmetatable({}, { __jsontype = "object" })
      local out = assert_ok({ model = "x/y", input = { opts = obj } })
      assert.are.equal("object", getmetatable(out.input.opts).__jsontype)
    end)
  end)

  describe("copies", function()
    local function snapshot(t)
      if type(t) ~= "table" then return t end
      local c = {}
      for k, v in pairs(t) do c[k] = snapshot(v) end
      return c
    end

    it("never mutates the caller's table", function()
      local req = with("ideogram/character-remix", { num_images = 3, image_urls = { IMG .. "s.png" } })
      local before = snapshot(req)
      local refs, urls = req.input.reference_image_urls, req.input.image_urls
      local out = assert_ok(req)
      assert.is_true(deep_equal(before, req))
      assert.are.equal(3, req.input.num_images)
      assert.are.equal("3", out.input.num_images)
      assert.are_not.equal(refs, out.input.reference_image_urls)
      assert.are_not.equal(urls, out.input.image_urls)
      assert.are.equal(refs, req.input.reference_image_urls)
      out.input.reference_image_urls[1] = "changed"
      assert.are_not.equal("changed", req.input.reference_image_urls[1])
    end)

    it("does not mutate on failure either", function()
      local req = with("ideogram/character", { num_images = 2, style = "bad" })
      local before = snapshot(req)
      assert_fails(req, "input.style")
      assert.is_true(deep_equal(before, req))
    end)
  end)

  describe("programmer errors", function()
    it("raises when the request is not a table", function()
      for _, bad in ipairs({ "ideogram/character", 42, true, print }) do
        local ok, msg = pcall(models.validate, bad)
        assert.is_false(ok)
        assert.is_truthy(tostring(msg):find("request must be a table, got " .. type(bad), 1, true))
      end
      assert.has_error(function() models.validate() end)
    end)

    it("raises on malformed opts", function()
      local req = example("ideogram/character")
      assert.has_error(function() models.validate(req, "strict") end)
      assert.has_error(function() models.validate(req, { strcit = false }) end)
      assert.has_error(function() models.validate(req, { strict = "no" }) end)
    end)
  end)

  describe("schemas", function()
    it("lists the four known models", function()
      assert.are.same(MODEL_NAMES, models.list())
      for _, name in ipairs(MODEL_NAMES) do
        assert.is_true(models.is_known(name))
        local sch = models.schemas[name]
        assert.is_string(sch.description)
        assert.is_true(#sch.fields > 0)
        for _, spec in ipairs(sch.fields) do
          assert.is_string(spec.name)
          assert.is_truthy(({ string = 1, integer = 1, number = 1, boolean = 1, array = 1 })[spec.type])
        end
      end
      assert.is_false(models.is_known("ideogram/v3"))
      assert.is_false(models.is_known(nil))
    end)

    it("describes limits per model", function()
      local function field(model, name)
        for _, spec in ipairs(models.schemas[model].fields) do
          if spec.name == name then return spec end
        end
      end
      assert.are.equal(500, field("ideogram/character-remix", "negative_prompt").max_length)
      assert.are.equal(5000, field("ideogram/character", "negative_prompt").max_length)
      assert.are.equal(0.1, field("ideogram/character-remix", "strength").min)
      assert.are.same({ "AUTO", "GENERAL", "REALISTIC", "DESIGN" }, field("ideogram/v3-reframe", "style").enum)
      assert.are.equal(6, #field("ideogram/character", "image_size").enum)
      assert.is_nil(field("ideogram/character-edit", "image_size"))
    end)

    it("validates a model added to the schemas", function()
      models.schemas["test/added"] = { description = "test", fields = {
        { name = "text", type = "string", required = true, max_length = 3 } } }
      finally(function() models.schemas["test/added"] = nil end)
      assert_ok({ model = "test/added", input = { text = "abc" } })
      assert_fails({ model = "test/added", input = { text = "abcd" } }, "input.text", "maximum is 3")
      assert_fails({ model = "test/added", input = { txt = "a" } }, "input.txt", 'did you mean "text"?')
    end)
  end)
end)
