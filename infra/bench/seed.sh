#!/usr/bin/env bash
# The seed's k6 scenarios, replayed with `payfn bench` (open model) against
# a release host: BACKEND=embedded|mariadb|postgres (see host.sh).
#
#   [BACKEND=...] [AUTHORIZE=R] [AUTHORIZE_CAPTURE=R] [FULL=R] infra/bench/seed.sh [seconds]
#
# Runs, each on the same fresh host, at steady arrival rates (open model:
# what the host cannot take is dropped and counted): authorize at 1,000/s
# (the p99 goal), then each scenario at a rate above what the host can take,
# so req/s is its capacity: authorize at $AUTHORIZE/s (default 6,000),
# authorize+capture at $AUTHORIZE_CAPTURE iterations/s (2,500) and the full
# flow (authorize, capture, refund) at $FULL iterations/s (1,800). JSON
# summaries go to target/bench/<backend>-<scenario>.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-15}
# shellcheck source=infra/bench/host.sh
source infra/bench/host.sh
bench_start_host
out="target/bench"
mkdir -p "$out"
# The asynchronous half after a run: what the relay has not yet published
# and how far the settlement consumer is behind (embedded log, with the
# sqlite3 CLI). Lag that only shrinks afterwards is a burst the pipeline
# absorbs; lag that grows run after run is a pipeline slower than the steps.
pipeline() {
  local pending handled
  pending=$(curl -s "$url/metrics" | awk '/^payfn_outbox_pending/ {s += $2} END {print s + 0}')
  handled=$(curl -s "$url/metrics" | awk '/^payfn_kafka_records_handled_total/ {s += $2} END {print s + 0}')
  local line="pipeline: outbox unpublished $pending, settlement consumer handled $handled records so far"
  if [ "${BACKEND:-embedded}" = embedded ] && command -v sqlite3 >/dev/null; then
    line+=" of $(sqlite3 "$state/payfn/events.db" "SELECT COUNT(*) FROM records WHERE topic = 'payments'") in the log"
  fi
  echo "$line"
}
run() {
  local name=$1; shift
  echo "== $name: payfn bench $*"
  ./target/release/payfn bench --url "$url" "${app_args[@]}" --json "$out/${BACKEND:-embedded}-$name.json" "$@"
  pipeline
  sleep 2
}
run authorize-steady --scenario authorize --rate 1000 --duration 20s
run authorize-peak --scenario authorize --rate "${AUTHORIZE:-6000}" --duration "${secs}s"
run authorize-capture-peak --scenario authorize-capture --rate "${AUTHORIZE_CAPTURE:-2500}" --duration "${secs}s"
run full-peak --scenario full --rate "${FULL:-1800}" --duration "${secs}s"
