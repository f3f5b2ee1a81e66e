//! Black-box test support: builds the components, starts the real `payfn`
//! binary on a free port with its own state directory, and talks HTTP to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

mod backend;
pub mod tls;
#[allow(unused_imports)]
pub use backend::{Backend, Cell, Env, ShardDb, REDIS};

pub const PAYFN: &str = env!("CARGO_BIN_EXE_payfn");

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// Where the component binaries land.
pub fn wasm_dir() -> PathBuf {
    repo().join("target/wasm32-wasip2/release")
}

/// Builds the product components (through `payfn build`, as a user would)
/// and the test components, once per test binary.
///
/// The test components are built as their own selection (`-p 'test-*'`),
/// never together with the steps: cargo unifies features over what one
/// command selects, so a workspace-wide build compiles the steps anew, and
/// each `payfn build` (one step per command) then compiled them back,
/// about 45 s per test binary.
pub fn build_components() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = repo().join("target");
        let status = Command::new(PAYFN)
            .args(["build", "--manifest"])
            .arg(repo().join("spin.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run payfn build");
        assert!(status.success(), "payfn build failed");
        for entry in std::fs::read_dir(repo().join("tests/components")).expect("read tests/components") {
            let manifest = entry.expect("read tests/components").path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
            let table = text.parse::<toml::Table>().ok();
            let name = table.as_ref().and_then(|t| t.get("package")?.get("name")?.as_str());
            assert!(
                name.is_some_and(|n| n.starts_with("test-")),
                "{}: a test component's package is named `test-…`, or the tests do not build it",
                manifest.display()
            );
        }
        let status = Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            // Every test component (all are named `test-…`), so a new one
            // needs no list here.
            .args(["-p", "test-*"])
            .current_dir(repo())
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run cargo build for test components");
        assert!(status.success(), "building test components failed");
    });
}

/// Runs `payfn up` on the app in `dir` (its `spin.toml`, and its
/// `runtime-config.toml` if written) with `env` added, which must refuse to
/// start; returns what it printed on stderr.
pub fn refused_start(dir: &Path, env: &[(&str, &str)]) -> String {
    build_components();
    let out = Command::new(PAYFN)
        .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(dir.join("spin.toml"))
        .envs(env.iter().copied())
        .output()
        .expect("run payfn up");
    assert!(!out.status.success(), "payfn up should have refused to start");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The payments manifest with extra routes and components appended; sources
/// are absolute so the manifest can live in a temporary directory.
pub fn manifest(extra: &str) -> String {
    let text = std::fs::read_to_string(repo().join("spin.toml")).expect("read spin.toml");
    let absolute = text.replace("source = \"target/", &format!("source = \"{}/target/", repo().display()));
    format!("{absolute}\n{extra}")
}

/// Three SQLite shards: the two defaults plus `shard-3`.
pub const THREE_SHARDS: &str = r#"
[[shards]]
name = "shard-1"
backend = "sqlite"

[[shards]]
name = "shard-2"
backend = "sqlite"

[[shards]]
name = "shard-3"
backend = "sqlite"
"#;

/// A test-only component entry.
pub fn test_component(route: &str, name: &str, wasm: &str, capabilities: &str) -> String {
    format!(
        "[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"{name}\"\n\n[component.{name}]\nsource = \"{}\"\ncapabilities = {capabilities}\n",
        wasm_dir().join(wasm).display()
    )
}

/// Builds the components and writes an app (manifest and runtime config)
/// into `dir`.
fn write_app(dir: &Path, manifest_text: &str, runtime_config: &str) {
    build_components();
    std::fs::write(dir.join("spin.toml"), manifest_text).expect("write manifest");
    std::fs::write(dir.join("runtime-config.toml"), runtime_config).expect("write config");
}

/// A running `payfn up`.
pub struct Host {
    child: Child,
    /// The app directory (manifest, runtime config, `.payfn/`).
    pub app: PathBuf,
    /// Owns the app directory of the host that created it.
    _dir: Option<std::sync::Arc<tempfile::TempDir>>,
    /// The backend's databases, broker and Redis namespace, if not embedded.
    pub env: Option<std::sync::Arc<Env>>,
    pub base: String,
    pub client: reqwest::Client,
    log: std::sync::Arc<Mutex<String>>,
}

impl Host {
    /// The payments app on embedded defaults.
    pub fn start() -> Host {
        Self::start_with(&manifest(""), "")
    }

    /// Starts `payfn up` with this manifest and runtime config text.
    pub fn start_with(manifest_text: &str, runtime_config: &str) -> Host {
        Self::start_in(manifest_text, runtime_config, None)
    }

    /// Starts `payfn up` with this manifest and runtime config and `args`
    /// added to its command line.
    pub fn start_with_args(manifest_text: &str, runtime_config: &str, args: &[&str]) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        write_app(dir.path(), manifest_text, runtime_config);
        Self::spawn_with(dir.path().to_path_buf(), Some(std::sync::Arc::new(dir)), args, &[])
    }

    /// Starts `payfn up` with this manifest and runtime config and these
    /// environment variables.
    pub fn start_with_env(manifest_text: &str, runtime_config: &str, env: &[(&str, &str)]) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        write_app(dir.path(), manifest_text, runtime_config);
        Self::spawn_with(dir.path().to_path_buf(), Some(std::sync::Arc::new(dir)), &[], env)
    }

    /// Starts `payfn up` with this manifest and runtime config on `env`.
    pub fn start_in(manifest_text: &str, runtime_config: &str, env: Option<std::sync::Arc<Env>>) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        write_app(dir.path(), manifest_text, runtime_config);
        let mut host = Self::spawn(dir.path().to_path_buf(), Some(std::sync::Arc::new(dir)));
        host.env = env;
        host
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the host process (SIGKILL), keeping its app directory.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Replaces the runtime config of this host's app directory (it takes
    /// effect at the next start).
    pub fn set_runtime_config(&self, text: &str) {
        std::fs::write(self.app.join("runtime-config.toml"), text).expect("write the runtime config");
    }

    /// The embedded control store's file.
    pub fn control_file(&self) -> PathBuf {
        self.app.join(".payfn/control.db")
    }

    /// The merchant directory's entries, merchant -> (shard, how), read
    /// straight from the control store (the app directory's file when
    /// embedded).
    pub async fn directory(&self) -> std::collections::BTreeMap<i64, (String, String)> {
        use sqlx::{ConnectOptions, Row};
        if let Some(env) = self.env.as_ref().filter(|env| env.backend != Backend::Embedded) {
            return env.directory().await;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(self.control_file()).read_only(true);
        let mut db = options.connect().await.expect("open the control store");
        sqlx::query("SELECT merchant_id, shard, how FROM merchant_directory")
            .fetch_all(&mut db)
            .await
            .expect("read the directory")
            .iter()
            .map(|row| (row.get::<i64, _>(0), (row.get(1), row.get(2))))
            .collect()
    }

    /// Kills this host (SIGKILL) and starts a new one on the same app directory.
    pub fn restart(mut self) -> Host {
        self.kill();
        let mut host = Self::spawn(self.app.clone(), self._dir.take());
        host.env = self.env.take();
        host
    }

    /// A second host process on the same app directory (same shard files,
    /// same broker): what several hosts in production look like.
    pub fn another(&self) -> Host {
        let mut host = Self::spawn(self.app.clone(), self._dir.clone());
        host.env = self.env.clone();
        host
    }

    /// `payfn up --watch` on this manifest and runtime config, in `dir`
    /// (which the caller owns and may fill with sources first).
    pub fn start_watching(dir: &Path, manifest_text: &str, runtime_config: &str) -> Host {
        write_app(dir, manifest_text, runtime_config);
        Self::spawn_with(dir.to_path_buf(), None, &["--watch"], &[])
    }

    fn spawn(app: PathBuf, dir: Option<std::sync::Arc<tempfile::TempDir>>) -> Host {
        Self::spawn_with(app, dir, &[], &[])
    }

    fn spawn_with(
        app: PathBuf,
        dir: Option<std::sync::Arc<tempfile::TempDir>>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Host {
        let mut child = Command::new(PAYFN)
            .args(["up", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--manifest")
            .arg(app.join("spin.toml"))
            .env_remove("PAYFN_KEY_SECRET")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn payfn up");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = std::sync::Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("payfn listening on ").nth(1) {
                    // Text logs end the URL with a space, JSON logs with a quote.
                    let url = url.split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or_default();
                    let _ = tx.send(url.to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        // Waiting blocks this thread: inside a multi-thread runtime hand the
        // worker's queued tasks (the test's proxies among them) to another
        // worker first, or they stall until the host is up, and the host
        // waits on them.
        let wait = || rx.recv_timeout(Duration::from_secs(120));
        let started = match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        let base = match started {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("payfn did not start:\n{}", log.lock().unwrap());
            }
        };
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
        Host { child, app, _dir: dir, env: None, base, client, log }
    }

    /// What the host has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        self.client.get(url).send().await.expect("metrics").text().await.expect("metrics body")
    }

    /// The API key of `merchant`, from `payfn keys issue` in the app dir.
    pub fn key(&self, merchant: i64) -> String {
        let out = Command::new(PAYFN)
            .args(["keys", "issue", "--merchant", &merchant.to_string(), "--manifest"])
            .arg(self.app.join("spin.toml"))
            .env_remove("PAYFN_KEY_SECRET")
            .output()
            .expect("payfn keys issue");
        assert!(out.status.success(), "keys issue failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 key").trim().to_string()
    }

    /// A client for one merchant.
    pub fn merchant(&self, merchant: i64) -> Merchant<'_> {
        Merchant { host: self, key: self.key(merchant) }
    }

    /// The SQLite file of a shard.
    pub fn shard_db(&self, shard: &str) -> PathBuf {
        self.app.join(".payfn/shards").join(format!("{shard}.db"))
    }

    /// A direct connection to a shard: its database on a server backend,
    /// its file (read-only) on the embedded one.
    pub async fn shard(&self, shard: &str) -> ShardDb {
        use sqlx::ConnectOptions;
        if let Some(db) = match &self.env {
            Some(env) => env.shard(shard).await,
            None => None,
        } {
            return db;
        }
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(self.shard_db(shard)).read_only(true);
        ShardDb::Sqlite(options.connect().await.expect("open shard db"))
    }

    /// Like [`Host::shard`], but an embedded shard's file is opened for
    /// writing (test set-up that changes rows under a running host); a
    /// write waits up to 5 s for the host's writer.
    pub async fn shard_for_writes(&self, shard: &str) -> ShardDb {
        use sqlx::ConnectOptions;
        if self.env.as_ref().is_some_and(|e| e.backend != Backend::Embedded) {
            return self.shard(shard).await;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.shard_db(shard))
            .busy_timeout(Duration::from_secs(5));
        ShardDb::Sqlite(options.connect().await.expect("open shard db for writes"))
    }

    /// The Kafka broker of this host's backend.
    pub fn kafka(&self) -> &Kafka {
        self.env.as_ref().and_then(|e| e.kafka.as_ref()).expect("a backend with Kafka")
    }

    /// The backend this host runs on.
    pub fn backend(&self) -> Backend {
        self.env.as_ref().map_or(Backend::Embedded, |e| e.backend)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response reduced to what tests assert on.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.bytes)))
    }

    /// The error `code` of an error envelope.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error status and code, and the envelope's shape.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        let body = self.json();
        assert_eq!((self.status, self.code().as_str()), (status, code), "body: {body}");
        assert!(body["error"]["type"].is_string() && body["error"]["message"].is_string(), "{body}");
        assert!(body["requestId"].as_str().is_some_and(|id| id.starts_with("req_")), "{body}");
    }
}

/// Requests as one merchant.
pub struct Merchant<'a> {
    pub host: &'a Host,
    pub key: String,
}

impl Merchant<'_> {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.try_send(method, path, body, headers).await.expect("request")
    }

    /// Like [`Merchant::send`], but `None` when the host cannot be reached
    /// or dies before answering (a host killed under load).
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Option<Reply> {
        let url = format!("{}{path}", self.host.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.host.client.request(method, url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.ok()?.to_vec();
        Some(Reply { status, headers, bytes })
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.send("POST", path, Some(body), &[]).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, &[]).await
    }

    /// Authorizes `amount` KRW and returns the payment id.
    pub async fn authorize(&self, amount: i64) -> String {
        let reply =
            self.post("/payments/authorize", &format!(r#"{{"amount":{amount},"currency":"KRW"}}"#)).await;
        assert_eq!(reply.status, 201, "{:?}", reply.json());
        reply.json()["id"].as_str().expect("id").to_string()
    }
}

/// DESIGN.md's money invariants, read straight from every shard file:
/// postings balance; per merchant the ledger agrees with the payments table;
/// amounts within bounds; every payment change has its outbox event.
pub async fn assert_money_invariants(host: &Host, shards: &[&str]) {
    for shard in shards {
        let mut db = host.shard(shard).await;
        let unbalanced = db
            .rows("SELECT posting_id, SUM(amount) FROM ledger_entries GROUP BY posting_id HAVING SUM(amount) <> 0")
            .await;
        assert!(unbalanced.is_empty(), "{shard}: unbalanced postings {unbalanced:?}");

        let out_of_bounds = db
            .i64("SELECT COUNT(*) FROM payments WHERE NOT (0 <= refunded_amount AND refunded_amount <= captured_amount AND captured_amount <= amount)")
            .await;
        assert_eq!(out_of_bounds, 0, "{shard}: amounts out of bounds");

        let refunds_disagree = db
            .i64(
                "SELECT COUNT(*) FROM payments p WHERE p.refunded_amount <> \
                 (SELECT COALESCE(SUM(r.amount), 0) FROM refunds r WHERE r.payment_id = p.id)",
            )
            .await;
        assert_eq!(refunds_disagree, 0, "{shard}: refunded_amount disagrees with refunds");

        // Per merchant: the hold equals what is authorized and not yet
        // captured or voided; the payable equals captured minus refunded.
        let merchants = db
            .rows(
                "SELECT p.merchant_id, \
                    SUM(CASE WHEN p.status = 'AUTHORIZED' THEN p.amount ELSE 0 END), \
                    SUM(p.captured_amount - p.refunded_amount), \
                    (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries l WHERE l.merchant_id = p.merchant_id AND l.account = 'authorization_hold'), \
                    (SELECT COALESCE(-SUM(amount), 0) FROM ledger_entries l WHERE l.merchant_id = p.merchant_id AND l.account = 'merchant_payable') \
                 FROM payments p GROUP BY p.merchant_id",
            )
            .await;
        for row in merchants {
            let [merchant, held, net, ledger_held, ledger_net] = [0, 1, 2, 3, 4].map(|i| row[i].i64());
            assert_eq!(held, ledger_held, "{shard}: merchant {merchant} hold disagrees with the ledger");
            assert_eq!(net, ledger_net, "{shard}: merchant {merchant} payable disagrees with the ledger");
        }

        // Every payment change has its event: one per payment creation, one
        // per capture, void and refund.
        let expected = db
            .i64(
                "SELECT (SELECT COUNT(*) FROM payments) \
                      + (SELECT COUNT(*) FROM payments WHERE captured_amount > 0) \
                      + (SELECT COUNT(*) FROM payments WHERE status = 'VOIDED') \
                      + (SELECT COUNT(*) FROM refunds)",
            )
            .await;
        let events = db.i64("SELECT COUNT(*) FROM outbox WHERE event_type LIKE 'payment.%'").await;
        assert_eq!(events, expected, "{shard}: outbox events do not match payment changes");
        let orphans = db
            .i64(
                "SELECT COUNT(*) FROM outbox o WHERE o.event_type LIKE 'payment.%' \
                 AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.id = o.aggregate_id)",
            )
            .await;
        assert_eq!(orphans, 0, "{shard}: outbox events without a payment");
        db.close().await;
    }
}

impl Host {
    /// A connection to the embedded event log.
    pub async fn events(&self) -> sqlx::SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(self.app.join(".payfn/events.db"));
        sqlx::SqlitePool::connect_with(options).await.expect("open events.db")
    }
}

/// Appends a keyless record to `partition` of the log's `payments` topic.
pub async fn append_event(log: &sqlx::SqlitePool, partition: i64, value: &[u8], headers: Vec<u8>) {
    sqlx::query(
        "INSERT INTO records (topic, partition, \"offset\", key, value, headers, appended_at_ms) \
         VALUES ('payments', ?, (SELECT COALESCE(MAX(\"offset\") + 1, 0) FROM records WHERE topic = 'payments' AND partition = ?), \
                 NULL, ?, ?, 0)",
    )
    .bind(partition)
    .bind(partition)
    .bind(value)
    .bind(headers)
    .execute(log)
    .await
    .unwrap();
}

/// The event log's header encoding: `[u32 length][name][u32 length][value]...`.
pub fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        for part in [name.as_bytes(), value.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// Polls `check` until it returns true or `limit` passes; panics with
/// `what` on timeout. Asynchronous effects get bounded waits, never sleeps.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per (merchant, currency): captured and refunded totals and counts, as the
/// payments tables of `shards` show them.
pub async fn expected_settlements(host: &Host, shards: &[&str]) -> Vec<(i64, String, i64, i64, i64, i64)> {
    settlement_rows(
        host,
        shards,
        "SELECT p.merchant_id, p.currency, SUM(p.captured_amount), \
                (SELECT COALESCE(SUM(r.amount), 0) FROM refunds r WHERE r.merchant_id = p.merchant_id), \
                SUM(CASE WHEN p.captured_amount > 0 THEN 1 ELSE 0 END), \
                (SELECT COUNT(*) FROM refunds r WHERE r.merchant_id = p.merchant_id) \
         FROM payments p WHERE p.captured_amount > 0 GROUP BY p.merchant_id, p.currency",
    )
    .await
}

/// The same figures from the settlement rows of `shards`.
pub async fn actual_settlements(host: &Host, shards: &[&str]) -> Vec<(i64, String, i64, i64, i64, i64)> {
    settlement_rows(
        host,
        shards,
        "SELECT merchant_id, currency, SUM(gross_captured), SUM(refunded), SUM(capture_count), SUM(refund_count) \
         FROM settlements GROUP BY merchant_id, currency",
    )
    .await
}

async fn settlement_rows(host: &Host, shards: &[&str], sql: &str) -> Vec<(i64, String, i64, i64, i64, i64)> {
    let mut all = Vec::new();
    for shard in shards {
        let mut db = host.shard(shard).await;
        for r in db.rows(sql).await {
            all.push((r[0].i64(), r[1].text(), r[2].i64(), r[3].i64(), r[4].i64(), r[5].i64()));
        }
        db.close().await;
    }
    all.sort();
    all
}

/// The sum over `shards` of the integer `sql` returns.
pub async fn count(host: &Host, shards: &[&str], sql: &str) -> i64 {
    let mut n = 0;
    for shard in shards {
        let mut db = host.shard(shard).await;
        n += db.i64(sql).await;
        db.close().await;
    }
    n
}

/// Rows of the outbox of `shards` not yet published (dead-lettered included).
pub async fn unpublished(host: &Host, shards: &[&str]) -> i64 {
    count(host, shards, "SELECT COUNT(*) FROM outbox WHERE published = 0").await
}

/// Work the asynchronous half has yet to do on `shards`: outbox rows not
/// published, and capture and refund events not settled. Read after a
/// SIGKILL, it shows what the kill interrupted.
pub async fn pending_work(host: &Host, shards: &[&str]) -> i64 {
    let unsettled = "SELECT COUNT(*) FROM outbox o \
         WHERE o.event_type IN ('payment.captured', 'payment.refunded') \
         AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = o.event_id)";
    unpublished(host, shards).await + count(host, shards, unsettled).await
}

/// The event ids of the outbox rows of `shards` that the relay sends (see
/// [`outbox_rows_sent`]).
pub async fn sent_event_ids(host: &Host, shards: &[&str]) -> std::collections::BTreeSet<String> {
    let mut ids = std::collections::BTreeSet::new();
    for shard in shards {
        let mut db = host.shard(shard).await;
        ids.extend(
            db.column("SELECT event_id FROM outbox WHERE superseded_by IS NULL").await.iter().map(Cell::text),
        );
        db.close().await;
    }
    ids
}

/// The `eventId`s of event values (as on the topic).
pub fn event_ids<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> std::collections::BTreeSet<String> {
    values
        .into_iter()
        .map(|v| {
            let event: serde_json::Value = serde_json::from_slice(v).expect("an event is JSON");
            event["eventId"].as_str().expect("an event carries its eventId").to_string()
        })
        .collect()
}

/// Outbox rows of `shards` the relay has published (or, superseded,
/// marked published).
pub async fn published(host: &Host, shards: &[&str]) -> i64 {
    count(host, shards, "SELECT COUNT(*) FROM outbox WHERE published = 1").await
}

/// Twice: takes payments on `host`, SIGKILLs it mid-flow ([`kill_mid_relay`]),
/// asserts the kill cut work off, and restarts it. Returns the restarted host.
pub async fn kill_mid_relay_twice(mut host: Host) -> Host {
    for round in 1..=2 {
        let before = published(&host, SHARDS).await;
        take_payments(&host, 2).await;
        let cut_off = kill_mid_relay(&mut host, before).await;
        assert!(cut_off > 0, "kill {round} interrupted no relay or settlement work");
        host = host.restart();
    }
    host
}

/// SIGKILLs `host` as soon as its relay has published some rows beyond
/// the `published_before` it had (so a relay firing has just committed, and
/// the settlement of what it sent, and the relay's next firing, are still
/// to come), and returns the work the kill cut off: [`pending_work`], read
/// with the host dead.
pub async fn kill_mid_relay(host: &mut Host, published_before: i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while published(host, SHARDS).await <= published_before {
        assert!(std::time::Instant::now() < deadline, "the relay never published the new rows");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.kill();
    pending_work(host, SHARDS).await
}

/// A tansu broker (in-memory storage) behind a TCP proxy the test can cut,
/// so an outage loses connections but not the broker's data.
pub struct Kafka {
    child: Child,
    /// Where clients connect: the proxy (or, over TLS, the terminator).
    pub port: u16,
    proxy: Proxy,
    /// The host name clients use: `localhost` over TLS (the certificate's
    /// name), else 127.0.0.1.
    host: &'static str,
    /// librdkafka settings every client of this broker needs (TLS).
    pub client_settings: Vec<(String, String)>,
    /// Over TLS: the terminator in front of the proxy.
    pub tls: Option<tls::TlsTerminator>,
    /// With SASL: the password, which a host's runtime config takes from the
    /// environment variable [`KAFKA_PASSWORD_ENV`] rather than its file.
    pub password: Option<String>,
    /// With SASL: the broker's SQLite storage (removed with it).
    _data: Option<tempfile::TempDir>,
}

/// SCRAM credentials a broker requires of every client.
pub struct Sasl<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// The environment variable a host started on [`Kafka::runtime_config`] of
/// a SASL broker reads the password from (`[kafka] settings_env`).
pub const KAFKA_PASSWORD_ENV: &str = "PAYFN_TEST_KAFKA_PASSWORD";

/// A TCP proxy to a local port that the test can cut (every connection
/// dropped, new ones refused) and restore: an outage of the service behind it.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections open through the proxy now.
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(proxy_loop(listener, target_port, cut.clone(), live.clone()));
        Proxy { port, cut, live }
    }

    /// Connections open through the proxy now: 0 after a cut means every
    /// connection the service behind it had has been dropped.
    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cuts (true) or restores (false) every connection.
    pub fn set_outage(&self, down: bool) {
        self.cut.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Kafka {
    pub async fn start() -> Kafka {
        Self::start_on(None, None).await
    }

    /// A broker reached over TLS only: librdkafka (OpenSSL) ->
    /// `security.protocol = SSL` -> a terminator with `pki`'s certificate ->
    /// the proxy -> tansu, which advertises the terminator. (tansu 0.6 has
    /// `--cert` and `--key`, but declares them mutually exclusive, so it
    /// cannot end TLS itself.)
    pub async fn start_tls(pki: &tls::Pki) -> Kafka {
        Self::start_on(Some(pki), None).await
    }

    /// A broker reached over TLS that also requires SASL SCRAM-SHA-512 as
    /// `sasl`'s user. tansu 0.6 keeps SCRAM credentials only in a database
    /// storage (its memory:// one drops them), so this broker stores in an
    /// SQLite file; the user is created through the broker while it runs
    /// without authentication, then it restarts with `--authentication`.
    pub async fn start_sasl(pki: &tls::Pki, sasl: &Sasl<'_>) -> Kafka {
        Self::start_on(Some(pki), Some(sasl)).await
    }

    async fn start_on(pki: Option<&tls::Pki>, sasl: Option<&Sasl<'_>>) -> Kafka {
        let tansu =
            Command::new(repo().join("infra/kafka/broker.sh")).arg("path").output().expect("broker.sh path");
        assert!(tansu.status.success(), "tansu is not installed: {}", String::from_utf8_lossy(&tansu.stderr));
        let bin = String::from_utf8(tansu.stdout).expect("path").trim().to_string();
        let data = sasl.map(|_| tempfile::tempdir().expect("broker storage"));
        let storage = if data.is_some() { "sqlite://tansu.db" } else { "memory://tansu/" };
        // The broker's port is picked free and then released, so another
        // process may take it before tansu binds it: tansu then exits, and we
        // try again on a new port.
        for _attempt in 0..5 {
            let broker_port = free_port();
            let proxy = Proxy::start(broker_port).await;
            let terminator = match pki {
                Some(pki) => Some(tls::TlsTerminator::start(proxy.port, pki.server_config()).await),
                None => None,
            };
            let (host, port) = match &terminator {
                Some(t) => ("localhost", t.port),
                None => ("127.0.0.1", proxy.port),
            };
            let log = tempfile::NamedTempFile::new().expect("broker log");
            let spawn = |authentication: bool| {
                let mut command = Command::new(&bin);
                command
                    .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{broker_port}")])
                    // Clients are told to come back through the proxy (or the terminator).
                    .args(["--advertised-listener-url", &format!("tcp://{host}:{port}")])
                    .args(["--storage-engine", storage])
                    .stdout(Stdio::null())
                    .stderr(log.reopen().expect("broker log"));
                if authentication {
                    command.arg("--authentication");
                }
                if let Some(data) = &data {
                    // sqlite://tansu.db is a path under the working directory.
                    command.current_dir(data.path());
                }
                command.spawn().expect("spawn tansu")
            };
            let mut child = spawn(false);
            let mut up = listening(&mut child, broker_port).await;
            if let (true, Some(sasl)) = (up, sasl) {
                let created = Command::new(&bin)
                    .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{broker_port}")])
                    .args([sasl.user, sasl.password])
                    .output()
                    .expect("tansu user create");
                assert!(
                    created.status.success(),
                    "tansu user create: {}",
                    String::from_utf8_lossy(&created.stderr)
                );
                let _ = child.kill();
                let _ = child.wait();
                child = spawn(true);
                up = listening(&mut child, broker_port).await;
            }
            if up {
                let mut client_settings = Vec::new();
                if let Some(pki) = pki {
                    let protocol = if sasl.is_some() { "SASL_SSL" } else { "SSL" };
                    client_settings.push(("security.protocol".to_string(), protocol.to_string()));
                    client_settings.push(("ssl.ca.location".to_string(), pki.ca.display().to_string()));
                }
                if let Some(sasl) = sasl {
                    client_settings.push(("sasl.mechanism".to_string(), "SCRAM-SHA-512".to_string()));
                    client_settings.push(("sasl.username".to_string(), sasl.user.to_string()));
                }
                return Kafka {
                    child,
                    port,
                    proxy,
                    host,
                    client_settings,
                    tls: terminator,
                    password: sasl.map(|s| s.password.to_string()),
                    _data: data,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "tansu did not come up on port {broker_port}: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        panic!("tansu did not start in 5 attempts");
    }

    /// The runtime config that points payfn at this broker: topics of 2
    /// partitions, Kafka triggers as consumer-group members (the default
    /// `assignment = "group"`).
    pub fn runtime_config(&self) -> String {
        self.runtime_config_with(2, "group")
    }

    /// A runtime config with topics of `partitions` partitions and this
    /// `[kafka] assignment`, with a short session timeout (6 s) so a killed
    /// host's partitions move to the others within seconds.
    pub fn runtime_config_with(&self, partitions: u32, assignment: &str) -> String {
        let secret = match self.password {
            Some(_) => format!("settings_env = {{ \"sasl.password\" = \"{KAFKA_PASSWORD_ENV}\" }}\n"),
            None => String::new(),
        };
        let mut text = format!(
            "[kafka]\nbackend = \"kafka\"\nbrokers = \"{}:{}\"\npartitions = {partitions}\n\
             assignment = \"{assignment}\"\n{secret}\
             [kafka.settings]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
            self.host, self.port
        );
        for (name, value) in &self.client_settings {
            text.push_str(&format!("{name:?} = {value:?}\n"));
        }
        text
    }

    /// Cuts (true) or restores (false) every connection to the broker.
    pub fn set_outage(&self, down: bool) {
        self.proxy.set_outage(down);
    }

    /// Every record of `topic` as (key, value, headers), read with a fresh group.
    pub async fn read_all(
        &self,
        topic: &str,
        expected: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>)> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::{Headers, Message};
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", format!("{}:{}", self.host, self.port))
            .set("group.id", format!("test-reader-{}", uuid_like()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false");
        for (name, value) in &self.client_settings {
            config.set(name, value);
        }
        if let Some(password) = &self.password {
            config.set("sasl.password", password);
        }
        let consumer: StreamConsumer = config.create().expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Read until `expected` arrived, then a quiet second proves no extras.
        loop {
            let quiet = if out.len() >= expected { Duration::from_secs(2) } else { Duration::from_secs(5) };
            match tokio::time::timeout(quiet, consumer.recv()).await {
                Ok(Ok(m)) => out.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                    m.headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                )),
                Ok(Err(e)) => panic!("consume: {e}"),
                Err(_) if out.len() >= expected => return out,
                Err(_) => {
                    assert!(std::time::Instant::now() < deadline, "only {} of {expected} records", out.len())
                }
            }
        }
    }
}

/// A port free a moment ago: for a server that takes its port as an
/// argument, or an address nothing listens on. Another process may take it
/// meanwhile; [`listening`] tells whether the server got it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (up to 10 s) until `child` itself holds the listener on
/// 127.0.0.1:`port`; false if it exited or never did (the port, picked free
/// and released, may have gone to another process).
pub async fn listening(child: &mut Child, port: u16) -> bool {
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        // A connect alone is not enough: another process (a host, a proxy,
        // another test's broker) may hold the port while this child fails
        // to bind it.
        if owns_listener(child.id(), port) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port`
/// (Linux: the listening entry of /proc/net/tcp, matched by inode against
/// the process's open descriptors).
fn owns_listener(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [_, address, _, state, _, _, _, _, _, inode, ..] if address == local && state == LISTEN => {
                Some(inode.to_string())
            }
            _ => None,
        }
    });
    let Some(inode) = inode else { return false };
    let socket = std::path::PathBuf::from(format!("socket:[{inode}]"));
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == socket))
    })
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uuid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

/// Decrements the proxy's live count when a connection ends.
struct LiveGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn proxy_loop(
    listener: tokio::net::TcpListener,
    broker_port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    loop {
        // A connection reset before it was accepted (ECONNABORTED) is an
        // error of that connection, not of the listener: keep serving.
        let mut client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let cut = cut.clone();
        // Counted from accept to close, so a test can wait for a cut to take.
        live.fetch_add(1, Ordering::SeqCst);
        let open = LiveGuard(live.clone());
        tokio::spawn(async move {
            let _open = open;
            let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await else {
                return;
            };
            let mut watch = tokio::time::interval(Duration::from_millis(50));
            let copy = tokio::io::copy_bidirectional(&mut client, &mut broker);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    _ = &mut copy => return,
                    _ = watch.tick() => if cut.load(Ordering::SeqCst) { return },
                }
            }
        });
    }
}

/// The partitions of `topic` that `host`'s consumer of `group` owns, from
/// its `payfn_kafka_partition_owned` gauges.
pub async fn owned_partitions(host: &Host, group: &str, topic: &str) -> std::collections::BTreeSet<i32> {
    partition_samples(&host.metrics().await, "payfn_kafka_partition_owned", group, topic)
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(p, _)| p)
        .collect()
}

/// Per partition of `topic`: the records `host`'s consumer of `group` handled
/// (`payfn_kafka_records_handled_total`), partitions it handled none of left out.
pub async fn handled_records(host: &Host, group: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    partition_samples(&host.metrics().await, "payfn_kafka_records_handled_total", group, topic)
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// `(partition, value)` of every sample of `metric` labelled with `group` and `topic`.
fn partition_samples(metrics: &str, metric: &str, group: &str, topic: &str) -> Vec<(i32, i64)> {
    let prefix = format!("{metric}{{group=\"{group}\",topic=\"{topic}\",partition=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (partition, rest) = rest.split_once('"')?;
            let value = rest.rsplit(' ').next()?;
            Some((partition.parse().ok()?, value.trim().parse::<f64>().ok()? as i64))
        })
        .collect()
}

/// Both shards of the default routing table.
pub const SHARDS: &[&str] = &["shard-1", "shard-2"];

/// Takes payments for merchants 1-4 (both shards): per round a capture, one
/// or two refunds and a void; plus a decline each.
pub async fn take_payments(host: &Host, rounds: i64) {
    futures::future::join_all((1..=4).map(|merchant| async move {
        let m = host.merchant(merchant);
        for i in 0..rounds {
            let id = m.authorize(10_000 + i).await;
            assert_eq!(m.post(&format!("/payments/{id}/capture"), r#"{"amount":9000}"#).await.status, 200);
            assert_eq!(m.post(&format!("/payments/{id}/refund"), r#"{"amount":1500}"#).await.status, 200);
            if i % 2 == 0 {
                assert_eq!(m.post(&format!("/payments/{id}/refund"), "{}").await.status, 200);
            }
            let voided = m.authorize(700).await;
            assert_eq!(m.post(&format!("/payments/{voided}/void"), "{}").await.status, 200);
        }
        m.post("/payments/authorize", r#"{"amount":5000000000,"currency":"KRW"}"#).await;
    }))
    .await;
}

/// Every outbox row published and the settlements equal what the payments
/// tables show.
pub async fn settled(host: &Host, shards: &[&str]) -> bool {
    // Settlements first: the consumer writes its `settlement.updated` row
    // with them, so read after, the outbox holds it (read before, a
    // settlement committed in between would look drained with its event
    // unpublished).
    expected_settlements(host, shards).await == actual_settlements(host, shards).await
        && unpublished(host, shards).await == 0
}

/// Outbox rows of `shards` that the relay sends, all types: every row but
/// the snapshot events a newer state superseded (`superseded_by`), which
/// are marked published without being sent. What the topic must hold once
/// the outbox has drained.
pub async fn outbox_rows_sent(host: &Host, shards: &[&str]) -> i64 {
    count(host, shards, "SELECT COUNT(*) FROM outbox WHERE superseded_by IS NULL").await
}

/// Runs each named `async fn(Backend)` once per backend, as tests named
/// `<fn>::embedded`, `<fn>::mariadb` and `<fn>::postgres`.
#[macro_export]
macro_rules! on_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::support::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() { super::$name(Backend::Embedded).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() { super::$name(Backend::Mariadb).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name(Backend::Postgres).await }
        }
    )*};
}

/// Like [`on_backends!`], on the production backends only (MariaDB or
/// PostgreSQL shards, Redis, Kafka).
#[macro_export]
macro_rules! on_server_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::support::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() { super::$name(Backend::Mariadb).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name(Backend::Postgres).await }
        }
    )*};
}

/// One kv-probe binary mounted as two components, `kv-a` and `kv-b`: same
/// keys, separate namespaces.
pub fn kv_probes() -> String {
    [
        test_component("/test/kv-a", "kv-a", "test_kv_probe.wasm", r#"["kv", "log"]"#),
        test_component("/test/kv-b", "kv-b", "test_kv_probe.wasm", r#"["kv", "log"]"#),
    ]
    .join("\n")
}

/// The `kv` capability's contract, through the guest, whatever the backend:
/// namespacing, get/set/incr/delete, TTL, a type error as the guest's 500.
pub async fn check_kv_semantics(host: &Host) {
    use serde_json::json;
    let m = host.merchant(1);
    let kv = |route: &'static str, body: &'static str| {
        let m = &m;
        async move {
            let reply = m.post(route, body).await;
            assert_eq!(reply.status, 200, "{:?}", reply.json());
            reply.json()["result"].clone()
        }
    };
    kv("/test/kv-a", r#"{"op":"set","key":"k","value":"a-value"}"#).await;
    assert_eq!(kv("/test/kv-a", r#"{"op":"get","key":"k"}"#).await, json!("a-value"));
    assert_eq!(
        kv("/test/kv-b", r#"{"op":"get","key":"k"}"#).await,
        json!(null),
        "kv-b must not see kv-a's key"
    );
    assert_eq!(kv("/test/kv-b", r#"{"op":"incr","key":"n","delta":5}"#).await, json!(5));
    assert_eq!(kv("/test/kv-b", r#"{"op":"incr","key":"n","delta":-2}"#).await, json!(3));
    assert_eq!(kv("/test/kv-a", r#"{"op":"incr","key":"n"}"#).await, json!(1));
    assert_eq!(kv("/test/kv-a", r#"{"op":"delete","key":"k"}"#).await, json!(true));
    assert_eq!(kv("/test/kv-a", r#"{"op":"delete","key":"k"}"#).await, json!(false));
    // A TTL long enough that the first read always lands inside it, then
    // expiry observed by polling (not a sleep that must outlast it).
    kv("/test/kv-a", r#"{"op":"set","key":"t","value":"x","ttlMs":3000}"#).await;
    let set_at = std::time::Instant::now();
    assert_eq!(kv("/test/kv-a", r#"{"op":"get","key":"t"}"#).await, json!("x"));
    wait_for(Duration::from_secs(15), "the key with a 3 s TTL to expire", || async {
        kv("/test/kv-a", r#"{"op":"get","key":"t"}"#).await.is_null()
    })
    .await;
    assert!(set_at.elapsed() >= Duration::from_millis(2900), "expired early: {:?}", set_at.elapsed());
    // incr on a non-integer is the guest's error, not a host failure.
    kv("/test/kv-a", r#"{"op":"set","key":"s","value":"text"}"#).await;
    assert_eq!(m.post("/test/kv-a", r#"{"op":"incr","key":"s"}"#).await.status, 500);
}

/// A second build of the authorize, capture, settlement and slow components, built
/// once per test binary: `PAYFN_BUILD_ID=b` (responses carry `build-id: b`)
/// and optimised for size, so every binary differs from the main build. Its
/// own target directory keeps the main build's files untouched.
pub fn variant_b() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_components();
            let target = repo().join("target/variant-b");
            let status = Command::new("cargo")
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .args(["-p", "authorize", "-p", "capture", "-p", "settlement", "-p", "test-slow"])
                .current_dir(repo())
                .env("CARGO_TARGET_DIR", &target)
                .env("PAYFN_BUILD_ID", "b")
                .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
                .status()
                .expect("run cargo build for variant b");
            assert!(status.success(), "building variant b failed");
            target.join("wasm32-wasip2/release")
        })
        .clone()
}

/// What a `payfn` admin command printed and whether it succeeded.
#[derive(Debug)]
pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Host {
    /// Runs `payfn <args>` against this host's admin API (its development
    /// token, from the app directory).
    pub async fn admin(&self, args: &[&str]) -> CliOutput {
        let output = tokio::process::Command::new(PAYFN)
            .args(args)
            .arg("--manifest")
            .arg(self.app.join("spin.toml"))
            .args(["--admin-url", &self.base])
            .env_remove("PAYFN_ADMIN_TOKEN")
            .env_remove("PAYFN_ADMIN_URL")
            .output()
            .await
            .expect("run payfn admin command");
        CliOutput {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The `payfn versions --json` listing.
    pub async fn versions(&self) -> Value {
        let out = self.admin(&["versions", "--json"]).await;
        assert!(out.ok, "payfn versions failed: {}", out.stderr);
        serde_json::from_str(&out.stdout).expect("versions JSON")
    }

    /// The digest serving `component` now, per the admin API.
    pub async fn active_digest(&self, component: &str) -> String {
        let listing = self.versions().await;
        listing["components"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["component"] == component))
            .and_then(|c| c["active"]["digest"].as_str())
            .unwrap_or_else(|| panic!("no active version of {component}: {listing}"))
            .to_string()
    }
}

/// The hex SHA-256 of a file: the version id the host gives it.
pub fn file_digest(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read component")))
}

/// The sum of the samples of metric `name` whose labels include every one of
/// `labels` (other labels, such as `version`, may vary), from `/metrics` text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} "),
                None => rest.strip_prefix(' ').map(|value| ("", value)),
            }
        })
        .filter(|(set, _)| labels.iter().all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\""))))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// What a client was told: payment id -> (authorized amount, captured).
pub type Acknowledged = std::sync::Arc<Mutex<std::collections::HashMap<String, (i64, bool)>>>;

/// What one load client saw besides its acknowledgements.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Answers other than the 201 and 200 a round expects, as
    /// `"authorize 503"`: refusals are counted, never skipped silently.
    pub refused: Vec<String>,
    /// The host stopped answering before the rounds were done (a request
    /// got no answer at all).
    pub cut_off: bool,
}

/// Authorize-and-capture rounds through `host` until it stops answering
/// or `rounds` are done, recording every 2xx in `acked`.
pub async fn load(host: &Host, merchant: i64, rounds: i64, acked: Acknowledged) -> LoadReport {
    let m = host.merchant(merchant);
    let mut report = LoadReport::default();
    for i in 0..rounds {
        let amount = 1_000 + i;
        let body = format!(r#"{{"amount":{amount},"currency":"KRW"}}"#);
        let Some(reply) = m.try_send("POST", "/payments/authorize", Some(&body), &[]).await else {
            report.cut_off = true;
            return report;
        };
        if reply.status != 201 {
            report.refused.push(format!("authorize {}", reply.status));
            continue;
        }
        let id = reply.json()["id"].as_str().expect("id").to_string();
        acked.lock().unwrap().insert(id.clone(), (amount, false));
        let Some(reply) = m.try_send("POST", &format!("/payments/{id}/capture"), Some("{}"), &[]).await
        else {
            report.cut_off = true;
            return report;
        };
        if reply.status == 200 {
            acked.lock().unwrap().insert(id, (amount, true));
        } else {
            report.refused.push(format!("capture {}", reply.status));
        }
    }
    report
}

/// The acknowledgements of several clients' maps in one.
pub fn all_acknowledged(maps: &[&Acknowledged]) -> Acknowledged {
    let all: Acknowledged = Default::default();
    for map in maps {
        all.lock().unwrap().extend(map.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)));
    }
    all
}

/// Every payment and capture in `acked` (at least `at_least` of them) is
/// committed on the shards `host` reads.
pub async fn assert_acknowledged_committed(host: &Host, acked: &Acknowledged, at_least: usize) {
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= at_least, "the load ran: {}", acked.len());
    for shard in SHARDS {
        let mut db = host.shard(shard).await;
        for row in db.rows("SELECT id, amount, captured_amount FROM payments").await {
            if let Some((amount, captured)) = acked.get(&row[0].text()) {
                assert_eq!(row[1].i64(), *amount);
                if *captured {
                    assert_eq!(row[2].i64(), *amount, "an acknowledged capture is committed");
                }
            }
        }
        db.close().await;
    }
    let committed = count(host, SHARDS, "SELECT COUNT(*) FROM payments").await;
    assert!(committed as usize >= acked.len(), "every acknowledged payment is committed");
    let mut stored = std::collections::HashSet::new();
    for shard in SHARDS {
        let mut db = host.shard(shard).await;
        stored.extend(db.column("SELECT id FROM payments").await.iter().map(Cell::text));
        db.close().await;
    }
    let missing: Vec<&String> = acked.keys().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged but not committed: {missing:?}");
}

/// A local HTTP/1.1 server components call out to: answers `body` to every
/// GET, keeps connections alive, and records how many it accepted and the
/// request heads it read.
pub struct Upstream {
    pub port: u16,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Upstream {
    pub async fn start(body: &'static str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, heads) = (
            std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
        );
        let (count, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = tokio::io::AsyncReadExt::read(&mut socket, &mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        // GETs only: a head ends the request.
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buffer.drain(..end + 4).collect();
                            seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                            let reply =
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                            if tokio::io::AsyncWriteExt::write_all(&mut socket, reply.as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Upstream { port, connections, heads }
    }
}
