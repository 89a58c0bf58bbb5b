#!/bin/sh
# Installs the Debian packages lua-kie needs, only those missing.
#   sh scripts/deps.sh runtime   # build + demo (mock server included)
#   sh scripts/deps.sh test      # everything `make test` runs
# Without dpkg/apt (another OS) it only says what it would need.
set -eu

group=${1:-test}

# Commands the specs run beyond these packages come from Essential ones (coreutils,
# findutils, bsdutils for script(1)); procps gives ps to the mock's launcher.
runtime="gcc make pkg-config ca-certificates openssl lua5.4 liblua5.4-dev lua-cjson \
libcurl4-openssl-dev libssl-dev lua-socket lua-argparse nginx libnginx-mod-http-lua procps"
# luajit2 is OpenResty's branch: Debian's own `luajit` package removes nginx's Lua module;
# love comes after it so that apt keeps libluajit2 for LÖVE too. lua-nginx-redis is
# lua-resty-redis for kie.ngx with `fleet` (as nginx.redis in /usr/share/lua/5.1).
# faketime skews the clocks of some fleet workers (spec/fleet_netns_spec.lua); iproute2
# gives ip for its network namespaces.
test="$runtime lua-busted luarocks valgrind strace lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev \
lua5.3 liblua5.3-dev luajit2 libluajit2-5.1-dev lua-check curl lua-ldoc \
love xvfb xauth libgl1-mesa-dri clang libclang-rt-14-dev redis-server libhiredis-dev lua-nginx-redis faketime iproute2"

case "$group" in
  runtime) want=$runtime ;;
  test) want=$test ;;
  *) echo "deps.sh: unknown group '$group' (runtime|test)" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps.sh: not a Debian system; make sure these (or equivalents) are installed: $want" >&2
  exit 0
fi

missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

echo "deps.sh: installing:$missing" >&2
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "deps.sh: not root and no sudo; please install:$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# nginx's package may start a system nginx on port 80, redis-server's a system Redis on
# 6379; the tests run their own on free ports.
