#!/bin/sh
# Runs the LÖVE example against a local mock kie.ai server (nginx on 127.0.0.1;
# no key, never the real API): builds the LuaJIT core, starts the mock with slow
# responses, runs `love examples/love` (under `xvfb-run -a` when there is no
# DISPLAY or KIE_XVFB=1), then stops the mock. Exits with love's status.
#   sh examples/love/run.sh        env: KIE_TASKS (100), KIE_MAX_FRAMES (3600),
#                                  KIE_MOCK_CREATE_DELAY, KIE_MOCK_READ_DELAY, KIE_MOCK_PACE
set -eu
cd "$(dirname "$0")/../.."
root=$(pwd)
command -v love >/dev/null 2>&1 || { echo "run.sh: love is not installed (apt-get install love)" >&2; exit 2; }
make -s build LUA=luajit >/dev/null

tmp=$(mktemp -d /tmp/kie-love.XXXXXX)
key=love-example-key
KIE_API_KEY=$key lua5.4 examples/love/serve_mock.lua "$tmp/url" "$tmp/stop" $$ &
holder=$!
cleanup() { touch "$tmp/stop"; wait "$holder" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

i=0
while [ ! -s "$tmp/url" ]; do
  kill -0 "$holder" 2>/dev/null || { echo "run.sh: the mock did not start" >&2; exit 2; }
  i=$((i + 1))
  [ "$i" -gt 200 ] && { echo "run.sh: the mock did not start within 20 s" >&2; exit 2; }
  sleep 0.1
done
url=$(cat "$tmp/url")

xvfb=""
if [ -z "${DISPLAY:-}" ] || [ "${KIE_XVFB:-}" = 1 ]; then
  command -v xvfb-run >/dev/null 2>&1 || { echo "run.sh: no DISPLAY and no xvfb-run (apt-get install xvfb)" >&2; exit 2; }
  xvfb="xvfb-run -a"
fi
set +e
KIE_BASE_URL=$url KIE_API_KEY=$key KIE_ROOT=$root $xvfb love examples/love
rc=$?
set -e
exit "$rc"
