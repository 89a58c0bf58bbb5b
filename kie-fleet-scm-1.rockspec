rockspec_format = "3.0"
package = "kie-fleet"
version = "scm-1"
source = {
  url = "git+https://example.invalid/lua-kie.git",
}
description = {
  summary = "Fleet mode for lua-kie: many processes on one kie.ai account through Redis",
  detailed = [[
kie.redis (a Redis client on hiredis), kie.fleet (account-wide pacing shared
through Redis), kie.fleet_journal (intents, task ids and leases in Redis),
kie.fleet_events (callbacks that wake waits in every process) and kie.redis_ngx
(the same over lua-resty-redis cosockets in OpenResty). Only programs that use
kie.new{fleet = ...} need this rock; the kie rock itself never links hiredis.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "kie", -- the client this extends
}
external_dependencies = {
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" }, -- Debian libhiredis-dev
}
build = {
  type = "builtin",
  modules = {
    ["kie.redis"] = {
      sources = { "src/fleet/redis.c", "src/fleet/reply.c" },
      libraries = { "hiredis" },
      incdirs = { "$(HIREDIS_INCDIR)" },
      libdirs = { "$(HIREDIS_LIBDIR)" },
    },
    ["kie.fleet"] = "lua/kie/fleet.lua",
    ["kie.redis_ngx"] = "lua/kie/redis_ngx.lua", -- kie.fleet in nginx (lua-resty-redis)
    ["kie.fleet_journal"] = "lua/kie/fleet_journal.lua",
    ["kie.fleet_events"] = "lua/kie/fleet_events.lua",
  },
}
