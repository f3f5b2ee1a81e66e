#!/usr/bin/env bash
# Throughput of the HTTP steps, with wrk on loopback.
# Usage: [BACKEND=embedded|mariadb|postgres] infra/bench/run.sh [seconds] [connections]
# Builds the release host and the components, starts `payfn up` on a fresh
# state directory, then runs: authorize (both shards), GET /payments/{id}.
# BACKEND=mariadb / postgres: two fresh shard databases on the local server
# (127.0.0.1:3306 root / 127.0.0.1:5432 postgres) and Redis (127.0.0.1:6379)
# for kv and rate limits; events stay on the embedded log.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-15}
conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q
state=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$state"' EXIT
cat > "$state/bench.toml" <<'TOML'
# Rate limits out of the way: the benchmark measures the steps.
[http.rate_limits]
default_capacity = 1000000000
components = {}
TOML
backend=${BACKEND:-embedded}
case "$backend" in
  embedded) ;;
  mariadb|postgres)
    for n in 1 2; do
      if [ "$backend" = mariadb ]; then
        mysql -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS payfn_bench_$n; CREATE DATABASE payfn_bench_$n"
        url="mysql://root@127.0.0.1:3306/payfn_bench_$n"; dialect=mysql
      else
        psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS payfn_bench_$n WITH (FORCE)" -c "CREATE DATABASE payfn_bench_$n"
        url="postgres://postgres@127.0.0.1:5432/payfn_bench_$n"; dialect=postgres
      fi
      printf '[[shards]]\nname = "shard-%s"\nbackend = "%s"\nurl = "%s"\nmax_connections = 64\n\n' "$n" "$dialect" "$url" >> "$state/bench.toml"
    done
    printf '[kv]\nbackend = "redis"\nurl = "redis://127.0.0.1:6379/"\nprefix = "payfn-bench-%s:"\n' "$$" >> "$state/bench.toml"
    ;;
  *) echo "BACKEND must be embedded, mariadb or postgres" >&2; exit 1 ;;
esac
echo "== backend: $backend"
./target/release/payfn build >/dev/null 2>&1
./target/release/payfn up --listen 127.0.0.1:3999 --state-dir "$state" --runtime-config "$state/bench.toml" 2>"$state/log" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$state/log" 2>/dev/null && break; sleep 0.2; done
key() { ./target/release/payfn keys issue --merchant "$1" --state-dir "$state"; }
k1=$(key 1); k2=$(key 2)

echo "== authorize: POST /payments/authorize, merchants 1 and 2 (both shards), ${secs}s, ${conns} connections"
PAYFN_KEYS="$k1,$k2" wrk -t2 -c"$conns" -d"${secs}s" --latency -s infra/bench/authorize.lua http://127.0.0.1:3999

id=$(curl -s -X POST http://127.0.0.1:3999/payments/authorize -H "Authorization: Bearer $k1" \
  -d '{"amount":1000,"currency":"KRW"}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
echo "== get: GET /payments/$id, ${secs}s, ${conns} connections"
PAYFN_KEY="$k1" PAYFN_PAYMENT="$id" wrk -t2 -c"$conns" -d"${secs}s" --latency -s infra/bench/get.lua http://127.0.0.1:3999
