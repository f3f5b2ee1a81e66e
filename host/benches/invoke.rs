//! Microbenchmarks of the engine, without HTTP serving or a shard:
//!
//! - `invoke/noop/{pooling,on-demand}`: one invocation of the no-op
//!   `wasi:http` component (`tests/components/noop`) through the envelope
//!   every trigger uses: open the span, take a pool slot, build the store,
//!   instantiate, call the handler, collect the response, drop the store,
//!   record the metrics. `p3-pooling` is the same no-op on WASIp3
//!   (`tests/components/noop-p3`, spin-sdk 7, `wasi:http/handler@0.3.0`). This is the host's overhead per invocation, the guest doing
//!   nothing; with the pooling allocator (the default) and without.
//! - `load/noop/{compile,cached}`: turning the binary into a servable
//!   version, from scratch (Cranelift) and from the on-disk AOT cache.
//!
//! Run: `cargo bench -p payfn --bench invoke` (docs/BENCHMARKS.md has the
//! method and the figures).

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::Full;
use payfn::capabilities::{Capabilities, HostResources};
use payfn::engine::{ComponentSpec, Engine, EngineConfig, Invocation, Trace, TriggerKind};
use payfn::kv::runtime_config::KvConfig;
use payfn::kv::Kv;
use payfn::metrics::Metrics;

/// Builds the no-op component (a no-op when it is up to date) and returns its bytes.
fn noop_component() -> Vec<u8> {
    guest_component("test-noop", "test_noop.wasm")
}

/// Builds guest crate `package` for wasm32-wasip2 and returns `file`'s bytes.
fn guest_component(package: &str, file: &str) -> Vec<u8> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target"));
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", package])
        .current_dir(&repo)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo build for a guest component");
    assert!(status.success(), "building {package} failed");
    std::fs::read(target.join("wasm32-wasip2/release").join(file)).expect("read the component")
}

fn spec() -> ComponentSpec {
    ComponentSpec {
        name: "noop".into(),
        source: PathBuf::from("test_noop.wasm"),
        grants: Vec::new(),
        environment: Vec::new(),
        capability_keys: Default::default(),
        kind: TriggerKind::Http,
    }
}

/// An engine whose components may be granted every capability, with an
/// in-memory kv store and no broker.
fn engine(config: EngineConfig, cache: &std::path::Path, kv: &Kv) -> Engine {
    let metrics = Metrics::new();
    let capabilities = futures::executor::block_on(Capabilities::start(&HostResources::bare(
        kv.clone(),
        None,
        metrics.clone(),
    )))
    .expect("capabilities");
    Engine::new(config, cache.into(), capabilities, metrics).expect("engine")
}

fn request() -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("GET")
        .uri("http://localhost/noop")
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

fn invoke(c: &mut Criterion) {
    let p2 = noop_component();
    // The same no-op on WASIp3 (spin-sdk 7), through the same envelope.
    let p3 = guest_component("test-noop-p3", "test_noop_p3.wasm");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let kv = runtime.block_on(Kv::from_config(&KvConfig::Memory)).expect("memory kv");
    let mut group = c.benchmark_group("invoke/noop");
    for (name, pooling, bytes) in
        [("pooling", true, &p2), ("on-demand", false, &p2), ("p3-pooling", true, &p3)]
    {
        let cache = tempfile::tempdir().expect("cache dir");
        let engine = engine(EngineConfig { pooling, ..EngineConfig::default() }, cache.path(), &kv);
        let component = engine.load_bytes(&spec(), bytes).expect("load the no-op component");
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let invocation = Invocation {
                    component: &component,
                    request_id: "bench".into(),
                    merchant: None,
                    shard: None,
                    tx: None,
                    trace: Trace::Continue(None),
                };
                let outcome = engine.invoke_http(invocation, request()).await;
                let output = outcome.result.expect("the no-op answers");
                assert_eq!(output.status, 200);
            })
        });
    }
    group.finish();
}

fn load(c: &mut Criterion) {
    let bytes = noop_component();
    let mut group = c.benchmark_group("load/noop");
    group.sample_size(10);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let kv = runtime.block_on(Kv::from_config(&KvConfig::Memory)).expect("memory kv");
    let engine_in = |dir: &std::path::Path| engine(EngineConfig::default(), dir, &kv);
    group.bench_function("compile", |b| {
        // A new engine on an empty cache each time; building it is not timed.
        b.iter_batched(
            || {
                let cold = tempfile::tempdir().expect("cache dir");
                let engine = engine_in(cold.path());
                (cold, engine)
            },
            |(cold, engine)| {
                let loaded = engine.load_bytes(&spec(), &bytes).expect("compile");
                assert!(!loaded.from_cache);
                // Dropped after the clock stops.
                (cold, engine, loaded)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    let warm = tempfile::tempdir().expect("cache dir");
    let engine = engine_in(warm.path());
    engine.load_bytes(&spec(), &bytes).expect("fill the cache");
    group.bench_function("cached", |b| {
        b.iter(|| {
            let loaded = engine.load_bytes(&spec(), &bytes).expect("load from cache");
            assert!(loaded.from_cache);
        })
    });
    group.finish();
}

criterion_group!(benches, invoke, load);
criterion_main!(benches);
