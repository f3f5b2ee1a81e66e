//! The backends a black-box test runs on, and direct reads of shard data.
//!
//! `Embedded` is the zero-setup default (SQLite shards, in-process kv, the
//! embedded event log). `Mariadb` and `Postgres` are the production shapes:
//! two shard databases on the machine's server (each created for the test,
//! reached through a cuttable proxy), Redis under a namespace of the test's
//! own, and a tansu Kafka broker of the test's own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use sqlx::{Column, Connection, Row, TypeInfo, ValueRef};

use super::{manifest, Host, Kafka, Proxy};

const MARIADB: &str = "mysql://root@127.0.0.1:3306";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379/";

/// Where a test's shards, kv and events live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Mariadb,
    Postgres,
}

/// What a backend needs beyond the host process. Shared by every host a
/// test starts on it (`Host::another`, `Host::restart`); the test's
/// databases are dropped by a later test run (see [`drop_stale_databases`]).
pub struct Env {
    pub backend: Backend,
    /// Shard name, the database URL the test reads it at, and the proxy
    /// the hosts reach it through.
    shards: Vec<(String, String, Proxy)>,
    /// The control store's database URL (deployed versions), and the proxy
    /// the hosts reach it through.
    control: Option<(String, Proxy)>,
    pub kafka: Option<Kafka>,
    pub redis_prefix: Option<String>,
}

impl Backend {
    /// A fresh environment: databases created, broker started.
    pub async fn env(self) -> Env {
        self.env_with_shards(super::SHARDS).await
    }

    /// A fresh environment with these shards (server backends: a database
    /// each).
    pub async fn env_with_shards(self, names: &[&str]) -> Env {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!("payfn_t{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let server = match self {
            Backend::Embedded => {
                return Env {
                    backend: self,
                    shards: Vec::new(),
                    control: None,
                    kafka: None,
                    redis_prefix: None,
                }
            }
            Backend::Mariadb => MARIADB,
            Backend::Postgres => POSTGRES,
        };
        drop_stale_databases(self).await;
        let port = if self == Backend::Mariadb { 3306 } else { 5432 };
        let mut shards = Vec::new();
        for name in names {
            let db = format!("{tag}_{}", name.replace('-', "_"));
            admin(self, &format!("CREATE DATABASE {db}")).await;
            shards.push((name.to_string(), format!("{server}/{db}"), Proxy::start(port).await));
        }
        // The control store on the same server, a database of its own.
        let control = format!("{tag}_control");
        admin(self, &format!("CREATE DATABASE {control}")).await;
        Env {
            backend: self,
            shards,
            control: Some((format!("{server}/{control}"), Proxy::start(port).await)),
            kafka: Some(Kafka::start().await),
            redis_prefix: Some(format!("{tag}:")),
        }
    }

    /// A host on SQLite shards (the embedded default) with a tansu broker of
    /// its own in place of the embedded event log; `runtime_config` is laid
    /// over that.
    pub async fn sqlite_with_kafka(manifest_text: &str, runtime_config: &str) -> Host {
        let env = Env {
            backend: Backend::Embedded,
            shards: Vec::new(),
            control: None,
            kafka: Some(Kafka::start().await),
            redis_prefix: None,
        };
        let config = merge(&env.runtime_config(), runtime_config);
        Host::start_in(manifest_text, &config, Some(Arc::new(env)))
    }

    /// The payments app on this backend.
    pub async fn start(self) -> Host {
        self.start_with(&manifest(""), "").await
    }

    /// A host with this manifest; `runtime_config` is laid over the
    /// backend's own (its keys win).
    pub async fn start_with(self, manifest_text: &str, runtime_config: &str) -> Host {
        let env = Arc::new(self.env().await);
        let config = merge(&env.runtime_config(), runtime_config);
        Host::start_in(manifest_text, &config, Some(env))
    }
}

impl Env {
    /// The runtime config that points a host at this environment.
    pub fn runtime_config(&self) -> String {
        let names: Vec<&str> = self.shards.iter().map(|(name, _, _)| name.as_str()).collect();
        self.runtime_config_of(&names)
    }

    /// The runtime config that points a host at this environment with only
    /// the shards `names` (server backends).
    pub fn runtime_config_of(&self, names: &[&str]) -> String {
        let mut text = String::new();
        let backend = match self.backend {
            Backend::Embedded => return self.kafka.as_ref().map(Kafka::runtime_config).unwrap_or_default(),
            Backend::Mariadb => "mysql",
            Backend::Postgres => "postgres",
        };
        for (name, url, proxy) in self.shards.iter().filter(|(name, _, _)| names.contains(&name.as_str())) {
            let url = through(url, proxy);
            text.push_str(&format!(
                "[[shards]]\nname = \"{name}\"\nbackend = \"{backend}\"\nurl = \"{url}\"\nacquire_timeout_ms = 1000\n\n"
            ));
        }
        if let Some((url, proxy)) = &self.control {
            let url = through(url, proxy);
            text.push_str(&format!("[control]\nurl = \"{url}\"\n\n"));
        }
        if let Some(prefix) = &self.redis_prefix {
            text.push_str(&format!(
                "[kv]\nbackend = \"redis\"\nurl = \"{REDIS}\"\nprefix = \"{prefix}\"\n\n"
            ));
        }
        if let Some(kafka) = &self.kafka {
            text.push_str(&kafka.runtime_config());
        }
        text
    }

    /// The merchant directory's entries, merchant -> (shard, how), read
    /// straight from the control store (server backends).
    pub async fn directory(&self) -> std::collections::BTreeMap<i64, (String, String)> {
        let (url, _) = self.control.as_ref().expect("a server control store");
        let sql = "SELECT merchant_id, shard, how FROM merchant_directory";
        let rows: Vec<(i64, String, String)> = match self.backend {
            Backend::Mariadb => {
                let mut c = sqlx::MySqlConnection::connect(url).await.expect("connect mariadb");
                sqlx::query_as(sql).fetch_all(&mut c).await.expect("read the directory")
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("connect postgres");
                sqlx::query_as(sql).fetch_all(&mut c).await.expect("read the directory")
            }
            Backend::Embedded => unreachable!("the embedded control store is a file"),
        };
        rows.into_iter().map(|(m, shard, how)| (m, (shard, how))).collect()
    }

    /// Cuts (true) or restores (false) the hosts' connections to the
    /// control store (server backends).
    pub fn set_control_outage(&self, down: bool) {
        let (_, proxy) = self.control.as_ref().expect("a server control store");
        proxy.set_outage(down);
    }

    /// Cuts (true) or restores (false) the hosts' connections to `shard`.
    pub fn set_shard_outage(&self, shard: &str, down: bool) {
        let (_, _, proxy) = self.shards.iter().find(|(n, _, _)| n == shard).expect("a server shard");
        proxy.set_outage(down);
    }

    /// Connections open to `shard` through its proxy now.
    pub fn shard_connections(&self, shard: &str) -> usize {
        let (_, _, proxy) = self.shards.iter().find(|(n, _, _)| n == shard).expect("a server shard");
        proxy.live()
    }

    /// A direct connection to `shard` (server backends).
    pub async fn shard(&self, shard: &str) -> Option<ShardDb> {
        let (_, url, _) = self.shards.iter().find(|(n, _, _)| n == shard)?;
        Some(match self.backend {
            Backend::Mariadb => {
                ShardDb::Mysql(sqlx::MySqlConnection::connect(url).await.expect("connect mariadb"))
            }
            Backend::Postgres => {
                ShardDb::Postgres(sqlx::PgConnection::connect(url).await.expect("connect postgres"))
            }
            Backend::Embedded => unreachable!("embedded shards are files"),
        })
    }
}

/// `url` (with the server's own port) reached through `proxy` instead: how
/// the hosts connect, so a test can cut them off.
fn through(url: &str, proxy: &Proxy) -> String {
    let port = format!(":{}/", proxy.port);
    url.replace(":3306/", &port).replace(":5432/", &port)
}

/// `over`'s keys laid over `base`'s (tables merged key by key, anything
/// else replaced).
fn merge(base: &str, over: &str) -> String {
    fn lay(base: &mut toml::Table, over: toml::Table) {
        for (key, value) in over {
            match (base.get_mut(&key), value) {
                (Some(toml::Value::Table(b)), toml::Value::Table(o)) => lay(b, o),
                (_, value) => {
                    base.insert(key, value);
                }
            }
        }
    }
    let mut merged: toml::Table = base.parse().expect("backend config");
    lay(&mut merged, over.parse().expect("test config"));
    toml::to_string(&merged).expect("config text")
}

/// Runs `sql` on the server's administrative database.
async fn admin(backend: Backend, sql: &str) {
    match backend {
        Backend::Mariadb => {
            let mut c = sqlx::MySqlConnection::connect(&format!("{MARIADB}/"))
                .await
                .expect("MariaDB at 127.0.0.1:3306");
            sqlx::raw_sql(sql).execute(&mut c).await.expect(sql);
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres"))
                .await
                .expect("PostgreSQL at 127.0.0.1:5432");
            sqlx::raw_sql(sql).execute(&mut c).await.expect(sql);
        }
        Backend::Embedded => {}
    }
}

/// Drops test databases whose test process is gone, once per process.
async fn drop_stale_databases(backend: Backend) {
    static DONE: tokio::sync::Mutex<(bool, bool)> = tokio::sync::Mutex::const_new((false, false));
    let mut done = DONE.lock().await;
    let flag = if backend == Backend::Mariadb { &mut done.0 } else { &mut done.1 };
    if std::mem::replace(flag, true) {
        return;
    }
    let names: Vec<String> = match backend {
        Backend::Mariadb => {
            let mut c = sqlx::MySqlConnection::connect(&format!("{MARIADB}/")).await.expect("MariaDB");
            sqlx::query_scalar("SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata WHERE schema_name LIKE 'payfn\\_t%'")
                .fetch_all(&mut c)
                .await
                .expect("list databases")
        }
        Backend::Postgres => {
            let mut c =
                sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres")).await.expect("PostgreSQL");
            sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE 'payfn\\_t%'")
                .fetch_all(&mut c)
                .await
                .expect("list databases")
        }
        Backend::Embedded => return,
    };
    for name in names {
        let pid: Option<u32> =
            name.strip_prefix("payfn_t").and_then(|r| r.split('_').next()).and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let force = if backend == Backend::Postgres { " WITH (FORCE)" } else { "" };
            admin(backend, &format!("DROP DATABASE IF EXISTS {name}{force}")).await;
        }
    }
}

/// One cell of a row read straight from a shard.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    pub fn i64(&self) -> i64 {
        match self {
            Cell::Int(v) => *v,
            Cell::Null => 0,
            other => panic!("not an integer: {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Cell::Text(v) => v.clone(),
            // MariaDB flags text in a binary collation as binary.
            Cell::Bytes(v) if std::str::from_utf8(v).is_ok() => String::from_utf8_lossy(v).into_owned(),
            other => panic!("not text: {other:?}"),
        }
    }

    pub fn opt_text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            other => Some(other.text()),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Cell::Bytes(v) => v.clone(),
            Cell::Text(v) => v.clone().into_bytes(),
            other => panic!("not bytes: {other:?}"),
        }
    }
}

/// A connection to one shard, whatever its dialect. Test queries are
/// written without parameters, in SQL all three dialects accept.
pub enum ShardDb {
    Sqlite(sqlx::SqliteConnection),
    Mysql(sqlx::MySqlConnection),
    Postgres(sqlx::PgConnection),
}

impl ShardDb {
    /// Every row of `sql`.
    pub async fn rows(&mut self, sql: &str) -> Vec<Vec<Cell>> {
        match self {
            ShardDb::Sqlite(c) => sqlx::query(sql)
                .fetch_all(c)
                .await
                .expect(sql)
                .iter()
                .map(|r| cells(r, |_, _| None))
                .collect(),
            ShardDb::Mysql(c) => {
                sqlx::query(sql).fetch_all(c).await.expect(sql).iter().map(|r| cells(r, decimal)).collect()
            }
            ShardDb::Postgres(c) => {
                sqlx::query(sql).fetch_all(c).await.expect(sql).iter().map(|r| cells(r, decimal)).collect()
            }
        }
    }

    /// The first column of the first row of `sql`, as an integer.
    pub async fn i64(&mut self, sql: &str) -> i64 {
        self.rows(sql).await.first().and_then(|r| r.first()).map_or(0, Cell::i64)
    }

    /// The first column of every row of `sql`.
    pub async fn column(&mut self, sql: &str) -> Vec<Cell> {
        self.rows(sql).await.into_iter().filter_map(|r| r.into_iter().next()).collect()
    }

    /// Runs a statement (test set-up only).
    pub async fn execute(&mut self, sql: &str) {
        match self {
            ShardDb::Sqlite(c) => drop(sqlx::raw_sql(sql).execute(c).await.expect(sql)),
            ShardDb::Mysql(c) => drop(sqlx::raw_sql(sql).execute(c).await.expect(sql)),
            ShardDb::Postgres(c) => drop(sqlx::raw_sql(sql).execute(c).await.expect(sql)),
        }
    }

    pub async fn close(self) {
        let _ = match self {
            ShardDb::Sqlite(c) => c.close().await,
            ShardDb::Mysql(c) => c.close().await,
            ShardDb::Postgres(c) => c.close().await,
        };
    }
}

/// A DECIMAL / NUMERIC cell (SUM() on the servers) as a whole number.
fn decimal<R: Row>(row: &R, i: usize) -> Option<i64>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> rust_decimal::Decimal: sqlx::Decode<'r, R::Database>,
{
    let v: rust_decimal::Decimal = row.try_get_unchecked(i).ok()?;
    i64::try_from(v).ok()
}

/// A row's cells, sorted by the type each value reports.
fn cells<R: Row>(row: &R, decimal: fn(&R, usize) -> Option<i64>) -> Vec<Cell>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database>,
    for<'r> i16: sqlx::Decode<'r, R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database>,
{
    (0..row.columns().len())
        .map(|i| {
            let raw = row.try_get_raw(i).expect("column");
            if raw.is_null() {
                return Cell::Null;
            }
            let type_name = raw.type_info().name().to_uppercase();
            let name = row.columns()[i].name().to_string();
            let what = format!("column {name} ({type_name})");
            match type_name.as_str() {
                "INT2" => Cell::Int(row.try_get_unchecked::<i16, _>(i).expect(&what).into()),
                "INT4" => Cell::Int(row.try_get_unchecked::<i32, _>(i).expect(&what).into()),
                "INTEGER" | "INT8" | "BIGINT" | "INT" | "SMALLINT" | "TINYINT" | "BOOLEAN" => {
                    Cell::Int(row.try_get_unchecked(i).expect(&what))
                }
                "NUMERIC" | "DECIMAL" => Cell::Int(decimal(row, i).expect(&what)),
                "REAL" | "FLOAT8" | "DOUBLE" => Cell::Real(row.try_get_unchecked(i).expect(&what)),
                "BLOB" | "BYTEA" | "MEDIUMBLOB" | "VARBINARY" | "BINARY" => {
                    Cell::Bytes(row.try_get_unchecked(i).expect(&what))
                }
                _ => Cell::Text(row.try_get_unchecked(i).expect(&what)),
            }
        })
        .collect()
}
