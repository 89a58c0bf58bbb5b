#!/bin/sh
# `make test-threads`: tests/threads/threads.c in THREADS OS threads x ROUNDS
# create+get rounds against the mock, twice: with the ordinary build of kie.core, and
# with ThreadSanitizer (program and core built with -fsanitize=thread; liblua, libcurl
# and lua-cjson are not instrumented, so TSan sees races in our code only).
# Ends with "N passed, N failed" (each run is one check).
#   THREADS=8 ROUNDS=100 THREADS_TSAN=1 sh tests/threads/run.sh
set -u
cd "$(dirname "$0")/../.." || exit 2
threads=${THREADS:-8}
rounds=${ROUNDS:-100}
out=build/threads
mkdir -p "$out"
lua_inc=$(pkg-config --cflags-only-I lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
passed=0
failed=0
one() { # name cflags core-build-dir core-SAN
  name=$1 cflags=$2 dir=$3 san=$4
  log="$out/$name.log"
  # shellcheck disable=SC2086
  if ! make -s build LUA=lua5.4 BUILD="$dir" ${san:+SAN="$san"} >"$log" 2>&1 ||
     ! cc -g -O1 -std=gnu99 -Wall -Wextra $cflags $lua_inc tests/threads/threads.c \
        -o "$out/$name" -llua5.4 -lpthread >>"$log" 2>&1; then
    failed=$((failed + 1)); echo "== $name: build FAILED"; tail -n 20 "$log" >&2; return
  fi
  if TSAN_OPTIONS="halt_on_error=1:exitcode=66" \
     lua5.4 tests/threads/run.lua "$out/$name" "$threads" "$rounds" "./$dir/?.so" >>"$log" 2>&1 &&
     ! grep -q "WARNING: ThreadSanitizer" "$log"; then
    passed=$((passed + 1)); echo "== $name: ok ($threads threads x $rounds create+get)"
  else
    failed=$((failed + 1)); echo "== $name: FAILED"; tail -n 40 "$log" >&2
  fi
}
one threads "" build/lua5.4 ""
if [ "${THREADS_TSAN:-1}" != 0 ]; then
  one threads-tsan "-fsanitize=thread" build/threads-tsan "-fsanitize=thread"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
