-- Several "hosts" on one machine for the fleet specs: K Linux network namespaces,
-- each joined by a veth pair to a bridge in the root namespace, on a private 10.x.y.0/24
-- subnet no route or address of the machine uses. Servers the specs start in the root
-- namespace (the mock, redis-server) listen on the bridge's address; a command runs on
-- a host with `ip netns exec`. Every name starts with a prefix unique to the run, and
-- teardown goes by those names only: net:destroy() (idempotent), and a watchdog that
-- does the same once the process that made them is gone (a crashed spec leaves none).
--
--   local netns = require "spec.support.netns"
--   local ok, why = netns.available()   -- false + why when not root / not permitted
--   local net = netns.create(4)          -- net.address (root side), net.hosts[i].name/.address
--   net:command(i, "lua5.4 x.lua")       -- "ip netns exec NAME lua5.4 x.lua"
--   net:run(i, "ip -4 addr")             -- ok, output (util.run inside host i)
--   net:destroy()
--
-- Plain Lua 5.1 - 5.4; needs iproute2 (ip), a kernel with veth + bridge, and root.

local util = require "spec.support.util"
local procs = require "spec.support.procs"

local M = {}

local Net = {}
Net.__index = Net

local q = util.quote

local owner_pid = procs.self_pid

local seeded = false
local function seed()
  if seeded then return end
  seeded = true
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(4) or ""
  if f then f:close() end
  local n = os.time() + (owner_pid() or 0)
  for i = 1, #bytes do n = n * 256 + bytes:byte(i) end
  math.randomseed(n % 2147483647)
end

-- A prefix for this run's names: short, since interface names stop at 15 characters.
local function new_prefix()
  seed()
  return ("kn%06x"):format(math.random(0, 0xffffff))
end

--- Can this process make network namespaces? true, or false and why not.
function M.available()
  local ok, out = util.run("id -u")
  if not ok or not out:match("^%s*0%s*$") then
    return false, "network namespaces need root (ip netns add is not permitted)"
  end
  if not util.run("command -v ip") then return false, "iproute2's ip is not installed" end
  -- `ip netns add` may work where entering a namespace does not (a chroot: `ip -n`
  -- and `ip netns exec` remount / as a slave, which needs / to be a mount point)
  local probe = q(new_prefix() .. "-probe")
  local usable, why = util.run("ip netns add " .. probe .. " && ip -n " .. probe .. " link set lo up && "
    .. "ip netns exec " .. probe .. " true")
  util.run("ip netns del " .. probe)
  if not usable then
    return false, "network namespaces cannot be made or entered here: " .. why:gsub("%s+$", "")
  end
  return true
end

-- A 10.x.y.0/24 that no address or route of the root namespace mentions.
local function free_subnet()
  local _, used = util.run("ip -4 addr; ip -4 route")
  for _ = 1, 100 do
    local net = ("10.%d.%d."):format(math.random(100, 254), math.random(0, 255))
    if not used:find(net, 1, true) then return net end
  end
  error("netns: no free 10.x.y.0/24 subnet found")
end

-- The shell lines that remove every name of `net` (each may already be gone).
local function teardown_script(net)
  local lines = {}
  for _, h in ipairs(net.hosts) do
    lines[#lines + 1] = "ip link del " .. q(h.veth) .. " 2>/dev/null" -- (the pair goes with it)
    lines[#lines + 1] = "ip netns del " .. q(h.name) .. " 2>/dev/null"
  end
  lines[#lines + 1] = "ip link del " .. q(net.bridge) .. " 2>/dev/null"
  return table.concat(lines, "; ") .. "; true"
end

--- Makes `k` hosts; returns the net (raises, having removed what it made, on failure).
function M.create(k)
  local prefix = new_prefix()
  local subnet = free_subnet()
  local net = setmetatable({ prefix = prefix, bridge = prefix .. "br", address = subnet .. "1",
    subnet = subnet .. "0/24", hosts = {} }, Net)
  for i = 1, k do
    net.hosts[i] = { name = prefix .. "-h" .. i, address = subnet .. (i + 1),
      veth = prefix .. "r" .. i, peer = prefix .. "p" .. i }
  end
  -- the watchdog first: whatever happens from here, the names go with this process
  local first = "/run/netns/" .. net.hosts[1].name
  util.run("(while kill -0 " .. owner_pid() .. " 2>/dev/null; do sleep 1; "
    .. "[ -e " .. q(first) .. " ] || [ -n \"$made\" ] || continue; made=1; "
    .. "[ -e " .. q(first) .. " ] || break; done; " .. teardown_script(net)
    .. ") </dev/null >/dev/null 2>&1 &")
  local cmds = { "set -e",
    "ip link add " .. q(net.bridge) .. " type bridge",
    "ip addr add " .. net.address .. "/24 dev " .. q(net.bridge),
    "ip link set " .. q(net.bridge) .. " up" }
  for _, h in ipairs(net.hosts) do
    local n = q(h.name)
    cmds[#cmds + 1] = "ip netns add " .. n
    cmds[#cmds + 1] = "ip link add " .. q(h.veth) .. " type veth peer name " .. q(h.peer)
    cmds[#cmds + 1] = "ip link set " .. q(h.peer) .. " netns " .. n
    cmds[#cmds + 1] = "ip link set " .. q(h.veth) .. " master " .. q(net.bridge) .. " up"
    cmds[#cmds + 1] = "ip -n " .. n .. " link set lo up"
    cmds[#cmds + 1] = "ip -n " .. n .. " addr add " .. h.address .. "/24 dev " .. q(h.peer)
    cmds[#cmds + 1] = "ip -n " .. n .. " link set " .. q(h.peer) .. " up"
  end
  local ok, out = util.run(table.concat(cmds, "\n"))
  if not ok then
    net:destroy()
    error("netns: cannot make the hosts: " .. out)
  end
  return net
end

--- The shell command that runs `cmd` on host `i`.
function Net:command(i, cmd)
  local h = assert(self.hosts[i], "netns: no such host")
  return "ip netns exec " .. q(h.name) .. " " .. cmd
end

--- Runs `cmd` on host `i` and waits: ok, combined output (util.run).
function Net:run(i, cmd)
  return util.run(self:command(i, cmd))
end

--- Removes the hosts and the bridge, by their names (idempotent).
function Net:destroy()
  util.run(teardown_script(self))
end

--- The names of this machine's namespaces that start with `prefix`.
function M.list(prefix)
  local _, out = util.run("ip netns list")
  local names = {}
  for name in out:gmatch("(%S+)[^\n]*") do
    if name:sub(1, #prefix) == prefix then names[#names + 1] = name end
  end
  return names
end

return M
