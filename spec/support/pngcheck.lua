-- An independent PNG checker for the specs (no python3, no mock code): chunk
-- CRCs, IHDR, and the zlib stream of the IDAT chunks (header check, stored
-- deflate blocks with LEN/NLEN, Adler-32), then the raw size and the filter
-- bytes. Compressed deflate blocks are refused: the mock writes stored ones.
-- Plain Lua 5.1 - 5.4 arithmetic (no bit library).
local M = {}

local byte, sub, floor = string.byte, string.sub, math.floor

-- XOR of two bytes, from a table built once
local XOR8 = {}
for a = 0, 255 do
  local row = {}
  for b = 0, 255 do
    local r, bit, x, y = 0, 1, a, b
    for _ = 1, 8 do
      if x % 2 ~= y % 2 then r = r + bit end
      x, y, bit = floor(x / 2), floor(y / 2), bit * 2
    end
    row[b] = r
  end
  XOR8[a] = row
end

local function xor32(a, b)
  local r, m = 0, 1
  for _ = 1, 4 do
    r = r + XOR8[a % 256][b % 256] * m
    a, b, m = floor(a / 256), floor(b / 256), m * 256
  end
  return r
end

local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c % 2 == 1 then c = xor32(0xEDB88320, floor(c / 2)) else c = floor(c / 2) end
  end
  CRC[i] = c
end

--- CRC-32 (IEEE) of s.
function M.crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = xor32(CRC[XOR8[c % 256][byte(s, i)]], floor(c / 256))
  end
  return xor32(c, 0xFFFFFFFF)
end

--- Adler-32 of s.
function M.adler32(s)
  local a, b = 1, 0
  for i = 1, #s do
    a = (a + byte(s, i)) % 65521
    b = (b + a) % 65521
  end
  return b * 65536 + a
end

local function be32(s, i)
  local a, b, c, d = byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local function le16(s, i)
  local a, b = byte(s, i, i + 1)
  return a + b * 256
end

-- The bytes of a zlib stream made of stored blocks, or nil, why.
local function inflate_stored(z)
  if #z < 6 then return nil, "zlib stream too short" end
  local cmf, flg = byte(z, 1, 2)
  if cmf % 16 ~= 8 then return nil, "zlib method is not deflate" end
  if (cmf * 256 + flg) % 31 ~= 0 then return nil, "zlib header check" end
  if floor(flg / 32) % 2 == 1 then return nil, "zlib preset dictionary" end
  local out, p = {}, 3
  while true do
    local h = byte(z, p)
    if not h then return nil, "deflate stream ends without a final block" end
    local final, btype = h % 2, floor(h / 2) % 4
    if btype ~= 0 then return nil, "compressed deflate block (this checker reads stored blocks)" end
    local len, nlen = le16(z, p + 1), le16(z, p + 3)
    if not len or not nlen or len + nlen ~= 65535 then return nil, "stored block LEN/NLEN" end
    out[#out + 1] = sub(z, p + 5, p + 4 + len)
    if #out[#out] ~= len then return nil, "stored block cut short" end
    p = p + 5 + len
    if final == 1 then break end
  end
  local raw = table.concat(out)
  if p + 3 ~= #z then return nil, "bytes after the zlib stream, or no Adler-32" end
  if be32(z, p) ~= M.adler32(raw) then return nil, "Adler-32" end
  return raw
end

--- Checks the PNG in `data`: returns width, height, or nil, why.
function M.check(data)
  if sub(data, 1, 8) ~= "\137PNG\r\n\26\n" then return nil, "signature" end
  local p, idat, w, h, depth, ctype = 9, {}, nil, nil, nil, nil
  local ended = false
  while p <= #data do
    if p + 11 > #data then return nil, "chunk header cut short" end
    local n, kind = be32(data, p), sub(data, p + 4, p + 7)
    local body = sub(data, p + 8, p + 7 + n)
    if #body ~= n or p + 11 + n > #data then return nil, "chunk " .. kind .. " cut short" end
    if be32(data, p + 8 + n) ~= M.crc32(kind .. body) then return nil, "crc " .. kind end
    if kind == "IHDR" then
      w, h = be32(body, 1), be32(body, 5)
      depth, ctype = byte(body, 9, 10)
    elseif kind == "IDAT" then
      idat[#idat + 1] = body
    elseif kind == "IEND" then
      ended = true
    end
    p = p + 12 + n
  end
  if not w then return nil, "no IHDR" end
  if not ended then return nil, "no IEND" end
  if depth ~= 8 or ctype ~= 2 then return nil, "not 8-bit RGB" end
  local raw, why = inflate_stored(table.concat(idat))
  if not raw then return nil, why end
  if #raw ~= h * (1 + w * 3) then return nil, "size" end
  for y = 0, h - 1 do
    if byte(raw, y * (1 + w * 3) + 1) > 4 then return nil, "filter type" end
  end
  return w, h
end

return M
