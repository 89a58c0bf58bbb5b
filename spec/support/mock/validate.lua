-- createTask body validation, following kie-api.md sections 4 and 5.
-- validate.request(body_table) -> true | nil, message naming the field.

local cjson = require "cjson.safe"

local M = {}

local ENUMS = {
  rendering_speed = { "TURBO", "BALANCED", "QUALITY" },
  style = { "AUTO", "REALISTIC", "FICTION" },
  reframe_style = { "AUTO", "GENERAL", "REALISTIC", "DESIGN" },
  image_size = { "square", "square_hd", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9" },
  num_images = { "1", "2", "3", "4" },
}

local function utf8_len(s)
  local _, cont = s:gsub("[\128-\191]", "")
  return #s - cont
end

function M.is_url(v)
  return type(v) == "string" and v:match("^[hH][tT][tT][pP][sS]?://[^%s/?#]+[^%s]*$") ~= nil
end

function M.is_array(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do
    if t[i] == nil then return false end
  end
  return true, n
end

function M.is_object(t)
  if type(t) ~= "table" then return false end
  if next(t) == nil then return true end   -- {} (cjson cannot tell [] apart)
  return t[1] == nil
end

local function enum_text(list)
  return table.concat(list, ", ")
end

-- field checkers: return nil when fine, else the message
local check = {}

function check.string(name, v, spec)
  if type(v) ~= "string" then return name .. " must be a string" end
  if spec.max and utf8_len(v) > spec.max then
    return name .. " must be at most " .. spec.max .. " characters"
  end
end

function check.url(name, v)
  if not M.is_url(v) then return name .. " must be an http(s) URL string" end
end

function check.url_array(name, v, spec)
  local ok, n = M.is_array(v)
  if not ok then return name .. " must be an array of URL strings" end
  if spec.required and n == 0 then return name .. " must contain at least one URL" end
  for i = 1, n do
    if not M.is_url(v[i]) then
      return name .. "[" .. i .. "] must be an http(s) URL string"
    end
  end
end

function check.url_or_empty(name, v)
  if type(v) ~= "string" then return name .. " must be a string" end
  if v ~= "" and not M.is_url(v) then return name .. " must be an http(s) URL string or empty" end
end

function check.enum(name, v, spec)
  local list = ENUMS[spec.enum]
  if type(v) ~= "string" then
    if spec.enum == "num_images" then
      return name .. ' must be a string, one of "1", "2", "3", "4"'
    end
    return name .. " must be a string, one of " .. enum_text(list)
  end
  for _, allowed in ipairs(list) do
    if v == allowed then return nil end
  end
  return name .. " must be one of " .. enum_text(list)
end

function check.boolean(name, v)
  if type(v) ~= "boolean" then return name .. " must be a boolean" end
end

function check.number(name, v, spec)
  if type(v) ~= "number" or v ~= v then return name .. " must be a number" end
  if spec.min and v < spec.min - 1e-9 then return name .. " must be at least " .. spec.min end
  if spec.max and v > spec.max + 1e-9 then return name .. " must be at most " .. spec.max end
end

local function f(name, kind, opts)
  opts = opts or {}
  opts.name, opts.kind = name, kind
  return opts
end

local COMMON_TAIL = {
  f("rendering_speed", "enum", { enum = "rendering_speed" }),
  f("style", "enum", { enum = "style" }),
  f("expand_prompt", "boolean"),
  f("num_images", "enum", { enum = "num_images" }),
}

local function concat(...)
  local out = {}
  for _, list in ipairs({ ... }) do
    for _, v in ipairs(list) do out[#out + 1] = v end
  end
  return out
end

M.MODELS = {
  ["ideogram/character"] = concat({
    f("prompt", "string", { required = true, max = 5000 }),
    f("reference_image_urls", "url_array", { required = true }),
  }, COMMON_TAIL, {
    f("image_size", "enum", { enum = "image_size" }),
    f("seed", "number"),
    f("negative_prompt", "string", { max = 5000 }),
  }),
  ["ideogram/character-edit"] = concat({
    f("prompt", "string", { required = true, max = 5000 }),
    f("image_url", "url", { required = true }),
    f("mask_url", "url", { required = true }),
    f("reference_image_urls", "url_array", { required = true }),
  }, COMMON_TAIL, {
    f("seed", "number"),
  }),
  ["ideogram/character-remix"] = concat({
    f("prompt", "string", { required = true, max = 5000 }),
    f("image_url", "url", { required = true }),
    f("reference_image_urls", "url_array", { required = true }),
  }, COMMON_TAIL, {
    f("image_size", "enum", { enum = "image_size" }),
    f("seed", "number"),
    f("strength", "number", { min = 0.1, max = 1 }),
    f("negative_prompt", "string", { max = 500 }),
    f("image_urls", "url_array"),
    f("reference_mask_urls", "url_or_empty"),
  }),
  ["ideogram/v3-reframe"] = {
    f("image_url", "url", { required = true }),
    f("image_size", "enum", { required = true, enum = "image_size" }),
    f("rendering_speed", "enum", { enum = "rendering_speed" }),
    f("style", "enum", { enum = "reframe_style" }),
    f("num_images", "enum", { enum = "num_images" }),
    f("seed", "number"),
  },
}

local function missing(v)
  return v == nil or v == cjson.null or v == ""
end

function M.request(req)
  if not M.is_object(req) then return nil, "request body must be a JSON object" end
  local model = req.model
  if missing(model) then return nil, "model is required" end
  if type(model) ~= "string" then return nil, "model must be a string" end
  local cb = req.callBackUrl
  if cb ~= nil and cb ~= cjson.null and not M.is_url(cb) then
    return nil, "callBackUrl must be an http(s) URL"
  end
  local fields = M.MODELS[model]
  if not fields then return true end   -- unknown model: only `model` is required
  local input = req.input
  if input == nil or input == cjson.null then return nil, "input is required" end
  if not M.is_object(input) then return nil, "input must be an object" end
  for _, spec in ipairs(fields) do
    local v = input[spec.name]
    local name = "input." .. spec.name
    if v == nil or v == cjson.null then
      if spec.required then return nil, name .. " is required" end
    elseif v == "" and spec.required then
      return nil, name .. " is required"
    else
      local msg = check[spec.kind](name, v, spec)
      if msg then return nil, msg end
    end
  end
  return true
end

return M
