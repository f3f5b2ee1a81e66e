#!/usr/bin/env bash
# The test command (README): makes sure what the tests need is there, then
# runs every test of the workspace. On a fresh machine of the project's kind
# it installs Chromium and chromedriver (Debian packages) and the tansu
# broker (crates.io, cached in ~/.cache/payfn/tools), and starts Redis,
# MariaDB and PostgreSQL if they are down. A service that still does not
# answer fails the run: no test is skipped for want of it.
#
#   infra/test.sh [cargo test arguments...]    # default: --workspace
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
# rust-toolchain.toml names the wasm32-wasip2 target the guest components
# build for; rustup installs a pinned toolchain's targets only with the
# toolchain itself, so a machine whose toolchain came first lacks it.
rustup target add wasm32-wasip2

step "services"
# Redis (127.0.0.1:6379) backs the Redis kv/rate-limit tests. Started if it
# is down; the run fails if it still does not answer.
if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  echo "Redis is down; starting it"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  sleep 1
fi
redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG || { echo "Redis is required at 127.0.0.1:6379" >&2; exit 1; }
echo "redis: up"
# MariaDB (127.0.0.1:3306, root) and PostgreSQL (127.0.0.1:5432, trust) hold
# the shard databases of the mariadb/postgres test suites (each test creates
# its own). Started if down; the run fails if either still does not answer.
if ! mysqladmin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
  echo "MariaDB is down; starting it"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 30); do mysqladmin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1 && break; sleep 1; done
fi
mysqladmin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1 \
  || { echo "MariaDB is required at 127.0.0.1:3306 (user root)" >&2; exit 1; }
echo "mariadb: up"
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "PostgreSQL is down; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL is required at 127.0.0.1:5432" >&2; exit 1; }
psql -h 127.0.0.1 -U postgres -tAc 'SELECT 1' >/dev/null \
  || { echo "PostgreSQL must accept user postgres without a password (trust)" >&2; exit 1; }
echo "postgresql: up"
# The Kafka tests start their own tansu brokers (a Kafka-protocol broker from
# crates.io, installed once into ~/.cache/payfn/tools). Installing it is
# required: if it fails, the run fails here rather than skipping tests.
infra/kafka/broker.sh install
"$(infra/kafka/broker.sh path)" --version

# The admin console's browser tests drive Debian's Chromium through
# chromedriver. Installed if missing; the run fails if they still are not there.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver (Debian packages)"
  if [ "$(id -u)" -eq 0 ]; then sudo_=""; else sudo_="sudo"; fi
  $sudo_ apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium chromium-driver >/dev/null
fi
/usr/bin/chromedriver --version || { echo "chromedriver is required for the console tests" >&2; exit 1; }

step "test"
if [ "$#" -eq 0 ]; then
  cargo test --workspace
else
  cargo test "$@"
fi
