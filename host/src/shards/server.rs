//! A shard on a database server (MariaDB/MySQL or PostgreSQL): its pool,
//! its migrations, its readiness, and a transaction on it. What differs per
//! dialect (connection setup, placeholders, types, vendor error codes) sits
//! behind [`Driver`], in `mysql.rs` and `postgres.rs`.
//!
//! A server shard never stops the host: if its database is unreachable at
//! start, the host starts anyway, the shard reports itself not ready and
//! its merchants get 503 `shard_unavailable` while a background task keeps
//! trying to connect and migrate. The other shards' merchants are served.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::error::DatabaseError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::{Pool, PoolOptions};
use sqlx::{Database, Executor, IntoArguments, Row};

use super::batch;
use super::errors;
use super::placeholders::Syntax;
use super::runtime_config::ServerConfig;
use super::warm::{Held, Warm, PING_IF_IDLE_FOR};
use crate::bindings::sql::{Error as SqlError, RowSet, Statement, Value};

/// What one dialect supplies.
pub trait Driver: Send + Sync + 'static {
    type Db: Database;
    /// Whether any failed statement ends the server's transaction
    /// (PostgreSQL's "current transaction is aborted"); otherwise every
    /// failure but a constraint violation or a bad statement does (see
    /// [`ServerTx`]).
    const ERROR_ABORTS_TRANSACTION: bool;

    /// The statement that opens a transaction, or `None` where the session
    /// opens one implicitly at the first statement (MariaDB connections run
    /// with `autocommit = 0`).
    fn begin_statement(write: bool) -> Option<&'static str>;

    /// The statements that open a read-only transaction whose statements
    /// all see one snapshot (a consistent read of several tables).
    fn snapshot_statements() -> &'static [&'static str];

    /// The dialect's migrations (`infra/migrations/<dialect>`).
    fn migrator() -> &'static Migrator;
    /// A pool, not yet connected, with the session settings of `config`.
    fn pool(url: &str, config: &ServerConfig) -> anyhow::Result<Pool<Self::Db>>;
    /// A server setting that, wrong, slows every shard on the server as
    /// its tables grow: the query reading it (one text column), and what
    /// to tell the operator of its value (`None`: fine). Read once, when
    /// the shard is first ready.
    const SETTING: (&'static str, fn(&str) -> Option<String>);
    /// How the dialect quotes and comments, for finding placeholders.
    const SYNTAX: Syntax;
    /// The statement as the server wants it (placeholder style).
    fn statement(statement: &str) -> Cow<'_, str>;
    /// Appends `value` to `out` as a literal of the type a bound parameter
    /// would have, for a batch sent as text (batch.rs).
    fn literal(value: &Value, out: &mut String) -> Result<(), SqlError>;
    /// The parameters, bound.
    fn bind(params: Vec<Value>) -> Result<<Self::Db as Database>::Arguments<'static>, SqlError>;
    /// One row as WIT values.
    fn decode_row(row: &<Self::Db as Database>::Row) -> Result<Vec<Value>, SqlError>;
    /// Rows an `execute` matched.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;
    /// Vendor error codes the generic mapping does not know.
    fn classify(error: &(dyn DatabaseError + 'static)) -> Option<SqlError>;
}

/// Pool options every dialect shares, from the runtime config.
///
/// sqlx pings every connection it hands out by default: under load that is
/// a network round trip (and a wake-up of the server) per transaction for a
/// connection that answered a moment ago. Only connections idle for
/// [`PING_IF_IDLE_FOR`] are pinged here (the same rule as warm.rs); a hot
/// connection that broke since fails its first statement (503, nothing
/// committed) and is closed (docs/BENCHMARKS.md).
pub fn pool_options<DB: Database>(config: &ServerConfig) -> PoolOptions<DB> {
    PoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .max_connections(config.max_connections.max(1))
        .min_connections(config.min_connections.min(config.max_connections))
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .idle_timeout(Some(Duration::from_millis(config.idle_timeout_ms)))
        .max_lifetime(Some(Duration::from_millis(config.max_lifetime_ms)))
}

/// Whether the shard can take transactions.
#[derive(Debug, Clone)]
enum Readiness {
    /// Not yet connected and migrated; why, as last seen.
    Pending(String),
    Ready,
}

/// One shard on a database server.
pub struct ServerShard<D: Driver> {
    pool: Pool<D::Db>,
    /// Connections between transactions (warm.rs).
    warm: Arc<Warm<D::Db>>,
    /// The URL without its password, for logs.
    display: String,
    readiness: Arc<RwLock<Readiness>>,
}

impl<D: Driver> ServerShard<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Connection: Migrate,
    for<'q> <D::Db as Database>::Arguments<'static>: IntoArguments<'q, D::Db>,
{
    /// Creates the pool and prepares the shard (migrate, or check that it
    /// is migrated). If the first attempt fails, the shard opens not ready
    /// and a background task keeps trying.
    pub async fn open(name: &str, config: &ServerConfig) -> anyhow::Result<Self> {
        let url = config.url(name)?;
        let pool = D::pool(&url, config)?;
        let warm = Warm::new(
            config.max_connections,
            Duration::from_millis(config.acquire_timeout_ms),
            Duration::from_millis(config.max_lifetime_ms),
        );
        let shard = Self {
            pool,
            warm: Arc::new(warm),
            display: crate::secrets::redact_url(&url),
            readiness: Arc::new(RwLock::new(Readiness::Pending("connecting".into()))),
        };
        let (first_attempt, attempted) = tokio::sync::oneshot::channel();
        tokio::spawn(prepare_until_ready::<D>(
            name.to_string(),
            shard.pool.clone(),
            config.migrate,
            shard.readiness.clone(),
            first_attempt,
        ));
        // Start-up waits for the first attempt only (connecting is bounded by
        // acquire_timeout_ms); later ones run in the background.
        let _ = attempted.await;
        if shard.not_ready().is_none() {
            shard.advise(name).await;
        }
        Ok(shard)
    }

    /// Warns of a server setting that will hurt ([`Driver::SETTING`]).
    async fn advise(&self, name: &str) {
        let (query, judge) = D::SETTING;
        let Ok(row) = sqlx::query(query).fetch_one(&self.pool).await else { return };
        if let Ok([Value::Text(value)]) = D::decode_row(&row).as_deref() {
            if let Some(advice) = judge(value) {
                tracing::warn!(shard = %name, "{advice} (infra/README.md)");
            }
        }
    }

    /// Why the shard cannot take transactions yet, if it cannot.
    pub fn not_ready(&self) -> Option<String> {
        match &*self.readiness.read().unwrap_or_else(|p| p.into_inner()) {
            Readiness::Pending(why) => Some(why.clone()),
            Readiness::Ready => None,
        }
    }

    pub fn describe(&self) -> String {
        let state = match self.not_ready() {
            None => "ready".to_string(),
            Some(why) => format!("NOT READY: {why}"),
        };
        format!("{} {} ({state})", <D::Db as Database>::NAME.to_lowercase(), self.display)
    }

    pub async fn begin(&self, write: bool) -> Result<ServerTx<D>, SqlError> {
        self.begin_with(D::begin_statement(write).as_slice()).await
    }

    /// A read-only transaction on one snapshot (see
    /// [`Driver::snapshot_statements`]).
    pub async fn begin_snapshot(&self) -> Result<ServerTx<D>, SqlError> {
        self.begin_with(D::snapshot_statements()).await
    }

    async fn begin_with(&self, statements: &[&str]) -> Result<ServerTx<D>, SqlError> {
        if let Some(why) = self.not_ready() {
            return Err(SqlError::Unavailable(why));
        }
        let held = self.warm.acquire(&self.pool).await.map_err(map::<D>)?;
        let mut tx = ServerTx { held: Some(held), warm: self.warm.clone(), doomed: None, ended: false };
        for statement in statements {
            // On failure `tx` drops unended: its connection is closed.
            Executor::execute(tx.conn_mut()?, *statement).await.map_err(map::<D>)?;
        }
        Ok(tx)
    }

    pub async fn ping(&self) -> bool {
        self.not_ready().is_none() && sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Runs `statements` in turn outside any transaction, on a connection
    /// closed afterwards (they may change its session): maintenance that
    /// no transaction may hold, such as PostgreSQL's VACUUM.
    pub async fn maintain(&self, statements: &[String]) -> Result<(), SqlError> {
        if let Some(why) = self.not_ready() {
            return Err(SqlError::Unavailable(why));
        }
        // Under a permit of the warm pool like any transaction's.
        let held = self.warm.acquire(&self.pool).await.map_err(map::<D>)?;
        let mut conn = held.conn.detach();
        for statement in statements {
            Executor::execute(&mut conn, statement.as_str()).await.map_err(map::<D>)?;
        }
        Ok(())
    }

    /// Connections in transactions, open (sqlx's plus parked) and allowed.
    pub fn pool_use(&self) -> super::PoolUse {
        let (in_use, max) = self.warm.in_use();
        super::PoolUse { in_use, open: self.pool.size(), max }
    }
}

/// Migrates (or checks), retrying with backoff until the shard is ready.
async fn prepare_until_ready<D: Driver>(
    name: String,
    pool: Pool<D::Db>,
    migrate: bool,
    readiness: Arc<RwLock<Readiness>>,
    first_attempt: tokio::sync::oneshot::Sender<()>,
) where
    <D::Db as Database>::Connection: Migrate,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
{
    let mut backoff = Duration::from_millis(500);
    let mut first_attempt = Some(first_attempt);
    loop {
        let ready = match prepare::<D>(&pool, migrate).await {
            Ok(()) => {
                *readiness.write().unwrap_or_else(|p| p.into_inner()) = Readiness::Ready;
                tracing::info!(shard = %name, "shard ready");
                true
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(shard = %name, error = %why, retry_in = ?backoff,
                    "shard not ready; its merchants get 503 shard_unavailable until it is");
                *readiness.write().unwrap_or_else(|p| p.into_inner()) = Readiness::Pending(why);
                false
            }
        };
        if let Some(done) = first_attempt.take() {
            let _ = done.send(());
        }
        if ready {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

async fn prepare<D: Driver>(pool: &Pool<D::Db>, migrate: bool) -> anyhow::Result<()>
where
    <D::Db as Database>::Connection: Migrate,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
{
    if migrate {
        // sqlx takes an advisory lock, so hosts starting together migrate once.
        run_migrations::<D>(pool).await?;
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    let applied: HashSet<i64> = match conn.list_applied_migrations().await {
        Ok(list) => list.into_iter().map(|m| m.version).collect(),
        Err(_) => HashSet::new(),
    };
    let missing: Vec<String> = D::migrator()
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the database is behind (missing migrations: {}); run `payfn migrate`",
        missing.join(", ")
    );
    Ok(())
}

/// Applies the dialect's migrations on one connection of `pool`. Where
/// transactions open implicitly (MariaDB, `autocommit = 0`), a COMMIT ends
/// what sqlx leaves open: it records a migration's run time after the
/// migration's transaction, which would otherwise wait on the connection
/// for its next user to commit.
async fn run_migrations<D: Driver>(pool: &Pool<D::Db>) -> anyhow::Result<()>
where
    <D::Db as Database>::Connection: Migrate,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
{
    let mut conn = pool.acquire().await?;
    D::migrator().run_direct(&mut *conn).await?;
    if D::begin_statement(true).is_none() {
        Executor::execute(&mut *conn, "COMMIT").await?;
    }
    Ok(())
}

/// Runs the dialect's migrations on `url`: what was applied before, and
/// what is applied now.
pub async fn migrate<D: Driver>(name: &str, config: &ServerConfig) -> anyhow::Result<super::Migrated>
where
    <D::Db as Database>::Connection: Migrate,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
{
    let url = config.url(name)?;
    let pool = D::pool(&url, config)?;
    let before = applied_versions::<D>(&pool).await?;
    run_migrations::<D>(&pool).await?;
    let all = applied_versions::<D>(&pool).await?;
    Ok(super::Migrated::between(&before, all))
}

/// The migration versions applied to the database (none on a new one).
async fn applied_versions<D: Driver>(pool: &Pool<D::Db>) -> anyhow::Result<Vec<i64>>
where
    <D::Db as Database>::Connection: Migrate,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
{
    let mut conn = pool.acquire().await?;
    conn.ensure_migrations_table().await?;
    let applied = conn.list_applied_migrations().await?.into_iter().map(|m| m.version).collect();
    // Without autocommit (MariaDB) the read opened a transaction: end it, so
    // the connection does not read this snapshot again from the pool.
    if D::begin_statement(true).is_none() {
        Executor::execute(&mut *conn, "COMMIT").await?;
    }
    Ok(applied)
}

/// A transaction on one server shard, on a connection of the pool.
///
/// Kept by hand rather than as a `sqlx::Transaction`, for two reasons. On
/// MariaDB the shard's connections run with `autocommit = 0`, so a write
/// transaction opens with its first statement and `BEGIN` costs no round
/// trip. And a failure that ended the server's transaction (a deadlock on
/// MariaDB, any error on PostgreSQL) dooms it here: later statements and
/// the COMMIT fail with that error, so neither statements after it run
/// outside the transaction nor does a COMMIT that PostgreSQL turns into a
/// ROLLBACK answer success.
///
/// Invariant: a connection is parked for the next transaction (warm.rs)
/// only after a COMMIT or ROLLBACK went through, so no transaction outlives
/// its `ServerTx`. One dropped before that (cancelled, or its end failed)
/// has its connection closed, and the server rolls back.
pub struct ServerTx<D: Driver> {
    /// Present until drop, which parks or closes it.
    held: Option<Held<D::Db>>,
    warm: Arc<Warm<D::Db>>,
    /// The failure that ended the server's transaction, if one did.
    doomed: Option<SqlError>,
    /// COMMIT or ROLLBACK went through: the connection may be parked.
    ended: bool,
}

impl<D: Driver> ServerTx<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'static>: IntoArguments<'q, D::Db>,
{
    /// The connection, unless the transaction is doomed.
    fn conn_mut(&mut self) -> Result<&mut <D::Db as Database>::Connection, SqlError> {
        if let Some(doomed) = &self.doomed {
            return Err(doomed.clone());
        }
        Ok(&mut *self.held.as_mut().expect("a ServerTx holds its connection until it drops").conn)
    }

    /// Records `e` as the transaction's end if it ended it.
    fn check(&mut self, e: SqlError) -> SqlError {
        let statement_only = matches!(e, SqlError::ConstraintViolation(_) | SqlError::InvalidStatement(_));
        if D::ERROR_ABORTS_TRANSACTION || !statement_only {
            self.doomed = Some(e.clone());
        }
        e
    }

    pub async fn query(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        let statement = D::statement(statement);
        let args = D::bind(params)?;
        let rows = match sqlx::query_with(&statement, args).fetch_all(self.conn_mut()?).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.check(map::<D>(e))),
        };
        let columns = rows
            .first()
            .map(|r| r.columns().iter().map(|c| sqlx::Column::name(c).to_string()).collect())
            .unwrap_or_default();
        let rows = rows.iter().map(D::decode_row).collect::<Result<_, _>>()?;
        Ok(RowSet { columns, rows })
    }

    pub async fn execute(&mut self, statement: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        let statement = D::statement(statement);
        let args = D::bind(params)?;
        match sqlx::query_with(&statement, args).execute(self.conn_mut()?).await {
            Ok(done) => Ok(D::rows_affected(&done)),
            Err(e) => Err(self.check(map::<D>(e))),
        }
    }

    /// Runs `statements` in one round trip (batch.rs).
    pub async fn execute_batch(&mut self, statements: Vec<Statement>) -> Result<Vec<u64>, SqlError> {
        let of = statements.len();
        if of == 0 {
            return Ok(Vec::new());
        }
        let text = batch::render::<D>(&statements)?;
        let mut counts = Vec::with_capacity(of);
        let failure = {
            let mut results = sqlx::raw_sql(&text).execute_many(self.conn_mut()?);
            loop {
                match results.next().await {
                    Some(Ok(done)) => counts.push(D::rows_affected(&done)),
                    Some(Err(e)) => break Some(batch::in_batch(map::<D>(e), counts.len(), of)),
                    None => break None,
                }
            }
        };
        if let Some(e) = failure {
            return Err(self.check(e));
        }
        if counts.len() != of {
            // Cannot happen with statements split as render() checks them; if
            // it did, what ran is unknown, and the error dooms the transaction.
            let e = SqlError::Other(format!("a batch of {of} statements returned {} results", counts.len()));
            return Err(self.check(e));
        }
        Ok(counts)
    }

    pub async fn commit(mut self) -> Result<(), SqlError> {
        Executor::execute(self.conn_mut()?, "COMMIT").await.map_err(map::<D>)?;
        self.ended = true;
        Ok(())
    }

    pub async fn rollback(mut self) {
        // Also after a doom: ROLLBACK ends what is left, and the connection stays.
        let Some(held) = self.held.as_mut() else { return };
        match Executor::execute(&mut *held.conn, "ROLLBACK").await {
            Ok(_) => self.ended = true,
            Err(e) => tracing::warn!(error = %e, "rollback failed; the connection is closed"),
        }
    }
}

impl<D: Driver> Drop for ServerTx<D> {
    fn drop(&mut self) {
        if let Some(mut held) = self.held.take() {
            if self.ended {
                self.warm.park(held);
            } else {
                held.conn.close_on_drop();
            }
        }
    }
}

fn map<D: Driver>(e: sqlx::Error) -> SqlError {
    errors::map(e, D::classify)
}

/// `ServerTx` against the machine's MariaDB (127.0.0.1:3306, root) and
/// PostgreSQL (127.0.0.1:5432, postgres, trust), each test on a database
/// of its own. They fail, not skip, when a server is missing: `.ci/run`
/// starts both.
#[cfg(test)]
mod transaction_tests {
    use sqlx::migrate::MigrateDatabase;

    use super::super::mysql::Mysql;
    use super::super::postgres::Postgres;
    use super::*;

    /// Runs each generic scenario on both servers, as tests `<fn>::mariadb`
    /// and `<fn>::postgres` (the naming of the black-box tests'
    /// `on_server_backends!`), on a database named after `db`.
    macro_rules! on_servers {
        ($($name:ident: $db:literal),* $(,)?) => {$(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mariadb() { On::<Mysql>::$name($db).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() { On::<Postgres>::$name($db).await }
            }
        )*};
    }

    on_servers!(
        a_transaction_dropped_unended_leaves_nothing: "dropped",
        more_transactions_than_connections_take_turns: "turns",
        a_batch_stores_what_bound_parameters_store: "batchvalues",
        a_batch_counts_each_statement_and_stops_at_a_failure: "batchstops",
    );

    fn config(url: String) -> ServerConfig {
        ServerConfig {
            url: Some(url),
            url_env: None,
            // One connection: every transaction after the first would reuse
            // the first's connection if it went back to the pool.
            max_connections: 1,
            min_connections: 0,
            acquire_timeout_ms: 5_000,
            statement_timeout_ms: 5_000,
            lock_timeout_ms: 3_000,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 1_800_000,
            migrate: true,
        }
    }

    /// The scenarios and helpers on one server, generic over its driver;
    /// the bounds sqlx's traits need are written once, on this impl.
    struct On<D>(std::marker::PhantomData<D>);

    impl<D: Driver> On<D>
    where
        D::Db: MigrateDatabase,
        for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
        <D::Db as Database>::Connection: Migrate,
        for<'q> <D::Db as Database>::Arguments<'static>: IntoArguments<'q, D::Db>,
    {
        /// A migrated shard on a fresh database `payfn_unit_<test>`, with an
        /// empty table `t (id)`, and a pool of `connections`.
        async fn shard(test: &str, connections: u32) -> ServerShard<D> {
            let server = if <D::Db as Database>::NAME == "MySQL" {
                "mysql://root@127.0.0.1:3306"
            } else {
                "postgres://postgres@127.0.0.1:5432"
            };
            let url = format!("{server}/payfn_unit_{test}_{}", std::process::id());
            let _ = D::Db::drop_database(&url).await;
            D::Db::create_database(&url).await.expect("the database server is required (see .ci/run)");
            let shard =
                ServerShard::<D>::open(test, &ServerConfig { max_connections: connections, ..config(url) })
                    .await
                    .unwrap();
            assert_eq!(shard.not_ready(), None);
            let mut tx = shard.begin(true).await.unwrap();
            tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)", Vec::new()).await.unwrap();
            tx.commit().await.unwrap();
            shard
        }

        async fn ids(shard: &ServerShard<D>) -> Vec<i64> {
            let mut tx = shard.begin(false).await.unwrap();
            let rows = tx.query("SELECT id FROM t ORDER BY id", Vec::new()).await.unwrap();
            tx.commit().await.unwrap();
            rows.rows
                .into_iter()
                .map(|row| match row.as_slice() {
                    [Value::Int64(id)] => *id,
                    other => panic!("unexpected row {other:?}"),
                })
                .collect()
        }

        async fn insert(tx: &mut ServerTx<D>, id: i64) -> Result<u64, SqlError> {
            tx.execute("INSERT INTO t (id) VALUES (?)", vec![Value::Int64(id)]).await
        }

        /// The danger of a transaction without BEGIN (MariaDB): a connection
        /// back in the pool with its writes still open would have them
        /// committed by its next user. Dropped unended, it is closed instead.
        async fn a_transaction_dropped_unended_leaves_nothing(test: &str) {
            let shard = Self::shard(test, 1).await;
            let mut cancelled = shard.begin(true).await.unwrap();
            Self::insert(&mut cancelled, 1).await.unwrap();
            drop(cancelled);
            let mut next = shard.begin(true).await.unwrap();
            Self::insert(&mut next, 3).await.unwrap();
            next.commit().await.unwrap();
            let mut rolled_back = shard.begin(true).await.unwrap();
            Self::insert(&mut rolled_back, 2).await.unwrap();
            rolled_back.rollback().await;
            assert_eq!(Self::ids(&shard).await, vec![3], "only the committed transaction's row");
        }

        /// Parked connections (warm.rs) and sqlx's pool share one limit: many
        /// more transactions than connections, committed, rolled back or
        /// dropped, all get a connection in turn, and none waits for a parked
        /// one it cannot see.
        async fn more_transactions_than_connections_take_turns(test: &str) {
            let shard = Arc::new(Self::shard(test, 2).await);
            let tasks: Vec<_> = (0..60_i64)
                .map(|id| {
                    let shard = shard.clone();
                    tokio::spawn(async move {
                        let mut tx = shard.begin(true).await.unwrap();
                        Self::insert(&mut tx, id).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        match id % 3 {
                            0 => tx.commit().await.unwrap(),
                            1 => tx.rollback().await,
                            _ => drop(tx),
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let committed: Vec<i64> = (0..60).filter(|id| id % 3 == 0).collect();
            assert_eq!(Self::ids(&*shard).await, committed);
        }

        /// A batch writes its parameters in as literals (batch.rs): every value,
        /// however hostile, must land exactly as the bound path stores it, and
        /// none may change the statement around it.
        async fn a_batch_stores_what_bound_parameters_store(test: &str) {
            let shard = Self::shard(test, 2).await;
            let table = if <D::Db as Database>::NAME == "MySQL" {
                "CREATE TABLE v (id BIGINT PRIMARY KEY, t VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, \
                 b VARBINARY(200), i BIGINT, f DOUBLE, flag BOOLEAN, n BIGINT)"
            } else {
                "CREATE TABLE v (id BIGINT PRIMARY KEY, t TEXT, b BYTEA, i BIGINT, f DOUBLE PRECISION, \
                 flag BOOLEAN, n BIGINT)"
            };
            let mut tx = shard.begin(true).await.unwrap();
            tx.execute(table, Vec::new()).await.unwrap();
            tx.commit().await.unwrap();

            let insert = "INSERT INTO v (id, t, b, i, f, flag, n) VALUES (?, ?, ?, ?, ?, ?, ?)";
            // `i - ?` with a negative parameter: `i - -5` would open a comment.
            let update = "UPDATE v SET i = i - ?, f = f * ? WHERE id = ? AND t = ? -- ?\n";
            let hostile = |id: i64| {
                vec![
                    Value::Int64(id),
                    Value::Text("it's -- ?; DROP TABLE v; \\' \" ` # /* \\0 é 🦀 */".into()),
                    Value::Blob(vec![0, b'\'', b'\\', b'"', 0xff, b'\n', b'?']),
                    Value::Int64(i64::MIN + 10),
                    Value::Float64(-0.1),
                    Value::Boolean(true),
                    Value::Null,
                ]
            };
            let update_params = |id: i64, text: &Value| {
                vec![Value::Int64(-5), Value::Float64(-1.5e-300), Value::Int64(id), text.clone()]
            };
            // Empty text and bytes, and the extremes of both number types.
            let edges = |id: i64| {
                vec![
                    Value::Int64(id),
                    Value::Text(String::new()),
                    Value::Blob(Vec::new()),
                    Value::Int64(i64::MAX),
                    Value::Float64(f64::MIN_POSITIVE),
                    Value::Boolean(false),
                    Value::Int64(i64::MIN),
                ]
            };
            let bound = hostile(1);
            let batched = hostile(2);
            let mut tx = shard.begin(true).await.unwrap();
            tx.execute(insert, bound.clone()).await.unwrap();
            assert_eq!(tx.execute(update, update_params(1, &bound[1])).await.unwrap(), 1);
            tx.execute(insert, edges(3)).await.unwrap();
            let counts = tx
                .execute_batch(vec![
                    Statement { sql: insert.into(), params: batched.clone() },
                    Statement { sql: update.into(), params: update_params(2, &batched[1]) },
                    Statement { sql: insert.into(), params: edges(4) },
                ])
                .await
                .unwrap();
            assert_eq!(counts, vec![1, 1, 1]);
            tx.commit().await.unwrap();

            let mut tx = shard.begin(false).await.unwrap();
            let rows = tx.query("SELECT t, b, i, f, flag, n FROM v ORDER BY id", Vec::new()).await.unwrap();
            tx.commit().await.unwrap();
            let [row_bound, row_batched, edges_bound, edges_batched] = rows.rows.as_slice() else {
                panic!("four rows expected: {rows:?}")
            };
            assert_eq!(
                format!("{row_batched:?}"),
                format!("{row_bound:?}"),
                "the batch stored what binding stored"
            );
            assert_eq!(
                format!("{edges_batched:?}"),
                format!("{edges_bound:?}"),
                "the same for the edge values"
            );
            assert!(matches!(row_bound[2], Value::Int64(i) if i == i64::MIN + 15), "{row_bound:?}");
            assert!(matches!(row_bound[3], Value::Float64(f) if f == -0.1 * -1.5e-300), "{row_bound:?}");
        }

        /// Counts come back per statement; a failing statement is named, the
        /// ones after it never run, and the transaction then ends the way a
        /// failed `execute` would leave it on that server.
        async fn a_batch_counts_each_statement_and_stops_at_a_failure(test: &str) {
            let shard = Self::shard(test, 1).await;
            let statement = |sql: &str, ids: &[i64]| Statement {
                sql: sql.into(),
                params: ids.iter().map(|id| Value::Int64(*id)).collect(),
            };
            let insert = "INSERT INTO t (id) VALUES (?)";
            let mut tx = shard.begin(true).await.unwrap();
            let counts = tx
                .execute_batch(vec![
                    statement(insert, &[10]),
                    statement("INSERT INTO t (id) VALUES (?), (?)", &[11, 12]),
                    statement("UPDATE t SET id = id WHERE id >= ?", &[11]),
                    statement("DELETE FROM t WHERE id = ?;", &[99]),
                ])
                .await
                .unwrap();
            assert_eq!(counts, vec![1, 2, 2, 0], "rows changed (matched, for the UPDATE) per statement");
            tx.commit().await.unwrap();

            let mut tx = shard.begin(true).await.unwrap();
            let two_in_one = tx
                .execute_batch(vec![statement(insert, &[1]), statement("DELETE FROM t; SELECT 1", &[])])
                .await;
            assert!(
                matches!(&two_in_one, Err(SqlError::InvalidStatement(m)) if m.starts_with("statement 2 of 2"))
            );
            let failed = tx
                .execute_batch(vec![
                    statement(insert, &[1]),
                    statement(insert, &[10]),
                    statement(insert, &[2]),
                ])
                .await;
            let Err(SqlError::ConstraintViolation(why)) = failed else {
                panic!("duplicate accepted: {failed:?}")
            };
            assert!(why.starts_with("statement 2 of 3: "), "{why}");
            if D::ERROR_ABORTS_TRANSACTION {
                assert!(tx.commit().await.is_err(), "PostgreSQL's aborted transaction cannot commit");
                assert_eq!(Self::ids(&shard).await, vec![10, 11, 12]);
            } else {
                tx.commit().await.unwrap();
                assert_eq!(
                    Self::ids(&shard).await,
                    vec![1, 10, 11, 12],
                    "statement 1 stays, statement 3 never ran"
                );
            }
        }
    }

    #[tokio::test]
    async fn mariadb_write_transactions_run_with_autocommit_off() {
        let shard = On::<Mysql>::shard("autocommit", 1).await;
        let mut tx = shard.begin(true).await.unwrap();
        let rows = tx.query("SELECT @@autocommit AS autocommit", Vec::new()).await.unwrap();
        assert!(
            matches!(rows.rows.as_slice(), [row] if matches!(row.as_slice(), [Value::Int64(0)])),
            "{rows:?}"
        );
        On::<Mysql>::insert(&mut tx, 1).await.unwrap();
        On::<Mysql>::insert(&mut tx, 2).await.unwrap();
        tx.rollback().await;
        assert_eq!(On::<Mysql>::ids(&shard).await, Vec::<i64>::new(), "a rollback undoes every statement");
    }

    /// PostgreSQL aborts the transaction at any error and turns its COMMIT
    /// into a ROLLBACK without an error: without the doom, a component
    /// that went on after a failed statement would be answered 2xx for
    /// nothing committed.
    #[tokio::test]
    async fn postgres_refuses_the_commit_of_a_failed_transaction() {
        let shard = On::<Postgres>::shard("failed", 2).await;
        let mut tx = shard.begin(true).await.unwrap();
        On::<Postgres>::insert(&mut tx, 1).await.unwrap();
        let duplicate = On::<Postgres>::insert(&mut tx, 1).await;
        assert!(matches!(duplicate, Err(SqlError::ConstraintViolation(_))), "{duplicate:?}");
        assert!(On::<Postgres>::insert(&mut tx, 2).await.is_err());
        let commit = tx.commit().await;
        assert!(matches!(commit, Err(SqlError::ConstraintViolation(_))), "{commit:?}");
        assert_eq!(On::<Postgres>::ids(&shard).await, Vec::<i64>::new());
    }

    /// MariaDB ends a deadlock victim's transaction; with `autocommit = 0`
    /// its next statement would open a new one, which the COMMIT would
    /// then make durable: half a step. The victim refuses both instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_refuses_statements_and_commit_after_a_deadlock() {
        let shard = On::<Mysql>::shard("deadlock", 4).await;
        let mut setup = shard.begin(true).await.unwrap();
        On::<Mysql>::insert(&mut setup, 1).await.unwrap();
        On::<Mysql>::insert(&mut setup, 2).await.unwrap();
        setup.commit().await.unwrap();

        let lock = "SELECT id FROM t WHERE id = ? FOR UPDATE";
        let mut a = shard.begin(true).await.unwrap();
        let mut b = shard.begin(true).await.unwrap();
        a.query(lock, vec![Value::Int64(1)]).await.unwrap();
        b.query(lock, vec![Value::Int64(2)]).await.unwrap();
        // Each now wants the other's row: InnoDB picks a victim at once.
        let (ra, rb) = tokio::join!(a.query(lock, vec![Value::Int64(2)]), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            b.query(lock, vec![Value::Int64(1)]).await
        });
        let (mut victim, survivor, error) = match (ra, rb) {
            (Err(e), Ok(_)) => (a, b, e),
            (Ok(_), Err(e)) => (b, a, e),
            other => panic!("expected one deadlock victim, got {other:?}"),
        };
        assert!(matches!(error, SqlError::Conflict(_)), "{error:?}");
        assert!(matches!(On::<Mysql>::insert(&mut victim, 3).await, Err(SqlError::Conflict(_))));
        assert!(matches!(victim.commit().await, Err(SqlError::Conflict(_))));
        survivor.commit().await.unwrap();
        assert_eq!(On::<Mysql>::ids(&shard).await, vec![1, 2], "nothing of the victim's");
    }
}
