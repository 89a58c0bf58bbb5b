rockspec_format = "3.0"
package = "kie"
version = "scm-1"
source = {
  url = "git+https://example.invalid/lua-kie.git",
}
description = {
  summary = "Fast, trustworthy client for kie.ai's image-generation job API (Ideogram character models)",
  detailed = [[
lua-kie drives kie.ai's asynchronous job API (createTask / recordInfo) from Lua:
a C core on libcurl and lua-cjson, and a Lua layer with validation, retries that
never double-charge, waits with deadlines, and non-blocking use for games and
OpenResty.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson >= 2.1.0",
  "argparse >= 0.6.0", -- bin/kie only
}
external_dependencies = {
  CURL = { library = "curl" }, -- no header check: Debian keeps curl.h in a multiarch dir the compiler finds
  OPENSSL = { header = "openssl/hmac.h", library = "crypto" },
}
build = {
  type = "builtin",
  modules = {
    ["kie.core"] = {
      sources = { "src/kie.c", "src/client.c", "src/transfer.c", "src/json.c", "src/response.c",
        "src/hmac.c", "src/upload.c", "src/events.c", "src/buf.c", "src/clock.c",
        "src/retry_after.c", "src/base64.c", "src/journal.c" },
      libraries = { "curl", "crypto", "pthread" },
      incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)" },
      defines = { "KIE_VERSION=\"0.1.0\"" },
    },
    ["kie"] = "lua/kie/init.lua",
    ["kie.client"] = "lua/kie/client.lua",
    ["kie.options"] = "lua/kie/options.lua",
    ["kie.redact"] = "lua/kie/redact.lua",
    ["kie.fingerprint"] = "lua/kie/fingerprint.lua",
    ["kie.paid"] = "lua/kie/paid.lua",
    ["kie.log"] = "lua/kie/log.lua",
    ["kie.loop"] = "lua/kie/loop.lua",
    ["kie.batch"] = "lua/kie/batch.lua",
    ["kie.errors"] = "lua/kie/errors.lua",
    ["kie.models"] = "lua/kie/models.lua",
    ["kie.retry"] = "lua/kie/retry.lua",
    ["kie.ratelimit"] = "lua/kie/ratelimit.lua",
    ["kie.schedule"] = "lua/kie/schedule.lua",
    ["kie.lifecycle"] = "lua/kie/lifecycle.lua",
    ["kie.journal"] = "lua/kie/journal.lua",
    ["kie.callback"] = "lua/kie/callback.lua",
    ["kie.deliver"] = "lua/kie/deliver.lua",
    ["kie.wake"] = "lua/kie/wake.lua",
    ["kie.fleet_batch"] = "lua/kie/fleet_batch.lua",
    ["kie.fleet_batch_store"] = "lua/kie/fleet_batch_store.lua",
    ["kie.files"] = "lua/kie/files.lua",
    ["kie.seed"] = "lua/kie/seed.lua",
    ["kie.cli"] = "lua/kie/cli.lua",
    ["kie.cli_fleet"] = "lua/kie/cli_fleet.lua",
    ["kie.ngx"] = "lua/kie/ngx.lua",
    ["kie.ngx_worker"] = "lua/kie/ngx_worker.lua",
    ["kie.ngx_shared"] = "lua/kie/ngx_shared.lua",
    ["kie.testing"] = "lua/kie/testing.lua", -- the fake kie.ai for your tests
  },
  install = {
    bin = { kie = "bin/kie" }, -- the command line; needs argparse (below)
  },
  copy_directories = { "examples" },
}
test_dependencies = { "busted" }
test = { type = "busted" }
