//! Hot swap (DESIGN.md decision 8): deploys, rollbacks and canaries under
//! live traffic, refused deploys, versions across restarts and hosts, and a
//! settlement swap while events flow.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    assert_money_invariants, file_digest, settled, take_payments, variant_b, wasm_dir, Backend, Host, Reply,
    SHARDS,
};

const SETTLE: Duration = Duration::from_secs(60);

/// The two builds of a component: (digest, build-id header) for A and B.
#[derive(Clone)]
struct Builds {
    a: String,
    b: String,
    b_file: String,
}

fn builds(component_file: &str) -> Builds {
    let b_file = variant_b().join(component_file);
    let builds = Builds {
        a: file_digest(&wasm_dir().join(component_file)),
        b: file_digest(&b_file),
        b_file: b_file.display().to_string(),
    };
    assert_ne!(builds.a, builds.b, "{component_file}: the two builds must differ");
    builds
}

/// Which build answered: the host's `payfn-version` and the guest's own
/// `build-id` must agree, or a response came from a mix of versions.
fn served_by(reply: &Reply, builds: &Builds) -> Result<char, String> {
    let version = reply.header("payfn-version").ok_or("no payfn-version header")?;
    match (version, reply.header("build-id")) {
        (v, None) if builds.a.starts_with(v) => Ok('a'),
        (v, Some("b")) if builds.b.starts_with(v) => Ok('b'),
        (v, build) => Err(format!("version {v} with build-id {build:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_swaps_under_load_fail_no_request() {
    let authorize = builds("authorize.wasm");
    let capture = builds("capture.wasm");
    let host = Host::start();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(Mutex::new(BTreeMap::<(&str, char), u64>::new()));

    // Steady load on every route: authorize, capture, refund, void, read,
    // settlements; four merchants over both shards, two workers each.
    let mut workers = Vec::new();
    for worker in 0..8i64 {
        let (host_base, stop, failures, served) =
            (host.base.clone(), stop.clone(), failures.clone(), served.clone());
        let merchant_id = worker % 4 + 1;
        let key = host.key(merchant_id);
        let (auth_builds, cap_builds) = (authorize.clone(), capture.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let send = |method: reqwest::Method, path: String, body: Option<&'static str>| {
                let mut request = client.request(method, format!("{host_base}{path}")).bearer_auth(&key);
                if let Some(body) = body {
                    request = request.header("content-type", "application/json").body(body);
                }
                async move {
                    let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    let bytes = response.bytes().await.map_err(|e| format!("{path}: {e}"))?.to_vec();
                    Ok::<_, String>(Reply { status, headers, bytes })
                }
            };
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let result: Result<(), String> = async {
                    let auth = send(
                        reqwest::Method::POST,
                        "/payments/authorize".into(),
                        Some(r#"{"amount":10000,"currency":"KRW"}"#),
                    )
                    .await?;
                    if auth.status != 201 {
                        return Err(format!(
                            "authorize: {} {}",
                            auth.status,
                            String::from_utf8_lossy(&auth.bytes)
                        ));
                    }
                    let side = served_by(&auth, &auth_builds).map_err(|e| format!("authorize: {e}"))?;
                    *served.lock().unwrap().entry(("authorize", side)).or_default() += 1;
                    let id = auth.json()["id"].as_str().unwrap_or_default().to_string();
                    if i.is_multiple_of(3) {
                        let void =
                            send(reqwest::Method::POST, format!("/payments/{id}/void"), Some("{}")).await?;
                        if void.status != 200 {
                            return Err(format!("void: {}", void.status));
                        }
                        return Ok(());
                    }
                    let cap = send(
                        reqwest::Method::POST,
                        format!("/payments/{id}/capture"),
                        Some(r#"{"amount":9000}"#),
                    )
                    .await?;
                    if cap.status != 200 {
                        return Err(format!(
                            "capture: {} {}",
                            cap.status,
                            String::from_utf8_lossy(&cap.bytes)
                        ));
                    }
                    let side = served_by(&cap, &cap_builds).map_err(|e| format!("capture: {e}"))?;
                    *served.lock().unwrap().entry(("capture", side)).or_default() += 1;
                    let refund = send(
                        reqwest::Method::POST,
                        format!("/payments/{id}/refund"),
                        Some(r#"{"amount":1000}"#),
                    )
                    .await?;
                    let read = send(reqwest::Method::GET, format!("/payments/{id}"), None).await?;
                    let today = &humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..10];
                    let settlements =
                        send(reqwest::Method::GET, format!("/settlements?date={today}"), None).await?;
                    for (what, reply) in [("refund", refund), ("read", read), ("settlements", settlements)] {
                        if reply.status != 200 {
                            return Err(format!("{what}: {}", reply.status));
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = result {
                    failures.lock().unwrap().push(e);
                }
            }
        }));
    }

    // 20 switches: deploy B, roll back to A, ten times, on both components.
    let probe = host.merchant(1);
    for round in 0..20 {
        for (component, builds) in [("authorize", &authorize), ("capture", &capture)] {
            let (out, expected) = if round % 2 == 0 {
                (host.admin(&["deploy", component, &builds.b_file, "--version", "b"]).await, 'b')
            } else {
                (host.admin(&["rollback", component]).await, 'a')
            };
            assert!(out.ok, "round {round} {component}: {}", out.stderr);
            assert!(out.stderr.contains("reached 1/1 hosts"), "{}", out.stderr);
            if round < 4 {
                eprintln!("round {round} {component}:\n{}", out.stderr.trim_end());
            }
            // The change is in effect when the command returns.
            let id = probe.authorize(5_000).await;
            if component == "authorize" {
                let reply = probe.get(&format!("/payments/{id}")).await;
                assert_eq!(reply.status, 200);
                let auth = probe.post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
                assert_eq!(
                    served_by(&auth, builds),
                    Ok(expected),
                    "round {round}: new requests see the new version"
                );
            } else {
                let cap = probe.post(&format!("/payments/{id}/capture"), "{}").await;
                assert_eq!(
                    served_by(&cap, builds),
                    Ok(expected),
                    "round {round}: new requests see the new version"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("load worker");
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests under swaps: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let served = served.lock().unwrap().clone();
    for key in [("authorize", 'a'), ("authorize", 'b'), ("capture", 'a'), ("capture", 'b')] {
        assert!(served.get(&key).copied().unwrap_or(0) > 0, "no response from {key:?}: {served:?}");
    }
    eprintln!("responses by version: {served:?}");

    // The listing shows both versions with their figures.
    let listing = host.versions().await;
    let authorize_view =
        listing["components"].as_array().unwrap().iter().find(|c| c["component"] == "authorize").unwrap();
    assert_eq!(authorize_view["active"]["digest"], authorize.a.as_str());
    let calls: u64 = authorize_view["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["stats"]["invocations"].as_u64().unwrap())
        .sum();
    assert!(calls > 0, "{authorize_view}");
    let metrics = host.metrics().await;
    assert!(metrics.contains(&format!("version=\"{}\"", &authorize.b[..12])), "{metrics}");
    // Replaced versions were released: what stays loaded is one version per
    // component plus the rollback targets of authorize and capture.
    let components = listing["components"].as_array().unwrap().len() as f64;
    let loaded = support::metric(&metrics, "payfn_loaded_versions", &[]);
    assert_eq!(loaded, components + 2.0, "versions loaded for {components} components");
    assert_money_invariants(&host, SHARDS).await;
}

/// `bytes` with a custom section appended: the same code under another
/// digest, so a test gets a third version without a third build.
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    let payload_len = 1 + tag.len();
    assert!(payload_len < 128 && tag.len() < 128, "one-byte LEB128 lengths");
    let mut out = bytes.to_vec();
    out.extend_from_slice(&[0x00, payload_len as u8, tag.len() as u8]);
    out.extend_from_slice(tag.as_bytes());
    out
}

/// An invocation that started on version A finishes on A although B and
/// then C replace it meanwhile; A stays loaded exactly until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_in_flight_finishes_on_its_version_which_is_freed_after() {
    let slow = builds("test_slow.wasm");
    // The invocation on A waits until the test releases it (TEST-AUDIT 13):
    // however long the deploys take, it is still running when C arrives.
    let host = Host::start_with(
        &support::manifest(&support::test_component(
            "/test/slow",
            "slow",
            "test_slow.wasm",
            r#"["log", "kv"]"#,
        )),
        "[engine]\ntimeout_ms = 30000\n",
    );
    let c_file = host.app.join("test_slow_c.wasm");
    std::fs::write(&c_file, with_custom_section(&std::fs::read(&slow.b_file).unwrap(), "payfn-test-c"))
        .unwrap();
    let c = file_digest(&c_file);
    let loaded = || async { support::metric(&host.metrics().await, "payfn_loaded_versions", &[]) };
    let m = host.merchant(1);
    assert_eq!(served_by(&m.get("/test/slow?ms=0").await, &slow), Ok('a'));
    let before = loaded().await;

    // An invocation on A that lasts until the swaps are done.
    let in_flight = {
        let m = host.merchant(1);
        async move { m.get("/test/slow?until=swapped").await }
    };
    let swaps = async {
        // A is running before the first deploy: it serves the request.
        support::wait_for(Duration::from_secs(10), "the invocation on A to start", || async {
            m.get("/test/slow?started=swapped").await.json()["started"] == true
        })
        .await;
        let out = host.admin(&["deploy", "slow", &slow.b_file]).await;
        assert!(out.ok, "{}", out.stderr);
        assert_eq!(served_by(&m.get("/test/slow?ms=0").await, &slow), Ok('b'), "new requests see B");
        let out = host.admin(&["deploy", "slow", &c_file.display().to_string()]).await;
        assert!(out.ok, "{}", out.stderr);
        let reply = m.get("/test/slow?ms=0").await;
        assert_eq!(reply.header("payfn-version"), Some(&c[..12]), "new requests see C");
        // A is neither serving nor the rollback target (B is): only the
        // invocation still running holds it.
        assert_eq!(loaded().await, before + 2.0, "A, B and C loaded while A finishes");
        assert_eq!(m.get("/test/slow?release=swapped").await.status, 200);
    };
    let (reply, ()) = tokio::join!(in_flight, swaps);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.bytes));
    assert_eq!(served_by(&reply, &slow), Ok('a'), "the invocation finished on the version it started on");
    assert_eq!(reply.json()["released"], "swapped");
    support::wait_for(Duration::from_secs(5), "A to be released", || async {
        loaded().await == before + 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_and_a_merchant_stays_on_one_side() {
    let authorize = builds("authorize.wasm");
    let host = Host::start();
    let out = host.admin(&["deploy", "authorize", &authorize.b_file, "--canary", "10"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("canary"), "{}", out.stderr);

    // 600 merchants, 5 authorizations each: 3,000 requests.
    let merchants: Vec<i64> = (1..=600).collect();
    let keys: Vec<String> = merchants.iter().map(|m| host.key(*m)).collect();
    let sides = Arc::new(Mutex::new(BTreeMap::<i64, BTreeSet<char>>::new()));
    futures::future::join_all(merchants.iter().zip(&keys).map(|(merchant, key)| {
        let (sides, builds) = (sides.clone(), &authorize);
        let m = support::Merchant { host: &host, key: key.clone() };
        async move {
            for _ in 0..5 {
                let reply = m.post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
                assert_eq!(reply.status, 201);
                let side = served_by(&reply, builds).expect("one version per response");
                sides.lock().unwrap().entry(*merchant).or_default().insert(side);
            }
        }
    }))
    .await;
    let sides = sides.lock().unwrap().clone();
    let mixed: Vec<_> = sides.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(mixed.is_empty(), "merchants served by both versions: {mixed:?}");
    let on_b = sides.values().filter(|s| s.contains(&'b')).count();
    // Tolerance: 10% of 600 is 60, the binomial sd is 7.3; accept 42..=78
    // (2.5 sd). The buckets are a fixed hash, so a given build of the test
    // always sees the same split.
    assert!((42..=78).contains(&on_b), "{on_b} of 600 merchants on the canary");
    eprintln!("canary: {on_b} of 600 merchants ({:.1}%)", on_b as f64 / 6.0);

    let listing = host.versions().await;
    let view =
        listing["components"].as_array().unwrap().iter().find(|c| c["component"] == "authorize").unwrap();
    assert_eq!(view["active"]["canary_percent"], 10);
    let canary_calls = view["versions"].as_array().unwrap().iter().find(|v| v["role"] == "canary").unwrap()
        ["stats"]["invocations"]
        .as_u64()
        .unwrap();
    assert_eq!(canary_calls, on_b as u64 * 5);

    // Rolling back ends the canary: everyone on A.
    let out = host.admin(&["rollback", "authorize"]).await;
    assert!(out.ok, "{}", out.stderr);
    for key in keys.iter().take(50) {
        let m = support::Merchant { host: &host, key: key.clone() };
        let reply = m.post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
        assert_eq!(served_by(&reply, &authorize), Ok('a'));
    }
    // Promoting it instead: `payfn activate` with the label.
    let out =
        host.admin(&["deploy", "authorize", &authorize.b_file, "--version", "b2", "--canary", "50"]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = host.admin(&["activate", "authorize", &authorize.b[..10]]).await;
    assert!(out.ok, "{}", out.stderr);
    let reply = host.merchant(1).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!(served_by(&reply, &authorize), Ok('b'));
}

/// A component with exactly the HTTP step's export, whose core module's
/// start function executes `unreachable`: it traps while being
/// instantiated, before any request. (Rust guests run their constructors
/// lazily, so this one is written by hand.)
fn start_trap(dir: &std::path::Path) -> std::path::PathBuf {
    let text = r#"
        (component
          (import "wasi:http/types@0.2.12" (instance $types
            (export "incoming-request" (type (sub resource)))
            (export "response-outparam" (type (sub resource)))))
          (alias export $types "incoming-request" (type $request))
          (alias export $types "response-outparam" (type $outparam))
          (core module $m
            (func $boom unreachable)
            (start $boom)
            (func (export "handle") (param i32 i32)))
          (core instance $i (instantiate $m))
          (func $handle (param "request" (own $request)) (param "response-out" (own $outparam))
            (canon lift (core func $i "handle")))
          (instance $handler (export "handle" (func $handle)))
          (export "wasi:http/incoming-handler@0.2.12" (instance $handler)))
    "#;
    let path = dir.join("start-trap.wasm");
    std::fs::write(&path, wat::parse_str(text).expect("valid component text")).unwrap();
    path
}

/// Every (component, digest, role) the control store lists; stats aside,
/// which timers keep moving.
async fn recorded(host: &Host) -> Vec<(String, String, String)> {
    let listing = host.versions().await;
    let mut all = Vec::new();
    for component in listing["components"].as_array().unwrap() {
        for v in component["versions"].as_array().unwrap() {
            let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
            all.push((text(&component["component"]), text(&v["digest"]), text(&v["role"])));
        }
    }
    all
}

#[tokio::test]
async fn refused_deploys_name_the_fault_and_keep_the_old_version() {
    support::build_components();
    let host = Host::start();
    let before = host.active_digest("authorize").await;
    let versions_before = recorded(&host).await;
    let junk = host.app.join("junk.wasm");
    std::fs::write(&junk, "this is not wasm").unwrap();
    let cases = [
        // A timer-step component on an HTTP route: wrong world.
        (wasm_dir().join("test_timer_only.wasm"), "wasi:http/incoming-handler"),
        // Imports kv, which spin.toml does not grant authorize.
        (wasm_dir().join("test_kv_probe.wasm"), "payfn:host/kv"),
        (junk, "not a WebAssembly component"),
        // A correct HTTP step whose start function traps.
        (start_trap(&host.app), "fails when instantiated"),
    ];
    for (file, fault) in cases {
        let out = host.admin(&["deploy", "authorize", &file.display().to_string()]).await;
        assert!(!out.ok, "{} was accepted", file.display());
        assert!(out.stderr.contains(fault), "{}: expected `{fault}` in: {}", file.display(), out.stderr);
        assert!(out.stderr.contains("422"), "{}", out.stderr);
        eprintln!("refused as expected: {}", out.stderr.lines().last().unwrap_or_default());
    }
    assert_eq!(host.active_digest("authorize").await, before);
    assert_eq!(recorded(&host).await, versions_before, "nothing was recorded");
    let reply = host.merchant(2).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("payfn-version"), Some(&before[..12]));

    // Other refusals: no such component, no previous version, a bad token.
    let out = host.admin(&["rollback", "authorize"]).await;
    assert!(!out.ok && out.stderr.contains("no previous version"), "{}", out.stderr);
    let out = host.admin(&["deploy", "nope", &wasm_dir().join("authorize.wasm").display().to_string()]).await;
    assert!(!out.ok && out.stderr.contains("no component `nope`"), "{}", out.stderr);
    let merchant_key = host.key(1);
    let admin = host
        .client
        .get(format!("{}/admin/v1/components", host.base))
        .bearer_auth(&merchant_key)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401, "a merchant key is not an admin token");
    assert!(host.log().contains("admin"), "the startup summary names the admin API");
}

#[tokio::test]
async fn deployed_versions_survive_a_restart() {
    let authorize = builds("authorize.wasm");
    let capture = builds("capture.wasm");
    let host = Host::start();
    assert!(host.admin(&["deploy", "authorize", &authorize.b_file, "--version", "fee-change"]).await.ok);
    assert!(host.admin(&["deploy", "capture", &capture.b_file, "--canary", "30"]).await.ok);

    let host = host.restart();
    assert!(host.log().contains(&format!("authorize {} (deployed", &authorize.b[..12])), "{}", host.log());
    assert!(host.log().contains(&format!("canary {} at 30%", &capture.b[..12])), "{}", host.log());
    let reply = host.merchant(1).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!(served_by(&reply, &authorize), Ok('b'));
    let listing = host.admin(&["versions", "authorize"]).await;
    assert!(listing.ok, "{}", listing.stderr);
    assert!(listing.stdout.contains("fee-change") && listing.stdout.contains("active"), "{}", listing.stdout);
    // The audit trail: who changed what, newest first.
    let history = listing.stdout.split("recent changes:").nth(1).unwrap_or_default();
    let first_change = history.lines().nth(1).unwrap_or_default();
    assert!(
        first_change.contains("activate") && first_change.contains(&authorize.b[..12]),
        "{}",
        listing.stdout
    );

    // Rolling back after the restart returns to the manifest's build.
    assert!(host.admin(&["rollback", "authorize"]).await.ok);
    let reply = host.merchant(1).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!(served_by(&reply, &authorize), Ok('a'));
}

/// On one SQLite control store (embedded), and on a control database on
/// MariaDB or PostgreSQL, as hosts on separate machines would share it.
async fn a_deploy_through_one_host_reaches_the_other(backend: Backend) {
    let authorize = builds("authorize.wasm");
    let first = backend.start().await;
    let second = first.another();
    let out = first.admin(&["deploy", "authorize", &authorize.b_file]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("reached 2/2 hosts"), "{}", out.stderr);
    eprintln!("{}", out.stderr.trim_end());
    let reply = second.merchant(3).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!(served_by(&reply, &authorize), Ok('b'));
    let out = second.admin(&["rollback", "authorize"]).await;
    assert!(out.ok && out.stderr.contains("reached 2/2 hosts"), "{}", out.stderr);
    let reply = first.merchant(3).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!(served_by(&reply, &authorize), Ok('a'));

    // Two changes through two hosts inside one sync interval: each host
    // ends up with both (`--json` returns without waiting for the others).
    let capture = builds("capture.wasm");
    let out = first.admin(&["deploy", "capture", &capture.b_file, "--json"]).await;
    assert!(out.ok, "{}", out.stderr);
    // authorize b is already stored: activating it takes milliseconds, well
    // inside second's sync interval.
    let out = second.admin(&["activate", "authorize", &authorize.b[..12]]).await;
    assert!(out.ok && out.stderr.contains("reached 2/2 hosts"), "{}", out.stderr);
    for host in [&first, &second] {
        let m = host.merchant(3);
        let auth = m.post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
        assert_eq!(served_by(&auth, &authorize), Ok('b'));
        let id = auth.json()["id"].as_str().unwrap().to_string();
        let cap = m.post(&format!("/payments/{id}/capture"), "{}").await;
        assert_eq!(served_by(&cap, &capture), Ok('b'));
    }

    // The listing sums every live host's figures: authorize b answered
    // once on `first` and twice on `second`.
    let calls_on_b = |listing: serde_json::Value| {
        let view = listing["components"].as_array().unwrap().iter().find(|c| c["component"] == "authorize");
        let b = view.unwrap()["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["digest"] == authorize.b.as_str());
        let b = b.expect("version b is listed");
        (
            b["stats"]["invocations"].as_u64(),
            b["stats_this_host"]["invocations"].as_u64(),
            listing["stats_hosts"].as_u64(),
        )
    };
    support::wait_for(Duration::from_secs(5), "second's figures to reach the listing", || async {
        calls_on_b(first.versions().await) == (Some(3), Some(1), Some(2))
    })
    .await;
    let out = first.admin(&["versions", "authorize"]).await;
    assert!(out.stdout.contains("summed over 2 live hosts"), "{}", out.stdout);
}

on_backends!(a_deploy_through_one_host_reaches_the_other);

/// On the embedded log, and on Kafka (tansu) with MariaDB and PostgreSQL shards.
async fn swapping_settlement_while_events_flow_loses_and_doubles_nothing(backend: Backend) {
    let settlement = builds("settlement.wasm");
    let host = backend.start().await;
    // Payments (and so events) flow the whole time; settlement is swapped
    // ten times between the two builds meanwhile.
    let swapping = AtomicBool::new(true);
    let payments = async {
        let mut rounds = 0;
        while swapping.load(Ordering::Relaxed) {
            take_payments(&host, 1).await;
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rounds
    };
    let swaps = async {
        for n in 0..10 {
            let out = if n % 2 == 0 {
                host.admin(&["deploy", "settlement", &settlement.b_file]).await
            } else {
                host.admin(&["rollback", "settlement"]).await
            };
            assert!(out.ok, "swap {n}: {}", out.stderr);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        swapping.store(false, Ordering::Relaxed);
    };
    let (rounds, ()) = tokio::join!(payments, swaps);
    eprintln!("{rounds} rounds of payments during 10 settlement swaps");
    let deadline = std::time::Instant::now() + SETTLE;
    while !settled(&host, SHARDS).await {
        if std::time::Instant::now() > deadline {
            panic!(
                "settlements do not match the payments: {} outbox rows unpublished\nexpected {:?}\nactual   {:?}\n{}",
                support::unpublished(&host, SHARDS).await,
                support::expected_settlements(&host, SHARDS).await,
                support::actual_settlements(&host, SHARDS).await,
                host.log().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(30).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listing = host.versions().await;
    let view =
        listing["components"].as_array().unwrap().iter().find(|c| c["component"] == "settlement").unwrap();
    let used: Vec<_> = view["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["stats"]["invocations"].as_u64() > Some(0))
        .collect();
    eprintln!("settlement versions that handled events: {}", used.len());
    assert_eq!(used.len(), 2, "both builds handled events: {view}");
    assert_money_invariants(&host, SHARDS).await;
}

on_backends!(swapping_settlement_while_events_flow_loses_and_doubles_nothing);

/// One HTTP/1.1 request on an open keep-alive connection; the answer's
/// status and `payfn-version`.
async fn request_on(
    stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    key: &str,
) -> (u16, Option<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let body = r#"{"amount":1000,"currency":"KRW"}"#;
    let request = format!(
        "POST /payments/authorize HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes()).await.expect("the connection stays open");
    let mut status_line = String::new();
    stream.read_line(&mut status_line).await.expect("status line");
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let (mut length, mut version) = (0usize, None);
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(": ") {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().expect("content-length"),
                "payfn-version" => version = Some(value.to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.expect("body");
    (status, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_watch_rebuilds_and_swaps_without_a_restart() {
    let authorize = builds("authorize.wasm");
    let dir = tempfile::tempdir().unwrap();
    // The "build" copies the binary named in `build-from`: a change to that
    // file is a source change, without a Rust build in the test.
    let a_file = wasm_dir().join("authorize.wasm");
    std::fs::write(dir.path().join("build-from"), a_file.display().to_string()).unwrap();
    std::fs::copy(&a_file, dir.path().join("authorize.wasm")).unwrap();
    let manifest = support::manifest("").replace(
        &format!(
            "source = \"{}\"\ncapabilities = [\"sql\", \"log\"]\n[component.authorize.build]\n\
             command = \"cargo build --release --target wasm32-wasip2 -p authorize\"\n\
             watch = [\"functions/authorize/src/**/*.rs\", \"functions/payments/src/**/*.rs\", \"functions/sdk/src/**/*.rs\"]",
            a_file.display()
        ),
        "source = \"authorize.wasm\"\ncapabilities = [\"sql\", \"log\"]\n[component.authorize.build]\n\
         command = \"cp \\\"$(cat build-from)\\\" authorize.wasm\"\nwatch = [\"build-from\"]",
    );
    assert!(manifest.contains("watch = [\"build-from\"]"), "the manifest rewrite missed: {manifest}");
    let host = Host::start_watching(dir.path(), &manifest, "");
    assert!(host.log().contains("watch "), "{}", host.log());
    let pid = host.pid();

    let key = host.key(1);
    let address = host.base.trim_start_matches("http://").to_string();
    let mut connection = tokio::io::BufReader::new(tokio::net::TcpStream::connect(&address).await.unwrap());
    assert_eq!(request_on(&mut connection, &key).await, (201, Some(authorize.a[..12].to_string())));

    // Saved the way editors save: a new file renamed over the old one.
    std::fs::write(dir.path().join("build-from.tmp"), &authorize.b_file).unwrap();
    std::fs::rename(dir.path().join("build-from.tmp"), dir.path().join("build-from")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // The same connection throughout: the host neither restarted nor dropped it.
        let (status, version) = request_on(&mut connection, &key).await;
        assert_eq!(status, 201);
        if version.as_deref() == Some(&authorize.b[..12]) {
            break;
        }
        assert_eq!(version.as_deref(), Some(&authorize.a[..12]), "a response from an unknown version");
        assert!(std::time::Instant::now() < deadline, "the rebuilt version never served:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(host.pid(), pid);
    assert!(host.log().contains("watch: authorize now serves"), "{}", host.log());

    // A broken build leaves the running version serving.
    std::fs::write(dir.path().join("build-from"), "/nonexistent.wasm").unwrap();
    support::wait_for(Duration::from_secs(30), "the failed build to be reported", || async {
        host.log().contains("build failed")
    })
    .await;
    assert_eq!(request_on(&mut connection, &key).await, (201, Some(authorize.b[..12].to_string())));
}

#[tokio::test]
async fn a_host_without_the_build_serves_what_the_control_store_holds() {
    let authorize = builds("authorize.wasm");
    let first = Host::start();
    // A new machine: the same spin.toml and control store, no local build.
    let manifest = std::fs::read_to_string(first.app.join("spin.toml")).unwrap();
    let missing = manifest.replace(
        &format!("source = \"{}\"", wasm_dir().join("authorize.wasm").display()),
        "source = \"/nonexistent/authorize.wasm\"",
    );
    assert_ne!(manifest, missing);
    std::fs::write(first.app.join("spin.toml"), missing).unwrap();
    let second = first.another();
    assert!(
        second.log().contains("(from the control store: /nonexistent/authorize.wasm is missing)"),
        "{}",
        second.log()
    );
    let reply = second.merchant(1).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!(served_by(&reply, &authorize), Ok('a'));
}

/// A host cut off from the control store keeps serving the versions it
/// has, shows it in its metrics, refuses changes with a clear error, and
/// catches up when the store is back.
async fn a_host_cut_off_from_the_control_store_keeps_serving(backend: Backend) {
    let authorize = builds("authorize.wasm");
    let host = backend.start().await;
    let env = host.env.clone().expect("a server backend");
    let gauges = || async {
        let text = host.metrics().await;
        (
            support::metric(&text, "payfn_control_generations_behind", &[]),
            support::metric(&text, "payfn_control_sync_age_seconds", &[]),
        )
    };
    let (behind, age) = gauges().await;
    assert!(behind == 0.0 && age < 3.0, "behind {behind}, last sync {age} s ago");
    // Merchant 1 is placed in the merchant directory (control store) now;
    // merchant 3 is new to the deployment.
    host.merchant(1).authorize(100).await;

    env.set_control_outage(true);
    support::wait_for(Duration::from_secs(20), "the last sync to age past 3 s", || async {
        gauges().await.1 > 3.0
    })
    .await;
    let authorize_one = || async {
        let reply = host.merchant(1).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
        assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.bytes));
        served_by(&reply, &authorize)
    };
    assert_eq!(authorize_one().await, Ok('a'), "the loaded version keeps serving");
    // A merchant the host has no directory entry for cannot be placed
    // without the store: 503, never a guess that could split it.
    let new = host.merchant(3).post("/payments/authorize", r#"{"amount":1000,"currency":"KRW"}"#).await;
    assert_eq!((new.status, new.code().as_str()), (503, "shard_unavailable"));
    let out = host.admin(&["deploy", "authorize", &authorize.b_file]).await;
    assert!(!out.ok && out.stderr.contains("503"), "a change needs the store: {}", out.stderr);
    assert!(host.log().contains("control store sync failed"), "{}", host.log());

    env.set_control_outage(false);
    support::wait_for(Duration::from_secs(20), "the host to reach the store again", || async {
        gauges().await.1 < 2.0
    })
    .await;
    let out = host.admin(&["deploy", "authorize", &authorize.b_file]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(authorize_one().await, Ok('b'));
    host.merchant(3).authorize(100).await;
    assert_eq!(gauges().await.0, 0.0, "the host serves the latest change");
}

on_server_backends!(a_host_cut_off_from_the_control_store_keeps_serving);
