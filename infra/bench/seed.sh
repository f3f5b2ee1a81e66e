#!/usr/bin/env bash
# The seed's k6 scenarios, replayed with `payfn bench` (open model) against
# a release host: BACKEND=embedded|mariadb|postgres (see host.sh).
#
#   [BACKEND=...] infra/bench/seed.sh [seconds]
#
# Runs, each on the same fresh host: authorize at a steady 1,000/s (the p99
# goal), authorize ramping 500 -> 8,000/s (the peak), authorize+capture
# ramping 250 -> 3,000 iterations/s, and the full flow (authorize, capture,
# refund) ramping 200 -> 2,500 iterations/s. JSON summaries go to
# target/bench/<backend>-<scenario>.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}
# shellcheck source=infra/bench/host.sh
source infra/bench/host.sh
bench_start_host
out="target/bench"
mkdir -p "$out"
run() {
  local name=$1; shift
  echo "== $name: payfn bench $*"
  ./target/release/payfn bench --url "$url" "${app_args[@]}" --json "$out/${BACKEND:-embedded}-$name.json" "$@"
  sleep 2
}
run authorize-steady --scenario authorize --rate 1000 --duration 20s
run authorize-ramp --scenario authorize --rate 500 --ramp-to 8000 --duration "${secs}s"
run authorize-capture-ramp --scenario authorize-capture --rate 250 --ramp-to 3000 --duration "${secs}s"
run full-ramp --scenario full --rate 200 --ramp-to 2500 --duration "${secs}s"
