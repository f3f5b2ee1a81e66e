//! `payfn deploy`, `activate`, `rollback`, `versions`: the admin API from the
//! command line. Every change waits until every live host serves it, and
//! says how long that took.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;

use super::admin_client::{json_body, truncate, urlencode, AdminArgs, Client};

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

/// Waits until every host that checked in recently serves `generation`.
async fn await_hosts(client: &Client, generation: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let listing = client.call(reqwest::Method::GET, "/components", None).await?;
        let hosts = live_hosts(&listing);
        let behind: Vec<&Value> =
            hosts.iter().copied().filter(|h| h["generation"].as_i64().unwrap_or(0) < generation).collect();
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

/// The hosts the listing counts as live (the host decides, by one rule).
fn live_hosts(listing: &Value) -> Vec<&Value> {
    let hosts = listing["hosts"].as_array().map(Vec::as_slice).unwrap_or_default();
    hosts.iter().filter(|h| h["live"].as_bool() == Some(true)).collect()
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
        await_hosts(&client, answer["change"]["active"]["generation"].as_i64().unwrap_or(0)).await?;
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
        await_hosts(&client, answer["active"]["generation"].as_i64().unwrap_or(0)).await?;
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
