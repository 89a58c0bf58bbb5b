-- Builds real, decodable PNG files in Lua (LuaJIT / Lua 5.1 arithmetic only).
-- RGB 8-bit, no interlace; the zlib stream uses stored (uncompressed) deflate
-- blocks, which every decoder accepts.

local M = {}

local crc32 = ngx and ngx.crc32_long

if not crc32 then
  -- table-driven CRC-32 (IEEE), only used outside nginx
  local bit = require "bit"
  local tbl = {}
  for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
      if bit.band(c, 1) == 1 then c = bit.bxor(0xEDB88320, bit.rshift(c, 1))
      else c = bit.rshift(c, 1) end
    end
    tbl[i] = c
  end
  crc32 = function(s)
    local c = 0xFFFFFFFF
    for i = 1, #s do
      c = bit.bxor(tbl[bit.band(bit.bxor(c, s:byte(i)), 0xFF)], bit.rshift(c, 8))
    end
    c = bit.bxor(c, 0xFFFFFFFF)
    if c < 0 then c = c + 4294967296 end
    return c
  end
end

local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

local function adler32(s)
  local a, b = 1, 0
  local len = #s
  local i = 1
  while i <= len do
    local j = math.min(i + 3999, len)   -- 4000 bytes keep b below 2^53 easily
    local bytes = { s:byte(i, j) }
    for k = 1, #bytes do
      a = a + bytes[k]
      b = b + a
    end
    a = a % 65521
    b = b % 65521
    i = j + 1
  end
  return b * 65536 + a
end

-- zlib stream made of stored deflate blocks (each at most 65535 bytes)
local function zlib_stored(raw)
  local out = { "\120\1" }   -- CMF 0x78 (deflate, 32K window), FLG 0x01 (check bits)
  local len = #raw
  local pos = 1
  repeat
    local n = math.min(65535, len - pos + 1)
    local final = (pos + n > len) and 1 or 0
    local nlen = 65535 - n
    out[#out + 1] = string.char(final, n % 256, math.floor(n / 256), nlen % 256, math.floor(nlen / 256))
    out[#out + 1] = raw:sub(pos, pos + n - 1)
    pos = pos + n
  until pos > len
  out[#out + 1] = be32(adler32(raw))
  return table.concat(out)
end

local function chunk(kind, data)
  return be32(#data) .. kind .. data .. be32(crc32(kind .. data))
end

-- pixel(x, y) -> r, g, b (0..255)
function M.encode_rgb(width, height, pixel)
  local rows = {}
  for y = 0, height - 1 do
    local row = { "\0" }   -- filter type 0 (None)
    for x = 0, width - 1 do
      local r, g, b = pixel(x, y)
      row[#row + 1] = string.char(r, g, b)
    end
    rows[#rows + 1] = table.concat(row)
  end
  local ihdr = be32(width) .. be32(height) .. string.char(8, 2, 0, 0, 0)
  return "\137PNG\r\n\26\n" .. chunk("IHDR", ihdr) .. chunk("IDAT", zlib_stored(table.concat(rows)))
    .. chunk("IEND", "")
end

-- A 64x64 gradient whose blue channel (and diagonal shift) depends on `seed`,
-- so different result files have different bytes.
function M.gradient(seed, size)
  size = size or 64
  seed = (seed or 0) % 256
  local step = 256 / size
  return M.encode_rgb(size, size, function(x, y)
    return math.floor(x * step) % 256, math.floor(y * step) % 256, (seed + x + y) % 256
  end)
end

M.adler32 = adler32
M.crc32 = crc32

return M
