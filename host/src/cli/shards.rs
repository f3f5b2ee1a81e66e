//! `payfn shards status`, `payfn shards move` and `payfn shards rebalance`,
//! through the admin API of a running host (`crate::moves` says what a
//! move does).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};

use super::admin_client::{json_body, AdminArgs, Client};

/// How often a move's progress is asked for.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Subcommand)]
pub enum ShardsCommand {
    /// Merchants, payments and size per shard, and the moves in progress.
    Status(StatusArgs),
    /// Move one merchant, with all its rows, to another shard while every
    /// host keeps serving.
    Move(MoveArgs),
    /// Plan the moves that even out the shards' loads (--plan), or make
    /// them one at a time (--apply).
    Rebalance(RebalanceArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The merchant to move.
    #[arg(long)]
    merchant: i64,
    /// The shard to move it to (a name in [[shards]]).
    #[arg(long)]
    to: String,
    /// Return once the move has started instead of following it to its end.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["plan", "apply"])))]
pub struct RebalanceArgs {
    /// Print the moves without making them.
    #[arg(long)]
    plan: bool,
    /// Make the planned moves, one at a time.
    #[arg(long)]
    apply: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn run(command: ShardsCommand) -> anyhow::Result<()> {
    match command {
        ShardsCommand::Status(args) => status(args).await,
        ShardsCommand::Move(args) => move_one(args).await,
        ShardsCommand::Rebalance(args) => rebalance(args).await,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.admin)?;
    let answer = client.call(reqwest::Method::GET, "/shards", None).await?;
    if client.print_json(&answer) {
        return Ok(());
    }
    println!("{:<16} {:<9} {:>10} {:>10} {:>12}  NEW", "SHARD", "DIALECT", "MERCHANTS", "PAYMENTS", "SIZE");
    for shard in answer["shards"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let new = if shard["acceptNew"].as_bool() == Some(true) {
            format!("yes (weight {})", shard["weight"])
        } else {
            "no".to_string()
        };
        println!(
            "{:<16} {:<9} {:>10} {:>10} {:>12}  {new}",
            shard["name"].as_str().unwrap_or("?"),
            shard["dialect"].as_str().unwrap_or("?"),
            shard["merchants"],
            count(&shard["payments"]),
            bytes(&shard["bytes"]),
        );
    }
    let moving = answer["moving"].as_array().map(Vec::as_slice).unwrap_or_default();
    if moving.is_empty() {
        println!("\nno moves in progress");
    } else {
        println!("\nmoves in progress:");
        for m in moving {
            println!("  {}", describe(m));
        }
    }
    Ok(())
}

async fn move_one(args: MoveArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.admin)?;
    let body = json!({"merchant": args.merchant, "to": args.to}).to_string();
    let started = client.call(reqwest::Method::POST, "/moves", Some(json_body(body))).await?;
    if args.no_wait {
        if !client.print_json(&started) {
            println!("started {}", describe(&started));
        }
        return Ok(());
    }
    let done = follow(&client, &started).await?;
    if client.print_json(&done) {
        return Ok(());
    }
    finish(&done)
}

async fn rebalance(args: RebalanceArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.admin)?;
    let plan = client.call(reqwest::Method::GET, "/shards/rebalance", None).await?;
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    if args.plan && client.print_json(&plan) {
        return Ok(());
    }
    if moves.is_empty() {
        println!("the shards are as even as moving whole merchants makes them: nothing to move");
        return Ok(());
    }
    println!("{} moves:", moves.len());
    for m in &moves {
        println!(
            "  merchant {} ({} payments): {} -> {}",
            m["merchant"],
            m["payments"],
            str(&m["from"]),
            str(&m["to"])
        );
    }
    if let Some(after) = plan["paymentsAfter"].as_object() {
        let after: Vec<String> = after.iter().map(|(shard, n)| format!("{shard} {n}")).collect();
        println!("payments per shard afterwards: {}", after.join(", "));
    }
    if args.plan {
        return Ok(());
    }
    for (i, m) in moves.iter().enumerate() {
        println!("[{}/{}] merchant {} -> {}", i + 1, moves.len(), m["merchant"], str(&m["to"]));
        let body = json!({"merchant": m["merchant"], "to": m["to"]}).to_string();
        let started = client.call(reqwest::Method::POST, "/moves", Some(json_body(body))).await?;
        let done = follow(&client, &started).await?;
        finish(&done)?;
    }
    println!("rebalanced: {} merchants moved", moves.len());
    Ok(())
}

/// Polls a move until it ends, printing each step as it is reached.
async fn follow(client: &Client, started: &Value) -> anyhow::Result<Value> {
    let Some(id) = started["id"].as_i64() else { bail!("the admin API answered a move without an id") };
    let began = Instant::now();
    let mut last = String::new();
    loop {
        let record = client.call(reqwest::Method::GET, &format!("/moves/{id}"), None).await?;
        let step = str(&record["step"]).to_string();
        let line = format!("{step} ({} rows copied)", record["rowsCopied"]);
        if line != last {
            eprintln!("  {:>6.1}s  move {id}: {line}", began.elapsed().as_secs_f64());
            last = line;
        }
        if matches!(step.as_str(), "done" | "rolled_back") {
            return Ok(record);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn finish(record: &Value) -> anyhow::Result<()> {
    if str(&record["step"]) == "done" {
        println!(
            "moved merchant {} from {} to {}: {} rows, writes paused {} ms",
            record["merchant"],
            str(&record["from"]),
            str(&record["to"]),
            record["rowsCopied"],
            record["pauseMs"]
        );
        if let Some(detail) = record["detail"].as_str() {
            println!("  {detail}");
        }
        Ok(())
    } else {
        bail!(
            "move {} of merchant {} rolled back (the merchant stays on {}): {}",
            record["id"],
            record["merchant"],
            str(&record["from"]),
            str(&record["detail"])
        )
    }
}

fn describe(m: &Value) -> String {
    format!(
        "move {}: merchant {} {} -> {}, {} ({} rows copied)",
        m["id"],
        m["merchant"],
        str(&m["from"]),
        str(&m["to"]),
        str(&m["step"]),
        m["rowsCopied"]
    )
}

fn str(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

fn count(value: &Value) -> String {
    match value.as_i64() {
        Some(n) if n >= 0 => n.to_string(),
        _ => "unreachable".to_string(),
    }
}

fn bytes(value: &Value) -> String {
    match value.as_i64() {
        Some(n) if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        Some(n) if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        Some(n) if n >= 0 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => "?".to_string(),
    }
}
