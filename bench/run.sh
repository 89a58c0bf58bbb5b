#!/bin/sh
# `make bench`: builds kie.core for Lua 5.4 into its own directory (so that other
# builds in the tree cannot change it under a run), then runs bench/run.lua.
# Peers that are not installed are skipped and reported as such; to have them all:
#   apt-get install wrk lua-curl lua-socket lua-cjson python3-requests nodejs valgrind
set -eu
cd "$(dirname "$0")/.."
make -s build LUA=lua5.4 BUILD=build/bench-lua5.4 >/dev/null
export BENCH_CPATH="./build/bench-lua5.4/?.so"
# the frame-time rows also run under LuaJIT (LÖVE, Defold) when it is installed
if command -v luajit >/dev/null 2>&1; then
  make -s build LUA=luajit BUILD=build/bench-luajit >/dev/null
  export BENCH_LUAJIT_CPATH="./build/bench-luajit/?.so"
fi
exec lua5.4 bench/run.lua "$@"
