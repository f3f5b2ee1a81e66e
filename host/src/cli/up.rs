//! `payfn up`: load everything, print a summary, serve until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::AppArgs;
use crate::admin::{self, Admin};
use crate::broker::Broker;
use crate::capabilities::{Capabilities, ComponentConfig, HostResources};
use crate::directory::store::DirectoryStore;
use crate::directory::Directory;
use crate::engine::Engine;
use crate::keys::KeyRing;
use crate::kv::Kv;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::moves::Mover;
use crate::shards::ShardSet;
use crate::triggers::http::{self, App, RouteTable};
use crate::triggers::kafka::{self, KafkaContext};
use crate::triggers::timer::{self, TimerContext};
use crate::versions::store::ControlStore;
use crate::versions::{watch, HostIdentity, Versions};

/// A line of the start-up summary (logging.rs: text, or an event in JSON).
macro_rules! banner {
    ($($arg:tt)*) => {
        crate::logging::banner(format_args!($($arg)*))
    };
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    app: AppArgs,
    /// Run every component's build command first.
    #[arg(long)]
    build: bool,
    /// Address to listen on (overrides `[http] listen`); port 0 picks one.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTPS: the listener's certificate chain (PEM, leaf first); overrides
    /// `[http] tls_cert`. Needs `--tls-key`.
    #[arg(long, env = "SPIN_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// HTTPS: the private key of `--tls-cert` (PEM); overrides `[http] tls_key`.
    #[arg(long, env = "SPIN_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Rebuild a component when a file matching its `watch` globs changes
    /// and swap it in place (the host keeps running).
    #[arg(long)]
    watch: bool,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let manifest = Manifest::load(&args.app.manifest)?;
    if args.build {
        super::build::build_all(&manifest)?;
    }
    let (config, config_path) = args.app.runtime_config()?;
    let state_dir = args.app.state_dir();
    std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let keys = KeyRing::load(&config.keys, &state_dir)?;

    let app_version = manifest.application.version.as_deref().unwrap_or("unversioned");
    banner!("payfn {}: starting `{}` {app_version}", env!("CARGO_PKG_VERSION"), manifest.application.name);
    match &config_path {
        Some(path) => banner!("  runtime config  {}", path.display()),
        None => banner!("  runtime config  embedded defaults"),
    }
    let shards = Arc::new(ShardSet::open(&config.shards, &config.routing, &state_dir).await?);
    for shard in shards.iter() {
        banner!("  shard           {} ({})", shard.name, shard.describe());
    }
    let kv = Kv::from_config(&config.kv).await?;
    banner!("  kv              {}", kv.describe());
    let metrics = Metrics::new();
    let broker = Broker::from_config(&config.kafka, &state_dir, &metrics).await?;
    banner!("  events          {}", broker.describe());

    let listen = args.listen.unwrap_or(config.http.listen);
    let tls = listener_tls(&args, &config.http)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;

    let capabilities = Capabilities::start(&HostResources {
        kv: kv.clone(),
        broker: Some(broker.clone()),
        metrics: metrics.clone(),
        app_keys: manifest.capability_keys.clone(),
        runtime_sections: config.capability_sections.0.clone(),
    })
    .await?;
    let engine = Engine::new(config.engine.clone(), state_dir.join("cache"), capabilities, metrics.clone())?;
    let control = ControlStore::open(&config.control, &state_dir).await?;
    banner!(
        "  control         {} (synced every {} ms)",
        control.describe(),
        config.control.sync_interval().as_millis()
    );
    let directory = Arc::new(Directory::open(shards.clone(), DirectoryStore::new(&control)).await?);
    banner!("  directory       {} merchants placed (control store)", directory.len());
    let identity = HostIdentity {
        id: host_id(),
        address: address.to_string(),
        started_at: crate::versions::store::now_ms(),
    };
    let mover =
        Mover::new(directory.clone(), identity.id.clone(), config.engine.timeout(), config.moves.clone());
    let (versions, lines) = Versions::start(engine.clone(), control, &manifest, identity).await?;
    for line in lines {
        banner!("  component       {} {}", line.component, line.text);
    }
    versions.start_sync(config.control.sync_interval(), directory.clone());
    // Moves a stopped host left unfinished are taken over here.
    mover.start_resuming();
    let _watcher = if args.watch { watch::start(manifest.clone(), versions.clone())? } else { None };
    let registry = versions.registry();
    let timers = TimerContext { engine: engine.clone() };
    for trigger in &manifest.timer_triggers {
        let slot = registry.get(&trigger.component).cloned().context("timer component not loaded")?;
        timer::start(&timers, trigger, slot, shards.iter().cloned());
        banner!(
            "  timer           every {} ms per shard -> {} (batch {})",
            trigger.interval_ms,
            trigger.component,
            trigger.batch_size
        );
    }
    // Every topic a component may write or a trigger reads, and the dead-letter topics.
    let mut topics = Vec::new();
    for (name, component) in &manifest.components {
        let config = ComponentConfig { name, keys: &component.capability_keys };
        topics.extend(crate::capabilities::kafka::granted_topics(&config)?);
    }
    for trigger in &manifest.kafka_triggers {
        for topic in &trigger.topics {
            topics.push(topic.clone());
            topics.push(kafka::dead_letter_topic(trigger, topic));
        }
    }
    topics.sort();
    topics.dedup();
    broker.ensure_topics(&topics).await?;
    let consumers = KafkaContext {
        engine: engine.clone(),
        broker: broker.clone(),
        shards: shards.clone(),
        directory: directory.clone(),
        metrics: metrics.clone(),
    };
    for trigger in &manifest.kafka_triggers {
        let slot = registry.get(&trigger.component).cloned().context("kafka component not loaded")?;
        kafka::start(&consumers, trigger, slot)?;
        banner!(
            "  kafka           {} (group {}) -> {}",
            trigger.topics.join(", "),
            trigger.group,
            trigger.component
        );
    }
    crate::retention::start(&config.retention, shards.iter().cloned(), &metrics);
    crate::reconcile::start(&config, shards.iter().cloned(), &metrics);
    let routes = RouteTable::new(&manifest.http_triggers)?;
    for trigger in &manifest.http_triggers {
        banner!("  route           {} -> {}", trigger.route, trigger.component);
    }

    let app = Arc::new(App {
        engine,
        versions,
        routes,
        shards,
        directory,
        mover,
        kv,
        broker,
        keys,
        config: config.http.clone(),
        metrics,
        kafka_triggers: manifest.kafka_triggers.clone(),
    });
    let admin = Arc::new(Admin::new(app.clone(), app.keys.mode == "dev", &state_dir)?);
    let admin_routes = admin::router(admin.clone(), &config.admin);
    let admin_on_main = match config.admin.listen {
        Some(admin_listen) => {
            let admin_listener = tokio::net::TcpListener::bind(admin_listen)
                .await
                .with_context(|| format!("cannot listen on {admin_listen} ([admin] listen)"))?;
            banner!(
                "  admin           {scheme}://{}/admin/ (console; API under /admin/v1; {})",
                admin_listener.local_addr()?,
                admin.describe()
            );
            let admin_tls = tls.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(admin_listener, admin_tls, admin_routes, std::future::pending()).await {
                    tracing::error!("admin listener stopped: {e}");
                }
            });
            None
        }
        None => {
            banner!(
                "  admin           {scheme}://{address}/admin/ (console; API under /admin/v1; {})",
                admin.describe()
            );
            Some(admin_routes)
        }
    };
    if app.keys.mode == "dev" {
        banner!("  dev API key     merchant 1: {}", app.keys.issue(1));
        banner!("                  (more: payfn keys issue --merchant ID)");
    }
    banner!("payfn listening on {scheme}://{address} (ready in {:.1?})", started.elapsed());

    serve(listener, tls, http::router(app, admin_on_main), shutdown_signal())
        .await
        .context("serving HTTP")?;
    crate::telemetry::shutdown();
    banner!("payfn stopped");
    Ok(())
}

/// The listener's TLS config, from `--tls-cert`/`--tls-key` or `[http]`;
/// `None` for plain HTTP. Half a pair is refused rather than served plain.
fn listener_tls(args: &UpArgs, http: &http::HttpConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let cert = args.tls_cert.as_ref().or(http.tls_cert.as_ref());
    let key = args.tls_key.as_ref().or(http.tls_key.as_ref());
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => crate::tls::server_config(cert, key)
            .map(Some)
            .context("HTTPS listener (--tls-cert / --tls-key, or [http] tls_cert / tls_key)"),
        (Some(_), None) => {
            anyhow::bail!("a TLS certificate was given without its key (--tls-key or [http] tls_key)")
        }
        (None, Some(_)) => {
            anyhow::bail!("a TLS key was given without its certificate (--tls-cert or [http] tls_cert)")
        }
    }
}

/// Serves `router` on `listener`, over TLS when `tls` is set, until
/// `shutdown` completes (then in-flight requests finish).
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(tls) => {
            let listener = crate::tls::listener::TlsListener::new(listener, tls)?;
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, router).with_graceful_shutdown(shutdown).await,
    }
}

/// Ctrl-C or SIGTERM: stop accepting, finish in-flight requests.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// This process as the control store lists it: host name and process id.
fn host_id() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "host".to_string());
    format!("{name}:{}", std::process::id())
}
