#!/bin/sh
# `make soak-stateful`: spec/stateful_spec.lua over many seeds, every op and fault
# kind enabled (STATEFUL_ALL=1), kie.core built with AddressSanitizer + UBSan and the
# sanitizers preloaded into lua5.4 as bench/soak.sh does. No seed starts after
# STATEFUL_SECONDS; each failing seed is minimized (at most 60 s) and printed with
# the command that replays it.
set -u
cd "$(dirname "$0")/.." || exit 2
SANF="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
dir=build/soak-lua5.4-san
make -s build LUA=lua5.4 BUILD="$dir" SAN="$SANF" >/dev/null || exit 2
pre="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
log=build/soak-stateful.log
mkdir -p build
LD_PRELOAD="$pre" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
STATEFUL_ALL="${STATEFUL_ALL:-1}" STATEFUL_SEEDS="${STATEFUL_SEEDS:-1000}" \
STATEFUL_OPS="${STATEFUL_OPS:-400}" STATEFUL_SECONDS="${STATEFUL_SECONDS:-900}" \
  lua5.4 "$(command -v busted)" --cpath="./$dir/?.so" spec/stateful_spec.lua >"$log" 2>&1
rc=$?
# one line per failing seed (backend, seed, settings, invariant, message), then busted's count
grep -o "stateful [a-z]*: seed [0-9]* .*" "$log" | sort -u | cut -c1-240
grep -E "^[0-9]+ successes?" "$log" | tail -n 1
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$log"; then
  echo "soak-stateful: sanitizer report (see $log)"; exit 1
fi
[ $rc = 0 ] || echo "soak-stateful: failures (see $log; each names its seed and replay command)"
exit $rc
