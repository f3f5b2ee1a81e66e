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
# The asynchronous half: `payfn bench` scrapes the host's /metrics every
# 250 ms while it runs (outbox lag: age of the oldest unpublished row; the
# settlement consumer's lag: age of the oldest record it has not committed
# past), prints p50/p99/max of each, then waits (at most 120 s) for both to
# drain. Lag that drains in a few seconds is a burst the pipeline absorbs;
# "not drained" is a pipeline slower than the steps. Each run's
# `pipeline-json:` line is kept for the summary at the end.
lags=()
run() {
  local name=$1; shift
  echo "== $name: payfn bench $*"
  ./target/release/payfn bench --url "$url" "${app_args[@]}" --json "$out/${BACKEND:-embedded}-$name.json" "$@" \
    | tee "$state/$name.out"
  lags+=("$name $(grep '^pipeline-json: ' "$state/$name.out" | sed 's/^pipeline-json: //' || true)")
  sleep 2
}
# One line per run: scenario, req/s, outbox and consumer lag (p50/p99/max,
# seconds) during the load, and the drain after it.
summary() {
  echo "== pipeline lag per run (${BACKEND:-embedded}): p50/p99/max seconds during the load; drain after it"
  local entry name json
  for entry in "${lags[@]}"; do
    name=${entry%% *}; json=${entry#* }
    if command -v jq >/dev/null && [ -n "$json" ] && [ "$json" != "$name" ]; then
      jq -r --arg name "$name" '
        def q: if . == null then "-" else "\(.p50)/\(.p99)/\(.max)" end;
        "\($name) (\(.scenario)): \(.requests_per_sec | floor) req/s; outbox lag \(.outbox_lag_s | q); consumer lag \(.consumer_lag_s | q); " +
        (if .drain == null then "drain not waited for"
         elif .drain.drained then "drained in \(.drain.seconds * 100 | round / 100) s"
         else "NOT drained after \(.drain.seconds) s: outbox \(.drain.outbox_pending) pending, consumer \(.drain.consumer_lag_records) records behind" end)
      ' <<<"$json"
    else
      echo "$entry"
    fi
  done
}
trap 'summary; bench_cleanup' EXIT
run authorize-steady --scenario authorize --rate 1000 --duration 20s
run authorize-peak --scenario authorize --rate "${AUTHORIZE:-6000}" --duration "${secs}s"
run authorize-capture-peak --scenario authorize-capture --rate "${AUTHORIZE_CAPTURE:-2500}" --duration "${secs}s"
run full-peak --scenario full --rate "${FULL:-1800}" --duration "${secs}s"
