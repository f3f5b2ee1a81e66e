#!/usr/bin/env bash
# A local Kafka-protocol broker for development and tests: tansu, from
# crates.io, installed once into a cache outside the repo.
#
#   infra/kafka/broker.sh install         # install (about 16 minutes the first time on 2 cores)
#   infra/kafka/broker.sh path            # print the binary's path (installs if needed)
#   infra/kafka/broker.sh start [PORT]    # run in the foreground on 127.0.0.1:PORT (default 9092), in-memory storage
set -euo pipefail
version=0.6.0
# dynostore: the memory:// storage the tests and `start` use. libsql: the
# sqlite:// storage, the one engine of tansu 0.6 that keeps SCRAM
# credentials without DDL applied by hand (dynostore's upsert is a no-op),
# which the SASL_SSL test needs.
features=dynostore,libsql
root="${PAYFN_TOOLS:-$HOME/.cache/payfn/tools}"
bin="$root/bin/tansu"
# The binary's version says nothing of its features: a stamp beside it does.
stamp="$root/bin/tansu.features"

installed() {
  [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version" \
    && [ "$(cat "$stamp" 2>/dev/null)" = "$features" ]
}

install() {
  if installed; then
    return
  fi
  # One install at a time: tests start brokers in parallel, and two
  # concurrent builds of the same crate into one root take twice as long
  # and may clobber each other. Whoever waited finds the binary there.
  mkdir -p "$root"
  exec 9>"$root/.install.lock"
  flock 9
  if installed; then
    return
  fi
  echo "installing tansu $version ($features) into $root (cached for later runs)..." >&2
  cargo install tansu --version "$version" --locked --features "$features" --root "$root" --force >&2
  echo "$features" >"$stamp"
}

case "${1:-start}" in
  install) install ;;
  path) install; echo "$bin" ;;
  start)
    install
    port="${2:-9092}"
    exec "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/
    ;;
  *) echo "usage: $0 install|path|start [PORT]" >&2; exit 2 ;;
esac
