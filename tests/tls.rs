//! TLS on every production link (issue 19, part 6). Each test makes a
//! throwaway CA ([`Pki`]) and runs one link through TLS against a real peer
//! that refuses plain connections: the HTTPS listener, outbound HTTPS from
//! a Spin app, PostgreSQL and MariaDB shards (servers of the test's own,
//! `hostssl` / `require_secure_transport`), Redis (`rediss://`, its TLS
//! port only) and Kafka (librdkafka over `security.protocol = SSL`, and
//! `SASL_SSL` with SCRAM-SHA-512 against a broker that requires it).
//! Secrets come from the environment and are checked to stay out of the log.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::tls::{Pki, TlsTerminator};
use support::{
    free_port, manifest, wait_for, wasm_dir, Host, Kafka, Sasl, Upstream, KAFKA_PASSWORD_ENV, SHARDS,
};

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn text(reply: &support::Reply) -> String {
    String::from_utf8_lossy(&reply.bytes).into_owned()
}

/// A command's stdout, trimmed, when it succeeded; its stderr when not.
fn stdout_or_stderr(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_https_and_refuses_plain_http() {
    let pki = Pki::new();
    let mut host = Host::start_with_args(
        &manifest(""),
        "",
        &["--tls-cert", path(&pki.cert), "--tls-key", path(&pki.key)],
    );
    assert!(host.base.starts_with("https://"), "{}", host.base);
    host.client = pki.client();

    let ready = host.client.get(format!("{}/health/ready", host.base)).send().await.expect("https");
    assert_eq!(ready.status(), 200);
    // The payments API over HTTPS, end to end.
    let id = host.merchant(1).authorize(1500).await;
    let payment = host.merchant(1).get(&format!("/payments/{id}")).await;
    assert_eq!((payment.status, payment.json()["status"].as_str()), (200, Some("AUTHORIZED")));

    // The port speaks TLS only, and only with a certificate the client trusts.
    let plain = host.base.replacen("https://", "http://", 1);
    let answer = reqwest::get(format!("{plain}/health/live")).await;
    assert!(answer.is_err(), "plain HTTP was answered on the TLS port: {answer:?}");
    let stranger = Pki::stranger().client().get(format!("{}/health/live", host.base)).send().await;
    assert!(stranger.is_err(), "a client trusting another CA was answered: {stranger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_takes_its_certificate_from_the_runtime_config() {
    let pki = Pki::new();
    let config = format!("[http]\ntls_cert = {:?}\ntls_key = {:?}\n", path(&pki.cert), path(&pki.key));
    let mut host = Host::start_with(&manifest(""), &config);
    assert!(host.base.starts_with("https://"), "{}", host.base);
    host.client = pki.client();
    host.merchant(2).authorize(700).await;

    // The CLI reaches the admin API over HTTPS too, trusting the private CA
    // given with --admin-ca, and refuses the listener without it.
    let versions = |ca: Option<&Path>| {
        let mut command = Command::new(support::PAYFN);
        command
            .args(["versions", "--json", "--manifest"])
            .arg(host.app.join("spin.toml"))
            .args(["--admin-url", &host.base])
            .env_remove("PAYFN_ADMIN_TOKEN")
            .env_remove("PAYFN_ADMIN_CA");
        if let Some(ca) = ca {
            command.arg("--admin-ca").arg(ca);
        }
        command.output().expect("payfn versions")
    };
    let trusted = versions(Some(&pki.ca));
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("authorize"));
    let untrusted = versions(None);
    assert!(!untrusted.status.success(), "the admin API was reached without trusting its CA");
}

#[test]
fn half_a_certificate_pair_is_refused_with_the_missing_half_named() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), manifest("")).unwrap();
    let err = support::refused_start(dir.path(), &[("SPIN_TLS_CERT", path(&pki.cert))]);
    assert!(err.contains("without its key"), "{err}");
    let err = support::refused_start(dir.path(), &[("SPIN_TLS_KEY", path(&pki.key))]);
    assert!(err.contains("without its certificate"), "{err}");
    // A key that is not the certificate's.
    let other = Pki::new();
    let err = support::refused_start(
        dir.path(),
        &[("SPIN_TLS_CERT", path(&pki.cert)), ("SPIN_TLS_KEY", path(&other.key))],
    );
    assert!(err.contains("does not go with the key"), "{err}");
}

/// An HTTPS server answering `pong over tls` to every GET: an [`Upstream`]
/// behind a [`TlsTerminator`], which counts the handshakes.
async fn https_upstream(pki: &Pki) -> (u16, Arc<AtomicUsize>, Upstream) {
    let plain = Upstream::start("pong over tls").await;
    let tls = TlsTerminator::start(plain.port, pki.server_config()).await;
    (tls.port, tls.handshakes, plain)
}

/// The spin-sdk test app, allowed to call `https://localhost:{port}`.
fn spin_app_manifest(port: u16) -> String {
    format!(
        r#"spin_manifest_version = 2

[application]
name = "tls-caller"

[[trigger.http]]
route = "/spin/..."
component = "spin-app"

[component.spin-app]
source = "{wasm}"
allowed_outbound_hosts = ["https://localhost:{port}"]
"#,
        wasm = wasm_dir().join("test_spin_app.wasm").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_https_reaches_a_server_the_configured_ca_vouches_for() {
    let pki = Pki::new();
    let (port, handshakes, _upstream) = https_upstream(&pki).await;
    let call = format!("/spin/outbound?url=https://localhost:{port}/ping");

    let config = format!("[outbound_http]\nca_files = [{:?}]\n", path(&pki.ca));
    let host = Host::start_with(&spin_app_manifest(port), &config);
    let reply = host.merchant(1).get(&call).await;
    assert_eq!((reply.status, text(&reply).as_str()), (200, "pong over tls"), "{}", host.log());
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);

    // Without the CA the system's roots do not vouch for it: the guest gets
    // a TLS error, the operator a log line naming the destination.
    let untrusting = Host::start_with(&spin_app_manifest(port), "");
    let reply = untrusting.merchant(1).get(&call).await;
    assert_eq!(reply.status, 502, "{}", text(&reply));
    assert!(text(&reply).contains("TlsCertificateError"), "{}", text(&reply));
    let log = untrusting.log();
    assert!(
        log.contains("outbound TLS failed") && log.contains(&format!("https://localhost:{port}")),
        "{log}"
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 1, "an untrusted handshake completed");
}

/// A PostgreSQL server of the test's own that takes TLS connections only
/// (`hostssl` in pg_hba.conf, `hostnossl` rejected), run as `postgres`.
struct TlsPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl TlsPostgres {
    fn start(pki: &Pki) -> TlsPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let as_postgres = |args: &[&str]| {
            let out =
                Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().expect("runuser");
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        chown_postgres(dir.path());
        as_postgres(&[
            path(&bin.join("initdb")),
            "-D",
            path(&data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        for (from, to) in [(&pki.cert, "server.pem"), (&pki.key, "server.key")] {
            std::fs::copy(from, data.join(to)).unwrap();
            chown_postgres(&data.join(to));
        }
        set_mode(&data.join("server.key"), 0o600);
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\nfsync = off\n",
            dir.path().display()
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "").unwrap();
        chown_postgres(&log);
        as_postgres(&[
            path(&bin.join("pg_ctl")),
            "-D",
            path(&data),
            "-l",
            path(&log),
            "-w",
            "-t",
            "60",
            "start",
        ]);
        TlsPostgres { dir, bin, port }
    }

    /// psql on `db` with this `sslmode`; its stdout, or its error.
    fn psql(&self, db: &str, sslmode: &str, sql: &str) -> Result<String, String> {
        let conn = format!("host=127.0.0.1 port={} user=postgres dbname={db} sslmode={sslmode}", self.port);
        stdout_or_stderr(Command::new("psql").args([conn.as_str(), "-tAc", sql]).output().expect("psql"))
    }

    fn url(&self, db: &str, ca: &Path) -> String {
        format!(
            "postgres://postgres@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                path(&self.bin.join("pg_ctl")),
                "-D",
                path(&data),
                "-m",
                "immediate",
            ])
            .arg("stop")
            .output();
    }
}

fn chown_postgres(p: &Path) {
    let status = Command::new("chown").args(["postgres:postgres", path(p)]).status().expect("chown");
    assert!(status.success());
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn append(p: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(p).unwrap().write_all(text.as_bytes()).unwrap();
}

/// Two server shards named as the payments app expects, at `urls`.
fn server_shards(backend: &str, urls: [&str; 2]) -> String {
    SHARDS
        .iter()
        .zip(urls)
        .map(|(name, url)| format!("[[shards]]\nname = \"{name}\"\nbackend = \"{backend}\"\nurl = {url:?}\n"))
        .collect()
}

/// Takes a payment for merchants 1 and 2 (one on each shard) and reads it back.
async fn payments_on_both_shards(host: &Host) {
    for merchant in [1, 2] {
        let id = host.merchant(merchant).authorize(2500).await;
        let reply = host.merchant(merchant).get(&format!("/payments/{id}")).await;
        assert_eq!(reply.status, 200, "{:?}", reply.json());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_shards_are_reached_over_verified_tls() {
    let pki = Pki::new();
    let pg = TlsPostgres::start(&pki);
    // The server refuses plain connections: whatever payfn does, it does over TLS.
    let plain = pg.psql("postgres", "disable", "SELECT 1").unwrap_err();
    assert!(plain.contains("no encryption") || plain.contains("pg_hba.conf"), "{plain}");
    for db in ["shard_1", "shard_2"] {
        pg.psql("postgres", "require", &format!("CREATE DATABASE {db}")).unwrap();
    }

    let config = server_shards("postgres", [&pg.url("shard_1", &pki.ca), &pg.url("shard_2", &pki.ca)]);
    let host = Host::start_with(&manifest(""), &config);
    payments_on_both_shards(&host).await;
    for db in ["shard_1", "shard_2"] {
        assert_eq!(pg.psql(db, "require", "SELECT count(*) FROM payments").unwrap(), "1", "{db}");
    }
    let encrypted = pg
        .psql("postgres", "require", "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'shard_1' AND s.ssl")
        .unwrap();
    assert_ne!(encrypted, "0", "no TLS session of payfn's on shard_1");
    drop(host);

    // A host that trusts another CA never gets a connection: its shards
    // stay unavailable instead of falling back to an unverified link.
    let stranger = Pki::stranger();
    let config =
        server_shards("postgres", [&pg.url("shard_1", &stranger.ca), &pg.url("shard_2", &stranger.ca)]);
    let host = Host::start_with(&manifest(""), &config);
    let reply = host.merchant(1).post("/payments/authorize", r#"{"amount":100,"currency":"KRW"}"#).await;
    reply.assert_error(503, "shard_unavailable");
}

/// A MariaDB server of the test's own with `require_secure_transport`.
struct TlsMariadb {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl TlsMariadb {
    fn start(pki: &Pki) -> TlsMariadb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db");
        assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args([&format!("--port={port}"), "--bind-address=127.0.0.1", "--user=root"])
            .arg(format!("--ssl-cert={}", pki.cert.display()))
            .arg(format!("--ssl-key={}", pki.key.display()))
            .arg(format!("--ssl-ca={}", pki.ca.display()))
            .args(["--require-secure-transport=ON", "--innodb-buffer-pool-size=32M", "--skip-log-bin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let server = TlsMariadb { child, _dir: dir, port };
        for _ in 0..120 {
            if server.sql(true, "SELECT 1").is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the TLS MariaDB did not come up: {:?}", server.sql(true, "SELECT 1"));
    }

    /// The mariadb client, with TLS or without; stdout or the error.
    fn sql(&self, tls: bool, sql: &str) -> Result<String, String> {
        let mut command = Command::new("mariadb");
        command.args(["--no-defaults", "-h", "127.0.0.1", "-P", &self.port.to_string(), "-u", "root", "-N"]);
        command.arg(if tls { "--ssl" } else { "--skip-ssl" });
        stdout_or_stderr(command.args(["-e", sql]).output().expect("mariadb"))
    }

    fn url(&self, db: &str, ca: &Path) -> String {
        format!("mysql://root@localhost:{}/{db}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}", self.port, ca.display())
    }
}

impl Drop for TlsMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_shards_are_reached_over_verified_tls() {
    let pki = Pki::new();
    let db = TlsMariadb::start(&pki);
    // The same user without TLS is turned away (MariaDB 10.11 answers
    // require_secure_transport with "access denied"): payfn's connections
    // below can only be TLS ones.
    let plain = db.sql(false, "SELECT 1").unwrap_err();
    assert!(plain.contains("insecure transport") || plain.contains("Access denied"), "{plain}");
    db.sql(true, "CREATE DATABASE shard_1; CREATE DATABASE shard_2").unwrap();

    let config = server_shards("mariadb", [&db.url("shard_1", &pki.ca), &db.url("shard_2", &pki.ca)]);
    let host = Host::start_with(&manifest(""), &config);
    payments_on_both_shards(&host).await;
    for shard in ["shard_1", "shard_2"] {
        assert_eq!(db.sql(true, &format!("SELECT count(*) FROM {shard}.payments")).unwrap(), "1", "{shard}");
    }
}

/// A Redis of the test's own on a TLS port only, with a password.
struct TlsRedis {
    child: Child,
    port: u16,
    ca: PathBuf,
}

const REDIS_PASSWORD: &str = "r3dis-pa55-9f2c";

impl TlsRedis {
    fn start(pki: &Pki) -> TlsRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", path(&pki.cert), "--tls-key-file", path(&pki.key)])
            .args(["--tls-ca-cert-file", path(&pki.ca), "--tls-auth-clients", "no"])
            .args(["--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let server = TlsRedis { child, port, ca: pki.ca.clone() };
        for _ in 0..100 {
            if server.cli(&["PING"]).is_ok_and(|out| out == "PONG") {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the TLS Redis did not come up");
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", path(&self.ca), "-h", "localhost", "-p", &self.port.to_string()])
            .args(["--no-auth-warning", "-a", REDIS_PASSWORD])
            .args(args)
            .output()
            .expect("redis-cli");
        stdout_or_stderr(out)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_reached_over_rediss_with_the_password_from_the_environment() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let url = format!("rediss://:{REDIS_PASSWORD}@localhost:{}/0", redis.port);
    let config = format!(
        "[kv]\nbackend = \"redis\"\nurl_env = \"PAYFN_TEST_REDIS_URL\"\nca_file = {:?}\nprefix = \"tlstest:\"\n",
        path(&pki.ca)
    );
    let host = Host::start_with_env(&manifest(""), &config, &[("PAYFN_TEST_REDIS_URL", &url)]);
    // An idempotent request leaves its record in Redis, under the prefix.
    let reply = host
        .merchant(1)
        .send(
            "POST",
            "/payments/authorize",
            Some(r#"{"amount":900,"currency":"KRW"}"#),
            &[("Idempotency-Key", "tls-1")],
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    let keys = redis.cli(&["--scan", "--pattern", "tlstest:*"]).unwrap();
    assert!(!keys.is_empty(), "no key of payfn's in the TLS Redis");

    let log = host.log();
    assert!(log.contains(&format!("rediss://:***@localhost:{}", redis.port)), "{log}");
    assert!(!log.contains(REDIS_PASSWORD), "the Redis password reached the log:\n{log}");
}

/// Asserts the `payments` topic holds an event of payment `id`.
async fn assert_on_topic(kafka: &Kafka, id: &str) {
    let records = kafka.read_all("payments", 1).await;
    let values: Vec<String> =
        records.iter().map(|(_, v, _)| String::from_utf8_lossy(v).into_owned()).collect();
    assert!(values.iter().any(|v| v.contains(id)), "{values:?}");
}

/// Waits until `host`'s outbox holds nothing unpublished.
async fn drained(host: &Host) {
    wait_for(Duration::from_secs(30), "the outbox to drain", || async {
        support::unpublished(host, SHARDS).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_kafka_over_tls() {
    let pki = Pki::new();
    let kafka = Kafka::start_tls(&pki).await;
    let host = Host::start_with(&manifest(""), &kafka.runtime_config());
    assert!(host.log().contains("(SSL)"), "{}", host.log());
    let id = host.merchant(1).authorize(4200).await;
    assert_on_topic(&kafka, &id).await;
    let terminator = kafka.tls.as_ref().expect("TLS");
    assert!(
        terminator.handshakes.load(Ordering::SeqCst) >= 2,
        "the host and the reader both came through TLS"
    );
    drained(&host).await;
}

const KAFKA_PASSWORD: &str = "kafka-scram-Secret-6f0b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_kafka_over_sasl_ssl_and_a_wrong_password_is_refused() {
    let pki = Pki::new();
    let kafka = Kafka::start_sasl(&pki, &Sasl { user: "payfn", password: KAFKA_PASSWORD }).await;
    let config = kafka.runtime_config();
    assert!(!config.contains(KAFKA_PASSWORD), "the password belongs in the environment:\n{config}");

    // With the password from the environment: events reach the topic.
    let host = Host::start_with_env(&manifest(""), &config, &[(KAFKA_PASSWORD_ENV, KAFKA_PASSWORD)]);
    assert!(host.log().contains("(SASL_SSL)"), "{}", host.log());
    let id = host.merchant(1).authorize(4300).await;
    assert_on_topic(&kafka, &id).await;
    drained(&host).await;
    assert!(!host.log().contains(KAFKA_PASSWORD), "the Kafka password reached the log:\n{}", host.log());

    // With a wrong one the broker refuses the host, which will not start
    // and says why; neither password is printed.
    let wrong = "not-the-Password-91c2";
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("spin.toml"), manifest("")).expect("manifest");
    std::fs::write(dir.path().join("runtime-config.toml"), &config).expect("runtime config");
    let err = support::refused_start(dir.path(), &[(KAFKA_PASSWORD_ENV, wrong)]);
    // The error that stops it names the cause, not only "transport failure".
    let reason = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(reason.contains("SASL authentication error"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(KAFKA_PASSWORD), "a password reached the log:\n{err}");
    // Logged once, as payfn's report: librdkafka's own line of the same
    // failure is kept for debug level.
    assert!(
        err.lines().any(|l| l.contains("payfn::kafka") && l.contains("SASL authentication error")),
        "the refusal was not reported:\n{err}"
    );
    let echoes: Vec<&str> =
        err.lines().filter(|l| l.contains("librdkafka") && l.contains("SASL authentication error")).collect();
    assert!(echoes.is_empty(), "librdkafka's log repeats the report:\n{}", echoes.join("\n"));
}
