#!/usr/bin/env bash
# Saves the current release build (host and components) into DIR, for
# infra/bench/ab.sh to run later beside another build.
#
#   infra/bench/save.sh DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: infra/bench/save.sh DIR}
cargo build --release -q
./target/release/payfn build >/dev/null
mkdir -p "$dir/wasm32-wasip2/release"
cp target/release/payfn "$dir/payfn"
cp target/wasm32-wasip2/release/*.wasm "$dir/wasm32-wasip2/release/"
echo "saved $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes') into $dir"
