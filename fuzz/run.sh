#!/bin/sh
# `make fuzz`: builds the libFuzzer harnesses (clang, -fsanitize=fuzzer,address,undefined)
# over the core's C files and runs each for FUZZ_SECONDS (default 60) from the seed
# corpus in fuzz/corpus/<harness>/. New inputs go to build/fuzz/corpus-<harness>/ (the
# seeds in the repository are not changed); a crash leaves build/fuzz/crash-* and makes
# this script fail. Prints one line per harness with the executions run.
#   FUZZ_SECONDS=60 FUZZ_HARNESSES="decode callback" sh fuzz/run.sh
set -u
cd "$(dirname "$0")/.." || exit 2
secs=${FUZZ_SECONDS:-60}
harnesses=${FUZZ_HARNESSES:-"decode callback"}
cc=${FUZZ_CC:-clang}
out=build/fuzz
mkdir -p "$out"
command -v "$cc" >/dev/null || { echo "fuzz: $cc is missing (apt-get install clang)" >&2; exit 2; }
lua_inc=$(pkg-config --cflags-only-I lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
# the literal quotes in -D...=\"...\" are wanted: they make the macros string literals
# shellcheck disable=SC2089,SC2090
flags="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -fno-omit-frame-pointer -std=gnu99 -DKIE_VERSION=\"fuzz\" $lua_inc -Isrc"
libs="-llua5.4 -lcurl -lcrypto -lpthread"
# every core file; decode_fuzz.c includes transfer.c itself (for its static callbacks)
core_all=""
core_no_transfer=""
for f in src/*.c; do
  core_all="$core_all $f"
  [ "$f" = src/transfer.c ] || core_no_transfer="$core_no_transfer $f"
done
failed=0
for h in $harnesses; do
  # shellcheck disable=SC2089
  case "$h" in
    decode) srcs="fuzz/decode_fuzz.c $core_no_transfer" ;;
    callback) srcs="fuzz/callback_fuzz.c $core_all"; flags_h="-DKIE_LUA_DIR=\"$(pwd)/lua\"" ;;
    *) echo "fuzz: unknown harness $h" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086,SC2090
  if ! $cc $flags ${flags_h:-} $srcs -o "$out/${h}_fuzz" $libs >"$out/build-$h.log" 2>&1; then
    echo "fuzz: building $h failed:" >&2; cat "$out/build-$h.log" >&2; exit 2
  fi
  flags_h=""
  work="$out/corpus-$h"
  mkdir -p "$work"
  log="$out/$h.log"
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$out/${h}_fuzz" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -dict=fuzz/kie.dict -artifact_prefix="$out/crash-$h-" \
      "$work" "fuzz/corpus/$h" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  if [ "$rc" != 0 ]; then
    failed=$((failed + 1))
    echo "fuzz $h: FINDING after ${execs:-?} executions (exit $rc); see $log and $out/crash-$h-*"
    grep -m1 -A25 'ERROR:\|runtime error\|invariant broken' "$log" >&2
  else
    echo "fuzz $h: ${execs:-?} executions in ${secs}s, ${cov:-cov: ?}, no finding"
  fi
done
[ "$failed" = 0 ]
