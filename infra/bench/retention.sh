#!/usr/bin/env bash
# Issue 17, part 7: does purging lower the full-flow peak? Alternating runs
# on fresh embedded hosts, retention off and purging everything older than
# 1 s every second (far more than the defaults ever purge), each the full
# flow offered above capacity for SECS (default 30).
#
#   PAYFN=./target/release/payfn infra/bench/retention.sh [rounds]
set -uo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
secs=${SECS:-30}
export PAYFN=${PAYFN:-./target/release/payfn}
on=$'[retention]\nenabled = true\nidempotency = "1s"\noutbox = "1s"\nprocessed_events = "1s"\ninterval = "1s"'
off=$'[retention]\nenabled = false'
for round in $(seq "$rounds"); do
  for mode in off on; do
    if [ "$mode" = on ]; then cfg=$on; else cfg=$off; fi
    out=$(EXTRA_CONFIG="$cfg" SECS="$secs" bash -c '
      source infra/bench/host.sh
      bench_start_host >/dev/null
      "$PAYFN" bench --url "$url" "${app_args[@]}" --scenario full --rate 3000 --duration "${SECS}s" \
        --merchants 100 --drain-timeout 0s 2>&1
      curl -s "$url/metrics" | grep "^payfn_retention_purged_total"')
    rps=$(grep -oE "[0-9]+ req/s;" <<<"$out" | head -1)
    purged=$(grep "^payfn_retention_purged_total" <<<"$out" | awk '{s += $2} END {print s + 0}')
    echo "round $round, retention $mode: ${rps%;}, $purged rows purged"
  done
done
