#!/usr/bin/env bash
# Peer comparison on identical work: the no-op wasi:http component
# (tests/components/noop) served by `wasmtime serve` and by `payfn up`, one
# after the other in this run, each loaded the same way.
#
#   infra/bench/peer.sh [seconds] [connections] [rate]
#
# Load: wrk (1 thread, CONNECTIONS connections: the closed-loop peak), then
# `payfn bench --scenario noop` at RATE requests/s (open model: latency from
# the scheduled send time). wasmtime-cli is the version payfn embeds, from
# crates.io, installed once into ~/.cache/payfn/tools (about 15 minutes).
# Both hosts use their defaults: payfn also checks the merchant key and the
# rate limit (set out of the way) on every request, as it does in production.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-15}
conns=${2:-32}
rate=${3:-3000}
version=48.0.8
root="${PAYFN_TOOLS:-$HOME/.cache/payfn/tools}"
wasmtime="$root/bin/wasmtime"
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
if ! { [ -x "$wasmtime" ] && "$wasmtime" --version | grep -q "$version"; }; then
  echo "installing wasmtime-cli $version into $root (cached for later runs)..." >&2
  cargo install wasmtime-cli --version "$version" --locked --root "$root" >&2
fi

cargo build --release -q
cargo build --release -q --target wasm32-wasip2 -p test-noop
wasm="$PWD/target/wasm32-wasip2/release/test_noop.wasm"
state=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$state"' EXIT
cat > "$state/spin.toml" <<TOML
spin_manifest_version = 2
[application]
name = "noop"
version = "0.1.0"
[[trigger.http]]
route = "/noop"
component = "noop"
[component.noop]
source = "$wasm"
TOML
cat > "$state/runtime-config.toml" <<'TOML'
[http.rate_limits]
default_capacity = 1000000000
components = {}
TOML

"$wasmtime" serve -Scli --addr 127.0.0.1:3998 "$wasm" 2>"$state/wasmtime.log" &
pids+=($!)
./target/release/payfn up --listen 127.0.0.1:3999 --manifest "$state/spin.toml" \
  --state-dir "$state/payfn" --runtime-config "$state/runtime-config.toml" 2>"$state/payfn.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$state/payfn.log" 2>/dev/null && break; sleep 0.2; done
for _ in $(seq 100); do curl -sf http://127.0.0.1:3998/noop >/dev/null && break; sleep 0.2; done
key=$(./target/release/payfn keys issue --merchant 1 --state-dir "$state/payfn")
# --no-pipeline: no /metrics scrapes during the run (wasmtime serve has none,
# and the comparison must load both hosts alike).
bench_args=(--manifest "$state/spin.toml" --state-dir "$state/payfn" --runtime-config "$state/runtime-config.toml"
  --no-pipeline)

peak() { wrk -t1 -c"$conns" -d"${secs}s" -H "Authorization: Bearer $key" "$1/noop" | tee /dev/stderr | awk '/Requests\/sec/ {print $2}'; }
echo "== wrk -t1 -c$conns -d${secs}s GET /noop" >&2
echo "-- wasmtime serve -Scli ($("$wasmtime" --version))" >&2
w=$(peak http://127.0.0.1:3998)
echo "-- payfn up" >&2
p=$(peak http://127.0.0.1:3999)
echo "== payfn bench --scenario noop --rate $rate --duration ${secs}s" >&2
echo "-- wasmtime serve" >&2
./target/release/payfn bench --scenario noop --rate "$rate" --duration "${secs}s" --url http://127.0.0.1:3998 "${bench_args[@]}"
echo "-- payfn up" >&2
./target/release/payfn bench --scenario noop --rate "$rate" --duration "${secs}s" --url http://127.0.0.1:3999 "${bench_args[@]}"
echo "== peak req/s: wasmtime serve $w, payfn $p, payfn/wasmtime $(awk -v p="$p" -v w="$w" 'BEGIN {printf "%.2f", p / w}')"
