#!/bin/sh
# The whole test run behind `make test`: builds for every Lua, runs the specs,
# the sanitizer and valgrind runs, the LuaRocks install check and the nginx
# load check, and ends with one line "N passed, N failed".
#   sh scripts/test.sh            # everything
#   sh scripts/test.sh STAGE...   # only some: unit versions asan valgrind rock nginx
#                                 # threads gc fuzz (fuzz is not in the default set)
set -u
cd "$(dirname "$0")/.." || exit 2

stages=${*:-"unit versions asan valgrind rock nginx threads gc"}
# busted is a Lua script: run it with the interpreter under test, so that valgrind
# and the sanitizers see that very process.
BUSTED=$(command -v busted) || { echo "test.sh: busted is missing (make deps)" >&2; exit 2; }
out=build/test-logs
mkdir -p "$out"
passed=0
failed=0
skipped=0
failures=""

# Adds a TAP log's counts to the totals; a run that crashed counts as one failure.
tally() { # name logfile rc
  p=$(grep -c '^ok ' "$2" | tr -d ' ')
  s=$(grep -c '^ok .*# SKIP' "$2" | tr -d ' ')
  f=$(grep -c '^not ok ' "$2" | tr -d ' ')
  p=$((p - s))
  if [ "$3" != 0 ] && [ "$f" = 0 ]; then
    f=1
    echo "!! $1 exited with $3 but reported no failing test; see $2" >&2
    tail -n 30 "$2" >&2
  fi
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  [ "$f" -gt 0 ] && failures="$failures $1"
  echo "== $1: $p passed, $f failed, $s skipped"
  if [ "$f" -gt 0 ]; then
    grep -A12 '^not ok ' "$2" | head -n 80 >&2
  fi
}

# One pass/fail check that is not a busted run.
check() { # name command...
  name=$1; shift
  log="$out/$name.log"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1)); echo "== $name: ok"
  else
    failed=$((failed + 1)); failures="$failures $name"
    echo "== $name: FAILED"; tail -n 30 "$log" >&2
  fi
}

build() { # lua [SAN flags]: kie.core, and kie.redis (fleet mode, hiredis) for the fleet specs
  make -s build build-fleet LUA="$1" ${2:+SAN="$2"} WERROR=1 >"$out/build-$1${2:+-san}.log" 2>&1
}

run_busted() { # name lua cpath-dir [busted args...]
  name=$1 lua=$2 dir=$3; shift 3
  log="$out/$name.log"
  "$lua" "$BUSTED" --cpath="./$dir/?.so" -o TAP "$@" >"$log" 2>&1
  tally "$name" "$log" $?
}

for st in $stages; do
  case "$st" in
  unit)
    check build-lua5.4 build lua5.4
    check build-luajit build luajit # for the nginx specs
    check docs make -s docs
    run_busted "specs-lua5.4" lua5.4 build/lua5.4 spec
    ;;
  versions)
    for v in lua5.1 lua5.2 lua5.3 luajit; do
      check "build-$v" build "$v"
      # the examples (demo, C host, LÖVE) run their own interpreters: once is enough; so
      # does the fleet across network namespaces (#netns: the same code as fleet_processes)
      # and the Redis outage proof (#outage, 45 s: Lua only, its C paths are in redis_spec)
      run_busted "specs-$v" "$v" "build/$v" --exclude-tags=examples,netns,outage spec
    done
    ;;
  asan)
    SANF="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
    check build-asan build lua5.4 "$SANF"
    pre="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
    # the mock's nginx is started with LD_PRELOAD removed (see spec/support/mock.lua)
    log="$out/specs-asan.log"
    # (#netns: faketime's LD_PRELOAD would come before ASan's in the workers it skews)
    # Leaks are valgrind's job (stage valgrind): LeakSanitizer's exit-time tracer
    # crashes intermittently here ("Tracer caught signal 11") on a clean run.
    LD_PRELOAD="$pre" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86" \
      UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      lua5.4 "$BUSTED" --cpath="./build/lua5.4-san/?.so" -o TAP --exclude-tags=examples,netns,outage spec >"$log" 2>&1
    rc=$?
    tally specs-asan "$log" $rc
    if grep -q "ERROR: AddressSanitizer\|runtime error:\|ERROR: LeakSanitizer" "$log"; then
      failed=$((failed + 1)); failures="$failures asan-report"
      grep -A20 "ERROR: AddressSanitizer\|runtime error:\|ERROR: LeakSanitizer" "$log" | head -60 >&2
    fi
    ;;
  valgrind)
    check build-lua5.4 build lua5.4
    log="$out/specs-valgrind.log"
    valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite \
      --show-leak-kinds=definite --error-exitcode=99 --log-file="$out/valgrind.txt" \
      lua5.4 "$BUSTED" --cpath="./build/lua5.4/?.so" -o TAP --tags=core spec >"$log" 2>&1
    rc=$?
    tally specs-valgrind "$log" $rc
    if [ -s "$out/valgrind.txt" ]; then
      failed=$((failed + 1)); failures="$failures valgrind-report"
      head -n 60 "$out/valgrind.txt" >&2
    fi
    ;;
  rock)
    check luarocks-make sh scripts/check-rock.sh
    ;;
  nginx)
    check build-luajit build luajit
    check nginx-loads-core sh scripts/check-nginx-load.sh
    ;;
  threads)
    check test-threads sh tests/threads/run.sh
    ;;
  gc)
    # the suite again under an aggressive generational collector (make test-gc)
    check build-lua5.4 build lua5.4
    log="$out/specs-gc.log"
    lua5.4 -e 'collectgarbage("generational", 1, 10)' "$BUSTED" --cpath="./build/lua5.4/?.so" \
      -o TAP --exclude-tags=examples,netns,outage $(ls spec/*_spec.lua | grep -v -e cli_spec -e ngx_spec -e ngx_fleet_spec \
      -e mock_spec -e demo_spec -e host_spec -e love_spec) >"$log" 2>&1
    tally specs-gc "$log" $?
    ;;
  fuzz)
    check fuzz env FUZZ_SECONDS="${FUZZ_SECONDS:-60}" sh fuzz/run.sh
    ;;
  *)
    echo "test.sh: unknown stage $st" >&2; exit 2 ;;
  esac
done

[ -n "$failures" ] && echo "failing:$failures"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
