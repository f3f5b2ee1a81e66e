#!/usr/bin/env bash
# The cut-over pause and copy rate of an online merchant move (issue 18,
# docs/BENCHMARKS.md "Merchant moves"): BACKEND=embedded|mariadb|postgres
# (see host.sh).
#
#   [BACKEND=...] [PAYMENTS=100000] [RATE=800] [LOAD_RATE=200] [LOAD_SECONDS=150] \
#     infra/bench/move.sh
#
# 1. Merchant 1 (placed on shard-2) takes authorize+capture iterations
#    (`payfn bench --merchants 1` at RATE/s, 30 s at a time) until it has
#    PAYMENTS payments.
# 2. It moves to shard-1 with no other load: `payfn shards move` prints the
#    steps, the rows copied and the writes' pause (frozen until switched).
# 3. It moves back to shard-2 while `payfn bench` offers LOAD_RATE/s of
#    authorize+capture over merchants 1-100 (itself included) for
#    LOAD_SECONDS, which must outlast the move (the script says if it did
#    not): the pause under load, and the load's errors (only merchant 1's
#    bounded 503s may be among them).
set -euo pipefail
cd "$(dirname "$0")/../.."
payments=${PAYMENTS:-100000} rate=${RATE:-800} load_rate=${LOAD_RATE:-200}
load_seconds=${LOAD_SECONDS:-150}
# shellcheck source=infra/bench/host.sh
source infra/bench/host.sh
bench_start_host
payfn=${PAYFN:-./target/release/payfn}
admin=(--admin-url "$url" "${app_args[@]}")
payments_of_merchant() {
  "$payfn" shards status --json "${admin[@]}" | python3 -c '
import json, sys
print(sum(s["payments"] for s in json.load(sys.stdin)["shards"]))'
}
echo "== merchant 1: $payments payments (authorize+capture at $rate/s, 30 s at a time)"
while [ "$(payments_of_merchant)" -lt "$payments" ]; do
  "$payfn" bench --url "$url" "${app_args[@]}" --scenario authorize-capture --rate "$rate" \
    --duration 30s --merchants 1 | grep -E "requests in|^pipeline-json" || true
done
"$payfn" shards status "${admin[@]}"
echo "== move merchant 1 to shard-1, no other load"
started=$(date +%s.%N)
"$payfn" shards move --merchant 1 --to shard-1 "${admin[@]}"
echo "move took $(echo "$(date +%s.%N) - $started" | bc) s"
echo "== move merchant 1 back to shard-2 under $load_rate it/s over merchants 1-100"
"$payfn" bench --url "$url" "${app_args[@]}" --scenario authorize-capture --rate "$load_rate" \
  --duration "${load_seconds}s" --merchants 100 > "$state/load.out" 2>&1 &
load=$!
sleep 5
started=$(date +%s.%N)
"$payfn" shards move --merchant 1 --to shard-2 "${admin[@]}"
echo "move took $(echo "$(date +%s.%N) - $started" | bc) s"
if ! kill -0 "$load" 2>/dev/null; then
  echo "NOTE: the load ended before the move did: raise LOAD_SECONDS for a pause under load"
fi
wait "$load" || true
# The load's figures, its errors, and the outbox and settlement lag beside it.
cat "$state/load.out"
"$payfn" shards status "${admin[@]}"
