#!/bin/sh
# Peer: the curl CLI, one process for the whole run, requests from a config file.
#   sh bench/clients/curl_cli.sh seq  URL N REQUEST_FILE [CA_FILE]   N x (create, get), one connection
#   sh bench/clients/curl_cli.sh conc URL N REQUEST_FILE P           N creates, --parallel-max P
# No JSON decoding (curl only transfers). Prints "requests=<n> seconds=<s>": the wall
# time of the curl process (its start-up and config parsing included).
set -eu
mode=$1 url=$2 n=$3 reqfile=$4 extra=${5:-}
key=bench-key-0b5e9c
cfg=$(mktemp "${TMPDIR:-/tmp}/kie-bench-curl.XXXXXX")
trap 'rm -f "$cfg"' EXIT
# options do not carry over a `next`: each request repeats its headers (and --cacert)
cacert=""
[ "$mode" = seq ] && [ -n "$extra" ] && cacert=$extra
awk -v n="$n" -v url="$url" -v key="$key" -v req="$reqfile" -v mode="$mode" -v ca="$cacert" 'BEGIN {
  for (i = 1; i <= n; i++) {
    if (i > 1) print "next"
    print "url = \"" url "/api/v1/jobs/createTask\""
    if (ca != "") print "cacert = \"" ca "\""
    print "data-binary = \"@" req "\""
    print "header = \"Content-Type: application/json\""
    print "header = \"Accept: application/json\""
    print "header = \"Authorization: Bearer " key "\""
    print "output = \"/dev/null\""
    if (mode == "seq") {
      print "next"
      print "url = \"" url "/api/v1/jobs/recordInfo?taskId=task_ideogram_1765179922911\""
      if (ca != "") print "cacert = \"" ca "\""
      print "header = \"Accept: application/json\""
      print "header = \"Authorization: Bearer " key "\""
      print "output = \"/dev/null\""
    }
  }
}' > "$cfg"
case "$mode" in
  seq)  opts="" ; reqs=$((2 * n)) ;;
  conc) opts="--parallel --parallel-max $extra" ; reqs=$n ;;
  *) echo "curl_cli.sh: unknown mode $mode" >&2; exit 2 ;;
esac
t0=$(date +%s.%N)
# shellcheck disable=SC2086
curl -s -S --no-progress-meter --fail $opts -K "$cfg" >/dev/null
t1=$(date +%s.%N)
awk -v r="$reqs" -v a="$t0" -v b="$t1" 'BEGIN { printf "requests=%d seconds=%.6f\n", r, b - a }'
