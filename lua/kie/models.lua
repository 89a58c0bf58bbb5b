--- Request validation for `createTask` bodies, driven by one schema table per model.
--
--    local models = require "kie.models"
--    local body, err = models.validate{model = "ideogram/character", input = {...}}
--
-- `validate` checks a request before it is sent and returns a normalized deep copy
-- (the caller's table is never changed). Problems with the request's content are
-- returned as `nil, err` (kind `validation`, `err.field` the dotted path of the
-- offending value, e.g. `input.num_images` or `input.reference_image_urls[2]`);
-- a request that is not a table, or bad `opts`, raise (programmer errors).
--
-- Known models get a full schema check (required fields, types, enums, lengths in
-- UTF-8 characters, ranges, http(s) URLs); other model names only get the
-- structural checks (non-empty `model`, `input` an object, `callBackUrl` a URL,
-- every value JSON-encodable). `models.schemas` may be read by docs and the CLI,
-- and extended with further models of the same shape.
-- @module kie.models

local errors = require "kie.errors"

local type, pairs, ipairs, tostring, error = type, pairs, ipairs, tostring, error
local getmetatable, setmetatable, rawget, next = getmetatable, setmetatable, rawget, next
local byte, find, format, gsub, lower, match, sub =
  string.byte, string.find, string.format, string.gsub, string.lower, string.match, string.sub
local floor, huge, max, min = math.floor, math.huge, math.max, math.min
local concat, sort = table.concat, table.sort

local M = {}

--- Deepest table nesting accepted (the request itself is level 1); the C core's
-- JSON encoder has the same bound.
M.MAX_DEPTH = 64

-- ------------------------------------------------------------------------
-- Schemas (data only). Field spec keys: name, type ("string", "integer",
-- "number", "boolean", "array"), format ("url"), items (spec of array elements),
-- required, enum, min_length/max_length (UTF-8 characters), min/max (numbers),
-- min_items, allow_empty (an empty string is accepted for a URL), accepts_number
-- (a whole number is accepted and sent as its string), default (documented
-- server default, never filled in), doc.

local SPEEDS = { "TURBO", "BALANCED", "QUALITY" }
local STYLES = { "AUTO", "REALISTIC", "FICTION" }
local REFRAME_STYLES = { "AUTO", "GENERAL", "REALISTIC", "DESIGN" }
local SIZES = { "square", "square_hd", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9" }
local URL = { type = "string", format = "url" }

local FIELDS = {
  prompt = { type = "string", required = true, min_length = 1, max_length = 5000,
    doc = "what to generate" },
  reference_image_urls = { type = "array", items = URL, required = true, min_items = 1,
    doc = "character reference image URLs (only the first is used)" },
  image_url = { type = "string", format = "url", required = true, doc = "input image URL" },
  mask_url = { type = "string", format = "url", required = true,
    doc = "inpainting mask URL (same size as image_url)" },
  rendering_speed = { type = "string", enum = SPEEDS, default = "BALANCED", doc = "speed/quality trade-off" },
  style = { type = "string", enum = STYLES, default = "AUTO", doc = "style type" },
  expand_prompt = { type = "boolean", default = true, doc = "MagicPrompt" },
  num_images = { type = "string", enum = { "1", "2", "3", "4" }, accepts_number = true, default = "1",
    doc = "number of images, sent as a string" },
  image_size = { type = "string", enum = SIZES, default = "square_hd", doc = "output size" },
  seed = { type = "integer", doc = "random seed (a whole number)" },
  negative_prompt = { type = "string", max_length = 5000, default = "", doc = "what to avoid" },
  strength = { type = "number", min = 0.1, max = 1, default = 0.8, doc = "weight of the input image" },
  image_urls = { type = "array", items = URL, doc = "style reference image URLs" },
  reference_mask_urls = { type = "string", format = "url", allow_empty = true, default = "",
    doc = "mask URL for the character reference (a single string)" },
}

-- Builds a schema from field names (in documentation order) plus per-model overrides.
local function schema(description, list)
  local fields = {}
  for i, entry in ipairs(list) do
    local spec = { name = entry[1] }
    for k, v in pairs(FIELDS[entry[1]]) do spec[k] = v end
    for k, v in pairs(entry[2] or {}) do spec[k] = v end
    fields[i] = spec
  end
  return { description = description, fields = fields }
end

--- Every known model: `schemas[name] = {description = ..., fields = {spec, ...}}`,
-- fields in documentation order, each `{name, type, required, enum, format, items,
-- min_length, max_length, min, max, min_items, allow_empty, accepts_number, default, doc}`.
M.schemas = {
  ["ideogram/character"] = schema("images of a character from a reference image", {
    { "prompt" }, { "reference_image_urls" }, { "rendering_speed" }, { "style" }, { "expand_prompt" },
    { "num_images" }, { "image_size" }, { "seed" }, { "negative_prompt" },
  }),
  ["ideogram/character-edit"] = schema("inpaint the masked area with a reference character", {
    { "prompt" }, { "image_url" }, { "mask_url" }, { "reference_image_urls" }, { "rendering_speed" },
    { "style" }, { "expand_prompt" }, { "num_images" }, { "seed" },
  }),
  ["ideogram/character-remix"] = schema("remix an image with a reference character", {
    { "prompt" }, { "image_url" }, { "reference_image_urls" }, { "rendering_speed" }, { "style" },
    { "expand_prompt" }, { "image_size" }, { "num_images" }, { "seed" }, { "strength" },
    { "negative_prompt", { max_length = 500 } }, { "image_urls" }, { "reference_mask_urls" },
  }),
  ["ideogram/v3-reframe"] = schema("outpaint an image to a new size (no prompt)", {
    { "image_url" }, { "image_size", { required = true } }, { "rendering_speed" },
    { "style", { enum = REFRAME_STYLES } }, { "num_images" }, { "seed", { default = 0 } },
  }),
}

--- True when `name` is a model with a schema.
-- @tparam string name
-- @treturn boolean
function M.is_known(name)
  return type(name) == "string" and M.schemas[name] ~= nil
end

--- The known model names, sorted.
-- @treturn {string,...}
function M.list()
  local names = {}
  for name in pairs(M.schemas) do names[#names + 1] = name end
  sort(names)
  return names
end

-- ------------------------------------------------------------------------
-- Helpers

local OBJECT_MT = { __jsontype = "object" }
local TOP_FIELDS = { "model", "callBackUrl", "input" }

local function is_null(v)
  local loaded = package and package.loaded
  if type(v) ~= "userdata" or not loaded then return false end
  for _, name in ipairs({ "cjson.safe", "cjson" }) do
    local mod = loaded[name]
    if type(mod) == "table" and mod.null ~= nil and v == mod.null then return true end
  end
  return false
end

local function typename(v)
  if is_null(v) then return "null" end
  return type(v)
end

-- A short, single-line rendering of a string or number for messages.
local function repr(v)
  if type(v) ~= "string" then return tostring(v) end
  local s = v
  if #s > 60 then
    local cut = 57
    while cut > 0 and (byte(s, cut + 1) or 0) >= 0x80 and byte(s, cut + 1) < 0xC0 do cut = cut - 1 end
    s = sub(s, 1, cut) .. "..."
  end
  s = gsub(s, '[%c"\\]', function(c)
    if c == '"' or c == "\\" then return "\\" .. c end
    return format("\\%d", byte(c))
  end)
  return '"' .. s .. '"'
end

-- Validation runs in two modes. The fast mode (path == nil) builds no paths, takes
-- keys in `pairs` order and, at the first problem, returns BAIL instead of an error;
-- `validate` then runs the checks again in the reporting mode (paths built, keys in
-- sorted order), so the error reported is the same as if only that mode existed.
local BAIL = {}

local function fail(path, message, extra)
  if path == nil then return nil, BAIL end
  local fields = { field = path }
  for k, v in pairs(extra or {}) do fields[k] = v end
  return nil, errors.new("validation", path .. ": " .. message, fields)
end

local function is_finite(v)
  return v == v and v ~= huge and v ~= -huge
end

local c_utf8 = _VERSION >= "Lua 5.3" and rawget(_G, "utf8") or nil
local c_utf8_len = c_utf8 and c_utf8.len

--- Counts the code points of a UTF-8 string (works on every Lua version).
-- Overlong forms, surrogates and values above U+10FFFF are invalid.
-- @tparam string s
-- @treturn[1] integer the number of characters
-- @treturn[2] nil
-- @treturn[2] integer byte offset of the first invalid sequence
function M.utf8_len(s)
  -- ASCII, the common case, first: utf8.len (Lua 5.3+, in C) returns #s exactly
  -- then; else one anchored match (unanchored, a match starts at every byte)
  if c_utf8_len then
    if c_utf8_len(s) == #s then return #s end
  elseif find(s, "^[^\128-\255]*$") then
    return #s
  end
  local n, i, len = 0, 1, #s
  while i <= len do
    local c = byte(s, i)
    local extra
    if c < 0x80 then extra = 0
    elseif c >= 0xC2 and c <= 0xDF then extra = 1
    elseif c >= 0xE0 and c <= 0xEF then extra = 2
    elseif c >= 0xF0 and c <= 0xF4 then extra = 3
    else return nil, i end
    if extra > 0 then
      if i + extra > len then return nil, i end
      local lo, hi = 0x80, 0xBF
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F
      elseif c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      local c2 = byte(s, i + 1)
      if c2 < lo or c2 > hi then return nil, i end
      for j = i + 2, i + extra do
        local cj = byte(s, j)
        if cj < 0x80 or cj > 0xBF then return nil, i end
      end
    end
    i = i + extra + 1
    n = n + 1
  end
  return n
end
local utf8_len = M.utf8_len

-- Why `s` is not an http(s) URL with a host, or nil when it is one.
local function url_problem_of(s)
  if s == "" then return "empty" end
  if find(s, "[%s%c]") then return "contains whitespace or control characters" end
  local scheme, rest = match(s, "^(%a[%w+.%-]*)://(.*)$")
  if not scheme then return "no scheme://" end
  if lower(scheme) ~= "http" and lower(scheme) ~= "https" then return "scheme " .. scheme .. " is not http or https" end
  local hostport = match(match(rest, "^[^/?#]*"), "[^@]*$")
  local host, port
  if sub(hostport, 1, 1) == "[" then
    host, port = match(hostport, "^(%[[%x:.]+%])(.*)$")
    if not host then return "bad IPv6 host" end
  else
    host, port = match(hostport, "^([^:]*)(.*)$")
    if host == "" then return "no host" end
    if not match(host, "^[%w.%-_~%%\128-\255]+$") then return "bad host" end
  end
  if port ~= "" and not match(port, "^:%d%d?%d?%d?%d?$") then return "bad port" end
  return nil
end

-- Facts about strings already checked (a request's strings are often the same from
-- call to call, and a string never changes): `memo.t[s]` = the fact; the table is
-- emptied when it reaches MEMO_MAX entries. Strings longer than MEMO_BYTES are
-- not kept.
local MEMO_MAX, MEMO_BYTES = 256, 1024

local function memo() return { t = {}, n = 0 } end

local function remember(m, s, fact)
  if #s > MEMO_BYTES then return end
  if m.n >= MEMO_MAX then m.t, m.n = {}, 0 end
  m.t[s] = fact
  m.n = m.n + 1
end

local good_urls = memo() -- URL -> true
local lengths = memo()   -- valid UTF-8 string -> its length in characters

local function url_problem(s)
  if good_urls.t[s] then return nil end
  local why = url_problem_of(s)
  if why == nil then remember(good_urls, s, true) end
  return why
end

-- utf8_len, remembered.
local function str_len(s)
  local n = lengths.t[s]
  if n then return n end
  local bad
  n, bad = utf8_len(s)
  if n then remember(lengths, s, n) end
  return n, bad
end

-- Orders keys of any type deterministically (so the first error reported is stable).
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "string" or ta == "number" then return a < b end
  return tostring(a) < tostring(b)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, key_less)
  return keys
end

-- The keys of a table whose keys are all strings, sorted (plain `<`, the order
-- key_less gives strings).
local function sorted_string_keys(t)
  local keys, n = {}, 0
  for k in pairs(t) do n = n + 1 keys[n] = k end
  if n > 1 then sort(keys) end
  return keys, n
end

-- Classifies a table for JSON: "empty", "array" (keys 1..n), "object" (string keys
-- only), or nil and a description of what is wrong with it.
local function shape(t)
  local strings, indices, top = 0, 0, 0
  for k in pairs(t) do
    local tk = type(k)
    if tk == "string" then
      strings = strings + 1
    elseif tk == "number" and k >= 1 and k < huge and k == floor(k) then -- an index
      indices = indices + 1
      if k > top then top = k end
    elseif tk == "number" then
      return nil, "a table with key " .. repr(k)
    else
      return nil, "a table with a key of type " .. tk
    end
  end
  if strings > 0 and indices > 0 then return nil, "a table mixing string keys and array indices" end
  if strings > 0 then return "object" end
  if indices == 0 then return "empty" end
  if top ~= indices then
    local i = 1
    while rawget(t, i) ~= nil do i = i + 1 end
    return nil, "a sparse table (index " .. i .. " is missing)"
  end
  return "array", indices
end

-- Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
local function distance(a, b)
  local la, lb = #a, #b
  if la == 0 or lb == 0 then return max(la, lb) end
  local before, prev = nil, {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    local cur, ca = { [0] = i }, byte(a, i)
    for j = 1, lb do
      local cb = byte(b, j)
      local d = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca == cb and 0 or 1))
      if before and j > 1 and ca == byte(b, j - 1) and byte(a, i - 1) == cb then
        d = min(d, before[j - 2] + 1)
      end
      cur[j] = d
    end
    before, prev = prev, cur
  end
  return prev[lb]
end

-- The candidate closest to `name` when it is reasonably close, else nil.
local function suggest(name, candidates)
  if #name > 64 then return nil end
  local key, best, best_d = lower(name), nil, max(2, floor(#name / 4)) + 1
  for _, c in ipairs(candidates) do
    local d = distance(key, lower(c))
    if d < best_d then best, best_d = c, d end
  end
  return best
end

-- ------------------------------------------------------------------------
-- Generic JSON-encodability check with deep copy.

local copy_json

local function copy_table(v, path, seen, depth)
  if seen[v] then return fail(path, "contains a reference cycle (JSON cannot encode it)") end
  if depth > M.MAX_DEPTH then return fail(path, "is nested deeper than " .. M.MAX_DEPTH .. " levels") end
  local kind, n = shape(v)
  if not kind then return fail(path, "cannot be encoded as JSON: " .. n) end
  seen[v] = true
  local out = {}
  if kind == "array" then
    for i = 1, n do
      local x, err = copy_json(v[i], path and (path .. "[" .. i .. "]"), seen, depth + 1)
      if err then return nil, err end
      out[i] = x
    end
  elseif kind == "object" then
    -- keys copied in sorted order in both modes, so that the copy is built the same way
    local keys, nk = sorted_string_keys(v)
    for j = 1, nk do
      local k = keys[j]
      if not str_len(k) then return fail(path, "key " .. repr(k) .. " is not valid UTF-8") end
      local x, err = copy_json(v[k], path and (path .. "." .. k), seen, depth + 1)
      if err then return nil, err end
      out[k] = x
    end
  end
  seen[v] = nil
  local mt = getmetatable(v)
  if type(mt) == "table" and rawget(mt, "__jsontype") ~= nil then setmetatable(out, mt) end
  return out
end

-- Returns a copy of `v` if it can be encoded as JSON, else nil and a validation error.
function copy_json(v, path, seen, depth)
  local t = type(v)
  if t == "string" then
    local n, bad = str_len(v)
    if not n then return fail(path, "is not valid UTF-8 (byte " .. bad .. ")") end
    return v
  elseif t == "boolean" then
    return v
  elseif t == "number" then
    if not is_finite(v) then return fail(path, repr(v) .. " is not a finite number (JSON cannot encode it)") end
    return v
  elseif t == "table" then
    return copy_table(v, path, seen, depth)
  elseif is_null(v) then
    return v
  end
  return fail(path, "a " .. t .. " cannot be encoded as JSON")
end

-- ------------------------------------------------------------------------
-- Schema checks: check[type](spec, value, path) -> value | nil, err

local check = {}

-- A number for a string field with `accepts_number`: its whole-number string if
-- that is in the enum.
local function check_number_string(spec, v, path)
  local s = is_finite(v) and v == floor(v) and v > -1e9 and v < 1e9 and format("%d", v)
  if not s then
    return fail(path, repr(v) .. " is not one of " .. concat(spec.enum, ", ") .. " (a string or a whole number)")
  end
  for _, allowed in ipairs(spec.enum) do
    if s == allowed then return s end
  end
  return fail(path, repr(v) .. " is not one of " .. concat(spec.enum, ", "))
end

local function check_value(spec, v, path)
  return check[spec.type](spec, v, path)
end

function check.string(spec, v, path)
  local n = lengths.t[v] -- found: v is a valid UTF-8 string
  if n == nil then
    if spec.accepts_number and type(v) == "number" then return check_number_string(spec, v, path) end
    if type(v) ~= "string" then return fail(path, "must be a string, got " .. typename(v)) end
    local bad
    n, bad = str_len(v)
    if not n then return fail(path, "is not valid UTF-8 (byte " .. bad .. ")") end
  end
  if spec.format == "url" and not good_urls.t[v] and not (spec.allow_empty and v == "") then
    local why = url_problem(v)
    if why then return fail(path, repr(v) .. " is not an http(s) URL (" .. why .. ")") end
  end
  if spec.min_length and n < spec.min_length then
    return fail(path, spec.min_length == 1 and "must not be empty"
      or ("must be at least " .. spec.min_length .. " characters long"))
  end
  if spec.max_length and n > spec.max_length then
    return fail(path, "is " .. n .. " characters long; the maximum is " .. spec.max_length)
  end
  local enum = spec.enum
  if enum then
    for i = 1, #enum do
      if v == enum[i] then return v end
    end
    local hint = ""
    for _, allowed in ipairs(enum) do
      if lower(v) == lower(allowed) then hint = ' (did you mean "' .. allowed .. '"?)' end
    end
    return fail(path, repr(v) .. " is not one of " .. concat(enum, ", ") .. hint)
  end
  return v
end

local function check_number(spec, v, path, whole)
  local what = whole and "a whole number" or "a number"
  if type(v) ~= "number" then return fail(path, "must be " .. what .. ", got " .. typename(v)) end
  if not is_finite(v) or (whole and v ~= floor(v)) then
    return fail(path, "must be " .. what .. ", got " .. repr(v))
  end
  if (spec.min and v < spec.min) or (spec.max and v > spec.max) then
    return fail(path, "must be between " .. tostring(spec.min) .. " and " .. tostring(spec.max)
      .. ", got " .. repr(v))
  end
  return v
end

function check.number(spec, v, path) return check_number(spec, v, path, false) end
function check.integer(spec, v, path) return check_number(spec, v, path, true) end

function check.boolean(_, v, path)
  if type(v) ~= "boolean" then return fail(path, "must be a boolean (true or false), got " .. typename(v)) end
  return v
end

function check.array(spec, v, path)
  local what = spec.items.format == "url" and "URLs" or (spec.items.type .. "s")
  if type(v) ~= "table" then
    return fail(path, "must be an array (a Lua sequence) of " .. what .. ", got " .. typename(v))
  end
  local kind, n = shape(v)
  if kind == "object" then n = "a table with string keys" end
  if kind ~= "array" and kind ~= "empty" then
    return fail(path, "must be an array (a Lua sequence) of " .. what .. ", got " .. n)
  end
  n = n or 0
  if spec.min_items and n < spec.min_items then
    return fail(path, "needs at least " .. spec.min_items .. " " .. (spec.min_items == 1 and "element" or "elements")
      .. " (an array of " .. what .. ")")
  end
  local out = {}
  for i = 1, n do
    local x, err = check_value(spec.items, v[i], path and (path .. "[" .. i .. "]"))
    if err then return nil, err end
    out[i] = x
  end
  return out
end

-- Per-schema name index, built once per `fields` table (and again if that table
-- was changed since: models.schemas is public and may be extended).
local indexes = setmetatable({}, { __mode = "k" })

local function schema_index(fields)
  local idx = indexes[fields]
  if idx then
    local specs, names = idx.specs, idx.names
    local n = #fields
    if n == idx.n then
      local ok = true
      for i = 1, n do
        local spec = fields[i]
        if specs[i] ~= spec or names[i] ~= spec.name then ok = false break end
      end
      if ok then return idx end
    end
  end
  local by_name, names, specs = {}, {}, {}
  for i, spec in ipairs(fields) do
    by_name[spec.name] = spec
    names[i] = spec.name
    specs[i] = spec
  end
  idx = { by_name = by_name, names = names, specs = specs, n = #specs }
  indexes[fields] = idx
  return idx
end

-- Checks the values of `input` named by `fields` into `out`. Returns out and how
-- many of those names `input` has.
local function check_fields(model, fields, input, out, report)
  local found = 0
  for i = 1, #fields do
    local spec = fields[i]
    local name = spec.name
    local v = input[name]
    if v == nil then
      if spec.required then return fail(report and ("input." .. name) or nil, "is required for " .. model) end
    else
      local x, err = check[spec.type](spec, v, report and ("input." .. name) or nil)
      if err then return nil, err end
      if out[name] == nil then found = found + 1 end
      out[name] = x
    end
  end
  return out, nil, found
end

-- Checks `input` against a model schema; returns the normalized copy. `report`
-- false: the fast mode (see BAIL), in which `input`'s shape is not checked yet:
-- when every key is a field name, it is an object (or empty).
local function check_input(model, sch, input, strict, req, report)
  if not report then
    -- no other keys than the field names found: nothing unknown (else see below)
    local out, err, found = check_fields(model, sch.fields, input, {}, false)
    if err then return nil, err end
    local keys = 0
    for _ in pairs(input) do keys = keys + 1 end
    if keys == found then return out end
    if strict then return nil, BAIL end
  end
  local idx = schema_index(sch.fields)
  local by_name, names = idx.by_name, idx.names
  local out = {}
  local unknown = false
  for k in pairs(input) do
    if not by_name[k] then unknown = true break end
  end
  if unknown then
    if not report then
      local kind = not strict and shape(input)
      if kind ~= "object" then return nil, BAIL end
    end
    local seen = { [req] = true, [input] = true }
    local keys, nk = sorted_string_keys(input)
    for j = 1, nk do
      local k = keys[j]
      if not by_name[k] then
        local path = report and ("input." .. k) or nil
        if strict then
          local s = suggest(k, names)
          if s then
            return fail(path, "unknown field for " .. model .. '; did you mean "' .. s .. '"?', { suggestion = s })
          end
          return fail(path, "unknown field for " .. model .. " (known fields: " .. concat(names, ", ") .. ")")
        end
        local x, err = copy_json(input[k], path, seen, 3)
        if err then return nil, err end
        out[k] = x
      end
    end
  end
  return check_fields(model, sch.fields, input, out, report)
end

-- ------------------------------------------------------------------------

-- The checks of `validate` after its arguments are checked. `report` false: the
-- fast mode (no paths; BAIL at the first problem).
local function validate(req, strict, report)
  local top_unknown = false
  for k in pairs(req) do
    if k ~= "model" and k ~= "callBackUrl" and k ~= "input" then top_unknown = true break end
  end
  if top_unknown then
    if not report then return nil, BAIL end
    for _, k in ipairs(sorted_keys(req)) do
      if k ~= "model" and k ~= "callBackUrl" and k ~= "input" then
        if type(k) ~= "string" then
          return fail("[" .. repr(k) .. "]", "unknown top-level key of type " .. type(k)
            .. " (expected model, callBackUrl, input)")
        end
        local s = suggest(k, TOP_FIELDS)
        return fail(k, "unknown top-level field" .. (s and ('; did you mean "' .. s .. '"?') or "")
          .. " (expected model, callBackUrl, input)", s and { suggestion = s } or nil)
      end
    end
  end

  local model, callback, input = req.model, req.callBackUrl, req.input
  if model == nil then return fail("model", 'is required (a model name such as "ideogram/character")') end
  if type(model) ~= "string" then return fail("model", "must be a string, got " .. typename(model)) end
  if model == "" then return fail("model", "must not be empty") end
  if not str_len(model) then return fail("model", "is not valid UTF-8") end

  if callback ~= nil then
    local _, err = check.string(URL, callback, "callBackUrl")
    if err then return nil, err end
  end

  if input == nil then return fail("input", "is required (a table of the model's input fields)") end
  if type(input) ~= "table" then return fail("input", "must be a table, got " .. typename(input)) end
  local sch, out, err = M.schemas[model]
  if report or not sch then -- else check_input checks the shape
    local kind, why = shape(input)
    if kind == "array" then why = "an array" end
    if kind ~= "object" and kind ~= "empty" then
      return fail("input", "must be an object (a table with string keys), got " .. why)
    end
  end

  if sch then
    out, err = check_input(model, sch, input, strict, req, report)
  else
    out, err = copy_json(input, report and "input" or nil, { [req] = true }, 2)
  end
  if err then return nil, err end
  if next(out) == nil and getmetatable(out) == nil then setmetatable(out, OBJECT_MT) end

  return { model = model, callBackUrl = callback, input = out }
end


--- Validates a `createTask` request and returns a normalized deep copy ready to send.
-- `num_images` may be given as a whole number 1-4 or a string "1"-"4" and is always
-- returned as a string; every other value is copied as given. Unknown fields inside
-- `input` of a known model are errors (with a "did you mean" suggestion when one is
-- close) unless `opts.strict` is false, in which case they are copied through.
-- Models without a schema get structural checks only.
-- @tparam table req `{model = string, callBackUrl = string?, input = table}`
-- @tparam[opt] table opts `{strict = true}`
-- @treturn[1] table the normalized request (a new table)
-- @treturn[2] nil
-- @treturn[2] kie.errors.Error kind `validation`, `field` = dotted path of the bad value
-- @raise when `req` is not a table or `opts` is malformed
function M.validate(req, opts)
  if type(req) ~= "table" then
    error("kie.models.validate: request must be a table, got " .. type(req), 2)
  end
  local strict = true
  if opts ~= nil then
    if type(opts) ~= "table" then error("kie.models.validate: opts must be a table, got " .. type(opts), 2) end
    for k in pairs(opts) do
      if k ~= "strict" then error("kie.models.validate: unknown option " .. repr(tostring(k)), 2) end
    end
    if opts.strict ~= nil and type(opts.strict) ~= "boolean" then
      error("kie.models.validate: opts.strict must be a boolean, got " .. type(opts.strict), 2)
    end
    strict = opts.strict ~= false
  end
  return M.check(req, strict)
end

--- `validate` for callers that have checked its arguments: `req` a table,
-- `strict` a boolean.
function M.check(req, strict)
  local out, err = validate(req, strict, false)
  if err == BAIL then out, err = validate(req, strict, true) end -- report the problem
  return out, err
end

return M
