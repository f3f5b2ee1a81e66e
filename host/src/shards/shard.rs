//! The shard set, where new merchants go, and a transaction on one shard.
//! (Where an existing merchant lives is the merchant directory's:
//! `crate::directory`.)

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use super::batch;
use super::mysql::Mysql;
use super::postgres::Postgres;
use super::runtime_config::{BackendConfig, RoutingConfig, ShardConfig};
use super::server::{self, ServerShard, ServerTx};
use super::sqlite::{SqliteShard, SqliteTx};
use crate::bindings::sql::{Dialect, Error as SqlError, RowSet, Statement, Value};

/// One shard's connection pools.
pub struct Shard {
    pub name: String,
    backend: Backend,
}

enum Backend {
    Sqlite(SqliteShard),
    Mysql(ServerShard<Mysql>),
    Postgres(ServerShard<Postgres>),
}

impl Shard {
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Mysql(_) => Dialect::Mysql,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Opens a transaction. `write` transactions take the shard's write lock
    /// up front, so concurrent steps on one payment run one after the other.
    pub async fn begin(&self, write: bool) -> Result<ShardTx, SqlError> {
        Ok(ShardTx::new(match &self.backend {
            Backend::Sqlite(s) => TxBackend::Sqlite(s.begin(write).await?),
            Backend::Mysql(s) => TxBackend::Mysql(s.begin(write).await?),
            Backend::Postgres(s) => TxBackend::Postgres(s.begin(write).await?),
        }))
    }

    /// A write transaction that sees only durable data, for steps that
    /// publish what they read (the outbox relay). On SQLite the open group
    /// commits first (see group_commit.rs); on the servers every committed
    /// row is durable already.
    pub async fn begin_durable(&self) -> Result<ShardTx, SqlError> {
        Ok(ShardTx::new(match &self.backend {
            Backend::Sqlite(s) => TxBackend::Sqlite(s.begin_durable().await?),
            Backend::Mysql(s) => TxBackend::Mysql(s.begin(true).await?),
            Backend::Postgres(s) => TxBackend::Postgres(s.begin(true).await?),
        }))
    }

    /// A read-only transaction whose statements all see one snapshot of
    /// the shard (SQLite's read transactions already do; the servers run
    /// it REPEATABLE READ), for reading several tables consistently.
    pub async fn begin_snapshot(&self) -> Result<ShardTx, SqlError> {
        Ok(ShardTx::new(match &self.backend {
            Backend::Sqlite(s) => TxBackend::Sqlite(s.begin(false).await?),
            Backend::Mysql(s) => TxBackend::Mysql(s.begin_snapshot().await?),
            Backend::Postgres(s) => TxBackend::Postgres(s.begin_snapshot().await?),
        }))
    }

    /// Whether the shard is migrated and answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(s) => s.ping().await,
            Backend::Mysql(s) => s.ping().await,
            Backend::Postgres(s) => s.ping().await,
        }
    }

    /// After `tables` took many rows at once (a merchant moved in): on
    /// PostgreSQL, `VACUUM (ANALYZE)` them, as after a restore, so that the
    /// planner knows the new rows and index-only scans (a move's counts at
    /// its cut-over) need not visit each new row's heap page. MariaDB's
    /// statistics follow on their own and its counts need no visibility
    /// map; SQLite's need nothing.
    pub async fn after_bulk_write(&self, tables: &[&str]) -> Result<(), SqlError> {
        match &self.backend {
            Backend::Postgres(s) => {
                // As long as the tables need: not the requests' timeout.
                let mut statements = vec!["SET statement_timeout = 0".to_string()];
                statements.extend(tables.iter().map(|t| format!("VACUUM (ANALYZE) {t}")));
                s.maintain(&statements).await
            }
            Backend::Sqlite(_) | Backend::Mysql(_) => Ok(()),
        }
    }

    /// On SQLite, `(COMMITs, members acknowledged)` of its group writer
    /// (group_commit.rs); the servers commit each transaction on its own.
    pub fn group_commits(&self) -> Option<(u64, u64)> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s.group_commits()),
            Backend::Mysql(_) | Backend::Postgres(_) => None,
        }
    }

    /// How many of its connections are in use.
    pub fn pool_use(&self) -> super::PoolUse {
        match &self.backend {
            Backend::Sqlite(s) => s.pool_use(),
            Backend::Mysql(s) => s.pool_use(),
            Backend::Postgres(s) => s.pool_use(),
        }
    }

    /// Why the shard cannot take transactions yet (unreachable since start,
    /// or not migrated), if it cannot.
    pub fn not_ready(&self) -> Option<String> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Mysql(s) => s.not_ready(),
            Backend::Postgres(s) => s.not_ready(),
        }
    }

    /// A one-line description for the startup summary.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => format!("sqlite {}", s.path().display()),
            Backend::Mysql(s) => s.describe(),
            Backend::Postgres(s) => s.describe(),
        }
    }
}

/// A transaction on one shard. Dropping it without [`ShardTx::commit`] rolls
/// it back.
///
/// It remembers whether the shard failed it for a reason of the shard's own
/// (see [`ShardTx::transient_failure`]): a trigger that gets the
/// transaction back from a failed invocation can then tell a component that
/// failed because its shard was away or busy (retry until the shard is
/// back) from a component that failed on its own (counts toward the
/// trigger's attempts, then the dead-letter topic).
pub struct ShardTx {
    backend: TxBackend,
    /// The first `unavailable` or `conflict` error a statement got.
    transient: Option<SqlError>,
    /// A statement is waiting for the shard's answer. Still set afterwards
    /// if the wait was cut short (the invocation's deadline dropped it).
    in_flight: bool,
    /// Statements that failed, for whatever reason.
    failed: u32,
}

enum TxBackend {
    Sqlite(SqliteTx),
    Mysql(ServerTx<Mysql>),
    Postgres(ServerTx<Postgres>),
}

impl ShardTx {
    fn new(backend: TxBackend) -> Self {
        Self { backend, transient: None, in_flight: false, failed: 0 }
    }

    /// Whether `e` says the shard could not do the work now (unreachable,
    /// timed out, a lock wait, a deadlock, a serialization failure; each
    /// dialect's codes are sorted in mysql.rs, postgres.rs and sqlite.rs),
    /// rather than that the statement was wrong.
    pub fn is_transient(e: &SqlError) -> bool {
        super::errors::is_transient(e)
    }

    /// Why the shard, not the statements, failed this transaction, if it
    /// did: a statement of it got a transient error (whoever ran it, and
    /// whatever the caller did with the error), or one was still waiting
    /// for the shard when its caller gave up on it.
    pub fn transient_failure(&self) -> Option<String> {
        match &self.transient {
            Some(e) => Some(format!("{e:?}")),
            None if self.in_flight => Some("a statement was still waiting for the shard".to_string()),
            None => None,
        }
    }

    /// How many statements of this transaction failed so far (a caller's
    /// statement after one of its own failed may fail with that error: a
    /// failure ends PostgreSQL's transaction, and a deadlock MariaDB's).
    pub fn failed_statements(&self) -> u32 {
        self.failed
    }

    /// Records how a statement ended.
    fn ended<T>(&mut self, result: Result<T, SqlError>) -> Result<T, SqlError> {
        self.in_flight = false;
        if let Err(e) = &result {
            self.failed += 1;
            if self.transient.is_none() && Self::is_transient(e) {
                self.transient = Some(e.clone());
            }
        }
        result
    }

    pub async fn query(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        self.in_flight = true;
        let result = match &mut self.backend {
            TxBackend::Sqlite(tx) => tx.query(statement, params).await,
            TxBackend::Mysql(tx) => tx.query(statement, params).await,
            TxBackend::Postgres(tx) => tx.query(statement, params).await,
        };
        self.ended(result)
    }

    /// [`query`](Self::query) for a statement that reads many rows (a
    /// count or a page over one merchant's rows). On an embedded shard,
    /// where a statement is a function call on the caller's thread, it
    /// runs off the async workers' queues (`block_in_place`).
    pub async fn scan(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        self.in_flight = true;
        let result = match &mut self.backend {
            TxBackend::Sqlite(tx) => tx.scan(statement, params).await,
            TxBackend::Mysql(tx) => tx.query(statement, params).await,
            TxBackend::Postgres(tx) => tx.query(statement, params).await,
        };
        self.ended(result)
    }

    pub async fn execute(&mut self, statement: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        self.in_flight = true;
        let result = match &mut self.backend {
            TxBackend::Sqlite(tx) => tx.execute(statement, params).await,
            TxBackend::Mysql(tx) => tx.execute(statement, params).await,
            TxBackend::Postgres(tx) => tx.execute(statement, params).await,
        };
        self.ended(result)
    }

    /// Runs `statements` in order: on a database server in one round trip
    /// (batch.rs); on SQLite, where a statement is a function call, one by
    /// one. Stops at the first failure, named by position.
    pub async fn execute_batch(&mut self, statements: Vec<Statement>) -> Result<Vec<u64>, SqlError> {
        self.in_flight = true;
        let result = match &mut self.backend {
            TxBackend::Sqlite(tx) => {
                async {
                    let of = statements.len();
                    let mut counts = Vec::with_capacity(of);
                    for (index, Statement { sql, params }) in statements.into_iter().enumerate() {
                        counts
                            .push(tx.execute(&sql, params).await.map_err(|e| batch::in_batch(e, index, of))?);
                    }
                    Ok(counts)
                }
                .await
            }
            TxBackend::Mysql(tx) => tx.execute_batch(statements).await,
            TxBackend::Postgres(tx) => tx.execute_batch(statements).await,
        };
        self.ended(result)
    }

    pub async fn commit(self) -> Result<(), SqlError> {
        match self.backend {
            TxBackend::Sqlite(tx) => tx.commit().await,
            TxBackend::Mysql(tx) => tx.commit().await,
            TxBackend::Postgres(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) {
        match self.backend {
            TxBackend::Sqlite(tx) => tx.rollback().await,
            TxBackend::Mysql(tx) => tx.rollback().await,
            TxBackend::Postgres(tx) => tx.rollback().await,
        }
    }
}

/// All shards, with the runtime config's pins and placement weights.
pub struct ShardSet {
    shards: Vec<Arc<Shard>>,
    /// `[routing] pins`: merchant -> index in `shards` (the directory
    /// records them at start).
    pins: Vec<(i64, usize)>,
    /// Shards open to new merchants (`accept_new`), with their weights, in
    /// config order.
    open_to_new: Vec<(usize, u64)>,
}

/// One migrated SQLite shard named `s` in a new temporary directory (which
/// lives as long as the returned guard): for unit tests of what reads and
/// writes shards.
#[cfg(test)]
pub async fn test_shard() -> (tempfile::TempDir, Arc<Shard>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = ShardConfig {
        accept_new: true,
        weight: 1,
        name: "s".into(),
        backend: BackendConfig::Sqlite { path: Some(dir.path().join("s.db")), readers: 1 },
    };
    let shards = ShardSet::open(&[config], &RoutingConfig::default(), dir.path()).await.expect("a shard");
    let shard = shards.iter().next().expect("one shard").clone();
    (dir, shard)
}

impl ShardSet {
    /// Connects every shard (running migrations) and checks the routing table.
    pub async fn open(
        configs: &[ShardConfig],
        routing: &RoutingConfig,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        if configs.is_empty() {
            bail!("runtime config: `shards` must name at least one shard");
        }
        let mut shards = Vec::with_capacity(configs.len());
        for config in configs {
            if shards.iter().any(|s: &Arc<Shard>| s.name == config.name) {
                bail!("runtime config: shard `{}` is defined twice", config.name);
            }
            let backend = match &config.backend {
                BackendConfig::Sqlite { path, readers } => Backend::Sqlite(
                    SqliteShard::open(&sqlite_path(config, path.as_deref(), state_dir), *readers)
                        .await
                        .with_context(|| format!("opening shard `{}`", config.name))?,
                ),
                BackendConfig::Mysql(server) => {
                    Backend::Mysql(ServerShard::open(&config.name, server).await?)
                }
                BackendConfig::Postgres(server) => {
                    Backend::Postgres(ServerShard::open(&config.name, server).await?)
                }
            };
            shards.push(Arc::new(Shard { name: config.name.clone(), backend }));
        }
        let mut pins = Vec::new();
        for (merchant, shard) in &routing.pins {
            let merchant: i64 = merchant.parse().with_context(|| {
                format!("runtime config: routing.pins: `{merchant}` is not a merchant id")
            })?;
            let index = shards.iter().position(|s| &s.name == shard).with_context(|| {
                format!("runtime config: routing.pins: merchant {merchant} -> unknown shard `{shard}`")
            })?;
            pins.push((merchant, index));
        }
        let open_to_new: Vec<(usize, u64)> = configs
            .iter()
            .enumerate()
            .filter(|(_, c)| c.accept_new && c.weight > 0)
            .map(|(index, c)| (index, u64::from(c.weight)))
            .collect();
        if open_to_new.is_empty() {
            tracing::warn!(
                "runtime config: no shard takes new merchants (every one has `accept_new = false` or \
                 `weight = 0`): only merchants the directory already places can be served"
            );
        }
        Ok(Self { shards, pins, open_to_new })
    }

    /// Where a merchant the directory does not know yet goes: `id mod`
    /// the total weight of the shards open to new merchants, each shard
    /// taking a stretch of residues as long as its weight, in config order
    /// (equal weights: `id mod n`, even ids on the first and odd on the
    /// second of two). `None` if no shard takes new merchants.
    pub fn place_new(&self, merchant_id: i64) -> Option<usize> {
        let total: u64 = self.open_to_new.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        // rem_euclid: ids are positive by construction, but never out of range.
        let mut residue = merchant_id.rem_euclid(total as i64) as u64;
        for (index, weight) in &self.open_to_new {
            if residue < *weight {
                return Some(*index);
            }
            residue -= weight;
        }
        unreachable!("a residue below the total weight falls in one shard's stretch")
    }

    /// The shard the directory had a merchant on before it existed: `id mod
    /// n` over every shard in config order, the routing of earlier releases.
    /// Only consulted while that shard's rows are not yet adopted.
    pub fn legacy(&self, merchant_id: i64) -> usize {
        merchant_id.rem_euclid(self.shards.len() as i64) as usize
    }

    /// The placement weight of the shard at `index`: 0 unless it takes new
    /// merchants (what a rebalance aims the shards' loads at).
    pub fn weight_for_new(&self, index: usize) -> u64 {
        self.open_to_new.iter().find(|(i, _)| *i == index).map_or(0, |(_, w)| *w)
    }

    /// `[routing] pins`, as (merchant, shard index).
    pub fn pins(&self) -> &[(i64, usize)] {
        &self.pins
    }

    /// The shard at `index` (as [`index_of`](Self::index_of) and the
    /// placement functions give it).
    pub fn get(&self, index: usize) -> &Arc<Shard> {
        &self.shards[index]
    }

    /// The index of the shard named `name`, if it is configured.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Shard>> + '_ {
        self.shards.iter()
    }
}

fn sqlite_path(config: &ShardConfig, path: Option<&Path>, state_dir: &Path) -> std::path::PathBuf {
    match path {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => state_dir.join(p),
        None => state_dir.join("shards").join(format!("{}.db", config.name)),
    }
}

/// What [`migrate`] did to one shard's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The versions this run applied (none: it was up to date).
    pub now: Vec<i64>,
    /// Every version applied, this run's included, in order.
    pub all: Vec<i64>,
}

impl Migrated {
    /// From the versions applied `before` the run and `all` after it.
    pub fn between(before: &[i64], all: Vec<i64>) -> Self {
        let now = all.iter().copied().filter(|v| !before.contains(v)).collect();
        Self { now, all }
    }
}

/// Applies the shard's migrations (creating the database first when
/// `create` is set and it does not exist) and returns the applied versions.
pub async fn migrate(config: &ShardConfig, state_dir: &Path, create: bool) -> anyhow::Result<Migrated> {
    use sqlx::migrate::MigrateDatabase;
    let name = &config.name;
    match &config.backend {
        BackendConfig::Sqlite { path, readers } => {
            let file = sqlite_path(config, path.as_deref(), state_dir);
            let before = super::sqlite::applied_in(&file)?;
            let shard = SqliteShard::open(&file, *readers).await?;
            Ok(Migrated::between(&before, shard.applied_migrations().await?))
        }
        BackendConfig::Mysql(server) => {
            if create && !sqlx::MySql::database_exists(&server.url(name)?).await? {
                sqlx::MySql::create_database(&server.url(name)?).await?;
            }
            server::migrate::<Mysql>(name, server).await
        }
        BackendConfig::Postgres(server) => {
            if create && !sqlx::Postgres::database_exists(&server.url(name)?).await? {
                sqlx::Postgres::create_database(&server.url(name)?).await?;
            }
            server::migrate::<Postgres>(name, server).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(id: i64) -> Statement {
        Statement { sql: "INSERT INTO t (id) VALUES (?)".into(), params: vec![Value::Int64(id)] }
    }

    /// On SQLite a batch is its statements one by one, with the same
    /// contract as on the servers (server.rs, `transaction_tests`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_batches_count_each_statement_and_stop_at_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let shard = SqliteShard::open(&dir.path().join("shard.db"), 1).await.unwrap();
        let mut tx = ShardTx::new(TxBackend::Sqlite(shard.begin(true).await.unwrap()));
        tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)", Vec::new()).await.unwrap();
        let update =
            Statement { sql: "UPDATE t SET id = id WHERE id >= ?".into(), params: vec![Value::Int64(1)] };
        assert_eq!(tx.execute_batch(vec![insert(1), insert(2), update]).await.unwrap(), vec![1, 1, 2]);
        let failed = tx.execute_batch(vec![insert(3), insert(1), insert(4)]).await;
        let Err(SqlError::ConstraintViolation(why)) = failed else {
            panic!("duplicate accepted: {failed:?}")
        };
        assert!(why.starts_with("statement 2 of 3: "), "{why}");
        // SQLite itself would run the DELETE and ignore the rest.
        let two = Statement { sql: "DELETE FROM t; SELECT 1".into(), params: Vec::new() };
        let refused = tx.execute_batch(vec![two]).await;
        assert!(matches!(refused, Err(SqlError::InvalidStatement(_))), "{refused:?}");
        tx.commit().await.unwrap();

        let mut read = ShardTx::new(TxBackend::Sqlite(shard.begin(false).await.unwrap()));
        let rows = read.query("SELECT id FROM t ORDER BY id", Vec::new()).await.unwrap();
        assert_eq!(
            format!("{:?}", rows.rows),
            format!("{:?}", [[Value::Int64(1)], [Value::Int64(2)], [Value::Int64(3)]])
        );
        read.rollback().await;
    }

    /// A transaction remembers the first transient failure of its
    /// statements (the shard's trouble), not a statement's own failure; a
    /// SQLite file whose write lock another process holds past the busy
    /// timeout fails BEGIN as a conflict, which is transient too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_remembers_the_shards_transient_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.db");
        let shard = SqliteShard::open(&path, 1).await.unwrap();
        let mut tx = ShardTx::new(TxBackend::Sqlite(shard.begin(true).await.unwrap()));
        let refused = tx.execute("INSERT INTO nowhere (id) VALUES (1)", Vec::new()).await;
        assert!(matches!(refused, Err(SqlError::InvalidStatement(_))), "{refused:?}");
        assert_eq!((tx.failed_statements(), tx.transient_failure()), (1, None));
        let _ = tx.ended::<()>(Err(SqlError::Conflict("deadlock".into())));
        let _ = tx.ended::<()>(Err(SqlError::Unavailable("gone".into())));
        let why = tx.transient_failure().expect("a transient failure");
        assert!(why.contains("deadlock"), "the first one: {why}");
        assert_eq!(tx.failed_statements(), 3);
        tx.rollback().await;

        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let busy = shard.begin(true).await.map(drop);
        let Err(e) = busy else { panic!("BEGIN despite another writer") };
        assert!(matches!(e, SqlError::Conflict(_)) && ShardTx::is_transient(&e), "{e:?}");
        other.execute_batch("ROLLBACK").unwrap();
        shard.begin(true).await.unwrap().rollback().await;
    }
}
