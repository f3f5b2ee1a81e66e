#!/usr/bin/env bash
# Throughput of the HTTP steps, with wrk on loopback.
# Usage: [BACKEND=embedded|mariadb|postgres] [SWAPS=1] infra/bench/run.sh [seconds] [connections]
# Builds the release host and the components, starts `payfn up` on a fresh
# state directory, then runs: authorize (both shards), GET /payments/{id}.
# BACKEND=mariadb / postgres: two fresh shard databases on the local server
# (127.0.0.1:3306 root / 127.0.0.1:5432 postgres), Redis (127.0.0.1:6379)
# for kv and rate limits, and a tansu broker for events (see host.sh).
# SWAPS=1: during the authorize run, deploy a second build of authorize and
# roll it back, over and over (one change a second), to measure what hot
# swaps cost the traffic.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-15}
conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }

# shellcheck source=infra/bench/host.sh
source infra/bench/host.sh
bench_start_host
key() { ./target/release/payfn keys issue --merchant "$1" --state-dir "$state/payfn"; }
k1=$(key 1); k2=$(key 2)

swapper=
if [ "${SWAPS:-0}" = 1 ]; then
  # A second build of authorize: same code, its own build id, so another digest.
  PAYFN_BUILD_ID=bench CARGO_TARGET_DIR=target/variant-bench \
    cargo build -q --release --target wasm32-wasip2 -p authorize
  variant=target/variant-bench/wasm32-wasip2/release/authorize.wasm
  admin=(--state-dir "$state/payfn" --admin-url "$url")
  ./target/release/payfn deploy authorize "$variant" --no-activate "${admin[@]}" 2>/dev/null
  (
    n=0
    while :; do
      sleep 1
      if [ $((n % 2)) = 0 ]; then
        ./target/release/payfn deploy authorize "$variant" "${admin[@]}" 2>>"$state/swaps"
      else
        ./target/release/payfn rollback authorize "${admin[@]}" 2>>"$state/swaps"
      fi
      n=$((n + 1))
    done
  ) &
  swapper=$!
fi

echo "== authorize: POST /payments/authorize, merchants 1 and 2 (both shards), ${secs}s, ${conns} connections"
PAYFN_KEYS="$k1,$k2" wrk -t2 -c"$conns" -d"${secs}s" --latency -s infra/bench/authorize.lua "$url"
if [ -n "$swapper" ]; then
  kill "$swapper" 2>/dev/null || true
  echo "== swaps during the run: $(grep -c 'serves everyone' "$state/swaps" || true); the last ones:"
  grep 'reached' "$state/swaps" | tail -3
fi

id=$(curl -s -X POST "$url/payments/authorize" -H "Authorization: Bearer $k1" \
  -d '{"amount":1000,"currency":"KRW"}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
echo "== get: GET /payments/$id, ${secs}s, ${conns} connections"
PAYFN_KEY="$k1" PAYFN_PAYMENT="$id" wrk -t2 -c"$conns" -d"${secs}s" --latency -s infra/bench/get.lua "$url"
