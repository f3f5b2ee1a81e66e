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

use sqlx::error::DatabaseError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::{Pool, PoolOptions};
use sqlx::{Database, Executor, IntoArguments, Row};

use super::errors;
use super::runtime_config::ServerConfig;
use crate::bindings::sql::{Error as SqlError, RowSet, Value};

/// What one dialect supplies.
pub trait Driver: Send + Sync + 'static {
    type Db: Database;
    /// The statement that opens a read-only transaction.
    const READ_ONLY_BEGIN: &'static str;

    /// The dialect's migrations (`infra/migrations/<dialect>`).
    fn migrator() -> &'static Migrator;
    /// A pool, not yet connected, with the session settings of `config`.
    fn pool(url: &str, config: &ServerConfig) -> anyhow::Result<Pool<Self::Db>>;
    /// The statement as the server wants it (placeholder style).
    fn statement(statement: &str) -> Cow<'_, str>;
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
pub fn pool_options<DB: Database>(config: &ServerConfig) -> PoolOptions<DB> {
    PoolOptions::new()
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
        let shard = Self {
            pool,
            display: redact(&url),
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
        Ok(shard)
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
        if let Some(why) = self.not_ready() {
            return Err(SqlError::Unavailable(why));
        }
        let tx = if write { self.pool.begin().await } else { self.pool.begin_with(D::READ_ONLY_BEGIN).await };
        tx.map(ServerTx).map_err(map::<D>)
    }

    pub async fn ping(&self) -> bool {
        self.not_ready().is_none() && sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
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
{
    if migrate {
        // sqlx takes an advisory lock, so hosts starting together migrate once.
        D::migrator().run(pool).await?;
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

/// Runs the dialect's migrations on `url` and lists what is applied.
pub async fn migrate<D: Driver>(name: &str, config: &ServerConfig) -> anyhow::Result<Vec<i64>>
where
    <D::Db as Database>::Connection: Migrate,
{
    let url = config.url(name)?;
    let pool = D::pool(&url, config)?;
    D::migrator().run(&pool).await?;
    let mut conn = pool.acquire().await?;
    let applied = conn.list_applied_migrations().await?.into_iter().map(|m| m.version).collect();
    Ok(applied)
}

/// A transaction on one server shard. Dropping it rolls it back.
pub struct ServerTx<D: Driver>(sqlx::Transaction<'static, D::Db>);

impl<D: Driver> ServerTx<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'static>: IntoArguments<'q, D::Db>,
{
    pub async fn query(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        let statement = D::statement(statement);
        let rows =
            sqlx::query_with(&statement, D::bind(params)?).fetch_all(&mut *self.0).await.map_err(map::<D>)?;
        let columns = rows
            .first()
            .map(|r| r.columns().iter().map(|c| sqlx::Column::name(c).to_string()).collect())
            .unwrap_or_default();
        let rows = rows.iter().map(D::decode_row).collect::<Result<_, _>>()?;
        Ok(RowSet { columns, rows })
    }

    pub async fn execute(&mut self, statement: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        let statement = D::statement(statement);
        let done =
            sqlx::query_with(&statement, D::bind(params)?).execute(&mut *self.0).await.map_err(map::<D>)?;
        Ok(D::rows_affected(&done))
    }

    pub async fn commit(self) -> Result<(), SqlError> {
        self.0.commit().await.map_err(map::<D>)
    }

    pub async fn rollback(self) {
        if let Err(e) = self.0.rollback().await {
            tracing::warn!(error = %e, "rollback failed; the connection is discarded");
        }
    }
}

fn map<D: Driver>(e: sqlx::Error) -> SqlError {
    errors::map(e, D::classify)
}

/// `scheme://user:secret@host/db` -> `scheme://user@host/db`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("mysql://payfn:s3cret@db-1:3306/payfn"), "mysql://payfn@db-1:3306/payfn");
        assert_eq!(redact("postgres://localhost/payfn"), "postgres://localhost/payfn");
    }
}
