//! `payfn events failed` and `payfn events redrive`: the events the Kafka
//! triggers gave up on (dead-letter topics, `failed_events`), through the
//! admin API of a running host (`crate::failed_events` says what a re-drive
//! does and why it never double-counts).

use anyhow::bail;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};

use super::admin_client::{json_body, truncate, AdminArgs, Client};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List the events the Kafka triggers gave up on, oldest first.
    Failed(FailedArgs),
    /// Produce failed events back to the topics they came from; each
    /// consumer applies each event at most once.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct FailedArgs {
    /// How many to list (1 to 500).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["all", "event_ids"])))]
pub struct RedriveArgs {
    /// Every pending failed event.
    #[arg(long)]
    all: bool,
    /// One event (repeat for more), wherever it is kept; also one re-driven
    /// before.
    #[arg(long = "event-id", value_name = "ID")]
    event_ids: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn run(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Failed(args) => failed(args).await,
        EventsCommand::Redrive(args) => redrive(args).await,
    }
}

async fn failed(args: FailedArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.admin)?;
    let answer =
        client.call(reqwest::Method::GET, &format!("/events/failed?limit={}", args.limit), None).await?;
    if client.print_json(&answer) {
        return Ok(());
    }
    let events = answer["failed_events"].as_array().map(Vec::as_slice).unwrap_or_default();
    if events.is_empty() {
        eprintln!("no failed events");
        return Ok(());
    }
    println!("{:<30} {:<20} {:>9} {:<12} {:<28} ERROR", "EVENT", "TYPE", "MERCHANT", "CONSUMER", "KEPT IN");
    for event in events {
        let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
        println!(
            "{:<30} {:<20} {:>9} {:<12} {:<28} {}",
            truncate(&text(&event["event_id"]), 30),
            truncate(&text(&event["event_type"]), 20),
            event["merchant_id"].as_i64().map_or("-".to_string(), |m| m.to_string()),
            truncate(&text(&event["consumer"]), 12),
            truncate(&kept_in(&event["kept_in"]), 28),
            truncate(&text(&event["error"]), 80),
        );
    }
    if answer["more"].as_bool() == Some(true) {
        println!("(more than {}; --limit lists up to 500)", events.len());
    }
    Ok(())
}

/// `topic/partition/offset`, or `shard:failed_events#id`.
fn kept_in(kept: &Value) -> String {
    match kept["kind"].as_str() {
        Some("dead_letter_topic") => {
            format!("{}/{}/{}", kept["topic"].as_str().unwrap_or("?"), kept["partition"], kept["offset"])
        }
        Some("failed_events") => {
            format!("{}:failed_events#{}", kept["shard"].as_str().unwrap_or("?"), kept["id"])
        }
        _ => "?".into(),
    }
}

async fn redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.admin)?;
    let body = match args.all {
        true => json!({ "all": true }),
        false => json!({ "event_ids": args.event_ids }),
    };
    let answer =
        client.call(reqwest::Method::POST, "/events/redrive", Some(json_body(body.to_string()))).await?;
    let printed = client.print_json(&answer);
    let (topics, table) = (
        answer["from_dead_letter_topics"].as_u64().unwrap_or(0),
        answer["from_failed_events"].as_u64().unwrap_or(0),
    );
    if !printed {
        eprintln!(
            "re-drove {} events ({topics} from dead-letter topics, {table} from failed_events)",
            topics + table
        );
        for skipped in answer["skipped"].as_array().map(Vec::as_slice).unwrap_or_default() {
            eprintln!(
                "left alone (no dlq-source header, not dead-lettered by payfn): {}",
                skipped.as_str().unwrap_or("?")
            );
        }
    }
    if let Some(stopped) = answer["stopped"].as_str() {
        bail!("the re-drive stopped: {stopped}");
    }
    let held: Vec<&str> = answer["held_for_moves"]
        .as_array()
        .map(|rows| rows.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !held.is_empty() {
        bail!(
            "left where they are, their merchants being moved (re-drive them once the move has ended): {}",
            held.join(", ")
        );
    }
    let missing: Vec<&str> = answer["not_found"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !missing.is_empty() {
        bail!("not found in any dead-letter topic or failed_events: {}", missing.join(", "));
    }
    Ok(())
}
