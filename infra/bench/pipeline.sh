#!/usr/bin/env bash
# Issue 17's pipeline goal (docs/BENCHMARKS.md, "Issue 17"): the steps and
# the asynchronous half together, on a fresh release host per run.
#
#   [BACKEND=embedded|mariadb] [PEAK_RATE=R] [SECS=60] infra/bench/pipeline.sh
#
# 1. The full flow's peak: `payfn bench --scenario full` offered PEAK_RATE
#    iterations/s (default 3,000, above what 2 cores take) for SECS, 100
#    merchants; the peak is what it completed (requests/s / 3).
# 2. SECS at 90 % of that peak with 1 merchant, then with 1,000.
# Each run samples the outbox lag and the settlement consumer's lag every
# 250 ms and waits for both to drain (see seed.sh); the summary prints
# p50/p99/max of each and the drain. Goal: outbox lag p99 < 1 s, settlement
# lag p99 < 2 s, outbox empty within 2 s of the load's end.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${SECS:-60}
command -v jq >/dev/null || { echo "jq is required (apt-get install jq)" >&2; exit 1; }
# shellcheck source=infra/bench/host.sh
source infra/bench/host.sh
out="target/bench"
mkdir -p "$out"
lines=()
run() {
  local name=$1; shift
  bench_start_host
  echo "== $name: payfn bench $*"
  ./target/release/payfn bench --url "$url" "${app_args[@]}" --json "$out/${BACKEND:-embedded}-$name.json" "$@" \
    | tee "$out/${BACKEND:-embedded}-$name.out"
  lines+=("$name $(grep '^pipeline-json: ' "$out/${BACKEND:-embedded}-$name.out" | sed 's/^pipeline-json: //')")
  bench_stop_host
  PAYFN=./target/release/payfn   # built once
}
summary() {
  echo "== ${BACKEND:-embedded}: p50/p99/max seconds during the load; drain after it"
  local entry name json
  for entry in "${lines[@]}"; do
    name=${entry%% *}; json=${entry#* }
    jq -r --arg name "$name" '
      def q: if . == null then "-" else "\(.p50)/\(.p99)/\(.max)" end;
      "\($name): \(.requests_per_sec | floor) req/s (\(.requests_per_sec / 3 | floor) it/s); outbox lag \(.outbox_lag_s | q); settlement lag \(.consumer_lag_s | q); " +
      (if .drain == null then "drain not waited for"
       elif .drain.drained then "drained in \(.drain.seconds * 100 | round / 100) s"
       else "NOT drained after \(.drain.seconds) s" end)
    ' <<<"$json"
  done
}
trap 'summary; bench_cleanup' EXIT
run peak --scenario full --rate "${PEAK_RATE:-3000}" --duration "${secs}s" --merchants 100
peak=$(jq -r '.requests_per_sec / 3' "$out/${BACKEND:-embedded}-peak.json")
rate=$(awk -v p="$peak" 'BEGIN { printf "%d", p * 0.9 }')
echo "== peak: $peak it/s; 90 %: $rate it/s"
run one-merchant --scenario full --rate "$rate" --duration "${secs}s" --merchants 1
run thousand-merchants --scenario full --rate "$rate" --duration "${secs}s" --merchants 1000
