#!/usr/bin/env bash
# Interleaved A/B comparison of two saved host builds: this machine's speed
# drifts by tens of percent within an hour, so a single before/after pair
# measures the drift as much as the change.
#
#   [BACKEND=...] infra/bench/ab.sh A-binary B-binary [rounds] [scenario] [rate] [seconds]
#
# Each round starts a fresh host on A, then on B (see host.sh), and offers
# `scenario` (default authorize) at `rate` (default 6,000/s, above capacity)
# for `seconds` (default 15). Prints each run's req/s and, per build, the
# median. A and B are host binaries (`cp target/release/payfn /tmp/payfn-A`;
# both then run the components as built now) or build directories saved
# with `infra/bench/save.sh DIR` (host and components, for changes to
# either).
set -euo pipefail
cd "$(dirname "$0")/../.."
a=$1 b=$2 rounds=${3:-3} scenario=${4:-authorize} rate=${5:-6000} secs=${6:-15}
# Saved build directories carry their own components; a bare binary runs
# the components built now.
if [ ! -d "$a" ] || [ ! -d "$b" ]; then
  cargo build --release -q
  ./target/release/payfn build >/dev/null 2>&1
fi
declare -A results
for round in $(seq "$rounds"); do
  for side in A B; do
    bin=$a; [ "$side" = B ] && bin=$b
    components=""
    if [ -d "$bin" ]; then components=$(cd "$bin" && pwd); bin=$components/payfn; fi
    line=$(PAYFN=$bin COMPONENTS=$components bash -c '
      source infra/bench/host.sh
      bench_start_host >/dev/null
      "$PAYFN" bench --url "$url" "${app_args[@]}" --scenario "$1" --rate "$2" --duration "$3s" 2>&1 | grep "requests in"
    ' _ "$scenario" "$rate" "$secs")
    rps=$(sed -E 's/.*: ([0-9]+) req\/s.*/\1/' <<<"$line")
    results[$side]+="$rps "
    echo "round $round $side: $line"
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "median req/s: A $(median "${results[A]}")  B $(median "${results[B]}")  ($scenario at $rate/s, $rounds rounds)"
