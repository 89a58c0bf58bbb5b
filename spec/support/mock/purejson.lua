-- Small JSON codec in plain Lua (5.1 - 5.4), used by the mock launcher and the specs.
-- The nginx side uses cjson; this file only exists so the launcher needs no C module.
-- decode: JSON null becomes nil inside objects and json.null inside arrays (keeps positions).
-- encode: a table is an array when it has a [1] or is marked with json.array(t); empty
-- unmarked tables become {}. Object keys are sorted so output is stable.

local json = {}

json.null = setmetatable({}, { __tostring = function() return "null" end })
local ARRAY_MT = { __jsontype = "array" }

function json.array(t)
  return setmetatable(t or {}, ARRAY_MT)
end

local escapes = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
}

local function escape_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function is_array(t)
  if getmetatable(t) == ARRAY_MT then return true, #t end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n, n
end

local encode_value

local function encode_number(v)
  if v ~= v or v == math.huge or v == -math.huge then
    error("json: cannot encode " .. tostring(v))
  end
  if math.type and math.type(v) == "integer" then return string.format("%d", v) end
  if v == math.floor(v) and v > -2^53 and v < 2^53 then
    return string.format("%.0f", v)
  end
  local short = string.format("%.14g", v)
  if tonumber(short) == v then return short end
  return string.format("%.17g", v)
end

encode_value = function(v, out, depth)
  local t = type(v)
  if v == nil or v == json.null then
    out[#out + 1] = "null"
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif t == "number" then
    out[#out + 1] = encode_number(v)
  elseif t == "string" then
    out[#out + 1] = escape_string(v)
  elseif t == "table" then
    if depth > 100 then error("json: nesting too deep") end
    local arr, n = is_array(v)
    if arr then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        encode_value(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then
          if type(k) == "number" then k = tostring(k) else error("json: bad key type " .. type(k)) end
        end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = escape_string(k)
        out[#out + 1] = ":"
        local val = v[k]
        if val == nil then val = v[tonumber(k)] end
        encode_value(val, out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("json: cannot encode a " .. t)
  end
end

function json.encode(v)
  local out = {}
  encode_value(v, out, 0)
  return table.concat(out)
end

-- decoding ------------------------------------------------------------------

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 0x1000),
      0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return string.char(0xF0 + math.floor(cp / 0x40000),
    0x80 + math.floor(cp / 0x1000) % 0x40,
    0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local decode_value

local function fail(_, pos, what)
  error(string.format("json: %s at position %d", what, pos), 0)
end

local function skip_ws(s, pos)
  return s:find("[^ \t\r\n]", pos) or #s + 1
end

local simple_escapes = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ['\\'] = '\\', ['/'] = '/' }

local function decode_string(s, pos)
  -- s:sub(pos, pos) == '"'
  local parts = {}
  local i = pos + 1
  while true do
    local j = s:find('["\\]', i)
    if not j then fail(s, pos, "unterminated string") end
    if j > i then parts[#parts + 1] = s:sub(i, j - 1) end
    local c = s:sub(j, j)
    if c == '"' then
      return table.concat(parts), j + 1
    end
    local e = s:sub(j + 1, j + 1)
    if simple_escapes[e] then
      parts[#parts + 1] = simple_escapes[e]
      i = j + 2
    elseif e == "u" then
      local hex = s:sub(j + 2, j + 5)
      if not hex:match("^%x%x%x%x$") then fail(s, j, "bad \\u escape") end
      local cp = tonumber(hex, 16)
      i = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF and s:sub(i, i + 1) == "\\u" then
        local lo = tonumber(s:sub(i + 2, i + 5), 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
          i = i + 6
        end
      end
      parts[#parts + 1] = utf8_char(cp)
    else
      fail(s, j, "bad escape")
    end
  end
end

local function decode_number(s, pos)
  local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
  if not num or num == "" or num == "-" then fail(s, pos, "bad number") end
  local v = tonumber(num)
  if v == nil then fail(s, pos, "bad number") end
  if math.tointeger and not num:find("[.eE]") then
    v = math.tointeger(v) or v
  end
  return v, pos + #num
end

decode_value = function(s, pos, depth)
  if depth > 200 then fail(s, pos, "nesting too deep") end
  pos = skip_ws(s, pos)
  local c = s:sub(pos, pos)
  if c == "{" then
    local obj = {}
    pos = skip_ws(s, pos + 1)
    if s:sub(pos, pos) == "}" then return obj, pos + 1 end
    while true do
      pos = skip_ws(s, pos)
      if s:sub(pos, pos) ~= '"' then fail(s, pos, "expected key") end
      local key
      key, pos = decode_string(s, pos)
      pos = skip_ws(s, pos)
      if s:sub(pos, pos) ~= ":" then fail(s, pos, "expected ':'") end
      local val
      val, pos = decode_value(s, pos + 1, depth + 1)
      if val ~= json.null then obj[key] = val end
      pos = skip_ws(s, pos)
      local d = s:sub(pos, pos)
      if d == "}" then return obj, pos + 1 end
      if d ~= "," then fail(s, pos, "expected ',' or '}'") end
      pos = pos + 1
    end
  elseif c == "[" then
    local arr = json.array({})
    pos = skip_ws(s, pos + 1)
    if s:sub(pos, pos) == "]" then return arr, pos + 1 end
    local n = 0
    while true do
      local val
      val, pos = decode_value(s, pos, depth + 1)
      n = n + 1
      arr[n] = val
      pos = skip_ws(s, pos)
      local d = s:sub(pos, pos)
      if d == "]" then return arr, pos + 1 end
      if d ~= "," then fail(s, pos, "expected ',' or ']'") end
      pos = pos + 1
    end
  elseif c == '"' then
    return decode_string(s, pos)
  elseif c == "-" or c:match("%d") then
    return decode_number(s, pos)
  elseif s:sub(pos, pos + 3) == "true" then
    return true, pos + 4
  elseif s:sub(pos, pos + 4) == "false" then
    return false, pos + 5
  elseif s:sub(pos, pos + 3) == "null" then
    return json.null, pos + 4
  end
  fail(s, pos, "unexpected character '" .. c .. "'")
end

-- Returns the value, or nil and an error message.
function json.decode(s)
  if type(s) ~= "string" then return nil, "json: expected a string" end
  local ok, v, pos = pcall(decode_value, s, 1, 0)
  if not ok then return nil, v end
  pos = skip_ws(s, pos)
  if pos <= #s then return nil, "json: trailing garbage at position " .. pos end
  if v == json.null then return nil end
  return v
end

return json
