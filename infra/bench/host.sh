# Sourced by the bench scripts: starts a release `payfn up` for benchmarking.
#
#   BACKEND=embedded   two SQLite shards (synchronous = FULL), in-process kv,
#                      the embedded event log: the zero-setup defaults
#   BACKEND=mariadb    two fresh databases on 127.0.0.1:3306 (durable commits:
#   BACKEND=postgres   the server's defaults) or 127.0.0.1:5432, pools of 64,
#                      Redis (127.0.0.1:6379) for kv and rate limits, and a
#                      tansu Kafka broker of the run's own (in-memory
#                      storage, infra/kafka/broker.sh) for events
#
# PAYFN=path runs that binary instead of the fresh release build, and
# COMPONENTS=dir the components under dir/wasm32-wasip2/release instead of
# target/'s (the A/B comparison, ab.sh, runs two saved builds in turn).
#
# FSYNC_DELAY_US=n delays every fsync of the host by n microseconds (an
# LD_PRELOAD shim, infra/bench/slow_fsync.c, built with the machine's cc):
# what a slower disk than this machine's would do to the embedded shards.
#
# EXTRA_CONFIG='...' appends to the run's runtime config (say a [retention]
# section that purges as it goes).
#
# MARIADB_BUFFER_POOL=2G sizes MariaDB's InnoDB buffer pool before the run
# (SET GLOBAL: the server keeps it until it restarts). The server's default,
# 128 MiB, holds less than one 100k-payment merchant: a production server is
# sized to hold its working set, and the merchant-move figures are taken so.
# The size in force is printed either way.
#
# POSTGRES_AUTOVACUUM=on turns PostgreSQL's autovacuum on for the run
# (ALTER SYSTEM, reset at exit). This class of machine runs PostgreSQL with
# `autovacuum = off` (/etc/postgresql/*/main/conf.d/90-ci.conf): dead row
# versions then pile up with every capture and every published outbox row,
# and the steps slow down as the tables grow (a one-merchant load fell from
# 300 to 120 it/s within 4 minutes). Production runs autovacuum. The
# setting in force is printed either way.
#
# KEEP_STATE=1 keeps the run's state directory (the embedded shards, the
# logs) at exit and prints where it is, to look into afterwards.
#
# Rate limits are lifted: the benchmark measures the steps. Sets `state`
# (a temporary directory), `url` and `app_args` (for `payfn keys`/`bench`);
# everything started is stopped on exit.
bench_pids=()
state=""
bench_autovacuum_set=""
bench_cleanup() {
  kill "${bench_pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  if [ -n "$bench_autovacuum_set" ]; then
    psql -q -h 127.0.0.1 -U postgres -c "ALTER SYSTEM RESET autovacuum" -c "SELECT pg_reload_conf()" >/dev/null
    bench_autovacuum_set=""
  fi
  if [ -n "${KEEP_STATE:-}" ] && [ -n "$state" ]; then echo "== state kept in $state" >&2; return; fi
  [ -z "$state" ] || rm -rf "$state"
}
trap bench_cleanup EXIT

# Stops what bench_start_host started and removes its state (a script that
# wants a fresh host per run calls this between runs).
bench_stop_host() { bench_cleanup; bench_pids=(); state=""; }

bench_start_host() {
  local backend=${BACKEND:-embedded} port=${PORT:-3999}
  if [ -z "${PAYFN:-}" ]; then
    cargo build --release -q
    ./target/release/payfn build >/dev/null 2>&1
  fi
  local payfn=${PAYFN:-./target/release/payfn}
  state=$(mktemp -d)
  cp spin.toml "$state/spin.toml"
  sed -i "s|source = \"target/|source = \"${COMPONENTS:-$PWD/target}/|" "$state/spin.toml"
  cat > "$state/runtime-config.toml" <<'TOML'
[http.rate_limits]
default_capacity = 1000000000
components = {}
TOML
  case "$backend" in
    embedded) ;;
    mariadb|postgres)
      local n db_url dialect
      if [ "$backend" = mariadb ]; then
        if [ -n "${MARIADB_BUFFER_POOL:-}" ]; then
          local bytes
          bytes=$(numfmt --from=iec "$MARIADB_BUFFER_POOL")
          mysql -h 127.0.0.1 -u root -e "SET GLOBAL innodb_buffer_pool_size = $bytes"
        fi
        echo "mariadb: innodb_buffer_pool_size $(mysql -h 127.0.0.1 -u root -N -e \
          'SELECT @@innodb_buffer_pool_size' | numfmt --to=iec)"
      else
        if [ "${POSTGRES_AUTOVACUUM:-}" = on ]; then
          psql -q -h 127.0.0.1 -U postgres -c "ALTER SYSTEM SET autovacuum = on" \
            -c "SELECT pg_reload_conf()" >/dev/null
          bench_autovacuum_set=1
          sleep 1
        fi
        echo "postgresql: autovacuum $(psql -h 127.0.0.1 -U postgres -tAc 'SHOW autovacuum')"
      fi
      for n in 1 2; do
        if [ "$backend" = mariadb ]; then
          mysql -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS payfn_bench_$n; CREATE DATABASE payfn_bench_$n"
          db_url="mysql://root@127.0.0.1:3306/payfn_bench_$n"; dialect=mysql
        else
          psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS payfn_bench_$n WITH (FORCE)" \
            -c "CREATE DATABASE payfn_bench_$n"
          db_url="postgres://postgres@127.0.0.1:5432/payfn_bench_$n"; dialect=postgres
        fi
        printf '[[shards]]\nname = "shard-%s"\nbackend = "%s"\nurl = "%s"\nmax_connections = %s\n\n' \
          "$n" "$dialect" "$db_url" "${SHARD_POOL:-64}" >> "$state/runtime-config.toml"
      done
      printf '[kv]\nbackend = "redis"\nurl = "redis://127.0.0.1:6379/"\nprefix = "payfn-bench-%s:"\n\n' "$$" \
        >> "$state/runtime-config.toml"
      local kafka_port=$((port + 5000))
      infra/kafka/broker.sh start "$kafka_port" >"$state/tansu.log" 2>&1 &
      bench_pids+=($!)
      for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null && break; sleep 0.1; done
      printf '[kafka]\nbackend = "kafka"\nbrokers = "127.0.0.1:%s"\npartitions = 4\n' "$kafka_port" \
        >> "$state/runtime-config.toml"
      ;;
    *) echo "BACKEND must be embedded, mariadb or postgres" >&2; exit 1 ;;
  esac
  # EXTRA_CONFIG: more runtime config for this run (e.g. a [retention] section).
  if [ -n "${EXTRA_CONFIG:-}" ]; then printf '%s\n' "$EXTRA_CONFIG" >> "$state/runtime-config.toml"; fi
  app_args=(--manifest "$state/spin.toml" --state-dir "$state/payfn" --runtime-config "$state/runtime-config.toml")
  local preload=""
  if [ -n "${FSYNC_DELAY_US:-}" ]; then
    preload="$state/slow_fsync.so"
    cc -O2 -shared -fPIC -o "$preload" infra/bench/slow_fsync.c -ldl
    echo "== every fsync of the host delayed by ${FSYNC_DELAY_US} us"
  fi
  LD_PRELOAD="$preload" "$payfn" up --listen "127.0.0.1:$port" "${app_args[@]}" 2>"$state/log" &
  bench_pids+=($!)
  for _ in $(seq 150); do grep -q "listening on" "$state/log" 2>/dev/null && break; sleep 0.2; done
  grep -q "listening on" "$state/log" || { cat "$state/log" >&2; echo "payfn did not start" >&2; exit 1; }
  url="http://127.0.0.1:$port"
  echo "== backend: $backend ($(nproc) cores; host and load generator share them)"
}
