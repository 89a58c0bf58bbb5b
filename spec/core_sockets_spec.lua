-- The socket loop (src/events.c) under churn: >= 16 transfers on one client, IPv4
-- and IPv6 listeners, the IPv4 one black-holed (a listening socket with a full
-- backlog that never accepts). libcurl's happy-eyeballs timer then opens a second
-- (IPv6) socket per transfer while other sockets are being served, so the watch
-- list grows inside curl_multi_socket_action. Meant for the ASan run (make
-- test-asan): a pointer into the poll array kept across that call is a
-- use-after-free there. Tagged #sockets, not #core: the streams make it too slow for
-- valgrind.
local core = require "kie.core"
local socket = require "socket"

local KEY = "sk-core-sockets-77a0"

-- A listening socket on 127.0.0.1 whose backlog is full: connects to it hang.
local function black_hole()
  local hole = assert(socket.tcp())
  assert(hole:bind("127.0.0.1", 0))
  assert(hole:listen(0))
  local _, port = hole:getsockname()
  local fill = {}
  for i = 1, 8 do
    local t = socket.tcp()
    t:settimeout(0)
    t:connect("127.0.0.1", port)
    fill[i] = t
  end
  return tonumber(port), function()
    for _, t in ipairs(fill) do t:close() end
    hole:close()
  end
end

local function ipv6_loopback()
  local s = socket.tcp6 and socket.tcp6()
  local ok = s and s:bind("::1", 0)
  if s then s:close() end
  return ok
end

describe("kie.core socket loop #sockets", function()
  local m, port, close_hole

  lazy_setup(function()
    if not ipv6_loopback() then return end
    port, close_hole = black_hole()
    -- the mock also listens on [::1] at the black hole's port number
    m = require("spec.support.mock").start{ api_key = KEY, pace = 0.02,
      server_conf = "listen [::1]:" .. port .. ";" }
  end)
  lazy_teardown(function()
    if m then m:stop() end
    if close_hole then close_hole() end
  end)

  it("serves 16 transfers while happy eyeballs opens IPv6 sockets mid-dispatch", function()
    if not m then return pending("no IPv6 loopback here") end
    local STREAMS, HOLED = 8, 8 -- 16 sockets: the watch list's first capacity
    for _ = 1, 3 do -- each round grows a fresh client's list once; most do it mid-dispatch
      -- localhost is 127.0.0.1 (black-holed) and ::1 (the mock): after 200 ms
      -- libcurl tries ::1 while the 127.0.0.1 attempt stays open
      local c = core.new{ api_key = KEY, base_url = "http://localhost:" .. port,
        upload_url = m.url, timeout = 10, connect_timeout = 5, max_response_bytes = 2 ^ 30 }
      -- endless answers on the other sockets, so that the timer fires while
      -- step hands ready sockets to libcurl
      m:fault{ path = "/api/v1/chat/credit", fault = "huge", bytes = 2 ^ 30, delay = 0.15,
        times = STREAMS }
      local streams = {}
      for i = 1, STREAMS do streams[i] = c:call_start("GET", m.url .. "/api/v1/chat/credit") end
      local holed = {}
      for i = 1, HOLED do holed[c:get_task_start("holed-" .. i)] = true end
      local got, t0 = 0, core.now()
      while got < HOLED do
        assert(core.now() - t0 < 15, "the IPv6 fallback never answered")
        local _, done = c:step(0)
        for _, id in ipairs(done or {}) do
          assert(holed[id], "a stream ended before the IPv6 fallback")
          local r, e = c:result(id)
          assert.is_nil(r)
          assert.equals("not_found", e.kind) -- answered by the mock over ::1
          got = got + 1
        end
      end
      for _, id in ipairs(streams) do assert.is_true(c:cancel(id)) end
      assert.equals(0, c:pending())
      c:close()
    end
    assert.equals(3 * HOLED, m:count("/api/v1/jobs/recordInfo"))
  end)
end)
