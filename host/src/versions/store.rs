//! The control store: deployed versions, their binaries, and which version
//! serves each component, in one database every host of a deployment shares.
//!
//! SQLite (a file in the state directory) by default, MariaDB/MySQL or
//! PostgreSQL for several machines; one code path through `sqlx::Any`.
//! Every change to what serves bumps `control_generation` first, in the same
//! transaction: the update both serialises concurrent changes (it locks the
//! one row) and tells every other host, with one cheap read, that something
//! changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::config::ControlConfig;
use crate::metrics::StatsCounts;
use crate::shards::placeholders;

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../infra/migrations/control/sqlite");
static MYSQL: sqlx::migrate::Migrator = sqlx::migrate!("../infra/migrations/control/mysql");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../infra/migrations/control/postgres");

/// One uploaded version of a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionRecord {
    pub component: String,
    pub digest: String,
    pub label: String,
    /// Unix milliseconds.
    pub deployed_at: i64,
    pub deployed_by: String,
    pub size: i64,
}

/// Whether a component follows its `spin.toml` source or an operator's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Set from the manifest's `source` at start (or by `up --watch`); a
    /// rebuilt file replaces it at the next start.
    Manifest,
    /// Set through the admin API; survives restarts whatever the file holds.
    Admin,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Manifest => "manifest",
            Origin::Admin => "admin",
        }
    }
}

/// What serves one component.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActiveRecord {
    pub component: String,
    pub digest: String,
    pub previous_digest: Option<String>,
    pub canary_digest: Option<String>,
    pub canary_percent: u8,
    pub origin: Origin,
    pub generation: i64,
    pub changed_at: i64,
    pub changed_by: String,
}

/// A change to what serves a component.
#[derive(Debug, Clone)]
pub enum Change {
    /// `digest` serves everyone; a running canary ends.
    Activate { digest: String, origin: Origin },
    /// Back to the previous version (or, while a canary runs, end it).
    Rollback,
    /// `percent` of merchants get `digest`; the rest keep the active version.
    Canary { digest: String, percent: u8 },
}

impl Change {
    /// The version the change names (a rollback names none).
    pub fn digest(&self) -> Option<&str> {
        match self {
            Change::Activate { digest, .. } | Change::Canary { digest, .. } => Some(digest),
            Change::Rollback => None,
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Change::Activate { .. } => "activate",
            Change::Rollback => "rollback",
            Change::Canary { .. } => "canary",
        }
    }
}

/// One change from the audit trail.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeploymentRecord {
    pub generation: i64,
    pub action: String,
    pub digest: String,
    pub previous_digest: Option<String>,
    pub canary_digest: Option<String>,
    pub canary_percent: i64,
    pub changed_at: i64,
    pub actor: String,
}

/// A host's last check-in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostRecord {
    pub host_id: String,
    pub address: String,
    pub started_at: i64,
    pub seen_at: i64,
    pub generation: i64,
    /// The host's invocation counts per version (by component, then
    /// digest), since it started; a listing sums them over live hosts.
    #[serde(skip)]
    pub stats: HostStats,
}

/// Invocation counts by component, then version digest.
pub type HostStats = BTreeMap<String, BTreeMap<String, StatsCounts>>;

/// Why a change was refused; the caller's mistake, not a store failure.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Which server the control store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlDialect {
    Sqlite,
    Mysql,
    Postgres,
}

/// The shared control database.
pub struct ControlStore {
    pool: AnyPool,
    postgres: bool,
    describe: String,
}

impl ControlStore {
    /// Connects (creating the SQLite file if needed) and migrates.
    pub async fn open(config: &ControlConfig, state_dir: &Path) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, describe) = match config.server_url()? {
            Some(url) => {
                let describe = crate::secrets::redact_url(&url);
                (url, describe)
            }
            None => {
                let path = state_dir.join(&config.path);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                (format!("sqlite://{}?mode=rwc", path.display()), format!("sqlite {}", path.display()))
            }
        };
        let migrator = match url.split(':').next() {
            Some("sqlite") => &SQLITE,
            Some("mysql" | "mariadb") => &MYSQL,
            Some("postgres" | "postgresql") => &POSTGRES,
            _ => {
                bail!("runtime config: [control] url must be sqlite:, mysql: or postgres:, found {describe}")
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the control store {describe}"))?;
        if url.starts_with("sqlite") {
            // Several hosts on one state directory read it while one writes.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        migrator.run(&pool).await.with_context(|| format!("migrating the control store {describe}"))?;
        Ok(Self { pool, postgres: url.starts_with("postgres"), describe })
    }

    /// The pool and its dialect, for the other users of the control store
    /// (the merchant directory).
    pub fn pool(&self) -> (AnyPool, ControlDialect) {
        let dialect = if self.postgres {
            ControlDialect::Postgres
        } else if self.describe.starts_with("sqlite") {
            ControlDialect::Sqlite
        } else {
            ControlDialect::Mysql
        };
        (self.pool.clone(), dialect)
    }

    /// A one-line description for the startup summary.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn sql<'a>(&self, statement: &'a str) -> std::borrow::Cow<'a, str> {
        if self.postgres {
            placeholders::numbered(statement)
        } else {
            statement.into()
        }
    }

    /// The generation of the last change.
    pub async fn generation(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT generation FROM control_generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .context("reading the control generation")?;
        Ok(row.try_get(0)?)
    }

    /// What serves every component that has an active version.
    pub async fn active(&self) -> anyhow::Result<Vec<ActiveRecord>> {
        let rows =
            sqlx::query(ACTIVE_COLUMNS).fetch_all(&self.pool).await.context("reading active versions")?;
        rows.iter().map(active_record).collect()
    }

    /// The versions of `component` (or of every component), oldest first.
    pub async fn versions(&self, component: Option<&str>) -> anyhow::Result<Vec<VersionRecord>> {
        let base = "SELECT v.component, v.digest, v.label, v.deployed_at, v.deployed_by, b.size \
                    FROM component_versions v JOIN component_blobs b ON b.digest = v.digest";
        let rows = match component {
            Some(name) => {
                let statement = format!("{base} WHERE v.component = ? ORDER BY v.deployed_at, v.digest");
                sqlx::query(&self.sql(&statement)).bind(name.to_string()).fetch_all(&self.pool).await
            }
            None => {
                let statement = format!("{base} ORDER BY v.component, v.deployed_at, v.digest");
                sqlx::query(&statement).fetch_all(&self.pool).await
            }
        }
        .context("reading versions")?;
        rows.iter().map(version_record).collect()
    }

    /// The bytes of the binary `digest`.
    pub async fn blob(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let row = sqlx::query(&self.sql("SELECT bytes FROM component_blobs WHERE digest = ?"))
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading component binary {digest}"))?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    /// Records `bytes` as a version of `component`. Uploading the same bytes
    /// again keeps the first record (its label and time): a digest is one
    /// version.
    pub async fn put_version(
        &self,
        component: &str,
        digest: &str,
        label: &str,
        deployed_by: &str,
        bytes: &[u8],
    ) -> anyhow::Result<VersionRecord> {
        let mut tx = self.pool.begin().await.context("control store")?;
        lock(&mut tx, 0).await?;
        let have_blob = sqlx::query(&self.sql("SELECT 1 FROM component_blobs WHERE digest = ?"))
            .bind(digest.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !have_blob {
            sqlx::query(&self.sql("INSERT INTO component_blobs (digest, size, bytes) VALUES (?, ?, ?)"))
                .bind(digest.to_string())
                .bind(bytes.len() as i64)
                .bind(bytes.to_vec())
                .execute(&mut *tx)
                .await
                .context("storing the component binary")?;
        }
        let have_version =
            sqlx::query(&self.sql("SELECT 1 FROM component_versions WHERE component = ? AND digest = ?"))
                .bind(component.to_string())
                .bind(digest.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if !have_version {
            sqlx::query(&self.sql(
                "INSERT INTO component_versions (component, digest, label, deployed_at, deployed_by) \
                 VALUES (?, ?, ?, ?, ?)",
            ))
            .bind(component.to_string())
            .bind(digest.to_string())
            .bind(label.to_string())
            .bind(now_ms())
            .bind(deployed_by.to_string())
            .execute(&mut *tx)
            .await
            .context("recording the version")?;
        }
        tx.commit().await.context("control store commit")?;
        let versions = self.versions(Some(component)).await?;
        versions
            .into_iter()
            .find(|v| v.digest == digest)
            .context("the version vanished right after it was recorded")
    }

    /// Applies `change` to `component` and returns what serves it now.
    pub async fn change(
        &self,
        component: &str,
        change: Change,
        actor: &str,
    ) -> Result<ActiveRecord, ChangeError> {
        let mut tx = self.pool.begin().await.context("control store")?;
        let generation = lock(&mut tx, 1).await?;
        let current = sqlx::query(&self.sql(&format!("{ACTIVE_COLUMNS} WHERE component = ?")))
            .bind(component.to_string())
            .fetch_optional(&mut *tx)
            .await
            .context("reading the active version")?
            .map(|row| active_record(&row))
            .transpose()?;

        if let Some(digest) = change.digest() {
            let known =
                sqlx::query(&self.sql("SELECT 1 FROM component_versions WHERE component = ? AND digest = ?"))
                    .bind(component.to_string())
                    .bind(digest.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .context("reading versions")?
                    .is_some();
            if !known {
                return Err(ChangeError::Refused(format!("`{component}` has no version {digest}")));
            }
        }
        let next = next_active(component, current.as_ref(), &change, generation, actor)?;
        let params = [
            Param::Text(next.digest.clone()),
            Param::OptText(next.previous_digest.clone()),
            Param::OptText(next.canary_digest.clone()),
            Param::Int(i64::from(next.canary_percent)),
            Param::Text(next.origin.as_str().to_string()),
            Param::Int(next.generation),
            Param::Int(next.changed_at),
            Param::Text(next.changed_by.clone()),
            Param::Text(component.to_string()),
        ];
        self.upsert(
            &mut tx,
            "UPDATE active_versions SET digest = ?, previous_digest = ?, canary_digest = ?, \
             canary_percent = ?, origin = ?, generation = ?, changed_at = ?, changed_by = ? \
             WHERE component = ?",
            "INSERT INTO active_versions (digest, previous_digest, canary_digest, canary_percent, \
             origin, generation, changed_at, changed_by, component) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &params,
        )
        .await
        .context("recording the active version")?;
        sqlx::query(&self.sql(
            "INSERT INTO deployments (generation, component, action, digest, previous_digest, \
             canary_digest, canary_percent, changed_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(generation)
        .bind(component.to_string())
        .bind(change.action())
        .bind(next.digest.clone())
        .bind(next.previous_digest.clone())
        .bind(next.canary_digest.clone())
        .bind(i64::from(next.canary_percent))
        .bind(next.changed_at)
        .bind(actor.to_string())
        .execute(&mut *tx)
        .await
        .context("recording the deployment")?;
        tx.commit().await.context("control store commit")?;
        Ok(next)
    }

    /// The last `limit` changes to `component`, newest first.
    pub async fn history(&self, component: &str, limit: i64) -> anyhow::Result<Vec<DeploymentRecord>> {
        let rows = sqlx::query(&self.sql(
            "SELECT generation, action, digest, previous_digest, canary_digest, canary_percent, changed_at, actor \
             FROM deployments WHERE component = ? ORDER BY generation DESC LIMIT ?",
        ))
        .bind(component.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading the deployment history")?;
        rows.iter()
            .map(|row| {
                Ok(DeploymentRecord {
                    generation: row.try_get(0)?,
                    action: row.try_get(1)?,
                    digest: row.try_get(2)?,
                    previous_digest: row.try_get(3)?,
                    canary_digest: row.try_get(4)?,
                    canary_percent: row.try_get(5)?,
                    changed_at: row.try_get(6)?,
                    actor: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// Records that `host_id` serves `generation`, with its figures.
    pub async fn check_in(&self, host: &HostRecord) -> anyhow::Result<()> {
        let stats = serde_json::to_vec(&host.stats).context("encoding the host's figures")?;
        let params = [
            Param::Text(host.address.clone()),
            Param::Int(host.started_at),
            Param::Int(host.seen_at),
            Param::Int(host.generation),
            Param::Bytes(stats),
            Param::Text(host.host_id.clone()),
        ];
        let mut connection = self.pool.acquire().await.context("host check-in")?;
        self.upsert(
            &mut connection,
            "UPDATE control_hosts SET address = ?, started_at = ?, seen_at = ?, generation = ?, stats = ? \
             WHERE host_id = ?",
            "INSERT INTO control_hosts (address, started_at, seen_at, generation, stats, host_id) \
             VALUES (?, ?, ?, ?, ?, ?)",
            &params,
        )
        .await
        .context("host check-in")
    }

    /// Runs `update`, then `insert` if it touched no row; both take `params`
    /// in the same order (the key last). The caller serialises writers.
    async fn upsert(
        &self,
        connection: &mut sqlx::AnyConnection,
        update: &str,
        insert: &str,
        params: &[Param],
    ) -> anyhow::Result<()> {
        let update = self.sql(update);
        let updated = bind_all(sqlx::query(&update), params).execute(&mut *connection).await?;
        if updated.rows_affected() == 0 {
            let insert = self.sql(insert);
            bind_all(sqlx::query(&insert), params).execute(&mut *connection).await?;
        }
        Ok(())
    }

    /// Hosts seen since `since_ms` (unix milliseconds).
    pub async fn hosts(&self, since_ms: i64) -> anyhow::Result<Vec<HostRecord>> {
        let rows = sqlx::query(&self.sql(
            "SELECT host_id, address, started_at, seen_at, generation, stats FROM control_hosts \
             WHERE seen_at >= ? ORDER BY started_at, host_id",
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .context("reading hosts")?;
        rows.iter()
            .map(|row| {
                let host_id: String = row.try_get(0)?;
                let stats: Option<Vec<u8>> = row.try_get(5)?;
                // Figures are informative: a host whose JSON does not parse
                // (another build, a hand edit) is listed without them.
                let stats = match stats.as_deref().map(serde_json::from_slice::<HostStats>) {
                    Some(Ok(stats)) => stats,
                    Some(Err(e)) => {
                        tracing::debug!(host = %host_id, "unreadable figures in control_hosts: {e}");
                        HostStats::new()
                    }
                    None => HostStats::new(),
                };
                Ok(HostRecord {
                    host_id,
                    address: row.try_get(1)?,
                    started_at: row.try_get(2)?,
                    seen_at: row.try_get(3)?,
                    generation: row.try_get(4)?,
                    stats,
                })
            })
            .collect()
    }
}

/// A value bound to a control-store statement.
enum Param {
    Int(i64),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    params: &[Param],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for param in params {
        query = match param {
            Param::Int(v) => query.bind(*v),
            Param::Text(v) => query.bind(v.clone()),
            Param::OptText(v) => query.bind(v.clone()),
            Param::Bytes(v) => query.bind(v.clone()),
        };
    }
    query
}

const ACTIVE_COLUMNS: &str = "SELECT component, digest, previous_digest, canary_digest, canary_percent, \
                              origin, generation, changed_at, changed_by FROM active_versions";

/// Locks the control row for the rest of the transaction, adds `bump` to
/// the generation (0: lock only), and returns the generation after. An
/// update takes the row lock on every backend, and SQLite's write lock.
pub(crate) async fn lock(tx: &mut sqlx::Transaction<'_, sqlx::Any>, bump: i64) -> anyhow::Result<i64> {
    sqlx::query(&format!("UPDATE control_generation SET generation = generation + {bump} WHERE id = 1"))
        .execute(&mut **tx)
        .await
        .context("locking the control store")?;
    let row = sqlx::query("SELECT generation FROM control_generation WHERE id = 1")
        .fetch_one(&mut **tx)
        .await
        .context("reading the control generation")?;
    Ok(row.try_get(0)?)
}

/// The rules of a change, apart from storage.
fn next_active(
    component: &str,
    current: Option<&ActiveRecord>,
    change: &Change,
    generation: i64,
    actor: &str,
) -> Result<ActiveRecord, ChangeError> {
    let changed_at = now_ms();
    let base = |digest: String, previous: Option<String>, origin: Origin| ActiveRecord {
        component: component.to_string(),
        digest,
        previous_digest: previous,
        canary_digest: None,
        canary_percent: 0,
        origin,
        generation,
        changed_at,
        changed_by: actor.to_string(),
    };
    match (change, current) {
        (Change::Activate { digest, origin }, None) => Ok(base(digest.clone(), None, *origin)),
        (Change::Activate { digest, origin }, Some(current)) => {
            // Re-activating what serves keeps the rollback target.
            let previous = if &current.digest == digest {
                current.previous_digest.clone()
            } else {
                Some(current.digest.clone())
            };
            Ok(base(digest.clone(), previous, *origin))
        }
        (Change::Rollback, None) => {
            Err(ChangeError::Refused(format!("`{component}` has no active version to roll back")))
        }
        (Change::Rollback, Some(current)) if current.canary_digest.is_some() => {
            // Taking back a canary: everyone returns to the active version.
            Ok(base(current.digest.clone(), current.previous_digest.clone(), Origin::Admin))
        }
        (Change::Rollback, Some(current)) => match &current.previous_digest {
            Some(previous) => Ok(base(previous.clone(), Some(current.digest.clone()), Origin::Admin)),
            None => {
                Err(ChangeError::Refused(format!("`{component}` has no previous version to roll back to")))
            }
        },
        (Change::Canary { .. }, None) => {
            Err(ChangeError::Refused(format!("`{component}` has no active version to run a canary beside")))
        }
        (Change::Canary { digest, percent }, Some(current)) => {
            if !(1..=99).contains(percent) {
                return Err(ChangeError::Refused(format!(
                    "a canary takes 1 to 99 percent, not {percent} (activate or roll back instead)"
                )));
            }
            if &current.digest == digest {
                return Err(ChangeError::Refused(format!(
                    "{} already serves `{component}`; a canary needs a different version",
                    &digest[..12.min(digest.len())]
                )));
            }
            let mut next = base(current.digest.clone(), current.previous_digest.clone(), Origin::Admin);
            next.canary_digest = Some(digest.clone());
            next.canary_percent = *percent;
            Ok(next)
        }
    }
}

fn active_record(row: &AnyRow) -> anyhow::Result<ActiveRecord> {
    let origin: String = row.try_get(5)?;
    let percent: i64 = row.try_get(4)?;
    Ok(ActiveRecord {
        component: row.try_get(0)?,
        digest: row.try_get(1)?,
        previous_digest: row.try_get(2)?,
        canary_digest: row.try_get(3)?,
        canary_percent: u8::try_from(percent.clamp(0, 100)).unwrap_or(0),
        origin: if origin == "admin" { Origin::Admin } else { Origin::Manifest },
        generation: row.try_get(6)?,
        changed_at: row.try_get(7)?,
        changed_by: row.try_get(8)?,
    })
}

fn version_record(row: &AnyRow) -> anyhow::Result<VersionRecord> {
    Ok(VersionRecord {
        component: row.try_get(0)?,
        digest: row.try_get(1)?,
        label: row.try_get(2)?,
        deployed_at: row.try_get(3)?,
        deployed_by: row.try_get(4)?,
        size: row.try_get(5)?,
    })
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(digest: &str, previous: Option<&str>) -> ActiveRecord {
        ActiveRecord {
            component: "authorize".into(),
            digest: digest.into(),
            previous_digest: previous.map(Into::into),
            canary_digest: None,
            canary_percent: 0,
            origin: Origin::Admin,
            generation: 1,
            changed_at: 0,
            changed_by: "t".into(),
        }
    }

    fn activate(digest: &str) -> Change {
        Change::Activate { digest: digest.into(), origin: Origin::Admin }
    }

    #[test]
    fn activate_then_rollback_alternates() {
        let a = next_active("authorize", None, &activate("a"), 1, "t").unwrap();
        assert_eq!((a.digest.as_str(), a.previous_digest.as_deref()), ("a", None));
        let b = next_active("authorize", Some(&a), &activate("b"), 2, "t").unwrap();
        assert_eq!((b.digest.as_str(), b.previous_digest.as_deref()), ("b", Some("a")));
        let back = next_active("authorize", Some(&b), &Change::Rollback, 3, "t").unwrap();
        assert_eq!((back.digest.as_str(), back.previous_digest.as_deref()), ("a", Some("b")));
        // Re-activating what serves keeps the rollback target.
        let same = next_active("authorize", Some(&back), &activate("a"), 4, "t").unwrap();
        assert_eq!(same.previous_digest.as_deref(), Some("b"));
    }

    #[test]
    fn rollback_needs_a_previous_version() {
        let err = next_active("authorize", Some(&active("a", None)), &Change::Rollback, 2, "t").unwrap_err();
        assert!(err.to_string().contains("no previous version"), "{err}");
    }

    #[test]
    fn canary_rules() {
        let current = active("a", None);
        let canary = |digest: &str, percent| Change::Canary { digest: digest.into(), percent };
        for percent in [0, 100] {
            assert!(next_active("authorize", Some(&current), &canary("b", percent), 2, "t").is_err());
        }
        assert!(next_active("authorize", Some(&current), &canary("a", 10), 2, "t").is_err());
        let running = next_active("authorize", Some(&current), &canary("b", 10), 2, "t").unwrap();
        assert_eq!((running.canary_digest.as_deref(), running.canary_percent), (Some("b"), 10));
        // Rolling back a canary ends it and keeps the active version.
        let ended = next_active("authorize", Some(&running), &Change::Rollback, 3, "t").unwrap();
        assert_eq!((ended.digest.as_str(), ended.canary_digest), ("a", None));
        // Activating the canary promotes it.
        let promoted = next_active("authorize", Some(&running), &activate("b"), 3, "t").unwrap();
        assert_eq!((promoted.digest.as_str(), promoted.previous_digest.as_deref()), ("b", Some("a")));
        assert_eq!(promoted.canary_digest, None);
    }
}
