//! The shard set, the routing table, and a transaction on one shard.

use std::collections::HashMap;
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
        match &self.backend {
            Backend::Sqlite(s) => Ok(ShardTx::Sqlite(s.begin(write).await?)),
            Backend::Mysql(s) => Ok(ShardTx::Mysql(s.begin(write).await?)),
            Backend::Postgres(s) => Ok(ShardTx::Postgres(s.begin(write).await?)),
        }
    }

    /// A write transaction that sees only durable data, for steps that
    /// publish what they read (the outbox relay). On SQLite the open group
    /// commits first (see group_commit.rs); on the servers every committed
    /// row is durable already.
    pub async fn begin_durable(&self) -> Result<ShardTx, SqlError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(ShardTx::Sqlite(s.begin_durable().await?)),
            Backend::Mysql(s) => Ok(ShardTx::Mysql(s.begin(true).await?)),
            Backend::Postgres(s) => Ok(ShardTx::Postgres(s.begin(true).await?)),
        }
    }

    /// Whether the shard is migrated and answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(s) => s.ping().await,
            Backend::Mysql(s) => s.ping().await,
            Backend::Postgres(s) => s.ping().await,
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

    /// The per-invocation `sql` state bound to this shard and `tx`.
    pub fn bind(&self, tx: Option<ShardTx>) -> super::SqlState {
        super::SqlState { shard: self.name.clone(), dialect: self.dialect(), tx }
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
pub enum ShardTx {
    Sqlite(SqliteTx),
    Mysql(ServerTx<Mysql>),
    Postgres(ServerTx<Postgres>),
}

impl ShardTx {
    pub async fn query(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        match self {
            ShardTx::Sqlite(tx) => tx.query(statement, params).await,
            ShardTx::Mysql(tx) => tx.query(statement, params).await,
            ShardTx::Postgres(tx) => tx.query(statement, params).await,
        }
    }

    pub async fn execute(&mut self, statement: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        match self {
            ShardTx::Sqlite(tx) => tx.execute(statement, params).await,
            ShardTx::Mysql(tx) => tx.execute(statement, params).await,
            ShardTx::Postgres(tx) => tx.execute(statement, params).await,
        }
    }

    /// Runs `statements` in order: on a database server in one round trip
    /// (batch.rs); on SQLite, where a statement is a function call, one by
    /// one. Stops at the first failure, named by position.
    pub async fn execute_batch(&mut self, statements: Vec<Statement>) -> Result<Vec<u64>, SqlError> {
        match self {
            ShardTx::Sqlite(tx) => {
                let of = statements.len();
                let mut counts = Vec::with_capacity(of);
                for (index, Statement { sql, params }) in statements.into_iter().enumerate() {
                    counts.push(tx.execute(&sql, params).await.map_err(|e| batch::in_batch(e, index, of))?);
                }
                Ok(counts)
            }
            ShardTx::Mysql(tx) => tx.execute_batch(statements).await,
            ShardTx::Postgres(tx) => tx.execute_batch(statements).await,
        }
    }

    pub async fn commit(self) -> Result<(), SqlError> {
        match self {
            ShardTx::Sqlite(tx) => tx.commit().await,
            ShardTx::Mysql(tx) => tx.commit().await,
            ShardTx::Postgres(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) {
        match self {
            ShardTx::Sqlite(tx) => tx.rollback().await,
            ShardTx::Mysql(tx) => tx.rollback().await,
            ShardTx::Postgres(tx) => tx.rollback().await,
        }
    }
}

/// All shards plus the merchant -> shard routing table.
pub struct ShardSet {
    shards: Vec<Arc<Shard>>,
    pins: HashMap<i64, usize>,
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
        let mut pins = HashMap::new();
        for (merchant, shard) in &routing.pins {
            let merchant: i64 = merchant.parse().with_context(|| {
                format!("runtime config: routing.pins: `{merchant}` is not a merchant id")
            })?;
            let index = shards.iter().position(|s| &s.name == shard).with_context(|| {
                format!("runtime config: routing.pins: merchant {merchant} -> unknown shard `{shard}`")
            })?;
            pins.insert(merchant, index);
        }
        Ok(Self { shards, pins })
    }

    /// The shard of `merchant_id`: its pin if any, else `id mod n` over the
    /// shards in config order (even on the first, odd on the second of two).
    pub fn for_merchant(&self, merchant_id: i64) -> &Arc<Shard> {
        let index = self.pins.get(&merchant_id).copied().unwrap_or_else(|| {
            // rem_euclid: ids are positive by construction, but never index out of range.
            merchant_id.rem_euclid(self.shards.len() as i64) as usize
        });
        &self.shards[index]
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

/// Applies the shard's migrations (creating the database first when
/// `create` is set and it does not exist) and returns the applied versions.
pub async fn migrate(config: &ShardConfig, state_dir: &Path, create: bool) -> anyhow::Result<Vec<i64>> {
    use sqlx::migrate::MigrateDatabase;
    let name = &config.name;
    match &config.backend {
        BackendConfig::Sqlite { path, readers } => {
            let shard = SqliteShard::open(&sqlite_path(config, path.as_deref(), state_dir), *readers).await?;
            shard.applied_migrations().await
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
        let mut tx = ShardTx::Sqlite(shard.begin(true).await.unwrap());
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

        let mut read = ShardTx::Sqlite(shard.begin(false).await.unwrap());
        let rows = read.query("SELECT id FROM t ORDER BY id", Vec::new()).await.unwrap();
        assert_eq!(
            format!("{:?}", rows.rows),
            format!("{:?}", [[Value::Int64(1)], [Value::Int64(2)], [Value::Int64(3)]])
        );
        read.rollback().await;
    }
}
