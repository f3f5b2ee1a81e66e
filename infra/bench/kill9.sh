#!/usr/bin/env bash
# kill -9 the host three times under wrk full-flow load (embedded defaults),
# then check with sqlite3: the outbox drained, every row sent is in the log,
# settlement equals the payments, and `payfn reconcile` finds no drift.
#   infra/bench/kill9.sh   (needs wrk and sqlite3; a release build)
set -uo pipefail
cd "$(dirname "$0")/../.."; command -v wrk >/dev/null || { echo "wrk missing"; exit 1; }
st=$(mktemp -d)
cp spin.toml "$st/"; sed -i "s|source = \"target/|source = \"$PWD/target/|" "$st/spin.toml"
printf '[http.rate_limits]\ndefault_capacity = 1000000000\ncomponents = {}\n' > "$st/runtime-config.toml"
P=$PWD/target/release/payfn
args=(--manifest "$st/spin.toml" --state-dir "$st/payfn" --runtime-config "$st/runtime-config.toml")
n=0
start() { n=$((n+1)); $P up --listen 127.0.0.1:3998 "${args[@]}" 2>"$st/log.$n" & pid=$!; for _ in $(seq 100); do grep -q "listening on" "$st/log.$n" && return; sleep 0.2; done; echo "no start"; cat "$st/log.$n"; exit 1; }
start
keys=$(for m in 1 2 3 4; do $P keys issue --merchant $m --state-dir "$st/payfn"; done | paste -sd,)
PAYFN_KEYS=$keys wrk -t8 -c8 -d24s -s infra/bench/full_flow.lua http://127.0.0.1:3998 > "$st/wrk.out" 2>&1 &
w=$!
for i in 1 2 3; do sleep 6; kill -9 $pid; echo "kill -9 #$i at $(date +%T)"; sleep 0.3; start; done
wait $w
cat "$st/wrk.out" | grep -E "Requests/sec|requests in|failed|Non-2xx|Socket"
dbs=$(find "$st/payfn" -name 'shard-*.db' | sort)
echo "shard files: $dbs"
for t in $(seq 120); do
  pending=0; for db in $dbs; do p=$(sqlite3 "$db" "SELECT COUNT(*) FROM outbox WHERE published = 0"); pending=$((pending+p)); done
  [ $pending = 0 ] && break; sleep 1
done
echo "outbox pending after drain: $pending (waited ${t}s)"
sleep 3
log=$(find "$st/payfn" -name 'events.db')
sent=0; for db in $dbs; do s=$(sqlite3 "$db" "SELECT COUNT(*) FROM outbox WHERE superseded_by IS NULL"); sent=$((sent+s)); done
sqlite3 "$log" "SELECT 'log records', COUNT(*), 'distinct events', COUNT(DISTINCT json_extract(value,'\$.eventId')) FROM records WHERE topic='payments'"
echo "outbox rows sent (not superseded): $sent"
missing=0
for db in $dbs; do
  sqlite3 "$db" "ATTACH '$log' AS l; CREATE TEMP TABLE ids AS SELECT DISTINCT json_extract(value,'\$.eventId') AS id FROM l.records WHERE topic='payments'; SELECT 'sent but not in the log', COUNT(*) FROM outbox o WHERE o.superseded_by IS NULL AND o.event_id NOT IN (SELECT id FROM ids)"
  sqlite3 "$db" "SELECT 'captured', (SELECT COALESCE(SUM(captured_amount),0) FROM payments), 'settled gross', (SELECT COALESCE(SUM(gross_captured),0) FROM settlements), 'refunded', (SELECT COALESCE(SUM(amount),0) FROM refunds), 'settled refunds', (SELECT COALESCE(SUM(refunded),0) FROM settlements), 'payments', (SELECT COUNT(*) FROM payments)"
done
$P reconcile "${args[@]}" 2>&1 | tail -4
echo "reconcile exit: $?"
kill $pid
