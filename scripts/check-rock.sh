#!/bin/sh
# `luarocks make` into a throwaway tree, then load the installed module with lua5.4.
# Offline here: Debian's lua-cjson is not registered with LuaRocks, hence
# --deps-mode=none (an online user gets lua-cjson from the rockspec).
set -eu
cd "$(dirname "$0")/.."
tree=$(mktemp -d /tmp/kie-rock.XXXXXX)
# luarocks' builtin backend leaves src/*.o and kie/core.so in the tree: remove them
# afterwards so a stale ./kie/core.so never shadows the build/ one.
trap 'rm -rf "$tree" kie; rm -f src/*.o src/fleet/*.o' EXIT
luarocks --lua-version=5.4 make --tree "$tree" --deps-mode=none kie-scm-1.rockspec
ls "$tree"/lib/lua/5.4/kie/core.so
LUA_PATH="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua;;" \
LUA_CPATH="$tree/lib/lua/5.4/?.so;;" \
  lua5.4 -e 'local kie = require "kie"; require "kie.testing"; assert(package.searchpath("kie.core", package.cpath):find("'"$tree"'", 1, true)); print("loaded kie " .. kie._VERSION)'
# fleet mode is its own rock: kie.core must not link hiredis, kie.redis does
if ldd "$tree"/lib/lua/5.4/kie/core.so | grep -q hiredis; then
  echo "check-rock: kie.core links hiredis" >&2; exit 1
fi
luarocks --lua-version=5.4 make --tree "$tree" --deps-mode=none kie-fleet-scm-1.rockspec
ldd "$tree"/lib/lua/5.4/kie/redis.so | grep -q hiredis
LUA_PATH="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua;;" \
LUA_CPATH="$tree/lib/lua/5.4/?.so;;" \
  lua5.4 -e 'require "kie.fleet"; local r = require "kie.redis"; assert(package.searchpath("kie.redis", package.cpath):find("'"$tree"'", 1, true)); print("loaded kie.redis " .. r._VERSION)'
