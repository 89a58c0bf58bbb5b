#!/bin/sh
# `make soak`: bench/soak.lua under AddressSanitizer + UBSan (the way scripts/test.sh
# runs its asan stage: kie.core built with the sanitizers into its own directory,
# libasan and libubsan preloaded into lua5.4; the mock's nginx drops the preload).
#   SOAK_CALLS=100000 sh bench/soak.sh
set -u
cd "$(dirname "$0")/.." || exit 2
SANF="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
dir=build/soak-lua5.4-san
make -s build LUA=lua5.4 BUILD="$dir" SAN="$SANF" >/dev/null || exit 2
pre="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
log=build/soak.log
mkdir -p build
# a small quarantine keeps RSS a measure of our memory, not of ASan's freed-block cache
LD_PRELOAD="$pre" \
ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=16:abort_on_error=0:exitcode=86" \
LSAN_OPTIONS="${LSAN_OPTIONS:-print_suppressions=0}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
SOAK_CPATH="./$dir/?.so" SOAK_CALLS="${SOAK_CALLS:-100000}" \
  lua5.4 bench/soak.lua 2>&1 | tee "$log"
rc=$?
# tee hides lua's exit status in plain sh: read the verdict from the log
if grep -q "ERROR: AddressSanitizer\|runtime error:\|ERROR: LeakSanitizer" "$log"; then
  echo "soak: sanitizer report (see $log)"; exit 1
fi
grep -q '^soak: ok$' "$log" || exit 1
exit $rc
