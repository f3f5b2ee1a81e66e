//! `payfn deploy`, `activate`, `rollback`, `versions`: the admin API from the
//! command line. Every change waits until every live host serves it, and
//! says how long that took.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;

use super::AppArgs;

/// How to reach the admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    app: AppArgs,
    /// The admin API's base URL; default: `[admin] listen`, else `[http]
    /// listen`, from the runtime config.
    #[arg(long, env = "PAYFN_ADMIN_URL")]
    admin_url: Option<String>,
    /// The admin token; default: the state directory's development token.
    #[arg(long, env = "PAYFN_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// The component, as named in spin.toml.
    component: String,
    /// The component binary (`.wasm`).
    file: std::path::PathBuf,
    /// A label for the version (default: its short digest).
    #[arg(long = "version")]
    label: Option<String>,
    /// Instead of activating it, send this percentage of merchants to it.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    canary: Option<u8>,
    /// Upload and check only; activate later with `payfn activate`.
    #[arg(long, conflicts_with = "canary")]
    no_activate: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ActivateArgs {
    component: String,
    /// A digest, a unique digest prefix (6+ hex digits) or a label.
    version: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    component: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VersionsArgs {
    /// One component; default: every one.
    component: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// An authenticated client of one admin API.
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    json: bool,
}

impl Client {
    fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let (config, _) = args.app.runtime_config()?;
        let base = match &args.admin_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let mut addr = config.admin.listen.unwrap_or(config.http.listen);
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
        };
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let path = args.app.state_dir().join(crate::admin::DEV_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token: set ${} or pass --token (no development token at {})",
                            crate::admin::TOKEN_ENV,
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        Ok(Self { base, token, http, json: args.json })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(reqwest::Body, &str)>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1{path}", self.base);
        let mut request =
            self.http.request(method, &url).bearer_auth(&self.token).header("x-payfn-actor", actor());
        if let Some((body, content_type)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = response.status();
        let text = response.text().await.with_context(|| format!("reading the answer of {url}"))?;
        let value: Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(_) if !status.is_success() => bail!("{status}: {}", text.trim()),
            Err(e) => bail!("{url} answered {status} without JSON ({e}): {}", text.trim()),
        };
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(value)
    }

    fn print_json(&self, value: &Value) -> bool {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        }
        self.json
    }

    /// Waits until every host that checked in recently serves `generation`.
    async fn await_hosts(&self, generation: i64) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let listing = self.call(reqwest::Method::GET, "/components", None).await?;
            let hosts = live_hosts(&listing);
            let behind: Vec<&Value> = hosts
                .iter()
                .copied()
                .filter(|h| h["generation"].as_i64().unwrap_or(0) < generation)
                .collect();
            if behind.is_empty() {
                eprintln!("reached {}/{} hosts in {:.1?}", hosts.len(), hosts.len(), started.elapsed());
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                let names: Vec<&str> = behind.iter().filter_map(|h| h["host_id"].as_str()).collect();
                bail!(
                    "{}/{} hosts serve the change after 30 s; behind: {} (their logs say why)",
                    hosts.len() - behind.len(),
                    hosts.len(),
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The hosts the listing counts as live (the host decides, by one rule).
fn live_hosts(listing: &Value) -> Vec<&Value> {
    let hosts = listing["hosts"].as_array().map(Vec::as_slice).unwrap_or_default();
    hosts.iter().filter(|h| h["live"].as_bool() == Some(true)).collect()
}

/// `user@host`, for the audit trail.
fn actor() -> String {
    let user =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

fn short(digest: &Value) -> &str {
    digest.as_str().map_or("-", |d| &d[..12.min(d.len())])
}

fn report_change(change: &Value) {
    let active = &change["active"];
    let component = active["component"].as_str().unwrap_or("?");
    match active["canary_digest"].as_str() {
        Some(canary) => eprintln!(
            "{component}: canary {} takes {}% of merchants; {} serves the rest",
            &canary[..12.min(canary.len())],
            active["canary_percent"],
            short(&active["digest"])
        ),
        None => eprintln!(
            "{component}: {} serves everyone (previous {})",
            short(&active["digest"]),
            short(&active["previous_digest"])
        ),
    }
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.admin)?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut query = vec![];
    if let Some(label) = &args.label {
        query.push(format!("label={}", urlencode(label)));
    }
    match (args.canary, args.no_activate) {
        (Some(percent), _) => query.push(format!("canary={percent}")),
        (None, false) => query.push("activate=true".into()),
        (None, true) => {}
    }
    eprintln!(
        "uploading {} ({} KiB) as a version of {}",
        args.file.display(),
        bytes.len() / 1024,
        args.component
    );
    let path = format!("/components/{}/versions?{}", args.component, query.join("&"));
    let answer = client.call(reqwest::Method::POST, &path, Some((bytes.into(), "application/wasm"))).await?;
    if client.print_json(&answer) {
        return Ok(());
    }
    let version = &answer["version"];
    eprintln!(
        "version {} `{}` checked and prepared in {:.0} ms",
        short(&version["digest"]),
        version["label"].as_str().unwrap_or(""),
        answer["prepare_ms"].as_f64().unwrap_or(0.0)
    );
    if answer["change"].is_object() {
        report_change(&answer["change"]);
        client.await_hosts(answer["change"]["active"]["generation"].as_i64().unwrap_or(0)).await?;
    }
    Ok(())
}

pub async fn activate(args: ActivateArgs) -> anyhow::Result<()> {
    let body = json_body(serde_json::json!({ "version": args.version }).to_string());
    change(&args.admin, &format!("/components/{}/activate", args.component), Some(body)).await
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    change(&args.admin, &format!("/components/{}/rollback", args.component), None).await
}

/// POSTs a change, reports it, and waits until every host serves it.
async fn change(admin: &AdminArgs, path: &str, body: Option<(reqwest::Body, &str)>) -> anyhow::Result<()> {
    let client = Client::new(admin)?;
    let answer = client.call(reqwest::Method::POST, path, body).await?;
    if !client.print_json(&answer) {
        report_change(&answer);
        client.await_hosts(answer["active"]["generation"].as_i64().unwrap_or(0)).await?;
    }
    Ok(())
}

pub async fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.admin)?;
    let path = match &args.component {
        Some(name) => format!("/components/{name}"),
        None => "/components".to_string(),
    };
    let listing = client.call(reqwest::Method::GET, &path, None).await?;
    if client.print_json(&listing) {
        return Ok(());
    }
    for component in listing["components"].as_array().map(Vec::as_slice).unwrap_or_default() {
        println!("{}", component["component"].as_str().unwrap_or("?"));
        println!(
            "  {:<10} {:<13} {:<20} {:<20} {:<20} {:>8} {:>6} {:>8} {:>8}",
            "ROLE", "VERSION", "LABEL", "DEPLOYED (UTC)", "BY", "CALLS", "ERRORS", "P50 ms", "P99 ms"
        );
        for v in component["versions"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let deployed = time(&v["deployed_at"]);
            let role = match (v["role"].as_str(), v["role"].as_str() == Some("canary")) {
                (Some(_), true) => format!("canary {}%", component["active"]["canary_percent"]),
                (Some(role), false) => role.to_string(),
                (None, _) => String::new(),
            };
            println!(
                "  {:<10} {:<13} {:<20} {:<20} {:<20} {:>8} {:>6} {:>8.2} {:>8.2}",
                role,
                short(&v["digest"]),
                truncate(v["label"].as_str().unwrap_or(""), 20),
                deployed,
                truncate(v["deployed_by"].as_str().unwrap_or(""), 20),
                v["stats"]["invocations"].as_u64().unwrap_or(0),
                v["stats"]["errors"].as_u64().unwrap_or(0),
                v["stats"]["p50_ms"].as_f64().unwrap_or(0.0),
                v["stats"]["p99_ms"].as_f64().unwrap_or(0.0),
            );
        }
        let history = component["history"].as_array().map(Vec::as_slice).unwrap_or_default();
        if !history.is_empty() {
            println!("  recent changes:");
        }
        for change in history {
            let canary = match change["canary_digest"].as_str() {
                Some(digest) => {
                    format!(", canary {} at {}%", &digest[..12.min(digest.len())], change["canary_percent"])
                }
                None => String::new(),
            };
            println!(
                "    #{:<5} {} {:<10} -> {}{canary}  by {}",
                change["generation"].as_i64().unwrap_or(0),
                time(&change["changed_at"]),
                change["action"].as_str().unwrap_or("?"),
                short(&change["digest"]),
                change["actor"].as_str().unwrap_or("?"),
            );
        }
    }
    let generation = listing["generation"].as_i64().unwrap_or(0);
    let hosts = live_hosts(&listing);
    println!("\nchange {generation}; hosts:");
    for host in hosts {
        let served = host["generation"].as_i64().unwrap_or(0);
        let state =
            if served >= generation { "current".to_string() } else { format!("behind (serves {served})") };
        println!(
            "  {:<32} {:<22} {state}",
            host["host_id"].as_str().unwrap_or("?"),
            host["address"].as_str().unwrap_or("?")
        );
    }
    let counted = listing["stats_hosts"].as_u64().unwrap_or(1);
    println!(
        "(calls, errors and latency: summed over {counted} live host{}, each since it started)",
        if counted == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn time(ms: &Value) -> String {
    ms.as_i64()
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
                .trim_end_matches('Z')
                .replace('T', " ")
        })
        .unwrap_or_default()
}

fn json_body(text: String) -> (reqwest::Body, &'static str) {
    (text.into(), "application/json")
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).chain(['…']).collect()
    }
}

/// Percent-encodes a query value.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
